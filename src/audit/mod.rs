//! The audit trail (issue 4, item 7; DESIGN.md room `audit`): every read, search, write, login
//! and token request becomes an audit row — who (client, user, role, organization, issuer), what
//! (type and id, never content or search values), when, outcome — served to admins as FHIR
//! AuditEvent (https://hl7.org/fhir/R4/auditevent.html).
//!
//! Off the request path: the middleware appends each entry to a bounded in-memory queue and
//! returns; one background task gathers what arrives for up to [`GATHER`] and writes it in one
//! statement and transaction, retrying with backoff while the database is down. A full queue
//! makes requests wait for room rather than drop rows. Shutdown flushes the queue
//! ([`Audit::flush`]).
//!
//! Queueing allocates nothing: an entry's text is inline ([`Text`]) and the queue is a vector
//! the writer swaps with its own. Heap memory allocated by the request's thread and freed by the
//! writer's cost the allocator more than the rest of the trail's work in the server (a profile of
//! the read benchmark: mimalloc's allocation path 5.7 % of the server's samples with the trail
//! on, 2.5 % with it off).

pub mod fhir;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::Response;
use serde_json::Value;
use tokio::sync::{Notify, oneshot};

use crate::auth::Principal;
use crate::http::AppState;
use crate::store::audit::{AuditAgent, AuditInsert, AuditWriter};
use crate::store::{Store, StoreError};

/// Rows waiting to be written, at most; beyond it requests wait for room.
const QUEUE: usize = 65_536;
/// Rows written per transaction, at most.
const BATCH: usize = 4_000;
/// How long the writer gathers entries after the first one before it writes them: one
/// transaction (one WAL flush) per this interval under load, not one per request.
const GATHER: Duration = Duration::from_millis(100);

/// Who made an audited request when the bearer-token gate did not say: the token endpoint and
/// the login page put it in their response's extensions.
#[derive(Debug, Clone, Default)]
pub struct Who {
    pub client_id: Option<String>,
    pub subject: Option<String>,
    pub role: Option<String>,
    pub organization: Option<String>,
}

impl Who {
    /// The caller named by the access token of a successful token response (ours, just issued:
    /// its claims are read, not checked again).
    pub fn from_token_response(body: &Value) -> Option<Who> {
        let token = body.get("access_token")?.as_str()?;
        let claims: Value = crate::auth::token::unverified_claims(token)?;
        let s = |k: &str| claims.get(k).and_then(Value::as_str).map(str::to_owned);
        Some(Who {
            client_id: s("client_id"),
            subject: s("sub"),
            role: s("role"),
            organization: s("org"),
        })
    }
}

/// What the request path queues: cheap to make (static codes, inline text, the caller shared,
/// not copied); the writer turns it into a row.
pub struct Entry {
    pub recorded: i64,
    pub what: Interaction,
    pub status: u16,
    pub principal: Option<Arc<Principal>>,
    pub who: Option<Who>,
    pub address: Option<std::net::IpAddr>,
    pub request_id: Option<Text>,
}

/// Text that an entry takes from the request (a resource type, an id, the request id), as the
/// trail stores it ([`crate::store::audit::clean`]): inline up to [`Text::INLINE`] bytes, which
/// holds FHIR ids (at most 64 characters, https://hl7.org/fhir/R4/datatypes.html#id) and request
/// ids, so that queueing allocates nothing; on the heap beyond.
#[derive(Clone, PartialEq)]
pub enum Text {
    Inline(u8, [u8; Text::INLINE]),
    Heap(Box<str>),
}

impl Text {
    pub const INLINE: usize = 64;

