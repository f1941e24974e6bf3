//! Workers: claim a job with a lease, heartbeat while an engine runs it, store the MP4, record the end.
//! A job whose lease expires (its worker died) goes back to the queue, up to `max_attempts`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{field, field::Empty, Instrument, Span};

use super::events::Notice;
use super::view::{JobInput, OutputPlan};
use super::{input_key, result_key, VideoService};
use crate::audit::{AuditAction, AuditContext, AuditEvent, Outcome};
use crate::domain::{JobStatus, SonicParams, Stage, WorkerId};
use crate::engines::{Engine, EngineError, EngineJob, ProgressFn, Slot};
use crate::storage::jobs::{JobOutcome, JobRecord};
use crate::storage::StoreResult;
use crate::time::now_ms;

/// Why a job's run ended without an outcome of its engine.
enum Interrupted {
    /// The job is no longer this worker's (cancelled, deleted, taken over).
    Lost,
    /// The process is shutting down.
    ShuttingDown,
}

/// How often the progress of a running job is written to the database at most.
const PROGRESS_INTERVAL_MS: u64 = 500;

/// Starts the workers on the service's task tracker. Engines bounded by the
/// `workers` setting (CPU engines) share `count` workers; an engine that bounds itself (a GPU
/// pool) gets one worker per place, and each reserves its place before it claims a job. With
/// `count` 0 this process runs no jobs at all. They stop when `shutdown` turns true: an idle
/// worker at once, a busy one after it has stopped its engine and handed the job back to the
/// queue (`release_job`), so another worker takes it at once instead of after its lease.
pub fn spawn_workers(service: Arc<VideoService>, count: usize, shutdown: watch::Receiver<bool>) {
    let mut shared = Vec::new();
    let mut lanes: Vec<Arc<dyn Engine>> = Vec::new();
    for engine in service.engines.all() {
        match engine.lanes() {
            None => shared.push(engine.capabilities().name),
            Some(places) => lanes.extend(std::iter::repeat_n(Arc::clone(engine), places)),
        }
    }
    let mut ids = WorkerId::for_new_instance(count + lanes.len()).into_iter();
    let mut workers = Vec::new();
    if !shared.is_empty() {
        for worker_id in ids.by_ref().take(count) {
            workers.push(Arc::clone(&service).work(
                worker_id,
                shared.clone(),
                None,
                shutdown.clone(),
            ));
        }
    }
    for (engine, worker_id) in lanes.into_iter().zip(ids) {
        let names = vec![engine.capabilities().name];
        workers.push(Arc::clone(&service).work(worker_id, names, Some(engine), shutdown.clone()));
    }
    for worker in workers {
        service.tasks.spawn(worker);
    }
}

/// Starts the lease reaper: jobs whose worker (in-process or remote) stopped renewing its lease go
/// back to the queue. Every server runs it, also one without workers of its own.
pub fn spawn_lease_reaper(service: Arc<VideoService>, mut stop: watch::Receiver<bool>) {
    let tasks = service.tasks.clone();
    tasks.spawn(async move {
        tokio::select! {
            () = service.reap_expired_leases() => {}
            _ = stop.wait_for(|stop| *stop) => {}
        }
    });
}

