//! The authorization endpoint of SMART App Launch 2
//! (https://hl7.org/fhir/smart-app-launch/app-launch.html#obtain-authorization-code): a plain
//! HTML login page, a patient picker for clinicians who ask for `launch/patient`, and the
//! authorization code (PKCE S256 required, RFC 7636) the app exchanges at the token endpoint.
//!
//! - `GET /auth/authorize?response_type=code&client_id&redirect_uri&scope&state&aud&code_challenge&code_challenge_method=S256`:
//!   the login form;
//! - `POST /auth/authorize`: the form's answer. Wrong passwords count against the account,
//!   which is locked for [`LOCK_SECONDS`] after [`MAX_FAILURES`] in a row.
//!
//! - `POST /auth/launch` `{"patient"}` (with a token that may read that Patient): the `launch`
//!   value of an EHR launch (https://hl7.org/fhir/smart-app-launch/app-launch.html#launch-app-ehr-launch),
//!   a signed, five-minute context the app passes back with the `launch` scope.
//!
//! A request naming an unknown client or an unregistered redirect URI gets an error page and
//! is never redirected (RFC 6749 section 4.1.2.1); other errors go back to the app.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};

use super::routes::{dummy_hash, fhir_base, origin};
use super::users::patient_of;
use super::{Role, scope, secret};
use crate::fhir::types::{ResourceId, ResourceType};
use crate::http::AppState;
use crate::store::auth::{ClientRecord, CodeRecord, UserRecord};

/// Wrong passwords in a row that lock an account.
pub const MAX_FAILURES: i64 = 5;
/// How long a locked account stays locked.
pub const LOCK_SECONDS: i64 = 15 * 60;
/// Lifetime of an authorization code (RFC 6749 section 4.1.2: at most 10 minutes).
pub const CODE_SECONDS: i64 = 60;
/// Lifetime of the signed sign-in that carries a clinician from the login to the picker.
const SIGN_IN_SECONDS: i64 = 300;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/auth/authorize", get(start).post(answer))
        .route("/auth/launch", axum::routing::post(new_launch))
}

/// The parameters of an authorization request, as sent and carried through the forms.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct AuthRequest {
    #[serde(default)]
    pub response_type: String,
    #[serde(default)]
    pub client_id: String,
    #[serde(default)]
    pub redirect_uri: String,
    #[serde(default)]
    pub scope: String,
    #[serde(default)]
    pub state: Option<String>,
    #[serde(default)]
    pub aud: String,
    #[serde(default)]
    pub code_challenge: String,
    #[serde(default)]
    pub code_challenge_method: String,
    #[serde(default)]
    pub nonce: Option<String>,
    /// The EHR launch context ([`new_launch`]).
    #[serde(default)]
    pub launch: Option<String>,
}

const REQUEST_FIELDS: &[&str] = &[
    "response_type",
    "client_id",
    "redirect_uri",
    "scope",
    "state",
    "aud",
    "code_challenge",
    "code_challenge_method",
    "nonce",
    "launch",
];

/// Where an invalid request is answered.
pub(super) enum Refusal {
    /// On an error page: the client or redirect URI cannot be trusted.
    Page(StatusCode, String),
    /// Back at the app's redirect URI, with an OAuth error code.
    Redirect(String, &'static str, String),
}

/// `&`, `<`, `>`, `"` and `'` as HTML entities (also the billing statements' HTML).
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A page no cache keeps and no other site frames.
pub(super) fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t}</title>\
         <meta name=\"viewport\" content=\"width=device-width\"></head><body><main>\
         <h1>{t}</h1>{body}</main></body></html>",
        t = escape(title)
    );
    (
        status,
        [
            (header::CACHE_CONTROL, "no-store"),
            (header::PRAGMA, "no-cache"),
            (header::X_FRAME_OPTIONS, "DENY"),
            (
                header::CONTENT_SECURITY_POLICY,
                // No `form-action`: browsers apply it to the redirect that follows the form,
                // which goes to the app's registered redirect URI on another origin.
                "default-src 'none'; frame-ancestors 'none'",
            ),
        ],
        Html(html),
    )
        .into_response()
}

