//! A protocol-faithful fake ComfyUI with the ComfyUI_Sonic nodes: the real routes (also under
//! `/api`) and JSON shapes, validation of prompts like the server's (`missing_node_type`,
//! `required_input_missing`, `invalid_input_type`, ranges, combo lists, loader files), one prompt
//! at a time from a FIFO, history entries with status messages, and a real MP4 from the uploaded
//! photo with Sonic's frame arithmetic (2K-1 frames at 25 fps, a little short of the audio).

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Multipart, Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::Notify;

/// How the fake behaves for the next prompts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    Works,
    /// The unet file is not installed: `/prompt` answers 400 with node_errors.
    NodeError,
    /// The sampler raises CUDA's out-of-memory error.
    OutOfMemory,
    /// SONIC_PreData raises an unhelpful Python error (as when no face is found).
    Exception,
    /// Each prompt runs this long before it finishes (interruptible).
    Slow(Duration),
}

struct Shared {
    dir: tempfile::TempDir,
    mode: Mutex<Mode>,
    received: Mutex<Vec<Value>>,
    queue: Mutex<VecDeque<(u64, String, Value)>>,
    running: Mutex<Option<(u64, String, Value)>>,
    history: Mutex<BTreeMap<String, Value>>,
    interrupted: Mutex<Option<String>>,
    interrupts: Mutex<Vec<Value>>,
    deletes: Mutex<Vec<Value>>,
    wake: Notify,
    counter: AtomicU64,
    /// Most prompts it ever held at once (queued plus running).
    peak: AtomicUsize,
    /// Node classes that are "not installed".
    missing: Mutex<Vec<String>>,
    /// How long an interrupt takes to stop the running prompt (ComfyUI checks between nodes).
    interrupt_delay: Mutex<Duration>,
}

/// A running fake; stops with the test's runtime.
pub struct FakeComfy {
    pub url: String,
    shared: Arc<Shared>,
}

const CKPTS: &[&str] = &["svd_xt.safetensors", "svd_xt_1_1.safetensors"];

impl FakeComfy {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("input")).unwrap();
        std::fs::create_dir_all(dir.path().join("output/video")).unwrap();
        let shared = Arc::new(Shared {
            dir,
            mode: Mutex::new(Mode::Works),
            received: Mutex::default(),
            queue: Mutex::default(),
            running: Mutex::default(),
            history: Mutex::default(),
            interrupted: Mutex::default(),
            interrupts: Mutex::default(),
            deletes: Mutex::default(),
            wake: Notify::new(),
            counter: AtomicU64::new(0),
            peak: AtomicUsize::new(0),
            missing: Mutex::default(),
            interrupt_delay: Mutex::new(Duration::ZERO),
        });
        let routes = Router::new()
            .route("/prompt", post(prompt))
            .route("/upload/image", post(upload))
            .route("/history/{id}", get(history))
            .route("/view", get(view))
            .route("/queue", get(queue).post(queue_change))
            .route("/interrupt", post(interrupt))
            .route("/object_info", get(object_info_all))
            .route("/object_info/{class}", get(object_info_one))
            .route("/system_stats", get(system_stats));
        let app = Router::new()
            .merge(routes.clone())
            .nest("/api", routes)
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        tokio::spawn(execute_forever(shared.clone()));
        Self { url, shared }
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.shared.mode.lock().unwrap() = mode;
    }

    /// Every prompt `/prompt` accepted or refused, in order.
    pub fn received(&self) -> Vec<Value> {
        self.shared.received.lock().unwrap().clone()
    }

    /// Bodies of `POST /interrupt` and `POST /queue {"delete"}`.
    pub fn cancellations(&self) -> (Vec<Value>, Vec<Value>) {
        (
            self.shared.interrupts.lock().unwrap().clone(),
            self.shared.deletes.lock().unwrap().clone(),
        )
    }

    pub fn running(&self) -> Option<String> {
        self.shared
            .running
            .lock()
            .unwrap()
            .as_ref()
            .map(|r| r.1.clone())
    }

    /// Most prompts it held at once (queued plus running).
    pub fn peak_in_flight(&self) -> usize {
        self.shared.peak.load(Ordering::SeqCst)
    }

    /// Makes a node class "not installed": `/object_info` omits it and prompts using it fail.
    pub fn remove_node(&self, class: &str) {
        self.shared.missing.lock().unwrap().push(class.to_owned());
    }

    /// Installs the removed nodes again.
    pub fn restore_nodes(&self) {
        self.shared.missing.lock().unwrap().clear();
    }

    /// Interrupts stop the running prompt only after this long (the node finishes first).
    pub fn set_interrupt_delay(&self, delay: Duration) {
        *self.shared.interrupt_delay.lock().unwrap() = delay;
    }

    pub fn history_of(&self, prompt_id: &str) -> Option<Value> {
        self.shared.history.lock().unwrap().get(prompt_id).cloned()
    }
}

