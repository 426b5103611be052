//! Progress of long-running commands (`reindex`, `bill`, the bench's seeding): a bar on a
//! terminal, plain lines otherwise.
//!
//! A redrawn bar is what a person at a terminal wants; a log file, `journalctl` or a CI job gets
//! one escape-laden redraw per update from it, or (indicatif hides bars off a terminal) nothing
//! at all until the command ends. So when stderr is not a terminal, [`Progress`] writes a line
//! at each further 10 %, and at least every [`LINE_EVERY`] while work goes on (a 10 % step of a
//! large reindex can take minutes), then a final line:
//!
//! ```text
//! reindex:  10 % (500/5000 resources, 812/s, 0.6 s)
//! …
//! reindex: 100 % (5000/5000 resources, 798/s, 6.3 s)
//! reindex: done, 5000 resources in 6.3 s (798/s)
//! ```

use std::io::{IsTerminal as _, Write};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// The longest wait between two progress lines while work goes on.
pub const LINE_EVERY: Duration = Duration::from_secs(15);

/// The progress of one phase of work: `total` units (resources, devices…), advanced from any
/// task (`&self` methods, `Sync`).
pub struct Progress {
    label: String,
    unit: &'static str,
    out: Output,
    total: AtomicU64,
    done: AtomicU64,
    started: Instant,
    finished: AtomicBool,
}

enum Output {
    Bar(ProgressBar),
    Lines(Mutex<Lines>),
}

/// What the line writer remembers between updates.
struct Lines {
    out: Box<dyn Write + Send>,
    /// Tenths already reported.
    tenths: u64,
    last_line: Instant,
    every: Duration,
}

impl Progress {
    /// A bar when stderr is a terminal, lines on stderr otherwise. `total` may be 0 when it is
    /// not known yet ([`Progress::set_total`]); `unit` names what is counted, in the plural.
    pub fn new(label: impl Into<String>, total: u64, unit: &'static str) -> Progress {
        if std::io::stderr().is_terminal() {
            Progress::bar(label.into(), total, unit)
        } else {
            Progress::lines_to(label, total, unit, std::io::stderr())
        }
    }

    /// Plain progress lines to `out`, whatever it is.
    pub fn lines_to(
        label: impl Into<String>,
        total: u64,
        unit: &'static str,
        out: impl Write + Send + 'static,
    ) -> Progress {
        Progress::with_output(
            label.into(),
            total,
            unit,
            Output::Lines(Mutex::new(Lines {
                out: Box::new(out),
                tenths: 0,
                last_line: Instant::now(),
                every: LINE_EVERY,
            })),
        )
    }

    /// Writes a line at least this often while work goes on (lines only; [`LINE_EVERY`] by
    /// default).
    pub fn every(self, interval: Duration) -> Progress {
        if let Output::Lines(lines) = &self.out
            && let Ok(mut l) = lines.lock()
        {
            l.every = interval;
        }
        self
    }

