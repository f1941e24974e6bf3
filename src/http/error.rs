//! The one error type of the HTTP layer, rendered as RFC 9457 problem JSON with a stable `code`.
//! Internal errors are logged with their cause and answered with a bare 500.

use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::auth::tokens::TokenRejection;
pub use crate::domain::FieldError;
use crate::storage::StoreError;

/// An RFC 9457 problem document.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// Stable machine-readable error code.
    pub code: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

/// Everything a handler can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body or a parameter failed validation (422, `validation_failed`).
    #[error("validation failed")]
    Validation(Vec<FieldError>),
    /// The request is malformed: unparseable body, wrong content type (400).
    #[error("{detail}")]
    BadRequest { code: &'static str, detail: String },
    /// No valid access token (401 with `WWW-Authenticate`).
    #[error("unauthorized: {0}")]
    Unauthorized(TokenRejection),
    /// Authenticated but not allowed (403).
    #[error("{detail}")]
    Forbidden { code: &'static str, detail: String },
    /// Absent, or in another tenant (404): never reveals which.
    #[error("not found")]
    NotFound,
    /// A unique name is taken, or the state forbids the change (409).
    #[error("{detail}")]
    Conflict { code: &'static str, detail: String },
    /// A refusal with its own status and code, and optionally the fields involved
    /// (`duration_mismatch`, `no_face_detected`, `plan_limit`, `file_too_large`, ...).
    #[error("{detail}")]
    Rejected {
        status: StatusCode,
        code: &'static str,
        detail: String,
        errors: Vec<FieldError>,
    },
    /// Over a quota (429 with `Retry-After`) with an explanation.
    #[error("{detail}")]
    Limited {
        code: &'static str,
        detail: String,
        retry_after: Duration,
    },
    /// Over the request rate limit of the caller's plan (429 with `Retry-After` and `RateLimit-*`).
    #[error("too many requests: the {} limit of {} requests per minute is used up", .0.bucket.as_str(), .0.limit)]
    RateLimited(crate::ratelimit::Decision),
    /// The server is at capacity for this kind of work (503 with `Retry-After`); nothing was changed.
    #[error("{detail}")]
    Busy {
        code: &'static str,
        detail: String,
        retry_after: Duration,
    },
    /// Anything unexpected: logged, never shown (500).
    #[error("internal error: {0:#}")]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        ApiError::Validation(vec![FieldError::new(field, message)])
    }

    pub fn forbidden(detail: impl Into<String>) -> Self {
        ApiError::Forbidden {
            code: "forbidden",
            detail: detail.into(),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden { .. } => StatusCode::FORBIDDEN,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::Limited { .. } | ApiError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Rejected { status, .. } => *status,
            ApiError::Busy { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Validation(_) => "validation_failed",
            ApiError::BadRequest { code, .. }
            | ApiError::Forbidden { code, .. }
            | ApiError::Conflict { code, .. }
            | ApiError::Rejected { code, .. }
            | ApiError::Limited { code, .. }
            | ApiError::Busy { code, .. } => code,
            ApiError::Unauthorized(TokenRejection::Missing) => "missing_token",
            ApiError::Unauthorized(TokenRejection::InvalidDpopProof(_)) => "invalid_dpop_proof",
            ApiError::Unauthorized(_) => "invalid_token",
            ApiError::NotFound => "not_found",
            ApiError::RateLimited(_) => "rate_limited",
            ApiError::Internal(_) => "internal",
        }
    }

    fn detail(&self) -> String {
        match self {
            ApiError::Validation(_) => "one or more fields are invalid".to_owned(),
            ApiError::Unauthorized(reason) => reason.to_string(),
            ApiError::NotFound => "no such resource".to_owned(),
            ApiError::Internal(_) => "an internal error occurred".to_owned(),
            other => other.to_string(),
        }
    }
}

impl From<FieldError> for ApiError {
    fn from(err: FieldError) -> Self {
        ApiError::Validation(vec![err])
    }
}

impl From<crate::accounts::AccountError> for ApiError {
    fn from(err: crate::accounts::AccountError) -> Self {
        use crate::accounts::AccountError;
        match err {
            AccountError::Invalid(invalid) => invalid.into(),
            AccountError::NotFound => ApiError::NotFound,
            AccountError::Forbidden(detail) => ApiError::forbidden(detail),
            AccountError::Conflict(detail) => ApiError::Conflict {
                code: "conflict",
                detail: detail.to_owned(),
            },
            AccountError::NameTaken => StoreError::Conflict.into(),
            AccountError::Internal(err) => ApiError::Internal(err),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Conflict => ApiError::Conflict {
                code: "already_exists",
                detail: "a resource with this name already exists".to_owned(),
            },
            other => ApiError::Internal(other.into()),
        }
    }
}

/// Attached to 500 responses so the logging layer can record the cause the client never sees.
#[derive(Clone, Debug)]
pub struct InternalCause(pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let problem = Problem {
            kind: format!("urn:sonicgw:problem:{}", self.code()),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail: self.detail(),
            code: self.code().to_owned(),
            errors: match &self {
                ApiError::Validation(errors) | ApiError::Rejected { errors, .. } => errors.clone(),
                _ => Vec::new(),
            },
        };
        let mut response = (status, axum::Json(problem)).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        match &self {
            ApiError::Unauthorized(TokenRejection::Missing) => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"sonicgw\""),
                );
            }
            ApiError::Unauthorized(reason) => {
                // A bound token's refusals challenge with the DPoP scheme (RFC 9449 7.1).
                let value = match reason {
                    TokenRejection::InvalidDpopProof(_) => format!(
                        "DPoP algs=\"{}\", error=\"invalid_dpop_proof\", error_description=\"{reason}\"",
                        crate::auth::dpop::SUPPORTED_ALGS.join(" ")
                    ),
                    TokenRejection::NotDpopBound => format!(
                        "Bearer realm=\"sonicgw\", error=\"invalid_token\", error_description=\"{reason}\""
                    ),
                    TokenRejection::DpopBound => format!(
                        "DPoP algs=\"{}\", error=\"invalid_token\", error_description=\"{reason}\"",
                        crate::auth::dpop::SUPPORTED_ALGS.join(" ")
                    ),
                    _ => format!(
                        "Bearer realm=\"sonicgw\", error=\"invalid_token\", error_description=\"{reason}\""
                    ),
                };
                if let Ok(value) = HeaderValue::from_str(&value) {
                    headers.insert(header::WWW_AUTHENTICATE, value);
                }
            }
            ApiError::Limited { retry_after, .. } | ApiError::Busy { retry_after, .. } => {
                headers.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(retry_after.as_secs().max(1)),
                );
            }
            ApiError::RateLimited(decision) => {
                headers.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(decision.retry_after_s.max(1)),
                );
                rate_limit_headers(headers, decision);
            }
            ApiError::Internal(cause) => {
                response
                    .extensions_mut()
                    .insert(InternalCause(format!("{cause:#}")));
            }
            _ => {}
        }
        response
    }
}

/// The rate-limit fields of draft-ietf-httpapi-ratelimit-headers-07 (`RateLimit-Limit`,
/// `RateLimit-Remaining`, `RateLimit-Reset` in seconds, and `RateLimit-Policy` naming the window),
/// for the tighter of the caller's buckets.
pub fn rate_limit_headers(
    headers: &mut axum::http::HeaderMap,
    decision: &crate::ratelimit::Decision,
) {
    headers.insert("ratelimit-limit", HeaderValue::from(decision.limit));
    headers.insert("ratelimit-remaining", HeaderValue::from(decision.remaining));
    headers.insert("ratelimit-reset", HeaderValue::from(decision.reset_s));
    if let Ok(policy) = HeaderValue::from_str(&format!("{};w=60", decision.limit)) {
        headers.insert("ratelimit-policy", policy);
    }
}
