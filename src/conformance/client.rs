//! The HTTP side of the checks: a FHIR client for the server under test, whole responses with
//! helpers that turn surprises into failure messages, and what the server's CapabilityStatement
//! advertises.

use std::collections::BTreeSet;

use reqwest::Method;
use reqwest::header::HeaderMap;
use serde_json::Value;

use super::runner::{Problem, ensure, fail};

/// FHIR's JSON media type (https://hl7.org/fhir/R4/http.html#mime-type).
pub const FHIR_JSON: &str = "application/fhir+json";

/// A response read whole.
#[derive(Debug, Clone)]
pub struct Resp {
    pub method: Method,
    pub url: String,
    pub status: u16,
    pub headers: HeaderMap,
    pub text: String,
}

/// At most this many characters of a body go into a failure message.
const SHOWN: usize = 400;

impl Resp {
    /// `GET …/Patient?x=1 answered 500: {"resourceType":…}`: for failure messages.
    pub fn describe(&self) -> String {
        let body: String = self.text.chars().take(SHOWN).collect();
        let more = if self.text.chars().count() > SHOWN {
            "…"
        } else {
            ""
        };
        let body = if body.is_empty() {
            "(empty body)".to_owned()
        } else {
            body
        };
        format!(
            "{} {} answered {}: {body}{more}",
            self.method, self.url, self.status
        )
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as JSON, or a failure saying what came instead.
    pub fn json(&self) -> Result<Value, Problem> {
        serde_json::from_str(&self.text)
            .map_err(|e| fail(format!("expected a JSON body ({e}); {}", self.describe())))
    }

    /// Fails unless the status is one of `expected`.
    pub fn expect(&self, expected: &[u16]) -> Result<&Resp, Problem> {
        ensure!(
            expected.contains(&self.status),
            "expected status {}; {}",
            expected
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(" or "),
            self.describe()
        );
        Ok(self)
    }

    /// The body, which must be a `resource_type` resource, after the status is one of
    /// `expected`.
    pub fn resource(&self, expected: &[u16], resource_type: &str) -> Result<Value, Problem> {
        self.expect(expected)?;
        let v = self.json()?;
        ensure!(
            v["resourceType"] == resource_type,
            "expected a {resource_type}; {}",
            self.describe()
        );
        Ok(v)
    }

    /// Fails unless this is a 4xx answer whose body is an OperationOutcome with an issue
    /// (https://hl7.org/fhir/R4/http.html#Status-Codes: errors SHOULD carry one).
    pub fn expect_outcome(&self, expected: &[u16]) -> Result<(), Problem> {
        self.expect(expected)?;
        let v = self.json()?;
        ensure!(
            v["resourceType"] == "OperationOutcome"
                && v["issue"].as_array().is_some_and(|i| !i.is_empty()),
            "expected an OperationOutcome with at least one issue; {}",
            self.describe()
        );
        Ok(())
    }
}

/// A FHIR REST client for the server under test.
#[derive(Clone)]
pub struct Fhir {
    pub http: reqwest::Client,
    /// The FHIR base URL, without a trailing slash.
    pub base: String,
    pub token: Option<String>,
}

impl Fhir {
    pub fn new(base: &str, token: Option<String>) -> anyhow::Result<Fhir> {
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Fhir {
            http,
            base: base.trim_end_matches('/').to_owned(),
            token,
        })
    }

    /// `path` relative to the base, or an absolute URL (a next link) as it is.
    pub fn url(&self, path: &str) -> String {
        if path.is_empty() {
            // Batches and transactions are posted to the base itself.
            self.base.clone()
        } else if path.starts_with("http://") || path.starts_with("https://") {
            path.to_owned()
        } else {
            format!("{}/{}", self.base, path.trim_start_matches('/'))
        }
    }

