//! The subscription outbox, written inside the transaction of the resource change: a
//! change commits together with its events, or neither does, so a restart or a crash can
//! never lose an event nor announce a change that did not happen.
//!
//! Two hooks run from `store::versions::write_version`: [`subscription_written`] keeps
//! the delivery state of a written Subscription (`subscription_state`), and
//! [`record_events`] queues an event row for each live subscription a change triggers.
//! The writer numbers the rows of its commit at its end ([`number_at_commit`]).

use sea_orm::{ConnectionTrait, DbBackend, Value};
use serde_json::Value as Json;

use super::registry::{is_live, Change, Decision, EntryCache};
use super::request::{take_signing_secret, Delivery};
use super::topics::Interaction;
use crate::error::{FhirError, FhirResult};
use crate::fhir::outcome::IssueCode;
use crate::search::criteria::{condition, conjunction};
use crate::store::sql::statement;
use crate::store::time::now_micros;
use crate::store::versions::read_version;
use crate::store::write_txn::{Table, WriteTxn};

/// One event of one subscription (numbered later, see [`number_events`]).
pub static SUBSCRIPTION_EVENTS: Table = Table {
    name: "subscription_events",
    columns: &[
        ("subscription_id", "text"),
        ("event_number", "bigint"),
        ("occurred", "bigint"),
        ("resource_type", "text"),
        ("resource_id", "text"),
        ("version_id", "bigint"),
        ("change", "text"),
    ],
};

/// Prepares a Subscription about to be stored: checks its endpoint against the
/// operator's outbound policy and takes its signing secret out of the content. Returns
/// the secret change for [`subscription_written`].
pub fn prepare_subscription(
    conn: &WriteTxn<'_>,
    content: &mut Json,
) -> FhirResult<Option<Option<String>>> {
    if let (Some(registry), Some(endpoint)) = (
        conn.subscriptions(),
        content["channel"]["endpoint"].as_str(),
    ) {
        if content["channel"]["type"] == "rest-hook" {
            registry
                .policy
                .check_endpoint(endpoint)
                .map_err(|refusal| {
                    FhirError::unprocessable(IssueCode::Security, refusal.0)
                        .at("Subscription.channel.endpoint")
                })?;
        }
    }
    Ok(take_signing_secret(content))
}

