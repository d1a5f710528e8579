//! Where sources put what they read: the queue (readings and faults, as transaction
//! entries) and the devices' state ([`Health`]).

use std::sync::Arc;

use serde_json::json;
use tokio::sync::Notify;

use super::bundle::{self, Fault};
use super::health::Health;
use super::queue::{Queue, QueueError};
use crate::devices::reading::{DeviceInfo, DeviceMessage, PatientRef};

#[derive(Clone)]
pub struct Sink {
    pub queue: Arc<Queue>,
    /// Wakes the uploader.
    pub pushed: Arc<Notify>,
    pub health: Health,
}

impl Sink {
    /// Queues a message's readings; `patient` (the source's) overrides the message's.
    pub async fn readings(
        &self,
        source: &str,
        message: &DeviceMessage,
        patient: Option<&PatientRef>,
    ) {
        let entries = bundle::message_entries(message, patient);
        self.push(source, json!({"kind": "entries", "entries": entries}))
            .await;
    }

    /// Queues the readings of several messages as one item (a file's, taken whole); the
    /// caller decides what to do when the queue cannot take them.
    pub async fn all_readings(
        &self,
        source: &str,
        messages: &[DeviceMessage],
    ) -> Result<(), QueueError> {
        let mut seen = std::collections::HashSet::new();
        let entries: Vec<serde_json::Value> = messages
            .iter()
            .flat_map(|message| bundle::message_entries(message, None))
            .filter(|entry| seen.insert(entry["fullUrl"].as_str().unwrap_or_default().to_string()))
            .collect();
        self.queue
            .push(source, &json!({"kind": "entries", "entries": entries}))
            .await?;
        self.pushed.notify_one();
        Ok(())
    }

    /// Queues a fault as a DetectedIssue on the device.
    pub async fn fault(
        &self,
        source: &str,
        device: &DeviceInfo,
        patient: Option<&PatientRef>,
        code: &str,
        detail: &str,
        time: &str,
    ) {
        let entries = bundle::fault_entries(&Fault {
            device,
            code,
            detail,
            time,
            patient,
        });
        self.push(source, json!({"kind": "entries", "entries": entries}))
            .await;
    }

    /// Queues a file (a DICOM instance, its pixel data removed).
    pub async fn file(&self, source: &str, kind: &str, bytes: &[u8]) -> Result<(), QueueError> {
        use base64::Engine;
        let file = base64::engine::general_purpose::STANDARD.encode(bytes);
        self.queue
            .push(source, &json!({"kind": kind, "file": file}))
            .await?;
        self.pushed.notify_one();
        Ok(())
    }

    async fn push(&self, source: &str, payload: serde_json::Value) {
        match self.queue.push(source, &payload).await {
            Ok(_) => self.pushed.notify_one(),
            // Nothing else can be done with a reading that cannot be kept: it is said
            // loudly, and counted by the operator's logs; the queue's bound is theirs.
            Err(error) => tracing::error!(source, "a reading is lost: {error}"),
        }
    }
}
