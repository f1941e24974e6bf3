//! Intake: everything is checked before a job is queued, so engine time is never spent on bad input.
//! Order: admission (a bounded number of probes per user and per process), a read-only quota check
//! (so an exhausted quota costs no probing), media (real image format and size, real audio duration,
//! decoding no further than the plan's longest recording), parameters against Sonic's ranges, the
//! engine's capabilities, the plan's limits, a face in the photo, then the quota again (atomically,
//! with the insert). An Idempotency-Key is looked at before all of it, so a replay always answers.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::admission::AdmissionRefusal;
use super::view::{AudioInput, ImageInput, JobInput, OutputPlan};
use super::{input_key, job_prefix, VideoService};
use crate::audit::{AuditAction, AuditContext, AuditEvent, Outcome};
use crate::domain::{
    FieldError, JobId, JobStatus, PlanName, RawParams, SonicParams, Stage, TenantId, UserId,
};
use crate::media::audio::AudioInfo;
use crate::media::audio_upload::probe_recording;
use crate::media::face::plan_crop;
use crate::media::image::{probe_image, ProbedImage};
use crate::media::MediaError;
use crate::storage::jobs::{IdempotencyState, JobRecord, QuotaLimits, QuotaRefusal};
use crate::time::{now_ms, UnixMillis};

/// An uploaded file, already streamed to local disk within its size limit.
#[derive(Debug)]
pub struct UploadedFile {
    pub path: PathBuf,
    pub sha256: String,
}

/// One `POST /v1/videos` after the HTTP layer has received it.
#[derive(Debug)]
pub struct Submission {
    pub user: UserId,
    pub tenant: TenantId,
    /// The token's plan claim; intake replaces it with the user's current plan.
    pub plan: PlanName,
    pub image: UploadedFile,
    pub audio: UploadedFile,
    pub fields: RawParams,
    pub idempotency_key: Option<String>,
}

/// Why a submission was refused. Each maps to one HTTP status and a stable code.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    /// The upload itself is unusable (422).
    #[error("{field}: {message}")]
    Media {
        code: &'static str,
        field: &'static str,
        message: String,
    },
    /// Parameters out of range or inconsistent (422).
    #[error("invalid parameters")]
    Params {
        code: &'static str,
        errors: Vec<FieldError>,
    },
    /// Over a limit of the caller's plan (403).
    #[error("the {plan} plan allows {limit} = {allowed}; the request asks for {asked}")]
    PlanLimit {
        limit: &'static str,
        plan: String,
        asked: String,
        allowed: String,
    },
    /// Daily or concurrency quota exhausted (429).
    #[error("{detail}")]
    Quota {
        detail: String,
        retry_after: Duration,
    },
    /// The engine has no server that can run jobs now (503).
    #[error("engine {engine} cannot run jobs right now: {reason}")]
    EngineUnavailable { engine: String, reason: String },
    /// Too many of this user's submissions are being checked right now (429).
    #[error("too many uploads of yours are being checked at once; wait for one to finish")]
    UserBusy,
    /// The server is checking as many uploads as it can (503).
    #[error("the server is busy checking other uploads; try again shortly")]
    ServerBusy,
    /// The same key is being used by a request still in progress (409).
    #[error("a request with this Idempotency-Key is still being processed")]
    IdempotencyInProgress,
    /// The key was used for a different request (422).
    #[error("this Idempotency-Key was used for a different request")]
    IdempotencyMismatch,
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<crate::storage::StoreError> for IntakeError {
    fn from(err: crate::storage::StoreError) -> Self {
        IntakeError::Internal(err.into())
    }
}

/// What a submission produced.
pub enum Submitted {
    Created(JobRecord),
    /// The same Idempotency-Key and request as before: the original job.
    Replayed(JobRecord),
}