/// Keeps `subscription_state` in step with a Subscription version just written
/// (`content` is `None` for a deletion). A subscription asked for again (`requested`)
/// starts over with a handshake and a clean retry schedule; its event numbers go on.
pub async fn subscription_written(
    conn: &WriteTxn<'_>,
    id: &str,
    content: Option<&Json>,
    secret: Option<Option<String>>,
) -> FhirResult<()> {
    let backend = conn.get_database_backend();
    let status = content
        .and_then(|c| c["status"].as_str())
        .unwrap_or("off")
        .to_string();
    let delivery = content.map(Delivery::of);
    let channel = delivery
        .as_ref()
        .map(|d| d.channel.clone())
        .unwrap_or_default();
    let heartbeat = delivery.as_ref().map_or(0, |d| d.heartbeat_seconds) as i64;
    // R4 `Subscription.end`: when the server turns the subscription off.
    let ends_at: Option<i64> = content
        .and_then(|c| c["end"].as_str())
        .and_then(crate::search::extract::parse_date_range)
        .map(|(low, _)| low);
    let stored = conn
        .query_one_raw(statement(
            backend,
            "SELECT status FROM subscription_state WHERE subscription_id = ?",
            vec![id.into()],
        ))
        .await?;
    match stored {
        None => {
            let secret = secret.flatten();
            // A Subscription created again after a deletion keeps its event numbers.
            let conflict = if backend == DbBackend::Postgres {
                " ON CONFLICT (subscription_id) DO NOTHING"
            } else {
                " ON CONFLICT DO NOTHING"
            };
            conn.execute_raw(statement(
                backend,
                &format!(
                    "INSERT INTO subscription_counters (subscription_id, last_number) \
                     VALUES (?, 0){conflict}"
                ),
                vec![id.into()],
            ))
            .await?;
            // The writer owns it: notifications carry only what it may read.
            let (owner_client, owner_access) = match conn.caller().and_then(|c| c.record()) {
                Some((client, access)) => (Some(client), Some(access)),
                None => (None, None),
            };
            conn.execute_raw(statement(
                backend,
                "INSERT INTO subscription_state (subscription_id, status, channel, \
                 heartbeat_seconds, ends_at, signing_secret, owner_client, owner_access) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                vec![
                    id.into(),
                    status.into(),
                    channel.into(),
                    heartbeat.into(),
                    ends_at.into(),
                    secret.into(),
                    owner_client.into(),
                    owner_access.into(),
                ],
            ))
            .await?;
        }
        Some(row) => {
            let before: String = row.try_get("", "status")?;
            let restart = status == "requested" && before != "requested";
            let mut sql = String::from(
                "UPDATE subscription_state SET status = ?, channel = ?, heartbeat_seconds = ?, \
                 ends_at = ?",
            );
            let mut values: Vec<Value> = vec![
                status.into(),
                channel.into(),
                heartbeat.into(),
                ends_at.into(),
            ];
            if let Some(secret) = secret {
                sql.push_str(", signing_secret = ?");
                values.push(secret.into());
            }
            if restart {
                sql.push_str(
                    ", handshake_pending = ?, failures = 0, failing_since = NULL, \
                     next_attempt_at = 0, last_error = NULL",
                );
                values.push(true.into());
            }
            sql.push_str(" WHERE subscription_id = ?");
            values.push(id.into());
            conn.execute_raw(statement(backend, &sql, values)).await?;
        }
    }
    conn.subscriptions_changed().await;
    Ok(())
}

/// Records the events a resource change causes: one per live subscription it triggers,
/// numbered in that subscription's sequence.
#[allow(clippy::too_many_arguments)]
pub async fn record_events(
    conn: &WriteTxn<'_>,
    resource_type: &str,
    id: &str,
    version_id: i64,
    interaction: Interaction,
    current: Option<&Json>,
    occurred: i64,
) -> FhirResult<()> {
    let Some(registry) = conn.subscriptions().cloned() else {
        return Ok(());
    };
    let candidates = registry.candidates(resource_type);
    if candidates.is_empty() {
        return Ok(());
    }
    // The version replaced: for `%previous`, and for filters on what was deleted.
    let previous =
        if version_id > 1 && (current.is_none() || registry.needs_previous(resource_type)) {
            read_version(conn, resource_type, id, version_id - 1)
                .await?
                .and_then(|v| v.content)
        } else {
            None
        };
    let change = Change {
        resource_type,
        interaction,
        current,
        previous: previous.as_ref(),
    };
    let mut entries = EntryCache::default();
    let mut triggered: Vec<String> = Vec::new();
    for subscription in candidates {
        match subscription.decide(&change, &mut entries) {
            Decision::No => {}
            Decision::Yes => triggered.push(subscription.id.clone()),
            Decision::Probe(criteria) => {
                if row_matches(conn, resource_type, id, &criteria).await? {
                    triggered.push(subscription.id.clone());
                }
            }
        }
    }
    if triggered.is_empty() {
        return Ok(());
    }
    triggered.sort_unstable();
    triggered.dedup();
    let change_code = match interaction {
        Interaction::Create => "create",
        Interaction::Update => "update",
        Interaction::Delete => "delete",
    };
    // Numbered at the end of the commit (`number_at_commit`), never here: a statement of
    // its own per write would cost each write a savepoint and round trips.
    conn.events_recorded(&triggered).await;
    let numbered: Vec<(String, Option<i64>)> = triggered.into_iter().map(|id| (id, None)).collect();
    for (subscription_id, number) in numbered {
        conn.defer(
            &SUBSCRIPTION_EVENTS,
            vec![
                subscription_id.into(),
                number.into(),
                occurred.into(),
                resource_type.into(),
                id.into(),
                version_id.into(),
                change_code.into(),
            ],
        )
        .await;
    }
    Ok(())
}

