//! Token introspection (RFC 7662) and revocation (RFC 7009) for the apps and resource servers
//! that hold our tokens. Both require client authentication, as at the token endpoint (a
//! public app by its `client_id`).
//!
//! - `POST /auth/introspect` `token=…`: `{"active": true, …}` for a live access or refresh
//!   token; `{"active": false}` for anything else, without saying why.
//! - `POST /auth/revoke` `token=…`: a refresh token of the calling client is revoked; the
//!   answer is 200 for unknown tokens too (RFC 7009 section 2.2). Access tokens live five
//!   minutes and are checked without a database round trip, so they are not revocable:
//!   `unsupported_token_type`.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::post;
use serde_json::{Value, json};

use super::routes::{
    OAuthError, authenticate_app, fhir_base, form_of, oauth_answer, origin, server_error, single,
    token_hash,
};
use super::{Principal, token};
use crate::http::AppState;
use crate::store::auth::ClientRecord;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/auth/introspect", post(introspect_endpoint))
        .route("/auth/revoke", post(revoke_endpoint))
}

fn now() -> i64 {
    crate::store::now_micros() / 1_000_000
}

async fn introspect_endpoint(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    oauth_answer(introspect(&state, &headers, &body).await)
}

/// What both endpoints are asked: by which client, about which token, and that token's claims
/// when it is one of our access tokens.
struct Asked {
    caller: ClientRecord,
    token: String,
    access: Option<Principal>,
    issuer: String,
    audience: String,
}

async fn asked(state: &AppState, headers: &HeaderMap, body: &[u8]) -> Result<Asked, OAuthError> {
    let form = form_of(body);
    let field = |name: &str| single(&form, name);
    let caller = authenticate_app(state, headers, &field).await?;
    let token = field("token")?
        .ok_or_else(|| OAuthError::new("invalid_request", "`token` is missing"))?
        .to_owned();
    let (issuer, audience) = (origin(state, headers), fhir_base(state, headers));
    let access = token::verify(&state.signing_key, &issuer, &audience, &token).ok();
    Ok(Asked {
        caller,
        token,
        access,
        issuer,
        audience,
    })
}

async fn introspect(
    state: &AppState,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Value, OAuthError> {
    let Asked {
        caller,
        token: presented,
        access,
        issuer,
        audience,
    } = asked(state, headers, body).await?;
    if let Some(p) = access {
        let mut v = json!({
            "active": true,
            "token_type": "Bearer",
            "scope": p.scopes.join(" "),
            "client_id": p.client_id,
            "sub": p.subject,
            "exp": p.expires_at,
            "iss": issuer,
            "aud": audience,
            "role": p.role,
        });
        if let Some(o) = p.organization {
            v["organization"] = json!(o);
        }
        if let Some(pt) = p.patient {
            v["patient"] = json!(pt);
        }
        return Ok(v);
    }
    let refresh = state
        .store
        .live_refresh(&token_hash(&presented))
        .await
        .map_err(|e| server_error("the refresh token could not be read", e))?;
    // Another client's refresh token is not the caller's business.
    Ok(match refresh {
        Some(r) if r.expires_at > now() && r.client_id == caller.client_id => json!({
            "active": true,
            "token_type": "refresh_token",
            "scope": r.scope,
            "client_id": r.client_id,
            "sub": r.username,
            "exp": r.expires_at,
            "iss": issuer,
        }),
        _ => json!({"active": false}),
    })
}

async fn revoke_endpoint(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    oauth_answer(revoke(&state, &headers, &body).await.map(|()| json!({})))
}

async fn revoke(state: &AppState, headers: &HeaderMap, body: &[u8]) -> Result<(), OAuthError> {
    let a = asked(state, headers, body).await?;
    if a.access.is_some() {
        return Err(OAuthError::new(
            "unsupported_token_type",
            "access tokens expire within five minutes and cannot be revoked; revoke the refresh token",
        ));
    }
    let revoked = state
        .store
        .revoke_refresh(&token_hash(&a.token), &a.caller.client_id)
        .await
        .map_err(|e| server_error("the refresh token could not be revoked", e))?;
    if revoked {
        tracing::info!(client_id = %a.caller.client_id, "refresh token revoked");
    }
    Ok(())
}