    pub fn new(s: &str) -> Text {
        let s = crate::store::audit::clean(s);
        match u8::try_from(s.len()) {
            Ok(n) if s.len() <= Text::INLINE => {
                let mut buf = [0; Text::INLINE];
                buf[..s.len()].copy_from_slice(s.as_bytes());
                Text::Inline(n, buf)
            }
            _ => Text::Heap(s.into()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            // Copied from a str whole, so always UTF-8.
            Text::Inline(n, buf) => std::str::from_utf8(&buf[..usize::from(*n)]).unwrap_or(""),
            Text::Heap(s) => s,
        }
    }
}

impl std::fmt::Debug for Text {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.as_str().fmt(f)
    }
}

impl Entry {
    /// Who made the request: the verified caller, else what the token or login endpoint said.
    fn agent(&self) -> AuditAgent<'_> {
        if let Some(p) = &self.principal {
            AuditAgent {
                client_id: Some(&p.client_id),
                subject: Some(&p.subject),
                role: Some(p.role.as_str()),
                organization: p.organization.as_deref(),
                issuer: p.issuer.as_deref(),
            }
        } else if let Some(w) = &self.who {
            AuditAgent {
                client_id: w.client_id.as_deref(),
                subject: w.subject.as_deref(),
                role: w.role.as_deref(),
                organization: w.organization.as_deref(),
                issuer: None,
            }
        } else {
            AuditAgent::default()
        }
    }
}

/// The writer's copies of the two dictionaries (`audit_agent`, `audit_interaction`): a row
/// names its agent and interaction by id, looked up here and added to the database only the
/// first time this process sees them.
#[derive(Default)]
struct Dictionaries {
    agents: HashMap<String, i32>,
    /// Agent ids of verified callers by the address of their `Principal`: the token cache
    /// hands every request with one token the same `Arc`, so most rows find their agent without
    /// building and hashing its key. The `Arc` is held, so that its address cannot be another
    /// caller's while it is a key here.
    principals: HashMap<usize, (Arc<Principal>, i32)>,
    interactions: HashMap<(&'static str, &'static str, &'static str), i16>,
    key: String,
    /// The buffer the writer builds a block's text in.
    state: AuditWriter,
    /// The rows vector of the last batch, empty, kept for its allocation (see [`AuditWriter`]).
    spare: Vec<AuditInsert<'static>>,
}

/// Agents remembered at most; beyond it the cache starts again (a lookup is one statement).
const AGENTS_CACHED: usize = 50_000;
/// Principals remembered at most (each held alive while remembered; a token's lasts five
/// minutes); beyond it that cache starts again, and its rows find their agent by key.
const PRINCIPALS_CACHED: usize = 4_096;

impl Dictionaries {
    /// The batch as rows, adding what the dictionaries lack.
    async fn rows<'a>(
        &mut self,
        store: &Store,
        entries: &'a [Entry],
    ) -> Result<Vec<AuditInsert<'a>>, StoreError> {
        let mut rows: Vec<AuditInsert<'a>> = std::mem::take(&mut self.spare);
        rows.reserve(entries.len());
        for e in entries {
            let known = e.principal.as_ref().and_then(|p| {
                let (_, id) = self.principals.get(&(Arc::as_ptr(p) as usize))?;
                Some(*id)
            });
            let agent = e.agent();
            let agent = if known.is_some() {
                known
            } else if agent.is_empty() {
                None
            } else {
                agent.key_into(&mut self.key);
                match self.agents.get(self.key.as_str()) {
                    Some(id) => Some(*id),
                    None => {
                        let id = store.audit_agent_id(&agent).await?;
                        if self.agents.len() >= AGENTS_CACHED {
                            self.agents.clear();
                        }
                        self.agents.insert(self.key.clone(), id);
                        Some(id)
                    }
                }
            };
            if let (Some(p), None, Some(id)) = (&e.principal, known, agent) {
                if self.principals.len() >= PRINCIPALS_CACHED {
                    self.principals.clear();
                }
                self.principals
                    .insert(Arc::as_ptr(p) as usize, (p.clone(), id));
            }
            let w = &e.what;
            let what = (w.kind, w.subtype, w.action);
            let interaction = match self.interactions.get(&what) {
                Some(id) => *id,
                None => {
                    let id = store
                        .audit_interaction_id(w.kind, w.subtype, w.action)
                        .await?;
                    self.interactions.insert(what, id);
                    id
                }
            };
            rows.push(AuditInsert {
                recorded: e.recorded,
                agent,
                interaction,
                // HTTP statuses are three digits.
                status: i16::try_from(e.status).unwrap_or(i16::MAX),
                entity_type: w.entity_type.as_ref().map(Text::as_str),
                entity_id: w.entity_id.as_ref().map(Text::as_str),
                address: e.address,
                request_id: e.request_id.as_ref().map(Text::as_str),
            });
        }
        Ok(rows)
    }

    /// Keeps the allocation of a written batch's rows for the next one. Collecting an emptied
    /// `vec::IntoIter` reuses its buffer (std's in-place collection), which turns the borrowed
    /// rows' type back into the `'static` one the field holds; if it did not, the next batch
    /// would just allocate.
    fn recycle(&mut self, mut rows: Vec<AuditInsert<'_>>) {
        rows.clear();
        #[allow(
            clippy::unnecessary_filter_map,
            reason = "the closure changes the item type"
        )]
        let spare = rows.into_iter().filter_map(|_| None).collect();
        self.spare = spare;
    }
}

