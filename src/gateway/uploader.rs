//! Sends the queue to the server (issue 8, item 4): batches to `POST /ingest/hub` with the
//! hub's client credentials, oldest first; while the server cannot be reached or answers with
//! an error, the batch stays queued and the uploader waits 1 s, 2 s, 4 s, … up to the
//! configured maximum, with jitter so that a ward of gateways does not return in step. Sending a
//! batch again is harmless: the server answers a reading it has as `duplicate`.

use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};
use tokio::sync::Notify;

use super::config::Config;
use super::queue::{Queue, Settled};

/// Why an upload did not happen; the batch stays queued either way.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("the server cannot be reached: {0}")]
    Unreachable(String),
    #[error("the server refused the hub's credentials: {0}")]
    Credentials(String),
    #[error("the server answered {0}: {1}")]
    Server(u16, String),
    #[error("the queue: {0}")]
    Queue(#[from] sqlx::Error),
}

pub struct Uploader {
    config: Config,
    queue: Queue,
    http: reqwest::Client,
    token: Option<(String, Instant)>,
    token_endpoint: Option<String>,
}

impl Uploader {
    pub fn new(config: Config, queue: Queue) -> Uploader {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("vitalbridge-gateway/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_default();
        Uploader {
            config,
            queue,
            http,
            token: None,
            token_endpoint: None,
        }
    }

    /// Uploads until the queue is empty, then waits for `more` (a new reading) or a second.
    /// Runs until the task is dropped.
    pub async fn run(mut self, more: std::sync::Arc<Notify>) {
        let mut backoff = Backoff::new(self.config.max_backoff());
        loop {
            match self.upload_once().await {
                Ok(0) => {
                    backoff.reset();
                    let _ = tokio::time::timeout(Duration::from_secs(1), more.notified()).await;
                }
                Ok(n) => {
                    backoff.reset();
                    tracing::info!(readings = n, "uploaded");
                }
                Err(e) => {
                    if matches!(e, UploadError::Credentials(_)) {
                        self.token = None;
                    }
                    let wait = backoff.wait();
                    tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "upload failed; the readings stay queued");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// Sends the oldest batch; returns how many readings the server answered for.
    pub async fn upload_once(&mut self) -> Result<usize, UploadError> {
        let batch = self.queue.oldest(self.config.batch_size).await?;
        if batch.is_empty() {
            return Ok(0);
        }
        let readings: Vec<Value> = batch
            .iter()
            .map(|(_, r)| {
                let mut v = json!({
                    "characteristic": r.characteristic,
                    "value": base64::engine::general_purpose::STANDARD.encode(&r.value),
                    "received": r.received,
                });
                for (k, x) in [
                    ("address", &r.address),
                    ("systemId", &r.system_id),
                    ("service", &r.service),
                    ("model", &r.model),
                ] {
                    if let Some(x) = x {
                        v[k] = json!(x);
                    }
                }
                v
            })
            .collect();
        let token = self.token().await?;
        let resp = self
            .http
            .post(format!("{}/ingest/hub", self.config.server))
            .bearer_auth(token)
            .json(&json!({ "readings": readings }))
            .send()
            .await
            .map_err(|e| UploadError::Unreachable(without_url(&e)))?;
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if status == 401 {
            return Err(UploadError::Credentials(diagnostics(&body)));
        }
        if status != 200 {
            return Err(UploadError::Server(status, diagnostics(&body)));
        }
        let mut settled = Settled::default();
        for r in body["results"].as_array().into_iter().flatten() {
            let Some((id, _)) = r["index"].as_u64().and_then(|i| batch.get(i as usize)) else {
                continue;
            };
            match r["status"].as_str() {
                Some("accepted" | "duplicate") => settled.done.push(*id),
                Some("rejected") => settled
                    .rejected
                    .push((*id, r["reason"].as_str().unwrap_or("rejected").to_owned())),
                // Unknown: kept, sent again.
                _ => {}
            }
        }
        let answered = settled.done.len() + settled.rejected.len();
        if answered == 0 {
            // A 200 that answers for nothing (a proxy's page, another service): not an upload.
            return Err(UploadError::Server(
                200,
                "the answer names none of the readings sent".into(),
            ));
        }
        if !settled.rejected.is_empty() {
            tracing::warn!(
                rejected = settled.rejected.len(),
                "the server rejected readings; they are kept (`vitalbridge gateway status`)"
            );
        }
        self.queue.settle(&settled, &now()).await?;
        Ok(answered)
    }

    /// An access token for the hub: client_credentials with HTTP Basic at the token endpoint
    /// the server's SMART configuration names, kept until shortly before it expires.
    async fn token(&mut self) -> Result<String, UploadError> {
        if let Some((t, until)) = &self.token
            && Instant::now() < *until
        {
            return Ok(t.clone());
        }
        let endpoint = match &self.token_endpoint {
            Some(e) => e.clone(),
            None => {
                let url = format!(
                    "{}/fhir/.well-known/smart-configuration",
                    self.config.server
                );
                let resp = self
                    .http
                    .get(&url)
                    .send()
                    .await
                    .map_err(|e| UploadError::Unreachable(without_url(&e)))?;
                if !resp.status().is_success() {
                    return Err(UploadError::Server(
                        resp.status().as_u16(),
                        "no SMART configuration".into(),
                    ));
                }
                let doc: Value = resp
                    .json()
                    .await
                    .map_err(|e| UploadError::Unreachable(without_url(&e)))?;
                let e = doc["token_endpoint"]
                    .as_str()
                    .ok_or_else(|| UploadError::Server(200, "no token_endpoint".into()))?
                    .to_owned();
                // The secret goes only to the configured server.
                let same_origin = url::Url::parse(&e).ok().is_some_and(|t| {
                    url::Url::parse(&self.config.server).is_ok_and(|s| s.origin() == t.origin())
                });
                if !same_origin {
                    return Err(UploadError::Server(
                        200,
                        "the token endpoint is not on the configured server".into(),
                    ));
                }
                self.token_endpoint = Some(e.clone());
                e
            }
        };
        let resp = self
            .http
            .post(&endpoint)
            .basic_auth(&self.config.client_id, self.config.client_secret.as_deref())
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .map_err(|e| UploadError::Unreachable(without_url(&e)))?;
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        let Some(token) = body["access_token"].as_str() else {
            return Err(if matches!(status, 400 | 401) {
                UploadError::Credentials(
                    body["error_description"]
                        .as_str()
                        .or(body["error"].as_str())
                        .unwrap_or("refused")
                        .to_owned(),
                )
            } else {
                UploadError::Server(status, "no access token".into())
            });
        };
        let lifetime = body["expires_in"].as_u64().unwrap_or(60);
        let until = Instant::now() + Duration::from_secs(lifetime.saturating_sub(30).max(5));
        self.token = Some((token.to_owned(), until));
        Ok(token.to_owned())
    }
}

/// The diagnostics of an OperationOutcome, or the OAuth error.
fn diagnostics(body: &Value) -> String {
    body["issue"][0]["diagnostics"]
        .as_str()
        .or(body["error_description"].as_str())
        .or(body["error"].as_str())
        .unwrap_or("no details")
        .chars()
        .take(300)
        .collect()
}

/// A request error without its URL's query (nothing secret is in ours, but keep logs plain).
fn without_url(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    if let Some(u) = e.url() {
        s = s.replace(u.as_str(), u.path());
    }
    s
}

fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Exponential backoff from one second, doubling to `max`, each wait drawn between half and
/// all of the step (https://aws.amazon.com/builders-library/timeouts-retries-and-backoff-with-jitter/).
pub struct Backoff {
    step: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(max: Duration) -> Backoff {
        Backoff {
            step: Duration::from_secs(1).min(max),
            max,
        }
    }

    pub fn reset(&mut self) {
        self.step = Duration::from_secs(1).min(self.max);
    }

    pub fn wait(&mut self) -> Duration {
        use rand::Rng as _;
        let step = self.step;
        self.step = (self.step * 2).min(self.max);
        let half = step / 2;
        half + step.mul_f64(rand::thread_rng().r#gen::<f64>() / 2.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_maximum_with_jitter() {
        let mut b = Backoff::new(Duration::from_secs(8));
        let waits: Vec<Duration> = (0..6).map(|_| b.wait()).collect();
        for (w, step) in waits.iter().zip([1, 2, 4, 8, 8, 8]) {
            let step = Duration::from_secs(step);
            assert!(*w >= step / 2 && *w <= step, "{w:?} for a step of {step:?}");
        }
        b.reset();
        assert!(b.wait() <= Duration::from_secs(1));
    }
}
