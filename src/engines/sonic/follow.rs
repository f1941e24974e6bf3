//! Following one prompt to its end: over the websocket when there is one (stages as they happen),
//! through `/history` when there is none or it drops, and `/history` now and then anyway in case
//! an event was lost. The prompt's history entry is the one answer (see `outcome`).

use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;
use tokio::time::Instant;

use super::client::{ComfyClient, ComfyError, HistoryEntry};
use super::events::{ComfyEvent, EventStream};
use crate::domain::Stage;

/// With the socket up, `/history` is still asked every this many poll intervals.
const SAFETY_NET_POLLS: u32 = 10;
/// Without the socket, `/queue` is asked every this many polls to see that the prompt still exists.
const LOST_CHECK_POLLS: u32 = 4;
/// How long after the socket said the prompt ended its history entry may take to appear
/// (ComfyUI sends `execution_success` just before writing it).
const HISTORY_GRACE: Duration = Duration::from_secs(10);

/// Where a prompt is on the GPU machine. Ordered: a prompt only moves forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RemoteStage {
    /// Waiting in ComfyUI's queue (or nothing seen yet).
    QueuedOnGpu,
    /// Loaders run: checkpoints, the Sonic unet, the photo and the recording.
    LoadingModel,
    /// Sonic's preprocessing and sampler.
    Generating,
    /// The video is put together and saved.
    Encoding,
}

impl RemoteStage {
    /// The stage a node of `class_type` means; `None` for classes that say nothing (the current
    /// stage stays).
    pub fn of_class(class_type: &str) -> Option<Self> {
        Some(match class_type {
            "ImageOnlyCheckpointLoader" | "SONICTLoader" | "LoadImage" | "LoadAudio" => {
                RemoteStage::LoadingModel
            }
            "SONIC_PreData" | "SONICSampler" => RemoteStage::Generating,
            "CreateVideo" | "SaveVideo" | "VHS_VideoCombine" => RemoteStage::Encoding,
            _ => return None,
        })
    }

    /// The job's stage while the prompt is here.
    pub fn job_stage(self) -> Stage {
        match self {
            RemoteStage::QueuedOnGpu => Stage::QueuedOnGpu,
            RemoteStage::LoadingModel => Stage::LoadingModel,
            RemoteStage::Generating => Stage::Generating,
            RemoteStage::Encoding => Stage::Encoding,
        }
    }
}

/// One prompt's stage, moved forward by its events.
struct Stages<'a> {
    prompt: &'a Value,
    current: RemoteStage,
}

impl Stages<'_> {
    /// The new stage if `event` (already known to be this prompt's) moves it forward.
    fn advance(&mut self, event: &ComfyEvent) -> Option<RemoteStage> {
        let node = match event {
            ComfyEvent::Executing {
                node: Some(node), ..
            }
            | ComfyEvent::Progress {
                node: Some(node), ..
            } => node,
            _ => return None,
        };
        let class = self.prompt[node.as_str()]["class_type"].as_str()?;
        self.reach(RemoteStage::of_class(class)?)
    }

    fn reach(&mut self, stage: RemoteStage) -> Option<RemoteStage> {
        (stage > self.current).then(|| {
            self.current = stage;
            stage
        })
    }
}

/// Waits until prompt `prompt_id` (the graph `prompt`) has ended and returns its history entry,
/// reporting each new stage to `on_stage` (`QueuedOnGpu` first). `events` is the websocket opened
/// with the prompt's client id before it was submitted; without it, or once it drops, `/history`
/// is asked every `poll_interval` (and `/queue` while the prompt waits, to see it start).
/// Errors of `/history` end the wait. Dropping the future stops following, nothing else.
pub async fn await_prompt(
    client: &ComfyClient,
    mut events: Option<EventStream>,
    prompt: &Value,
    prompt_id: &str,
    poll_interval: Duration,
    mut on_stage: impl FnMut(RemoteStage),
) -> Result<HistoryEntry, ComfyError> {
    let mut stages = Stages {
        prompt,
        current: RemoteStage::QueuedOnGpu,
    };
    on_stage(RemoteStage::QueuedOnGpu);
    let mut last_poll = Instant::now();
    let mut polls = 0u32;
    // When the socket said the prompt ended: its history entry is then asked at every interval.
    let mut ended: Option<Instant> = None;
    loop {
        let every = if events.is_some() && ended.is_none() {
            poll_interval * SAFETY_NET_POLLS
        } else {
            poll_interval
        };
        let poll_at = last_poll + every;
        let wake = match events.as_mut() {
            Some(stream) => tokio::select! {
                next = stream.next() => next.map_or(Wake::Closed, Wake::Event),
                () = tokio::time::sleep_until(poll_at) => Wake::Poll,
            },
            None => {
                tokio::time::sleep_until(poll_at).await;
                Wake::Poll
            }
        };
        match wake {
            Wake::Event(event) => {
                if event.prompt_id() != Some(prompt_id) {
                    continue;
                }
                if let Some(stage) = stages.advance(&event) {
                    on_stage(stage);
                }
                if !event.ends_prompt() {
                    continue;
                }
                ended.get_or_insert_with(Instant::now);
            }
            Wake::Closed => {
                tracing::warn!(
                    %prompt_id,
                    "ComfyUI's websocket closed; following the prompt through /history"
                );
                events = None;
                continue;
            }
            Wake::Poll => {}
        }
        last_poll = Instant::now();
        polls += 1;
        // Asked before `/history`: ComfyUI writes a prompt's history before it leaves the queue, so
        // a prompt in neither was lost (the server restarted).
        let lost_check =
            ended.is_none() && (events.is_some() || polls.is_multiple_of(LOST_CHECK_POLLS));
        let starting = events.is_none() && stages.current == RemoteStage::QueuedOnGpu;
        let queue = if lost_check || starting {
            Some(client.queue().await?)
        } else {
            None
        };
        if let Some(entry) = client.history(prompt_id).await? {
            return Ok(entry);
        }
        if let Some(queue) = &queue {
            let running = queue.running.iter().any(|id| id == prompt_id);
            if lost_check && !running && !queue.pending.iter().any(|id| id == prompt_id) {
                return Err(ComfyError::Lost {
                    prompt_id: prompt_id.to_owned(),
                });
            }
            // Without events, the queue tells when the prompt starts.
            if starting && running {
                if let Some(stage) = stages.reach(RemoteStage::Generating) {
                    on_stage(stage);
                }
            }
        }
        if let Some(at) = ended.filter(|at| at.elapsed() > HISTORY_GRACE) {
            return Err(ComfyError::Protocol {
                what: "history",
                reason: format!(
                    "the prompt ended {} s ago but /history has no entry for it",
                    at.elapsed().as_secs()
                ),
            });
        }
    }
}

