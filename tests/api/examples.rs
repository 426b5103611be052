//! Every official R4 example that fhirbolt parses (npm `hl7.fhir.r4.examples`, fetched by
//! scripts/test.sh) is accepted, and read back semantically identical, as JSON and as XML.

use std::sync::Arc;

use fhirbolt::model::r4::Resource;
use fhirbolt::serde::{DeserializationConfig, DeserializationMode};
use futures::StreamExt;
use serde_json::Value;

use crate::both;
use crate::common::TestApp;

fn examples_dir() -> std::path::PathBuf {
    let dir = std::env::var("VB_FHIR_EXAMPLES")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| {
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("target/fhir-examples/package")
        });
    assert!(
        dir.is_dir(),
        "the official FHIR examples are not at {}; scripts/test.sh fetches them (npm hl7.fhir.r4.examples)",
        dir.display()
    );
    dir
}

/// The example resources fhirbolt accepts in strict mode.
fn parseable_examples() -> Vec<Value> {
    let mut out = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(examples_dir())
        .expect("read dir")
        .filter_map(|e| e.ok())
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".json") || name.starts_with('.') || name == "package.json" {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(e.path()) else {
            continue;
        };
        let Ok(v) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        if v.get("resourceType").is_none() || v.get("id").and_then(Value::as_str).is_none() {
            continue;
        }
        // AuditEvent is the server's own audit trail, written only by the server (tests in
        // audit.rs); its examples cannot be stored.
        if v["resourceType"] == "AuditEvent" {
            continue;
        }
        let strict = DeserializationConfig {
            mode: DeserializationMode::Strict,
        };
        if fhirbolt::json::from_json_value::<Resource>(v.clone(), Some(strict)).is_ok() {
            out.push(v);
        }
    }
    out
}

/// The resource without what the server sets (meta.versionId, meta.lastUpdated, and the owner
/// tag of the tenancy, README "Access").
fn without_server_meta(mut v: Value) -> Value {
    if let Some(meta) = v.get_mut("meta").and_then(Value::as_object_mut) {
        meta.remove("versionId");
        meta.remove("lastUpdated");
        if let Some(tags) = meta.get_mut("tag").and_then(Value::as_array_mut) {
            tags.retain(|t| t["system"] != vitalbridge::auth::tenancy::OWNER_SYSTEM);
            if tags.is_empty() {
                meta.remove("tag");
            }
        }
        if meta.is_empty() {
            v.as_object_mut().map(|m| m.remove("meta"));
        }
    }
    v
}

async fn official_examples_round_trip(app: TestApp) {
    // The largest example (Bundle-resources.json) is 35 MB.
    let app = crate::common::spawn_with(app.backend, |s| {
        without_engine(s);
        s.body_limit = 64 * 1024 * 1024;
    })
    .await;
    let examples = parseable_examples();
    assert!(
        examples.len() >= 5000,
        "only {} examples found",
        examples.len()
    );
    // Access tokens live 5 minutes and the whole run can take longer on a busy machine: each
    // chunk of examples runs with a fresh token.
    let mut failures: Vec<String> = Vec::new();
    for chunk in examples.chunks(500) {
        let app = Arc::new(TestApp {
            client: crate::common::admin_client(&app.origin()).await,
            ..app.clone()
        });
        failures.extend(round_trip(app, chunk).await);
    }
    assert!(
        failures.is_empty(),
        "{} of {} examples failed:\n{}",
        failures.len(),
        examples.len(),
        failures.join("\n")
    );
    eprintln!(
        "{} official examples accepted and read back identical",
        examples.len()
    );
}
both!(official_examples_round_trip);

