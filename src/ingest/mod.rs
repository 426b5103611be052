//! Device readings in (issue 5; DESIGN.md room `ingest`): the GATT decoders, and later the hub,
//! cellular and PHD endpoints, normalisation to profiled Observations, and the device registry.

pub mod cellular;
pub mod device;
pub mod gatt;
pub mod hub;
pub mod normalize;
pub mod pipeline;
pub mod profiles;
pub mod registry;
pub mod rules;

use serde_json::json;

/// Deletes raw inbound messages older than `days`, now and then every hour, for as long as
/// the server runs (issue 5, item 7). Observations and Provenance stay; only the payloads go.
pub async fn purge_raw_messages(store: crate::store::Store, days: u32) {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(3600));
    loop {
        every.tick().await;
        let before = crate::store::now_micros() - i64::from(days) * 86_400 * 1_000_000;
        match store.purge_messages(before).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(purged = n, "raw device messages past retention"),
            Err(e) => tracing::warn!(error = %e, "purging raw device messages failed"),
        }
    }
}

/// What the randomized test runs on arbitrary bytes: decode as `uuid` by the specification and
/// with every device profile's quirks, then normalise what decodes (the fuzz targets in `fuzz/`
/// run the decoding part under libFuzzer). Panics only on a bug.
pub fn fuzz_one(uuid: u16, data: &[u8]) {
    let plain = std::iter::once(gatt::Quirks::default());
    for quirks in plain.chain(profiles::PROFILES.iter().map(|p| p.quirks.clone())) {
        if let Ok(m) = gatt::decode_with(uuid, data, &quirks) {
            let ctx = normalize::Context {
                patient: Some("p".into()),
                device: Some("d".into()),
                gateway: None,
                device_key: "0000000000000000".into(),
                received: time::OffsetDateTime::UNIX_EPOCH,
                clock_offset_seconds: i64::from(data.first().copied().unwrap_or(0)) - 128,
                thresholds: None,
            };
            let _ = normalize::observations(&m, &ctx);
            let _ = serde_json::to_string(&m);
        }
    }
}

/// A characteristic's 16-bit assigned number from `0x2A35`, `2A35` or the 128-bit Bluetooth
/// base UUID `00002a35-0000-1000-8000-00805f9b34fb`.
pub fn parse_uuid16(text: &str) -> Option<u16> {
    let t = text.trim().to_ascii_lowercase();
    let short = match t.strip_suffix("-0000-1000-8000-00805f9b34fb") {
        Some(long) => long.strip_prefix("0000")?,
        None => t.strip_prefix("0x").unwrap_or(&t),
    };
    if short.len() != 4 {
        return None;
    }
    u16::from_str_radix(short, 16).ok()
}

/// Hexadecimal bytes; spaces, colons and dashes between them are allowed.
pub fn parse_hex(text: &str) -> Result<Vec<u8>, String> {
    let digits: String = text
        .chars()
        .filter(|c| !matches!(c, ' ' | ':' | '-'))
        .collect();
    let digits = digits.strip_prefix("0x").unwrap_or(&digits);
    if !digits.len().is_multiple_of(2) {
        return Err(format!(
            "{} hex digits: bytes need an even number",
            digits.len()
        ));
    }
    (0..digits.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(&digits[i..i + 2], 16)
                .map_err(|_| format!("{:?} is not a hex byte", &digits[i..i + 2]))
        })
        .collect()
}

/// `vitalbridge decode`: the decoded measurement as pretty JSON, or why it cannot be decoded.
pub fn decode_command(
    characteristic: &str,
    hex: &str,
    model: Option<&str>,
) -> Result<String, String> {
    let uuid = parse_uuid16(characteristic).ok_or_else(|| {
        format!("{characteristic:?} is not a 16-bit characteristic UUID (e.g. 0x2A35)")
    })?;
    let bytes = parse_hex(hex)?;
    let profile = match model {
        Some(m) => Some(profiles::profile_named(m).ok_or_else(|| {
            format!(
                "no device profile matches {m:?}; known: {}",
                known_profiles()
            )
        })?),
        None => None,
    };
    let quirks = profile.map(|p| p.quirks.clone()).unwrap_or_default();
    let measurement = gatt::decode_with(uuid, &bytes, &quirks)
        .map_err(|e| format!("cannot decode 0x{uuid:04X}: {e}"))?;
    // The Observations the server would store, without the patient and device it would
    // resolve from its registry, received now.
    let ctx = normalize::Context {
        patient: None,
        device: None,
        gateway: None,
        device_key: "0000000000000000".into(),
        received: time::OffsetDateTime::now_utc(),
        clock_offset_seconds: 0,
        thresholds: None,
    };
    // A reading the server would refuse says why instead.
    let resources = match normalize::observations(&measurement, &ctx) {
        Ok(produced) => json!(produced.into_iter().map(|p| p.resource).collect::<Vec<_>>()),
        Err(reasons) => json!({"refused": reasons}),
    };
    let out = json!({
        "characteristic": format!("0x{uuid:04X}"),
        "profile": profile.map(|p| p.name),
        "measurement": measurement,
        "fhir": resources,
    });
    serde_json::to_string_pretty(&out).map_err(|e| e.to_string())
}

