//! Batch and transaction Bundles (https://hl7.org/fhir/R4/http.html#transaction), and the
//! searchset and history Bundles the server answers with.

use std::collections::HashMap;

use axum::http::StatusCode;
use serde_json::{Map, Value, json};

use super::parse::{Expect, validate_resource};
use super::rest::{self, Outcome, parse_if_match};
use super::types::{ResourceId, ResourceType};
use crate::auth::policy::{Perm, Policy};
use crate::http::error::{ApiError, Issue, operation_outcome};
use crate::search;
use crate::store::{Store, StoreTx, Version, format_http_date, format_instant};

/// How much of each written resource to return (the `Prefer` header, http.html#ops).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Return {
    Minimal,
    #[default]
    Representation,
    OperationOutcome,
}

/// One request entry, parsed.
#[derive(Debug)]
struct Entry {
    index: usize,
    method: EntryMethod,
    full_url: Option<String>,
    resource: Option<Value>,
    if_match: Option<String>,
    if_none_exist: Option<String>,
}

#[derive(Debug, Clone)]
enum EntryMethod {
    Get(Target),
    Post(ResourceType),
    Put(Target),
    Patch(Target),
    Delete(Target),
}

/// What an entry's `request.url` names.
#[derive(Debug, Clone)]
enum Target {
    Instance(ResourceType, ResourceId),
    Version(ResourceType, ResourceId, i64),
    /// `[type]?query` (search, conditional update or delete).
    Query(ResourceType, String),
}

impl Target {
    fn ty(&self) -> ResourceType {
        match self {
            Target::Instance(t, _) | Target::Version(t, _, _) | Target::Query(t, _) => *t,
        }
    }
}

fn entry_error(index: usize, e: ApiError) -> ApiError {
    // Name the entry in every issue, so a client can find the offending one.
    let prefix = |issues: Vec<Issue>| {
        issues
            .into_iter()
            .map(|mut i| {
                i.expression = Some(match i.expression.take() {
                    Some(x) => format!(
                        "Bundle.entry[{index}].resource.{}",
                        x.split_once('.').map(|(_, r)| r).unwrap_or(&x)
                    ),
                    None => format!("Bundle.entry[{index}]"),
                });
                i
            })
            .collect()
    };
    match e {
        ApiError::BadRequest(issues) => ApiError::BadRequest(prefix(issues)),
        ApiError::Unprocessable(issues) => ApiError::Unprocessable(prefix(issues)),
        ApiError::NotFound(m) => ApiError::NotFound(format!("entry {index}: {m}")),
        ApiError::Gone(m) => ApiError::Gone(format!("entry {index}: {m}")),
        ApiError::PreconditionFailed(m) => {
            ApiError::PreconditionFailed(format!("entry {index}: {m}"))
        }
        ApiError::Conflict(m) => ApiError::Conflict(format!("entry {index}: {m}")),
        ApiError::NotSupported(m) => ApiError::NotSupported(format!("entry {index}: {m}")),
        ApiError::Forbidden(m) => ApiError::Forbidden(format!("entry {index}: {m}")),
        other => other,
    }
}

fn bad_entry(index: usize, msg: impl Into<String>) -> ApiError {
    ApiError::BadRequest(vec![
        Issue::error("invalid", msg).at(format!("Bundle.entry[{index}].request")),
    ])
}

fn parse_target(index: usize, url: &str, base: &str) -> Result<Target, ApiError> {
    let url = url
        .strip_prefix(base)
        .map(|u| u.trim_start_matches('/'))
        .unwrap_or(url);
    let (path, query) = match url.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (url, None),
    };
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let ty = |s: &str| {
        ResourceType::parse(s).ok_or_else(|| {
            bad_entry(
                index,
                format!("unknown resource type in request.url '{}'", short(s)),
            )
        })
    };
    let id =
        |s: &str| ResourceId::parse(s).ok_or_else(|| bad_entry(index, "invalid id in request.url"));
    match (parts.as_slice(), query) {
        ([t], q) => Ok(Target::Query(ty(t)?, q.unwrap_or("").to_owned())),
        ([t, i], None) => Ok(Target::Instance(ty(t)?, id(i)?)),
        ([t, i, "_history", v], None) => {
            let v = v
                .parse()
                .map_err(|_| bad_entry(index, "invalid version in request.url"))?;
            Ok(Target::Version(ty(t)?, id(i)?, v))
        }
        _ => Err(bad_entry(
            index,
            format!("request.url '{}' is not supported", short(url)),
        )),
    }
}

