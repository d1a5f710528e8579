//! Stores one device message in one transaction: its patient found (or created, when
//! configured) by identifier, its devices found or created by equipment identifier, a
//! DeviceMetric per channel, and its Observations created unless one with the same
//! deterministic identifier exists (a message sent twice stores nothing new). Every
//! resource goes through the repository, so validation, indexing, subscriptions and the
//! caller's access apply as for a REST write.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use serde_json::Value as Json;

use super::mapping::{self, Resolved, METRIC_ID_SYSTEM, OBSERVATION_ID_SYSTEM};
use super::pcd01::Problem;
use super::reading::{DeviceId, DeviceMessage, PatientRef, Reading};
use crate::auth::scopes::Permission;
use crate::error::FhirError;
use crate::fhir::resource::ValidResource;
use crate::search::visibility::{Access, Sight};
use crate::store::matching::find_matches;
use crate::store::repository::{self, new_id};
use crate::store::sql::statement;
use crate::store::{Store, WriteTxn};

/// How messages are stored.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Create a Patient for an identifier no Patient has (else the message is refused).
    pub create_patients: bool,
    /// How far ahead of the server's clock a reading may be (device clocks drift).
    pub future_tolerance: Duration,
}

/// What storing a message did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stored {
    pub patient: Option<String>,
    /// Observations created, and those that were already stored (sent before).
    pub created: usize,
    pub existing: usize,
}

/// Why a message was not stored.
#[derive(Debug, Clone)]
pub enum Refused {
    /// Its content: fixing the message (or the server's maps or patients) fixes it.
    Content(Vec<Problem>),
    /// The server could not store it now (the database); sending it again may work.
    Failure(FhirError),
    /// The caller may not write what the message holds (another patient's data).
    Forbidden(String),
}

impl From<FhirError> for Refused {
    fn from(error: FhirError) -> Refused {
        match error.status {
            StatusCode::FORBIDDEN => Refused::Forbidden(error.message()),
            StatusCode::BAD_REQUEST
            | StatusCode::UNPROCESSABLE_ENTITY
            | StatusCode::PRECONDITION_FAILED
            | StatusCode::NOT_FOUND => {
                Refused::Content(vec![Problem::new(207, None, error.message())])
            }
            _ => Refused::Failure(error),
        }
    }
}

/// Stores `message` on behalf of `caller` (`None`: the server's own adapters).
pub async fn store(
    store: &Store,
    settings: &Settings,
    message: DeviceMessage,
    caller: Option<Arc<dyn Access>>,
) -> Result<Stored, Refused> {
    check_times(&message, settings)?;
    // Mapping and validation run here, in parallel across connections, when the patient
    // and devices are known already (the usual case); the single writer then only stores.
    let prepared = prepare(store, &message, caller.clone()).await?;
    let settings = settings.clone();
    // A content problem fails the job (so nothing of the message is kept); the problems
    // come back through this slot, the job's error only says that there were some.
    let problems: Arc<std::sync::Mutex<Vec<Problem>>> = Arc::default();
    let slot = problems.clone();
    let outcome = store
        .writer()
        .write_as(caller, move |txn| {
            Box::pin(async move {
                let stored = match prepared {
                    Some(prepared) => store_prepared(txn, prepared).await,
                    None => store_in(txn, &settings, &message).await,
                };
                match stored {
                    Ok(stored) => Ok(stored),
                    Err(Refused::Content(found)) => {
                        if let Ok(mut slot) = slot.lock() {
                            *slot = found;
                        }
                        Err(FhirError::new(
                            StatusCode::UNPROCESSABLE_ENTITY,
                            crate::fhir::outcome::IssueCode::Processing,
                            "the device message cannot be stored",
                        ))
                    }
                    Err(Refused::Failure(error)) => Err(error),
                    Err(Refused::Forbidden(why)) => Err(FhirError::new(
                        StatusCode::FORBIDDEN,
                        crate::fhir::outcome::IssueCode::Forbidden,
                        why,
                    )),
                }
            })
        })
        .await;
    let problems = problems
        .lock()
        .map(|mut p| std::mem::take(&mut *p))
        .unwrap_or_default();
    match outcome {
        Ok(stored) => Ok(stored),
        Err(_) if !problems.is_empty() => Err(Refused::Content(problems)),
        Err(error) => Err(Refused::from(error)),
    }
}

