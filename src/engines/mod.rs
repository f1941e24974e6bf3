//! Engines turn a validated job's input files into a finished MP4. One trait fits the built-in CPU
//! engine, the simulated engine and a remote engine (Sonic on a GPU machine through ComfyUI): each takes
//! the input files and returns a finished video.

pub mod builtin;
pub mod remote_only;
pub mod simulated;
pub mod sonic;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use serde::Serialize;

use crate::domain::{JobId, SonicParams, Stage};

pub use crate::media::face::Rect;

/// Everything an engine needs for one job.
#[derive(Debug, Clone)]
pub struct EngineJob {
    pub id: JobId,
    pub params: SonicParams,
    pub image_path: PathBuf,
    pub audio_path: PathBuf,
    /// The detected face in the original (orientation-corrected) image.
    pub face: Rect,
    /// The crop of the original image that becomes the video.
    pub crop: Rect,
    pub output_width: u32,
    pub output_height: u32,
    pub frames: u32,
    /// A scratch directory of the job's own.
    pub workdir: PathBuf,
    /// How long the job should take, from the cost model: engines without progress of their own
    /// (Sonic's sampler) report progress against it.
    pub expected_s: Option<f64>,
}

/// What an engine can do, for `GET /v1/engines` and for refusing parameters it cannot honour.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Capabilities {
    pub name: String,
    pub description: String,
    /// Parameters that change its output. Others, when given (valid and within the plan), are
    /// accepted and listed on the job as `ignored_parameters`.
    pub honours: Vec<String>,
    pub min_resolution: u32,
    pub max_resolution: u32,
}

/// Whether an engine can take work now. Named `EngineHealth` in the OpenAPI document, where
/// `Health` is `/healthz`'s answer.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = EngineHealth)]
pub struct Health {
    pub healthy: bool,
    pub detail: String,
}

/// Progress reports from an engine: the stage and 0..1 within the whole job.
pub type ProgressFn = Arc<dyn Fn(Stage, f64) + Send + Sync>;

/// Why an engine failed. The user sees `code` and the one-line `message`; `detail` (tool output,
/// paths, exception text) goes to the log and to platform admins only. `server_side` failures give
/// the user's quota back; failures caused by the user's own input do not, so they cannot be
/// repeated for free.
#[derive(Debug, thiserror::Error)]
#[error("{code}: {detail}")]
pub struct EngineError {
    pub code: &'static str,
    pub message: String,
    pub detail: String,
    pub server_side: bool,
    /// The machine failed, not the job: run it again elsewhere (up to `job_max_attempts`).
    pub retry: bool,
}

impl EngineError {
    /// A failure on the service's side: the user gets a generic line for `code`.
    pub fn server(code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            code,
            message: server_message(code).to_owned(),
            detail: detail.into(),
            server_side: true,
            retry: false,
        }
    }

    /// The engine's machine failed or vanished mid-run: the job goes back to the queue.
    pub fn retry_elsewhere(code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            retry: true,
            ..Self::server(code, detail)
        }
    }

    /// A failure caused by the submitted files: `message` tells the user what is wrong with them.
    pub fn input(
        code: &'static str,
        message: impl Into<String>,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            code,
            message: message.into(),
            detail: detail.into(),
            server_side: false,
            retry: false,
        }
    }
}

impl From<crate::media::MediaError> for EngineError {
    /// A decode failure of a file that passed intake: the upload's fault when the decoder says so (the
    /// user's quota is kept), ours otherwise. Every engine decodes its inputs through `media`.
    fn from(err: crate::media::MediaError) -> Self {
        if err.is_client_error() {
            EngineError::input(
                err.code(),
                "the uploaded file could not be decoded; check it plays and upload it again",
                err.to_string(),
            )
        } else {
            EngineError::server(err.code(), err.to_string())
        }
    }
}

/// The line a user sees for a server-side failure: what happened and that it was not their fault.
fn server_message(code: &str) -> &'static str {
    match code {
        "engine_timeout" | "encode_timeout" => {
            "generating the video took too long and was stopped; it did not count toward your quota"
        }
        "engine_unavailable" => {
            "no engine is available for this job right now; it did not count toward your quota"
        }
        "gpu_out_of_memory" => {
            "the GPU ran out of memory for this job; submit it again with a lower min_resolution \
             (it did not count toward your quota)"
        }
        "engine_rejected_workflow" => {
            "the GPU server refused this job's workflow, a configuration problem on our side; it did \
             not count toward your quota"
        }
        "input_missing" => {
            "the uploaded files of this job are no longer available; submit it again"
        }
        _ => {
            "the video could not be generated because of a problem on our side; it did not count \
              toward your quota"
        }
    }
}

/// Capacity an engine reserved for one job (a place on a GPU server), held until dropped.
#[derive(Default)]
pub struct Slot {
    reservation: Option<Box<dyn std::any::Any + Send + Sync>>,
    instance: Option<String>,
}