fn short(s: &str) -> String {
    s.chars().take(100).collect()
}

fn parse_entries(bundle: &Value, base: &str) -> Result<Vec<Entry>, ApiError> {
    let entries = match bundle.get("entry") {
        None => return Ok(Vec::new()),
        Some(Value::Array(e)) => e,
        Some(_) => {
            return Err(ApiError::bad_request(
                "structure",
                "Bundle.entry must be an array",
            ));
        }
    };
    entries
        .iter()
        .enumerate()
        .map(|(index, e)| {
            let req = e
                .get("request")
                .ok_or_else(|| bad_entry(index, "request is required in a batch or transaction"))?;
            let method = req.get("method").and_then(Value::as_str).unwrap_or("");
            let url = req
                .get("url")
                .and_then(Value::as_str)
                .ok_or_else(|| bad_entry(index, "request.url is required"))?;
            let target = || parse_target(index, url, base);
            let method = match method {
                "GET" | "HEAD" => EntryMethod::Get(target()?),
                "POST" => match target()? {
                    Target::Query(t, q) if q.is_empty() => EntryMethod::Post(t),
                    _ => {
                        return Err(bad_entry(
                            index,
                            "POST entries must name a resource type only",
                        ));
                    }
                },
                "PUT" => EntryMethod::Put(target()?),
                "PATCH" => EntryMethod::Patch(target()?),
                "DELETE" => EntryMethod::Delete(target()?),
                other => {
                    return Err(bad_entry(
                        index,
                        format!("request.method '{}' is not supported", short(other)),
                    ));
                }
            };
            let s = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
            Ok(Entry {
                index,
                method,
                full_url: s(e, "fullUrl"),
                resource: e.get("resource").cloned(),
                if_match: s(req, "ifMatch"),
                if_none_exist: s(req, "ifNoneExist"),
            })
        })
        .collect()
}

/// Processing order within a transaction (http.html#trules): DELETE, POST, PUT/PATCH, GET.
fn phase(m: &EntryMethod) -> u8 {
    match m {
        EntryMethod::Delete(_) => 0,
        EntryMethod::Post(_) => 1,
        EntryMethod::Put(_) | EntryMethod::Patch(_) => 2,
        EntryMethod::Get(_) => 3,
    }
}

/// Processes a `batch` or `transaction` Bundle and returns the response Bundle.
pub async fn process(
    store: &Store,
    bundle: Value,
    base: &str,
    ret: Return,
    policy: &Policy,
) -> Result<Value, ApiError> {
    let kind = bundle.get("type").and_then(Value::as_str).unwrap_or("");
    let entries = parse_entries(&bundle, base)?;
    match kind {
        "transaction" => {
            // All or nothing: an entry the token does not allow refuses the whole Bundle
            // before anything is written.
            for e in &entries {
                allowed(policy, e).map_err(|err| entry_error(e.index, err))?;
            }
            transaction(store, entries, base, ret, policy).await
        }
        "batch" => batch(store, entries, base, ret, policy).await,
        _ => Err(ApiError::BadRequest(vec![
            Issue::error(
                "invalid",
                "only batch and transaction Bundles can be posted to the base",
            )
            .at("Bundle.type"),
        ])),
    }
}

