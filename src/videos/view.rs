//! The job as the API shows it.

use serde::{Deserialize, Serialize};

use crate::domain::{JobId, JobStatus, SonicParams, Stage};
use crate::media::face::Rect;
use crate::storage::jobs::JobRecord;
use crate::time::UnixMillis;

/// What intake measured about the uploads, stored with the job.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobInput {
    pub image: ImageInput,
    pub audio: AudioInput,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ImageInput {
    pub format: String,
    pub width: u32,
    pub height: u32,
    #[schema(value_type = Object)]
    pub face: Rect,
    /// How many faces were found; the largest is used.
    pub faces_detected: usize,
    /// The region of the photo that becomes the video (the face box grown by expand_ratio).
    #[schema(value_type = Object)]
    pub crop: Rect,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AudioInput {
    /// The upload's container: wav, mp3, flac, ogg, m4a or webm.
    pub format: String,
    pub duration: f64,
    pub sample_rate: u32,
    pub channels: u16,
    /// Set when the job keeps the recording in another format than the upload's: `wav` for one ffmpeg
    /// decoded (Opus, WebM, fragmented MP4), as 16-bit mono.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored_as: Option<String>,
}

impl AudioInput {
    /// The format of the recording the job keeps (the extension of its stored file).
    pub fn stored_format(&self) -> &str {
        self.stored_as.as_deref().unwrap_or(&self.format)
    }
}

/// The planned output.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OutputPlan {
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub frames: u32,
}

/// A failure the user can act on.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct JobError {
    pub code: String,
    /// One line for people: what went wrong and what to do.
    pub message: String,
    /// The operator's detail (tool output, paths); present for platform admins only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// Where to get the finished video.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct JobResult {
    /// A link that works without a bearer token until `expires_at`: the gateway's signed link (a path,
    /// or absolute under `public_base_url`), or with `delivery = presigned` an S3 presigned URL.
    pub url: String,
    pub expires_at: String,
    pub content_type: &'static str,
    pub bytes: i64,
}

/// A video job.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct JobView {
    pub id: JobId,
    /// The job's tenant: shown to platform admins only, who see every tenant's jobs.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub tenant_id: Option<crate::domain::TenantId>,
    pub status: JobStatus,
    pub stage: Stage,
    pub progress: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_position: Option<i64>,
    /// Seconds until it is expected to start (0 once running); null once it has ended, or when no
    /// slot can run its engine.
    pub estimated_start_s: Option<f64>,
    /// Seconds until it is expected to be done; null once it has ended, or when no slot can run its
    /// engine.
    pub eta_s: Option<f64>,
    pub engine: String,
    pub created_at: String,
    /// When its latest attempt started (a job put back in the queue starts again).
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub params: SonicParams,
    /// Parameters the request gave that this job's engine does not use (accepted because they were
    /// valid and within the plan; the video does not depend on them), e.g. `inference_steps` on the
    /// `builtin` engine or `motion_scale` on `sonic`. Empty when every given parameter is used.
    pub ignored_parameters: Vec<String>,
    pub input: JobInput,
    pub output: OutputPlan,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<JobError>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<JobResult>,
}

/// Seconds as shown: tenths are as precise as an estimate gets.
pub fn tenths(seconds: f64) -> f64 {
    (seconds * 10.0).round() / 10.0
}

/// Stored JSON that no longer parses is a server bug, reported as such.
fn parse<T: serde::de::DeserializeOwned>(what: &str, json: &str) -> anyhow::Result<T> {
    serde_json::from_str(json).map_err(|e| anyhow::anyhow!("stored job {what} is invalid: {e}"))
}

impl JobView {
    pub fn from_record(
        job: &JobRecord,
        queue_position: Option<i64>,
        result: Option<JobResult>,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            id: job.id,
            tenant_id: None,
            status: job.status,
            stage: job.stage,
            progress: job.progress,
            queue_position: (job.status == JobStatus::Queued)
                .then_some(queue_position)
                .flatten(),
            estimated_start_s: None,
            eta_s: None,
            engine: job.engine.clone(),
            created_at: job.created_at.to_rfc3339(),
            started_at: job.started_at.map(UnixMillis::to_rfc3339),
            finished_at: job.finished_at.map(UnixMillis::to_rfc3339),
            params: parse("params", &job.params)?,
            ignored_parameters: job.ignored_parameters.clone(),
            input: parse("input", &job.input)?,
            output: parse("output", &job.output_plan)?,
            error: job.error_code.as_ref().map(|code| JobError {
                code: code.clone(),
                message: job.error_message.clone().unwrap_or_default(),
                detail: None,
            }),
            result,
        })
    }
}
