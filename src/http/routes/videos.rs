//! `/v1/videos`: submit a photo and a recording, follow the job, fetch the MP4. Another tenant's job
//! answers 404 on every route; users see their own jobs, admins their tenant's.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Multipart, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::Stream;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::domain::{JobId, JobStatus};
use crate::http::caller::Caller;
use crate::http::error::{ApiError, FieldError};
use crate::http::state::AppState;
use crate::storage::jobs::JobRecord;
use crate::videos::intake::{IntakeError, Submission, Submitted, UploadedFile};
use crate::videos::view::JobView;

const MAX_FIELD_BYTES: usize = 4096;

fn parse_job_id(raw: &str) -> Result<JobId, ApiError> {
    raw.parse().map_err(|_| ApiError::NotFound)
}

impl From<IntakeError> for ApiError {
    fn from(err: IntakeError) -> Self {
        let detail = err.to_string();
        match err {
            IntakeError::Media {
                code,
                field,
                message,
            } => ApiError::Rejected {
                status: StatusCode::UNPROCESSABLE_ENTITY,
                code,
                detail: message.clone(),
                errors: vec![FieldError {
                    field: field.to_owned(),
                    message,
                }],
            },
            IntakeError::Params { code, errors } => ApiError::Rejected {
                status: StatusCode::UNPROCESSABLE_ENTITY,
                code,
                detail: errors
                    .first()
                    .map(|e| e.message.clone())
                    .unwrap_or_default(),
                errors: errors
                    .into_iter()
                    .map(|e| FieldError {
                        field: e.field,
                        message: e.message,
                    })
                    .collect(),
            },
            IntakeError::UnsupportedParameter { parameters, .. } => ApiError::Rejected {
                status: StatusCode::UNPROCESSABLE_ENTITY,
                code: "unsupported_parameter",
                errors: parameters
                    .into_iter()
                    .map(|p| FieldError {
                        message: detail.clone(),
                        field: p,
                    })
                    .collect(),
                detail,
            },
            IntakeError::PlanLimit { limit, .. } => ApiError::Rejected {
                status: StatusCode::FORBIDDEN,
                code: "plan_limit",
                errors: vec![FieldError {
                    field: limit.to_owned(),
                    message: detail.clone(),
                }],
                detail,
            },
            IntakeError::Quota { retry_after, .. } => ApiError::Limited {
                code: "quota_exceeded",
                detail,
                retry_after,
            },
            IntakeError::UserBusy => ApiError::Limited {
                code: "too_many_uploads",
                detail,
                retry_after: Duration::from_secs(5),
            },
            IntakeError::ServerBusy => ApiError::Busy {
                code: "server_busy",
                detail,
                retry_after: Duration::from_secs(10),
            },
            IntakeError::IdempotencyInProgress => ApiError::Conflict {
                code: "idempotency_in_progress",
                detail,
            },
            IntakeError::IdempotencyMismatch => ApiError::Rejected {
                status: StatusCode::UNPROCESSABLE_ENTITY,
                code: "idempotency_key_reused",
                errors: vec![FieldError {
                    field: "Idempotency-Key".into(),
                    message: detail.clone(),
                }],
                detail,
            },
            IntakeError::Internal(err) => ApiError::Internal(err),
        }
    }
}

/// Streams one file field to disk, refusing it (413) once it passes `limit` bytes.
async fn save_field(
    field: &mut axum::extract::multipart::Field<'_>,
    name: &'static str,
    path: std::path::PathBuf,
    limit: u64,
) -> Result<UploadedFile, ApiError> {
    let mut file = tokio::fs::File::create(&path)
        .await
        .map_err(anyhow::Error::from)?;
    let mut hasher = Sha256::new();
    let mut written: u64 = 0;
    while let Some(chunk) = field.chunk().await.map_err(|e| multipart_error(&e))? {
        written += chunk.len() as u64;
        if written > limit {
            return Err(ApiError::Rejected {
                status: StatusCode::PAYLOAD_TOO_LARGE,
                code: "file_too_large",
                detail: format!("{name} is larger than {limit} bytes"),
                errors: vec![FieldError {
                    field: name.to_owned(),
                    message: format!("at most {limit} bytes"),
                }],
            });
        }
        hasher.update(&chunk);
        file.write_all(&chunk).await.map_err(anyhow::Error::from)?;
    }
    file.flush().await.map_err(anyhow::Error::from)?;
    Ok(UploadedFile {
        path,
        sha256: hex::encode(hasher.finalize()),
    })
}

