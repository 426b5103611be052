//! Creating the resources the scenarios work on, before anything is timed.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::{StreamExt as _, TryStreamExt as _, stream};
use reqwest::header::{self, HeaderValue};

use super::Ctx;
use super::fhir::{ids_from_transaction_response, patient_json, transaction_bundle};
use super::http::{
    Bearer as _, Failure, content_type_fhir, prefer_minimal, prefer_representation, send,
};
use super::util::{Clock, Rng};
use super::workers::random_observation;
use crate::progress::Progress;

/// Entries per transaction Bundle.
const BUNDLE_SIZE: usize = 100;
/// Bundles in flight at once: each is a large unit of work for the server, and
/// a few in parallel already keep it busy.
const BUNDLE_CONCURRENCY: usize = 4;

fn failure(what: &str, f: Failure) -> anyhow::Error {
    anyhow::anyhow!("{what}: {}: {}", f.kind, f.detail)
}

/// Creates one Patient to learn how this server reports the id of a created
/// resource. Returns the `Prefer` value to send on creates (`return=minimal`
/// when `Location` or the minimal body carries the id, otherwise
/// `return=representation`) and the new Patient's id.
pub async fn probe_create(ctx: &Ctx, tag: &str) -> anyhow::Result<(HeaderValue, String)> {
    let url = ctx.url("Patient")?;
    let mut last = None;
    for prefer in [prefer_minimal(), prefer_representation()] {
        let req = ctx
            .http
            .post(url.clone())
            .header(header::CONTENT_TYPE, content_type_fhir())
            .header("Prefer", prefer.clone())
            .body(patient_json(None, tag, 0));
        match send(req, Some("Patient")).await {
            Ok(Some(id)) => return Ok((prefer, id)),
            Ok(None) => {}
            Err(f) if f.kind == super::stats::ErrKind::NoId => last = Some(f),
            Err(f) => return Err(failure(&format!("POST {url} (probe create)"), f)),
        }
    }
    match last {
        Some(f) => Err(failure(
            "the server returned no id for a created Patient",
            f,
        )),
        None => bail!("the server returned no id for a created Patient"),
    }
}

/// How the seed resources were created, for the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeedMethod {
    Untried,
    Transaction,
    Post,
}

/// Creates resources in bulk: `transaction` Bundles of [`BUNDLE_SIZE`] when the
/// server accepts them, concurrent single POSTs otherwise.
pub struct Seeder<'a> {
    ctx: &'a Ctx,
    pub method: SeedMethod,
    /// Why transactions were given up, if they were.
    pub tx_rejection: Option<String>,
}

impl<'a> Seeder<'a> {
    pub fn new(ctx: &'a Ctx, allow_transactions: bool) -> Self {
        Self {
            ctx,
            method: if allow_transactions {
                SeedMethod::Untried
            } else {
                SeedMethod::Post
            },
            tx_rejection: None,
        }
    }

    /// Creates `bodies` (JSON resources of `resource_type`) and returns their
    /// ids in the same order.
    pub async fn create_many(
        &mut self,
        resource_type: &'static str,
        bodies: Vec<String>,
    ) -> anyhow::Result<Vec<String>> {
        let progress = Progress::new(
            format!("seeding {resource_type}"),
            bodies.len() as u64,
            "resources",
        );
        let ids = self.create_chunks(resource_type, bodies, &progress).await;
        progress.finish();
        ids
    }

    async fn create_chunks(
        &mut self,
        resource_type: &'static str,
        bodies: Vec<String>,
        progress: &Progress,
    ) -> anyhow::Result<Vec<String>> {
        let mut chunks: Vec<Vec<String>> = Vec::new();
        let mut it = bodies.into_iter().peekable();
        while it.peek().is_some() {
            chunks.push(it.by_ref().take(BUNDLE_SIZE).collect());
        }
        let mut ids = Vec::new();
        let mut rest = chunks.into_iter();
        if self.method == SeedMethod::Untried {
            // The first bundle decides: a server without transaction support
            // (or with a smaller body limit) answers 4xx and we switch to POSTs.
            let Some(first) = rest.next() else {
                return Ok(ids);
            };
            match self.transaction(resource_type, &first).await {
                Ok(got) => {
                    self.method = SeedMethod::Transaction;
                    progress.inc(got.len() as u64);
                    ids.extend(got);
                }
                Err(e) => {
                    self.method = SeedMethod::Post;
                    self.tx_rejection = Some(format!("{e:#}"));
                    ids.extend(post_many(self.ctx, resource_type, first, progress).await?);
                }
            }
        }
        match self.method {
            SeedMethod::Transaction => {
                let this = &*self;
                let got: Vec<Vec<String>> = stream::iter(rest)
                    .map(|chunk| async move {
                        match this.transaction(resource_type, &chunk).await {
                            Ok(ids) => {
                                progress.inc(ids.len() as u64);
                                Ok(ids)
                            }
                            // A failed transaction created nothing, so the
                            // chunk can safely be retried as single POSTs.
                            Err(_) => post_many(this.ctx, resource_type, chunk, progress).await,
                        }
                    })
                    .buffered(BUNDLE_CONCURRENCY)
                    .try_collect()
                    .await?;
                ids.extend(got.into_iter().flatten());
            }
            SeedMethod::Post | SeedMethod::Untried => {
                for chunk in rest {
                    ids.extend(post_many(self.ctx, resource_type, chunk, progress).await?);
                }
            }
        }
        Ok(ids)
    }

