//! Delivery: every process takes queued notifications (`store::notify::claim`: the first
//! waiting of each subscription only, under a lease) and sends them, many at once, so a slow
//! or dead endpoint holds up its own subscription and nothing else. A failure waits with an
//! exponential, jittered back-off; a notification that has failed for [`Config::retry_for`]
//! puts its subscription in `error` with the reason, and what is queued for it waits until the
//! subscription is requested again.
//!
//! Rest-hook requests follow https://hl7.org/fhir/R4/subscription.html#2.46.7.1: without a
//! payload a POST with an empty body to the endpoint; with one a PUT of the version to
//! `{endpoint}/{type}/{id}` in the requested format, or a DELETE there for a delete. Every
//! request carries the subscription's id and the event number, so a receiver can tell a
//! repeat, and with a signing secret an HMAC-SHA256 of the body.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::Semaphore;

use super::bundle;
use super::egress;
use super::model::{self, Channel, Content, Format, Status, Subscription};
use super::{Config, Shared};
use crate::fhir::types::{ResourceId, ResourceType};
use crate::store::notify::Notification;
use crate::store::{StoreError, now_micros};

/// How often the queue is looked at when nothing wakes the deliverer (another process queued,
/// a retry fell due).
const POLL: Duration = Duration::from_millis(200);

/// Why an email subscription cannot be served.
pub const NO_RELAY: &str = "this server has no mail relay for the email channel (VB_SMTP_URL)";

/// The headers every notification carries.
pub const SUBSCRIPTION_HEADER: &str = "X-Vitalbridge-Subscription";
pub const EVENT_HEADER: &str = "X-Vitalbridge-Event-Number";
pub const SIGNATURE_HEADER: &str = "X-Vitalbridge-Signature";

