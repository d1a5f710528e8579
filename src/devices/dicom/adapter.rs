//! What the SCP and `POST /ingest/dicom` share: an instance stored and counted in
//! `/metrics` the same way whichever way it came.

use std::sync::Arc;

use axum::http::StatusCode;

use super::instance::{DicomError, Instance};
use super::store::{self, Settings, Stored};
use crate::error::{FhirError, FhirResult};
use crate::fhir::outcome::IssueCode;
use crate::metrics::{Adapter, DeviceOutcome, Metrics};
use crate::search::visibility::Access;
use crate::store::Store;

/// The DICOM adapter: the store, the counters and the settings.
#[derive(Clone)]
pub struct DicomAdapter {
    pub store: Store,
    pub metrics: Arc<Metrics>,
    pub settings: Settings,
}

impl DicomAdapter {
    /// Stores an instance received by `adapter` on behalf of `caller` (`None`: the
    /// server's own SCP).
    pub async fn store(
        &self,
        adapter: Adapter,
        instance: Arc<Instance>,
        caller: Option<Arc<dyn Access>>,
    ) -> FhirResult<Stored> {
        let outcome = store::store(&self.store, self.settings, instance, caller).await;
        match &outcome {
            Ok(stored) => self.metrics.device_message(
                adapter,
                DeviceOutcome::Stored,
                stored.observations_created,
            ),
            Err(error) => {
                let outcome = if error.status.is_server_error() {
                    DeviceOutcome::Failed
                } else {
                    DeviceOutcome::Refused
                };
                self.metrics.device_message(adapter, outcome, 0);
            }
        }
        outcome
    }

    /// Counts bytes that never became an instance.
    pub fn unreadable(&self, adapter: Adapter) {
        self.metrics
            .device_message(adapter, DeviceOutcome::Refused, 0);
    }
}

/// A read error as the server's error: 400 for what is not DICOM or cannot be parsed,
/// 422 for DICOM that lacks what every instance has.
impl From<DicomError> for FhirError {
    fn from(error: DicomError) -> FhirError {
        match error {
            DicomError::NotDicom(text) | DicomError::Unreadable(text) => {
                FhirError::new(StatusCode::BAD_REQUEST, IssueCode::Structure, text)
            }
            DicomError::Incomplete(text) => FhirError::unprocessable(IssueCode::Required, text),
        }
    }
}
