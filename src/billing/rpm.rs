//! Remote patient monitoring codes for a patient's period (issue 7, item 5), from the days with
//! readings and the management minutes staff recorded. Pure, no I/O (DESIGN.md rule 5).
//!
//! The rules are data (`rpm-rules-2026.json`, read by [`Rules::parse`]), not code: a new year's
//! codes or thresholds are a new file. What the data can say:
//! - `setup`: billed once per episode, in the first period with at least `min_days` days of
//!   readings;
//! - `supply`: at most one per period, the first whose day range holds the period's days with
//!   readings (so 99454 and 99445 never go together);
//! - `management`: each rule whose minute range holds the minutes; with `each_minutes`, one unit
//!   per started block of that many minutes from `from_minutes` on, up to `max_units`.

use serde::Deserialize;

/// The rules of one schedule.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Rules {
    pub name: String,
    /// The code system of the codes (CPT).
    pub system: String,
    /// Days in one monitoring period.
    pub period_days: u32,
    pub setup: SetupRule,
    pub supply: Vec<SupplyRule>,
    pub management: Vec<TimeRule>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SetupRule {
    pub code: String,
    pub display: String,
    pub min_days: u32,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SupplyRule {
    pub code: String,
    pub display: String,
    pub min_days: u32,
    #[serde(default)]
    pub max_days: Option<u32>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TimeRule {
    pub code: String,
    pub display: String,
    pub from_minutes: u32,
    #[serde(default)]
    pub until_minutes: Option<u32>,
    #[serde(default)]
    pub each_minutes: Option<u32>,
    #[serde(default)]
    pub max_units: Option<u32>,
}

/// The schedule shipped with this version.
pub const RULES_2026: &str = include_str!("rpm-rules-2026.json");

impl Rules {
    pub fn parse(json: &str) -> Result<Rules, String> {
        let rules: Rules = serde_json::from_str(json).map_err(|e| e.to_string())?;
        if rules.period_days == 0 {
            return Err("period_days must be at least 1".into());
        }
        if rules.management.iter().any(|r| r.each_minutes == Some(0)) {
            return Err("each_minutes must be at least 1".into());
        }
        Ok(rules)
    }
}

/// What happened in one patient's period.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Period {
    /// Distinct days with at least one reading.
    pub days_with_readings: u32,
    /// The episode's set-up was billed in an earlier period.
    pub setup_billed: bool,
    /// Management minutes staff recorded.
    pub minutes: u32,
}

/// A code to claim, with its units.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Code {
    pub code: String,
    pub display: String,
    pub units: u32,
}

/// The codes `p` earns under `rules`, set-up first, then supply, then management.
pub fn codes(rules: &Rules, p: Period) -> Vec<Code> {
    let mut out = Vec::new();
    let days = p.days_with_readings.min(rules.period_days);
    if !p.setup_billed && days >= rules.setup.min_days {
        out.push(Code {
            code: rules.setup.code.clone(),
            display: rules.setup.display.clone(),
            units: 1,
        });
    }
    if let Some(s) = rules
        .supply
        .iter()
        .find(|s| days >= s.min_days && s.max_days.is_none_or(|m| days <= m))
    {
        out.push(Code {
            code: s.code.clone(),
            display: s.display.clone(),
            units: 1,
        });
    }
    for t in &rules.management {
        if p.minutes < t.from_minutes || t.until_minutes.is_some_and(|u| p.minutes > u) {
            continue;
        }
        let units = match t.each_minutes {
            None => 1,
            Some(each) => (p.minutes - t.from_minutes) / each + 1,
        };
        let units = t.max_units.map_or(units, |m| units.min(m));
        if units > 0 {
            out.push(Code {
                code: t.code.clone(),
                display: t.display.clone(),
                units,
            });
        }
    }
    out
}

/// Who and what a Claim is about.
#[derive(Debug, Clone)]
pub struct ClaimFor<'a> {
    pub patient: &'a str,
    /// The clinic billing the payer (`Organization` id).
    pub provider: &'a str,
    /// The patient's Coverage (`Coverage` id).
    pub coverage: &'a str,
    /// The period, first and last day (`YYYY-MM-DD`).
    pub start: &'a str,
    pub end: &'a str,
    /// When the claim was made (RFC 3339).
    pub created: &'a str,
}

