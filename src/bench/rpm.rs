//! The remote-patient-monitoring data set (`rpm-seed`) and the searches over
//! it (`search-pcd`, `search-pc`, `lastn`, `code-total`, `search-org`).
//!
//! The data set: `--rpm-orgs` clinics (Organization) share `--rpm-patients`
//! Patients (`managingOrganization`); each Patient has 2-3 home devices
//! (Device: BP monitor, scale, pulse oximeter, thermometer, glucose meter,
//! by care profile) and `--rpm-per-patient` vital-sign Observations, each
//! taken by one of those devices, spread over the 365 days before the end
//! instant (`--rpm-end`, by default midnight UTC of the day of the first
//! seeding).
//!
//! Every resource has a fixed id (`rpm-org003`, `rpm-p00042`,
//! `rpm-p00042-d1`, `rpm-p00042-o00017`), its content is a pure function of
//! the flags, the random seed and its indices, and it is written with a PUT
//! entry of a `transaction` Bundle. So seeding twice duplicates nothing, the
//! searches know which ids exist without asking, and an interrupted seeding
//! resumes: a marker resource, `Basic/rpm-seed`, records the parameters when
//! seeding starts and `complete` when it is done; a re-run with the same
//! parameters skips the Bundles whose last resource is already there (a
//! transaction is all or nothing), or everything once the marker says
//! complete.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use futures::{StreamExt as _, TryStreamExt as _, stream};
use reqwest::{StatusCode, Url, header};
use serde::Serialize;

use super::fhir::{SearchExpect, id_from_location};
use super::http::{Bearer as _, content_type_fhir, prefer_minimal};
use super::scenario::Scenario;
use super::stats::snippet;
use super::util::{self, Rng};
use super::workers::SearchOp;
use super::{BenchArgs, Ctx};
use crate::progress::Progress;

const DAY: i64 = 86_400;
/// The span the Observations of each Patient cover, ending at `DataSet::end`.
pub const WINDOW_SECS: i64 = 365 * DAY;
/// `search-pcd` asks for the Observations of the last 30 days.
const RECENT_SECS: i64 = 30 * DAY;
/// Id of the `Basic` resource that records the data set's parameters and state.
const MARKER_ID: &str = "rpm-seed";
/// Part of the recorded parameters: bump it when the generated content
/// changes, so data written by an older generator is rewritten instead of
/// being taken as complete.
const GENERATOR_VERSION: &str = "v1";
/// Attempts per Bundle: transient failures (timeouts, 5xx, lock conflicts)
/// should not throw away minutes of seeding.
const BUNDLE_ATTEMPTS: u32 = 3;

const LOINC: &str = "http://loinc.org";
const UCUM: &str = "http://unitsofmeasure.org";
const MDC: &str = "urn:iso:std:iso:11073:10101";
const SNOMED: &str = "http://snomed.info/sct";

/// What the generator produces; equal values produce identical resources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataSet {
    pub patients: usize,
    pub per_patient: usize,
    pub orgs: usize,
    pub rng_seed: u64,
    /// Unix seconds; every Observation is effective in `[end - 365 d, end)`.
    pub end: i64,
}

/// The `--rpm-*` flags, checked.
#[derive(Debug, Clone)]
pub struct Options {
    patients: usize,
    per_patient: usize,
    orgs: usize,
    rng_seed: u64,
    end: Option<i64>,
    bundle_size: usize,
    concurrency: usize,
    reseed: bool,
}

impl Options {
    pub fn from_args(a: &BenchArgs) -> anyhow::Result<Self> {
        if a.rpm_patients == 0 || a.rpm_per_patient == 0 || a.rpm_orgs == 0 {
            bail!("--rpm-patients, --rpm-per-patient and --rpm-orgs must be at least 1");
        }
        if !(1..=10_000).contains(&a.rpm_bundle_size) {
            bail!("--rpm-bundle-size must be in 1..=10000");
        }
        if a.rpm_concurrency == 0 {
            bail!("--rpm-concurrency must be at least 1");
        }
        let end = a.rpm_end.as_deref().map(parse_end).transpose()?;
        Ok(Self {
            patients: a.rpm_patients,
            per_patient: a.rpm_per_patient,
            orgs: a.rpm_orgs,
            rng_seed: a.rpm_rng_seed,
            end,
            bundle_size: a.rpm_bundle_size,
            concurrency: a.rpm_concurrency,
            reseed: a.rpm_reseed,
        })
    }

    fn data_set(&self, end: i64) -> DataSet {
        DataSet {
            patients: self.patients,
            per_patient: self.per_patient,
            orgs: self.orgs,
            rng_seed: self.rng_seed,
            end,
        }
    }
}

/// `--rpm-end`: `YYYY-MM-DD` (midnight UTC) or an RFC 3339 date-time.
fn parse_end(s: &str) -> anyhow::Result<i64> {
    use time::format_description::well_known::Rfc3339;
    let s = s.trim();
    let unix = match time::OffsetDateTime::parse(s, &Rfc3339) {
        Ok(t) => t.unix_timestamp(),
        Err(_) => time::Date::parse(s, time::macros::format_description!("[year]-[month]-[day]"))
            // The parser's message repeats itself through its source chain;
            // the expected formats say more.
            .map_err(|_| {
                anyhow::anyhow!("--rpm-end {s:?} is neither YYYY-MM-DD nor an RFC 3339 date-time")
            })?
            .midnight()
            .assume_utc()
            .unix_timestamp(),
    };
    // The data reaches back a year; keep it after 1970 so every timestamp
    // helper (Unix seconds as u64) applies.
    if unix < WINDOW_SECS + DAY {
        bail!("--rpm-end {s:?} is too early");
    }
    Ok(unix)
}

/// Midnight UTC of the current day: the default end, stable for a whole day
/// so that a seeding interrupted and re-run the same day writes the same data.
fn today_utc() -> i64 {
    let now = i64::try_from(util::unix_now()).unwrap_or(i64::MAX);
    now - now.rem_euclid(DAY)
}

fn utc(unix: i64) -> String {
    util::utc_timestamp(u64::try_from(unix).unwrap_or(0))
}

pub fn org_id(o: usize) -> String {
    format!("rpm-org{o:03}")
}

pub fn patient_id(p: usize) -> String {
    format!("rpm-p{p:05}")
}

pub fn device_id(p: usize, d: usize) -> String {
    format!("rpm-p{p:05}-d{d}")
}

pub fn observation_id(p: usize, i: usize) -> String {
    format!("rpm-p{p:05}-o{i:05}")
}

/// A random stream per (`a`, `b`) that does not depend on any other draw, so
/// each resource can be generated alone, in any order, by any task.
fn stream_rng(seed: u64, a: u64, b: u64) -> Rng {
    let mut rng = Rng::new(
        seed ^ a.wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ b.wrapping_mul(0xC2B2_AE3D_27D4_EB4F).rotate_left(31),
    );
    // SplitMix64 scrambles its state on output; one draw separates
    // neighbouring seeds.
    let _ = rng.next_u64();
    rng
}

/// Uniform in `-r..=r`.
fn noise(rng: &mut Rng, r: i64) -> i64 {
    rng.below(2 * r as usize + 1) as i64 - r
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    BpMonitor,
    Scale,
    PulseOximeter,
    Thermometer,
    GlucoseMeter,
}

/// How a device kind is described (IEEE 11073 device specialization and SNOMED CT).
struct DeviceInfo {
    mdc: &'static str,
    mdc_display: &'static str,
    sct: &'static str,
    sct_display: &'static str,
    text: &'static str,
    manufacturer: &'static str,
    model: &'static str,
    serial_prefix: &'static str,
    /// Relative number of readings a Patient takes with it.
    weight: usize,
}

