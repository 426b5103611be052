//! Routes of the FHIR RESTful API under `/fhir` (https://hl7.org/fhir/R4/http.html).

use axum::Router;
use axum::body::Body;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::Value;

use super::AppState;
use super::error::{ApiError, Issue, operation_outcome};
use super::format::{
    FhirResponse, Format, Negotiated, Payload, encode, negotiate, parse_body, read_body,
};
use crate::auth::Principal;
use crate::auth::policy::{Perm, Policy};
use crate::fhir::bundle::{self, Return, history_bundle, searchset};
use crate::fhir::capability::capability_statement;
use crate::fhir::parse::{Expect, validate_resource};
use crate::fhir::rest::{self, Lookup, Outcome, parse_if_match};
use crate::fhir::types::{ResourceId, ResourceType};
use crate::search;
use crate::store::{
    HistoryQuery, HistoryScope, Method, format_http_date, now_micros, parse_instant_range,
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(search_system).post(system_bundle))
        .route("/_search", post(search_system_post))
        .route("/Observation/$lastn", get(lastn))
        .route(
            "/Subscription/$status",
            get(subscription_status).post(subscription_status),
        )
        .route(
            "/Subscription/{id}/$status",
            get(subscription_status_of).post(subscription_status_of),
        )
        .route(
            "/Subscription/{id}/$events",
            get(subscription_events).post(subscription_events),
        )
        .route("/{type}/{id}/$everything", get(everything))
        .route("/Invoice/{id}/$record-payment", post(record_payment))
        .route("/metadata", get(metadata))
        // The audit trail: read and searched here, written only by the server (crate::audit).
        .route(
            "/AuditEvent",
            get(audit_search)
                .post(audit_written_by_server)
                .put(audit_written_by_server)
                .delete(audit_written_by_server),
        )
        .route("/AuditEvent/_search", post(audit_search_post))
        .route("/AuditEvent/_history", get(audit_written_by_server))
        .route(
            "/AuditEvent/{id}",
            get(audit_read)
                .put(audit_written_by_server)
                .delete(audit_written_by_server)
                .patch(audit_written_by_server),
        )
        .route("/AuditEvent/{id}/_history", get(audit_written_by_server))
        .route("/AuditEvent/{id}/_history/{vid}", get(audit_vread))
        .route("/_history", get(history_system))
        .route(
            "/{type}",
            get(search_type)
                .post(create)
                .put(conditional_update)
                .delete(conditional_delete),
        )
        .route("/{type}/_search", post(search_post))
        .route("/{type}/$validate", post(validate_operation))
        .route("/{type}/_history", get(history_type))
        .route(
            "/{type}/{id}",
            get(read).put(update).delete(delete).patch(patch),
        )
        .route("/{type}/{id}/_history", get(history_instance))
        .route("/{type}/{id}/_history/{vid}", get(vread))
}

/// Refuses parameters holding NUL: no FHIR string may contain one (datatypes.html#string: no
/// control characters but tab, CR and LF), and PostgreSQL cannot compare text with one.
fn no_nul(params: &[(String, String)]) -> Result<(), ApiError> {
    match params
        .iter()
        .find(|(k, v)| k.contains('\0') || v.contains('\0'))
    {
        Some((k, _)) => Err(ApiError::bad_request(
            "invalid",
            format!("parameter {} holds a NUL character", k.replace('\0', "\\0")),
        )),
        None => Ok(()),
    }
}

/// What every FHIR handler needs from the request.
pub(super) struct Ctx {
    n: Negotiated,
    params: Vec<(String, String)>,
    raw_query: String,
    base: String,
    prefer_return: Return,
    strict: bool,
    /// What the caller's token allows (none for the public `metadata`).
    policy: Policy,
}

/// `Ctx` is extracted from every FHIR request; a request it cannot serve (406) is answered
/// with an OperationOutcome before the handler runs.
impl FromRequestParts<AppState> for Ctx {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let mut ctx = Ctx::new(state, &parts.headers, parts.uri.query().map(str::to_owned))
            .map_err(IntoResponse::into_response)?;
        // The bearer-token gate (auth::routes::require_token) put the principal here.
        if let Some(p) = parts.extensions.get::<std::sync::Arc<Principal>>() {
            ctx.policy = Policy::for_request(p, &ctx.base, &state.store)
                .await
                .map_err(|e| error_response(e.into(), ctx.n))?;
        }
        Ok(ctx)
    }
}

