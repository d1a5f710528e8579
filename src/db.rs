//! Database connection: SQLite (embedded default) or PostgreSQL, chosen by the URL.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sea_orm::sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr,
    TransactionTrait,
};

use migrations::{Migrator, MigratorTrait};

/// How much of an SQLite database file is read through a memory map (pages beyond it
/// through the page cache).
const SQLITE_MMAP_BYTES: u64 = 64 << 30;

/// Page cache per SQLite connection, in KiB (filled only as pages are read).
const SQLITE_CACHE_KIB: u64 = 64 << 10;

/// Opens the database named by `url`, creating an SQLite file and its folder when missing.
///
/// SQLite runs in WAL mode with `synchronous=FULL`: every commit is durable, and readers
/// never wait for the writer. Throughput comes from grouping writes into shared commits
/// (see `store::writer`), not from weakening durability.
pub async fn connect(url: &str) -> Result<DatabaseConnection, DbErr> {
    connect_pool(url, if is_sqlite(url) { 8 } else { 16 }).await
}

/// [`connect`] with a given pool size (the writer uses a pool of one).
pub async fn connect_pool(url: &str, max_connections: u32) -> Result<DatabaseConnection, DbErr> {
    // Statements are prepared and reused; after five runs PostgreSQL may switch to one
    // generic plan for all bind values. A search's best plan depends on its values (one
    // patient's few hundred rows, or a code on a fifth of the table), so each run is
    // planned for its own.
    connect_with(
        url,
        max_connections,
        "SET plan_cache_mode = force_custom_plan",
    )
    .await
}

/// PostgreSQL connections for subscription delivery bookkeeping (leases, positions,
/// attempts): single statements committed without waiting for their WAL flush. A crash
/// may lose the last fraction of a second of bookkeeping; those notifications are then
/// sent again with the same event numbers. The events themselves are committed durably
/// by the writer.
pub async fn connect_bookkeeping(url: &str) -> Result<DatabaseConnection, DbErr> {
    connect_with(url, 4, "SET synchronous_commit = off").await
}

async fn connect_with(
    url: &str,
    max_connections: u32,
    session: &'static str,
) -> Result<DatabaseConnection, DbErr> {
    let mut options = ConnectOptions::new(url.to_string());
    options
        .sqlx_logging(false)
        .connect_timeout(Duration::from_secs(10))
        .acquire_timeout(Duration::from_secs(30));
    if is_sqlite(url) {
        if let Some(path) = sqlite_file_path(url) {
            if let Some(parent) = Path::new(&path).parent() {
                if !parent.as_os_str().is_empty() {
                    std::fs::create_dir_all(parent).map_err(|e| {
                        DbErr::Custom(format!(
                            "cannot create the database folder {}: {e}",
                            parent.display()
                        ))
                    })?;
                }
            }
        }
        SqliteConnectOptions::from_str(url)
            .map_err(|e| DbErr::Custom(format!("invalid SQLite URL {url:?}: {e}")))?;
        options
            .max_connections(max_connections)
            .min_connections(1)
            .map_sqlx_sqlite_opts(|o| {
                o.create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Full)
                    .busy_timeout(Duration::from_secs(10))
                    .foreign_keys(true)
                    // Searches read many index pages: from memory-mapped file pages
                    // rather than by a system call each, and with a page cache per
                    // connection larger than the default 2 MiB.
                    .pragma("mmap_size", SQLITE_MMAP_BYTES.to_string())
                    .pragma("cache_size", format!("-{SQLITE_CACHE_KIB}"))
            });
    } else {
        options
            .max_connections(max_connections)
            .min_connections(1)
            .map_sqlx_postgres_pool_opts(move |pool| {
                pool.after_connect(move |connection, _| {
                    Box::pin(async move {
                        disable_nagle_on_tcp_sockets();
                        sea_orm::sqlx::Executor::execute(&mut *connection, session).await?;
                        Ok(())
                    })
                })
            });
    }
    Database::connect(options).await
}

/// Applies every pending migration; safe to run again and from several processes.
pub async fn migrate(db: &DatabaseConnection) -> Result<(), DbErr> {
    if db.get_database_backend() == DbBackend::Postgres {
        // Several instances may start at once on one database: a transaction-scoped
        // advisory lock lets one migrate while the others wait, then find nothing to do.
        let txn = db.begin().await?;
        txn.execute_unprepared("SELECT pg_advisory_xact_lock(4242001)")
            .await?;
        Migrator::up(&txn, None).await?;
        return txn.commit().await;
    }
    Migrator::up(db, None).await
}

/// sqlx 0.9.0 stopped disabling Nagle's algorithm on its TCP sockets (sqlx issue #4335;
/// fixed upstream but not released yet). Every statement larger than the driver's write
/// chunk then waits 40 ms for PostgreSQL's delayed ACK, which caps write throughput at a
/// few hundred resources per second. Until a release carries the fix, each new database
/// connection sets TCP_NODELAY on the process's TCP sockets (harmless for the others).
fn disable_nagle_on_tcp_sockets() {
    #[cfg(target_os = "linux")]
    {
        let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
            return;
        };
        for entry in entries.flatten() {
            let Some(fd) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<i32>().ok())
            else {
                continue;
            };
            if is_tcp_socket(fd) {
                let on: libc::c_int = 1;
                // SAFETY: plain setsockopt on a descriptor that getsockopt just confirmed to
                // be a TCP socket; a descriptor closed meanwhile makes it fail harmlessly.
                unsafe {
                    libc::setsockopt(
                        fd,
                        libc::IPPROTO_TCP,
                        libc::TCP_NODELAY,
                        &on as *const libc::c_int as *const libc::c_void,
                        std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                    );
                }
            }
        }
    }
}

#[cfg(target_os = "linux")]
fn is_tcp_socket(fd: i32) -> bool {
    let option = |name: libc::c_int| -> Option<libc::c_int> {
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `value`; on a descriptor that
        // is not a socket it fails with ENOTSOCK.
        let result = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                name,
                &mut value as *mut libc::c_int as *mut libc::c_void,
                &mut len,
            )
        };
        (result == 0).then_some(value)
    };
    option(libc::SO_TYPE) == Some(libc::SOCK_STREAM)
        && matches!(
            option(libc::SO_DOMAIN),
            Some(libc::AF_INET | libc::AF_INET6)
        )
}

pub fn is_sqlite(url: &str) -> bool {
    url.starts_with("sqlite:")
}

/// The file an SQLite URL points at, or `None` for an in-memory database.
fn sqlite_file_path(url: &str) -> Option<String> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or_default();
    if path.is_empty() || path == ":memory:" {
        None
    } else {
        Some(path.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_paths() {
        assert_eq!(
            sqlite_file_path("sqlite://data/fhirgate.db").as_deref(),
            Some("data/fhirgate.db")
        );
        assert_eq!(
            sqlite_file_path("sqlite:///tmp/x.db?mode=rwc").as_deref(),
            Some("/tmp/x.db")
        );
        assert_eq!(sqlite_file_path("sqlite::memory:"), None);
    }
}
