//! `POST /ingest/cellular/{vendor}` (issue 5, "Three ways in" b): webhooks of cellular device
//! vendors, turned into the same readings as a hub's and stored by the same pipeline.
//!
//! A clinic (or an admin for it) registers an integration with `POST /ingest/vendors`
//! (`{"vendor": "tenovi", "organization": "c1"}`) and gets its id and secret once. The vendor
//! then authenticates each webhook in the integration's way, compared in constant time:
//!
//! - `header` (Tenovi's "auth header"): `X-Vitalbridge-Key: {id}.{secret}`;
//! - `basic` (BodyTrace): HTTP Basic with the id as user name and the secret as password;
//! - `hmac` (the generic format): `X-Vitalbridge-Integration: {id}` and
//!   `X-Vitalbridge-Signature: sha256={hex HMAC-SHA256 of the body under the secret}`.
//!
//! Formats:
//! - `tenovi`: one measurement object or an array of them ("post as array"): `metric`
//!   (`blood_pressure`, `pulse`, `weight`, `glucose`, `spO2`, `temperature`), `value_1`,
//!   `value_2`, `hwi_device_id`, `timestamp` (https://docs.tenovi.com/hwi-api/webhooks/measurement-webhooks);
//! - `withings`: a "new data" notification (`userid`, `startdate`, `enddate`, form-encoded; the
//!   key in the callback URL, `?key={id}.{secret}`), on which the server fetches the measure
//!   groups from the integration's `api_url` with its `api_token`;
//! - `telli`: `{"deviceId", "readingType": "BloodPressure" | "SpO2", "time" (ms, a string),
//!   "data": {"systolic", "diastolic", "pulse", "arrhythmia"} | {"spo2", "pulse"}}`, the key as
//!   `x-api-key: {id}.{secret}` (https://tellihealth.com/developer-guide/);
//! - `bodytrace`: `{"deviceId", "ts" (ms), "batteryVoltage", "rssi", "values": {"weight" (g),
//!   "unit", "tare"}}`, `deviceId` being the IMEI without leading zeros and check digit;
//! - `generic`: `{"readings": [{"imei" | "deviceId", "type", "values": {...}, "unit",
//!   "measured"}]}` with `type` one of `blood-pressure` (`systolic`, `diastolic`, `pulse`;
//!   mmHg), `weight` (`weight`; `kg` or `lb`), `glucose` (`glucose`; mg/dL), `temperature`
//!   (`temperature`; `Cel` or `[degF]`), `spo2` (`spo2`, `pulse`), `heart-rate` (`pulse`).
//!
//! Devices are found by their Device.identifier: the IMEI (`urn:gsma:imei`, 15 digits) or,
//! for Tenovi, the HWI device id ([`TENOVI_SYSTEM`]).

use std::sync::{Arc, LazyLock};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Json, Router};
use base64::Engine as _;
use serde_json::{Number, Value, json};
use subtle::ConstantTimeEq as _;
use time::OffsetDateTime;

use super::gatt::{DateTime, Decimal, Float, Measurement, Quantity, measurements as m};
use super::pipeline::{self, Content, Identity, Incoming, Sender};
use crate::auth::Principal;
use crate::auth::policy::Policy;
use crate::fhir::types::ResourceId;
use crate::http::AppState;
use crate::http::error::ApiError;
use crate::store::ingest::VendorRecord;

/// The identifier system of IMEIs (GSMA).
pub const IMEI_SYSTEM: &str = "urn:gsma:imei";
/// The identifier system of Tenovi's HWI device ids.
pub const TENOVI_SYSTEM: &str = "https://vitalbridge.dev/fhir/NamingSystem/tenovi-hwi-device-id";

/// The vendors with an adapter, and how each authenticates by default.
pub const VENDORS: &[(&str, &str)] = &[
    ("tenovi", "header"),
    ("bodytrace", "basic"),
    ("generic", "hmac"),
    ("withings", "header"),
    ("telli", "header"),
];

/// The identifier system of Telli Health device ids.
pub const TELLI_SYSTEM: &str = "https://vitalbridge.dev/fhir/NamingSystem/telli-device-id";

/// The identifier system of Withings-style device ids.
pub const WITHINGS_SYSTEM: &str = "https://vitalbridge.dev/fhir/NamingSystem/withings-device-id";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/ingest/vendors", post(register))
        .route("/ingest/cellular/{vendor}", post(webhook))
}