impl Ctx {
    fn new(
        state: &AppState,
        headers: &HeaderMap,
        raw_query: Option<String>,
    ) -> Result<Ctx, ApiError> {
        let raw_query = raw_query.unwrap_or_default();
        let params = search::decode_query(&raw_query);
        no_nul(&params)?;
        let n = negotiate(&params, headers)?;
        let base = crate::auth::routes::fhir_base(state, headers);
        let mut prefer_return = Return::Representation;
        let mut strict = false;
        for pref in headers
            .get_all("prefer")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split([',', ';']))
        {
            match pref.trim() {
                "return=minimal" => prefer_return = Return::Minimal,
                "return=representation" => prefer_return = Return::Representation,
                "return=OperationOutcome" => prefer_return = Return::OperationOutcome,
                "handling=strict" => strict = true,
                "handling=lenient" => strict = false,
                _ => {}
            }
        }
        Ok(Ctx {
            n,
            params,
            raw_query,
            base,
            prefer_return,
            strict,
            policy: Policy::none(),
        })
    }

    /// Renders a result; errors become OperationOutcomes in the negotiated format.
    fn respond(&self, result: Result<FhirResponse, ApiError>) -> Response {
        match result {
            Ok(r) => r.render(self.n),
            Err(e) => error_response(e, self.n),
        }
    }

    /// The response to a write, shaped by `Prefer: return=…`.
    fn write_response(&self, o: Outcome) -> FhirResponse {
        let payload = match (self.prefer_return, &o.content) {
            (Return::Minimal, _) => Payload::Empty,
            (Return::OperationOutcome, _) => Payload::Value(operation_outcome(&[Issue {
                severity: "information",
                code: "informational",
                diagnostics: format!(
                    "{} {}/{} version {}",
                    o.status.as_u16(),
                    o.ty,
                    o.id,
                    o.version_id
                ),
                expression: None,
            }])),
            (Return::Representation, Some(c)) => Payload::Stored(c.clone()),
            (Return::Representation, None) => Payload::Empty,
        };
        // 204 carries no body; with a body to return, a successful delete answers 200.
        let status = if o.status == StatusCode::NO_CONTENT && !matches!(payload, Payload::Empty) {
            StatusCode::OK
        } else {
            o.status
        };
        versioned(FhirResponse::new(status, payload), &o, &self.base)
    }
}

/// ETag, Last-Modified and (for creates) Location of a version (http.html#versioning).
fn versioned(mut r: FhirResponse, o: &Outcome, base: &str) -> FhirResponse {
    if o.version_id > 0 {
        r = r
            .header(header::ETAG, &o.etag())
            .header(header::LAST_MODIFIED, &format_http_date(o.last_updated));
        if o.location {
            r = r.header(
                header::LOCATION,
                &format!("{base}/{}/{}/_history/{}", o.ty, o.id, o.version_id),
            );
        }
    }
    r
}

pub fn error_response(e: ApiError, n: Negotiated) -> Response {
    if n.format == Format::Xml && !matches!(e, ApiError::NotAcceptable(_)) {
        let status = e.status();
        if let ApiError::Internal(cause) = &e {
            tracing::error!(error = format!("{cause:#}"), "internal error");
        }
        if let Ok(body) = encode(&operation_outcome(&e.issues()), Format::Xml, n.pretty) {
            return (
                status,
                [(header::CONTENT_TYPE, "application/fhir+xml; charset=utf-8")],
                body,
            )
                .into_response();
        }
    }
    e.into_response()
}

fn parse_type(t: &str) -> Result<ResourceType, ApiError> {
    ResourceType::parse(t).ok_or_else(|| {
        ApiError::NotFound(format!(
            "'{}' is not a resource type this server knows",
            t.chars().take(64).collect::<String>()
        ))
    })
}

fn parse_id(id: &str) -> Result<ResourceId, ApiError> {
    ResourceId::parse(id).ok_or_else(|| {
        ApiError::bad_request(
            "value",
            "the id in the URL is not a valid FHIR id ([A-Za-z0-9-.]{1,64})",
        )
    })
}

fn if_match(headers: &HeaderMap) -> Result<Option<i64>, ApiError> {
    headers
        .get(header::IF_MATCH)
        .map(|v| parse_if_match(v.to_str().unwrap_or("")))
        .transpose()
}

async fn body_json(state: &AppState, headers: &HeaderMap, body: Body) -> Result<Value, ApiError> {
    let bytes = read_body(body, state.settings.body_limit).await?;
    parse_body(headers, &bytes)
}

/// Runs a single write interaction in its own transaction.
macro_rules! in_tx {
    ($state:expr, |$tx:ident| $body:expr) => {{
        async {
            let mut $tx = $state.store.begin().await?;
            let out = $body;
            $tx.commit().await?;
            Ok::<_, ApiError>(out)
        }
        .await
    }};
}

async fn metadata(State(state): State<AppState>, ctx: Ctx) -> Response {
    let cs = capability_statement(&ctx.base, env!("CARGO_PKG_VERSION"), &state.started);
    ctx.respond(Ok(FhirResponse::new(StatusCode::OK, Payload::Value(cs))))
}

async fn read(
    State(state): State<AppState>,
    Path((ty, id)): Path<(String, String)>,
    headers: HeaderMap,
    ctx: Ctx,
) -> Response {
    let result = async {
        let ty = parse_type(&ty)?;
        ctx.policy.check(ty.as_str(), Perm::Read)?;
        let id = parse_id(&id)?;
        let o = rest::read_as(&mut Lookup::Store(&state.store), &ctx.policy, ty, &id).await?;
        // Conditional read: the client's copy is current (http.html#cread).
        if headers
            .get(header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v == o.etag())
        {
            return Ok(versioned(
                FhirResponse::new(StatusCode::NOT_MODIFIED, Payload::Empty),
                &o,
                &ctx.base,
            ));
        }
        let content = o.content.clone().unwrap_or_default();
        Ok(versioned(
            FhirResponse::new(StatusCode::OK, Payload::Stored(content)),
            &o,
            &ctx.base,
        ))
    }
    .await;
    ctx.respond(result)
}

