//! Stores one DICOM instance in one write transaction: the Patient and the Device found
//! by identifier (created when absent), the ImagingStudy read, merged with the instance
//! and written only when that changed it (a new version only on change), and the dose
//! Observations created unless stored before.
//!
//! Concurrency: within a server, the writer runs jobs one after the other and the read
//! of the study happens inside the job, so two instances of one study arriving at once
//! are merged one after the other. Several servers on one PostgreSQL database each have
//! a writer, so the job first takes transaction-level advisory locks on the study, the
//! patient and the device identifiers; when another server holds one, the job gives up
//! at once (never holding up this server's writer) and is tried again shortly after.

use crate::devices::ingest::token_criteria;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use chrono::FixedOffset;
use sea_orm::{ConnectionTrait, DbBackend};
use serde_json::{json, Value as Json};

use super::instance::Instance;
use super::mapping::{self, Refs, DEVICE_ID_SYSTEM, DICOM_UID_SYSTEM, DOSE_ID_SYSTEM};
use crate::auth::scopes::Permission;
use crate::devices::reading::PatientRef;
use crate::error::{FhirError, FhirResult};
use crate::fhir::outcome::IssueCode;
use crate::fhir::resource::ValidResource;
use crate::search::visibility::{Access, Sight};
use crate::store::matching::find_matches;
use crate::store::repository::{self, new_id};
use crate::store::sql::statement;
use crate::store::{Store, WriteTxn};

/// How instances are stored.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// The zone of DICOM times sent without Timezone Offset From UTC (0008,0201).
    pub zone: FixedOffset,
}

/// What storing an instance did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stored {
    pub study: String,
    /// The study was created by this instance, or changed by it (a new version).
    pub study_created: bool,
    pub study_updated: bool,
    pub patient: String,
    pub patient_created: bool,
    pub device: Option<String>,
    pub device_created: bool,
    /// The ids of the instance's dose Observations, and how many of them are new.
    pub observations: Vec<String>,
    pub observations_created: usize,
}

/// How long a job waits, in all, for locks another server holds.
const LOCK_PATIENCE: Duration = Duration::from_secs(20);

/// Stores `instance` on behalf of `caller` (`None`: the server's own SCP). Errors are
/// the server's usual ones: 422 for an instance that cannot become FHIR (what is wrong
/// in it), 403 when the caller may not write what it holds, 5xx for the database.
pub async fn store(
    store: &Store,
    settings: Settings,
    instance: Arc<Instance>,
    caller: Option<Arc<dyn Access>>,
) -> FhirResult<Stored> {
    let started = std::time::Instant::now();
    let mut pause = Duration::from_millis(10);
    loop {
        let busy = Arc::new(AtomicBool::new(false));
        let flag = busy.clone();
        let job_instance = instance.clone();
        let outcome = store
            .writer()
            .write_as(caller.clone(), move |txn| {
                Box::pin(async move {
                    if !try_lock(txn, &lock_keys(&job_instance)).await? {
                        flag.store(true, Ordering::SeqCst);
                        return Err(FhirError::conflict(
                            "another server is storing an instance of the same study",
                        ));
                    }
                    store_in(txn, settings, &job_instance).await
                })
            })
            .await;
        if !busy.load(Ordering::SeqCst) {
            return outcome;
        }
        if started.elapsed() > LOCK_PATIENCE {
            return Err(FhirError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                IssueCode::Timeout,
                format!(
                    "the study {} is being written by another server instance for more than {}s; send the instance again later",
                    instance.study_instance_uid,
                    LOCK_PATIENCE.as_secs()
                ),
            ));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(500));
    }
}

/// What a job locks: the study (which covers its Observations) and the identifiers of
/// what it may create.
fn lock_keys(instance: &Instance) -> Vec<String> {
    let mut keys = vec![format!(
        "ImagingStudy|{DICOM_UID_SYSTEM}|{}",
        mapping::study_identifier(instance)
    )];
    if let Some(PatientRef::Identifier { system, value }) = mapping::patient_identifier(instance) {
        keys.push(format!("Patient|{}|{value}", system.unwrap_or_default()));
    }
    if let Some(device) = mapping::device_identifier(instance) {
        keys.push(format!("Device|{}|{}", device.system, device.value));
    }
    keys
}

