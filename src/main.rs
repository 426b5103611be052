//! The command line. Everything else lives in the library.

use std::sync::OnceLock;

use clap::{Parser, Subcommand};
use vitalbridge::config::{Settings, redact_url};
use vitalbridge::progress::Progress;
use vitalbridge::{Application, bench, shutdown_signal};

/// Many small allocations per request (JSON trees, index rows) from many threads: mimalloc's
/// thread-local heaps serve them without glibc malloc's arena locking and consolidation.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// FHIR R4 server for remote patient monitoring
///
/// vitalbridge turns readings from Bluetooth LE and cellular home devices (blood-pressure cuffs,
/// scales, glucometers, pulse oximeters, thermometers) into FHIR Device and Observation
/// resources that clinics' EHRs read through a SMART-on-FHIR API, notifies their Subscriptions
/// and bills the monitoring months. One binary: `serve` runs the server (an SQLite file under
/// ./data/ by default, PostgreSQL with --database-url); `gateway` runs the Bluetooth gateway; the
/// other commands look after the database and its clients, or load and check a server.
///
/// Logs go to stderr; VB_LOG sets their filter (e.g. VB_LOG=debug, default info). Long-running
/// commands (reindex, bill, the benches' seeding) draw a progress bar on a terminal and write a
/// plain progress line per 10 % otherwise.
///
/// Start with the README: quick start, a ten-minute tour and the configuration reference.
#[derive(Parser)]
#[command(name = "vitalbridge", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct DbArgs {
    /// postgres://… for PostgreSQL, sqlite://… for the embedded store
    /// [default: an SQLite file under ./data/]
    // Global, so that `client add … --database-url …` reads naturally after the subcommand.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, global = true)]
    database_url: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the FHIR server
    Serve {
        /// Address to listen on
        #[arg(long, env = "VB_LISTEN", default_value = "127.0.0.1:8080")]
        listen: String,
        #[command(flatten)]
        db: DbArgs,
        /// Public FHIR base URL used in Location headers and Bundle fullUrls
        #[arg(long, env = "VB_BASE_URL")]
        base_url: Option<String>,
        /// Largest accepted request body, in bytes
        #[arg(long, env = "VB_BODY_LIMIT", default_value_t = 16 * 1024 * 1024)]
        body_limit: usize,
        /// Database connections per server process
        #[arg(long, env = "VB_DB_POOL", default_value_t = 16)]
        db_pool: u32,
        /// Client id of an admin client (client_credentials) created or updated at start
        #[arg(
            long,
            env = "VB_BOOTSTRAP_CLIENT_ID",
            requires = "bootstrap_client_secret"
        )]
        bootstrap_client_id: Option<String>,
        /// Secret of the bootstrap admin client
        #[arg(
            long,
            env = "VB_BOOTSTRAP_CLIENT_SECRET",
            hide_env_values = true,
            requires = "bootstrap_client_id"
        )]
        bootstrap_client_secret: Option<String>,
        /// PKCS#8 PEM file with the RSA key that signs tokens [default: one generated at the
        /// first start and kept in the database]
        #[arg(long, env = "VB_SIGNING_KEY_FILE")]
        signing_key_file: Option<std::path::PathBuf>,
        /// External OpenID providers whose access tokens are accepted: a JSON array of
        /// {"issuer", "audience", "role_claim", "role_map", "organization_claim", …} (see the
        /// README), or the path of a file holding it
        #[arg(long, env = "VB_OIDC_PROVIDERS")]
        oidc_providers: Option<String>,
        /// Record every request in the audit trail (AuditEvent); `off` only where another
        /// layer audits, or to measure what auditing costs
        #[arg(long, env = "VB_AUDIT", default_value = "on", value_parser = ["on", "off"])]
        audit: String,
        /// PEM certificate chain: serve HTTPS (HTTP/2 and HTTP/1.1) instead of plain HTTP
        #[arg(long, env = "VB_TLS_CERT", requires = "tls_key")]
        tls_cert: Option<std::path::PathBuf>,
        /// PEM private key of the certificate
        #[arg(long, env = "VB_TLS_KEY", requires = "tls_cert")]
        tls_key: Option<std::path::PathBuf>,
        /// PEM CA certificates: require client certificates they issued (mutual TLS)
        #[arg(long, env = "VB_TLS_CLIENT_CA", requires = "tls_cert")]
        tls_client_ca: Option<std::path::PathBuf>,
        /// Days raw device messages (hub batches, vendor webhooks) are kept, with their
        /// SHA-256, before they are purged in the background
        #[arg(long, env = "VB_RAW_RETENTION_DAYS", default_value_t = 7)]
        raw_retention_days: u32,
        /// Seconds a Subscription notification is retried, backing off exponentially, before
        /// the subscription goes to `error` with the reason (24 hours)
        #[arg(long, env = "VB_SUBSCRIPTION_RETRY_SECS", default_value_t = 86_400)]
        subscription_retry_secs: u64,
        /// Milliseconds before a failed notification's first retry; each further retry waits
        /// twice as long (with jitter), up to an hour
        #[arg(long, env = "VB_SUBSCRIPTION_BACKOFF_MS", default_value_t = 1_000)]
        subscription_backoff_ms: u64,
        /// Seconds a subscriber's endpoint has to answer a notification
        #[arg(long, env = "VB_SUBSCRIPTION_TIMEOUT_SECS", default_value_t = 10)]
        subscription_timeout_secs: u64,
        /// Match and deliver Subscription notifications in this process; `off` for a process
        /// that only answers the API while others deliver
        #[arg(long, env = "VB_SUBSCRIPTIONS", default_value = "on", value_parser = ["on", "off"])]
        subscriptions: String,
        /// Days each Subscription event is kept for Subscription/$events
        #[arg(long, env = "VB_SUBSCRIPTION_EVENTS_DAYS", default_value_t = 7)]
        subscription_events_days: u32,
        /// Networks a rest-hook endpoint may be in besides public addresses: `10.20.0.0/16,
        /// 127.0.0.1`, or `any`. Private, loopback and link-local addresses are refused by
        /// default, so a client cannot make the server call into its own network
        #[arg(long, env = "VB_SUBSCRIPTION_ALLOW_NETWORKS", default_value = "",
              value_parser = vitalbridge::subscriptions::egress::Egress::parse)]
        subscription_allow_networks: vitalbridge::subscriptions::egress::Egress,
        /// SMTP relay of Subscription emails and billing statements: smtp://user:password@host:587?tls=required
        /// (STARTTLS), smtps://user:password@host:465 (TLS), or smtp://host:25 (a local relay)
        #[arg(long, env = "VB_SMTP_URL", hide_env_values = true)]
        smtp_url: Option<String>,
        /// Sender address of Subscription emails and billing statements
        #[arg(long, env = "VB_SMTP_FROM", default_value = "vitalbridge@localhost")]
        smtp_from: String,
        /// PEM certificates of a private CA that issued the SMTP relay's certificate
        #[arg(long, env = "VB_SMTP_CA_FILE")]
        smtp_ca_file: Option<std::path::PathBuf>,
        /// Run each month's billing in this process when the month ends in the customer's time
        /// zone; `off` for processes that leave it to the others (one of them runs it either way)
        #[arg(long, env = "VB_BILLING", default_value = "on", value_parser = ["on", "off"])]
        billing: String,
        /// Seconds between the billing scheduler's looks at the clock
        #[arg(long, env = "VB_BILLING_INTERVAL_SECS", default_value_t = 60)]
        billing_interval_secs: u64,
    },
    /// Run a month's billing by hand: ChargeItems and one Invoice per recipient and currency for
    /// every Organization whose month has ended. Running a month again changes nothing unless
    /// what it invoices has changed (a corrected price): then the issued invoice is cancelled
    /// and a new one issued
    Bill {
        #[command(flatten)]
        db: DbArgs,
        /// The month, YYYY-MM [default: the last month that has ended in UTC]
        #[arg(long)]
        month: Option<String>,
    },
    /// Make the RPM Claims of every patient's monitoring periods that have ended (the server's
    /// billing scheduler does this daily); periods already claimed are left as they are
    Claims {
        #[command(flatten)]
        db: DbArgs,
    },
    /// Run the Bluetooth LE gateway: read health devices (BlueZ), keep every reading in a local
    /// queue and forward it to the server's /ingest/hub (`gateway status` shows the queue)
    Gateway {
        /// The configuration file (JSON: server, clientId, clientSecret, dataDir, devices; see
        /// the README)
        #[arg(long, env = "VB_GATEWAY_CONFIG", global = true)]
        config: Option<std::path::PathBuf>,
        #[command(subcommand)]
        command: Option<GatewayCommand>,
    },
    /// Apply the database migrations and exit (`serve` applies them at start too)
    Migrate {
        #[command(flatten)]
        db: DbArgs,
    },
    /// Rebuild the search index from the stored resources (after an upgrade that changes what
    /// is indexed), then vacuum and analyse the index tables; the server may keep running
    /// meanwhile
    Reindex {
        #[command(flatten)]
        db: DbArgs,
        /// Resources reindexed per transaction
        #[arg(long, default_value_t = 500)]
        batch: usize,
    },
    /// Drive a running FHIR server with concurrent clients and report throughput and latency
    Bench(bench::BenchArgs),
    /// Drive a running server's /ingest/hub with hubs posting batches of readings at once, and
    /// report readings stored per second and batch latency
    BenchIngest(bench::ingest::IngestArgs),
    /// Create rest-hook Subscriptions with a receiver of its own, write Observations at a fixed
    /// rate, and report the write-to-receiver latency of the notifications
    BenchSubscriptions(bench::subscriptions::SubscriptionArgs),
    /// Check any FHIR R4 server (this one or another): REST core, search, SMART, Subscriptions
    /// (with a receiver of its own), PHD device profiles and vital-signs searches; prints a
    /// report, writes JUnit XML with --junit, and exits non-zero when a check fails
    Conformance(vitalbridge::conformance::ConformanceArgs),
    /// Manage the OAuth clients of the built-in authorization server
    Client {
        #[command(flatten)]
        db: DbArgs,
        #[command(subcommand)]
        command: ClientCommand,
    },
    /// Decode a Bluetooth characteristic value as a device sent it (for field engineers);
    /// exits with status 2 when the value cannot be decoded
    Decode {
        /// The characteristic: 0x2A35, 2A35 or its 128-bit UUID
        #[arg(long, required_unless_present = "vendor", requires = "hex")]
        characteristic: Option<String>,
        /// The value in wire byte order, as hex (spaces and colons allowed)
        #[arg(long, requires = "characteristic")]
        hex: Option<String>,
        /// The device model, e.g. "Beurer BM85", to apply its profile's quirks
        #[arg(long, conflicts_with = "vendor")]
        model: Option<String>,
        /// A cellular vendor's webhook payload instead: tenovi, telli, bodytrace, withings (its
        /// measure API answer) or generic
        #[arg(long, requires = "file", conflicts_with = "characteristic")]
        vendor: Option<String>,
        /// The file holding the vendor's payload
        #[arg(long, requires = "vendor")]
        file: Option<std::path::PathBuf>,
    },
    /// Print the OpenAPI document of every HTTP route (what /openapi.json serves; committed
    /// as openapi/openapi.json)
    Openapi,
    /// Manage the people who sign in on the login page (SMART apps)
    User {
        #[command(flatten)]
        db: DbArgs,
        #[command(subcommand)]
        command: UserCommand,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Add a user; the password comes from VB_USER_PASSWORD or the first line of stdin, never
    /// from the command line (other users of the machine could read it there)
    Add {
        /// The name the user signs in with
        username: String,
        /// The user's role: admin, distributor, distributor-user, customer, customer-user or
        /// patient
        #[arg(long)]
        role: String,
        /// The organization the user acts for (every role but admin)
        #[arg(long)]
        organization: Option<String>,
        /// The FHIR resource the user is, e.g. Patient/123 (required for patients)
        #[arg(long)]
        fhir_user: Option<String>,
    },
    /// List the users (never their password hashes)
    List,
    /// Remove a user
    Remove {
        /// The user's sign-in name
        username: String,
    },
    /// Clear a lockout after repeated failed sign-ins
    Unlock {
        /// The user's sign-in name
        username: String,
    },
}

