//! Search-index extraction: the values a resource is found by, for every search parameter of
//! its type (https://hl7.org/fhir/R4/search.html#ptypes).
//!
//! Each parameter's FHIRPath expression (from the [`registry`]) is parsed once, on first use,
//! and evaluated against the resource JSON with [`fhirpath`]. Every resulting node is then
//! turned into zero or more [`IndexValue`]s according to the parameter type. There is no schema:
//! the data type of a node is recognised by its JSON shape (and the choice suffix when the path
//! gave one), e.g. an object with `coding` is a CodeableConcept. A node that does not fit the
//! parameter type (a number where a Coding is expected, an empty object) yields nothing; it is
//! never an error, because validation is not this module's job.
//!
//! Composite parameters (https://hl7.org/fhir/R4/search.html#composite) are skipped: their value
//! is a tuple of component values taken from the same node, which the matcher evaluates from the
//! components' own expressions rather than from a flat index entry.
//!
//! `_id` (`Resource.id`) is a token parameter in R4, so it is extracted as
//! `Token { system: None, code: id }` like any other `id` primitive.

use std::collections::HashMap;
use std::sync::LazyLock;

use serde_json::{Map, Value};

use super::fhirpath::{self, Expr};
use super::registry::{self, ParamType};
use crate::fhir::types::ResourceType;
use crate::store::parse_instant_range;

/// One index entry of a resource for one search parameter
/// (https://hl7.org/fhir/R4/search.html#ptypes).
#[derive(Debug, Clone, PartialEq)]
pub enum IndexValue {
    /// https://hl7.org/fhir/R4/search.html#token: Coding and each coding of a CodeableConcept
    /// (system|code), Identifier (system|value), ContactPoint (value, no system: its `system` is
    /// a kind such as `phone`, not a URI), code/string/id/uri primitives (no system) and booleans
    /// (`"true"`/`"false"`).
    Token {
        system: Option<String>,
        code: String,
    },
    /// https://hl7.org/fhir/R4/search.html#string: `exact` as written (for `:exact`) and
    /// `normalized` (lowercase, accents removed, whitespace collapsed) for the default
    /// case- and accent-insensitive prefix match.
    String { exact: String, normalized: String },
    /// https://hl7.org/fhir/R4/search.html#date: the range of instants the value covers, in
    /// inclusive microseconds. An open Period end is `i64::MIN` / `i64::MAX`.
    Date { start: i64, end: i64 },
    /// https://hl7.org/fhir/R4/search.html#reference: `url` is the reference as written;
    /// `target_type`/`id` when it ends in `Type/id` (relative or absolute).
    Reference {
        target_type: Option<String>,
        id: Option<String>,
        url: String,
    },
    /// https://hl7.org/fhir/R4/search.html#quantity: `text` is the decimal as written, so
    /// precision-based matching (`eq` covers the implied range) stays possible.
    Quantity {
        value: f64,
        text: String,
        system: Option<String>,
        code: Option<String>,
        unit: Option<String>,
    },
    /// https://hl7.org/fhir/R4/search.html#number: `text` is the decimal as written.
    Number { value: f64, text: String },
    /// https://hl7.org/fhir/R4/search.html#uri
    Uri { value: String },
    /// The text of a CodeableConcept and its codings' displays (or a Coding's display),
    /// normalised like a string, for the token `:text` modifier
    /// (https://hl7.org/fhir/R4/search.html#modifiers). It comes right before the concept's
    /// codings.
    TokenText { text: String },
    /// An Identifier's type coding and value, for `:of-type` (`system|code|value`).
    OfType {
        system: Option<String>,
        code: String,
        value: String,
    },
    /// `Reference.identifier`, for the reference `:identifier` modifier.
    ReferenceIdentifier {
        system: Option<String>,
        value: String,
    },
}

/// One index value and the parameter it belongs to.
#[derive(Debug, Clone, PartialEq)]
pub struct Extracted {
    pub code: &'static str,
    pub value: IndexValue,
}

/// A parameter with its expression parsed once.
struct Compiled {
    code: &'static str,
    kind: ParamType,
    expr: Expr,
}

/// Compiled parameters per resource type, plus the every-type ones for an unknown type.
/// Building it parses every expression once (a few milliseconds); parameters whose expression
/// is empty (`_text`, `_content`, `_query`: implemented by the server itself) or does not parse
/// are left out, as are composites (see the module comment).
struct Cache {
    by_type: HashMap<&'static str, Vec<Compiled>>,
    common: Vec<Compiled>,
}

