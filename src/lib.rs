//! fhirgate: a FHIR R4 interoperability server for connected medical devices.
//!
//! Data flows one way: device adapters and REST clients hand resources to [`store`]
//! (validate, version, index in one transaction), [`api`] serves them over FHIR REST.

pub mod agent;
pub mod api;
pub mod auth;
pub mod config;
pub mod db;
pub mod devices;
pub mod error;
pub mod fhir;
pub mod fhirpath;
pub mod metrics;
pub mod outbound;
pub mod search;
pub mod server;
pub mod store;
pub mod subscriptions;
