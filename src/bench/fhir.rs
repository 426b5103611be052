//! Request bodies and response id extraction.
//!
//! Bodies are written straight into a pre-sized `String` from fixed JSON
//! fragments instead of going through `serde_json::Value`: the generator
//! shares its CPUs with the server under test, and a templated body costs one
//! allocation and a few copies per request.

use std::borrow::Cow;
use std::fmt::Write as _;

use serde::Deserialize;

use super::stats::ErrKind;

pub const FHIR_JSON: &str = "application/fhir+json";

/// Is `s` a valid FHIR `id` (`[A-Za-z0-9\-\.]{1,64}`)? Ids from the server are
/// pasted into URLs and JSON bodies unescaped, so anything else is rejected.
pub fn is_fhir_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// Extracts the logical id from a `Location`/`Content-Location` value or a
/// transaction `response.location`, absolute or relative, with or without
/// `/_history/{vid}`: `http://h/fhir/Observation/123/_history/1` → `123`.
pub fn id_from_location<'a>(location: &'a str, resource_type: &str) -> Option<&'a str> {
    let path = location.split(['?', '#']).next().unwrap_or(location);
    let segments: Vec<&str> = path.split('/').collect();
    // The last `{type}/{id}` pair wins, so a base path that happens to contain
    // the type name (e.g. `/Observation-gw/fhir/...`) cannot confuse it.
    segments
        .windows(2)
        .rev()
        .find(|w| w[0] == resource_type && is_fhir_id(w[1]))
        .map(|w| w[1])
}

/// Extracts `id` from a JSON resource body if its `resourceType` matches
/// (an OperationOutcome returned with a 2xx status must not pass for one).
pub fn id_from_body(body: &[u8], resource_type: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct IdOnly {
        #[serde(rename = "resourceType")]
        resource_type: Option<String>,
        id: Option<String>,
    }
    let parsed: IdOnly = serde_json::from_slice(body).ok()?;
    if parsed.resource_type.as_deref() != Some(resource_type) {
        return None;
    }
    parsed.id.filter(|id| is_fhir_id(id))
}

/// Ids of the resources created by a transaction, in entry order, from a
/// `transaction-response` Bundle. `None` unless every entry succeeded and
/// yields an id, so the caller can fall back to single POSTs.
pub fn ids_from_transaction_response(
    body: &[u8],
    resource_type: &str,
    expected: usize,
) -> Option<Vec<String>> {
    let bundle: serde_json::Value = serde_json::from_slice(body).ok()?;
    if bundle.get("resourceType")?.as_str()? != "Bundle" {
        return None;
    }
    let entries = bundle.get("entry")?.as_array()?;
    if entries.len() != expected {
        return None;
    }
    let mut ids = Vec::with_capacity(expected);
    for entry in entries {
        let response = entry.get("response");
        if let Some(status) = response
            .and_then(|r| r.get("status"))
            .and_then(|s| s.as_str())
            && !status.trim_start().starts_with('2')
        {
            return None;
        }
        let from_location = response
            .and_then(|r| r.get("location"))
            .and_then(|l| l.as_str())
            .and_then(|l| id_from_location(l, resource_type));
        let from_resource = || {
            let res = entry.get("resource")?;
            (res.get("resourceType")?.as_str()? == resource_type)
                .then(|| res.get("id")?.as_str())
                .flatten()
                .filter(|id| is_fhir_id(id))
        };
        ids.push(from_location.or_else(from_resource)?.to_owned());
    }
    Some(ids)
}

/// What a search response must contain to count as a success.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SearchExpect {
    /// Type of the resources of the `match` entries.
    pub resource_type: &'static str,
    /// The request asked for `_total=accurate`, so `Bundle.total` must be there.
    pub need_total: bool,
}

