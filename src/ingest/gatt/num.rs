//! The numbers of the health characteristics: IEEE 11073-20601 SFLOAT and FLOAT (the PHD IG's
//! "FLOATS" page, https://build.fhir.org/ig/HL7/PHD/FLOATS.html) and the fixed-point fields of
//! the weight and body-composition characteristics, kept as decimals with the precision the
//! device reports (0xF014 is `2.0`, not `2`), and the date-time fields.

use serde::Serialize;
use serde_json::{Value, json};

/// A decimal as the device sent it: `mantissa × 10^exponent`, printed with exactly the digits
/// that implies (FHIR keeps precision: `Quantity.value` 2.0 is not 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decimal {
    pub mantissa: i64,
    pub exponent: i32,
}

impl Decimal {
    pub fn new(mantissa: i64, exponent: i32) -> Decimal {
        Decimal { mantissa, exponent }
    }

    /// The same value, scaled by `10^by` (a unit change), keeping the digits.
    pub fn shifted(self, by: i32) -> Decimal {
        Decimal::new(self.mantissa, self.exponent + by)
    }

    pub fn as_f64(self) -> f64 {
        self.mantissa as f64 * 10f64.powi(self.exponent)
    }
}

impl std::fmt::Display for Decimal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sign = if self.mantissa < 0 { "-" } else { "" };
        let digits = self.mantissa.unsigned_abs().to_string();
        if self.exponent >= 0 {
            let zeros = "0".repeat(self.exponent as usize);
            return write!(f, "{sign}{digits}{zeros}");
        }
        let scale = self.exponent.unsigned_abs() as usize;
        let padded = format!("{digits:0>width$}", width = scale + 1);
        let (int, frac) = padded.split_at(padded.len() - scale);
        write!(f, "{sign}{int}.{frac}")
    }
}

/// An IEEE 11073 number: a value, or one of the reserved special values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Float {
    Value(Decimal),
    /// Not a number: no valid value was measured.
    NaN,
    /// Not at this resolution: the value cannot be represented.
    NRes,
    PositiveInfinity,
    NegativeInfinity,
    /// Reserved for future use.
    Reserved,
}

impl Float {
    /// A 16-bit SFLOAT (little-endian on the wire): 4-bit two's-complement exponent, 12-bit
    /// two's-complement mantissa. Specials are whole values with a zero exponent.
    pub fn sfloat16(raw: u16) -> Float {
        match raw {
            0x07FF => Float::NaN,
            0x0800 => Float::NRes,
            0x07FE => Float::PositiveInfinity,
            0x0802 => Float::NegativeInfinity,
            0x0801 => Float::Reserved,
            _ => Float::Value(Decimal::new(
                sign_extend(i64::from(raw & 0x0FFF), 12),
                sign_extend(i64::from(raw >> 12), 4) as i32,
            )),
        }
    }

    /// A 32-bit FLOAT: 8-bit two's-complement exponent, 24-bit two's-complement mantissa.
    pub fn float32(raw: u32) -> Float {
        match raw {
            0x007F_FFFF => Float::NaN,
            0x0080_0000 => Float::NRes,
            0x007F_FFFE => Float::PositiveInfinity,
            0x0080_0002 => Float::NegativeInfinity,
            0x0080_0001 => Float::Reserved,
            _ => Float::Value(Decimal::new(
                sign_extend(i64::from(raw & 0x00FF_FFFF), 24),
                i32::from((raw >> 24) as u8 as i8),
            )),
        }
    }

    pub fn value(self) -> Option<Decimal> {
        match self {
            Float::Value(d) => Some(d),
            _ => None,
        }
    }

    /// The name of a special value, as the PHD IG's table writes it.
    pub fn special(self) -> Option<&'static str> {
        match self {
            Float::Value(_) => None,
            Float::NaN => Some("NaN"),
            Float::NRes => Some("NRes"),
            Float::PositiveInfinity => Some("+INF"),
            Float::NegativeInfinity => Some("-INF"),
            Float::Reserved => Some("RFU"),
        }
    }
}

/// The low `bits` of `v` as a two's-complement number.
fn sign_extend(v: i64, bits: u32) -> i64 {
    let shift = 64 - bits;
    (v << shift) >> shift
}

/// A measured value with its unit (UCUM where one exists). Serialised as
/// `{"value": "2.0", "unit": "kg"}`, or `{"value": null, "special": "NaN", "unit": …}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quantity {
    pub value: Float,
    pub unit: &'static str,
}

