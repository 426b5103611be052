//! Who a device is (issue 5, item 5): the Device Information service's values, the device's
//! identity keys (EUI-64 system id, Bluetooth address), and the PHD IG's identifiers of a
//! Device (http://hl7.org/fhir/uv/phd/StructureDefinition/PhdDevice: `SYSID` and `BTMAC`).

use serde_json::{Value, json};

use super::gatt::DecodeError;

/// The PhdDevice system-id identifier's system (IEEE EUI-64).
pub const SYSID_SYSTEM: &str = "urn:oid:1.2.840.10004.1.1.1.0.0.1.0.0.1.2680";
/// The Bluetooth address identifier's system.
pub const BTMAC_SYSTEM: &str = "http://hl7.org/fhir/sid/eui-48/bluetooth";
const IDENTIFIER_TYPES: &str = "http://hl7.org/fhir/uv/phd/CodeSystem/ContinuaDeviceIdentifiers";

/// The Device Information service characteristics (0x2A23-0x2A29).
pub fn information_field(uuid: u16) -> Option<&'static str> {
    Some(match uuid {
        0x2A23 => "system_id",
        0x2A24 => "model_number",
        0x2A25 => "serial_number",
        0x2A26 => "firmware_revision",
        0x2A27 => "hardware_revision",
        0x2A28 => "software_revision",
        0x2A29 => "manufacturer_name",
        _ => return None,
    })
}

/// A Device Information string: UTF-8, without the trailing NULs some devices pad with.
pub fn information_text(bytes: &[u8]) -> Result<String, DecodeError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|_| DecodeError::Invalid("device information text is not UTF-8".into()))?;
    Ok(text.trim_end_matches('\0').trim().to_owned())
}

/// The EUI-64 of a System ID (0x2A23): a 40-bit manufacturer-defined identifier then the 24-bit
/// OUI, little-endian on the wire; written most significant byte first, as upper-case hex.
pub fn eui64(system_id: &[u8]) -> Result<String, DecodeError> {
    if system_id.len() != 8 {
        return Err(DecodeError::Invalid(format!(
            "a system id is 8 bytes, got {}",
            system_id.len()
        )));
    }
    Ok(system_id.iter().rev().map(|b| format!("{b:02X}")).collect())
}

/// A Bluetooth device address as `AA:BB:CC:DD:EE:FF`, from any of the usual spellings
/// (colons, dashes, none; either case).
pub fn bluetooth_address(text: &str) -> Option<String> {
    let hex: String = text
        .chars()
        .filter(|c| !matches!(c, ':' | '-'))
        .collect::<String>()
        .to_ascii_uppercase();
    if hex.len() != 12 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    Some(
        (0..6)
            .map(|i| &hex[2 * i..2 * i + 2])
            .collect::<Vec<_>>()
            .join(":"),
    )
}

/// The key of a device in de-duplication identifiers: its EUI-64 (16 hex digits) or, without
/// one, its Bluetooth address (12), upper case without separators (PHD IG 2.0.0).
pub fn device_key(eui64: Option<&str>, address: Option<&str>) -> Option<String> {
    eui64
        .map(str::to_owned)
        .or_else(|| address.map(|a| a.replace(':', "")))
}

/// A Device's PHD identifiers: the EUI-64 dashed (`FE-ED-AB-…`) and the Bluetooth address.
pub fn identifiers(eui64: Option<&str>, address: Option<&str>) -> Value {
    let mut out = Vec::new();
    if let Some(e) = eui64 {
        let dashed = (0..e.len() / 2)
            .map(|i| &e[2 * i..2 * i + 2])
            .collect::<Vec<_>>()
            .join("-");
        out.push(json!({
            "type": {"coding": [{"system": IDENTIFIER_TYPES, "code": "SYSID"}]},
            "system": SYSID_SYSTEM,
            "value": dashed
        }));
    }
    if let Some(a) = address {
        out.push(json!({
            "type": {"coding": [{"system": IDENTIFIER_TYPES, "code": "BTMAC"}]},
            "system": BTMAC_SYSTEM,
            "value": a.replace(':', "-")
        }));
    }
    Value::Array(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn system_ids_and_addresses_become_keys_and_identifiers() {
        // Wire order: manufacturer-defined identifier (LSB first), then the OUI (LSB first).
        let e = eui64(&[0x00, 0x1C, 0x05, 0xFF, 0xFE, 0xFF, 0xE8, 0x74]).unwrap();
        assert_eq!(e, "74E8FFFEFF051C00");
        assert!(
            eui64(&[1, 2, 3])
                .unwrap_err()
                .to_string()
                .contains("8 bytes")
        );
        assert_eq!(
            bluetooth_address("b0-49-5f-00-10-71").as_deref(),
            Some("B0:49:5F:00:10:71")
        );
        assert_eq!(
            bluetooth_address("b0495f001071").as_deref(),
            Some("B0:49:5F:00:10:71")
        );
        assert_eq!(bluetooth_address("b0:49:5f:00:10"), None);
        assert_eq!(bluetooth_address("zz:49:5f:00:10:71"), None);
        assert_eq!(
            device_key(Some(&e), None).as_deref(),
            Some("74E8FFFEFF051C00")
        );
        assert_eq!(
            device_key(None, Some("B0:49:5F:00:10:71")).as_deref(),
            Some("B0495F001071")
        );
        let ids = identifiers(Some(&e), Some("B0:49:5F:00:10:71"));
        assert_eq!(ids[0]["value"], "74-E8-FF-FE-FF-05-1C-00");
        assert_eq!(ids[1]["value"], "B0-49-5F-00-10-71");
        assert_eq!(information_text(b"Beurer\0\0").unwrap(), "Beurer");
        assert!(information_text(&[0xff, 0xfe]).is_err());
        assert_eq!(information_field(0x2A24), Some("model_number"));
    }
}
