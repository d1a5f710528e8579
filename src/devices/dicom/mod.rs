//! Imaging devices (DICOM): modalities send their instances to the C-STORE SCP
//! ([`scp`], `--dicom ADDR`, AE title `FHIRGATE`) or, through the edge agent, to
//! `POST /ingest/dicom`. Each instance is read up to its pixel data ([`instance`]),
//! mapped to a Device, a Patient, its ImagingStudy and dose Observations ([`mapping`])
//! and stored in one transaction ([`store`]); [`adapter`] is what both ways share.
//! Pixel data is never stored.
pub mod adapter;
pub mod destination;
pub mod instance;
pub mod mapping;
pub mod scp;
pub mod store;

pub use adapter::DicomAdapter;
pub use instance::{read_dataset, read_part10, strip_pixel_data, DicomError, Instance};
