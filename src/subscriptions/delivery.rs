//! Delivery of notifications to rest-hook endpoints.
//!
//! A dispatcher wakes when a commit recorded events (or a Subscription changed), when
//! another instance announces one (PostgreSQL `NOTIFY`), and once per poll interval. It
//! reads the subscriptions with something due (a handshake, events, a heartbeat) and runs
//! one worker per subscription, so each subscription's notifications go out one at a time
//! and in event order.
//!
//! Several server instances may share a database. A subscription is delivered by the
//! instance holding its *lease* (`subscription_state.owner` until `lease_until`), taken
//! with a conditional UPDATE that only one instance can win and renewed with every
//! result. Results are recorded only while the lease is held, so two instances never both
//! advance one subscription; the lease of an instance that died runs out and another
//! instance takes the subscription over from the last event recorded as delivered.
//!
//! A failed notification is retried with exponential backoff and jitter, starting from
//! the oldest undelivered event, until the retry horizon (three days by default) has
//! passed since the first failure; then retries stop, the subscription stays in `error`
//! and its events keep being recorded, to be delivered once the client re-activates it.
//! Every attempt is recorded in `subscription_attempts`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sea_orm::{ConnectionTrait, Value};
use serde_json::Value as Json;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::audience::Audience;
use super::bookkeeping::{bookkeep, claim_in, set_status, Bookkeeping};
use super::notification::{notification_bundle, NotificationType, SubscriptionState};
use super::outbox::{self, DeliveryState, StoredEvent};
use super::registry::is_live;
use super::request::Delivery;
use super::signing::{signature, SIGNATURE_HEADER};
use crate::error::FhirResult;
use crate::metrics::{Metrics, NotificationKind};
use crate::outbound::OutboundPolicy;
use crate::store::sql::statement;
use crate::store::time::now_micros;
use crate::store::write_txn::Table;
use crate::store::Store;

/// PostgreSQL channel announcing new events.
pub const EVENTS_CHANNEL: &str = "fhirgate_subscription_events";
/// PostgreSQL channel announcing a changed Subscription (reload the registry).
pub const SUBSCRIPTIONS_CHANNEL: &str = "fhirgate_subscriptions";

/// Events per notification when the subscription sets no `maxCount`.
const DEFAULT_MAX_COUNT: u64 = 100;
/// Response timeout when the subscription sets none.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// First retry delay; doubled per failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// How long a worker with nothing to send waits for more before it ends.
const IDLE_WORKER: Duration = Duration::from_secs(2);
/// How long a resolved and checked endpoint is reused before it is resolved again.
const CLIENT_REUSE: Duration = Duration::from_secs(60);

/// One attempt to notify, as logged.
pub static SUBSCRIPTION_ATTEMPTS: Table = Table {
    name: "subscription_attempts",
    columns: &[
        ("subscription_id", "text"),
        ("attempted_at", "bigint"),
        ("kind", "text"),
        ("first_event", "bigint"),
        ("last_event", "bigint"),
        ("http_status", "integer"),
        ("error", "text"),
        ("duration_us", "bigint"),
        ("instance", "text"),
    ],
};

#[derive(Debug, Clone)]
pub struct Settings {
    /// The FHIR base URL notifications refer to.
    pub base_url: String,
    /// This instance, as it signs leases.
    pub instance: String,
    /// How long failed notifications are retried before the subscription is left in
    /// `error` until its client re-activates it.
    pub retry_horizon: Duration,
    /// How long a lease lasts without renewal.
    pub lease: Duration,
    /// Interval of the safety-net poll (wake-ups normally come first).
    pub poll: Duration,
    pub policy: OutboundPolicy,
    /// How long delivered events (for `$events`) and attempts are kept.
    pub retention: Duration,
}

/// The running delivery of one server.
pub struct DeliveryHandle {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    delivery: Arc<Deliverer>,
}

