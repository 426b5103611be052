//! The audit trail as FHIR R4 AuditEvent (https://hl7.org/fhir/R4/auditevent.html): each row
//! rendered as a resource, and the AuditEvent search parameters that the row's columns answer.

use serde_json::{Value, json};

use crate::http::error::{ApiError, Issue};
use crate::store::audit::{AuditColumn, AuditFilter, AuditRow};
use crate::store::{Store, format_instant, parse_instant_range};

const DEFAULT_COUNT: i64 = 50;
const MAX_COUNT: i64 = 1000;

/// The identifier system of the OAuth client that made a request.
pub const CLIENT_SYSTEM: &str = "https://vitalbridge.dev/fhir/NamingSystem/client";
/// The code system of vitalbridge roles (DESIGN.md "Tenancy").
pub const ROLE_SYSTEM: &str = "https://vitalbridge.dev/fhir/CodeSystem/role";

/// The AuditEvent.type of a row's kind: a RESTful operation, or DICOM "User Authentication"
/// with subtype Login for the login page and the token endpoint.
fn event_type(kind: &str) -> Value {
    match kind {
        "rest" => json!({
            "system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
            "code": "rest",
            "display": "RESTful Operation"
        }),
        _ => json!({
            "system": "http://dicom.nema.org/resources/ontology/DCM",
            "code": "110114",
            "display": "User Authentication"
        }),
    }
}

fn event_subtype(kind: &str, subtype: &str) -> Value {
    match (kind, subtype) {
        ("rest", s) if !matches!(s, "launch" | "unknown") => {
            json!({"system": "http://hl7.org/fhir/restful-interaction", "code": s})
        }
        (_, "login") => json!({
            "system": "http://dicom.nema.org/resources/ontology/DCM",
            "code": "110122",
            "display": "Login"
        }),
        (_, s) => {
            json!({"system": "https://vitalbridge.dev/fhir/CodeSystem/audit-subtype", "code": s})
        }
    }
}

/// A row as an AuditEvent resource.
pub fn to_resource(row: &AuditRow) -> Value {
    let recorded = format_instant(row.recorded);
    let mut caller = json!({
        "requestor": true,
        "who": match &row.client_id {
            Some(c) => json!({"identifier": {"system": CLIENT_SYSTEM, "value": c}}),
            None => json!({"display": "unauthenticated"}),
        },
    });
    if let Some(s) = &row.subject {
        caller["altId"] = json!(s);
    }
    if let Some(c) = &row.client_id {
        caller["name"] = json!(c);
    }
    if let Some(r) = &row.role {
        caller["role"] = json!([{"coding": [{"system": ROLE_SYSTEM, "code": r}]}]);
    }
    if let Some(i) = &row.issuer {
        caller["policy"] = json!([i]);
    }
    if let Some(a) = &row.address {
        // type 2: IP address (http://hl7.org/fhir/network-type).
        caller["network"] = json!({"address": a, "type": "2"});
    }
    let mut agents = vec![caller];
    if let Some(o) = &row.organization {
        agents.push(json!({
            "requestor": false,
            "who": {"reference": format!("Organization/{o}")},
            "type": {"text": "organization the caller acts for"}
        }));
    }
    let mut resource = json!({
        "resourceType": "AuditEvent",
        "id": row.id.to_string(),
        "meta": {"versionId": "1", "lastUpdated": recorded},
        "type": event_type(&row.kind),
        "subtype": [event_subtype(&row.kind, &row.subtype)],
        "action": row.action,
        "recorded": recorded,
        "outcome": row.outcome,
        "outcomeDesc": match &row.request_id {
            Some(id) => format!("HTTP {}; request {id}", row.status),
            None => format!("HTTP {}", row.status),
        },
        "agent": agents,
        "source": {
            "observer": {"display": "vitalbridge"},
            "type": [{
                "system": "http://terminology.hl7.org/CodeSystem/security-source-type",
                "code": "4",
                "display": "Application Server"
            }]
        }
    });
    let what = match (&row.entity_type, &row.entity_id) {
        (Some(t), Some(id)) if matches!(t.as_str(), "client" | "user") => {
            json!({"identifier": {"system": format!("https://vitalbridge.dev/fhir/NamingSystem/{t}"), "value": id}})
        }
        (Some(t), Some(id)) => json!({"reference": format!("{t}/{id}")}),
        (Some(t), None) => json!({"type": t}),
        _ => Value::Null,
    };
    if !what.is_null() {
        resource["entity"] = json!([{"what": what}]);
    }
    resource
}