/// Numbers the events a write transaction recorded, at its end, for the subscriptions
/// in `touched`: each subscription's rows in the order they were recorded, after the
/// last number it gave. On PostgreSQL the counters are locked first, in id order, in a
/// statement of their own (the numbering statement then sees the counters as the
/// previous holder committed them); no other transaction locks them, and a writer
/// holding one waits only for another counter, so writers never deadlock here.
pub async fn number_at_commit(conn: &impl ConnectionTrait, touched: &[String]) -> FhirResult<()> {
    if touched.is_empty() {
        return Ok(());
    }
    let backend = conn.get_database_backend();
    let list = vec!["?"; touched.len()].join(", ");
    let ids = || -> Vec<Value> { touched.iter().map(|id| Value::from(id.as_str())).collect() };
    if backend == DbBackend::Postgres {
        conn.query_all_raw(statement(
            backend,
            &format!(
                "SELECT subscription_id FROM subscription_counters WHERE subscription_id IN ({list}) \
                 ORDER BY subscription_id FOR UPDATE"
            ),
            ids(),
        ))
        .await?;
    }
    conn.execute_raw(statement(
        backend,
        &format!(
            "UPDATE subscription_events SET event_number = n.base + n.rn FROM ( \
               SELECT e.seq, c.last_number AS base, \
                 row_number() OVER (PARTITION BY e.subscription_id ORDER BY e.seq) AS rn \
               FROM subscription_events e \
               JOIN subscription_counters c ON c.subscription_id = e.subscription_id \
               WHERE e.event_number IS NULL AND e.subscription_id IN ({list})) AS n \
             WHERE subscription_events.seq = n.seq"
        ),
        ids(),
    ))
    .await?;
    conn.execute_raw(statement(
        backend,
        &format!(
            "UPDATE subscription_counters SET last_number = COALESCE((SELECT MAX(e.event_number) \
               FROM subscription_events e WHERE e.subscription_id = subscription_counters.subscription_id), \
               last_number) WHERE subscription_id IN ({list})"
        ),
        ids(),
    ))
    .await?;
    Ok(())
}

/// Whether the stored resource matches search criteria the registry could not decide in
/// memory (run on the transaction, so it sees the version just written).
async fn row_matches(
    conn: &WriteTxn<'_>,
    resource_type: &str,
    id: &str,
    criteria: &[(String, String)],
) -> FhirResult<bool> {
    let mut conditions = Vec::new();
    for (name, value) in criteria {
        // Checked when the subscription was written; one that no longer parses (a
        // SearchParameter since removed) matches nothing rather than failing the write.
        match condition(resource_type, name, value) {
            Ok(found) => conditions.extend(found),
            Err(_) => return Ok(false),
        }
    }
    let (filter, filter_values) = conjunction(conditions);
    let mut values: Vec<Value> = vec![resource_type.into(), id.into(), false.into()];
    values.extend(filter_values);
    let backend = conn.get_database_backend();
    let sql = format!(
        "SELECT 1 AS hit FROM resources r WHERE r.resource_type = ? AND r.id = ? \
         AND r.deleted = ?{filter}"
    );
    let found = conn.query_one_raw(statement(backend, &sql, values)).await?;
    Ok(found.is_some())
}

