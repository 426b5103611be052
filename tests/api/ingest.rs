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

/// A Patient of organization `org`.
async fn put_patient(app: &TestApp, id: &str, org: &str) {
    let mut p = patient(id);
    p["id"] = json!(id);
    p["managingOrganization"] = json!({"reference": format!("Organization/{org}")});
    assert_eq!(app.put(&format!("Patient/{id}"), &p).await.status, 201);
}

/// Waits past the second the devices were registered in (device time stamps are whole
/// seconds) and returns the instant readings are stamped with.
async fn after_registration() -> time::OffsetDateTime {
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .expect("ns")
}

/// Blood pressure, wire format (GATT 0x2A35): mmHg, time stamp, pulse rate.
fn bp_packet(systolic: u16, at: time::OffsetDateTime) -> String {
    use base64::Engine as _;
    let mut b = vec![0x06];
    for v in [systolic, 80, 93] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b.extend_from_slice(&(at.year() as u16).to_le_bytes());
    b.extend_from_slice(&[
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second(),
    ]);
    b.extend_from_slice(&70u16.to_le_bytes());
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .expect("format")
}

/// Registers a hub client of `org` and, when `device` names one, its Device; returns the hub's
/// token.
async fn hub_with_device(
    app: &TestApp,
    client_id: &str,
    org: &str,
    device: Option<&str>,
) -> String {
    let token = crate::common::client_token(
        app,
        &json!({"client_id": client_id, "role": "hub", "organization": org}),
    )
    .await;
    if let Some(id) = device {
        let hub = json!({"resourceType": "Device", "id": id, "status": "active",
            "identifier": [{"system": vitalbridge::ingest::pipeline::HUB_CLIENT_SYSTEM,
                            "value": client_id}],
            "type": {"text": "hub"},
            "owner": {"reference": format!("Organization/{org}")}});
        let r = app.put(&format!("Device/{id}"), &hub).await;
        assert_eq!(r.status, 201, "{}", r.text);
    }
    token
}

async fn post_batch(app: &TestApp, token: &str, body: &serde_json::Value) -> crate::common::Resp {
    app.send(
        reqwest::Client::new()
            .post(format!("{}/ingest/hub", app.origin()))
            .bearer_auth(token)
            .json(body),
    )
    .await
}

