//! The authorization server's endpoints and the bearer-token gate in front of everything else.
//!
//! - `POST /auth/token`: the token endpoint (https://www.rfc-editor.org/rfc/rfc6749#section-3.2),
//!   `client_credentials` with a client secret (HTTP Basic or in the form);
//! - `GET /auth/jwks`: the issuer's public keys;
//! - `GET /.well-known/openid-configuration` (https://openid.net/specs/openid-connect-discovery-1_0.html);
//! - `GET /fhir/.well-known/smart-configuration`
//!   (https://hl7.org/fhir/smart-app-launch/conformance.html#using-well-known).

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use serde_json::{Value, json};

use super::token::{self, Grant};
use super::{Role, assertion, scope, secret};
use crate::http::AppState;
use crate::http::error::ApiError;
use crate::store::auth::ClientRecord;
use jsonwebtoken::jwk::JwkSet;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/auth/token", post(token_endpoint))
        .route("/auth/jwks", get(jwks))
        .route(
            "/.well-known/openid-configuration",
            get(openid_configuration),
        )
        .route(
            "/fhir/.well-known/smart-configuration",
            get(smart_configuration),
        )
}

/// Paths answered without a token (issue 4, item 9): capability and discovery documents,
/// liveness, the OAuth endpoints themselves and the API docs. Exact paths, not prefixes, so
/// that an endpoint added later under `/auth/` is not public by accident.
fn is_public(path: &str) -> bool {
    matches!(
        path,
        "/healthz"
            | "/fhir/metadata"
            | "/fhir/.well-known/smart-configuration"
            | "/.well-known/openid-configuration"
            | "/auth/token"
            | "/auth/authorize"
            | "/auth/federated/start"
            | "/auth/federated/callback"
            | "/auth/introspect"
            | "/auth/revoke"
            | "/auth/jwks"
            | "/openapi.json"
    ) || path == "/docs"
        || path.starts_with("/docs/")
        // Vendors authenticate with their integration's secret, checked by the handler.
        || crate::ingest::cellular::is_webhook(path)
}

/// The public origin of this server for a request: the configured base URL without its
/// `/fhir`, or `http://` + the request's `Host`. It is the token issuer.
pub fn origin(state: &AppState, headers: &HeaderMap) -> String {
    match &state.settings.base_url {
        Some(b) => {
            let b = b.trim_end_matches('/');
            b.strip_suffix("/fhir").unwrap_or(b).to_owned()
        }
        None => {
            let host = headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("localhost");
            let scheme = if state.settings.tls.is_some() {
                "https"
            } else {
                "http"
            };
            format!("{scheme}://{host}")
        }
    }
}

/// The FHIR base URL for a request: the configured one, or the origin + `/fhir`. Access tokens
/// name it as their audience.
pub fn fhir_base(state: &AppState, headers: &HeaderMap) -> String {
    match &state.settings.base_url {
        Some(b) => b.trim_end_matches('/').to_owned(),
        None => format!("{}/fhir", origin(state, headers)),
    }
}

/// Lets a request through with its [`super::Principal`] in the extensions when it carries a
/// valid bearer token, or when its path is public; answers 401 otherwise.
pub async fn require_token(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    if is_public(req.uri().path()) {
        return next.run(req).await;
    }
    match authenticate(&state, req.headers()).await {
        Ok(p) => {
            req.extensions_mut().insert(p.clone());
            let mut resp = next.run(req).await;
            // Who it was, for the audit trail around this gate.
            resp.extensions_mut().insert(p);
            resp
        }
        Err(e) => e.into_response(),
    }
}

async fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<Arc<super::Principal>, ApiError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| ApiError::Unauthorized("a bearer access token is required".into()))?;
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim())
        .ok_or_else(|| {
            ApiError::Unauthorized("the Authorization header must be `Bearer <token>`".into())
        })?;
    let (mut issuer, mut audience) = (origin(state, headers), fhir_base(state, headers));
    // A token of a configured external provider is checked against that provider's keys and
    // audience; any other goes through our own checks (and fails there if foreign).
    let external = if state.federation.is_empty() {
        None
    } else {
        super::federation::unverified_issuer(token).filter(|iss| state.federation.knows(iss))
    };
    if let Some(iss) = &external {
        audience = state
            .federation
            .audience(iss)
            .unwrap_or_default()
            .to_owned();
        issuer = iss.clone();
    }
    let now = crate::store::now_micros() / 1_000_000;
    if let Some(p) = state.verified_tokens.get(token, &issuer, &audience, now) {
        return Ok(p);
    }
    let p = Arc::new(match &external {
        Some(iss) => state
            .federation
            .verify(iss, token)
            .await
            .map_err(|e| match e {
                token::TokenError::Unavailable => ApiError::Unavailable(e.to_string()),
                _ => ApiError::Unauthorized(e.to_string()),
            })?,
        None => token::verify(&state.signing_key, &issuer, &audience, token)
            .map_err(|e| ApiError::Unauthorized(e.to_string()))?,
    });
    state
        .verified_tokens
        .put(token, &issuer, &audience, p.clone(), now);
    Ok(p)
}

/// Tokens whose signature and claims were checked, until they expire: an RSA verification costs
/// more than serving a read, and a client sends the same token for minutes. A token is only
/// ever answered from here for the issuer and audience it was verified for, and never after its
/// `exp`.
#[derive(Default)]
pub struct VerifiedTokens {
    map: std::sync::Mutex<std::collections::HashMap<String, Verified>>,
}

/// (issuer, audience, principal) of a verified token.
type Verified = (String, String, Arc<super::Principal>);

/// Entries kept at most; beyond it the expired ones go, then all.
const VERIFIED_TOKENS_MAX: usize = 4096;

impl VerifiedTokens {
    fn get(
        &self,
        token: &str,
        issuer: &str,
        audience: &str,
        now: i64,
    ) -> Option<Arc<super::Principal>> {
        let map = self.map.lock().ok()?;
        let (iss, aud, p) = map.get(token)?;
        (iss == issuer && aud == audience && now < p.expires_at).then(|| p.clone())
    }

    fn put(&self, token: &str, issuer: &str, audience: &str, p: Arc<super::Principal>, now: i64) {
        let Ok(mut map) = self.map.lock() else { return };
        if map.len() >= VERIFIED_TOKENS_MAX {
            map.retain(|_, (_, _, p)| now < p.expires_at);
            if map.len() >= VERIFIED_TOKENS_MAX {
                map.clear();
            }
        }
        map.insert(
            token.to_owned(),
            (issuer.to_owned(), audience.to_owned(), p),
        );
    }
}

/// An OAuth error response (https://www.rfc-editor.org/rfc/rfc6749#section-5.2).
pub(super) struct OAuthError {
    status: StatusCode,
    error: &'static str,
    description: String,
    /// The client authenticated with HTTP Basic: a 401 then names the scheme.
    basic_challenge: bool,
}

impl OAuthError {
    pub(super) fn new(error: &'static str, description: impl Into<String>) -> OAuthError {
        OAuthError {
            status: if error == "invalid_client" {
                StatusCode::UNAUTHORIZED
            } else {
                StatusCode::BAD_REQUEST
            },
            error,
            description: description.into(),
            basic_challenge: false,
        }
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let mut resp = no_store_json(
            self.status,
            &json!({"error": self.error, "error_description": self.description}),
        );
        if self.basic_challenge && self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(r#"Basic realm="vitalbridge""#),
            );
        }
        resp
    }
}

/// An argon2 hash of a random secret nobody knows, for [`issue_token`]'s unknown clients.
pub fn dummy_hash() -> &'static str {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| {
        secret::hash(&uuid::Uuid::new_v4().to_string()).unwrap_or_else(|_| {
            // Unreachable with the default parameters; a malformed hash never verifies.
            String::new()
        })
    })
}

