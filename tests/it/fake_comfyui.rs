//! A protocol-faithful fake ComfyUI with the ComfyUI_Sonic nodes: the real routes (also under
//! `/api`) and JSON shapes, validation of prompts like the server's (`invalid_prompt` for an unknown node,
//! `required_input_missing`, `invalid_input_type`, ranges, combo lists, loader files), one prompt
//! at a time from a FIFO, history entries with status messages, the websocket (`/ws?clientId=`)
//! with execution events for the client that submitted the prompt, and a real MP4 from the
//! uploaded photo with Sonic's frame arithmetic (2K-1 frames at 25 fps, a little short of the
//! audio), saved by SaveVideo or VideoHelperSuite's VHS_VideoCombine.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Multipart, Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch, Notify, Semaphore};

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

/// A prompt in the queue.
#[derive(Clone)]
struct Queued {
    number: u64,
    id: String,
    graph: Value,
    client_id: Option<String>,
}

struct Shared {
    dir: tempfile::TempDir,
    mode: Mutex<Mode>,
    received: Mutex<Vec<Value>>,
    queue: Mutex<VecDeque<Queued>>,
    running: Mutex<Option<Queued>>,
    history: Mutex<BTreeMap<String, Value>>,
    interrupted: Mutex<Option<String>>,
    interrupts: Mutex<Vec<Value>>,
    deletes: Mutex<Vec<Value>>,
    wake: Notify,
    counter: AtomicU64,
    /// Most prompts it ever held at once (queued plus running).
    peak: AtomicUsize,
    /// Bumped by `restart`: what ran before is forgotten.
    generation: AtomicU64,
    /// When each prompt it ran started and ended, by prompt id.
    timeline: Mutex<Vec<(String, std::time::Instant, std::time::Instant)>>,
    /// Node classes that are "not installed".
    missing: Mutex<Vec<String>>,
    /// How long an interrupt takes to stop the running prompt (ComfyUI checks between nodes).
    interrupt_delay: Mutex<Duration>,
    /// Open sockets by client id (a newer connection with the same id replaces the older, as in
    /// ComfyUI), each with the number of its connection.
    sockets: Mutex<BTreeMap<String, (u64, mpsc::UnboundedSender<String>)>>,
    websocket_enabled: AtomicBool,
    websocket_attempts: AtomicU64,
    /// Bumped by `drop_websockets`: every open socket closes.
    drop_sockets: watch::Sender<u64>,
    /// While set, execution waits for a permit before it starts and before each node.
    stepping: AtomicBool,
    steps: Semaphore,
}

/// A running fake; stops with the test's runtime.
pub struct FakeComfy {
    pub url: String,
    shared: Arc<Shared>,
}