impl DeliveryHandle {
    /// Stops dispatching, lets notifications in flight finish (a few seconds at most) and
    /// hands this instance's leases back so another instance can continue at once.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self
            .delivery
            .in_flight
            .lock()
            .map(|f| f.is_empty())
            .unwrap_or(true)
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let instance = self.delivery.settings.instance.clone();
        let _ = bookkeep(
            &self.delivery.store,
            Box::new(move |txn| {
                Box::pin(async move {
                    let backend = txn.get_database_backend();
                    txn.execute_raw(statement(
                        backend,
                        "UPDATE subscription_state SET owner = NULL, lease_until = 0 WHERE owner = ?",
                        vec![instance.into()],
                    ))
                    .await?;
                    Ok(())
                })
            }),
        )
        .await;
    }

    /// Stops at once without handing anything back, as a crash would (for tests of the
    /// takeover by another instance).
    pub fn abandon(self) {
        for task in self.tasks {
            task.abort();
        }
        self.delivery
            .abandoned
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

pub struct Deliverer {
    store: Store,
    settings: Settings,
    metrics: Arc<Metrics>,
    /// Subscriptions with a worker running on this instance.
    in_flight: Mutex<HashSet<String>>,
    /// How to tell a running worker that its subscription has something due.
    pokes: Mutex<HashMap<String, Arc<tokio::sync::Notify>>>,
    /// Checked endpoints: (URL, client, when checked).
    clients: Mutex<HashMap<String, (reqwest::Client, Instant)>>,
    abandoned: std::sync::atomic::AtomicBool,
}

/// Starts the delivery of `store`'s subscriptions.
pub fn start(store: Store, settings: Settings, metrics: Arc<Metrics>) -> DeliveryHandle {
    let (stop, stopped) = watch::channel(false);
    let delivery = Arc::new(Deliverer {
        store,
        settings,
        metrics,
        in_flight: Mutex::new(HashSet::new()),
        pokes: Mutex::new(HashMap::new()),
        clients: Mutex::new(HashMap::new()),
        abandoned: std::sync::atomic::AtomicBool::new(false),
    });
    let mut tasks = vec![tokio::spawn(dispatch(delivery.clone(), stopped.clone()))];
    if delivery.store.backend() == sea_orm::DbBackend::Postgres {
        tasks.push(tokio::spawn(listen(delivery.clone(), stopped)));
    }
    DeliveryHandle {
        stop,
        tasks,
        delivery,
    }
}

async fn dispatch(delivery: Arc<Deliverer>, mut stopped: watch::Receiver<bool>) {
    let registry = delivery.store.subscriptions().clone();
    let prune_every = (delivery.settings.retention / 2).min(super::retention::MAX_PRUNE_INTERVAL);
    let mut pruned_at = Instant::now();
    loop {
        if pruned_at.elapsed() >= prune_every {
            pruned_at = Instant::now();
            if let Err(err) =
                super::retention::prune(&delivery.store, delivery.settings.retention).await
            {
                tracing::warn!("cannot prune old subscription events: {}", err.message());
            }
        }
        tokio::select! {
            _ = registry.wake.notified() => {}
            _ = tokio::time::sleep(delivery.settings.poll) => {}
            _ = stopped.changed() => return,
        }
        if *stopped.borrow() {
            return;
        }
        if let Err(err) = delivery.clone().start_due().await {
            tracing::warn!(
                "subscription delivery: cannot read what is due: {}",
                err.message()
            );
        }
    }
}

/// Listens for other instances' announcements (PostgreSQL): a changed Subscription
/// reloads the registry, new events wake the dispatcher.
async fn listen(delivery: Arc<Deliverer>, mut stopped: watch::Receiver<bool>) {
    use sea_orm::sqlx::postgres::PgListener;
    let registry = delivery.store.subscriptions().clone();
    loop {
        let pool = delivery.store.connection().get_postgres_connection_pool();
        let mut listener = match PgListener::connect_with(pool).await {
            Ok(listener) => listener,
            Err(err) => {
                tracing::warn!("cannot listen for subscription events: {err}");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(5)) => continue,
                    _ = stopped.changed() => return,
                }
            }
        };
        if let Err(err) = listener
            .listen_all([EVENTS_CHANNEL, SUBSCRIPTIONS_CHANNEL])
            .await
        {
            tracing::warn!("cannot listen for subscription events: {err}");
            tokio::time::sleep(Duration::from_secs(5)).await;
            continue;
        }
        loop {
            let notification = tokio::select! {
                n = listener.recv() => n,
                _ = stopped.changed() => return,
            };
            match notification {
                // This instance's own announcements were handled at its commit.
                Ok(n) if n.payload() == registry.instance => {}
                Ok(n) => {
                    if n.channel() == EVENTS_CHANNEL {
                        registry.events_committed.send_modify(|count| *count += 1);
                    }
                    if n.channel() == SUBSCRIPTIONS_CHANNEL {
                        if let Err(err) =
                            super::registry::reload(delivery.store.connection(), &registry).await
                        {
                            tracing::warn!("cannot reload the subscriptions: {}", err.message());
                        }
                    }
                    registry.wake.notify_one();
                }
                Err(err) => {
                    tracing::warn!("subscription listener lost its connection: {err}");
                    break;
                }
            }
        }
    }
}