pub(super) fn refuse(r: Refusal, state: Option<&str>) -> Response {
    match r {
        Refusal::Page(status, msg) => page(
            status,
            "Sign-in request refused",
            &format!("<p>{}</p>", escape(&msg)),
        ),
        Refusal::Redirect(uri, error, description) => {
            let mut url = match url::Url::parse(&uri) {
                Ok(u) => u,
                Err(_) => return page(StatusCode::BAD_REQUEST, "Bad redirect URI", ""),
            };
            {
                let mut q = url.query_pairs_mut();
                q.append_pair("error", error);
                q.append_pair("error_description", &description);
                if let Some(s) = state {
                    q.append_pair("state", s);
                }
            }
            redirect(url.as_str())
        }
    }
}

pub(super) fn redirect(to: &str) -> Response {
    (
        StatusCode::SEE_OTHER,
        [(header::LOCATION, to), (header::CACHE_CONTROL, "no-store")],
    )
        .into_response()
}

/// Checks an authorization request; the client it names.
pub(super) async fn check(
    state: &AppState,
    headers: &HeaderMap,
    req: &AuthRequest,
) -> Result<ClientRecord, Refusal> {
    let client = state
        .store
        .client(&req.client_id)
        .await
        .map_err(|_| Refusal::Page(StatusCode::INTERNAL_SERVER_ERROR, "try again later".into()))?
        .ok_or_else(|| Refusal::Page(StatusCode::BAD_REQUEST, "unknown client".into()))?;
    let registered: Vec<String> = serde_json::from_str(&client.redirect_uris).unwrap_or_default();
    if !registered.iter().any(|u| u == &req.redirect_uri) {
        return Err(Refusal::Page(
            StatusCode::BAD_REQUEST,
            "the redirect URI is not registered for this client".into(),
        ));
    }
    let back = |error, msg: &str| Refusal::Redirect(req.redirect_uri.clone(), error, msg.into());
    if req.response_type != "code" {
        return Err(back(
            "unsupported_response_type",
            "only response_type=code is supported",
        ));
    }
    if req.code_challenge_method != "S256" || req.code_challenge.len() != 43 {
        return Err(back(
            "invalid_request",
            "PKCE is required: code_challenge with code_challenge_method=S256",
        ));
    }
    if req.aud.trim_end_matches('/') != fhir_base(state, headers).trim_end_matches('/') {
        return Err(back(
            "invalid_request",
            "aud must be this server's FHIR base URL",
        ));
    }
    let allowed: Vec<&str> = client.scope.split_whitespace().collect();
    let requested: Vec<&str> = req.scope.split_whitespace().collect();
    if requested.is_empty() {
        return Err(back("invalid_scope", "scope is empty"));
    }
    if let Some(s) = requested.iter().find(|s| !scope::covered(s, &allowed)) {
        return Err(back(
            "invalid_scope",
            &format!("the app may not be granted `{s}`"),
        ));
    }
    if requested.contains(&"launch") && req.launch.is_none() {
        return Err(back(
            "invalid_request",
            "the launch scope needs the launch value the EHR gave",
        ));
    }
    Ok(client)
}

pub(super) fn hidden_fields(req: &AuthRequest) -> String {
    let v = serde_json::to_value(req).unwrap_or_default();
    REQUEST_FIELDS
        .iter()
        .filter_map(|k| v.get(*k).and_then(|x| x.as_str()).map(|x| (*k, x)))
        .map(|(k, x)| {
            format!(
                "<input type=\"hidden\" name=\"{k}\" value=\"{}\">",
                escape(x)
            )
        })
        .collect()
}

