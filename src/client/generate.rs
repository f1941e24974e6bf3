//! `sonicgw generate`: check the files here, submit them with an Idempotency-Key (retried with the
//! same key after a network error, so a retry never makes two jobs), follow the job's events with a
//! progress bar, and download the MP4.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt as _;
use serde_json::Value;
use tokio::io::AsyncWriteExt as _;

use super::api::{ApiFailure, Session};

/// How often a submission is tried at most (network errors, or the first try still in progress).
const SUBMIT_ATTEMPTS: u32 = 4;
/// How often an event stream is opened again after it dropped.
const FOLLOW_RECONNECTS: u32 = 20;
/// A stream that sends nothing for this long is taken as dead: the event stream sends a keep-alive
/// every 15 s, and a download that stops moving is a stalled connection, not a slow one.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// What to generate and how to report it.
pub struct GenerateRequest {
    pub image: PathBuf,
    pub audio: PathBuf,
    /// Sonic's parameters as the API's text fields.
    pub fields: Vec<(&'static str, String)>,
    pub idempotency_key: Option<String>,
}

/// Why a file was refused here, before anything was sent.
#[derive(Debug, thiserror::Error)]
#[error("{code}: {detail}")]
pub struct LocalRefusal {
    pub code: &'static str,
    pub field: &'static str,
    pub detail: String,
}

/// The kinds of file the gateway takes, by their first bytes (what the server checks again).
fn sniff_image(head: &[u8]) -> Option<&'static str> {
    if head.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some("jpeg")
    } else if head.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("png")
    } else if head.len() >= 12 && &head[..4] == b"RIFF" && &head[8..12] == b"WEBP" {
        Some("webp")
    } else {
        None
    }
}

fn sniff_audio(head: &[u8]) -> Option<&'static str> {
    if head.len() >= 12 && &head[..4] == b"RIFF" && &head[8..12] == b"WAVE" {
        Some("wav")
    } else if head.starts_with(b"ID3")
        || (head.len() >= 2 && head[0] == 0xFF && head[1] & 0xE0 == 0xE0)
    {
        Some("mp3")
    } else if head.starts_with(b"fLaC") {
        Some("flac")
    } else if head.starts_with(b"OggS") {
        Some("ogg")
    } else if head.len() >= 8 && &head[4..8] == b"ftyp" {
        Some("mp4")
    } else if head.starts_with(&[0x1A, 0x45, 0xDF, 0xA3]) {
        Some("webm")
    } else {
        None
    }
}

/// Checks that both files exist, are not empty and look like what they should be.
pub fn check_files(image: &Path, audio: &Path) -> Result<(), LocalRefusal> {
    let head = |path: &Path, field: &'static str| -> Result<Vec<u8>, LocalRefusal> {
        use std::io::Read as _;
        let mut file = std::fs::File::open(path).map_err(|e| LocalRefusal {
            code: "file_unreadable",
            field,
            detail: format!("{}: {e}", path.display()),
        })?;
        let mut head = vec![0u8; 16];
        let n = file.read(&mut head).map_err(|e| LocalRefusal {
            code: "file_unreadable",
            field,
            detail: format!("{}: {e}", path.display()),
        })?;
        head.truncate(n);
        if n == 0 {
            return Err(LocalRefusal {
                code: "file_empty",
                field,
                detail: format!("{} is empty", path.display()),
            });
        }
        Ok(head)
    };
    if sniff_image(&head(image, "image")?).is_none() {
        return Err(LocalRefusal {
            code: "unsupported_image_format",
            field: "image",
            detail: format!("{} is not a JPEG, PNG or WebP image", image.display()),
        });
    }
    if sniff_audio(&head(audio, "audio")?).is_none() {
        return Err(LocalRefusal {
            code: "unsupported_audio_format",
            field: "audio",
            detail: format!(
                "{} is not WAV, MP3, FLAC, OGG/Opus, WebM or MP4/M4A audio",
                audio.display()
            ),
        });
    }
    Ok(())
}

