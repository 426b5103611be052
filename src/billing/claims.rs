//! RPM Claims from the stored readings (issue 7, item 5): for each patient and monitoring
//! period that has ended, the codes the period earns by the rules kept as data
//! ([`super::rpm`]), as a professional Claim to the patient's payer.
//!
//! - A patient's episode starts on the day of its first device reading (an Observation with a
//!   `device` about the Patient); periods of the rules' `period_days` (30) follow one another
//!   from that day. Days are calendar days in the clinic's time zone (the Patient's
//!   `managingOrganization`).
//! - Days with readings: distinct days on which some device reading was taken (`effective`).
//! - Management minutes: staff record each stretch of management time as a Procedure with the
//!   code [`MANAGEMENT_TIME`] of [`ACTIVITY_SYSTEM`], `status` `completed`, the Patient as
//!   `subject` and `performedPeriod` from start to end; a period's minutes are those of the
//!   Procedures that started in it.
//! - The set-up code is claimed once per episode: not again once a Claim of the patient has it.
//! - The Claim: `provider` the clinic, `insurance` the patient's active Coverage (a period
//!   without one is reported, not claimed), identifier [`CLAIM_SYSTEM`] `{patient}/{start}`:
//!   created once (a conditional create on it), so re-runs and racing processes change nothing.
//!
//! Periods that ended within the last [`LOOKBACK_DAYS`] are looked at; older ones were claimed
//! by earlier runs.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use jiff::ToSpan;
use jiff::civil::Date;
use jiff::tz::TimeZone;
use serde_json::{Value, json};

use super::activity;
use super::rpm::{self, ClaimFor, Rules};
use crate::auth::policy::Policy;
use crate::fhir::parse::{Expect, validate_resource};
use crate::fhir::rest;
use crate::fhir::types::ResourceType;
use crate::store::Store;

pub const ACTIVITY_SYSTEM: &str = "https://vitalbridge.dev/fhir/CodeSystem/rpm-activity";
pub const MANAGEMENT_TIME: &str = "management-time";
/// Identifies each Claim by patient and period start.
pub const CLAIM_SYSTEM: &str = "https://vitalbridge.dev/fhir/NamingSystem/rpm-claim";
/// How far back a run looks for ended periods.
pub const LOOKBACK_DAYS: i64 = 62;

/// What a claims run did.
#[derive(Debug, Default, Clone)]
pub struct Report {
    /// Ended periods looked at.
    pub periods: u64,
    /// Claims made, as `Claim/{id}`.
    pub made: Vec<String>,
    /// Periods already claimed.
    pub existing: u64,
    /// What needs a person (ids only).
    pub problems: Vec<String>,
}

/// The day of `at` (microseconds) in `tz`.
fn day_of(at: i64, tz: &TimeZone) -> Option<Date> {
    Some(
        jiff::Timestamp::from_microsecond(at)
            .ok()?
            .to_zoned_datetime(tz.clone())
            .date(),
    )
}

/// The start of `day` in `tz` (microseconds).
fn start_of(day: Date, tz: &TimeZone) -> Option<i64> {
    Some(
        day.to_zoned_datetime(tz.clone())
            .ok()?
            .start_of_day()
            .ok()?
            .timestamp()
            .as_microsecond(),
    )
}

/// The periods of an episode that began on `first` which have ended by `today` (the day after
/// their last is `today` or earlier) and ended at most `LOOKBACK_DAYS` ago: first and last day.
pub fn ended_periods(first: Date, period_days: u32, today: Date) -> Vec<(Date, Date)> {
    let mut out = Vec::new();
    let oldest = today.checked_sub(LOOKBACK_DAYS.days()).unwrap_or(first);
    let mut start = first;
    loop {
        let Ok(next) = start.checked_add((period_days as i64).days()) else {
            break;
        };
        if next > today {
            break;
        }
        if next > oldest {
            out.push((start, next.yesterday().unwrap_or(start)));
        }
        start = next;
    }
    out
}

/// A Procedure's management minutes and when they started, if it records management time.
fn minutes_of(procedure: &Value) -> Option<(String, i64, u32)> {
    if procedure["status"] != "completed" {
        return None;
    }
    let patient = procedure["subject"]["reference"]
        .as_str()?
        .strip_prefix("Patient/")?
        .to_owned();
    let start: jiff::Timestamp = procedure["performedPeriod"]["start"]
        .as_str()?
        .parse()
        .ok()?;
    let end: jiff::Timestamp = procedure["performedPeriod"]["end"].as_str()?.parse().ok()?;
    let minutes = (end.as_second() - start.as_second()) / 60;
    (minutes > 0).then(|| (patient, start.as_microsecond(), minutes as u32))
}

