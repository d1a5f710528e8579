//! Dead letters: device messages that could not be stored, kept whole with their
//! problems until they are replayed (after the mapping, the patient or the device was
//! fixed). Nothing a device sent is dropped without a trace.

use sea_orm::{ConnectionTrait, Value};
use serde::Serialize;
use serde_json::Value as Json;

use super::pcd01::Problem;
use crate::error::{FhirError, FhirResult};
use crate::store::sql::statement;
use crate::store::time::{instant, now_micros};
use crate::store::Store;

/// A dead letter as listed.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    pub id: String,
    pub received: String,
    pub adapter: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// `pending` until a replay stores it, then `replayed`.
    pub status: String,
    pub attempts: i32,
    pub problems: Json,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replayed_at: Option<String>,
    pub payload: String,
    /// The access of the client that sent it (replays run with it).
    #[serde(skip)]
    pub owner_access: Option<String>,
}

pub fn problems_json(problems: &[Problem]) -> Json {
    Json::Array(
        problems
            .iter()
            .map(|p| serde_json::json!({"code": p.code, "location": p.location, "text": p.text}))
            .collect(),
    )
}

/// Keeps a message that could not be stored; returns its id.
pub async fn keep(
    store: &Store,
    adapter: &str,
    template: Option<&str>,
    payload: &str,
    problems: &[Problem],
    caller: Option<&dyn crate::search::visibility::Access>,
) -> FhirResult<String> {
    let id = uuid::Uuid::now_v7().to_string();
    let owner_access = caller.and_then(|c| c.record()).map(|(_, record)| record);
    let values: Vec<Value> = vec![
        id.as_str().into(),
        now_micros().into(),
        adapter.into(),
        template.map(str::to_string).into(),
        payload.into(),
        problems_json(problems).to_string().into(),
        owner_access.into(),
    ];
    store
        .writer()
        .write(move |txn| {
            Box::pin(async move {
                let backend = txn.get_database_backend();
                txn.execute_raw(statement(
                    backend,
                    "INSERT INTO device_dead_letters (id, received, adapter, template, payload, \
                     problems, owner_access, status, attempts) \
                     VALUES (?, ?, ?, ?, ?, ?, ?, 'pending', 0)",
                    values,
                ))
                .await?;
                Ok(())
            })
        })
        .await?;
    Ok(id)
}

/// The dead letters, newest first, by status when given.
pub async fn list(
    conn: &impl ConnectionTrait,
    status: Option<&str>,
    limit: u64,
) -> FhirResult<Vec<DeadLetter>> {
    let mut sql = String::from(
        "SELECT id, received, adapter, template, payload, problems, status, attempts, \
         replayed_at, owner_access FROM device_dead_letters",
    );
    let mut values: Vec<Value> = Vec::new();
    if let Some(status) = status {
        sql.push_str(" WHERE status = ?");
        values.push(status.into());
    }
    sql.push_str(" ORDER BY seq DESC LIMIT ?");
    values.push((limit as i64).into());
    let rows = conn
        .query_all_raw(statement(conn.get_database_backend(), &sql, values))
        .await?;
    rows.iter().map(from_row).collect()
}

pub async fn get(conn: &impl ConnectionTrait, id: &str) -> FhirResult<Option<DeadLetter>> {
    let row = conn
        .query_one_raw(statement(
            conn.get_database_backend(),
            "SELECT id, received, adapter, template, payload, problems, status, attempts, \
             replayed_at, owner_access FROM device_dead_letters WHERE id = ?",
            vec![id.into()],
        ))
        .await?;
    row.as_ref().map(from_row).transpose()
}

/// Records a replay: stored (`replayed`), or its new problems.
pub async fn replayed(store: &Store, id: &str, problems: Option<&[Problem]>) -> FhirResult<()> {
    let (sql, values): (&str, Vec<Value>) = match problems {
        None => (
            "UPDATE device_dead_letters SET status = 'replayed', attempts = attempts + 1, \
             replayed_at = ? WHERE id = ?",
            vec![now_micros().into(), id.into()],
        ),
        Some(problems) => (
            "UPDATE device_dead_letters SET attempts = attempts + 1, problems = ? WHERE id = ?",
            vec![problems_json(problems).to_string().into(), id.into()],
        ),
    };
    store
        .writer()
        .write(move |txn| {
            Box::pin(async move {
                let backend = txn.get_database_backend();
                txn.execute_raw(statement(backend, sql, values)).await?;
                Ok(())
            })
        })
        .await
}

fn from_row(row: &sea_orm::QueryResult) -> FhirResult<DeadLetter> {
    let problems: String = row.try_get("", "problems")?;
    Ok(DeadLetter {
        id: row.try_get("", "id")?,
        received: instant(row.try_get("", "received")?),
        adapter: row.try_get("", "adapter")?,
        template: row.try_get("", "template")?,
        payload: row.try_get("", "payload")?,
        problems: serde_json::from_str(&problems)
            .map_err(|e| FhirError::internal(format!("dead letter problems: {e}")))?,
        status: row.try_get("", "status")?,
        attempts: row.try_get("", "attempts")?,
        replayed_at: row.try_get::<Option<i64>>("", "replayed_at")?.map(instant),
        owner_access: row.try_get("", "owner_access")?,
    })
}