impl Quantity {
    pub fn new(value: Float, unit: &'static str) -> Quantity {
        Quantity { value, unit }
    }

    /// A fixed-point field: `raw × 10^exponent`.
    pub fn fixed(raw: i64, exponent: i32, unit: &'static str) -> Quantity {
        Quantity::new(Float::Value(Decimal::new(raw, exponent)), unit)
    }
}

impl Serialize for Quantity {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let v = match self.value {
            Float::Value(d) => json!({"value": d.to_string(), "unit": self.unit}),
            special => json!({"value": null, "special": special.special(), "unit": self.unit}),
        };
        v.serialize(s)
    }
}

/// A Date Time (0x2A08) as the device set it: a zero year, month or day means "not known".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateTime {
    pub year: Option<u16>,
    pub month: Option<u8>,
    pub day: Option<u8>,
    pub hour: u8,
    pub minute: u8,
    pub second: u8,
}

impl DateTime {
    /// ISO 8601 with `XXXX`/`XX` for the parts the device does not know.
    pub fn iso(&self) -> String {
        let part = |v: Option<u8>| v.map_or("XX".to_owned(), |v| format!("{v:02}"));
        format!(
            "{}-{}-{}T{:02}:{:02}:{:02}",
            self.year.map_or("XXXX".to_owned(), |y| format!("{y:04}")),
            part(self.month),
            part(self.day),
            self.hour,
            self.minute,
            self.second
        )
    }

    /// The date-time, when the device knows the whole date.
    pub fn primitive(&self) -> Option<time::PrimitiveDateTime> {
        let month = time::Month::try_from(self.month?).ok()?;
        let date = time::Date::from_calendar_date(i32::from(self.year?), month, self.day?).ok()?;
        let t = time::Time::from_hms(self.hour, self.minute, self.second).ok()?;
        Some(time::PrimitiveDateTime::new(date, t))
    }

    pub fn from_primitive(t: time::PrimitiveDateTime) -> DateTime {
        DateTime {
            year: u16::try_from(t.year()).ok(),
            month: Some(u8::from(t.month())),
            day: Some(t.day()),
            hour: t.hour(),
            minute: t.minute(),
            second: t.second(),
        }
    }
}

impl Serialize for DateTime {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let v: Value = json!({
            "iso": self.iso(),
            "year": self.year,
            "month": self.month,
            "day": self.day,
            "hour": self.hour,
            "minute": self.minute,
            "second": self.second,
        });
        v.serialize(s)
    }
}

/// A coded field: its number and, when the specification names it, its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Code {
    pub code: u8,
    pub name: &'static str,
}

impl Code {
    /// `names[code]`, or `reserved` past the table (or where it holds "").
    pub fn of(code: u8, names: &[&'static str]) -> Code {
        let name = names
            .get(usize::from(code))
            .copied()
            .filter(|n| !n.is_empty())
            .unwrap_or("reserved");
        Code { code, name }
    }
}

/// The names of the bits set in `raw`, by the table of bit names ("" for reserved bits).
pub fn flags(raw: u32, names: &[&'static str]) -> Vec<&'static str> {
    names
        .iter()
        .enumerate()
        .filter(|(bit, name)| !name.is_empty() && raw & (1 << bit) != 0)
        .map(|(_, name)| *name)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_keep_their_digits() {
        assert_eq!(Decimal::new(20, -1).to_string(), "2.0");
        assert_eq!(Decimal::new(5, -3).to_string(), "0.005");
        assert_eq!(Decimal::new(-5, -1).to_string(), "-0.5");
        assert_eq!(Decimal::new(-1234, 0).to_string(), "-1234");
        assert_eq!(Decimal::new(2, 2).to_string(), "200");
        assert_eq!(Decimal::new(3760, -2).to_string(), "37.60");
    }

    #[test]
    fn floats_extreme_exponents_and_mantissas() {
        assert_eq!(
            Float::sfloat16(0x8001),
            Float::Value(Decimal::new(1, -8)),
            "exponent -8"
        );
        assert_eq!(
            Float::sfloat16(0x7800),
            Float::Value(Decimal::new(-2048, 7)),
            "most negative mantissa"
        );
        assert_eq!(
            Float::float32(0x80FF_FFFF),
            Float::Value(Decimal::new(-1, -128))
        );
    }
}
