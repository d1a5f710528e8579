//! History at instance, type and system level, newest first, with `_since`, `_count` and
//! stable paging: the next page continues below the last version seen, so versions
//! written meanwhile neither shift nor repeat entries.

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{json, Value as Json};

use super::extract::{BaseUrl, Caller};
use super::respond::fhir_json;
use super::summary::FormatParams;
use super::{check_type, AppState};
use crate::auth::scopes::Permission;
use crate::error::{FhirError, FhirResult};
use crate::fhir::definitions::Definitions;
use crate::fhir::resource::check_id;
use crate::search::visibility::{Sight, Visible};
use crate::store::time::{instant, parse_fhir_instant};
use crate::store::versions::Method;
use crate::store::{HistoryPage, HistoryScope};
use sea_orm::Value;

pub const DEFAULT_COUNT: u64 = 50;
pub const MAX_COUNT: u64 = 1000;

/// History of one resource.
#[utoipa::path(
    get, path = "/fhir/{type}/{id}/_history", tag = "History",
    params(
        ("type" = String, Path, description = "Resource type", example = "Observation"),
        ("id" = String, Path, description = "Logical id"),
        HistoryQuery,
    ),
    responses((status = 200, description = "history Bundle, newest first", content_type = "application/fhir+json"),
              (status = 404, description = "Unknown resource", content_type = "application/fhir+json"))
)]
pub async fn instance_history(
    State(state): State<AppState>,
    Path((resource_type, id)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    base: BaseUrl,
    caller: Caller,
) -> FhirResult<Response> {
    check_type(&resource_type)?;
    check_id(&id)?;
    super::crud::check_sees(&state, &caller, &resource_type, &id).await?;
    if state.store.read(&resource_type, &id).await?.is_none() {
        return Err(FhirError::not_found(format!(
            "{resource_type}/{id} is not known to this server"
        )));
    }
    let path = format!("{resource_type}/{id}/_history");
    history(
        state,
        HistoryScope::Instance(resource_type, id),
        query,
        base,
        &path,
        None,
    )
    .await
}

/// History of all resources of one type.
#[utoipa::path(
    get, path = "/fhir/{type}/_history", tag = "History",
    params(("type" = String, Path, description = "Resource type", example = "Observation"), HistoryQuery),
    responses((status = 200, description = "history Bundle, newest first", content_type = "application/fhir+json"))
)]
pub async fn type_history(
    State(state): State<AppState>,
    Path(resource_type): Path<String>,
    RawQuery(query): RawQuery,
    base: BaseUrl,
    caller: Caller,
) -> FhirResult<Response> {
    check_type(&resource_type)?;
    let path = format!("{resource_type}/_history");
    let visible = visible_versions(
        caller.sight(Permission::Search),
        std::slice::from_ref(&resource_type),
    );
    history(
        state,
        HistoryScope::Type(resource_type),
        query,
        base,
        &path,
        visible,
    )
    .await
}

/// History of the whole server.
#[utoipa::path(
    get, path = "/fhir/_history", tag = "History",
    params(HistoryQuery),
    responses((status = 200, description = "history Bundle, newest first", content_type = "application/fhir+json"))
)]
pub async fn system_history(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    base: BaseUrl,
    caller: Caller,
) -> FhirResult<Response> {
    let sight = caller.sight(Permission::Search);
    let visible = match sight.is_limited() {
        true => visible_versions(sight, Definitions::get().resource_types()),
        false => None,
    };
    history(
        state,
        HistoryScope::System,
        query,
        base,
        "_history",
        visible,
    )
    .await
}

/// The versions of `types` a caller with limited access sees, as a condition on
/// `resource_versions` rows (`None`: all of them): every version of a type it sees in
/// full (deletions too), and the versions of a resource it sees part of the type of when
/// the current version is within its access (an old version is judged by the current
/// one; a deleted resource of such a type is not shown).
fn visible_versions(sight: Sight<'_>, types: &[String]) -> Option<(String, Vec<Value>)> {
    if !sight.is_limited() {
        return None;
    }
    let mut alternatives = Vec::new();
    let mut values: Vec<Value> = Vec::new();
    for resource_type in types {
        match sight.visible(resource_type, 0) {
            Visible::Nothing => {}
            Visible::All => {
                alternatives.push("resource_versions.resource_type = ?".to_string());
                values.push(resource_type.as_str().into());
            }
            Visible::Where(condition) => {
                alternatives.push(format!(
                    "(resource_versions.resource_type = ? AND EXISTS (SELECT 1 FROM resources r \
                     WHERE r.resource_type = resource_versions.resource_type \
                     AND r.id = resource_versions.id AND r.deleted = ? AND {}))",
                    condition.probe.as_deref().unwrap_or(&condition.sql)
                ));
                values.push(resource_type.as_str().into());
                values.push(false.into());
                values.extend(condition.values);
            }
        }
    }
    Some(match alternatives.is_empty() {
        true => ("1 = 0".to_string(), values),
        false => (format!("({})", alternatives.join(" OR ")), values),
    })
}

