//! The remote worker protocol, `/v1/worker/*`: lease a job, download its inputs, heartbeat, upload
//! the result, report a failure. Every handler takes a `WorkerCaller` (a worker token of an enabled
//! service account), and every job route checks the job runs under a lease of that account; a job
//! that does not is `404` (inputs, result, fail) or `409 lease_lost` (heartbeat).

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::TryStreamExt as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt as _;

use crate::domain::{JobId, Stage};
use crate::http::caller::WorkerCaller;
use crate::http::error::ApiError;
use crate::http::extract::{ApiJson, ApiPath};
use crate::http::state::AppState;
use crate::videos::remote::{RemoteFailure, MAX_LEASE_WAIT};

/// The largest result a worker may upload.
pub const MAX_RESULT_BYTES: u64 = 2 * 1024 * 1024 * 1024;
/// How long a result upload may send nothing before it is dropped.
const UPLOAD_IDLE: Duration = Duration::from_secs(60);
/// The header naming the lease on input downloads and result uploads.
const LEASE_HEADER: &str = "x-lease-id";
/// The optional header naming the engine instance that made a result (for its speed estimate).
const INSTANCE_HEADER: &str = "x-engine-instance";

/// A lease request.
#[derive(Deserialize, utoipa::ToSchema)]
pub struct LeaseRequest {
    /// The engines this worker runs (and has capacity on now).
    pub engines: Vec<String>,
    /// How long to wait for a job, 0 to 30 seconds.
    #[serde(default)]
    pub wait_s: u64,
}

/// A leased job: everything an engine needs, and where to fetch the inputs.
#[derive(Serialize, utoipa::ToSchema)]
pub struct LeasedJob {
    pub id: JobId,
    pub engine: String,
    pub attempt: i64,
    /// The validated parameters (`SonicParams`).
    #[schema(value_type = Object)]
    pub params: serde_json::Value,
    /// The inputs' formats, detected face and crop.
    #[schema(value_type = Object)]
    pub input: serde_json::Value,
    /// The output plan: size and frames.
    #[schema(value_type = Object)]
    pub output: serde_json::Value,
    pub image_url: String,
    pub audio_url: String,
    /// Seconds the gateway expects the engine to take (its cost model), for progress estimates.
    pub expected_s: Option<f64>,
}

/// A granted lease.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Lease {
    /// Send it with every call about this job.
    pub lease_id: String,
    /// Heartbeat well before this many seconds pass.
    pub lease_expires_in_s: u64,
    pub job: LeasedJob,
}

/// A lease renewal with the job's progress.
#[derive(Deserialize, utoipa::ToSchema)]
pub struct HeartbeatRequest {
    pub lease_id: String,
    pub stage: Stage,
    /// 0 to 1 within the whole job.
    pub progress: f64,
}

/// A renewed lease.
#[derive(Serialize, utoipa::ToSchema)]
pub struct HeartbeatResponse {
    pub lease_expires_in_s: u64,
}

/// One engine's capacity on a worker process.
#[derive(Deserialize, utoipa::ToSchema)]
pub struct EnginePresence {
    /// An engine the gateway has.
    pub engine: String,
    /// How many of its jobs this process can run at once now (healthy GPU places, or lanes), 0 to 256.
    pub capacity: u32,
}

/// A worker process's report of what it can run.
#[derive(Deserialize, utoipa::ToSchema)]
pub struct PresenceRequest {
    /// Names this process for as long as it runs: 8 to 32 of a-z and 0-9 (e.g. a random UUID's hex).
    pub process: String,
    /// At most 16 engines.
    pub engines: Vec<EnginePresence>,
}

/// When to report next.
#[derive(Serialize, utoipa::ToSchema)]
pub struct PresenceResponse {
    /// Report again within this many seconds, or the process stops counting.
    pub report_every_s: u64,
}