    /// A request with the token and `Accept: application/fhir+json`.
    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.request_accepting(method, path, FHIR_JSON)
    }

    /// A request with the token and `Accept: accept` (one Accept header: reqwest adds a second
    /// rather than replacing the first).
    pub fn request_accepting(
        &self,
        method: Method,
        path: &str,
        accept: &str,
    ) -> reqwest::RequestBuilder {
        let r = self
            .http
            .request(method, self.url(path))
            .header("accept", accept);
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    pub async fn send(&self, req: reqwest::RequestBuilder) -> Result<Resp, Problem> {
        let req = req.build()?;
        let (method, url) = (req.method().clone(), req.url().to_string());
        let resp = self.http.execute(req).await?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await?;
        Ok(Resp {
            method,
            url,
            status,
            headers,
            text,
        })
    }

    pub async fn get(&self, path: &str) -> Result<Resp, Problem> {
        self.send(self.request(Method::GET, path)).await
    }

    /// A write of `body` as FHIR JSON; `Prefer: return=representation` asks for the stored
    /// resource back (https://hl7.org/fhir/R4/http.html#ops).
    pub fn write(&self, method: Method, path: &str, body: &Value) -> reqwest::RequestBuilder {
        self.request(method, path)
            .header("content-type", FHIR_JSON)
            .header("prefer", "return=representation")
            .body(body.to_string())
    }

    pub async fn post(&self, path: &str, body: &Value) -> Result<Resp, Problem> {
        self.send(self.write(Method::POST, path, body)).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> Result<Resp, Problem> {
        self.send(self.write(Method::PUT, path, body)).await
    }

    pub async fn delete(&self, path: &str) -> Result<Resp, Problem> {
        self.send(self.request(Method::DELETE, path)).await
    }

    /// Searches with `query` (`Observation?subject=…`) and returns the searchset Bundle.
    pub async fn search(&self, query: &str) -> Result<Value, Problem> {
        let r = self.get(query).await?;
        let b = r.resource(&[200], "Bundle")?;
        ensure!(
            b["type"] == "searchset",
            "expected a searchset Bundle; {}",
            r.describe()
        );
        Ok(b)
    }
}

impl Fhir {
    /// Searches with `query` and fails unless its matches are exactly `expected`; the Bundle.
    pub async fn expect_search(
        &self,
        query: &str,
        resource_type: &str,
        expected: &[&String],
    ) -> Result<Value, Problem> {
        let b = self.search(query).await?;
        expect_ids(&b, resource_type, expected, query)?;
        Ok(b)
    }
}

/// The ids of a Bundle's entries of `resource_type` whose search mode is `mode` (`match` also
/// takes entries without a mode: the mode is optional, https://hl7.org/fhir/R4/search.html#2.21.1.2).
pub fn ids(bundle: &Value, resource_type: &str, mode: &str) -> BTreeSet<String> {
    entries(bundle)
        .iter()
        .filter(|e| {
            e["resource"]["resourceType"] == resource_type
                && (e["search"]["mode"] == mode
                    || (mode == "match" && e["search"]["mode"].is_null()))
        })
        .filter_map(|e| e["resource"]["id"].as_str().map(str::to_owned))
        .collect()
}

pub fn entries(bundle: &Value) -> Vec<Value> {
    bundle["entry"].as_array().cloned().unwrap_or_default()
}

/// `Type/id` of a Location or `response.location` (`[base]/Type/id[/_history/vid]`).
pub fn reference_of(location: &str) -> Option<String> {
    let path = location.split("/_history").next().unwrap_or(location);
    let mut parts = path.trim_end_matches('/').rsplit('/');
    let id = parts.next().filter(|s| !s.is_empty())?;
    let ty = parts.next().filter(|s| !s.is_empty())?;
    Some(format!("{ty}/{id}"))
}

/// The URL of a Bundle's link `relation` (`next`, `self`).
pub fn link(bundle: &Value, relation: &str) -> Option<String> {
    bundle["link"]
        .as_array()?
        .iter()
        .find(|l| l["relation"] == relation)
        .and_then(|l| l["url"].as_str())
        .map(str::to_owned)
}

/// Fails unless the match entries of `bundle` are exactly `expected` (ids of `resource_type`).
pub fn expect_ids(
    bundle: &Value,
    resource_type: &str,
    expected: &[&String],
    what: &str,
) -> Result<(), Problem> {
    let got = ids(bundle, resource_type, "match");
    let want: BTreeSet<String> = expected.iter().map(|s| (*s).clone()).collect();
    ensure!(
        got == want,
        "{what}: expected the {resource_type} resources {want:?}, got {got:?} ({} entries)",
        entries(bundle).len()
    );
    if let Some(total) = bundle["total"].as_u64() {
        ensure!(
            total as usize == want.len(),
            "{what}: Bundle.total is {total}, but {} resources match",
            want.len()
        );
    }
    Ok(())
}

/// Whether the server advertises something: `Unknown` when its CapabilityStatement does not
/// describe resources at all (a stub), so that the check runs rather than being skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Advertised {
    Yes,
    No,
    Unknown,
}

