//! The Bluetooth side of the gateway (issue 8, item 2), through btleplug (BlueZ over D-Bus on
//! Linux). Pairing and bonding are left to BlueZ (`bluetoothctl`, see the README).
//!
//! For each device it follows: connect; discover; read Device Information (manufacturer,
//! model, System ID) and the battery level; write the Current Time where the device allows;
//! subscribe to every measurement characteristic (notifications and indications alike; BlueZ
//! confirms indications); ask a glucose meter for its stored records through the Record Access
//! Control Point; commit every value to the queue before taking the next. When the device goes
//! away — a cuff disconnects right after sending — connect again with backoff; a repeated record
//! is harmless (the server de-duplicates).
//!
//! Service and characteristic numbers: Bluetooth SIG Assigned Numbers
//! (https://www.bluetooth.com/specifications/assigned-numbers/); GATT specifications of BLS,
//! HTS, WSS, GLS, PLXS, HRS, BAS, DIS and CTS.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use btleplug::api::Central as _;
use btleplug::api::bleuuid::uuid_from_u16;
use btleplug::api::{
    CentralEvent, CentralState, CharPropFlags, Characteristic, Manager as _, Peripheral as _,
    ScanFilter, WriteType,
};
use btleplug::platform::{Adapter, Manager, Peripheral, PeripheralId};
use futures::StreamExt as _;
use tokio::sync::Notify;
use uuid::Uuid;

use super::config::Config;
use super::queue::{Queue, Reading, SeenDevice};
use super::uploader::Backoff;
use crate::ingest::gatt::uuid as chr;

/// The standard health services a device advertises: Blood Pressure, Health Thermometer,
/// Weight Scale, Glucose, Pulse Oximeter, Heart Rate.
pub const HEALTH_SERVICES: [u16; 6] = [0x1810, 0x1809, 0x181D, 0x1808, 0x1822, 0x180D];

/// The characteristics whose values are readings, and their services.
/// Not Intermediate Cuff Pressure (0x2A36): the cuff's pressure while it inflates, not a
/// reading.
const MEASUREMENTS: [(u16, u16); 10] = [
    (chr::BLOOD_PRESSURE_MEASUREMENT, 0x1810),
    (chr::TEMPERATURE_MEASUREMENT, 0x1809),
    (chr::WEIGHT_MEASUREMENT, 0x181D),
    (chr::BODY_COMPOSITION_MEASUREMENT, 0x181B),
    (chr::GLUCOSE_MEASUREMENT, 0x1808),
    (chr::GLUCOSE_CONTEXT, 0x1808),
    (chr::PLX_SPOT_CHECK, 0x1822),
    (chr::PLX_CONTINUOUS, 0x1822),
    (chr::HEART_RATE_MEASUREMENT, 0x180D),
    (chr::BATTERY_LEVEL, 0x180F),
];

const MANUFACTURER_NAME: u16 = 0x2A29;
const MODEL_NUMBER: u16 = 0x2A24;
const SYSTEM_ID: u16 = 0x2A23;

/// The 16-bit number of a Bluetooth base UUID.
fn short(uuid: Uuid) -> Option<u16> {
    let (hi, _, _, rest) = uuid.as_fields();
    (uuid_from_u16((hi & 0xFFFF) as u16) == uuid && rest == uuid_from_u16(0).as_fields().3)
        .then_some((hi & 0xFFFF) as u16)
}

pub struct Radio {
    adapter: Adapter,
}

impl Radio {
    /// The first Bluetooth adapter; a clear error where there is no D-Bus or no adapter.
    pub async fn open() -> anyhow::Result<Radio> {
        let manager = Manager::new().await.map_err(|e| {
            anyhow::anyhow!(
                "cannot reach BlueZ over the D-Bus system bus ({e}); is the system bus up and bluetoothd running? \
                 (DBUS_SYSTEM_BUS_ADDRESS, when set, names the bus)"
            )
        })?;
        let adapter = manager
            .adapters()
            .await
            .map_err(|e| {
                anyhow::anyhow!("cannot list Bluetooth adapters (is bluetoothd running?): {e}")
            })?
            .into_iter()
            .next()
            .ok_or_else(|| anyhow::anyhow!("no Bluetooth adapter found (bluetoothctl list)"))?;
        Ok(Radio { adapter })
    }

