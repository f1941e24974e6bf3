//! The one place where external media programs (`ffmpeg`, `ffprobe`) are run.
//!
//! Every child process goes through `command`, so all of them share the same
//! safety rules: `kill_on_drop(true)` (a dropped request never leaves an orphan
//! encoder behind), no inherited stdin, and a timeout around every wait.
//! Encodes additionally take a permit from a global semaphore sized to the
//! number of CPUs, because x264 saturates a core per encode and running more
//! encodes than cores only makes all of them slower.
//!
//! Every child also carries a `ProcessGuard`, as pict-rs does: a `process` span for its lifetime and
//! the `ffmpeg_processes_total` / `ffmpeg_process_duration_seconds` metrics, recorded when the process
//! ends however it ends, so slow and failing runs show up in traces and on dashboards.
//!
//! ffmpeg reads an upload in one place only (`upload.rs`: recordings symphonia
//! cannot decode). Its format detection skips ID3 tags and follows references
//! (an HLS playlist or `concat` list names other files, which the `file`
//! protocol then opens), so a crafted "MP3" could make it mux any file on the
//! server into a job's video. Every input is read with its demuxer forced
//! (`-f rawvideo`, `-f f32le`, `-f mov` for our own MP4s; for an upload, the
//! container our own sniffing found) and a protocol whitelist, so no byte of an
//! input can choose how ffmpeg reads it; an upload's decoder also runs under an
//! address-space limit.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::Instrument;

use crate::media::audio::PcmFile;

mod conform;
mod label;
mod probe;
mod upload;

pub use conform::{conform_remote_video, remux_clean, ConformSpec};
pub use label::{label_video, LabelSpec, Overlay, CORNER_FILE, OPENING_FILE, OPENING_S};
pub use probe::{probe, ProbeInfo};
pub use upload::{decode_upload_to_wav, UploadDemuxer};

const FFMPEG: &str = "ffmpeg";
const FFPROBE: &str = "ffprobe";
/// Timeout for short helper runs (`-version`, `ffprobe`, audio decoding).
const SHORT_TIMEOUT: Duration = Duration::from_secs(60);
/// How much of ffmpeg's stderr is kept for error messages.
const STDERR_TAIL_BYTES: usize = 4096;

/// Errors from running ffmpeg/ffprobe. [`FfmpegError::code`] is stable and
/// meant for API responses and metrics labels.
#[derive(Debug, thiserror::Error)]
pub enum FfmpegError {
    /// The program could not be started because it is not installed.
    #[error("{program} not found: install it (Debian: apt-get install ffmpeg)")]
    Missing {
        /// `ffmpeg` or `ffprobe`.
        program: String,
    },
    /// The program ran but failed, or produced output we could not use.
    #[error("{what} failed: {stderr_tail}")]
    EncodeFailed {
        /// Short description of the step that failed.
        what: String,
        /// The end of the program's stderr (or our own explanation).
        stderr_tail: String,
    },
    /// The program did not finish within its time budget; it has been killed.
    #[error("{what} timed out after {after:?}")]
    Timeout {
        /// Short description of the step that timed out.
        what: String,
        /// The budget that was exceeded.
        after: Duration,
    },
    /// Local I/O error (pipes, files).
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

impl FfmpegError {
    /// Stable machine-readable error code.
    pub fn code(&self) -> &'static str {
        match self {
            FfmpegError::Missing { .. } => "ffmpeg_missing",
            FfmpegError::EncodeFailed { .. } => "encode_failed",
            FfmpegError::Timeout { .. } => "encode_timeout",
            FfmpegError::Io(_) => "io",
        }
    }

    fn failed(what: &str, stderr_tail: impl Into<String>) -> Self {
        FfmpegError::EncodeFailed {
            what: what.to_string(),
            stderr_tail: stderr_tail.into(),
        }
    }
}

/// Global bound on concurrent encodes (see module docs for why).
fn encode_slots() -> Arc<Semaphore> {
    static SLOTS: OnceLock<Arc<Semaphore>> = OnceLock::new();
    SLOTS
        .get_or_init(|| {
            let n = std::thread::available_parallelism().map_or(1, |n| n.get());
            Arc::new(Semaphore::new(n))
        })
        .clone()
}

/// Builds a command with the safety settings every child must have.
fn command(program: &str) -> Command {
    let mut cmd = Command::new(program);
    cmd.kill_on_drop(true)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// How a child process ended, as the `outcome` label of its metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Exited with status 0.
    Success,
    /// Exited with an error, or could not be waited for.
    Failure,
    /// Ran past its time budget and was killed.
    Timeout,
    /// The future that owned it was dropped (a cancelled job, a gone client), which killed it.
    Killed,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
            Outcome::Timeout => "timeout",
            Outcome::Killed => "killed",
        }
    }
}

