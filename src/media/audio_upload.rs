//! An uploaded recording measured for intake. symphonia decodes what it can in this process; what it
//! cannot (Opus in Ogg or WebM, fragmented MP4 from a browser's recorder) ffmpeg decodes to a WAV
//! (`ffmpeg::decode_upload_to_wav`: demuxer forced to the sniffed container, local files only, bounded
//! in time, memory and length), which is then measured the same way and becomes the job's recording,
//! so engines and remote workers only ever see audio symphonia reads.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::audio::{probe_audio, AudioInfo};
use super::ffmpeg::{decode_upload_to_wav, FfmpegError};
use super::MediaError;

/// How far past the limit ffmpeg's output goes, so that a recording a hair over the limit is still
/// measured exactly (as symphonia's decoding does, which stops a second past it).
const DECODE_SLACK_S: f64 = 1.5;
/// Output length when no limit applies.
const UNLIMITED_S: f64 = 24.0 * 3600.0;

/// What intake learnt about the uploaded recording.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbedRecording {
    /// Measured as symphonia decodes it; `format` is the upload's container.
    pub info: AudioInfo,
    /// The WAV ffmpeg decoded the upload to, when symphonia could not decode it: the recording the
    /// job keeps.
    pub decoded: Option<PathBuf>,
}

/// Measures the upload at `path`, decoding at most about `max_duration_s` of it (see
/// [`probe_audio`]); a recording symphonia cannot decode is decoded by ffmpeg into `scratch`.
/// `slot` is held until every blocking decode has ended.
pub async fn probe_recording<T: Send + Sync + 'static>(
    path: &Path,
    max_duration_s: Option<f64>,
    scratch: &Path,
    slot: Arc<T>,
) -> Result<ProbedRecording, MediaError> {
    let first = blocking_probe(path.to_path_buf(), max_duration_s, Arc::clone(&slot)).await;
    let why = match first {
        Ok(info) => {
            return Ok(ProbedRecording {
                info,
                decoded: None,
            })
        }
        Err(MediaError::NeedsFfmpeg { detail }) => detail,
        Err(other) => return Err(other),
    };
    // The sniff that produced NeedsFfmpeg ran on these bytes; it names the container again.
    let format = super::audio::sniff_format(path)?;
    let Some(demuxer) = format.upload_demuxer() else {
        return Err(MediaError::UnsupportedAudioFormat { detail: why });
    };
    let wav = scratch.join("recording-decoded.wav");
    let max_s = max_duration_s.map_or(UNLIMITED_S, |m| m + DECODE_SLACK_S);
    decode_upload_to_wav(path, demuxer, &wav, max_s)
        .await
        .map_err(|err| ffmpeg_error(err, &why))?;
    let mut info = blocking_probe(wav.clone(), max_duration_s, slot).await?;
    info.format = format;
    Ok(ProbedRecording {
        info,
        decoded: Some(wav),
    })
}

async fn blocking_probe<T: Send + Sync + 'static>(
    path: PathBuf,
    max_duration_s: Option<f64>,
    slot: Arc<T>,
) -> Result<AudioInfo, MediaError> {
    tokio::task::spawn_blocking(move || {
        let _slot = slot;
        probe_audio(&path, max_duration_s)
    })
    .await
    .map_err(|e| MediaError::Io(std::io::Error::other(e)))?
}

/// ffmpeg's failure as the uploader sees it: its stderr names our paths, so it goes to the log only.
fn ffmpeg_error(err: FfmpegError, what: &str) -> MediaError {
    match err {
        FfmpegError::EncodeFailed { stderr_tail, .. } => {
            tracing::info!(error = %stderr_tail, "an uploaded recording could not be decoded by ffmpeg");
            MediaError::UnsupportedAudioFormat {
                detail: format!("{what} that could not be decoded"),
            }
        }
        FfmpegError::Timeout { .. } => MediaError::AudioDecodeFailed {
            detail: format!("decoding the {what} took too long"),
        },
        FfmpegError::Missing { .. } | FfmpegError::Io(_) => {
            MediaError::Io(std::io::Error::other(err.to_string()))
        }
    }
}