/// Whether `path` is a vendor webhook: authenticated by the integration's secret, not a
/// bearer token.
pub fn is_webhook(path: &str) -> bool {
    path.starts_with("/ingest/cellular/")
}

#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewIntegration {
    vendor: String,
    organization: String,
    #[serde(default)]
    auth: Option<String>,
    /// Withings-style: the vendor's measure API the server fetches from on a notification...
    #[serde(default)]
    api_url: Option<String>,
    /// ... with this bearer token.
    #[serde(default)]
    api_token: Option<String>,
}

/// `POST /ingest/vendors`: a new integration of the caller's organization (any for admins);
/// its secret is shown in this answer only.
async fn register(
    State(state): State<AppState>,
    Extension(p): Extension<Arc<Principal>>,
    body: Result<Json<NewIntegration>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let result = async {
        let Json(new) = body.map_err(|e| ApiError::bad_request("structure", e.body_text()))?;
        let policy = Policy::for_request(&p, "", &state.store).await?;
        policy.check_manage_integrations(&new.organization)?;
        let Some((vendor, default_auth)) = VENDORS.iter().find(|(v, _)| *v == new.vendor) else {
            return Err(ApiError::bad_request(
                "not-supported",
                format!(
                    "no adapter for this vendor; known: {}",
                    VENDORS
                        .iter()
                        .map(|(v, _)| *v)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        };
        let auth = new.auth.as_deref().unwrap_or(default_auth);
        if !matches!(auth, "header" | "basic" | "hmac") {
            return Err(ApiError::bad_request(
                "invalid",
                "auth must be header, basic or hmac",
            ));
        }
        if *vendor == "withings" {
            match new.api_url.as_deref().map(url::Url::parse) {
                Some(Ok(u)) if matches!(u.scheme(), "https" | "http") => {}
                _ => {
                    return Err(ApiError::bad_request(
                        "required",
                        "a withings integration needs the api_url its measures are fetched from",
                    ));
                }
            }
        }
        if ResourceId::parse(&new.organization).is_none() {
            return Err(ApiError::bad_request(
                "invalid",
                "organization must be an Organization id",
            ));
        }
        let record = VendorRecord {
            id: format!(
                "{vendor}-{}",
                &uuid::Uuid::new_v4().simple().to_string()[..12]
            ),
            vendor: (*vendor).to_owned(),
            organization: new.organization,
            auth: auth.to_owned(),
            secret: crate::auth::clients::new_secret(),
            api_url: new.api_url,
            api_token: new.api_token,
            created_at: crate::store::now_micros(),
        };
        state.store.put_vendor(&record).await?;
        Ok::<_, ApiError>(
            (
                StatusCode::CREATED,
                [(header::CACHE_CONTROL, "no-store")],
                Json(json!({
                    "id": record.id,
                    "vendor": record.vendor,
                    "organization": record.organization,
                    "auth": record.auth,
                    "secret": record.secret,
                    "webhook": format!("/ingest/cellular/{}", record.vendor),
                })),
            )
                .into_response(),
        )
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

fn unauthorized() -> ApiError {
    ApiError::Unauthorized("the webhook's credentials do not match an integration".into())
}

/// The integration a webhook authenticates as, checked in its own way.
async fn authenticate(
    state: &AppState,
    vendor: &str,
    headers: &HeaderMap,
    query: Option<&str>,
    body: &[u8],
) -> Result<VendorRecord, ApiError> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    // Vendors whose callback URL is all they let you set carry the key in it (`?key=`).
    let query_key = query.and_then(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "key")
            .map(|(_, v)| v.into_owned())
    });
    // Telli Health sends the token it was given as `x-api-key`.
    let (id, credential) = if let Some(key) = text("x-vitalbridge-key")
        .or(text("x-api-key"))
        .map(str::to_owned)
        .or(query_key)
    {
        let (id, secret) = key.split_once('.').ok_or_else(unauthorized)?;
        (id.to_owned(), Credential::Key(secret.to_owned()))
    } else if let Some(id) = text("x-vitalbridge-integration") {
        let signature = text("x-vitalbridge-signature")
            .and_then(|s| s.strip_prefix("sha256="))
            .ok_or_else(unauthorized)?
            .to_ascii_lowercase();
        (id.to_owned(), Credential::Hmac(signature))
    } else if let Some((user, password)) = text("authorization")
        .and_then(|a| a.strip_prefix("Basic "))
        .and_then(|b| {
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()
        })
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.split_once(':').map(|(u, p)| (u.to_owned(), p.to_owned())))
    {
        (user, Credential::Basic(password))
    } else {
        return Err(ApiError::Unauthorized(
            "a vendor webhook needs its integration's credentials".into(),
        ));
    };
    match state.store.vendor(&id).await? {
        Some(v) if v.vendor == vendor && credential.fits(&v, body) => Ok(v),
        _ => Err(unauthorized()),
    }
}

/// What a webhook presents, by the integration's way of authenticating.
enum Credential {
    /// `X-Vitalbridge-Key`'s secret.
    Key(String),
    /// The hex HMAC-SHA256 of the body.
    Hmac(String),
    /// HTTP Basic's password.
    Basic(String),
}

impl Credential {
    fn fits(&self, v: &VendorRecord, body: &[u8]) -> bool {
        match (self, v.auth.as_str()) {
            (Credential::Key(s), "header") | (Credential::Basic(s), "basic") => same(&v.secret, s),
            (Credential::Hmac(sig), "hmac") => same(&hmac_hex(&v.secret, body), sig),
            _ => false,
        }
    }
}

/// Constant-time equality of two secrets (their lengths are not secret).
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// Hex HMAC-SHA256 of `body` under `secret` (RFC 2104).
pub fn hmac_hex(secret: &str, body: &[u8]) -> String {
    use hmac::Mac as _;
    let Ok(mut mac) = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()) else {
        return String::new();
    };
    mac.update(body);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

async fn webhook(
    State(state): State<AppState>,
    Path(vendor): Path<String>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let result = async {
        if !VENDORS.iter().any(|(v, _)| *v == vendor) {
            return Err(ApiError::NotFound("no adapter for this vendor".into()));
        }
        let integration = authenticate(&state, &vendor, &headers, uri.query(), &body).await?;
        let sender = Sender {
            channel: format!("cellular/{vendor}"),
            name: integration.id.clone(),
            organization: integration.organization.clone(),
            hub: None,
            hub_device: None,
        };
        // A "new data" notification names what changed; the measures are fetched, and what
        // was fetched is the message kept.
        let body = if vendor == "withings" {
            match fetch_withings(&integration, &body).await {
                Ok(fetched) => axum::body::Bytes::from(fetched),
                Err(why) => {
                    pipeline::keep_refused(&state.store, &sender, &body, &why).await?;
                    return Err(ApiError::Unavailable(why));
                }
            }
        } else {
            body
        };
        let parsed: Value = match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(_) => {
                pipeline::keep_refused(&state.store, &sender, &body, "not JSON").await?;
                return Err(ApiError::bad_request("structure", "the body must be JSON"));
            }
        };
        let items = readings(&vendor, &parsed, OffsetDateTime::now_utc());
        let results = pipeline::ingest(&state.store, &sender, items, Vec::new(), &body).await?;
        Ok::<_, ApiError>(pipeline::answer(&body, results, "cellular webhook"))
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

/// The readings of a vendor's payload (for Withings, its measure API's answer).
fn readings(vendor: &str, parsed: &Value, now: OffsetDateTime) -> Vec<Incoming> {
    match vendor {
        "tenovi" => tenovi(parsed, now),
        "bodytrace" => vec![bodytrace(parsed, now)],
        "withings" => withings(parsed, now),
        "telli" => vec![telli(parsed, now)],
        _ => generic(parsed, now),
    }
}

/// The readings of a payload of `vendor`, for `vitalbridge decode --vendor`.
pub fn parse_payload(vendor: &str, body: &[u8]) -> Result<Vec<Incoming>, String> {
    if !VENDORS.iter().any(|(v, _)| *v == vendor) {
        let known: Vec<&str> = VENDORS.iter().map(|(v, _)| *v).collect();
        return Err(format!(
            "no adapter for {vendor:?}; known: {}",
            known.join(", ")
        ));
    }
    let parsed: Value =
        serde_json::from_slice(body).map_err(|e| format!("the payload is not JSON: {e}"))?;
    Ok(readings(vendor, &parsed, OffsetDateTime::now_utc()))
}

fn invalid(why: impl Into<String>, now: OffsetDateTime) -> Incoming {
    Incoming {
        identity: Identity::default(),
        received: now,
        content: Content::Invalid(why.into()),
    }
}

/// A decoded vendor reading. Its `received` is the vendor's own time of the reading, not the
/// webhook's arrival: the same reading sent again must name the same Observations, also for
/// kinds without a time stamp of their own (a Tenovi `pulse`).
fn reading(identity: Identity, received: OffsetDateTime, m: Measurement) -> Incoming {
    Incoming {
        identity,
        received,
        content: Content::Decoded(Box::new(m)),
    }
}

/// A JSON number as a decimal with the digits it was written with (`80.50` stays 2 places).
fn decimal(n: &Number) -> Option<Decimal> {
    let text = n.to_string();
    let (int, frac) = text.split_once('.').unwrap_or((&text, ""));
    if text.contains(['e', 'E']) || frac.len() > 6 {
        return None;
    }
    let mantissa: i64 = format!("{int}{frac}").parse().ok()?;
    Some(Decimal {
        mantissa,
        exponent: -(frac.len() as i32),
    })
}

fn quantity(v: &Value, unit: &'static str) -> Option<Quantity> {
    Some(Quantity::new(Float::Value(decimal(v.as_number()?)?), unit))
}

fn stamp(t: OffsetDateTime) -> DateTime {
    let t = t.to_offset(time::UtcOffset::UTC);
    DateTime {
        year: Some(t.year() as u16),
        month: Some(u8::from(t.month())),
        day: Some(t.day()),
        hour: t.hour(),
        minute: t.minute(),
        second: t.second(),
    }
}

fn rfc3339(v: &Value) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(v.as_str()?, &time::format_description::well_known::Rfc3339).ok()
}

/// The measurement of a reading of `kind` with `values`, measured at `at`.
fn measurement(
    kind: &str,
    values: &Value,
    unit: Option<&str>,
    at: OffsetDateTime,
) -> Result<Measurement, String> {
    let need = |name: &str, unit: &'static str| {
        quantity(&values[name], unit).ok_or_else(|| format!("{kind} needs a number `{name}`"))
    };
    let at = Some(stamp(at));
    Ok(match kind {
        "blood-pressure" => Measurement::BloodPressure(m::BloodPressure {
            units: "mmHg",
            systolic: need("systolic", "mmHg")?,
            diastolic: need("diastolic", "mmHg")?,
            // Cellular cuffs report no mean pressure: the Observation has no mean component
            // rather than one saying the cuff measured "not a number".
            mean_arterial_pressure: None,
            timestamp: at,
            pulse_rate: quantity(&values["pulse"], "bpm"),
            user_id: None,
            measurement_status: None,
            pulse_rate_range: None,
            measurement_status_raw: None,
        }),
        "weight" => {
            let unit = match unit.unwrap_or("kg") {
                "kg" => "kg",
                "lb" | "[lb_av]" => "lb",
                other => return Err(format!("weight in {other:?}: give kg or lb")),
            };
            Measurement::Weight(m::Weight {
                units: if unit == "kg" { "SI" } else { "imperial" },
                weight: need("weight", unit)?,
                timestamp: at,
                user_id: None,
                bmi: None,
                height: None,
            })
        }
        "temperature" => {
            let unit = match unit.unwrap_or("Cel") {
                "Cel" | "degC" => "degC",
                "[degF]" | "degF" => "degF",
                other => return Err(format!("temperature in {other:?}: give Cel or [degF]")),
            };
            Measurement::Temperature(m::Temperature {
                units: unit,
                temperature: need("temperature", unit)?,
                timestamp: at,
                temperature_type: None,
            })
        }
        "spo2" => Measurement::PlxSpotCheck(m::PlxSpotCheck {
            spo2: need("spo2", "%")?,
            pulse_rate: quantity(&values["pulse"], "bpm")
                .unwrap_or(Quantity::new(Float::NaN, "bpm")),
            timestamp: at,
            measurement_status: None,
            measurement_status_raw: None,
            device_and_sensor_status: None,
            device_and_sensor_status_raw: None,
            pulse_amplitude_index: None,
            device_clock_not_set: false,
        }),
        "glucose" => {
            let Some(t) = at else {
                return Err("glucose needs its time".into());
            };
            Measurement::Glucose(m::Glucose {
                sequence_number: 0,
                base_time: t,
                time_offset: None,
                timestamp: t,
                units: Some("mg/dL"),
                concentration: None,
                concentration_conventional: Some(need("glucose", "mg/dL")?),
                sample_type: None,
                sample_location: None,
                sensor_status: None,
                sensor_status_raw: None,
                context_information_follows: false,
            })
        }
        other => return Err(format!("readings of type {other:?} are not supported")),
    })
}

