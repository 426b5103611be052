//! The access policy (DESIGN.md rule 4): what one request may do, built once from its token and
//! consulted by every interaction, Bundle entry and operation.
//!
//! Three things narrow a request, and none can widen what another allows:
//! - the token's SMART scopes, by resource type and interaction
//!   (https://hl7.org/fhir/smart-app-launch/scopes-and-launch-context.html);
//! - the role's grants on each kind of resource ([`tenancy::grants`]);
//! - tenancy: a principal other than an admin sees only what the organizations it may see own
//!   ([`tenancy`]); everything else is answered as if it did not exist.
//!
//! `patient/…` scopes reach the compartment of the token's patient in context, and scopes with
//! a query only what it matches ([`restrict`]); without a patient in context a `patient/`
//! scope grants nothing. Searches are narrowed in SQL, single resources (reads, included
//! resources, writes) judged in memory by the same clauses.

use serde_json::Value;

use super::restrict;
use super::scope::{Perms, ResourceScope};
use super::tenancy::{self, Area};
use super::{Principal, Role};
use crate::http::error::ApiError;
use crate::search::SearchQuery;
use crate::store::Version;
use crate::store::query::Clause;

/// The SMART v2 permissions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Perm {
    Create,
    Read,
    Update,
    Delete,
    Search,
}

impl Perm {
    fn letter(self) -> char {
        match self {
            Perm::Create => 'c',
            Perm::Read => 'r',
            Perm::Update => 'u',
            Perm::Delete => 'd',
            Perm::Search => 's',
        }
    }

    fn verb(self) -> &'static str {
        match self {
            Perm::Create => "create",
            Perm::Read => "read",
            Perm::Update => "update",
            Perm::Delete => "delete",
            Perm::Search => "search",
        }
    }

    fn of(self, p: Perms) -> bool {
        match self {
            Perm::Create => p.c,
            Perm::Read => p.r,
            Perm::Update => p.u,
            Perm::Delete => p.d,
            Perm::Search => p.s,
        }
    }
}

/// What a request may do.
#[derive(Debug, Clone)]
pub struct Policy {
    scopes: Vec<ResourceScope>,
    role: Role,
    /// The organizations whose resources it sees, its own first; `None` for all (admins).
    orgs: Option<Vec<String>>,
    /// The request's FHIR base URL: absolute references under it are local.
    base: String,
    /// The patient in context, whose compartment `patient/` scopes reach.
    patient: Option<String>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            scopes: Vec::new(),
            role: Role::Patient,
            orgs: Some(Vec::new()),
            base: String::new(),
            patient: None,
        }
    }
}

impl Policy {
    /// The policy of `principal`'s requests at the FHIR base `base`. A distributor's customers
    /// are added by [`Policy::with_customers`].
    pub fn of(principal: &Principal, base: &str) -> Policy {
        Policy {
            scopes: principal
                .scopes
                .iter()
                .filter_map(|s| ResourceScope::parse(s))
                // A patient scope without a patient in context has nothing to reach.
                .filter(|s| s.context != "patient" || principal.patient.is_some())
                // A patient acts only within a patient context.
                .filter(|s| principal.role != Role::Patient || s.context == "patient")
                .collect(),
            role: principal.role,
            orgs: match principal.role {
                Role::Admin => None,
                _ => Some(principal.organization.iter().cloned().collect()),
            },
            base: base.to_owned(),
            patient: principal.patient.clone(),
        }
    }

    /// [`Policy::of`] with a distributor's customers added ([`Policy::with_customers`]): the
    /// policy of one request.
    pub async fn for_request(
        principal: &Principal,
        base: &str,
        store: &crate::store::Store,
    ) -> Result<Policy, crate::store::StoreError> {
        let policy = Policy::of(principal, base);
        match policy.own_org().filter(|_| policy.sees_customers()) {
            Some(own) => {
                let customers = store.customer_orgs(own, base).await?;
                Ok(policy.with_customers(customers))
            }
            None => Ok(policy),
        }
    }

    /// The server's own writes (the billing run): every resource of every tenant, as an admin
    /// with `system/*.cruds`.
    pub fn system() -> Policy {
        Policy {
            scopes: ResourceScope::parse("system/*.cruds").into_iter().collect(),
            role: Role::Admin,
            orgs: None,
            base: String::new(),
            patient: None,
        }
    }

