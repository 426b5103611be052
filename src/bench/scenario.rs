//! The benchmark scenarios and parsing of the `--scenarios` list.

use std::fmt;
use std::str::FromStr;

use anyhow::bail;

/// One workload the generator can drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scenario {
    /// GET `Observation/{id}` of a random seeded Observation.
    Read,
    /// POST a heart-rate Observation.
    Create,
    /// PUT a seeded Observation (each client owns a disjoint slice).
    Update,
    /// DELETE Observations pre-created before the timed phase.
    Delete,
    /// create → read → update → read of a Patient, per client.
    Mixed,
}

impl Scenario {
    /// Every scenario, in the default run order (create before delete, so the
    /// delete pool can be sized from the measured create rate).
    pub const ALL: [Scenario; 5] = [
        Scenario::Read,
        Scenario::Create,
        Scenario::Update,
        Scenario::Delete,
        Scenario::Mixed,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Read => "read",
            Scenario::Create => "create",
            Scenario::Update => "update",
            Scenario::Delete => "delete",
            Scenario::Mixed => "mixed",
        }
    }

    /// Whether the scenario needs the seeded Observation pool.
    pub fn needs_seeded_observations(self) -> bool {
        matches!(self, Scenario::Read | Scenario::Update)
    }

    /// Whether the scenario creates Observations, which must reference a seeded Patient.
    pub fn needs_seeded_patients(self) -> bool {
        !matches!(self, Scenario::Mixed)
    }

    /// Labels of the operations timed separately within the scenario (the
    /// index is the operation slot used by the workers).
    pub fn ops(self) -> &'static [&'static str] {
        match self {
            Scenario::Read => &["GET Observation/{id}"],
            Scenario::Create => &["POST Observation"],
            Scenario::Update => &["PUT Observation/{id}"],
            Scenario::Delete => &["DELETE Observation/{id}"],
            Scenario::Mixed => &["POST Patient", "GET Patient/{id}", "PUT Patient/{id}"],
        }
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Scenario {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        let wanted = s.trim();
        for sc in Scenario::ALL {
            if sc.name().eq_ignore_ascii_case(wanted) {
                return Ok(sc);
            }
        }
        bail!(
            "unknown scenario {wanted:?} (expected one of: read, create, update, delete, mixed, all)"
        )
    }
}

/// Turns the raw `--scenarios` values into scenarios, in the given order.
///
/// Entries are split on commas again because the value may come from a
/// single quoted argument or a config layer that bypassed clap's delimiter;
/// blanks are ignored, `all` expands to every scenario and duplicates are
/// dropped (running a scenario twice in one invocation would only measure a
/// warmer server under the same name).
pub fn parse_scenarios(raw: &[String]) -> anyhow::Result<Vec<Scenario>> {
    let mut out: Vec<Scenario> = Vec::new();
    for item in raw.iter().flat_map(|r| r.split(',')) {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        let expanded: Vec<Scenario> = if item.eq_ignore_ascii_case("all") {
            Scenario::ALL.to_vec()
        } else {
            vec![item.parse()?]
        };
        for sc in expanded {
            if !out.contains(&sc) {
                out.push(sc);
            }
        }
    }
    if out.is_empty() {
        bail!(
            "no scenario given (expected a comma-separated list of read, create, update, delete, mixed)"
        );
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a panic is how a test fails
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parses_default_list_in_order() {
        let got =
            parse_scenarios(&strings(&["read", "create", "update", "delete", "mixed"])).unwrap();
        assert_eq!(got, Scenario::ALL.to_vec());
    }

    #[test]
    fn keeps_user_order_trims_and_ignores_case() {
        let got = parse_scenarios(&strings(&[" Mixed", "READ "])).unwrap();
        assert_eq!(got, vec![Scenario::Mixed, Scenario::Read]);
    }

    #[test]
    fn splits_unsplit_values_and_skips_blanks() {
        let got = parse_scenarios(&strings(&["delete,,create,", ""])).unwrap();
        assert_eq!(got, vec![Scenario::Delete, Scenario::Create]);
    }

    #[test]
    fn all_expands_and_duplicates_are_dropped() {
        let got = parse_scenarios(&strings(&["update", "all", "read"])).unwrap();
        assert_eq!(
            got,
            vec![
                Scenario::Update,
                Scenario::Read,
                Scenario::Create,
                Scenario::Delete,
                Scenario::Mixed
            ]
        );
    }

    #[test]
    fn rejects_unknown_and_empty() {
        let err = parse_scenarios(&strings(&["read", "search"])).unwrap_err();
        assert!(err.to_string().contains("\"search\""), "{err}");
        assert!(parse_scenarios(&strings(&[" , "])).is_err());
        assert!(parse_scenarios(&[]).is_err());
    }
}
