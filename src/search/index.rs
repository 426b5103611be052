//! The rows a resource version writes into the search index tables (migrations
//! `0002_search.sql`), built from [`extract`](super::extract) and, for composite parameters,
//! from the components' own expressions evaluated on each element the composite selects.
//!
//! The store writes these rows in the same transaction as the version (DESIGN.md rule 1) and
//! `vitalbridge reindex` rebuilds them from the stored JSON.

use std::collections::HashMap;
use std::sync::LazyLock;

use serde_json::Value;

use super::extract::{self, IndexValue};
use super::fhirpath::{self, Expr};
use super::registry::{self, ParamType};
use super::ucum;
use crate::fhir::types::ResourceType;

/// Every index row of one resource, per table. `param` is the search parameter code; derived
/// entries use `code:text`, `code:of-type` and `code:identifier` so that they never collide with
/// a real code (codes contain no colon).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct IndexRows {
    /// (param, system, code, text)
    pub tokens: Vec<(String, Option<String>, String, Option<String>)>,
    /// (param, normalised, exact)
    pub strings: Vec<(String, String, String)>,
    /// (param, lo, hi) in microseconds, inclusive
    pub dates: Vec<(String, i64, i64)>,
    pub references: Vec<ReferenceRow>,
    pub quantities: Vec<QuantityRow>,
    /// (param, value)
    pub numbers: Vec<(String, f64)>,
    /// (param, value)
    pub uris: Vec<(String, String)>,
    pub composites: Vec<CompositeRow>,
}

/// (param, target type, target id, url, envelope of the resource's `date`: lo, hi, and on
/// `subject` rows one `code` token of the resource: system ('' for none), code, or none on the
/// one row every search without a code range reads (0007_reference_any_code.sql); last, whether
/// the envelope is the resource's one `date` value, so a date criterion can be decided on the
/// row itself (0003_date_exact.sql); the resource's [`category_key`] (0005_reference_carries.sql))
pub type ReferenceRow = (
    String,
    Option<String>,
    Option<String>,
    String,
    Option<i64>,
    Option<i64>,
    Option<String>,
    Option<String>,
    Option<bool>,
    Option<String>,
);

/// (param, value, system, code, canonical value, canonical code)
pub type QuantityRow = (
    String,
    f64,
    Option<String>,
    Option<String>,
    Option<f64>,
    Option<String>,
);

/// One tuple of a composite parameter; see the `search_composite` table for the columns.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct CompositeRow {
    pub param: String,
    pub c1_system: Option<String>,
    pub c1_code: String,
    pub c2_system: Option<String>,
    pub c2_code: Option<String>,
    pub c2_lo: Option<f64>,
    pub c2_hi: Option<f64>,
    pub c2_cvalue: Option<f64>,
    pub c2_ccode: Option<String>,
    pub c3: Option<f64>,
}

/// Parameters answered from the `resource` table rather than an index table.
const FROM_RESOURCE: &[&str] = &["_id", "_lastUpdated"];

/// Observation's `combo-*` parameters are the union of a parameter on the Observation and its
/// counterpart on the components (https://hl7.org/fhir/R4/observation.html#search): they are
/// answered from those two, not stored a third time.
pub const COMBOS: &[(&str, [&str; 2])] = &[
    ("combo-code", ["code", "component-code"]),
    (
        "combo-code-value-concept",
        ["code-value-concept", "component-code-value-concept"],
    ),
    (
        "combo-code-value-quantity",
        ["code-value-quantity", "component-code-value-quantity"],
    ),
    (
        "combo-data-absent-reason",
        ["data-absent-reason", "component-data-absent-reason"],
    ),
    (
        "combo-value-concept",
        ["value-concept", "component-value-concept"],
    ),
    (
        "combo-value-quantity",
        ["value-quantity", "component-value-quantity"],
    ),
];

/// True for a parameter answered through [`COMBOS`] rather than stored.
pub fn is_combo(code: &str) -> bool {
    COMBOS.iter().any(|(c, _)| *c == code)
}

