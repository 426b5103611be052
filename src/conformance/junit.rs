//! JUnit XML of a run, the format CI systems show test results in: one `testsuite` per group,
//! one `testcase` per check, `failure` and `skipped` elements with the message.

use std::fmt::Write;

use super::runner::{Outcome, Report};

/// Escapes `s` for XML text and attribute values; characters XML 1.0 cannot carry at all
/// (controls other than tab, newline and carriage return) become U+FFFD.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

/// The JUnit XML document of `report`.
pub fn render(report: &Report) -> String {
    let mut groups: Vec<&'static str> = Vec::new();
    for r in &report.results {
        if !groups.contains(&r.group) {
            groups.push(r.group);
        }
    }
    let total: f64 = report
        .results
        .iter()
        .map(|r| r.duration.as_secs_f64())
        .sum();
    let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        x,
        "<testsuites name=\"vitalbridge conformance\" tests=\"{}\" failures=\"{}\" skipped=\"{}\" time=\"{total:.3}\">",
        report.results.len(),
        report.failed(),
        report.count(|o| matches!(o, Outcome::Skip(_))),
    );
    for group in groups {
        let cases: Vec<_> = report.results.iter().filter(|r| r.group == group).collect();
        let failures = cases
            .iter()
            .filter(|r| matches!(r.outcome, Outcome::Fail(_)))
            .count();
        let skipped = cases
            .iter()
            .filter(|r| matches!(r.outcome, Outcome::Skip(_)))
            .count();
        let time: f64 = cases.iter().map(|r| r.duration.as_secs_f64()).sum();
        let _ = writeln!(
            x,
            "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{failures}\" errors=\"0\" skipped=\"{skipped}\" time=\"{time:.3}\">",
            escape(group),
            cases.len(),
        );
        for r in cases {
            let _ = write!(
                x,
                "    <testcase classname=\"{}\" name=\"{}\" time=\"{:.3}\"",
                escape(group),
                escape(&r.name),
                r.duration.as_secs_f64()
            );
            match &r.outcome {
                Outcome::Pass => x.push_str("/>\n"),
                Outcome::Fail(why) => {
                    let first = why.lines().next().unwrap_or_default();
                    let _ = writeln!(
                        x,
                        ">\n      <failure message=\"{}\">{}</failure>\n    </testcase>",
                        escape(first),
                        escape(why)
                    );
                }
                Outcome::Skip(why) => {
                    let _ = writeln!(
                        x,
                        ">\n      <skipped message=\"{}\"/>\n    </testcase>",
                        escape(why)
                    );
                }
            }
        }
        x.push_str("  </testsuite>\n");
    }
    x.push_str("</testsuites>\n");
    x
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance::runner::CheckResult;
    use std::time::Duration;

    #[test]
    fn markup_and_controls_are_escaped() {
        assert_eq!(
            escape("a<b & \"c\" 'd'>\u{1}\n"),
            "a&lt;b &amp; &quot;c&quot; &apos;d&apos;&gt;\u{FFFD}\n"
        );
    }

    #[test]
    fn one_suite_per_group_with_failures_and_skips() {
        let case = |group, name: &str, outcome| CheckResult {
            group,
            name: name.into(),
            outcome,
            duration: Duration::from_millis(1500),
        };
        let report = Report {
            results: vec![
                case("REST core", "read", Outcome::Pass),
                case(
                    "REST core",
                    "patch <json>",
                    Outcome::Fail("expected 200\ngot 500".into()),
                ),
                case("Search", "_sort", Outcome::Skip("not advertised".into())),
            ],
            started: None,
        };
        let x = render(&report);
        assert!(x.contains(
            "<testsuites name=\"vitalbridge conformance\" tests=\"3\" failures=\"1\" skipped=\"1\""
        ));
        assert!(x.contains("<testsuite name=\"REST core\" tests=\"2\" failures=\"1\" errors=\"0\" skipped=\"0\" time=\"3.000\">"));
        assert!(x.contains("<testcase classname=\"REST core\" name=\"read\" time=\"1.500\"/>"));
        assert!(x.contains("name=\"patch &lt;json&gt;\""));
        assert!(x.contains("<failure message=\"expected 200\">expected 200\ngot 500</failure>"));
        assert!(x.contains("<skipped message=\"not advertised\"/>"));
        assert_eq!(x.matches("<testsuite ").count(), 2);
    }
}
