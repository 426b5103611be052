//! Acceptance tests of FHIR R4 search (https://hl7.org/fhir/R4/search.html): the helpers the
//! `search_*` modules share. Every module seeds one small hand-made data set whose ids are
//! chosen by the test (update-as-create), so a failing assertion names the resources, and every
//! assertion compares the exact set (or order) of ids found, never only a status.

use serde_json::Value;

use crate::common::{Resp, TestApp};

/// Form-encodes every name and value of `a=b&c=d` (each pair split at its first `=`), so `|`,
/// `:`, `$`, `,`, `\`, spaces and the `+` of a time zone travel as written.
pub fn encode_query(query: &str) -> String {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            format!("{}={}", enc(name), enc(value))
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// One form-encoded component.
pub fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// The absolute URL of `path?query` with the query encoded; an empty path is the base itself
/// (`?_type=…` is a system-level search on `[base]`).
pub fn search_url(app: &TestApp, path_query: &str) -> String {
    let (path, query) = path_query.split_once('?').unwrap_or((path_query, ""));
    let base = if path.is_empty() {
        app.base.clone()
    } else {
        app.url(path)
    };
    if query.is_empty() {
        base
    } else {
        format!("{base}?{}", encode_query(query))
    }
}

/// GET `path?query` (encoded).
pub async fn get(app: &TestApp, path_query: &str) -> Resp {
    app.send(app.client.get(search_url(app, path_query))).await
}

/// GET `path?query` with a `Prefer` header (e.g. `handling=strict`).
pub async fn get_prefer(app: &TestApp, path_query: &str, prefer: &str) -> Resp {
    app.send(
        app.client
            .get(search_url(app, path_query))
            .header("prefer", prefer),
    )
    .await
}

/// Asserts a 200 searchset Bundle and returns it.
pub fn searchset(r: &Resp, what: &str) -> Value {
    assert_eq!(r.status, 200, "{what}: {}", r.text);
    let b = r.json();
    assert_eq!(b["resourceType"], "Bundle", "{what}: {}", r.text);
    assert_eq!(b["type"], "searchset", "{what}: {}", r.text);
    b
}

/// GET `path?query` and return the searchset Bundle.
pub async fn bundle(app: &TestApp, path_query: &str) -> Value {
    searchset(&get(app, path_query).await, path_query)
}

/// GET an absolute URL (a paging link) and return the searchset Bundle.
pub async fn follow(app: &TestApp, url: &str) -> Value {
    searchset(&app.send(app.client.get(url)).await, url)
}

/// The entries whose `search.mode` is `mode`.
pub fn entries<'a>(b: &'a Value, mode: &str) -> Vec<&'a Value> {
    b["entry"]
        .as_array()
        .map(|e| e.iter().filter(|e| e["search"]["mode"] == mode).collect())
        .unwrap_or_default()
}

/// The ids of the `match` entries, in Bundle order.
pub fn match_ids(b: &Value) -> Vec<String> {
    entries(b, "match")
        .into_iter()
        .map(|e| {
            e["resource"]["id"]
                .as_str()
                .unwrap_or_else(|| panic!("match entry without resource.id: {e}"))
                .to_owned()
        })
        .collect()
}

/// `Type/id` of the `include` entries, sorted.
pub fn included(b: &Value) -> Vec<String> {
    let mut v: Vec<String> = entries(b, "include").into_iter().map(type_id).collect();
    v.sort();
    v
}