    /// Scans for health devices and follows each one the configuration names (or every one
    /// when it names none), until an error of the adapter itself.
    pub async fn run(self, config: Config, queue: Queue, more: Arc<Notify>) -> anyhow::Result<()> {
        let mut events = self.adapter.events().await?;
        // Named devices are found whatever they advertise; otherwise BlueZ reports only
        // devices advertising a health service.
        let filter = ScanFilter {
            services: if config.devices.is_empty() {
                HEALTH_SERVICES.iter().map(|s| uuid_from_u16(*s)).collect()
            } else {
                Vec::new()
            },
        };
        self.adapter
            .start_scan(filter.clone())
            .await
            .map_err(|e| anyhow::anyhow!("cannot scan: {e}"))?;
        tracing::info!("scanning for health devices");
        // The devices followed, each with the bell that says it is advertising again.
        let mut following: HashMap<PeripheralId, Arc<Notify>> = HashMap::new();
        // Devices that are not the named ones (with `devices` set, the address decides once).
        let mut ignored: HashSet<PeripheralId> = HashSet::new();
        let config = Arc::new(config);
        // Devices BlueZ knew before the scan (bonded ones) come first.
        let known = self.adapter.peripherals().await.unwrap_or_default();
        let mut pending: Vec<PeripheralId> = known.iter().map(|p| p.id()).collect();
        loop {
            for id in pending.drain(..) {
                if let Some(back) = following.get(&id) {
                    back.notify_one();
                } else if ignored.contains(&id) {
                } else if let Some(back) = self.consider(&id, &config, &queue, &more).await {
                    following.insert(id, back);
                } else if !config.devices.is_empty() {
                    ignored.insert(id);
                }
            }
            match events.next().await {
                // The adapter came back (power cycle, bluetoothd restart): scan again.
                Some(CentralEvent::StateUpdate(CentralState::PoweredOn)) => {
                    if let Err(e) = self.adapter.start_scan(filter.clone()).await {
                        tracing::error!(error = %e, "cannot scan again");
                    }
                }
                // Anything a device does (advertising, RSSI, connecting) may be a device to
                // follow, or a followed one back in range: a bonded device BlueZ already knows
                // shows itself only by such updates.
                Some(
                    CentralEvent::DeviceDiscovered(id)
                    | CentralEvent::DeviceUpdated(id)
                    | CentralEvent::DeviceConnected(id)
                    | CentralEvent::ServicesAdvertisement { id, .. }
                    | CentralEvent::ManufacturerDataAdvertisement { id, .. }
                    | CentralEvent::ServiceDataAdvertisement { id, .. }
                    | CentralEvent::RssiUpdate { id, .. },
                ) => pending.push(id),
                Some(_) => {}
                None => anyhow::bail!("the Bluetooth adapter's event stream ended"),
            }
        }
    }

    /// Starts following a device if it is one to follow; returns its bell.
    async fn consider(
        &self,
        id: &PeripheralId,
        config: &Arc<Config>,
        queue: &Queue,
        more: &Arc<Notify>,
    ) -> Option<Arc<Notify>> {
        let p = self.adapter.peripheral(id).await.ok()?;
        let props = p.properties().await.ok()??;
        let address = props.address.to_string().to_ascii_uppercase();
        let health = props
            .services
            .iter()
            .filter_map(|u| short(*u))
            .any(|s| HEALTH_SERVICES.contains(&s));
        if !config.follows(&address) || (config.devices.is_empty() && !health) {
            return None;
        }
        let _ = queue
            .describe(&SeenDevice {
                address: address.clone(),
                name: props.local_name.clone(),
                ..Default::default()
            })
            .await;
        tracing::info!(device = %address, "following");
        let back = Arc::new(Notify::new());
        let follower = Follower {
            peripheral: p,
            address,
            config: config.clone(),
            queue: queue.clone(),
            more: more.clone(),
            back: back.clone(),
        };
        tokio::spawn(follower.run());
        Some(back)
    }
}

