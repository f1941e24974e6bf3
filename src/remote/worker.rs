//! The lanes of a remote worker, like the server's in-process workers: reserve a place on the
//! engine, lease a job for it, download the inputs, run the engine while heartbeats renew the lease
//! (a lost lease drops the engine's future, which stops it), then upload the video or report the
//! failure. On shutdown a lane stops leasing; a job it was running is reported back for a retry.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::client::{Client, Heartbeat, Lease};
use crate::domain::{SonicParams, Stage};
use crate::engines::{Engine, EngineError, EngineJob, ProgressFn};
use crate::videos::view::{JobInput, OutputPlan};

/// How long one lease request waits on the gateway.
const LEASE_WAIT: Duration = Duration::from_secs(20);
/// How soon a failed presence report is tried again.
const PRESENCE_RETRY: Duration = Duration::from_secs(5);
/// Progress is sent at most this often (a stage change at once).
const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);

/// Runs `lanes` lanes of `engine` until `stop` turns true.
pub async fn run(
    client: Arc<Client>,
    engine: Arc<dyn Engine>,
    lanes: usize,
    work_dir: PathBuf,
    stop: watch::Receiver<bool>,
) {
    let mut tasks = tokio::task::JoinSet::new();
    for lane in 0..lanes {
        let (client, engine, dir, stop) = (
            Arc::clone(&client),
            Arc::clone(&engine),
            work_dir.join(format!("lane-{lane}")),
            stop.clone(),
        );
        tasks.spawn(async move { run_lane(client, engine, dir, stop).await });
    }
    while tasks.join_next().await.is_some() {}
}

async fn run_lane(
    client: Arc<Client>,
    engine: Arc<dyn Engine>,
    dir: PathBuf,
    mut stop: watch::Receiver<bool>,
) {
    let names = vec![engine.capabilities().name];
    while !*stop.borrow() {
        let slot = tokio::select! {
            slot = engine.reserve() => slot,
            _ = stop.wait_for(|s| *s) => return,
        };
        let leased = tokio::select! {
            leased = client.lease(&names, LEASE_WAIT) => leased,
            _ = stop.wait_for(|s| *s) => return,
        };
        match leased {
            Ok(Some(lease)) => {
                let _ = tokio::fs::remove_dir_all(&dir).await;
                run_job(&client, engine.as_ref(), lease, &dir, slot, stop.clone()).await;
                let _ = tokio::fs::remove_dir_all(&dir).await;
            }
            Ok(None) => {}
            Err(err) => {
                drop(slot);
                tracing::warn!(error = %format!("{err:#}"), "leasing a job failed");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(2)) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
        }
    }
}

/// Why a job's run ended without an outcome to report.
enum Interrupted {
    Lost,
    Stopping,
}

#[tracing::instrument(name = "remote.job", skip_all, fields(job_id = %lease.job.id, engine = %lease.job.engine, attempt = lease.job.attempt))]
async fn run_job(
    client: &Client,
    engine: &dyn Engine,
    lease: Lease,
    dir: &Path,
    slot: crate::engines::Slot,
    mut stop: watch::Receiver<bool>,
) {
    let job = lease.job.id;
    let instance = slot.instance().map(str::to_owned);
    let (progress_tx, progress_rx) = watch::channel((Stage::Preprocessing, 0.0));
    let out = dir.join("video.mp4");
    let work =
        async { prepare_and_generate(client, engine, &lease, dir, &out, slot, progress_tx).await };
    let beats = keep_lease(client, &lease, progress_rx);
    let outcome = tokio::select! {
        outcome = work => Ok(outcome),
        () = beats => Err(Interrupted::Lost),
        _ = stop.wait_for(|s| *s) => Err(Interrupted::Stopping),
    };
    let reported = match outcome {
        Ok(Ok(())) => match client
            .upload(job, &lease.lease_id, &out, instance.as_deref())
            .await
        {
            Ok(Err(refusal)) => {
                let err = EngineError::server(
                    "engine_failed",
                    format!("the result was refused: {refusal}"),
                );
                client.fail(job, &lease.lease_id, &err).await
            }
            other => other.map(drop),
        },
        Ok(Err(err)) => {
            tracing::warn!(code = err.code, detail = %err.detail, "job failed here");
            client.fail(job, &lease.lease_id, &err).await
        }
        Err(Interrupted::Lost) => {
            tracing::info!("job stopped: no longer ours to run");
            Ok(())
        }
        Err(Interrupted::Stopping) => {
            let err = EngineError::retry_elsewhere(
                "worker_stopped",
                "the remote worker is shutting down",
            );
            client.fail(job, &lease.lease_id, &err).await
        }
    };
    if let Err(err) = reported {
        // The lease expires and the gateway requeues the job.
        tracing::warn!(error = %format!("{err:#}"), "reporting a job's end failed");
    }
}

/// Heartbeats every third of the lease, and on progress (at most every `PROGRESS_INTERVAL`);
/// returns when the lease is lost.
async fn keep_lease(client: &Client, lease: &Lease, mut progress: watch::Receiver<(Stage, f64)>) {
    let every = Duration::from_secs(lease.lease_expires_in_s.max(3)) / 3;
    let mut last = Instant::now();
    let mut last_stage = Stage::Preprocessing;
    loop {
        let changed = tokio::select! {
            () = tokio::time::sleep_until((last + every).into()) => false,
            changed = progress.changed() => changed.is_ok(),
        };
        let (stage, value) = *progress.borrow_and_update();
        if changed && stage == last_stage && last.elapsed() < PROGRESS_INTERVAL {
            continue;
        }
        last = Instant::now();
        last_stage = stage;
        match client
            .heartbeat(lease.job.id, &lease.lease_id, stage, value)
            .await
        {
            Ok(Heartbeat::Renewed) => {}
            Ok(Heartbeat::Lost) => return,
            Err(err) => tracing::warn!(error = %format!("{err:#}"), "heartbeat failed"),
        }
        if !changed && progress.has_changed().is_err() {
            // The job finished; the select in `run_job` has already taken its outcome.
            std::future::pending::<()>().await;
        }
    }
}

