//! The real binary as a process: kill -9 under write load loses no acknowledged write and leaves
//! nothing half-written; SIGTERM lets requests in flight finish; start-up and `migrate`.

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::{Backend, fresh_database, heart_rate, patient};

pub(crate) struct Server {
    pub(crate) child: Child,
    pub(crate) base: String,
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

pub(crate) async fn start(database_url: &str, port: u16) -> Server {
    start_logging(database_url, port, "warn", Stdio::null(), &[]).await
}

/// [`start`] with more environment variables.
pub(crate) async fn start_with(database_url: &str, port: u16, env: &[(&str, &str)]) -> Server {
    start_logging(database_url, port, "warn", Stdio::null(), env).await
}

/// Starts the server with log level `level`, its log (stderr) going to `log`, and waits until
/// it answers.
async fn start_logging(
    database_url: &str,
    port: u16,
    level: &str,
    log: Stdio,
    env: &[(&str, &str)],
) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_vitalbridge"))
        // The tests' receivers listen on the loopback interface.
        .env("VB_SUBSCRIPTION_ALLOW_NETWORKS", "127.0.0.1")
        .envs(env.iter().copied())
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .env("DATABASE_URL", database_url)
        .env("VB_LOG", level)
        .env("VB_BOOTSTRAP_CLIENT_ID", crate::common::ADMIN_ID)
        .env("VB_BOOTSTRAP_CLIENT_SECRET", crate::common::ADMIN_SECRET)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("server starts");
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if client
            .get(format!("{base}/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return Server {
                child,
                base: format!("{base}/fhir"),
            };
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("server did not become ready");
}

/// An acknowledged write: (type/id, version, the value written).
type Ack = (String, i64, f64);

async fn writer(
    client: reqwest::Client,
    base: String,
    patient_id: String,
    acks: Arc<Mutex<Vec<Ack>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    let mut n = 0u32;
    let mut mine: Option<String> = None;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        n += 1;
        let value = f64::from(n) + 0.5;
        let mut obs = heart_rate(&patient_id, value);
        // Alternate creates with updates of this writer's last observation.
        let req = match (&mine, n % 2) {
            (Some(id), 0) => {
                obs["id"] = json!(id);
                client.put(format!("{base}/Observation/{id}"))
            }
            _ => client.post(format!("{base}/Observation")),
        };
        let resp = req
            .header("content-type", "application/fhir+json")
            .body(obs.to_string())
            .send()
            .await;
        let Ok(resp) = resp else { break };
        if !resp.status().is_success() {
            break;
        }
        let Ok(body) = resp.json::<Value>().await else {
            break;
        };
        let id = body["id"].as_str().unwrap_or_default().to_owned();
        let version: i64 = body["meta"]["versionId"]
            .as_str()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        acks.lock()
            .expect("lock")
            .push((id.clone(), version, value));
        mine = Some(id);
    }
}

