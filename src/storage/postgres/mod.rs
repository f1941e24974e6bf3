//! PostgreSQL, for many API and worker processes sharing one database. Where SQLite relies on its
//! single writer, this backend takes explicit locks: the user's row for the quota check, a
//! transaction-scoped advisory lock for the audit chain, `FOR UPDATE SKIP LOCKED` for a claim.

mod accounts;
mod audit;
mod estimates;
mod jobs;
mod tokens;
mod webhooks;
mod workers;

use async_trait::async_trait;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

use super::{HealthCheck, StoreError, StoreResult};

/// `Store` on a PostgreSQL database.
pub struct PgStore {
    pool: PgPool,
    /// Orders this process's appends before they contend for the database-wide advisory lock.
    audit_lock: tokio::sync::Mutex<()>,
}

impl PgStore {
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .connect(url)
            .await?;
        sqlx::migrate!("migrations/postgres").run(&pool).await?;
        Ok(Self {
            pool,
            audit_lock: tokio::sync::Mutex::new(()),
        })
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
}
