//! The days each device or hub was active for each customer in a month (issue 7, item 2), from
//! the Device's versions: pure, no I/O (DESIGN.md rule 5).
//!
//! A day is a calendar day in the customer's time zone, from local midnight to the next, so a
//! month has 28 to 31 days and a day 23 to 25 hours around daylight-saving changes. A device
//! counts for a customer on a day when, at some moment of that day, it was `active` and owned by
//! that customer. A device moved between customers during a day counts that day for both: each
//! had it in service (a catalog entry billed "any day" charges each of them the month).

use std::collections::{BTreeMap, BTreeSet};

use jiff::civil::Date;
use jiff::tz::TimeZone;

/// What one Device version says for billing, from the moment it was recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    /// When the version was recorded (microseconds since the epoch).
    pub at: i64,
    /// `Device.status` is `active`.
    pub active: bool,
    /// The owning customer (`Device.owner`), if any.
    pub owner: Option<String>,
}

impl State {
    /// What a Device version says, recorded at `at`: `status` `active`, and the customer of
    /// `owner` (`Organization/{id}`); a deleted version (`None`) is neither.
    pub fn of_device(device: Option<&serde_json::Value>, at: i64) -> State {
        let owner = device
            .and_then(|d| d["owner"]["reference"].as_str())
            .and_then(|r| r.strip_prefix("Organization/"))
            .filter(|id| !id.is_empty() && !id.contains('/'))
            .map(str::to_owned);
        State {
            at,
            active: device.is_some_and(|d| d["status"] == "active"),
            owner,
        }
    }
}

/// The FHIR core extension giving an Organization's time zone
/// (http://hl7.org/fhir/R4/extension-timezone.html): an IANA name as `valueCode`.
pub const TIMEZONE: &str = "http://hl7.org/fhir/StructureDefinition/timezone";

/// A customer Organization's time zone: its `timezone` extension, UTC without one. An unknown
/// name is an error naming it (a month cut at the wrong midnight is a wrong invoice).
pub fn time_zone(organization: &serde_json::Value) -> Result<TimeZone, String> {
    let name = organization["extension"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["url"] == TIMEZONE)
        .and_then(|e| e["valueCode"].as_str());
    match name {
        None => Ok(TimeZone::UTC),
        Some(n) => TimeZone::get(n).map_err(|_| format!("{n:?} is not an IANA time zone")),
    }
}

/// A calendar month.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Month {
    pub year: i16,
    pub month: i8,
}

impl Month {
    /// `2026-10`.
    pub fn parse(s: &str) -> Result<Month, String> {
        let bad = || format!("{s:?} is not a month (YYYY-MM)");
        let (y, m) = s.split_once('-').ok_or_else(bad)?;
        if y.len() != 4 || m.len() != 2 {
            return Err(bad());
        }
        let year: i16 = y.parse().map_err(|_| bad())?;
        let month: i8 = m.parse().map_err(|_| bad())?;
        Date::new(year, month, 1).map_err(|_| bad())?;
        Ok(Month { year, month })
    }

    pub fn first(self) -> Date {
        // Checked when the month was made.
        Date::new(self.year, self.month, 1).unwrap_or_default()
    }

    pub fn days(self) -> u8 {
        self.first().days_in_month() as u8
    }

    pub fn next(self) -> Month {
        if self.month == 12 {
            Month {
                year: self.year + 1,
                month: 1,
            }
        } else {
            Month {
                year: self.year,
                month: self.month + 1,
            }
        }
    }

    pub fn previous(self) -> Month {
        if self.month == 1 {
            Month {
                year: self.year - 1,
                month: 12,
            }
        } else {
            Month {
                year: self.year,
                month: self.month - 1,
            }
        }
    }

    /// The month of the instant `at` (microseconds) in UTC.
    pub fn of_utc(at: i64) -> Month {
        let date = jiff::Timestamp::from_microsecond(at)
            .unwrap_or_default()
            .to_zoned_datetime(TimeZone::UTC)
            .date();
        Month {
            year: date.year(),
            month: date.month(),
        }
    }

    /// The last month that has ended in UTC at `now` (microseconds).
    pub fn last_ended(now: i64) -> Month {
        Month::of_utc(now).previous()
    }

    /// The start of `day` (1-based; `days() + 1` is the next month's first) in `tz`, in
    /// microseconds since the epoch.
    pub fn day_start(self, day: u8, tz: &TimeZone) -> Result<i64, String> {
        let date = if day > self.days() {
            self.next().first()
        } else {
            Date::new(self.year, self.month, day as i8).map_err(|e| e.to_string())?
        };
        // The first instant of the day: a midnight skipped by a daylight-saving change starts
        // the day at the first time that exists.
        let zoned = date
            .to_zoned_datetime(tz.clone())
            .map_err(|e| e.to_string())?;
        let start = zoned.start_of_day().map_err(|e| e.to_string())?;
        Ok(start.timestamp().as_microsecond())
    }
}

