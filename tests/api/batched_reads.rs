//! Point reads on PostgreSQL share statements under load (store::batch::read_batcher): each
//! concurrent read must still get its own resource, a missing one nothing and a deleted one its
//! delete, exactly as alone.

use futures::StreamExt;

use crate::both;
use crate::common::{TestApp, patient};
use vitalbridge::fhir::types::{ResourceId, ResourceType};
use vitalbridge::store::{ConnectOptions, Method, Store};

async fn concurrent_reads_each_get_their_own_resource(app: TestApp) {
    let mut ids = Vec::new();
    for i in 0..30 {
        ids.push(app.create(&patient(&format!("Read{i}"))).await);
    }
    let gone = ids[7].clone();
    assert_eq!(app.delete(&format!("Patient/{gone}")).await.status, 204);
    let store = Store::connect(&app.database_url, &ConnectOptions::default())
        .await
        .expect("store");
    let ty = ResourceType::parse("Patient").expect("type");
    // Every id several times in a scrambled order, with ids that were never stored among them.
    let asks: Vec<(usize, Option<String>)> = (0..300)
        .map(|k| {
            let i = (k * 7) % 31;
            (i, ids.get(i).cloned())
        })
        .collect();
    let answers: Vec<_> = futures::stream::iter(asks.clone())
        .map(|(i, id)| {
            let store = store.clone();
            async move {
                let id = id.unwrap_or_else(|| format!("never-{i}"));
                let got = store
                    .read(ty, &ResourceId::parse(&id).expect("id"))
                    .await
                    .expect("read");
                (id, got)
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    assert_eq!(answers.len(), 300);
    for (id, got) in answers {
        match got {
            None => assert!(id.starts_with("never-"), "{id} was stored"),
            Some(v) if id == gone => {
                assert_eq!(v.id, id);
                assert_eq!(v.method, Method::Delete);
                assert_eq!(v.version_id, 2);
            }
            Some(v) => {
                assert_eq!(v.id, id, "a read answered with another resource");
                assert_eq!(v.version_id, 1);
                let content: serde_json::Value =
                    serde_json::from_str(v.content.as_deref().expect("content")).expect("json");
                assert_eq!(content["id"], id.as_str());
                let family = content["name"][0]["family"].as_str().expect("family");
                let i = ids.iter().position(|x| *x == id).expect("known id");
                assert_eq!(family, format!("Read{i}"));
            }
        }
    }
    store.close().await;
}
both!(concurrent_reads_each_get_their_own_resource);

/// Over HTTP too, under load: reads racing with updates never see another resource, and a read
/// asked after an update's answer sees that update.
async fn reads_under_load_see_committed_updates(app: TestApp) {
    let mut ids = Vec::new();
    for i in 0..16 {
        ids.push(app.create(&patient(&format!("Load{i}"))).await);
    }
    let results: Vec<()> = futures::stream::iter(0..160)
        .map(|k| {
            let app = app.clone();
            let id = ids[k % 16].clone();
            async move {
                if k % 16 == 3 {
                    let mut body = patient(&format!("Load{}", k % 16));
                    body["id"] = id.clone().into();
                    body["gender"] = "female".into();
                    let r = app.put(&format!("Patient/{id}"), &body).await;
                    assert!(r.status == 200 || r.status == 201, "{}", r.text);
                    let after = app.get(&format!("Patient/{id}")).await.json();
                    assert_eq!(
                        after["gender"], "female",
                        "the read after the update sees it"
                    );
                }
                let r = app.get(&format!("Patient/{id}")).await;
                assert_eq!(r.status, 200, "{}", r.text);
                let body = r.json();
                assert_eq!(body["id"], id.as_str());
                assert_eq!(body["name"][0]["family"], format!("Load{}", k % 16));
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    assert_eq!(results.len(), 160);
}
both!(reads_under_load_see_committed_updates);
