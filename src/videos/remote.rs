//! The job side of remote workers (`/v1/worker/*`): leasing a job to a worker's service account,
//! renewing the lease with progress, and recording a failure, through the same store calls and
//! end-of-job path as the in-process workers. A lease id is the worker id the job is claimed under,
//! `remote-<account>-<random>`, so a lease names its account and a worker can only touch jobs it
//! currently leases.

use std::time::Duration;

use super::VideoService;
use crate::domain::{JobId, Stage, WorkerId};
use crate::storage::jobs::{JobOutcome, JobRecord, JobScope};
use crate::storage::{StoreResult, TenantScope};
use crate::time::now_ms;

/// How many engine instances of one worker account the cost model keeps speeds of.
pub const MAX_INSTANCES_PER_ACCOUNT: usize = 16;
/// How long a lease request may wait for a job at most.
pub const MAX_LEASE_WAIT: Duration = Duration::from_secs(30);

/// A failure a remote worker reports, validated.
#[derive(Debug, Clone)]
pub struct RemoteFailure {
    pub code: String,
    pub message: String,
    pub detail: String,
    pub server_side: bool,
    pub retry: bool,
}

impl RemoteFailure {
    /// `code` is `[a-z_]{1,64}`, `message` one line of at most 300 characters, `detail` at most
    /// 4000; `Err` names the field that is not.
    pub fn parse(
        code: String,
        message: String,
        detail: String,
        server_side: bool,
        retry: bool,
    ) -> Result<Self, (&'static str, &'static str)> {
        if code.is_empty()
            || code.len() > 64
            || !code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
        {
            return Err(("code", "1 to 64 of a-z and _"));
        }
        if message.chars().count() > 300 || message.chars().any(hidden_or_control) {
            return Err(("message", "one line of at most 300 characters"));
        }
        if detail.chars().count() > 4000 {
            return Err(("detail", "at most 4000 characters"));
        }
        Ok(Self {
            code,
            message,
            detail,
            server_side,
            retry,
        })
    }
}

/// The lease (worker) id prefix of an account's leases.
fn lease_prefix(account: uuid::Uuid) -> String {
    format!("remote-{}-", account.simple())
}

/// The worker id of `lease` when it is one of `account`'s leases.
fn own_lease(account: uuid::Uuid, lease: &str) -> Option<WorkerId> {
    let random = lease.strip_prefix(&lease_prefix(account))?;
    if random.len() != 12 || !random.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    WorkerId::parse(lease).ok()
}

