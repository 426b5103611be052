//! The token modifiers that need terminology (https://hl7.org/fhir/R4/search.html#token):
//! `:below` / `:above` (the code and what it subsumes, or what subsumes it) and `:in` /
//! `:not-in` (membership of a value set). They are answered from the CodeSystem and ValueSet
//! resources stored on this server: pure functions here turn those resources into the plain
//! `system|code` matches the index answers; the engine fetches the resources.

use std::collections::{BTreeSet, HashMap};

use serde_json::Value;

use crate::store::query::TokenMatch;

/// Why a terminology modifier cannot be answered.
pub type Refusal = String;

/// Parent links of a CodeSystem: from the nesting of `concept` and from the standard `parent`
/// and `child` concept properties (https://hl7.org/fhir/R4/codesystem.html#hierarchy).
fn parents(cs: &Value) -> HashMap<String, BTreeSet<String>> {
    fn walk(concepts: &Value, parent: Option<&str>, out: &mut HashMap<String, BTreeSet<String>>) {
        for c in concepts.as_array().into_iter().flatten() {
            let Some(code) = c["code"].as_str() else {
                continue;
            };
            let entry = out.entry(code.to_owned()).or_default();
            if let Some(p) = parent {
                entry.insert(p.to_owned());
            }
            for prop in c["property"].as_array().into_iter().flatten() {
                let Some(value) = prop["valueCode"].as_str() else {
                    continue;
                };
                match prop["code"].as_str() {
                    Some("parent") => {
                        out.entry(code.to_owned())
                            .or_default()
                            .insert(value.to_owned());
                    }
                    Some("child") => {
                        out.entry(value.to_owned())
                            .or_default()
                            .insert(code.to_owned());
                    }
                    _ => {}
                }
            }
            walk(&c["concept"], Some(code), out);
        }
    }
    let mut out = HashMap::new();
    walk(&cs["concept"], None, &mut out);
    out
}

/// `code` and every code it subsumes (`below`) or that subsumes it (`above`) in the code
/// system `cs`. Only an is-a hierarchy means subsumption; a CodeSystem that declares another
/// meaning (grouped-by, part-of, classified-with) is refused.
pub fn subsumption(cs: &Value, code: &str, below: bool) -> Result<BTreeSet<String>, Refusal> {
    let url = cs["url"].as_str().unwrap_or("?");
    match cs["hierarchyMeaning"].as_str() {
        None | Some("is-a") => {}
        Some(other) => {
            return Err(format!(
                "the hierarchy of {url} means {other}, not is-a: it does not define subsumption"
            ));
        }
    }
    let up = parents(cs);
    if !up.contains_key(code) {
        return Err(format!("{code} is not a code of {url}"));
    }
    let mut down: HashMap<&str, Vec<&str>> = HashMap::new();
    for (child, ps) in &up {
        for p in ps {
            down.entry(p.as_str()).or_default().push(child.as_str());
        }
    }
    let mut found = BTreeSet::from([code.to_owned()]);
    let mut todo = vec![code.to_owned()];
    while let Some(c) = todo.pop() {
        let next: Vec<String> = if below {
            down.get(c.as_str())
                .into_iter()
                .flatten()
                .map(|s| (*s).to_owned())
                .collect()
        } else {
            up.get(&c).into_iter().flatten().cloned().collect()
        };
        for n in next {
            if found.insert(n.clone()) {
                todo.push(n);
            }
        }
    }
    Ok(found)
}