async fn vread(
    State(state): State<AppState>,
    Path((ty, id, vid)): Path<(String, String, String)>,
    ctx: Ctx,
) -> Response {
    let result = async {
        let ty = parse_type(&ty)?;
        ctx.policy.check(ty.as_str(), Perm::Read)?;
        let id = parse_id(&id)?;
        let vid: i64 = vid
            .parse()
            .map_err(|_| ApiError::NotFound(format!("{ty}/{id} has no such version")))?;
        let o = rest::vread_as(&mut Lookup::Store(&state.store), &ctx.policy, ty, &id, vid).await?;
        let content = o.content.clone().unwrap_or_default();
        Ok(versioned(
            FhirResponse::new(StatusCode::OK, Payload::Stored(content)),
            &o,
            &ctx.base,
        ))
    }
    .await;
    ctx.respond(result)
}

async fn create(
    State(state): State<AppState>,
    Path(ty): Path<String>,
    headers: HeaderMap,
    ctx: Ctx,
    body: Body,
) -> Response {
    let result = async {
        let ty = parse_type(&ty)?;
        ctx.policy.check(ty.as_str(), Perm::Create)?;
        let value = body_json(&state, &headers, body).await?;
        let res = validate_resource(value, Expect::Create(ty))?;
        let if_none_exist = headers
            .get("if-none-exist")
            .map(|v| v.to_str().map(|s| s.trim_start_matches('?').to_owned()))
            .transpose()
            .map_err(|_| ApiError::bad_request("invalid", "If-None-Exist is not valid text"))?;
        if if_none_exist.is_some() {
            // A conditional create answers with the existing match: it searches and reads.
            ctx.policy.check(ty.as_str(), Perm::Search)?;
            ctx.policy.check(ty.as_str(), Perm::Read)?;
        }
        let o = match if_none_exist {
            Some(q) => in_tx!(state, |tx| rest::create(
                &mut tx,
                res,
                None,
                Some(&q),
                &ctx.policy
            )
            .await?)?,
            // A payment updates the invoices it pays in its own transaction (billing::payment).
            None if ty.as_str() == "PaymentReconciliation" => in_tx!(state, |tx| rest::create(
                &mut tx,
                res,
                None,
                None,
                &ctx.policy
            )
            .await?)?,
            None => {
                rest::write_one(
                    &state.store,
                    ty,
                    None,
                    Some(res),
                    None,
                    Method::Post,
                    &ctx.policy,
                )
                .await?
            }
        };
        Ok(ctx.write_response(o))
    }
    .await;
    ctx.respond(result)
}

async fn update(
    State(state): State<AppState>,
    Path((ty, id)): Path<(String, String)>,
    headers: HeaderMap,
    ctx: Ctx,
    body: Body,
) -> Response {
    let result = async {
        let ty = parse_type(&ty)?;
        ctx.policy.check(ty.as_str(), Perm::Update)?;
        let id = parse_id(&id)?;
        let if_match = if_match(&headers)?;
        let value = body_json(&state, &headers, body).await?;
        let res = validate_resource(value, Expect::Update(ty, &id))?;
        let o = rest::write_one(
            &state.store,
            ty,
            Some(id),
            Some(res),
            if_match,
            Method::Put,
            &ctx.policy,
        )
        .await?;
        Ok(ctx.write_response(o))
    }
    .await;
    ctx.respond(result)
}

async fn conditional_update(
    State(state): State<AppState>,
    Path(ty): Path<String>,
    headers: HeaderMap,
    ctx: Ctx,
    body: Body,
) -> Response {
    let result = async {
        let ty = parse_type(&ty)?;
        ctx.policy.check(ty.as_str(), Perm::Update)?;
        ctx.policy.check(ty.as_str(), Perm::Search)?;
        let if_match = if_match(&headers)?;
        let value = body_json(&state, &headers, body).await?;
        let res = validate_resource(value, Expect::ConditionalUpdate(ty))?;
        let query = criteria_query(&ctx.raw_query);
        let o = in_tx!(state, |tx| rest::conditional_update(
            &mut tx,
            res,
            &query,
            if_match,
            &ctx.policy
        )
        .await?)?;
        Ok(ctx.write_response(o))
    }
    .await;
    ctx.respond(result)
}

/// The query string without the parameters that only shape the response.
fn criteria_query(raw: &str) -> String {
    let kept: Vec<(String, String)> = search::decode_query(raw)
        .into_iter()
        .filter(|(k, _)| k != "_format" && k != "_pretty")
        .collect();
    let mut s = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in &kept {
        s.append_pair(k, v);
    }
    s.finish()
}

async fn delete(
    State(state): State<AppState>,
    Path((ty, id)): Path<(String, String)>,
    headers: HeaderMap,
    ctx: Ctx,
) -> Response {
    let result = async {
        let ty = parse_type(&ty)?;
        ctx.policy.check(ty.as_str(), Perm::Delete)?;
        let id = parse_id(&id)?;
        let if_match = if_match(&headers)?;
        let o = rest::write_one(
            &state.store,
            ty,
            Some(id),
            None,
            if_match,
            Method::Delete,
            &ctx.policy,
        )
        .await?;
        Ok(ctx.write_response(o))
    }
    .await;
    ctx.respond(result)
}