/// The events of a subscription numbered `from..=to`, oldest first, at most `limit`.
pub async fn events(
    conn: &impl ConnectionTrait,
    subscription_id: &str,
    from: i64,
    to: i64,
    limit: u64,
) -> FhirResult<Vec<StoredEvent>> {
    let backend = conn.get_database_backend();
    let rows = conn
        .query_all_raw(statement(
            backend,
            "SELECT event_number, occurred, resource_type, resource_id, version_id, change \
             FROM subscription_events WHERE subscription_id = ? AND event_number >= ? \
             AND event_number <= ? ORDER BY event_number LIMIT ?",
            vec![
                subscription_id.into(),
                from.into(),
                to.into(),
                (limit as i64).into(),
            ],
        ))
        .await?;
    rows.iter()
        .map(|row| {
            Ok(StoredEvent {
                number: row.try_get("", "event_number")?,
                occurred: row.try_get("", "occurred")?,
                resource_type: row.try_get("", "resource_type")?,
                resource_id: row.try_get("", "resource_id")?,
                version_id: row.try_get("", "version_id")?,
                change: row.try_get("", "change")?,
            })
        })
        .collect()
}

/// An event row of the outbox.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub number: i64,
    pub occurred: i64,
    pub resource_type: String,
    pub resource_id: String,
    pub version_id: i64,
    /// `create`, `update` or `delete`.
    pub change: String,
}

impl StoredEvent {
    /// The event as a notification reports it, with the resource for `full-resource`.
    pub fn to_event(&self, resource: Option<Json>) -> super::notification::Event {
        use super::notification::Change;
        super::notification::Event {
            number: self.number,
            timestamp_micros: self.occurred,
            resource_type: self.resource_type.clone(),
            id: self.resource_id.clone(),
            version_id: self.version_id,
            change: match self.change.as_str() {
                "create" => Change::Created,
                "delete" => Change::Deleted,
                _ => Change::Updated,
            },
            resource,
        }
    }
}

/// Delivery state of one subscription.
#[derive(Debug, Clone)]
pub struct DeliveryState {
    pub subscription_id: String,
    pub status: String,
    pub channel: String,
    pub heartbeat_seconds: i64,
    pub handshake_pending: bool,
    /// R4 `Subscription.end`, microseconds since the Unix epoch.
    pub ends_at: Option<i64>,
    pub events_since_start: i64,
    pub delivered_through: i64,
    pub failures: i64,
    pub failing_since: Option<i64>,
    pub next_attempt_at: i64,
    pub last_error: Option<String>,
    pub last_sent_at: i64,
    pub signing_secret: Option<String>,
    pub owner: Option<String>,
    pub lease_until: i64,
    /// The access of the client that wrote the Subscription (see `audience`).
    pub owner_access: Option<String>,
}

pub const STATE_COLUMNS: &str =
    "subscription_id, status, channel, heartbeat_seconds, handshake_pending, ends_at, \
    (SELECT c.last_number FROM subscription_counters c \
      WHERE c.subscription_id = subscription_state.subscription_id) AS events_since_start, \
    delivered_through, failures, failing_since, next_attempt_at, \
    last_error, last_sent_at, signing_secret, owner, lease_until, owner_access";

/// The last event number of the subscription of a `subscription_state` row, in SQL.
const EVENTS_SINCE_START: &str = "(SELECT c.last_number FROM subscription_counters c \
    WHERE c.subscription_id = subscription_state.subscription_id)";

pub async fn state(
    conn: &impl ConnectionTrait,
    subscription_id: &str,
) -> FhirResult<Option<DeliveryState>> {
    let backend = conn.get_database_backend();
    let row = conn
        .query_one_raw(statement(
            backend,
            &format!("SELECT {STATE_COLUMNS} FROM subscription_state WHERE subscription_id = ?"),
            vec![subscription_id.into()],
        ))
        .await?;
    row.map(|row| state_from_row(&row)).transpose()
}