/// Runs the claims of periods ended by `now` (microseconds).
pub async fn run(store: &Store, rules: &Rules, now: i64) -> anyhow::Result<Report> {
    let mut report = Report::default();
    let firsts = store.first_readings(now).await?;
    if firsts.is_empty() {
        return Ok(report);
    }
    // The clinics' time zones, and each patient's clinic.
    let mut zones: HashMap<String, TimeZone> = HashMap::new();
    for (id, org) in super::run::current_of(store, "Organization").await? {
        match activity::time_zone(&org) {
            Ok(tz) => {
                zones.insert(id, tz);
            }
            Err(e) => report.problems.push(format!("Organization/{id}: {e}")),
        }
    }
    let wanted: BTreeSet<&str> = firsts.iter().map(|(p, _)| p.as_str()).collect();
    let mut clinics: HashMap<String, String> = HashMap::new();
    for (id, patient) in super::run::current_of(store, "Patient").await? {
        if !wanted.contains(id.as_str()) {
            continue;
        }
        if let Some(org) = patient["managingOrganization"]["reference"]
            .as_str()
            .and_then(|r| r.strip_prefix("Organization/"))
        {
            clinics.insert(id, org.to_owned());
        }
    }

    // The ended periods of each patient, with its clinic's zone.
    struct Periods<'a> {
        clinic: &'a str,
        tz: &'a TimeZone,
        periods: Vec<(Date, Date)>,
    }
    let mut todo: BTreeMap<&str, Periods<'_>> = BTreeMap::new();
    let mut from = now;
    for (patient, first) in &firsts {
        let Some(clinic) = clinics.get(patient) else {
            continue;
        };
        let Some(tz) = zones.get(clinic) else {
            continue;
        };
        let (Some(first_day), Some(today)) = (day_of(*first, tz), day_of(now, tz)) else {
            continue;
        };
        let periods = ended_periods(first_day, rules.period_days, today);
        if let Some(start) = periods.first().and_then(|(s, _)| start_of(*s, tz)) {
            from = from.min(start);
            todo.insert(
                patient,
                Periods {
                    clinic,
                    tz,
                    periods,
                },
            );
        }
    }
    if todo.is_empty() {
        return Ok(report);
    }

    // Days with readings and minutes, per patient and day.
    let mut days: HashMap<&str, BTreeSet<Date>> = HashMap::new();
    for (patient, at) in store.readings(from, now).await? {
        if let Some((p, t)) = todo.get_key_value(patient.as_str())
            && let Some(d) = day_of(at, t.tz)
        {
            days.entry(*p).or_default().insert(d);
        }
    }
    let mut minutes: HashMap<&str, Vec<(Date, u32)>> = HashMap::new();
    let procedures = store
        .coded_in_period(
            "Procedure",
            "code",
            (ACTIVITY_SYSTEM, MANAGEMENT_TIME),
            from,
            now,
        )
        .await?;
    for v in procedures {
        let Some(p) = v
            .content
            .as_deref()
            .and_then(|c| serde_json::from_str(c).ok())
        else {
            continue;
        };
        if let Some((patient, start, m)) = minutes_of(&p)
            && let Some((key, t)) = todo.get_key_value(patient.as_str())
            && let Some(d) = day_of(start, t.tz)
        {
            minutes.entry(*key).or_default().push((d, m));
        }
    }

    let created = crate::store::format_instant(now);
    for (patient, t) in &todo {
        let mut setup_billed = setup_claimed(store, patient, rules).await?;
        for (start, end) in &t.periods {
            report.periods += 1;
            let in_period = |d: &Date| d >= start && d <= end;
            let period = rpm::Period {
                days_with_readings: days
                    .get(patient)
                    .map_or(0, |s| s.iter().filter(|d| in_period(d)).count() as u32),
                setup_billed,
                minutes: minutes.get(patient).map_or(0, |l| {
                    l.iter().filter(|(d, _)| in_period(d)).map(|(_, m)| m).sum()
                }),
            };
            let codes = rpm::codes(rules, period);
            if codes.is_empty() {
                continue;
            }
            let Some(coverage) = coverage_of(store, patient).await? else {
                report.problems.push(format!(
                    "Patient/{patient} has no active Coverage: the period from {start} is not claimed"
                ));
                continue;
            };
            let (s, e) = (start.to_string(), end.to_string());
            let mut claim = rpm::claim(
                rules,
                &ClaimFor {
                    patient,
                    provider: t.clinic,
                    coverage: &coverage,
                    start: &s,
                    end: &e,
                    created: &created,
                },
                &codes,
            );
            let key = format!("{patient}/{s}");
            claim["identifier"] = json!([{"system": CLAIM_SYSTEM, "value": key}]);
            let ty = ResourceType::parse("Claim").ok_or_else(|| anyhow::anyhow!("Claim"))?;
            let res = validate_resource(claim, Expect::Create(ty))?;
            let criteria = format!(
                "identifier={}|{}",
                url::form_urlencoded::byte_serialize(CLAIM_SYSTEM.as_bytes()).collect::<String>(),
                url::form_urlencoded::byte_serialize(key.as_bytes()).collect::<String>()
            );
            let mut tx = store.begin().await?;
            let o = rest::create(&mut tx, res, None, Some(&criteria), &Policy::system()).await?;
            tx.commit().await?;
            if o.status == axum::http::StatusCode::CREATED {
                report.made.push(format!("Claim/{}", o.id));
            } else {
                report.existing += 1;
            }
            if codes.iter().any(|c| c.code == rules.setup.code) {
                setup_billed = true;
            }
        }
    }
    Ok(report)
}

