//! Login throttling: after too many failed logins for one account or one client network within a window,
//! further attempts are refused for a cooling period, whatever the password.
//!
//! An attempt is *reserved* before its password is checked ([`LoginThrottle::begin`]), under the map's
//! entry lock: attempts still being verified count against the limit, so a burst of concurrent guesses
//! cannot all pass a check made before any of them has failed. The returned [`Attempt`] is then settled
//! as a failure or a success; dropped unsettled (an error, a cancelled request) it just gives its slot
//! back. An attempt that finds every remaining slot taken by attempts in flight waits for one of them to
//! settle rather than being refused at once: concurrent logins with the right password (a service
//! starting many workers) must not get 429s merely for being concurrent, and guesses still wait their
//! turn, so no more than the limit are ever verified.
//!
//! Keys are bounded: values longer than [`MAX_KEY_BYTES`] (a username can be as long as the form limit)
//! are replaced by their SHA-256, IPv6 clients are counted per /64 (one subscriber's usual allocation,
//! whose 2^64 addresses would otherwise each get a fresh allowance), and the map of client networks holds
//! at most [`MAX_ADDRESSES`] entries (about 100 bytes each): see [`LoginThrottle::begin`] for what happens
//! past that. Accounts have a map of their own, so guesses at many usernames cannot crowd addresses out.
//!
//! The two limits differ by default: 10 failures per account protect its password, 100 per client
//! network let an office behind one NAT address get through a morning of typos while still stopping a
//! password spray from one address.
//!
//! With `redis_url`, the counts live in Redis instead ([`super::shared_throttle`]), shared by every
//! replica under the same rules; while Redis fails, this process's map takes over.

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use dashmap::mapref::entry::Entry as MapEntry;
use dashmap::DashMap;
use sha2::{Digest, Sha256};
use tokio::sync::Notify;

use super::shared_throttle::{Reserved, Settle, SharedThrottle};

/// Longest key value kept as is; longer ones become `sha256:<hex>`.
pub const MAX_KEY_BYTES: usize = 64;

/// Client networks past which new ones are no longer tracked (accounts always are).
pub const MAX_ADDRESSES: usize = 100_000;

/// How often a full map may be swept for expired entries: a sweep walks the whole map, so it must not
/// run once per request.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Retry-After for an attempt that waited [`BUSY_WAIT`] in vain for a slot.
const BUSY_RETRY: Duration = Duration::from_secs(1);

/// Longest an attempt waits for an attempt in flight to settle: a few Argon2 verifications, with room
/// for a loaded server.
const BUSY_WAIT: Duration = Duration::from_secs(10);

/// With shared counts, how often a waiting attempt asks Redis again (a settle on another replica
/// wakes nobody here).
const SHARED_BUSY_POLL: Duration = Duration::from_millis(100);

/// After Redis fails, how long this process counts alone before asking Redis again.
const SHARED_RETRY_AFTER: Duration = Duration::from_secs(5);

/// Why an attempt cannot be reserved now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Locked out for this long.
    Locked(Duration),
    /// Failures plus attempts in flight have reached the limit; a slot may free up when one settles.
    Busy,
}

impl Refusal {
    /// What to put in Retry-After.
    pub fn retry_after(self) -> Duration {
        match self {
            Refusal::Locked(wait) => wait,
            Refusal::Busy => BUSY_RETRY,
        }
    }
}

/// Limits for one kind of key (account or address).
#[derive(Debug, Clone, Copy)]
pub struct ThrottleLimits {
    pub max_failures: u32,
    pub window: Duration,
    pub lockout: Duration,
}

/// The counts of one key.
#[derive(Debug)]
struct Entry {
    window_start: Instant,
    failures: u32,
    /// Attempts reserved and not yet settled.
    in_flight: u32,
    locked_until: Option<Instant>,
}

impl Entry {
    fn new(now: Instant) -> Self {
        Self {
            window_start: now,
            failures: 0,
            in_flight: 0,
            locked_until: None,
        }
    }