/// Checks that `body` is a `searchset` Bundle with at least one `match` entry,
/// all of `expect.resource_type`, and returns how many there are. Entries of
/// other modes (`include`, `outcome`) are not counted: a server that ignores
/// a parameter and only answers with a warning must not pass for one that
/// found something. Only the fields checked are kept; the resources' other
/// content is skipped by the parser without being built.
pub fn check_searchset(body: &[u8], expect: SearchExpect) -> Result<usize, (ErrKind, String)> {
    #[derive(Deserialize)]
    struct Head<'a> {
        #[serde(rename = "resourceType", borrow)]
        resource_type: Option<Cow<'a, str>>,
        #[serde(rename = "type", borrow)]
        bundle_type: Option<Cow<'a, str>>,
        total: Option<u64>,
        #[serde(default, borrow)]
        entry: Vec<EntryHead<'a>>,
    }
    #[derive(Deserialize)]
    struct EntryHead<'a> {
        #[serde(borrow)]
        search: Option<SearchHead<'a>>,
        #[serde(borrow)]
        resource: Option<ResourceHead<'a>>,
    }
    #[derive(Deserialize)]
    struct SearchHead<'a> {
        #[serde(borrow)]
        mode: Option<Cow<'a, str>>,
    }
    #[derive(Deserialize)]
    struct ResourceHead<'a> {
        #[serde(rename = "resourceType", borrow)]
        resource_type: Option<Cow<'a, str>>,
    }

    let bad = |msg: String| (ErrKind::BadBundle, msg);
    let head: Head<'_> =
        serde_json::from_slice(body).map_err(|e| bad(format!("not a JSON Bundle: {e}")))?;
    match head.resource_type.as_deref() {
        Some("Bundle") => {}
        other => return Err(bad(format!("resourceType {other:?} instead of Bundle"))),
    }
    if head.bundle_type.as_deref() != Some("searchset") {
        return Err(bad(format!(
            "Bundle.type {:?} instead of searchset",
            head.bundle_type
        )));
    }
    if expect.need_total && head.total.is_none() {
        return Err(bad(
            "no Bundle.total although _total=accurate was asked".into()
        ));
    }
    let mut matches = 0;
    for e in &head.entry {
        let mode = e.search.as_ref().and_then(|s| s.mode.as_deref());
        if !matches!(mode, None | Some("match")) {
            continue;
        }
        let ty = e.resource.as_ref().and_then(|r| r.resource_type.as_deref());
        if ty != Some(expect.resource_type) {
            return Err(bad(format!(
                "a match entry holds {ty:?} instead of {}",
                expect.resource_type
            )));
        }
        matches += 1;
    }
    if let Some(total) = head.total
        && total < matches as u64
    {
        return Err(bad(format!(
            "Bundle.total {total} < {matches} matches on the page"
        )));
    }
    if matches == 0 {
        return Err((
            ErrKind::Empty,
            format!(
                "searchset without a {} match (total {:?}, {} entries)",
                expect.resource_type,
                head.total,
                head.entry.len()
            ),
        ));
    }
    Ok(matches)
}

const OBS_HEAD: &str = r#"{"resourceType":"Observation","#;
const OBS_BODY: &str = concat!(
    r#""status":"final","category":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"vital-signs","display":"Vital Signs"}]}],"#,
    r#""code":{"coding":[{"system":"http://loinc.org","code":"8867-4","display":"Heart rate"}],"text":"Heart rate"},"#,
    r#""subject":{"reference":"Patient/"#
);

