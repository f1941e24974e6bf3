//! What ETAs are computed from: each engine's measured speed, and the work that holds or waits for an
//! engine's slots ahead of a job.

use async_trait::async_trait;

use super::jobs::JobRecord;
use super::StoreResult;
use crate::domain::JobStatus;
use crate::time::UnixMillis;

/// An engine instance's measured speed: engine seconds per second of reference video (512x512 pixels,
/// 25 inference steps), a moving average over `samples` finished jobs.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineSpeed {
    pub engine: String,
    /// The instance within the engine (a GPU server); `""` for the engine as a whole.
    pub instance: String,
    pub seconds_per_second: f64,
    pub samples: i64,
    pub updated_at: UnixMillis,
}

/// Computes an instance's next speed from its stored one (`None`: never measured); `None` leaves it as it is.
pub type SpeedUpdate<'a> = dyn Fn(Option<&EngineSpeed>) -> Option<EngineSpeed> + Send + Sync + 'a;

/// A job running on an engine or queued for it, with what its cost depends on.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingWork {
    /// The job's id, as stored.
    pub id: String,
    pub status: JobStatus,
    /// The job's stored `params` and `output_plan` documents.
    pub params: String,
    pub output_plan: String,
    pub started_at: Option<UnixMillis>,
}

/// The work ahead of a queued job on its engine.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WorkAhead {
    /// The engine's running jobs.
    pub running: Vec<PendingWork>,
    /// The engine's queued jobs dispatched before it, in dispatch order.
    pub queued: Vec<PendingWork>,
}

/// Storage of engine speeds and the queue as ETAs see it.
#[async_trait]
pub trait EstimateStore: Send + Sync {
    /// Every stored speed.
    async fn engine_speeds(&self) -> StoreResult<Vec<EngineSpeed>>;
    /// Applies `update` to one instance's speed atomically (other processes update it too) and
    /// returns the speed now stored, or `None` when `update` declined and nothing was stored.
    async fn update_engine_speed(
        &self,
        engine: &str,
        instance: &str,
        update: &SpeedUpdate<'_>,
    ) -> StoreResult<Option<EngineSpeed>>;
    /// The running jobs of `job`'s engine and the queued ones dispatched before it, at most `limit` of each,
    /// in one query.
    async fn work_ahead(&self, job: &JobRecord, limit: i64) -> StoreResult<WorkAhead>;
}
