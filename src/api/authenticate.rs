//! With `--auth smart`, every FHIR request needs a valid access token (401 with
//! `WWW-Authenticate: Bearer` otherwise) whose scopes cover what it asks for (403).
//!
//! The check here is per request: the resource type and the kind of access the route
//! implies (read, search, create, update, delete). Requests that reach several types at
//! once (batch/transaction Bundles, system-level search and history) need `system/*`
//! scopes for everything until their parts are checked one by one.

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use crate::auth::principal::Principal;
use crate::auth::scopes::Permission;
use crate::config::AuthMode;
use crate::error::FhirError;
use crate::fhir::outcome::IssueCode;

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
        [t, op] if op.starts_with('$') => access(t, Permission::Search),
        [t, _id, "$validate"] => access(t, Permission::Update),
        [t, _id] if *method == Method::GET => access(t, Permission::Read),
        [t, _id] => write(t),
        [t, _id, "_history", ..] => access(t, Permission::Read),
        // A compartment search: `Patient/1/Observation`.
        [_compartment, _id, target] => access(target, Permission::Search),
        _ => Needs::Everything,
    }
}

/// The types a search query reaches besides the searched one: `_include` targets,
/// `_revinclude` sources, chain targets and `_has` types, each needing search access
/// (else a client could read, or infer, what its scopes do not cover). `None` when a
/// part reaches every type (`_include=*`, a chain through a parameter without declared
/// targets).
pub fn types_reached(searched: &str, query: &str) -> Option<Vec<String>> {
    use crate::search::params::SearchParams;
    let params = SearchParams::get();
    let targets_of = |resource_type: &str, code: &str| -> Option<Vec<String>> {
        let def = params.param(resource_type, code)?;
        (!def.targets.is_empty()).then(|| def.targets.clone())
    };
    let mut reached: Vec<String> = Vec::new();
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        let base = name.split(':').next().unwrap_or_default();
        match base {
            "_include" | "_revinclude" => {
                for value in value.split(',') {
                    let parts: Vec<&str> = value.split(':').collect();
                    match (base, parts.as_slice()) {
                        (_, ["*"]) => return None,
                        ("_revinclude", [source, ..]) => reached.push(source.to_string()),
                        (_, [_, _, target]) => reached.push(target.to_string()),
                        (_, [source, param]) if *param != "*" => {
                            reached.extend(targets_of(source, param)?)
                        }
                        _ => return None,
                    }
                }
            }
            "_has" => {
                // _has:Observation:patient:code=…
                if let Some(source) = name.split(':').nth(1) {
                    reached.push(source.to_string());
                }
            }
            _ if name.contains('.') => {
                // subject:Patient.name or subject.name, possibly chained further.
                let mut current = searched.to_string();
                for link in name.split('.').take(name.split('.').count() - 1) {
                    let (code, target) = match link.split_once(':') {
                        Some((code, target)) => (code, Some(target.to_string())),
                        None => (link, None),
                    };
                    let targets = match target {
                        Some(target) => vec![target],
                        None => targets_of(&current, code)?,
                    };
                    reached.extend(targets.iter().cloned());
                    match targets.as_slice() {
                        [one] => current = one.clone(),
                        _ => return None,
                    }
                }
            }
            _ => {}
        }
    }
    reached.sort();
    reached.dedup();
    Some(reached)
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
    let Some(rest) = path.strip_prefix("/fhir") else {
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
    let principal = Principal::from_claims(&claims);
    who.client_id = Some(principal.client_id.clone());
    who.patient = principal.patient.clone();
    // A Bundle: each entry is checked as the request it stands for.
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
        let mut request = Request::from_parts(parts, axum::body::Body::from(bytes));
        request.extensions_mut().insert(principal);
        return next.run(request).await;
    }
    let query = request.uri().query().unwrap_or_default().to_string();
    if let Some(unmet) = refusal(&principal, need.clone(), segments, &query) {
        // A patient/ token writing its patient's data (a home device posting readings).
        if let Some(write) = compartment_write(&principal, &unmet, request.method(), segments) {
            let limit = state.config.max_body_bytes;
            let (parts, body) = request.into_parts();
            let Ok(bytes) = axum::body::to_bytes(body, limit).await else {
                return FhirError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    IssueCode::TooLong,
                    format!("the body is larger than {limit} bytes"),
                )
                .into_response();
            };
            if let Err(why) = write.check(state, &bytes).await {
                return FhirError::new(StatusCode::FORBIDDEN, IssueCode::Forbidden, why)
                    .into_response();
            }
            let mut request = Request::from_parts(parts, axum::body::Body::from(bytes));
            request.extensions_mut().insert(principal);
            return next.run(request).await;
        }
        // A query-restricted scope (`system/Observation.rs?category=…`) may still grant it.
        match restricted(
            state,
            &principal,
            &unmet,
            request.method(),
            segments,
            &query,
        )
        .await
        {
            Restricted::Search(restricted_query) => {
                let uri = format!("{}?{restricted_query}", request.uri().path());
                match uri.parse() {
                    Ok(uri) => *request.uri_mut() = uri,
                    Err(_) => return forbidden(&claims.scope, &unmet, None),
                }
            }
            Restricted::Path(path) => {
                let uri = match request.uri().query() {
                    Some(query) => format!("{path}?{query}"),
                    None => path,
                };
                match uri.parse() {
                    Ok(uri) => *request.uri_mut() = uri,
                    Err(_) => return forbidden(&claims.scope, &unmet, None),
                }
            }
            Restricted::Granted => {}
            Restricted::Refused(why) => {
                return match why {
                    Some(why) => FhirError::new(StatusCode::FORBIDDEN, IssueCode::Forbidden, why)
                        .into_response(),
                    None => forbidden(&claims.scope, &unmet, None),
                }
            }
        }
    }
    request.extensions_mut().insert(principal);
    next.run(request).await
}

