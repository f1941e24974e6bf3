//! Refresh tokens, the record of issued access tokens, and revocations.

use async_trait::async_trait;

use super::StoreResult;
use crate::domain::{FamilyId, Jti, TenantId, UserId};
use crate::time::UnixMillis;

#[derive(Debug, Clone, PartialEq)]
pub struct RefreshTokenRecord {
    /// SHA-256 of the token, hex. The token itself is never stored.
    pub token_hash: String,
    pub family_id: FamilyId,
    pub user_id: UserId,
    pub tenant_id: TenantId,
    pub issued_at: UnixMillis,
    pub expires_at: UnixMillis,
    pub used_at: Option<UnixMillis>,
    pub revoked_at: Option<UnixMillis>,
    /// DPoP: the thumbprint of the key this token is bound to (RFC 9449); `None` for a bearer one.
    pub dpop_jkt: Option<String>,
}

/// An access token's id with its expiry: what a denylist entry needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenId {
    pub jti: Jti,
    pub expires_at: UnixMillis,
}

/// A revocation as stored, with when it happened (replicas poll by that).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedToken {
    pub jti: Jti,
    pub expires_at: UnixMillis,
    pub revoked_at: UnixMillis,
}

/// Token storage: refresh-token families, access-token records and revocations.
#[async_trait]
pub trait TokenStore: Send + Sync {
    async fn insert_refresh_token(&self, token: &RefreshTokenRecord) -> StoreResult<()>;
    async fn refresh_token(&self, token_hash: &str) -> StoreResult<Option<RefreshTokenRecord>>;
    /// Marks an unused, unrevoked token used. `false` means someone used it first.
    async fn mark_refresh_token_used(&self, token_hash: &str, now: UnixMillis)
        -> StoreResult<bool>;
    async fn revoke_refresh_family(
        &self,
        family_id: &FamilyId,
        now: UnixMillis,
    ) -> StoreResult<u64>;
    async fn revoke_user_refresh_tokens(&self, user: UserId, now: UnixMillis) -> StoreResult<u64>;
    /// True when any refresh token of the family was revoked.
    async fn family_revoked(&self, family_id: &FamilyId) -> StoreResult<bool>;

    async fn insert_access_token(
        &self,
        token: &TokenId,
        user: UserId,
        family_id: &FamilyId,
    ) -> StoreResult<()>;
    /// Unexpired access tokens issued in a refresh family.
    async fn family_access_tokens(
        &self,
        family_id: &FamilyId,
        now: UnixMillis,
    ) -> StoreResult<Vec<TokenId>>;
    /// Unexpired access tokens of a user.
    async fn user_access_tokens(&self, user: UserId, now: UnixMillis) -> StoreResult<Vec<TokenId>>;
    /// The refresh family an access token was issued in.
    async fn access_token_family(&self, jti: &Jti) -> StoreResult<Option<FamilyId>>;

    async fn insert_revoked_token(&self, token: &RevokedToken) -> StoreResult<()>;
    /// Unexpired revocations made at or after `since` (ms).
    async fn revoked_tokens_since(
        &self,
        since: UnixMillis,
        now: UnixMillis,
    ) -> StoreResult<Vec<RevokedToken>>;
    /// Drops expired tokens and revocations.
    async fn purge_expired(&self, now: UnixMillis) -> StoreResult<()>;
}
