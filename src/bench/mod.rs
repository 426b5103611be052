//! `vitalbridge bench`: a closed-loop load generator for any running FHIR R4
//! server. It seeds Patients and Observations, then runs each scenario with N
//! concurrent clients (one keep-alive connection each) for a fixed time after
//! a warm-up, and reports throughput and latency percentiles of the 2xx
//! responses, with failures counted by status.
//!
//! Searches need a realistic volume of data, more than a run can create in
//! passing, so they work in two steps (see `rpm`): `--scenarios rpm-seed`
//! writes a remote-patient-monitoring data set with fixed ids once (a no-op
//! when the server already has it, a resume when it was interrupted), and
//! `--scenarios search` (search-pcd, search-pc, lastn, code-total,
//! search-org) queries it, with the same `--rpm-*` flags:
//!
//! ```text
//! vitalbridge bench --scenarios rpm-seed --rpm-patients 1000 --rpm-per-patient 1000
//! vitalbridge bench --scenarios search --rpm-patients 1000 --rpm-per-patient 1000 --clients 16
//! ```
//!
//! The generator usually shares its CPUs with the server and its database,
//! so the hot loops avoid avoidable work: bodies are filled into fixed JSON
//! templates, URLs are parsed once, responses are drained without being
//! parsed unless an id is needed, and statistics are per worker (no locks)
//! and merged at the end.

mod fhir;
mod http;
pub mod ingest;
mod rpm;
mod scenario;
mod seed;
mod stats;
pub mod subscriptions;
mod util;
mod workers;

use std::future::Future;
use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use reqwest::Url;
use reqwest::header::HeaderValue;
use serde::Serialize;

use self::scenario::Scenario;

use self::seed::{SeedMethod, Seeder};
use self::stats::{JsonScenario, OpStats, ScenarioResult};
use self::workers::{UpdateTarget, Window, WorkerOut};

#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// FHIR base URL, e.g. http://127.0.0.1:8080/fhir
    #[arg(long, default_value = "http://127.0.0.1:8080/fhir")]
    pub base_url: String,
    /// Bearer token sent as Authorization header (optional)
    #[arg(long, env = "VB_BENCH_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Client id for the client_credentials grant: the bench obtains its tokens from the
    /// server's token endpoint (named by its SMART configuration) and renews them before expiry
    #[arg(
        long,
        env = "VB_BENCH_CLIENT_ID",
        requires = "client_secret",
        conflicts_with = "token"
    )]
    pub client_id: Option<String>,
    /// Client secret for --client-id
    #[arg(
        long,
        env = "VB_BENCH_CLIENT_SECRET",
        hide_env_values = true,
        requires = "client_id"
    )]
    pub client_secret: Option<String>,
    /// Concurrent clients (connections)
    #[arg(long, default_value_t = 32)]
    pub clients: usize,
    /// Seconds per scenario (after warm-up)
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Scenarios to run, comma separated: read,create,update,delete,mixed (or all);
    /// rpm-seed writes the remote-monitoring data set (untimed; runs first);
    /// search-pcd,search-pc,lastn,code-total,search-org (or search) query it
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "read,create,update,delete,mixed"
    )]
    pub scenarios: Vec<String>,
    /// Write the results as JSON to this file too
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Warm-up seconds before each scenario's timed phase (not measured)
    #[arg(long, default_value_t = 2)]
    pub warmup: u64,
    /// Observations to seed for the read and update scenarios (raised to --clients if lower)
    #[arg(long, default_value_t = 2000)]
    pub seed_count: usize,
    /// Patients to seed as subjects of the Observations
    #[arg(long, default_value_t = 100)]
    pub seed_patients: usize,
    /// Upper bound of Observations pre-created for the delete scenario
    #[arg(long, default_value_t = 200_000)]
    pub delete_pool_max: usize,
    /// Per-request timeout in seconds
    #[arg(long, default_value_t = 30)]
    pub timeout: u64,
    /// Seed with single POSTs only, without trying transaction Bundles first
    #[arg(long)]
    pub no_transactions: bool,
    /// rpm-seed and searches: Patients in the data set (ids rpm-p00000, rpm-p00001, ...)
    #[arg(long, default_value_t = 1000)]
    pub rpm_patients: usize,
    /// rpm-seed and searches: vital-sign Observations per Patient, spread over the
    /// 365 days before the data set's end
    #[arg(long, default_value_t = 1000)]
    pub rpm_per_patient: usize,
    /// rpm-seed and searches: clinics (Organization) the Patients are spread over
    #[arg(long, default_value_t = 20)]
    pub rpm_orgs: usize,
    /// rpm-seed and searches: seed of the generated values (same flags, same resources)
    #[arg(long, default_value_t = 1)]
    pub rpm_rng_seed: u64,
    /// rpm-seed and searches: end of the data set's year, YYYY-MM-DD (UTC) or RFC 3339
    /// [default: the end recorded on the server by rpm-seed; for a first seeding,
    /// today 00:00 UTC]
    #[arg(long)]
    pub rpm_end: Option<String>,
    /// rpm-seed: resources per transaction Bundle
    #[arg(long, default_value_t = 500)]
    pub rpm_bundle_size: usize,
    /// rpm-seed: transaction Bundles in flight
    #[arg(long, default_value_t = 4)]
    pub rpm_concurrency: usize,
    /// rpm-seed: write every resource again even when the server has the complete data set
    #[arg(long)]
    pub rpm_reseed: bool,
    /// Clients of the code-total scenario (at most --clients): each of its searches
    /// counts matches across all Patients, a few in parallel already load the server
    #[arg(long, default_value_t = 4)]
    pub code_total_clients: usize,
}