static CACHE: LazyLock<Cache> = LazyLock::new(|| {
    let compile = |ty: &str| -> Vec<Compiled> {
        registry::for_type(ty)
            .filter(|p| p.kind != ParamType::Composite && !p.expression.is_empty())
            .filter_map(|p| {
                let expr = fhirpath::parse(p.expression).ok()?;
                Some(Compiled {
                    code: p.code,
                    kind: p.kind,
                    expr,
                })
            })
            .collect()
    };
    Cache {
        by_type: ResourceType::all()
            .map(|t| (t.as_str(), compile(t.as_str())))
            .collect(),
        common: compile(registry::ALL_TYPES),
    }
});

/// Parses all expressions now rather than on the first write.
pub fn preload() {
    LazyLock::force(&CACHE);
}

/// All index values of `resource` for every (non-composite) search parameter of its type.
pub fn extract(resource: &Value) -> Vec<Extracted> {
    let cache = &*CACHE;
    let params = resource
        .get("resourceType")
        .and_then(Value::as_str)
        .and_then(|t| cache.by_type.get(t))
        .unwrap_or(&cache.common);
    let mut out = Vec::new();
    for p in params {
        for node in p.expr.evaluate(resource) {
            let mut push = |value| {
                out.push(Extracted {
                    code: p.code,
                    value,
                })
            };
            values_of(p.kind, node.value, &mut push);
        }
    }
    out
}

/// The index values one node yields for a parameter of type `kind`.
pub fn values_of(kind: ParamType, v: &Value, push: &mut impl FnMut(IndexValue)) {
    match kind {
        ParamType::Token => tokens(v, push),
        ParamType::String => strings(v, push),
        ParamType::Date => dates(v, push),
        ParamType::Reference => references(v, push),
        ParamType::Quantity => quantities(v, push),
        ParamType::Number => numbers(v, push),
        ParamType::Uri => uris(v, push),
        ParamType::Composite => {}
    }
}