/// Entries and flush requests waiting for the writer.
#[derive(Default)]
struct Queued {
    entries: Vec<Entry>,
    flushes: Vec<oneshot::Sender<()>>,
}

/// The queue between requests and the writer. A `std` mutex: it is held only to push or swap.
#[derive(Default)]
struct Queue {
    queued: Mutex<Queued>,
    /// Wakes the writer: the first entry after a swap, a flush, the last handle gone.
    work: Notify,
    /// Wakes requests that wait for room.
    room: Notify,
    /// Every [`Audit`] handle is gone: the writer writes what is left and stops.
    closed: AtomicBool,
    /// The writer has ended (or panicked): nothing would make room any more.
    stopped: AtomicBool,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, Queued> {
        // A panic while the lock was held cannot leave the vectors half-changed: take them.
        self.queued.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes `entry` into the queue unless the queue is full; true if taken.
    fn push(&self, entry: &mut Option<Entry>) -> bool {
        let mut q = self.lock();
        if q.entries.len() >= QUEUE {
            return false;
        }
        let Some(entry) = entry.take() else {
            return true;
        };
        q.entries.push(entry);
        let first = q.entries.len() == 1;
        drop(q);
        if first {
            self.work.notify_one();
        }
        true
    }
}

/// The writer's end stops once every clone of the [`Audit`] holding this is gone.
struct Handle(Arc<Queue>);

impl Drop for Handle {
    fn drop(&mut self) {
        self.0.closed.store(true, Ordering::Release);
        self.0.work.notify_one();
    }
}

/// The queue to the background writer; cheap to clone. A disabled trail records nothing.
#[derive(Clone, Default)]
pub struct Audit {
    queue: Option<Arc<Handle>>,
}

impl Audit {
    /// Starts the background writer on `store`.
    pub fn start(store: Store) -> Audit {
        let queue = Arc::new(Queue::default());
        queue.lock().entries.reserve(BATCH);
        tokio::spawn(writer(store, queue.clone()));
        Audit {
            queue: Some(Arc::new(Handle(queue))),
        }
    }

    /// Records nothing (`VB_AUDIT=off`).
    pub fn disabled() -> Audit {
        Audit { queue: None }
    }

    pub fn enabled(&self) -> bool {
        self.queue.is_some()
    }

    /// Queues an entry; waits only when the queue is full.
    pub async fn record(&self, entry: Entry) {
        let Some(h) = &self.queue else { return };
        let mut entry = Some(entry);
        loop {
            // Registered before the attempt, so that room made in between is not missed.
            let room = h.0.room.notified();
            if h.0.push(&mut entry) {
                return;
            }
            if h.0.stopped.load(Ordering::Acquire) {
                tracing::error!("the audit writer has stopped; an audit row is lost");
                return;
            }
            room.await;
        }
    }

