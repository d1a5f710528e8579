//! Uploads the queue to the server, oldest first, and removes what the server confirmed.
//!
//! Readings go as transaction Bundles (several queued items merged into one); a DICOM
//! instance goes to `POST /ingest/dicom`, where the server merges it into its study.
//! While the server cannot be reached, the uploader waits (backing off to 30 s) and
//! keeps everything; an item the server refuses for its content waits its own backoff
//! (see [`Queue::failed`]) and never blocks the others.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use serde_json::Value as Json;
use tokio::sync::{watch, Notify};

use super::bundle;
use super::credentials::{CredentialError, Credentials};
use super::queue::{Item, Queue};

/// Items merged into one transaction.
const BATCH: u64 = 50;
const MAX_WAIT: Duration = Duration::from_secs(30);

pub struct Uploader {
    pub http: reqwest::Client,
    /// The FHIR base (`…/fhir`).
    pub server: String,
    pub credentials: Option<Arc<Credentials>>,
    pub queue: Arc<Queue>,
    /// Rung when something was queued.
    pub pushed: Arc<Notify>,
}

/// How an upload went.
enum Outcome {
    Confirmed,
    /// The server refused this content; other items may go through.
    Refused(String),
    /// The server (or the network) is not taking anything now.
    Unavailable(String),
}

