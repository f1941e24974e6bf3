//! The request rate limit: a token bucket per user and one per tenant, sized by the caller's plan
//! (`requests_per_minute`, `tenant_requests_per_minute`). A bucket holds a minute's worth of requests and
//! refills continuously; a request takes one token from both buckets, or from neither when either is
//! empty. With `redis_url` the buckets live in Redis and one Lua script decides atomically (with Redis's
//! clock), so all replicas share them; without it, or while Redis fails, they live in this process,
//! in a map of bounded size.
//!
//! Tokens are counted in thousandths, so the arithmetic is the same integer arithmetic here and in Lua.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::domain::{TenantId, UserId};
use crate::redis_script::RedisScript;

/// Thousandths of a token per request.
const COST: i64 = 1000;

/// After Redis fails, how long the process decides alone before asking Redis again: a request must not
/// pay the script's timeout while Redis is down.
const REDIS_RETRY_AFTER: Duration = Duration::from_secs(5);

/// Buckets kept in process before full ones are forgotten to make room.
pub const MAX_LOCAL_BUCKETS: usize = 100_000;

/// The limits of one caller, in requests per minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub user: u32,
    pub tenant: u32,
}

/// Which bucket a decision reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bucket {
    User,
    Tenant,
    /// An anonymous route's bucket per client network (`check_anonymous`).
    Client,
    /// An anonymous route's bucket shared by every client.
    Everyone,
}

impl Bucket {
    /// Stable name, for metrics and the problem detail.
    pub fn as_str(self) -> &'static str {
        match self {
            Bucket::User => "user",
            Bucket::Tenant => "tenant",
            Bucket::Client => "client",
            Bucket::Everyone => "everyone",
        }
    }
}

/// The outcome of one request's check, reported for the tighter of its two buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub bucket: Bucket,
    /// The bucket's size: requests per minute.
    pub limit: u32,
    /// Whole requests left in the bucket.
    pub remaining: u32,
    /// Seconds until the bucket is full again.
    pub reset_s: u64,
    /// Seconds until the next request would be allowed (0 when this one was).
    pub retry_after_s: u64,
}

/// Milliseconds for a bucket of `per_minute` to regain `missing` thousandths of a token.
fn refill_ms(missing: i64, per_minute: u32) -> i64 {
    let per_minute = i64::from(per_minute.max(1));
    // per_minute thousandths per 60 ms; rounded up.
    (missing.max(0) * 60 + per_minute - 1) / per_minute
}

/// A bucket's level after `elapsed_ms`, capped at full.
fn refilled(level: i64, per_minute: u32, elapsed_ms: i64) -> i64 {
    let full = i64::from(per_minute) * COST;
    (level + elapsed_ms.max(0) * i64::from(per_minute) / 60).min(full)
}

/// The decision from both buckets' levels after the request (`allowed`: tokens were taken).
fn decide(allowed: bool, quota: Quota, tenant_level: i64, user_level: i64) -> Decision {
    let report = |bucket, per_minute: u32, level: i64| {
        let full = i64::from(per_minute) * COST;
        let secs = |ms: i64| u64::try_from((ms + 999) / 1000).unwrap_or(0);
        Decision {
            allowed,
            bucket,
            limit: per_minute,
            remaining: u32::try_from(level.max(0) / COST).unwrap_or(0),
            reset_s: secs(refill_ms(full - level, per_minute)),
            retry_after_s: if allowed {
                0
            } else {
                secs(refill_ms(COST - level, per_minute)).max(1)
            },
        }
    };
    let user = report(Bucket::User, quota.user, user_level);
    let tenant = report(Bucket::Tenant, quota.tenant, tenant_level);
    if allowed {
        if tenant.remaining < user.remaining {
            tenant
        } else {
            user
        }
    } else {
        // The bucket that keeps the caller waiting longest.
        let user_short = user_level < COST;
        let tenant_short = tenant_level < COST;
        match (user_short, tenant_short) {
            (true, true) if tenant.retry_after_s > user.retry_after_s => tenant,
            (false, true) => tenant,
            _ => user,
        }
    }
}