fn multipart_error(err: &axum::extract::multipart::MultipartError) -> ApiError {
    if err.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::Rejected {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            code: "request_too_large",
            detail: "the upload is larger than the server accepts".to_owned(),
            errors: Vec::new(),
        };
    }
    ApiError::BadRequest {
        code: "invalid_multipart",
        detail: err.body_text(),
    }
}

/// Submits a video job: multipart `image` (JPEG/PNG/WebP), `audio` (WAV/MP3/FLAC/OGG/M4A) and Sonic's
/// parameters as text fields. Everything is validated before the job is queued.
#[utoipa::path(post, path = "/v1/videos", tag = "videos",
    request_body(content_type = "multipart/form-data", description = "image, audio, and optional duration, min_resolution, expand_ratio, inference_steps, dynamic_scale, motion_scale, seed, enable_lip_sync_correction, lip_sync_offset, engine, callback_url"),
    params(("Idempotency-Key" = Option<String>, Header, description = "replays the original job for the same request within 24 h")),
    responses(
        (status = 202, description = "Queued", body = JobView),
        (status = 200, description = "Replayed for the same Idempotency-Key", body = JobView),
        (status = 403, description = "plan_limit", body = crate::http::error::Problem),
        (status = 409, description = "idempotency_in_progress", body = crate::http::error::Problem),
        (status = 413, description = "file_too_large", body = crate::http::error::Problem),
        (status = 422, description = "validation_failed, duration_mismatch, no_face_detected, unsupported_*", body = crate::http::error::Problem),
        (status = 429, description = "quota_exceeded", body = crate::http::error::Problem),
    ),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Result<Response, ApiError> {
    let mut multipart = multipart.map_err(|e| ApiError::BadRequest {
        code: "invalid_multipart",
        detail: e.body_text(),
    })?;
    let videos = &state.videos;
    let idempotency_key = match headers.get("idempotency-key") {
        Some(value) => {
            let key = value
                .to_str()
                .ok()
                .filter(|k| !k.is_empty() && k.len() <= 255);
            Some(
                key.ok_or_else(|| {
                    ApiError::invalid("Idempotency-Key", "must be 1 to 255 visible characters")
                })?
                .to_owned(),
            )
        }
        None => None,
    };
    let uploads = videos.settings.work_dir.join("uploads");
    tokio::fs::create_dir_all(&uploads)
        .await
        .map_err(anyhow::Error::from)?;
    // Removed with everything in it when this request ends, whatever happens.
    let temp = tempfile::tempdir_in(&uploads).map_err(anyhow::Error::from)?;
    let mut image = None;
    let mut audio = None;
    let mut fields = HashMap::new();
    while let Some(mut field) = multipart
        .next_field()
        .await
        .map_err(|e| multipart_error(&e))?
    {
        let name = field.name().unwrap_or_default().to_owned();
        match name.as_str() {
            "image" if image.is_none() => {
                let limit = videos.settings.image_limits.max_bytes;
                image =
                    Some(save_field(&mut field, "image", temp.path().join("image"), limit).await?);
            }
            "audio" if audio.is_none() => {
                let limit = videos.settings.max_audio_bytes;
                audio =
                    Some(save_field(&mut field, "audio", temp.path().join("audio"), limit).await?);
            }
            "image" | "audio" => return Err(ApiError::invalid(&name, "was sent more than once")),
            _ if !crate::domain::params::PARAM_FIELDS.contains(&name.as_str()) => {
                // Refused as it arrives, so a request cannot make the server buffer arbitrary fields.
                return Err(ApiError::invalid(
                    &name,
                    "is not a parameter of this endpoint",
                ));
            }
            _ => {
                let mut value = Vec::new();
                while let Some(chunk) = field.chunk().await.map_err(|e| multipart_error(&e))? {
                    value.extend_from_slice(&chunk);
                    if value.len() > MAX_FIELD_BYTES {
                        return Err(ApiError::invalid(&name, "is too long"));
                    }
                }
                let value = String::from_utf8(value)
                    .map_err(|_| ApiError::invalid(&name, "must be UTF-8 text"))?;
                if fields.insert(name.clone(), value).is_some() {
                    return Err(ApiError::invalid(&name, "was sent more than once"));
                }
            }
        }
    }
    let missing = [("image", image.is_none()), ("audio", audio.is_none())];
    let (Some(image), Some(audio)) = (image, audio) else {
        let mut errors = Vec::new();
        for (name, missing) in missing {
            if missing {
                errors.push(FieldError {
                    field: name.to_owned(),
                    message: "is required".to_owned(),
                });
            }
        }
        return Err(ApiError::Validation(errors));
    };
    let submission = Submission {
        user: caller.user_id,
        tenant: caller.tenant_id,
        plan: caller.plan.clone(),
        image,
        audio,
        fields,
        idempotency_key,
    };
    let submitted = videos.submit(&caller.audit_context(), submission).await?;
    let (status, job) = match submitted {
        Submitted::Created(job) => (StatusCode::ACCEPTED, job),
        Submitted::Replayed(job) => (StatusCode::OK, job),
    };
    let view = videos.view(&job).await?;
    Ok((
        status,
        [(header::LOCATION, format!("/v1/videos/{}", job.id))],
        Json(view),
    )
        .into_response())
}