/// What woke the follower.
enum Wake {
    Event(ComfyEvent),
    Closed,
    Poll,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::engines::sonic::workflow::{JobInputs, Models, Workflow};

    fn builtin_prompt() -> Value {
        let models = Models {
            checkpoint: "svd_xt_1_1.safetensors".into(),
            unet: "unet.pth".into(),
            dtype: "fp16".into(),
        };
        Workflow::builtin(models).build(&JobInputs {
            image: "f.png",
            audio: "s.wav",
            audio_seconds: 5.0,
            min_resolution: 512,
            expand_ratio: 0.5,
            seed: 1,
            inference_steps: 25,
            dynamic_scale: 1.0,
        })
    }

    fn executing(node: &str) -> ComfyEvent {
        ComfyEvent::Executing {
            prompt_id: Some("p".into()),
            node: Some(node.into()),
        }
    }

    #[test]
    fn node_classes_map_to_stages() {
        use RemoteStage::*;
        for (class, stage) in [
            ("ImageOnlyCheckpointLoader", Some(LoadingModel)),
            ("SONICTLoader", Some(LoadingModel)),
            ("LoadImage", Some(LoadingModel)),
            ("LoadAudio", Some(LoadingModel)),
            ("SONIC_PreData", Some(Generating)),
            ("SONICSampler", Some(Generating)),
            ("CreateVideo", Some(Encoding)),
            ("SaveVideo", Some(Encoding)),
            ("VHS_VideoCombine", Some(Encoding)),
            ("ImageScale", None),
        ] {
            assert_eq!(RemoteStage::of_class(class), stage, "{class}");
        }
        assert!(QueuedOnGpu < LoadingModel && LoadingModel < Generating && Generating < Encoding);
        assert_eq!(Generating.job_stage(), Stage::Generating);
        assert_eq!(QueuedOnGpu.job_stage().as_str(), "queued_on_gpu");
        assert_eq!(LoadingModel.job_stage().as_str(), "loading_model");
    }

    #[test]
    fn the_builtin_graph_in_execution_order_goes_through_every_stage_once() {
        let prompt = builtin_prompt();
        let mut stages = Stages {
            prompt: &prompt,
            current: RemoteStage::QueuedOnGpu,
        };
        let seen: Vec<RemoteStage> = ["1", "2", "3", "4", "5", "6", "7", "8"]
            .iter()
            .filter_map(|node| stages.advance(&executing(node)))
            .collect();
        assert_eq!(
            seen,
            [
                RemoteStage::LoadingModel,
                RemoteStage::Generating,
                RemoteStage::Encoding
            ]
        );
    }

    #[test]
    fn stages_never_go_back_and_unknown_nodes_keep_the_stage() {
        let mut prompt = builtin_prompt();
        prompt["9"] = json!({"class_type": "ImageScale", "inputs": {}});
        let mut stages = Stages {
            prompt: &prompt,
            current: RemoteStage::QueuedOnGpu,
        };
        assert_eq!(
            stages.advance(&executing("6")),
            Some(RemoteStage::Generating)
        );
        // A loader that runs late (ComfyUI orders by dependency, not by id) does not go back.
        assert_eq!(stages.advance(&executing("3")), None);
        assert_eq!(stages.advance(&executing("9")), None);
        assert_eq!(stages.advance(&executing("no-such-node")), None);
        let progress = ComfyEvent::Progress {
            prompt_id: Some("p".into()),
            node: Some("7".into()),
            value: 1,
            max: 2,
        };
        assert_eq!(stages.advance(&progress), Some(RemoteStage::Encoding));
        let done = ComfyEvent::Executing {
            prompt_id: Some("p".into()),
            node: None,
        };
        assert_eq!(stages.advance(&done), None);
        assert_eq!(stages.current, RemoteStage::Encoding);
    }
}
