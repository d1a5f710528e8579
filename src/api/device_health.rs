//! The device-health operations: `Device/$heartbeat`, by which the edge agent reports a
//! device's state, and `Device/$health` (one device or all monitored ones): status and
//! reason, last seen, online or not. See [`crate::devices::health`].

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use serde_json::json;

use super::extract::{Caller, FhirJson};
use super::respond::fhir_json;
use super::AppState;
use crate::auth::scopes::Permission;
use crate::devices::health;
use crate::error::{FhirError, FhirResult};
use crate::store::time::instant;

/// Report a device's state (a heartbeat).
///
/// Parameters: `device` (a Device with an identifier; created when unknown), `status` (a
/// code of http://terminology.hl7.org/CodeSystem/device-status-reason), optional `detail`
/// (valueString), and any number of `metric` parts (`type` valueCoding,
/// `operationalStatus`, `calibrationType`, `calibrationState` valueCode,
/// `calibrationTime` valueInstant). The Device gets a new version only when its status or
/// reason changes.
#[utoipa::path(
    post, path = "/fhir/Device/$heartbeat", tag = "Devices",
    request_body(content = Object, content_type = "application/fhir+json"),
    responses(
        (status = 200, description = "Parameters: device (Reference), created, changed (boolean), lastSeen (instant)", content_type = "application/fhir+json"),
        (status = 400, description = "Not a heartbeat (OperationOutcome says what is missing and where)", content_type = "application/fhir+json"),
        (status = 403, description = "The token may not write this Device", content_type = "application/fhir+json"),
    )
)]
pub async fn heartbeat(
    State(state): State<AppState>,
    caller: Caller,
    FhirJson(body): FhirJson,
) -> FhirResult<Response> {
    let heartbeat = health::parse_heartbeat(&body)?;
    let recorded = health::record(&state.store, heartbeat, caller.0.clone()).await?;
    let parameters = json!({
        "resourceType": "Parameters",
        "parameter": [
            {"name": "device", "valueReference": {"reference": format!("Device/{}", recorded.device_id)}},
            {"name": "created", "valueBoolean": recorded.created},
            {"name": "changed", "valueBoolean": recorded.changed},
            {"name": "lastSeen", "valueInstant": instant(recorded.last_seen)},
        ],
    });
    Ok(fhir_json(StatusCode::OK, &parameters))
}

/// One device's health.
#[utoipa::path(
    get, path = "/fhir/Device/{id}/$health", tag = "Devices",
    params(("id" = String, Path, description = "Device id")),
    responses(
        (status = 200, description = "Parameters: device, status, statusReason, detail, monitored, lastSeen, online", content_type = "application/fhir+json"),
        (status = 404, description = "No such Device", content_type = "application/fhir+json"),
    )
)]
pub async fn device_health(
    State(state): State<AppState>,
    Path(id): Path<String>,
    caller: Caller,
) -> FhirResult<Response> {
    super::crud::check_sees(&state, &caller, "Device", &id).await?;
    let conn = state.store.connection();
    let device = crate::store::versions::read_current(conn, "Device", &id)
        .await?
        .and_then(|c| c.content)
        .ok_or_else(|| FhirError::not_found(format!("no Device {id}")))?;
    let presence = health::presence(conn, &id).await?;
    let parameters = json!({
        "resourceType": "Parameters",
        "parameter": health::health_parts(&device, presence.as_ref()),
    });
    Ok(fhir_json(StatusCode::OK, &parameters))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HealthQuery {
    /// `true`: only the devices marked offline; `false`: only those online.
    pub offline: Option<bool>,
    /// At most this many devices, longest silent first (default 100, at most 1000).
    #[serde(rename = "_count")]
    #[param(rename = "_count")]
    pub count: Option<u64>,
}

/// The health of every device that reports its state, longest silent first.
#[utoipa::path(
    get, path = "/fhir/Device/$health", tag = "Devices",
    params(HealthQuery),
    responses(
        (status = 200, description = "Parameters with one `device` parameter per device, its parts as for Device/{id}/$health", content_type = "application/fhir+json"),
    )
)]
pub async fn fleet_health(
    State(state): State<AppState>,
    Query(query): Query<HealthQuery>,
    caller: Caller,
) -> FhirResult<Response> {
    let count = query.count.unwrap_or(100).clamp(1, 1000);
    let conn = state.store.connection();
    let sight = caller.sight(Permission::Read);
    let mut devices = Vec::new();
    // Read a little more than asked, as some may be filtered out.
    for presence in health::presences(conn, query.offline, count * 4).await? {
        if devices.len() as u64 >= count {
            break;
        }
        if sight.is_limited() && !sight.sees(conn, "Device", &presence.device_id).await? {
            continue;
        }
        let Some(device) =
            crate::store::versions::read_current(conn, "Device", &presence.device_id)
                .await?
                .and_then(|c| c.content)
        else {
            continue;
        };
        devices.push(json!({
            "name": "device",
            "part": health::health_parts(&device, Some(&presence)),
        }));
    }
    Ok(fhir_json(
        StatusCode::OK,
        &json!({"resourceType": "Parameters", "parameter": devices}),
    ))
}
