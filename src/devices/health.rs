//! Device health: what each device says of its state (the edge agent's heartbeats), kept
//! as the Device's `status` / `statusReason` and as a presence row (last seen, last state).
//!
//! A heartbeat every few seconds must not make a new Device version each time: the
//! resource is written only when the status or its reason changes, which is what the
//! "Device status changed" subscription topic announces. When a device's state changes,
//! the operational status of its DeviceMetrics follows; a heartbeat may also report a
//! metric's calibration.

use std::sync::Arc;

use sea_orm::ConnectionTrait;
use serde_json::{json, Value as Json};

use super::mapping::METRIC_ID_SYSTEM;
use crate::auth::scopes::Permission;
use crate::error::{FhirError, FhirResult};
use crate::fhir::resource::ValidResource;
use crate::search::visibility::{Access, Sight};
use crate::store::matching::find_matches;
use crate::store::repository::{self, new_id};
use crate::store::sql::statement;
use crate::store::time::{instant, now_micros};
use crate::store::{Store, WriteTxn};

pub const STATUS_REASON_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/device-status-reason";

/// The codes of device-status-reason, with their display.
pub const STATUS_REASONS: &[(&str, &str)] = &[
    ("online", "Online"),
    ("paused", "Paused"),
    ("standby", "Standby"),
    ("offline", "Offline"),
    ("not-ready", "Not Ready"),
    ("transduc-discon", "Transducer Disconnected"),
    ("hw-discon", "Hardware Disconnected"),
    ("off", "Off"),
];

/// `Device.status` for a status reason: a device that is off, unreachable or
/// disconnected from its gateway delivers nothing, so it is not active.
pub fn device_status(reason: &str) -> &'static str {
    match reason {
        "off" | "offline" | "hw-discon" => "inactive",
        _ => "active",
    }
}

/// `DeviceMetric.operationalStatus` for a device's state; `None` leaves it as it is (a
/// silent device's sensors may well be working).
fn operational_status(reason: &str) -> Option<&'static str> {
    match reason {
        "online" => Some("on"),
        "paused" | "standby" | "not-ready" => Some("standby"),
        "off" | "hw-discon" | "transduc-discon" => Some("off"),
        _ => None,
    }
}

/// `Device.statusReason` for a state.
pub fn status_reason(reason: &str, detail: Option<&str>) -> Json {
    let display = STATUS_REASONS
        .iter()
        .find(|(code, _)| *code == reason)
        .map(|(_, display)| *display)
        .unwrap_or(reason);
    let mut concept = json!({
        "coding": [{"system": STATUS_REASON_SYSTEM, "code": reason, "display": display}],
    });
    if let Some(detail) = detail.filter(|d| !d.is_empty()) {
        concept["text"] = json!(detail);
    }
    json!([concept])
}

/// What a heartbeat reports of one of the device's metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricReport {
    /// The metric's type (`DeviceMetric.type`), e.g. MDC 150456.
    pub system: String,
    pub code: String,
    pub operational_status: Option<String>,
    pub calibration_type: Option<String>,
    pub calibration_state: Option<String>,
    pub calibration_time: Option<String>,
}

/// A heartbeat: the device (found by identifier, created from this when unknown), its
/// state and what it says about it.
#[derive(Debug, Clone, PartialEq)]
pub struct Heartbeat {
    pub device: Json,
    pub status: String,
    pub detail: Option<String>,
    pub metrics: Vec<MetricReport>,
}

