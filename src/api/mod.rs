//! The FHIR REST API (axum). Handlers are registered through utoipa-axum's
//! `OpenApiRouter`, so the OpenAPI document is generated from the same routes that serve.

pub mod audit;
pub mod auth;
pub mod authenticate;
pub mod bundle;
pub mod crud;
pub mod device_health;
pub mod devices;
pub mod extract;
pub mod history;
pub mod metadata;
pub mod negotiate;
pub mod observation_ops;
pub mod openapi;
pub mod reindex;
pub mod respond;
pub mod search;
pub mod subscription_ops;
pub mod summary;
pub mod validate;

use std::sync::Arc;

use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::Value as Json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::config::ServeConfig;
use crate::error::{FhirError, FhirResult};
use crate::fhir::definitions::Definitions;
use crate::store::Store;

/// Everything a handler needs; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub config: Arc<ServeConfig>,
    pub capability: Arc<Json>,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub auth: Arc<crate::auth::token::TokenService>,
    pub audit: crate::auth::audit::Auditor,
    /// The HL7 v2 device adapter (for replaying dead letters; MLLP uses it too).
    pub hl7: crate::devices::hl7_pipeline::Hl7Adapter,
    /// The JSON telemetry adapter (`POST /ingest/{template}`, MQTT, replays).
    pub json: crate::devices::json_pipeline::JsonAdapter,
    /// The DICOM adapter (`POST /ingest/dicom`; the SCP uses it too).
    pub dicom: crate::devices::dicom::DicomAdapter,
}

/// The FHIR routes with their OpenAPI description.
pub fn fhir_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(metadata::metadata))
        .routes(routes!(auth::token))
        .routes(routes!(auth::jwks))
        .routes(routes!(auth::smart_configuration))
        .routes(routes!(audit::search, audit::refuse_write))
        .routes(routes!(audit::read))
        .routes(routes!(bundle::batch_or_transaction, search::search_system))
        .routes(routes!(history::system_history))
        .routes(routes!(reindex::reindex_all))
        .routes(routes!(
            search::search_get,
            crud::create,
            crud::conditional_update,
            crud::conditional_delete
        ))
        .routes(routes!(search::search_post))
        .routes(routes!(history::type_history))
        .routes(routes!(observation_ops::lastn, observation_ops::lastn_post))
        .routes(routes!(observation_ops::stats, observation_ops::stats_post))
        .routes(routes!(validate::validate_type))
        .routes(routes!(subscription_ops::status_of_many))
        .routes(routes!(subscription_ops::status))
        .routes(routes!(subscription_ops::events))
        .routes(routes!(
            subscription_ops::ws_binding_token,
            subscription_ops::ws_binding_token_get
        ))
        .routes(routes!(subscription_ops::ws_binding_token_many))
        .routes(routes!(subscription_ops::topics))
        .routes(routes!(subscription_ops::topic))
        .routes(routes!(reindex::reindex_type))
        .routes(routes!(crud::read, crud::update, crud::patch, crud::delete))
        .routes(routes!(validate::validate_instance))
        .routes(routes!(history::instance_history))
        .routes(routes!(search::search_compartment))
        .routes(routes!(crud::vread))
        .routes(routes!(devices::list_dead_letters))
        .routes(routes!(devices::get_dead_letter))
        .routes(routes!(devices::replay_dead_letter))
        .routes(routes!(devices::ingest_dicom))
        .routes(routes!(devices::ingest))
        .routes(routes!(device_health::heartbeat))
        .routes(routes!(device_health::fleet_health))
        .routes(routes!(device_health::device_health))
}

/// 404 for a resource type this server does not know.
pub fn check_type(resource_type: &str) -> FhirResult<()> {
    if Definitions::get().is_resource_type(resource_type) {
        Ok(())
    } else {
        Err(FhirError::not_found(format!(
            "unknown resource type {resource_type:?}; resource types are case-sensitive R4 names such as Observation"
        )))
    }
}

/// Paths that match no route.
pub async fn not_found(method: Method, uri: Uri) -> Response {
    FhirError::not_found(format!(
        "{method} {} is not a FHIR endpoint of this server",
        uri.path()
    ))
    .into_response()
}

/// Routes that exist but not for this method.
pub async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    let mut response = FhirError::not_supported(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{method} is not allowed on {}", uri.path()),
    )
    .into_response();
    *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    response
}

/// The whole HTTP application.
pub fn app(state: AppState) -> Router {
    let (fhir, api_doc) = OpenApiRouter::with_openapi(openapi::ApiDoc::base())
        .merge(fhir_routes())
        .split_for_parts();
    let max_body = state.config.max_body_bytes;
    let api_doc = openapi::finish(api_doc);
    let routes: Router = Router::new()
        .merge(fhir)
        .merge(openapi::docs_routes(api_doc))
        .route("/healthz", axum::routing::get(health))
        .route("/readyz", axum::routing::get(ready))
        .route("/metrics", axum::routing::get(metrics))
        .route(
            "/fhir/$subscription-ws",
            axum::routing::get(subscription_ops::websocket),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state.clone());
    // Authentication runs before routing: a patient/ token's search is routed as the
    // search of its patient's compartment.
    let authenticated = tower::ServiceBuilder::new()
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authenticate::authenticate,
        ))
        .service(routes);
    Router::new()
        .fallback_service(authenticated)
        .layer(axum::middleware::from_fn(negotiate::check_accept))
        .layer(axum::extract::DefaultBodyLimit::max(max_body))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            panic_response,
        ))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

/// Prometheus metrics: subscription delivery counters and queue figures.
async fn metrics(axum::extract::State(state): axum::extract::State<AppState>) -> Response {
    match crate::subscriptions::outbox::queue_figures(state.store.connection()).await {
        Ok(queue) => (
            [(
                axum::http::header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            state.metrics.render(&queue),
        )
            .into_response(),
        Err(err) => err.into_response(),
    }
}

async fn health() -> &'static str {
    "ok"
}

async fn ready(axum::extract::State(state): axum::extract::State<AppState>) -> Response {
    use sea_orm::ConnectionTrait;
    match state
        .store
        .connection()
        .execute_unprepared("SELECT 1")
        .await
    {
        Ok(_) => "ready".into_response(),
        Err(err) => FhirError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            crate::fhir::outcome::IssueCode::Exception,
            format!("the database is not reachable: {err}"),
        )
        .into_response(),
    }
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    FhirError::internal("a request handler panicked").into_response()
}
