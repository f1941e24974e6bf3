//! Delivering finished videos: with a bearer token (`/v1/videos/{id}/content`) or a signed, expiring link
//! (`/v1/files/videos/{id}.mp4`). Both stream from object storage and support single byte ranges
//! (RFC 9110 14) and ETags.

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::domain::JobId;
use crate::http::caller::{Caller, ClientInfo};
use crate::http::error::ApiError;
use crate::http::extract::ApiPath;
use crate::http::state::AppState;
use crate::storage::jobs::JobRecord;
use crate::videos::delivery::LinkRejection;
use crate::videos::jobs::Downloader;

/// A parsed `Range` header: `bytes=a-b`, `bytes=a-` or `bytes=-n`. Other forms are ignored (whole file).
fn parse_range(value: &str, size: u64) -> Option<Result<(u64, u64), ()>> {
    let spec = value.strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (start, end) = spec.split_once('-')?;
    let range = match (start.trim(), end.trim()) {
        ("", suffix) => {
            let n: u64 = suffix.parse().ok()?;
            if n == 0 {
                return Some(Err(()));
            }
            (size.saturating_sub(n), size.checked_sub(1)?)
        }
        (start, "") => (start.parse().ok()?, size.checked_sub(1)?),
        (start, end) => {
            let (s, e): (u64, u64) = (start.parse().ok()?, end.parse().ok()?);
            if e < s {
                return None;
            }
            (s, e.min(size.checked_sub(1)?))
        }
    };
    if range.0 >= size {
        return Some(Err(()));
    }
    Some(Ok(range))
}

/// How long caches may keep a response.
enum Caching {
    /// A bearer-token download: never stored by a shared cache.
    Private,
    /// A signed link until it expires (unix seconds): public and immutable, so a CDN in front of
    /// the gateway serves it from its cache by the link's URL; never longer than the link lives.
    SignedUntil(i64),
}

/// Answers with the job's MP4 streamed from storage, handling `Range`, `ETag`, `If-None-Match` and
/// `If-Range`.
async fn serve_video(
    state: &AppState,
    job: &JobRecord,
    headers: &HeaderMap,
    caching: Caching,
) -> Result<Response, ApiError> {
    let video = state.videos.open_video(job).await?;
    let (size, etag) = (video.size, video.etag.clone());
    let mut response_headers = HeaderMap::new();
    response_headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("video/mp4"));
    response_headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    response_headers.insert(
        header::ETAG,
        HeaderValue::from_str(&etag).map_err(anyhow::Error::from)?,
    );
    let cache_control = match caching {
        Caching::Private => "private, max-age=3600".to_owned(),
        Caching::SignedUntil(expires) => format!(
            "public, max-age={}, immutable",
            (expires - crate::time::now_s()).max(0)
        ),
    };
    response_headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_str(&cache_control).map_err(anyhow::Error::from)?,
    );
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        == Some(etag.as_str())
    {
        return Ok((StatusCode::NOT_MODIFIED, response_headers).into_response());
    }
    let if_range_ok = headers
        .get(header::IF_RANGE)
        .is_none_or(|v| v.to_str().ok() == Some(etag.as_str()));
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .filter(|_| if_range_ok)
        .and_then(|v| parse_range(v, size));
    match range {
        None => {
            let read = state.videos.read_video(&video, None).await?;
            response_headers.insert(header::CONTENT_LENGTH, HeaderValue::from(read.size));
            let body = Body::from_stream(read.stream);
            Ok((StatusCode::OK, response_headers, body).into_response())
        }
        Some(Err(())) => {
            // A problem body like every other refusal; the headers say the video's size.
            let mut response = ApiError::Rejected {
                status: StatusCode::RANGE_NOT_SATISFIABLE,
                code: "range_not_satisfiable",
                detail: format!("the range is outside the video's {size} bytes"),
                errors: vec![crate::http::error::FieldError {
                    field: "Range".into(),
                    message: format!("must overlap bytes 0-{}", size.saturating_sub(1)),
                }],
            }
            .into_response();
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes */{size}")).map_err(anyhow::Error::from)?,
            );
            for name in [header::ETAG, header::ACCEPT_RANGES] {
                if let Some(value) = response_headers.remove(&name) {
                    headers.insert(name, value);
                }
            }
            Ok(response)
        }
        Some(Ok((start, end))) => {
            let read = state.videos.read_video(&video, Some((start, end))).await?;
            response_headers.insert(
                header::CONTENT_LENGTH,
                HeaderValue::from(read.range.end - read.range.start),
            );
            response_headers.insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!(
                    "bytes {}-{}/{}",
                    read.range.start,
                    read.range.end - 1,
                    read.size
                ))
                .map_err(anyhow::Error::from)?,
            );
            let body = Body::from_stream(read.stream);
            Ok((StatusCode::PARTIAL_CONTENT, response_headers, body).into_response())
        }
    }
}

