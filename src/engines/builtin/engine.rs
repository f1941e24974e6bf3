//! The built-in CPU engine behind the `Engine` trait: crops and scales the photo around the detected
//! face, decodes the audio, and renders a talking head with `render_video`.

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;

use super::{crop_for_render, render_video, BuiltinParams};
use crate::domain::Stage;
use crate::engines::{Capabilities, Engine, EngineError, EngineJob, Health, ProgressFn, Slot};
use crate::media::audio::decode_for_render;
use crate::media::image::{probe_image, ImageLimits};

/// Renders on this machine's CPU; needs ffmpeg.
pub struct BuiltinEngine {
    pub image_limits: ImageLimits,
    pub timeout: Duration,
}

#[async_trait]
impl Engine for BuiltinEngine {
    fn model(&self) -> String {
        "sonicgw builtin animator (CPU)".to_owned()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            name: "builtin".to_owned(),
            description:
                "CPU engine for previews, development and CPU-only installs: animates the mouth \
                          from the audio's loudness and spectrum, with blinks and head sway."
                    .to_owned(),
            honours: [
                "min_resolution",
                "expand_ratio",
                "dynamic_scale",
                "motion_scale",
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
        match crate::media::ffmpeg::check_available().await {
            Ok(version) => Health {
                healthy: true,
                detail: version,
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
        _slot: Slot,
    ) -> Result<(), EngineError> {
        progress(Stage::Preprocessing, 0.0);
        let limits = self.image_limits;
        let (image_path, audio_path) = (job.image_path.clone(), job.audio_path.clone());
        let pcm_path = job.workdir.join("audio.f32le");
        let duration = job.params.duration;
        let (crop, face, width, height) = (job.crop, job.face, job.output_width, job.output_height);
        let prepared = tokio::task::spawn_blocking(move || {
            let photo = probe_image(&image_path, &limits).map_err(EngineError::from)?;
            let (scaled, face_in_crop) = crop_for_render(&photo.image, crop, face, width, height);
            let (samples, pcm) = decode_for_render(&audio_path, &pcm_path, 16_000, Some(duration))
                .map_err(EngineError::from)?;
            Ok::<_, EngineError>((scaled, face_in_crop, samples, pcm))
        })
        .await
        .map_err(|e| EngineError::server("internal", e.to_string()))??;
        let (scaled, face_in_crop, samples, pcm) = prepared;
        let params = BuiltinParams {
            dynamic_scale: job.params.dynamic_scale as f32,
            motion_scale: job.params.motion_scale as f32,
            seed: job.params.seed,
            lip_sync_offset_s: if job.params.enable_lip_sync_correction {
                job.params.lip_sync_offset
            } else {
                0.0
            },
        };
        let render = render_video(scaled, face_in_crop, &samples, &pcm, params, out, |p| {
            progress(Stage::Generating, f64::from(p) * 0.95)
        });
        match tokio::time::timeout(self.timeout, render).await {
            Ok(Ok(_stats)) => {
                progress(Stage::Encoding, 0.98);
                Ok(())
            }
            Ok(Err(super::RenderError::InvalidInput(detail))) => Err(EngineError::input(
                "invalid_input",
                "the recording or photo cannot be animated (too short, or its face box is unusable)",
                detail,
            )),
            Ok(Err(err)) => Err(EngineError::server(err.code(), err.to_string())),
            Err(_) => Err(EngineError::server(
                "engine_timeout",
                format!("rendering took longer than {} s", self.timeout.as_secs()),
            )),
        }
    }
}
