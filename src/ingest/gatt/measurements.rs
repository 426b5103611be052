//! One decoder per characteristic. Each reads the flags, then exactly the fields they announce,
//! in the order of the GATT specification (`shared/data/gatt/org.bluetooth.characteristic.*.xml`).
//! Bytes after the last announced field are ignored: devices append vendor data there.

use serde::Serialize;

use super::num::{Code, DateTime, Float, Quantity, flags};
use super::{DecodeError, Quirks, Reader};

fn bit(flags: u32, n: u32) -> bool {
    flags & (1 << n) != 0
}

/// A raw 16-bit status field, kept as a number and written as `0x0027`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bits16(pub u16);

/// A raw 24-bit status field, written as `0x000022`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bits24(pub u32);

impl Serialize for Bits16 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("0x{:04X}", self.0))
    }
}

impl Serialize for Bits24 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("0x{:06X}", self.0))
    }
}

/// Blood Pressure Measurement (0x2A35) and Intermediate Cuff Pressure (0x2A36, whose current
/// cuff pressure is in `systolic`, the other two NaN).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BloodPressure {
    pub units: &'static str,
    pub systolic: Quantity,
    pub diastolic: Quantity,
    /// `None` when the device reports no mean at all (cellular cuffs); a Bluetooth cuff always
    /// sends the field, NaN when it has no value.
    pub mean_arterial_pressure: Option<Quantity>,
    pub timestamp: Option<DateTime>,
    pub pulse_rate: Option<Quantity>,
    pub user_id: Option<u8>,
    pub measurement_status: Option<Vec<&'static str>>,
    pub pulse_rate_range: Option<&'static str>,
    pub measurement_status_raw: Option<Bits16>,
}

/// Blood pressure measurement status bits 0-2 and 5 (bits 3-4 are the pulse rate range).
const BP_STATUS: [&str; 6] = [
    "body_movement",
    "cuff_too_loose",
    "irregular_pulse",
    "",
    "",
    "improper_measurement_position",
];

pub fn blood_pressure(bytes: &[u8], quirks: &Quirks) -> Result<BloodPressure, DecodeError> {
    let mut r = Reader::new(bytes);
    let f = u32::from(r.u8("flags")?);
    let unit = if bit(f, 0) { "kPa" } else { "mmHg" };
    let systolic = Quantity::new(r.sfloat("systolic")?, unit);
    let diastolic = Quantity::new(r.sfloat("diastolic")?, unit);
    let mean = Quantity::new(r.sfloat("mean arterial pressure")?, unit);
    let timestamp = bit(f, 1).then(|| r.date_time("time stamp")).transpose()?;
    let pulse_rate = if bit(f, 2) {
        let raw = if quirks.bp_big_endian_pulse_and_status {
            r.u16_be("pulse rate")?
        } else {
            r.u16("pulse rate")?
        };
        Some(Quantity::new(Float::sfloat16(raw), "bpm"))
    } else {
        None
    };
    let user_id = (bit(f, 3) || quirks.bp_always_user_id)
        .then(|| r.u8("user id"))
        .transpose()?;
    let status = if bit(f, 4) {
        Some(if quirks.bp_big_endian_pulse_and_status {
            r.u16_be("measurement status")?
        } else {
            r.u16("measurement status")?
        })
    } else {
        None
    };
    Ok(BloodPressure {
        units: unit,
        systolic,
        diastolic,
        mean_arterial_pressure: Some(mean),
        timestamp,
        pulse_rate,
        user_id,
        measurement_status: status.map(|s| flags(u32::from(s), &BP_STATUS)),
        pulse_rate_range: status.map(|s| match (s >> 3) & 0b11 {
            0 => "in_range",
            1 => "exceeds_upper_limit",
            2 => "below_lower_limit",
            _ => "reserved",
        }),
        measurement_status_raw: status.map(Bits16),
    })
}

/// Weight Measurement (0x2A9D).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Weight {
    pub units: &'static str,
    pub weight: Quantity,
    pub timestamp: Option<DateTime>,
    pub user_id: Option<u8>,
    pub bmi: Option<Quantity>,
    pub height: Option<Quantity>,
}

