//! The RESTful interactions (https://hl7.org/fhir/R4/http.html), independent of HTTP plumbing so
//! that single requests and Bundle entries run exactly the same code.

use axum::http::StatusCode;
use serde_json::Value;

use super::parse::{Expect, ValidResource, check_structure, validate_resource};
use super::types::{ResourceId, ResourceType};
use crate::auth::policy::Policy;
use crate::auth::tenancy;
use crate::http::error::{ApiError, Issue};
use crate::search;
use crate::store::{Method, Store, StoreError, StoreTx, Version, Write, Written};

/// Where an interaction reads what it checks: inside its transaction (Bundles see their own
/// writes), or the committed store.
pub enum Lookup<'a> {
    Tx(&'a mut StoreTx),
    Store(&'a Store),
}

impl Lookup<'_> {
    async fn read(
        &mut self,
        ty: ResourceType,
        id: &ResourceId,
    ) -> Result<Option<Version>, StoreError> {
        match self {
            Lookup::Tx(tx) => tx.read(ty, id).await,
            Lookup::Store(store) => store.read(ty, id).await,
        }
    }

    async fn vread(
        &mut self,
        ty: ResourceType,
        id: &ResourceId,
        vid: i64,
    ) -> Result<Option<Version>, StoreError> {
        match self {
            Lookup::Tx(tx) => tx.vread(ty, id, vid).await,
            Lookup::Store(store) => store.vread(ty, id, vid).await,
        }
    }
}

fn not_known(ty: ResourceType, id: &str) -> ApiError {
    ApiError::NotFound(format!("{ty}/{id} is not known"))
}

/// True when `policy` lets the caller see version `v`. A delete has no owner of its own: it
/// belongs to whoever owned the version it ended.
pub async fn sees_version(
    look: &mut Lookup<'_>,
    policy: &Policy,
    v: &Version,
) -> Result<bool, ApiError> {
    if policy.sees_version(v) {
        return Ok(true);
    }
    if !v.is_deleted() || v.version_id <= 1 {
        return Ok(false);
    }
    let (Some(ty), Some(id)) = (ResourceType::parse(&v.ty), ResourceId::parse(&v.id)) else {
        return Ok(false);
    };
    Ok(look
        .vread(ty, &id, v.version_id - 1)
        .await?
        .is_some_and(|prev| policy.sees_version(&prev)))
}

/// The current version of `ty/id` when there is one and the caller may see it. Another
/// tenant's resource is answered like a missing one (404), so that its existence does not
/// leak (issue 4, "Roles and tenancy").
pub async fn current_for(
    look: &mut Lookup<'_>,
    policy: &Policy,
    ty: ResourceType,
    id: &ResourceId,
) -> Result<Option<Version>, ApiError> {
    match look.read(ty, id).await? {
        Some(v) if !sees_version(look, policy, &v).await? => Err(not_known(ty, id.as_str())),
        other => Ok(other),
    }
}

/// The owner of the resource `reference` names, when the caller may see it.
async fn linked_owner(
    look: &mut Lookup<'_>,
    policy: &Policy,
    (ty, id): (String, String),
) -> Result<Option<String>, ApiError> {
    let (Some(t), Some(rid)) = (ResourceType::parse(&ty), ResourceId::parse(&id)) else {
        return Ok(None);
    };
    let Some(content) = look.read(t, &rid).await?.and_then(|v| v.content) else {
        return Ok(None);
    };
    if !policy.sees(&ty, &id, &content) {
        return Ok(None);
    }
    Ok(if ty == "Organization" {
        Some(id)
    } else {
        tenancy::owner_in_json(&content)
    })
}

/// A Subscription must be one the engine can match and deliver (422 naming the element
/// otherwise), and a new one is submitted as `requested` or `off`: the server decides when it
/// is `active` or in `error` (https://hl7.org/fhir/R4/subscription.html#2.46.7).
fn check_subscription(resource: &Value, base: &str, new: bool) -> Result<(), ApiError> {
    use crate::subscriptions::model::{self, Status};
    let issues: Vec<Issue> = match model::read(resource, base) {
        Ok(s) if new && matches!(s.status, Status::Active | Status::Error) => vec![
            Issue::error(
                "business-rule",
                "a new Subscription is submitted as requested (or off); the server activates it",
            )
            .at("Subscription.status"),
        ],
        Ok(_) => Vec::new(),
        Err(problems) => problems
            .into_iter()
            .map(crate::fhir::types::Invalid::issue)
            .collect(),
    };
    if issues.is_empty() {
        Ok(())
    } else {
        Err(ApiError::Unprocessable(issues))
    }
}

