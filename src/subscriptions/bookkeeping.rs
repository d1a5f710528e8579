//! Delivery bookkeeping: leases, delivery positions, retry schedules, attempts, and the
//! server-set status of a Subscription.

use futures::future::BoxFuture;
use sea_orm::{ConnectionTrait, DbErr};
use serde_json::Value as Json;

use crate::error::FhirResult;
use crate::store::sql::statement;
use crate::store::time::now_micros;
use crate::store::versions::{read_current, write_version, Method};
use crate::store::write_txn::WriteTxn;
use crate::store::Store;

/// The connection delivery bookkeeping runs on: on SQLite a job of the shared writer
/// (one writer for the whole database); on PostgreSQL single statements, each its own
/// transaction on the bookkeeping connections (`db::connect_bookkeeping`), touching one
/// `subscription_state` row. Bookkeeping never shares a transaction with resource
/// writes there, so it never holds a row while waiting for another.
pub enum Bookkeeping<'a> {
    Shared(&'a WriteTxn<'a>),
    Own(&'a sea_orm::DatabaseConnection),
}

#[async_trait::async_trait]
impl ConnectionTrait for Bookkeeping<'_> {
    fn get_database_backend(&self) -> sea_orm::DbBackend {
        match self {
            Bookkeeping::Shared(txn) => txn.get_database_backend(),
            Bookkeeping::Own(txn) => txn.get_database_backend(),
        }
    }

    async fn execute_raw(&self, stmt: sea_orm::Statement) -> Result<sea_orm::ExecResult, DbErr> {
        match self {
            Bookkeeping::Shared(txn) => txn.execute_raw(stmt).await,
            Bookkeeping::Own(txn) => txn.execute_raw(stmt).await,
        }
    }

    async fn execute_unprepared(&self, sql: &str) -> Result<sea_orm::ExecResult, DbErr> {
        match self {
            Bookkeeping::Shared(txn) => txn.execute_unprepared(sql).await,
            Bookkeeping::Own(txn) => txn.execute_unprepared(sql).await,
        }
    }

    async fn query_one_raw(
        &self,
        stmt: sea_orm::Statement,
    ) -> Result<Option<sea_orm::QueryResult>, DbErr> {
        match self {
            Bookkeeping::Shared(txn) => txn.query_one_raw(stmt).await,
            Bookkeeping::Own(txn) => txn.query_one_raw(stmt).await,
        }
    }

    async fn query_all_raw(
        &self,
        stmt: sea_orm::Statement,
    ) -> Result<Vec<sea_orm::QueryResult>, DbErr> {
        match self {
            Bookkeeping::Shared(txn) => txn.query_all_raw(stmt).await,
            Bookkeeping::Own(txn) => txn.query_all_raw(stmt).await,
        }
    }
}

pub type BookkeepingJob<T> =
    Box<dyn for<'a> FnOnce(&'a Bookkeeping<'a>) -> BoxFuture<'a, FhirResult<T>> + Send>;

/// Runs `work` in a bookkeeping transaction (see [`Bookkeeping`]) and commits it.
pub async fn bookkeep<T: Send + 'static>(store: &Store, work: BookkeepingJob<T>) -> FhirResult<T> {
    if let Some(connection) = store.bookkeeping() {
        let book = Bookkeeping::Own(connection);
        work(&book).await
    } else {
        store
            .writer()
            .write(move |txn| {
                Box::pin(async move {
                    let book = Bookkeeping::Shared(txn);
                    work(&book).await
                })
            })
            .await
    }
}

/// Takes or renews the lease of subscription `id` for `instance`, unless another
/// instance holds an unexpired one.
pub async fn claim_in(
    conn: &impl ConnectionTrait,
    id: &str,
    instance: &str,
    lease_micros: i64,
) -> FhirResult<bool> {
    let now = now_micros();
    let backend = conn.get_database_backend();
    let result = conn
        .execute_raw(statement(
            backend,
            "UPDATE subscription_state SET owner = ?, lease_until = ? \
             WHERE subscription_id = ? AND (owner IS NULL OR owner = ? OR lease_until < ?)",
            vec![
                instance.into(),
                (now + lease_micros).into(),
                id.into(),
                instance.into(),
                now.into(),
            ],
        ))
        .await?;
    Ok(result.rows_affected() == 1)
}

/// Writes a new version of the Subscription with the status the server gave it (and the
/// R4 `error` element), unless the client changed its status meanwhile.
pub async fn set_status(
    txn: &WriteTxn<'_>,
    id: &str,
    from: &str,
    to: &str,
    error: Option<&str>,
) -> FhirResult<()> {
    let Some(current) = read_current(txn, "Subscription", id).await? else {
        return Ok(());
    };
    let Some(mut content) = current.content else {
        return Ok(());
    };
    if content["status"] != from {
        return Ok(());
    }
    content["status"] = Json::from(to);
    match (to, error) {
        ("error", Some(error)) => content["error"] = Json::from(error),
        _ => {
            if let Some(object) = content.as_object_mut() {
                object.remove("error");
            }
        }
    }
    write_version(
        txn,
        "Subscription",
        id,
        Some(current.version_id),
        Method::Put,
        Some(content),
        now_micros(),
    )
    .await?;
    Ok(())
}
