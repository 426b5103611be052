//! The OpenAPI document and the explorer (issue 9, items 1 and 2): the document names every
//! route of the router and nothing else, it is served at /openapi.json as committed, and the
//! explorer's page and assets come from the server itself.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::common::{ADMIN_ID, ADMIN_SECRET, Backend, spawn};

/// `{anything}` → `{}`, so that paths compare whatever their parameters are called.
fn shape(path: &str) -> String {
    path.split('/')
        .map(|s| if s.starts_with('{') { "{}" } else { s })
        .collect::<Vec<_>>()
        .join("/")
}

/// The paths the source gives `Router::route`, with the `/fhir` of the routes nested there.
fn routed_paths() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut dirs = vec![std::path::PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/src"
    ))];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("source directory") {
            let path = entry.expect("entry").path();
            // The conformance suite and the benchmarks run receivers of their own.
            if path.ends_with("conformance") || path.ends_with("bench") {
                continue;
            }
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("source file");
            let nested = path.ends_with("http/fhir_routes.rs");
            for piece in text.split(".route(").skip(1) {
                let piece = piece.trim_start();
                let Some(rest) = piece.strip_prefix('"') else {
                    continue;
                };
                let Some(route) = rest.split('"').next() else {
                    continue;
                };
                let full = match (nested, route) {
                    (true, "/") => "/fhir".to_string(),
                    (true, r) => format!("/fhir{r}"),
                    (false, "/fhir/") => "/fhir".to_string(),
                    (false, r) => r.to_string(),
                };
                out.insert(full);
            }
        }
    }
    out
}

#[test]
fn every_route_is_documented() {
    let doc = serde_json::to_value(vitalbridge::http::openapi::document()).expect("document");
    let documented: BTreeSet<String> = doc["paths"]
        .as_object()
        .expect("paths")
        .keys()
        .map(|p| shape(p))
        .collect();
    let routes = routed_paths();
    assert!(routes.len() > 40, "found the routes: {routes:?}");
    let types: Vec<&str> = vitalbridge::http::openapi::DOCUMENTED_TYPES.to_vec();
    for route in &routes {
        // `/fhir/{type}/…` is described once per documented type and once for the others.
        let candidates: Vec<String> = if route.starts_with("/fhir/{type}") {
            types
                .iter()
                .map(|t| route.replacen("{type}", t, 1))
                .chain([route.clone()])
                .collect()
        } else {
            vec![route.clone()]
        };
        assert!(
            candidates.iter().any(|c| documented.contains(&shape(c))),
            "the route {route} is not in the OpenAPI document"
        );
    }
    // And the other way round: nothing documented that no route serves.
    for path in &documented {
        let served = routes.iter().any(|r| {
            let r = shape(r);
            r == *path || {
                let (a, b): (Vec<&str>, Vec<&str>) =
                    (r.split('/').collect(), path.split('/').collect());
                a.len() == b.len()
                    && a.iter()
                        .zip(&b)
                        .all(|(x, y)| x == y || (*x == "{}" && !y.starts_with('$')))
            }
        });
        assert!(served, "{path} is documented but no route serves it");
    }
}

/// A value for each path parameter the document names.
fn fill(path: &str) -> String {
    path.split('/')
        .map(|s| match s {
            "{type}" => "Basic",
            "{id}" => "openapi-probe",
            "{vid}" => "1",
            "{vendor}" => "generic",
            s if s.starts_with('{') => "probe",
            s => s,
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Every documented operation reaches a handler: no "no such endpoint" and no bare 405 from
/// the router, whatever the handler then says about the empty request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_operation_is_routed() {
    let app = spawn(Backend::Sqlite).await;
    let doc = serde_json::to_value(vitalbridge::http::openapi::document()).expect("document");
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, _) in item.as_object().expect("path item") {
            let m = reqwest::Method::from_bytes(method.to_ascii_uppercase().as_bytes())
                .expect("method");
            let url = format!("{}{}", app.origin(), fill(path));
            let r = app
                .send(
                    app.client
                        .request(m, &url)
                        .header("Content-Type", "application/fhir+json"),
                )
                .await;
            assert!(
                !r.text.contains("no such endpoint"),
                "{method} {path}: not routed: {}",
                r.text
            );
            if r.status == 405 {
                assert!(
                    r.text.contains("OperationOutcome"),
                    "{method} {path}: the router refused the method"
                );
            }
            checked += 1;
        }
    }
    assert!(checked > 200, "{checked} operations");
}