/// The documented generic format.
fn generic(v: &Value, now: OffsetDateTime) -> Vec<Incoming> {
    let Some(list) = v["readings"].as_array() else {
        return vec![invalid("the body must be {\"readings\": [...]}", now)];
    };
    list.iter()
        .map(|r| {
            let Some(imei) = r["imei"].as_str().or(r["deviceId"].as_str()).and_then(imei) else {
                return invalid("imei must be the device's 15-digit IMEI", now);
            };
            let Some(at) = rfc3339(&r["measured"]) else {
                return invalid("measured must be an RFC 3339 instant", now);
            };
            match measurement(
                r["type"].as_str().unwrap_or(""),
                &r["values"],
                r["unit"].as_str(),
                at,
            ) {
                Ok(m) => reading(Identity::other(IMEI_SYSTEM, &imei), at, m),
                Err(why) => invalid(why, now),
            }
        })
        .collect()
}

/// Tenovi: one measurement, or an array of coincident ones; a cuff's pulse arrives as its own
/// `pulse` metric with the same time stamp and is stored with the pressure's reading.
fn tenovi(v: &Value, now: OffsetDateTime) -> Vec<Incoming> {
    let list: Vec<&Value> = match v {
        Value::Array(a) => a.iter().collect(),
        one => vec![one],
    };
    list.iter()
        .map(|t| {
            let Some(id) = t["hwi_device_id"].as_str().filter(|s| !s.is_empty()) else {
                return invalid("hwi_device_id is missing", now);
            };
            let Some(at) = rfc3339(&t["timestamp"]) else {
                return invalid("timestamp must be an RFC 3339 instant", now);
            };
            let identity = Identity::other(TENOVI_SYSTEM, id);
            let (v1, v2) = (&t["value_1"], &t["value_2"]);
            let kind = match t["metric"].as_str().unwrap_or("") {
                "blood_pressure" => Some((
                    "blood-pressure",
                    json!({"systolic": v1, "diastolic": v2}),
                    None,
                )),
                "pulse" => Some(("heart-rate", json!({"pulse": v1}), None)),
                "weight" => Some(("weight", json!({"weight": v1}), Some("lb"))),
                "glucose" => Some(("glucose", json!({"glucose": v1}), None)),
                "spO2" | "spo2" => Some(("spo2", json!({"spo2": v1, "pulse": v2}), None)),
                "temperature" => Some(("temperature", json!({"temperature": v1}), Some("[degF]"))),
                _ => None,
            };
            match kind {
                Some(("heart-rate", values, _)) => match quantity(&values["pulse"], "bpm") {
                    Some(q) => reading(
                        identity,
                        at,
                        Measurement::HeartRate(m::HeartRate {
                            heart_rate: q,
                            heart_rate_format: "uint8",
                            sensor_contact: "not_supported",
                            energy_expended: None,
                            rr_intervals: None,
                        }),
                    ),
                    None => invalid("pulse needs a number value_1", now),
                },
                Some((kind, values, unit)) => match measurement(kind, &values, unit, at) {
                    Ok(m) => reading(identity, at, m),
                    Err(why) => invalid(why, now),
                },
                None => invalid("this metric is not supported", now),
            }
        })
        .collect()
}

