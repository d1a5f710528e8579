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

use super::extract::Caller;
use super::extract::{BaseUrl, Prefer};
use super::respond::fhir_json;
use super::summary::{FormatParams, Summary};
use super::{check_type, AppState};
use crate::auth::scopes::Permission;
use crate::error::{FhirError, FhirResult};
use crate::fhir::outcome::{operation_outcome, Issue, IssueCode};
use crate::search::compartment::Compartments;
use crate::search::criteria::{
    condition_seen, conjunction, is_known, rank_by_entries, rows_of_type, Condition, Selectivity,
    RESULT_PARAMETERS,
};
use crate::search::include::{
    fetch_current, resolve as resolve_includes, IncludeSpec, MAX_INCLUDED,
};
use crate::search::sort::{page_query, parse_sort, Cursor, SortKey};
use crate::search::visibility::{Sight, Visible};
use crate::store::sql::statement;
use crate::store::time::instant;

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
    caller: Caller,
) -> FhirResult<Response> {
    check_type(&resource_type)?;
    let scope = Scope::Type(resource_type);
    let sight = caller.sight(Permission::Search);
    search(
        &state,
        &scope,
        query.unwrap_or_default(),
        &headers,
        &base,
        sight,
    )
    .await
}

/// Search the resources in a compartment, e.g. every Observation of one patient.
#[utoipa::path(
    get, path = "/fhir/{type}/{id}/{target}", tag = "Search",
    params(
        ("type" = String, Path, description = "Compartment type: Patient, Encounter, RelatedPerson, Practitioner or Device", example = "Patient"),
        ("id" = String, Path, description = "Id of the compartment's resource"),
        ("target" = String, Path, description = "Resource type to search in the compartment", example = "Observation"),
        ("_count" = Option<u64>, Query, description = "Page size"),
    ),
    responses(
        (status = 200, description = "searchset Bundle of the matching resources in the compartment", content_type = "application/fhir+json"),
        (status = 404, description = "Not a compartment, or a type never in it", content_type = "application/fhir+json"),
    )
)]
pub async fn search_compartment(
    State(state): State<AppState>,
    Path((compartment, id, resource_type)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    base: BaseUrl,
    caller: Caller,
) -> FhirResult<Response> {
    check_type(&compartment)?;
    check_type(&resource_type)?;
    crate::fhir::resource::check_id(&id)?;
    let scope = Scope::Compartment {
        compartment,
        id,
        resource_type,
    };
    let sight = caller.sight(Permission::Search);
    search(
        &state,
        &scope,
        query.unwrap_or_default(),
        &headers,
        &base,
        sight,
    )
    .await
}

/// Search across resource types (`_type=Observation,Device`; all types when absent, with
/// `_id` and `_lastUpdated` only).
#[utoipa::path(
    get, path = "/fhir", tag = "Search",
    params(
        ("_type" = Option<String>, Query, description = "Comma-separated resource types to search"),
        ("_lastUpdated" = Option<String>, Query, description = "Date with prefix, e.g. ge2024-03-01"),
        ("_count" = Option<u64>, Query, description = "Page size"),
    ),
    responses(
        (status = 200, description = "searchset Bundle", content_type = "application/fhir+json"),
        (status = 400, description = "Unknown type, or a parameter that needs _type", content_type = "application/fhir+json"),
    )
)]
pub async fn search_system(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    base: BaseUrl,
    caller: Caller,
) -> FhirResult<Response> {
    let query = query.unwrap_or_default();
    let mut types = Vec::new();
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        if name == "_type" {
            for resource_type in value.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                if !crate::fhir::definitions::Definitions::get().is_resource_type(resource_type) {
                    return Err(FhirError::bad_request(format!(
                        "_type: {resource_type:?} is not a resource type"
                    )));
                }
                if !types.iter().any(|t| t == resource_type) {
                    types.push(resource_type.to_string());
                }
            }
        }
    }
    let sight = caller.sight(Permission::Search);
    search(&state, &Scope::System(types), query, &headers, &base, sight).await
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
    caller: Caller,
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
    let scope = Scope::Type(resource_type);
    let sight = caller.sight(Permission::Search);
    search(&state, &scope, combined, &headers, &base, sight).await
}

/// What a search runs over.
pub enum Scope {
    /// `GET [type]?…`
    Type(String),
    /// `GET [compartment]/[id]/[type]?…`, e.g. `Patient/123/Observation`.
    Compartment {
        compartment: String,
        id: String,
        resource_type: String,
    },
    /// `GET [base]?_type=…`: the listed types, or all when none is listed.
    System(Vec<String>),
}