impl Deliverer {
    fn instance(&self) -> &str {
        &self.settings.instance
    }

    fn lease_micros(&self) -> i64 {
        self.settings.lease.as_micros() as i64
    }

    /// Starts a worker for every subscription with something due that this instance
    /// holds or can take.
    async fn start_due(self: Arc<Self>) -> FhirResult<()> {
        let now = now_micros();
        let due = outbox::due_states(self.store.connection(), now).await?;
        for state in due {
            if state.ends_at.is_some_and(|end| end <= now) {
                self.end(&state).await;
                continue;
            }
            if state.channel != "rest-hook" {
                continue;
            }
            let mine = state.owner.as_deref() == Some(self.instance());
            if !mine && state.owner.is_some() && state.lease_until > now {
                continue; // another instance delivers it
            }
            {
                let Ok(mut in_flight) = self.in_flight.lock() else {
                    continue;
                };
                if !in_flight.insert(state.subscription_id.clone()) {
                    // Its worker is running: tell it there is more.
                    if let Some(poke) = self
                        .pokes
                        .lock()
                        .ok()
                        .and_then(|p| p.get(&state.subscription_id).cloned())
                    {
                        poke.notify_one();
                    }
                    continue;
                }
            }
            let poke = Arc::new(tokio::sync::Notify::new());
            if let Ok(mut pokes) = self.pokes.lock() {
                pokes.insert(state.subscription_id.clone(), poke.clone());
            }
            let worker = self.clone();
            tokio::spawn(async move {
                let id = state.subscription_id.clone();
                if let Err(err) = worker.clone().work(&state, &poke).await {
                    tracing::warn!(subscription = %id, "delivery stopped: {}", err.message());
                }
                if let Ok(mut pokes) = worker.pokes.lock() {
                    pokes.remove(&id);
                }
                if let Ok(mut in_flight) = worker.in_flight.lock() {
                    in_flight.remove(&id);
                }
                // Events that arrived while this worker was finishing are picked up now.
                worker.store.subscriptions().wake.notify_one();
            });
        }
        Ok(())
    }

    /// Turns off a subscription whose `end` has passed (R4: "the time for the server to
    /// turn the subscription off").
    async fn end(&self, state: &DeliveryState) {
        let (id, from) = (state.subscription_id.clone(), state.status.clone());
        let result = self
            .store
            .writer()
            .write(move |txn| {
                Box::pin(async move { set_status(txn, &id, &from, "off", None).await })
            })
            .await;
        if let Err(err) = result {
            tracing::warn!(
                subscription = %state.subscription_id,
                "cannot turn off a subscription past its end: {}",
                err.message()
            );
        }
    }

    /// Takes or renews the lease of a subscription; false when another instance holds it.
    async fn claim(&self, id: &str) -> FhirResult<bool> {
        let (instance, lease) = (self.instance().to_string(), self.lease_micros());
        let id = id.to_string();
        bookkeep(
            &self.store,
            Box::new(move |conn| {
                Box::pin(async move { claim_in(conn, &id, &instance, lease).await })
            }),
        )
        .await
    }

