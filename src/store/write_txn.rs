//! `WriteTxn`: the transaction a write job runs in, with deferred multi-row inserts.
//!
//! Most rows a write produces (the new version, its search index rows) are inserts that
//! nothing in the same job reads back. Sending each as its own statement costs a round
//! trip to the database for every row group, which dominates the cost of small writes.
//! `WriteTxn` collects such rows with [`WriteTxn::defer`] and sends them as multi-row
//! INSERTs: at the end of the shared commit, or earlier, just before any other statement
//! runs, so every statement still sees every row written before it.
//!
//! Each job runs in a *scope*. A scope becomes a real SAVEPOINT only when it must (when it
//! runs a statement that changes data, or when deferred rows have to be sent while it is
//! open). When a job fails, its savepoint (if any) is rolled back and its deferred rows are
//! dropped, so a failed job leaves no trace while the jobs around it still commit. A plain
//! create therefore costs no statement of its own at all.

use sea_orm::{
    ConnectionTrait, DatabaseTransaction, DbBackend, DbErr, ExecResult, QueryResult, Statement,
    Value,
};
use std::sync::Arc;

use tokio::sync::Mutex;

use super::sql::statement;
use crate::search::visibility::Access;
use crate::subscriptions::registry::Registry;

/// A table receiving deferred rows, with its columns in bind order and their PostgreSQL
/// types.
#[derive(Debug)]
pub struct Table {
    pub name: &'static str,
    pub columns: &'static [(&'static str, &'static str)],
}

/// Bind values per INSERT on SQLite, below its limit of 32,766.
const MAX_BINDS: usize = 30_000;

pub struct WriteTxn<'a> {
    txn: &'a DatabaseTransaction,
    state: Mutex<State>,
    /// The live subscriptions writes are matched against (none for maintenance work).
    subscriptions: Option<Arc<Registry>>,
    /// The access of the caller whose job is running (`None`: unlimited), checked on every
    /// version written (see [`super::versions::write_version`]).
    caller: std::sync::Mutex<Option<Arc<dyn Access>>>,
}

#[derive(Default)]
struct State {
    /// A write changed which SearchParameters are in use: reload them after the commit.
    search_parameters_changed: bool,
    /// A Subscription was written: reload the live subscriptions after the commit.
    subscriptions_changed: bool,
    /// Subscriptions that got events: number them (SQLite) and wake the delivery.
    events_for: std::collections::BTreeSet<String>,
    pending: Vec<(&'static Table, Vec<Value>)>,
    scopes: Vec<Scope>,
    savepoints_made: u64,
    /// Keys claimed by the jobs of this transaction.
    claimed: std::collections::HashSet<String>,
}

struct Scope {
    /// `pending` rows before this index belong to the enclosing scopes.
    mark: usize,
    savepoint: Option<String>,
    /// Keys claimed in this scope (see [`WriteTxn::claim`]), released if it is undone.
    claims: Vec<String>,
}

impl<'a> WriteTxn<'a> {
    pub fn new(txn: &'a DatabaseTransaction, subscriptions: Option<Arc<Registry>>) -> Self {
        WriteTxn {
            txn,
            state: Mutex::new(State::default()),
            subscriptions,
            caller: std::sync::Mutex::new(None),
        }
    }

    /// The access of the caller of the running job (`None`: unlimited).
    pub fn caller(&self) -> Option<Arc<dyn Access>> {
        self.caller.lock().ok().and_then(|caller| caller.clone())
    }

    /// Sets the caller of the job about to run.
    pub fn set_caller(&self, access: Option<Arc<dyn Access>>) {
        if let Ok(mut caller) = self.caller.lock() {
            *caller = access;
        }
    }

    /// The live subscriptions writes in this transaction are matched against.
    pub fn subscriptions(&self) -> Option<&Arc<Registry>> {
        self.subscriptions.as_ref()
    }

