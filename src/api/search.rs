//! Type-level search (`GET [type]?…`, `POST [type]/_search`): the criteria of
//! [`crate::search::criteria`] over the index, paged by id so that pages stay stable while
//! writes happen. Unknown parameters are ignored and reported (lenient, the default) or
//! refused with 400 under `Prefer: handling=strict`.

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use sea_orm::{ConnectionTrait, Value};
use serde_json::{json, Value as Json};

use super::extract::{BaseUrl, Prefer};
use super::respond::fhir_json;
use super::summary::{FormatParams, Summary};
use super::{check_type, AppState};
use crate::error::{FhirError, FhirResult};
use crate::fhir::outcome::{operation_outcome, Issue, IssueCode};
use crate::search::criteria::{condition, is_known};
use crate::search::include::{resolve as resolve_includes, IncludeSpec, MAX_INCLUDED};
use crate::search::sort::{page_query, parse_sort, Cursor, SortKey};
use crate::store::sql::statement;
use crate::store::time::instant;
use crate::store::versions::stored_from_row;

pub const DEFAULT_COUNT: u64 = 50;
pub const MAX_COUNT: u64 = 1000;

/// Search resources of one type.
#[utoipa::path(
    get, path = "/fhir/{type}", tag = "Search",
    params(
        ("type" = String, Path, description = "Resource type", example = "Observation"),
        ("_id" = Option<String>, Query, description = "Logical ids, comma-separated"),
        ("_lastUpdated" = Option<String>, Query, description = "Date with prefix, e.g. ge2024-03-01"),
        ("_count" = Option<u64>, Query, description = "Page size (default 50, at most 1000)"),
        ("_total" = Option<String>, Query, description = "none | estimate | accurate"),
        ("_sort" = Option<String>, Query, description = "Sort parameters, `-` for descending, e.g. -date,code"),
        ("_include" = Option<String>, Query, description = "Include referenced resources, e.g. Observation:subject (also :iterate, *)"),
        ("_revinclude" = Option<String>, Query, description = "Include resources referring to the matches, e.g. Observation:subject"),
        ("Prefer" = Option<String>, Header, description = "handling=strict: unknown parameters are errors"),
    ),
    responses(
        (status = 200, description = "searchset Bundle; any search parameter of the type may be used, e.g. Observation?code=http://loinc.org|8867-4&subject=Patient/1", content_type = "application/fhir+json"),
        (status = 400, description = "Malformed value, or unknown parameter under handling=strict", content_type = "application/fhir+json"),
    )
)]
pub async fn search_get(
    State(state): State<AppState>,
    Path(resource_type): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    base: BaseUrl,
) -> FhirResult<Response> {
    check_type(&resource_type)?;
    search(
        &state,
        &resource_type,
        query.unwrap_or_default(),
        &headers,
        &base,
    )
    .await
}

/// Search with the parameters in a form body (for long queries).
#[utoipa::path(
    post, path = "/fhir/{type}/_search", tag = "Search",
    params(("type" = String, Path, description = "Resource type", example = "Observation")),
    request_body(content = String, content_type = "application/x-www-form-urlencoded",
        example = "code=http://loinc.org|8867-4&_count=10"),
    responses((status = 200, description = "searchset Bundle", content_type = "application/fhir+json"))
)]
pub async fn search_post(
    State(state): State<AppState>,
    Path(resource_type): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    base: BaseUrl,
    body: Bytes,
) -> FhirResult<Response> {
    check_type(&resource_type)?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !body.is_empty() && !content_type.starts_with("application/x-www-form-urlencoded") {
        return Err(FhirError::not_supported(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "POST _search takes its parameters as application/x-www-form-urlencoded",
        ));
    }
    let form = String::from_utf8(body.to_vec())
        .map_err(|_| FhirError::bad_request("the form body is not UTF-8"))?;
    let combined = [query.unwrap_or_default(), form]
        .into_iter()
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("&");
    search(&state, &resource_type, combined, &headers, &base).await
}

