//! The tamper-evident audit log: each record carries the SHA-256 of its predecessor, so editing or
//! deleting a record breaks the chain at that point.

mod action;
pub mod checkpoint;
mod recorder;
mod repeats;

use serde::Serialize;

use crate::storage::chain::{chain_hash, GENESIS_HASH};
use crate::storage::{AuditStore, StoreResult};

pub use action::{AuditAction, UnknownAction};
pub use recorder::{AuditContext, AuditEvent, Auditor, Outcome};
pub use repeats::Repeats;

/// What `verify_chain` found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ChainReport {
    /// True when every link holds.
    pub valid: bool,
    /// Records checked.
    pub records: i64,
    /// The first broken link, if any.
    pub first_broken: Option<BrokenLink>,
    /// The chain against its latest signed checkpoint (or the one given): absent when there is none.
    /// `valid` is false when this is not valid either.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<checkpoint::CheckpointStatus>,
}

/// Verifies the chain, then the chain against `document` (an exported checkpoint) or the latest
/// stored checkpoint.
pub async fn verify_anchored(
    store: &dyn AuditStore,
    tokens: &crate::auth::tokens::Tokens,
    document: Option<&str>,
) -> anyhow::Result<ChainReport> {
    let mut report = verify_chain(store).await?;
    report.checkpoint = checkpoint::check(store, tokens, &report, document).await?;
    if report.checkpoint.as_ref().is_some_and(|c| !c.valid) {
        report.valid = false;
    }
    Ok(report)
}

/// Where and how the chain breaks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct BrokenLink {
    /// The sequence number at which the chain stops holding.
    pub seq: i64,
    /// `record_altered` (its contents no longer match its hash), `record_missing` (a gap in the sequence),
    /// or `link_broken` (its `prev_hash` does not match the record before it).
    pub reason: String,
}

/// Walks the whole chain in order and reports the first broken link.
pub async fn verify_chain(store: &dyn AuditStore) -> StoreResult<ChainReport> {
    const PAGE: i64 = 1000;
    let mut expected_seq = 1;
    let mut prev_hash = GENESIS_HASH.to_owned();
    let mut records = 0;
    loop {
        let page = store.audit_chain_page(expected_seq - 1, PAGE).await?;
        if page.is_empty() {
            return Ok(ChainReport {
                valid: true,
                records,
                first_broken: None,
                checkpoint: None,
            });
        }
        for record in &page {
            let broken = |reason: &str| ChainReport {
                valid: false,
                records,
                first_broken: Some(BrokenLink {
                    seq: if reason == "record_missing" {
                        expected_seq
                    } else {
                        record.seq
                    },
                    reason: reason.to_owned(),
                }),
                checkpoint: None,
            };
            if record.seq != expected_seq {
                return Ok(broken("record_missing"));
            }
            if record.prev_hash != prev_hash {
                return Ok(broken("link_broken"));
            }
            if chain_hash(record.seq, &record.prev_hash, &record.event) != record.hash {
                return Ok(broken("record_altered"));
            }
            records += 1;
            expected_seq += 1;
            prev_hash = record.hash.clone();
        }
    }
}
