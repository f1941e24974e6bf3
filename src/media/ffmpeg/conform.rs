//! The last pass over a remote engine's video (Sonic through ComfyUI): one ffmpeg run that makes it
//! the delivered MP4. The remote file is not an upload but it is untrusted output of another
//! machine, so it is read like our own MP4s: MP4 demuxer forced, local files only. Its audio is
//! ignored; the recording's own PCM (decoded by us) is muxed instead.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use super::{encode_slots, file_input, run_capture, words, FfmpegError, FFMPEG};
use crate::media::audio::PcmFile;

/// What to make of a remote engine's video.
#[derive(Debug, Clone)]
pub struct ConformSpec {
    /// The engine's MP4 (H.264 in an MP4/MOV container).
    pub video: PathBuf,
    /// The recording as raw PCM we decoded ourselves (never the upload, never the engine's audio).
    pub audio: PcmFile,
    /// Lip-sync offset in seconds: positive delays the audio, negative cuts its start (as the
    /// built-in encoder does).
    pub audio_offset_s: f64,
    /// Output size; the engine's frames are scaled to it.
    pub width: u32,
    pub height: u32,
    /// Output frames at 25 fps: the audio's length. A short input holds its last frame.
    pub frames: u32,
    /// Where the MP4 is written (overwritten if present).
    pub out_path: PathBuf,
    /// Budget of the whole run.
    pub timeout: Duration,
}

/// Output frame rate of every engine.
const FPS: u32 = 25;

/// Re-encodes `spec.video` to exactly `spec.frames` frames at 25 fps (H.264 yuv420p), muxed with
/// the recording as AAC, `+faststart`. Takes an encode slot like every other encode.
pub async fn conform_remote_video(spec: &ConformSpec) -> Result<(), FfmpegError> {
    if spec.width == 0 || spec.height == 0 || spec.width % 2 == 1 || spec.height % 2 == 1 {
        return Err(FfmpegError::failed(
            "conform setup",
            format!(
                "frame size {}x{} must be non-zero and even",
                spec.width, spec.height
            ),
        ));
    }
    if spec.frames == 0 {
        return Err(FfmpegError::failed(
            "conform setup",
            "zero frames requested",
        ));
    }
    let _permit = encode_slots()
        .acquire_owned()
        .await
        .expect("encode semaphore is never closed");
    run_capture(FFMPEG, &conform_args(spec), "conform", spec.timeout).await?;
    Ok(())
}

/// Copies the first video and audio stream of an MP4 from another machine (a remote worker's result)
/// into a fresh MP4 without re-encoding: whatever else the file carried (appended archives, boxes
/// before `ftyp`, metadata, chapters, other streams) is left behind. MP4 demuxer forced, local
/// files only.
pub async fn remux_clean(
    input: &std::path::Path,
    output: &std::path::Path,
    timeout: Duration,
) -> Result<(), FfmpegError> {
    let mut a = words(
        "-nostdin -hide_banner -nostats -loglevel error -y -protocol_whitelist file -f mov -i",
    );
    a.push(file_input(input));
    a.extend(words(
        "-map 0:v:0 -map 0:a:0? -c copy -map_metadata -1 -map_chapters -1 \
         -movflags +faststart -f mp4",
    ));
    a.push(file_input(output));
    run_capture(FFMPEG, &a, "remux", timeout).await?;
    Ok(())
}

/// The ffmpeg command line for a [`ConformSpec`].
fn conform_args(spec: &ConformSpec) -> Vec<OsString> {
    let mut a = words(
        "-nostdin -hide_banner -nostats -loglevel error -y -protocol_whitelist file -f mov -i",
    );
    a.push(file_input(&spec.video));
    let offset = Some(spec.audio_offset_s)
        .filter(|o| o.is_finite())
        .unwrap_or(0.0);
    if offset < 0.0 {
        a.extend(words(&format!("-ss {:.3}", -offset)));
    }
    a.extend(words(&format!(
        "-protocol_whitelist file -f f32le -ar {} -ac {} -i",
        spec.audio.sample_rate, spec.audio.channels
    )));
    a.push(file_input(&spec.audio.path));
    let delay = if offset > 0.0 {
        format!("adelay=delays={}:all=1,", (offset * 1000.0).round() as i64)
    } else {
        String::new()
    };
    let (w, h, n) = (spec.width, spec.height, spec.frames);
    let seconds = f64::from(n) / f64::from(FPS);
    // Both streams are cut in the graph (tpad/apad make them long enough first), so the file ends
    // at frame `n` without relying on `-shortest`. The audio's 48 kHz keeps the AAC overshoot
    // under one video frame, as in the built-in encoder.
    let graph = format!(
        "[0:v:0]fps={FPS},scale={w}:{h}:flags=bicubic,setsar=1,\
         tpad=stop_mode=clone:stop={n},trim=end_frame={n},setpts=PTS-STARTPTS,format=yuv420p[v];\
         [1:a:0]{delay}apad,atrim=end={seconds:.6},asetpts=PTS-STARTPTS,aresample=48000[a]"
    );
    a.push("-filter_complex".into());
    a.push(graph.into());
    a.extend(words(
        "-map [v] -map [a] -c:v libx264 -preset veryfast -crf 18 -pix_fmt yuv420p -r 25 \
         -c:a aac -b:a 128k -ar 48000 -movflags +faststart -f mp4",
    ));
    a.push(file_input(&spec.out_path));
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(offset: f64) -> ConformSpec {
        ConformSpec {
            video: "/w/remote.mp4".into(),
            audio: PcmFile {
                path: "/w/audio.f32le".into(),
                sample_rate: 44_100,
                channels: 1,
            },
            audio_offset_s: offset,
            width: 512,
            height: 512,
            frames: 189,
            out_path: "/w/out.mp4".into(),
            timeout: Duration::from_secs(60),
        }
    }

    fn joined(spec: &ConformSpec) -> String {
        conform_args(spec)
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn remote_video_is_read_with_its_demuxer_forced_and_local_files_only() {
        let args = joined(&spec(0.0));
        assert!(
            args.contains("-protocol_whitelist file -f mov -i file:/w/remote.mp4"),
            "{args}"
        );
        assert!(
            args.contains(
                "-protocol_whitelist file -f f32le -ar 44100 -ac 1 -i file:/w/audio.f32le"
            ),
            "{args}"
        );
        assert!(args.contains("tpad=stop_mode=clone"), "{args}");
        assert!(args.contains("trim=end_frame=189"), "{args}");
        assert!(args.contains("atrim=end=7.560000"), "{args}");
        assert!(args.contains("+faststart"), "{args}");
        // The engine's own audio is never mapped.
        assert!(!args.contains("0:a"), "{args}");
        assert!(!args.contains("-ss"), "{args}");
    }

    #[test]
    fn lip_sync_offset_delays_or_cuts_the_audio_like_the_builtin_encoder() {
        let later = joined(&spec(0.25));
        assert!(later.contains("adelay=delays=250:all=1,apad"), "{later}");
        let earlier = joined(&spec(-0.2));
        assert!(
            earlier.contains("-ss 0.200 -protocol_whitelist file -f f32le"),
            "{earlier}"
        );
        assert!(!earlier.contains("adelay"), "{earlier}");
    }
}
