//! `$reindex`: rewrites the search index of stored resources, so a SearchParameter added
//! after they were written finds them. Runs in pages through the writer, each page one
//! transaction shared with ordinary writes.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use sea_orm::{ConnectionTrait, Value};
use serde_json::json;

use super::respond::fhir_json;
use super::{check_type, AppState};
use crate::error::FhirResult;
use crate::store::index::reindex_many;
use crate::store::sql::statement;
use crate::store::versions::stored_from_row;

/// Resources reindexed per transaction.
const PAGE: u64 = 200;

/// Reindex every resource.
#[utoipa::path(
    post, path = "/fhir/$reindex", tag = "Operations",
    responses((status = 200, description = "Parameters with `count`, the number of resources reindexed", content_type = "application/fhir+json"))
)]
pub async fn reindex_all(State(state): State<AppState>) -> FhirResult<Response> {
    reindex(&state, None).await
}

/// Reindex the resources of one type.
#[utoipa::path(
    post, path = "/fhir/{type}/$reindex", tag = "Operations",
    params(("type" = String, Path, description = "Resource type", example = "Observation")),
    responses((status = 200, description = "Parameters with `count`, the number of resources reindexed", content_type = "application/fhir+json"))
)]
pub async fn reindex_type(
    State(state): State<AppState>,
    Path(resource_type): Path<String>,
) -> FhirResult<Response> {
    check_type(&resource_type)?;
    reindex(&state, Some(resource_type)).await
}

async fn reindex(state: &AppState, resource_type: Option<String>) -> FhirResult<Response> {
    let conn = state.store.connection();
    let backend = conn.get_database_backend();
    let mut after: Option<(String, String)> = None;
    let mut count: u64 = 0;
    loop {
        let mut sql = String::from(
            "SELECT resource_type, id, version_id, last_updated, deleted, content FROM resources \
             WHERE deleted = ?",
        );
        let mut values: Vec<Value> = vec![false.into()];
        if let Some(t) = &resource_type {
            sql.push_str(" AND resource_type = ?");
            values.push(t.as_str().into());
        }
        if let Some((t, id)) = &after {
            sql.push_str(" AND (resource_type > ? OR (resource_type = ? AND id > ?))");
            values.push(t.as_str().into());
            values.push(t.as_str().into());
            values.push(id.as_str().into());
        }
        sql.push_str(" ORDER BY resource_type, id LIMIT ?");
        values.push((PAGE as i64).into());
        let rows = conn.query_all_raw(statement(backend, &sql, values)).await?;
        if rows.is_empty() {
            break;
        }
        let page = rows
            .iter()
            .map(|row| stored_from_row(backend, row))
            .collect::<FhirResult<Vec<_>>>()?;
        after = page.last().map(|r| (r.resource_type.clone(), r.id.clone()));
        count += page.len() as u64;
        state
            .store
            .writer()
            .write(move |txn| Box::pin(async move { reindex_many(txn, &page).await }))
            .await?;
    }
    Ok(fhir_json(
        StatusCode::OK,
        &json!({
            "resourceType": "Parameters",
            "parameter": [{"name": "count", "valueInteger": count}]
        }),
    ))
}
