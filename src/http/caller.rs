//! Who is calling. `Caller` is the only way a handler learns the user, and extracting it verifies the
//! bearer token completely, so a handler that takes a `Caller` cannot run on a bad token. `Admin` and
//! `PlatformAdmin` add the role check; `scope()` gives the tenant scope every query needs. `WorkerCaller`
//! is the remote workers' counterpart: a worker token passes only it, and a user token never does.
//!
//! Extracting a `Caller` also takes one request from the user's and the tenant's rate-limit buckets
//! (`ratelimit`), so no route that serves a user can forget the limit; `WorkerCaller` is not limited by
//! user plans.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts, MatchedPath};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue};

use super::error::ApiError;
use super::middleware::{RateLimitSlot, RequestId};
use super::state::AppState;
use crate::audit::{AuditAction, AuditContext, AuditEvent, Outcome};
use crate::auth::tokens::{AccessClaims, TokenRejection};
use crate::domain::{PlanName, Role, TenantId, UserId};
use crate::storage::TenantScope;

/// Where a request came from: for audit records and login throttling.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    pub request_id: Option<Arc<str>>,
    pub ip: Option<IpAddr>,
    /// Kept as the header value (cheap to clone); turned into text only when audited.
    pub user_agent: Option<HeaderValue>,
}

impl ClientInfo {
    pub fn audit_context(&self) -> AuditContext {
        AuditContext {
            request_id: self.request_id.as_deref().map(str::to_owned),
            actor_user_id: None,
            actor_tenant_id: None,
            client_ip: self.ip.map(|ip| ip.to_string()),
            user_agent: self
                .user_agent
                .as_ref()
                .and_then(|v| v.to_str().ok())
                .map(|s| s.chars().take(256).collect()),
        }
    }
}

/// The client's address: the peer, or with a trusted proxy in front, the nearest untrusted address in
/// `X-Forwarded-For`.
pub fn client_ip(peer: Option<IpAddr>, headers: &HeaderMap, trusted: &[IpAddr]) -> Option<IpAddr> {
    let peer = peer?;
    if !trusted.contains(&peer) {
        return Some(peer);
    }
    let forwarded = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|s| s.trim().parse::<IpAddr>().ok())
        .collect::<Vec<_>>();
    forwarded
        .iter()
        .rev()
        .find(|ip| !trusted.contains(ip))
        .copied()
        .or(Some(peer))
}

impl FromRequestParts<AppState> for ClientInfo {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        Ok(ClientInfo {
            request_id: parts
                .extensions
                .get::<RequestId>()
                .map(|r| Arc::clone(&r.0)),
            ip: client_ip(peer, &parts.headers, &state.config.trusted_proxies),
            user_agent: parts.headers.get(header::USER_AGENT).cloned(),
        })
    }
}

/// The user a request was authenticated as, left in the request by `Caller` for extractors of the body
/// (which run after it and cannot take it themselves).
#[derive(Debug, Clone, Copy)]
pub struct Uploader(pub UserId);

/// An authenticated caller: a verified, unrevoked access token.
#[derive(Debug, Clone)]
pub struct Caller {
    pub user_id: UserId,
    pub tenant_id: TenantId,
    pub role: Role,
    pub plan: PlanName,
    pub claims: Arc<AccessClaims>,
    pub client: ClientInfo,
}

impl Caller {
    /// The tenants this caller's queries may see: all for a platform admin, else their own.
    pub fn scope(&self) -> TenantScope {
        if self.role == Role::PlatformAdmin {
            TenantScope::platform_admin()
        } else {
            TenantScope::tenant(self.tenant_id)
        }
    }

    /// The jobs this caller may see: their tenant's for admins (all for a platform admin), else their own.
    pub fn job_scope(&self) -> crate::storage::jobs::JobScope {
        crate::storage::jobs::JobScope {
            tenant: self.scope(),
            user: (!self.role.is_admin()).then_some(self.user_id),
        }
    }

    /// This caller as the actor of an account change.
    pub fn actor(&self) -> crate::accounts::Actor {
        crate::accounts::Actor::User {
            id: self.user_id,
            tenant: self.tenant_id,
            role: self.role,
        }
    }

    pub fn audit_context(&self) -> AuditContext {
        self.client
            .audit_context()
            .with_actor(self.user_id, self.tenant_id)
    }
}

