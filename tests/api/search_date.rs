//! Date search (https://hl7.org/fhir/R4/search.html#date): every value is a range (a date of
//! day precision is the whole day, `1950` the whole year, a Period its start to its end) and the
//! prefixes compare ranges as the R4 table defines:
//!
//! - `eq`: the search range contains the target range; `ne`: it does not;
//! - `gt`: the target ends after the search range; `lt`: the target starts before it;
//! - `ge`: `gt`, or contained; `le`: `lt`, or contained;
//! - `sa`: the target starts after the search range ends; `eb`: it ends before it starts;
//! - `ap`: approximately (the recommended 10% of the distance from now).
//!
//! Search values without a time zone are read in UTC, as `_since` and `_at` already are.

use serde_json::{Value, json};

use crate::both;
use crate::common::TestApp;
use crate::search::{check, last_updated, loinc, modify, put, tick};

fn patient(id: &str, birth: Option<&str>) -> Value {
    let mut p = json!({"resourceType": "Patient", "id": id, "name": [{"family": id}]});
    if let Some(b) = birth {
        p["birthDate"] = json!(b);
    }
    p
}

fn observation(id: &str, effective: Option<(&str, Value)>) -> Value {
    let mut o = json!({"resourceType": "Observation", "id": id, "status": "final",
                       "code": loinc("8867-4", "Heart rate")});
    if let Some((key, value)) = effective {
        o[key] = value;
    }
    o
}

/// Birth dates around April 1950 and in June 1990; Observations around March 2026.
/// Returns `meta.lastUpdated` of every Patient, in creation order.
async fn seed(app: &TestApp) -> Vec<(String, String)> {
    let mut written = Vec::new();
    for (id, birth) in [
        ("bd-0401", Some("1950-04-01")),
        ("bd-0430", Some("1950-04-30")),
        ("bd-0501", Some("1950-05-01")),
        ("bd-1949", Some("1949-12-31")),
        ("bd-1951", Some("1951-01-01")),
        ("bd-1990a", Some("1990-06-15")),
        ("bd-1990b", Some("1990-06-20")),
        ("bd-none", None),
        // Year precision: the whole of 1950.
        ("bd-year", Some("1950")),
    ] {
        let v = put(app, patient(id, birth)).await;
        written.push((id.to_owned(), last_updated(&v)));
        tick().await;
    }

    let dt = |s: &str| json!(s);
    for o in [
        observation(
            "eff-0830z",
            Some(("effectiveDateTime", dt("2026-03-10T08:30:00Z"))),
        ),
        // 07:30 UTC.
        observation(
            "eff-0730z",
            Some(("effectiveDateTime", dt("2026-03-10T09:30:00+02:00"))),
        ),
        // 23:30 UTC on 28 February, although its local date is 1 March.
        observation(
            "eff-feb28",
            Some(("effectiveDateTime", dt("2026-03-01T00:30:00+01:00"))),
        ),
        // Straddles the February/March boundary.
        observation(
            "eff-straddle",
            Some((
                "effectivePeriod",
                json!({"start": "2026-02-15T00:00:00Z", "end": "2026-03-10T00:00:00Z"}),
            )),
        ),
        // Inside March, with day precision at both ends.
        observation(
            "eff-inside",
            Some((
                "effectivePeriod",
                json!({"start": "2026-03-05", "end": "2026-03-20"}),
            )),
        ),
        // Open-ended.
        observation(
            "eff-open",
            Some(("effectivePeriod", json!({"start": "2026-03-25T00:00:00Z"}))),
        ),
        observation(
            "eff-apr1",
            Some(("effectiveDateTime", dt("2026-04-01T00:00:00Z"))),
        ),
        observation("eff-jan15", Some(("effectiveDateTime", dt("2026-01-15")))),
        observation("eff-none", None),
    ] {
        put(app, o).await;
    }
    written
}

