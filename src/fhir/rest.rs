//! The RESTful interactions (https://hl7.org/fhir/R4/http.html), independent of HTTP plumbing so
//! that single requests and Bundle entries run exactly the same code.

use axum::http::StatusCode;
use serde_json::Value;

use super::parse::{Expect, ValidResource, check_structure, validate_resource};
use super::types::{ResourceId, ResourceType};
use crate::http::error::{ApiError, Issue};
use crate::search;
use crate::store::{Method, Store, StoreTx, Version, Write, Written};

/// The result of one interaction, before it becomes an HTTP response or a Bundle entry.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub status: StatusCode,
    pub ty: ResourceType,
    pub id: String,
    pub version_id: i64,
    pub last_updated: i64,
    /// The resource as stored, when there is one to return.
    pub content: Option<String>,
    /// Whether `Location` is sent (create, and update-as-create).
    pub location: bool,
}

impl Outcome {
    fn from_written(w: Written, status: StatusCode) -> Outcome {
        Outcome {
            status,
            location: w.created,
            ty: w.ty,
            id: w.id,
            version_id: w.version_id,
            last_updated: w.last_updated,
            content: w.content,
        }
    }

    fn from_version(ty: ResourceType, v: Version, status: StatusCode) -> Outcome {
        Outcome {
            status,
            ty,
            id: v.id,
            version_id: v.version_id,
            last_updated: v.last_updated,
            content: v.content,
            location: false,
        }
    }

    /// `W/"n"` (http.html#versioning).
    pub fn etag(&self) -> String {
        format!("W/\"{}\"", self.version_id)
    }
}

/// Parses `If-Match: W/"3"` (or `"3"`, or `3`) into a version number.
pub fn parse_if_match(v: &str) -> Result<i64, ApiError> {
    let t = v.trim();
    let t = t.strip_prefix("W/").unwrap_or(t).trim_matches('"');
    t.parse::<i64>().ok().filter(|n| *n > 0).ok_or_else(|| {
        ApiError::bad_request("invalid", "If-Match must name a version, e.g. W/\"3\"")
    })
}

/// Parses conditional criteria (the query of `If-None-Exist`, a conditional URL). Unlike a plain
/// search, unknown or malformed parameters are an error: ignoring them would widen the match.
fn conditional_criteria(ty: ResourceType, query: &str) -> Result<search::SearchQuery, ApiError> {
    let params = search::decode_query(query);
    // References in criteria are matched relative to this server; an absolute URL naming it
    // would need the request's base, which conditional URLs rarely use.
    let q = search::parse(Some(ty), &params, "");
    if let Some(name) = q.unknown.first() {
        return Err(ApiError::BadRequest(vec![Issue::error(
            "not-supported",
            format!("search parameter '{name}' is not supported in conditional interactions"),
        )]));
    }
    if let Some((name, why)) = q.invalid.first() {
        return Err(ApiError::bad_request("invalid", format!("{name}: {why}")));
    }
    if !q.has_criteria() {
        return Err(ApiError::PreconditionFailed(
            "conditional interaction without criteria; give at least one search parameter".into(),
        ));
    }
    Ok(q)
}

/// Finds the resources matching conditional criteria, at most two (enough to tell 0, 1, many).
/// The advisory lock makes concurrent conditional writes on the same criteria take turns.
pub async fn conditional_matches(
    tx: &mut StoreTx,
    ty: ResourceType,
    query: &str,
) -> Result<Vec<Version>, ApiError> {
    let mut q = conditional_criteria(ty, query)?;
    let mut key_params = search::decode_query(query);
    key_params.sort();
    tx.lock_key(&format!("{ty}?{key_params:?}")).await?;
    q.count = Some(2);
    q.total = Some(search::Total::None);
    q.include.clear();
    q.revinclude.clear();
    q.cursor = None;
    q.offset = 0;
    Ok(search::engine::run(&mut tx.reader(), &[ty], &q)
        .await?
        .matches)
}

