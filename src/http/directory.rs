//! A short-lived cache of display names (username, tenant name) for `GET /v1/me`, so the hottest
//! authenticated route costs no database round trip. Nothing security-relevant is cached here:
//! role and plan come from the verified token, and revocation is checked on every request.

use std::time::{Duration, Instant};

use quick_cache::sync::Cache;

use crate::domain::{TenantId, UserId};
use crate::storage::{Store, StoreResult, TenantScope};

/// Names change rarely; a rename shows up within this long on other replicas.
const TTL: Duration = Duration::from_secs(30);

/// A user's display names.
#[derive(Clone)]
pub struct Names {
    pub username: String,
    pub tenant_name: String,
}

/// Display names by user id.
pub struct Directory {
    cache: Cache<UserId, (Instant, Names)>,
}

impl Directory {
    pub fn new(capacity: usize) -> Self {
        Self {
            cache: Cache::new(capacity.max(16)),
        }
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
        let scope = TenantScope::Tenant(tenant);
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
    }

    /// Forgets everything (after a tenant rename).
    pub fn clear(&self) {
        self.cache.clear();
    }
}