/// The index rows of `resource` (which must carry `resourceType`; `meta` already stamped).
pub fn rows(resource: &Value) -> IndexRows {
    let mut out = IndexRows::default();
    // A concept's text waits for its first coding row; a concept without codings keeps it in
    // a row with an empty code (which no token search matches).
    let mut pending: Option<(&'static str, String)> = None;
    let ty = resource
        .get("resourceType")
        .and_then(Value::as_str)
        .unwrap_or_default();
    for e in extract::extract(resource) {
        // Answered from `resource`, from two other parameters, or from a wider reference.
        if FROM_RESOURCE.contains(&e.code)
            || is_combo(e.code)
            || registry::alias(ty, e.code).is_some()
        {
            continue;
        }
        let text = match (&e.value, pending.take()) {
            (IndexValue::Token { .. }, Some((p, t))) if p == e.code => Some(t),
            (_, Some((p, t))) => {
                out.tokens
                    .push((p.to_owned(), None, String::new(), Some(t)));
                None
            }
            (_, None) => None,
        };
        let param = e.code.to_owned();
        match e.value {
            IndexValue::Token { system, code } => out.tokens.push((param, system, code, text)),
            IndexValue::TokenText { text } => pending = Some((e.code, text)),
            IndexValue::OfType {
                system,
                code,
                value,
            } => out.tokens.push((
                format!("{param}:of-type"),
                system,
                format!("{code}|{value}"),
                None,
            )),
            IndexValue::ReferenceIdentifier { system, value } => {
                out.tokens
                    .push((format!("{param}:identifier"), system, value, None))
            }
            IndexValue::String { exact, normalized } => {
                out.strings.push((param, normalized, exact))
            }
            IndexValue::Date { start, end } => out.dates.push((param, start, end)),
            IndexValue::Reference {
                target_type,
                id,
                url,
            } => out.references.push((
                param,
                target_type,
                id,
                url,
                None,
                None,
                None,
                None,
                None,
                None,
            )),
            IndexValue::Quantity {
                value,
                system,
                code,
                unit,
                ..
            } => {
                let (cvalue, ccode) = canonical(value, system.as_deref(), code.as_deref());
                // Without a coded unit, `||unit` searches match the human-readable unit
                // (search.html#quantity).
                let code = code.or(unit);
                out.quantities
                    .push((param, value, system, code, cvalue, ccode))
            }
            IndexValue::Number { value, .. } => out.numbers.push((param, value)),
            IndexValue::Uri { value } => out.uris.push((param, value)),
        }
    }
    if let Some((p, t)) = pending {
        out.tokens
            .push((p.to_owned(), None, String::new(), Some(t)));
    }
    // The same value reached twice (e.g. `code` through two unions) is one row; a token is one
    // row per (param, system, code) whatever text came with it, which lets a count over one
    // fully given token skip `distinct` (store::query::count_sql).
    let mut seen_tokens: Vec<(String, Option<String>, String)> = Vec::new();
    out.tokens.retain(|t| {
        let key = (t.0.clone(), t.1.clone(), t.2.clone());
        if seen_tokens.contains(&key) {
            false
        } else {
            seen_tokens.push(key);
            true
        }
    });
    dedup(&mut out.strings);
    dedup(&mut out.references);
    // The envelope of the resource's `date` values on each reference row (0002_search.sql).
    let envelope = out.dates.iter().filter(|d| d.0 == "date").fold(
        None,
        |acc: Option<(i64, i64)>, d| match acc {
            None => Some((d.1, d.2)),
            Some((lo, hi)) => Some((lo.min(d.1), hi.max(d.2))),
        },
    );
    if let Some((lo, hi)) = envelope {
        // Exact when every `date` value is the envelope itself (one value, or repeats of it).
        let exact = out
            .dates
            .iter()
            .filter(|d| d.0 == "date")
            .all(|d| d.1 == lo && d.2 == hi);
        for r in &mut out.references {
            r.4 = Some(lo);
            r.5 = Some(hi);
            r.8 = Some(exact);
        }
    }
    // The resource's categories on each reference row (0005_reference_carries.sql).
    let categories = category_key(
        out.tokens
            .iter()
            .filter(|t| t.0 == "category")
            .map(|t| (t.1.as_deref(), t.2.as_str())),
    );
    for r in &mut out.references {
        r.9.clone_from(&categories);
    }
    // A `subject` row per code of the resource (0002_search.sql, for `$lastn`), beside the
    // row without a code that every other search reads (0007_reference_any_code.sql).
    let codes: Vec<(String, String)> = out
        .tokens
        .iter()
        .filter(|t| t.0 == "code" && !t.2.is_empty())
        .map(|t| (t.1.clone().unwrap_or_default(), t.2.clone()))
        .collect();
    if !codes.is_empty() {
        let mut expanded = Vec::with_capacity(out.references.len() + codes.len());
        for r in out.references.drain(..) {
            if r.0 != "subject" {
                expanded.push(r);
                continue;
            }
            expanded.push(r.clone());
            for (system, code) in &codes {
                let mut row = r.clone();
                row.6 = Some(system.clone());
                row.7 = Some(code.clone());
                expanded.push(row);
            }
        }
        out.references = expanded;
    }
    dedup(&mut out.uris);
    composites(resource, &mut out.composites);
    out
}

/// Opens and closes each token of a [`category_key`]; FHIR strings cannot hold control
/// characters (https://hl7.org/fhir/R4/datatypes.html#string), so neither can a system or code.
const TOKEN_EDGE: char = '\u{1f}';
/// Separates a token's system from its code in a [`category_key`].
const SYSTEM_END: char = '\u{1e}';

/// The `category` tokens (system, code) of a resource as one string, each token written
/// `EDGE system END code EDGE`, so that a token criterion becomes a substring test
/// ([`category_needle`]) on the reference rows that carry it. `None` when a token holds a
/// separator (the criterion is then probed in `search_token`, which is always right).
pub fn category_key<'a>(
    tokens: impl Iterator<Item = (Option<&'a str>, &'a str)>,
) -> Option<String> {
    let mut key = String::new();
    for (system, code) in tokens {
        let system = system.unwrap_or_default();
        if [system, code]
            .iter()
            .any(|s| s.contains([TOKEN_EDGE, SYSTEM_END]))
        {
            return None;
        }
        key.push(TOKEN_EDGE);
        key.push_str(system);
        key.push(SYSTEM_END);
        key.push_str(code);
        key.push(TOKEN_EDGE);
    }
    Some(key)
}

