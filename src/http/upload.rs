//! The multipart body of `POST /v1/videos` as an extractor: `image` and `audio` stream to a temporary
//! directory of the request's own (refused with 413 the moment one passes its limit, hashed as they
//! stream), the text fields are Sonic's parameters (unknown names, repeats, over-long or non-UTF-8
//! values are refused as they arrive, so a request cannot make the server buffer arbitrary data).

use std::collections::HashMap;
use std::path::PathBuf;

use axum::extract::multipart::{Field, MultipartError};
use axum::extract::{FromRequest, Multipart, Request};
use axum::http::StatusCode;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::error::{ApiError, FieldError};
use super::state::AppState;
use crate::domain::params::PARAM_FIELDS;
use crate::videos::intake::UploadedFile;

/// Longest accepted text field.
const MAX_FIELD_BYTES: usize = 4096;

/// How long an upload may send nothing before it is dropped (its scratch files with it).
const IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// A received video submission. The files live in `dir`, removed when it is dropped.
pub struct VideoUpload {
    pub image: UploadedFile,
    pub audio: UploadedFile,
    /// Sonic's parameters as sent.
    pub fields: HashMap<String, String>,
    pub dir: tempfile::TempDir,
    /// The sender's upload slot, given back when the upload is dropped.
    pub receiving: Option<crate::videos::admission::UserSlot>,
}

impl FromRequest<AppState> for VideoUpload {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        // Counted before any byte of the body is read: each unfinished upload holds scratch disk.
        let receiving = match request.extensions().get::<super::caller::Uploader>() {
            Some(uploader) => {
                Some(state.videos.receiving.try_take(uploader.0).ok_or_else(|| {
                    ApiError::Limited {
                        code: "too_many_uploads",
                        detail: format!(
                            "{} of your uploads are still arriving; wait for one to finish",
                            crate::videos::admission::MAX_UPLOADS_RECEIVING_PER_USER
                        ),
                        retry_after: std::time::Duration::from_secs(5),
                    }
                })?)
            }
            None => None,
        };
        let multipart =
            Multipart::from_request(request, state)
                .await
                .map_err(|e| ApiError::BadRequest {
                    code: "invalid_multipart",
                    detail: e.body_text(),
                })?;
        let settings = &state.videos.settings;
        let uploads = settings.work_dir.join("uploads");
        tokio::fs::create_dir_all(&uploads)
            .await
            .map_err(anyhow::Error::from)?;
        // Removed with everything in it when the request ends, whatever happens.
        let dir = tempfile::tempdir_in(&uploads).map_err(anyhow::Error::from)?;
        let limits = UploadLimits {
            image_bytes: settings.image_limits.max_bytes,
            audio_bytes: settings.max_audio_bytes,
        };
        let mut upload = receive(multipart, limits, dir).await?;
        upload.receiving = receiving;
        Ok(upload)
    }
}

/// The largest file each part may hold.
#[derive(Debug, Clone, Copy)]
pub struct UploadLimits {
    pub image_bytes: u64,
    pub audio_bytes: u64,
}

/// Reads every part of a submission: the files into `dir`, the text fields as parameters.
pub async fn receive(
    mut multipart: Multipart,
    limits: UploadLimits,
    dir: tempfile::TempDir,
) -> Result<VideoUpload, ApiError> {
    let mut image = None;
    let mut audio = None;
    let mut fields = HashMap::new();
    while let Some(mut field) = arriving(multipart.next_field()).await? {
        let name = field.name().unwrap_or_default().to_owned();
        match name.as_str() {
            "image" if image.is_none() => {
                let path = dir.path().join("image");
                image = Some(save_file(&mut field, "image", path, limits.image_bytes).await?);
            }
            "audio" if audio.is_none() => {
                let path = dir.path().join("audio");
                audio = Some(save_file(&mut field, "audio", path, limits.audio_bytes).await?);
            }
            "image" | "audio" => return Err(ApiError::invalid(&name, "was sent more than once")),
            _ if !PARAM_FIELDS.contains(&name.as_str()) => {
                return Err(ApiError::invalid(
                    &name,
                    "is not a parameter of this endpoint",
                ));
            }
            _ => {
                let value = read_text(&mut field, &name).await?;
                if fields.insert(name.clone(), value).is_some() {
                    return Err(ApiError::invalid(&name, "was sent more than once"));
                }
            }
        }
    }
    match (image, audio) {
        (Some(image), Some(audio)) => Ok(VideoUpload {
            image,
            audio,
            fields,
            dir,
            receiving: None,
        }),
        (image, audio) => Err(ApiError::Validation(
            [("image", image.is_none()), ("audio", audio.is_none())]
                .into_iter()
                .filter(|(_, missing)| *missing)
                .map(|(name, _)| FieldError {
                    field: name.to_owned(),
                    message: "is required".to_owned(),
                })
                .collect(),
        )),
    }
}

/// Streams one file field to disk, refusing it (413) once it passes `limit` bytes.
async fn save_file(
    field: &mut Field<'_>,
    name: &'static str,
    path: PathBuf,
    limit: u64,
) -> Result<UploadedFile, ApiError> {
    let mut file = tokio::fs::File::create(&path)
        .await
        .map_err(anyhow::Error::from)?;
    let mut hasher = Sha256::new();
    let mut written: u64 = 0;
    while let Some(chunk) = arriving(field.chunk()).await? {
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

/// A text field, at most [`MAX_FIELD_BYTES`] of UTF-8.
async fn read_text(field: &mut Field<'_>, name: &str) -> Result<String, ApiError> {
    let mut value = Vec::new();
    while let Some(chunk) = arriving(field.chunk()).await? {
        value.extend_from_slice(&chunk);
        if value.len() > MAX_FIELD_BYTES {
            return Err(ApiError::invalid(name, "is too long"));
        }
    }
    String::from_utf8(value).map_err(|_| ApiError::invalid(name, "must be UTF-8 text"))
}

/// The next part or chunk of the body, or 408 when nothing arrives for [`IDLE_TIMEOUT`]: a client that
/// stops sending does not keep its scratch files and its upload slot.
async fn arriving<T>(
    next: impl std::future::Future<Output = Result<T, MultipartError>>,
) -> Result<T, ApiError> {
    match tokio::time::timeout(IDLE_TIMEOUT, next).await {
        Ok(result) => result.map_err(multipart_error),
        Err(_) => Err(ApiError::Rejected {
            status: StatusCode::REQUEST_TIMEOUT,
            code: "upload_stalled",
            detail: format!(
                "nothing of the upload arrived for {} s",
                IDLE_TIMEOUT.as_secs()
            ),
            errors: Vec::new(),
        }),
    }
}

fn multipart_error(err: MultipartError) -> ApiError {
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
