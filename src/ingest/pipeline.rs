//! From readings in to Observations stored (issue 5, items 5, 7 and 8), for every way in: find
//! the Device, check it is active and whose it was when it measured, decode, normalise, and
//! store what is new in ONE transaction with the raw message, a Provenance per device, and the
//! Device's battery, clock offset and last-seen. Each reading gets its own result; a bad one
//! never keeps the good ones of the same message out.
//!
//! Exactly once: an Observation's id is the name-based UUID normalisation gives it (from the
//! device, the patient, the kind and the device's own time stamp: the PHD IG de-duplication
//! identifier), so the same reading sent again names the same resource. Under a per-id lock,
//! ids that exist are answered as duplicates with those ids; only the rest are created.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;
use serde_json::{Value, json};
use time::OffsetDateTime;

use super::gatt::{self, Measurement};
use super::{device, normalize, profiles, registry};
use crate::auth::tenancy::{self, OWNER_SYSTEM};
use crate::fhir::types::{ResourceId, ResourceType};
use crate::http::error::ApiError;
use crate::store::ingest::RawMessage;
use crate::store::{Method, Store, StoreTx, Write};

/// The identifier system naming a hub's Device by the OAuth client id it signs in with.
pub const HUB_CLIENT_SYSTEM: &str = "https://vitalbridge.dev/fhir/NamingSystem/hub-client";
/// The identifier system naming a raw inbound message by its SHA-256 (hex), in Provenance.
pub const MESSAGE_SYSTEM: &str = "https://vitalbridge.dev/fhir/NamingSystem/ingest-message-sha256";
/// When the registry last heard from a device (Device extension, `valueDateTime`).
pub const LAST_SEEN_URL: &str = "https://vitalbridge.dev/fhir/StructureDefinition/last-seen";
/// How far a device's clock is ahead of true time (Device extension, `valueQuantity` in s).
pub const CLOCK_OFFSET_URL: &str = "https://vitalbridge.dev/fhir/StructureDefinition/clock-offset";
/// MDC_ATTR_VAL_BATT_CHARGE: a Device property, in percent.
const BATTERY_CODE: &str = "67996";
const MDC: &str = "urn:iso:std:iso:11073:10101";
/// Last-seen is written at most this often (seconds), so that a device reporting all day does
/// not add a Device version per message.
const LAST_SEEN_EVERY: i64 = 15 * 60;
/// A clock offset change smaller than this (seconds) is drift within a reading's resolution.
const OFFSET_SLACK: i64 = 2;
/// How far in the future a receive time may be (the sender's clock), in seconds.
const RECEIVED_SLACK: i64 = 600;

/// Who sent a message, authenticated.
#[derive(Debug, Clone)]
pub struct Sender {
    /// `hub` or `cellular/{vendor}`.
    pub channel: String,
    /// The hub's client id, or the vendor.
    pub name: String,
    /// The organization whose devices it may report for.
    pub organization: String,
    /// The hub's own Device (resource id), if the sender is a hub.
    pub hub: Option<String>,
    /// The hub's Device as found when it signed in (to tell whether last-seen is due).
    pub hub_device: Option<Value>,
}

/// How a reading names its device.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    /// EUI-64, 16 upper-case hex digits.
    pub eui64: Option<String>,
    /// Bluetooth address `AA:BB:CC:DD:EE:FF`.
    pub address: Option<String>,
    /// Another identifier (system, value): a cellular device's IMEI, a vendor's device id.
    pub other: Option<(String, String)>,
}

impl Identity {
    pub fn other(system: &str, value: &str) -> Identity {
        Identity {
            other: Some((system.to_owned(), value.to_owned())),
            ..Default::default()
        }
    }

    /// The device's part of the de-duplication identifier.
    fn key(&self) -> Option<String> {
        device::device_key(self.eui64.as_deref(), self.address.as_deref())
            .or_else(|| self.other.as_ref().map(|(_, v)| v.clone()))
    }

