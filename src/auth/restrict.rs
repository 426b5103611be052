//! What a narrowing scope lets through, as search clauses: a `patient/` scope reaches the
//! patient compartment of the patient in context
//! (https://hl7.org/fhir/R4/compartmentdefinition-patient.html), a granular scope
//! (`patient/Observation.rs?category=…|vital-signs`,
//! https://hl7.org/fhir/smart-app-launch/scopes-and-launch-context.html#finer-grained-resource-constraints-using-search-parameters)
//! only the resources its query matches.
//!
//! The same clauses narrow a search in SQL ([`crate::auth::policy::Policy::narrow`]) and decide
//! on one resource in memory ([`matches`]), from the index rows the resource would be stored
//! with, so a read, an included resource and a write are judged like a search would judge them.
//! What [`matches`] cannot decide in memory it refuses.

use std::collections::HashMap;
use std::sync::LazyLock;

use crate::fhir::types::ResourceType;
use crate::search::index::IndexRows;
use crate::store::query::{Clause, Pred, Table, TokenMatch};

/// The generated table (tools/gen_compartment.py).
const TABLE: &str = include_str!("patient_compartment.txt");

/// Resource type → the search parameters that put a resource of it in a patient's compartment.
static COMPARTMENT: LazyLock<HashMap<&'static str, Vec<&'static str>>> = LazyLock::new(|| {
    TABLE
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let mut cols = l.split('\t');
            Some((cols.next()?, cols.collect()))
        })
        .collect()
});

/// The parameters that make a resource of `ty` a member of a patient's compartment; empty when
/// the type is not in it.
pub fn compartment_params(ty: &str) -> &'static [&'static str] {
    COMPARTMENT.get(ty).map_or(&[], Vec::as_slice)
}

/// The clause "a member of `Patient/patient`'s compartment" for resources of `ty`: the Patient
/// itself, or a resource whose compartment parameters reference it. [`Clause::Nothing`] for a
/// type outside the compartment.
pub fn compartment_clause(ty: &str, patient: &str, base: &str) -> Clause {
    let mut any = Vec::new();
    if ty == "Patient" {
        any.push(Clause::Id {
            ids: vec![patient.to_owned()],
            negate: false,
        });
    }
    for param in compartment_params(ty) {
        let value = format!("Patient/{patient}");
        if let Some(mut clauses) = query_clauses(ty, &[(param.to_string(), value)], base) {
            any.push(if clauses.len() == 1 {
                clauses.remove(0)
            } else {
                Clause::All(clauses)
            });
        }
    }
    match any.len() {
        0 => Clause::Nothing,
        1 => any.remove(0),
        _ => Clause::Any(any),
    }
}

/// The clauses of a granular scope's query on `ty`, ANDed; `None` when the query is not a plain
/// set of search criteria this server understands (unknown or malformed parameters, result
/// parameters such as `_count` or `_include`): such a scope grants nothing.
pub fn scope_clauses(ty: &str, query: &str, base: &str) -> Option<Vec<Clause>> {
    query_clauses(ty, &crate::search::decode_query(query), base)
}

fn query_clauses(ty: &str, params: &[(String, String)], base: &str) -> Option<Vec<Clause>> {
    let t = ResourceType::parse(ty)?;
    let q = crate::search::parse(Some(t), params, base);
    let plain = q.unknown.is_empty()
        && q.invalid.is_empty()
        && !q.clauses.is_empty()
        && q.used.len() == params.len()
        && q.count.is_none()
        && q.offset == 0
        && q.sort.is_empty()
        && q.total.is_none()
        && q.summary.is_none()
        && q.elements.is_none()
        && q.include.is_empty()
        && q.revinclude.is_empty()
        && q.types.is_empty()
        && q.cursor.is_none();
    plain.then_some(q.clauses)
}

/// True when the resource `ty/id` with these index rows matches `clause`. Clauses that need
/// the database (chains, `_has`, terminology, dates, quantities, text) are not decided here and
/// count as not matching: a narrowing that cannot be checked refuses.
pub fn matches(clause: &Clause, ty: &str, id: &str, rows: &IndexRows) -> bool {
    match clause {
        Clause::Nothing => false,
        Clause::Any(list) => list.iter().any(|c| matches(c, ty, id, rows)),
        Clause::All(list) => list.iter().all(|c| matches(c, ty, id, rows)),
        Clause::Id { ids, negate } => ids.iter().any(|i| i == id) != *negate,
        Clause::ByType(list) => list
            .iter()
            .find(|(t, _)| t == ty)
            .is_none_or(|(_, c)| matches(c, ty, id, rows)),
        Clause::Values {
            table,
            param,
            any_of,
            negate,
        } => {
            let found = any_of
                .iter()
                .any(|p| pred_matches(*table, param, p, rows).unwrap_or(false));
            // A negated criterion needs every predicate decidable: otherwise refuse.
            if *negate {
                let decidable = any_of
                    .iter()
                    .all(|p| pred_matches(*table, param, p, rows).is_some());
                decidable && !found
            } else {
                found
            }
        }
        _ => false,
    }
}

