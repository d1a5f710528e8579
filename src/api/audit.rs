//! `GET /fhir/AuditEvent[/id]`: the audit trail, read-only (see `auth::audit`).

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use serde_json::{json, Value as Json};

use super::extract::BaseUrl;
use super::respond::fhir_json;
use super::AppState;
use crate::error::{FhirError, FhirResult};
use crate::fhir::outcome::IssueCode;

#[derive(Debug, Deserialize)]
pub struct AuditQuery {
    /// The client (`agent` identifier value).
    agent: Option<String>,
    /// `Patient/id` or `id`.
    patient: Option<String>,
    #[serde(rename = "_count")]
    count: Option<u64>,
}

/// `GET /fhir/AuditEvent`
#[utoipa::path(
    get, path = "/fhir/AuditEvent", tag = "Authorization",
    params(
        ("agent" = Option<String>, Query, description = "Only the events of this client id"),
        ("patient" = Option<String>, Query, description = "Only the events about this patient"),
        ("_count" = Option<u64>, Query, description = "At most this many (default 100, at most 1000), newest first"),
    ),
    responses(
        (status = 200, description = "searchset Bundle of AuditEvents, newest first; needs a scope naming AuditEvent (e.g. system/AuditEvent.rs)", content_type = "application/fhir+json"),
    )
)]
pub async fn search(
    State(state): State<AppState>,
    base: BaseUrl,
    Query(query): Query<AuditQuery>,
) -> FhirResult<Response> {
    let patient = query
        .patient
        .as_deref()
        .map(|p| p.trim_start_matches("Patient/").to_string());
    let count = query.count.unwrap_or(100).clamp(1, 1000);
    let events = crate::auth::audit::search(
        state.store.connection(),
        query.agent.as_deref(),
        patient.as_deref(),
        count,
    )
    .await?;
    let entries: Vec<Json> = events
        .into_iter()
        .map(|event| {
            json!({
                "fullUrl": format!("{}/AuditEvent/{}", base.0, event["id"].as_str().unwrap_or_default()),
                "resource": event,
                "search": {"mode": "match"}
            })
        })
        .collect();
    Ok(fhir_json(
        StatusCode::OK,
        &json!({"resourceType": "Bundle", "type": "searchset", "entry": entries}),
    ))
}

/// `GET /fhir/AuditEvent/{id}`
#[utoipa::path(
    get, path = "/fhir/AuditEvent/{id}", tag = "Authorization",
    params(("id" = String, Path, description = "AuditEvent id")),
    responses(
        (status = 200, description = "The AuditEvent", content_type = "application/fhir+json"),
        (status = 404, description = "No such AuditEvent", content_type = "application/fhir+json"),
    )
)]
pub async fn read(State(state): State<AppState>, Path(id): Path<String>) -> FhirResult<Response> {
    let event = crate::auth::audit::read(state.store.connection(), &id)
        .await?
        .ok_or_else(|| FhirError::not_found(format!("AuditEvent/{id} does not exist")))?;
    Ok(fhir_json(StatusCode::OK, &event))
}

/// `POST /fhir/AuditEvent`: refused, the audit trail is the server's.
#[utoipa::path(
    post, path = "/fhir/AuditEvent", tag = "Authorization",
    responses((status = 405, description = "AuditEvents are written by the server only", content_type = "application/fhir+json"))
)]
pub async fn refuse_write() -> FhirError {
    FhirError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        IssueCode::NotSupported,
        "AuditEvents are written by the server: the audit trail is append-only and its own",
    )
}
