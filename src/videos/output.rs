//! The one step between every engine's MP4 and the stored video, for in-process workers and
//! remote workers' results alike: the labels (`provenance`), then the C2PA Content Credentials,
//! which hash the final bytes and so are always the last change. Nothing is stored unlabelled or
//! unsigned.

use std::path::{Path, PathBuf};

use futures::StreamExt;
use sha2::{Digest, Sha256};

use super::view::JobInput;
use super::{input_key, VideoService};
use crate::domain::SonicParams;
use crate::engines::EngineError;
use crate::provenance::credentials::{InputDigest, ManifestFacts};
use crate::provenance::LabelRequest;
use crate::storage::jobs::JobRecord;

impl VideoService {
    /// Labels and signs `video`, the engine's MP4 of `job`, and returns the final file (written
    /// next to it; the caller stores or removes it). An engine that writes no real video (the
    /// simulated test double) gets its placeholder back unchanged.
    pub(super) async fn label_output(
        &self,
        job: &JobRecord,
        video: &Path,
    ) -> Result<PathBuf, EngineError> {
        let internal =
            |what: &str, e: String| EngineError::server("internal", format!("{what}: {e}"));
        let Some(engine) = self.engines.get(&job.engine) else {
            return Err(internal(
                "engine",
                format!("{} is not configured", job.engine),
            ));
        };
        if !engine.writes_video() {
            return Ok(video.to_path_buf());
        }
        let model = engine.model();
        let params: SonicParams = serde_json::from_str(&job.params)
            .map_err(|e| internal("stored job params", e.to_string()))?;
        let texts = self
            .store
            .tenant_label(job.tenant_id)
            .await
            .map_err(|e| internal("reading the tenant's label", e.to_string()))?
            .unwrap_or_default();
        let parent = video.parent().unwrap_or(Path::new("."));
        // The label texts live in a folder of this run only, which ffmpeg runs in.
        let scratch = tempfile::Builder::new()
            .prefix("label-")
            .tempdir_in(parent)
            .map_err(|e| internal("label scratch folder", e.to_string()))?;
        let labelled = video.with_extension("labelled.mp4");
        let request = LabelRequest {
            produce_id: job.id.to_string(),
            language: params.label_language,
            texts: &texts,
        };
        self.labeller
            .label(&request, video, &labelled, scratch.path())
            .await
            .map_err(|e| {
                let _ = std::fs::remove_file(&labelled);
                EngineError::server("label_failed", e.to_string())
            })?;
        let facts = match self.manifest_facts(job, &params, model).await {
            Ok(facts) => facts,
            Err(err) => {
                let _ = std::fs::remove_file(&labelled);
                return Err(err);
            }
        };
        let signed = video.with_extension("signed.mp4");
        let outcome = self.credentials.sign(&facts, &labelled, &signed).await;
        let _ = std::fs::remove_file(&labelled);
        outcome.map_err(|e| EngineError::server(e.code(), e.to_string()))?;
        Ok(signed)
    }

    /// What the job's manifest states: its id, its owner's pseudonym, the engine and model, the
    /// stored inputs' digests and the labels just applied.
    async fn manifest_facts(
        &self,
        job: &JobRecord,
        params: &SonicParams,
        model: String,
    ) -> Result<ManifestFacts, EngineError> {
        let internal =
            |what: &str, e: String| EngineError::server("internal", format!("{what}: {e}"));
        let input: JobInput = serde_json::from_str(&job.input)
            .map_err(|e| internal("stored job input", e.to_string()))?;
        let photo_ext = input.image.format.clone();
        let recording_ext = input.audio.stored_format().to_owned();
        let photo = self.input_digest(job, "image", &photo_ext).await?;
        let recording = self.input_digest(job, "audio", &recording_ext).await?;
        let settings = self.labeller.settings();
        Ok(ManifestFacts {
            job_id: job.id.to_string(),
            producer: self
                .credentials
                .producer_id(&job.tenant_id.to_string(), &job.user_id.to_string()),
            engine: job.engine.clone(),
            model,
            photo: InputDigest {
                format: mime_of(&photo_ext).to_owned(),
                sha256: photo,
            },
            recording: InputDigest {
                format: mime_of(&recording_ext).to_owned(),
                sha256: recording,
            },
            visible_label: settings.explicit_label,
            corner_mark: settings.corner_mark,
            label_language: params.label_language.as_str().to_owned(),
            aigc_producer: settings.producer_id.clone(),
        })
    }

    /// SHA-256 of a stored input, streamed from the store (the job's own copy, for in-process and
    /// remote runs alike).
    async fn input_digest(
        &self,
        job: &JobRecord,
        name: &str,
        ext: &str,
    ) -> Result<String, EngineError> {
        let missing = |e: String| {
            EngineError::server("input_missing", format!("the uploaded {name} is gone: {e}"))
        };
        let read = self
            .blobs
            .read(&input_key(job.tenant_id, job.id, name, ext), None)
            .await
            .map_err(|e| missing(e.to_string()))?
            .ok_or_else(|| missing("absent".to_owned()))?;
        let mut hasher = Sha256::new();
        let mut stream = read.stream;
        while let Some(chunk) = stream.next().await {
            hasher.update(chunk.map_err(|e| missing(e.to_string()))?);
        }
        Ok(hex::encode(hasher.finalize()))
    }
}

/// The MIME type of a stored input by its extension (the formats intake accepts).
fn mime_of(ext: &str) -> &'static str {
    match ext {
        "jpeg" | "jpg" => "image/jpeg",
        "png" => "image/png",
        "webp" => "image/webp",
        "wav" => "audio/wav",
        "mp3" => "audio/mpeg",
        "flac" => "audio/flac",
        "ogg" => "audio/ogg",
        "m4a" => "audio/mp4",
        "webm" => "audio/webm",
        _ => "application/octet-stream",
    }
}