    /// Starts a new window once the current one, or the lockout, is over. In-flight attempts stay.
    fn refresh(&mut self, now: Instant, limits: ThrottleLimits) {
        let over = match self.locked_until {
            Some(until) => until <= now,
            None => now.duration_since(self.window_start) > limits.window,
        };
        if over {
            self.window_start = now;
            self.failures = 0;
            self.locked_until = None;
        }
    }

    /// Counts nothing: can be forgotten.
    fn idle(&self) -> bool {
        self.in_flight == 0 && self.failures == 0 && self.locked_until.is_none()
    }

    /// Nothing in flight and nothing that still counts at `now`.
    fn expired(&self, now: Instant, window: Duration) -> bool {
        self.in_flight == 0
            && match self.locked_until {
                Some(until) => until <= now,
                None => now.duration_since(self.window_start) > window,
            }
    }
}

/// Counts failed logins per account and per client network.
pub struct LoginThrottle {
    account: ThrottleLimits,
    address: ThrottleLimits,
    accounts: DashMap<String, Entry>,
    addresses: DashMap<String, Entry>,
    /// Most client networks tracked at once.
    capacity: usize,
    last_sweep: Mutex<Option<Instant>>,
    /// Held while both keys of an attempt are reserved, so that no other reservation sees one key taken
    /// by an attempt that the other key then refuses (and so waits for a release nobody announces).
    /// Microseconds per login; settling does not take it.
    reserving: Mutex<()>,
    /// Woken whenever an attempt settles, for attempts waiting for a slot.
    settled: Arc<Notify>,
    busy_wait: Duration,
    /// The counts in Redis, shared by the replicas (`redis_url`).
    shared: Option<Arc<SharedThrottle>>,
    /// Set when Redis failed: until then, the map counts.
    shared_down_until: Mutex<Option<Instant>>,
    last_fallback_warning: Mutex<Option<Instant>>,
}

/// The throttle key of an account (the username as normalised by the caller).
fn account_key(account: &str) -> String {
    format!("account:{}", capped(account))
}

/// The throttle key of a client address: its network, see [`client_network`].
fn address_key(address: &str) -> String {
    match address.parse::<IpAddr>() {
        Ok(ip) => format!("address:{}", client_network(ip)),
        Err(_) => format!("address:{}", capped(address)),
    }
}

/// A key value of at most [`MAX_KEY_BYTES`] (short values as they are, long ones as their hash), so that
/// a 64 KB username costs no more memory than a short one.
fn capped(value: &str) -> Cow<'_, str> {
    if value.len() <= MAX_KEY_BYTES {
        Cow::Borrowed(value)
    } else {
        Cow::Owned(format!(
            "sha256:{}",
            hex::encode(Sha256::digest(value.as_bytes()))
        ))
    }
}

pub use crate::net::client_network;

impl LoginThrottle {
    /// A `max_failures` of 0 is taken as 1 (configuration refuses 0 anyway).
    pub fn new(account: ThrottleLimits, address: ThrottleLimits) -> Self {
        Self::with_capacity(account, address, MAX_ADDRESSES)
    }

    /// `new` with another cap on client networks (tests).
    pub fn with_capacity(
        mut account: ThrottleLimits,
        mut address: ThrottleLimits,
        capacity: usize,
    ) -> Self {
        account.max_failures = account.max_failures.max(1);
        address.max_failures = address.max_failures.max(1);
        Self {
            account,
            address,
            accounts: DashMap::new(),
            addresses: DashMap::new(),
            capacity,
            last_sweep: Mutex::new(None),
            reserving: Mutex::new(()),
            settled: Arc::new(Notify::new()),
            busy_wait: BUSY_WAIT,
            shared: None,
            shared_down_until: Mutex::new(None),
            last_fallback_warning: Mutex::new(None),
        }
    }

    /// Keeps the counts in Redis (see [`SharedThrottle`]), with this process's map as the fallback.
    pub fn with_shared(mut self, shared: SharedThrottle) -> Self {
        self.shared = Some(Arc::new(shared));
        self
    }