async fn birthdate_prefixes_and_precision(app: TestApp) {
    seed(&app).await;
    // Implicit ranges: year, month, day.
    check(
        &app,
        "Patient?birthdate=1950",
        &["bd-0401", "bd-0430", "bd-0501", "bd-year"],
    )
    .await;
    check(&app, "Patient?birthdate=1950-04", &["bd-0401", "bd-0430"]).await;
    check(&app, "Patient?birthdate=1950-04-01", &["bd-0401"]).await;
    check(&app, "Patient?birthdate=eq1950-04-01", &["bd-0401"]).await;
    check(&app, "Patient?birthdate=1951", &["bd-1951"]).await;
    // ne: not contained (only among Patients that have a birth date).
    check(
        &app,
        "Patient?birthdate=ne1950-04&birthdate:missing=false",
        &[
            "bd-0501", "bd-1949", "bd-1951", "bd-1990a", "bd-1990b", "bd-year",
        ],
    )
    .await;
    // gt / ge: the whole year 1950 ends after 30 April, so bd-year is greater.
    check(
        &app,
        "Patient?birthdate=gt1950-04-30",
        &["bd-0501", "bd-1951", "bd-1990a", "bd-1990b", "bd-year"],
    )
    .await;
    check(
        &app,
        "Patient?birthdate=ge1950-04-30",
        &[
            "bd-0430", "bd-0501", "bd-1951", "bd-1990a", "bd-1990b", "bd-year",
        ],
    )
    .await;
    // lt / le: the year 1950 starts before 1 April.
    check(
        &app,
        "Patient?birthdate=lt1950-04-01",
        &["bd-1949", "bd-year"],
    )
    .await;
    check(
        &app,
        "Patient?birthdate=le1950-04-01",
        &["bd-0401", "bd-1949", "bd-year"],
    )
    .await;
    // sa / eb: entirely after / entirely before; the year 1950 is neither.
    check(
        &app,
        "Patient?birthdate=sa1950-04-30",
        &["bd-0501", "bd-1951", "bd-1990a", "bd-1990b"],
    )
    .await;
    check(&app, "Patient?birthdate=eb1950-04-01", &["bd-1949"]).await;
    // ap: five days off a date 35 years ago is approximately equal; decades off are not.
    check(
        &app,
        "Patient?birthdate=ap1990-06-15",
        &["bd-1990a", "bd-1990b"],
    )
    .await;
    // AND of two bounds, OR of two values, :missing.
    check(
        &app,
        "Patient?birthdate=ge1950&birthdate=lt1951",
        &["bd-0401", "bd-0430", "bd-0501", "bd-year"],
    )
    .await;
    check(&app, "Patient?birthdate=1949,1951", &["bd-1949", "bd-1951"]).await;
    check(&app, "Patient?birthdate:missing=true", &["bd-none"]).await;
}
both!(birthdate_prefixes_and_precision);

