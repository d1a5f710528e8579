//! The Subscription operations of the Subscriptions R5 Backport IG: `$status` (the
//! current state of subscriptions, as status `Parameters` in a searchset Bundle) and
//! `$events` (a notification Bundle replaying stored events by number, so a client that
//! was unreachable can catch up).

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use serde_json::{json, Value as Json};

use super::extract::{BaseUrl, Caller};
use super::respond::fhir_json;
use super::AppState;
use crate::error::{FhirError, FhirResult};
use crate::store::time::now_micros;
use crate::subscriptions::audience::Audience;
use crate::subscriptions::notification::{
    notification_bundle, status_parameters, NotificationType, SubscriptionState,
};
use crate::subscriptions::outbox::{self, DeliveryState};
use crate::subscriptions::request::{Delivery, PayloadContent};

/// Most events one `$events` call returns; ask again from the next number for more.
pub const MAX_EVENTS_PER_CALL: i64 = 1000;

/// The stored Subscription (404/410 otherwise) and its delivery state.
async fn subscription(state: &AppState, id: &str) -> FhirResult<(Json, DeliveryState)> {
    let stored = state.store.read("Subscription", id).await?;
    let content = match stored {
        None => {
            return Err(FhirError::not_found(format!(
                "Subscription/{id} does not exist"
            )))
        }
        Some(s) if s.deleted => {
            return Err(FhirError::gone(format!("Subscription/{id} was deleted")))
        }
        Some(s) => s.content.unwrap_or(Json::Null),
    };
    let delivery = outbox::state(state.store.connection(), id)
        .await?
        .ok_or_else(|| FhirError::internal("a Subscription without delivery state"))?;
    Ok((content, delivery))
}

fn status_entry(base: &str, id: &str, content: &Json, delivery: &DeliveryState) -> Json {
    let settings = Delivery::of(content);
    let status = content["status"].as_str().unwrap_or("requested");
    let parameters = status_parameters(
        base,
        &SubscriptionState {
            id,
            topic: settings.topic.as_deref(),
            status,
            events_since_start: delivery.events_since_start,
            error: delivery.last_error.as_deref(),
        },
        NotificationType::QueryStatus,
        &[],
        PayloadContent::Empty,
    );
    json!({
        "fullUrl": format!("urn:uuid:{}", uuid::Uuid::new_v4()),
        "resource": parameters,
        "search": {"mode": "match"}
    })
}

fn searchset(entries: Vec<Json>) -> Json {
    json!({
        "resourceType": "Bundle",
        "id": uuid::Uuid::new_v4().to_string(),
        "type": "searchset",
        "total": entries.len(),
        "entry": entries
    })
}

/// `GET [base]/Subscription/[id]/$status`
#[utoipa::path(
    get, path = "/fhir/Subscription/{id}/$status", tag = "Subscriptions",
    params(("id" = String, Path, description = "Subscription id")),
    responses(
        (status = 200, description = "searchset Bundle with the subscription status (Parameters, profile backport-subscription-status-r4): status, topic, events since start, last error", content_type = "application/fhir+json"),
        (status = 404, description = "No such Subscription", content_type = "application/fhir+json"),
    )
)]
pub async fn status(
    State(state): State<AppState>,
    base: BaseUrl,
    Path(id): Path<String>,
    caller: Caller,
) -> FhirResult<Response> {
    super::crud::check_sees(&state, &caller, "Subscription", &id).await?;
    let (content, delivery) = subscription(&state, &id).await?;
    let bundle = searchset(vec![status_entry(&base.0, &id, &content, &delivery)]);
    Ok(fhir_json(StatusCode::OK, &bundle))
}

#[derive(Debug, Deserialize)]
pub struct StatusQuery {
    /// Comma-separated subscription ids (repeatable).
    id: Option<String>,
}

