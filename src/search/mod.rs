//! FHIR search (https://hl7.org/fhir/R4/search.html): parsing a query string into the store's
//! [`Clause`]s and result controls, for every R4 search parameter of the [`registry`].
//!
//! [`parse`] never fails: parameters it does not know land in `unknown` and malformed values in
//! `invalid`; the caller decides (`Prefer: handling=strict` → 400, otherwise ignored and
//! reported in an `outcome` entry, search.html#errors). [`engine`] runs a parsed search.

pub mod engine;
pub mod extract;
pub mod fhirpath;
pub mod index;
pub mod registry;
pub mod summary;
pub mod terminology;
pub mod ucum;

use crate::fhir::types::{ResourceType, literal_reference};
use crate::store::parse_instant_range;
use crate::store::query::{
    self as query, Bind, Clause, Cursor, DateRange, Num, Pred, Prefix, SortKey, Table, TokenMatch,
};
use registry::ParamType;
use summary::Summary;

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
    "_type",
    "_cursor",
];

/// `_total` (https://hl7.org/fhir/R4/search.html#total).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Total {
    None,
    Estimate,
    Accurate,
}

/// An `_include` or `_revinclude` (https://hl7.org/fhir/R4/search.html#include).
#[derive(Debug, Clone, PartialEq)]
pub struct Include {
    pub source: String,
    /// `None` for `*` (every reference parameter).
    pub param: Option<String>,
    pub target: Option<String>,
    pub iterate: bool,
}

/// A parsed search.
#[derive(Debug, Clone, Default)]
pub struct SearchQuery {
    pub clauses: Vec<Clause>,
    /// Parameters this server does not know (name only; values may carry patient data).
    pub unknown: Vec<String>,
    /// Parameters it knows but whose value is malformed, with the reason.
    pub invalid: Vec<(String, String)>,
    /// The parameters that were used, in order, for the `self` link.
    pub used: Vec<(String, String)>,
    pub count: Option<usize>,
    pub offset: usize,
    pub sort: Vec<SortKey>,
    pub total: Option<Total>,
    pub summary: Option<Summary>,
    pub elements: Option<Vec<String>>,
    pub include: Vec<Include>,
    pub revinclude: Vec<Include>,
    /// `_type` of a system search.
    pub types: Vec<ResourceType>,
    pub cursor: Option<Cursor>,
    /// The FHIR base URL of the request: absolute references under it are this server's.
    pub base: String,
}

impl SearchQuery {
    /// True when nothing selects resources (conditional interactions need criteria).
    pub fn has_criteria(&self) -> bool {
        !self.clauses.is_empty()
    }
}

/// Default and maximum page sizes.
pub const DEFAULT_COUNT: usize = 20;
pub const MAX_COUNT: usize = 1000;

/// Why a parameter was not used.
enum Bad {
    Unknown,
    Invalid(String),
}

fn invalid<T>(msg: impl Into<String>) -> Result<T, Bad> {
    Err(Bad::Invalid(msg.into()))
}

/// Parses decoded `(name, value)` pairs for a search on `ty` (`None`: a system search). `base`
/// is the server's FHIR base URL, so that absolute references to this server match.
pub fn parse(ty: Option<ResourceType>, params: &[(String, String)], base: &str) -> SearchQuery {
    let mut q = SearchQuery {
        base: base.to_owned(),
        ..Default::default()
    };
    for (name, value) in params {
        match control(&mut q, ty, name, value) {
            Ok(true) => {
                if !matches!(name.as_str(), "_cursor" | "_offset" | "_format" | "_pretty") {
                    q.used.push((name.clone(), value.clone()));
                }
                continue;
            }
            Ok(false) => {}
            Err(Bad::Unknown) => {
                q.unknown.push(name.clone());
                continue;
            }
            Err(Bad::Invalid(why)) => {
                q.invalid.push((name.clone(), why));
                continue;
            }
        }
        let ty_name = ty.map(|t| t.as_str()).unwrap_or(registry::ALL_TYPES);
        match clause(ty_name, name, value, base) {
            Ok(c) => {
                q.clauses.push(c);
                q.used.push((name.clone(), value.clone()));
            }
            Err(Bad::Unknown) => q.unknown.push(name.clone()),
            Err(Bad::Invalid(why)) => q.invalid.push((name.clone(), why)),
        }
    }
    if let Some(c) = &mut q.cursor
        && !fit_cursor(c, &q.sort)
    {
        q.cursor = None;
        q.invalid.push((
            "_cursor".into(),
            "the paging cursor was made for another _sort".into(),
        ));
    }
    q
}

