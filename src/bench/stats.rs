//! Latency/error accounting per operation, and the report (table and JSON).

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hdrhistogram::Histogram;
use serde::Serialize;

/// Highest latency the histograms track exactly (1 h in µs); anything longer
/// is clamped by `saturating_record`, which cannot happen under the request
/// timeout anyway.
const MAX_TRACKABLE_US: u64 = 3_600_000_000;

/// Why a request did not count as a success.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ErrKind {
    /// Non-2xx HTTP status.
    Status(u16),
    Timeout,
    Connect,
    /// The response body could not be read to the end.
    Body,
    /// 2xx create whose id was in neither `Location` nor the body.
    NoId,
    /// 200 search whose Bundle has no matching entry: an empty answer must
    /// not pass for a fast one.
    Empty,
    /// 200 search whose body is not a searchset Bundle of the expected
    /// resources (or lacks the `total` that was asked for).
    BadBundle,
    /// Any other transport failure (reset, protocol error, ...).
    Transport,
}

impl fmt::Display for ErrKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrKind::Status(s) => write!(f, "HTTP {s}"),
            ErrKind::Timeout => f.write_str("timeout"),
            ErrKind::Connect => f.write_str("connect"),
            ErrKind::Body => f.write_str("body"),
            ErrKind::NoId => f.write_str("no-id"),
            ErrKind::Empty => f.write_str("empty"),
            ErrKind::BadBundle => f.write_str("bad-bundle"),
            ErrKind::Transport => f.write_str("transport"),
        }
    }
}

/// Successes (with their latency) and failures of one operation.
#[derive(Debug, Clone)]
pub struct OpStats {
    /// Latency of 2xx responses in µs, from send to the end of the body.
    pub hist: Histogram<u64>,
    pub errors: BTreeMap<ErrKind, u64>,
}

impl OpStats {
    pub fn new() -> anyhow::Result<Self> {
        Ok(Self {
            hist: Histogram::new_with_bounds(1, MAX_TRACKABLE_US, 3)
                .context("creating latency histogram")?,
            errors: BTreeMap::new(),
        })
    }

    pub fn record_ok(&mut self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        // A loopback response can come back in under a microsecond of
        // measured time; the histogram's lowest bucket is 1 µs.
        self.hist.saturating_record(us.max(1));
    }

    pub fn record_err(&mut self, kind: ErrKind) {
        *self.errors.entry(kind).or_insert(0) += 1;
    }

    pub fn ok(&self) -> u64 {
        self.hist.len()
    }

    pub fn error_total(&self) -> u64 {
        self.errors.values().sum()
    }

    pub fn merge(&mut self, other: &OpStats) -> anyhow::Result<()> {
        self.hist
            .add(&other.hist)
            .map_err(|e| anyhow::anyhow!("merging histograms: {e:?}"))?;
        for (k, v) in &other.errors {
            *self.errors.entry(*k).or_insert(0) += v;
        }
        Ok(())
    }

    pub fn summary(&self, elapsed: Duration) -> Summary {
        let n = self.ok();
        let q = |quantile: f64| (n > 0).then(|| self.hist.value_at_quantile(quantile));
        let secs = elapsed.as_secs_f64();
        Summary {
            requests: n,
            rps: if secs > 0.0 { n as f64 / secs } else { 0.0 },
            p50_us: q(0.50),
            p95_us: q(0.95),
            p99_us: q(0.99),
            max_us: (n > 0).then(|| self.hist.max()),
            mean_us: (n > 0).then(|| self.hist.mean()),
            errors: self.error_total(),
        }
    }
}

/// What one worker task saw. Requests started during the warm-up are not
/// counted, so one loop serves both phases without a second connection ramp-up.
#[derive(Debug)]
pub struct Recorder {
    measure_start: Instant,
    pub ops: Vec<OpStats>,
    /// First failure seen in the timed phase, for the report.
    pub first_error: Option<String>,
}

impl Recorder {
    pub fn new(measure_start: Instant, ops: usize) -> anyhow::Result<Self> {
        Ok(Self {
            measure_start,
            ops: (0..ops)
                .map(|_| OpStats::new())
                .collect::<anyhow::Result<_>>()?,
            first_error: None,
        })
    }

    pub fn ok(&mut self, op: usize, started: Instant, latency: Duration) {
        if started >= self.measure_start
            && let Some(s) = self.ops.get_mut(op)
        {
            s.record_ok(latency);
        }
    }

    pub fn err(&mut self, op: usize, started: Instant, kind: ErrKind, detail: &str) {
        if started < self.measure_start {
            return;
        }
        if let Some(s) = self.ops.get_mut(op) {
            s.record_err(kind);
        }
        if self.first_error.is_none() {
            self.first_error = Some(format!("{kind}: {}", snippet(detail, 300)));
        }
    }
}

