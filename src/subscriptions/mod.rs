//! Subscriptions (issue 6, DESIGN.md room `subscriptions`): matching committed changes, read
//! from the change log after commit (`store::changes`), against what customers subscribed to,
//! and delivering the notifications.
//!
//! - [`model`]: a Subscription as the engine reads it, and the checks before one is stored;
//! - [`criteria`]: whether a committed version matches a subscription's criteria (pure);
//! - [`engine`]: one process at a time reads the change log, matches it and queues the
//!   notifications in the database together with its new position; it also moves each
//!   Subscription through its statuses;
//! - [`deliver`]: every process takes queued notifications, in order per subscription, and
//!   sends them, with retries: rest-hook requests, or notices by [`email`].

pub mod bundle;
pub mod criteria;
pub mod deliver;
pub mod egress;
pub mod email;
pub mod engine;
pub mod model;
pub mod topics;

use std::sync::Arc;
use std::time::Duration;

use crate::store::Store;

/// How notifications are delivered.
#[derive(Debug, Clone)]
pub struct Config {
    /// Whether this process matches and delivers (`VB_SUBSCRIPTIONS`); several processes
    /// share the work, and a process that only answers the API can leave it to the others.
    pub enabled: bool,
    /// The FHIR base URL references in criteria are resolved against.
    pub base: String,
    /// How long a notification is retried before its subscription goes to `error`
    /// (`VB_SUBSCRIPTION_RETRY_SECS`, 24 hours by default).
    pub retry_for: Duration,
    /// The first retry's delay; each further one doubles it, up to [`Config::max_backoff`],
    /// with jitter (`VB_SUBSCRIPTION_BACKOFF_MS`).
    pub backoff: Duration,
    pub max_backoff: Duration,
    /// How long one delivery may take (`VB_SUBSCRIPTION_TIMEOUT_SECS`).
    pub timeout: Duration,
    /// Deliveries in flight at once per process.
    pub workers: usize,
    /// How long each event is kept for `Subscription/$events` (`VB_SUBSCRIPTION_EVENTS_DAYS`).
    pub events_kept: Duration,
    /// The relay of the `email` channel; without one, email subscriptions go to `error`.
    pub smtp: Option<email::SmtpConfig>,
    /// Which addresses rest-hook endpoints may have (`VB_SUBSCRIPTION_ALLOW_NETWORKS`).
    pub egress: egress::Egress,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            enabled: true,
            base: "http://127.0.0.1:8080/fhir".into(),
            retry_for: Duration::from_secs(24 * 3600),
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(3600),
            timeout: Duration::from_secs(10),
            workers: 64,
            events_kept: Duration::from_secs(7 * 24 * 3600),
            smtp: None,
            egress: egress::Egress::public(),
        }
    }
}

/// The engine's tasks of one process.
#[derive(Clone)]
pub struct Engine {
    shared: Arc<Shared>,
}

struct Shared {
    store: Store,
    config: Config,
    http: reqwest::Client,
    mailer: Option<email::Mailer>,
    /// Wakes the deliverer: notifications were queued, or one finished and its subscription's
    /// next may go.
    queued: tokio::sync::Notify,
    /// This process, as the engine lease names it.
    process: String,
    /// Active subscriptions whose new endpoint is being handshaken: their notifications are
    /// held until it is done. Locked across the hold and the release, so that neither
    /// overtakes the other.
    handshaking: tokio::sync::Mutex<std::collections::HashSet<String>>,
}

