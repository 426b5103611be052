//! The client loops: each worker owns one connection's worth of load and
//! issues its next request as soon as the previous response is fully read
//! (closed loop), until the end of the window.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use reqwest::{Url, header};

use super::Ctx;
use super::fhir::{SearchExpect, observation_json, patient_json};
use super::http::{Failure, content_type_fhir, prefer_minimal, send, send_search};
use super::stats::{ErrKind, Recorder};
use super::util::{Clock, Rng};

/// Warm-up runs from the spawn until `measure_start`, the timed phase until `end`.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub measure_start: Instant,
    pub end: Instant,
}

#[derive(Debug)]
pub struct WorkerOut {
    pub rec: Recorder,
    /// When the worker's last response arrived: the scenario's elapsed time
    /// runs until the slowest worker is done, as in-flight requests at `end`
    /// are still counted.
    pub finished: Instant,
    /// The worker stopped early because its pool of targets ran out.
    pub exhausted: bool,
}

impl WorkerOut {
    fn done(rec: Recorder, exhausted: bool) -> anyhow::Result<Self> {
        Ok(Self {
            rec,
            finished: Instant::now(),
            exhausted,
        })
    }
}

/// Records the outcome of a request started at `started` (latency is taken
/// now, so call this right after `send` returns) and hands back the created
/// id, if any. Connection failures get a short pause: without one a worker
/// facing a refused port spins and steals CPU from the server it shares the
/// machine with.
async fn record(
    rec: &mut Recorder,
    op: usize,
    started: Instant,
    res: Result<Option<String>, Failure>,
) -> Result<Option<String>, ErrKind> {
    let latency = started.elapsed();
    match res {
        Ok(id) => {
            rec.ok(op, started, latency);
            Ok(id)
        }
        Err(f) => {
            rec.err(op, started, f.kind, &f.detail);
            if f.kind == ErrKind::Connect {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(f.kind)
        }
    }
}

/// A heart rate in 50..=120 /min.
pub fn random_bpm(rng: &mut Rng) -> u32 {
    50 + rng.below(71) as u32
}

/// A new heart-rate Observation for a random Patient of `patients`.
pub fn random_observation(rng: &mut Rng, clock: &mut Clock, patients: &[String]) -> String {
    let patient = patients
        .get(rng.below(patients.len()))
        .map_or("", String::as_str);
    observation_json(None, patient, clock.now(), random_bpm(rng))
}

/// GET `Observation/{id}` of uniformly random seeded Observations.
pub async fn read(ctx: Arc<Ctx>, urls: Arc<Vec<Url>>, win: Window) -> anyhow::Result<WorkerOut> {
    let mut rec = Recorder::new(win.measure_start, 1)?;
    let mut rng = Rng::from_entropy();
    let n = urls.len();
    while n > 0 && Instant::now() < win.end {
        let url = urls[rng.below(n)].clone();
        let started = Instant::now();
        let res = send(ctx.http.get(url), None).await;
        let _ = record(&mut rec, 0, started, res).await;
    }
    WorkerOut::done(rec, false)
}

/// POST heart-rate Observations for random seeded Patients.
pub async fn create(
    ctx: Arc<Ctx>,
    patients: Arc<Vec<String>>,
    win: Window,
) -> anyhow::Result<WorkerOut> {
    let mut rec = Recorder::new(win.measure_start, 1)?;
    let mut rng = Rng::from_entropy();
    let mut clock = Clock::default();
    let url = ctx.url("Observation")?;
    let n = patients.len();
    while n > 0 && Instant::now() < win.end {
        let body = random_observation(&mut rng, &mut clock, &patients);
        let req = ctx
            .http
            .post(url.clone())
            .header(header::CONTENT_TYPE, content_type_fhir())
            .header("Prefer", prefer_minimal())
            .body(body);
        let started = Instant::now();
        let res = send(req, None).await;
        let _ = record(&mut rec, 0, started, res).await;
    }
    WorkerOut::done(rec, false)
}

/// A seeded Observation owned by one update worker.
#[derive(Debug, Clone)]
pub struct UpdateTarget {
    pub url: Url,
    pub id: String,
    pub patient: String,
    pub bpm: u32,
}

/// PUT the worker's own Observations in turn, each time with a different value.
pub async fn update(
    ctx: Arc<Ctx>,
    mut targets: Vec<UpdateTarget>,
    win: Window,
) -> anyhow::Result<WorkerOut> {
    let mut rec = Recorder::new(win.measure_start, 1)?;
    let mut rng = Rng::from_entropy();
    let mut clock = Clock::default();
    let mut i = 0;
    while !targets.is_empty() && Instant::now() < win.end {
        let n = targets.len();
        let t = &mut targets[i % n];
        i += 1;
        // Any of the 70 other values in 50..=120, so the value really changes.
        t.bpm = 50 + (t.bpm.saturating_sub(50) + 1 + rng.below(70) as u32) % 71;
        let body = observation_json(Some(&t.id), &t.patient, clock.now(), t.bpm);
        let req = ctx
            .http
            .put(t.url.clone())
            .header(header::CONTENT_TYPE, content_type_fhir())
            .body(body);
        let started = Instant::now();
        let res = send(req, None).await;
        let _ = record(&mut rec, 0, started, res).await;
    }
    WorkerOut::done(rec, false)
}

/// DELETE pre-created Observations; workers take the next one from a shared
/// cursor so the pool is never deleted twice and all workers run dry together.
pub async fn delete(
    ctx: Arc<Ctx>,
    pool: Arc<Vec<Url>>,
    cursor: Arc<AtomicUsize>,
    win: Window,
) -> anyhow::Result<WorkerOut> {
    let mut rec = Recorder::new(win.measure_start, 1)?;
    while Instant::now() < win.end {
        let Some(url) = pool.get(cursor.fetch_add(1, Ordering::Relaxed)) else {
            return WorkerOut::done(rec, true);
        };
        let req = ctx.http.delete(url.clone());
        let started = Instant::now();
        let res = send(req, None).await;
        let _ = record(&mut rec, 0, started, res).await;
    }
    WorkerOut::done(rec, false)
}

/// Operation slots of the mixed scenario (see `Scenario::ops`).
const MIXED_CREATE: usize = 0;
const MIXED_READ: usize = 1;
const MIXED_UPDATE: usize = 2;

/// create → read → update → read of a fresh Patient, over and over.
pub async fn mixed(ctx: Arc<Ctx>, tag: String, win: Window) -> anyhow::Result<WorkerOut> {
    let mut rec = Recorder::new(win.measure_start, 3)?;
    let collection = ctx.url("Patient")?;
    let mut rev: u64 = 0;
    'cycle: while Instant::now() < win.end {
        rev += 1;
        let req = ctx
            .http
            .post(collection.clone())
            .header(header::CONTENT_TYPE, content_type_fhir())
            .header("Prefer", ctx.prefer_create.clone())
            .body(patient_json(None, &tag, rev));
        let started = Instant::now();
        let res = send(req, Some("Patient")).await;
        let Ok(Some(id)) = record(&mut rec, MIXED_CREATE, started, res).await else {
            continue;
        };
        let url = ctx.url(&format!("Patient/{id}"))?;
        for op in [MIXED_READ, MIXED_UPDATE, MIXED_READ] {
            if Instant::now() >= win.end {
                break 'cycle;
            }
            let req = if op == MIXED_UPDATE {
                rev += 1;
                ctx.http
                    .put(url.clone())
                    .header(header::CONTENT_TYPE, content_type_fhir())
                    .body(patient_json(Some(&id), &tag, rev))
            } else {
                ctx.http.get(url.clone())
            };
            let started = Instant::now();
            let res = send(req, None).await;
            let _ = record(&mut rec, op, started, res).await;
        }
    }
    WorkerOut::done(rec, false)
}

/// One timed search operation: a request is a GET of one of `urls`, picked
/// at random (one URL per patient or organization, built before the warm-up).
#[derive(Debug)]
pub struct SearchOp {
    pub urls: Vec<Url>,
    pub expect: SearchExpect,
}

/// GET searches; with several operations the worker takes them in turn, so
/// each gets the same share of the requests.
pub async fn search(
    ctx: Arc<Ctx>,
    ops: Arc<Vec<SearchOp>>,
    win: Window,
) -> anyhow::Result<WorkerOut> {
    let mut rec = Recorder::new(win.measure_start, ops.len())?;
    let mut rng = Rng::from_entropy();
    let mut turn = 0usize;
    while Instant::now() < win.end {
        let slot = turn % ops.len().max(1);
        turn = turn.wrapping_add(1);
        let Some(op) = ops.get(slot) else { break };
        let Some(url) = op.urls.get(rng.below(op.urls.len())) else {
            break;
        };
        let req = ctx.http.get(url.clone());
        let started = Instant::now();
        let res = send_search(req, op.expect).await.map(|_| None);
        let _ = record(&mut rec, slot, started, res).await;
    }
    WorkerOut::done(rec, false)
}
