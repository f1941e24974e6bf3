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
    /// `BEGIN IMMEDIATE` takes the write lock up front, so the read of the chain head cannot go stale.
    const AUDIT_BEGIN: &'static [&'static str] = &["BEGIN IMMEDIATE"];
    /// The write lock also serialises quota checks.
    const JOB_TX_BEGIN: &'static [&'static str] = &["BEGIN IMMEDIATE"];
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

    /// The pool, for tests that inspect or tamper with rows directly.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

super::sql::impl_sql_store!(SqliteStore, SqliteRow);
super::jobs_sql::impl_job_store!(SqliteStore, SqliteRow);