/// How a request presents its access token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    /// `Authorization: Bearer` (RFC 6750).
    Bearer,
    /// `Authorization: DPoP` with a `DPoP` proof header (RFC 9449).
    Dpop,
}

/// The access token of a request and its scheme, if there is exactly one well-formed one.
fn access_token(headers: &HeaderMap) -> Result<(Scheme, &str), TokenRejection> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let value = values.next().ok_or(TokenRejection::Missing)?;
    if values.next().is_some() {
        return Err(TokenRejection::Malformed);
    }
    let value = value.to_str().map_err(|_| TokenRejection::Malformed)?;
    let (scheme, token) = value.split_once(' ').ok_or(TokenRejection::Malformed)?;
    let scheme = if scheme.eq_ignore_ascii_case("bearer") {
        Scheme::Bearer
    } else if scheme.eq_ignore_ascii_case("dpop") {
        Scheme::Dpop
    } else {
        return Err(TokenRejection::Missing);
    };
    let token = token.trim();
    if token.is_empty() {
        return Err(TokenRejection::Malformed);
    }
    Ok((scheme, token))
}

/// Verifies a user's access token as the request presents it: the token itself, then its binding.
/// A DPoP-bound token passes only as `Authorization: DPoP` with a fresh proof of its key for this
/// request; an unbound one only as a bearer token.
async fn verified_claims(
    parts: &Parts,
    state: &AppState,
) -> Result<Arc<AccessClaims>, TokenRejection> {
    let (scheme, token) = access_token(&parts.headers)?;
    let claims = state.tokens.verify(token).await?;
    match (scheme, &claims.cnf) {
        (Scheme::Bearer, None) => Ok(claims),
        (Scheme::Bearer, Some(_)) => Err(TokenRejection::DpopBound),
        (Scheme::Dpop, None) => Err(TokenRejection::NotDpopBound),
        (Scheme::Dpop, Some(bound)) => {
            let https = crate::http::origin::over_https(state, &parts.extensions, &parts.headers);
            let proof = crate::http::dpop::request_proof(
                state,
                &parts.method,
                parts.uri.path(),
                &parts.headers,
                https,
                Some(token),
            )
            .await
            .map_err(TokenRejection::InvalidDpopProof)?;
            match proof {
                Some(jkt) if jkt == bound.jkt => Ok(claims),
                Some(_) => Err(TokenRejection::InvalidDpopProof(
                    crate::auth::dpop::ProofRejection::WrongKey,
                )),
                None => Err(TokenRejection::InvalidDpopProof(
                    crate::auth::dpop::ProofRejection::NotOne,
                )),
            }
        }
    }
}

/// The bearer token of a request (RFC 6750 2.1), if there is exactly one well-formed one.
fn bearer_token(headers: &HeaderMap) -> Result<&str, TokenRejection> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let value = values.next().ok_or(TokenRejection::Missing)?;
    if values.next().is_some() {
        return Err(TokenRejection::Malformed);
    }
    let value = value.to_str().map_err(|_| TokenRejection::Malformed)?;
    let (scheme, token) = value.split_once(' ').ok_or(TokenRejection::Malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(TokenRejection::Missing);
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(TokenRejection::Malformed);
    }
    Ok(token)
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let claims = match verified_claims(parts, state).await {
            Ok(claims) => claims,
            Err(reason) => {
                crate::metrics::auth_failure(reason.code());
                tracing::info!(reason = reason.code(), "access token refused");
                return Err(ApiError::Unauthorized(reason));
            }
        };
        let decision = state
            .rate_limiter
            .check(
                claims.tid,
                claims.sub,
                state.plans.limits(&claims.plan).request_quota(),
            )
            .await;
        if let Some(slot) = parts.extensions.get::<RateLimitSlot>() {
            let _ = slot.0.set(decision);
        }
        if !decision.allowed {
            crate::metrics::rate_limited(decision.bucket.as_str());
            return Err(ApiError::RateLimited(decision));
        }
        let Ok(client) = ClientInfo::from_request_parts(parts, state).await;
        // For the body extractors that run after this one (the upload counts its sender's uploads).
        parts.extensions.insert(Uploader(claims.sub));
        let caller = Caller {
            user_id: claims.sub,
            tenant_id: claims.tid,
            role: claims.role,
            plan: claims.plan.clone(),
            claims,
            client,
        };
        Ok(caller)
    }
}

