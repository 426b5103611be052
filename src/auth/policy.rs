//! The access policy (DESIGN.md rule 4): what one request may do, built once from its token and
//! consulted by every interaction, Bundle entry and operation.
//!
//! Today it applies the token's SMART scopes by resource type and interaction
//! (https://hl7.org/fhir/smart-app-launch/scopes-and-launch-context.html). Roles and tenancy
//! (DESIGN.md "Tenancy") are to narrow it further. Until the patient compartment and granular
//! scopes narrow searches, `patient/…` scopes and scopes with a query permit nothing: a token is
//! refused rather than widened.

use super::Principal;
use super::scope::ResourceScope;
use crate::http::error::ApiError;

/// The SMART v2 permissions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Perm {
    Create,
    Read,
    Update,
    Delete,
    Search,
}

impl Perm {
    fn letter(self) -> char {
        match self {
            Perm::Create => 'c',
            Perm::Read => 'r',
            Perm::Update => 'u',
            Perm::Delete => 'd',
            Perm::Search => 's',
        }
    }
}

/// What a request may do.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    scopes: Vec<ResourceScope>,
}

impl Policy {
    pub fn of(principal: &Principal) -> Policy {
        Policy {
            scopes: principal
                .scopes
                .iter()
                .filter_map(|s| ResourceScope::parse(s))
                // Not yet enforceable as narrowings: refused rather than widened.
                .filter(|s| s.context != "patient" && s.query.is_none())
                .collect(),
        }
    }

    /// A policy that permits nothing (a request without a principal).
    pub fn none() -> Policy {
        Policy::default()
    }

    /// True when some scope grants `perm` on resources of type `ty`.
    pub fn permits(&self, ty: &str, perm: Perm) -> bool {
        self.scopes.iter().any(|s| {
            (s.resource == "*" || s.resource == ty)
                && match perm {
                    Perm::Create => s.perms.c,
                    Perm::Read => s.perms.r,
                    Perm::Update => s.perms.u,
                    Perm::Delete => s.perms.d,
                    Perm::Search => s.perms.s,
                }
        })
    }

    /// True when some scope grants `perm` on every type (system-wide search and history).
    pub fn permits_all(&self, perm: Perm) -> bool {
        self.scopes.iter().any(|s| s.resource == "*") && self.permits("*", perm)
    }

    /// [`Policy::permits`], or 403 naming the missing scope.
    pub fn check(&self, ty: &str, perm: Perm) -> Result<(), ApiError> {
        if self.permits(ty, perm) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "the access token's scopes do not allow this: it needs a scope such as system/{ty}.{}",
                perm.letter()
            )))
        }
    }

    /// [`Policy::check`] for every type.
    pub fn check_all(&self, perm: Perm) -> Result<(), ApiError> {
        self.check("*", perm)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Role;

    fn policy(scopes: &[&str]) -> Policy {
        Policy::of(&Principal {
            client_id: "c".into(),
            subject: "c".into(),
            role: Role::Admin,
            organization: None,
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            token_id: "t".into(),
            expires_at: 0,
        })
    }

    #[test]
    fn scopes_grant_types_and_interactions() {
        let p = policy(&["system/Observation.rs", "system/Patient.read", "openid"]);
        assert!(p.permits("Observation", Perm::Read));
        assert!(p.permits("Observation", Perm::Search));
        assert!(!p.permits("Observation", Perm::Create));
        assert!(p.permits("Patient", Perm::Search), "v1 read = rs");
        assert!(!p.permits("Device", Perm::Read));
        assert!(!p.permits_all(Perm::Search));
        assert!(p.check("Device", Perm::Read).is_err());
        let all = policy(&["system/*.cruds"]);
        assert!(all.permits("Device", Perm::Delete));
        assert!(all.permits_all(Perm::Search));
        let writer = policy(&["system/*.cud"]);
        assert!(!writer.permits_all(Perm::Search));
        assert!(writer.permits("Device", Perm::Update));
    }

    #[test]
    fn scopes_it_cannot_yet_narrow_by_grant_nothing() {
        let p = policy(&[
            "patient/Observation.rs",
            "system/Observation.rs?category=vital-signs",
        ]);
        assert!(!p.permits("Observation", Perm::Read));
        assert!(!p.permits("Observation", Perm::Search));
        assert!(!Policy::none().permits("Patient", Perm::Read));
    }
}
