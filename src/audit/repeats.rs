//! Repeats of one audited event are recorded once per window: a client that downloads in a loop, keeps
//! presenting a dead refresh token, or keeps knocking on an admin route must not grow the audit chain
//! (whose appends are serialised) with every request. Every occurrence is still counted in metrics by
//! the caller.

use std::time::{Duration, Instant};

use quick_cache::sync::Cache;

/// Remembers which events were recorded recently, by key.
pub struct Repeats {
    recent: Cache<String, Instant>,
    window: Duration,
}

impl Repeats {
    /// Keys are forgotten after `window`, or earlier when more than `capacity` are remembered (least
    /// recently used first), which at worst records a repeat again.
    pub fn new(capacity: usize, window: Duration) -> Self {
        Self {
            recent: Cache::new(capacity),
            window,
        }
    }

    /// True when the event with this key should be recorded: the first within the window.
    pub fn first_in_window(&self, key: &str) -> bool {
        let now = Instant::now();
        if let Some(at) = self.recent.get(key) {
            if now.duration_since(at) < self.window {
                return false;
            }
        }
        self.recent.insert(key.to_owned(), now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_within_the_window_are_not_recorded_again() {
        let repeats = Repeats::new(100, Duration::from_secs(3600));
        assert!(repeats.first_in_window("job-1/user-1"));
        assert!(!repeats.first_in_window("job-1/user-1"));
        assert!(repeats.first_in_window("job-1/203.0.113.7"));
        assert!(repeats.first_in_window("job-2/user-1"));
    }

    #[test]
    fn a_repeat_after_the_window_is_recorded() {
        let repeats = Repeats::new(100, Duration::ZERO);
        assert!(repeats.first_in_window("k"));
        assert!(repeats.first_in_window("k"));
    }
}
