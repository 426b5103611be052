//! `vitalbridge bench-subscriptions`: write-to-receiver latency of Subscription notifications
//! (issue 6, item 5: 1,000 active subscriptions, 200 writes/s). It starts its own webhook
//! receiver, creates one Patient and one rest-hook Subscription per patient
//! (`Observation?subject=Patient/{id}`, payload JSON, so each write matches exactly one
//! subscription among all of them), then writes Observations at a fixed rate (open loop: a
//! slow answer does not slow the writes) to random patients. A notification's latency runs from
//! the moment its write was sent to the moment the receiver has the notification.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use super::ingest::put;
use super::stats::fmt_ms;
use crate::progress::Progress;

#[derive(Debug, Clone, clap::Args)]
pub struct SubscriptionArgs {
    #[command(flatten)]
    pub server: super::ingest::ServerArgs,
    /// Active subscriptions (one per patient)
    #[arg(long, default_value_t = 1000)]
    pub subscriptions: usize,
    /// Observations written per second
    #[arg(long, default_value_t = 200)]
    pub rate: u32,
    /// Seconds measured, after the warm-up
    #[arg(long, default_value_t = 30)]
    pub duration: u64,
    /// Seconds of writes before the measurement starts (not measured)
    #[arg(long, default_value_t = 5)]
    pub warmup: u64,
    /// Where the receiver listens; the server must reach it there
    #[arg(long, default_value = "127.0.0.1:0")]
    pub receiver: String,
}

/// When each notified Observation arrived.
type Arrivals = Arc<Mutex<HashMap<String, Instant>>>;

/// A write: the Observation's id, when it was sent, how long it took, whether it counts.
type Sent = (String, Instant, Duration, bool);

