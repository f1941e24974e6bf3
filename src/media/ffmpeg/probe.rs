//! `ffprobe` wrapper: the facts about an encoded file that tests and job
//! bookkeeping check.

use std::path::Path;

use serde::Deserialize;

use super::{run_capture, words, FfmpegError, FFPROBE, SHORT_TIMEOUT};

/// Facts about a media file, as reported by ffprobe.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProbeInfo {
    /// Codec of the first video stream (e.g. `h264`).
    pub video_codec: Option<String>,
    /// Pixel format of the first video stream (e.g. `yuv420p`).
    pub pix_fmt: Option<String>,
    /// Width of the first video stream.
    pub width: u32,
    /// Height of the first video stream.
    pub height: u32,
    /// Average frame rate of the first video stream.
    pub avg_fps: f64,
    /// Number of video frames (from the container, or counted).
    pub nb_frames: u64,
    /// Codec of the first audio stream (e.g. `aac`).
    pub audio_codec: Option<String>,
    /// Container duration in seconds.
    pub duration_s: f64,
}

#[derive(Deserialize)]
struct RawProbe {
    #[serde(default)]
    streams: Vec<RawStream>,
    format: Option<RawFormat>,
}

#[derive(Deserialize)]
struct RawStream {
    codec_type: Option<String>,
    codec_name: Option<String>,
    pix_fmt: Option<String>,
    width: Option<u32>,
    height: Option<u32>,
    avg_frame_rate: Option<String>,
    nb_frames: Option<String>,
    nb_read_frames: Option<String>,
}

#[derive(Deserialize)]
struct RawFormat {
    duration: Option<String>,
}

/// Parses ffprobe's `"num/den"` rates.
fn parse_rate(s: &str) -> f64 {
    match s.split_once('/') {
        Some((n, d)) => match (n.parse::<f64>(), d.parse::<f64>()) {
            (Ok(n), Ok(d)) if d != 0.0 => n / d,
            _ => 0.0,
        },
        None => s.parse().unwrap_or(0.0),
    }
}

/// Runs ffprobe on `path`, an MP4 this service made (never an upload: the
/// container is forced and only local files may be opened). Frames are
/// counted by decoding when the container does not state the count.
pub async fn probe(path: &Path) -> Result<ProbeInfo, FfmpegError> {
    let mut info = probe_once(path, false).await?;
    if info.video_codec.is_some() && info.nb_frames == 0 {
        info.nb_frames = probe_once(path, true).await?.nb_frames;
    }
    Ok(info)
}

async fn probe_once(path: &Path, count_frames: bool) -> Result<ProbeInfo, FfmpegError> {
    let mut args = words("-v error -protocol_whitelist file -f mov");
    if count_frames {
        args.push("-count_frames".into());
    }
    args.extend(words("-print_format json -show_streams -show_format -i"));
    args.push(super::file_input(path));
    // Counting decodes the whole file: its own step name, so its cost shows apart in the metrics.
    let what = if count_frames {
        "count_frames"
    } else {
        "probe"
    };
    let out = run_capture(FFPROBE, &args, what, SHORT_TIMEOUT).await?;
    let raw: RawProbe = serde_json::from_slice(&out)
        .map_err(|e| FfmpegError::failed("ffprobe", format!("unreadable output: {e}")))?;
    let mut info = ProbeInfo {
        duration_s: raw
            .format
            .and_then(|f| f.duration)
            .and_then(|d| d.parse().ok())
            .unwrap_or(0.0),
        ..ProbeInfo::default()
    };
    for s in raw.streams {
        match s.codec_type.as_deref() {
            Some("video") if info.video_codec.is_none() => {
                info.video_codec = s.codec_name;
                info.pix_fmt = s.pix_fmt;
                info.width = s.width.unwrap_or(0);
                info.height = s.height.unwrap_or(0);
                info.avg_fps = s.avg_frame_rate.as_deref().map_or(0.0, parse_rate);
                let frames = if count_frames {
                    s.nb_read_frames
                } else {
                    s.nb_frames
                };
                info.nb_frames = frames.and_then(|n| n.parse().ok()).unwrap_or(0);
            }
            Some("audio") if info.audio_codec.is_none() => info.audio_codec = s.codec_name,
            _ => {}
        }
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse() {
        assert_eq!(parse_rate("25/1"), 25.0);
        assert_eq!(parse_rate("0/0"), 0.0);
        assert_eq!(parse_rate("30000/1001").round(), 30.0);
    }
}