/// Checks that `c` holds one value of the right kind per key of `sort` (a whole number where a
/// decimal is due is taken as one).
fn fit_cursor(c: &mut Cursor, sort: &[SortKey]) -> bool {
    if c.keys.len() != sort.len() {
        return false;
    }
    sort.iter().zip(c.keys.iter_mut()).all(|(key, v)| {
        if let (query::KeyKind::Float, Some(Bind::Int(i))) = (key.kind(), &v) {
            *v = Some(Bind::Float(*i as f64));
        }
        key.admits(v)
    })
}

/// Result parameters. `Ok(true)` when `name` was one.
fn control(
    q: &mut SearchQuery,
    ty: Option<ResourceType>,
    name: &str,
    value: &str,
) -> Result<bool, Bad> {
    let non_negative = |what: &str| -> Result<usize, Bad> {
        value
            .parse::<usize>()
            .map_err(|_| Bad::Invalid(format!("{what} must be a non-negative integer")))
    };
    match name {
        "_count" => q.count = Some(non_negative("_count")?.min(MAX_COUNT)),
        "_offset" => q.offset = non_negative("_offset")?,
        "_format" | "_pretty" | "_contained" | "_containedType" => {}
        "_total" => {
            q.total = Some(match value {
                "none" => Total::None,
                "estimate" => Total::Estimate,
                "accurate" => Total::Accurate,
                _ => return invalid("_total is none, estimate or accurate"),
            })
        }
        "_summary" => {
            q.summary = Some(Summary::parse(value).ok_or_else(|| {
                Bad::Invalid("_summary is true, text, data, count or false".into())
            })?)
        }
        "_elements" => {
            q.elements = Some(
                value
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect(),
            )
        }
        "_sort" => {
            for key in value.split(',').map(str::trim).filter(|k| !k.is_empty()) {
                let (desc, code) = match key.strip_prefix('-') {
                    Some(c) => (true, c),
                    None => (false, key),
                };
                q.sort.push(sort_key(ty, code, desc)?);
            }
        }
        "_type" => {
            for t in value.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                q.types.push(
                    ResourceType::parse(t)
                        .ok_or_else(|| Bad::Invalid(format!("'{t}' is not a resource type")))?,
                );
            }
        }
        "_cursor" => {
            q.cursor = Some(
                parse_cursor(value)
                    .ok_or_else(|| Bad::Invalid("malformed paging cursor".into()))?,
            )
        }
        _ => {
            let (base, modifier) = split_modifier(name);
            let iterate = match modifier {
                None => false,
                Some("iterate" | "recurse") => true,
                Some(_) if base == "_include" || base == "_revinclude" => {
                    return invalid("the only modifier of _include/_revinclude is :iterate");
                }
                Some(_) => false,
            };
            match base {
                "_include" => q.include.push(include(value, iterate)?),
                "_revinclude" => q.revinclude.push(include(value, iterate)?),
                _ => return Ok(false),
            }
        }
    }
    Ok(true)
}

fn include(value: &str, iterate: bool) -> Result<Include, Bad> {
    let mut parts = value.split(':');
    let source = parts.next().unwrap_or_default();
    let param = parts.next();
    let target = parts.next();
    if value == "*" {
        return Ok(Include {
            source: "*".into(),
            param: None,
            target: None,
            iterate,
        });
    }
    if ResourceType::parse(source).is_none() {
        return invalid(format!("'{source}' is not a resource type"));
    }
    let mut target = target.map(str::to_owned);
    let param = match param {
        Some("*") => None,
        Some(p) => match registry::lookup(source, p) {
            Some(sp) if sp.kind == ParamType::Reference => match registry::alias(source, p) {
                // `Observation:patient` is `Observation:subject:Patient`.
                Some((wider, t)) => {
                    if target.as_deref().is_some_and(|x| x != t) {
                        target = Some(String::new());
                    } else {
                        target = Some(t.to_owned());
                    }
                    Some(wider.to_owned())
                }
                None => Some(p.to_owned()),
            },
            _ => return invalid(format!("{source} has no reference parameter '{p}'")),
        },
        None => return invalid("_include takes SourceType:parameter[:TargetType]"),
    };
    if let Some(t) = &target
        && !t.is_empty()
        && ResourceType::parse(t).is_none()
    {
        return invalid(format!("'{t}' is not a resource type"));
    }
    Ok(Include {
        source: source.to_owned(),
        param,
        target,
        iterate,
    })
}

