//! A short-lived cache of display names (username, tenant name) for `GET /v1/me`, so the hottest
//! authenticated route costs no database round trip. Nothing security-relevant is cached here:
//! role and plan come from the verified token, and revocation is checked on every request.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;

use quick_cache::sync::Cache;

use crate::domain::{PlanName, Role, TenantId, UserId};
use crate::storage::{Store, StoreResult, TenantScope};

/// Names change rarely; a rename shows up within this long on other replicas.
const TTL: Duration = Duration::from_secs(30);

/// A user's display names.
#[derive(Clone)]
pub struct Names {
    pub username: String,
    pub tenant_name: String,
}

/// A rendered `GET /v1/me` body, valid for tokens with this role and plan.
pub struct RenderedProfile {
    at: Instant,
    role: Role,
    plan: PlanName,
    pub body: Bytes,
}

/// Display names by user id, and rendered profiles.
pub struct Directory {
    cache: Cache<UserId, (Instant, Names)>,
    rendered: Cache<UserId, Arc<RenderedProfile>>,
}

impl Directory {
    pub fn new(capacity: usize) -> Self {
        Self {
            cache: Cache::new(capacity.max(16)),
            rendered: Cache::new(capacity.max(16)),
        }
    }

    /// The rendered profile of a user, if fresh and made for the same role and plan.
    pub fn rendered(
        &self,
        user: UserId,
        role: Role,
        plan: &PlanName,
    ) -> Option<Arc<RenderedProfile>> {
        self.rendered
            .get(&user)
            .filter(|r| r.at.elapsed() < TTL && r.role == role && &r.plan == plan)
    }

    pub fn store_rendered(&self, user: UserId, role: Role, plan: PlanName, body: Bytes) {
        let profile = RenderedProfile {
            at: Instant::now(),
            role,
            plan,
            body,
        };
        self.rendered.insert(user, Arc::new(profile));
    }

    /// The names of a user in a tenant; `None` when the user no longer exists there.
    pub async fn names(
        &self,
        store: &dyn Store,
        user: UserId,
        tenant: TenantId,
    ) -> StoreResult<Option<Names>> {
        if let Some((at, names)) = self.cache.get(&user) {
            if at.elapsed() < TTL {
                return Ok(Some(names));
            }
        }
        let scope = TenantScope::tenant(tenant);
        let Some(record) = store.user(scope, user).await? else {
            return Ok(None);
        };
        let Some(tenant) = store.tenant(scope, tenant).await? else {
            return Ok(None);
        };
        let names = Names {
            username: record.username.as_str().to_owned(),
            tenant_name: tenant.name.as_str().to_owned(),
        };
        self.cache.insert(user, (Instant::now(), names.clone()));
        Ok(Some(names))
    }

    /// Forgets a user's names after a change made through this process.
    pub fn forget(&self, user: UserId) {
        self.cache.remove(&user);
        self.rendered.remove(&user);
    }

    /// Forgets everything (after a tenant rename).
    pub fn clear(&self) {
        self.cache.clear();
        self.rendered.clear();
    }
}
