//! Running a parsed search against the store: the page of matches, the total, the paging
//! positions, and `_include` / `_revinclude` (https://hl7.org/fhir/R4/search.html).

use std::collections::{HashMap, HashSet};

use serde_json::Value;

use super::{DEFAULT_COUNT, Include, SearchQuery, Total, registry, terminology};
use crate::auth::policy::Policy;
use crate::fhir::types::ResourceType;
use crate::store::query::{self, Clause, Cursor, Pred, SearchSpec, TokenMatch};
use crate::store::{Db, StoreError, Version};

/// Included resources per search at most, so that `_include=*` on a large page cannot fetch
/// the whole database.
const MAX_INCLUDED: usize = 1000;
/// Rounds of `:iterate`.
const MAX_ITERATIONS: usize = 4;

/// Where a paging link points.
#[derive(Debug, Clone, PartialEq)]
pub enum PageRef {
    Cursor(Cursor),
    Offset(usize),
}

/// The result of a search.
#[derive(Debug, Default)]
pub struct SearchResult {
    pub matches: Vec<Version>,
    pub included: Vec<Version>,
    pub total: Option<i64>,
    pub next: Option<PageRef>,
    pub previous: Option<PageRef>,
}

/// The store's view of a search on `types`.
pub fn spec(types: &[ResourceType], q: &SearchQuery) -> SearchSpec {
    SearchSpec {
        types: types.iter().map(|t| t.as_str().to_owned()).collect(),
        clauses: query::with_date_envelopes(&q.clauses),
        sort: q.sort.clone(),
        count: q.count.unwrap_or(DEFAULT_COUNT),
        offset: q.offset,
        cursor: q.cursor.clone(),
    }
}

/// Runs `q` on resources of `types`.
pub async fn run(
    db: &mut Db<'_>,
    types: &[ResourceType],
    q: &SearchQuery,
) -> Result<SearchResult, StoreError> {
    let expanded;
    let q = if needs_terminology(&q.clauses) {
        let mut e = q.clone();
        expand_terminology(db, &mut e).await?;
        expanded = e;
        &expanded
    } else {
        q
    };
    let spec = spec(types, q);
    let count_only = q.summary == Some(super::summary::Summary::Count);
    let want_total = count_only || q.total != Some(Total::None);
    let count = if count_only { 0 } else { spec.count };
    let mut result = SearchResult::default();
    if count > 0 {
        // The cursor condition is part of the matches the page query counts: only without
        // one does that count equal the total.
        let with_total = want_total && spec.cursor.is_none() && query::selective(&spec);
        let kinds: Vec<query::KeyKind> = spec.sort.iter().map(query::SortKey::kind).collect();
        let page = db
            .page(&query::page_sql_total(&spec, count + 1, with_total), &kinds)
            .await?;
        let (mut rows, mut keys) = (page.versions, page.keys);
        if with_total {
            result.total = page.total;
        }
        let backwards = spec.cursor.as_ref().is_some_and(|c| c.before);
        let more = rows.len() > count;
        rows.truncate(count);
        keys.truncate(count);
        if backwards {
            rows.reverse();
            keys.reverse();
        }
        // Keyset paging: links name the first and last resource shown (with their sort values
        // under `_sort`), so writes between page requests neither skip nor repeat resources
        // that were there. A page reached by `_offset` pages on by offset.
        let position = |i: usize, before: bool| {
            rows.get(i).map(|v: &Version| {
                PageRef::Cursor(Cursor {
                    before,
                    ty: v.ty.clone(),
                    id: v.id.clone(),
                    keys: keys.get(i).cloned().unwrap_or_default(),
                })
            })
        };
        if spec.offset == 0 || spec.cursor.is_some() {
            let first_page = spec.cursor.is_none();
            let (has_next, has_prev) = if backwards {
                (true, more)
            } else {
                (more, !first_page)
            };
            if has_next {
                result.next = position(rows.len().wrapping_sub(1), false);
            }
            if has_prev {
                result.previous = position(0, true);
            }
        } else {
            if more {
                result.next = Some(PageRef::Offset(spec.offset + count));
            }
            result.previous = Some(PageRef::Offset(spec.offset.saturating_sub(count)));
        }
        // A first page that holds every match already gives the total.
        if want_total && spec.cursor.is_none() && spec.offset == 0 && !more {
            result.total = Some(rows.len() as i64);
        }
        result.matches = rows;
    }
    if want_total && result.total.is_none() {
        result.total = Some(db.count(&query::count_sql(&spec)).await?);
    }
    if !q.include.is_empty() || !q.revinclude.is_empty() {
        result.included = includes(db, &result.matches, q).await?;
    }
    Ok(result)
}

