//! The shared HTTP client and the one request helper every worker uses.

use std::time::Duration;

use anyhow::Context as _;
use reqwest::header::{self, HeaderMap, HeaderValue};

use super::fhir::{FHIR_JSON, SearchExpect, check_searchset, id_from_body, id_from_location};
use super::stats::{ErrKind, snippet};

// Functions rather than consts: a `HeaderValue` const would be a fresh
// interior-mutable value at every use (clippy::declare_interior_mutable_const);
// `from_static` does not allocate either way.
pub fn prefer_minimal() -> HeaderValue {
    HeaderValue::from_static("return=minimal")
}

pub fn prefer_representation() -> HeaderValue {
    HeaderValue::from_static("return=representation")
}

pub fn content_type_fhir() -> HeaderValue {
    HeaderValue::from_static(FHIR_JSON)
}

/// One client for the whole run: its pool keeps a warm keep-alive connection
/// per worker, so the timed phase never pays for TCP set-up.
pub fn build_client(
    clients: usize,
    timeout: Duration,
    token: Option<&str>,
) -> anyhow::Result<reqwest::Client> {
    let mut headers = HeaderMap::new();
    headers.insert(header::ACCEPT, HeaderValue::from_static(FHIR_JSON));
    if let Some(token) = token {
        let mut v = HeaderValue::from_str(&format!("Bearer {token}"))
            .context("the bearer token contains characters not allowed in a header")?;
        v.set_sensitive(true);
        headers.insert(header::AUTHORIZATION, v);
    }
    reqwest::Client::builder()
        .default_headers(headers)
        .user_agent(concat!("vitalbridge-bench/", env!("CARGO_PKG_VERSION")))
        // At least one idle connection per worker, or connections would be
        // closed and reopened between scenarios and after bursts.
        .pool_max_idle_per_host(clients.max(1))
        .pool_idle_timeout(Duration::from_secs(300))
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5))
        .timeout(timeout)
        // Benchmark the server, not a proxy picked up from HTTP_PROXY & co.
        .no_proxy()
        // No-ops with this crate's reqwest features, but they keep a
        // dependency that enables them from adding decompression (and an
        // Accept-Encoding the server would spend CPU honouring).
        .no_gzip()
        .no_brotli()
        .no_deflate()
        .no_zstd()
        .build()
        .context("building the HTTP client")
}

/// The current bearer token of a `--client-id` run, sent with every request by [`send`] and
/// [`send_search`]. Tokens live five minutes and a seeding run lasts longer, so a task renews it
/// (a client's default headers cannot change once it is built).
static BEARER: std::sync::RwLock<Option<HeaderValue>> = std::sync::RwLock::new(None);

pub fn with_bearer(req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    match BEARER.read().ok().and_then(|b| b.clone()) {
        Some(v) => req.header(header::AUTHORIZATION, v),
        None => req,
    }
}

/// [`with_bearer`] as a method, for the requests built outside [`send`].
pub trait Bearer {
    fn bearer(self) -> Self;
}

impl Bearer for reqwest::RequestBuilder {
    fn bearer(self) -> Self {
        with_bearer(self)
    }
}

/// Obtains a token with the client_credentials grant at the token endpoint the server's SMART
/// configuration names, and keeps renewing it a minute before it expires.
pub async fn start_token_renewal(
    http: &reqwest::Client,
    base: &str,
    client_id: &str,
    secret: &str,
) -> anyhow::Result<()> {
    let conf: serde_json::Value = http
        .get(format!("{base}/.well-known/smart-configuration"))
        .send()
        .await
        .context("cannot fetch the SMART configuration")?
        .error_for_status()?
        .json()
        .await
        .context("the SMART configuration is not JSON")?;
    let endpoint = conf["token_endpoint"]
        .as_str()
        .context("the SMART configuration names no token_endpoint")?
        .to_owned();
    let fetch = {
        let http = http.clone();
        let (id, secret) = (client_id.to_owned(), secret.to_owned());
        move || {
            let (http, endpoint, id, secret) =
                (http.clone(), endpoint.clone(), id.clone(), secret.clone());
            async move {
                let r = http
                    .post(&endpoint)
                    .basic_auth(
                        url::form_urlencoded::byte_serialize(id.as_bytes()).collect::<String>(),
                        Some(
                            url::form_urlencoded::byte_serialize(secret.as_bytes())
                                .collect::<String>(),
                        ),
                    )
                    .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                    .body("grant_type=client_credentials")
                    .send()
                    .await
                    .context("token request failed")?;
                let status = r.status();
                let body: serde_json::Value =
                    r.json().await.context("token response is not JSON")?;
                if !status.is_success() {
                    anyhow::bail!(
                        "the token endpoint refused the client ({status}): {}",
                        body["error"]
                    );
                }
                let token = body["access_token"].as_str().context("no access_token")?;
                let mut v = HeaderValue::from_str(&format!("Bearer {token}"))?;
                v.set_sensitive(true);
                if let Ok(mut b) = BEARER.write() {
                    *b = Some(v);
                }
                Ok::<u64, anyhow::Error>(body["expires_in"].as_u64().unwrap_or(300))
            }
        }
    };
    let first = fetch().await?;
    tokio::spawn(async move {
        let mut wait = first;
        loop {
            tokio::time::sleep(Duration::from_secs(wait.saturating_sub(60).max(10))).await;
            match fetch().await {
                Ok(expires_in) => wait = expires_in,
                Err(e) => {
                    eprintln!("warning: cannot renew the access token: {e:#}");
                    wait = 70;
                }
            }
        }
    });
    Ok(())
}