/// The MP4 of a succeeded job, with a bearer token.
#[utoipa::path(get, path = "/v1/videos/{id}/content", tag = "videos", params(("id" = String, Path)),
    responses((status = 200, content_type = "video/mp4", description = "the video"),
        (status = 206, description = "a byte range"), (status = 404, body = crate::http::error::Problem),
        (status = 409, description = "not finished", body = crate::http::error::Problem),
        (status = 410, description = "video_expired: removed after the retention period", body = crate::http::error::Problem)),
    security(("bearer" = [])))]
pub async fn content(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id: JobId = id.parse().map_err(|_| ApiError::NotFound)?;
    let job = state.videos.find(caller.job_scope(), id).await?;
    let response = serve_video(&state, &job, &headers, Caching::Private).await?;
    state
        .videos
        .record_download(
            &caller.audit_context(),
            &job,
            Downloader::User(caller.user_id),
        )
        .await;
    Ok(response)
}

/// The query of a signed link.
#[derive(Deserialize)]
pub struct SignedQuery {
    /// As text: only its canonical spelling counts (no `+`, no leading zeros), so one link has one URL
    /// (every other spelling would be a cache miss at a CDN in front of us).
    expires: Option<String>,
    sig: Option<String>,
}

/// The MP4 behind a signed link; no bearer token needed. Altered or expired links get 403.
#[utoipa::path(get, path = "/v1/files/videos/{file}", tag = "videos", params(("file" = String, Path)),
    responses((status = 200, content_type = "video/mp4", description = "the video"),
        (status = 403, description = "invalid_signature or link_expired", body = crate::http::error::Problem),
        (status = 410, description = "video_expired: removed after the retention period", body = crate::http::error::Problem)))]
pub async fn signed(
    State(state): State<AppState>,
    client: ClientInfo,
    ApiPath(file): ApiPath<String>,
    query: Result<Query<SignedQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let invalid = || ApiError::Forbidden {
        code: "invalid_signature",
        detail: "this link is not valid".to_owned(),
    };
    let Ok(Query(SignedQuery {
        expires: Some(expires),
        sig: Some(sig),
    })) = query
    else {
        return Err(invalid());
    };
    let expires = match expires.parse::<i64>() {
        Ok(value) if value.to_string() == expires => value,
        _ => return Err(invalid()),
    };
    let id = match state
        .videos
        .signer
        .verify_download(&file, expires, &sig, crate::time::now_s())
    {
        Ok(id) => id,
        Err(LinkRejection::BadSignature) => return Err(invalid()),
        Err(LinkRejection::Expired) => {
            return Err(ApiError::Forbidden {
                code: "link_expired",
                detail: "this link has expired; fetch the job again for a fresh one".to_owned(),
            })
        }
    };
    // The signature is the authority: the link names exactly one job, whoever holds it.
    let job = state
        .videos
        .find(crate::videos::delivery::signed_link_scope(), id)
        .await?;
    let response = serve_video(&state, &job, &headers, Caching::SignedUntil(expires)).await?;
    state
        .videos
        .record_download(
            &client.audit_context(),
            &job,
            Downloader::LinkHolder(client.ip),
        )
        .await;
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::parse_range;

    #[test]
    fn ranges_follow_rfc9110() {
        assert_eq!(parse_range("bytes=0-99", 1000), Some(Ok((0, 99))));
        assert_eq!(parse_range("bytes=900-", 1000), Some(Ok((900, 999))));
        assert_eq!(parse_range("bytes=-100", 1000), Some(Ok((900, 999))));
        assert_eq!(parse_range("bytes=990-2000", 1000), Some(Ok((990, 999))));
        assert_eq!(parse_range("bytes=1000-", 1000), Some(Err(())));
        assert_eq!(parse_range("bytes=0-1,5-6", 1000), None);
        assert_eq!(parse_range("items=0-1", 1000), None);
        assert_eq!(parse_range("bytes=5-1", 1000), None);
    }
}
