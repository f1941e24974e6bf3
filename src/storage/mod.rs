//! Persistence: per-concern store traits (`TenantStore`, `UserStore`, `TokenStore`, `AuditStore`,
//! `WebhookSecretStore`, `WebhookOutbox`, `JobStore`, `EstimateStore`, `WorkerAccountStore`, `LabelStore`) composed into `Store`, with a SQLite backend (the embedded default)
//! and a PostgreSQL backend, chosen by the scheme of `database_url`. Each backend is its own module with
//! its own SQL and its own migrations, applied on connect; `shared` holds what they have in common.

pub mod accounts;
pub mod audit;
pub mod chain;
pub mod estimates;
pub mod jobs;
pub mod labels;
mod postgres;
pub mod schema;
mod shared;
mod sqlite;
pub mod tokens;
pub mod webhooks;
pub mod workers;

use std::sync::Arc;

use async_trait::async_trait;

use crate::domain::TenantId;

pub use accounts::{TenantRecord, TenantStore, TenantUpdate, UserRecord, UserStore};
pub use audit::{AuditQuery, AuditRecord, AuditStore, StoredCheckpoint};
pub use chain::NewAuditRecord;
pub use estimates::EstimateStore;
pub use jobs::JobStore;
pub use labels::LabelStore;
pub use postgres::PgStore;
pub use sqlite::SqliteStore;
pub use tokens::{RefreshTokenRecord, RevokedToken, TokenId, TokenStore};
pub use webhooks::{QueuedWebhook, WebhookOutbox, WebhookSecretStore};
pub use workers::{Presence, PresenceLimits, WorkerAccount, WorkerAccountStore};

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
    /// `Migrations::Require` found the schema behind this release (or changed under it).
    #[error("{0}")]
    SchemaBehind(String),
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

/// Which tenants a query may see. Every query on tenant-owned rows takes one. One tenant is the
/// normal case (`TenantScope::tenant`, built from the authenticated caller in `http::caller`); every
/// way to reach all tenants is a named constructor that says why, so a search for them lists each
/// place that crosses tenants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TenantScope(Reach);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reach {
    All,
    Tenant(TenantId),
}

impl TenantScope {
    /// One tenant's rows.
    pub fn tenant(id: TenantId) -> Self {
        Self(Reach::Tenant(id))
    }

    /// A platform admin administers every tenant.
    pub fn platform_admin() -> Self {
        Self(Reach::All)
    }

    /// The operator's `sonicgw admin` commands work on the database directly, across tenants.
    pub fn operator() -> Self {
        Self(Reach::All)
    }

    /// A lookup by an id the system itself holds and trusts (a refresh token's user, that user's
    /// tenant, an audit record's actor): the id, not the caller, decides the row.
    pub fn by_trusted_id() -> Self {
        Self(Reach::All)
    }

    /// A signed download link that verified: its signature names exactly one job, in any tenant.
    pub fn signed_link() -> Self {
        Self(Reach::All)
    }

    pub fn allows(&self, tenant: TenantId) -> bool {
        match self.0 {
            Reach::All => true,
            Reach::Tenant(own) => own == tenant,
        }
    }

    /// The tenant the scope is limited to, if it is.
    pub fn only(&self) -> Option<TenantId> {
        match self.0 {
            Reach::All => None,
            Reach::Tenant(id) => Some(id),
        }
    }

    fn tenant_filter(&self) -> Option<String> {
        self.only().map(|id| id.to_string())
    }
}

/// Answers whether the database is reachable and its schema current.
#[async_trait]
pub trait HealthCheck: Send + Sync {
    async fn ping(&self) -> StoreResult<()>;
    /// The schema compared with this release's migrations.
    async fn schema(&self) -> StoreResult<schema::SchemaStatus>;
}

/// What opening the database does with its schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Migrations {
    /// Apply pending migrations first (the embedded default, and `sonicgw migrate`).
    Apply,
    /// Apply nothing, and refuse a schema that is behind (`serve --no-migrate`: a deploy step
    /// migrates once, before the replicas start).
    Require,
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
    + WebhookOutbox
    + JobStore
    + EstimateStore
    + WorkerAccountStore
    + LabelStore
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
        + WebhookOutbox
        + JobStore
        + EstimateStore
        + WorkerAccountStore
        + LabelStore
        + 'static
{
}

/// The store traits, for code that calls store methods on a concrete backend type.
pub mod prelude {
    pub use super::{
        AuditStore, EstimateStore, HealthCheck, JobStore, LabelStore, Store, TenantStore,
        TokenStore, UserStore, WebhookSecretStore,
    };
}

/// Connects to `database_url` (`sqlite://...` or `postgres://...`) and applies that backend's migrations.
pub async fn connect(database_url: &str) -> anyhow::Result<Arc<dyn Store>> {
    connect_with(database_url, Migrations::Apply).await
}

/// Connects to `database_url`, treating its schema as `migrations` says.
pub async fn connect_with(
    database_url: &str,
    migrations: Migrations,
) -> anyhow::Result<Arc<dyn Store>> {
    if database_url.starts_with("postgres://") || database_url.starts_with("postgresql://") {
        Ok(Arc::new(PgStore::open(database_url, migrations).await?))
    } else if database_url.starts_with("sqlite:") {
        Ok(Arc::new(SqliteStore::open(database_url, migrations).await?))
    } else {
        anyhow::bail!("database_url must start with sqlite:// or postgres://")
    }
}
