//! Tenants and users in PostgreSQL.

use async_trait::async_trait;

use super::PgStore;
use crate::domain::{PlanName, TenantId, TenantName, UserId, Username};
use crate::storage::shared::{
    tenant_from_row, user_from_row, StoredRow, TENANT_COLUMNS, USER_COLUMNS,
};
use crate::storage::{
    StoreError, StoreResult, TenantRecord, TenantScope, TenantStore, TenantUpdate, UserRecord,
    UserStore,
};
use crate::time::UnixMillis;

#[async_trait]
impl TenantStore for PgStore {
    async fn count_tenants(&self) -> StoreResult<i64> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM tenants")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.int("n")?)
    }

    async fn insert_tenant(&self, tenant: &TenantRecord) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO tenants (id, name, plan, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(tenant.id.to_string())
        .bind(tenant.name.as_str())
        .bind(tenant.plan.as_str())
        .bind(tenant.created_at)
        .bind(tenant.updated_at)
        .execute(&self.pool)
        .await
        .map_err(StoreError::from_sqlx)?;
        Ok(())
    }

    async fn tenant(&self, scope: TenantScope, id: TenantId) -> StoreResult<Option<TenantRecord>> {
        if !scope.allows(id) {
            return Ok(None);
        }
        let sql = format!("SELECT {TENANT_COLUMNS} FROM tenants WHERE id = $1");
        sqlx::query(&sql)
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(tenant_from_row)
            .transpose()
    }

    async fn tenant_by_name(&self, name: &TenantName) -> StoreResult<Option<TenantRecord>> {
        let sql = format!("SELECT {TENANT_COLUMNS} FROM tenants WHERE name = $1");
        sqlx::query(&sql)
            .bind(name.as_str())
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(tenant_from_row)
            .transpose()
    }

    async fn list_tenants(&self) -> StoreResult<Vec<TenantRecord>> {
        let sql = format!("SELECT {TENANT_COLUMNS} FROM tenants ORDER BY name");
        sqlx::query(&sql)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(tenant_from_row)
            .collect()
    }

    async fn update_tenant(
        &self,
        id: TenantId,
        update: &TenantUpdate,
        now: UnixMillis,
    ) -> StoreResult<Option<TenantRecord>> {
        let sql = format!(
            "UPDATE tenants
             SET name = COALESCE($2, name), plan = COALESCE($3, plan), updated_at = $4
             WHERE id = $1
             RETURNING {TENANT_COLUMNS}"
        );
        sqlx::query(&sql)
            .bind(id.to_string())
            .bind(update.name.as_ref().map(|n| n.as_str().to_owned()))
            .bind(update.plan.as_ref().map(|p| p.as_str().to_owned()))
            .bind(now)
            .fetch_optional(&self.pool)
            .await
            .map_err(StoreError::from_sqlx)?
            .as_ref()
            .map(tenant_from_row)
            .transpose()
    }
}

#[async_trait]
impl UserStore for PgStore {
    async fn insert_user(&self, user: &UserRecord) -> StoreResult<()> {
        let sql = format!(
            "INSERT INTO users ({USER_COLUMNS})
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
        );
        sqlx::query(&sql)
            .bind(user.id.to_string())
            .bind(user.tenant_id.to_string())
            .bind(user.username.as_str())
            .bind(&user.password_hash)
            .bind(user.role.as_str())
            .bind(user.plan.as_ref().map(|p| p.as_str().to_owned()))
            .bind(user.disabled)
            .bind(user.created_at)
            .bind(user.updated_at)
            .execute(&self.pool)
            .await
            .map_err(StoreError::from_sqlx)?;
        Ok(())
    }

    async fn user(&self, scope: TenantScope, id: UserId) -> StoreResult<Option<UserRecord>> {
        let sql = format!(
            "SELECT {USER_COLUMNS} FROM users
             WHERE id = $1 AND ($2 IS NULL OR tenant_id = $2)"
        );
        sqlx::query(&sql)
            .bind(id.to_string())
            .bind(scope.tenant_filter())
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(user_from_row)
            .transpose()
    }

    async fn current_plan(&self, id: UserId) -> StoreResult<Option<PlanName>> {
        let row = sqlx::query(
            "SELECT COALESCE(u.plan, t.plan) AS plan FROM users u
             JOIN tenants t ON t.id = u.tenant_id
             WHERE u.id = $1",
        )
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await?;
        Ok(match row {
            Some(row) => Some(PlanName::from_stored(row.text("plan")?)),
            None => None,
        })
    }

    async fn users_by_username(&self, username: &Username) -> StoreResult<Vec<UserRecord>> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE username = $1");
        sqlx::query(&sql)
            .bind(username.as_str())
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(user_from_row)
            .collect()
    }

    async fn list_users(&self, scope: TenantScope) -> StoreResult<Vec<UserRecord>> {
        let sql = format!(
            "SELECT {USER_COLUMNS} FROM users
             WHERE ($1 IS NULL OR tenant_id = $1)
             ORDER BY id"
        );
        sqlx::query(&sql)
            .bind(scope.tenant_filter())
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(user_from_row)
            .collect()
    }

    async fn update_user(&self, scope: TenantScope, user: &UserRecord) -> StoreResult<bool> {
        let done = sqlx::query(
            "UPDATE users
             SET username = $3, password_hash = $4, role = $5, plan = $6, disabled = $7,
                 updated_at = $8
             WHERE id = $1 AND ($2 IS NULL OR tenant_id = $2)",
        )
        .bind(user.id.to_string())
        .bind(scope.tenant_filter())
        .bind(user.username.as_str())
        .bind(&user.password_hash)
        .bind(user.role.as_str())
        .bind(user.plan.as_ref().map(|p| p.as_str().to_owned()))
        .bind(user.disabled)
        .bind(user.updated_at)
        .execute(&self.pool)
        .await
        .map_err(StoreError::from_sqlx)?;
        Ok(done.rows_affected() == 1)
    }

    async fn delete_user(&self, scope: TenantScope, id: UserId) -> StoreResult<bool> {
        let mut tx = self.pool.begin().await?;
        let done =
            sqlx::query("DELETE FROM users WHERE id = $1 AND ($2 IS NULL OR tenant_id = $2)")
                .bind(id.to_string())
                .bind(scope.tenant_filter())
                .execute(&mut *tx)
                .await?;
        if done.rows_affected() == 1 {
            sqlx::query("DELETE FROM refresh_tokens WHERE user_id = $1")
                .bind(id.to_string())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }
}
