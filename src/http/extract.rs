//! Request-body extractors whose failures are problem documents.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// A JSON body; a malformed one is a 400 `invalid_json`, a wrong field a 422 naming it.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        if !is_json {
            return Err(ApiError::BadRequest {
                code: "unsupported_media_type",
                detail: "send the body as application/json".to_owned(),
            });
        }
        let body = Bytes::from_request(request, state)
            .await
            .map_err(|_| ApiError::BadRequest {
                code: "body_too_large",
                detail: "the request body is too large".to_owned(),
            })?;
        let deserializer = &mut serde_json::Deserializer::from_slice(&body);
        match serde_path_to_error::deserialize(deserializer) {
            Ok(value) => Ok(ApiJson(value)),
            Err(err) => {
                let message = err.inner().to_string();
                if err.inner().is_syntax() || err.inner().is_eof() {
                    return Err(ApiError::BadRequest {
                        code: "invalid_json",
                        detail: format!("the body is not valid JSON: {message}"),
                    });
                }
                // Unknown and missing fields are reported at the parent path; the name is in backticks.
                let path = err.path().to_string();
                let field = if path.is_empty() || path == "." {
                    message.split('`').nth(1).unwrap_or("body").to_owned()
                } else {
                    path
                };
                Err(ApiError::invalid(&field, message))
            }
        }
    }
}

/// An `application/x-www-form-urlencoded` body as name/value pairs; `None` for another content type.
pub async fn form_pairs(request: Request) -> Result<Option<Vec<(String, String)>>, ApiError> {
    let is_form = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if !is_form {
        return Ok(None);
    }
    let body = axum::body::to_bytes(request.into_body(), 64 * 1024)
        .await
        .map_err(|_| ApiError::BadRequest {
            code: "body_too_large",
            detail: "the form body is too large".to_owned(),
        })?;
    serde_urlencoded::from_bytes(&body)
        .map(Some)
        .map_err(|_| ApiError::BadRequest {
            code: "invalid_form",
            detail: "the form body is not valid URL encoding".to_owned(),
        })
}

/// Path parameters; one that cannot be read as `T` (not an id, or not UTF-8 once decoded) names no
/// resource: 404 `not_found`, a problem document like every other refusal (axum's own `Path` answers
/// a plain-text 400).
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(ApiPath(value)),
            Err(_) => Err(ApiError::NotFound),
        }
    }
}
