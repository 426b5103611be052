//! Reference search, chaining, reverse chaining (`_has`) and `_include` / `_revinclude`
//! (https://hl7.org/fhir/R4/search.html#reference, #chaining, #has, #include).
//!
//! A relative reference `Patient/x` and the absolute `[base]/Patient/x` on this server's own
//! base are the same reference; an absolute URL on another server is not.

use serde_json::{Value, json};

use crate::both;
use crate::common::TestApp;
use crate::search::{bundle, check, included, loinc, match_ids, put, sorted};

fn obs(id: &str, code: &str, subject: Option<Value>) -> Value {
    let display = if code == "8867-4" {
        "Heart rate"
    } else {
        "Body weight"
    };
    let mut o = json!({"resourceType": "Observation", "id": id, "status": "final",
                       "code": loinc(code, display)});
    if let Some(s) = subject {
        o["subject"] = s;
    }
    o
}

fn r(reference: &str) -> Value {
    json!({"reference": reference})
}

fn provenance(id: &str, target: &str, agent: &str) -> Value {
    json!({"resourceType": "Provenance", "id": id, "target": [r(target)],
           "recorded": "2026-03-10T09:00:00Z", "agent": [{"who": r(agent)}]})
}

/// Two Organizations, three Patients, two Practitioners, two Devices, eight Observations
/// referring to their subject in every form, and three Provenances.
async fn seed(app: &TestApp) {
    let base = &app.base;
    for o in [
        json!({"resourceType": "Organization", "id": "org-clinic", "name": "Clinic North"}),
        // Contains "clinic" but does not start with it.
        json!({"resourceType": "Organization", "id": "org-sunrise", "name": "Sunrise Clinic"}),
        json!({"resourceType": "Patient", "id": "ref-p1", "name": [{"family": "Smith"}],
               "identifier": [{"system": "urn:vb:mrn", "value": "111"}],
               "managingOrganization": r("Organization/org-clinic")}),
        json!({"resourceType": "Patient", "id": "ref-p2", "name": [{"family": "Jones"}],
               "identifier": [{"system": "urn:vb:mrn", "value": "222"}],
               "managingOrganization": r("Organization/org-sunrise")}),
        // The same identifier value in another system.
        json!({"resourceType": "Patient", "id": "ref-p3", "name": [{"family": "Smithers"}],
               "identifier": [{"system": "urn:other", "value": "111"}]}),
        json!({"resourceType": "Practitioner", "id": "dr-a", "name": [{"family": "Adams"}]}),
        json!({"resourceType": "Practitioner", "id": "dr-b", "name": [{"family": "Baker"}]}),
        json!({"resourceType": "Device", "id": "dev-p1", "patient": r("Patient/ref-p1")}),
        json!({"resourceType": "Device", "id": "dev-loose"}),
    ] {
        put(app, o).await;
    }
    let mut o1 = obs("ref-o1", "8867-4", Some(r("Patient/ref-p1")));
    o1["performer"] = json!([r("Practitioner/dr-a")]);
    o1["device"] = r("Device/dev-p1");
    for o in [
        o1,
        // Absolute, on this server's base.
        obs(
            "ref-o2",
            "29463-7",
            Some(r(&format!("{base}/Patient/ref-p1"))),
        ),
        obs("ref-o3", "8867-4", Some(r("Patient/ref-p2"))),
        // Absolute, on another server: not ref-p1.
        obs(
            "ref-o4",
            "8867-4",
            Some(r("http://other.example.org/fhir/Patient/ref-p1")),
        ),
        // Only a business identifier, the one ref-p1 has.
        obs(
            "ref-o5",
            "8867-4",
            Some(json!({"identifier": {"system": "urn:vb:mrn", "value": "111"}})),
        ),
        obs("ref-o6", "8867-4", Some(r("Device/dev-p1"))),
        obs("ref-o7", "29463-7", None),
        obs("ref-o8", "29463-7", Some(r("Patient/ref-p3"))),
    ] {
        put(app, o).await;
    }
    for p in [
        provenance("prov-o1", "Observation/ref-o1", "Practitioner/dr-a"),
        provenance("prov-o3", "Observation/ref-o3", "Practitioner/dr-b"),
        // By dr-a, but about a Patient rather than one of its Observations.
        provenance("prov-p2", "Patient/ref-p2", "Practitioner/dr-a"),
    ] {
        put(app, p).await;
    }
}