    /// Notes that a Subscription was written.
    pub async fn subscriptions_changed(&self) {
        self.state.lock().await.subscriptions_changed = true;
    }

    /// Notes that events were recorded for these subscriptions.
    pub async fn events_recorded(&self, subscriptions: &[String]) {
        let mut state = self.state.lock().await;
        state.events_for.extend(subscriptions.iter().cloned());
    }

    /// Whether a write changed a Subscription, and the subscriptions that got events.
    pub async fn subscription_activity(&self) -> (bool, Vec<String>) {
        let state = self.state.lock().await;
        (
            state.subscriptions_changed,
            state.events_for.iter().cloned().collect(),
        )
    }

    /// A statement that changes data and returns rows (`UPDATE … RETURNING`): like any
    /// change, it runs inside the job's savepoint, so a failed job undoes it.
    pub async fn query_changing(&self, stmt: Statement) -> Result<Vec<QueryResult>, DbErr> {
        let mut state = self.state.lock().await;
        self.settle(&mut state).await?;
        self.txn.query_all_raw(stmt).await
    }

    /// Queues a row for a multi-row INSERT into `table`.
    pub async fn defer(&self, table: &'static Table, values: Vec<Value>) {
        debug_assert_eq!(values.len(), table.columns.len());
        self.state.lock().await.pending.push((table, values));
    }

    /// Notes that the SearchParameters in use may have changed.
    pub async fn search_parameters_changed(&self) {
        self.state.lock().await.search_parameters_changed = true;
    }

    /// Whether a write of this transaction changed the SearchParameters in use.
    pub async fn changes_search_parameters(&self) -> bool {
        self.state.lock().await.search_parameters_changed
    }

    /// Opens a scope: what happens until [`WriteTxn::end_scope`] can be undone alone.
    pub async fn begin_scope(&self) {
        let mut state = self.state.lock().await;
        let mark = state.pending.len();
        state.scopes.push(Scope {
            mark,
            savepoint: None,
            claims: Vec::new(),
        });
    }

    /// Closes the innermost scope, keeping (`keep`) or undoing what it did.
    pub async fn end_scope(&self, keep: bool) -> Result<(), DbErr> {
        let mut state = self.state.lock().await;
        let Some(scope) = state.scopes.pop() else {
            return Ok(());
        };
        if !keep {
            state.pending.truncate(scope.mark);
            for key in &scope.claims {
                state.claimed.remove(key);
            }
        } else if let Some(outer) = state.scopes.last_mut() {
            // Kept: the enclosing scope now answers for them.
            outer.claims.extend(scope.claims);
        }
        if let Some(name) = scope.savepoint {
            if !keep {
                self.txn
                    .execute_unprepared(&format!("ROLLBACK TO SAVEPOINT {name}"))
                    .await?;
            }
            self.txn
                .execute_unprepared(&format!("RELEASE SAVEPOINT {name}"))
                .await?;
        }
        Ok(())
    }

    /// Claims `key` for the running job: false when a job of this transaction claimed it
    /// already (and was not undone). Lets a job recognise what another job of the same
    /// transaction is about to write, among rows not sent to the database yet.
    pub async fn claim(&self, key: String) -> bool {
        let mut state = self.state.lock().await;
        if !state.claimed.insert(key.clone()) {
            return false;
        }
        if let Some(scope) = state.scopes.last_mut() {
            scope.claims.push(key);
        }
        true
    }

    /// A read that does not send the deferred rows first, so the rows of many jobs still
    /// travel together: it sees what was sent or committed, not what is pending (the
    /// caller accounts for that, e.g. with [`WriteTxn::claim`]). Meant for plain index
    /// lookups: on PostgreSQL a statement that fails outside a savepoint aborts the whole
    /// transaction (every job of the batch then fails and is answered so).
    pub async fn query_committed(&self, stmt: Statement) -> Result<Vec<QueryResult>, DbErr> {
        let _state = self.state.lock().await;
        self.txn.query_all_raw(stmt).await
    }

