//! `$validate`: the same validation as on write, without storing.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::Value as Json;

use super::extract::FhirJson;
use super::respond::fhir_json;
use super::{check_type, AppState};
use crate::error::{FhirError, FhirResult};
use crate::fhir::outcome::operation_outcome;
use crate::fhir::resource::{check_id, ValidResource};

/// Validate a resource against the R4 definitions without storing it. The body is the
/// resource, or a Parameters resource with a `resource` parameter.
#[utoipa::path(
    post, path = "/fhir/{type}/$validate", tag = "Operations",
    params(("type" = String, Path, description = "Resource type", example = "Observation")),
    request_body(content = Object, content_type = "application/fhir+json"),
    responses(
        (status = 200, description = "OperationOutcome: the same issues a create would report (or 'All OK')", content_type = "application/fhir+json"),
    )
)]
pub async fn validate_type(
    State(_state): State<AppState>,
    Path(resource_type): Path<String>,
    FhirJson(body): FhirJson,
) -> FhirResult<Response> {
    check_type(&resource_type)?;
    validate_body(&resource_type, body, None)
}

/// Validate a resource meant for this id.
#[utoipa::path(
    post, path = "/fhir/{type}/{id}/$validate", tag = "Operations",
    params(
        ("type" = String, Path, description = "Resource type", example = "Observation"),
        ("id" = String, Path, description = "Logical id"),
    ),
    request_body(content = Object, content_type = "application/fhir+json"),
    responses(
        (status = 200, description = "OperationOutcome", content_type = "application/fhir+json"),
    )
)]
pub async fn validate_instance(
    State(_state): State<AppState>,
    Path((resource_type, id)): Path<(String, String)>,
    FhirJson(body): FhirJson,
) -> FhirResult<Response> {
    check_type(&resource_type)?;
    check_id(&id)?;
    validate_body(&resource_type, body, Some(&id))
}

fn validate_body(resource_type: &str, body: Json, id: Option<&str>) -> FhirResult<Response> {
    let resource = unwrap_parameters(body, resource_type)?;
    let body_id = resource
        .get("id")
        .and_then(Json::as_str)
        .map(str::to_string);
    let issues = match ValidResource::parse(resource, Some(resource_type)) {
        Ok(_) => match (id, body_id) {
            (Some(url_id), Some(body_id)) if url_id != body_id => {
                FhirError::bad_request(format!(
                    "the resource id {body_id:?} does not match the id {url_id:?} in the URL"
                ))
                .issues
            }
            _ => Vec::new(),
        },
        Err(err) if err.status == StatusCode::BAD_REQUEST => err.issues,
        Err(err) => return Err(err),
    };
    Ok(fhir_json(StatusCode::OK, &operation_outcome(&issues)))
}

/// `$validate` accepts the resource itself or `Parameters { parameter: [{name: resource}] }`.
fn unwrap_parameters(body: Json, resource_type: &str) -> FhirResult<Json> {
    if body.get("resourceType").and_then(Json::as_str) != Some("Parameters")
        || resource_type == "Parameters"
    {
        return Ok(body);
    }
    body.get("parameter")
        .and_then(Json::as_array)
        .and_then(|params| {
            params
                .iter()
                .find(|p| p.get("name").and_then(Json::as_str) == Some("resource"))
        })
        .and_then(|p| p.get("resource").cloned())
        .ok_or_else(|| {
            FhirError::bad_request(
                "the Parameters resource has no 'resource' parameter holding the resource to validate",
            )
        })
}