/// [`run`] within what `policy` lets the caller see: the matches and `_total` through the
/// search itself ([`Policy::narrow`]), included resources by their type and owner.
pub async fn run_as(
    db: &mut Db<'_>,
    types: &[ResourceType],
    q: &SearchQuery,
    policy: &Policy,
) -> Result<SearchResult, StoreError> {
    let mut result = if policy.unrestricted() {
        run(db, types, q).await?
    } else {
        let names: Vec<&str> = types.iter().map(|t| t.as_str()).collect();
        run(db, types, &policy.narrow(q, &names)).await?
    };
    result.included.retain(|v| policy.may_include(v));
    Ok(result)
}

/// `_include` and `_revinclude`, with `:iterate` applied to what they bring in.
async fn includes(
    db: &mut Db<'_>,
    matches: &[Version],
    q: &SearchQuery,
) -> Result<Vec<Version>, StoreError> {
    let mut seen: HashSet<(String, String)> = matches
        .iter()
        .map(|v| (v.ty.clone(), v.id.clone()))
        .collect();
    let mut included = Vec::new();
    let mut sources: Vec<(String, String)> = matches
        .iter()
        .map(|v| (v.ty.clone(), v.id.clone()))
        .collect();
    for round in 0..=MAX_ITERATIONS {
        let mut wanted: Vec<(String, String)> = Vec::new();
        let by_type = group(&sources);
        for inc in &q.include {
            if round > 0 && !inc.iterate {
                continue;
            }
            for (ty, ids) in &by_type {
                if !applies(inc, ty) {
                    continue;
                }
                let sql = query::include_sql(
                    ty,
                    ids,
                    inc.param.as_deref(),
                    inc.target.as_deref(),
                    &q.base,
                );
                wanted.extend(db.pairs(&sql).await?);
            }
        }
        for inc in &q.revinclude {
            if round > 0 && !inc.iterate {
                continue;
            }
            for (ty, ids) in &by_type {
                if inc.source == "*" || inc.target.as_deref().is_some_and(|t| t != ty) {
                    continue;
                }
                // The parameter must be able to point at this type.
                if let Some(p) = &inc.param
                    && registry::lookup(&inc.source, p)
                        .is_none_or(|p| !p.targets.is_empty() && !p.targets.contains(&ty.as_str()))
                {
                    continue;
                }
                let sql =
                    query::revinclude_sql(&inc.source, inc.param.as_deref(), ty, ids, &q.base);
                wanted.extend(db.pairs(&sql).await?);
            }
        }
        wanted.retain(|k| seen.insert(k.clone()));
        wanted.truncate(MAX_INCLUDED.saturating_sub(included.len()));
        if wanted.is_empty() {
            break;
        }
        let mut fresh = Vec::new();
        let mut per_type: HashMap<String, Vec<String>> = HashMap::new();
        for (t, id) in wanted {
            per_type.entry(t).or_default().push(id);
        }
        let mut types: Vec<_> = per_type.into_iter().collect();
        types.sort();
        for (t, ids) in types {
            if ResourceType::parse(&t).is_none() {
                continue;
            }
            fresh.extend(db.versions(&query::current_sql(&t, &ids)).await?);
        }
        // The next round starts from what this one brought in.
        sources = fresh.iter().map(|v| (v.ty.clone(), v.id.clone())).collect();
        included.extend(fresh);
        if included.len() >= MAX_INCLUDED {
            break;
        }
    }
    Ok(included)
}

