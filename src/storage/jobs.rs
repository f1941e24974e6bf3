//! The job queue's storage: durable rows claimed with a lease, served in weighted-fair order.

use async_trait::async_trait;

use super::{StoreResult, TenantScope};
use crate::domain::{JobId, JobStatus, Stage, TenantId, UserId, WorkerId};
use crate::time::UnixMillis;

/// A video job as stored. `params`, `input` and `output_plan` are JSON documents owned by the video module.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRecord {
    pub id: JobId,
    pub tenant_id: TenantId,
    pub user_id: UserId,
    pub status: JobStatus,
    pub stage: Stage,
    pub progress: f64,
    pub engine: String,
    pub params: String,
    pub input: String,
    pub output_plan: String,
    pub callback_url: Option<String>,
    pub vtag: f64,
    pub attempts: i64,
    pub worker_id: Option<WorkerId>,
    pub lease_expires_at: Option<UnixMillis>,
    pub counts_toward_quota: bool,
    pub error_code: Option<String>,
    /// One line for the user (never paths or tool output).
    pub error_message: Option<String>,
    /// The operator's detail of a failure: logged, and shown to platform admins only.
    pub error_detail: Option<String>,
    pub result_key: Option<String>,
    pub result_bytes: Option<i64>,
    pub created_at: UnixMillis,
    pub started_at: Option<UnixMillis>,
    pub finished_at: Option<UnixMillis>,
    pub updated_at: UnixMillis,
    /// Parameters the request gave that the engine does not use, in `PARAM_FIELDS` order.
    pub ignored_parameters: Vec<String>,
}

/// Which jobs a caller may see: their tenant's (admins) or only their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobScope {
    pub tenant: TenantScope,
    pub user: Option<UserId>,
}

/// The plan limits checked atomically when a job is created.
#[derive(Debug, Clone, Copy)]
pub struct QuotaLimits {
    pub videos_per_day: i64,
    pub max_concurrent_jobs: i64,
    pub priority_weight: f64,
    /// Start of the current quota day (Unix ms, UTC midnight).
    pub day_start: UnixMillis,
}

/// Why a job could not be created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaRefusal {
    Daily,
    Concurrent,
}

impl QuotaRefusal {
    /// The refusal `usage` earns under `limits`, if any: the daily count first.
    pub fn check(usage: QuotaUsage, limits: &QuotaLimits) -> Option<Self> {
        if usage.today >= limits.videos_per_day {
            Some(QuotaRefusal::Daily)
        } else if usage.active >= limits.max_concurrent_jobs {
            Some(QuotaRefusal::Concurrent)
        } else {
            None
        }
    }
}

/// A user's quota use: jobs counted today and jobs queued or running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaUsage {
    pub today: i64,
    pub active: i64,
}

/// How a job ended, as reported by its worker.
#[derive(Debug, Clone)]
pub enum JobOutcome {
    Succeeded {
        result_key: String,
        result_bytes: i64,
    },
    /// `refund` gives the quota back (server-side failures).
    Failed {
        code: String,
        /// One line for the user.
        message: String,
        /// For the operator: logs and platform admins.
        detail: String,
        refund: bool,
    },
}

/// An `Idempotency-Key` lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdempotencyState {
    /// The key is now reserved for this request.
    Reserved,
    /// The same request is still being created.
    InProgress,
    /// The key was used for a different request.
    Mismatch,
    /// The same request created this job.
    Existing(JobId),
}

/// A job whose lease expired.
#[derive(Debug, Clone)]
pub struct ExpiredLease {
    pub job: JobRecord,
    /// False when it ran out of attempts and failed with `worker_lost`.
    pub requeued: bool,
}