fn sort_key(ty: Option<ResourceType>, code: &str, desc: bool) -> Result<SortKey, Bad> {
    match code {
        "_id" => return Ok(SortKey::Id { desc }),
        "_lastUpdated" => return Ok(SortKey::LastUpdated { desc }),
        _ => {}
    }
    let ty = ty.map(|t| t.as_str()).unwrap_or(registry::ALL_TYPES);
    let p = registry::lookup(ty, code)
        .filter(|p| !p.expression.is_empty())
        .ok_or_else(|| Bad::Invalid(format!("cannot sort by unknown parameter '{code}'")))?;
    let code = registry::alias(ty, code).map_or(code, |(wider, _)| wider);
    let table = table_for(p.kind);
    if table == Table::Composite {
        return invalid(format!("cannot sort by composite parameter '{code}'"));
    }
    Ok(SortKey::Param {
        table,
        param: code.to_owned(),
        desc,
    })
}

/// `after.<type>.<id>` or `before.…`: a keyset position (types contain no dots; the id is the
/// rest, dots and all). Under `_sort`, `after-<values>.…` carries the position's sort values
/// as a base64url JSON array (no dots).
fn parse_cursor(v: &str) -> Option<Cursor> {
    use base64::Engine as _;
    let mut parts = v.splitn(3, '.');
    let first = parts.next()?;
    let (side, values) = match first.split_once('-') {
        Some((side, values)) => (side, Some(values)),
        None => (first, None),
    };
    let before = match side {
        "after" => false,
        "before" => true,
        _ => return None,
    };
    let ty = parts.next()?;
    let id = parts.next()?;
    ResourceType::parse(ty)?;
    let keys = match values {
        None => Vec::new(),
        Some(b64) => {
            let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(b64)
                .ok()?;
            let values: Vec<serde_json::Value> = serde_json::from_slice(&raw).ok()?;
            values
                .into_iter()
                .map(|v| match v {
                    serde_json::Value::Null => Some(None),
                    serde_json::Value::String(s) => Some(Some(Bind::Text(s))),
                    serde_json::Value::Number(n) => Some(Some(match n.as_i64() {
                        Some(i) => Bind::Int(i),
                        None => Bind::Float(n.as_f64()?),
                    })),
                    _ => None,
                })
                .collect::<Option<Vec<_>>>()?
        }
    };
    Some(Cursor {
        before,
        ty: ty.to_owned(),
        id: id.to_owned(),
        keys,
    })
}

/// Formats a cursor for a paging link.
pub fn format_cursor(c: &Cursor) -> String {
    use base64::Engine as _;
    let side = if c.before { "before" } else { "after" };
    if c.keys.is_empty() {
        return format!("{side}.{}.{}", c.ty, c.id);
    }
    let values: Vec<serde_json::Value> = c
        .keys
        .iter()
        .map(|k| match k {
            None => serde_json::Value::Null,
            Some(Bind::Text(s)) => s.as_str().into(),
            Some(Bind::Int(i)) => (*i).into(),
            // A non-finite value cannot be indexed, so never sorted by; null keeps it valid JSON.
            Some(Bind::Float(f)) => serde_json::Number::from_f64(*f)
                .map(serde_json::Value::Number)
                .unwrap_or(serde_json::Value::Null),
        })
        .collect();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(serde_json::Value::Array(values).to_string());
    format!("{side}-{b64}.{}.{}", c.ty, c.id)
}

fn table_for(kind: ParamType) -> Table {
    match kind {
        ParamType::Token => Table::Token,
        ParamType::String => Table::String,
        ParamType::Date => Table::Date,
        ParamType::Reference => Table::Reference,
        ParamType::Quantity => Table::Quantity,
        ParamType::Number => Table::Number,
        ParamType::Uri => Table::Uri,
        ParamType::Composite => Table::Composite,
    }
}

/// `code:modifier` → (code, modifier).
fn split_modifier(name: &str) -> (&str, Option<&str>) {
    match name.split_once(':') {
        Some((c, m)) => (c, Some(m)),
        None => (name, None),
    }
}

