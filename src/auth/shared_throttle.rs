//! The login throttle's counts in Redis (with `redis_url`), so that every replica sees the same
//! failures, lockouts and attempts in flight. The rules are those of `throttle`: an attempt is reserved
//! before its password is checked, failures within the window lock the key for the lockout. Each step
//! is one Lua script (atomic, with Redis's clock). An attempt in flight is a member of a sorted set
//! scored by when it is given up, so a replica that dies mid-login cannot hold a slot for ever.

use std::time::Duration;

use rand::RngCore;

use super::throttle::ThrottleLimits;
use crate::redis_script::RedisScript;

/// An attempt in flight longer than this is dropped from the counts (its replica is presumed dead).
const IN_FLIGHT_TTL: Duration = Duration::from_secs(30);

/// Loading and refreshing one key's counts, shared by both scripts.
const COMMON_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function load(h, z, window)
  redis.call('ZREMRANGEBYSCORE', z, '-inf', now)
  local v = redis.call('HMGET', h, 'start', 'failures', 'locked')
  local start = tonumber(v[1]) or now
  local failures = tonumber(v[2]) or 0
  local locked = tonumber(v[3]) or 0
  if locked > 0 then
    if locked <= now then start = now; failures = 0; locked = 0 end
  elseif now - start > window then
    start = now; failures = 0
  end
  return start, failures, locked
end
local function store(h, start, failures, locked, keep)
  redis.call('HSET', h, 'start', start, 'failures', failures, 'locked', locked)
  redis.call('PEXPIRE', h, keep)
end
"#;

/// KEYS: account counts, account in flight, address counts, address in flight. ARGV: attempt id,
/// in-flight ttl, then per key max, window, lockout (ms). Returns {0,0} reserved, {1,wait_ms} locked,
/// {2,0} busy.
const BEGIN_LUA: &str = r#"
local id = ARGV[1]
local ttl = tonumber(ARGV[2])
for i = 0, 1 do
  local h, z = KEYS[1 + 2 * i], KEYS[2 + 2 * i]
  local max, window = tonumber(ARGV[3 + 3 * i]), tonumber(ARGV[4 + 3 * i])
  local start, failures, locked = load(h, z, window)
  if locked > 0 then return {1, locked - now} end
  if failures + redis.call('ZCARD', z) >= max then return {2, 0} end
end
for i = 0, 1 do
  local h, z = KEYS[1 + 2 * i], KEYS[2 + 2 * i]
  local window, lockout = tonumber(ARGV[4 + 3 * i]), tonumber(ARGV[5 + 3 * i])
  local start, failures, locked = load(h, z, window)
  store(h, start, failures, locked, window + lockout + ttl)
  redis.call('ZADD', z, now + ttl, id)
  redis.call('PEXPIRE', z, ttl)
end
return {0, 0}
"#;

/// KEYS as for begin. ARGV: attempt id, in-flight ttl, then per key mode (0 give the slot back,
/// 1 failure, 2 success that clears the failures), max, window, lockout (ms).
const SETTLE_LUA: &str = r#"
local id = ARGV[1]
local ttl = tonumber(ARGV[2])
for i = 0, 1 do
  local h, z = KEYS[1 + 2 * i], KEYS[2 + 2 * i]
  local mode = tonumber(ARGV[3 + 4 * i])
  local max, window, lockout = tonumber(ARGV[4 + 4 * i]), tonumber(ARGV[5 + 4 * i]), tonumber(ARGV[6 + 4 * i])
  redis.call('ZREM', z, id)
  if mode ~= 0 then
    local start, failures, locked = load(h, z, window)
    if mode == 1 then
      failures = failures + 1
      if failures >= max and locked == 0 then locked = now + lockout end
    else
      start = now; failures = 0; locked = 0
    end
    store(h, start, failures, locked, window + lockout + ttl)
  end
end
return 0
"#;

/// What settling does to one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    /// Gives the slot back.
    Release = 0,
    /// Counts a failure (and locks at the limit).
    Fail = 1,
    /// Gives the slot back and forgets the failures and lockout.
    Clear = 2,
}

/// A reservation's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reserved {
    /// The attempt holds a slot under this id.
    Yes(String),
    Locked(Duration),
    Busy,
}