/// A job's failure on the worker.
#[derive(Deserialize, utoipa::ToSchema)]
pub struct FailRequest {
    pub lease_id: String,
    /// `[a-z_]{1,64}`, e.g. `gpu_out_of_memory`.
    pub code: String,
    /// One line for the user, at most 300 characters.
    pub message: String,
    /// For the operator, at most 4000 characters.
    #[serde(default)]
    pub detail: String,
    /// The failure was on the service's side: the user's quota is given back.
    pub server_side: bool,
    /// The machine failed, not the job: run it again elsewhere (up to `job_max_attempts`).
    pub retry: bool,
}

fn lease_lost() -> ApiError {
    ApiError::Conflict {
        code: "lease_lost",
        detail: "this job is no longer under this lease; stop working on it".to_owned(),
    }
}

fn rejected(code: &'static str, detail: impl Into<String>) -> ApiError {
    ApiError::Rejected {
        status: StatusCode::UNPROCESSABLE_ENTITY,
        code,
        detail: detail.into(),
        errors: Vec::new(),
    }
}

fn lease_header(headers: &HeaderMap) -> Result<&str, ApiError> {
    headers
        .get(LEASE_HEADER)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| ApiError::invalid("X-Lease-Id", "the lease id is required"))
}

/// Leases the next job for these engines, waiting up to `wait_s` for one.
#[utoipa::path(
    post, path = "/v1/worker/lease", tag = "worker", request_body = LeaseRequest,
    responses(
        (status = 200, description = "A job, leased", body = Lease),
        (status = 204, description = "No job within wait_s"),
        (status = 401, description = "No valid worker token", body = crate::http::error::Problem),
    ),
    security(("bearer" = []))
)]
pub async fn lease(
    State(state): State<AppState>,
    worker: WorkerCaller,
    ApiJson(request): ApiJson<LeaseRequest>,
) -> Result<Response, ApiError> {
    if request.engines.is_empty() || request.engines.len() > 16 {
        return Err(ApiError::invalid("engines", "name 1 to 16 engines"));
    }
    if request.wait_s > MAX_LEASE_WAIT.as_secs() {
        return Err(ApiError::invalid("wait_s", "at most 30 seconds"));
    }
    let leased = state
        .videos
        .lease_remote(
            worker.account_id,
            &request.engines,
            Duration::from_secs(request.wait_s),
        )
        .await?;
    let Some((lease_id, job)) = leased else {
        return Ok(StatusCode::NO_CONTENT.into_response());
    };
    let json = |text: &str| serde_json::from_str(text).map_err(anyhow::Error::from);
    let base = format!("{}/v1/worker/jobs/{}/inputs", state.issuer, job.id);
    Ok(Json(Lease {
        lease_id: lease_id.to_string(),
        lease_expires_in_s: state.videos.settings.lease.as_secs(),
        job: LeasedJob {
            id: job.id,
            engine: job.engine.clone(),
            attempt: job.attempts,
            params: json(&job.params)?,
            input: json(&job.input)?,
            output: json(&job.output_plan)?,
            image_url: format!("{base}/image"),
            audio_url: format!("{base}/audio"),
            expected_s: state.videos.expected_remote_s(&job),
        },
    })
    .into_response())
}

