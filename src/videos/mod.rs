//! Video generation: intake (validate uploads, check plan and quota, queue), workers (claim, run an
//! engine, store the MP4), and the views and events the API serves.

pub mod admission;
pub mod bus;
pub mod delivery;
pub mod eta;
pub mod events;
pub mod intake;
pub mod jobs;
pub mod outbox;
mod output;
pub mod presence;
pub mod preview;
pub mod provenance;
pub mod remote;
pub mod rerun;
pub mod sweeper;
pub mod view;
pub mod webhook;
pub mod worker;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::audit::Auditor;
use crate::blobs::BlobStore;
use crate::domain::{JobId, Plans, TenantId};
use crate::engines::Engines;
use crate::media::face::FaceDetector;
use crate::media::image::ImageLimits;
use crate::storage::jobs::JobRecord;
use crate::storage::Store;
use delivery::Delivery;
use delivery::UrlSigner;

pub use events::JobEvents;

/// Limits and settings of video generation.
#[derive(Debug, Clone)]
pub struct VideoSettings {
    pub default_engine: String,
    pub image_limits: ImageLimits,
    pub max_audio_bytes: u64,
    pub lease: Duration,
    pub max_attempts: i64,
    /// How often idle workers, lease requests and event streams look at the database for changes
    /// no event announced (`job_poll_s`).
    pub poll: Duration,
    pub link_ttl_s: i64,
    /// How finished videos are handed out: our signed links, or S3 presigned URLs.
    pub delivery: Delivery,
    /// Origin of signed links (a CDN in front of the gateway), without a trailing slash; `None`:
    /// links are paths on this server.
    pub public_base_url: Option<String>,
    /// Files of jobs that ended longer ago than this are removed by the sweeper.
    pub retention: Option<Duration>,
    pub webhook_allow_private: bool,
    /// In-process workers: the slots of engines that do not say their capacity.
    pub workers: usize,
    /// Scratch space for uploads in flight and jobs being rendered.
    pub work_dir: PathBuf,
}

/// Everything video intake and workers share.
pub struct VideoService {
    pub store: Arc<dyn Store>,
    pub blobs: Arc<BlobStore>,
    pub engines: Engines,
    pub plans: Plans,
    /// Users' current plans: submissions are checked against them, not the token's claim.
    pub current_plans: Arc<crate::accounts::CurrentPlans>,
    pub auditor: Auditor,
    pub signer: UrlSigner,
    pub faces: FaceDetector,
    pub events: JobEvents,
    /// Bounds how many submissions are probed at once.
    pub admission: admission::IntakeGate,
    /// Background work (workers, the lease reaper, progress writes, webhook deliveries): shutdown
    /// closes it and waits, bounded, for what is in flight.
    pub tasks: tokio_util::task::TaskTracker,
    /// Open event streams per user.
    pub streams: admission::PerUserSlots,
    /// Uploads being received per user (the body still arriving, before admission to probing).
    pub receiving: admission::PerUserSlots,
    /// Which downloads were audited recently: once per job, downloader and hour (repeats are only
    /// counted in metrics).
    pub download_audit: crate::audit::Repeats,
    pub settings: VideoSettings,
    /// Engine speeds, for ETAs.
    pub costs: eta::CostModel,
    /// What remote workers can run, for ETAs.
    pub remote: presence::RemoteCapacity,
    /// Remote workers' result uploads in progress here.
    pub result_uploads: remote::ResultUploads,
    /// Labels every video before it is stored.
    pub labeller: crate::provenance::Labeller,
    /// Delivers the webhook outbox's due messages.
    pub webhooks: outbox::WebhookDrainer,
    /// Signs every output's C2PA manifest, the last change made to it.
    pub credentials: crate::provenance::credentials::ContentCredentials,
    /// Reads videos' labels and manifests back (`GET /v1/videos/{id}/provenance`, and uploads to
    /// `POST /v1/provenance/verify`).
    pub verifier: crate::provenance::verify::ProvenanceVerifier,
}

/// Where a job's files live in the blob store.
pub fn job_prefix(tenant: TenantId, job: JobId) -> String {
    format!("jobs/{tenant}/{job}")
}

pub fn input_key(tenant: TenantId, job: JobId, name: &str, ext: &str) -> String {
    format!("{}/{name}.{ext}", job_prefix(tenant, job))
}

pub fn result_key(tenant: TenantId, job: JobId) -> String {
    format!("{}/video.mp4", job_prefix(tenant, job))
}

impl VideoService {
    /// The API view of a job, with its queue position and ETA while it waits or runs, and a fresh signed
    /// link when finished.
    pub async fn view(&self, job: &JobRecord) -> anyhow::Result<view::JobView> {
        let eta = self.eta(job).await;
        self.view_with_eta(job, eta).await
    }

    /// The view with an ETA already estimated (pages estimate all their jobs at once).
    pub async fn view_with_eta(
        &self,
        job: &JobRecord,
        eta: eta::Eta,
    ) -> anyhow::Result<view::JobView> {
        let position = if job.status == crate::domain::JobStatus::Queued {
            Some(self.store.queue_position(job).await?)
        } else {
            None
        };
        let result = match (&job.result_key, job.status) {
            (Some(key), crate::domain::JobStatus::Succeeded) => {
                Some(self.result_link(job, key).await?)
            }
            _ => None,
        };
        let mut view = view::JobView::from_record(job, position, result)?;
        view.estimated_start_s = eta.start_s.map(view::tenths);
        view.eta_s = eta.done_s.map(view::tenths);
        Ok(view)
    }
}

impl VideoService {
    /// A fresh link to a finished video, as `delivery` says.
    async fn result_link(&self, job: &JobRecord, key: &str) -> anyhow::Result<view::JobResult> {
        let now = crate::time::now_s();
        let ttl = self.settings.link_ttl_s;
        let (url, expires) = match self.settings.delivery {
            Delivery::Presigned => {
                let url = self
                    .blobs
                    .presigned_get(key, Duration::from_secs(ttl as u64))
                    .await?;
                (url, now + ttl)
            }
            Delivery::Proxy => {
                let base = self.settings.public_base_url.as_deref();
                let expires = delivery::link_expiry(now, ttl, base.is_some());
                let link = self.signer.sign(&delivery::download_path(job.id), expires);
                (format!("{}{link}", base.unwrap_or("")), expires)
            }
        };
        Ok(view::JobResult {
            url,
            expires_at: crate::time::UnixMillis::from_secs(expires).to_rfc3339(),
            content_type: "video/mp4",
            bytes: job.result_bytes.unwrap_or(0),
        })
    }
}