fn applies(inc: &Include, ty: &str) -> bool {
    inc.source == "*" || inc.source == ty
}

/// Ids per type, in a stable order.
fn group(keys: &[(String, String)]) -> Vec<(String, Vec<String>)> {
    let mut map: HashMap<&str, Vec<String>> = HashMap::new();
    for (ty, id) in keys {
        map.entry(ty.as_str()).or_default().push(id.clone());
    }
    let mut out: Vec<(String, Vec<String>)> =
        map.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
    out.sort();
    out
}

/// `Observation/$lastn` (https://hl7.org/fhir/R4/observation-operation-lastn.html).
pub async fn lastn(
    db: &mut Db<'_>,
    q: &SearchQuery,
    max: usize,
) -> Result<Vec<Version>, StoreError> {
    let ty = [ResourceType::parse("Observation")
        .ok_or_else(|| StoreError::Db(sqlx::Error::Protocol("Observation type missing".into())))?];
    let spec = spec(&ty, q);
    if let Some(d) = query::lastn_driver(&spec) {
        let codes = db.pairs(&query::lastn_codes_sql(&spec, d)).await?;
        if codes.is_empty() {
            return Ok(Vec::new());
        }
        // A statement per code would be as many round trips; past this many codes the single
        // ranking query is the smaller statement.
        if codes.len() <= MAX_LASTN_CODES {
            return db
                .versions(&query::lastn_pick_sql(&spec, d, &codes, max))
                .await;
        }
    }
    db.versions(&query::lastn_sql(&spec, max)).await
}

/// Codes per `$lastn` answered one index range each (see [`lastn`]).
const MAX_LASTN_CODES: usize = 64;

/// Calls `f` on the predicate list of every `Values` clause in `clauses`, at every depth.
fn each_pred_list(clauses: &mut [Clause], f: &mut impl FnMut(&mut Vec<Pred>)) {
    for c in clauses {
        match c {
            Clause::Values { any_of, .. } => f(any_of),
            Clause::Chain { targets, .. } => {
                for (_, inner) in targets.iter_mut() {
                    each_pred_list(std::slice::from_mut(inner.as_mut()), f);
                }
            }
            Clause::Has { inner, .. } => each_pred_list(std::slice::from_mut(inner.as_mut()), f),
            Clause::Dated { reference, .. } => {
                each_pred_list(std::slice::from_mut(reference.as_mut()), f)
            }
            Clause::Any(list) | Clause::All(list) => each_pred_list(list, f),
            Clause::ByType(list) => {
                for (_, c) in list.iter_mut() {
                    each_pred_list(std::slice::from_mut(c), f);
                }
            }
            Clause::Id { .. }
            | Clause::LastUpdated(_)
            | Clause::Missing { .. }
            | Clause::Compartment { .. }
            | Clause::Nothing
            | Clause::Owned { .. } => {}
        }
    }
}

fn is_terminology(p: &Pred) -> bool {
    matches!(p, Pred::Subsumption { .. } | Pred::InValueSet(_))
}

/// True when a clause of `clauses`, at any depth, holds a terminology predicate. Read-only,
/// so that every other search pays no copy of its clauses for the check.
fn needs_terminology(clauses: &[Clause]) -> bool {
    clauses.iter().any(|c| match c {
        Clause::Values { any_of, .. } => any_of.iter().any(is_terminology),
        Clause::Chain { targets, .. } => targets
            .iter()
            .any(|(_, inner)| needs_terminology(std::slice::from_ref(inner.as_ref()))),
        Clause::Has { inner, .. } => needs_terminology(std::slice::from_ref(inner.as_ref())),
        Clause::Dated { reference, .. } => {
            needs_terminology(std::slice::from_ref(reference.as_ref()))
        }
        Clause::Any(list) | Clause::All(list) => needs_terminology(list),
        Clause::ByType(list) => list
            .iter()
            .any(|(_, c)| needs_terminology(std::slice::from_ref(c))),
        Clause::Id { .. }
        | Clause::LastUpdated(_)
        | Clause::Missing { .. }
        | Clause::Compartment { .. }
        | Clause::Nothing
        | Clause::Owned { .. } => false,
    })
}