async fn observation_date_periods_and_zones(app: TestApp) {
    seed(&app).await;
    // The open-ended Period reaches beyond 2026, so the year does not contain it.
    check(
        &app,
        "Observation?date=2026",
        &[
            "eff-0830z",
            "eff-0730z",
            "eff-feb28",
            "eff-straddle",
            "eff-inside",
            "eff-apr1",
            "eff-jan15",
        ],
    )
    .await;
    // The whole month: contained only. eff-feb28 is 28 February in UTC; the straddling and the
    // open Period are not inside March.
    check(
        &app,
        "Observation?date=2026-03",
        &["eff-0830z", "eff-0730z", "eff-inside"],
    )
    .await;
    check(
        &app,
        "Observation?date=2026-03-10",
        &["eff-0830z", "eff-0730z"],
    )
    .await;
    // An instant, written in two zones.
    check(
        &app,
        "Observation?date=2026-03-10T08:30:00Z",
        &["eff-0830z"],
    )
    .await;
    check(
        &app,
        "Observation?date=2026-03-10T10:30:00+02:00",
        &["eff-0830z"],
    )
    .await;
    // ge an instant: what ends after it. 08:00Z = 10:00+02:00; 07:30Z is before.
    let after_0800 = ["eff-0830z", "eff-inside", "eff-open", "eff-apr1"];
    check(&app, "Observation?date=ge2026-03-10T08:00:00Z", &after_0800).await;
    check(
        &app,
        "Observation?date=ge2026-03-10T10:00:00+02:00",
        &after_0800,
    )
    .await;
    check(
        &app,
        "Observation?date=lt2026-03-10T08:00:00Z",
        &[
            "eff-0730z",
            "eff-feb28",
            "eff-straddle",
            "eff-inside",
            "eff-jan15",
        ],
    )
    .await;
    check(
        &app,
        "Observation?date=gt2026-03-10T08:30:00Z",
        &["eff-inside", "eff-open", "eff-apr1"],
    )
    .await;
    check(
        &app,
        "Observation?date=le2026-03-10T08:30:00Z",
        &[
            "eff-0830z",
            "eff-0730z",
            "eff-feb28",
            "eff-straddle",
            "eff-inside",
            "eff-jan15",
        ],
    )
    .await;
    // Time zones: 00:30+01:00 on 1 March is before midnight UTC.
    check(
        &app,
        "Observation?date=lt2026-03-01T00:00:00Z",
        &["eff-feb28", "eff-straddle", "eff-jan15"],
    )
    .await;
    // A Period straddling the month boundary: it ends after February (gt2026-02) but neither
    // ends after March nor lies inside it (not ge2026-03), and neither starts before February
    // nor lies inside it (not le2026-02).
    check(
        &app,
        "Observation?date=gt2026-02",
        &[
            "eff-0830z",
            "eff-0730z",
            "eff-straddle",
            "eff-inside",
            "eff-open",
            "eff-apr1",
        ],
    )
    .await;
    check(
        &app,
        "Observation?date=ge2026-03",
        &[
            "eff-0830z",
            "eff-0730z",
            "eff-inside",
            "eff-open",
            "eff-apr1",
        ],
    )
    .await;
    check(
        &app,
        "Observation?date=le2026-02",
        &["eff-feb28", "eff-jan15"],
    )
    .await;
    check(&app, "Observation?date=lt2026-02", &["eff-jan15"]).await;
    check(
        &app,
        "Observation?date=sa2026-03-20",
        &["eff-open", "eff-apr1"],
    )
    .await;
    check(
        &app,
        "Observation?date=eb2026-03-01",
        &["eff-feb28", "eff-jan15"],
    )
    .await;
    check(
        &app,
        "Observation?date=ne2026-03&date:missing=false",
        &[
            "eff-feb28",
            "eff-straddle",
            "eff-open",
            "eff-apr1",
            "eff-jan15",
        ],
    )
    .await;
    // AND: both bounds hold.
    check(
        &app,
        "Observation?date=ge2026-03-01&date=lt2026-03-15",
        &["eff-0830z", "eff-0730z", "eff-straddle", "eff-inside"],
    )
    .await;
    check(
        &app,
        "Observation?date=ge2026-01-01&date=lt2026-02-01",
        &["eff-jan15"],
    )
    .await;
    // OR.
    check(
        &app,
        "Observation?date=2026-01,2026-04",
        &["eff-jan15", "eff-apr1"],
    )
    .await;
    check(&app, "Observation?date:missing=true", &["eff-none"]).await;
}
both!(observation_date_periods_and_zones);

async fn last_updated_ranges(app: TestApp) {
    let written = seed(&app).await;
    let ids: Vec<&str> = written.iter().map(|(id, _)| id.as_str()).collect();
    // bd-1951 is the fifth Patient written; lastUpdated has microsecond precision.
    let (mark_id, mark) = &written[4];
    assert_eq!(mark_id, "bd-1951");
    check(&app, &format!("Patient?_lastUpdated=gt{mark}"), &ids[5..]).await;
    check(&app, &format!("Patient?_lastUpdated=ge{mark}"), &ids[4..]).await;
    check(&app, &format!("Patient?_lastUpdated=lt{mark}"), &ids[..4]).await;
    check(&app, &format!("Patient?_lastUpdated=le{mark}"), &ids[..5]).await;
    check(&app, &format!("Patient?_lastUpdated={mark}"), &["bd-1951"]).await;
    let (_, seventh) = &written[6];
    check(
        &app,
        &format!("Patient?_lastUpdated=ge{mark}&_lastUpdated=le{seventh}"),
        &ids[4..7],
    )
    .await;
    check(&app, "Patient?_lastUpdated=ge2000-01-01", &ids).await;
    check(&app, "Patient?_lastUpdated=lt2000-01-01", &[]).await;
    // An update moves a resource past the mark.
    tick().await;
    let updated = modify(&app, "Patient", "bd-0401", |p| {
        p["gender"] = json!("female");
    })
    .await;
    let mut later: Vec<&str> = ids[5..].to_vec();
    later.push("bd-0401");
    check(&app, &format!("Patient?_lastUpdated=gt{mark}"), &later).await;
    check(
        &app,
        &format!("Patient?_lastUpdated={}", last_updated(&updated)),
        &["bd-0401"],
    )
    .await;
    check(
        &app,
        &format!("Patient?_lastUpdated=lt{mark}"),
        &["bd-0430", "bd-0501", "bd-1949"],
    )
    .await;
}
both!(last_updated_ranges);

