//! `/v1/videos`: submit a photo and a recording, follow the job, fetch the MP4. Each handler parses the
//! request, calls the video service with the caller's job scope, and renders the answer: another
//! tenant's job answers 404 on every route; users see their own jobs, admins their tenant's.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRequest as _, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};

use crate::domain::{JobId, JobStatus, Role};
use crate::http::caller::Caller;
use crate::http::error::{ApiError, FieldError};
use crate::http::extract::ApiPath;
use crate::http::state::AppState;
use crate::http::upload::VideoUpload;
use crate::videos::admission::MAX_STREAMS_PER_USER;
use crate::videos::events::{FollowEvent, FollowerCredential};
use crate::videos::intake::{IntakeError, Submission, Submitted};
use crate::videos::jobs::{Audience, JobCursor, VideoError};
use crate::videos::preview::Preview;
use crate::videos::view::JobView;

fn parse_job_id(raw: &str) -> Result<JobId, ApiError> {
    raw.parse().map_err(|_| ApiError::NotFound)
}

/// How much of a job this caller may see.
fn audience(caller: &Caller) -> Audience {
    if caller.role == Role::PlatformAdmin {
        Audience::Platform
    } else {
        Audience::Tenant
    }
}

impl From<VideoError> for ApiError {
    fn from(err: VideoError) -> Self {
        let detail = err.to_string();
        match err {
            VideoError::NotFound => ApiError::NotFound,
            VideoError::AlreadyFinished(_) => ApiError::Conflict {
                code: "job_finished",
                detail,
            },
            VideoError::NotReady(_) => ApiError::Conflict {
                code: "video_not_ready",
                detail,
            },
            VideoError::Expired => ApiError::Rejected {
                status: StatusCode::GONE,
                code: "video_expired",
                detail,
                errors: Vec::new(),
            },
            VideoError::Internal(err) => ApiError::Internal(err),
        }
    }
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
                errors,
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
            IntakeError::EngineUnavailable { engine, reason } => {
                // The reason names servers and their errors: not for the caller, and not logged per
                // request either (a caller could flood the log); the pool logs each state change.
                let _ = reason;
                tracing::info!(%engine, "submission refused: engine unavailable");
                ApiError::Busy {
                    code: "engine_unavailable",
                    detail: format!("no server can run engine {engine} right now; try again later"),
                    retry_after: Duration::from_secs(30),
                }
            }
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

/// The `Idempotency-Key` header, if sent: 1 to 255 visible characters.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= 255)
        .map(|k| Some(k.to_owned()))
        .ok_or_else(|| ApiError::invalid("Idempotency-Key", "must be 1 to 255 visible characters"))
}

