//! Topic-based subscriptions (Subscriptions R5 Backport IG STU 1.1 for R4, issue 6 item 2)
//! against a real HTTP receiver: the handshake, notification Bundles at each content level,
//! filters, the topics' triggers, heartbeats, `$status`, and the CapabilityStatement.

use std::time::Duration;

use serde_json::{Value, json};

use crate::both;
use crate::common::{TestApp, heart_rate, patient};
use crate::receiver::{Received, Receiver};
use crate::subscriptions::wait_status;

const WAIT: Duration = Duration::from_secs(15);
const TOPICS: &str = "https://vitalbridge.dev/fhir/SubscriptionTopic/";
const BP: &str = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/";

fn topic_subscription(topic: &str, filter: Option<&str>, content: &str, endpoint: &str) -> Value {
    let mut s = json!({
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "topic-based",
        "criteria": format!("{TOPICS}{topic}"),
        "channel": {
            "type": "rest-hook",
            "endpoint": endpoint,
            "payload": "application/fhir+json",
            "_payload": {"extension": [{"url": format!("{BP}backport-payload-content"), "valueCode": content}]}
        }
    });
    if let Some(f) = filter {
        s["_criteria"] = json!({"extension": [{"url": format!("{BP}backport-filter-criteria"), "valueString": f}]});
    }
    s
}

/// The status `Parameters` of a notification, and its parameter `name`'s values.
fn status_of(r: &Received) -> Value {
    let b: Value = serde_json::from_slice(&r.body).expect("a JSON Bundle");
    assert_eq!(b["resourceType"], "Bundle");
    assert_eq!(b["type"], "history");
    b
}

fn param<'a>(bundle: &'a Value, name: &str) -> Vec<&'a Value> {
    bundle["entry"][0]["resource"]["parameter"]
        .as_array()
        .expect("parameters")
        .iter()
        .filter(|p| p["name"] == name)
        .collect()
}

fn kind(b: &Value) -> &str {
    param(b, "type")[0]["valueCode"]
        .as_str()
        .unwrap_or_default()
}

/// A subscription is `requested` until its endpoint takes the handshake, then `active`; each
/// matching event then arrives as a history Bundle with the status first; other patients'
/// readings and readings that are not vital signs do not.
async fn the_handshake_comes_first_then_one_bundle_per_event(app: TestApp) {
    let hook = Receiver::start().await;
    let p = app.create(&patient("Topic")).await;
    let q = app.create(&patient("Other")).await;
    let sub = topic_subscription(
        "vital-sign-observation",
        Some(&format!("Observation?patient=Patient/{p}")),
        "full-resource",
        &hook.url("/topic"),
    );
    let r = app.post("Subscription", &sub).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.json()["status"], "requested");
    let id = r.json()["id"].as_str().expect("id").to_owned();
    wait_status(&app, &id, "active").await;
    let handshake = status_of(&hook.wait_for(1, WAIT).await[0]);
    assert_eq!(kind(&handshake), "handshake");
    assert_eq!(param(&handshake, "status")[0]["valueCode"], "requested");
    assert_eq!(
        param(&handshake, "events-since-subscription-start")[0]["valueString"],
        "0"
    );
    assert!(param(&handshake, "notification-event").is_empty());
    assert_eq!(handshake["entry"].as_array().map(Vec::len), Some(1));

    app.create(&heart_rate(&q, 70.0)).await;
    let mut lab = heart_rate(&p, 5.0);
    lab["category"][0]["coding"][0]["code"] = json!("laboratory");
    app.create(&lab).await;
    let obs = app.create(&heart_rate(&p, 71.0)).await;
    let got = hook.wait_for(2, WAIT).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(hook.all().len(), 2, "only the handshake and the one match");
    let b = status_of(&got[1]);
    assert_eq!(got[1].method, "POST");
    assert_eq!(got[1].path, "/topic");
    assert_eq!(got[1].header("content-type"), Some("application/fhir+json"));
    assert_eq!(kind(&b), "event-notification");
    assert_eq!(
        param(&b, "topic")[0]["valueCanonical"],
        format!("{TOPICS}vital-sign-observation")
    );
    assert_eq!(
        param(&b, "events-since-subscription-start")[0]["valueString"],
        "1"
    );
    let event = &param(&b, "notification-event")[0]["part"];
    assert_eq!(event[0]["valueString"], "1");
    assert!(
        event[2]["valueReference"]["reference"]
            .as_str()
            .is_some_and(|r| r.ends_with(&format!("/Observation/{obs}")))
    );
    assert_eq!(b["entry"][1]["resource"]["id"], obs.as_str());
    assert_eq!(b["entry"][1]["request"]["method"], "POST");
    assert!(
        b["entry"][0]["request"]["url"]
            .as_str()
            .is_some_and(|u| u.ends_with(&format!("/Subscription/{id}/$status")))
    );
}
both!(
    the_handshake_comes_first_then_one_bundle_per_event,
    crate::subscriptions::fast
);

