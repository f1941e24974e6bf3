//! Access tokens: issuing and verifying JWTs (RFC 9068 profile). Verification is the only way to get
//! `AccessClaims` from a request, and `http::caller` is the only place it is called from.
//!
//! Where the keys come from is the one thing that varies ([`KeySource`]): this process's key directory
//! (it issues and verifies), or the issuer's JWKS (`jwks_url`: it only verifies, holding no private
//! key). Verification itself is the same code either way.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Header, Validation};
use serde::{Deserialize, Serialize};
use tracing::{field, field::Empty, Span};

use super::jwks::RemoteJwks;
use super::keys::{KeyRing, SigningAlg, SigningKey};
use super::revocation::Revocations;
use crate::domain::{Jti, PlanName, Role, TenantId, UserId};
use crate::time::now_s;

/// Tokens longer than this are refused before any parsing.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// The `typ` header of access tokens (RFC 9068).
const ACCESS_TOKEN_TYPE: &str = "at+jwt";
/// At most this often an unknown `kid` makes the key directory be read again (after `keys rotate`).
const KEY_RELOAD_INTERVAL: Duration = Duration::from_secs(5);

/// The claims of an access token, and nothing else about the user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccessClaims {
    pub iss: String,
    pub aud: String,
    pub sub: UserId,
    pub tid: TenantId,
    pub role: Role,
    pub plan: PlanName,
    pub scope: String,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
    pub jti: Jti,
    /// DPoP (RFC 9449): the key the token is bound to. A bound token is accepted only with a proof
    /// signed by that key (`auth::dpop`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cnf: Option<Confirmation>,
}

/// The `cnf` claim (RFC 7800) of a DPoP-bound token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confirmation {
    /// The RFC 7638 thumbprint of the client's public key.
    pub jkt: String,
}

/// The claims as a token presents them: each may be absent, so a missing claim is told apart from a
/// malformed one by type, not by the JSON error's wording.
#[derive(Deserialize)]
struct PresentedClaims {
    iss: Option<String>,
    aud: Option<String>,
    sub: Option<UserId>,
    tid: Option<TenantId>,
    role: Option<Role>,
    plan: Option<PlanName>,
    scope: Option<String>,
    iat: Option<i64>,
    nbf: Option<i64>,
    exp: Option<i64>,
    jti: Option<Jti>,
    cnf: Option<Confirmation>,
}

impl PresentedClaims {
    /// All claims, or `None` when one is missing.
    fn complete(self) -> Option<AccessClaims> {
        Some(AccessClaims {
            iss: self.iss?,
            aud: self.aud?,
            sub: self.sub?,
            tid: self.tid?,
            role: self.role?,
            plan: self.plan?,
            scope: self.scope?,
            iat: self.iat?,
            nbf: self.nbf?,
            exp: self.exp?,
            jti: self.jti?,
            cnf: self.cnf,
        })
    }
}

/// Why a token was refused. `code()` is the stable reason used in logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenRejection {
    #[error("no bearer token was presented")]
    Missing,
    #[error("the token is larger than 8 KiB")]
    Oversized,
    #[error("the token is not a well-formed JWT")]
    Malformed,
    #[error("the token header carries a key or key reference, which is never trusted")]
    EmbeddedKey,
    #[error("the token is not an access token (typ must be at+jwt)")]
    WrongType,
    #[error("the token was signed by an unknown key")]
    UnknownKey,
    #[error("the token's algorithm does not match its key")]
    AlgorithmMismatch,
    #[error("the token's signature is invalid")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token was issued in the future")]
    IssuedInFuture,
    #[error("the token was issued by someone else")]
    WrongIssuer,
    #[error("the token is meant for another audience")]
    WrongAudience,
    #[error("the token lacks a required claim")]
    MissingClaim,
    #[error("the token has been revoked")]
    Revoked,
    /// A DPoP-bound token presented as a bearer token (RFC 9449 7.2).
    #[error("the token is DPoP-bound: send it as Authorization: DPoP with a DPoP proof")]
    DpopBound,
    /// `Authorization: DPoP` with a token that is not bound to a key.
    #[error("the token is not DPoP-bound: send it as Authorization: Bearer")]
    NotDpopBound,
    /// The DPoP proof of a bound token's request was refused.
    #[error("{0}")]
    InvalidDpopProof(super::dpop::ProofRejection),
}