async fn reference_forms(app: TestApp) {
    seed(&app).await;
    let p1 = ["ref-o1", "ref-o2"];
    // Every spelling of "Patient ref-p1" finds the relative and the own-base absolute reference.
    check(&app, "Observation?patient=Patient/ref-p1", &p1).await;
    check(&app, "Observation?patient=ref-p1", &p1).await;
    check(&app, "Observation?subject=Patient/ref-p1", &p1).await;
    check(&app, "Observation?subject:Patient=ref-p1", &p1).await;
    check(
        &app,
        &format!("Observation?patient={}/Patient/ref-p1", app.base),
        &p1,
    )
    .await;
    check(
        &app,
        &format!("Observation?subject={}/Patient/ref-p1", app.base),
        &p1,
    )
    .await;
    // Another server's URL is a different reference.
    check(
        &app,
        "Observation?subject=http://other.example.org/fhir/Patient/ref-p1",
        &["ref-o4"],
    )
    .await;
    // Other target types and the type modifier.
    check(&app, "Observation?subject=Device/dev-p1", &["ref-o6"]).await;
    check(&app, "Observation?subject:Device=dev-p1", &["ref-o6"]).await;
    check(&app, "Observation?subject:Patient=dev-p1", &[]).await;
    check(&app, "Observation?patient=Patient/dev-p1", &[]).await;
    check(
        &app,
        "Observation?patient=ref-p1,ref-p2",
        &["ref-o1", "ref-o2", "ref-o3"],
    )
    .await;
    check(&app, "Observation?performer=Practitioner/dr-a", &["ref-o1"]).await;
    check(&app, "Device?patient=ref-p1", &["dev-p1"]).await;
    // :identifier reads Reference.identifier, not the identifiers of the referenced resource.
    check(
        &app,
        "Observation?subject:identifier=urn:vb:mrn|111",
        &["ref-o5"],
    )
    .await;
    check(&app, "Observation?subject:identifier=urn:other|111", &[]).await;
    // :missing.
    check(&app, "Observation?device:missing=false", &["ref-o1"]).await;
    check(
        &app,
        "Observation?device:missing=true",
        &[
            "ref-o2", "ref-o3", "ref-o4", "ref-o5", "ref-o6", "ref-o7", "ref-o8",
        ],
    )
    .await;
    check(&app, "Patient?organization:missing=true", &["ref-p3"]).await;
}
both!(reference_forms);

async fn chained_parameters(app: TestApp) {
    seed(&app).await;
    // One level, with and without the type.
    check(
        &app,
        "Observation?subject:Patient.name=smith",
        &["ref-o1", "ref-o2", "ref-o8"],
    )
    .await;
    check(
        &app,
        "Observation?patient.name=smith",
        &["ref-o1", "ref-o2", "ref-o8"],
    )
    .await;
    check(
        &app,
        "Observation?patient.identifier=urn:vb:mrn|111",
        &["ref-o1", "ref-o2"],
    )
    .await;
    check(
        &app,
        "Observation?patient.identifier=urn:vb:mrn|222",
        &["ref-o3"],
    )
    .await;
    check(
        &app,
        "Observation?subject:Device.patient=Patient/ref-p1",
        &["ref-o6"],
    )
    .await;
    // Two levels: Observation → Patient → Organization; "Sunrise Clinic" does not start with
    // "clinic".
    check(
        &app,
        "Observation?patient.organization.name=clinic",
        &["ref-o1", "ref-o2"],
    )
    .await;
    check(
        &app,
        "Observation?patient.organization.name=sunrise",
        &["ref-o3"],
    )
    .await;
    check(
        &app,
        "Observation?patient.organization=Organization/org-sunrise",
        &["ref-o3"],
    )
    .await;
    // Chains combine with other parameters.
    check(
        &app,
        "Observation?subject:Patient.name=smith&code=http://loinc.org|29463-7",
        &["ref-o2", "ref-o8"],
    )
    .await;
    check(
        &app,
        "Provenance?target:Observation.patient=Patient/ref-p1",
        &["prov-o1"],
    )
    .await;
}
both!(chained_parameters);

