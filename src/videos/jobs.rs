//! What the API (and later the remote-worker API and the CLI) does with existing jobs: find, page,
//! view, cancel, delete, open the finished video and record its download. Each operation takes the
//! caller's `JobScope`, so another tenant's or user's job is simply not found.

use std::fmt;
use std::net::IpAddr;

use super::view::JobView;
use super::VideoService;
use crate::audit::{AuditAction, AuditContext, AuditEvent, Outcome};
use crate::domain::{JobId, JobStatus, UserId};
use crate::storage::jobs::{JobRecord, JobScope};
use crate::time::{now_ms, UnixMillis};

/// Why a job operation was refused. Each maps to one HTTP status and a stable code.
#[derive(Debug, thiserror::Error)]
pub enum VideoError {
    /// Absent, deleted, or outside the caller's scope (never says which).
    #[error("no such job")]
    NotFound,
    /// Cancelling a job that already ended.
    #[error("the job is {0} and can no longer be cancelled")]
    AlreadyFinished(JobStatus),
    /// Fetching the video of a job that has not succeeded.
    #[error("the job is {0}; the video exists once it has succeeded")]
    NotReady(JobStatus),
    /// The video was removed after the retention period (`retention_days`).
    #[error("the video was removed after the retention period")]
    Expired,
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<crate::storage::StoreError> for VideoError {
    fn from(err: crate::storage::StoreError) -> Self {
        VideoError::Internal(err.into())
    }
}

/// Where a page of jobs continues: after the job created at `created_at` with this id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobCursor {
    pub created_at: UnixMillis,
    pub id: JobId,
}

impl JobCursor {
    /// Parses a cursor this API returned (`<created_at>_<id>`).
    pub fn parse(raw: &str) -> Option<Self> {
        let (at, id) = raw.split_once('_')?;
        Some(Self {
            created_at: UnixMillis::from_millis(at.parse().ok()?),
            id: id.parse().ok()?,
        })
    }
}

impl fmt::Display for JobCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}_{}", self.created_at, self.id)
    }
}

/// One page of jobs, newest first.
pub struct JobListing {
    pub jobs: Vec<JobRecord>,
    /// Present when the page is full: pass it back for the next page.
    pub next: Option<JobCursor>,
}

/// Who a job is shown to: platform admins also see the operator's detail of a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    /// The owner, or an admin of their tenant: the code and one-line message of a failure.
    Tenant,
    /// Platform staff: the failure's detail (tool output, paths) too.
    Platform,
}

/// Who downloaded a video, for the audit record.
#[derive(Debug, Clone, Copy)]
pub enum Downloader {
    /// A signed-in user with a bearer token.
    User(UserId),
    /// Whoever held a signed link, known only by address.
    LinkHolder(Option<IpAddr>),
}

/// A finished video found in storage, ready to be streamed.
pub struct VideoFile {
    key: String,
    pub size: u64,
    /// A strong validator: a job's result never changes, so its id and size identify it.
    pub etag: String,
}

impl VideoFile {
    /// Where the video is stored.
    pub fn key(&self) -> &str {
        &self.key
    }
}

impl VideoService {
    /// The job `id` if `scope` may see it.
    pub async fn find(&self, scope: JobScope, id: JobId) -> Result<JobRecord, VideoError> {
        self.store.job(scope, id).await?.ok_or(VideoError::NotFound)
    }

    /// A page of the jobs `scope` may see, newest first.
    pub async fn page(
        &self,
        scope: JobScope,
        status: Option<JobStatus>,
        after: Option<JobCursor>,
        limit: i64,
    ) -> Result<JobListing, VideoError> {
        let jobs = self
            .store
            .list_jobs(scope, status, after.map(|c| (c.created_at, c.id)), limit)
            .await?;
        let next = (jobs.len() as i64 == limit)
            .then(|| jobs.last())
            .flatten()
            .map(|last| JobCursor {
                created_at: last.created_at,
                id: last.id,
            });
        Ok(JobListing { jobs, next })
    }

    /// The job as `audience` sees it.
    pub async fn view_for(&self, job: &JobRecord, audience: Audience) -> anyhow::Result<JobView> {
        let eta = self.eta(job).await;
        self.view_for_with_eta(job, audience, eta).await
    }