/// A handshake the endpoint does not take puts the subscription in `error`, saying why.
async fn a_refused_handshake_is_an_error(app: TestApp) {
    let mut hook = Receiver::start().await;
    hook.down();
    let sub = topic_subscription("device-status", None, "id-only", &hook.url("/gone"));
    let id = app.create(&sub).await;
    let s = wait_status(&app, &id, "error").await;
    assert!(
        s["error"].as_str().is_some_and(|e| e.contains("handshake")),
        "{s}"
    );
}
both!(a_refused_handshake_is_an_error, crate::subscriptions::fast);

/// A client that moves an active subscription to another endpoint: the new endpoint has the
/// handshake before any event; the old one gets nothing more; it stays active.
async fn a_moved_endpoint_is_handshaken_first(app: TestApp) {
    let old = Receiver::start().await;
    let new = Receiver::start().await;
    let p = app.create(&patient("Moved")).await;
    let sub = topic_subscription("vital-sign-observation", None, "id-only", &old.url("/old"));
    let id = app.create(&sub).await;
    wait_status(&app, &id, "active").await;
    app.create(&heart_rate(&p, 70.0)).await;
    assert_eq!(
        old.wait_for(2, WAIT).await.len(),
        2,
        "handshake and one event"
    );
    let mut moved = app.get(&format!("Subscription/{id}")).await.json();
    moved["channel"]["endpoint"] = json!(new.url("/new"));
    let r = app.put(&format!("Subscription/{id}"), &moved).await;
    assert_eq!(r.status, 200, "{}", r.text);
    app.create(&heart_rate(&p, 71.0)).await;
    let got = new.wait_for(2, WAIT).await;
    assert_eq!(kind(&status_of(&got[0])), "handshake");
    let event = status_of(&got[1]);
    assert_eq!(kind(&event), "event-notification");
    assert_eq!(
        param(&event, "events-since-subscription-start")[0]["valueString"],
        "2"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(old.all().len(), 2, "nothing more goes to the old endpoint");
    assert_eq!(new.all().len(), 2);
    let s = app.get(&format!("Subscription/{id}")).await.json();
    assert_eq!(s["status"], "active", "{s}");
}
both!(
    a_moved_endpoint_is_handshaken_first,
    crate::subscriptions::fast
);

/// `$status` over many subscriptions pages as a search does: `_count`, then the next link,
/// until every one has been answered once.
async fn status_pages_through_every_subscription(app: TestApp) {
    let mut made = std::collections::BTreeSet::new();
    for i in 0..5 {
        let mut sub = topic_subscription(
            "device-status",
            None,
            "empty",
            &format!("https://ehr.example/{i}"),
        );
        sub["status"] = json!("off");
        made.insert(app.create(&sub).await);
    }
    let subscription_of = |e: &Value| -> String {
        e["resource"]["parameter"]
            .as_array()
            .and_then(|p| p.iter().find(|x| x["name"] == "subscription"))
            .and_then(|x| x["valueReference"]["reference"].as_str())
            .and_then(|r| r.rsplit('/').next())
            .unwrap_or_default()
            .to_owned()
    };
    let mut seen = std::collections::BTreeSet::new();
    let mut page = app.get("Subscription/$status?status=off&_count=2").await;
    let mut pages = 0;
    loop {
        assert_eq!(page.status, 200, "{}", page.text);
        let b = page.json();
        let entries = b["entry"].as_array().cloned().unwrap_or_default();
        assert!(entries.len() <= 2, "{b}");
        for e in &entries {
            assert!(seen.insert(subscription_of(e)), "answered twice: {b}");
        }
        pages += 1;
        let next = b["link"]
            .as_array()
            .and_then(|l| l.iter().find(|l| l["relation"] == "next"))
            .and_then(|l| l["url"].as_str())
            .map(str::to_owned);
        match next {
            Some(url) => page = app.send(app.client.get(&url)).await,
            None => break,
        }
        assert!(pages < 10, "paging never ends");
    }
    assert_eq!(seen, made);
    assert!(pages >= 3, "five subscriptions in pages of two");
}
both!(status_pages_through_every_subscription);

/// Device status changes, abnormal readings: each topic fires on its own trigger only; an
/// id-only notification names the resource without carrying it, an empty one names nothing.
async fn each_topic_fires_on_its_trigger(app: TestApp) {
    let devices = Receiver::start().await;
    let abnormal = Receiver::start().await;
    let d_id = app
        .create(&topic_subscription(
            "device-status",
            None,
            "id-only",
            &devices.url("/d"),
        ))
        .await;
    let a_id = app
        .create(&topic_subscription(
            "abnormal-reading",
            None,
            "empty",
            &abnormal.url("/a"),
        ))
        .await;
    wait_status(&app, &d_id, "active").await;
    wait_status(&app, &a_id, "active").await;
    let device = json!({"resourceType": "Device", "status": "active",
                        "deviceName": [{"name": "cuff", "type": "user-friendly-name"}]});
    let dev = app.create(&device).await;
    let mut same = device.clone();
    same["id"] = json!(dev);
    same["deviceName"][0]["name"] = json!("renamed cuff");
    assert_eq!(app.put(&format!("Device/{dev}"), &same).await.status, 200);
    let mut off = same.clone();
    off["status"] = json!("inactive");
    assert_eq!(app.put(&format!("Device/{dev}"), &off).await.status, 200);
    // Handshake, the create, the status change; not the rename.
    let got = devices.wait_for(3, WAIT).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(devices.all().len(), 3);
    let b = status_of(&got[2]);
    assert_eq!(
        param(&b, "events-since-subscription-start")[0]["valueString"],
        "2"
    );
    assert_eq!(
        b["entry"][1]["fullUrl"]
            .as_str()
            .map(|u| u.ends_with(&format!("/Device/{dev}"))),
        Some(true)
    );
    assert!(b["entry"][1].get("resource").is_none(), "id-only: {b}");
    assert_eq!(b["entry"][1]["request"]["method"], "PUT");

    let p = app.create(&patient("Abnormal")).await;
    let interpreted = |code: &str| {
        let mut o = heart_rate(&p, 150.0);
        o["interpretation"] = json!([{"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
            "code": code}]}]);
        o
    };
    app.create(&interpreted("N")).await;
    app.create(&interpreted("HH")).await;
    let got = abnormal.wait_for(2, WAIT).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        abnormal.all().len(),
        2,
        "the handshake and the critical reading"
    );
    let b = status_of(&got[1]);
    assert_eq!(
        b["entry"].as_array().map(Vec::len),
        Some(1),
        "empty: the status only"
    );
    assert!(param(&b, "topic").is_empty());
    let parts = param(&b, "notification-event")[0]["part"]
        .as_array()
        .expect("parts")
        .clone();
    assert!(parts.iter().all(|p| p["name"] != "focus"), "{b}");
}
both!(each_topic_fires_on_its_trigger, crate::subscriptions::fast);

