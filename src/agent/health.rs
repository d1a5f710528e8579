//! What the agent knows of its devices' state (online, hw-discon, transduc-discon,
//! not-ready…), sent to the server's `Device/$heartbeat` at once when it changes and then
//! every heartbeat interval, so that the server can tell a silent device from a working
//! one. A heartbeat is about now: it is not queued (an old one would say nothing), the
//! next one replaces it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value as Json};
use tokio::sync::{watch, Notify};

use super::credentials::Credentials;
use crate::devices::mapping;
use crate::devices::reading::{DeviceInfo, PatientRef};

#[derive(Clone)]
struct DeviceState {
    device: DeviceInfo,
    patient: Option<PatientRef>,
    /// A code of http://terminology.hl7.org/CodeSystem/device-status-reason.
    status: String,
    detail: Option<String>,
    /// Sent to the server since it last changed.
    sent: bool,
}

/// The devices' states, shared by the sources (which set them) and the sender.
#[derive(Clone, Default)]
pub struct Health {
    states: Arc<Mutex<HashMap<String, DeviceState>>>,
    changed: Arc<Notify>,
}

impl Health {
    /// Records a device's state; a change is sent at once.
    pub fn set(
        &self,
        device: &DeviceInfo,
        patient: Option<&PatientRef>,
        status: &str,
        detail: Option<&str>,
    ) {
        let key = format!("{}|{}", device.identifier.system, device.identifier.value);
        let Ok(mut states) = self.states.lock() else {
            return;
        };
        let changed = states
            .get(&key)
            .is_none_or(|s| s.status != status || s.detail.as_deref() != detail);
        if changed {
            states.insert(
                key,
                DeviceState {
                    device: device.clone(),
                    patient: patient.cloned(),
                    status: status.to_string(),
                    detail: detail.map(str::to_string),
                    sent: false,
                },
            );
            self.changed.notify_one();
        }
    }

    /// The state last set for a device (for tests and logs).
    pub fn status(&self, device: &DeviceInfo) -> Option<String> {
        let key = format!("{}|{}", device.identifier.system, device.identifier.value);
        self.states
            .lock()
            .ok()
            .and_then(|s| s.get(&key).map(|d| d.status.clone()))
    }

    fn snapshot(&self, unsent_only: bool) -> Vec<(String, DeviceState)> {
        self.states
            .lock()
            .map(|s| {
                s.iter()
                    .filter(|(_, d)| !unsent_only || !d.sent)
                    .map(|(k, d)| (k.clone(), d.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn mark_sent(&self, key: &str, state: &DeviceState) {
        if let Ok(mut states) = self.states.lock() {
            if let Some(current) = states.get_mut(key) {
                // Unless it changed again meanwhile.
                if current.status == state.status && current.detail == state.detail {
                    current.sent = true;
                }
            }
        }
    }
}

/// The Parameters of a heartbeat.
pub fn heartbeat_parameters(
    device: &DeviceInfo,
    patient: Option<&PatientRef>,
    status: &str,
    detail: Option<&str>,
) -> Json {
    // Only a plain reference: the server creates the Device from this when it does not
    // know it yet, and conditional references are for transactions (the readings'
    // Bundle sets the patient found by identifier).
    let patient = match patient {
        Some(PatientRef::Id(id)) => Some(format!("Patient/{id}")),
        _ => None,
    };
    let mut parameters = vec![
        json!({"name": "device", "resource": mapping::device(device, patient.as_deref(), None)}),
        json!({"name": "status", "valueCode": status}),
    ];
    if let Some(detail) = detail {
        parameters.push(json!({"name": "detail", "valueString": detail}));
    }
    json!({"resourceType": "Parameters", "parameter": parameters})
}

pub struct Sender {
    pub http: reqwest::Client,
    pub server: String,
    pub credentials: Option<Arc<Credentials>>,
    pub health: Health,
    pub interval: Duration,
}

impl Sender {
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut last_round = tokio::time::Instant::now();
        loop {
            let all = last_round.elapsed() >= self.interval;
            if all {
                last_round = tokio::time::Instant::now();
            }
            for (key, state) in self.health.snapshot(!all) {
                match self.send(&state).await {
                    Ok(()) => self.health.mark_sent(&key, &state),
                    Err(why) => tracing::warn!(
                        device = %state.device.identifier.value,
                        "heartbeat not delivered (sent again later): {why}"
                    ),
                }
            }
            // Unsent changes are tried again within a few seconds.
            let pending = !self.health.snapshot(true).is_empty();
            let pause = if pending {
                Duration::from_secs(2).min(self.interval)
            } else {
                self.interval.saturating_sub(last_round.elapsed())
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = self.health.changed.notified() => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    async fn send(&self, state: &DeviceState) -> Result<(), String> {
        let body = heartbeat_parameters(
            &state.device,
            state.patient.as_ref(),
            &state.status,
            state.detail.as_deref(),
        );
        let mut request = self
            .http
            .post(format!("{}/Device/$heartbeat", self.server))
            .header("Content-Type", "application/fhir+json")
            .timeout(Duration::from_secs(30))
            .json(&body);
        if let Some(credentials) = &self.credentials {
            request = request.bearer_auth(
                credentials
                    .token(&self.http)
                    .await
                    .map_err(|e| e.to_string())?,
            );
        }
        let response = request.send().await.map_err(|e| e.to_string())?;
        let status = response.status();
        if status == reqwest::StatusCode::UNAUTHORIZED {
            if let Some(credentials) = &self.credentials {
                credentials.forget().await;
            }
        }
        if status.is_success() {
            Ok(())
        } else {
            Err(format!(
                "{status}: {}",
                response.text().await.unwrap_or_default()
            ))
        }
    }
}
