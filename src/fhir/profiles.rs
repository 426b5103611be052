//! The device-data profiles of `fhir-profiles/` (issue 5, item 3): StructureDefinitions the
//! server serves, claims in the Observations it produces, and validates resources against
//! (`$validate`, and every reading before it is stored).
//!
//! What a profile's differential may say, and is checked (http://hl7.org/fhir/R4/profiling.html):
//! - `min` / `max` of an element, counted under each occurrence of its parent (choice elements
//!   `value[x]` count any of their types);
//! - `patternCodeableConcept`: every value holds each of the pattern's codings (system and
//!   code); `fixedCode`: every value equals it;
//! - `constraint` with a FHIRPath `expression`, evaluated on the resource; it holds when the
//!   result is `true`;
//! - `baseDefinition` naming another of these profiles: its rules apply too (the R4 base
//!   definition is the structural validation every write passes already).
//!
//! Slicing is not used by these profiles and not interpreted.

use std::sync::LazyLock;

use serde_json::Value;

use crate::http::error::Issue;
use crate::search::fhirpath::{self, Expr};

/// The StructureDefinitions, as shipped in `fhir-profiles/`.
const SOURCES: &[&str] = &[
    include_str!("../../fhir-profiles/vb-device-observation.json"),
    include_str!("../../fhir-profiles/vb-blood-pressure.json"),
    include_str!("../../fhir-profiles/vb-heart-rate.json"),
    include_str!("../../fhir-profiles/vb-body-weight.json"),
    include_str!("../../fhir-profiles/vb-body-height.json"),
    include_str!("../../fhir-profiles/vb-bmi.json"),
    include_str!("../../fhir-profiles/vb-body-fat.json"),
    include_str!("../../fhir-profiles/vb-body-temperature.json"),
    include_str!("../../fhir-profiles/vb-oxygen-saturation.json"),
    include_str!("../../fhir-profiles/vb-blood-glucose.json"),
    include_str!("../../fhir-profiles/vb-bp-status.json"),
    include_str!("../../fhir-profiles/vb-catalog-entry.json"),
];

/// The canonical URL prefix of these profiles.
pub const BASE: &str = "https://vitalbridge.dev/fhir/StructureDefinition/";

/// One profile, ready to check.
pub struct Profile {
    pub url: String,
    pub id: String,
    pub ty: String,
    pub base: String,
    /// The StructureDefinition as shipped.
    pub resource: Value,
    elements: Vec<ElementRule>,
    constraints: Vec<Constraint>,
}

struct ElementRule {
    path: String,
    /// The parent's path, evaluated on the resource (`None`: the resource itself).
    parent: Option<Expr>,
    /// The element's name under its parent (`value[x]` as `value` with any type suffix).
    name: String,
    choice: bool,
    min: usize,
    max: Option<usize>,
    pattern: Option<Value>,
    fixed: Option<Value>,
}

struct Constraint {
    key: String,
    human: String,
    expr: Expr,
}

/// Every shipped profile, parsed once. A profile that cannot be parsed is a build defect:
/// the unit tests parse them all.
pub static PROFILES: LazyLock<Vec<Profile>> = LazyLock::new(|| {
    SOURCES
        .iter()
        .filter_map(|s| match parse(s) {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::error!(error = %e, "a shipped profile cannot be parsed");
                None
            }
        })
        .collect()
});

pub fn profile(url: &str) -> Option<&'static Profile> {
    let url = url.split('|').next().unwrap_or(url);
    PROFILES.iter().find(|p| p.url == url)
}

