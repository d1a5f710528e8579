//! With `--auth smart`, every FHIR request needs a valid access token (401 with
//! `WWW-Authenticate: Bearer` otherwise) whose scopes cover what it asks for (403).
//!
//! The check here is per request: the resource type and the kind of access the route
//! implies (read, search, create, update, delete) must be granted, at least in part, by
//! some scope; each entry of a batch or transaction Bundle likewise. What the request then
//! reaches is limited where the data is read and written (see
//! [`crate::search::visibility`]): the handlers get the caller's access as [`Caller`].

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use std::sync::Arc;

use super::extract::Caller;
use super::AppState;
use crate::auth::principal::Principal;
use crate::auth::scopes::Permission;
use crate::config::AuthMode;
use crate::error::FhirError;
use crate::fhir::outcome::IssueCode;
use crate::search::visibility::Access;

/// What a request needs of the token's scopes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Needs {
    /// Open to anyone (capability, SMART configuration).
    Nothing,
    /// Any valid token.
    Token,
    /// This access to this type.
    Access(String, Permission),
    /// Everything (`system/*.cruds`).
    Everything,
}

/// What a FHIR request (`segments` after `/fhir`) needs.
pub fn needs(method: &Method, segments: &[&str]) -> Needs {
    let access = |t: &str, p: Permission| Needs::Access(t.to_string(), p);
    let write = |t: &str| match *method {
        Method::POST => access(t, Permission::Create),
        Method::DELETE => access(t, Permission::Delete),
        _ => access(t, Permission::Update),
    };
    match segments {
        [] | ["_history"] => Needs::Everything,
        // Device messages become Observations (and their Devices); the writes are then
        // checked one by one like any other.
        // A DICOM instance becomes (or changes) an ImagingStudy, with its Device, Patient
        // and dose Observations, each write checked in turn.
        ["_ingest", "dicom"] => access("ImagingStudy", Permission::Create),
        ["_ingest", ..] => access("Observation", Permission::Create),
        ["_admin", ..] => Needs::Everything,
        // The websocket channel authenticates with its binding token (a websocket client
        // cannot always send headers), given out by an authorised `$get-ws-binding-token`.
        ["metadata"] | [".well-known", ..] | ["$subscription-ws"] => Needs::Nothing,
        ["SubscriptionTopic", ..] => Needs::Token,
        [t] if *method == Method::GET => access(t, Permission::Search),
        [t] => write(t),
        [t, "_search"] | [t, "_history"] => access(t, Permission::Search),
        [_, "$reindex"] | [_, _, "$reindex"] => Needs::Everything,
        [t, "$validate"] => access(t, Permission::Create),
        ["Subscription", op] | ["Subscription", _, op]
            if op.starts_with('$') && *op != "$validate" =>
        {
            access("Subscription", Permission::Read)
        }
        // A device's state is written to its Device (created when unknown).
        ["Device", "$heartbeat"] => access("Device", Permission::Update),
        [t, op] if op.starts_with('$') => access(t, Permission::Search),
        [t, _id, "$validate"] => access(t, Permission::Update),
        [t, _id, op] if op.starts_with('$') => access(t, Permission::Read),
        [t, _id] if *method == Method::GET => access(t, Permission::Read),
        [t, _id] => write(t),
        [t, _id, "_history", ..] => access(t, Permission::Read),
        // A compartment search: `Patient/1/Observation`.
        [_compartment, _id, target] => access(target, Permission::Search),
        _ => Needs::Everything,
    }
}

fn unauthorized(why: &str) -> Response {
    let mut response = FhirError::new(
        StatusCode::UNAUTHORIZED,
        IssueCode::Login,
        format!("{why}; get an access token from /auth/token and send it as Authorization: Bearer <token>"),
    )
    .into_response();
    let challenge = format!(
        "Bearer realm=\"fhirgate\", error=\"invalid_token\", error_description=\"{}\"",
        why.replace('"', "'")
    );
    if let Ok(value) = HeaderValue::from_str(&challenge) {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, value);
    }
    response
}

/// Who made a request, once known (for the audit trail).
#[derive(Default)]
struct Who {
    client_id: Option<String>,
    patient: Option<String>,
}

