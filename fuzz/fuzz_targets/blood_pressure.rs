#![no_main]
//! Arbitrary bytes as characteristic 0x2A35: decoded (by the specification and by every
//! device profile) or refused with an error, never a panic.
libfuzzer_sys::fuzz_target!(|data: &[u8]| vitalbridge_fuzz_common(data));

fn vitalbridge_fuzz_common(data: &[u8]) {
    vitalbridge::ingest::fuzz_one(0x2A35, data);
}
