//! Decoded measurements → FHIR R4 Observations shaped by the HL7 Personal Health Device IG 2.0.0
//! (http://hl7.org/fhir/uv/phd/) and the R4 vital-signs profiles
//! (http://hl7.org/fhir/R4/observation-vitalsigns.html). Pure: the caller gives the patient,
//! the device and the times; nothing here reads the database or the clock.
//!
//! - `code`: the MDC code (urn:iso:std:iso:11073:10101) first, then LOINC for vital signs;
//!   categories `vital-signs` (when one) and PHD's `phd`.
//! - Values in UCUM only, with the precision the device sent; IEEE special values become
//!   `dataAbsentReason` (PHD IG "FLOATs and SFLOATs").
//! - Blood pressure is one compound Observation (systolic, diastolic, mean components); its
//!   pulse rate is an Observation of its own; its measurement-status flags are a third, a
//!   PhdBitsEnumerationObservation (MDC 8410608) `derivedFrom` the pressure.
//! - `effectiveDateTime`: the device's time stamp corrected by its known clock offset, or the
//!   hub's receive time when the device sends none (or an incomplete one).
//! - `identifier`: the PHD IG 2.0.0 de-duplication identifier
//!   `device-patient-type-timestamp` (seconds since 2000-01-01 of the device's own time stamp),
//!   for readings that carry a time stamp; conditional creates on it make replays harmless.

use serde_json::{Value, json};
use time::OffsetDateTime;

use super::gatt::{DateTime, Float, Measurement, Quantity};
use super::rules::{Thresholds, implausible, interpret};

const MDC: &str = "urn:iso:std:iso:11073:10101";
const LOINC: &str = "http://loinc.org";
const UCUM: &str = "http://unitsofmeasure.org";
const PHD: &str = "http://hl7.org/fhir/uv/phd/StructureDefinition/";
const VITAL_SIGNS: &str = "http://hl7.org/fhir/StructureDefinition/";

/// Who and what a reading belongs to, and when it arrived.
#[derive(Debug, Clone)]
pub struct Context {
    /// The Patient (resource id) the device was assigned to at measurement time.
    pub patient: Option<String>,
    /// The Device (resource id) that measured.
    pub device: Option<String>,
    /// The hub or gateway Device (resource id) that forwarded the reading.
    pub gateway: Option<String>,
    /// The device's identity for the de-duplication identifier: its EUI-64 system id (16 hex
    /// digits) or Bluetooth address (12), upper case, no separators.
    pub device_key: String,
    /// When the hub received the reading.
    pub received: OffsetDateTime,
    /// How far the device's clock is ahead of true time, in seconds (negative: behind).
    pub clock_offset_seconds: i64,
    /// The patient's own alert thresholds; the defaults of [`super::rules`] without them.
    pub thresholds: Option<Thresholds>,
}

/// How far ahead of its arrival a reading's corrected time stamp may be (clock drift beyond
/// the known offset); later is a fault.
const FUTURE_SECONDS: i64 = 600;

/// One Observation of a reading, with the local name other Observations of the same reading
/// use to point at it (`urn:uuid:` in a transaction Bundle).
#[derive(Debug, Clone, PartialEq)]
pub struct Produced {
    pub full_url: String,
    pub resource: Value,
}

/// An Observation kind: its MDC code and reference id, and its LOINC code when a vital sign.
struct Kind {
    mdc: u32,
    mdc_name: &'static str,
    loinc: Option<(&'static str, &'static str)>,
    text: &'static str,
    /// The R4 vital-signs profile it claims, if any.
    profile: Option<&'static str>,
}

const fn kind(
    mdc: u32,
    mdc_name: &'static str,
    loinc: Option<(&'static str, &'static str)>,
    text: &'static str,
    profile: Option<&'static str>,
) -> Kind {
    Kind {
        mdc,
        mdc_name,
        loinc,
        text,
        profile,
    }
}