fn login_page(
    state: &AppState,
    req: &AuthRequest,
    client: &ClientRecord,
    status: StatusCode,
    error: Option<&str>,
) -> Response {
    let app = client.name.as_deref().unwrap_or(&client.client_id);
    let error = error
        .map(|e| format!("<p role=\"alert\">{}</p>", escape(e)))
        .unwrap_or_default();
    page(
        status,
        "Sign in to vitalbridge",
        &format!(
            "<p>{} asks for access: <code>{}</code></p>{error}\
             <form method=\"post\" action=\"/auth/authorize\">{}\
             <p><label>Username <input name=\"username\" autocomplete=\"username\" required></label></p>\
             <p><label>Password <input name=\"password\" type=\"password\" autocomplete=\"current-password\" required></label></p>\
             <p><button type=\"submit\">Sign in</button></p></form>{}",
            escape(app),
            escape(&req.scope),
            hidden_fields(req),
            super::federated_login::buttons(state, req)
        ),
    )
}

async fn start(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(req): Query<AuthRequest>,
) -> Response {
    match check(&state, &headers, &req).await {
        Ok(client) => login_page(&state, &req, &client, StatusCode::OK, None),
        Err(r) => refuse(r, req.state.as_deref()),
    }
}

/// A successful sign-in, signed, carried from the login form to the patient picker.
#[derive(Debug, Serialize, Deserialize)]
struct SignIn {
    iss: String,
    aud: String,
    sub: String,
    exp: i64,
    /// The authorization request it answers, so that the picker cannot change it.
    req: String,
}

const SIGN_IN_AUDIENCE: &str = "vitalbridge-sign-in";
const LAUNCH_AUDIENCE: &str = "vitalbridge-launch";
/// Lifetime of an EHR launch context.
const LAUNCH_SECONDS: i64 = 300;

/// An EHR launch context, signed by this server.
#[derive(Debug, Serialize, Deserialize)]
struct Launch {
    iss: String,
    aud: String,
    exp: i64,
    patient: String,
}

/// Signs claims with the issuer's key (launch contexts, sign-ins between the pages).
pub(super) fn sign<T: Serialize>(state: &AppState, claims: &T) -> Option<String> {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some(state.signing_key.kid.clone());
    jsonwebtoken::encode(&header, claims, &state.signing_key.encoding).ok()
}

/// Claims [`sign`] made for `audience`, unexpired.
pub(super) fn verify_signed<T: serde::de::DeserializeOwned>(
    state: &AppState,
    headers: &HeaderMap,
    token: &str,
    audience: &str,
) -> Option<T> {
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    v.set_issuer(&[origin(state, headers)]);
    v.set_audience(&[audience]);
    jsonwebtoken::decode::<T>(token, &state.signing_key.decoding, &v)
        .ok()
        .map(|d| d.claims)
}

fn verify_launch(state: &AppState, headers: &HeaderMap, launch: &str) -> Option<String> {
    verify_signed::<Launch>(state, headers, launch, LAUNCH_AUDIENCE).map(|l| l.patient)
}