/// The document at /openapi.json is the committed one, and the explorer's page and every
/// asset it loads are served by vitalbridge itself, without a token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_explorer_is_served_offline() {
    let app = spawn(Backend::Sqlite).await;
    let bare = reqwest::Client::new();
    let served: Value = bare
        .get(format!("{}/openapi.json", app.origin()))
        .send()
        .await
        .expect("openapi.json")
        .json()
        .await
        .expect("JSON");
    let committed: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/openapi.json"))
            .expect("committed document"),
    )
    .expect("JSON");
    assert_eq!(served, committed);

    let page = bare
        .get(format!("{}/docs/", app.origin()))
        .send()
        .await
        .expect("page");
    assert_eq!(page.status(), 200);
    let html = page.text().await.expect("html");
    let assets: Vec<&str> = html
        .split(['"', '\''])
        .filter(|s| s.ends_with(".js") || s.ends_with(".css"))
        .collect();
    assert!(assets.len() >= 4, "{html}");
    for asset in assets {
        assert!(!asset.contains("//"), "{asset} is not served locally");
        let r = bare
            .get(format!(
                "{}/docs/{}",
                app.origin(),
                asset.trim_start_matches("./")
            ))
            .send()
            .await
            .expect("asset");
        assert_eq!(r.status(), 200, "{asset}");
    }
    let init = bare
        .get(format!("{}/docs/swagger-initializer.js", app.origin()))
        .send()
        .await
        .expect("initializer")
        .text()
        .await
        .expect("text");
    assert!(init.contains("\"/openapi.json\""), "{init}");
    assert!(
        init.contains("\"validatorUrl\": \"none\""),
        "no call to swagger.io: {init}"
    );
}

/// The committed document with each FHIR request body's schema cut to its top level: the
/// resource's own elements, each still typed and closed to unknown names, with the data types
/// inside left open (`{"type": "object"}`). Generating bodies from the full recursive FHIR
/// schemas keeps schemathesis busy for more than ten minutes on one resource type (2 cores);
/// the cut document lets one run cover every operation in a few minutes. Responses keep the
/// full schemas, so what the server answers is still checked in depth.
fn shallow_request_bodies(doc: &Value) -> Value {
    let schemas = doc["components"]["schemas"].clone();
    let shallow = |name: &str| -> Option<Value> {
        let mut s = schemas.get(name)?.clone();
        for (_, p) in s.get_mut("properties")?.as_object_mut()?.iter_mut() {
            if p.get("$ref").is_some() {
                *p = serde_json::json!({"type": "object"});
            } else if p.pointer("/items/$ref").is_some() {
                p["items"] = serde_json::json!({"type": "object"});
            }
        }
        Some(s)
    };
    let mut doc = doc.clone();
    for (_, ops) in doc["paths"].as_object_mut().expect("paths").iter_mut() {
        for (_, op) in ops.as_object_mut().expect("operations").iter_mut() {
            let Some(schema) = op.pointer_mut("/requestBody/content/application~1fhir+json/schema")
            else {
                continue;
            };
            let name = schema["$ref"]
                .as_str()
                .and_then(|r| r.strip_prefix("#/components/schemas/"))
                .map(str::to_owned);
            if let Some(cut) = name.as_deref().and_then(shallow) {
                *schema = cut;
            }
        }
    }
    doc
}

#[test]
fn the_shallow_document_keeps_each_resource_s_elements() {
    let doc: Value =
        serde_json::from_str(include_str!("../../openapi/openapi.json")).expect("json");
    let cut = shallow_request_bodies(&doc);
    let body = |d: &Value| {
        d.pointer("/paths/~1fhir~1Patient/post/requestBody/content/application~1fhir+json/schema")
            .cloned()
            .expect("Patient create body")
    };
    assert_eq!(body(&doc)["$ref"], "#/components/schemas/Patient");
    let patient = body(&cut);
    assert_eq!(patient["properties"]["gender"]["enum"][0], "female");
    assert_eq!(
        patient["properties"]["name"],
        serde_json::json!({"type": "array", "items": {"type": "object"}})
    );
    assert_eq!(
        patient["properties"]["maritalStatus"],
        serde_json::json!({"type": "object"})
    );
    assert_eq!(
        patient["required"],
        doc["components"]["schemas"]["Patient"]["required"]
    );
    assert_eq!(cut["components"], doc["components"]);
}