/// One predicate on the rows of `param`; `None` when it cannot be decided in memory.
fn pred_matches(table: Table, param: &str, p: &Pred, rows: &IndexRows) -> Option<bool> {
    match (table, p) {
        (Table::Token, Pred::Token(t)) => Some(
            rows.tokens
                .iter()
                .any(|r| r.0 == param && token_matches(t, r.1.as_deref(), &r.2)),
        ),
        (
            Table::Reference,
            Pred::Reference {
                target_type,
                id,
                base,
            },
        ) => Some(rows.references.iter().any(|r| {
            r.0 == param
                && r.2.as_deref() == Some(id.as_str())
                && target_type
                    .as_deref()
                    .is_none_or(|t| r.1.as_deref() == Some(t))
                && is_local(&r.3, base)
        })),
        _ => None,
    }
}

/// [`crate::store::query`]'s `push_token`, in memory.
fn token_matches(t: &TokenMatch, system: Option<&str>, code: &str) -> bool {
    t.code.as_deref().is_none_or(|c| c == code)
        && match &t.system {
            None => true,
            Some(None) => system.is_none(),
            Some(Some(s)) => system == Some(s.as_str()),
        }
}

/// [`crate::store::query`]'s `push_local`, in memory: a stored relative url, or one under `base`.
fn is_local(url: &str, base: &str) -> bool {
    !url.contains("://")
        || url
            .strip_prefix(base.trim_end_matches('/'))
            .is_some_and(|rest| rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const BASE: &str = "http://vb.test/fhir";

    fn rows(v: &serde_json::Value) -> IndexRows {
        crate::search::index::rows(v)
    }

    #[test]
    fn the_compartment_table_is_the_standard_one() {
        assert_eq!(compartment_params("Observation"), ["subject", "performer"]);
        assert_eq!(compartment_params("Patient"), ["link"]);
        assert!(compartment_params("Organization").is_empty());
        assert!(
            compartment_params("Device").is_empty(),
            "Device is in the Device compartment, not the patient's (R4)"
        );
        assert_eq!(COMPARTMENT.len(), 67);
    }

    #[test]
    fn compartment_membership_in_memory() {
        let c = compartment_clause("Observation", "p1", BASE);
        let mine = json!({"resourceType": "Observation", "status": "final",
            "code": {"text": "x"}, "subject": {"reference": "Patient/p1"}});
        let absolute = json!({"resourceType": "Observation", "status": "final",
            "code": {"text": "x"}, "performer": [{"reference": "http://vb.test/fhir/Patient/p1"}]});
        let elsewhere = json!({"resourceType": "Observation", "status": "final",
            "code": {"text": "x"}, "subject": {"reference": "http://other.test/fhir/Patient/p1"}});
        let theirs = json!({"resourceType": "Observation", "status": "final",
            "code": {"text": "x"}, "subject": {"reference": "Patient/p2"}});
        let about = json!({"resourceType": "Observation", "status": "final",
            "code": {"text": "x"}, "focus": [{"reference": "Patient/p1"}]});
        assert!(matches(&c, "Observation", "o1", &rows(&mine)));
        assert!(matches(&c, "Observation", "o1", &rows(&absolute)));
        assert!(!matches(&c, "Observation", "o1", &rows(&elsewhere)));
        assert!(!matches(&c, "Observation", "o1", &rows(&theirs)));
        assert!(
            !matches(&c, "Observation", "o1", &rows(&about)),
            "focus is not a compartment parameter"
        );
        let p = compartment_clause("Patient", "p1", BASE);
        let patient = json!({"resourceType": "Patient"});
        assert!(matches(&p, "Patient", "p1", &rows(&patient)));
        assert!(!matches(&p, "Patient", "p2", &rows(&patient)));
        let linked = json!({"resourceType": "Patient", "link": [{"other": {"reference": "Patient/p1"}, "type": "seealso"}]});
        assert!(matches(&p, "Patient", "p3", &rows(&linked)));
        assert_eq!(
            compartment_clause("Organization", "p1", BASE),
            Clause::Nothing
        );
    }

    #[test]
    fn granular_queries_become_clauses_or_grant_nothing() {
        let q = "category=http://terminology.hl7.org/CodeSystem/observation-category|vital-signs";
        let clauses = scope_clauses("Observation", q, BASE).expect("plain criteria");
        let all = Clause::All(clauses);
        let vital = json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}]});
        let lab = json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]}]});
        let other_system = json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
            "category": [{"coding": [{"system": "urn:local", "code": "vital-signs"}]}]});
        assert!(matches(&all, "Observation", "o", &rows(&vital)));
        assert!(!matches(&all, "Observation", "o", &rows(&lab)));
        assert!(!matches(&all, "Observation", "o", &rows(&other_system)));
        for bad in [
            "nonsense=1",
            "category=vital-signs&_count=5",
            "_include=Observation:subject",
            "date=notadate",
            "",
        ] {
            assert_eq!(scope_clauses("Observation", bad, BASE), None, "{bad}");
        }
        // Criteria that need the database are not decided in memory: refused.
        let dated = Clause::All(scope_clauses("Observation", "date=ge2020", BASE).expect("date"));
        let when = json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
            "effectiveDateTime": "2024-01-01"});
        assert!(!matches(&dated, "Observation", "o", &rows(&when)));
        let not = Clause::All(
            scope_clauses("Observation", "category:not=laboratory", BASE).expect("not"),
        );
        assert!(matches(&not, "Observation", "o", &rows(&vital)));
        assert!(!matches(&not, "Observation", "o", &rows(&lab)));
    }
}
