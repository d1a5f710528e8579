//! The edge agent (`fhirgate agent`), which runs next to devices and uploads what they
//! measure to a fhirgate server. So far: its configuration ([`config`], `agent.toml`)
//! and its store-and-forward queue ([`queue`]).
pub mod config;
pub mod queue;
