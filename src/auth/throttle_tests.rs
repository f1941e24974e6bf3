//! Tests for `throttle.rs` (kept apart to keep that file short).

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
        throttle.try_begin("t/alice", "1.2.3.4").unwrap().failed();
    }
    let wait = throttle.try_begin("t/alice", "5.6.7.8").err().unwrap();
    assert!(wait.retry_after() > Duration::from_secs(800), "{wait:?}");
    assert!(throttle.try_begin("t/bob", "1.2.3.4").is_ok());
}

#[test]
fn locks_address_across_accounts() {
    let throttle = LoginThrottle::new(limits(100), limits(3));
    for name in ["a", "b", "c"] {
        throttle.try_begin(name, "9.9.9.9").unwrap().failed();
    }
    assert!(throttle.try_begin("d", "9.9.9.9").is_err());
    assert!(throttle.try_begin("d", "8.8.8.8").is_ok());
}

#[test]
fn in_flight_attempts_count_against_the_limit() {
    let throttle = LoginThrottle::new(limits(3), limits(100));
    let held: Vec<_> = (0..3)
        .map(|_| throttle.try_begin("a", "1.1.1.1").unwrap())
        .collect();
    let busy = throttle.try_begin("a", "1.1.1.1").err().unwrap();
    assert_eq!(busy, Refusal::Busy, "refused while three are in flight");
    for attempt in held {
        attempt.failed();
    }
    let locked = throttle.try_begin("a", "1.1.1.1").err().unwrap();
    assert!(
        matches!(locked, Refusal::Locked(wait) if wait > Duration::from_secs(800)),
        "{locked:?}"
    );
}

#[test]
fn dropping_an_unsettled_attempt_releases_it_without_a_failure() {
    let throttle = LoginThrottle::new(limits(1), limits(1));
    let attempt = throttle.try_begin("a", "1.1.1.1").unwrap();
    assert!(throttle.try_begin("a", "2.2.2.2").is_err());
    drop(attempt);
    assert!(throttle.is_empty(), "nothing counted, nothing kept");
    throttle.try_begin("a", "1.1.1.1").unwrap().failed();
    assert!(throttle.try_begin("a", "2.2.2.2").is_err());
}

#[test]
fn success_for_a_shared_username_keeps_its_failures() {
    let throttle = LoginThrottle::new(limits(3), limits(100));
    throttle.try_begin("bob", "1.1.1.1").unwrap().failed();
    throttle.try_begin("bob", "1.1.1.1").unwrap().failed();
    throttle
        .try_begin("bob", "2.2.2.2")
        .unwrap()
        .succeeded_keeping_failures();
    // Two failures still count: one more attempt fits, not three.
    let last = throttle.try_begin("bob", "1.1.1.1").unwrap();
    assert!(throttle.try_begin("bob", "1.1.1.1").is_err());
    last.failed();
    assert!(throttle.try_begin("bob", "3.3.3.3").is_err(), "locked");
}

#[test]
fn success_clears_account_failures_but_keeps_other_attempts_in_flight() {
    let throttle = LoginThrottle::new(limits(4), limits(100));
    throttle.try_begin("a", "1.1.1.1").unwrap().failed();
    throttle.try_begin("a", "1.1.1.1").unwrap().failed();
    let pending = throttle.try_begin("a", "1.1.1.1").unwrap();
    let winner = throttle.try_begin("a", "1.1.1.1").unwrap();
    assert!(
        throttle.try_begin("a", "1.1.1.1").is_err(),
        "2 failures + 2 in flight"
    );
    winner.succeeded();
    // The failures are gone, the pending attempt is not: three more fit, not four.
    let more: Vec<_> = (0..3)
        .map(|_| throttle.try_begin("a", "1.1.1.1").unwrap())
        .collect();
    assert!(throttle.try_begin("a", "1.1.1.1").is_err());
    drop(more);
    pending.failed();
    assert!(throttle.try_begin("a", "1.1.1.1").is_ok());
}

#[test]
fn success_does_not_clear_the_address() {
    let throttle = LoginThrottle::new(limits(100), limits(2));
    throttle.try_begin("a", "1.1.1.1").unwrap().failed();
    throttle.try_begin("b", "1.1.1.1").unwrap().succeeded();
    throttle.try_begin("c", "1.1.1.1").unwrap().failed();
    assert!(throttle.try_begin("d", "1.1.1.1").is_err());
}

