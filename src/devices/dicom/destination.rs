//! Where the C-STORE SCP puts what it receives: the server's store (`--dicom`), or the
//! edge agent's queue (an agent `dicom` source). The association handling is the same;
//! only keeping an instance and recording a fault differ.

use std::sync::Arc;

use futures::future::BoxFuture;

use super::adapter::DicomAdapter;
use super::instance::Instance;
use super::store::{record_fault, Fault};
use crate::metrics::Adapter;

/// Why an instance was not kept.
#[derive(Debug, Clone)]
pub enum Refusal {
    /// Not now (the database, a full queue): the modality should send it again later.
    Later(String),
    /// Its content: sending it again will not help.
    Content(String),
}

/// What receives the instances of the SCP.
pub trait Destination: Clone + Send + Sync + 'static {
    /// Keeps one instance: `instance` as read, `data_set` as received in
    /// `transfer_syntax` (the agent forwards it).
    fn keep<'a>(
        &'a self,
        instance: Arc<Instance>,
        data_set: &'a [u8],
        transfer_syntax: &'a str,
    ) -> BoxFuture<'a, Result<(), Refusal>>;

    /// Records a fault of the modality that sent `instance` (a refused instance, an
    /// association broken off); `key` makes the record idempotent.
    fn fault<'a>(
        &'a self,
        instance: &'a Instance,
        code: &'a str,
        detail: String,
        key: String,
    ) -> BoxFuture<'a, ()>;

    /// Counts bytes that never became an instance.
    fn unreadable(&self);
}

impl Destination for DicomAdapter {
    fn keep<'a>(
        &'a self,
        instance: Arc<Instance>,
        _data_set: &'a [u8],
        _transfer_syntax: &'a str,
    ) -> BoxFuture<'a, Result<(), Refusal>> {
        Box::pin(async move {
            let uid = instance.sop_instance_uid.clone();
            match self.store(Adapter::Dicom, instance, None).await {
                Ok(stored) => {
                    tracing::debug!(
                        "DICOM instance {uid} stored in ImagingStudy/{}",
                        stored.study
                    );
                    Ok(())
                }
                Err(error) if error.status.is_server_error() => {
                    tracing::error!(
                        "DICOM instance {uid} could not be stored now: {}",
                        error.message()
                    );
                    Err(Refusal::Later(
                        "the server cannot store the instance now; send it again later".into(),
                    ))
                }
                Err(error) => Err(Refusal::Content(error.message())),
            }
        })
    }

    fn fault<'a>(
        &'a self,
        instance: &'a Instance,
        code: &'a str,
        detail: String,
        key: String,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let fault = Fault {
                instance,
                code,
                detail,
                key,
            };
            match record_fault(&self.store, fault).await {
                Ok(Some(id)) => tracing::info!("DICOM fault recorded as DetectedIssue/{id}"),
                Ok(None) => {}
                Err(error) => tracing::error!("a DICOM fault could not be recorded: {error}"),
            }
        })
    }

    fn unreadable(&self) {
        DicomAdapter::unreadable(self, Adapter::Dicom);
    }
}