    /// Returns once every row queued before the call is written.
    pub async fn flush(&self) {
        let Some(h) = &self.queue else { return };
        let (done, wait) = oneshot::channel();
        h.0.lock().flushes.push(done);
        h.0.work.notify_one();
        let _ = wait.await;
    }
}

/// Writes queued rows in batches until every [`Audit`] handle is gone.
async fn writer(store: Store, queue: Arc<Queue>) {
    /// Marks the writer ended however it ends, a panic included, and wakes requests waiting
    /// for room so that they do not wait forever.
    struct Stopped(Arc<Queue>);
    impl Drop for Stopped {
        fn drop(&mut self) {
            self.0.stopped.store(true, Ordering::Release);
            self.0.room.notify_waiters();
        }
    }
    let _stopped = Stopped(queue.clone());
    let mut dicts = Dictionaries::default();
    // The writer's vector: swapped with the queue's, so that neither side allocates once both
    // have grown to the load.
    let mut taken: Vec<Entry> = Vec::with_capacity(BATCH);
    loop {
        queue.work.notified().await;
        let closed = queue.closed.load(Ordering::Acquire);
        // Let entries gather (unless a flush waits, the batch is full already or the trail is
        // closing): requests only append meanwhile, nothing wakes this task per entry.
        let gather = {
            let q = queue.lock();
            !q.entries.is_empty() && q.entries.len() < BATCH && q.flushes.is_empty()
        };
        if gather && !closed {
            tokio::time::sleep(GATHER).await;
        }
        let flushed = {
            let mut q = queue.lock();
            std::mem::swap(&mut q.entries, &mut taken);
            std::mem::take(&mut q.flushes)
        };
        queue.room.notify_waiters();
        for batch in taken.chunks(BATCH) {
            write(&store, &mut dicts, batch).await;
        }
        taken.clear();
        for done in flushed {
            let _ = done.send(());
        }
        if closed && queue.lock().entries.is_empty() {
            return;
        }
    }
}

async fn write_batch(
    store: &Store,
    dicts: &mut Dictionaries,
    entries: &[Entry],
) -> Result<(), StoreError> {
    let rows = dicts.rows(store, entries).await?;
    let written = store.insert_audit(&rows, &mut dicts.state).await;
    dicts.recycle(rows);
    written
}

/// Writes a batch. While the database is down the batch is kept and retried with backoff; after
/// a few failures the rows go one by one, so that a row the database refuses whatever happens
/// is logged and dropped rather than stopping the trail.
async fn write(store: &Store, dicts: &mut Dictionaries, entries: &[Entry]) {
    let mut delay = Duration::from_millis(100);
    for attempt in 1.. {
        let Err(e) = write_batch(store, dicts, entries).await else {
            return;
        };
        tracing::error!(error = %e, rows = entries.len(), attempt, "cannot write audit rows; retrying");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(30));
        if attempt >= 3 && store.ping().await {
            // The database answers, so some row is refused: one by one.
            for entry in entries {
                if let Err(e) = write_batch(store, dicts, std::slice::from_ref(entry)).await {
                    tracing::error!(error = %e, subtype = %entry.what.subtype, "an audit row was refused and is dropped");
                }
            }
            return;
        }
    }
}

/// What an audited request did: kind (`rest`, `login`, `token`), subtype (the FHIR restful
/// interaction, or login/token/…), action (C R U D E) and the resource it named.
#[derive(Debug, Clone, PartialEq)]
pub struct Interaction {
    pub kind: &'static str,
    pub subtype: &'static str,
    pub action: &'static str,
    pub entity_type: Option<Text>,
    pub entity_id: Option<Text>,
}

