//! FHIR R4 model knowledge: definitions, validation, OperationOutcome.
pub mod definitions;
pub mod outcome;
pub mod resource;
pub mod validation;