    /// The identifiers its Device is found by (system, value), best first: the EUI-64 if it
    /// has one, then the Bluetooth address (a gateway sends both; the Device may have been
    /// registered by either).
    fn tokens(&self) -> Vec<(String, String)> {
        if self.eui64.is_none() && self.address.is_none() {
            return self.other.clone().into_iter().collect();
        }
        let identifiers = device::identifiers(self.eui64.as_deref(), self.address.as_deref());
        identifiers
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| {
                Some((
                    i["system"].as_str()?.to_owned(),
                    i["value"].as_str()?.to_owned(),
                ))
            })
            .collect()
    }
}

/// What a reading holds.
#[derive(Debug, Clone)]
pub enum Content {
    /// A characteristic value as the device sent it; decoded with the device model's profile.
    Gatt {
        uuid: u16,
        bytes: Vec<u8>,
        /// The model the sender names, when the Device does not say.
        model: Option<String>,
    },
    /// Decoded already (cellular vendors send values).
    Decoded(Box<Measurement>),
    /// Could not be read at all: why.
    Invalid(String),
}

/// One reading of a message.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub identity: Identity,
    /// When the hub (or vendor) received it from the device.
    pub received: OffsetDateTime,
    pub content: Content,
}

/// What became of one reading.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Accepted,
    Duplicate,
    Rejected,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ReadingResult {
    pub index: usize,
    pub status: Status,
    /// `Observation/{id}`: created (accepted) or found (duplicate).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub observations: Vec<String>,
    /// `Device/{id}`, once known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl ReadingResult {
    fn rejected(index: usize, device: Option<&str>, reason: impl Into<String>) -> Self {
        ReadingResult {
            index,
            status: Status::Rejected,
            observations: Vec::new(),
            device: device.map(|d| format!("Device/{d}")),
            reason: Some(reason.into()),
        }
    }
}

/// A registered device, as found at the start of the message.
#[derive(Clone)]
struct Known {
    id: ResourceId,
    resource: Value,
    /// When its current version was written (microseconds).
    last_updated: i64,
}

