//! Provenance: `POST /v1/provenance/verify` reads the labels and C2PA manifest of any uploaded
//! video, no account needed; `GET /v1/videos/{id}/provenance` those of a job's own video.
//!
//! The verify endpoint treats every upload as hostile: the anonymous rate limit (per client
//! network and for everyone) and a bounded number of uploads in flight are checked before the body
//! is read; the body streams to a scratch file and is refused with 413 the moment it passes
//! `verify_max_bytes`; the file is then checked as an MP4 and parsed on a blocking thread, a bounded
//! number at once, within a time budget, with no network access (`provenance::verify`).

use std::time::Duration;

use axum::body::Body;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::Json;
use futures::StreamExt;
use tokio::io::AsyncWriteExt;

use crate::domain::JobId;
use crate::http::caller::{Caller, ClientInfo};
use crate::http::error::ApiError;
use crate::http::middleware::RateLimitSlot;
use crate::http::state::AppState;
use crate::provenance::verify::{ProvenanceReport, VerifyError};
use crate::ratelimit::Quota;
use crate::videos::provenance::ProvenanceError;

/// Verifications one client network may ask for per minute.
pub const VERIFY_PER_CLIENT_PER_MINUTE: u32 = 10;
/// Verifications all clients together may ask for per minute (per deployment with Redis, else
/// per process).
pub const VERIFY_PER_MINUTE: u32 = 120;

impl From<VerifyError> for ApiError {
    fn from(err: VerifyError) -> Self {
        let detail = err.to_string();
        match err {
            VerifyError::NotReadable(_) | VerifyError::TimedOut(_) | VerifyError::ReaderFailed => {
                ApiError::Rejected {
                    status: StatusCode::UNPROCESSABLE_ENTITY,
                    code: err.code(),
                    detail,
                    errors: Vec::new(),
                }
            }
            VerifyError::Busy => ApiError::Busy {
                code: "verify_busy",
                detail,
                retry_after: Duration::from_secs(5),
            },
            VerifyError::Io(err) => ApiError::Internal(err.into()),
        }
    }
}

impl From<ProvenanceError> for ApiError {
    fn from(err: ProvenanceError) -> Self {
        match err {
            ProvenanceError::Video(err) => err.into(),
            // Our own stored video failing the check is our fault, not the caller's.
            ProvenanceError::Verify(VerifyError::Busy) => VerifyError::Busy.into(),
            ProvenanceError::Verify(err) => ApiError::Internal(anyhow::anyhow!(
                "reading a stored video's provenance: {err}"
            )),
        }
    }
}

/// One request from the verify endpoint's anonymous rate limit, taken before the body is read.
pub struct VerifyAllowance;

impl FromRequestParts<AppState> for VerifyAllowance {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let Ok(client) = ClientInfo::from_request_parts(parts, state).await;
        let network = client
            .ip
            .map(crate::net::client_network)
            .unwrap_or_else(|| "unknown".to_owned());
        let decision = state
            .rate_limiter
            .check_anonymous(
                "verify",
                &network,
                Quota {
                    user: VERIFY_PER_CLIENT_PER_MINUTE,
                    tenant: VERIFY_PER_MINUTE,
                },
            )
            .await;
        if let Some(slot) = parts.extensions.get::<RateLimitSlot>() {
            let _ = slot.0.set(decision);
        }
        if !decision.allowed {
            crate::metrics::rate_limited(decision.bucket.as_str());
            return Err(ApiError::RateLimited(decision));
        }
        Ok(VerifyAllowance)
    }
}

/// The labels and C2PA manifest of an uploaded MP4, with the manifest's validation state. The body
/// is the video itself (any content type). No account is needed; the rate limit counts per client
/// network.
#[utoipa::path(post, path = "/v1/provenance/verify", tag = "provenance",
    request_body(content = Vec<u8>, content_type = "video/mp4",
        description = "the MP4 to check, as the whole body (at most `verify_max_bytes`)"),
    responses(
        (status = 200, description = "the labels and the C2PA manifest; `c2pa.state` is `absent` \
            for a video without one", body = ProvenanceReport),
        (status = 413, description = "file_too_large: over `verify_max_bytes`", body = crate::http::error::Problem),
        (status = 422, description = "not_mp4, malformed_mp4 (a box does not fit in the file or \
            its parent), verify_timeout or unreadable_manifest", body = crate::http::error::Problem),
        (status = 429, description = "rate_limited", body = crate::http::error::Problem),
        (status = 503, description = "verify_busy: too many checks at once", body = crate::http::error::Problem)))]
pub async fn verify(
    State(state): State<AppState>,
    _allowance: VerifyAllowance,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<ProvenanceReport>, ApiError> {
    let limit = state.config.verify_max_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit) {
        return Err(too_large(limit));
    }
    let verifier = &state.videos.verifier;
    let _upload = verifier.admit_upload()?;
    let uploads = state.videos.settings.work_dir.join("uploads");
    tokio::fs::create_dir_all(&uploads)
        .await
        .map_err(anyhow::Error::from)?;
    // Removed with the file when the request ends, whatever happens.
    let dir = tempfile::tempdir_in(&uploads).map_err(anyhow::Error::from)?;
    let path = dir.path().join("video.mp4");
    let mut file = tokio::fs::File::create(&path)
        .await
        .map_err(anyhow::Error::from)?;
    let mut received: u64 = 0;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::BadRequest {
            code: "invalid_body",
            detail: format!("the upload could not be read: {e}"),
        })?;
        received += chunk.len() as u64;
        if received > limit {
            return Err(too_large(limit));
        }
        file.write_all(&chunk).await.map_err(anyhow::Error::from)?;
    }
    file.flush().await.map_err(anyhow::Error::from)?;
    drop(file);
    Ok(Json(verifier.verify(&path).await?))
}

fn too_large(limit: u64) -> ApiError {
    ApiError::Rejected {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        code: "file_too_large",
        detail: format!("the video is larger than {limit} bytes"),
        errors: Vec::new(),
    }
}

/// The labels and C2PA manifest of a succeeded job's video, read back from storage.
#[utoipa::path(get, path = "/v1/videos/{id}/provenance", tag = "videos", params(("id" = String, Path)),
    responses((status = 200, body = ProvenanceReport), (status = 404, body = crate::http::error::Problem),
        (status = 409, description = "video_not_ready: the job has not succeeded", body = crate::http::error::Problem),
        (status = 410, description = "video_expired: removed after the retention period", body = crate::http::error::Problem),
        (status = 503, description = "verify_busy: too many checks at once", body = crate::http::error::Problem)),
    security(("bearer" = [])))]
pub async fn of_job(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<ProvenanceReport>, ApiError> {
    let id: JobId = id.parse().map_err(|_| ApiError::NotFound)?;
    let job = state.videos.find(caller.job_scope(), id).await?;
    Ok(Json(state.videos.provenance(&job).await?))
}
