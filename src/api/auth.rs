//! The OAuth endpoints: `POST /auth/token` (SMART Backend Services), `GET /auth/jwks`
//! (the server's public keys) and `GET /fhir/.well-known/smart-configuration`.

use axum::extract::{Form, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::extract::BaseUrl;
use super::AppState;
use crate::auth::token::{OAuthError, TokenRequest, ASSERTION_TYPE};

/// The token URL of the server whose FHIR base is `base`.
pub fn token_url(base: &str) -> String {
    format!("{}/auth/token", base.trim_end_matches("/fhir"))
}

fn oauth_json(status: StatusCode, body: serde_json::Value) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body.to_string(),
    )
        .into_response()
}

/// `POST /auth/token`
#[utoipa::path(
    post, path = "/auth/token", tag = "Authorization",
    request_body(content = String, content_type = "application/x-www-form-urlencoded",
        description = "grant_type=client_credentials, client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer, client_assertion=<JWT signed RS384/ES384/RS256/ES256 with a key of the client's JWKS: iss=sub=client id, aud=this URL, exp at most 5 minutes ahead, unique jti>, scope=<SMART scopes>"),
    responses(
        (status = 200, description = "access_token (JWT, 5 minutes), token_type bearer, expires_in, scope (granted), patient", content_type = "application/json"),
        (status = 400, description = "OAuth error: invalid_scope, unsupported_grant_type, invalid_request", content_type = "application/json"),
        (status = 401, description = "OAuth error invalid_client: unknown client, bad signature, wrong aud, expired or too long-lived assertion, replayed jti, unknown kid", content_type = "application/json"),
        (status = 429, description = "Too many token requests", content_type = "application/json"),
    )
)]
pub async fn token(
    State(state): State<AppState>,
    base: BaseUrl,
    form: Result<Form<TokenRequest>, axum::extract::rejection::FormRejection>,
) -> Response {
    let Ok(Form(request)) = form else {
        let error = OAuthError {
            status: StatusCode::BAD_REQUEST,
            error: "invalid_request",
            description: "send the request as application/x-www-form-urlencoded".into(),
        };
        return oauth_json(error.status, error.body());
    };
    let claimed = request
        .client_assertion
        .as_deref()
        .and_then(crate::auth::token::claimed_client);
    let result = state
        .auth
        .issue(&state.store, &token_url(&base.0), &base.0, request)
        .await;
    // Token requests are audited, refused ones with the client they claimed to be.
    state.audit.record(crate::auth::audit::Record {
        client_id: claimed,
        patient: None,
        method: "TOKEN".into(),
        target: "/auth/token".into(),
        resource_type: None,
        resource_id: None,
        status: match &result {
            Ok(_) => 200,
            Err(error) => error.status.as_u16(),
        },
        address: None,
    });
    match result {
        Ok(body) => oauth_json(StatusCode::OK, body),
        Err(error) => {
            tracing::info!(
                error = error.error,
                "token request refused: {}",
                error.description
            );
            oauth_json(error.status, error.body())
        }
    }
}

/// `GET /auth/jwks`
#[utoipa::path(
    get, path = "/auth/jwks", tag = "Authorization",
    responses((status = 200, description = "The public keys access tokens are signed with (JWKS)", content_type = "application/json"))
)]
pub async fn jwks(State(state): State<AppState>) -> Response {
    oauth_json(StatusCode::OK, state.auth.jwks())
}

/// `GET /fhir/.well-known/smart-configuration`
#[utoipa::path(
    get, path = "/fhir/.well-known/smart-configuration", tag = "Authorization",
    responses((status = 200, description = "SMART configuration for backend services: token endpoint, grant types, client authentication, signing algorithms, scopes, capabilities", content_type = "application/json"))
)]
pub async fn smart_configuration(base: BaseUrl) -> Response {
    let root = base.0.trim_end_matches("/fhir").to_string();
    oauth_json(
        StatusCode::OK,
        json!({
            "issuer": token_url(&base.0),
            "jwks_uri": format!("{root}/auth/jwks"),
            "token_endpoint": token_url(&base.0),
            "grant_types_supported": ["client_credentials"],
            "token_endpoint_auth_methods_supported": ["private_key_jwt"],
            "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384", "RS256", "ES256"],
            "scopes_supported": [
                "system/*.cruds", "system/*.rs", "system/*.read", "system/*.write",
                "patient/*.cruds", "patient/*.rs", "patient/*.read"
            ],
            "capabilities": ["client-confidential-asymmetric", "permission-v1", "permission-v2"],
            "client_assertion_type": ASSERTION_TYPE
        }),
    )
}
