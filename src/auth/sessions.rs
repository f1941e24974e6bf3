//! Sign-in sessions: the password and refresh-token grants, rotation with reuse detection
//! (RFC 9700 4.14.2), logout and revocation. Each login starts a refresh-token *family*; every
//! access token records the family it was issued in, so revoking a family revokes its access tokens.

use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};

use super::password::Passwords;
use super::throttle::{Attempt, LoginThrottle};
use super::tokens::{AccessClaims, Tokens};
use crate::audit::{AuditAction, AuditContext, AuditEvent, Auditor, Outcome, Repeats};
use crate::domain::{FamilyId, PlanName, TenantName, UserId, Username};
use crate::storage::{RefreshTokenRecord, Store, TenantScope, TokenId, UserRecord};
use crate::time::{now_ms, now_s, UnixMillis};

/// Most same-named users (in different tenants) a login looks up.
const MAX_LOGIN_CANDIDATES: usize = 8;

/// What a successful grant returns. `Debug` hides both tokens: they are bearer credentials.
pub struct TokenPair {
    pub access_token: String,
    pub expires_in: i64,
    pub refresh_token: String,
    pub scope: String,
    /// The access token is DPoP-bound (`token_type` `DPoP`), not a bearer token.
    pub dpop_bound: bool,
}

impl std::fmt::Debug for TokenPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use crate::config::Redacted;
        f.debug_struct("TokenPair")
            .field("access_token", &Redacted(&self.access_token))
            .field("expires_in", &self.expires_in)
            .field("refresh_token", &Redacted(&self.refresh_token))
            .field("scope", &self.scope)
            .field("dpop_bound", &self.dpop_bound)
            .finish()
    }
}

