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
pub const SYSTEM_INTERACTIONS: &[&str] = &["transaction", "batch", "history-system"];

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
            json!({
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
                "searchParam": [
                    {"name": "_id", "type": "token", "documentation": "Logical id of the resource"},
                    {"name": "identifier", "type": "token", "documentation": "Business identifier (system|value)"}
                ]
            })
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
        "format": FORMATS,
        "patchFormat": PATCH_FORMATS,
        "rest": [{
            "mode": "server",
            "resource": resources,
            "interaction": SYSTEM_INTERACTIONS.iter().map(|i| json!({"code": i})).collect::<Vec<_>>(),
        }]
    })
}