impl TokenRejection {
    pub fn code(self) -> &'static str {
        match self {
            TokenRejection::Missing => "missing",
            TokenRejection::Oversized => "oversized",
            TokenRejection::Malformed => "malformed",
            TokenRejection::EmbeddedKey => "embedded_key",
            TokenRejection::WrongType => "wrong_type",
            TokenRejection::UnknownKey => "unknown_key",
            TokenRejection::AlgorithmMismatch => "algorithm_mismatch",
            TokenRejection::BadSignature => "bad_signature",
            TokenRejection::Expired => "expired",
            TokenRejection::NotYetValid => "not_yet_valid",
            TokenRejection::IssuedInFuture => "issued_in_future",
            TokenRejection::WrongIssuer => "wrong_issuer",
            TokenRejection::WrongAudience => "wrong_audience",
            TokenRejection::MissingClaim => "missing_claim",
            TokenRejection::Revoked => "revoked",
            TokenRejection::DpopBound => "dpop_bound",
            TokenRejection::NotDpopBound => "not_dpop_bound",
            TokenRejection::InvalidDpopProof(proof) => proof.code(),
        }
    }
}

/// Settings for issuing and verifying access tokens. `Debug` hides the HS256 secret.
#[derive(Clone)]
pub struct TokenSettings {
    pub issuer: String,
    pub audience: String,
    pub ttl_s: i64,
    pub leeway_s: i64,
    pub keys_dir: PathBuf,
    pub alg: SigningAlg,
    pub hs256_secret: Option<String>,
    /// How many verified tokens to remember (0 disables the cache).
    pub cache_capacity: usize,
}

impl std::fmt::Debug for TokenSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSettings")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("ttl_s", &self.ttl_s)
            .field("leeway_s", &self.leeway_s)
            .field("keys_dir", &self.keys_dir)
            .field("alg", &self.alg)
            .field(
                "hs256_secret",
                &self.hs256_secret.as_deref().map(crate::config::Redacted),
            )
            .field("cache_capacity", &self.cache_capacity)
            .finish()
    }
}

/// A freshly signed access token.
pub struct IssuedToken {
    pub token: String,
    pub claims: AccessClaims,
}

/// Where the verifying (and signing) keys come from.
pub enum KeySource {
    /// The key directory (`keys_dir`): this process signs and verifies. `last_reload` bounds how often
    /// an unknown `kid` makes the directory be read again.
    Local {
        last_reload: std::sync::Mutex<Instant>,
    },
    /// The issuer's JWKS (`jwks_url`): this process only verifies.
    Remote(RemoteJwks),
}

/// Issues and verifies access tokens.
pub struct Tokens {
    settings: TokenSettings,
    keys: RwLock<Arc<KeyRing>>,
    source: KeySource,
    /// Already-verified tokens. Expiry and revocation are still checked on every hit.
    verified: Option<quick_cache::sync::Cache<String, Arc<AccessClaims>>>,
    revocations: Arc<Revocations>,
}

impl Tokens {
    pub fn new(settings: TokenSettings, revocations: Arc<Revocations>) -> anyhow::Result<Self> {
        let keys = Self::load_keys(&settings)?;
        let verified = (settings.cache_capacity > 0)
            .then(|| quick_cache::sync::Cache::new(settings.cache_capacity));
        Ok(Self {
            settings,
            keys: RwLock::new(Arc::new(keys)),
            source: KeySource::Local {
                last_reload: std::sync::Mutex::new(Instant::now()),
            },
            verified,
            revocations,
        })
    }

