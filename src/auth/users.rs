//! People who sign in on the login page ([`super::authorize`]), managed by admins, and within
//! their tenancy by clinics (their staff and patients) and distributors (their staff and their
//! customers' clinic accounts); see [`super::policy::Policy::may_manage_user`]:
//!
//! - `POST /auth/users` `{"username", "password", "role", "organization"?, "fhirUser"?}`: 201;
//! - `GET /auth/users`: the users the caller manages, never their password hashes;
//! - `DELETE /auth/users/{username}`: 204, or 404 (also for a user the caller does not manage,
//!   so that other tenants' usernames do not leak).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::policy::Policy;
use super::{Principal, Role, secret};
use crate::fhir::types::ResourceId;
use crate::http::AppState;
use crate::http::error::ApiError;
use crate::store::auth::UserRecord;

/// Shortest password accepted (NIST SP 800-63B section 5.1.1.2: at least 8).
const MIN_PASSWORD: usize = 10;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NewUser {
    pub username: String,
    pub password: String,
    pub role: Role,
    #[serde(default)]
    pub organization: Option<String>,
    /// `Patient/<id>` for a patient (their patient in context), `Practitioner/<id>` etc.
    #[serde(default)]
    pub fhir_user: Option<String>,
}

/// A user as shown.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserView {
    pub username: String,
    pub role: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub organization: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fhir_user: Option<String>,
    pub locked: bool,
}

impl UserView {
    fn of(u: UserRecord, now: i64) -> UserView {
        UserView {
            locked: u.locked_until.is_some_and(|t| t > now),
            username: u.username,
            role: u.role,
            organization: u.organization,
            fhir_user: u.fhir_user,
        }
    }
}

/// The patient id of a `fhirUser` of the form `Patient/<id>`.
pub fn patient_of(fhir_user: Option<&str>) -> Option<&str> {
    fhir_user?
        .strip_prefix("Patient/")
        .filter(|id| ResourceId::parse(id).is_some())
}

/// Checks a new user; the record to store.
pub fn check(new: NewUser) -> Result<UserRecord, String> {
    let name_ok = !new.username.is_empty()
        && new.username.len() <= 128
        && !new
            .username
            .chars()
            .any(|c| c.is_whitespace() || c.is_control());
    if !name_ok {
        return Err("a username must be 1 to 128 characters, without spaces".into());
    }
    if new.password.chars().count() < MIN_PASSWORD {
        return Err(format!(
            "a password must be at least {MIN_PASSWORD} characters"
        ));
    }
    match (new.role, &new.organization) {
        (Role::Admin, Some(_)) => return Err("admins belong to no organization".into()),
        (Role::Admin, None) => {}
        (Role::Hub, _) => return Err("hubs are OAuth clients (/auth/clients), not people".into()),
        (_, None) => return Err("users of this role need their organization".into()),
        (_, Some(org)) if ResourceId::parse(org).is_none() => {
            return Err("organization must be the id of an Organization resource".into());
        }
        _ => {}
    }
    if let Some(f) = &new.fhir_user {
        let ok = f.split_once('/').is_some_and(|(ty, id)| {
            crate::fhir::types::ResourceType::parse(ty).is_some() && ResourceId::parse(id).is_some()
        });
        if !ok {
            return Err("fhirUser must be a relative reference such as Patient/123".into());
        }
    }
    if new.role == Role::Patient && patient_of(new.fhir_user.as_deref()).is_none() {
        return Err("a patient user needs fhirUser Patient/<id>: their own record".into());
    }
    let password_hash = secret::hash(&new.password).map_err(|e| e.to_string())?;
    Ok(UserRecord {
        username: new.username,
        password_hash,
        role: new.role.as_str().into(),
        organization: new.organization,
        fhir_user: new.fhir_user,
        failed_logins: 0,
        locked_until: None,
    })
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/auth/users", get(list).post(create))
        .route("/auth/users/{username}", delete(remove))
}

/// Whether `policy` manages the existing user `u`.
fn manages(policy: &Policy, u: &UserRecord) -> bool {
    Role::parse(&u.role).is_some_and(|r| policy.may_manage_user(r, u.organization.as_deref()))
}

fn now() -> i64 {
    crate::store::now_micros() / 1_000_000
}

/// The caller's policy for managing users, with a distributor's customers.
async fn manager(state: &AppState, headers: &HeaderMap, p: &Principal) -> Result<Policy, ApiError> {
    let base = super::routes::fhir_base(state, headers);
    let policy = Policy::for_request(p, &base, &state.store).await?;
    policy.check_manage_users()?;
    Ok(policy)
}

async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    Extension(p): Extension<Arc<Principal>>,
    body: Result<Json<NewUser>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let result = async {
        let policy = manager(&state, &headers, &p).await?;
        let Json(new) = body.map_err(|e| ApiError::bad_request("structure", e.body_text()))?;
        if !policy.may_manage_user(new.role, new.organization.as_deref()) {
            return Err(ApiError::Forbidden(format!(
                "a {} may not create {} users for that organization",
                p.role, new.role
            )));
        }
        // A clinic's patient user must be one of the clinic's patients.
        if !policy.all_tenants()
            && let Some(id) = patient_of(new.fhir_user.as_deref())
            && !super::authorize::reads_patient(&state.store, &policy, id).await
        {
            return Err(ApiError::bad_request(
                "invalid",
                "fhirUser must be a Patient of the user's organization",
            ));
        }
        let record = check(new).map_err(|m| ApiError::bad_request("invalid", m))?;
        if !state.store.insert_user(&record).await? {
            return Err(ApiError::Conflict(format!(
                "a user `{}` exists already",
                record.username
            )));
        }
        tracing::info!(role = %record.role, "user created");
        Ok((StatusCode::CREATED, Json(UserView::of(record, now()))).into_response())
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    Extension(p): Extension<Arc<Principal>>,
) -> Response {
    let result = async {
        let policy = manager(&state, &headers, &p).await?;
        let t = now();
        let users: Vec<UserView> = state
            .store
            .users()
            .await?
            .into_iter()
            .filter(|u| manages(&policy, u))
            .map(|u| UserView::of(u, t))
            .collect();
        Ok::<_, ApiError>(Json(json!({ "users": users })).into_response())
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

async fn remove(
    State(state): State<AppState>,
    headers: HeaderMap,
    Extension(p): Extension<Arc<Principal>>,
    Path(username): Path<String>,
) -> Response {
    let result = async {
        let policy = manager(&state, &headers, &p).await?;
        let managed = state
            .store
            .user(&username)
            .await?
            .is_some_and(|u| manages(&policy, &u));
        if managed && state.store.delete_user(&username).await? {
            Ok(StatusCode::NO_CONTENT.into_response())
        } else {
            Err(ApiError::NotFound("no such user".into()))
        }
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}
