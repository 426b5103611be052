//! Sign-in on the login page through an organization's own OpenID provider (issue 4: "the
//! platform's people log in through the built-in authorization server or their organization's
//! own OpenID provider"). vitalbridge is the relying party of the OpenID Connect authorization
//! code flow (https://openid.net/specs/openid-connect-core-1_0.html#CodeFlowAuth), through the
//! openidconnect crate, with PKCE (RFC 7636), `state` and `nonce`:
//!
//! - the login page shows a button per provider configured with a `login` client;
//! - `POST /auth/federated/start` (the button, carrying the app's authorization request) sends the
//!   browser to the provider. What the callback needs (state, nonce, PKCE verifier, the app's
//!   request) travels in a short-lived cookie signed by this server, bound to that browser
//!   (RFC 6749 section 10.12);
//! - `GET /auth/federated/callback` exchanges the provider's code, verifies the ID token (issuer,
//!   audience, signature by the provider's current keys, nonce), reads the claims (ID token,
//!   then the userinfo endpoint, where OpenID Connect Core section 5.4 puts scope claims), and
//!   maps them to a role, organization and patient with the provider's configured claims and
//!   allow-lists, exactly as for the provider's access tokens.
//!
//! The person becomes (or updates) a local account named `{issuer}#{sub}` without a password,
//! so that the rest of the app launch (patient picker, codes, refresh tokens, `fhirUser`) works
//! as for built-in accounts. A local account with that name is never taken over.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use axum::routing::{get, post};
use openidconnect::core::{
    CoreAuthenticationFlow, CoreClient, CoreGenderClaim, CoreProviderMetadata,
};
use openidconnect::{
    AccessToken, AuthorizationCode, ClientId, ClientSecret, CsrfToken, IssuerUrl, Nonce,
    OAuth2TokenResponse, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, Scope,
    SubjectIdentifier, TokenResponse, UserInfoClaims,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::authorize::{self, AuthRequest, Refusal};
use super::federation::LoginConfig;
use super::routes::origin;
use crate::http::AppState;
use crate::store::auth::UserRecord;

/// The cookie carrying a started sign-in to the callback.
const COOKIE: &str = "vb_federated";
/// How long a person has to sign in at the provider.
const SECONDS: i64 = 600;
const AUDIENCE: &str = "vitalbridge-federated-login";
/// The password hash of accounts that sign in elsewhere: no password matches it (it is not a
/// PHC string), and it marks the account as the provider's.
pub const FEDERATED_HASH: &str = "!federated";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/auth/federated/start", post(start))
        .route("/auth/federated/callback", get(callback))
}

/// A started sign-in, signed by this server, in the [`COOKIE`].
#[derive(Debug, Serialize, Deserialize)]
struct Started {
    iss: String,
    aud: String,
    exp: i64,
    provider: String,
    state: String,
    nonce: String,
    verifier: String,
    /// The app's authorization request (JSON).
    req: String,
}

/// The login buttons: a form per provider that signs people in, carrying the app's request.
pub fn buttons(state: &AppState, req: &AuthRequest) -> String {
    state
        .federation
        .login_providers()
        .map(|(issuer, login)| {
            format!(
                "<form method=\"post\" action=\"/auth/federated/start\">{}\
                 <input type=\"hidden\" name=\"provider\" value=\"{}\">\
                 <p><button type=\"submit\">Sign in with {}</button></p></form>",
                authorize::hidden_fields(req),
                authorize::escape(issuer),
                authorize::escape(&login.name)
            )
        })
        .collect()
}

/// The provider's client as discovered: authorization endpoint set, token and userinfo
/// endpoints as the metadata has them.
type Client = CoreClient<
    openidconnect::EndpointSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointMaybeSet,
    openidconnect::EndpointMaybeSet,
>;

fn redirect_url(state: &AppState, headers: &HeaderMap) -> Option<RedirectUrl> {
    RedirectUrl::new(format!(
        "{}/auth/federated/callback",
        origin(state, headers)
    ))
    .ok()
}

/// The provider's client for this server, from freshly discovered metadata (sign-ins are rare;
/// fresh metadata also brings the provider's current keys for the ID token).
async fn client(
    state: &AppState,
    headers: &HeaderMap,
    issuer: &str,
    login: &LoginConfig,
) -> Result<(Client, reqwest::Client), Response> {
    let unavailable = || {
        authorize::page(
            StatusCode::SERVICE_UNAVAILABLE,
            "Sign-in unavailable",
            "<p>The identity provider cannot be reached; try again later.</p>",
        )
    };
    let http = state.federation.http().ok_or_else(unavailable)?.clone();
    let issuer_url = IssuerUrl::new(issuer.to_owned()).map_err(|_| unavailable())?;
    let meta = CoreProviderMetadata::discover_async(issuer_url, &http)
        .await
        .map_err(|e| {
            tracing::warn!(issuer, error = %e, "OpenID provider discovery failed");
            unavailable()
        })?;
    let redirect = redirect_url(state, headers).ok_or_else(unavailable)?;
    let client = CoreClient::from_provider_metadata(
        meta,
        ClientId::new(login.client_id.clone()),
        Some(ClientSecret::new(login.client_secret.clone())),
    )
    .set_redirect_uri(redirect);
    Ok((client, http))
}

