//! Subscription delivery: the event outbox, event numbering, per-subscription delivery
//! state and the attempt log.
//!
//! `subscription_events` is the outbox: one row per event, inserted in the same
//! transaction as the resource change that caused it, and kept after delivery for
//! `$events`. The rows of one commit get their per-subscription `event_number` at the
//! end of that commit from `subscription_counters` (the last number given), whose rows
//! are locked there and nowhere else, in id order: writers of several instances wait
//! for each other's numbering but can never deadlock on it.
//! `subscription_state` mirrors each Subscription's server-owned status and holds what
//! delivery needs: the last event delivered, the retry schedule, and the lease
//! (`owner`, `lease_until`) of the server instance delivering it, so several instances
//! sharing one database never send the same event twice and a dead instance's work is
//! taken over when its lease runs out. `subscription_attempts` records every attempt.
use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261124_000007_subscription_delivery"
    }
}

const POSTGRES: &str = r#"
CREATE TABLE IF NOT EXISTS subscription_state (
    subscription_id VARCHAR(64) COLLATE "C" PRIMARY KEY,
    status VARCHAR(16) NOT NULL,
    channel VARCHAR(16) NOT NULL,
    heartbeat_seconds BIGINT NOT NULL DEFAULT 0,
    handshake_pending BOOLEAN NOT NULL DEFAULT TRUE,
    ends_at BIGINT,
    delivered_through BIGINT NOT NULL DEFAULT 0,
    failures INTEGER NOT NULL DEFAULT 0,
    failing_since BIGINT,
    next_attempt_at BIGINT NOT NULL DEFAULT 0,
    last_error TEXT,
    last_sent_at BIGINT NOT NULL DEFAULT 0,
    signing_secret TEXT,
    owner VARCHAR(64),
    lease_until BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS subscription_counters (
    subscription_id VARCHAR(64) COLLATE "C" PRIMARY KEY,
    last_number BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS subscription_events (
    seq BIGSERIAL PRIMARY KEY,
    subscription_id VARCHAR(64) COLLATE "C" NOT NULL,
    event_number BIGINT,
    occurred BIGINT NOT NULL,
    resource_type VARCHAR(64) COLLATE "C" NOT NULL,
    resource_id VARCHAR(64) COLLATE "C" NOT NULL,
    version_id BIGINT NOT NULL,
    change VARCHAR(8) NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS subscription_events_by_number
    ON subscription_events (subscription_id, event_number);
CREATE INDEX IF NOT EXISTS subscription_events_unnumbered
    ON subscription_events (subscription_id, seq) WHERE event_number IS NULL;
CREATE TABLE IF NOT EXISTS subscription_attempts (
    id BIGSERIAL PRIMARY KEY,
    subscription_id VARCHAR(64) COLLATE "C" NOT NULL,
    attempted_at BIGINT NOT NULL,
    kind VARCHAR(24) NOT NULL,
    first_event BIGINT,
    last_event BIGINT,
    http_status INTEGER,
    error TEXT,
    duration_us BIGINT NOT NULL,
    instance VARCHAR(64) NOT NULL
);
CREATE INDEX IF NOT EXISTS subscription_attempts_by_subscription
    ON subscription_attempts (subscription_id, id)
"#;

const SQLITE: &str = r#"
CREATE TABLE IF NOT EXISTS subscription_state (
    subscription_id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    channel TEXT NOT NULL,
    heartbeat_seconds INTEGER NOT NULL DEFAULT 0,
    handshake_pending BOOLEAN NOT NULL DEFAULT TRUE,
    ends_at BIGINT,
    delivered_through INTEGER NOT NULL DEFAULT 0,
    failures INTEGER NOT NULL DEFAULT 0,
    failing_since INTEGER,
    next_attempt_at INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    last_sent_at INTEGER NOT NULL DEFAULT 0,
    signing_secret TEXT,
    owner TEXT,
    lease_until INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS subscription_counters (
    subscription_id TEXT PRIMARY KEY,
    last_number INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS subscription_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    subscription_id TEXT NOT NULL,
    event_number INTEGER,
    occurred INTEGER NOT NULL,
    resource_type TEXT NOT NULL,
    resource_id TEXT NOT NULL,
    version_id INTEGER NOT NULL,
    change TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS subscription_events_by_number
    ON subscription_events (subscription_id, event_number);
CREATE INDEX IF NOT EXISTS subscription_events_unnumbered
    ON subscription_events (subscription_id, seq) WHERE event_number IS NULL;
CREATE TABLE IF NOT EXISTS subscription_attempts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    subscription_id TEXT NOT NULL,
    attempted_at INTEGER NOT NULL,
    kind TEXT NOT NULL,
    first_event INTEGER,
    last_event INTEGER,
    http_status INTEGER,
    error TEXT,
    duration_us INTEGER NOT NULL,
    instance TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS subscription_attempts_by_subscription
    ON subscription_attempts (subscription_id, id)
"#;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let script = match manager.get_database_backend() {
            DbBackend::Postgres => POSTGRES,
            _ => SQLITE,
        };
        crate::run_script(manager, script).await
    }
}