fn str_field(map: &Map<String, Value>, key: &str) -> Option<String> {
    map.get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// ContactPoint.system codes (https://hl7.org/fhir/R4/valueset-contact-point-system.html); an
/// Identifier's system is a URI and never one of these.
const CONTACT_SYSTEMS: &[&str] = &["phone", "fax", "email", "pager", "url", "sms", "other"];

/// https://hl7.org/fhir/R4/search.html#token
fn tokens(v: &Value, push: &mut impl FnMut(IndexValue)) {
    match v {
        Value::String(s) if !s.is_empty() => push(IndexValue::Token {
            system: None,
            code: s.clone(),
        }),
        Value::Bool(b) => push(IndexValue::Token {
            system: None,
            code: b.to_string(),
        }),
        Value::Object(map) => {
            if map.contains_key("coding")
                || (map.contains_key("text") && !map.contains_key("value"))
            {
                // CodeableConcept: the words of its text and codings' displays (for `:text`),
                // then each coding. The text comes first so the index can keep it on the
                // concept's first coding row rather than in rows of its own.
                let codings: Vec<&Map<String, Value>> = match map.get("coding") {
                    Some(Value::Array(codings)) => {
                        codings.iter().filter_map(Value::as_object).collect()
                    }
                    _ => Vec::new(),
                };
                let mut texts: Vec<String> = Vec::new();
                for t in codings
                    .iter()
                    .filter_map(|c| str_field(c, "display"))
                    .chain(str_field(map, "text"))
                {
                    let t = normalize(&t);
                    if !t.is_empty() && !texts.contains(&t) {
                        texts.push(t);
                    }
                }
                if !texts.is_empty() {
                    push(IndexValue::TokenText {
                        text: texts.join(" "),
                    });
                }
                for c in codings {
                    coding(c, push);
                }
            } else if map.contains_key("code") {
                if let Some(display) = str_field(map, "display") {
                    push(IndexValue::TokenText {
                        text: normalize(&display),
                    });
                }
                coding(map, push);
            } else if let Some(value) = str_field(map, "value") {
                // Identifier (system|value) or ContactPoint (value only).
                let system =
                    str_field(map, "system").filter(|s| !CONTACT_SYSTEMS.contains(&s.as_str()));
                // Identifier.type, for `:of-type` (https://hl7.org/fhir/R4/search.html#modifiers).
                if let Some(Value::Array(codings)) = map.get("type").and_then(|t| t.get("coding")) {
                    for c in codings.iter().filter_map(Value::as_object) {
                        if let Some(code) = str_field(c, "code") {
                            push(IndexValue::OfType {
                                system: str_field(c, "system"),
                                code,
                                value: value.clone(),
                            });
                        }
                    }
                }
                push(IndexValue::Token {
                    system,
                    code: value,
                });
            }
        }
        _ => {}
    }
}

fn coding(map: &Map<String, Value>, push: &mut impl FnMut(IndexValue)) {
    if let Some(code) = str_field(map, "code") {
        push(IndexValue::Token {
            system: str_field(map, "system"),
            code,
        });
    }
}

/// Parts of a HumanName and an Address that a string search matches
/// (https://hl7.org/fhir/R4/search.html#string).
const STRING_PARTS: &[&str] = &[
    "family",
    "given",
    "prefix",
    "suffix",
    "text",
    "line",
    "city",
    "district",
    "state",
    "postalCode",
    "country",
];

/// https://hl7.org/fhir/R4/search.html#string
fn strings(v: &Value, push: &mut impl FnMut(IndexValue)) {
    let mut one = |s: &str| {
        if !s.trim().is_empty() {
            push(IndexValue::String {
                exact: s.to_owned(),
                normalized: normalize(s),
            });
        }
    };
    match v {
        Value::String(s) => one(s),
        Value::Object(map) => {
            for key in STRING_PARTS {
                match map.get(*key) {
                    Some(Value::String(s)) => one(s),
                    Some(Value::Array(items)) => {
                        items.iter().filter_map(Value::as_str).for_each(&mut one)
                    }
                    _ => {}
                }
            }
        }
        _ => {}
    }
}

/// Lowercase, Latin-1 (and combining) accents removed, whitespace runs collapsed to one space,
/// trimmed: the default string match is case- and accent-insensitive
/// (https://hl7.org/fhir/R4/search.html#string).
pub fn normalize(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut space = false;
    for c in s.chars().flat_map(char::to_lowercase) {
        if c.is_whitespace() {
            space = !out.is_empty();
            continue;
        }
        if ('\u{300}'..='\u{36f}').contains(&c) {
            // Combining diacritical mark (decomposed input).
            continue;
        }
        if space {
            out.push(' ');
            space = false;
        }
        match fold(c) {
            Some(f) => out.push_str(f),
            None => out.push(c),
        }
    }
    out
}

/// Base letters of the lowercase Latin-1 Supplement and common Latin Extended-A letters.
fn fold(c: char) -> Option<&'static str> {
    Some(match c {
        'à' | 'á' | 'â' | 'ã' | 'ä' | 'å' | 'ā' | 'ă' | 'ą' => "a",
        'æ' => "ae",
        'ç' | 'ć' | 'ĉ' | 'ċ' | 'č' => "c",
        'ď' | 'đ' => "d",
        'è' | 'é' | 'ê' | 'ë' | 'ē' | 'ĕ' | 'ė' | 'ę' | 'ě' => "e",
        'ĝ' | 'ğ' | 'ġ' | 'ģ' => "g",
        'ì' | 'í' | 'î' | 'ï' | 'ĩ' | 'ī' | 'ĭ' | 'į' | 'ı' => "i",
        'ł' | 'ľ' | 'ĺ' | 'ļ' => "l",
        'ñ' | 'ń' | 'ň' | 'ņ' => "n",
        'ò' | 'ó' | 'ô' | 'õ' | 'ö' | 'ø' | 'ō' | 'ŏ' | 'ő' => "o",
        'œ' => "oe",
        'ř' | 'ŕ' | 'ŗ' => "r",
        'ś' | 'š' | 'ş' | 'ŝ' => "s",
        'ß' => "ss",
        'ť' | 'ţ' => "t",
        'ù' | 'ú' | 'û' | 'ü' | 'ũ' | 'ū' | 'ŭ' | 'ů' | 'ű' | 'ų' => "u",
        'ý' | 'ÿ' => "y",
        'ź' | 'ż' | 'ž' => "z",
        _ => return None,
    })
}