fn parse(text: &str) -> Result<Profile, String> {
    let resource: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let field = |k: &str| {
        resource[k]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("a profile without {k}"))
    };
    let (url, id, ty, base) = (
        field("url")?,
        field("id")?,
        field("type")?,
        field("baseDefinition")?,
    );
    let mut elements = Vec::new();
    let mut constraints = Vec::new();
    for e in resource["differential"]["element"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let path = e["path"].as_str().ok_or("an element without path")?;
        for c in e["constraint"].as_array().into_iter().flatten() {
            let expression = c["expression"]
                .as_str()
                .ok_or("a constraint without expression")?;
            let expr =
                fhirpath::parse(expression).map_err(|err| format!("{id} {}: {err:?}", c["key"]))?;
            constraints.push(Constraint {
                key: c["key"].as_str().unwrap_or("").to_owned(),
                human: c["human"].as_str().unwrap_or("").to_owned(),
                expr,
            });
        }
        let Some((parent, name)) = path.rsplit_once('.') else {
            continue;
        };
        let parent = if parent.contains('.') {
            Some(fhirpath::parse(parent).map_err(|err| format!("{path}: {err:?}"))?)
        } else {
            None
        };
        let (name, choice) = match name.strip_suffix("[x]") {
            Some(n) => (n.to_owned(), true),
            None => (name.to_owned(), false),
        };
        let max = match e["max"].as_str() {
            None | Some("*") => None,
            Some(m) => Some(m.parse::<usize>().map_err(|_| format!("{path}: max {m}"))?),
        };
        elements.push(ElementRule {
            path: path.to_owned(),
            parent,
            name,
            choice,
            min: e["min"].as_u64().unwrap_or(0) as usize,
            max,
            pattern: e.get("patternCodeableConcept").cloned(),
            fixed: e.get("fixedCode").cloned(),
        });
    }
    Ok(Profile {
        url,
        id,
        ty,
        base,
        resource,
        elements,
        constraints,
    })
}

impl Profile {
    /// The problems of `resource` against this profile and the profiles it is based on.
    pub fn check(&self, resource: &Value) -> Vec<Issue> {
        let mut issues = Vec::new();
        if resource["resourceType"].as_str() != Some(self.ty.as_str()) {
            issues.push(Issue::error(
                "invalid",
                format!("the profile {} is for {}", self.url, self.ty),
            ));
            return issues;
        }
        if let Some(base) = profile(&self.base) {
            issues.extend(base.check(resource));
        }
        for rule in &self.elements {
            rule.check(resource, &self.url, &mut issues);
        }
        for c in &self.constraints {
            let result = c.expr.evaluate(resource);
            let holds = !result.is_empty() && result.iter().all(|n| n.value == &Value::Bool(true));
            if !holds {
                issues.push(
                    Issue::error(
                        "invariant",
                        format!("{} ({}): {}", c.key, self.url, c.human),
                    )
                    .at(self.ty.clone()),
                );
            }
        }
        issues
    }
}

impl ElementRule {
    fn check(&self, resource: &Value, url: &str, issues: &mut Vec<Issue>) {
        let parents: Vec<&Value> = match &self.parent {
            Some(p) => p.evaluate(resource).into_iter().map(|n| n.value).collect(),
            None => vec![resource],
        };
        for parent in parents {
            let values = self.values(parent);
            if values.len() < self.min || self.max.is_some_and(|m| values.len() > m) {
                issues.push(
                    Issue::error(
                        "required",
                        format!(
                            "{} occurs {} times; the profile {url} allows {}..{}",
                            self.path,
                            values.len(),
                            self.min,
                            self.max.map_or("*".into(), |m| m.to_string())
                        ),
                    )
                    .at(self.path.clone()),
                );
            }
            for v in values {
                if let Some(p) = &self.pattern
                    && !holds_pattern(v, p)
                {
                    issues.push(
                        Issue::error(
                            "value",
                            format!(
                                "{} does not hold the codes the profile {url} requires",
                                self.path
                            ),
                        )
                        .at(self.path.clone()),
                    );
                }
                if let Some(f) = &self.fixed
                    && v != f
                {
                    issues.push(
                        Issue::error("value", format!("{} must be {f}", self.path))
                            .at(self.path.clone()),
                    );
                }
            }
        }
    }

