//! Every vector of `shared/data/vectors/gatt.json` (byte sequences from public BLE libraries'
//! tests and the PHD IG's float table): valid ones decode to exactly the expected fields,
//! invalid ones fail with exactly the expected reason.

use serde_json::{Value, json};

use super::*;

const VECTORS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../shared/data/vectors/gatt.json"
);

fn vectors() -> Vec<Value> {
    let text = std::fs::read_to_string(VECTORS)
        .unwrap_or_else(|e| panic!("the decoder vectors must exist at {VECTORS}: {e}"));
    let v: Value = serde_json::from_str(&text).unwrap();
    v["vectors"].as_array().unwrap().clone()
}

fn hex(s: &str) -> Vec<u8> {
    crate::ingest::parse_hex(s).unwrap()
}

/// A bare SFLOAT/FLOAT vector, decoded to the vector's shape.
fn number(datatype: &str, bytes: &[u8]) -> Result<Value, DecodeError> {
    let mut r = Reader::new(bytes);
    let f = match datatype {
        "SFLOAT" => r.sfloat("value")?,
        "FLOAT" => r.float("value")?,
        other => panic!("unknown datatype {other}"),
    };
    Ok(match f {
        Float::Value(d) => {
            json!({"value": d.to_string(), "mantissa": d.mantissa, "exponent": d.exponent})
        }
        special => json!({"special": special.special()}),
    })
}

#[test]
fn every_shared_vector_decodes_as_expected() {
    let all = vectors();
    assert!(all.len() >= 87, "{} vectors", all.len());
    let mut failures = Vec::new();
    for v in &all {
        let id = v["id"].as_str().unwrap();
        let bytes = hex(v["hex"].as_str().unwrap());
        let got = match v["characteristic"].as_str() {
            None => number(v["datatype"].as_str().unwrap(), &bytes),
            Some(c) => {
                let uuid = u16::from_str_radix(c.trim_start_matches("0x"), 16).unwrap();
                decode(uuid, &bytes).map(|m| serde_json::to_value(m).unwrap())
            }
        };
        let expect = &v["expect"];
        match (v["valid"].as_bool().unwrap(), got) {
            (true, Ok(value)) if &value == expect => {}
            (false, Err(e)) if expect["error"] == json!(e.to_string()) => {}
            (_, got) => failures.push(format!("{id}: expected {expect}, got {got:?}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Every prefix of every valid vector is either decoded or refused with a typed error, never a
/// panic (the fuzz targets do the same with arbitrary bytes).
#[test]
fn every_prefix_of_every_vector_is_handled() {
    for v in vectors() {
        let Some(c) = v["characteristic"].as_str() else {
            continue;
        };
        let uuid = u16::from_str_radix(c.trim_start_matches("0x"), 16).unwrap();
        let bytes = hex(v["hex"].as_str().unwrap());
        for n in 0..bytes.len() {
            let _ = decode(uuid, &bytes[..n]);
        }
    }
}

/// The fuzz targets' check on stable Rust: random packets for every decoder, decoded and
/// normalised or refused, never a panic (a fixed seed, so a failure reproduces).
#[test]
fn random_packets_never_panic() {
    use rand::{Rng as _, SeedableRng as _};
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let uuids = [
        0x2A35, 0x2A36, 0x2A9D, 0x2A9C, 0x2A18, 0x2A34, 0x2A1C, 0x2A5E, 0x2A5F, 0x2A37, 0x2A19,
        0x2A08, 0x2A2B, 0x2A52,
    ];
    let mut decoded = 0;
    for _ in 0..5_000 {
        let len = rng.gen_range(0..32);
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.r#gen()).collect();
        // Mostly plausible flags: a random first byte would rarely reach the later fields.
        if let Some(f) = bytes.first_mut() {
            *f &= 0x1F;
        }
        for uuid in uuids {
            crate::ingest::fuzz_one(uuid, &bytes);
            decoded += usize::from(decode(uuid, &bytes).is_ok());
        }
    }
    assert!(decoded > 2_500, "only {decoded} random packets decoded");
}

#[test]
fn beurer_quirks_read_big_endian_pulse_and_the_user_byte() {
    // Flags: pulse rate and status present, user id NOT announced; 120/80/93 mmHg, pulse 72
    // big-endian, user 2 (sent anyway), status 0x0001 big-endian.
    let bytes = hex("14 7800 5000 5d00 0048 02 0001");
    let quirks = Quirks {
        bp_big_endian_pulse_and_status: true,
        bp_always_user_id: true,
    };
    let Measurement::BloodPressure(bp) = decode_with(0x2A35, &bytes, &quirks).unwrap() else {
        panic!("not a blood pressure");
    };
    assert_eq!(
        bp.pulse_rate.unwrap().value,
        Float::Value(Decimal::new(72, 0))
    );
    assert_eq!(bp.user_id, Some(2));
    assert_eq!(bp.measurement_status.unwrap(), vec!["body_movement"]);
    // The same bytes read by the specification's rules: pulse 0x4800 is another number, and
    // the user byte is taken as the first status byte.
    let Measurement::BloodPressure(plain) = decode(0x2A35, &bytes).unwrap() else {
        panic!("not a blood pressure");
    };
    assert_ne!(plain.pulse_rate, bp.pulse_rate);
}

#[test]
fn current_time_round_trips() {
    let t = time::macros::datetime!(2026-12-01 16:45:07);
    let bytes = current_time_value(t);
    let Measurement::Time(v) = decode(uuid::CURRENT_TIME, &bytes).unwrap() else {
        panic!("not a time");
    };
    assert_eq!(v.timestamp.primitive(), Some(t));
    assert_eq!(v.day_of_week, Some(2), "a Tuesday");
}

#[test]
fn unknown_characteristics_are_named() {
    assert_eq!(
        decode(0x2A00, &[1]).unwrap_err().to_string(),
        "characteristic 0x2A00 is not a health measurement this server decodes"
    );
}