/// An upload that passed every check.
pub(super) struct Inspected {
    pub(super) params: SonicParams,
    image: ProbedImage,
    audio: AudioInfo,
    face: crate::media::face::Rect,
    faces_detected: usize,
    crop: crate::media::face::CropPlan,
    /// Parameters given that the engine does not use (valid and within the plan).
    ignored: Vec<String>,
    /// The recording as the WAV ffmpeg decoded it to, when symphonia could not read it.
    decoded_audio: Option<PathBuf>,
}

impl Inspected {
    /// The uploads and the planned output, as a job stores and shows them.
    pub(super) fn describe(&self) -> (JobInput, OutputPlan) {
        let input = JobInput {
            image: ImageInput {
                format: self.image.format.as_str().to_owned(),
                width: self.image.width,
                height: self.image.height,
                face: self.face,
                faces_detected: self.faces_detected,
                crop: self.crop.crop,
            },
            audio: AudioInput {
                format: self.audio.format.as_str().to_owned(),
                duration: self.audio.duration_s,
                sample_rate: self.audio.sample_rate,
                channels: self.audio.channels,
                stored_as: self.decoded_audio.as_ref().map(|_| "wav".to_owned()),
            },
        };
        let output = OutputPlan {
            width: self.crop.output_width,
            height: self.crop.output_height,
            fps: 25,
            frames: (self.audio.duration_s * 25.0).floor() as u32,
        };
        (input, output)
    }
}

fn media_error(field: &'static str, err: MediaError) -> IntakeError {
    if err.is_client_error() {
        IntakeError::Media {
            code: err.code(),
            field,
            message: err.to_string(),
        }
    } else {
        IntakeError::Internal(anyhow::anyhow!("{field}: {err}"))
    }
}

/// The quota part of a plan.
fn quota_limits(plan: &crate::domain::Plan, now: UnixMillis) -> QuotaLimits {
    QuotaLimits {
        videos_per_day: i64::from(plan.videos_per_day),
        max_concurrent_jobs: i64::from(plan.max_concurrent_jobs),
        priority_weight: f64::from(plan.priority_weight),
        // The daily quota starts counting at UTC midnight.
        day_start: now.start_of_utc_day(),
    }
}

/// What makes two submissions "the same request" for an Idempotency-Key: the form fields as sent
/// (in name order) and the bytes of both files.
fn request_hash(submission: &Submission) -> String {
    let fields: std::collections::BTreeMap<_, _> = submission.fields.iter().collect();
    let mut hasher = Sha256::new();
    for (name, value) in fields {
        // Length-prefixed, so no two different field sets hash alike.
        for part in [name, value] {
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part.as_bytes());
        }
    }
    hasher.update(submission.image.sha256.as_bytes());
    hasher.update(submission.audio.sha256.as_bytes());
    hex::encode(hasher.finalize())
}

/// Seconds until the next UTC midnight, when the daily quota resets.
fn until_midnight(now: UnixMillis) -> Duration {
    const DAY: Duration = Duration::from_secs(24 * 3600);
    let next = now.start_of_utc_day() + DAY;
    next.saturating_sub(now).max(Duration::from_secs(1))
}

impl VideoService {
    /// Validates a submission completely and queues it. The Idempotency-Key is looked at first: a
    /// replay of a request that already made its job answers with that job whatever the quota or the
    /// server's load is now, and costs no probing.
    pub async fn submit(
        &self,
        context: &AuditContext,
        submission: Submission,
    ) -> Result<Submitted, IntakeError> {
        let Some(key) = submission.idempotency_key.clone() else {
            return self
                .validate_and_queue(context, submission)
                .await
                .map(Submitted::Created);
        };
        let request_hash = request_hash(&submission);
        match self
            .store
            .reserve_idempotency_key(submission.user, &key, &request_hash, now_ms())
            .await?
        {
            IdempotencyState::Reserved => {}
            IdempotencyState::InProgress => return Err(IntakeError::IdempotencyInProgress),
            IdempotencyState::Mismatch => return Err(IntakeError::IdempotencyMismatch),
            IdempotencyState::Existing(id) => {
                let scope = crate::storage::jobs::JobScope {
                    tenant: crate::storage::TenantScope::tenant(submission.tenant),
                    user: Some(submission.user),
                };
                if let Some(job) = self.store.job(scope, id).await? {
                    return Ok(Submitted::Replayed(job));
                }
                // The original job was deleted: the key makes a new one.
            }
        }
        let user = submission.user;
        let result = self.validate_and_queue(context, submission).await;
        match &result {
            Ok(job) => {
                self.store
                    .complete_idempotency_key(user, &key, job.id)
                    .await?
            }
            Err(_) => self.store.release_idempotency_key(user, &key).await?,
        }
        result.map(Submitted::Created)
    }