/// What the message changes on a Device.
#[derive(Default)]
struct DeviceNews {
    battery: Option<f64>,
    clock_offset: Option<i64>,
    seen: Option<OffsetDateTime>,
    /// Device Information service values (`device::information_field`, text).
    info: Vec<(&'static str, String)>,
}

/// The readings of one device ready to store: per reading, its index and Observations.
type Ready = Vec<(usize, Vec<(ResourceId, Value)>)>;

/// Processes a message's readings and stores what is new, with the raw `body`, in one
/// transaction. Results come in the readings' order.
pub async fn ingest(
    store: &Store,
    sender: &Sender,
    items: Vec<Incoming>,
    extra: Vec<ReadingResult>,
    body: &[u8],
) -> Result<Vec<ReadingResult>, ApiError> {
    let now = OffsetDateTime::now_utc();
    let mut results: Vec<Option<ReadingResult>> = vec![None; items.len()];
    let devices = find_devices(store, &items, &sender.organization).await?;
    let mut news: BTreeMap<String, DeviceNews> = BTreeMap::new();
    let mut pending = Vec::new();
    for (index, item) in items.into_iter().enumerate() {
        match check(&devices, &mut news, index, item, now) {
            Checked::Done(r) => results[index] = Some(r),
            Checked::Pending(p) => pending.push(p),
        }
    }
    // Whose each device was when it measured: the current assignment when the reading is
    // newer than the Device's current version, else one look at its history per device.
    let mut timelines: HashMap<String, registry::Timeline> = HashMap::new();
    for p in &pending {
        if p.measured < p.known.last_updated && !timelines.contains_key(p.known.id.as_str()) {
            let from = pending
                .iter()
                .filter(|q| q.known.id == p.known.id)
                .map(|q| q.measured)
                .min()
                .unwrap_or(p.measured);
            let t = registry::Timeline::load(store, &p.known.id, from).await?;
            timelines.insert(p.known.id.as_str().to_owned(), t);
        }
    }
    let pending: Vec<(Box<Pending>, Option<String>)> = pending
        .into_iter()
        .map(|p| {
            let patient = match timelines.get(p.known.id.as_str()) {
                Some(t) => t.patient_at(p.measured),
                None => registry::patient_of(&p.known.resource),
            };
            (p, patient)
        })
        .collect();
    let thresholds =
        patient_thresholds(store, pending.iter().filter_map(|(_, p)| p.as_deref())).await?;
    let mut ready: BTreeMap<String, Ready> = BTreeMap::new();
    for (p, patient) in pending {
        let index = p.index;
        let own = patient
            .as_deref()
            .and_then(|id| thresholds.get(id))
            .cloned();
        match produce(p, patient, own)? {
            Ok((device, obs)) => ready.entry(device).or_default().push((index, obs)),
            Err(r) => results[index] = Some(r),
        }
    }
    let mut tx = store.begin().await?;
    // Every id this message would create, locked, then those that exist already.
    let ids: Vec<String> = ready
        .values()
        .flatten()
        .flat_map(|(_, obs)| obs.iter().map(|(id, _)| id.as_str().to_owned()))
        .collect();
    let observation = resource_type("Observation")?;
    tx.lock_keys(&ids).await?;
    let existing = tx.existing(observation, &ids).await?;
    let mut created_here: HashSet<String> = HashSet::new();
    let sha = sha256_hex(body);
    let received_at = crate::store::now_micros();
    let mut creates: Vec<(ResourceType, ResourceId, Value)> = Vec::new();
    let mut targets = Vec::new();
    let mut authors = Vec::new();
    for (device_id, readings) in ready {
        let before = targets.len();
        for (index, obs) in readings {
            let names: Vec<String> = obs
                .iter()
                .map(|(id, _)| format!("Observation/{id}"))
                .collect();
            let fresh: Vec<(ResourceId, Value)> = obs
                .into_iter()
                .filter(|(id, _)| {
                    !existing.contains(id.as_str()) && !created_here.contains(id.as_str())
                })
                .collect();
            let status = if fresh.is_empty() {
                Status::Duplicate
            } else {
                Status::Accepted
            };
            for (id, o) in fresh {
                created_here.insert(id.as_str().to_owned());
                targets.push(json!({"reference": format!("Observation/{id}")}));
                creates.push((observation, id, o));
            }
            results[index] = Some(ReadingResult {
                index,
                status,
                observations: names,
                device: Some(format!("Device/{device_id}")),
                reason: None,
            });
        }
        if targets.len() > before {
            authors.push(device_id);
        }
    }
    // One Provenance per message: a hub's batch names few devices, and one resource per
    // message keeps the trail from costing as much as the readings.
    if !targets.is_empty() {
        let mut p = provenance(&authors, sender, targets, &sha, received_at);
        // The sender's devices are all its organization's (find_devices).
        tenancy::set_owner(&mut p, Some(&sender.organization));
        crate::fhir::parse::check_structure(&p, resource_type("Provenance")?)?;
        creates.push((resource_type("Provenance")?, ResourceId::generate(), p));
    }
    tx.create_many(&mut creates).await?;
    for (device_id, n) in &news {
        // Most messages change nothing worth a new Device version: decided on the Device as
        // found, before taking its row lock.
        let current = devices.values().find(|k| k.id.as_str() == device_id);
        if current.is_some_and(|k| apply_news(&mut k.resource.clone(), n)) {
            update_device(&mut tx, device_id, n).await?;
        }
    }
    if let (Some(hub), Some(found)) = (&sender.hub, &sender.hub_device) {
        let seen = DeviceNews {
            seen: Some(now),
            ..Default::default()
        };
        if apply_news(&mut found.clone(), &seen) {
            update_device(&mut tx, hub, &seen).await?;
        }
    }
    let mut results: Vec<ReadingResult> = results.into_iter().flatten().collect();
    results.extend(extra);
    results.sort_by_key(|r| r.index);
    let summary = serde_json::to_string(&results).map_err(ApiError::internal)?;
    tx.insert_message(&RawMessage {
        sha256: &sha,
        received_at,
        channel: &sender.channel,
        sender: &sender.name,
        organization: Some(&sender.organization),
        body,
        results: &summary,
    })
    .await?;
    tx.commit().await?;
    Ok(results)
}

/// The answer to a message: its SHA-256, counts, and each reading's result. Only the counts
/// are logged (readings are patient data, DESIGN.md rule 8).
pub fn answer(body: &[u8], results: Vec<ReadingResult>, what: &str) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let count = |s: Status| results.iter().filter(|r| r.status == s).count();
    let (accepted, duplicate, rejected) = (
        count(Status::Accepted),
        count(Status::Duplicate),
        count(Status::Rejected),
    );
    tracing::info!(accepted, duplicate, rejected, "{what}");
    axum::Json(IngestAnswer {
        message: sha256_hex(body),
        accepted,
        duplicate,
        rejected,
        results,
    })
    .into_response()
}

