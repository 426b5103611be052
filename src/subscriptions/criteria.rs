//! Deciding whether a committed version matches a Subscription's `criteria` (issue 6), on the
//! version's own search-index rows ([`crate::search::index::rows`]) and without I/O (DESIGN.md
//! rule 5). The criteria are parsed into the same [`Clause`]s the search engine turns into SQL
//! (`store::query`), and each clause is decided here exactly as that SQL decides it on the
//! index tables, so a notification reflects the version that was committed rather than
//! whatever is current when the matcher runs, and costs no query per subscription.
//!
//! Clauses that depend on other resources (chaining, `_has`, compartments) or on terminology
//! stored here (`:below`, `:above`, `:in`, `:not-in`) are not decided: [`matches`] answers
//! `None` and the caller asks the store.

use crate::search::index::{CompositeRow, IndexRows};
use crate::store::query::{Clause, DateRange, Num, Pred, Prefix, Table, TokenMatch};

/// The version being matched.
#[derive(Debug, Clone, Copy)]
pub struct Version<'a> {
    pub ty: &'a str,
    pub id: &'a str,
    /// Microseconds since the epoch.
    pub last_updated: i64,
    pub rows: &'a IndexRows,
}

/// Whether `v` meets `clause`; `None` when that needs the store. `now` (microseconds) is the
/// instant the `ap` date prefix measures from.
pub fn matches(clause: &Clause, v: &Version<'_>, now: i64) -> Option<bool> {
    match clause {
        Clause::Nothing => Some(false),
        Clause::All(list) => all(list.iter().map(|c| matches(c, v, now))),
        Clause::Any(list) => any(list.iter().map(|c| matches(c, v, now))),
        Clause::ByType(list) => match list.iter().find(|(t, _)| t == v.ty) {
            Some((_, c)) => matches(c, v, now),
            None => Some(true),
        },
        Clause::Owned { orgs } => Some(owned(v, orgs)),
        Clause::Id { ids, negate } => Some(ids.iter().any(|i| i == v.id) != *negate),
        Clause::LastUpdated(ranges) => Some(
            ranges
                .iter()
                .any(|r| date(v.last_updated, v.last_updated, r, now)),
        ),
        Clause::Values {
            table,
            param,
            any_of,
            negate,
        } => values(v, *table, param, any_of, None, now).map(|found| found != *negate),
        Clause::Dated { reference, within } => match reference.as_ref() {
            Clause::Values {
                table,
                param,
                any_of,
                negate,
            } => values(v, *table, param, any_of, Some(within), now).map(|f| f != *negate),
            other => matches(other, v, now),
        },
        Clause::Missing {
            table,
            param,
            missing,
        } => Some(has_rows(v.rows, *table, param) != *missing),
        Clause::Compartment { .. } | Clause::Chain { .. } | Clause::Has { .. } => None,
    }
}

/// AND in three values: false wins, then unknown.
fn all(verdicts: impl Iterator<Item = Option<bool>>) -> Option<bool> {
    let mut unknown = false;
    for v in verdicts {
        match v {
            Some(false) => return Some(false),
            None => unknown = true,
            Some(true) => {}
        }
    }
    (!unknown).then_some(true)
}

/// OR in three values: true wins, then unknown.
fn any(verdicts: impl Iterator<Item = Option<bool>>) -> Option<bool> {
    let mut unknown = false;
    for v in verdicts {
        match v {
            Some(true) => return Some(true),
            None => unknown = true,
            Some(false) => {}
        }
    }
    (!unknown).then_some(false)
}

/// [`Clause::Owned`] as `store::query::push_owned` decides it.
fn owned(v: &Version<'_>, orgs: &[String]) -> bool {
    use crate::auth::tenancy::{Area, OWNER_SYSTEM, area};
    match area(v.ty) {
        Area::Shared => true,
        _ if orgs.is_empty() => false,
        Area::Organization => orgs.iter().any(|o| o == v.id),
        _ => v.rows.tokens.iter().any(|(param, system, code, _)| {
            param == "_tag" && system.as_deref() == Some(OWNER_SYSTEM) && orgs.contains(code)
        }),
    }
}

fn has_rows(rows: &IndexRows, table: Table, param: &str) -> bool {
    match table {
        Table::Token => rows.tokens.iter().any(|r| r.0 == param),
        Table::String => rows.strings.iter().any(|r| r.0 == param),
        Table::Date => rows.dates.iter().any(|r| r.0 == param),
        Table::Reference => rows.references.iter().any(|r| r.0 == param),
        Table::Quantity => rows.quantities.iter().any(|r| r.0 == param),
        Table::Number => rows.numbers.iter().any(|r| r.0 == param),
        Table::Uri => rows.uris.iter().any(|r| r.0 == param),
        Table::Composite => rows.composites.iter().any(|r| r.param == param),
    }
}

