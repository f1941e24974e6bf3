//! What remote workers can run: each `sonicgw worker` process reports, every `REPORT_EVERY`, how many
//! jobs of its engine it can run at once now (its healthy GPU places, or its lanes). The reports are
//! stored, so every API process sees every worker, and a report older than `FRESH_FOR` no longer
//! counts (a host that died stops counting within that time; one that stops cleanly reports zero).
//! ETAs schedule the queue onto the local slots plus these.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::storage::{Presence, PresenceLimits, Store, StoreResult};
use crate::time::now_ms;

/// How often a worker process is asked to report.
pub const REPORT_EVERY: Duration = Duration::from_secs(10);
/// How long a report counts: three missed reports and the process no longer does.
pub const FRESH_FOR: Duration = Duration::from_secs(30);
/// Reports older than this are deleted.
const FORGET_AFTER: Duration = Duration::from_secs(3600);
/// How many processes one service account may have reporting at once: a stolen worker secret must
/// not make up capacity without bound, nor fill the table.
pub const MAX_PROCESSES_PER_ACCOUNT: u64 = 64;
/// The most jobs one process may say it runs at once of one engine.
pub const MAX_CAPACITY: u32 = 256;
/// How long API processes reuse what they read.
const CACHE_FOR: Duration = Duration::from_secs(5);

/// Why a report was refused; nothing was recorded.
#[derive(Debug, PartialEq, Eq)]
pub enum PresenceRejection {
    /// `MAX_PROCESSES_PER_ACCOUNT` other processes of the account are reporting.
    TooManyProcesses,
}

/// The remote workers' capacity per engine, as this process last read it.
pub struct RemoteCapacity {
    store: Arc<dyn Store>,
    cached: RwLock<Option<(Instant, BTreeMap<String, usize>)>>,
}

impl RemoteCapacity {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            cached: RwLock::new(None),
        }
    }

    /// Records `process`'s report for `account` (validated by the caller), replacing its last one.
    pub async fn record(
        &self,
        account: uuid::Uuid,
        process: &str,
        engines: &[Presence],
    ) -> StoreResult<Result<(), PresenceRejection>> {
        let now = now_ms();
        let limits = PresenceLimits {
            since: now.saturating_sub_duration(FRESH_FOR),
            max_processes: MAX_PROCESSES_PER_ACCOUNT,
            forget_before: now.saturating_sub_duration(FORGET_AFTER),
        };
        if !self
            .store
            .record_presence(account, process, engines, now, limits)
            .await?
        {
            return Ok(Err(PresenceRejection::TooManyProcesses));
        }
        // A worker that just came (or went) changes ETAs here at once, not after the cache expires.
        *self.cached.write().unwrap_or_else(|e| e.into_inner()) = None;
        Ok(Ok(()))
    }

    /// How many jobs of `engine` the remote workers can run at once now. A failed read counts as
    /// none: an estimate is not worth failing a request for.
    pub async fn slots(&self, engine: &str) -> usize {
        let fresh = {
            let cached = self.cached.read().unwrap_or_else(|e| e.into_inner());
            cached
                .as_ref()
                .filter(|(at, _)| at.elapsed() < CACHE_FOR)
                .map(|(_, by_engine)| by_engine.get(engine).copied().unwrap_or(0))
        };
        if let Some(slots) = fresh {
            return slots;
        }
        let since = now_ms().saturating_sub_duration(FRESH_FOR);
        let by_engine: BTreeMap<String, usize> = match self.store.remote_capacity(since).await {
            Ok(reports) => reports
                .into_iter()
                .map(|p| (p.engine, p.capacity as usize))
                .collect(),
            Err(err) => {
                tracing::warn!(error = %err, "reading the remote workers' capacity failed");
                BTreeMap::new()
            }
        };
        let slots = by_engine.get(engine).copied().unwrap_or(0);
        *self.cached.write().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), by_engine));
        slots
    }
}