/// The span and metrics of one running child. Created right after the spawn; the first
/// [`ProcessGuard::end`] records the outcome, and a guard dropped without one records
/// [`Outcome::Killed`]: its owner was dropped, and with it the child (`kill_on_drop`).
struct ProcessGuard {
    program: &'static str,
    what: &'static str,
    started: std::time::Instant,
    span: tracing::Span,
    ended: bool,
}

impl ProcessGuard {
    /// `program` and `what` are fixed names (metric labels), never arguments or paths.
    fn new(program: &'static str, what: &'static str, child: &Child) -> Self {
        let span = tracing::info_span!(
            "process",
            program,
            what,
            pid = child.id(),
            outcome = tracing::field::Empty,
        );
        Self {
            program,
            what,
            started: std::time::Instant::now(),
            span,
            ended: false,
        }
    }

    /// Records how the process ended; only the first call counts.
    fn end(&mut self, outcome: Outcome) {
        if std::mem::replace(&mut self.ended, true) {
            return;
        }
        let elapsed = self.started.elapsed();
        crate::metrics::ffmpeg_process(self.program, self.what, outcome.as_str(), elapsed);
        self.span.record("outcome", outcome.as_str());
        self.span.in_scope(|| {
            tracing::debug!(
                outcome = outcome.as_str(),
                elapsed_ms = elapsed.as_secs_f64() * 1000.0,
                "process ended"
            );
        });
    }
}

impl Drop for ProcessGuard {
    fn drop(&mut self) {
        self.end(Outcome::Killed);
    }
}

/// Maps a spawn error, turning "not found" into the dedicated variant.
fn spawn_error(program: &str, e: std::io::Error) -> FfmpegError {
    if e.kind() == std::io::ErrorKind::NotFound {
        FfmpegError::Missing {
            program: program.to_string(),
        }
    } else {
        FfmpegError::Io(e)
    }
}

/// Keeps the last [`STDERR_TAIL_BYTES`] of `bytes` as lossy UTF-8.
fn tail(bytes: &[u8]) -> String {
    let start = bytes.len().saturating_sub(STDERR_TAIL_BYTES);
    String::from_utf8_lossy(&bytes[start..]).trim().to_string()
}

/// Runs `program args` to completion, returning stdout on success. `what` names the step (a metric
/// label: a fixed name such as `probe`).
async fn run_capture(
    program: &'static str,
    args: &[OsString],
    what: &'static str,
    timeout: Duration,
) -> Result<Vec<u8>, FfmpegError> {
    run_capture_limited(program, args, what, timeout, None).await
}