/// BodyTrace: a scale's weight in grams; its IMEI without leading zeros and check digit.
fn bodytrace(v: &Value, now: OffsetDateTime) -> Incoming {
    let Some(imei) = v["deviceId"]
        .as_u64()
        .map(|n| n.to_string())
        .or_else(|| v["deviceId"].as_str().map(str::to_owned))
        .and_then(|d| imei(&d))
    else {
        return invalid("deviceId must be the scale's IMEI", now);
    };
    let Some(at) = v["ts"]
        .as_i64()
        .and_then(|ms| OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok())
    else {
        return invalid("ts must be milliseconds since the epoch", now);
    };
    let Some(grams) = v["values"]["weight"].as_i64() else {
        return invalid("values.weight must be grams", now);
    };
    let weight = Quantity::new(
        Float::Value(Decimal {
            mantissa: grams,
            exponent: -3,
        }),
        "kg",
    );
    reading(
        Identity::other(IMEI_SYSTEM, &imei),
        at,
        Measurement::Weight(m::Weight {
            units: "SI",
            weight,
            timestamp: Some(stamp(at)),
            user_id: None,
            bmi: None,
            height: None,
        }),
    )
}

/// Fetches the measures a Withings-style notification (`userid`, `startdate`, `enddate`,
/// form-encoded) announces, from the integration's measure API with its bearer token
/// (https://developer.withings.com/api-reference/#tag/measure/operation/measure-getmeas).
async fn fetch_withings(v: &VendorRecord, notification: &[u8]) -> Result<Vec<u8>, String> {
    let fields: std::collections::HashMap<String, String> =
        url::form_urlencoded::parse(notification)
            .into_owned()
            .collect();
    let (Some(user), Some(start), Some(end)) = (
        fields.get("userid"),
        fields.get("startdate"),
        fields.get("enddate"),
    ) else {
        return Err("a notification names userid, startdate and enddate".into());
    };
    let url = v
        .api_url
        .as_deref()
        .ok_or("the integration has no api_url")?;
    static HTTP: LazyLock<reqwest::Client> = LazyLock::new(|| {
        reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(20))
            .build()
            .unwrap_or_default()
    });
    let mut req = HTTP.post(url).form(&[
        ("action", "getmeas"),
        ("userid", user.as_str()),
        ("startdate", start.as_str()),
        ("enddate", end.as_str()),
    ]);
    if let Some(token) = &v.api_token {
        req = req.bearer_auth(token);
    }
    let resp = req
        .send()
        .await
        .map_err(|_| "the vendor's measure API cannot be reached; it may send again".to_owned())?;
    if !resp.status().is_success() {
        return Err(format!(
            "the vendor's measure API answered {}",
            resp.status()
        ));
    }
    resp.bytes()
        .await
        .map(|b| b.to_vec())
        .map_err(|_| "the vendor's measure API answer was cut short".to_owned())
}

