use serde_json::{Value, json};

use super::tables::{Kind, Prim, TABLES};
use super::{Issue, IssueCode, check};

/// `(expression, code)` of every issue, in order.
fn found(resource: &Value) -> Vec<(String, IssueCode)> {
    check(resource)
        .into_iter()
        .map(|i| (i.expression, i.code))
        .collect()
}

fn parse(text: &str) -> Value {
    serde_json::from_str(text).expect("test JSON is valid")
}

#[test]
fn tables_parse_and_know_every_primitive() {
    let t = &*TABLES;
    assert!(t.resource("Observation").is_some());
    assert!(t.resource("Bundle").is_some());
    assert!(
        t.resource("Quantity").is_none(),
        "data types are not resources"
    );
    assert!(t.resource("SubscriptionStatus").is_none(), "R4B only");
    // every primitive type is used somewhere (Extension.value[x] has them all)
    let ext = t.get("Extension").expect("Extension");
    for p in Prim::ALL {
        let mut key = String::from("value");
        key.push_str(&p.name()[..1].to_ascii_uppercase());
        key.push_str(&p.name()[1..]);
        if p == Prim::Xhtml {
            continue; // not an Extension value type
        }
        let elem = ext
            .elems
            .get(key.as_str())
            .expect("Extension.value[x] alternative");
        assert_eq!(elem.kind, Kind::Prim(p), "{key}");
    }
    let narrative = t.get("Narrative").expect("Narrative");
    assert_eq!(narrative.elems["div"].kind, Kind::Prim(Prim::Xhtml));
    // inherited elements
    let obs = t.resource("Observation").expect("Observation");
    assert_eq!(obs.elems["id"].kind, Kind::Prim(Prim::Id));
    let Kind::Complex(meta) = obs.elems["meta"].kind else {
        panic!("Observation.meta is a data type");
    };
    assert_eq!(t.types[usize::from(meta)].name, "Meta");
    assert!(obs.elems["contained"].many);
    let bundle = t.resource("Bundle").expect("Bundle");
    assert!(
        !bundle.elems.contains_key("text"),
        "Bundle is not a DomainResource"
    );
}

#[test]
fn valid_resources_have_no_issues() {
    let observation = json!({
        "resourceType": "Observation",
        "id": "bp-1",
        "meta": {"lastUpdated": "2026-01-01T10:00:00.123Z", "versionId": "1"},
        "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">BP</div>"},
        "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": "2026-01-01T10:00:00+01:00",
        "issued": "2026-01-01T10:00:05Z",
        "component": [
            {"code": {"text": "systolic"}, "valueQuantity": {"value": 120, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}},
            {"code": {"text": "diastolic"}, "valueQuantity": {"value": 80.5e0, "comparator": "<", "unit": "mmHg"}}
        ],
        "extension": [{"url": "http://example.org/x", "valueInteger": -5}]
    });
    assert_eq!(found(&observation), vec![]);

    let patient = parse(
        r#"{"resourceType": "Patient", "id": "p1", "active": true, "gender": "female",
            "birthDate": "1970-02-28", "_birthDate": {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime", "valueDateTime": "1970-02-28T08:30:00Z"}]},
            "name": [{"use": "official", "family": "Doe", "given": ["Jane", null, "Q"],
                      "_given": [null, {"extension": [{"url": "http://example.org/x", "valueCode": "initial"}]}, {"id": "g3"}]}],
            "multipleBirthInteger": 2,
            "photo": [{"contentType": "image/png", "data": "iVBORw0K\nGgo=", "size": 7}]}"#,
    );
    assert_eq!(found(&patient), vec![]);
}