/// A mass of the weight scale and body composition services: 0.005 kg or 0.01 lb per unit;
/// 0xFFFF means the measurement was unsuccessful.
fn mass(raw: u16, imperial: bool) -> Quantity {
    match (raw, imperial) {
        (0xFFFF, true) => Quantity::new(Float::NaN, "lb"),
        (0xFFFF, false) => Quantity::new(Float::NaN, "kg"),
        (v, true) => Quantity::fixed(i64::from(v), -2, "lb"),
        (v, false) => Quantity::fixed(i64::from(v) * 5, -3, "kg"),
    }
}

/// A height: 0.001 m or 0.1 in per unit.
fn height(raw: u16, imperial: bool) -> Quantity {
    if imperial {
        Quantity::fixed(i64::from(raw), -1, "in")
    } else {
        Quantity::fixed(i64::from(raw), -3, "m")
    }
}

/// A percentage with 0.1 % resolution; 0xFFFF means unsuccessful.
fn percent(raw: u16) -> Quantity {
    if raw == 0xFFFF {
        Quantity::new(Float::NaN, "%")
    } else {
        Quantity::fixed(i64::from(raw), -1, "%")
    }
}

fn units_name(imperial: bool) -> &'static str {
    if imperial { "imperial" } else { "SI" }
}

pub fn weight(bytes: &[u8]) -> Result<Weight, DecodeError> {
    let mut r = Reader::new(bytes);
    let f = u32::from(r.u8("flags")?);
    let imperial = bit(f, 0);
    let weight = mass(r.u16("weight")?, imperial);
    let timestamp = bit(f, 1).then(|| r.date_time("time stamp")).transpose()?;
    let user_id = bit(f, 2).then(|| r.u8("user id")).transpose()?;
    let (bmi, h) = if bit(f, 3) {
        let bmi = Quantity::fixed(i64::from(r.u16("BMI")?), -1, "kg/m2");
        (Some(bmi), Some(height(r.u16("height")?, imperial)))
    } else {
        (None, None)
    };
    Ok(Weight {
        units: units_name(imperial),
        weight,
        timestamp,
        user_id,
        bmi,
        height: h,
    })
}

/// Body Composition Measurement (0x2A9C).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BodyComposition {
    pub units: &'static str,
    pub body_fat_percentage: Quantity,
    pub timestamp: Option<DateTime>,
    pub user_id: Option<u8>,
    pub basal_metabolism: Option<Quantity>,
    pub muscle_percentage: Option<Quantity>,
    pub muscle_mass: Option<Quantity>,
    pub fat_free_mass: Option<Quantity>,
    pub soft_lean_mass: Option<Quantity>,
    pub body_water_mass: Option<Quantity>,
    pub impedance: Option<Quantity>,
    pub weight: Option<Quantity>,
    pub height: Option<Quantity>,
    pub multiple_packet_measurement: bool,
}

pub fn body_composition(bytes: &[u8]) -> Result<BodyComposition, DecodeError> {
    let mut r = Reader::new(bytes);
    let f = u32::from(r.u16("flags")?);
    let imperial = bit(f, 0);
    let fat = percent(r.u16("body fat percentage")?);
    let timestamp = bit(f, 1).then(|| r.date_time("time stamp")).transpose()?;
    let user_id = bit(f, 2).then(|| r.u8("user id")).transpose()?;
    let mut field = |n: u32, what: &'static str, make: &dyn Fn(u16) -> Quantity| {
        if bit(f, n) {
            r.u16(what).map(|v| Some(make(v)))
        } else {
            Ok(None)
        }
    };
    let basal = field(3, "basal metabolism", &|v| {
        Quantity::fixed(i64::from(v), 0, "kJ")
    })?;
    let muscle_pct = field(4, "muscle percentage", &percent)?;
    let masses = |v| mass(v, imperial);
    let muscle_mass = field(5, "muscle mass", &masses)?;
    let fat_free = field(6, "fat free mass", &masses)?;
    let soft_lean = field(7, "soft lean mass", &masses)?;
    let water = field(8, "body water mass", &masses)?;
    let impedance = field(9, "impedance", &|v| {
        Quantity::fixed(i64::from(v), -1, "Ohm")
    })?;
    let weight = field(10, "weight", &masses)?;
    let h = field(11, "height", &|v| height(v, imperial))?;
    Ok(BodyComposition {
        units: units_name(imperial),
        body_fat_percentage: fat,
        timestamp,
        user_id,
        basal_metabolism: basal,
        muscle_percentage: muscle_pct,
        muscle_mass,
        fat_free_mass: fat_free,
        soft_lean_mass: soft_lean,
        body_water_mass: water,
        impedance,
        weight,
        height: h,
        multiple_packet_measurement: bit(f, 12),
    })
}

