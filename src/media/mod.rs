//! Media intake for the gateway: validate and decode the uploaded face photo
//! and speech recording before any expensive engine work is queued.
//!
//! Everything here but `ffmpeg` and `audio_upload` is synchronous and CPU-bound;
//! async callers should run it inside `tokio::task::spawn_blocking`.

pub mod audio;
pub mod audio_upload;
pub mod face;
pub mod ffmpeg;
pub mod image;
pub(crate) mod mp4edit;
pub mod mp4guard;
pub mod mp4video;
mod resample;

use std::panic::{catch_unwind, AssertUnwindSafe};

/// Every way media intake can fail. `code()` is a stable machine-readable
/// identifier for API responses; `Display` is a human sentence.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    /// The file could not be opened or read at all.
    #[error("could not read the uploaded file: {0}")]
    Io(#[from] std::io::Error),

    /// The content is not a JPEG, PNG or WebP image.
    #[error("unsupported image format: {detail} (accepted: JPEG, PNG, WebP)")]
    UnsupportedImageFormat {
        /// What was found instead, for the message.
        detail: String,
    },

    /// File size or pixel dimensions exceed the configured limits.
    #[error("image too large: {detail}")]
    ImageTooLarge {
        /// Which limit was hit, for the message.
        detail: String,
    },

    /// The image claims a supported format but its data is corrupt or truncated.
    #[error("image could not be decoded: {detail}")]
    ImageDecodeFailed {
        /// The decoder's explanation.
        detail: String,
    },

    /// The content is not audio in one of the accepted containers/codecs.
    #[error(
        "unsupported audio format: {detail} (accepted: WAV, MP3, FLAC, Ogg Vorbis or Opus, WebM Opus, \
         MP4/MOV/M4A with AAC)"
    )]
    UnsupportedAudioFormat {
        /// What was found instead, for the message.
        detail: String,
    },

    /// A recording in a container or codec this process does not decode itself (Opus, WebM,
    /// fragmented MP4): intake has ffmpeg decode it; anywhere else it is unsupported.
    #[error("unsupported audio format: {detail}")]
    NeedsFfmpeg {
        /// What was found, for the message.
        detail: String,
    },

    /// The audio container was recognised but its data could not be decoded.
    #[error("audio could not be decoded: {detail}")]
    AudioDecodeFailed {
        /// The decoder's explanation.
        detail: String,
    },

    /// The recording is longer than the caller may submit; decoding stopped early.
    #[error("the recording is longer than {max_s} s")]
    AudioTooLong {
        /// The limit that applied.
        max_s: f64,
    },

    /// The recording is too short to animate.
    #[error("the recording is shorter than {min_s} s")]
    AudioTooShort {
        /// The shortest accepted.
        min_s: f64,
    },

    /// The audio decoded fine but contains no samples.
    #[error("audio contains no samples")]
    AudioEmpty,

    /// The embedded face-detection model failed to load (a build problem, not user input).
    #[error("face detection model could not be loaded: {detail}")]
    FaceModel {
        /// The loader's explanation.
        detail: String,
    },
}

impl MediaError {
    /// Stable identifier for API clients; never change an existing value.
    pub fn code(&self) -> &'static str {
        match self {
            MediaError::Io(_) => "media_unreadable",
            MediaError::UnsupportedImageFormat { .. } => "unsupported_image_format",
            MediaError::ImageTooLarge { .. } => "image_too_large",
            MediaError::ImageDecodeFailed { .. } => "image_decode_failed",
            MediaError::UnsupportedAudioFormat { .. } | MediaError::NeedsFfmpeg { .. } => {
                "unsupported_audio_format"
            }
            MediaError::AudioDecodeFailed { .. } => "audio_decode_failed",
            MediaError::AudioTooLong { .. } => "audio_too_long",
            MediaError::AudioTooShort { .. } => "audio_too_short",
            MediaError::AudioEmpty => "audio_empty",
            MediaError::FaceModel { .. } => "face_model_invalid",
        }
    }

    /// True when the error is the uploader's fault (HTTP 4xx) rather than ours.
    pub fn is_client_error(&self) -> bool {
        !matches!(self, MediaError::Io(_) | MediaError::FaceModel { .. })
    }
}

/// Runs a decoder and turns a panic inside third-party decoding code into an
/// error, so one hostile upload cannot take down a worker thread. This only
/// works with `panic = "unwind"` (the default).
pub(crate) fn guard<T>(
    on_panic: impl FnOnce(String) -> MediaError,
    f: impl FnOnce() -> Result<T, MediaError>,
) -> Result<T, MediaError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "decoder panicked".to_owned());
            Err(on_panic(format!("internal decoder error: {msg}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_stable() {
        assert_eq!(MediaError::AudioEmpty.code(), "audio_empty");
        let e = MediaError::ImageTooLarge {
            detail: "5000x10 exceeds 4096".into(),
        };
        assert_eq!(e.code(), "image_too_large");
        assert!(e.to_string().contains("5000x10"));
        assert!(e.is_client_error());
    }

    #[test]
    fn guard_converts_panics() {
        let r: Result<(), _> = guard(
            |detail| MediaError::AudioDecodeFailed { detail },
            || panic!("boom"),
        );
        let e = r.unwrap_err();
        assert_eq!(e.code(), "audio_decode_failed");
        assert!(e.to_string().contains("boom"));
    }
}
