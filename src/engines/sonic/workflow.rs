//! The API-format workflow: the built-in ComfyUI_Sonic graph of the reference, or an operator's own
//! graph (`sonic_workflow`) whose inputs name the job's values with placeholders; either with the
//! job's parameters filled in.

use std::fmt;
use std::path::Path;

use serde_json::{json, Map, Value};

/// The built-in graph's output node (SaveVideo).
pub const OUTPUT_NODE: &str = "8";

/// Frames per second Sonic writes with `use_interframe` (2K-1 frames from K keyframes at 12.5/s).
pub const SONIC_FPS: f64 = 25.0;

/// Smallest `duration` SONIC_PreData accepts.
const MIN_DURATION_S: f64 = 1.0;

/// Classes whose node saves the video: a graph has exactly one.
const OUTPUT_CLASSES: &[&str] = &["SaveVideo", "VHS_VideoCombine"];

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

impl Models {
    /// The model as provenance names it: `Sonic (<unet>, SVD <checkpoint>, <dtype>)`.
    pub fn describe(&self) -> String {
        format!(
            "Sonic ({}, SVD {}, {})",
            self.unet, self.checkpoint, self.dtype
        )
    }
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

/// The graph the `sonic` engine sends for each job.
#[derive(Clone)]
pub struct Workflow {
    models: Models,
    template: Option<Template>,
}

/// An operator's graph, checked: placeholders known, inputs present, one output node.
#[derive(Clone)]
struct Template {
    graph: Map<String, Value>,
    output_node: String,
}

impl fmt::Debug for Workflow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = f.debug_struct("Workflow");
        out.field("models", &self.models);
        match &self.template {
            None => out.field("graph", &"builtin"),
            Some(t) => out
                .field("nodes", &t.graph.len())
                .field("output_node", &t.output_node),
        };
        out.finish()
    }
}

/// A value the job fills into a template: an input value that is exactly one of these strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placeholder {
    Image,
    Audio,
    Duration,
    MinResolution,
    ExpandRatio,
    Seed,
    InferenceSteps,
    DynamicScale,
    Fps,
    Checkpoint,
    Unet,
    Dtype,
}

const PLACEHOLDERS: &[(&str, Placeholder)] = &[
    ("{{image}}", Placeholder::Image),
    ("{{audio}}", Placeholder::Audio),
    ("{{duration}}", Placeholder::Duration),
    ("{{min_resolution}}", Placeholder::MinResolution),
    ("{{expand_ratio}}", Placeholder::ExpandRatio),
    ("{{seed}}", Placeholder::Seed),
    ("{{inference_steps}}", Placeholder::InferenceSteps),
    ("{{dynamic_scale}}", Placeholder::DynamicScale),
    ("{{fps}}", Placeholder::Fps),
    ("{{checkpoint}}", Placeholder::Checkpoint),
    ("{{unet}}", Placeholder::Unet),
    ("{{dtype}}", Placeholder::Dtype),
];

/// Placeholders every template must use: without them the job's own files and length are lost.
const REQUIRED: &[Placeholder] = &[
    Placeholder::Image,
    Placeholder::Audio,
    Placeholder::Duration,
];

impl Placeholder {
    fn parse(text: &str) -> Option<Self> {
        PLACEHOLDERS
            .iter()
            .find_map(|(name, p)| (*name == text).then_some(*p))
    }

    fn name(self) -> &'static str {
        PLACEHOLDERS
            .iter()
            .find_map(|(name, p)| (*p == self).then_some(*name))
            .expect("every placeholder is listed")
    }

    /// The typed value: numbers as JSON numbers, names as strings.
    fn value(self, models: &Models, job: &JobInputs<'_>) -> Value {
        match self {
            Placeholder::Image => json!(job.image),
            Placeholder::Audio => json!(job.audio),
            Placeholder::Duration => json!(duration_input(job.audio_seconds)),
            Placeholder::MinResolution => json!(job.min_resolution),
            Placeholder::ExpandRatio => json!(job.expand_ratio),
            Placeholder::Seed => json!(job.seed),
            Placeholder::InferenceSteps => json!(job.inference_steps),
            Placeholder::DynamicScale => json!(job.dynamic_scale),
            Placeholder::Fps => json!(SONIC_FPS),
            Placeholder::Checkpoint => json!(models.checkpoint),
            Placeholder::Unet => json!(models.unet),
            Placeholder::Dtype => json!(models.dtype),
        }
    }
}