// ---- input definitions (`/object_info`) and validation ----

fn input_types(class: &str) -> Option<Value> {
    let unets = json!(["none", "unet.pth"]);
    Some(match class {
        "ImageOnlyCheckpointLoader" => json!({"required": {"ckpt_name": [CKPTS]}}),
        "SONICTLoader" => json!({"required": {
            "model": ["MODEL"], "sonic_unet": [unets],
            "ip_audio_scale": ["FLOAT", {"default": 1.0, "min": 0.5, "max": 2.0, "step": 0.1}],
            "use_interframe": ["BOOLEAN", {"default": true}],
            "dtype": [["fp16", "fp32", "bf16"]]}}),
        "LoadImage" => json!({"required": {"image": [[], {"image_upload": true}]}}),
        "LoadAudio" => json!({"required": {"audio": [[], {"audio_upload": true}]}}),
        "SONIC_PreData" => json!({"required": {
            "clip_vision": ["CLIP_VISION"], "vae": ["VAE"], "audio": ["AUDIO"], "image": ["IMAGE"],
            "weight_dtype": ["DTYPE"],
            "min_resolution": ["INT", {"default": 512, "min": 128, "max": 2048, "step": 64}],
            "duration": ["FLOAT", {"default": 10.0, "min": 1.0, "max": 100000000000.0, "step": 0.1}],
            "expand_ratio": ["FLOAT", {"default": 0.5, "min": 0.1, "max": 1.0, "step": 0.1}]}}),
        "SONICSampler" => json!({"required": {
            "model": ["MODEL_SONIC"], "data_dict": ["SONIC_PREDATA"],
            "seed": ["INT", {"default": 0, "min": 0, "max": 2147483647}],
            "inference_steps": ["INT", {"default": 25, "min": 1, "max": 1024, "step": 1}],
            "dynamic_scale": ["FLOAT", {"default": 1.0, "min": 0.5, "max": 2.0, "step": 0.1}],
            "fps": ["FLOAT", {"default": 25.0, "min": 5.0, "max": 120.0, "step": 0.5}]}}),
        "CreateVideo" => {
            json!({"required": {"images": ["IMAGE"], "fps": ["FLOAT", {"default": 30.0, "min": 1.0, "max": 120.0}]},
                                "optional": {"audio": ["AUDIO"]}})
        }
        "SaveVideo" => {
            json!({"required": {"video": ["VIDEO"], "filename_prefix": ["STRING", {"default": "video/ComfyUI"}],
                              "format": [["auto", "mp4"]], "codec": [["auto", "h264"]]}})
        }
        _ => return None,
    })
}

fn node_info(class: &str) -> Option<Value> {
    let (output, names): (Value, Value) = match class {
        "SONICTLoader" => (
            json!(["MODEL_SONIC", "DTYPE"]),
            json!(["model", "weight_dtype"]),
        ),
        "SONIC_PreData" => (json!(["SONIC_PREDATA"]), json!(["data_dict"])),
        "SONICSampler" => (json!(["IMAGE", "FLOAT"]), json!(["image", "fps"])),
        _ => (json!([]), json!([])),
    };
    Some(json!({
        "input": input_types(class)?, "output": output, "output_name": names, "name": class,
        "display_name": class, "category": "Sonic", "output_node": class == "SaveVideo",
    }))
}

fn error(kind: &str, message: &str, details: String, input: &str) -> Value {
    json!({"type": kind, "message": message, "details": details,
           "extra_info": {"input_name": input}})
}