async fn reverse_chaining(app: TestApp) {
    seed(&app).await;
    check(
        &app,
        "Patient?_has:Observation:patient:code=8867-4",
        &["ref-p1", "ref-p2"],
    )
    .await;
    // ref-p1's weight is the own-base absolute reference.
    check(
        &app,
        "Patient?_has:Observation:patient:code=http://loinc.org|29463-7",
        &["ref-p1", "ref-p3"],
    )
    .await;
    check(
        &app,
        "Patient?_has:Observation:subject:performer=Practitioner/dr-a",
        &["ref-p1"],
    )
    .await;
    check(
        &app,
        "Patient?_has:Provenance:target:agent=Practitioner/dr-a",
        &["ref-p2"],
    )
    .await;
    // Nested: Patients with an Observation that has a Provenance by dr-a. prov-p2 is by dr-a
    // but about ref-p2 itself, not about an Observation.
    check(
        &app,
        "Patient?_has:Observation:patient:_has:Provenance:target:agent=Practitioner/dr-a",
        &["ref-p1"],
    )
    .await;
    check(
        &app,
        "Patient?_has:Observation:patient:_has:Provenance:target:agent=Practitioner/dr-b",
        &["ref-p2"],
    )
    .await;
    check(
        &app,
        "Practitioner?_has:Provenance:agent:target=Observation/ref-o3",
        &["dr-b"],
    )
    .await;
    // Combined with an ordinary parameter of the searched type.
    check(
        &app,
        "Patient?_has:Observation:patient:code=8867-4&name=jones",
        &["ref-p2"],
    )
    .await;
}
both!(reverse_chaining);

/// Asserts the matches and the included resources (each once) of GET `query`.
async fn check_include(app: &TestApp, query: &str, matches: &[&str], includes: &[&str]) {
    let b = bundle(app, query).await;
    let mut got = match_ids(&b);
    got.sort();
    assert_eq!(got, sorted(matches), "GET {query}: matches\n{b}");
    assert_eq!(included(&b), sorted(includes), "GET {query}: included\n{b}");
    if let Some(total) = b.get("total") {
        assert_eq!(
            total,
            matches.len(),
            "GET {query}: total counts matches only\n{b}"
        );
    }
}

async fn include_and_revinclude(app: TestApp) {
    seed(&app).await;
    check_include(
        &app,
        "Observation?_id=ref-o1&_include=Observation:patient",
        &["ref-o1"],
        &["Patient/ref-p1"],
    )
    .await;
    check_include(
        &app,
        "Observation?_id=ref-o1&_include=Observation:subject:Patient",
        &["ref-o1"],
        &["Patient/ref-p1"],
    )
    .await;
    check_include(
        &app,
        "Observation?_id=ref-o1&_include=Observation:subject:Device",
        &["ref-o1"],
        &[],
    )
    .await;
    check_include(
        &app,
        "Observation?_id=ref-o1&_include=Observation:*",
        &["ref-o1"],
        &["Device/dev-p1", "Patient/ref-p1", "Practitioner/dr-a"],
    )
    .await;
    check_include(
        &app,
        "Observation?_id=ref-o1&_include=*",
        &["ref-o1"],
        &["Device/dev-p1", "Patient/ref-p1", "Practitioner/dr-a"],
    )
    .await;
    check_include(
        &app,
        "Observation?_id=ref-o1&_include=Observation:patient&_include=Observation:performer",
        &["ref-o1"],
        &["Patient/ref-p1", "Practitioner/dr-a"],
    )
    .await;
    // Two matches refer to ref-p1 (one through the own-base absolute URL): included once.
    check_include(
        &app,
        "Observation?_id=ref-o1,ref-o2&_include=Observation:patient",
        &["ref-o1", "ref-o2"],
        &["Patient/ref-p1"],
    )
    .await;
    // Nothing to include for a reference to another server or by identifier only.
    check_include(
        &app,
        "Observation?_id=ref-o4,ref-o5&_include=Observation:subject",
        &["ref-o4", "ref-o5"],
        &[],
    )
    .await;
    check_include(
        &app,
        "Observation?_id=ref-o6&_include=Observation:subject",
        &["ref-o6"],
        &["Device/dev-p1"],
    )
    .await;
    // _revinclude: the resources that refer to the matches.
    check_include(
        &app,
        "Observation?_id=ref-o1,ref-o3&_revinclude=Provenance:target",
        &["ref-o1", "ref-o3"],
        &["Provenance/prov-o1", "Provenance/prov-o3"],
    )
    .await;
    check_include(
        &app,
        "Patient?_id=ref-p2&_revinclude=Provenance:target",
        &["ref-p2"],
        &["Provenance/prov-p2"],
    )
    .await;
    check_include(
        &app,
        "Patient?_id=ref-p1&_revinclude=Observation:patient",
        &["ref-p1"],
        &["Observation/ref-o1", "Observation/ref-o2"],
    )
    .await;
    check_include(
        &app,
        "Patient?name=smith&_revinclude=Observation:subject&_include=Patient:organization",
        &["ref-p1", "ref-p3"],
        &[
            "Observation/ref-o1",
            "Observation/ref-o2",
            "Observation/ref-o8",
            "Organization/org-clinic",
        ],
    )
    .await;
}
both!(include_and_revinclude);

