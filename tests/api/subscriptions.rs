//! R4 criteria-based Subscriptions end to end (issue 6): a real HTTP receiver records what the
//! server sends after commit; failures are injected by the receiver (errors, slowness, its
//! port closed) and by killing the server process.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::both;
use crate::common::{Backend, TestApp, heart_rate, patient, spawn_with};
use crate::receiver::{Behaviour, Received, Receiver};

const WAIT: Duration = Duration::from_secs(15);

/// An app whose deliveries retry quickly, for at most `retry_for`.
async fn app(backend: Backend, retry_for: Duration) -> TestApp {
    spawn_with(backend, |s| quick(s, retry_for)).await
}

/// Deliveries retry quickly, for a minute.
pub(crate) fn fast(s: &mut vitalbridge::config::Settings) {
    quick(s, MINUTE)
}

fn quick(s: &mut vitalbridge::config::Settings, retry_for: Duration) {
    s.subscriptions.retry_for = retry_for;
    s.subscriptions.backoff = Duration::from_millis(50);
    s.subscriptions.max_backoff = Duration::from_millis(400);
    s.subscriptions.timeout = Duration::from_secs(3);
}

const MINUTE: Duration = Duration::from_secs(60);

fn rest_hook(criteria: &str, endpoint: &str) -> Value {
    json!({
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "vital signs to the clinic's EHR",
        "criteria": criteria,
        "channel": {"type": "rest-hook", "endpoint": endpoint}
    })
}

/// Creates `sub` and waits until the server has made it active; returns its id.
async fn subscribe(app: &TestApp, sub: &Value) -> String {
    let r = app.post("Subscription", sub).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(
        r.json()["status"],
        "requested",
        "the client's status is kept at first"
    );
    let id = r.json()["id"].as_str().expect("id").to_owned();
    wait_status(app, &id, "active").await;
    id
}