/// The answer to a batch of readings (hub or vendor webhook).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct IngestAnswer {
    /// The SHA-256 of the message as kept (`/ingest/messages?sha256=…`).
    pub message: String,
    pub accepted: usize,
    pub duplicate: usize,
    pub rejected: usize,
    /// One per reading, in the order sent.
    pub results: Vec<ReadingResult>,
}

/// Keeps a message that was refused as a whole (its sender unknown or inactive), for the
/// audit trail.
pub async fn keep_refused(
    store: &Store,
    sender: &Sender,
    body: &[u8],
    reason: &str,
) -> Result<(), ApiError> {
    let mut tx = store.begin().await?;
    let results = json!([{"status": "rejected", "reason": reason}]).to_string();
    tx.insert_message(&RawMessage {
        sha256: &sha256_hex(body),
        received_at: crate::store::now_micros(),
        channel: &sender.channel,
        sender: &sender.name,
        organization: Some(&sender.organization),
        body,
        results: &results,
    })
    .await?;
    tx.commit().await?;
    Ok(())
}

pub fn sha256_hex(body: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(body)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn resource_type(name: &str) -> Result<ResourceType, ApiError> {
    ResourceType::parse(name)
        .ok_or_else(|| ApiError::internal(anyhow::anyhow!("{name} is not a resource type")))
}

/// A reading from a known, active device, decoded, waiting for its patient.
struct Pending<'a> {
    index: usize,
    known: &'a Known,
    key: String,
    measurement: Measurement,
    received: OffsetDateTime,
    clock_offset: i64,
    /// When it was measured (µs): the device's corrected time stamp, else when received.
    measured: i64,
}

enum Checked<'a> {
    Done(ReadingResult),
    Pending(Box<Pending<'a>>),
}