struct Follower {
    peripheral: Peripheral,
    address: String,
    config: Arc<Config>,
    queue: Queue,
    more: Arc<Notify>,
    /// Rung when the device advertises again: a cuff that sent and disconnected is connectable
    /// only for a short while after its next measurement, so the wait ends at once.
    back: Arc<Notify>,
}

/// What one connection learnt about the device, for the readings it sends.
#[derive(Default)]
struct Identity {
    system_id: Option<String>,
    model: Option<String>,
}

impl Follower {
    /// Connects, reads, and connects again whenever the device comes back.
    async fn run(self) {
        let mut backoff = Backoff::new(Duration::from_secs(60));
        // One notification stream for the follower's whole life: btleplug keeps it valid
        // across connections, it listens before each connection is made (a bonded device may
        // indicate at once), and bluez-async 0.9 can panic when such a stream is dropped.
        let mut notifications = loop {
            match self.peripheral.notifications().await {
                Ok(n) => break n,
                Err(e) => {
                    tracing::warn!(device = %self.address, error = %e, "no notification stream yet");
                    tokio::time::sleep(backoff.wait()).await;
                }
            }
        };
        backoff.reset();
        loop {
            match self.session(&mut notifications).await {
                Ok(readings) => {
                    tracing::info!(device = %self.address, readings, "device disconnected");
                    backoff.reset();
                }
                Err(e) => tracing::debug!(device = %self.address, error = %e, "no session"),
            }
            tokio::select! {
                () = tokio::time::sleep(backoff.wait()) => {}
                () = self.back.notified() => {}
            }
        }
    }

    /// One connection: returns the number of readings queued before the device went away.
    async fn session(
        &self,
        notifications: &mut (impl futures::Stream<Item = btleplug::api::ValueNotification> + Unpin),
    ) -> anyhow::Result<usize> {
        let p = &self.peripheral;
        // Always: for a device already connected BlueZ answers at once, and bluez-async then
        // waits until its services are resolved.
        p.connect().await?;
        p.discover_services().await?;
        let chars = p.characteristics();
        let find = |n: u16| chars.iter().find(|c| c.uuid == uuid_from_u16(n)).cloned();
        let identity = self.identify(&find).await;
        // The device's clock as it was, for the server's clock-offset correction, then ours.
        if let Some(c) = find(chr::CURRENT_TIME)
            && c.properties.contains(CharPropFlags::READ)
            && let Ok(value) = p.read(&c).await
        {
            self.keep(&c, value, &identity).await;
        }
        if self.config.set_time
            && let Some(c) = find(chr::CURRENT_TIME)
            && c.properties.contains(CharPropFlags::WRITE)
            && let Err(e) = p
                .write(
                    &c,
                    &current_time(time::OffsetDateTime::now_utc()),
                    WriteType::WithResponse,
                )
                .await
        {
            tracing::debug!(device = %self.address, error = %e, "current time not written");
        }
        // Subscribe before asking for stored records, so that none is missed.
        for c in chars.iter().filter(|c| {
            c.properties
                .intersects(CharPropFlags::NOTIFY | CharPropFlags::INDICATE)
                && short(c.uuid).is_some_and(|n| {
                    n == chr::RECORD_ACCESS_CONTROL_POINT
                        || MEASUREMENTS.iter().any(|(m, _)| *m == n)
                })
        }) {
            p.subscribe(c).await?;
        }
        if let Some(racp) = find(chr::RECORD_ACCESS_CONTROL_POINT) {
            let last = self.queue.state(&self.racp_key()).await?;
            let request = racp_request(last.and_then(|s| s.parse().ok()));
            p.write(&racp, &request, WriteType::WithResponse).await?;
        }
        // The battery level at each connection, queued when it changed.
        if let Some(battery) = find(chr::BATTERY_LEVEL)
            && battery.properties.contains(CharPropFlags::READ)
            && let Ok(value) = p.read(&battery).await
        {
            let seen = self
                .queue
                .devices()
                .await?
                .into_iter()
                .find(|d| d.address == self.address)
                .and_then(|d| d.battery);
            if seen != value.first().map(|b| i64::from(*b)) {
                self.keep(&battery, value, &identity).await;
            }
        }
        let mut readings = 0;
        loop {
            let next = tokio::time::timeout(Duration::from_secs(2), notifications.next()).await;
            match next {
                Ok(Some(n)) => {
                    let Some(c) = chars.iter().find(|c| c.uuid == n.uuid) else {
                        continue;
                    };
                    if short(c.uuid) == Some(chr::RECORD_ACCESS_CONTROL_POINT) {
                        tracing::debug!(device = %self.address, "stored records sent");
                        continue;
                    }
                    self.keep(c, n.value, &identity).await;
                    readings += 1;
                }
                Ok(None) => return Ok(readings),
                // Quiet: is the device still there?
                Err(_) => {
                    if !p.is_connected().await.unwrap_or(false) {
                        return Ok(readings);
                    }
                }
            }
        }
    }