impl VideoService {
    /// Claims the next job of `engines` for `account` under a new lease, waiting up to `wait` for one.
    pub async fn lease_remote(
        &self,
        account: uuid::Uuid,
        engines: &[String],
        wait: Duration,
    ) -> StoreResult<Option<(WorkerId, JobRecord)>> {
        let deadline = tokio::time::Instant::now() + wait.min(MAX_LEASE_WAIT);
        loop {
            let queued = self.events.next_queued();
            let random = uuid::Uuid::new_v4().simple().to_string();
            let lease = format!("{}{}", lease_prefix(account), &random[..12]);
            let worker_id = WorkerId::parse(&lease)
                .map_err(|_| crate::storage::StoreError::Corrupt(lease.clone()))?;
            if let Some(job) = self.claim(&worker_id, engines).await? {
                self.events.changed(job.id);
                return Ok(Some((worker_id, job)));
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            // Woken by a job queued in any process the bus reaches; else polled for.
            let _ = tokio::time::timeout((deadline - now).min(self.settings.poll), queued).await;
        }
    }

    /// The running job `id` when `lease` is `account`'s and the job runs under it now.
    pub async fn leased_job(
        &self,
        account: uuid::Uuid,
        id: JobId,
        lease: &str,
    ) -> StoreResult<Option<(WorkerId, JobRecord)>> {
        let Some(worker_id) = own_lease(account, lease) else {
            return Ok(None);
        };
        // The lease, not a caller's tenant, decides the row: it names exactly one running job.
        let scope = JobScope {
            tenant: TenantScope::by_trusted_id(),
            user: None,
        };
        let job = self.store.job(scope, id).await?;
        Ok(job
            .filter(|j| {
                j.status == crate::domain::JobStatus::Running
                    && j.worker_id.as_ref() == Some(&worker_id)
            })
            .map(|j| (worker_id, j)))
    }

    /// Renews `account`'s lease on job `id` and records its progress; `None` when the job is no
    /// longer under that lease (cancelled, deleted, expired and taken over).
    pub async fn heartbeat_remote(
        &self,
        account: uuid::Uuid,
        id: JobId,
        lease: &str,
        stage: Stage,
        progress: f64,
    ) -> StoreResult<Option<Duration>> {
        let Some(worker_id) = own_lease(account, lease) else {
            return Ok(None);
        };
        let now = now_ms();
        if !self
            .store
            .heartbeat(id, &worker_id, now, now + self.settings.lease)
            .await?
        {
            return Ok(None);
        }
        if self
            .store
            .set_progress(id, &worker_id, stage, progress.clamp(0.0, 1.0), now)
            .await?
        {
            self.events.changed(id);
        }
        Ok(Some(self.settings.lease))
    }

    /// Records a remote worker's failure: back to the queue when it asks for a retry and attempts
    /// remain, else the job fails. `false` when the job is not under that lease.
    pub async fn fail_remote(
        &self,
        account: uuid::Uuid,
        id: JobId,
        lease: &str,
        failure: RemoteFailure,
    ) -> StoreResult<bool> {
        let Some((worker_id, job)) = self.leased_job(account, id, lease).await? else {
            return Ok(false);
        };
        if failure.retry
            && self
                .requeue(&worker_id, &job, &failure.code, &failure.detail)
                .await
        {
            return Ok(true);
        }
        tracing::warn!(job = %job.id, code = %failure.code, server_side = failure.server_side, detail = ?failure.detail, "job failed on a remote worker");
        let outcome = JobOutcome::Failed {
            code: failure.code,
            message: failure.message,
            detail: failure.detail,
            refund: failure.server_side,
        };
        Ok(self.record_end(&worker_id, &job, &outcome).await)
    }
}

/// Why an uploaded result was refused; nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum ResultRejection {
    #[error("the result is not an MP4 with an H.264 video stream: {0}")]
    NotMp4(String),
    #[error("the result is not this job's video: {0}")]
    NotThisJob(String),
    /// It looked like one, but labelling it (decoding every frame) failed.
    #[error("the result could not be labelled: {0}")]
    Unlabellable(String),
}

impl ResultRejection {
    pub fn code(&self) -> &'static str {
        match self {
            ResultRejection::NotMp4(_) => "result_not_mp4",
            ResultRejection::NotThisJob(_) => "result_mismatch",
            ResultRejection::Unlabellable(_) => "result_unlabellable",
        }
    }
}

/// How many frames a result may differ from its job's plan (container frame counts of one
/// encoder's output against another's rounding).
const FRAME_TOLERANCE: u64 = 2;