/// One reading: the device checks and decoding; what it says about the device goes to `news`.
fn check<'a>(
    devices: &'a HashMap<Identity, Known>,
    news: &mut BTreeMap<String, DeviceNews>,
    index: usize,
    item: Incoming,
    now: OffsetDateTime,
) -> Checked<'a> {
    let reject = |device: Option<&str>, why: String| {
        Checked::Done(ReadingResult::rejected(index, device, why))
    };
    if let Content::Invalid(why) = &item.content {
        return reject(None, why.clone());
    }
    let Some(key) = item.identity.key() else {
        return reject(
            None,
            "the reading names no device: give its systemId or address".into(),
        );
    };
    let Some(known) = devices.get(&item.identity) else {
        return reject(
            None,
            "unknown device: no Device of this organization has this system id or address".into(),
        );
    };
    let device_id = known.id.as_str();
    let status = known.resource["status"].as_str().unwrap_or("unknown");
    if status != "active" {
        return reject(
            Some(device_id),
            format!("the device is not active (status {status}); activate its Device first"),
        );
    }
    if (item.received - now).whole_seconds() > RECEIVED_SLACK {
        return reject(
            Some(device_id),
            "the receive time is in the future: check the hub's clock".into(),
        );
    }
    if let Content::Gatt { uuid, bytes, .. } = &item.content
        && let Some(field) = device::information_field(*uuid)
    {
        // Device Information: what the registry keeps of the device (PHD IG PhdDevice).
        return match device::information_text(bytes) {
            Ok(text) => {
                let n = news.entry(device_id.to_owned()).or_default();
                n.seen = Some(n.seen.map_or(item.received, |s| s.max(item.received)));
                n.info.push((field, text));
                Checked::Done(accepted(index, device_id))
            }
            Err(e) => reject(Some(device_id), format!("cannot read 0x{uuid:04X}: {e}")),
        };
    }
    let measurement = match item.content {
        Content::Gatt { uuid, bytes, model } => {
            let quirks = profile_of(&known.resource, model.as_deref())
                .map(|p| p.quirks.clone())
                .unwrap_or_default();
            match gatt::decode_with(uuid, &bytes, &quirks) {
                Ok(m) => m,
                Err(e) => {
                    return reject(Some(device_id), format!("cannot decode 0x{uuid:04X}: {e}"));
                }
            }
        }
        Content::Decoded(m) => *m,
        Content::Invalid(why) => return reject(None, why),
    };
    let n = news.entry(device_id.to_owned()).or_default();
    n.seen = Some(n.seen.map_or(item.received, |s| s.max(item.received)));
    match &measurement {
        Measurement::Battery(b) => {
            n.battery = b.battery_level.value.value().map(|d| d.as_f64());
            return Checked::Done(accepted(index, device_id));
        }
        Measurement::Time(t) => {
            // The device's clock read by the hub as it received it: the offset to correct
            // its time stamps by (PHD IG, "Time"), kept on the Device.
            if let Some(p) = t.timestamp.primitive() {
                n.clock_offset = Some((p.assume_utc() - item.received).whole_seconds());
            }
            return Checked::Done(accepted(index, device_id));
        }
        _ => {}
    }
    let clock_offset = n
        .clock_offset
        .or_else(|| clock_offset(&known.resource))
        .unwrap_or(0);
    let measured = normalize::measured_at(&measurement, item.received, clock_offset);
    Checked::Pending(Box::new(Pending {
        index,
        known,
        key,
        measurement,
        received: item.received,
        clock_offset,
        measured: (measured.unix_timestamp_nanos() / 1000) as i64,
    }))
}

/// Accepted without Observations of its own (battery, clock, context).
fn accepted(index: usize, device_id: &str) -> ReadingResult {
    ReadingResult {
        index,
        status: Status::Accepted,
        observations: Vec::new(),
        device: Some(format!("Device/{device_id}")),
        reason: None,
    }
}

/// A device's Observations from one reading, each with the id it is stored under.
type Observations = (String, Vec<(ResourceId, Value)>);

/// A reading's Observations for `patient`; or its result when it has none to store.
fn produce(
    p: Box<Pending<'_>>,
    patient: Option<String>,
    thresholds: Option<super::rules::Thresholds>,
) -> Result<Result<Observations, ReadingResult>, ApiError> {
    let device_id = p.known.id.as_str();
    let reject = |why: &str| Ok(Err(ReadingResult::rejected(p.index, Some(device_id), why)));
    let Some(patient) = patient else {
        return reject("the device was assigned to no patient when it measured; assign it first");
    };
    let ctx = normalize::Context {
        patient: Some(patient),
        device: Some(device_id.to_owned()),
        gateway: None,
        device_key: p.key.clone(),
        received: p.received,
        clock_offset_seconds: p.clock_offset,
        thresholds,
    };
    let produced = match normalize::observations(&p.measurement, &ctx) {
        Ok(produced) => produced,
        Err(reasons) => return reject(&reasons.join("; ")),
    };
    if produced.is_empty() {
        // Context and record-access answers steer the gateway; nothing to store.
        return Ok(Err(accepted(p.index, device_id)));
    }
    let owner = tenancy::owner_of(&p.known.resource);
    let observation = resource_type("Observation")?;
    let locals: Vec<String> = produced.iter().map(|o| o.full_url.clone()).collect();
    let mut out = Vec::with_capacity(produced.len());
    for o in produced {
        let Some(id) = o
            .full_url
            .strip_prefix("urn:uuid:")
            .and_then(ResourceId::parse)
        else {
            return Err(ApiError::internal(anyhow::anyhow!("unnamed Observation")));
        };
        let mut o = o.resource;
        // Local names become the stored ids (derivedFrom between a reading's Observations).
        if let Some(refs) = o.get_mut("derivedFrom").and_then(Value::as_array_mut) {
            for r in refs {
                if let Some(local) = r["reference"].as_str()
                    && locals.iter().any(|l| l == local)
                    && let Some(u) = local.strip_prefix("urn:uuid:")
                {
                    r["reference"] = json!(format!("Observation/{u}"));
                }
            }
        }
        tenancy::set_owner(&mut o, owner.as_deref());
        // Every Observation the server produces must be one it would accept (issue 5, item 3).
        if let Err(e) = crate::fhir::parse::check_structure(&o, observation) {
            tracing::error!(error = ?e, "normalisation produced an invalid Observation");
            return reject("the reading could not be turned into a valid Observation");
        }
        let issues = crate::fhir::profiles::check_claimed(&o);
        if !issues.is_empty() {
            tracing::error!(
                ?issues,
                "normalisation produced an Observation its profile refuses"
            );
            return reject("the reading could not be turned into a valid Observation");
        }
        out.push((id, o));
    }
    Ok(Ok((device_id.to_owned(), out)))
}

