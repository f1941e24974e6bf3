//! Webhook signing secrets in PostgreSQL.

use async_trait::async_trait;

use super::PgStore;
use crate::domain::TenantId;
use crate::storage::shared::StoredRow;
use crate::storage::{StoreError, StoreResult, WebhookSecretStore};
use crate::time::UnixMillis;

#[async_trait]
impl WebhookSecretStore for PgStore {
    async fn webhook_secret(&self, tenant: TenantId) -> StoreResult<Option<String>> {
        let row = sqlx::query("SELECT secret FROM webhook_secrets WHERE tenant_id = $1")
            .bind(tenant.to_string())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.text("secret")).transpose()?)
    }

    async fn put_webhook_secret(
        &self,
        tenant: TenantId,
        secret: &str,
        replace: bool,
        now: UnixMillis,
    ) -> StoreResult<String> {
        let sql = if replace {
            "INSERT INTO webhook_secrets (tenant_id, secret, created_at) VALUES ($1, $2, $3)
             ON CONFLICT (tenant_id)
             DO UPDATE SET secret = excluded.secret, created_at = excluded.created_at"
        } else {
            "INSERT INTO webhook_secrets (tenant_id, secret, created_at) VALUES ($1, $2, $3)
             ON CONFLICT (tenant_id) DO NOTHING"
        };
        sqlx::query(sql)
            .bind(tenant.to_string())
            .bind(secret)
            .bind(now)
            .execute(&self.pool)
            .await?;
        self.webhook_secret(tenant)
            .await?
            .ok_or_else(|| StoreError::Corrupt("webhook secret vanished".into()))
    }
}
