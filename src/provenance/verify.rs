//! What a video says about its origin: the AIGC metadata, whether the visible label is claimed, and
//! the C2PA manifest with its validation state. For `sonicgw verify`, `POST /v1/provenance/verify`
//! (anyone's upload: hostile until checked) and `GET /v1/videos/{id}/provenance`.
//!
//! Every file is checked as an MP4 first (`media::mp4video`: every box inside the file and its
//! parent), then read on a blocking thread, a bounded number at once, within a time budget.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use super::aigc::AIGC_KEY;
use super::credentials::inspect::{self, CredentialsReport, InspectError};
use crate::media::mp4video::{self, Mp4Rejection};

/// Longest AIGC value shown (the label is a few hundred bytes; anything longer is not ours).
const MAX_AIGC_CHARS: usize = 4096;

/// The labels and Content Credentials of one video.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ProvenanceReport {
    /// The implicit label (GB 45438-2025): the JSON under the metadata key `AIGC`, or its text when
    /// it is not JSON; absent when the file has none.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub aigc: Option<Value>,
    /// Whether the C2PA manifest claims the visible AI label was drawn on the frames (absent without
    /// a manifest of ours). A claim only counts as much as `c2pa.state` says.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub visible_label_claimed: Option<bool>,
    /// The C2PA manifest store and its validation.
    pub c2pa: CredentialsReport,
}

/// Why a file could not be verified.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("{0}")]
    NotReadable(#[from] Mp4Rejection),
    #[error("{0}")]
    TimedOut(String),
    #[error("the C2PA reader failed on this file")]
    ReaderFailed,
    #[error("too many verifications are running; try again shortly")]
    Busy,
    #[error("reading the file: {0}")]
    Io(#[from] std::io::Error),
}

impl VerifyError {
    /// Stable code.
    pub fn code(&self) -> &'static str {
        match self {
            VerifyError::NotReadable(rejection) => rejection.code(),
            VerifyError::TimedOut(_) => "verify_timeout",
            VerifyError::ReaderFailed => "unreadable_manifest",
            VerifyError::Busy => "verify_busy",
            VerifyError::Io(_) => "internal",
        }
    }
}

/// Reads the provenance of files: trust anchors, a time budget and a bound on parses at once.
#[derive(Debug, Clone)]
pub struct ProvenanceVerifier {
    trust_anchors: Option<Arc<str>>,
    budget: Duration,
    parses: Arc<tokio::sync::Semaphore>,
    uploads: Arc<tokio::sync::Semaphore>,
}

/// Uploads to the verify endpoint received at once, per parse slot (each is on disk until parsed).
const UPLOADS_PER_PARSE: usize = 4;

impl ProvenanceVerifier {
    /// `trust_anchors`: PEM roots whose signers count as trusted (none: every signer is untrusted).
    pub fn new(trust_anchors: Option<String>, budget: Duration, parallel: usize) -> Self {
        Self {
            trust_anchors: trust_anchors.map(Arc::from),
            budget,
            parses: Arc::new(tokio::sync::Semaphore::new(parallel.max(1))),
            uploads: Arc::new(tokio::sync::Semaphore::new(
                parallel.max(1) * UPLOADS_PER_PARSE,
            )),
        }
    }

    /// A place for one more upload being received, or `Busy` when all are taken; held until the
    /// upload is verified.
    pub fn admit_upload(&self) -> Result<tokio::sync::OwnedSemaphorePermit, VerifyError> {
        Arc::clone(&self.uploads)
            .try_acquire_owned()
            .map_err(|_| VerifyError::Busy)
    }

    /// Verifies the MP4 at `path`, refusing at once (`Busy`) when every parse slot is taken.
    pub async fn verify(&self, path: &Path) -> Result<ProvenanceReport, VerifyError> {
        let permit = Arc::clone(&self.parses)
            .try_acquire_owned()
            .map_err(|_| VerifyError::Busy)?;
        let path: PathBuf = path.to_path_buf();
        let anchors = self.trust_anchors.clone();
        let budget = self.budget;
        let outcome = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            verify_blocking(&path, anchors.as_deref(), budget)
        })
        .await;
        match outcome {
            Ok(report) => report,
            // A parser that panics on a file answers like one that refuses it; the process lives on.
            Err(err) if err.is_panic() => {
                tracing::warn!("the C2PA reader panicked on a file");
                Err(VerifyError::ReaderFailed)
            }
            Err(err) => Err(VerifyError::Io(std::io::Error::other(err.to_string()))),
        }
    }
}

/// The synchronous check, for `sonicgw verify` and the blocking pool.
pub fn verify_blocking(
    path: &Path,
    trust_anchors: Option<&str>,
    budget: Duration,
) -> Result<ProvenanceReport, VerifyError> {
    let moov = mp4video::check(path)?;
    let aigc = mp4video::metadata_value(&moov, AIGC_KEY).map(|text| {
        serde_json::from_str::<Value>(&text)
            .ok()
            .filter(Value::is_object)
            .unwrap_or_else(|| Value::String(text.chars().take(MAX_AIGC_CHARS).collect()))
    });
    drop(moov);
    let c2pa = match inspect::inspect(path, trust_anchors, budget) {
        Ok(report) => report,
        Err(InspectError::TimedOut(budget)) => {
            return Err(VerifyError::TimedOut(format!(
                "reading the C2PA manifest took longer than {} s",
                budget.as_secs()
            )))
        }
        Err(InspectError::Io(err)) => return Err(VerifyError::Io(err)),
    };
    Ok(ProvenanceReport {
        aigc,
        visible_label_claimed: c2pa.visible_label_claimed(),
        c2pa,
    })
}
