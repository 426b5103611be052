//! Plain creates on PostgreSQL are written in batches (store::create_batcher): many at once must
//! each be stored, indexed and answered exactly as alone, and a create that fails inside a
//! batch must fail alone.

use futures::StreamExt;
use serde_json::json;

use crate::both;
use crate::common::{TestApp, heart_rate, patient};
use vitalbridge::fhir::types::{ResourceId, ResourceType};
use vitalbridge::store::{ConnectOptions, Method, Store, StoreError};

async fn concurrent_creates_are_each_stored_and_indexed(app: TestApp) {
    let pid = app.create(&patient("Batched")).await;
    let ids: Vec<String> = futures::stream::iter(0..120)
        .map(|i| {
            let app = app.clone();
            let pid = pid.clone();
            async move {
                let r = app
                    .post("Observation", &heart_rate(&pid, 50.0 + f64::from(i)))
                    .await;
                assert_eq!(r.status, 201, "{}", r.text);
                let body = r.json();
                assert_eq!(body["meta"]["versionId"], "1");
                assert_eq!(
                    r.header("location")
                        .map(|l| l.contains(body["id"].as_str().unwrap_or("?"))),
                    Some(true)
                );
                body["id"].as_str().expect("id").to_owned()
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 120);
    let b = app
        .get(&format!(
            "Observation?patient={pid}&code=8867-4&_total=accurate&_count=200"
        ))
        .await
        .json();
    assert_eq!(b["total"], 120, "every create is indexed");
    let found: Vec<&str> = b["entry"]
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|e| e["resource"]["id"].as_str())
        .collect();
    assert!(ids.iter().all(|id| found.contains(&id.as_str())));
    let b = app
        .get("Observation?value-quantity=gt169&_total=accurate")
        .await
        .json();
    assert_eq!(b["total"], 0);
    let b = app
        .get("Observation?value-quantity=ge169&_total=accurate")
        .await
        .json();
    assert_eq!(b["total"], 1, "each create's own values are indexed: {b}");
    let h = app.get("Observation/_history?_count=1").await.json();
    assert_eq!(h["total"], 120, "each create has its history version");
}
both!(concurrent_creates_are_each_stored_and_indexed);

/// A create whose id exists already (only the store can ask for that) fails with a version
/// conflict; the creates written together with it are stored.
async fn a_failing_create_fails_alone(app: TestApp) {
    let store = Store::connect(&app.database_url, &ConnectOptions::default())
        .await
        .expect("store");
    let ty = ResourceType::parse("Patient").expect("type");
    let taken = app.create(&patient("Taken")).await;
    let results = futures::future::join_all((0..40).map(|i| {
        let store = store.clone();
        let id = if i == 17 {
            ResourceId::parse(&taken).expect("id")
        } else {
            ResourceId::generate()
        };
        async move {
            store
                .write_one(
                    ty,
                    Some(id),
                    Some(patient(&format!("B{i}"))),
                    None,
                    Method::Post,
                )
                .await
        }
    }))
    .await;
    for (i, r) in results.iter().enumerate() {
        match (i, r) {
            (17, Err(StoreError::VersionConflict { .. })) => {}
            (17, other) => panic!("the taken id: {other:?}"),
            (_, Ok(w)) => assert!(w.created),
            (_, Err(e)) => panic!("create {i}: {e:?}"),
        }
    }
    let b = app
        .get("Patient?family=B&_total=accurate&_count=100")
        .await
        .json();
    assert_eq!(b["total"], 39, "{}", json!(b["total"]));
    assert_eq!(
        app.get(&format!("Patient/{taken}")).await.json()["name"][0]["family"],
        "Taken",
        "the existing resource is untouched"
    );
    store.close().await;
}
both!(a_failing_create_fails_alone);