/// The alert thresholds the patients set (`rules::thresholds_of`), by Patient id: one search
/// per 50 patients.
async fn patient_thresholds<'a>(
    store: &Store,
    patients: impl Iterator<Item = &'a str>,
) -> Result<HashMap<String, super::rules::Thresholds>, ApiError> {
    let mut ids: Vec<&str> = patients.collect();
    ids.sort_unstable();
    ids.dedup();
    let mut out = HashMap::new();
    for chunk in ids.chunks(50) {
        let query = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("_id", &chunk.join(","))
            .finish();
        for p in find_all(store, "Patient", &query, chunk.len()).await? {
            if let Some(t) = super::rules::thresholds_of(&p.resource) {
                out.insert(p.id.as_str().to_owned(), t);
            }
        }
    }
    Ok(out)
}

/// The Devices of `org` the readings name, by identity: one search per 50 identities.
async fn find_devices(
    store: &Store,
    items: &[Incoming],
    org: &str,
) -> Result<HashMap<Identity, Known>, ApiError> {
    let mut wanted: Vec<(&Identity, Vec<(String, String)>)> = Vec::new();
    let mut seen: HashSet<&Identity> = HashSet::new();
    for item in items {
        let tokens = item.identity.tokens();
        if !tokens.is_empty() && seen.insert(&item.identity) {
            wanted.push((&item.identity, tokens));
        }
    }
    let mut found: HashMap<Identity, Known> = HashMap::new();
    for chunk in wanted.chunks(25) {
        let tokens: Vec<String> = chunk
            .iter()
            .flat_map(|(_, ts)| ts.iter().map(|(s, v)| format!("{s}|{v}")))
            .collect();
        let query = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("identifier", &tokens.join(","))
            .append_pair("_tag", &format!("{OWNER_SYSTEM}|{org}"))
            .finish();
        let knowns = find_all(store, "Device", &query, tokens.len() * 2).await?;
        let names = |known: &Known, system: &str, value: &str| {
            known.resource["identifier"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|i| {
                    i["system"].as_str() == Some(system)
                        && i["value"]
                            .as_str()
                            .is_some_and(|v| v.eq_ignore_ascii_case(value))
                })
        };
        for (identity, ts) in chunk {
            // The best identifier that names a Device decides.
            if let Some(known) = ts
                .iter()
                .find_map(|(s, v)| knowns.iter().find(|k| names(k, s, v)))
            {
                found.insert((*identity).clone(), known.clone());
            }
        }
    }
    Ok(found)
}

/// The hub's own Device: the Device of `org` naming this client id.
pub async fn find_hub(
    store: &Store,
    client_id: &str,
    org: &str,
) -> Result<Option<(String, Value)>, ApiError> {
    let query = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("identifier", &format!("{HUB_CLIENT_SYSTEM}|{client_id}"))
        .append_pair("_tag", &format!("{OWNER_SYSTEM}|{org}"))
        .finish();
    Ok(find_all(store, "Device", &query, 1)
        .await?
        .into_iter()
        .next()
        .map(|k| (k.id.as_str().to_owned(), k.resource)))
}

