//! Login throttling: after too many failures for one account or one client address within a window,
//! further attempts are refused for a cooling period, whatever the password.

use std::time::{Duration, Instant};

use dashmap::DashMap;

/// Limits for one kind of key (account or address).
#[derive(Debug, Clone, Copy)]
pub struct ThrottleLimits {
    pub max_failures: u32,
    pub window: Duration,
    pub lockout: Duration,
}

#[derive(Debug)]
struct Failures {
    window_start: Instant,
    count: u32,
    locked_until: Option<Instant>,
}

/// Counts failed logins per account and per client IP.
pub struct LoginThrottle {
    account: ThrottleLimits,
    address: ThrottleLimits,
    entries: DashMap<String, Failures>,
}

impl LoginThrottle {
    pub fn new(account: ThrottleLimits, address: ThrottleLimits) -> Self {
        Self {
            account,
            address,
            entries: DashMap::new(),
        }
    }

    fn keys(account: &str, address: &str) -> [String; 2] {
        [format!("account:{account}"), format!("address:{address}")]
    }

    /// `Err(retry_after)` while either the account or the address is locked out.
    pub fn check(&self, account: &str, address: &str) -> Result<(), Duration> {
        let now = Instant::now();
        let retry_after = Self::keys(account, address)
            .iter()
            .filter_map(|key| {
                let entry = self.entries.get(key)?;
                let until = entry.locked_until?;
                (until > now).then(|| until - now)
            })
            .max();
        match retry_after {
            Some(wait) => Err(wait.max(Duration::from_secs(1))),
            None => Ok(()),
        }
    }

    /// Counts a failed attempt against both the account and the address.
    pub fn record_failure(&self, account: &str, address: &str) {
        let now = Instant::now();
        let [account_key, address_key] = Self::keys(account, address);
        for (key, limits) in [(account_key, self.account), (address_key, self.address)] {
            let mut entry = self.entries.entry(key).or_insert_with(|| Failures {
                window_start: now,
                count: 0,
                locked_until: None,
            });
            if now.duration_since(entry.window_start) > limits.window {
                entry.window_start = now;
                entry.count = 0;
                entry.locked_until = None;
            }
            entry.count += 1;
            if entry.count >= limits.max_failures {
                entry.locked_until = Some(now + limits.lockout);
            }
        }
    }

    /// A successful login clears the account's failures (the address keeps its count).
    pub fn record_success(&self, account: &str) {
        self.entries.remove(&format!("account:{account}"));
    }

    /// Forgets entries whose window and lockout are over.
    pub fn prune(&self) {
        let now = Instant::now();
        let longest = self.account.window.max(self.address.window);
        self.entries.retain(|_, f| {
            f.locked_until.is_some_and(|until| until > now)
                || now.duration_since(f.window_start) <= longest
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max: u32) -> ThrottleLimits {
        ThrottleLimits {
            max_failures: max,
            window: Duration::from_secs(900),
            lockout: Duration::from_secs(900),
        }
    }

    #[test]
    fn locks_account_after_max_failures_and_reports_retry_after() {
        let throttle = LoginThrottle::new(limits(3), limits(100));
        for _ in 0..3 {
            assert!(throttle.check("t/alice", "1.2.3.4").is_ok());
            throttle.record_failure("t/alice", "1.2.3.4");
        }
        let wait = throttle.check("t/alice", "5.6.7.8").unwrap_err();
        assert!(wait > Duration::from_secs(800));
        assert!(throttle.check("t/bob", "1.2.3.4").is_ok());
    }

    #[test]
    fn locks_address_across_accounts() {
        let throttle = LoginThrottle::new(limits(100), limits(3));
        for name in ["a", "b", "c"] {
            throttle.record_failure(name, "9.9.9.9");
        }
        assert!(throttle.check("d", "9.9.9.9").is_err());
        assert!(throttle.check("d", "8.8.8.8").is_ok());
    }

    #[test]
    fn success_clears_account_failures() {
        let throttle = LoginThrottle::new(limits(2), limits(100));
        throttle.record_failure("a", "1.1.1.1");
        throttle.record_success("a");
        throttle.record_failure("a", "1.1.1.1");
        assert!(throttle.check("a", "1.1.1.1").is_ok());
    }
}
