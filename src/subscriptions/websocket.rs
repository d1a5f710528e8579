//! The websocket channel (Subscriptions R5 Backport IG): a client gets a token with
//! `$get-ws-binding-token`, opens the websocket URL it names and sends
//! `bind-with-token: <token>`. For each subscription the token covers, the server sends a
//! handshake, then every new event as an event notification, and heartbeats at the
//! subscription's `heartbeatPeriod`, as notification Bundles in text messages.
//!
//! A connection receives the events recorded after it bound; a client that was
//! disconnected catches up with `$events` from the last number it saw. Each commit with
//! events wakes the connections (those of other instances through PostgreSQL `NOTIFY`);
//! a connection also looks every second.

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use sea_orm::ConnectionTrait;
use serde_json::Value as Json;

use super::audience::Audience;
use super::bookkeeping::{bookkeep, set_status};
use super::notification::{notification_bundle, NotificationType, SubscriptionState};
use super::outbox;
use super::registry::{is_live, WsToken};
use super::request::{Delivery, PayloadContent};
use crate::error::{FhirError, FhirResult};
use crate::fhir::outcome::IssueCode;
use crate::metrics::{Metrics, NotificationKind};
use crate::store::sql::statement;
use crate::store::time::now_micros;
use crate::store::Store;

/// How long a binding token stays valid.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(300);
/// Events per message when the subscription sets no `maxCount`.
const DEFAULT_MAX_COUNT: u64 = 100;

/// Gives out a token for `subscriptions` (already checked to be websocket ones).
pub fn issue_token(store: &Store, subscriptions: Vec<String>) -> (String, i64) {
    let token = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let now = now_micros();
    let expires = now + TOKEN_LIFETIME.as_micros() as i64;
    if let Ok(mut tokens) = store.subscriptions().ws_tokens.lock() {
        tokens.retain(|_, t| t.expires > now);
        tokens.insert(
            token.clone(),
            WsToken {
                subscriptions,
                expires,
            },
        );
    }
    (token, expires)
}

/// One subscription bound to the connection.
struct Bound {
    /// The last event number sent on this connection.
    cursor: i64,
    last_sent: std::time::Instant,
}

/// Serves one websocket connection until the client closes it.
pub async fn serve(
    mut socket: WebSocket,
    store: Store,
    metrics: std::sync::Arc<Metrics>,
    base: String,
) {
    let mut bound: HashMap<String, Bound> = HashMap::new();
    let mut committed = store.subscriptions().events_committed.subscribe();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            message = socket.recv() => {
                let text = match message {
                    Some(Ok(Message::Text(text))) => text.to_string(),
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                    Some(Ok(_)) => continue, // pings are answered by the library
                };
                match bind(&store, &text).await {
                    Ok(ids) => {
                        for id in ids {
                            match handshake(&store, &base, &id, &mut socket, &metrics).await {
                                Ok(cursor) => {
                                    bound.insert(id, Bound { cursor, last_sent: std::time::Instant::now() });
                                }
                                Err(err) => {
                                    if send_error(&mut socket, &err).await.is_err() {
                                        return;
                                    }
                                }
                            }
                        }
                    }
                    Err(err) => {
                        if send_error(&mut socket, &err).await.is_err() {
                            return;
                        }
                    }
                }
            }
            changed = committed.changed() => {
                if changed.is_err() {
                    return;
                }
                if send_due(&store, &base, &mut bound, &mut socket, &metrics).await.is_err() {
                    return;
                }
            }
            _ = tick.tick() => {
                if send_due(&store, &base, &mut bound, &mut socket, &metrics).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// The subscriptions a `bind-with-token: <token>` message binds.
async fn bind(store: &Store, text: &str) -> FhirResult<Vec<String>> {
    let token = text
        .trim()
        .strip_prefix("bind-with-token")
        .map(|rest| rest.trim_start_matches(':').trim())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            FhirError::bad_request(
                "send \"bind-with-token: <token>\" with a token from Subscription/[id]/$get-ws-binding-token",
            )
        })?;
    let now = now_micros();
    let found = store
        .subscriptions()
        .ws_tokens
        .lock()
        .ok()
        .and_then(|tokens| tokens.get(token).cloned());
    match found {
        Some(t) if t.expires > now => Ok(t.subscriptions),
        Some(_) => Err(FhirError::new(
            axum::http::StatusCode::UNAUTHORIZED,
            IssueCode::Security,
            "the binding token has expired; get a new one with $get-ws-binding-token",
        )),
        None => Err(FhirError::new(
            axum::http::StatusCode::UNAUTHORIZED,
            IssueCode::Security,
            "unknown binding token; get one with $get-ws-binding-token",
        )),
    }
}