/// The codes of a token parameter's value (`system|code` or `code`), comma = OR.
fn codes(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(|v| v.rsplit('|').next().unwrap_or(v).trim().to_owned())
        .filter(|v| !v.is_empty())
        .collect()
}

/// A `date` parameter: prefix and instant range (search.html#prefix), as a condition on
/// `recorded`.
fn date_cond(value: &str) -> Option<AuditFilter> {
    let (prefix, rest) = match value.get(..2) {
        Some(p @ ("eq" | "ne" | "gt" | "lt" | "ge" | "le" | "sa" | "eb")) => (p, &value[2..]),
        _ => ("eq", value),
    };
    let (lo, mut hi) = parse_instant_range(rest)?;
    // An instant given to the second covers that second (search.html#date: the value's
    // precision is its range); the trail records microseconds.
    if lo == hi && !rest.contains('.') {
        hi = lo + 999_999;
    }
    let (lo, hi, inside) = match prefix {
        "eq" => (lo, hi, true),
        "ne" => (lo, hi, false),
        "gt" | "sa" => (hi.saturating_add(1), i64::MAX, true),
        "ge" => (lo, i64::MAX, true),
        "lt" | "eb" => (i64::MIN, lo.saturating_sub(1), true),
        _ => (i64::MIN, hi, true),
    };
    Some(AuditFilter::Recorded { lo, hi, inside })
}

/// An AuditEvent search, parsed.
#[derive(Debug, Default)]
pub struct AuditQuery {
    pub conds: Vec<AuditFilter>,
    pub oldest_first: bool,
    pub count: i64,
    pub total: bool,
    /// The page starts after this row id (in the search's order).
    pub cursor: Option<i64>,
    /// Parameters that are kept in the page links (all but the cursor).
    pub kept: Vec<(String, String)>,
    pub unknown: Vec<String>,
    pub invalid: Vec<Issue>,
}