/// schemathesis (PyPI, installed by `scripts/test.sh` into `target/stenv`) sends the examples
/// and boundary values ("coverage" phase) of every operation of the document to a server on
/// PostgreSQL, as an admin with a token refreshed by `tests/schemathesis/hooks.py`. No answer
/// may be a server error, nor contradict the document (status code, content type, schema).
/// Request bodies come from `shallow_request_bodies`; every operation must be tested.
/// `VB_ST_SEED` picks another seed, `VB_ST_PHASES` adds phases (`fuzzing`), `VB_ST_MAX_TIME`
/// (seconds) bounds the run, so that a slow generator fails the test instead of hanging it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_errors() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let st = root.join("target/stenv/bin/schemathesis");
    assert!(
        st.exists(),
        "{} is missing: scripts/test.sh installs PyPI schemathesis",
        st.display()
    );
    let app = spawn(Backend::Postgres).await;
    let seed = std::env::var("VB_ST_SEED").unwrap_or_else(|_| "20261202".into());
    let phases = std::env::var("VB_ST_PHASES").unwrap_or_else(|_| "examples,coverage".into());
    let max_time = std::env::var("VB_ST_MAX_TIME").unwrap_or_else(|_| "1200".into());
    let origin = app.origin();
    let doc: Value =
        serde_json::from_str(include_str!("../../openapi/openapi.json")).expect("json");
    let path = root.join("target/openapi-schemathesis.json");
    std::fs::write(
        &path,
        serde_json::to_vec(&shallow_request_bodies(&doc)).expect("json"),
    )
    .expect("writes the document under target/");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(&st)
            .arg("run")
            .arg(&path)
            .args(["--url", &origin])
            .args([
                "--checks",
                "not_a_server_error,status_code_conformance,content_type_conformance,\
                 response_schema_conformance",
            ])
            .args(["--phases", &phases, "--seed", &seed, "--workers", "2"])
            // Removing clients and users would remove the admin client the run signs in with.
            .args(["--exclude-operation-id", "deleteClient"])
            .args(["--exclude-operation-id", "deleteUser"])
            .args(["--max-time", &max_time, "--no-color"])
            .current_dir(root)
            .env("SCHEMATHESIS_HOOKS", "hooks")
            .env("PYTHONPATH", root.join("tests/schemathesis"))
            .env("VB_ST_ORIGIN", &origin)
            .env("VB_ST_CLIENT_ID", ADMIN_ID)
            .env("VB_ST_CLIENT_SECRET", ADMIN_SECRET)
            .output()
    })
    .await
    .expect("joined")
    .expect("schemathesis runs");
    let report = String::from_utf8_lossy(&out.stdout);
    let tail: String = {
        let lines: Vec<&str> = report.lines().collect();
        lines[lines.len().saturating_sub(150)..].join("\n")
    };
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{tail}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // "Selected: 306/308" and "Tested: 306": every selected operation was tested.
    let count = |label: &str| {
        report
            .lines()
            .find_map(|l| l.trim().strip_prefix(label))
            .and_then(|v| v.split('/').next())
            .and_then(|n| n.trim().parse::<usize>().ok())
    };
    // The summary, for `--nocapture` runs that report the figures.
    println!("{tail}");
    let selected = count("Selected:").expect("a Selected line");
    assert!(selected > 200, "{tail}");
    assert_eq!(count("Tested:"), Some(selected), "{tail}");
}

/// Every create operation's example (the body the explorer offers and schemathesis sends
/// first) is a resource the server stores, on both stores.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_examples_are_accepted() {
    let doc = serde_json::to_value(vitalbridge::http::openapi::document()).expect("document");
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let app = spawn(backend).await;
        let mut created = Vec::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            let Some(example) = item
                .pointer("/post/requestBody/content/application~1fhir+json/example")
                .filter(|_| path.starts_with("/fhir/") && path.matches('/').count() == 2)
            else {
                continue;
            };
            let r = app.post(path.trim_start_matches("/fhir"), example).await;
            assert_eq!(r.status, 201, "POST {path} with its example: {}", r.text);
            assert_eq!(r.json()["resourceType"], example["resourceType"], "{path}");
            created.push(path.clone());
        }
        assert!(created.len() >= 19, "{created:?}");
    }
}
