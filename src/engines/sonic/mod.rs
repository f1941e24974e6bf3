//! The `sonic` engine: Sonic on a GPU machine, through a ComfyUI server with the ComfyUI_Sonic
//! nodes. ComfyUI has no authentication and one queue for everyone, so the gateway is its only
//! client: it keeps one job in flight per server and does the queueing itself.
//!
//! `client` speaks ComfyUI's HTTP API, `workflow` builds the graph, `inputs` makes the files it
//! loads, `outcome` turns a finished prompt into a file or an actionable code, and `engine` runs
//! a job through them (the final ffmpeg pass is `media::ffmpeg::conform_remote_video`).

pub mod client;
mod engine;
mod inputs;
pub mod outcome;
pub mod pool;
pub mod workflow;

use std::time::Duration;

pub use engine::SonicEngine;
pub use pool::PoolSettings;

use crate::media::image::ImageLimits;

/// How the engine runs jobs (from the configuration).
#[derive(Debug, Clone)]
pub struct SonicSettings {
    pub models: workflow::Models,
    /// Longest a job may take, upload to final encode.
    pub timeout: Duration,
    /// How often `/history` is asked whether the prompt finished.
    pub poll_interval: Duration,
    pub image_limits: ImageLimits,
}