/// One selection parameter on resources of `ty`.
fn clause(ty: &str, name: &str, value: &str, base: &str) -> Result<Clause, Bad> {
    // Reverse chaining: _has:Type:param:rest (search.html#has), nestable.
    if let Some(rest) = name.strip_prefix("_has:") {
        let mut it = rest.splitn(3, ':');
        let (Some(source), Some(param), Some(inner)) = (it.next(), it.next(), it.next()) else {
            return invalid("_has takes _has:Type:parameter:parameter=value");
        };
        if ResourceType::parse(source).is_none() {
            return invalid(format!("'{source}' is not a resource type"));
        }
        match registry::lookup(source, param) {
            Some(p) if p.kind == ParamType::Reference => {}
            _ => return invalid(format!("{source} has no reference parameter '{param}'")),
        }
        let inner = clause(source, inner, value, base)?;
        let param = match registry::alias(source, param) {
            Some((_, target)) if target != ty => return Ok(Clause::Nothing),
            Some((wider, _)) => wider,
            None => param,
        };
        return Ok(Clause::Has {
            source_type: source.to_owned(),
            param: param.to_owned(),
            inner: Box::new(inner),
            base: base.to_owned(),
        });
    }
    // Chaining: param[:Type].rest (search.html#chaining), several levels.
    if let Some((left, right)) = name.split_once('.') {
        let (code, modifier) = split_modifier(left);
        let p = registry::lookup(ty, code).ok_or(Bad::Unknown)?;
        if p.kind != ParamType::Reference {
            return invalid(format!(
                "'{code}' is not a reference parameter and cannot be chained"
            ));
        }
        let mut targets: Vec<&str> = match modifier {
            Some(t) => {
                if ResourceType::parse(t).is_none() {
                    return invalid(format!("'{t}' is not a resource type"));
                }
                vec![t]
            }
            None => p.targets.clone(),
        };
        let code = match registry::alias(ty, code) {
            Some((wider, target)) => {
                targets.retain(|t| *t == target);
                wider
            }
            None => code,
        };
        let mut branches = Vec::new();
        for t in targets {
            match clause(t, right, value, base) {
                Ok(c) => branches.push((t.to_owned(), Box::new(c))),
                Err(Bad::Unknown) => continue,
                Err(e) => return Err(e),
            }
        }
        if branches.is_empty() {
            return Err(Bad::Unknown);
        }
        return Ok(Clause::Chain {
            param: code.to_owned(),
            targets: branches,
            base: base.to_owned(),
        });
    }
    let (code, modifier) = split_modifier(name);
    // An empty `_id=` or `_lastUpdated=` would be a search for nothing in no list; refused like
    // every other parameter's empty value (below).
    if matches!(code, "_id" | "_lastUpdated") && split_or(value).is_empty() {
        return invalid("empty value");
    }
    match code {
        "_id" => {
            let negate = match modifier {
                None | Some("exact") => false,
                Some("not") => true,
                Some(m) => return invalid(format!("modifier :{m} is not supported on _id")),
            };
            return Ok(Clause::Id {
                ids: split_or(value).into_iter().map(unescape).collect(),
                negate,
            });
        }
        "_lastUpdated" => {
            if modifier.is_some() {
                return invalid("_lastUpdated takes no modifier");
            }
            return Ok(Clause::LastUpdated(
                split_or(value)
                    .into_iter()
                    .map(date_value)
                    .collect::<Result<_, _>>()?,
            ));
        }
        _ => {}
    }
    // Observation combo-*: the parameter on the Observation or on its components.
    if ty == "Observation"
        && let Some((_, parts)) = index::COMBOS.iter().find(|(c, _)| *c == code)
    {
        let a = clause(ty, &rename(parts[0], modifier), value, base)?;
        let b = clause(ty, &rename(parts[1], modifier), value, base)?;
        // Missing from both (`:missing=true`) or negated (`:not`) means neither matches.
        let both = modifier == Some("not") || (modifier == Some("missing") && value == "true");
        return Ok(if both {
            Clause::All(vec![a, b])
        } else {
            Clause::Any(vec![a, b])
        });
    }
    let p = registry::lookup(ty, code).ok_or(Bad::Unknown)?;
    // _text, _content, _query, _list, _filter: not supported (the definitions give no path).
    if p.expression.is_empty() {
        return Err(Bad::Unknown);
    }
    // A narrowed reference (`patient` of `subject`) is searched on the wider parameter with
    // the target type fixed (registry::alias).
    if let Some((wider, target)) = registry::alias(ty, code) {
        return Ok(narrow(
            clause(ty, &rename(wider, modifier), value, base)?,
            target,
        ));
    }
    // A composite over the resource itself is the AND of its components, per alternative.
    if registry::is_root_composite(p) && modifier.is_none() {
        let mut any = Vec::new();
        for v in split_or(value) {
            let parts = split_unescaped(v, '$');
            if parts.len() != p.components.len() {
                return invalid(format!(
                    "{code} takes {} values separated by $",
                    p.components.len()
                ));
            }
            let all = p
                .components
                .iter()
                .zip(&parts)
                .map(|(c, part)| clause(ty, c.code, &escape(part), base))
                .collect::<Result<Vec<_>, _>>()?;
            any.push(Clause::All(all));
        }
        return Ok(Clause::Any(any));
    }
    let table = table_for(p.kind);
    if modifier == Some("missing") {
        let missing = match value {
            "true" => true,
            "false" => false,
            _ => return invalid(":missing takes true or false"),
        };
        return Ok(Clause::Missing {
            table,
            param: code.to_owned(),
            missing,
        });
    }
    let values = split_or(value);
    if values.is_empty() {
        return invalid("empty value");
    }
    let unsupported = |m: &str| invalid(format!("modifier :{m} is not supported on {code}"));
    let mut param = code.to_owned();
    let mut table = table;
    let mut negate = false;
    let mut any_of = Vec::new();
    match p.kind {
        ParamType::Token => match modifier {
            None | Some("not") => {
                negate = modifier.is_some();
                any_of = values.iter().map(|v| Pred::Token(token_match(v))).collect();
            }
            Some("text") => {
                // The words are kept on the concept's first coding row (search::index).
                for v in &values {
                    let n = extract::normalize(&unescape(v));
                    // Starts the text, or starts a word of it.
                    any_of.push(Pred::Prefix {
                        column: "text",
                        value: n.clone(),
                    });
                    any_of.push(Pred::Contains {
                        column: "text",
                        value: format!(" {n}"),
                    });
                }
            }
            Some("of-type") => {
                param = format!("{code}:of-type");
                for v in &values {
                    let parts = split_unescaped(v, '|');
                    if parts.len() != 3 {
                        return invalid(":of-type takes system|code|value");
                    }
                    any_of.push(Pred::Token(TokenMatch {
                        system: Some(Some(parts[0].clone())).filter(|_| !parts[0].is_empty()),
                        code: Some(format!("{}|{}", parts[1], parts[2])),
                    }));
                }
            }
            Some(m @ ("below" | "above")) => {
                for v in &values {
                    match token_match(v) {
                        TokenMatch {
                            system: Some(Some(system)),
                            code: Some(code),
                        } => any_of.push(Pred::Subsumption {
                            system,
                            code,
                            below: m == "below",
                        }),
                        _ => {
                            return invalid(format!(
                                ":{m} takes system|code: the code system whose hierarchy to follow"
                            ));
                        }
                    }
                }
            }
            Some(m @ ("in" | "not-in")) => {
                negate = m == "not-in";
                any_of = values
                    .iter()
                    .map(|v| Pred::InValueSet(unescape(v)))
                    .collect();
            }
            Some(m) => return unsupported(m),
        },
        ParamType::String => {
            for v in &values {
                let v = unescape(v);
                any_of.push(match modifier {
                    None => Pred::Prefix {
                        column: "norm",
                        value: extract::normalize(&v),
                    },
                    Some("exact") => Pred::Equals {
                        column: "exact",
                        value: v,
                    },
                    Some("contains" | "text") => Pred::Contains {
                        column: "norm",
                        value: extract::normalize(&v),
                    },
                    Some(m) => return unsupported(m),
                });
            }
        }
        ParamType::Date => {
            if let Some(m) = modifier {
                return unsupported(m);
            }
            for v in &values {
                any_of.push(Pred::Date(date_value(v)?));
            }
        }
        ParamType::Number => {
            if let Some(m) = modifier {
                return unsupported(m);
            }
            for v in &values {
                any_of.push(Pred::Number(number_value(v)?));
            }
        }
        ParamType::Quantity => {
            if let Some(m) = modifier {
                return unsupported(m);
            }
            for v in &values {
                any_of.push(quantity_value(v)?);
            }
        }
        ParamType::Uri => {
            for v in &values {
                let v = unescape(v);
                any_of.push(match modifier {
                    None => Pred::Equals {
                        column: "value",
                        value: v,
                    },
                    Some("below") => Pred::UriBelow(v),
                    Some("above") => Pred::UriAbove(v),
                    Some(m) => return unsupported(m),
                });
            }
        }
        ParamType::Reference => match modifier {
            Some("identifier") => {
                param = format!("{code}:identifier");
                table = Table::Token;
                any_of = values.iter().map(|v| Pred::Token(token_match(v))).collect();
            }
            Some(m) if ResourceType::parse(m).is_none() => return unsupported(m),
            _ => {
                for v in &values {
                    // None: a type the modifier excludes; this alternative matches nothing.
                    if let Some(p) = reference_value(&unescape(v), modifier, base) {
                        any_of.push(p);
                    }
                }
                if any_of.is_empty() {
                    return Ok(Clause::Nothing);
                }
            }
        },
        ParamType::Composite => {
            if let Some(m) = modifier {
                return unsupported(m);
            }
            for v in &values {
                any_of.push(composite_value(ty, p, v)?);
            }
        }
    }
    Ok(Clause::Values {
        table,
        param,
        any_of,
        negate,
    })
}