/// A hub's batch: good readings become Observations of the patient who had the cuff, each bad
/// reading is rejected with its reason and keeps none of the good ones out; the same batch
/// again creates nothing and answers with the same ids; the raw message is kept with its
/// SHA-256, which the Provenance of the new Observations names.
async fn hub_batches_are_stored_once_and_traced(app: TestApp) {
    crate::common::put_organization(&app, "c1", None).await;
    put_patient(&app, "p1", "c1").await;
    let cuff = json!({"resourceType": "Device", "id": "cuff-1", "status": "active",
        "identifier": [{"system": "http://hl7.org/fhir/sid/eui-48/bluetooth",
                        "value": "A4-C1-38-0B-2C-01"}],
        "patient": {"reference": "Patient/p1"},
        "owner": {"reference": "Organization/c1"}});
    assert_eq!(app.put("Device/cuff-1", &cuff).await.status, 201);
    let token = hub_with_device(&app, "hub-a", "c1", Some("hub-1")).await;
    // Readings measured after the cuff was assigned (whole seconds on the wire).
    let now = after_registration().await;
    let received = rfc3339(now + time::Duration::seconds(1));
    let reading = |value: &str, characteristic: &str| {
        json!({"address": "a4:c1:38:0b:2c:01", "service": "0x1810",
               "characteristic": characteristic, "value": value, "received": received})
    };
    let body = json!({"readings": [
        reading(&bp_packet(128, now), "0x2A35"),
        reading("VQ==", "0x2A19"),                                  // battery 85 %
        reading(&bp_packet(900, now), "0x2A35"),                    // not a human pressure
        reading("AQI=", "0x2AFF"),                                  // unknown characteristic
        reading("%%%", "0x2A35"),                                   // not base64
        reading(&bp_packet(120, now + time::Duration::hours(2)), "0x2A35"), // in the future
        json!({"address": "00:11:22:33:44:55", "characteristic": "0x2A35",
               "value": bp_packet(120, now), "received": received}), // unknown device
        json!({"characteristic": "0x2A35", "value": bp_packet(120, now)}), // no receive time
        reading("MS40LjIA", "0x2A26"),                              // firmware "1.4.2"
        reading("U04tMDA0Mg==", "0x2A25"),                          // serial "SN-0042"
    ]});
    let r = post_batch(&app, &token, &body).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let first = r.json();
    let statuses: Vec<&str> = first["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| r["status"].as_str().expect("status"))
        .collect();
    assert_eq!(
        statuses,
        [
            "accepted", "accepted", "rejected", "rejected", "rejected", "rejected", "rejected",
            "rejected", "accepted", "accepted"
        ],
        "{}",
        r.text
    );
    let reason = |i: usize| {
        first["results"][i]["reason"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    };
    assert!(reason(2).contains("systolic"), "{}", reason(2));
    assert!(reason(3).contains("0x2AFF"), "{}", reason(3));
    assert!(reason(4).contains("base64"), "{}", reason(4));
    assert!(
        reason(5).contains("after the reading arrived"),
        "{}",
        reason(5)
    );
    assert!(reason(6).contains("unknown device"), "{}", reason(6));
    assert!(reason(7).contains("received"), "{}", reason(7));
    let created: Vec<String> = first["results"][0]["observations"]
        .as_array()
        .expect("observations")
        .iter()
        .map(|o| o.as_str().expect("ref").to_owned())
        .collect();
    assert_eq!(created.len(), 2, "pressure and pulse: {}", r.text);

    // The pressure, for the patient who had the cuff, from the cuff.
    let bp = app.get(&created[0]).await.json();
    assert_eq!(bp["subject"]["reference"], "Patient/p1");
    assert_eq!(bp["device"]["reference"], "Device/cuff-1");
    assert_eq!(bp["component"][0]["valueQuantity"]["value"], 128);
    assert_eq!(bp["effectiveDateTime"], rfc3339(now));
    let found = app
        .get("Observation?subject=Patient/p1&_summary=count")
        .await
        .json();
    assert_eq!(found["total"], 2);

    // Traced: the Provenance names both devices and the message by its SHA-256.
    let sha = first["message"].as_str().expect("sha").to_owned();
    let prov = app
        .get(&format!("Provenance?target={}", created[0]))
        .await
        .json();
    assert_eq!(prov["entry"].as_array().map(Vec::len), Some(1), "{prov}");
    let prov = &prov["entry"][0]["resource"];
    assert_eq!(
        prov["entity"][0]["what"]["identifier"]["value"],
        sha.as_str()
    );
    let agents: Vec<&str> = prov["agent"]
        .as_array()
        .expect("agents")
        .iter()
        .map(|a| a["who"]["reference"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(agents, ["Device/cuff-1", "Device/hub-1"]);

    // The registry keeps the battery level and when the cuff and the hub were last heard of.
    let device = app.get("Device/cuff-1").await.json();
    assert_eq!(
        device["property"][0]["valueQuantity"][0]["value"], 85.0,
        "{device}"
    );
    let seen = |d: &serde_json::Value| {
        d["extension"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| e["url"] == vitalbridge::ingest::pipeline::LAST_SEEN_URL)
    };
    assert!(seen(&device), "{device}");
    // ... and what its Device Information service said (PHD IG PhdDevice).
    assert_eq!(device["serialNumber"], "SN-0042");
    assert_eq!(device["version"][0]["value"], "1.4.2", "{device}");
    assert_eq!(device["version"][0]["type"]["coding"][0]["code"], "531976");
    assert!(seen(&app.get("Device/hub-1").await.json()));

    // The same batch again (a hub retry): nothing new, the same ids.
    let again = post_batch(&app, &token, &body).await;
    assert_eq!(again.status, 200, "{}", again.text);
    let again = again.json();
    assert_eq!(again["results"][0]["status"], "duplicate");
    assert_eq!(
        again["results"][0]["observations"],
        first["results"][0]["observations"]
    );
    assert_eq!(
        again["accepted"], 3,
        "only the battery level and device information are taken again"
    );
    let found = app
        .get("Observation?subject=Patient/p1&_summary=count")
        .await
        .json();
    assert_eq!(found["total"], 2);
    let provs = app.get("Provenance?_summary=count").await.json();
    assert_eq!(provs["total"], 1);

    // Both bodies are kept with their results, for admins.
    let kept = app
        .send(
            app.client
                .get(format!("{}/ingest/messages?sha256={sha}", app.origin())),
        )
        .await;
    assert_eq!(kept.status, 200, "{}", kept.text);
    let kept = kept.json();
    let list = kept["messages"].as_array().expect("messages");
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["sender"], "hub-a");
    assert_eq!(list[0]["results"][2]["status"], "rejected");

    // A hub reads nothing through the FHIR API, and only hubs post readings.
    let r = app
        .send(
            reqwest::Client::new()
                .get(app.url("Patient/p1"))
                .bearer_auth(&token),
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.text);
    let r = app
        .send(
            app.client
                .post(format!("{}/ingest/hub", app.origin()))
                .json(&body),
        )
        .await;
    assert_eq!(r.status, 403, "an admin is not a hub: {}", r.text);
    let r = app
        .send(
            reqwest::Client::new()
                .get(format!("{}/ingest/messages", app.origin()))
                .bearer_auth(&token),
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.text);
}

both!(hub_batches_are_stored_once_and_traced);

/// Readings count only from registered, active, assigned devices of active hubs.
async fn hubs_and_devices_must_be_registered_and_active(app: TestApp) {
    crate::common::put_organization(&app, "c1", None).await;
    crate::common::put_organization(&app, "c2", None).await;
    let device = |id: &str, org: &str, status: &str, address: &str, patient: Option<&str>| {
        let mut d = json!({"resourceType": "Device", "id": id, "status": status,
            "identifier": [{"system": "http://hl7.org/fhir/sid/eui-48/bluetooth", "value": address}],
            "owner": {"reference": format!("Organization/{org}")}});
        if let Some(p) = patient {
            d["patient"] = json!({"reference": format!("Patient/{p}")});
        }
        d
    };
    put_patient(&app, "p1", "c1").await;
    for d in [
        device("off", "c1", "inactive", "00-00-00-00-00-01", Some("p1")),
        device("free", "c1", "active", "00-00-00-00-00-02", None),
        device("theirs", "c2", "active", "00-00-00-00-00-03", None),
    ] {
        let id = d["id"].as_str().expect("id").to_owned();
        assert_eq!(app.put(&format!("Device/{id}"), &d).await.status, 201);
    }
    let token = hub_with_device(&app, "hub-b", "c1", Some("hub-b")).await;
    let now = after_registration().await;
    let reading = |address: &str| {
        json!({"address": address, "characteristic": "0x2A35",
               "value": bp_packet(120, now), "received": rfc3339(now)})
    };
    let body = json!({"readings": [
        reading("00:00:00:00:00:01"), reading("00:00:00:00:00:02"), reading("00:00:00:00:00:03")
    ]});
    let r = post_batch(&app, &token, &body).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let v = r.json();
    let reason = |i: usize| v["results"][i]["reason"].as_str().unwrap_or("").to_owned();
    assert!(reason(0).contains("not active"), "{}", r.text);
    assert!(reason(1).contains("no patient"), "{}", r.text);
    assert!(
        reason(2).contains("unknown device"),
        "another clinic's: {}",
        r.text
    );
    assert_eq!(v["rejected"], 3);

    // A body that is not a batch is a clear 400 (and kept).
    let r = app
        .send(
            reqwest::Client::new()
                .post(format!("{}/ingest/hub", app.origin()))
                .bearer_auth(&token)
                .body("[1,2"),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(
        r.outcome_issues()[0]["diagnostics"]
            .as_str()
            .unwrap_or("")
            .contains("readings")
    );

    // A hub without a Device, or whose Device is inactive, is refused as a whole.
    let stray = hub_with_device(&app, "hub-stray", "c1", None).await;
    let r = post_batch(&app, &stray, &body).await;
    assert_eq!(r.status, 403, "{}", r.text);
    assert!(r.text.contains("not registered"), "{}", r.text);
    let mut hub = app.get("Device/hub-b").await.json();
    hub["status"] = json!("inactive");
    assert_eq!(app.put("Device/hub-b", &hub).await.status, 200);
    let r = post_batch(&app, &token, &body).await;
    assert_eq!(r.status, 403, "{}", r.text);
    assert!(r.text.contains("not active"), "{}", r.text);
    // Refused messages are kept too.
    let kept = app
        .send(app.client.get(format!("{}/ingest/messages", app.origin())))
        .await
        .json();
    assert_eq!(kept["messages"].as_array().map(Vec::len), Some(4), "{kept}");

    // An oversized batch: the readings past the limit are rejected, to be sent again; the
    // rest are taken.
    let hub_c = hub_with_device(&app, "hub-big", "c1", Some("hub-big")).await;
    put_patient(&app, "p2", "c1").await;
    assert_eq!(
        app.put(
            "Device/free",
            &device("free", "c1", "active", "00-00-00-00-00-02", Some("p2"))
        )
        .await
        .status,
        200
    );
    let battery = json!({"address": "00:00:00:00:00:02", "characteristic": "0x2A19",
                         "value": "VQ==", "received": rfc3339(now)});
    let limit = vitalbridge::ingest::hub::MAX_READINGS;
    let big = json!({"readings": vec![battery; limit + 2]});
    let r = post_batch(&app, &hub_c, &big).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let v = r.json();
    assert_eq!(v["accepted"], limit, "{}", &r.text[..200]);
    assert_eq!(v["rejected"], 2);
    assert!(
        v["results"][limit]["reason"]
            .as_str()
            .unwrap_or("")
            .contains("batch limit")
    );

    // A clinic registers its own hubs' credentials (and no other clients, nor another's hubs).
    let clinic =
        crate::common::client_token(&app, &json!({"role": "customer", "organization": "c1"})).await;
    let register = |body: serde_json::Value| {
        reqwest::Client::new()
            .post(format!("{}/auth/clients", app.origin()))
            .bearer_auth(&clinic)
            .json(&body)
    };
    let r = app
        .send(register(json!({"role": "hub", "organization": "c1"})))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert!(r.json()["client_secret"].is_string());
    let r = app
        .send(register(json!({"role": "hub", "organization": "c2"})))
        .await;
    assert_eq!(r.status, 403, "{}", r.text);
    let r = app
        .send(register(
            json!({"role": "customer-user", "organization": "c1"}),
        ))
        .await;
    assert_eq!(r.status, 403, "{}", r.text);
}

both!(hubs_and_devices_must_be_registered_and_active);

/// Store and forward: readings a hub sends late belong to whoever had the cuff when they were
/// measured, not to whoever has it now.
async fn late_readings_go_to_who_had_the_device(app: TestApp) {
    crate::common::put_organization(&app, "c1", None).await;
    for p in ["p1", "p2"] {
        let mut body = patient(p);
        body["id"] = json!(p);
        body["managingOrganization"] = json!({"reference": "Organization/c1"});
        assert_eq!(app.put(&format!("Patient/{p}"), &body).await.status, 201);
    }
    let cuff = |p: &str| {
        json!({"resourceType": "Device", "id": "cuff-9", "status": "active",
            "identifier": [{"system": "urn:oid:1.2.840.10004.1.1.1.0.0.1.0.0.1.2680",
                            "value": "00-1C-05-FF-FE-00-00-09"}],
            "patient": {"reference": format!("Patient/{p}")},
            "owner": {"reference": "Organization/c1"}})
    };
    assert_eq!(app.put("Device/cuff-9", &cuff("p1")).await.status, 201);
    let token = hub_with_device(&app, "hub-c", "c1", Some("hub-c")).await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let then = time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .expect("ns");
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(app.put("Device/cuff-9", &cuff("p2")).await.status, 200);
    let now = after_registration().await;
    let reading = |at| {
        json!({"systemId": "001C05FFFE000009", "characteristic": "0x2A35",
               "value": bp_packet(120, at), "received": rfc3339(now)})
    };
    let r = post_batch(
        &app,
        &token,
        &json!({"readings": [reading(then), reading(now)]}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let v = r.json();
    assert_eq!(v["accepted"], 2, "{}", r.text);
    let subject = |i: usize| {
        let o = v["results"][i]["observations"][0]
            .as_str()
            .expect("obs")
            .to_owned();
        let app = &app;
        async move { app.get(&o).await.json()["subject"]["reference"].clone() }
    };
    assert_eq!(subject(0).await, "Patient/p1");
    assert_eq!(subject(1).await, "Patient/p2");
}

both!(late_readings_go_to_who_had_the_device);

/// A gateway names a device by its System ID and by its Bluetooth address: a Device
/// registered by the address alone is found all the same.
async fn devices_are_found_by_either_identifier(app: TestApp) {
    crate::common::put_organization(&app, "c1", None).await;
    put_patient(&app, "p1", "c1").await;
    let cuff = json!({"resourceType": "Device", "id": "cuff-1", "status": "active",
        "identifier": [{"system": "http://hl7.org/fhir/sid/eui-48/bluetooth",
                        "value": "A4-C1-38-0B-2C-01"}],
        "patient": {"reference": "Patient/p1"},
        "owner": {"reference": "Organization/c1"}});
    assert_eq!(app.put("Device/cuff-1", &cuff).await.status, 201);
    let token = hub_with_device(&app, "hub-g", "c1", Some("hub-g1")).await;
    let now = after_registration().await;
    let body = json!({"readings": [
        {"systemId": "A4C138FFFE0B2C01", "address": "A4:C1:38:0B:2C:01",
         "characteristic": "0x2A35", "value": bp_packet(124, now),
         "received": rfc3339(now + time::Duration::seconds(1))},
        {"systemId": "A4C138FFFE0B2C09", "address": "A4:C1:38:0B:2C:09",
         "characteristic": "0x2A35", "value": bp_packet(124, now),
         "received": rfc3339(now + time::Duration::seconds(1))},
    ]});
    let r = post_batch(&app, &token, &body).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let results = &r.json()["results"];
    assert_eq!(results[0]["status"], "accepted", "{}", r.text);
    assert_eq!(results[0]["device"], "Device/cuff-1", "{}", r.text);
    assert_eq!(
        results[1]["status"], "rejected",
        "neither identifier is known: {}",
        r.text
    );
}
both!(devices_are_found_by_either_identifier);

/// Registers a vendor integration for `org` as the admin; returns (id, secret).
async fn integration(app: &TestApp, vendor: &str, org: &str) -> (String, String) {
    let r = app
        .send(
            app.client
                .post(format!("{}/ingest/vendors", app.origin()))
                .json(&json!({"vendor": vendor, "organization": org})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let v = r.json();
    (
        v["id"].as_str().expect("id").to_owned(),
        v["secret"].as_str().expect("secret").to_owned(),
    )
}

/// Cellular vendors' webhooks, each authenticated its own way, become the same Observations.
async fn cellular_webhooks_become_observations(app: TestApp) {
    use vitalbridge::ingest::cellular::{IMEI_SYSTEM, TENOVI_SYSTEM, hmac_hex};
    crate::common::put_organization(&app, "c1", None).await;
    crate::common::put_organization(&app, "c2", None).await;
    put_patient(&app, "p1", "c1").await;
    for (id, system, value) in [
        ("scale-1", IMEI_SYSTEM, "490154203237518"),
        ("tenovi-1", TENOVI_SYSTEM, "hwi-123"),
        ("cell-cuff", IMEI_SYSTEM, "356938035643809"),
        (
            "telli-1",
            vitalbridge::ingest::cellular::TELLI_SYSTEM,
            "f9ac99cc-6578-45e2-9612-76ca8c2a7fce",
        ),
    ] {
        let d = json!({"resourceType": "Device", "id": id, "status": "active",
            "identifier": [{"system": system, "value": value}],
            "patient": {"reference": "Patient/p1"},
            "owner": {"reference": "Organization/c1"}});
        assert_eq!(app.put(&format!("Device/{id}"), &d).await.status, 201);
    }
    let now = after_registration().await;
    let hook = |vendor: &str| format!("{}/ingest/cellular/{vendor}", app.origin());
    let http = reqwest::Client::new();

    // BodyTrace: HTTP Basic; the IMEI without its check digit; grams.
    let (id, secret) = integration(&app, "bodytrace", "c1").await;
    let body = json!({"deviceId": 49015420323751u64, "ts": now.unix_timestamp() * 1000,
        "batteryVoltage": 5522, "rssi": 91, "values": {"unit": 1, "weight": 81250, "tare": 0}})
    .to_string();
    let send = |user: &str, password: &str| {
        http.post(hook("bodytrace"))
            .basic_auth(user, Some(password))
            .header("content-type", "application/json")
            .body(body.clone())
    };
    let r = app.send(send(&id, "wrong")).await;
    assert_eq!(r.status, 401, "{}", r.text);
    let r = app.send(send(&id, &secret)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let v = r.json();
    assert_eq!(v["accepted"], 1, "{}", r.text);
    let weight = app
        .get(v["results"][0]["observations"][0].as_str().expect("obs"))
        .await
        .json();
    assert_eq!(weight["code"]["coding"][1]["code"], "29463-7");
    assert_eq!(weight["valueQuantity"]["value"], 81.25);
    assert_eq!(weight["device"]["reference"], "Device/scale-1");
    let again = app.send(send(&id, &secret)).await.json();
    assert_eq!(again["duplicate"], 1, "{again}");

    // Tenovi: the integration's key in a header; a cuff's pressure and pulse as an array.
    let (id, secret) = integration(&app, "tenovi", "c1").await;
    let stamp = now
        .format(&time::format_description::well_known::Rfc3339)
        .expect("fmt");
    let body = json!([
        {"metric": "blood_pressure", "value_1": 128, "value_2": 82, "hwi_device_id": "hwi-123",
         "timestamp": stamp, "device_name": "Tenovi BPM"},
        {"metric": "pulse", "value_1": 71, "hwi_device_id": "hwi-123", "timestamp": stamp},
        {"metric": "blood_pressure", "value_1": 128, "value_2": 82, "hwi_device_id": "hwi-999",
         "timestamp": stamp}
    ]);
    let r = app
        .send(
            http.post(hook("tenovi"))
                .header("x-vitalbridge-key", format!("{id}.{secret}"))
                .json(&body),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let v = r.json();
    assert_eq!(
        (v["accepted"].as_u64(), v["rejected"].as_u64()),
        (Some(2), Some(1)),
        "{}",
        r.text
    );
    assert!(
        v["results"][2]["reason"]
            .as_str()
            .unwrap_or("")
            .contains("unknown device")
    );
    // Tenovi resends (its webhooks retry): the pressure and the pulse, which has no time stamp
    // of its own, are both recognised.
    let again = app
        .send(
            http.post(hook("tenovi"))
                .header("x-vitalbridge-key", format!("{id}.{secret}"))
                .json(&body),
        )
        .await
        .json();
    assert_eq!(again["duplicate"], 2, "{again}");
    let r = app
        .send(
            http.post(hook("tenovi"))
                .header("x-vitalbridge-key", format!("{id}.nope"))
                .json(&body),
        )
        .await;
    assert_eq!(r.status, 401);

    // The generic format: HMAC-SHA256 of the body.
    let (id, secret) = integration(&app, "generic", "c1").await;
    let body = json!({"readings": [{"imei": "356938035643809", "type": "blood-pressure",
        "values": {"systolic": 141, "diastolic": 91, "pulse": 64}, "unit": "mm[Hg]",
        "measured": stamp}]})
    .to_string();
    let signed = |signature: String| {
        http.post(hook("generic"))
            .header("x-vitalbridge-integration", &id)
            .header("x-vitalbridge-signature", format!("sha256={signature}"))
            .body(body.clone())
    };
    let r = app
        .send(signed(hmac_hex("not the secret", body.as_bytes())))
        .await;
    assert_eq!(r.status, 401, "{}", r.text);
    let r = app.send(signed(hmac_hex(&secret, body.as_bytes()))).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let v = r.json();
    assert_eq!(v["accepted"], 1, "{}", r.text);
    let bp = app
        .get(v["results"][0]["observations"][0].as_str().expect("obs"))
        .await
        .json();
    assert_eq!(bp["component"][0]["valueQuantity"]["value"], 141);
    assert_eq!(
        bp["component"][0]["interpretation"][0]["coding"][0]["code"], "H",
        "{bp}"
    );

    // Telli Health: `x-api-key`; an irregular heartbeat becomes the status bit of the PHD IG.
    let (id, secret) = integration(&app, "telli", "c1").await;
    let body = json!({"deviceId": "f9ac99cc-6578-45e2-9612-76ca8c2a7fce",
        "readingType": "BloodPressure", "time": (now.unix_timestamp() * 1000).to_string(),
        "data": {"systolic": 132, "diastolic": 84, "pulse": 90, "arrhythmia": 1}});
    let r = app
        .send(
            http.post(hook("telli"))
                .header("x-api-key", format!("{id}.{secret}"))
                .json(&body),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let v = r.json();
    let made = v["results"][0]["observations"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(made.len(), 3, "pressure, pulse and status: {}", r.text);
    let status = app.get(made[2].as_str().expect("obs")).await.json();
    assert_eq!(
        status["component"][0]["code"]["coding"][0]["code"], "8410608.2",
        "{status}"
    );

    // An integration of one clinic's cannot carry another's devices, nor be registered by it.
    let (id, secret) = integration(&app, "bodytrace", "c2").await;
    let body = json!({"deviceId": 49015420323751u64, "ts": now.unix_timestamp() * 1000,
        "values": {"weight": 70000}})
    .to_string();
    let r = app
        .send(
            http.post(hook("bodytrace"))
                .basic_auth(&id, Some(&secret))
                .body(body),
        )
        .await
        .json();
    assert_eq!(r["rejected"], 1, "{r}");
    let clinic =
        crate::common::client_token(&app, &json!({"role": "customer", "organization": "c2"})).await;
    let r = app
        .send(
            http.post(format!("{}/ingest/vendors", app.origin()))
                .bearer_auth(&clinic)
                .json(&json!({"vendor": "tenovi", "organization": "c1"})),
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.text);
    let r = app
        .send(
            http.post(format!("{}/ingest/vendors", app.origin()))
                .bearer_auth(&clinic)
                .json(&json!({"vendor": "tenovi", "organization": "c2"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
}

both!(cellular_webhooks_become_observations);

/// The device-data profiles are served, and `$validate` checks resources against them.
async fn profiles_are_served_and_validate(app: TestApp) {
    let sd = app.get("StructureDefinition/vb-blood-pressure").await;
    assert_eq!(sd.status, 200, "{}", sd.text);
    let url = "https://vitalbridge.dev/fhir/StructureDefinition/vb-blood-pressure";
    assert_eq!(sd.json()["url"], url);
    let found = app
        .get(&format!("StructureDefinition?url={url}"))
        .await
        .json();
    assert_eq!(found["total"], 1, "{found}");

    let weight = json!({
        "resourceType": "Observation",
        "meta": {"profile": ["https://vitalbridge.dev/fhir/StructureDefinition/vb-body-weight"]},
        "status": "final",
        "category": [{"coding": [{"system": "http://hl7.org/fhir/uv/phd/CodeSystem/PhdObservationCategories", "code": "phd"}]}],
        "code": {"coding": [
            {"system": "urn:iso:std:iso:11073:10101", "code": "188736"},
            {"system": "http://loinc.org", "code": "29463-7"}]},
        "subject": {"reference": "Patient/p1"},
        "device": {"reference": "Device/d1"},
        "effectiveDateTime": "2026-12-01T10:00:00Z",
        "valueQuantity": {"value": 81.2, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"}
    });
    let validate = |body: serde_json::Value, query: &str| {
        let app = &app;
        let path = format!("Observation/$validate{query}");
        async move { app.post(&path, &body).await }
    };
    let ok = validate(weight.clone(), "").await;
    assert_eq!(ok.status, 200, "{}", ok.text);
    let issues = ok.outcome_issues();
    assert_eq!(issues.len(), 1, "{}", ok.text);
    assert_eq!(issues[0]["severity"], "information");

    let mut grams = weight.clone();
    grams["valueQuantity"]["code"] = json!("g");
    grams.as_object_mut().expect("obj").remove("device");
    let bad = validate(grams.clone(), "").await;
    assert_eq!(bad.status, 200, "{}", bad.text);
    let text = bad.text.clone();
    assert!(
        text.contains("vb-bw-1") && text.contains("Observation.device"),
        "{text}"
    );

    // Against a profile named in the request, in the Parameters form too.
    let params = json!({"resourceType": "Parameters", "parameter": [
        {"name": "resource", "resource": weight},
        {"name": "profile", "valueUri": url}]});
    let other = validate(params, "").await;
    assert!(
        other.text.contains("vb-bp-1"),
        "a weight is no blood pressure: {}",
        other.text
    );
    let unknown = validate(grams, "?profile=https://example.org/nope").await;
    assert!(unknown.text.contains("not known"), "{}", unknown.text);
    // A structurally broken resource reports its structural problems.
    let broken = validate(
        json!({"resourceType": "Observation", "status": "bogus"}),
        "",
    )
    .await;
    assert_eq!(broken.status, 200);
    assert!(
        broken
            .outcome_issues()
            .iter()
            .any(|i| i["severity"] == "error"),
        "{}",
        broken.text
    );
    // Nothing was stored.
    let none = app.get("Observation?_summary=count").await.json();
    assert_eq!(none["total"], 0);

    // A PHD gateway's transaction Bundle: its Observations are held to the same rules.
    let mut phd = weight.clone();
    phd["meta"]["profile"] =
        json!(["http://hl7.org/fhir/uv/phd/StructureDefinition/PhdNumericObservation"]);
    // Another gateway's categories are its own business.
    phd.as_object_mut().expect("obj").remove("category");
    let bundle = |o: serde_json::Value| {
        json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"fullUrl": "urn:uuid:5f1b7a5e-0000-4000-8000-000000000001", "resource": o,
             "request": {"method": "POST", "url": "Observation"}}]})
    };
    let mut no_device = phd.clone();
    no_device.as_object_mut().expect("obj").remove("device");
    let r = app.post("", &bundle(no_device)).await;
    assert_eq!(r.status, 422, "{}", r.text);
    assert!(r.text.contains("Observation.device"), "{}", r.text);
    let r = app.post("", &bundle(phd)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    // And a write claiming one of this server's profiles must meet it.
    let mut grams = weight.clone();
    grams["valueQuantity"]["code"] = json!("g");
    let r = app.post("Observation", &grams).await;
    assert_eq!(r.status, 422, "{}", r.text);
    assert!(r.text.contains("vb-bw-1"), "{}", r.text);
}

both!(profiles_are_served_and_validate);

/// A patient's own alert thresholds (a Patient extension) grade their readings; others keep
/// the defaults.
async fn patient_thresholds_grade_readings(app: TestApp) {
    use vitalbridge::ingest::rules::THRESHOLDS_URL;
    crate::common::put_organization(&app, "c1", None).await;
    for (p, own) in [("strict", true), ("plain", false)] {
        let mut body = patient(p);
        body["id"] = json!(p);
        body["managingOrganization"] = json!({"reference": "Organization/c1"});
        if own {
            body["extension"] = json!([{"url": THRESHOLDS_URL, "extension": [
                {"url": "code", "valueCode": "8480-6"},
                {"url": "high", "valueDecimal": 125}]}]);
        }
        assert_eq!(app.put(&format!("Patient/{p}"), &body).await.status, 201);
        let d = json!({"resourceType": "Device", "id": format!("cuff-{p}"), "status": "active",
            "identifier": [{"system": "http://hl7.org/fhir/sid/eui-48/bluetooth",
                            "value": if own { "00-00-00-00-0A-01" } else { "00-00-00-00-0A-02" }}],
            "patient": {"reference": format!("Patient/{p}")},
            "owner": {"reference": "Organization/c1"}});
        assert_eq!(app.put(&format!("Device/cuff-{p}"), &d).await.status, 201);
    }
    let token = hub_with_device(&app, "hub-t", "c1", Some("hub-t")).await;
    let now = after_registration().await;
    let reading = |address: &str| {
        json!({"address": address, "characteristic": "0x2A35",
               "value": bp_packet(130, now), "received": rfc3339(now)})
    };
    let r = post_batch(
        &app,
        &token,
        &json!({"readings": [reading("00:00:00:00:0A:01"), reading("00:00:00:00:0A:02")]}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let v = r.json();
    assert_eq!(v["accepted"], 2, "{}", r.text);
    let systolic = |i: usize| {
        let o = v["results"][i]["observations"][0]
            .as_str()
            .expect("obs")
            .to_owned();
        let app = &app;
        async move { app.get(&o).await.json()["component"][0]["interpretation"].clone() }
    };
    assert_eq!(systolic(0).await[0]["coding"][0]["code"], "H");
    assert_eq!(
        systolic(1).await,
        serde_json::Value::Null,
        "130 is within the defaults"
    );
    // One Provenance for the message, naming both cuffs and the hub.
    let first = v["results"][0]["observations"][0].as_str().expect("obs");
    let prov = app.get(&format!("Provenance?target={first}")).await.json();
    let prov = &prov["entry"][0]["resource"];
    let agents: Vec<&str> = prov["agent"]
        .as_array()
        .expect("agents")
        .iter()
        .filter_map(|a| a["who"]["reference"].as_str())
        .collect();
    assert_eq!(
        agents,
        ["Device/cuff-plain", "Device/cuff-strict", "Device/hub-t"]
    );
    assert_eq!(prov["target"].as_array().map(Vec::len), Some(4), "{prov}");
}

both!(patient_thresholds_grade_readings);

/// A Withings-style "new data" notification: the server fetches the announced measures from
/// the vendor's measure API (a real HTTP server here) with the integration's token.
async fn withings_notifications_fetch_the_measures(app: TestApp) {
    use vitalbridge::ingest::cellular::WITHINGS_SYSTEM;
    crate::common::put_organization(&app, "c1", None).await;
    put_patient(&app, "p1", "c1").await;
    let d = json!({"resourceType": "Device", "id": "wd-1", "status": "active",
        "identifier": [{"system": WITHINGS_SYSTEM, "value": "wd-1"}],
        "patient": {"reference": "Patient/p1"},
        "owner": {"reference": "Organization/c1"}});
    assert_eq!(app.put("Device/wd-1", &d).await.status, 201);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();

    // The vendor's measure API.
    let asked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let seen = asked.clone();
    let api = axum::Router::new().route(
        "/measure",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
            let seen = seen.clone();
            async move {
                if headers.get("authorization").and_then(|v| v.to_str().ok())
                    != Some("Bearer vendor-token")
                {
                    return (axum::http::StatusCode::UNAUTHORIZED, "no").into_response();
                }
                seen.lock().expect("lock").push(body);
                axum::Json(json!({"status": 0, "body": {"measuregrps": [
                    {"grpid": 1, "date": now, "deviceid": "wd-1", "measures": [
                        {"value": 135, "type": 10, "unit": 0},
                        {"value": 85, "type": 9, "unit": 0},
                        {"value": 66, "type": 11, "unit": 0}]},
                    {"grpid": 2, "date": now, "deviceid": "wd-1", "measures": [
                        {"value": 72500, "type": 1, "unit": -3}]}]}}))
                .into_response()
            }
        }),
    );
    use axum::response::IntoResponse as _;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move { axum::serve(listener, api).await });

    let r = app
        .send(
            app.client
                .post(format!("{}/ingest/vendors", app.origin()))
                .json(&json!({"vendor": "withings", "organization": "c1",
                    "api_url": format!("http://127.0.0.1:{port}/measure"),
                    "api_token": "vendor-token"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let v = r.json();
    let key = format!(
        "{}.{}",
        v["id"].as_str().expect("id"),
        v["secret"].as_str().expect("s")
    );
    let notify = |key: &str| {
        reqwest::Client::new()
            .post(format!(
                "{}/ingest/cellular/withings?key={}",
                app.origin(),
                url::form_urlencoded::byte_serialize(key.as_bytes()).collect::<String>()
            ))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!(
                "userid=77&startdate={}&enddate={}&appli=4",
                now - 60,
                now + 60
            ))
    };
    let r = app.send(notify("nobody.nothing")).await;
    assert_eq!(r.status, 401, "{}", r.text);
    let r = app.send(notify(&key)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let v = r.json();
    assert_eq!(v["accepted"], 2, "{}", r.text);
    assert!(asked.lock().expect("lock")[0].contains("userid=77"));
    let weight = app
        .get(v["results"][1]["observations"][0].as_str().expect("obs"))
        .await
        .json();
    assert_eq!(weight["valueQuantity"]["value"].to_string(), "72.500");
    let bp = app
        .get(v["results"][0]["observations"][0].as_str().expect("obs"))
        .await
        .json();
    assert_eq!(bp["component"][0]["valueQuantity"]["value"], 135);
    // The same notification again fetches the same measures: nothing new.
    let again = app.send(notify(&key)).await.json();
    assert_eq!(again["duplicate"], 2, "{again}");
}

both!(withings_notifications_fetch_the_measures);
