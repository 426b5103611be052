//! REST core: the interactions of https://hl7.org/fhir/R4/http.html on Patient (and Observation
//! where a reference is needed), the errors of unknown types and malformed bodies, and batch and
//! transaction Bundles.

use reqwest::Method;
use serde_json::{Value, json};

use super::client::{FHIR_JSON, entries, reference_of, require};
use super::runner::{Check, Group, ensure, fail};
use super::{Context, patient, string, vital_sign};

pub async fn run(cx: &Context, g: &mut Group<'_>) {
    g.check(
        "metadata is a CapabilityStatement for FHIR 4.0.x",
        metadata(cx),
    )
    .await;
    g.check(
        "create answers 201 with Location, ETag and meta.versionId",
        create(cx),
    )
    .await;
    g.check("read returns the stored resource and its ETag", read(cx))
        .await;
    g.check("a read in XML when the server offers it", read_xml(cx))
        .await;
    g.check("update makes a new version", update(cx)).await;
    g.check("vread returns each version as it was", vread(cx))
        .await;
    g.check(
        "update with a stale If-Match is refused with 412",
        stale_update(cx),
    )
    .await;
    g.check(
        "conditional create (If-None-Exist) does not duplicate",
        conditional_create(cx),
    )
    .await;
    g.check(
        "conditional update (PUT Patient?identifier=) creates, then updates",
        conditional_update(cx),
    )
    .await;
    g.check("JSON Patch changes the resource", patch(cx)).await;
    g.check("delete, then read answers 410 or 404", delete(cx))
        .await;
    g.check("history lists the versions, newest first", history(cx))
        .await;
    g.check(
        "reading an id that does not exist is 404 with an OperationOutcome",
        read_missing(cx),
    )
    .await;
    g.check(
        "an unknown resource type is refused with an OperationOutcome",
        unknown_type(cx),
    )
    .await;
    g.check(
        "malformed JSON is refused with 400 and an OperationOutcome",
        malformed(cx),
    )
    .await;
    g.check("a batch answers every entry on its own", batch(cx))
        .await;
    g.check(
        "a transaction resolves urn:uuid references",
        transaction(cx),
    )
    .await;
    g.check(
        "a transaction with a failing entry changes nothing",
        atomic_transaction(cx),
    )
    .await;
}

/// https://hl7.org/fhir/R4/http.html#capabilities
async fn metadata(cx: &Context) -> Check {
    let r = cx.metadata.clone()?;
    let v = r.resource(&[200], "CapabilityStatement")?;
    let version = v["fhirVersion"].as_str().unwrap_or_default();
    ensure!(
        version.starts_with("4.0."),
        "expected fhirVersion 4.0.x (R4), got {}",
        v["fhirVersion"]
    );
    ensure!(
        v["rest"]
            .as_array()
            .is_some_and(|l| l.iter().any(|r| r["mode"] == "server")),
        "expected a rest entry with mode server, got rest = {}",
        v["rest"]
    );
    let ct = r.header("content-type").unwrap_or_default();
    ensure!(
        ct.contains("json"),
        "asked for {FHIR_JSON}, got Content-Type {ct:?}"
    );
    Ok(())
}

/// The version in a weak ETag `W/"3"` (https://hl7.org/fhir/R4/http.html#versioning).
fn etag_version(etag: &str) -> Option<&str> {
    etag.strip_prefix("W/")
        .unwrap_or(etag)
        .strip_prefix('"')?
        .strip_suffix('"')
}