/// Submits a video job: multipart `image` (JPEG/PNG/WebP), `audio` (WAV/MP3/FLAC, Ogg Vorbis/Opus, WebM,
/// MP4/MOV/M4A) and Sonic's parameters as text fields. Everything is validated before the job is queued.
#[utoipa::path(post, path = "/v1/videos", tag = "videos",
    request_body(content_type = "multipart/form-data", description = "image, audio, and optional duration, min_resolution, expand_ratio, inference_steps, dynamic_scale, motion_scale, seed, enable_lip_sync_correction, lip_sync_offset, engine, callback_url, label_language (zh, en or both: the visible AI label's language)"),
    params(("Idempotency-Key" = Option<String>, Header, description = "replays the original job for the same request within 24 h")),
    responses(
        (status = 202, description = "Queued; `ignored_parameters` lists the given parameters the engine does not use", body = JobView),
        (status = 200, description = "Replayed for the same Idempotency-Key", body = JobView),
        (status = 403, description = "plan_limit", body = crate::http::error::Problem),
        (status = 409, description = "idempotency_in_progress", body = crate::http::error::Problem),
        (status = 413, description = "file_too_large", body = crate::http::error::Problem),
        (status = 408, description = "upload_stalled: nothing of the body arrived for 30 s", body = crate::http::error::Problem),
        (status = 422, description = "validation_failed, duration_mismatch, no_face_detected, face_too_small, unsupported_image_format, unsupported_audio_format, image_too_large, audio_too_short", body = crate::http::error::Problem),
        (status = 429, description = "quota_exceeded, too_many_uploads", body = crate::http::error::Problem),
    ),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    upload: VideoUpload,
) -> Result<Response, ApiError> {
    let VideoUpload {
        image,
        audio,
        fields,
        dir,
        receiving: _receiving,
    } = upload;
    let submission = Submission {
        user: caller.user_id,
        tenant: caller.tenant_id,
        plan: caller.plan.clone(),
        idempotency_key: idempotency_key(&headers)?,
        image,
        audio,
        fields,
    };
    let submitted = state
        .videos
        .submit(&caller.audit_context(), submission)
        .await?;
    // The uploads were copied into the blob store (or refused): their temporary folder can go.
    drop(dir);
    let (status, job) = match submitted {
        Submitted::Created(job) => (StatusCode::ACCEPTED, job),
        Submitted::Replayed(job) => (StatusCode::OK, job),
    };
    let view = state.videos.view_for(&job, audience(&caller)).await?;
    Ok((
        status,
        [(header::LOCATION, format!("/v1/videos/{}", job.id))],
        Json(view),
    )
        .into_response())
}

/// Checks a photo and a recording exactly as `POST /v1/videos` does and stores nothing (no job, no
/// files, no quota, no audit record): the detected face box, the crop that becomes the video, the
/// recording's real duration, the parameters with their defaults, and the output size. Same multipart
/// fields and the same refusals as a submission, except that quotas are not checked. Previews have a
/// budget of their own, the plan's `previews_per_minute` (429 `preview_limit`, checked before the
/// upload is read).
#[utoipa::path(post, path = "/v1/videos/preview", tag = "videos",
    request_body(content_type = "multipart/form-data", description = "image, audio, and the same optional parameters as POST /v1/videos"),
    responses(
        (status = 200, description = "Everything would be accepted", body = Preview),
        (status = 403, description = "plan_limit", body = crate::http::error::Problem),
        (status = 413, description = "file_too_large", body = crate::http::error::Problem),
        (status = 408, description = "upload_stalled: nothing of the body arrived for 30 s", body = crate::http::error::Problem),
        (status = 422, description = "validation_failed, duration_mismatch, no_face_detected, unsupported_*", body = crate::http::error::Problem),
        (status = 429, description = "too_many_uploads, preview_limit, rate_limited", body = crate::http::error::Problem),
    ),
    security(("bearer" = [])))]
pub async fn preview(
    State(state): State<AppState>,
    caller: Caller,
    request: axum::extract::Request,
) -> Result<Json<Preview>, ApiError> {
    // The plan now, as at submission (not the token's claim).
    let plan = state
        .videos
        .current_plans
        .of(state.store.as_ref(), caller.user_id, &caller.plan)
        .await?;
    let budget = state
        .preview_limiter
        .check(
            caller.tenant_id,
            caller.user_id,
            state.plans.limits(&plan).preview_quota(),
        )
        .await;
    if !budget.allowed {
        return Err(ApiError::Limited {
            code: "preview_limit",
            detail: format!(
                "the {plan} plan allows {} previews per minute{}; try again in {} s",
                budget.limit,
                if budget.bucket == crate::ratelimit::Bucket::Tenant {
                    " for the whole tenant"
                } else {
                    ""
                },
                budget.retry_after_s.max(1)
            ),
            retry_after: Duration::from_secs(budget.retry_after_s.max(1)),
        });
    }
    let upload = VideoUpload::from_request(request, &state).await?;
    let preview = state
        .videos
        .preview(
            caller.tenant_id,
            caller.user_id,
            &plan,
            &upload.fields,
            &upload.image,
            &upload.audio,
        )
        .await?;
    Ok(Json(preview))
}