fn cookie(state: &AppState, value: &str, max_age: i64) -> HeaderValue {
    // Lax: the provider sends the browser back with a top-level GET, which carries it.
    let secure = if state.settings.tls.is_some() || origin_is_https(state) {
        "; Secure"
    } else {
        ""
    };
    HeaderValue::from_str(&format!(
        "{COOKIE}={value}; Path=/auth/federated; Max-Age={max_age}; HttpOnly; SameSite=Lax{secure}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("vb_federated=; Max-Age=0"))
}

fn origin_is_https(state: &AppState) -> bool {
    state
        .settings
        .base_url
        .as_deref()
        .is_some_and(|b| b.starts_with("https://"))
}

/// `POST /auth/federated/start`: the login page's provider button.
async fn start(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let form = authorize::form(&body);
    let req = authorize::request_of(&form);
    if let Err(r) = authorize::check(&state, &headers, &req).await {
        return authorize::refuse(r, req.state.as_deref());
    }
    let issuer = authorize::field(&form, "provider").unwrap_or_default();
    let Some(login) = state.federation.login_of(issuer) else {
        return authorize::page(
            StatusCode::BAD_REQUEST,
            "Unknown identity provider",
            "<p>This server does not sign people in through that provider.</p>",
        );
    };
    let (client, _) = match client(&state, &headers, issuer, login).await {
        Ok(c) => c,
        Err(page) => return page,
    };
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let mut auth = client
        .authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        )
        .set_pkce_challenge(challenge);
    for s in login.scope.split_whitespace().filter(|s| *s != "openid") {
        auth = auth.add_scope(Scope::new(s.to_owned()));
    }
    let (url, csrf, nonce) = auth.url();
    let started = Started {
        iss: origin(&state, &headers),
        aud: AUDIENCE.into(),
        exp: authorize::now() + SECONDS,
        provider: issuer.to_owned(),
        state: csrf.secret().clone(),
        nonce: nonce.secret().clone(),
        verifier: verifier.secret().clone(),
        req: serde_json::to_string(&req).unwrap_or_default(),
    };
    let Some(signed) = authorize::sign(&state, &started) else {
        return authorize::page(StatusCode::INTERNAL_SERVER_ERROR, "Try again later", "");
    };
    let mut resp = authorize::redirect(url.as_str());
    resp.headers_mut()
        .insert(header::SET_COOKIE, cookie(&state, &signed, SECONDS));
    resp
}

#[derive(Debug, Deserialize)]
struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    iss: Option<String>,
}

/// The claims a provider may add to the standard ones (role, organization, patient…).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Extra(serde_json::Map<String, Value>);
impl openidconnect::AdditionalClaims for Extra {}

fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// `GET /auth/federated/callback`: the provider sends the browser back here.
async fn callback(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<CallbackQuery>,
) -> Response {
    let mut resp = finish(&state, &headers, q).await;
    // The started sign-in is spent, whatever happened.
    resp.headers_mut()
        .insert(header::SET_COOKIE, cookie(&state, "", 0));
    resp
}