/// Sends the handshake of a subscription just bound and marks it active; returns the
/// event number the connection starts after.
async fn handshake(
    store: &Store,
    base: &str,
    id: &str,
    socket: &mut WebSocket,
    metrics: &Metrics,
) -> FhirResult<i64> {
    let (content, state) = current(store, id).await?;
    let settings = Delivery::of(&content);
    let bundle = notification_bundle(
        base,
        &SubscriptionState {
            id,
            topic: settings.topic.as_deref(),
            status: "active",
            events_since_start: state.events_since_start,
            error: None,
        },
        NotificationType::Handshake,
        &[],
        settings.content,
        now_micros(),
    );
    socket
        .send(Message::Text(bundle.to_string().into()))
        .await
        .map_err(|e| FhirError::internal(format!("websocket send: {e}")))?;
    metrics.notification(NotificationKind::Handshake, true);
    let status = content["status"].as_str().unwrap_or_default().to_string();
    if status != "active" {
        let owned = id.to_string();
        bookkeep(
            store,
            Box::new(move |conn| {
                Box::pin(async move {
                    let backend = conn.get_database_backend();
                    conn.execute_raw(statement(
                        backend,
                        "UPDATE subscription_state SET handshake_pending = ?, last_error = NULL \
                         WHERE subscription_id = ?",
                        vec![false.into(), owned.into()],
                    ))
                    .await?;
                    Ok(())
                })
            }),
        )
        .await?;
        let owned = id.to_string();
        store
            .writer()
            .write(move |txn| {
                Box::pin(async move { set_status(txn, &owned, &status, "active", None).await })
            })
            .await?;
    }
    Ok(state.events_since_start)
}

/// The stored websocket Subscription and its state.
async fn current(store: &Store, id: &str) -> FhirResult<(Json, outbox::DeliveryState)> {
    let content = store
        .read("Subscription", id)
        .await?
        .and_then(|s| s.content)
        .ok_or_else(|| FhirError::not_found(format!("Subscription/{id} does not exist")))?;
    let state = outbox::state(store.connection(), id)
        .await?
        .ok_or_else(|| FhirError::not_found(format!("Subscription/{id} has no delivery state")))?;
    if state.channel != "websocket" || !is_live(&state.status) {
        return Err(FhirError::unprocessable(
            IssueCode::Processing,
            format!("Subscription/{id} is not a live websocket subscription"),
        ));
    }
    Ok((content, state))
}

/// Sends each bound subscription's new events, or a heartbeat when one is due.
async fn send_due(
    store: &Store,
    base: &str,
    bound: &mut HashMap<String, Bound>,
    socket: &mut WebSocket,
    metrics: &Metrics,
) -> Result<(), ()> {
    let mut gone = Vec::new();
    for (id, binding) in bound.iter_mut() {
        let Ok((content, state)) = current(store, id).await else {
            gone.push(id.clone());
            continue;
        };
        let settings = Delivery::of(&content);
        let status = content["status"].as_str().unwrap_or("active");
        if state.events_since_start > binding.cursor {
            let limit = settings.max_count.unwrap_or(DEFAULT_MAX_COUNT).max(1);
            let Ok(stored) = outbox::events(
                store.connection(),
                id,
                binding.cursor + 1,
                state.events_since_start,
                limit,
            )
            .await
            else {
                continue;
            };
            let Some(last) = stored.last().map(|e| e.number) else {
                continue;
            };
            // Only what the subscription's owner may read (see `audience`).
            let Ok(kept) = Audience::from_record(state.owner_access.as_deref())
                .keep(store, &stored)
                .await
            else {
                continue;
            };
            if kept.is_empty() {
                binding.cursor = last;
                continue;
            }
            let mut events = Vec::with_capacity(kept.len());
            for event in &kept {
                let resource = if settings.content == PayloadContent::FullResource
                    && event.change != "delete"
                {
                    store
                        .vread(&event.resource_type, &event.resource_id, event.version_id)
                        .await
                        .ok()
                        .flatten()
                        .and_then(|v| v.content)
                } else {
                    None
                };
                events.push(event.to_event(resource));
            }
            let bundle = notification_bundle(
                base,
                &SubscriptionState {
                    id,
                    topic: settings.topic.as_deref(),
                    status,
                    events_since_start: state.events_since_start,
                    error: None,
                },
                NotificationType::EventNotification,
                &events,
                settings.content,
                now_micros(),
            );
            socket
                .send(Message::Text(bundle.to_string().into()))
                .await
                .map_err(|_| ())?;
            metrics.notification(NotificationKind::Event, true);
            let now = now_micros();
            for event in &kept {
                metrics.event_delivered(now - event.occurred);
            }
            binding.cursor = last;
            binding.last_sent = std::time::Instant::now();
            let owned = id.clone();
            let _ = bookkeep(
                store,
                Box::new(move |conn| {
                    Box::pin(async move {
                        let backend = conn.get_database_backend();
                        conn.execute_raw(statement(
                            backend,
                            "UPDATE subscription_state SET delivered_through = ?, last_sent_at = ? \
                             WHERE subscription_id = ? AND delivered_through < ?",
                            vec![last.into(), now.into(), owned.into(), last.into()],
                        ))
                        .await?;
                        Ok(())
                    })
                }),
            )
            .await;
        } else if settings.heartbeat_seconds > 0
            && binding.last_sent.elapsed() >= Duration::from_secs(settings.heartbeat_seconds)
        {
            let bundle = notification_bundle(
                base,
                &SubscriptionState {
                    id,
                    topic: settings.topic.as_deref(),
                    status,
                    events_since_start: state.events_since_start,
                    error: None,
                },
                NotificationType::Heartbeat,
                &[],
                PayloadContent::Empty,
                now_micros(),
            );
            socket
                .send(Message::Text(bundle.to_string().into()))
                .await
                .map_err(|_| ())?;
            metrics.notification(NotificationKind::Heartbeat, true);
            binding.last_sent = std::time::Instant::now();
        }
    }
    for id in gone {
        bound.remove(&id);
    }
    Ok(())
}

async fn send_error(socket: &mut WebSocket, error: &FhirError) -> Result<(), axum::Error> {
    let outcome = crate::fhir::outcome::operation_outcome(&error.issues);
    socket.send(Message::Text(outcome.to_string().into())).await
}