/// The substring of a [`category_key`] that holds exactly when a token search matches one of its
/// tokens: `system` as in a token search (`None` any system, `Some(None)` none, as `|code`),
/// `code` `None` for `system|`. `None` when no substring decides it (neither is given, or a
/// separator is in a value).
pub fn category_needle(system: Option<Option<&str>>, code: Option<&str>) -> Option<String> {
    if [system.flatten(), code]
        .iter()
        .flatten()
        .any(|s| s.contains([TOKEN_EDGE, SYSTEM_END]))
    {
        return None;
    }
    Some(match (system, code) {
        (None, Some(code)) => format!("{SYSTEM_END}{code}{TOKEN_EDGE}"),
        (Some(system), Some(code)) => format!(
            "{TOKEN_EDGE}{}{SYSTEM_END}{code}{TOKEN_EDGE}",
            system.unwrap_or_default()
        ),
        (Some(Some(system)), None) => format!("{TOKEN_EDGE}{system}{SYSTEM_END}"),
        (Some(None) | None, None) => return None,
    })
}

fn dedup<T: PartialEq + Clone>(v: &mut Vec<T>) {
    let mut seen: Vec<T> = Vec::with_capacity(v.len());
    v.retain(|x| {
        if seen.contains(x) {
            false
        } else {
            seen.push(x.clone());
            true
        }
    });
}

/// The canonical UCUM form of a quantity, when its unit is UCUM and known.
pub fn canonical(
    value: f64,
    system: Option<&str>,
    code: Option<&str>,
) -> (Option<f64>, Option<String>) {
    match (system, code) {
        (Some(ucum::UCUM), Some(code)) => match ucum::canonical(value, code) {
            Some((v, c)) => (Some(v), Some(c)),
            None => (None, None),
        },
        _ => (None, None),
    }
}

/// A composite parameter with its expressions parsed.
struct CompiledComposite {
    code: &'static str,
    base: Expr,
    /// Each component's expression and its type.
    parts: Vec<(Expr, ParamType)>,
}

static COMPOSITES: LazyLock<HashMap<&'static str, Vec<CompiledComposite>>> = LazyLock::new(|| {
    let mut map = HashMap::new();
    for ty in ResourceType::all() {
        let list: Vec<CompiledComposite> = registry::for_type(ty.as_str())
            .filter(|p| {
                p.kind == ParamType::Composite
                    && !is_combo(p.code)
                    && !registry::is_root_composite(p)
            })
            .filter_map(|p| {
                let base = fhirpath::parse(p.expression).ok()?;
                let parts = p
                    .components
                    .iter()
                    .map(|c| {
                        let kind = registry::lookup(ty.as_str(), c.code)?.kind;
                        Some((fhirpath::parse(c.expression).ok()?, kind))
                    })
                    .collect::<Option<Vec<_>>>()?;
                Some(CompiledComposite {
                    code: p.code,
                    base,
                    parts,
                })
            })
            .collect();
        if !list.is_empty() {
            map.insert(ty.as_str(), list);
        }
    }
    map
});

