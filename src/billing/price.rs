//! Amounts (issue 7, items 1 and 2): what a device or hub costs a customer for a month, from a
//! catalog price and the days it was active. Pure, no I/O (DESIGN.md rule 5).
//!
//! Money is counted in the currency's minor units (cents) as integers, never as floating
//! point: an invoice must add up to the cent. FHIR writes amounts as decimals
//! (https://hl7.org/fhir/R4/datatypes.html#Money); [`Money::parse`] and [`Money::decimal`]
//! convert exactly.

/// How a month is charged when a device was active only part of it (a setting of each catalog
/// entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proration {
    /// The whole month's price if it was active on any day.
    AnyDay,
    /// The month's price × days active ÷ days in the month, to the nearest minor unit.
    ProRata,
}

impl Proration {
    pub fn parse(code: &str) -> Option<Proration> {
        match code {
            "any-day" => Some(Proration::AnyDay),
            "pro-rata" => Some(Proration::ProRata),
            _ => None,
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            Proration::AnyDay => "any-day",
            Proration::ProRata => "pro-rata",
        }
    }
}

/// An amount of one currency, in its minor units.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Money {
    pub minor: i64,
    /// ISO 4217 code.
    pub currency: String,
}

/// Digits after the decimal point of an ISO 4217 currency
/// (https://www.iso.org/iso-4217-currency-codes.html): 2 but for the few listed.
pub fn exponent(currency: &str) -> u32 {
    match currency {
        "BIF" | "CLP" | "DJF" | "GNF" | "ISK" | "JPY" | "KMF" | "KRW" | "PYG" | "RWF" | "UGX"
        | "UYI" | "VND" | "VUV" | "XAF" | "XOF" | "XPF" => 0,
        "BHD" | "IQD" | "JOD" | "KWD" | "LYD" | "OMR" | "TND" => 3,
        _ => 2,
    }
}

impl Money {
    /// A FHIR decimal (`25.00`, `25`, `0.5`) in `currency`; more digits than the currency has
    /// are refused rather than rounded, so a catalog price is exactly what was entered.
    pub fn parse(decimal: &str, currency: &str) -> Result<Money, String> {
        if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(format!("{currency:?} is not an ISO 4217 currency code"));
        }
        let exp = exponent(currency);
        let minor = parse_scaled(decimal, exp).ok_or_else(|| {
            format!("{decimal:?} is not an amount of {currency} (at most {exp} decimals)")
        })?;
        Ok(Money {
            minor,
            currency: currency.to_owned(),
        })
    }

    /// The amount as a FHIR decimal with the currency's digits (`25.00`).
    pub fn decimal(&self) -> String {
        format_scaled(self.minor, exponent(&self.currency))
    }
}

/// A non-negative decimal with at most `exp` fraction digits, times 10^exp.
fn parse_scaled(s: &str, exp: u32) -> Option<i64> {
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) || (s.contains('.') && frac.is_empty()) {
        return None;
    }
    let frac = frac.trim_end_matches('0');
    if frac.len() > exp as usize {
        return None;
    }
    let scale = 10i64.checked_pow(exp)?;
    let w: i64 = whole.parse().ok()?;
    let f: i64 = if frac.is_empty() {
        0
    } else {
        frac.parse::<i64>().ok()? * 10i64.pow(exp - frac.len() as u32)
    };
    w.checked_mul(scale)?.checked_add(f)
}

fn format_scaled(v: i64, exp: u32) -> String {
    if exp == 0 {
        return v.to_string();
    }
    let scale = 10i64.pow(exp);
    let sign = if v < 0 { "-" } else { "" };
    let a = v.unsigned_abs();
    format!(
        "{sign}{}.{:0width$}",
        a / scale as u64,
        a % scale as u64,
        width = exp as usize
    )
}

/// A tax rate, exactly, in millionths (`0.2` → 200,000): a FHIR `priceComponent.factor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rate(pub i64);

impl Rate {
    pub fn parse(decimal: &str) -> Result<Rate, String> {
        parse_scaled(decimal, 6)
            .filter(|&r| r <= 1_000_000)
            .map(Rate)
            .ok_or_else(|| {
                format!("{decimal:?} is not a rate between 0 and 1 (at most 6 decimals)")
            })
    }

    /// As a FHIR decimal, without trailing zeros (`0.2`).
    pub fn decimal(self) -> String {
        let s = format_scaled(self.0, 6);
        let s = s.trim_end_matches('0');
        s.strip_suffix('.').unwrap_or(s).to_owned()
    }
}

/// `a × b ÷ c`, rounded half away from zero, without overflow for any amounts an invoice holds.
fn mul_div_round(a: i64, b: i64, c: i64) -> i64 {
    let (a, b, c) = (i128::from(a), i128::from(b), i128::from(c));
    let n = a * b;
    let q = (n.abs() + c / 2) / c;
    (if n < 0 { -q } else { q }) as i64
}

