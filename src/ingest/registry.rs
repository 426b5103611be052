//! The device registry's questions about time (issue 5, item 5): a reading belongs to the
//! patient the device was assigned to when it was measured, which the Device's history holds
//! (each assignment change is a version; `Device.patient` names the patient).

use crate::fhir::types::{ResourceId, ResourceType};
use crate::store::{HistoryQuery, HistoryScope, Store, StoreError};

/// The Device as it stood at `at` (microseconds since the epoch): its JSON, or `None` when it
/// did not exist yet or was deleted then.
pub async fn device_at(
    store: &Store,
    device: &ResourceId,
    at: i64,
) -> Result<Option<serde_json::Value>, StoreError> {
    let Some(ty) = ResourceType::parse("Device") else {
        return Ok(None);
    };
    let q = HistoryQuery {
        until: Some(at),
        count: 1,
        ..Default::default()
    };
    let (versions, _) = store
        .history(HistoryScope::Instance(ty, device), &q)
        .await?;
    Ok(versions
        .into_iter()
        .next()
        .and_then(|v| v.content)
        .and_then(|c| serde_json::from_str(&c).ok()))
}

/// The Patient (resource id) the device was assigned to at `at`, if any.
pub async fn patient_at(
    store: &Store,
    device: &ResourceId,
    at: i64,
) -> Result<Option<String>, StoreError> {
    Ok(device_at(store, device, at)
        .await?
        .and_then(|d| patient_of(&d)))
}

/// A Device's versions from some instant on, to answer [`Timeline::patient_at`] for many
/// readings with one query (a hub batch, store-and-forward replays).
#[derive(Debug, Default)]
pub struct Timeline {
    /// (written at, µs; the patient then), newest first.
    versions: Vec<(i64, Option<String>)>,
}

impl Timeline {
    /// The versions current at `from` or later.
    pub async fn load(
        store: &Store,
        device: &ResourceId,
        from: i64,
    ) -> Result<Timeline, StoreError> {
        let Some(ty) = ResourceType::parse("Device") else {
            return Ok(Timeline::default());
        };
        let q = HistoryQuery {
            at_start: Some(from),
            count: 10_000,
            ..Default::default()
        };
        let (versions, _) = store
            .history(HistoryScope::Instance(ty, device), &q)
            .await?;
        Ok(Timeline {
            versions: versions
                .into_iter()
                .map(|v| {
                    let patient = v
                        .content
                        .and_then(|c| serde_json::from_str::<serde_json::Value>(&c).ok())
                        .and_then(|d| patient_of(&d));
                    (v.last_updated, patient)
                })
                .collect(),
        })
    }

    /// The patient of the version current at `at`.
    pub fn patient_at(&self, at: i64) -> Option<String> {
        self.versions
            .iter()
            .find(|(written, _)| *written <= at)
            .and_then(|(_, p)| p.clone())
    }
}

/// The Patient (resource id) a Device names.
pub fn patient_of(device: &serde_json::Value) -> Option<String> {
    device["patient"]["reference"]
        .as_str()
        .and_then(|r| r.strip_prefix("Patient/"))
        .map(str::to_owned)
}
