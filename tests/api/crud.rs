//! create, read, vread, update, delete, conditional interactions, PATCH, Prefer.

use serde_json::json;

use crate::both;
use crate::common::{TestApp, heart_rate, patient, with};

async fn create_read_update_delete(app: TestApp) {
    // create: 201 with Location, ETag and Last-Modified; the server assigns id and meta.
    let r = app
        .post(
            "Patient",
            &with(patient("Lovelace"), "id", json!("ignored")),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let body = r.json();
    let id = body["id"].as_str().expect("id").to_owned();
    assert_ne!(id, "ignored", "a create ignores the id in the body");
    assert_eq!(body["meta"]["versionId"], "1");
    assert_eq!(r.header("etag"), Some("W/\"1\""));
    assert!(
        r.header("last-modified")
            .is_some_and(|v| v.ends_with("GMT"))
    );
    assert_eq!(
        r.header("location"),
        Some(app.url(&format!("Patient/{id}/_history/1")).as_str())
    );
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("application/fhir+json"))
    );

    let r = app.get(&format!("Patient/{id}")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["name"][0]["family"], "Lovelace");
    assert_eq!(r.header("etag"), Some("W/\"1\""));

    // update: version 2; vread still finds version 1.
    let mut p = r.json();
    p["name"][0]["family"] = json!("Byron");
    let r = app.put(&format!("Patient/{id}"), &p).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["meta"]["versionId"], "2");
    assert_eq!(r.header("etag"), Some("W/\"2\""));
    let r = app.get(&format!("Patient/{id}/_history/1")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["name"][0]["family"], "Lovelace");
    assert_eq!(
        app.get(&format!("Patient/{id}/_history/3")).await.status,
        404
    );

    // delete: 204, then read is 410 Gone; earlier versions stay readable; history shows it.
    let r = app.delete(&format!("Patient/{id}")).await;
    assert_eq!(r.status, 204, "{}", r.text);
    assert_eq!(r.header("etag"), Some("W/\"3\""));
    let r = app.get(&format!("Patient/{id}")).await;
    assert_eq!(r.status, 410);
    assert_eq!(r.outcome_issues()[0]["code"], "deleted");
    assert_eq!(
        app.get(&format!("Patient/{id}/_history/2")).await.status,
        200
    );
    assert_eq!(
        app.get(&format!("Patient/{id}/_history/3")).await.status,
        410
    );
    let h = app.get(&format!("Patient/{id}/_history")).await.json();
    assert_eq!(h["total"], 3);
    assert_eq!(h["entry"][0]["request"]["method"], "DELETE");
    assert!(h["entry"][0].get("resource").is_none());
    assert_eq!(h["entry"][2]["request"]["method"], "POST");
    // Deleting again changes nothing.
    assert_eq!(app.delete(&format!("Patient/{id}")).await.status, 204);
    assert_eq!(
        app.get(&format!("Patient/{id}/_history")).await.json()["total"],
        3
    );

    // Update after delete brings it back as version 4.
    let r = app.put(&format!("Patient/{id}"), &p).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["meta"]["versionId"], "4");

    // Unknown resources are 404.
    assert_eq!(app.get("Patient/does-not-exist").await.status, 404);
    assert_eq!(app.get("Patient/does-not-exist/_history").await.status, 404);
}
both!(create_read_update_delete);

async fn update_as_create_and_if_match(app: TestApp) {
    let mut p = with(patient("Curie"), "id", json!("pat-1"));
    let r = app.put("Patient/pat-1", &p).await;
    assert_eq!(r.status, 201, "update-as-create: {}", r.text);
    assert_eq!(
        r.header("location"),
        Some(app.url("Patient/pat-1/_history/1").as_str())
    );

    // Version-aware update: a stale If-Match is refused with 412, the right one succeeds.
    p["gender"] = json!("other");
    let stale = app
        .send(
            app.client
                .put(app.url("Patient/pat-1"))
                .header("content-type", "application/fhir+json")
                .header("if-match", "W/\"7\"")
                .body(p.to_string()),
        )
        .await;
    assert_eq!(stale.status, 412, "{}", stale.text);
    let ok = app
        .send(
            app.client
                .put(app.url("Patient/pat-1"))
                .header("content-type", "application/fhir+json")
                .header("if-match", "W/\"1\"")
                .body(p.to_string()),
        )
        .await;
    assert_eq!(ok.status, 200, "{}", ok.text);
    assert_eq!(ok.json()["meta"]["versionId"], "2");

    // Conditional read.
    let r = app
        .send(
            app.client
                .get(app.url("Patient/pat-1"))
                .header("if-none-match", "W/\"2\""),
        )
        .await;
    assert_eq!(r.status, 304);
}
both!(update_as_create_and_if_match);

