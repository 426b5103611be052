//! Search by token, string and uri parameters with their modifiers, the parameters on `meta`
//! (`_id`, `_tag`, `_profile`, `_security`, `_source`), OR (`,`), AND (repeated parameter) and
//! the `\,` escape (https://hl7.org/fhir/R4/search.html#token, #string, #uri, #combining,
//! #escaping).

use serde_json::{Value, json};

use crate::both;
use crate::common::TestApp;
use crate::search::{check, put};

const V2_0203: &str = "http://terminology.hl7.org/CodeSystem/v2-0203";
const CONFIDENTIALITY: &str = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality";

fn id_type(code: &str) -> Value {
    json!({"coding": [{"system": V2_0203, "code": code}]})
}

fn observation(id: &str, status: &str, code: Value) -> Value {
    json!({"resourceType": "Observation", "id": id, "status": status, "code": code})
}

/// Patients, Observations, Organizations, ValueSets and a CodeSystem; every query below is
/// answered from these alone.
async fn seed(app: &TestApp) {
    let patients = [
        // Medical record number 12345; the only `MR`-typed identifier with that value.
        json!({"resourceType": "Patient", "id": "tok-smith",
            "meta": {"tag": [{"system": "urn:vb:tags", "code": "vip"}]},
            "identifier": [{"type": id_type("MR"), "system": "urn:vb:mrn", "value": "12345"}],
            "active": true, "name": [{"family": "Smith", "given": ["John"]}], "gender": "male",
            "address": [{"city": "Boston"}]}),
        // Value 12345 too, but typed MB (member number) in another system.
        json!({"resourceType": "Patient", "id": "tok-smithson",
            "meta": {"tag": [{"system": "urn:other-tags", "code": "vip"}]},
            "identifier": [
                {"type": id_type("MR"), "system": "urn:vb:mrn", "value": "54321"},
                {"type": id_type("MB"), "system": "urn:vb:member", "value": "12345"}],
            "active": false, "name": [{"family": "Smithson", "given": ["Anna"]}], "gender": "female",
            "address": [{"city": "BOSTON"}]}),
        json!({"resourceType": "Patient", "id": "tok-nunez",
            "meta": {"profile": ["http://example.org/fhir/StructureDefinition/vb-patient"]},
            "identifier": [{"system": "urn:other", "value": "12345"}],
            "active": true, "name": [{"family": "Núñez", "given": ["José"]}], "gender": "male",
            "address": [{"city": "São Paulo"}]}),
        // No identifier, no `active`.
        json!({"resourceType": "Patient", "id": "tok-goldsmith",
            "meta": {"security": [{"system": CONFIDENTIALITY, "code": "R"}]},
            "name": [{"family": "Goldsmith", "given": ["Mary"]}], "gender": "female",
            "address": [{"city": "Cambridge"}]}),
        // Identifier value 12345 without a system.
        json!({"resourceType": "Patient", "id": "tok-upper",
            "meta": {"source": "http://device.example.org/gateway-1"},
            "identifier": [{"value": "12345"}],
            "active": true, "name": [{"family": "SMITH", "given": ["Ann"]}], "gender": "unknown"}),
        json!({"resourceType": "Patient", "id": "tok-jose",
            "meta": {"profile": ["http://example.org/fhir/StructureDefinition/vb-patient-extended"],
                     "source": "http://device.example.org/gateway-10",
                     "security": [{"system": CONFIDENTIALITY, "code": "N"}]},
            "name": [{"family": "Jose", "given": ["Maria"]}], "gender": "other"}),
        // No gender, no `active`.
        json!({"resourceType": "Patient", "id": "tok-doe",
            "name": [{"family": "Doe", "given": ["Jane"]}]}),
    ];
    for p in patients {
        put(app, p).await;
    }

    let observations = [
        observation(
            "tok-hr-loinc",
            "final",
            json!({"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}]}),
        ),
        // The right code in the wrong system.
        observation(
            "tok-hr-local",
            "final",
            json!({"coding": [{"system": "http://example.org/codes", "code": "8867-4", "display": "Pulse"}]}),
        ),
        // The right code without any system.
        observation(
            "tok-hr-nosys",
            "preliminary",
            json!({"coding": [{"code": "8867-4"}]}),
        ),
        observation(
            "tok-weight",
            "final",
            json!({"coding": [{"system": "http://loinc.org", "code": "29463-7", "display": "Body weight"}],
                   "text": "Weight measured at home"}),
        ),
        observation(
            "tok-temp",
            "final",
            json!({"coding": [
                {"system": "http://loinc.org", "code": "8310-5", "display": "Body temperature"},
                {"system": "http://snomed.info/sct", "code": "386725007", "display": "Body temperature"}]}),
        ),
    ];
    for o in observations {
        put(app, o).await;
    }

    for (id, name, alias) in [
        ("org-sunrise", "Sunrise Clinic", None),
        ("org-clinic-north", "Clinic, North", None),
        ("org-clinic-south", "Clinic South", None),
        ("org-northwind", "Northwind Labs", Some("NW Labs")),
    ] {
        let mut o = json!({"resourceType": "Organization", "id": id, "name": name});
        if let Some(a) = alias {
            o["alias"] = json!([a]);
        }
        put(app, o).await;
    }

    for (id, url) in [
        ("vs-vitals", "http://example.org/fhir/ValueSet/vitals"),
        (
            "vs-vitals-extended",
            "http://example.org/fhir/ValueSet/vitals-extended",
        ),
        ("vs-labs", "http://example.org/fhir/ValueSet/labs"),
        (
            "vs-other-host",
            "http://other.example.org/fhir/ValueSet/vitals",
        ),
        ("vs-root", "http://example.org/fhir/ValueSet"),
    ] {
        put(
            app,
            json!({"resourceType": "ValueSet", "id": id, "url": url, "status": "active"}),
        )
        .await;
    }
    // The same canonical URL as vs-vitals, on another resource type.
    put(
        app,
        json!({"resourceType": "CodeSystem", "id": "cs-vitals", "url": "http://example.org/fhir/ValueSet/vitals",
               "status": "active", "content": "not-present"}),
    )
    .await;
}

async fn token_system_and_code(app: TestApp) {
    seed(&app).await;
    // system|code, |code (no system), system| (any code of the system), code (any system).
    check(
        &app,
        "Observation?code=http://loinc.org|8867-4",
        &["tok-hr-loinc"],
    )
    .await;
    check(
        &app,
        "Observation?code=8867-4",
        &["tok-hr-loinc", "tok-hr-local", "tok-hr-nosys"],
    )
    .await;
    check(&app, "Observation?code=|8867-4", &["tok-hr-nosys"]).await;
    check(
        &app,
        "Observation?code=http://loinc.org|",
        &["tok-hr-loinc", "tok-weight", "tok-temp"],
    )
    .await;
    // Any coding of a CodeableConcept.
    check(
        &app,
        "Observation?code=http://snomed.info/sct|386725007",
        &["tok-temp"],
    )
    .await;
    check(&app, "Observation?code=http://loinc.org|9999-9", &[]).await;
    // A code element (status) and an Identifier (system|value).
    check(
        &app,
        "Observation?status=final",
        &["tok-hr-loinc", "tok-hr-local", "tok-weight", "tok-temp"],
    )
    .await;
    check(&app, "Patient?identifier=urn:vb:mrn|12345", &["tok-smith"]).await;
    check(
        &app,
        "Patient?identifier=12345",
        &["tok-smith", "tok-smithson", "tok-nunez", "tok-upper"],
    )
    .await;
    check(&app, "Patient?identifier=|12345", &["tok-upper"]).await;
    check(
        &app,
        "Patient?identifier=urn:vb:mrn|",
        &["tok-smith", "tok-smithson"],
    )
    .await;
    check(&app, "Patient?identifier=urn:vb:mrn|1234", &[]).await;
    // code and boolean primitives.
    check(
        &app,
        "Patient?gender=female",
        &["tok-smithson", "tok-goldsmith"],
    )
    .await;
    check(
        &app,
        "Patient?active=true",
        &["tok-smith", "tok-nunez", "tok-upper"],
    )
    .await;
    check(&app, "Patient?active=false", &["tok-smithson"]).await;
}
both!(token_system_and_code);

async fn token_modifiers(app: TestApp) {
    seed(&app).await;
    // :not also finds the resources without any value for the parameter (search.html#modifiers).
    check(
        &app,
        "Patient?gender:not=male",
        &[
            "tok-smithson",
            "tok-goldsmith",
            "tok-upper",
            "tok-jose",
            "tok-doe",
        ],
    )
    .await;
    check(
        &app,
        "Patient?active:not=true",
        &["tok-smithson", "tok-goldsmith", "tok-jose", "tok-doe"],
    )
    .await;
    check(
        &app,
        "Observation?code:not=http://loinc.org|8867-4",
        &["tok-hr-local", "tok-hr-nosys", "tok-weight", "tok-temp"],
    )
    .await;
    // :text matches Coding.display or CodeableConcept.text, case-insensitively, from the start.
    check(&app, "Observation?code:text=heart", &["tok-hr-loinc"]).await;
    check(&app, "Observation?code:text=HEART RATE", &["tok-hr-loinc"]).await;
    check(&app, "Observation?code:text=pulse", &["tok-hr-local"]).await;
    check(&app, "Observation?code:text=weight", &["tok-weight"]).await;
    check(
        &app,
        "Observation?code:text=body",
        &["tok-weight", "tok-temp"],
    )
    .await;
    check(&app, "Observation?code:text=eart", &[]).await;
    // :of-type: type system|type code|value, all three on the same Identifier.
    check(
        &app,
        &format!("Patient?identifier:of-type={V2_0203}|MR|12345"),
        &["tok-smith"],
    )
    .await;
    check(
        &app,
        &format!("Patient?identifier:of-type={V2_0203}|MB|12345"),
        &["tok-smithson"],
    )
    .await;
    check(
        &app,
        &format!("Patient?identifier:of-type={V2_0203}|MR|54321"),
        &["tok-smithson"],
    )
    .await;
    check(
        &app,
        &format!("Patient?identifier:of-type={V2_0203}|MB|54321"),
        &[],
    )
    .await;
    // :missing.
    check(&app, "Patient?gender:missing=true", &["tok-doe"]).await;
    check(
        &app,
        "Patient?gender:missing=false",
        &[
            "tok-smith",
            "tok-smithson",
            "tok-nunez",
            "tok-goldsmith",
            "tok-upper",
            "tok-jose",
        ],
    )
    .await;
    check(
        &app,
        "Patient?identifier:missing=true",
        &["tok-goldsmith", "tok-jose", "tok-doe"],
    )
    .await;
    check(
        &app,
        "Patient?active:missing=true",
        &["tok-goldsmith", "tok-jose", "tok-doe"],
    )
    .await;
}
both!(token_modifiers);

async fn string_matching(app: TestApp) {
    seed(&app).await;
    // Default: case- and accent-insensitive, from the start of the value (not inside it).
    check(
        &app,
        "Patient?name=smi",
        &["tok-smith", "tok-smithson", "tok-upper"],
    )
    .await;
    check(
        &app,
        "Patient?family=SMITH",
        &["tok-smith", "tok-smithson", "tok-upper"],
    )
    .await;
    check(&app, "Patient?name=jose", &["tok-nunez", "tok-jose"]).await;
    check(&app, "Patient?name=JOSÉ", &["tok-nunez", "tok-jose"]).await;
    check(&app, "Patient?name=nunez", &["tok-nunez"]).await;
    check(&app, "Patient?family=núñ", &["tok-nunez"]).await;
    check(&app, "Patient?given=jo", &["tok-smith", "tok-nunez"]).await;
    check(&app, "Patient?given=ann", &["tok-smithson", "tok-upper"]).await;
    check(&app, "Patient?name=mith", &[]).await;
    // :exact: the whole value, case- and accent-sensitive.
    check(&app, "Patient?name:exact=Smith", &["tok-smith"]).await;
    check(&app, "Patient?family:exact=SMITH", &["tok-upper"]).await;
    check(&app, "Patient?name:exact=José", &["tok-nunez"]).await;
    check(&app, "Patient?name:exact=Jose", &["tok-jose"]).await;
    check(&app, "Patient?given:exact=Ann", &["tok-upper"]).await;
    check(&app, "Patient?name:exact=Smi", &[]).await;
    // :contains: anywhere in the value, case- and accent-insensitive.
    check(
        &app,
        "Patient?name:contains=MITH",
        &["tok-smith", "tok-smithson", "tok-goldsmith", "tok-upper"],
    )
    .await;
    check(&app, "Patient?family:contains=unE", &["tok-nunez"]).await;
    // Address parts.
    check(&app, "Patient?address-city=sao", &["tok-nunez"]).await;
    check(
        &app,
        "Patient?address-city=boston",
        &["tok-smith", "tok-smithson"],
    )
    .await;
    check(&app, "Patient?address-city:exact=Boston", &["tok-smith"]).await;
    check(&app, "Patient?address-city:contains=paul", &["tok-nunez"]).await;
    // Organization.name covers the aliases too; starts-with is on the whole value.
    check(
        &app,
        "Organization?name=clinic",
        &["org-clinic-north", "org-clinic-south"],
    )
    .await;
    check(&app, "Organization?name=nw", &["org-northwind"]).await;
    check(
        &app,
        "Organization?name:contains=clinic",
        &["org-sunrise", "org-clinic-north", "org-clinic-south"],
    )
    .await;
}
both!(string_matching);

async fn or_and_escaping(app: TestApp) {
    seed(&app).await;
    // A comma separates alternatives (OR); a repeated parameter must hold for each (AND).
    check(
        &app,
        "Observation?code=http://loinc.org|8867-4,http://loinc.org|29463-7",
        &["tok-hr-loinc", "tok-weight"],
    )
    .await;
    check(
        &app,
        "Patient?gender=male,female",
        &["tok-smith", "tok-smithson", "tok-nunez", "tok-goldsmith"],
    )
    .await;
    check(
        &app,
        "Patient?gender=male,female&active=true",
        &["tok-smith", "tok-nunez"],
    )
    .await;
    check(&app, "Patient?name=smi&name=smithson", &["tok-smithson"]).await;
    // Both are prefix matches: Smithson/Anna qualifies as much as SMITH/Ann.
    check(
        &app,
        "Patient?family=smith&given=ann",
        &["tok-smithson", "tok-upper"],
    )
    .await;
    check(&app, "Patient?family:exact=SMITH&given=ann", &["tok-upper"]).await;
    check(
        &app,
        "Organization?name=north,sunrise",
        &["org-northwind", "org-sunrise"],
    )
    .await;
    // `\,` is a comma inside one value, not a separator.
    check(
        &app,
        "Organization?name=clinic\\, north",
        &["org-clinic-north"],
    )
    .await;
    check(&app, "Organization?name=Clinic\\,", &["org-clinic-north"]).await;
    check(
        &app,
        "Organization?name:exact=Clinic\\, North",
        &["org-clinic-north"],
    )
    .await;
    // An id that matches nothing adds nothing.
    check(
        &app,
        "Patient?_id=tok-smith,tok-doe,no-such-id",
        &["tok-smith", "tok-doe"],
    )
    .await;
}
both!(or_and_escaping);

async fn uri_matching(app: TestApp) {
    seed(&app).await;
    // Exact and case-sensitive; resource types stay apart.
    check(
        &app,
        "ValueSet?url=http://example.org/fhir/ValueSet/vitals",
        &["vs-vitals"],
    )
    .await;
    check(
        &app,
        "ValueSet?url=http://example.org/fhir/valueset/vitals",
        &[],
    )
    .await;
    check(
        &app,
        "CodeSystem?url=http://example.org/fhir/ValueSet/vitals",
        &["cs-vitals"],
    )
    .await;
    check(
        &app,
        "ValueSet?url=http://example.org/fhir/ValueSet/vitals,http://example.org/fhir/ValueSet/labs",
        &["vs-vitals", "vs-labs"],
    )
    .await;
    // :below: the stored URL starts with the value.
    check(
        &app,
        "ValueSet?url:below=http://example.org/fhir/ValueSet/",
        &["vs-vitals", "vs-vitals-extended", "vs-labs"],
    )
    .await;
    // :above: the value starts with the stored URL.
    check(
        &app,
        "ValueSet?url:above=http://example.org/fhir/ValueSet/vitals/v2",
        &["vs-vitals", "vs-root"],
    )
    .await;
}
both!(uri_matching);

async fn meta_parameters(app: TestApp) {
    seed(&app).await;
    check(&app, "Patient?_id=tok-smith", &["tok-smith"]).await;
    check(&app, "Patient?_id=tok-hr-loinc", &[]).await;
    check(&app, "Patient?_tag=urn:vb:tags|vip", &["tok-smith"]).await;
    check(&app, "Patient?_tag=vip", &["tok-smith", "tok-smithson"]).await;
    check(
        &app,
        "Patient?_tag:not=urn:vb:tags|vip",
        &[
            "tok-smithson",
            "tok-nunez",
            "tok-goldsmith",
            "tok-upper",
            "tok-jose",
            "tok-doe",
        ],
    )
    .await;
    check(
        &app,
        "Patient?_profile=http://example.org/fhir/StructureDefinition/vb-patient",
        &["tok-nunez"],
    )
    .await;
    check(
        &app,
        &format!("Patient?_security={CONFIDENTIALITY}|R"),
        &["tok-goldsmith"],
    )
    .await;
    check(&app, "Patient?_security=N", &["tok-jose"]).await;
    check(
        &app,
        "Patient?_source=http://device.example.org/gateway-1",
        &["tok-upper"],
    )
    .await;
    check(
        &app,
        "Patient?_source=http://device.example.org/gateway-10",
        &["tok-jose"],
    )
    .await;
    // Combined with ordinary parameters.
    check(&app, "Patient?_tag=vip&gender=female", &["tok-smithson"]).await;
}
both!(meta_parameters);
