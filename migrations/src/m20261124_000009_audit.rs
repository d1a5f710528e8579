//! The audit trail: one row per REST interaction and token request, with the AuditEvent
//! resource that reports it. Kept apart from the clinical resources: append-only (no
//! update or delete path exists), never in search or history of other types, never a
//! subscription event.
use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261124_000009_audit"
    }
}

const POSTGRES: &str = r#"
CREATE TABLE IF NOT EXISTS audit_events (
    seq BIGSERIAL PRIMARY KEY,
    id VARCHAR(64) COLLATE "C" NOT NULL UNIQUE,
    recorded BIGINT NOT NULL,
    client_id VARCHAR(128) COLLATE "C",
    patient VARCHAR(64) COLLATE "C",
    outcome INTEGER NOT NULL,
    content JSONB NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_events_by_client ON audit_events (client_id, seq);
CREATE INDEX IF NOT EXISTS audit_events_by_patient ON audit_events (patient, seq)
"#;

const SQLITE: &str = r#"
CREATE TABLE IF NOT EXISTS audit_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    recorded INTEGER NOT NULL,
    client_id TEXT,
    patient TEXT,
    outcome INTEGER NOT NULL,
    content TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_events_by_client ON audit_events (client_id, seq);
CREATE INDEX IF NOT EXISTS audit_events_by_patient ON audit_events (patient, seq)
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
