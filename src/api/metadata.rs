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
use crate::search::params::{ParamType, SearchParams};
use crate::subscriptions::topics::Topics;

pub const FHIR_VERSION: &str = "4.0.1";

/// Backport IG: a topic the server supports, on the CapabilityStatement's Subscription.
const TOPIC_CANONICAL_EXTENSION: &str = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/capabilitystatement-subscriptiontopic-canonical";

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
    "search-type",
];

/// The server's CapabilityStatement.
#[utoipa::path(
    get, path = "/fhir/metadata", tag = "System interactions",
    responses((status = 200, description = "CapabilityStatement", content_type = "application/fhir+json"))
)]
pub async fn metadata(State(state): State<AppState>, base: BaseUrl) -> Response {
    let mut statement = (*state.capability).clone();
    if state.config.auth == crate::config::AuthMode::Smart {
        statement["rest"][0]["security"] = security(&base.0);
    }
    statement["implementation"]["url"] = Json::String(base.0);
    fhir_json(StatusCode::OK, &statement)
}

/// `rest.security` with authentication on: SMART on FHIR, and where tokens come from (the
/// SMART `oauth-uris` extension, as well as `.well-known/smart-configuration`).
fn security(base: &str) -> Json {
    let root = base.strip_suffix("/fhir").unwrap_or(base);
    json!({
        "extension": [{
            "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
            "extension": [{"url": "token", "valueUri": format!("{root}/auth/token")}]
        }],
        "cors": false,
        "service": [{
            "coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                "code": "SMART-on-FHIR",
                "display": "SMART-on-FHIR"
            }],
            "text": "OAuth2 with SMART on FHIR Backend Services"
        }],
        "description": format!(
            "Every request needs an access token (Authorization: Bearer) from {root}/auth/token \
             (SMART Backend Services: client_credentials with a signed JWT client assertion) \
             or from the configured identity provider. Scopes are SMART v1 and v2, with \
             patient compartments and query restrictions; see \
             {base}/.well-known/smart-configuration."
        )
    })
}

/// Builds the CapabilityStatement once at start.
pub fn capability_statement() -> Json {
    let resources: Vec<Json> = Definitions::get()
        .resource_types()
        .iter()
        .map(|resource_type| {
            let search_params = search_params(resource_type);
            let mut operations = vec![json!({
                "name": "validate",
                "definition": "http://hl7.org/fhir/OperationDefinition/Resource-validate"
            })];
            if resource_type.as_str() == "Observation" {
                operations.push(json!({
                    "name": "lastn",
                    "definition": "http://hl7.org/fhir/OperationDefinition/Observation-lastn"
                }));
                operations.push(json!({
                    "name": "stats",
                    "definition": "http://hl7.org/fhir/OperationDefinition/Observation-stats"
                }));
            }
            if resource_type.as_str() == "Device" {
                // Device health (see the OpenAPI document for their parameters).
                for name in ["heartbeat", "health"] {
                    operations.push(json!({
                        "name": name,
                        "definition": format!("http://fhirgate.dev/fhir/OperationDefinition/Device-{name}")
                    }));
                }
            }
            let mut extensions = Vec::new();
            if resource_type.as_str() == "Subscription" {
                // Backport IG: the topics a client may subscribe to, and its operations.
                for topic in Topics::get().all() {
                    extensions.push(json!({
                        "url": TOPIC_CANONICAL_EXTENSION,
                        "valueCanonical": topic.url
                    }));
                }
                for (name, definition) in [
                    ("status", "backport-subscription-status"),
                    ("events", "backport-subscription-events"),
                    ("get-ws-binding-token", "backport-subscription-get-ws-binding-token"),
                ] {
                    operations.push(json!({
                        "name": name,
                        "definition": format!("http://hl7.org/fhir/uv/subscriptions-backport/OperationDefinition/{definition}")
                    }));
                }
            }
            let mut entry = json!({
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
                "operation": operations
            });
            if !extensions.is_empty() {
                entry["extension"] = Json::Array(extensions);
            }
            entry
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
        "instantiates": [
            "http://hl7.org/fhir/uv/subscriptions-backport/CapabilityStatement/backport-subscription-server-r4"
        ],
        "fhirVersion": FHIR_VERSION,
        "format": ["application/fhir+json", "json"],
        "patchFormat": ["application/json-patch+json"],
        "rest": [{
            "mode": "server",
            "resource": resources,
            "interaction": [
                {"code": "transaction"},
                {"code": "batch"},
                {"code": "search-system"},
                {"code": "history-system"}
            ],
            "compartment": [
                "http://hl7.org/fhir/CompartmentDefinition/patient",
                "http://hl7.org/fhir/CompartmentDefinition/encounter",
                "http://hl7.org/fhir/CompartmentDefinition/relatedPerson",
                "http://hl7.org/fhir/CompartmentDefinition/practitioner",
                "http://hl7.org/fhir/CompartmentDefinition/device"
            ]
        }]
    })
}

/// The search parameters of a type that search and conditional interactions evaluate.
fn search_params(resource_type: &str) -> Vec<Json> {
    let mut params = vec![
        json!({"name": "_id", "type": "token", "definition": "http://hl7.org/fhir/SearchParameter/Resource-id"}),
        json!({"name": "_lastUpdated", "type": "date", "definition": "http://hl7.org/fhir/SearchParameter/Resource-lastUpdated"}),
    ];
    for param in SearchParams::get().params_for(resource_type) {
        if matches!(param.param_type, ParamType::Composite | ParamType::Special)
            || param.code.as_ref() == "_id"
            || param.code.as_ref() == "_lastUpdated"
        {
            continue;
        }
        params.push(json!({
            "name": param.code.as_ref(),
            "definition": param.url,
            "type": param.param_type.as_str(),
        }));
    }
    params
}