impl VideoService {
    /// Checks an uploaded result (a sane MP4 with H.264 video), labels it, stores it as the job's
    /// video and records the job's success. `Ok(false)`: the job is not under that lease.
    /// `instance` is the engine instance the worker ran it on: with the account's name it keys the
    /// speed this run teaches the cost model (from the lease to the result, what a slot costs).
    #[allow(clippy::too_many_arguments)]
    pub async fn accept_result(
        &self,
        account: uuid::Uuid,
        account_name: &str,
        instance: Option<&str>,
        id: JobId,
        lease: &str,
        file: &std::path::Path,
    ) -> anyhow::Result<Result<bool, ResultRejection>> {
        let Some((worker_id, job)) = self.leased_job(account, id, lease).await? else {
            return Ok(Ok(false));
        };
        let guarded = file.to_path_buf();
        let guard =
            tokio::task::spawn_blocking(move || crate::media::mp4guard::check(&guarded)).await?;
        if let Err(err) = guard {
            // The guard speaks of audio uploads; a result is a video.
            let why = match err {
                crate::media::MediaError::UnsupportedAudioFormat { detail } => detail,
                other => other.to_string(),
            };
            return Ok(Err(ResultRejection::NotMp4(why)));
        }
        let plan: super::view::OutputPlan = serde_json::from_str(&job.output_plan)?;
        match crate::media::ffmpeg::probe(file).await {
            Ok(info) if info.video_codec.as_deref() != Some("h264") || info.nb_frames == 0 => {
                return Ok(Err(ResultRejection::NotMp4(format!(
                    "video codec {:?}, {} frames",
                    info.video_codec, info.nb_frames
                ))))
            }
            Ok(info)
                if (info.width, info.height) != (plan.width, plan.height)
                    || info.nb_frames.abs_diff(u64::from(plan.frames)) > FRAME_TOLERANCE =>
            {
                return Ok(Err(ResultRejection::NotThisJob(format!(
                    "{}x{} with {} frames, but the job is {}x{} with {} frames",
                    info.width, info.height, info.nb_frames, plan.width, plan.height, plan.frames
                ))))
            }
            Ok(_) => {}
            Err(err) => return Ok(Err(ResultRejection::NotMp4(err.to_string()))),
        }
        // Only the video and audio streams are kept: nothing else the file carried is served.
        let clean = file.with_extension("clean.mp4");
        let remuxed =
            crate::media::ffmpeg::remux_clean(file, &clean, std::time::Duration::from_secs(300))
                .await;
        if let Err(err) = remuxed {
            let _ = tokio::fs::remove_file(&clean).await;
            return Ok(Err(ResultRejection::NotMp4(err.to_string())));
        }
        // Labelling re-encodes the video, which may take longer than a lease: the lease is kept
        // meanwhile, as the worker's heartbeats kept it while its engine ran.
        let labelled = tokio::select! {
            labelled = self.label_output(&job, &clean) => labelled,
            () = self.keep_lease(&worker_id, &job) => {
                let _ = tokio::fs::remove_file(&clean).await;
                return Ok(Ok(false));
            }
        };
        let labelled = match labelled {
            Ok(labelled) => labelled,
            Err(err) => {
                let _ = tokio::fs::remove_file(&clean).await;
                return Ok(Err(ResultRejection::Unlabellable(err.detail)));
            }
        };
        let key = super::result_key(job.tenant_id, job.id);
        let _ = self
            .store
            .set_progress(id, &worker_id, Stage::Storing, 1.0, now_ms())
            .await;
        let stored = self.blobs.put_file(&key, &labelled).await;
        let _ = tokio::fs::remove_file(&clean).await;
        let _ = tokio::fs::remove_file(&labelled).await;
        let outcome = JobOutcome::Succeeded {
            result_key: key,
            result_bytes: stored? as i64,
        };
        let recorded = self.record_end(&worker_id, &job, &outcome).await;
        if recorded {
            self.observe_remote(&job, account_name, instance).await;
        }
        Ok(Ok(recorded))
    }

    /// Teaches the cost model how long the remote run of `job` took, lease to result.
    async fn observe_remote(&self, job: &JobRecord, account_name: &str, instance: Option<&str>) {
        let Some(started) = job.started_at else {
            return;
        };
        let work = match super::eta::Work::from_stored(&job.params, &job.output_plan) {
            Ok(work) => work,
            Err(err) => {
                tracing::warn!(job = %job.id, error = %err, "a finished job's size is unreadable");
                return;
            }
        };
        // Always `account/instance`: a '/' no local instance has, so a worker cannot write a local
        // server's speed, and a bounded number of names per account.
        let prefix = format!("{account_name}/");
        let instance = format!("{prefix}{}", instance.unwrap_or("-"));
        let known = self.costs.instances_named(&job.engine, &prefix);
        if known.len() >= MAX_INSTANCES_PER_ACCOUNT && !known.contains(&instance) {
            tracing::info!(
                account = account_name,
                "a remote worker's instance beyond the per-account limit was not timed"
            );
            return;
        }
        let took = now_ms().saturating_sub(started);
        self.costs.observe(&job.engine, &instance, work, took).await;
    }

    /// Seconds `job` is expected to take on a remote worker, for its progress estimates.
    pub fn expected_remote_s(&self, job: &JobRecord) -> Option<f64> {
        let work = super::eta::Work::from_stored(&job.params, &job.output_plan).ok()?;
        Some(self.costs.estimate(&job.engine, None, work))
    }
}

/// Result uploads in progress in this process, one per job: a second upload on the same lease
/// while one is being received is refused, not raced.
#[derive(Default)]
pub struct ResultUploads(dashmap::DashSet<JobId>);