/// The kinds of Observation produced: MDC code and reference id, LOINC when a vital sign, text,
/// R4 vital-signs profile. Sources: PHD IG 2.0.0 examples and the IEEE 11073-10101 tables; the
/// capillary plasma glucose has no LOINC equivalent and is sent with its MDC code only.
#[rustfmt::skip]
mod kinds {
    use super::{Kind, kind};
    pub const BLOOD_PRESSURE: Kind = kind(150020, "MDC_PRESS_BLD_NONINV", Some(("85354-9", "Blood pressure panel with all children optional")), "Blood pressure", Some("bp"));
    pub const PULSE_CUFF: Kind = kind(149546, "MDC_PULS_RATE_NON_INV", Some(("8867-4", "Heart rate")), "Pulse rate", Some("heartrate"));
    pub const PULSE_OXIMETER: Kind = kind(149530, "MDC_PULS_OXIM_PULS_RATE", Some(("8867-4", "Heart rate")), "Pulse rate", Some("heartrate"));
    pub const HEART_RATE: Kind = kind(147842, "MDC_ECG_HEART_RATE", Some(("8867-4", "Heart rate")), "Heart rate", Some("heartrate"));
    pub const BODY_WEIGHT: Kind = kind(188736, "MDC_MASS_BODY_ACTUAL", Some(("29463-7", "Body weight")), "Body weight", Some("bodyweight"));
    pub const BODY_HEIGHT: Kind = kind(188740, "MDC_LEN_BODY_ACTUAL", Some(("8302-2", "Body height")), "Body height", Some("bodyheight"));
    pub const BMI: Kind = kind(188752, "MDC_RATIO_MASS_BODY_LEN_SQ", Some(("39156-5", "Body mass index (BMI) [Ratio]")), "Body mass index", Some("bmi"));
    pub const BODY_FAT: Kind = kind(188748, "MDC_BODY_FAT", Some(("41982-0", "Percentage of body fat Measured")), "Body fat", None);
    pub const BODY_TEMPERATURE: Kind = kind(150364, "MDC_TEMP_BODY", Some(("8310-5", "Body temperature")), "Body temperature", Some("bodytemp"));
    pub const SPO2: Kind = kind(150456, "MDC_PULS_OXIM_SAT_O2", Some(("2708-6", "Oxygen saturation in Arterial blood")), "Oxygen saturation", Some("oxygensat"));
    pub const GLUCOSE_WHOLE_BLOOD: Kind = kind(160184, "MDC_CONC_GLU_CAPILLARY_WHOLEBLOOD", Some(("41653-7", "Glucose [Mass/volume] in Capillary blood by Glucometer")), "Blood glucose", None);
    pub const GLUCOSE_PLASMA: Kind = kind(160188, "MDC_CONC_GLU_CAPILLARY_PLASMA", None, "Blood glucose (capillary plasma)", None);
    pub const BP_STATUS: Kind = kind(8410608, "MDC_BLOOD_PRESSURE_MEASUREMENT_STATUS", None, "Blood pressure measurement status", None);
}
use kinds::*;

/// The UCUM code of a decoder unit.
fn ucum(unit: &str) -> &str {
    match unit {
        "mmHg" => "mm[Hg]",
        "bpm" => "/min",
        "lb" => "[lb_av]",
        "in" => "[in_i]",
        "degC" => "Cel",
        "degF" => "[degF]",
        other => other,
    }
}

/// The data-absent reason of an IEEE special value.
fn absent_reason(f: Float) -> &'static str {
    match f {
        Float::NaN => "not-a-number",
        Float::PositiveInfinity => "positive-infinity",
        Float::NegativeInfinity => "negative-infinity",
        _ => "error",
    }
}

fn number(d: super::gatt::Decimal) -> Value {
    serde_json::from_str::<serde_json::Number>(&d.to_string())
        .map(Value::Number)
        .unwrap_or(Value::Null)
}

/// What the rules ([`super::rules`]) need while values are written, and what they found.
struct Grading<'a> {
    thresholds: Option<&'a Thresholds>,
    problems: &'a mut Vec<String>,
}

/// `valueQuantity`, or `dataAbsentReason` for a special value, merged into `target`; a value a
/// patient cannot show is a problem, a value beyond the thresholds gets its `interpretation`.
/// `key` names the quantity for the rules (its LOINC code, `mean` or `glucose`).
fn put_value(target: &mut Value, q: &Quantity, key: &str, label: &str, g: Grading<'_>) {
    match q.value {
        Float::Value(d) => {
            let code = ucum(q.unit);
            target["valueQuantity"] =
                json!({"value": number(d), "unit": code, "system": UCUM, "code": code});
            let v = d.as_f64();
            if let Some(why) = implausible(key, code, v, label) {
                g.problems.push(why);
            } else if let Some(i) = interpret(key, code, v, g.thresholds) {
                target["interpretation"] = json!([{"coding": [{
                    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
                    "code": i
                }]}]);
            }
        }
        special => {
            target["dataAbsentReason"] = json!({"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/data-absent-reason",
                "code": absent_reason(special)
            }]});
        }
    }
}

