//! The embedded default: one SQLite file in WAL mode.

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow};
use sqlx::SqlitePool;

/// `Store` on a SQLite database file.
pub struct SqliteStore {
    pool: SqlitePool,
    /// SQLite has one writer; appends from this process queue here instead of failing with SQLITE_BUSY.
    audit_lock: tokio::sync::Mutex<()>,
}

impl SqliteStore {
    /// SQLite's single writer lock already serialises audit appends.
    const AUDIT_LOCK: Option<&'static str> = None;
    const USER_LOCK: Option<&'static str> = None;
    /// A single UPDATE ... WHERE id = (SELECT ...) is atomic under SQLite's one writer.
    const SKIP_LOCKED: &'static str = "";

    pub async fn connect(url: &str) -> Result<Self, crate::storage::StoreError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await?;
        sqlx::migrate!("migrations/sqlite").run(&pool).await?;
        Ok(Self {
            pool,
            audit_lock: tokio::sync::Mutex::new(()),
        })
    }

    /// `BEGIN IMMEDIATE` takes the write lock up front, so reads inside the transaction (the chain head, quota
    /// counts) cannot go stale before its writes.
    async fn write_transaction(
        &self,
    ) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, sqlx::Error> {
        self.pool.begin_with("BEGIN IMMEDIATE").await
    }

    /// The pool, for tests that inspect or tamper with rows directly.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

super::sql::impl_sql_store!(SqliteStore, SqliteRow);
super::jobs_sql::impl_job_store!(SqliteStore, SqliteRow);