/// Reports what this worker process can run now, so that queue ETAs count it; a report older than
/// 30 seconds stops counting, and a process stopping reports capacity 0.
#[utoipa::path(
    post, path = "/v1/worker/presence", tag = "worker", request_body = PresenceRequest,
    responses(
        (status = 200, description = "Recorded", body = PresenceResponse),
        (status = 401, description = "No valid worker token", body = crate::http::error::Problem),
        (status = 422, description = "An unknown engine, a capacity over 256 or a bad process name", body = crate::http::error::Problem),
        (status = 429, description = "too_many_processes: 64 other processes of this account are reporting", body = crate::http::error::Problem),
    ),
    security(("bearer" = []))
)]
pub async fn presence(
    State(state): State<AppState>,
    worker: WorkerCaller,
    ApiJson(request): ApiJson<PresenceRequest>,
) -> Result<Json<PresenceResponse>, ApiError> {
    use crate::videos::presence::{PresenceRejection, FRESH_FOR, MAX_CAPACITY, REPORT_EVERY};
    if !crate::videos::remote::valid_process_name(&request.process) {
        return Err(ApiError::invalid("process", "8 to 32 of a-z and 0-9"));
    }
    if request.engines.len() > 16 {
        return Err(ApiError::invalid("engines", "at most 16 engines"));
    }
    let mut engines: Vec<crate::storage::Presence> = Vec::with_capacity(request.engines.len());
    for entry in request.engines {
        if state.videos.engines.get(&entry.engine).is_none() {
            return Err(ApiError::invalid("engine", "an engine this gateway has"));
        }
        if entry.capacity > MAX_CAPACITY {
            return Err(ApiError::invalid("capacity", "0 to 256"));
        }
        if engines.iter().any(|e| e.engine == entry.engine) {
            return Err(ApiError::invalid("engine", "each engine once"));
        }
        engines.push(crate::storage::Presence {
            engine: entry.engine,
            capacity: entry.capacity,
        });
    }
    match state
        .videos
        .remote
        .record(worker.account_id, &request.process, &engines)
        .await?
    {
        Ok(()) => Ok(Json(PresenceResponse {
            report_every_s: REPORT_EVERY.as_secs(),
        })),
        Err(PresenceRejection::TooManyProcesses) => Err(ApiError::Limited {
            code: "too_many_processes",
            detail: "64 other processes of this worker account are reporting; give each host its \
                     own account (`sonicgw admin create-worker`)"
                .to_owned(),
            retry_after: FRESH_FOR,
        }),
    }
}

/// Downloads an input (`image` or `audio`) of a job this worker leases.
#[utoipa::path(
    get, path = "/v1/worker/jobs/{id}/inputs/{name}", tag = "worker",
    params(("id" = String, Path), ("name" = String, Path, description = "image or audio"),
        ("X-Lease-Id" = String, Header)),
    responses(
        (status = 200, description = "The file", content_type = "application/octet-stream"),
        (status = 404, description = "Not a job under this worker's lease", body = crate::http::error::Problem),
        (status = 422, description = "validation_failed: no X-Lease-Id", body = crate::http::error::Problem),
    ),
    security(("bearer" = []))
)]
pub async fn input(
    State(state): State<AppState>,
    worker: WorkerCaller,
    ApiPath((id, name)): ApiPath<(JobId, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let lease = lease_header(&headers)?;
    let Some((_, job)) = state
        .videos
        .leased_job(worker.account_id, id, lease)
        .await?
    else {
        return Err(ApiError::NotFound);
    };
    let input: crate::videos::view::JobInput =
        serde_json::from_str(&job.input).map_err(anyhow::Error::from)?;
    let format = match name.as_str() {
        "image" => input.image.format,
        "audio" => input.audio.stored_format().to_owned(),
        _ => return Err(ApiError::NotFound),
    };
    let key = crate::videos::input_key(job.tenant_id, job.id, &name, &format);
    let read = state
        .videos
        .blobs
        .read(&key, None)
        .await?
        .ok_or(ApiError::NotFound)?;
    let mut response_headers = HeaderMap::new();
    response_headers.insert(header::CONTENT_LENGTH, HeaderValue::from(read.size));
    response_headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    let body = Body::from_stream(read.stream);
    Ok((StatusCode::OK, response_headers, body).into_response())
}

/// Renews the lease and records progress; `409 lease_lost` tells the worker to stop.
#[utoipa::path(
    post, path = "/v1/worker/jobs/{id}/heartbeat", tag = "worker", request_body = HeartbeatRequest,
    params(("id" = String, Path)),
    responses(
        (status = 200, description = "Lease renewed", body = HeartbeatResponse),
        (status = 409, description = "lease_lost: cancelled, deleted or taken over", body = crate::http::error::Problem),
    ),
    security(("bearer" = []))
)]
pub async fn heartbeat(
    State(state): State<AppState>,
    worker: WorkerCaller,
    ApiPath(id): ApiPath<JobId>,
    ApiJson(request): ApiJson<HeartbeatRequest>,
) -> Result<Json<HeartbeatResponse>, ApiError> {
    if !(0.0..=1.0).contains(&request.progress) {
        return Err(ApiError::invalid("progress", "between 0 and 1"));
    }
    if request.stage == Stage::Queued {
        return Err(ApiError::invalid(
            "stage",
            "a running job's stage, not queued",
        ));
    }
    let renewed = state
        .videos
        .heartbeat_remote(
            worker.account_id,
            id,
            &request.lease_id,
            request.stage,
            request.progress,
        )
        .await?;
    let lease = renewed.ok_or_else(lease_lost)?;
    Ok(Json(HeartbeatResponse {
        lease_expires_in_s: lease.as_secs(),
    }))
}

