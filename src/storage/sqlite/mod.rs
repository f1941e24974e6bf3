//! The embedded default: one SQLite file in WAL mode. SQLite has one writer; a transaction that reads
//! before it writes (the audit chain's head, a user's quota) begins with `BEGIN IMMEDIATE`, so it holds
//! the write lock from its first read and what it read cannot go stale before it writes.

mod accounts;
mod audit;
mod estimates;
mod jobs;
mod labels;
mod tokens;
mod webhooks;
mod workers;

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{Sqlite, SqlitePool, Transaction};

use super::schema::{AppliedMigration, SchemaStatus};
use super::{HealthCheck, Migrations, StoreError, StoreResult};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");

/// `Store` on a SQLite database file.
pub struct SqliteStore {
    pool: SqlitePool,
    /// SQLite has one writer; appends from this process queue here instead of failing with SQLITE_BUSY.
    audit_lock: tokio::sync::Mutex<()>,
}

impl SqliteStore {
    /// Opens the database and applies pending migrations.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::open(url, Migrations::Apply).await
    }

    /// Opens the database; with `Migrations::Require` it applies nothing and refuses a schema
    /// that is behind this release.
    pub async fn open(url: &str, migrations: Migrations) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await?;
        let store = Self {
            pool,
            audit_lock: tokio::sync::Mutex::new(()),
        };
        match migrations {
            Migrations::Apply => {
                let pending = store.schema().await?.pending;
                MIGRATOR.run(&store.pool).await?;
                if !pending.is_empty() {
                    tracing::info!(versions = ?pending, "database migrations applied");
                }
            }
            Migrations::Require => {
                if let Some(problem) = store.schema().await?.problem() {
                    return Err(StoreError::SchemaBehind(problem));
                }
            }
        }
        Ok(store)
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

    async fn schema(&self) -> StoreResult<SchemaStatus> {
        let exists: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
        )
        .fetch_one(&self.pool)
        .await?;
        let applied = if exists == 0 {
            Vec::new()
        } else {
            sqlx::query_as::<_, (i64, Vec<u8>, bool)>(
                "SELECT version, checksum, success FROM _sqlx_migrations ORDER BY version",
            )
            .fetch_all(&self.pool)
            .await?
            .into_iter()
            .map(|(version, checksum, success)| AppliedMigration {
                version,
                checksum,
                success,
            })
            .collect()
        };
        Ok(SchemaStatus::compare(&MIGRATOR, &applied))
    }
}