    /// Sends what is due for one subscription, one notification at a time, until nothing
    /// is due or the lease is lost. `known` is the state the dispatcher read: when this
    /// instance holds the lease for a while yet, it is not taken again.
    async fn work(
        self: Arc<Self>,
        known: &DeliveryState,
        poke: &tokio::sync::Notify,
    ) -> FhirResult<()> {
        let id = known.subscription_id.as_str();
        let started = now_micros();
        let must_claim = known.owner.as_deref() != Some(self.instance())
            || known.lease_until - started < self.lease_micros() / 2;
        let mut lease_until = if must_claim {
            started + self.lease_micros()
        } else {
            known.lease_until
        };
        let mut state = if must_claim {
            let (owned_id, instance, lease) = (
                id.to_string(),
                self.instance().to_string(),
                self.lease_micros(),
            );
            bookkeep(
                &self.store,
                Box::new(move |conn| {
                    Box::pin(async move {
                        if !claim_in(conn, &owned_id, &instance, lease).await? {
                            return Ok(None);
                        }
                        outbox::state(conn, &owned_id).await
                    })
                }),
            )
            .await?
        } else {
            outbox::state(self.store.connection(), id).await?
        };
        // The Subscription as last read, re-read when its status changes.
        let mut subscription: Option<(String, Json, Delivery)> = None;
        let mut busy_at = Instant::now();
        loop {
            let Some(current) = state.take() else {
                return Ok(());
            };
            if self.abandoned.load(std::sync::atomic::Ordering::SeqCst)
                || !is_live(&current.status)
                || current.channel != "rest-hook"
            {
                return Ok(());
            }
            let now = now_micros();
            if lease_until - now < self.lease_micros() / 2 && !self.claim(id).await? {
                return Ok(());
            }
            if subscription
                .as_ref()
                .is_none_or(|(status, _, _)| *status != current.status)
            {
                let Some(content) = self
                    .store
                    .read("Subscription", id)
                    .await?
                    .and_then(|s| s.content)
                else {
                    return Ok(());
                };
                let settings = Delivery::of(&content);
                subscription = Some((current.status.clone(), content, settings));
            }
            let Some((_, content, settings)) = subscription.as_ref() else {
                return Ok(());
            };
            let heartbeat_due = current.status == "active"
                && current.heartbeat_seconds > 0
                && current.last_sent_at + current.heartbeat_seconds * 1_000_000 <= now;
            let retry_due = current.next_attempt_at <= now;
            let (kind, events) = if current.handshake_pending && retry_due {
                (NotificationType::Handshake, Vec::new())
            } else if current.delivered_through < current.events_since_start && retry_due {
                let limit = settings.max_count.unwrap_or(DEFAULT_MAX_COUNT).max(1);
                let events = outbox::events(
                    self.store.connection(),
                    id,
                    current.delivered_through + 1,
                    current.events_since_start,
                    limit,
                )
                .await?;
                if events.is_empty() {
                    return Ok(());
                }
                (NotificationType::EventNotification, events)
            } else if heartbeat_due {
                (NotificationType::Heartbeat, Vec::new())
            } else {
                // Nothing due: stay a moment for more (a busy subscription then costs no
                // new worker per event), until its next retry or heartbeat at the latest.
                let idle_left = IDLE_WORKER.saturating_sub(busy_at.elapsed());
                if idle_left.is_zero() {
                    return Ok(());
                }
                let mut wait = idle_left;
                for due_at in [
                    (current.delivered_through < current.events_since_start
                        || current.handshake_pending)
                        .then_some(current.next_attempt_at),
                    (current.status == "active" && current.heartbeat_seconds > 0)
                        .then(|| current.last_sent_at + current.heartbeat_seconds * 1_000_000),
                ]
                .into_iter()
                .flatten()
                {
                    let until = Duration::from_micros((due_at - now).max(0) as u64);
                    wait = wait.min(until);
                }
                let _ = tokio::time::timeout(wait, poke.notified()).await;
                let owned_id = id.to_string();
                state = outbox::state(self.store.connection(), &owned_id).await?;
                continue;
            };
            busy_at = Instant::now();
            let outcome = self.send(&current, content, settings, kind, &events).await;
            // None: the lease went to another instance.
            state = self.record(&current, kind, &events, outcome).await?;
            lease_until = now_micros() + self.lease_micros();
        }
    }

