//! Typed settings from the command line and the environment. `Debug` never prints secrets: the
//! database URL may carry a password, so it is shown without it.

use std::fmt;

#[derive(Clone)]
pub struct Settings {
    /// Address to listen on, e.g. `127.0.0.1:8080` (`--listen`, `VB_LISTEN`).
    pub listen: String,
    /// `postgres://…` or `sqlite://…`; `None` means an SQLite file under `./data/`.
    pub database_url: Option<String>,
    /// Public FHIR base URL for `Location` and `fullUrl` (`VB_BASE_URL`); by default derived from
    /// the request's `Host`.
    pub base_url: Option<String>,
    /// Largest accepted request body in bytes (`VB_BODY_LIMIT`); larger ones get 413.
    pub body_limit: usize,
    /// Database connections per process (`VB_DB_POOL`).
    pub db_pool: u32,
    /// The admin client to create at start (`VB_BOOTSTRAP_CLIENT_ID`, `VB_BOOTSTRAP_CLIENT_SECRET`).
    pub bootstrap_client: Option<crate::auth::BootstrapClient>,
    /// The issuer's signing key as PKCS#8 PEM (`VB_SIGNING_KEY_FILE`); by default one generated
    /// at the first start and kept in the database.
    pub signing_key_pem: Option<String>,
    /// External OpenID providers whose access tokens are accepted (`VB_OIDC_PROVIDERS`).
    pub oidc_providers: Vec<crate::auth::federation::ProviderConfig>,
    /// Whether requests are recorded in the audit trail (`VB_AUDIT`, on by default).
    pub audit: bool,
    /// HTTPS instead of plain HTTP (`--tls-cert`, `--tls-key`, `--tls-client-ca`).
    pub tls: Option<crate::http::tls::TlsFiles>,
    /// Days raw inbound device messages are kept before the background purge deletes them
    /// (`VB_RAW_RETENTION_DAYS`, issue 5 item 7).
    pub raw_retention_days: u32,
    /// Subscription delivery: retries, back-off, timeouts (issue 6). Its `base` is filled in
    /// from `base_url` or the listening address.
    pub subscriptions: crate::subscriptions::Config,
    /// The monthly billing scheduler (`VB_BILLING`, `VB_BILLING_INTERVAL_SECS`, issue 7).
    pub billing: crate::billing::schedule::Config,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            listen: "127.0.0.1:8080".into(),
            database_url: None,
            base_url: None,
            body_limit: 16 * 1024 * 1024,
            db_pool: 16,
            bootstrap_client: None,
            signing_key_pem: None,
            oidc_providers: Vec::new(),
            audit: true,
            tls: None,
            raw_retention_days: 7,
            subscriptions: Default::default(),
            billing: Default::default(),
        }
    }
}

/// The embedded default store.
pub const DEFAULT_SQLITE_URL: &str = "sqlite://data/vitalbridge.db";

impl Settings {
    pub fn database_url(&self) -> &str {
        self.database_url.as_deref().unwrap_or(DEFAULT_SQLITE_URL)
    }
}

/// A database URL with any password replaced by `***`.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("listen", &self.listen)
            .field("database_url", &redact_url(self.database_url()))
            .field("base_url", &self.base_url)
            .field("body_limit", &self.body_limit)
            .field("db_pool", &self.db_pool)
            .field("bootstrap_client", &self.bootstrap_client)
            .field(
                "signing_key_pem",
                &self.signing_key_pem.as_ref().map(|_| "***"),
            )
            .field("oidc_providers", &self.oidc_providers)
            .field("audit", &self.audit)
            .field("tls", &self.tls)
            .field("raw_retention_days", &self.raw_retention_days)
            .field("subscriptions", &self.subscriptions)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_password() {
        let s = Settings {
            database_url: Some("postgres://vb:s3cret@db/vb".into()),
            bootstrap_client: Some(crate::auth::BootstrapClient {
                client_id: "admin".into(),
                secret: "client-s3cret".into(),
            }),
            signing_key_pem: Some("-----BEGIN PRIVATE KEY-----key-s3cret".into()),
            subscriptions: crate::subscriptions::Config {
                smtp: Some(crate::subscriptions::email::SmtpConfig {
                    url: "smtp://vb:smtp-s3cret@relay.example:587?tls=required".into(),
                    from: "vb@example.org".into(),
                    ca_file: None,
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let printed = format!("{s:?}");
        assert!(!printed.contains("s3cret"), "{printed}");
        assert!(printed.contains("admin"), "{printed}");
        assert!(printed.contains("***"));
    }
}
