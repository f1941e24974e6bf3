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