    /// `begin` on the shared counts. `None` when Redis failed (the caller falls back to the map).
    async fn begin_shared(
        &self,
        shared: &Arc<SharedThrottle>,
        account: &str,
        address: &str,
    ) -> Option<Result<Attempt<'_>, Duration>> {
        let account = account_key(account);
        let address = address_key(address);
        let deadline = tokio::time::Instant::now() + self.busy_wait;
        loop {
            let settled = self.settled.notified();
            match shared.try_begin(&account, &address).await {
                Ok(Reserved::Yes(id)) => {
                    return Some(Ok(Attempt {
                        throttle: self,
                        account,
                        address: Some(address),
                        settled: false,
                        shared: Some(id),
                    }))
                }
                Ok(Reserved::Locked(wait)) => return Some(Err(wait)),
                Ok(Reserved::Busy) => {
                    let now = tokio::time::Instant::now();
                    if now >= deadline {
                        return Some(Err(BUSY_RETRY));
                    }
                    let poll = (now + SHARED_BUSY_POLL).min(deadline);
                    let _ = tokio::time::timeout_at(poll, settled).await;
                }
                Err(err) => {
                    self.warn_fallback(&err);
                    return None;
                }
            }
        }
    }

    fn shared_usable(&self) -> bool {
        let down_until = self
            .shared_down_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        down_until.is_none_or(|until| Instant::now() >= until)
    }

    fn warn_fallback(&self, err: &redis::RedisError) {
        *self
            .shared_down_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now() + SHARED_RETRY_AFTER);
        let mut last = self
            .last_fallback_warning
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if last.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) {
            *last = Some(Instant::now());
            tracing::warn!(error = %err, "the shared login throttle is unavailable; counting in this process");
        }
    }

    /// Settles a shared attempt in the background: `Drop` cannot wait, and the slot stays counted
    /// in Redis until the script has run, so nothing slips through in between.
    fn settle_shared(&self, account: &str, address: Option<&str>, id: &str, modes: [Settle; 2]) {
        let (Some(shared), Some(address)) = (self.shared.clone(), address) else {
            return;
        };
        let (account, address, id) = (account.to_owned(), address.to_owned(), id.to_owned());
        let settled = Arc::clone(&self.settled);
        tokio::spawn(async move {
            if let Err(err) = shared.settle(&account, &address, &id, modes).await {
                tracing::warn!(error = %err, "settling a login attempt in Redis failed; its slot expires");
            }
            settled.notify_waiters();
        });
    }

    /// Reserves a login attempt for `account` (the normalised username) from `address` (the client IP as
    /// text), before its password is checked. `Err(retry_after)` while either key is locked out. While
    /// a key's failures plus its attempts in flight have reached its limit, waits (up to `BUSY_WAIT`)
    /// for one of them to settle, then tries again: a failure may lock the key, a success frees the slot.
    ///
    /// Once `capacity` client networks are tracked (after sweeping expired ones), one seen for the
    /// first time is not tracked and the attempt is limited by its account alone. Accounts are always
    /// tracked: their count is what protects a password, and every tracked account attempt costs an
    /// Argon2 verification, which bounds how fast they can be added.
    pub async fn begin(&self, account: &str, address: &str) -> Result<Attempt<'_>, Duration> {
        if let Some(shared) = self.shared.as_ref().filter(|_| self.shared_usable()) {
            if let Some(result) = self.begin_shared(shared, account, address).await {
                return result;
            }
        }
        let deadline = tokio::time::Instant::now() + self.busy_wait;
        loop {
            // Created before trying, so that a settle between the try and the wait is not missed.
            let settled = self.settled.notified();
            match self.try_begin(account, address) {
                Ok(attempt) => return Ok(attempt),
                Err(Refusal::Locked(wait)) => return Err(wait),
                Err(Refusal::Busy) => {
                    if tokio::time::timeout_at(deadline, settled).await.is_err() {
                        return Err(BUSY_RETRY);
                    }
                }
            }
        }
    }

    /// `begin` without waiting.
    pub fn try_begin(&self, account: &str, address: &str) -> Result<Attempt<'_>, Refusal> {
        self.try_begin_at(account, address, Instant::now())
    }

    fn try_begin_at(
        &self,
        account: &str,
        address: &str,
        now: Instant,
    ) -> Result<Attempt<'_>, Refusal> {
        let account = account_key(account);
        let address = address_key(address);
        let _reserving = self
            .reserving
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.reserve(&self.accounts, &account, self.account, now, None)?;
        let address = match self.reserve(
            &self.addresses,
            &address,
            self.address,
            now,
            Some(self.capacity),
        ) {
            Ok(true) => Some(address),
            Ok(false) => None,
            Err(refusal) => {
                // Nobody saw this slot taken (reservations are serialised), so nobody waits for it.
                self.settle(&self.accounts, &account, false, |_| {});
                return Err(refusal);
            }
        };
        Ok(Attempt {
            throttle: self,
            account,
            address,
            settled: false,
            shared: None,
        })
    }

    fn refuses(entry: &Entry, limits: ThrottleLimits, now: Instant) -> Option<Refusal> {
        if let Some(until) = entry.locked_until {
            let wait = until
                .saturating_duration_since(now)
                .max(Duration::from_secs(1));
            return Some(Refusal::Locked(wait));
        }
        (entry.failures.saturating_add(entry.in_flight) >= limits.max_failures)
            .then_some(Refusal::Busy)
    }

    /// Counts one more attempt in flight on `key` of `map`. `Ok(false)`: not tracked, the map already
    /// holds `capacity` entries.
    fn reserve(
        &self,
        map: &DashMap<String, Entry>,
        key: &str,
        limits: ThrottleLimits,
        now: Instant,
        capacity: Option<usize>,
    ) -> Result<bool, Refusal> {
        // No entry reference may be held here: sweeping and `len` lock every shard.
        if let Some(capacity) = capacity {
            if !map.contains_key(key) && map.len() >= capacity {
                self.sweep_if_due(now);
                if map.len() >= capacity {
                    return Ok(false);
                }
            }
        }
        let mut entry = map.entry(key.to_owned()).or_insert_with(|| Entry::new(now));
        entry.refresh(now, limits);
        if let Some(refusal) = Self::refuses(&entry, limits, now) {
            return Err(refusal);
        }
        entry.in_flight += 1;
        Ok(true)
    }

    /// Settles one in-flight attempt on `key` and forgets the entry if it no longer counts anything. An
    /// entry with attempts in flight is never removed (neither here nor by pruning), so it is there.
    /// With `wake`, attempts waiting for a slot try again.
    fn settle(
        &self,
        map: &DashMap<String, Entry>,
        key: &str,
        wake: bool,
        update: impl FnOnce(&mut Entry),
    ) {
        if let MapEntry::Occupied(mut occupied) = map.entry(key.to_owned()) {
            let entry = occupied.get_mut();
            entry.in_flight = entry.in_flight.saturating_sub(1);
            update(entry);
            if entry.idle() {
                occupied.remove();
            }
        }
        if wake {
            self.settled.notify_waiters();
        }
    }

    /// Gives an in-flight slot back; with `clear`, also forgets the key's failures and lockout.
    fn release(&self, map: &DashMap<String, Entry>, key: &str, clear: bool) {
        self.settle(map, key, true, |entry| {
            if clear {
                entry.failures = 0;
                entry.locked_until = None;
                entry.window_start = Instant::now();
            }
        });
    }

    /// Turns an in-flight attempt into a failure, locking the key when it reaches its limit.
    fn fail(&self, map: &DashMap<String, Entry>, key: &str, limits: ThrottleLimits) {
        let now = Instant::now();
        self.settle(map, key, true, |entry| {
            entry.refresh(now, limits);
            entry.failures = entry.failures.saturating_add(1);
            if entry.failures >= limits.max_failures && entry.locked_until.is_none() {
                entry.locked_until = Some(now + limits.lockout);
            }
        });
    }

    /// A full sweep at most once per [`SWEEP_INTERVAL`].
    fn sweep_if_due(&self, now: Instant) {
        {
            let mut last = self
                .last_sweep
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if last.is_some_and(|at| now.duration_since(at) < SWEEP_INTERVAL) {
                return;
            }
            *last = Some(now);
        }
        self.prune_at(now);
    }

    /// Forgets entries whose window and lockout are over and that have nothing in flight.
    pub fn prune(&self) {
        self.prune_at(Instant::now());
    }

    fn prune_at(&self, now: Instant) {
        self.accounts
            .retain(|_, entry| !entry.expired(now, self.account.window));
        self.addresses
            .retain(|_, entry| !entry.expired(now, self.address.window));
    }

    /// How many keys (accounts and client networks) are tracked.
    pub fn len(&self) -> usize {
        self.accounts.len() + self.addresses.len()
    }

    /// How many client networks are tracked.
    pub fn addresses(&self) -> usize {
        self.addresses.len()
    }

    pub fn is_empty(&self) -> bool {
        self.accounts.is_empty() && self.addresses.is_empty()
    }
}