/// The server's CapabilityStatement (https://hl7.org/fhir/R4/capabilitystatement.html).
#[derive(Debug, Clone, Default)]
pub struct Capabilities {
    pub statement: Option<Value>,
}

impl Capabilities {
    fn rest(&self) -> Option<&Value> {
        self.statement.as_ref()?["rest"]
            .as_array()?
            .iter()
            .find(|r| r["mode"] == "server")
    }

    /// `rest.resource` of `ty`; `Err(Unknown)` when no resource is described at all.
    fn resource(&self, ty: &str) -> Result<&Value, Advertised> {
        let list = self
            .rest()
            .and_then(|r| r["resource"].as_array())
            .filter(|l| !l.is_empty())
            .ok_or(Advertised::Unknown)?;
        list.iter().find(|r| r["type"] == ty).ok_or(Advertised::No)
    }

    fn has(list: &Value, key: &str, value: &str) -> bool {
        list.as_array()
            .is_some_and(|l| l.iter().any(|x| x[key] == value))
    }

    /// A type-level interaction (`read`, `patch`, `history-instance`, …).
    pub fn interaction(&self, ty: &str, code: &str) -> Advertised {
        match self.resource(ty) {
            Err(a) => a,
            Ok(r) if Self::has(&r["interaction"], "code", code) => Advertised::Yes,
            Ok(_) => Advertised::No,
        }
    }

    /// A system-level interaction (`batch`, `transaction`); `Unknown` on a stub.
    pub fn system_interaction(&self, code: &str) -> Advertised {
        match self.rest().map(|r| &r["interaction"]) {
            Some(list) if Self::has(list, "code", code) => Advertised::Yes,
            _ if self.resource("Patient") == Err(Advertised::Unknown) => Advertised::Unknown,
            _ => Advertised::No,
        }
    }

    /// A search parameter of `ty`: the common `_…` ones count when listed at the system level.
    pub fn search_param(&self, ty: &str, name: &str) -> Advertised {
        let system = self
            .rest()
            .is_some_and(|r| Self::has(&r["searchParam"], "name", name));
        match self.resource(ty) {
            Err(a) => a,
            Ok(r) if system || Self::has(&r["searchParam"], "name", name) => Advertised::Yes,
            Ok(_) => Advertised::No,
        }
    }

    /// An `_include` (`Observation:subject`) or `_revinclude` (`searchRevInclude`) value.
    pub fn include(&self, ty: &str, list: &str, value: &str) -> Advertised {
        match self.resource(ty) {
            Err(a) => a,
            Ok(r) => {
                let star = format!("{}:*", value.split(':').next().unwrap_or_default());
                let listed = r[list].as_array().is_some_and(|l| {
                    l.iter()
                        .any(|v| v == value || v == "*" || v == star.as_str())
                });
                if listed {
                    Advertised::Yes
                } else {
                    Advertised::No
                }
            }
        }
    }

