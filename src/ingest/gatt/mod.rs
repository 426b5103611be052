//! Decoders of the Bluetooth LE health characteristics (issue 5, item 1; DESIGN.md rule 5: pure,
//! bytes in, measurement out). Field layouts follow the Bluetooth SIG GATT specifications
//! (`shared/data/gatt/`, the XML of the assigned numbers) and the services' specifications
//! (BLS, WSS, BCS, GLS, HTS, PLXS, HRS, BAS, CTS); numbers are IEEE 11073-20601 SFLOAT/FLOAT
//! ([`num`]). A packet that is too short, or inconsistent with its own flags, is a
//! [`DecodeError`], never a panic; every decoder reads through [`Reader`], which checks each
//! length before it takes.
//!
//! Measurements serialise to the JSON of the shared decoder vectors
//! (`shared/data/vectors/gatt.json`), which `vitalbridge decode` prints too.

pub mod measurements;
pub mod num;

use serde::Serialize;

pub use measurements::*;
pub use num::{Code, DateTime, Decimal, Float, Quantity};

/// Why a packet cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// A field the flags announce is cut off.
    #[error("truncated: {what} needs {needs} byte(s) at offset {offset}, packet has {len}")]
    Truncated {
        what: &'static str,
        needs: usize,
        offset: usize,
        len: usize,
    },
    /// The bytes are there but contradict the specification.
    #[error("{0}")]
    Invalid(String),
    /// A characteristic this server does not decode.
    #[error("characteristic 0x{0:04X} is not a health measurement this server decodes")]
    Unknown(u16),
}

/// Reads little-endian fields from a packet, checking every length.
pub struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes, pos: 0 }
    }

    pub fn offset(&self) -> usize {
        self.pos
    }

    pub fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    /// The next `n` bytes of field `what`.
    pub fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.remaining() < n {
            return Err(DecodeError::Truncated {
                what,
                needs: n,
                offset: self.pos,
                len: self.bytes.len(),
            });
        }
        let out = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    pub fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take(1, what)?[0])
    }

    pub fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        let b = self.take(2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    /// A 16-bit field sent big-endian (some vendors' quirk; see the device profiles).
    pub fn u16_be(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub fn i16(&mut self, what: &'static str) -> Result<i16, DecodeError> {
        Ok(self.u16(what)? as i16)
    }

    pub fn u24(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        let b = self.take(3, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], 0]))
    }

    pub fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn sfloat(&mut self, what: &'static str) -> Result<Float, DecodeError> {
        Ok(Float::sfloat16(self.u16(what)?))
    }

    pub fn float(&mut self, what: &'static str) -> Result<Float, DecodeError> {
        Ok(Float::float32(self.u32(what)?))
    }

    /// A Date Time (0x2A08): year (uint16), month, day, hours, minutes, seconds.
    pub fn date_time(&mut self, what: &'static str) -> Result<DateTime, DecodeError> {
        let b = self.take(7, what)?;
        let nonzero = |v: u8| (v != 0).then_some(v);
        let year = u16::from_le_bytes([b[0], b[1]]);
        Ok(DateTime {
            year: (year != 0).then_some(year),
            month: nonzero(b[2]),
            day: nonzero(b[3]),
            hour: b[4],
            minute: b[5],
            second: b[6],
        })
    }
}

/// The 16-bit UUIDs of the characteristics decoded here.
pub mod uuid {
    pub const DATE_TIME: u16 = 0x2A08;
    pub const TEMPERATURE_MEASUREMENT: u16 = 0x2A1C;
    pub const GLUCOSE_MEASUREMENT: u16 = 0x2A18;
    pub const BATTERY_LEVEL: u16 = 0x2A19;
    pub const CURRENT_TIME: u16 = 0x2A2B;
    pub const GLUCOSE_CONTEXT: u16 = 0x2A34;
    pub const BLOOD_PRESSURE_MEASUREMENT: u16 = 0x2A35;
    pub const INTERMEDIATE_CUFF_PRESSURE: u16 = 0x2A36;
    pub const HEART_RATE_MEASUREMENT: u16 = 0x2A37;
    pub const RECORD_ACCESS_CONTROL_POINT: u16 = 0x2A52;
    pub const PLX_SPOT_CHECK: u16 = 0x2A5E;
    pub const PLX_CONTINUOUS: u16 = 0x2A5F;
    pub const BODY_COMPOSITION_MEASUREMENT: u16 = 0x2A9C;
    pub const WEIGHT_MEASUREMENT: u16 = 0x2A9D;
}

/// A decoded characteristic value.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Measurement {
    BloodPressure(BloodPressure),
    Weight(Weight),
    BodyComposition(BodyComposition),
    Glucose(Glucose),
    GlucoseContext(GlucoseContext),
    Temperature(Temperature),
    PlxSpotCheck(PlxSpotCheck),
    PlxContinuous(PlxContinuous),
    HeartRate(HeartRate),
    Battery(Battery),
    Time(TimeValue),
    RecordAccess(RacpResponse),
}

/// Decodes the value of characteristic `uuid` (its 16-bit assigned number).
pub fn decode(uuid: u16, bytes: &[u8]) -> Result<Measurement, DecodeError> {
    decode_with(uuid, bytes, &Quirks::default())
}

/// Decodes with a device model's quirks ([`Quirks`]).
pub fn decode_with(uuid: u16, bytes: &[u8], quirks: &Quirks) -> Result<Measurement, DecodeError> {
    use uuid::*;
    Ok(match uuid {
        BLOOD_PRESSURE_MEASUREMENT | INTERMEDIATE_CUFF_PRESSURE => {
            Measurement::BloodPressure(blood_pressure(bytes, quirks)?)
        }
        WEIGHT_MEASUREMENT => Measurement::Weight(weight(bytes)?),
        BODY_COMPOSITION_MEASUREMENT => Measurement::BodyComposition(body_composition(bytes)?),
        GLUCOSE_MEASUREMENT => Measurement::Glucose(glucose(bytes)?),
        GLUCOSE_CONTEXT => Measurement::GlucoseContext(glucose_context(bytes)?),
        TEMPERATURE_MEASUREMENT => Measurement::Temperature(temperature(bytes)?),
        PLX_SPOT_CHECK => Measurement::PlxSpotCheck(plx_spot_check(bytes)?),
        PLX_CONTINUOUS => Measurement::PlxContinuous(plx_continuous(bytes)?),
        HEART_RATE_MEASUREMENT => Measurement::HeartRate(heart_rate(bytes)?),
        BATTERY_LEVEL => Measurement::Battery(battery(bytes)?),
        DATE_TIME => Measurement::Time(date_time(bytes)?),
        CURRENT_TIME => Measurement::Time(current_time(bytes)?),
        RECORD_ACCESS_CONTROL_POINT => Measurement::RecordAccess(racp_response(bytes)?),
        other => return Err(DecodeError::Unknown(other)),
    })
}

/// What a device model does differently from the specification; set by its profile, never by
/// special cases in the decoders (issue 5, item 2).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Quirks {
    /// Pulse rate and measurement status of the blood-pressure measurement are big-endian
    /// (Beurer BM series).
    pub bp_big_endian_pulse_and_status: bool,
    /// The user-id byte is always present, whatever the flags say (Beurer BM series).
    pub bp_always_user_id: bool,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod vector_tests;