/// A reading more than the tolerance ahead of the server's clock is refused: a device
/// whose clock is wrong would otherwise file its data in the future.
fn check_times(message: &DeviceMessage, settings: &Settings) -> Result<(), Refused> {
    let now = crate::store::time::now_micros();
    let limit = now + settings.future_tolerance.as_micros() as i64;
    let mut problems = Vec::new();
    let mut check = |reading: &Reading| {
        let Some(time) = reading.time.as_deref() else {
            return;
        };
        let Some(at) = crate::store::time::parse_fhir_instant(time) else {
            return;
        };
        if at > limit {
            problems.push(Problem::new(
                102,
                reading.origin.as_ref().map(|o| format!("{o}^14")),
                format!(
                    "the reading's time {time} is {}s ahead of the server's clock (at most {}s \
                     allowed): check the device's clock",
                    (at - now) / 1_000_000,
                    settings.future_tolerance.as_secs()
                ),
            ));
        }
    };
    for reading in &message.readings {
        check(reading);
        reading.components.iter().for_each(&mut check);
    }
    match problems.is_empty() {
        true => Ok(()),
        false => Err(Refused::Content(problems)),
    }
}

async fn store_in(
    txn: &WriteTxn<'_>,
    settings: &Settings,
    message: &DeviceMessage,
) -> Result<Stored, Refused> {
    let caller = txn.caller();
    // The server identifies the message's patient and devices itself: what the caller may
    // read is what it may be matched against (a watch's token reads its own patient).
    let searching = Sight::of(&caller, Permission::Read);
    let patient = match &message.patient {
        Some(reference) => Some(find_patient(txn, settings, reference, searching).await?),
        None => None,
    };
    // Devices, parents first.
    let mut devices: HashMap<String, (String, DeviceId)> = HashMap::new();
    let mut pending: Vec<&super::reading::DeviceInfo> = message.devices.iter().collect();
    while !pending.is_empty() {
        let before = pending.len();
        let mut rest = Vec::new();
        for info in pending {
            let parent = match &info.parent {
                Some(key) => match devices.get(key) {
                    Some((id, _)) => Some(id.clone()),
                    None if message.devices.iter().any(|d| d.key == *key) => {
                        rest.push(info);
                        continue;
                    }
                    None => None,
                },
                None => None,
            };
            let id =
                find_or_create_device(txn, info, patient.as_deref(), parent.as_deref(), searching)
                    .await?;
            devices.insert(info.key.clone(), (id, info.identifier.clone()));
        }
        if rest.len() == before {
            return Err(Refused::Content(vec![Problem::new(
                207,
                None,
                "the message's devices are each other's parents",
            )]));
        }
        pending = rest;
    }
    let resolved = Resolved {
        patient: patient.as_deref(),
        devices: &devices,
    };
    // A DeviceMetric per channel of a device.
    let mut metrics: Vec<(String, Json)> = Vec::new();
    let mut seen_metrics = HashSet::new();
    for reading in &message.readings {
        let Some((device_id, device)) = reading.device.as_ref().and_then(|k| devices.get(k)) else {
            continue;
        };
        let identifier = mapping::metric_identifier(reading, device);
        if seen_metrics.insert(identifier.clone()) {
            metrics.push((
                identifier,
                mapping::device_metric(reading, device_id, device),
            ));
        }
    }
    // A caller that may not write DeviceMetrics (a patient's own device: they are in no
    // patient's compartment) sends its readings without them.
    let writes_metrics = !matches!(
        Sight::of(&caller, Permission::Create).visible("DeviceMetric", 0),
        crate::search::visibility::Visible::Nothing
    );
    if writes_metrics {
        create_absent(
            txn,
            "DeviceMetric",
            METRIC_ID_SYSTEM,
            validated("DeviceMetric", metrics)?,
        )
        .await?;
    }
    // The Observations not stored before.
    let mut observations: Vec<(String, Json)> = Vec::new();
    let mut seen = HashSet::new();
    for reading in &message.readings {
        let device = reading
            .device
            .as_ref()
            .and_then(|k| devices.get(k))
            .map(|d| &d.1);
        let identifier = mapping::identifier(reading, device);
        if seen.insert(identifier.clone()) {
            observations.push((identifier, mapping::observation(reading, &resolved)));
        }
    }
    let total = observations.len();
    let created = create_absent(
        txn,
        "Observation",
        OBSERVATION_ID_SYSTEM,
        validated("Observation", observations)?,
    )
    .await?;
    Ok(Stored {
        patient,
        created,
        existing: total - created,
    })
}