/// At most `max` characters of `s` on one line.
pub fn snippet(s: &str, max: usize) -> String {
    let flat: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(max + 1)
        .collect();
    if flat.chars().count() > max {
        let mut cut: String = flat.chars().take(max).collect();
        cut.push('…');
        cut
    } else {
        flat
    }
}

/// The figures reported for one row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub requests: u64,
    pub rps: f64,
    pub p50_us: Option<u64>,
    pub p95_us: Option<u64>,
    pub p99_us: Option<u64>,
    pub max_us: Option<u64>,
    pub mean_us: Option<f64>,
    pub errors: u64,
}

/// Microseconds as milliseconds with 2 decimals; `-` when there was no sample.
pub fn fmt_ms(us: Option<u64>) -> String {
    match us {
        Some(us) => format!("{:.2}", us as f64 / 1000.0),
        None => "-".to_string(),
    }
}

/// Microseconds as (fractional) milliseconds for the JSON report.
fn ms(us: Option<u64>) -> Option<f64> {
    us.map(|v| v as f64 / 1000.0)
}

/// The outcome of one scenario.
#[derive(Debug)]
pub struct ScenarioResult {
    pub name: &'static str,
    /// Concurrent clients (most scenarios use `--clients`, not all).
    pub clients: usize,
    /// From the end of the warm-up until the last worker finished.
    pub elapsed: Duration,
    pub total: OpStats,
    /// Per-operation breakdown, only when the scenario has several operations.
    pub ops: Vec<(&'static str, OpStats)>,
    pub notes: Vec<String>,
    pub first_error: Option<String>,
}

/// One table line.
#[derive(Debug, Clone)]
pub struct Row {
    pub label: String,
    pub summary: Summary,
}

pub fn rows(results: &[ScenarioResult]) -> Vec<Row> {
    let mut out = Vec::new();
    for r in results {
        out.push(Row {
            label: r.name.to_string(),
            summary: r.total.summary(r.elapsed),
        });
        for (label, op) in &r.ops {
            out.push(Row {
                label: format!("  {label}"),
                summary: op.summary(r.elapsed),
            });
        }
    }
    out
}

const HEADERS: [&str; 8] = [
    "scenario", "requests", "req/s", "p50 ms", "p95 ms", "p99 ms", "max ms", "errors",
];

/// Renders the results table. With `ansi`, the header is bold and non-zero
/// error counts red; without it the output is plain text for logs and pipes.
pub fn render_table(rows: &[Row], ansi: bool) -> String {
    let cells: Vec<[String; 8]> = rows
        .iter()
        .map(|r| {
            let s = &r.summary;
            [
                r.label.clone(),
                s.requests.to_string(),
                format!("{:.1}", s.rps),
                fmt_ms(s.p50_us),
                fmt_ms(s.p95_us),
                fmt_ms(s.p99_us),
                fmt_ms(s.max_us),
                s.errors.to_string(),
            ]
        })
        .collect();
    let mut widths = HEADERS.map(str::len);
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cols: &[String; 8]| {
        let mut l = String::new();
        for (i, (c, w)) in cols.iter().zip(widths).enumerate() {
            if i == 0 {
                let _ = write!(l, "{c:<w$}");
            } else {
                let _ = write!(l, "  {c:>w$}");
            }
        }
        l
    };
    let mut out = String::new();
    let header = line(&HEADERS.map(str::to_string));
    if ansi {
        let _ = writeln!(out, "\x1b[1m{header}\x1b[0m");
    } else {
        let _ = writeln!(out, "{header}");
    }
    for (row, c) in rows.iter().zip(&cells) {
        let l = line(c);
        if ansi && row.summary.errors > 0 {
            let _ = writeln!(out, "\x1b[31m{l}\x1b[0m");
        } else {
            let _ = writeln!(out, "{l}");
        }
    }
    out
}

/// `HTTP 422 × 3, timeout × 1`
pub fn fmt_errors(errors: &BTreeMap<ErrKind, u64>) -> String {
    errors
        .iter()
        .map(|(k, v)| format!("{k} × {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[derive(Debug, Serialize)]
pub struct JsonLatency {
    pub p50: Option<f64>,
    pub p95: Option<f64>,
    pub p99: Option<f64>,
    pub max: Option<f64>,
    pub mean: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct JsonOp {
    pub name: String,
    pub requests: u64,
    pub rps: f64,
    pub errors: u64,
    pub errors_by_kind: BTreeMap<String, u64>,
    pub latency_ms: JsonLatency,
}

impl JsonOp {
    fn new(name: &str, stats: &OpStats, elapsed: Duration) -> Self {
        let s = stats.summary(elapsed);
        Self {
            name: name.to_string(),
            requests: s.requests,
            rps: s.rps,
            errors: s.errors,
            errors_by_kind: stats
                .errors
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            latency_ms: JsonLatency {
                p50: ms(s.p50_us),
                p95: ms(s.p95_us),
                p99: ms(s.p99_us),
                max: ms(s.max_us),
                mean: s.mean_us.map(|m| m / 1000.0),
            },
        }
    }
}

#[derive(Debug, Serialize)]
pub struct JsonScenario {
    #[serde(flatten)]
    pub total: JsonOp,
    pub clients: usize,
    pub elapsed_s: f64,
    pub notes: Vec<String>,
    pub first_error: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ops: Vec<JsonOp>,
}

impl JsonScenario {
    pub fn new(r: &ScenarioResult) -> Self {
        Self {
            total: JsonOp::new(r.name, &r.total, r.elapsed),
            clients: r.clients,
            elapsed_s: r.elapsed.as_secs_f64(),
            notes: r.notes.clone(),
            first_error: r.first_error.clone(),
            ops: r
                .ops
                .iter()
                .map(|(n, s)| JsonOp::new(n, s, r.elapsed))
                .collect(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a panic is how a test fails
mod tests {
    use super::*;

    #[test]
    fn ms_formatting() {
        assert_eq!(fmt_ms(None), "-");
        assert_eq!(fmt_ms(Some(0)), "0.00");
        assert_eq!(fmt_ms(Some(1)), "0.00");
        assert_eq!(fmt_ms(Some(5)), "0.01");
        assert_eq!(fmt_ms(Some(1234)), "1.23");
        assert_eq!(fmt_ms(Some(1_235_678)), "1235.68");
    }

    #[test]
    fn percentiles_from_histogram() {
        let mut s = OpStats::new().unwrap();
        for us in 1..=1000u64 {
            s.record_ok(Duration::from_micros(us * 10));
        }
        s.record_err(ErrKind::Status(503));
        s.record_err(ErrKind::Status(503));
        s.record_err(ErrKind::Timeout);
        let sum = s.summary(Duration::from_secs(2));
        assert_eq!(sum.requests, 1000);
        assert!((sum.rps - 500.0).abs() < 1e-9);
        assert_eq!(fmt_ms(sum.p50_us), "5.00");
        assert_eq!(fmt_ms(sum.p95_us), "9.50");
        assert_eq!(fmt_ms(sum.p99_us), "9.90");
        // 3 significant digits: 10 000 µs lands in an 8 µs wide bucket whose
        // highest equivalent value (10 007) is what hdrhistogram reports.
        assert_eq!(fmt_ms(sum.max_us), "10.01");
        assert_eq!(sum.errors, 3);
        assert_eq!(fmt_errors(&s.errors), "HTTP 503 × 2, timeout × 1");
    }

    #[test]
    fn empty_stats_have_no_percentiles() {
        let s = OpStats::new().unwrap();
        let sum = s.summary(Duration::ZERO);
        assert_eq!(sum.requests, 0);
        assert_eq!(sum.rps, 0.0);
        assert_eq!(sum.p99_us, None);
    }

    #[test]
    fn warmup_requests_are_not_counted() {
        let t0 = Instant::now();
        let start = t0 + Duration::from_millis(5);
        let mut r = Recorder::new(start, 1).unwrap();
        r.ok(0, t0, Duration::from_millis(1));
        r.err(0, t0, ErrKind::Connect, "refused");
        r.ok(0, start, Duration::from_millis(1));
        assert_eq!(r.ops[0].ok(), 1);
        assert_eq!(r.ops[0].error_total(), 0);
        assert!(r.first_error.is_none());
    }

    #[test]
    fn table_is_aligned_and_plain_without_ansi() {
        let mut a = OpStats::new().unwrap();
        a.record_ok(Duration::from_micros(1500));
        let mut b = OpStats::new().unwrap();
        b.record_err(ErrKind::Status(500));
        let results = vec![ScenarioResult {
            name: "mixed",
            clients: 2,
            elapsed: Duration::from_secs(1),
            total: a.clone(),
            ops: vec![("POST Patient", a), ("GET Patient/{id}", b)],
            notes: vec![],
            first_error: None,
        }];
        let table = render_table(&rows(&results), false);
        assert!(!table.contains('\x1b'));
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(lines[0].starts_with("scenario"));
        assert!(
            lines
                .iter()
                .all(|l| l.chars().count() == lines[0].chars().count())
        );
        assert!(lines[1].starts_with("mixed "));
        assert!(lines[1].contains("1.50"));
        assert!(lines[3].trim_end().ends_with('1'));
        assert!(render_table(&rows(&results), true).contains("\x1b[1m"));
    }

    #[test]
    fn snippets_are_single_line_and_bounded() {
        assert_eq!(snippet("a\nb", 10), "a b");
        assert_eq!(snippet("abcdef", 3), "abc…");
    }
}
