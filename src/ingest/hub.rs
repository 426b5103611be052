//! `POST /ingest/hub` (issue 5, "Three ways in" a): a Bluetooth hub or the vitalbridge gateway
//! posts a batch of raw characteristic values, authenticated with its own client credentials
//! (an OAuth client of role `hub`); the server decodes them. The hub must be registered as an
//! active Device of its organization naming its client id ([`HUB_CLIENT_SYSTEM`]).
//!
//! ```json
//! {"readings": [{
//!     "systemId": "0011223344556677",          // EUI-64, or
//!     "address": "A4:C1:38:0B:2C:01",           // the Bluetooth address
//!     "service": "0x1810", "characteristic": "0x2A35",
//!     "value": "HoAAUgBkAOYHAQEMAAAAVQA=",       // base64, wire byte order
//!     "received": "2026-12-01T10:00:00Z",       // when the hub received it
//!     "model": "Beurer BM85"                    // optional: when the Device does not say
//! }]}
//! ```
//!
//! The answer lists each reading's result (accepted, duplicate, rejected with its reason);
//! readings past [`MAX_READINGS`] are rejected and may be sent again in another batch.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Value, json};
use time::OffsetDateTime;

use super::pipeline::{
    self, Content, HUB_CLIENT_SYSTEM, Identity, Incoming, ReadingResult, Sender, Status,
};
use crate::auth::Principal;
use crate::auth::policy::Policy;
use crate::http::AppState;
use crate::http::error::ApiError;

/// Readings per batch; the rest of a larger batch is rejected, to be sent again.
pub const MAX_READINGS: usize = 500;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/ingest/hub", post(hub))
        .route("/ingest/messages", get(messages))
}

/// A batch as a hub sends it. The handler reads the body as JSON first and each reading on
/// its own, so that one bad reading is rejected alone and the message is kept whatever it
/// holds; this type describes the body in the OpenAPI document.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HubBatch {
    pub readings: Vec<HubReading>,
}

/// One reading as a hub sends it.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HubReading {
    /// The device's System ID (GATT 0x2A23) as an EUI-64 of 16 hex digits; or
    #[serde(default)]
    system_id: Option<String>,
    /// its Bluetooth address, `AA:BB:CC:DD:EE:FF`.
    #[serde(default)]
    address: Option<String>,
    /// The GATT service; informative (the characteristic decides the decoding).
    #[serde(default, rename = "service")]
    _service: Option<String>,
    /// The GATT characteristic, `0x2A35` or a full UUID.
    characteristic: String,
    /// The value's bytes as sent over the air (wire byte order), in base64.
    value: String,
    /// When the hub received it: RFC 3339 with its offset.
    received: String,
    /// The device's model, when its Device does not say.
    #[serde(default)]
    model: Option<String>,
}

