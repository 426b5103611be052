//! Tenancy (DESIGN.md "Tenancy"): which organization owns a resource, and what each role may do
//! with each kind of resource. Pure functions: the [`super::policy::Policy`] applies them.
//!
//! The owner is written into the resource itself as a `meta.tag` of [`OWNER_SYSTEM`] whose code
//! is the owning Organization's id. It is derived on every write from the resource's own
//! organization field (Patient.managingOrganization, Device.owner, ...) or from the resource it
//! is about (an Observation's subject or device), so it travels with the content: the search
//! index (`_tag`), history, reindexing and subscriptions all see it without another table.
//! Organizations are owned by themselves: a principal sees its organization and, for a
//! distributor, the customers whose `partOf` names it.

use serde::Deserialize;
use serde_json::{Value, json};

use super::Role;
use super::scope::Perms;

/// The `meta.tag` system of the owning organization.
pub const OWNER_SYSTEM: &str = "https://vitalbridge.dev/fhir/CodeSystem/owner";

/// The kinds of resources roles are granted on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Area {
    /// Patients and what is recorded about them (the default).
    Clinical,
    /// Devices, hubs and where they are: what distributors stock and configure.
    Inventory,
    /// Organizations: the tenant tree itself.
    Organization,
    /// A clinic's staff.
    Staff,
    /// Prices, invoices, claims and payments.
    Billing,
    /// Subscriptions pushing data to a customer's systems.
    Integration,
    /// Definitions and terminology every caller may read and only admins write.
    Shared,
    /// The audit trail: admins only.
    Audit,
}

/// The area of a resource type.
pub fn area(ty: &str) -> Area {
    match ty {
        "Device" | "DeviceMetric" | "DeviceDefinition" | "Location" | "Endpoint" => Area::Inventory,
        "Organization" => Area::Organization,
        "Practitioner" | "PractitionerRole" => Area::Staff,
        "Invoice"
        | "ChargeItem"
        | "ChargeItemDefinition"
        | "Claim"
        | "ClaimResponse"
        | "PaymentReconciliation"
        | "PaymentNotice"
        | "Account" => Area::Billing,
        "Subscription" => Area::Integration,
        "AuditEvent" => Area::Audit,
        "StructureDefinition"
        | "ValueSet"
        | "CodeSystem"
        | "ConceptMap"
        | "NamingSystem"
        | "SearchParameter"
        | "OperationDefinition"
        | "CapabilityStatement"
        | "CompartmentDefinition"
        | "ImplementationGuide"
        | "StructureMap"
        | "GraphDefinition"
        | "MessageDefinition"
        | "TerminologyCapabilities" => Area::Shared,
        _ => Area::Clinical,
    }
}

fn perms(s: &str) -> Perms {
    Perms {
        c: s.contains('c'),
        r: s.contains('r'),
        u: s.contains('u'),
        d: s.contains('d'),
        s: s.contains('s'),
    }
}

/// What `role` may do in `area`, before scopes narrow it (issue 4, "Roles and tenancy").
pub fn grants(role: Role, area: Area) -> Perms {
    use Area as A;
    use Role as R;
    perms(match (role, area) {
        // The audit trail is written by the server only; admins read and search it.
        (R::Admin, A::Audit) => "rs",
        (R::Admin, _) => "cruds",
        // A hub's credentials post readings and nothing else: a stolen hub reads no data.
        (R::Hub, _) => "",
        (_, A::Shared) => "rs",
        (_, A::Audit) => "",
        // Distributors: their customers' organizations, devices and hubs, and the invoices of
        // both; no patient data.
        (R::Distributor, A::Inventory | A::Organization) => "cruds",
        (R::Distributor, A::Billing) => "rs",
        // Their staff see the inventories and configure devices.
        (R::DistributorUser, A::Inventory) => "rus",
        (R::DistributorUser, A::Organization) => "rs",
        // A clinic: its patients, devices, hubs, staff, data and invoices.
        (R::Customer, A::Clinical | A::Inventory | A::Staff | A::Integration) => "cruds",
        (R::Customer, A::Organization) => "rus",
        (R::Customer, A::Billing) => "rs",
        // Clinic staff: patients, devices and data; no user management, no billing.
        (R::CustomerUser, A::Clinical) => "cruds",
        (R::CustomerUser, A::Inventory) => "rus",
        (R::CustomerUser, A::Organization | A::Staff) => "rs",
        // Patient-facing apps read clinical data, and only through `patient/` scopes, which
        // reach no further than the patient's own compartment (auth::policy).
        (R::Patient, A::Clinical) => "rs",
        _ => "",
    })
}