/// Withings measure groups: `{"status": 0, "body": {"measuregrps": [{"date", "deviceid",
/// "measures": [{"value", "type", "unit"}]}]}}`, each value `value × 10^unit` in the type's
/// unit: 1 weight kg, 9 diastolic and 10 systolic mmHg, 11 pulse bpm, 54 SpO2 %, 71 body
/// temperature °C.
fn withings(v: &Value, now: OffsetDateTime) -> Vec<Incoming> {
    if v["status"] != 0 {
        return vec![invalid("the vendor's answer has a non-zero status", now)];
    }
    v["body"]["measuregrps"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|g| {
            let Some(device) = g["deviceid"].as_str().filter(|d| !d.is_empty()) else {
                return invalid("a measure group without deviceid", now);
            };
            let Some(at) = g["date"]
                .as_i64()
                .and_then(|d| OffsetDateTime::from_unix_timestamp(d).ok())
            else {
                return invalid("a measure group without date", now);
            };
            let measure = |ty: i64| {
                g["measures"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|m| m["type"] == ty)
                    .and_then(|m| {
                        let value = m["value"].as_i64()?;
                        let unit = i32::try_from(m["unit"].as_i64()?).ok()?;
                        Some(Value::from(serde_json::Number::from_string_unchecked(
                            Decimal {
                                mantissa: value,
                                exponent: unit,
                            }
                            .to_string(),
                        )))
                    })
            };
            let identity = Identity::other(WITHINGS_SYSTEM, device);
            let (kind, values, unit) = if let (Some(sys), Some(dia)) = (measure(10), measure(9)) {
                let mut values = json!({"systolic": sys, "diastolic": dia});
                if let Some(p) = measure(11) {
                    values["pulse"] = p;
                }
                ("blood-pressure", values, None)
            } else if let Some(w) = measure(1) {
                ("weight", json!({"weight": w}), Some("kg"))
            } else if let Some(s) = measure(54) {
                ("spo2", json!({"spo2": s, "pulse": measure(11)}), None)
            } else if let Some(t) = measure(71).or_else(|| measure(12)) {
                ("temperature", json!({"temperature": t}), Some("Cel"))
            } else {
                return invalid("no measure type this server takes", now);
            };
            match measurement(kind, &values, unit, at) {
                Ok(m) => reading(identity, at, m),
                Err(why) => invalid(why, now),
            }
        })
        .collect()
}