pub async fn authenticate(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if state.config.auth != AuthMode::Smart {
        return next.run(request).await;
    }
    let path = request.uri().path().to_string();
    // Besides the FHIR API: device ingestion and administration (dead letters).
    let rest = if let Some(rest) = path.strip_prefix("/fhir") {
        rest.to_string()
    } else if let Some(rest) = path.strip_prefix("/ingest/") {
        format!("/_ingest/{rest}")
    } else if let Some(rest) = path.strip_prefix("/admin/") {
        format!("/_admin/{rest}")
    } else {
        return next.run(request).await;
    };
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    if needs(request.method(), &segments) == Needs::Nothing {
        return next.run(request).await;
    }
    // Every REST interaction is audited, refused ones too.
    let method = request.method().to_string();
    let target = request
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let is_type = |t: &str| crate::fhir::definitions::Definitions::get().is_resource_type(t);
    let resource_type = segments
        .first()
        .filter(|t| is_type(t))
        .map(|t| t.to_string());
    let resource_id = match segments.as_slice() {
        [t, id, ..] if is_type(t) && !id.starts_with('$') && !id.starts_with('_') => {
            Some(id.to_string())
        }
        _ => None,
    };
    let address = request
        .headers()
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .map(|v| v.trim().to_string());
    let mut who = Who::default();
    let response = authorize(&state, request, next, &segments, &mut who).await;
    state.audit.record(crate::auth::audit::Record {
        client_id: who.client_id,
        patient: who.patient,
        method,
        target,
        resource_type,
        resource_id,
        status: response.status().as_u16(),
        address,
    });
    response
}

async fn authorize(
    state: &AppState,
    mut request: Request,
    next: Next,
    segments: &[&str],
    who: &mut Who,
) -> Response {
    let need = needs(request.method(), segments);
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    let Some(token) = token else {
        return unauthorized("no access token");
    };
    let base = match &state.config.base_url {
        Some(base) => base.clone(),
        None => {
            let host = request
                .headers()
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("localhost");
            let https = request
                .headers()
                .get("x-forwarded-proto")
                .is_some_and(|p| p == "https");
            format!("{}://{host}/fhir", if https { "https" } else { "http" })
        }
    };
    let claims = match state.auth.verify(token, &base).await {
        Ok(claims) => claims,
        Err(why) => return unauthorized(&format!("the access token is {why}")),
    };
    let principal = Arc::new(Principal::from_claims(&claims));
    who.client_id = Some(principal.client_id.clone());
    who.patient = principal.patient.clone();
    // A Bundle: each entry is checked as the request it stands for (what each entry
    // reaches is then limited by the handlers, as for a request of its own).
    if segments.is_empty() && request.method() == Method::POST {
        let limit = state.config.max_body_bytes;
        let (parts, body) = request.into_parts();
        let Ok(bytes) = axum::body::to_bytes(body, limit).await else {
            return FhirError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                IssueCode::TooLong,
                format!("the Bundle is larger than {limit} bytes"),
            )
            .into_response();
        };
        if let Some((index, unmet)) = bundle_refusal(&principal, &bytes) {
            return forbidden(&claims.scope, &unmet, Some(index));
        }
        request = Request::from_parts(parts, axum::body::Body::from(bytes));
    } else {
        let query = request.uri().query().unwrap_or_default().to_string();
        if let Some(unmet) = refusal(&principal, need, segments, &query) {
            return forbidden(&claims.scope, &unmet, None);
        }
    }
    request
        .extensions_mut()
        .insert(Caller(Some(principal.clone() as Arc<dyn Access>)));
    request.extensions_mut().insert(principal);
    next.run(request).await
}

/// What the principal lacks for a request needing `need` (with its query string), if
/// anything. A scope granting part of a type (its patient's compartment, a query
/// restriction) is enough here: the handlers limit what the request reaches to that part,
/// and what a search reaches through includes, chains and `_has` as well.
fn refusal(principal: &Principal, need: Needs, segments: &[&str], query: &str) -> Option<Needs> {
    // A system-level search names its types in _type; each must be reachable. Without
    // it, and in system history, only the reachable types are searched.
    if segments.is_empty() || segments == ["_history"] {
        let types: Vec<String> = form_urlencoded::parse(query.as_bytes())
            .filter(|(name, _)| name == "_type")
            .flat_map(|(_, value)| value.split(',').map(str::to_string).collect::<Vec<_>>())
            .collect();
        return types
            .into_iter()
            .find(|t| !principal.reaches(t, Permission::Search))
            .map(|t| Needs::Access(t, Permission::Search));
    }
    let allowed = match &need {
        Needs::Nothing | Needs::Token => true,
        // The audit trail is not limited to part of it: reading it needs a scope
        // granting all of it.
        Needs::Access(resource_type, permission) if resource_type == "AuditEvent" => {
            principal.may(resource_type, *permission)
        }
        Needs::Access(resource_type, permission) => principal.reaches(resource_type, *permission),
        Needs::Everything => principal.may_do_anything(),
    };
    (!allowed).then_some(need)
}