/// A lock key as the 64-bit number PostgreSQL's advisory locks take: the start of its
/// SHA-256, the same in every server whatever its build.
fn lock_number(key: &str) -> i64 {
    let digest = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.as_ref()[..8]);
    i64::from_be_bytes(first)
}

/// PostgreSQL: takes the transaction-level advisory locks of `keys` without waiting;
/// false when another transaction holds one. The statement runs inside the job's
/// savepoint, so a job that fails releases what it took. SQLite has one writer for the
/// database: nothing to take.
async fn try_lock(txn: &WriteTxn<'_>, keys: &[String]) -> FhirResult<bool> {
    let backend = txn.get_database_backend();
    if backend != DbBackend::Postgres || keys.is_empty() {
        return Ok(true);
    }
    let calls = vec!["pg_try_advisory_xact_lock(?)"; keys.len()].join(" AND ");
    let values = keys.iter().map(|k| lock_number(k).into()).collect();
    let rows = txn
        .query_changing(statement(
            backend,
            &format!("SELECT ({calls}) AS granted"),
            values,
        ))
        .await?;
    Ok(rows
        .first()
        .and_then(|row| row.try_get::<bool>("", "granted").ok())
        .unwrap_or(false))
}

/// A resource made from the instance that is not valid FHIR is the instance's problem
/// (a value FHIR cannot take), named as such.
fn valid(resource_type: &str, content: Json) -> FhirResult<ValidResource> {
    ValidResource::parse(content, Some(resource_type)).map_err(|e| {
        FhirError::unprocessable(
            IssueCode::Processing,
            format!(
                "the {resource_type} made from the DICOM instance is not valid FHIR: {}",
                e.message()
            ),
        )
    })
}

async fn store_in(
    txn: &WriteTxn<'_>,
    settings: Settings,
    instance: &Instance,
) -> FhirResult<Stored> {
    // Finding what the instance names (its patient, device, study, Observations) is the
    // server's own lookup, not the caller's search: an uploader allowed to create and
    // update but not to search (the agent's `system/ImagingStudy.cru`) must find the
    // study it adds to, or it would start a duplicate. What the job then writes is
    // checked against the caller's access as every write is (403 for a study or patient
    // that is not the caller's to change).
    let searching = Sight::of(&None, Permission::Search);
    let (patient, patient_created) = find_or_create_patient(txn, instance, searching).await?;
    let (device, device_created) = match mapping::device(instance) {
        Some(content) => {
            let (id, created) = find_or_create_device(txn, content, searching).await?;
            (Some(id), created)
        }
        None => (None, false),
    };
    let refs = Refs {
        patient: &patient,
        device: device.as_deref(),
        study: None,
    };
    // The study: read inside this job, so the merge starts from the latest version.
    let criteria = token_criteria(Some(DICOM_UID_SYSTEM), &mapping::study_identifier(instance));
    let matches = find_matches(txn, "ImagingStudy", &criteria, searching).await?;
    let (study, study_created, study_updated) = match matches.as_slice() {
        [] => {
            let content = mapping::merge(None, instance, &refs, settings.zone);
            let id = new_id();
            repository::create_with_id(txn, valid("ImagingStudy", content)?, &id).await?;
            (id, true, false)
        }
        [one] => {
            let current = crate::store::versions::read_current(txn, "ImagingStudy", &one.id)
                .await?
                .and_then(|c| c.content.map(|content| (c.version_id, content)));
            let Some((version, content)) = current else {
                return Err(FhirError::internal("a matched ImagingStudy vanished"));
            };
            let merged = mapping::merge(Some(&content), instance, &refs, settings.zone);
            let changed = merged != content;
            if changed {
                repository::update(
                    txn,
                    valid("ImagingStudy", merged)?,
                    &one.id,
                    Some(version),
                )
                .await?;
            }
            (one.id.clone(), false, changed)
        }
        several => {
            return Err(FhirError::unprocessable(
                IssueCode::MultipleMatches,
                format!(
                    "{} ImagingStudy resources have the identifier {DICOM_UID_SYSTEM}|{}; merge or delete all but one",
                    several.len(),
                    mapping::study_identifier(instance)
                ),
            ))
        }
    };
    // The dose Observations not stored before.
    let refs = Refs {
        study: Some(&study),
        ..refs
    };
    let mut observations = Vec::new();
    let mut observations_created = 0;
    for (identifier, content) in mapping::dose_observations(instance, &refs, settings.zone) {
        let criteria = token_criteria(Some(DOSE_ID_SYSTEM), &identifier);
        let found = find_matches(txn, "Observation", &criteria, searching).await?;
        match found.first() {
            Some(existing) => observations.push(existing.id.clone()),
            None => {
                let id = new_id();
                repository::create_with_id(txn, valid("Observation", content)?, &id).await?;
                observations.push(id);
                observations_created += 1;
            }
        }
    }
    Ok(Stored {
        study,
        study_created,
        study_updated,
        patient,
        patient_created,
        device,
        device_created,
        observations,
        observations_created,
    })
}