/// A `patient/` token's request: a search becomes the compartment search of its patient
/// (`Observation?…` → `Patient/{patient}/Observation?…`), a read is of a resource in the
/// compartment; nothing else is granted yet (writes, operations, includes, chains, _has).
async fn in_compartment(
    state: &AppState,
    patient: &str,
    resource_type: &str,
    permission: Permission,
    method: &Method,
    segments: &[&str],
    query: &str,
) -> Restricted {
    use crate::search::compartment::Compartments;
    let outside = |what: String| Restricted::Refused(Some(what));
    let members = resource_type == "Patient"
        || !Compartments::get()
            .params("Patient", resource_type)
            .is_empty();
    if !members {
        return outside(format!(
            "{resource_type} resources are not in a patient's compartment; a patient/ token \
             reaches only its patient's data"
        ));
    }
    match (permission, segments) {
        (Permission::Search, [t] | ["Patient", _, t])
            if *method == Method::GET && *t == resource_type =>
        {
            if let ["Patient", id, _] = segments {
                if *id != patient {
                    return outside(format!(
                        "a patient/ token reaches only Patient/{patient}'s compartment"
                    ));
                }
            }
            if types_reached(resource_type, query).is_none_or(|types| !types.is_empty()) {
                return outside(
                    "with a patient/ token, searches may not use _include, _revinclude, chains or _has yet"
                        .into(),
                );
            }
            Restricted::Path(format!("/fhir/Patient/{patient}/{resource_type}"))
        }
        (Permission::Read, [t, id, ..]) if *method == Method::GET && *t == resource_type => {
            match in_patient_compartment(state, patient, resource_type, id).await {
                true => Restricted::Granted,
                false => outside(format!(
                    "{resource_type}/{id} is not in Patient/{patient}'s compartment"
                )),
            }
        }
        _ => outside("a patient/ token may only read and search its patient's data for now".into()),
    }
}

/// Whether `resource_type/id` is in the compartment of `Patient/patient`.
async fn in_patient_compartment(
    state: &AppState,
    patient: &str,
    resource_type: &str,
    id: &str,
) -> bool {
    use sea_orm::ConnectionTrait;
    let Ok(condition) = crate::search::compartment::Compartments::get().condition(
        "Patient",
        patient,
        resource_type,
    ) else {
        return false;
    };
    let (filter, filter_values) = crate::search::criteria::conjunction(vec![condition]);
    let mut values: Vec<sea_orm::Value> = vec![resource_type.into(), id.into(), false.into()];
    values.extend(filter_values);
    let connection = state.store.connection();
    let statement = crate::store::sql::statement(
        connection.get_database_backend(),
        &format!(
            "SELECT 1 AS found FROM resources r WHERE r.resource_type = ? AND r.id = ? \
             AND r.deleted = ?{filter}"
        ),
        values,
    );
    matches!(connection.query_one_raw(statement).await, Ok(Some(_)))
}