/// Glucose Measurement (0x2A18).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Glucose {
    pub sequence_number: u16,
    pub base_time: DateTime,
    pub time_offset: Option<Quantity>,
    /// The base time plus the offset: when the sample was taken.
    pub timestamp: DateTime,
    pub units: Option<&'static str>,
    pub concentration: Option<Quantity>,
    /// The concentration in the units clinicians read: mg/dL (from kg/L) or mmol/L (from mol/L).
    pub concentration_conventional: Option<Quantity>,
    #[serde(rename = "type")]
    pub sample_type: Option<Code>,
    pub sample_location: Option<Code>,
    pub sensor_status: Option<Vec<&'static str>>,
    pub sensor_status_raw: Option<Bits16>,
    pub context_information_follows: bool,
}

const GLUCOSE_TYPES: [&str; 11] = [
    "",
    "capillary_whole_blood",
    "capillary_plasma",
    "venous_whole_blood",
    "venous_plasma",
    "arterial_whole_blood",
    "arterial_plasma",
    "undetermined_whole_blood",
    "undetermined_plasma",
    "interstitial_fluid",
    "control_solution",
];

const SAMPLE_LOCATIONS: [&str; 16] = [
    "",
    "finger",
    "alternate_site_test",
    "earlobe",
    "control_solution",
    "",
    "",
    "",
    "",
    "",
    "",
    "",
    "",
    "",
    "",
    "not_available",
];

const GLUCOSE_STATUS: [&str; 12] = [
    "device_battery_low",
    "sensor_malfunction",
    "sample_size_insufficient",
    "strip_insertion_error",
    "strip_type_incorrect",
    "result_too_high",
    "result_too_low",
    "temperature_too_high",
    "temperature_too_low",
    "read_interrupted",
    "general_device_fault",
    "time_fault",
];

pub fn glucose(bytes: &[u8]) -> Result<Glucose, DecodeError> {
    let mut r = Reader::new(bytes);
    let f = u32::from(r.u8("flags")?);
    let sequence_number = r.u16("sequence number")?;
    let base_time = r.date_time("base time")?;
    let offset = bit(f, 0).then(|| r.i16("time offset")).transpose()?;
    let (concentration, sample) = if bit(f, 1) {
        let c = r.sfloat("glucose concentration")?;
        (Some(c), Some(r.u8("type-sample location")?))
    } else {
        (None, None)
    };
    let status = bit(f, 3)
        .then(|| r.u16("sensor status annunciation"))
        .transpose()?;
    let timestamp = match (offset, base_time.primitive()) {
        (Some(minutes), Some(base)) => {
            DateTime::from_primitive(base + time::Duration::minutes(i64::from(minutes)))
        }
        _ => base_time,
    };
    let molar = bit(f, 2);
    let (unit, conventional_unit, shift) = if molar {
        ("mol/L", "mmol/L", 3)
    } else {
        ("kg/L", "mg/dL", 5)
    };
    Ok(Glucose {
        sequence_number,
        base_time,
        time_offset: offset.map(|m| Quantity::fixed(i64::from(m), 0, "min")),
        timestamp,
        units: concentration.map(|_| unit),
        concentration: concentration.map(|c| Quantity::new(c, unit)),
        concentration_conventional: concentration.map(|c| {
            let v = match c {
                Float::Value(d) => Float::Value(d.shifted(shift)),
                special => special,
            };
            Quantity::new(v, conventional_unit)
        }),
        sample_type: sample.map(|s| Code::of(s & 0x0F, &GLUCOSE_TYPES)),
        sample_location: sample.map(|s| Code::of(s >> 4, &SAMPLE_LOCATIONS)),
        sensor_status: status.map(|s| flags(u32::from(s), &GLUCOSE_STATUS)),
        sensor_status_raw: status.map(Bits16),
        context_information_follows: bit(f, 4),
    })
}

/// Glucose Measurement Context (0x2A34).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GlucoseContext {
    pub sequence_number: u16,
    pub extended_flags: Option<u8>,
    pub carbohydrate_id: Option<Code>,
    pub carbohydrate: Option<Quantity>,
    pub meal: Option<Code>,
    pub tester: Option<Code>,
    pub health: Option<Code>,
    pub exercise_duration: Option<Quantity>,
    pub exercise_intensity: Option<Quantity>,
    pub medication_id: Option<Code>,
    pub medication: Option<Quantity>,
    pub hba1c: Option<Quantity>,
}