/// Waits until Subscription `id` has `status`; returns it.
pub(crate) async fn wait_status(app: &TestApp, id: &str, status: &str) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let s = app.get(&format!("Subscription/{id}")).await.json();
        if s["status"] == status {
            return s;
        }
        assert!(Instant::now() < deadline, "never {status}: {s}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn body_weight(patient_id: &str) -> Value {
    let mut o = heart_rate(patient_id, 72.0);
    o["code"] = json!({"coding": [{"system": "http://loinc.org", "code": "29463-7"}]});
    o["valueQuantity"] =
        json!({"value": 72.0, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"});
    o
}

fn events(got: &[Received]) -> Vec<i64> {
    got.iter().map(Received::event_number).collect()
}

/// Every matching write arrives once, in order, as a POST with an empty body carrying the
/// channel's headers exactly as given (split at the first colon only); other writes do not.
async fn matching_writes_arrive_in_order_with_the_headers_as_given(app: TestApp) {
    let hook = Receiver::start().await;
    let mut sub = rest_hook(
        "Observation?code=http://loinc.org|8867-4",
        &hook.url("/hook"),
    );
    sub["channel"]["header"] = json!(["Authorization: Bearer abc:def", "X-Clinic: a:b:c"]);
    let sub_id = subscribe(&app, &sub).await;
    let p = app.create(&patient("Hook")).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(app.create(&heart_rate(&p, 60.0 + f64::from(i))).await);
        app.create(&body_weight(&p)).await;
    }
    let got = hook.wait_for(3, WAIT).await;
    // Nothing else comes: the weights do not match.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got_all = hook.all();
    assert_eq!(got_all.len(), 3, "{:?}", events(&got_all));
    assert_eq!(events(&got), [1, 2, 3]);
    for r in &got {
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/hook");
        assert!(r.body.is_empty());
        assert_eq!(r.header("authorization"), Some("Bearer abc:def"));
        assert_eq!(r.header("x-clinic"), Some("a:b:c"));
        assert_eq!(
            r.header("x-vitalbridge-subscription"),
            Some(sub_id.as_str())
        );
    }
}
both!(
    matching_writes_arrive_in_order_with_the_headers_as_given,
    super::fast
);

/// Without an operator's allowance, an endpoint in a private network is never called, whether
/// the endpoint names the address or a host that resolves to it: the subscription goes to
/// `error` at once, naming the address and what to configure. A topic-based one fails its
/// handshake the same way.
async fn an_endpoint_in_a_private_network_is_refused(app: TestApp) {
    let hook = Receiver::start().await;
    let literal = hook.url("/hook");
    let named = literal.replace("127.0.0.1", "localhost");
    let mut ids = Vec::new();
    for endpoint in [&literal, &named] {
        ids.push(subscribe(&app, &rest_hook("Observation?code=8867-4", endpoint)).await);
    }
    let mut topic = rest_hook(
        "https://vitalbridge.dev/fhir/SubscriptionTopic/device-status",
        &literal,
    );
    topic["channel"]["payload"] = json!("application/fhir+json");
    let topic_id = app.create(&topic).await;
    let p = app.create(&patient("Private")).await;
    app.create(&heart_rate(&p, 70.0)).await;
    for id in ids.iter().chain([&topic_id]) {
        let s = wait_status(&app, id, "error").await;
        let why = s["error"].as_str().unwrap_or_default();
        assert!(
            why.contains("VB_SUBSCRIPTION_ALLOW_NETWORKS") && why.contains("not a public"),
            "{s}"
        );
    }
    let s = wait_status(&app, &ids[0], "error").await;
    assert!(
        s["error"].as_str().is_some_and(|e| e.contains("127.0.0.1")),
        "{s}"
    );
    assert!(
        hook.all().is_empty(),
        "nothing reaches the private endpoint"
    );
}
both!(
    an_endpoint_in_a_private_network_is_refused,
    super::public_only
);

/// [`fast`], with the default egress rule: public addresses only.
fn public_only(s: &mut vitalbridge::config::Settings) {
    fast(s);
    s.subscriptions.egress = vitalbridge::subscriptions::egress::Egress::public();
}

/// With a payload, each version is PUT at `{endpoint}/{type}/{id}` in the requested format; a
/// delete is a DELETE there.
async fn a_payload_is_put_at_the_resource_and_a_delete_deleted(app: TestApp) {
    let json_hook = Receiver::start().await;
    let xml_hook = Receiver::start().await;
    let mut sub = rest_hook("Observation?code=8867-4", &json_hook.url("/fhir/"));
    sub["channel"]["payload"] = json!("application/fhir+json");
    subscribe(&app, &sub).await;
    let mut sub = rest_hook("Observation?code=8867-4", &xml_hook.url("/r4"));
    sub["channel"]["payload"] = json!("application/fhir+xml;charset=utf-8");
    subscribe(&app, &sub).await;
    let p = app.create(&patient("Payload")).await;
    let id = app.create(&heart_rate(&p, 61.0)).await;
    let mut updated = heart_rate(&p, 62.0);
    updated["id"] = json!(id);
    let r = app.put(&format!("Observation/{id}"), &updated).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = app.delete(&format!("Observation/{id}")).await;
    assert_eq!(r.status, 204, "{}", r.text);
    let got = json_hook.wait_for(3, WAIT).await;
    assert_eq!(
        got.iter()
            .map(|r| (r.method.as_str(), r.path.clone()))
            .collect::<Vec<_>>(),
        [
            ("PUT", format!("/fhir/Observation/{id}")),
            ("PUT", format!("/fhir/Observation/{id}")),
            ("DELETE", format!("/fhir/Observation/{id}")),
        ]
    );
    for (r, (version, value)) in got.iter().zip([("1", 61.0), ("2", 62.0)]) {
        assert_eq!(r.header("content-type"), Some("application/fhir+json"));
        let body: Value = serde_json::from_slice(&r.body).expect("json body");
        assert_eq!(body["id"], id.as_str());
        assert_eq!(body["meta"]["versionId"], version);
        assert_eq!(body["valueQuantity"]["value"].as_f64(), Some(value));
    }
    assert!(got[2].body.is_empty());
    let got = xml_hook.wait_for(3, WAIT).await;
    assert_eq!(got[0].path, format!("/r4/Observation/{id}"));
    assert_eq!(got[0].header("content-type"), Some("application/fhir+xml"));
    let xml = got[1].text();
    assert!(
        xml.contains("<Observation xmlns=\"http://hl7.org/fhir\">")
            && xml.contains("<value value=\"62"),
        "{xml}"
    );
}
both!(
    a_payload_is_put_at_the_resource_and_a_delete_deleted,
    super::fast
);

/// What the engine could not match or deliver is refused when it is written, naming the
/// element; a new subscription cannot make itself active.
async fn subscriptions_the_server_cannot_serve_are_refused(app: TestApp) {
    let ok = rest_hook("Observation?code=8867-4", "http://127.0.0.1:9/hook");
    let cases = [
        (
            "criteria",
            json!("Observation?unknown-param=1"),
            "Subscription.criteria",
        ),
        (
            "criteria",
            json!("Observation?code=1&_sort=date"),
            "Subscription.criteria",
        ),
        ("status", json!("active"), "Subscription.status"),
        (
            "channel",
            json!({"type": "websocket"}),
            "Subscription.channel.type",
        ),
        (
            "channel",
            json!({"type": "rest-hook", "endpoint": "http://x/", "header": ["nocolon"]}),
            "Subscription.channel.header[0]",
        ),
    ];
    for (key, value, expression) in cases {
        let mut s = ok.clone();
        s[key] = value;
        let r = app.post("Subscription", &s).await;
        assert_eq!(r.status, 422, "{key}: {}", r.text);
        let issues = r.outcome_issues();
        assert_eq!(issues[0]["expression"][0], expression, "{}", r.text);
    }
    // A PUT that creates one is a create too: no making itself active.
    let mut put = ok.clone();
    put["id"] = json!("made-active");
    put["status"] = json!("active");
    let r = app.put("Subscription/made-active", &put).await;
    assert_eq!(r.status, 422, "{}", r.text);
    // `off` is a client's to choose, and stays off.
    let mut off = ok.clone();
    off["status"] = json!("off");
    let r = app.post("Subscription", &off).await;
    assert_eq!(r.status, 201, "{}", r.text);
}
both!(
    subscriptions_the_server_cannot_serve_are_refused,
    super::fast
);

/// 500s are retried with back-off; a later notification never overtakes an earlier one.
async fn failures_are_retried_and_order_is_kept(app: TestApp) {
    let hook = Receiver::start().await;
    subscribe(
        &app,
        &rest_hook("Observation?code=8867-4", &hook.url("/hook")),
    )
    .await;
    hook.behave(Behaviour {
        status: 500,
        failures_left: Some(4),
        ..Default::default()
    });
    let p = app.create(&patient("Retry")).await;
    for i in 0..3 {
        app.create(&heart_rate(&p, 70.0 + f64::from(i))).await;
    }
    let got = hook.wait_for(3, WAIT).await;
    assert_eq!(events(&got), [1, 2, 3]);
    let tried = events(&hook.all());
    assert!(tried.len() >= 7, "4 failures and 3 deliveries: {tried:?}");
    assert!(
        tried.windows(2).all(|w| w[0] <= w[1]),
        "attempts in event order: {tried:?}"
    );
    // The failures were retries of the first event, spaced by the back-off.
    let all = hook.all();
    assert!(all[..5].iter().all(|r| r.event_number() == 1), "{tried:?}");
    assert!(all[4].at.duration_since(all[0].at) >= Duration::from_millis(50 + 100 + 200) / 2);
}
both!(failures_are_retried_and_order_is_kept, super::fast);

/// An endpoint down for longer than the retry window puts the subscription in `error` with
/// the reason; what was not delivered waits, and goes out in order once the client requests
/// the subscription again.
async fn a_dead_endpoint_puts_the_subscription_in_error_until_requested_again(backend: Backend) {
    let app = app(backend, Duration::from_secs(1)).await;
    let mut hook = Receiver::start().await;
    let id = subscribe(
        &app,
        &rest_hook("Observation?code=8867-4", &hook.url("/hook")),
    )
    .await;
    hook.down();
    let p = app.create(&patient("Down")).await;
    let first = app.create(&heart_rate(&p, 80.0)).await;
    let s = wait_status(&app, &id, "error").await;
    let why = s["error"].as_str().unwrap_or_default();
    assert!(why.contains("cannot connect"), "{s}");
    hook.up().await;
    let mut again = s.clone();
    again["status"] = json!("requested");
    again.as_object_mut().expect("object").remove("error");
    let r = app.put(&format!("Subscription/{id}"), &again).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let active = wait_status(&app, &id, "active").await;
    assert!(active.get("error").is_none(), "{active}");
    app.create(&heart_rate(&p, 81.0)).await;
    let got = hook.wait_for(2, WAIT).await;
    assert_eq!(events(&got), [1, 2]);
    assert_eq!(
        hook.all().iter().filter(|r| r.event_number() == 1).count(),
        1
    );
    // Down again, in error again; this time the client sets it straight back to `active`.
    hook.down();
    app.create(&heart_rate(&p, 82.0)).await;
    let s = wait_status(&app, &id, "error").await;
    hook.up().await;
    let mut again = s.clone();
    again["status"] = json!("active");
    again.as_object_mut().expect("object").remove("error");
    let r = app.put(&format!("Subscription/{id}"), &again).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let got = hook.wait_for(3, WAIT).await;
    assert_eq!(events(&got), [1, 2, 3]);
    let _ = first;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_endpoint_puts_the_subscription_in_error_postgres() {
    a_dead_endpoint_puts_the_subscription_in_error_until_requested_again(Backend::Postgres).await
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_endpoint_puts_the_subscription_in_error_sqlite() {
    a_dead_endpoint_puts_the_subscription_in_error_until_requested_again(Backend::Sqlite).await
}

/// A subscription turns off at its `end`, and nothing is sent after.
async fn a_subscription_turns_off_at_its_end(app: TestApp) {
    let hook = Receiver::start().await;
    let end = time::OffsetDateTime::now_utc() + time::Duration::seconds(2);
    let mut sub = rest_hook("Observation?code=8867-4", &hook.url("/hook"));
    sub["end"] = json!(
        end.format(&time::format_description::well_known::Rfc3339)
            .expect("fmt")
    );
    let id = subscribe(&app, &sub).await;
    let p = app.create(&patient("End")).await;
    app.create(&heart_rate(&p, 90.0)).await;
    hook.wait_for(1, WAIT).await;
    wait_status(&app, &id, "off").await;
    app.create(&heart_rate(&p, 91.0)).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(hook.all().len(), 1);
}
both!(a_subscription_turns_off_at_its_end, super::fast);

/// A slow endpoint holds up its own subscription only: another's notification of the same
/// write arrives while the slow one is still being answered.
async fn a_slow_endpoint_does_not_hold_up_other_subscriptions(app: TestApp) {
    let slow = Receiver::start().await;
    let fast = Receiver::start().await;
    slow.behave(Behaviour {
        delay: Duration::from_secs(2),
        ..Default::default()
    });
    subscribe(
        &app,
        &rest_hook("Observation?code=8867-4", &slow.url("/slow")),
    )
    .await;
    subscribe(
        &app,
        &rest_hook("Observation?code=8867-4", &fast.url("/fast")),
    )
    .await;
    let p = app.create(&patient("Slow")).await;
    let written = Instant::now();
    app.create(&heart_rate(&p, 100.0)).await;
    app.create(&heart_rate(&p, 101.0)).await;
    let got = fast.wait_for(2, WAIT).await;
    assert!(
        slow.accepted().is_empty(),
        "the fast endpoint was not kept waiting for the slow one"
    );
    assert!(got[1].at.duration_since(written) < Duration::from_secs(2));
    let got = slow.wait_for(2, WAIT).await;
    assert_eq!(events(&got), [1, 2]);
}
both!(
    a_slow_endpoint_does_not_hold_up_other_subscriptions,
    super::fast
);

/// A clinic's subscription is told of its own patients' readings only, however wide its
/// criteria; the signing secret signs every body.
async fn a_clinics_subscription_carries_only_what_it_may_read(app: TestApp) {
    crate::common::put_organization(&app, "d1", None).await;
    crate::common::put_organization(&app, "c1", Some("d1")).await;
    crate::common::put_organization(&app, "c2", Some("d1")).await;
    let clinic =
        crate::common::client_token(&app, &json!({"role": "customer", "organization": "c1"})).await;
    let hook = Receiver::start().await;
    let mut sub = rest_hook("Observation?", &hook.url("/c1"));
    sub["channel"]["payload"] = json!("application/fhir+json");
    let secret = "c1-signing-secret-0123456789";
    sub["channel"]["extension"] = json!([{
        "url": "https://vitalbridge.dev/fhir/StructureDefinition/subscription-signing-secret",
        "valueString": secret
    }]);
    let r = app
        .send(
            reqwest::Client::new()
                .post(app.url("Subscription"))
                .bearer_auth(&clinic)
                .header("content-type", "application/fhir+json")
                .body(sub.to_string()),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let id = r.json()["id"].as_str().expect("id").to_owned();
    wait_status(&app, &id, "active").await;
    let mut ids = Vec::new();
    for org in ["c2", "c1", "c2", "c1"] {
        let mut pt = patient(org);
        pt["managingOrganization"] = json!({"reference": format!("Organization/{org}")});
        let p = app.create(&pt).await;
        let o = app.create(&heart_rate(&p, 75.0)).await;
        if org == "c1" {
            ids.push(o);
        }
    }
    let got = hook.wait_for(2, WAIT).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(hook.all().len(), 2);
    for (r, id) in got.iter().zip(&ids) {
        assert_eq!(r.path, format!("/c1/Observation/{id}"));
        let mac = vitalbridge::ingest::cellular::hmac_hex(secret, &r.body);
        assert_eq!(
            r.header("x-vitalbridge-signature"),
            Some(format!("sha256={mac}").as_str())
        );
    }
}
both!(
    a_clinics_subscription_carries_only_what_it_may_read,
    super::fast
);

/// `kill -9` of the server between commits and deliveries: after a restart every event
/// arrives, in order; the only repeats are of a delivery the crash cut short, and the
/// receiver tells them by their event number.
async fn kill_9_between_commit_and_delivery(backend: Backend) {
    use crate::process::{free_port, start_with};
    let db = crate::common::fresh_database(backend).await;
    let port = free_port();
    // A delivery cut by the kill is taken again when its lease (timeout + 5 s) ends.
    let env = [
        ("VB_SUBSCRIPTION_BACKOFF_MS", "50"),
        ("VB_SUBSCRIPTION_TIMEOUT_SECS", "2"),
    ];
    let mut server = start_with(&db, port, &env).await;
    let origin = server.base.trim_end_matches("/fhir").to_owned();
    let client = crate::common::admin_client(&origin).await;
    let app = TestApp {
        base: server.base.clone(),
        client,
        backend,
        database_url: db.clone(),
    };
    let mut hook = Receiver::start().await;
    hook.behave(Behaviour {
        delay: Duration::from_millis(30),
        ..Default::default()
    });
    subscribe(
        &app,
        &rest_hook("Observation?code=8867-4", &hook.url("/hook")),
    )
    .await;
    let p = app.create(&patient("Kill")).await;
    const N: usize = 40;
    for i in 0..N {
        app.create(&heart_rate(&p, i as f64)).await;
        if i == N / 2 {
            // The rest wait for an endpoint that is gone.
            hook.down();
        }
    }
    server.child.kill().expect("kill -9");
    server.child.wait().expect("reaped");
    let delivered_before = hook.accepted().len();
    assert!(
        delivered_before < N,
        "the kill came before the deliveries ended"
    );
    hook.up().await;
    let mut server = start_with(&db, port, &env).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let got = loop {
        let got = hook.accepted();
        let mut distinct = events(&got);
        distinct.dedup();
        if distinct.len() >= N || Instant::now() > deadline {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let _ = server.child.kill();
    let _ = server.child.wait();
    let numbers = events(&got);
    assert!(
        numbers.windows(2).all(|w| w[0] <= w[1]),
        "in order: {numbers:?}"
    );
    let mut distinct = numbers.clone();
    distinct.dedup();
    assert_eq!(
        distinct,
        (1..=N as i64).collect::<Vec<_>>(),
        "every event: {numbers:?}"
    );
    assert!(
        numbers.len() - distinct.len() <= 1,
        "repeats only of a cut delivery: {numbers:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_between_commit_and_delivery_postgres() {
    kill_9_between_commit_and_delivery(Backend::Postgres).await
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_between_commit_and_delivery_sqlite() {
    kill_9_between_commit_and_delivery(Backend::Sqlite).await
}

/// Two server processes on one PostgreSQL: writes through either, each notification
/// delivered once between them, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_deliver_each_notification_once() {
    use crate::process::{free_port, start_with};
    let db = crate::common::fresh_database(Backend::Postgres).await;
    let env = [("VB_SUBSCRIPTION_BACKOFF_MS", "50")];
    let mut servers = vec![
        start_with(&db, free_port(), &env).await,
        start_with(&db, free_port(), &env).await,
    ];
    let mut apps = Vec::new();
    for s in &servers {
        let origin = s.base.trim_end_matches("/fhir").to_owned();
        apps.push(TestApp {
            base: s.base.clone(),
            client: crate::common::admin_client(&origin).await,
            backend: Backend::Postgres,
            database_url: db.clone(),
        });
    }
    let hook = Receiver::start().await;
    subscribe(
        &apps[1],
        &rest_hook("Observation?code=8867-4", &hook.url("/hook")),
    )
    .await;
    let p = apps[0].create(&patient("Two")).await;
    const N: usize = 40;
    for i in 0..N {
        apps[i % 2].create(&heart_rate(&p, i as f64)).await;
    }
    let got = hook.wait_for(N, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for s in servers.iter_mut() {
        let _ = s.child.kill();
        let _ = s.child.wait();
    }
    assert_eq!(hook.all().len(), N, "each once");
    assert_eq!(events(&got), (1..=N as i64).collect::<Vec<_>>());
}

/// Criteria that depend on another resource (a chain) are decided by the search engine.
async fn chained_criteria_are_decided_by_search(app: TestApp) {
    let hook = Receiver::start().await;
    let mut sub = rest_hook(
        "Observation?subject:Patient.family=Zedekiah",
        &hook.url("/chain"),
    );
    sub["channel"]["payload"] = json!("application/fhir+json");
    subscribe(&app, &sub).await;
    let zed = app.create(&patient("Zedekiah")).await;
    let other = app.create(&patient("Other")).await;
    app.create(&heart_rate(&other, 50.0)).await;
    let id = app.create(&heart_rate(&zed, 51.0)).await;
    hook.wait_for(1, WAIT).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = hook.all();
    assert_eq!(got.len(), 1, "only Zedekiah's reading");
    assert_eq!(got[0].path, format!("/chain/Observation/{id}"));
}
both!(chained_criteria_are_decided_by_search, super::fast);