/// Parses the composite expressions now rather than on the first write.
pub fn preload() {
    LazyLock::force(&COMPOSITES);
}

/// Component values as the composite table stores them.
#[derive(Debug, Clone, Default)]
struct Part {
    system: Option<String>,
    code: Option<String>,
    lo: Option<f64>,
    hi: Option<f64>,
    cvalue: Option<f64>,
    ccode: Option<String>,
}

fn parts_of(node: &Value, expr: &Expr, kind: ParamType) -> Vec<Part> {
    let mut out = Vec::new();
    for n in expr.evaluate(node) {
        let mut values = Vec::new();
        extract::values_of(kind, n.value, &mut |v| values.push(v));
        for v in values {
            let part = match v {
                IndexValue::Token { system, code } => Part {
                    system,
                    code: Some(code),
                    ..Part::default()
                },
                IndexValue::String { normalized, .. } => Part {
                    code: Some(normalized),
                    ..Part::default()
                },
                IndexValue::Date { start, end } => Part {
                    lo: Some(start as f64),
                    hi: Some(end as f64),
                    ..Part::default()
                },
                IndexValue::Reference {
                    target_type: Some(t),
                    id: Some(id),
                    ..
                } => Part {
                    code: Some(format!("{t}/{id}")),
                    ..Part::default()
                },
                IndexValue::Quantity {
                    value,
                    system,
                    code,
                    ..
                } => {
                    let (cvalue, ccode) = canonical(value, system.as_deref(), code.as_deref());
                    Part {
                        system,
                        code,
                        lo: Some(value),
                        hi: Some(value),
                        cvalue,
                        ccode,
                    }
                }
                IndexValue::Number { value, .. } => Part {
                    lo: Some(value),
                    hi: Some(value),
                    ..Part::default()
                },
                IndexValue::Uri { value } => Part {
                    code: Some(value),
                    ..Part::default()
                },
                _ => continue,
            };
            out.push(part);
        }
    }
    out
}