/// `POST /auth/launch`: an EHR (a clinician's session, or a backend acting for one) asks for
/// the launch value of a patient it may read.
async fn new_launch(
    State(state): State<AppState>,
    headers: HeaderMap,
    axum::Extension(p): axum::Extension<std::sync::Arc<super::Principal>>,
    body: Result<axum::Json<serde_json::Value>, axum::extract::rejection::JsonRejection>,
) -> Response {
    use crate::http::error::ApiError;
    let result = async {
        let axum::Json(body) =
            body.map_err(|e| ApiError::bad_request("structure", e.body_text()))?;
        let id = body
            .get("patient")
            .and_then(|v| v.as_str())
            .and_then(ResourceId::parse)
            .ok_or_else(|| ApiError::bad_request("invalid", "patient must be a Patient id"))?;
        let base = fhir_base(&state, &headers);
        let policy = super::policy::Policy::for_request(&p, &base, &state.store).await?;
        policy.check("Patient", super::policy::Perm::Read)?;
        let ty = ResourceType::parse("Patient")
            .ok_or_else(|| ApiError::internal(anyhow::anyhow!("Patient is a resource type")))?;
        let visible = state
            .store
            .read(ty, &id)
            .await?
            .and_then(|v| v.content)
            .is_some_and(|c| policy.sees("Patient", id.as_str(), &c));
        if !visible {
            return Err(ApiError::NotFound(format!("Patient/{id} is not known")));
        }
        let launch = sign(
            &state,
            &Launch {
                iss: origin(&state, &headers),
                aud: LAUNCH_AUDIENCE.into(),
                exp: now() + LAUNCH_SECONDS,
                patient: id.as_str().to_owned(),
            },
        )
        .ok_or_else(|| ApiError::internal(anyhow::anyhow!("the launch could not be signed")))?;
        Ok(crate::auth::routes::no_store_json(
            StatusCode::OK,
            &serde_json::json!({"launch": launch, "expires_in": LAUNCH_SECONDS}),
        ))
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

pub(super) fn now() -> i64 {
    crate::store::now_micros() / 1_000_000
}

/// The login form's answer, with who tried (the client and the username typed) left for the
/// audit trail.
async fn answer(state: State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let fields = form(&body);
    let who = crate::audit::Who {
        client_id: field(&fields, "client_id").map(str::to_owned),
        subject: field(&fields, "username").map(str::to_owned),
        ..Default::default()
    };
    let mut resp = login(state, headers, body).await;
    resp.extensions_mut().insert(who);
    resp
}

/// A form's fields, decoded.
pub(super) fn form(body: &[u8]) -> Vec<(String, String)> {
    url::form_urlencoded::parse(body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// The first value of field `name`.
pub(super) fn field<'a>(form: &'a [(String, String)], name: &str) -> Option<&'a str> {
    form.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// The authorization request a form carries in its hidden fields.
pub(super) fn request_of(form: &[(String, String)]) -> AuthRequest {
    let map: serde_json::Map<String, serde_json::Value> = REQUEST_FIELDS
        .iter()
        .filter_map(|k| field(form, k).map(|v| (k.to_string(), serde_json::Value::from(v))))
        .collect();
    serde_json::from_value(serde_json::Value::Object(map)).unwrap_or_default()
}

async fn login(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let form = form(&body);
    let field = |name: &str| field(&form, name);
    let req = request_of(&form);
    let client = match check(&state, &headers, &req).await {
        Ok(c) => c,
        Err(r) => return refuse(r, req.state.as_deref()),
    };
    let user = match field("sign_in") {
        // Back from the patient picker: the sign-in must be ours, fresh, and for this request.
        Some(token) => {
            let user = match verify_sign_in(&state, &headers, token, &req) {
                Some(username) => state.store.user(&username).await.ok().flatten(),
                None => None,
            };
            match user {
                Some(u) => u,
                None => {
                    return login_page(
                        &state,
                        &req,
                        &client,
                        StatusCode::UNAUTHORIZED,
                        Some("please sign in again"),
                    );
                }
            }
        }
        None => {
            match sign_in(
                &state,
                field("username").unwrap_or_default(),
                field("password").unwrap_or_default(),
            )
            .await
            {
                Ok(u) => u,
                Err(msg) => {
                    return login_page(&state, &req, &client, StatusCode::UNAUTHORIZED, Some(msg));
                }
            }
        }
    };
    proceed(&state, &headers, &req, &client, &user, field("patient")).await
}

/// After the user is known (signed in here, back from the picker, or from an external
/// provider): the patient in context, then the code back to the app. `picked` is the patient
/// chosen in the picker.
pub(super) async fn proceed(
    state: &AppState,
    headers: &HeaderMap,
    req: &AuthRequest,
    client: &ClientRecord,
    user: &UserRecord,
    picked: Option<&str>,
) -> Response {
    let Some(role) = Role::parse(&user.role) else {
        return page(StatusCode::INTERNAL_SERVER_ERROR, "Unknown role", "");
    };
    let scopes: Vec<&str> = req.scope.split_whitespace().collect();
    // The patient in context: a patient's own record; a clinician asking for
    // `launch/patient` picks one they may see.
    let patient = if role == Role::Patient {
        patient_of(user.fhir_user.as_deref()).map(str::to_owned)
    } else if let Some(launch) = req.launch.as_deref().filter(|_| scopes.contains(&"launch")) {
        // EHR launch: the context the EHR signed, for a patient this user may see.
        match verify_launch(state, headers, launch) {
            Some(p) if may_see_patient(state, headers, user, role, &p).await => Some(p),
            _ => {
                return login_page(
                    state,
                    req,
                    client,
                    StatusCode::FORBIDDEN,
                    Some("the launch context is not valid for you"),
                );
            }
        }
    } else if scopes.contains(&"launch/patient") {
        match picked {
            Some(p) if may_see_patient(state, headers, user, role, p).await => Some(p.to_owned()),
            Some(_) => {
                return login_page(
                    state,
                    req,
                    client,
                    StatusCode::FORBIDDEN,
                    Some("that patient is not available"),
                );
            }
            None => return picker(state, headers, req, user, role).await,
        }
    } else {
        None
    };
    let code = super::routes::random_token();
    let record = CodeRecord {
        code_hash: super::routes::token_hash(&code),
        client_id: client.client_id.clone(),
        redirect_uri: req.redirect_uri.clone(),
        scope: req.scope.clone(),
        username: user.username.clone(),
        patient,
        code_challenge: req.code_challenge.clone(),
        nonce: req.nonce.clone(),
        expires_at: now() + CODE_SECONDS,
    };
    if state.store.put_code(&record).await.is_err() {
        return page(StatusCode::INTERNAL_SERVER_ERROR, "Try again later", "");
    }
    tracing::info!(client_id = %client.client_id, role = %role, "authorization code issued");
    let Ok(mut url) = url::Url::parse(&req.redirect_uri) else {
        return page(StatusCode::BAD_REQUEST, "Bad redirect URI", "");
    };
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("code", &code);
        if let Some(s) = &req.state {
            q.append_pair("state", s);
        }
    }
    redirect(url.as_str())
}

/// Checks a username and password. An unknown user, a wrong password, a locked account and an
/// account that signs in elsewhere (an external provider's) get the same answer after the same
/// work, so that neither the message nor the timing tells which names exist or are locked.
async fn sign_in(
    state: &AppState,
    username: &str,
    password: &str,
) -> Result<UserRecord, &'static str> {
    const REFUSED: &str = "wrong username or password, or the account is locked after repeated \
                           failures: try again later";
    let user = state
        .store
        .user(username)
        .await
        .map_err(|_| "try again later")?;
    // Accounts without a password of ours are checked against the dummy hash, as unknown
    // names are: the same argon2 work, and never a match.
    let local = user
        .as_ref()
        .filter(|u| u.password_hash != super::federated_login::FEDERATED_HASH);
    let hash = local
        .map(|u| u.password_hash.clone())
        .unwrap_or_else(|| dummy_hash().to_owned());
    let ok = secret::verify_slowly(password.to_owned(), hash).await && local.is_some();
    let Some(user) = local.cloned() else {
        return Err(REFUSED);
    };
    let t = now();
    if user.locked_until.is_some_and(|until| until > t) {
        tracing::info!("sign-in refused: account locked");
        return Err(REFUSED);
    }
    let _ = state
        .store
        .record_login(&user.username, ok, MAX_FAILURES, t + LOCK_SECONDS)
        .await;
    if ok {
        Ok(user)
    } else {
        tracing::info!("sign-in refused: wrong password");
        Err(REFUSED)
    }
}

fn verify_sign_in(
    state: &AppState,
    headers: &HeaderMap,
    token: &str,
    req: &AuthRequest,
) -> Option<String> {
    let claims = verify_signed::<SignIn>(state, headers, token, SIGN_IN_AUDIENCE)?;
    let same = serde_json::to_string(req).ok()? == claims.req;
    same.then_some(claims.sub)
}

/// The principal of a signed-in user, to apply the access policy to what the pages show.
fn principal_of(user: &UserRecord, role: Role) -> super::Principal {
    super::Principal {
        client_id: String::new(),
        subject: user.username.clone(),
        role,
        organization: user.organization.clone(),
        scopes: vec!["user/Patient.rs".into()],
        patient: None,
        token_id: String::new(),
        expires_at: 0,
        issuer: None,
    }
}

async fn may_see_patient(
    state: &AppState,
    headers: &HeaderMap,
    user: &UserRecord,
    role: Role,
    id: &str,
) -> bool {
    let policy = super::policy::Policy::of(&principal_of(user, role), &fhir_base(state, headers));
    reads_patient(&state.store, &policy, id).await
}

/// Whether `policy` may read Patient `id`: it exists, and is within its tenancy and scopes.
pub(super) async fn reads_patient(
    store: &crate::store::Store,
    policy: &super::policy::Policy,
    id: &str,
) -> bool {
    let (Some(ty), Some(rid)) = (ResourceType::parse("Patient"), ResourceId::parse(id)) else {
        return false;
    };
    if !policy.permits("Patient", super::policy::Perm::Read) {
        return false;
    }
    match store.read(ty, &rid).await {
        Ok(Some(v)) => v
            .content
            .as_deref()
            .is_some_and(|c| policy.sees("Patient", id, c)),
        _ => false,
    }
}

/// The patient picker: the patients the clinician may see (the first 50 by name order of id).
async fn picker(
    state: &AppState,
    headers: &HeaderMap,
    req: &AuthRequest,
    user: &UserRecord,
    role: Role,
) -> Response {
    let base = fhir_base(state, headers);
    let policy = super::policy::Policy::of(&principal_of(user, role), &base);
    let Some(ty) = ResourceType::parse("Patient") else {
        return page(StatusCode::INTERNAL_SERVER_ERROR, "Try again later", "");
    };
    let q = crate::search::parse(Some(ty), &[("_count".into(), "50".into())], &base);
    let found = if policy.permits("Patient", super::policy::Perm::Search) {
        crate::search::engine::run_as(&mut state.store.reader(), &[ty], &q, &policy)
            .await
            .map(|r| r.matches)
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    let claims = SignIn {
        iss: origin(state, headers),
        aud: SIGN_IN_AUDIENCE.into(),
        sub: user.username.clone(),
        exp: now() + SIGN_IN_SECONDS,
        req: serde_json::to_string(req).unwrap_or_default(),
    };
    let Some(sign_in) = sign(state, &claims) else {
        return page(StatusCode::INTERNAL_SERVER_ERROR, "Try again later", "");
    };
    let mut options = String::new();
    for v in &found {
        let label = v
            .content
            .as_deref()
            .and_then(|c| serde_json::from_str::<serde_json::Value>(c).ok())
            .and_then(|p| {
                let n = p.get("name")?.get(0)?;
                let given = n
                    .get("given")
                    .and_then(|g| g.get(0))
                    .and_then(|g| g.as_str())
                    .unwrap_or("");
                let family = n.get("family").and_then(|f| f.as_str()).unwrap_or("");
                Some(format!("{given} {family}"))
            })
            .unwrap_or_else(|| v.id.clone());
        options.push_str(&format!(
            "<p><label><input type=\"radio\" name=\"patient\" value=\"{id}\" required> {label} ({id})</label></p>",
            id = escape(&v.id),
            label = escape(label.trim())
        ));
    }
    if options.is_empty() {
        options.push_str("<p>No patients are available to you.</p>");
    }
    page(
        StatusCode::OK,
        "Choose a patient",
        &format!(
            "<form method=\"post\" action=\"/auth/authorize\">{}\
             <input type=\"hidden\" name=\"sign_in\" value=\"{}\">{options}\
             <p><button type=\"submit\">Continue</button></p></form>",
            hidden_fields(req),
            escape(&sign_in)
        ),
    )
}