    /// Builds and posts one notification.
    async fn send(
        &self,
        state: &DeliveryState,
        subscription: &Json,
        settings: &Delivery,
        kind: NotificationType,
        events: &[StoredEvent],
    ) -> Outcome {
        let started = Instant::now();
        let attempted_at = now_micros();
        // Only what the subscription's owner may read; when nothing of these events is,
        // nothing is sent and they count as delivered.
        let audience = Audience::from_record(state.owner_access.as_deref());
        let events = match audience.keep(&self.store, events).await {
            Ok(kept) => kept,
            Err(err) => return Outcome::failed(attempted_at, started, None, err.message()),
        };
        if kind == NotificationType::EventNotification && events.is_empty() {
            return Outcome {
                attempted_at,
                duration: started.elapsed(),
                http_status: None,
                error: None,
            };
        }
        let mut notified = Vec::with_capacity(events.len());
        for event in &events {
            let resource = if event.change == "delete" {
                None
            } else if settings.content == super::request::PayloadContent::FullResource {
                match self
                    .store
                    .vread(&event.resource_type, &event.resource_id, event.version_id)
                    .await
                {
                    Ok(found) => found.and_then(|v| v.content),
                    Err(err) => return Outcome::failed(attempted_at, started, None, err.message()),
                }
            } else {
                None
            };
            notified.push(event.to_event(resource));
        }
        // A handshake or heartbeat reports the status the subscription will have once
        // it is answered; an event notification the current one.
        let status = match kind {
            NotificationType::Handshake => "requested",
            _ => state.status.as_str(),
        };
        let bundle = notification_bundle(
            &self.settings.base_url,
            &SubscriptionState {
                id: &state.subscription_id,
                topic: settings.topic.as_deref(),
                status,
                events_since_start: state.events_since_start,
                error: None,
            },
            kind,
            &notified,
            settings.content,
            attempted_at,
        );
        let body = bundle.to_string();
        let _ = subscription;
        let Some(endpoint) = settings.endpoint.as_deref() else {
            return Outcome::failed(
                attempted_at,
                started,
                None,
                "the subscription has no endpoint".into(),
            );
        };
        let timeout = settings
            .timeout_seconds
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_TIMEOUT)
            .max(Duration::from_secs(1));
        let client = match self.client(endpoint, timeout).await {
            Ok(client) => client,
            Err(reason) => return Outcome::failed(attempted_at, started, None, reason),
        };
        let mut request = client
            .post(endpoint)
            .timeout(timeout)
            .header("Content-Type", "application/fhir+json")
            .header("Accept", "application/fhir+json");
        for (name, value) in &settings.headers {
            request = request.header(name.as_str(), value.as_str());
        }
        if let Some(secret) = &state.signing_secret {
            request = request.header(
                SIGNATURE_HEADER,
                signature(secret, attempted_at / 1_000_000, &body),
            );
        }
        match request.body(body).send().await {
            Ok(response) if response.status().is_success() => Outcome {
                attempted_at,
                duration: started.elapsed(),
                http_status: Some(response.status().as_u16()),
                error: None,
            },
            Ok(response) => {
                let status = response.status();
                Outcome::failed(
                    attempted_at,
                    started,
                    Some(status.as_u16()),
                    format!(
                        "the endpoint answered {} {}",
                        status.as_u16(),
                        status.canonical_reason().unwrap_or("")
                    )
                    .trim_end()
                    .to_string(),
                )
            }
            Err(err) => Outcome::failed(attempted_at, started, None, describe(err)),
        }
    }

    /// An HTTP client for `endpoint` that connects only to addresses the outbound policy
    /// allows, reused for a minute before the name is resolved and checked again.
    async fn client(&self, endpoint: &str, timeout: Duration) -> Result<reqwest::Client, String> {
        if let Ok(clients) = self.clients.lock() {
            if let Some((client, checked)) = clients.get(endpoint) {
                if checked.elapsed() < CLIENT_REUSE {
                    return Ok(client.clone());
                }
            }
        }
        let policy = &self.settings.policy;
        let url = policy.check_url(endpoint).map_err(|r| r.0)?;
        let addresses = policy.resolve(&url).await.map_err(|r| r.0)?;
        let client = policy.client(&url, &addresses, timeout).map_err(|r| r.0)?;
        if let Ok(mut clients) = self.clients.lock() {
            clients.insert(endpoint.to_string(), (client.clone(), Instant::now()));
        }
        Ok(client)
    }

    /// Records the outcome of a notification, if this instance still holds the lease:
    /// the attempt, the new delivery position or retry schedule, and the status.
    async fn record(
        &self,
        state: &DeliveryState,
        kind: NotificationType,
        events: &[StoredEvent],
        outcome: Outcome,
    ) -> FhirResult<Option<DeliveryState>> {
        let metric_kind = match kind {
            NotificationType::Handshake => NotificationKind::Handshake,
            NotificationType::Heartbeat => NotificationKind::Heartbeat,
            _ => NotificationKind::Event,
        };
        let ok = outcome.error.is_none();
        self.metrics.notification(metric_kind, ok);
        if let Some(error) = &outcome.error {
            tracing::info!(
                subscription = %state.subscription_id,
                kind = kind.code(),
                "notification failed: {error}"
            );
        }
        let now = now_micros();
        let failures = if ok { 0 } else { state.failures + 1 };
        let failing_since = if ok {
            None
        } else {
            Some(state.failing_since.unwrap_or(outcome.attempted_at))
        };
        let gave_up = failing_since
            .is_some_and(|since| now - since >= self.settings.retry_horizon.as_micros() as i64);
        let next_attempt_at = if ok {
            0
        } else if gave_up {
            i64::MAX
        } else {
            now + backoff(failures).as_micros() as i64
        };
        let delivered_through = match (ok, events.last()) {
            (true, Some(last)) => last.number,
            _ => state.delivered_through,
        };
        let new_status = if ok { "active" } else { "error" };
        let job = Recorded {
            id: state.subscription_id.clone(),
            instance: self.instance().to_string(),
            lease_until: now + self.lease_micros(),
            handshake_done: ok && kind == NotificationType::Handshake,
            delivered_through,
            failures,
            failing_since,
            next_attempt_at,
            last_error: outcome.error.clone(),
            sent_at: ok.then_some(now),
            status_from: state.status.clone(),
            status_to: new_status,
            attempt: vec![
                state.subscription_id.as_str().into(),
                outcome.attempted_at.into(),
                kind.code().into(),
                events.first().map(|e| e.number).into(),
                events.last().map(|e| e.number).into(),
                outcome.http_status.map(i32::from).into(),
                outcome.error.clone().into(),
                (outcome.duration.as_micros() as i64).into(),
                self.instance().into(),
            ],
        };
        let (id, from, to, error) = (
            job.id.clone(),
            job.status_from.clone(),
            job.status_to,
            job.last_error.clone(),
        );
        // The outcome, and the state after it, in one statement.
        let next = bookkeep(
            &self.store,
            Box::new(move |conn| Box::pin(async move { job.apply(conn).await })),
        )
        .await?;
        let Some(mut next) = next else {
            return Ok(None);
        };
        if from != to {
            // A version of the Subscription: written like any resource (it may trigger
            // subscriptions itself), after the bookkeeping committed.
            self.store
                .writer()
                .write(move |txn| {
                    Box::pin(async move { set_status(txn, &id, &from, to, error.as_deref()).await })
                })
                .await?;
            match outbox::state(self.store.connection(), &next.subscription_id).await? {
                Some(fresh) => next = fresh,
                None => return Ok(None),
            }
        }
        if ok {
            for event in events {
                self.metrics.event_delivered(now - event.occurred);
            }
        }
        Ok(Some(next))
    }
}