/// `vitalbridge decode --vendor V --file F`: what a cellular vendor's payload holds, reading
/// by reading, and the Observations each would become; or why it cannot be read.
pub fn decode_vendor_command(vendor: &str, body: &[u8]) -> Result<String, String> {
    let items = cellular::parse_payload(vendor, body)?;
    let ctx = normalize::Context {
        patient: None,
        device: None,
        gateway: None,
        device_key: String::new(),
        received: time::OffsetDateTime::now_utc(),
        clock_offset_seconds: 0,
        thresholds: None,
    };
    let readings: Vec<serde_json::Value> = items
        .into_iter()
        .map(|item| {
            let device = item
                .identity
                .other
                .as_ref()
                .map(|(system, value)| json!({"system": system, "value": value}));
            match item.content {
                pipeline::Content::Decoded(m) => {
                    let ctx = normalize::Context {
                        device_key: item.identity.other.map(|(_, v)| v).unwrap_or_default(),
                        ..ctx.clone()
                    };
                    let fhir = match normalize::observations(&m, &ctx) {
                        Ok(p) => json!(p.into_iter().map(|p| p.resource).collect::<Vec<_>>()),
                        Err(reasons) => json!({"refused": reasons}),
                    };
                    json!({"device": device, "measurement": m, "fhir": fhir})
                }
                pipeline::Content::Invalid(why) => json!({"invalid": why}),
                pipeline::Content::Gatt { .. } => json!({"invalid": "not a vendor reading"}),
            }
        })
        .collect();
    let all_invalid = !readings.is_empty() && readings.iter().all(|r| r.get("invalid").is_some());
    let out = json!({"vendor": vendor, "readings": readings});
    let text = serde_json::to_string_pretty(&out).map_err(|e| e.to_string())?;
    if all_invalid {
        Err(format!("no reading of this payload can be read:\n{text}"))
    } else {
        Ok(text)
    }
}

fn known_profiles() -> String {
    profiles::PROFILES
        .iter()
        .map(|p| p.name)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn uuids_and_hex_are_read_leniently_and_checked() {
        assert_eq!(parse_uuid16("0x2A35"), Some(0x2A35));
        assert_eq!(parse_uuid16("2a35"), Some(0x2A35));
        assert_eq!(
            parse_uuid16("00002A35-0000-1000-8000-00805F9B34FB"),
            Some(0x2A35)
        );
        assert_eq!(parse_uuid16("0x2A3"), None);
        assert_eq!(parse_hex("1e:8a 00"), Ok(vec![0x1e, 0x8a, 0]));
        assert!(parse_hex("1e8").unwrap_err().contains("even"));
        assert!(parse_hex("zz").unwrap_err().contains("not a hex byte"));
    }

    #[test]
    fn the_command_decodes_or_says_why() {
        let out = decode_command("0x2A35", "1e8a00580078000000041114293b3c00012700", None)
            .expect("decodes");
        let v: serde_json::Value = serde_json::from_str(&out).expect("json");
        assert_eq!(v["measurement"]["systolic"]["value"], "138");
        assert_eq!(v["fhir"][0]["component"][0]["valueQuantity"]["value"], 138);
        assert_eq!(v["fhir"][1]["code"]["coding"][1]["code"], "8867-4");
        let e = decode_command("0x2A35", "010203040506", None).unwrap_err();
        assert!(e.contains("truncated: mean arterial pressure"), "{e}");
        let e = decode_command("0x2A35", "00", Some("Nobody X1")).unwrap_err();
        assert!(e.contains("Beurer BM series"), "{e}");
    }
}
