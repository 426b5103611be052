//! The CapabilityStatement at `/fhir/metadata` (https://hl7.org/fhir/R4/capabilitystatement.html),
//! built from the same tables the router and the search parser use, so it can only claim what
//! the server does.

use serde_json::{Value, json};

use super::types::ResourceType;

/// Interactions every resource type supports (http.html).
pub const TYPE_INTERACTIONS: &[&str] = &[
    "read",
    "vread",
    "update",
    "patch",
    "delete",
    "history-instance",
    "history-type",
    "create",
    "search-type",
];

/// System-level interactions.
pub const SYSTEM_INTERACTIONS: &[&str] =
    &["transaction", "batch", "history-system", "search-system"];

/// Formats the server reads and writes.
pub const FORMATS: &[&str] = &[
    "application/fhir+json",
    "application/json",
    "application/fhir+xml",
    "application/xml",
];

/// Patch formats.
pub const PATCH_FORMATS: &[&str] = &["application/json-patch+json"];

pub fn capability_statement(base: &str, software_version: &str, started: &str) -> Value {
    let resources: Vec<Value> = ResourceType::all()
        .map(|ty| {
            let mut r = json!({
                "type": ty.as_str(),
                "interaction": TYPE_INTERACTIONS.iter().map(|i| json!({"code": i})).collect::<Vec<_>>(),
                "versioning": "versioned-update",
                "readHistory": true,
                "updateCreate": true,
                "conditionalCreate": true,
                "conditionalRead": "not-supported",
                "conditionalUpdate": true,
                "conditionalDelete": "single",
                "referencePolicy": ["literal", "logical"],
                "searchParam": search_params(ty),
                "searchInclude": search_includes(ty),
                "searchRevInclude": ["*"],
            });
            // No empty arrays: FHIR forbids them (json.html) and the XML writer cannot take one.
            let ops = operations(ty);
            if !ops.is_empty() {
                r["operation"] = Value::Array(ops);
            }
            if ty.as_str() == "Subscription" {
                subscription_topics(&mut r);
            }
            r
        })
        .collect();
    json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": started,
        "publisher": "vitalbridge",
        "kind": "instance",
        "software": { "name": "vitalbridge", "version": software_version },
        "implementation": { "description": "vitalbridge FHIR R4 server for remote patient monitoring", "url": base },
        "fhirVersion": "4.0.1",
        // Topic-based subscriptions in R4 (Subscriptions R5 Backport IG STU 1.1).
        "instantiates": [
            "http://hl7.org/fhir/uv/subscriptions-backport/CapabilityStatement/backport-subscription-server-r4"
        ],
        "format": FORMATS,
        "patchFormat": PATCH_FORMATS,
        "rest": [{
            "mode": "server",
            "resource": resources,
            "interaction": SYSTEM_INTERACTIONS.iter().map(|i| json!({"code": i})).collect::<Vec<_>>(),
            "searchParam": [
                {"name": "_id", "type": "token"},
                {"name": "_lastUpdated", "type": "date"},
                {"name": "_type", "type": "token"}
            ],
            "security": security(base),
        }]
    })
}

/// `rest.security`: a SMART-on-FHIR service with its OAuth endpoints in the `oauth-uris`
/// extension (https://hl7.org/fhir/smart-app-launch/conformance.html#declaring-support-for-oauth2-endpoints).
fn security(base: &str) -> Value {
    let origin = base.strip_suffix("/fhir").unwrap_or(base);
    json!({
        "extension": [{
            "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
            "extension": [
                {"url": "token", "valueUri": format!("{origin}/auth/token")}
            ]
        }],
        "service": [{
            "coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                "code": "SMART-on-FHIR"
            }],
            "text": "OAuth2 using SMART-on-FHIR profile (see http://docs.smarthealthit.org)"
        }],
        "description": "Every interaction but this CapabilityStatement needs a bearer access token from the token endpoint (SMART App Launch 2, Backend Services)."
    })
}

/// Every search parameter the registry defines for `ty` and the engine answers: those with an
/// expression (https://hl7.org/fhir/R4/searchparameter-registry.html), `_id` and `_lastUpdated`.
fn search_params(ty: ResourceType) -> Vec<Value> {
    crate::search::registry::for_type(ty.as_str())
        .filter(|p| !p.expression.is_empty() || matches!(p.code, "_id" | "_lastUpdated"))
        .map(|p| {
            json!({
                "name": p.code,
                "definition": format!("http://hl7.org/fhir/SearchParameter/{}-{}",
                    if p.resource_type == crate::search::registry::ALL_TYPES { "Resource" } else { p.resource_type },
                    p.code),
                "type": p.kind.as_str(),
            })
        })
        .collect()
}

/// `_include` values: every reference parameter of the type, and `*`.
fn search_includes(ty: ResourceType) -> Vec<String> {
    let mut out: Vec<String> = crate::search::registry::for_type(ty.as_str())
        .filter(|p| p.kind == crate::search::registry::ParamType::Reference)
        .map(|p| format!("{}:{}", ty.as_str(), p.code))
        .collect();
    out.push(format!("{}:*", ty.as_str()));
    out
}

/// The topics a Subscription may name, and the Backport IG profile it may claim
/// (http://hl7.org/fhir/uv/subscriptions-backport/STU1.1/conformance.html).
fn subscription_topics(r: &mut Value) {
    r["extension"] = crate::subscriptions::topics::TOPICS
        .iter()
        .map(|t| {
            json!({
                "url": "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/capabilitystatement-subscriptiontopic-canonical",
                "valueCanonical": t.url
            })
        })
        .collect();
    r["supportedProfile"] = json!([
        "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription"
    ]);
}

/// Type-level operations: `$validate` on every type
/// (https://hl7.org/fhir/R4/resource-operation-validate.html), and the type's own.
fn operations(ty: ResourceType) -> Vec<Value> {
    let mut ops = vec![json!({
        "name": "validate",
        "definition": "http://hl7.org/fhir/OperationDefinition/Resource-validate"
    })];
    match ty.as_str() {
        "Observation" => ops.push(json!({
            "name": "lastn",
            "definition": "http://hl7.org/fhir/OperationDefinition/Observation-lastn"
        })),
        // Records a payment of an invoice (`billing::payment`; its parameters are in the
        // README until the OpenAPI document describes them).
        "Invoice" => ops.push(json!({
            "name": "record-payment",
            "definition": "https://vitalbridge.dev/fhir/OperationDefinition/Invoice-record-payment"
        })),
        "Patient" => ops.push(json!({
            "name": "everything",
            "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything"
        })),
        "Subscription" => ops.extend([
            json!({
                "name": "status",
                "definition": "http://hl7.org/fhir/uv/subscriptions-backport/OperationDefinition/backport-subscription-status"
            }),
            json!({
                "name": "events",
                "definition": "http://hl7.org/fhir/uv/subscriptions-backport/OperationDefinition/backport-subscription-events"
            }),
        ]),
        _ => {}
    }
    ops
}