    /// A policy that permits nothing (a request without a principal).
    pub fn none() -> Policy {
        Policy::default()
    }

    /// True when the role needs its customers' organizations ([`Policy::with_customers`]).
    pub fn sees_customers(&self) -> bool {
        matches!(self.role, Role::Distributor | Role::DistributorUser)
    }

    /// The principal's own organization, if it has one and is not an admin.
    pub fn own_org(&self) -> Option<&str> {
        self.orgs.as_ref()?.first().map(String::as_str)
    }

    /// Adds the organizations of a distributor's customers.
    pub fn with_customers(mut self, customers: Vec<String>) -> Policy {
        if let Some(orgs) = self.orgs.as_mut() {
            for c in customers {
                if !orgs.contains(&c) {
                    orgs.push(c);
                }
            }
        }
        self
    }

    /// True for admins: every organization's resources.
    pub fn all_tenants(&self) -> bool {
        self.orgs.is_none()
    }

    /// True when some scope narrows what it grants to a compartment or a query.
    pub fn narrows(&self) -> bool {
        self.scopes
            .iter()
            .any(|s| s.context == "patient" || s.query.is_some())
    }

    /// True when nothing narrows what the scopes and role allow: every tenant, no narrowing
    /// scope.
    pub fn unrestricted(&self) -> bool {
        self.all_tenants() && !self.narrows()
    }

    /// What the scopes granting `perm` on `ty` let through: `None` when one of them grants
    /// every resource of the type; otherwise the clause a resource must match (any of the
    /// scopes' narrowings; [`Clause::Nothing`] when no scope grants `perm` on `ty`).
    pub fn restriction(&self, ty: &str, perm: Perm) -> Option<Clause> {
        let mut any = Vec::new();
        for s in self
            .scopes
            .iter()
            .filter(|s| (s.resource == "*" || s.resource == ty) && perm.of(s.perms))
        {
            let mut all = Vec::new();
            if s.context == "patient" {
                let Some(patient) = &self.patient else {
                    continue;
                };
                all.push(restrict::compartment_clause(ty, patient, &self.base));
            }
            if let Some(q) = &s.query {
                match restrict::scope_clauses(ty, q, &self.base) {
                    Some(clauses) => all.extend(clauses),
                    None => continue,
                }
            }
            match all.len() {
                0 => return None,
                1 => any.push(all.remove(0)),
                _ => any.push(Clause::All(all)),
            }
        }
        Some(match any.len() {
            0 => Clause::Nothing,
            1 => any.remove(0),
            _ => Clause::Any(any),
        })
    }

    /// True when the scopes granting `perm` on `ty` let this resource through ([`restrict::matches`]).
    pub fn allows(&self, ty: &str, id: Option<&str>, perm: Perm, resource: &Value) -> bool {
        match self.restriction(ty, perm) {
            None => true,
            Some(c) => restrict::matches(
                &c,
                ty,
                id.unwrap_or_default(),
                &crate::search::index::rows(resource),
            ),
        }
    }

    /// A write of `resource` as `ty/id` (`id` `None`: a create with a new id) replacing
    /// `current`: both must be within the scopes of the write (403 otherwise; the current
    /// version has passed the read check already).
    pub fn check_write(
        &self,
        ty: &str,
        id: Option<&str>,
        resource: &Value,
        current: Option<&Value>,
    ) -> Result<(), ApiError> {
        if !self.narrows() {
            return Ok(());
        }
        let perm = if id.is_some() {
            Perm::Update
        } else {
            Perm::Create
        };
        let outside = current.is_some_and(|c| !self.allows(ty, id, perm, c))
            || !self.allows(ty, id, perm, resource);
        if outside {
            return Err(ApiError::Forbidden(format!(
                "this {ty} is outside what the access token's scopes allow to {}",
                perm.verb()
            )));
        }
        Ok(())
    }

    /// A delete of `ty/id` whose current content is `current`: within the delete scopes.
    pub fn allows_delete(&self, ty: &str, id: &str, current: &Value) -> bool {
        !self.narrows() || self.allows(ty, Some(id), Perm::Delete, current)
    }

