//! Device administration: the dead letters (messages that could not be stored), listed
//! and replayed once their cause is fixed. With authentication on, these need a token
//! granting everything (`system/*.cruds`).

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::AppState;
use crate::devices::dead_letters;
use crate::error::{FhirError, FhirResult};
use crate::fhir::outcome::{operation_outcome, Issue, IssueCode};
use crate::metrics::Adapter;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeadLetterQuery {
    /// `pending` (not stored yet) or `replayed`; all when absent.
    pub status: Option<String>,
    /// At most this many, newest first (default 100, at most 1000).
    #[serde(rename = "_count")]
    #[param(rename = "_count")]
    pub count: Option<u64>,
}

/// The dead letters, newest first.
#[utoipa::path(
    get, path = "/admin/dead-letters", tag = "Devices",
    params(DeadLetterQuery),
    responses((status = 200, description = "{\"deadLetters\": [{id, received, adapter, template, status, attempts, problems: [{code, location, text}], replayedAt, payload}]}", content_type = "application/json"))
)]
pub async fn list_dead_letters(
    State(state): State<AppState>,
    Query(query): Query<DeadLetterQuery>,
) -> FhirResult<Response> {
    if let Some(status) = query.status.as_deref() {
        if !matches!(status, "pending" | "replayed") {
            return Err(FhirError::bad_request(format!(
                "status {status:?} is not a dead-letter status; use pending or replayed"
            )));
        }
    }
    let count = query.count.unwrap_or(100).min(1000);
    let letters =
        dead_letters::list(state.store.connection(), query.status.as_deref(), count).await?;
    Ok(json_response(
        StatusCode::OK,
        &json!({"deadLetters": letters}),
    ))
}