    /// Sends every deferred row; used before the commit.
    pub async fn flush(&self) -> Result<(), DbErr> {
        let mut state = self.state.lock().await;
        self.settle(&mut state).await
    }

    /// Makes the database reflect everything done so far: opens the savepoints of the
    /// open scopes (outermost first) and sends each scope's deferred rows inside its own
    /// savepoint, so undoing a scope later also undoes its rows.
    async fn settle(&self, state: &mut State) -> Result<(), DbErr> {
        for level in 0..state.scopes.len() {
            if state.scopes[level].savepoint.is_some() {
                continue;
            }
            // Rows before this scope's mark belong to the enclosing scope (already open).
            let mark = state.scopes[level].mark;
            let owned: Vec<_> = state.pending.drain(..mark).collect();
            self.insert_rows(owned).await?;
            for scope in state.scopes.iter_mut() {
                scope.mark -= mark.min(scope.mark);
            }
            state.savepoints_made += 1;
            let name = format!("fhirgate_{}", state.savepoints_made);
            self.txn
                .execute_unprepared(&format!("SAVEPOINT {name}"))
                .await?;
            state.scopes[level].savepoint = Some(name);
        }
        let rows: Vec<_> = state.pending.drain(..).collect();
        for scope in state.scopes.iter_mut() {
            scope.mark = 0;
        }
        self.insert_rows(rows).await
    }

    /// A read changes nothing, so it needs a savepoint only when deferred rows must be sent
    /// first — except on PostgreSQL, where any failed statement aborts the whole
    /// transaction unless a savepoint contains it.
    fn read_needs_settling(&self, state: &State) -> bool {
        !state.pending.is_empty()
            || (self.txn.get_database_backend() == DbBackend::Postgres
                && state.scopes.iter().any(|s| s.savepoint.is_none()))
    }

