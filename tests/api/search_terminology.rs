//! Token modifiers that need terminology, answered from the CodeSystems and ValueSets stored
//! here (https://hl7.org/fhir/R4/search.html#token): `:below`, `:above`, `:in`, `:not-in`.

use serde_json::{Value, json};

use crate::both;
use crate::common::TestApp;
use crate::search::{check, get_prefer, put};

const CS: &str = "urn:vb:test:rpm-kinds";
const LOINC: &str = "http://loinc.org";

fn observation(id: &str, system: &str, code: &str) -> Value {
    json!({"resourceType": "Observation", "id": id, "status": "final",
           "code": {"coding": [{"system": system, "code": code}]}})
}

async fn seed(app: &TestApp) {
    // vital > (bp > (sys, dia), hr, spo2 by a parent property); lab > glucose by a child property.
    put(
        app,
        json!({"resourceType": "CodeSystem", "id": "rpm-kinds", "url": CS,
               "status": "active", "content": "complete", "hierarchyMeaning": "is-a",
               "concept": [
                 {"code": "vital", "concept": [
                   {"code": "bp", "concept": [{"code": "sys"}, {"code": "dia"}]},
                   {"code": "hr"}]},
                 {"code": "spo2", "property": [{"code": "parent", "valueCode": "vital"}]},
                 {"code": "lab", "property": [{"code": "child", "valueCode": "glucose"}]},
                 {"code": "glucose"}]}),
    )
    .await;
    put(
        app,
        json!({"resourceType": "CodeSystem", "id": "grouped", "url": "urn:vb:test:grouped",
               "status": "active", "content": "complete", "hierarchyMeaning": "grouped-by",
               "concept": [{"code": "g", "concept": [{"code": "h"}]}]}),
    )
    .await;
    put(
        app,
        json!({"resourceType": "ValueSet", "id": "bp-and-hr", "url": "urn:vb:test:vs:bp-hr",
               "status": "active", "compose": {"include": [
                 {"system": CS, "filter": [{"property": "concept", "op": "is-a", "value": "bp"}]},
                 {"system": LOINC, "concept": [{"code": "8867-4"}, {"code": "8480-6"}]}],
               "exclude": [{"system": CS, "concept": [{"code": "dia"}]}]}}),
    )
    .await;
    put(
        app,
        json!({"resourceType": "ValueSet", "id": "expanded", "url": "urn:vb:test:vs:expanded",
               "status": "active", "expansion": {"timestamp": "2026-11-01T00:00:00Z",
                 "contains": [{"system": CS, "code": "glucose"},
                              {"system": LOINC, "code": "2339-0"}]}}),
    )
    .await;
    for (id, system, code) in [
        ("t-vital", CS, "vital"),
        ("t-bp", CS, "bp"),
        ("t-sys", CS, "sys"),
        ("t-dia", CS, "dia"),
        ("t-hr", CS, "hr"),
        ("t-spo2", CS, "spo2"),
        ("t-lab", CS, "lab"),
        ("t-glucose", CS, "glucose"),
        ("t-loinc-hr", LOINC, "8867-4"),
        ("t-loinc-sys", LOINC, "8480-6"),
        ("t-loinc-glu", LOINC, "2339-0"),
    ] {
        put(app, observation(id, system, code)).await;
    }
}

async fn terminology_modifiers(app: TestApp) {
    seed(&app).await;
    check(
        &app,
        &format!("Observation?code:below={CS}|vital"),
        &["t-vital", "t-bp", "t-sys", "t-dia", "t-hr", "t-spo2"],
    )
    .await;
    check(
        &app,
        &format!("Observation?code:below={CS}|bp"),
        &["t-bp", "t-sys", "t-dia"],
    )
    .await;
    check(
        &app,
        &format!("Observation?code:below={CS}|lab"),
        &["t-lab", "t-glucose"],
    )
    .await;
    check(
        &app,
        &format!("Observation?code:above={CS}|sys"),
        &["t-sys", "t-bp", "t-vital"],
    )
    .await;
    // OR within the parameter, AND with another.
    check(
        &app,
        &format!("Observation?code:below={CS}|bp,{CS}|lab"),
        &["t-bp", "t-sys", "t-dia", "t-lab", "t-glucose"],
    )
    .await;
    check(
        &app,
        &format!("Observation?code:below={CS}|vital&code:above={CS}|dia"),
        &["t-vital", "t-bp", "t-dia"],
    )
    .await;
    // :in by canonical url and by reference; compose with a filter, codes and an exclude.
    let bp_hr = ["t-bp", "t-sys", "t-loinc-hr", "t-loinc-sys"];
    check(&app, "Observation?code:in=urn:vb:test:vs:bp-hr", &bp_hr).await;
    check(&app, "Observation?code:in=ValueSet/bp-and-hr", &bp_hr).await;
    check(
        &app,
        "Observation?code:in=urn:vb:test:vs:expanded",
        &["t-glucose", "t-loinc-glu"],
    )
    .await;
    check(
        &app,
        "Observation?code:not-in=urn:vb:test:vs:bp-hr",
        &[
            "t-vital",
            "t-dia",
            "t-hr",
            "t-spo2",
            "t-lab",
            "t-glucose",
            "t-loinc-glu",
        ],
    )
    .await;

    // What cannot be answered is a 400 OperationOutcome, not an empty result.
    for (query, why) in [
        ("Observation?code:below=urn:vb:unknown|x", "not stored"),
        (
            &format!("Observation?code:below={CS}|nope") as &str,
            "not a code",
        ),
        ("Observation?code:below=urn:vb:test:grouped|g", "grouped-by"),
        ("Observation?code:in=urn:vb:test:vs:missing", "not stored"),
    ] {
        let r = get_prefer(&app, query, "handling=lenient").await;
        assert_eq!(r.status, 400, "{query}: {}", r.text);
        assert_eq!(r.json()["resourceType"], "OperationOutcome");
        assert!(r.text.contains(why), "{query}: {}", r.text);
    }
    // :below needs a system: malformed, so refused when strict.
    let r = get_prefer(&app, "Observation?code:below=bp", "handling=strict").await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(r.text.contains("system|code"), "{}", r.text);
}
both!(terminology_modifiers);