    /// Type and system history list versions the narrowing scopes cannot be applied to one by
    /// one within a page: refused while a scope narrows `ty` (every type when `None`).
    pub fn check_history(&self, ty: Option<&str>) -> Result<(), ApiError> {
        let narrowed = match ty {
            Some(t) => self.restriction(t, Perm::Search).is_some(),
            None => self.narrows(),
        };
        if narrowed {
            return Err(ApiError::Forbidden(
                "history of a type or of the server is not available to tokens with patient or \
                 granular scopes; read the history of a resource instead"
                    .into(),
            ));
        }
        Ok(())
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// True when a scope and the role both grant `perm` on resources of type `ty`.
    pub fn permits(&self, ty: &str, perm: Perm) -> bool {
        self.scope_permits(ty, perm) && self.role_permits(ty, perm)
    }

    fn scope_permits(&self, ty: &str, perm: Perm) -> bool {
        self.scopes
            .iter()
            .any(|s| (s.resource == "*" || s.resource == ty) && perm.of(s.perms))
    }

    fn role_permits(&self, ty: &str, perm: Perm) -> bool {
        if ty == "*" {
            return self.role == Role::Admin;
        }
        perm.of(tenancy::grants(self.role, tenancy::area(ty)))
    }

    /// True when some scope grants `perm` on every type (system-wide search and history).
    pub fn permits_all(&self, perm: Perm) -> bool {
        self.scopes.iter().any(|s| s.resource == "*") && self.permits("*", perm)
    }

    /// [`Policy::permits`], or 403 naming what is missing.
    pub fn check(&self, ty: &str, perm: Perm) -> Result<(), ApiError> {
        if !self.scope_permits(ty, perm) {
            return Err(ApiError::Forbidden(format!(
                "the access token's scopes do not allow this: it needs a scope such as system/{ty}.{}",
                perm.letter()
            )));
        }
        if !self.role_permits(ty, perm) {
            let what = if ty == "*" {
                "resources of every type".to_owned()
            } else {
                format!("{ty} resources")
            };
            return Err(ApiError::Forbidden(format!(
                "the role {} may not {} {what}",
                self.role,
                perm.verb()
            )));
        }
        Ok(())
    }

    /// [`Policy::check`] for every type.
    pub fn check_all(&self, perm: Perm) -> Result<(), ApiError> {
        self.check("*", perm)
    }

    /// Included resources are read through the search: an `_include` naming its target type
    /// or a `_revinclude` naming its source type needs read on that type (403 otherwise);
    /// what a wildcard brings in is filtered by [`Policy::may_include`].
    pub fn check_includes(&self, q: &SearchQuery) -> Result<(), ApiError> {
        for inc in &q.include {
            if let Some(t) = &inc.target {
                self.check(t, Perm::Read)?;
            }
        }
        for inc in q.revinclude.iter().filter(|i| i.source != "*") {
            self.check(&inc.source, Perm::Read)?;
        }
        Ok(())
    }

    /// True when an included version may be shown: readable type, within the tenancy and the
    /// read scopes.
    pub fn may_include(&self, v: &Version) -> bool {
        self.permits(&v.ty, Perm::Read) && self.sees_version(v)
    }

    /// The types a search without `_type` (system search, `$everything`) covers: every type
    /// the caller may search.
    pub fn searchable_types(&self) -> Vec<crate::fhir::types::ResourceType> {
        crate::fhir::types::ResourceType::all()
            .filter(|t| self.permits(t.as_str(), Perm::Search))
            .collect()
    }

    /// Managing OAuth clients (`/auth/clients`) is for admins (issue 4: "clients, users and
    /// their roles managed through the API (admin)").
    pub fn check_manage_clients(&self) -> Result<(), ApiError> {
        if self.role == Role::Admin {
            Ok(())
        } else {
            Err(ApiError::Forbidden(
                "only admins manage OAuth clients".into(),
            ))
        }
    }

    /// Posting readings to `/ingest/hub` is for hubs and gateways, with their own client
    /// credentials (issue 5, "Three ways in").
    pub fn check_ingest_hub(&self) -> Result<(), ApiError> {
        if self.role == Role::Hub {
            Ok(())
        } else {
            Err(ApiError::Forbidden(
                "only a hub's own client credentials post readings here".into(),
            ))
        }
    }

    /// Registering a cellular vendor integration for `organization`: admins for any, a clinic
    /// for its own (its readings become that clinic's data).
    pub fn check_manage_integrations(&self, organization: &str) -> Result<(), ApiError> {
        match self.role {
            Role::Admin => Ok(()),
            Role::Customer if self.own_org() == Some(organization) => Ok(()),
            _ => Err(ApiError::Forbidden(
                "only admins and the clinic itself register its vendor integrations".into(),
            )),
        }
    }

    /// The organizations whose kept raw device messages it may read (`/ingest/messages`):
    /// all for admins (`None`), its own for a clinic and its staff; they hold patients'
    /// readings, so no one else.
    pub fn raw_message_orgs(&self) -> Result<Option<Vec<String>>, ApiError> {
        match self.role {
            Role::Admin => Ok(None),
            Role::Customer | Role::CustomerUser => Ok(Some(self.orgs.clone().unwrap_or_default())),
            _ => Err(ApiError::Forbidden(
                "raw device messages are for admins and the clinic that owns them".into(),
            )),
        }
    }

    /// Registering an OAuth client of `role` for `organization`: admins any; a clinic (and a
    /// distributor, for its customers) the hubs of its own organization, whose readings become
    /// its data.
    pub fn check_register_client(
        &self,
        role: Role,
        organization: Option<&str>,
    ) -> Result<(), ApiError> {
        match (self.role, role) {
            (Role::Admin, _) => Ok(()),
            (Role::Customer | Role::Distributor, Role::Hub)
                if organization.is_some() && self.sees_org(organization) =>
            {
                Ok(())
            }
            _ => Err(ApiError::Forbidden(
                "only admins register clients; clinics and distributors their own hubs".into(),
            )),
        }
    }

    /// Whether it may manage sign-in accounts at all (`/auth/users`): admins; a clinic
    /// (customer) for its staff and patients; a distributor for its own staff and its
    /// customers' clinic accounts (issue 4, "Roles and tenancy").
    pub fn check_manage_users(&self) -> Result<(), ApiError> {
        if matches!(self.role, Role::Admin | Role::Customer | Role::Distributor) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(
                "only admins, clinics and distributors manage users".into(),
            ))
        }
    }

    /// Whether it may create, see or remove a user of `role` acting for `organization`.
    /// A distributor's policy must carry its customers ([`Policy::for_request`]).
    pub fn may_manage_user(&self, role: Role, organization: Option<&str>) -> bool {
        let own = organization.is_some() && organization == self.own_org();
        match (self.role, role) {
            (Role::Admin, _) => true,
            (Role::Customer, Role::CustomerUser | Role::Patient) => own,
            (Role::Distributor, Role::DistributorUser) => own,
            (Role::Distributor, Role::Customer | Role::CustomerUser) => {
                !own && organization.is_some() && self.sees_org(organization)
            }
            _ => false,
        }
    }

    /// True when the organizations it sees include `org`.
    fn sees_org(&self, org: Option<&str>) -> bool {
        match (&self.orgs, org) {
            (None, _) => true,
            (Some(orgs), Some(o)) => orgs.iter().any(|x| x == o),
            (Some(_), None) => false,
        }
    }

    /// True when the resource `ty/id` with this stored JSON is within its tenancy. Deleted
    /// versions carry no owner: see [`Policy::sees_version`].
    /// With narrowing read scopes the resource must also be within them.
    pub fn sees(&self, ty: &str, id: &str, content: &str) -> bool {
        let tenant = self.all_tenants()
            || match tenancy::area(ty) {
                Area::Shared => true,
                Area::Organization => self.sees_org(Some(id)),
                _ => self.sees_org(tenancy::owner_in_json(content).as_deref()),
            };
        tenant && (!self.narrows() || self.within_read_scopes(ty, id, content))
    }

    /// The read scopes' narrowing (when a scope grants read on `ty` at all: other interactions
    /// are checked where they happen).
    fn within_read_scopes(&self, ty: &str, id: &str, content: &str) -> bool {
        if !self.scope_permits(ty, Perm::Read) {
            return true;
        }
        match self.restriction(ty, Perm::Read) {
            None => true,
            Some(c) => serde_json::from_str::<Value>(content)
                .is_ok_and(|v| restrict::matches(&c, ty, id, &crate::search::index::rows(&v))),
        }
    }

    /// [`Policy::sees`] for a stored version; a delete is seen by admins only (callers that
    /// need a delete's owner look at the version before it).
    pub fn sees_version(&self, v: &Version) -> bool {
        match &v.content {
            Some(c) => self.sees(&v.ty, &v.id, c),
            None => self.all_tenants(),
        }
    }

    /// The clause that keeps a search within its tenancy, `None` for admins.
    pub fn owner_clause(&self) -> Option<Clause> {
        self.orgs
            .as_ref()
            .map(|orgs| Clause::Owned { orgs: orgs.clone() })
    }

    /// The owners a type or system history is narrowed to ([`crate::store::HistoryQuery`]);
    /// `None` when the caller sees all of it. An instance's history is checked on the resource.
    pub fn history_owners(&self, scope: &crate::store::HistoryScope<'_>) -> Option<Vec<String>> {
        use crate::store::HistoryScope;
        match scope {
            HistoryScope::Type(ty) if tenancy::area(ty.as_str()) == Area::Shared => None,
            HistoryScope::Instance(..) => None,
            _ => self.orgs.clone(),
        }
    }

    /// `q` on `types` narrowed to the tenancy and the narrowing scopes: the matches, and the
    /// resources chains and `_has` look at, so that neither the page nor `_total` counts what
    /// the caller may not see.
    pub fn narrow(&self, q: &SearchQuery, types: &[&str]) -> SearchQuery {
        let mut q = q.clone();
        let owned = self.owner_clause();
        let narrows = self.narrows();
        let inner = |ty: &str| {
            let mut extra: Vec<Clause> = owned.iter().cloned().collect();
            if narrows {
                extra.extend(self.restriction(ty, Perm::Search));
            }
            extra
        };
        for c in q.clauses.iter_mut() {
            narrow_inner(c, &inner);
        }
        q.clauses.extend(owned.clone());
        if narrows {
            let by_type: Vec<(String, Clause)> = types
                .iter()
                .filter_map(|t| {
                    self.restriction(t, Perm::Search)
                        .map(|c| (t.to_string(), c))
                })
                .collect();
            if !by_type.is_empty() {
                q.clauses.push(Clause::ByType(by_type));
            }
        }
        q
    }

    /// Checks a resource about to be written and stamps its owner (see [`tenancy`]).
    /// `linked_owner` is the owner of the resource it is about, when the caller may see it;
    /// `current` is the version it replaces, if any.
    pub fn admit(
        &self,
        ty: &str,
        resource: &mut Value,
        linked_owner: Option<String>,
        current: Option<&Value>,
    ) -> Result<(), ApiError> {
        let base = self.base.as_str();
        let named = tenancy::named_org(ty, resource, base);
        if tenancy::area(ty) == Area::Organization {
            tenancy::set_owner(resource, None);
            if self.all_tenants() {
                return Ok(());
            }
            // Organizations form the tenant tree: a distributor adds customers under itself,
            // and nobody moves an organization to another branch.
            let allowed = match current {
                Some(cur) => named == tenancy::named_org(ty, cur, base),
                None => named.is_some() && named.as_deref() == self.own_org(),
            };
            return if allowed {
                Ok(())
            } else {
                Err(ApiError::Forbidden(
                    "an organization can only be created under your own, and its partOf cannot change"
                        .into(),
                ))
            };
        }
        let derived = named.or(linked_owner);
        let owner = derived
            .or_else(|| tenancy::owner_of(resource))
            .or_else(|| current.and_then(tenancy::owner_of))
            .or_else(|| self.own_org().map(str::to_owned));
        if !self.sees_org(owner.as_deref()) {
            return Err(ApiError::Forbidden(format!(
                "this {ty} would belong to an organization outside yours"
            )));
        }
        tenancy::set_owner(resource, owner.as_deref());
        Ok(())
    }
}

