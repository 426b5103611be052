//! The check runner: a check is an async block that passes, fails saying what it expected and
//! what came back, or is skipped because the server does not advertise what it tests. Results
//! are printed as they come (a heading per group, a line per check) and kept for the summary
//! and the JUnit file.

use std::future::Future;
use std::io::Write;
use std::time::{Duration, Instant};

/// Why a check did not pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The server answered something other than what the specification requires.
    Fail(String),
    /// The server does not advertise the capability the check tests.
    Skip(String),
}

/// What a check returns: `?` works on HTTP and JSON errors, which become failures.
pub type Check = Result<(), Problem>;

impl From<reqwest::Error> for Problem {
    fn from(e: reqwest::Error) -> Self {
        // The chain says "connection refused" or "timed out", which is what a reader needs.
        let mut msg = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            msg.push_str(": ");
            msg.push_str(&s.to_string());
            source = s.source();
        }
        Problem::Fail(format!("the request failed: {msg}"))
    }
}

/// A failure saying `msg`.
pub fn fail(msg: impl Into<String>) -> Problem {
    Problem::Fail(msg.into())
}

/// Fails the check with the formatted message unless `cond` holds.
macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err($crate::conformance::runner::Problem::Fail(format!($($msg)+)));
        }
    };
}
pub(crate) use ensure;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    Fail(String),
    Skip(String),
}

#[derive(Debug, Clone)]
pub struct CheckResult {
    pub group: &'static str,
    pub name: String,
    pub outcome: Outcome,
    pub duration: Duration,
}

/// Every result of a run, in the order the checks ran.
#[derive(Debug, Default)]
pub struct Report {
    pub results: Vec<CheckResult>,
    pub started: Option<Instant>,
}

/// No check may hang the run: a server that never answers fails the check after this long
/// (longer than any wait a check does itself).
const CHECK_TIMEOUT: Duration = Duration::from_secs(120);

impl Report {
    pub fn new() -> Report {
        Report {
            results: Vec::new(),
            started: Some(Instant::now()),
        }
    }

    /// Starts group `name`: prints its heading.
    pub fn group(&mut self, name: &'static str) -> Group<'_> {
        println!("\n{name}");
        Group { name, report: self }
    }

    pub fn count(&self, which: fn(&Outcome) -> bool) -> usize {
        self.results.iter().filter(|r| which(&r.outcome)).count()
    }

    pub fn failed(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Fail(_)))
    }

    /// The summary line: `45 checks: 43 passed, 1 failed, 1 skipped in 6.2 s`.
    pub fn summary(&self) -> String {
        format!(
            "{} checks: {} passed, {} failed, {} skipped in {:.1} s",
            self.results.len(),
            self.count(|o| *o == Outcome::Pass),
            self.failed(),
            self.count(|o| matches!(o, Outcome::Skip(_))),
            self.started.map_or(0.0, |s| s.elapsed().as_secs_f64())
        )
    }
}

pub struct Group<'a> {
    name: &'static str,
    report: &'a mut Report,
}

impl Group<'_> {
    /// Runs one check and prints its line.
    pub async fn check(&mut self, name: &str, check: impl Future<Output = Check>) {
        let started = Instant::now();
        let outcome = match tokio::time::timeout(CHECK_TIMEOUT, check).await {
            Ok(Ok(())) => Outcome::Pass,
            Ok(Err(Problem::Fail(why))) => Outcome::Fail(why),
            Ok(Err(Problem::Skip(why))) => Outcome::Skip(why),
            Err(_) => Outcome::Fail(format!("no result within {} s", CHECK_TIMEOUT.as_secs())),
        };
        let duration = started.elapsed();
        let ms = duration.as_millis();
        match &outcome {
            Outcome::Pass => println!("  pass  {name} ({ms} ms)"),
            Outcome::Skip(why) => println!("  skip  {name}: {why}"),
            Outcome::Fail(why) => {
                println!("  FAIL  {name} ({ms} ms)");
                for line in why.lines() {
                    println!("          {line}");
                }
            }
        }
        // Lines appear as checks finish, also when stdout is a pipe.
        let _ = std::io::stdout().flush();
        self.report.results.push(CheckResult {
            group: self.name,
            name: name.to_owned(),
            outcome,
            duration,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn outcomes_are_recorded_and_counted() {
        let mut report = Report::new();
        let mut g = report.group("G");
        g.check("passes", async { Ok(()) }).await;
        g.check("fails", async {
            ensure!(1 + 1 == 3, "expected 3, got {}", 1 + 1);
            Ok(())
        })
        .await;
        g.check("skips", async {
            Err(Problem::Skip("not advertised".into()))
        })
        .await;
        assert_eq!(report.results.len(), 3);
        assert_eq!(report.failed(), 1);
        assert_eq!(
            report.results[1].outcome,
            Outcome::Fail("expected 3, got 2".into())
        );
        assert!(
            report
                .summary()
                .starts_with("3 checks: 1 passed, 1 failed, 1 skipped")
        );
    }
}
