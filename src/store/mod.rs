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
