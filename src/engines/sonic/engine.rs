//! The `sonic` engine: one job on one ComfyUI server. Upload the inputs, queue the workflow,
//! poll its history, download the video, and conform it to the recording.

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;

use std::sync::Arc;

use super::client::{ComfyClient, ComfyError};
use super::follow::{await_prompt, RemoteStage};
use super::outcome::{call_error, outcome};
use super::pool::{Lease, Pool, PoolSettings};
use super::workflow::JobInputs;
use super::{inputs, SonicSettings};
use crate::domain::Stage;
use crate::engines::{
    Capabilities, Engine, EngineError, EngineJob, Health, InstanceView, ProgressFn, Slot,
};
use crate::media::ffmpeg::{self, ConformSpec};

/// Largest result accepted from ComfyUI.
const MAX_RESULT_BYTES: u64 = 2 * 1024 * 1024 * 1024;
/// Sonic's 2K-1 frames are up to 3 frames short of the audio; more than this means the graph
/// cut the video (a wrong `duration` or `fps`), which must not be hidden by holding a frame.
const MAX_SHORT_FRAMES: u64 = 6;

/// Runs Sonic on a pool of ComfyUI servers with the ComfyUI_Sonic nodes, one job per reserved
/// place on one server.
pub struct SonicEngine {
    pool: Arc<Pool>,
    settings: SonicSettings,
    /// Checks the servers while the engine exists.
    watcher: tokio::task::AbortHandle,
}

impl Drop for SonicEngine {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

impl SonicEngine {
    /// Starts watching the servers' health (call inside the runtime).
    pub fn new(clients: Vec<ComfyClient>, pool: PoolSettings, settings: SonicSettings) -> Self {
        let pool = Pool::new(clients, pool);
        let watcher = tokio::spawn(Arc::clone(&pool).watch()).abort_handle();
        Self {
            pool,
            settings,
            watcher,
        }
    }
}

/// Cancels the prompt when dropped while armed: the job was cancelled, timed out or failed
/// locally after submitting. Best-effort, in the background: delete it if it is still waiting,
/// then interrupt it if it runs (in this order, so a prompt that starts in between is still
/// caught; each call is a no-op when it does not apply). The instance stays reserved until
/// ComfyUI no longer lists the prompt.
struct PromptGuard {
    lease: Lease,
    prompt_id: String,
    armed: bool,
}

impl Drop for PromptGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let lease = self.lease.clone();
        let id = std::mem::take(&mut self.prompt_id);
        runtime.spawn(async move {
            let client = &lease.instance().client;
            let deleted = client.delete_pending(&id).await;
            let interrupted = client.interrupt(&id).await;
            tracing::info!(
                prompt_id = %id,
                instance = %lease.instance().name,
                deleted = deleted.is_ok(),
                interrupted = interrupted.is_ok(),
                "ComfyUI prompt cancelled"
            );
            lease.hold_until_idle(&id).await;
        });
    }
}

#[async_trait]
impl Engine for SonicEngine {
    fn capabilities(&self) -> Capabilities {
        capabilities()
    }

    fn model(&self) -> String {
        self.settings.workflow.models().describe()
    }

    async fn health(&self) -> Health {
        let instances = self.pool.instances(false);
        let healthy = instances.iter().filter(|i| i.healthy).count();
        Health {
            healthy: healthy > 0,
            detail: format!(
                "{healthy} of {} ComfyUI instances healthy, {} jobs running",
                instances.len(),
                instances.iter().map(|i| i.busy).sum::<usize>()
            ),
        }
    }

    /// Twice the server places: a server is released as soon as its result is downloaded, so
    /// while one worker conforms that video another already runs the next job there.
    fn lanes(&self) -> Option<usize> {
        Some(2 * self.pool.lanes())
    }

    fn capacity(&self) -> Option<usize> {
        Some(self.pool.capacity())
    }

    async fn reserve(&self) -> Slot {
        let lease = self.pool.reserve().await;
        let instance = lease.instance().name.clone();
        Slot::holding(lease, instance)
    }

    fn unavailable(&self) -> Option<String> {
        self.pool.unavailable()
    }

    fn instances(&self, with_urls: bool) -> Vec<InstanceView> {
        self.pool.instances(with_urls)
    }

    async fn generate(
        &self,
        job: &EngineJob,
        out: &Path,
        progress: ProgressFn,
        slot: Slot,
    ) -> Result<(), EngineError> {
        let lease = match slot.take::<Lease>() {
            Some(lease) => lease,
            None => self.pool.reserve().await,
        };
        let work = self.run(job, out, &progress, lease);
        match tokio::time::timeout(self.settings.timeout, work).await {
            Ok(result) => result,
            // The timeout drops `run`, whose guard cancels the prompt.
            Err(_) => Err(EngineError::server(
                "engine_timeout",
                format!(
                    "the sonic job took longer than {} s",
                    self.settings.timeout.as_secs()
                ),
            )),
        }
    }
}