/// Marks a job's upload in progress until dropped.
pub struct UploadInProgress<'a> {
    uploads: &'a ResultUploads,
    job: JobId,
}

impl ResultUploads {
    pub fn start(&self, job: JobId) -> Option<UploadInProgress<'_>> {
        self.0
            .insert(job)
            .then_some(UploadInProgress { uploads: self, job })
    }
}

impl Drop for UploadInProgress<'_> {
    fn drop(&mut self) {
        self.uploads.0.remove(&self.job);
    }
}

impl VideoService {
    /// Renews `account`'s lease on job `id` every third of the lease while a result is received
    /// and checked (a big video over a slow link outlasts a lease); returns when the lease is lost.
    pub async fn renew_during_upload(&self, account: uuid::Uuid, id: JobId, lease: &str) {
        let Some(worker_id) = own_lease(account, lease) else {
            return;
        };
        loop {
            tokio::time::sleep(self.settings.lease / 3).await;
            let now = now_ms();
            match self
                .store
                .heartbeat(id, &worker_id, now, now + self.settings.lease)
                .await
            {
                Ok(true) => {}
                Ok(false) => return,
                Err(err) => {
                    tracing::warn!(job = %id, error = %err, "renewing a lease during an upload failed")
                }
            }
        }
    }
}

/// An engine instance name a worker reports: 1 to 64 of `A-Z a-z 0-9 . _ -`.
pub fn valid_instance_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A worker process's name in presence reports: 8 to 32 of `a-z 0-9`.
pub fn valid_process_name(name: &str) -> bool {
    (8..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// Characters a one-line message shown to users must not hold: controls (line breaks, terminal
/// escapes) and invisible format characters (every bidirectional control, including the Arabic
/// letter mark; zero-width and other invisible formatting; line and paragraph separators;
/// interlinear annotations; tag characters, which spell hidden ASCII).
fn hidden_or_control(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{00AD}'
                | '\u{061C}'
                | '\u{180E}'
                | '\u{200B}'..='\u{200F}'
                | '\u{2028}'..='\u{202E}'
                | '\u{2060}'..='\u{206F}'
                | '\u{FEFF}'
                | '\u{FFF9}'..='\u{FFFB}'
                | '\u{E0000}'..='\u{E007F}'
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_belongs_to_the_account_named_in_it() {
        let account = uuid::Uuid::new_v4();
        let lease = format!("{}0123456789ab", lease_prefix(account));
        assert!(own_lease(account, &lease).is_some());
        assert!(own_lease(uuid::Uuid::new_v4(), &lease).is_none());
        assert!(own_lease(account, &format!("{lease}0")).is_none());
        assert!(own_lease(account, "0123456789ab-0").is_none());
    }

    #[test]
    fn remote_failures_are_validated() {
        let parse = |code: &str, message: &str| {
            RemoteFailure::parse(code.into(), message.into(), String::new(), true, false)
        };
        assert!(parse("gpu_out_of_memory", "out of memory").is_ok());
        assert_eq!(parse("Bad-Code", "x").unwrap_err().0, "code");
        assert_eq!(parse("x", "two\nlines").unwrap_err().0, "message");
        for hidden in [
            "m\u{2028}x",
            "red\u{1b}[31m",
            "rtl\u{202E}gpj.exe",
            "nul\0",
            "alm\u{061C}x",
            "tag\u{E0041}\u{E0042}",
            "soft\u{00AD}hyphen",
            "ann\u{FFF9}x\u{FFFB}",
            "swap\u{206A}x",
        ] {
            assert_eq!(parse("x", hidden).unwrap_err().0, "message", "{hidden:?}");
        }
        assert!(parse("x", "GPU 显存不足, retry later").is_ok());
        assert!(valid_instance_name("comfyui-1"));
        assert!(!valid_instance_name("a/b") && !valid_instance_name(""));
        assert!(!valid_instance_name(&"a".repeat(65)));
        assert!(valid_process_name(
            &uuid::Uuid::new_v4().simple().to_string()
        ));
        assert!(!valid_process_name("short") && !valid_process_name("UPPERCASE1"));
        assert_eq!(parse("x", &"m".repeat(301)).unwrap_err().0, "message");
    }
}
