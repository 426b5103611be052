#![no_main]
//! Characteristic 0x2A36 (see common.rs).

#[path = "common.rs"]
mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| common::run(0x2A36, data));