/// Patient + date is answered from the subject rows' date envelope. Where a resource has one
/// `date` value the envelope is that value and decides the criterion; where it has several
/// (MedicationRequest.dosageInstruction.timing.event) the envelope only narrows, and the values
/// themselves decide: a month between two events is inside the envelope but matches nothing.
async fn patient_and_date_exact_and_multi_valued(app: TestApp) {
    put(&app, patient("pd-1", None)).await;
    put(&app, patient("pd-2", None)).await;
    let obs = |id: &str, subject: &str, when: &str| {
        let mut o = observation(id, Some(("effectiveDateTime", json!(when))));
        o["subject"] = json!({"reference": format!("Patient/{subject}")});
        o
    };
    for o in [
        obs("pd-jan", "pd-1", "2026-01-10T09:00:00Z"),
        obs("pd-feb", "pd-1", "2026-02-10T09:00:00Z"),
        obs("pd-mar", "pd-1", "2026-03-10T09:00:00Z"),
        obs("pd-other", "pd-2", "2026-02-10T09:00:00Z"),
    ] {
        put(&app, o).await;
    }
    let events = |id: &str, subject: &str, days: &[&str]| {
        json!({"resourceType": "MedicationRequest", "id": id, "status": "active",
               "intent": "order", "medicationCodeableConcept": {"text": "x"},
               "subject": {"reference": format!("Patient/{subject}")},
               "dosageInstruction": [{"timing": {"event": days}}]})
    };
    put(
        &app,
        events("mr-jan-mar", "pd-1", &["2026-01-10", "2026-03-10"]),
    )
    .await;
    put(&app, events("mr-feb", "pd-1", &["2026-02-10"])).await;
    put(&app, events("mr-other", "pd-2", &["2026-02-10"])).await;

    check(
        &app,
        "Observation?patient=pd-1&date=ge2026-02-01",
        &["pd-feb", "pd-mar"],
    )
    .await;
    check(&app, "Observation?patient=pd-1&date=2026-02", &["pd-feb"]).await;
    check(
        &app,
        "Observation?patient=pd-1&date=lt2026-02-01",
        &["pd-jan"],
    )
    .await;
    check(
        &app,
        "Observation?subject=Patient/pd-1&date=sa2026-02-10",
        &["pd-mar"],
    )
    .await;
    check(
        &app,
        "Observation?patient=pd-2&date=le2026-02-10",
        &["pd-other"],
    )
    .await;

    // February lies inside mr-jan-mar's envelope (10 January to 10 March) but holds no event.
    check(
        &app,
        "MedicationRequest?patient=pd-1&date=2026-02",
        &["mr-feb"],
    )
    .await;
    check(
        &app,
        "MedicationRequest?patient=pd-1&date=2026-03-10",
        &["mr-jan-mar"],
    )
    .await;
    check(
        &app,
        "MedicationRequest?patient=pd-1&date=ge2026-02-01",
        &["mr-jan-mar", "mr-feb"],
    )
    .await;
    check(
        &app,
        "MedicationRequest?patient=pd-1&date=lt2026-02-01",
        &["mr-jan-mar"],
    )
    .await;
    check(
        &app,
        "MedicationRequest?patient=pd-1&date=ne2026-02-10",
        &["mr-jan-mar"],
    )
    .await;
}
both!(patient_and_date_exact_and_multi_valued);
