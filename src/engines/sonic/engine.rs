//! The `sonic` engine: one job on one ComfyUI server. Upload the inputs, queue the workflow,
//! follow it to its end, download the video, and conform it to the recording.

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;

use super::client::ComfyClient;
use super::follow::{await_prompt, RemoteStage};
use super::outcome::{call_error, outcome};
use super::workflow::JobInputs;
use super::{inputs, SonicSettings};
use crate::domain::Stage;
use crate::engines::{Capabilities, Engine, EngineError, EngineJob, Health, ProgressFn};
use crate::media::ffmpeg::{self, ConformSpec};

/// Largest result accepted from ComfyUI.
const MAX_RESULT_BYTES: u64 = 2 * 1024 * 1024 * 1024;
/// Sonic's 2K-1 frames are up to 3 frames short of the audio; more than this means the graph
/// cut the video (a wrong `duration` or `fps`), which must not be hidden by holding a frame.
const MAX_SHORT_FRAMES: u64 = 6;

/// Runs Sonic on a ComfyUI server with the ComfyUI_Sonic nodes. For now one server (the first
/// configured URL); the pool of many wraps [`ComfyClient`]s.
pub struct SonicEngine {
    client: ComfyClient,
    settings: SonicSettings,
}

impl SonicEngine {
    pub fn new(client: ComfyClient, settings: SonicSettings) -> Self {
        Self { client, settings }
    }
}

/// Cancels the prompt when dropped while armed: the job was cancelled, timed out or failed
/// locally after submitting. Best-effort, in the background: delete it if it is still waiting,
/// then interrupt it if it runs (in this order, so a prompt that starts in between is still
/// caught; each call is a no-op when it does not apply).
struct PromptGuard {
    client: ComfyClient,
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
        let client = self.client.clone();
        let id = std::mem::take(&mut self.prompt_id);
        runtime.spawn(async move {
            let deleted = client.delete_pending(&id).await;
            let interrupted = client.interrupt(&id).await;
            tracing::info!(
                prompt_id = %id,
                deleted = deleted.is_ok(),
                interrupted = interrupted.is_ok(),
                "ComfyUI prompt cancelled"
            );
        });
    }
}

#[async_trait]
impl Engine for SonicEngine {
    fn capabilities(&self) -> Capabilities {
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

    async fn health(&self) -> Health {
        match self.client.system_stats().await {
            Ok(stats) => Health {
                healthy: true,
                detail: format!(
                    "ComfyUI {}",
                    stats["system"]["comfyui_version"]
                        .as_str()
                        .unwrap_or("(version unknown)")
                ),
            },
            Err(err) => Health {
                healthy: false,
                detail: err.to_string(),
            },
        }
    }

    async fn generate(
        &self,
        job: &EngineJob,
        out: &Path,
        progress: ProgressFn,
    ) -> Result<(), EngineError> {
        let work = self.run(job, out, &progress);
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
    ) -> Result<(), EngineError> {
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
        let image_ref = self
            .client
            .upload(&format!("{unique}-face.png"), prepared.png, "image/png")
            .await
            .map_err(call_error)?;
        let audio_ref = self
            .client
            .upload(&format!("{unique}-speech.wav"), prepared.wav, "audio/wav")
            .await
            .map_err(call_error)?;

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
        let client_id = format!("sonicgw-{}-{}", job.id, uuid::Uuid::new_v4().simple());
        // Before submitting: execution events go only to this client id, from the first one on.
        let events = match self.client.events(&client_id).await {
            Ok(events) => Some(events),
            Err(err) => {
                tracing::warn!(error = %err, "no ComfyUI websocket; following the prompt through /history");
                None
            }
        };
        let prompt_id = uuid::Uuid::new_v4().to_string();
        // Armed before submitting: if the answer is lost, the id still finds the prompt.
        let mut guard = PromptGuard {
            client: self.client.clone(),
            prompt_id: prompt_id.clone(),
            armed: true,
        };
        let number = self
            .client
            .submit(&prompt, &client_id, &prompt_id)
            .await
            .map_err(|err| {
                if matches!(err, super::client::ComfyError::Rejected { .. }) {
                    guard.armed = false;
                }
                call_error(err)
            })?;
        tracing::info!(%prompt_id, number, comfyui = %crate::config::redacted_url(self.client.base().as_str()), "sonic prompt queued");

        let entry = await_prompt(
            &self.client,
            events,
            &prompt,
            &prompt_id,
            self.settings.poll_interval,
            |stage| progress(stage.job_stage(), remote_progress(stage)),
        )
        .await
        .map_err(call_error)?;
        // Finished one way or the other: nothing left to cancel.
        guard.armed = false;
        let file = outcome(&entry, self.settings.workflow.output_node())?;
        progress(Stage::Encoding, 0.9);

        let remote = job.workdir.join("comfyui.mp4");
        self.client
            .download(&file, &remote, MAX_RESULT_BYTES)
            .await
            .map_err(call_error)?;
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