/// Checks a resource about to be written as `ty/id` (`id` `None`: a new one) against the
/// caller's tenancy and stamps its owner ([`Policy::admit`]).
async fn admit(
    look: &mut Lookup<'_>,
    policy: &Policy,
    ty: ResourceType,
    id: Option<&ResourceId>,
    resource: &mut Value,
) -> Result<(), ApiError> {
    let base = policy.base();
    if ty.as_str() == "PaymentReconciliation" {
        ledger_entry_unchanged(look, ty, id, resource).await?;
    }
    let subscription = ty.as_str() == "Subscription";
    let named = tenancy::named_org(ty.as_str(), resource, base);
    // Admins need the current version only to keep an owner nothing in the body gives, and
    // to tell a new Subscription (a create, also by PUT) from a changed one.
    let need_current = !policy.unrestricted()
        || subscription
        || (named.is_none()
            && tenancy::linked(ty.as_str(), resource, base).is_none()
            && tenancy::owner_of(resource).is_none());
    let current = match id {
        Some(id) if need_current => current_for(look, policy, ty, id)
            .await?
            .and_then(|v| v.content)
            .map(|c| serde_json::from_str::<Value>(&c))
            .transpose()
            .map_err(ApiError::internal)?,
        _ => None,
    };
    if subscription {
        check_subscription(resource, base, current.is_none())?;
    }
    let linked = match (&named, tenancy::linked(ty.as_str(), resource, base)) {
        (None, Some(target)) => linked_owner(look, policy, target).await?,
        _ => None,
    };
    policy.admit(ty.as_str(), resource, linked, current.as_ref())?;
    policy.check_write(
        ty.as_str(),
        id.map(ResourceId::as_str),
        resource,
        current.as_ref(),
    )
}

/// A PaymentReconciliation that pays invoices is written by a create only, which applies it
/// (`create`); a write at an id (PUT, PATCH, or `new` `None`: DELETE) of one that pays or paid
/// an invoice is refused (`billing::payment::unchangeable`).
async fn ledger_entry_unchanged(
    look: &mut Lookup<'_>,
    ty: ResourceType,
    id: Option<&ResourceId>,
    new: &Value,
) -> Result<(), ApiError> {
    use crate::billing::payment;
    let Some(id) = id else {
        return Ok(());
    };
    let current = look
        .read(ty, id)
        .await?
        .and_then(|v| v.content)
        .map(|c| serde_json::from_str::<Value>(&c))
        .transpose()
        .map_err(ApiError::internal)?;
    if payment::pays_invoices(new) || current.as_ref().is_some_and(payment::pays_invoices) {
        return Err(payment::unchangeable());
    }
    Ok(())
}

/// A delete by `policy` of `ty/id` may go ahead: false when the resource belongs to another
/// tenant, which is then answered as if it were missing; 403 when the caller sees it but the
/// delete scopes do not reach it.
async fn may_delete(
    look: &mut Lookup<'_>,
    policy: &Policy,
    ty: ResourceType,
    id: &ResourceId,
) -> Result<bool, ApiError> {
    if ty.as_str() == "PaymentReconciliation" {
        ledger_entry_unchanged(look, ty, Some(id), &Value::Null).await?;
    }
    if policy.unrestricted() {
        return Ok(true);
    }
    match current_for(look, policy, ty, id).await {
        // Seen, but outside the delete scopes: refused, not answered as missing.
        Ok(Some(v))
            if v.content
                .as_deref()
                .and_then(|c| serde_json::from_str::<Value>(c).ok())
                .is_some_and(|c| !policy.allows_delete(ty.as_str(), id.as_str(), &c)) =>
        {
            Err(ApiError::Forbidden(format!(
                "{ty}/{id} is outside what the access token's scopes allow to delete"
            )))
        }
        Ok(_) => Ok(true),
        Err(ApiError::NotFound(_)) => Ok(false),
        Err(e) => Err(e),
    }
}

/// What deleting a missing resource answers (http.html#delete).
fn nothing_deleted(ty: ResourceType) -> Outcome {
    Outcome {
        status: StatusCode::NO_CONTENT,
        ty,
        id: String::new(),
        version_id: 0,
        last_updated: 0,
        content: None,
        location: false,
    }
}

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
    policy: &Policy,
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
    // Only what the caller may see can match: another tenant's resource neither blocks a
    // conditional create nor is updated or deleted by one.
    Ok(search::engine::run_as(&mut tx.reader(), &[ty], &q, policy)
        .await?
        .matches)
}