/// https://hl7.org/fhir/R4/http.html#create: 201, `Location: [base]/[type]/[id]/_history/[vid]`,
/// `ETag`, and the server's id and meta.versionId.
async fn create(cx: &Context) -> Check {
    let r = cx.fhir.post("Patient", &patient(&cx.unique())).await?;
    r.expect(&[201])?;
    let v = r.json().ok();
    if let Some(id) = v.as_ref().and_then(|v| v["id"].as_str()) {
        cx.created(format!("Patient/{id}"));
    }
    let location = r
        .header("location")
        .ok_or_else(|| fail(format!("expected a Location header; {}", r.describe())))?;
    ensure!(
        location.contains("/Patient/") && location.contains("/_history/"),
        "expected Location [base]/Patient/[id]/_history/[vid], got {location}"
    );
    let etag = r
        .header("etag")
        .ok_or_else(|| fail(format!("expected an ETag header; {}", r.describe())))?;
    let version = etag_version(etag)
        .ok_or_else(|| fail(format!("expected an ETag W/\"[vid]\", got {etag}")))?;
    let v = r.resource(&[201], "Patient")?;
    let id = string(&v["id"], "the new Patient's id")?;
    ensure!(
        location.contains(&format!("/Patient/{id}/_history/{version}")),
        "Location {location} does not name Patient/{id} version {version}"
    );
    ensure!(
        v["meta"]["versionId"] == version,
        "meta.versionId is {}, the ETag says {version}",
        v["meta"]["versionId"]
    );
    ensure!(
        v["meta"]["lastUpdated"].is_string(),
        "expected meta.lastUpdated, got meta = {}",
        v["meta"]
    );
    Ok(())
}

/// https://hl7.org/fhir/R4/http.html#read
async fn read(cx: &Context) -> Check {
    let unique = cx.unique();
    let created = cx.create(&patient(&unique)).await?;
    let id = string(&created["id"], "an id")?;
    let r = cx.fhir.get(&format!("Patient/{id}")).await?;
    let v = r.resource(&[200], "Patient")?;
    ensure!(v["id"] == id, "read Patient/{id} returned id {}", v["id"]);
    ensure!(
        v["name"][0]["family"] == format!("Conformance{unique}"),
        "the name sent did not come back: {}",
        v["name"]
    );
    let etag = r.header("etag").unwrap_or_default();
    ensure!(
        etag_version(etag).is_some_and(|e| v["meta"]["versionId"] == e),
        "expected ETag W/\"{}\" on the read, got {etag:?}",
        v["meta"]["versionId"].as_str().unwrap_or_default()
    );
    Ok(())
}