impl SonicEngine {
    async fn run(
        &self,
        job: &EngineJob,
        out: &Path,
        progress: &ProgressFn,
        lease: Lease,
    ) -> Result<(), EngineError> {
        let (instance, pool) = (Arc::clone(lease.instance()), Arc::clone(lease.pool()));
        let client = &instance.client;
        // A failing call: an unreachable server is marked failed and the job runs elsewhere.
        let failed = |err: ComfyError| {
            if matches!(err, ComfyError::Unreachable { .. }) {
                pool.report_failure(&instance, &err.to_string());
                EngineError::retry_elsewhere("engine_unavailable", err.to_string())
            } else {
                call_error(err)
            }
        };
        progress(Stage::Preprocessing, 0.0);
        let limits = self.settings.image_limits;
        let (image, audio, workdir) = (
            job.image_path.clone(),
            job.audio_path.clone(),
            job.workdir.clone(),
        );
        let duration = job.params.duration;
        let prepared = tokio::task::spawn_blocking(move || {
            inputs::prepare(&image, &audio, &workdir, &limits, duration)
        })
        .await
        .map_err(|e| EngineError::server("internal", e.to_string()))??;
        progress(Stage::Uploading, 0.02);

        // Job-unique names: a retry of the same job gets new ones too, and nothing else's is touched.
        let unique = format!("sonicgw-{}-{}", job.id, uuid::Uuid::new_v4().simple());
        let image_ref = client
            .upload(&format!("{unique}-face.png"), prepared.png, "image/png")
            .await
            .map_err(failed)?;
        let audio_ref = client
            .upload(&format!("{unique}-speech.wav"), prepared.wav, "audio/wav")
            .await
            .map_err(failed)?;

        let p = &job.params;
        let prompt = self.settings.workflow.build(&JobInputs {
            image: &image_ref.input_name(),
            audio: &audio_ref.input_name(),
            audio_seconds: prepared.audio_seconds.max(p.duration),
            min_resolution: p.min_resolution,
            expand_ratio: p.expand_ratio,
            seed: p.seed,
            inference_steps: p.inference_steps,
            dynamic_scale: p.dynamic_scale,
        });
        // Unique per attempt: ComfyUI keeps only the newest socket of a client id.
        let client_id = format!("sonicgw-{}-{}", job.id, uuid::Uuid::new_v4().simple());
        // Before submitting: execution events go only to this client id, from the first one on.
        let events = match client.events(&client_id).await {
            Ok(events) => Some(events),
            Err(err) => {
                tracing::warn!(instance = %instance.name, error = %err, "no ComfyUI websocket; following the prompt through /history");
                None
            }
        };
        let prompt_id = uuid::Uuid::new_v4().to_string();
        // Armed before submitting: if the answer is lost, the id still finds the prompt.
        let mut guard = PromptGuard {
            lease: lease.clone(),
            prompt_id: prompt_id.clone(),
            armed: true,
        };
        let number = client
            .submit(&prompt, &client_id, &prompt_id)
            .await
            .map_err(|err| {
                if matches!(err, ComfyError::Rejected { .. }) {
                    guard.armed = false;
                    // A model file removed since the last check: find out now, not in 10 s.
                    pool.recheck(&instance);
                }
                failed(err)
            })?;
        tracing::info!(%prompt_id, number, instance = %instance.name, "sonic prompt queued");

        let entry = self
            .follow_prompt(
                client,
                events,
                &prompt,
                &prompt_id,
                job.expected_s,
                progress,
            )
            .await
            .map_err(|err| match err {
                // Gone or forgotten mid-run: the server is checked again, the job runs elsewhere.
                ComfyError::Unreachable { .. } | ComfyError::Lost { .. } => {
                    pool.report_failure(&instance, &err.to_string());
                    EngineError::retry_elsewhere("engine_unavailable", err.to_string())
                }
                other => call_error(other),
            })?;
        // Finished one way or the other: nothing left to cancel.
        guard.armed = false;
        let file = match outcome(&entry, self.settings.workflow.output_node()) {
            Ok(file) => file,
            Err(err) => {
                pool.record_job(&instance, false);
                return Err(err);
            }
        };
        progress(Stage::Encoding, 0.9);

        let remote = job.workdir.join("comfyui.mp4");
        client
            .download(&file, &remote, MAX_RESULT_BYTES)
            .await
            .map_err(failed)?;
        // The server's part is done: free it for the next job while the result is conformed here.
        drop(guard);
        drop(lease);
        pool.record_job(&instance, true);
        check_length(&remote, job.frames).await?;
        let offset = if p.enable_lip_sync_correction {
            p.lip_sync_offset
        } else {
            0.0
        };
        ffmpeg::conform_remote_video(&ConformSpec {
            video: remote,
            audio: prepared.pcm,
            audio_offset_s: offset,
            width: job.output_width,
            height: job.output_height,
            frames: job.frames,
            out_path: out.to_path_buf(),
            timeout: Duration::from_secs(120) + Duration::from_secs_f64(p.duration * 4.0),
        })
        .await
        .map_err(|e| EngineError::server(e.code(), e.to_string()))?;
        progress(Stage::Encoding, 0.98);
        Ok(())
    }

