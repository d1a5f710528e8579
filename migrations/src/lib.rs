//! Database schema for fhirgate, on SQLite and PostgreSQL.
//!
//! Migrations are plain SQL per backend so the column types are explicit (JSONB on
//! PostgreSQL, JSON text on SQLite) and every statement is `IF NOT EXISTS`: running them
//! twice, or from two processes at once, is harmless.
pub use sea_orm_migration::prelude::*;

mod m20261124_000001_resources;
mod m20261124_000002_search_index;
mod m20261124_000003_search_composite;
mod m20261124_000004_sort_indexes;
mod m20261124_000005_covering_indexes;
mod m20261124_000006_postgres_byte_order;
mod m20261124_000007_subscription_delivery;
mod m20261124_000008_auth;
mod m20261124_000009_audit;
mod m20261124_000010_subscription_owner;
mod m20261124_000011_device_dead_letters;
mod m20261124_000012_device_presence;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261124_000001_resources::Migration),
            Box::new(m20261124_000002_search_index::Migration),
            Box::new(m20261124_000003_search_composite::Migration),
            Box::new(m20261124_000004_sort_indexes::Migration),
            Box::new(m20261124_000005_covering_indexes::Migration),
            Box::new(m20261124_000006_postgres_byte_order::Migration),
            Box::new(m20261124_000007_subscription_delivery::Migration),
            Box::new(m20261124_000008_auth::Migration),
            Box::new(m20261124_000009_audit::Migration),
            Box::new(m20261124_000010_subscription_owner::Migration),
            Box::new(m20261124_000011_device_dead_letters::Migration),
            Box::new(m20261124_000012_device_presence::Migration),
        ]
    }
}

/// Runs each statement of a `;`-separated script.
pub(crate) async fn run_script(manager: &SchemaManager<'_>, script: &str) -> Result<(), DbErr> {
    let connection = manager.get_connection();
    for statement in script.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        connection.execute_unprepared(statement).await?;
    }
    Ok(())
}