fn code(kind: &Kind) -> Value {
    let mut codings =
        vec![json!({"system": MDC, "code": kind.mdc.to_string(), "display": kind.mdc_name})];
    if let Some((c, display)) = kind.loinc {
        codings.push(json!({"system": LOINC, "code": c, "display": display}));
    }
    json!({"coding": codings, "text": kind.text})
}

/// Seconds from 1970-01-01 to 2000-01-01, the epoch of [`since_2000`].
const SECONDS_1970_TO_2000: i64 = 946_684_800;

/// A reading's Observation id: the same for every replay of the reading, and in the order
/// readings are measured. A UUIDv8 (RFC 9562 §5.8) laid out like a UUIDv7: 48 bits of
/// milliseconds since 1970, then the rest of the name's UUIDv5 (SHA-1) hash. Time-ordered
/// keys land at the right edge of every B-tree keyed by resource id (the resource and history
/// primary keys, the search index's owner indexes), so a batch of readings dirties a few hot
/// pages instead of one random page per key (a 100-reading batch's statement dirtied 306
/// buffer pages instead of 1,414 with random UUIDv5 ids; each is a full-page image in the WAL
/// after a checkpoint).
fn stable_id(millis: i128, name: &str) -> uuid::Uuid {
    let mut bytes = *uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, name.as_bytes()).as_bytes();
    let millis = u64::try_from(millis.clamp(0, (1 << 48) - 1)).unwrap_or(0);
    bytes[..6].copy_from_slice(&millis.to_be_bytes()[2..]);
    uuid::Builder::from_bytes(bytes)
        .with_variant(uuid::Variant::RFC4122)
        .with_version(uuid::Version::Custom)
        .into_uuid()
}

/// Seconds from 2000-01-01T00:00:00 of a device time stamp (the PHD IG 2.0.0 time-stamp part
/// of the de-duplication identifier).
fn since_2000(t: &DateTime) -> Option<i64> {
    let epoch = time::macros::datetime!(2000-01-01 0:00);
    Some((t.primitive()? - epoch).whole_seconds())
}

struct Builder<'a> {
    ctx: &'a Context,
    /// The device's own time stamp (for the identifier) and the corrected effective time.
    stamp: Option<DateTime>,
    effective: String,
    out: Vec<Produced>,
    seq: usize,
    id_base: String,
    /// The instant the ids start with, in milliseconds since 1970 (see [`stable_id`]).
    id_millis: i128,
    /// Why the reading cannot be stored, if it cannot.
    problems: Vec<String>,
}