async fn find_all(
    store: &Store,
    ty: &str,
    query: &str,
    count: usize,
) -> Result<Vec<Known>, ApiError> {
    let ty = resource_type(ty)?;
    let mut q = crate::search::parse(Some(ty), &crate::search::decode_query(query), "");
    q.count = Some(count);
    q.total = Some(crate::search::Total::None);
    let found = crate::search::engine::run(&mut store.reader(), &[ty], &q).await?;
    Ok(found
        .matches
        .into_iter()
        .filter_map(|v| {
            let resource: Value = serde_json::from_str(v.content.as_deref()?).ok()?;
            Some(Known {
                id: ResourceId::parse(&v.id)?,
                resource,
                last_updated: v.last_updated,
            })
        })
        .collect())
}

/// The device model's profile: the model the Device records, else the one the sender names.
fn profile_of(device: &Value, named: Option<&str>) -> Option<&'static profiles::DeviceProfile> {
    let manufacturer = device["manufacturer"].as_str().unwrap_or("");
    let model = device["modelNumber"].as_str().unwrap_or("");
    profiles::profile_for(manufacturer, model).or_else(|| named.and_then(profiles::profile_named))
}

fn extension<'a>(resource: &'a Value, url: &str) -> Option<&'a Value> {
    resource["extension"]
        .as_array()?
        .iter()
        .find(|e| e["url"] == url)
}

fn clock_offset(device: &Value) -> Option<i64> {
    extension(device, CLOCK_OFFSET_URL)?["valueQuantity"]["value"].as_i64()
}

fn set_extension(resource: &mut Value, url: &str, value: Value) {
    let Some(obj) = resource.as_object_mut() else {
        return;
    };
    let list = obj.entry("extension").or_insert_with(|| json!([]));
    if let Some(list) = list.as_array_mut() {
        list.retain(|e| e["url"] != url);
        let mut e = json!({"url": url});
        if let (Some(e), Some(v)) = (e.as_object_mut(), value.as_object()) {
            e.extend(v.clone());
        }
        list.push(e);
    }
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Writes what the message says about a device into it; true when that changed something
/// worth a new version.
fn apply_news(device: &mut Value, news: &DeviceNews) -> bool {
    let mut changed = false;
    if let Some(level) = news.battery {
        let old = device["property"]
            .as_array()
            .and_then(|ps| {
                ps.iter()
                    .find(|p| p["type"]["coding"][0]["code"] == BATTERY_CODE)
            })
            .and_then(|p| p["valueQuantity"][0]["value"].as_f64());
        if old != Some(level) {
            let obj = device.as_object_mut();
            if let Some(obj) = obj {
                let list = obj.entry("property").or_insert_with(|| json!([]));
                if let Some(list) = list.as_array_mut() {
                    list.retain(|p| p["type"]["coding"][0]["code"] != BATTERY_CODE);
                    list.push(json!({
                        "type": {"coding": [{"system": MDC, "code": BATTERY_CODE,
                                             "display": "MDC_ATTR_VAL_BATT_CHARGE"}]},
                        "valueQuantity": [{"value": level, "unit": "%",
                                           "system": "http://unitsofmeasure.org", "code": "%"}]
                    }));
                    changed = true;
                }
            }
        }
    }
    for (field, text) in &news.info {
        changed |= apply_information(device, field, text);
    }
    if let Some(offset) = news.clock_offset
        && clock_offset(device).is_none_or(|old| (old - offset).abs() > OFFSET_SLACK)
    {
        set_extension(
            device,
            CLOCK_OFFSET_URL,
            json!({"valueQuantity": {"value": offset, "unit": "s",
                                     "system": "http://unitsofmeasure.org", "code": "s"}}),
        );
        changed = true;
    }
    if let Some(seen) = news.seen {
        let old = extension(device, LAST_SEEN_URL)
            .and_then(|e| e["valueDateTime"].as_str())
            .and_then(|s| {
                OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
            });
        if changed || old.is_none_or(|o| (seen - o).whole_seconds() >= LAST_SEEN_EVERY) {
            set_extension(
                device,
                LAST_SEEN_URL,
                json!({"valueDateTime": rfc3339(seen)}),
            );
            changed = true;
        }
    }
    changed
}

/// The MDC version types of PhdDevice's `version` (PHD IG, MDCDeviceVersionTypes).
fn version_type(field: &str) -> Option<&'static str> {
    Some(match field {
        "hardware_revision" => "531974",
        "software_revision" => "531975",
        "firmware_revision" => "531976",
        _ => return None,
    })
}

