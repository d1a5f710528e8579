//! Device messages that could not be stored (unparsable, unknown patient, invalid
//! values), kept whole with the reason, so nothing a device sent is lost: listed and
//! replayed once the mapping, the patient or the device is fixed. A message sent with an
//! access token keeps the sender's access, and is replayed with it.
use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261124_000011_device_dead_letters"
    }
}

const POSTGRES: &str = r#"
CREATE TABLE IF NOT EXISTS device_dead_letters (
    seq BIGSERIAL PRIMARY KEY,
    id VARCHAR(64) COLLATE "C" NOT NULL UNIQUE,
    received BIGINT NOT NULL,
    adapter VARCHAR(16) COLLATE "C" NOT NULL,
    template VARCHAR(128) COLLATE "C",
    payload TEXT NOT NULL,
    problems TEXT NOT NULL,
    status VARCHAR(16) COLLATE "C" NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    replayed_at BIGINT,
    owner_access TEXT
);
CREATE INDEX IF NOT EXISTS device_dead_letters_by_status ON device_dead_letters (status, seq)
"#;

const SQLITE: &str = r#"
CREATE TABLE IF NOT EXISTS device_dead_letters (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    received INTEGER NOT NULL,
    adapter TEXT NOT NULL,
    template TEXT,
    payload TEXT NOT NULL,
    problems TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    replayed_at INTEGER,
    owner_access TEXT
);
CREATE INDEX IF NOT EXISTS device_dead_letters_by_status ON device_dead_letters (status, seq)
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