/// One bucket in process.
#[derive(Debug, Clone, Copy)]
struct LocalBucket {
    level: i64,
    at: Instant,
    per_minute: u32,
}

impl LocalBucket {
    fn level_at(&self, now: Instant, per_minute: u32) -> i64 {
        let elapsed = i64::try_from(now.saturating_duration_since(self.at).as_millis())
            .unwrap_or(i64::MAX / 2);
        // A plan change resizes the bucket; it never holds more than the new size.
        refilled(self.level, per_minute, elapsed).min(i64::from(per_minute) * COST)
    }

    fn is_full_at(&self, now: Instant) -> bool {
        self.level_at(now, self.per_minute) >= i64::from(self.per_minute) * COST
    }
}

/// The buckets of this process. One lock over the map: a check touches two buckets, and a request's
/// check is a few arithmetic operations.
struct LocalBuckets {
    buckets: Mutex<HashMap<String, LocalBucket>>,
    capacity: usize,
}

impl LocalBuckets {
    fn new(capacity: usize) -> Self {
        Self {
            buckets: Mutex::new(HashMap::new()),
            capacity,
        }
    }

    fn check(&self, keys: [&str; 2], quota: Quota, now: Instant) -> Decision {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let sizes = [quota.tenant, quota.user];
        let new_keys = keys.iter().filter(|k| !buckets.contains_key(**k)).count();
        if new_keys > 0 && buckets.len() + new_keys > self.capacity {
            // A full bucket is the same as none: forgetting it changes no decision.
            buckets.retain(|_, bucket| !bucket.is_full_at(now));
        }
        let mut levels = [0i64; 2];
        for (i, key) in keys.iter().enumerate() {
            levels[i] = buckets
                .get(*key)
                .map_or(i64::from(sizes[i]) * COST, |b| b.level_at(now, sizes[i]));
        }
        let allowed = levels.iter().all(|level| *level >= COST);
        if !allowed {
            // Nothing is written: refills are rounded down to thousandths, and storing a rounded level
            // on every refusal would let a caller who retries quickly keep the bucket from refilling.
            return decide(false, quota, levels[0], levels[1]);
        }
        for level in &mut levels {
            *level -= COST;
        }
        for (i, key) in keys.iter().enumerate() {
            let bucket = LocalBucket {
                level: levels[i],
                at: now,
                per_minute: sizes[i],
            };
            if let Some(existing) = buckets.get_mut(*key) {
                *existing = bucket;
            } else if buckets.len() < self.capacity {
                // Past the cap (every bucket in use), a new key is not remembered: bounded memory
                // wins over counting one more caller.
                buckets.insert((*key).to_owned(), bucket);
            }
        }
        decide(true, quota, levels[0], levels[1])
    }

    fn len(&self) -> usize {
        self.buckets.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// Both buckets in one atomic step, with Redis's clock. KEYS: tenant, user; ARGV: their sizes per
/// minute. Returns `{allowed, tenant level, user level}` in thousandths. A refusal writes nothing (see
/// `LocalBuckets::check`). Each key expires once its bucket would be full again, so idle callers cost
/// Redis nothing.
const TOKEN_BUCKET_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local levels = {}
local allowed = 1
for i = 1, 2 do
  local size = tonumber(ARGV[i])
  local full = size * 1000
  local state = redis.call('HMGET', KEYS[i], 'level', 'at')
  local level = tonumber(state[1])
  local at = tonumber(state[2])
  if level == nil or at == nil then
    level = full
  elseif now > at then
    level = level + math.floor((now - at) * size / 60)
  end
  if level > full then level = full end
  levels[i] = level
  if level < 1000 then allowed = 0 end
end
if allowed == 0 then return {0, levels[1], levels[2]} end
for i = 1, 2 do
  local size = tonumber(ARGV[i])
  levels[i] = levels[i] - 1000
  redis.call('HSET', KEYS[i], 'level', levels[i], 'at', now)
  local ttl = math.ceil((size * 1000 - levels[i]) * 60 / size) + 1000
  redis.call('PEXPIRE', KEYS[i], ttl)
end
return {1, levels[1], levels[2]}
"#;

/// The request rate limiter.
pub struct RateLimiter {
    local: LocalBuckets,
    redis: Option<(RedisScript, String)>,
    /// Set when Redis failed: until then, this process's buckets decide.
    redis_down_until: Mutex<Option<Instant>>,
    last_fallback_warning: Mutex<Option<Instant>>,
}

impl RateLimiter {
    /// Buckets in this process only.
    pub fn in_process() -> Self {
        Self::with_capacity(MAX_LOCAL_BUCKETS)
    }

    /// `in_process` with another bucket cap (tests).
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            local: LocalBuckets::new(capacity),
            redis: None,
            redis_down_until: Mutex::new(None),
            last_fallback_warning: Mutex::new(None),
        }
    }