/// A remote worker: a verified, unrevoked worker token whose service account exists and is enabled
/// now (checked on every call, so disabling an account stops its worker at its next call). The
/// only extractor of `/v1/worker/*`, and worker tokens pass no other.
#[derive(Debug, Clone)]
pub struct WorkerCaller {
    pub account_id: uuid::Uuid,
    /// The service account's name (`admin create-worker NAME`).
    pub account_name: String,
    pub claims: Arc<crate::auth::tokens::WorkerClaims>,
    pub client: ClientInfo,
}

impl FromRequestParts<AppState> for WorkerCaller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let verified = match bearer_token(&parts.headers) {
            Ok(token) => state.tokens.verify_worker(token).await,
            Err(reason) => Err(reason),
        };
        let claims = match verified {
            Ok(claims) => claims,
            Err(reason) => {
                crate::metrics::auth_failure(reason.code());
                tracing::info!(reason = reason.code(), "worker token refused");
                return Err(ApiError::Unauthorized(reason));
            }
        };
        let account = state
            .store
            .worker_account(claims.sub)
            .await
            .map_err(|e| ApiError::Internal(e.into()))?;
        let Some(account) = account.filter(|a| !a.disabled) else {
            crate::metrics::auth_failure("client_disabled");
            tracing::info!(account = %claims.sub, "worker token of a disabled or deleted account refused");
            return Err(ApiError::Unauthorized(TokenRejection::Revoked));
        };
        if claims.gen != account.token_generation {
            crate::metrics::auth_failure("token_superseded");
            tracing::info!(account = %claims.sub, "worker token issued before the account was disabled or its secret rotated refused");
            return Err(ApiError::Unauthorized(TokenRejection::Revoked));
        }
        let Ok(client) = ClientInfo::from_request_parts(parts, state).await;
        Ok(WorkerCaller {
            account_id: claims.sub,
            account_name: account.name,
            claims: Arc::new(claims),
            client,
        })
    }
}

/// A caller with at least the `admin` role.
#[derive(Debug, Clone)]
pub struct Admin(pub Caller);

/// A caller with the `platform_admin` role.
#[derive(Debug, Clone)]
pub struct PlatformAdmin(pub Caller);

async fn require_role(
    parts: &mut Parts,
    state: &AppState,
    minimum: Role,
) -> Result<Caller, ApiError> {
    let caller = Caller::from_request_parts(parts, state).await?;
    if caller.role >= minimum {
        return Ok(caller);
    }
    // The route template, never the raw path (it is the caller's text, up to the URI limit); and a
    // refusal repeated by the same user on the same route is recorded once a minute.
    let route = parts
        .extensions
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str);
    let target = format!("{} {route}", crate::metrics::method_label(&parts.method));
    if state
        .denials
        .first_in_window(&format!("{}/{target}", caller.user_id))
    {
        state
            .auditor
            .record(
                &caller.audit_context(),
                AuditEvent::new(AuditAction::AccessDenied, Outcome::Denied)
                    .target(&target)
                    .reason("role"),
            )
            .await;
    }
    Err(ApiError::forbidden(format!(
        "this action needs the {minimum} role"
    )))
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        require_role(parts, state, Role::Admin).await.map(Admin)
    }
}

impl FromRequestParts<AppState> for PlatformAdmin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        require_role(parts, state, Role::PlatformAdmin)
            .await
            .map(PlatformAdmin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", "203.0.113.9, 10.0.0.2".parse().unwrap());
        let proxy: IpAddr = "10.0.0.2".parse().unwrap();
        let stranger: IpAddr = "198.51.100.1".parse().unwrap();
        assert_eq!(
            client_ip(Some(stranger), &headers, &[proxy]),
            Some(stranger)
        );
        assert_eq!(
            client_ip(Some(proxy), &headers, &[proxy]),
            Some("203.0.113.9".parse().unwrap())
        );
    }

    #[test]
    fn bearer_scheme_is_case_insensitive_and_other_schemes_are_missing() {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, "bEaReR abc".parse().unwrap());
        assert_eq!(bearer_token(&headers), Ok("abc"));
        headers.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer_token(&headers), Err(TokenRejection::Missing));
        // A DPoP token is no bearer token: worker routes refuse the scheme.
        headers.insert(header::AUTHORIZATION, "DPoP abc".parse().unwrap());
        assert_eq!(bearer_token(&headers), Err(TokenRejection::Missing));
        assert_eq!(access_token(&headers), Ok((Scheme::Dpop, "abc")));
    }
}
