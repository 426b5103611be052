//! `vitalbridge conformance`: checks any FHIR R4 server over HTTP and reports what it does and
//! does not do, grouped as REST core, search, SMART discovery and Backend Services,
//! Subscriptions (with a receiver of its own), PHD device profiles and US-Core-style vital-signs
//! searches. Every check makes its own data under fresh identifiers, so the suite runs again
//! and again against the same server, and deletes what it made at the end.
//!
//! A check is skipped only when the server's CapabilityStatement (or its SMART configuration)
//! says it does not offer what the check tests; a statement that describes no resources at all
//! is taken as saying nothing, and the check runs.

pub mod client;
pub mod junit;
pub mod runner;

mod phd;
mod rest;
mod search;
mod smart;
mod subscriptions;
mod vitals;

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context as _;
use serde_json::Value;

use client::{Capabilities, Fhir, Resp};
use runner::{Problem, Report, ensure, fail};

#[derive(Debug, Clone, clap::Args)]
pub struct ConformanceArgs {
    /// The FHIR base URL of the server to check, e.g. http://127.0.0.1:8080/fhir
    #[arg(long)]
    pub base_url: String,
    /// A bearer access token sent with every request
    #[arg(long, env = "VB_CONFORMANCE_TOKEN", hide_env_values = true,
          conflicts_with_all = ["client_id", "client_secret"])]
    pub token: Option<String>,
    /// A client of the server's authorization server: the suite gets a token with
    /// client_credentials (HTTP Basic) at the token endpoint it discovers, and checks that flow
    #[arg(long, requires = "client_secret")]
    pub client_id: Option<String>,
    /// The client's secret
    #[arg(
        long,
        env = "VB_CONFORMANCE_CLIENT_SECRET",
        hide_env_values = true,
        requires = "client_id"
    )]
    pub client_secret: Option<String>,
    /// Scopes to ask the token endpoint for, space separated [default: none asked, the
    /// client's own]
    #[arg(long)]
    pub scope: Option<String>,
    /// Write the results as JUnit XML to this file
    #[arg(long)]
    pub junit: Option<PathBuf>,
    /// The host name or address the server reaches this machine's notification receiver at
    #[arg(long, default_value = "127.0.0.1")]
    pub receiver_host: String,
    /// Seconds to wait for a Subscription to become active and for a notification to arrive
    #[arg(long, default_value_t = 20)]
    pub notification_timeout: u64,
}

/// What every check may use.
pub struct Context {
    pub fhir: Fhir,
    pub caps: Capabilities,
    /// The answer to `GET [base]/metadata`, read before the checks.
    pub metadata: Result<Resp, Problem>,
    /// The answer to `GET [base]/.well-known/smart-configuration`.
    pub smart: Result<Resp, Problem>,
    pub args: ConformanceArgs,
    /// What the checks created (`Type/id`), deleted at the end, newest first.
    created: Mutex<Vec<String>>,
}

impl Context {
    /// A fresh identifier for one check's data.
    pub fn unique(&self) -> String {
        uuid::Uuid::new_v4().simple().to_string()
    }

    pub fn notification_timeout(&self) -> Duration {
        Duration::from_secs(self.args.notification_timeout.max(1))
    }

    /// The SMART configuration document, if the server serves one.
    pub fn smart_configuration(&self) -> Option<Value> {
        let r = self.smart.as_ref().ok()?;
        (r.status == 200)
            .then(|| r.json().ok())
            .flatten()
            .filter(Value::is_object)
    }

    /// Remembers `reference` (`Type/id`) for deletion at the end.
    pub fn created(&self, reference: String) {
        if let Ok(mut list) = self.created.lock() {
            list.push(reference);
        }
    }

    /// Creates `resource` (https://hl7.org/fhir/R4/http.html#create: 201) and returns it as
    /// stored; reads it at its Location when the server sends no body.
    pub async fn create(&self, resource: &Value) -> Result<Value, Problem> {
        let ty = resource["resourceType"].as_str().unwrap_or_default();
        let r = self.fhir.post(ty, resource).await?;
        r.expect(&[201])?;
        let stored = match r.json() {
            Ok(v) if v["resourceType"] == ty => v,
            _ => {
                let location = r.header("location").ok_or_else(|| {
                    fail(format!(
                        "a create answered without the resource and without a Location; {}",
                        r.describe()
                    ))
                })?;
                self.fhir.get(location).await?.resource(&[200], ty)?
            }
        };
        let id = stored["id"]
            .as_str()
            .ok_or_else(|| fail(format!("the created {ty} has no id; {}", r.describe())))?;
        self.created(format!("{ty}/{id}"));
        Ok(stored)
    }