/// `code` with `modifier` (`code:modifier`).
fn rename(code: &str, modifier: Option<&str>) -> String {
    match modifier {
        Some(m) => format!("{code}:{m}"),
        None => code.to_owned(),
    }
}

/// Restricts a reference clause to targets of type `target`.
fn narrow(c: Clause, target: &str) -> Clause {
    match c {
        Clause::Values {
            table: Table::Reference,
            param,
            any_of,
            negate,
        } => {
            let any_of: Vec<Pred> = any_of
                .into_iter()
                .filter_map(|p| match p {
                    Pred::Reference {
                        target_type: None,
                        id,
                        base,
                    } => Some(Pred::Reference {
                        target_type: Some(target.to_owned()),
                        id,
                        base,
                    }),
                    Pred::Reference {
                        target_type: Some(t),
                        ..
                    } if t != target => None,
                    other => Some(other),
                })
                .collect();
            if any_of.is_empty() && !negate {
                return Clause::Nothing;
            }
            Clause::Values {
                table: Table::Reference,
                param,
                any_of,
                negate,
            }
        }
        Clause::Chain {
            param,
            targets,
            base,
        } => Clause::Chain {
            param,
            targets: targets.into_iter().filter(|(t, _)| t == target).collect(),
            base,
        },
        other => other,
    }
}