/// The field of `ty` naming its owning organization, if the type has one.
fn org_field(ty: &str) -> Option<&'static str> {
    Some(match ty {
        "Patient" | "Location" | "Endpoint" | "CareTeam" | "EpisodeOfCare" => {
            "managingOrganization"
        }
        "Device" | "Account" => "owner",
        "HealthcareService" => "providedBy",
        "PractitionerRole" => "organization",
        "Group" => "managingEntity",
        "Invoice" => "recipient",
        "Claim" => "provider",
        "Encounter" => "serviceProvider",
        "PaymentReconciliation" => "paymentIssuer",
        "Organization" => "partOf",
        _ => return None,
    })
}

/// The fields of `ty` naming the resource it is about, whose owner it inherits.
fn link_fields(ty: &str) -> &'static [&'static str] {
    match ty {
        "Provenance" => &["target"],
        "DeviceMetric" => &["source"],
        "Invoice" => &["subject", "recipient"],
        "Organization" | "Subscription" => &[],
        _ => &["subject", "patient", "beneficiary", "device"],
    }
}

/// `Type/id` of a literal reference to this server: relative, or absolute under `base`.
pub fn local_target(reference: &str, base: &str) -> Option<(String, String)> {
    let rel = match reference.strip_prefix(base.trim_end_matches('/')) {
        Some(rest) if !base.is_empty() => rest.strip_prefix('/')?,
        _ if reference.contains("://") || reference.starts_with('#') => return None,
        _ => reference,
    };
    let mut parts = rel.split('/');
    let (ty, id) = (parts.next()?, parts.next()?);
    match parts.next() {
        None | Some("_history") => {}
        Some(_) => return None,
    }
    let valid_type = ty.starts_with(|c: char| c.is_ascii_uppercase())
        && ty.chars().all(|c| c.is_ascii_alphanumeric());
    let valid_id = !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    (valid_type && valid_id).then(|| (ty.to_owned(), id.to_owned()))
}

/// The first literal reference in `field` (a Reference or a list of them).
fn reference_in(resource: &Value, field: &str, base: &str) -> Option<(String, String)> {
    let v = resource.get(field)?;
    let first = match v {
        Value::Array(items) => items.first()?,
        other => other,
    };
    local_target(first.get("reference")?.as_str()?, base)
}

/// The organization a resource's own organization field names: `Some(None)` when the field is
/// there but names something else (a Practitioner as a Claim's provider, say).
pub fn named_org(ty: &str, resource: &Value, base: &str) -> Option<String> {
    let field = org_field(ty)?;
    match reference_in(resource, field, base)? {
        (t, id) if t == "Organization" => Some(id),
        _ => None,
    }
}

/// The resource `resource` is about, whose owner it takes when it names no organization.
pub fn linked(ty: &str, resource: &Value, base: &str) -> Option<(String, String)> {
    link_fields(ty)
        .iter()
        .find_map(|f| reference_in(resource, f, base))
}

#[derive(Deserialize)]
struct Tagged {
    #[serde(default)]
    meta: Option<TaggedMeta>,
}

#[derive(Deserialize)]
struct TaggedMeta {
    #[serde(default)]
    tag: Vec<Tag>,
}

#[derive(Deserialize)]
struct Tag {
    #[serde(default)]
    system: Option<String>,
    #[serde(default)]
    code: Option<String>,
}

/// The owner tag of stored JSON, without building the whole document.
pub fn owner_in_json(content: &str) -> Option<String> {
    let t: Tagged = serde_json::from_str(content).ok()?;
    t.meta?
        .tag
        .into_iter()
        .find(|t| t.system.as_deref() == Some(OWNER_SYSTEM))
        .and_then(|t| t.code)
}

/// The owner tag of a resource.
pub fn owner_of(resource: &Value) -> Option<String> {
    resource
        .pointer("/meta/tag")?
        .as_array()?
        .iter()
        .find(|t| t.get("system").and_then(Value::as_str) == Some(OWNER_SYSTEM))?
        .get("code")?
        .as_str()
        .map(str::to_owned)
}