    /// Creates `resource` and returns its id.
    pub async fn create_id(&self, resource: &Value) -> Result<String, Problem> {
        let v = self.create(resource).await?;
        Ok(v["id"].as_str().unwrap_or_default().to_owned())
    }

    /// Deletes what the checks created, newest first; what the server refuses stays.
    async fn clean_up(&self) -> (usize, usize) {
        let list: Vec<String> = self
            .created
            .lock()
            .map(|mut l| std::mem::take(&mut *l))
            .unwrap_or_default();
        let mut deleted = 0;
        for reference in list.iter().rev() {
            if let Ok(r) = self.fhir.delete(reference).await
                && (200..300).contains(&r.status)
            {
                deleted += 1;
            }
        }
        (deleted, list.len())
    }
}

/// The fixtures under `conformance/fixtures/`: resources with `{{name}}` placeholders.
pub mod fixtures {
    pub const PATIENT: &str = include_str!("../../conformance/fixtures/patient.json");
    pub const VITAL_SIGN: &str = include_str!("../../conformance/fixtures/vital-sign.json");
    pub const PHD_DEVICE: &str = include_str!("../../conformance/fixtures/phd-device.json");
    pub const PHD_WEIGHT: &str = include_str!("../../conformance/fixtures/phd-body-weight.json");
    pub const PHD_BP: &str = include_str!("../../conformance/fixtures/phd-blood-pressure.json");
    pub const PHD_PULSE: &str = include_str!("../../conformance/fixtures/phd-pulse-rate.json");
}

/// `template` with each `{{key}}` replaced by its value, parsed.
pub fn fixture(template: &str, vars: &[(&str, &str)]) -> Value {
    let mut text = template.to_owned();
    for (key, value) in vars {
        text = text.replace(&format!("{{{{{key}}}}}"), value);
    }
    // The fixtures are part of the binary and tested to parse with their placeholders filled.
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("fixture does not parse ({e}): {text}"))
}

/// A Patient with a family name and identifier of its own.
pub fn patient(unique: &str) -> Value {
    fixture(fixtures::PATIENT, &[("unique", unique)])
}

/// A vital-sign Observation of `patient`: LOINC `code`, `value` in UCUM `unit`, at `date`.
pub fn vital_sign(patient: &str, code: &str, value: &str, unit: &str, date: &str) -> Value {
    fixture(
        fixtures::VITAL_SIGN,
        &[
            ("patient", patient),
            ("code", code),
            ("value", value),
            ("unit", unit),
            ("date", date),
            ("category", "vital-signs"),
        ],
    )
}

/// Runs every check against `args.base_url`; an error when any failed.
pub async fn run(args: ConformanceArgs) -> anyhow::Result<()> {
    let mut fhir = Fhir::new(&args.base_url, args.token.clone())?;
    println!("vitalbridge conformance: checking {}", fhir.base);
    let metadata = fhir.get("metadata").await;
    let caps = Capabilities {
        statement: metadata
            .as_ref()
            .ok()
            .filter(|r| r.status == 200)
            .and_then(|r| r.json().ok())
            .filter(|v: &Value| v["resourceType"] == "CapabilityStatement"),
    };
    // Discovery needs no token (SMART App Launch 2, conformance.html).
    let smart = fhir.get(".well-known/smart-configuration").await;
    let mut cx = Context {
        fhir: fhir.clone(),
        caps,
        metadata,
        smart,
        args: args.clone(),
        created: Mutex::new(Vec::new()),
    };
    if let (Some(id), Some(secret)) = (&args.client_id, &args.client_secret) {
        match smart::client_credentials(&cx, id, secret).await {
            Ok(token) => fhir.token = Some(token),
            Err(Problem::Fail(why) | Problem::Skip(why)) => {
                println!("warning: no access token for {id}: {why}");
            }
        }
        cx.fhir = fhir;
    }

    let mut report = Report::new();
    rest::run(&cx, &mut report.group("REST core")).await;
    search::run(&cx, &mut report.group("Search")).await;
    smart::run(
        &cx,
        &mut report.group("SMART discovery and Backend Services"),
    )
    .await;
    subscriptions::run(&cx, &mut report.group("Subscriptions")).await;
    phd::run(&cx, &mut report.group("PHD device profiles")).await;
    vitals::run(
        &cx,
        &mut report.group("Vital-signs searches (US Core style)"),
    )
    .await;

    let (deleted, created) = cx.clean_up().await;
    println!("\ndeleted {deleted} of the {created} resources the checks created");
    println!("{}", report.summary());
    if let Some(path) = &args.junit {
        std::fs::write(path, junit::render(&report))
            .with_context(|| format!("cannot write {}", path.display()))?;
        println!("JUnit XML written to {}", path.display());
    }
    let failed = report.failed();
    if failed > 0 {
        anyhow::bail!(
            "{failed} of {} conformance checks failed",
            report.results.len()
        );
    }
    Ok(())
}

