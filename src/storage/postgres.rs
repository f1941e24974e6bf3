//! PostgreSQL, for many API and worker processes sharing one database.

use sqlx::postgres::{PgPoolOptions, PgRow};
use sqlx::PgPool;

/// `Store` on a PostgreSQL database.
pub struct PgStore {
    pool: PgPool,
    /// Orders this process's appends before they contend for the database-wide advisory lock.
    audit_lock: tokio::sync::Mutex<()>,
}

impl PgStore {
    /// A transaction-scoped advisory lock serialises appends across processes (key: "SONICAUD").
    const AUDIT_LOCK: Option<&'static str> =
        Some("SELECT pg_advisory_xact_lock(6003102904876094788)");

    /// Locks the user's row so two simultaneous requests at the quota limit cannot both pass.
    const USER_LOCK: Option<&'static str> = Some("SELECT id FROM users WHERE id = $1 FOR UPDATE");
    /// Concurrent workers skip rows another worker is claiming instead of waiting on them.
    const SKIP_LOCKED: &'static str = " FOR UPDATE SKIP LOCKED";

    pub async fn connect(url: &str) -> Result<Self, crate::storage::StoreError> {
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

    async fn write_transaction(
        &self,
    ) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
        self.pool.begin().await
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

super::sql::impl_sql_store!(PgStore, PgRow);
super::jobs_sql::impl_job_store!(PgStore, PgRow);
