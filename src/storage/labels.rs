//! The visible label's texts a tenant uses instead of the defaults.

use async_trait::async_trait;

use super::StoreResult;
use crate::domain::{LabelTexts, TenantId};
use crate::time::UnixMillis;

/// Per-tenant label texts.
#[async_trait]
pub trait LabelStore: Send + Sync {
    /// The tenant's own texts; `None`: the defaults.
    async fn tenant_label(&self, tenant: TenantId) -> StoreResult<Option<LabelTexts>>;
    /// Sets the tenant's texts, or (`None`) goes back to the defaults.
    async fn put_tenant_label(
        &self,
        tenant: TenantId,
        texts: Option<&LabelTexts>,
        now: UnixMillis,
    ) -> StoreResult<()>;
}