impl Scope {
    /// The types whose search parameters apply (several only for system search).
    fn types(&self) -> Vec<&str> {
        match self {
            Scope::Type(t)
            | Scope::Compartment {
                resource_type: t, ..
            } => vec![t.as_str()],
            Scope::System(types) => types.iter().map(String::as_str).collect(),
        }
    }

    fn path(&self, base: &BaseUrl) -> String {
        match self {
            Scope::Type(t) => format!("{}/{t}", base.0),
            Scope::Compartment {
                compartment,
                id,
                resource_type,
            } => format!("{}/{compartment}/{id}/{resource_type}", base.0),
            Scope::System(_) => base.0.clone(),
        }
    }

    /// The condition selecting the scope's current resources, on the row `r`, and the
    /// compartment membership, a condition among the search's own (it may drive it).
    fn condition(&self) -> FhirResult<(String, Vec<Value>, Option<Condition>)> {
        let mut values: Vec<Value> = vec![false.into()];
        let mut member = None;
        let sql = match self {
            Scope::Type(t) => {
                values.push(t.as_str().into());
                "r.deleted = ? AND r.resource_type = ?".to_string()
            }
            Scope::Compartment {
                compartment,
                id,
                resource_type,
            } => {
                member = Some(Compartments::get().condition(compartment, id, resource_type)?);
                values.push(resource_type.as_str().into());
                "r.deleted = ? AND r.resource_type = ?".to_string()
            }
            Scope::System(types) if types.is_empty() => "r.deleted = ?".to_string(),
            Scope::System(types) => {
                values.extend(types.iter().map(|t| Value::from(t.as_str())));
                format!(
                    "r.deleted = ? AND r.resource_type IN ({})",
                    vec!["?"; types.len()].join(", ")
                )
            }
        };
        Ok((sql, values, member))
    }
}

/// The condition of one parameter over every type of the scope: for several types, the
/// resource must match as its own type.
fn scope_condition(
    types: &[&str],
    name: &str,
    value: &str,
    sight: Sight<'_>,
) -> FhirResult<Option<Condition>> {
    if let [only] = types {
        return condition_seen(only, name, value, sight);
    }
    let code = name.split([':', '.']).next().unwrap_or(name);
    if RESULT_PARAMETERS.contains(&code) {
        return Ok(None);
    }
    if types.is_empty() && !matches!(code, "_id" | "_lastUpdated") {
        return Err(FhirError::bad_request(format!(
            "searching all types by {name} needs _type naming the types to search"
        )));
    }
    if types.is_empty() {
        return condition_seen("Resource", name, value, sight);
    }
    let mut alternatives = Vec::new();
    let mut probes = Vec::new();
    let mut values = Vec::new();
    let mut selectivity = Selectivity::Single;
    for resource_type in types {
        if let Some(inner) = condition_seen(resource_type, name, value, sight)? {
            alternatives.push(format!("(r.resource_type = ? AND {})", inner.sql));
            probes.push(format!(
                "(r.resource_type = ? AND {})",
                inner.probe.as_deref().unwrap_or(&inner.sql)
            ));
            values.push(Value::from(*resource_type));
            values.extend(inner.values);
            selectivity = selectivity.min(inner.selectivity);
        } else {
            return Ok(None);
        }
    }
    Ok(Some(Condition {
        sql: format!("({})", alternatives.join(" OR ")),
        values,
        probe: Some(format!("({})", probes.join(" OR "))),
        selectivity,
        source: None,
        reads_row: false,
    }))
}

