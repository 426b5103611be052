//! Hand-written lexical checks for the FHIR R4 primitive types
//! (<https://hl7.org/fhir/R4/datatypes.html#primitive>), no regex engine.
//!
//! Each check returns `Err(expected)` with a short description of the expected
//! format; callers build the diagnostics (never echoing the whole value).

use super::tables::Prim;

const I32_MAX: i64 = i32::MAX as i64;
const I32_MIN: i64 = i32::MIN as i64;
/// maxLength of the R4 `string` type (profiles-types.json, string.value).
const STRING_MAX_CHARS: usize = 1024 * 1024;

/// Checks the text of a JSON string against the rules of `p` (a string-kind primitive).
pub(super) fn check_str(p: Prim, s: &str) -> Result<(), &'static str> {
    let (ok, expected) = match p {
        Prim::String => (
            is_string(s),
            "a non-empty string of at most 1048576 characters without control characters other than tab, CR and LF",
        ),
        Prim::Markdown => (
            is_markdown(s),
            "non-empty markdown without control characters other than tab, CR and LF",
        ),
        Prim::Code => (
            is_code(s),
            "a non-empty code without leading/trailing whitespace or repeated inner whitespace",
        ),
        Prim::Id => (is_id(s), "1 to 64 characters from A-Z a-z 0-9 '-' '.'"),
        Prim::Uri | Prim::Url | Prim::Canonical => (
            is_uri(s),
            "a non-empty URI without whitespace or control characters",
        ),
        Prim::Oid => (is_oid(s), "urn:oid: followed by a dotted OID such as 1.2.3"),
        Prim::Uuid => (
            is_uuid(s),
            "urn:uuid: followed by a lowercase UUID (8-4-4-4-12 hex digits)",
        ),
        Prim::Date => (
            is_date(s),
            "YYYY, YYYY-MM or YYYY-MM-DD with a valid month and day",
        ),
        Prim::DateTime => (
            is_date_time(s),
            "YYYY, YYYY-MM, YYYY-MM-DD or YYYY-MM-DDThh:mm:ss[.fff] with a timezone (Z or +hh:mm/-hh:mm) when a time is given",
        ),
        Prim::Instant => (
            is_instant(s),
            "YYYY-MM-DDThh:mm:ss[.fff] with seconds and a timezone (Z or +hh:mm/-hh:mm)",
        ),
        Prim::Time => (is_time(s), "hh:mm:ss[.fff] (no timezone)"),
        Prim::Base64Binary => (
            is_base64(s),
            "base64 data (A-Z a-z 0-9 + /, '=' padding, length a multiple of 4)",
        ),
        Prim::Xhtml => (s.starts_with("<div"), "XHTML starting with <div"),
        // JSON-number and boolean kinds never reach here.
        Prim::Boolean | Prim::Decimal | Prim::Integer | Prim::PositiveInt | Prim::UnsignedInt => {
            (true, "")
        }
    };
    if ok { Ok(()) } else { Err(expected) }
}

/// Checks the literal text of a JSON number against the rules of `p`.
pub(super) fn check_number(p: Prim, text: &str) -> Result<(), &'static str> {
    let (ok, expected) = match p {
        // R4 decimal is exactly the JSON number grammar (exponents allowed).
        Prim::Decimal => (true, ""),
        Prim::Integer => (
            int_value(text).is_some_and(|v| (I32_MIN..=I32_MAX).contains(&v)),
            "a whole number in -2147483648..2147483647 (no fraction or exponent)",
        ),
        Prim::PositiveInt => (
            !text.starts_with('-') && int_value(text).is_some_and(|v| (1..=I32_MAX).contains(&v)),
            "a whole number in 1..2147483647 (no fraction or exponent)",
        ),
        Prim::UnsignedInt => (
            !text.starts_with('-') && int_value(text).is_some_and(|v| (0..=I32_MAX).contains(&v)),
            "a whole number in 0..2147483647 (no fraction or exponent)",
        ),
        _ => (true, ""),
    };
    if ok { Ok(()) } else { Err(expected) }
}

