//! What every handler can reach.

use std::ops::Deref;
use std::sync::Arc;

use crate::accounts::Accounts;
use crate::audit::Auditor;
use crate::auth::sessions::Sessions;
use crate::auth::tokens::Tokens;
use crate::config::Config;
use crate::domain::Plans;
use crate::storage::Store;

/// Shared application state, cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<Services>);

/// The services behind the HTTP layer.
pub struct Services {
    pub config: Config,
    pub issuer: String,
    pub store: Arc<dyn Store>,
    pub tokens: Arc<Tokens>,
    pub sessions: Arc<Sessions>,
    pub auditor: Auditor,
    pub plans: Plans,
    pub directory: super::directory::Directory,
    pub accounts: Accounts,
    pub workers: crate::auth::workers::WorkerAccounts,
    pub videos: Arc<crate::videos::VideoService>,
    /// The request rate limit, applied by the `Caller` extractor.
    pub rate_limiter: Arc<crate::ratelimit::RateLimiter>,
    /// The preview budget (`previews_per_minute` of the caller's plan), apart from the request rate.
    pub preview_limiter: Arc<crate::ratelimit::RateLimiter>,
    /// DPoP proofs already used (`jti` per key), shared through Redis when configured.
    pub dpop_replays: Arc<crate::auth::dpop::ReplayGuard>,
    /// The token endpoint's proofs (sent before any credential is checked), apart from the others.
    pub dpop_token_endpoint_replays: Arc<crate::auth::dpop::ReplayGuard>,
    /// Role refusals already audited (per user and route, for a minute).
    pub denials: crate::audit::Repeats,
    /// Cancelled when the process starts shutting down: event streams end, `/readyz` says 503.
    pub shutdown: tokio_util::sync::CancellationToken,
}

impl AppState {
    pub fn new(services: Services) -> Self {
        Self(Arc::new(services))
    }
}

impl Deref for AppState {
    type Target = Services;
    fn deref(&self) -> &Services {
        &self.0
    }
}