    /// Admission, the plan now, quota, every check of the uploads, then the job.
    async fn validate_and_queue(
        &self,
        context: &AuditContext,
        mut submission: Submission,
    ) -> Result<JobRecord, IntakeError> {
        // Shared with every blocking probe below: a probe cannot be cancelled, so the slot stays taken
        // until the last one really ends, even when the request is gone (client disconnected, or the
        // other file already failed).
        let admitted = Arc::new(
            self.admission
                .enter(submission.tenant, submission.user)
                .await
                .map_err(|refusal| match refusal {
                    AdmissionRefusal::UserBusy => IntakeError::UserBusy,
                    AdmissionRefusal::ServerBusy => IntakeError::ServerBusy,
                })?,
        );
        // The plan now, not the token's claim (a downgrade would otherwise wait for the token to expire).
        submission.plan = self
            .current_plans
            .of(self.store.as_ref(), submission.user, &submission.plan)
            .await?;
        let plan = self.plans.limits(&submission.plan);
        let now = now_ms();
        let usage = self
            .store
            .quota_usage(submission.user, now.start_of_utc_day())
            .await?;
        if let Some(refusal) = QuotaRefusal::check(usage, &quota_limits(&plan, now)) {
            return Err(self
                .quota_refused(context, &submission, &plan, refusal, now)
                .await);
        }

        let inspected = self
            .inspect(
                Some(context),
                &submission.plan,
                &plan,
                &submission.fields,
                &submission.image.path,
                &submission.audio.path,
                Arc::clone(&admitted),
            )
            .await?;
        self.queue(context, &submission, &inspected, &plan).await
    }