    async fn transaction(
        &self,
        resource_type: &'static str,
        bodies: &[String],
    ) -> anyhow::Result<Vec<String>> {
        let bundle = transaction_bundle(resource_type, bodies);
        let resp = self
            .ctx
            .http
            .post(self.ctx.base_url()?)
            .header(header::CONTENT_TYPE, content_type_fhir())
            .body(bundle)
            .bearer()
            .send()
            .await
            .context("POST transaction Bundle")?;
        let status = resp.status();
        let body = resp.bytes().await.context("reading transaction response")?;
        if !status.is_success() {
            bail!(
                "transaction Bundle rejected with {status}: {}",
                super::stats::snippet(&String::from_utf8_lossy(&body), 200)
            );
        }
        ids_from_transaction_response(&body, resource_type, bodies.len()).with_context(|| {
            format!("transaction response ({status}) without one {resource_type} id per entry")
        })
    }
}

/// Concurrent single POSTs (one per worker connection), ids in input order.
pub async fn post_many(
    ctx: &Ctx,
    resource_type: &'static str,
    bodies: Vec<String>,
    progress: &Progress,
) -> anyhow::Result<Vec<String>> {
    let url = ctx.url(resource_type)?;
    stream::iter(bodies)
        .map(|body| {
            let req = ctx
                .http
                .post(url.clone())
                .header(header::CONTENT_TYPE, content_type_fhir())
                .header("Prefer", ctx.prefer_create.clone())
                .body(body);
            let url = &url;
            async move {
                match send(req, Some(resource_type)).await {
                    Ok(Some(id)) => {
                        progress.inc(1);
                        Ok(id)
                    }
                    Ok(None) => bail!("POST {url}: no id returned"),
                    Err(f) => Err(failure(&format!("POST {url}"), f)),
                }
            }
        })
        .buffered(ctx.clients)
        .try_collect()
        .await
}

/// POSTs Observations from one loop per client for `span` (at most `max`)
/// and returns their ids with the achieved rate: a steady-state create rate,
/// unlike a short burst that would mostly measure connection set-up.
pub async fn timed_creates(
    ctx: &Arc<Ctx>,
    patients: &Arc<Vec<String>>,
    span: Duration,
    max: usize,
) -> anyhow::Result<(Vec<String>, f64)> {
    let started = Instant::now();
    let end = started + span;
    let taken = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..ctx.clients)
        .map(|_| {
            let (ctx, patients, taken) = (ctx.clone(), patients.clone(), taken.clone());
            tokio::spawn(async move {
                let url = ctx.url("Observation")?;
                let mut rng = Rng::from_entropy();
                let mut clock = Clock::default();
                let mut ids = Vec::new();
                while Instant::now() < end && taken.fetch_add(1, Ordering::Relaxed) < max {
                    let req = ctx
                        .http
                        .post(url.clone())
                        .header(header::CONTENT_TYPE, content_type_fhir())
                        .header("Prefer", ctx.prefer_create.clone())
                        .body(random_observation(&mut rng, &mut clock, &patients));
                    match send(req, Some("Observation")).await {
                        Ok(Some(id)) => ids.push(id),
                        Ok(None) => bail!("POST {url}: no id returned"),
                        Err(f) => return Err(failure(&format!("POST {url}"), f)),
                    }
                }
                Ok(ids)
            })
        })
        .collect();
    let mut ids = Vec::new();
    for h in handles {
        ids.extend(h.await.context("create task panicked")??);
    }
    let rate = ids.len() as f64 / started.elapsed().as_secs_f64().max(1e-6);
    Ok((ids, rate))
}