async fn find_patient(
    txn: &WriteTxn<'_>,
    settings: &Settings,
    reference: &PatientRef,
    searching: Sight<'_>,
) -> Result<String, Refused> {
    let location = Some("PID^1^3".to_string());
    let (system, value) = match reference {
        PatientRef::Id(id) => {
            return match searching
                .with(Permission::Read)
                .sees(txn, "Patient", id)
                .await?
            {
                true => Ok(id.clone()),
                false => Err(Refused::Content(vec![Problem::new(
                    204,
                    location,
                    format!("Patient/{id} is not known to this server"),
                )])),
            }
        }
        PatientRef::Identifier { system, value } => (system, value),
    };
    let criteria = token_criteria(system.as_deref(), value);
    let matches = find_matches(txn, "Patient", &criteria, searching).await?;
    match matches.as_slice() {
        [one] => Ok(one.id.clone()),
        [] if settings.create_patients => {
            let mut identifier = serde_json::json!({"value": value});
            if let Some(system) = system {
                identifier["system"] = serde_json::json!(system);
            }
            let patient = serde_json::json!({
                "resourceType": "Patient",
                "identifier": [identifier],
                "active": true,
            });
            let resource = ValidResource::parse(patient, Some("Patient"))?;
            let written = repository::create(txn, resource, None).await?;
            Ok(written.resource.map(|r| r.id).unwrap_or_default())
        }
        [] => Err(Refused::Content(vec![Problem::new(
            204,
            location,
            format!(
                "no Patient has the identifier {}{value}: create the Patient first (or start \
                 the server with --device-create-patients), then send the message again or \
                 replay it from the dead letters",
                system.as_deref().map(|s| format!("{s}|")).unwrap_or_default()
            ),
        )])),
        several => Err(Refused::Content(vec![Problem::new(
            205,
            location,
            format!(
                "{} Patients have the identifier {value}: give its assigning authority (PID-3.4) so that one matches",
                several.len()
            ),
        )])),
    }
}

/// Search criteria for an identifier token: `system|value`, or the value alone, escaped
/// (shared by every adapter that finds patients and devices by identifier).
pub(crate) fn token_criteria(system: Option<&str>, value: &str) -> String {
    let escape = |text: &str| {
        text.replace('\\', "\\\\")
            .replace('|', "\\|")
            .replace(',', "\\,")
            .replace('$', "\\$")
    };
    let token = match system {
        Some(system) => format!("{}|{}", escape(system), escape(value)),
        None => escape(value),
    };
    form_urlencoded::Serializer::new(String::new())
        .append_pair("identifier", &token)
        .finish()
}

async fn find_or_create_device(
    txn: &WriteTxn<'_>,
    info: &super::reading::DeviceInfo,
    patient: Option<&str>,
    parent: Option<&str>,
    searching: Sight<'_>,
) -> Result<String, Refused> {
    let criteria = token_criteria(Some(&info.identifier.system), &info.identifier.value);
    let matches = find_matches(txn, "Device", &criteria, searching).await?;
    if let Some(found) = matches.first() {
        // The device now serves this patient: say so, without a new version otherwise.
        if let Some(patient) = patient {
            let current = crate::store::versions::read_current(txn, "Device", &found.id).await?;
            if let Some(mut content) = current.and_then(|c| c.content) {
                let wanted = format!("Patient/{patient}");
                if content["patient"]["reference"].as_str() != Some(wanted.as_str()) {
                    content["patient"] = serde_json::json!({"reference": wanted});
                    let resource = ValidResource::parse(content, Some("Device"))?;
                    repository::update(txn, resource, &found.id, None).await?;
                }
            }
        }
        return Ok(found.id.clone());
    }
    let resource = ValidResource::parse(mapping::device(info, patient, parent), Some("Device"))?;
    let id = new_id();
    repository::create_with_id(txn, resource, &id).await?;
    Ok(id)
}