/// Parses the parameters AuditEvent search supports on the audit trail: `_id`, `date`,
/// `action`, `outcome`, `subtype`, `type`, `altid` (the user), `agent-name` (the client),
/// `agent-role`, `agent` (the Organization acted for), `entity` (`Type/id`), `address`, with
/// `_count`, `_sort` (`date`, `-date`), `_total`.
pub fn parse(params: &[(String, String)]) -> AuditQuery {
    let mut q = AuditQuery {
        count: DEFAULT_COUNT,
        ..Default::default()
    };
    for (name, value) in params {
        let bad = |why: &str| Issue::error("invalid", format!("{name}={value}: {why}"));
        if name != "_cursor" {
            q.kept.push((name.clone(), value.clone()));
        }
        let column = match name.as_str() {
            "action" => Some(AuditColumn::Action),
            "outcome" => Some(AuditColumn::Outcome),
            "subtype" => Some(AuditColumn::Subtype),
            "altid" => Some(AuditColumn::Subject),
            "agent-name" => Some(AuditColumn::ClientId),
            "agent-role" => Some(AuditColumn::Role),
            "address" => Some(AuditColumn::Address),
            _ => None,
        };
        if let Some(col) = column {
            match codes(value) {
                c if c.is_empty() => q.invalid.push(bad("no value")),
                c => q.conds.push(AuditFilter::AnyOf(col, c)),
            }
            continue;
        }
        match name.as_str() {
            "_id" => match value
                .split(',')
                .map(|v| v.trim().parse::<i64>())
                .collect::<Result<Vec<i64>, _>>()
            {
                Ok(ids) => q.conds.push(AuditFilter::Ids(ids)),
                // No row has such an id.
                Err(_) => q.conds.push(AuditFilter::Ids(vec![])),
            },
            "type" => {
                let kinds: Vec<String> = codes(value)
                    .into_iter()
                    .flat_map(|c| match c.as_str() {
                        "rest" => vec!["rest".to_owned()],
                        "110114" => vec!["login".to_owned(), "token".to_owned()],
                        _ => vec![c],
                    })
                    .collect();
                if kinds.is_empty() {
                    q.invalid.push(bad("no value"));
                } else {
                    q.conds.push(AuditFilter::AnyOf(AuditColumn::Kind, kinds));
                }
            }
            "date" => match date_cond(value) {
                Some(c) => q.conds.push(c),
                None => q.invalid.push(bad("not a FHIR date")),
            },
            "agent" => {
                let orgs: Vec<String> = value
                    .split(',')
                    .map(|v| {
                        v.rsplit("Organization/")
                            .next()
                            .unwrap_or(v)
                            .trim()
                            .to_owned()
                    })
                    .filter(|v| !v.is_empty())
                    .collect();
                if orgs.is_empty() {
                    q.invalid.push(bad("no value"));
                } else {
                    q.conds
                        .push(AuditFilter::AnyOf(AuditColumn::Organization, orgs));
                }
            }
            "entity" => {
                let entities: Vec<(Option<String>, String)> = value
                    .split(',')
                    .filter(|v| !v.trim().is_empty())
                    .map(|v| {
                        let local = v.split("/fhir/").last().unwrap_or(v);
                        match local.split_once('/') {
                            Some((t, id)) => (Some(t.to_owned()), id.to_owned()),
                            None => (None, local.to_owned()),
                        }
                    })
                    .collect();
                if entities.is_empty() {
                    q.invalid.push(bad("no value"));
                } else {
                    q.conds.push(AuditFilter::Entity(entities));
                }
            }
            "_count" => match value.parse::<i64>() {
                Ok(n) if n >= 0 => q.count = n.min(MAX_COUNT),
                _ => q.invalid.push(bad("not a count")),
            },
            "_sort" => match value.as_str() {
                "date" | "_lastUpdated" | "_id" => q.oldest_first = true,
                "-date" | "-_lastUpdated" | "-_id" => q.oldest_first = false,
                _ => q.invalid.push(bad("audit events sort by date only")),
            },
            "_total" => q.total = value == "accurate",
            "_cursor" => match value.parse::<i64>() {
                Ok(id) => q.cursor = Some(id),
                Err(_) => q.invalid.push(bad("not a page cursor")),
            },
            "_format" | "_pretty" | "_summary" | "_elements" => {}
            other => q.unknown.push(other.to_owned()),
        }
    }
    q
}

/// Runs an AuditEvent search and returns the searchset Bundle, with `self` and `next` links
/// (the next page starts after the last row shown, so new rows do not shift pages).
pub async fn search(store: &Store, q: &AuditQuery, base: &str) -> Result<Value, ApiError> {
    let total = if q.total {
        Some(store.audit_count(&q.conds).await?)
    } else {
        None
    };
    let mut conds = q.conds.clone();
    if let Some(c) = q.cursor {
        conds.push(if q.oldest_first {
            AuditFilter::IdAbove(c)
        } else {
            AuditFilter::IdBelow(c)
        });
    }
    let rows = store
        .audit_rows(&conds, q.oldest_first, q.count + 1)
        .await?;
    let more = rows.len() as i64 > q.count;
    let shown = &rows[..rows.len().min(q.count as usize)];
    let link = |extra: Option<i64>| {
        let mut ser = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in &q.kept {
            ser.append_pair(k, v);
        }
        if let Some(c) = extra {
            ser.append_pair("_cursor", &c.to_string());
        }
        format!("{base}/AuditEvent?{}", ser.finish())
    };
    let mut links = vec![json!({"relation": "self", "url": link(q.cursor)})];
    if more && let Some(last) = shown.last() {
        links.push(json!({"relation": "next", "url": link(Some(last.id))}));
    }
    let mut bundle = json!({
        "resourceType": "Bundle",
        "type": "searchset",
        "link": links,
        "entry": shown.iter().map(|r| json!({
            "fullUrl": format!("{base}/AuditEvent/{}", r.id),
            "resource": to_resource(r),
            "search": {"mode": "match"}
        })).collect::<Vec<_>>(),
    });
    if let Some(t) = total {
        bundle["total"] = json!(t);
    }
    Ok(bundle)
}

