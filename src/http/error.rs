//! One error type for the API; every 4xx/5xx body is an OperationOutcome (DESIGN.md rule 7).
//! 5xx bodies say nothing of the cause: the cause goes to the log with the request id, which the
//! body carries so that an operator can find it.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::store::StoreError;

/// One `OperationOutcome.issue` (https://hl7.org/fhir/R4/operationoutcome.html).
#[derive(Debug, Clone, PartialEq)]
pub struct Issue {
    pub severity: &'static str,
    /// https://hl7.org/fhir/R4/valueset-issue-type.html
    pub code: &'static str,
    pub diagnostics: String,
    pub expression: Option<String>,
}

impl Issue {
    pub fn error(code: &'static str, diagnostics: impl Into<String>) -> Issue {
        Issue {
            severity: "error",
            code,
            diagnostics: diagnostics.into(),
            expression: None,
        }
    }

    pub fn at(mut self, expression: impl Into<String>) -> Issue {
        self.expression = Some(expression.into());
        self
    }
}

/// Builds an OperationOutcome resource.
pub fn operation_outcome(issues: &[Issue]) -> Value {
    let issues: Vec<Value> = issues
        .iter()
        .map(|i| {
            let mut v =
                json!({ "severity": i.severity, "code": i.code, "diagnostics": i.diagnostics });
            if let Some(e) = &i.expression {
                v["expression"] = json!([e]);
            }
            v
        })
        .collect();
    json!({ "resourceType": "OperationOutcome", "issue": issues })
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed or the resource invalid (400).
    #[error("bad request")]
    BadRequest(Vec<Issue>),
    /// A business rule refused a valid resource (422).
    #[error("unprocessable")]
    Unprocessable(Vec<Issue>),
    #[error("not found")]
    NotFound(String),
    /// The resource was deleted (410).
    #[error("gone")]
    Gone(String),
    #[error("method not allowed")]
    MethodNotAllowed(String),
    #[error("not acceptable")]
    NotAcceptable(String),
    #[error("unsupported media type")]
    UnsupportedMediaType(String),
    #[error("payload too large")]
    PayloadTooLarge(usize),
    /// `If-Match` mismatch, or conditional criteria matching several resources (412).
    #[error("precondition failed")]
    PreconditionFailed(String),
    /// A concurrent write won (409).
    #[error("conflict")]
    Conflict(String),
    #[error("not supported")]
    NotSupported(String),
    /// No bearer token, or one that is not valid (401, with `WWW-Authenticate`,
    /// https://www.rfc-editor.org/rfc/rfc6750#section-3).
    #[error("unauthorized")]
    Unauthorized(String),
    /// A valid token whose scopes do not allow the request (403).
    #[error("forbidden")]
    Forbidden(String),
    /// Something this request needs is down for now, e.g. the OpenID provider whose keys
    /// would check its token (503).
    #[error("unavailable")]
    Unavailable(String),
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    pub fn bad_request(code: &'static str, diagnostics: impl Into<String>) -> ApiError {
        ApiError::BadRequest(vec![Issue::error(code, diagnostics)])
    }

    pub fn internal(e: impl Into<anyhow::Error>) -> ApiError {
        ApiError::Internal(e.into())
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Gone(_) => StatusCode::GONE,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::NotAcceptable(_) => StatusCode::NOT_ACCEPTABLE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::PreconditionFailed(_) => StatusCode::PRECONDITION_FAILED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::NotSupported(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The issues of the OperationOutcome this error is answered with.
    pub fn issues(&self) -> Vec<Issue> {
        let one = |code, msg: &str| vec![Issue::error(code, msg)];
        match self {
            ApiError::BadRequest(issues) | ApiError::Unprocessable(issues) => issues.clone(),
            ApiError::NotFound(m) | ApiError::Gone(m) => {
                vec![Issue {
                    severity: "error",
                    code: if matches!(self, ApiError::Gone(_)) {
                        "deleted"
                    } else {
                        "not-found"
                    },
                    diagnostics: m.clone(),
                    expression: None,
                }]
            }
            ApiError::MethodNotAllowed(m) | ApiError::NotSupported(m) => one("not-supported", m),
            ApiError::NotAcceptable(m) | ApiError::UnsupportedMediaType(m) => {
                one("not-supported", m)
            }
            ApiError::PayloadTooLarge(limit) => one(
                "too-costly",
                &format!("request body exceeds the limit of {limit} bytes"),
            ),
            ApiError::PreconditionFailed(m) | ApiError::Conflict(m) => one("conflict", m),
            ApiError::Unauthorized(m) => one("login", m),
            ApiError::Forbidden(m) => one("forbidden", m),
            ApiError::Unavailable(m) => one("transient", m),
            ApiError::Internal(_) => {
                let id = crate::http::request_id::current().unwrap_or_default();
                one(
                    "exception",
                    &format!("internal server error; request id {id}"),
                )
            }
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::VersionConflict { expected: 0, .. } => ApiError::Conflict(
                "the resource was created concurrently by another request; retry".into(),
            ),
            StoreError::VersionConflict { expected, current } => {
                ApiError::PreconditionFailed(match current {
                    Some(c) => format!("version {expected} is not the current version ({c})"),
                    None => {
                        format!("version {expected} was requested but the resource does not exist")
                    }
                })
            }
            StoreError::Terminology(why) => ApiError::bad_request("not-supported", why),
            other => ApiError::Internal(other.into()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(e) = &self {
            // The cause is logged, never returned; the span carries the request id.
            tracing::error!(error = format!("{e:#}"), "internal error");
        }
        let body = serde_json::to_vec(&operation_outcome(&self.issues())).unwrap_or_default();
        let mut resp = (self.status(), body).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/fhir+json; charset=utf-8"),
        );
        match &self {
            // The reason stays in the body; the challenge names only the error class.
            ApiError::Unauthorized(_) => {
                resp.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(
                        r#"Bearer realm="vitalbridge", error="invalid_token""#,
                    ),
                );
            }
            ApiError::Forbidden(_) => {
                resp.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(
                        r#"Bearer realm="vitalbridge", error="insufficient_scope""#,
                    ),
                );
            }
            _ => {}
        }
        resp
    }
}
