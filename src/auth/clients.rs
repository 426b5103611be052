//! OAuth clients of the built-in authorization server, registered by an operator (the CLI,
//! `vitalbridge client add`) or an admin (`POST /auth/clients`): one code path for both.
//!
//! - `POST /auth/clients` `{"client_id"?, "role", "organization"?, "scope"?, "name"?}`: 201 with
//!   the generated `client_secret`, shown only in this answer;
//! - `GET /auth/clients`: the clients, never their secrets;
//! - `DELETE /auth/clients/{client_id}`: 204, or 404 when there is none.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{ADMIN_SCOPE, Principal, Role, scope, secret};
use crate::fhir::types::ResourceId;
use crate::http::AppState;
use crate::http::error::ApiError;
use crate::store::Store;
use crate::store::auth::ClientRecord;

/// A client to register.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewClient {
    /// Chosen by the server when absent.
    #[serde(default)]
    pub client_id: Option<String>,
    pub role: Role,
    /// Required for every role but admin (DESIGN.md "Tenancy").
    #[serde(default)]
    pub organization: Option<String>,
    /// Scopes it may be granted, space separated; by default every system scope (the role
    /// narrows them).
    #[serde(default)]
    pub scope: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    /// The public keys of a `private_key_jwt` client (SMART Backend Services), as a JWKS...
    #[serde(default)]
    pub jwks: Option<serde_json::Value>,
    /// ... or the URL it publishes them at. Such a client gets no secret.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// A SMART app's exact redirect URIs (authorization code flow). Its tokens act with the
    /// role of the user who signs in; the client's scopes cap what they may be granted.
    #[serde(default)]
    pub redirect_uris: Vec<String>,
    /// A public app (no secret; PKCE alone protects its codes).
    #[serde(default)]
    pub public: bool,
}

/// Scopes an app with redirect URIs may be granted, besides the system ones
/// (https://hl7.org/fhir/smart-app-launch/scopes-and-launch-context.html).
pub const APP_SCOPES: &str = "patient/*.cruds user/*.cruds openid fhirUser launch launch/patient \
                              offline_access online_access";

/// A registered client as shown: never its secret.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ClientView {
    pub client_id: String,
    pub role: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub organization: Option<String>,
    pub scope: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `client_secret_basic` or `private_key_jwt`.
    pub token_endpoint_auth_method: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwks_url: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub redirect_uris: Vec<String>,
}

impl From<ClientRecord> for ClientView {
    fn from(c: ClientRecord) -> Self {
        ClientView {
            token_endpoint_auth_method: if c.secret_hash.is_some() {
                "client_secret_basic"
            } else if c.jwks.is_some() || c.jwks_url.is_some() {
                "private_key_jwt"
            } else {
                "none"
            },
            redirect_uris: serde_json::from_str(&c.redirect_uris).unwrap_or_default(),
            client_id: c.client_id,
            role: c.role,
            organization: c.organization,
            scope: c.scope,
            name: c.name,
            jwks_url: c.jwks_url,
        }
    }
}

/// Why a client cannot be registered.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error("{0}")]
    Invalid(String),
    #[error("a client `{0}` exists already; remove it first")]
    Exists(String),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// 32 random bytes, URL-safe.