    /// A boolean flag of the type (`conditionalCreate`).
    pub fn flag(&self, ty: &str, flag: &str) -> Advertised {
        match self.resource(ty) {
            Err(a) => a,
            Ok(r) if r[flag] == true => Advertised::Yes,
            Ok(_) => Advertised::No,
        }
    }

    /// An operation of `ty` (`lastn`): only `Yes` when listed, operations are never assumed.
    pub fn operation(&self, ty: &str, name: &str) -> bool {
        self.resource(ty)
            .is_ok_and(|r| Self::has(&r["operation"], "name", name))
    }

    /// The type's extensions with `url` (the Backport IG's topic canonicals).
    pub fn resource_extensions(&self, ty: &str, url: &str) -> Vec<String> {
        self.resource(ty)
            .ok()
            .and_then(|r| r["extension"].as_array())
            .map(|l| {
                l.iter()
                    .filter(|e| e["url"] == url)
                    .filter_map(|e| e["valueCanonical"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `rest.security`.
    pub fn security(&self) -> Option<&Value> {
        self.rest().map(|r| &r["security"]).filter(|s| !s.is_null())
    }
}

/// Turns "not advertised" into a skip saying `what` is missing.
pub fn require(a: Advertised, what: &str) -> Result<(), Problem> {
    match a {
        Advertised::No => Err(Problem::Skip(format!(
            "the CapabilityStatement does not advertise {what}"
        ))),
        Advertised::Yes | Advertised::Unknown => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn references_of_locations() {
        assert_eq!(
            reference_of("http://h/fhir/Patient/12/_history/1").as_deref(),
            Some("Patient/12")
        );
        assert_eq!(
            reference_of("Observation/a").as_deref(),
            Some("Observation/a")
        );
        assert_eq!(reference_of("x"), None);
    }

    #[test]
    fn a_stub_statement_advertises_nothing_and_denies_nothing() {
        let stub = Capabilities {
            statement: Some(
                json!({"resourceType": "CapabilityStatement", "rest": [{"mode": "server"}]}),
            ),
        };
        assert_eq!(stub.interaction("Patient", "patch"), Advertised::Unknown);
        assert_eq!(stub.system_interaction("batch"), Advertised::Unknown);
        assert!(!stub.operation("Observation", "lastn"));
    }

    #[test]
    fn listed_types_answer_for_themselves() {
        let caps = Capabilities {
            statement: Some(json!({"rest": [{"mode": "server",
                "interaction": [{"code": "batch"}],
                "searchParam": [{"name": "_id"}],
                "resource": [{"type": "Patient", "interaction": [{"code": "read"}],
                    "searchParam": [{"name": "family"}], "searchRevInclude": ["*"],
                    "searchInclude": ["Patient:organization"], "conditionalCreate": true,
                    "operation": [{"name": "everything"}]}]}]})),
        };
        assert_eq!(caps.interaction("Patient", "read"), Advertised::Yes);
        assert_eq!(caps.interaction("Patient", "patch"), Advertised::No);
        assert_eq!(caps.interaction("Device", "read"), Advertised::No);
        assert_eq!(caps.system_interaction("batch"), Advertised::Yes);
        assert_eq!(caps.system_interaction("transaction"), Advertised::No);
        assert_eq!(caps.search_param("Patient", "_id"), Advertised::Yes);
        assert_eq!(caps.search_param("Patient", "given"), Advertised::No);
        assert_eq!(
            caps.include("Patient", "searchRevInclude", "Observation:subject"),
            Advertised::Yes
        );
        assert_eq!(
            caps.include("Patient", "searchInclude", "Patient:general-practitioner"),
            Advertised::No
        );
        assert_eq!(caps.flag("Patient", "conditionalCreate"), Advertised::Yes);
        assert!(caps.operation("Patient", "everything"));
        assert!(matches!(
            require(Advertised::No, "patch on Patient"),
            Err(Problem::Skip(_))
        ));
    }
}
