//! A simulated engine for tests and benchmarks only (off unless `simulated_engine_ms` is set): it reports
//! progress for a configured time and writes a placeholder file instead of a video.

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;

use super::{Capabilities, Engine, EngineError, EngineJob, Health, ProgressFn, Slot};
use crate::domain::Stage;

/// Pretends to generate for a fixed time.
pub struct SimulatedEngine {
    pub duration: Duration,
}

#[async_trait]
impl Engine for SimulatedEngine {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            name: "simulated".to_owned(),
            description:
                "Test double: waits, reports progress, writes a placeholder. Not for production."
                    .to_owned(),
            honours: [
                "min_resolution",
                "expand_ratio",
                "inference_steps",
                "dynamic_scale",
                "motion_scale",
                "seed",
                "enable_lip_sync_correction",
                "lip_sync_offset",
            ]
            .map(String::from)
            .to_vec(),
            min_resolution: 128,
            max_resolution: 2048,
        }
    }

    fn writes_video(&self) -> bool {
        false
    }

    async fn health(&self) -> Health {
        Health {
            healthy: true,
            detail: format!("simulates {} ms per job", self.duration.as_millis()),
        }
    }

    async fn generate(
        &self,
        job: &EngineJob,
        out: &Path,
        progress: ProgressFn,
        _slot: Slot,
    ) -> Result<(), EngineError> {
        let steps = 10u32;
        for step in 0..steps {
            progress(Stage::Generating, f64::from(step) / f64::from(steps));
            tokio::time::sleep(self.duration / steps).await;
        }
        progress(Stage::Encoding, 1.0);
        tokio::fs::write(out, format!("simulated video of job {}\n", job.id))
            .await
            .map_err(|e| EngineError::server("engine_io", e.to_string()))
    }
}