impl Uploader {
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut wait = Duration::from_millis(250);
        loop {
            if *shutdown.borrow() {
                return;
            }
            let pause = match self.round().await {
                Ok(true) => {
                    wait = Duration::from_millis(250);
                    continue;
                }
                Ok(false) => {
                    wait = Duration::from_millis(250);
                    Duration::from_secs(1)
                }
                Err(why) => {
                    tracing::warn!(retry_in = ?wait, "upload: {why}");
                    let pause = wait;
                    wait = (wait * 2).min(MAX_WAIT);
                    pause
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = self.pushed.notified(), if pause < MAX_WAIT / 2 => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    /// One upload of what is due: `Ok(true)` when something was confirmed (more may be
    /// due at once), `Err` when the server is unavailable.
    async fn round(&self) -> Result<bool, String> {
        let items = self.queue.due(BATCH).await.map_err(|e| e.to_string())?;
        if items.is_empty() {
            return Ok(false);
        }
        let (files, readings): (Vec<&Item>, Vec<&Item>) = items
            .iter()
            .partition(|item| item.payload["kind"] == "dicom");
        let mut progress = false;
        if !readings.is_empty() {
            progress |= self.upload_readings(&readings).await?;
        }
        for item in files {
            progress |= self.settle(item, self.upload_file(item).await).await?;
        }
        Ok(progress)
    }

    async fn upload_readings(&self, items: &[&Item]) -> Result<bool, String> {
        let entries: Vec<Vec<Json>> = items.iter().map(|item| entries_of(item)).collect();
        match self.post_transaction(&bundle::transaction(&entries)).await {
            Outcome::Confirmed => {
                let seqs: Vec<i64> = items.iter().map(|i| i.seq).collect();
                self.queue
                    .confirmed(&seqs)
                    .await
                    .map_err(|e| e.to_string())?;
                tracing::debug!(items = seqs.len(), "uploaded");
                Ok(true)
            }
            Outcome::Unavailable(why) => Err(why),
            // One item spoils a merged transaction for all: each goes alone, so that only
            // the refused one waits.
            Outcome::Refused(why) if items.len() == 1 => {
                self.settle(items[0], Outcome::Refused(why)).await
            }
            Outcome::Refused(_) => {
                let mut progress = false;
                for (item, entries) in items.iter().zip(&entries) {
                    let outcome = self.post_transaction(&bundle::transaction([entries])).await;
                    progress |= self.settle(item, outcome).await?;
                }
                Ok(progress)
            }
        }
    }

    async fn settle(&self, item: &Item, outcome: Outcome) -> Result<bool, String> {
        match outcome {
            Outcome::Confirmed => {
                self.queue
                    .confirmed(&[item.seq])
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(true)
            }
            Outcome::Refused(why) => {
                // Kept (never dropped): the server's patients or maps may be fixed.
                tracing::error!(
                    seq = item.seq,
                    source = %item.source,
                    attempts = item.attempts + 1,
                    "the server refused a queued item; it is kept and tried again later: {why}"
                );
                self.queue
                    .failed(&[item.seq])
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(false)
            }
            Outcome::Unavailable(why) => Err(why),
        }
    }

    async fn authorised(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::RequestBuilder, Outcome> {
        let Some(credentials) = &self.credentials else {
            return Ok(request);
        };
        match credentials.token(&self.http).await {
            Ok(token) => Ok(request.bearer_auth(token)),
            Err(CredentialError::Unreachable(why)) => Err(Outcome::Unavailable(why)),
            // A refused client stays unavailable until the operator fixes it: nothing is
            // dropped meanwhile.
            Err(error) => Err(Outcome::Unavailable(error.to_string())),
        }
    }

    async fn post_transaction(&self, bundle: &Json) -> Outcome {
        let request = self
            .http
            .post(&self.server)
            .header("Content-Type", "application/fhir+json")
            .json(bundle);
        self.send(request, true).await
    }

    async fn upload_file(&self, item: &Item) -> Outcome {
        let bytes = match base64::engine::general_purpose::STANDARD
            .decode(item.payload["file"].as_str().unwrap_or_default())
        {
            Ok(bytes) => bytes,
            Err(e) => return Outcome::Refused(format!("the queued file is damaged: {e}")),
        };
        let url = format!("{}/ingest/dicom", self.server.trim_end_matches("/fhir"));
        let request = self
            .http
            .post(url)
            .header("Content-Type", "application/dicom")
            .body(bytes);
        self.send(request, false).await
    }

    async fn send(&self, request: reqwest::RequestBuilder, transaction: bool) -> Outcome {
        let request = match self.authorised(request).await {
            Ok(request) => request,
            Err(outcome) => return outcome,
        };
        let response = match request.timeout(Duration::from_secs(60)).send().await {
            Ok(response) => response,
            Err(e) => return Outcome::Unavailable(format!("the server cannot be reached: {e}")),
        };
        let status = response.status();
        let body: Json = response.json().await.unwrap_or(Json::Null);
        if status == reqwest::StatusCode::UNAUTHORIZED {
            if let Some(credentials) = &self.credentials {
                credentials.forget().await;
            }
            return Outcome::Unavailable("the server refused the access token".into());
        }
        if status.is_server_error()
            || status == reqwest::StatusCode::TOO_MANY_REQUESTS
            || status == reqwest::StatusCode::REQUEST_TIMEOUT
        {
            return Outcome::Unavailable(format!("the server answered {status}"));
        }
        if !status.is_success() {
            return Outcome::Refused(format!("{status}: {}", issues_text(&body)));
        }
        if transaction {
            // A transaction is all or nothing; a 200 means every entry was stored (or
            // existed), but the answer is checked rather than trusted.
            let failed = body["entry"].as_array().into_iter().flatten().any(|e| {
                !e["response"]["status"]
                    .as_str()
                    .is_some_and(|s| s.starts_with('2'))
            });
            if failed || body["type"] != "transaction-response" {
                return Outcome::Refused(format!("unexpected transaction answer: {body}"));
            }
        }
        Outcome::Confirmed
    }
}

fn entries_of(item: &Item) -> Vec<Json> {
    item.payload["entries"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The diagnostics of an OperationOutcome, for the log.
fn issues_text(body: &Json) -> String {
    let texts: Vec<String> = body["issue"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|issue| {
            let text = issue["diagnostics"]
                .as_str()
                .or(issue["details"]["text"].as_str())
                .unwrap_or("");
            let at = issue["expression"][0].as_str().unwrap_or("");
            format!("{text} {at}").trim().to_string()
        })
        .collect();
    if texts.is_empty() {
        body.to_string()
    } else {
        texts.join("; ")
    }
}
