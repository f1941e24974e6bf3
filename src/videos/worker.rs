//! Workers: claim a job with a lease, heartbeat while an engine runs it, store the MP4, record the end.
//! A job whose lease expires (its worker died) goes back to the queue, up to `max_attempts`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{field, field::Empty, Instrument, Span};

use super::view::{JobInput, OutputPlan};
use super::{input_key, result_key, VideoService};
use crate::audit::{AuditAction, AuditContext, AuditEvent, Outcome};
use crate::domain::{JobStatus, SonicParams, Stage, WorkerId};
use crate::engines::{EngineError, EngineJob, ProgressFn};
use crate::storage::jobs::{JobOutcome, JobRecord};
use crate::storage::StoreResult;
use crate::time::now_ms;

/// How often the progress of a running job is written to the database at most.
const PROGRESS_INTERVAL_MS: u64 = 500;

/// Starts `count` workers and the lease reaper on the service's task tracker. They stop when
/// `shutdown` turns true; a job being run then stays `running` until its lease expires and another
/// worker takes it over.
pub fn spawn_workers(service: Arc<VideoService>, count: usize, shutdown: watch::Receiver<bool>) {
    for worker_id in WorkerId::for_new_instance(count) {
        let mut stop = shutdown.clone();
        let worker = Arc::clone(&service).work(worker_id);
        service.tasks.spawn(async move {
            tokio::select! {
                () = worker => {}
                _ = stop.wait_for(|stop| *stop) => {}
            }
        });
    }
    let mut stop = shutdown;
    let tasks = service.tasks.clone();
    tasks.spawn(async move {
        tokio::select! {
            () = service.reap_expired_leases() => {}
            _ = stop.wait_for(|stop| *stop) => {}
        }
    });
}