    /// Buckets in Redis under `<prefix>:rl:`, shared by every replica with the same prefix.
    pub async fn shared(redis_url: &str, prefix: &str) -> anyhow::Result<Self> {
        let script = RedisScript::connect(redis_url, TOKEN_BUCKET_LUA).await?;
        Ok(Self {
            redis: Some((script, format!("{prefix}:rl"))),
            ..Self::in_process()
        })
    }

    /// Takes one request from the caller's user and tenant buckets, if both have one.
    pub async fn check(&self, tenant: TenantId, user: UserId, quota: Quota) -> Decision {
        self.check_keys(format!("tenant:{tenant}"), format!("user:{user}"), quota)
            .await
    }

    /// For a route anyone may call (`route` names it): one request from the client network's
    /// bucket (`quota.user` per minute) and from the bucket every client of the route shares
    /// (`quota.tenant`), if both have one. `network` is `net::client_network` of the address.
    pub async fn check_anonymous(&self, route: &str, network: &str, quota: Quota) -> Decision {
        let mut decision = self
            .check_keys(
                format!("anon:{route}:all"),
                format!("anon:{route}:net:{network}"),
                quota,
            )
            .await;
        decision.bucket = match decision.bucket {
            Bucket::Tenant => Bucket::Everyone,
            _ => Bucket::Client,
        };
        decision
    }

    async fn check_keys(&self, tenant_key: String, user_key: String, quota: Quota) -> Decision {
        let quota = Quota {
            user: quota.user.max(1),
            tenant: quota.tenant.max(1),
        };
        if let Some((script, prefix)) = self.redis.as_ref().filter(|_| self.redis_usable()) {
            let keys = [
                format!("{prefix}:{tenant_key}"),
                format!("{prefix}:{user_key}"),
            ];
            match script
                .run::<(i64, i64, i64)>(&keys, &[quota.tenant, quota.user])
                .await
            {
                Ok((allowed, tenant_level, user_level)) => {
                    return decide(allowed == 1, quota, tenant_level, user_level)
                }
                Err(err) => self.warn_fallback(&err),
            }
        }
        if self.redis.is_some() {
            crate::metrics::rate_limit_fallback();
        }
        self.local
            .check([&tenant_key, &user_key], quota, Instant::now())
    }

    /// Redis failing must not stop the API: the process's own buckets decide meanwhile (each replica
    /// then allows the limit on its own) and Redis is asked again after [`REDIS_RETRY_AFTER`]; counted
    /// in metrics and logged at most every 10 s.
    fn redis_usable(&self) -> bool {
        let down_until = self
            .redis_down_until
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        down_until.is_none_or(|until| Instant::now() >= until)
    }