/// Reads a heartbeat from its Parameters resource.
pub fn parse_heartbeat(body: &Json) -> FhirResult<Heartbeat> {
    if body["resourceType"] != "Parameters" {
        return Err(FhirError::bad_request(
            "a heartbeat is a Parameters resource with the parameters device (a Device with an \
             identifier), status (a device-status-reason code) and optionally detail and metric",
        )
        .at("resourceType"));
    }
    let parameters = body["parameter"].as_array().cloned().unwrap_or_default();
    let named = |name: &str| -> Vec<(usize, &Json)> {
        parameters
            .iter()
            .enumerate()
            .filter(|(_, p)| p["name"] == name)
            .collect()
    };
    let device = match named("device").as_slice() {
        [(_, parameter)] if parameter["resource"]["resourceType"] == "Device" => {
            parameter["resource"].clone()
        }
        [(index, _)] => {
            return Err(FhirError::bad_request(
                "the device parameter must hold a Device resource (\"resource\": {\"resourceType\": \"Device\", …})",
            )
            .at(format!("Parameters.parameter[{index}].resource")))
        }
        [] => {
            return Err(FhirError::bad_request(
                "the heartbeat has no device parameter: give the Device (with an identifier) \
                 whose state it reports",
            )
            .at("Parameters.parameter"))
        }
        _ => {
            return Err(FhirError::bad_request(
                "a heartbeat reports on one device: give one device parameter",
            )
            .at("Parameters.parameter"))
        }
    };
    if device_identifier(&device).is_none() {
        return Err(FhirError::bad_request(
            "the Device of a heartbeat needs an identifier with a system and a value, by which \
             the server finds it",
        )
        .at("Parameters.parameter.where(name='device').resource.identifier"));
    }
    let status = match named("status").as_slice() {
        [(index, parameter)] => {
            let code = parameter["valueCode"].as_str().unwrap_or_default();
            if !STATUS_REASONS.iter().any(|(known, _)| *known == code) {
                let codes: Vec<&str> = STATUS_REASONS.iter().map(|(c, _)| *c).collect();
                return Err(FhirError::bad_request(format!(
                    "status {:?} is not a code of {STATUS_REASON_SYSTEM} ({}); send it as valueCode",
                    parameter["valueCode"],
                    codes.join(", ")
                ))
                .at(format!("Parameters.parameter[{index}].valueCode")));
            }
            code.to_string()
        }
        _ => {
            return Err(FhirError::bad_request(
                "the heartbeat needs one status parameter (valueCode online, offline, hw-discon, \
                 transduc-discon, not-ready, standby, paused or off)",
            )
            .at("Parameters.parameter"))
        }
    };
    let detail = named("detail")
        .first()
        .and_then(|(_, p)| p["valueString"].as_str())
        .map(str::to_string);
    let mut metrics = Vec::new();
    for (index, parameter) in named("metric") {
        metrics.push(parse_metric(index, parameter)?);
    }
    Ok(Heartbeat {
        device,
        status,
        detail,
        metrics,
    })
}

fn parse_metric(index: usize, parameter: &Json) -> FhirResult<MetricReport> {
    let parts = parameter["part"].as_array().cloned().unwrap_or_default();
    let at = |name: &str| format!("Parameters.parameter[{index}].part.where(name='{name}')");
    let part = |name: &str| parts.iter().find(|p| p["name"] == name).cloned();
    let code = |name: &str, allowed: &[&str]| -> FhirResult<Option<String>> {
        let Some(part) = part(name) else {
            return Ok(None);
        };
        match part["valueCode"].as_str() {
            Some(code) if allowed.contains(&code) => Ok(Some(code.to_string())),
            _ => Err(FhirError::bad_request(format!(
                "metric {name} must be a valueCode, one of {}",
                allowed.join(", ")
            ))
            .at(at(name))),
        }
    };
    let kind = part("type").map(|p| p["valueCoding"].clone());
    let (system, code_value) = match kind.as_ref().map(|c| (&c["system"], &c["code"])) {
        Some((Json::String(system), Json::String(code))) => (system.clone(), code.clone()),
        _ => {
            return Err(FhirError::bad_request(
                "a metric part needs its type as valueCoding with system and code (the \
                 DeviceMetric.type, e.g. urn:iso:std:iso:11073:10101|150456)",
            )
            .at(at("type")))
        }
    };
    let calibration_time = match part("calibrationTime") {
        None => None,
        Some(p) => match p["valueInstant"]
            .as_str()
            .filter(|t| crate::store::time::parse_fhir_instant(t).is_some())
        {
            Some(time) => Some(time.to_string()),
            None => {
                return Err(FhirError::bad_request(
                    "calibrationTime must be a valueInstant such as 2026-11-24T08:00:00Z",
                )
                .at(at("calibrationTime")))
            }
        },
    };
    Ok(MetricReport {
        system,
        code: code_value,
        operational_status: code(
            "operationalStatus",
            &["on", "off", "standby", "entered-in-error"],
        )?,
        calibration_type: code(
            "calibrationType",
            &["unspecified", "offset", "gain", "two-point"],
        )?,
        calibration_state: code(
            "calibrationState",
            &[
                "not-calibrated",
                "calibration-required",
                "calibrated",
                "unspecified",
            ],
        )?,
        calibration_time,
    })
}