async fn prepare_and_generate(
    client: &Client,
    engine: &dyn Engine,
    lease: &Lease,
    dir: &Path,
    out: &Path,
    slot: crate::engines::Slot,
    progress_tx: watch::Sender<(Stage, f64)>,
) -> Result<(), EngineError> {
    let internal = |e: anyhow::Error| EngineError::server("internal", format!("{e:#}"));
    let job = &lease.job;
    let params: SonicParams =
        serde_json::from_value(job.params.clone()).map_err(|e| internal(e.into()))?;
    let input: JobInput =
        serde_json::from_value(job.input.clone()).map_err(|e| internal(e.into()))?;
    let output: OutputPlan =
        serde_json::from_value(job.output.clone()).map_err(|e| internal(e.into()))?;
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| internal(e.into()))?;
    let image_path = dir.join(format!("image.{}", input.image.format));
    let audio_path = dir.join(format!("audio.{}", input.audio.stored_format()));
    for (url, path) in [(&job.image_url, &image_path), (&job.audio_url, &audio_path)] {
        client
            .download(url, &lease.lease_id, path)
            .await
            .map_err(|e| EngineError::retry_elsewhere("input_missing", format!("{e:#}")))?;
    }
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
        workdir: dir.to_path_buf(),
        expected_s: job.expected_s.filter(|s| s.is_finite() && *s > 0.0),
    };
    let progress: ProgressFn = Arc::new(move |stage, value| {
        progress_tx.send_replace((stage, value));
    });
    engine.generate(&engine_job, out, progress, slot).await
}

/// How `sonicgw worker` was asked to run.
pub struct WorkerOptions {
    pub server: String,
    pub client_id: String,
    pub client_secret: String,
    /// `builtin`, `sonic` (over `comfyui_urls`) or `simulated` (tests).
    pub engine: String,
    pub comfyui_urls: Vec<String>,
    /// Lanes of an engine that does not bound itself (a GPU pool has one per place).
    pub lanes: usize,
}

/// Builds the engine, then runs its lanes until SIGTERM or Ctrl-C.
pub async fn serve(
    mut config: crate::config::Config,
    options: WorkerOptions,
) -> anyhow::Result<()> {
    // Registered first: a SIGTERM during start-up is a request to stop, not a kill.
    let signal = crate::app::shutdown_signal()?;
    if options.engine == "sonic" {
        if !options.comfyui_urls.is_empty() {
            config.comfyui_urls = options.comfyui_urls.clone();
        }
        anyhow::ensure!(
            !config.comfyui_urls.is_empty(),
            "--engine sonic needs --comfyui-url (or comfyui_urls)"
        );
    } else {
        config.comfyui_urls.clear();
    }
    let engines = crate::app::build_engines(&config).await?;
    let engine = engines.get(&options.engine).cloned().ok_or_else(|| {
        anyhow::anyhow!(
            "engine {:?} is not available here ({})",
            options.engine,
            engines.names().join(", ")
        )
    })?;
    let work_dir = config.data_dir.join("worker");
    crate::app::owner_only_dir(&config.data_dir)?;
    crate::app::owner_only_dir(&work_dir)?;
    let client = Arc::new(Client::new(
        &options.server,
        options.client_id,
        options.client_secret,
    )?);
    let lanes = engine.lanes().unwrap_or(options.lanes.max(1));
    let (stop_tx, stop) = watch::channel(false);
    tokio::spawn(async move {
        signal.await;
        tracing::info!("stopping: no new leases; running jobs are handed back");
        stop_tx.send_replace(true);
    });
    tracing::info!(engine = %options.engine, lanes, server = %options.server, "remote worker started");
    let presence = tokio::spawn(report_presence(
        Arc::clone(&client),
        Arc::clone(&engine),
        lanes,
        stop.clone(),
    ));
    run(
        Arc::clone(&client),
        Arc::clone(&engine),
        lanes,
        work_dir,
        stop,
    )
    .await;
    let _ = presence.await;
    Ok(())
}

/// Reports this process's capacity (healthy GPU places, or its lanes) to the gateway as often as it
/// asks, and zero when stopping, so that the gateway's ETAs count exactly the hosts that can run jobs.
async fn report_presence(
    client: Arc<Client>,
    engine: Arc<dyn Engine>,
    lanes: usize,
    mut stop: watch::Receiver<bool>,
) {
    let process = uuid::Uuid::new_v4().simple().to_string();
    let name = engine.capabilities().name;
    loop {
        let capacity = engine.capacity().unwrap_or(lanes);
        let every = match client.report_presence(&process, &name, capacity).await {
            Ok(next) => next,
            Err(err) => {
                tracing::warn!(error = %format!("{err:#}"), "reporting this worker's capacity failed");
                PRESENCE_RETRY
            }
        };
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    if let Err(err) = client.report_presence(&process, &name, 0).await {
        tracing::debug!(error = %format!("{err:#}"), "withdrawing this worker's capacity failed");
    }
}