const CARBOHYDRATES: [&str; 8] = [
    "",
    "breakfast",
    "lunch",
    "dinner",
    "snack",
    "drink",
    "supper",
    "brunch",
];
const MEALS: [&str; 6] = [
    "",
    "preprandial",
    "postprandial",
    "fasting",
    "casual",
    "bedtime",
];
const TESTERS: [&str; 16] = [
    "",
    "self",
    "health_care_professional",
    "lab_test",
    "",
    "",
    "",
    "",
    "",
    "",
    "",
    "",
    "",
    "",
    "",
    "not_available",
];
const HEALTH: [&str; 16] = [
    "",
    "minor_health_issues",
    "major_health_issues",
    "during_menses",
    "under_stress",
    "no_health_issues",
    "",
    "",
    "",
    "",
    "",
    "",
    "",
    "",
    "",
    "not_available",
];
const MEDICATIONS: [&str; 6] = [
    "",
    "rapid_acting_insulin",
    "short_acting_insulin",
    "intermediate_acting_insulin",
    "long_acting_insulin",
    "pre_mixed_insulin",
];

pub fn glucose_context(bytes: &[u8]) -> Result<GlucoseContext, DecodeError> {
    let mut r = Reader::new(bytes);
    let f = u32::from(r.u8("flags")?);
    let sequence_number = r.u16("sequence number")?;
    let extended_flags = bit(f, 7).then(|| r.u8("extended flags")).transpose()?;
    let (carbohydrate_id, carbohydrate) = if bit(f, 0) {
        let id = Code::of(r.u8("carbohydrate id")?, &CARBOHYDRATES);
        (
            Some(id),
            Some(Quantity::new(r.sfloat("carbohydrate")?, "kg")),
        )
    } else {
        (None, None)
    };
    let meal = bit(f, 1)
        .then(|| r.u8("meal").map(|m| Code::of(m, &MEALS)))
        .transpose()?;
    let (tester, health) = if bit(f, 2) {
        let b = r.u8("tester-health")?;
        (
            Some(Code::of(b & 0x0F, &TESTERS)),
            Some(Code::of(b >> 4, &HEALTH)),
        )
    } else {
        (None, None)
    };
    let (exercise_duration, exercise_intensity) = if bit(f, 3) {
        let d = r.u16("exercise duration")?;
        let i = r.u8("exercise intensity")?;
        (
            Some(Quantity::fixed(i64::from(d), 0, "s")),
            Some(Quantity::fixed(i64::from(i), 0, "%")),
        )
    } else {
        (None, None)
    };
    let (medication_id, medication) = if bit(f, 4) {
        let id = Code::of(r.u8("medication id")?, &MEDICATIONS);
        let unit = if bit(f, 5) { "L" } else { "kg" };
        (Some(id), Some(Quantity::new(r.sfloat("medication")?, unit)))
    } else {
        (None, None)
    };
    let hba1c = bit(f, 6)
        .then(|| r.sfloat("HbA1c").map(|v| Quantity::new(v, "%")))
        .transpose()?;
    Ok(GlucoseContext {
        sequence_number,
        extended_flags,
        carbohydrate_id,
        carbohydrate,
        meal,
        tester,
        health,
        exercise_duration,
        exercise_intensity,
        medication_id,
        medication,
        hba1c,
    })
}

/// Temperature Measurement (0x2A1C).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Temperature {
    pub units: &'static str,
    pub temperature: Quantity,
    pub timestamp: Option<DateTime>,
    pub temperature_type: Option<Code>,
}

const TEMPERATURE_TYPES: [&str; 10] = [
    "",
    "armpit",
    "body",
    "ear",
    "finger",
    "gastrointestinal_tract",
    "mouth",
    "rectum",
    "toe",
    "tympanum",
];

pub fn temperature(bytes: &[u8]) -> Result<Temperature, DecodeError> {
    let mut r = Reader::new(bytes);
    let f = u32::from(r.u8("flags")?);
    let unit = if bit(f, 0) { "degF" } else { "degC" };
    let temperature = Quantity::new(r.float("temperature")?, unit);
    let timestamp = bit(f, 1).then(|| r.date_time("time stamp")).transpose()?;
    let temperature_type = bit(f, 2)
        .then(|| {
            r.u8("temperature type")
                .map(|t| Code::of(t, &TEMPERATURE_TYPES))
        })
        .transpose()?;
    Ok(Temperature {
        units: unit,
        temperature,
        timestamp,
        temperature_type,
    })
}