    fn bar(label: String, total: u64, unit: &'static str) -> Progress {
        let bar = ProgressBar::new(total);
        // `wide_bar` takes the width left on the line, so the bar never wraps; the rate is
        // shown whole (indicatif's `per_sec` has three decimals).
        let style = ProgressStyle::with_template(&format!(
            "{{spinner}} {{prefix}} [{{wide_bar}}] {{human_pos}}/{{human_len}} {unit} \
             ({{rate}}, {{eta}} left)"
        ))
        .map(|s| {
            s.progress_chars("=> ").with_key(
                "rate",
                |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = write!(w, "{:.0}/s", state.per_sec());
                },
            )
        })
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        bar.set_prefix(label.clone());
        bar.enable_steady_tick(Duration::from_millis(200));
        Progress::with_output(label, total, unit, Output::Bar(bar))
    }

    fn with_output(label: String, total: u64, unit: &'static str, out: Output) -> Progress {
        Progress {
            label,
            unit,
            out,
            total: AtomicU64::new(total),
            done: AtomicU64::new(0),
            started: Instant::now(),
            finished: AtomicBool::new(false),
        }
    }

    /// Sets the total once it is known (or when an estimate changes).
    pub fn set_total(&self, total: u64) {
        self.total.store(total, Ordering::Relaxed);
        if let Output::Bar(bar) = &self.out {
            bar.set_length(total);
        }
    }

    /// Adds `n` units done.
    pub fn inc(&self, n: u64) {
        let done = self.done.fetch_add(n, Ordering::Relaxed) + n;
        self.update(done);
    }

    /// Sets the units done.
    pub fn set_position(&self, done: u64) {
        self.done.store(done, Ordering::Relaxed);
        self.update(done);
    }

    fn update(&self, done: u64) {
        match &self.out {
            Output::Bar(bar) => bar.set_position(done),
            Output::Lines(lines) => {
                let Ok(mut l) = lines.lock() else { return };
                let total = self.total.load(Ordering::Relaxed);
                // Without a total (not known yet) only time brings a line.
                let tenths = done
                    .saturating_mul(10)
                    .checked_div(total)
                    .map_or(0, |t| t.min(10));
                let now = Instant::now();
                if tenths > l.tenths || now.duration_since(l.last_line) >= l.every {
                    l.tenths = l.tenths.max(tenths);
                    l.last_line = now;
                    let text = line(&self.label, done, total, self.unit, self.started.elapsed());
                    let _ = writeln!(l.out, "{text}");
                }
            }
        }
    }

    /// Prints a message without tearing the bar.
    pub fn println(&self, msg: &str) {
        match &self.out {
            Output::Bar(bar) => bar.suspend(|| eprintln!("{msg}")),
            Output::Lines(lines) => {
                if let Ok(mut l) = lines.lock() {
                    let _ = writeln!(l.out, "{msg}");
                }
            }
        }
    }

    /// Ends the phase: the bar is cleared (the command prints its own summary), the line writer
    /// writes a final line. Later calls do nothing.
    pub fn finish(&self) {
        if self.finished.swap(true, Ordering::Relaxed) {
            return;
        }
        match &self.out {
            Output::Bar(bar) => bar.finish_and_clear(),
            Output::Lines(lines) => {
                if let Ok(mut l) = lines.lock() {
                    let text = final_line(
                        &self.label,
                        self.done.load(Ordering::Relaxed),
                        self.unit,
                        self.started.elapsed(),
                    );
                    let _ = writeln!(l.out, "{text}");
                    let _ = l.out.flush();
                }
            }
        }
    }
}

fn rate(done: u64, elapsed: Duration) -> f64 {
    done as f64 / elapsed.as_secs_f64().max(1e-6)
}

/// `label:  40 % (400/1000 unit, 523/s, 0.8 s)`; without a total, `label: 400 unit (…)`.
pub fn line(label: &str, done: u64, total: u64, unit: &str, elapsed: Duration) -> String {
    let (rate, secs) = (rate(done, elapsed), elapsed.as_secs_f64());
    if total == 0 {
        return format!("{label}: {done} {unit} ({rate:.0}/s, {secs:.1} s)");
    }
    let percent = (done.saturating_mul(100) / total).min(100);
    format!("{label}: {percent:>3} % ({done}/{total} {unit}, {rate:.0}/s, {secs:.1} s)")
}