/// Makes a new video from an earlier video's photo and recording with new parameters: a JSON object
/// with the same optional fields as `POST /v1/videos` (strings, numbers or booleans). Every check of a
/// submission runs again, against the caller's plan and quota; the new job is the caller's.
#[utoipa::path(post, path = "/v1/videos/{id}/rerun", tag = "videos", params(("id" = String, Path),
        ("Idempotency-Key" = Option<String>, Header, description = "replays the original job for the same request within 24 h")),
    request_body(content = Object, description = "parameters, e.g. {\"min_resolution\": 512, \"seed\": 7}"),
    responses(
        (status = 202, description = "Queued", body = JobView),
        (status = 200, description = "Replayed for the same Idempotency-Key", body = JobView),
        (status = 403, description = "plan_limit", body = crate::http::error::Problem),
        (status = 404, body = crate::http::error::Problem),
        (status = 422, description = "validation_failed and the other refusals of a submission", body = crate::http::error::Problem),
        (status = 429, description = "quota_exceeded", body = crate::http::error::Problem),
    ),
    security(("bearer" = [])))]
pub async fn rerun(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
    body: crate::http::extract::ApiJson<serde_json::Map<String, serde_json::Value>>,
) -> Result<Response, ApiError> {
    let mut fields = std::collections::HashMap::new();
    for (name, value) in body.0 {
        let text = match value {
            serde_json::Value::String(text) => text,
            serde_json::Value::Number(number) => number.to_string(),
            serde_json::Value::Bool(flag) => flag.to_string(),
            _ => {
                return Err(ApiError::invalid(
                    &name,
                    "must be a string, number or boolean",
                ))
            }
        };
        fields.insert(name, text);
    }
    let source = state
        .videos
        .find(caller.job_scope(), parse_job_id(&id)?)
        .await?;
    let rerun = crate::videos::rerun::Rerun {
        user: caller.user_id,
        tenant: caller.tenant_id,
        plan: caller.plan.clone(),
        fields,
        idempotency_key: idempotency_key(&headers)?,
    };
    let submitted = state
        .videos
        .rerun(&caller.audit_context(), &source, rerun)
        .await?;
    let (status, job) = match submitted {
        Submitted::Created(job) => (StatusCode::ACCEPTED, job),
        Submitted::Replayed(job) => (StatusCode::OK, job),
    };
    let view = state.videos.view_for(&job, audience(&caller)).await?;
    Ok((
        status,
        [(header::LOCATION, format!("/v1/videos/{}", job.id))],
        Json(view),
    )
        .into_response())
}

#[utoipa::path(get, path = "/v1/videos/{id}", tag = "videos", params(("id" = String, Path)),
    responses((status = 200, body = JobView), (status = 404, body = crate::http::error::Problem)),
    security(("bearer" = [])))]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<JobView>, ApiError> {
    let job = state
        .videos
        .find(caller.job_scope(), parse_job_id(&id)?)
        .await?;
    Ok(Json(state.videos.view_for(&job, audience(&caller)).await?))
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
    let after = params
        .cursor
        .as_deref()
        .map(|c| {
            JobCursor::parse(c)
                .ok_or_else(|| ApiError::invalid("cursor", "is not a cursor this API returned"))
        })
        .transpose()?;
    let page = state
        .videos
        .page(caller.job_scope(), status, after, limit)
        .await?;
    let mut items = Vec::with_capacity(page.jobs.len());
    // One queue query per engine for the whole page, not one per queued job.
    let etas = state.videos.etas(&page.jobs).await;
    for job in &page.jobs {
        let eta = etas.get(&job.id).copied().unwrap_or_default();
        items.push(
            state
                .videos
                .view_for_with_eta(job, audience(&caller), eta)
                .await?,
        );
    }
    Ok(Json(JobPage {
        items,
        next_cursor: page.next.map(|c| c.to_string()),
    }))
}