async fn conditional_delete(
    State(state): State<AppState>,
    Path(ty): Path<String>,
    ctx: Ctx,
) -> Response {
    let result = async {
        let ty = parse_type(&ty)?;
        ctx.policy.check(ty.as_str(), Perm::Delete)?;
        ctx.policy.check(ty.as_str(), Perm::Search)?;
        let query = criteria_query(&ctx.raw_query);
        let o = in_tx!(state, |tx| rest::conditional_delete(
            &mut tx,
            ty,
            &query,
            &ctx.policy
        )
        .await?)?;
        Ok(ctx.write_response(o))
    }
    .await;
    ctx.respond(result)
}

async fn patch(
    State(state): State<AppState>,
    Path((ty, id)): Path<(String, String)>,
    headers: HeaderMap,
    ctx: Ctx,
    body: Body,
) -> Response {
    let result = async {
        let ty = parse_type(&ty)?;
        ctx.policy.check(ty.as_str(), Perm::Update)?;
        // A patch answers with (and can probe) the whole resource.
        ctx.policy.check(ty.as_str(), Perm::Read)?;
        let id = parse_id(&id)?;
        let if_match = if_match(&headers)?;
        let ct = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !ct.starts_with("application/json-patch+json") {
            return Err(ApiError::UnsupportedMediaType(
                "PATCH takes a JSON Patch document (Content-Type: application/json-patch+json)"
                    .into(),
            ));
        }
        let bytes = read_body(body, state.settings.body_limit).await?;
        let doc: Value = serde_json::from_slice(&bytes)
            .map_err(|_| ApiError::bad_request("structure", "the body is not valid JSON"))?;
        let o = in_tx!(state, |tx| rest::patch(
            &mut tx,
            ty,
            &id,
            doc,
            if_match,
            &ctx.policy
        )
        .await?)?;
        Ok(ctx.write_response(o))
    }
    .await;
    ctx.respond(result)
}

pub(super) async fn system_bundle(
    State(state): State<AppState>,
    headers: HeaderMap,
    ctx: Ctx,
    body: Body,
) -> Response {
    let result = async {
        let value = body_json(&state, &headers, body).await?;
        if value.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
            return Err(ApiError::BadRequest(vec![
                Issue::error(
                    "invalid",
                    "only a batch or transaction Bundle can be posted to the base",
                )
                .at("resourceType"),
            ]));
        }
        let out = bundle::process(
            &state.store,
            value,
            &ctx.base,
            ctx.prefer_return,
            &ctx.policy,
        )
        .await?;
        Ok(FhirResponse::new(StatusCode::OK, Payload::Value(out)))
    }
    .await;
    ctx.respond(result)
}

/// Refuses a search with unknown or malformed parameters under `Prefer: handling=strict`
/// (search.html#errors); otherwise they are ignored and reported in the Bundle.
fn check_strict(ctx: &Ctx, q: &search::SearchQuery) -> Result<(), ApiError> {
    if !ctx.strict || (q.unknown.is_empty() && q.invalid.is_empty()) {
        return Ok(());
    }
    let mut issues: Vec<Issue> = q
        .unknown
        .iter()
        .map(|n| {
            Issue::error(
                "not-supported",
                format!("search parameter '{n}' is not supported"),
            )
        })
        .collect();
    issues.extend(
        q.invalid
            .iter()
            .map(|(n, why)| Issue::error("invalid", format!("{n}: {why}"))),
    );
    Err(ApiError::BadRequest(issues))
}

/// A type-level search, or a system-level one when `ty` is `None` (over `_type`, or every type).
async fn run_search(
    state: &AppState,
    ctx: &Ctx,
    ty: Option<&str>,
    params: &[(String, String)],
) -> Result<FhirResponse, ApiError> {
    let ty = ty.map(parse_type).transpose()?;
    // A system search with `_type` takes the parameters of those types (search.html#all): they
    // are parsed by the first type's definitions and apply to each type by code.
    let first_listed = params
        .iter()
        .find(|(k, _)| k == "_type")
        .and_then(|(_, v)| v.split(',').next())
        .and_then(|t| ResourceType::parse(t.trim()));
    let q = search::parse(ty.or(first_listed), params, &ctx.base);
    check_strict(ctx, &q)?;
    let types: Vec<ResourceType> = match ty {
        Some(t) => vec![t],
        // Every type the caller may search; none at all is refused.
        None if q.types.is_empty() => {
            let types = ctx.policy.searchable_types();
            if types.is_empty() {
                ctx.policy.check_all(Perm::Search)?;
            }
            types
        }
        None => q.types.clone(),
    };
    for t in &types {
        ctx.policy.check(t.as_str(), Perm::Search)?;
    }
    ctx.policy.check_includes(&q)?;
    let result = search::engine::run_as(&mut state.store.reader(), &types, &q, &ctx.policy).await?;
    let path = ty.map(|t| t.as_str()).unwrap_or("");
    let bundle = searchset(&ctx.base, path, &q, result)?;
    Ok(FhirResponse::new(
        StatusCode::OK,
        Payload::Searchset(bundle),
    ))
}

async fn search_type(State(state): State<AppState>, Path(ty): Path<String>, ctx: Ctx) -> Response {
    let result = run_search(&state, &ctx, Some(&ty), &ctx.params).await;
    ctx.respond(result)
}

async fn search_system(State(state): State<AppState>, ctx: Ctx) -> Response {
    let result = run_search(&state, &ctx, None, &ctx.params).await;
    ctx.respond(result)
}