/// `label: done, 1000 unit in 1.9 s (523/s)`.
pub fn final_line(label: &str, done: u64, unit: &str, elapsed: Duration) -> String {
    format!(
        "{label}: done, {done} {unit} in {:.1} s ({:.0}/s)",
        elapsed.as_secs_f64(),
        rate(done, elapsed)
    )
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A writer whose text the test reads afterwards.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn lines(&self) -> Vec<String> {
            String::from_utf8(self.0.lock().expect("lock").clone())
                .expect("utf-8")
                .lines()
                .map(str::to_owned)
                .collect()
        }
    }

    /// The percentage of each progress line, in order.
    fn percents(lines: &[String]) -> Vec<u64> {
        lines
            .iter()
            .filter_map(|l| l.split(" %").next()?.rsplit(' ').next()?.parse().ok())
            .collect()
    }

    #[test]
    fn a_line_at_each_tenth_and_a_final_line() {
        let out = Captured::default();
        let p = Progress::lines_to("reindex", 1000, "resources", out.clone());
        for _ in 0..100 {
            p.inc(10);
        }
        p.finish();
        let lines = out.lines();
        assert_eq!(
            percents(&lines),
            [10, 20, 30, 40, 50, 60, 70, 80, 90, 100],
            "{lines:#?}"
        );
        assert_eq!(lines.len(), 11, "{lines:#?}");
        assert!(
            lines[0].starts_with("reindex:  10 % (100/1000 resources, "),
            "{lines:#?}"
        );
        assert!(
            lines[9].starts_with("reindex: 100 % (1000/1000 resources, "),
            "{lines:#?}"
        );
        assert!(
            lines[10].starts_with("reindex: done, 1000 resources in "),
            "{lines:#?}"
        );
        assert!(lines.iter().all(|l| !l.contains('\x1b')), "{lines:#?}");
    }

    #[test]
    fn big_steps_report_only_the_tenth_reached_and_nothing_twice() {
        let out = Captured::default();
        let p = Progress::lines_to("bill 2024-02: devices", 10, "devices", out.clone());
        p.set_position(3);
        p.set_position(3);
        p.set_position(9);
        // An estimated total can be passed: no percentage above 100.
        p.set_position(12);
        p.finish();
        p.finish();
        let lines = out.lines();
        assert_eq!(percents(&lines), [30, 90, 100], "{lines:#?}");
        assert!(lines[2].contains("(12/10 devices"), "{lines:#?}");
        assert_eq!(
            lines
                .iter()
                .filter(|l| l.contains("done, 12 devices"))
                .count(),
            1,
            "{lines:#?}"
        );
    }

    #[test]
    fn small_steps_of_a_large_total_wait_for_the_next_tenth() {
        let out = Captured::default();
        let p = Progress::lines_to("seed", 1_000_000, "resources", out.clone());
        for _ in 0..99 {
            p.inc(1000);
        }
        assert!(out.lines().is_empty(), "{:#?}", out.lines());
        p.inc(1000);
        assert_eq!(percents(&out.lines()), [10]);
    }

    #[test]
    fn long_phases_and_unknown_totals_get_lines_by_time() {
        let out = Captured::default();
        let p = Progress::lines_to("setup", 0, "resources", out.clone()).every(Duration::ZERO);
        p.inc(5);
        p.inc(5);
        p.finish();
        let lines = out.lines();
        assert_eq!(lines.len(), 3, "{lines:#?}");
        assert!(lines[0].starts_with("setup: 5 resources ("), "{lines:#?}");
        assert!(lines[1].starts_with("setup: 10 resources ("), "{lines:#?}");
        assert!(lines[2].starts_with("setup: done, 10 resources in "));
    }

    #[test]
    fn an_empty_phase_has_only_the_final_line() {
        let out = Captured::default();
        let p = Progress::lines_to("reindex", 0, "resources", out.clone());
        p.finish();
        assert_eq!(out.lines().len(), 1);
        assert!(out.lines()[0].starts_with("reindex: done, 0 resources in "));
    }

    #[test]
    fn line_formats() {
        let s = Duration::from_secs(2);
        assert_eq!(
            line("reindex", 400, 1000, "resources", s),
            "reindex:  40 % (400/1000 resources, 200/s, 2.0 s)"
        );
        assert_eq!(line("x", 7, 0, "devices", s), "x: 7 devices (4/s, 2.0 s)");
        assert_eq!(
            final_line("reindex", 1000, "resources", s),
            "reindex: done, 1000 resources in 2.0 s (500/s)"
        );
    }
}