/// One dead letter.
#[utoipa::path(
    get, path = "/admin/dead-letters/{id}", tag = "Devices",
    params(("id" = String, Path, description = "Dead letter id")),
    responses(
        (status = 200, description = "The dead letter", content_type = "application/json"),
        (status = 404, description = "No such dead letter", content_type = "application/fhir+json"),
    )
)]
pub async fn get_dead_letter(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> FhirResult<Response> {
    let letter = dead_letters::get(state.store.connection(), &id)
        .await?
        .ok_or_else(|| FhirError::not_found(format!("no dead letter {id}")))?;
    Ok(json_response(StatusCode::OK, &json!(letter)))
}

/// Processes a dead letter again (after the mapping, patient or device was fixed): 200
/// when it is now stored, 422 with what is still wrong.
#[utoipa::path(
    post, path = "/admin/dead-letters/{id}/replay", tag = "Devices",
    params(("id" = String, Path, description = "Dead letter id")),
    responses(
        (status = 200, description = "Stored now: {\"status\": \"replayed\", \"created\": n}", content_type = "application/json"),
        (status = 404, description = "No such dead letter", content_type = "application/fhir+json"),
        (status = 409, description = "Already replayed", content_type = "application/fhir+json"),
        (status = 422, description = "Still not storable: the OperationOutcome says why", content_type = "application/fhir+json"),
    )
)]
pub async fn replay_dead_letter(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> FhirResult<Response> {
    let letter = dead_letters::get(state.store.connection(), &id)
        .await?
        .ok_or_else(|| FhirError::not_found(format!("no dead letter {id}")))?;
    if letter.status == "replayed" {
        return Err(FhirError::new(
            StatusCode::CONFLICT,
            IssueCode::Conflict,
            format!("dead letter {id} was already replayed"),
        ));
    }
    let adapter = Adapter::from_name(&letter.adapter).ok_or_else(|| {
        FhirError::internal(format!(
            "dead letter {id} has unknown adapter {}",
            letter.adapter
        ))
    })?;
    let (stored, problems) = match (adapter, &letter.template) {
        (Adapter::Mllp, _) => {
            let handled = state.hl7.handle(adapter, &letter.payload, true).await;
            (
                handled.problems.is_empty().then_some(handled.created),
                handled.problems,
            )
        }
        (_, Some(template)) => {
            // With the access of the client that sent it, if one did.
            let caller = letter.owner_access.as_deref().map(|record| {
                let principal = crate::auth::principal::Principal::from_record(record)
                    .unwrap_or_else(|| crate::auth::principal::Principal {
                        client_id: String::new(),
                        scopes: Vec::new(),
                        patient: None,
                    });
                std::sync::Arc::new(principal)
                    as std::sync::Arc<dyn crate::search::visibility::Access>
            });
            let outcome = state
                .json
                .handle(adapter, template, letter.payload.as_bytes(), caller, true)
                .await;
            (
                outcome.problems.is_empty().then_some(outcome.created),
                outcome.problems,
            )
        }
        (_, None) => {
            return Err(FhirError::internal(format!(
                "dead letter {id} of the {} adapter names no template",
                letter.adapter
            )))
        }
    };
    match stored {
        Some(created) => {
            dead_letters::replayed(&state.store, &id, None).await?;
            Ok(json_response(
                StatusCode::OK,
                &json!({"id": id, "status": "replayed", "created": created}),
            ))
        }
        None => {
            dead_letters::replayed(&state.store, &id, Some(&problems)).await?;
            let issues: Vec<Issue> = problems
                .iter()
                .map(|p| {
                    let mut issue = Issue::error(IssueCode::Processing, p.text.clone());
                    if let Some(location) = &p.location {
                        issue = issue.at(location.clone());
                    }
                    issue
                })
                .collect();
            Ok((
                StatusCode::UNPROCESSABLE_ENTITY,
                [(header::CONTENT_TYPE, "application/fhir+json")],
                operation_outcome(&issues).to_string(),
            )
                .into_response())
        }
    }
}

fn json_response(status: StatusCode, body: &serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// Stores a device's JSON payload through a mapping template (`smartwatch`, `bp-cuff`, or
/// one of `--device-templates`): one transaction per message of the payload, duplicates
/// recognised. A payload that cannot be stored is kept as a dead letter.
#[utoipa::path(
    post, path = "/ingest/{template}", tag = "Devices",
    params(("template" = String, Path, description = "Mapping template name", example = "smartwatch")),
    request_body(content = Object, content_type = "application/json",
        example = json!({"deviceId": "SW-1234", "patientId": "MRN-1", "timestamp": 1709287200000_i64, "heartRate": 72, "spo2": 97})),
    responses(
        (status = 200, description = "{\"template\", \"messages\", \"created\", \"existing\"}", content_type = "application/json"),
        (status = 403, description = "The token may not write this data (another patient's)", content_type = "application/fhir+json"),
        (status = 404, description = "No such template (the payload is kept as a dead letter)", content_type = "application/fhir+json"),
        (status = 422, description = "The payload cannot be mapped or stored: what is wrong and where (JSONPath); kept as a dead letter", content_type = "application/fhir+json"),
        (status = 503, description = "The server could not store it now; kept as a dead letter", content_type = "application/fhir+json"),
    )
)]
pub async fn ingest(
    State(state): State<AppState>,
    Path(template): Path<String>,
    caller: super::extract::Caller,
    body: axum::body::Bytes,
) -> FhirResult<Response> {
    let outcome = state
        .json
        .handle(Adapter::Http, &template, &body, caller.0, false)
        .await;
    if outcome.problems.is_empty() {
        return Ok(json_response(
            StatusCode::OK,
            &json!({
                "template": template,
                "messages": outcome.messages,
                "created": outcome.created,
                "existing": outcome.existing,
            }),
        ));
    }
    let status = if outcome.forbidden {
        StatusCode::FORBIDDEN
    } else if outcome.unknown_template {
        StatusCode::NOT_FOUND
    } else if outcome.failed {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    let code = if outcome.forbidden {
        IssueCode::Forbidden
    } else {
        IssueCode::Processing
    };
    let mut issues: Vec<Issue> = outcome
        .problems
        .iter()
        .map(|p| {
            let mut issue = Issue::error(code, p.text.clone());
            if let Some(location) = &p.location {
                issue = issue.at(location.clone());
            }
            issue
        })
        .collect();
    if let Some(id) = &outcome.dead_letter {
        issues.push(Issue::information(
            IssueCode::Informational,
            format!("the payload is kept as dead letter {id}; replay it with POST /admin/dead-letters/{id}/replay once fixed"),
        ));
    }
    Ok((
        status,
        [(header::CONTENT_TYPE, "application/fhir+json")],
        operation_outcome(&issues).to_string(),
    )
        .into_response())
}

/// Stores one DICOM instance, as the C-STORE SCP does (the edge agent uploads the files
/// of its watched folders here, pixel data stripped): the modality as a Device, the
/// Patient, the instance merged into its ImagingStudy, and dose Observations from CT
/// dose reports and CT images. Sending the same instance again changes nothing.
#[utoipa::path(
    post, path = "/ingest/dicom", tag = "Devices",
    request_body(content = Vec<u8>, content_type = "application/dicom",
        description = "One DICOM Part-10 file (128-byte preamble, DICM, file meta information, data set); the pixel data may be left out"),
    responses(
        (status = 201, description = "The instance started a new ImagingStudy: {\"imagingStudy\": \"ImagingStudy/…\", \"studyCreated\", \"studyUpdated\", \"patient\", \"device\", \"observations\": [\"Observation/…\"], \"observationsCreated\"}", content_type = "application/json"),
        (status = 200, description = "The instance was added to its ImagingStudy (studyUpdated), or was there already (nothing changed); same body", content_type = "application/json"),
        (status = 400, description = "The body is not DICOM or cannot be parsed", content_type = "application/fhir+json"),
        (status = 403, description = "The token may not write what the instance holds", content_type = "application/fhir+json"),
        (status = 413, description = "Larger than --max-body-bytes (strip the pixel data)", content_type = "application/fhir+json"),
        (status = 415, description = "The Content-Type is not application/dicom", content_type = "application/fhir+json"),
        (status = 422, description = "DICOM that cannot become FHIR (no Patient ID, no study UID): what is missing", content_type = "application/fhir+json"),
        (status = 503, description = "The server cannot store it now; send it again later", content_type = "application/fhir+json"),
    )
)]
pub async fn ingest_dicom(
    State(state): State<AppState>,
    caller: super::extract::Caller,
    body: super::extract::DicomBody,
) -> FhirResult<Response> {
    let instance = match crate::devices::dicom::read_part10(&body.0) {
        Ok(instance) => std::sync::Arc::new(instance),
        Err(error) => {
            state.dicom.unreadable(Adapter::Http);
            return Err(error.into());
        }
    };
    let stored = state.dicom.store(Adapter::Http, instance, caller.0).await?;
    let status = if stored.study_created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let observations: Vec<String> = stored
        .observations
        .iter()
        .map(|id| format!("Observation/{id}"))
        .collect();
    Ok(json_response(
        status,
        &json!({
            "imagingStudy": format!("ImagingStudy/{}", stored.study),
            "studyCreated": stored.study_created,
            "studyUpdated": stored.study_updated,
            "patient": format!("Patient/{}", stored.patient),
            "device": stored.device.map(|id| format!("Device/{id}")),
            "observations": observations,
            "observationsCreated": stored.observations_created,
        }),
    ))
}