/// The scopes an entry's interaction needs (the same as the interaction's own endpoint).
fn allowed(policy: &Policy, e: &Entry) -> Result<(), ApiError> {
    let m = &e.method;
    // A conditional create answers with the existing match: it searches and reads.
    if let (EntryMethod::Post(ty), Some(_)) = (m, &e.if_none_exist) {
        policy.check(ty.as_str(), Perm::Search)?;
        policy.check(ty.as_str(), Perm::Read)?;
    }
    // A search entry that includes other resources reads them (as `run_search` requires).
    if let EntryMethod::Get(Target::Query(ty, q)) = m {
        policy.check_includes(&search::parse(Some(*ty), &search::decode_query(q), ""))?;
    }
    let (ty, perms): (ResourceType, &[Perm]) = match m {
        EntryMethod::Post(ty) => (*ty, &[Perm::Create]),
        EntryMethod::Put(Target::Query(ty, _)) => (*ty, &[Perm::Update, Perm::Search]),
        EntryMethod::Put(t) => (t.ty(), &[Perm::Update]),
        // A patch answers with (and can probe) the whole resource.
        EntryMethod::Patch(t) => (t.ty(), &[Perm::Update, Perm::Read]),
        EntryMethod::Delete(Target::Query(ty, _)) => (*ty, &[Perm::Delete, Perm::Search]),
        EntryMethod::Delete(t) => (t.ty(), &[Perm::Delete]),
        EntryMethod::Get(Target::Query(ty, _)) => (*ty, &[Perm::Search]),
        EntryMethod::Get(t) => (t.ty(), &[Perm::Read]),
    };
    perms.iter().try_for_each(|p| policy.check(ty.as_str(), *p))
}

async fn batch(
    store: &Store,
    entries: Vec<Entry>,
    base: &str,
    ret: Return,
    policy: &Policy,
) -> Result<Value, ApiError> {
    let mut out = Vec::with_capacity(entries.len());
    for entry in entries {
        // Each entry stands alone: its own transaction, its own success or failure.
        let index = entry.index;
        let result = async {
            allowed(policy, &entry)?;
            let mut tx = store.begin().await?;
            let r = run_entry_with_id(&mut tx, entry, base, None, policy).await?;
            tx.commit().await?;
            Ok::<_, ApiError>(r)
        }
        .await;
        out.push(match result {
            Ok(r) => response_entry(r, base, ret),
            Err(e) => error_entry(entry_error(index, e)),
        });
    }
    Ok(
        json!({ "resourceType": "Bundle", "id": ResourceId::generate().as_str(), "type": "batch-response", "entry": out }),
    )
}

