//! The embedded default: one SQLite file in WAL mode. SQLite has one writer; a transaction that reads
//! before it writes (the audit chain's head, a user's quota) begins with `BEGIN IMMEDIATE`, so it holds
//! the write lock from its first read and what it read cannot go stale before it writes.

mod accounts;
mod audit;
mod estimates;
mod jobs;
mod tokens;
mod webhooks;
mod workers;

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{Sqlite, SqlitePool, Transaction};

use super::{HealthCheck, StoreError, StoreResult};

/// `Store` on a SQLite database file.
pub struct SqliteStore {
    pool: SqlitePool,
    /// SQLite has one writer; appends from this process queue here instead of failing with SQLITE_BUSY.
    audit_lock: tokio::sync::Mutex<()>,
}

impl SqliteStore {
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
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

    /// A transaction holding the write lock from the start. Rolled back if dropped before commit.
    async fn begin_immediate(&self) -> Result<Transaction<'static, Sqlite>, sqlx::Error> {
        self.pool.begin_with("BEGIN IMMEDIATE").await
    }

    /// The pool, for tests that inspect or tamper with rows directly.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

#[async_trait]
impl HealthCheck for SqliteStore {
    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}
