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
    /// Writes the remote-monitoring data set (see `rpm`); not timed like
    /// the others, it reports its own elapsed time and rate.
    RpmSeed,
    /// `Observation?patient=Patient/{id}&category=vital-signs&date=ge{end-30d}` (US Core style).
    SearchPcd,
    /// `Observation?patient={id}&code=http://loinc.org|8867-4`.
    SearchPc,
    /// `Observation/$lastn?patient={id}&category=vital-signs&max=1`.
    Lastn,
    /// `Observation?code=http://loinc.org|29463-7&_total=accurate`, over all patients.
    CodeTotal,
    /// `Patient?organization={org}` and `Device?patient={id}`, alternately.
    SearchOrg,
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

    /// The searches over the remote-monitoring data set (`search`).
    pub const SEARCH: [Scenario; 5] = [
        Scenario::SearchPcd,
        Scenario::SearchPc,
        Scenario::Lastn,
        Scenario::CodeTotal,
        Scenario::SearchOrg,
    ];

    /// Every scenario that has a name of its own.
    const NAMED: [Scenario; 11] = [
        Scenario::Read,
        Scenario::Create,
        Scenario::Update,
        Scenario::Delete,
        Scenario::Mixed,
        Scenario::RpmSeed,
        Scenario::SearchPcd,
        Scenario::SearchPc,
        Scenario::Lastn,
        Scenario::CodeTotal,
        Scenario::SearchOrg,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Read => "read",
            Scenario::Create => "create",
            Scenario::Update => "update",
            Scenario::Delete => "delete",
            Scenario::Mixed => "mixed",
            Scenario::RpmSeed => "rpm-seed",
            Scenario::SearchPcd => "search-pcd",
            Scenario::SearchPc => "search-pc",
            Scenario::Lastn => "lastn",
            Scenario::CodeTotal => "code-total",
            Scenario::SearchOrg => "search-org",
        }
    }

    /// One of the original CRUD scenarios, which work on resources the run
    /// creates itself (and need the create probe).
    pub fn is_crud(self) -> bool {
        Scenario::ALL.contains(&self)
    }

    /// A search over the data set `rpm-seed` writes.
    pub fn is_rpm_search(self) -> bool {
        Scenario::SEARCH.contains(&self)
    }

    /// Whether the scenario needs the seeded Observation pool.
    pub fn needs_seeded_observations(self) -> bool {
        matches!(self, Scenario::Read | Scenario::Update)
    }

    /// Whether the scenario creates Observations, which must reference a seeded Patient.
    pub fn needs_seeded_patients(self) -> bool {
        matches!(
            self,
            Scenario::Read | Scenario::Create | Scenario::Update | Scenario::Delete
        )
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
            Scenario::RpmSeed => &[],
            Scenario::SearchPcd => &["GET Observation?patient&category&date"],
            Scenario::SearchPc => &["GET Observation?patient&code"],
            Scenario::Lastn => &["GET Observation/$lastn"],
            Scenario::CodeTotal => &["GET Observation?code&_total=accurate"],
            Scenario::SearchOrg => &["GET Patient?organization", "GET Device?patient"],
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
        for sc in Scenario::NAMED {
            if sc.name().eq_ignore_ascii_case(wanted) {
                return Ok(sc);
            }
        }
        bail!("unknown scenario {wanted:?} (expected one of: {})", names())
    }
}

/// The accepted names, for error messages.
fn names() -> String {
    let mut all: Vec<&str> = Scenario::NAMED.iter().map(|s| s.name()).collect();
    all.extend(["all", "search"]);
    all.join(", ")
}

/// Turns the raw `--scenarios` values into scenarios, in the given order.
///
/// Entries are split on commas again because the value may come from a
/// single quoted argument or a config layer that bypassed clap's delimiter;
/// blanks are ignored, `all` expands to the CRUD scenarios and `search` to
/// the searches over the rpm-seed data set, and duplicates are dropped
/// (running a scenario twice in one invocation would only measure a warmer
/// server under the same name).
pub fn parse_scenarios(raw: &[String]) -> anyhow::Result<Vec<Scenario>> {
    let mut out: Vec<Scenario> = Vec::new();
    for item in raw.iter().flat_map(|r| r.split(',')) {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        let expanded: Vec<Scenario> = if item.eq_ignore_ascii_case("all") {
            Scenario::ALL.to_vec()
        } else if item.eq_ignore_ascii_case("search") {
            Scenario::SEARCH.to_vec()
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
            "no scenario given (expected a comma-separated list of {})",
            names()
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
    fn rpm_names_and_search_group() {
        let got = parse_scenarios(&strings(&["rpm-seed,search,LASTN"])).unwrap();
        assert_eq!(got[0], Scenario::RpmSeed);
        assert_eq!(&got[1..], &Scenario::SEARCH);
        for sc in Scenario::NAMED {
            assert_eq!(sc.name().parse::<Scenario>().unwrap(), sc);
            assert_eq!(sc.is_crud(), Scenario::ALL.contains(&sc));
            // Timed scenarios need an operation label per recorder slot.
            assert_eq!(sc.ops().is_empty(), sc == Scenario::RpmSeed);
        }
    }

    #[test]
    fn rejects_unknown_and_empty() {
        let err = parse_scenarios(&strings(&["read", "seach"])).unwrap_err();
        assert!(err.to_string().contains("\"seach\""), "{err}");
        assert!(err.to_string().contains("search-pcd"), "{err}");
        assert!(parse_scenarios(&strings(&[" , "])).is_err());
        assert!(parse_scenarios(&[]).is_err());
    }
}