/// Telli Health: one reading per POST; a cuff's `arrhythmia` flag is the irregular-pulse bit of
/// the blood-pressure measurement status.
fn telli(v: &Value, now: OffsetDateTime) -> Incoming {
    let Some(device) = v["deviceId"].as_str().filter(|d| !d.is_empty()) else {
        return invalid("deviceId is missing", now);
    };
    let ms = v["time"]
        .as_i64()
        .or_else(|| v["time"].as_str().and_then(|t| t.trim().parse().ok()));
    let Some(at) = ms
        .and_then(|ms| OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok())
    else {
        return invalid("time must be milliseconds since the epoch", now);
    };
    let identity = Identity::other(TELLI_SYSTEM, device);
    let data = &v["data"];
    let m = match v["readingType"].as_str().unwrap_or("") {
        "BloodPressure" => measurement("blood-pressure", data, None, at).map(|mut m| {
            if let Measurement::BloodPressure(bp) = &mut m
                && data["arrhythmia"] == 1
            {
                bp.measurement_status = Some(vec!["irregular_pulse"]);
                bp.measurement_status_raw = Some(m::Bits16(1 << 2));
            }
            m
        }),
        "SpO2" => measurement("spo2", data, None, at),
        other => Err(format!("readings of type {other:?} are not supported")),
    };
    match m {
        Ok(m) => reading(identity, at, m),
        Err(why) => invalid(why, now),
    }
}