    /// Every check of the media and parameters: real formats, the audio's real duration, Sonic's
    /// ranges, the engine, the plan's limits, a face. `audit` is the submitter's context (a refused
    /// plan limit is recorded); a preview has none.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn inspect(
        &self,
        audit: Option<&AuditContext>,
        plan_name: &PlanName,
        plan: &crate::domain::Plan,
        fields: &RawParams,
        image_path: &std::path::Path,
        audio_path: &std::path::Path,
        admitted: Arc<super::admission::IntakePermit>,
    ) -> Result<Inspected, IntakeError> {
        let limits = self.settings.image_limits;
        let image_path = image_path.to_path_buf();
        let audio_path = audio_path.to_path_buf();
        // The upload's own folder: a recording ffmpeg decodes is written next to it.
        let scratch = audio_path
            .parent()
            .map_or_else(|| self.settings.work_dir.clone(), Path::to_path_buf);
        let max_duration_s = f64::from(plan.max_duration_s);
        let (image_slot, audio_slot) = (Arc::clone(&admitted), Arc::clone(&admitted));
        let (image, recording) = tokio::try_join!(
            async {
                tokio::task::spawn_blocking(move || {
                    let _slot = image_slot;
                    probe_image(&image_path, &limits)
                })
                .await
                .map_err(anyhow::Error::from)?
                .map_err(|e| media_error("image", e))
            },
            async {
                probe_recording(&audio_path, Some(max_duration_s), &scratch, audio_slot)
                    .await
                    .map_err(|e| match e {
                        // Decoding stopped at the plan's limit: the same answer as a measured
                        // overlong recording.
                        MediaError::AudioTooLong { .. } => IntakeError::PlanLimit {
                            limit: "max_duration_s",
                            plan: plan_name.to_string(),
                            asked: format!("more than {}", plan.max_duration_s),
                            allowed: plan.max_duration_s.to_string(),
                        },
                        other => media_error("audio", other),
                    })
            },
        )?;
        let audio = recording.info;

        let params = SonicParams::parse(fields, audio.duration_s, &self.settings.default_engine)
            .map_err(|rejection| IntakeError::Params {
                code: rejection.code(),
                errors: rejection.errors,
            })?;
        let Some(engine) = self.engines.get(&params.engine) else {
            return Err(IntakeError::Params {
                code: "validation_failed",
                errors: vec![FieldError {
                    field: "engine".into(),
                    message: format!(
                        "unknown engine; available: {}",
                        self.engines.names().join(", ")
                    ),
                }],
            });
        };
        let capabilities = engine.capabilities();
        let given: Vec<String> = fields.keys().cloned().collect();
        // Valid values the engine does not use are accepted and listed; the plan still bounds them.
        let ignored = crate::engines::ignored_parameters(&capabilities, &given);
        if let Some(reason) = engine.unavailable() {
            return Err(IntakeError::EngineUnavailable {
                engine: capabilities.name,
                reason,
            });
        }

        if let Some(url) = &params.callback_url {
            if let Err(message) =
                super::webhook::resolve_target(url, self.settings.webhook_allow_private).await
            {
                return Err(IntakeError::Params {
                    code: "validation_failed",
                    errors: vec![FieldError {
                        field: "callback_url".into(),
                        message,
                    }],
                });
            }
        }
        if let Some((limit, asked, allowed)) = params.exceeds(plan) {
            if let Some(context) = audit {
                self.auditor
                    .record(
                        context,
                        AuditEvent::new(AuditAction::VideoCreate, Outcome::Denied)
                            .reason("plan_limit"),
                    )
                    .await;
            }
            return Err(IntakeError::PlanLimit {
                limit,
                plan: plan_name.to_string(),
                asked,
                allowed,
            });
        }

        let (image, face, faces_detected, crop) = self.find_face(image, &params, admitted).await?;
        Ok(Inspected {
            params,
            image,
            audio,
            face,
            faces_detected,
            crop,
            ignored,
            decoded_audio: recording.decoded,
        })
    }

    /// Finds the largest face and plans the crop. The decoded image moves to the detector's thread
    /// and back, so its pixels are never copied.
    async fn find_face(
        &self,
        image: ProbedImage,
        params: &SonicParams,
        slot: Arc<super::admission::IntakePermit>,
    ) -> Result<
        (
            ProbedImage,
            crate::media::face::Rect,
            usize,
            crate::media::face::CropPlan,
        ),
        IntakeError,
    > {
        let detector = self.faces.clone();
        let (image, faces) = tokio::task::spawn_blocking(move || {
            let _slot = slot;
            let faces = detector.detect(&image.image);
            (image, faces)
        })
        .await
        .map_err(anyhow::Error::from)?;
        let Some(largest) = faces.first() else {
            return Err(IntakeError::Media {
                code: "no_face_detected",
                field: "image",
                message: format!(
                    "no face was found in the photo (faces of {} px and more are looked for): use a \
                     well-lit, frontal portrait",
                    crate::media::face::MIN_FACE
                ),
            });
        };
        let face_size = largest.width.max(largest.height);
        let smallest =
            crate::media::face::smallest_usable_face(params.min_resolution, params.expand_ratio);
        if face_size < smallest {
            return Err(IntakeError::Media {
                code: "face_too_small",
                field: "image",
                message: format!(
                    "the face in the photo is {face_size} px; at min_resolution {} and expand_ratio {} \
                     the smallest usable face is {smallest} px: use a photo taken closer, or a lower \
                     min_resolution",
                    params.min_resolution, params.expand_ratio
                ),
            });
        }
        let crop = plan_crop(
            largest,
            image.width,
            image.height,
            params.expand_ratio as f32,
            params.min_resolution,
        );
        let face = crate::media::face::Rect {
            x: largest.x,
            y: largest.y,
            width: largest.width,
            height: largest.height,
        };
        Ok((image, face, faces.len(), crop))
    }

    /// Records and explains a quota refusal.
    async fn quota_refused(
        &self,
        context: &AuditContext,
        submission: &Submission,
        plan: &crate::domain::Plan,
        refusal: QuotaRefusal,
        now: UnixMillis,
    ) -> IntakeError {
        let (detail, retry_after, reason) = match refusal {
            QuotaRefusal::Daily => (
                format!(
                    "the {} plan allows {} videos per day",
                    submission.plan, plan.videos_per_day
                ),
                until_midnight(now),
                "quota_daily",
            ),
            QuotaRefusal::Concurrent => (
                format!(
                    "the {} plan allows {} job(s) at a time; wait for one to finish",
                    submission.plan, plan.max_concurrent_jobs
                ),
                Duration::from_secs(30),
                "quota_concurrent",
            ),
        };
        self.auditor
            .record(
                context,
                AuditEvent::new(AuditAction::VideoCreate, Outcome::Denied).reason(reason),
            )
            .await;
        IntakeError::Quota {
            detail,
            retry_after,
        }
    }

    async fn queue(
        &self,
        context: &AuditContext,
        submission: &Submission,
        inspected: &Inspected,
        plan: &crate::domain::Plan,
    ) -> Result<JobRecord, IntakeError> {
        let id = JobId::generate();
        let now = now_ms();
        let (input, output) = inspected.describe();
        let (params, image, audio) = (&inspected.params, &inspected.image, &inspected.audio);
        // Files first: a worker must never claim a job whose inputs are missing.
        let image_key = input_key(submission.tenant, id, "image", image.format.as_str());
        // A recording ffmpeg decoded is kept as that WAV, so engines read it as they read any WAV.
        let (audio_file, audio_ext) = match inspected.decoded_audio.as_deref() {
            Some(wav) => (wav, "wav"),
            None => (submission.audio.path.as_path(), audio.format.as_str()),
        };
        let audio_key = input_key(submission.tenant, id, "audio", audio_ext);
        self.blobs
            .put_file(&image_key, &submission.image.path)
            .await?;
        self.blobs.put_file(&audio_key, audio_file).await?;
        let record = JobRecord {
            id,
            tenant_id: submission.tenant,
            user_id: submission.user,
            status: JobStatus::Queued,
            stage: Stage::Queued,
            progress: 0.0,
            engine: params.engine.clone(),
            params: serde_json::to_string(params).map_err(anyhow::Error::from)?,
            input: serde_json::to_string(&input).map_err(anyhow::Error::from)?,
            output_plan: serde_json::to_string(&output).map_err(anyhow::Error::from)?,
            callback_url: params.callback_url.clone(),
            vtag: 0.0,
            attempts: 0,
            worker_id: None,
            lease_expires_at: None,
            counts_toward_quota: true,
            error_code: None,
            error_message: None,
            error_detail: None,
            result_key: None,
            result_bytes: None,
            created_at: now,
            started_at: None,
            finished_at: None,
            updated_at: now,
            ignored_parameters: inspected.ignored.clone(),
        };
        let quota = quota_limits(plan, now);
        let created = match self.store.create_job(&record, &quota).await {
            Ok(Ok(job)) => job,
            Ok(Err(refusal)) => {
                self.blobs
                    .delete_prefix(&job_prefix(submission.tenant, id))
                    .await?;
                return Err(self
                    .quota_refused(context, submission, plan, refusal, now)
                    .await);
            }
            Err(err) => {
                self.blobs
                    .delete_prefix(&job_prefix(submission.tenant, id))
                    .await?;
                return Err(err.into());
            }
        };
        self.auditor
            .record(
                context,
                AuditEvent::new(AuditAction::VideoCreate, Outcome::Success).target(created.id),
            )
            .await;
        self.events.queued();
        self.events.changed(created.id);
        Ok(created)
    }
}
