//! Group commit: every write runs as a job on one writer task, which packs the jobs that
//! arrive while the previous commit is being flushed into a single database transaction.
//!
//! With durable commits each commit costs an fsync; a device fleet sends many small
//! writes at once, so sharing one commit between them is what keeps throughput high
//! without weakening durability. Each job runs in its own scope of a [`WriteTxn`] (a
//! savepoint when it needs one), so a job that fails (a version conflict, a failed
//! transaction Bundle) is rolled back alone and the others still commit. A job's caller
//! is answered only after the shared commit succeeded.

use std::panic::AssertUnwindSafe;

use futures::future::BoxFuture;
use futures::FutureExt;
use std::sync::Arc;

use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, DbErr, TransactionTrait};
use tokio::sync::{mpsc, oneshot};

use super::write_txn::WriteTxn;
use crate::error::{FhirError, FhirResult};
use crate::search::visibility::Access;
use crate::subscriptions::registry::Registry;

/// Most jobs packed into one commit; bounds the latency one commit adds to its jobs.
const MAX_JOBS_PER_COMMIT: usize = 256;

type Finish = Box<dyn FnOnce(FhirResult<()>) + Send>;
type Job = Box<dyn for<'a> FnOnce(&'a WriteTxn<'a>) -> BoxFuture<'a, (bool, Finish)> + Send>;

#[derive(Clone)]
pub struct Writer {
    jobs: mpsc::Sender<Job>,
}

/// What the writer keeps besides its connection: the live subscriptions every write is
/// matched against.
struct Context {
    db: DatabaseConnection,
    subscriptions: Arc<Registry>,
}

impl Writer {
    /// Starts the writer on a thread of its own, with its own runtime and connection.
    ///
    /// Its statements then never queue behind request handlers for a turn on the shared
    /// runtime: with dozens of clients, each of the ten or so round trips of a commit
    /// would otherwise wait for every busy handler, and commits would slow to a crawl.
    pub async fn start(database_url: &str, subscriptions: Arc<Registry>) -> Result<Writer, DbErr> {
        let (jobs, queue) = mpsc::channel(4096);
        let (ready, started) = oneshot::channel::<Result<(), DbErr>>();
        let url = database_url.to_string();
        std::thread::Builder::new()
            .name("fhirgate-writer".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(err) => {
                        let _ = ready.send(Err(DbErr::Custom(format!(
                            "cannot start the writer runtime: {err}"
                        ))));
                        return;
                    }
                };
                runtime.block_on(async move {
                    match crate::db::connect_pool(&url, 1).await {
                        Ok(db) => {
                            if db.get_database_backend() == DbBackend::Sqlite {
                                // Checkpoints run on a connection of their own (see
                                // `store::start_checkpointer`); this is the safety net
                                // should that fall behind (about 80 MB of WAL).
                                let _ = db
                                    .execute_unprepared("PRAGMA wal_autocheckpoint = 20000")
                                    .await;
                            }
                            let context = Context {
                                db: db.clone(),
                                subscriptions,
                            };
                            match reload_subscriptions(&context).await {
                                Ok(()) => {
                                    let _ = ready.send(Ok(()));
                                    run(&context, queue).await;
                                }
                                Err(err) => {
                                    let _ = ready.send(Err(err));
                                }
                            }
                            let _ = db.close().await;
                        }
                        Err(err) => {
                            let _ = ready.send(Err(err));
                        }
                    }
                });
            })
            .map_err(|e| DbErr::Custom(format!("cannot start the writer thread: {e}")))?;
        started
            .await
            .map_err(|_| DbErr::Custom("the writer thread stopped".into()))??;
        Ok(Writer { jobs })
    }

    /// Runs `work` inside a database transaction shared with other concurrent writes and
    /// returns its result once that transaction is committed. When `work` returns an
    /// error, everything it wrote is rolled back.
    pub async fn write<T, F>(&self, work: F) -> FhirResult<T>
    where
        T: Send + 'static,
        F: for<'a> FnOnce(&'a WriteTxn<'a>) -> BoxFuture<'a, FhirResult<T>> + Send + 'static,
    {
        self.write_as(None, work).await
    }

    /// [`Writer::write`] on behalf of a caller with limited access: every version the job
    /// writes must be one the caller may change, before and after (see
    /// [`super::versions::write_version`]), or the job fails with 403.
    pub async fn write_as<T, F>(&self, caller: Option<Arc<dyn Access>>, work: F) -> FhirResult<T>
    where
        T: Send + 'static,
        F: for<'a> FnOnce(&'a WriteTxn<'a>) -> BoxFuture<'a, FhirResult<T>> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel::<FhirResult<T>>();
        let job: Job = Box::new(move |txn| {
            Box::pin(async move {
                txn.set_caller(caller);
                let result = AssertUnwindSafe(work(txn))
                    .catch_unwind()
                    .await
                    .unwrap_or_else(|_| Err(FhirError::internal("a write job panicked")));
                txn.set_caller(None);
                let ok = result.is_ok();
                let finish: Finish = Box::new(move |committed: FhirResult<()>| {
                    let _ = reply.send(committed.and(result));
                });
                (ok, finish)
            })
        });
        self.jobs
            .send(job)
            .await
            .map_err(|_| FhirError::internal("the writer has stopped"))?;
        answer
            .await
            .map_err(|_| FhirError::internal("the writer dropped a job"))?
    }
}

