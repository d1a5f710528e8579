//! The agent's store-and-forward queue: every reading is written here (a local SQLite
//! file, durable commits) before anything else happens to it, and removed only once the
//! server confirmed it. The agent thus survives server outages and its own restarts
//! without losing readings; duplicates after a crash between the server's answer and the
//! removal are harmless (deterministic identifiers, conditional creates).
//!
//! The operator bounds the disk it may use: when the queue is full, new readings are
//! refused (and counted) rather than old ones dropped silently.

use std::path::Path;

use sea_orm::{ConnectionTrait, DatabaseConnection, Statement, Value};
use serde_json::Value as Json;

/// An item waiting to be uploaded.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub seq: i64,
    /// The source that read it (for the operator and the Device it belongs to).
    pub source: String,
    pub payload: Json,
    pub attempts: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("the queue is full ({used} of {limit} bytes): the server has not taken readings for a while")]
    Full { used: i64, limit: i64 },
    #[error("queue database: {0}")]
    Database(#[from] sea_orm::DbErr),
}

pub struct Queue {
    db: DatabaseConnection,
    max_bytes: i64,
}

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS queue (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    enqueued INTEGER NOT NULL,
    source TEXT NOT NULL,
    payload TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt INTEGER NOT NULL DEFAULT 0
)";

impl Queue {
    /// Opens (or creates) the queue file; `max_bytes` bounds the payloads it holds.
    pub async fn open(path: &Path, max_bytes: i64) -> Result<Queue, QueueError> {
        let url = format!("sqlite://{}", path.display());
        // The server's connection settings: WAL, synchronous=FULL (durable commits).
        let db = crate::db::connect_pool(&url, 1).await?;
        db.execute_unprepared(SCHEMA).await?;
        Ok(Queue { db, max_bytes })
    }

    fn statement(&self, sql: &str, values: Vec<Value>) -> Statement {
        Statement::from_sql_and_values(self.db.get_database_backend(), sql, values)
    }

    /// Payload bytes held.
    pub async fn used_bytes(&self) -> Result<i64, QueueError> {
        let row = self
            .db
            .query_one_raw(
                self.statement("SELECT COALESCE(SUM(bytes), 0) AS used FROM queue", vec![]),
            )
            .await?;
        Ok(row
            .map(|r| r.try_get::<i64>("", "used"))
            .transpose()?
            .unwrap_or(0))
    }

    pub async fn count(&self) -> Result<i64, QueueError> {
        let row = self
            .db
            .query_one_raw(self.statement("SELECT COUNT(*) AS n FROM queue", vec![]))
            .await?;
        Ok(row
            .map(|r| r.try_get::<i64>("", "n"))
            .transpose()?
            .unwrap_or(0))
    }

    /// Keeps a reading until it is confirmed; its sequence number once committed.
    pub async fn push(&self, source: &str, payload: &Json) -> Result<i64, QueueError> {
        let text = payload.to_string();
        let bytes = text.len() as i64;
        let used = self.used_bytes().await?;
        if used + bytes > self.max_bytes {
            return Err(QueueError::Full {
                used,
                limit: self.max_bytes,
            });
        }
        let now = crate::store::time::now_micros();
        let row = self
            .db
            .query_one_raw(self.statement(
                "INSERT INTO queue (enqueued, source, payload, bytes) VALUES (?, ?, ?, ?) RETURNING seq",
                vec![now.into(), source.into(), text.into(), bytes.into()],
            ))
            .await?;
        Ok(row
            .map(|r| r.try_get::<i64>("", "seq"))
            .transpose()?
            .unwrap_or(0))
    }

    /// The oldest items due for an upload attempt (at most `limit`).
    pub async fn due(&self, limit: u64) -> Result<Vec<Item>, QueueError> {
        let now = crate::store::time::now_micros();
        let rows = self
            .db
            .query_all_raw(self.statement(
                "SELECT seq, source, payload, attempts FROM queue WHERE next_attempt <= ? \
                 ORDER BY seq LIMIT ?",
                vec![now.into(), (limit as i64).into()],
            ))
            .await?;
        rows.iter()
            .map(|row| {
                let payload: String = row.try_get("", "payload")?;
                Ok(Item {
                    seq: row.try_get("", "seq")?,
                    source: row.try_get("", "source")?,
                    payload: serde_json::from_str(&payload).unwrap_or(Json::Null),
                    attempts: row.try_get("", "attempts")?,
                })
            })
            .collect::<Result<Vec<_>, sea_orm::DbErr>>()
            .map_err(QueueError::from)
    }

    /// The server confirmed these: they are gone.
    pub async fn confirmed(&self, seqs: &[i64]) -> Result<(), QueueError> {
        for chunk in seqs.chunks(500) {
            let sql = format!(
                "DELETE FROM queue WHERE seq IN ({})",
                vec!["?"; chunk.len()].join(", ")
            );
            let values = chunk.iter().map(|s| Value::from(*s)).collect();
            self.db.execute_raw(self.statement(&sql, values)).await?;
        }
        Ok(())
    }

    /// An upload of these failed: try again after the backoff their attempts call for
    /// (1 s doubling to 5 min).
    pub async fn failed(&self, seqs: &[i64]) -> Result<(), QueueError> {
        let now = crate::store::time::now_micros();
        for seq in seqs {
            self.db
                .execute_raw(self.statement(
                    "UPDATE queue SET attempts = attempts + 1, next_attempt = ? + \
                     (CASE WHEN attempts >= 8 THEN 300000000 ELSE 1000000 * (1 << attempts) END) \
                     WHERE seq = ?",
                    vec![now.into(), (*seq).into()],
                ))
                .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn path(name: &str) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("fhirgate-queue-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("queue.db")
    }

    #[tokio::test]
    async fn readings_stay_until_confirmed_and_survive_a_restart() {
        let file = path("restart");
        let queue = Queue::open(&file, 1 << 20).await.unwrap();
        let first = queue.push("nonin", &json!({"spo2": 97})).await.unwrap();
        let second = queue.push("nonin", &json!({"spo2": 96})).await.unwrap();
        assert!(second > first);
        drop(queue);
        // Reopened (the agent restarted): both still there, oldest first.
        let queue = Queue::open(&file, 1 << 20).await.unwrap();
        let due = queue.due(10).await.unwrap();
        assert_eq!(
            due.iter().map(|i| i.seq).collect::<Vec<_>>(),
            vec![first, second]
        );
        assert_eq!(due[0].payload, json!({"spo2": 97}));
        // A failed upload waits its backoff; a confirmed one is gone.
        queue.failed(&[first]).await.unwrap();
        let due = queue.due(10).await.unwrap();
        assert_eq!(due.iter().map(|i| i.seq).collect::<Vec<_>>(), vec![second]);
        queue.confirmed(&[second]).await.unwrap();
        assert_eq!(queue.count().await.unwrap(), 1, "the failed one waits");
    }

    #[tokio::test]
    async fn a_full_queue_refuses_new_readings_and_keeps_the_old() {
        let file = path("full");
        let payload = json!({"samples": "x".repeat(100)});
        let size = payload.to_string().len() as i64;
        let queue = Queue::open(&file, size * 2).await.unwrap();
        queue.push("masimo", &payload).await.unwrap();
        queue.push("masimo", &payload).await.unwrap();
        assert!(matches!(
            queue.push("masimo", &payload).await,
            Err(QueueError::Full { .. })
        ));
        assert_eq!(queue.count().await.unwrap(), 2);
        assert_eq!(queue.used_bytes().await.unwrap(), size * 2);
    }
}