/// Reports that the job failed on the worker: requeued when `retry` and attempts remain, else failed.
#[utoipa::path(
    post, path = "/v1/worker/jobs/{id}/fail", tag = "worker", request_body = FailRequest,
    params(("id" = String, Path)),
    responses(
        (status = 204, description = "Recorded"),
        (status = 404, description = "Not a job under this worker's lease", body = crate::http::error::Problem),
        (status = 422, description = "Invalid code, message or detail", body = crate::http::error::Problem),
    ),
    security(("bearer" = []))
)]
pub async fn fail(
    State(state): State<AppState>,
    worker: WorkerCaller,
    ApiPath(id): ApiPath<JobId>,
    ApiJson(request): ApiJson<FailRequest>,
) -> Result<StatusCode, ApiError> {
    let failure = RemoteFailure::parse(
        request.code,
        request.message,
        request.detail,
        request.server_side,
        request.retry,
    )
    .map_err(|(field, message)| ApiError::invalid(field, message))?;
    if state
        .videos
        .fail_remote(worker.account_id, id, &request.lease_id, failure)
        .await?
    {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound)
    }
}

/// Uploads the finished MP4 (streamed; `Content-Length` and `X-Content-SHA256` required). The job
/// succeeds when the file checks out; anything wrong is `422` and changes nothing.
#[utoipa::path(
    put, path = "/v1/worker/jobs/{id}/result", tag = "worker",
    params(("id" = String, Path), ("X-Lease-Id" = String, Header),
        ("X-Content-SHA256" = String, Header, description = "hex SHA-256 of the body"),
        ("X-Engine-Instance" = Option<String>, Header, description = "the engine instance that made it (e.g. comfyui-1), for the gateway's speed estimates")),
    request_body(content_type = "video/mp4", description = "The finished video"),
    responses(
        (status = 204, description = "Stored; the job succeeded"),
        (status = 404, description = "Not a job under this worker's lease", body = crate::http::error::Problem),
        (status = 422, description = "result_length_mismatch, result_checksum_mismatch or result_not_mp4", body = crate::http::error::Problem),
    ),
    security(("bearer" = []))
)]
pub async fn result(
    State(state): State<AppState>,
    worker: WorkerCaller,
    ApiPath(id): ApiPath<JobId>,
    request: Request,
) -> Result<StatusCode, ApiError> {
    let headers = request.headers();
    let lease = lease_header(headers)?.to_owned();
    let length: u64 = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| ApiError::invalid("Content-Length", "the length is required"))?;
    if length == 0 || length > MAX_RESULT_BYTES {
        return Err(rejected("result_too_large", "a result is 1 byte to 2 GiB"));
    }
    let expected = headers
        .get("x-content-sha256")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| hex::decode(v).ok())
        .filter(|v| v.len() == 32)
        .ok_or_else(|| ApiError::invalid("X-Content-SHA256", "64 hex digits"))?;
    if state
        .videos
        .leased_job(worker.account_id, id, &lease)
        .await?
        .is_none()
    {
        return Err(ApiError::NotFound);
    }
    let instance = match headers.get(INSTANCE_HEADER) {
        None => None,
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .filter(|v| crate::videos::remote::valid_instance_name(v))
                .ok_or_else(|| {
                    ApiError::invalid(
                        "X-Engine-Instance",
                        "1 to 64 of A-Z, a-z, 0-9, '.', '_', '-'",
                    )
                })?
                .to_owned(),
        ),
    };
    let Some(_uploading) = state.videos.result_uploads.start(id) else {
        return Err(ApiError::Conflict {
            code: "upload_in_progress",
            detail: "a result for this job is being uploaded already".to_owned(),
        });
    };
    let dir = state.videos.settings.work_dir.join("uploads");
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(anyhow::Error::from)?;
    let path = dir.join(format!("{id}-{}.mp4", uuid::Uuid::new_v4().simple()));
    let work = receive_and_accept(
        &state,
        &worker,
        Upload {
            id,
            lease: &lease,
            instance: instance.as_deref(),
            length,
            expected: &expected,
        },
        request,
        &path,
    );
    let renew = state
        .videos
        .renew_during_upload(worker.account_id, id, &lease);
    tokio::pin!(work, renew);
    let outcome = tokio::select! {
        outcome = &mut work => outcome,
        // The lease was lost meanwhile: the upload still ends, and is then refused.
        () = &mut renew => work.await,
    };
    let _ = tokio::fs::remove_file(&path).await;
    outcome
}

