//! `vitalbridge bench-ingest`: hubs posting batches of blood-pressure readings to
//! `/ingest/hub` at once (issue 5, item 9: 8 hubs × 100 readings). It registers its own
//! organization, hub clients and Devices, and Patients with assigned cuffs, through the API as
//! the admin client, then each hub posts new readings back to back; the report is readings
//! stored per second and the latency of a batch.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine as _;
use serde_json::{Value, json};
use time::OffsetDateTime;

use super::stats::{OpStats, fmt_ms};
use crate::progress::Progress;

#[derive(Debug, Clone, clap::Args)]
pub struct IngestArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// Hubs posting at once, each with its own credentials
    #[arg(long, default_value_t = 8)]
    pub hubs: usize,
    /// Readings per batch
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// Cuffs (each with its Patient) per hub; a batch holds one reading of each in turn
    #[arg(long, default_value_t = 100)]
    pub devices_per_hub: usize,
    /// Seconds measured, after the warm-up
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Seconds the hubs post before the measurement starts (not measured)
    #[arg(long, default_value_t = 2)]
    pub warmup: u64,
}

/// The server a bench drives and the admin client that sets it up.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// The server's origin (scheme, host and port)
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub origin: String,
    /// An admin client (client_credentials) that sets the workload up
    #[arg(long, env = "VB_BENCH_CLIENT_ID")]
    pub client_id: String,
    /// The admin client's secret
    #[arg(long, env = "VB_BENCH_CLIENT_SECRET", hide_env_values = true)]
    pub client_secret: String,
}

impl ServerArgs {
    /// The origin without a trailing slash, and an admin access token.
    pub(super) async fn admin(&self, http: &reqwest::Client) -> anyhow::Result<(String, String)> {
        let origin = self.origin.trim_end_matches('/').to_owned();
        let admin = token(http, &origin, &self.client_id, &self.client_secret).await?;
        Ok((origin, admin))
    }
}

struct Hub {
    client_id: String,
    secret: String,
    /// Bluetooth addresses of its cuffs.
    cuffs: Vec<String>,
}

pub async fn run(args: IngestArgs) -> anyhow::Result<()> {
    if args.hubs == 0 || args.batch == 0 || args.devices_per_hub == 0 {
        bail!("--hubs, --batch and --devices-per-hub must be at least 1");
    }
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.hubs + 4)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(60))
        .no_proxy()
        .build()?;
    let (origin, admin) = args.server.admin(&http).await?;
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let org = format!("bi-{run}");
    let started = Instant::now();
    put(
        &http,
        &origin,
        &admin,
        &format!("Organization/{org}"),
        &json!({"resourceType": "Organization", "id": org, "name": "ingest bench"}),
    )
    .await?;
    let mut hubs = Vec::new();
    // Each hub: its client and Device, then a Patient and a Device per cuff.
    let progress = Progress::new(
        "registering hubs",
        (args.hubs * (1 + 2 * args.devices_per_hub)) as u64,
        "resources",
    );
    for h in 0..args.hubs {
        let client_id = format!("bi-{run}-hub{h}");
        let r = http
            .post(format!("{origin}/auth/clients"))
            .bearer_auth(&admin)
            .json(&json!({"client_id": client_id, "role": "hub", "organization": org}))
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("registering hub client: {} {}", r.status(), r.text().await?);
        }
        let secret = r.json::<Value>().await?["client_secret"]
            .as_str()
            .context("no client_secret")?
            .to_owned();
        put(
            &http,
            &origin,
            &admin,
            &format!("Device/{client_id}"),
            &json!({"resourceType": "Device", "id": client_id, "status": "active",
                "identifier": [{"system": crate::ingest::pipeline::HUB_CLIENT_SYSTEM, "value": client_id}],
                "owner": {"reference": format!("Organization/{org}")}}),
        )
        .await?;
        progress.inc(1);
        let mut cuffs = Vec::new();
        for d in 0..args.devices_per_hub {
            let id = format!("bi-{run}-{h}-{d}");
            put(
                &http,
                &origin,
                &admin,
                &format!("Patient/{id}"),
                &json!({"resourceType": "Patient", "id": id,
                    "managingOrganization": {"reference": format!("Organization/{org}")}}),
            )
            .await?;
            let n = (h * args.devices_per_hub + d) as u32;
            let address = format!(
                "B0-{}-{:02X}-{:02X}-{:02X}-{:02X}",
                &run[..2].to_ascii_uppercase(),
                (n >> 24) & 0xFF,
                (n >> 16) & 0xFF,
                (n >> 8) & 0xFF,
                n & 0xFF
            );
            put(
                &http,
                &origin,
                &admin,
                &format!("Device/{id}"),
                &json!({"resourceType": "Device", "id": id, "status": "active",
                    "identifier": [{"system": crate::ingest::device::BTMAC_SYSTEM, "value": address}],
                    "patient": {"reference": format!("Patient/{id}")},
                    "owner": {"reference": format!("Organization/{org}")}}),
            )
            .await?;
            progress.inc(2);
            cuffs.push(address.replace('-', ":"));
        }
        hubs.push(Hub {
            client_id,
            secret,
            cuffs,
        });
    }
    progress.finish();
    eprintln!(
        "registered {} hubs with {} cuffs and Patients in {:.1} s",
        args.hubs,
        args.hubs * args.devices_per_hub,
        started.elapsed().as_secs_f64()
    );
    // Device time stamps start after the cuffs were assigned (whole seconds on the wire).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let first_stamp = OffsetDateTime::now_utc();
    let warm_end = Instant::now() + Duration::from_secs(args.warmup);
    let end = warm_end + Duration::from_secs(args.duration);
    let mut tasks = Vec::new();
    for hub in hubs {
        let http = http.clone();
        let origin = origin.clone();
        let batch = args.batch;
        tasks.push(tokio::spawn(async move {
            post_loop(http, origin, hub, batch, first_stamp, warm_end, end).await
        }));
    }
    let mut stats = OpStats::new()?;
    let (mut accepted, mut duplicate, mut rejected) = (0u64, 0u64, 0u64);
    for t in tasks {
        let out = t.await??;
        stats.merge(&out.stats)?;
        accepted += out.accepted;
        duplicate += out.duplicate;
        rejected += out.rejected;
    }
    let secs = args.duration as f64;
    let s = stats.summary(Duration::from_secs(args.duration));
    println!(
        "hubs {} × batch {}: {} batches in {secs:.0} s, {:.1} batches/s",
        args.hubs, args.batch, s.requests, s.rps
    );
    println!(
        "readings stored {:.0}/s (accepted {accepted}, duplicate {duplicate}, rejected {rejected}; failed batches {})",
        accepted as f64 / secs,
        s.errors
    );
    println!(
        "batch latency ms: p50 {} p95 {} p99 {} max {}",
        fmt_ms(s.p50_us),
        fmt_ms(s.p95_us),
        fmt_ms(s.p99_us),
        fmt_ms(s.max_us)
    );
    Ok(())
}