    /// A verifier: keys from the issuer's JWKS, no private key. When the issuer cannot be reached at
    /// start, it starts with no keys (not ready, every token refused) and keeps trying.
    pub async fn verifier(
        settings: TokenSettings,
        jwks: RemoteJwks,
        revocations: Arc<Revocations>,
    ) -> Self {
        let keys = match jwks.fetch().await {
            Ok(ring) => ring,
            Err(err) => {
                tracing::warn!(error = %format!("{err:#}"), "fetching the issuer's JWKS failed; starting without keys");
                KeyRing::empty()
            }
        };
        let verified = (settings.cache_capacity > 0)
            .then(|| quick_cache::sync::Cache::new(settings.cache_capacity));
        Self {
            settings,
            keys: RwLock::new(Arc::new(keys)),
            source: KeySource::Remote(jwks),
            verified,
            revocations,
        }
    }

    /// The issuer's JWKS, when this process only verifies.
    pub fn remote_jwks(&self) -> Option<&RemoteJwks> {
        match &self.source {
            KeySource::Remote(jwks) => Some(jwks),
            KeySource::Local { .. } => None,
        }
    }

    /// True when this process holds a signing key (it is an issuer).
    pub fn can_issue(&self) -> bool {
        self.key_ring().signing.is_some()
    }

    fn load_keys(settings: &TokenSettings) -> anyhow::Result<KeyRing> {
        KeyRing::load_or_create(
            &settings.keys_dir,
            settings.alg,
            settings.hs256_secret.as_deref(),
            settings.ttl_s + settings.leeway_s,
        )
    }

    pub fn settings(&self) -> &TokenSettings {
        &self.settings
    }

    pub fn revocations(&self) -> &Arc<Revocations> {
        &self.revocations
    }