/// The first identifier with a system and a value.
fn device_identifier(device: &Json) -> Option<(String, String)> {
    device["identifier"].as_array()?.iter().find_map(|i| {
        Some((
            i["system"].as_str()?.to_string(),
            i["value"].as_str()?.to_string(),
        ))
    })
}

/// What a heartbeat did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub device_id: String,
    /// The Device was created by this heartbeat.
    pub created: bool,
    /// Its status or status reason changed (a new Device version).
    pub changed: bool,
    pub last_seen: i64,
}

/// Records a heartbeat on behalf of `caller`, in one write transaction.
pub async fn record(
    store: &Store,
    heartbeat: Heartbeat,
    caller: Option<Arc<dyn Access>>,
) -> FhirResult<Recorded> {
    store
        .writer()
        .write_as(caller, move |txn| {
            Box::pin(async move { record_in(txn, &heartbeat).await })
        })
        .await
}

async fn record_in(txn: &WriteTxn<'_>, heartbeat: &Heartbeat) -> FhirResult<Recorded> {
    let caller = txn.caller();
    // The server finds the device itself: among what the caller may read.
    let searching = Sight::of(&caller, Permission::Read);
    let (system, value) = device_identifier(&heartbeat.device)
        .ok_or_else(|| FhirError::bad_request("the Device has no identifier"))?;
    let criteria = super::ingest::token_criteria(Some(&system), &value);
    let found = find_matches(txn, "Device", &criteria, searching).await?;
    let reason = status_reason(&heartbeat.status, heartbeat.detail.as_deref());
    let status = device_status(&heartbeat.status);
    let (device_id, created, changed) = match found.first() {
        Some(found) => {
            let changed = set_status(txn, &found.id, status, &reason).await?;
            (found.id.clone(), false, changed)
        }
        None => {
            let mut content = heartbeat.device.clone();
            if let Some(object) = content.as_object_mut() {
                object.remove("id");
                object.remove("meta");
            }
            content["status"] = json!(status);
            content["statusReason"] = reason;
            let resource = ValidResource::parse(content, Some("Device"))
                .map_err(|e| e.at("Parameters.parameter.where(name='device').resource"))?;
            let id = new_id();
            repository::create_with_id(txn, resource, &id).await?;
            (id, true, true)
        }
    };
    if changed {
        if let Some(operational) = operational_status(&heartbeat.status) {
            set_metrics_operational(txn, &device_id, operational).await?;
        }
    }
    for report in &heartbeat.metrics {
        apply_metric_report(txn, &device_id, &value, report).await?;
    }
    let last_seen = now_micros();
    touch(
        txn,
        &device_id,
        last_seen,
        &heartbeat.status,
        heartbeat.detail.as_deref(),
    )
    .await?;
    Ok(Recorded {
        device_id,
        created,
        changed,
        last_seen,
    })
}

/// Sets a Device's status and reason; writes a new version only when they change.
pub async fn set_status(
    txn: &WriteTxn<'_>,
    device_id: &str,
    status: &str,
    reason: &Json,
) -> FhirResult<bool> {
    let current = crate::store::versions::read_current(txn, "Device", device_id).await?;
    let Some(mut content) = current.and_then(|c| c.content) else {
        return Ok(false);
    };
    if content["status"] == status && &content["statusReason"] == reason {
        return Ok(false);
    }
    content["status"] = json!(status);
    content["statusReason"] = reason.clone();
    let resource = ValidResource::parse(content, Some("Device"))?;
    repository::update(txn, resource, device_id, None).await?;
    Ok(true)
}

/// The DeviceMetrics whose source is the device.
async fn metrics_of(txn: &WriteTxn<'_>, device_id: &str) -> FhirResult<Vec<(String, Json)>> {
    let caller = txn.caller();
    let searching = Sight::of(&caller, Permission::Read);
    let criteria = format!("source=Device/{device_id}&_count=1000");
    let mut metrics = Vec::new();
    for found in find_matches(txn, "DeviceMetric", &criteria, searching).await? {
        let current = crate::store::versions::read_current(txn, "DeviceMetric", &found.id).await?;
        if let Some(content) = current.and_then(|c| c.content) {
            metrics.push((found.id, content));
        }
    }
    Ok(metrics)
}

