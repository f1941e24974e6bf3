//! Anchors for the audit chain. The chain shows any edit, and any deletion but of the newest
//! records: delete the tail and what is left is a consistent, shorter chain. A checkpoint is the
//! head's sequence number and hash signed with the token signing key; one is made periodically
//! (when the head moved) and on `sonicgw audit checkpoint`, stored, logged (sequence and hash, for
//! log shipping to keep elsewhere) and printed for export. Verification then checks that the chain
//! still reaches the latest checkpoint with the same hash there, against the stored checkpoint or
//! one exported earlier.

use serde::{Deserialize, Serialize};

use super::ChainReport;
use crate::auth::tokens::Tokens;
use crate::storage::audit::StoredCheckpoint;
use crate::storage::AuditStore;
use crate::time::now_ms;

/// The JWS `typ` of a checkpoint: it can never pass as an access token, nor a token as it.
pub const DOCUMENT_TYPE: &str = "audit-checkpoint+jwt";

/// What a checkpoint signs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointClaims {
    pub iss: String,
    /// The head's sequence number: also how many records the chain had.
    pub seq: i64,
    /// The head's hash.
    pub hash: String,
    /// Unix seconds.
    pub iat: i64,
}

/// How the chain stands against a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct CheckpointStatus {
    /// The checkpoint's sequence number.
    pub seq: i64,
    /// True when its signature holds and the chain reaches it with the same hash.
    pub valid: bool,
    /// Why not: `signature_invalid`, `checkpoint_altered` (the stored row differs from what was
    /// signed), `records_missing` (the chain ends before the checkpoint: newest records were
    /// deleted) or `record_altered` (the record at the checkpoint has another hash).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Signs a checkpoint of the current head unless the latest one already covers it; the checkpoint
/// now in force (`None` while the chain is empty).
pub async fn create(
    store: &dyn AuditStore,
    tokens: &Tokens,
    issuer: &str,
) -> anyhow::Result<Option<StoredCheckpoint>> {
    let Some((seq, hash)) = store.audit_head().await? else {
        return Ok(None);
    };
    if let Some(latest) = store.latest_audit_checkpoint().await? {
        if latest.seq >= seq {
            return Ok(Some(latest));
        }
    }
    let now = now_ms();
    let claims = CheckpointClaims {
        iss: issuer.to_owned(),
        seq,
        hash: hash.clone(),
        iat: now.as_secs(),
    };
    let checkpoint = StoredCheckpoint {
        seq,
        hash,
        created_at: now,
        document: tokens.sign_document(DOCUMENT_TYPE, &claims)?,
    };
    store.insert_audit_checkpoint(&checkpoint).await?;
    tracing::info!(seq, hash = %checkpoint.hash, "audit checkpoint signed");
    Ok(Some(checkpoint))
}

/// Checks `document` (an exported checkpoint), or else the latest stored one, against the chain
/// `report` describes; `None` when there is no checkpoint to check.
pub async fn check(
    store: &dyn AuditStore,
    tokens: &Tokens,
    report: &ChainReport,
    document: Option<&str>,
) -> anyhow::Result<Option<CheckpointStatus>> {
    let stored = match document {
        Some(_) => None,
        None => match store.latest_audit_checkpoint().await? {
            Some(stored) => Some(stored),
            None => return Ok(None),
        },
    };
    let document = document.unwrap_or_else(|| stored.as_ref().map_or("", |s| s.document.as_str()));
    let claims: CheckpointClaims = match tokens.verify_document(DOCUMENT_TYPE, document) {
        Ok(claims) => claims,
        Err(err) => {
            tracing::warn!(error = %err, "an audit checkpoint's signature does not hold");
            return Ok(Some(CheckpointStatus {
                seq: stored.as_ref().map_or(0, |s| s.seq),
                valid: false,
                reason: Some("signature_invalid".into()),
            }));
        }
    };
    let status = |reason: Option<&str>| CheckpointStatus {
        seq: claims.seq,
        valid: reason.is_none(),
        reason: reason.map(str::to_owned),
    };
    if let Some(stored) = &stored {
        if stored.seq != claims.seq || stored.hash != claims.hash {
            return Ok(Some(status(Some("checkpoint_altered"))));
        }
    }
    // Only a chain that holds up to its end can vouch for the record at the checkpoint.
    if report.valid && report.records < claims.seq {
        return Ok(Some(status(Some("records_missing"))));
    }
    let at_checkpoint = store.audit_chain_page(claims.seq - 1, 1).await?;
    match at_checkpoint.first() {
        Some(record) if record.seq == claims.seq && record.hash == claims.hash => {
            Ok(Some(status(None)))
        }
        Some(record) if record.seq == claims.seq => Ok(Some(status(Some("record_altered")))),
        _ => Ok(Some(status(Some("records_missing")))),
    }
}