/// With a heartbeat period, a quiet subscription gets heartbeats; `$status` answers for one
/// subscription and for all, with the event count.
async fn heartbeats_and_status(app: TestApp) {
    let hook = Receiver::start().await;
    let mut sub = topic_subscription("invoice-issued", None, "id-only", &hook.url("/hb"));
    sub["channel"]["extension"] =
        json!([{"url": format!("{BP}backport-heartbeat-period"), "valueUnsignedInt": 1}]);
    let id = app.create(&sub).await;
    wait_status(&app, &id, "active").await;
    let got = hook.wait_for(3, WAIT).await;
    assert_eq!(kind(&status_of(&got[0])), "handshake");
    for r in &got[1..] {
        let b = status_of(r);
        assert_eq!(kind(&b), "heartbeat");
        assert_eq!(param(&b, "status")[0]["valueCode"], "active");
        assert_eq!(
            param(&b, "events-since-subscription-start")[0]["valueString"],
            "0"
        );
    }
    let r = app.get(&format!("Subscription/{id}/$status")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let b = r.json();
    assert_eq!(b["type"], "searchset");
    assert_eq!(b["total"], 1);
    let p = &b["entry"][0]["resource"]["parameter"];
    assert!(
        p.as_array()
            .expect("params")
            .iter()
            .any(|x| x["name"] == "type" && x["valueCode"] == "query-status")
    );
    let r = app.get("Subscription/$status?status=active").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["total"], 1);
    let r = app.get("Subscription/$status?status=off").await;
    assert_eq!(r.json()["total"], 0);
    assert_eq!(app.get("Subscription/nope/$status").await.status, 404);
}
both!(heartbeats_and_status, crate::subscriptions::fast);