/// The first entry of a batch or transaction Bundle the principal may not run, with what
/// it lacks. A body that is not a Bundle is left to the handler to refuse.
fn bundle_refusal(principal: &Principal, body: &[u8]) -> Option<(usize, Needs)> {
    let bundle: serde_json::Value = serde_json::from_slice(body).ok()?;
    for (index, entry) in bundle["entry"].as_array()?.iter().enumerate() {
        let method = entry["request"]["method"]
            .as_str()
            .and_then(|m| Method::from_bytes(m.as_bytes()).ok())
            .unwrap_or(Method::GET);
        let url = entry["request"]["url"].as_str().unwrap_or_default();
        // An entry URL is relative to the base; an absolute one is cut at `/fhir/`.
        let url = url.split_once("/fhir/").map_or(url, |(_, rest)| rest);
        let (path, query) = url.split_once('?').unwrap_or((url, ""));
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        // A nested Bundle entry is not allowed anyway; treat it as reaching everything.
        let need = if segments.is_empty() {
            Needs::Everything
        } else {
            needs(&method, &segments)
        };
        let unmet = match segments.is_empty() {
            true => (!principal.may_do_anything()).then_some(need),
            false => refusal(principal, need, &segments, query),
        };
        if let Some(unmet) = unmet {
            return Some((index, unmet));
        }
    }
    None
}

fn forbidden(scope: &str, unmet: &Needs, entry: Option<usize>) -> Response {
    let what = match unmet {
        Needs::Access(resource_type, permission) => {
            format!("{permission:?} access to {resource_type}")
        }
        _ => "access to every resource type (system/*.cruds)".to_string(),
    };
    let mut error = FhirError::new(
        StatusCode::FORBIDDEN,
        IssueCode::Forbidden,
        format!("the token's scopes ({scope}) do not grant {what}"),
    );
    if let Some(index) = entry {
        error = error.at(format!("Bundle.entry[{index}]"));
    }
    error.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_map_to_the_access_they_need() {
        let get = Method::GET;
        let cases: Vec<(Method, &str, Needs)> = vec![
            (get.clone(), "metadata", Needs::Nothing),
            (
                get.clone(),
                "Observation",
                Needs::Access("Observation".into(), Permission::Search),
            ),
            (
                Method::POST,
                "Observation",
                Needs::Access("Observation".into(), Permission::Create),
            ),
            (
                get.clone(),
                "Observation/1",
                Needs::Access("Observation".into(), Permission::Read),
            ),
            (
                Method::PUT,
                "Observation/1",
                Needs::Access("Observation".into(), Permission::Update),
            ),
            (
                Method::PATCH,
                "Observation/1",
                Needs::Access("Observation".into(), Permission::Update),
            ),
            (
                Method::DELETE,
                "Observation/1",
                Needs::Access("Observation".into(), Permission::Delete),
            ),
            (
                get.clone(),
                "Observation/1/_history/2",
                Needs::Access("Observation".into(), Permission::Read),
            ),
            (
                get.clone(),
                "Observation/$lastn",
                Needs::Access("Observation".into(), Permission::Search),
            ),
            (
                get.clone(),
                "Patient/1/Observation",
                Needs::Access("Observation".into(), Permission::Search),
            ),
            (
                get.clone(),
                "Subscription/1/$events",
                Needs::Access("Subscription".into(), Permission::Read),
            ),
            (Method::POST, "", Needs::Everything),
            (get.clone(), "_history", Needs::Everything),
            (Method::POST, "Observation/$reindex", Needs::Everything),
        ];
        for (method, path, expected) in cases {
            let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
            assert_eq!(needs(&method, &segments), expected, "{method} {path}");
        }
    }
}