    /// Device Information and battery: kept for `gateway status`, and the System ID and model
    /// go with each reading (the server identifies the device by them).
    async fn identify(&self, find: &impl Fn(u16) -> Option<Characteristic>) -> Identity {
        let p = &self.peripheral;
        let read = |n: u16| async move {
            match find(n) {
                Some(c) if c.properties.contains(CharPropFlags::READ) => p.read(&c).await.ok(),
                _ => None,
            }
        };
        let text = |v: Option<Vec<u8>>| {
            v.map(|b| {
                String::from_utf8_lossy(&b)
                    .trim_end_matches('\0')
                    .trim()
                    .to_owned()
            })
            .filter(|s| !s.is_empty())
        };
        let manufacturer = text(read(MANUFACTURER_NAME).await);
        let model = text(read(MODEL_NUMBER).await);
        let system_id = read(SYSTEM_ID)
            .await
            .and_then(|b| crate::ingest::device::eui64(&b).ok());
        let _ = self
            .queue
            .describe(&SeenDevice {
                address: self.address.clone(),
                manufacturer,
                model: model.clone(),
                system_id: system_id.clone(),
                ..Default::default()
            })
            .await;
        // A System ID read that failed this time: the one read before, so that the device's
        // readings keep one identity (the server de-duplicates by it).
        let system_id = match system_id {
            Some(s) => Some(s),
            None => self
                .queue
                .devices()
                .await
                .ok()
                .and_then(|d| d.into_iter().find(|d| d.address == self.address))
                .and_then(|d| d.system_id),
        };
        Identity { system_id, model }
    }