/// Writes one Device Information value into the Device; true when it changed it.
fn apply_information(device: &mut Value, field: &str, text: &str) -> bool {
    if text.is_empty() {
        return false;
    }
    let Some(obj) = device.as_object_mut() else {
        return false;
    };
    let plain = match field {
        "manufacturer_name" => Some("manufacturer"),
        "model_number" => Some("modelNumber"),
        "serial_number" => Some("serialNumber"),
        _ => None,
    };
    if let Some(key) = plain {
        if obj.get(key).and_then(Value::as_str) == Some(text) {
            return false;
        }
        obj.insert(key.into(), json!(text));
        return true;
    }
    let Some(code) = version_type(field) else {
        return false;
    };
    let list = obj.entry("version").or_insert_with(|| json!([]));
    let Some(list) = list.as_array_mut() else {
        return false;
    };
    let of_type = |v: &Value| v["type"]["coding"][0]["code"] == code;
    if list.iter().any(|v| of_type(v) && v["value"] == text) {
        return false;
    }
    list.retain(|v| !of_type(v));
    list.push(json!({
        "type": {"coding": [{"system": MDC, "code": code}]},
        "value": text
    }));
    true
}

/// Applies what the message says about a device to its current version, under the row lock,
/// writing a new version only when something worth keeping changed.
async fn update_device(
    tx: &mut StoreTx,
    device_id: &str,
    news: &DeviceNews,
) -> Result<(), ApiError> {
    let ty = resource_type("Device")?;
    let Some(id) = ResourceId::parse(device_id) else {
        return Ok(());
    };
    if tx.lock_resource(ty, &id).await?.is_none() {
        return Ok(());
    }
    let Some(current) = tx.read(ty, &id).await? else {
        return Ok(());
    };
    let Some(mut device) = current
        .content
        .as_deref()
        .and_then(|c| serde_json::from_str::<Value>(c).ok())
    else {
        return Ok(());
    };
    if apply_news(&mut device, news) {
        tx.write(
            ty,
            Some(&id),
            Write::Update {
                resource: &mut device,
                if_match: Some(current.version_id),
                method: Method::Put,
            },
        )
        .await?;
    }
    Ok(())
}

/// The Provenance of a message's new Observations: the devices authored them (each
/// Observation names its own in `device`), the hub assembled and sent them, and the raw
/// message (by its SHA-256) is their source
/// (https://hl7.org/fhir/R4/provenance.html).
fn provenance(
    devices: &[String],
    sender: &Sender,
    targets: Vec<Value>,
    sha: &str,
    received_at: i64,
) -> Value {
    let participant = "http://terminology.hl7.org/CodeSystem/provenance-participant-type";
    let mut agents: Vec<Value> = devices
        .iter()
        .map(|d| {
            json!({
                "type": {"coding": [{"system": participant, "code": "author", "display": "Author"}]},
                "who": {"reference": format!("Device/{d}")}
            })
        })
        .collect();
    match &sender.hub {
        Some(hub) => agents.push(json!({
            "type": {"coding": [{"system": participant, "code": "assembler", "display": "Assembler"}]},
            "who": {"reference": format!("Device/{hub}")}
        })),
        None => agents.push(json!({
            "type": {"coding": [{"system": participant, "code": "assembler", "display": "Assembler"}]},
            "who": {"display": sender.name}
        })),
    }
    json!({
        "resourceType": "Provenance",
        "target": targets,
        "recorded": crate::store::format_instant(received_at),
        "activity": {"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/v3-DataOperation",
            "code": "CREATE", "display": "create"}]},
        "agent": agents,
        "entity": [{
            "role": "source",
            "what": {
                "identifier": {"system": MESSAGE_SYSTEM, "value": sha},
                "display": format!("{} message", sender.channel)
            }
        }]
    })
}