    fn key_ring(&self) -> Arc<KeyRing> {
        Arc::clone(&self.keys.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Signs a document that is not an access token (an audit checkpoint) with the active key, as a
    /// JWS whose `typ` header names what it is, so it can never pass as a token.
    pub fn sign_document<T: Serialize>(&self, typ: &str, claims: &T) -> anyhow::Result<String> {
        self.sign_as(typ, claims)
    }

    /// Verifies a document of `sign_document` with any key this issuer has had (retired ones read from
    /// the key directory); it has no expiry, and its `iss` is not compared (the key is what vouches).
    pub fn verify_document<T: serde::de::DeserializeOwned>(
        &self,
        typ: &str,
        document: &str,
    ) -> anyhow::Result<T> {
        let header = jsonwebtoken::decode_header(document)?;
        anyhow::ensure!(header.typ.as_deref() == Some(typ), "not a {typ} document");
        let kid = header
            .kid
            .ok_or_else(|| anyhow::anyhow!("the document names no key"))?;
        let ring = self.key_ring();
        let retired;
        let key = match ring.verifying_key(&kid) {
            Some(key) => key,
            None => {
                retired = super::keys::all_verifying_keys(&self.settings.keys_dir)?;
                retired
                    .get(&kid)
                    .ok_or_else(|| anyhow::anyhow!("key {kid} is not one of this issuer's keys"))?
            }
        };
        anyhow::ensure!(
            key.alg.jwt_algorithm() == header.alg,
            "the algorithm does not match the key"
        );
        // The key vouches for it: a server's issuer URL may have changed since (a new port).
        let mut validation = Validation::new(key.alg.jwt_algorithm());
        validation.set_required_spec_claims::<&str>(&[]);
        validation.validate_exp = false;
        validation.validate_aud = false;
        Ok(jsonwebtoken::decode::<T>(document, &key.decoding, &validation)?.claims)
    }

    fn set_key_ring(&self, ring: KeyRing) {
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(ring);
    }

    /// Reads the key directory again (after `sonicgw keys rotate`); a verifier has none.
    pub fn reload_keys(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            matches!(self.source, KeySource::Local { .. }),
            "this process verifies with the issuer's JWKS and has no key directory"
        );
        self.set_key_ring(Self::load_keys(&self.settings)?);
        Ok(())
    }

    /// Periodic refresh: the key directory, or the issuer's JWKS. A failed fetch keeps the keys
    /// already held (stale-while-error).
    pub async fn refresh_keys(&self) -> anyhow::Result<()> {
        match &self.source {
            KeySource::Local { .. } => self.reload_keys(),
            KeySource::Remote(jwks) => {
                self.set_key_ring(jwks.fetch().await?);
                Ok(())
            }
        }
    }

    /// The key ring after trying to learn an unknown `kid`: the key directory read again at most every
    /// few seconds, or the JWKS fetched again at most every 30 s. `None` when nothing was reloaded.
    async fn key_ring_with(&self, kid: &str) -> Option<Arc<KeyRing>> {
        match &self.source {
            KeySource::Local { last_reload } => self
                .reload_keys_throttled(last_reload)
                .then(|| self.key_ring()),
            KeySource::Remote(jwks) => {
                let known = || self.key_ring().verifying_key(kid).is_some();
                match jwks.fetch_for_unknown_kid(known).await {
                    Some(Ok(ring)) => self.set_key_ring(ring),
                    Some(Err(err)) => {
                        tracing::warn!(error = %format!("{err:#}"), "refreshing the issuer's JWKS failed; keeping the cached keys")
                    }
                    None => {}
                }
                Some(self.key_ring())
            }
        }
    }

    /// Reloads keys at most every few seconds; true when it did.
    fn reload_keys_throttled(&self, last_reload: &std::sync::Mutex<Instant>) -> bool {
        let mut last = last_reload.lock().unwrap_or_else(|e| e.into_inner());
        if last.elapsed() < KEY_RELOAD_INTERVAL {
            return false;
        }
        *last = Instant::now();
        drop(last);
        match self.reload_keys() {
            Ok(()) => true,
            Err(err) => {
                tracing::warn!(error = %err, "reloading signing keys failed");
                false
            }
        }
    }

    /// The public keys, for `/.well-known/jwks.json`.
    pub fn jwks(&self) -> serde_json::Value {
        self.key_ring().jwks().clone()
    }

    /// Signs an access token for a user; bound to the DPoP key with thumbprint `jkt` when given.
    pub fn issue(
        &self,
        user: UserId,
        tenant: TenantId,
        role: Role,
        plan: PlanName,
        jkt: Option<String>,
    ) -> anyhow::Result<IssuedToken> {
        let now = now_s();
        let claims = AccessClaims {
            iss: self.settings.issuer.clone(),
            aud: self.settings.audience.clone(),
            sub: user,
            tid: tenant,
            role,
            plan,
            scope: scope_for(role).to_owned(),
            iat: now,
            nbf: now,
            exp: now + self.settings.ttl_s,
            jti: Jti::generate(),
            cnf: jkt.map(|jkt| Confirmation { jkt }),
        };
        let token = self.sign(&claims)?;
        Ok(IssuedToken { token, claims })
    }

    /// Signs claims as an access token with the active key.
    fn sign(&self, claims: &impl Serialize) -> anyhow::Result<String> {
        self.sign_as(ACCESS_TOKEN_TYPE, claims)
    }

    /// Signs claims as a JWS of type `typ` with the active key; a verifier has none.
    fn sign_as(&self, typ: &str, claims: &impl Serialize) -> anyhow::Result<String> {
        let ring = self.key_ring();
        let signing: &SigningKey = ring.signing.as_ref().ok_or_else(|| {
            anyhow::anyhow!(
                "this process only verifies tokens (jwks_url is set); the issuer signs them"
            )
        })?;
        let mut header = Header::new(signing.alg.jwt_algorithm());
        header.kid = Some(signing.kid.clone());
        header.typ = Some(typ.to_owned());
        Ok(jsonwebtoken::encode(&header, claims, &signing.encoding)?)
    }

    /// Verifies a bearer token completely: size, header, key, signature, claims and revocation.
    ///
    /// The span records the outcome, the rejection reason or the subject's user id: never the token,
    /// and no other claim (the `jti` names the token itself).
    #[tracing::instrument(
        name = "token.verify",
        skip_all,
        fields(outcome = Empty, reason = Empty, user_id = Empty)
    )]
    pub async fn verify(&self, token: &str) -> Result<Arc<AccessClaims>, TokenRejection> {
        let verified = self.verify_unrecorded(token).await;
        record_verification(verified.as_ref().map(|claims| claims.sub));
        verified
    }

    async fn verify_unrecorded(&self, token: &str) -> Result<Arc<AccessClaims>, TokenRejection> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenRejection::Oversized);
        }
        let claims = match self.verified.as_ref().and_then(|cache| cache.get(token)) {
            Some(claims) => {
                self.check_times(&claims)?;
                claims
            }
            None => {
                let claims = Arc::new(self.verify_uncached(token).await?);
                if let Some(cache) = &self.verified {
                    cache.insert(token.to_owned(), Arc::clone(&claims));
                }
                claims
            }
        };
        if self.revocations.is_revoked(&claims.jti) {
            return Err(TokenRejection::Revoked);
        }
        Ok(claims)
    }

    /// Verifies signature and claims, ignoring revocation; `Err` for any token we did not sign.
    /// RFC 7009 revocation of an expired token is pointless, so expiry is still checked.
    #[tracing::instrument(
        name = "token.verify",
        skip_all,
        fields(outcome = Empty, reason = Empty, user_id = Empty)
    )]
    pub async fn verify_signature_and_claims(
        &self,
        token: &str,
    ) -> Result<AccessClaims, TokenRejection> {
        let verified = if token.len() > MAX_TOKEN_BYTES {
            Err(TokenRejection::Oversized)
        } else {
            self.verify_uncached(token).await
        };
        record_verification(verified.as_ref().map(|claims| claims.sub));
        verified
    }

    fn check_times(&self, claims: &AccessClaims) -> Result<(), TokenRejection> {
        check_times(
            TokenTimes {
                exp: claims.exp,
                nbf: claims.nbf,
                iat: claims.iat,
            },
            now_s(),
            self.settings.leeway_s,
        )
    }

    async fn verify_uncached(&self, token: &str) -> Result<AccessClaims, TokenRejection> {
        let presented: PresentedClaims = self.decode(token, &self.settings.audience).await?;
        let claims = presented.complete().ok_or(TokenRejection::MissingClaim)?;
        self.check_times(&claims)?;
        Ok(claims)
    }

    /// Checks header, key, signature, issuer, audience and the time claims, and returns the claims.
    async fn decode<T: serde::de::DeserializeOwned>(
        &self,
        token: &str,
        audience: &str,
    ) -> Result<T, TokenRejection> {
        let header = checked_header(token)?;
        let mut ring = self.key_ring();
        if ring.verifying_key(&header.kid).is_none() {
            if let Some(reloaded) = self.key_ring_with(&header.kid).await {
                ring = reloaded;
            }
        }
        let key = ring
            .verifying_key(&header.kid)
            .ok_or(TokenRejection::UnknownKey)?;
        if key.alg.as_str() != header.alg {
            return Err(TokenRejection::AlgorithmMismatch);
        }
        let mut validation = Validation::new(key.alg.jwt_algorithm());
        validation.set_issuer(&[&self.settings.issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.leeway = self.settings.leeway_s.max(0) as u64;
        let data =
            jsonwebtoken::decode::<T>(token, &key.decoding, &validation).map_err(
                |err| match err.kind() {
                    ErrorKind::InvalidSignature => TokenRejection::BadSignature,
                    ErrorKind::ExpiredSignature => TokenRejection::Expired,
                    ErrorKind::ImmatureSignature => TokenRejection::NotYetValid,
                    ErrorKind::InvalidIssuer => TokenRejection::WrongIssuer,
                    ErrorKind::InvalidAudience => TokenRejection::WrongAudience,
                    ErrorKind::MissingRequiredClaim(_) => TokenRejection::MissingClaim,
                    ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                        TokenRejection::AlgorithmMismatch
                    }
                    _ => TokenRejection::Malformed,
                },
            )?;
        Ok(data.claims)
    }

    /// The audience of worker tokens: not the users' audience, so `verify` refuses them everywhere
    /// and only `verify_worker` accepts them.
    fn worker_audience(&self) -> String {
        format!("{}:worker", self.settings.audience)
    }

    /// Signs an access token for a remote worker's service account (scope `worker`).
    /// A token for `account` in its current token `generation` (see `WorkerAccount`).
    pub fn issue_worker(
        &self,
        account: uuid::Uuid,
        generation: i64,
    ) -> anyhow::Result<IssuedWorkerToken> {
        let now = now_s();
        let claims = WorkerClaims {
            iss: self.settings.issuer.clone(),
            aud: self.worker_audience(),
            sub: account,
            scope: WORKER_SCOPE.to_owned(),
            iat: now,
            nbf: now,
            exp: now + self.settings.ttl_s,
            jti: Jti::generate(),
            gen: generation,
        };
        let token = self.sign(&claims)?;
        Ok(IssuedWorkerToken {
            token,
            expires_in: self.settings.ttl_s,
        })
    }

    /// Verifies a worker's bearer token completely, revocation included. User tokens are refused
    /// here (their audience differs), as worker tokens are refused by `verify`.
    pub async fn verify_worker(&self, token: &str) -> Result<WorkerClaims, TokenRejection> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenRejection::Oversized);
        }
        let claims: WorkerClaims = self.decode(token, &self.worker_audience()).await?;
        if claims.scope != WORKER_SCOPE {
            return Err(TokenRejection::WrongAudience);
        }
        check_times(
            TokenTimes {
                exp: claims.exp,
                nbf: claims.nbf,
                iat: claims.iat,
            },
            now_s(),
            self.settings.leeway_s,
        )?;
        if self.revocations.is_revoked(&claims.jti) {
            return Err(TokenRejection::Revoked);
        }
        Ok(claims)
    }
}