/// The query parameters of a history interaction (documentation only).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct HistoryQuery {
    /// Only versions written at or after this instant, e.g. 2024-03-01T00:00:00Z.
    #[param(rename = "_since")]
    since: Option<String>,
    /// Entries per page (default 50, at most 1000).
    #[param(rename = "_count")]
    count: Option<u64>,
    /// Paging cursor from a `next` link.
    #[param(rename = "_cursor")]
    cursor: Option<i64>,
}

struct HistoryParams {
    since: Option<i64>,
    since_text: Option<String>,
    count: u64,
    cursor: Option<i64>,
}

fn parse_params(query: Option<&str>) -> FhirResult<HistoryParams> {
    let mut params = HistoryParams {
        since: None,
        since_text: None,
        count: DEFAULT_COUNT,
        cursor: None,
    };
    for (name, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match name.as_ref() {
            "_since" => {
                params.since = Some(parse_fhir_instant(&value).ok_or_else(|| {
                    FhirError::bad_request(format!(
                        "_since must be an instant such as 2024-03-01T10:00:00Z, not {value:?}"
                    ))
                })?);
                params.since_text = Some(value.into_owned());
            }
            "_count" => {
                let count: u64 = value.parse().map_err(|_| {
                    FhirError::bad_request(format!(
                        "_count must be a non-negative whole number, not {value:?}"
                    ))
                })?;
                params.count = count.min(MAX_COUNT);
            }
            "_cursor" => {
                params.cursor = Some(value.parse().map_err(|_| {
                    FhirError::bad_request(format!("invalid paging cursor {value:?}"))
                })?);
            }
            "_at" => {
                return Err(FhirError::not_supported(
                    StatusCode::BAD_REQUEST,
                    "_at is not supported on history; use _since",
                ))
            }
            _ => {}
        }
    }
    Ok(params)
}

async fn history(
    state: AppState,
    scope: HistoryScope,
    query: Option<String>,
    base: BaseUrl,
    path: &str,
    visible: Option<(String, Vec<Value>)>,
) -> FhirResult<Response> {
    let params = parse_params(query.as_deref())?;
    let format = FormatParams::parse(query.as_deref())?;
    let page = state
        .store
        .history(&scope, params.since, params.count, params.cursor, visible)
        .await?;
    Ok(fhir_json(
        StatusCode::OK,
        &history_bundle(&page, &params, &format, &base, path),
    ))
}

fn history_bundle(
    page: &HistoryPage,
    params: &HistoryParams,
    format: &FormatParams,
    base: &BaseUrl,
    path: &str,
) -> Json {
    let link_to = |cursor: Option<i64>| {
        let mut query = form_urlencoded::Serializer::new(String::new());
        query.append_pair("_count", &params.count.to_string());
        if let Some(since) = &params.since_text {
            query.append_pair("_since", since);
        }
        if let Some(cursor) = cursor {
            query.append_pair("_cursor", &cursor.to_string());
        }
        format!("{}/{}?{}", base.0, path, query.finish())
    };
    let mut links = vec![json!({"relation": "self", "url": link_to(params.cursor)})];
    if let Some(next) = page.next_before_seq {
        links.push(json!({"relation": "next", "url": link_to(Some(next))}));
    }
    let entries: Vec<Json> = page
        .entries
        .iter()
        .map(|entry| {
            let stored = &entry.resource;
            let url = format!("{}/{}", stored.resource_type, stored.id);
            let mut item = json!({ "fullUrl": format!("{}/{}", base.0, url) });
            if let Some(content) = &stored.content {
                item["resource"] = format.apply(content);
            }
            item["request"] = json!({
                "method": entry.method.as_str(),
                "url": if entry.method == Method::Post { stored.resource_type.clone() } else { url.clone() },
            });
            item["response"] = json!({
                "status": match entry.method {
                    Method::Post => "201 Created",
                    Method::Delete => "204 No Content",
                    _ => "200 OK",
                },
                "etag": stored.etag(),
                "lastModified": instant(stored.last_updated),
            });
            item
        })
        .collect();
    let mut bundle = json!({
        "resourceType": "Bundle",
        "id": uuid::Uuid::new_v4().to_string(),
        "meta": {"lastUpdated": instant(crate::store::time::now_micros())},
        "type": "history",
        "link": links,
    });
    // FHIR JSON has no empty arrays: an empty page has no `entry` at all.
    if !entries.is_empty() {
        bundle["entry"] = Json::Array(entries);
    }
    bundle
}
