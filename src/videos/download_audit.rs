//! Downloads are audited once per job, downloader and hour, not once per request: a link or a token
//! fetched in a loop (players re-request, or someone floods an anonymous signed link) must not grow
//! the audit chain, whose appends are serialised. Every download is still counted in metrics.

use std::time::{Duration, Instant};

use quick_cache::sync::Cache;

use crate::domain::JobId;

/// How long one record stands for the repeats of the same download.
const WINDOW: Duration = Duration::from_secs(3600);
/// Distinct (job, downloader) pairs remembered; the least recently used are forgotten first, which
/// at worst records a repeat again.
const CAPACITY: usize = 20_000;

/// Remembers which downloads were audited recently.
pub struct DownloadAudit {
    recent: Cache<(JobId, String), Instant>,
}

impl DownloadAudit {
    pub fn new() -> Self {
        Self {
            recent: Cache::new(CAPACITY),
        }
    }

    /// True when this download should be recorded: the first by `downloader` (a user id, or the
    /// address of a link holder) of `job` within the window.
    pub fn first_in_window(&self, job: JobId, downloader: &str) -> bool {
        let now = Instant::now();
        let key = (job, downloader.to_owned());
        if let Some(at) = self.recent.get(&key) {
            if now.duration_since(at) < WINDOW {
                return false;
            }
        }
        self.recent.insert(key, now);
        true
    }
}

impl Default for DownloadAudit {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_within_the_window_are_not_recorded_again() {
        let audit = DownloadAudit::new();
        let (a, b) = (JobId::generate(), JobId::generate());
        assert!(audit.first_in_window(a, "user-1"));
        assert!(!audit.first_in_window(a, "user-1"));
        assert!(audit.first_in_window(a, "203.0.113.7"));
        assert!(audit.first_in_window(b, "user-1"));
    }
}
