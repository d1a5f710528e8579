//! Who a request comes from, once its access token checked out, and what its scopes let
//! it do.

use super::scopes::{parse_scope, Context, Permission, ResourceScope, Scope};
use super::token::AccessClaims;
use crate::search::compartment::Compartments;
use crate::search::criteria::{condition_at, owner_alias, Condition, Selectivity};
use crate::search::visibility::{Access, Visible};

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

    /// Whether some scope grants `permission` on every resource of `resource_type`
    /// (neither a `patient/` scope nor a query-restricted one does).
    pub fn may(&self, resource_type: &str, permission: Permission) -> bool {
        self.scopes.iter().any(|s| {
            s.context != Context::Patient
                && s.query.is_none()
                && s.covers(resource_type, permission)
        })
    }

    /// Whether the scopes grant everything on every type (`system/*.cruds`): needed for
    /// `$reindex` and for nested Bundles.
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

impl Principal {
    /// The principal of a record made by [`Access::record`].
    pub fn from_record(record: &str) -> Option<Principal> {
        let value: serde_json::Value = serde_json::from_str(record).ok()?;
        let claims = AccessClaims {
            iss: String::new(),
            sub: String::new(),
            aud: String::new(),
            exp: 0,
            iat: 0,
            jti: String::new(),
            scope: value["scope"].as_str()?.to_string(),
            client_id: value["client_id"].as_str()?.to_string(),
            patient: value["patient"].as_str().map(str::to_string),
        };
        Some(Principal::from_claims(&claims))
    }

    /// Whether some scope grants `permission` on at least part of `resource_type` (its
    /// patient's compartment, or what a query restriction selects).
    pub fn reaches(&self, resource_type: &str, permission: Permission) -> bool {
        !matches!(self.visible(resource_type, permission, 0), Visible::Nothing)
    }

    /// The condition one scope puts on `resource_type` (`None` when it grants all of it),
    /// or `Err(())` when the scope grants none of it.
    fn scope_condition(
        &self,
        scope: &ResourceScope,
        resource_type: &str,
        depth: usize,
    ) -> Result<Option<Condition>, ()> {
        let mut parts: Vec<Condition> = Vec::new();
        if scope.context == Context::Patient && resource_type == "Subscription" {
            // Subscriptions are in no patient's compartment: a patient/ token reaches the
            // ones its client wrote (which deliver only its patient's data).
            let owner = owner_alias(depth);
            parts.push(Condition::plain(
                format!(
                    "{owner}.id IN (SELECT o.subscription_id FROM subscription_state o \
                     WHERE o.owner_client = ?)"
                ),
                vec![self.client_id.as_str().into()],
                Selectivity::Filter,
            ));
        } else if scope.context == Context::Patient && resource_type == "Device" {
            // Devices are in no patient's compartment in R4: a patient/ token reaches the
            // devices assigned to its patient (`Device.patient`), such as its own wearable.
            let patient = self.patient.as_deref().ok_or(())?;
            let assigned = condition_at(
                resource_type,
                "patient",
                &format!("Patient/{patient}"),
                depth,
            )
            .ok()
            .flatten()
            .ok_or(())?;
            parts.push(assigned);
        } else if scope.context == Context::Patient {
            let patient = self.patient.as_deref().ok_or(())?;
            let compartments = Compartments::get();
            if resource_type != "Patient"
                && compartments.params("Patient", resource_type).is_empty()
            {
                return Err(());
            }
            parts.push(
                compartments
                    .condition_at("Patient", patient, resource_type, depth)
                    .map_err(|_| ())?,
            );
        }
        if let Some(query) = &scope.query {
            for (name, value) in form_urlencoded::parse(query.as_bytes()) {
                // A restriction the server cannot evaluate for this type grants nothing.
                match condition_at(resource_type, &name, &value, depth) {
                    Ok(Some(condition)) => parts.push(condition),
                    Ok(None) => {}
                    Err(_) => return Err(()),
                }
            }
        }
        Ok(parts
            .into_iter()
            .reduce(|all, next| all.combine(next, " AND ")))
    }
}

impl Access for Principal {
    fn visible(&self, resource_type: &str, permission: Permission, depth: usize) -> Visible {
        let mut alternatives: Vec<Condition> = Vec::new();
        for scope in self
            .scopes
            .iter()
            .filter(|s| s.covers(resource_type, permission))
        {
            match self.scope_condition(scope, resource_type, depth) {
                Ok(None) => return Visible::All,
                Ok(Some(condition)) => alternatives.push(condition),
                Err(()) => {}
            }
        }
        match alternatives
            .into_iter()
            .reduce(|any, next| any.combine(next, " OR "))
        {
            Some(condition) => Visible::Where(condition),
            None => Visible::Nothing,
        }
    }

    fn limits(&self, resource_type: &str, permission: Permission) -> String {
        let mut limits: Vec<String> = Vec::new();
        for scope in self
            .scopes
            .iter()
            .filter(|s| s.covers(resource_type, permission))
        {
            let mut parts = Vec::new();
            if scope.context == Context::Patient {
                if let Some(patient) = &self.patient {
                    parts.push(format!("Patient/{patient}'s compartment"));
                }
            }
            if let Some(query) = &scope.query {
                parts.push(format!("resources matching {query}"));
            }
            if !parts.is_empty() {
                limits.push(parts.join(" and "));
            }
        }
        limits.sort();
        limits.dedup();
        match limits.is_empty() {
            true => format!("no scope granting {permission:?} on {resource_type}"),
            false => limits.join(" or "),
        }
    }

    fn record(&self) -> Option<(String, String)> {
        let scope = self
            .scopes
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(" ");
        let record = serde_json::json!({
            "client_id": self.client_id,
            "scope": scope,
            "patient": self.patient,
        });
        Some((self.client_id.clone(), record.to_string()))
    }

    fn sees_everything(&self, permission: Permission) -> bool {
        self.scopes.iter().any(|s| {
            s.context != Context::Patient
                && s.query.is_none()
                && s.resource_type.is_none()
                && s.permissions.contains(permission)
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
        // A patient/ scope grants part of a type: its patient's compartment.
        let patient = Principal::from_claims(&claims("patient/*.read", Some("p1")));
        assert!(!patient.may("Encounter", Permission::Read));
        assert!(patient.reaches("Encounter", Permission::Read));
        assert!(!patient.reaches("Location", Permission::Read));
        assert!(patient.reaches("Patient", Permission::Search));
        assert!(matches!(
            patient.visible("Observation", Permission::Search, 0),
            Visible::Where(_)
        ));
        let restricted =
            Principal::from_claims(&claims("system/Observation.rs?category=vital-signs", None));
        assert!(!restricted.may("Observation", Permission::Search));
        assert!(restricted.reaches("Observation", Permission::Search));
        assert!(!restricted.reaches("Observation", Permission::Create));
        assert!(Principal::from_claims(&claims("system/*.cruds", None)).may_do_anything());
        assert!(
            Principal::from_claims(&claims("system/*.rs system/*.cud", None)).may_do_anything()
        );
        assert!(!principal.may_do_anything());
    }
}