/// The instance's patient by identifier; created from the instance's patient module
/// when no Patient has it (an imaging study must have a subject, and the instance says
/// who it is).
async fn find_or_create_patient(
    txn: &WriteTxn<'_>,
    instance: &Instance,
    searching: Sight<'_>,
) -> FhirResult<(String, bool)> {
    let Some(PatientRef::Identifier { system, value }) = mapping::patient_identifier(instance)
    else {
        return Err(FhirError::unprocessable(
            IssueCode::Required,
            "the instance has no Patient ID (0010,0020): its ImagingStudy needs a patient; \
             set the Patient ID at the modality (from the worklist) and send it again",
        ));
    };
    let criteria = token_criteria(system.as_deref(), &value);
    let matches = find_matches(txn, "Patient", &criteria, searching).await?;
    match matches.as_slice() {
        [one] => Ok((one.id.clone(), false)),
        [] => {
            let content = mapping::patient(instance)
                .ok_or_else(|| FhirError::internal("a patient identifier without a patient"))?;
            let id = new_id();
            repository::create_with_id(txn, valid("Patient", content)?, &id).await?;
            Ok((id, true))
        }
        several => Err(FhirError::unprocessable(
            IssueCode::MultipleMatches,
            format!(
                "{} Patients have the identifier {}{value}: give the Issuer of Patient ID \
                 (0010,0021) as an OID so that one matches",
                several.len(),
                system.map(|s| format!("{s}|")).unwrap_or_default()
            ),
        )),
    }
}

/// The modality's Device by identifier: created when absent; when found, updated only
/// if what the instance says of it changed (a software upgrade, a new station name).
/// `status` is left alone: device health keeps it.
async fn find_or_create_device(
    txn: &WriteTxn<'_>,
    content: Json,
    searching: Sight<'_>,
) -> FhirResult<(String, bool)> {
    let value = content["identifier"][0]["value"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let criteria = token_criteria(Some(DEVICE_ID_SYSTEM), &value);
    let matches = find_matches(txn, "Device", &criteria, searching).await?;
    let Some(found) = matches.first() else {
        let id = new_id();
        repository::create_with_id(txn, valid("Device", content)?, &id).await?;
        return Ok((id, true));
    };
    let current = crate::store::versions::read_current(txn, "Device", &found.id).await?;
    if let Some((version, existing)) =
        current.and_then(|c| c.content.map(|content| (c.version_id, content)))
    {
        let mut updated = existing.clone();
        if let (Some(target), Json::Object(fresh)) = (updated.as_object_mut(), content) {
            for (key, value) in fresh {
                if !matches!(key.as_str(), "status" | "identifier" | "resourceType") {
                    target.insert(key, value);
                }
            }
        }
        if updated != existing {
            repository::update(txn, valid("Device", updated)?, &found.id, Some(version)).await?;
        }
    }
    Ok((found.id.clone(), false))
}

/// A fault seen by the SCP (an instance refused, an association aborted): recorded as a
/// DetectedIssue authored by and implicating the modality's Device, as the edge agent
/// records the faults of its devices. `key` makes it idempotent (the same refused
/// instance sent again is one issue).
pub struct Fault<'a> {
    pub instance: &'a Instance,
    /// A short code of [`crate::agent::bundle::FAULT_CODE_SYSTEM`].
    pub code: &'a str,
    pub detail: String,
    pub key: String,
}