/// Replaces any owner tag of `resource` by one for `owner`, or removes it for `None`.
pub fn set_owner(resource: &mut Value, owner: Option<&str>) {
    let Some(obj) = resource.as_object_mut() else {
        return;
    };
    let meta = obj.entry("meta").or_insert_with(|| json!({}));
    let Some(meta) = meta.as_object_mut() else {
        return;
    };
    let tags = meta.entry("tag").or_insert_with(|| json!([]));
    if let Some(list) = tags.as_array_mut() {
        list.retain(|t| t.get("system").and_then(Value::as_str) != Some(OWNER_SYSTEM));
        if let Some(o) = owner {
            list.push(json!({"system": OWNER_SYSTEM, "code": o}));
        }
        if list.is_empty() {
            meta.remove("tag");
        }
    }
    if meta.is_empty() {
        obj.remove("meta");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_never_reach_beyond_their_areas() {
        let p = grants(Role::Distributor, area("Patient"));
        assert_eq!(p, Perms::default(), "distributors see no patient data");
        assert!(grants(Role::Distributor, area("Device")).c);
        assert!(grants(Role::Distributor, area("Invoice")).r);
        assert!(!grants(Role::Distributor, area("Invoice")).c);
        assert!(!grants(Role::DistributorUser, area("Invoice")).r);
        assert!(grants(Role::DistributorUser, area("Device")).u);
        assert!(!grants(Role::DistributorUser, area("Device")).c);
        assert!(grants(Role::Customer, area("Observation")).d);
        assert!(grants(Role::Customer, area("Invoice")).s);
        assert!(!grants(Role::CustomerUser, area("Invoice")).r, "no billing");
        assert!(!grants(Role::CustomerUser, area("PractitionerRole")).c);
        assert!(grants(Role::CustomerUser, area("Observation")).c);
        assert!(grants(Role::CustomerUser, area("ValueSet")).r);
        assert!(!grants(Role::Customer, area("ValueSet")).u);
        assert!(!grants(Role::Customer, area("AuditEvent")).r);
        assert!(grants(Role::Admin, area("AuditEvent")).r);
        let patient = grants(Role::Patient, area("Observation"));
        assert!(patient.r && patient.s && !patient.c && !patient.u && !patient.d);
        assert_eq!(grants(Role::Patient, area("Device")), Perms::default());
        assert_eq!(grants(Role::Patient, area("Invoice")), Perms::default());
    }

    #[test]
    fn owners_come_from_the_organization_field_or_the_subject() {
        let base = "http://vb.test/fhir";
        let p = json!({"resourceType": "Patient", "managingOrganization": {"reference": "Organization/c1"}});
        assert_eq!(named_org("Patient", &p, base).as_deref(), Some("c1"));
        let abs = json!({"owner": {"reference": "http://vb.test/fhir/Organization/c2"}});
        assert_eq!(named_org("Device", &abs, base).as_deref(), Some("c2"));
        let foreign = json!({"owner": {"reference": "http://other/fhir/Organization/c2"}});
        assert_eq!(named_org("Device", &foreign, base), None);
        let claim = json!({"provider": {"reference": "Practitioner/x"}});
        assert_eq!(named_org("Claim", &claim, base), None);
        let obs = json!({"subject": {"reference": "Patient/p1/_history/2"}, "device": {"reference": "Device/d"}});
        assert_eq!(
            linked("Observation", &obs, base),
            Some(("Patient".into(), "p1".into()))
        );
        let prov = json!({"target": [{"reference": "Observation/o1"}]});
        assert_eq!(
            linked("Provenance", &prov, base),
            Some(("Observation".into(), "o1".into()))
        );
        for bad in [
            "#contained",
            "Patient",
            "Patient/",
            "patient/1",
            "Patient/a b",
            "urn:uuid:1",
        ] {
            assert_eq!(local_target(bad, base), None, "{bad}");
        }
    }

    #[test]
    fn the_owner_tag_is_replaced_not_added() {
        let mut r = json!({"resourceType": "Observation", "meta": {"tag": [
            {"system": OWNER_SYSTEM, "code": "forged"},
            {"system": "http://example.org/x", "code": "keep"}
        ]}});
        set_owner(&mut r, Some("c1"));
        assert_eq!(owner_of(&r).as_deref(), Some("c1"));
        assert_eq!(r["meta"]["tag"].as_array().map(Vec::len), Some(2));
        assert_eq!(owner_in_json(&r.to_string()).as_deref(), Some("c1"));
        set_owner(&mut r, None);
        assert_eq!(owner_of(&r), None);
        assert_eq!(r["meta"]["tag"][0]["code"], "keep");
        let mut bare = json!({"resourceType": "Basic"});
        set_owner(&mut bare, None);
        assert_eq!(bare, json!({"resourceType": "Basic"}));
        assert_eq!(owner_in_json(r#"{"resourceType":"Basic"}"#), None);
    }
}