const PLX_MEASUREMENT_STATUS: [&str; 16] = [
    "",
    "",
    "",
    "",
    "",
    "measurement_ongoing",
    "early_estimated_data",
    "validated_data",
    "fully_qualified_data",
    "data_from_measurement_storage",
    "data_for_demonstration",
    "data_for_testing",
    "calibration_ongoing",
    "measurement_unavailable",
    "questionable_measurement_detected",
    "invalid_measurement_detected",
];

const PLX_DEVICE_STATUS: [&str; 16] = [
    "extended_display_update_ongoing",
    "equipment_malfunction_detected",
    "signal_processing_irregularity_detected",
    "inadequate_signal_detected",
    "poor_signal_detected",
    "low_perfusion_detected",
    "erratic_signal_detected",
    "nonpulsatile_signal_detected",
    "questionable_pulse_detected",
    "signal_analysis_ongoing",
    "sensor_interference_detected",
    "sensor_unconnected_to_user",
    "unknown_sensor_connected",
    "sensor_displaced",
    "sensor_malfunctioning",
    "sensor_disconnected",
];

/// The status fields both PLX characteristics share.
struct PlxStatus {
    measurement: Option<u16>,
    device: Option<u32>,
    pai: Option<Quantity>,
}

fn plx_status(
    r: &mut Reader<'_>,
    measurement: bool,
    device: bool,
    pai: bool,
) -> Result<PlxStatus, DecodeError> {
    Ok(PlxStatus {
        measurement: measurement
            .then(|| r.u16("measurement status"))
            .transpose()?,
        device: device
            .then(|| r.u24("device and sensor status"))
            .transpose()?,
        pai: pai
            .then(|| {
                r.sfloat("pulse amplitude index")
                    .map(|v| Quantity::new(v, "%"))
            })
            .transpose()?,
    })
}

/// PLX Spot-check Measurement (0x2A5E).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlxSpotCheck {
    pub spo2: Quantity,
    pub pulse_rate: Quantity,
    pub timestamp: Option<DateTime>,
    pub measurement_status: Option<Vec<&'static str>>,
    pub measurement_status_raw: Option<Bits16>,
    pub device_and_sensor_status: Option<Vec<&'static str>>,
    pub device_and_sensor_status_raw: Option<Bits24>,
    pub pulse_amplitude_index: Option<Quantity>,
    pub device_clock_not_set: bool,
}

pub fn plx_spot_check(bytes: &[u8]) -> Result<PlxSpotCheck, DecodeError> {
    let mut r = Reader::new(bytes);
    let f = u32::from(r.u8("flags")?);
    let spo2 = Quantity::new(r.sfloat("SpO2")?, "%");
    let pulse_rate = Quantity::new(r.sfloat("pulse rate")?, "bpm");
    let timestamp = bit(f, 0).then(|| r.date_time("time stamp")).transpose()?;
    let s = plx_status(&mut r, bit(f, 1), bit(f, 2), bit(f, 3))?;
    Ok(PlxSpotCheck {
        spo2,
        pulse_rate,
        timestamp,
        measurement_status: s
            .measurement
            .map(|v| flags(u32::from(v), &PLX_MEASUREMENT_STATUS)),
        measurement_status_raw: s.measurement.map(Bits16),
        device_and_sensor_status: s.device.map(|v| flags(v, &PLX_DEVICE_STATUS)),
        device_and_sensor_status_raw: s.device.map(Bits24),
        pulse_amplitude_index: s.pai,
        device_clock_not_set: bit(f, 4),
    })
}

/// PLX Continuous Measurement (0x2A5F).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlxContinuous {
    pub spo2: Quantity,
    pub pulse_rate: Quantity,
    pub spo2_fast: Option<Quantity>,
    pub pulse_rate_fast: Option<Quantity>,
    pub spo2_slow: Option<Quantity>,
    pub pulse_rate_slow: Option<Quantity>,
    pub measurement_status: Option<Vec<&'static str>>,
    pub measurement_status_raw: Option<Bits16>,
    pub device_and_sensor_status: Option<Vec<&'static str>>,
    pub device_and_sensor_status_raw: Option<Bits24>,
    pub pulse_amplitude_index: Option<Quantity>,
}