impl<'a> Builder<'a> {
    fn new(ctx: &'a Context, stamp: Option<DateTime>) -> Builder<'a> {
        let corrected = stamp
            .and_then(|s| s.primitive())
            .map(|p| p.assume_utc() - time::Duration::seconds(ctx.clock_offset_seconds));
        let mut problems = Vec::new();
        if let Some(t) = corrected
            && (t - ctx.received).whole_seconds() > FUTURE_SECONDS
        {
            problems.push(format!(
                "the time stamp {} is more than {FUTURE_SECONDS} s after the reading arrived",
                t.format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default()
            ));
        }
        let effective = corrected.unwrap_or(ctx.received);
        let effective = effective
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        // The reading's own name, stable across replays: the base of its entries' urn:uuid,
        // and the instant that leads them.
        let since = stamp.as_ref().and_then(since_2000);
        let id_base = format!(
            "{}-{}-{}",
            ctx.device_key,
            ctx.patient.as_deref().unwrap_or(""),
            since.map_or_else(
                // Without the device's stamp, the receive instant to the nanosecond: two
                // readings in one second (a continuous monitor's) stay two.
                || ctx.received.unix_timestamp_nanos().to_string(),
                |s| s.to_string()
            )
        );
        let id_millis = since.map_or_else(
            || ctx.received.unix_timestamp_nanos() / 1_000_000,
            |s| i128::from(s + SECONDS_1970_TO_2000) * 1000,
        );
        Builder {
            ctx,
            stamp,
            effective,
            out: Vec::new(),
            seq: 0,
            id_base,
            id_millis,
            problems,
        }
    }

    /// A new Observation of `kind`; returns its index.
    fn observation(&mut self, kind: &Kind, vital: bool) -> usize {
        let mut profiles = vec![format!(
            "{}{}",
            crate::fhir::profiles::BASE,
            own_profile(kind)
        )];
        if let Some(p) = kind.profile {
            profiles.push(format!("{VITAL_SIGNS}{p}"));
        }
        let mut categories = vec![];
        if vital {
            categories.push(json!({"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                "code": "vital-signs", "display": "Vital Signs"}]}));
        }
        categories.push(json!({"coding": [{
            "system": "http://hl7.org/fhir/uv/phd/CodeSystem/PhdObservationCategories",
            "code": "phd"}]}));
        let mut o = json!({
            "resourceType": "Observation",
            "meta": {"profile": profiles},
            "status": "final",
            "category": categories,
            "code": code(kind),
            "effectiveDateTime": self.effective,
        });
        if let Some(stamp) = self.stamp.as_ref().and_then(since_2000) {
            o["identifier"] = json!([{"value": format!(
                "{}-{}-{}-{stamp}",
                self.ctx.device_key,
                self.ctx.patient.as_deref().unwrap_or(""),
                kind.mdc
            )}]);
        }
        if let Some(p) = &self.ctx.patient {
            o["subject"] = json!({"reference": format!("Patient/{p}")});
        }
        if let Some(d) = &self.ctx.device {
            o["device"] = json!({"reference": format!("Device/{d}")});
        }
        if let Some(g) = &self.ctx.gateway {
            o["extension"] = json!([{
                "url": "http://hl7.org/fhir/StructureDefinition/observation-gatewayDevice",
                "valueReference": {"reference": format!("Device/{g}")}
            }]);
        }
        self.seq += 1;
        let full_url = format!(
            "urn:uuid:{}",
            stable_id(
                self.id_millis,
                &format!("{}-{}-{}", self.id_base, kind.mdc, self.seq)
            )
        );
        self.out.push(Produced {
            full_url,
            resource: o,
        });
        self.out.len() - 1
    }

    /// A PhdNumericObservation of `kind` valued `q`; returns its index.
    fn numeric(&mut self, kind: &Kind, q: &Quantity, vital: bool) -> usize {
        let i = self.observation(kind, vital);
        let o = &mut self.out[i].resource;
        let g = Grading {
            thresholds: self.ctx.thresholds.as_ref(),
            problems: &mut self.problems,
        };
        put_value(o, q, key_of(kind), kind.text, g);
        push_profile(o, &format!("{PHD}PhdNumericObservation"));
        i
    }

    /// Body height, if measured, in the units of the R4 bodyheight profile: m becomes cm.
    fn height(&mut self, h: Option<&Quantity>) {
        let Some(h) = h else { return };
        let h = match (h.unit, h.value) {
            ("m", Float::Value(d)) => Quantity::new(Float::Value(d.shifted(2)), "cm"),
            _ => *h,
        };
        self.numeric(&BODY_HEIGHT, &h, true);
    }
}

fn push_profile(o: &mut Value, url: &str) {
    if let Some(list) = o["meta"]["profile"].as_array_mut() {
        list.insert(0, Value::from(url));
    }
}

/// This server's profile of a kind (`fhir-profiles/`), which every Observation of it meets.
fn own_profile(kind: &Kind) -> &'static str {
    match kind.mdc {
        150020 => "vb-blood-pressure",
        149546 | 149530 | 147842 => "vb-heart-rate",
        188736 => "vb-body-weight",
        188740 => "vb-body-height",
        188752 => "vb-bmi",
        188748 => "vb-body-fat",
        150364 => "vb-body-temperature",
        150456 => "vb-oxygen-saturation",
        160184 | 160188 => "vb-blood-glucose",
        8410608 => "vb-bp-status",
        _ => "vb-device-observation",
    }
}

/// The name the rules know a kind's value by.
fn key_of(kind: &Kind) -> &'static str {
    match kind.mdc {
        160184 | 160188 => "glucose",
        _ => kind.loinc.map_or("", |(code, _)| code),
    }
}

fn component(
    code_kind: (u32, &str, Option<(&str, &str)>),
    q: &Quantity,
    label: &str,
    g: Grading<'_>,
) -> Value {
    let (mdc, name, loinc) = code_kind;
    let mut codings = vec![json!({"system": MDC, "code": mdc.to_string(), "display": name})];
    if let Some((c, d)) = loinc {
        codings.push(json!({"system": LOINC, "code": c, "display": d}));
    }
    let mut c = json!({"code": {"coding": codings}});
    put_value(&mut c, q, loinc.map_or("mean", |(code, _)| code), label, g);
    c
}

/// When a measurement was taken: its device time stamp corrected by the clock offset, else
/// when it was received (what `effectiveDateTime` says, and whose the device was then).
pub fn measured_at(
    m: &Measurement,
    received: OffsetDateTime,
    clock_offset_seconds: i64,
) -> OffsetDateTime {
    let stamp = match m {
        Measurement::BloodPressure(x) => x.timestamp,
        Measurement::Weight(x) => x.timestamp,
        Measurement::BodyComposition(x) => x.timestamp,
        Measurement::Temperature(x) => x.timestamp,
        Measurement::PlxSpotCheck(x) => x.timestamp,
        Measurement::Glucose(x) => Some(x.timestamp),
        _ => None,
    };
    stamp.and_then(|s| s.primitive()).map_or(received, |p| {
        p.assume_utc() - time::Duration::seconds(clock_offset_seconds)
    })
}

/// The Observations of one decoded measurement. Measurements that are not readings (battery,
/// time, RACP answers, glucose context) produce none: they update the Device or steer the
/// gateway. A reading a patient cannot have produced is refused with the reasons.
pub fn observations(m: &Measurement, ctx: &Context) -> Result<Vec<Produced>, Vec<String>> {
    let (out, problems) = build(m, ctx);
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

fn build(m: &Measurement, ctx: &Context) -> (Vec<Produced>, Vec<String>) {
    match m {
        Measurement::BloodPressure(bp) => {
            let mut b = Builder::new(ctx, bp.timestamp);
            let i = b.observation(&BLOOD_PRESSURE, true);
            {
                let o = &mut b.out[i].resource;
                push_profile(o, &format!("{PHD}PhdCompoundNumericObservation"));
                if bp.units != "mmHg" {
                    // The R4 bp profile fixes the components' unit to mm[Hg]; kPa readings are
                    // kept as sent and do not claim it.
                    if let Some(list) = o["meta"]["profile"].as_array_mut() {
                        list.retain(|p| p != &json!(format!("{VITAL_SIGNS}bp")));
                    }
                }
                let parts = [
                    (
                        (
                            150021,
                            "MDC_PRESS_BLD_NONINV_SYS",
                            Some(("8480-6", "Systolic blood pressure")),
                        ),
                        &bp.systolic,
                        "systolic",
                    ),
                    (
                        (
                            150022,
                            "MDC_PRESS_BLD_NONINV_DIA",
                            Some(("8462-4", "Diastolic blood pressure")),
                        ),
                        &bp.diastolic,
                        "diastolic",
                    ),
                ];
                let mean = bp.mean_arterial_pressure.as_ref().map(|q| {
                    (
                        (150023, "MDC_PRESS_BLD_NONINV_MEAN", None),
                        q,
                        "mean arterial pressure",
                    )
                });
                let components: Vec<Value> = parts
                    .into_iter()
                    .chain(mean)
                    .map(|(code, q, label)| {
                        let g = Grading {
                            thresholds: ctx.thresholds.as_ref(),
                            problems: &mut b.problems,
                        };
                        component(code, q, label, g)
                    })
                    .collect();
                o["component"] = Value::Array(components);
            }
            if let Some(pulse) = &bp.pulse_rate {
                b.numeric(&PULSE_CUFF, pulse, true);
            }
            if let Some(raw) = bp.measurement_status_raw.map(|b| b.0).filter(|r| *r != 0) {
                let pressure = b.out[i].full_url.clone();
                let s = b.observation(&BP_STATUS, false);
                let o = &mut b.out[s].resource;
                push_profile(o, &format!("{PHD}PhdBitsEnumerationObservation"));
                o["derivedFrom"] = json!([{"reference": pressure}]);
                // Event bits: only those set are reported (PHD IG, ASN1ToHL7 code system).
                o["component"] = Value::Array(
                    (0..6)
                        .filter(|bit| raw & (1 << bit) != 0)
                        .map(|bit| {
                            json!({
                                "code": {"coding": [{
                                    "system": "http://hl7.org/fhir/uv/phd/CodeSystem/ASN1ToHL7",
                                    "code": format!("8410608.{bit}")
                                }]},
                                "valueCodeableConcept": {"coding": [{
                                    "system": "http://terminology.hl7.org/CodeSystem/v2-0136",
                                    "code": "Y"
                                }]}
                            })
                        })
                        .collect(),
                );
            }
            (b.out, b.problems)
        }
        Measurement::Weight(w) => {
            let mut b = Builder::new(ctx, w.timestamp);
            b.numeric(&BODY_WEIGHT, &w.weight, true);
            if let Some(bmi) = &w.bmi {
                b.numeric(&BMI, bmi, true);
            }
            b.height(w.height.as_ref());
            (b.out, b.problems)
        }
        Measurement::BodyComposition(c) => {
            let mut b = Builder::new(ctx, c.timestamp);
            b.numeric(&BODY_FAT, &c.body_fat_percentage, false);
            if let Some(w) = &c.weight {
                b.numeric(&BODY_WEIGHT, w, true);
            }
            b.height(c.height.as_ref());
            (b.out, b.problems)
        }
        Measurement::Temperature(t) => {
            let mut b = Builder::new(ctx, t.timestamp);
            b.numeric(&BODY_TEMPERATURE, &t.temperature, true);
            (b.out, b.problems)
        }
        Measurement::PlxSpotCheck(p) => oximetry(ctx, p.timestamp, &p.spo2, &p.pulse_rate),
        Measurement::PlxContinuous(p) => oximetry(ctx, None, &p.spo2, &p.pulse_rate),
        Measurement::HeartRate(h) => {
            let mut b = Builder::new(ctx, None);
            b.numeric(&HEART_RATE, &h.heart_rate, true);
            (b.out, b.problems)
        }
        Measurement::Glucose(g) => {
            let Some(value) = g.concentration_conventional.as_ref() else {
                return (Vec::new(), Vec::new());
            };
            let kind = match g.sample_type.map(|t| t.code) {
                Some(2 | 4 | 6 | 8) => &GLUCOSE_PLASMA,
                _ => &GLUCOSE_WHOLE_BLOOD,
            };
            let mut b = Builder::new(ctx, Some(g.timestamp));
            b.numeric(kind, value, false);
            (b.out, b.problems)
        }
        Measurement::GlucoseContext(_)
        | Measurement::Battery(_)
        | Measurement::Time(_)
        | Measurement::RecordAccess(_) => (Vec::new(), Vec::new()),
    }
}

/// An oximeter's reading: SpO2 and pulse rate.
fn oximetry(
    ctx: &Context,
    stamp: Option<DateTime>,
    spo2: &Quantity,
    pulse: &Quantity,
) -> (Vec<Produced>, Vec<String>) {
    let mut b = Builder::new(ctx, stamp);
    let i = b.numeric(&SPO2, spo2, true);
    add_pulse_oximetry_coding(&mut b.out[i].resource);
    b.numeric(&PULSE_OXIMETER, pulse, true);
    (b.out, b.problems)
}

/// SpO2 carries LOINC 59408-5 (by pulse oximetry) beside the 2708-6 the R4 profile requires.
fn add_pulse_oximetry_coding(o: &mut Value) {
    if let Some(codings) = o["code"]["coding"].as_array_mut() {
        codings.push(json!({"system": LOINC, "code": "59408-5",
            "display": "Oxygen saturation in Arterial blood by Pulse oximetry"}));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::ingest::gatt::decode;

    fn ctx() -> Context {
        Context {
            patient: Some("p1".into()),
            device: Some("cuff-1".into()),
            gateway: Some("hub-1".into()),
            device_key: "0011223344556677".into(),
            received: time::macros::datetime!(2026-12-01 10:00:00 UTC),
            clock_offset_seconds: 0,
            thresholds: None,
        }
    }

    fn hex(s: &str) -> Vec<u8> {
        crate::ingest::parse_hex(s).unwrap()
    }

    #[test]
    fn blood_pressure_is_a_compound_a_pulse_and_a_status() {
        // BP1 of the shared vectors, with a full date: 2024-04-17 20:41:59.
        let m = decode(
            0x2A35,
            &hex("1e 8a00 5800 7800 e807 04 11 14 29 3b 3c00 01 2700"),
        )
        .unwrap();
        let out = observations(&m, &ctx()).unwrap();
        assert_eq!(out.len(), 3);
        let bp = &out[0].resource;
        assert_eq!(bp["code"]["coding"][0]["code"], "150020");
        assert_eq!(bp["code"]["coding"][1]["code"], "85354-9");
        assert_eq!(bp["component"][0]["valueQuantity"]["value"], json!(138));
        assert_eq!(bp["component"][0]["valueQuantity"]["code"], "mm[Hg]");
        assert_eq!(bp["component"][1]["code"]["coding"][1]["code"], "8462-4");
        assert_eq!(bp["effectiveDateTime"], "2024-04-17T20:41:59Z");
        assert_eq!(bp["subject"]["reference"], "Patient/p1");
        assert_eq!(bp["device"]["reference"], "Device/cuff-1");
        assert!(bp["meta"]["profile"].to_string().contains("/bp\""));
        // 2024-04-17T20:41:59 is 766701719 s after 2000-01-01.
        assert_eq!(
            bp["identifier"][0]["value"],
            "0011223344556677-p1-150020-766701719"
        );
        let pulse = &out[1].resource;
        assert_eq!(pulse["code"]["coding"][1]["code"], "8867-4");
        assert_eq!(pulse["valueQuantity"]["code"], "/min");
        let status = &out[2].resource;
        assert_eq!(status["code"]["coding"][0]["code"], "8410608");
        assert_eq!(
            status["derivedFrom"][0]["reference"],
            json!(out[0].full_url)
        );
        let bits: Vec<&str> = status["component"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["code"]["coding"][0]["code"].as_str().unwrap())
            .collect();
        assert_eq!(bits, ["8410608.0", "8410608.1", "8410608.2", "8410608.5"]);
        // The same bytes again: the same names and identifiers (replays are recognisable).
        assert_eq!(observations(&m, &ctx()).unwrap(), out);
    }

    /// Every Observation made from the shared vectors passes the checks of the server's write
    /// path (R4 structure, primitive formats, required bindings) and this server's profiles
    /// it claims.
    #[test]
    fn every_observation_from_the_vectors_is_valid_r4() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../shared/data/vectors/gatt.json"
        );
        let all: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let ty = crate::fhir::types::ResourceType::parse("Observation").unwrap();
        let mut made = 0;
        for v in all["vectors"].as_array().unwrap() {
            let (Some(c), Some(true)) = (v["characteristic"].as_str(), v["valid"].as_bool()) else {
                continue;
            };
            let uuid = crate::ingest::parse_uuid16(c).unwrap();
            let m = decode(uuid, &hex(v["hex"].as_str().unwrap())).unwrap();
            // Some vectors hold values no patient shows (glucose of 30 kg/L): refused, not made.
            let Ok(produced) = observations(&m, &ctx()) else {
                continue;
            };
            for p in produced {
                if let Err(e) = crate::fhir::parse::check_structure(&p.resource, ty) {
                    panic!("{}: {e:?}\n{:#}", v["id"], p.resource);
                }
                let claimed = p.resource["meta"]["profile"].to_string();
                assert!(claimed.contains(crate::fhir::profiles::BASE), "{claimed}");
                let issues = crate::fhir::profiles::check_claimed(&p.resource);
                assert!(
                    issues.is_empty(),
                    "{}: {issues:?}\n{:#}",
                    v["id"],
                    p.resource
                );
                made += 1;
            }
        }
        assert!(made >= 25, "{made} Observations");
    }

    #[test]
    fn readings_without_a_time_stamp_are_told_apart_by_their_receive_instant() {
        let m = decode(0x2A37, &hex("00 48")).unwrap();
        let at = |ms: i64| Context {
            received: time::OffsetDateTime::from_unix_timestamp(1_796_000_000).unwrap()
                + time::Duration::milliseconds(ms),
            ..ctx()
        };
        let url = |ms| observations(&m, &at(ms)).unwrap()[0].full_url.clone();
        assert_ne!(url(0), url(200), "two readings in one second");
        assert_eq!(url(200), url(200), "the same reading sent again");
    }

    #[test]
    fn ids_follow_the_measurement_time_and_stay_stable() {
        // BP1 at 2024-04-17 20:41:59, then the same cuff a second and a year earlier.
        let at = |year: &str, second: &str| {
            let m = decode(
                0x2A35,
                &hex(&format!(
                    "1e 8a00 5800 7800 {year} 04 11 14 29 {second} 3c00 01 2700"
                )),
            )
            .unwrap();
            let out = observations(&m, &ctx()).unwrap();
            let id = out[0].full_url.trim_start_matches("urn:uuid:").to_owned();
            (id, out[1].full_url.clone())
        };
        let (first, pulse) = at("e807", "3b");
        let (second_before, _) = at("e807", "3a");
        let (year_before, _) = at("e707", "3b");
        assert!(
            year_before < second_before && second_before < first,
            "{year_before} {second_before} {first}"
        );
        assert_ne!(format!("urn:uuid:{first}"), pulse);
        let uuid = uuid::Uuid::parse_str(&first).unwrap();
        assert_eq!(uuid.get_version(), Some(uuid::Version::Custom));
        assert_eq!(uuid.get_variant(), uuid::Variant::RFC4122);
        // The leading 48 bits: 2024-04-17T20:41:59Z in milliseconds since 1970.
        assert_eq!(&first[..13], "018eedcb-79d8");
        assert_eq!(at("e807", "3b").0, first, "a replay gets the same id");
    }

    #[test]
    fn impossible_and_future_readings_are_refused_and_high_ones_graded() {
        // 900/88 mmHg: refused, saying which value.
        let m = decode(0x2A35, &hex("00 8403 5800 7800")).unwrap();
        let why = observations(&m, &ctx()).unwrap_err();
        assert_eq!(
            why,
            ["systolic 900 mm[Hg] is outside the plausible 40–300 mm[Hg]"]
        );
        // A time stamp an hour after the reading arrived.
        let m = decode(0x2A1C, &hex("02 b00e00fe ea07 0c 01 0b 00 00")).unwrap();
        let why = observations(&m, &ctx()).unwrap_err();
        assert!(why[0].contains("2026-12-01T11:00:00Z"), "{why:?}");
        // 150/95 mmHg: H on both components, under the default limits.
        let m = decode(0x2A35, &hex("00 9600 5f00 7800")).unwrap();
        let bp = &observations(&m, &ctx()).unwrap()[0].resource;
        for c in 0..2 {
            assert_eq!(
                bp["component"][c]["interpretation"][0]["coding"][0]["code"],
                "H"
            );
        }
        assert!(bp["component"][2].get("interpretation").is_none());
        // The patient's own limits: 150 is critical for them.
        let mut c = ctx();
        let mut t = Thresholds::default();
        t.0.insert(
            "8480-6".into(),
            serde_json::from_value(json!({"critical_low": null, "low": null,
                "high": 130.0, "critical_high": 145.0}))
            .unwrap(),
        );
        c.thresholds = Some(t);
        let bp = &observations(&m, &c).unwrap()[0].resource;
        assert_eq!(
            bp["component"][0]["interpretation"][0]["coding"][0]["code"],
            "HH"
        );
    }

    #[test]
    fn precision_units_specials_and_times() {
        // Weight 70.000 kg with BMI and height (WS5): 1.750 m becomes 175.0 cm.
        let m = decode(0x2A9D, &hex("08b036f500d606")).unwrap();
        let out = observations(&m, &ctx()).unwrap();
        assert_eq!(
            out[0].resource["valueQuantity"]["value"].to_string(),
            "70.000"
        );
        assert_eq!(
            out[2].resource["valueQuantity"]["value"].to_string(),
            "175.0"
        );
        assert_eq!(out[2].resource["valueQuantity"]["code"], "cm");
        assert!(
            out[0].resource.get("identifier").is_none(),
            "no time stamp, no identifier"
        );
        assert_eq!(out[0].resource["effectiveDateTime"], "2026-12-01T10:00:00Z");

        // A thermometer sending NaN: no value, a data-absent reason.
        let m = decode(0x2A1C, &hex("00ffff7f00")).unwrap();
        let o = &observations(&m, &ctx()).unwrap()[0].resource;
        assert!(o.get("valueQuantity").is_none());
        assert_eq!(o["dataAbsentReason"]["coding"][0]["code"], "not-a-number");

        // A device clock 90 s fast (HT1 at 2012-12-05T11:50:27).
        let mut c = ctx();
        c.clock_offset_seconds = 90;
        let m = decode(0x2A1C, &hex("06b00e00fedc070c050b321b04")).unwrap();
        let o = &observations(&m, &c).unwrap()[0].resource;
        assert_eq!(o["effectiveDateTime"], "2012-12-05T11:48:57Z");
        assert_eq!(o["valueQuantity"]["value"].to_string(), "37.60");
        assert_eq!(o["valueQuantity"]["code"], "Cel");

        // SpO2 with both LOINC codes; glucose in mg/dL, not a vital sign.
        let m = decode(0x2A5E, &hex("0facf3bef5e8070b1d170839204022000066e3")).unwrap();
        let out = observations(&m, &ctx()).unwrap();
        assert_eq!(out[0].resource["code"]["coding"][1]["code"], "2708-6");
        assert_eq!(out[0].resource["code"]["coding"][2]["code"], "59408-5");
        assert_eq!(
            out[0].resource["valueQuantity"]["value"].to_string(),
            "94.0"
        );
        let m = decode(0x2A18, &hex("02 0100 e307021b0b0a1e 70b0 12")).unwrap();
        let g = &observations(&m, &ctx()).unwrap()[0].resource;
        assert_eq!(g["valueQuantity"]["code"], "mg/dL");
        assert_eq!(
            g["valueQuantity"]["value"].to_string(),
            "112",
            "0.00112 kg/L"
        );
        assert_eq!(g["code"]["coding"][0]["code"], "160188", "capillary plasma");
        assert_eq!(g["category"].as_array().unwrap().len(), 1, "phd only");
    }
}