/// The parameters of a `POST …/_search`: the URL's and the form body's together.
async fn form_params(
    state: &AppState,
    ctx: &Ctx,
    headers: &HeaderMap,
    body: Body,
) -> Result<Vec<(String, String)>, ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ct.is_empty() && !ct.starts_with("application/x-www-form-urlencoded") {
        return Err(ApiError::UnsupportedMediaType(
            "_search takes application/x-www-form-urlencoded".into(),
        ));
    }
    let bytes = read_body(body, state.settings.body_limit).await?;
    let mut params = ctx.params.clone();
    params.extend(url::form_urlencoded::parse(&bytes).into_owned());
    no_nul(&params)?;
    Ok(params)
}

/// `POST [type]/_search` with form parameters (search.html#Introduction): same results as GET.
/// AuditEvent search on the audit trail (crate::audit::fhir); admins only.
async fn audit_run(
    state: &AppState,
    ctx: &Ctx,
    params: &[(String, String)],
) -> Result<FhirResponse, ApiError> {
    ctx.policy.check("AuditEvent", Perm::Search)?;
    let q = crate::audit::fhir::parse(params);
    let mut issues = q.invalid.clone();
    if ctx.strict {
        issues.extend(q.unknown.iter().map(|n| {
            Issue::error(
                "not-supported",
                format!("search parameter '{n}' is not supported on AuditEvent"),
            )
        }));
    }
    if !issues.is_empty() {
        return Err(ApiError::BadRequest(issues));
    }
    let bundle = crate::audit::fhir::search(&state.store, &q, &ctx.base).await?;
    Ok(FhirResponse::new(StatusCode::OK, Payload::Value(bundle)))
}

async fn audit_search(State(state): State<AppState>, ctx: Ctx) -> Response {
    let result = audit_run(&state, &ctx, &ctx.params).await;
    ctx.respond(result)
}

async fn audit_search_post(
    State(state): State<AppState>,
    headers: HeaderMap,
    ctx: Ctx,
    body: Body,
) -> Response {
    let result = async {
        let params = form_params(&state, &ctx, &headers, body).await?;
        audit_run(&state, &ctx, &params).await
    }
    .await;
    ctx.respond(result)
}

async fn audit_read(State(state): State<AppState>, Path(id): Path<String>, ctx: Ctx) -> Response {
    let result = async {
        ctx.policy.check("AuditEvent", Perm::Read)?;
        let v = crate::audit::fhir::read(&state.store, &id).await?;
        Ok(FhirResponse::new(StatusCode::OK, Payload::Value(v)))
    }
    .await;
    ctx.respond(result)
}

/// Every AuditEvent has one version.
async fn audit_vread(
    State(state): State<AppState>,
    Path((id, vid)): Path<(String, String)>,
    ctx: Ctx,
) -> Response {
    let result = async {
        ctx.policy.check("AuditEvent", Perm::Read)?;
        if vid != "1" {
            return Err(ApiError::NotFound(format!(
                "AuditEvent/{id} has no version {vid}"
            )));
        }
        let v = crate::audit::fhir::read(&state.store, &id).await?;
        Ok(FhirResponse::new(StatusCode::OK, Payload::Value(v)))
    }
    .await;
    ctx.respond(result)
}

/// Writes and history of the audit trail: it is append-only and written by the server.
async fn audit_written_by_server(ctx: Ctx) -> Response {
    ctx.respond(Err(ApiError::MethodNotAllowed(
        "AuditEvent is the server's audit trail: it is written by the server only, one \
         version per event"
            .into(),
    )))
}

async fn search_post(
    State(state): State<AppState>,
    Path(ty): Path<String>,
    headers: HeaderMap,
    ctx: Ctx,
    body: Body,
) -> Response {
    let result = async {
        let params = form_params(&state, &ctx, &headers, body).await?;
        run_search(&state, &ctx, Some(&ty), &params).await
    }
    .await;
    ctx.respond(result)
}

async fn search_system_post(
    State(state): State<AppState>,
    headers: HeaderMap,
    ctx: Ctx,
    body: Body,
) -> Response {
    let result = async {
        let params = form_params(&state, &ctx, &headers, body).await?;
        run_search(&state, &ctx, None, &params).await
    }
    .await;
    ctx.respond(result)
}

/// `[type]/$validate` (https://hl7.org/fhir/R4/resource-operation-validate.html): the resource
/// in the body (or the `resource` parameter of a Parameters body) is checked as a write would
/// check it, and against the profile given (`profile` parameter) or else this server's profiles
/// it claims (`fhir-profiles/`). The answer is an OperationOutcome listing what was found,
/// 200 whether or not the resource is valid; nothing is stored.
async fn validate_operation(
    State(state): State<AppState>,
    Path(ty): Path<String>,
    headers: HeaderMap,
    ctx: Ctx,
    body: Body,
) -> Response {
    let result = async {
        let ty = parse_type(&ty)?;
        ctx.policy.check(ty.as_str(), Perm::Read)?;
        let value = body_json(&state, &headers, body).await?;
        let mut profile = ctx
            .params
            .iter()
            .find(|(k, _)| k == "profile")
            .map(|(_, v)| v.clone());
        let resource = if value["resourceType"] == "Parameters" && ty.as_str() != "Parameters" {
            let params = value["parameter"].as_array().cloned().unwrap_or_default();
            if let Some(p) = params.iter().find(|p| p["name"] == "profile") {
                profile = p["valueUri"]
                    .as_str()
                    .or(p["valueCanonical"].as_str())
                    .map(str::to_owned);
            }
            params
                .into_iter()
                .find(|p| p["name"] == "resource")
                .map(|p| p["resource"].clone())
                .ok_or_else(|| {
                    ApiError::bad_request("required", "the Parameters hold no `resource`")
                })?
        } else {
            value
        };
        // The write path's checks, then the profiles.
        let mut issues = match validate_resource(resource.clone(), Expect::Create(ty)) {
            Ok(_) | Err(ApiError::Unprocessable(_)) => Vec::new(),
            Err(ApiError::BadRequest(issues)) => issues,
            Err(e) => return Err(e),
        };
        issues.extend(match profile {
            Some(url) => crate::fhir::profiles::check_against(&resource, &url),
            None => crate::fhir::profiles::check_write(&resource),
        });
        if issues.is_empty() {
            issues.push(Issue {
                severity: "information",
                code: "informational",
                diagnostics: "no issues found".into(),
                expression: None,
            });
        }
        Ok(FhirResponse::new(
            StatusCode::OK,
            Payload::Value(operation_outcome(&issues)),
        ))
    }
    .await;
    ctx.respond(result)
}

