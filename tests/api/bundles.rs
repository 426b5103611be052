//! batch and transaction Bundles.

use serde_json::{Value, json};

use crate::both;
use crate::common::{TestApp, heart_rate, patient};

fn entry(method: &str, url: &str, full_url: Option<&str>, resource: Option<Value>) -> Value {
    let mut e = json!({"request": {"method": method, "url": url}});
    if let Some(f) = full_url {
        e["fullUrl"] = json!(f);
    }
    if let Some(r) = resource {
        e["resource"] = r;
    }
    e
}

async fn transaction_resolves_and_is_atomic(app: TestApp) {
    let existing = app.create(&patient("Existing")).await;
    let doomed = app.create(&patient("Doomed")).await;
    let mut obs = heart_rate("x", 80.0);
    obs["subject"] = json!({"reference": "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a"});
    let mut obs2 = heart_rate("x", 81.0);
    obs2["subject"] = json!({"reference": "Patient?identifier=urn:vb:test|Existing"});
    let bundle = json!({
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            entry("GET", &format!("Patient/{existing}"), None, None),
            entry("POST", "Observation", Some("urn:uuid:0c3151bd-1cbf-4d64-b04d-cd9187a4c6e0"), Some(obs)),
            entry("POST", "Patient", Some("urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a"), Some(patient("New"))),
            entry("POST", "Observation", None, Some(obs2)),
            entry("DELETE", &format!("Patient/{doomed}"), None, None),
            entry("PUT", "Patient/client-chosen", None, Some(json!({"resourceType": "Patient", "id": "client-chosen", "active": true}))),
        ]
    });
    let r = app.post("", &bundle).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let resp = r.json();
    assert_eq!(resp["type"], "transaction-response");
    let e = resp["entry"].as_array().expect("entries");
    assert_eq!(e.len(), 6);
    assert_eq!(e[0]["response"]["status"], "200 OK");
    assert_eq!(e[1]["response"]["status"], "201 Created");
    assert_eq!(e[4]["response"]["status"], "204 No Content");
    assert_eq!(e[5]["response"]["status"], "201 Created");
    // The urn:uuid reference now points at the patient the transaction created.
    let new_patient = e[2]["resource"]["id"].as_str().expect("id");
    assert_eq!(
        e[1]["resource"]["subject"]["reference"],
        format!("Patient/{new_patient}")
    );
    assert!(
        e[1]["response"]["location"]
            .as_str()
            .expect("loc")
            .starts_with("Observation/")
    );
    // The conditional reference resolved to the existing patient.
    assert_eq!(
        e[3]["resource"]["subject"]["reference"],
        format!("Patient/{existing}")
    );
    assert_eq!(app.get(&format!("Patient/{doomed}")).await.status, 410);
    assert_eq!(app.get("Patient/client-chosen").await.status, 200);

    // One failing entry rolls back everything.
    let before = app.get("_history?_count=0").await.json()["total"].clone();
    let bad = json!({
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            entry("POST", "Patient", None, Some(patient("Rollback"))),
            entry("DELETE", &format!("Patient/{existing}"), None, None),
            entry("POST", "Observation", None, Some(json!({"resourceType": "Observation", "status": "done", "code": {"text": "x"}}))),
        ]
    });
    let r = app.post("", &bad).await;
    assert_eq!(r.status, 400, "{}", r.text);
    let issues = r.outcome_issues();
    assert!(
        issues.iter().any(|i| i["expression"][0]
            .as_str()
            .is_some_and(|x| x.starts_with("Bundle.entry[2]"))),
        "{}",
        r.text
    );
    assert_eq!(app.get("_history?_count=0").await.json()["total"], before);
    assert_eq!(app.get(&format!("Patient/{existing}")).await.status, 200);
    // A version conflict inside a transaction also rolls back.
    let bad = json!({
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            entry("POST", "Patient", None, Some(patient("Rollback2"))),
            {"request": {"method": "PUT", "url": format!("Patient/{existing}"), "ifMatch": "W/\"9\""},
             "resource": {"resourceType": "Patient", "id": existing, "active": false}},
        ]
    });
    assert_eq!(app.post("", &bad).await.status, 412);
    assert_eq!(app.get("_history?_count=0").await.json()["total"], before);
    // Conditional reference that matches nothing fails the transaction.
    let mut o = heart_rate("x", 1.0);
    o["subject"] = json!({"reference": "Patient?identifier=urn:vb:test|Nobody"});
    let bad = json!({"resourceType": "Bundle", "type": "transaction", "entry": [entry("POST", "Observation", None, Some(o))]});
    assert_eq!(app.post("", &bad).await.status, 412);
}
both!(transaction_resolves_and_is_atomic);