/// https://hl7.org/fhir/R4/search.html#date: date/dateTime/instant by precision, Period with
/// open ends, Timing by each event (and its bounds period).
fn dates(v: &Value, push: &mut impl FnMut(IndexValue)) {
    match v {
        Value::String(s) => {
            if let Some((start, end)) = parse_instant_range(s) {
                push(IndexValue::Date { start, end });
            }
        }
        Value::Object(map) => {
            if map.contains_key("start") || map.contains_key("end") {
                period(map, push);
            }
            if let Some(Value::Array(events)) = map.get("event") {
                for e in events {
                    if let Some((start, end)) = e.as_str().and_then(parse_instant_range) {
                        push(IndexValue::Date { start, end });
                    }
                }
            }
            if let Some(Value::Object(bounds)) =
                map.get("repeat").and_then(|r| r.get("boundsPeriod"))
            {
                period(bounds, push);
            }
        }
        _ => {}
    }
}

/// A Period; a missing or unparsable end is open (https://hl7.org/fhir/R4/datatypes.html#Period).
fn period(map: &Map<String, Value>, push: &mut impl FnMut(IndexValue)) {
    let bound = |key| {
        map.get(key)
            .and_then(Value::as_str)
            .and_then(parse_instant_range)
    };
    let (start, end) = (bound("start"), bound("end"));
    if start.is_none() && end.is_none() {
        return;
    }
    push(IndexValue::Date {
        start: start.map_or(i64::MIN, |r| r.0),
        end: end.map_or(i64::MAX, |r| r.1),
    });
}

/// https://hl7.org/fhir/R4/search.html#reference: a Reference's `reference`, or a
/// canonical/uri value (url only).
fn references(v: &Value, push: &mut impl FnMut(IndexValue)) {
    match v {
        Value::String(s) if !s.is_empty() => push(IndexValue::Reference {
            target_type: None,
            id: None,
            url: s.clone(),
        }),
        Value::Object(map) => {
            if let Some(Value::Object(ident)) = map.get("identifier")
                && let Some(value) = str_field(ident, "value")
            {
                push(IndexValue::ReferenceIdentifier {
                    system: str_field(ident, "system"),
                    value,
                });
            }
            let Some(url) = map.get("reference").and_then(Value::as_str) else {
                return;
            };
            // `#id` points into `contained`: nothing another resource can be searched by.
            if url.is_empty() || url.starts_with('#') {
                return;
            }
            // Absolute URLs keep their type and id too; whether they point into this server is
            // decided at search time against the request's base (`url` keeps the whole URL).
            let (target_type, id) = match crate::fhir::types::literal_reference(url) {
                Some((t, i)) => (Some(t.as_str().to_owned()), Some(i.to_owned())),
                None => (None, None),
            };
            push(IndexValue::Reference {
                target_type,
                id,
                url: url.to_owned(),
            });
        }
        _ => {}
    }
}

/// https://hl7.org/fhir/R4/search.html#quantity: Quantity and its profiles (Age, Duration,
/// Distance, Count, SimpleQuantity) and Money (currency as a code of ISO 4217).
fn quantities(v: &Value, push: &mut impl FnMut(IndexValue)) {
    let Value::Object(map) = v else { return };
    let Some(Value::Number(n)) = map.get("value") else {
        return;
    };
    let Some(value) = n.as_f64() else { return };
    let currency = str_field(map, "currency");
    let (system, code) = match currency {
        Some(c) => (Some("urn:iso:std:iso:4217".to_owned()), Some(c)),
        None => (str_field(map, "system"), str_field(map, "code")),
    };
    push(IndexValue::Quantity {
        value,
        text: n.to_string(),
        system,
        code,
        unit: str_field(map, "unit"),
    });
}

/// https://hl7.org/fhir/R4/search.html#number
fn numbers(v: &Value, push: &mut impl FnMut(IndexValue)) {
    if let Value::Number(n) = v
        && let Some(value) = n.as_f64()
    {
        push(IndexValue::Number {
            value,
            text: n.to_string(),
        });
    }
}

