//! Per-tenant label texts in PostgreSQL.

use async_trait::async_trait;

use super::PgStore;
use crate::domain::{LabelText, LabelTexts, TenantId};
use crate::storage::labels::LabelStore;
use crate::storage::shared::StoredRow;
use crate::storage::{StoreError, StoreResult};
use crate::time::UnixMillis;

#[async_trait]
impl LabelStore for PgStore {
    async fn tenant_label(&self, tenant: TenantId) -> StoreResult<Option<LabelTexts>> {
        let row = sqlx::query("SELECT text_zh, text_en FROM tenant_labels WHERE tenant_id = $1")
            .bind(tenant.to_string())
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let text = |column: &str| {
            LabelText::parse(column, &row.text(column)?)
                .map_err(|e| StoreError::Corrupt(e.to_string()))
        };
        Ok(Some(LabelTexts {
            zh: text("text_zh")?,
            en: text("text_en")?,
        }))
    }

    async fn put_tenant_label(
        &self,
        tenant: TenantId,
        texts: Option<&LabelTexts>,
        now: UnixMillis,
    ) -> StoreResult<()> {
        let query = match texts {
            Some(texts) => sqlx::query(
                "INSERT INTO tenant_labels (tenant_id, text_zh, text_en, updated_at)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (tenant_id) DO UPDATE SET text_zh = excluded.text_zh,
                     text_en = excluded.text_en, updated_at = excluded.updated_at",
            )
            .bind(tenant.to_string())
            .bind(texts.zh.as_str())
            .bind(texts.en.as_str())
            .bind(now),
            None => sqlx::query("DELETE FROM tenant_labels WHERE tenant_id = $1")
                .bind(tenant.to_string()),
        };
        query
            .execute(&self.pool)
            .await
            .map_err(StoreError::from_sqlx)?;
        Ok(())
    }
}