/// One index row, with the columns predicates read.
enum Row<'a> {
    Token(&'a (String, Option<String>, String, Option<String>)),
    String(&'a (String, String, String)),
    Date(i64, i64),
    Reference(&'a crate::search::index::ReferenceRow),
    Quantity(&'a crate::search::index::QuantityRow),
    Number(f64),
    Uri(&'a str),
    Composite(&'a CompositeRow),
}

impl Row<'_> {
    /// A text column by the name the SQL uses (`Pred::Prefix`, `Contains`, `Equals`).
    fn text(&self, column: &str) -> Option<&str> {
        match (self, column) {
            (Row::Token(t), "code") => Some(&t.2),
            (Row::Token(t), "system") => t.1.as_deref(),
            (Row::Token(t), "text") => t.3.as_deref(),
            (Row::String(s), "norm") => Some(&s.1),
            (Row::String(s), "exact") => Some(&s.2),
            (Row::Reference(r), "url") => Some(&r.3),
            (Row::Uri(u), "value") => Some(u),
            _ => None,
        }
    }
}

/// Whether some row of `param` in `table` meets one of `any_of` (and, for [`Clause::Dated`],
/// the date envelope). `None` when a predicate needs the store.
fn values(
    v: &Version<'_>,
    table: Table,
    param: &str,
    any_of: &[Pred],
    within: Option<&DateRange>,
    now: i64,
) -> Option<bool> {
    let rows: Vec<Row<'_>> = match table {
        Table::Token => v
            .rows
            .tokens
            .iter()
            .filter(|r| r.0 == param)
            .map(Row::Token)
            .collect(),
        Table::String => v
            .rows
            .strings
            .iter()
            .filter(|r| r.0 == param)
            .map(Row::String)
            .collect(),
        Table::Date => v
            .rows
            .dates
            .iter()
            .filter(|r| r.0 == param)
            .map(|r| Row::Date(r.1, r.2))
            .collect(),
        // The rows without a code: the per-code `subject` rows repeat them (`ANY_CODE`).
        Table::Reference => v
            .rows
            .references
            .iter()
            .filter(|r| r.0 == param && r.6.is_none() && r.7.is_none())
            .filter(|r| within.is_none_or(|w| envelope(r.4, r.5, w)))
            .map(Row::Reference)
            .collect(),
        Table::Quantity => v
            .rows
            .quantities
            .iter()
            .filter(|r| r.0 == param)
            .map(Row::Quantity)
            .collect(),
        Table::Number => v
            .rows
            .numbers
            .iter()
            .filter(|r| r.0 == param)
            .map(|r| Row::Number(r.1))
            .collect(),
        Table::Uri => v
            .rows
            .uris
            .iter()
            .filter(|r| r.0 == param)
            .map(|r| Row::Uri(&r.1))
            .collect(),
        Table::Composite => v
            .rows
            .composites
            .iter()
            .filter(|r| r.param == param)
            .map(Row::Composite)
            .collect(),
    };
    any(rows
        .iter()
        .flat_map(|row| any_of.iter().map(move |p| pred(row, p, now))))
}

/// `store::query::push_envelope`: a NULL envelope meets no condition.
fn envelope(lo: Option<i64>, hi: Option<i64>, r: &DateRange) -> bool {
    let (Some(lo), Some(hi)) = (lo, hi) else {
        return matches!(r.prefix, Prefix::Ne | Prefix::Ap);
    };
    match r.prefix {
        Prefix::Eq => hi >= r.lo && lo <= r.hi,
        Prefix::Ge => hi >= r.lo,
        Prefix::Gt | Prefix::Sa => hi > r.hi,
        Prefix::Le => lo <= r.hi,
        Prefix::Lt | Prefix::Eb => lo < r.lo,
        Prefix::Ne | Prefix::Ap => true,
    }
}

/// `store::query::push_pred` on one row.
fn pred(row: &Row<'_>, p: &Pred, now: i64) -> Option<bool> {
    /// The bound the SQL puts above a prefix range (`MAX_CHAR`).
    fn starts(s: &str, prefix: &str) -> bool {
        s >= prefix && s < format!("{prefix}\u{10FFFF}").as_str()
    }
    Some(match (row, p) {
        (_, Pred::Subsumption { .. } | Pred::InValueSet(_)) => return None,
        (Row::Token(t), Pred::Token(m)) => token(t.1.as_deref(), Some(t.2.as_str()), m),
        (_, Pred::Prefix { column, value }) => row.text(column).is_some_and(|s| starts(s, value)),
        (_, Pred::Contains { column, value }) => {
            row.text(column).is_some_and(|s| s.contains(value.as_str()))
        }
        (_, Pred::Equals { column, value }) => row.text(column) == Some(value.as_str()),
        (Row::Uri(u), Pred::UriBelow(v)) => starts(u, v),
        (Row::Uri(u), Pred::UriAbove(v)) => v.starts_with(u),
        (Row::Date(lo, hi), Pred::Date(r)) => date(*lo, *hi, r, now),
        (Row::Number(n), Pred::Number(m)) => num(*n, m),
        (
            Row::Quantity((_, value, system, code, cvalue, ccode)),
            Pred::Quantity {
                num: n,
                system: s,
                code: c,
                canonical,
            },
        ) => {
            // In canonical units when both sides convert; as written otherwise.
            let canonical_match = canonical.as_ref().is_some_and(|(cn, cc)| {
                ccode.as_deref() == Some(cc.as_str()) && cvalue.is_some_and(|x| num(x, cn))
            });
            let written = (canonical.is_none() || ccode.is_none())
                && s.as_ref()
                    .is_none_or(|s| system.as_deref() == Some(s.as_str()))
                && c.as_ref()
                    .is_none_or(|c| code.as_deref() == Some(c.as_str()))
                && num(*value, n);
            canonical_match || written
        }
        (
            Row::Reference(r),
            Pred::Reference {
                target_type,
                id,
                base,
            },
        ) => {
            r.2.as_deref() == Some(id.as_str())
                && target_type
                    .as_ref()
                    .is_none_or(|t| r.1.as_deref() == Some(t.as_str()))
                && local(&r.3, base)
        }
        (Row::Composite(c), Pred::Composite { first, second }) => {
            token(c.c1_system.as_deref(), Some(c.c1_code.as_str()), first)
                && match second.as_ref() {
                    Pred::Token(t) => token(c.c2_system.as_deref(), c.c2_code.as_deref(), t),
                    Pred::Prefix { value, .. } => {
                        c.c2_code.as_deref().is_some_and(|s| starts(s, value))
                    }
                    // Composite dates are stored as doubles (exact below 2^53 microseconds).
                    Pred::Date(r) => match (c.c2_lo, c.c2_hi) {
                        (Some(lo), Some(hi)) => date_f(lo, hi, r, now),
                        _ => false,
                    },
                    Pred::Number(n) => c.c2_lo.is_some_and(|x| num(x, n)),
                    Pred::Quantity {
                        num: n,
                        system,
                        code,
                        canonical,
                    } => match canonical {
                        Some((cn, cc)) => {
                            c.c2_ccode.as_deref() == Some(cc.as_str())
                                && c.c2_cvalue.is_some_and(|x| num(x, cn))
                        }
                        None => {
                            system
                                .as_ref()
                                .is_none_or(|s| c.c2_system.as_deref() == Some(s.as_str()))
                                && code
                                    .as_ref()
                                    .is_none_or(|k| c.c2_code.as_deref() == Some(k.as_str()))
                                && c.c2_lo.is_some_and(|x| num(x, n))
                        }
                    },
                    _ => false,
                }
        }
        // A predicate of another table's shape matches no row (the SQL would compare columns
        // the table does not have; the parser never builds such a clause).
        _ => false,
    })
}

/// `store::query::push_token` (a NULL code column matches no code).
fn token(system: Option<&str>, code: Option<&str>, m: &TokenMatch) -> bool {
    m.code.as_deref().is_none_or(|c| code == Some(c))
        && match &m.system {
            None => true,
            Some(None) => system.is_none(),
            Some(Some(s)) => system == Some(s.as_str()),
        }
}

/// `store::query::push_local`: the reference names a resource of this server.
fn local(url: &str, base: &str) -> bool {
    !url.contains("://") || url.starts_with(&format!("{}/", base.trim_end_matches('/')))
}

/// `store::query::push_date` on a stored range [lo, hi].
fn date(lo: i64, hi: i64, r: &DateRange, now: i64) -> bool {
    let inside = lo >= r.lo && hi <= r.hi;
    match r.prefix {
        Prefix::Eq => inside,
        Prefix::Ne => !inside,
        Prefix::Gt => hi > r.hi,
        Prefix::Lt => lo < r.lo,
        Prefix::Ge => hi > r.hi || inside,
        Prefix::Le => lo < r.lo || inside,
        Prefix::Sa => lo > r.hi,
        Prefix::Eb => hi < r.lo,
        Prefix::Ap => {
            let gap = ((now - r.lo).abs() / 10).max(86_400_000_000);
            lo <= r.hi.saturating_add(gap) && hi >= r.lo.saturating_sub(gap)
        }
    }
}

/// [`date`] on a composite's stored doubles.
#[allow(clippy::cast_possible_truncation)]
fn date_f(lo: f64, hi: f64, r: &DateRange, now: i64) -> bool {
    date(lo as i64, hi as i64, r, now)
}

/// `store::query::push_num` on a stored point value.
fn num(x: f64, n: &Num) -> bool {
    match n.prefix {
        Prefix::Eq => x >= n.lo && x < n.hi,
        Prefix::Ne => x < n.lo || x >= n.hi,
        Prefix::Gt => x > n.value,
        Prefix::Lt => x < n.value,
        Prefix::Ge => x >= n.value,
        Prefix::Le => x <= n.value,
        Prefix::Sa => x >= n.hi,
        Prefix::Eb => x < n.lo,
        Prefix::Ap => {
            let d = (n.value * 0.1).abs().max(n.hi - n.lo);
            x >= n.value - d && x <= n.value + d
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::fhir::types::ResourceType;

    const BASE: &str = "https://fhir.example.org/fhir";

    fn observation() -> Value {
        json!({
            "resourceType": "Observation",
            "id": "bp1",
            "meta": {"tag": [{"system": crate::auth::tenancy::OWNER_SYSTEM, "code": "c1"}]},
            "status": "final",
            "category": [{"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                "code": "vital-signs"}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}],
                     "text": "Blood pressure"},
            "subject": {"reference": "Patient/p1"},
            "device": {"reference": "Device/cuff-1"},
            "effectiveDateTime": "2026-11-30T08:15:00Z",
            "component": [
                {"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
                 "valueQuantity": {"value": 150, "unit": "mmHg",
                                   "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}},
                {"code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]},
                 "valueQuantity": {"value": 95, "unit": "mmHg",
                                   "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}}
            ]
        })
    }

    /// The verdict on `criteria` (a query string) for `resource`.
    fn verdict(resource: &Value, criteria: &str) -> Option<bool> {
        let ty = resource["resourceType"].as_str().unwrap();
        let q = crate::search::parse(
            ResourceType::parse(ty),
            &crate::search::decode_query(criteria),
            BASE,
        );
        assert!(
            q.unknown.is_empty() && q.invalid.is_empty(),
            "{criteria}: {q:?}"
        );
        let rows = crate::search::index::rows(resource);
        let v = Version {
            ty,
            id: resource["id"].as_str().unwrap(),
            last_updated: 1_796_000_000_000_000,
            rows: &rows,
        };
        matches(&Clause::All(q.clauses), &v, 1_796_000_000_000_000)
    }

    #[test]
    fn criteria_are_decided_on_the_versions_own_index_rows() {
        let o = observation();
        let table: &[(&str, Option<bool>)] = &[
            ("code=85354-9", Some(true)),
            ("code=http://loinc.org|85354-9", Some(true)),
            ("code=http://snomed.info/sct|85354-9", Some(false)),
            ("code=8867-4,85354-9", Some(true)),
            ("code:not=85354-9", Some(false)),
            ("code:text=blood", Some(true)),
            ("category=vital-signs&subject=Patient/p1", Some(true)),
            ("subject=Patient/p2", Some(false)),
            ("patient=p1", Some(true)),
            (
                "subject=https://fhir.example.org/fhir/Patient/p1",
                Some(true),
            ),
            ("device=Device/cuff-1", Some(true)),
            ("date=ge2026-11-30", Some(true)),
            ("date=lt2026-11-30", Some(false)),
            ("date=2026-11", Some(true)),
            ("component-value-quantity=gt140", Some(true)),
            ("component-value-quantity=gt160", Some(false)),
            (
                "component-code-value-quantity=http://loinc.org|8480-6$gt140",
                Some(true),
            ),
            // The diastolic is 95: the systolic's code with the diastolic's value is no match.
            ("component-code-value-quantity=8480-6$lt100", Some(false)),
            ("combo-code=8462-4", Some(true)),
            ("value-quantity:missing=true", Some(true)),
            ("status=final,amended&_id=bp1", Some(true)),
            ("_id=bp2", Some(false)),
            ("_lastUpdated=gt2020-01-01", Some(true)),
            // Another resource decides these: the store is asked.
            ("subject:Patient.name=Smith", None),
            ("subject:Patient.name=Smith&code=8867-4", Some(false)),
        ];
        for (criteria, want) in table {
            assert_eq!(verdict(&o, criteria), *want, "{criteria}");
        }
    }

    #[test]
    fn three_valued_logic_lets_a_decided_clause_win() {
        assert_eq!(
            all([Some(true), None, Some(false)].into_iter()),
            Some(false)
        );
        assert_eq!(all([Some(true), None].into_iter()), None);
        assert_eq!(any([Some(false), None, Some(true)].into_iter()), Some(true));
        assert_eq!(any([Some(false), None].into_iter()), None);
        assert_eq!(any(std::iter::empty()), Some(false));
        assert_eq!(all(std::iter::empty()), Some(true));
    }
}
