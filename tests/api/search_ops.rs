//! Search where other interactions use it: conditional create, update and delete and
//! conditional references in transactions with any search criteria
//! (https://hl7.org/fhir/R4/http.html#ccreate), `Observation/$lastn`
//! (https://hl7.org/fhir/R4/observation-operation-lastn.html), `Patient/[id]/$everything`
//! (https://hl7.org/fhir/R4/patient-operation-everything.html); and only current versions
//! ever match.

use serde_json::{Value, json};

use crate::both;
use crate::common::TestApp;
use crate::search::{
    bundle, check, encode_query, follow, included, last_updated, link, loinc, modify, put, refs,
    search_url, sorted, tick, ucum, vital_signs,
};

fn patient(family: &str, given: &str, birth: &str, gender: &str, mrn: &str) -> Value {
    json!({"resourceType": "Patient",
           "identifier": [{"system": "urn:vb:mrn", "value": mrn}],
           "name": [{"family": family, "given": [given]}],
           "birthDate": birth, "gender": gender})
}

fn observation(subject: &str, code: &str, display: &str, effective: &str, value: f64) -> Value {
    json!({"resourceType": "Observation", "status": "final", "category": vital_signs(),
           "code": loinc(code, display), "subject": {"reference": subject},
           "effectiveDateTime": effective, "valueQuantity": ucum(value, "/min")})
}

/// Counts the current Patients named Smith.
async fn smiths(app: &TestApp) -> usize {
    bundle(app, "Patient?family=smith&_count=100").await["entry"]
        .as_array()
        .map_or(0, |e| {
            e.iter().filter(|e| e["search"]["mode"] == "match").count()
        })
}

async fn conditional_interactions(app: TestApp) {
    let a = app
        .create(&patient("Smith", "John", "1950-04-01", "male", "A1"))
        .await;
    let b = app
        .create(&patient("Smith", "Anna", "1960-01-01", "female", "B2"))
        .await;
    let n = app
        .create(&patient("Núñez", "José", "1970-07-07", "male", "N3"))
        .await;
    let hr_a = app
        .create(&observation(
            &format!("Patient/{a}"),
            "8867-4",
            "Heart rate",
            "2026-03-01T08:00:00Z",
            70.0,
        ))
        .await;
    let hr_b = app
        .create(&observation(
            &format!("Patient/{b}"),
            "8867-4",
            "Heart rate",
            "2026-03-01T08:00:00Z",
            71.0,
        ))
        .await;
    let bw_a = app
        .create(&observation(
            &format!("Patient/{a}"),
            "29463-7",
            "Body weight",
            "2026-03-01T08:00:00Z",
            72.0,
        ))
        .await;

    let create_if_none = |criteria: &str, body: &Value| {
        app.client
            .post(app.url("Patient"))
            .header("content-type", "application/fhir+json")
            .header("if-none-exist", criteria)
            .body(body.to_string())
    };
    let again = patient("Smith", "John", "1950-04-01", "male", "A1-copy");
    // One match: 200 with the existing resource; nothing created.
    let r = app
        .send(create_if_none("family=Smith&birthdate=1950-04-01", &again))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["id"], a.as_str(), "{}", r.text);
    assert_eq!(smiths(&app).await, 2);
    // Accent- and case-insensitive string criteria.
    let r = app
        .send(create_if_none("name=jose&gender=male", &again))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["id"], n.as_str(), "{}", r.text);
    // Two matches: 412, nothing created.
    let r = app.send(create_if_none("family=smith", &again)).await;
    assert_eq!(r.status, 412, "{}", r.text);
    assert_eq!(smiths(&app).await, 2);
    // No match: created.
    let r = app
        .send(create_if_none(
            "family=Smith&birthdate=1999",
            &patient("Smith", "Junior", "1999-05-05", "male", "C4"),
        ))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let junior = r.json()["id"].as_str().expect("id").to_owned();
    assert_eq!(smiths(&app).await, 3);

    // Conditional update: the one heart rate of Patient a.
    let mut changed = observation(
        &format!("Patient/{a}"),
        "8867-4",
        "Heart rate",
        "2026-03-01T08:00:00Z",
        99.0,
    );
    let r = app
        .put(
            &format!(
                "Observation?{}",
                encode_query(&format!("code=http://loinc.org|8867-4&patient=Patient/{a}"))
            ),
            &changed,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["id"], hr_a.as_str(), "{}", r.text);
    assert_eq!(r.json()["meta"]["versionId"], "2", "{}", r.text);
    let stored = app.get(&format!("Observation/{hr_a}")).await.json();
    assert_eq!(
        stored["valueQuantity"]["value"].as_f64(),
        Some(99.0),
        "{stored}"
    );
    // Two heart rates match without the patient: 412, nothing changed.
    changed["valueQuantity"]["value"] = json!(1);
    let r = app
        .put(
            &format!(
                "Observation?{}",
                encode_query("code=http://loinc.org|8867-4")
            ),
            &changed,
        )
        .await;
    assert_eq!(r.status, 412, "{}", r.text);
    for id in [&hr_a, &hr_b, &bw_a] {
        let v = app.get(&format!("Observation/{id}")).await.json();
        assert_ne!(v["valueQuantity"]["value"].as_f64(), Some(1.0), "{v}");
    }

    // Conditional delete of the one match; several matches → 412.
    let r = app
        .delete(&format!("Patient?{}", encode_query("name=nunez")))
        .await;
    assert_eq!(r.status, 204, "{}", r.text);
    assert_eq!(app.get(&format!("Patient/{n}")).await.status, 410);
    let r = app.delete("Patient?family=smith").await;
    assert_eq!(r.status, 412, "{}", r.text);
    assert_eq!(smiths(&app).await, 3);
    let r = app
        .delete(&format!(
            "Patient?{}",
            encode_query("family=smith&birthdate=1999")
        ))
        .await;
    assert_eq!(r.status, 204, "{}", r.text);
    assert_eq!(app.get(&format!("Patient/{junior}")).await.status, 410);
    assert_eq!(smiths(&app).await, 2);
}
both!(conditional_interactions);