async fn conditional_create_update_delete(app: TestApp) {
    let body = patient("Noether");
    let cond = |b: &serde_json::Value| {
        app.client
            .post(app.url("Patient"))
            .header("content-type", "application/fhir+json")
            .header("if-none-exist", "identifier=urn:vb:test|Noether")
            .body(b.to_string())
    };
    let first = app.send(cond(&body)).await;
    assert_eq!(first.status, 201, "{}", first.text);
    let id = first.json()["id"].as_str().expect("id").to_owned();
    // Same criteria: 200 with the existing resource, nothing new created.
    let second = app.send(cond(&body)).await;
    assert_eq!(second.status, 200, "{}", second.text);
    assert_eq!(second.json()["id"], id.as_str());
    // Several matches: 412.
    app.create(&patient("Noether")).await;
    assert_eq!(app.send(cond(&body)).await.status, 412);
    // Unknown criteria are refused rather than ignored (ignoring would match everything).
    let r = app
        .send(
            app.client
                .post(app.url("Patient"))
                .header("if-none-exist", "no-such-param=Noether")
                .body(body.to_string()),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text);

    // Conditional update: no match creates, one match updates, several → 412.
    let mut g = patient("Germain");
    let r = app.put("Patient?identifier=urn:vb:test|Germain", &g).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let gid = r.json()["id"].as_str().expect("id").to_owned();
    g["gender"] = json!("unknown");
    let r = app.put("Patient?identifier=urn:vb:test|Germain", &g).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["id"], gid.as_str());
    assert_eq!(r.json()["meta"]["versionId"], "2");
    assert_eq!(
        app.put("Patient?identifier=urn:vb:test|Noether", &g)
            .await
            .status,
        412
    );

    // Conditional delete.
    assert_eq!(
        app.delete("Patient?identifier=urn:vb:test|Noether")
            .await
            .status,
        412
    );
    let r = app.delete("Patient?identifier=urn:vb:test|Germain").await;
    assert_eq!(r.status, 204, "{}", r.text);
    assert_eq!(app.get(&format!("Patient/{gid}")).await.status, 410);
    assert_eq!(
        app.delete("Patient?identifier=urn:vb:test|nobody")
            .await
            .status,
        204
    );
    // _id works as criteria too.
    let r = app.delete(&format!("Patient?_id={id}")).await;
    assert_eq!(r.status, 204);
    assert_eq!(app.get(&format!("Patient/{id}")).await.status, 410);
}
both!(conditional_create_update_delete);

async fn json_patch_and_prefer(app: TestApp) {
    let pid = app.create(&patient("Hopper")).await;
    let oid = app.create(&heart_rate(&pid, 72.0)).await;
    let patch = json!([
        {"op": "replace", "path": "/valueQuantity/value", "value": 75},
        {"op": "add", "path": "/note", "value": [{"text": "after exercise"}]}
    ]);
    let req = |b: &serde_json::Value, ifm: Option<&str>| {
        let mut r = app
            .client
            .patch(app.url(&format!("Observation/{oid}")))
            .header("content-type", "application/json-patch+json")
            .body(b.to_string());
        if let Some(v) = ifm {
            r = r.header("if-match", v);
        }
        r
    };
    let r = app.send(req(&patch, Some("W/\"1\""))).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let v = r.json();
    assert_eq!(v["valueQuantity"]["value"], 75);
    assert_eq!(v["note"][0]["text"], "after exercise");
    assert_eq!(v["meta"]["versionId"], "2");
    assert_eq!(app.send(req(&patch, Some("W/\"1\""))).await.status, 412);
    // A patch that makes the resource invalid is refused (422) and changes nothing.
    let bad = json!([{"op": "replace", "path": "/status", "value": "done"}]);
    let r = app.send(req(&bad, None)).await;
    assert_eq!(r.status, 422, "{}", r.text);
    let bad = json!([{"op": "remove", "path": "/nothing-here"}]);
    assert_eq!(app.send(req(&bad, None)).await.status, 422);
    assert_eq!(
        app.get(&format!("Observation/{oid}")).await.json()["meta"]["versionId"],
        "2"
    );
    // Wrong content type.
    let r = app
        .send(
            app.client
                .patch(app.url(&format!("Observation/{oid}")))
                .header("content-type", "application/fhir+json")
                .body(patch.to_string()),
        )
        .await;
    assert_eq!(r.status, 415);

    // Prefer: return=minimal → no body; OperationOutcome → an outcome.
    let r = app
        .send(
            app.client
                .post(app.url("Observation"))
                .header("content-type", "application/fhir+json")
                .header("prefer", "return=minimal")
                .body(heart_rate(&pid, 60.0).to_string()),
        )
        .await;
    assert_eq!(r.status, 201);
    assert!(r.text.is_empty(), "{}", r.text);
    assert!(r.header("location").is_some());
    let r = app
        .send(
            app.client
                .post(app.url("Observation"))
                .header("content-type", "application/fhir+json")
                .header("prefer", "return=OperationOutcome")
                .body(heart_rate(&pid, 61.0).to_string()),
        )
        .await;
    assert_eq!(r.status, 201);
    assert_eq!(r.json()["resourceType"], "OperationOutcome");
}
both!(json_patch_and_prefer);

