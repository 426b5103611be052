//! The matcher: reads the change log after commit (DESIGN.md rule 3), matches every committed
//! version against the active Subscriptions, and queues the notifications together with its
//! new position in the log, in one transaction (`store::notify`). One process at a time holds
//! the engine lease and does this; the others stand by and take over when it lapses.
//!
//! Subscription versions are read from the same log, in the same order, so a subscription
//! matches exactly the versions committed after it became active and before it stopped. The
//! matcher also moves subscriptions through their statuses
//! (https://hl7.org/fhir/R4/subscription.html#2.46.7): a `requested` one becomes `active`, one
//! whose `end` has passed becomes `off`; an `error` one keeps its notifications waiting
//! until it is requested again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::Shared;
use super::bundle;
use super::criteria::{self, Version};
use super::model::{self, Status, Subscription};
use crate::auth::tenancy::{self, Area};
use crate::fhir::types::{ResourceId, ResourceType};
use crate::store::changes::{Change, ChangeCursor};
use crate::store::query::Clause;
use crate::store::{Method, Store, StoreError, now_micros};

/// Changes matched per transaction.
const BATCH: i64 = 500;
/// How long the lease lasts, and how often it is renewed while nothing else writes.
/// A short lease: after a crash, changes wait for a new leader at most this long.
const LEASE: Duration = Duration::from_secs(5);
const RENEW: Duration = Duration::from_secs(1);
/// How often the leader purges events older than their retention.
const PURGE: Duration = Duration::from_secs(3600);
/// How long the leader waits for a change before it looks anyway (ends, settling gaps).
const IDLE: Duration = Duration::from_secs(1);

/// An active subscription, ready to match.
struct Matching {
    sub: Subscription,
    /// Its criteria and the owner's tenancy, as one clause.
    clause: Clause,
}

/// What the leader knows: its position and the subscriptions as of that position.
struct Leading {
    cursor: ChangeCursor,
    active: HashMap<String, Matching>,
    /// Subscriptions waiting for the server: `requested` ones, and active ones with an `end`.
    pending: HashMap<String, Subscription>,
    /// When each active subscription with a heartbeat period last had a notification queued
    /// or a heartbeat sent.
    quiet_since: HashMap<String, Instant>,
    renewed: Instant,
    /// When kept events were last purged.
    purged: Option<Instant>,
}

/// What happens to a subscription after its change is matched.
enum Action {
    Activate(Box<Subscription>),
    /// An active subscription's new endpoint is handshaken before it gets anything.
    Handshake(Box<Subscription>),
    Hold(String),
    Release(String),
    Discard(String),
    Forget(String),
}

