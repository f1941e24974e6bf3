//! The built-in CPU engine: audio features drive a 2D animation of the face
//! photo, and the frames are piped straight into an MP4 encoder.
//!
//! Rendering runs on a blocking thread and hands frames to the async side
//! over a small bounded channel, so memory stays at a few frames however long
//! the audio is, and the slower of renderer/encoder sets the pace.

mod engine;
pub mod features;
mod pixels;
pub mod render;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use image::RgbImage;
use tokio::sync::mpsc;

use crate::media::audio::PcmFile;
use crate::media::face::Rect;
use crate::media::ffmpeg::{EncodeSpec, FfmpegError, Mp4Encoder};
use features::FPS;
use render::{AnimParams, Animator};

pub use engine::BuiltinEngine;

/// Frames in flight between renderer and encoder.
const CHANNEL_FRAMES: usize = 4;

/// User-tunable parameters of the built-in engine.
#[derive(Debug, Clone, Copy)]
pub struct BuiltinParams {
    /// Scales mouth movement (0.5–2.0).
    pub dynamic_scale: f32,
    /// Scales head sway/nod (0.5–2.0; 0 disables it).
    pub motion_scale: f32,
    /// Seed for blink timing and sway phase.
    pub seed: u32,
    /// Audio offset in seconds; positive delays the audio.
    pub lip_sync_offset_s: f64,
}

/// What a finished render did.
#[derive(Debug, Clone, PartialEq)]
pub struct RenderStats {
    /// Frames written (25 per second of audio).
    pub frames: usize,
    /// Output width in pixels.
    pub width: u32,
    /// Output height in pixels.
    pub height: u32,
    /// Wall-clock time of the whole render, encode included.
    pub elapsed: Duration,
}

/// Errors of rendering (the built-in engine maps them to `engines::EngineError`), with stable
/// [`RenderError::code`]s.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// The inputs cannot be rendered (empty audio, odd size, bad face box).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// Encoding failed or ffmpeg is missing.
    #[error(transparent)]
    Ffmpeg(#[from] FfmpegError),
    /// The renderer thread failed unexpectedly.
    #[error("internal error: {0}")]
    Internal(String),
}

impl RenderError {
    /// Stable machine-readable error code.
    pub fn code(&self) -> &'static str {
        match self {
            RenderError::InvalidInput(_) => "invalid_input",
            RenderError::Ffmpeg(e) => e.code(),
            RenderError::Internal(_) => "internal",
        }
    }
}

