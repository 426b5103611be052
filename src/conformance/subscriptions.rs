//! Subscriptions with a receiver of the suite's own: an R4 criteria-based rest-hook
//! (https://hl7.org/fhir/R4/subscription.html) and a topic-based one of the Subscriptions R5
//! Backport IG for R4 (https://hl7.org/fhir/uv/subscriptions-backport/STU1.1/), each notified
//! of a matching Observation and silent once deleted.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::client::require;
use super::runner::{Check, Group, Problem, ensure, fail};
use super::{Context, patient, vital_sign};

const BACKPORT: &str = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/";

pub async fn run(cx: &Context, g: &mut Group<'_>) {
    g.check(
        "a rest-hook Subscription (R4 criteria) is notified of a matching write",
        criteria_notified(cx),
    )
    .await;
    g.check(
        "a deleted Subscription notifies no more",
        deleted_is_silent(cx),
    )
    .await;
    g.check(
        "a topic-based Subscription (Backport IG) gets an event-notification Bundle",
        topic_notified(cx),
    )
    .await;
}

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Received {
    method: String,
    path: String,
    body: String,
}

/// An HTTP server on this machine that records every request and answers 200.
struct Receiver {
    port: u16,
    got: Arc<Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver {
    /// Listens on `host` when it is an address of this machine, on every interface otherwise
    /// (a name, or an address a proxy forwards).
    async fn start(host: &str) -> Result<Receiver, Problem> {
        let ip: IpAddr = host.parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let listener = match tokio::net::TcpListener::bind(SocketAddr::new(ip, 0)).await {
            Ok(l) => l,
            Err(_) => tokio::net::TcpListener::bind("0.0.0.0:0")
                .await
                .map_err(|e| fail(format!("cannot start the notification receiver: {e}")))?,
        };
        let port = listener
            .local_addr()
            .map_err(|e| fail(format!("receiver address: {e}")))?
            .port();
        let got: Arc<Mutex<Vec<Received>>> = Arc::default();
        let record = got.clone();
        let app = axum::Router::new().fallback(
            move |method: axum::http::Method, uri: axum::http::Uri, body: axum::body::Bytes| {
                let record = record.clone();
                async move {
                    if let Ok(mut list) = record.lock() {
                        list.push(Received {
                            method: method.to_string(),
                            path: uri.path().to_owned(),
                            body: String::from_utf8_lossy(&body).into_owned(),
                        });
                    }
                    axum::http::StatusCode::OK
                }
            },
        );
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Receiver { port, got, task })
    }

