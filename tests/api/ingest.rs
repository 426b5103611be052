//! Device readings (issue 5): what the registry answers from the store, on both backends.

use serde_json::json;
use vitalbridge::fhir::types::ResourceId;
use vitalbridge::ingest::registry::patient_at;
use vitalbridge::store::{ConnectOptions, Store};

use crate::both;
use crate::common::{TestApp, patient};

/// A reading belongs to the patient who had the device when it was measured: the Device's
/// history answers for any past instant, and an unassigned or not-yet-registered device names
/// nobody.
async fn devices_remember_who_had_them(app: TestApp) {
    crate::common::put_organization(&app, "c1", None).await;
    for p in ["p1", "p2"] {
        let mut body = patient(p);
        body["id"] = json!(p);
        body["managingOrganization"] = json!({"reference": "Organization/c1"});
        assert_eq!(app.put(&format!("Patient/{p}"), &body).await.status, 201);
    }
    let device = |assigned: Option<&str>| {
        let mut d = json!({"resourceType": "Device", "id": "cuff-1", "status": "active",
            "owner": {"reference": "Organization/c1"}});
        if let Some(p) = assigned {
            d["patient"] = json!({"reference": format!("Patient/{p}")});
        }
        d
    };
    let pause = || tokio::time::sleep(std::time::Duration::from_millis(20));
    let before = vitalbridge::store::now_micros();
    pause().await;
    let mut at = Vec::new();
    for assigned in [Some("p1"), Some("p2"), None] {
        let r = app.put("Device/cuff-1", &device(assigned)).await;
        assert!(r.status == 200 || r.status == 201, "{}", r.text);
        pause().await;
        at.push(vitalbridge::store::now_micros());
        pause().await;
    }
    let store = Store::connect(&app.database_url, &ConnectOptions { max_connections: 2 })
        .await
        .expect("store");
    let id = ResourceId::parse("cuff-1").expect("id");
    let who = |t| {
        let store = &store;
        let id = &id;
        async move { patient_at(store, id, t).await.expect("history") }
    };
    assert_eq!(who(before).await, None, "not registered yet");
    assert_eq!(who(at[0]).await.as_deref(), Some("p1"));
    assert_eq!(who(at[1]).await.as_deref(), Some("p2"));
    assert_eq!(who(at[2]).await, None, "unassigned");
    store.close().await;
}

both!(devices_remember_who_had_them);