async fn file_part(path: &Path) -> anyhow::Result<reqwest::multipart::Part> {
    let file = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("opening {}", path.display()))?;
    let length = file.metadata().await?.len();
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "upload".to_owned());
    let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(file));
    Ok(reqwest::multipart::Part::stream_with_length(body, length).file_name(name))
}

/// Whether a failed attempt may be sent again with the same key: the network failed, or the server
/// is still working on the first one.
fn worth_retrying(err: &anyhow::Error) -> bool {
    if let Some(failure) = err.downcast_ref::<ApiFailure>() {
        return failure.code == "idempotency_in_progress";
    }
    err.downcast_ref::<reqwest::Error>()
        .is_some_and(|e| e.is_connect() || e.is_timeout() || e.is_request() || e.is_body())
}

/// Submits the job; its view as the server answered (202 new, 200 replayed).
pub async fn submit(session: &Session, request: &GenerateRequest) -> anyhow::Result<Value> {
    let key = request
        .idempotency_key
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let url = session.url("/v1/videos");
    let mut attempt = 0;
    let mut refreshed = false;
    loop {
        attempt += 1;
        let mut form = reqwest::multipart::Form::new()
            .part("image", file_part(&request.image).await?)
            .part("audio", file_part(&request.audio).await?);
        for (name, value) in &request.fields {
            form = form.text(*name, value.clone());
        }
        let token = session.access_token().await?;
        let sent = session
            .http
            .post(&url)
            .bearer_auth(token)
            .header("idempotency-key", &key)
            .multipart(form)
            .timeout(Duration::from_secs(600))
            .send()
            .await;
        let outcome: anyhow::Result<Value> = match sent {
            Ok(response)
                if response.status() == reqwest::StatusCode::UNAUTHORIZED && !refreshed =>
            {
                // A multipart body is read once: the form is built again after the refresh.
                refreshed = true;
                attempt -= 1;
                session.expire().await;
                continue;
            }
            Ok(response) if response.status().is_success() => super::api::read_json(response).await,
            Ok(response) => Err(ApiFailure::from_response(response).await.into()),
            Err(err) => {
                Err(anyhow::Error::from(err)
                    .context(format!("sending the job to {}", session.server)))
            }
        };
        match outcome {
            Ok(view) => return Ok(view),
            Err(err) if attempt < SUBMIT_ATTEMPTS && worth_retrying(&err) => {
                eprintln!(
                    "submission failed ({err:#}); trying again with the same Idempotency-Key"
                );
                tokio::time::sleep(Duration::from_secs(u64::from(attempt))).await;
            }
            Err(err) => return Err(err),
        }
    }
}

/// One Server-Sent Event.
struct SseEvent {
    event: String,
    data: String,
}

/// Splits a stream's text into events (`event:` and `data:` lines, a blank line ends one).
/// Works on bytes: a character split between two chunks is whole again by the end of its line.
#[derive(Default)]
struct SseParser {
    buffer: Vec<u8>,
    event: String,
    data: String,
}

impl SseParser {
    /// The events `chunk` completes; an error when one line grows past `MAX_ANSWER_BYTES` (a hostile
    /// server's endless line must not take the CLI's memory).
    fn push(&mut self, chunk: &[u8]) -> anyhow::Result<Vec<SseEvent>> {
        self.buffer.extend_from_slice(chunk);
        anyhow::ensure!(
            self.buffer.len() <= super::api::MAX_ANSWER_BYTES
                && self.data.len() <= super::api::MAX_ANSWER_BYTES,
            "the job's event stream sent an event larger than allowed"
        );
        let mut events = Vec::new();
        while let Some(end) = self.buffer.iter().position(|&b| b == b'\n') {
            let bytes: Vec<u8> = self.buffer.drain(..=end).collect();
            let line = String::from_utf8_lossy(&bytes);
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                if !self.data.is_empty() || !self.event.is_empty() {
                    events.push(SseEvent {
                        event: std::mem::take(&mut self.event),
                        data: std::mem::take(&mut self.data),
                    });
                }
            } else if let Some(value) = line.strip_prefix("event:") {
                self.event = value.trim_start().to_owned();
            } else if let Some(value) = line.strip_prefix("data:") {
                if !self.data.is_empty() {
                    self.data.push('\n');
                }
                self.data.push_str(value.strip_prefix(' ').unwrap_or(value));
            }
        }
        Ok(events)
    }
}