async fn transaction_conditional_references(app: TestApp) {
    let a = app
        .create(&patient("Smith", "John", "1950-04-01", "male", "A1"))
        .await;
    let b = app
        .create(&patient("Smith", "Anna", "1960-01-01", "female", "B2"))
        .await;
    let entry = |subject: &str| {
        let mut o = observation("x", "8867-4", "Heart rate", "2026-03-01T08:00:00Z", 70.0);
        o["subject"] = json!({"reference": subject});
        json!({"resource": o, "request": {"method": "POST", "url": "Observation"}})
    };
    let tx = |entries: Vec<Value>| json!({"resourceType": "Bundle", "type": "transaction", "entry": entries});
    let r = app
        .post(
            "",
            &tx(vec![
                entry("Patient?identifier=urn:vb:mrn|B2"),
                entry("Patient?family=smith&gender=male"),
                entry("Patient?name=ANNA&birthdate=1960"),
                {
                    let mut e = entry("Patient?identifier=urn:vb:mrn|A1");
                    e["request"]["ifNoneExist"] = json!("family=Smith&birthdate=1950-04-01");
                    e["resource"] = patient("Smith", "John", "1950-04-01", "male", "A1");
                    e["request"]["url"] = json!("Patient");
                    e
                },
            ]),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let e = r.json()["entry"].clone();
    assert_eq!(
        e[0]["resource"]["subject"]["reference"],
        format!("Patient/{b}"),
        "{e}"
    );
    assert_eq!(
        e[1]["resource"]["subject"]["reference"],
        format!("Patient/{a}"),
        "{e}"
    );
    assert_eq!(
        e[2]["resource"]["subject"]["reference"],
        format!("Patient/{b}"),
        "{e}"
    );
    // The conditional create found the existing Patient.
    assert_eq!(e[3]["response"]["status"], "200 OK", "{e}");
    assert_eq!(smiths(&app).await, 2);
    // A conditional reference with two matches fails the whole transaction.
    let before = app.get("_history?_count=0").await.json()["total"].clone();
    let r = app
        .post(
            "",
            &tx(vec![
                entry("Patient?identifier=urn:vb:mrn|A1"),
                entry("Patient?family=smith"),
            ]),
        )
        .await;
    assert_eq!(r.status, 412, "{}", r.text);
    assert_eq!(app.get("_history?_count=0").await.json()["total"], before);
}
both!(transaction_conditional_references);

async fn lastn(app: TestApp) {
    for id in ["ln-p", "ln-q"] {
        put(&app, json!({"resourceType": "Patient", "id": id})).await;
    }
    // Written out of date order, so the newest written is not the newest measured.
    let o = |id: &str, subject: &str, code: &str, display: &str, day: &str| {
        let mut v = observation(
            subject,
            code,
            display,
            &format!("2026-03-{day}T08:00:00Z"),
            70.0,
        );
        v["id"] = json!(id);
        v
    };
    for v in [
        o("ln-hr-05", "Patient/ln-p", "8867-4", "Heart rate", "05"),
        o("ln-hr-01", "Patient/ln-p", "8867-4", "Heart rate", "01"),
        o("ln-bw-04", "Patient/ln-p", "29463-7", "Body weight", "04"),
        o("ln-hr-03", "Patient/ln-p", "8867-4", "Heart rate", "03"),
        o("ln-bw-02", "Patient/ln-p", "29463-7", "Body weight", "02"),
        {
            let mut lab = o("ln-glu-06", "Patient/ln-p", "2339-0", "Glucose", "06");
            lab["category"][0]["coding"][0]["code"] = json!("laboratory");
            lab
        },
        o("ln-q-hr-09", "Patient/ln-q", "8867-4", "Heart rate", "09"),
    ] {
        put(&app, v).await;
    }
    // An update after the fact does not make an older measurement the latest.
    modify(&app, "Observation", "ln-hr-01", |v| {
        v["note"] = json!([{"text": "checked"}])
    })
    .await;
    let lastn = "Observation/$lastn?patient=Patient/ln-p&category=vital-signs";
    check(&app, &format!("{lastn}&max=1"), &["ln-hr-05", "ln-bw-04"]).await;
    check(&app, lastn, &["ln-hr-05", "ln-bw-04"]).await;
    check(
        &app,
        &format!("{lastn}&max=2"),
        &["ln-hr-05", "ln-hr-03", "ln-bw-04", "ln-bw-02"],
    )
    .await;
    check(
        &app,
        &format!("{lastn}&max=5"),
        &["ln-hr-05", "ln-hr-03", "ln-hr-01", "ln-bw-04", "ln-bw-02"],
    )
    .await;
    check(
        &app,
        &format!("{lastn}&code=http://loinc.org|8867-4&max=2"),
        &["ln-hr-05", "ln-hr-03"],
    )
    .await;
    check(
        &app,
        "Observation/$lastn?patient=Patient/ln-p&category=laboratory&max=1",
        &["ln-glu-06"],
    )
    .await;
    check(
        &app,
        "Observation/$lastn?patient=Patient/ln-q&category=vital-signs&max=3",
        &["ln-q-hr-09"],
    )
    .await;
    // Two codings compete in both codes' groups and come back once; a reading without an
    // effective time ranks after every dated one; the date and subject forms narrow the same.
    let mut spo2 = o(
        "ln-spo2-07",
        "Patient/ln-p",
        "2708-6",
        "Oxygen saturation",
        "07",
    );
    spo2["code"]["coding"]
        .as_array_mut()
        .expect("codings")
        .push(json!({"system": "http://loinc.org", "code": "59408-5"}));
    put(&app, spo2).await;
    let mut undated = o(
        "ln-bw-undated",
        "Patient/ln-p",
        "29463-7",
        "Body weight",
        "01",
    );
    undated
        .as_object_mut()
        .expect("object")
        .remove("effectiveDateTime");
    put(&app, undated).await;
    check(
        &app,
        &format!("{lastn}&max=1"),
        &["ln-hr-05", "ln-bw-04", "ln-spo2-07"],
    )
    .await;
    check(
        &app,
        &format!("{lastn}&code=http://loinc.org|29463-7&max=3"),
        &["ln-bw-04", "ln-bw-02", "ln-bw-undated"],
    )
    .await;
    check(
        &app,
        "Observation/$lastn?subject=Patient/ln-p&category=vital-signs&date=le2026-03-04&max=1",
        &["ln-hr-03", "ln-bw-04"],
    )
    .await;
    // Without a patient: the newest per code over every subject.
    check(
        &app,
        "Observation/$lastn?category=vital-signs&max=1",
        &["ln-q-hr-09", "ln-bw-04", "ln-spo2-07"],
    )
    .await;
    check(
        &app,
        "Observation/$lastn?code=http://loinc.org|29463-7&max=1",
        &["ln-bw-04"],
    )
    .await;
}
both!(lastn);

/// Searches answered from one patient's reference rows (`store::query::driver`): the page,
/// both paging directions, `_sort`, `_total`, a date range and `_id` together with them.
async fn patient_driven_pages(app: TestApp) {
    for id in ["dp-p", "dp-q"] {
        put(&app, json!({"resourceType": "Patient", "id": id})).await;
    }
    for (id, subject, day) in [
        ("dp-3", "dp-p", "03"),
        ("dp-1", "dp-p", "05"),
        ("dp-5", "dp-p", "01"),
        ("dp-2", "dp-p", "04"),
        ("dp-4", "dp-p", "02"),
        ("dp-q1", "dp-q", "06"),
    ] {
        let mut o = observation(
            &format!("Patient/{subject}"),
            "8867-4",
            "Heart rate",
            &format!("2026-03-{day}T08:00:00Z"),
            70.0,
        );
        o["id"] = json!(id);
        put(&app, o).await;
    }
    let walk = |start: String| {
        let app = &app;
        async move {
            let mut url = search_url(app, &start);
            let mut pages = Vec::new();
            loop {
                let page = follow(app, &url).await;
                let next = link(&page, "next");
                pages.push(page);
                match next {
                    Some(n) => url = n,
                    None => break,
                }
            }
            pages
        }
    };
    let pages = walk("Observation?patient=dp-p&_count=2".into()).await;
    let ids: Vec<String> = pages.iter().flat_map(crate::search::match_ids).collect();
    assert_eq!(ids, ["dp-1", "dp-2", "dp-3", "dp-4", "dp-5"]);
    assert_eq!(pages.len(), 3);
    assert_eq!(pages[0]["total"], 5, "{}", pages[0]);
    let back = follow(&app, &link(&pages[2], "previous").expect("previous")).await;
    assert_eq!(crate::search::match_ids(&back), ["dp-3", "dp-4"]);
    let back = follow(&app, &link(&back, "previous").expect("previous")).await;
    assert_eq!(crate::search::match_ids(&back), ["dp-1", "dp-2"]);

    let pages = walk("Observation?patient=dp-p&_sort=-date&_count=2".into()).await;
    let ids: Vec<String> = pages.iter().flat_map(crate::search::match_ids).collect();
    assert_eq!(ids, ["dp-1", "dp-2", "dp-3", "dp-4", "dp-5"]);
    let pages = walk("Observation?patient=dp-p&_sort=date&_count=2".into()).await;
    let ids: Vec<String> = pages.iter().flat_map(crate::search::match_ids).collect();
    assert_eq!(ids, ["dp-5", "dp-4", "dp-3", "dp-2", "dp-1"]);

    let b = bundle(
        &app,
        "Observation?patient=dp-p&date=ge2026-03-03&_total=accurate&_count=1",
    )
    .await;
    assert_eq!(b["total"], 3, "{b}");
    assert_eq!(crate::search::match_ids(&b), ["dp-1"]);
    check(
        &app,
        "Observation?patient=dp-p&date=lt2026-03-03",
        &["dp-4", "dp-5"],
    )
    .await;
    check(
        &app,
        "Observation?patient=dp-p,dp-q&date=ge2026-03-05",
        &["dp-1", "dp-q1"],
    )
    .await;
    check(
        &app,
        "Observation?_id=dp-2,dp-q1,dp-x&patient=dp-p",
        &["dp-2"],
    )
    .await;
    check(
        &app,
        "Observation?_id=dp-2,dp-q1&code=http://loinc.org|8867-4",
        &["dp-2", "dp-q1"],
    )
    .await;
    check(
        &app,
        "Observation?patient=dp-p&code:not=http://loinc.org|8867-4",
        &[],
    )
    .await;
    // patient + code is read from the subject rows' codes.
    let all = ["dp-1", "dp-2", "dp-3", "dp-4", "dp-5"];
    check(
        &app,
        "Observation?patient=dp-p&code=http://loinc.org|8867-4",
        &all,
    )
    .await;
    check(&app, "Observation?patient=dp-p&code=8867-4", &all).await;
    check(
        &app,
        "Observation?patient=dp-p&code=http://loinc.org|0000,8867-4",
        &all,
    )
    .await;
    check(&app, "Observation?patient=dp-p&code=|8867-4", &[]).await;
    let mut local = observation("Patient/dp-q", "x", "Local", "2026-03-07T08:00:00Z", 1.0);
    local["id"] = json!("dp-q-local");
    local["code"] = json!({"coding": [{"code": "local-x"}]});
    put(&app, local).await;
    check(
        &app,
        "Observation?patient=dp-q&code=|local-x",
        &["dp-q-local"],
    )
    .await;
    check(
        &app,
        "Observation?patient=dp-q&code=local-x",
        &["dp-q-local"],
    )
    .await;
    check(
        &app,
        "Observation?patient=dp-q&code=http://loinc.org|local-x",
        &[],
    )
    .await;
    check(
        &app,
        "Observation?patient=dp-p&code=http://snomed.info/sct|8867-4",
        &[],
    )
    .await;
    check(
        &app,
        "Observation?patient=dp-p&code=http://loinc.org|8867-4&date=ge2026-03-05",
        &["dp-1"],
    )
    .await;
    // Deleted resources leave the index with their rows.
    app.delete("Observation/dp-3").await;
    check(
        &app,
        "Observation?patient=dp-p&date=ge2026-03-03",
        &["dp-1", "dp-2"],
    )
    .await;
    check(&app, "Observation?_id=dp-3,dp-4", &["dp-4"]).await;
}
both!(patient_driven_pages);

/// `Type/id` of every resource in `$everything` for `query`, following the next links.
async fn everything(app: &TestApp, query: &str) -> (Vec<String>, usize) {
    let mut url = search_url(app, query);
    let mut all: Vec<String> = Vec::new();
    let mut pages = 0;
    loop {
        let page = follow(app, &url).await;
        pages += 1;
        all.extend(refs(&page));
        match link(&page, "next") {
            Some(next) => url = next,
            None => break,
        }
        assert!(pages < 20, "the next links do not end");
    }
    all.sort();
    (all, pages)
}

async fn patient_everything(app: TestApp) {
    let hr = |id: &str, subject: &str| {
        let mut v = observation(
            subject,
            "8867-4",
            "Heart rate",
            "2026-03-01T08:00:00Z",
            70.0,
        );
        v["id"] = json!(id);
        v
    };
    for v in [
        json!({"resourceType": "Patient", "id": "ev-p", "name": [{"family": "Everything"}]}),
        json!({"resourceType": "Patient", "id": "ev-q", "name": [{"family": "Other"}]}),
        hr("ev-obs1", "Patient/ev-p"),
        hr("ev-obs2", "Patient/ev-p"),
        hr("ev-obs-q", "Patient/ev-q"),
        json!({"resourceType": "Device", "id": "ev-dev", "patient": {"reference": "Patient/ev-p"}}),
        json!({"resourceType": "Device", "id": "ev-dev-q", "patient": {"reference": "Patient/ev-q"}}),
        json!({"resourceType": "Organization", "id": "ev-org", "name": "Unrelated"}),
        // Referenced from a resource about the patient: in $everything, though not about it.
        json!({"resourceType": "Practitioner", "id": "ev-prac", "name": [{"family": "Nurse"}]}),
        json!({"resourceType": "Device", "id": "ev-dev2", "status": "active"}),
        json!({"resourceType": "Observation", "id": "ev-obs-perf", "status": "final",
               "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
               "subject": {"reference": "Patient/ev-p"},
               "performer": [{"reference": "Practitioner/ev-prac"}],
               "device": {"reference": "Device/ev-dev2"}}),
        // In the compartment (Provenance.patient: a target that is the Patient).
        json!({"resourceType": "Provenance", "id": "ev-prov-p", "target": [{"reference": "Patient/ev-p"}],
               "recorded": "2026-03-01T09:00:00Z", "agent": [{"who": {"reference": "Patient/ev-p"}}]}),
        // About one of the Patient's Observations only: not in the compartment.
        json!({"resourceType": "Provenance", "id": "ev-prov-obs", "target": [{"reference": "Observation/ev-obs1"}],
               "recorded": "2026-03-01T09:00:00Z", "agent": [{"who": {"reference": "Organization/ev-org"}}]}),
    ] {
        put(&app, v).await;
    }
    let full = sorted(&[
        "Device/ev-dev",
        "Device/ev-dev2",
        "Observation/ev-obs-perf",
        "Observation/ev-obs1",
        "Observation/ev-obs2",
        "Patient/ev-p",
        "Practitioner/ev-prac",
        "Provenance/ev-prov-p",
    ]);
    let (got, _) = everything(&app, "Patient/ev-p/$everything").await;
    assert_eq!(got, full);
    let (got, pages) = everything(&app, "Patient/ev-p/$everything?_count=2").await;
    assert_eq!(got, full, "every resource once across the pages");
    assert!(pages >= 3, "6 matches in pages of 2: {pages} pages");
    // The referenced ones come as includes.
    let b = follow(&app, &search_url(&app, "Patient/ev-p/$everything")).await;
    assert_eq!(
        included(&b),
        ["Device/ev-dev2", "Practitioner/ev-prac"],
        "{b}"
    );
    let observations = sorted(&[
        "Observation/ev-obs-perf",
        "Observation/ev-obs1",
        "Observation/ev-obs2",
    ]);
    let (got, _) = everything(&app, "Patient/ev-p/$everything?_type=Observation").await;
    assert_eq!(
        got, observations,
        "_type limits the referenced resources too"
    );
    let (got, _) = everything(&app, "Patient/ev-p/$everything?_type=Observation,Device").await;
    let mut want = observations.clone();
    want.extend(["Device/ev-dev".to_owned(), "Device/ev-dev2".to_owned()]);
    want.sort();
    assert_eq!(got, want);
    let (got, _) = everything(&app, "Patient/ev-q/$everything").await;
    assert_eq!(
        got,
        sorted(&["Device/ev-dev-q", "Observation/ev-obs-q", "Patient/ev-q"])
    );
    // _since: only what changed at or after the instant (the Patient too is updated).
    let mark = put(
        &app,
        json!({"resourceType": "Organization", "id": "ev-org", "name": "Unrelated, renamed"}),
    )
    .await;
    let mark = last_updated(&mark);
    tick().await;
    modify(&app, "Observation", "ev-obs2", |v| {
        v["valueQuantity"]["value"] = json!(75)
    })
    .await;
    modify(&app, "Patient", "ev-p", |v| v["active"] = json!(true)).await;
    put(&app, hr("ev-obs3", "Patient/ev-p")).await;
    put(&app, hr("ev-obs-q2", "Patient/ev-q")).await;
    let (got, _) = everything(&app, &format!("Patient/ev-p/$everything?_since={mark}")).await;
    assert_eq!(
        got,
        sorted(&["Observation/ev-obs2", "Observation/ev-obs3", "Patient/ev-p"])
    );
    assert_eq!(app.get("Patient/nobody/$everything").await.status, 404);
}
both!(patient_everything);

async fn only_current_versions_match(app: TestApp) {
    put(
        &app,
        json!({"resourceType": "Patient", "id": "cur-p", "name": [{"family": "Smith"}]}),
    )
    .await;
    let mut o = observation(
        "Patient/cur-p",
        "8867-4",
        "Heart rate",
        "2026-03-01T08:00:00Z",
        70.0,
    );
    o["id"] = json!("cur-o");
    put(&app, o.clone()).await;
    o["id"] = json!("cur-o2");
    put(&app, o).await;
    put(
        &app,
        json!({"resourceType": "Practitioner", "id": "cur-dr", "name": [{"family": "Doc"}]}),
    )
    .await;
    put(
        &app,
        json!({"resourceType": "Provenance", "id": "cur-prov", "target": [{"reference": "Observation/cur-o"}],
               "recorded": "2026-03-01T09:00:00Z", "agent": [{"who": {"reference": "Practitioner/cur-dr"}}]}),
    )
    .await;
    check(&app, "Observation?code=8867-4", &["cur-o", "cur-o2"]).await;

    // The code changes: the old code no longer finds it, the new one does.
    modify(&app, "Observation", "cur-o", |v| {
        v["code"] = loinc("29463-7", "Body weight")
    })
    .await;
    check(&app, "Observation?code=8867-4", &["cur-o2"]).await;
    check(&app, "Observation?code=29463-7", &["cur-o"]).await;
    check(
        &app,
        "Observation?code-value-quantity=http://loinc.org|8867-4$70",
        &["cur-o2"],
    )
    .await;
    // The Patient is renamed: chains, _has and string search see the new name only.
    modify(&app, "Patient", "cur-p", |v| {
        v["name"] = json!([{"family": "Jones"}])
    })
    .await;
    check(&app, "Patient?family=smith", &[]).await;
    check(&app, "Patient?family=jones", &["cur-p"]).await;
    check(&app, "Observation?patient.name=smith", &[]).await;
    check(&app, "Observation?patient.name=jones", &["cur-o", "cur-o2"]).await;
    check(
        &app,
        "Patient?_has:Observation:patient:code=8867-4",
        &["cur-p"],
    )
    .await;

    // Deleted resources disappear from every kind of search.
    assert_eq!(app.delete("Observation/cur-o2").await.status, 204);
    check(&app, "Observation?code=8867-4", &[]).await;
    check(&app, "Observation?_id=cur-o2", &[]).await;
    check(&app, "Observation?patient=cur-p", &["cur-o"]).await;
    check(&app, "Patient?_has:Observation:patient:code=8867-4", &[]).await;
    check(
        &app,
        "Patient?_has:Observation:patient:code=29463-7",
        &["cur-p"],
    )
    .await;
    let (all, _) = everything(&app, "Patient/cur-p/$everything").await;
    assert_eq!(all, sorted(&["Observation/cur-o", "Patient/cur-p"]));
    // An Observation whose Patient is deleted: nothing to include, nothing to chain through.
    assert_eq!(app.delete("Patient/cur-p").await.status, 204);
    let b = bundle(&app, "Observation?_id=cur-o&_include=Observation:patient").await;
    assert!(included(&b).is_empty(), "{b}");
    check(&app, "Observation?patient.name=jones", &[]).await;
    check(&app, "Patient?_id=cur-p", &[]).await;
    // Its Provenance, whose target was updated, still finds it by reference.
    check(&app, "Provenance?target=Observation/cur-o", &["cur-prov"]).await;
    // Re-created with a new version, it is found again.
    put(
        &app,
        json!({"resourceType": "Patient", "id": "cur-p", "name": [{"family": "Back"}]}),
    )
    .await;
    check(&app, "Patient?family=back", &["cur-p"]).await;
    check(&app, "Observation?patient.name=back", &["cur-o"]).await;
}
both!(only_current_versions_match);
