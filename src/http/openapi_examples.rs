//! Request-body examples for the create operations of the OpenAPI document.
//!
//! The explorer fills its "Try it out" editor with an operation's example, and schemathesis
//! sends the examples first (its `examples` phase): an example that the server accepts lets a
//! developer create a resource with one click and gives the test run one valid body per type.
//! Each one is the smallest resource a production deployment would meaningfully store, and the
//! test `openapi::create_examples_are_accepted` creates every one of them.
//!
//! OpenAPI: https://spec.openapis.org/oas/v3.1.0#media-type-object (`example`).

use serde_json::{Value, json};

/// The example body for creating a resource of type `ty`, or `None` when the document shows
/// none for it (Bundle, Parameters, and types only the server writes).
pub fn example(ty: &str) -> Option<Value> {
    let body = match ty {
        "Patient" => json!({
            "name": [{"family": "Example", "given": ["Ada"]}],
            "gender": "female",
            "birthDate": "1950-04-12"
        }),
        "Practitioner" => json!({
            "name": [{"family": "Example", "given": ["Grace"], "prefix": ["Dr"]}]
        }),
        "PractitionerRole" => json!({
            "active": true,
            "code": [coding_concept(
                "http://terminology.hl7.org/CodeSystem/practitioner-role",
                "doctor",
                "Doctor"
            )]
        }),
        "Organization" => json!({"active": true, "name": "Example Clinic"}),
        "Location" => json!({"status": "active", "name": "Example Clinic, exam room 1"}),
        "Device" => json!({
            "manufacturer": "Example Medical",
            "modelNumber": "BP-100",
            "serialNumber": "SN-0001",
            "deviceName": [{"name": "Example BP-100", "type": "manufacturer-name"}]
        }),
        // MDC 150020: non-invasive blood pressure (https://hl7.org/fhir/uv/phd/).
        "DeviceMetric" => json!({
            "type": coding_concept("urn:iso:std:iso:11073:10101", "150020", "MDC_PRESS_BLD_NONINV"),
            "category": "measurement"
        }),
        // The vital-signs profile's heart rate (https://hl7.org/fhir/R4/heartrate.html).
        "Observation" => json!({
            "status": "final",
            "category": [coding_concept(
                "http://terminology.hl7.org/CodeSystem/observation-category",
                "vital-signs",
                "Vital Signs"
            )],
            "code": coding_concept("http://loinc.org", "8867-4", "Heart rate"),
            "effectiveDateTime": "2026-12-01T08:00:00Z",
            "valueQuantity": {
                "value": 72,
                "unit": "beats/minute",
                "system": "http://unitsofmeasure.org",
                "code": "/min"
            }
        }),
        "Group" => json!({"type": "person", "actual": true, "name": "Blood-pressure programme"}),
        "Consent" => json!({
            "status": "active",
            "scope": coding_concept(
                "http://terminology.hl7.org/CodeSystem/consentscope",
                "patient-privacy",
                "Privacy Consent"
            ),
            "category": [coding_concept("http://loinc.org", "59284-0", "Patient Consent")],
            "policyRule": coding_concept(
                "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                "OPTIN",
                "opt-in"
            )
        }),
        "Provenance" => json!({
            "target": [{"identifier": {"system": "urn:oid:2.16.840.1.113883.4.1", "value": "target-1"}}],
            "recorded": "2026-12-01T08:00:00Z",
            "agent": [{"who": {"display": "Example hub"}}]
        }),
        "Subscription" => json!({
            "status": "requested",
            "reason": "Send new vital signs to the clinic's EHR",
            "criteria": "Observation?category=vital-signs",
            "channel": {
                "type": "rest-hook",
                "endpoint": "https://ehr.example.org/fhir",
                "payload": "application/fhir+json"
            }
        }),
        "Endpoint" => json!({
            "status": "active",
            "connectionType": {
                "system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type",
                "code": "hl7-fhir-rest"
            },
            "payloadType": [coding_concept(
                "http://terminology.hl7.org/CodeSystem/endpoint-payload-type",
                "any",
                "Any"
            )],
            "address": "https://ehr.example.org/fhir"
        }),
        "Coverage" => json!({
            "status": "active",
            "beneficiary": {"identifier": {"system": "urn:oid:2.16.840.1.113883.4.1", "value": "target-1"}},
            "payor": [{"display": "Example Health Plan"}]
        }),
        "ChargeItemDefinition" => json!({
            "url": "https://example.org/fhir/ChargeItemDefinition/rpm-device-month",
            "status": "active",
            "title": "Remote monitoring device, one month"
        }),
        // CPT 99454: device supply with daily recordings, each 30 days.
        "ChargeItem" => json!({
            "status": "billable",
            "code": coding_concept("http://www.ama-assn.org/go/cpt", "99454", "RPM device supply"),
            "subject": {"identifier": {"system": "urn:oid:2.16.840.1.113883.4.1", "value": "target-1"}}
        }),
        "Invoice" => json!({"status": "draft"}),
        "Claim" => json!({
            "status": "active",
            "type": coding_concept(
                "http://terminology.hl7.org/CodeSystem/claim-type",
                "professional",
                "Professional"
            ),
            "use": "claim",
            "patient": {"identifier": {"system": "urn:oid:2.16.840.1.113883.4.1", "value": "target-1"}},
            "created": "2026-12-01",
            "provider": {"display": "Example Clinic"},
            "priority": coding_concept(
                "http://terminology.hl7.org/CodeSystem/processpriority",
                "normal",
                "Normal"
            ),
            "insurance": [{"sequence": 1, "focal": true, "coverage": {"display": "Example Health Plan"}}]
        }),
        "PaymentReconciliation" => json!({
            "status": "active",
            "created": "2026-12-01",
            "paymentDate": "2026-12-01",
            "paymentAmount": {"value": 120, "currency": "USD"}
        }),
        _ => return None,
    };
    let mut body = body;
    body.as_object_mut()?
        .insert("resourceType".into(), Value::String(ty.into()));
    Some(body)
}

/// A CodeableConcept with one coding.
fn coding_concept(system: &str, code: &str, display: &str) -> Value {
    json!({"coding": [{"system": system, "code": code, "display": display}]})
}
