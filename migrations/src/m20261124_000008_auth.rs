//! SMART backend services: registered clients, the client assertions seen (replay
//! protection by `jti`), and the server's own token signing keys (shared by every
//! instance on the database, so a token issued by one is accepted by all).
use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261124_000008_auth"
    }
}

const POSTGRES: &str = r#"
CREATE TABLE IF NOT EXISTS auth_clients (
    client_id VARCHAR(128) COLLATE "C" PRIMARY KEY,
    jwks TEXT,
    jwks_url TEXT,
    scopes TEXT NOT NULL,
    patient VARCHAR(64) COLLATE "C",
    created BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS auth_client_assertions (
    client_id VARCHAR(128) COLLATE "C" NOT NULL,
    jti VARCHAR(256) COLLATE "C" NOT NULL,
    expires BIGINT NOT NULL,
    PRIMARY KEY (client_id, jti)
);
CREATE INDEX IF NOT EXISTS auth_client_assertions_expires ON auth_client_assertions (expires);
CREATE TABLE IF NOT EXISTS auth_signing_keys (
    kid VARCHAR(64) COLLATE "C" PRIMARY KEY,
    pkcs8 TEXT NOT NULL,
    created BIGINT NOT NULL
)
"#;

const SQLITE: &str = r#"
CREATE TABLE IF NOT EXISTS auth_clients (
    client_id TEXT PRIMARY KEY,
    jwks TEXT,
    jwks_url TEXT,
    scopes TEXT NOT NULL,
    patient TEXT,
    created INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS auth_client_assertions (
    client_id TEXT NOT NULL,
    jti TEXT NOT NULL,
    expires INTEGER NOT NULL,
    PRIMARY KEY (client_id, jti)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS auth_client_assertions_expires ON auth_client_assertions (expires);
CREATE TABLE IF NOT EXISTS auth_signing_keys (
    kid TEXT PRIMARY KEY,
    pkcs8 TEXT NOT NULL,
    created INTEGER NOT NULL
) WITHOUT ROWID
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