pub fn plx_continuous(bytes: &[u8]) -> Result<PlxContinuous, DecodeError> {
    let mut r = Reader::new(bytes);
    let f = u32::from(r.u8("flags")?);
    let spo2 = Quantity::new(r.sfloat("SpO2")?, "%");
    let pulse_rate = Quantity::new(r.sfloat("pulse rate")?, "bpm");
    let mut pair = |present: bool,
                    spo2: &'static str,
                    pr: &'static str|
     -> Result<(Option<Quantity>, Option<Quantity>), DecodeError> {
        if !present {
            return Ok((None, None));
        }
        let s = Quantity::new(r.sfloat(spo2)?, "%");
        Ok((Some(s), Some(Quantity::new(r.sfloat(pr)?, "bpm"))))
    };
    let (spo2_fast, pulse_rate_fast) = pair(bit(f, 0), "SpO2 fast", "pulse rate fast")?;
    let (spo2_slow, pulse_rate_slow) = pair(bit(f, 1), "SpO2 slow", "pulse rate slow")?;
    let s = plx_status(&mut r, bit(f, 2), bit(f, 3), bit(f, 4))?;
    Ok(PlxContinuous {
        spo2,
        pulse_rate,
        spo2_fast,
        pulse_rate_fast,
        spo2_slow,
        pulse_rate_slow,
        measurement_status: s
            .measurement
            .map(|v| flags(u32::from(v), &PLX_MEASUREMENT_STATUS)),
        measurement_status_raw: s.measurement.map(Bits16),
        device_and_sensor_status: s.device.map(|v| flags(v, &PLX_DEVICE_STATUS)),
        device_and_sensor_status_raw: s.device.map(Bits24),
        pulse_amplitude_index: s.pai,
    })
}

/// Heart Rate Measurement (0x2A37).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HeartRate {
    pub heart_rate: Quantity,
    pub heart_rate_format: &'static str,
    pub sensor_contact: &'static str,
    pub energy_expended: Option<Quantity>,
    pub rr_intervals: Option<Vec<Quantity>>,
}

pub fn heart_rate(bytes: &[u8]) -> Result<HeartRate, DecodeError> {
    let mut r = Reader::new(bytes);
    let f = u32::from(r.u8("flags")?);
    let (rate, format) = if bit(f, 0) {
        (r.u16("heart rate")?, "uint16")
    } else {
        (u16::from(r.u8("heart rate")?), "uint8")
    };
    let contact = match (f >> 1) & 0b11 {
        2 => "not_detected",
        3 => "detected",
        _ => "not_supported",
    };
    let energy = bit(f, 3)
        .then(|| {
            r.u16("energy expended")
                .map(|e| Quantity::fixed(i64::from(e), 0, "kJ"))
        })
        .transpose()?;
    let rr = if bit(f, 4) {
        // At least one interval when the flag is set; then as many as the packet holds.
        let mut v = vec![r.u16("RR-interval")?];
        while r.remaining() > 0 {
            v.push(r.u16("RR-interval")?);
        }
        Some(
            v.into_iter()
                .map(|i| Quantity::fixed(i64::from(i), 0, "1/1024 s"))
                .collect(),
        )
    } else {
        None
    };
    Ok(HeartRate {
        heart_rate: Quantity::fixed(i64::from(rate), 0, "bpm"),
        heart_rate_format: format,
        sensor_contact: contact,
        energy_expended: energy,
        rr_intervals: rr,
    })
}

/// Battery Level (0x2A19).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Battery {
    pub battery_level: Quantity,
}

pub fn battery(bytes: &[u8]) -> Result<Battery, DecodeError> {
    let [level] = bytes else {
        return Err(DecodeError::Invalid(format!(
            "battery level is 1 byte, got {}",
            bytes.len()
        )));
    };
    if *level > 100 {
        return Err(DecodeError::Invalid(format!(
            "battery level {level} exceeds 100 %"
        )));
    }
    Ok(Battery {
        battery_level: Quantity::fixed(i64::from(*level), 0, "%"),
    })
}

/// Date Time (0x2A08) or Current Time (0x2A2B: Day Date Time, fractions, adjust reason).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TimeValue {
    pub timestamp: DateTime,
    /// 1 (Monday) to 7; 0 when unknown.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub day_of_week: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fractions256: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adjust_reason: Option<u8>,
}

