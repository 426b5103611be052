//! The gateway's configuration file (issue 8, item 1): JSON, so that it needs no parser beyond
//! the one the server uses.
//!
//! ```json
//! {
//!   "server": "https://vitalbridge.example.org",
//!   "clientId": "hub-ward-3",
//!   "clientSecret": "…",
//!   "dataDir": "/var/lib/vitalbridge-gateway",
//!   "devices": ["A4:C1:38:0B:2C:01"]
//! }
//! ```
//!
//! `devices` empty or absent: every device advertising a standard health service is followed.
//! The secret may instead come from `VB_GATEWAY_CLIENT_SECRET`, to keep it out of the file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

#[derive(Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Config {
    /// The vitalbridge server: scheme, host and port (the FHIR base is `{server}/fhir`).
    pub server: String,
    /// The hub's OAuth client (role `hub`), registered on a Device of its organization.
    pub client_id: String,
    #[serde(default)]
    pub client_secret: Option<String>,
    /// Where the queue (`gateway.db`) lives.
    pub data_dir: PathBuf,
    /// Bluetooth addresses to follow; empty: discover by the health services.
    #[serde(default)]
    pub devices: Vec<String>,
    /// Readings per upload, at most (the server takes 500).
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Longest wait between upload attempts while the server cannot be reached, in seconds.
    #[serde(default = "default_max_backoff")]
    pub max_backoff_secs: u64,
    /// Write the gateway's clock to devices with the Current Time characteristic.
    #[serde(default = "yes")]
    pub set_time: bool,
}

fn default_batch() -> usize {
    100
}
fn default_max_backoff() -> u64 {
    300
}
fn yes() -> bool {
    true
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("server", &self.server)
            .field("client_id", &self.client_id)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("data_dir", &self.data_dir)
            .field("devices", &self.devices)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// Reads and checks the file; every problem is one readable sentence naming the file.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        Config::read(path, true)
    }

    /// For `gateway status`, which never talks to the server: no secret needed.
    pub fn load_for_status(path: &Path) -> anyhow::Result<Config> {
        Config::read(path, false)
    }

    fn read(path: &Path, need_secret: bool) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            anyhow::anyhow!(
                "cannot read the gateway configuration {}: {e}",
                path.display()
            )
        })?;
        let mut c: Config = serde_json::from_str(&text).map_err(|e| {
            anyhow::anyhow!(
                "the gateway configuration {} is not valid: {e}",
                path.display()
            )
        })?;
        if let Ok(secret) = std::env::var("VB_GATEWAY_CLIENT_SECRET") {
            c.client_secret = Some(secret);
        }
        c.check(need_secret)
            .map_err(|e| anyhow::anyhow!("the gateway configuration {}: {e}", path.display()))?;
        Ok(c)
    }

    fn check(&mut self, need_secret: bool) -> Result<(), String> {
        self.server = self.server.trim_end_matches('/').to_owned();
        let url = url::Url::parse(&self.server)
            .map_err(|e| format!("server {:?} is not a URL: {e}", self.server))?;
        // The client secret travels to the server: plain HTTP only on this machine (a local
        // TLS proxy, a test).
        let loopback = match url.host() {
            Some(url::Host::Domain(d)) => d == "localhost",
            Some(url::Host::Ipv4(a)) => a.is_loopback(),
            Some(url::Host::Ipv6(a)) => a.is_loopback(),
            None => false,
        };
        if !(url.scheme() == "https" || url.scheme() == "http" && loopback) {
            return Err(format!(
                "server {:?} must be https (http only for localhost)",
                self.server
            ));
        }
        if self.client_id.is_empty() {
            return Err("clientId is empty".into());
        }
        if need_secret && self.client_secret.as_deref().is_none_or(str::is_empty) {
            return Err("no clientSecret (in the file or VB_GATEWAY_CLIENT_SECRET)".into());
        }
        if !(1..=500).contains(&self.batch_size) {
            return Err(format!("batchSize {} must be 1 to 500", self.batch_size));
        }
        for d in &mut self.devices {
            *d = crate::ingest::device::bluetooth_address(d).ok_or_else(|| {
                format!("device {d:?} is not a Bluetooth address (AA:BB:CC:DD:EE:FF)")
            })?;
        }
        Ok(())
    }

    pub fn max_backoff(&self) -> Duration {
        Duration::from_secs(self.max_backoff_secs.max(1))
    }

    /// Whether the gateway follows the device at `address` (already normalised).
    pub fn follows(&self, address: &str) -> bool {
        self.devices.is_empty() || self.devices.iter().any(|d| d == address)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Config, String> {
        let mut c: Config = serde_json::from_str(json).map_err(|e| e.to_string())?;
        c.check(true).map(|()| c)
    }

    #[test]
    fn a_configuration_is_checked() {
        let c = parse(
            r#"{"server": "http://127.0.0.1:8080/", "clientId": "hub", "clientSecret": "s3cr3t",
                "dataDir": "/tmp/g", "devices": ["a4-c1-38-0b-2c-01"]}"#,
        )
        .expect("valid");
        assert_eq!(c.server, "http://127.0.0.1:8080");
        assert_eq!(c.devices, ["A4:C1:38:0B:2C:01"]);
        assert!(c.follows("A4:C1:38:0B:2C:01") && !c.follows("A4:C1:38:0B:2C:02"));
        assert_eq!(c.batch_size, 100);
        assert!(!format!("{c:?}").contains("s3cr3t"), "no secret in Debug");
        let base = r#""clientId": "hub", "clientSecret": "s", "dataDir": "/tmp/g""#;
        for (bad, why) in [
            (
                format!(r#"{{"server": "ftp://h", {base}}}"#),
                "must be https",
            ),
            (
                format!(r#"{{"server": "http://h", {base}}}"#),
                "must be https",
            ),
            (format!(r#"{{"server": "h", {base}}}"#), "not a URL"),
            (
                format!(r#"{{"server": "https://h", {base}, "devices": ["x"]}}"#),
                "Bluetooth address",
            ),
            (
                format!(r#"{{"server": "https://h", {base}, "batchSize": 900}}"#),
                "1 to 500",
            ),
            (
                format!(r#"{{"server": "https://h", {base}, "colour": 1}}"#),
                "unknown field",
            ),
            (
                r#"{"server": "https://h", "clientId": "hub", "dataDir": "/g"}"#.into(),
                "clientSecret",
            ),
        ] {
            let e = parse(&bad).expect_err(&bad);
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