/// Creates the resources whose identifier (in `system`) no resource of the type has yet;
/// returns how many were created.
async fn create_absent(
    txn: &WriteTxn<'_>,
    resource_type: &str,
    system: &str,
    resources: Vec<(String, ValidResource)>,
) -> Result<usize, Refused> {
    if resources.is_empty() {
        return Ok(0);
    }
    let identifiers: Vec<&str> = resources.iter().map(|(id, _)| id.as_str()).collect();
    // What earlier transactions stored, and (claims) what jobs of this one are storing.
    let existing = committed_identifiers(txn, resource_type, system, &identifiers).await?;
    let mut created = 0;
    for (identifier, resource) in resources {
        if existing.contains(&identifier)
            || !txn
                .claim(format!("{resource_type}|{system}|{identifier}"))
                .await
        {
            continue;
        }
        repository::create_with_id(txn, resource, &new_id()).await?;
        created += 1;
    }
    Ok(created)
}

/// The statement finding which of `identifiers` exist: one equality lookup per identifier
/// (a `UNION ALL`), so each is an index seek whatever the planner believes of the table
/// (on PostgreSQL, before statistics catch up with a fast-growing table, an `IN` list was
/// applied as a filter over every identifier of the type).
fn identifier_lookup(
    resource_type: &str,
    system: &str,
    identifiers: &[&str],
) -> (String, Vec<sea_orm::Value>) {
    let one = "SELECT code FROM search_token WHERE resource_type = ? AND param = 'identifier' \
               AND system = ? AND code = ?";
    let sql = vec![one; identifiers.len()].join(" UNION ALL ");
    let mut values: Vec<sea_orm::Value> = Vec::with_capacity(identifiers.len() * 3);
    for identifier in identifiers {
        values.push(resource_type.into());
        values.push(system.into());
        values.push((*identifier).into());
    }
    (sql, values)
}

/// [`existing_identifiers`] in the writer's transaction, without sending its deferred
/// rows first (the claims account for those).
async fn committed_identifiers(
    txn: &WriteTxn<'_>,
    resource_type: &str,
    system: &str,
    identifiers: &[&str],
) -> Result<HashSet<String>, Refused> {
    let backend = sea_orm::ConnectionTrait::get_database_backend(txn);
    let mut existing: HashSet<String> = HashSet::new();
    for chunk in identifiers.chunks(100) {
        let (sql, values) = identifier_lookup(resource_type, system, chunk);
        for row in txn
            .query_committed(statement(backend, &sql, values))
            .await
            .map_err(FhirError::from)?
        {
            existing.insert(row.try_get::<String>("", "code").map_err(FhirError::from)?);
        }
    }
    Ok(existing)
}

/// Which of `identifiers` (in `system`) resources of the type have.
async fn existing_identifiers(
    conn: &impl sea_orm::ConnectionTrait,
    resource_type: &str,
    system: &str,
    identifiers: &[&str],
) -> Result<HashSet<String>, Refused> {
    let backend = conn.get_database_backend();
    let mut existing: HashSet<String> = HashSet::new();
    for chunk in identifiers.chunks(100) {
        let (sql, values) = identifier_lookup(resource_type, system, chunk);
        for row in conn
            .query_all_raw(statement(backend, &sql, values))
            .await
            .map_err(FhirError::from)?
        {
            existing.insert(row.try_get::<String>("", "code").map_err(FhirError::from)?);
        }
    }
    Ok(existing)
}

/// Validates the resources made from a message; one that is not valid FHIR is the
/// message's problem (a value the profile cannot take), named as such.
fn validated(
    resource_type: &str,
    resources: Vec<(String, Json)>,
) -> Result<Vec<(String, ValidResource)>, Refused> {
    resources
        .into_iter()
        .map(|(identifier, content)| {
            ValidResource::parse(content, Some(resource_type))
                .map(|resource| (identifier, resource))
                .map_err(|e| {
                    Refused::Content(vec![Problem::new(
                        207,
                        None,
                        format!(
                            "the {resource_type} made from the message is not valid FHIR: {}",
                            e.message()
                        ),
                    )])
                })
        })
        .collect()
}