/// `GET [base]/Subscription/$status?id=…`
#[utoipa::path(
    get, path = "/fhir/Subscription/$status", tag = "Subscriptions",
    params(("id" = String, Query, description = "Subscription ids, comma-separated")),
    responses(
        (status = 200, description = "searchset Bundle with one status Parameters per subscription", content_type = "application/fhir+json"),
        (status = 400, description = "No id given", content_type = "application/fhir+json"),
        (status = 404, description = "A Subscription does not exist", content_type = "application/fhir+json"),
    )
)]
pub async fn status_of_many(
    State(state): State<AppState>,
    base: BaseUrl,
    Query(query): Query<StatusQuery>,
    caller: Caller,
) -> FhirResult<Response> {
    let ids: Vec<String> = query
        .id
        .as_deref()
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    for id in &ids {
        super::crud::check_sees(&state, &caller, "Subscription", id).await?;
    }
    if ids.is_empty() {
        return Err(FhirError::bad_request(
            "give the subscriptions as id=…, e.g. Subscription/$status?id=123,456",
        ));
    }
    if ids.len() > 100 {
        return Err(FhirError::bad_request(
            "at most 100 subscriptions per $status request",
        ));
    }
    let mut entries = Vec::with_capacity(ids.len());
    for id in &ids {
        let (content, delivery) = subscription(&state, id).await?;
        entries.push(status_entry(&base.0, id, &content, &delivery));
    }
    Ok(fhir_json(StatusCode::OK, &searchset(entries)))
}

#[derive(Debug, Deserialize)]
pub struct EventsQuery {
    #[serde(rename = "eventsSinceNumber")]
    events_since_number: Option<String>,
    #[serde(rename = "eventsUntilNumber")]
    events_until_number: Option<String>,
    content: Option<String>,
}

fn event_number(name: &str, text: Option<&str>) -> FhirResult<Option<i64>> {
    match text {
        None => Ok(None),
        Some(text) => text
            .trim()
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .map(Some)
            .ok_or_else(|| {
                FhirError::bad_request(format!(
                    "{name}={text:?} is not an event number (a whole number, 1 for the first event)"
                ))
            }),
    }
}

/// `GET [base]/Subscription/[id]/$events`
#[utoipa::path(
    get, path = "/fhir/Subscription/{id}/$events", tag = "Subscriptions",
    params(
        ("id" = String, Path, description = "Subscription id"),
        ("eventsSinceNumber" = Option<String>, Query, description = "First event number to return (inclusive); default: the oldest", example = "1"),
        ("eventsUntilNumber" = Option<String>, Query, description = "Last event number to return (inclusive); default: the newest. At most 1000 events per call"),
        ("content" = Option<String>, Query, description = "empty, id-only or full-resource; default: the subscription's payload content"),
    ),
    responses(
        (status = 200, description = "history Bundle (notification type query-event): the status Parameters, then the events' resources as the content asks", content_type = "application/fhir+json"),
        (status = 400, description = "A malformed event number or content code", content_type = "application/fhir+json"),
        (status = 404, description = "No such Subscription", content_type = "application/fhir+json"),
    )
)]
pub async fn events(
    State(state): State<AppState>,
    base: BaseUrl,
    Path(id): Path<String>,
    caller: Caller,
    Query(query): Query<EventsQuery>,
) -> FhirResult<Response> {
    super::crud::check_sees(&state, &caller, "Subscription", &id).await?;
    let (content, delivery) = subscription(&state, &id).await?;
    let settings = Delivery::of(&content);
    let payload = match query.content.as_deref() {
        None => settings.content,
        Some("empty") => PayloadContent::Empty,
        Some("id-only") => PayloadContent::IdOnly,
        Some("full-resource") => PayloadContent::FullResource,
        Some(other) => {
            return Err(FhirError::bad_request(format!(
                "content={other:?} is not a payload content; use empty, id-only or full-resource"
            )))
        }
    };
    let since = event_number("eventsSinceNumber", query.events_since_number.as_deref())?
        .unwrap_or(1)
        .max(1);
    let until = event_number("eventsUntilNumber", query.events_until_number.as_deref())?
        .unwrap_or(delivery.events_since_start)
        .min(delivery.events_since_start);
    let stored = if since <= until {
        outbox::events(
            state.store.connection(),
            &id,
            since,
            until,
            MAX_EVENTS_PER_CALL as u64,
        )
        .await?
    } else {
        Vec::new()
    };
    // Only what the subscription's owner may read (see `subscriptions::audience`).
    let stored = Audience::from_record(delivery.owner_access.as_deref())
        .keep(&state.store, &stored)
        .await?;
    let mut events = Vec::with_capacity(stored.len());
    for event in stored {
        let resource = if payload == PayloadContent::FullResource && event.change != "delete" {
            state
                .store
                .vread(&event.resource_type, &event.resource_id, event.version_id)
                .await?
                .and_then(|v| v.content)
        } else {
            None
        };
        events.push(event.to_event(resource));
    }
    let bundle = notification_bundle(
        &base.0,
        &SubscriptionState {
            id: &id,
            topic: settings.topic.as_deref(),
            status: content["status"].as_str().unwrap_or("requested"),
            events_since_start: delivery.events_since_start,
            error: delivery.last_error.as_deref(),
        },
        NotificationType::QueryEvent,
        &events,
        payload,
        now_micros(),
    );
    Ok(fhir_json(StatusCode::OK, &bundle))
}