    /// The element's values under one parent, arrays flattened.
    fn values<'a>(&self, parent: &'a Value) -> Vec<&'a Value> {
        let Some(obj) = parent.as_object() else {
            return Vec::new();
        };
        let found: Vec<&Value> = if self.choice {
            obj.iter()
                .filter(|(k, _)| {
                    k.strip_prefix(self.name.as_str())
                        .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_uppercase()))
                })
                .map(|(_, v)| v)
                .collect()
        } else {
            obj.get(&self.name).into_iter().collect()
        };
        found
            .into_iter()
            .flat_map(|v| match v {
                Value::Array(a) => a.iter().collect::<Vec<_>>(),
                one => vec![one],
            })
            .collect()
    }
}

/// A CodeableConcept holds a pattern when it has each of the pattern's codings.
fn holds_pattern(value: &Value, pattern: &Value) -> bool {
    pattern["coding"]
        .as_array()
        .into_iter()
        .flatten()
        .all(|want| {
            value["coding"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["system"] == want["system"] && c["code"] == want["code"])
        })
}

/// The problems of `resource` against `url`, or why it cannot be checked.
pub fn check_against(resource: &Value, url: &str) -> Vec<Issue> {
    match profile(url) {
        Some(p) => p.check(resource),
        None => vec![Issue::error(
            "not-supported",
            format!("the profile {url} is not known to this server"),
        )],
    }
}