/// `Observation/$lastn` (https://hl7.org/fhir/R4/observation-operation-lastn.html): the newest
/// `max` (default 1) Observations per code among those matching the other parameters.
async fn lastn(State(state): State<AppState>, ctx: Ctx) -> Response {
    let result = async {
        let mut max = 1usize;
        let mut rest = Vec::new();
        for (k, v) in &ctx.params {
            if k == "max" {
                max = v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=1000).contains(n))
                    .ok_or_else(|| {
                        ApiError::bad_request("invalid", "max must be an integer from 1 to 1000")
                    })?;
            } else {
                rest.push((k.clone(), v.clone()));
            }
        }
        let ty = parse_type("Observation")?;
        ctx.policy.check(ty.as_str(), Perm::Search)?;
        let q = search::parse(Some(ty), &rest, &ctx.base);
        check_strict(&ctx, &q)?;
        let versions = search::engine::lastn(
            &mut state.store.reader(),
            &ctx.policy.narrow(&q, &[ty.as_str()]),
            max,
        )
        .await?;
        let result = search::engine::SearchResult {
            total: Some(versions.len() as i64),
            matches: versions,
            ..Default::default()
        };
        let mut q = q;
        q.used.insert(0, ("max".into(), max.to_string()));
        let bundle = searchset(&ctx.base, "Observation/$lastn", &q, result)?;
        Ok(FhirResponse::new(
            StatusCode::OK,
            Payload::Searchset(bundle),
        ))
    }
    .await;
    ctx.respond(result)
}

/// `Subscription/$status` (Subscriptions R5 Backport IG): the status of every Subscription the
/// caller may read, or of those named by `id` and with a `status` given (each repeatable).
async fn subscription_status(State(state): State<AppState>, ctx: Ctx) -> Response {
    let result = async {
        let ty = parse_type("Subscription")?;
        ctx.policy.check(ty.as_str(), Perm::Search)?;
        let mut ids = Vec::new();
        let mut statuses = Vec::new();
        // Pages as searches do: `_count`, and the positions of the next and previous links,
        // whose `_id` stands for the `id`s.
        let mut params = Vec::new();
        for (k, v) in &ctx.params {
            match k.as_str() {
                "id" | "_id" => ids.push(v.clone()),
                "status" => statuses.push(v.clone()),
                "_count" | "_cursor" | "_offset" => params.push((k.clone(), v.clone())),
                _ => {}
            }
        }
        if !ids.is_empty() {
            params.push(("_id".into(), ids.join(",")));
        }
        if !statuses.is_empty() {
            params.push(("status".into(), statuses.join(",")));
        }
        let q = search::parse(Some(ty), &params, &ctx.base);
        if let Some((n, why)) = q.invalid.first() {
            return Err(ApiError::bad_request("invalid", format!("{n}: {why}")));
        }
        let found =
            search::engine::run_as(&mut state.store.reader(), &[ty], &q, &ctx.policy).await?;
        let links = crate::fhir::bundle::page_links(&ctx.base, "Subscription/$status", &q, &found);
        let first_and_only = found.next.is_none() && q.cursor.is_none() && q.offset == 0;
        let total = found
            .total
            .or(first_and_only.then_some(found.matches.len() as i64));
        let mut bundle =
            crate::subscriptions::status_bundle(&state.store, &ctx.base, &found.matches).await?;
        bundle["link"] = serde_json::Value::Array(links);
        match total {
            Some(n) => bundle["total"] = n.into(),
            None => {
                if let Some(b) = bundle.as_object_mut() {
                    b.remove("total");
                }
            }
        }
        Ok(FhirResponse::new(StatusCode::OK, Payload::Value(bundle)))
    }
    .await;
    ctx.respond(result)
}

/// The current Subscription `id` when the caller may read it; 404 otherwise (existence does
/// not leak).
async fn readable_subscription(
    state: &AppState,
    ctx: &Ctx,
    id: &str,
) -> Result<crate::store::Version, ApiError> {
    let ty = parse_type("Subscription")?;
    ctx.policy.check(ty.as_str(), Perm::Read)?;
    let missing = || ApiError::NotFound(format!("Subscription/{id} is not known"));
    let rid = ResourceId::parse(id).ok_or_else(missing)?;
    match rest::current_for(&mut Lookup::Store(&state.store), &ctx.policy, ty, &rid).await? {
        Some(v) if !v.is_deleted() => Ok(v),
        _ => Err(missing()),
    }
}

