//! Resources and their versions.
//!
//! `resources` holds the current version of every resource (one row per type and id, a
//! tombstone row when deleted) so reads and searches touch one row; `resource_versions`
//! keeps every version ever written, ordered by `seq` for system and type history.
//! Times are microseconds since the Unix epoch (UTC) so both backends compare them alike.
use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261124_000001_resources"
    }
}

const POSTGRES: &str = r#"
CREATE TABLE IF NOT EXISTS resources (
    resource_type VARCHAR(64) NOT NULL,
    id VARCHAR(64) NOT NULL,
    version_id BIGINT NOT NULL,
    last_updated BIGINT NOT NULL,
    deleted BOOLEAN NOT NULL DEFAULT FALSE,
    content JSONB,
    PRIMARY KEY (resource_type, id)
);
CREATE INDEX IF NOT EXISTS resources_type_updated ON resources (resource_type, last_updated);
CREATE TABLE IF NOT EXISTS resource_versions (
    seq BIGSERIAL PRIMARY KEY,
    resource_type VARCHAR(64) NOT NULL,
    id VARCHAR(64) NOT NULL,
    version_id BIGINT NOT NULL,
    last_updated BIGINT NOT NULL,
    method VARCHAR(8) NOT NULL,
    deleted BOOLEAN NOT NULL DEFAULT FALSE,
    content JSONB,
    UNIQUE (resource_type, id, version_id)
);
CREATE INDEX IF NOT EXISTS resource_versions_type_seq ON resource_versions (resource_type, seq);
CREATE INDEX IF NOT EXISTS resource_versions_updated ON resource_versions (last_updated)
"#;

const SQLITE: &str = r#"
CREATE TABLE IF NOT EXISTS resources (
    resource_type TEXT NOT NULL,
    id TEXT NOT NULL,
    version_id INTEGER NOT NULL,
    last_updated INTEGER NOT NULL,
    deleted BOOLEAN NOT NULL DEFAULT FALSE,
    content TEXT,
    PRIMARY KEY (resource_type, id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS resources_type_updated ON resources (resource_type, last_updated);
CREATE TABLE IF NOT EXISTS resource_versions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    resource_type TEXT NOT NULL,
    id TEXT NOT NULL,
    version_id INTEGER NOT NULL,
    last_updated INTEGER NOT NULL,
    method TEXT NOT NULL,
    deleted BOOLEAN NOT NULL DEFAULT FALSE,
    content TEXT,
    UNIQUE (resource_type, id, version_id)
);
CREATE INDEX IF NOT EXISTS resource_versions_type_seq ON resource_versions (resource_type, seq);
CREATE INDEX IF NOT EXISTS resource_versions_updated ON resource_versions (last_updated)
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
