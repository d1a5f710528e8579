//! Finding the resources that conditional interactions (`If-None-Exist`, conditional
//! update/delete, conditional references) refer to.

use sea_orm::ConnectionTrait;

use super::sql::statement;
use crate::error::{FhirError, FhirResult};
use crate::search::criteria::{condition_seen, conjunction};
use crate::search::visibility::{Sight, Visible};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Match {
    pub id: String,
    pub version_id: i64,
}

/// The current, non-deleted resources of `resource_type` matching `criteria`, a search
/// query string such as `identifier=http://acme.org/mrn|123` (a leading `?` or
/// `Type?` is allowed).
/// Only what `sight` sees is found: a caller with limited access matches (and so creates,
/// updates or deletes conditionally) as if it ran the search itself; a caller that may
/// not search the type at all is refused (403).
pub async fn find_matches(
    conn: &impl ConnectionTrait,
    resource_type: &str,
    criteria: &str,
    sight: Sight<'_>,
) -> FhirResult<Vec<Match>> {
    let query = criteria.split_once('?').map(|(_, q)| q).unwrap_or(criteria);
    let params: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    if params.is_empty() {
        return Err(FhirError::bad_request(format!(
            "the conditional criteria {criteria:?} are empty; give search parameters such as identifier=system|value"
        )));
    }
    let backend = conn.get_database_backend();
    let mut sql = String::from(
        "SELECT r.id, r.version_id FROM resources r WHERE r.resource_type = ? AND r.deleted = ?",
    );
    let mut values: Vec<sea_orm::Value> = vec![resource_type.into(), false.into()];
    let mut conditions = Vec::new();
    for (name, value) in &params {
        conditions.extend(condition_seen(resource_type, name, value, sight)?);
    }
    match sight.visible(resource_type, 0) {
        Visible::All => {}
        Visible::Where(visible) => conditions.push(visible),
        // Matching nothing would make a conditional create a duplicate every time: a
        // conditional interaction needs the right to search the type, as SMART says.
        Visible::Nothing => {
            return Err(FhirError::new(
                axum::http::StatusCode::FORBIDDEN,
                crate::fhir::outcome::IssueCode::Forbidden,
                format!(
                    "the conditional criteria {criteria:?} need search access to {resource_type}, \
                     which the token does not grant (add the scope's s, e.g. \
                     system/{resource_type}.crus)"
                ),
            ))
        }
    }
    let (filter_sql, filter_values) = conjunction(conditions);
    sql.push_str(&filter_sql);
    values.extend(filter_values);
    let rows = conn.query_all_raw(statement(backend, &sql, values)).await?;
    rows.iter()
        .map(|row| {
            Ok(Match {
                id: row.try_get("", "id")?,
                version_id: row.try_get("", "version_id")?,
            })
        })
        .collect()
}
