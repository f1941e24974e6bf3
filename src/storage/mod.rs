//! Persistence: one `Store` trait, a SQLite backend (the embedded default) and a PostgreSQL backend,
//! chosen by the scheme of `database_url`. Each backend has its own migrations, applied on connect.

pub mod jobs;
mod jobs_sql;
mod postgres;
mod sql;
mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;
use serde::Serialize;

use crate::domain::{PlanName, Role, TenantId, TenantName, UserId, Username};

pub use postgres::PgStore;
pub use sqlite::SqliteStore;

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

/// The `prev_hash` of the first audit record.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

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

#[derive(Debug, Clone, PartialEq)]
pub struct TenantRecord {
    pub id: TenantId,
    pub name: TenantName,
    pub plan: PlanName,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct UserRecord {
    pub id: UserId,
    pub tenant_id: TenantId,
    pub username: Username,
    /// PHC string (Argon2id).
    pub password_hash: String,
    pub role: Role,
    /// Overrides the tenant's plan when set.
    pub plan: Option<PlanName>,
    pub disabled: bool,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RefreshTokenRecord {
    /// SHA-256 of the token, hex. The token itself is never stored.
    pub token_hash: String,
    pub family_id: String,
    pub user_id: UserId,
    pub tenant_id: TenantId,
    pub issued_at: i64,
    pub expires_at: i64,
    pub used_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

/// An access token's id with its expiry: what a denylist entry needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenId {
    pub jti: String,
    pub expires_at: i64,
}

/// A revocation as stored, with when it happened (replicas poll by that).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedToken {
    pub jti: String,
    pub expires_at: i64,
    pub revoked_at: i64,
}

/// An audit event before it is chained.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct NewAuditRecord {
    pub at: i64,
    pub request_id: Option<String>,
    pub actor_user_id: Option<String>,
    pub actor_tenant_id: Option<String>,
    /// The tenant the event concerns; tenant admins see their tenant's events.
    pub tenant_id: Option<String>,
    pub client_ip: Option<String>,
    pub user_agent: Option<String>,
    pub action: String,
    pub target: Option<String>,
    pub outcome: String,
    pub reason: Option<String>,
}

/// A chained audit record.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditRecord {
    pub seq: i64,
    #[serde(flatten)]
    pub event: NewAuditRecord,
    pub prev_hash: String,
    pub hash: String,
}

/// Filters for reading the audit log, newest first.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub actor: Option<String>,
    pub action: Option<String>,
    pub outcome: Option<String>,
    pub since: Option<i64>,
    pub until: Option<i64>,
    /// Only records with `seq` below this (the cursor).
    pub before_seq: Option<i64>,
    pub limit: i64,
}

/// Partial update of a tenant.
#[derive(Debug, Clone, Default)]
pub struct TenantUpdate {
    pub name: Option<TenantName>,
    pub plan: Option<PlanName>,
}

/// Storage of everything the gateway persists.
#[async_trait]
pub trait Store: jobs::JobStore + Send + Sync + 'static {
    /// Answers when the database is reachable.
    async fn ping(&self) -> StoreResult<()>;

    async fn count_tenants(&self) -> StoreResult<i64>;
    async fn insert_tenant(&self, tenant: &TenantRecord) -> StoreResult<()>;
    async fn tenant(&self, scope: TenantScope, id: TenantId) -> StoreResult<Option<TenantRecord>>;
    async fn tenant_by_name(&self, name: &TenantName) -> StoreResult<Option<TenantRecord>>;
    async fn list_tenants(&self) -> StoreResult<Vec<TenantRecord>>;
    /// Returns the updated tenant, or `None` when it does not exist.
    async fn update_tenant(
        &self,
        id: TenantId,
        update: &TenantUpdate,
        now: i64,
    ) -> StoreResult<Option<TenantRecord>>;

    async fn insert_user(&self, user: &UserRecord) -> StoreResult<()>;
    async fn user(&self, scope: TenantScope, id: UserId) -> StoreResult<Option<UserRecord>>;
    /// Users with this name across tenants (a login may omit the tenant when the name is unique).
    async fn users_by_username(&self, username: &Username) -> StoreResult<Vec<UserRecord>>;
    async fn list_users(&self, scope: TenantScope) -> StoreResult<Vec<UserRecord>>;
    /// Writes every mutable field of the user; `false` when no such user is in scope.
    async fn update_user(&self, scope: TenantScope, user: &UserRecord) -> StoreResult<bool>;
    /// Deletes the user and their refresh tokens; `false` when no such user is in scope.
    async fn delete_user(&self, scope: TenantScope, id: UserId) -> StoreResult<bool>;

    async fn insert_refresh_token(&self, token: &RefreshTokenRecord) -> StoreResult<()>;
    async fn refresh_token(&self, token_hash: &str) -> StoreResult<Option<RefreshTokenRecord>>;
    /// Marks an unused, unrevoked token used. `false` means someone used it first.
    async fn mark_refresh_token_used(&self, token_hash: &str, now: i64) -> StoreResult<bool>;
    async fn revoke_refresh_family(&self, family_id: &str, now: i64) -> StoreResult<u64>;
    async fn revoke_user_refresh_tokens(&self, user: UserId, now: i64) -> StoreResult<u64>;
    /// True when any refresh token of the family was revoked.
    async fn family_revoked(&self, family_id: &str) -> StoreResult<bool>;

    async fn insert_access_token(
        &self,
        token: &TokenId,
        user: UserId,
        family_id: &str,
    ) -> StoreResult<()>;
    /// Unexpired access tokens issued in a refresh family.
    async fn family_access_tokens(&self, family_id: &str, now: i64) -> StoreResult<Vec<TokenId>>;
    /// Unexpired access tokens of a user.
    async fn user_access_tokens(&self, user: UserId, now: i64) -> StoreResult<Vec<TokenId>>;
    /// The refresh family an access token was issued in.
    async fn access_token_family(&self, jti: &str) -> StoreResult<Option<String>>;

    async fn insert_revoked_token(&self, token: &RevokedToken) -> StoreResult<()>;
    /// Unexpired revocations made at or after `since` (ms).
    async fn revoked_tokens_since(&self, since: i64, now: i64) -> StoreResult<Vec<RevokedToken>>;
    /// Drops expired tokens and revocations.
    async fn purge_expired(&self, now: i64) -> StoreResult<()>;

    /// Appends to the audit chain atomically: the new record links to the current head.
    async fn append_audit(&self, event: &NewAuditRecord) -> StoreResult<AuditRecord>;
    async fn query_audit(
        &self,
        scope: TenantScope,
        query: &AuditQuery,
    ) -> StoreResult<Vec<AuditRecord>>;
    /// The tenant's webhook signing secret, if one was made.
    async fn webhook_secret(&self, tenant: TenantId) -> StoreResult<Option<String>>;
    /// Stores a secret unless one exists (`replace = false`) or always (`replace = true`); returns the one in force.
    async fn put_webhook_secret(
        &self,
        tenant: TenantId,
        secret: &str,
        replace: bool,
        now: i64,
    ) -> StoreResult<String>;

    /// Records in chain order, after `after_seq`, for verification.
    async fn audit_chain_page(&self, after_seq: i64, limit: i64) -> StoreResult<Vec<AuditRecord>>;
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
