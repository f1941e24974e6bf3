//! PostgreSQL, for many API and worker processes sharing one database. Where SQLite relies on its
//! single writer, this backend takes explicit locks: the user's row for the quota check, a
//! transaction-scoped advisory lock for the audit chain, `FOR UPDATE SKIP LOCKED` for a claim.

mod accounts;
mod audit;
mod estimates;
mod jobs;
mod labels;
mod tokens;
mod webhooks;
mod workers;

use async_trait::async_trait;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

use super::schema::{AppliedMigration, SchemaStatus};
use super::{HealthCheck, Migrations, StoreError, StoreResult};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

/// `Store` on a PostgreSQL database.
pub struct PgStore {
    pool: PgPool,
    /// Orders this process's appends before they contend for the database-wide advisory lock.
    audit_lock: tokio::sync::Mutex<()>,
}

impl PgStore {
    /// Connects and applies pending migrations.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::open(url, Migrations::Apply).await
    }

    /// Connects; with `Migrations::Require` it applies nothing and refuses a schema that is behind
    /// this release.
    pub async fn open(url: &str, migrations: Migrations) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .connect(url)
            .await?;
        let store = Self {
            pool,
            audit_lock: tokio::sync::Mutex::new(()),
        };
        match migrations {
            // sqlx holds an advisory lock while it migrates: replicas starting at once take turns.
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

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

#[async_trait]
impl HealthCheck for PgStore {
    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn schema(&self) -> StoreResult<SchemaStatus> {
        let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
            .fetch_one(&self.pool)
            .await?;
        let applied = if exists {
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
        } else {
            Vec::new()
        };
        Ok(SchemaStatus::compare(&MIGRATOR, &applied))
    }
}