#[test]
fn a_refused_address_gives_the_account_slot_back() {
    let throttle = LoginThrottle::new(limits(1), limits(1));
    let holder = throttle.try_begin("x", "1.1.1.1").unwrap();
    // The address is busy: this attempt is refused and must not keep its slot on account "a".
    assert!(throttle.try_begin("a", "1.1.1.1").is_err());
    assert!(throttle.try_begin("a", "2.2.2.2").is_ok());
    drop(holder);
}

#[test]
fn lockout_ends_with_a_fresh_window() {
    let short = ThrottleLimits {
        max_failures: 1,
        window: Duration::from_secs(900),
        lockout: Duration::ZERO,
    };
    let throttle = LoginThrottle::new(short, limits(100));
    throttle.try_begin("a", "1.1.1.1").unwrap().failed();
    // The lockout is over at once; the count must not keep refusing until the window ends.
    assert!(throttle.try_begin("a", "1.1.1.1").is_ok());
}

#[test]
fn long_values_are_hashed_into_short_keys() {
    let long = "u".repeat(64 * 1024);
    let key = account_key(&long);
    assert_eq!(key.len(), "account:sha256:".len() + 64, "{key}");
    assert!(key.starts_with("account:sha256:"));
    assert_ne!(key, account_key(&"u".repeat(64 * 1024 - 1)));
    assert_eq!(
        account_key(&"v".repeat(64)),
        format!("account:{}", "v".repeat(64))
    );
    assert!(address_key(&"x".repeat(1000)).len() <= "address:sha256:".len() + 64);
    // And they throttle like any other key.
    let throttle = LoginThrottle::new(limits(1), limits(100));
    throttle.try_begin(&long, "1.1.1.1").unwrap().failed();
    assert!(throttle.try_begin(&long, "1.1.1.1").is_err());
}

#[test]
fn ipv6_clients_are_counted_per_64_and_mapped_ipv4_as_ipv4() {
    assert_eq!(
        address_key("2001:db8:1:2:aaaa::1"),
        address_key("2001:db8:1:2:ffff:ffff:ffff:ffff")
    );
    assert_eq!(address_key("2001:db8:1:2::7"), "address:2001:db8:1:2::/64");
    assert_ne!(
        address_key("2001:db8:1:2::1"),
        address_key("2001:db8:1:3::1")
    );
    assert_eq!(address_key("::ffff:192.0.2.1"), address_key("192.0.2.1"));
    assert_eq!(address_key("192.0.2.1"), "address:192.0.2.1");
    assert_ne!(address_key("192.0.2.1"), address_key("192.0.2.2"));

    let throttle = LoginThrottle::new(limits(100), limits(2));
    throttle.try_begin("a", "2001:db8::1").unwrap().failed();
    throttle.try_begin("b", "2001:db8::2:3").unwrap().failed();
    assert!(throttle.try_begin("c", "2001:db8::ffff").is_err());
    assert!(throttle.try_begin("c", "2001:db8:0:1::1").is_ok());
}

#[test]
fn a_full_address_map_stops_tracking_new_addresses_but_never_accounts() {
    let throttle = LoginThrottle::with_capacity(limits(1), limits(1), 2);
    throttle.try_begin("a", "1.1.1.1").unwrap().failed();
    throttle.try_begin("b", "2.2.2.2").unwrap().failed();
    assert_eq!((throttle.len(), throttle.addresses()), (4, 2));
    // Full, nothing expired: the new address is not tracked, the new account is.
    throttle.try_begin("c", "3.3.3.3").unwrap().failed();
    assert_eq!((throttle.len(), throttle.addresses()), (5, 2));
    assert!(
        throttle.try_begin("c", "4.4.4.4").is_err(),
        "account c counted"
    );
    assert!(
        throttle.try_begin("d", "3.3.3.3").is_ok(),
        "address not counted"
    );
    // Known addresses are still counted.
    assert!(throttle.try_begin("e", "1.1.1.1").is_err());
}

#[test]
fn guesses_at_many_accounts_do_not_crowd_addresses_out() {
    let throttle = LoginThrottle::with_capacity(limits(10), limits(100), 3);
    for name in 0..50 {
        throttle
            .try_begin(&format!("user{name}"), "1.1.1.1")
            .unwrap()
            .failed();
    }
    // Fifty accounts tracked, one address: room for more addresses.
    assert_eq!(throttle.addresses(), 1);
    let attempt = throttle.try_begin("x", "2.2.2.2").unwrap();
    assert!(attempt.address.is_some());
}