    fn warn_fallback(&self, err: &redis::RedisError) {
        *self
            .redis_down_until
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(Instant::now() + REDIS_RETRY_AFTER);
        let mut last = self
            .last_fallback_warning
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if last.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) {
            *last = Some(Instant::now());
            tracing::warn!(error = %err, "the shared rate limit is unavailable; limiting per process");
        }
    }

    /// How many buckets this process holds.
    pub fn local_buckets(&self) -> usize {
        self.local.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUOTA: Quota = Quota { user: 3, tenant: 5 };

    #[test]
    fn a_full_bucket_allows_its_size_then_refuses_with_the_wait_for_one_token() {
        let buckets = LocalBuckets::new(100);
        let start = Instant::now();
        for left in (0..3).rev() {
            let decision = buckets.check(["t", "u"], QUOTA, start);
            assert!(decision.allowed);
            assert_eq!((decision.bucket, decision.remaining), (Bucket::User, left));
        }
        let refused = buckets.check(["t", "u"], QUOTA, start);
        assert!(!refused.allowed);
        assert_eq!(refused.bucket, Bucket::User);
        assert_eq!(refused.limit, 3);
        // 3 per minute: one token every 20 s; full again in 60 s.
        assert_eq!(refused.retry_after_s, 20);
        assert_eq!(refused.reset_s, 60);
        assert!(
            !buckets
                .check(["t", "u"], QUOTA, start + Duration::from_millis(19_990))
                .allowed
        );
        assert!(
            buckets
                .check(["t", "u"], QUOTA, start + Duration::from_secs(20))
                .allowed
        );
    }

    #[test]
    fn retrying_quickly_does_not_keep_the_bucket_from_refilling() {
        let buckets = LocalBuckets::new(100);
        let start = Instant::now();
        for _ in 0..3 {
            assert!(buckets.check(["t", "u"], QUOTA, start).allowed);
        }
        // A refused retry every 7 ms (each one's refill alone rounds down to nothing).
        let mut at = Duration::ZERO;
        while at < Duration::from_secs(20) {
            assert!(!buckets.check(["t", "u"], QUOTA, start + at).allowed);
            at += Duration::from_millis(7);
        }
        assert!(
            buckets
                .check(["t", "u"], QUOTA, start + Duration::from_secs(20))
                .allowed
        );
    }

    #[test]
    fn the_tenant_bucket_is_shared_by_its_users() {
        let buckets = LocalBuckets::new(100);
        let now = Instant::now();
        for user in ["a", "b"] {
            for _ in 0..2 {
                assert!(buckets.check(["t", user], QUOTA, now).allowed);
            }
        }
        assert!(buckets.check(["t", "c"], QUOTA, now).allowed);
        let refused = buckets.check(["t", "d"], QUOTA, now);
        assert!(!refused.allowed);
        assert_eq!(refused.bucket, Bucket::Tenant);
        // A refused request takes no token: another tenant's user is unaffected.
        assert!(buckets.check(["other", "d"], QUOTA, now).allowed);
    }

    #[test]
    fn a_refusal_takes_nothing_from_the_other_bucket() {
        let buckets = LocalBuckets::new(100);
        let now = Instant::now();
        for _ in 0..3 {
            assert!(buckets.check(["t", "u"], QUOTA, now).allowed);
        }
        for _ in 0..10 {
            assert!(!buckets.check(["t", "u"], QUOTA, now).allowed);
        }
        // The tenant gave 3 of its 5 to u; the 10 refusals took none.
        assert!(buckets.check(["t", "v"], QUOTA, now).allowed);
        assert!(buckets.check(["t", "v"], QUOTA, now).allowed);
        assert!(!buckets.check(["t", "v"], QUOTA, now).allowed);
    }

    #[test]
    fn memory_stays_bounded_and_full_buckets_are_forgotten_first() {
        let buckets = LocalBuckets::new(10);
        let now = Instant::now();
        for i in 0..50 {
            buckets.check(["t", &format!("u{i}")], QUOTA, now);
        }
        assert!(buckets.len() <= 10);
        // A minute later every bucket is full again, so new callers are tracked.
        let later = now + Duration::from_secs(60);
        buckets.check(["t2", "new"], QUOTA, later);
        let map = buckets.buckets.lock().unwrap();
        assert!(map.contains_key("new") && map.contains_key("t2"));
        assert!(map.len() <= 10);
    }

    #[test]
    fn refill_arithmetic_rounds_waits_up() {
        assert_eq!(refill_ms(1000, 60), 1000);
        assert_eq!(refill_ms(1, 60_000), 1);
        assert_eq!(refilled(0, 60, 500), 500);
        assert_eq!(refilled(59_900, 60, 10_000), 60_000);
    }
}
