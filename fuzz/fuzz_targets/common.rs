//! The body every fuzz target shares: arbitrary bytes as one characteristic, decoded by the
//! specification and with every vendor quirk, or refused with an error, never a panic. The
//! decoders' source is compiled here alone, not the whole server.

#[path = "../../src/ingest/gatt/mod.rs"]
#[allow(dead_code, unused_imports)]
mod gatt;

pub fn run(uuid: u16, data: &[u8]) {
    let quirks = [
        gatt::Quirks::default(),
        gatt::Quirks {
            bp_big_endian_pulse_and_status: true,
            bp_always_user_id: true,
        },
    ];
    for q in &quirks {
        if let Ok(m) = gatt::decode_with(uuid, data, q) {
            let _ = serde_json::to_string(&m);
        }
    }
}