/// Writes each example, reads it back as JSON and as XML: what differs, per example.
async fn round_trip(app: Arc<TestApp>, examples: &[Value]) -> Vec<String> {
    futures::stream::iter(examples.iter().cloned())
        .map(|ex| {
            let app = app.clone();
            async move {
                let ty = ex["resourceType"].as_str().unwrap_or_default().to_owned();
                let id = ex["id"].as_str().unwrap_or_default().to_owned();
                let valid_id = vitalbridge::fhir::types::ResourceId::parse(&id).is_some();
                // A few examples carry ids longer than the 64 characters R4 allows: a PUT with
                // such an id is refused, so those are created with a server-assigned id instead.
                let (r, path) = if valid_id {
                    let path = format!("{ty}/{id}");
                    (app.put(&path, &ex).await, path)
                } else {
                    let r = app.post(&ty, &ex).await;
                    let new_id = r.json()["id"].as_str().unwrap_or_default().to_owned();
                    (r, format!("{ty}/{new_id}"))
                };
                // A client creates a Subscription as requested or off; `active` and `error`
                // are the server's to set (subscriptions.rs): such examples are refused.
                let status = ex["status"].as_str().unwrap_or_default();
                if ty == "Subscription" && matches!(status, "active" | "error") {
                    return (r.status != 422).then(|| {
                        format!("{path}: a client's {status} Subscription: {}", r.status)
                    });
                }
                if r.status != 200 && r.status != 201 {
                    return Some(format!(
                        "{path}: write {}: {}",
                        r.status,
                        r.text.chars().take(300).collect::<String>()
                    ));
                }
                let mut ex = ex;
                if !valid_id {
                    ex["id"] = Value::String(path.split('/').nth(1).unwrap_or_default().to_owned());
                }
                let back = app.get(&path).await.json();
                if without_server_meta(back) != without_server_meta(ex.clone()) {
                    return Some(format!("{path}: JSON read back differs"));
                }
                // XML out and back in through the server's own reader must give the same resource.
                let xml = app.get(&format!("{path}?_format=xml")).await;
                match vitalbridge::fhir::xml::from_xml(xml.text.as_bytes()) {
                    Ok(v) if without_server_meta(v.clone()) == without_server_meta(ex.clone()) => {
                        None
                    }
                    Ok(v) => Some(format!(
                        "{path}: XML read back differs: {}",
                        first_difference(&v, &ex, "")
                    )),
                    Err(e) => Some(format!("{path}: XML read back fails: {e:?}")),
                }
            }
        })
        .buffer_unordered(8)
        .filter_map(|f| async move { f })
        .collect()
        .await
}

/// Where two JSON values first differ (for the failure message).
fn first_difference(a: &Value, b: &Value, path: &str) -> String {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for (k, v) in x {
                if k == "meta" {
                    continue;
                }
                match y.get(k) {
                    Some(w) if w != v => return first_difference(v, w, &format!("{path}.{k}")),
                    None => return format!("{path}.{k} only in the read-back"),
                    _ => {}
                }
            }
            y.keys()
                .find(|k| !x.contains_key(*k))
                .map_or_else(|| path.to_owned(), |k| format!("{path}.{k} missing"))
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find(|(_, (v, w))| v != w)
            .map_or_else(
                || path.to_owned(),
                |(i, (v, w))| first_difference(v, w, &format!("{path}[{i}]")),
            ),
        _ => format!("{path}: {} vs {}", short(a), short(b)),
    }
}

fn short(v: &Value) -> String {
    v.to_string().chars().take(120).collect()
}

/// create, read, update, delete and read-after-delete for every one of the 146 R4 resource
/// types: the first parseable official example of each type, or a bare resource for the six
/// types the examples lack (none of them has a required element).
async fn every_resource_type_crud(app: TestApp) {
    let mut by_type: std::collections::BTreeMap<String, Value> = std::collections::BTreeMap::new();
    for ex in parseable_examples() {
        let ty = ex["resourceType"].as_str().unwrap_or_default().to_owned();
        // Small ones keep the test quick; any example of the type will do.
        let size = ex.to_string().len();
        let better = by_type
            .get(&ty)
            .is_none_or(|cur| size < cur.to_string().len());
        if better {
            by_type.insert(ty, ex);
        }
    }
    let mut done = 0;
    for ty in vitalbridge::fhir::types::RESOURCE_TYPES {
        if *ty == "AuditEvent" {
            // Append-only and server-written: a client's create is refused (audit.rs).
            let r = app.post(ty, &serde_json::json!({"resourceType": ty})).await;
            assert_eq!(r.status, 405, "{}", r.text);
            continue;
        }
        let mut body = by_type
            .remove(*ty)
            .unwrap_or_else(|| serde_json::json!({"resourceType": ty}));
        body.as_object_mut().map(|m| m.remove("id"));
        let r = app.post(ty, &body).await;
        assert_eq!(r.status, 201, "create {ty}: {}", r.text);
        let id = r.json()["id"].as_str().expect("id").to_owned();
        let path = format!("{ty}/{id}");
        let read = app.get(&path).await;
        assert_eq!(read.status, 200, "read {path}");
        let mut v = read.json();
        v["meta"]["tag"] = serde_json::json!([{"system": "urn:vb:test", "code": "updated"}]);
        let r = app.put(&path, &v).await;
        assert_eq!(r.status, 200, "update {path}: {}", r.text);
        assert_eq!(r.json()["meta"]["versionId"], "2", "{path}");
        assert_eq!(app.delete(&path).await.status, 204, "delete {path}");
        assert_eq!(app.get(&path).await.status, 410, "read after delete {path}");
        assert_eq!(
            app.get(&format!("{path}/_history/2")).await.json()["meta"]["tag"][0]["code"],
            "updated"
        );
        done += 1;
    }
    assert_eq!(done, 145);
}
/// The example Subscriptions are written as given: no engine activates them meanwhile (a new
/// version the test does not expect; subscriptions.rs tests the engine).
fn without_engine(s: &mut vitalbridge::config::Settings) {
    s.subscriptions.enabled = false;
}

both!(every_resource_type_crud, super::without_engine);