/// The scripts and the limits they apply.
pub struct SharedThrottle {
    begin: RedisScript,
    settle: RedisScript,
    prefix: String,
    account: ThrottleLimits,
    address: ThrottleLimits,
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX / 4)
}

impl SharedThrottle {
    /// Loads the scripts; keys go under `<prefix>:throttle:`.
    pub async fn connect(
        redis_url: &str,
        prefix: &str,
        account: ThrottleLimits,
        address: ThrottleLimits,
    ) -> anyhow::Result<Self> {
        let conn = crate::redis_script::connect(redis_url).await?;
        Ok(Self {
            begin: RedisScript::load_on(conn.clone(), &format!("{COMMON_LUA}{BEGIN_LUA}")).await?,
            settle: RedisScript::load_on(conn, &format!("{COMMON_LUA}{SETTLE_LUA}")).await?,
            prefix: format!("{prefix}:throttle"),
            account,
            address,
        })
    }

    /// The failure and in-flight keys of an account and an address key (`account:<name>`,
    /// `address:<network>`). The kind comes before the client-chosen name, never after it: a username
    /// ending in `:in-flight` must not name another account's key (it made the script fail with
    /// WRONGTYPE, which turned the shared throttle off).
    fn keys(&self, account: &str, address: &str) -> [String; 4] {
        keys(&self.prefix, account, address)
    }

    /// Reserves an attempt on both keys, or says why not.
    pub async fn try_begin(&self, account: &str, address: &str) -> redis::RedisResult<Reserved> {
        let mut id = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut id);
        let id = hex::encode(id);
        let args: Vec<String> = [
            id.clone(),
            millis(IN_FLIGHT_TTL).to_string(),
            self.account.max_failures.max(1).to_string(),
            millis(self.account.window).to_string(),
            millis(self.account.lockout).to_string(),
            self.address.max_failures.max(1).to_string(),
            millis(self.address.window).to_string(),
            millis(self.address.lockout).to_string(),
        ]
        .into();
        let (answer, wait): (i64, i64) =
            self.begin.run(&self.keys(account, address), &args).await?;
        Ok(match answer {
            0 => Reserved::Yes(id),
            1 => Reserved::Locked(
                Duration::from_millis(u64::try_from(wait).unwrap_or(0)).max(Duration::from_secs(1)),
            ),
            _ => Reserved::Busy,
        })
    }

    /// Settles a reserved attempt on both keys.
    pub async fn settle(
        &self,
        account: &str,
        address: &str,
        id: &str,
        modes: [Settle; 2],
    ) -> redis::RedisResult<()> {
        let mut args = vec![id.to_owned(), millis(IN_FLIGHT_TTL).to_string()];
        for (mode, limits) in modes.iter().zip([self.account, self.address]) {
            args.extend([
                (*mode as i64).to_string(),
                limits.max_failures.max(1).to_string(),
                millis(limits.window).to_string(),
                millis(limits.lockout).to_string(),
            ]);
        }
        self.settle
            .run::<i64>(&self.keys(account, address), &args)
            .await
            .map(|_| ())
    }
}
fn keys(prefix: &str, account: &str, address: &str) -> [String; 4] {
    [
        format!("{prefix}:failures:{account}"),
        format!("{prefix}:in-flight:{account}"),
        format!("{prefix}:failures:{address}"),
        format!("{prefix}:in-flight:{address}"),
    ]
}

#[cfg(test)]
mod tests {
    use super::keys;

    #[test]
    fn no_username_names_another_accounts_keys() {
        let victim = keys("p:throttle", "account:victim", "address:10.0.0.0/24");
        let crafted = keys(
            "p:throttle",
            "account:victim:in-flight",
            "address:10.0.0.0/24:in-flight",
        );
        for key in &crafted[..2] {
            assert!(!victim.contains(key), "{key}");
        }
        let other_kind = keys(
            "p:throttle",
            "account:in-flight:account:victim",
            "address:x",
        );
        assert!(!victim.contains(&other_kind[0]) && !victim.contains(&other_kind[1]));
        assert_eq!(victim[0], "p:throttle:failures:account:victim");
        assert_eq!(victim[1], "p:throttle:in-flight:account:victim");
    }
}
