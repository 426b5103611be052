//! The subscription matcher (`subscriptions::criteria`) decides criteria on a version's own
//! index rows; the search engine decides them in SQL. Both must agree: every criterion here is
//! asked of both, on each backend, for each stored resource.

use serde_json::{Value, json};

use crate::both;
use crate::common::{TestApp, heart_rate, patient};
use vitalbridge::fhir::types::ResourceType;
use vitalbridge::store::query::Clause;
use vitalbridge::subscriptions::criteria::{Version, matches};

const OBSERVATION_CRITERIA: &[&str] = &[
    "code=8867-4",
    "code=http://loinc.org|8867-4",
    "code=|8867-4",
    "code=http://loinc.org|",
    "code:not=8867-4",
    "code:text=heart",
    "code=85354-9,8867-4",
    "category=vital-signs",
    "category:missing=true",
    "value-quantity=72",
    "value-quantity=gt70",
    "value-quantity=le71.5",
    "value-quantity=ne72",
    "value-quantity=ap75",
    "value-quantity=72|http://unitsofmeasure.org|/min",
    "value-quantity=gt1|http://unitsofmeasure.org|/s",
    "value-quantity:missing=false",
    "component-value-quantity=gt140",
    "component-code-value-quantity=http://loinc.org|8480-6$gt140",
    "component-code-value-quantity=8462-4$lt90",
    "combo-code=8480-6",
    "combo-value-quantity=ge95",
    "date=2026-11-20",
    "date=ge2026-11-20T08:30:00Z",
    "date=gt2026-11-20T08:30:00Z",
    "date=lt2026-11-01",
    "date=sa2026-11-19",
    "date=eb2026-12",
    "date=ne2026-11-20",
    "date:missing=true",
    "status=final",
    "status=amended,preliminary",
    "_id:not=nothing",
];

const PATIENT_CRITERIA: &[&str] = &[
    "family=smi",
    "family:exact=Smith",
    "family:exact=smith",
    "family:contains=mit",
    "name=jones",
    "identifier=urn:vb:test|Smith",
    "identifier=Smith",
    "birthdate=1950",
    "birthdate=gt1960",
    "gender=female",
    "gender:missing=true",
    "active=true",
];

/// What the search engine says: is the resource among the matches of `criteria`?
async fn engine(app: &TestApp, ty: &str, id: &str, criteria: &str) -> bool {
    let r = app
        .get(&format!("{ty}?{criteria}&_id={id}&_total=accurate"))
        .await;
    assert_eq!(r.status, 200, "{ty}?{criteria}: {}", r.text);
    r.json()["total"].as_u64().expect("total") > 0
}

/// What the matcher says of the stored version.
fn matcher(app: &TestApp, stored: &Value, criteria: &str) -> Option<bool> {
    let ty = stored["resourceType"].as_str().expect("type");
    let q = vitalbridge::search::parse(
        ResourceType::parse(ty),
        &vitalbridge::search::decode_query(criteria),
        &app.base,
    );
    assert!(q.invalid.is_empty() && q.unknown.is_empty(), "{criteria}");
    let rows = vitalbridge::search::index::rows(stored);
    let v = Version {
        ty,
        id: stored["id"].as_str().expect("id"),
        last_updated: 0,
        rows: &rows,
    };
    matches(
        &Clause::All(q.clauses),
        &v,
        vitalbridge::store::now_micros(),
    )
}

async fn the_matcher_agrees_with_the_search_engine(app: TestApp) {
    let smith = app
        .create(&json!({
            "resourceType": "Patient",
            "identifier": [{"system": "urn:vb:test", "value": "Smith"}],
            "name": [{"family": "Smith", "given": ["Ann"]}],
            "gender": "female",
            "birthDate": "1950-04-02",
            "active": true
        }))
        .await;
    let other = app.create(&patient("Jones")).await;
    let hr = app.create(&heart_rate(&smith, 72.0)).await;
    let bp = app
        .create(&json!({
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
            "subject": {"reference": format!("Patient/{smith}")},
            "component": [
                {"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
                 "valueQuantity": {"value": 150, "unit": "mmHg",
                                   "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}},
                {"code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]},
                 "valueQuantity": {"value": 95, "unit": "mmHg",
                                   "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}}
            ]
        }))
        .await;
    let mut decided = 0;
    let mut matched = 0;
    for (ty, id, list) in [
        ("Observation", &hr, OBSERVATION_CRITERIA),
        ("Observation", &bp, OBSERVATION_CRITERIA),
        ("Patient", &smith, PATIENT_CRITERIA),
        ("Patient", &other, PATIENT_CRITERIA),
    ] {
        let stored = app.get(&format!("{ty}/{id}")).await.json();
        for criteria in list {
            let want = engine(&app, ty, id, criteria).await;
            let got = matcher(&app, &stored, criteria);
            assert_eq!(got, Some(want), "{ty}/{id} {criteria}");
            decided += 1;
            matched += usize::from(want);
        }
        // The subject's own data decides a chain: the store is asked.
        if ty == "Observation" {
            assert_eq!(matcher(&app, &stored, "subject:Patient.family=smith"), None);
            let with_patient = format!("subject=Patient/{smith}");
            assert_eq!(matcher(&app, &stored, &with_patient), Some(true));
        }
    }
    // Both answers occur, so agreement is not agreement on "never".
    assert!(
        matched > 10 && matched < decided - 10,
        "{matched} of {decided}"
    );
}
both!(the_matcher_agrees_with_the_search_engine);