async fn include_iterate(app: TestApp) {
    seed(&app).await;
    // Without :iterate, Patient:organization applies to the matches (Observations) only.
    check_include(
        &app,
        "Observation?_id=ref-o1&_include=Observation:patient&_include=Patient:organization",
        &["ref-o1"],
        &["Patient/ref-p1"],
    )
    .await;
    check_include(
        &app,
        "Observation?_id=ref-o1&_include=Observation:patient&_include:iterate=Patient:organization",
        &["ref-o1"],
        &["Organization/org-clinic", "Patient/ref-p1"],
    )
    .await;
    check_include(
        &app,
        "Observation?_id=ref-o1,ref-o3&_include=Observation:patient&_include:iterate=Patient:organization",
        &["ref-o1", "ref-o3"],
        &[
            "Organization/org-clinic",
            "Organization/org-sunrise",
            "Patient/ref-p1",
            "Patient/ref-p2",
        ],
    )
    .await;
    // _revinclude:iterate: Patient ← Observation ← Provenance.
    check_include(
        &app,
        "Patient?_id=ref-p1&_revinclude=Observation:patient&_revinclude:iterate=Provenance:target",
        &["ref-p1"],
        &[
            "Observation/ref-o1",
            "Observation/ref-o2",
            "Provenance/prov-o1",
        ],
    )
    .await;
}
both!(include_iterate);

