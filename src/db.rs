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

/// Opens the database named by `url`, creating an SQLite file and its folder when missing.
///
/// SQLite runs in WAL mode with `synchronous=FULL`: every commit is durable, and readers
/// never wait for the writer. Throughput comes from grouping writes into shared commits
/// (see `store::writer`), not from weakening durability.
pub async fn connect(url: &str) -> Result<DatabaseConnection, DbErr> {
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
            .max_connections(8)
            .min_connections(1)
            .map_sqlx_sqlite_opts(|o| {
                o.create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Full)
                    .busy_timeout(Duration::from_secs(10))
                    .foreign_keys(true)
            });
    } else {
        options.max_connections(16).min_connections(1);
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