/// `-?(0|[1-9][0-9]*)` with at most 11 digits, as i64.
fn int_value(text: &str) -> Option<i64> {
    let digits = text.strip_prefix('-').unwrap_or(text);
    let b = digits.as_bytes();
    if b.is_empty() || b.len() > 11 || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    if b.len() > 1 && b[0] == b'0' {
        return None;
    }
    let v: i64 = digits.parse().ok()?;
    Some(if text.starts_with('-') { -v } else { v })
}

fn is_forbidden_control(c: char) -> bool {
    c < ' ' && !matches!(c, '\t' | '\r' | '\n')
}

/// `[ \r\n\t\S]+`, at most 1 MiB characters (R4 string maxLength 1048576).
fn is_string(s: &str) -> bool {
    !s.is_empty()
        && !s.chars().any(is_forbidden_control)
        && (s.len() <= STRING_MAX_CHARS || s.chars().count() <= STRING_MAX_CHARS)
}

/// `\s` of the spec's regexes (XML Schema / Java semantics: ASCII whitespace only,
/// so e.g. U+00A0 is not whitespace; official R4 code systems contain such codes).
fn is_regex_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\u{b}' | '\u{c}')
}

/// `[ \r\n\t\S]+` (markdown has no maxLength in R4).
fn is_markdown(s: &str) -> bool {
    !s.is_empty() && !s.chars().any(is_forbidden_control)
}

/// `[^\s]+(\s[^\s]+)*` (R4's regex: single inner whitespace only), no control characters.
fn is_code(s: &str) -> bool {
    let mut prev_space = true; // rejects leading whitespace
    for c in s.chars() {
        if is_regex_space(c) {
            if prev_space {
                return false;
            }
            prev_space = true;
        } else if c < ' ' {
            return false;
        } else {
            prev_space = false;
        }
    }
    !prev_space // rejects empty and trailing whitespace
}

/// `[A-Za-z0-9\-\.]{1,64}`
fn is_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// `\S*` (non-empty, as every JSON primitive string), no control characters.
fn is_uri(s: &str) -> bool {
    !s.is_empty() && !s.chars().any(|c| c <= ' ')
}

/// `urn:oid:[0-2](\.(0|[1-9][0-9]*))+`
fn is_oid(s: &str) -> bool {
    let Some(rest) = s.strip_prefix("urn:oid:") else {
        return false;
    };
    let mut arcs = rest.split('.');
    let first_ok = matches!(arcs.next(), Some("0" | "1" | "2"));
    let mut n = 0;
    for arc in arcs {
        let b = arc.as_bytes();
        if b.is_empty() || !b.iter().all(u8::is_ascii_digit) || (b.len() > 1 && b[0] == b'0') {
            return false;
        }
        n += 1;
    }
    first_ok && n >= 1
}

/// `urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}`
fn is_uuid(s: &str) -> bool {
    let Some(rest) = s.strip_prefix("urn:uuid:") else {
        return false;
    };
    let b = rest.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, &c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ => c.is_ascii_digit() || (b'a'..=b'f').contains(&c),
        })
}

/// `(\s*([0-9a-zA-Z\+/=]){4}\s*)+`, additionally requiring `=` only as final padding.
fn is_base64(s: &str) -> bool {
    let mut n = 0usize;
    let mut pad = 0usize;
    for b in s.bytes() {
        match b {
            b' ' | b'\t' | b'\r' | b'\n' | 0x0c => continue,
            b'=' => pad += 1,
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'+' | b'/' if pad == 0 => {}
            _ => return false,
        }
        n += 1;
    }
    n > 0 && n.is_multiple_of(4) && pad <= 2
}

fn digits(b: &[u8], at: usize, n: usize) -> Option<u32> {
    let d = b.get(at..at + n)?;
    let mut v = 0u32;
    for &c in d {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + u32::from(c - b'0');
    }
    Some(v)
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400)) => {
            29
        }
        2 => 28,
        _ => 0,
    }
}