impl VideoService {
    async fn work(self: Arc<Self>, worker_id: WorkerId) {
        let engines = self.engines.names();
        loop {
            match self.claim(&worker_id, &engines).await {
                Ok(Some(job)) => {
                    self.events.changed(job.id);
                    self.run(&worker_id, job).await;
                }
                Ok(None) => {
                    // Idle: wake on a new job in this process, or poll for other processes' jobs.
                    let _ =
                        tokio::time::timeout(Duration::from_secs(1), self.events.wait_for_queued())
                            .await;
                }
                Err(err) => {
                    tracing::error!(worker = %worker_id, error = %err, "claiming a job failed");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// Claims the next job for `worker_id`, with a lease.
    #[tracing::instrument(
        name = "worker.claim",
        skip_all,
        fields(worker_id = %worker_id, job_id = Empty, engine = Empty, attempt = Empty)
    )]
    async fn claim(
        &self,
        worker_id: &WorkerId,
        engines: &[String],
    ) -> StoreResult<Option<JobRecord>> {
        let now = now_ms();
        let lease_until = now + self.settings.lease;
        let job = self
            .store
            .claim_job(worker_id, engines, now, lease_until)
            .await?;
        if let Some(job) = &job {
            let span = Span::current();
            span.record("job_id", field::display(job.id));
            span.record("engine", job.engine.as_str());
            span.record("attempt", job.attempts);
        }
        Ok(job)
    }

    async fn reap_expired_leases(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.settings.lease / 4);
        loop {
            tick.tick().await;
            match self
                .store
                .expire_leases(now_ms(), self.settings.max_attempts)
                .await
            {
                Ok(expired) => {
                    for lease in expired {
                        tracing::warn!(job = %lease.job.id, requeued = lease.requeued, "a job's lease expired");
                        self.events.changed(lease.job.id);
                        if lease.requeued {
                            self.events.queued();
                        } else {
                            self.finished(&lease.job).await;
                        }
                    }
                }
                Err(err) => tracing::error!(error = %err, "expiring leases failed"),
            }
        }
    }

    #[tracing::instrument(
        name = "job.run",
        skip_all,
        fields(
            worker_id = %worker_id,
            job_id = %job.id,
            engine = %job.engine,
            attempt = job.attempts,
            outcome = Empty,
        )
    )]
    async fn run(self: &Arc<Self>, worker_id: &WorkerId, job: JobRecord) {
        let workdir = self.settings.work_dir.join("jobs").join(job.id.to_string());
        let outcome = tokio::select! {
            outcome = self.generate(worker_id, &job, &workdir) => Some(outcome),
            () = self.keep_lease(worker_id, &job) => None,
        };
        let _ = tokio::fs::remove_dir_all(&workdir).await;
        let Some(outcome) = outcome else {
            // Cancelled, deleted or taken over: dropping the engine's future stopped it.
            Span::current().record("outcome", "stopped");
            tracing::info!(job = %job.id, "job stopped: no longer ours to run");
            self.events.changed(job.id);
            return;
        };
        Span::current().record(
            "outcome",
            match &outcome {
                Ok(_) => "succeeded",
                Err(err) => err.code,
            },
        );
        let outcome = match outcome {
            Ok(bytes) => JobOutcome::Succeeded {
                result_key: result_key(job.tenant_id, job.id),
                result_bytes: bytes as i64,
            },
            Err(err) => {
                tracing::warn!(job = %job.id, code = err.code, server_side = err.server_side, detail = %err.detail, "job failed");
                JobOutcome::Failed {
                    code: err.code.to_owned(),
                    message: err.message,
                    detail: err.detail,
                    refund: err.server_side,
                }
            }
        };
        match self
            .store
            .finish_job(job.id, worker_id, &outcome, now_ms())
            .await
        {
            Ok(Some(finished)) => self.finished(&finished).await,
            Ok(None) => {
                // Cancelled or deleted while the engine was finishing: its video is not wanted.
                tracing::info!(job = %job.id, "job ended elsewhere before it finished here");
                if let Err(err) = self.blobs.delete(&result_key(job.tenant_id, job.id)).await {
                    tracing::warn!(job = %job.id, error = %err, "removing an unwanted result failed");
                }
            }
            Err(err) => {
                tracing::error!(job = %job.id, error = %err, "recording the end of a job failed")
            }
        }
        self.events.changed(job.id);
    }

    /// Heartbeats until the job is no longer this worker's (then returns, which cancels the engine).
    async fn keep_lease(&self, worker_id: &WorkerId, job: &JobRecord) {
        let mut tick = tokio::time::interval(self.settings.lease / 3);
        tick.tick().await;
        loop {
            tick.tick().await;
            let now = now_ms();
            let until = now + self.settings.lease;
            match self.store.heartbeat(job.id, worker_id, now, until).await {
                Ok(true) => {}
                Ok(false) => return,
                Err(err) => tracing::warn!(job = %job.id, error = %err, "heartbeat failed"),
            }
        }
    }

    async fn generate(
        &self,
        worker_id: &WorkerId,
        job: &JobRecord,
        workdir: &std::path::Path,
    ) -> Result<u64, EngineError> {
        let internal = |e: anyhow::Error| EngineError::server("internal", e.to_string());
        let params: SonicParams =
            serde_json::from_str(&job.params).map_err(|e| internal(e.into()))?;
        let input: JobInput = serde_json::from_str(&job.input).map_err(|e| internal(e.into()))?;
        let output: OutputPlan =
            serde_json::from_str(&job.output_plan).map_err(|e| internal(e.into()))?;
        let engine = self
            .engines
            .get(&job.engine)
            .ok_or_else(|| {
                EngineError::server(
                    "engine_unavailable",
                    format!("engine {} is not configured", job.engine),
                )
            })?
            .clone();
        tokio::fs::create_dir_all(workdir)
            .await
            .map_err(|e| internal(e.into()))?;
        let image_path = workdir.join(format!("image.{}", input.image.format));
        let audio_path = workdir.join(format!("audio.{}", input.audio.format));
        let fetch = |name: &'static str, ext: String, path: std::path::PathBuf| async move {
            self.blobs
                .fetch_to(&input_key(job.tenant_id, job.id, name, &ext), &path)
                .await
                .map_err(|e| {
                    EngineError::server(
                        "input_missing",
                        format!("the uploaded {name} is gone: {e}"),
                    )
                })
        };
        fetch("image", input.image.format.clone(), image_path.clone()).await?;
        fetch("audio", input.audio.format.clone(), audio_path.clone()).await?;

        let work = super::eta::Work::new(&params, &output);
        let engine_job = EngineJob {
            id: job.id,
            params,
            image_path,
            audio_path,
            face: input.image.face,
            crop: input.image.crop,
            output_width: output.width,
            output_height: output.height,
            frames: output.frames,
            workdir: workdir.to_path_buf(),
        };
        let out = workdir.join("video.mp4");
        let progress = self.progress_reporter(worker_id, job);
        // Here rather than in each engine, so that every engine's work has the same span.
        let span = tracing::info_span!("engine.generate", engine = %job.engine, job_id = %job.id);
        let started = std::time::Instant::now();
        engine
            .generate(&engine_job, &out, Arc::clone(&progress))
            .instrument(span)
            .await?;
        // Instance "" until the engine names the instance that ran the job.
        self.costs
            .observe(&job.engine, "", work, started.elapsed())
            .await;
        progress(Stage::Storing, 1.0);
        self.blobs
            .put_file(&result_key(job.tenant_id, job.id), &out)
            .await
            .map_err(|e| EngineError::server("storage_failed", e.to_string()))
    }

    /// Writes progress at most every `PROGRESS_INTERVAL_MS`, and every stage change.
    fn progress_reporter(&self, worker_id: &WorkerId, job: &JobRecord) -> ProgressFn {
        let store = Arc::clone(&self.store);
        let events = self.events.clone();
        let tasks = self.tasks.clone();
        let worker_id = worker_id.clone();
        let id = job.id;
        let last_write = Arc::new(AtomicU64::new(0));
        let last_stage = Arc::new(std::sync::Mutex::new(Stage::Preprocessing));
        Arc::new(move |stage: Stage, progress: f64| {
            let now = now_ms();
            let now_u64 = now.as_millis() as u64;
            let stage_changed = {
                let mut last = last_stage.lock().unwrap_or_else(|e| e.into_inner());
                let changed = *last != stage;
                *last = stage;
                changed
            };
            if !stage_changed
                && now_u64.saturating_sub(last_write.load(Ordering::Relaxed)) < PROGRESS_INTERVAL_MS
            {
                return;
            }
            last_write.store(now_u64, Ordering::Relaxed);
            let store = Arc::clone(&store);
            let events = events.clone();
            let worker_id = worker_id.clone();
            tasks.spawn(async move {
                let progress = progress.clamp(0.0, 1.0);
                if let Ok(true) = store
                    .set_progress(id, &worker_id, stage, progress, now)
                    .await
                {
                    events.changed(id);
                }
            });
        })
    }

    /// After a job reached a final status: audit it and notify its callback.
    pub(crate) async fn finished(&self, job: &JobRecord) {
        let (action, outcome) = match job.status {
            JobStatus::Succeeded => (AuditAction::VideoSucceeded, Outcome::Success),
            JobStatus::Cancelled => (AuditAction::VideoCancelled, Outcome::Success),
            _ => (AuditAction::VideoFailed, Outcome::Failure),
        };
        let context = AuditContext::default().with_actor(job.user_id, job.tenant_id);
        let mut event = AuditEvent::new(action, outcome).target(job.id);
        if let Some(code) = &job.error_code {
            event = event.reason(code);
        }
        self.auditor.record(&context, event).await;
        if let Some(url) = job.callback_url.clone() {
            let body = match self
                .view(job)
                .await
                .and_then(|v| Ok(serde_json::to_string(&v)?))
            {
                Ok(body) => body,
                Err(err) => {
                    tracing::error!(job = %job.id, error = %err, "rendering the webhook body failed");
                    return;
                }
            };
            let store = Arc::clone(&self.store);
            let (tenant, message_id) = (job.tenant_id, format!("msg_{}_{}", job.id, job.status));
            let allow_private = self.settings.webhook_allow_private;
            // Its own span, not a child of this one: a child would hold the job's run (or the cancelling
            // request) open for the whole retry schedule. The message id names the job.
            self.tasks.spawn(async move {
                super::webhook::deliver(
                    store.as_ref(),
                    tenant,
                    &url,
                    &message_id,
                    body,
                    allow_private,
                )
                .await;
            });
        }
    }
}
