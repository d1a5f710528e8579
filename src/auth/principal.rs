//! Who a request comes from, once its access token checked out, and what its scopes let
//! it do.

use super::scopes::{parse_scope, Context, Permission, ResourceScope, Scope};
use super::token::AccessClaims;

#[derive(Debug, Clone)]
pub struct Principal {
    pub client_id: String,
    pub scopes: Vec<ResourceScope>,
    /// The patient of a `patient/` token.
    pub patient: Option<String>,
}

impl Principal {
    pub fn from_claims(claims: &AccessClaims) -> Principal {
        let scopes = claims
            .scope
            .split_whitespace()
            .filter_map(|s| match parse_scope(s) {
                Ok(Scope::Resource(scope)) => Some(scope),
                _ => None,
            })
            // A patient/ scope without a patient reaches nothing.
            .filter(|s| s.context != Context::Patient || claims.patient.is_some())
            .collect();
        Principal {
            client_id: claims.client_id.clone(),
            scopes,
            patient: claims.patient.clone(),
        }
    }

    /// Whether some scope grants `permission` on every resource of `resource_type`.
    ///
    /// `patient/` scopes grant nothing here until compartments are enforced on results;
    /// query-restricted scopes grant only what [`Principal::restrictions`] allows.
    pub fn may(&self, resource_type: &str, permission: Permission) -> bool {
        self.scopes.iter().any(|s| {
            s.context != Context::Patient
                && s.query.is_none()
                && s.covers(resource_type, permission)
        })
    }

    /// Whether a `patient/` scope (without a query restriction) grants `permission` on
    /// `resource_type` within the token's patient compartment.
    pub fn may_in_compartment(&self, resource_type: &str, permission: Permission) -> bool {
        self.patient.is_some()
            && self.scopes.iter().any(|s| {
                s.context == Context::Patient
                    && s.query.is_none()
                    && s.covers(resource_type, permission)
            })
    }

    /// The query restrictions under which `permission` on `resource_type` is granted when
    /// no unrestricted scope grants it (`system/Observation.rs?category=…`); empty when
    /// none does.
    pub fn restrictions(&self, resource_type: &str, permission: Permission) -> Vec<String> {
        let mut queries: Vec<String> = self
            .scopes
            .iter()
            .filter(|s| s.context != Context::Patient && s.covers(resource_type, permission))
            .filter_map(|s| s.query.clone())
            .collect();
        queries.sort();
        queries.dedup();
        queries
    }

    /// Whether the scopes grant everything on every type (`system/*.cruds`): needed for
    /// requests whose entries or results are not yet checked one by one (batch and
    /// transaction Bundles, system-level search and history, `$reindex`).
    pub fn may_do_anything(&self) -> bool {
        [
            Permission::Create,
            Permission::Read,
            Permission::Update,
            Permission::Delete,
            Permission::Search,
        ]
        .iter()
        .all(|p| {
            self.scopes.iter().any(|s| {
                s.context != Context::Patient
                    && s.query.is_none()
                    && s.resource_type.is_none()
                    && s.permissions.contains(*p)
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(scope: &str, patient: Option<&str>) -> AccessClaims {
        AccessClaims {
            iss: "t".into(),
            sub: "c".into(),
            aud: "a".into(),
            exp: 0,
            iat: 0,
            jti: "j".into(),
            scope: scope.into(),
            client_id: "c".into(),
            patient: patient.map(str::to_string),
        }
    }

    #[test]
    fn scopes_decide_what_a_principal_may_do() {
        let principal = Principal::from_claims(&claims(
            "system/Observation.rs system/Device.c openid",
            None,
        ));
        assert!(principal.may("Observation", Permission::Search));
        assert!(!principal.may("Observation", Permission::Create));
        assert!(principal.may("Device", Permission::Create));
        assert!(!principal.may("Patient", Permission::Read));
        let orphan = Principal::from_claims(&claims("patient/Observation.rs", None));
        assert!(!orphan.may("Observation", Permission::Read));
        // Not yet: compartments are not enforced on results.
        let patient = Principal::from_claims(&claims("patient/*.read", Some("p1")));
        assert!(!patient.may("Encounter", Permission::Read));
        let restricted =
            Principal::from_claims(&claims("system/Observation.rs?category=vital-signs", None));
        assert!(!restricted.may("Observation", Permission::Search));
        assert!(Principal::from_claims(&claims("system/*.cruds", None)).may_do_anything());
        assert!(
            Principal::from_claims(&claims("system/*.rs system/*.cud", None)).may_do_anything()
        );
        assert!(!principal.may_do_anything());
    }
}