/// Sets the flag when dropped, i.e. when `render_video` returns *or* its
/// future is dropped mid-way, so the renderer thread stops promptly.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Renders a talking-head MP4 of `face_crop` speaking `samples_16k`.
///
/// `face_in_crop` is the face box `(x, y, w, h)` in crop pixels; the crop's
/// size is the output size and must be even. `audio` is the recording as raw
/// PCM this process decoded (never the upload), muxed as AAC; `samples_16k`
/// is the same audio as mono 16 kHz and sets the frame count (one frame per
/// 40 ms). `progress` receives 0..=1.
/// Dropping the returned future kills ffmpeg and stops the renderer.
pub async fn render_video(
    face_crop: RgbImage,
    face_in_crop: (u32, u32, u32, u32),
    samples_16k: &[f32],
    audio: &PcmFile,
    params: BuiltinParams,
    out_path: &Path,
    mut progress: impl FnMut(f32),
) -> Result<RenderStats, RenderError> {
    let started = Instant::now();
    let (width, height) = face_crop.dimensions();
    validate(width, height, face_in_crop, samples_16k)?;
    let poses = features::mouth_poses(samples_16k);
    let frames = poses.len();
    progress(0.0);

    let duration_s = frames as f64 / FPS as f64;
    let mut encoder = Mp4Encoder::start(EncodeSpec {
        width,
        height,
        fps: FPS,
        audio: audio.clone(),
        audio_offset_s: params.lip_sync_offset_s,
        out_path: out_path.to_path_buf(),
        // Rendering + encoding run several times faster than real time; this
        // only catches a wedged ffmpeg, generously for a loaded machine.
        timeout: Duration::from_secs(60) + Duration::from_secs_f64(duration_s * 4.0),
    })
    .await?;

    let cancel = Arc::new(AtomicBool::new(false));
    let _guard = CancelOnDrop(cancel.clone());
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(CHANNEL_FRAMES);
    // Written frames come back here so the renderer reuses their buffers.
    let (recycle_tx, recycle_rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let anim = AnimParams {
        dynamic_scale: params.dynamic_scale,
        motion_scale: params.motion_scale,
        seed: params.seed,
    };
    let renderer = tokio::task::spawn_blocking(move || {
        let mut animator = Animator::new(face_crop, face_in_crop, anim);
        let len = animator.width() * animator.height() * 3;
        for (i, pose) in poses.into_iter().enumerate() {
            if cancel.load(Ordering::Relaxed) {
                return;
            }
            let mut buf = recycle_rx.try_recv().unwrap_or_else(|_| vec![0; len]);
            animator.render(i, pose, &mut buf);
            // Fails only when the receiver is gone (cancelled or failed).
            if tx.blocking_send(buf).is_err() {
                return;
            }
        }
    });

    let mut written = 0usize;
    while let Some(frame) = rx.recv().await {
        encoder.write_frame(&frame).await?;
        let _ = recycle_tx.send(frame);
        written += 1;
        progress(written as f32 / frames as f32 * 0.99);
    }
    renderer
        .await
        .map_err(|e| RenderError::Internal(format!("renderer: {e}")))?;
    if written != frames {
        return Err(RenderError::Internal(format!(
            "renderer produced {written} of {frames} frames"
        )));
    }
    encoder.finish().await?;
    progress(1.0);
    Ok(RenderStats {
        frames,
        width,
        height,
        elapsed: started.elapsed(),
    })
}

/// Cuts the planned `crop` (from `media::face::plan_crop`, as intake planned it) out of the upright
/// `photo`, scales it to `width`x`height`, and maps the detected `face` into the scaled crop: the
/// inputs [`render_video`] expects. The engine and every test use this one path.
pub fn crop_for_render(
    photo: &RgbImage,
    crop: Rect,
    face: Rect,
    width: u32,
    height: u32,
) -> (RgbImage, (u32, u32, u32, u32)) {
    let cropped =
        image::imageops::crop_imm(photo, crop.x, crop.y, crop.width, crop.height).to_image();
    let scaled = image::imageops::resize(
        &cropped,
        width,
        height,
        image::imageops::FilterType::Triangle,
    );
    let (sx, sy) = (
        f64::from(width) / f64::from(crop.width.max(1)),
        f64::from(height) / f64::from(crop.height.max(1)),
    );
    let face_in_crop = (
        (f64::from(face.x.saturating_sub(crop.x)) * sx) as u32,
        (f64::from(face.y.saturating_sub(crop.y)) * sy) as u32,
        (f64::from(face.width) * sx) as u32,
        (f64::from(face.height) * sy) as u32,
    );
    (scaled, face_in_crop)
}

fn validate(
    width: u32,
    height: u32,
    face: (u32, u32, u32, u32),
    samples: &[f32],
) -> Result<(), RenderError> {
    if width < 16 || height < 16 || width % 2 == 1 || height % 2 == 1 {
        return Err(RenderError::InvalidInput(format!(
            "output size {width}x{height} must be even and at least 16x16"
        )));
    }
    let (x, y, w, h) = face;
    if w < 8 || h < 8 || x.saturating_add(w) > width || y.saturating_add(h) > height {
        return Err(RenderError::InvalidInput(format!(
            "face box {face:?} must be at least 8x8 and inside the {width}x{height} crop"
        )));
    }
    if features::frame_count(samples.len()) == 0 {
        return Err(RenderError::InvalidInput(
            "audio is shorter than one frame".into(),
        ));
    }
    if samples.iter().any(|s| !s.is_finite()) {
        return Err(RenderError::InvalidInput(
            "audio contains non-finite samples".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_inputs() {
        let one_s = vec![0.0; 16_000];
        assert_eq!(
            validate(511, 512, (0, 0, 64, 64), &one_s)
                .unwrap_err()
                .code(),
            "invalid_input"
        );
        assert!(validate(512, 512, (480, 0, 64, 64), &one_s).is_err());
        assert!(validate(512, 512, (0, 0, 64, 64), &[0.0; 100]).is_err());
        assert!(validate(512, 512, (0, 0, 64, 64), &[f32::NAN; 1000]).is_err());
        assert!(validate(512, 512, (0, 0, 64, 64), &one_s).is_ok());
    }
}