fn rest(
    subtype: &'static str,
    action: &'static str,
    ty: Option<&str>,
    id: Option<&str>,
) -> Interaction {
    Interaction {
        kind: "rest",
        subtype,
        action,
        entity_type: ty.map(Text::new),
        entity_id: id.map(Text::new),
    }
}

/// The interaction of a request, or `None` for what is not audited (capability and discovery
/// documents, keys, liveness, the API docs, the login page itself).
/// Codes: http://hl7.org/fhir/restful-interaction and http://hl7.org/fhir/audit-event-action
/// (search, operations and Bundles are `E`, as in IHE BALP).
pub fn classify(method: &Method, path: &str) -> Option<Interaction> {
    let m = method.as_str();
    if let Some(rest_of) = path.strip_prefix("/fhir") {
        let Some(segs) = Segments::of(rest_of) else {
            return Some(rest("unknown", "E", None, None));
        };
        return Some(match (m, segs.as_slice()) {
            (_, ["metadata"]) | (_, [".well-known", ..]) => return None,
            ("GET", []) | ("POST", ["_search"]) => rest("search-system", "E", None, None),
            ("POST", []) => rest("batch", "E", None, None),
            (_, ["_history"]) => rest("history-system", "R", None, None),
            (_, [op]) if op.starts_with('$') => rest("operation", "E", None, None),
            ("GET", [ty]) | ("POST", [ty, "_search"]) => rest("search-type", "E", Some(ty), None),
            ("POST", [ty]) => rest("create", "C", Some(ty), None),
            ("PUT", [ty]) => rest("update", "U", Some(ty), None),
            ("DELETE", [ty]) => rest("delete", "D", Some(ty), None),
            (_, [ty, "_history"]) => rest("history-type", "R", Some(ty), None),
            (_, [ty, op]) if op.starts_with('$') => rest("operation", "E", Some(ty), None),
            ("GET", [ty, id]) => rest("read", "R", Some(ty), Some(id)),
            ("PUT", [ty, id]) => rest("update", "U", Some(ty), Some(id)),
            ("PATCH", [ty, id]) => rest("patch", "U", Some(ty), Some(id)),
            ("DELETE", [ty, id]) => rest("delete", "D", Some(ty), Some(id)),
            (_, [ty, id, "_history"]) => rest("history-instance", "R", Some(ty), Some(id)),
            (_, [ty, id, "_history", _]) => rest("vread", "R", Some(ty), Some(id)),
            (_, [ty, id, op]) if op.starts_with('$') => rest("operation", "E", Some(ty), Some(id)),
            _ => rest("unknown", "E", None, None),
        });
    }
    let Some(segs) = Segments::of(path) else {
        return path
            .starts_with("/auth/")
            .then(|| rest("unknown", "E", None, None));
    };
    let auth = |subtype, kind| Interaction {
        kind,
        subtype,
        action: "E",
        entity_type: None,
        entity_id: None,
    };
    Some(match (m, segs.as_slice()) {
        ("POST", ["auth", "token"]) => auth("token", "token"),
        ("POST", ["auth", "introspect"]) => auth("introspect", "token"),
        ("POST", ["auth", "revoke"]) => auth("revoke", "token"),
        ("POST", ["auth", "authorize"]) | ("GET", ["auth", "federated", "callback"]) => {
            auth("login", "login")
        }
        ("POST", ["auth", "launch"]) => auth("launch", "rest"),
        // The user and client registries: what was managed, by its id.
        (_, ["auth", registry @ ("clients" | "users"), rest_of @ ..]) => {
            let ty = if *registry == "clients" {
                "client"
            } else {
                "user"
            };
            let (subtype, action) = match (m, rest_of.is_empty()) {
                ("GET", true) => ("search-type", "E"),
                ("GET", false) => ("read", "R"),
                ("POST", _) => ("create", "C"),
                ("PUT" | "PATCH", _) => ("update", "U"),
                ("DELETE", _) => ("delete", "D"),
                _ => ("unknown", "E"),
            };
            rest(subtype, action, Some(ty), rest_of.first().copied())
        }
        _ => return None,
    })
}

