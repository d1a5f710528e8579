//! How long the outbox keeps what it no longer needs.

use std::time::Duration;

use sea_orm::ConnectionTrait;

use super::bookkeeping::bookkeep;
use crate::error::FhirResult;
use crate::store::sql::statement;
use crate::store::time::now_micros;
use crate::store::Store;

/// Longest time between two prunings of old events and attempts.
pub const MAX_PRUNE_INTERVAL: Duration = Duration::from_secs(600);
/// Rows deleted per statement when pruning, so a pruning never holds up writes for long.
const PRUNE_BATCH: i64 = 5000;

/// Deletes what is older than `retention`: delivered events (and the events of
/// subscriptions that are off or deleted), and attempts. Undelivered events of live
/// subscriptions are kept however old: nothing accepted is dropped before delivery.
pub async fn prune(store: &Store, retention: Duration) -> FhirResult<u64> {
    let before = now_micros() - retention.as_micros() as i64;
    let mut deleted = 0;
    for sql in [
        "DELETE FROM subscription_events WHERE seq IN (SELECT e.seq FROM subscription_events e \
           JOIN subscription_state s ON s.subscription_id = e.subscription_id \
           WHERE e.occurred < ? AND e.event_number IS NOT NULL \
           AND (e.event_number <= s.delivered_through OR s.status NOT IN ('requested', 'active', 'error')) \
           LIMIT ?)",
        "DELETE FROM subscription_attempts WHERE id IN (SELECT id FROM subscription_attempts \
           WHERE attempted_at < ? LIMIT ?)",
    ] {
        loop {
            let count = bookkeep(
                store,
                Box::new(move |conn| {
                    Box::pin(async move {
                        let backend = conn.get_database_backend();
                        let result = conn
                            .execute_raw(statement(
                                backend,
                                sql,
                                vec![before.into(), PRUNE_BATCH.into()],
                            ))
                            .await?;
                        Ok(result.rows_affected())
                    })
                }),
            )
            .await?;
            deleted += count;
            if count < PRUNE_BATCH as u64 {
                break;
            }
        }
    }
    Ok(deleted)
}
