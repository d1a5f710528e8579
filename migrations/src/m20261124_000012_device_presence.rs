//! When each device that reports its state (the agent's heartbeats) was last heard of,
//! what it said, and whether it has been marked offline for its silence. Kept apart from
//! the Device resource so that a heartbeat every few seconds does not make a new Device
//! version: the resource changes only when the device's status does.
use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261124_000012_device_presence"
    }
}

const POSTGRES: &str = r#"
CREATE TABLE IF NOT EXISTS device_presence (
    device_id VARCHAR(64) COLLATE "C" PRIMARY KEY,
    last_seen BIGINT NOT NULL,
    status VARCHAR(32) COLLATE "C" NOT NULL,
    detail TEXT,
    offline BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX IF NOT EXISTS device_presence_silent ON device_presence (offline, last_seen)
"#;

const SQLITE: &str = r#"
CREATE TABLE IF NOT EXISTS device_presence (
    device_id TEXT PRIMARY KEY,
    last_seen INTEGER NOT NULL,
    status TEXT NOT NULL,
    detail TEXT,
    offline BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX IF NOT EXISTS device_presence_silent ON device_presence (offline, last_seen)
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