/// The errors of one node's inputs, as ComfyUI's `validate_inputs` reports them.
fn validate_node(shared: &Shared, mode: Mode, node: &Value, prompt: &Value) -> Vec<Value> {
    let class = node["class_type"].as_str().unwrap_or_default();
    let types = input_types(class).expect("checked before");
    let inputs = &node["inputs"];
    let mut errors = Vec::new();
    for (name, spec) in types["required"].as_object().unwrap() {
        let Some(value) = inputs.get(name) else {
            errors.push(error(
                "required_input_missing",
                "Required input is missing",
                name.clone(),
                name,
            ));
            continue;
        };
        if let Some(link) = value
            .as_array()
            .filter(|l| l.len() == 2 && l[0].is_string())
        {
            if prompt.get(link[0].as_str().unwrap()).is_none() {
                errors.push(error(
                    "bad_linked_input",
                    "Bad linked input, must be a length-2 list of [string, int]",
                    name.clone(),
                    name,
                ));
            }
            continue;
        }
        let kind = &spec[0];
        let opts = &spec[1];
        match kind.as_str() {
            Some("INT") | Some("FLOAT") => {
                // ComfyUI converts with int()/float(): numbers and numeric strings pass.
                let number = value
                    .as_f64()
                    .or_else(|| value.as_str().and_then(|s| s.trim().parse().ok()));
                let Some(number) = number else {
                    errors.push(error(
                        "invalid_input_type",
                        &format!(
                            "Failed to convert an input value to a {} value",
                            kind.as_str().unwrap()
                        ),
                        format!("{name}, {value}"),
                        name,
                    ));
                    continue;
                };
                if let Some(min) = opts["min"].as_f64().filter(|m| number < *m) {
                    errors.push(error(
                        "value_smaller_than_min",
                        &format!("Value {number} smaller than min of {min}"),
                        name.clone(),
                        name,
                    ));
                }
                if let Some(max) = opts["max"].as_f64().filter(|m| number > *m) {
                    errors.push(error(
                        "value_bigger_than_max",
                        &format!("Value {number} bigger than max of {max}"),
                        name.clone(),
                        name,
                    ));
                }
            }
            Some("BOOLEAN") if !value.is_boolean() => {
                errors.push(error(
                    "invalid_input_type",
                    "Failed to convert an input value to a BOOLEAN value",
                    name.clone(),
                    name,
                ));
            }
            Some("STRING") if !value.is_string() => {
                errors.push(error(
                    "invalid_input_type",
                    "Failed to convert an input value to a STRING value",
                    name.clone(),
                    name,
                ));
            }
            _ if kind.is_array() && (class == "LoadImage" || class == "LoadAudio") => {
                // VALIDATE_INPUTS: the annotated file must exist in the input folder.
                let file = value.as_str().unwrap_or_default();
                let exists =
                    !file.contains("..") && shared.dir.path().join("input").join(file).is_file();
                if !exists {
                    let what = if class == "LoadImage" {
                        "image"
                    } else {
                        "audio"
                    };
                    errors.push(error(
                        "custom_validation_failed",
                        "Custom validation failed for node",
                        format!("{name} - Invalid {what} file: {file}"),
                        name,
                    ));
                }
            }
            _ if kind.is_array() => {
                let mut allowed: Vec<Value> = kind.as_array().unwrap().clone();
                if name == "sonic_unet" && mode == Mode::NodeError {
                    allowed = vec![json!("none")];
                }
                if !allowed.contains(value) {
                    errors.push(error(
                        "value_not_in_list",
                        "Value not in list",
                        format!(
                            "{name}: '{}' not in {}",
                            value.as_str().unwrap_or_default(),
                            Value::Array(allowed)
                        ),
                        name,
                    ));
                }
            }
            _ => {}
        }
    }
    errors
}