/// create, with `If-None-Exist` (http.html#ccreate).
pub async fn create(
    tx: &mut StoreTx,
    mut res: ValidResource,
    assigned_id: Option<&ResourceId>,
    if_none_exist: Option<&str>,
) -> Result<Outcome, ApiError> {
    if let Some(query) = if_none_exist {
        let found = conditional_matches(tx, res.ty, query).await?;
        match found.len() {
            0 => {}
            1 => {
                let v = found
                    .into_iter()
                    .next()
                    .ok_or_else(|| ApiError::internal(anyhow::anyhow!("match vanished")))?;
                return Ok(Outcome::from_version(res.ty, v, StatusCode::OK));
            }
            _ => {
                return Err(ApiError::PreconditionFailed(
                    "If-None-Exist criteria match more than one resource".into(),
                ));
            }
        }
    }
    let w = tx
        .write(
            res.ty,
            assigned_id,
            Write::Create {
                resource: &mut res.value,
            },
        )
        .await?;
    Ok(Outcome::from_written(w, StatusCode::CREATED))
}

/// A plain create, update or delete on its own (not in a Bundle, no conditions): the store's
/// shortest write path.
pub async fn write_one(
    store: &Store,
    ty: ResourceType,
    id: Option<ResourceId>,
    resource: Option<ValidResource>,
    if_match: Option<i64>,
    method: Method,
) -> Result<Outcome, ApiError> {
    let w = store
        .write_one(ty, id, resource.map(|r| r.value), if_match, method)
        .await?;
    let status = match method {
        Method::Delete => StatusCode::NO_CONTENT,
        _ if w.created => StatusCode::CREATED,
        _ => StatusCode::OK,
    };
    Ok(Outcome::from_written(w, status))
}

/// update and update-as-create (http.html#update), version-aware with `If-Match`.
pub async fn update(
    tx: &mut StoreTx,
    mut res: ValidResource,
    id: &ResourceId,
    if_match: Option<i64>,
) -> Result<Outcome, ApiError> {
    let w = tx
        .write(
            res.ty,
            Some(id),
            Write::Update {
                resource: &mut res.value,
                if_match,
                method: Method::Put,
            },
        )
        .await?;
    let status = if w.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(Outcome::from_written(w, status))
}

/// Conditional update `PUT [type]?criteria` (http.html#cond-update).
pub async fn conditional_update(
    tx: &mut StoreTx,
    res: ValidResource,
    query: &str,
    if_match: Option<i64>,
) -> Result<Outcome, ApiError> {
    let found = conditional_matches(tx, res.ty, query).await?;
    let body_id = res
        .value
        .get("id")
        .and_then(Value::as_str)
        .map(str::to_owned);
    match found.as_slice() {
        [] => match body_id {
            Some(id) => {
                let id = ResourceId::parse(&id).ok_or_else(|| {
                    ApiError::BadRequest(vec![
                        Issue::error("value", "invalid id").at(format!("{}.id", res.ty)),
                    ])
                })?;
                update(tx, res, &id, if_match).await
            }
            None => {
                let mut res = res;
                let w = tx
                    .write(
                        res.ty,
                        None,
                        Write::Update {
                            resource: &mut res.value,
                            if_match,
                            method: Method::Put,
                        },
                    )
                    .await?;
                Ok(Outcome::from_written(w, StatusCode::CREATED))
            }
        },
        [one] => {
            if body_id.as_deref().is_some_and(|b| b != one.id) {
                return Err(ApiError::BadRequest(vec![
                    Issue::error(
                        "invalid",
                        "the id in the body differs from the resource the criteria match",
                    )
                    .at(format!("{}.id", res.ty)),
                ]));
            }
            let id = ResourceId::parse(&one.id)
                .ok_or_else(|| ApiError::internal(anyhow::anyhow!("stored id invalid")))?;
            update(tx, res, &id, if_match).await
        }
        _ => Err(ApiError::PreconditionFailed(
            "the criteria match more than one resource".into(),
        )),
    }
}

/// delete (http.html#delete). Deleting a missing or deleted resource succeeds and changes nothing.
pub async fn delete(
    tx: &mut StoreTx,
    ty: ResourceType,
    id: &ResourceId,
    if_match: Option<i64>,
) -> Result<Outcome, ApiError> {
    let w = tx.write(ty, Some(id), Write::Delete { if_match }).await?;
    Ok(Outcome::from_written(w, StatusCode::NO_CONTENT))
}

