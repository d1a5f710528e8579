//! Instance and type level interactions: create, read, vread, update, patch, delete and
//! their conditional forms.

use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::extract::{if_match, if_none_match, BaseUrl, Caller, FhirJson, PatchBody, Prefer};
use super::respond::{fhir_json, version_headers, write_response};
use super::summary::FormatParams;
use super::{check_type, AppState};
use crate::auth::scopes::Permission;
use crate::error::{FhirError, FhirResult};
use crate::fhir::outcome::IssueCode;
use crate::fhir::resource::{check_id, ValidResource};
use crate::search::visibility::Sight;
use crate::store::repository;
use crate::store::time::parse_http_date;
use crate::store::{StoredResource, WriteTxn};
use futures::future::BoxFuture;

/// Create a resource; the server assigns the id. With `If-None-Exist`, nothing is created
/// when a resource matches the criteria (200 with that resource); 412 when several match.
#[utoipa::path(
    post, path = "/fhir/{type}", tag = "Instance interactions",
    params(
        ("type" = String, Path, description = "Resource type", example = "Observation"),
        ("If-None-Exist" = Option<String>, Header, description = "Conditional create: search criteria, e.g. identifier=urn:ietf:rfc:3986|urn:uuid:…"),
        ("Prefer" = Option<String>, Header, description = "return=minimal | return=representation | return=OperationOutcome"),
    ),
    request_body(content = Object, content_type = "application/fhir+json", description = "The resource",
        example = json!({"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}]},
            "subject": {"reference": "Patient/example"},
            "effectiveDateTime": "2024-03-01T10:00:00Z",
            "valueQuantity": {"value": 72, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"}})),
    responses(
        (status = 201, description = "Created; Location and ETag name the new version", content_type = "application/fhir+json"),
        (status = 200, description = "Conditional create matched an existing resource", content_type = "application/fhir+json"),
        (status = 400, description = "Invalid resource: OperationOutcome lists every problem with its location", content_type = "application/fhir+json"),
        (status = 404, description = "Unknown resource type", content_type = "application/fhir+json"),
        (status = 412, description = "Conditional create matched several resources", content_type = "application/fhir+json"),
        (status = 415, description = "Unsupported media type", content_type = "application/fhir+json"),
    )
)]
pub async fn create(
    State(state): State<AppState>,
    Path(resource_type): Path<String>,
    headers: HeaderMap,
    base: BaseUrl,
    caller: Caller,
    FhirJson(body): FhirJson,
) -> FhirResult<Response> {
    check_type(&resource_type)?;
    let resource = ValidResource::parse(body, Some(&resource_type))?;
    let if_none_exist = headers
        .get("if-none-exist")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    write_and_respond(&state, &headers, &base, caller, move |txn| {
        Box::pin(async move { repository::create(txn, resource, if_none_exist.as_deref()).await })
    })
    .await
}

/// Read the current version of a resource. 410 when it was deleted; 304 for
/// `If-None-Match` / `If-Modified-Since` when unchanged.
#[utoipa::path(
    get, path = "/fhir/{type}/{id}", tag = "Instance interactions",
    params(
        ("type" = String, Path, description = "Resource type", example = "Observation"),
        ("id" = String, Path, description = "Logical id"),
        ("_summary" = Option<String>, Query, description = "true | text | data | false"),
        ("_elements" = Option<String>, Query, description = "Comma-separated top-level elements to return"),
        ("If-None-Match" = Option<String>, Header, description = "W/\"versionId\": 304 when it is still current"),
        ("If-Modified-Since" = Option<String>, Header, description = "HTTP date: 304 when not modified since"),
    ),
    responses(
        (status = 200, description = "The resource, with ETag and Last-Modified", content_type = "application/fhir+json"),
        (status = 304, description = "Not modified"),
        (status = 404, description = "Unknown type or id", content_type = "application/fhir+json"),
        (status = 410, description = "Deleted", content_type = "application/fhir+json"),
    )
)]
pub async fn read(
    State(state): State<AppState>,
    Path((resource_type, id)): Path<(String, String)>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    caller: Caller,
) -> FhirResult<Response> {
    check_type(&resource_type)?;
    check_id(&id)?;
    let format = FormatParams::parse(query.as_deref())?;
    check_sees(&state, &caller, &resource_type, &id).await?;
    let stored = found(
        state.store.read(&resource_type, &id).await?,
        &resource_type,
        &id,
    )?;
    if not_modified(&headers, &stored)? {
        let mut response = StatusCode::NOT_MODIFIED.into_response();
        version_headers(&mut response, &stored);
        return Ok(response);
    }
    Ok(resource_body(&stored, &format))
}