    /// Multi-row INSERTs, one per table and chunk.
    async fn insert_rows(&self, rows: Vec<(&'static Table, Vec<Value>)>) -> Result<(), DbErr> {
        if rows.is_empty() {
            return Ok(());
        }
        let backend = self.txn.get_database_backend();
        let mut tables: Vec<&'static Table> = Vec::new();
        for (table, _) in &rows {
            if !tables.iter().any(|t| std::ptr::eq(*t, *table)) {
                tables.push(table);
            }
        }
        let mut rows: Vec<Option<(&'static Table, Vec<Value>)>> =
            rows.into_iter().map(Some).collect();
        for table in tables {
            let of_table: Vec<Vec<Value>> = rows
                .iter_mut()
                .filter(|r| r.as_ref().is_some_and(|(t, _)| std::ptr::eq(*t, table)))
                .filter_map(|r| r.take().map(|(_, values)| values))
                .collect();
            if backend == DbBackend::Postgres {
                for records in postgres_chunks(table, &of_table) {
                    self.txn
                        .execute_raw(postgres_insert(table, records))
                        .await?;
                }
            } else {
                let per_insert = (MAX_BINDS / table.columns.len()).max(1);
                for chunk in of_table.chunks(per_insert) {
                    self.txn.execute_raw(sqlite_insert(table, chunk)).await?;
                }
            }
        }
        Ok(())
    }
}

/// Most bytes of rows sent in one PostgreSQL INSERT, so one statement stays a modest
/// message however many jobs share the commit.
const MAX_POSTGRES_MESSAGE: usize = 256 * 1024;

/// The rows of `table` as JSON arrays of records, each array below the message size.
fn postgres_chunks(table: &Table, rows: &[Vec<Value>]) -> Vec<String> {
    let mut chunks = Vec::new();
    let mut current = String::from("[");
    for row in rows {
        let record = serde_json::Value::Object(
            table
                .columns
                .iter()
                .zip(row)
                .map(|((name, _), value)| (name.to_string(), value_to_json(value)))
                .collect(),
        )
        .to_string();
        if current.len() > 1 && current.len() + record.len() > MAX_POSTGRES_MESSAGE {
            current.push(']');
            chunks.push(std::mem::replace(&mut current, String::from("[")));
        }
        if current.len() > 1 {
            current.push(',');
        }
        current.push_str(&record);
    }
    if current.len() > 1 {
        current.push(']');
        chunks.push(current);
    }
    chunks
}

/// One JSON parameter instead of one per value: the SQL text is the same for any number
/// of rows, so PostgreSQL prepares it once and never plans a statement with thousands of
/// parameters.
fn postgres_insert(table: &Table, records: String) -> Statement {
    let names: Vec<&str> = table.columns.iter().map(|(name, _)| *name).collect();
    let record_type: Vec<String> = table
        .columns
        .iter()
        .map(|(name, pg_type)| format!("{name} {pg_type}"))
        .collect();
    let sql = format!(
        "INSERT INTO {} ({}) SELECT {} FROM jsonb_to_recordset(CAST(? AS jsonb)) AS x({})",
        table.name,
        names.join(", "),
        names.join(", "),
        record_type.join(", ")
    );
    statement(
        DbBackend::Postgres,
        &sql,
        vec![Value::String(Some(records))],
    )
}

fn sqlite_insert(table: &Table, rows: &[Vec<Value>]) -> Statement {
    let names: Vec<&str> = table.columns.iter().map(|(name, _)| *name).collect();
    let row = format!("({})", vec!["?"; names.len()].join(", "));
    let sql = format!(
        "INSERT INTO {} ({}) VALUES {}",
        table.name,
        names.join(", "),
        vec![row.as_str(); rows.len()].join(", ")
    );
    let values = rows.iter().flat_map(|r| r.iter().cloned()).collect();
    statement(DbBackend::Sqlite, &sql, values)
}

/// A bind value as JSON, for `jsonb_to_recordset`.
fn value_to_json(value: &Value) -> serde_json::Value {
    use serde_json::Value as J;
    match value {
        Value::String(Some(text)) => J::String(text.clone()),
        Value::BigInt(Some(n)) => J::from(*n),
        Value::Int(Some(n)) => J::from(*n),
        Value::Bool(Some(b)) => J::Bool(*b),
        Value::Double(Some(x)) => serde_json::Number::from_f64(*x).map_or(J::Null, J::Number),
        Value::Json(Some(json)) => (**json).clone(),
        _ => J::Null,
    }
}

/// Every statement first settles the deferred rows, so it sees all earlier writes.
#[async_trait::async_trait]
impl ConnectionTrait for WriteTxn<'_> {
    fn get_database_backend(&self) -> DbBackend {
        self.txn.get_database_backend()
    }

    async fn execute_raw(&self, stmt: Statement) -> Result<ExecResult, DbErr> {
        let mut state = self.state.lock().await;
        self.settle(&mut state).await?;
        self.txn.execute_raw(stmt).await
    }

    async fn execute_unprepared(&self, sql: &str) -> Result<ExecResult, DbErr> {
        let mut state = self.state.lock().await;
        self.settle(&mut state).await?;
        self.txn.execute_unprepared(sql).await
    }

    async fn query_one_raw(&self, stmt: Statement) -> Result<Option<QueryResult>, DbErr> {
        let mut state = self.state.lock().await;
        if self.read_needs_settling(&state) {
            self.settle(&mut state).await?;
        }
        self.txn.query_one_raw(stmt).await
    }

    async fn query_all_raw(&self, stmt: Statement) -> Result<Vec<QueryResult>, DbErr> {
        let mut state = self.state.lock().await;
        if self.read_needs_settling(&state) {
            self.settle(&mut state).await?;
        }
        self.txn.query_all_raw(stmt).await
    }
}