async fn concurrent_version_aware_updates(app: TestApp) {
    // Many clients update the same version at once: exactly one wins, the rest get 412.
    let pid = app.create(&with(patient("Race"), "id", json!("x"))).await;
    let base = app.get(&format!("Patient/{pid}")).await.json();
    let mut tasks = Vec::new();
    for i in 0..16 {
        let client = app.client.clone();
        let url = app.url(&format!("Patient/{pid}"));
        let mut body = base.clone();
        body["name"][0]["given"] = json!([format!("n{i}")]);
        tasks.push(tokio::spawn(async move {
            client
                .put(url)
                .header("content-type", "application/fhir+json")
                .header("if-match", "W/\"1\"")
                .body(body.to_string())
                .send()
                .await
                .expect("sent")
                .status()
                .as_u16()
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.expect("task"));
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 412).count(),
        15,
        "{statuses:?}"
    );
    let h = app.get(&format!("Patient/{pid}/_history")).await.json();
    assert_eq!(h["total"], 2);

    // Without If-Match every update lands, each on its own version: versions 3..=18, no gaps.
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let client = app.client.clone();
        let url = app.url(&format!("Patient/{pid}"));
        let body = base.clone();
        tasks.push(tokio::spawn(async move {
            client
                .put(url)
                .header("content-type", "application/fhir+json")
                .body(body.to_string())
                .send()
                .await
                .expect("sent")
                .status()
                .as_u16()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.expect("task"), 200);
    }
    let r = app.get(&format!("Patient/{pid}")).await.json();
    assert_eq!(r["meta"]["versionId"], "18");
    let h = app
        .get(&format!("Patient/{pid}/_history?_count=100"))
        .await
        .json();
    let mut versions: Vec<i64> = h["entry"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| {
            e["resource"]["meta"]["versionId"]
                .as_str()
                .expect("v")
                .parse()
                .expect("n")
        })
        .collect();
    versions.sort();
    assert_eq!(versions, (1..=18).collect::<Vec<_>>());
}
both!(concurrent_version_aware_updates);

async fn concurrent_update_as_create(app: TestApp) {
    // Many clients PUT the same new id at once: one creates it (201); each other one either
    // updates it after that (200) or is told of the conflict (409). Nothing fails or is lost.
    let body = with(patient("Twin"), "id", json!("same-new-id"));
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let client = app.client.clone();
        let url = app.url("Patient/same-new-id");
        let body = body.to_string();
        tasks.push(tokio::spawn(async move {
            client
                .put(url)
                .header("content-type", "application/fhir+json")
                .body(body)
                .send()
                .await
                .expect("sent")
                .status()
                .as_u16()
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.expect("task"));
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        1,
        "{statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| [200, 201, 409].contains(s)),
        "{statuses:?}"
    );
    let ok = statuses.iter().filter(|s| **s != 409).count();
    let r = app.get("Patient/same-new-id").await.json();
    assert_eq!(r["meta"]["versionId"], ok.to_string(), "{statuses:?}");
}
both!(concurrent_update_as_create);
