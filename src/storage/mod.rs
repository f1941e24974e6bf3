//! Persistence: per-concern store traits (`TenantStore`, `UserStore`, `TokenStore`, `AuditStore`,
//! `WebhookSecretStore`, `JobStore`) composed into `Store`, with a SQLite backend (the embedded default)
//! and a PostgreSQL backend, chosen by the scheme of `database_url`. Each backend is its own module with
//! its own SQL and its own migrations, applied on connect; `shared` holds what they have in common.

pub mod accounts;
pub mod audit;
pub mod chain;
pub mod jobs;
mod postgres;
mod shared;
mod sqlite;
pub mod tokens;
pub mod webhooks;

use std::sync::Arc;

use async_trait::async_trait;

use crate::domain::TenantId;

pub use accounts::{TenantRecord, TenantStore, TenantUpdate, UserRecord, UserStore};
pub use audit::{AuditQuery, AuditRecord, AuditStore};
pub use chain::NewAuditRecord;
pub use jobs::JobStore;
pub use postgres::PgStore;
pub use sqlite::SqliteStore;
pub use tokens::{RefreshTokenRecord, RevokedToken, TokenId, TokenStore};
pub use webhooks::WebhookSecretStore;

/// Failures of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A unique constraint was violated (a name already taken).
    #[error("already exists")]
    Conflict,
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
}

impl StoreError {
    fn from_sqlx(err: sqlx::Error) -> Self {
        match &err {
            sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict,
            _ => StoreError::Database(err),
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Which tenants a query may see. Built from the authenticated caller (`http::caller`) or, for the
/// operator's CLI and internal jobs, explicitly as `All`. Every query on tenant-owned rows takes one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TenantScope {
    All,
    Tenant(TenantId),
}

impl TenantScope {
    pub fn allows(&self, tenant: TenantId) -> bool {
        match self {
            TenantScope::All => true,
            TenantScope::Tenant(own) => *own == tenant,
        }
    }

    fn tenant_filter(&self) -> Option<String> {
        match self {
            TenantScope::All => None,
            TenantScope::Tenant(id) => Some(id.to_string()),
        }
    }
}

/// Answers whether the database is reachable.
#[async_trait]
pub trait HealthCheck: Send + Sync {
    async fn ping(&self) -> StoreResult<()>;
}

/// Storage of everything the gateway persists: the composition of the per-concern stores, so an
/// `Arc<dyn Store>` serves every caller while each caller needs only the traits it uses.
pub trait Store:
    HealthCheck
    + TenantStore
    + UserStore
    + TokenStore
    + AuditStore
    + WebhookSecretStore
    + JobStore
    + 'static
{
}

impl<S> Store for S where
    S: HealthCheck
        + TenantStore
        + UserStore
        + TokenStore
        + AuditStore
        + WebhookSecretStore
        + JobStore
        + 'static
{
}

/// The store traits, for code that calls store methods on a concrete backend type.
pub mod prelude {
    pub use super::{
        AuditStore, HealthCheck, JobStore, Store, TenantStore, TokenStore, UserStore,
        WebhookSecretStore,
    };
}

/// Connects to `database_url` (`sqlite://...` or `postgres://...`) and applies that backend's migrations.
pub async fn connect(database_url: &str) -> anyhow::Result<Arc<dyn Store>> {
    if database_url.starts_with("postgres://") || database_url.starts_with("postgresql://") {
        Ok(Arc::new(PgStore::connect(database_url).await?))
    } else if database_url.starts_with("sqlite:") {
        Ok(Arc::new(SqliteStore::connect(database_url).await?))
    } else {
        anyhow::bail!("database_url must start with sqlite:// or postgres://")
    }
}