struct HubOut {
    stats: OpStats,
    accepted: u64,
    duplicate: u64,
    rejected: u64,
}

async fn post_loop(
    http: reqwest::Client,
    origin: String,
    hub: Hub,
    batch: usize,
    first_stamp: OffsetDateTime,
    warm_end: Instant,
    end: Instant,
) -> anyhow::Result<HubOut> {
    let token = token(&http, &origin, &hub.client_id, &hub.secret).await?;
    let hub = Arc::new(hub);
    let mut out = HubOut {
        stats: OpStats::new()?,
        accepted: 0,
        duplicate: 0,
        rejected: 0,
    };
    let mut next = 0usize;
    while Instant::now() < end {
        // Reading n is cuff n mod cuffs, stamped one second later each round of the cuffs, so
        // every reading is new.
        let received = OffsetDateTime::now_utc();
        let readings: Vec<Value> = (next..next + batch)
            .map(|n| {
                let cuff = &hub.cuffs[n % hub.cuffs.len()];
                let stamp = first_stamp + time::Duration::seconds((n / hub.cuffs.len()) as i64);
                json!({"address": cuff, "characteristic": "0x2A35",
                       "value": bp_value(110 + (n % 40) as u16, stamp),
                       "received": rfc3339(received.max(stamp))})
            })
            .collect();
        next += batch;
        let body = json!({ "readings": readings });
        let t0 = Instant::now();
        let r = http
            .post(format!("{origin}/ingest/hub"))
            .bearer_auth(&token)
            .json(&body)
            .send()
            .await;
        let measured = t0 >= warm_end;
        match r {
            Ok(r) if r.status().is_success() => {
                let v: Value = r.json().await?;
                if measured {
                    out.stats.record_ok(t0.elapsed());
                    out.accepted += v["accepted"].as_u64().unwrap_or(0);
                    out.duplicate += v["duplicate"].as_u64().unwrap_or(0);
                    out.rejected += v["rejected"].as_u64().unwrap_or(0);
                }
            }
            Ok(r) => {
                let status = r.status().as_u16();
                let text = r.text().await.unwrap_or_default();
                eprintln!(
                    "batch failed: HTTP {status}: {}",
                    super::stats::snippet(&text, 200)
                );
                if measured {
                    out.stats.record_err(super::stats::ErrKind::Status(status));
                }
            }
            Err(e) => {
                eprintln!("batch failed: {e}");
                if measured {
                    out.stats.record_err(super::stats::ErrKind::Transport);
                }
            }
        }
    }
    Ok(out)
}

/// A blood-pressure measurement (0x2A35) in mmHg with time stamp and pulse, base64.
fn bp_value(systolic: u16, at: OffsetDateTime) -> String {
    let mut b = vec![0x06];
    for v in [systolic, 80, 93] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b.extend_from_slice(&(at.year() as u16).to_le_bytes());
    b.extend_from_slice(&[
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second(),
    ]);
    b.extend_from_slice(&72u16.to_le_bytes());
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

pub(super) async fn token(
    http: &reqwest::Client,
    origin: &str,
    id: &str,
    secret: &str,
) -> anyhow::Result<String> {
    let r = http
        .post(format!("{origin}/auth/token"))
        .basic_auth(id, Some(secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await?;
    if !r.status().is_success() {
        bail!("token for {id}: {}", r.status());
    }
    Ok(r.json::<Value>().await?["access_token"]
        .as_str()
        .context("no access_token")?
        .to_owned())
}

pub(super) async fn put(
    http: &reqwest::Client,
    origin: &str,
    token: &str,
    path: &str,
    body: &Value,
) -> anyhow::Result<()> {
    let r = http
        .put(format!("{origin}/fhir/{path}"))
        .bearer_auth(token)
        .header("content-type", "application/fhir+json")
        .body(body.to_string())
        .send()
        .await?;
    if !r.status().is_success() {
        bail!("PUT {path}: {} {}", r.status(), r.text().await?);
    }
    Ok(())
}