/// What the workers share.
pub(crate) struct Ctx {
    http: reqwest::Client,
    /// Base URL without trailing slash.
    base: String,
    clients: usize,
    /// `Prefer` sent on creates whose id is needed: `return=minimal` unless
    /// the server then returns the id in neither `Location` nor the body.
    prefer_create: HeaderValue,
}

impl Ctx {
    fn url(&self, path: &str) -> anyhow::Result<Url> {
        let s = format!("{}/{path}", self.base);
        Url::parse(&s).with_context(|| format!("invalid URL {s}"))
    }

    fn base_url(&self) -> anyhow::Result<Url> {
        Url::parse(&self.base).with_context(|| format!("invalid base URL {}", self.base))
    }
}

/// A seeded Observation: its id, the index of its subject in the Patient
/// pool, and its heart rate.
struct SeededObs {
    id: String,
    patient: usize,
    bpm: u32,
}

/// Headroom of the delete pool over the expected number of DELETEs: deletes
/// are often cheaper than creates, whose rate sizes the pool.
const DELETE_POOL_HEADROOM: f64 = 2.0;

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let mut scenarios = scenario::parse_scenarios(&args.scenarios)?;
    // The searches need the data set, whatever the order given.
    if let Some(i) = scenarios.iter().position(|s| *s == Scenario::RpmSeed) {
        let seed = scenarios.remove(i);
        scenarios.insert(0, seed);
    }
    let rpm_opts = rpm::Options::from_args(&args)?;
    if args.clients == 0 {
        bail!("--clients must be at least 1");
    }
    if args.duration == 0 {
        bail!("--duration must be at least 1 second");
    }
    let base = args.base_url.trim_end_matches('/').to_string();
    let parsed = Url::parse(&base).with_context(|| format!("invalid --base-url {base:?}"))?;
    if parsed.scheme() != "http" {
        // reqwest is built without TLS: this is a loopback/LAN benchmark.
        bail!("--base-url must be plain http:// (got {base}); TLS is not built in");
    }
    let started_unix = util::unix_now();
    let ansi = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let http = http::build_client(
        args.clients,
        Duration::from_secs(args.timeout.max(1)),
        args.token.as_deref(),
    )?;

    if let (Some(id), Some(secret)) = (&args.client_id, &args.client_secret) {
        http::start_token_renewal(&http, &base, id, secret).await?;
    }
    let server = probe_metadata(&http, &base).await?;
    let timed = scenarios.iter().any(|s| *s != Scenario::RpmSeed);
    print_header(&args, &base, server.as_deref(), ansi, timed);

    // Tags the resources of this run (identifier values), so they can be
    // told apart from other data on a shared server.
    let run_tag = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let mut ctx = Ctx {
        http,
        base,
        clients: args.clients,
        prefer_create: http::prefer_minimal(),
    };
    // The probe creates a Patient: only for the CRUD scenarios, so the
    // searches' data set is not sprinkled with strays.
    let any_crud = scenarios.iter().any(|s| s.is_crud());
    let mut patients = Vec::new();
    if any_crud {
        let (prefer, first_patient) = seed::probe_create(&ctx, &format!("{run_tag}-seed")).await?;
        ctx.prefer_create = prefer;
        patients.push(first_patient);
    }
    let ctx = Arc::new(ctx);

    let mut seeder = Seeder::new(&ctx, !args.no_transactions);
    let mut observations: Vec<SeededObs> = Vec::new();
    if scenarios.iter().any(|s| s.needs_seeded_patients()) {
        let started = Instant::now();
        let n_patients = args.seed_patients.max(1);
        let bodies = (1..n_patients)
            .map(|i| fhir::patient_json(None, &format!("{run_tag}-seed"), i as u64))
            .collect();
        patients.extend(seeder.create_many("Patient", bodies).await?);
        if scenarios.iter().any(|s| s.needs_seeded_observations()) {
            // Each update worker needs at least one Observation of its own.
            let n_obs = args.seed_count.max(args.clients);
            observations = seed_observations(&mut seeder, &patients, n_obs).await?;
        }
        eprintln!(
            "seeded {} Patients and {} Observations in {:.1} s ({})",
            patients.len(),
            observations.len(),
            started.elapsed().as_secs_f64(),
            seed_method_label(&seeder)
        );
    }
    let patients = Arc::new(patients);

    let mut rpm_seed_report = None;
    let mut rpm_data = None;
    if scenarios.contains(&Scenario::RpmSeed) {
        let (data, report) = rpm::seed(&ctx, &rpm_opts).await?;
        rpm_data = Some(data);
        rpm_seed_report = Some(report);
    }
    if rpm_data.is_none() && scenarios.iter().any(|s| s.is_rpm_search()) {
        rpm_data = Some(rpm::dataset_for_search(&ctx, &rpm_opts).await?);
    }

    let mut results: Vec<ScenarioResult> = Vec::new();
    let mut create_rate: Option<f64> = None;
    for sc in scenarios {
        let result = match sc {
            Scenario::RpmSeed => continue,
            Scenario::SearchPcd
            | Scenario::SearchPc
            | Scenario::Lastn
            | Scenario::CodeTotal
            | Scenario::SearchOrg => {
                let data = rpm_data
                    .as_ref()
                    .context("the search scenarios need the rpm data set")?;
                let ops = Arc::new(rpm::search_ops(&ctx, data, sc)?);
                let clients = if sc == Scenario::CodeTotal {
                    args.code_total_clients.clamp(1, args.clients)
                } else {
                    args.clients
                };
                announce_with(sc, &args, clients);
                let mut r = run_workers(sc, &args, clients, |_, win| {
                    workers::search(ctx.clone(), ops.clone(), win)
                })
                .await?;
                r.notes.insert(0, rpm::search_note(data, sc));
                r
            }
            Scenario::Read => {
                let urls = observations
                    .iter()
                    .map(|o| ctx.url(&format!("Observation/{}", o.id)))
                    .collect::<anyhow::Result<Vec<_>>>()?;
                let urls = Arc::new(urls);
                announce(sc, &args);
                run_workers(sc, &args, args.clients, |_, win| {
                    workers::read(ctx.clone(), urls.clone(), win)
                })
                .await?
            }
            Scenario::Create => {
                announce(sc, &args);
                let r = run_workers(sc, &args, args.clients, |_, win| {
                    workers::create(ctx.clone(), patients.clone(), win)
                })
                .await?;
                create_rate = Some(r.total.summary(r.elapsed).rps);
                r
            }
            Scenario::Update => {
                let mut slices: Vec<Vec<UpdateTarget>> = vec![Vec::new(); args.clients];
                for (i, o) in observations.iter().enumerate() {
                    let patient = patients.get(o.patient).cloned().unwrap_or_default();
                    slices[i % args.clients].push(UpdateTarget {
                        url: ctx.url(&format!("Observation/{}", o.id))?,
                        id: o.id.clone(),
                        patient,
                        bpm: o.bpm,
                    });
                }
                let mut slices = slices.into_iter();
                announce(sc, &args);
                run_workers(sc, &args, args.clients, |_, win| {
                    workers::update(ctx.clone(), slices.next().unwrap_or_default(), win)
                })
                .await?
            }
            Scenario::Delete => {
                let pool = delete_pool(&ctx, &mut seeder, &patients, &args, create_rate).await?;
                let pool_len = pool.len();
                let pool = Arc::new(pool);
                let cursor = Arc::new(AtomicUsize::new(0));
                announce(sc, &args);
                let mut r = run_workers(sc, &args, args.clients, |_, win| {
                    workers::delete(ctx.clone(), pool.clone(), cursor.clone(), win)
                })
                .await?;
                r.notes.insert(
                    0,
                    format!(
                        "each DELETE removes one of {pool_len} Observations pre-created before the \
                         warm-up; their creation is not timed"
                    ),
                );
                r
            }
            Scenario::Mixed => {
                announce(sc, &args);
                run_workers(sc, &args, args.clients, |i, win| {
                    workers::mixed(ctx.clone(), format!("{run_tag}-mixed-{i}"), win)
                })
                .await?
            }
        };
        let s = result.total.summary(result.elapsed);
        eprintln!(
            "  {}: {} requests, {:.1} req/s, p99 {} ms, {} errors",
            sc,
            s.requests,
            s.rps,
            stats::fmt_ms(s.p99_us),
            s.errors
        );
        results.push(result);
    }

    if !results.is_empty() {
        print_results(&results, ansi);
    }
    if let Some(path) = &args.json {
        let report = JsonReport {
            tool: concat!("vitalbridge bench ", env!("CARGO_PKG_VERSION")),
            base_url: &ctx.base,
            server: server.as_deref(),
            started_unix,
            clients: args.clients,
            duration_s: args.duration,
            warmup_s: args.warmup,
            seed_method: any_crud.then(|| seed_method_label(&seeder)),
            rpm_seed: rpm_seed_report,
            scenarios: results.iter().map(JsonScenario::new).collect(),
        };
        write_json(path, &report)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// GETs `metadata` to fail fast on a wrong URL or a server that is down, and
/// returns `software.name version` from the CapabilityStatement if present.
async fn probe_metadata(http: &reqwest::Client, base: &str) -> anyhow::Result<Option<String>> {
    let url = format!("{base}/metadata");
    let resp = http
        .get(&url)
        .send()
        .await
        .with_context(|| format!("cannot reach the FHIR server at {url}"))?;
    if !resp.status().is_success() {
        eprintln!("warning: GET {url} returned {}", resp.status());
        return Ok(None);
    }
    let Ok(cs) = resp.json::<serde_json::Value>().await else {
        return Ok(None);
    };
    let software = cs.get("software");
    let field = |k: &str| software.and_then(|s| s.get(k)).and_then(|v| v.as_str());
    Ok(match (field("name"), field("version")) {
        (Some(n), Some(v)) => Some(format!("{n} {v}")),
        (Some(n), None) => Some(n.to_string()),
        _ => None,
    })
}

/// `timed`: whether any scenario is run for `--duration` (rpm-seed alone is not).
fn print_header(args: &BenchArgs, base: &str, server: Option<&str>, ansi: bool, timed: bool) {
    let title = "vitalbridge bench";
    if ansi {
        println!("\x1b[1m{title}\x1b[0m");
    } else {
        println!("{title}");
    }
    match server {
        Some(s) => println!("  server:   {base} ({s})"),
        None => println!("  server:   {base}"),
    }
    if timed {
        println!("  clients:  {}", args.clients);
        println!(
            "  duration: {} s per scenario, after {} s warm-up",
            args.duration, args.warmup
        );
    }
    // Piped stdout is block-buffered: show the header before the progress
    // lines on stderr, not after the whole run.
    let _ = std::io::stdout().flush();
}

fn announce(sc: Scenario, args: &BenchArgs) {
    announce_with(sc, args, args.clients);
}

fn announce_with(sc: Scenario, args: &BenchArgs, clients: usize) {
    eprintln!(
        "running {sc}: {} s warm-up + {} s with {clients} clients",
        args.warmup, args.duration
    );
}

fn seed_method_label(seeder: &Seeder<'_>) -> String {
    match (seeder.method, &seeder.tx_rejection) {
        (SeedMethod::Transaction, _) => "transaction Bundles of 100".to_string(),
        (_, Some(why)) => format!(
            "single POSTs; transaction refused: {}",
            stats::snippet(why, 160)
        ),
        _ => "single POSTs".to_string(),
    }
}

async fn seed_observations(
    seeder: &mut Seeder<'_>,
    patients: &[String],
    n: usize,
) -> anyhow::Result<Vec<SeededObs>> {
    let mut rng = util::Rng::from_entropy();
    let mut clock = util::Clock::default();
    let mut meta = Vec::with_capacity(n);
    let mut bodies = Vec::with_capacity(n);
    for i in 0..n {
        let patient = i % patients.len().max(1);
        let bpm = workers::random_bpm(&mut rng);
        let pid = patients.get(patient).map_or("", String::as_str);
        bodies.push(fhir::observation_json(None, pid, clock.now(), bpm));
        meta.push((patient, bpm));
    }
    let ids = seeder.create_many("Observation", bodies).await?;
    Ok(ids
        .into_iter()
        .zip(meta)
        .map(|(id, (patient, bpm))| SeededObs { id, patient, bpm })
        .collect())
}

/// Pre-creates the Observations the delete scenario removes, sized from the
/// measured create rate (the create scenario's, or one second of creates
/// that also go into the pool) so the workers are unlikely to run dry before
/// the end of the timed phase.
async fn delete_pool(
    ctx: &Arc<Ctx>,
    seeder: &mut Seeder<'_>,
    patients: &Arc<Vec<String>>,
    args: &BenchArgs,
    create_rate: Option<f64>,
) -> anyhow::Result<Vec<Url>> {
    let started = Instant::now();
    let cap = args.delete_pool_max.max(args.clients);
    let mut ids = Vec::new();
    let rate = match create_rate {
        Some(r) if r > 0.0 => r,
        _ => {
            eprintln!("delete: measuring the create rate for 1 s to size the pool ...");
            let (got, r) = seed::timed_creates(ctx, patients, Duration::from_secs(1), cap).await?;
            ids = got;
            r
        }
    };
    let expected = rate * (args.warmup + args.duration) as f64 * DELETE_POOL_HEADROOM;
    let target = (expected.ceil() as usize).max(args.clients * 2).min(cap);
    eprintln!("delete: pre-creating {target} Observations (create rate ≈ {rate:.0}/s) ...");
    if target > ids.len() {
        let mut rng = util::Rng::from_entropy();
        let mut clock = util::Clock::default();
        let bodies = (ids.len()..target)
            .map(|_| workers::random_observation(&mut rng, &mut clock, patients))
            .collect();
        ids.extend(seeder.create_many("Observation", bodies).await?);
    }
    eprintln!(
        "delete: pool of {} ready in {:.1} s",
        ids.len(),
        started.elapsed().as_secs_f64()
    );
    ids.iter()
        .map(|id| ctx.url(&format!("Observation/{id}")))
        .collect()
}

/// Spawns one worker per client over a common window, waits for all of
/// them and merges their statistics.
async fn run_workers<F, Fut>(
    sc: Scenario,
    args: &BenchArgs,
    clients: usize,
    mut make_worker: F,
) -> anyhow::Result<ScenarioResult>
where
    F: FnMut(usize, Window) -> Fut,
    Fut: Future<Output = anyhow::Result<WorkerOut>> + Send + 'static,
{
    let now = Instant::now();
    let measure_start = now + Duration::from_secs(args.warmup);
    let win = Window {
        measure_start,
        end: measure_start + Duration::from_secs(args.duration),
    };
    let handles: Vec<_> = (0..clients)
        .map(|i| tokio::spawn(make_worker(i, win)))
        .collect();

    let labels = sc.ops();
    let mut ops: Vec<OpStats> = labels
        .iter()
        .map(|_| OpStats::new())
        .collect::<anyhow::Result<_>>()?;
    let mut finished = measure_start;
    let mut first_error = None;
    let mut exhausted_at: Option<Instant> = None;
    for h in handles {
        let out = h.await.context("benchmark worker panicked")??;
        for (acc, s) in ops.iter_mut().zip(&out.rec.ops) {
            acc.merge(s)?;
        }
        finished = finished.max(out.finished);
        if first_error.is_none() {
            first_error = out.rec.first_error;
        }
        if out.exhausted {
            exhausted_at = Some(exhausted_at.map_or(out.finished, |t| t.min(out.finished)));
        }
    }
    let elapsed = finished.saturating_duration_since(measure_start);
    let mut total = OpStats::new()?;
    for s in &ops {
        total.merge(s)?;
    }
    let mut notes = Vec::new();
    if let Some(at) = exhausted_at {
        notes.push(if at <= measure_start {
            "the pool ran out during the warm-up, nothing was measured (raise --delete-pool-max)"
                .to_string()
        } else {
            format!(
                "the pool ran out {:.1} s into the timed phase; req/s is over {:.1} s, not {} s \
                 (raise --delete-pool-max)",
                at.saturating_duration_since(measure_start).as_secs_f64(),
                elapsed.as_secs_f64(),
                args.duration
            )
        });
    }
    Ok(ScenarioResult {
        name: sc.name(),
        clients,
        elapsed,
        ops: if labels.len() > 1 {
            labels.iter().copied().zip(ops).collect()
        } else {
            Vec::new()
        },
        total,
        notes,
        first_error,
    })
}

fn print_results(results: &[ScenarioResult], ansi: bool) {
    println!();
    print!("{}", stats::render_table(&stats::rows(results), ansi));
    println!();
    println!("requests, req/s and latencies count 2xx responses only; latency is from sending");
    println!("the request to reading the last byte of the response (closed loop, one request");
    println!("in flight per client).");
    for r in results {
        for note in &r.notes {
            println!("{}: {note}", r.name);
        }
    }
    for r in results {
        if r.total.errors.is_empty() {
            continue;
        }
        // Per-operation detail for multi-operation scenarios.
        let detail = if r.ops.is_empty() {
            stats::fmt_errors(&r.total.errors)
        } else {
            r.ops
                .iter()
                .filter(|(_, s)| !s.errors.is_empty())
                .map(|(label, s)| format!("{label}: {}", stats::fmt_errors(&s.errors)))
                .collect::<Vec<_>>()
                .join("; ")
        };
        println!("{} errors: {detail}", r.name);
        if let Some(first) = &r.first_error {
            println!("  first: {first}");
        }
    }
}

#[derive(Serialize)]
struct JsonReport<'a> {
    tool: &'static str,
    base_url: &'a str,
    server: Option<&'a str>,
    started_unix: u64,
    clients: usize,
    duration_s: u64,
    warmup_s: u64,
    /// How the CRUD scenarios' resources were created (absent without them).
    #[serde(skip_serializing_if = "Option::is_none")]
    seed_method: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rpm_seed: Option<rpm::SeedReport>,
    scenarios: Vec<JsonScenario>,
}

fn write_json(path: &std::path::Path, report: &JsonReport<'_>) -> anyhow::Result<()> {
    let mut text = serde_json::to_string_pretty(report).context("serializing the report")?;
    text.push('\n');
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}
