//! `GET /fhir/metadata`: the CapabilityStatement, generated from what the server really
//! supports — the resource types of the loaded definitions, the interactions routed in
//! [`super::router`], the search parameters the search module can evaluate and the
//! operations registered — never a hand-written file.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{json, Value as Json};

use super::extract::BaseUrl;
use super::respond::fhir_json;
use super::AppState;
use crate::fhir::definitions::Definitions;
use crate::store::matching::SUPPORTED_CRITERIA;

pub const FHIR_VERSION: &str = "4.0.1";

/// Interactions every resource type supports.
const TYPE_INTERACTIONS: &[&str] = &[
    "read",
    "vread",
    "update",
    "patch",
    "delete",
    "history-instance",
    "history-type",
    "create",
];

/// The server's CapabilityStatement.
#[utoipa::path(
    get, path = "/fhir/metadata", tag = "System interactions",
    responses((status = 200, description = "CapabilityStatement", content_type = "application/fhir+json"))
)]
pub async fn metadata(State(state): State<AppState>, base: BaseUrl) -> Response {
    let mut statement = (*state.capability).clone();
    statement["implementation"]["url"] = Json::String(base.0);
    fhir_json(StatusCode::OK, &statement)
}

/// Builds the CapabilityStatement once at start.
pub fn capability_statement() -> Json {
    let resources: Vec<Json> = Definitions::get()
        .resource_types()
        .iter()
        .map(|resource_type| {
            let search_params: Vec<Json> = SUPPORTED_CRITERIA
                .iter()
                .map(|(name, kind, doc)| json!({"name": name, "type": kind, "documentation": doc}))
                .collect();
            json!({
                "type": resource_type,
                "profile": format!("http://hl7.org/fhir/StructureDefinition/{resource_type}"),
                "interaction": TYPE_INTERACTIONS.iter().map(|code| json!({"code": code})).collect::<Vec<_>>(),
                "versioning": "versioned-update",
                "readHistory": true,
                "updateCreate": true,
                "conditionalCreate": true,
                "conditionalRead": "not-supported",
                "conditionalUpdate": true,
                "conditionalDelete": "single",
                "searchParam": search_params,
                "operation": [{
                    "name": "validate",
                    "definition": "http://hl7.org/fhir/OperationDefinition/Resource-validate"
                }]
            })
        })
        .collect();
    json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": chrono::Utc::now().format("%Y-%m-%d").to_string(),
        "publisher": "fhirgate",
        "kind": "instance",
        "software": {"name": "fhirgate", "version": env!("CARGO_PKG_VERSION")},
        "implementation": {"description": "fhirgate FHIR R4 server for connected medical devices"},
        "fhirVersion": FHIR_VERSION,
        "format": ["application/fhir+json", "json"],
        "patchFormat": ["application/json-patch+json"],
        "rest": [{
            "mode": "server",
            "resource": resources,
            "interaction": [
                {"code": "transaction"},
                {"code": "batch"},
                {"code": "history-system"}
            ]
        }]
    })
}