/// What a ValueSet's codes come from: its `expansion`, else its `compose`
/// (https://hl7.org/fhir/R4/valueset.html#compositions). `code_system` gives the stored
/// CodeSystem of a url, for `is-a` / `descendent-of` filters.
pub fn members(
    vs: &Value,
    code_system: &dyn Fn(&str) -> Option<Value>,
) -> Result<Vec<TokenMatch>, Refusal> {
    let url = vs["url"].as_str().unwrap_or("?");
    let token = |system: &str, code: &str| TokenMatch {
        system: Some(Some(system.to_owned())),
        code: Some(code.to_owned()),
    };
    if vs["expansion"].is_object() {
        fn contains(v: &Value, out: &mut Vec<(String, String)>) {
            for c in v.as_array().into_iter().flatten() {
                if let (Some(s), Some(code)) = (c["system"].as_str(), c["code"].as_str()) {
                    out.push((s.to_owned(), code.to_owned()));
                }
                contains(&c["contains"], out);
            }
        }
        let mut codes = Vec::new();
        contains(&vs["expansion"]["contains"], &mut codes);
        return Ok(codes.iter().map(|(s, c)| token(s, c)).collect());
    }
    let compose = &vs["compose"];
    if !compose.is_object() {
        return Err(format!(
            "ValueSet {url} has neither an expansion nor a compose"
        ));
    }
    // (system, code) excluded; a whole excluded system cannot be written as a token list.
    let mut excluded: BTreeSet<(String, String)> = BTreeSet::new();
    for ex in compose["exclude"].as_array().into_iter().flatten() {
        let system = ex["system"].as_str().unwrap_or_default();
        let concepts = ex["concept"].as_array();
        if system.is_empty() || concepts.is_none() || ex["filter"].is_array() {
            return Err(format!(
                "ValueSet {url}: only excludes that list codes of a system are supported"
            ));
        }
        for c in concepts.into_iter().flatten() {
            if let Some(code) = c["code"].as_str() {
                excluded.insert((system.to_owned(), code.to_owned()));
            }
        }
    }
    let mut out = Vec::new();
    for inc in compose["include"].as_array().into_iter().flatten() {
        if inc["valueSet"].is_array() {
            return Err(format!(
                "ValueSet {url}: includes of other value sets are not supported"
            ));
        }
        let Some(system) = inc["system"].as_str() else {
            return Err(format!("ValueSet {url}: an include without a system"));
        };
        let mut codes: BTreeSet<String> = BTreeSet::new();
        let concepts = inc["concept"].as_array();
        let filters = inc["filter"].as_array();
        for c in concepts.into_iter().flatten() {
            if let Some(code) = c["code"].as_str() {
                codes.insert(code.to_owned());
            }
        }
        for f in filters.into_iter().flatten() {
            let (Some(op), Some(value)) = (f["op"].as_str(), f["value"].as_str()) else {
                return Err(format!("ValueSet {url}: a filter without op or value"));
            };
            if f["property"].as_str() != Some("concept") || !matches!(op, "is-a" | "descendent-of")
            {
                return Err(format!(
                    "ValueSet {url}: only concept is-a and descendent-of filters are supported"
                ));
            }
            let cs = code_system(system)
                .ok_or_else(|| format!("CodeSystem {system} is not stored on this server"))?;
            let mut below = subsumption(&cs, value, true)?;
            if op == "descendent-of" {
                below.remove(value);
            }
            codes.extend(below);
        }
        if concepts.is_none() && filters.is_none() {
            // The whole code system.
            if excluded.iter().any(|(s, _)| s == system) {
                return Err(format!(
                    "ValueSet {url}: excluding codes from a whole included system is not supported"
                ));
            }
            out.push(TokenMatch {
                system: Some(Some(system.to_owned())),
                code: None,
            });
            continue;
        }
        for code in codes {
            if !excluded.contains(&(system.to_owned(), code.clone())) {
                out.push(token(system, &code));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cs() -> Value {
        json!({"resourceType": "CodeSystem", "url": "http://x/cs", "content": "complete",
               "concept": [
                 {"code": "vital", "concept": [
                   {"code": "bp", "concept": [{"code": "sys"}, {"code": "dia"}]},
                   {"code": "hr"}]},
                 {"code": "lab", "property": [{"code": "child", "valueCode": "lab-glucose"}]},
                 {"code": "spo2", "property": [{"code": "parent", "valueCode": "vital"}]},
                 {"code": "lab-glucose"}]})
    }

    fn set(codes: &[&str]) -> BTreeSet<String> {
        codes.iter().map(|c| (*c).to_owned()).collect()
    }

    #[test]
    fn below_and_above_follow_nesting_and_properties() {
        assert_eq!(
            subsumption(&cs(), "vital", true),
            Ok(set(&["vital", "bp", "sys", "dia", "hr", "spo2"]))
        );
        assert_eq!(
            subsumption(&cs(), "sys", false),
            Ok(set(&["sys", "bp", "vital"]))
        );
        assert_eq!(subsumption(&cs(), "hr", true), Ok(set(&["hr"])));
        assert_eq!(
            subsumption(&cs(), "lab", true),
            Ok(set(&["lab", "lab-glucose"]))
        );
        assert!(subsumption(&cs(), "nope", true).is_err());
        let mut grouped = cs();
        grouped["hierarchyMeaning"] = json!("grouped-by");
        assert!(subsumption(&grouped, "vital", true).is_err());
    }

    #[test]
    fn value_sets_from_expansion_or_compose() {
        let lookup = |url: &str| (url == "http://x/cs").then(cs);
        let expanded = json!({"url": "http://x/vs", "expansion": {"contains": [
            {"system": "http://loinc.org", "code": "8867-4"},
            {"system": "http://x/cs", "code": "bp", "contains": [
                {"system": "http://x/cs", "code": "sys"}]}]}});
        let m = members(&expanded, &lookup).expect("expansion");
        assert_eq!(m.len(), 3);
        assert_eq!(m[2].code.as_deref(), Some("sys"));

        let composed = json!({"url": "http://x/vs2", "compose": {
            "include": [
                {"system": "http://loinc.org", "concept": [{"code": "8867-4"}, {"code": "8480-6"}]},
                {"system": "http://x/cs", "filter": [
                    {"property": "concept", "op": "descendent-of", "value": "bp"}]},
                {"system": "http://snomed.info/sct"}],
            "exclude": [{"system": "http://loinc.org", "concept": [{"code": "8480-6"}]}]}});
        let m = members(&composed, &lookup).expect("compose");
        let codes: Vec<(Option<&str>, Option<&str>)> = m
            .iter()
            .map(|t| {
                (
                    t.system.as_ref().and_then(|s| s.as_deref()),
                    t.code.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            codes,
            [
                (Some("http://loinc.org"), Some("8867-4")),
                (Some("http://x/cs"), Some("dia")),
                (Some("http://x/cs"), Some("sys")),
                (Some("http://snomed.info/sct"), None),
            ]
        );
        let unknown = json!({"url": "u", "compose": {"include": [{"system": "http://other",
            "filter": [{"property": "concept", "op": "is-a", "value": "a"}]}]}});
        assert!(members(&unknown, &lookup).is_err());
        assert!(members(&json!({"url": "u"}), &lookup).is_err());
    }
}
