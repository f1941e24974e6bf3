//! Per-tenant webhook signing secrets.

use async_trait::async_trait;

use super::StoreResult;
use crate::domain::TenantId;
use crate::time::UnixMillis;

/// Webhook secret storage.
#[async_trait]
pub trait WebhookSecretStore: Send + Sync {
    /// The tenant's webhook signing secret, if one was made.
    async fn webhook_secret(&self, tenant: TenantId) -> StoreResult<Option<String>>;
    /// Stores a secret unless one exists (`replace = false`) or always (`replace = true`); returns the one in force.
    async fn put_webhook_secret(
        &self,
        tenant: TenantId,
        secret: &str,
        replace: bool,
        now: UnixMillis,
    ) -> StoreResult<String>;
}

/// A webhook to deliver, as queued when its job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedWebhook {
    /// `webhook-id`: one per job and final status, so queueing it again changes nothing.
    pub message_id: String,
    pub tenant_id: TenantId,
    pub url: String,
    pub body: String,
    /// Attempts made before this one.
    pub attempts: i64,
}

/// The webhook outbox: deliveries every server process drains, so none is lost with the process
/// that queued it.
#[async_trait]
pub trait WebhookOutbox: Send + Sync {
    /// Queues a delivery, due at once; `false` when that message was queued already.
    async fn queue_webhook(&self, webhook: &QueuedWebhook, now: UnixMillis) -> StoreResult<bool>;
    /// Takes up to `limit` deliveries due at `now`, each counted as one more attempt and not due
    /// again before `hold_until` (when the process that took it died mid-attempt).
    async fn claim_webhooks(
        &self,
        now: UnixMillis,
        hold_until: UnixMillis,
        limit: i64,
    ) -> StoreResult<Vec<QueuedWebhook>>;
    /// Delivered, or given up: removed.
    async fn remove_webhook(&self, message_id: &str) -> StoreResult<()>;
    /// Failed; due again at `at`.
    async fn retry_webhook(&self, message_id: &str, at: UnixMillis) -> StoreResult<()>;
}