pub(super) async fn run(sh: Arc<Shared>) {
    let mut waiter = loop {
        match sh.store.change_waiter().await {
            Ok(w) => break w,
            Err(_) if sh.store.is_closed() => return,
            Err(e) => {
                tracing::warn!(error = %e, "subscriptions: cannot listen for changes; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    let mut leading: Option<Leading> = None;
    loop {
        if sh.store.is_closed() {
            return;
        }
        let more = match step(&sh, &mut leading).await {
            Ok(more) => more,
            Err(e) => {
                if !sh.store.is_closed() {
                    tracing::warn!(error = %e, "subscriptions: matching failed; retrying");
                }
                leading = None;
                tokio::time::sleep(Duration::from_secs(1)).await;
                false
            }
        };
        if !more {
            waiter
                .wait(if leading.is_some() { IDLE } else { RENEW })
                .await;
        }
    }
}

/// One run of the matcher; true when more changes are waiting.
async fn step(sh: &Arc<Shared>, leading: &mut Option<Leading>) -> Result<bool, StoreError> {
    let store = &sh.store;
    let now = now_micros();
    let due = leading
        .as_ref()
        .is_none_or(|l| l.renewed.elapsed() >= RENEW);
    if due {
        if !store
            .engine_lease(&sh.process, now, LEASE.as_micros() as i64)
            .await?
        {
            *leading = None;
            return Ok(false);
        }
        match leading {
            Some(l) => l.renewed = Instant::now(),
            None => *leading = Some(lead(sh).await?),
        }
    }
    let Some(state) = leading.as_mut() else {
        return Ok(false);
    };
    let from = state.cursor.clone();
    let mut to = from.clone();
    let changes = store.read_changes(&mut to, BATCH).await?;
    let mut matched = Vec::new();
    let mut actions = Vec::new();
    for c in &changes {
        if c.res_type == "Subscription" {
            actions.extend(state.apply(c, &sh.config.base));
            continue;
        }
        state.matches(store, c, now, &mut matched).await?;
    }
    if !changes.is_empty() || to.parts() != from.parts() {
        match store.enqueue(Some(&from), &to, &matched, now).await {
            Ok(_) => {}
            Err(StoreError::VersionConflict { .. }) => {
                // Another process matched these first (its lease and ours overlapped).
                *leading = None;
                return Ok(true);
            }
            Err(e) => return Err(e),
        }
        if !matched.is_empty() {
            // Queued after a handshake began: held with what is already waiting.
            let handshaking = sh.handshaking.lock().await;
            let mut held = std::collections::HashSet::new();
            for (id, _) in &matched {
                if handshaking.contains(id) && held.insert(id) {
                    store.hold(id).await?;
                }
            }
            drop(handshaking);
            sh.queued.notify_one();
            let now = Instant::now();
            for (id, _) in &matched {
                if let Some(t) = state.quiet_since.get_mut(id) {
                    *t = now;
                }
            }
        }
    }
    // Also when nothing was stored: the gaps' settling notes live in the cursor.
    state.cursor = to;
    for a in actions {
        act(sh, a).await?;
    }
    settle_statuses(sh, state, now).await?;
    if state.purged.is_none_or(|p| p.elapsed() >= PURGE) {
        state.purged = Some(Instant::now());
        let before = now - sh.config.events_kept.as_micros() as i64;
        let n = store.purge_events(before).await?;
        if n > 0 {
            tracing::info!(events = n, "subscriptions: past events purged");
        }
    }
    Ok(changes.len() as i64 == BATCH)
}

/// Becomes the leader: the stored position and the subscriptions as of that position, so that
/// the changes still to be read are matched against the subscriptions of their time (a
/// Subscription created after a change, but before a leader's crash, does not match it).
async fn lead(sh: &Arc<Shared>) -> Result<Leading, StoreError> {
    let store = &sh.store;
    let cursor = store.engine_cursor().await?.unwrap_or_default();
    // Those changed after the cursor were, as of it, at the version before their first change
    // there (none: not yet created); the log brings the rest.
    let mut at_cursor: HashMap<String, i64> = store
        .changed_after(&cursor, "Subscription")
        .await?
        .into_iter()
        .collect();
    let mut state = Leading {
        cursor,
        active: HashMap::new(),
        pending: HashMap::new(),
        quiet_since: HashMap::new(),
        renewed: Instant::now(),
        purged: None,
    };
    let mut versions = Vec::new();
    let mut after = String::new();
    loop {
        let page = store
            .scan_current(Some(("Subscription", &after)), 200)
            .await?;
        let last = page.len() < 200;
        for v in page.iter().filter(|v| v.ty == "Subscription") {
            match at_cursor.remove(&v.id) {
                None => versions.push(v.content.clone()),
                Some(first) => versions.push(version_before(store, &v.id, first).await?),
            }
        }
        match page.last() {
            Some(v) if v.ty == "Subscription" && !last => after = v.id.clone(),
            _ => break,
        }
    }
    // Deleted since the cursor.
    for (id, first) in at_cursor {
        versions.push(version_before(store, &id, first).await?);
    }
    // What an earlier leader may not have done before it stopped (release, hold, discard) is
    // done again; each is idempotent. Releases go in one statement: every active one has one.
    let mut released = Vec::new();
    for content in versions.iter().flatten() {
        match state.take(content, &sh.config.base) {
            Some(Action::Release(id)) => released.push(id),
            Some(a) => act(sh, a).await?,
            None => {}
        }
    }
    store.release_all(&released, now_micros()).await?;
    sh.queued.notify_one();
    tracing::info!(
        active = state.active.len(),
        "subscriptions: this process matches the change log"
    );
    Ok(state)
}

/// Subscription `id`'s content at the version before `version` (none before the first, or
/// when that was a delete).
async fn version_before(
    store: &Store,
    id: &str,
    version: i64,
) -> Result<Option<String>, StoreError> {
    let (Some(ty), Some(rid)) = (ResourceType::parse("Subscription"), ResourceId::parse(id)) else {
        return Ok(None);
    };
    if version < 2 {
        return Ok(None);
    }
    Ok(store
        .vread(ty, &rid, version - 1)
        .await?
        .and_then(|v| v.content))
}

impl Leading {
    /// Takes a Subscription version into the matcher's view; returns what it asks of the
    /// server.
    fn take(&mut self, content: &str, base: &str) -> Option<Action> {
        let sub = serde_json::from_str::<Value>(content)
            .ok()
            .and_then(|v| model::read(&v, base).ok())?;
        let id = sub.id.clone();
        let before = self.active.remove(&id);
        self.pending.remove(&id);
        self.quiet_since.remove(&id);
        match sub.status {
            // Activated by settle_statuses once this run is queued.
            Status::Requested => {
                self.pending.insert(id, sub);
                None
            }
            Status::Active => {
                if sub.topic.as_ref().is_some_and(|t| t.heartbeat.is_some()) {
                    self.quiet_since
                        .entry(id.clone())
                        .or_insert_with(Instant::now);
                }
                if sub.end.is_some() {
                    self.pending.insert(id.clone(), sub.clone());
                }
                // A topic-based rest-hook subscription whose client moved it to another
                // endpoint has that endpoint's handshake first; nothing goes there before.
                let moved = sub.topic.is_some()
                    && before.is_some_and(|b| endpoint(&b.sub) != endpoint(&sub))
                    && matches!(sub.channel, model::Channel::RestHook { .. });
                let clause = clause(&sub);
                if moved {
                    let again = Box::new(sub.clone());
                    self.active.insert(id, Matching { sub, clause });
                    return Some(Action::Handshake(again));
                }
                self.active.insert(id.clone(), Matching { sub, clause });
                // A client may set an `error` subscription back to `active` itself
                // (http://hl7.org/fhir/uv/subscriptions-backport/STU1.1/errors.html): what
                // waited goes out first. Nothing is held otherwise, and this changes nothing.
                Some(Action::Release(id))
            }
            Status::Error => {
                if sub.end.is_some() {
                    self.pending.insert(id.clone(), sub);
                }
                Some(Action::Hold(id))
            }
            Status::Off => Some(Action::Discard(id)),
        }
    }

    /// A Subscription change from the log.
    fn apply(&mut self, c: &Change, base: &str) -> Option<Action> {
        if c.method == "DELETE" {
            self.active.remove(&c.res_id);
            self.pending.remove(&c.res_id);
            self.quiet_since.remove(&c.res_id);
            return Some(Action::Forget(c.res_id.clone()));
        }
        self.take(c.content.as_deref()?, base)
    }

    /// Adds to `matched` every active subscription the change matches.
    async fn matches(
        &self,
        store: &Store,
        c: &Change,
        now: i64,
        matched: &mut Vec<(String, Change)>,
    ) -> Result<(), StoreError> {
        let subs: Vec<&Matching> = self
            .active
            .values()
            .filter(|m| m.sub.ty.as_str() == c.res_type)
            .collect();
        if subs.is_empty() {
            return Ok(());
        }
        let Some(resource) = c
            .content
            .as_deref()
            .and_then(|s| serde_json::from_str::<Value>(s).ok())
        else {
            return Ok(());
        };
        let rows = crate::search::index::rows(&resource);
        let version = Version {
            ty: &c.res_type,
            id: &c.res_id,
            last_updated: c.recorded_at,
            rows: &rows,
        };
        let change = Change {
            content: None,
            ..c.clone()
        };
        // A topic's trigger looks at the version itself (none for a delete) and, for some
        // topics, at the one before it.
        let current = (c.method != "DELETE").then_some(&resource);
        let mut previous: Option<Option<Value>> = None;
        for m in subs {
            if let Some(t) = &m.sub.topic {
                if t.topic.needs_previous && previous.is_none() {
                    previous = Some(previous_version(store, c).await?);
                }
                let before = previous.as_ref().and_then(Option::as_ref);
                if !t.topic.triggered(before, current) {
                    continue;
                }
            }
            let hit = match criteria::matches(&m.clause, &version, now) {
                Some(hit) => hit,
                None => store_decides(store, m, c).await?,
            };
            if hit {
                matched.push((m.sub.id.clone(), change.clone()));
            }
        }
        Ok(())
    }
}

/// Where a subscription's notifications go.
fn endpoint(sub: &Subscription) -> &str {
    match &sub.channel {
        model::Channel::RestHook { endpoint, .. } => endpoint.as_str(),
        model::Channel::Email { to, .. } => to,
    }
}

/// The version before the change's, if any.
async fn previous_version(store: &Store, c: &Change) -> Result<Option<Value>, StoreError> {
    // A delete's content is already the version it deleted; a first version has none before.
    if c.method == "DELETE" || c.version_id < 2 {
        return Ok(None);
    }
    let (Some(ty), Some(id)) = (
        ResourceType::parse(&c.res_type),
        ResourceId::parse(&c.res_id),
    ) else {
        return Ok(None);
    };
    Ok(store
        .vread(ty, &id, c.version_id - 1)
        .await?
        .and_then(|v| v.content)
        .and_then(|s| serde_json::from_str(&s).ok()))
}

/// The criteria and the owner's tenancy: a notification never carries what the owner may not
/// read. An owner is a clinic (subscriptions are its integrations): it reads what it owns and
/// the shared definitions, and not the audit trail. A subscription without an owner is an
/// admin's.
fn clause(sub: &Subscription) -> Clause {
    let mut all = sub.criteria.clauses.clone();
    if let Some(owner) = &sub.owner {
        if tenancy::area(sub.ty.as_str()) == Area::Audit {
            return Clause::Nothing;
        }
        all.push(Clause::Owned {
            orgs: vec![owner.clone()],
        });
    }
    Clause::All(all)
}

/// Criteria that depend on other resources (chains, `_has`, terminology) are asked of the
/// search engine, on the resource as it is now (a delete matches nothing there).
async fn store_decides(store: &Store, m: &Matching, c: &Change) -> Result<bool, StoreError> {
    let mut q = m.sub.criteria.clone();
    q.clauses = vec![
        m.clause.clone(),
        Clause::Id {
            ids: vec![c.res_id.clone()],
            negate: false,
        },
    ];
    q.count = Some(1);
    q.total = Some(crate::search::Total::None);
    let found = crate::search::engine::run(&mut store.reader(), &[m.sub.ty], &q).await?;
    Ok(!found.matches.is_empty())
}

async fn act(sh: &Arc<Shared>, a: Action) -> Result<(), StoreError> {
    match a {
        Action::Activate(sub) => {
            // R4 criteria-based subscriptions need no handshake: accepted is active.
            let now = now_micros();
            let unserved =
                matches!(sub.channel, model::Channel::Email { .. }) && sh.mailer.is_none();
            if sub.end.is_some_and(|e| e <= now) {
                set_status(&sh.store, &sub.id, sub.version_id, Status::Off, None).await?;
            } else if unserved {
                let why = super::deliver::NO_RELAY;
                set_status(&sh.store, &sub.id, sub.version_id, Status::Error, Some(why)).await?;
            } else if sub.topic.is_some() && matches!(sub.channel, model::Channel::RestHook { .. })
            {
                // Backport IG: a rest-hook subscription is active once its endpoint has
                // accepted the handshake (http://hl7.org/fhir/uv/subscriptions-backport/STU1.1/workflow.html).
                tokio::spawn(handshake(sh.clone(), *sub));
            } else if set_status(&sh.store, &sub.id, sub.version_id, Status::Active, None).await? {
                // Back from `error`: what waited is delivered first.
                sh.store.release(&sub.id, now).await?;
                sh.queued.notify_one();
                tracing::info!(subscription = %sub.id, "subscription active");
            }
        }
        Action::Handshake(sub) => {
            let mut handshaking = sh.handshaking.lock().await;
            sh.store.hold(&sub.id).await?;
            handshaking.insert(sub.id.clone());
            tokio::spawn(handshake(sh.clone(), *sub));
        }
        Action::Hold(id) => sh.store.hold(&id).await?,
        Action::Release(id) => {
            sh.store.release(&id, now_micros()).await?;
            sh.queued.notify_one();
        }
        Action::Forget(id) => sh.store.forget(&id).await?,
        Action::Discard(id) => {
            let n = sh.store.discard(&id).await?;
            if n > 0 {
                tracing::info!(subscription = %id, dropped = n, "subscription off: queue dropped");
            }
        }
    }
    Ok(())
}

/// Sends the handshake of a `requested` topic-based subscription, or of an active one moved to
/// a new endpoint: `active` (or still active, with what waited released) when the endpoint
/// takes it, `error` with the reason when not. Not queued: it precedes every event.
async fn handshake(sh: Arc<Shared>, sub: Subscription) {
    let outcome = async {
        let events = sh
            .store
            .event_count(&sub.id)
            .await
            .map_err(|e| e.to_string())?;
        send_status(
            &sh,
            &sub,
            Status::Requested,
            bundle::Kind::Handshake,
            events,
        )
        .await
    }
    .await;
    let moved = sub.status == Status::Active;
    let written = match outcome {
        Ok(()) if moved => {
            // It stays active; what waited for the new endpoint goes now.
            let mut handshaking = sh.handshaking.lock().await;
            handshaking.remove(&sub.id);
            let done = sh.store.release(&sub.id, now_micros()).await;
            drop(handshaking);
            sh.queued.notify_one();
            tracing::info!(subscription = %sub.id, "handshake of the new endpoint accepted");
            done.map(|_| true)
        }
        Ok(()) => {
            let done = set_status(&sh.store, &sub.id, sub.version_id, Status::Active, None).await;
            if matches!(done, Ok(true)) {
                let _ = sh.store.release(&sub.id, now_micros()).await;
                sh.queued.notify_one();
                tracing::info!(subscription = %sub.id, "handshake accepted: subscription active");
            }
            done
        }
        Err(why) => {
            tracing::info!(subscription = %sub.id, reason = %why, "handshake failed");
            let why = format!("the handshake failed: {why}");
            let done = set_status(
                &sh.store,
                &sub.id,
                sub.version_id,
                Status::Error,
                Some(&why),
            )
            .await;
            // Held as an `error` subscription's are, or released by a newer version.
            sh.handshaking.lock().await.remove(&sub.id);
            done
        }
    };
    if let Err(e) = written {
        tracing::warn!(error = %e, subscription = %sub.id, "cannot record the handshake's outcome");
    }
}

/// POSTs a status-only notification (handshake or heartbeat) to the subscription's endpoint.
async fn send_status(
    sh: &Shared,
    sub: &Subscription,
    status: Status,
    kind: bundle::Kind,
    events: i64,
) -> Result<(), String> {
    let base = &sh.config.base;
    let parameters = bundle::status(sub, base, status, kind, events, &[], None);
    let b = bundle::notification(sub, base, parameters, &[], now_micros());
    let req = super::deliver::bundle_request(sub, None, &b)?;
    super::deliver::execute(sh, sub, req)
        .await
        .map_err(|f| f.reason)
}

/// A heartbeat: nothing was notified for the subscription's heartbeat period. Best effort:
/// a lost heartbeat is what the client watches for.
async fn heartbeat(sh: Arc<Shared>, sub: Subscription) {
    let events = sh.store.event_count(&sub.id).await.unwrap_or(0);
    if let Err(why) = send_status(&sh, &sub, Status::Active, bundle::Kind::Heartbeat, events).await
    {
        tracing::info!(subscription = %sub.id, reason = %why, "heartbeat not delivered");
    }
}

/// Subscriptions whose `end` has passed turn off; `requested` ones left over (a crash between
/// a Subscription's commit and its activation) are activated.
async fn settle_statuses(
    sh: &Arc<Shared>,
    state: &mut Leading,
    now: i64,
) -> Result<(), StoreError> {
    let due: Vec<Subscription> = state
        .pending
        .values()
        .filter(|s| s.status == Status::Requested || s.end.is_some_and(|e| e <= now))
        .cloned()
        .collect();
    let beat: Vec<Subscription> = state
        .active
        .values()
        .filter(|m| matches!(m.sub.channel, model::Channel::RestHook { .. }))
        .filter_map(|m| {
            let period = m.sub.topic.as_ref()?.heartbeat?;
            let quiet = state.quiet_since.get(&m.sub.id)?;
            (quiet.elapsed() >= Duration::from_secs(u64::from(period))).then(|| m.sub.clone())
        })
        .collect();
    for sub in beat {
        state.quiet_since.insert(sub.id.clone(), Instant::now());
        tokio::spawn(heartbeat(sh.clone(), sub));
    }
    for sub in due {
        state.pending.remove(&sub.id);
        if sub.status == Status::Requested {
            act(sh, Action::Activate(Box::new(sub))).await?;
        } else {
            set_status(&sh.store, &sub.id, sub.version_id, Status::Off, None).await?;
        }
    }
    Ok(())
}

/// Writes `status` (and `error`, the reason for an `error`) into the Subscription, through
/// the one write path, if it is still at `version`. False when it has changed meanwhile: the
/// matcher sees the newer version and acts on that.
pub(super) async fn set_status(
    store: &Store,
    id: &str,
    version: i64,
    status: Status,
    error: Option<&str>,
) -> Result<bool, StoreError> {
    let (Some(ty), Some(rid)) = (ResourceType::parse("Subscription"), ResourceId::parse(id)) else {
        return Ok(false);
    };
    let Some(current) = store.read(ty, &rid).await? else {
        return Ok(false);
    };
    let Some(content) = current.content.filter(|_| current.version_id == version) else {
        return Ok(false);
    };
    let mut resource: Value = serde_json::from_str(&content)?;
    resource["status"] = Value::from(status.as_str());
    match error {
        Some(e) => resource["error"] = Value::from(e),
        None => {
            if let Some(map) = resource.as_object_mut() {
                map.remove("error");
            }
        }
    }
    match store
        .write_one(ty, Some(rid), Some(resource), Some(version), Method::Put)
        .await
    {
        Ok(_) => Ok(true),
        Err(StoreError::VersionConflict { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}