    /// The URL the server is told to call.
    fn url(&self, host: &str, path: &str) -> String {
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_owned()
        };
        format!("http://{host}:{}{path}", self.port)
    }

    fn all(&self) -> Vec<Received> {
        self.got.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// The first request that satisfies `wanted`, waiting up to `timeout`.
    async fn wait(
        &self,
        timeout: Duration,
        wanted: impl Fn(&Received) -> bool,
    ) -> Option<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(r) = self.all().into_iter().find(&wanted) {
                return Some(r);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// What arrived, for a failure message.
    fn summary(&self) -> String {
        let all = self.all();
        if all.is_empty() {
            return "the receiver got nothing".into();
        }
        let list: Vec<String> = all
            .iter()
            .map(|r| format!("{} {} ({} bytes)", r.method, r.path, r.body.len()))
            .collect();
        format!("the receiver got: {}", list.join(", "))
    }
}

/// Waits until Subscription `id` is `active` (https://hl7.org/fhir/R4/subscription.html#2.46.7.2:
/// the server moves `requested` to `active` once it can deliver); fails at `error` or `off`.
async fn wait_active(cx: &Context, id: &str, rx: &Receiver) -> Check {
    let deadline = Instant::now() + cx.notification_timeout();
    loop {
        let s = cx
            .fhir
            .get(&format!("Subscription/{id}"))
            .await?
            .resource(&[200], "Subscription")?;
        match s["status"].as_str().unwrap_or_default() {
            "active" => return Ok(()),
            "error" | "off" => {
                return Err(fail(format!(
                    "Subscription/{id} went to {} instead of active: {}; {}",
                    s["status"],
                    s["error"],
                    rx.summary()
                )));
            }
            status if Instant::now() > deadline => {
                return Err(fail(format!(
                    "Subscription/{id} is still {status} after {} s; expected active; {}",
                    cx.notification_timeout().as_secs(),
                    rx.summary()
                )));
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// A Patient, a heart rate of it, created now.
fn heart_rate(patient: &str) -> Value {
    vital_sign(patient, "8867-4", "71", "/min", "2024-06-01T08:00:00Z")
}

/// An active criteria-based rest-hook Subscription on a new Patient's Observations, calling
/// `path` on `rx`: the Subscription's id and the Patient's.
async fn criteria_subscription(
    cx: &Context,
    rx: &Receiver,
    path: &str,
) -> Result<(String, String), Problem> {
    require(
        cx.caps.interaction("Subscription", "create"),
        "create on Subscription",
    )?;
    let p = cx.create_id(&patient(&cx.unique())).await?;
    let sub = json!({
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "vitalbridge conformance suite",
        "criteria": format!("Observation?subject=Patient/{p}"),
        "channel": {
            "type": "rest-hook",
            "endpoint": rx.url(&cx.args.receiver_host, path),
            "payload": "application/fhir+json"
        }
    });
    let id = cx.create_id(&sub).await?;
    wait_active(cx, &id, rx).await?;
    Ok((id, p))
}

/// A request about Observation `id` at `path`: its path or body names it (a rest-hook with a
/// payload is sent to `[endpoint]/Observation/[id]`, or carries the resource).
fn about(r: &Received, path: &str, id: &str) -> bool {
    r.path.starts_with(path)
        && (r.path.ends_with(&format!("/Observation/{id}")) || r.body.contains(id))
}

/// https://hl7.org/fhir/R4/subscription.html#2.46.7.1: rest-hook with a payload.
async fn criteria_notified(cx: &Context) -> Check {
    let rx = Receiver::start(&cx.args.receiver_host).await?;
    let path = format!("/hook/{}", cx.unique());
    let (sub, p) = criteria_subscription(cx, &rx, &path).await?;
    let obs = cx.create_id(&heart_rate(&p)).await?;
    let got = rx
        .wait(cx.notification_timeout(), |r| about(r, &path, &obs))
        .await
        .ok_or_else(|| {
            fail(format!(
                "no notification about Observation/{obs} reached {} within {} s; {}",
                rx.url(&cx.args.receiver_host, &path),
                cx.notification_timeout().as_secs(),
                rx.summary()
            ))
        })?;
    ensure!(
        got.method == "POST" || got.method == "PUT",
        "expected the notification as a POST or PUT, got {}",
        got.method
    );
    cx.fhir
        .delete(&format!("Subscription/{sub}"))
        .await?
        .expect(&[200, 202, 204])?;
    Ok(())
}

/// After `DELETE Subscription/[id]`, matching writes reach the endpoint no more.
async fn deleted_is_silent(cx: &Context) -> Check {
    require(
        cx.caps.interaction("Subscription", "delete"),
        "delete on Subscription",
    )?;
    let rx = Receiver::start(&cx.args.receiver_host).await?;
    let path = format!("/hook/{}", cx.unique());
    let (sub, p) = criteria_subscription(cx, &rx, &path).await?;
    cx.fhir
        .delete(&format!("Subscription/{sub}"))
        .await?
        .expect(&[200, 202, 204])?;
    let obs = cx.create_id(&heart_rate(&p)).await?;
    // Long enough for a delivery that would come: the other check saw one arrive.
    let quiet = Duration::from_secs(3).min(cx.notification_timeout());
    if let Some(r) = rx.wait(quiet, |r| about(r, &path, &obs)).await {
        return Err(fail(format!(
            "Observation/{obs} was notified ({} {}) after its Subscription was deleted",
            r.method, r.path
        )));
    }
    Ok(())
}

/// The parameter `name` of a notification Bundle's status (a `Parameters` in R4,
/// https://hl7.org/fhir/uv/subscriptions-backport/STU1.1/notifications.html).
fn status_param<'a>(bundle: &'a Value, name: &str) -> Option<&'a Value> {
    bundle["entry"][0]["resource"]["parameter"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == name)
}

/// https://hl7.org/fhir/uv/subscriptions-backport/STU1.1/subscriptions.html: a Subscription
/// naming a topic the CapabilityStatement lists, filtered to one patient, full-resource payload.
async fn topic_notified(cx: &Context) -> Check {
    let topics = cx.caps.resource_extensions(
        "Subscription",
        &format!("{BACKPORT}capabilitystatement-subscriptiontopic-canonical"),
    );
    if topics.is_empty() {
        return Err(Problem::Skip(
            "the CapabilityStatement lists no SubscriptionTopic canonical (Backport IG)".into(),
        ));
    }
    let topic = topics
        .iter()
        .find(|t| t.to_ascii_lowercase().contains("vital"))
        .or_else(|| {
            topics
                .iter()
                .find(|t| t.to_ascii_lowercase().contains("observation"))
        })
        .ok_or_else(|| {
            Problem::Skip(format!(
                "none of the advertised topics {topics:?} is about vital-sign Observations"
            ))
        })?;
    let rx = Receiver::start(&cx.args.receiver_host).await?;
    let path = format!("/topic/{}", cx.unique());
    let p = cx.create_id(&patient(&cx.unique())).await?;
    let sub = json!({
        "resourceType": "Subscription",
        "meta": {"profile": [format!("{BACKPORT}backport-subscription")]},
        "status": "requested",
        "reason": "vitalbridge conformance suite",
        "criteria": topic,
        "_criteria": {"extension": [{
            "url": format!("{BACKPORT}backport-filter-criteria"),
            "valueString": format!("Observation?patient=Patient/{p}")
        }]},
        "channel": {
            "type": "rest-hook",
            "endpoint": rx.url(&cx.args.receiver_host, &path),
            "payload": "application/fhir+json",
            "_payload": {"extension": [{
                "url": format!("{BACKPORT}backport-payload-content"),
                "valueCode": "full-resource"
            }]}
        }
    });
    let id = cx.create_id(&sub).await?;
    wait_active(cx, &id, &rx).await?;
    let obs = cx.create_id(&heart_rate(&p)).await?;
    let is_event = |r: &Received| {
        r.path == path
            && serde_json::from_str::<Value>(&r.body).is_ok_and(|b| {
                status_param(&b, "type").is_some_and(|t| t["valueCode"] == "event-notification")
            })
    };
    let got = rx
        .wait(cx.notification_timeout(), is_event)
        .await
        .ok_or_else(|| {
            fail(format!(
                "no event-notification reached {} within {} s after Observation/{obs}; {}",
                rx.url(&cx.args.receiver_host, &path),
                cx.notification_timeout().as_secs(),
                rx.summary()
            ))
        })?;
    let b: Value = serde_json::from_str(&got.body).map_err(|e| fail(e.to_string()))?;
    ensure!(
        b["resourceType"] == "Bundle" && b["type"] == "history",
        "expected a history Bundle, got {} of type {}",
        b["resourceType"],
        b["type"]
    );
    ensure!(
        b["entry"][0]["resource"]["resourceType"] == "Parameters",
        "expected the SubscriptionStatus Parameters first, got {}",
        b["entry"][0]["resource"]["resourceType"]
    );
    let named = status_param(&b, "topic").map(|t| t["valueCanonical"].clone());
    ensure!(
        named.as_ref().is_some_and(|t| t == topic.as_str()),
        "expected the status to name topic {topic}, got {named:?}"
    );
    let carried = b["entry"].as_array().into_iter().flatten().any(|e| {
        e["resource"]["resourceType"] == "Observation" && e["resource"]["id"] == obs.as_str()
    });
    ensure!(
        carried,
        "expected the full-resource notification to carry Observation/{obs}: {}",
        got.body.chars().take(400).collect::<String>()
    );
    cx.fhir
        .delete(&format!("Subscription/{id}"))
        .await?
        .expect(&[200, 202, 204])?;
    Ok(())
}