/// `YYYY`, `YYYY-MM` or `YYYY-MM-DD` (year 0001-9999, real calendar dates).
fn is_date(s: &str) -> bool {
    let b = s.as_bytes();
    let Some(year) = digits(b, 0, 4).filter(|&y| y > 0) else {
        return false;
    };
    match b.len() {
        4 => true,
        7 => b[4] == b'-' && digits(b, 5, 2).is_some_and(|m| (1..=12).contains(&m)),
        10 => is_full_date(b, year),
        _ => false,
    }
}

fn is_full_date(b: &[u8], year: u32) -> bool {
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return false;
    }
    match (digits(b, 5, 2), digits(b, 8, 2)) {
        (Some(m), Some(d)) => (1..=12).contains(&m) && d >= 1 && d <= days_in_month(year, m),
        _ => false,
    }
}

/// `hh:mm:ss(\.[0-9]+)?`; returns the number of bytes consumed.
fn time_len(b: &[u8]) -> Option<usize> {
    let h = digits(b, 0, 2)?;
    let m = digits(b, 3, 2)?;
    let s = digits(b, 6, 2)?;
    if b[2] != b':' || b[5] != b':' || h > 23 || m > 59 || s > 60 {
        return None;
    }
    let mut i = 8;
    if b.get(i) == Some(&b'.') {
        let frac = b[i + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
        if frac == 0 {
            return None;
        }
        i += 1 + frac;
    }
    Some(i)
}

/// `Z|(\+|-)((0[0-9]|1[0-3]):[0-5][0-9]|14:00)` covering all of `b`.
fn is_tz(b: &[u8]) -> bool {
    match b {
        [b'Z'] => true,
        [b'+' | b'-', rest @ ..] if rest.len() == 5 && rest[2] == b':' => {
            match (digits(rest, 0, 2), digits(rest, 3, 2)) {
                (Some(h), Some(m)) => (h <= 13 && m <= 59) || (h == 14 && m == 0),
                _ => false,
            }
        }
        _ => false,
    }
}

/// `YYYY-MM-DDThh:mm:ss(.f+)?<tz>`
fn is_date_with_time(b: &[u8]) -> bool {
    let Some(year) = digits(b, 0, 4).filter(|&y| y > 0) else {
        return false;
    };
    if !is_full_date(b, year) || b.get(10) != Some(&b'T') {
        return false;
    }
    let rest = &b[11..];
    match time_len(rest) {
        Some(n) => is_tz(&rest[n..]),
        None => false,
    }
}

fn is_date_time(s: &str) -> bool {
    if s.len() <= 10 {
        is_date(s)
    } else {
        is_date_with_time(s.as_bytes())
    }
}

fn is_instant(s: &str) -> bool {
    is_date_with_time(s.as_bytes())
}

fn is_time(s: &str) -> bool {
    let b = s.as_bytes();
    time_len(b) == Some(b.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lexical_forms() {
        let cases: &[(Prim, &str, bool)] = &[
            (Prim::Date, "2026", true),
            (Prim::Date, "2026-02", true),
            (Prim::Date, "2024-02-29", true),
            (Prim::Date, "2000-02-29", true),
            (Prim::Date, "1900-02-29", false),
            (Prim::Date, "2026-02-29", false),
            (Prim::Date, "2026-04-31", false),
            (Prim::Date, "2026-13-01", false),
            (Prim::Date, "2026-00", false),
            (Prim::Date, "0000", false),
            (Prim::Date, "26-01-01", false),
            (Prim::Date, "2026-1-01", false),
            (Prim::Date, "2026-01-01T00:00:00Z", false),
            (Prim::DateTime, "2026", true),
            (Prim::DateTime, "2026-01-01T10:00:00Z", true),
            (Prim::DateTime, "2026-01-01T10:00:00.123+14:00", true),
            (Prim::DateTime, "2026-01-01T23:59:60-13:59", true),
            (Prim::DateTime, "2026-01-01T10:00:00+14:01", false),
            (Prim::DateTime, "2026-01-01T10:00", false),
            (Prim::DateTime, "2026-01-01T10:00:00", false),
            (Prim::DateTime, "2026-01-01T24:00:00Z", false),
            (Prim::DateTime, "2026-01-01T10:00:00.Z", false),
            (Prim::DateTime, "2026-01T10:00:00Z", false),
            (Prim::DateTime, "2026-01-01 10:00:00Z", false),
            (Prim::Instant, "2026-01-01T10:00:00Z", true),
            (Prim::Instant, "2026-01-01T10:00:00.5-05:00", true),
            (Prim::Instant, "2026-01-01", false),
            (Prim::Instant, "2026-01-01T10:00Z", false),
            (Prim::Time, "10:00:00", true),
            (Prim::Time, "23:59:59.999", true),
            (Prim::Time, "10:00", false),
            (Prim::Time, "10:00:00Z", false),
            (Prim::Time, "25:00:00", false),
            (Prim::Id, "a-B.9", true),
            (Prim::Id, &"a".repeat(64), true),
            (Prim::Id, &"a".repeat(65), false),
            (Prim::Id, "a_b", false),
            (Prim::Id, "", false),
            (Prim::Code, "a b", true),
            (Prim::Code, "a  b", false),
            (Prim::Code, " a", false),
            (Prim::Code, "a ", false),
            (Prim::Code, "a\tb", true),
            (Prim::Code, "a\t b", false),
            (Prim::Code, "CHEST\u{a0}", true),
            (Prim::Code, "a\u{1}", false),
            (Prim::String, &"x".repeat(1024 * 1024), true),
            (Prim::String, &"x".repeat(1024 * 1024 + 1), false),
            (Prim::String, &"é".repeat(1024 * 1024), true),
            (Prim::Code, "", false),
            (Prim::String, " ", true),
            (Prim::String, "a\r\n\tb", true),
            (Prim::String, "", false),
            (Prim::String, "a\u{1}b", false),
            (Prim::Uri, "http://x/y?z", true),
            (Prim::Uri, "http://x/ y", false),
            (Prim::Uri, "", false),
            (Prim::Oid, "urn:oid:1.2.840.10008", true),
            (Prim::Oid, "urn:oid:1", false),
            (Prim::Oid, "urn:oid:3.1", false),
            (Prim::Oid, "urn:oid:1.02", false),
            (
                Prim::Uuid,
                "urn:uuid:c757873d-ec9a-4326-a141-556f43239520",
                true,
            ),
            (
                Prim::Uuid,
                "urn:uuid:C757873D-EC9A-4326-A141-556F43239520",
                false,
            ),
            (Prim::Uuid, "c757873d-ec9a-4326-a141-556f43239520", false),
            (Prim::Base64Binary, "aGVsbG8=", true),
            (Prim::Base64Binary, "aGVs\r\nbG8h", true),
            (Prim::Base64Binary, "aGVsbG8", false),
            (Prim::Base64Binary, "aG=sbG8h", false),
            (Prim::Base64Binary, "aGVsbG8!", false),
            (
                Prim::Xhtml,
                "<div xmlns=\"http://www.w3.org/1999/xhtml\"/>",
                true,
            ),
            (Prim::Xhtml, "<p>x</p>", false),
        ];
        for (p, s, ok) in cases {
            assert_eq!(check_str(*p, s).is_ok(), *ok, "{} {s:?}", p.name());
        }
    }

    #[test]
    fn numbers() {
        let cases: &[(Prim, &str, bool)] = &[
            (Prim::Decimal, "1.50", true),
            (Prim::Decimal, "-1e-3", true),
            (Prim::Integer, "-2147483648", true),
            (Prim::Integer, "2147483647", true),
            (Prim::Integer, "2147483648", false),
            (Prim::Integer, "1.0", false),
            (Prim::Integer, "1e2", false),
            (Prim::PositiveInt, "1", true),
            (Prim::PositiveInt, "0", false),
            (Prim::PositiveInt, "-1", false),
            (Prim::UnsignedInt, "0", true),
            (Prim::UnsignedInt, "-0", false),
            (Prim::UnsignedInt, "99999999999", false),
        ];
        for (p, s, ok) in cases {
            assert_eq!(check_number(*p, s).is_ok(), *ok, "{} {s:?}", p.name());
        }
    }
}
