//! The storage sweeper: removes objects no job needs. Deleting a job removes its files at once; this
//! catches what that misses (the inputs of a submission that failed before its job was inserted, or
//! whose server died in between; a result uploaded for a job deleted meanwhile; a removal that
//! failed; objects under `jobs/` that are no job's file) and, with `retention_days`, the files of jobs
//! that ended longer ago. Every server runs it; its deletions are idempotent.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::watch;

use super::VideoService;
use crate::blobs::BlobEntry;
use crate::domain::{JobId, TenantId};
use crate::storage::jobs::JobScope;
use crate::storage::TenantScope;
use crate::time::{now_ms, UnixMillis};

/// Time between sweeps (the first runs a minute after start).
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(3600);
/// Objects younger than this are never orphans: intake stores a job's inputs before it inserts the
/// job, and a worker stores the result before it records the job's end.
pub const ORPHAN_GRACE: Duration = Duration::from_secs(3600);

/// What one sweep removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SweepReport {
    /// Objects of jobs that do not exist (or were deleted), and stray objects.
    pub orphans: usize,
    /// Jobs whose files were removed after the retention period.
    pub expired_jobs: usize,
}

/// Sweeps every `SWEEP_INTERVAL` until `stop`.
pub fn spawn_sweeper(service: Arc<VideoService>, mut stop: watch::Receiver<bool>) {
    let tasks = service.tasks.clone();
    tasks.spawn(async move {
        let mut delay = Duration::from_secs(60);
        loop {
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                _ = stop.wait_for(|stop| *stop) => return,
            }
            delay = SWEEP_INTERVAL;
            match service.sweep_storage(now_ms()).await {
                Ok(report) => {
                    tracing::info!(
                        orphans = report.orphans,
                        expired_jobs = report.expired_jobs,
                        "storage swept"
                    )
                }
                Err(err) => tracing::warn!(error = %format!("{err:#}"), "storage sweep failed"),
            }
        }
    });
}

/// A job's files as listed: `jobs/<tenant>/<job>/<name>`.
struct JobFiles {
    tenant: TenantId,
    job: JobId,
    entries: Vec<BlobEntry>,
}

/// The tenant and job a key belongs to, when it is a job's file.
fn job_of(key: &str) -> Option<(TenantId, JobId)> {
    let mut parts = key.split('/');
    let (Some("jobs"), Some(tenant), Some(job), Some(_name), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return None;
    };
    Some((tenant.parse().ok()?, job.parse().ok()?))
}

impl VideoService {
    /// One sweep, as of `now`: lists `jobs/` once and looks each job with files up.
    pub async fn sweep_storage(&self, now: UnixMillis) -> anyhow::Result<SweepReport> {
        let mut report = SweepReport::default();
        let settled = now.saturating_sub_duration(ORPHAN_GRACE);
        let mut listing = self.blobs.list("jobs")?;
        // Listings come grouped by folder (S3 in key order, the local backend folder by folder), so a
        // job's files are handled together and only one job is held in memory.
        let mut current: Option<JobFiles> = None;
        while let Some(entry) = listing.next().await {
            let entry = entry?;
            match job_of(&entry.key) {
                Some((tenant, job)) => {
                    if let Some(files) = current
                        .as_mut()
                        .filter(|f| f.job == job && f.tenant == tenant)
                    {
                        files.entries.push(entry);
                        continue;
                    }
                    if let Some(files) = current.take() {
                        self.sweep_job(files, now, settled, &mut report).await?;
                    }
                    current = Some(JobFiles {
                        tenant,
                        job,
                        entries: vec![entry],
                    });
                }
                None if entry.last_modified < settled => {
                    tracing::info!(key = %entry.key, "removing a stray object");
                    self.blobs.delete_entry(&entry).await?;
                    report.orphans += 1;
                }
                None => {}
            }
        }
        if let Some(files) = current.take() {
            self.sweep_job(files, now, settled, &mut report).await?;
        }
        Ok(report)
    }

    async fn sweep_job(
        &self,
        files: JobFiles,
        now: UnixMillis,
        settled: UnixMillis,
        report: &mut SweepReport,
    ) -> anyhow::Result<()> {
        if files.entries.iter().any(|e| e.last_modified >= settled) {
            return Ok(());
        }
        let scope = JobScope {
            tenant: TenantScope::by_trusted_id(),
            user: None,
        };
        let job = self
            .store
            .job(scope, files.job)
            .await?
            .filter(|job| job.tenant_id == files.tenant);
        let prefix = super::job_prefix(files.tenant, files.job);
        match job {
            None => {
                tracing::info!(job = %files.job, objects = files.entries.len(), "removing the files of a job that does not exist");
                for entry in &files.entries {
                    self.blobs.delete_entry(entry).await?;
                }
                report.orphans += files.entries.len();
            }
            Some(job) => {
                let expired = match (self.settings.retention, job.finished_at) {
                    (Some(retention), Some(finished)) => {
                        job.status.is_final() && finished < now.saturating_sub_duration(retention)
                    }
                    _ => false,
                };
                if expired {
                    tracing::info!(job = %job.id, "removing the files of a job past retention");
                    // The record first: a view never links to a removed video.
                    self.store.forget_result(job.id, now).await?;
                    self.blobs.delete_prefix(&prefix).await?;
                    self.events.changed(job.id);
                    report.expired_jobs += 1;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_files_are_recognised_by_their_key() {
        let tenant = TenantId::generate();
        let job = JobId::generate();
        assert_eq!(
            job_of(&format!("jobs/{tenant}/{job}/video.mp4")),
            Some((tenant, job))
        );
        for stray in [
            format!("jobs/{tenant}/{job}"),
            format!("jobs/{tenant}/{job}/x/video.mp4"),
            format!("jobs/{tenant}/not-a-job/video.mp4"),
            format!("other/{tenant}/{job}/video.mp4"),
        ] {
            assert_eq!(job_of(&stray), None, "{stray}");
        }
    }
}