/// The professional Claim of `codes` for `c` (https://hl7.org/fhir/R4/claim.html): every
/// element R4 requires (status, type, use, patient, created, provider, priority, insurance),
/// one item per code with its units and the period as `servicedPeriod`.
pub fn claim(rules: &Rules, c: &ClaimFor<'_>, codes: &[Code]) -> serde_json::Value {
    use serde_json::json;
    let items: Vec<serde_json::Value> = codes
        .iter()
        .enumerate()
        .map(|(i, code)| {
            json!({
                "sequence": i + 1,
                "productOrService": {"coding": [{
                    "system": rules.system, "code": code.code, "display": code.display
                }]},
                "servicedPeriod": {"start": c.start, "end": c.end},
                "quantity": {"value": code.units}
            })
        })
        .collect();
    json!({
        "resourceType": "Claim",
        "status": "active",
        "type": {"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/claim-type", "code": "professional"
        }]},
        "use": "claim",
        "patient": {"reference": format!("Patient/{}", c.patient)},
        "billablePeriod": {"start": c.start, "end": c.end},
        "created": c.created,
        "provider": {"reference": format!("Organization/{}", c.provider)},
        "priority": {"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/processpriority", "code": "normal"
        }]},
        "insurance": [{
            "sequence": 1,
            "focal": true,
            "coverage": {"reference": format!("Coverage/{}", c.coverage)}
        }],
        "item": items
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A Claim has every element R4 requires and passes the strict checks every write passes.
    #[test]
    fn a_claim_is_complete_r4() {
        let rules = Rules::parse(RULES_2026).unwrap();
        let earned = codes(
            &rules,
            Period {
                days_with_readings: 18,
                setup_billed: false,
                minutes: 45,
            },
        );
        let mut c = claim(
            &rules,
            &ClaimFor {
                patient: "p1",
                provider: "c1",
                coverage: "cov1",
                start: "2026-10-01",
                end: "2026-10-30",
                created: "2026-10-31T09:00:00Z",
            },
            &earned,
        );
        assert_eq!(c["item"].as_array().unwrap().len(), 4);
        assert_eq!(
            c["item"][3]["productOrService"]["coding"][0]["code"],
            "99458"
        );
        assert_eq!(c["item"][1]["servicedPeriod"]["end"], "2026-10-30");
        assert_eq!(c["insurance"][0]["coverage"]["reference"], "Coverage/cov1");
        assert_eq!(c["type"]["coding"][0]["code"], "professional");
        c["id"] = serde_json::json!("claim1");
        let ty = crate::fhir::types::ResourceType::parse("Claim").unwrap();
        let checked = crate::fhir::parse::check_structure(&c, ty);
        assert!(checked.is_ok(), "{:?}", checked.err());
        // The structural checks do not count array minimums (fhirbolt reads a missing array as
        // empty), so R4's required elements (min 1) are asserted here.
        for required in [
            "status",
            "type",
            "use",
            "patient",
            "created",
            "provider",
            "priority",
            "insurance",
        ] {
            assert!(
                !c[required].is_null() && c[required] != serde_json::json!([]),
                "{required}"
            );
        }
    }

    fn got(days: u32, setup_billed: bool, minutes: u32) -> Vec<(String, u32)> {
        let rules = Rules::parse(RULES_2026).unwrap();
        codes(
            &rules,
            Period {
                days_with_readings: days,
                setup_billed,
                minutes,
            },
        )
        .into_iter()
        .map(|c| (c.code, c.units))
        .collect()
    }

    fn want(v: &[(&str, u32)]) -> Vec<(String, u32)> {
        v.iter().map(|(c, u)| ((*c).to_owned(), *u)).collect()
    }

    #[test]
    fn the_shipped_schedule_parses() {
        let r = Rules::parse(RULES_2026).unwrap();
        assert_eq!(r.system, "http://www.ama-assn.org/go/cpt");
        assert_eq!(r.period_days, 30);
    }

    #[test]
    fn supply_days_choose_one_code() {
        assert_eq!(got(0, true, 0), want(&[]));
        assert_eq!(got(1, true, 0), want(&[]));
        assert_eq!(got(2, true, 0), want(&[("99445", 1)]));
        assert_eq!(got(15, true, 0), want(&[("99445", 1)]));
        assert_eq!(got(16, true, 0), want(&[("99454", 1)]));
        assert_eq!(got(30, true, 0), want(&[("99454", 1)]));
        assert_eq!(
            got(31, true, 0),
            want(&[("99454", 1)]),
            "capped at the period"
        );
    }

    #[test]
    fn setup_is_billed_once_per_episode() {
        assert_eq!(got(16, false, 0), want(&[("99453", 1), ("99454", 1)]));
        assert_eq!(got(2, false, 0), want(&[("99453", 1), ("99445", 1)]));
        assert_eq!(got(1, false, 0), want(&[]), "too few days for set-up");
        assert_eq!(got(20, true, 0), want(&[("99454", 1)]));
    }

    #[test]
    fn management_minutes_earn_their_codes() {
        assert_eq!(got(0, true, 9), want(&[]));
        assert_eq!(got(0, true, 10), want(&[("99470", 1)]));
        assert_eq!(got(0, true, 19), want(&[("99470", 1)]));
        assert_eq!(got(0, true, 20), want(&[("99457", 1)]));
        assert_eq!(got(0, true, 39), want(&[("99457", 1)]));
        assert_eq!(got(0, true, 40), want(&[("99457", 1), ("99458", 1)]));
        assert_eq!(got(0, true, 59), want(&[("99457", 1), ("99458", 1)]));
        assert_eq!(got(0, true, 60), want(&[("99457", 1), ("99458", 2)]));
        assert_eq!(
            got(20, false, 45),
            want(&[("99453", 1), ("99454", 1), ("99457", 1), ("99458", 1)])
        );
    }

    #[test]
    fn a_schedule_is_data() {
        // A next year's schedule: other thresholds, a cap on additional units.
        let next = r#"{"name": "x", "system": "http://www.ama-assn.org/go/cpt", "period_days": 30,
            "setup": {"code": "S", "display": "s", "min_days": 16},
            "supply": [{"code": "A", "display": "a", "min_days": 10}],
            "management": [{"code": "M", "display": "m", "from_minutes": 30, "each_minutes": 30,
                            "max_units": 2}]}"#;
        let rules = Rules::parse(next).unwrap();
        let c = |days, minutes| -> Vec<(String, u32)> {
            codes(
                &rules,
                Period {
                    days_with_readings: days,
                    setup_billed: false,
                    minutes,
                },
            )
            .into_iter()
            .map(|c| (c.code, c.units))
            .collect()
        };
        assert_eq!(c(12, 29), want(&[("A", 1)]));
        assert_eq!(c(16, 95), want(&[("S", 1), ("A", 1), ("M", 2)]));
        for bad in [
            next.replace("\"period_days\": 30", "\"period_days\": 0"),
            next.replace("\"each_minutes\": 30", "\"each_minutes\": 0"),
            next.replace("\"max_units\": 2", "\"max_units\": 2, \"fee\": 3"),
            "{}".to_owned(),
        ] {
            assert!(Rules::parse(&bad).is_err(), "{bad}");
        }
    }
}
