//! Who a subscription delivers to, as far as access goes: the client that wrote it and
//! that client's access (scopes and patient), kept so notifications carry only what the
//! subscriber may see, and so a client limited to a patient finds its own subscriptions.
use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{DbBackend, Statement};

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261124_000010_subscription_owner"
    }
}

const POSTGRES: &str = r#"
ALTER TABLE subscription_state ADD COLUMN IF NOT EXISTS owner_client VARCHAR(128) COLLATE "C";
ALTER TABLE subscription_state ADD COLUMN IF NOT EXISTS owner_access TEXT;
CREATE INDEX IF NOT EXISTS subscription_state_by_owner ON subscription_state (owner_client)
"#;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() == DbBackend::Postgres {
            return crate::run_script(manager, POSTGRES).await;
        }
        // SQLite has no ADD COLUMN IF NOT EXISTS.
        let connection = manager.get_connection();
        let existing = connection
            .query_one_raw(Statement::from_string(
                DbBackend::Sqlite,
                "SELECT COUNT(*) AS n FROM pragma_table_info('subscription_state') \
                 WHERE name = 'owner_client'",
            ))
            .await?
            .map(|row| row.try_get::<i64>("", "n"))
            .transpose()?
            .unwrap_or(0);
        if existing == 0 {
            crate::run_script(
                manager,
                "ALTER TABLE subscription_state ADD COLUMN owner_client TEXT; \
                 ALTER TABLE subscription_state ADD COLUMN owner_access TEXT",
            )
            .await?;
        }
        crate::run_script(
            manager,
            "CREATE INDEX IF NOT EXISTS subscription_state_by_owner \
             ON subscription_state (owner_client)",
        )
        .await
    }
}