#[derive(Subcommand)]
enum ClientCommand {
    /// Register a client and print its secret once: a client_credentials client by default,
    /// a private_key_jwt one with --jwks-file or --jwks-url, a SMART app with --redirect-uri
    Add {
        /// The client id
        client_id: String,
        /// The role it acts with: admin, distributor, distributor-user, customer, customer-user
        #[arg(long, default_value = "admin")]
        role: String,
        /// The id of the Organization it acts for (every role but admin)
        #[arg(long)]
        organization: Option<String>,
        /// Scopes it may be granted, space separated (the role narrows them)
        #[arg(long, default_value = vitalbridge::auth::ADMIN_SCOPE)]
        scope: String,
        /// A name for people
        #[arg(long)]
        name: Option<String>,
        /// A JWKS file of the client's public keys: it authenticates with private_key_jwt
        /// (SMART Backend Services) and gets no secret
        #[arg(long, conflicts_with = "jwks_url")]
        jwks_file: Option<std::path::PathBuf>,
        /// The URL the client publishes its JWKS at (private_key_jwt, no secret)
        #[arg(long)]
        jwks_url: Option<String>,
        /// A SMART app's redirect URI (repeat for several): the authorization code flow
        #[arg(long = "redirect-uri")]
        redirect_uris: Vec<String>,
        /// A public app: no secret, PKCE only
        #[arg(long)]
        public: bool,
    },
    /// List the registered clients (never their secrets)
    List,
    /// Remove a client; tokens it holds expire within five minutes
    Remove {
        /// The client id
        client_id: String,
    },
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("VB_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr)
        // Colours only on a terminal: log files and collectors get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn main() -> std::process::ExitCode {
    // Request bodies nest at most `http::format::MAX_DEPTH` levels; 8 MiB stacks leave a wide
    // margin for the recursive parsing and validation of the deepest ones.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(8 * 1024 * 1024)
        .build();
    match runtime {
        Ok(rt) => rt.block_on(run()),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_tracing();
    if let Command::Decode {
        characteristic,
        hex,
        model,
        vendor,
        file,
    } = &cli.command
    {
        let decoded = match (characteristic, hex, vendor, file) {
            (Some(c), Some(h), _, _) => vitalbridge::ingest::decode_command(c, h, model.as_deref()),
            (_, _, Some(v), Some(f)) => std::fs::read(f)
                .map_err(|e| format!("cannot read {}: {e}", f.display()))
                .and_then(|body| vitalbridge::ingest::decode_vendor_command(v, &body)),
            _ => Err("give --characteristic and --hex, or --vendor and --file".into()),
        };
        return match decoded {
            Ok(json) => {
                println!("{json}");
                std::process::ExitCode::SUCCESS
            }
            Err(why) => {
                eprintln!("error: {why}");
                std::process::ExitCode::from(2)
            }
        };
    }
    let result = match cli.command {
        Command::Serve {
            listen,
            db,
            base_url,
            body_limit,
            db_pool,
            bootstrap_client_id,
            bootstrap_client_secret,
            signing_key_file,
            oidc_providers,
            audit,
            tls_cert,
            tls_key,
            tls_client_ca,
            raw_retention_days,
            subscription_retry_secs,
            subscription_backoff_ms,
            subscription_timeout_secs,
            subscriptions,
            subscription_events_days,
            subscription_allow_networks,
            smtp_url,
            smtp_from,
            smtp_ca_file,
            billing,
            billing_interval_secs,
        } => {
            let oidc_providers = match oidc_providers
                .as_deref()
                .map(vitalbridge::auth::federation::parse_config)
                .transpose()
            {
                Ok(list) => list.unwrap_or_default(),
                Err(e) => {
                    eprintln!("error: {e:#}");
                    return std::process::ExitCode::FAILURE;
                }
            };
            let signing_key_pem = match signing_key_file {
                Some(path) => match std::fs::read_to_string(&path) {
                    Ok(pem) => Some(pem),
                    Err(e) => {
                        eprintln!("error: cannot read the signing key {}: {e}", path.display());
                        return std::process::ExitCode::FAILURE;
                    }
                },
                None => None,
            };
            let bootstrap_client = match (bootstrap_client_id, bootstrap_client_secret) {
                (Some(client_id), Some(secret)) => {
                    Some(vitalbridge::auth::BootstrapClient { client_id, secret })
                }
                _ => None,
            };
            let smtp = smtp_url.map(|url| vitalbridge::subscriptions::email::SmtpConfig {
                url,
                from: smtp_from,
                ca_file: smtp_ca_file,
            });
            serve(Settings {
                listen,
                database_url: db.database_url,
                base_url,
                body_limit,
                db_pool,
                bootstrap_client,
                signing_key_pem,
                oidc_providers,
                audit: audit == "on",
                raw_retention_days,
                subscriptions: vitalbridge::subscriptions::Config {
                    enabled: subscriptions == "on",
                    events_kept: std::time::Duration::from_secs(
                        u64::from(subscription_events_days) * 86_400,
                    ),
                    retry_for: std::time::Duration::from_secs(subscription_retry_secs),
                    backoff: std::time::Duration::from_millis(subscription_backoff_ms.max(1)),
                    timeout: std::time::Duration::from_secs(subscription_timeout_secs.max(1)),
                    egress: subscription_allow_networks,
                    smtp: smtp.clone(),
                    ..Default::default()
                },
                billing: vitalbridge::billing::schedule::Config {
                    enabled: billing == "on",
                    interval: std::time::Duration::from_secs(billing_interval_secs.max(1)),
                    smtp,
                },
                tls: tls_cert
                    .zip(tls_key)
                    .map(|(cert, key)| vitalbridge::http::tls::TlsFiles {
                        cert,
                        key,
                        client_ca: tls_client_ca,
                    }),
            })
            .await
        }
        Command::Bill { db, month } => bill(db.database_url, month).await,
        Command::Claims { db } => claims(db.database_url).await,
        Command::Gateway { config, command } => gateway(config, command).await,
        Command::Migrate { db } => migrate(db.database_url).await,
        Command::Reindex { db, batch } => reindex(db.database_url, batch).await,
        Command::Bench(args) => bench::run(args).await,
        Command::BenchIngest(args) => bench::ingest::run(args).await,
        Command::BenchSubscriptions(args) => bench::subscriptions::run(args).await,
        Command::Conformance(args) => vitalbridge::conformance::run(args).await,
        Command::Client { db, command } => client(db.database_url, command).await,
        Command::User { db, command } => user(db.database_url, command).await,
        Command::Decode { .. } => Ok(()),
        Command::Openapi => {
            print!("{}", vitalbridge::http::openapi::document_text());
            Ok(())
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let db = redact_url(settings.database_url());
    let scheme = match &settings.tls {
        Some(t) if t.client_ca.is_some() => "https (client certificates required)",
        Some(_) => "https",
        None => "http",
    };
    let app = Application::build(settings).await?;
    tracing::info!(
        addr = %app.local_addr()?,
        scheme,
        database = %db,
        ready_ms = started.elapsed().as_millis() as u64,
        "vitalbridge ready; FHIR base /fhir"
    );
    app.run_until(shutdown_signal()).await
}

#[derive(Subcommand)]
enum GatewayCommand {
    /// Queue depth, last successful upload, devices seen with their battery levels and last
    /// readings, readings the server rejected
    Status,
}

async fn gateway(
    config: Option<std::path::PathBuf>,
    command: Option<GatewayCommand>,
) -> anyhow::Result<()> {
    use vitalbridge::gateway;
    let path = config.ok_or_else(|| {
        anyhow::anyhow!(
            "the gateway needs its configuration file: --config FILE (or VB_GATEWAY_CONFIG)"
        )
    })?;
    match command {
        None => gateway::run(gateway::config::Config::load(&path)?).await,
        Some(GatewayCommand::Status) => {
            let config = gateway::config::Config::load_for_status(&path)?;
            print!("{}", gateway::status(&config).await?);
            Ok(())
        }
    }
}

async fn migrate(database_url: Option<String>) -> anyhow::Result<()> {
    let shown = redact_url(
        database_url
            .as_deref()
            .unwrap_or(vitalbridge::config::DEFAULT_SQLITE_URL),
    );
    let store = open_store(database_url).await?;
    store.close().await;
    println!("migrations applied to {shown}");
    Ok(())
}

/// The store of a command-line tool (the default SQLite file without a URL), migrated.
async fn open_store(database_url: Option<String>) -> anyhow::Result<vitalbridge::store::Store> {
    let settings = Settings {
        database_url,
        ..Default::default()
    };
    let store =
        vitalbridge::store::Store::connect(settings.database_url(), &Default::default()).await?;
    store.migrate().await?;
    Ok(store)
}

async fn reindex(database_url: Option<String>, batch: usize) -> anyhow::Result<()> {
    let store = open_store(database_url).await?;
    vitalbridge::search::preload();
    let total = store.count_current().await?;
    let progress = Progress::new("reindex", total.max(0) as u64, "resources");
    let started = std::time::Instant::now();
    let mut after: Option<(String, String)> = None;
    let mut done = 0u64;
    loop {
        let page = store
            .scan_current(
                after.as_ref().map(|(t, i)| (t.as_str(), i.as_str())),
                batch.max(1),
            )
            .await?;
        let Some(last) = page.last() else { break };
        after = Some((last.ty.clone(), last.id.clone()));
        store.reindex(&page).await?;
        done += page.len() as u64;
        progress.set_position(done);
    }
    progress.finish();
    println!(
        "reindexed {done} resources in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let tidying = std::time::Instant::now();
    store.tidy_index().await?;
    println!(
        "vacuumed and analysed the index tables in {:.1} s",
        tidying.elapsed().as_secs_f64()
    );
    store.close().await;
    Ok(())
}

async fn bill(database_url: Option<String>, month: Option<String>) -> anyhow::Result<()> {
    use vitalbridge::billing::{Month, run};
    let month = match month {
        Some(m) => Month::parse(&m).map_err(anyhow::Error::msg)?,
        None => Month::last_ended(vitalbridge::store::now_micros()),
    };
    let store = open_store(database_url).await?;
    let started = std::time::Instant::now();
    // A phase each: devices read (their total is an estimate, the current Devices), then
    // recipients invoiced; a phase starts with its first report.
    let (devices, recipients) = (OnceLock::new(), OnceLock::new());
    let on_progress = |p: run::Progress| match p {
        run::Progress::Devices { done, total } => {
            let bar = devices
                .get_or_init(|| Progress::new(format!("bill {month}: devices"), total, "devices"));
            bar.set_total(total.max(done));
            bar.set_position(done);
        }
        run::Progress::Recipients { done, total } => {
            if let Some(d) = devices.get() {
                d.finish();
            }
            let bar = recipients.get_or_init(|| {
                Progress::new(format!("bill {month}: recipients"), total, "recipients")
            });
            bar.set_total(total.max(done));
            bar.set_position(done);
        }
    };
    let report = run::run(&store, month, run::Which::All, None, &on_progress).await;
    for phase in [&devices, &recipients] {
        if let Some(p) = phase.get() {
            p.finish();
        }
    }
    store.close().await;
    let r = report?;
    println!(
        "billed {month}: {} devices read, {} recipients, {} invoices issued ({} ChargeItems), \
         {} unchanged, {} corrected, {} cancelled in {:.1} s",
        r.devices,
        r.recipients,
        r.issued.len(),
        r.charge_items,
        r.unchanged,
        r.corrected.len(),
        r.cancelled.len(),
        started.elapsed().as_secs_f64()
    );
    for (old, new) in &r.corrected {
        println!("corrected: {old} cancelled, replaced by {new}");
    }
    let queued = r.issued.len() + r.corrected.len();
    if queued > 0 {
        println!(
            "{queued} statements queued: the server holding the billing lease e-mails them to \
             each recipient's billing contact (VB_SMTP_URL)"
        );
    }
    for c in &r.cancelled {
        println!("cancelled: {c}");
    }
    if !r.not_ended.is_empty() {
        println!(
            "not yet ended in their time zone, left for later: {}",
            r.not_ended
                .iter()
                .map(|o| format!("Organization/{o}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    for p in &r.problems {
        eprintln!("warning: {p}");
    }
    if !r.failed.is_empty() {
        anyhow::bail!(
            "{} recipients could not be billed; run the month again once the cause is fixed",
            r.failed.len()
        );
    }
    Ok(())
}

async fn claims(database_url: Option<String>) -> anyhow::Result<()> {
    use vitalbridge::billing::{claims, rpm};
    let rules = rpm::Rules::parse(rpm::RULES_2026).map_err(anyhow::Error::msg)?;
    let store = open_store(database_url).await?;
    let started = std::time::Instant::now();
    let report = claims::run(&store, &rules, vitalbridge::store::now_micros()).await;
    store.close().await;
    let r = report?;
    println!(
        "{}: {} ended periods, {} claims made, {} already claimed in {:.1} s",
        rules.name,
        r.periods,
        r.made.len(),
        r.existing,
        started.elapsed().as_secs_f64()
    );
    for p in &r.problems {
        eprintln!("warning: {p}");
    }
    Ok(())
}

async fn user(database_url: Option<String>, command: UserCommand) -> anyhow::Result<()> {
    use vitalbridge::auth;
    let store = open_store(database_url).await?;
    match command {
        UserCommand::Add {
            username,
            role,
            organization,
            fhir_user,
        } => {
            let role = auth::Role::parse(&role).ok_or_else(|| {
                anyhow::anyhow!(
                    "unknown role `{role}`: admin, distributor, distributor-user, customer, customer-user or patient"
                )
            })?;
            let password = match std::env::var("VB_USER_PASSWORD") {
                Ok(p) => p,
                Err(_) => {
                    let mut line = String::new();
                    std::io::stdin().read_line(&mut line)?;
                    line.trim_end_matches(['\r', '\n']).to_owned()
                }
            };
            let record = auth::users::check(auth::users::NewUser {
                username,
                password,
                role,
                organization,
                fhir_user,
            })
            .map_err(|e| anyhow::anyhow!(e))?;
            if !store.insert_user(&record).await? {
                anyhow::bail!("a user `{}` exists already", record.username);
            }
            println!("added {}", record.username);
        }
        UserCommand::List => {
            for u in store.users().await? {
                println!(
                    "{}\t{}\t{}\t{}",
                    u.username,
                    u.role,
                    u.organization.unwrap_or_default(),
                    u.fhir_user.unwrap_or_default()
                );
            }
        }
        UserCommand::Remove { username } => {
            if !store.delete_user(&username).await? {
                anyhow::bail!("no user `{username}`");
            }
            println!("removed {username}");
        }
        UserCommand::Unlock { username } => {
            if store.user(&username).await?.is_none() {
                anyhow::bail!("no user `{username}`");
            }
            store.record_login(&username, true, 0, 0).await?;
            println!("unlocked {username}");
        }
    }
    store.close().await;
    Ok(())
}

async fn client(database_url: Option<String>, command: ClientCommand) -> anyhow::Result<()> {
    use vitalbridge::auth;
    let store = open_store(database_url).await?;
    match command {
        ClientCommand::Add {
            client_id,
            role,
            organization,
            scope,
            name,
            jwks_file,
            jwks_url,
            redirect_uris,
            public,
        } => {
            let jwks = match jwks_file {
                Some(path) => {
                    let text = std::fs::read_to_string(&path)
                        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
                    Some(
                        serde_json::from_str(&text)
                            .map_err(|e| anyhow::anyhow!("{} is not JSON: {e}", path.display()))?,
                    )
                }
                None => None,
            };
            let role = auth::Role::parse(&role).ok_or_else(|| {
                anyhow::anyhow!(
                    "unknown role `{role}`: admin, distributor, distributor-user, customer or customer-user"
                )
            })?;
            let new = auth::clients::NewClient {
                client_id: Some(client_id),
                role,
                organization,
                scope: Some(scope),
                name,
                jwks,
                jwks_url,
                redirect_uris,
                public,
            };
            let (client, secret) = auth::clients::register(&store, new)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("client_id: {}", client.client_id);
            match secret {
                Some(secret) => {
                    println!("client_secret: {secret}");
                    eprintln!("the secret is shown only now; keep it in a secret store");
                }
                None => println!("token_endpoint_auth_method: private_key_jwt"),
            }
        }
        ClientCommand::List => {
            for c in store.clients().await? {
                println!(
                    "{}\t{}\t{}\t{}\t{}",
                    c.client_id,
                    c.role,
                    c.organization.unwrap_or_default(),
                    c.scope,
                    c.name.unwrap_or_default()
                );
            }
        }
        ClientCommand::Remove { client_id } => {
            if !store.delete_client(&client_id).await? {
                anyhow::bail!("no client `{client_id}`");
            }
            println!("removed {client_id}");
        }
    }
    store.close().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::Cli;

    /// What lacks help in `cmd` and its subcommands, recursively: a subcommand without an
    /// `about`, an argument (not hidden, not clap's own help and version) without help text.
    fn missing_help(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
        for arg in cmd.get_arguments() {
            let own = matches!(arg.get_id().as_str(), "help" | "version");
            if !own && !arg.is_hide_set() && arg.get_help().is_none() {
                missing.push(format!("{path}: argument {} has no help", arg.get_id()));
            }
        }
        for sub in cmd.get_subcommands() {
            let path = format!("{path} {}", sub.get_name());
            if sub.get_about().is_none() {
                missing.push(format!("{path}: no about"));
            }
            missing_help(sub, &path, missing);
        }
    }

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_subcommand_and_argument_has_help() {
        let mut cmd = Cli::command();
        // Built, so that global arguments (--database-url, --config) appear on the subcommands.
        cmd.build();
        let about = cmd.get_about().map(ToString::to_string).unwrap_or_default();
        assert!(about.contains("FHIR R4 server"), "{about}");
        let long = cmd
            .get_long_about()
            .map(ToString::to_string)
            .unwrap_or_default();
        assert!(long.contains("README"), "{long}");
        assert!(long.contains("VB_LOG"), "{long}");
        let mut missing = Vec::new();
        missing_help(&cmd, "vitalbridge", &mut missing);
        assert!(missing.is_empty(), "{missing:#?}");
    }
}
