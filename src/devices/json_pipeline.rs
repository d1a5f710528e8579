//! One JSON telemetry payload, through its template, into the store: one transaction per
//! message of the payload. A payload that cannot be read or stored is kept as a dead
//! letter; replaying it is safe, since what was stored before is recognised by its
//! deterministic identifiers. Used by `POST /ingest/{template}` and the MQTT subscriber.

use std::sync::Arc;

use serde_json::Value as Json;

use super::dead_letters;
use super::ingest::{self, Refused};
use super::pcd01::Problem;
use super::template::{self, Templates};
use crate::metrics::{Adapter, DeviceOutcome, Metrics};
use crate::search::visibility::Access;
use crate::store::Store;

#[derive(Clone)]
pub struct JsonAdapter {
    pub store: Store,
    pub metrics: Arc<Metrics>,
    pub ingest: ingest::Settings,
    pub templates: Arc<Templates>,
}

/// What a payload came to.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub messages: usize,
    pub created: usize,
    pub existing: usize,
    pub problems: Vec<Problem>,
    /// The problem is the server's (the database), not the payload's.
    pub failed: bool,
    /// The template is unknown.
    pub unknown_template: bool,
    /// The caller may not write what the payload holds (not kept: a replay by someone
    /// else must not store it).
    pub forbidden: bool,
    /// The dead letter keeping the payload, when it was refused.
    pub dead_letter: Option<String>,
}

impl JsonAdapter {
    /// Handles a payload for `template_name`, on behalf of `caller` (`None`: the server's
    /// own adapters, such as MQTT).
    pub async fn handle(
        &self,
        adapter: Adapter,
        template_name: &str,
        payload: &[u8],
        caller: Option<Arc<dyn Access>>,
        replaying: bool,
    ) -> Outcome {
        let mut outcome = self.run(template_name, payload, caller.clone()).await;
        let result = if outcome.problems.is_empty() {
            DeviceOutcome::Stored
        } else if outcome.failed {
            DeviceOutcome::Failed
        } else {
            DeviceOutcome::Refused
        };
        self.metrics
            .device_message(adapter, result, outcome.created);
        if !outcome.problems.is_empty() && !replaying && !outcome.forbidden {
            let text = String::from_utf8_lossy(payload);
            match dead_letters::keep(
                &self.store,
                adapter.name(),
                Some(template_name),
                &text,
                &outcome.problems,
                caller.as_deref(),
            )
            .await
            {
                Ok(id) => outcome.dead_letter = Some(id),
                Err(error) => tracing::error!(
                    "a refused {} payload could not be kept as a dead letter: {error}",
                    adapter.name()
                ),
            }
        }
        outcome
    }

    async fn run(
        &self,
        template_name: &str,
        payload: &[u8],
        caller: Option<Arc<dyn Access>>,
    ) -> Outcome {
        let Some(template) = self.templates.get(template_name) else {
            return Outcome {
                problems: vec![Problem::new(
                    207,
                    None,
                    format!(
                        "there is no mapping template named {template_name:?}; templates: {}",
                        self.templates.names().join(", ")
                    ),
                )],
                unknown_template: true,
                ..Outcome::default()
            };
        };
        let json: Json = match serde_json::from_slice(payload) {
            Ok(json) => json,
            Err(error) => {
                return Outcome {
                    problems: vec![Problem::new(
                        102,
                        None,
                        format!(
                            "the payload is not JSON (line {}, column {}): {error}",
                            error.line(),
                            error.column()
                        ),
                    )],
                    ..Outcome::default()
                }
            }
        };
        let messages = match template::apply(template, &json) {
            Ok(messages) => messages,
            Err(problems) => {
                return Outcome {
                    problems,
                    ..Outcome::default()
                }
            }
        };
        let mut outcome = Outcome {
            messages: messages.len(),
            ..Outcome::default()
        };
        for message in messages {
            match ingest::store(&self.store, &self.ingest, message, caller.clone()).await {
                Ok(stored) => {
                    outcome.created += stored.created;
                    outcome.existing += stored.existing;
                }
                Err(Refused::Content(problems)) => outcome.problems.extend(problems),
                Err(Refused::Forbidden(why)) => {
                    outcome.forbidden = true;
                    outcome.problems.push(Problem::new(207, None, why));
                }
                Err(Refused::Failure(error)) => {
                    outcome.failed = true;
                    outcome.problems.push(Problem::new(
                        207,
                        None,
                        format!(
                            "the server could not store the payload now ({}); it is kept and can \
                             be replayed",
                            error.message()
                        ),
                    ));
                }
            }
        }
        outcome
    }
}