async fn finish(state: &AppState, headers: &HeaderMap, q: CallbackQuery) -> Response {
    let again = |status| {
        authorize::page(
            status,
            "Sign-in not recognised",
            "<p>This sign-in was not started in this browser, or it expired. Go back to the \
             app and start again.</p>",
        )
    };
    let Some(started) = cookie_value(headers, COOKIE)
        .and_then(|c| authorize::verify_signed::<Started>(state, headers, c, AUDIENCE))
    else {
        return again(StatusCode::BAD_REQUEST);
    };
    // The `state` the provider returns must be the one this browser's sign-in sent (CSRF).
    if q.state.as_deref() != Some(started.state.as_str()) {
        return again(StatusCode::BAD_REQUEST);
    }
    // RFC 9207: a provider that names itself must be the one asked (mix-up attacks).
    if q.iss.as_deref().is_some_and(|i| i != started.provider) {
        return again(StatusCode::BAD_REQUEST);
    }
    let Ok(req) = serde_json::from_str::<AuthRequest>(&started.req) else {
        return again(StatusCode::BAD_REQUEST);
    };
    let app = match authorize::check(state, headers, &req).await {
        Ok(c) => c,
        Err(r) => return authorize::refuse(r, req.state.as_deref()),
    };
    let back = |error: &'static str, msg: &str| {
        authorize::refuse(
            Refusal::Redirect(req.redirect_uri.clone(), error, msg.into()),
            req.state.as_deref(),
        )
    };
    if q.error.is_some() {
        return back(
            "access_denied",
            "the identity provider did not sign the user in",
        );
    }
    let Some(code) = q.code else {
        return again(StatusCode::BAD_REQUEST);
    };
    let Some(login) = state.federation.login_of(&started.provider) else {
        return again(StatusCode::BAD_REQUEST);
    };
    let (client, http) = match client(state, headers, &started.provider, login).await {
        Ok(c) => c,
        Err(page) => return page,
    };
    let refused = |what: &str| {
        tracing::warn!(issuer = %started.provider, what, "federated sign-in refused");
        authorize::page(
            StatusCode::BAD_GATEWAY,
            "Sign-in failed",
            "<p>The identity provider's answer could not be accepted. Go back to the app and \
             start again.</p>",
        )
    };
    let Ok(exchange) = client.exchange_code(AuthorizationCode::new(code)) else {
        return refused("no token endpoint");
    };
    let tokens = match exchange
        .set_pkce_verifier(PkceCodeVerifier::new(started.verifier.clone()))
        .request_async(&http)
        .await
    {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(error = %e, "the provider refused the code");
            return refused("code exchange");
        }
    };
    let Some(id_token) = tokens.id_token() else {
        return refused("no ID token");
    };
    let nonce = Nonce::new(started.nonce.clone());
    let subject = match id_token.claims(&client.id_token_verifier(), &nonce) {
        Ok(c) => c.subject().clone(),
        Err(e) => {
            tracing::warn!(error = %e, "the provider's ID token is not valid");
            return refused("ID token");
        }
    };
    // Verified just above; read again as plain JSON for the configured claim names.
    let Some(mut claims) =
        super::token::unverified_claims::<serde_json::Map<String, Value>>(&id_token.to_string())
    else {
        return refused("ID token claims");
    };
    if let Some(more) = user_info(&client, &http, tokens.access_token(), &subject).await {
        for (k, v) in more {
            if k != "sub" {
                claims.insert(k, v);
            }
        }
    }
    let person = match state
        .federation
        .login_principal(&started.provider, &Value::Object(claims))
    {
        Ok(p) => p,
        Err(e) => {
            return authorize::page(
                StatusCode::FORBIDDEN,
                "Not allowed",
                &format!(
                    "<p>vitalbridge cannot sign you in: {}.</p>",
                    authorize::escape(&e.to_string())
                ),
            );
        }
    };
    let user = UserRecord {
        username: format!("{}#{}", started.provider, subject.as_str()),
        password_hash: FEDERATED_HASH.into(),
        role: person.role.as_str().to_owned(),
        organization: person.organization.clone(),
        fhir_user: person.patient.as_ref().map(|p| format!("Patient/{p}")),
        failed_logins: 0,
        locked_until: None,
    };
    match state.store.upsert_federated_user(&user).await {
        Ok(true) => {}
        Ok(false) => {
            return authorize::page(
                StatusCode::CONFLICT,
                "Account name taken",
                "<p>A local account has the name this sign-in maps to; ask an administrator.</p>",
            );
        }
        Err(_) => return authorize::page(StatusCode::INTERNAL_SERVER_ERROR, "Try again later", ""),
    }
    tracing::info!(issuer = %started.provider, role = %person.role, "federated sign-in");
    let mut resp = authorize::proceed(state, headers, &req, &app, &user, None).await;
    resp.extensions_mut().insert(crate::audit::Who {
        client_id: Some(app.client_id.clone()),
        subject: Some(user.username.clone()),
        role: Some(user.role.clone()),
        organization: user.organization.clone(),
    });
    resp
}

/// The userinfo claims of the signed-in person, when the provider has the endpoint; they must
/// name the ID token's subject (OpenID Connect Core section 5.3.2).
async fn user_info(
    client: &Client,
    http: &reqwest::Client,
    token: &AccessToken,
    subject: &SubjectIdentifier,
) -> Option<serde_json::Map<String, Value>> {
    let request = client
        .user_info(token.clone(), Some(subject.clone()))
        .ok()?;
    match request
        .request_async::<Extra, _, CoreGenderClaim>(http)
        .await
    {
        Ok(info) => {
            let info: UserInfoClaims<Extra, CoreGenderClaim> = info;
            match serde_json::to_value(&info) {
                Ok(Value::Object(m)) => Some(m),
                _ => None,
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "the provider's userinfo could not be read");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; vb_federated=xyz.abc"),
        );
        h.append(header::COOKIE, HeaderValue::from_static("b=2"));
        assert_eq!(cookie_value(&h, COOKIE), Some("xyz.abc"));
        assert_eq!(cookie_value(&h, "b"), Some("2"));
        assert_eq!(cookie_value(&h, "c"), None);
    }

    #[test]
    fn federated_accounts_have_no_password() {
        assert!(!super::super::secret::verify("", FEDERATED_HASH));
        assert!(!super::super::secret::verify(
            FEDERATED_HASH,
            FEDERATED_HASH
        ));
    }
}