/// The net charge for a month of `days_in_month` days in which the device was active on
/// `days_active` of them, at `monthly` (minor units).
pub fn net(monthly: i64, proration: Proration, days_active: u32, days_in_month: u32) -> i64 {
    if days_active == 0 || days_in_month == 0 {
        return 0;
    }
    match proration {
        Proration::AnyDay => monthly,
        Proration::ProRata => mul_div_round(
            monthly,
            i64::from(days_active.min(days_in_month)),
            i64::from(days_in_month),
        ),
    }
}

/// The tax on `net` at `rate`, to the nearest minor unit.
pub fn tax(net: i64, rate: Rate) -> i64 {
    mul_div_round(net, rate.0, 1_000_000)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn amounts_are_exact_in_minor_units() {
        let cases = [
            ("25.00", "USD", 2500),
            ("25", "USD", 2500),
            ("0.5", "EUR", 50),
            ("19.99", "GBP", 1999),
            ("1500", "JPY", 1500),
            ("1.250", "KWD", 1250),
            ("0", "USD", 0),
            ("12.340", "USD", 1234),
        ];
        for (dec, cur, minor) in cases {
            let m = Money::parse(dec, cur).unwrap();
            assert_eq!(m.minor, minor, "{dec} {cur}");
        }
        assert_eq!(Money::parse("25", "USD").unwrap().decimal(), "25.00");
        assert_eq!(Money::parse("1500", "JPY").unwrap().decimal(), "1500");
        assert_eq!(Money::parse("1.25", "KWD").unwrap().decimal(), "1.250");
        assert_eq!(
            Money {
                minor: -5,
                currency: "USD".into()
            }
            .decimal(),
            "-0.05"
        );
        for (dec, cur) in [
            ("25.001", "USD"),
            ("1.5", "JPY"),
            ("-1", "USD"),
            ("1e3", "USD"),
            ("", "USD"),
            (".5", "USD"),
            ("5.", "USD"),
            ("25", "usd"),
            ("25", "US"),
            ("99999999999999999999", "USD"),
        ] {
            assert!(Money::parse(dec, cur).is_err(), "{dec} {cur}");
        }
    }

    #[test]
    fn rates_are_exact_millionths() {
        assert_eq!(Rate::parse("0.2").unwrap(), Rate(200_000));
        assert_eq!(Rate::parse("0.0725").unwrap(), Rate(72_500));
        assert_eq!(Rate::parse("0").unwrap(), Rate(0));
        assert_eq!(Rate::parse("1").unwrap(), Rate(1_000_000));
        assert_eq!(Rate(72_500).decimal(), "0.0725");
        assert_eq!(Rate(200_000).decimal(), "0.2");
        assert_eq!(Rate(0).decimal(), "0");
        for bad in ["1.5", "0.12345678", "-0.1", "20%"] {
            assert!(Rate::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn any_day_charges_the_month_pro_rata_the_days() {
        assert_eq!(net(2500, Proration::AnyDay, 1, 31), 2500);
        assert_eq!(net(2500, Proration::AnyDay, 0, 31), 0);
        assert_eq!(net(2500, Proration::ProRata, 31, 31), 2500);
        assert_eq!(net(2500, Proration::ProRata, 15, 30), 1250);
        // 2500 × 10 ÷ 31 = 806.45… → 806; × 16 ÷ 31 = 1290.32… → 1290
        assert_eq!(net(2500, Proration::ProRata, 10, 31), 806);
        assert_eq!(net(2500, Proration::ProRata, 16, 31), 1290);
        // Leap February: 29 days.
        assert_eq!(net(2900, Proration::ProRata, 1, 29), 100);
        // Half a cent rounds away from zero: 1 × 1 ÷ 2.
        assert_eq!(net(1, Proration::ProRata, 1, 2), 1);
        assert_eq!(
            net(2500, Proration::ProRata, 40, 31),
            2500,
            "never more than a month"
        );
    }

    #[test]
    fn tax_rounds_to_the_minor_unit() {
        assert_eq!(tax(2500, Rate(200_000)), 500);
        // 806 × 0.0725 = 58.435 → 58
        assert_eq!(tax(806, Rate(72_500)), 58);
        // 1290 × 0.0725 = 93.525 → 94
        assert_eq!(tax(1290, Rate(72_500)), 94);
        assert_eq!(tax(2500, Rate(0)), 0);
        assert_eq!(tax(-2500, Rate(200_000)), -500);
        assert_eq!(tax(i64::MAX / 2, Rate(1_000_000)), i64::MAX / 2);
    }

    #[test]
    fn proration_codes_round_trip() {
        for p in [Proration::AnyDay, Proration::ProRata] {
            assert_eq!(Proration::parse(p.code()), Some(p));
        }
        assert_eq!(Proration::parse("monthly"), None);
    }
}