impl std::fmt::Display for Month {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

/// The days of `month` (1-based, in `tz`) on which the device whose versions are `states`
/// (oldest first) was active and owned by `customer`.
pub fn active_days(
    states: &[State],
    customer: &str,
    month: Month,
    tz: &TimeZone,
) -> Result<BTreeSet<u8>, String> {
    let bounds: Vec<i64> = (1..=month.days() + 1)
        .map(|d| month.day_start(d, tz))
        .collect::<Result<_, _>>()?;
    let mut days = BTreeSet::new();
    for (i, s) in states.iter().enumerate() {
        if !s.active || s.owner.as_deref() != Some(customer) {
            continue;
        }
        let from = s.at;
        let until = states.get(i + 1).map_or(i64::MAX, |n| n.at);
        if until <= from {
            // Replaced at the same instant: never in service.
            continue;
        }
        for (d, w) in bounds.windows(2).enumerate() {
            if from < w[1] && until > w[0] {
                days.insert(d as u8 + 1);
            }
        }
    }
    Ok(days)
}

/// Every customer the device was active for in `month`, with its days; `tz_of` gives each
/// customer's time zone.
pub fn customers_days(
    states: &[State],
    month: Month,
    tz_of: impl Fn(&str) -> TimeZone,
) -> Result<BTreeMap<String, BTreeSet<u8>>, String> {
    let owners: BTreeSet<&str> = states
        .iter()
        .filter(|s| s.active)
        .filter_map(|s| s.owner.as_deref())
        .collect();
    let mut out = BTreeMap::new();
    for owner in owners {
        let days = active_days(states, owner, month, &tz_of(owner))?;
        if !days.is_empty() {
            out.insert(owner.to_owned(), days);
        }
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn at(s: &str) -> i64 {
        s.parse::<jiff::Timestamp>().unwrap().as_microsecond()
    }

    fn state(when: &str, active: bool, owner: &str) -> State {
        State {
            at: at(when),
            active,
            owner: (!owner.is_empty()).then(|| owner.to_owned()),
        }
    }

    fn tz(name: &str) -> TimeZone {
        TimeZone::get(name).unwrap()
    }

    fn month(s: &str) -> Month {
        Month::parse(s).unwrap()
    }

    fn days(v: &[u8]) -> BTreeSet<u8> {
        v.iter().copied().collect()
    }

    #[test]
    fn device_versions_and_organizations_read_as_billing_needs() {
        let d = serde_json::json!({"resourceType": "Device", "status": "active",
                                   "owner": {"reference": "Organization/c1"}});
        assert_eq!(
            State::of_device(Some(&d), 5),
            State {
                at: 5,
                active: true,
                owner: Some("c1".into())
            }
        );
        let mut off = d.clone();
        off["status"] = serde_json::json!("inactive");
        assert!(!State::of_device(Some(&off), 6).active);
        assert_eq!(
            State::of_device(None, 7),
            State {
                at: 7,
                active: false,
                owner: None
            }
        );
        let mut elsewhere = d.clone();
        elsewhere["owner"] =
            serde_json::json!({"reference": "https://other.example/Organization/c1"});
        assert_eq!(State::of_device(Some(&elsewhere), 8).owner, None);

        let org = |tz: &str| {
            serde_json::json!({"resourceType": "Organization",
            "extension": [{"url": TIMEZONE, "valueCode": tz}]})
        };
        assert_eq!(
            time_zone(&org("America/Chicago")).unwrap().iana_name(),
            Some("America/Chicago")
        );
        assert_eq!(time_zone(&serde_json::json!({})).unwrap(), TimeZone::UTC);
        let err = time_zone(&org("Mars/Olympus")).unwrap_err();
        assert!(err.contains("Mars/Olympus"), "{err}");
    }

    #[test]
    fn months_know_their_length_leap_years_included() {
        assert_eq!(month("2026-01").days(), 31);
        assert_eq!(month("2026-02").days(), 28);
        assert_eq!(month("2028-02").days(), 29);
        assert_eq!(month("2100-02").days(), 28);
        assert_eq!(month("2000-02").days(), 29);
        assert_eq!(month("2026-04").days(), 30);
        assert_eq!(month("2026-12").next(), month("2027-01"));
        assert_eq!(month("2026-10").to_string(), "2026-10");
        for bad in [
            "2026-13",
            "2026-00",
            "2026-1",
            "26-10",
            "2026/10",
            "",
            "2026-10-01",
        ] {
            assert!(Month::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_device_active_all_month_counts_every_day() {
        let s = [state("2026-09-15T00:00:00Z", true, "c1")];
        let got = active_days(&s, "c1", month("2026-10"), &TimeZone::UTC).unwrap();
        assert_eq!(got.len(), 31);
        let feb = active_days(&s, "c1", month("2028-02"), &TimeZone::UTC).unwrap();
        assert_eq!(feb.len(), 29, "leap February");
        assert!(
            active_days(&s, "c2", month("2026-10"), &TimeZone::UTC)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn days_are_the_customers_calendar_days() {
        // Activated 03:30 UTC on 1 November: still 31 October in New York (EDT, UTC-4).
        let s = [state("2026-11-01T03:30:00Z", true, "c1")];
        let ny = tz("America/New_York");
        assert_eq!(
            active_days(&s, "c1", month("2026-10"), &ny).unwrap(),
            days(&[31])
        );
        assert!(
            active_days(&s, "c1", month("2026-10"), &TimeZone::UTC)
                .unwrap()
                .is_empty()
        );
        // Deactivated at 23:30 local on 30 November in Auckland (NZDT, UTC+13): the
        // 30th counts, 1 December local does not.
        let s = [
            state("2026-11-01T00:00:00Z", true, "c1"),
            state("2026-11-30T10:30:00Z", false, "c1"),
        ];
        let akl = tz("Pacific/Auckland");
        let nov = active_days(&s, "c1", month("2026-11"), &akl).unwrap();
        assert_eq!(nov.first(), Some(&1));
        assert_eq!(nov.last(), Some(&30));
        assert!(
            active_days(&s, "c1", month("2026-12"), &akl)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn daylight_saving_days_are_whole_days() {
        // New York falls back on 1 November 2026 (a 25-hour day) and springs forward on
        // 8 March 2026 (23 hours). Active from 00:30 local to 23:30 local of each counts that
        // day only.
        let ny = tz("America/New_York");
        let s = [
            state("2026-11-01T04:30:00Z", true, "c1"),  // 00:30 EDT
            state("2026-11-02T04:30:00Z", false, "c1"), // 23:30 EST on the 1st
        ];
        assert_eq!(
            active_days(&s, "c1", month("2026-11"), &ny).unwrap(),
            days(&[1])
        );
        let s = [
            state("2026-03-08T05:30:00Z", true, "c1"),  // 00:30 EST
            state("2026-03-09T03:30:00Z", false, "c1"), // 23:30 EDT on the 8th
        ];
        assert_eq!(
            active_days(&s, "c1", month("2026-03"), &ny).unwrap(),
            days(&[8])
        );
    }

    #[test]
    fn a_move_between_customers_counts_the_day_for_both() {
        let s = [
            state("2026-10-01T00:00:00Z", true, "c1"),
            state("2026-10-15T12:00:00Z", true, "c2"),
        ];
        let all = customers_days(&s, month("2026-10"), |_| TimeZone::UTC).unwrap();
        assert_eq!(all["c1"], (1..=15).collect());
        assert_eq!(all["c2"], (15..=31).collect());
    }

    #[test]
    fn deactivation_and_reactivation_leave_a_gap() {
        let s = [
            state("2026-10-01T00:00:00Z", true, "c1"),
            state("2026-10-05T00:00:00Z", false, "c1"),
            state("2026-10-20T08:00:00Z", true, "c1"),
            state("2026-10-22T00:00:00Z", false, "c1"),
        ];
        assert_eq!(
            active_days(&s, "c1", month("2026-10"), &TimeZone::UTC).unwrap(),
            days(&[1, 2, 3, 4, 20, 21])
        );
        // Inactive until the very start of a day does not count that day.
        assert!(
            !active_days(&s, "c1", month("2026-10"), &TimeZone::UTC)
                .unwrap()
                .contains(&5)
        );
    }

    #[test]
    fn unowned_inactive_and_instant_versions_count_nothing() {
        let s = [
            state("2026-10-01T00:00:00Z", true, ""),
            state("2026-10-02T00:00:00Z", false, "c1"),
            state("2026-10-03T00:00:00Z", true, "c1"),
            state("2026-10-03T00:00:00Z", false, "c1"),
        ];
        let all = customers_days(&s, month("2026-10"), |_| TimeZone::UTC).unwrap();
        assert!(all.is_empty(), "{all:?}");
    }

    #[test]
    fn versions_outside_the_month_count_only_inside_it() {
        let s = [
            state("2026-09-10T00:00:00Z", true, "c1"),
            state("2026-10-03T00:00:00Z", false, "c1"),
            state("2026-11-10T00:00:00Z", true, "c1"),
        ];
        assert_eq!(
            active_days(&s, "c1", month("2026-10"), &TimeZone::UTC).unwrap(),
            days(&[1, 2])
        );
    }
}