async fn set_metrics_operational(
    txn: &WriteTxn<'_>,
    device_id: &str,
    operational: &str,
) -> FhirResult<()> {
    for (id, mut content) in metrics_of(txn, device_id).await? {
        if content["operationalStatus"] != operational {
            content["operationalStatus"] = json!(operational);
            let resource = ValidResource::parse(content, Some("DeviceMetric"))?;
            repository::update(txn, resource, &id, None).await?;
        }
    }
    Ok(())
}

/// Applies what a heartbeat says of one metric to its DeviceMetric, created (with the
/// identifier readings of that channel would give it) when the device has none yet.
async fn apply_metric_report(
    txn: &WriteTxn<'_>,
    device_id: &str,
    device_value: &str,
    report: &MetricReport,
) -> FhirResult<()> {
    let existing = metrics_of(txn, device_id)
        .await?
        .into_iter()
        .find(|(_, m)| {
            m["type"]["coding"].as_array().is_some_and(|codings| {
                codings.iter().any(|c| {
                    c["system"] == report.system.as_str() && c["code"] == report.code.as_str()
                })
            })
        });
    let (id, mut content) = match existing {
        Some((id, content)) => (Some(id), content),
        None => (
            None,
            json!({
                "resourceType": "DeviceMetric",
                "identifier": [{
                    "system": METRIC_ID_SYSTEM,
                    // As readings of the channel would name it (`{device}-{code}-{path}`).
                    "value": format!("{device_value}-{}--", report.code),
                }],
                "type": {"coding": [{"system": report.system, "code": report.code}]},
                "source": {"reference": format!("Device/{device_id}")},
                "category": "measurement",
            }),
        ),
    };
    let before = content.clone();
    if let Some(status) = &report.operational_status {
        content["operationalStatus"] = json!(status);
    }
    if report.calibration_state.is_some()
        || report.calibration_type.is_some()
        || report.calibration_time.is_some()
    {
        let mut calibration = json!({});
        if let Some(kind) = &report.calibration_type {
            calibration["type"] = json!(kind);
        }
        if let Some(state) = &report.calibration_state {
            calibration["state"] = json!(state);
        }
        if let Some(time) = &report.calibration_time {
            calibration["time"] = json!(time);
        }
        content["calibration"] = json!([calibration]);
    }
    match id {
        Some(id) if content != before => {
            let resource = ValidResource::parse(content, Some("DeviceMetric"))?;
            repository::update(txn, resource, &id, None).await?;
        }
        Some(_) => {}
        None => {
            let resource = ValidResource::parse(content, Some("DeviceMetric"))?;
            repository::create_with_id(txn, resource, &new_id()).await?;
        }
    }
    Ok(())
}

/// Records that a device was heard of now, in this state.
async fn touch(
    txn: &WriteTxn<'_>,
    device_id: &str,
    at: i64,
    status: &str,
    detail: Option<&str>,
) -> FhirResult<()> {
    let backend = txn.get_database_backend();
    txn.execute_raw(statement(
        backend,
        "INSERT INTO device_presence (device_id, last_seen, status, detail, offline) \
         VALUES (?, ?, ?, ?, ?) ON CONFLICT (device_id) DO UPDATE SET \
         last_seen = excluded.last_seen, status = excluded.status, detail = excluded.detail, \
         offline = excluded.offline",
        vec![
            device_id.into(),
            at.into(),
            status.into(),
            detail.map(str::to_string).into(),
            false.into(),
        ],
    ))
    .await?;
    Ok(())
}

/// What the server knows of a device's presence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presence {
    pub device_id: String,
    pub last_seen: i64,
    /// The state the device last reported.
    pub status: String,
    pub detail: Option<String>,
    /// Marked offline for its silence.
    pub offline: bool,
}

fn presence_from_row(row: &sea_orm::QueryResult) -> FhirResult<Presence> {
    Ok(Presence {
        device_id: row.try_get("", "device_id")?,
        last_seen: row.try_get("", "last_seen")?,
        status: row.try_get("", "status")?,
        detail: row.try_get("", "detail")?,
        offline: row.try_get("", "offline")?,
    })
}