async fn transaction(
    store: &Store,
    mut entries: Vec<Entry>,
    base: &str,
    ret: Return,
    policy: &Policy,
) -> Result<Value, ApiError> {
    // Validate every resource up front: nothing is written when any entry is malformed.
    for e in entries.iter_mut() {
        if let (EntryMethod::Post(_) | EntryMethod::Put(_), None) = (&e.method, &e.resource) {
            return Err(bad_entry(e.index, "POST and PUT entries need a resource"));
        }
    }
    let mut tx = store.begin().await?;
    let mut ids: HashMap<String, String> = HashMap::new();
    let mut assigned: HashMap<usize, ResourceId> = HashMap::new();

    // 1. Decide the identity of every entry that creates or updates, so references can be
    //    rewritten before anything is written (http.html#trules).
    for e in entries.iter() {
        let (ty, id) = match &e.method {
            EntryMethod::Post(ty) => {
                let existing = match &e.if_none_exist {
                    Some(q) => {
                        let found = rest::conditional_matches(&mut tx, *ty, q, policy)
                            .await
                            .map_err(|err| entry_error(e.index, err))?;
                        match found.as_slice() {
                            [] => None,
                            [one] => Some(one.id.clone()),
                            _ => {
                                return Err(entry_error(
                                    e.index,
                                    ApiError::PreconditionFailed(
                                        "ifNoneExist matches more than one resource".into(),
                                    ),
                                ));
                            }
                        }
                    }
                    None => None,
                };
                let id = match existing {
                    Some(id) => id,
                    None => {
                        let id = ResourceId::generate();
                        let s = id.as_str().to_owned();
                        assigned.insert(e.index, id);
                        s
                    }
                };
                (*ty, id)
            }
            EntryMethod::Put(Target::Instance(ty, id)) => (*ty, id.as_str().to_owned()),
            EntryMethod::Put(Target::Query(ty, q)) => {
                let found = rest::conditional_matches(&mut tx, *ty, q, policy)
                    .await
                    .map_err(|err| entry_error(e.index, err))?;
                match found.as_slice() {
                    [] => {
                        let id = e
                            .resource
                            .as_ref()
                            .and_then(|r| r.get("id"))
                            .and_then(Value::as_str)
                            .and_then(ResourceId::parse)
                            .unwrap_or_else(ResourceId::generate);
                        let s = id.as_str().to_owned();
                        assigned.insert(e.index, id);
                        (*ty, s)
                    }
                    [one] => {
                        let id = ResourceId::parse(&one.id).ok_or_else(|| {
                            ApiError::internal(anyhow::anyhow!("stored id invalid"))
                        })?;
                        let s = id.as_str().to_owned();
                        assigned.insert(e.index, id);
                        (*ty, s)
                    }
                    _ => {
                        return Err(entry_error(
                            e.index,
                            ApiError::PreconditionFailed(
                                "the criteria match more than one resource".into(),
                            ),
                        ));
                    }
                }
            }
            _ => continue,
        };
        if let Some(full_url) = &e.full_url {
            ids.insert(full_url.clone(), format!("{ty}/{id}"));
        }
    }

    // 2. Rewrite references to fullUrls, and resolve conditional references (`Patient?identifier=…`).
    for e in entries.iter_mut() {
        if let Some(resource) = e.resource.as_mut() {
            let mut conditional_refs = Vec::new();
            rewrite_references(resource, &ids, &mut conditional_refs);
            for reference in conditional_refs {
                let (ty, q) = reference.split_once('?').unwrap_or((&reference, ""));
                let ty = ResourceType::parse(ty).ok_or_else(|| {
                    bad_entry(e.index, "conditional reference to an unknown type")
                })?;
                let found = rest::conditional_matches(&mut tx, ty, q, policy)
                    .await
                    .map_err(|err| entry_error(e.index, err))?;
                let target = match found.as_slice() {
                    [one] => format!("{ty}/{}", one.id),
                    [] => {
                        return Err(entry_error(
                            e.index,
                            ApiError::PreconditionFailed(format!(
                                "conditional reference {ty}?… matches no resource"
                            )),
                        ));
                    }
                    _ => {
                        return Err(entry_error(
                            e.index,
                            ApiError::PreconditionFailed(format!(
                                "conditional reference {ty}?… matches more than one resource"
                            )),
                        ));
                    }
                };
                let map = HashMap::from([(reference.clone(), target)]);
                rewrite_references(resource, &map, &mut Vec::new());
            }
        }
    }

    // 3. Run the entries in the spec's order; any failure rolls the whole transaction back.
    let mut order: Vec<usize> = (0..entries.len()).collect();
    order.sort_by_key(|&i| (phase(&entries[i].method), i));
    let mut slots: Vec<Option<EntryResult>> = (0..entries.len()).map(|_| None).collect();
    let mut by_index: HashMap<usize, Entry> = entries.into_iter().map(|e| (e.index, e)).collect();
    for i in order {
        let Some(mut entry) = by_index.remove(&i) else {
            continue;
        };
        if let Some(id) = assigned.remove(&i) {
            entry.method = match entry.method {
                EntryMethod::Put(Target::Query(ty, _)) => {
                    EntryMethod::Put(Target::Instance(ty, id.clone()))
                }
                m => m,
            };
            let r = run_entry_with_id(&mut tx, entry, base, Some(id), policy)
                .await
                .map_err(|e| entry_error(i, e))?;
            slots[i] = Some(r);
        } else {
            let r = run_entry_with_id(&mut tx, entry, base, None, policy)
                .await
                .map_err(|e| entry_error(i, e))?;
            slots[i] = Some(r);
        }
    }
    tx.commit().await?;
    let out: Vec<Value> = slots
        .into_iter()
        .flatten()
        .map(|r| response_entry(r, base, ret))
        .collect();
    Ok(
        json!({ "resourceType": "Bundle", "id": ResourceId::generate().as_str(), "type": "transaction-response", "entry": out }),
    )
}

