//! Webhook signing secrets and the webhook outbox in SQLite.

use async_trait::async_trait;

use super::SqliteStore;
use crate::domain::TenantId;
use crate::storage::shared::{parse_stored, StoredRow};
use crate::storage::webhooks::{QueuedWebhook, WebhookOutbox};
use crate::storage::{StoreError, StoreResult, WebhookSecretStore};
use crate::time::UnixMillis;

#[async_trait]
impl WebhookSecretStore for SqliteStore {
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

#[async_trait]
impl WebhookOutbox for SqliteStore {
    async fn queue_webhook(&self, webhook: &QueuedWebhook, now: UnixMillis) -> StoreResult<bool> {
        let done = sqlx::query(
            "INSERT INTO webhook_outbox
                 (message_id, tenant_id, url, body, attempts, next_attempt_at, created_at)
             VALUES ($1, $2, $3, $4, 0, $5, $5)
             ON CONFLICT (message_id) DO NOTHING",
        )
        .bind(&webhook.message_id)
        .bind(webhook.tenant_id.to_string())
        .bind(&webhook.url)
        .bind(&webhook.body)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn claim_webhooks(
        &self,
        now: UnixMillis,
        hold_until: UnixMillis,
        limit: i64,
    ) -> StoreResult<Vec<QueuedWebhook>> {
        let rows = sqlx::query(
            "UPDATE webhook_outbox SET attempts = attempts + 1, next_attempt_at = $2
             WHERE message_id IN (
                 SELECT message_id FROM webhook_outbox WHERE next_attempt_at <= $1
                 ORDER BY next_attempt_at LIMIT $3
             )
             RETURNING message_id, tenant_id, url, body, attempts",
        )
        .bind(now)
        .bind(hold_until)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(QueuedWebhook {
                    message_id: row.text("message_id")?,
                    tenant_id: parse_stored("webhook_outbox.tenant_id", &row.text("tenant_id")?)?,
                    url: row.text("url")?,
                    body: row.text("body")?,
                    attempts: row.int("attempts")? - 1,
                })
            })
            .collect()
    }

    async fn remove_webhook(&self, message_id: &str) -> StoreResult<()> {
        sqlx::query("DELETE FROM webhook_outbox WHERE message_id = $1")
            .bind(message_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn retry_webhook(&self, message_id: &str, at: UnixMillis) -> StoreResult<()> {
        sqlx::query("UPDATE webhook_outbox SET next_attempt_at = $2 WHERE message_id = $1")
            .bind(message_id)
            .bind(at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
