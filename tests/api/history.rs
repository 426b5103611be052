//! History at instance, type and system level with _since, _at, _count and paging.

use serde_json::json;

use crate::both;
use crate::common::{TestApp, patient};

async fn history_levels_and_paging(app: TestApp) {
    let a = app.create(&patient("A")).await;
    let b = app.create(&patient("B")).await;
    let mut pa = app.get(&format!("Patient/{a}")).await.json();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    // B was written after A: at B's lastUpdated both first versions were current.
    let mid = app.get(&format!("Patient/{b}")).await.json()["meta"]["lastUpdated"]
        .as_str()
        .expect("t")
        .to_owned();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    pa["gender"] = json!("other");
    app.put(&format!("Patient/{a}"), &pa).await;
    app.delete(&format!("Patient/{b}")).await;
    app.create(&json!({"resourceType": "Organization", "name": "Clinic"}))
        .await;

    let h = app.get("Patient/_history").await.json();
    assert_eq!(h["type"], "history");
    assert_eq!(h["total"], 4);
    let h = app.get("_history").await.json();
    // Besides these, the StructureDefinitions the server installs at its start.
    let shipped = vitalbridge::fhir::profiles::PROFILES.len();
    assert_eq!(h["total"], 5 + shipped);
    // Newest first.
    assert_eq!(h["entry"][0]["resource"]["resourceType"], "Organization");

    // _since: only what changed at or after the instant (B's create, A's update, B's delete).
    let since = app
        .get(&format!("Patient/_history?_since={}", urlencode(&mid)))
        .await
        .json();
    assert_eq!(since["total"], 3, "{since}");
    // _at: the versions current at that instant: version 1 of A and of B.
    let at = app
        .get(&format!("Patient/_history?_at={}", urlencode(&mid)))
        .await
        .json();
    let mut got: Vec<String> = at["entry"]
        .as_array()
        .expect("e")
        .iter()
        .map(|e| e["fullUrl"].as_str().expect("u").to_owned())
        .collect();
    got.sort();
    assert_eq!(at["total"], 2, "{at}");
    assert!(got.iter().all(|u| u.ends_with(&a) || u.ends_with(&b)));
    let bad = app.get("Patient/_history?_since=yesterday").await;
    assert_eq!(bad.status, 400);

    // Paging with _count: the next links walk every version once, even when writes land meanwhile.
    let mut url = app.url("_history?_count=2");
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let page = app.send(app.client.get(&url)).await.json();
        pages += 1;
        for e in page["entry"].as_array().expect("entries") {
            seen.push(format!("{}@{}", e["fullUrl"], e["response"]["etag"]));
        }
        if pages == 1 {
            app.create(&patient("Late")).await;
        }
        match page["link"]
            .as_array()
            .expect("links")
            .iter()
            .find(|l| l["relation"] == "next")
        {
            Some(next) => url = next["url"].as_str().expect("url").to_owned(),
            None => break,
        }
    }
    assert_eq!(pages, (5 + shipped).div_ceil(2));
    assert_eq!(seen.len(), 5 + shipped);
    let mut dedup = seen.clone();
    dedup.sort();
    dedup.dedup();
    assert_eq!(dedup.len(), 5 + shipped, "{seen:?}");
}
both!(history_levels_and_paging);

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}
