//! Building FHIR responses: body, `ETag`, `Last-Modified`, `Location`, and the
//! `Prefer: return=` choice.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value as Json;

use super::extract::{BaseUrl, ReturnPreference};
use crate::error::FHIR_JSON;
use crate::fhir::outcome::{operation_outcome, Issue, IssueCode};
use crate::store::repository::WriteResult;
use crate::store::time::http_date;
use crate::store::StoredResource;

/// A JSON body with the FHIR media type.
pub fn fhir_json(status: StatusCode, body: &Json) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut response = (status, bytes).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
    response
}

/// `ETag` and `Last-Modified` of a stored version.
pub fn version_headers(response: &mut Response, stored: &StoredResource) {
    let headers = response.headers_mut();
    if let Ok(etag) = HeaderValue::from_str(&stored.etag()) {
        headers.insert(header::ETAG, etag);
    }
    if let Ok(modified) = HeaderValue::from_str(&http_date(stored.last_updated)) {
        headers.insert(header::LAST_MODIFIED, modified);
    }
}

pub fn version_url(base: &BaseUrl, stored: &StoredResource) -> String {
    format!(
        "{}/{}/{}/_history/{}",
        base.0, stored.resource_type, stored.id, stored.version_id
    )
}

/// The response to a create, update or patch, shaped by `Prefer: return=`.
pub fn write_response(result: &WriteResult, prefer: ReturnPreference, base: &BaseUrl) -> Response {
    let Some(stored) = &result.resource else {
        return result.status.into_response();
    };
    let mut response = match (prefer, &stored.content) {
        (ReturnPreference::Minimal, _) | (_, None) => result.status.into_response(),
        (ReturnPreference::OperationOutcome, Some(_)) => {
            let text = format!(
                "{} {}/{} version {}",
                match result.status {
                    StatusCode::CREATED => "created",
                    _ => "stored",
                },
                stored.resource_type,
                stored.id,
                stored.version_id
            );
            fhir_json(
                result.status,
                &operation_outcome(&[Issue::information(IssueCode::Informational, text)]),
            )
        }
        (ReturnPreference::Representation, Some(content)) => fhir_json(result.status, content),
    };
    version_headers(&mut response, stored);
    if matches!(result.status, StatusCode::CREATED | StatusCode::OK) {
        if let Ok(location) = HeaderValue::from_str(&version_url(base, stored)) {
            response.headers_mut().insert(header::LOCATION, location);
        }
    }
    response
}