const CKPTS: &[&str] = &["svd_xt.safetensors", "svd_xt_1_1.safetensors"];
const OUTPUT_CLASSES: &[&str] = &["SaveVideo", "VHS_VideoCombine"];

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
            generation: AtomicU64::new(0),
            timeline: Mutex::default(),
            missing: Mutex::default(),
            interrupt_delay: Mutex::new(Duration::ZERO),
            sockets: Mutex::default(),
            websocket_enabled: AtomicBool::new(true),
            websocket_attempts: AtomicU64::new(0),
            drop_sockets: watch::Sender::new(0),
            stepping: AtomicBool::new(false),
            steps: Semaphore::new(0),
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
            .route("/system_stats", get(system_stats))
            .route("/ws", get(websocket));
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
            .map(|r| r.id.clone())
    }

    /// Most prompts it held at once (queued plus running).
    pub fn peak_in_flight(&self) -> usize {
        self.shared.peak.load(Ordering::SeqCst)
    }

    /// Makes a node class "not installed": `/object_info` omits it and prompts using it fail.
    pub fn remove_node(&self, class: &str) {
        self.shared.missing.lock().unwrap().push(class.to_owned());
    }

    /// As if the process restarted: the queue, the running prompt and the history are forgotten
    /// and open websockets close.
    pub fn restart(&self) {
        self.shared.generation.fetch_add(1, Ordering::SeqCst);
        self.shared.queue.lock().unwrap().clear();
        let running = self.shared.running.lock().unwrap().take();
        *self.shared.interrupted.lock().unwrap() = running.map(|r| r.id);
        self.shared.history.lock().unwrap().clear();
        self.drop_websockets();
    }

    /// When each prompt it ran started and ended (benchmarks: utilisation, dispatch gaps).
    pub fn timeline(&self) -> Vec<(String, std::time::Instant, std::time::Instant)> {
        self.shared.timeline.lock().unwrap().clone()
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

    /// `false`: websocket upgrades are answered 404, like a proxy that does not pass them.
    pub fn set_websocket(&self, enabled: bool) {
        self.shared
            .websocket_enabled
            .store(enabled, Ordering::SeqCst);
    }

    /// Upgrade requests to `/ws`, accepted or refused.
    pub fn websocket_attempts(&self) -> u64 {
        self.shared.websocket_attempts.load(Ordering::SeqCst)
    }

    /// Closes every open websocket now, without a close frame (a dropped connection); returns
    /// how many were open.
    pub fn drop_websockets(&self) -> usize {
        let open = std::mem::take(&mut *self.shared.sockets.lock().unwrap()).len();
        self.shared.drop_sockets.send_modify(|n| *n += 1);
        open
    }

    /// From now on, execution waits for [`FakeComfy::step`] before starting a prompt and before
    /// each node (a prompt of the built-in graph takes 9 steps: start, then nodes 1 to 8).
    pub fn set_stepping(&self) {
        self.shared.stepping.store(true, Ordering::SeqCst);
    }

    /// Lets execution take `n` more steps.
    pub fn step(&self, n: usize) {
        self.shared.steps.add_permits(n);
    }

    /// Stops stepping: execution runs freely again.
    pub fn run_freely(&self) {
        self.shared.stepping.store(false, Ordering::SeqCst);
        self.shared.steps.add_permits(1 << 20);
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
        "VHS_VideoCombine" => json!({"required": {
            "images": ["IMAGE"],
            "frame_rate": ["FLOAT", {"default": 8, "min": 1, "step": 1}],
            "loop_count": ["INT", {"default": 0, "min": 0, "max": 100, "step": 1}],
            "filename_prefix": ["STRING", {"default": "AnimateDiff"}],
            "format": [["image/gif", "image/webp", "video/h264-mp4", "video/h265-mp4", "video/webm"]],
            "pingpong": ["BOOLEAN", {"default": false}],
            "save_output": ["BOOLEAN", {"default": true}]},
            "optional": {"audio": ["AUDIO"], "meta_batch": ["VHS_BatchManager"], "vae": ["VAE"]}}),
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
        "display_name": class, "category": "Sonic", "output_node": OUTPUT_CLASSES.contains(&class),
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
    let Some(output) = output_node(&graph) else {
        return refuse(
            json!({"type": "prompt_no_outputs", "message": "Prompt has no outputs", "details": "", "extra_info": {}}),
            json!({}),
        );
    };
    let mut node_errors = serde_json::Map::new();
    for (id, node) in nodes {
        let errors = validate_node(&shared, mode, node, &graph);
        if !errors.is_empty() {
            node_errors.insert(
                id.clone(),
                json!({"errors": errors, "dependent_outputs": [output],
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
        queue.push_back(Queued {
            number,
            id: prompt_id.clone(),
            graph,
            client_id: body["client_id"].as_str().map(str::to_owned),
        });
        let held = queue.len() + usize::from(shared.running.lock().unwrap().is_some());
        shared.peak.fetch_max(held, Ordering::SeqCst);
    }
    shared.wake.notify_one();
    broadcast_status(&shared);
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

fn queue_item(item: &Queued) -> Value {
    json!([item.number, item.id, item.graph, {"client_id": item.client_id},
           [output_node(&item.graph).unwrap_or_default()]])
}

/// The id of the graph's (first) SaveVideo or VHS_VideoCombine node.
fn output_node(graph: &Value) -> Option<String> {
    graph.as_object()?.iter().find_map(|(id, node)| {
        OUTPUT_CLASSES
            .contains(&node["class_type"].as_str().unwrap_or_default())
            .then(|| id.clone())
    })
}

/// The id of the graph's first node of `class`.
fn node_of(graph: &Value, class: &str) -> Option<String> {
    graph
        .as_object()?
        .iter()
        .find_map(|(id, node)| (node["class_type"] == class).then(|| id.clone()))
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
        queue.retain(|item| Some(item.id.as_str()) != id.as_str());
    }
    StatusCode::OK
}

async fn interrupt(State(shared): State<Arc<Shared>>, body: Option<Json<Value>>) -> StatusCode {
    let body = body.map(|b| b.0).unwrap_or(json!({}));
    shared.interrupts.lock().unwrap().push(body.clone());
    let running = shared
        .running
        .lock()
        .unwrap()
        .as_ref()
        .map(|r| r.id.clone());
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
        "VHS_VideoCombine",
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

// ---- the websocket ----

async fn websocket(
    State(shared): State<Arc<Shared>>,
    Query(q): Query<BTreeMap<String, String>>,
    upgrade: WebSocketUpgrade,
) -> Response {
    shared.websocket_attempts.fetch_add(1, Ordering::SeqCst);
    if !shared.websocket_enabled.load(Ordering::SeqCst) {
        return StatusCode::NOT_FOUND.into_response();
    }
    let sid = q
        .get("clientId")
        .cloned()
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    upgrade.on_upgrade(move |socket| serve_socket(shared, sid, socket))
}

/// ComfyUI's `websocket_handler`: the status with our sid first, then whatever is sent to it.
async fn serve_socket(shared: Arc<Shared>, sid: String, mut socket: WebSocket) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let connection = shared.counter.fetch_add(1, Ordering::SeqCst);
    let mut dropped = shared.drop_sockets.subscribe();
    let hello = json!({"type": "status", "data": {"status": queue_info(&shared), "sid": sid}});
    if socket
        .send(Message::Text(hello.to_string().into()))
        .await
        .is_err()
    {
        return;
    }
    shared
        .sockets
        .lock()
        .unwrap()
        .insert(sid.clone(), (connection, tx));
    loop {
        tokio::select! {
            message = rx.recv() => {
                let Some(text) = message else { break };
                if socket.send(Message::Text(text.into())).await.is_err() {
                    break;
                }
            }
            incoming = socket.recv() => {
                if !matches!(incoming, Some(Ok(_))) {
                    break;
                }
            }
            // Dropped without a close frame, as a broken connection would be.
            _ = dropped.changed() => return,
        }
    }
    let mut sockets = shared.sockets.lock().unwrap();
    if sockets.get(&sid).is_some_and(|(c, _)| *c == connection) {
        sockets.remove(&sid);
    }
}

fn queue_info(shared: &Shared) -> Value {
    let remaining =
        shared.queue.lock().unwrap().len() + usize::from(shared.running.lock().unwrap().is_some());
    json!({"exec_info": {"queue_remaining": remaining}})
}

/// Sends a message to one client's socket, if it has one open (execution events go only to the
/// client that submitted the prompt).
fn send_to(shared: &Shared, client_id: Option<&str>, kind: &str, data: Value) {
    let Some(client_id) = client_id else { return };
    if let Some((_, tx)) = shared.sockets.lock().unwrap().get(client_id) {
        let _ = tx.send(json!({"type": kind, "data": data}).to_string());
    }
}

/// The queue changed: every socket hears it.
fn broadcast_status(shared: &Shared) {
    let message = json!({"type": "status", "data": {"status": queue_info(shared)}}).to_string();
    for (_, tx) in shared.sockets.lock().unwrap().values() {
        let _ = tx.send(message.clone());
    }
}

// ---- execution: one prompt at a time ----

async fn execute_forever(shared: Arc<Shared>) {
    loop {
        let waiting = !shared.queue.lock().unwrap().is_empty();
        if !waiting {
            shared.wake.notified().await;
            continue;
        }
        // While stepping, the prompt stays pending until it may start.
        step(&shared).await;
        let next = shared.queue.lock().unwrap().pop_front();
        let Some(item) = next else { continue };
        *shared.running.lock().unwrap() = Some(item.clone());
        *shared.interrupted.lock().unwrap() = None;
        let Queued {
            number,
            id,
            graph,
            client_id,
        } = item;
        let client = client_id.as_deref();
        let output = output_node(&graph).unwrap_or_default();
        let started = json!({"prompt_id": id, "timestamp": 0});
        let cached = json!({"nodes": [], "prompt_id": id, "timestamp": 0});
        send_to(&shared, client, "execution_start", started.clone());
        send_to(&shared, client, "execution_cached", cached.clone());
        let mut messages = vec![
            json!(["execution_start", started]),
            json!(["execution_cached", cached]),
        ];
        let mode = *shared.mode.lock().unwrap();
        let generation = shared.generation.load(Ordering::SeqCst);
        let began = std::time::Instant::now();
        let result = run(&shared, &id, &graph, client, mode).await;
        shared
            .timeline
            .lock()
            .unwrap()
            .push((id.clone(), began, std::time::Instant::now()));
        if shared.generation.load(Ordering::SeqCst) != generation {
            continue;
        }
        let (status, outputs) = match result {
            Ok(saved) => {
                let success = json!({"prompt_id": id, "timestamp": 0});
                send_to(&shared, client, "execution_success", success.clone());
                messages.push(json!(["execution_success", success]));
                ("success", json!({ output.clone(): saved }))
            }
            Err((kind, data)) => {
                send_to(&shared, client, kind, data.clone());
                messages.push(json!([kind, data]));
                ("error", json!({}))
            }
        };
        let entry = json!({"prompt": [number, id, graph, {"client_id": client_id}, [output]],
            "outputs": outputs,
            "status": {"status_str": status, "completed": status == "success", "messages": messages},
            "meta": {}});
        shared.history.lock().unwrap().insert(id.clone(), entry);
        *shared.running.lock().unwrap() = None;
        // As ComfyUI's prompt worker: after the history is written.
        send_to(
            &shared,
            client,
            "executing",
            json!({"node": null, "prompt_id": id}),
        );
        broadcast_status(&shared);
    }
}

/// Waits for a permit while stepping.
async fn step(shared: &Shared) {
    if shared.stepping.load(Ordering::SeqCst) {
        shared.steps.acquire().await.unwrap().forget();
    }
}

/// Node ids in an order ComfyUI could run them: each after the nodes it links to, lower ids first.
fn execution_order(graph: &Value) -> Vec<String> {
    let nodes = graph.as_object().unwrap();
    let number = |id: &String| id.parse::<u64>().unwrap_or(u64::MAX);
    let mut left: Vec<&String> = nodes.keys().collect();
    left.sort_by_key(|id| (number(id), (*id).clone()));
    let mut order: Vec<String> = Vec::new();
    while !left.is_empty() {
        let ready = left
            .iter()
            .position(|id| {
                nodes[id.as_str()]["inputs"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .filter_map(|(_, v)| v.as_array().filter(|l| l.len() == 2)?[0].as_str())
                    .all(|dep| order.iter().any(|done| done == dep))
            })
            .expect("the graph has no cycle");
        order.push(left.remove(ready).clone());
    }
    order
}

type Failure = (&'static str, Value);

fn execution_error(id: &str, node: &str, class: &str, kind: &str, message: &str) -> Failure {
    (
        "execution_error",
        json!({"prompt_id": id, "node_id": node, "node_type": class, "executed": ["1", "3", "4"],
        "exception_message": message, "exception_type": kind,
        "traceback": ["Traceback (most recent call last):\n", "  File \"execution.py\", line 496, in execute\n"],
        "current_inputs": {}, "current_outputs": {}, "timestamp": 0}),
    )
}

/// Runs the graph node by node with the events ComfyUI sends: the Sonic frame arithmetic and a
/// real MP4, or the configured failure. Returns the output node's output.
async fn run(
    shared: &Shared,
    id: &str,
    graph: &Value,
    client: Option<&str>,
    mode: Mode,
) -> Result<Value, Failure> {
    let mut output = Value::Null;
    for node in execution_order(graph) {
        step(shared).await;
        let class = graph[&node]["class_type"].as_str().unwrap_or_default();
        send_to(
            shared,
            client,
            "executing",
            json!({"node": node, "display_node": node, "prompt_id": id}),
        );
        match (class, mode) {
            ("SONIC_PreData", Mode::Exception) => {
                return Err(execution_error(
                    id,
                    &node,
                    class,
                    "IndexError",
                    "list index out of range",
                ));
            }
            ("SONICSampler", _) => {
                sample(shared, id, &node, mode).await?;
                if mode == Mode::OutOfMemory {
                    return Err(execution_error(id, &node, class, "torch.OutOfMemoryError",
                        "CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity of 23.64 GiB of which 1.02 GiB is free."));
                }
            }
            ("SaveVideo" | "VHS_VideoCombine", _) => {
                output = save_video(shared, id, graph, &node).await?;
                send_to(
                    shared,
                    client,
                    "executed",
                    json!({"node": node, "display_node": node, "output": output, "prompt_id": id}),
                );
            }
            _ => {}
        }
    }
    Ok(output)
}

/// The sampler's time (no progress events, like Sonic's), interruptible.
async fn sample(shared: &Shared, id: &str, node: &str, mode: Mode) -> Result<(), Failure> {
    let budget = match mode {
        Mode::Slow(d) => d,
        _ => Duration::from_millis(50),
    };
    let until = tokio::time::Instant::now() + budget;
    while tokio::time::Instant::now() < until {
        if shared.interrupted.lock().unwrap().as_deref() == Some(id) {
            let delay = *shared.interrupt_delay.lock().unwrap();
            tokio::time::sleep(delay).await;
            return Err((
                "execution_interrupted",
                json!({"prompt_id": id, "node_id": node,
                "node_type": "SONICSampler", "executed": ["1"], "timestamp": 0}),
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// What SaveVideo (`images`, under `video/`) or VHS_VideoCombine (`gifs`) writes and reports.
async fn save_video(
    shared: &Shared,
    id: &str,
    graph: &Value,
    node: &str,
) -> Result<Value, Failure> {
    let find = |class: &str| graph[node_of(graph, class).unwrap_or_default()].clone();
    let input = shared.dir.path().join("input");
    let image = input.join(find("LoadImage")["inputs"]["image"].as_str().unwrap());
    let audio = input.join(find("LoadAudio")["inputs"]["audio"].as_str().unwrap());
    let pre = find("SONIC_PreData")["inputs"].clone();
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
    let vhs = graph[node]["class_type"] == "VHS_VideoCombine";
    let (subfolder, name) = if vhs {
        let prefix = graph[node]["inputs"]["filename_prefix"]
            .as_str()
            .unwrap_or("AnimateDiff");
        ("", format!("{prefix}_{number:05}.mp4"))
    } else {
        ("video", format!("sonicgw_{number:05}_.mp4"))
    };
    let out: PathBuf = shared.dir.path().join("output").join(subfolder).join(&name);
    make_video(&image, &audio, frames, out_w, out_h, &out).await;
    Ok(if vhs {
        json!({"gifs": [{"filename": name, "subfolder": subfolder, "type": "output",
                         "format": "video/h264-mp4", "frame_rate": 25.0,
                         "workflow": name.replace(".mp4", ".png"), "fullpath": out}]})
    } else {
        json!({"images": [{"filename": name, "subfolder": subfolder, "type": "output"}],
               "animated": [true]})
    })
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