impl VideoService {
    /// Claims jobs of `engines` one at a time; with `reserving`, only while holding a place that
    /// engine reserved. Returns when `stop` turns true.
    async fn work(
        self: Arc<Self>,
        worker_id: WorkerId,
        engines: Vec<String>,
        reserving: Option<Arc<dyn Engine>>,
        mut stop: watch::Receiver<bool>,
    ) {
        while !*stop.borrow() {
            let slot = match &reserving {
                Some(engine) => tokio::select! {
                    slot = engine.reserve() => slot,
                    _ = stop.wait_for(|stop| *stop) => return,
                },
                None => Slot::unbounded(),
            };
            let queued = self.events.next_queued();
            match self.claim(&worker_id, &engines).await {
                Ok(Some(job)) => {
                    self.events.changed(job.id);
                    self.run(&worker_id, job, slot, stop.clone()).await;
                }
                Ok(None) => {
                    drop(slot);
                    // Idle: wake on a job queued in any process the bus reaches, else poll.
                    tokio::select! {
                        _ = tokio::time::timeout(self.settings.poll, queued) => {}
                        _ = stop.wait_for(|stop| *stop) => return,
                    }
                }
                Err(err) => {
                    drop(slot);
                    tracing::error!(worker = %worker_id, error = %err, "claiming a job failed");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = stop.wait_for(|stop| *stop) => return,
                    }
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
    pub(super) async fn claim(
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
    async fn run(
        self: &Arc<Self>,
        worker_id: &WorkerId,
        job: JobRecord,
        slot: Slot,
        mut stop: watch::Receiver<bool>,
    ) {
        let workdir = self.settings.work_dir.join("jobs").join(job.id.to_string());
        let outcome = tokio::select! {
            outcome = self.generate(worker_id, &job, &workdir, slot) => Ok(outcome),
            () = self.keep_lease(worker_id, &job) => Err(Interrupted::Lost),
            _ = stop.wait_for(|stop| *stop) => Err(Interrupted::ShuttingDown),
        };
        let _ = tokio::fs::remove_dir_all(&workdir).await;
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(Interrupted::Lost) => {
                // Cancelled, deleted or taken over: dropping the engine's future stopped it.
                Span::current().record("outcome", "stopped");
                tracing::info!(job = %job.id, "job stopped: no longer ours to run");
                self.events.changed(job.id);
                return;
            }
            Err(Interrupted::ShuttingDown) => {
                Span::current().record("outcome", "released");
                self.release(worker_id, &job).await;
                return;
            }
        };
        Span::current().record(
            "outcome",
            match &outcome {
                Ok(_) => "succeeded",
                Err(err) => err.code,
            },
        );
        if let Err(err) = &outcome {
            if err.retry && self.requeue(worker_id, &job, err.code, &err.detail).await {
                return;
            }
        }
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
        self.record_end(worker_id, &job, &outcome).await;
    }

    /// Records the end of a job this worker runs (audit and webhook when it was still ours; an
    /// unwanted result is removed when it was not). `true` when the end was recorded.
    pub(super) async fn record_end(
        &self,
        worker_id: &WorkerId,
        job: &JobRecord,
        outcome: &JobOutcome,
    ) -> bool {
        let recorded = match self
            .store
            .finish_job(job.id, worker_id, outcome, now_ms())
            .await
        {
            Ok(Some(finished)) => {
                self.finished(&finished).await;
                true
            }
            Ok(None) => {
                // Cancelled or deleted while the engine was finishing: its video is not wanted.
                tracing::info!(job = %job.id, "job ended elsewhere before it finished here");
                if let JobOutcome::Succeeded { result_key, .. } = outcome {
                    // Another upload of this job (a worker's retried request) may have succeeded
                    // with the same key: its video stays.
                    let scope = crate::storage::jobs::JobScope {
                        tenant: crate::storage::TenantScope::by_trusted_id(),
                        user: None,
                    };
                    let succeeded = matches!(
                        self.store.job(scope, job.id).await,
                        Ok(Some(now)) if now.status == JobStatus::Succeeded
                    );
                    if !succeeded {
                        if let Err(err) = self.blobs.delete(result_key).await {
                            tracing::warn!(job = %job.id, error = %err, "removing an unwanted result failed");
                        }
                    }
                }
                false
            }
            Err(err) => {
                tracing::error!(job = %job.id, error = %err, "recording the end of a job failed");
                false
            }
        };
        self.events.changed(job.id);
        recorded
    }

    /// Puts the job back in the queue after its engine's machine failed; `false` when it is out of
    /// attempts (or no longer ours) and must end here.
    pub(super) async fn requeue(
        &self,
        worker_id: &WorkerId,
        job: &JobRecord,
        code: &str,
        detail: &str,
    ) -> bool {
        match self
            .store
            .requeue_job(job.id, worker_id, self.settings.max_attempts, now_ms())
            .await
        {
            Ok(Some(_)) => {
                tracing::warn!(job = %job.id, attempt = job.attempts, code, detail, "job requeued: its engine failed under it");
                metrics::counter!("jobs_requeued_total", "engine" => job.engine.clone())
                    .increment(1);
                self.events.changed(job.id);
                self.events.queued();
                true
            }
            Ok(None) => false,
            Err(store) => {
                tracing::error!(job = %job.id, error = %store, "requeueing a job failed");
                false
            }
        }
    }

    /// Hands the job back to the queue on shutdown (its engine was stopped), without using up an
    /// attempt. If that fails, its lease expires and the reaper requeues it.
    async fn release(&self, worker_id: &WorkerId, job: &JobRecord) {
        match self.store.release_job(job.id, worker_id, now_ms()).await {
            Ok(Some(_)) => {
                tracing::info!(job = %job.id, "shutting down: job handed back to the queue");
                metrics::counter!("jobs_released_total", "engine" => job.engine.clone())
                    .increment(1);
                self.events.changed(job.id);
                self.events.queued();
            }
            Ok(None) => {}
            Err(err) => {
                tracing::warn!(job = %job.id, error = %err, "handing a job back failed; its lease will expire")
            }
        }
    }

    /// Heartbeats until the job is no longer this worker's (then returns, which cancels the engine).
    pub(super) async fn keep_lease(&self, worker_id: &WorkerId, job: &JobRecord) {
        let mut tick = tokio::time::interval(self.settings.lease / 3);
        let mut stopped = self.events.subscribe_stopped();
        tick.tick().await;
        loop {
            // A cancel or delete announced on the bus (or in this process) is checked at once;
            // others' at the heartbeat.
            tokio::select! {
                _ = tick.tick() => {}
                stop = stopped.recv() => match stop {
                    Ok(Notice::Job(id)) if id == job.id => {}
                    Ok(Notice::Missed) => {}
                    Ok(Notice::Job(_)) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                        stopped = self.events.subscribe_stopped();
                    }
                },
            }
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
        slot: Slot,
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
        let audio_path = workdir.join(format!("audio.{}", input.audio.stored_format()));
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
        fetch(
            "audio",
            input.audio.stored_format().to_owned(),
            audio_path.clone(),
        )
        .await?;

        let work = super::eta::Work::new(&params, &output);
        let instance = slot.instance().map(str::to_owned);
        let expected_s = self.costs.estimate(&job.engine, instance.as_deref(), work);
        let engine_job = EngineJob {
            expected_s: Some(expected_s),
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
            .generate(&engine_job, &out, Arc::clone(&progress), slot)
            .instrument(span)
            .await?;
        self.costs
            .observe(
                &job.engine,
                instance.as_deref().unwrap_or(""),
                work,
                started.elapsed(),
            )
            .await;
        let labelled = self.label_output(job, &out).await?;
        progress(Stage::Storing, 1.0);
        self.blobs
            .put_file(&result_key(job.tenant_id, job.id), &labelled)
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
            let webhook = crate::storage::QueuedWebhook {
                message_id: format!("msg_{}_{}", job.id, job.status),
                tenant_id: job.tenant_id,
                url,
                body,
                attempts: 0,
            };
            // Queued, not sent from here: whichever process drains the outbox delivers it, also
            // when this one dies before it could (`videos::outbox`).
            match self.store.queue_webhook(&webhook, now_ms()).await {
                Ok(_) => self.webhooks.wake(),
                Err(err) => {
                    tracing::error!(job = %job.id, error = %err, "queueing the webhook failed")
                }
            }
        }
    }
}