/// Job storage.
#[async_trait]
pub trait JobStore: Send + Sync {
    /// Inserts a queued job unless the user's quota is exhausted; computes its fair-queue tag.
    async fn create_job(
        &self,
        job: &JobRecord,
        limits: &QuotaLimits,
    ) -> StoreResult<Result<JobRecord, QuotaRefusal>>;
    /// A read-only look at the quota (the atomic check is in `create_job`): lets intake refuse an
    /// exhausted quota before it spends CPU on probing the upload.
    async fn quota_usage(&self, user: UserId, day_start: UnixMillis) -> StoreResult<QuotaUsage>;
    async fn job(&self, scope: JobScope, id: JobId) -> StoreResult<Option<JobRecord>>;
    /// Newest first; `before` is the cursor `(created_at, id)` of the last job of the previous page.
    async fn list_jobs(
        &self,
        scope: JobScope,
        status: Option<JobStatus>,
        before: Option<(UnixMillis, JobId)>,
        limit: i64,
    ) -> StoreResult<Vec<JobRecord>>;
    /// How many queued jobs will be dispatched before this one.
    async fn queue_position(&self, job: &JobRecord) -> StoreResult<i64>;
    /// Claims the next job in fair order for a worker, with a lease until `lease_until`.
    async fn claim_job(
        &self,
        worker_id: &WorkerId,
        engines: &[String],
        now: UnixMillis,
        lease_until: UnixMillis,
    ) -> StoreResult<Option<JobRecord>>;
    /// Extends the lease; `false` when the job is no longer this worker's running job (cancelled, deleted, lost).
    async fn heartbeat(
        &self,
        id: JobId,
        worker_id: &WorkerId,
        now: UnixMillis,
        lease_until: UnixMillis,
    ) -> StoreResult<bool>;
    /// Records progress; reports that arrive out of order (lower than what is stored) are ignored.
    async fn set_progress(
        &self,
        id: JobId,
        worker_id: &WorkerId,
        stage: Stage,
        progress: f64,
        now: UnixMillis,
    ) -> StoreResult<bool>;
    /// Records the end of a running job; `None` when it is no longer this worker's.
    async fn finish_job(
        &self,
        id: JobId,
        worker_id: &WorkerId,
        outcome: &JobOutcome,
        now: UnixMillis,
    ) -> StoreResult<Option<JobRecord>>;
    /// Puts a running job of this worker back in the queue at its place (its engine's instance
    /// failed, not the job), unless it has used `max_attempts`. `None`: not requeued (no longer
    /// this worker's, or out of attempts).
    async fn requeue_job(
        &self,
        id: JobId,
        worker_id: &WorkerId,
        max_attempts: i64,
        now: UnixMillis,
    ) -> StoreResult<Option<JobRecord>>;
    /// Hands a running job of this worker back to the queue at its place without using up an
    /// attempt: the process is shutting down, nothing went wrong with the job or its engine.
    /// `None`: no longer this worker's.
    async fn release_job(
        &self,
        id: JobId,
        worker_id: &WorkerId,
        now: UnixMillis,
    ) -> StoreResult<Option<JobRecord>>;
    /// Cancels a queued or running job (a queued one gives its quota back).
    async fn cancel_job(
        &self,
        scope: JobScope,
        id: JobId,
        now: UnixMillis,
    ) -> StoreResult<Option<JobRecord>>;
    /// Deletes a job (a running one is cancelled); returns it so its files can be removed. The hidden row
    /// keeps counting toward the daily quota.
    async fn delete_job(
        &self,
        scope: JobScope,
        id: JobId,
        now: UnixMillis,
    ) -> StoreResult<Option<JobRecord>>;
    /// Records that a finished job's video was removed (retention): it no longer has a result.
    async fn forget_result(&self, id: JobId, now: UnixMillis) -> StoreResult<()>;
    /// Returns jobs whose lease expired to the queue, or fails them after `max_attempts`.
    async fn expire_leases(
        &self,
        now: UnixMillis,
        max_attempts: i64,
    ) -> StoreResult<Vec<ExpiredLease>>;

    async fn reserve_idempotency_key(
        &self,
        user: UserId,
        key: &str,
        request_hash: &str,
        now: UnixMillis,
    ) -> StoreResult<IdempotencyState>;
    async fn complete_idempotency_key(
        &self,
        user: UserId,
        key: &str,
        job: JobId,
    ) -> StoreResult<()>;
    async fn release_idempotency_key(&self, user: UserId, key: &str) -> StoreResult<()>;
}
