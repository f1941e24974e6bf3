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
    /// Worker tokens carry the generation they were issued in, and only the current one is
    /// honoured: disabling the account or replacing its secret increments it, so re-enabling the
    /// account does not revive old tokens.
    pub token_generation: i64,
}

/// The bounds of `record_presence`.
#[derive(Debug, Clone, Copy)]
pub struct PresenceLimits {
    pub since: UnixMillis,
    pub max_processes: u64,
    pub forget_before: UnixMillis,
}

/// What one `sonicgw worker` process said it can run: `capacity` jobs of `engine` at once.
#[derive(Debug, Clone, PartialEq)]
pub struct Presence {
    pub engine: String,
    pub capacity: u32,
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
    /// Disables or enables the named account; disabling also starts a new token generation.
    /// `None` when there is none.
    async fn set_worker_disabled(
        &self,
        name: &str,
        disabled: bool,
    ) -> StoreResult<Option<WorkerAccount>>;
    /// Replaces the named account's secret and starts a new token generation.
    async fn set_worker_secret(
        &self,
        name: &str,
        secret_hash: &str,
    ) -> StoreResult<Option<WorkerAccount>>;
    async fn touch_worker_account(&self, id: uuid::Uuid, now: UnixMillis) -> StoreResult<()>;
    /// Records what a worker `process` of `account` can run now, replacing its earlier report,
    /// unless `limits.max_processes` other processes of the account reported since `limits.since`
    /// (checked and written atomically: `false`, nothing written); forgets reports older than
    /// `limits.forget_before`.
    async fn record_presence(
        &self,
        account: uuid::Uuid,
        process: &str,
        engines: &[Presence],
        now: UnixMillis,
        limits: PresenceLimits,
    ) -> StoreResult<bool>;
    /// The capacity per engine that enabled accounts' processes reported since `since`.
    async fn remote_capacity(&self, since: UnixMillis) -> StoreResult<Vec<Presence>>;
}