/// The websocket URL of this server, from its FHIR base URL.
fn websocket_url(base: &str) -> String {
    let ws_base = if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        base.to_string()
    };
    format!("{ws_base}/$subscription-ws")
}

async fn binding_token(state: &AppState, base: &str, ids: Vec<String>) -> FhirResult<Response> {
    for id in &ids {
        let (content, _) = subscription(state, id).await?;
        if content["channel"]["type"] != "websocket" {
            return Err(FhirError::unprocessable(
                crate::fhir::outcome::IssueCode::Processing,
                format!("Subscription/{id} has a {} channel; binding tokens are for websocket subscriptions",
                    content["channel"]["type"].as_str().unwrap_or("missing")),
            ));
        }
    }
    let (token, expires) = crate::subscriptions::websocket::issue_token(&state.store, ids.clone());
    let mut parameters = vec![
        json!({"name": "token", "valueString": token}),
        json!({"name": "expiration", "valueDateTime": crate::store::time::instant(expires)}),
    ];
    for id in &ids {
        parameters.push(json!({"name": "subscription", "valueString": id}));
    }
    parameters.push(json!({"name": "websocket-url", "valueUrl": websocket_url(base)}));
    Ok(fhir_json(
        StatusCode::OK,
        &json!({"resourceType": "Parameters", "parameter": parameters}),
    ))
}

/// `POST [base]/Subscription/[id]/$get-ws-binding-token`
#[utoipa::path(
    post, path = "/fhir/Subscription/{id}/$get-ws-binding-token", tag = "Subscriptions",
    params(("id" = String, Path, description = "Subscription id (a websocket subscription)")),
    responses(
        (status = 200, description = "Parameters: token, expiration (five minutes), subscription, websocket-url. Open the websocket URL and send `bind-with-token: <token>`", content_type = "application/fhir+json"),
        (status = 404, description = "No such Subscription", content_type = "application/fhir+json"),
        (status = 422, description = "Not a websocket subscription", content_type = "application/fhir+json"),
    )
)]
pub async fn ws_binding_token(
    State(state): State<AppState>,
    base: BaseUrl,
    Path(id): Path<String>,
    caller: Caller,
) -> FhirResult<Response> {
    super::crud::check_sees(&state, &caller, "Subscription", &id).await?;
    binding_token(&state, &base.0, vec![id]).await
}

/// `GET [base]/Subscription/[id]/$get-ws-binding-token`
#[utoipa::path(
    get, path = "/fhir/Subscription/{id}/$get-ws-binding-token", tag = "Subscriptions",
    params(("id" = String, Path, description = "Subscription id (a websocket subscription)")),
    responses(
        (status = 200, description = "Parameters: token, expiration, subscription, websocket-url", content_type = "application/fhir+json"),
        (status = 404, description = "No such Subscription", content_type = "application/fhir+json"),
    )
)]
pub async fn ws_binding_token_get(
    State(state): State<AppState>,
    base: BaseUrl,
    Path(id): Path<String>,
    caller: Caller,
) -> FhirResult<Response> {
    super::crud::check_sees(&state, &caller, "Subscription", &id).await?;
    binding_token(&state, &base.0, vec![id]).await
}

