//! Worker service accounts in PostgreSQL.

use async_trait::async_trait;

use super::PgStore;
use crate::storage::shared::{worker_account_from_row, WORKER_ACCOUNT_COLUMNS};
use crate::storage::workers::{Presence, PresenceLimits, WorkerAccount, WorkerAccountStore};
use crate::storage::{StoreError, StoreResult};
use crate::time::UnixMillis;

#[async_trait]
impl WorkerAccountStore for PgStore {
    async fn insert_worker_account(&self, account: &WorkerAccount) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO worker_accounts (id, name, client_id, secret_hash, disabled, created_at)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(account.id.to_string())
        .bind(&account.name)
        .bind(&account.client_id)
        .bind(&account.secret_hash)
        .bind(account.disabled)
        .bind(account.created_at)
        .execute(&self.pool)
        .await
        .map_err(StoreError::from_sqlx)?;
        Ok(())
    }

    async fn worker_account(&self, id: uuid::Uuid) -> StoreResult<Option<WorkerAccount>> {
        let sql = format!("SELECT {WORKER_ACCOUNT_COLUMNS} FROM worker_accounts WHERE id = $1");
        sqlx::query(&sql)
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(worker_account_from_row)
            .transpose()
    }

    async fn worker_account_by_client_id(
        &self,
        client_id: &str,
    ) -> StoreResult<Option<WorkerAccount>> {
        let sql =
            format!("SELECT {WORKER_ACCOUNT_COLUMNS} FROM worker_accounts WHERE client_id = $1");
        sqlx::query(&sql)
            .bind(client_id)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(worker_account_from_row)
            .transpose()
    }

    async fn worker_accounts(&self) -> StoreResult<Vec<WorkerAccount>> {
        let sql = format!("SELECT {WORKER_ACCOUNT_COLUMNS} FROM worker_accounts ORDER BY name");
        sqlx::query(&sql)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(worker_account_from_row)
            .collect()
    }

    async fn set_worker_disabled(
        &self,
        name: &str,
        disabled: bool,
    ) -> StoreResult<Option<WorkerAccount>> {
        let sql = format!(
            "UPDATE worker_accounts SET disabled = $1,
                 token_generation = token_generation + CASE WHEN $1 THEN 1 ELSE 0 END
             WHERE name = $2 RETURNING {WORKER_ACCOUNT_COLUMNS}"
        );
        sqlx::query(&sql)
            .bind(disabled)
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(worker_account_from_row)
            .transpose()
    }

    async fn set_worker_secret(
        &self,
        name: &str,
        secret_hash: &str,
    ) -> StoreResult<Option<WorkerAccount>> {
        let sql = format!(
            "UPDATE worker_accounts SET secret_hash = $1,
                 token_generation = token_generation + 1
             WHERE name = $2 RETURNING {WORKER_ACCOUNT_COLUMNS}"
        );
        sqlx::query(&sql)
            .bind(secret_hash)
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(worker_account_from_row)
            .transpose()
    }

    async fn touch_worker_account(&self, id: uuid::Uuid, now: UnixMillis) -> StoreResult<()> {
        sqlx::query("UPDATE worker_accounts SET last_seen_at = $1 WHERE id = $2")
            .bind(now)
            .bind(id.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn record_presence(
        &self,
        account: uuid::Uuid,
        process: &str,
        engines: &[Presence],
        now: UnixMillis,
        limits: PresenceLimits,
    ) -> StoreResult<bool> {
        let account = account.to_string();
        let mut tx = self.pool.begin().await?;
        // One account's reports serialise: the count below cannot go stale before the insert.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 7))")
            .bind(&account)
            .execute(&mut *tx)
            .await?;
        let others: i64 = sqlx::query_scalar(
            "SELECT COUNT(DISTINCT process) FROM worker_presence
             WHERE account_id = $1 AND process <> $2 AND seen_at >= $3",
        )
        .bind(&account)
        .bind(process)
        .bind(limits.since)
        .fetch_one(&mut *tx)
        .await?;
        if u64::try_from(others).unwrap_or(0) >= limits.max_processes {
            return Ok(false);
        }
        sqlx::query("DELETE FROM worker_presence WHERE account_id = $1 AND process = $2")
            .bind(&account)
            .bind(process)
            .execute(&mut *tx)
            .await?;
        for presence in engines {
            sqlx::query(
                "INSERT INTO worker_presence (account_id, process, engine, capacity, seen_at)
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(&account)
            .bind(process)
            .bind(&presence.engine)
            .bind(i64::from(presence.capacity))
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query("DELETE FROM worker_presence WHERE seen_at < $1")
            .bind(limits.forget_before)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn remote_capacity(&self, since: UnixMillis) -> StoreResult<Vec<Presence>> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT p.engine, CAST(SUM(p.capacity) AS BIGINT)
             FROM worker_presence p JOIN worker_accounts a ON a.id = p.account_id
             WHERE a.disabled = FALSE AND p.seen_at >= $1
             GROUP BY p.engine ORDER BY p.engine",
        )
        .bind(since)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(engine, capacity)| Presence {
                engine,
                capacity: u32::try_from(capacity).unwrap_or(u32::MAX),
            })
            .collect())
    }
}
