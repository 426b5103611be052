//! What a reading must satisfy to be stored (issue 5, item 8) and how it is interpreted
//! (item 3): pure rules over decoded measurements, in UCUM units.
//!
//! - Plausibility: values outside what a living patient can show (a systolic pressure of
//!   900 mmHg) are a device or transmission fault; the reading is refused with the reason, and
//!   the other readings of its batch are stored.
//! - Interpretation: `H`, `L`, `HH`, `LL` (critical high and low) of
//!   http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation, from the patient's
//!   thresholds or, without them, the defaults below (common remote-monitoring alert limits;
//!   clinics set their own per patient).

use serde::{Deserialize, Serialize};

/// Limits of one measured quantity, in its UCUM unit. A value below `critical_low` is `LL`,
/// below `low` is `L`, above `high` is `H`, at or above `critical_high` is `HH`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    pub critical_low: Option<f64>,
    pub low: Option<f64>,
    pub high: Option<f64>,
    pub critical_high: Option<f64>,
}

const fn limits(ll: Option<f64>, l: Option<f64>, h: Option<f64>, hh: Option<f64>) -> Limits {
    Limits {
        critical_low: ll,
        low: l,
        high: h,
        critical_high: hh,
    }
}

/// A patient's thresholds by quantity: the LOINC code of the value (e.g. `8480-6` systolic;
/// `glucose` for blood glucose), or `code|unit` for limits that hold in one unit only.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Thresholds(pub std::collections::BTreeMap<String, Limits>);

/// The default limits: (LOINC or MDC code, UCUM unit, limits).
#[rustfmt::skip]
const DEFAULTS: &[(&str, &str, Limits)] = &[
    ("8480-6", "mm[Hg]", limits(Some(70.0), Some(90.0), Some(140.0), Some(180.0))),  // systolic
    ("8462-4", "mm[Hg]", limits(Some(40.0), Some(60.0), Some(90.0), Some(120.0))),   // diastolic
    ("8867-4", "/min", limits(Some(40.0), Some(50.0), Some(100.0), Some(130.0))),    // pulse, heart rate
    ("2708-6", "%", limits(Some(88.0), Some(92.0), None, None)),                     // SpO2
    ("8310-5", "Cel", limits(Some(35.0), Some(36.0), Some(38.0), Some(39.5))),       // body temperature
    ("8310-5", "[degF]", limits(Some(95.0), Some(96.8), Some(100.4), Some(103.1))),
    ("glucose", "mg/dL", limits(Some(54.0), Some(70.0), Some(180.0), Some(300.0))),  // blood glucose
    ("glucose", "mmol/L", limits(Some(3.0), Some(3.9), Some(10.0), Some(16.7))),
];

/// What a living patient can show, in UCUM units: outside is a fault, not a reading.
#[rustfmt::skip]
const PLAUSIBLE: &[(&str, &str, f64, f64)] = &[
    ("8480-6", "mm[Hg]", 40.0, 300.0),
    ("8480-6", "kPa", 5.3, 40.0),
    ("8462-4", "mm[Hg]", 20.0, 200.0),
    ("8462-4", "kPa", 2.7, 26.7),
    ("mean", "mm[Hg]", 25.0, 250.0),
    ("mean", "kPa", 3.3, 33.3),
    ("8867-4", "/min", 20.0, 300.0),
    ("29463-7", "kg", 0.5, 500.0),
    ("29463-7", "[lb_av]", 1.0, 1100.0),
    ("8302-2", "cm", 30.0, 272.0),
    ("8302-2", "[in_i]", 12.0, 107.0),
    ("39156-5", "kg/m2", 5.0, 150.0),
    ("41982-0", "%", 1.0, 80.0),
    ("8310-5", "Cel", 25.0, 45.0),
    ("8310-5", "[degF]", 77.0, 113.0),
    ("2708-6", "%", 50.0, 100.0),
    ("glucose", "mg/dL", 10.0, 1000.0),
    ("glucose", "mmol/L", 0.5, 55.0),
];

/// Why `value` (of quantity `key` in `unit`) cannot be a real reading, if it cannot.
pub fn implausible(key: &str, unit: &str, value: f64, label: &str) -> Option<String> {
    let (_, _, lo, hi) = PLAUSIBLE
        .iter()
        .find(|(k, u, _, _)| *k == key && *u == unit)?;
    (value < *lo || value > *hi)
        .then(|| format!("{label} {value} {unit} is outside the plausible {lo}–{hi} {unit}"))
}

/// The Patient extension holding the patient's own alert thresholds, one per quantity:
/// `code` (the LOINC code of the value, or `glucose`), optional `unit` (UCUM), and any of
/// `low`, `high`, `criticalLow`, `criticalHigh` (`valueDecimal`).
pub const THRESHOLDS_URL: &str =
    "https://vitalbridge.dev/fhir/StructureDefinition/alert-thresholds";