/// Read one version of a resource.
#[utoipa::path(
    get, path = "/fhir/{type}/{id}/_history/{vid}", tag = "Instance interactions",
    params(
        ("type" = String, Path, description = "Resource type", example = "Observation"),
        ("id" = String, Path, description = "Logical id"),
        ("vid" = String, Path, description = "Version id"),
    ),
    responses(
        (status = 200, description = "That version", content_type = "application/fhir+json"),
        (status = 404, description = "Unknown type, id or version", content_type = "application/fhir+json"),
        (status = 410, description = "That version is a deletion", content_type = "application/fhir+json"),
    )
)]
pub async fn vread(
    State(state): State<AppState>,
    Path((resource_type, id, vid)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
    caller: Caller,
) -> FhirResult<Response> {
    check_type(&resource_type)?;
    check_id(&id)?;
    let format = FormatParams::parse(query.as_deref())?;
    check_sees(&state, &caller, &resource_type, &id).await?;
    let version: i64 = vid.parse().map_err(|_| {
        FhirError::not_found(format!(
            "{vid:?} is not a version of {resource_type}/{id}; versions are numbers"
        ))
    })?;
    let stored = state
        .store
        .vread(&resource_type, &id, version)
        .await?
        .ok_or_else(|| {
            FhirError::not_found(format!("{resource_type}/{id} has no version {version}"))
        })?;
    if stored.deleted {
        let mut response = FhirError::gone(format!(
            "version {version} of {resource_type}/{id} is a deletion"
        ))
        .into_response();
        version_headers(&mut response, &stored);
        return Ok(response);
    }
    Ok(resource_body(&stored, &format))
}

/// Update a resource, or create it with this id when it does not exist (201).
#[utoipa::path(
    put, path = "/fhir/{type}/{id}", tag = "Instance interactions",
    params(
        ("type" = String, Path, description = "Resource type", example = "Patient"),
        ("id" = String, Path, description = "Logical id; must equal the body's id"),
        ("If-Match" = Option<String>, Header, description = "W/\"versionId\": 412 unless it is the current version"),
        ("Prefer" = Option<String>, Header, description = "return=minimal | return=representation | return=OperationOutcome"),
    ),
    request_body(content = Object, content_type = "application/fhir+json",
        example = json!({"resourceType": "Patient", "id": "example", "name": [{"family": "Chalmers", "given": ["Peter"]}]})),
    responses(
        (status = 200, description = "Updated", content_type = "application/fhir+json"),
        (status = 201, description = "Created with the client's id", content_type = "application/fhir+json"),
        (status = 400, description = "Invalid resource or id mismatch", content_type = "application/fhir+json"),
        (status = 412, description = "If-Match names a stale version", content_type = "application/fhir+json"),
    )
)]
pub async fn update(
    State(state): State<AppState>,
    Path((resource_type, id)): Path<(String, String)>,
    headers: HeaderMap,
    base: BaseUrl,
    caller: Caller,
    FhirJson(body): FhirJson,
) -> FhirResult<Response> {
    check_type(&resource_type)?;
    check_id(&id)?;
    let version = if_match(&headers)?;
    let resource = ValidResource::parse(body, Some(&resource_type))?;
    write_and_respond(&state, &headers, &base, caller, move |txn| {
        Box::pin(async move { repository::update(txn, resource, &id, version).await })
    })
    .await
}