/// What one notification attempt came to.
struct Outcome {
    attempted_at: i64,
    duration: Duration,
    http_status: Option<u16>,
    error: Option<String>,
}

impl Outcome {
    fn failed(
        attempted_at: i64,
        started: Instant,
        http_status: Option<u16>,
        error: String,
    ) -> Outcome {
        Outcome {
            attempted_at,
            duration: started.elapsed(),
            http_status,
            error: Some(error),
        }
    }
}

/// The bookkeeping of one attempt, applied in one transaction.
struct Recorded {
    id: String,
    instance: String,
    lease_until: i64,
    handshake_done: bool,
    delivered_through: i64,
    failures: i64,
    failing_since: Option<i64>,
    next_attempt_at: i64,
    last_error: Option<String>,
    sent_at: Option<i64>,
    status_from: String,
    status_to: &'static str,
    attempt: Vec<Value>,
}

impl Recorded {
    /// Applies the outcome and returns the state after it, or `None` when the lease or
    /// the subscription's status changed meanwhile (nothing is recorded then).
    async fn apply(self, conn: &Bookkeeping<'_>) -> FhirResult<Option<DeliveryState>> {
        let backend = conn.get_database_backend();
        let mut sql = String::from(
            "UPDATE subscription_state SET lease_until = ?, delivered_through = ?, failures = ?, \
             failing_since = ?, next_attempt_at = ?, last_error = ?",
        );
        let mut values: Vec<Value> = vec![
            self.lease_until.into(),
            self.delivered_through.into(),
            (self.failures as i32).into(),
            self.failing_since.into(),
            self.next_attempt_at.into(),
            self.last_error.clone().into(),
        ];
        if self.handshake_done {
            sql.push_str(", handshake_pending = ?");
            values.push(false.into());
        }
        if let Some(sent_at) = self.sent_at {
            sql.push_str(", last_sent_at = ?");
            values.push(sent_at.into());
        }
        // Only while this instance holds the lease, and only for the subscription as it
        // was when the notification was built (not one the client re-requested since).
        sql.push_str(" WHERE subscription_id = ? AND owner = ? AND status = ? RETURNING ");
        sql.push_str(outbox::STATE_COLUMNS);
        values.push(self.id.as_str().into());
        values.push(self.instance.as_str().into());
        values.push(self.status_from.as_str().into());
        match conn {
            Bookkeeping::Shared(txn) => {
                let rows = txn.query_changing(statement(backend, &sql, values)).await?;
                let Some(row) = rows.first() else {
                    return Ok(None);
                };
                // With the other rows of the shared commit, as one multi-row INSERT.
                txn.defer(&SUBSCRIPTION_ATTEMPTS, self.attempt).await;
                Ok(Some(outbox::state_from_row(row)?))
            }
            Bookkeeping::Own(txn) => {
                // The update and the attempt in one round trip; the attempt only when the
                // update found the row (the lease still held).
                let names: Vec<&str> = SUBSCRIPTION_ATTEMPTS
                    .columns
                    .iter()
                    .map(|(n, _)| *n)
                    .collect();
                let sql = format!(
                    "WITH updated AS ({sql}), attempt AS (INSERT INTO {} ({}) \
                     SELECT {} FROM updated) SELECT * FROM updated",
                    SUBSCRIPTION_ATTEMPTS.name,
                    names.join(", "),
                    SUBSCRIPTION_ATTEMPTS
                        .columns
                        .iter()
                        .map(|(_, pg_type)| format!("CAST(? AS {pg_type})"))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                values.extend(self.attempt);
                let row = txn.query_one_raw(statement(backend, &sql, values)).await?;
                row.map(|row| outbox::state_from_row(&row)).transpose()
            }
        }
    }
}

/// Delay before retry number `failures` (1 = the first retry): exponential with full
/// jitter in its upper half, so subscribers failing together do not retry together.
fn backoff(failures: i64) -> Duration {
    let exponent = (failures - 1).clamp(0, 20) as u32;
    let ceiling = FIRST_BACKOFF
        .saturating_mul(2u32.saturating_pow(exponent))
        .min(MAX_BACKOFF);
    let random = (uuid::Uuid::new_v4().as_u128() % 1000) as f64 / 1000.0;
    ceiling.mul_f64(0.5 + random / 2.0)
}

/// A transport error in words, without the URL (which may carry a token).
fn describe(err: reqwest::Error) -> String {
    if err.is_timeout() {
        "the endpoint did not answer in time".into()
    } else if err.is_connect() {
        "cannot connect to the endpoint".into()
    } else if err.is_redirect() {
        "the endpoint answered with a redirect, which is not followed".into()
    } else {
        format!("the request failed: {}", err.without_url())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_a_ceiling() {
        for failures in 1..40 {
            let ceiling = FIRST_BACKOFF
                .saturating_mul(2u32.saturating_pow((failures - 1).min(20) as u32))
                .min(MAX_BACKOFF);
            let delay = backoff(failures);
            assert!(
                delay <= ceiling && delay >= ceiling / 2,
                "{failures}: {delay:?}"
            );
        }
        assert!(backoff(30) <= MAX_BACKOFF);
    }
}
