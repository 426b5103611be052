//! The axum router: routes, request ids, errors as OperationOutcomes, panics caught.

pub mod error;
mod fhir_routes;
pub mod format;
pub mod openapi;
mod openapi_examples;
pub mod request_id;
pub mod tls;

use std::sync::Arc;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::config::Settings;
use crate::store::Store;
use error::ApiError;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState(pub Arc<Inner>);

pub struct Inner {
    pub store: Store,
    pub settings: Settings,
    /// The issuer's key: signs and verifies access tokens.
    pub signing_key: crate::auth::keys::SigningKey,
    pub verified_tokens: crate::auth::routes::VerifiedTokens,
    /// External OpenID providers and their keys.
    pub federation: crate::auth::federation::Federation,
    /// The queue to the audit trail's writer.
    pub audit: crate::audit::Audit,
    /// Server start time as a FHIR instant (CapabilityStatement.date).
    pub started: String,
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .nest("/fhir", fhir_routes::router())
        // Batches and transactions are posted to the base, with or without a trailing slash.
        .route("/fhir/", axum::routing::post(fhir_routes::system_bundle))
        .merge(crate::auth::routes::router())
        .merge(crate::auth::clients::router())
        .merge(crate::auth::authorize::router())
        .merge(crate::auth::federated_login::router())
        .merge(crate::auth::users::router())
        .merge(crate::auth::introspect::router())
        .merge(crate::ingest::hub::router())
        .merge(crate::ingest::cellular::router())
        .merge(openapi::router())
        .fallback(not_found)
        // Every endpoint but the public ones needs a bearer token (issue 4, item 9).
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::auth::routes::require_token,
        ))
        .with_state(state.clone())
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            panic_response,
        ))
        // Around the token gate, so that refused requests are audited too, and around the panic
        // catcher, so that requests that panicked are.
        .layer(axum::middleware::from_fn_with_state(
            state,
            crate::audit::record_requests,
        ))
        // The request id and its log span cover everything below, panics included.
        .layer(axum::middleware::from_fn(request_id::middleware))
        .layer(axum::middleware::from_fn(host_from_authority))
}

/// HTTP/2 names the host in `:authority`, which hyper gives as the URI's authority and not as a
/// `Host` header (RFC 9113 section 8.3.1): copied into `Host`, so that the token issuer and the
/// URLs in responses are the same over HTTP/1.1 and HTTP/2.
async fn host_from_authority(
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if !req.headers().contains_key(header::HOST)
        && let Some(v) = req
            .uri()
            .authority()
            .and_then(|a| axum::http::HeaderValue::from_str(a.as_str()).ok())
    {
        req.headers_mut().insert(header::HOST, v);
    }
    next.run(req).await
}

/// Liveness: the process answers and the database answers.
async fn healthz(axum::extract::State(state): axum::extract::State<AppState>) -> Response {
    let (status, body) = if state.store.ping().await {
        (StatusCode::OK, r#"{"status":"ok"}"#)
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            r#"{"status":"database unavailable"}"#,
        )
    };
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such endpoint; the FHIR base is /fhir".into())
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    // The payload may quote request data, so it is not logged; the request span marks the failure.
    tracing::error!("handler panicked");
    ApiError::Internal(anyhow::anyhow!("panic")).into_response()
}