impl Engine {
    /// Starts matching and delivering in the background; both stop when the store closes.
    pub fn start(store: Store, config: Config) -> anyhow::Result<Engine> {
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            // A webhook that answers with a redirect has not taken the notification.
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(Arc::new(egress::Resolver(Arc::new(config.egress.clone()))))
            .user_agent(concat!("vitalbridge/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let mailer = config.smtp.as_ref().map(email::Mailer::new).transpose()?;
        let shared = Arc::new(Shared {
            store,
            config,
            http,
            mailer,
            queued: tokio::sync::Notify::new(),
            process: uuid::Uuid::new_v4().to_string(),
            handshaking: Default::default(),
        });
        tokio::spawn(engine::run(shared.clone()));
        tokio::spawn(deliver::run(shared.clone()));
        Ok(Engine { shared })
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &Config {
        &self.shared.config
    }
}

/// The `$status` answer for these Subscription versions (Backport IG
/// http://hl7.org/fhir/uv/subscriptions-backport/STU1.1/OperationDefinition-backport-subscription-status.html):
/// a `searchset` of status `Parameters`, with each one's event count and, in `error`, the
/// reason. Versions that are not readable Subscriptions are left out.
pub async fn status_bundle(
    store: &Store,
    base: &str,
    versions: &[crate::store::Version],
) -> Result<serde_json::Value, crate::store::StoreError> {
    let mut items = Vec::new();
    for v in versions {
        let Some(content) = &v.content else { continue };
        let value: serde_json::Value = serde_json::from_str(content)?;
        let Ok(sub) = model::read(&value, base) else {
            continue;
        };
        let events = store.event_count(&sub.id).await?;
        items.push(bundle::status(
            &sub,
            base,
            sub.status,
            bundle::Kind::QueryStatus,
            events,
            &[],
            value["error"].as_str(),
        ));
    }
    Ok(bundle::status_searchset(items))
}

/// The most events one `$events` answer holds.
pub const MAX_EVENTS: i64 = 500;

/// The `$events` answer (Backport IG
/// http://hl7.org/fhir/uv/subscriptions-backport/STU1.1/OperationDefinition-backport-subscription-events.html):
/// a `history` Bundle with the `query-event` status first, then the kept events from `from`
/// to `to` (at most [`MAX_EVENTS`]) at the subscription's content level, or at `content`
/// when given. A resource goes into the Bundle only when `sees` lets the caller read it.
pub async fn events_bundle(
    store: &Store,
    base: &str,
    subscription: &crate::store::Version,
    from: i64,
    to: i64,
    content: Option<model::Content>,
    sees: impl Fn(&crate::store::Version) -> bool,
) -> Result<Option<serde_json::Value>, crate::store::StoreError> {
    let Some(json) = &subscription.content else {
        return Ok(None);
    };
    let value: serde_json::Value = serde_json::from_str(json)?;
    let Ok(mut sub) = model::read(&value, base) else {
        return Ok(None);
    };
    // A criteria-based subscription's events are named (id-only) whatever is asked.
    if let (Some(c), Some(t)) = (content, sub.topic.as_mut()) {
        t.content = c;
    }
    let full = sub
        .topic
        .as_ref()
        .is_some_and(|t| t.content == model::Content::FullResource);
    let kept = store.events(&sub.id, from, to, MAX_EVENTS).await?;
    let mut resources = Vec::with_capacity(kept.len());
    for e in &kept {
        let version = match (
            full && e.method != "DELETE",
            crate::fhir::types::ResourceType::parse(&e.res_type),
            crate::fhir::types::ResourceId::parse(&e.res_id),
        ) {
            (true, Some(ty), Some(id)) => store.vread(ty, &id, e.version_id).await?,
            _ => None,
        };
        resources.push(
            version
                .filter(|v| sees(v))
                .and_then(|v| v.content)
                .and_then(|c| serde_json::from_str::<serde_json::Value>(&c).ok()),
        );
    }
    let events: Vec<bundle::Event<'_>> = kept
        .iter()
        .zip(&resources)
        .map(|(e, r)| bundle::Event {
            number: e.event_number,
            timestamp: e.created_at,
            res_type: &e.res_type,
            res_id: &e.res_id,
            method: &e.method,
            resource: r.as_ref(),
        })
        .collect();
    let count = store.event_count(&sub.id).await?;
    let status = bundle::status(
        &sub,
        base,
        sub.status,
        bundle::Kind::QueryEvent,
        count,
        &events,
        None,
    );
    Ok(Some(bundle::notification(
        &sub,
        base,
        status,
        &events,
        crate::store::now_micros(),
    )))
}
