//! The OpenAPI document (`/openapi.json`, `fhirgate openapi`) and Swagger UI (`/docs`,
//! vendored so it works offline).

use axum::Router;
use utoipa::openapi::path::ParameterIn;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::{OpenApi, RefOr};
use utoipa::OpenApi as _;
use utoipa_swagger_ui::SwaggerUi;

use super::AppState;
use crate::fhir::definitions::Definitions;

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "fhirgate FHIR R4 API",
        description = "FHIR R4 (4.0.1) server for connected medical devices. Resources are FHIR JSON \
(`application/fhir+json`); every error is an OperationOutcome that says what is wrong and where. \
`{type}` is any of the 146 R4 resource types.",
        license(name = "Apache-2.0")
    ),
    tags(
        (name = "System interactions", description = "CapabilityStatement, batch and transaction"),
        (name = "Instance interactions", description = "create, read, vread, update, patch, delete"),
        (name = "Type interactions", description = "conditional update and delete"),
        (name = "Search", description = "search by any R4 search parameter of the type"),
        (name = "History", description = "version history, newest first"),
        (name = "Operations", description = "FHIR operations such as $validate"),
        (name = "Authorization", description = "SMART Backend Services: token endpoint, public keys, SMART configuration"),
        (name = "Subscriptions", description = "Topic-based subscriptions (Subscriptions R5 Backport IG): $status, $events, websocket binding"),
    )
)]
pub struct ApiDoc;

impl ApiDoc {
    pub fn base() -> OpenApi {
        ApiDoc::openapi()
    }
}

/// Final touches after the routes added their paths: the version, and the list of
/// resource types as the schema of every `{type}` path parameter (from the loaded R4
/// definitions, so the document names exactly the types the server accepts).
pub fn finish(mut doc: OpenApi) -> OpenApi {
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    let types: Vec<String> = Definitions::get().resource_types().to_vec();
    let type_schema = RefOr::T(Schema::Object(
        ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(types))
            .build(),
    ));
    for item in doc.paths.paths.values_mut() {
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ];
        for operation in operations.into_iter().flatten() {
            for parameter in operation.parameters.iter_mut().flatten() {
                if parameter.name == "type" && parameter.parameter_in == ParameterIn::Path {
                    parameter.schema = Some(type_schema.clone());
                }
            }
        }
    }
    doc
}

/// The complete document, as served at `/openapi.json`.
pub fn document() -> OpenApi {
    let (_, doc) = utoipa_axum::router::OpenApiRouter::<AppState>::with_openapi(ApiDoc::base())
        .merge(super::fhir_routes())
        .split_for_parts();
    finish(doc)
}

/// The document as pretty JSON with a final newline (the form kept in `openapi/`).
pub fn document_json() -> String {
    let mut text = document().to_pretty_json().unwrap_or_default();
    text.push('\n');
    text
}

pub fn docs_routes(doc: OpenApi) -> Router<AppState> {
    Router::from(SwaggerUi::new("/docs").url("/openapi.json", doc))
}
