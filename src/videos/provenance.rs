//! A job's video read back for its provenance (`GET /v1/videos/{id}/provenance`): the stored file
//! copied to scratch space and checked like any upload to the verify endpoint.

use super::jobs::VideoError;
use super::VideoService;
use crate::provenance::verify::{ProvenanceReport, VerifyError};
use crate::storage::jobs::JobRecord;

/// Why a job's provenance could not be shown.
#[derive(Debug, thiserror::Error)]
pub enum ProvenanceError {
    #[error(transparent)]
    Video(#[from] VideoError),
    #[error(transparent)]
    Verify(#[from] VerifyError),
}

impl VideoService {
    /// The labels and Content Credentials of a succeeded job's video.
    pub async fn provenance(&self, job: &JobRecord) -> Result<ProvenanceReport, ProvenanceError> {
        let video = self.open_video(job).await?;
        let scratch = self.settings.work_dir.join("provenance");
        tokio::fs::create_dir_all(&scratch)
            .await
            .map_err(VerifyError::Io)?;
        let dir = tempfile::tempdir_in(&scratch).map_err(VerifyError::Io)?;
        let path = dir.path().join("video.mp4");
        self.blobs
            .fetch_to(video.key(), &path)
            .await
            .map_err(VideoError::Internal)?;
        Ok(self.verifier.verify(&path).await?)
    }
}