async fn run(context: &Context, mut queue: mpsc::Receiver<Job>) {
    let mut batch = Vec::with_capacity(MAX_JOBS_PER_COMMIT);
    while let Some(first) = queue.recv().await {
        batch.push(first);
        while batch.len() < MAX_JOBS_PER_COMMIT {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        commit_batch(context, &mut batch).await;
    }
}

async fn commit_batch(context: &Context, batch: &mut Vec<Job>) {
    let db = &context.db;
    let started = std::time::Instant::now();
    let jobs = batch.len();
    let txn = match db.begin().await {
        Ok(txn) => txn,
        Err(err) => {
            // Dropping the jobs answers each caller with an internal error.
            tracing::error!("cannot begin a write transaction: {err}");
            batch.clear();
            return;
        }
    };
    let mut finishes: Vec<Finish> = Vec::with_capacity(batch.len());
    let write_txn = WriteTxn::new(&txn, Some(context.subscriptions.clone()));
    let mut broken: Option<FhirError> = None;
    for job in batch.drain(..) {
        write_txn.begin_scope().await;
        let (ok, finish) = job(&write_txn).await;
        if let Err(err) = write_txn.end_scope(ok).await {
            // The transaction cannot be trusted any more: nothing of this batch commits.
            broken.get_or_insert(FhirError::from(err));
        }
        finishes.push(finish);
    }
    if broken.is_none() {
        if let Err(err) = write_txn.flush().await {
            broken = Some(FhirError::from(err));
        }
    }
    let reload_search_parameters = write_txn.changes_search_parameters().await;
    let (subscriptions_changed, events_for) = write_txn.subscription_activity().await;
    let events_recorded = !events_for.is_empty();
    if broken.is_none() && events_recorded {
        if let Err(err) =
            crate::subscriptions::outbox::number_at_commit(&write_txn, &events_for).await
        {
            broken = Some(err);
        }
    }
    drop(write_txn);
    if broken.is_none()
        && (subscriptions_changed || events_recorded)
        && db.get_database_backend() == DbBackend::Postgres
    {
        // Delivered at the commit: wakes the delivery (and the subscription reload) of
        // every other server instance sharing this database.
        let channel = if subscriptions_changed {
            crate::subscriptions::delivery::SUBSCRIPTIONS_CHANNEL
        } else {
            crate::subscriptions::delivery::EVENTS_CHANNEL
        };
        let announce = format!("NOTIFY {channel}, '{}'", context.subscriptions.instance);
        if let Err(err) = txn.execute_unprepared(&announce).await {
            broken = Some(FhirError::from(err));
        }
    }
    if let Some(err) = broken {
        let _ = txn.rollback().await;
        for finish in finishes {
            finish(Err(err.clone()));
        }
        return;
    }
    let ran = started.elapsed();
    let committed = txn.commit().await.map_err(FhirError::from);
    tracing::debug!(
        jobs,
        run_us = ran.as_micros() as u64,
        total_us = started.elapsed().as_micros() as u64,
        "write batch committed"
    );
    // A changed SearchParameter changes what search and indexing use; reload before the
    // writers hear back, so their next request already sees it.
    if committed.is_ok() && reload_search_parameters {
        if let Err(err) = crate::store::search_parameters::reload(db, false).await {
            tracing::error!("cannot reload the search parameters: {err}");
        }
    }
    if committed.is_ok() && subscriptions_changed {
        if let Err(err) = reload_subscriptions(context).await {
            tracing::error!("cannot reload the subscriptions: {err}");
        }
    }
    if committed.is_ok() && (subscriptions_changed || events_recorded) {
        context.subscriptions.wake.notify_one();
    }
    if committed.is_ok() && events_recorded {
        context
            .subscriptions
            .events_committed
            .send_modify(|count| *count += 1);
    }
    for finish in finishes {
        finish(committed.clone());
    }
}

/// Compiles the stored Subscriptions into the registry; runs before the next batch, so
/// the next write is matched against what was just committed.
async fn reload_subscriptions(context: &Context) -> Result<(), DbErr> {
    crate::subscriptions::registry::reload(&context.db, &context.subscriptions)
        .await
        .map_err(|e| DbErr::Custom(e.to_string()))
}