/// Patient + category (the US Core vital-signs search) is decided on the subject rows, which
/// carry the Observation's categories and current version (0005_reference_carries.sql). Every
/// form of token search must give what the `search_token` probe gives: on fresh rows, after an
/// update changed the category, and on rows an older build wrote without those columns.
async fn patient_and_category_on_reference_rows(app: TestApp) {
    const CAT: &str = "http://terminology.hl7.org/CodeSystem/observation-category";
    for id in ["pc-1", "pc-2"] {
        put(&app, json!({"resourceType": "Patient", "id": id})).await;
    }
    let o = |id: &str, subject: &str, code: &str, when: &str, categories: Value| {
        let mut o = obs(id, code, Some(r(&format!("Patient/{subject}"))));
        o["effectiveDateTime"] = json!(when);
        if categories != json!([]) {
            o["category"] = categories;
        }
        o
    };
    let vital = json!({"coding": [{"system": CAT, "code": "vital-signs"}]});
    for resource in [
        o(
            "pc-vital",
            "pc-1",
            "8867-4",
            "2026-01-10T09:00:00Z",
            json!([vital]),
        ),
        o(
            "pc-lab",
            "pc-1",
            "8867-4",
            "2026-02-10T09:00:00Z",
            json!([{"coding": [{"system": CAT, "code": "laboratory"}]}]),
        ),
        // Two categories, one of them without a system.
        o(
            "pc-two",
            "pc-1",
            "29463-7",
            "2026-03-10T09:00:00Z",
            json!([vital, {"coding": [{"code": "home"}]}]),
        ),
        o(
            "pc-none",
            "pc-1",
            "29463-7",
            "2026-03-11T09:00:00Z",
            json!([]),
        ),
        // A coding with a system and no code.
        o(
            "pc-sys",
            "pc-1",
            "8867-4",
            "2026-03-12T09:00:00Z",
            json!([{"coding": [{"system": "urn:vb:cat"}]}]),
        ),
        o(
            "pc-other",
            "pc-2",
            "8867-4",
            "2026-03-10T09:00:00Z",
            json!([vital]),
        ),
    ] {
        put(&app, resource).await;
    }
    let cases: &[(&str, &[&str])] = &[
        ("category=vital-signs", &["pc-vital", "pc-two"]),
        (
            &format!("category={CAT}|vital-signs"),
            &["pc-vital", "pc-two"],
        ),
        (
            &format!("category={CAT}|"),
            &["pc-vital", "pc-lab", "pc-two"],
        ),
        ("category=|home", &["pc-two"]),
        ("category=|vital-signs", &[]),
        ("category=urn:other|home", &[]),
        // A coding without a code is no code of the system (search_token has no row for it).
        ("category=urn:vb:cat|", &[]),
        // Parts of a code, or of a system, are not the code.
        ("category=vital", &[]),
        ("category=signs", &[]),
        ("category=http://terminology.hl7.org|vital-signs", &[]),
        ("category=laboratory,home", &["pc-lab", "pc-two"]),
        ("category=vital-signs&category=home", &["pc-two"]),
        ("category:not=vital-signs", &["pc-lab", "pc-none", "pc-sys"]),
        ("category=vital-signs&date=ge2026-02", &["pc-two"]),
        ("category=vital-signs&code=8867-4", &["pc-vital"]),
    ];
    for (query, expected) in cases {
        check(&app, &format!("Observation?patient=pc-1&{query}"), expected).await;
    }
    let lastn = bundle(
        &app,
        "Observation/$lastn?patient=pc-1&category=vital-signs&max=1",
    )
    .await;
    let mut ids = match_ids(&lastn);
    ids.sort();
    assert_eq!(ids, ["pc-two", "pc-vital"], "{lastn}");

    // An update moves pc-lab into vital signs: its rows are rewritten, and the search returns
    // the version it now is.
    let mut lab = app.get("Observation/pc-lab").await.json();
    lab["category"] = json!([vital]);
    lab["status"] = json!("amended");
    put(&app, lab).await;
    let b = bundle(&app, "Observation?patient=pc-1&category=vital-signs").await;
    let found: Vec<(&str, &str, &str)> = b["entry"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| {
            let r = &e["resource"];
            (
                r["id"].as_str().expect("id"),
                r["meta"]["versionId"].as_str().expect("versionId"),
                r["status"].as_str().expect("status"),
            )
        })
        .collect();
    assert_eq!(
        found,
        [
            ("pc-lab", "2", "amended"),
            ("pc-two", "1", "final"),
            ("pc-vital", "1", "final")
        ],
        "{b}"
    );
    check(&app, "Observation?patient=pc-1&category=laboratory", &[]).await;

    // After the update, on rows as written, then on rows as a build before 0005 wrote them
    // (the criteria are then probed): the same results.
    let after: &[(&str, &[&str])] = &[
        ("category=vital-signs", &["pc-lab", "pc-two", "pc-vital"]),
        (
            &format!("category={CAT}|vital-signs"),
            &["pc-lab", "pc-two", "pc-vital"],
        ),
        ("category=laboratory", &[]),
        ("category=|home", &["pc-two"]),
        ("category=vital", &[]),
        ("category:not=vital-signs", &["pc-none", "pc-sys"]),
        ("category=vital-signs&date=ge2026-02", &["pc-lab", "pc-two"]),
        ("category=vital-signs&code=8867-4", &["pc-lab", "pc-vital"]),
    ];
    for (query, expected) in after {
        check(&app, &format!("Observation?patient=pc-1&{query}"), expected).await;
    }
    app.sql("update search_reference set categories = null, version_id = null")
        .await;
    for (query, expected) in after {
        check(&app, &format!("Observation?patient=pc-1&{query}"), expected).await;
    }
    let b = bundle(
        &app,
        "Observation?patient=pc-1&category=laboratory,vital-signs",
    )
    .await;
    assert_eq!(b["entry"][0]["resource"]["id"], "pc-lab", "{b}");
    assert_eq!(b["entry"][0]["resource"]["meta"]["versionId"], "2", "{b}");
}
both!(patient_and_category_on_reference_rows);