/// Caps the child's address space (`RLIMIT_AS`), so a crafted input cannot make it take the machine's
/// memory: an allocation past the cap fails inside the child, which then exits with an error.
fn limit_address_space(cmd: &mut Command, bytes: u64) {
    // SAFETY: the closure runs in the forked child before exec and only calls setrlimit, which is
    // async-signal-safe; it allocates nothing and touches no lock.
    unsafe {
        cmd.pre_exec(move || {
            let limit = libc::rlimit {
                rlim_cur: bytes as libc::rlim_t,
                rlim_max: bytes as libc::rlim_t,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &limit) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
}

/// `run_capture`, with the child's address space capped at `max_address_space` bytes when given.
async fn run_capture_limited(
    program: &'static str,
    args: &[OsString],
    what: &'static str,
    timeout: Duration,
    max_address_space: Option<u64>,
) -> Result<Vec<u8>, FfmpegError> {
    let mut cmd = command(program);
    cmd.args(args);
    if let Some(bytes) = max_address_space {
        limit_address_space(&mut cmd, bytes);
    }
    run_command(cmd, program, what, timeout).await
}

/// Runs a prepared `cmd` (made by [`command`]) to completion, returning stdout on success.
async fn run_command(
    mut cmd: Command,
    program: &'static str,
    what: &'static str,
    timeout: Duration,
) -> Result<Vec<u8>, FfmpegError> {
    let child = cmd.spawn().map_err(|e| spawn_error(program, e))?;
    let mut guard = ProcessGuard::new(program, what, &child);
    let step = format!("{program} {what}");
    // On timeout the future owning `child` is dropped, which kills it.
    let waited = tokio::time::timeout(timeout, child.wait_with_output())
        .instrument(guard.span.clone())
        .await;
    let out = match waited {
        Err(_) => {
            guard.end(Outcome::Timeout);
            return Err(FfmpegError::Timeout {
                what: step,
                after: timeout,
            });
        }
        Ok(Err(e)) => {
            guard.end(Outcome::Failure);
            return Err(e.into());
        }
        Ok(Ok(out)) => out,
    };
    if !out.status.success() {
        guard.end(Outcome::Failure);
        return Err(FfmpegError::failed(&step, tail(&out.stderr)));
    }
    guard.end(Outcome::Success);
    Ok(out.stdout)
}

/// Checks that `ffmpeg` can be run and returns its version line.
pub async fn check_available() -> Result<String, FfmpegError> {
    check_available_with(FFMPEG).await
}

async fn check_available_with(program: &'static str) -> Result<String, FfmpegError> {
    let out = run_capture(program, &words("-version"), "version", SHORT_TIMEOUT).await?;
    let text = String::from_utf8_lossy(&out);
    Ok(text.lines().next().unwrap_or_default().trim().to_string())
}

/// An input file ffmpeg must open as a plain local file: `file:` so that no
/// part of the path can name another protocol.
fn file_input(path: &Path) -> OsString {
    let mut arg = OsString::from("file:");
    arg.push(path.as_os_str());
    arg
}

/// Decodes the audio of an MP4 this service made (our own output, never an
/// upload) to mono f32 samples at 16 kHz.
pub async fn decode_audio_16k(path: &Path) -> Result<Vec<f32>, FfmpegError> {
    let mut args = words("-nostdin -v error -protocol_whitelist file -f mov -i");
    args.push(file_input(path));
    args.extend(words("-vn -ac 1 -ar 16000 -f f32le -"));
    let raw = run_capture(FFMPEG, &args, "decode_audio", SHORT_TIMEOUT).await?;
    Ok(raw
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

/// What to encode: raw RGB frames of `width`x`height` at `fps`, muxed with
/// PCM audio this process decoded.
#[derive(Debug, Clone)]
pub struct EncodeSpec {
    /// Frame width in pixels (must be even for yuv420p).
    pub width: u32,
    /// Frame height in pixels (must be even for yuv420p).
    pub height: u32,
    /// Frames per second of the raw input (the engines use 25).
    pub fps: u32,
    /// Audio to mux: raw PCM we decoded ourselves (never the upload).
    pub audio: PcmFile,
    /// Lip-sync offset in seconds: positive delays the audio, negative
    /// advances it (its start is cut).
    pub audio_offset_s: f64,
    /// Where the MP4 is written (overwritten if present).
    pub out_path: PathBuf,
    /// Budget for the whole encode, counted from the moment ffmpeg starts.
    pub timeout: Duration,
}

/// A running ffmpeg that turns raw RGB24 frames written to its stdin into an
/// H.264/AAC MP4. Dropping it kills ffmpeg.
pub struct Mp4Encoder {
    child: Child,
    stdin: Option<ChildStdin>,
    stderr_task: JoinHandle<Vec<u8>>,
    frame_len: usize,
    deadline: Instant,
    timeout: Duration,
    // Declared after `child`, so a drop kills ffmpeg before it is counted as killed.
    guard: ProcessGuard,
    // Held for the encoder's lifetime; released on finish or drop.
    _permit: OwnedSemaphorePermit,
}

impl Mp4Encoder {
    /// Waits for an encode slot, then spawns ffmpeg.
    pub async fn start(spec: EncodeSpec) -> Result<Self, FfmpegError> {
        if spec.width == 0 || spec.height == 0 || spec.width % 2 == 1 || spec.height % 2 == 1 {
            return Err(FfmpegError::failed(
                "encoder setup",
                format!(
                    "frame size {}x{} must be non-zero and even",
                    spec.width, spec.height
                ),
            ));
        }
        let permit = encode_slots()
            .acquire_owned()
            .await
            .expect("encode semaphore is never closed");
        let mut child = command(FFMPEG)
            .args(encode_args(&spec))
            .stdin(Stdio::piped())
            // stdout is unused; a null sink means it can never fill up and block.
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| spawn_error(FFMPEG, e))?;
        let guard = ProcessGuard::new(FFMPEG, "encode", &child);
        let stdin = child.stdin.take();
        let mut stderr = child.stderr.take().expect("stderr is piped");
        // stderr must be drained concurrently: if its pipe fills, ffmpeg blocks
        // and stops reading our frames, deadlocking the encode.
        let stderr_task = tokio::spawn(async move {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut chunk).await {
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
                if buf.len() > 2 * STDERR_TAIL_BYTES {
                    buf.drain(..buf.len() - STDERR_TAIL_BYTES);
                }
            }
            buf
        });
        Ok(Mp4Encoder {
            child,
            stdin,
            stderr_task,
            frame_len: spec.width as usize * spec.height as usize * 3,
            deadline: Instant::now() + spec.timeout,
            timeout: spec.timeout,
            guard,
            _permit: permit,
        })
    }

    /// Writes one RGB24 frame (exactly width*height*3 bytes).
    pub async fn write_frame(&mut self, rgb: &[u8]) -> Result<(), FfmpegError> {
        if rgb.len() != self.frame_len {
            return Err(FfmpegError::failed(
                "write frame",
                format!("frame has {} bytes, expected {}", rgb.len(), self.frame_len),
            ));
        }
        let stdin = self.stdin.as_mut().expect("stdin is open until finish");
        match tokio::time::timeout_at(self.deadline, stdin.write_all(rgb)).await {
            Err(_) => Err(self.timeout_error()),
            Ok(Ok(())) => Ok(()),
            // A broken pipe means ffmpeg exited; its stderr says why, which is
            // far more useful than "broken pipe".
            Ok(Err(_)) => Err(self.collect_failure().await),
        }
    }

    /// Closes stdin and waits for ffmpeg to write the file.
    pub async fn finish(mut self) -> Result<(), FfmpegError> {
        if let Some(mut stdin) = self.stdin.take() {
            // Flush errors surface through the exit status below.
            let _ = stdin.shutdown().await;
        }
        let status = match tokio::time::timeout_at(self.deadline, self.child.wait()).await {
            Err(_) => return Err(self.timeout_error()),
            Ok(Err(e)) => {
                self.guard.end(Outcome::Failure);
                return Err(e.into());
            }
            Ok(Ok(status)) => status,
        };
        if status.success() {
            self.guard.end(Outcome::Success);
            Ok(())
        } else {
            Err(self.collect_failure().await)
        }
    }

    fn timeout_error(&mut self) -> FfmpegError {
        // The child is killed when `self` is dropped by the caller.
        self.guard.end(Outcome::Timeout);
        FfmpegError::Timeout {
            what: "mp4 encode".into(),
            after: self.timeout,
        }
    }

    /// Kills ffmpeg (if still running) and returns its stderr tail as error.
    async fn collect_failure(&mut self) -> FfmpegError {
        self.guard.end(Outcome::Failure);
        self.stdin = None;
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
        let stderr = match tokio::time::timeout(Duration::from_secs(5), &mut self.stderr_task).await
        {
            Ok(Ok(bytes)) => tail(&bytes),
            _ => String::from("(no stderr)"),
        };
        let status = self.child.try_wait().ok().flatten();
        FfmpegError::failed("mp4 encode", format!("exit {status:?}: {stderr}"))
    }
}

/// The ffmpeg command line for an [`EncodeSpec`].
fn encode_args(spec: &EncodeSpec) -> Vec<OsString> {
    let mut a = words(
        "-nostdin -hide_banner -nostats -loglevel error -y \
         -protocol_whitelist pipe -f rawvideo -pix_fmt rgb24",
    );
    a.extend(words(&format!(
        "-s {}x{} -r {} -i pipe:0",
        spec.width, spec.height, spec.fps
    )));
    // A negative offset (audio early) cuts the audio start with an input seek;
    // a positive one prepends silence with adelay. Both keep timestamps >= 0,
    // which MP4 muxing needs (a negative -itsoffset would not).
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
    // apad makes the audio at least as long as the video, so `-shortest` always
    // ends the file at the last video frame (the caller's frame count), give
    // or take one AAC frame. Resampling to 48 kHz keeps that frame at 21 ms
    // (at 22 kHz the overshoot reached 45 ms, more than a video frame); the
    // muxer-level `-fflags +shortest` was tried and cut ~90 ms of audio.
    let delay = if offset > 0.0 {
        format!("adelay=delays={}:all=1,", (offset * 1000.0).round() as i64)
    } else {
        String::new()
    };
    a.extend(words(&format!("-map 0:v:0 -map 1:a:0 -af {delay}apad")));
    a.extend(words(
        "-c:v libx264 -preset veryfast -crf 23 -pix_fmt yuv420p -c:a aac -b:a 128k -ar 48000 \
         -shortest -movflags +faststart -f mp4",
    ));
    a.push(file_input(&spec.out_path));
    a
}

/// Splits a fixed argument string on whitespace (no quoting: only literals
/// and numbers go through here; paths are pushed as separate arguments).
fn words(s: &str) -> Vec<OsString> {
    s.split_whitespace().map(OsString::from).collect()
}

#[cfg(test)]
mod tests;