pub fn date_time(bytes: &[u8]) -> Result<TimeValue, DecodeError> {
    let mut r = Reader::new(bytes);
    let timestamp = r.date_time("date time")?;
    if r.remaining() > 0 {
        return Err(DecodeError::Invalid(format!(
            "date time is 7 bytes, got {}",
            bytes.len()
        )));
    }
    Ok(TimeValue {
        timestamp,
        day_of_week: None,
        fractions256: None,
        adjust_reason: None,
    })
}

pub fn current_time(bytes: &[u8]) -> Result<TimeValue, DecodeError> {
    let mut r = Reader::new(bytes);
    let timestamp = r.date_time("date time")?;
    Ok(TimeValue {
        timestamp,
        day_of_week: Some(r.u8("day of week")?),
        fractions256: Some(r.u8("fractions256")?),
        adjust_reason: Some(r.u8("adjust reason")?),
    })
}

/// The Current Time value that sets a device's clock to `t` (Current Time Service: Exact Time
/// 256 with the manual-update adjust reason).
pub fn current_time_value(t: time::PrimitiveDateTime) -> [u8; 10] {
    let y = (t.year().clamp(0, i32::from(u16::MAX)) as u16).to_le_bytes();
    [
        y[0],
        y[1],
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.weekday().number_from_monday(),
        0,
        0x01,
    ]
}

const RACP_OP_CODES: [&str; 7] = [
    "",
    "report_stored_records",
    "delete_stored_records",
    "abort_operation",
    "report_number_of_stored_records",
    "number_of_stored_records_response",
    "response_code",
];

const RACP_RESPONSE_CODES: [&str; 10] = [
    "",
    "success",
    "op_code_not_supported",
    "invalid_operator",
    "operator_not_supported",
    "invalid_operand",
    "no_records_found",
    "abort_unsuccessful",
    "procedure_not_completed",
    "operand_not_supported",
];

/// A Record Access Control Point indication: the device's answer to a request.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RacpResponse {
    pub op_code: Code,
    pub operator: u8,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_op_code: Option<Code>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_code: Option<Code>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub number_of_records: Option<u32>,
}

pub fn racp_response(bytes: &[u8]) -> Result<RacpResponse, DecodeError> {
    if bytes.len() < 3 {
        return Err(DecodeError::Invalid(format!(
            "too short for a RACP response: {} byte(s)",
            bytes.len()
        )));
    }
    let op = Code::of(bytes[0], &RACP_OP_CODES);
    let operator = bytes[1];
    let operand = &bytes[2..];
    if op.code != 5 && op.code != 6 {
        return Err(DecodeError::Invalid(format!(
            "op code {} ({}) is not a response op code",
            op.code, op.name
        )));
    }
    if operator != 0 {
        return Err(DecodeError::Invalid(format!(
            "response operator must be 0x00 (null), got 0x{operator:02x}"
        )));
    }
    let mut out = RacpResponse {
        op_code: op,
        operator,
        request_op_code: None,
        response_code: None,
        number_of_records: None,
    };
    if op.code == 5 {
        out.number_of_records = Some(match operand {
            [a] => u32::from(*a),
            [a, b] => u32::from(u16::from_le_bytes([*a, *b])),
            [a, b, c, d] => u32::from_le_bytes([*a, *b, *c, *d]),
            _ => {
                return Err(DecodeError::Invalid(format!(
                    "number of records operand must be 1, 2 or 4 bytes, got {}",
                    operand.len()
                )));
            }
        });
    } else {
        let [request, code] = operand else {
            return Err(DecodeError::Invalid(format!(
                "response code operand must be 2 bytes, got {}",
                operand.len()
            )));
        };
        out.request_op_code = Some(Code::of(*request, &RACP_OP_CODES));
        out.response_code = Some(Code::of(*code, &RACP_RESPONSE_CODES));
    }
    Ok(out)
}

/// The RACP request "report all stored records" (op code 1, operator 1 "all records").
pub const RACP_REPORT_ALL: [u8; 2] = [0x01, 0x01];

/// The RACP request "report stored records with sequence number ≥ `from`" (operator 3 "greater
/// than or equal to", filter type 1 "sequence number"), to fetch only what is new.
pub fn racp_report_from(from: u16) -> [u8; 5] {
    let s = from.to_le_bytes();
    [0x01, 0x03, 0x01, s[0], s[1]]
}