/// Replaces `Reference.reference` values found in `map`; collects conditional references.
fn rewrite_references(v: &mut Value, map: &HashMap<String, String>, conditional: &mut Vec<String>) {
    match v {
        Value::Object(obj) => {
            if let Some(Value::String(r)) = obj.get_mut("reference") {
                if let Some(new) = map.get(r.as_str()) {
                    *r = new.clone();
                } else if r.contains('?') && !r.starts_with("http") && !r.starts_with('#') {
                    conditional.push(r.clone());
                }
            }
            for (_, child) in obj.iter_mut() {
                rewrite_references(child, map, conditional);
            }
        }
        Value::Array(items) => items
            .iter_mut()
            .for_each(|i| rewrite_references(i, map, conditional)),
        _ => {}
    }
}

/// The result of one entry.
enum EntryResult {
    Written(Outcome),
    Bundle(Value),
}

async fn run_entry_with_id(
    tx: &mut StoreTx,
    entry: Entry,
    base: &str,
    id: Option<ResourceId>,
    policy: &Policy,
) -> Result<EntryResult, ApiError> {
    let if_match = entry.if_match.as_deref().map(parse_if_match).transpose()?;
    let resource = entry.resource;
    let need = |r: Option<Value>| {
        r.ok_or_else(|| ApiError::bad_request("required", "this entry needs a resource"))
    };
    Ok(match entry.method {
        EntryMethod::Post(ty) => {
            let res = validate_resource(need(resource)?, Expect::Create(ty))?;
            // In a transaction the id (and the ifNoneExist match) was settled beforehand.
            let if_none_exist = if id.is_none() {
                entry.if_none_exist.as_deref()
            } else {
                None
            };
            EntryResult::Written(rest::create(tx, res, id.as_ref(), if_none_exist, policy).await?)
        }
        EntryMethod::Put(Target::Instance(ty, id)) => {
            let mut body = need(resource)?;
            if body.get("id").is_none()
                && let Value::Object(m) = &mut body
            {
                // A conditional update settled to this id; the body may leave the id out.
                m.insert("id".into(), Value::String(id.as_str().to_owned()));
            }
            let res = validate_resource(body, Expect::Update(ty, &id))?;
            EntryResult::Written(rest::update(tx, res, &id, if_match, policy).await?)
        }
        EntryMethod::Put(Target::Query(ty, q)) => {
            let res = validate_resource(need(resource)?, Expect::ConditionalUpdate(ty))?;
            EntryResult::Written(rest::conditional_update(tx, res, &q, if_match, policy).await?)
        }
        EntryMethod::Patch(Target::Instance(ty, id)) => {
            // FHIR carries a JSON Patch in a Binary resource in Bundles (http.html#patch).
            let patch = binary_patch(need(resource)?)?;
            EntryResult::Written(rest::patch(tx, ty, &id, patch, if_match, policy).await?)
        }
        EntryMethod::Delete(Target::Instance(ty, id)) => {
            EntryResult::Written(rest::delete(tx, ty, &id, if_match, policy).await?)
        }
        EntryMethod::Delete(Target::Query(ty, q)) => {
            EntryResult::Written(rest::conditional_delete(tx, ty, &q, policy).await?)
        }
        EntryMethod::Get(Target::Instance(ty, id)) => {
            EntryResult::Written(rest::read_in(tx, ty, &id, policy).await?)
        }
        EntryMethod::Get(Target::Version(ty, id, vid)) => EntryResult::Written(
            rest::vread_as(&mut rest::Lookup::Tx(tx), policy, ty, &id, vid).await?,
        ),
        EntryMethod::Get(Target::Query(ty, q)) => {
            let params = search::decode_query(&q);
            let sq = search::parse(Some(ty), &params, base);
            let result = search::engine::run_as(&mut tx.reader(), &[ty], &sq, policy).await?;
            EntryResult::Bundle(searchset(base, ty.as_str(), &sq, result)?.into_value()?)
        }
        _ => {
            return Err(ApiError::NotSupported(
                "this method is not supported for that kind of URL".into(),
            ));
        }
    })
}

