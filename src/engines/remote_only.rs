//! An engine that runs only on remote workers (`sonicgw worker` on the GPU hosts): this process
//! accepts its jobs at intake and queues them, and never runs them itself.

use std::path::Path;

use async_trait::async_trait;

use super::{Capabilities, Engine, EngineError, EngineJob, Health, ProgressFn, Slot};

/// Intake's view of an engine whose machines this process cannot reach.
pub struct RemoteOnly {
    pub capabilities: Capabilities,
    /// The model its remote workers run, as this process's configuration names it.
    pub model: String,
}

#[async_trait]
impl Engine for RemoteOnly {
    fn capabilities(&self) -> Capabilities {
        self.capabilities.clone()
    }

    fn model(&self) -> String {
        self.model.clone()
    }

    async fn health(&self) -> Health {
        Health {
            healthy: true,
            detail: "runs on remote workers (`sonicgw worker`); see their hosts for GPU health"
                .to_owned(),
        }
    }

    /// No worker of this process takes its jobs.
    fn lanes(&self) -> Option<usize> {
        Some(0)
    }

    async fn generate(
        &self,
        _job: &EngineJob,
        _out: &Path,
        _progress: ProgressFn,
        _slot: Slot,
    ) -> Result<(), EngineError> {
        Err(EngineError::server(
            "engine_unavailable",
            format!(
                "engine {} runs only on remote workers",
                self.capabilities.name
            ),
        ))
    }
}
