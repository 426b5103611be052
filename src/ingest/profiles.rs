//! Device model profiles (issue 5, item 2): what a model does differently from the Bluetooth
//! specifications, as data. The decoders stay faithful to the specifications and take the
//! profile's [`Quirks`]; the gateway reads the profile's connection behaviour.

use super::gatt::Quirks;

/// One family of device models.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceProfile {
    pub name: &'static str,
    /// The manufacturer as the Device Information service names it (compared ignoring case).
    pub manufacturer: &'static str,
    /// Model numbers of the family start with one of these (ignoring case).
    pub model_prefixes: &'static [&'static str],
    pub quirks: Quirks,
    /// After connecting, the device indicates each stored record, one after another, with no
    /// Record Access Control Point request (Omron cuffs on the standard Blood Pressure
    /// service): every indication is a stored record, and sending them again is harmless
    /// because the server de-duplicates.
    pub stored_records_on_connect: bool,
}

/// The known families. A device that matches none is read by the specifications alone.
pub static PROFILES: &[DeviceProfile] = &[
    DeviceProfile {
        name: "Beurer BM series",
        manufacturer: "Beurer",
        model_prefixes: &["BM"],
        // Pulse rate and measurement status big-endian; the user-id byte always sent.
        quirks: Quirks {
            bp_big_endian_pulse_and_status: true,
            bp_always_user_id: true,
        },
        stored_records_on_connect: false,
    },
    DeviceProfile {
        name: "Omron (standard Blood Pressure service)",
        manufacturer: "Omron",
        model_prefixes: &["HEM", "BP", "M", "EVOLV", "X"],
        quirks: Quirks {
            bp_big_endian_pulse_and_status: false,
            bp_always_user_id: false,
        },
        stored_records_on_connect: true,
    },
];

/// The profile of a device from its Device Information manufacturer and model number.
pub fn profile_for(manufacturer: &str, model: &str) -> Option<&'static DeviceProfile> {
    PROFILES.iter().find(|p| {
        p.manufacturer.eq_ignore_ascii_case(manufacturer.trim())
            && p.model_prefixes.iter().any(|prefix| {
                model
                    .trim()
                    .get(..prefix.len())
                    .is_some_and(|m| m.eq_ignore_ascii_case(prefix))
            })
    })
}

/// The profile of a model written as one string, "Beurer BM85" (manufacturer, then model).
pub fn profile_named(text: &str) -> Option<&'static DeviceProfile> {
    let (manufacturer, model) = text.trim().split_once(char::is_whitespace)?;
    profile_for(manufacturer, model)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn models_find_their_family() {
        assert_eq!(
            profile_named("Beurer BM85").map(|p| p.name),
            Some("Beurer BM series")
        );
        assert_eq!(
            profile_for("OMRON", "HEM-7600T").map(|p| p.stored_records_on_connect),
            Some(true)
        );
        assert!(profile_named("A&D UA-651BLE").is_none());
        assert!(
            profile_named("Beurer GL50").is_none(),
            "a glucometer, not a BM cuff"
        );
        assert!(profile_named("Beurer").is_none());
    }
}