/// https://hl7.org/fhir/R4/http.html#mime-type: `Accept: application/fhir+xml` gets XML
/// (https://hl7.org/fhir/R4/xml.html), when the CapabilityStatement lists an XML format.
async fn read_xml(cx: &Context) -> Check {
    let formats: Vec<&str> = cx
        .caps
        .statement
        .as_ref()
        .and_then(|s| s["format"].as_array())
        .map(|l| l.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if !formats.iter().any(|f| f.contains("xml")) {
        return Err(super::Problem::Skip(format!(
            "the CapabilityStatement's formats {formats:?} include no XML"
        )));
    }
    let id = cx.create_id(&patient(&cx.unique())).await?;
    let r = cx
        .fhir
        .send(cx.fhir.request_accepting(
            Method::GET,
            &format!("Patient/{id}"),
            "application/fhir+xml",
        ))
        .await?;
    r.expect(&[200])?;
    let ct = r.header("content-type").unwrap_or_default();
    ensure!(
        ct.contains("xml"),
        "asked for application/fhir+xml, got Content-Type {ct:?}"
    );
    ensure!(
        r.text.contains("<Patient xmlns=\"http://hl7.org/fhir\"")
            && r.text.contains(&format!("<id value=\"{id}\"/>")),
        "expected <Patient xmlns=\"http://hl7.org/fhir\"> with <id value=\"{id}\"/>; {}",
        r.describe()
    );
    Ok(())
}

/// Updates Patient `created` with `gender`; returns the stored result.
async fn update_gender(
    cx: &Context,
    created: &Value,
    gender: &str,
) -> Result<Value, super::Problem> {
    let id = string(&created["id"], "an id")?;
    let mut changed = created.clone();
    changed["gender"] = json!(gender);
    cx.fhir
        .put(&format!("Patient/{id}"), &changed)
        .await?
        .resource(&[200], "Patient")
}

/// https://hl7.org/fhir/R4/http.html#update: 200 and a new meta.versionId; numeric versions
/// count up.
async fn update(cx: &Context) -> Check {
    let created = cx.create(&patient(&cx.unique())).await?;
    let updated = update_gender(cx, &created, "male").await?;
    let (v1, v2) = (&created["meta"]["versionId"], &updated["meta"]["versionId"]);
    ensure!(v1 != v2, "the versionId stayed {v1} after an update");
    if let (Some(a), Some(b)) = (
        v1.as_str().and_then(|s| s.parse::<u64>().ok()),
        v2.as_str().and_then(|s| s.parse::<u64>().ok()),
    ) {
        ensure!(b > a, "the versionId went from {a} to {b}");
    }
    let id = string(&created["id"], "an id")?;
    let read = cx
        .fhir
        .get(&format!("Patient/{id}"))
        .await?
        .resource(&[200], "Patient")?;
    ensure!(
        read["gender"] == "male",
        "a read after the update returned gender {}",
        read["gender"]
    );
    Ok(())
}

/// https://hl7.org/fhir/R4/http.html#vread
async fn vread(cx: &Context) -> Check {
    require(cx.caps.interaction("Patient", "vread"), "vread on Patient")?;
    let created = cx.create(&patient(&cx.unique())).await?;
    let updated = update_gender(cx, &created, "other").await?;
    let id = string(&created["id"], "an id")?;
    for (version, gender) in [(&created, "female"), (&updated, "other")] {
        let vid = string(&version["meta"]["versionId"], "meta.versionId")?;
        let v = cx
            .fhir
            .get(&format!("Patient/{id}/_history/{vid}"))
            .await?
            .resource(&[200], "Patient")?;
        ensure!(
            v["gender"] == gender && v["meta"]["versionId"] == vid,
            "version {vid} should have gender {gender}; got gender {} version {}",
            v["gender"],
            v["meta"]["versionId"]
        );
    }
    Ok(())
}

/// https://hl7.org/fhir/R4/http.html#concurrency: an If-Match naming an old version is 412.
async fn stale_update(cx: &Context) -> Check {
    require(
        cx.caps.interaction("Patient", "update"),
        "update on Patient",
    )?;
    let created = cx.create(&patient(&cx.unique())).await?;
    let old = string(&created["meta"]["versionId"], "meta.versionId")?.to_owned();
    update_gender(cx, &created, "male").await?;
    let id = string(&created["id"], "an id")?;
    let r = cx
        .fhir
        .send(
            cx.fhir
                .write(Method::PUT, &format!("Patient/{id}"), &created)
                .header("if-match", format!("W/\"{old}\"")),
        )
        .await?;
    ensure!(
        r.status == 412 || r.status == 409,
        "expected 412 (or 409) for If-Match W/\"{old}\" after a newer version; {}",
        r.describe()
    );
    Ok(())
}

/// https://hl7.org/fhir/R4/http.html#ccreate: with a match, 200 (or 304) and no new resource.
async fn conditional_create(cx: &Context) -> Check {
    require(
        cx.caps.flag("Patient", "conditionalCreate"),
        "conditionalCreate on Patient",
    )?;
    let unique = cx.unique();
    let body = patient(&unique);
    let condition = format!("identifier=urn:ietf:rfc:3986|urn:uuid:{unique}");
    let first = cx
        .fhir
        .send(
            cx.fhir
                .write(Method::POST, "Patient", &body)
                .header("if-none-exist", &condition),
        )
        .await?;
    let created = first.resource(&[201], "Patient")?;
    let id = string(&created["id"], "an id")?;
    cx.created(format!("Patient/{id}"));
    let again = cx
        .fhir
        .send(
            cx.fhir
                .write(Method::POST, "Patient", &body)
                .header("if-none-exist", &condition),
        )
        .await?;
    again.expect(&[200, 304])?;
    if let Ok(v) = again.json()
        && v["resourceType"] == "Patient"
    {
        ensure!(
            v["id"] == id,
            "the second create returned Patient/{} instead of the existing Patient/{id}",
            v["id"]
        );
    }
    let b = cx.fhir.search(&format!("Patient?{condition}")).await?;
    let n = super::client::ids(&b, "Patient", "match").len();
    ensure!(
        n == 1,
        "expected one Patient with the identifier, found {n}"
    );
    Ok(())
}

/// https://hl7.org/fhir/R4/http.html#cond-update: no match creates (201), one match updates it
/// (200, same id, new version).
async fn conditional_update(cx: &Context) -> Check {
    require(
        cx.caps.flag("Patient", "conditionalUpdate"),
        "conditionalUpdate on Patient",
    )?;
    let unique = cx.unique();
    let url = format!("Patient?identifier=urn:ietf:rfc:3986|urn:uuid:{unique}");
    let first = cx.fhir.put(&url, &patient(&unique)).await?;
    let created = first.resource(&[201], "Patient")?;
    let id = string(&created["id"], "an id")?;
    cx.created(format!("Patient/{id}"));
    let mut changed = patient(&unique);
    changed["gender"] = json!("male");
    let updated = cx
        .fhir
        .put(&url, &changed)
        .await?
        .resource(&[200], "Patient")?;
    ensure!(
        updated["id"] == id && updated["gender"] == "male",
        "expected Patient/{id} updated to gender male, got Patient/{} with gender {}",
        updated["id"],
        updated["gender"]
    );
    ensure!(
        updated["meta"]["versionId"] != created["meta"]["versionId"],
        "the conditional update did not make a new version"
    );
    Ok(())
}

/// https://hl7.org/fhir/R4/http.html#patch with JSON Patch (RFC 6902).
async fn patch(cx: &Context) -> Check {
    require(cx.caps.interaction("Patient", "patch"), "patch on Patient")?;
    if let Some(formats) = cx
        .caps
        .statement
        .as_ref()
        .and_then(|s| s["patchFormat"].as_array())
    {
        ensure!(
            !formats.is_empty(),
            "patchFormat is empty though patch is listed"
        );
        if !formats.iter().any(|f| f == "application/json-patch+json") {
            return Err(super::Problem::Skip(
                "patchFormat does not list application/json-patch+json".into(),
            ));
        }
    }
    let created = cx.create(&patient(&cx.unique())).await?;
    let id = string(&created["id"], "an id")?;
    let ops = json!([
        {"op": "test", "path": "/gender", "value": "female"},
        {"op": "replace", "path": "/gender", "value": "male"},
        {"op": "add", "path": "/name/0/given/-", "value": "Patched"}
    ]);
    let r = cx
        .fhir
        .send(
            cx.fhir
                .request(Method::PATCH, &format!("Patient/{id}"))
                .header("content-type", "application/json-patch+json")
                .header("prefer", "return=representation")
                .body(ops.to_string()),
        )
        .await?;
    r.expect(&[200])?;
    let v = cx
        .fhir
        .get(&format!("Patient/{id}"))
        .await?
        .resource(&[200], "Patient")?;
    ensure!(
        v["gender"] == "male" && v["name"][0]["given"] == json!(["Ada", "Patched"]),
        "after the patch expected gender male and given [Ada, Patched], got {} and {}",
        v["gender"],
        v["name"][0]["given"]
    );
    ensure!(
        v["meta"]["versionId"] != created["meta"]["versionId"],
        "the patch did not make a new version"
    );
    Ok(())
}

/// https://hl7.org/fhir/R4/http.html#delete: then a read is 410 Gone (or 404).
async fn delete(cx: &Context) -> Check {
    require(
        cx.caps.interaction("Patient", "delete"),
        "delete on Patient",
    )?;
    let created = cx.create(&patient(&cx.unique())).await?;
    let id = string(&created["id"], "an id")?;
    cx.fhir
        .delete(&format!("Patient/{id}"))
        .await?
        .expect(&[200, 202, 204])?;
    let r = cx.fhir.get(&format!("Patient/{id}")).await?;
    ensure!(
        r.status == 410 || r.status == 404,
        "expected 410 or 404 reading a deleted resource; {}",
        r.describe()
    );
    Ok(())
}

/// https://hl7.org/fhir/R4/http.html#history: a history Bundle, newest version first.
async fn history(cx: &Context) -> Check {
    require(
        cx.caps.interaction("Patient", "history-instance"),
        "history-instance on Patient",
    )?;
    let created = cx.create(&patient(&cx.unique())).await?;
    let updated = update_gender(cx, &created, "male").await?;
    let id = string(&created["id"], "an id")?;
    let r = cx.fhir.get(&format!("Patient/{id}/_history")).await?;
    let b = r.resource(&[200], "Bundle")?;
    ensure!(
        b["type"] == "history",
        "expected a history Bundle, got type {}",
        b["type"]
    );
    let versions: Vec<Value> = entries(&b)
        .iter()
        .map(|e| e["resource"]["meta"]["versionId"].clone())
        .collect();
    let want = vec![
        updated["meta"]["versionId"].clone(),
        created["meta"]["versionId"].clone(),
    ];
    ensure!(
        versions == want,
        "expected the versions {want:?} newest first, got {versions:?}"
    );
    Ok(())
}

/// https://hl7.org/fhir/R4/http.html#read: an unknown id is 404 Not Found.
async fn read_missing(cx: &Context) -> Check {
    let r = cx.fhir.get(&format!("Patient/{}", cx.unique())).await?;
    r.expect_outcome(&[404])
}

/// https://hl7.org/fhir/R4/http.html#Status-Codes: an unsupported type is 404 (or 400).
async fn unknown_type(cx: &Context) -> Check {
    let r = cx.fhir.get("NotAResourceType/1").await?;
    r.expect_outcome(&[400, 404])?;
    let r = cx
        .fhir
        .post(
            "NotAResourceType",
            &json!({"resourceType": "NotAResourceType"}),
        )
        .await?;
    r.expect_outcome(&[400, 404, 405, 422])
}

/// https://hl7.org/fhir/R4/http.html#2.21.0.7: a body that cannot be parsed is 400.
async fn malformed(cx: &Context) -> Check {
    let r = cx
        .fhir
        .send(
            cx.fhir
                .request(Method::POST, "Patient")
                .header("content-type", FHIR_JSON)
                .body(r#"{"resourceType": "Patient", "name": [{"family": "Broken""#),
        )
        .await?;
    r.expect_outcome(&[400])
}

/// The `response.status` of each entry of a batch/transaction response.
fn statuses(b: &Value) -> Vec<String> {
    entries(b)
        .iter()
        .map(|e| e["response"]["status"].as_str().unwrap_or("?").to_owned())
        .collect()
}

/// https://hl7.org/fhir/R4/http.html#brules: each entry succeeds or fails on its own.
async fn batch(cx: &Context) -> Check {
    require(cx.caps.system_interaction("batch"), "batch")?;
    let missing = cx.unique();
    let bundle = json!({
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"resource": patient(&cx.unique()), "request": {"method": "POST", "url": "Patient"}},
            {"request": {"method": "GET", "url": format!("Patient/{missing}")}}
        ]
    });
    let r = cx.fhir.post("", &bundle).await?;
    let b = r.resource(&[200], "Bundle")?;
    ensure!(
        b["type"] == "batch-response",
        "expected a batch-response, got type {}",
        b["type"]
    );
    if let Some(reference) = b["entry"][0]["response"]["location"]
        .as_str()
        .and_then(reference_of)
    {
        cx.created(reference);
    }
    let s = statuses(&b);
    ensure!(
        s.len() == 2 && s[0].starts_with("201") && s[1].starts_with("404"),
        "expected entry statuses [201, 404] (the create succeeds though the read fails), got {s:?}"
    );
    Ok(())
}

