//! Service accounts of remote workers: OAuth 2.0 clients that may only run jobs.

use async_trait::async_trait;

use super::StoreResult;
use crate::time::UnixMillis;

/// A remote worker's service account.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerAccount {
    pub id: uuid::Uuid,
    pub name: String,
    pub client_id: String,
    /// The Argon2id PHC string of the client secret.
    pub secret_hash: String,
    pub disabled: bool,
    pub created_at: UnixMillis,
    pub last_seen_at: Option<UnixMillis>,
}

/// Storage of worker service accounts.
#[async_trait]
pub trait WorkerAccountStore: Send + Sync {
    /// Stores a new account; `StoreError::Conflict` when the name is taken.
    async fn insert_worker_account(&self, account: &WorkerAccount) -> StoreResult<()>;
    async fn worker_account(&self, id: uuid::Uuid) -> StoreResult<Option<WorkerAccount>>;
    async fn worker_account_by_client_id(
        &self,
        client_id: &str,
    ) -> StoreResult<Option<WorkerAccount>>;
    async fn worker_accounts(&self) -> StoreResult<Vec<WorkerAccount>>;
    /// Disables or enables the named account; `None` when there is none.
    async fn set_worker_disabled(
        &self,
        name: &str,
        disabled: bool,
    ) -> StoreResult<Option<WorkerAccount>>;
    async fn touch_worker_account(&self, id: uuid::Uuid, now: UnixMillis) -> StoreResult<()>;
}