/// A reserved login attempt. Settle it with [`Attempt::failed`] or [`Attempt::succeeded`]; dropped
/// unsettled, it just gives its slot back (no failure, no success).
#[must_use = "a reserved attempt is settled with failed() or succeeded()"]
pub struct Attempt<'a> {
    throttle: &'a LoginThrottle,
    account: String,
    /// `None` when the client network was not tracked (the map was full).
    address: Option<String>,
    settled: bool,
    /// The attempt's id when it was reserved in Redis rather than in this process.
    shared: Option<String>,
}

impl Attempt<'_> {
    /// The password was wrong (or the user unknown or disabled): counts against the account and the
    /// client network.
    pub fn failed(mut self) {
        self.settled = true;
        if self.settle_shared([Settle::Fail, Settle::Fail]) {
            return;
        }
        let throttle = self.throttle;
        throttle.fail(&throttle.accounts, &self.account, throttle.account);
        if let Some(address) = &self.address {
            throttle.fail(&throttle.addresses, address, throttle.address);
        }
    }

    /// The login succeeded: clears the account's failures (attempts still in flight stay counted); the
    /// client network keeps its count.
    pub fn succeeded(mut self) {
        self.settled = true;
        if self.settle_shared([Settle::Clear, Settle::Release]) {
            return;
        }
        let throttle = self.throttle;
        throttle.release(&throttle.accounts, &self.account, true);
        if let Some(address) = &self.address {
            throttle.release(&throttle.addresses, address, false);
        }
    }
}

