//! One HL7 v2 message, from its text to its ACK: parse → PCD-01 readings → store in one
//! transaction → `AA`; or `AE`/`AR` with what is wrong, the message kept as a dead letter.
//! Used by the MLLP listener and by dead-letter replay.

use std::sync::Arc;

use super::ack::{ack, AckCode, Received};
use super::dead_letters;
use super::hl7::{Delimiters, Message};
use super::ingest::{self, Refused};
use super::pcd01::{self, Problem};
use crate::metrics::{Adapter, DeviceOutcome, Metrics};
use crate::store::Store;

/// What the HL7 adapter needs.
#[derive(Clone)]
pub struct Hl7Adapter {
    pub store: Store,
    pub metrics: Arc<Metrics>,
    pub ingest: ingest::Settings,
    pub pcd01: pcd01::Settings,
}

/// The answer to one message.
#[derive(Debug, Clone)]
pub struct Handled {
    pub ack: String,
    pub code: AckCode,
    /// Observations created (0 for a duplicate).
    pub created: usize,
    pub problems: Vec<Problem>,
}

impl Hl7Adapter {
    /// Handles a message received by `adapter`; a refused one is kept as a dead letter
    /// (unless it is being replayed from one: `replaying`).
    pub async fn handle(&self, adapter: Adapter, payload: &str, replaying: bool) -> Handled {
        let now = chrono::Utc::now().format("%Y%m%d%H%M%S").to_string();
        let control_id = uuid::Uuid::now_v7().simple().to_string();
        let message = match Message::parse(payload) {
            Ok(message) => message,
            Err(error) => {
                let problems = vec![Problem::new(
                    100,
                    None,
                    format!("the message cannot be parsed: {error}"),
                )];
                let received = Received {
                    delimiters: Delimiters::default(),
                    control_id: salvage_control_id(payload),
                    ..Received::default()
                };
                self.refused(adapter, payload, &problems, replaying).await;
                return Handled {
                    ack: ack(
                        &received,
                        AckCode::Rejected,
                        &problems,
                        &[],
                        &now,
                        &control_id,
                    ),
                    code: AckCode::Rejected,
                    created: 0,
                    problems,
                };
            }
        };
        let received = Received::of(&message);
        let parsed = match pcd01::read(&message, self.pcd01) {
            Ok(parsed) => parsed,
            Err((reject, problems)) => {
                self.refused(adapter, payload, &problems, replaying).await;
                let code = if reject {
                    AckCode::Rejected
                } else {
                    AckCode::Error
                };
                return Handled {
                    ack: ack(&received, code, &problems, &[], &now, &control_id),
                    code,
                    created: 0,
                    problems,
                };
            }
        };
        match ingest::store(&self.store, &self.ingest, parsed.message, None).await {
            Ok(stored) => {
                self.metrics
                    .device_message(adapter, DeviceOutcome::Stored, stored.created);
                Handled {
                    ack: ack(
                        &received,
                        AckCode::Accepted,
                        &[],
                        &parsed.warnings,
                        &now,
                        &control_id,
                    ),
                    code: AckCode::Accepted,
                    created: stored.created,
                    problems: Vec::new(),
                }
            }
            Err(refused) => {
                let problems = match refused {
                    Refused::Content(problems) => problems,
                    Refused::Forbidden(why) => vec![Problem::new(207, None, why)],
                    Refused::Failure(error) => {
                        tracing::error!("an HL7 message could not be stored: {error}");
                        vec![Problem::new(
                            207,
                            None,
                            format!(
                                "the server could not store the message now ({}); it is kept and \
                                 can be replayed",
                                error.message()
                            ),
                        )]
                    }
                };
                self.refused(adapter, payload, &problems, replaying).await;
                Handled {
                    ack: ack(&received, AckCode::Error, &problems, &[], &now, &control_id),
                    code: AckCode::Error,
                    created: 0,
                    problems,
                }
            }
        }
    }

    async fn refused(
        &self,
        adapter: Adapter,
        payload: &str,
        problems: &[Problem],
        replaying: bool,
    ) {
        let failed = problems
            .iter()
            .any(|p| p.code == 207 && p.location.is_none());
        let outcome = if failed {
            DeviceOutcome::Failed
        } else {
            DeviceOutcome::Refused
        };
        self.metrics.device_message(adapter, outcome, 0);
        if replaying {
            return;
        }
        if let Err(error) =
            dead_letters::keep(&self.store, adapter.name(), None, payload, problems, None).await
        {
            tracing::error!(
                "a refused {} message could not be kept as a dead letter: {error}",
                adapter.name()
            );
        }
    }
}

/// MSH-10 of a message that does not parse, read naively, so the ACK still names it.
fn salvage_control_id(payload: &str) -> String {
    let start = payload.find("MSH").unwrap_or(0);
    let line = payload[start..]
        .split(['\r', '\n'])
        .next()
        .unwrap_or_default();
    let separator = line.chars().nth(3).unwrap_or('|');
    line.split(separator)
        .nth(9)
        .unwrap_or_default()
        .chars()
        .take(64)
        .collect()
}