/// The scope of worker tokens, and the only thing they allow.
pub const WORKER_SCOPE: &str = "worker";

/// The claims of a remote worker's access token: the service account, nothing about any user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerClaims {
    pub iss: String,
    pub aud: String,
    pub sub: uuid::Uuid,
    pub scope: String,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
    pub jti: Jti,
    /// The account's token generation when it was issued: a token of an older one is refused.
    pub gen: i64,
}

/// A freshly signed worker token.
pub struct IssuedWorkerToken {
    pub token: String,
    pub expires_in: i64,
}

/// Records a verification's outcome on the current `token.verify` span: the reason of a rejection, the
/// subject of an acceptance.
fn record_verification(verified: Result<UserId, &TokenRejection>) {
    let span = Span::current();
    match verified {
        Ok(user) => {
            span.record("outcome", "accepted");
            span.record("user_id", field::display(user));
        }
        Err(reason) => {
            span.record("outcome", "rejected");
            span.record("reason", reason.code());
        }
    }
}

/// The scope string of a role.
fn scope_for(role: Role) -> &'static str {
    match role {
        Role::User => "videos",
        Role::Admin => "videos admin",
        Role::PlatformAdmin => "videos admin platform",
    }
}

/// The time claims of a token, Unix seconds.
#[derive(Debug, Clone, Copy)]
struct TokenTimes {
    exp: i64,
    nbf: i64,
    iat: i64,
}

