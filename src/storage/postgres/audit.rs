//! The audit chain in PostgreSQL: appends serialise on a transaction-scoped advisory lock.

use async_trait::async_trait;

use super::PgStore;
use crate::storage::shared::{audit_from_row, chain_after, AUDIT_COLUMNS};
use crate::storage::{
    AuditQuery, AuditRecord, AuditStore, NewAuditRecord, StoreResult, StoredCheckpoint, TenantScope,
};

#[async_trait]
impl AuditStore for PgStore {
    async fn append_audit(&self, event: &NewAuditRecord) -> StoreResult<AuditRecord> {
        let _local = self.audit_lock.lock().await;
        // Rolled back if dropped before commit, which also releases the advisory lock.
        let mut tx = self.pool.begin().await?;
        // Serialises appends across processes (key: "SONICAUD"), so the head read below cannot go
        // stale before the insert.
        sqlx::query("SELECT pg_advisory_xact_lock(6003102904876094788)")
            .execute(&mut *tx)
            .await?;
        let head = sqlx::query("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&mut *tx)
            .await?;
        let record = chain_after(head.as_ref(), event)?;
        let sql = format!(
            "INSERT INTO audit_log ({AUDIT_COLUMNS})
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
        );
        sqlx::query(&sql)
            .bind(record.seq)
            .bind(event.at)
            .bind(&event.request_id)
            .bind(&event.actor_user_id)
            .bind(&event.actor_tenant_id)
            .bind(&event.tenant_id)
            .bind(&event.client_ip)
            .bind(&event.user_agent)
            .bind(&event.action)
            .bind(&event.target)
            .bind(&event.outcome)
            .bind(&event.reason)
            .bind(&record.prev_hash)
            .bind(&record.hash)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(record)
    }

    async fn query_audit(
        &self,
        scope: TenantScope,
        query: &AuditQuery,
    ) -> StoreResult<Vec<AuditRecord>> {
        let sql = format!(
            "SELECT {AUDIT_COLUMNS} FROM audit_log
             WHERE ($1 IS NULL OR tenant_id = $1)
               AND ($2 IS NULL OR actor_user_id = $2)
               AND ($3 IS NULL OR action = $3)
               AND ($4 IS NULL OR outcome = $4)
               AND ($5 IS NULL OR at >= $5)
               AND ($6 IS NULL OR at <= $6)
               AND ($7 IS NULL OR seq < $7)
             ORDER BY seq DESC
             LIMIT $8"
        );
        sqlx::query(&sql)
            .bind(scope.tenant_filter())
            .bind(&query.actor)
            .bind(&query.action)
            .bind(&query.outcome)
            .bind(query.since)
            .bind(query.until)
            .bind(query.before_seq)
            .bind(query.limit)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(audit_from_row)
            .collect()
    }

    async fn audit_chain_page(&self, after_seq: i64, limit: i64) -> StoreResult<Vec<AuditRecord>> {
        let sql =
            format!("SELECT {AUDIT_COLUMNS} FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2");
        sqlx::query(&sql)
            .bind(after_seq)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(audit_from_row)
            .collect()
    }

    async fn audit_head(&self) -> StoreResult<Option<(i64, String)>> {
        Ok(
            sqlx::query_as("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    async fn insert_audit_checkpoint(&self, checkpoint: &StoredCheckpoint) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO audit_checkpoints (seq, hash, created_at, document)
             VALUES ($1, $2, $3, $4) ON CONFLICT (seq) DO NOTHING",
        )
        .bind(checkpoint.seq)
        .bind(&checkpoint.hash)
        .bind(checkpoint.created_at)
        .bind(&checkpoint.document)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn latest_audit_checkpoint(&self) -> StoreResult<Option<StoredCheckpoint>> {
        let row: Option<(i64, String, i64, String)> = sqlx::query_as(
            "SELECT seq, hash, created_at, document FROM audit_checkpoints
             ORDER BY seq DESC LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await?;
        Ok(
            row.map(|(seq, hash, created_at, document)| StoredCheckpoint {
                seq,
                hash,
                created_at: crate::time::UnixMillis::from_millis(created_at),
                document,
            }),
        )
    }
}