/// A failed request: its class for the counters and a detail for the report.
#[derive(Debug)]
pub struct Failure {
    pub kind: ErrKind,
    pub detail: String,
}

fn transport_failure(e: &reqwest::Error) -> Failure {
    let kind = if e.is_timeout() {
        ErrKind::Timeout
    } else if e.is_connect() {
        ErrKind::Connect
    } else if e.is_body() || e.is_decode() {
        ErrKind::Body
    } else {
        ErrKind::Transport
    };
    // A reqwest error's Display omits its causes ("error sending request
    // for url ..."); the cause chain says what actually went wrong.
    let mut detail = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        detail.push_str(": ");
        detail.push_str(&s.to_string());
        source = s.source();
    }
    Failure { kind, detail }
}

/// Sends `req` and reads the response to its end, so the connection goes back
/// to the pool. With `want_id` the created resource's id is returned, taken
/// from `Location` or, failing that, from the body (see [`id_from_location`]).
pub async fn send(
    req: reqwest::RequestBuilder,
    want_id: Option<&str>,
) -> Result<Option<String>, Failure> {
    let mut resp = with_bearer(req)
        .send()
        .await
        .map_err(|e| transport_failure(&e))?;
    let status = resp.status();
    if !status.is_success() {
        let body = resp.text().await.unwrap_or_default();
        return Err(Failure {
            kind: ErrKind::Status(status.as_u16()),
            detail: snippet(&body, 300),
        });
    }
    let Some(resource_type) = want_id else {
        // Drain chunk by chunk: nothing is concatenated or parsed.
        while resp
            .chunk()
            .await
            .map_err(|e| transport_failure(&e))?
            .is_some()
        {}
        return Ok(None);
    };
    let from_location = resp
        .headers()
        .get(header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|l| id_from_location(l, resource_type))
        .map(str::to_owned);
    if let Some(id) = from_location {
        while resp
            .chunk()
            .await
            .map_err(|e| transport_failure(&e))?
            .is_some()
        {}
        return Ok(Some(id));
    }
    let body = resp.bytes().await.map_err(|e| transport_failure(&e))?;
    match id_from_body(&body, resource_type) {
        Some(id) => Ok(Some(id)),
        None => Err(Failure {
            kind: ErrKind::NoId,
            detail: format!(
                "{status} without a {resource_type} id in Location or body: {}",
                snippet(&String::from_utf8_lossy(&body), 200)
            ),
        }),
    }
}

/// Sends a search and checks its answer: exactly 200 (a 2xx without a body
/// is not a search result) and a searchset Bundle with at least one match of
/// the expected type (see [`check_searchset`]). Returns the number of matches.
pub async fn send_search(
    req: reqwest::RequestBuilder,
    expect: SearchExpect,
) -> Result<usize, Failure> {
    let resp = with_bearer(req)
        .send()
        .await
        .map_err(|e| transport_failure(&e))?;
    let status = resp.status();
    if status != reqwest::StatusCode::OK {
        let body = resp.text().await.unwrap_or_default();
        return Err(Failure {
            kind: ErrKind::Status(status.as_u16()),
            detail: snippet(&body, 300),
        });
    }
    // The whole page is needed to count its matches.
    let body = resp.bytes().await.map_err(|e| transport_failure(&e))?;
    check_searchset(&body, expect).map_err(|(kind, detail)| Failure { kind, detail })
}
