//! The built-in API-format workflow: the ComfyUI_Sonic graph of the reference, with the job's
//! parameters filled in.

use serde_json::{json, Value};

/// The node whose outputs name the video file (SaveVideo).
pub const OUTPUT_NODE: &str = "8";

/// Frames per second Sonic writes with `use_interframe` (2K-1 frames from K keyframes at 12.5/s).
pub const SONIC_FPS: f64 = 25.0;

/// Smallest `duration` SONIC_PreData accepts.
const MIN_DURATION_S: f64 = 1.0;

/// The models an operator installed (configuration).
#[derive(Debug, Clone)]
pub struct Models {
    /// `ckpt_name` of ImageOnlyCheckpointLoader (SVD img2vid-xt).
    pub checkpoint: String,
    /// `sonic_unet` of SONICTLoader (a file in `models/sonic`).
    pub unet: String,
    /// `dtype` of SONICTLoader: fp16, fp32 or bf16.
    pub dtype: String,
}

/// One job's inputs to the graph.
#[derive(Debug, Clone)]
pub struct JobInputs<'a> {
    /// Uploaded names as `/upload/image` returned them.
    pub image: &'a str,
    pub audio: &'a str,
    /// The recording's real length in seconds.
    pub audio_seconds: f64,
    pub min_resolution: u32,
    pub expand_ratio: f64,
    pub seed: u32,
    pub inference_steps: u32,
    pub dynamic_scale: f64,
}

/// `duration` for SONIC_PreData: the node uses `min(duration, audio length)`, so the real length
/// rounded up to the millisecond (never the node's default 10 s, which truncates longer speech).
pub fn duration_input(audio_seconds: f64) -> f64 {
    ((audio_seconds * 1000.0).ceil() / 1000.0).max(MIN_DURATION_S)
}

/// The API-format prompt (`POST /prompt`'s `prompt`).
pub fn build(models: &Models, job: &JobInputs<'_>) -> Value {
    json!({
        "1": {"class_type": "ImageOnlyCheckpointLoader",
              "inputs": {"ckpt_name": models.checkpoint}},
        "2": {"class_type": "SONICTLoader",
              "inputs": {"model": ["1", 0], "sonic_unet": models.unet, "ip_audio_scale": 1.0,
                         "use_interframe": true, "dtype": models.dtype}},
        "3": {"class_type": "LoadImage", "inputs": {"image": job.image}},
        "4": {"class_type": "LoadAudio", "inputs": {"audio": job.audio}},
        "5": {"class_type": "SONIC_PreData",
              "inputs": {"clip_vision": ["1", 1], "vae": ["1", 2], "audio": ["4", 0],
                         "image": ["3", 0], "weight_dtype": ["2", 1],
                         "min_resolution": job.min_resolution,
                         "duration": duration_input(job.audio_seconds),
                         "expand_ratio": job.expand_ratio}},
        "6": {"class_type": "SONICSampler",
              "inputs": {"model": ["2", 0], "data_dict": ["5", 0], "seed": job.seed,
                         "inference_steps": job.inference_steps,
                         "dynamic_scale": job.dynamic_scale, "fps": SONIC_FPS}},
        "7": {"class_type": "CreateVideo",
              "inputs": {"images": ["6", 0], "fps": ["6", 1], "audio": ["4", 0]}},
        OUTPUT_NODE: {"class_type": "SaveVideo",
              "inputs": {"video": ["7", 0], "filename_prefix": "video/sonicgw",
                         "format": "mp4", "codec": "h264"}}
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn models() -> Models {
        Models {
            checkpoint: "svd_xt_1_1.safetensors".into(),
            unet: "unet.pth".into(),
            dtype: "fp16".into(),
        }
    }

    fn job(seconds: f64) -> JobInputs<'static> {
        JobInputs {
            image: "sonicgw-1-face.png",
            audio: "sonicgw-1-speech.wav",
            audio_seconds: seconds,
            min_resolution: 640,
            expand_ratio: 0.4,
            seed: 1234,
            inference_steps: 30,
            dynamic_scale: 1.5,
        }
    }

    #[test]
    fn workflow_sends_the_real_audio_length_and_25_fps_with_interframe() {
        let prompt = build(&models(), &job(12.3456));
        let pre = &prompt["5"]["inputs"];
        assert_eq!(pre["duration"], 12.346);
        assert_eq!(pre["min_resolution"], 640);
        assert_eq!(pre["expand_ratio"], 0.4);
        let sampler = &prompt["6"]["inputs"];
        assert_eq!(sampler["fps"], 25.0);
        assert_eq!(sampler["seed"], 1234);
        assert_eq!(sampler["inference_steps"], 30);
        assert_eq!(sampler["dynamic_scale"], 1.5);
        assert_eq!(prompt["2"]["inputs"]["use_interframe"], true);
        assert_eq!(prompt["2"]["inputs"]["sonic_unet"], "unet.pth");
        assert_eq!(prompt["1"]["inputs"]["ckpt_name"], "svd_xt_1_1.safetensors");
        assert_eq!(prompt["3"]["inputs"]["image"], "sonicgw-1-face.png");
        assert_eq!(prompt["4"]["inputs"]["audio"], "sonicgw-1-speech.wav");
        assert_eq!(prompt[OUTPUT_NODE]["class_type"], "SaveVideo");
    }

    #[test]
    fn workflow_links_follow_the_reference_graph() {
        let prompt = build(&models(), &job(5.0));
        assert_eq!(prompt["2"]["inputs"]["model"], json!(["1", 0]));
        assert_eq!(prompt["5"]["inputs"]["clip_vision"], json!(["1", 1]));
        assert_eq!(prompt["5"]["inputs"]["vae"], json!(["1", 2]));
        assert_eq!(prompt["5"]["inputs"]["weight_dtype"], json!(["2", 1]));
        assert_eq!(prompt["6"]["inputs"]["data_dict"], json!(["5", 0]));
        assert_eq!(prompt["7"]["inputs"]["fps"], json!(["6", 1]));
        assert_eq!(prompt[OUTPUT_NODE]["inputs"]["video"], json!(["7", 0]));
    }

    #[test]
    fn duration_is_never_below_the_nodes_minimum_nor_the_default() {
        assert_eq!(duration_input(0.4), 1.0);
        assert_eq!(duration_input(10.0), 10.0);
        assert_eq!(duration_input(42.0001), 42.001);
    }
}