/// Narrows the resources of each type a chain or `_has` looks at, at every level, by the
/// clauses `extra` gives for that type.
fn narrow_inner(clause: &mut Clause, extra: &impl Fn(&str) -> Vec<Clause>) {
    let wrap = |inner: &mut Box<Clause>, ty: &str| {
        narrow_inner(inner, extra);
        let more = extra(ty);
        if !more.is_empty() {
            let taken = std::mem::replace(inner.as_mut(), Clause::Nothing);
            let mut all = vec![taken];
            all.extend(more);
            **inner = Clause::All(all);
        }
    };
    match clause {
        Clause::Chain { targets, .. } => {
            for (ty, inner) in targets.iter_mut() {
                wrap(inner, ty);
            }
        }
        Clause::Has {
            inner, source_type, ..
        } => wrap(inner, source_type),
        Clause::Any(list) | Clause::All(list) => {
            list.iter_mut().for_each(|c| narrow_inner(c, extra));
        }
        Clause::Dated { reference, .. } => narrow_inner(reference, extra),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn principal(role: Role, org: Option<&str>, scopes: &[&str]) -> Principal {
        Principal {
            client_id: "c".into(),
            subject: "c".into(),
            role,
            organization: org.map(str::to_owned),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            patient: None,
            token_id: "t".into(),
            expires_at: 0,
            issuer: None,
        }
    }

    fn policy(scopes: &[&str]) -> Policy {
        Policy::of(&principal(Role::Admin, None, scopes), "http://vb.test/fhir")
    }

    #[test]
    fn scopes_grant_types_and_interactions() {
        let p = policy(&["system/Observation.rs", "system/Patient.read", "openid"]);
        assert!(p.permits("Observation", Perm::Read));
        assert!(p.permits("Observation", Perm::Search));
        assert!(!p.permits("Observation", Perm::Create));
        assert!(p.permits("Patient", Perm::Search), "v1 read = rs");
        assert!(!p.permits("Device", Perm::Read));
        assert!(!p.permits_all(Perm::Search));
        assert!(p.check("Device", Perm::Read).is_err());
        let all = policy(&["system/*.cruds"]);
        assert!(all.permits("Device", Perm::Delete));
        assert!(all.permits_all(Perm::Search));
        let writer = policy(&["system/*.cud"]);
        assert!(!writer.permits_all(Perm::Search));
        assert!(writer.permits("Device", Perm::Update));
    }

    #[test]
    fn patient_scopes_need_a_patient_in_context() {
        let p = policy(&["patient/Observation.rs"]);
        assert!(!p.permits("Observation", Perm::Read));
        assert!(!p.permits("Observation", Perm::Search));
        // A patient acts through patient scopes only, within its context.
        let mut me = principal(
            Role::Patient,
            Some("c1"),
            &["patient/Observation.rs", "user/Observation.rs"],
        );
        assert!(!Policy::of(&me, "").permits("Observation", Perm::Read));
        me.patient = Some("p1".into());
        let mine = Policy::of(&me, "");
        assert!(mine.permits("Observation", Perm::Read));
        assert!(!mine.permits("Observation", Perm::Create));
        assert!(
            mine.restriction("Observation", Perm::Read).is_some(),
            "user/ scope dropped"
        );
        assert!(!Policy::none().permits("Patient", Perm::Read));
    }

    #[test]
    fn narrowing_scopes_restrict_and_union() {
        let base = "http://vb.test/fhir";
        let mut who = principal(
            Role::CustomerUser,
            Some("c1"),
            &[
                "patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|vital-signs",
                "patient/Patient.r",
                "user/Device.rs",
            ],
        );
        who.patient = Some("p1".into());
        let p = Policy::of(&who, base);
        assert!(p.narrows() && !p.unrestricted());
        assert!(p.permits("Observation", Perm::Search));
        assert!(!p.permits("Observation", Perm::Create));
        assert_eq!(
            p.restriction("Device", Perm::Read),
            None,
            "user/ is not narrowed"
        );
        assert_eq!(
            p.restriction("Observation", Perm::Create),
            Some(Clause::Nothing)
        );
        let cat = "http://terminology.hl7.org/CodeSystem/observation-category";
        let obs = |subject: &str, category: &str| {
            json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                "subject": {"reference": subject},
                "category": [{"coding": [{"system": cat, "code": category}]}],
                "meta": {"tag": [{"system": tenancy::OWNER_SYSTEM, "code": "c1"}]}})
        };
        let seen = |v: &Value| p.sees("Observation", "o", &v.to_string());
        assert!(seen(&obs("Patient/p1", "vital-signs")));
        assert!(!seen(&obs("Patient/p2", "vital-signs")), "another patient");
        assert!(!seen(&obs("Patient/p1", "laboratory")), "outside the query");
        let patient = json!({"resourceType": "Patient", "meta": {"tag": [{"system": tenancy::OWNER_SYSTEM, "code": "c1"}]}});
        assert!(p.sees("Patient", "p1", &patient.to_string()));
        assert!(!p.sees("Patient", "p2", &patient.to_string()));
        // Two scopes on one type: either lets a resource through.
        let mut two = principal(
            Role::Admin,
            None,
            &["patient/Observation.r", "system/Observation.r?code=8867-4"],
        );
        two.patient = Some("p1".into());
        let p2 = Policy::of(&two, base);
        let pulse = json!({"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"code": "8867-4"}]}, "subject": {"reference": "Patient/p9"}});
        assert!(p2.sees("Observation", "o", &pulse.to_string()));
        assert!(p2.sees("Observation", "o", &obs("Patient/p1", "x").to_string()));
        assert!(!p2.sees("Observation", "o", &obs("Patient/p9", "x").to_string()));
        // Writes: within the write scopes, before and after.
        let mut writer = principal(Role::Admin, None, &["patient/Observation.cru"]);
        writer.patient = Some("p1".into());
        let w = Policy::of(&writer, base);
        let mine = obs("Patient/p1", "vital-signs");
        let theirs = obs("Patient/p2", "vital-signs");
        assert!(w.check_write("Observation", None, &mine, None).is_ok());
        assert!(w.check_write("Observation", None, &theirs, None).is_err());
        assert!(
            w.check_write("Observation", Some("o"), &theirs, Some(&mine))
                .is_err(),
            "moved out"
        );
        assert!(
            w.check_write("Observation", Some("o"), &mine, Some(&theirs))
                .is_err(),
            "moved in"
        );
        assert!(w.check_history(Some("Observation")).is_err());
        assert!(
            p.check_history(Some("Device")).is_ok(),
            "no scope narrows Device"
        );
        // A search is narrowed per type, inside chains too.
        let q = SearchQuery {
            clauses: vec![Clause::Has {
                source_type: "Observation".into(),
                param: "subject".into(),
                inner: Box::new(Clause::Nothing),
                base: String::new(),
            }],
            ..Default::default()
        };
        let n = p.narrow(&q, &["Patient", "Device"]);
        let Clause::Has { inner, .. } = &n.clauses[0] else {
            panic!("{:?}", n.clauses[0])
        };
        assert!(
            matches!(inner.as_ref(), Clause::All(v) if v.len() == 3),
            "{inner:?}"
        );
        match n.clauses.last() {
            Some(Clause::ByType(by)) => {
                assert_eq!(by.len(), 1, "Device is not narrowed: {by:?}");
                assert_eq!(by[0].0, "Patient");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn roles_narrow_scopes_and_scopes_narrow_roles() {
        let base = "http://vb.test/fhir";
        let dist = Policy::of(
            &principal(Role::Distributor, Some("d1"), &["system/*.cruds"]),
            base,
        );
        assert!(
            !dist.permits("Observation", Perm::Read),
            "role narrows the scope"
        );
        assert!(dist.permits("Device", Perm::Create));
        assert!(
            !dist.permits_all(Perm::Search),
            "only admins search every type"
        );
        let e = dist.check("Patient", Perm::Read).expect_err("denied");
        assert!(format!("{e:?}").contains("distributor"), "{e:?}");
        let clinic = Policy::of(
            &principal(Role::Customer, Some("c1"), &["system/Observation.rs"]),
            base,
        );
        assert!(clinic.permits("Observation", Perm::Search));
        assert!(
            !clinic.permits("Observation", Perm::Create),
            "scope narrows the role"
        );
    }

    #[test]
    fn tenancy_decides_what_is_seen_and_who_owns_writes() {
        let base = "http://vb.test/fhir";
        let dist = Policy::of(
            &principal(Role::Distributor, Some("d1"), &["system/*.cruds"]),
            base,
        )
        .with_customers(vec!["c1".into()]);
        let mine = json!({"resourceType": "Device", "meta": {"tag": [{"system": tenancy::OWNER_SYSTEM, "code": "c1"}]}});
        let theirs = json!({"resourceType": "Device", "meta": {"tag": [{"system": tenancy::OWNER_SYSTEM, "code": "c2"}]}});
        assert!(dist.sees("Device", "x", &mine.to_string()));
        assert!(!dist.sees("Device", "x", &theirs.to_string()));
        assert!(!dist.sees("Device", "x", r#"{"resourceType":"Device"}"#));
        assert!(dist.sees("Organization", "c1", "{}"));
        assert!(!dist.sees("Organization", "c2", "{}"));
        assert!(dist.sees("ValueSet", "v", "{}"), "definitions are shared");

        // A device for a customer of the distributor; not for another distributor's.
        let mut d = json!({"resourceType": "Device", "owner": {"reference": "Organization/c1"}});
        dist.admit("Device", &mut d, None, None)
            .expect("own customer");
        assert_eq!(tenancy::owner_of(&d).as_deref(), Some("c1"));
        let mut d = json!({"resourceType": "Device", "owner": {"reference": "Organization/c2"}});
        assert!(dist.admit("Device", &mut d, None, None).is_err());
        // Without an organization field it belongs to the writer's organization; a forged tag
        // does not move it out.
        let mut d = json!({"resourceType": "Device"});
        dist.admit("Device", &mut d, None, None).expect("own");
        assert_eq!(tenancy::owner_of(&d).as_deref(), Some("d1"));
        let mut forged = theirs.clone();
        assert!(dist.admit("Device", &mut forged, None, None).is_err());
        // An update keeps the current owner when the body names none.
        let mut d = json!({"resourceType": "Device"});
        dist.admit("Device", &mut d, None, Some(&mine))
            .expect("update");
        assert_eq!(tenancy::owner_of(&d).as_deref(), Some("c1"));

        // An Observation takes its patient's owner.
        let clinic = Policy::of(
            &principal(Role::Customer, Some("c1"), &["system/*.cruds"]),
            base,
        );
        let mut o = json!({"resourceType": "Observation", "subject": {"reference": "Patient/p"}});
        clinic
            .admit("Observation", &mut o, Some("c1".into()), None)
            .expect("own patient");
        assert_eq!(tenancy::owner_of(&o).as_deref(), Some("c1"));
        let mut o = json!({"resourceType": "Observation"});
        assert!(
            clinic
                .admit("Observation", &mut o, Some("c2".into()), None)
                .is_err()
        );

        // Organizations: a distributor adds customers under itself only.
        let mut org =
            json!({"resourceType": "Organization", "partOf": {"reference": "Organization/d1"}});
        dist.admit("Organization", &mut org, None, None)
            .expect("customer");
        let mut org =
            json!({"resourceType": "Organization", "partOf": {"reference": "Organization/d2"}});
        assert!(dist.admit("Organization", &mut org, None, None).is_err());
        let cur =
            json!({"resourceType": "Organization", "partOf": {"reference": "Organization/d1"}});
        let mut moved = json!({"resourceType": "Organization"});
        assert!(
            dist.admit("Organization", &mut moved, None, Some(&cur))
                .is_err()
        );

        // Admins own nothing themselves: the owner comes from the content.
        let admin = policy(&["system/*.cruds"]);
        let mut o = json!({"resourceType": "Observation"});
        admin
            .admit("Observation", &mut o, Some("c9".into()), None)
            .expect("admin");
        assert_eq!(tenancy::owner_of(&o).as_deref(), Some("c9"));
        let mut b = json!({"resourceType": "Basic"});
        admin.admit("Basic", &mut b, None, None).expect("admin");
        assert_eq!(tenancy::owner_of(&b), None);
    }

    #[test]
    fn narrowing_reaches_into_chains() {
        let clinic = Policy::of(
            &principal(Role::Customer, Some("c1"), &["system/*.cruds"]),
            "",
        );
        let q = SearchQuery {
            clauses: vec![Clause::Chain {
                param: "subject".into(),
                targets: vec![("Patient".into(), Box::new(Clause::Nothing))],
                base: String::new(),
            }],
            ..Default::default()
        };
        let n = clinic.narrow(&q, &["Observation"]);
        assert_eq!(n.clauses.len(), 2);
        let owned = Clause::Owned {
            orgs: vec!["c1".into()],
        };
        assert_eq!(n.clauses[1], owned);
        match &n.clauses[0] {
            Clause::Chain { targets, .. } => {
                assert_eq!(*targets[0].1, Clause::All(vec![Clause::Nothing, owned]));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            policy(&["system/*.cruds"])
                .narrow(&q, &["Observation"])
                .clauses,
            q.clauses
        );
    }
}