/// A JSON answer that no cache may keep (token responses carry credentials,
/// https://www.rfc-editor.org/rfc/rfc6749#section-5.1).
pub(super) fn no_store_json(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
            (header::PRAGMA, "no-cache"),
        ],
        body.to_string(),
    )
        .into_response()
}

/// `client_id:client_secret` of an HTTP Basic header, each form-urlencoded first
/// (https://www.rfc-editor.org/rfc/rfc6749#section-2.3.1).
fn basic_credentials(headers: &HeaderMap) -> Option<Result<(String, String), ()>> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, b64) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decode = || {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|_| ())?;
        let raw = String::from_utf8(raw).map_err(|_| ())?;
        let (id, secret) = raw.split_once(':').ok_or(())?;
        // application/x-www-form-urlencoded: `+` is a space, then percent-escapes; a raw `&`
        // or `=` is part of the value.
        let unescape = |s: &str| {
            percent_encoding::percent_decode_str(&s.replace('+', " "))
                .decode_utf8()
                .map(|v| v.into_owned())
                .map_err(|_| ())
        };
        Ok((unescape(id)?, unescape(secret)?))
    };
    Some(decode())
}

async fn token_endpoint(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let answer = issue_token(&state, &headers, &body).await;
    // Who asked, for the audit trail: the caller of the issued token, or the client the
    // request named.
    let who = match &answer {
        Ok(v) => crate::audit::Who::from_token_response(v),
        Err(_) => None,
    }
    .unwrap_or_else(|| crate::audit::Who {
        client_id: match basic_credentials(&headers) {
            Some(Ok((id, _))) => Some(id),
            _ => form_of(&body)
                .into_iter()
                .find(|(k, _)| k == "client_id")
                .map(|(_, v)| v),
        },
        ..Default::default()
    });
    let mut resp = oauth_answer(answer);
    resp.extensions_mut().insert(who);
    resp
}

/// An OAuth endpoint's JSON answer or error, never cached.
pub(super) fn oauth_answer(r: Result<Value, OAuthError>) -> Response {
    match r {
        Ok(v) => no_store_json(StatusCode::OK, &v),
        Err(e) => e.into_response(),
    }
}

/// The fields of an `application/x-www-form-urlencoded` OAuth request.
pub(super) fn form_of(body: &[u8]) -> Vec<(String, String)> {
    url::form_urlencoded::parse(body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// A form field: absent, once, or an error when repeated (RFC 6749 section 3.2: "parameters
/// MUST NOT be included more than once").
pub(super) fn single<'a>(
    form: &'a [(String, String)],
    name: &str,
) -> Result<Option<&'a str>, OAuthError> {
    let mut values = form
        .iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.as_str());
    match (values.next(), values.next()) {
        (Some(v), None) => Ok(Some(v)),
        (None, _) => Ok(None),
        (Some(_), Some(_)) => Err(OAuthError::new(
            "invalid_request",
            format!("`{name}` is repeated"),
        )),
    }
}