/// Runs a search as the system and returns the matches' contents.
async fn search(store: &Store, ty: &str, params: &[(&str, String)]) -> anyhow::Result<Vec<Value>> {
    let found = super::run::system_search(&mut store.reader(), ty, params).await?;
    Ok(found
        .into_iter()
        .filter_map(|v| v.content.and_then(|c| serde_json::from_str(&c).ok()))
        .collect())
}

/// True when a Claim of `patient` already has the set-up code.
async fn setup_claimed(store: &Store, patient: &str, rules: &Rules) -> anyhow::Result<bool> {
    let claims = search(
        store,
        "Claim",
        &[
            ("patient", format!("Patient/{patient}")),
            ("status", "active".into()),
            ("_count", "1000".into()),
        ],
    )
    .await?;
    Ok(claims.iter().any(|c| {
        c["item"].as_array().into_iter().flatten().any(|i| {
            i["productOrService"]["coding"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|k| {
                    k["system"] == rules.system.as_str() && k["code"] == rules.setup.code.as_str()
                })
        })
    }))
}

/// The patient's active Coverage (`Coverage.beneficiary`), if any.
async fn coverage_of(store: &Store, patient: &str) -> anyhow::Result<Option<String>> {
    let found = search(
        store,
        "Coverage",
        &[
            ("beneficiary", format!("Patient/{patient}")),
            ("status", "active".into()),
            ("_sort", "_id".into()),
            ("_count", "1".into()),
        ],
    )
    .await?;
    Ok(found
        .first()
        .and_then(|c| c["id"].as_str())
        .map(str::to_owned))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn d(s: &str) -> Date {
        s.parse().unwrap()
    }

    #[test]
    fn periods_follow_each_other_from_the_first_reading_and_count_once_ended() {
        let first = d("2026-09-01");
        assert_eq!(ended_periods(first, 30, d("2026-09-30")), vec![]);
        assert_eq!(
            ended_periods(first, 30, d("2026-10-01")),
            vec![(d("2026-09-01"), d("2026-09-30"))]
        );
        assert_eq!(
            ended_periods(first, 30, d("2026-11-05")),
            vec![
                (d("2026-09-01"), d("2026-09-30")),
                (d("2026-10-01"), d("2026-10-30"))
            ]
        );
        // Long-running episodes: only the periods that ended in the lookback.
        let old = ended_periods(d("2024-01-01"), 30, d("2026-11-05"));
        assert!(old.len() <= 3, "{old:?}");
        assert!(old.iter().all(|(_, e)| *e >= d("2026-09-04")));
    }

    #[test]
    fn management_time_is_read_from_completed_procedures() {
        let p = serde_json::json!({"resourceType": "Procedure", "status": "completed",
            "subject": {"reference": "Patient/p1"},
            "performedPeriod": {"start": "2026-10-02T10:00:00Z", "end": "2026-10-02T10:25:30Z"}});
        let (patient, _, m) = minutes_of(&p).unwrap();
        assert_eq!((patient.as_str(), m), ("p1", 25));
        let mut not_done = p.clone();
        not_done["status"] = json!("in-progress");
        assert!(minutes_of(&not_done).is_none());
    }
}
