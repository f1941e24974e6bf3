//! Worker service accounts in PostgreSQL.

use async_trait::async_trait;

use super::PgStore;
use crate::storage::shared::{worker_account_from_row, WORKER_ACCOUNT_COLUMNS};
use crate::storage::workers::{WorkerAccount, WorkerAccountStore};
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
            "UPDATE worker_accounts SET disabled = $1 WHERE name = $2 RETURNING {WORKER_ACCOUNT_COLUMNS}"
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

    async fn touch_worker_account(&self, id: uuid::Uuid, now: UnixMillis) -> StoreResult<()> {
        sqlx::query("UPDATE worker_accounts SET last_seen_at = $1 WHERE id = $2")
            .bind(now)
            .bind(id.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