/// A heart-rate vital-signs Observation (LOINC 8867-4, UCUM `/min`), with
/// `id` set for updates.
pub fn observation_json(id: Option<&str>, patient_id: &str, effective: &str, bpm: u32) -> String {
    let mut out = String::with_capacity(640);
    out.push_str(OBS_HEAD);
    if let Some(id) = id {
        out.push_str(r#""id":""#);
        out.push_str(id);
        out.push_str(r#"","#);
    }
    out.push_str(OBS_BODY);
    out.push_str(patient_id);
    out.push_str(r#""},"effectiveDateTime":""#);
    out.push_str(effective);
    out.push_str(r#"","valueQuantity":{"value":"#);
    // Writing to a String cannot fail.
    let _ = write!(out, "{bpm}");
    out.push_str(r#","unit":"beats/minute","system":"http://unitsofmeasure.org","code":"/min"}}"#);
    out
}

/// A Patient for the seed pool and the mixed scenario. `tag` makes it
/// identifiable (identifier value); `rev` changes on every update so each PUT
/// carries a real change.
pub fn patient_json(id: Option<&str>, tag: &str, rev: u64) -> String {
    let mut out = String::with_capacity(384);
    out.push_str(r#"{"resourceType":"Patient","#);
    if let Some(id) = id {
        out.push_str(r#""id":""#);
        out.push_str(id);
        out.push_str(r#"","#);
    }
    out.push_str(r#""active":true,"identifier":[{"system":"urn:vitalbridge:bench","value":""#);
    out.push_str(tag);
    out.push_str(r#""}],"name":[{"family":"Bench","given":["Load","R"#);
    let _ = write!(out, "{rev}");
    out.push_str(r#""]}],"gender":"unknown","birthDate":"#);
    let _ = write!(out, "\"{}-01-01\"", 1940 + rev % 60);
    out.push('}');
    out
}

/// A `transaction` Bundle POSTing each of `resources` (already serialized
/// JSON of type `resource_type`).
pub fn transaction_bundle(resource_type: &str, resources: &[String]) -> String {
    let total: usize = resources.iter().map(|r| r.len() + 128).sum();
    let mut out = String::with_capacity(total + 64);
    out.push_str(r#"{"resourceType":"Bundle","type":"transaction","entry":["#);
    for (i, res) in resources.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(r#"{"fullUrl":"urn:uuid:"#);
        out.push_str(&uuid::Uuid::new_v4().to_string());
        out.push_str(r#"","resource":"#);
        out.push_str(res);
        out.push_str(r#","request":{"method":"POST","url":""#);
        out.push_str(resource_type);
        out.push_str(r#""}}"#);
    }
    out.push_str("]}");
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a panic is how a test fails
mod tests {
    use super::*;

    #[test]
    fn location_ids() {
        assert_eq!(
            id_from_location(
                "http://h:8080/fhir/Observation/abc-1/_history/2",
                "Observation"
            ),
            Some("abc-1")
        );
        assert_eq!(
            id_from_location("Observation/42", "Observation"),
            Some("42")
        );
        assert_eq!(
            id_from_location(
                "/Observation/x/fhir/Observation/7?_format=json",
                "Observation"
            ),
            Some("7")
        );
        assert_eq!(id_from_location("Patient/42", "Observation"), None);
        assert_eq!(id_from_location("Observation/", "Observation"), None);
        assert_eq!(id_from_location("Observation/a%20b", "Observation"), None);
    }

    #[test]
    fn body_ids_require_matching_type() {
        assert_eq!(
            id_from_body(
                br#"{"resourceType":"Patient","id":"p1","meta":{}}"#,
                "Patient"
            ),
            Some("p1".into())
        );
        assert_eq!(
            id_from_body(
                br#"{"resourceType":"OperationOutcome","id":"x"}"#,
                "Patient"
            ),
            None
        );
        assert_eq!(id_from_body(b"", "Patient"), None);
        assert_eq!(
            id_from_body(br#"{"resourceType":"Patient","id":"a/b"}"#, "Patient"),
            None
        );
    }

    #[test]
    fn bodies_are_valid_json_with_expected_fields() {
        let obs: serde_json::Value = serde_json::from_str(&observation_json(
            Some("o1"),
            "p9",
            "2024-01-01T00:00:00Z",
            77,
        ))
        .unwrap();
        assert_eq!(obs["id"], "o1");
        assert_eq!(obs["code"]["coding"][0]["code"], "8867-4");
        assert_eq!(obs["category"][0]["coding"][0]["code"], "vital-signs");
        assert_eq!(obs["subject"]["reference"], "Patient/p9");
        assert_eq!(obs["valueQuantity"]["code"], "/min");
        assert_eq!(obs["valueQuantity"]["value"].to_string(), "77");
        let obs: serde_json::Value =
            serde_json::from_str(&observation_json(None, "p9", "2024-01-01T00:00:00Z", 77))
                .unwrap();
        assert!(obs.get("id").is_none());

        let pat: serde_json::Value =
            serde_json::from_str(&patient_json(Some("p1"), "t-1", 65)).unwrap();
        assert_eq!(pat["id"], "p1");
        assert_eq!(pat["birthDate"], "1945-01-01");
        assert_eq!(pat["name"][0]["given"][1], "R65");
    }

    #[test]
    fn searchset_checks() {
        let obs = SearchExpect {
            resource_type: "Observation",
            need_total: false,
        };
        let ok = br#"{"resourceType":"Bundle","type":"searchset","entry":[
            {"fullUrl":"x","resource":{"resourceType":"Observation","id":"a","valueQuantity":{"value":1.50}},"search":{"mode":"match"}},
            {"resource":{"resourceType":"Observation","id":"b"}},
            {"resource":{"resourceType":"Patient","id":"p"},"search":{"mode":"include"}},
            {"resource":{"resourceType":"OperationOutcome"},"search":{"mode":"outcome"}}]}"#;
        assert_eq!(check_searchset(ok, obs), Ok(2));
        let kind = |body: &[u8], e| check_searchset(body, e).map_err(|(k, _)| k);
        // A warning alone is not a result.
        let only_outcome = br#"{"resourceType":"Bundle","type":"searchset","total":0,"entry":[
            {"resource":{"resourceType":"OperationOutcome"},"search":{"mode":"outcome"}}]}"#;
        assert_eq!(kind(only_outcome, obs), Err(ErrKind::Empty));
        assert_eq!(
            kind(br#"{"resourceType":"Bundle","type":"searchset"}"#, obs),
            Err(ErrKind::Empty)
        );
        assert_eq!(
            kind(br#"{"resourceType":"OperationOutcome"}"#, obs),
            Err(ErrKind::BadBundle)
        );
        assert_eq!(
            kind(
                br#"{"resourceType":"Bundle","type":"history","entry":[]}"#,
                obs
            ),
            Err(ErrKind::BadBundle)
        );
        assert_eq!(kind(b"<html>", obs), Err(ErrKind::BadBundle));
        let wrong_type = br#"{"resourceType":"Bundle","type":"searchset","entry":[
            {"resource":{"resourceType":"Patient","id":"p"}}]}"#;
        assert_eq!(kind(wrong_type, obs), Err(ErrKind::BadBundle));
        let with_total = SearchExpect {
            need_total: true,
            ..obs
        };
        assert_eq!(kind(ok, with_total), Err(ErrKind::BadBundle));
        let totalled = br#"{"resourceType":"Bundle","type":"searchset","total":123456,"entry":[
            {"resource":{"resourceType":"Observation","id":"a"}}]}"#;
        assert_eq!(check_searchset(totalled, with_total), Ok(1));
        let short_total = br#"{"resourceType":"Bundle","type":"searchset","total":0,"entry":[
            {"resource":{"resourceType":"Observation","id":"a"}}]}"#;
        assert_eq!(kind(short_total, obs), Err(ErrKind::BadBundle));
    }

    #[test]
    fn transaction_round_trip() {
        let bundle: serde_json::Value = serde_json::from_str(&transaction_bundle(
            "Patient",
            &[patient_json(None, "a", 1), patient_json(None, "b", 2)],
        ))
        .unwrap();
        assert_eq!(bundle["entry"].as_array().map(Vec::len), Some(2));
        assert_eq!(bundle["entry"][1]["request"]["url"], "Patient");

        let resp = br#"{"resourceType":"Bundle","type":"transaction-response","entry":[
            {"response":{"status":"201 Created","location":"Patient/a1/_history/1"}},
            {"resource":{"resourceType":"Patient","id":"b2"},"response":{"status":"201"}}]}"#;
        assert_eq!(
            ids_from_transaction_response(resp, "Patient", 2),
            Some(vec!["a1".to_string(), "b2".to_string()])
        );
        assert_eq!(ids_from_transaction_response(resp, "Patient", 3), None);
        let failed = br#"{"resourceType":"Bundle","entry":[{"response":{"status":"400","location":"Patient/a"}}]}"#;
        assert_eq!(ids_from_transaction_response(failed, "Patient", 1), None);
    }
}
