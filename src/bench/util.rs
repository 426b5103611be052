//! Small helpers that keep the hot loop free of extra crates and allocations:
//! a SplitMix64 generator and a once-per-second cached UTC timestamp.

use std::time::{SystemTime, UNIX_EPOCH};

/// SplitMix64: statistically fine for picking ids and vital values, one add
/// and two multiplies per draw, and it spares the crate a `rand` dependency.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// A generator seeded from the OS randomness behind `uuid::Uuid::new_v4`,
    /// so concurrent clients do not walk the same sequence.
    pub fn from_entropy() -> Self {
        let (hi, lo) = uuid::Uuid::new_v4().as_u64_pair();
        Self::new(hi ^ lo.rotate_left(29))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform-enough value in `0..n` (multiply-shift; the bias is below 2^-40
    /// for the pool sizes used here). Returns 0 when `n` is 0.
    pub fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }
}

/// Converts days since 1970-01-01 to a proleptic Gregorian (year, month, day)
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097; // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11], March-based
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month as u32, day as u32)
}

/// Formats Unix seconds as a FHIR `dateTime`/`instant` in UTC, e.g. `2024-05-01T12:00:00Z`.
pub fn utc_timestamp(unix_secs: u64) -> String {
    let secs = i64::try_from(unix_secs).unwrap_or(i64::MAX);
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

/// Formats Unix seconds as a FHIR `dateTime` in local time at a fixed UTC
/// offset, e.g. `2024-05-01T07:00:00-05:00` for 12:00 UTC at -300 minutes.
pub fn timestamp_with_offset(unix_secs: i64, offset_minutes: i32) -> String {
    let local = unix_secs + i64::from(offset_minutes) * 60;
    let (y, mo, d) = civil_from_days(local.div_euclid(86_400));
    let sod = local.rem_euclid(86_400);
    let sign = if offset_minutes < 0 { '-' } else { '+' };
    let off = offset_minutes.unsigned_abs();
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}{sign}{:02}:{:02}",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60,
        off / 60,
        off % 60
    )
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// "Now" as a FHIR dateTime, reformatted only when the second changes so a
/// client doing thousands of creates per second formats it once per second.
#[derive(Debug, Default)]
pub struct Clock {
    sec: u64,
    text: String,
}

impl Clock {
    pub fn now(&mut self) -> &str {
        let s = unix_now();
        if s != self.sec || self.text.is_empty() {
            self.sec = s;
            self.text = utc_timestamp(s);
        }
        &self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_match_known_dates() {
        assert_eq!(utc_timestamp(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc_timestamp(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc_timestamp(1_709_251_199), "2024-02-29T23:59:59Z");
        assert_eq!(utc_timestamp(1_735_689_600), "2025-01-01T00:00:00Z");
        assert_eq!(utc_timestamp(4_102_444_799), "2099-12-31T23:59:59Z");
    }

    #[test]
    fn offset_timestamps_shift_the_wall_clock() {
        assert_eq!(timestamp_with_offset(0, 0), "1970-01-01T00:00:00+00:00");
        // 2025-01-01T03:30:15Z seen from US Eastern (standard time).
        assert_eq!(
            timestamp_with_offset(1_735_702_215, -300),
            "2024-12-31T22:30:15-05:00"
        );
        assert_eq!(
            timestamp_with_offset(1_735_702_215, 330),
            "2025-01-01T09:00:15+05:30"
        );
    }

    #[test]
    fn below_stays_in_range_and_covers_it() {
        let mut rng = Rng::new(42);
        let mut seen = [false; 7];
        for _ in 0..1000 {
            let v = rng.below(7);
            assert!(v < 7);
            seen[v] = true;
        }
        assert!(seen.iter().all(|s| *s));
        assert_eq!(rng.below(0), 0);
    }
}
