//! The Subscription email channel against a real SMTP server (PyPI aiosmtpd, started by the
//! test from `tests/smtp/server.py`; `scripts/test.sh` installs it into `target/pyenv`).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use vitalbridge::subscriptions::email::SmtpConfig;

use crate::common::{Backend, TestApp, heart_rate, patient, spawn_with};

pub const USER: &str = "vb-relay";
pub const PASSWORD: &str = "relay-pass:with-colon";

/// A running SMTP server and the directory it writes messages to.
pub struct SmtpServer {
    child: Child,
    pub port: u16,
    maildir: PathBuf,
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn python() -> PathBuf {
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/pyenv/bin/python");
    let python = std::env::var_os("VB_TEST_PYTHON").map_or(venv, PathBuf::from);
    assert!(
        python.exists(),
        "{} is missing: scripts/test.sh installs PyPI aiosmtpd into target/pyenv",
        python.display()
    );
    python
}

impl SmtpServer {
    /// Starts the server requiring AUTH, and with `tls` (certificate and key files) STARTTLS, or
    /// TLS from the first byte when `implicit`.
    pub async fn start(tls: Option<(PathBuf, PathBuf)>, implicit: bool) -> SmtpServer {
        let port = crate::process::free_port();
        let maildir = std::env::temp_dir()
            .join("vitalbridge-tests")
            .join(format!("mail-{}", uuid::Uuid::new_v4().simple()));
        let mut cmd = Command::new(python());
        cmd.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/smtp/server.py"))
            .args(["--port", &port.to_string()])
            .arg("--maildir")
            .arg(&maildir)
            .args(["--user", USER, "--password", PASSWORD]);
        if let Some((cert, key)) = &tls {
            cmd.arg("--tls-cert").arg(cert).arg("--tls-key").arg(key);
            if implicit {
                cmd.arg("--implicit-tls");
            }
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the SMTP server starts");
        let server = SmtpServer {
            child,
            port,
            maildir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "the SMTP server did not listen");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        server
    }

    /// Waits for `n` messages: each as received, with its envelope.
    pub async fn wait_for(&self, n: usize) -> Vec<(String, Value)> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let got: Vec<(String, Value)> = (1..=n)
                .map_while(|i| {
                    let eml =
                        std::fs::read_to_string(self.maildir.join(format!("{i}.eml"))).ok()?;
                    // Long headers are folded onto continuation lines.
                    let eml = eml.replace("\r\n ", " ").replace("\n ", " ");
                    let meta =
                        std::fs::read_to_string(self.maildir.join(format!("{i}.json"))).ok()?;
                    Some((eml, serde_json::from_str(&meta).ok()?))
                })
                .collect();
            if got.len() == n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {n} messages arrived",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn app_with_relay(backend: Backend, url: String, ca_file: Option<PathBuf>) -> TestApp {
    spawn_with(backend, move |s| {
        s.subscriptions.smtp = Some(SmtpConfig {
            url,
            from: "vitalbridge@test.example".into(),
            ca_file,
        });
        s.subscriptions.backoff = Duration::from_millis(50);
    })
    .await
}

fn email(to: &str, payload: Option<&str>) -> Value {
    let mut s = json!({
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "readings by email",
        "criteria": "Observation?code=8867-4",
        "channel": {"type": "email", "endpoint": format!("mailto:{to}")}
    });
    if let Some(p) = payload {
        s["channel"]["payload"] = json!(p);
    }
    s
}

async fn subscribe(app: &TestApp, sub: &Value) -> String {
    let id = app.create(sub).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let s = app.get(&format!("Subscription/{id}")).await.json();
        if s["status"] == "active" {
            return id;
        }
        assert!(Instant::now() < deadline, "never active: {s}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A notice goes to the address through the relay with its credentials; it names the change
/// and carries no patient data; with a payload the version is attached.
async fn notices_arrive_through_the_relay(backend: Backend) {
    let smtp = SmtpServer::start(None, false).await;
    let url = format!(
        "smtp://{USER}:{}@127.0.0.1:{}",
        "relay-pass%3Awith-colon", smtp.port
    );
    let app = app_with_relay(backend, url, None).await;
    let plain = subscribe(&app, &email("nurse@clinic.example", None)).await;
    let mut pt = patient("Zanzibarova");
    pt["name"][0]["given"] = json!(["Philippa"]);
    let p = app.create(&pt).await;
    // A value with a decimal point: bare digits such as "123" turn up in ids and times.
    let obs = app.create(&heart_rate(&p, 173.5)).await;
    let got = smtp.wait_for(1).await;
    let (eml, meta) = &got[0];
    assert_eq!(meta["to"], json!(["nurse@clinic.example"]));
    assert_eq!(meta["from"], "vitalbridge@test.example");
    assert_eq!(meta["user"], USER, "the relay's credentials were used");
    assert!(
        eml.contains(&format!("(subscription {plain}, event 1)")),
        "{eml}"
    );
    assert!(
        eml.contains(&format!(
            "Resource: Observation/{obs}\r\nChange: created, version 1"
        )),
        "{eml}"
    );
    assert!(eml.contains("Content-Transfer-Encoding: 7bit"), "{eml}");
    for phi in ["Zanzibarova", "Philippa", "173.5", &p] {
        assert!(!eml.contains(phi), "the notice carries {phi}: {eml}");
    }
    subscribe(
        &app,
        &email("records@clinic.example", Some("application/fhir+json")),
    )
    .await;
    let obs2 = app.create(&heart_rate(&p, 99.0)).await;
    let got = smtp.wait_for(3).await;
    let attached = got
        .iter()
        .find(|(_, m)| m["to"] == json!(["records@clinic.example"]))
        .map(|(e, _)| e.clone())
        .expect("the payload subscription's message");
    assert!(
        attached.contains("Content-Disposition: attachment"),
        "{attached}"
    );
    assert!(
        attached.contains(&format!("Observation-{obs2}-1.json\"")),
        "{attached}"
    );
    assert!(
        attached.contains("Content-Type: application/fhir+json"),
        "{attached}"
    );
    // Quoted-printable: soft line breaks joined, the JSON is the version.
    let joined = attached.replace("=\r\n", "");
    assert!(joined.contains(&format!("\"id\":\"{obs2}\"")), "{joined}");
    assert!(joined.contains("\"value\":99.0"), "{joined}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notices_arrive_through_the_relay_postgres() {
    notices_arrive_through_the_relay(Backend::Postgres).await
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notices_arrive_through_the_relay_sqlite() {
    notices_arrive_through_the_relay(Backend::Sqlite).await
}

/// STARTTLS (`smtp://…?tls=required`) and TLS from the first byte (`smtps://`) to a relay whose
/// certificate a private CA issued (`VB_SMTP_CA_FILE`).
async fn tls_to_a_relay_with_a_private_ca(implicit: bool) {
    let pki = crate::tls::pki();
    let smtp = SmtpServer::start(
        Some((pki.dir.join("server.pem"), pki.dir.join("server.key"))),
        implicit,
    )
    .await;
    let url = if implicit {
        format!(
            "smtps://{USER}:relay-pass%3Awith-colon@localhost:{}",
            smtp.port
        )
    } else {
        format!(
            "smtp://{USER}:relay-pass%3Awith-colon@localhost:{}?tls=required",
            smtp.port
        )
    };
    let app = app_with_relay(Backend::Sqlite, url, Some(pki.dir.join("ca.pem"))).await;
    subscribe(&app, &email("nurse@clinic.example", None)).await;
    let p = app.create(&patient("Tls")).await;
    app.create(&heart_rate(&p, 70.0)).await;
    let got = smtp.wait_for(1).await;
    assert_eq!(got[0].1["tls"], true, "the message went over TLS");
    assert_eq!(got[0].1["user"], USER);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_to_a_relay_with_a_private_ca() {
    tls_to_a_relay_with_a_private_ca(false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn implicit_tls_to_a_relay_with_a_private_ca() {
    tls_to_a_relay_with_a_private_ca(true).await
}

/// Without a relay an email subscription cannot be served: it goes to `error` saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_relay_an_email_subscription_is_in_error() {
    let app = crate::common::spawn(Backend::Sqlite).await;
    let id = app.create(&email("nurse@clinic.example", None)).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let s = app.get(&format!("Subscription/{id}")).await.json();
        if s["status"] == "error" {
            assert!(
                s["error"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("VB_SMTP_URL"),
                "{s}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "never in error: {s}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