/// The thresholds a Patient resource sets, if any.
pub fn thresholds_of(patient: &serde_json::Value) -> Option<Thresholds> {
    let mut out = Thresholds::default();
    for ext in patient["extension"].as_array().into_iter().flatten() {
        if ext["url"] != THRESHOLDS_URL {
            continue;
        }
        let part = |name: &str| {
            ext["extension"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|e| e["url"] == name)
        };
        let Some(code) = part("code").and_then(|e| e["valueCode"].as_str()) else {
            continue;
        };
        let number = |name: &str| part(name).and_then(|e| e["valueDecimal"].as_f64());
        let key = match part("unit").and_then(|e| e["valueCode"].as_str()) {
            Some(unit) => format!("{code}|{unit}"),
            None => code.to_owned(),
        };
        out.0.insert(
            key,
            limits(
                number("criticalLow"),
                number("low"),
                number("high"),
                number("criticalHigh"),
            ),
        );
    }
    (!out.0.is_empty()).then_some(out)
}

/// The interpretation code of `value`, by the patient's limits for `key` or the defaults.
pub fn interpret(
    key: &str,
    unit: &str,
    value: f64,
    thresholds: Option<&Thresholds>,
) -> Option<&'static str> {
    let own = thresholds
        .and_then(|t| t.0.get(&format!("{key}|{unit}")).or_else(|| t.0.get(key)))
        .copied();
    let l = own.or_else(|| {
        DEFAULTS
            .iter()
            .find(|(k, u, _)| *k == key && *u == unit)
            .map(|(_, _, l)| *l)
    })?;
    if l.critical_low.is_some_and(|x| value < x) {
        Some("LL")
    } else if l.critical_high.is_some_and(|x| value >= x) {
        Some("HH")
    } else if l.low.is_some_and(|x| value < x) {
        Some("L")
    } else if l.high.is_some_and(|x| value > x) {
        Some("H")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_grade_blood_pressure_and_oxygen() {
        assert_eq!(interpret("8480-6", "mm[Hg]", 120.0, None), None);
        assert_eq!(interpret("8480-6", "mm[Hg]", 150.0, None), Some("H"));
        assert_eq!(interpret("8480-6", "mm[Hg]", 185.0, None), Some("HH"));
        assert_eq!(interpret("8480-6", "mm[Hg]", 85.0, None), Some("L"));
        assert_eq!(interpret("8480-6", "mm[Hg]", 65.0, None), Some("LL"));
        assert_eq!(interpret("2708-6", "%", 90.0, None), Some("L"));
        assert_eq!(interpret("2708-6", "%", 100.0, None), None);
        assert_eq!(
            interpret("29463-7", "kg", 300.0, None),
            None,
            "no weight limits"
        );
        assert_eq!(
            interpret("8480-6", "kPa", 30.0, None),
            None,
            "no kPa defaults"
        );
    }

    #[test]
    fn thresholds_come_from_the_patient_extension() {
        let patient = serde_json::json!({"resourceType": "Patient", "extension": [
            {"url": THRESHOLDS_URL, "extension": [
                {"url": "code", "valueCode": "8480-6"},
                {"url": "high", "valueDecimal": 125},
                {"url": "criticalHigh", "valueDecimal": 150}]},
            {"url": THRESHOLDS_URL, "extension": [
                {"url": "code", "valueCode": "8310-5"}, {"url": "unit", "valueCode": "Cel"},
                {"url": "high", "valueDecimal": 37.5}]},
            {"url": "http://example.org/other", "valueString": "x"}]});
        let t = thresholds_of(&patient).expect("thresholds");
        assert_eq!(interpret("8480-6", "mm[Hg]", 130.0, Some(&t)), Some("H"));
        assert_eq!(interpret("8480-6", "mm[Hg]", 150.0, Some(&t)), Some("HH"));
        // Its own limits replace the defaults: no low limit set, none applied.
        assert_eq!(interpret("8480-6", "mm[Hg]", 60.0, Some(&t)), None);
        assert_eq!(interpret("8310-5", "Cel", 37.8, Some(&t)), Some("H"));
        // A limit in Cel says nothing of a reading in [degF]: the defaults apply.
        assert_eq!(interpret("8310-5", "[degF]", 99.0, Some(&t)), None);
        assert_eq!(
            thresholds_of(&serde_json::json!({"resourceType": "Patient"})),
            None
        );
    }

    #[test]
    fn a_patients_own_thresholds_win() {
        let mut t = Thresholds::default();
        t.0.insert(
            "8480-6".into(),
            limits(None, None, Some(130.0), Some(160.0)),
        );
        assert_eq!(interpret("8480-6", "mm[Hg]", 135.0, Some(&t)), Some("H"));
        assert_eq!(interpret("8480-6", "mm[Hg]", 165.0, Some(&t)), Some("HH"));
        assert_eq!(interpret("8480-6", "mm[Hg]", 60.0, Some(&t)), None);
    }

    #[test]
    fn impossible_values_are_named() {
        let why = implausible("8480-6", "mm[Hg]", 900.0, "systolic").expect("refused");
        assert_eq!(
            why,
            "systolic 900 mm[Hg] is outside the plausible 40–300 mm[Hg]"
        );
        assert!(implausible("8480-6", "mm[Hg]", 138.0, "systolic").is_none());
        assert!(implausible("2708-6", "%", 101.0, "SpO2").is_some());
    }
}