async fn issue_token(
    state: &AppState,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Value, OAuthError> {
    let form = form_of(body);
    let field = |name: &str| single(&form, name);
    let grant_type = field("grant_type")?
        .ok_or_else(|| OAuthError::new("invalid_request", "`grant_type` is missing"))?;
    match grant_type {
        "client_credentials" => {}
        "authorization_code" | "refresh_token" => {
            return user_grant(state, headers, grant_type, &field).await;
        }
        _ => {
            return Err(OAuthError::new(
                "unsupported_grant_type",
                format!("grant_type `{grant_type}` is not supported"),
            ));
        }
    }

    // Client authentication: exactly one method (RFC 6749 section 2.3).
    let client =
        if field("client_assertion_type")?.is_some() || field("client_assertion")?.is_some() {
            authenticate_assertion(state, headers, &field).await?
        } else {
            authenticate_secret(state, headers, &field).await?
        };

    // Scopes: the request may only narrow what the client is allowed.
    let allowed: Vec<&str> = client.scope.split_whitespace().collect();
    let granted = match field("scope")? {
        None => client.scope.clone(),
        Some(requested) => {
            let requested: Vec<&str> = requested.split_whitespace().collect();
            if requested.is_empty() {
                return Err(OAuthError::new("invalid_scope", "`scope` is empty"));
            }
            if let Some(s) = requested.iter().find(|s| !scope::covered(s, &allowed)) {
                return Err(OAuthError::new(
                    "invalid_scope",
                    format!("the client may not be granted `{s}`"),
                ));
            }
            requested.join(" ")
        }
    };
    let role = Role::parse(&client.role).ok_or_else(|| OAuthError {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        ..OAuthError::new("server_error", "the client's role is not known")
    })?;
    let now = crate::store::now_micros() / 1_000_000;
    let access_token = token::issue(
        &state.signing_key,
        &origin(state, headers),
        &fhir_base(state, headers),
        &Grant {
            client_id: &client.client_id,
            subject: &client.client_id,
            role,
            organization: client.organization.as_deref(),
            scope: &granted,
            // A backend service has no launch context.
            patient: None,
        },
        now,
    )
    .map_err(|e| {
        tracing::error!(error = %e, "cannot sign a token");
        OAuthError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            ..OAuthError::new("server_error", "the token could not be signed")
        }
    })?;
    tracing::info!(client_id = %client.client_id, role = %role, "access token issued");
    Ok(json!({
        "access_token": access_token,
        "token_type": "Bearer",
        "expires_in": token::ACCESS_TOKEN_SECONDS,
        "scope": granted,
    }))
}