/// `POST [base]/Subscription/$get-ws-binding-token?id=…`
#[utoipa::path(
    post, path = "/fhir/Subscription/$get-ws-binding-token", tag = "Subscriptions",
    params(("id" = String, Query, description = "Websocket subscription ids, comma-separated")),
    responses(
        (status = 200, description = "Parameters: one token for all the subscriptions", content_type = "application/fhir+json"),
        (status = 400, description = "No id given", content_type = "application/fhir+json"),
    )
)]
pub async fn ws_binding_token_many(
    State(state): State<AppState>,
    base: BaseUrl,
    Query(query): Query<StatusQuery>,
    caller: Caller,
) -> FhirResult<Response> {
    let ids: Vec<String> = query
        .id
        .as_deref()
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    for id in &ids {
        super::crud::check_sees(&state, &caller, "Subscription", id).await?;
    }
    if ids.is_empty() || ids.len() > 100 {
        return Err(FhirError::bad_request(
            "give one to 100 websocket subscriptions as id=…, e.g. Subscription/$get-ws-binding-token?id=123,456",
        ));
    }
    binding_token(&state, &base.0, ids).await
}

/// `GET [base]/$subscription-ws`: the websocket channel (see `subscriptions::websocket`).
pub async fn websocket(
    State(state): State<AppState>,
    base: BaseUrl,
    upgrade: axum::extract::ws::WebSocketUpgrade,
) -> Response {
    let store = state.store.clone();
    let metrics = state.metrics.clone();
    upgrade.on_upgrade(move |socket| {
        crate::subscriptions::websocket::serve(socket, store, metrics, base.0)
    })
}

/// `GET [base]/SubscriptionTopic`: the topics this server offers, as R4B-style
/// SubscriptionTopic resources (the form the Backport IG uses to describe topics to R4
/// clients; R4 has no such resource type, so they are read-only here).
#[utoipa::path(
    get, path = "/fhir/SubscriptionTopic", tag = "Subscriptions",
    responses((status = 200, description = "searchset Bundle of the SubscriptionTopic definitions (R4B form): triggers, and the filters each topic accepts (canFilterBy)", content_type = "application/fhir+json"))
)]
pub async fn topics(base: BaseUrl) -> Response {
    let entries: Vec<Json> = crate::subscriptions::topics::Topics::get()
        .definitions()
        .iter()
        .map(|topic| {
            json!({
                "fullUrl": format!("{}/SubscriptionTopic/{}", base.0, topic["id"].as_str().unwrap_or_default()),
                "resource": topic,
                "search": {"mode": "match"}
            })
        })
        .collect();
    fhir_json(StatusCode::OK, &searchset(entries))
}

/// `GET [base]/SubscriptionTopic/[id]`
#[utoipa::path(
    get, path = "/fhir/SubscriptionTopic/{id}", tag = "Subscriptions",
    params(("id" = String, Path, description = "Topic id, e.g. observation")),
    responses(
        (status = 200, description = "The SubscriptionTopic definition (R4B form)", content_type = "application/fhir+json"),
        (status = 404, description = "No such topic", content_type = "application/fhir+json"),
    )
)]
pub async fn topic(Path(id): Path<String>) -> FhirResult<Response> {
    crate::subscriptions::topics::Topics::get()
        .definitions()
        .iter()
        .find(|t| t["id"] == id.as_str())
        .map(|t| fhir_json(StatusCode::OK, t))
        .ok_or_else(|| {
            FhirError::not_found(format!(
                "SubscriptionTopic/{id} does not exist; GET SubscriptionTopic lists the topics"
            ))
        })
}