/// One AuditEvent by id.
pub async fn read(store: &Store, id: &str) -> Result<Value, ApiError> {
    let missing = || ApiError::NotFound(format!("AuditEvent/{id} is not known"));
    let n: i64 = id.parse().map_err(|_| missing())?;
    let row = store.audit_row(n).await?.ok_or_else(missing)?;
    Ok(to_resource(&row))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn parameters_become_conditions_on_columns() {
        let q = parse(&p(&[
            ("action", "R,E"),
            ("date", "ge2026-12-01"),
            ("entity", "Patient/7"),
            ("_sort", "date"),
            ("_count", "10"),
            ("foo", "bar"),
        ]));
        assert_eq!(
            q.conds,
            [
                AuditFilter::AnyOf(AuditColumn::Action, vec!["R".into(), "E".into()]),
                AuditFilter::Recorded {
                    lo: 1_796_083_200_000_000,
                    hi: i64::MAX,
                    inside: true
                },
                AuditFilter::Entity(vec![(Some("Patient".into()), "7".into())]),
            ]
        );
        assert!(q.oldest_first);
        assert_eq!(q.count, 10);
        assert_eq!(q.unknown, ["foo"]);
        let bad = parse(&p(&[
            ("date", "yesterday"),
            ("_sort", "outcome"),
            ("action", ""),
            ("type", ","),
            ("entity", ","),
            ("agent", ""),
        ]));
        assert_eq!(bad.invalid.len(), 6);
        assert!(bad.conds.is_empty());
        // To the second: that whole second.
        let c = date_cond("eq2026-12-01T10:00:00Z").expect("date");
        assert_eq!(
            c,
            AuditFilter::Recorded {
                lo: 1_796_119_200_000_000,
                hi: 1_796_119_200_999_999,
                inside: true
            }
        );
        let gt = date_cond("gt2026-12-01T10:00:00Z").expect("date");
        assert_eq!(
            gt,
            AuditFilter::Recorded {
                lo: 1_796_119_201_000_000,
                hi: i64::MAX,
                inside: true
            }
        );
    }

    #[test]
    fn rows_render_as_audit_events() {
        let row = AuditRow {
            id: 12,
            recorded: 1_796_000_000_000_000,
            kind: "rest".into(),
            subtype: "read".into(),
            action: "R".into(),
            outcome: "0".into(),
            status: 200,
            client_id: Some("ehr".into()),
            subject: Some("ehr".into()),
            role: Some("customer".into()),
            organization: Some("c1".into()),
            entity_type: Some("Patient".into()),
            entity_id: Some("p1".into()),
            ..Default::default()
        };
        let r = to_resource(&row);
        assert_eq!(r["id"], "12");
        assert_eq!(r["subtype"][0]["code"], "read");
        assert_eq!(r["agent"][0]["who"]["identifier"]["value"], "ehr");
        assert_eq!(r["agent"][0]["role"][0]["coding"][0]["code"], "customer");
        assert_eq!(r["agent"][1]["who"]["reference"], "Organization/c1");
        assert_eq!(r["entity"][0]["what"]["reference"], "Patient/p1");
        assert_eq!(r["outcome"], "0");
    }
}