    /// Follows the prompt to its end (see [`await_prompt`]), reporting its stages; while it
    /// generates, progress comes from the time the job should take (Sonic's sampler reports none)
    /// and never goes backwards.
    async fn follow_prompt(
        &self,
        client: &ComfyClient,
        events: Option<super::events::EventStream>,
        prompt: &serde_json::Value,
        prompt_id: &str,
        expected_s: Option<f64>,
        progress: &ProgressFn,
    ) -> Result<super::client::HistoryEntry, ComfyError> {
        let generating_since = std::sync::Mutex::new(None::<std::time::Instant>);
        let follow = await_prompt(
            client,
            events,
            prompt,
            prompt_id,
            self.settings.poll_interval,
            |stage| {
                if stage == RemoteStage::Generating {
                    *generating_since.lock().unwrap_or_else(|e| e.into_inner()) =
                        Some(std::time::Instant::now());
                }
                progress(stage.job_stage(), remote_progress(stage));
            },
        );
        tokio::pin!(follow);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                entry = &mut follow => return entry,
                _ = tick.tick() => {
                    let since = *generating_since.lock().unwrap_or_else(|e| e.into_inner());
                    if let (Some(since), Some(expected)) = (since, expected_s.filter(|e| *e > 0.0)) {
                        progress(Stage::Generating, generating_progress(since.elapsed().as_secs_f64(), expected));
                    }
                }
            }
        }
    }
}

/// Fixed progress at the start of each remote stage (the store keeps the highest value).
fn remote_progress(stage: RemoteStage) -> f64 {
    match stage {
        RemoteStage::QueuedOnGpu => 0.05,
        RemoteStage::LoadingModel => 0.08,
        RemoteStage::Generating => 0.1,
        RemoteStage::Encoding => 0.85,
    }
}

/// Progress while generating, from the expected time: 0.1 to at most 0.8, below the encoding
/// stage's 0.85 however late the job runs.
fn generating_progress(elapsed_s: f64, expected_s: f64) -> f64 {
    0.1 + 0.75 * (elapsed_s / expected_s).clamp(0.0, 0.95)
}

/// Refuses a result much shorter than the recording (see [`MAX_SHORT_FRAMES`]) or without video.
async fn check_length(remote: &Path, frames: u32) -> Result<(), EngineError> {
    let info = ffmpeg::probe(remote).await.map_err(|e| {
        EngineError::server(
            "engine_failed",
            format!("ComfyUI's result is unreadable: {e}"),
        )
    })?;
    if info.video_codec.is_none() || info.nb_frames == 0 {
        return Err(EngineError::server(
            "engine_failed",
            "ComfyUI's result has no video frames",
        ));
    }
    let fps = if info.avg_fps > 0.0 {
        info.avg_fps
    } else {
        25.0
    };
    let at_25 = (info.nb_frames as f64 * 25.0 / fps).round() as u64;
    if at_25 + MAX_SHORT_FRAMES < u64::from(frames) {
        return Err(EngineError::server(
            "engine_failed",
            format!(
                "ComfyUI returned {} frames at {fps} fps for a {frames}-frame recording: \
                 check the workflow's duration and fps inputs",
                info.nb_frames
            ),
        ));
    }
    Ok(())
}

/// What the `sonic` engine honours, wherever it runs (here, or only on remote workers).
pub fn capabilities() -> Capabilities {
    Capabilities {
        name: "sonic".to_owned(),
        description: "Sonic (CVPR 2025) on a GPU through ComfyUI: diffusion-based talking \
                      heads whose lips follow the audio."
            .to_owned(),
        // No motion_scale: Sonic has none (dynamic_scale scales all motion).
        honours: [
            "min_resolution",
            "expand_ratio",
            "inference_steps",
            "dynamic_scale",
            "seed",
            "enable_lip_sync_correction",
            "lip_sync_offset",
        ]
        .map(String::from)
        .to_vec(),
        min_resolution: 128,
        max_resolution: 2048,
    }
}