/// The non-empty segments of a path, without allocating (this runs on every request); `None`
/// for more than any audited route has.
struct Segments<'a> {
    segs: [&'a str; 5],
    len: usize,
}

impl<'a> Segments<'a> {
    fn of(path: &'a str) -> Option<Segments<'a>> {
        let mut s = Segments {
            segs: [""; 5],
            len: 0,
        };
        for seg in path.split('/').filter(|s| !s.is_empty()) {
            *s.segs.get_mut(s.len)? = seg;
            s.len += 1;
        }
        Some(s)
    }

    fn as_slice(&self) -> &[&'a str] {
        &self.segs[..self.len]
    }
}

/// `type/id` of a `Location` or `Content-Location` (`…/fhir/Patient/1/_history/2`).
fn located(location: &str) -> Option<(&str, &str)> {
    let after = location.split("/fhir/").nth(1)?;
    let mut segs = after.split('/');
    Some((segs.next()?, segs.next()?))
}

/// Records every audited request after it is answered. Outermost of the auth layers, so that
/// refused tokens (401) are recorded too; the bearer-token gate and the token and login
/// endpoints leave who it was in the response's extensions.
pub async fn record_requests(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if !state.audit.enabled() {
        return next.run(req).await;
    }
    let Some(what) = classify(req.method(), req.uri().path()) else {
        return next.run(req).await;
    };
    let address = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    // Recorded even when the client goes away before the answer (the future is dropped, a
    // write may still commit): then as status 499, client closed request.
    let mut pending = Pending {
        audit: &state.audit,
        entry: Some(Entry {
            recorded: crate::store::now_micros(),
            what,
            status: 499,
            principal: None,
            who: None,
            address,
            request_id: crate::http::request_id::with_current(Text::new),
        }),
    };
    let resp = next.run(req).await;
    let Some(mut entry) = pending.entry.take() else {
        return resp;
    };
    if entry.what.entity_id.is_none()
        && matches!(entry.what.subtype, "create" | "update")
        && let Some((ty, id)) = resp
            .headers()
            .get(header::LOCATION)
            .or_else(|| resp.headers().get(header::CONTENT_LOCATION))
            .and_then(|v| v.to_str().ok())
            .and_then(located)
    {
        entry.what.entity_type = Some(Text::new(ty));
        entry.what.entity_id = Some(Text::new(id));
    }
    entry.status = resp.status().as_u16();
    entry.principal = resp.extensions().get::<Arc<Principal>>().cloned();
    entry.who = resp.extensions().get::<Who>().cloned();
    state.audit.record(entry).await;
    resp
}

/// An entry not recorded yet; recorded on drop if the request never finished.
struct Pending<'a> {
    audit: &'a Audit,
    entry: Option<Entry>,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if let Some(h) = &self.audit.queue
            && self.entry.is_some()
            && !h.0.push(&mut self.entry)
        {
            tracing::error!("the audit queue is full; the entry of an abandoned request is lost");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(m: &str, p: &str) -> Option<(&'static str, &'static str, Option<String>, Option<String>)> {
        let s = |t: Option<Text>| t.map(|t| t.as_str().to_owned());
        classify(&m.parse().expect("method"), p)
            .map(|i| (i.subtype, i.action, s(i.entity_type), s(i.entity_id)))
    }

    fn some(
        subtype: &'static str,
        action: &'static str,
        ty: Option<&str>,
        id: Option<&str>,
    ) -> Option<(&'static str, &'static str, Option<String>, Option<String>)> {
        Some((
            subtype,
            action,
            ty.map(str::to_owned),
            id.map(str::to_owned),
        ))
    }

    #[test]
    fn requests_map_to_restful_interactions() {
        let p = Some("Patient");
        assert_eq!(c("GET", "/fhir/Patient/1"), some("read", "R", p, Some("1")));
        assert_eq!(
            c("GET", "/fhir/Patient/1/_history/3"),
            some("vread", "R", p, Some("1"))
        );
        assert_eq!(
            c("GET", "/fhir/Patient/1/_history"),
            some("history-instance", "R", p, Some("1"))
        );
        assert_eq!(
            c("GET", "/fhir/Patient/_history"),
            some("history-type", "R", p, None)
        );
        assert_eq!(
            c("GET", "/fhir/_history"),
            some("history-system", "R", None, None)
        );
        assert_eq!(c("GET", "/fhir/Patient"), some("search-type", "E", p, None));
        assert_eq!(
            c("POST", "/fhir/Patient/_search"),
            some("search-type", "E", p, None)
        );
        assert_eq!(c("GET", "/fhir"), some("search-system", "E", None, None));
        assert_eq!(c("POST", "/fhir/"), some("batch", "E", None, None));
        assert_eq!(c("POST", "/fhir/Patient"), some("create", "C", p, None));
        assert_eq!(
            c("PUT", "/fhir/Patient/1"),
            some("update", "U", p, Some("1"))
        );
        assert_eq!(
            c("PATCH", "/fhir/Patient/1"),
            some("patch", "U", p, Some("1"))
        );
        assert_eq!(
            c("DELETE", "/fhir/Patient/1"),
            some("delete", "D", p, Some("1"))
        );
        assert_eq!(c("DELETE", "/fhir/Patient"), some("delete", "D", p, None));
        assert_eq!(
            c("GET", "/fhir/Observation/$lastn"),
            some("operation", "E", Some("Observation"), None)
        );
        assert_eq!(
            c("GET", "/fhir/Patient/1/$everything"),
            some("operation", "E", p, Some("1"))
        );
        assert_eq!(c("POST", "/auth/token"), some("token", "E", None, None));
        assert_eq!(c("POST", "/auth/authorize"), some("login", "E", None, None));
        assert_eq!(
            c("GET", "/auth/federated/callback"),
            some("login", "E", None, None)
        );
        assert_eq!(
            c("DELETE", "/auth/users/alice"),
            some("delete", "D", Some("user"), Some("alice"))
        );
        for public in [
            "/fhir/metadata",
            "/fhir/.well-known/smart-configuration",
            "/healthz",
            "/docs",
            "/auth/jwks",
        ] {
            assert_eq!(c("GET", public), None, "{public}");
        }
        assert_eq!(c("GET", "/auth/authorize"), None);
        assert_eq!(
            c("GET", "/fhir/Patient/1/_history/2/x/y"),
            some("unknown", "E", None, None)
        );
        assert_eq!(
            c("GET", "/auth/users/a/b/c/d"),
            some("unknown", "E", None, None)
        );
        assert_eq!(c("GET", "/docs/a/b/c/d/e/f"), None);
    }

    #[test]
    fn text_is_inline_up_to_64_bytes_and_cleaned() {
        let id = "a".repeat(64);
        assert!(matches!(Text::new(&id), Text::Inline(64, _)));
        assert_eq!(Text::new(&id).as_str(), id);
        let long = "é".repeat(40);
        assert!(matches!(Text::new(&long), Text::Heap(_)));
        assert_eq!(Text::new(&long).as_str(), long);
        assert_eq!(Text::new("a\u{0}b\nc").as_str(), "abc");
        assert_eq!(Text::new("").as_str(), "");
    }

    fn entry(n: usize) -> Entry {
        Entry {
            recorded: i64::try_from(n).unwrap_or_default(),
            what: rest("read", "R", Some("Patient"), Some(&format!("p{n}"))),
            status: 200,
            principal: None,
            who: None,
            address: None,
            request_id: Some(Text::new("r")),
        }
    }

    /// A migrated SQLite store in a fresh temporary directory (removed by the caller).
    async fn sqlite_store(name: &str) -> (Store, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("vb-audit-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let url = format!("sqlite://{}/t.db", dir.display());
        let store = Store::connect(&url, &Default::default())
            .await
            .expect("store");
        store.migrate().await.expect("migrate");
        (store, dir)
    }

    /// More entries than the queue holds: the ones beyond wait for room instead of being
    /// dropped, a flush returns once all are written, and the writer stops with the last handle.
    #[tokio::test]
    async fn a_full_queue_makes_requests_wait_and_loses_nothing() {
        let (store, dir) = sqlite_store("queue").await;
        let audit = Audit::start(store.clone());
        let n = QUEUE + 500;
        let senders: Vec<_> = (0..4)
            .map(|t| {
                let audit = audit.clone();
                tokio::spawn(async move {
                    for i in (t..n).step_by(4) {
                        audit.record(entry(i)).await;
                    }
                })
            })
            .collect();
        for s in senders {
            s.await.expect("sender");
        }
        audit.flush().await;
        let rows = store.audit_count(&[]).await.expect("count");
        assert_eq!(rows, i64::try_from(n).expect("n"));
        let queue = Arc::downgrade(&audit.queue.as_ref().expect("enabled").0);
        drop(audit);
        for _ in 0..100 {
            if queue.strong_count() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(queue.strong_count(), 0, "the writer is still running");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Rows of one verified caller share an agent id whether found by the principal's address
    /// or by its key; another caller gets another.
    #[tokio::test]
    async fn rows_name_each_caller_by_its_own_agent() {
        let (store, dir) = sqlite_store("agents").await;
        let principal = |client: &str| {
            Arc::new(Principal {
                client_id: client.into(),
                subject: client.into(),
                role: crate::auth::Role::Customer,
                organization: Some("o1".into()),
                scopes: vec![],
                patient: None,
                token_id: "t".into(),
                expires_at: 0,
                issuer: None,
            })
        };
        let (a, b) = (principal("a"), principal("b"));
        let callers = [
            Some(a.clone()),
            Some(a.clone()),
            Some(b),
            Some(principal("a")),
            None,
        ];
        let entries: Vec<Entry> = callers
            .into_iter()
            .enumerate()
            .map(|(i, p)| Entry {
                principal: p,
                ..entry(i)
            })
            .collect();
        let mut dicts = Dictionaries::default();
        for _ in 0..2 {
            let agents: Vec<Option<i32>> = dicts
                .rows(&store, &entries)
                .await
                .expect("rows")
                .iter()
                .map(|r| r.agent)
                .collect();
            assert!(agents[0].is_some() && agents[2].is_some(), "{agents:?}");
            assert_eq!(agents[1], agents[0]);
            assert_ne!(agents[2], agents[0]);
            assert_eq!(agents[3], agents[0], "the same caller by key");
            assert_eq!(agents[4], None);
        }
        assert_eq!(dicts.principals.len(), 3);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn created_resources_are_found_from_the_location() {
        assert_eq!(
            located("http://h/fhir/Observation/abc/_history/1"),
            Some(("Observation", "abc"))
        );
        assert_eq!(located("/elsewhere"), None);
    }

    #[test]
    fn token_responses_name_the_caller() {
        use base64::Engine as _;
        let b64 =
            |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        let token = format!(
            "{}.{}.sig",
            b64(&serde_json::json!({"alg": "RS256"})),
            b64(
                &serde_json::json!({"client_id": "c1", "sub": "c1", "role": "customer", "org": "o1"})
            )
        );
        let w = Who::from_token_response(&serde_json::json!({"access_token": token})).expect("who");
        assert_eq!(w.client_id.as_deref(), Some("c1"));
        assert_eq!(w.role.as_deref(), Some("customer"));
        assert_eq!(w.organization.as_deref(), Some("o1"));
    }
}