/// Expiry, not-before and issued-at against `now`, with `leeway` either way. Saturating: the claims
/// are any number a signer put there (`exp` near `i64::MAX` must not overflow).
fn check_times(times: TokenTimes, now: i64, leeway: i64) -> Result<(), TokenRejection> {
    if times.exp.saturating_add(leeway) <= now {
        return Err(TokenRejection::Expired);
    }
    if times.nbf.saturating_sub(leeway) > now {
        return Err(TokenRejection::NotYetValid);
    }
    if times.iat.saturating_sub(leeway) > now {
        return Err(TokenRejection::IssuedInFuture);
    }
    Ok(())
}

/// The parts of the JOSE header we act on.
struct CheckedHeader {
    alg: String,
    kid: String,
}

/// Parses the header ourselves, so that members jsonwebtoken would ignore are refused: any key or key
/// reference (`jku`, `jwk`, `x5u`, `x5c`), `crit`, a missing `kid`, and a `typ` other than `at+jwt`.
fn checked_header(token: &str) -> Result<CheckedHeader, TokenRejection> {
    let (encoded, rest) = token.split_once('.').ok_or(TokenRejection::Malformed)?;
    if rest.split('.').count() != 2 {
        return Err(TokenRejection::Malformed);
    }
    let bytes = URL_SAFE_NO_PAD
        .decode(encoded)
        .map_err(|_| TokenRejection::Malformed)?;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&bytes).map_err(|_| TokenRejection::Malformed)?;
    if ["jku", "jwk", "x5u", "x5c", "crit"]
        .iter()
        .any(|name| header.contains_key(*name))
    {
        return Err(TokenRejection::EmbeddedKey);
    }
    let typ = header.get("typ").and_then(|v| v.as_str()).unwrap_or("");
    let typ = typ.strip_prefix("application/").unwrap_or(typ);
    if !typ.eq_ignore_ascii_case(ACCESS_TOKEN_TYPE) {
        return Err(TokenRejection::WrongType);
    }
    let alg = header
        .get("alg")
        .and_then(|v| v.as_str())
        .ok_or(TokenRejection::Malformed)?;
    let kid = header
        .get("kid")
        .and_then(|v| v.as_str())
        .ok_or(TokenRejection::UnknownKey)?;
    Ok(CheckedHeader {
        alg: alg.to_owned(),
        kid: kid.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_claims_at_the_ends_of_i64_do_not_overflow() {
        // `exp + leeway` overflowed (a panic with overflow checks, a wrapped "expired" without); the
        // token_claims fuzz target signs what it generates, so it reaches these checks.
        let now = 1_764_300_000;
        let far = TokenTimes {
            exp: i64::MAX,
            nbf: i64::MIN,
            iat: i64::MIN,
        };
        assert_eq!(check_times(far, now, 30), Ok(()));
        let future = TokenTimes {
            exp: i64::MAX,
            nbf: i64::MAX,
            iat: now,
        };
        assert_eq!(
            check_times(future, now, 30),
            Err(TokenRejection::NotYetValid)
        );
        let past = TokenTimes {
            exp: i64::MIN,
            nbf: i64::MIN,
            iat: i64::MIN,
        };
        assert_eq!(check_times(past, now, 30), Err(TokenRejection::Expired));
        let issued_later = TokenTimes {
            exp: i64::MAX,
            nbf: now,
            iat: i64::MAX,
        };
        assert_eq!(
            check_times(issued_later, now, 30),
            Err(TokenRejection::IssuedInFuture)
        );
    }

    #[test]
    fn debug_output_hides_the_hs256_secret() {
        let settings = TokenSettings {
            issuer: "https://gw.example".to_owned(),
            audience: "sonicgw".to_owned(),
            ttl_s: 600,
            leeway_s: 30,
            keys_dir: PathBuf::from("/keys"),
            alg: SigningAlg::HS256,
            hs256_secret: Some("hs256-secret-value-0123456789abcdef".to_owned()),
            cache_capacity: 10,
        };
        let text = format!("{settings:?}");
        assert!(!text.contains("hs256-secret-value"), "{text}");
        assert!(text.contains("Some(\"<redacted>\")"), "{text}");
        assert!(text.contains("https://gw.example"), "{text}");
    }
}