/// `Subscription/[id]/$status`: that subscription's status (404 when the caller may not read it).
async fn subscription_status_of(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ctx: Ctx,
) -> Response {
    let result = async {
        let v = readable_subscription(&state, &ctx, &id).await?;
        let bundle = crate::subscriptions::status_bundle(&state.store, &ctx.base, &[v]).await?;
        Ok(FhirResponse::new(StatusCode::OK, Payload::Value(bundle)))
    }
    .await;
    ctx.respond(result)
}

/// `Subscription/[id]/$events` (Subscriptions R5 Backport IG): the subscription's kept events
/// from `eventsSinceNumber` to `eventsUntilNumber`, as a notification Bundle.
async fn subscription_events(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ctx: Ctx,
) -> Response {
    let result = async {
        let v = readable_subscription(&state, &ctx, &id).await?;
        let number = |name: &str| -> Result<Option<i64>, ApiError> {
            ctx.params
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| {
                    v.parse::<i64>().ok().filter(|n| *n >= 1).ok_or_else(|| {
                        ApiError::bad_request("invalid", format!("{name} must be an event number"))
                    })
                })
                .transpose()
        };
        let from = number("eventsSinceNumber")?.unwrap_or(1);
        let to = number("eventsUntilNumber")?.unwrap_or(i64::MAX);
        let content = match ctx.params.iter().find(|(k, _)| k == "content") {
            None => None,
            Some((_, c)) => Some(crate::subscriptions::model::Content::parse(c).ok_or_else(
                || ApiError::bad_request("invalid", "content is empty, id-only or full-resource"),
            )?),
        };
        let bundle = crate::subscriptions::events_bundle(
            &state.store,
            &ctx.base,
            &v,
            from,
            to,
            content,
            |r| ctx.policy.may_include(r),
        )
        .await?
        .ok_or_else(|| {
            ApiError::internal(anyhow::anyhow!("a stored Subscription cannot be read"))
        })?;
        Ok(FhirResponse::new(StatusCode::OK, Payload::Value(bundle)))
    }
    .await;
    ctx.respond(result)
}

/// `Invoice/[id]/$record-payment` (issue 7, `billing::payment`): records a payment of the
/// invoice (Parameters `amount`, `date`, `identifier`) as a PaymentReconciliation and answers
/// the Invoice after it: `balanced` once paid in full, its amount paid so far in the
/// `billing-paid` extension. Admins only (it updates an Invoice).
async fn record_payment(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    ctx: Ctx,
    body: Body,
) -> Response {
    use crate::billing::payment;
    let result = async {
        let value = body_json(&state, &headers, body).await?;
        let now = now_micros();
        let today = crate::store::format_instant(now)
            .get(..10)
            .unwrap_or_default()
            .to_owned();
        let p = payment::read_parameters(&value, &today).map_err(|problems| {
            ApiError::Unprocessable(problems.into_iter().map(|i| i.issue()).collect())
        })?;
        let rid = ResourceId::parse(&id)
            .ok_or_else(|| ApiError::NotFound(format!("Invoice/{id} is not known")))?;
        let created = crate::store::format_instant(now);
        let invoice = in_tx!(state, |tx| payment::record(
            &mut tx,
            &rid,
            &p,
            &ctx.policy,
            &created
        )
        .await?)?;
        Ok(FhirResponse::new(StatusCode::OK, Payload::Value(invoice)))
    }
    .await;
    ctx.respond(result)
}

/// `Patient/[id]/$everything` (https://hl7.org/fhir/R4/patient-operation-everything.html): the
/// patient and every current resource that references it (its compartment), with `_since`,
/// `_type` and `_count` paging.
async fn everything(
    State(state): State<AppState>,
    Path((ty, id)): Path<(String, String)>,
    ctx: Ctx,
) -> Response {
    let result = async {
        if ty != "Patient" {
            return Err(ApiError::NotFound(format!(
                "{ty}/$everything is not supported"
            )));
        }
        let pty = parse_type("Patient")?;
        ctx.policy.check(pty.as_str(), Perm::Read)?;
        let rid = ResourceId::parse(&id)
            .ok_or_else(|| ApiError::NotFound(format!("Patient/{id} is not known")))?;
        match rest::current_for(&mut Lookup::Store(&state.store), &ctx.policy, pty, &rid).await? {
            Some(v) if !v.is_deleted() => {}
            _ => return Err(ApiError::NotFound(format!("Patient/{id} is not known"))),
        }
        let mut params: Vec<(String, String)> = Vec::new();
        let mut types: Vec<ResourceType> = Vec::new();
        for (k, v) in &ctx.params {
            match k.as_str() {
                "_since" => params.push(("_lastUpdated".into(), format!("ge{v}"))),
                "_type" => {
                    for t in v.split(',') {
                        types.push(parse_type(t.trim())?);
                    }
                }
                "_count" | "_cursor" | "_offset" => params.push((k.clone(), v.clone())),
                _ => {}
            }
        }
        let mut q = search::parse(None, &params, &ctx.base);
        if let Some((n, why)) = q.invalid.first() {
            return Err(ApiError::bad_request("invalid", format!("{n}: {why}")));
        }
        q.clauses.push(crate::store::query::Clause::Compartment {
            ty: "Patient".into(),
            id: id.clone(),
        });
        if types.is_empty() {
            // Everything about the patient the caller may see (patient-operation-everything).
            types = ctx.policy.searchable_types();
        } else {
            for t in &types {
                ctx.policy.check(t.as_str(), Perm::Search)?;
            }
            let list: Vec<&str> = types.iter().map(|t| t.as_str()).collect();
            q.used.push(("_type".into(), list.join(",")));
        }
        // "…and any resource referenced from those" (patient-operation-everything): each
        // page's matches bring what they reference, as `_include=*` would, except the patient
        // (a match of its own) and, with `_type`, resources of other types.
        q.include.push(search::Include {
            source: "*".into(),
            param: None,
            target: None,
            iterate: false,
        });
        let mut result =
            search::engine::run_as(&mut state.store.reader(), &types, &q, &ctx.policy).await?;
        result.included.retain(|v| {
            !(v.ty == "Patient" && v.id == id.as_str()) && types.iter().any(|t| t.as_str() == v.ty)
        });
        let bundle = searchset(&ctx.base, &format!("Patient/{id}/$everything"), &q, result)?;
        Ok(FhirResponse::new(
            StatusCode::OK,
            Payload::Searchset(bundle),
        ))
    }
    .await;
    ctx.respond(result)
}