#[test]
fn many_addresses_stay_within_the_cap() {
    let throttle = LoginThrottle::with_capacity(limits(10), limits(100), 100);
    for i in 0..1000u32 {
        let address = format!("10.{}.{}.1", i / 256, i % 256);
        throttle
            .try_begin("victim-or-not", &address)
            .map(|a| a.failed())
            .ok();
        throttle
            .try_begin(&format!("u{i}"), &address)
            .unwrap()
            .failed();
    }
    assert_eq!(throttle.addresses(), 100);
}

#[test]
fn an_office_behind_one_address_gets_a_hundred_failures_and_each_account_ten() {
    let throttle = LoginThrottle::new(limits(10), limits(100));
    for user in 0..10 {
        for _ in 0..10 {
            throttle
                .try_begin(&format!("colleague{user}"), "198.51.100.7")
                .unwrap()
                .failed();
        }
        // The account is locked after its own ten.
        assert!(throttle
            .try_begin(&format!("colleague{user}"), "198.51.100.7")
            .is_err());
    }
    // A hundred failures from the address: now it is locked for everyone behind it.
    assert!(matches!(
        throttle.try_begin("someone-else", "198.51.100.7"),
        Err(Refusal::Locked(_))
    ));
}

#[test]
fn a_full_map_is_swept_of_expired_entries_first() {
    let throttle = LoginThrottle::with_capacity(limits(5), limits(5), 1);
    throttle.try_begin("a", "1.1.1.1").unwrap().failed();
    assert_eq!((throttle.len(), throttle.addresses()), (2, 1));
    // Later than both windows: the sweep makes room and the new address is tracked.
    let later = Instant::now() + Duration::from_secs(1000);
    let attempt = throttle.try_begin_at("b", "2.2.2.2", later).unwrap();
    assert!(attempt.address.is_some());
    assert_eq!((throttle.len(), throttle.addresses()), (2, 1));
}

#[test]
fn prune_keeps_locked_and_in_flight_entries() {
    let throttle = LoginThrottle::new(limits(1), limits(100));
    throttle.try_begin("a", "1.1.1.1").unwrap().failed();
    let held = throttle.try_begin("b", "2.2.2.2").unwrap();
    throttle.prune();
    assert!(throttle.try_begin("a", "3.3.3.3").is_err());
    assert!(throttle.try_begin("b", "3.3.3.3").is_err());
    drop(held);
}

#[tokio::test]
async fn a_waiting_attempt_gets_the_slot_a_success_frees() {
    let throttle = LoginThrottle::new(limits(2), limits(100));
    let first = throttle.try_begin("a", "1.1.1.1").unwrap();
    let second = throttle.try_begin("a", "1.1.1.1").unwrap();
    let waiting = throttle.begin("a", "1.1.1.1");
    let settle = async {
        tokio::task::yield_now().await;
        first.succeeded();
        second.succeeded();
    };
    let (attempt, ()) = tokio::join!(waiting, settle);
    assert!(
        attempt.is_ok(),
        "the third login proceeds once a slot is free"
    );
}

#[tokio::test]
async fn a_waiting_attempt_is_refused_when_the_attempts_in_flight_lock_the_key() {
    let throttle = LoginThrottle::new(limits(2), limits(100));
    let first = throttle.try_begin("a", "1.1.1.1").unwrap();
    let second = throttle.try_begin("a", "1.1.1.1").unwrap();
    let waiting = throttle.begin("a", "1.1.1.1");
    let settle = async {
        tokio::task::yield_now().await;
        first.failed();
        second.failed();
    };
    let (attempt, ()) = tokio::join!(waiting, settle);
    let wait = attempt.err().unwrap();
    assert!(wait > Duration::from_secs(800), "{wait:?}");
}

#[tokio::test]
async fn a_waiting_attempt_gives_up_after_the_busy_wait() {
    let mut throttle = LoginThrottle::new(limits(1), limits(100));
    throttle.busy_wait = Duration::from_millis(20);
    let _held = throttle.try_begin("a", "1.1.1.1").unwrap();
    assert_eq!(
        throttle.begin("a", "1.1.1.1").await.err().unwrap(),
        BUSY_RETRY
    );
}