/// A reading of the batch as the pipeline takes it; one that cannot be read becomes
/// [`Content::Invalid`] with the reason, and only it is rejected.
fn incoming(raw: Value) -> Incoming {
    let invalid = |why: String| Incoming {
        identity: Identity::default(),
        received: OffsetDateTime::now_utc(),
        content: Content::Invalid(why),
    };
    let r: HubReading = match serde_json::from_value(raw) {
        Ok(r) => r,
        Err(e) => return invalid(format!("malformed reading: {e}")),
    };
    let eui64 = match r.system_id.as_deref().map(parse_eui64).transpose() {
        Ok(e) => e,
        Err(why) => return invalid(why),
    };
    let address = match r.address.as_deref() {
        Some(a) => match super::device::bluetooth_address(a) {
            Some(a) => Some(a),
            None => {
                return invalid("address is not a Bluetooth address (AA:BB:CC:DD:EE:FF)".into());
            }
        },
        None => None,
    };
    let Some(uuid) = super::parse_uuid16(&r.characteristic) else {
        return invalid(format!(
            "characteristic {:?} is not a 16-bit UUID such as 0x2A35",
            truncate(&r.characteristic)
        ));
    };
    let bytes = match base64::engine::general_purpose::STANDARD.decode(r.value.trim()) {
        Ok(b) => b,
        Err(_) => return invalid("value is not base64".into()),
    };
    let received =
        match OffsetDateTime::parse(&r.received, &time::format_description::well_known::Rfc3339) {
            Ok(t) => t,
            Err(_) => {
                return invalid("received must be an RFC 3339 instant with its offset".into());
            }
        };
    Incoming {
        identity: Identity {
            eui64,
            address,
            other: None,
        },
        received,
        content: Content::Gatt {
            uuid,
            bytes,
            model: r.model,
        },
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(40).collect()
}

/// An EUI-64 as 16 hex digits, with or without separators.
fn parse_eui64(text: &str) -> Result<String, String> {
    let hex: String = text
        .chars()
        .filter(|c| !matches!(c, ':' | '-' | ' '))
        .collect::<String>()
        .to_ascii_uppercase();
    if hex.len() == 16 && hex.chars().all(|c| c.is_ascii_hexdigit()) {
        Ok(hex)
    } else {
        Err("systemId must be the EUI-64 as 16 hex digits".into())
    }
}

async fn hub(
    State(state): State<AppState>,
    Extension(p): Extension<Arc<Principal>>,
    body: axum::body::Bytes,
) -> Response {
    let result = async {
        let policy = Policy::of(&p, "");
        policy.check_ingest_hub()?;
        let organization = p.organization.clone().ok_or_else(|| {
            ApiError::Forbidden("this hub's client belongs to no organization".into())
        })?;
        let mut sender = Sender {
            channel: "hub".into(),
            name: p.client_id.clone(),
            organization,
            hub: None,
            hub_device: None,
        };
        match pipeline::find_hub(&state.store, &p.client_id, &sender.organization).await? {
            Some((id, device)) if device["status"] == "active" => {
                sender.hub = Some(id);
                sender.hub_device = Some(device);
            }
            found => {
                let why = if found.is_some() {
                    "this hub's Device is not active; activate it first"
                } else {
                    "this hub is not registered: no Device of its organization has the \
                     identifier of its client id"
                };
                pipeline::keep_refused(&state.store, &sender, &body, why).await?;
                return Err(ApiError::Forbidden(format!(
                    "{why} ({HUB_CLIENT_SYSTEM}|{})",
                    p.client_id
                )));
            }
        }
        let readings = match serde_json::from_slice::<Value>(&body) {
            Ok(Value::Object(mut o)) => match o.remove("readings") {
                Some(Value::Array(list)) => list,
                _ => {
                    pipeline::keep_refused(&state.store, &sender, &body, "no readings array")
                        .await?;
                    return Err(ApiError::bad_request(
                        "structure",
                        "the body must be {\"readings\": [...]}",
                    ));
                }
            },
            _ => {
                pipeline::keep_refused(&state.store, &sender, &body, "not a JSON object").await?;
                return Err(ApiError::bad_request(
                    "structure",
                    "the body must be a JSON object {\"readings\": [...]}",
                ));
            }
        };
        let total = readings.len();
        let items: Vec<Incoming> = readings
            .into_iter()
            .take(MAX_READINGS)
            .map(incoming)
            .collect();
        let over: Vec<ReadingResult> = (MAX_READINGS..total)
            .map(|index| ReadingResult {
                index,
                status: Status::Rejected,
                observations: Vec::new(),
                device: None,
                reason: Some(format!(
                    "over the batch limit of {MAX_READINGS} readings; send it again in another batch"
                )),
            })
            .collect();
        let results = pipeline::ingest(&state.store, &sender, items, over, &body).await?;
        Ok::<_, ApiError>(pipeline::answer(&body, results, "hub batch"))
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

#[derive(Debug, Deserialize)]
struct MessageQuery {
    #[serde(default)]
    sha256: Option<String>,
    #[serde(default)]
    count: Option<i64>,
}

/// `GET /ingest/messages[?sha256=…&count=…]`: kept raw messages, newest first, with what
/// became of each reading (admins; a clinic its own).
async fn messages(
    State(state): State<AppState>,
    Extension(p): Extension<Arc<Principal>>,
    query: Result<Query<MessageQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let result = async {
        let policy = Policy::for_request(&p, "", &state.store).await?;
        let orgs = policy.raw_message_orgs()?;
        let Query(q) = query.map_err(|e| ApiError::bad_request("invalid", e.body_text()))?;
        let count = q.count.unwrap_or(20).clamp(1, 200);
        let sha = q.sha256.map(|s| s.to_ascii_lowercase());
        let found = state
            .store
            .messages(sha.as_deref(), orgs.as_deref(), count)
            .await?;
        let list: Vec<Value> = found
            .into_iter()
            .map(|m| {
                json!({
                    "sha256": m.sha256,
                    "received": crate::store::format_instant(m.received_at),
                    "channel": m.channel,
                    "sender": m.sender,
                    "organization": m.organization,
                    "body": base64::engine::general_purpose::STANDARD.encode(&m.body),
                    "results": serde_json::from_str::<Value>(&m.results).unwrap_or(Value::Null),
                })
            })
            .collect();
        Ok::<_, ApiError>(Json(json!({ "messages": list })).into_response())
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}