/// Conditional delete `DELETE [type]?criteria` (http.html#3.1.0.7.1): one match at most.
pub async fn conditional_delete(
    tx: &mut StoreTx,
    ty: ResourceType,
    query: &str,
) -> Result<Outcome, ApiError> {
    let found = conditional_matches(tx, ty, query).await?;
    match found.as_slice() {
        [] => Ok(Outcome {
            status: StatusCode::NO_CONTENT,
            ty,
            id: String::new(),
            version_id: 0,
            last_updated: 0,
            content: None,
            location: false,
        }),
        [one] => {
            let id = ResourceId::parse(&one.id)
                .ok_or_else(|| ApiError::internal(anyhow::anyhow!("stored id invalid")))?;
            delete(tx, ty, &id, None).await
        }
        _ => Err(ApiError::PreconditionFailed(
            "the criteria match more than one resource".into(),
        )),
    }
}

/// patch with a JSON Patch document (http.html#patch, RFC 6902).
pub async fn patch(
    tx: &mut StoreTx,
    ty: ResourceType,
    id: &ResourceId,
    patch_doc: Value,
    if_match: Option<i64>,
) -> Result<Outcome, ApiError> {
    let patch: json_patch::Patch = serde_json::from_value(patch_doc).map_err(|e| {
        ApiError::bad_request("structure", format!("not a JSON Patch document: {e}"))
    })?;
    // Lock first: the patch applies to the version this transaction will replace.
    let locked = tx.lock_resource(ty, id).await?;
    let current = tx.read(ty, id).await?;
    let current = match (locked, current) {
        (Some(_), Some(v)) if !v.is_deleted() => v,
        (_, Some(_)) => return Err(ApiError::Gone(format!("{ty}/{id} was deleted"))),
        _ => return Err(ApiError::NotFound(format!("{ty}/{id} is not known"))),
    };
    if let Some(expected) = if_match
        && expected != current.version_id
    {
        return Err(ApiError::PreconditionFailed(format!(
            "version {expected} is not the current version ({})",
            current.version_id
        )));
    }
    let mut doc: Value = serde_json::from_str(current.content.as_deref().unwrap_or("{}"))
        .map_err(ApiError::internal)?;
    json_patch::patch(&mut doc, &patch).map_err(|e| {
        ApiError::Unprocessable(vec![Issue::error(
            "processing",
            format!("the patch cannot be applied: {e}"),
        )])
    })?;
    // meta.versionId and lastUpdated are the server's; a patch cannot set them.
    let mut res = validate_resource(doc, Expect::Update(ty, id)).map_err(|e| match e {
        ApiError::BadRequest(issues) => ApiError::Unprocessable(issues),
        other => other,
    })?;
    let w = tx
        .write(
            ty,
            Some(id),
            Write::Update {
                resource: &mut res.value,
                if_match: Some(current.version_id),
                method: Method::Patch,
            },
        )
        .await?;
    Ok(Outcome::from_written(w, StatusCode::OK))
}

/// read inside a transaction (Bundle GET entries see the Bundle's own writes).
pub async fn read_in(
    tx: &mut StoreTx,
    ty: ResourceType,
    id: &ResourceId,
) -> Result<Outcome, ApiError> {
    let v = tx.read(ty, id).await?;
    found(ty, id, v)
}

/// Maps a looked-up current version to 200, 404 or 410.
pub fn found(ty: ResourceType, id: &ResourceId, v: Option<Version>) -> Result<Outcome, ApiError> {
    match v {
        None => Err(ApiError::NotFound(format!("{ty}/{id} is not known"))),
        Some(v) if v.is_deleted() => Err(ApiError::Gone(format!("{ty}/{id} was deleted"))),
        Some(v) => Ok(Outcome::from_version(ty, v, StatusCode::OK)),
    }
}

/// Maps a looked-up version to 200, 404 (no such version) or 410 (the version is a delete).
pub fn found_version(
    ty: ResourceType,
    id: &ResourceId,
    vid: i64,
    v: Option<Version>,
) -> Result<Outcome, ApiError> {
    match v {
        None => Err(ApiError::NotFound(format!(
            "{ty}/{id} has no version {vid}"
        ))),
        Some(v) if v.is_deleted() => Err(ApiError::Gone(format!(
            "version {vid} of {ty}/{id} is a delete"
        ))),
        Some(v) => Ok(Outcome::from_version(ty, v, StatusCode::OK)),
    }
}

/// Re-validates a resource whose references a transaction rewrote.
pub fn recheck(res: &ValidResource) -> Result<(), ApiError> {
    check_structure(&res.value, res.ty)
}