/// https://hl7.org/fhir/R4/search.html#uri
fn uris(v: &Value, push: &mut impl FnMut(IndexValue)) {
    if let Value::String(s) = v
        && !s.is_empty()
    {
        push(IndexValue::Uri { value: s.clone() });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn values<'a>(all: &'a [Extracted], code: &str) -> Vec<&'a IndexValue> {
        all.iter()
            .filter(|e| e.code == code)
            .map(|e| &e.value)
            .collect()
    }

    fn token(system: Option<&str>, code: &str) -> IndexValue {
        IndexValue::Token {
            system: system.map(str::to_owned),
            code: code.to_owned(),
        }
    }

    fn micros(s: &str) -> i64 {
        crate::store::parse_instant_micros(s).expect("instant")
    }

    fn heart_rate() -> Value {
        json!({
            "resourceType": "Observation",
            "id": "hr1",
            "meta": {"lastUpdated": "2026-11-20T08:31:00.123Z"},
            "identifier": [{"system": "urn:example:device", "value": "m-42"}],
            "status": "final",
            "category": [{"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                "code": "vital-signs"
            }]}],
            "code": {
                "coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}],
                "text": "Heart rate"
            },
            "subject": {"reference": "Patient/p1"},
            "effectiveDateTime": "2026-11-20T08:30:00Z",
            "valueQuantity": {
                "value": 72,
                "unit": "beats/minute",
                "system": "http://unitsofmeasure.org",
                "code": "/min"
            }
        })
    }

    #[test]
    fn heart_rate_observation() {
        let all = extract(&heart_rate());
        // The concept's words for `:text` (display and text, once), then the coding.
        let text = IndexValue::TokenText {
            text: "heart rate".into(),
        };
        assert_eq!(
            values(&all, "code"),
            vec![&text, &token(Some("http://loinc.org"), "8867-4")]
        );
        assert_eq!(
            values(&all, "category"),
            vec![&token(
                Some("http://terminology.hl7.org/CodeSystem/observation-category"),
                "vital-signs"
            )]
        );
        let p1 = IndexValue::Reference {
            target_type: Some("Patient".into()),
            id: Some("p1".into()),
            url: "Patient/p1".into(),
        };
        assert_eq!(values(&all, "patient"), vec![&p1]);
        assert_eq!(values(&all, "subject"), vec![&p1]);
        let t = micros("2026-11-20T08:30:00Z");
        assert_eq!(
            values(&all, "date"),
            vec![&IndexValue::Date { start: t, end: t }]
        );
        assert_eq!(
            values(&all, "value-quantity"),
            vec![&IndexValue::Quantity {
                value: 72.0,
                text: "72".into(),
                system: Some("http://unitsofmeasure.org".into()),
                code: Some("/min".into()),
                unit: Some("beats/minute".into()),
            }]
        );
        assert_eq!(values(&all, "status"), vec![&token(None, "final")]);
        assert_eq!(
            values(&all, "identifier"),
            vec![&token(Some("urn:example:device"), "m-42")]
        );
        assert_eq!(values(&all, "_id"), vec![&token(None, "hr1")]);
        let lu = micros("2026-11-20T08:31:00.123Z");
        assert_eq!(
            values(&all, "_lastUpdated"),
            vec![&IndexValue::Date { start: lu, end: lu }]
        );
        // Composites are not indexed.
        assert!(values(&all, "code-value-quantity").is_empty());
    }

    #[test]
    fn patient() {
        let all = extract(&json!({
            "resourceType": "Patient",
            "active": true,
            "identifier": [{"system": "urn:oid:1.2.36.146.595.217.0.1", "value": "12345"}],
            "name": [{"family": "Müller", "given": ["Anna  Lena", "Émilie"]}],
            "telecom": [
                {"system": "phone", "value": "+49 30 1234"},
                {"system": "email", "value": "anna@example.org"}
            ],
            "gender": "female",
            "birthDate": "1950-04",
            "address": [{"line": ["Hauptstraße 1"], "city": "München", "postalCode": "80331"}]
        }));
        let muller = IndexValue::String {
            exact: "Müller".into(),
            normalized: "muller".into(),
        };
        assert_eq!(values(&all, "family"), vec![&muller]);
        let name = values(&all, "name");
        assert!(name.contains(&&muller));
        assert!(name.contains(&&IndexValue::String {
            exact: "Anna  Lena".into(),
            normalized: "anna lena".into(),
        }));
        assert!(name.contains(&&IndexValue::String {
            exact: "Émilie".into(),
            normalized: "emilie".into(),
        }));
        assert_eq!(
            values(&all, "birthdate"),
            vec![&IndexValue::Date {
                start: micros("1950-04-01T00:00:00Z"),
                end: micros("1950-05-01T00:00:00Z") - 1,
            }]
        );
        assert_eq!(
            values(&all, "identifier"),
            vec![&token(Some("urn:oid:1.2.36.146.595.217.0.1"), "12345")]
        );
        assert_eq!(
            values(&all, "telecom"),
            vec![
                &token(None, "+49 30 1234"),
                &token(None, "anna@example.org")
            ]
        );
        assert_eq!(values(&all, "phone"), vec![&token(None, "+49 30 1234")]);
        assert_eq!(
            values(&all, "email"),
            vec![&token(None, "anna@example.org")]
        );
        assert_eq!(values(&all, "gender"), vec![&token(None, "female")]);
        assert_eq!(
            values(&all, "address-city"),
            vec![&IndexValue::String {
                exact: "München".into(),
                normalized: "munchen".into(),
            }]
        );
        assert!(values(&all, "address").contains(&&IndexValue::String {
            exact: "Hauptstraße 1".into(),
            normalized: "hauptstrasse 1".into(),
        }));
        assert_eq!(values(&all, "active"), vec![&token(None, "true")]);
        assert!(values(&all, "_id").is_empty());
    }

    #[test]
    fn open_periods() {
        let all = extract(&json!({
            "resourceType": "Encounter",
            "status": "in-progress",
            "period": {"start": "2026-11-20T08:00:00Z"}
        }));
        assert_eq!(
            values(&all, "date"),
            vec![&IndexValue::Date {
                start: micros("2026-11-20T08:00:00Z"),
                end: i64::MAX,
            }]
        );
        let all = extract(&json!({
            "resourceType": "Observation",
            "effectivePeriod": {"end": "2026-11-20"}
        }));
        assert_eq!(
            values(&all, "date"),
            vec![&IndexValue::Date {
                start: i64::MIN,
                end: micros("2026-11-21T00:00:00Z") - 1,
            }]
        );
    }

    #[test]
    fn references_and_odd_values() {
        let type_and_id =
            |u| crate::fhir::types::literal_reference(u).map(|(t, i)| (t.as_str(), i));
        assert_eq!(
            type_and_id("https://fhir.example.org/r4/Patient/p1/_history/3"),
            Some(("Patient", "p1"))
        );
        assert_eq!(
            type_and_id("urn:uuid:5b3a0c0e-8d5c-4a8e-9a0e-1f2d3c4b5a69"),
            None
        );
        assert_eq!(type_and_id("Nonsense/p1"), None);

        // Wrong JSON kinds, empty objects, contained and unresolvable references: no panic,
        // nothing indexed for the malformed parts.
        for odd in [
            json!({"resourceType": "Observation", "code": 5, "subject": "Patient/p1",
                   "category": [{"coding": "x"}, {}, [1, 2]], "valueQuantity": {"value": "72"},
                   "effectiveDateTime": "not a date", "status": {}, "identifier": [{}]}),
            json!({"resourceType": "Observation", "code": {"coding": [{}, 3, {"code": 7}]},
                   "subject": {"reference": "#p"}, "effectivePeriod": {},
                   "valueQuantity": {}, "meta": {"lastUpdated": 12}}),
            json!({"resourceType": "Patient", "name": [{"given": [1, null, ""]}, "x"],
                   "birthDate": false, "telecom": [{"system": "phone"}], "active": "yes"}),
            json!({"resourceType": "NoSuchType", "id": "a"}),
            json!({}),
            json!([1, 2]),
            json!(null),
        ] {
            let all = extract(&odd);
            assert!(values(&all, "code").is_empty(), "{all:?}");
            assert!(values(&all, "date").is_empty(), "{all:?}");
            assert!(values(&all, "value-quantity").is_empty(), "{all:?}");
            assert!(values(&all, "birthdate").is_empty(), "{all:?}");
        }
        let all = extract(&json!({"resourceType": "Observation",
            "subject": {"reference": "urn:uuid:5b3a0c0e"}}));
        assert_eq!(
            values(&all, "subject"),
            vec![&IndexValue::Reference {
                target_type: None,
                id: None,
                url: "urn:uuid:5b3a0c0e".into()
            }]
        );
    }

    #[test]
    fn every_parameter_compiles() {
        // Every non-composite parameter with an expression must parse; a failure would silently
        // leave that parameter unindexed.
        for ty in ResourceType::all() {
            for p in registry::for_type(ty.as_str()) {
                if p.kind != ParamType::Composite && !p.expression.is_empty() {
                    assert!(
                        fhirpath::parse(p.expression).is_ok(),
                        "{ty} {} {:?}",
                        p.code,
                        p.expression
                    );
                }
            }
        }
    }
}
