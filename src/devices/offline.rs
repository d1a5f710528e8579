//! Marks silent devices offline: a device that sent heartbeats and then nothing for the
//! configured silence gets `Device.status` inactive with reason `offline` (which fires the
//! "Device status changed" topic) and a DetectedIssue saying since when it is silent.
//!
//! Several server instances may watch the same database: the presence row is flipped
//! with a conditional UPDATE (still online, still last seen at the time read), and only the
//! instance whose UPDATE changed the row writes the Device and the DetectedIssue, in the
//! same transaction, so a silence is reported once.

use std::time::Duration;

use sea_orm::ConnectionTrait;
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::health::{self, set_status};
use super::mapping::{FAULT_CODE_SYSTEM, FAULT_ID_SYSTEM};
use crate::error::FhirResult;
use crate::fhir::resource::ValidResource;
use crate::store::repository::{self, new_id};
use crate::store::sql::statement;
use crate::store::time::{instant, now_micros};
use crate::store::{Store, WriteTxn};

/// Silent devices handled per pass (the rest on the next one).
const BATCH: i64 = 200;

/// Watches for silent devices until `stop` changes.
pub fn start(store: Store, silence: Duration, mut stop: watch::Receiver<bool>) -> JoinHandle<()> {
    // Often enough that a device is reported within a few percent of the silence.
    let every = (silence / 10).clamp(Duration::from_millis(200), Duration::from_secs(15));
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.changed() => return,
            }
            if let Err(error) = mark_silent(&store, silence).await {
                tracing::warn!(error = %error.message(), "cannot check for silent devices");
            }
        }
    })
}

/// Marks the devices silent for longer than `silence` offline; returns their ids.
pub async fn mark_silent(store: &Store, silence: Duration) -> FhirResult<Vec<String>> {
    let cutoff = now_micros() - silence.as_micros() as i64;
    store
        .writer()
        .write(move |txn| Box::pin(async move { mark_silent_in(txn, cutoff).await }))
        .await
}

async fn mark_silent_in(txn: &WriteTxn<'_>, cutoff: i64) -> FhirResult<Vec<String>> {
    let backend = txn.get_database_backend();
    let rows = txn
        .query_changing(statement(
            backend,
            "SELECT device_id, last_seen FROM device_presence WHERE offline = ? AND last_seen < ? \
             ORDER BY last_seen LIMIT ?",
            vec![false.into(), cutoff.into(), BATCH.into()],
        ))
        .await?;
    let mut marked = Vec::new();
    for row in rows {
        let device_id: String = row.try_get("", "device_id")?;
        let last_seen: i64 = row.try_get("", "last_seen")?;
        let flipped = txn
            .execute_raw(statement(
                backend,
                "UPDATE device_presence SET offline = ? WHERE device_id = ? AND offline = ? \
                 AND last_seen = ?",
                vec![
                    true.into(),
                    device_id.as_str().into(),
                    false.into(),
                    last_seen.into(),
                ],
            ))
            .await?
            .rows_affected();
        if flipped != 1 {
            continue;
        }
        let current = crate::store::versions::read_current(txn, "Device", &device_id).await?;
        let Some(device) = current.and_then(|c| c.content) else {
            // The Device was deleted: nothing to watch any more.
            txn.execute_raw(statement(
                backend,
                "DELETE FROM device_presence WHERE device_id = ?",
                vec![device_id.as_str().into()],
            ))
            .await?;
            continue;
        };
        let silent_for = (now_micros() - last_seen) / 1_000_000;
        let detail = format!(
            "no heartbeat for {silent_for} s (last seen {})",
            instant(last_seen)
        );
        let reason = health::status_reason("offline", Some(&detail));
        set_status(txn, &device_id, health::device_status("offline"), &reason).await?;
        let mut issue = json!({
            "resourceType": "DetectedIssue",
            "identifier": [{
                "system": FAULT_ID_SYSTEM,
                "value": format!("{device_id}-offline-{last_seen}"),
            }],
            "status": "final",
            "code": {
                "coding": [{"system": FAULT_CODE_SYSTEM, "code": "offline"}],
                "text": "the device is silent",
            },
            "severity": "moderate",
            "identifiedDateTime": instant(now_micros()),
            "implicated": [{"reference": format!("Device/{device_id}")}],
            "detail": detail,
        });
        if let Some(patient) = device["patient"]["reference"].as_str() {
            issue["patient"] = json!({"reference": patient});
        }
        let resource = ValidResource::parse(issue, Some("DetectedIssue"))?;
        repository::create_with_id(txn, resource, &new_id()).await?;
        tracing::info!(device = %device_id, %detail, "device offline");
        marked.push(device_id);
    }
    Ok(marked)
}
