//! The gateway end to end (issue 8): simulated health devices on a simulated BlueZ
//! (`tests/ble/bluez_sim.py`, python-dbusmock on a private D-Bus) → `vitalbridge gateway` (the
//! real binary, through btleplug) → a real server → Observations. The network between the
//! gateway and the server is a TCP relay the tests switch off and on, for outages.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::common::{Backend, TestApp, put_organization, spawn};

/// A simulated BlueZ with the devices of a scenario; stopped (SIGTERM through stdin EOF) when
/// dropped.
struct Bluez {
    child: Child,
    bus: String,
    log: PathBuf,
}

impl Bluez {
    fn start(dir: &Path, scenario: &Value) -> Bluez {
        let file = dir.join(format!("scenario-{}.json", uuid::Uuid::new_v4().simple()));
        std::fs::write(&file, scenario.to_string()).expect("scenario");
        let log = file.with_extension("log");
        let mut child = Command::new("/usr/bin/python3")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ble/bluez_sim.py"))
            .arg(&file)
            .arg("--log")
            .arg(&log)
            .arg("--exit-on-stdin-eof")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("the BlueZ simulator starts (scripts/test.sh installs python3-dbusmock)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("the simulator's first line");
        let bus = line
            .trim()
            .strip_prefix("DBUS_SYSTEM_BUS_ADDRESS=")
            .unwrap_or_else(|| panic!("the simulator did not start: {line:?}"))
            .to_owned();
        Bluez { child, bus, log }
    }

    /// The simulator's event log.
    fn events(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

impl Drop for Bluez {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

/// A `vitalbridge gateway` process; killed when dropped.
struct Gateway {
    child: Child,
}

impl Gateway {
    fn start(config: &Path, bus: &str) -> Gateway {
        let log = std::fs::File::create(
            config.with_extension(format!("{}.log", uuid::Uuid::new_v4().simple())),
        )
        .expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_vitalbridge"))
            .args(["gateway", "--config"])
            .arg(config)
            .env("DBUS_SYSTEM_BUS_ADDRESS", bus)
            .env("VB_LOG", "info")
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("vitalbridge gateway starts");
        Gateway { child }
    }

    /// SIGTERM, as systemd stops it (then it must exit cleanly within 10 s), or SIGKILL.
    fn stop(mut self, signal: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status();
        for _ in 0..100 {
            if let Ok(Some(status)) = self.child.try_wait() {
                if signal == "TERM" {
                    assert!(
                        status.success(),
                        "the gateway's exit after SIGTERM: {status}"
                    );
                }
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the gateway did not exit within 10 s of SIG{signal}");
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `vitalbridge gateway status` for `config`, off the runtime's worker threads (which also
/// serve the server and the relay).
async fn status(config: &Path) -> String {
    let config = config.to_owned();
    tokio::task::spawn_blocking(move || status_now(&config))
        .await
        .expect("status")
}

fn status_now(config: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_vitalbridge"))
        .args(["gateway", "status", "--config"])
        .arg(config)
        .output()
        .expect("gateway status");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// The network between gateway and server: a TCP relay from its own port to the server. The
/// port stays bound for the whole test (no other test can take it); while the network is down
/// each connection is closed at once, as a broken link does.
struct Network {
    port: u16,
    up: Arc<std::sync::atomic::AtomicBool>,
}

impl Network {
    async fn new(target: String) -> Network {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a free port");
        let port = listener.local_addr().expect("addr").port();
        let up = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let open = up.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if !open.load(std::sync::atomic::Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let target = target.clone();
                tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Network { port, up }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    async fn up(&mut self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// What a test needs on the server: clinic c1, patient p1 with a cuff and a glucose meter
/// registered by their Bluetooth addresses, and a hub client with its Device. Returns the
/// gateway's configuration file.
async fn clinic(app: &TestApp, dir: &Path, server: &str) -> PathBuf {
    let devices = [
        ("cuff-1", "A4-C1-38-0B-2C-01"),
        ("gluco-1", "A4-C1-38-0B-2C-04"),
    ];
    clinic_with(
        app,
        dir,
        server,
        &devices,
        &["A4:C1:38:0B:2C:01", "A4:C1:38:0B:2C:04"],
    )
    .await
}

/// [`clinic`] with these Devices (id, Bluetooth address) and the addresses the gateway follows
/// (none: every health device).
async fn clinic_with(
    app: &TestApp,
    dir: &Path,
    server: &str,
    devices: &[(&str, &str)],
    follow: &[&str],
) -> PathBuf {
    put_organization(app, "c1", None).await;
    let mut p = crate::common::patient("p1");
    p["id"] = json!("p1");
    p["managingOrganization"] = json!({"reference": "Organization/c1"});
    assert_eq!(app.put("Patient/p1", &p).await.status, 201);
    for (id, address) in devices {
        let d = json!({"resourceType": "Device", "id": id, "status": "active",
            "identifier": [{"system": "http://hl7.org/fhir/sid/eui-48/bluetooth", "value": address}],
            "patient": {"reference": "Patient/p1"},
            "owner": {"reference": "Organization/c1"}});
        assert_eq!(app.put(&format!("Device/{id}"), &d).await.status, 201);
    }
    let r = app
        .send(
            app.client
                .post(format!("{}/auth/clients", app.origin()))
                .json(&json!({"role": "hub", "organization": "c1"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let client = r.json();
    let hub = json!({"resourceType": "Device", "id": "hub-1", "status": "active",
        "identifier": [{"system": vitalbridge::ingest::pipeline::HUB_CLIENT_SYSTEM,
                        "value": client["client_id"]}],
        "owner": {"reference": "Organization/c1"}});
    assert_eq!(app.put("Device/hub-1", &hub).await.status, 201);
    let config = dir.join("gateway.json");
    std::fs::write(
        &config,
        json!({
            "server": server,
            "clientId": client["client_id"],
            "clientSecret": client["client_secret"],
            "dataDir": dir.join("data"),
            "devices": follow,
            "maxBackoffSecs": 2
        })
        .to_string(),
    )
    .expect("config");
    // Device time stamps are whole seconds: past the second of the registration.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    config
}

/// Date Time fields (GATT 0x2A08) of `t`.
fn date_time(t: time::OffsetDateTime) -> Vec<u8> {
    let mut b = (t.year() as u16).to_le_bytes().to_vec();
    b.extend_from_slice(&[
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
    ]);
    b
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Blood pressure (0x2A35): mmHg, time stamp, pulse.
fn bp(systolic: u16, t: time::OffsetDateTime) -> String {
    let mut b = vec![0x06];
    for v in [systolic, 80, 93] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b.extend(date_time(t));
    b.extend_from_slice(&70u16.to_le_bytes());
    hex(&b)
}

/// A stored glucose record (0x2A18): sequence number, base time, concentration in kg/L
/// (SFLOAT, `mg_dl` × 10⁻⁵), capillary whole blood from a finger.
fn glucose(seq: u16, mg_dl: u16, t: time::OffsetDateTime) -> String {
    let mut b = vec![0x02];
    b.extend_from_slice(&seq.to_le_bytes());
    b.extend(date_time(t));
    b.extend_from_slice(&((0xB << 12) | mg_dl).to_le_bytes());
    b.push(0x11);
    hex(&b)
}

/// A cuff that sends two readings (each twice) and disconnects, and a glucose meter with two
/// stored records; `replay`: every new connection sends them again, and the cuff has a clock.
fn devices(replay: bool) -> Value {
    let now = time::OffsetDateTime::now_utc();
    // Current Time only where the cuff replays: its clock is read (and queued) at every
    // connection, which would make the queue's depth depend on how often it reconnected.
    let cuff_services = if replay {
        json!(["1810", "180f", "180a", "1805"])
    } else {
        json!(["1810", "180f", "180a"])
    };
    json!({"timing": {"advertiseIntervalMs": 500}, "devices": [
        {"address": "A4:C1:38:0B:2C:01", "name": "BP Cuff", "services": cuff_services,
         "measurements": [{"characteristic": "2A35", "hex": bp(128, now)},
                          {"characteristic": "2A35", "hex": bp(131, now + time::Duration::seconds(1))}],
         "battery": 87, "manufacturer": "Omron", "model": "BP7250",
         "disconnectAfterSend": true, "repeat": 2, "replayOnReconnect": replay},
        {"address": "A4:C1:38:0B:2C:04", "name": "Glucose Meter", "services": ["1808", "180f", "180a"],
         "measurements": [{"characteristic": "2A18", "hex": glucose(1, 95, now)},
                          {"characteristic": "2A18", "hex": glucose(2, 104, now + time::Duration::seconds(1))}],
         "battery": 92, "manufacturer": "Roche", "model": "Guide",
         "disconnectAfterSend": true, "replayOnReconnect": replay}
    ]})
}

/// Observations of `device`, counted by the server.
async fn observations(app: &TestApp, device: &str) -> i64 {
    let r = app
        .get(&format!(
            "Observation?device=Device/{device}&_summary=count"
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.json()["total"].as_i64().expect("total")
}

/// Waits until both devices' readings are Observations: the cuff's two readings (blood
/// pressure and pulse each) and the meter's two records, each once however often it was sent.
async fn all_arrive(app: &TestApp) {
    let mut last = (0, 0);
    for _ in 0..300 {
        last = (
            observations(app, "cuff-1").await,
            observations(app, "gluco-1").await,
        );
        if last == (4, 2) {
            // Nothing more comes: repeats and replays are duplicates.
            tokio::time::sleep(Duration::from_secs(2)).await;
            assert_eq!(
                (
                    observations(app, "cuff-1").await,
                    observations(app, "gluco-1").await
                ),
                (4, 2)
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("(cuff, meter) Observations: {last:?}, not (4, 2)");
}

/// Waits until the gateway's queue holds `n` readings, or at least `n` when `n` is not 0 (a
/// device's clock is queued at each connection) (`gateway status`).
async fn queued(config: &Path, n: usize) -> String {
    let want = format!(
        "queued:        {} {n} readings",
        if n == 0 { "" } else { "≥" }
    );
    let mut last = String::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        last = status(config).await;
        let depth: Option<usize> = last
            .lines()
            .find_map(|l| l.strip_prefix("queued:"))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|d| d.parse().ok());
        if depth.is_some_and(|d| if n == 0 { d == 0 } else { d >= n }) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("never {want}:\n{last}\n{}", logs(config));
}

/// The gateway's and the simulator's logs beside `config`, for a failure's message.
fn logs(config: &Path) -> String {
    let mut out = String::new();
    let dir = config.parent().expect("dir");
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "log") {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            out.push_str(&format!("--- {}\n", path.display()));
            for l in tail.into_iter().rev() {
                out.push_str(l);
                out.push('\n');
            }
        }
    }
    out
}

fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vb-gateway-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("dir");
    dir
}

async fn setup() -> (TestApp, Network, PathBuf, PathBuf) {
    let app = spawn(Backend::Postgres).await;
    let network = Network::new(app.origin().trim_start_matches("http://").to_owned()).await;
    let dir = temp_dir();
    let config = clinic(&app, &dir, &network.url()).await;
    (app, network, dir, config)
}

/// The whole path: the gateway finds the devices by their health services, connects, reads
/// Device Information and the battery, sets the cuff's clock, subscribes, asks the meter for
/// its stored records; the cuff disconnects after sending and comes back; every reading becomes
/// an Observation once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_travel_from_simulated_devices_to_observations() {
    let (app, mut network, dir, config) = setup().await;
    network.up().await;
    let bluez = Bluez::start(&dir, &devices(true));
    let _gateway = Gateway::start(&config, &bluez.bus);
    all_arrive(&app).await;

    let events = bluez.events();
    let wrote_time = events.iter().any(|e| {
        e["event"] == "write"
            && e["characteristic"]
                .as_str()
                .is_some_and(|c| c.to_ascii_lowercase().contains("2a2b"))
            && e["hex"].as_str().is_some_and(|h| h.len() == 20)
    });
    assert!(
        wrote_time,
        "the cuff's Current Time was written: {events:?}"
    );
    assert!(
        events.iter().any(|e| e["event"] == "racp"),
        "the meter was asked for its records"
    );
    let s = queued(&config, 0).await;
    for expected in [
        "A4:C1:38:0B:2C:01",
        "Omron BP7250",
        "battery 87 %",
        "battery 92 %",
        "0x2A18",
    ] {
        assert!(s.contains(expected), "{expected} in:\n{s}");
    }
    assert!(!s.contains("last upload:   never"), "{s}");
    std::fs::remove_dir_all(&dir).ok();
}

/// The server cannot be reached for a while: readings wait in the queue, then all arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_wait_out_a_server_outage() {
    let (app, mut network, dir, config) = setup().await;
    let bluez = Bluez::start(&dir, &devices(false));
    let _gateway = Gateway::start(&config, &bluez.bus);
    // The cuff's two readings, each sent twice, and its battery; the meter's two records and
    // its battery.
    queued(&config, 8).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(observations(&app, "cuff-1").await, 0);
    network.up().await;
    all_arrive(&app).await;
    queued(&config, 0).await;
    std::fs::remove_dir_all(&dir).ok();
}

/// Queued readings survive the gateway stopping (SIGTERM) or being killed (SIGKILL) before it
/// could send them; the next start sends them.
async fn readings_survive(signal: &str) {
    let (app, mut network, dir, config) = setup().await;
    let bluez = Bluez::start(&dir, &devices(false));
    let gateway = Gateway::start(&config, &bluez.bus);
    queued(&config, 8).await;
    gateway.stop(signal);
    drop(bluez);
    network.up().await;
    // The devices are gone (only a strap the gateway does not follow is around): only the
    // queue has the readings.
    let strap = json!({"devices": [{"address": "A4:C1:38:0B:2C:06", "name": "HR Strap",
        "services": ["180d"], "measurements": [{"characteristic": "2A37", "hex": "0055"}]}]});
    let bluez = Bluez::start(&dir, &strap);
    let _gateway = Gateway::start(&config, &bluez.bus);
    all_arrive(&app).await;
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_survive_a_restart() {
    readings_survive("TERM").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_survive_kill_9() {
    readings_survive("KILL").await;
}

/// The devices of `tests/ble/scenario-example.json` send the byte sequences of the shared test
/// vectors (blood pressure, temperature, weight, glucose, pulse oximetry, heart rate; a device
/// BlueZ already knew; a measurement sent only on the second connection): the gateway, told
/// to follow every health device, delivers each sequence unchanged to the server, which
/// answers for each; those without a time stamp of their own become Observations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_vector_reaches_the_server() {
    use base64::Engine as _;
    use std::collections::BTreeSet;
    let app = spawn(Backend::Postgres).await;
    let mut network = Network::new(app.origin().trim_start_matches("http://").to_owned()).await;
    let dir = temp_dir();
    let ids: Vec<(String, String)> = (1..=6)
        .map(|n| (format!("dev-{n}"), format!("A4-C1-38-0B-2C-0{n}")))
        .collect();
    let devices: Vec<(&str, &str)> = ids.iter().map(|(i, a)| (i.as_str(), a.as_str())).collect();
    let config = clinic_with(&app, &dir, &network.url(), &devices, &[]).await;
    let scenario: Value =
        serde_json::from_str(include_str!("../ble/scenario-example.json")).expect("scenario");
    let b64 = |hex: &str| {
        let bytes: Vec<u8> = (0..hex.len() / 2)
            .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex"))
            .collect();
        base64::engine::general_purpose::STANDARD.encode(bytes)
    };
    let expected: BTreeSet<(String, String)> = scenario["devices"]
        .as_array()
        .expect("devices")
        .iter()
        .flat_map(|d| d["measurements"].as_array().cloned().unwrap_or_default())
        .map(|m| {
            (
                format!(
                    "0x{}",
                    m["characteristic"].as_str().expect("uuid").to_uppercase()
                ),
                b64(m["hex"].as_str().expect("hex")),
            )
        })
        .collect();
    network.up().await;
    let bluez = Bluez::start(&dir, &scenario);
    let _gateway = Gateway::start(&config, &bluez.bus);

    // What reached the server, from its raw messages, with the answer for each reading.
    let mut answered: BTreeSet<(String, String)> = BTreeSet::new();
    let mut reasons: Vec<(String, String)> = Vec::new();
    for _ in 0..200 {
        let r = app
            .send(
                app.client
                    .get(format!("{}/ingest/messages?count=200", app.origin())),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        for m in r.json()["messages"].as_array().into_iter().flatten() {
            let body = base64::engine::general_purpose::STANDARD
                .decode(m["body"].as_str().expect("body"))
                .expect("base64");
            let body: Value = serde_json::from_slice(&body).expect("a JSON batch");
            for (i, reading) in body["readings"]
                .as_array()
                .into_iter()
                .flatten()
                .enumerate()
            {
                let status = m["results"][i]["status"].as_str().unwrap_or_default();
                assert!(
                    ["accepted", "duplicate", "rejected"].contains(&status),
                    "{}",
                    m["results"]
                );
                let value = reading["value"].as_str().unwrap_or_default().to_owned();
                if let Some(reason) = m["results"][i]["reason"].as_str() {
                    reasons.push((value.clone(), reason.to_owned()));
                }
                answered.insert((
                    reading["characteristic"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    value,
                ));
            }
        }
        if expected.is_subset(&answered) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let missing: Vec<_> = expected.difference(&answered).collect();
    assert!(missing.is_empty(), "never reached the server: {missing:?}");
    // Heart rate (HR1, HR3) from the strap BlueZ knew before the scan, weight without a time
    // stamp (WS1) and the cuff's BP2 (kPa) carry no time of their own: Observations.
    for device in ["dev-6", "dev-3", "dev-1"] {
        assert!(
            observations(&app, device).await > 0,
            "{device} has Observations"
        );
    }
    // The bytes arrived as they were sent: BP3 (the second connection's) reads 18.9 mmHg,
    // which the server refuses as implausible, and the meter's record (GL1, from 2019) was
    // measured before the device was registered.
    let reason = |hex: &str| {
        let v = b64(hex);
        reasons
            .iter()
            .find(|(value, _)| *value == v)
            .map(|(_, r)| r.clone())
            .unwrap_or_default()
    };
    assert!(
        reason("00bdf00b009ff0").contains("plausible"),
        "{reasons:?}"
    );
    assert!(
        reason("1b0100e307021b0b0a1efbff1e00120501").contains("assigned to no patient"),
        "{reasons:?}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// Without D-Bus, or without BlueZ on it, the gateway says why and exits non-zero.
#[test]
fn no_bluetooth_is_a_clear_error() {
    let dir = temp_dir();
    let config = dir.join("gateway.json");
    std::fs::write(
        &config,
        json!({"server": "http://127.0.0.1:9", "clientId": "h", "clientSecret": "s",
               "dataDir": dir.join("data")})
        .to_string(),
    )
    .expect("config");
    let out = Command::new(env!("CARGO_BIN_EXE_vitalbridge"))
        .args(["gateway", "--config"])
        .arg(&config)
        .env("DBUS_SYSTEM_BUS_ADDRESS", "unix:path=/nonexistent/bus")
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot reach BlueZ"), "{err}");

    // A bus without BlueZ on it.
    let mut bus = Command::new("dbus-daemon")
        .args(["--session", "--nofork", "--print-address=1"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("dbus-daemon (scripts/test.sh installs it)");
    let mut address = String::new();
    BufReader::new(bus.stdout.take().expect("stdout"))
        .read_line(&mut address)
        .expect("the bus address");
    let out = Command::new(env!("CARGO_BIN_EXE_vitalbridge"))
        .args(["gateway", "--config"])
        .arg(&config)
        .env("DBUS_SYSTEM_BUS_ADDRESS", address.trim())
        .output()
        .expect("runs");
    let _ = bus.kill();
    let _ = bus.wait();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is bluetoothd running?"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}
