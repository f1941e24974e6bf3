//! The one place ffmpeg reads an upload: a recording symphonia cannot decode (Opus in Ogg or WebM, AAC or
//! Opus in a fragmented MP4 from a browser's recorder) becomes a WAV this process then measures and
//! hands to the engines. Everything that lets ffmpeg choose how to read a file is pinned down: the demuxer
//! our own sniffing detected is forced (`-f`: no format probing, so no HLS playlist, `concat` list or
//! image sequence), only the `file` protocol, the input named with `file:`, MOV's external data
//! references off, the first audio stream only, its output cut at the plan's length; the child runs
//! under an address-space limit and the usual timeout.

use std::ffi::OsString;
use std::path::Path;
use std::time::Duration;

use super::{file_input, run_capture_limited, words, FfmpegError, FFMPEG};

/// Containers an upload may be decoded from, as sniffed from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadDemuxer {
    /// Ogg (Opus voice notes).
    Ogg,
    /// Matroska/WebM (browsers' MediaRecorder).
    Matroska,
    /// MP4/MOV/M4A (phones, Safari's MediaRecorder).
    Mov,
}

impl UploadDemuxer {
    /// ffmpeg's demuxer name.
    fn name(self) -> &'static str {
        match self {
            UploadDemuxer::Ogg => "ogg",
            UploadDemuxer::Matroska => "matroska",
            UploadDemuxer::Mov => "mov",
        }
    }
}

/// Address space an upload's decoder may map: Debian's ffmpeg needs about 300 MiB of it just to load its
/// libraries; decoding speech adds a few MiB. A crafted file that makes it allocate more is stopped.
const MAX_ADDRESS_SPACE: u64 = 1024 * 1024 * 1024;
/// Largest single allocation ffmpeg may make (its own `-max_alloc`).
const MAX_ALLOC: u64 = 64 * 1024 * 1024;
/// Decoding even a long recording takes a second or two.
const DECODE_TIMEOUT: Duration = Duration::from_secs(60);

/// The ffmpeg command line that decodes `input` (read as `demuxer`) to 16-bit mono WAV at `out`, at most
/// `max_s` seconds of it.
fn decode_args(input: &Path, demuxer: UploadDemuxer, out: &Path, max_s: f64) -> Vec<OsString> {
    let mut a = words(&format!(
        "-nostdin -hide_banner -nostats -loglevel error -y -max_alloc {MAX_ALLOC} -threads 1 \
         -protocol_whitelist file -f {}",
        demuxer.name()
    ));
    if demuxer == UploadDemuxer::Mov {
        // Both are off by default; said explicitly, since either would open another file.
        a.extend(words("-enable_drefs 0 -use_absolute_path 0"));
    }
    a.push("-i".into());
    a.push(file_input(input));
    a.extend(words(&format!(
        "-map 0:a:0 -vn -sn -dn -t {max_s:.3} -ac 1 -c:a pcm_s16le -f wav"
    )));
    a.push(file_input(out));
    a
}

/// Decodes an upload's first audio stream to a 16-bit mono WAV at `out`, stopping after `max_s` seconds.
pub async fn decode_upload_to_wav(
    input: &Path,
    demuxer: UploadDemuxer,
    out: &Path,
    max_s: f64,
) -> Result<(), FfmpegError> {
    let args = decode_args(input, demuxer, out, max_s);
    run_capture_limited(
        FFMPEG,
        &args,
        "decode_upload",
        DECODE_TIMEOUT,
        Some(MAX_ADDRESS_SPACE),
    )
    .await
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demuxer_is_forced_and_only_local_files_are_read() {
        let args: Vec<String> = decode_args(
            Path::new("/up/audio"),
            UploadDemuxer::Mov,
            Path::new("/up/out.wav"),
            301.0,
        )
        .into_iter()
        .map(|a| a.into_string().unwrap())
        .collect();
        let at = |flag: &str| args.iter().position(|a| a == flag).unwrap();
        let input = at("-i");
        // Input options come before `-i`: they apply to the upload.
        assert_eq!(args[at("-f") + 1], "mov");
        assert!(at("-f") < input && at("-protocol_whitelist") < input);
        assert_eq!(args[at("-protocol_whitelist") + 1], "file");
        assert_eq!(args[at("-enable_drefs") + 1], "0");
        assert_eq!(args[input + 1], "file:/up/audio");
        assert_eq!(args[at("-t") + 1], "301.000");
        assert_eq!(args.last().unwrap(), "file:/up/out.wav");
    }
}