async fn find(state: &AppState, caller: &Caller, id: &str) -> Result<JobRecord, ApiError> {
    state
        .store
        .job(caller.job_scope(), parse_job_id(id)?)
        .await?
        .ok_or(ApiError::NotFound)
}

#[utoipa::path(get, path = "/v1/videos/{id}", tag = "videos", params(("id" = String, Path)),
    responses((status = 200, body = JobView), (status = 404, body = crate::http::error::Problem)),
    security(("bearer" = [])))]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    let job = find(&state, &caller, &id).await?;
    Ok(Json(for_caller(
        state.videos.view(&job).await?,
        &job,
        &caller,
    )))
}

/// A platform admin also sees the operator's detail of a failure (tool output, paths); everyone else
/// sees the code and the one-line message.
fn for_caller(mut view: JobView, job: &JobRecord, caller: &Caller) -> JobView {
    if caller.role == crate::domain::Role::PlatformAdmin {
        if let Some(error) = view.error.as_mut() {
            error.detail = job.error_detail.clone();
        }
    }
    view
}

/// Filters and paging of `GET /v1/videos`.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    pub status: Option<String>,
    /// 1 to 100, default 20.
    pub limit: Option<i64>,
    pub cursor: Option<String>,
}

/// A page of jobs, newest first.
#[derive(Serialize, utoipa::ToSchema)]
pub struct JobPage {
    pub items: Vec<JobView>,
    pub next_cursor: Option<String>,
}

#[utoipa::path(get, path = "/v1/videos", tag = "videos", params(ListParams),
    responses((status = 200, body = JobPage), (status = 422, body = crate::http::error::Problem)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    params: Result<Query<ListParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<JobPage>, ApiError> {
    let Query(params) = params.map_err(|e| ApiError::invalid("query", e.body_text()))?;
    let status = params
        .status
        .as_deref()
        .map(str::parse::<JobStatus>)
        .transpose()
        .map_err(|_| {
            ApiError::invalid(
                "status",
                "must be queued, running, succeeded, failed or cancelled",
            )
        })?;
    let limit = params.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::invalid("limit", "must be 1 to 100"));
    }
    let before = params
        .cursor
        .as_deref()
        .map(|c| {
            c.split_once('_')
                .and_then(|(at, id)| Some((at.parse::<i64>().ok()?, id.parse::<JobId>().ok()?)))
                .ok_or_else(|| ApiError::invalid("cursor", "is not a cursor this API returned"))
        })
        .transpose()?;
    let jobs = state
        .store
        .list_jobs(caller.job_scope(), status, before, limit)
        .await?;
    let next_cursor = (jobs.len() as i64 == limit)
        .then(|| jobs.last().map(|j| format!("{}_{}", j.created_at, j.id)))
        .flatten();
    let mut items = Vec::with_capacity(jobs.len());
    for job in &jobs {
        items.push(for_caller(state.videos.view(job).await?, job, &caller));
    }
    Ok(Json(JobPage { items, next_cursor }))
}

#[utoipa::path(post, path = "/v1/videos/{id}/cancel", tag = "videos", params(("id" = String, Path)),
    responses((status = 200, body = JobView), (status = 404, body = crate::http::error::Problem),
        (status = 409, description = "already finished", body = crate::http::error::Problem)),
    security(("bearer" = [])))]
pub async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    let job = find(&state, &caller, &id).await?;
    let Some(cancelled) = state
        .store
        .cancel_job(caller.job_scope(), job.id, crate::time::now_ms())
        .await?
    else {
        return Err(ApiError::Conflict {
            code: "job_finished",
            detail: format!("the job is {} and can no longer be cancelled", job.status),
        });
    };
    state.videos.events.changed(job.id);
    state.videos.finished(&cancelled).await;
    Ok(Json(state.videos.view(&cancelled).await?))
}