pub async fn presence(
    conn: &impl sea_orm::ConnectionTrait,
    device_id: &str,
) -> FhirResult<Option<Presence>> {
    let row = conn
        .query_one_raw(statement(
            conn.get_database_backend(),
            "SELECT device_id, last_seen, status, detail, offline FROM device_presence \
             WHERE device_id = ?",
            vec![device_id.into()],
        ))
        .await?;
    row.as_ref().map(presence_from_row).transpose()
}

/// The devices that report their state (only those offline, or online, when asked),
/// longest silent first.
pub async fn presences(
    conn: &impl sea_orm::ConnectionTrait,
    offline: Option<bool>,
    limit: u64,
) -> FhirResult<Vec<Presence>> {
    let mut sql =
        String::from("SELECT device_id, last_seen, status, detail, offline FROM device_presence");
    let mut values: Vec<sea_orm::Value> = Vec::new();
    if let Some(offline) = offline {
        sql.push_str(" WHERE offline = ?");
        values.push(offline.into());
    }
    sql.push_str(" ORDER BY last_seen, device_id LIMIT ?");
    values.push((limit as i64).into());
    let rows = conn
        .query_all_raw(statement(conn.get_database_backend(), &sql, values))
        .await?;
    rows.iter().map(presence_from_row).collect()
}

/// A device's health as `Parameters` parts: the Device's status and reason, when it was
/// last heard of, and whether it is offline.
pub fn health_parts(device: &Json, presence: Option<&Presence>) -> Vec<Json> {
    let id = device["id"].as_str().unwrap_or_default();
    let mut parts = vec![
        json!({"name": "device", "valueReference": {"reference": format!("Device/{id}")}}),
        json!({"name": "status", "valueCode": device["status"].as_str().unwrap_or("unknown")}),
    ];
    let reason = &device["statusReason"][0];
    if let Some(code) = reason["coding"][0]["code"].as_str() {
        parts.push(json!({"name": "statusReason", "valueCode": code}));
    }
    if let Some(text) = reason["text"].as_str() {
        parts.push(json!({"name": "detail", "valueString": text}));
    }
    parts.push(json!({"name": "monitored", "valueBoolean": presence.is_some()}));
    if let Some(presence) = presence {
        parts.push(json!({"name": "lastSeen", "valueInstant": instant(presence.last_seen)}));
        parts.push(json!({"name": "online", "valueBoolean": !presence.offline}));
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heartbeat(status: &str) -> Json {
        json!({"resourceType": "Parameters", "parameter": [
            {"name": "device", "resource": {"resourceType": "Device",
                "identifier": [{"system": "urn:example", "value": "ox-1"}]}},
            {"name": "status", "valueCode": status},
            {"name": "detail", "valueString": "probe off the finger"},
            {"name": "metric", "part": [
                {"name": "type", "valueCoding": {"system": "urn:iso:std:iso:11073:10101", "code": "150456"}},
                {"name": "calibrationState", "valueCode": "calibrated"},
                {"name": "calibrationTime", "valueInstant": "2026-11-24T08:00:00Z"}
            ]}
        ]})
    }

    #[test]
    fn reads_a_heartbeat() {
        let parsed = parse_heartbeat(&heartbeat("transduc-discon")).unwrap();
        assert_eq!(parsed.status, "transduc-discon");
        assert_eq!(parsed.detail.as_deref(), Some("probe off the finger"));
        assert_eq!(parsed.metrics[0].code, "150456");
        assert_eq!(
            parsed.metrics[0].calibration_state.as_deref(),
            Some("calibrated")
        );
        assert_eq!(device_status("transduc-discon"), "active");
        assert_eq!(device_status("hw-discon"), "inactive");
    }

    #[test]
    fn refuses_unknown_states_and_devices_without_identifier() {
        let error = parse_heartbeat(&heartbeat("broken")).unwrap_err();
        assert!(
            error.message().contains("not a code of"),
            "{}",
            error.message()
        );
        let mut body = heartbeat("online");
        body["parameter"][0]["resource"]["identifier"] = json!([]);
        let error = parse_heartbeat(&body).unwrap_err();
        assert!(
            error.message().contains("identifier"),
            "{}",
            error.message()
        );
        let mut body = heartbeat("online");
        body["parameter"][3]["part"][2]["valueInstant"] = json!("yesterday");
        assert!(parse_heartbeat(&body).is_err());
    }
}
