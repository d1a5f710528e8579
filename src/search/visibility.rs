//! Which resources a caller may see or change, as SQL conditions on resource rows.
//!
//! Access is enforced where the data is read, not only at the door: a search applies the
//! caller's conditions to its matches, to every resource it includes, and to the
//! resources its chains and `_has` look at (else a match would reveal, by inference, a
//! resource the caller cannot see); a write checks the version it replaces and the one it
//! stores. The conditions come from the caller's scopes (see
//! [`crate::auth::principal::Principal`]): a `patient/` scope limits a type to its
//! patient's compartment, a query-restricted scope to the resources matching its query.

use std::sync::Arc;

use super::criteria::Condition;
use crate::auth::scopes::Permission;
use crate::error::FhirResult;

/// What of one resource type a caller may reach.
#[derive(Debug, Clone)]
pub enum Visible {
    /// Every resource of the type.
    All,
    /// None of them.
    Nothing,
    /// The resources matching the condition (on the row aliased for its depth).
    Where(Condition),
}

/// A caller's access, per resource type and kind of access.
pub trait Access: Send + Sync + std::fmt::Debug {
    /// The resources of `resource_type` the caller may reach for `permission`, as a
    /// condition on the `resources` row at `depth` (`r`, `r1`, … as in chains).
    fn visible(&self, resource_type: &str, permission: Permission, depth: usize) -> Visible;

    /// Whether every resource of every type is reachable for `permission`.
    fn sees_everything(&self, permission: Permission) -> bool;

    /// What limits the caller's `permission` on `resource_type`, in words for an error
    /// message (`Patient/p-42's compartment`, `category=vital-signs`).
    fn limits(&self, resource_type: &str, permission: Permission) -> String;

    /// The caller's client id and its access as a record to store with what it owns (a
    /// subscription delivers to its owner's access); `None` when there is nothing to keep.
    fn record(&self) -> Option<(String, String)> {
        None
    }
}

/// A caller's access for one kind of access; [`Sight::ALL`] when nothing limits it (no
/// authentication, or the server's own work).
#[derive(Clone, Copy)]
pub struct Sight<'a> {
    access: Option<&'a dyn Access>,
    pub permission: Permission,
}

impl<'a> Sight<'a> {
    pub const ALL: Sight<'static> = Sight {
        access: None,
        permission: Permission::Search,
    };

    pub fn new(access: Option<&'a dyn Access>, permission: Permission) -> Sight<'a> {
        Sight { access, permission }
    }

    pub fn of(access: &'a Option<Arc<dyn Access>>, permission: Permission) -> Sight<'a> {
        Sight {
            access: access.as_deref(),
            permission,
        }
    }

    /// The same caller for another kind of access.
    pub fn with(self, permission: Permission) -> Sight<'a> {
        Sight { permission, ..self }
    }

    /// What limits this sight of `resource_type`, in words.
    pub fn limits(&self, resource_type: &str) -> String {
        match self.access {
            None => "nothing".into(),
            Some(access) => access.limits(resource_type, self.permission),
        }
    }

    pub fn is_limited(&self) -> bool {
        self.access
            .is_some_and(|a| !a.sees_everything(self.permission))
    }

    /// What of `resource_type` is visible, on the row at `depth`.
    pub fn visible(&self, resource_type: &str, depth: usize) -> Visible {
        match self.access {
            None => Visible::All,
            Some(access) => access.visible(resource_type, self.permission, depth),
        }
    }

    /// The visibility of `resource_type` on the row `r` as SQL to append to a WHERE clause
    /// (` AND …`, empty when all is visible), or `None` when nothing is.
    pub fn filter(&self, resource_type: &str) -> Option<(String, Vec<sea_orm::Value>)> {
        match self.visible(resource_type, 0) {
            Visible::All => Some((String::new(), Vec::new())),
            Visible::Nothing => None,
            Visible::Where(condition) => {
                let sql = condition.probe.unwrap_or(condition.sql);
                Some((format!(" AND {sql}"), condition.values))
            }
        }
    }

    /// The types of `types` (every resource type when empty) of which something is
    /// visible, and the condition on the row `r` selecting what is visible of them (`None`
    /// when all of them is).
    pub fn over_types(&self, types: &[String]) -> (Vec<String>, Option<Condition>) {
        let all_types = crate::fhir::definitions::Definitions::get().resource_types();
        let types = if types.is_empty() { all_types } else { types };
        if !self.is_limited() {
            return (types.to_vec(), None);
        }
        let mut visible_types = Vec::new();
        let mut alternatives: Vec<String> = Vec::new();
        let mut values: Vec<sea_orm::Value> = Vec::new();
        let mut limited = false;
        for resource_type in types {
            match self.visible(resource_type, 0) {
                Visible::Nothing => limited = true,
                Visible::All => {
                    alternatives.push("r.resource_type = ?".into());
                    values.push(resource_type.as_str().into());
                    visible_types.push(resource_type.clone());
                }
                Visible::Where(condition) => {
                    limited = true;
                    alternatives.push(format!(
                        "(r.resource_type = ? AND {})",
                        condition.probe.as_deref().unwrap_or(&condition.sql)
                    ));
                    values.push(resource_type.as_str().into());
                    values.extend(condition.values);
                    visible_types.push(resource_type.clone());
                }
            }
        }
        if !limited {
            return (visible_types, None);
        }
        let sql = match alternatives.is_empty() {
            true => "1 = 0".to_string(),
            false => format!("({})", alternatives.join(" OR ")),
        };
        let condition = Condition::plain(sql, values, super::criteria::Selectivity::Filter);
        (visible_types, Some(condition))
    }

    /// Whether the current version of `resource_type/id` is visible (false when it does
    /// not exist or is deleted and visibility depends on its content).
    pub async fn sees(
        &self,
        conn: &impl sea_orm::ConnectionTrait,
        resource_type: &str,
        id: &str,
    ) -> FhirResult<bool> {
        let Some((filter, filter_values)) = self.filter(resource_type) else {
            return Ok(false);
        };
        if filter.is_empty() {
            return Ok(true);
        }
        let mut values: Vec<sea_orm::Value> = vec![resource_type.into(), id.into(), false.into()];
        values.extend(filter_values);
        let statement = crate::store::sql::statement(
            conn.get_database_backend(),
            &format!(
                "SELECT 1 AS seen FROM resources r WHERE r.resource_type = ? AND r.id = ? \
                 AND r.deleted = ?{filter}"
            ),
            values,
        );
        Ok(conn.query_one_raw(statement).await?.is_some())
    }
}

impl std::fmt::Debug for Sight<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sight")
            .field("limited", &self.access.is_some())
            .field("permission", &self.permission)
            .finish()
    }
}

/// Access to nothing at all.
#[derive(Debug)]
pub struct NoAccess;

impl Access for NoAccess {
    fn visible(&self, _: &str, _: Permission, _: usize) -> Visible {
        Visible::Nothing
    }

    fn sees_everything(&self, _: Permission) -> bool {
        false
    }

    fn limits(&self, _: &str, _: Permission) -> String {
        "no access".into()
    }
}