/// What a result upload's headers said.
struct Upload<'a> {
    id: JobId,
    lease: &'a str,
    instance: Option<&'a str>,
    length: u64,
    expected: &'a [u8],
}

/// Streams the body to `path` checking length and digest, then hands it to the video service.
async fn receive_and_accept(
    state: &AppState,
    worker: &WorkerCaller,
    upload: Upload<'_>,
    request: Request,
    path: &std::path::Path,
) -> Result<StatusCode, ApiError> {
    let Upload {
        id,
        lease,
        instance,
        length,
        expected,
    } = upload;
    let mut file = tokio::fs::File::create(path)
        .await
        .map_err(anyhow::Error::from)?;
    let mut hasher = Sha256::new();
    let mut received: u64 = 0;
    let mut body = request.into_body().into_data_stream();
    loop {
        let next = tokio::time::timeout(UPLOAD_IDLE, body.try_next())
            .await
            .map_err(|_| ApiError::Rejected {
                status: StatusCode::REQUEST_TIMEOUT,
                code: "upload_stalled",
                detail: format!(
                    "no bytes arrived for {} s; upload the result again",
                    UPLOAD_IDLE.as_secs()
                ),
                errors: Vec::new(),
            })?;
        let Some(chunk) = next.map_err(|e| ApiError::BadRequest {
            code: "body_unreadable",
            detail: e.to_string(),
        })?
        else {
            break;
        };
        received += chunk.len() as u64;
        if received > length {
            return Err(rejected(
                "result_length_mismatch",
                "the body is longer than Content-Length",
            ));
        }
        hasher.update(&chunk);
        file.write_all(&chunk).await.map_err(anyhow::Error::from)?;
    }
    file.flush().await.map_err(anyhow::Error::from)?;
    drop(file);
    if received != length {
        return Err(rejected(
            "result_length_mismatch",
            "the body is shorter than Content-Length",
        ));
    }
    if hasher.finalize()[..] != *expected {
        return Err(rejected(
            "result_checksum_mismatch",
            "the body's SHA-256 differs from X-Content-SHA256",
        ));
    }
    match state
        .videos
        .accept_result(
            worker.account_id,
            &worker.account_name,
            instance,
            id,
            lease,
            path,
        )
        .await?
    {
        Ok(true) => Ok(StatusCode::NO_CONTENT),
        Ok(false) => Err(ApiError::NotFound),
        Err(rejection) => Err(rejected(rejection.code(), rejection.to_string())),
    }
}