/// A create (`POST [type]`) or update (`PUT [type]/[id]`) by a `patient/` token.
struct CompartmentWrite {
    patient: String,
    resource_type: String,
    /// The id of an update.
    id: Option<String>,
}

fn compartment_write(
    principal: &Principal,
    unmet: &Needs,
    method: &Method,
    segments: &[&str],
) -> Option<CompartmentWrite> {
    let Needs::Access(resource_type, permission) = unmet else {
        return None;
    };
    let patient = principal.patient.clone()?;
    if !principal.may_in_compartment(resource_type, *permission) {
        return None;
    }
    let id = match (method, *permission, segments) {
        (&Method::POST, Permission::Create, [_]) => None,
        (&Method::PUT, Permission::Update, [_, id]) => Some(id.to_string()),
        _ => return None,
    };
    Some(CompartmentWrite {
        patient,
        resource_type: resource_type.clone(),
        id,
    })
}

impl CompartmentWrite {
    /// The new content must be in the patient's compartment, and so must the resource an
    /// update replaces (or a token could take over another patient's data by its id).
    async fn check(&self, state: &AppState, body: &[u8]) -> Result<(), String> {
        let (patient, resource_type) = (self.patient.as_str(), self.resource_type.as_str());
        // A body that is not JSON is refused by the handler with 400.
        let Ok(content) = serde_json::from_slice::<serde_json::Value>(body) else {
            return Ok(());
        };
        let member = if resource_type == "Patient" {
            self.id.as_deref() == Some(patient) && content["id"] == patient
        } else {
            use crate::search::extract::{extract_where, IndexEntry};
            let params =
                crate::search::compartment::Compartments::get().params("Patient", resource_type);
            extract_where(crate::search::params::SearchParams::get(), &content, |def| {
                params.iter().any(|p| *p == *def.code)
            })
            .iter()
            .any(|entry| {
                matches!(entry, IndexEntry::Reference { target_type: Some(t), target_id: Some(id), .. }
                    if t == "Patient" && id == patient)
            })
        };
        if !member {
            return Err(format!(
                "a patient/ token writes only Patient/{patient}'s data: the {resource_type} \
                 must refer to Patient/{patient} (e.g. in subject)"
            ));
        }
        if let Some(id) = &self.id {
            let exists = matches!(state.store.read(resource_type, id).await, Ok(Some(stored)) if !stored.deleted);
            if exists && !in_patient_compartment(state, patient, resource_type, id).await {
                return Err(format!(
                    "{resource_type}/{id} belongs to another patient's compartment"
                ));
            }
        }
        Ok(())
    }
}

/// What a query-restricted scope makes of a request no unrestricted scope grants.
enum Restricted {
    /// A search of a compartment instead (the new path; the query is kept).
    Path(String),
    /// A search, run with the restriction added to its criteria.
    Search(String),
    /// A read of a resource that matches the restriction.
    Granted,
    /// Not granted (with the reason when it is the restriction's).
    Refused(Option<String>),
}