/// The problems of `resource` against each of this server's profiles it claims in
/// `meta.profile` (others, such as the PHD IG's, are not checked here).
pub fn check_claimed(resource: &Value) -> Vec<Issue> {
    resource["meta"]["profile"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .filter_map(profile)
        .flat_map(|p| p.check(resource))
        .collect()
}

/// The PHD IG's profiles (http://hl7.org/fhir/uv/phd/): an Observation claiming one of them
/// (a third-party gateway's) is held to this server's device-observation profile, whose rules
/// are the PHD IG's essentials (MDC code, measuring Device, patient, time, UCUM).
const PHD_PROFILES: &str = "http://hl7.org/fhir/uv/phd/StructureDefinition/Phd";

/// Rules of the device-observation profile that are this server's own conventions, not the
/// PHD IG's, so not asked of other gateways' Observations: its categories (by the start of
/// their issues' diagnostics).
const OWN_CONVENTIONS: &[&str] = &["vb-dev-5", "Observation.category "];

/// The profile problems of a resource about to be written: those of this server's profiles it
/// claims, and for an Observation claiming a PHD IG profile, the device-observation rules.
pub fn check_write(resource: &Value) -> Vec<Issue> {
    let mut issues = check_claimed(resource);
    let claimed: Vec<&str> = resource["meta"]["profile"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    // Claiming one of this server's profiles says more already (they build on the base).
    let claims_own = claimed.iter().any(|u| profile(u).is_some());
    let claims_phd = claimed
        .iter()
        .any(|u| u.starts_with(PHD_PROFILES) && u.ends_with("Observation"));
    // A billing catalog entry is also read as the billing run reads it: prices, tax rates and
    // settings it could not use are refused here, not discovered at the end of the month.
    if resource["resourceType"] == "ChargeItemDefinition"
        && claimed
            .iter()
            .any(|u| u.split('|').next() == Some(crate::billing::catalog::PROFILE))
        && let Err(problems) = crate::billing::catalog::read(resource)
    {
        issues.extend(problems.into_iter().map(super::types::Invalid::issue));
    }
    if claims_phd
        && !claims_own
        && resource["resourceType"] == "Observation"
        && let Some(base) = profile(&format!("{BASE}vb-device-observation"))
    {
        issues.extend(
            base.check(resource)
                .into_iter()
                .filter(|i| !OWN_CONVENTIONS.iter().any(|k| i.diagnostics.starts_with(k))),
        );
    }
    issues
}

/// Stores the shipped StructureDefinitions, so that the server serves them like any resource
/// (`GET /fhir/StructureDefinition/vb-blood-pressure`, searches by `url`): each is written when
/// missing or different from the shipped one, at its own id.
pub async fn install(store: &crate::store::Store) -> Result<(), crate::store::StoreError> {
    use crate::fhir::types::{ResourceId, ResourceType};
    let Some(ty) = ResourceType::parse("StructureDefinition") else {
        return Ok(());
    };
    for p in PROFILES.iter() {
        let Some(id) = ResourceId::parse(&p.id) else {
            continue;
        };
        let stored = store
            .read(ty, &id)
            .await?
            .and_then(|v| v.content)
            .and_then(|c| serde_json::from_str::<Value>(&c).ok())
            .map(|mut v| {
                if let Some(o) = v.as_object_mut() {
                    o.remove("meta");
                }
                v
            });
        if stored.as_ref() != Some(&p.resource) {
            store
                .write_one(
                    ty,
                    Some(id),
                    Some(p.resource.clone()),
                    None,
                    crate::store::Method::Put,
                )
                .await?;
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_shipped_profile_parses_and_is_valid_r4() {
        assert_eq!(PROFILES.len(), SOURCES.len());
        for p in PROFILES.iter() {
            let ty = crate::fhir::types::ResourceType::parse("StructureDefinition").unwrap();
            crate::fhir::parse::check_structure(&p.resource, ty)
                .unwrap_or_else(|e| panic!("{}: {e:?}", p.id));
            assert!(p.url.starts_with(BASE), "{}", p.url);
            assert_eq!(p.url, format!("{BASE}{}", p.id));
        }
    }

    fn weight() -> Value {
        json!({
            "resourceType": "Observation",
            "meta": {"profile": [format!("{BASE}vb-body-weight")]},
            "status": "final",
            "identifier": [{"value": "k"}],
            "category": [{"coding": [{"system": "http://hl7.org/fhir/uv/phd/CodeSystem/PhdObservationCategories", "code": "phd"}]}],
            "code": {"coding": [
                {"system": "urn:iso:std:iso:11073:10101", "code": "188736"},
                {"system": "http://loinc.org", "code": "29463-7"}]},
            "subject": {"reference": "Patient/p1"},
            "device": {"reference": "Device/d1"},
            "effectiveDateTime": "2026-12-01T10:00:00Z",
            "valueQuantity": {"value": 81.2, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"}
        })
    }

    #[test]
    fn a_reading_that_fits_has_no_issues() {
        assert_eq!(check_claimed(&weight()), vec![]);
    }

    type Change = Box<dyn Fn(&mut Value)>;

    #[test]
    fn each_rule_catches_what_it_says() {
        let cases: Vec<(&str, Change, &str)> = vec![
            (
                "no device",
                Box::new(|o| {
                    o.as_object_mut().unwrap().remove("device");
                }),
                "Observation.device",
            ),
            (
                "no time",
                Box::new(|o| {
                    o.as_object_mut().unwrap().remove("effectiveDateTime");
                }),
                "Observation.effective[x]",
            ),
            (
                "not a patient",
                Box::new(|o| o["subject"] = json!({"reference": "Group/g"})),
                "vb-dev-2",
            ),
            (
                "no MDC code",
                Box::new(|o| {
                    o["code"]["coding"].as_array_mut().unwrap().remove(0);
                }),
                "vb-dev-1",
            ),
            (
                "another LOINC",
                Box::new(|o| o["code"]["coding"][1]["code"] = json!("8302-2")),
                "Observation.code",
            ),
            (
                "grams",
                Box::new(|o| o["valueQuantity"]["code"] = json!("g")),
                "vb-bw-1",
            ),
            (
                "not UCUM",
                Box::new(|o| o["valueQuantity"]["system"] = json!("urn:x")),
                "vb-dev-4",
            ),
            (
                "no value",
                Box::new(|o| {
                    o.as_object_mut().unwrap().remove("valueQuantity");
                }),
                "vb-dev-3",
            ),
        ];
        for (what, change, expect) in cases {
            let mut o = weight();
            change(&mut o);
            let issues = check_claimed(&o);
            assert!(
                issues
                    .iter()
                    .any(|i| i.diagnostics.contains(expect)
                        || i.expression.as_deref() == Some(expect)),
                "{what}: {issues:?}"
            );
        }
    }
}