/// Why an operator's workflow cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TemplateError {
    #[error("not JSON: {0}")]
    NotJson(String),
    #[error("not an API-format prompt: the top level must be an object of node id -> {{class_type, inputs}}")]
    NotAnObject,
    #[error("this is a UI workflow (nodes and links): save it with \"Export (API)\" instead")]
    UiFormat,
    #[error("node {node:?} has no class_type")]
    NoClassType { node: String },
    #[error("node {node:?} has no inputs object")]
    NoInputs { node: String },
    #[error("node {node:?} input {input:?}: unknown placeholder {text:?} (known: {known}; a placeholder is the whole value)")]
    UnknownPlaceholder {
        node: String,
        input: String,
        text: String,
        known: String,
    },
    #[error(
        "node {node:?} input {input:?} links to node {target:?}, which is not in the workflow"
    )]
    BrokenLink {
        node: String,
        input: String,
        target: String,
    },
    #[error("no input is {0}: the job's value would not reach the graph")]
    MissingPlaceholder(&'static str),
    #[error("no output node: the video must be saved by one SaveVideo or VHS_VideoCombine node")]
    NoOutputNode,
    #[error("more than one output node ({0}): the gateway takes the video of exactly one SaveVideo or VHS_VideoCombine node")]
    SeveralOutputNodes(String),
}

impl Workflow {
    /// The models its graph loads.
    pub fn models(&self) -> &Models {
        &self.models
    }

    /// The reference graph (ComfyUI_Sonic with CreateVideo and SaveVideo).
    pub fn builtin(models: Models) -> Self {
        Self {
            models,
            template: None,
        }
    }

    /// Reads and checks an operator's API-format workflow; the error names the file and the problem.
    pub fn from_file(path: &Path, models: Models) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("sonic_workflow {}: cannot read it: {e}", path.display()))?;
        Self::from_template(&text, models)
            .map_err(|e| format!("sonic_workflow {}: {e}", path.display()))
    }

    /// Checks an API-format workflow with placeholders (see the README's `sonic_workflow`).
    pub fn from_template(text: &str, models: Models) -> Result<Self, TemplateError> {
        let parsed: Value =
            serde_json::from_str(text).map_err(|e| TemplateError::NotJson(e.to_string()))?;
        let Value::Object(graph) = parsed else {
            return Err(TemplateError::NotAnObject);
        };
        if graph.get("nodes").is_some_and(Value::is_array) && graph.contains_key("links") {
            return Err(TemplateError::UiFormat);
        }
        let mut used = Vec::new();
        let mut outputs = Vec::new();
        for (id, node) in &graph {
            let no_class = || TemplateError::NoClassType { node: id.clone() };
            let class = node
                .get("class_type")
                .ok_or_else(no_class)?
                .as_str()
                .ok_or_else(no_class)?;
            if OUTPUT_CLASSES.contains(&class) {
                outputs.push((id.clone(), class));
            }
            let inputs = node
                .get("inputs")
                .and_then(Value::as_object)
                .ok_or_else(|| TemplateError::NoInputs { node: id.clone() })?;
            for (input, value) in inputs {
                match value {
                    Value::String(text) => match Placeholder::parse(text) {
                        Some(p) => used.push(p),
                        None if text.contains("{{") => {
                            return Err(TemplateError::UnknownPlaceholder {
                                node: id.clone(),
                                input: input.clone(),
                                text: text.clone(),
                                known: PLACEHOLDERS
                                    .iter()
                                    .map(|(name, _)| *name)
                                    .collect::<Vec<_>>()
                                    .join(" "),
                            })
                        }
                        None => {}
                    },
                    Value::Array(link) if link.len() == 2 && link[1].is_u64() => {
                        if let Some(target) = link[0].as_str().filter(|t| !graph.contains_key(*t)) {
                            return Err(TemplateError::BrokenLink {
                                node: id.clone(),
                                input: input.clone(),
                                target: target.to_owned(),
                            });
                        }
                    }
                    _ => {}
                }
            }
        }
        if let Some(missing) = REQUIRED.iter().find(|p| !used.contains(p)) {
            return Err(TemplateError::MissingPlaceholder(missing.name()));
        }
        let output_node = match outputs.as_slice() {
            [] => return Err(TemplateError::NoOutputNode),
            [(id, _)] => id.clone(),
            several => {
                let named: Vec<String> = several
                    .iter()
                    .map(|(id, class)| format!("{id:?} {class}"))
                    .collect();
                return Err(TemplateError::SeveralOutputNodes(named.join(", ")));
            }
        };
        Ok(Self {
            models,
            template: Some(Template { graph, output_node }),
        })
    }

    /// The API-format prompt for one job (`POST /prompt`'s `prompt`).
    pub fn build(&self, job: &JobInputs<'_>) -> Value {
        let Some(template) = &self.template else {
            return builtin(&self.models, job);
        };
        let mut graph = template.graph.clone();
        for node in graph.values_mut() {
            let Some(inputs) = node.get_mut("inputs").and_then(Value::as_object_mut) else {
                continue;
            };
            for value in inputs.values_mut() {
                if let Some(p) = value.as_str().and_then(Placeholder::parse) {
                    *value = p.value(&self.models, job);
                }
            }
        }
        Value::Object(graph)
    }

    /// The node whose output names the video file.
    pub fn output_node(&self) -> &str {
        self.template
            .as_ref()
            .map_or(OUTPUT_NODE, |t| t.output_node.as_str())
    }
}