async fn restricted(
    state: &AppState,
    principal: &Principal,
    unmet: &Needs,
    method: &Method,
    segments: &[&str],
    query: &str,
) -> Restricted {
    let Needs::Access(resource_type, permission) = unmet else {
        return Restricted::Refused(None);
    };
    if let Some(patient) = principal
        .patient
        .as_deref()
        .filter(|_| principal.may_in_compartment(resource_type, *permission))
    {
        return in_compartment(
            state,
            patient,
            resource_type,
            *permission,
            method,
            segments,
            query,
        )
        .await;
    }
    let restrictions = principal.restrictions(resource_type, *permission);
    let restriction = match restrictions.as_slice() {
        [] => return Restricted::Refused(None),
        [one] => one.clone(),
        _ => {
            return Restricted::Refused(Some(format!(
                "the token holds several restricted scopes for {resource_type} ({}); ask for \
                 one of them",
                restrictions.join(", ")
            )))
        }
    };
    match (*permission, segments) {
        // A search of the type, or of it in a compartment: only the matching resources,
        // and nothing reached from them (their own types could include more of this one).
        (Permission::Search, [t] | [_, _, t]) if *method == Method::GET && t == resource_type => {
            if types_reached(resource_type, query).is_none_or(|types| !types.is_empty()) {
                return Restricted::Refused(Some(format!(
                    "with a restricted scope ({restriction}), a search of {resource_type} may not \
                     use _include, _revinclude, chains or _has"
                )));
            }
            // Appended as encoded pairs: a scope's query is written plainly (`|`, `:`).
            let mut joined = form_urlencoded::Serializer::new(query.to_string());
            for (name, value) in form_urlencoded::parse(restriction.as_bytes()) {
                joined.append_pair(&name, &value);
            }
            Restricted::Search(joined.finish())
        }
        // A read (or its history) of one resource that matches the restriction.
        (Permission::Read, [t, id, ..]) if *method == Method::GET && t == resource_type => {
            let criteria = format!("_id={id}&{restriction}");
            match crate::store::matching::find_matches(state.store.connection(), resource_type, &criteria)
                .await
            {
                Ok(found) if !found.is_empty() => Restricted::Granted,
                _ => Restricted::Refused(Some(format!(
                    "{resource_type}/{id} is not within the token's scope restriction ({restriction})"
                ))),
            }
        }
        _ => Restricted::Refused(None),
    }
}

/// What the principal lacks for a request needing `need` (with its query string), if
/// anything.
fn refusal(principal: &Principal, need: Needs, segments: &[&str], query: &str) -> Option<Needs> {
    // A system-level search names its types in _type; without it, it reaches every type.
    if segments.is_empty() && need == Needs::Everything {
        let types: Vec<String> = form_urlencoded::parse(query.as_bytes())
            .filter(|(name, _)| name == "_type")
            .flat_map(|(_, value)| value.split(',').map(str::to_string).collect::<Vec<_>>())
            .collect();
        if !types.is_empty() {
            return types
                .into_iter()
                .find(|t| !principal.may(t, Permission::Search))
                .map(|t| Needs::Access(t, Permission::Search));
        }
    }
    let allowed = match &need {
        Needs::Nothing | Needs::Token => true,
        Needs::Access(resource_type, permission) => principal.may(resource_type, *permission),
        Needs::Everything => principal.may_do_anything(),
    };
    if !allowed {
        return Some(need);
    }
    if let Needs::Access(resource_type, Permission::Search) = &need {
        // What the query reaches through includes, chains and _has.
        return match types_reached(resource_type, query) {
            None => (!principal.may_do_anything()).then_some(Needs::Everything),
            Some(types) => types
                .into_iter()
                .find(|t| !principal.may(t, Permission::Search))
                .map(|t| Needs::Access(t, Permission::Search)),
        };
    }
    None
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
        if let Some(unmet) = refusal(principal, need, &segments, query) {
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
    fn includes_chains_and_has_reach_other_types() {
        let reached = |query: &str| types_reached("Observation", query);
        assert_eq!(reached("code=8867-4"), Some(vec![]));
        assert_eq!(
            reached("_include=Observation:subject:Patient&_revinclude=Provenance:target"),
            Some(vec!["Patient".to_string(), "Provenance".to_string()])
        );
        assert_eq!(
            reached("subject:Patient.name=Chalmers"),
            Some(vec!["Patient".to_string()])
        );
        assert_eq!(
            reached("patient.organization.name=x"),
            Some(vec!["Organization".to_string(), "Patient".to_string()])
        );
        assert_eq!(
            types_reached("Patient", "_has:Observation:patient:code=8867-4"),
            Some(vec!["Observation".to_string()])
        );
        assert_eq!(reached("_include=*"), None);
        let subject = reached("_include=Observation:subject").unwrap();
        assert!(
            subject.contains(&"Patient".to_string()) && subject.contains(&"Device".to_string())
        );
    }

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