/// Conditional update: update the one resource matching the criteria, create when none
/// matches, 412 when several match.
#[utoipa::path(
    put, path = "/fhir/{type}", tag = "Type interactions",
    params(
        ("type" = String, Path, description = "Resource type", example = "Patient"),
        ("identifier" = Option<String>, Query, description = "Search criteria selecting the resource, e.g. identifier=http://acme.org/mrn|123"),
        ("If-Match" = Option<String>, Header, description = "W/\"versionId\""),
    ),
    request_body(content = Object, content_type = "application/fhir+json"),
    responses(
        (status = 200, description = "Updated", content_type = "application/fhir+json"),
        (status = 201, description = "Created", content_type = "application/fhir+json"),
        (status = 412, description = "Several resources match", content_type = "application/fhir+json"),
    )
)]
pub async fn conditional_update(
    State(state): State<AppState>,
    Path(resource_type): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    base: BaseUrl,
    caller: Caller,
    FhirJson(body): FhirJson,
) -> FhirResult<Response> {
    check_type(&resource_type)?;
    let criteria = required_criteria(query, "conditional update")?;
    let version = if_match(&headers)?;
    let resource = ValidResource::parse(body, Some(&resource_type))?;
    write_and_respond(&state, &headers, &base, caller, move |txn| {
        Box::pin(
            async move { repository::conditional_update(txn, resource, &criteria, version).await },
        )
    })
    .await
}

/// Patch a resource with a JSON Patch document (`application/json-patch+json`).
#[utoipa::path(
    patch, path = "/fhir/{type}/{id}", tag = "Instance interactions",
    params(
        ("type" = String, Path, description = "Resource type", example = "Observation"),
        ("id" = String, Path, description = "Logical id"),
        ("If-Match" = Option<String>, Header, description = "W/\"versionId\""),
    ),
    request_body(content = Object, content_type = "application/json-patch+json",
        example = json!([{"op": "replace", "path": "/status", "value": "amended"}])),
    responses(
        (status = 200, description = "Patched", content_type = "application/fhir+json"),
        (status = 404, description = "No such resource", content_type = "application/fhir+json"),
        (status = 412, description = "Stale If-Match", content_type = "application/fhir+json"),
        (status = 415, description = "Not a JSON Patch", content_type = "application/fhir+json"),
        (status = 422, description = "The patch cannot be applied or yields an invalid resource", content_type = "application/fhir+json"),
    )
)]
pub async fn patch(
    State(state): State<AppState>,
    Path((resource_type, id)): Path<(String, String)>,
    headers: HeaderMap,
    base: BaseUrl,
    caller: Caller,
    PatchBody(patch): PatchBody,
) -> FhirResult<Response> {
    check_type(&resource_type)?;
    check_id(&id)?;
    let version = if_match(&headers)?;
    write_and_respond(&state, &headers, &base, caller, move |txn| {
        Box::pin(async move { repository::patch(txn, &resource_type, &id, &patch, version).await })
    })
    .await
}

/// Delete a resource: a tombstone version is written; reading it then gives 410.
#[utoipa::path(
    delete, path = "/fhir/{type}/{id}", tag = "Instance interactions",
    params(
        ("type" = String, Path, description = "Resource type", example = "Observation"),
        ("id" = String, Path, description = "Logical id"),
        ("If-Match" = Option<String>, Header, description = "W/\"versionId\""),
    ),
    responses(
        (status = 204, description = "Deleted (or already deleted)"),
        (status = 404, description = "No such resource", content_type = "application/fhir+json"),
        (status = 412, description = "Stale If-Match", content_type = "application/fhir+json"),
    )
)]
pub async fn delete(
    State(state): State<AppState>,
    Path((resource_type, id)): Path<(String, String)>,
    headers: HeaderMap,
    caller: Caller,
) -> FhirResult<Response> {
    check_type(&resource_type)?;
    check_id(&id)?;
    let version = if_match(&headers)?;
    let result = state
        .store
        .writer()
        .write_as(caller.0, move |txn| {
            Box::pin(async move { repository::delete(txn, &resource_type, &id, version).await })
        })
        .await?;
    Ok(delete_response(&result))
}

/// Conditional delete: delete the one resource matching the criteria (412 when several).
#[utoipa::path(
    delete, path = "/fhir/{type}", tag = "Type interactions",
    params(
        ("type" = String, Path, description = "Resource type", example = "Observation"),
        ("identifier" = Option<String>, Query, description = "Search criteria selecting the resource"),
    ),
    responses(
        (status = 204, description = "Deleted, or nothing matched"),
        (status = 412, description = "Several resources match", content_type = "application/fhir+json"),
    )
)]
pub async fn conditional_delete(
    State(state): State<AppState>,
    Path(resource_type): Path<String>,
    RawQuery(query): RawQuery,
    caller: Caller,
) -> FhirResult<Response> {
    check_type(&resource_type)?;
    let criteria = required_criteria(query, "conditional delete")?;
    let result = state
        .store
        .writer()
        .write_as(caller.0, move |txn| {
            Box::pin(
                async move { repository::conditional_delete(txn, &resource_type, &criteria).await },
            )
        })
        .await?;
    Ok(delete_response(&result))
}