pub(super) async fn run(sh: Arc<Shared>) {
    let slots = Arc::new(Semaphore::new(sh.config.workers.max(1)));
    // A taken notification is not taken again before its delivery could have timed out and
    // been recorded; after a crash it waits this long to be taken again.
    let lease = (sh.config.timeout + Duration::from_secs(5)).as_micros() as i64;
    loop {
        if sh.store.is_closed() {
            return;
        }
        let free = slots.available_permits();
        let mut full = false;
        if free > 0 {
            match sh.store.claim(now_micros(), lease, free as i64).await {
                Ok(taken) => {
                    full = taken.len() == free;
                    for n in taken {
                        let Ok(slot) = slots.clone().acquire_owned().await else {
                            return;
                        };
                        let sh = sh.clone();
                        tokio::spawn(async move {
                            deliver(&sh, n).await;
                            drop(slot);
                            // Its subscription's next notification can go now.
                            sh.queued.notify_one();
                        });
                    }
                }
                Err(e) => {
                    if !sh.store.is_closed() {
                        tracing::warn!(error = %e, "subscriptions: cannot take notifications");
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
        if !full {
            let _ = tokio::time::timeout(POLL, sh.queued.notified()).await;
        } else {
            tokio::task::yield_now().await;
        }
    }
}

/// Sends one notification and records the outcome.
async fn deliver(sh: &Shared, n: Notification) {
    if let Err(e) = try_deliver(sh, &n).await
        && !sh.store.is_closed()
    {
        // Taken again when its lease ends.
        tracing::warn!(error = %e, subscription = %n.subscription_id, "subscriptions: delivery bookkeeping failed");
    }
}

async fn try_deliver(sh: &Shared, n: &Notification) -> Result<(), StoreError> {
    let store = &sh.store;
    let sub = subscription(sh, &n.subscription_id).await?;
    let sub = match sub {
        Some(s) if s.status == Status::Active => s,
        Some(s) if s.status == Status::Requested => {
            // Not yet active again: try once it is.
            return store.postpone(n.id, now_micros() + 1_000_000).await;
        }
        Some(s) if s.status == Status::Error => return store.hold(&s.id).await,
        // Off or deleted: nothing more goes out.
        _ => return store.discard(&n.subscription_id).await.map(|_| ()),
    };
    let started = std::time::Instant::now();
    // No send outlives the lease the notification was taken under (timeout + 5 s): a
    // subscription's own timeout is capped by the server's, and so is an SMTP conversation.
    let sent = tokio::time::timeout(sh.config.timeout, send(sh, &sub, n))
        .await
        .unwrap_or_else(|_| Err("the endpoint did not answer in time".into()));
    match sent {
        Ok(()) => {
            tracing::debug!(
                subscription = %sub.id,
                event = n.event_number,
                ms = started.elapsed().as_millis() as u64,
                "notification delivered"
            );
            store.delivered(n.id).await
        }
        Err(Failure { reason, permanent }) => {
            let now = now_micros();
            let since = n.failing_since.unwrap_or(now);
            let failing_for = Duration::from_micros((now - since).max(0) as u64);
            tracing::info!(
                subscription = %sub.id,
                event = n.event_number,
                attempt = n.attempts,
                reason = %reason,
                "notification not delivered"
            );
            if failing_for >= sh.config.retry_for || permanent {
                let why = if permanent {
                    format!("notification {} not delivered: {reason}", n.event_number)
                } else {
                    format!(
                        "notification {} undelivered after {} attempts over {} s: {reason}",
                        n.event_number,
                        n.attempts,
                        failing_for.as_secs()
                    )
                };
                // The status first: only a subscription that is now in `error` has its
                // notifications held (a client's newer version decides otherwise).
                if super::engine::set_status(
                    store,
                    &sub.id,
                    sub.version_id,
                    Status::Error,
                    Some(&why),
                )
                .await?
                {
                    store
                        .retry_later(n.id, now, crate::store::notify::HELD, &reason)
                        .await?;
                    store.hold(&sub.id).await?;
                    tracing::warn!(subscription = %sub.id, "subscription in error: deliveries stopped");
                    return Ok(());
                }
            }
            let wait = backoff(&sh.config, n.attempts, rand::random::<f64>());
            store
                .retry_later(n.id, now, now + wait.as_micros() as i64, &reason)
                .await
        }
    }
}

/// The subscription as it is now.
async fn subscription(sh: &Shared, id: &str) -> Result<Option<Subscription>, StoreError> {
    let (Some(ty), Some(rid)) = (ResourceType::parse("Subscription"), ResourceId::parse(id)) else {
        return Ok(None);
    };
    let Some(content) = sh.store.read(ty, &rid).await?.and_then(|v| v.content) else {
        return Ok(None);
    };
    let value: Value = serde_json::from_str(&content)?;
    Ok(model::read(&value, &sh.config.base).ok())
}

/// The delay before attempt `attempts + 1`: the first back-off doubled per attempt, capped,
/// with "equal jitter" (half fixed, half random: `jitter` in 0..1) so that many subscriptions
/// failing together do not retry in step.
pub fn backoff(config: &Config, attempts: i32, jitter: f64) -> Duration {
    let doublings = attempts.saturating_sub(1).clamp(0, 30) as u32;
    let full = config
        .backoff
        .saturating_mul(1 << doublings)
        .min(config.max_backoff);
    full.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
}

/// One rest-hook request, as it goes out.
#[derive(Debug, PartialEq)]
pub struct Request {
    pub method: reqwest::Method,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// The endpoint and payload format of a rest-hook subscription.
fn rest_hook(sub: &Subscription) -> Result<(&url::Url, &Option<Format>), String> {
    match &sub.channel {
        Channel::RestHook {
            endpoint, payload, ..
        } => Ok((endpoint, payload)),
        Channel::Email { .. } => Err("not a rest-hook subscription".into()),
    }
}

/// The request for notification `n` of an R4 criteria-based `sub`; `resource` is the version's
/// JSON when the subscription asks for a payload.
pub fn rest_hook_request(
    sub: &Subscription,
    n: &Notification,
    resource: Option<&str>,
) -> Result<Request, String> {
    let (endpoint, payload) = rest_hook(sub)?;
    let at_resource = || {
        format!(
            "{}/{}/{}",
            endpoint.as_str().trim_end_matches('/'),
            n.res_type,
            n.res_id
        )
    };
    let (method, url, body, format) = match (payload, n.method.as_str()) {
        (None, _) => (
            reqwest::Method::POST,
            endpoint.to_string(),
            Vec::new(),
            None,
        ),
        (Some(_), "DELETE") => (reqwest::Method::DELETE, at_resource(), Vec::new(), None),
        (Some(f), _) => {
            let json = resource.ok_or("the notified version is missing")?;
            (
                reqwest::Method::PUT,
                at_resource(),
                render(*f, json)?,
                Some(*f),
            )
        }
    };
    Ok(signed(sub, Some(n.event_number), method, url, format, body))
}

/// A Backport IG notification Bundle (event, handshake or heartbeat) of `sub`, POSTed to its
/// endpoint in its payload's format (http://hl7.org/fhir/uv/subscriptions-backport/STU1.1/channels.html).
pub fn bundle_request(
    sub: &Subscription,
    event: Option<i64>,
    bundle: &Value,
) -> Result<Request, String> {
    let (endpoint, payload) = rest_hook(sub)?;
    let format = payload.unwrap_or(Format::Json);
    let body = render(format, &bundle.to_string())?;
    Ok(signed(
        sub,
        event,
        reqwest::Method::POST,
        endpoint.to_string(),
        Some(format),
        body,
    ))
}

/// The request with the channel's headers, ours, and the signature of the body.
fn signed(
    sub: &Subscription,
    event: Option<i64>,
    method: reqwest::Method,
    url: String,
    format: Option<Format>,
    body: Vec<u8>,
) -> Request {
    let mut out = match &sub.channel {
        Channel::RestHook { headers, .. } => headers.clone(),
        Channel::Email { .. } => Vec::new(),
    };
    if let Some(f) = format {
        out.push(("Content-Type".into(), f.mime().into()));
    }
    out.push((SUBSCRIPTION_HEADER.into(), sub.id.clone()));
    if let Some(n) = event {
        out.push((EVENT_HEADER.into(), n.to_string()));
    }
    if let Some(secret) = &sub.secret {
        let mac = crate::ingest::cellular::hmac_hex(secret, &body);
        out.push((SIGNATURE_HEADER.into(), format!("sha256={mac}")));
    }
    Request {
        method,
        url,
        headers: out,
        body,
    }
}

/// Why a notification was not taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub reason: String,
    /// Trying again cannot help (the endpoint's address is not allowed): the subscription
    /// goes to `error` at once.
    pub permanent: bool,
}

impl From<String> for Failure {
    fn from(reason: String) -> Failure {
        Failure {
            reason,
            permanent: false,
        }
    }
}

impl From<&str> for Failure {
    fn from(reason: &str) -> Failure {
        Failure::from(reason.to_owned())
    }
}

impl From<egress::Refused> for Failure {
    fn from(r: egress::Refused) -> Failure {
        Failure {
            reason: r.to_string(),
            permanent: true,
        }
    }
}

/// Sends `req` within the subscription's timeout; the reason when it was not taken.
pub(super) async fn execute(sh: &Shared, sub: &Subscription, req: Request) -> Result<(), Failure> {
    // An IP literal is never resolved, so the egress rule is applied to it here; a name's
    // addresses are filtered by the client's resolver (`egress::Resolver`).
    let url = url::Url::parse(&req.url).map_err(|_| "the endpoint URL is not valid")?;
    match url.host() {
        Some(url::Host::Ipv4(ip)) => sh.config.egress.check(ip.into())?,
        Some(url::Host::Ipv6(ip)) => sh.config.egress.check(ip.into())?,
        _ => {}
    }
    let mut builder = sh.http.request(req.method, url);
    if let Some(t) = sub.timeout {
        // Shorter than the server's own, never longer (the claim lease is built on it).
        builder = builder.timeout(Duration::from_secs(u64::from(t)).min(sh.config.timeout));
    }
    for (name, value) in &req.headers {
        builder = builder.header(name, value);
    }
    let response = builder.body(req.body).send().await.map_err(describe)?;
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("the endpoint answered HTTP {}", status.as_u16()).into())
    }
}

/// A version's JSON in the payload's format.
fn render(format: Format, json: &str) -> Result<Vec<u8>, String> {
    match format {
        Format::Json => Ok(json.as_bytes().to_vec()),
        Format::Xml => {
            let v: Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
            crate::fhir::xml::to_xml(&v, false)
                .map(String::into_bytes)
                .map_err(|_| "cannot write the resource as XML".to_owned())
        }
    }
}

/// Sends the notification; the reason when it was not taken.
async fn send(sh: &Shared, sub: &Subscription, n: &Notification) -> Result<(), Failure> {
    let content = sub.topic.as_ref().map(|t| t.content);
    let wants_resource = match (&sub.channel, content) {
        (_, Some(c)) => c == Content::FullResource,
        (Channel::RestHook { payload, .. } | Channel::Email { payload, .. }, None) => {
            payload.is_some()
        }
    };
    let resource = if wants_resource && n.method != "DELETE" {
        let (Some(ty), Some(id)) = (
            ResourceType::parse(&n.res_type),
            ResourceId::parse(&n.res_id),
        ) else {
            return Err("the notified resource is not valid here".into());
        };
        sh.store
            .vread(ty, &id, n.version_id)
            .await
            .map_err(|e| format!("cannot read the version: {e}"))?
            .and_then(|v| v.content)
    } else {
        None
    };
    match &sub.channel {
        Channel::RestHook { .. } => {
            let req = match &sub.topic {
                None => rest_hook_request(sub, n, resource.as_deref())?,
                Some(_) => {
                    let value = resource
                        .as_deref()
                        .map(serde_json::from_str::<Value>)
                        .transpose()
                        .map_err(|e| e.to_string())?;
                    let event = bundle::Event {
                        number: n.event_number,
                        timestamp: n.created_at,
                        res_type: &n.res_type,
                        res_id: &n.res_id,
                        method: &n.method,
                        resource: value.as_ref(),
                    };
                    let base = &sh.config.base;
                    let status = bundle::status(
                        sub,
                        base,
                        Status::Active,
                        bundle::Kind::EventNotification,
                        n.event_number,
                        std::slice::from_ref(&event),
                        None,
                    );
                    let b = bundle::notification(sub, base, status, &[event], now_micros());
                    bundle_request(sub, Some(n.event_number), &b)?
                }
            };
            execute(sh, sub, req).await
        }
        Channel::Email { to, payload } => {
            let Some(mailer) = &sh.mailer else {
                return Err(NO_RELAY.into());
            };
            let attachment = match (payload, resource.as_deref()) {
                (Some(f), Some(json)) => Some((*f, render(*f, json)?)),
                _ => None,
            };
            Ok(mailer.send(sub, to, n, attachment).await?)
        }
    }
}

/// A transport failure in a few words, without the URL (it may carry a token).
fn describe(e: reqwest::Error) -> Failure {
    if let Some(r) = egress::refusal(&e) {
        return r.clone().into();
    }
    let reason = if e.is_timeout() {
        "the endpoint did not answer in time"
    } else if e.is_connect() {
        "cannot connect to the endpoint"
    } else {
        "the request to the endpoint failed"
    };
    reason.into()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;

    fn sub(payload: Option<&str>, secret: Option<&str>) -> Subscription {
        let mut channel = json!({
            "type": "rest-hook",
            "endpoint": "http://ehr.example/hook/",
            "header": ["Authorization: Bearer t:1"]
        });
        if let Some(p) = payload {
            channel["payload"] = json!(p);
        }
        if let Some(s) = secret {
            channel["extension"] = json!([{"url": model::SECRET_EXTENSION, "valueString": s}]);
        }
        model::read(
            &json!({"resourceType": "Subscription", "id": "s1", "status": "active",
                    "reason": "r", "criteria": "Observation?code=1", "channel": channel}),
            "http://localhost/fhir",
        )
        .unwrap()
    }

    fn notification(method: &str) -> Notification {
        Notification {
            id: 1,
            subscription_id: "s1".into(),
            event_number: 7,
            res_type: "Observation".into(),
            res_id: "o1".into(),
            version_id: 2,
            method: method.into(),
            created_at: 0,
            due_at: 0,
            attempts: 1,
            last_error: None,
            failing_since: None,
        }
    }

    const OBS: &str =
        r#"{"resourceType":"Observation","id":"o1","status":"final","code":{"text":"x"}}"#;

    #[test]
    fn without_a_payload_a_post_with_an_empty_body_goes_to_the_endpoint() {
        for method in ["POST", "PUT", "DELETE"] {
            let r = rest_hook_request(&sub(None, None), &notification(method), None).unwrap();
            assert_eq!(r.method, reqwest::Method::POST);
            assert_eq!(r.url, "http://ehr.example/hook/");
            assert!(r.body.is_empty());
            assert!(
                r.headers
                    .contains(&("Authorization".into(), "Bearer t:1".into()))
            );
            assert!(r.headers.contains(&(EVENT_HEADER.into(), "7".into())));
            assert!(
                r.headers
                    .contains(&(SUBSCRIPTION_HEADER.into(), "s1".into()))
            );
        }
    }

    #[test]
    fn with_a_payload_the_version_is_put_at_its_type_and_id_and_a_delete_is_a_delete() {
        let s = sub(Some("application/fhir+json"), None);
        let r = rest_hook_request(&s, &notification("PUT"), Some(OBS)).unwrap();
        assert_eq!(r.method, reqwest::Method::PUT);
        assert_eq!(r.url, "http://ehr.example/hook/Observation/o1");
        assert_eq!(r.body, OBS.as_bytes());
        assert!(
            r.headers
                .contains(&("Content-Type".into(), "application/fhir+json".into()))
        );
        let d = rest_hook_request(&s, &notification("DELETE"), None).unwrap();
        assert_eq!(d.method, reqwest::Method::DELETE);
        assert_eq!(d.url, "http://ehr.example/hook/Observation/o1");
        assert!(d.body.is_empty());
        let x = rest_hook_request(
            &sub(Some("application/fhir+xml"), None),
            &notification("POST"),
            Some(OBS),
        )
        .unwrap();
        let xml = String::from_utf8(x.body).unwrap();
        assert!(
            xml.contains("<Observation xmlns=\"http://hl7.org/fhir\">"),
            "{xml}"
        );
    }

    #[test]
    fn a_signing_secret_signs_the_body() {
        let s = sub(Some("application/fhir+json"), Some("0123456789abcdef"));
        let r = rest_hook_request(&s, &notification("PUT"), Some(OBS)).unwrap();
        let sig = r
            .headers
            .iter()
            .find(|(n, _)| n == SIGNATURE_HEADER)
            .map(|(_, v)| v.clone())
            .unwrap();
        let want = crate::ingest::cellular::hmac_hex("0123456789abcdef", OBS.as_bytes());
        assert_eq!(sig, format!("sha256={want}"));
        assert_eq!(want.len(), 64);
    }

    #[test]
    fn back_off_doubles_with_jitter_up_to_its_cap() {
        let c = Config {
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            ..Config::default()
        };
        assert_eq!(backoff(&c, 1, 1.0), Duration::from_secs(1));
        assert_eq!(backoff(&c, 1, 0.0), Duration::from_millis(500));
        assert_eq!(backoff(&c, 4, 1.0), Duration::from_secs(8));
        assert_eq!(backoff(&c, 20, 1.0), Duration::from_secs(60));
        assert_eq!(backoff(&c, 1000, 0.0), Duration::from_secs(30));
        // Never zero: a failed endpoint is not hammered.
        assert!(backoff(&c, 0, 0.0) >= Duration::from_millis(500));
    }
}