/// The stored `ty` resource whose `url` is `url` (or, for `Type/id`, that resource).
async fn definition(db: &mut Db<'_>, ty: &str, url: &str) -> Result<Option<Value>, StoreError> {
    let rt = ResourceType::parse(ty).ok_or_else(|| StoreError::Terminology(ty.into()))?;
    let clause = match url.strip_prefix(&format!("{ty}/")) {
        Some(id) if !id.contains('/') => Clause::Id {
            ids: vec![id.to_owned()],
            negate: false,
        },
        _ => match super::parse(Some(rt), &[("url".into(), url.into())], "")
            .clauses
            .pop()
        {
            Some(c) => c,
            None => return Ok(None),
        },
    };
    let spec = SearchSpec {
        types: vec![ty.to_owned()],
        clauses: vec![clause],
        count: 2,
        ..SearchSpec::default()
    };
    let found = db.versions(&query::page_sql(&spec, 2)).await?;
    match found.as_slice() {
        [] => Ok(None),
        [one] => Ok(one
            .content
            .as_deref()
            .and_then(|c| serde_json::from_str(c).ok())),
        _ => Err(StoreError::Terminology(format!(
            "several {ty} resources have the url {url}"
        ))),
    }
}

/// Replaces the terminology predicates of `q` (`:below`, `:above`, `:in`, `:not-in`) by the
/// codes they stand for, from the CodeSystems and ValueSets stored here.
async fn expand_terminology(db: &mut Db<'_>, q: &mut SearchQuery) -> Result<(), StoreError> {
    let mut wanted: Vec<Pred> = Vec::new();
    each_pred_list(&mut q.clauses, &mut |preds| {
        wanted.extend(preds.iter().filter(|p| is_terminology(p)).cloned())
    });
    let mut expansions: Vec<(Pred, Vec<Pred>)> = Vec::new();
    for p in wanted {
        if expansions.iter().any(|(k, _)| *k == p) {
            continue;
        }
        let tokens: Vec<TokenMatch> = match &p {
            Pred::Subsumption {
                system,
                code,
                below,
            } => {
                let cs = definition(db, "CodeSystem", system).await?.ok_or_else(|| {
                    StoreError::Terminology(format!(
                        "CodeSystem {system} is not stored on this server, so its hierarchy \
                         is unknown"
                    ))
                })?;
                terminology::subsumption(&cs, code, *below)
                    .map_err(StoreError::Terminology)?
                    .into_iter()
                    .map(|c| TokenMatch {
                        system: Some(Some(system.clone())),
                        code: Some(c),
                    })
                    .collect()
            }
            Pred::InValueSet(url) => {
                let vs = definition(db, "ValueSet", url).await?.ok_or_else(|| {
                    StoreError::Terminology(format!("ValueSet {url} is not stored on this server"))
                })?;
                // The code systems its filters need, fetched before the pure expansion.
                let mut systems: HashMap<String, Value> = HashMap::new();
                for inc in vs["compose"]["include"].as_array().into_iter().flatten() {
                    if let (Some(system), true) = (inc["system"].as_str(), inc["filter"].is_array())
                        && !systems.contains_key(system)
                        && let Some(cs) = definition(db, "CodeSystem", system).await?
                    {
                        systems.insert(system.to_owned(), cs);
                    }
                }
                terminology::members(&vs, &|s| systems.get(s).cloned())
                    .map_err(StoreError::Terminology)?
            }
            _ => continue,
        };
        expansions.push((p, tokens.into_iter().map(Pred::Token).collect()));
    }
    each_pred_list(&mut q.clauses, &mut |preds| {
        if !preds.iter().any(is_terminology) {
            return;
        }
        let mut out = Vec::with_capacity(preds.len());
        for p in preds.drain(..) {
            match expansions.iter().find(|(k, _)| *k == p) {
                Some((_, tokens)) => out.extend(tokens.iter().cloned()),
                None => out.push(p),
            }
        }
        *preds = out;
    });
    Ok(())
}