/// A caller with limited access reads a resource (or its versions) only when its current
/// version is within that access; 403 otherwise, whether it exists or not.
pub async fn check_sees(
    state: &AppState,
    caller: &Caller,
    resource_type: &str,
    id: &str,
) -> FhirResult<()> {
    let sight = caller.sight(Permission::Read);
    if !sight.is_limited()
        || sight
            .sees(state.store.connection(), resource_type, id)
            .await?
    {
        return Ok(());
    }
    Err(outside_access(sight, resource_type, id))
}

pub fn outside_access(sight: Sight<'_>, resource_type: &str, id: &str) -> FhirError {
    FhirError::new(
        StatusCode::FORBIDDEN,
        IssueCode::Forbidden,
        format!(
            "{resource_type}/{id} is not within the token's access: {}",
            sight.limits(resource_type)
        ),
    )
}

/// Runs a write on the group-commit writer and renders its result as `Prefer` asks.
async fn write_and_respond<F>(
    state: &AppState,
    headers: &HeaderMap,
    base: &BaseUrl,
    caller: Caller,
    work: F,
) -> FhirResult<Response>
where
    F: for<'a> FnOnce(&'a WriteTxn<'a>) -> BoxFuture<'a, FhirResult<repository::WriteResult>>
        + Send
        + 'static,
{
    let result = state.store.writer().write_as(caller.0, work).await?;
    Ok(write_response(
        &result,
        Prefer::from_headers(headers).return_,
        base,
    ))
}

fn delete_response(result: &repository::WriteResult) -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    if let Some(stored) = &result.resource {
        if let Ok(etag) = HeaderValue::from_str(&stored.etag()) {
            response.headers_mut().insert(header::ETAG, etag);
        }
    }
    response
}

fn required_criteria(query: Option<String>, what: &str) -> FhirResult<String> {
    match query {
        Some(q) if !q.trim().is_empty() => Ok(q),
        _ => Err(FhirError::bad_request(format!(
            "a {what} needs search criteria in the URL, e.g. ?identifier=system|value"
        ))),
    }
}

/// 404 for a resource that never existed, 410 for a deleted one.
pub fn found(
    stored: Option<StoredResource>,
    resource_type: &str,
    id: &str,
) -> FhirResult<StoredResource> {
    match stored {
        None => Err(FhirError::not_found(format!(
            "{resource_type}/{id} is not known to this server"
        ))),
        Some(stored) if stored.deleted => Err(FhirError::gone(format!(
            "{resource_type}/{id} was deleted (version {})",
            stored.version_id
        ))),
        Some(stored) => Ok(stored),
    }
}

/// `If-None-Match` / `If-Modified-Since` on read.
fn not_modified(headers: &HeaderMap, stored: &StoredResource) -> FhirResult<bool> {
    if headers.contains_key(header::IF_NONE_MATCH) {
        return Ok(if_none_match(headers)? == Some(stored.version_id));
    }
    if let Some(since) = headers
        .get(header::IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
    {
        let since = parse_http_date(since).ok_or_else(|| {
            FhirError::bad_request(format!(
                "If-Modified-Since must be an HTTP date such as 'Tue, 24 Nov 2026 01:02:03 GMT', not {since:?}"
            ))
        })?;
        // HTTP dates have whole seconds: compare at that precision.
        return Ok(stored.last_updated / 1_000_000 <= since / 1_000_000);
    }
    Ok(false)
}

fn resource_body(stored: &StoredResource, format: &FormatParams) -> Response {
    let content = stored.content.as_ref().map(|c| format.apply(c));
    let mut response = match content {
        Some(content) => fhir_json(StatusCode::OK, &content),
        None => StatusCode::OK.into_response(),
    };
    version_headers(&mut response, stored);
    response
}