impl Attempt<'_> {
    /// Settles a shared attempt; false when the attempt is counted in this process.
    fn settle_shared(&self, modes: [Settle; 2]) -> bool {
        let Some(id) = &self.shared else {
            return false;
        };
        self.throttle
            .settle_shared(&self.account, self.address.as_deref(), id, modes);
        true
    }

    /// The login succeeded for a username that other tenants also have: the failures counted under
    /// the name may be guesses at one of those other accounts, so they stay; only this attempt's slot
    /// is given back.
    pub fn succeeded_keeping_failures(mut self) {
        self.settled = true;
        if self.settle_shared([Settle::Release, Settle::Release]) {
            return;
        }
        let throttle = self.throttle;
        throttle.release(&throttle.accounts, &self.account, false);
        if let Some(address) = &self.address {
            throttle.release(&throttle.addresses, address, false);
        }
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if !self.settled {
            self.settled = true;
            if self.settle_shared([Settle::Release, Settle::Release]) {
                return;
            }
            let throttle = self.throttle;
            throttle.release(&throttle.accounts, &self.account, false);
            if let Some(address) = &self.address {
                throttle.release(&throttle.addresses, address, false);
            }
        }
    }
}

#[cfg(test)]
#[path = "throttle_tests.rs"]
mod tests;