#[utoipa::path(post, path = "/v1/videos/{id}/cancel", tag = "videos", params(("id" = String, Path)),
    responses((status = 200, body = JobView), (status = 404, body = crate::http::error::Problem),
        (status = 409, description = "job_finished", body = crate::http::error::Problem)),
    security(("bearer" = [])))]
pub async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<JobView>, ApiError> {
    let cancelled = state
        .videos
        .cancel(caller.job_scope(), parse_job_id(&id)?)
        .await?;
    Ok(Json(
        state.videos.view_for(&cancelled, audience(&caller)).await?,
    ))
}

#[utoipa::path(delete, path = "/v1/videos/{id}", tag = "videos", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = crate::http::error::Problem)),
    security(("bearer" = [])))]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    state
        .videos
        .delete(
            &caller.audit_context(),
            caller.job_scope(),
            parse_job_id(&id)?,
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Server-Sent Events: one `job` event with the whole job for each status or progress change, and a
/// final `end` event when the job is finished (`{"status": ...}`), deleted (`{"reason":"deleted"}`),
/// or the stream's token expires or is revoked (`{"reason": "token_expired" | "token_revoked"}`:
/// reconnect with a fresh token), or the server is shutting down (`{"reason":"shutting_down"}` with
/// an SSE `retry:` of 0.5-1.5 s: reconnect, and the load balancer sends you to another replica). A
/// user may hold a few streams open at once.
#[utoipa::path(get, path = "/v1/videos/{id}/events", tag = "videos", params(("id" = String, Path)),
    responses((status = 200, content_type = "text/event-stream", description = "job events"),
        (status = 404, body = crate::http::error::Problem),
        (status = 429, description = "too_many_streams", body = crate::http::error::Problem)),
    security(("bearer" = [])))]
pub async fn events(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let scope = caller.job_scope();
    let job = state.videos.find(scope, parse_job_id(&id)?).await?;
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
    let revocations = Arc::clone(state.tokens.revocations());
    let jti = caller.claims.jti.clone();
    let remaining = u64::try_from(caller.claims.exp - crate::time::now_s()).unwrap_or(0);
    let credential = FollowerCredential {
        expires_at: tokio::time::Instant::now() + Duration::from_secs(remaining),
        is_revoked: Box::new(move || revocations.is_revoked(&jti)),
    };
    let ended = Arc::new(AtomicBool::new(false));
    let ended_here = Arc::clone(&ended);
    let events = Arc::clone(&state.videos)
        .follow(scope, job, audience(&caller), credential)
        .map(move |event| {
            // The slot is held for as long as the stream lives.
            let _held = &slot;
            Ok(match event {
                FollowEvent::Job(view) => Event::default()
                    .event("job")
                    .data(serde_json::to_string(&view).unwrap_or_default()),
                FollowEvent::End(reason) => {
                    ended_here.store(true, Ordering::Relaxed);
                    Event::default().event("end").data(reason.to_json())
                }
            })
        });
    // On shutdown the stream ends at once, so the connection can close within the grace period,
    // and tells the client to come back (spread over a second, so a replica's followers do not
    // all reconnect at the same instant).
    let shutdown = state.shutdown.clone();
    let farewell = futures::stream::once(async move {
        (shutdown.is_cancelled() && !ended.load(Ordering::Relaxed)).then(|| {
            use rand::Rng;
            let retry = Duration::from_millis(rand::thread_rng().gen_range(500..=1500));
            Ok(Event::default()
                .event("end")
                .retry(retry)
                .data(r#"{"reason":"shutting_down"}"#))
        })
    })
    .filter_map(std::future::ready);
    let events = events
        .take_until(state.shutdown.clone().cancelled_owned())
        .chain(farewell);
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}