async fn prompt(State(shared): State<Arc<Shared>>, Json(body): Json<Value>) -> Response {
    let graph = body["prompt"].clone();
    shared.received.lock().unwrap().push(graph.clone());
    let mode = *shared.mode.lock().unwrap();
    let refuse = |error: Value, node_errors: Value| {
        (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": error, "node_errors": node_errors})),
        )
            .into_response()
    };
    let Some(nodes) = graph.as_object() else {
        return refuse(
            json!({"type": "invalid_prompt", "message": "Cannot execute because the prompt is not an object.", "details": "", "extra_info": {}}),
            json!({}),
        );
    };
    for (id, node) in nodes {
        let class = node["class_type"].as_str().unwrap_or_default();
        if input_types(class).is_none() || shared.missing.lock().unwrap().iter().any(|m| m == class)
        {
            return refuse(
                json!({"type": "invalid_prompt",
                "message": format!("Cannot execute because node {class} does not exist."),
                "details": format!("Node ID '#{id}'"), "extra_info": {}}),
                json!({}),
            );
        }
    }
    if !nodes.values().any(|n| n["class_type"] == "SaveVideo") {
        return refuse(
            json!({"type": "prompt_no_outputs", "message": "Prompt has no outputs", "details": "", "extra_info": {}}),
            json!({}),
        );
    }
    let mut node_errors = serde_json::Map::new();
    for (id, node) in nodes {
        let errors = validate_node(&shared, mode, node, &graph);
        if !errors.is_empty() {
            node_errors.insert(
                id.clone(),
                json!({"errors": errors, "dependent_outputs": ["8"],
                "class_type": node["class_type"]}),
            );
        }
    }
    if !node_errors.is_empty() {
        return refuse(
            json!({"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation",
            "details": "", "extra_info": {}}),
            Value::Object(node_errors),
        );
    }
    let prompt_id = body["prompt_id"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let number = shared.counter.fetch_add(1, Ordering::SeqCst);
    {
        let mut queue = shared.queue.lock().unwrap();
        queue.push_back((number, prompt_id.clone(), graph));
        let held = queue.len() + usize::from(shared.running.lock().unwrap().is_some());
        shared.peak.fetch_max(held, Ordering::SeqCst);
    }
    shared.wake.notify_one();
    Json(json!({"prompt_id": prompt_id, "number": number, "node_errors": {}})).into_response()
}

async fn upload(State(shared): State<Arc<Shared>>, mut form: Multipart) -> Response {
    let (mut file, mut subfolder, mut kind) = (None, String::new(), "input".to_owned());
    while let Ok(Some(field)) = form.next_field().await {
        match field.name().unwrap_or_default() {
            "image" => {
                let name = field.file_name().unwrap_or_default().to_owned();
                file = Some((name, field.bytes().await.unwrap()));
            }
            "subfolder" => subfolder = field.text().await.unwrap(),
            "type" => kind = field.text().await.unwrap(),
            _ => {}
        }
    }
    let Some((name, bytes)) =
        file.filter(|(n, _)| !n.is_empty() && !n.contains(['/', '\\']) && !n.contains(".."))
    else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    if subfolder.contains("..") || kind != "input" {
        return StatusCode::BAD_REQUEST.into_response();
    }
    let folder = shared.dir.path().join("input").join(&subfolder);
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(folder.join(&name), &bytes).unwrap();
    Json(json!({"name": name, "subfolder": subfolder, "type": kind})).into_response()
}

async fn history(State(shared): State<Arc<Shared>>, UrlPath(id): UrlPath<String>) -> Json<Value> {
    let entry = shared.history.lock().unwrap().get(&id).cloned();
    Json(match entry {
        Some(entry) => json!({ id: entry }),
        None => json!({}),
    })
}

async fn view(
    State(shared): State<Arc<Shared>>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    let get = |k: &str| q.get(k).cloned().unwrap_or_default();
    let (name, sub, kind) = (get("filename"), get("subfolder"), get("type"));
    if name.is_empty()
        || [&name, &sub].iter().any(|s| s.contains(".."))
        || !matches!(kind.as_str(), "output" | "input" | "temp")
    {
        return StatusCode::BAD_REQUEST.into_response();
    }
    match std::fs::read(shared.dir.path().join(kind).join(sub).join(name)) {
        Ok(bytes) => ([("content-type", "video/mp4")], bytes).into_response(),
        Err(_) => StatusCode::NOT_FOUND.into_response(),
    }
}

fn queue_item(item: &(u64, String, Value)) -> Value {
    json!([item.0, item.1, item.2, {"client_id": "?"}, ["8"]])
}

async fn queue(State(shared): State<Arc<Shared>>) -> Json<Value> {
    let running: Vec<Value> = shared
        .running
        .lock()
        .unwrap()
        .iter()
        .map(queue_item)
        .collect();
    let pending: Vec<Value> = shared
        .queue
        .lock()
        .unwrap()
        .iter()
        .map(queue_item)
        .collect();
    Json(json!({"queue_running": running, "queue_pending": pending}))
}

async fn queue_change(State(shared): State<Arc<Shared>>, Json(body): Json<Value>) -> StatusCode {
    shared.deletes.lock().unwrap().push(body.clone());
    let mut queue = shared.queue.lock().unwrap();
    if body["clear"] == true {
        queue.clear();
    }
    for id in body["delete"].as_array().into_iter().flatten() {
        queue.retain(|item| Some(item.1.as_str()) != id.as_str());
    }
    StatusCode::OK
}

async fn interrupt(State(shared): State<Arc<Shared>>, body: Option<Json<Value>>) -> StatusCode {
    let body = body.map(|b| b.0).unwrap_or(json!({}));
    shared.interrupts.lock().unwrap().push(body.clone());
    let running = shared.running.lock().unwrap().as_ref().map(|r| r.1.clone());
    if let Some(running) = running {
        if body["prompt_id"].as_str().is_none_or(|id| id == running) {
            *shared.interrupted.lock().unwrap() = Some(running);
        }
    }
    StatusCode::OK
}

async fn object_info_all(State(shared): State<Arc<Shared>>) -> Json<Value> {
    let missing = shared.missing.lock().unwrap().clone();
    let all: serde_json::Map<String, Value> = [
        "ImageOnlyCheckpointLoader",
        "SONICTLoader",
        "LoadImage",
        "LoadAudio",
        "SONIC_PreData",
        "SONICSampler",
        "CreateVideo",
        "SaveVideo",
    ]
    .iter()
    .filter(|c| !missing.iter().any(|m| m == *c))
    .map(|c| (c.to_string(), node_info(c).unwrap()))
    .collect();
    Json(Value::Object(all))
}

async fn object_info_one(
    State(shared): State<Arc<Shared>>,
    UrlPath(class): UrlPath<String>,
) -> Json<Value> {
    if shared.missing.lock().unwrap().contains(&class) {
        return Json(json!({}));
    }
    Json(node_info(&class).map_or(json!({}), |info| json!({ class: info })))
}

async fn system_stats() -> Json<Value> {
    Json(json!({
        "system": {"os": "posix", "ram_total": 67_000_000_000u64, "ram_free": 60_000_000_000u64,
                   "comfyui_version": "0.3.65", "python_version": "3.12.3", "pytorch_version": "2.8.0+cu128",
                   "embedded_python": false, "argv": ["main.py", "--listen"]},
        "devices": [{"name": "cuda:0 NVIDIA GeForce RTX 4090 : cudaMallocAsync", "type": "cuda", "index": 0,
                     "vram_total": 25_393_692_672u64, "vram_free": 24_000_000_000u64,
                     "torch_vram_total": 0, "torch_vram_free": 0}]
    }))
}

// ---- execution: one prompt at a time ----

async fn execute_forever(shared: Arc<Shared>) {
    loop {
        let next = shared.queue.lock().unwrap().pop_front();
        let Some(item) = next else {
            shared.wake.notified().await;
            continue;
        };
        *shared.running.lock().unwrap() = Some(item.clone());
        *shared.interrupted.lock().unwrap() = None;
        let (_, id, graph) = item;
        let started = json!({"prompt_id": id, "timestamp": 0});
        let mut messages = vec![
            json!(["execution_start", started]),
            json!(["execution_cached", {"nodes": [], "prompt_id": id}]),
        ];
        let mode = *shared.mode.lock().unwrap();
        let result = run(&shared, &id, &graph, mode).await;
        let (status, outputs) = match result {
            Ok(file) => {
                messages.push(json!(["execution_success", {"prompt_id": id}]));
                (
                    "success",
                    json!({"8": {"images": [{"filename": file, "subfolder": "video", "type": "output"}], "animated": [true]}}),
                )
            }
            Err(message) => {
                messages.push(message);
                ("error", json!({}))
            }
        };
        let entry = json!({"prompt": [0, id, graph, {}, ["8"]], "outputs": outputs,
            "status": {"status_str": status, "completed": status == "success", "messages": messages},
            "meta": {}});
        shared.history.lock().unwrap().insert(id.clone(), entry);
        *shared.running.lock().unwrap() = None;
    }
}

fn execution_error(id: &str, node: &str, class: &str, kind: &str, message: &str) -> Value {
    json!(["execution_error", {"prompt_id": id, "node_id": node, "node_type": class, "executed": ["1", "3", "4"],
        "exception_message": message, "exception_type": kind,
        "traceback": ["Traceback (most recent call last):\n", "  File \"execution.py\", line 496, in execute\n"],
        "current_inputs": {}, "current_outputs": {}}])
}

/// Runs the graph: the Sonic frame arithmetic and a real MP4, or the configured failure.
async fn run(shared: &Shared, id: &str, graph: &Value, mode: Mode) -> Result<String, Value> {
    let budget = match mode {
        Mode::Slow(d) => d,
        _ => Duration::from_millis(50),
    };
    let until = tokio::time::Instant::now() + budget;
    while tokio::time::Instant::now() < until {
        if shared.interrupted.lock().unwrap().as_deref() == Some(id) {
            let delay = *shared.interrupt_delay.lock().unwrap();
            tokio::time::sleep(delay).await;
            return Err(
                json!(["execution_interrupted", {"prompt_id": id, "node_id": "6", "node_type": "SONICSampler", "executed": ["1"]}]),
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    match mode {
        Mode::OutOfMemory => {
            return Err(execution_error(id, "6", "SONICSampler", "torch.OutOfMemoryError",
                "CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity of 23.64 GiB of which 1.02 GiB is free."));
        }
        Mode::Exception => {
            return Err(execution_error(
                id,
                "5",
                "SONIC_PreData",
                "IndexError",
                "list index out of range",
            ));
        }
        _ => {}
    }
    let input = shared.dir.path().join("input");
    let image = input.join(graph["3"]["inputs"]["image"].as_str().unwrap());
    let audio = input.join(graph["4"]["inputs"]["audio"].as_str().unwrap());
    let pre = &graph["5"]["inputs"];
    let duration = pre["duration"].as_f64().unwrap();
    let min_resolution = pre["min_resolution"].as_f64().unwrap();
    let reader = hound::WavReader::open(&audio)
        .map_err(|e| execution_error(id, "4", "LoadAudio", "RuntimeError", &e.to_string()))?;
    let spec = reader.spec();
    let audio_s = f64::from(reader.duration()) / f64::from(spec.sample_rate);
    let seconds = duration.min(audio_s);
    let audio_frames = (((seconds * 16000.0).floor() as u64) / 640).min(10_000);
    let frames = (2 * (audio_frames / 2)).saturating_sub(1).max(1);
    let (w, h) = image::image_dimensions(&image).unwrap();
    let scale = min_resolution / f64::from(w.min(h));
    let out_w = ((f64::from(w) * scale / 64.0).round() * 64.0) as u32;
    let out_h = ((f64::from(h) * scale / 64.0).round() * 64.0) as u32;
    let number = shared.counter.fetch_add(1, Ordering::SeqCst);
    let name = format!("sonicgw_{number:05}_.mp4");
    let out: PathBuf = shared.dir.path().join("output/video").join(&name);
    make_video(&image, &audio, frames, out_w, out_h, &out).await;
    Ok(name)
}

async fn make_video(image: &Path, audio: &Path, frames: u64, w: u32, h: u32, out: &Path) {
    let status = tokio::process::Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-y", "-loop", "1", "-i"])
        .arg(image)
        .arg("-i")
        .arg(audio)
        .args(["-map", "0:v", "-map", "1:a", "-r", "25", "-frames:v"])
        .arg(frames.to_string())
        .args(["-vf", &format!("scale={w}:{h},format=yuv420p")])
        .args([
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-c:a",
            "aac",
            "-shortest",
            "-f",
            "mp4",
        ])
        .arg(out)
        .status()
        .await
        .unwrap();
    assert!(status.success(), "the fake's ffmpeg failed");
}