/// Topics this server does not offer, filters a topic does not allow and unknown content
/// levels are refused; the CapabilityStatement lists the topics.
async fn topics_are_advertised_and_others_refused(app: TestApp) {
    let endpoint = "http://127.0.0.1:9/x";
    let cases = [
        topic_subscription("no-such-topic", None, "id-only", endpoint),
        topic_subscription(
            "device-status",
            Some("Device?manufacturer=acme"),
            "id-only",
            endpoint,
        ),
        topic_subscription("device-status", None, "everything", endpoint),
    ];
    for c in &cases {
        let r = app.post("Subscription", c).await;
        assert_eq!(r.status, 422, "{c}: {}", r.text);
    }
    let cs = app.get("metadata").await.json();
    let sub = cs["rest"][0]["resource"]
        .as_array()
        .expect("resources")
        .iter()
        .find(|r| r["type"] == "Subscription")
        .expect("Subscription")
        .clone();
    let topics: Vec<&str> = sub["extension"]
        .as_array()
        .expect("topic extensions")
        .iter()
        .filter_map(|e| e["valueCanonical"].as_str())
        .collect();
    assert!(topics.contains(&"https://vitalbridge.dev/fhir/SubscriptionTopic/abnormal-reading"));
    assert_eq!(topics.len(), 4);
    let ops = sub["operation"].as_array().expect("ops");
    for op in ["status", "events"] {
        assert!(ops.iter().any(|o| o["name"] == op), "{op}");
    }
}
both!(
    topics_are_advertised_and_others_refused,
    crate::subscriptions::fast
);

/// `$events` answers the kept events in a range, as a notification Bundle at the content
/// level asked (or the subscription's own).
async fn past_events_are_answered_by_events(app: TestApp) {
    let hook = Receiver::start().await;
    let sub = topic_subscription(
        "vital-sign-observation",
        None,
        "full-resource",
        &hook.url("/e"),
    );
    let id = app.create(&sub).await;
    wait_status(&app, &id, "active").await;
    let p = app.create(&patient("Events")).await;
    let mut obs = Vec::new();
    for v in [60.0, 61.0, 62.0] {
        obs.push(app.create(&heart_rate(&p, v)).await);
    }
    hook.wait_for(4, WAIT).await;
    let r = app
        .get(&format!("Subscription/{id}/$events?eventsSinceNumber=2"))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let b = r.json();
    assert_eq!(b["type"], "history");
    assert_eq!(kind(&b), "query-event");
    assert_eq!(
        param(&b, "events-since-subscription-start")[0]["valueString"],
        "3"
    );
    let numbers: Vec<&str> = param(&b, "notification-event")
        .iter()
        .filter_map(|e| e["part"][0]["valueString"].as_str())
        .collect();
    assert_eq!(numbers, ["2", "3"]);
    let ids: Vec<&str> = b["entry"].as_array().expect("entries")[1..]
        .iter()
        .filter_map(|e| e["resource"]["id"].as_str())
        .collect();
    assert_eq!(ids, [obs[1].as_str(), obs[2].as_str()]);
    let r = app
        .get(&format!(
            "Subscription/{id}/$events?eventsSinceNumber=1&eventsUntilNumber=1&content=id-only"
        ))
        .await;
    let b = r.json();
    assert_eq!(b["entry"].as_array().map(Vec::len), Some(2));
    assert!(b["entry"][1].get("resource").is_none(), "{b}");
    assert!(
        b["entry"][1]["fullUrl"]
            .as_str()
            .is_some_and(|u| u.ends_with(&format!("/Observation/{}", obs[0])))
    );
    let r = app
        .get(&format!("Subscription/{id}/$events?eventsSinceNumber=zero"))
        .await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(app.get("Subscription/nope/$events").await.status, 404);
    // Deleted, then created again under the same id: it starts afresh, with none of the
    // old subscription's events.
    assert_eq!(app.delete(&format!("Subscription/{id}")).await.status, 204);
    let mut again = sub.clone();
    again["id"] = json!(id);
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        // The engine forgets the deleted one's events right after the delete.
        let r = app.get("Subscription/$status").await;
        if r.json()["total"] == 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = app.put(&format!("Subscription/{id}"), &again).await;
    assert!(r.status == 200 || r.status == 201, "{}", r.text);
    wait_status(&app, &id, "active").await;
    let b = app.get(&format!("Subscription/{id}/$events")).await.json();
    assert_eq!(
        param(&b, "events-since-subscription-start")[0]["valueString"],
        "0"
    );
    assert!(param(&b, "notification-event").is_empty(), "{b}");
}
both!(
    past_events_are_answered_by_events,
    crate::subscriptions::fast
);