impl Slot {
    /// For engines bounded only by the number of workers.
    pub fn unbounded() -> Self {
        Self::default()
    }

    /// A reservation on the named instance (for its speed estimate).
    pub fn holding<T: std::any::Any + Send + Sync>(reservation: T, instance: String) -> Self {
        Self {
            reservation: Some(Box::new(reservation)),
            instance: Some(instance),
        }
    }

    /// The instance the job will run on, when the engine has several.
    pub fn instance(&self) -> Option<&str> {
        self.instance.as_deref()
    }

    /// The engine's own reservation back.
    pub fn take<T: std::any::Any>(self) -> Option<T> {
        self.reservation?.downcast().ok().map(|b| *b)
    }
}

/// Instances behind an engine (GPU servers), for `GET /v1/engines`.
pub use sonic::pool::InstanceView;

/// A video generator.
#[async_trait]
pub trait Engine: Send + Sync + 'static {
    fn capabilities(&self) -> Capabilities;
    async fn health(&self) -> Health;
    /// How many jobs it can ever run at once in this process when it bounds that itself (a GPU
    /// pool); `None`: as many as the `workers` setting.
    fn lanes(&self) -> Option<usize> {
        None
    }
    /// Waits until it can start one more job and reserves that capacity. A worker holds a slot
    /// before it claims a job, so jobs wait in the fair queue, not inside the engine.
    async fn reserve(&self) -> Slot {
        Slot::unbounded()
    }
    /// Why it cannot take jobs now (every GPU server checked and failing): intake refuses them
    /// rather than queueing work nothing can run.
    fn unavailable(&self) -> Option<String> {
        None
    }
    /// Its servers, for operators (`with_urls`: platform admins see their addresses).
    fn instances(&self, _with_urls: bool) -> Vec<InstanceView> {
        Vec::new()
    }
    /// How many jobs it can run at once (a GPU pool: healthy instances times their in-flight limit);
    /// `None`: as many as the process has workers. ETAs schedule the queue onto this many slots.
    fn capacity(&self) -> Option<usize> {
        None
    }
    /// The model behind it, as provenance names it (C2PA's software agent).
    fn model(&self) -> String {
        self.capabilities().name
    }
    /// Whether `generate` writes a real video, which every output step (labels) then works on; only
    /// the simulated test double writes a placeholder instead.
    fn writes_video(&self) -> bool {
        true
    }
    /// Writes the finished MP4 (H.264 + AAC, 25 fps) to `out`. Dropping the future stops the work.
    async fn generate(
        &self,
        job: &EngineJob,
        out: &std::path::Path,
        progress: ProgressFn,
        slot: Slot,
    ) -> Result<(), EngineError>;
}

/// The configured engines by name.
#[derive(Clone, Default)]
pub struct Engines {
    engines: BTreeMap<String, Arc<dyn Engine>>,
}

impl Engines {
    pub fn add(&mut self, engine: Arc<dyn Engine>) {
        self.engines.insert(engine.capabilities().name, engine);
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn Engine>> {
        self.engines.get(name)
    }

    pub fn names(&self) -> Vec<String> {
        self.engines.keys().cloned().collect()
    }

    pub fn all(&self) -> impl Iterator<Item = &Arc<dyn Engine>> {
        self.engines.values()
    }
}

/// The parameters a request gave explicitly that the engine does not use, in `PARAM_FIELDS` order.
/// They are accepted (a client written for one engine works on every engine) when valid and within the
/// plan, and listed on the job as `ignored_parameters`.
pub fn ignored_parameters(capabilities: &Capabilities, given: &[String]) -> Vec<String> {
    crate::domain::params::PARAM_FIELDS
        .iter()
        .filter(|name| {
            !matches!(
                **name,
                "duration" | "engine" | "callback_url" | "label_language"
            ) && given.iter().any(|g| g == *name)
                && !capabilities.honours.iter().any(|h| h == *name)
        })
        .map(|name| (*name).to_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(honours: &[&str]) -> Capabilities {
        Capabilities {
            name: "e".into(),
            description: String::new(),
            honours: honours.iter().map(|h| h.to_string()).collect(),
            min_resolution: 128,
            max_resolution: 2048,
        }
    }

    #[test]
    fn ignored_parameters_are_the_given_ones_the_engine_does_not_use_in_a_fixed_order() {
        let given: Vec<String> = [
            "motion_scale",
            "seed",
            "inference_steps",
            "duration",
            "engine",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            ignored_parameters(&caps(&["seed"]), &given),
            ["inference_steps", "motion_scale"]
        );
        assert!(
            ignored_parameters(&caps(&["seed", "inference_steps", "motion_scale"]), &given)
                .is_empty()
        );
    }
}