/// A message whose patient and devices exist, mapped and validated ahead of the write.
struct Prepared {
    patient: Option<String>,
    metrics: Vec<(String, ValidResource)>,
    observations: Vec<(String, ValidResource)>,
}

/// Maps and validates a message outside the writer when everything it refers to exists
/// and stays as it is (no patient to create, no device to create or re-assign); `None`
/// sends it the slow way, where the writer does all of it in order.
async fn prepare(
    store: &Store,
    message: &DeviceMessage,
    caller: Option<Arc<dyn Access>>,
) -> Result<Option<Prepared>, Refused> {
    let conn = store.connection();
    let searching = Sight::of(&caller, Permission::Read);
    let patient = match &message.patient {
        Some(PatientRef::Id(_)) | None => return Ok(None),
        Some(PatientRef::Identifier { system, value }) => {
            let criteria = token_criteria(system.as_deref(), value);
            match find_matches(conn, "Patient", &criteria, searching)
                .await?
                .as_slice()
            {
                [one] => one.id.clone(),
                _ => return Ok(None),
            }
        }
    };
    let mut devices: HashMap<String, (String, DeviceId)> = HashMap::new();
    for info in &message.devices {
        let criteria = token_criteria(Some(&info.identifier.system), &info.identifier.value);
        let Some(found) = find_matches(conn, "Device", &criteria, searching)
            .await?
            .into_iter()
            .next()
        else {
            return Ok(None);
        };
        let current = crate::store::versions::read_current(conn, "Device", &found.id).await?;
        let assigned = current
            .and_then(|c| c.content)
            .and_then(|c| c["patient"]["reference"].as_str().map(str::to_string));
        if assigned.as_deref() != Some(format!("Patient/{patient}").as_str()) {
            return Ok(None);
        }
        devices.insert(info.key.clone(), (found.id, info.identifier.clone()));
    }
    let resolved = Resolved {
        patient: Some(&patient),
        devices: &devices,
    };
    let writes_metrics = !matches!(
        Sight::of(&caller, Permission::Create).visible("DeviceMetric", 0),
        crate::search::visibility::Visible::Nothing
    );
    let mut metrics: Vec<(String, Json)> = Vec::new();
    let mut seen_metrics = HashSet::new();
    for reading in message.readings.iter().filter(|_| writes_metrics) {
        let Some((device_id, device)) = reading.device.as_ref().and_then(|k| devices.get(k)) else {
            continue;
        };
        let identifier = mapping::metric_identifier(reading, device);
        if seen_metrics.insert(identifier.clone()) {
            metrics.push((
                identifier,
                mapping::device_metric(reading, device_id, device),
            ));
        }
    }
    // Channels seen before need no new DeviceMetric (checked again by the writer).
    let known: Vec<&str> = metrics.iter().map(|(id, _)| id.as_str()).collect();
    let existing = existing_identifiers(conn, "DeviceMetric", METRIC_ID_SYSTEM, &known).await?;
    metrics.retain(|(id, _)| !existing.contains(id));
    let mut observations: Vec<(String, Json)> = Vec::new();
    let mut seen = HashSet::new();
    for reading in &message.readings {
        let device = reading
            .device
            .as_ref()
            .and_then(|k| devices.get(k))
            .map(|d| &d.1);
        let identifier = mapping::identifier(reading, device);
        if seen.insert(identifier.clone()) {
            observations.push((identifier, mapping::observation(reading, &resolved)));
        }
    }
    Ok(Some(Prepared {
        patient: Some(patient),
        metrics: validated("DeviceMetric", metrics)?,
        observations: validated("Observation", observations)?,
    }))
}

async fn store_prepared(txn: &WriteTxn<'_>, prepared: Prepared) -> Result<Stored, Refused> {
    create_absent(txn, "DeviceMetric", METRIC_ID_SYSTEM, prepared.metrics).await?;
    let total = prepared.observations.len();
    let created = create_absent(
        txn,
        "Observation",
        OBSERVATION_ID_SYSTEM,
        prepared.observations,
    )
    .await?;
    Ok(Stored {
        patient: prepared.patient,
        created,
        existing: total - created,
    })
}