#[utoipa::path(delete, path = "/v1/videos/{id}", tag = "videos", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = crate::http::error::Problem)),
    security(("bearer" = [])))]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = parse_job_id(&id)?;
    let job = state
        .store
        .delete_job(caller.job_scope(), id, crate::time::now_ms())
        .await?
        .ok_or(ApiError::NotFound)?;
    state
        .videos
        .blobs
        .delete_prefix(&crate::videos::job_prefix(job.tenant_id, job.id))
        .await?;
    state.videos.events.changed(id);
    state
        .auditor
        .record(
            &caller.audit_context(),
            crate::audit::AuditEvent::new("video.delete", crate::audit::Outcome::Success)
                .target(id),
        )
        .await;
    Ok(StatusCode::NO_CONTENT)
}

use crate::videos::admission::MAX_STREAMS_PER_USER;
/// How often a stream re-reads its job when nothing in this process said it changed (changes made by
/// other processes sharing the database). In-process changes arrive at once through the event bus.
const STREAM_FALLBACK_POLL: Duration = Duration::from_secs(15);
/// How often a stream checks that its token has not been revoked (an in-memory lookup).
const STREAM_REVOCATION_CHECK: Duration = Duration::from_secs(2);

/// Server-Sent Events: one `job` event with the whole job for each status or progress change, and a
/// final `end` event when the job is finished, deleted, or the stream's token expires or is revoked
/// (`{"reason": "token_expired" | "token_revoked"}`: reconnect with a fresh token).
#[utoipa::path(get, path = "/v1/videos/{id}/events", tag = "videos", params(("id" = String, Path)),
    responses((status = 200, content_type = "text/event-stream", description = "job events"),
        (status = 404, body = crate::http::error::Problem),
        (status = 429, description = "too_many_streams", body = crate::http::error::Problem)),
    security(("bearer" = [])))]
pub async fn events(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let job = find(&state, &caller, &id).await?;
    let slot = state
        .videos
        .streams
        .try_take(caller.user_id)
        .ok_or(ApiError::Limited {
            code: "too_many_streams",
            detail: format!(
                "at most {MAX_STREAMS_PER_USER} event streams may be open at once; close one first"
            ),
            retry_after: Duration::from_secs(5),
        })?;
    let scope = caller.job_scope();
    let claims = Arc::clone(&caller.claims);
    let mut changes = state.videos.events.subscribe();
    let stream = async_stream::stream! {
        let _slot = slot;
        let expires = tokio::time::Instant::now()
            + Duration::from_secs(u64::try_from(claims.exp - crate::time::now_s()).unwrap_or(0));
        let mut revocation_check = tokio::time::interval(STREAM_REVOCATION_CHECK);
        let mut last: Option<(JobStatus, String, String, Option<i64>)> = None;
        let mut current = Some(job);
        loop {
            let Some(job) = current.take() else {
                yield Ok(Event::default().event("end").data("{\"reason\":\"deleted\"}"));
                break;
            };
            if let Ok(view) = state.videos.view(&job).await {
                let key = (view.status, view.stage.to_string(), format!("{:.3}", view.progress), view.queue_position);
                if last.as_ref() != Some(&key) {
                    last = Some(key);
                    if let Ok(json) = serde_json::to_string(&view) {
                        yield Ok(Event::default().event("job").data(json));
                    }
                }
                if view.status.is_final() {
                    yield Ok(Event::default().event("end").data(format!("{{\"status\":\"{}\"}}", view.status)));
                    break;
                }
            }
            let ended = tokio::select! {
                () = wait_for_change(&mut changes, job.id) => None,
                () = tokio::time::sleep(STREAM_FALLBACK_POLL) => None,
                () = tokio::time::sleep_until(expires) => Some("token_expired"),
                () = async {
                    loop {
                        revocation_check.tick().await;
                        if state.tokens.revocations().is_revoked(&claims.jti) {
                            break;
                        }
                    }
                } => Some("token_revoked"),
            };
            if let Some(reason) = ended {
                yield Ok(Event::default().event("end").data(format!("{{\"reason\":\"{reason}\"}}")));
                break;
            }
            current = state.store.job(scope, job.id).await.ok().flatten();
        }
    };
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// Returns when this process reports a change of `job` (or when changes were missed).
async fn wait_for_change(changes: &mut tokio::sync::broadcast::Receiver<JobId>, job: JobId) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        match changes.recv().await {
            Ok(changed) if changed == job => return,
            Ok(_) => {}
            Err(RecvError::Lagged(_)) => return,
            Err(RecvError::Closed) => std::future::pending::<()>().await,
        }
    }
}
