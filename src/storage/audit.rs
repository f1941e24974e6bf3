//! The audit log as stored: appending to the hash chain and reading it back.

use async_trait::async_trait;
use serde::Serialize;

use super::chain::NewAuditRecord;
use super::{StoreResult, TenantScope};
use crate::time::UnixMillis;

/// A chained audit record.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditRecord {
    pub seq: i64,
    #[serde(flatten)]
    pub event: NewAuditRecord,
    pub prev_hash: String,
    pub hash: String,
}

/// Filters for reading the audit log, newest first.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub actor: Option<String>,
    pub action: Option<String>,
    pub outcome: Option<String>,
    pub since: Option<UnixMillis>,
    pub until: Option<UnixMillis>,
    /// Only records with `seq` below this (the cursor).
    pub before_seq: Option<i64>,
    pub limit: i64,
}

/// Audit log storage.
#[async_trait]
pub trait AuditStore: Send + Sync {
    /// Appends to the audit chain atomically: the new record links to the current head.
    async fn append_audit(&self, event: &NewAuditRecord) -> StoreResult<AuditRecord>;
    async fn query_audit(
        &self,
        scope: TenantScope,
        query: &AuditQuery,
    ) -> StoreResult<Vec<AuditRecord>>;
    /// Records in chain order, after `after_seq`, for verification.
    async fn audit_chain_page(&self, after_seq: i64, limit: i64) -> StoreResult<Vec<AuditRecord>>;
    /// The chain's head: its last record's sequence number and hash.
    async fn audit_head(&self) -> StoreResult<Option<(i64, String)>>;
    /// Stores a signed checkpoint of the head; a second one for the same `seq` is ignored.
    async fn insert_audit_checkpoint(&self, checkpoint: &StoredCheckpoint) -> StoreResult<()>;
    /// The checkpoint of the highest sequence number.
    async fn latest_audit_checkpoint(&self) -> StoreResult<Option<StoredCheckpoint>>;
}

/// A signed checkpoint of the audit chain as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredCheckpoint {
    pub seq: i64,
    pub hash: String,
    pub created_at: UnixMillis,
    /// The signed JWS.
    pub document: String,
}
