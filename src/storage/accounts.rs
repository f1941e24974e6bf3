//! Tenants and users as stored, and the stores that keep them.

use async_trait::async_trait;

use super::{StoreResult, TenantScope};
use crate::domain::{PlanName, Role, TenantId, TenantName, UserId, Username};
use crate::time::UnixMillis;

#[derive(Debug, Clone, PartialEq)]
pub struct TenantRecord {
    pub id: TenantId,
    pub name: TenantName,
    pub plan: PlanName,
    pub created_at: UnixMillis,
    pub updated_at: UnixMillis,
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
    pub created_at: UnixMillis,
    pub updated_at: UnixMillis,
}

/// Partial update of a tenant.
#[derive(Debug, Clone, Default)]
pub struct TenantUpdate {
    pub name: Option<TenantName>,
    pub plan: Option<PlanName>,
}

/// Tenant storage.
#[async_trait]
pub trait TenantStore: Send + Sync {
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
        now: UnixMillis,
    ) -> StoreResult<Option<TenantRecord>>;
}

/// User storage.
#[async_trait]
pub trait UserStore: Send + Sync {
    async fn insert_user(&self, user: &UserRecord) -> StoreResult<()>;
    async fn user(&self, scope: TenantScope, id: UserId) -> StoreResult<Option<UserRecord>>;
    /// The plan that applies to the user now: their own when set, else their tenant's. One read by
    /// primary keys; `None` when the user no longer exists.
    async fn current_plan(&self, id: UserId) -> StoreResult<Option<PlanName>>;
    /// Users with this name across tenants (a login may omit the tenant when the name is unique).
    async fn users_by_username(&self, username: &Username) -> StoreResult<Vec<UserRecord>>;
    async fn list_users(&self, scope: TenantScope) -> StoreResult<Vec<UserRecord>>;
    /// Writes every mutable field of the user; `false` when no such user is in scope.
    async fn update_user(&self, scope: TenantScope, user: &UserRecord) -> StoreResult<bool>;
    /// Deletes the user and their refresh tokens; `false` when no such user is in scope.
    async fn delete_user(&self, scope: TenantScope, id: UserId) -> StoreResult<bool>;
}