/// `Type/id` of every entry that carries a resource other than an OperationOutcome, sorted
/// (system-level searches and `$everything`, where ids repeat across types).
pub fn refs(b: &Value) -> Vec<String> {
    let mut v: Vec<String> = b["entry"]
        .as_array()
        .map(|e| {
            e.iter()
                .filter(|e| {
                    e["resource"].is_object() && e["resource"]["resourceType"] != "OperationOutcome"
                })
                .map(type_id)
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn type_id(e: &Value) -> String {
    format!(
        "{}/{}",
        e["resource"]["resourceType"].as_str().unwrap_or("?"),
        e["resource"]["id"].as_str().unwrap_or("?")
    )
}

/// `expected` as a sorted list of owned strings.
pub fn sorted(expected: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = expected.iter().map(|s| (*s).to_owned()).collect();
    v.sort();
    v
}

/// The sorted ids of the matches of GET `path?query`.
pub async fn ids(app: &TestApp, path_query: &str) -> Vec<String> {
    let mut v = match_ids(&bundle(app, path_query).await);
    v.sort();
    v
}

/// Asserts that GET `path?query` matches exactly `expected` (any order), each once, and that a
/// `total`, when given on a single page, counts exactly those matches.
pub async fn check(app: &TestApp, path_query: &str, expected: &[&str]) {
    let b = bundle(app, path_query).await;
    let mut got = match_ids(&b);
    got.sort();
    assert_eq!(
        got,
        sorted(expected),
        "GET {path_query}: wrong matches (left: found, right: expected)\n{b}"
    );
    if link(&b, "next").is_none()
        && let Some(total) = b.get("total")
    {
        assert_eq!(total, got.len(), "GET {path_query}: total\n{b}");
    }
}

/// Asserts that GET `path?query` matches exactly `expected`, in that order.
pub async fn check_order(app: &TestApp, path_query: &str, expected: &[&str]) {
    let b = bundle(app, path_query).await;
    let got = match_ids(&b);
    let want: Vec<String> = expected.iter().map(|s| (*s).to_owned()).collect();
    assert_eq!(
        got, want,
        "GET {path_query}: wrong order (left: found, right: expected)\n{b}"
    );
}

/// The URL of the link with relation `rel`.
pub fn link(b: &Value, rel: &str) -> Option<String> {
    b["link"]
        .as_array()?
        .iter()
        .find(|l| l["relation"] == rel)
        .and_then(|l| l["url"].as_str())
        .map(str::to_owned)
}

/// The decoded query parameters of a URL.
pub fn query_pairs(url: &str) -> Vec<(String, String)> {
    url::Url::parse(url)
        .unwrap_or_else(|e| panic!("not a URL ({e}): {url}"))
        .query_pairs()
        .into_owned()
        .collect()
}

/// The OperationOutcome entries (`search.mode = outcome`) of a searchset, as text.
pub fn outcome_text(b: &Value) -> Vec<String> {
    entries(b, "outcome")
        .into_iter()
        .map(|e| {
            assert_eq!(
                e["resource"]["resourceType"], "OperationOutcome",
                "an outcome entry carries an OperationOutcome: {e}"
            );
            e["resource"].to_string()
        })
        .collect()
}

/// Creates `resource` with the id it carries (update-as-create) and returns what the server
/// stored (with `meta.lastUpdated`).
pub async fn put(app: &TestApp, resource: Value) -> Value {
    let ty = resource["resourceType"].as_str().expect("resourceType");
    let id = resource["id"].as_str().expect("id");
    let r = app.put(&format!("{ty}/{id}"), &resource).await;
    assert!(
        r.status == 201 || r.status == 200,
        "PUT {ty}/{id}: {}",
        r.text
    );
    r.json()
}

/// Updates a stored resource through `change` and returns the new version.
pub async fn modify(app: &TestApp, ty: &str, id: &str, change: impl FnOnce(&mut Value)) -> Value {
    let mut v = app.get(&format!("{ty}/{id}")).await.json();
    change(&mut v);
    let r = app.put(&format!("{ty}/{id}"), &v).await;
    assert_eq!(r.status, 200, "update {ty}/{id}: {}", r.text);
    r.json()
}

/// `meta.lastUpdated` of a stored resource.
pub fn last_updated(v: &Value) -> String {
    v["meta"]["lastUpdated"]
        .as_str()
        .unwrap_or_else(|| panic!("no meta.lastUpdated: {v}"))
        .to_owned()
}

/// A short pause so consecutive writes get clearly distinct `lastUpdated` instants.
pub async fn tick() {
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
}

/// A LOINC CodeableConcept.
pub fn loinc(code: &str, display: &str) -> Value {
    serde_json::json!({"coding": [{"system": "http://loinc.org", "code": code, "display": display}]})
}

/// A UCUM Quantity.
pub fn ucum(value: f64, code: &str) -> Value {
    serde_json::json!({"value": value, "unit": code, "system": "http://unitsofmeasure.org", "code": code})
}

/// The `vital-signs` Observation category.
pub fn vital_signs() -> Value {
    serde_json::json!([{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}])
}