/// The states of live subscriptions with something to do by `now`: for rest-hooks a
/// handshake, events to send or a heartbeat due; for any, an `end` that has passed. (A
/// websocket subscription sends on its bound connections, see `websocket`.)
pub async fn due_states(conn: &impl ConnectionTrait, now: i64) -> FhirResult<Vec<DeliveryState>> {
    let backend = conn.get_database_backend();
    let rows = conn
        .query_all_raw(statement(
            backend,
            &format!(
                "SELECT {STATE_COLUMNS} FROM subscription_state \
                 WHERE status IN ('requested', 'active', 'error') AND ( \
                   (channel = 'rest-hook' AND next_attempt_at <= ? \
                       AND (handshake_pending OR delivered_through < {EVENTS_SINCE_START})) \
                   OR (channel = 'rest-hook' AND status = 'active' AND heartbeat_seconds > 0 \
                       AND last_sent_at + heartbeat_seconds * 1000000 <= ?) \
                   OR ends_at <= ?)"
            ),
            vec![now.into(), now.into(), now.into()],
        ))
        .await?;
    rows.iter().map(state_from_row).collect()
}

pub fn state_from_row(row: &sea_orm::QueryResult) -> FhirResult<DeliveryState> {
    Ok(DeliveryState {
        subscription_id: row.try_get("", "subscription_id")?,
        status: row.try_get("", "status")?,
        channel: row.try_get("", "channel")?,
        heartbeat_seconds: row.try_get("", "heartbeat_seconds")?,
        handshake_pending: row.try_get("", "handshake_pending")?,
        ends_at: row.try_get("", "ends_at")?,
        events_since_start: row.try_get("", "events_since_start")?,
        delivered_through: row.try_get("", "delivered_through")?,
        failures: row.try_get::<i32>("", "failures")? as i64,
        failing_since: row.try_get("", "failing_since")?,
        next_attempt_at: row.try_get("", "next_attempt_at")?,
        last_error: row.try_get("", "last_error")?,
        last_sent_at: row.try_get("", "last_sent_at")?,
        signing_secret: row.try_get("", "signing_secret")?,
        owner: row.try_get("", "owner")?,
        lease_until: row.try_get("", "lease_until")?,
        owner_access: row.try_get("", "owner_access")?,
    })
}

/// Whether the backend is PostgreSQL (for `NOTIFY`).
pub fn is_postgres(conn: &impl ConnectionTrait) -> bool {
    conn.get_database_backend() == DbBackend::Postgres
}

/// Queue figures for `/metrics`.
pub async fn queue_figures(
    conn: &impl ConnectionTrait,
) -> FhirResult<crate::metrics::QueueFigures> {
    let backend = conn.get_database_backend();
    let rows = conn
        .query_all_raw(statement(
            backend,
            "SELECT s.status, COUNT(*) AS n, SUM(c.last_number - s.delivered_through) AS undelivered \
             FROM subscription_state s JOIN subscription_counters c ON c.subscription_id = s.subscription_id \
             GROUP BY s.status ORDER BY s.status",
            vec![],
        ))
        .await?;
    let mut figures = crate::metrics::QueueFigures::default();
    for row in &rows {
        let status: String = row.try_get("", "status")?;
        let count: i64 = row.try_get("", "n")?;
        let undelivered: Option<i64> = match backend {
            // SUM of BIGINT is NUMERIC on PostgreSQL.
            sea_orm::DbBackend::Postgres => row
                .try_get::<Option<sea_orm::prelude::Decimal>>("", "undelivered")
                .ok()
                .flatten()
                .and_then(|d| d.to_string().parse().ok()),
            _ => row.try_get("", "undelivered")?,
        };
        if is_live(&status) {
            figures.undelivered_events += undelivered.unwrap_or(0);
        }
        figures.subscriptions.push((status, count));
    }
    let oldest = conn
        .query_one_raw(statement(
            backend,
            "SELECT MIN(e.occurred) AS oldest FROM subscription_state s \
             JOIN subscription_events e ON e.subscription_id = s.subscription_id \
             AND e.event_number = s.delivered_through + 1 \
             WHERE s.status IN ('requested', 'active', 'error')",
            vec![],
        ))
        .await?;
    if let Some(oldest) = oldest.and_then(|r| r.try_get::<Option<i64>>("", "oldest").ok().flatten())
    {
        figures.oldest_undelivered_seconds = ((now_micros() - oldest).max(0)) as f64 / 1e6;
    }
    Ok(figures)
}