async fn transaction_if_none_exist(app: TestApp) {
    let existing = app.create(&patient("Twice")).await;
    let mut obs = heart_rate("x", 70.0);
    obs["subject"] = json!({"reference": "urn:uuid:a7f0a1cb-0d5c-4d8e-9f3e-2c1b0e8f1a11"});
    let bundle = json!({
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"fullUrl": "urn:uuid:a7f0a1cb-0d5c-4d8e-9f3e-2c1b0e8f1a11", "resource": patient("Twice"),
             "request": {"method": "POST", "url": "Patient", "ifNoneExist": "identifier=urn:vb:test|Twice"}},
            entry("POST", "Observation", None, Some(obs)),
        ]
    });
    let r = app.post("", &bundle).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let e = r.json()["entry"].clone();
    assert_eq!(e[0]["response"]["status"], "200 OK");
    assert_eq!(
        e[1]["resource"]["subject"]["reference"],
        format!("Patient/{existing}")
    );
    assert_eq!(
        app.get("Patient?identifier=urn:vb:test|Twice").await.json()["total"],
        1
    );
}
both!(transaction_if_none_exist);

async fn batch_entries_stand_alone(app: TestApp) {
    let pid = app.create(&patient("Batch")).await;
    let patch = json!([{"op": "replace", "path": "/gender", "value": "male"}]);
    let b64 = base64(patch.to_string().as_bytes());
    let bundle = json!({
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            entry("POST", "Patient", None, Some(patient("One"))),
            entry("POST", "Observation", None, Some(json!({"resourceType": "Observation", "status": "bogus", "code": {"text": "x"}}))),
            entry("GET", "Patient/nope", None, None),
            entry("GET", &format!("Patient?_id={pid}"), None, None),
            entry("PATCH", &format!("Patient/{pid}"), None, Some(json!({"resourceType": "Binary", "contentType": "application/json-patch+json", "data": b64}))),
            entry("GET", &format!("Patient/{pid}/_history/1"), None, None),
        ]
    });
    let r = app.post("", &bundle).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let resp = r.json();
    assert_eq!(resp["type"], "batch-response");
    let e = resp["entry"].as_array().expect("entries");
    assert_eq!(e[0]["response"]["status"], "201 Created");
    assert_eq!(e[1]["response"]["status"], "400 Bad Request");
    assert_eq!(
        e[1]["response"]["outcome"]["resourceType"],
        "OperationOutcome"
    );
    assert_eq!(e[2]["response"]["status"], "404 Not Found");
    assert_eq!(e[3]["resource"]["type"], "searchset");
    assert_eq!(e[3]["resource"]["total"], 1);
    assert_eq!(e[4]["response"]["status"], "200 OK");
    assert_eq!(e[4]["resource"]["gender"], "male");
    assert_eq!(e[5]["resource"]["gender"], "female");
    // The good entries were kept although another failed.
    assert_eq!(
        app.get("Patient?identifier=urn:vb:test|One").await.json()["total"],
        1
    );

    // Not a batch or transaction.
    let r = app
        .post("", &json!({"resourceType": "Bundle", "type": "collection"}))
        .await;
    assert_eq!(r.status, 400);
    let r = app.post("", &patient("NotABundle")).await;
    assert_eq!(r.status, 400);
}
both!(batch_entries_stand_alone);

fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
