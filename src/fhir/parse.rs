//! Turning a request body into a resource the store may keep ("parse, don't validate").
//!
//! fhirbolt in strict mode checks the structure against the R4 model (unknown elements, missing
//! required ones, JSON kinds); `validate::check` adds what fhirbolt does not check: primitive
//! formats and required value-set bindings.

use fhirbolt::model::r4::Resource;
use fhirbolt::serde::{DeserializationConfig, DeserializationMode};
use serde_json::Value;

use super::types::{ResourceId, ResourceType};
use crate::http::error::{ApiError, Issue};
use crate::validate;

/// A resource that passed validation. Only [`validate_resource`] makes one.
#[derive(Debug, Clone)]
pub struct ValidResource {
    pub ty: ResourceType,
    pub value: Value,
}

/// What the URL says about the resource in the body.
#[derive(Debug, Clone, Copy)]
pub enum Expect<'a> {
    /// POST `[type]`: the type must match; an `id` in the body is ignored (http.html#create).
    Create(ResourceType),
    /// PUT `[type]/[id]`: type and id must match the URL (http.html#update).
    Update(ResourceType, &'a ResourceId),
    /// PUT `[type]?criteria`: the type must match; an id, if any, is checked later.
    ConditionalUpdate(ResourceType),
}

pub fn validate_resource(mut value: Value, expect: Expect<'_>) -> Result<ValidResource, ApiError> {
    let Value::Object(map) = &mut value else {
        return Err(ApiError::bad_request(
            "structure",
            "the body must be a JSON object holding a FHIR resource",
        ));
    };
    let Some(type_name) = map.get("resourceType").and_then(Value::as_str) else {
        return Err(ApiError::BadRequest(vec![
            Issue::error("required", "resourceType is missing").at("resourceType"),
        ]));
    };
    let ty = ResourceType::parse(type_name).ok_or_else(|| {
        ApiError::BadRequest(vec![
            Issue::error(
                "not-supported",
                format!("'{}' is not an R4 resource type", short(type_name)),
            )
            .at("resourceType"),
        ])
    })?;
    let url_type = match expect {
        Expect::Create(t) | Expect::Update(t, _) | Expect::ConditionalUpdate(t) => t,
    };
    if ty != url_type {
        return Err(ApiError::BadRequest(vec![
            Issue::error(
                "invalid",
                format!("resourceType {ty} does not match the URL's type {url_type}"),
            )
            .at("resourceType"),
        ]));
    }
    match expect {
        Expect::Create(_) => {
            map.remove("id");
        }
        Expect::Update(_, id) => match map.get("id").and_then(Value::as_str) {
            Some(body_id) if body_id == id.as_str() => {}
            Some(_) => {
                return Err(ApiError::BadRequest(vec![
                    Issue::error(
                        "invalid",
                        format!("the id in the body does not match the URL's id {id}"),
                    )
                    .at(format!("{ty}.id")),
                ]));
            }
            None => {
                return Err(ApiError::BadRequest(vec![
                    Issue::error(
                        "required",
                        "an update must carry the resource id in the body",
                    )
                    .at(format!("{ty}.id")),
                ]));
            }
        },
        Expect::ConditionalUpdate(_) => {}
    }
    check_structure(&value, ty)?;
    // A resource claiming one of this server's profiles (or, an Observation, the PHD IG's)
    // must meet it (issue 5, item 3): 422 with what it misses.
    let issues = super::profiles::check_write(&value);
    if !issues.is_empty() {
        return Err(ApiError::Unprocessable(issues));
    }
    Ok(ValidResource { ty, value })
}

/// The format and binding checks, then fhirbolt's strict structural parse.
pub fn check_structure(value: &Value, ty: ResourceType) -> Result<(), ApiError> {
    let issues = validate::check(value);
    if !issues.is_empty() {
        return Err(ApiError::BadRequest(
            issues
                .into_iter()
                .map(|i| {
                    let code = match i.code {
                        validate::IssueCode::Value => "value",
                        validate::IssueCode::CodeInvalid => "code-invalid",
                        validate::IssueCode::Structure => "structure",
                    };
                    Issue::error(code, i.diagnostics).at(i.expression)
                })
                .collect(),
        ));
    }
    // The table checks run first because they name the element at fault; fhirbolt's messages
    // do not say where.
    let config = DeserializationConfig {
        mode: DeserializationMode::Strict,
    };
    if let Err(e) = fhirbolt::json::from_json_value::<Resource>(value.clone(), Some(config)) {
        return Err(ApiError::BadRequest(vec![fhirbolt_issue(
            &e.to_string(),
            value,
            ty,
        )]));
    }
    Ok(())
}

/// fhirbolt reports serde-style messages ("unknown field `x`", "missing field `y`") without a
/// location; find the element in the document so that the issue can name it.
fn fhirbolt_issue(message: &str, value: &Value, ty: ResourceType) -> Issue {
    let field = message.split('`').nth(1).unwrap_or("");
    let (code, expression) = if message.starts_with("unknown field") {
        ("structure", find_key(value, field, ty.as_str()))
    } else if message.starts_with("missing field") {
        ("required", Some(find_missing(value, field, ty.as_str())))
    } else {
        ("structure", None)
    };
    // The message may quote a submitted value; keep it short. Diagnostics go to the client,
    // never to the log.
    let issue = Issue::error(code, format!("invalid {ty}: {}", short(message)));
    match expression {
        Some(e) => issue.at(e),
        None => issue,
    }
}

fn find_key(v: &Value, key: &str, path: &str) -> Option<String> {
    match v {
        Value::Object(map) => {
            if map.contains_key(key) {
                return Some(format!("{path}.{key}"));
            }
            map.iter()
                .find_map(|(k, child)| find_key(child, key, &format!("{path}.{k}")))
        }
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, child)| find_key(child, key, &format!("{path}[{i}]"))),
        _ => None,
    }
}

fn find_missing(v: &Value, key: &str, path: &str) -> String {
    if v.get(key).is_none() {
        format!("{path}.{key}")
    } else {
        path.to_string()
    }
}

fn short(s: &str) -> String {
    s.chars().take(200).collect()
}