async fn history(
    state: &AppState,
    ctx: &Ctx,
    scope: HistoryScope<'_>,
    path: &str,
) -> Result<FhirResponse, ApiError> {
    let mut q = HistoryQuery {
        count: search::DEFAULT_COUNT,
        owners: ctx.policy.history_owners(&scope),
        ..Default::default()
    };
    let mut pin = None;
    for (k, v) in &ctx.params {
        let bad = |what: &str| ApiError::bad_request("invalid", format!("{k} must be {what}"));
        match k.as_str() {
            "_since" => {
                q.since = Some(parse_instant_range(v).ok_or_else(|| bad("an instant"))?.0 - 1)
            }
            "_at" => {
                let (start, end) =
                    parse_instant_range(v).ok_or_else(|| bad("a date or dateTime"))?;
                q.until = Some(end);
                q.at_start = Some(start);
            }
            "_count" => {
                q.count = v
                    .parse::<usize>()
                    .map_err(|_| bad("a non-negative integer"))?
                    .min(search::MAX_COUNT)
            }
            "_offset" => q.offset = v.parse().map_err(|_| bad("a non-negative integer"))?,
            "_pin" => pin = Some(v.parse::<i64>().map_err(|_| bad("an integer"))?),
            _ => {}
        }
    }
    // The pages of one history listing all end at the moment the first page was made, so new
    // versions do not shift later pages.
    let pin = pin.unwrap_or_else(now_micros);
    q.until = Some(q.until.map_or(pin, |u| u.min(pin)));
    let (versions, total) = state.store.history(scope, &q).await?;
    let link = |offset: usize| {
        let mut s = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in ctx
            .params
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "_offset" | "_pin" | "_count"))
        {
            s.append_pair(k, v);
        }
        s.append_pair("_count", &q.count.to_string());
        s.append_pair("_pin", &pin.to_string());
        if offset > 0 {
            s.append_pair("_offset", &offset.to_string());
        }
        format!("{}{path}?{}", ctx.base, s.finish())
    };
    let next = ((q.offset + versions.len()) < total as usize && !versions.is_empty())
        .then(|| link(q.offset + q.count));
    let bundle = history_bundle(&ctx.base, &link(q.offset), next, versions, total)?;
    Ok(FhirResponse::new(StatusCode::OK, Payload::Value(bundle)))
}

async fn history_system(State(state): State<AppState>, ctx: Ctx) -> Response {
    let result = match ctx
        .policy
        .check_all(Perm::Search)
        .and_then(|()| ctx.policy.check_history(None))
    {
        Ok(()) => history(&state, &ctx, HistoryScope::System, "/_history").await,
        Err(e) => Err(e),
    };
    ctx.respond(result)
}

async fn history_type(State(state): State<AppState>, Path(ty): Path<String>, ctx: Ctx) -> Response {
    let result = async {
        let ty = parse_type(&ty)?;
        ctx.policy.check(ty.as_str(), Perm::Search)?;
        ctx.policy.check_history(Some(ty.as_str()))?;
        history(
            &state,
            &ctx,
            HistoryScope::Type(ty),
            &format!("/{ty}/_history"),
        )
        .await
    }
    .await;
    ctx.respond(result)
}

async fn history_instance(
    State(state): State<AppState>,
    Path((ty, id)): Path<(String, String)>,
    ctx: Ctx,
) -> Response {
    let result = async {
        let ty = parse_type(&ty)?;
        ctx.policy.check(ty.as_str(), Perm::Read)?;
        let id = parse_id(&id)?;
        if rest::current_for(&mut Lookup::Store(&state.store), &ctx.policy, ty, &id)
            .await?
            .is_none()
        {
            return Err(ApiError::NotFound(format!("{ty}/{id} is not known")));
        }
        history(
            &state,
            &ctx,
            HistoryScope::Instance(ty, &id),
            &format!("/{ty}/{id}/_history"),
        )
        .await
    }
    .await;
    ctx.respond(result)
}