/// Follows job `id` until it ends, calling `on_job` with each view; the final view.
pub async fn follow(
    session: &Session,
    id: &str,
    mut on_job: impl FnMut(&Value),
) -> anyhow::Result<Value> {
    let url = session.url(&format!("/v1/videos/{id}/events"));
    let mut reconnects = 0;
    loop {
        let opened = session
            .send(|http| http.get(&url).header("accept", "text/event-stream"))
            .await;
        let response = match opened {
            Ok(response) => response,
            Err(err) if reconnects < FOLLOW_RECONNECTS && worth_retrying(&err) => {
                reconnects += 1;
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(err) => return Err(err),
        };
        let mut parser = SseParser::default();
        let mut body = response.bytes_stream();
        let mut ended = false;
        // Ends on a broken stream or IDLE_TIMEOUT of silence; the job's state then decides.
        while let Ok(Some(Ok(chunk))) = tokio::time::timeout(IDLE_TIMEOUT, body.next()).await {
            for event in parser.push(&chunk)? {
                match event.event.as_str() {
                    "job" => {
                        if let Ok(view) = serde_json::from_str::<Value>(&event.data) {
                            on_job(&super::terminal::clean_json(view));
                        }
                    }
                    "end" => ended = true,
                    _ => {}
                }
            }
            if ended {
                break;
            }
        }
        // The job's state decides: the stream also ends for an expiring token or a replica going away.
        let view = session
            .json(reqwest::Method::GET, &format!("/v1/videos/{id}"), None)
            .await?;
        if matches!(
            view["status"].as_str(),
            Some("succeeded" | "failed" | "cancelled")
        ) {
            return Ok(view);
        }
        reconnects += 1;
        if reconnects > FOLLOW_RECONNECTS {
            anyhow::bail!(
                "the job's event stream keeps ending; follow it with `sonicgw videos get {id}`"
            );
        }
    }
}

/// The largest video the CLI writes: far above any job the plans allow (a 60 s 1024 px video is tens of
/// MB), so only a broken or hostile server reaches it, and then cannot fill the user's disk.
pub const MAX_VIDEO_BYTES: u64 = 2 * 1024 * 1024 * 1024;

/// Whether `start` (a file's first bytes, at least 8) begins like an MP4: an ISO BMFF `ftyp` box.
fn looks_like_mp4(start: &[u8]) -> bool {
    start.len() >= 8 && &start[4..8] == b"ftyp"
}

/// Downloads job `id`'s video to `out`, through a temporary file renamed when complete. The answer must
/// be an MP4 (it starts with an `ftyp` box) of at most [`MAX_VIDEO_BYTES`]; anything else is not kept.
pub async fn download(session: &Session, id: &str, out: &Path) -> anyhow::Result<u64> {
    let url = session.url(&format!("/v1/videos/{id}/content"));
    let response = session
        .send(|http| http.get(&url).timeout(Duration::from_secs(3600)))
        .await?;
    if let Some(length) = response.content_length() {
        anyhow::ensure!(
            length <= MAX_VIDEO_BYTES,
            "the server offers {length} bytes, more than a video can be ({} GiB); nothing was saved",
            MAX_VIDEO_BYTES >> 30
        );
    }
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let partial = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("writing into {}", dir.display()))?;
    let mut file = tokio::fs::File::from_std(partial.reopen()?);
    let mut written = 0u64;
    let mut head = Vec::with_capacity(8);
    let mut body = response.bytes_stream();
    loop {
        let next = tokio::time::timeout(IDLE_TIMEOUT, body.next())
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "the download stalled: nothing arrived for {} s",
                    IDLE_TIMEOUT.as_secs()
                )
            })?;
        let Some(chunk) = next else { break };
        let chunk = chunk.context("the download was interrupted")?;
        if written < 8 {
            head.extend_from_slice(&chunk[..chunk.len().min(8 - written as usize)]);
            anyhow::ensure!(
                head.len() < 8 || looks_like_mp4(&head),
                "the server's answer is not an MP4 video; nothing was saved"
            );
        }
        written += chunk.len() as u64;
        anyhow::ensure!(
            written <= MAX_VIDEO_BYTES,
            "the download is larger than a video can be ({} GiB); nothing was saved",
            MAX_VIDEO_BYTES >> 30
        );
        file.write_all(&chunk).await?;
    }
    anyhow::ensure!(
        looks_like_mp4(&head),
        "the server's answer is not an MP4 video; nothing was saved"
    );
    file.flush().await?;
    drop(file);
    // A temporary file is private (0600); the video is an ordinary file of the user's.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(partial.path(), std::fs::Permissions::from_mode(0o644))?;
    }
    partial
        .persist(out)
        .with_context(|| format!("writing {}", out.display()))?;
    Ok(written)
}