    /// The job as `audience` sees it, with its ETA already estimated (see `etas`).
    pub async fn view_for_with_eta(
        &self,
        job: &JobRecord,
        audience: Audience,
        eta: super::eta::Eta,
    ) -> anyhow::Result<JobView> {
        let mut view = self.view_with_eta(job, eta).await?;
        if audience == Audience::Platform {
            view.tenant_id = Some(job.tenant_id);
            if let Some(error) = view.error.as_mut() {
                error.detail = job.error_detail.clone();
            }
        }
        Ok(view)
    }

    /// Cancels a queued or running job (a running one stops at its worker's next heartbeat).
    pub async fn cancel(&self, scope: JobScope, id: JobId) -> Result<JobRecord, VideoError> {
        let job = self.find(scope, id).await?;
        let Some(cancelled) = self.store.cancel_job(scope, job.id, now_ms()).await? else {
            return Err(VideoError::AlreadyFinished(job.status));
        };
        self.events.changed(job.id);
        self.events.stopped(job.id);
        self.finished(&cancelled).await;
        Ok(cancelled)
    }

    /// Deletes a job's record and files (a running one stops at its worker's next heartbeat).
    pub async fn delete(
        &self,
        context: &AuditContext,
        scope: JobScope,
        id: JobId,
    ) -> Result<(), VideoError> {
        let job = self
            .store
            .delete_job(scope, id, now_ms())
            .await?
            .ok_or(VideoError::NotFound)?;
        self.blobs
            .delete_prefix(&super::job_prefix(job.tenant_id, job.id))
            .await?;
        self.events.changed(id);
        self.events.stopped(id);
        self.auditor
            .record(
                context,
                AuditEvent::new(AuditAction::VideoDelete, Outcome::Success)
                    .tenant(job.tenant_id)
                    .target(id),
            )
            .await;
        Ok(())
    }

    /// Finds the MP4 of a succeeded job in storage.
    pub async fn open_video(&self, job: &JobRecord) -> Result<VideoFile, VideoError> {
        if job.status != JobStatus::Succeeded {
            return Err(VideoError::NotReady(job.status));
        }
        let Some(key) = job.result_key.as_deref() else {
            return Err(VideoError::Expired);
        };
        let meta = self.blobs.head(key).await?.ok_or(VideoError::Expired)?;
        Ok(VideoFile {
            key: key.to_owned(),
            size: meta.size,
            etag: format!("\"{}-{}\"", job.id, meta.size),
        })
    }

    /// Streams the video, whole or the inclusive byte range `range`, from storage.
    pub async fn read_video(
        &self,
        video: &VideoFile,
        range: Option<(u64, u64)>,
    ) -> Result<crate::blobs::BlobRead, VideoError> {
        self.blobs
            .read(&video.key, range.map(|(start, end)| start..end + 1))
            .await?
            .ok_or(VideoError::Expired)
    }

    /// Counts a download and audits the first by each downloader of each job within the hour. A signed-link download names no user: the link's holder is unknown.
    pub async fn record_download(
        &self,
        context: &AuditContext,
        job: &JobRecord,
        downloader: Downloader,
    ) {
        let (via, key, reason) = match downloader {
            Downloader::User(user) => ("bearer", user.to_string(), None),
            Downloader::LinkHolder(ip) => (
                "signed_link",
                ip.map(crate::net::client_network).unwrap_or_default(),
                Some("signed_link"),
            ),
        };
        crate::metrics::video_download(via);
        if !self
            .download_audit
            .first_in_window(&format!("{}/{key}", job.id))
        {
            return;
        }
        let mut event = AuditEvent::new(AuditAction::VideoDownload, Outcome::Success)
            .tenant(job.tenant_id)
            .target(job.id);
        if let Some(reason) = reason {
            event = event.reason(reason);
        }
        self.auditor.record(context, event).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_garbage() {
        let cursor = JobCursor {
            created_at: UnixMillis::from_millis(1_700_000_000_123),
            id: JobId::generate(),
        };
        assert_eq!(JobCursor::parse(&cursor.to_string()), Some(cursor));
        for bad in ["", "_", "12", "x_y", "12_not-a-uuid"] {
            assert_eq!(JobCursor::parse(bad), None, "{bad}");
        }
    }
}
