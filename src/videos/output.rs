//! The one step between every engine's MP4 and the stored video, for in-process workers and
//! remote workers' results alike: the labels (`provenance`). Nothing is stored unlabelled.

use std::path::{Path, PathBuf};

use super::VideoService;
use crate::domain::SonicParams;
use crate::engines::EngineError;
use crate::provenance::LabelRequest;
use crate::storage::jobs::JobRecord;

impl VideoService {
    /// Labels `video`, the engine's MP4 of `job`, and returns the labelled file (written next to
    /// it; the caller stores or removes it). An engine that writes no real video (the simulated test
    /// double) gets its placeholder back unchanged.
    pub(super) async fn label_output(
        &self,
        job: &JobRecord,
        video: &Path,
    ) -> Result<PathBuf, EngineError> {
        let internal =
            |what: &str, e: String| EngineError::server("internal", format!("{what}: {e}"));
        if self
            .engines
            .get(&job.engine)
            .is_some_and(|engine| !engine.writes_video())
        {
            return Ok(video.to_path_buf());
        }
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
        Ok(labelled)
    }
}
