//! Custom SearchParameter resources: the active ones stored in the database join the
//! official R4 parameters in the registry that search and indexing use. The registry is
//! reloaded at start and after every commit that wrote a SearchParameter; resources
//! stored before a new parameter existed are indexed for it by `$reindex`.

use sea_orm::ConnectionTrait;
use serde_json::Value as Json;

use super::sql::statement;
use super::versions::stored_from_row;
use crate::error::FhirResult;
use crate::search::params::SearchParams;

/// Whether a SearchParameter resource takes part in search (drafts and retired ones do
/// not; the official examples, for instance, are all drafts).
pub fn is_active(resource: &Json) -> bool {
    resource.get("status").and_then(Json::as_str) == Some("active")
}

/// Installs the official parameters plus the active stored ones. With `only_if_custom`,
/// nothing changes when the database holds no active SearchParameter. Returns how many
/// custom parameters are in use; one that cannot be used is skipped with a warning.
pub async fn reload(conn: &impl ConnectionTrait, only_if_custom: bool) -> FhirResult<usize> {
    let backend = conn.get_database_backend();
    let rows = conn
        .query_all_raw(statement(
            backend,
            "SELECT resource_type, id, version_id, last_updated, deleted, content FROM resources \
             WHERE resource_type = ? AND deleted = ?",
            vec!["SearchParameter".into(), false.into()],
        ))
        .await?;
    let mut custom = Vec::new();
    for row in &rows {
        let stored = stored_from_row(backend, row)?;
        let Some(content) = stored.content else {
            continue;
        };
        if !is_active(&content) {
            continue;
        }
        match SearchParams::from_resources(std::slice::from_ref(&content)) {
            Ok(_) => custom.push(content),
            Err(err) => tracing::warn!(
                "SearchParameter/{} is not used for search: {err}",
                stored.id
            ),
        }
    }
    if custom.is_empty() && only_if_custom {
        return Ok(0);
    }
    match SearchParams::with_custom(&custom) {
        Ok(registry) => SearchParams::install(registry),
        Err(err) => tracing::warn!("custom search parameters are not used: {err}"),
    }
    Ok(custom.len())
}
