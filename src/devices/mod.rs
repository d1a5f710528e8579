//! Device adapters: device data in, FHIR out.
//!
//! Each protocol is a parser that yields normalised readings ([`reading`]); the mapping
//! to FHIR ([`mapping`], with the code maps of [`codes`]) and storage ([`ingest`], one
//! transaction per message through the repository) are shared. HL7 v2 from monitors
//! arrives over MLLP ([`mllp_listener`], [`mllp`] framing, [`hl7`] parsing, [`pcd01`]
//! interpretation, [`ack`]); messages that cannot be stored are kept as
//! [`dead_letters`] and can be replayed. Devices that report their state (the edge
//! agent's heartbeats) are followed by [`health`], and marked offline by [`offline`] when
//! they fall silent. Imaging modalities send DICOM ([`dicom`]: C-STORE and uploads).
pub mod ack;
pub mod codes;
pub mod dead_letters;
pub mod dicom;
pub mod health;
pub mod hl7;
pub mod hl7_pipeline;
pub mod hl7time;
pub mod ingest;
pub mod json_pipeline;
pub mod mapping;
pub mod mllp;
pub mod mllp_listener;
pub mod mqtt;
pub mod offline;
pub mod pcd01;
pub mod reading;
pub mod serial;
pub mod template;
