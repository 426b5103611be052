//! Search parameters: parsing a query string into typed criteria for the store.
//!
//! This first cut knows `_id` and `identifier` (token), which conditional create, update and
//! delete and conditional references need (https://hl7.org/fhir/R4/http.html#ccreate). The full
//! registry generated from the R4 definitions replaces it.

pub mod extract;
pub mod fhirpath;
pub mod registry;

use crate::fhir::types::ResourceType;
use crate::store::Criterion;

/// Parameters that control the result rather than select resources
/// (https://hl7.org/fhir/R4/search.html#Summary).
pub const RESULT_PARAMETERS: &[&str] = &[
    "_count",
    "_offset",
    "_format",
    "_pretty",
    "_sort",
    "_total",
    "_summary",
    "_elements",
    "_include",
    "_revinclude",
    "_contained",
    "_containedType",
];

/// A parsed search.
#[derive(Debug, Clone, Default)]
pub struct SearchQuery {
    pub criteria: Vec<Criterion>,
    /// Parameters this server does not know (name only; values may carry patient data).
    pub unknown: Vec<String>,
    /// Parameters it knows but whose value is malformed, with the reason.
    pub invalid: Vec<(String, String)>,
    pub count: Option<usize>,
    pub offset: usize,
}

/// Default and maximum page sizes.
pub const DEFAULT_COUNT: usize = 20;
pub const MAX_COUNT: usize = 1000;

/// Parses decoded `(name, value)` pairs for a search on `ty`.
pub fn parse(_ty: ResourceType, params: &[(String, String)]) -> SearchQuery {
    let mut q = SearchQuery::default();
    for (name, value) in params {
        match name.as_str() {
            "_id" => q
                .criteria
                .push(Criterion::Id(split_or(value).map(str::to_owned).collect())),
            "identifier" => q.criteria.push(Criterion::Token {
                param: "identifier".into(),
                values: split_or(value).map(parse_token).collect(),
            }),
            "_count" => match value.parse::<usize>() {
                Ok(n) => q.count = Some(n.min(MAX_COUNT)),
                Err(_) => q
                    .invalid
                    .push((name.clone(), "_count must be a non-negative integer".into())),
            },
            "_offset" => match value.parse::<usize>() {
                Ok(n) => q.offset = n,
                Err(_) => q.invalid.push((
                    name.clone(),
                    "_offset must be a non-negative integer".into(),
                )),
            },
            n if RESULT_PARAMETERS.contains(&n) => {}
            _ => q.unknown.push(name.clone()),
        }
    }
    q
}

/// Comma separates alternatives; `\,` is a literal comma (search.html#escaping).
fn split_or(value: &str) -> impl Iterator<Item = &str> {
    let mut parts = Vec::new();
    let mut start = 0;
    let bytes = value.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' {
            i += 2;
            continue;
        }
        if bytes[i] == b',' {
            parts.push(&value[start..i]);
            start = i + 1;
        }
        i += 1;
    }
    parts.push(&value[start..]);
    parts.into_iter().filter(|p| !p.is_empty())
}

/// `system|code`, `|code` (no system) or `code` (any system) (search.html#token).
fn parse_token(v: &str) -> (Option<String>, String) {
    let unescape = |s: &str| {
        s.replace("\\,", ",")
            .replace("\\|", "|")
            .replace("\\$", "$")
            .replace("\\\\", "\\")
    };
    // Split at the first `|` that is not escaped.
    let bytes = v.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'|' => return (Some(unescape(&v[..i])), unescape(&v[i + 1..])),
            _ => i += 1,
        }
    }
    (None, unescape(v))
}

/// Decodes an `application/x-www-form-urlencoded` query string into pairs.
pub fn decode_query(raw: &str) -> Vec<(String, String)> {
    url::form_urlencoded::parse(raw.as_bytes())
        .into_owned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens() {
        assert_eq!(
            parse_token("http://x|1"),
            (Some("http://x".into()), "1".into())
        );
        assert_eq!(parse_token("|1"), (Some("".into()), "1".into()));
        assert_eq!(parse_token("1"), (None, "1".into()));
        assert_eq!(parse_token("a\\|b|c"), (Some("a|b".into()), "c".into()));
        assert_eq!(
            split_or("a,b\\,c,,d").collect::<Vec<_>>(),
            vec!["a", "b\\,c", "d"]
        );
    }

    #[test]
    fn parses_known_and_unknown() {
        let ty = ResourceType::parse("Patient").expect("type");
        let q = parse(
            ty,
            &decode_query("identifier=http://x|1,2&_count=5&name=smith&_count2=1"),
        );
        assert_eq!(q.criteria.len(), 1);
        assert_eq!(q.count, Some(5));
        assert_eq!(q.unknown, vec!["name".to_string(), "_count2".to_string()]);
        let q = parse(ty, &decode_query("_count=-1"));
        assert_eq!(q.invalid.len(), 1);
    }
}