async fn kill_during_writes(backend: Backend) {
    let db = fresh_database(backend).await;
    let port = free_port();
    let acks: Arc<Mutex<Vec<Ack>>> = Arc::default();
    let mut patient_id = String::new();
    for round in 0..3 {
        let mut server = start(&db, port).await;
        let client = crate::common::admin_client(server.base.trim_end_matches("/fhir")).await;
        if round == 0 {
            let r = client
                .post(format!("{}/Patient", server.base))
                .header("content-type", "application/fhir+json")
                .body(patient("Crash").to_string())
                .send()
                .await
                .expect("patient");
            patient_id = r.json::<Value>().await.expect("json")["id"]
                .as_str()
                .expect("id")
                .to_owned();
        }
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                // One token for the round, obtained before the writers start: the kill must
                // land among writes, not token requests.
                tokio::spawn(writer(
                    client.clone(),
                    server.base.clone(),
                    patient_id.clone(),
                    acks.clone(),
                    stop.clone(),
                ))
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(700 + 300 * round)).await;
        // SIGKILL: no chance to flush or finish anything.
        server.child.kill().expect("kill -9");
        server.child.wait().expect("reaped");
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in tasks {
            t.await.expect("writer");
        }
    }
    let acks = acks.lock().expect("lock").clone();
    assert!(
        acks.len() > 50,
        "too few writes acknowledged to mean anything: {}",
        acks.len()
    );

    // After a restart every acknowledged version is there with the value written, and every
    // resource's history is complete: versions 1..=current without gaps.
    let server = start(&db, port).await;
    let client = crate::common::admin_client(server.base.trim_end_matches("/fhir")).await;
    for (id, version, value) in &acks {
        let r = client
            .get(format!(
                "{}/Observation/{id}/_history/{version}",
                server.base
            ))
            .send()
            .await
            .expect("vread");
        assert_eq!(
            r.status(),
            200,
            "Observation/{id} version {version} was acknowledged but is gone"
        );
        let body: Value = r.json().await.expect("json");
        assert_eq!(body["valueQuantity"]["value"].as_f64(), Some(*value));
    }
    let mut ids: Vec<&String> = acks.iter().map(|(id, _, _)| id).collect();
    ids.sort();
    ids.dedup();
    for id in ids {
        let cur: Value = client
            .get(format!("{}/Observation/{id}", server.base))
            .send()
            .await
            .expect("read")
            .json()
            .await
            .expect("json");
        let current: i64 = cur["meta"]["versionId"]
            .as_str()
            .and_then(|v| v.parse().ok())
            .expect("version");
        let h: Value = client
            .get(format!(
                "{}/Observation/{id}/_history?_count=1000",
                server.base
            ))
            .send()
            .await
            .expect("history")
            .json()
            .await
            .expect("json");
        assert_eq!(
            h["total"].as_i64(),
            Some(current),
            "Observation/{id}: history and current version disagree"
        );
    }
    let mut server = server;
    server.child.kill().expect("kill");
    let _ = server.child.wait();
    eprintln!(
        "{backend:?}: {} acknowledged writes survived three kill -9",
        acks.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_loses_no_acknowledged_write_postgres() {
    kill_during_writes(Backend::Postgres).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_loses_no_acknowledged_write_sqlite() {
    kill_during_writes(Backend::Sqlite).await
}

async fn graceful(backend: Backend) {
    let db = fresh_database(backend).await;
    let started = Instant::now();
    let mut server = start(&db, free_port()).await;
    let ready = started.elapsed();
    // A transaction big enough to be in flight when SIGTERM arrives.
    let entries: Vec<Value> = (0..3000)
        .map(|i| json!({"resource": patient(&format!("Grace{i}")), "request": {"method": "POST", "url": "Patient"}}))
        .collect();
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": entries});
    let client = crate::common::admin_client(server.base.trim_end_matches("/fhir")).await;
    let url = server.base.replace("/fhir", "/fhir/");
    let in_flight = tokio::spawn(async move {
        client
            .post(url)
            .header("content-type", "application/fhir+json")
            .body(bundle.to_string())
            .send()
            .await
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let pid = server.child.id().to_string();
    let status = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill -TERM");
    assert!(status.success());
    let resp = in_flight
        .await
        .expect("task")
        .expect("the request in flight was answered");
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["entry"].as_array().map(Vec::len), Some(3000));
    let exit = server.child.wait().expect("exit");
    assert!(exit.success(), "exit status {exit:?}");
    eprintln!("{backend:?}: ready after {ready:?} (including process start and health polling)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_requests_in_flight_postgres() {
    graceful(Backend::Postgres).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_requests_in_flight_sqlite() {
    graceful(Backend::Sqlite).await
}

#[tokio::test]
async fn default_database_and_migrate_command() {
    // With no database configured, `serve` and `migrate` use ./data/vitalbridge.db in the
    // working directory.
    let dir = std::env::temp_dir().join(format!("vb-default-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("dir");
    let out = Command::new(env!("CARGO_BIN_EXE_vitalbridge"))
        .arg("migrate")
        .current_dir(&dir)
        .env_remove("DATABASE_URL")
        .output()
        .expect("migrate runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dir.join("data/vitalbridge.db").is_file());
    // Twice is fine: migrations already applied are skipped.
    let out = Command::new(env!("CARGO_BIN_EXE_vitalbridge"))
        .arg("migrate")
        .current_dir(&dir)
        .env_remove("DATABASE_URL")
        .output()
        .expect("again");
    assert!(out.status.success());
    // A bad database URL is a clear error, not a panic.
    let out = Command::new(env!("CARGO_BIN_EXE_vitalbridge"))
        .args([
            "migrate",
            "--database-url",
            "postgres://nobody@127.0.0.1:1/none",
        ])
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("error:") && !err.contains("panicked"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

async fn logs_carry_request_ids_and_no_patient_data(backend: Backend) {
    let db = fresh_database(backend).await;
    let log_path =
        std::env::temp_dir().join(format!("vb-log-{}.txt", uuid::Uuid::new_v4().simple()));
    let log = std::fs::File::create(&log_path).expect("log file");
    let port = free_port();
    // The most verbose level: nothing logged at any level may carry patient data.
    let Server { mut child, base } = start_logging(&db, port, "debug", Stdio::from(log), &[]).await;
    let client = crate::common::admin_client(base.trim_end_matches("/fhir")).await;
    let mut p = patient("Zebedee-Secret-Surname");
    p["identifier"] = json!([{"system": "urn:mrn", "value": "MRN-SECRET-4711"}]);
    let r = client
        .post(format!("{base}/Patient"))
        .header("content-type", "application/fhir+json")
        .body(p.to_string())
        .send()
        .await
        .expect("create");
    assert_eq!(r.status(), 201);
    let r = client
        .get(format!("{base}/Patient?identifier=urn:mrn|MRN-SECRET-4711"))
        .send()
        .await
        .expect("search");
    assert_eq!(r.status(), 200);
    // A rejected body that quotes patient data.
    let mut bad = p.clone();
    bad["birthDate"] = json!("Zebedee-Secret-Birthday");
    let r = client
        .post(format!("{base}/Patient"))
        .header("content-type", "application/fhir+json")
        .body(bad.to_string())
        .send()
        .await
        .expect("bad");
    assert_eq!(r.status(), 400);
    // A server error: the table the write path needs is gone.
    match backend {
        Backend::Postgres => {
            use sqlx::Connection;
            let mut c = sqlx::PgConnection::connect(&db).await.expect("connect");
            sqlx::query("drop table change_log")
                .execute(&mut c)
                .await
                .expect("drop");
        }
        Backend::Sqlite => {
            use sqlx::Connection;
            let mut c = sqlx::SqliteConnection::connect(&db).await.expect("connect");
            sqlx::query("drop table change_log")
                .execute(&mut c)
                .await
                .expect("drop");
        }
    }
    let r = client
        .post(format!("{base}/Patient"))
        .header("content-type", "application/fhir+json")
        .body(p.to_string())
        .send()
        .await
        .expect("create");
    assert_eq!(r.status(), 500);
    let request_id = r
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .expect("request id")
        .to_owned();
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    let logged = std::fs::read_to_string(&log_path).expect("log");
    std::fs::remove_file(&log_path).ok();
    let error_line = logged
        .lines()
        .find(|l| l.contains("internal error"))
        .unwrap_or_else(|| panic!("no error logged:\n{logged}"));
    assert!(
        error_line.contains(&request_id),
        "the logged error names the request id {request_id}: {error_line}"
    );
    for secret in ["Zebedee", "MRN-SECRET", "urn:mrn", "Secret-Birthday"] {
        assert!(
            !logged.contains(secret),
            "patient data '{secret}' in the log:\n{logged}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_carry_request_ids_and_no_patient_data_postgres() {
    logs_carry_request_ids_and_no_patient_data(Backend::Postgres).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_carry_request_ids_and_no_patient_data_sqlite() {
    logs_carry_request_ids_and_no_patient_data(Backend::Sqlite).await
}

/// `vitalbridge reindex --batch {batch}` on `database_url`, its output captured (stderr is not a
/// terminal).
fn reindex(database_url: &str, batch: usize) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_vitalbridge"))
        .args(["reindex", "--database-url", database_url])
        .args(["--batch", &batch.to_string()])
        .stdin(Stdio::null())
        .output()
        .expect("reindex runs")
}

/// `vitalbridge reindex` rebuilds the search index from the stored JSON: after the index rows
/// are lost, searches find nothing; after a reindex (with the server still running) they find
/// exactly what they found before.
async fn reindex_rebuilds_lost_rows(backend: Backend) {
    let app = crate::common::spawn(backend).await;
    let p = app.create(&patient("Reindexed")).await;
    for bpm in [61.0, 72.0, 95.0] {
        app.create(&heart_rate(&p, bpm)).await;
    }
    let query = format!("Observation?patient={p}&value-quantity=gt70&_total=accurate");
    let before = app.get(&query).await.json();
    assert_eq!(before["total"], 2, "{before}");

    // Lose every index row, as an upgrade that changes what is indexed would need rebuilt.
    let tables = [
        "search_token",
        "search_string",
        "search_date",
        "search_reference",
        "search_quantity",
        "search_number",
        "search_uri",
        "search_composite",
    ];
    match backend {
        Backend::Postgres => {
            use sqlx::Connection;
            let mut conn = sqlx::PgConnection::connect(&app.database_url)
                .await
                .expect("connect");
            for t in tables {
                sqlx::query(sqlx::AssertSqlSafe(format!("delete from {t}")))
                    .execute(&mut conn)
                    .await
                    .expect("delete");
            }
        }
        Backend::Sqlite => {
            use sqlx::Connection;
            let mut conn = sqlx::SqliteConnection::connect(&app.database_url)
                .await
                .expect("connect");
            for t in tables {
                sqlx::query(sqlx::AssertSqlSafe(format!("delete from {t}")))
                    .execute(&mut conn)
                    .await
                    .expect("delete");
            }
        }
    }
    assert_eq!(app.get(&query).await.json()["total"], 0);

    let out = reindex(&app.database_url, 2);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // One Patient, three Observations and the shipped StructureDefinitions, in batches of two.
    let shipped = vitalbridge::fhir::profiles::PROFILES.len();
    assert!(
        stdout.contains(&format!("reindexed {} resources", 4 + shipped)),
        "{stdout}"
    );
    assert!(stdout.contains("vacuumed and analysed"), "{stdout}");
    let after = app.get(&query).await.json();
    assert_eq!(after["total"], 2, "{after}");
    let ids = |b: &Value| {
        let mut v: Vec<String> = b["entry"]
            .as_array()
            .map(|e| {
                e.iter()
                    .filter_map(|e| e["resource"]["id"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    };
    assert_eq!(ids(&after), ids(&before));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reindex_rebuilds_lost_rows_postgres() {
    reindex_rebuilds_lost_rows(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reindex_rebuilds_lost_rows_sqlite() {
    reindex_rebuilds_lost_rows(Backend::Sqlite).await;
}

/// Off a terminal (a log file, a CI job), a long command reports its progress in plain lines
/// at each 10 % and a final line, without a progress bar's escape codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reindex_reports_progress_in_plain_lines_off_a_terminal() {
    let app = crate::common::spawn(Backend::Sqlite).await;
    let entries: Vec<Value> = (0..300)
        .map(|i| {
            json!({
                "resource": patient(&format!("Progress{i}")),
                "request": {"method": "POST", "url": "Patient"}
            })
        })
        .collect();
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": entries});
    let r = app
        .send(
            app.client
                .post(&app.base)
                .header("content-type", "application/fhir+json")
                .body(bundle.to_string()),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);

    let out = reindex(&app.database_url, 20);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    let total = 300 + vitalbridge::fhir::profiles::PROFILES.len();
    // Batches of 20 are less than a tenth of the total: a line as each tenth is passed, with
    // the percentage reached.
    let percents: Vec<u64> = stderr
        .lines()
        .filter_map(|l| {
            let (p, _) = l.strip_prefix("reindex: ")?.split_once(" % (")?;
            p.trim().parse().ok()
        })
        .collect();
    assert_eq!(percents.len(), 10, "{stderr}");
    for (tenth, p) in (1..=10).zip(&percents) {
        assert!((tenth * 10..tenth * 10 + 10).contains(p), "{stderr}");
    }
    assert!(
        stderr.contains(&format!("reindex: 100 % ({total}/{total} resources, ")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("reindex: done, {total} resources in ")),
        "{stderr}"
    );
    assert!(!stderr.contains('\x1b'), "{stderr:?}");
    assert!(
        stdout.contains(&format!("reindexed {total} resources")),
        "{stdout}"
    );
}

/// `vitalbridge decode` (issue 5, item 4): JSON on stdout for a packet it can read; status 2
/// and the reason on stderr for one it cannot.
#[test]
fn decode_command_prints_the_measurement_or_exits_2() {
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_vitalbridge"))
            .arg("decode")
            .args(args)
            .output()
            .expect("vitalbridge runs")
    };
    let out = run(&[
        "--characteristic",
        "0x2A1C",
        "--hex",
        "06b00e00fedc070c050b321b04",
    ]);
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["measurement"]["temperature"]["value"], "37.60");
    assert_eq!(v["measurement"]["temperature_type"]["name"], "finger");

    let out = run(&[
        "--characteristic",
        "0x2A1C",
        "--hex",
        "06b00e00fedc070c050b321b",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("truncated: temperature type"), "{err}");

    let out = run(&[
        "--characteristic",
        "0x2A35",
        "--hex",
        "14780050005d00004802 0001",
        "--model",
        "Beurer BM85",
    ]);
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["profile"], "Beurer BM series");
    assert_eq!(v["measurement"]["pulse_rate"]["value"], "72");
    assert_eq!(v["measurement"]["user_id"], 2);
}

/// `vitalbridge decode --vendor V --file F`: a cellular vendor's payload, reading by reading,
/// and the Observations each would become; exit status 2 when nothing in it can be read.
#[test]
fn decode_command_reads_vendor_payloads() {
    let dir = std::env::temp_dir().join(format!("vb-decode-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let run = |vendor: &str, payload: &str| {
        let file = dir.join(format!("{vendor}.json"));
        std::fs::write(&file, payload).expect("write");
        Command::new(env!("CARGO_BIN_EXE_vitalbridge"))
            .args(["decode", "--vendor", vendor, "--file"])
            .arg(&file)
            .output()
            .expect("vitalbridge runs")
    };
    let out = run(
        "tenovi",
        r#"{"metric": "blood_pressure", "value_1": 128, "value_2": 82,
            "hwi_device_id": "hwi-1", "timestamp": "2026-12-01T10:00:00Z"}"#,
    );
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let reading = &v["readings"][0];
    assert_eq!(reading["device"]["value"], "hwi-1");
    assert_eq!(reading["measurement"]["systolic"]["value"], "128");
    assert_eq!(reading["fhir"][0]["code"]["coding"][1]["code"], "85354-9");

    let out = run("bodytrace", r#"{"deviceId": 1, "ts": "yesterday"}"#);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("ts must be"));
    let out = run("acme", "{}");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("known: tenovi"));
    let _ = std::fs::remove_dir_all(&dir);
}