/// Fails unless `value` is a non-empty string; returns it.
pub fn string<'a>(value: &'a Value, what: &str) -> Result<&'a str, Problem> {
    let s = value.as_str().unwrap_or_default();
    ensure!(!s.is_empty(), "expected {what}, got {value}");
    Ok(s)
}

/// Fails with the first place where `got` lacks or changes what `sent` has: every element sent
/// must come back (https://hl7.org/fhir/R4/http.html#read: the server returns what it stored;
/// `meta`, `id` and `text` are the server's to set). Numbers compare by value and precision
/// (https://hl7.org/fhir/R4/json.html#primitive: decimals keep their precision).
pub fn round_trips(sent: &Value, got: &Value, path: &str) -> Result<(), String> {
    match (sent, got) {
        (Value::Object(s), Value::Object(g)) => {
            for (k, v) in s {
                if path.is_empty() && matches!(k.as_str(), "meta" | "id" | "text") {
                    continue;
                }
                let here = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match g.get(k) {
                    Some(gv) => round_trips(v, gv, &here)?,
                    None => return Err(format!("{here} was sent but did not come back")),
                }
            }
            Ok(())
        }
        (Value::Array(s), Value::Array(g)) if s.len() == g.len() => s
            .iter()
            .zip(g)
            .enumerate()
            .try_for_each(|(i, (sv, gv))| round_trips(sv, gv, &format!("{path}[{i}]"))),
        (Value::Number(s), Value::Number(g)) if s.to_string() == g.to_string() => Ok(()),
        (s, g) if s == g => Ok(()),
        (s, g) => Err(format!("{path}: sent {s}, got back {g}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_fixture_parses_with_its_placeholders_filled() {
        let vars = [
            ("unique", "u1"),
            ("patient", "p1"),
            ("device", "d1"),
            ("pressure", "o1"),
            ("eui64", "00-11-22-33-44-55-66-77"),
            ("code", "8867-4"),
            ("value", "72"),
            ("unit", "/min"),
            ("date", "2024-03-01T08:00:00Z"),
            ("category", "vital-signs"),
        ];
        for t in [
            fixtures::PATIENT,
            fixtures::VITAL_SIGN,
            fixtures::PHD_DEVICE,
            fixtures::PHD_WEIGHT,
            fixtures::PHD_BP,
            fixtures::PHD_PULSE,
        ] {
            let v = fixture(t, &vars);
            assert!(v["resourceType"].is_string(), "{v}");
            assert!(!v.to_string().contains("{{"), "a placeholder is left: {v}");
        }
    }

    #[test]
    fn round_trips_names_the_first_difference() {
        let sent = json!({"resourceType": "Observation", "id": "x",
            "valueQuantity": {"value": 72.0, "code": "/min"}, "component": [{"a": 1}]});
        let mut got = sent.clone();
        got["meta"] = json!({"versionId": "1"});
        got["id"] = json!("server-id");
        assert_eq!(round_trips(&sent, &got, ""), Ok(()));
        got["valueQuantity"]["value"] = json!(72);
        assert_eq!(
            round_trips(&sent, &got, ""),
            Err("valueQuantity.value: sent 72.0, got back 72".into())
        );
        got["valueQuantity"]["value"] = json!(72.0);
        got["component"] = json!([]);
        assert!(round_trips(&sent, &got, "").is_err());
        got.as_object_mut().map(|o| o.remove("component"));
        assert_eq!(
            round_trips(&sent, &got, ""),
            Err("component was sent but did not come back".into())
        );
    }
}