/// 32 random bytes, base64url: authorization codes and refresh tokens.
pub fn random_token() -> String {
    use rand::RngCore as _;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The SHA-256 (hex) under which a code or refresh token is stored: a leaked table holds
/// nothing that can be used.
pub fn token_hash(token: &str) -> String {
    use sha2::Digest as _;
    hex_lower(&sha2::Sha256::digest(token.as_bytes()))
}

fn hex_lower(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// PKCE S256 (RFC 7636 section 4.6): the verifier's SHA-256, base64url, is the challenge.
fn pkce_matches(verifier: &str, challenge: &str) -> bool {
    use sha2::Digest as _;
    let well_formed = (43..=128).contains(&verifier.len())
        && verifier
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'));
    well_formed
        && base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(sha2::Sha256::digest(verifier.as_bytes()))
            == challenge
}

/// Lifetime of a refresh token; each use replaces it.
const REFRESH_SECONDS: i64 = 30 * 24 * 3600;

/// Client authentication for the user grants: a confidential app by its secret or keys, a
/// public one (registered without either) by its `client_id` alone.
pub(super) async fn authenticate_app(
    state: &AppState,
    headers: &HeaderMap,
    field: &Field<'_>,
) -> Result<ClientRecord, OAuthError> {
    if field("client_assertion_type")?.is_some() || field("client_assertion")?.is_some() {
        return authenticate_assertion(state, headers, field).await;
    }
    if basic_credentials(headers).is_some() || field("client_secret")?.is_some() {
        return authenticate_secret(state, headers, field).await;
    }
    let id = field("client_id")?
        .ok_or_else(|| OAuthError::new("invalid_client", "client authentication is required"))?;
    let client = state
        .store
        .client(id)
        .await
        .map_err(|e| server_error("the client could not be read", e))?;
    client
        .filter(|c| c.secret_hash.is_none() && c.jwks.is_none() && c.jwks_url.is_none())
        .ok_or_else(|| OAuthError::new("invalid_client", "unknown client, or it must authenticate"))
}

/// `authorization_code` (with PKCE) and `refresh_token`: tokens for the user who signed in.
async fn user_grant(
    state: &AppState,
    headers: &HeaderMap,
    grant_type: &str,
    field: &Field<'_>,
) -> Result<Value, OAuthError> {
    let client = authenticate_app(state, headers, field).await?;
    let required = |name: &str| {
        field(name)?
            .ok_or_else(|| OAuthError::new("invalid_request", format!("`{name}` is missing")))
    };
    let now = crate::store::now_micros() / 1_000_000;
    let bad_grant = |msg: &str| OAuthError::new("invalid_grant", msg.to_owned());
    let (username, scope, patient, nonce) = if grant_type == "authorization_code" {
        let code = required("code")?;
        let verifier = required("code_verifier")?;
        let redirect_uri = required("redirect_uri")?;
        let rec = state
            .store
            .take_code(&token_hash(code), now)
            .await
            .map_err(|e| server_error("the code could not be read", e))?
            .ok_or_else(|| bad_grant("the code is unknown, used or expired"))?;
        if rec.expires_at < now || rec.client_id != client.client_id {
            return Err(bad_grant("the code is unknown, used or expired"));
        }
        if rec.redirect_uri != redirect_uri {
            return Err(bad_grant(
                "redirect_uri differs from the authorization request",
            ));
        }
        if !pkce_matches(verifier, &rec.code_challenge) {
            tracing::info!(client_id = %client.client_id, "code refused: PKCE verifier mismatch");
            return Err(bad_grant(
                "the code_verifier does not match the code_challenge",
            ));
        }
        (rec.username, rec.scope, rec.patient, rec.nonce)
    } else {
        let presented = required("refresh_token")?;
        let hash = token_hash(presented);
        let rec = state
            .store
            .live_refresh(&hash)
            .await
            .map_err(|e| server_error("the refresh token could not be read", e))?
            .ok_or_else(|| bad_grant("the refresh token is unknown, used or revoked"))?;
        if rec.expires_at < now || rec.client_id != client.client_id {
            return Err(bad_grant("the refresh token is unknown, used or revoked"));
        }
        // A refresh may narrow the scopes, never widen them (RFC 6749 section 6).
        let scope = match field("scope")? {
            None => rec.scope.clone(),
            Some(asked) => {
                let granted: Vec<&str> = rec.scope.split_whitespace().collect();
                if let Some(s) = asked
                    .split_whitespace()
                    .find(|s| !scope::covered(s, &granted))
                {
                    return Err(OAuthError::new(
                        "invalid_scope",
                        format!("`{s}` was not granted to this refresh token"),
                    ));
                }
                asked.split_whitespace().collect::<Vec<_>>().join(" ")
            }
        };
        // Used once: of two concurrent uses, one gets tokens.
        let rec = state
            .store
            .take_refresh(&hash)
            .await
            .map_err(|e| server_error("the refresh token could not be read", e))?
            .ok_or_else(|| bad_grant("the refresh token is unknown, used or revoked"))?;
        (rec.username, scope, rec.patient, None)
    };
    let user = state
        .store
        .user(&username)
        .await
        .map_err(|e| server_error("the user could not be read", e))?
        .ok_or_else(|| bad_grant("the user no longer exists"))?;
    let role = Role::parse(&user.role).ok_or_else(|| server_error("unknown role", &user.role))?;
    let (issuer, audience) = (origin(state, headers), fhir_base(state, headers));
    let access_token = token::issue(
        &state.signing_key,
        &issuer,
        &audience,
        &Grant {
            client_id: &client.client_id,
            subject: &user.username,
            role,
            organization: user.organization.as_deref(),
            scope: &scope,
            patient: patient.as_deref(),
        },
        now,
    )
    .map_err(|e| server_error("the token could not be signed", e))?;
    let scopes: Vec<&str> = scope.split_whitespace().collect();
    let mut body = json!({
        "access_token": access_token,
        "token_type": "Bearer",
        "expires_in": token::ACCESS_TOKEN_SECONDS,
        "scope": scope,
    });
    if let Some(p) = &patient {
        body["patient"] = json!(p);
    }
    if scopes.contains(&"openid") {
        // OpenID Connect Core section 2; fhirUser per SMART (scopes-and-launch-context.html#scopes-for-requesting-identity-data).
        let mut claims = json!({
            "iss": issuer,
            "sub": user.username,
            "aud": client.client_id,
            "iat": now,
            "exp": now + token::ACCESS_TOKEN_SECONDS,
        });
        if let Some(n) = nonce {
            claims["nonce"] = json!(n);
        }
        if scopes.contains(&"fhirUser")
            && let Some(f) = &user.fhir_user
        {
            claims["fhirUser"] = json!(format!("{}/{f}", audience.trim_end_matches('/')));
        }
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        header.kid = Some(state.signing_key.kid.clone());
        body["id_token"] = json!(
            jsonwebtoken::encode(&header, &claims, &state.signing_key.encoding)
                .map_err(|e| server_error("the id token could not be signed", e))?
        );
    }
    if scopes.contains(&"offline_access") {
        let refresh = random_token();
        state
            .store
            .put_refresh(&crate::store::auth::RefreshRecord {
                token_hash: token_hash(&refresh),
                client_id: client.client_id.clone(),
                username: user.username.clone(),
                scope: scope.clone(),
                patient: patient.clone(),
                expires_at: now + REFRESH_SECONDS,
            })
            .await
            .map_err(|e| server_error("the refresh token could not be stored", e))?;
        body["refresh_token"] = json!(refresh);
    }
    tracing::info!(client_id = %client.client_id, role = %role, grant_type, "access token issued");
    Ok(body)
}

/// A form field of the token request: absent, once, or an error when repeated.
pub(super) type Field<'a> = dyn Fn(&str) -> Result<Option<&'a str>, OAuthError> + Sync + 'a;

pub(super) fn server_error(what: &str, e: impl std::fmt::Display) -> OAuthError {
    tracing::error!(error = %e, "{what}");
    OAuthError {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        ..OAuthError::new("server_error", what.to_string())
    }
}

/// Client authentication with a client secret, HTTP Basic or in the form.
async fn authenticate_secret(
    state: &AppState,
    headers: &HeaderMap,
    field: &Field<'_>,
) -> Result<ClientRecord, OAuthError> {
    let basic = basic_credentials(headers);
    let posted = field("client_secret")?;
    let (client_id, client_secret, used_basic) = match (basic, posted) {
        (Some(_), Some(_)) => {
            return Err(OAuthError::new(
                "invalid_request",
                "the client authenticated with more than one method",
            ));
        }
        (Some(Err(())), None) => {
            return Err(OAuthError {
                basic_challenge: true,
                ..OAuthError::new("invalid_client", "malformed HTTP Basic credentials")
            });
        }
        (Some(Ok((id, secret))), None) => {
            if let Some(form_id) = field("client_id")?
                && form_id != id
            {
                return Err(OAuthError::new(
                    "invalid_request",
                    "client_id differs from the authenticated client",
                ));
            }
            (id, secret, true)
        }
        (None, Some(secret)) => {
            let id = field("client_id")?
                .ok_or_else(|| OAuthError::new("invalid_request", "`client_id` is missing"))?;
            (id.to_owned(), secret.to_owned(), false)
        }
        (None, None) => {
            return Err(OAuthError::new(
                "invalid_client",
                "client authentication is required",
            ));
        }
    };
    let unknown = || OAuthError {
        basic_challenge: used_basic,
        ..OAuthError::new("invalid_client", "unknown client or wrong secret")
    };
    let client = state
        .store
        .client(&client_id)
        .await
        .map_err(|e| server_error("the client could not be read", e))?;
    // An unknown client, or one without a secret, is checked against a hash all the same, so
    // the answer's timing does not tell which client ids exist.
    let hash = client
        .as_ref()
        .and_then(|c| c.secret_hash.clone())
        .unwrap_or_else(|| dummy_hash().to_owned());
    let ok = secret::verify_slowly(client_secret, hash).await;
    let Some(client) = client.filter(|c| c.secret_hash.is_some()) else {
        return Err(unknown());
    };
    if !ok {
        tracing::info!(client_id = %client.client_id, "token refused: wrong client secret");
        return Err(unknown());
    }
    Ok(client)
}

/// Client authentication with a signed JWT (`private_key_jwt`, SMART Backend Services).
async fn authenticate_assertion(
    state: &AppState,
    headers: &HeaderMap,
    field: &Field<'_>,
) -> Result<ClientRecord, OAuthError> {
    if basic_credentials(headers).is_some() || field("client_secret")?.is_some() {
        return Err(OAuthError::new(
            "invalid_request",
            "the client authenticated with more than one method",
        ));
    }
    if field("client_assertion_type")? != Some(assertion::ASSERTION_TYPE) {
        return Err(OAuthError::new(
            "invalid_request",
            format!(
                "client_assertion_type must be {}",
                assertion::ASSERTION_TYPE
            ),
        ));
    }
    let jwt = field("client_assertion")?
        .ok_or_else(|| OAuthError::new("invalid_request", "`client_assertion` is missing"))?;
    let client_id = assertion::claimed_client(jwt).ok_or_else(|| {
        OAuthError::new(
            "invalid_client",
            assertion::AssertionError::Malformed.to_string(),
        )
    })?;
    if let Some(form_id) = field("client_id")?
        && form_id != client_id
    {
        return Err(OAuthError::new(
            "invalid_request",
            "client_id differs from the assertion's issuer",
        ));
    }
    let refused = |why: String| {
        tracing::info!(client_id = %client_id, reason = %why, "token refused: client assertion");
        OAuthError::new("invalid_client", why)
    };
    let client = state
        .store
        .client(&client_id)
        .await
        .map_err(|e| server_error("the client could not be read", e))?
        .filter(|c| c.jwks.is_some() || c.jwks_url.is_some())
        .ok_or_else(|| refused("unknown client, or one without registered keys".into()))?;
    let keys = client_keys(&client, jwt).await.map_err(refused)?;
    let now = crate::store::now_micros() / 1_000_000;
    let token_url = format!("{}/auth/token", origin(state, headers));
    let (jti, exp) = assertion::verify(jwt, &client.client_id, &token_url, &keys, now)
        .map_err(|e| refused(e.to_string()))?;
    if !state
        .store
        .remember_assertion(&client.client_id, &jti, exp, now)
        .await
        .map_err(|e| server_error("the assertion could not be recorded", e))?
    {
        return Err(refused(
            "this client assertion was used before (jti)".into(),
        ));
    }
    Ok(client)
}

/// The client's public keys: registered inline, or fetched from its JWKS URL. Fetched sets are
/// kept five minutes, and fetched again sooner when an assertion names a kid they lack (the
/// client rotated its keys), at most every two seconds.
async fn client_keys(client: &ClientRecord, jwt: &str) -> Result<JwkSet, String> {
    if let Some(text) = &client.jwks {
        return assertion::parse_jwks(text);
    }
    let url = client
        .jwks_url
        .as_deref()
        .ok_or_else(|| "the client has no registered keys".to_owned())?;
    type Cache = std::sync::Mutex<std::collections::HashMap<String, (JwkSet, std::time::Instant)>>;
    static CACHE: std::sync::OnceLock<Cache> = std::sync::OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let cached = cache.lock().ok().and_then(|m| m.get(url).cloned());
    if let Some((keys, at)) = &cached {
        let age = at.elapsed();
        let fresh = age < std::time::Duration::from_secs(300);
        let recent = age < std::time::Duration::from_secs(2);
        if fresh && (recent || assertion::has_kid(keys, jwt)) {
            return Ok(keys.clone());
        }
    }
    static HTTP: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    let http = HTTP.get_or_init(|| {
        reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default()
    });
    let fetched = async {
        let r = http.get(url).send().await.map_err(|e| e.to_string())?;
        if !r.status().is_success() {
            return Err(format!("status {}", r.status()));
        }
        let text = r.text().await.map_err(|e| e.to_string())?;
        assertion::parse_jwks(&text)
    }
    .await;
    match fetched {
        Ok(keys) => {
            if let Ok(mut m) = cache.lock() {
                m.insert(url.to_owned(), (keys.clone(), std::time::Instant::now()));
            }
            Ok(keys)
        }
        Err(e) => {
            tracing::warn!(jwks_url = %url, error = %e, "cannot fetch a client's JWKS");
            // A set fetched before still serves while the URL is down.
            cached
                .map(|(k, _)| k)
                .ok_or_else(|| "the client's JWKS URL could not be read".to_owned())
        }
    }
}

/// A discovery document: plain JSON, whatever the request's `Accept` asks.
fn json_document(doc: &Value) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        doc.to_string(),
    )
        .into_response()
}

