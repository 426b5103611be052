#![no_main]
//! Arbitrary bytes as characteristic 0x2A35: decoded (by the specification and with every
//! vendor quirk) or refused with an error, never a panic.

#[path = "../../src/ingest/gatt/mod.rs"]
#[allow(dead_code, unused_imports)]
mod gatt;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let quirks = [
        gatt::Quirks::default(),
        gatt::Quirks {
            bp_big_endian_pulse_and_status: true,
            bp_always_user_id: true,
        },
    ];
    for q in &quirks {
        if let Ok(m) = gatt::decode_with(0x2A35, data, q) {
            let _ = serde_json::to_string(&m);
        }
    }
});