/// https://hl7.org/fhir/R4/http.html#trules: `urn:uuid:` fullUrls become the new references.
async fn transaction(cx: &Context) -> Check {
    require(cx.caps.system_interaction("transaction"), "transaction")?;
    let (p, o) = (
        format!("urn:uuid:{}", uuid::Uuid::new_v4()),
        format!("urn:uuid:{}", uuid::Uuid::new_v4()),
    );
    let mut obs = vital_sign("x", "8867-4", "64", "/min", "2024-01-02T08:00:00Z");
    obs["subject"] = json!({"reference": p});
    let bundle = json!({
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"fullUrl": o, "resource": obs, "request": {"method": "POST", "url": "Observation"}},
            {"fullUrl": p, "resource": patient(&cx.unique()), "request": {"method": "POST", "url": "Patient"}}
        ]
    });
    let r = cx.fhir.post("", &bundle).await?;
    let b = r.resource(&[200], "Bundle")?;
    ensure!(
        b["type"] == "transaction-response",
        "expected a transaction-response, got type {}",
        b["type"]
    );
    let s = statuses(&b);
    ensure!(
        s.len() == 2 && s.iter().all(|x| x.starts_with("201")),
        "expected entry statuses [201, 201], got {s:?}"
    );
    let location = |i: usize| {
        b["entry"][i]["response"]["location"]
            .as_str()
            .and_then(reference_of)
            .ok_or_else(|| {
                fail(format!(
                    "entry {i} has no response.location [type]/[id]: {}",
                    b["entry"][i]
                ))
            })
    };
    let (obs_ref, patient_ref) = (location(0)?, location(1)?);
    cx.created(patient_ref.clone());
    cx.created(obs_ref.clone());
    let stored = cx
        .fhir
        .get(&obs_ref)
        .await?
        .resource(&[200], "Observation")?;
    ensure!(
        stored["subject"]["reference"]
            .as_str()
            .is_some_and(|r| r.ends_with(&patient_ref)),
        "expected the Observation's subject to be {patient_ref}, got {}",
        stored["subject"]
    );
    Ok(())
}