pub async fn run(args: SubscriptionArgs) -> anyhow::Result<()> {
    if args.subscriptions == 0 || args.rate == 0 {
        bail!("--subscriptions and --rate must be at least 1");
    }
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(30))
        .no_proxy()
        .build()?;
    let (origin, admin) = args.server.admin(&http).await?;
    let arrivals: Arrivals = Arc::default();
    let listener = tokio::net::TcpListener::bind(&args.receiver)
        .await
        .with_context(|| format!("cannot listen on {}", args.receiver))?;
    let hook = format!("http://{}/hook", listener.local_addr()?);
    let app = {
        let arrivals = arrivals.clone();
        axum::Router::new().route(
            "/hook/{ty}/{id}",
            axum::routing::any(
                move |axum::extract::Path((_, id)): axum::extract::Path<(String, String)>| {
                    let arrivals = arrivals.clone();
                    async move {
                        let now = Instant::now();
                        arrivals.lock().map(|mut a| a.insert(id, now)).ok();
                        axum::http::StatusCode::OK
                    }
                },
            ),
        )
    };
    tokio::spawn(async move { axum::serve(listener, app).await });

    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let started = Instant::now();
    let patients: Vec<String> = (0..args.subscriptions)
        .map(|i| format!("bs-{run}-{i}"))
        .collect();
    let setup = Arc::new((http.clone(), origin.clone(), admin.clone(), hook.clone()));
    let progress = Arc::new(Progress::new(
        "creating subscriptions",
        patients.len() as u64,
        "patients",
    ));
    let mut tasks = tokio::task::JoinSet::new();
    for chunk in patients.chunks(patients.len().div_ceil(8)) {
        let chunk = chunk.to_vec();
        let (setup, progress) = (setup.clone(), progress.clone());
        tasks.spawn(async move {
            let (http, origin, admin, hook) = &*setup;
            for p in chunk {
                put(
                    http,
                    origin,
                    admin,
                    &format!("Patient/{p}"),
                    &json!({
                        "resourceType": "Patient", "id": p, "name": [{"family": "Bench"}]
                    }),
                )
                .await?;
                put(
                    http,
                    origin,
                    admin,
                    &format!("Subscription/{p}"),
                    &json!({
                        "resourceType": "Subscription", "id": p, "status": "requested",
                        "reason": "bench", "criteria": format!("Observation?subject=Patient/{p}"),
                        "channel": {"type": "rest-hook", "endpoint": hook,
                                    "payload": "application/fhir+json"}
                    }),
                )
                .await?;
                progress.inc(1);
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    progress.finish();
    // Every subscription active before the clock starts.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let r: Value = http
            .get(format!(
                "{origin}/fhir/Subscription?status=active&_summary=count"
            ))
            .bearer_auth(&admin)
            .send()
            .await?
            .json()
            .await?;
        let active = r["total"].as_u64().unwrap_or(0) as usize;
        if active >= args.subscriptions {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "only {active} of {} subscriptions became active",
                args.subscriptions
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "set up {} patients and subscriptions in {:.1} s; writing {}/s for {} s after {} s warm-up",
        args.subscriptions,
        started.elapsed().as_secs_f64(),
        args.rate,
        args.duration,
        args.warmup
    );

    // Open loop: one write every 1/rate s, whatever the answers do.
    let sent: Arc<Mutex<Vec<Sent>>> = Arc::default();
    let measure_from = Instant::now() + Duration::from_secs(args.warmup);
    let end = measure_from + Duration::from_secs(args.duration);
    let mut tick = tokio::time::interval(Duration::from_secs(1) / args.rate);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut writes = tokio::task::JoinSet::new();
    let mut n: u64 = 0;
    while Instant::now() < end {
        tick.tick().await;
        n += 1;
        let p = patients[(n as usize * 7919) % patients.len()].clone();
        let (http, origin, admin, sent) =
            (http.clone(), origin.clone(), admin.clone(), sent.clone());
        writes.spawn(async move {
            let at = Instant::now();
            let body = json!({
                "resourceType": "Observation", "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                "subject": {"reference": format!("Patient/{p}")},
                "effectiveDateTime": "2026-12-01T08:00:00Z",
                "valueQuantity": {"value": 60 + n % 40, "unit": "/min",
                                  "system": "http://unitsofmeasure.org", "code": "/min"}
            });
            let r = http
                .post(format!("{origin}/fhir/Observation"))
                .bearer_auth(&admin)
                .header("content-type", "application/fhir+json")
                .body(body.to_string())
                .send()
                .await;
            let took = at.elapsed();
            if let Ok(r) = r
                && r.status().is_success()
                && let Ok(v) = r.json::<Value>().await
                && let Some(id) = v["id"].as_str()
            {
                sent.lock()
                    .map(|mut s| s.push((id.to_owned(), at, took, at >= measure_from)))
                    .ok();
            }
        });
    }
    while writes.join_next().await.is_some() {}
    let wall = end.duration_since(measure_from);
    // Stragglers get ten seconds.
    let grace = Instant::now() + Duration::from_secs(10);
    let sent = sent.lock().map(|s| s.clone()).unwrap_or_default();
    let measured: Vec<_> = sent.iter().filter(|s| s.3).collect();
    loop {
        let arrived = arrivals.lock().map(|a| a.len()).unwrap_or(0);
        if arrived >= sent.len() || Instant::now() > grace {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let arrivals = arrivals.lock().map(|a| a.clone()).unwrap_or_default();
    let mut write_us: Vec<u64> = measured.iter().map(|s| s.2.as_micros() as u64).collect();
    let mut notify_us: Vec<u64> = measured
        .iter()
        .filter_map(|s| {
            arrivals
                .get(&s.0)
                .map(|a| a.duration_since(s.1).as_micros() as u64)
        })
        .collect();
    let missing = measured.len() - notify_us.len();
    write_us.sort_unstable();
    notify_us.sort_unstable();
    let pct = |v: &[u64], p: f64| -> Option<u64> {
        (!v.is_empty()).then(|| v[((v.len() - 1) as f64 * p).round() as usize])
    };
    println!(
        "subscriptions {} | writes {} in {:.0} s = {:.1}/s | write p50 {} p99 {} | \
         write-to-receiver p50 {} p95 {} p99 {} max {} | not arrived {}",
        args.subscriptions,
        measured.len(),
        wall.as_secs_f64(),
        measured.len() as f64 / wall.as_secs_f64(),
        fmt_ms(pct(&write_us, 0.5)),
        fmt_ms(pct(&write_us, 0.99)),
        fmt_ms(pct(&notify_us, 0.5)),
        fmt_ms(pct(&notify_us, 0.95)),
        fmt_ms(pct(&notify_us, 0.99)),
        fmt_ms(notify_us.last().copied()),
        missing
    );
    Ok(())
}
