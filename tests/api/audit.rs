//! The audit trail (issue 4, item 7): every read, search, write, login and token request is
//! recorded — who, what (type and id, never content), when, outcome — and admins search it as
//! FHIR AuditEvent. Rows are written by a background task, so the checks poll briefly.

use serde_json::{Value, json};

use crate::both;
use crate::common::{
    ADMIN_ID, TestApp, client_token, patient, patient_app_token, put_organization,
};

/// The AuditEvents of a search, once at least `min` are there (the writer is asynchronous).
async fn events(app: &TestApp, query: &str, min: usize) -> Vec<Value> {
    let mut last = Value::Null;
    for _ in 0..100 {
        let r = app.get(&format!("AuditEvent?{query}")).await;
        assert_eq!(r.status, 200, "{query}: {}", r.text);
        last = r.json();
        let entries: Vec<Value> = last["entry"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|e| e["resource"].clone())
            .collect();
        if entries.len() >= min {
            return entries;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("fewer than {min} AuditEvents for {query}: {last}");
}

fn subtypes(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| {
            e["subtype"][0]["code"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect()
}

async fn every_request_is_audited_and_admins_search_the_trail(app: TestApp) {
    put_organization(&app, "ac1", None).await;
    // Writes and reads of one patient, as the admin.
    let mut p = patient("Confidential-Family");
    p["managingOrganization"] = json!({"reference": "Organization/ac1"});
    let id = app.create(&p).await;
    let path = format!("Patient/{id}");
    assert_eq!(app.get(&path).await.status, 200);
    assert_eq!(
        app.get("Patient?family=Confidential-Family").await.status,
        200
    );
    let mut v = app.get(&path).await.json();
    v["active"] = json!(true);
    assert_eq!(app.put(&path, &v).await.status, 200);
    assert_eq!(app.delete(&path).await.status, 204);

    // Newest first: delete, update, read, read, create.
    let trail = events(&app, &format!("entity={path}"), 5).await;
    assert_eq!(
        subtypes(&trail),
        ["delete", "update", "read", "read", "create"]
    );
    let actions: Vec<&str> = trail
        .iter()
        .map(|e| e["action"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(actions, ["D", "U", "R", "R", "C"]);
    for e in &trail {
        assert_eq!(e["resourceType"], "AuditEvent");
        assert_eq!(e["outcome"], "0", "{e}");
        assert_eq!(e["agent"][0]["who"]["identifier"]["value"], ADMIN_ID);
        assert_eq!(e["agent"][0]["role"][0]["coding"][0]["code"], "admin");
        assert_eq!(e["agent"][0]["network"]["address"], "127.0.0.1");
        assert_eq!(e["entity"][0]["what"]["reference"], path);
        assert!(e["recorded"].as_str().is_some_and(|r| r.starts_with("20")));
        // Each one is readable by itself, in its one version.
        let one = app
            .get(&format!("AuditEvent/{}", e["id"].as_str().expect("id")))
            .await;
        assert_eq!(one.status, 200);
        assert_eq!(one.json(), *e);
    }
    // The search was recorded by its type, never by its values.
    let searches = events(&app, "subtype=search-type&_sort=date", 1).await;
    assert_eq!(searches[0]["entity"][0]["what"]["type"], "Patient");
    let everything = app.get("AuditEvent?_count=1000").await;
    assert!(
        !everything.text.contains("Confidential-Family"),
        "search values leaked into the trail"
    );

    // A client id PostgreSQL could not store as text (NUL) does not stop the trail: what
    // follows is still recorded.
    let r = app
        .send(
            reqwest::Client::new()
                .post(format!("{}/auth/token", app.origin()))
                .header("content-type", "application/x-www-form-urlencoded")
                .body("grant_type=client_credentials&client_id=evil%00name&client_secret=x"),
        )
        .await;
    assert_eq!(r.status, 401);
    let evil = events(&app, "agent-name=evilname", 1).await;
    assert_eq!(evil[0]["outcome"], "4");

    // A refused token and a refused client are recorded as failures.
    let r = app
        .send(
            reqwest::Client::new()
                .get(app.url(&path))
                .bearer_auth("not-a-token"),
        )
        .await;
    assert_eq!(r.status, 401);
    let r = app
        .send(
            reqwest::Client::new()
                .post(format!("{}/auth/token", app.origin()))
                .basic_auth("no-such-client", Some("guess"))
                .form(&[("grant_type", "client_credentials")]),
        )
        .await;
    assert_eq!(r.status, 401);
    let failed = events(&app, &format!("outcome=4&entity={path}"), 1).await;
    assert_eq!(failed[0]["agent"][0]["who"]["display"], "unauthenticated");
    assert_eq!(
        failed[0]["outcomeDesc"]
            .as_str()
            .map(|d| d.starts_with("HTTP 401")),
        Some(true)
    );
    let tokens = events(&app, "type=110114&outcome=4&agent-name=no-such-client", 1).await;
    assert_eq!(
        tokens[0]["agent"][0]["who"]["identifier"]["value"],
        "no-such-client"
    );
    assert_eq!(tokens[0]["subtype"][0]["code"], "token");

    // A clinic's client: its requests carry its role and organization; it cannot read the trail.
    let clinic = client_token(&app, &json!({"role": "customer", "organization": "ac1"})).await;
    let r = app
        .send(
            reqwest::Client::new()
                .get(app.url("Patient"))
                .bearer_auth(&clinic),
        )
        .await;
    assert_eq!(r.status, 200);
    let r = app
        .send(
            reqwest::Client::new()
                .get(app.url("AuditEvent"))
                .bearer_auth(&clinic),
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.text);
    let theirs = events(&app, "agent=Organization/ac1&agent-role=customer", 2).await;
    assert!(
        theirs
            .iter()
            .all(|e| e["agent"][1]["who"]["reference"] == "Organization/ac1")
    );
    // Successful token issue names the client that got it.
    let issued = events(&app, "subtype=token&outcome=0&agent-role=customer", 1).await;
    assert_eq!(issued[0]["type"]["code"], "110114");

    // A patient's sign-in on the login page.
    let mut me = patient("Audited-Patient");
    me["id"] = json!("audited-patient");
    me["managingOrganization"] = json!({"reference": "Organization/ac1"});
    assert_eq!(app.put("Patient/audited-patient", &me).await.status, 201);
    patient_app_token(&app, "ac1", "audited-patient").await;
    let logins = events(&app, "subtype=login&outcome=0", 1).await;
    assert!(
        logins[0]["agent"][0]["altId"]
            .as_str()
            .is_some_and(|u| u.starts_with("patient-"))
    );

    // The trail is append-only.
    let r = app
        .post("AuditEvent", &json!({"resourceType": "AuditEvent"}))
        .await;
    assert_eq!(r.status, 405);
    let first = &trail[0]["id"].as_str().expect("id").to_owned();
    assert_eq!(app.delete(&format!("AuditEvent/{first}")).await.status, 405);
}

/// Dates, paging and totals work like other searches; pages do not shift as rows are added.
async fn the_trail_pages_by_date(app: TestApp) {
    for _ in 0..5 {
        assert_eq!(app.get("Patient?_count=1").await.status, 200);
    }
    let all = events(&app, "subtype=search-type", 5).await;
    let r = app
        .get("AuditEvent?subtype=search-type&_count=2&_total=accurate&_sort=date")
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let page1 = r.json();
    assert!(page1["total"].as_i64().is_some_and(|t| t >= 5), "{page1}");
    let next = page1["link"]
        .as_array()
        .and_then(|l| l.iter().find(|l| l["relation"] == "next"))
        .and_then(|l| l["url"].as_str())
        .expect("next link")
        .to_owned();
    // New rows arrive meanwhile (this very search is one).
    assert_eq!(app.get("Patient?_count=1").await.status, 200);
    let page2 = app.send(app.client.get(&next)).await.json();
    let ids = |b: &Value| -> Vec<i64> {
        b["entry"]
            .as_array()
            .map(|e| {
                e.iter()
                    .filter_map(|e| e["resource"]["id"].as_str()?.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    };
    let (a, b) = (ids(&page1), ids(&page2));
    assert_eq!(a.len(), 2);
    assert_eq!(b.len(), 2);
    assert!(a[1] < b[0], "oldest first, no overlap: {a:?} {b:?}");
    assert!(!all.is_empty());
    let none = app.get("AuditEvent?date=lt2000-01-01").await.json();
    assert!(
        none["entry"].as_array().is_none_or(|e| e.is_empty()),
        "{none}"
    );
    let today = app
        .get("AuditEvent?date=ge2020-01-01&_count=1")
        .await
        .json();
    assert_eq!(today["entry"].as_array().map(Vec::len), Some(1));
    let bad = app.get("AuditEvent?date=yesterday").await;
    assert_eq!(bad.status, 400);
}

both!(every_request_is_audited_and_admins_search_the_trail);
both!(the_trail_pages_by_date);
