//! SMART scopes (https://hl7.org/fhir/smart-app-launch/scopes-and-launch-context.html):
//! `context/Type.perms[?query]`, with v2 permissions (`c r u d s`, in that order) and the v1
//! forms `read`, `write` and `*` read as their v2 equivalents (`rs`, `cud`, `cruds`).

/// A clinical-data scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceScope {
    /// `patient`, `user` or `system`.
    pub context: String,
    /// A resource type, or `*`.
    pub resource: String,
    /// Which of create, read, update, delete, search.
    pub perms: Perms,
    /// A granular scope's search query (`category=…|vital-signs`), kept as written.
    pub query: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Perms {
    pub c: bool,
    pub r: bool,
    pub u: bool,
    pub d: bool,
    pub s: bool,
}

impl Perms {
    fn parse(s: &str) -> Option<Perms> {
        match s {
            "read" => {
                return Some(Perms {
                    r: true,
                    s: true,
                    ..Perms::default()
                });
            }
            "write" => {
                return Some(Perms {
                    c: true,
                    u: true,
                    d: true,
                    ..Perms::default()
                });
            }
            "*" => return Perms::parse("cruds"),
            "" => return None,
            _ => {}
        }
        // v2: a non-empty subsequence of "cruds", in that order.
        let mut p = Perms::default();
        let mut rest = "cruds";
        for ch in s.chars() {
            let at = rest.find(ch)?;
            rest = &rest[at + 1..];
            match ch {
                'c' => p.c = true,
                'r' => p.r = true,
                'u' => p.u = true,
                'd' => p.d = true,
                's' => p.s = true,
                _ => return None,
            }
        }
        Some(p)
    }

    /// Every permission of `self` is in `other`.
    pub fn within(self, other: Perms) -> bool {
        (!self.c || other.c)
            && (!self.r || other.r)
            && (!self.u || other.u)
            && (!self.d || other.d)
            && (!self.s || other.s)
    }
}

impl ResourceScope {
    /// Parses a clinical-data scope; other scopes (`openid`, `launch/patient`, …) are `None`.
    pub fn parse(s: &str) -> Option<ResourceScope> {
        let (context, rest) = s.split_once('/')?;
        if !matches!(context, "patient" | "user" | "system") {
            return None;
        }
        let (body, query) = match rest.split_once('?') {
            Some((b, q)) if !q.is_empty() => (b, Some(q.to_owned())),
            Some(_) => return None,
            None => (rest, None),
        };
        let (resource, perms) = body.split_once('.')?;
        let valid_type = resource == "*"
            || (resource.len() > 1
                && resource.starts_with(|c: char| c.is_ascii_uppercase())
                && resource.chars().all(|c| c.is_ascii_alphanumeric()));
        if !valid_type {
            return None;
        }
        Some(ResourceScope {
            context: context.to_owned(),
            resource: resource.to_owned(),
            perms: Perms::parse(perms)?,
            query,
        })
    }

    /// True when a grant of `other` covers everything `self` asks for.
    pub fn within(&self, other: &ResourceScope) -> bool {
        self.context == other.context
            && (other.resource == "*" || other.resource == self.resource)
            && self.perms.within(other.perms)
            && (other.query.is_none() || other.query == self.query)
    }
}

/// True when `requested` is covered by one of `allowed`: clinical-data scopes by [`ResourceScope::within`],
/// every other scope only by itself.
pub fn covered(requested: &str, allowed: &[&str]) -> bool {
    match ResourceScope::parse(requested) {
        Some(r) => allowed
            .iter()
            .filter_map(|a| ResourceScope::parse(a))
            .any(|a| r.within(&a)),
        None => allowed.contains(&requested),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_and_v2_forms_parse_to_the_same_permissions() {
        let v2 = ResourceScope::parse("patient/Observation.rs").expect("v2");
        let v1 = ResourceScope::parse("patient/Observation.read").expect("v1");
        assert_eq!(v1, v2);
        assert_eq!(
            ResourceScope::parse("system/*.*").expect("v1 star").perms,
            ResourceScope::parse("system/*.cruds").expect("v2").perms
        );
        let g = ResourceScope::parse("patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|vital-signs")
            .expect("granular");
        assert_eq!(
            g.query.as_deref(),
            Some("category=http://terminology.hl7.org/CodeSystem/observation-category|vital-signs")
        );
        for bad in [
            "patient/Observation.sr", // out of order
            "patient/Observation.rr",
            "patient/Observation.x",
            "patient/Observation.",
            "clinic/Observation.r",
            "patient/observation.r",
            "patient/Observation.r?",
            "openid",
            "launch/patient",
        ] {
            assert_eq!(ResourceScope::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_request_is_covered_only_by_wider_grants() {
        let allowed = ["system/*.cruds", "openid"];
        assert!(covered("system/Observation.rs", &allowed));
        assert!(covered("system/Observation.read", &allowed));
        assert!(covered("system/*.cruds", &allowed));
        assert!(covered("openid", &allowed));
        assert!(!covered("user/Observation.rs", &allowed), "another context");
        assert!(!covered("fhirUser", &allowed));
        let narrow = ["system/Observation.rs?category=x|vital-signs"];
        assert!(covered(
            "system/Observation.rs?category=x|vital-signs",
            &narrow
        ));
        assert!(covered(
            "system/Observation.r?category=x|vital-signs",
            &narrow
        ));
        assert!(
            !covered("system/Observation.rs", &narrow),
            "the query narrows the grant"
        );
        assert!(!covered(
            "system/Observation.cruds?category=x|vital-signs",
            &narrow
        ));
        assert!(!covered("system/Patient.r?category=x|vital-signs", &narrow));
    }
}