/// Escapes what `split_or` and the composite split treat specially, so a component value
/// parsed by `clause` reads as it was written (a `|` stays a separator).
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '\\' | ',' | '$') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// https://hl7.org/fhir/R4/search.html#reference: `id`, `Type/id`, an absolute URL on this
/// server, another URL or canonical (matched as written). `None` when `type_modifier` rules it
/// out.
fn reference_value(v: &str, type_modifier: Option<&str>, base: &str) -> Option<Pred> {
    let local = v
        .strip_prefix(base.trim_end_matches('/'))
        .and_then(|rest| rest.strip_prefix('/'))
        .unwrap_or(v);
    // A versioned reference matches the resource (search.html#versions).
    let local = match local.find("/_history/") {
        Some(i) => &local[..i],
        None => local,
    };
    let absolute = local.contains("://");
    if !absolute && let Some((t, id)) = literal_reference(local) {
        if type_modifier.is_some_and(|m| m != t.as_str()) {
            return None;
        }
        return Some(Pred::Reference {
            target_type: Some(t.as_str().to_owned()),
            id: id.to_owned(),
            base: base.to_owned(),
        });
    }
    if local.contains('/') || local.contains(':') {
        let url = local.split('|').next().unwrap_or(local);
        return Some(Pred::Equals {
            column: "url",
            value: url.to_owned(),
        });
    }
    Some(Pred::Reference {
        target_type: type_modifier.map(str::to_owned),
        id: local.to_owned(),
        base: base.to_owned(),
    })
}

/// Splits a leading prefix off a date, number or quantity value.
fn prefix(v: &str) -> (Prefix, &str) {
    // `get`, not indexing: the value is the client's text, and byte 2 may fall inside a
    // multi-byte character.
    if let (Some(head), Some(rest)) = (v.get(..2), v.get(2..))
        && let Some(p) = Prefix::parse(head)
        && rest.starts_with(|c: char| c.is_ascii_digit() || c == '-' || c == '+' || c == '.')
    {
        return (p, rest);
    }
    (Prefix::Eq, v)
}

fn date_value(v: &str) -> Result<DateRange, Bad> {
    let (prefix, rest) = prefix(v);
    let Some((lo, hi)) = parse_instant_range(rest) else {
        return invalid(format!("'{rest}' is not a FHIR date, dateTime or instant"));
    };
    Ok(DateRange { prefix, lo, hi })
}