async fn search(
    state: &AppState,
    resource_type: &str,
    query: String,
    headers: &HeaderMap,
    base: &BaseUrl,
) -> FhirResult<Response> {
    let strict = Prefer::from_headers(headers).strict;
    let format = FormatParams::parse(Some(&query))?;
    let mut used: Vec<(String, String)> = Vec::new();
    let mut ignored: Vec<String> = Vec::new();
    let mut count = DEFAULT_COUNT;
    let mut cursor: Option<String> = None;
    let mut total_wanted = false;
    let mut includes: Vec<IncludeSpec> = Vec::new();
    let mut sort_keys: Vec<SortKey> = Vec::new();
    let mut filter_sql = String::new();
    let mut filter_values: Vec<Value> = Vec::new();
    for (name, value) in form_urlencoded::parse(query.as_bytes()).into_owned() {
        if !is_known(resource_type, &name) {
            if strict {
                return Err(FhirError::bad_request(format!(
                    "{name:?} is not a search parameter of {resource_type} (Prefer: handling=strict)"
                )));
            }
            ignored.push(name);
            continue;
        }
        match name.as_str() {
            "_count" => {
                count = value.parse::<u64>().map_err(|_| {
                    FhirError::bad_request(format!("_count must be a whole number, not {value:?}"))
                })?;
                count = count.min(MAX_COUNT);
            }
            "_cursor" => cursor = Some(value.clone()),
            "_total" => total_wanted = matches!(value.as_str(), "accurate" | "estimate"),
            _ if name.starts_with("_include") || name.starts_with("_revinclude") => {
                includes.push(IncludeSpec::parse(&name, &value)?);
            }
            "_sort" => sort_keys = parse_sort(resource_type, &value)?,
            "_contained" | "_containedType" => {
                // Not supported yet: results keep their default order (by id).
                if strict {
                    return Err(FhirError::not_supported(
                        StatusCode::BAD_REQUEST,
                        format!("{name} is not supported yet (Prefer: handling=strict)"),
                    ));
                }
                ignored.push(name);
                continue;
            }
            _ => {
                if let Some(condition) = condition(resource_type, &name, &value)? {
                    filter_sql.push_str(" AND ");
                    filter_sql.push_str(&condition.sql);
                    filter_values.extend(condition.values);
                }
            }
        }
        if name != "_cursor" {
            used.push((name, value));
        }
    }
    let cursor = cursor
        .as_deref()
        .map(|text| Cursor::decode(text, &sort_keys))
        .transpose()?;
    let conn = state.store.connection();
    let backend = conn.get_database_backend();
    let want_total = total_wanted || format.summary == Summary::Count;
    let total = if want_total {
        let count_sql = format!(
            "SELECT COUNT(*) AS n FROM resources r WHERE r.resource_type = ? AND r.deleted = ?{filter_sql}"
        );
        let mut count_values: Vec<Value> = vec![resource_type.into(), false.into()];
        count_values.extend(filter_values.iter().cloned());
        let row = conn
            .query_one_raw(statement(backend, &count_sql, count_values))
            .await?;
        Some(match row {
            Some(row) => row.try_get::<i64>("", "n")?,
            None => 0,
        })
    } else {
        None
    };
    let mut entries = Vec::new();
    let mut next_cursor = None;
    let mut match_count = 0;
    let mut warnings: Vec<Issue> = Vec::new();
    if format.summary != Summary::Count && count > 0 {
        let from_where =
            format!("FROM resources r WHERE r.resource_type = ? AND r.deleted = ?{filter_sql}");
        let mut where_values: Vec<Value> = vec![resource_type.into(), false.into()];
        where_values.extend(filter_values.iter().cloned());
        let (sql, values) = page_query(
            &from_where,
            &where_values,
            &sort_keys,
            cursor.as_ref(),
            count + 1,
        );
        let rows = conn.query_all_raw(statement(backend, &sql, values)).await?;
        let mut matched = Vec::new();
        for row in rows.iter().take(count as usize) {
            matched.push(stored_from_row(backend, row)?);
        }
        if rows.len() as u64 > count {
            if let Some(last) = rows.get(count as usize - 1) {
                next_cursor = Some(Cursor::after_row(last, &sort_keys)?.encode());
            }
        }
        match_count = matched.len();
        let keys: Vec<(String, String)> = matched
            .iter()
            .map(|m| (m.resource_type.clone(), m.id.clone()))
            .collect();
        let (included, truncated) = if includes.is_empty() {
            (Vec::new(), false)
        } else {
            resolve_includes(conn, &includes, &keys).await?
        };
        if truncated {
            warnings.push(Issue::warning(
                IssueCode::TooCostly,
                format!(
                    "only the first {MAX_INCLUDED} included resources are returned; narrow the search or lower _count"
                ),
            ));
        }
        let modes = matched
            .iter()
            .map(|m| (m, "match"))
            .chain(included.iter().map(|i| (i, "include")));
        for (stored, mode) in modes {
            if let Some(content) = &stored.content {
                entries.push(json!({
                    "fullUrl": format!("{}/{}/{}", base.0, stored.resource_type, stored.id),
                    "resource": format.apply(content),
                    "search": {"mode": mode}
                }));
            }
        }
    }
    let total = total.or_else(|| {
        (cursor.is_none() && next_cursor.is_none() && format.summary != Summary::Count)
            .then_some(match_count as i64)
    });
    let link = |extra: Option<&str>| {
        let mut serializer = form_urlencoded::Serializer::new(String::new());
        for (name, value) in &used {
            serializer.append_pair(name, value);
        }
        if let Some(after) = extra {
            serializer.append_pair("_cursor", after);
        }
        let query = serializer.finish();
        if query.is_empty() {
            format!("{}/{resource_type}", base.0)
        } else {
            format!("{}/{resource_type}?{query}", base.0)
        }
    };
    let mut links = vec![
        json!({"relation": "self", "url": link(cursor.as_ref().map(Cursor::encode).as_deref())}),
    ];
    if let Some(after) = &next_cursor {
        links.push(json!({"relation": "next", "url": link(Some(after))}));
    }
    if !ignored.is_empty() {
        warnings.push(Issue::warning(
            IssueCode::NotSupported,
            format!(
                "ignored search parameters: {} (unknown or not supported yet; send Prefer: handling=strict to make this an error)",
                ignored.join(", ")
            ),
        ));
    }
    if !warnings.is_empty() {
        entries.push(json!({
            "resource": operation_outcome(&warnings),
            "search": {"mode": "outcome"}
        }));
    }
    let mut bundle = json!({
        "resourceType": "Bundle",
        "id": uuid::Uuid::new_v4().to_string(),
        "meta": {"lastUpdated": instant(crate::store::time::now_micros())},
        "type": "searchset",
    });
    if let Some(total) = total {
        bundle["total"] = json!(total);
    }
    bundle["link"] = Json::Array(links);
    if !entries.is_empty() {
        bundle["entry"] = Json::Array(entries);
    }
    Ok(fhir_json(StatusCode::OK, &bundle))
}
