//! Versioned resource storage on SeaORM (SQLite or PostgreSQL).
//!
//! Reads go straight to the connection pool. Writes run through [`Writer`] (group
//! commit) and use the functions in [`versions`] on the transaction they are given, so a
//! REST write, a transaction Bundle and an adapter all store resources the same way.

pub mod index;
pub mod matching;
pub mod repository;
pub mod search_parameters;
pub mod sql;
pub mod time;
pub mod versions;
pub mod write_txn;
pub mod writer;

use std::sync::Arc;

use sea_orm::{DatabaseConnection, DbBackend};

use crate::error::FhirResult;
use crate::subscriptions::registry::Registry;
pub use versions::{HistoryEntry, HistoryPage, HistoryScope, StoredResource};
pub use write_txn::WriteTxn;
pub use writer::Writer;

/// The storage handle shared by all request handlers.
#[derive(Clone)]
pub struct Store {
    db: DatabaseConnection,
    writer: Writer,
    subscriptions: Arc<Registry>,
    /// PostgreSQL: connections for delivery bookkeeping (see `db::connect_bookkeeping`).
    bookkeeping: Option<DatabaseConnection>,
}

impl Store {
    /// Opens the store: `db` serves reads, the writer opens its own connection to
    /// `database_url`.
    pub async fn open(
        db: DatabaseConnection,
        database_url: &str,
        subscriptions: Arc<Registry>,
    ) -> Result<Self, sea_orm::DbErr> {
        let writer = Writer::start(database_url, subscriptions.clone()).await?;
        let bookkeeping = if db.get_database_backend() == DbBackend::Postgres {
            Some(crate::db::connect_bookkeeping(database_url).await?)
        } else {
            start_checkpointer(database_url).await?;
            None
        };
        Ok(Store {
            db,
            writer,
            subscriptions,
            bookkeeping,
        })
    }

    /// PostgreSQL: the connections for delivery bookkeeping.
    pub fn bookkeeping(&self) -> Option<&DatabaseConnection> {
        self.bookkeeping.as_ref()
    }

    /// The live subscriptions of this server.
    pub fn subscriptions(&self) -> &Arc<Registry> {
        &self.subscriptions
    }

    pub fn connection(&self) -> &DatabaseConnection {
        &self.db
    }

    pub fn backend(&self) -> DbBackend {
        self.db.get_database_backend()
    }

    pub fn writer(&self) -> &Writer {
        &self.writer
    }

    /// The current version of a resource, a tombstone when it was deleted.
    pub async fn read(&self, resource_type: &str, id: &str) -> FhirResult<Option<StoredResource>> {
        versions::read_current(&self.db, resource_type, id).await
    }

    pub async fn vread(
        &self,
        resource_type: &str,
        id: &str,
        version_id: i64,
    ) -> FhirResult<Option<StoredResource>> {
        versions::read_version(&self.db, resource_type, id, version_id).await
    }

    pub async fn history(
        &self,
        scope: &HistoryScope,
        since: Option<i64>,
        count: u64,
        before_seq: Option<i64>,
        visible: Option<(String, Vec<sea_orm::Value>)>,
    ) -> FhirResult<HistoryPage> {
        versions::history(&self.db, scope, since, count, before_seq, visible).await
    }
}

/// SQLite: moves the WAL checkpoints off the writer. A commit that crosses the automatic
/// checkpoint threshold copies the WAL into the database file itself, on the writer's
/// connection, and every write queued behind it waits. A connection of its own
/// checkpoints (passively: never waiting for readers or the writer) twice a second
/// instead, on another core; the writer's own threshold is raised to a safety net (see
/// `writer`).
async fn start_checkpointer(database_url: &str) -> Result<(), sea_orm::DbErr> {
    use sea_orm::ConnectionTrait;
    let connection = crate::db::connect_pool(database_url, 1).await?;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(error) = connection
                .execute_unprepared("PRAGMA wal_checkpoint(PASSIVE)")
                .await
            {
                tracing::debug!("WAL checkpoint: {error}");
            }
        }
    });
    Ok(())
}
