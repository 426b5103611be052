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
    Ok(device_at(store, device, at).await?.and_then(|d| {
        d["patient"]["reference"]
            .as_str()
            .and_then(|r| r.strip_prefix("Patient/"))
            .map(str::to_owned)
    }))
}