/// https://hl7.org/fhir/R4/http.html#trules: a transaction succeeds or fails as a whole.
async fn atomic_transaction(cx: &Context) -> Check {
    require(cx.caps.system_interaction("transaction"), "transaction")?;
    let unique = cx.unique();
    let other = cx.unique();
    // An update whose body names another id than its URL is an error (http.html#update: 400).
    let mut mismatched = patient(&cx.unique());
    mismatched["id"] = json!(other);
    let bundle = json!({
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": patient(&unique), "request": {"method": "POST", "url": "Patient"}},
            {"resource": mismatched, "request": {"method": "PUT", "url": format!("Patient/{}", cx.unique())}}
        ]
    });
    let r = cx.fhir.post("", &bundle).await?;
    ensure!(
        (400..500).contains(&r.status),
        "expected a 4xx for a transaction with an invalid entry; {}",
        r.describe()
    );
    let b = cx
        .fhir
        .search(&format!(
            "Patient?identifier=urn:ietf:rfc:3986|urn:uuid:{unique}"
        ))
        .await?;
    let left = super::client::ids(&b, "Patient", "match");
    for id in &left {
        cx.created(format!("Patient/{id}"));
    }
    ensure!(
        left.is_empty(),
        "the failed transaction's other entry was kept: Patient {left:?}"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn etag_versions() {
        assert_eq!(super::etag_version("W/\"3\""), Some("3"));
        assert_eq!(super::etag_version("\"abc\""), Some("abc"));
        assert_eq!(super::etag_version("3"), None);
    }
}