pub(crate) fn new_secret() -> String {
    use base64::Engine as _;
    use rand::RngCore as _;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Checks and stores a new client; returns it with its fresh secret (stored only as an argon2
/// hash), or without one for a client that authenticates with its keys.
pub async fn register(
    store: &Store,
    new: NewClient,
) -> Result<(ClientView, Option<String>), RegisterError> {
    let invalid = |m: &str| Err(RegisterError::Invalid(m.to_owned()));
    let client_id = new
        .client_id
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    if client_id.is_empty()
        || client_id.len() > 128
        || client_id
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == ':')
    {
        return invalid("a client id must be 1 to 128 characters, without spaces or ':'");
    }
    match (new.role, &new.organization) {
        (Role::Admin, Some(_)) => return invalid("admin clients belong to no organization"),
        (Role::Patient, None) if !new.redirect_uris.is_empty() => {}
        (Role::Patient, _) => {
            return invalid(
                "patient-facing apps sign in with the authorization code flow, not a client secret",
            );
        }
        (Role::Admin, None) => {}
        (Role::Hub, _) if !new.redirect_uris.is_empty() || new.public => {
            return invalid("a hub authenticates with its own secret or keys, not as an app");
        }
        (_, None) => return invalid("clients of this role need the organization they act for"),
        (_, Some(org)) if ResourceId::parse(org).is_none() => {
            return invalid("organization must be the id of an Organization resource");
        }
        _ => {}
    }
    for uri in &new.redirect_uris {
        // Exact, absolute, without a fragment (RFC 6749 section 3.1.2).
        match url::Url::parse(uri) {
            Ok(u) if matches!(u.scheme(), "https" | "http") && u.fragment().is_none() => {}
            _ => {
                return invalid(
                    "each redirect URI must be an absolute http(s) URL without a fragment",
                );
            }
        }
    }
    if new.public && new.redirect_uris.is_empty() {
        return invalid("a public client is an app: give its redirect_uris");
    }
    let scope = new.scope.unwrap_or_else(|| ADMIN_SCOPE.to_owned());
    let mut allowed: Vec<&str> = ADMIN_SCOPE.split_whitespace().collect();
    if !new.redirect_uris.is_empty() {
        allowed.extend(APP_SCOPES.split_whitespace());
    }
    if let Some(bad) = scope
        .split_whitespace()
        .find(|s| !scope::covered(s, &allowed))
    {
        return Err(RegisterError::Invalid(format!(
            "`{bad}` is not a system scope this server grants"
        )));
    }
    if scope.split_whitespace().next().is_none() {
        return invalid("scope names no scope");
    }
    let jwks = match (&new.jwks, &new.jwks_url) {
        (Some(_), Some(_)) => return invalid("give jwks or jwks_url, not both"),
        (Some(v), None) => {
            let text = v.to_string();
            super::assertion::parse_jwks(&text).map_err(RegisterError::Invalid)?;
            Some(text)
        }
        (None, Some(u)) => {
            match url::Url::parse(u) {
                Ok(parsed) if matches!(parsed.scheme(), "https" | "http") => {}
                _ => return invalid("jwks_url must be an http(s) URL"),
            }
            None
        }
        (None, None) => None,
    };
    let map = |e: crate::store::StoreError| RegisterError::Other(e.into());
    if store.client(&client_id).await.map_err(map)?.is_some() {
        return Err(RegisterError::Exists(client_id));
    }
    let keyed = jwks.is_some() || new.jwks_url.is_some();
    let secret = (!keyed && !new.public).then(new_secret);
    let secret_hash = secret.as_deref().map(secret::hash).transpose()?;
    let record = ClientRecord {
        client_id,
        secret_hash,
        role: new.role.as_str().into(),
        organization: new.organization,
        scope: scope.split_whitespace().collect::<Vec<_>>().join(" "),
        name: new.name,
        jwks,
        jwks_url: new.jwks_url,
        redirect_uris: serde_json::to_string(&new.redirect_uris)
            .map_err(|e| RegisterError::Other(e.into()))?,
    };
    store.put_client(&record).await.map_err(map)?;
    Ok((record.into(), secret))
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/auth/clients", get(list).post(create))
        .route("/auth/clients/{client_id}", delete(remove))
}

/// The access policy of the caller (DESIGN.md rule 4: no handler checks roles itself): only
/// admins manage clients and users.
pub(super) fn may_manage(p: &Principal) -> Result<(), ApiError> {
    super::policy::Policy::of(p, "").check_manage_clients()
}

async fn create(
    State(state): State<AppState>,
    Extension(p): Extension<Arc<Principal>>,
    body: Result<Json<NewClient>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let result = async {
        let Json(new) = body.map_err(|e| ApiError::bad_request("structure", e.body_text()))?;
        // Admins register any client; clinics and distributors their hubs (issue 5).
        super::policy::Policy::for_request(&p, "", &state.store)
            .await?
            .check_register_client(new.role, new.organization.as_deref())?;
        match register(&state.store, new).await {
            Ok((view, secret)) => {
                let mut body = serde_json::to_value(&view).map_err(ApiError::internal)?;
                if let Some(secret) = secret {
                    body["client_secret"] = json!(secret);
                }
                Ok((
                    StatusCode::CREATED,
                    [
                        (header::CACHE_CONTROL, "no-store"),
                        (header::PRAGMA, "no-cache"),
                    ],
                    Json(body),
                )
                    .into_response())
            }
            Err(RegisterError::Invalid(m)) => Err(ApiError::bad_request("invalid", m)),
            Err(e @ RegisterError::Exists(_)) => Err(ApiError::Conflict(e.to_string())),
            Err(RegisterError::Other(e)) => Err(ApiError::internal(e)),
        }
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

async fn list(State(state): State<AppState>, Extension(p): Extension<Arc<Principal>>) -> Response {
    let result = async {
        may_manage(&p)?;
        let clients: Vec<ClientView> = state
            .store
            .clients()
            .await?
            .into_iter()
            .map(ClientView::from)
            .collect();
        Ok::<_, ApiError>(Json(json!({ "clients": clients })).into_response())
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

async fn remove(
    State(state): State<AppState>,
    Extension(p): Extension<Arc<Principal>>,
    Path(client_id): Path<String>,
) -> Response {
    let result = async {
        may_manage(&p)?;
        if state.store.delete_client(&client_id).await? {
            Ok(StatusCode::NO_CONTENT.into_response())
        } else {
            Err(ApiError::NotFound("no such client".into()))
        }
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}