/// One line for a job in progress: stage, queue position and the estimates.
pub fn describe(view: &Value) -> String {
    let mut parts = vec![view["stage"].as_str().unwrap_or("queued").to_owned()];
    if let Some(position) = view["queue_position"].as_i64() {
        parts.push(format!("#{position} in queue"));
    }
    if let Some(start) = view["estimated_start_s"].as_f64().filter(|s| *s > 0.0) {
        parts.push(format!("starts in ~{}", human_seconds(start)));
    }
    if let Some(eta) = view["eta_s"].as_f64() {
        parts.push(format!("done in ~{}", human_seconds(eta)));
    }
    parts.join(" · ")
}

fn human_seconds(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_iso_media_file_counts_as_a_video() {
        assert!(looks_like_mp4(b"\0\0\0\x20ftypisom\0\0\x02\0"));
        assert!(!looks_like_mp4(b"<html><body>"));
        assert!(!looks_like_mp4(b"\0\0\0\x20moov"));
        assert!(!looks_like_mp4(b"ftyp"));
    }

    #[test]
    fn sse_events_are_split_across_chunks() {
        let mut parser = SseParser::default();
        let text =
            "event: job\ndata: {\"a\":\"人脸\"}\n\n: keep-alive\n\nevent: end\r\ndata: {}\r\n\r\n";
        // Split inside the first Chinese character's UTF-8 bytes.
        let split = text.find('人').unwrap() + 1;
        assert!(parser.push(&text.as_bytes()[..split]).unwrap().is_empty());
        let events = parser.push(&text.as_bytes()[split..]).unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].event, "job");
        assert_eq!(events[0].data, "{\"a\":\"人脸\"}");
        assert_eq!(events[1].event, "end");
    }

    #[test]
    fn an_endless_event_line_is_refused_not_buffered() {
        let mut parser = SseParser::default();
        let chunk = "x".repeat(1024 * 1024);
        let mut refused = false;
        for _ in 0..=super::super::api::MAX_ANSWER_BYTES / chunk.len() {
            if parser.push(chunk.as_bytes()).is_err() {
                refused = true;
                break;
            }
        }
        assert!(refused);
    }

    #[test]
    fn files_are_recognised_by_their_first_bytes() {
        assert_eq!(sniff_image(b"\x89PNG\r\n\x1a\n...."), Some("png"));
        assert_eq!(sniff_image(b"RIFF\0\0\0\0WEBPVP8 "), Some("webp"));
        assert_eq!(sniff_image(b"GIF89a"), None);
        assert_eq!(sniff_audio(b"RIFF\0\0\0\0WAVEfmt "), Some("wav"));
        assert_eq!(sniff_audio(b"\0\0\0\x20ftypM4A "), Some("mp4"));
        assert_eq!(sniff_audio(b"OggS\0"), Some("ogg"));
        assert_eq!(sniff_audio(b"hello world"), None);
    }

    #[test]
    fn progress_lines_name_stage_queue_and_estimates() {
        let view = serde_json::json!({"stage": "queued", "queue_position": 3, "estimated_start_s": 75.0, "eta_s": 90.4});
        assert_eq!(
            describe(&view),
            "queued · #3 in queue · starts in ~1m15s · done in ~1m30s"
        );
    }
}