fn composites(resource: &Value, out: &mut Vec<CompositeRow>) {
    let Some(list) = resource
        .get("resourceType")
        .and_then(Value::as_str)
        .and_then(|t| COMPOSITES.get(t))
    else {
        return;
    };
    for c in list {
        for node in c.base.evaluate(resource) {
            let parts: Vec<Vec<Part>> = c
                .parts
                .iter()
                .map(|(expr, kind)| parts_of(node.value, expr, *kind))
                .collect();
            let (Some(first), Some(second)) = (parts.first(), parts.get(1)) else {
                continue;
            };
            let third: Vec<Option<f64>> = match parts.get(2) {
                Some(p) => p.iter().map(|p| p.lo).collect(),
                None => vec![None],
            };
            for a in first {
                let Some(c1_code) = &a.code else { continue };
                for b in second {
                    for t in &third {
                        let row = CompositeRow {
                            param: c.code.to_owned(),
                            c1_system: a.system.clone(),
                            c1_code: c1_code.clone(),
                            c2_system: b.system.clone(),
                            c2_code: b.code.clone(),
                            c2_lo: b.lo,
                            c2_hi: b.hi,
                            c2_cvalue: b.cvalue,
                            c2_ccode: b.ccode.clone(),
                            c3: *t,
                        };
                        if !out.contains(&row) {
                            out.push(row);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn bp() -> Value {
        json!({
            "resourceType": "Observation",
            "id": "bp1",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9", "display": "Blood pressure panel"}]},
            "subject": {"reference": "Patient/p1", "identifier": {"system": "urn:mrn", "value": "7"}},
            "effectiveDateTime": "2026-11-20T08:30:00Z",
            "component": [
                {"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
                 "valueQuantity": {"value": 150, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}},
                {"code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]},
                 "valueQuantity": {"value": 90, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}}
            ]
        })
    }

    #[test]
    fn component_pairs_stay_together() {
        let rows = rows(&bp());
        let comp: Vec<(&str, Option<f64>)> = rows
            .composites
            .iter()
            .filter(|r| r.param == "component-code-value-quantity")
            .map(|r| (r.c1_code.as_str(), r.c2_lo))
            .collect();
        assert_eq!(comp, vec![("8480-6", Some(150.0)), ("8462-4", Some(90.0))]);
        // combo-* is answered from the plain and component parameters, not stored.
        assert!(
            rows.composites
                .iter()
                .all(|r| !r.param.starts_with("combo-"))
        );
        assert!(rows.tokens.iter().any(|t| t.0 == "code"
            && t.2 == "85354-9"
            && t.3.as_deref() == Some("blood pressure panel")));
        assert!(
            rows.tokens
                .iter()
                .any(|t| t.0 == "subject:identifier" && t.2 == "7")
        );
        assert!(rows.references.iter().any(|r| r.0 == "subject"
            && r.1.as_deref() == Some("Patient")
            && r.2.as_deref() == Some("p1")));
        // _id is answered from the resource table, `patient` from `subject`, and the
        // root-level composite from its components.
        assert!(rows.tokens.iter().all(|t| t.0 != "_id"));
        assert!(rows.references.iter().all(|r| r.0 != "patient"));
        assert!(
            rows.composites
                .iter()
                .all(|r| r.param != "code-value-quantity")
        );
    }

    #[test]
    fn subject_rows_carry_each_code_and_the_date_envelope() {
        let mut o = bp();
        o["code"]["coding"]
            .as_array_mut()
            .expect("codings")
            .push(json!({"code": "bp-local"}));
        o["device"] = json!({"reference": "Device/d1"});
        let rows = rows(&o);
        let hi = rows.dates.iter().find(|d| d.0 == "date").expect("date").2;
        let mut subject: Vec<_> = rows
            .references
            .iter()
            .filter(|r| r.0 == "subject")
            .map(|r| (r.2.as_deref(), r.5, r.6.as_deref(), r.7.as_deref()))
            .collect();
        subject.sort();
        assert_eq!(
            subject,
            vec![
                (Some("p1"), Some(hi), None, None),
                (Some("p1"), Some(hi), Some(""), Some("bp-local")),
                (
                    Some("p1"),
                    Some(hi),
                    Some("http://loinc.org"),
                    Some("85354-9")
                ),
            ]
        );
        // One `date` value: the envelope is exact.
        assert!(
            rows.references.iter().all(|r| r.8 == Some(true)),
            "{:?}",
            rows.references
        );
        // Other references are one row each, without a code.
        let device: Vec<_> = rows.references.iter().filter(|r| r.0 == "device").collect();
        assert_eq!(device.len(), 1);
        assert_eq!(
            (device[0].6.as_deref(), device[0].7.as_deref()),
            (None, None)
        );
    }

    #[test]
    fn category_needles_match_whole_tokens_only() {
        let key = category_key(
            [
                (Some("http://cat"), "vital-signs"),
                (None, "home"),
                (Some("urn:x"), ""),
            ]
            .into_iter(),
        )
        .expect("key");
        let holds = |system: Option<Option<&str>>, code: Option<&str>| {
            key.contains(&category_needle(system, code).expect("needle"))
        };
        assert!(holds(None, Some("vital-signs")));
        assert!(holds(Some(Some("http://cat")), Some("vital-signs")));
        assert!(holds(Some(Some("http://cat")), None));
        assert!(holds(Some(None), Some("home")));
        assert!(holds(None, Some("home")));
        assert!(holds(Some(Some("urn:x")), None));
        assert!(!holds(None, Some("vital")));
        assert!(!holds(None, Some("signs")));
        assert!(!holds(Some(None), Some("vital-signs")));
        assert!(!holds(Some(Some("http://ca")), None));
        assert!(!holds(Some(Some("http://cat")), Some("home")));
        // Neither part given, or a separator inside a value: no substring decides.
        assert_eq!(category_needle(None, None), None);
        assert_eq!(category_needle(Some(None), None), None);
        assert_eq!(category_needle(None, Some("a\u{1f}b")), None);
        assert_eq!(category_key([(None, "a\u{1e}b")].into_iter()), None);
        // No categories: an empty key, on which every needle fails.
        assert_eq!(category_key(std::iter::empty()), Some(String::new()));
    }
}