/// A decimal with the range its precision implies (search.html#number).
fn number_value(v: &str) -> Result<Num, Bad> {
    let (prefix, rest) = prefix(v);
    let Ok(value) = rest.parse::<f64>() else {
        return invalid(format!("'{rest}' is not a number"));
    };
    if !value.is_finite() {
        return invalid(format!("'{rest}' is not a number"));
    }
    let (mantissa, exp) = match rest.find(['e', 'E']) {
        Some(i) => (&rest[..i], rest[i + 1..].parse::<i32>().unwrap_or(0)),
        None => (rest, 0),
    };
    let decimals = mantissa.split_once('.').map_or(0, |(_, f)| f.len()) as i32;
    let half = 0.5 * 10f64.powi(exp - decimals);
    Ok(Num {
        prefix,
        value,
        lo: value - half,
        hi: value + half,
    })
}

/// `[prefix]value[|system|code]` (search.html#quantity).
fn quantity_value(v: &str) -> Result<Pred, Bad> {
    let parts = split_unescaped(v, '|');
    let num = number_value(&parts[0])?;
    let (system, code) = match parts.len() {
        1 => (None, None),
        3 => (
            Some(parts[1].clone()).filter(|s| !s.is_empty()),
            Some(parts[2].clone()).filter(|s| !s.is_empty()),
        ),
        _ => return invalid("a quantity is value|system|code"),
    };
    Ok(Pred::Quantity {
        canonical: canonical_num(&num, system.as_deref(), code.as_deref()),
        num,
        system,
        code,
    })
}

/// The search value in canonical UCUM units, when its unit is UCUM (or has no system) and known.
fn canonical_num(num: &Num, system: Option<&str>, code: Option<&str>) -> Option<(Num, String)> {
    let code = code?;
    if system.is_some_and(|s| s != ucum::UCUM) {
        return None;
    }
    let (value, unit) = ucum::canonical(num.value, code)?;
    let (lo, _) = ucum::canonical(num.lo, code)?;
    let (hi, _) = ucum::canonical(num.hi, code)?;
    Some((
        Num {
            prefix: num.prefix,
            value,
            lo: lo.min(hi),
            hi: lo.max(hi),
        },
        unit,
    ))
}

/// `a$b` for a composite parameter (search.html#composite).
fn composite_value(ty: &str, p: &registry::SearchParam, v: &str) -> Result<Pred, Bad> {
    let parts = split_unescaped(v, '$');
    if parts.len() < 2 || p.components.len() < 2 {
        return invalid(format!(
            "{} takes {} values separated by $",
            p.code,
            p.components.len()
        ));
    }
    let kind = |i: usize| {
        p.components
            .get(i)
            .and_then(|c| registry::lookup(ty, c.code))
            .map(|c| c.kind)
    };
    let first = match kind(0) {
        Some(ParamType::Token) => token_match(&parts[0]),
        Some(ParamType::Reference) => TokenMatch {
            system: None,
            code: Some(parts[0].clone()),
        },
        _ => return invalid(format!("{} is not supported", p.code)),
    };
    let second = match kind(1) {
        Some(ParamType::Token) => Pred::Token(token_match(&parts[1])),
        Some(ParamType::Quantity) => quantity_value(&parts[1])?,
        Some(ParamType::Number) => Pred::Number(number_value(&parts[1])?),
        Some(ParamType::Date) => Pred::Date(date_value(&parts[1])?),
        Some(ParamType::String) => Pred::Prefix {
            column: "c2_code",
            value: extract::normalize(&parts[1]),
        },
        _ => return invalid(format!("{} is not supported", p.code)),
    };
    Ok(Pred::Composite {
        first,
        second: Box::new(second),
    })
}

/// `system|code`, `|code` (no system), `system|` (any code) or `code` (search.html#token).
fn token_match(v: &str) -> TokenMatch {
    let parts = split_unescaped(v, '|');
    if parts.len() >= 2 {
        let system = &parts[0];
        let code = parts[1..].join("|");
        TokenMatch {
            system: Some(if system.is_empty() {
                None
            } else {
                Some(system.clone())
            }),
            code: if code.is_empty() { None } else { Some(code) },
        }
    } else {
        TokenMatch {
            system: None,
            code: Some(parts[0].clone()),
        }
    }
}

/// Splits at unescaped `sep` and unescapes the parts (search.html#escaping).
fn split_unescaped(v: &str, sep: char) -> Vec<String> {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some(n) => cur.push(n),
                None => cur.push('\\'),
            }
        } else if c == sep {
            parts.push(std::mem::take(&mut cur));
        } else {
            cur.push(c);
        }
    }
    parts.push(cur);
    parts
}

