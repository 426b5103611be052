//! Instants as the store keeps them: microseconds since the Unix epoch (UTC).

use time::format_description::well_known::Rfc3339;
use time::{Date, Month, OffsetDateTime, UtcOffset};

/// The current time in microseconds.
pub fn now_micros() -> i64 {
    let now = OffsetDateTime::now_utc();
    (now.unix_timestamp_nanos() / 1_000) as i64
}

/// FHIR `instant` with microseconds in UTC, e.g. `2026-11-21T06:51:56.123456Z`
/// (https://hl7.org/fhir/R4/datatypes.html#instant). Microseconds keep `_since` exact.
pub fn format_instant(micros: i64) -> String {
    let t = OffsetDateTime::from_unix_timestamp_nanos(micros as i128 * 1_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.microsecond()
    )
}

/// HTTP-date for `Last-Modified` (RFC 9110 §5.6.7).
pub fn format_http_date(micros: i64) -> String {
    let secs = micros.div_euclid(1_000_000);
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs.max(0) as u64);
    httpdate::fmt_http_date(t)
}

/// Parses a FHIR `instant` or `dateTime` (a partial date means its start, in UTC) to microseconds.
/// Returns `None` for anything else.
pub fn parse_instant_micros(s: &str) -> Option<i64> {
    if let Ok(t) = OffsetDateTime::parse(s, &Rfc3339) {
        return Some((t.unix_timestamp_nanos() / 1_000) as i64);
    }
    // A dateTime without seconds is not valid FHIR; accept only YYYY, YYYY-MM, YYYY-MM-DD here.
    let mut parts = s.split('-');
    let year: i32 = parts.next().filter(|p| p.len() == 4)?.parse().ok()?;
    let month = match parts.next() {
        Some(m) if m.len() == 2 => Month::try_from(m.parse::<u8>().ok()?).ok()?,
        Some(_) => return None,
        None => Month::January,
    };
    let day = match parts.next() {
        Some(d) if d.len() == 2 => d.parse::<u8>().ok()?,
        Some(_) => return None,
        None => 1,
    };
    if parts.next().is_some() {
        return None;
    }
    let date = Date::from_calendar_date(year, month, day).ok()?;
    let t = date.midnight().assume_offset(UtcOffset::UTC);
    Some((t.unix_timestamp_nanos() / 1_000) as i64)
}

/// The range of instants a FHIR date or dateTime covers, by its precision
/// (search.html#date: `2026-03` is the whole of March), as inclusive microseconds.
pub fn parse_instant_range(s: &str) -> Option<(i64, i64)> {
    let start = parse_instant_micros(s)?;
    if OffsetDateTime::parse(s, &Rfc3339).is_ok() {
        return Some((start, start));
    }
    let date = OffsetDateTime::from_unix_timestamp_nanos(start as i128 * 1_000)
        .ok()?
        .date();
    let next = match s.len() {
        4 => Date::from_calendar_date(date.year() + 1, Month::January, 1).ok()?,
        7 => {
            let (y, m) = if date.month() == Month::December {
                (date.year() + 1, Month::January)
            } else {
                (date.year(), date.month().next())
            };
            Date::from_calendar_date(y, m, 1).ok()?
        }
        _ => date.next_day()?,
    };
    let end = (next
        .midnight()
        .assume_offset(UtcOffset::UTC)
        .unix_timestamp_nanos()
        / 1_000) as i64
        - 1;
    Some((start, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let s = "2026-11-21T06:51:56.123456Z";
        let m = parse_instant_micros(s).expect("valid instant");
        assert_eq!(format_instant(m), s);
        assert_eq!(
            parse_instant_micros("2026-11-21T07:51:56.123456+01:00"),
            Some(m)
        );
        assert_eq!(
            parse_instant_micros("2026-03"),
            parse_instant_micros("2026-03-01T00:00:00Z")
        );
        assert_eq!(parse_instant_micros("2026-02-30"), None);
        assert_eq!(parse_instant_micros("yesterday"), None);
        assert_eq!(format_http_date(m), "Sat, 21 Nov 2026 06:51:56 GMT");
    }
}