/// create, with `If-None-Exist` (http.html#ccreate).
pub async fn create(
    tx: &mut StoreTx,
    mut res: ValidResource,
    assigned_id: Option<&ResourceId>,
    if_none_exist: Option<&str>,
    policy: &Policy,
) -> Result<Outcome, ApiError> {
    if let Some(query) = if_none_exist {
        let found = conditional_matches(tx, res.ty, query, policy).await?;
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
    admit(&mut Lookup::Tx(tx), policy, res.ty, None, &mut res.value).await?;
    let w = tx
        .write(
            res.ty,
            assigned_id,
            Write::Create {
                resource: &mut res.value,
            },
        )
        .await?;
    if res.ty.as_str() == "PaymentReconciliation" {
        // A payment pays its invoices in the transaction that records it (billing::payment).
        crate::billing::payment::apply_recorded(tx, &res.value, policy).await?;
    }
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
    policy: &Policy,
) -> Result<Outcome, ApiError> {
    let mut look = Lookup::Store(store);
    let mut value = resource.map(|r| r.value);
    match (value.as_mut(), &id) {
        (Some(v), _) => admit(&mut look, policy, ty, id.as_ref(), v).await?,
        (None, Some(i)) if !may_delete(&mut look, policy, ty, i).await? => {
            return Ok(nothing_deleted(ty));
        }
        _ => {}
    }
    // The check and the write are two statements: an owner change committed between them is
    // not seen. Owners change only by an update of the resource itself, which `If-Match`
    // serialises for clients that need it.
    let w = store.write_one(ty, id, value, if_match, method).await?;
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
    policy: &Policy,
) -> Result<Outcome, ApiError> {
    admit(
        &mut Lookup::Tx(tx),
        policy,
        res.ty,
        Some(id),
        &mut res.value,
    )
    .await?;
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
    policy: &Policy,
) -> Result<Outcome, ApiError> {
    let found = conditional_matches(tx, res.ty, query, policy).await?;
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
                update(tx, res, &id, if_match, policy).await
            }
            None => {
                let mut res = res;
                admit(&mut Lookup::Tx(tx), policy, res.ty, None, &mut res.value).await?;
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
            update(tx, res, &id, if_match, policy).await
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
    policy: &Policy,
) -> Result<Outcome, ApiError> {
    if !may_delete(&mut Lookup::Tx(tx), policy, ty, id).await? {
        return Ok(nothing_deleted(ty));
    }
    let w = tx.write(ty, Some(id), Write::Delete { if_match }).await?;
    Ok(Outcome::from_written(w, StatusCode::NO_CONTENT))
}

/// Conditional delete `DELETE [type]?criteria` (http.html#3.1.0.7.1): one match at most.
pub async fn conditional_delete(
    tx: &mut StoreTx,
    ty: ResourceType,
    query: &str,
    policy: &Policy,
) -> Result<Outcome, ApiError> {
    let found = conditional_matches(tx, ty, query, policy).await?;
    match found.as_slice() {
        [] => Ok(nothing_deleted(ty)),
        [one] => {
            let id = ResourceId::parse(&one.id)
                .ok_or_else(|| ApiError::internal(anyhow::anyhow!("stored id invalid")))?;
            delete(tx, ty, &id, None, policy).await
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
    policy: &Policy,
) -> Result<Outcome, ApiError> {
    let patch: json_patch::Patch = serde_json::from_value(patch_doc).map_err(|e| {
        ApiError::bad_request("structure", format!("not a JSON Patch document: {e}"))
    })?;
    // Lock first: the patch applies to the version this transaction will replace.
    let locked = tx.lock_resource(ty, id).await?;
    let current = tx.read(ty, id).await?;
    if let Some(v) = &current
        && !sees_version(&mut Lookup::Tx(tx), policy, v).await?
    {
        return Err(not_known(ty, id.as_str()));
    }
    let current = match (locked, current) {
        (Some(_), Some(v)) if !v.is_deleted() => v,
        (_, Some(_)) => return Err(ApiError::Gone(format!("{ty}/{id} was deleted"))),
        _ => return Err(not_known(ty, id.as_str())),
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
    admit(&mut Lookup::Tx(tx), policy, ty, Some(id), &mut res.value).await?;
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
    policy: &Policy,
) -> Result<Outcome, ApiError> {
    read_as(&mut Lookup::Tx(tx), policy, ty, id).await
}

/// read (http.html#read) of what the caller may see: 200, 404 or 410.
pub async fn read_as(
    look: &mut Lookup<'_>,
    policy: &Policy,
    ty: ResourceType,
    id: &ResourceId,
) -> Result<Outcome, ApiError> {
    let v = current_for(look, policy, ty, id).await?;
    found(ty, id, v)
}

/// vread (http.html#vread) of what the caller may see.
pub async fn vread_as(
    look: &mut Lookup<'_>,
    policy: &Policy,
    ty: ResourceType,
    id: &ResourceId,
    vid: i64,
) -> Result<Outcome, ApiError> {
    let v = look.vread(ty, id, vid).await?;
    if let Some(v) = &v
        && !sees_version(look, policy, v).await?
    {
        return Err(ApiError::NotFound(format!(
            "{ty}/{id} has no version {vid}"
        )));
    }
    found_version(ty, id, vid, v)
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