    /// Commits one value to the queue, then wakes the uploader. The device has already been
    /// answered (BlueZ confirms indications), so the value is held and the write retried until
    /// it is on disk; the device's next values wait meanwhile.
    async fn keep(&self, c: &Characteristic, value: Vec<u8>, identity: &Identity) {
        let mut backoff = Backoff::new(Duration::from_secs(30));
        loop {
            match self.try_keep(c, &value, identity).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::error!(device = %self.address, error = %e, "cannot write a reading to the queue; retrying");
                    tokio::time::sleep(backoff.wait()).await;
                }
            }
        }
    }

    async fn try_keep(
        &self,
        c: &Characteristic,
        value: &[u8],
        identity: &Identity,
    ) -> anyhow::Result<()> {
        let n = short(c.uuid).unwrap_or_default();
        let received = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)?;
        if n == chr::BATTERY_LEVEL {
            let _ = self
                .queue
                .describe(&SeenDevice {
                    address: self.address.clone(),
                    battery: value.first().map(|b| i64::from(*b)),
                    ..Default::default()
                })
                .await;
        }
        let reading = Reading {
            address: Some(self.address.clone()),
            system_id: identity.system_id.clone(),
            service: short(c.service_uuid).map(|s| format!("0x{s:04X}")),
            characteristic: format!("0x{n:04X}"),
            value: value.to_vec(),
            received,
            model: identity.model.clone(),
        };
        self.queue.push(&reading).await?;
        self.more.notify_one();
        // A glucose record's sequence number (GLS 1.0 section 3.1): the next connection asks
        // only for later records.
        if n == chr::GLUCOSE_MEASUREMENT
            && let Some(seq) = reading.value.get(1..3)
        {
            let seq = u16::from_le_bytes([seq[0], seq[1]]);
            let key = self.racp_key();
            let last: Option<u16> = self.queue.state(&key).await?.and_then(|s| s.parse().ok());
            if last.is_none_or(|l| seq > l)
                && let Err(e) = self.queue.set_state(&key, &seq.to_string()).await
            {
                // The record is queued; at worst the next connection asks for it again.
                tracing::warn!(device = %self.address, error = %e, "last record number not kept");
            }
        }
        Ok(())
    }

    fn racp_key(&self) -> String {
        format!("racp/{}", self.address)
    }
}

/// The Record Access Control Point request for stored records (GLS 1.0 section 3.3.4, op code
/// 0x01 "report stored records"): all of them (operator 0x01) the first time, then those with
/// a sequence number after the last one received (operator 0x03 "greater than or equal to",
/// filter type 0x01 sequence number). The server keeps each record once, however often it is
/// sent, so asking again after a lost connection is harmless.
fn racp_request(last: Option<u16>) -> Vec<u8> {
    match last {
        None => vec![0x01, 0x01],
        Some(l) => {
            let mut v = vec![0x01, 0x03, 0x01];
            v.extend_from_slice(&l.wrapping_add(1).to_le_bytes());
            v
        }
    }
}

/// The Current Time characteristic (CTS 1.1 section 3.1): Exact Time 256 (Date Time, day of
/// week 1 = Monday, fractions of 1/256 s) and adjust reason 0x01 (manual time update).
pub fn current_time(t: time::OffsetDateTime) -> Vec<u8> {
    let mut v = Vec::with_capacity(10);
    v.extend_from_slice(&u16::try_from(t.year()).unwrap_or(0).to_le_bytes());
    v.push(u8::from(t.month()));
    v.push(t.day());
    v.push(t.hour());
    v.push(t.minute());
    v.push(t.second());
    v.push(t.weekday().number_from_monday());
    v.push(u8::try_from(u32::from(t.millisecond()) * 256 / 1000).unwrap_or(0));
    v.push(0x01);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_uuids_have_short_numbers() {
        assert_eq!(short(uuid_from_u16(0x2A35)), Some(0x2A35));
        assert_eq!(
            short(Uuid::from_u128(0x1234_5678_9abc_def0_1234_5678_9abc_def0)),
            None
        );
    }

    #[test]
    fn stored_records_are_asked_for_after_the_last_one() {
        assert_eq!(racp_request(None), [0x01, 0x01]);
        assert_eq!(racp_request(Some(0x01FF)), [0x01, 0x03, 0x01, 0x00, 0x02]);
    }

    #[test]
    fn current_time_is_the_cts_layout_the_decoder_reads() {
        let t = time::macros::datetime!(2026-12-02 10:11:12.500 UTC);
        let bytes = current_time(t);
        assert_eq!(bytes, [0xEA, 0x07, 12, 2, 10, 11, 12, 3, 128, 0x01]);
        // The server's decoder reads it back.
        let decoded = crate::ingest::gatt::decode(chr::CURRENT_TIME, &bytes).expect("decodes");
        let text = serde_json::to_string(&decoded).expect("json");
        assert!(text.contains("2026"), "{text}");
    }
}