impl DeviceKind {
    fn info(self) -> &'static DeviceInfo {
        match self {
            DeviceKind::BpMonitor => &DeviceInfo {
                mdc: "528391",
                mdc_display: "MDC_DEV_SPEC_PROFILE_BP",
                sct: "466086009",
                sct_display: "Automatic-inflation electronic sphygmomanometer, portable, arm/wrist",
                text: "Blood pressure monitor",
                manufacturer: "Northwind Medical",
                model: "BP-720",
                serial_prefix: "BPM",
                weight: 4,
            },
            DeviceKind::Scale => &DeviceInfo {
                mdc: "528399",
                mdc_display: "MDC_DEV_SPEC_PROFILE_SCALE",
                sct: "469204003",
                sct_display: "Floor scale, electronic",
                text: "Weight scale",
                manufacturer: "Northwind Medical",
                model: "WS-310",
                serial_prefix: "WS",
                weight: 2,
            },
            DeviceKind::PulseOximeter => &DeviceInfo {
                mdc: "528388",
                mdc_display: "MDC_DEV_SPEC_PROFILE_PULS_OXIM",
                sct: "448703006",
                sct_display: "Pulse oximeter",
                text: "Pulse oximeter",
                manufacturer: "Contoso Health",
                model: "OX-55",
                serial_prefix: "OX",
                weight: 3,
            },
            DeviceKind::Thermometer => &DeviceInfo {
                mdc: "528392",
                mdc_display: "MDC_DEV_SPEC_PROFILE_TEMP",
                sct: "706158001",
                sct_display: "Electronic patient thermometer",
                text: "Thermometer",
                manufacturer: "Contoso Health",
                model: "TH-12",
                serial_prefix: "TH",
                weight: 1,
            },
            DeviceKind::GlucoseMeter => &DeviceInfo {
                mdc: "528401",
                mdc_display: "MDC_DEV_SPEC_PROFILE_GLUCOSE",
                sct: "337414009",
                sct_display: "Blood glucose meter",
                text: "Blood glucose meter",
                manufacturer: "Fabrikam Diagnostics",
                model: "GL-9",
                serial_prefix: "GL",
                weight: 3,
            },
        }
    }
}

/// The kinds of reading, each with its LOINC code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Vital {
    BloodPressure,
    HeartRate,
    Weight,
    SpO2,
    Temperature,
    Glucose,
}

impl Vital {
    pub fn loinc(self) -> &'static str {
        match self {
            Vital::BloodPressure => "85354-9",
            Vital::HeartRate => "8867-4",
            Vital::Weight => "29463-7",
            Vital::SpO2 => "59408-5",
            Vital::Temperature => "8310-5",
            Vital::Glucose => "2339-0",
        }
    }

    fn display(self) -> &'static str {
        match self {
            Vital::BloodPressure => "Blood pressure panel with all children optional",
            Vital::HeartRate => "Heart rate",
            Vital::Weight => "Body weight",
            Vital::SpO2 => "Oxygen saturation in Arterial blood by Pulse oximetry",
            Vital::Temperature => "Body temperature",
            Vital::Glucose => "Glucose [Mass/volume] in Blood",
        }
    }

    fn text(self) -> &'static str {
        match self {
            Vital::BloodPressure => "Blood pressure",
            Vital::HeartRate => "Heart rate",
            Vital::Weight => "Body weight",
            Vital::SpO2 => "Oxygen saturation",
            Vital::Temperature => "Body temperature",
            Vital::Glucose => "Blood glucose",
        }
    }
}

/// Fixed UTC offsets of the clinics (US time zones, standard time: the
/// offset only has to be a realistic non-UTC one, daylight saving is not modelled).
const TZ_OFFSETS: [i32; 5] = [-300, -360, -420, -480, -300];
const CLINICS: [&str; 8] = [
    "Riverside Cardiology",
    "Lakeview Family Medicine",
    "Northgate Internal Medicine",
    "Harbor Heart and Lung",
    "Cedar Valley Primary Care",
    "Summit Endocrinology",
    "Meadowbrook Health Partners",
    "Bayside Pulmonary Associates",
];
const FAMILY: [&str; 16] = [
    "Smith",
    "Johnson",
    "Williams",
    "Brown",
    "Jones",
    "Garcia",
    "Miller",
    "Davis",
    "Rodriguez",
    "Martinez",
    "Hernandez",
    "Lopez",
    "Wilson",
    "Anderson",
    "Thomas",
    "Nguyen",
];
const GIVEN_F: [&str; 8] = [
    "Mary", "Patricia", "Linda", "Barbara", "Maria", "Susan", "Dorothy", "Grace",
];
const GIVEN_M: [&str; 8] = [
    "James", "Robert", "John", "Michael", "William", "David", "Joseph", "Charles",
];

/// Why a Patient is monitored; it decides the devices and shifts baselines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CareProfile {
    Hypertension,
    HeartFailure,
    Copd,
    Diabetes,
}

/// Everything about one Patient that its resources depend on.
#[derive(Debug, Clone)]
pub struct PatientPlan {
    pub org: usize,
    pub utc_offset_min: i32,
    /// 2-3 devices; at least one of them measures heart rate (BP monitor or
    /// pulse oximeter), so `search-pc` has something to find for everyone.
    pub devices: Vec<DeviceKind>,
    female: bool,
    birth: (u32, u32, u32),
    family: &'static str,
    given: &'static str,
    systolic: i64,
    diastolic: i64,
    heart_rate: i64,
    /// Tenths of a kilogram.
    weight_dg: i64,
    spo2: i64,
    /// Tenths of a degree Celsius.
    temp_dc: i64,
    glucose: i64,
}

/// One Observation's content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reading {
    pub vital: Vital,
    /// Index into the Patient's devices.
    pub device: usize,
    /// Unix seconds.
    pub effective: i64,
    /// Systolic, heart rate, weight (dg), SpO2, temperature (d°C) or glucose.
    pub value: i64,
    /// Diastolic for blood pressure, 0 otherwise.
    pub value2: i64,
}

/// A tenths value written as a decimal with one fraction digit (`723` → `72.3`).
fn push_tenths(out: &mut String, v: i64) {
    let _ = write!(out, "{}.{}", v / 10, (v % 10).abs());
}