/// Why a grant failed, in RFC 6749 5.2 terms.
#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    /// Wrong credentials, or an unknown, used, revoked or expired refresh token. Deliberately vague.
    #[error("invalid_grant")]
    InvalidGrant,
    /// Client authentication failed (`client_credentials`): unknown client, wrong secret or disabled.
    #[error("invalid_client")]
    InvalidClient,
    #[error("invalid_request: {0}")]
    InvalidRequest(&'static str),
    /// DPoP: the refresh token is bound to a key and the request's proof is missing or of another key.
    #[error("invalid_dpop_proof")]
    DpopKeyMismatch,
    /// Too many failed logins; retry after the duration.
    #[error("too many failed logins")]
    Throttled(Duration),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<crate::storage::StoreError> for GrantError {
    fn from(err: crate::storage::StoreError) -> Self {
        GrantError::Internal(err.into())
    }
}

/// Issues, rotates and revokes sessions.
pub struct Sessions {
    store: Arc<dyn Store>,
    tokens: Arc<Tokens>,
    passwords: Passwords,
    throttle: LoginThrottle,
    auditor: Auditor,
    refresh_ttl: Duration,
    /// Refused refreshes already audited (per family and reason, for an hour).
    refusals: Repeats,
}

/// SHA-256 of a refresh token, hex: the only form in which refresh tokens are stored.
pub fn refresh_token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

impl Sessions {
    pub fn new(
        store: Arc<dyn Store>,
        tokens: Arc<Tokens>,
        passwords: Passwords,
        throttle: LoginThrottle,
        auditor: Auditor,
        refresh_ttl_s: i64,
    ) -> Self {
        Self {
            store,
            tokens,
            passwords,
            throttle,
            auditor,
            refresh_ttl: Duration::from_secs(u64::try_from(refresh_ttl_s).unwrap_or(0)),
            refusals: Repeats::new(10_000, Duration::from_secs(3600)),
        }
    }

    pub fn throttle(&self) -> &LoginThrottle {
        &self.throttle
    }

    /// `grant_type=password`. Unknown user, wrong password and disabled user fail identically, after the
    /// same Argon2 work.
    ///
    /// The attempt is reserved in the throttle before anything is looked up, so concurrent guesses count
    /// against the limit while they are being verified (an attempt past the limit waits for one in flight
    /// to settle), and every answer that depends on the username (including "this username is in
    /// several tenants") is throttled too.
    pub async fn password_grant(
        &self,
        context: &AuditContext,
        username: &str,
        password: &str,
        tenant: Option<&str>,
        dpop_jkt: Option<String>,
    ) -> Result<TokenPair, GrantError> {
        let address = context.client_ip.clone().unwrap_or_default();
        // Keyed on the username alone: spelling the tenant differently, or leaving it out, must not buy
        // more attempts at the same account.
        let account = username.trim().to_ascii_lowercase();
        let attempt = match self.throttle.begin(&account, &address).await {
            Ok(attempt) => attempt,
            Err(retry_after) => {
                // Counted, not audited: refusing costs nothing, so an unauthenticated flood of refused
                // logins must not turn into audit rows written under the audit lock.
                crate::metrics::login_throttled();
                return Err(GrantError::Throttled(retry_after));
            }
        };
        let (candidates, shared_name) = self.login_candidates(username, tenant).await?;
        if candidates.len() > 1 {
            return self
                .ambiguous_login(attempt, context, &candidates, password)
                .await;
        }
        let user = candidates.into_iter().next();
        let verified = self
            .passwords
            .verify(user.as_ref().map(|u| u.password_hash.as_str()), password)
            .await?;
        let Some(user) = user else {
            return Err(self
                .login_failed(attempt, context, None, "unknown_user")
                .await);
        };
        if !verified {
            return Err(self
                .login_failed(attempt, context, Some(&user), "wrong_password")
                .await);
        }
        if user.disabled {
            return Err(self
                .login_failed(attempt, context, Some(&user), "user_disabled")
                .await);
        }
        // The throttle counts failures by username alone; when other tenants have the name, this
        // success must not wipe failures that were guesses at their accounts.
        if shared_name {
            attempt.succeeded_keeping_failures();
        } else {
            attempt.succeeded();
        }
        let family = FamilyId::generate();
        // A proof binds both tokens to the client's key.
        let pair = self
            .issue_pair(&user, &family, dpop_jkt.clone(), dpop_jkt)
            .await?;
        self.auditor
            .record(
                &context.clone().with_actor(user.id, user.tenant_id),
                AuditEvent::new(AuditAction::AuthLogin, Outcome::Success).target(user.id),
            )
            .await;
        Ok(pair)
    }

    /// A login without a tenant for a username that several tenants have. The password is checked against
    /// each of them: when it matches none, the answer is that of any failed login, so the ambiguity (and
    /// thus the username) is only disclosed to someone who knows a password. When it matches, the tenant
    /// is required even if only one user matches, so that the answer never depends on other tenants'
    /// passwords; such an attempt counts as neither failure nor success.
    async fn ambiguous_login(
        &self,
        attempt: Attempt<'_>,
        context: &AuditContext,
        candidates: &[UserRecord],
        password: &str,
    ) -> Result<TokenPair, GrantError> {
        // The same work and the same answer as any failed login, whatever the password: one Argon2
        // check (checking each namesake would make the time tell how many tenants have the name), then
        // `invalid_grant`, whose description says to name the tenant. It counts as a failure: no one
        // was authenticated.
        let first = candidates.first().map(|c| c.password_hash.as_str());
        self.passwords.verify(first, password).await?;
        Err(self
            .login_failed(attempt, context, None, "ambiguous_username")
            .await)
    }

    /// Settles a failed login: throttle, metric and audit record. The target is the user id when one user
    /// is known, never the submitted text: it may be a password typed into the wrong box.
    async fn login_failed(
        &self,
        attempt: Attempt<'_>,
        context: &AuditContext,
        user: Option<&UserRecord>,
        reason: &'static str,
    ) -> GrantError {
        attempt.failed();
        crate::metrics::auth_failure(reason);
        let mut event_context = context.clone();
        let mut event = AuditEvent::new(AuditAction::AuthLogin, Outcome::Failure).reason(reason);
        if let Some(user) = user {
            event_context = event_context.with_actor(user.id, user.tenant_id);
            event = event.target(user.id);
        }
        self.auditor.record(&event_context, event).await;
        GrantError::InvalidGrant
    }

    /// The users a login may be for: those with the username, in the given tenant if any; at most
    /// [`MAX_LOGIN_CANDIDATES`], in id order. Unparseable names and unknown tenants have none. The
    /// flag says whether the username exists in more than one tenant.
    async fn login_candidates(
        &self,
        username: &str,
        tenant: Option<&str>,
    ) -> Result<(Vec<UserRecord>, bool), GrantError> {
        let Ok(username) = Username::parse(username) else {
            return Ok((Vec::new(), false));
        };
        let mut candidates = self.store.users_by_username(&username).await?;
        let shared_name = candidates.len() > 1;
        if let Some(tenant) = tenant {
            let Ok(name) = TenantName::parse(tenant) else {
                return Ok((Vec::new(), shared_name));
            };
            let Some(tenant) = self.store.tenant_by_name(&name).await? else {
                return Ok((Vec::new(), shared_name));
            };
            candidates.retain(|u| u.tenant_id == tenant.id);
        }
        candidates.sort_by_key(|u| u.id);
        candidates.truncate(MAX_LOGIN_CANDIDATES);
        Ok((candidates, shared_name))
    }

    /// `grant_type=refresh_token`: rotates the token. A token presented twice revokes its whole family.
    /// A DPoP-bound refresh token is taken only with a proof of its key (`dpop_jkt`, the thumbprint of
    /// the request's checked proof), checked before the token is spent, so a thief without the key
    /// cannot even use it up. The new access token is bound to the proof's key, if any; the new refresh
    /// token keeps its predecessor's binding.
    pub async fn refresh_grant(
        &self,
        context: &AuditContext,
        refresh_token: &str,
        dpop_jkt: Option<String>,
    ) -> Result<TokenPair, GrantError> {
        let now = now_ms();
        let hash = refresh_token_hash(refresh_token);
        let Some(record) = self.store.refresh_token(&hash).await? else {
            crate::metrics::auth_failure("unknown_refresh_token");
            return Err(GrantError::InvalidGrant);
        };
        let context = context.clone().with_actor(record.user_id, record.tenant_id);
        let refused =
            |reason: &'static str| self.refresh_refused(&context, &record.family_id, reason);
        if record.revoked_at.is_some() {
            return Err(refused("refresh_token_revoked").await);
        }
        if record.expires_at <= now {
            return Err(refused("refresh_token_expired").await);
        }
        if record.dpop_jkt.is_some() && record.dpop_jkt != dpop_jkt {
            crate::metrics::auth_failure("refresh_token_dpop_key");
            return Err(GrantError::DpopKeyMismatch);
        }
        let first_use =
            record.used_at.is_none() && self.store.mark_refresh_token_used(&hash, now).await?;
        if !first_use {
            self.revoke_family(&record.family_id).await?;
            crate::metrics::auth_failure("refresh_token_reused");
            self.auditor
                .record(
                    &context,
                    AuditEvent::new(AuditAction::AuthRefreshReuseDetected, Outcome::Denied)
                        .target(&record.family_id)
                        .reason("family_revoked"),
                )
                .await;
            return Err(GrantError::InvalidGrant);
        }
        let user = self
            .store
            .user(TenantScope::by_trusted_id(), record.user_id)
            .await?;
        let Some(user) = user.filter(|u| !u.disabled) else {
            self.revoke_family(&record.family_id).await?;
            return Err(refused("user_unavailable").await);
        };
        let pair = self
            .issue_pair(&user, &record.family_id, dpop_jkt, record.dpop_jkt.clone())
            .await?;
        // A concurrent reuse may have revoked the family while the new pair was being issued; its sweep
        // can miss tokens inserted after it, so check again and take the new pair down with the family.
        if self.store.family_revoked(&record.family_id).await? {
            self.revoke_family(&record.family_id).await?;
            return Err(refused("family_revoked").await);
        }
        self.auditor
            .record(
                &context,
                AuditEvent::new(AuditAction::AuthRefresh, Outcome::Success)
                    .target(&record.family_id),
            )
            .await;
        Ok(pair)
    }

    async fn refresh_refused(
        &self,
        context: &AuditContext,
        family: &FamilyId,
        reason: &'static str,
    ) -> GrantError {
        crate::metrics::auth_failure(reason);
        // A dead refresh token presented in a loop is one event, not one row per request.
        if !self.refusals.first_in_window(&format!("{family}/{reason}")) {
            return GrantError::InvalidGrant;
        }
        self.auditor
            .record(
                context,
                AuditEvent::new(AuditAction::AuthRefresh, Outcome::Failure)
                    .target(family)
                    .reason(reason),
            )
            .await;
        GrantError::InvalidGrant
    }

    async fn issue_pair(
        &self,
        user: &UserRecord,
        family: &FamilyId,
        access_jkt: Option<String>,
        refresh_jkt: Option<String>,
    ) -> Result<TokenPair, GrantError> {
        let plan = self.effective_plan(user).await?;
        let dpop_bound = access_jkt.is_some();
        let issued = self
            .tokens
            .issue(user.id, user.tenant_id, user.role, plan, access_jkt)?;
        self.store
            .insert_access_token(
                &TokenId {
                    jti: issued.claims.jti.clone(),
                    expires_at: UnixMillis::from_secs(issued.claims.exp),
                },
                user.id,
                family,
            )
            .await?;
        let mut secret = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut secret);
        let refresh_token = URL_SAFE_NO_PAD.encode(secret);
        let now = now_ms();
        self.store
            .insert_refresh_token(&RefreshTokenRecord {
                token_hash: refresh_token_hash(&refresh_token),
                family_id: family.clone(),
                user_id: user.id,
                tenant_id: user.tenant_id,
                issued_at: now,
                expires_at: now + self.refresh_ttl,
                used_at: None,
                revoked_at: None,
                dpop_jkt: refresh_jkt,
            })
            .await?;
        Ok(TokenPair {
            access_token: issued.token,
            expires_in: issued.claims.exp - now_s(),
            refresh_token,
            scope: issued.claims.scope,
            dpop_bound,
        })
    }

    /// The user's own plan, else their tenant's.
    pub async fn effective_plan(&self, user: &UserRecord) -> Result<PlanName, GrantError> {
        if let Some(plan) = &user.plan {
            return Ok(plan.clone());
        }
        let tenant = self
            .store
            .tenant(TenantScope::by_trusted_id(), user.tenant_id)
            .await?
            .ok_or_else(|| anyhow::anyhow!("user {} has no tenant", user.id))?;
        Ok(tenant.plan)
    }

    /// Revokes every refresh token of a family and every access token issued in it.
    pub async fn revoke_family(&self, family: &FamilyId) -> anyhow::Result<()> {
        let now = now_ms();
        self.store.revoke_refresh_family(family, now).await?;
        for token in self.store.family_access_tokens(family, now).await? {
            self.tokens
                .revocations()
                .revoke(&token.jti, token.expires_at.as_secs())
                .await?;
        }
        Ok(())
    }

    /// `POST /v1/auth/logout`: the presented access token and its refresh family.
    pub async fn logout(
        &self,
        context: &AuditContext,
        claims: &AccessClaims,
    ) -> anyhow::Result<()> {
        self.tokens
            .revocations()
            .revoke(&claims.jti, claims.exp)
            .await?;
        if let Some(family) = self.store.access_token_family(&claims.jti).await? {
            self.revoke_family(&family).await?;
        }
        self.auditor
            .record(
                context,
                AuditEvent::new(AuditAction::AuthLogout, Outcome::Success).target(&claims.jti),
            )
            .await;
        Ok(())
    }

    /// RFC 7009: revokes a refresh token (with its family) or an access token. Unknown tokens are
    /// silently accepted, as the RFC requires.
    pub async fn revoke_token(
        &self,
        context: &AuditContext,
        token: &str,
        hint: Option<&str>,
    ) -> anyhow::Result<()> {
        let as_refresh = || async {
            let record = self.store.refresh_token(&refresh_token_hash(token)).await?;
            anyhow::Ok(record)
        };
        let as_access = || async { self.tokens.verify_signature_and_claims(token).await.ok() };
        let (refresh, access) = if hint == Some("access_token") {
            let access = as_access().await;
            let refresh = if access.is_none() {
                as_refresh().await?
            } else {
                None
            };
            (refresh, access)
        } else {
            let refresh = as_refresh().await?;
            let access = if refresh.is_none() {
                as_access().await
            } else {
                None
            };
            (refresh, access)
        };
        // Revoking what is already revoked changes nothing and is not recorded again.
        if let Some(record) = refresh.filter(|r| r.revoked_at.is_none()) {
            self.revoke_family(&record.family_id).await?;
            self.auditor
                .record(
                    &context.clone().with_actor(record.user_id, record.tenant_id),
                    AuditEvent::new(AuditAction::AuthRevoke, Outcome::Success)
                        .target(&record.family_id)
                        .reason("refresh_token"),
                )
                .await;
        } else if let Some(claims) =
            access.filter(|c| !self.tokens.revocations().is_revoked(&c.jti))
        {
            self.tokens
                .revocations()
                .revoke(&claims.jti, claims.exp)
                .await?;
            self.auditor
                .record(
                    &context.clone().with_actor(claims.sub, claims.tid),
                    AuditEvent::new(AuditAction::AuthRevoke, Outcome::Success)
                        .target(&claims.jti)
                        .reason("access_token"),
                )
                .await;
        }
        Ok(())
    }
}

/// Revokes every refresh and access token of a user. Shared by the API and the operator's CLI.
pub async fn revoke_all_user_tokens(
    store: &dyn Store,
    revocations: &super::revocation::Revocations,
    user: UserId,
) -> anyhow::Result<()> {
    let now = now_ms();
    store.revoke_user_refresh_tokens(user, now).await?;
    for token in store.user_access_tokens(user, now).await? {
        revocations
            .revoke(&token.jti, token.expires_at.as_secs())
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_pair_debug_hides_the_tokens() {
        let pair = TokenPair {
            access_token: "eyJ-access-token-value".to_owned(),
            expires_in: 1800,
            refresh_token: "refresh-token-value".to_owned(),
            scope: "videos:write".to_owned(),
            dpop_bound: false,
        };
        let text = format!("{pair:?}");
        assert!(!text.contains("access-token-value"), "{text}");
        assert!(!text.contains("refresh-token-value"), "{text}");
        assert!(text.contains("videos:write"), "{text}");
    }
}