/// Records `fault` (as the server, whatever the caller was); `Ok(None)` when the
/// instance names no device to attach it to.
pub async fn record_fault(store: &Store, fault: Fault<'_>) -> FhirResult<Option<String>> {
    let Some(device) = mapping::device(fault.instance) else {
        return Ok(None);
    };
    let code = fault.code.to_string();
    let detail = fault.detail.clone();
    let key = fault.key.clone();
    let patient = mapping::patient_identifier(fault.instance);
    store
        .writer()
        .write(move |txn| {
            Box::pin(async move {
                let searching = Sight::of(&None, Permission::Search);
                let (device, _) = find_or_create_device(txn, device, searching).await?;
                let criteria =
                    token_criteria(Some(crate::agent::bundle::FAULT_ID_SYSTEM), &key);
                if let Some(existing) = find_matches(txn, "DetectedIssue", &criteria, searching)
                    .await?
                    .first()
                {
                    return Ok(Some(existing.id.clone()));
                }
                let now = chrono::Utc::now()
                    .format("%Y-%m-%dT%H:%M:%S%.3fZ")
                    .to_string();
                let mut issue = json!({
                    "resourceType": "DetectedIssue",
                    "identifier": [{"system": crate::agent::bundle::FAULT_ID_SYSTEM, "value": key}],
                    "status": "final",
                    "code": {
                        "coding": [{"system": crate::agent::bundle::FAULT_CODE_SYSTEM, "code": code}],
                        "text": detail,
                    },
                    "severity": "moderate",
                    "identifiedDateTime": now,
                    "author": {"reference": format!("Device/{device}")},
                    "implicated": [{"reference": format!("Device/{device}")}],
                    "detail": detail,
                });
                // The patient, when one already has the instance's identifier (a fault is
                // no reason to create one).
                if let Some(PatientRef::Identifier { system, value }) = patient {
                    let criteria = token_criteria(system.as_deref(), &value);
                    if let [one] = find_matches(txn, "Patient", &criteria, searching)
                        .await?
                        .as_slice()
                    {
                        issue["patient"] = json!({"reference": format!("Patient/{}", one.id)});
                    }
                }
                let id = new_id();
                repository::create_with_id(txn, valid("DetectedIssue", issue)?, &id).await?;
                Ok(Some(id))
            })
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_numbers_are_stable() {
        assert_eq!(lock_number("a"), lock_number("a"));
        assert_ne!(lock_number("a"), lock_number("b"));
        // SHA-256("a") starts ca978112ca1bbdca.
        assert_eq!(
            lock_number("a"),
            i64::from_be_bytes([0xca, 0x97, 0x81, 0x12, 0xca, 0x1b, 0xbd, 0xca])
        );
    }

    #[test]
    fn identifiers_are_escaped_in_criteria() {
        assert_eq!(
            token_criteria(Some("urn:dicom:uid"), "urn:oid:1.2"),
            "identifier=urn%3Adicom%3Auid%7Curn%3Aoid%3A1.2"
        );
        assert_eq!(token_criteria(None, "a|b"), "identifier=a%5C%7Cb");
    }
}