/// The reference graph with the job's values.
fn builtin(models: &Models, job: &JobInputs<'_>) -> Value {
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
        let prompt = Workflow::builtin(models()).build(&job(12.3456));
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
        let prompt = Workflow::builtin(models()).build(&job(5.0));
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

    /// An operator's graph: VideoHelperSuite output, ids of its own, every placeholder.
    fn template() -> Value {
        json!({
            "10": {"class_type": "ImageOnlyCheckpointLoader", "inputs": {"ckpt_name": "{{checkpoint}}"}},
            "11": {"class_type": "SONICTLoader",
                   "inputs": {"model": ["10", 0], "sonic_unet": "{{unet}}", "ip_audio_scale": 1.2,
                              "use_interframe": true, "dtype": "{{dtype}}"}},
            "12": {"class_type": "LoadImage", "inputs": {"image": "{{image}}"}},
            "13": {"class_type": "LoadAudio", "inputs": {"audio": "{{audio}}"}},
            "14": {"class_type": "SONIC_PreData",
                   "inputs": {"clip_vision": ["10", 1], "vae": ["10", 2], "audio": ["13", 0],
                              "image": ["12", 0], "weight_dtype": ["11", 1],
                              "min_resolution": "{{min_resolution}}", "duration": "{{duration}}",
                              "expand_ratio": "{{expand_ratio}}"}},
            "15": {"class_type": "SONICSampler",
                   "inputs": {"model": ["11", 0], "data_dict": ["14", 0], "seed": "{{seed}}",
                              "inference_steps": "{{inference_steps}}",
                              "dynamic_scale": "{{dynamic_scale}}", "fps": "{{fps}}"}},
            "16": {"class_type": "VHS_VideoCombine",
                   "inputs": {"images": ["15", 0], "audio": ["13", 0], "frame_rate": ["15", 1],
                              "loop_count": 0, "filename_prefix": "studio", "format": "video/h264-mp4",
                              "pingpong": false, "save_output": true}}
        })
    }

    fn parse(graph: &Value) -> Result<Workflow, TemplateError> {
        Workflow::from_template(&graph.to_string(), models())
    }

    #[test]
    fn template_placeholders_become_the_jobs_typed_values() {
        let workflow = parse(&template()).unwrap();
        assert_eq!(workflow.output_node(), "16");
        let prompt = workflow.build(&job(12.3456));
        let pre = &prompt["14"]["inputs"];
        assert_eq!(pre["duration"], json!(12.346));
        assert_eq!(pre["min_resolution"], json!(640));
        assert_eq!(pre["expand_ratio"], json!(0.4));
        assert_eq!(pre["image"], json!(["12", 0]), "links are kept");
        let sampler = &prompt["15"]["inputs"];
        assert_eq!(sampler["seed"], json!(1234));
        assert_eq!(sampler["inference_steps"], json!(30));
        assert_eq!(sampler["dynamic_scale"], json!(1.5));
        assert_eq!(sampler["fps"], json!(25.0));
        assert_eq!(prompt["12"]["inputs"]["image"], "sonicgw-1-face.png");
        assert_eq!(prompt["13"]["inputs"]["audio"], "sonicgw-1-speech.wav");
        assert_eq!(
            prompt["10"]["inputs"]["ckpt_name"],
            "svd_xt_1_1.safetensors"
        );
        assert_eq!(prompt["11"]["inputs"]["sonic_unet"], "unet.pth");
        assert_eq!(prompt["11"]["inputs"]["dtype"], "fp16");
        // The operator's own values stay as written.
        assert_eq!(prompt["11"]["inputs"]["ip_audio_scale"], json!(1.2));
        assert_eq!(prompt["16"]["inputs"]["filename_prefix"], "studio");
        assert!(!prompt.to_string().contains("{{"), "{prompt}");
        // Building twice starts from the template again.
        let other = workflow.build(&job(3.0));
        assert_eq!(other["14"]["inputs"]["duration"], json!(3.0));
    }

    #[test]
    fn the_builtin_graph_saves_with_node_8() {
        let workflow = Workflow::builtin(models());
        assert_eq!(workflow.output_node(), OUTPUT_NODE);
        let prompt = workflow.build(&job(4.0));
        assert_eq!(prompt[workflow.output_node()]["class_type"], "SaveVideo");
    }

    #[test]
    fn templates_are_refused_with_the_problem_named() {
        let refused = |edit: &dyn Fn(&mut Value)| {
            let mut graph = template();
            edit(&mut graph);
            parse(&graph).unwrap_err()
        };
        assert!(matches!(
            Workflow::from_template("{\"1\": ", models()).unwrap_err(),
            TemplateError::NotJson(_)
        ));
        assert_eq!(
            parse(&json!([1, 2])).unwrap_err(),
            TemplateError::NotAnObject
        );
        assert_eq!(
            parse(&json!({"last_node_id": 8, "nodes": [], "links": []})).unwrap_err(),
            TemplateError::UiFormat
        );
        assert_eq!(
            refused(&|g| {
                g["12"].as_object_mut().unwrap().remove("class_type");
            }),
            TemplateError::NoClassType { node: "12".into() }
        );
        assert_eq!(
            refused(&|g| g["12"] = json!("LoadImage")),
            TemplateError::NoClassType { node: "12".into() }
        );
        assert_eq!(
            refused(&|g| {
                g["12"].as_object_mut().unwrap().remove("inputs");
            }),
            TemplateError::NoInputs { node: "12".into() }
        );
        let unknown = refused(&|g| g["15"]["inputs"]["seed"] = json!("{{random_seed}}"));
        assert!(
            matches!(&unknown, TemplateError::UnknownPlaceholder { node, input, text, .. }
                if node == "15" && input == "seed" && text == "{{random_seed}}"),
            "{unknown:?}"
        );
        assert!(unknown.to_string().contains("{{seed}}"), "{unknown}");
        assert!(matches!(
            refused(&|g| g["16"]["inputs"]["filename_prefix"] = json!("sonic_{{seed}}")),
            TemplateError::UnknownPlaceholder { .. }
        ));
        for (node, input, name) in [
            ("12", "image", "{{image}}"),
            ("13", "audio", "{{audio}}"),
            ("14", "duration", "{{duration}}"),
        ] {
            assert_eq!(
                refused(&|g| g[node]["inputs"][input] = json!("fixed")),
                TemplateError::MissingPlaceholder(name)
            );
        }
        assert_eq!(
            refused(&|g| g["16"]["class_type"] = json!("PreviewImage")),
            TemplateError::NoOutputNode
        );
        let several = refused(&|g| {
            g["17"] = json!({"class_type": "SaveVideo", "inputs": {"video": ["15", 0]}});
        });
        assert!(
            matches!(&several, TemplateError::SeveralOutputNodes(names)
                if names.contains("\"16\" VHS_VideoCombine") && names.contains("\"17\" SaveVideo")),
            "{several:?}"
        );
        assert_eq!(
            refused(&|g| g["15"]["inputs"]["data_dict"] = json!(["99", 0])),
            TemplateError::BrokenLink {
                node: "15".into(),
                input: "data_dict".into(),
                target: "99".into()
            }
        );
    }

    #[test]
    fn a_template_file_error_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("studio.json");
        let missing = Workflow::from_file(&path, models()).unwrap_err();
        assert!(
            missing.starts_with("sonic_workflow ") && missing.contains("studio.json"),
            "{missing}"
        );
        std::fs::write(&path, "{\"1\": {\"inputs\": {}}}").unwrap();
        let err = Workflow::from_file(&path, models()).unwrap_err();
        assert!(
            err.contains("studio.json") && err.contains("class_type"),
            "{err}"
        );
        std::fs::write(&path, template().to_string()).unwrap();
        assert_eq!(
            Workflow::from_file(&path, models()).unwrap().output_node(),
            "16"
        );
    }
}