fn push_coding(out: &mut String, system: &str, code: &str, display: &str) {
    out.push_str(r#"{"system":""#);
    out.push_str(system);
    out.push_str(r#"","code":""#);
    out.push_str(code);
    out.push_str(r#"","display":""#);
    out.push_str(display);
    out.push_str(r#""}"#);
}

/// `"valueQuantity":{...}` with a UCUM unit; `value` is already formatted.
fn push_quantity(out: &mut String, value: &str, unit: &str, code: &str) {
    out.push_str(r#""valueQuantity":{"value":"#);
    out.push_str(value);
    out.push_str(r#","unit":""#);
    out.push_str(unit);
    out.push_str(r#"","system":""#);
    out.push_str(UCUM);
    out.push_str(r#"","code":""#);
    out.push_str(code);
    out.push_str(r#""}"#);
}

impl DataSet {
    pub fn observations(&self) -> usize {
        self.patients.saturating_mul(self.per_patient)
    }

    /// Organizations that have Patients (all of them unless there are
    /// fewer Patients than clinics).
    pub fn orgs_in_use(&self) -> usize {
        self.orgs.min(self.patients)
    }

    fn describe(&self) -> String {
        format!(
            "{} Patients x {} Observations, {} clinics, seed {}, ending {}",
            self.patients,
            self.per_patient,
            self.orgs,
            self.rng_seed,
            utc(self.end)
        )
    }

    pub fn patient(&self, p: usize) -> PatientPlan {
        let mut rng = stream_rng(self.rng_seed, p as u64, u64::MAX);
        let org = p % self.orgs;
        let profile = match rng.below(100) {
            0..40 => CareProfile::Hypertension,
            40..65 => CareProfile::HeartFailure,
            65..80 => CareProfile::Copd,
            _ => CareProfile::Diabetes,
        };
        let third = rng.below(2) == 0;
        use DeviceKind::*;
        let mut devices = match profile {
            CareProfile::Hypertension => vec![BpMonitor, Scale],
            CareProfile::HeartFailure => vec![BpMonitor, Scale, PulseOximeter],
            CareProfile::Copd => vec![PulseOximeter, Thermometer],
            CareProfile::Diabetes => vec![GlucoseMeter, BpMonitor],
        };
        if devices.len() == 2 && third {
            devices.push(match profile {
                CareProfile::Hypertension => Thermometer,
                _ => Scale,
            });
        }
        let female = rng.below(2) == 0;
        let given = if female { &GIVEN_F } else { &GIVEN_M };
        PatientPlan {
            org,
            utc_offset_min: TZ_OFFSETS[org % TZ_OFFSETS.len()],
            devices,
            female,
            birth: (
                1935 + rng.below(50) as u32,
                1 + rng.below(12) as u32,
                1 + rng.below(28) as u32,
            ),
            family: FAMILY[rng.below(FAMILY.len())],
            given: given[rng.below(given.len())],
            systolic: 112 + rng.below(44) as i64,
            diastolic: 66 + rng.below(26) as i64,
            heart_rate: 58 + rng.below(33) as i64,
            weight_dg: 520 + rng.below(700) as i64,
            spo2: if profile == CareProfile::Copd {
                89 + rng.below(5) as i64
            } else {
                94 + rng.below(5) as i64
            },
            temp_dc: 363 + rng.below(8) as i64,
            glucose: if profile == CareProfile::Diabetes {
                120 + rng.below(80) as i64
            } else {
                85 + rng.below(30) as i64
            },
        }
    }

    /// Observation `i` of Patient `p`. Observation `i` falls in the `i`-th of
    /// `per_patient` equal slots of the year, at a random second of it: the
    /// readings are spread evenly, in id order, without a fixed period, and
    /// the newest of each Patient lies in the last slot before `end`.
    pub fn reading(&self, p: usize, plan: &PatientPlan, i: usize) -> Reading {
        let mut rng = stream_rng(self.rng_seed, p as u64, i as u64);
        let window = WINDOW_SECS as u64;
        let slots = self.per_patient.max(1) as u64;
        let offset = (i as u64 * window + rng.below(window as usize) as u64) / slots;
        let effective = self.end - WINDOW_SECS + offset.min(window - 1) as i64;

        let total: usize = plan.devices.iter().map(|d| d.info().weight).sum();
        let mut pick = rng.below(total);
        let mut device = 0;
        for (d, kind) in plan.devices.iter().enumerate() {
            let w = kind.info().weight;
            if pick < w {
                device = d;
                break;
            }
            pick -= w;
        }
        let kind = plan
            .devices
            .get(device)
            .copied()
            .unwrap_or(DeviceKind::BpMonitor);
        let roll = rng.below(100);
        let vital = match kind {
            // Cuffs and oximeters report the pulse as its own Observation too.
            DeviceKind::BpMonitor if roll < 65 => Vital::BloodPressure,
            DeviceKind::PulseOximeter if roll < 60 => Vital::SpO2,
            DeviceKind::BpMonitor | DeviceKind::PulseOximeter => Vital::HeartRate,
            DeviceKind::Scale => Vital::Weight,
            DeviceKind::Thermometer => Vital::Temperature,
            DeviceKind::GlucoseMeter => Vital::Glucose,
        };
        let (value, value2) = match vital {
            Vital::BloodPressure => {
                let sys = plan.systolic + noise(&mut rng, 12);
                let dia = (plan.diastolic + noise(&mut rng, 8)).min(sys - 20);
                (sys, dia)
            }
            Vital::HeartRate => (plan.heart_rate + noise(&mut rng, 10), 0),
            Vital::Weight => (plan.weight_dg + noise(&mut rng, 15), 0),
            Vital::SpO2 => ((plan.spo2 + noise(&mut rng, 2)).min(100), 0),
            Vital::Temperature => (plan.temp_dc + noise(&mut rng, 4), 0),
            Vital::Glucose => ((plan.glucose + noise(&mut rng, 35)).max(60), 0),
        };
        Reading {
            vital,
            device,
            effective,
            value,
            value2,
        }
    }

    pub fn organization_json(&self, o: usize) -> String {
        let mut out = String::with_capacity(512);
        out.push_str(r#"{"resourceType":"Organization","id":""#);
        out.push_str(&org_id(o));
        let _ = write!(
            out,
            r#"","identifier":[{{"system":"urn:vitalbridge:bench:rpm:clinic","value":"CLINIC-{o:03}"}}],"active":true,"type":[{{"coding":[{{"system":"http://terminology.hl7.org/CodeSystem/organization-type","code":"prov","display":"Healthcare Provider"}}]}}],"name":"{} {}","telecom":[{{"system":"phone","value":"+1-555-01{:02}","use":"work"}}]}}"#,
            CLINICS[o % CLINICS.len()],
            o + 1,
            o % 100
        );
        out
    }

    pub fn patient_json(&self, p: usize, plan: &PatientPlan) -> String {
        let mut out = String::with_capacity(640);
        out.push_str(r#"{"resourceType":"Patient","id":""#);
        out.push_str(&patient_id(p));
        let (y, m, d) = plan.birth;
        let _ = write!(
            out,
            r#"","identifier":[{{"use":"usual","type":{{"coding":[{{"system":"http://terminology.hl7.org/CodeSystem/v2-0203","code":"MR"}}]}},"system":"urn:vitalbridge:bench:rpm:mrn","value":"MRN-{p:05}"}}],"active":true,"name":[{{"use":"official","family":"{}","given":["{}"]}}],"telecom":[{{"system":"phone","value":"+1-555-{:04}","use":"mobile"}}],"gender":"{}","birthDate":"{y:04}-{m:02}-{d:02}","managingOrganization":{{"reference":"Organization/{}"}}}}"#,
            plan.family,
            plan.given,
            p % 10_000,
            if plan.female { "female" } else { "male" },
            org_id(plan.org)
        );
        out
    }

    fn device_serial(p: usize, d: usize, kind: DeviceKind) -> String {
        format!("{}-{p:05}-{d}", kind.info().serial_prefix)
    }

    pub fn device_json(&self, p: usize, plan: &PatientPlan, d: usize) -> String {
        let kind = plan
            .devices
            .get(d)
            .copied()
            .unwrap_or(DeviceKind::BpMonitor);
        let info = kind.info();
        let serial = Self::device_serial(p, d, kind);
        let mut out = String::with_capacity(900);
        out.push_str(r#"{"resourceType":"Device","id":""#);
        out.push_str(&device_id(p, d));
        let _ = write!(
            out,
            r#"","identifier":[{{"system":"urn:vitalbridge:bench:rpm:device-serial","value":"{serial}"}}],"status":"active","manufacturer":"{}","serialNumber":"{serial}","deviceName":[{{"name":"{} {}","type":"model-name"}}],"modelNumber":"{}","type":{{"coding":["#,
            info.manufacturer, info.manufacturer, info.model, info.model
        );
        push_coding(&mut out, MDC, info.mdc, info.mdc_display);
        out.push(',');
        push_coding(&mut out, SNOMED, info.sct, info.sct_display);
        let _ = write!(
            out,
            r#"],"text":"{}"}},"patient":{{"reference":"Patient/{}"}},"owner":{{"reference":"Organization/{}"}}}}"#,
            info.text,
            patient_id(p),
            org_id(plan.org)
        );
        out
    }

    pub fn observation_json(&self, p: usize, plan: &PatientPlan, i: usize) -> String {
        let r = self.reading(p, plan, i);
        let kind = plan
            .devices
            .get(r.device)
            .copied()
            .unwrap_or(DeviceKind::BpMonitor);
        let id = observation_id(p, i);
        let mut out = String::with_capacity(1100);
        out.push_str(r#"{"resourceType":"Observation","id":""#);
        out.push_str(&id);
        // The device's own measurement number: unique, and not the resource id.
        out.push_str(
            r#"","identifier":[{"system":"urn:vitalbridge:bench:rpm:measurement","value":""#,
        );
        out.push_str(&Self::device_serial(p, r.device, kind));
        let _ = write!(out, "-{i:06}");
        out.push_str(concat!(
            r#""}],"status":"final","category":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"vital-signs","display":"Vital Signs"}],"text":"Vital Signs"}],"#,
            r#""code":{"coding":["#
        ));
        push_coding(&mut out, LOINC, r.vital.loinc(), r.vital.display());
        if r.vital == Vital::SpO2 {
            // The pulse-oximetry code with the generic one, as the vital-signs
            // profile requires.
            out.push(',');
            push_coding(
                &mut out,
                LOINC,
                "2708-6",
                "Oxygen saturation in Arterial blood",
            );
        }
        out.push_str(r#"],"text":""#);
        out.push_str(r.vital.text());
        out.push_str(r#""},"subject":{"reference":"Patient/"#);
        out.push_str(&patient_id(p));
        out.push_str(r#""},"effectiveDateTime":""#);
        out.push_str(&util::timestamp_with_offset(
            r.effective,
            plan.utc_offset_min,
        ));
        out.push_str(r#"","device":{"reference":"Device/"#);
        out.push_str(&device_id(p, r.device));
        out.push_str(r#""},"#);
        let mut num = String::with_capacity(8);
        match r.vital {
            Vital::BloodPressure => {
                // A panel: the values are in the components, none at the top.
                out.push_str(r#""component":[{"code":{"coding":["#);
                push_coding(&mut out, LOINC, "8480-6", "Systolic blood pressure");
                out.push_str(r#"]},"#);
                push_quantity(&mut out, &r.value.to_string(), "mmHg", "mm[Hg]");
                out.push_str(r#"},{"code":{"coding":["#);
                push_coding(&mut out, LOINC, "8462-4", "Diastolic blood pressure");
                out.push_str(r#"]},"#);
                push_quantity(&mut out, &r.value2.to_string(), "mmHg", "mm[Hg]");
                out.push_str("}]");
            }
            Vital::HeartRate => {
                push_quantity(&mut out, &r.value.to_string(), "beats/minute", "/min")
            }
            Vital::Weight => {
                push_tenths(&mut num, r.value);
                push_quantity(&mut out, &num, "kg", "kg");
            }
            Vital::SpO2 => push_quantity(&mut out, &r.value.to_string(), "%", "%"),
            Vital::Temperature => {
                push_tenths(&mut num, r.value);
                push_quantity(&mut out, &num, "C", "Cel");
            }
            Vital::Glucose => push_quantity(&mut out, &r.value.to_string(), "mg/dL", "mg/dL"),
        }
        out.push('}');
        out
    }

    /// Every (Patient, device index), in write order.
    fn device_list(&self) -> Vec<(usize, usize)> {
        (0..self.patients)
            .flat_map(|p| (0..self.patient(p).devices.len()).map(move |d| (p, d)))
            .collect()
    }
}

/// A resource to PUT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub resource_type: &'static str,
    pub id: String,
    pub body: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Organization,
    Patient,
    Device,
    Observation,
}

impl Kind {
    fn resource_type(self) -> &'static str {
        match self {
            Kind::Organization => "Organization",
            Kind::Patient => "Patient",
            Kind::Device => "Device",
            Kind::Observation => "Observation",
        }
    }
}

/// The resources of one Bundle: indices `start..end` of one kind (Devices
/// index the device list, Observations run Patient by Patient).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Chunk {
    kind: Kind,
    start: usize,
    end: usize,
}

/// The Bundles of each phase. Referenced resources come in earlier phases
/// (clinics, Patients, Devices, Observations), so no phase refers to
/// something that does not exist yet, should the server check references.
fn phases(ds: &DataSet, bundle_size: usize, devices: usize) -> Vec<Vec<Chunk>> {
    let split = |kind, n: usize| {
        (0..n)
            .step_by(bundle_size.max(1))
            .map(|start| Chunk {
                kind,
                start,
                end: (start + bundle_size).min(n),
            })
            .collect::<Vec<_>>()
    };
    vec![
        split(Kind::Organization, ds.orgs),
        split(Kind::Patient, ds.patients),
        split(Kind::Device, devices),
        split(Kind::Observation, ds.observations()),
    ]
}

/// Id of resource `index` of `kind`.
fn chunk_id(ds: &DataSet, devices: &[(usize, usize)], kind: Kind, index: usize) -> String {
    let per = ds.per_patient.max(1);
    match kind {
        Kind::Organization => org_id(index),
        Kind::Patient => patient_id(index),
        Kind::Device => {
            let (p, d) = devices.get(index).copied().unwrap_or_default();
            device_id(p, d)
        }
        Kind::Observation => observation_id(index / per, index % per),
    }
}

fn chunk_entries(ds: &DataSet, devices: &[(usize, usize)], chunk: Chunk) -> Vec<Entry> {
    let per = ds.per_patient.max(1);
    // Consecutive Observations mostly share their Patient: plan it once.
    let mut plan: Option<(usize, PatientPlan)> = None;
    let mut plan_of = |p: usize| -> PatientPlan {
        match &plan {
            Some((q, pl)) if *q == p => pl.clone(),
            _ => {
                let pl = ds.patient(p);
                plan = Some((p, pl.clone()));
                pl
            }
        }
    };
    (chunk.start..chunk.end)
        .map(|index| {
            let body = match chunk.kind {
                Kind::Organization => ds.organization_json(index),
                Kind::Patient => ds.patient_json(index, &plan_of(index)),
                Kind::Device => {
                    let (p, d) = devices.get(index).copied().unwrap_or_default();
                    ds.device_json(p, &plan_of(p), d)
                }
                Kind::Observation => {
                    let p = index / per;
                    ds.observation_json(p, &plan_of(p), index % per)
                }
            };
            Entry {
                resource_type: chunk.kind.resource_type(),
                id: chunk_id(ds, devices, chunk.kind, index),
                body,
            }
        })
        .collect()
}

/// A `transaction` Bundle that PUTs each entry at its own id (update as
/// create), so writing it again changes nothing but versions.
pub fn put_bundle_json(base: &str, entries: &[Entry]) -> String {
    let size: usize = entries
        .iter()
        .map(|e| e.body.len() + base.len() + 2 * e.id.len() + 96)
        .sum();
    let mut out = String::with_capacity(size + 64);
    out.push_str(r#"{"resourceType":"Bundle","type":"transaction","entry":["#);
    for (i, e) in entries.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(
            out,
            r#"{{"fullUrl":"{base}/{ty}/{id}","resource":{body},"request":{{"method":"PUT","url":"{ty}/{id}"}}}}"#,
            ty = e.resource_type,
            id = e.id,
            body = e.body
        );
    }
    out.push_str("]}");
    out
}

/// Checks a `transaction-response`: one 2xx entry per request entry and,
/// where the server gives a location, the id that was PUT (a server that
/// assigned its own ids would break the searches' deterministic ids).
fn check_transaction_response(body: &[u8], entries: &[Entry]) -> Result<(), String> {
    let bundle: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("response is not JSON: {e}"))?;
    if bundle.get("resourceType").and_then(|v| v.as_str()) != Some("Bundle") {
        return Err(format!(
            "response is not a Bundle: {}",
            snippet(&String::from_utf8_lossy(body), 200)
        ));
    }
    let got = bundle
        .get("entry")
        .and_then(|e| e.as_array())
        .map_or(&[][..], Vec::as_slice);
    if got.len() != entries.len() {
        return Err(format!(
            "{} response entries for {} requests",
            got.len(),
            entries.len()
        ));
    }
    for (resp, want) in got.iter().zip(entries) {
        let response = resp.get("response");
        let status = response
            .and_then(|r| r.get("status"))
            .and_then(|s| s.as_str())
            .unwrap_or("");
        if !status.trim_start().starts_with('2') {
            return Err(format!(
                "{}/{}: status {status:?}",
                want.resource_type, want.id
            ));
        }
        if let Some(location) = response
            .and_then(|r| r.get("location"))
            .and_then(|l| l.as_str())
            && id_from_location(location, want.resource_type) != Some(want.id.as_str())
        {
            return Err(format!(
                "{}/{} was stored as {location}: the server did not keep the client's id",
                want.resource_type, want.id
            ));
        }
    }
    Ok(())
}

/// What `Basic/rpm-seed` records.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Marker {
    data: DataSet,
    bundle_size: usize,
    complete: bool,
}

const PARAMS_URL: &str = "urn:vitalbridge:bench:rpm:params";
const BUNDLE_SIZE_URL: &str = "urn:vitalbridge:bench:rpm:bundle-size";
const STATE_URL: &str = "urn:vitalbridge:bench:rpm:state";

fn params_string(ds: &DataSet) -> String {
    format!(
        "{GENERATOR_VERSION} patients={} per-patient={} orgs={} rng-seed={} end={}",
        ds.patients, ds.per_patient, ds.orgs, ds.rng_seed, ds.end
    )
}

/// `None` for another generator version or anything unreadable: such data
/// is rewritten rather than trusted.
fn parse_params(s: &str) -> Option<DataSet> {
    let mut words = s.split_whitespace();
    if words.next()? != GENERATOR_VERSION {
        return None;
    }
    let (mut patients, mut per_patient, mut orgs, mut rng_seed, mut end) =
        (None, None, None, None, None);
    for w in words {
        let (k, v) = w.split_once('=')?;
        match k {
            "patients" => patients = v.parse().ok(),
            "per-patient" => per_patient = v.parse().ok(),
            "orgs" => orgs = v.parse().ok(),
            "rng-seed" => rng_seed = v.parse().ok(),
            "end" => end = v.parse().ok(),
            _ => return None,
        }
    }
    Some(DataSet {
        patients: patients?,
        per_patient: per_patient?,
        orgs: orgs?,
        rng_seed: rng_seed?,
        end: end?,
    })
}

fn marker_json(m: &Marker) -> String {
    let created = utc(m.data.end);
    let created = created.get(..10).unwrap_or(&created);
    serde_json::json!({
        "resourceType": "Basic",
        "id": MARKER_ID,
        "extension": [
            { "url": PARAMS_URL, "valueString": params_string(&m.data) },
            { "url": BUNDLE_SIZE_URL, "valueInteger": m.bundle_size },
            { "url": STATE_URL, "valueCode": if m.complete { "complete" } else { "in-progress" } },
        ],
        "identifier": [{ "system": "urn:vitalbridge:bench", "value": MARKER_ID }],
        "code": { "text": "vitalbridge bench remote-monitoring data set" },
        "created": created,
    })
    .to_string()
}

fn parse_marker(body: &[u8]) -> Option<Marker> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let ext = |url: &str| {
        v.get("extension")?
            .as_array()?
            .iter()
            .find(|e| e.get("url").and_then(|u| u.as_str()) == Some(url))
            .cloned()
    };
    Some(Marker {
        data: parse_params(ext(PARAMS_URL)?.get("valueString")?.as_str()?)?,
        bundle_size: ext(BUNDLE_SIZE_URL)?
            .get("valueInteger")?
            .as_u64()?
            .try_into()
            .ok()?,
        complete: ext(STATE_URL)?.get("valueCode")?.as_str()? == "complete",
    })
}

async fn read_marker(ctx: &Ctx) -> anyhow::Result<Option<Marker>> {
    let url = ctx.url(&format!("Basic/{MARKER_ID}"))?;
    let resp = ctx
        .http
        .get(url.clone())
        .bearer()
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    let status = resp.status();
    let body = resp
        .bytes()
        .await
        .with_context(|| format!("GET {url}: reading the body"))?;
    match status {
        StatusCode::OK => Ok(parse_marker(&body)),
        StatusCode::NOT_FOUND | StatusCode::GONE => Ok(None),
        s => bail!(
            "GET {url}: {s}: {}",
            snippet(&String::from_utf8_lossy(&body), 200)
        ),
    }
}

async fn write_marker(ctx: &Ctx, m: &Marker) -> anyhow::Result<()> {
    let url = ctx.url(&format!("Basic/{MARKER_ID}"))?;
    let resp = ctx
        .http
        .put(url.clone())
        .header(header::CONTENT_TYPE, content_type_fhir())
        .header("Prefer", prefer_minimal())
        .body(marker_json(m))
        .bearer()
        .send()
        .await
        .with_context(|| format!("PUT {url}"))?;
    let status = resp.status();
    if !status.is_success() {
        let body = resp.text().await.unwrap_or_default();
        bail!("PUT {url}: {status}: {}", snippet(&body, 300));
    }
    Ok(())
}

/// Whether `{resource_type}/{id}` exists (for resuming).
async fn exists(ctx: &Ctx, resource_type: &str, id: &str) -> anyhow::Result<bool> {
    let url = ctx.url(&format!("{resource_type}/{id}"))?;
    let resp = ctx
        .http
        .get(url.clone())
        .bearer()
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    let status = resp.status();
    // Read to the end so the connection is reused.
    let _ = resp.bytes().await;
    match status {
        StatusCode::OK => Ok(true),
        StatusCode::NOT_FOUND | StatusCode::GONE => Ok(false),
        s => bail!("GET {url}: {s}"),
    }
}

/// What seeding did, for the console and the JSON report.
#[derive(Debug, Clone, Serialize)]
pub struct SeedReport {
    pub patients: usize,
    pub per_patient: usize,
    pub orgs: usize,
    pub rng_seed: u64,
    pub end: String,
    /// Resources in the data set.
    pub resources: u64,
    /// Resources written by this run.
    pub written: u64,
    /// Resources found already there and not written again.
    pub skipped: u64,
    pub bundles: u64,
    pub elapsed_s: f64,
    /// Written resources per second.
    pub resources_per_s: f64,
    /// The server had the complete data set: nothing was written.
    pub already_complete: bool,
}

#[derive(Default)]
struct Counters {
    written: AtomicU64,
    skipped: AtomicU64,
    bundles: AtomicU64,
}

/// POSTs one transaction Bundle, retrying transient failures (PUTs are
/// idempotent, so a retry after an unknown outcome is safe).
async fn send_bundle(
    ctx: &Ctx,
    base_url: &Url,
    entries: &[Entry],
    progress: &Progress,
) -> anyhow::Result<()> {
    let body = Bytes::from(put_bundle_json(&ctx.base, entries));
    let first = entries
        .first()
        .map(|e| format!("{}/{}", e.resource_type, e.id))
        .unwrap_or_default();
    let mut attempt = 1;
    loop {
        let (err, retryable) = match ctx
            .http
            .post(base_url.clone())
            .header(header::CONTENT_TYPE, content_type_fhir())
            .header("Prefer", prefer_minimal())
            .body(body.clone())
            .bearer()
            .send()
            .await
        {
            Err(e) => (format!("{e}"), true),
            Ok(resp) => {
                let status = resp.status();
                match resp.bytes().await {
                    Err(e) => (format!("{status}, reading the body: {e}"), true),
                    Ok(text) if status.is_success() => {
                        match check_transaction_response(&text, entries) {
                            Ok(()) => return Ok(()),
                            Err(why) => (why, false),
                        }
                    }
                    Ok(text) => (
                        format!(
                            "{status}: {}",
                            snippet(&String::from_utf8_lossy(&text), 300)
                        ),
                        status.is_server_error() || matches!(status.as_u16(), 408 | 409 | 429),
                    ),
                }
            }
        };
        if !retryable || attempt >= BUNDLE_ATTEMPTS {
            bail!(
                "transaction Bundle of {} entries from {first}: {err}",
                entries.len()
            );
        }
        progress.println(&format!(
            "rpm-seed: Bundle from {first} failed ({err}); retry {attempt}/{}",
            BUNDLE_ATTEMPTS - 1
        ));
        tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await;
        attempt += 1;
    }
}

/// Writes the data set (or what is missing of it) and returns it with a report.
pub async fn seed(ctx: &Ctx, opts: &Options) -> anyhow::Result<(DataSet, SeedReport)> {
    let started = Instant::now();
    let marker = read_marker(ctx).await?;
    // The recorded end keeps the data where it is when nothing says otherwise.
    let end = opts
        .end
        .or(marker.as_ref().map(|m| m.data.end))
        .unwrap_or_else(today_utc);
    let ds = opts.data_set(end);
    let devices = ds.device_list();
    let total = (ds.orgs + ds.patients + devices.len()) as u64 + ds.observations() as u64;
    let mut report = SeedReport {
        patients: ds.patients,
        per_patient: ds.per_patient,
        orgs: ds.orgs,
        rng_seed: ds.rng_seed,
        end: utc(ds.end),
        resources: total,
        written: 0,
        skipped: 0,
        bundles: 0,
        elapsed_s: 0.0,
        resources_per_s: 0.0,
        already_complete: false,
    };

    let same = marker.as_ref().is_some_and(|m| m.data == ds);
    if same && !opts.reseed && marker.as_ref().is_some_and(|m| m.complete) {
        eprintln!(
            "rpm-seed: the server already has this data set ({}); nothing to write \
             (--rpm-reseed writes it again)",
            ds.describe()
        );
        report.already_complete = true;
        report.skipped = total;
        report.elapsed_s = started.elapsed().as_secs_f64();
        return Ok((ds, report));
    }
    let resume = same
        && !opts.reseed
        && marker
            .as_ref()
            .is_some_and(|m| m.bundle_size == opts.bundle_size);
    if let Some(m) = marker.as_ref().filter(|m| m.data != ds) {
        eprintln!(
            "rpm-seed: replacing the server's data set ({}); resources beyond the new counts \
             are left as they are",
            m.data.describe()
        );
    }
    write_marker(
        ctx,
        &Marker {
            data: ds.clone(),
            bundle_size: opts.bundle_size,
            complete: false,
        },
    )
    .await?;
    eprintln!(
        "rpm-seed: {} ({} Organizations, {} Patients, {} Devices, {} Observations) in \
         transaction Bundles of {}, {} in flight{}",
        ds.describe(),
        ds.orgs,
        ds.patients,
        devices.len(),
        ds.observations(),
        opts.bundle_size,
        opts.concurrency,
        if resume {
            "; resuming: Bundles already stored are skipped"
        } else {
            ""
        }
    );

    let base_url = ctx.base_url()?;
    let progress = Progress::new("rpm-seed", total, "resources");
    let counters = Counters::default();
    for phase in phases(&ds, opts.bundle_size, devices.len()) {
        let (ds, devices, base_url, progress, counters) =
            (&ds, &devices, &base_url, &progress, &counters);
        stream::iter(phase)
            .map(Ok::<Chunk, anyhow::Error>)
            .try_for_each_concurrent(opts.concurrency, |chunk| async move {
                let n = (chunk.end - chunk.start) as u64;
                if resume {
                    let last = chunk_id(ds, devices, chunk.kind, chunk.end.saturating_sub(1));
                    if exists(ctx, chunk.kind.resource_type(), &last).await? {
                        counters.skipped.fetch_add(n, Ordering::Relaxed);
                        progress.inc(n);
                        return Ok(());
                    }
                }
                let entries = chunk_entries(ds, devices, chunk);
                send_bundle(ctx, base_url, &entries, progress).await?;
                counters.written.fetch_add(n, Ordering::Relaxed);
                counters.bundles.fetch_add(1, Ordering::Relaxed);
                progress.inc(n);
                Ok(())
            })
            .await
            .inspect_err(|_| progress.finish())
            .context("rpm-seed stopped; run it again with the same flags to resume")?;
    }
    progress.finish();
    write_marker(
        ctx,
        &Marker {
            data: ds.clone(),
            bundle_size: opts.bundle_size,
            complete: true,
        },
    )
    .await?;

    let elapsed = started.elapsed().as_secs_f64();
    report.written = counters.written.load(Ordering::Relaxed);
    report.skipped = counters.skipped.load(Ordering::Relaxed);
    report.bundles = counters.bundles.load(Ordering::Relaxed);
    report.elapsed_s = elapsed;
    report.resources_per_s = report.written as f64 / elapsed.max(1e-6);
    eprintln!(
        "rpm-seed: wrote {} resources in {} Bundles in {:.1} s: {:.0} resources/s{}",
        report.written,
        report.bundles,
        elapsed,
        report.resources_per_s,
        if report.skipped > 0 {
            format!(" ({} already there, skipped)", report.skipped)
        } else {
            String::new()
        }
    );
    Ok((ds, report))
}

/// The data set the searches run against: the flags, with the end from
/// `--rpm-end` or else from the server's marker (it is not derivable from
/// the flags when the seeding defaulted it to its own day).
pub async fn dataset_for_search(ctx: &Ctx, opts: &Options) -> anyhow::Result<DataSet> {
    let marker = read_marker(ctx).await?;
    let end = match (opts.end, &marker) {
        (Some(end), _) => end,
        (None, Some(m)) => m.data.end,
        (None, None) => bail!(
            "no remote-monitoring data set on {}: Basic/{MARKER_ID} does not exist. Seed it first \
             with `--scenarios rpm-seed` and the same --rpm-* flags (or give --rpm-end for data \
             seeded without the marker)",
            ctx.base
        ),
    };
    let ds = opts.data_set(end);
    match &marker {
        Some(m) if m.data != ds => eprintln!(
            "warning: the server's data set is {}, the --rpm-* flags say {}; searches for \
             resources it lacks count as errors",
            m.data.describe(),
            ds.describe()
        ),
        Some(m) if !m.complete => eprintln!(
            "warning: seeding of the data set did not complete (run rpm-seed again); searches \
             may find nothing for the missing Patients"
        ),
        _ => {}
    }
    Ok(ds)
}

/// `|` in a token search value, percent-encoded: the `url` crate leaves it
/// as is, and it is not allowed raw in a request target.
const PIPE: &str = "%7C";

/// The request paths of a search scenario, per operation, with what each
/// response must contain. One path per Patient (or clinic) to pick from at
/// random; `code-total` has a single one.
pub fn search_paths(ds: &DataSet, sc: Scenario) -> Vec<(Vec<String>, SearchExpect)> {
    let obs = SearchExpect {
        resource_type: "Observation",
        need_total: false,
    };
    let per_patient = |f: &dyn Fn(&str) -> String| -> Vec<String> {
        (0..ds.patients).map(|p| f(&patient_id(p))).collect()
    };
    match sc {
        Scenario::SearchPcd => {
            let since = utc(ds.end - RECENT_SECS);
            vec![(
                per_patient(&|id| {
                    format!(
                        "Observation?patient=Patient/{id}&category=vital-signs&date=ge{since}&_count=50"
                    )
                }),
                obs,
            )]
        }
        Scenario::SearchPc => vec![(
            per_patient(&|id| {
                format!("Observation?patient={id}&code={LOINC}{PIPE}8867-4&_count=50")
            }),
            obs,
        )],
        Scenario::Lastn => vec![(
            per_patient(&|id| {
                format!("Observation/$lastn?patient={id}&category=vital-signs&max=1")
            }),
            obs,
        )],
        Scenario::CodeTotal => vec![(
            vec![format!(
                "Observation?code={LOINC}{PIPE}29463-7&_total=accurate&_count=10"
            )],
            SearchExpect {
                resource_type: "Observation",
                need_total: true,
            },
        )],
        Scenario::SearchOrg => vec![
            (
                (0..ds.orgs_in_use())
                    .map(|o| format!("Patient?organization={}&_count=50", org_id(o)))
                    .collect(),
                SearchExpect {
                    resource_type: "Patient",
                    need_total: false,
                },
            ),
            (
                per_patient(&|id| format!("Device?patient={id}")),
                SearchExpect {
                    resource_type: "Device",
                    need_total: false,
                },
            ),
        ],
        Scenario::Read
        | Scenario::Create
        | Scenario::Update
        | Scenario::Delete
        | Scenario::Mixed
        | Scenario::RpmSeed => Vec::new(),
    }
}

/// [`search_paths`] as parsed URLs for the workers.
pub fn search_ops(ctx: &Ctx, ds: &DataSet, sc: Scenario) -> anyhow::Result<Vec<SearchOp>> {
    search_paths(ds, sc)
        .into_iter()
        .map(|(paths, expect)| {
            Ok(SearchOp {
                urls: paths
                    .iter()
                    .map(|p| ctx.url(p))
                    .collect::<anyhow::Result<_>>()?,
                expect,
            })
        })
        .collect()
}

/// A line for the report notes: what the searches ran against.
pub fn search_note(ds: &DataSet, sc: Scenario) -> String {
    let target = match sc {
        Scenario::CodeTotal => "one fixed query over all Patients".to_string(),
        Scenario::SearchOrg => format!(
            "a random clinic of {} / a random Patient of {}",
            ds.orgs_in_use(),
            ds.patients
        ),
        _ => format!("a random Patient of {}", ds.patients),
    };
    format!(
        "{target}; data set: {} Observations per Patient over the year to {}",
        ds.per_patient,
        utc(ds.end)
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a panic is how a test fails
mod tests {
    use std::collections::{BTreeMap, HashSet};

    use serde_json::Value;

    use super::*;

    fn small() -> DataSet {
        DataSet {
            patients: 40,
            per_patient: 250,
            orgs: 7,
            rng_seed: 99,
            end: 1_735_689_600, // 2025-01-01T00:00:00Z
        }
    }

    fn all_entries(ds: &DataSet, bundle_size: usize) -> Vec<Vec<Entry>> {
        let devices = ds.device_list();
        phases(ds, bundle_size, devices.len())
            .into_iter()
            .flatten()
            .map(|c| chunk_entries(ds, &devices, c))
            .collect()
    }

    fn parse(s: &str) -> Value {
        serde_json::from_str(s).unwrap_or_else(|e| panic!("{e}: {s}"))
    }

    #[test]
    fn ids_are_fixed_and_content_deterministic() {
        assert_eq!(patient_id(1), "rpm-p00001");
        assert_eq!(org_id(3), "rpm-org003");
        assert_eq!(device_id(42, 1), "rpm-p00042-d1");
        assert_eq!(observation_id(42, 17), "rpm-p00042-o00017");
        let ds = small();
        let a = all_entries(&ds, 97);
        assert_eq!(a, all_entries(&ds, 97));
        // Bundling does not change what is written.
        let flat = |v: Vec<Vec<Entry>>| v.into_iter().flatten().collect::<Vec<_>>();
        assert_eq!(flat(a.clone()), flat(all_entries(&ds, 500)));
        // Another seed changes values, not ids.
        let other = all_entries(
            &DataSet {
                rng_seed: 100,
                ..ds.clone()
            },
            97,
        );
        let ids = |v: &Vec<Vec<Entry>>| {
            v.iter()
                .flatten()
                .filter(|e| e.resource_type != "Device")
                .map(|e| e.id.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(&a), ids(&other));
        assert_ne!(flat(a.clone()), flat(other));
        // Every id is unique, a valid FHIR id, and matches the body's.
        let mut seen = HashSet::new();
        for e in a.iter().flatten() {
            assert!(crate::bench::fhir::is_fhir_id(&e.id), "{}", e.id);
            assert!(seen.insert((e.resource_type, e.id.clone())), "{}", e.id);
            let v = parse(&e.body);
            assert_eq!(v["resourceType"], e.resource_type);
            assert_eq!(v["id"], e.id.as_str());
        }
        let n_obs = seen.iter().filter(|(t, _)| *t == "Observation").count();
        assert_eq!(n_obs, ds.observations());
    }

    #[test]
    fn bundles_put_at_fixed_ids_in_dependency_order() {
        let ds = small();
        let devices = ds.device_list();
        let ph = phases(&ds, 100, devices.len());
        let kinds: Vec<Kind> = ph.iter().map(|p| p[0].kind).collect();
        assert_eq!(
            kinds,
            [
                Kind::Organization,
                Kind::Patient,
                Kind::Device,
                Kind::Observation
            ]
        );
        assert_eq!(ph[3].len(), 100); // 10 000 Observations
        assert_eq!(ph[3].last().unwrap().end, ds.observations());
        let entries = chunk_entries(&ds, &devices, ph[3][7]);
        let b = parse(&put_bundle_json("http://h/fhir", &entries));
        assert_eq!(b["type"], "transaction");
        let e = &b["entry"][0];
        assert_eq!(e["request"]["method"], "PUT");
        assert_eq!(e["request"]["url"], "Observation/rpm-p00002-o00200");
        assert_eq!(e["fullUrl"], "http://h/fhir/Observation/rpm-p00002-o00200");
        assert_eq!(e["resource"]["id"], "rpm-p00002-o00200");
        assert_eq!(b["entry"].as_array().unwrap().len(), 100);
        // The resume probe looks at the Bundle's last resource.
        assert_eq!(
            chunk_id(&ds, &devices, Kind::Observation, ph[3][7].end - 1),
            "rpm-p00003-o00049"
        );
    }

    #[test]
    fn observations_are_well_formed() {
        let ds = small();
        let start = ds.end - WINDOW_SECS;
        let mut bp = 0;
        for p in 0..ds.patients {
            let plan = ds.patient(p);
            let mut last = i64::MIN;
            for i in 0..ds.per_patient {
                let r = ds.reading(p, &plan, i);
                assert!((start..ds.end).contains(&r.effective), "{r:?}");
                assert!(r.effective >= last, "readings run in id order");
                last = r.effective;
                let o = parse(&ds.observation_json(p, &plan, i));
                assert_eq!(o["status"], "final");
                assert_eq!(
                    o["category"][0]["coding"][0]["system"],
                    "http://terminology.hl7.org/CodeSystem/observation-category"
                );
                assert_eq!(o["category"][0]["coding"][0]["code"], "vital-signs");
                assert_eq!(o["code"]["coding"][0]["system"], LOINC);
                assert_eq!(o["code"]["coding"][0]["code"], r.vital.loinc());
                assert_eq!(
                    o["subject"]["reference"],
                    format!("Patient/{}", patient_id(p))
                );
                assert_eq!(
                    o["device"]["reference"],
                    format!("Device/{}", device_id(p, r.device))
                );
                assert!(r.device < plan.devices.len());
                // Seconds and an offset: 2024-03-02T07:14:33-05:00.
                let when = o["effectiveDateTime"].as_str().unwrap();
                assert_eq!(when.len(), 25, "{when}");
                assert!(
                    when.ends_with(":00") && when[19..].starts_with('-'),
                    "{when}"
                );
                let parsed = time::OffsetDateTime::parse(
                    when,
                    &time::format_description::well_known::Rfc3339,
                )
                .unwrap();
                assert_eq!(parsed.unix_timestamp(), r.effective);
                let units = |q: &Value| {
                    assert_eq!(q["system"], UCUM);
                    q["code"].as_str().unwrap().to_string()
                };
                if r.vital == Vital::BloodPressure {
                    bp += 1;
                    let keys: Vec<&String> = o.as_object().unwrap().keys().collect();
                    assert!(
                        !keys.iter().any(|k| k.starts_with("value")),
                        "no value[x] on a panel: {keys:?}"
                    );
                    let c = o["component"].as_array().unwrap();
                    assert_eq!(c.len(), 2);
                    assert_eq!(c[0]["code"]["coding"][0]["code"], "8480-6");
                    assert_eq!(c[1]["code"]["coding"][0]["code"], "8462-4");
                    assert_eq!(units(&c[0]["valueQuantity"]), "mm[Hg]");
                    assert_eq!(units(&c[1]["valueQuantity"]), "mm[Hg]");
                    let sys = c[0]["valueQuantity"]["value"].as_i64().unwrap();
                    let dia = c[1]["valueQuantity"]["value"].as_i64().unwrap();
                    assert!(
                        sys > dia && (90..=180).contains(&sys) && dia >= 50,
                        "{sys}/{dia}"
                    );
                } else {
                    assert!(o.get("component").is_none());
                    let unit = units(&o["valueQuantity"]);
                    let expected = match r.vital {
                        Vital::HeartRate => "/min",
                        Vital::Weight => "kg",
                        Vital::SpO2 => "%",
                        Vital::Temperature => "Cel",
                        Vital::Glucose => "mg/dL",
                        Vital::BloodPressure => unreachable!(),
                    };
                    assert_eq!(unit, expected);
                    if r.vital == Vital::SpO2 {
                        assert_eq!(o["code"]["coding"][1]["code"], "2708-6");
                    }
                }
            }
        }
        assert!(bp > 0);
    }

    #[test]
    fn code_mix_is_realistic() {
        let ds = small();
        let mut counts: BTreeMap<Vital, usize> = BTreeMap::new();
        let mut identifiers = HashSet::new();
        for p in 0..ds.patients {
            let plan = ds.patient(p);
            assert!((2..=3).contains(&plan.devices.len()), "{plan:?}");
            assert!(
                plan.devices
                    .iter()
                    .any(|d| matches!(d, DeviceKind::BpMonitor | DeviceKind::PulseOximeter)),
                "everyone has a heart rate source"
            );
            let mut hr = 0;
            for i in 0..ds.per_patient {
                let r = ds.reading(p, &plan, i);
                *counts.entry(r.vital).or_default() += 1;
                hr += usize::from(r.vital == Vital::HeartRate);
                let o = parse(&ds.observation_json(p, &plan, i));
                assert!(identifiers.insert(o["identifier"][0]["value"].to_string()));
            }
            assert!(hr > 0, "patient {p} has no heart rate");
        }
        let total = ds.observations();
        assert_eq!(counts.len(), 6, "{counts:?}");
        let share = |v| counts[&v] * 100 / total;
        // Blood pressure dominates a hypertension-heavy panel; every kind
        // has a real share.
        assert!(
            (15..=45).contains(&share(Vital::BloodPressure)),
            "{counts:?}"
        );
        for v in [Vital::HeartRate, Vital::Weight, Vital::SpO2, Vital::Glucose] {
            assert!(share(v) >= 5, "{v:?}: {counts:?}");
        }
        assert!(counts[&Vital::Temperature] > 0);
    }

    #[test]
    fn patients_devices_and_clinics() {
        let ds = small();
        let plan = ds.patient(9);
        let p = parse(&ds.patient_json(9, &plan));
        assert_eq!(
            p["managingOrganization"]["reference"],
            format!("Organization/{}", org_id(9 % 7))
        );
        assert!(matches!(p["gender"].as_str(), Some("female" | "male")));
        assert_eq!(p["birthDate"].as_str().unwrap().len(), 10);
        let d = parse(&ds.device_json(9, &plan, 0));
        assert_eq!(d["patient"]["reference"], "Patient/rpm-p00009");
        assert_eq!(
            d["owner"]["reference"],
            p["managingOrganization"]["reference"]
        );
        assert_eq!(d["type"]["coding"][0]["system"], MDC);
        assert_eq!(d["type"]["coding"][1]["system"], SNOMED);
        assert!(
            d["identifier"][0]["value"]
                .as_str()
                .unwrap()
                .contains("-00009-0")
        );
        let o = parse(&ds.organization_json(3));
        assert_eq!(o["id"], "rpm-org003");
        // Devices listed in Patient order, 2-3 each.
        let list = ds.device_list();
        assert!((2 * ds.patients..=3 * ds.patients).contains(&list.len()));
        assert_eq!(list[0], (0, 0));
    }

    #[test]
    fn marker_round_trip() {
        let m = Marker {
            data: small(),
            bundle_size: 500,
            complete: true,
        };
        let json = marker_json(&m);
        let v = parse(&json);
        assert_eq!(v["resourceType"], "Basic");
        assert_eq!(v["created"], "2025-01-01");
        assert_eq!(parse_marker(json.as_bytes()), Some(m.clone()));
        let partial = Marker {
            complete: false,
            ..m.clone()
        };
        assert_eq!(
            parse_marker(marker_json(&partial).as_bytes()),
            Some(partial)
        );
        // Another generator version is not trusted.
        let old = json.replace(&format!("\"{GENERATOR_VERSION} "), "\"v0 ");
        assert_ne!(old, json);
        assert_eq!(parse_marker(old.as_bytes()), None);
        assert_eq!(parse_marker(b"{}"), None);
    }

    #[test]
    fn transaction_responses_are_checked() {
        let entries = vec![
            Entry {
                resource_type: "Patient",
                id: "rpm-p00000".into(),
                body: String::new(),
            },
            Entry {
                resource_type: "Patient",
                id: "rpm-p00001".into(),
                body: String::new(),
            },
        ];
        let ok = br#"{"resourceType":"Bundle","entry":[
            {"response":{"status":"201 Created","location":"Patient/rpm-p00000/_history/1"}},
            {"response":{"status":"200 OK"}}]}"#;
        assert_eq!(check_transaction_response(ok, &entries), Ok(()));
        let renamed = br#"{"resourceType":"Bundle","entry":[
            {"response":{"status":"201","location":"Patient/abc/_history/1"}},
            {"response":{"status":"200"}}]}"#;
        assert!(check_transaction_response(renamed, &entries).is_err());
        let short = br#"{"resourceType":"Bundle","entry":[{"response":{"status":"200"}}]}"#;
        assert!(check_transaction_response(short, &entries).is_err());
        let failed = br#"{"resourceType":"Bundle","entry":[
            {"response":{"status":"200"}},{"response":{"status":"400 Bad Request"}}]}"#;
        assert!(check_transaction_response(failed, &entries).is_err());
    }

    #[test]
    fn search_paths_follow_the_data_set() {
        let ds = small();
        let pcd = search_paths(&ds, Scenario::SearchPcd);
        assert_eq!(pcd.len(), 1);
        assert_eq!(pcd[0].0.len(), ds.patients);
        assert_eq!(
            pcd[0].0[5],
            "Observation?patient=Patient/rpm-p00005&category=vital-signs\
             &date=ge2024-12-02T00:00:00Z&_count=50"
        );
        assert_eq!(
            search_paths(&ds, Scenario::SearchPc)[0].0[0],
            "Observation?patient=rpm-p00000&code=http://loinc.org%7C8867-4&_count=50"
        );
        assert_eq!(
            search_paths(&ds, Scenario::Lastn)[0].0[1],
            "Observation/$lastn?patient=rpm-p00001&category=vital-signs&max=1"
        );
        let total = search_paths(&ds, Scenario::CodeTotal);
        assert_eq!(
            total[0].0,
            ["Observation?code=http://loinc.org%7C29463-7&_total=accurate&_count=10"]
        );
        assert!(total[0].1.need_total);
        let org = search_paths(&ds, Scenario::SearchOrg);
        assert_eq!(org.len(), Scenario::SearchOrg.ops().len());
        assert_eq!(org[0].0.len(), 7);
        assert_eq!(org[0].0[2], "Patient?organization=rpm-org002&_count=50");
        assert_eq!(org[0].1.resource_type, "Patient");
        assert_eq!(org[1].0[3], "Device?patient=rpm-p00003");
        // Fewer Patients than clinics: only clinics with Patients are searched.
        let tiny = DataSet {
            patients: 3,
            ..ds.clone()
        };
        assert_eq!(search_paths(&tiny, Scenario::SearchOrg)[0].0.len(), 3);
        for sc in Scenario::SEARCH {
            assert_eq!(search_paths(&ds, sc).len(), sc.ops().len(), "{sc}");
        }
        // The URLs parse and keep the encoded pipe.
        let url = Url::parse(&format!(
            "http://h/fhir/{}",
            search_paths(&ds, Scenario::SearchPc)[0].0[0]
        ))
        .unwrap();
        assert!(url.as_str().contains("%7C8867-4"));
    }

    #[test]
    fn end_flag_formats() {
        assert_eq!(parse_end("2025-01-01").unwrap(), 1_735_689_600);
        assert_eq!(
            parse_end("2025-01-01T05:00:00+05:00").unwrap(),
            1_735_689_600
        );
        assert!(parse_end("yesterday").is_err());
        assert!(parse_end("1970-06-01").is_err());
        assert_eq!(today_utc() % DAY, 0);
    }
}