/// A 15-digit IMEI from 15 digits, or from 14 or fewer (leading zeros and the Luhn check digit
/// left out, as BodyTrace sends it).
pub fn imei(text: &str) -> Option<String> {
    let digits = text.trim();
    if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit()) || digits.len() > 15 {
        return None;
    }
    if digits.len() == 15 {
        return (luhn(&digits[..14]) == digits.as_bytes()[14] - b'0').then(|| digits.to_owned());
    }
    let body = format!("{digits:0>14}");
    Some(format!("{body}{}", luhn(&body)))
}

/// The Luhn check digit of `body` (ISO/IEC 7812, as IMEIs use it).
fn luhn(body: &str) -> u8 {
    let sum: u32 = body
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 0 {
                let x = d * 2;
                x / 10 + x % 10
            } else {
                d
            }
        })
        .sum();
    ((10 - sum % 10) % 10) as u8
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn imeis_get_their_check_digit() {
        // 49015420323751 + Luhn 8: the example IMEI of the GSMA's TS.06.
        assert_eq!(imei("490154203237518").as_deref(), Some("490154203237518"));
        assert_eq!(imei("49015420323751").as_deref(), Some("490154203237518"));
        assert_eq!(imei("490154203237517"), None, "wrong check digit");
        assert_eq!(imei("12a"), None);
    }

    #[test]
    fn a_cellular_pressure_has_no_mean_component() {
        let at = time::macros::datetime!(2026-12-01 10:00:00 UTC);
        let m = measurement(
            "blood-pressure",
            &json!({"systolic": 128, "diastolic": 81, "pulse": 66}),
            None,
            at,
        )
        .unwrap();
        let ctx = crate::ingest::normalize::Context {
            patient: Some("p1".into()),
            device: Some("cuff-1".into()),
            gateway: None,
            device_key: "490154203237518".into(),
            received: at,
            clock_offset_seconds: 0,
            thresholds: None,
        };
        let out = crate::ingest::normalize::observations(&m, &ctx).unwrap();
        let bp = &out[0].resource;
        let codes: Vec<&str> = bp["component"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["code"]["coding"][0]["code"].as_str().unwrap())
            .collect();
        assert_eq!(codes, ["150021", "150022"], "{bp:#}");
        assert!(!bp.to_string().contains("dataAbsentReason"), "{bp:#}");
        let issues = crate::fhir::profiles::check_claimed(bp);
        assert!(issues.is_empty(), "{issues:?}");
    }

    #[test]
    fn numbers_keep_their_digits() {
        let d = decimal(&serde_json::from_str::<Number>("80.50").unwrap());
        // The digits as sent: serde_json keeps them (arbitrary precision).
        assert_eq!(
            d,
            Some(Decimal {
                mantissa: 8050,
                exponent: -2
            })
        );
        assert_eq!(
            decimal(&Number::from(120)),
            Some(Decimal {
                mantissa: 120,
                exponent: 0
            })
        );
    }

    #[test]
    fn hmac_matches_rfc_4231() {
        // RFC 4231 test case 2.
        assert_eq!(
            hmac_hex("Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