fn binary_patch(resource: Value) -> Result<Value, ApiError> {
    if resource.get("resourceType").and_then(Value::as_str) != Some("Binary") {
        return Err(ApiError::bad_request(
            "not-supported",
            "a PATCH entry carries a JSON Patch in a Binary resource",
        ));
    }
    let data = resource.get("data").and_then(Value::as_str).unwrap_or("");
    let bytes = base64_decode(data)
        .ok_or_else(|| ApiError::bad_request("value", "Binary.data is not base64"))?;
    serde_json::from_slice(&bytes)
        .map_err(|_| ApiError::bad_request("structure", "Binary.data is not a JSON Patch document"))
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut buf = 0u32;
    let mut bits = 0;
    for c in s.bytes().filter(|c| !c.is_ascii_whitespace()) {
        if c == b'=' {
            break;
        }
        let v = ALPHABET.iter().position(|&a| a == c)? as u32;
        buf = (buf << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buf >> bits) as u8);
            buf &= (1 << bits) - 1;
        }
    }
    Some(out)
}

fn status_line(status: StatusCode) -> String {
    format!(
        "{} {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    )
}

fn response_entry(r: EntryResult, base: &str, ret: Return) -> Value {
    match r {
        EntryResult::Bundle(b) => json!({ "resource": b, "response": { "status": "200 OK" } }),
        EntryResult::Written(o) => {
            let mut response = Map::new();
            response.insert("status".into(), Value::String(status_line(o.status)));
            if o.version_id > 0 {
                if o.status == StatusCode::CREATED || o.location {
                    response.insert(
                        "location".into(),
                        json!(format!("{}/{}/_history/{}", o.ty, o.id, o.version_id)),
                    );
                }
                response.insert("etag".into(), json!(o.etag()));
                response.insert("lastModified".into(), json!(format_instant(o.last_updated)));
            }
            let mut entry = Map::new();
            if !o.id.is_empty() && o.content.is_some() {
                entry.insert("fullUrl".into(), json!(format!("{base}/{}/{}", o.ty, o.id)));
            }
            match (ret, &o.content) {
                (Return::Representation, Some(c)) => {
                    if let Ok(v) = serde_json::from_str::<Value>(c) {
                        entry.insert("resource".into(), v);
                    }
                }
                (Return::OperationOutcome, _) => {
                    response.insert(
                        "outcome".into(),
                        operation_outcome(&[Issue {
                            severity: "information",
                            code: "informational",
                            diagnostics: status_line(o.status),
                            expression: None,
                        }]),
                    );
                }
                _ => {}
            }
            entry.insert("response".into(), Value::Object(response));
            Value::Object(entry)
        }
    }
}

fn error_entry(e: ApiError) -> Value {
    json!({ "response": { "status": status_line(e.status()), "outcome": operation_outcome(&e.issues()) } })
}

/// A searchset Bundle whose resources stay the JSON text they were stored as until the Bundle
/// is written: compact JSON splices them in as they are (parsing and re-serialising 50
/// Observations was most of the server's work on a search); other formats parse them.
#[derive(Debug)]
pub struct Searchset {
    /// The Bundle without `entry`.
    pub head: Value,
    pub entries: Vec<SearchEntry>,
}

#[derive(Debug)]
pub struct SearchEntry {
    pub full_url: Option<String>,
    pub resource: EntryResource,
    pub search: Value,
}

#[derive(Debug)]
pub enum EntryResource {
    /// As stored (compact JSON written by this server).
    Stored(String),
    Value(Value),
}

impl Searchset {
    /// The whole Bundle as a JSON value.
    pub fn into_value(self) -> Result<Value, ApiError> {
        let mut bundle = self.head;
        // No empty arrays in FHIR (json.html): a search without results has no `entry`.
        if !self.entries.is_empty() {
            let mut entries = Vec::with_capacity(self.entries.len());
            for e in self.entries {
                let mut entry = Map::new();
                if let Some(u) = e.full_url {
                    entry.insert("fullUrl".into(), Value::String(u));
                }
                let resource = match e.resource {
                    EntryResource::Stored(s) => {
                        serde_json::from_str(&s).map_err(ApiError::internal)?
                    }
                    EntryResource::Value(v) => v,
                };
                entry.insert("resource".into(), resource);
                entry.insert("search".into(), e.search);
                entries.push(Value::Object(entry));
            }
            bundle["entry"] = Value::Array(entries);
        }
        Ok(bundle)
    }

    /// Compact JSON, with stored resources copied in unparsed.
    pub fn to_json(&self) -> Result<Vec<u8>, ApiError> {
        let head = serde_json::to_vec(&self.head).map_err(ApiError::internal)?;
        let Some((b'}', open)) = head.split_last() else {
            return Err(ApiError::internal(anyhow::anyhow!(
                "a Bundle head that is not an object"
            )));
        };
        let size: usize = self
            .entries
            .iter()
            .map(|e| match &e.resource {
                EntryResource::Stored(s) => s.len() + 128,
                EntryResource::Value(_) => 1024,
            })
            .sum();
        let mut out = Vec::with_capacity(head.len() + size + 16);
        out.extend_from_slice(open);
        if !self.entries.is_empty() {
            out.extend_from_slice(br#","entry":["#);
            for (i, e) in self.entries.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.push(b'{');
                if let Some(u) = &e.full_url {
                    out.extend_from_slice(br#""fullUrl":"#);
                    serde_json::to_writer(&mut out, u).map_err(ApiError::internal)?;
                    out.push(b',');
                }
                out.extend_from_slice(br#""resource":"#);
                match &e.resource {
                    EntryResource::Stored(s) => out.extend_from_slice(s.as_bytes()),
                    EntryResource::Value(v) => {
                        serde_json::to_writer(&mut out, v).map_err(ApiError::internal)?
                    }
                }
                out.extend_from_slice(br#","search":"#);
                serde_json::to_writer(&mut out, &e.search).map_err(ApiError::internal)?;
                out.push(b'}');
            }
            out.push(b']');
        }
        out.push(b'}');
        Ok(out)
    }
}

/// The self/first/previous/next links of a page of `q`'s results at `{base}/{path}`
/// (search.html#paging).
pub fn page_links(
    base: &str,
    path: &str,
    q: &search::SearchQuery,
    result: &search::engine::SearchResult,
) -> Vec<Value> {
    use search::engine::PageRef;
    // Links carry the parameters that were used; unknown and malformed ones were ignored
    // (search.html#errors). Paging positions are added per link.
    let link = |page: Option<&PageRef>| {
        let mut s = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in &q.used {
            s.append_pair(k, v);
        }
        match page {
            Some(PageRef::Cursor(c)) => {
                s.append_pair("_cursor", &search::format_cursor(c));
            }
            Some(PageRef::Offset(n)) if *n > 0 => {
                s.append_pair("_offset", &n.to_string());
            }
            _ => {}
        }
        let query = s.finish();
        let sep = if query.is_empty() { "" } else { "?" };
        match path {
            "" => format!("{base}{sep}{query}"),
            p => format!("{base}/{p}{sep}{query}"),
        }
    };
    let this = match (&q.cursor, q.offset) {
        (Some(c), _) => Some(PageRef::Cursor(c.clone())),
        (None, n) if n > 0 => Some(PageRef::Offset(n)),
        _ => None,
    };
    let mut links = vec![
        json!({"relation": "self", "url": link(this.as_ref())}),
        json!({"relation": "first", "url": link(None)}),
    ];
    if let Some(p) = &result.previous {
        links.push(json!({"relation": "previous", "url": link(Some(p))}));
    }
    if let Some(n) = &result.next {
        links.push(json!({"relation": "next", "url": link(Some(n))}));
    }
    links
}

/// A `searchset` Bundle with self/first/previous/next links (search.html#paging).
pub fn searchset(
    base: &str,
    path: &str,
    q: &search::SearchQuery,
    result: search::engine::SearchResult,
) -> Result<Searchset, ApiError> {
    let links = page_links(base, path, q, &result);
    let elements: Option<Vec<&str>> = q
        .elements
        .as_ref()
        .map(|e| e.iter().map(String::as_str).collect());
    let shape = |v: Version| -> Result<EntryResource, ApiError> {
        let content = v.content.unwrap_or_else(|| "{}".into());
        if elements.is_none() && q.summary.is_none() {
            return Ok(EntryResource::Stored(content));
        }
        let mut resource: Value = serde_json::from_str(&content).map_err(ApiError::internal)?;
        if let Some(e) = &elements {
            search::summary::apply_elements(&mut resource, e);
        } else if let Some(mode) = q.summary {
            search::summary::apply_summary(&mut resource, mode);
        }
        Ok(EntryResource::Value(resource))
    };
    let mut entries = Vec::with_capacity(result.matches.len() + result.included.len() + 1);
    for (mode, list) in [("match", result.matches), ("include", result.included)] {
        for v in list {
            entries.push(SearchEntry {
                full_url: Some(format!("{base}/{}/{}", v.ty, v.id)),
                resource: shape(v)?,
                search: json!({ "mode": mode }),
            });
        }
    }
    if !q.unknown.is_empty() || !q.invalid.is_empty() {
        let mut issues: Vec<Issue> = q
            .unknown
            .iter()
            .map(|n| Issue {
                severity: "warning",
                code: "not-supported",
                diagnostics: format!("search parameter '{n}' is not supported and was ignored"),
                expression: None,
            })
            .collect();
        issues.extend(q.invalid.iter().map(|(n, why)| Issue {
            severity: "warning",
            code: "invalid",
            diagnostics: format!("search parameter '{n}' was ignored: {why}"),
            expression: None,
        }));
        entries.push(SearchEntry {
            full_url: None,
            resource: EntryResource::Value(operation_outcome(&issues)),
            search: json!({ "mode": "outcome" }),
        });
    }
    let mut bundle = json!({
        "resourceType": "Bundle",
        "id": ResourceId::generate().as_str(),
        "meta": { "lastUpdated": format_instant(crate::store::now_micros()) },
        "type": "searchset",
    });
    if let Some(total) = result.total {
        bundle["total"] = json!(total);
    }
    bundle["link"] = Value::Array(links);
    Ok(Searchset {
        head: bundle,
        entries,
    })
}

/// A `history` Bundle (http.html#history): newest first, deletes as entries without a resource.
pub fn history_bundle(
    base: &str,
    self_url: &str,
    next_url: Option<String>,
    versions: Vec<Version>,
    total: i64,
) -> Result<Value, ApiError> {
    let mut entries = Vec::with_capacity(versions.len());
    for v in versions {
        let mut entry = Map::new();
        entry.insert("fullUrl".into(), json!(format!("{base}/{}/{}", v.ty, v.id)));
        if let Some(c) = &v.content {
            entry.insert(
                "resource".into(),
                serde_json::from_str(c).map_err(ApiError::internal)?,
            );
        }
        let (method, url, status) = match v.method {
            crate::store::Method::Delete => {
                ("DELETE", format!("{}/{}", v.ty, v.id), "204 No Content")
            }
            crate::store::Method::Post => ("POST", v.ty.clone(), "201 Created"),
            m => (
                m.as_str(),
                format!("{}/{}", v.ty, v.id),
                if v.version_id == 1 {
                    "201 Created"
                } else {
                    "200 OK"
                },
            ),
        };
        entry.insert("request".into(), json!({ "method": method, "url": url }));
        entry.insert(
            "response".into(),
            json!({ "status": status, "etag": format!("W/\"{}\"", v.version_id), "lastModified": format_instant(v.last_updated) }),
        );
        entries.push(Value::Object(entry));
    }
    let mut links = vec![json!({"relation": "self", "url": self_url})];
    if let Some(next) = next_url {
        links.push(json!({"relation": "next", "url": next}));
    }
    let mut bundle = json!({
        "resourceType": "Bundle",
        "id": ResourceId::generate().as_str(),
        "type": "history",
        "total": total,
        "link": links,
    });
    // No empty arrays in FHIR (json.html).
    if !entries.is_empty() {
        bundle["entry"] = Value::Array(entries);
    }
    Ok(bundle)
}

/// `Last-Modified` header value for an outcome.
pub fn last_modified(o: &Outcome) -> String {
    format_http_date(o.last_updated)
}