async fn search(
    state: &AppState,
    scope: &Scope,
    query: String,
    headers: &HeaderMap,
    base: &BaseUrl,
    sight: Sight<'_>,
) -> FhirResult<Response> {
    // A caller limited to some types searches the types it can see; the conditions
    // selecting what it sees of them are among the search's own.
    let (visible_types, visible) = match scope {
        Scope::System(types) => sight.over_types(types),
        _ => {
            let resource_type = scope.types()[0].to_string();
            let visible = match sight.visible(&resource_type, 0) {
                Visible::All => None,
                Visible::Where(condition) => Some(condition),
                Visible::Nothing => Some(Condition::plain(
                    "1 = 0".into(),
                    Vec::new(),
                    Selectivity::Filter,
                )),
            };
            (vec![resource_type], visible)
        }
    };
    let limited_scope;
    let scope = match scope {
        Scope::System(types) if types.is_empty() && visible.is_some() => {
            limited_scope = Scope::System(visible_types);
            &limited_scope
        }
        _ => scope,
    };
    let types = scope.types();
    // Messages and sort keys speak of the one type searched, or of resources in general.
    let resource_type = match types.as_slice() {
        [only] => *only,
        _ => "Resource",
    };
    let strict = Prefer::from_headers(headers).strict;
    let format = FormatParams::parse(Some(&query))?;
    let mut used: Vec<(String, String)> = Vec::new();
    let mut ignored: Vec<String> = Vec::new();
    let mut count = DEFAULT_COUNT;
    let mut cursor: Option<String> = None;
    let mut total_wanted = false;
    let mut includes: Vec<IncludeSpec> = Vec::new();
    let mut sort_keys: Vec<SortKey> = Vec::new();
    let mut conditions: Vec<Condition> = Vec::new();
    for (name, value) in form_urlencoded::parse(query.as_bytes()).into_owned() {
        if name == "_type" {
            used.push((name, value));
            continue;
        }
        let known = if types.is_empty() {
            is_known("Resource", &name)
                || name.starts_with("_id")
                || name.starts_with("_lastUpdated")
        } else {
            types.iter().all(|t| is_known(t, &name))
        };
        if !known {
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
                if let Some(condition) = scope_condition(&types, &name, &value, sight)? {
                    conditions.push(condition);
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
    let (scope_sql, scope_values, member) = scope.condition()?;
    conditions.extend(member);
    conditions.extend(visible);
    rank_by_entries(conn, &mut conditions).await?;
    let (from_where, where_values) = match scope {
        Scope::System(_) => {
            let (filter_sql, filter_values) = conjunction(conditions);
            let mut values = scope_values;
            values.extend(filter_values);
            (
                format!("FROM resources r WHERE {scope_sql}{filter_sql}"),
                values,
            )
        }
        _ => rows_of_type(
            (&scope_sql, scope_values),
            conditions,
            sort_keys.iter().any(SortKey::reads_row),
        ),
    };
    let total = if want_total {
        let count_sql = format!("SELECT COUNT(*) AS n {from_where}");
        let row = conn
            .query_one_raw(statement(backend, &count_sql, where_values.clone()))
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
    let mut previous_cursor = None;
    let mut match_count = 0;
    let mut warnings: Vec<Issue> = Vec::new();
    if format.summary != Summary::Count && count > 0 {
        let (sql, values) = page_query(
            &from_where,
            &where_values,
            &sort_keys,
            cursor.as_ref(),
            count + 1,
        );
        let rows = conn.query_all_raw(statement(backend, &sql, values)).await?;
        let more = rows.len() as u64 > count;
        let mut page: Vec<_> = rows.iter().take(count as usize).collect();
        let backward = cursor.as_ref().is_some_and(|c| c.backward);
        if backward {
            // Read from the end of the previous rows: back into page order.
            page.reverse();
        }
        let mut keys: Vec<(String, String)> = Vec::new();
        for row in &page {
            keys.push((row.try_get("", "resource_type")?, row.try_get("", "id")?));
        }
        // Next: more rows after this page (there always are after a page reached going
        // back). Previous: more rows before it (some were before a page reached going
        // forward).
        if let (Some(first), Some(last)) = (page.first(), page.last()) {
            if more || backward {
                next_cursor = Some(Cursor::after_row(last, &sort_keys)?.encode());
            }
            if (backward && more) || (!backward && cursor.is_some()) {
                previous_cursor = Some(Cursor::before_row(first, &sort_keys)?.encode());
            }
        }
        // The page query ordered ids only; the bodies of just this page are read now.
        let mut matched = fetch_current(conn, &keys).await?;
        let position: std::collections::HashMap<(&str, &str), usize> = keys
            .iter()
            .enumerate()
            .map(|(i, (t, id))| ((t.as_str(), id.as_str()), i))
            .collect();
        matched.sort_by_key(|m| {
            position
                .get(&(m.resource_type.as_str(), m.id.as_str()))
                .copied()
                .unwrap_or(usize::MAX)
        });
        match_count = matched.len();
        let (included, truncated) = if includes.is_empty() {
            (Vec::new(), false)
        } else {
            resolve_includes(conn, &includes, &keys, sight).await?
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
            scope.path(base)
        } else {
            format!("{}?{query}", scope.path(base))
        }
    };
    let mut links = vec![
        json!({"relation": "self", "url": link(cursor.as_ref().map(Cursor::encode).as_deref())}),
    ];
    if let Some(after) = &next_cursor {
        links.push(json!({"relation": "next", "url": link(Some(after))}));
    }
    if let Some(before) = &previous_cursor {
        links.push(json!({"relation": "previous", "url": link(Some(before))}));
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