async fn jwks(State(state): State<AppState>) -> Response {
    json_document(&state.signing_key.jwks())
}

/// The grant types, authentication methods and scopes this server supports; the discovery
/// documents list the same.
const GRANT_TYPES: &[&str] = &["client_credentials", "authorization_code", "refresh_token"];
const AUTH_METHODS: &[&str] = &[
    "client_secret_basic",
    "client_secret_post",
    "private_key_jwt",
    "none",
];

fn scopes_supported() -> Vec<&'static str> {
    vec![
        "system/*.cruds",
        "system/*.rs",
        "system/*.read",
        "system/*.*",
        "user/*.cruds",
        "user/*.rs",
        "patient/*.cruds",
        "patient/*.rs",
        "openid",
        "fhirUser",
        "launch",
        "launch/patient",
        "offline_access",
    ]
}

/// What both discovery documents say of the issuer: its endpoints, grants and scopes.
fn issuer_metadata(origin: &str) -> Value {
    json!({
        "issuer": origin,
        "jwks_uri": format!("{origin}/auth/jwks"),
        "token_endpoint": format!("{origin}/auth/token"),
        "authorization_endpoint": format!("{origin}/auth/authorize"),
        "introspection_endpoint": format!("{origin}/auth/introspect"),
        "revocation_endpoint": format!("{origin}/auth/revoke"),
        "grant_types_supported": GRANT_TYPES,
        "token_endpoint_auth_methods_supported": AUTH_METHODS,
        "token_endpoint_auth_signing_alg_values_supported": assertion::ALGORITHMS,
        "scopes_supported": scopes_supported(),
        "response_types_supported": ["code"],
    })
}

async fn openid_configuration(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let mut doc = issuer_metadata(&origin(&state, &headers));
    doc["id_token_signing_alg_values_supported"] = json!(["RS256"]);
    doc["subject_types_supported"] = json!(["public"]);
    json_document(&doc)
}

/// SMART configuration (https://hl7.org/fhir/smart-app-launch/conformance.html#metadata): JSON
/// whatever the `Accept` header asks.
async fn smart_configuration(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let mut doc = issuer_metadata(&origin(&state, &headers));
    doc["capabilities"] = json!([
        "permission-v1",
        "permission-v2",
        "client-confidential-symmetric",
        "client-confidential-asymmetric",
        "client-public",
        "launch-standalone",
        "launch-ehr",
        "context-ehr-patient",
        "context-standalone-patient",
        "permission-patient",
        "permission-user",
        "permission-offline",
        "sso-openid-connect"
    ]);
    doc["code_challenge_methods_supported"] = json!(["S256"]);
    json_document(&doc)
}
