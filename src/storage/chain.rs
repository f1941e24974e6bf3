//! The audit chain's links: the event that is chained, the genesis value and the hash of a record.
//! A leaf module (it uses nothing from `storage` or `audit`), so the store that appends records and
//! `audit::verify_chain` that checks them share one definition without depending on each other.

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::time::UnixMillis;

/// The `prev_hash` of the first audit record.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// An audit event before it is chained.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct NewAuditRecord {
    pub at: UnixMillis,
    pub request_id: Option<String>,
    pub actor_user_id: Option<String>,
    pub actor_tenant_id: Option<String>,
    /// The tenant the event concerns; tenant admins see their tenant's events.
    pub tenant_id: Option<String>,
    pub client_ip: Option<String>,
    pub user_agent: Option<String>,
    pub action: String,
    pub target: Option<String>,
    pub outcome: String,
    pub reason: Option<String>,
}

/// The hash of a record: SHA-256 over the previous hash and a canonical JSON array of every field.
pub fn chain_hash(seq: i64, prev_hash: &str, event: &NewAuditRecord) -> String {
    let canonical = serde_json::json!([
        seq,
        event.at,
        event.request_id,
        event.actor_user_id,
        event.actor_tenant_id,
        event.tenant_id,
        event.client_ip,
        event.user_agent,
        event.action,
        event.target,
        event.outcome,
        event.reason,
    ]);
    let mut hasher = Sha256::new();
    hasher.update(prev_hash.as_bytes());
    hasher.update(b"\n");
    hasher.update(canonical.to_string().as_bytes());
    hex::encode(hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Pinned values: stored chains must keep verifying, so the hash must never change.
    #[test]
    fn first_record_hash_is_pinned() {
        let event = NewAuditRecord {
            at: UnixMillis::from_millis(1_700_000_000_000),
            request_id: Some("req-1".into()),
            actor_user_id: Some("u-1".into()),
            actor_tenant_id: Some("t-1".into()),
            tenant_id: Some("t-1".into()),
            client_ip: Some("10.0.0.1".into()),
            user_agent: Some("curl/8".into()),
            action: "user.login".into(),
            target: Some("user:u-1".into()),
            outcome: "success".into(),
            reason: None,
        };
        assert_eq!(
            chain_hash(1, GENESIS_HASH, &event),
            "3615594e11d8be5872d1a98b4b8890a735a9967176d334927bceaba96d2e9d9a"
        );
    }

    #[test]
    fn hash_covers_seq_prev_hash_and_nulls() {
        let prev = "ab".repeat(32);
        let event = NewAuditRecord {
            at: UnixMillis::from_millis(5),
            action: "test.5".into(),
            outcome: "denied".into(),
            reason: Some("bad_password".into()),
            ..NewAuditRecord::default()
        };
        let hash = chain_hash(2, &prev, &event);
        assert_eq!(
            hash,
            "9ab8eef683c5809fa10b8913888ef97f7de5538663850f0fce6b7e536473edc8"
        );
        assert_ne!(hash, chain_hash(3, &prev, &event));
        assert_ne!(hash, chain_hash(2, GENESIS_HASH, &event));
    }
}
