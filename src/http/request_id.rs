//! A request id for every request: taken from `X-Request-Id` when a proxy set a sane one,
//! otherwise generated; echoed in the response, recorded in the request's log span, and quoted in
//! 5xx OperationOutcomes so that an operator can find the logged cause.

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;

tokio::task_local! {
    static REQUEST_ID: String;
}

pub const HEADER: &str = "x-request-id";

/// The id of the request being served, if any.
pub fn current() -> Option<String> {
    with_current(str::to_owned)
}

/// `f` of the id of the request being served, if any, without copying it.
pub fn with_current<R>(f: impl FnOnce(&str) -> R) -> Option<R> {
    REQUEST_ID.try_with(|id| f(id)).ok()
}

pub async fn middleware(req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        method = %req.method(),
        // The path only: query strings can carry identifiers and names (DESIGN.md rule 8).
        path = %req.uri().path(),
        status = tracing::field::Empty,
        ms = tracing::field::Empty,
    );
    let started = std::time::Instant::now();
    let mut resp = REQUEST_ID
        .scope(
            id.clone(),
            tracing::Instrument::instrument(next.run(req), span.clone()),
        )
        .await;
    span.record("status", resp.status().as_u16());
    span.record("ms", started.elapsed().as_secs_f64() * 1000.0);
    span.in_scope(|| tracing::debug!("served"));
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(HEADER, v);
    }
    resp
}