/// Comma separates alternatives; `\,` is a literal comma (search.html#escaping). The parts keep
/// their other escapes for the type-specific parsing.
fn split_or(value: &str) -> Vec<&str> {
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
    parts.push(&value[start.min(value.len())..]);
    parts.into_iter().filter(|p| !p.is_empty()).collect()
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\'
            && let Some(n) = chars.next()
        {
            out.push(n);
            continue;
        }
        out.push(c);
    }
    out
}

/// Decodes an `application/x-www-form-urlencoded` query string into pairs.
pub fn decode_query(raw: &str) -> Vec<(String, String)> {
    url::form_urlencoded::parse(raw.as_bytes())
        .into_owned()
        .collect()
}

/// Parses everything now rather than on the first request.
pub fn preload() {
    registry::preload();
    extract::preload();
    index::preload();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patient() -> Option<ResourceType> {
        ResourceType::parse("Patient")
    }

    #[test]
    fn tokens() {
        assert_eq!(
            token_match("http://x|1"),
            TokenMatch {
                system: Some(Some("http://x".into())),
                code: Some("1".into())
            }
        );
        assert_eq!(token_match("|1").system, Some(None));
        assert_eq!(token_match("http://x|").code, None);
        assert_eq!(token_match("1").system, None);
        assert_eq!(token_match("a\\|b|c").system, Some(Some("a|b".into())));
        assert_eq!(split_or("a,b\\,c,,d"), vec!["a", "b\\,c", "d"]);
    }

    #[test]
    fn numbers_carry_their_precision() {
        let n = number_value("100").ok().expect("number");
        assert_eq!((n.lo, n.hi), (99.5, 100.5));
        let n = number_value("gt100.0").ok().expect("number");
        assert_eq!(n.prefix, Prefix::Gt);
        assert!((n.hi - 100.05).abs() < 1e-9);
        let n = number_value("1e2").ok().expect("number");
        assert_eq!((n.lo, n.hi), (50.0, 150.0));
        assert!(number_value("abc").is_err());
    }

    #[test]
    fn parses_known_unknown_and_invalid() {
        let q = parse(
            patient(),
            &decode_query("identifier=http://x|1,2&_count=5&name=smith&foo=1&birthdate=notadate"),
            "http://h/fhir",
        );
        assert_eq!(q.clauses.len(), 2);
        assert_eq!(q.count, Some(5));
        assert_eq!(q.unknown, vec!["foo".to_string()]);
        assert_eq!(q.invalid.len(), 1);
        let q = parse(patient(), &decode_query("_count=-1"), "http://h/fhir");
        assert_eq!(q.invalid.len(), 1);
    }

    #[test]
    fn references_to_this_server() {
        assert_eq!(
            reference_value("http://h/fhir/Patient/1", None, "http://h/fhir"),
            Some(Pred::Reference {
                target_type: Some("Patient".into()),
                id: "1".into(),
                base: "http://h/fhir".into()
            })
        );
        assert_eq!(
            reference_value("Patient/1", Some("Group"), "http://h/fhir"),
            None
        );
        assert_eq!(
            reference_value("1", Some("Patient"), "http://h/fhir"),
            Some(Pred::Reference {
                target_type: Some("Patient".into()),
                id: "1".into(),
                base: "http://h/fhir".into()
            })
        );
    }

    #[test]
    fn cursors_round_trip() {
        let c = Cursor {
            before: true,
            ty: "Patient".into(),
            id: "a-b.c".into(),
            keys: Vec::new(),
        };
        assert_eq!(parse_cursor(&format_cursor(&c)), Some(c));
        assert_eq!(parse_cursor("sideways.Patient.x"), None);
        let sorted = Cursor {
            before: false,
            ty: "Observation".into(),
            id: "x.1".into(),
            keys: vec![
                Some(Bind::Text("a.b-c|d".into())),
                None,
                Some(Bind::Int(-1_700_000_000_000_000)),
                Some(Bind::Float(0.1 + 0.2)),
            ],
        };
        let text = format_cursor(&sorted);
        assert!(text.starts_with("after-"), "{text}");
        assert_eq!(parse_cursor(&text), Some(sorted));
        assert_eq!(parse_cursor("after-!!.Observation.x"), None);
        assert_eq!(
            parse_cursor("after-W3t9XQ.Observation.x"),
            None,
            "[{{}}] is not a value"
        );
    }
}