#[test]
fn table_driven_issues() {
    use IssueCode::{CodeInvalid, Structure, Value as Val};
    /// (case name, resource, expected (expression, code) in order)
    type Case = (&'static str, Value, Vec<(&'static str, IssueCode)>);
    let cases: Vec<Case> = vec![
        // date
        (
            "date ok",
            json!({"resourceType": "Patient", "birthDate": "2024-02-29"}),
            vec![],
        ),
        (
            "date bad month",
            json!({"resourceType": "Patient", "birthDate": "2026-13-01"}),
            vec![("Patient.birthDate", Val)],
        ),
        (
            "date not leap",
            json!({"resourceType": "Patient", "birthDate": "2023-02-29"}),
            vec![("Patient.birthDate", Val)],
        ),
        // dateTime
        (
            "dateTime ok",
            json!({"resourceType": "Observation", "status": "final", "code": {}, "effectiveDateTime": "2026-01-01T10:00:00Z"}),
            vec![],
        ),
        (
            "dateTime no tz",
            json!({"resourceType": "Observation", "status": "final", "code": {}, "effectiveDateTime": "2026-01-01T10:00"}),
            vec![("Observation.effectiveDateTime", Val)],
        ),
        (
            "dateTime in Period",
            json!({"resourceType": "Observation", "status": "final", "code": {}, "effectivePeriod": {"start": "2026-01-01", "end": "2026-01-01T25:00:00Z"}}),
            vec![("Observation.effectivePeriod.end", Val)],
        ),
        // instant
        (
            "instant ok",
            json!({"resourceType": "Observation", "status": "final", "code": {}, "issued": "2026-01-01T10:00:00.5+02:00"}),
            vec![],
        ),
        (
            "instant date only",
            json!({"resourceType": "Observation", "status": "final", "code": {}, "issued": "2026-01-01"}),
            vec![("Observation.issued", Val)],
        ),
        (
            "instant meta",
            json!({"resourceType": "Patient", "meta": {"lastUpdated": "2026-01-01T10:00:00"}}),
            vec![("Patient.meta.lastUpdated", Val)],
        ),
        // time
        (
            "time ok",
            json!({"resourceType": "Observation", "status": "final", "code": {}, "valueTime": "10:00:00"}),
            vec![],
        ),
        (
            "time bad",
            json!({"resourceType": "Observation", "status": "final", "code": {}, "valueTime": "10:00"}),
            vec![("Observation.valueTime", Val)],
        ),
        // id
        (
            "id ok",
            json!({"resourceType": "Patient", "id": "a-Z.9"}),
            vec![],
        ),
        (
            "id bad chars",
            json!({"resourceType": "Patient", "id": "pat/1 x"}),
            vec![("Patient.id", Val)],
        ),
        (
            "id too long",
            json!({"resourceType": "Patient", "id": "a".repeat(65)}),
            vec![("Patient.id", Val)],
        ),
        (
            "element id is a string",
            json!({"resourceType": "Patient", "name": [{"id": "any thing_goes"}]}),
            vec![],
        ),
        // decimal
        (
            "decimal ok",
            json!({"resourceType": "Observation", "status": "final", "code": {}, "valueQuantity": {"value": 1.5e3}}),
            vec![],
        ),
        (
            "decimal as string",
            json!({"resourceType": "Observation", "status": "final", "code": {}, "component": [{"code": {}}, {"code": {}, "valueQuantity": {"value": "120"}}]}),
            vec![("Observation.component[1].valueQuantity.value", Structure)],
        ),
        // integer
        (
            "integer ok",
            json!({"resourceType": "Observation", "status": "final", "code": {}, "valueInteger": -2147483648i64}),
            vec![],
        ),
        (
            "integer overflow",
            json!({"resourceType": "Observation", "status": "final", "code": {}, "valueInteger": 2147483648i64}),
            vec![("Observation.valueInteger", Val)],
        ),
        (
            "integer fraction",
            json!({"resourceType": "Observation", "status": "final", "code": {}, "valueInteger": 1.5}),
            vec![("Observation.valueInteger", Val)],
        ),
        // positiveInt
        (
            "unknown root type",
            json!({"resourceType": "ContactPointHolder", "x": 1}),
            vec![("Resource", Structure)],
        ),
        (
            "positiveInt ok real",
            json!({"resourceType": "Patient", "telecom": [{"rank": 1}]}),
            vec![],
        ),
        (
            "positiveInt zero",
            json!({"resourceType": "Patient", "telecom": [{"rank": 0}]}),
            vec![("Patient.telecom[0].rank", Val)],
        ),
        // unsignedInt
        (
            "unsignedInt ok",
            json!({"resourceType": "Bundle", "type": "searchset", "total": 0}),
            vec![],
        ),
        (
            "unsignedInt negative",
            json!({"resourceType": "Bundle", "type": "searchset", "total": -1}),
            vec![("Bundle.total", Val)],
        ),
        // boolean
        (
            "boolean ok",
            json!({"resourceType": "Patient", "active": false}),
            vec![],
        ),
        (
            "boolean as string",
            json!({"resourceType": "Patient", "active": "true"}),
            vec![("Patient.active", Structure)],
        ),
        (
            "string as number",
            json!({"resourceType": "Patient", "name": [{"family": 42}]}),
            vec![("Patient.name[0].family", Structure)],
        ),
        // uri / url / canonical
        (
            "uri ok",
            json!({"resourceType": "Patient", "implicitRules": "http://example.org/rules"}),
            vec![],
        ),
        (
            "uri whitespace",
            json!({"resourceType": "Patient", "implicitRules": "http://example.org/ rules"}),
            vec![("Patient.implicitRules", Val)],
        ),
        (
            "url bad",
            json!({"resourceType": "Patient", "photo": [{"url": "http://x/a b"}]}),
            vec![("Patient.photo[0].url", Val)],
        ),
        (
            "canonical ok",
            json!({"resourceType": "Patient", "meta": {"profile": ["http://x/StructureDefinition/p|1.0"]}}),
            vec![],
        ),
        (
            "canonical bad",
            json!({"resourceType": "Patient", "meta": {"profile": ["http://x/ p"]}}),
            vec![("Patient.meta.profile[0]", Val)],
        ),
        // oid / uuid
        (
            "oid ok",
            json!({"resourceType": "Patient", "identifier": [{"system": "urn:oid:1.2.3"}], "extension": [{"url": "http://x", "valueOid": "urn:oid:2.16.840"}]}),
            vec![],
        ),
        (
            "oid bad",
            json!({"resourceType": "Patient", "extension": [{"url": "http://x", "valueOid": "1.2.3"}]}),
            vec![("Patient.extension[0].valueOid", Val)],
        ),
        (
            "uuid ok",
            json!({"resourceType": "Patient", "extension": [{"url": "http://x", "valueUuid": "urn:uuid:c757873d-ec9a-4326-a141-556f43239520"}]}),
            vec![],
        ),
        (
            "uuid bad",
            json!({"resourceType": "Patient", "extension": [{"url": "http://x", "valueUuid": "urn:uuid:nope"}]}),
            vec![("Patient.extension[0].valueUuid", Val)],
        ),
        // code (lexical and binding)
        (
            "code ok",
            json!({"resourceType": "Observation", "status": "entered-in-error", "code": {}}),
            vec![],
        ),
        (
            "code whitespace",
            json!({"resourceType": "Observation", "status": " final", "code": {}}),
            vec![("Observation.status", Val)],
        ),
        (
            "code not in value set",
            json!({"resourceType": "Observation", "status": "done", "code": {}}),
            vec![("Observation.status", CodeInvalid)],
        ),
        (
            "gender",
            json!({"resourceType": "Patient", "gender": "F"}),
            vec![("Patient.gender", CodeInvalid)],
        ),
        (
            "unbound code",
            json!({"resourceType": "Patient", "communication": [{"language": {"coding": [{"system": "urn:ietf:bcp:47", "code": "xx-YY"}]}}]}),
            vec![],
        ),
        (
            "quantity comparator",
            json!({"resourceType": "Observation", "status": "final", "code": {}, "valueQuantity": {"comparator": "=="}}),
            vec![("Observation.valueQuantity.comparator", CodeInvalid)],
        ),
        (
            "resource-types",
            json!({"resourceType": "Bundle", "type": "batch", "entry": [{"request": {"method": "GET", "url": "Patient"}}], "link": [{"relation": "self", "url": "http://x"}]}),
            vec![],
        ),
        (
            "resource-types bad",
            json!({"resourceType": "CapabilityStatement", "status": "active", "date": "2026", "kind": "instance", "fhirVersion": "4.0.1", "format": ["json"], "rest": [{"mode": "server", "resource": [{"type": "Patient"}, {"type": "Patients"}]}]}),
            vec![("CapabilityStatement.rest[0].resource[1].type", CodeInvalid)],
        ),
        (
            "http verb",
            json!({"resourceType": "Bundle", "type": "batch", "entry": [{"request": {"method": "FETCH", "url": "Patient"}}]}),
            vec![("Bundle.entry[0].request.method", CodeInvalid)],
        ),
        // CodeableConcept with a required binding: own system checked, other systems allowed
        (
            "cc binding ok",
            json!({"resourceType": "Condition", "subject": {"reference": "Patient/1"}, "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "resolved"}, {"system": "http://snomed.info/sct", "code": "413322009"}]}}),
            vec![],
        ),
        (
            "cc binding bad",
            json!({"resourceType": "Condition", "subject": {"reference": "Patient/1"}, "clinicalStatus": {"coding": [{"system": "http://snomed.info/sct", "code": "1"}, {"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "cured"}]}}),
            vec![("Condition.clinicalStatus.coding[1].code", CodeInvalid)],
        ),
        // string / markdown
        (
            "string empty",
            json!({"resourceType": "Patient", "name": [{"family": ""}]}),
            vec![("Patient.name[0].family", Val)],
        ),
        (
            "string control",
            json!({"resourceType": "Patient", "name": [{"given": ["ok", "a\u{7}b"]}]}),
            vec![("Patient.name[0].given[1]", Val)],
        ),
        (
            "markdown ok",
            json!({"resourceType": "Patient", "text": {"status": "generated", "div": "<div>x</div>"}, "extension": [{"url": "http://x", "valueMarkdown": "# x\n* y"}]}),
            vec![],
        ),
        (
            "markdown empty",
            json!({"resourceType": "Patient", "extension": [{"url": "http://x", "valueMarkdown": ""}]}),
            vec![("Patient.extension[0].valueMarkdown", Val)],
        ),
        // base64Binary
        (
            "base64 ok",
            json!({"resourceType": "Binary", "contentType": "text/plain", "data": "aGVsbG8="}),
            vec![],
        ),
        (
            "base64 bad",
            json!({"resourceType": "Binary", "contentType": "text/plain", "data": "hello!"}),
            vec![("Binary.data", Val)],
        ),
        // xhtml
        (
            "xhtml bad",
            json!({"resourceType": "Patient", "text": {"status": "generated", "div": "<p>x</p>"}}),
            vec![("Patient.text.div", Val)],
        ),
        // cardinality shape
        (
            "array for single",
            json!({"resourceType": "Patient", "birthDate": ["2020"]}),
            vec![("Patient.birthDate", Structure)],
        ),
        (
            "single for array",
            json!({"resourceType": "Patient", "name": {"family": "x"}}),
            vec![("Patient.name", Structure)],
        ),
        (
            "single string for array",
            json!({"resourceType": "Patient", "name": [{"given": "x"}]}),
            vec![("Patient.name[0].given", Structure)],
        ),
        (
            "object for primitive",
            json!({"resourceType": "Patient", "gender": {"value": "male"}}),
            vec![("Patient.gender", Structure)],
        ),
        (
            "primitive for object",
            json!({"resourceType": "Patient", "maritalStatus": "M"}),
            vec![("Patient.maritalStatus", Structure)],
        ),
        (
            "null single",
            json!({"resourceType": "Patient", "birthDate": null}),
            vec![("Patient.birthDate", Structure)],
        ),
        // primitive extensions
        (
            "_x content",
            json!({"resourceType": "Patient", "_birthDate": {"extension": [{"url": "http://x", "valueDateTime": "2020-01-01T10:00"}]}}),
            vec![("Patient.birthDate.extension[0].valueDateTime", Val)],
        ),
        (
            "_x not object",
            json!({"resourceType": "Patient", "_birthDate": "x"}),
            vec![("Patient.birthDate", Structure)],
        ),
        (
            "null without _x",
            json!({"resourceType": "Patient", "name": [{"given": ["a", null]}]}),
            vec![("Patient.name[0].given[1]", Structure)],
        ),
        (
            "null with null _x",
            json!({"resourceType": "Patient", "name": [{"given": ["a", null], "_given": [null, null]}]}),
            vec![("Patient.name[0].given[1]", Structure)],
        ),
        (
            "_x length mismatch",
            json!({"resourceType": "Patient", "name": [{"given": ["a", "b"], "_given": [{"id": "1"}]}]}),
            vec![("Patient.name[0].given", Structure)],
        ),
        (
            "_x array alone",
            json!({"resourceType": "Patient", "name": [{"_given": [{"id": "1"}, null]}]}),
            vec![("Patient.name[0].given[1]", Structure)],
        ),
        (
            "_x on complex ignored",
            json!({"resourceType": "Patient", "_name": "whatever"}),
            vec![],
        ),
        // unknown elements are fhirbolt's business
        (
            "unknown ignored",
            json!({"resourceType": "Patient", "foo": 1, "birthDatex": "x", "valueQuantity": 1}),
            vec![],
        ),
        // contentReference
        (
            "contentReference",
            json!({"resourceType": "Questionnaire", "status": "active", "item": [{"linkId": "1", "type": "group", "item": [{"linkId": "1.1", "type": "string"}, {"linkId": "1.2", "type": "text", "required": "yes", "item": [{"linkId": "x", "type": "bogus"}]}]}]}),
            vec![
                ("Questionnaire.item[0].item[1].required", Structure),
                ("Questionnaire.item[0].item[1].item[0].type", CodeInvalid),
            ],
        ),
        // embedded resources
        (
            "bundle entry",
            json!({"resourceType": "Bundle", "type": "collection", "entry": [{"resource": {"resourceType": "Patient"}}, {"resource": {"resourceType": "Patient", "birthDate": "1990-02-30"}}]}),
            vec![("Bundle.entry[1].resource.birthDate", Val)],
        ),
        (
            "bundle entry 0",
            json!({"resourceType": "Bundle", "type": "collection", "entry": [{"fullUrl": "urn:uuid:c757873d-ec9a-4326-a141-556f43239520", "resource": {"resourceType": "Patient", "birthDate": "1990-02-30"}}]}),
            vec![("Bundle.entry[0].resource.birthDate", Val)],
        ),
        (
            "bundle status",
            json!({"resourceType": "Bundle", "type": "collection", "entry": [{}, {}, {"resource": {"resourceType": "Observation", "status": "done", "code": {}}}]}),
            vec![("Bundle.entry[2].resource.status", CodeInvalid)],
        ),
        (
            "bundle outcome",
            json!({"resourceType": "Bundle", "type": "transaction-response", "entry": [{"response": {"status": "400", "outcome": {"resourceType": "OperationOutcome", "issue": [{"severity": "fatal!", "code": "invalid"}]}}}]}),
            vec![(
                "Bundle.entry[0].response.outcome.issue[0].severity",
                CodeInvalid,
            )],
        ),
        (
            "contained",
            json!({"resourceType": "Patient", "contained": [{"resourceType": "Organization", "id": "o1"}, {"resourceType": "Patient", "id": "p2", "birthDate": "01/02/1990"}]}),
            vec![("Patient.contained[1].birthDate", Val)],
        ),
        (
            "parameters",
            json!({"resourceType": "Parameters", "parameter": [{"name": "a", "valueBoolean": 1}, {"name": "b", "resource": {"resourceType": "Patient", "active": "no"}}, {"name": "c", "part": [{"name": "d", "valueDate": "2026-02-30"}]}]}),
            vec![
                ("Parameters.parameter[0].valueBoolean", Structure),
                ("Parameters.parameter[1].resource.active", Structure),
                ("Parameters.parameter[2].part[0].valueDate", Val),
            ],
        ),
        (
            "embedded not a resource",
            json!({"resourceType": "Bundle", "type": "collection", "entry": [{"resource": {"id": "x"}}]}),
            vec![("Bundle.entry[0].resource", Structure)],
        ),
        (
            "unknown resource type",
            json!({"resourceType": "Bundle", "type": "collection", "entry": [{"resource": {"resourceType": "Quantity"}}]}),
            vec![("Bundle.entry[0].resource", Structure)],
        ),
        ("root not object", json!([1]), vec![("Resource", Structure)]),
        (
            "bad code lexically in bound coding: one issue",
            json!({"resourceType": "Condition", "subject": {"reference": "Patient/1"}, "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active "}]}}),
            vec![("Condition.clinicalStatus.coding[0].code", Val)],
        ),
        (
            "abstract resource type",
            json!({"resourceType": "DomainResource", "id": "x"}),
            vec![("Resource", Structure)],
        ),
        // nested data types
        (
            "timing",
            json!({"resourceType": "MedicationRequest", "status": "active", "intent": "order", "subject": {"reference": "Patient/1"}, "medicationCodeableConcept": {"text": "x"},
            "dosageInstruction": [{"timing": {"event": ["2026-01-01T08:00:00Z"], "repeat": {"frequency": 0, "period": 1, "periodUnit": "day", "timeOfDay": ["08:00:00", "8:00"], "boundsPeriod": {"start": "2026-01-01"}}}}]}),
            vec![
                (
                    "MedicationRequest.dosageInstruction[0].timing.repeat.frequency",
                    Val,
                ),
                (
                    "MedicationRequest.dosageInstruction[0].timing.repeat.periodUnit",
                    CodeInvalid,
                ),
                (
                    "MedicationRequest.dosageInstruction[0].timing.repeat.timeOfDay[1]",
                    Val,
                ),
            ],
        ),
        (
            "several issues in order",
            json!({"resourceType": "Patient", "id": "bad id", "gender": "x", "birthDate": "2026-1-1"}),
            vec![
                ("Patient.id", Val),
                ("Patient.gender", CodeInvalid),
                ("Patient.birthDate", Val),
            ],
        ),
    ];
    let mut failures = Vec::new();
    for (name, resource, expected) in &cases {
        let got = found(resource);
        let want: Vec<(String, IssueCode)> = expected
            .iter()
            .map(|(e, c)| ((*e).to_owned(), *c))
            .collect();
        if got != want {
            failures.push(format!("{name}: got {got:?}, want {want:?}"));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn diagnostics_name_the_format_and_truncate_the_value() {
    let secret = "2026-01-01T10:00 SECRET-PATIENT-DATA-0123456789-ABCDEFGHIJ";
    let issues = check(
        &json!({"resourceType": "Observation", "status": "final", "code": {}, "effectiveDateTime": secret}),
    );
    let [
        Issue {
            code,
            expression,
            diagnostics,
        },
    ] = issues.as_slice()
    else {
        panic!("expected one issue, got {issues:?}");
    };
    assert_eq!(
        (code, expression.as_str()),
        (&IssueCode::Value, "Observation.effectiveDateTime")
    );
    assert!(diagnostics.contains("dateTime"), "{diagnostics}");
    assert!(diagnostics.contains("timezone"), "{diagnostics}");
    assert!(diagnostics.contains(&secret[..40]), "{diagnostics}");
    assert!(!diagnostics.contains(&secret[..41]), "{diagnostics}");

    let issues = check(&json!({"resourceType": "Observation", "status": "done", "code": {}}));
    assert!(
        issues[0].diagnostics.contains("\"done\""),
        "{:?}",
        issues[0]
    );
    assert!(
        issues[0]
            .diagnostics
            .contains("http://hl7.org/fhir/ValueSet/observation-status")
    );
    assert!(issues[0].diagnostics.contains("registered"));

    // control characters are escaped, not written raw into logs
    let issues = check(&json!({"resourceType": "Patient", "name": [{"family": "a\u{1b}[2Jb"}]}));
    assert!(!issues[0].diagnostics.contains('\u{1b}'), "{:?}", issues[0]);
}

#[test]
fn deep_nesting_is_bounded() {
    let mut v = json!({"linkId": "x"});
    for _ in 0..300 {
        v = json!({"linkId": "x", "item": [v]});
    }
    let q = json!({"resourceType": "Questionnaire", "status": "draft", "item": [v]});
    let issues = check(&q);
    assert_eq!(issues.len(), 1);
    assert_eq!(issues[0].code, IssueCode::Structure);
}

/// Runs `check()` over every official R4 example (npm `hl7.fhir.r4.examples`, fetched by
/// scripts/test.sh into target/fhir-examples; `VB_FHIR_EXAMPLES` or `FHIR_R4_EXAMPLES_DIR`
/// point elsewhere).
#[test]
fn official_r4_examples() {
    let dir = std::env::var("VB_FHIR_EXAMPLES")
        .or_else(|_| std::env::var("FHIR_R4_EXAMPLES_DIR"))
        .unwrap_or_else(|_| {
            concat!(env!("CARGO_MANIFEST_DIR"), "/target/fhir-examples/package").to_owned()
        });
    assert!(
        std::path::Path::new(&dir).is_dir(),
        "the official examples are not at {dir}; scripts/test.sh fetches them"
    );
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .expect("examples dir is readable")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    let (mut checked, mut flagged) = (0usize, Vec::new());
    for path in &paths {
        let text = std::fs::read_to_string(path).expect("example is readable");
        let Ok(value) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        if value.get("resourceType").is_none() {
            continue; // package.json, .index.json
        }
        checked += 1;
        let issues = check(&value);
        if !issues.is_empty() {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            for i in &issues {
                println!("{name}: {:?} {} - {}", i.code, i.expression, i.diagnostics);
            }
            flagged.push(name);
        }
    }
    println!(
        "checked {checked} example resources, {} flagged: {flagged:?}",
        flagged.len()
    );
    // The one official example that is not valid R4: its id has 67 characters, R4 allows 64.
    let known_invalid = [
        "SearchParameter-questionnaireresponse-extensions-QuestionnaireResponse-item-subject.json",
    ];
    assert!(checked > 5000, "only {checked} examples found in {dir}");
    assert_eq!(
        flagged, known_invalid,
        "check() flags exactly the known-invalid example"
    );
}
