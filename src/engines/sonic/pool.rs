//! The GPU pool: ComfyUI servers, each running at most `max_in_flight` prompts. A worker reserves
//! a free, healthy instance before it claims a job, so the gateway's fair queue (never ComfyUI's
//! FIFO) decides the order, and no lease runs while a job waits for a GPU.
//!
//! A watcher checks every instance (`/system_stats` and the Sonic nodes' `/object_info`) every
//! `health_interval`; one that fails is skipped and checked again with backoff until it recovers.
//! A job that finds its instance unreachable marks it failed at once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;
use tokio::sync::Notify;

use super::client::{clip, ComfyClient, ComfyError};

/// Longest `last_error` kept for an instance.
const MAX_ERROR: usize = 500;
use super::workflow::Models;
use crate::time::{now_ms, UnixMillis};

/// How long an instance stays busy after a cancelled prompt when ComfyUI never reports it idle.
const MAX_DRAIN: Duration = Duration::from_secs(600);

/// How the pool runs (from the configuration).
#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// Prompts one ComfyUI server runs at once (its own queue runs them one after the other, so
    /// more than 1 only pre-loads the next prompt).
    pub max_in_flight: usize,
    pub health_interval: Duration,
    /// What the Sonic nodes must offer.
    pub models: Models,
}

/// What an operator sees of one instance (`GET /v1/engines`).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct InstanceView {
    /// Stable name in logs and metrics: `comfyui-1`, `comfyui-2`, ... in configuration order.
    pub name: String,
    /// The server's base URL (platform admins only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    pub healthy: bool,
    /// Prompts in flight (including a cancelled one ComfyUI has not stopped yet).
    pub busy: usize,
    pub max_in_flight: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comfyui_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vram_total_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vram_free_bytes: Option<u64>,
    /// When it was last checked (Unix milliseconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checked_at_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    pub jobs_done: u64,
    pub jobs_failed: u64,
    /// Its estimated speed: seconds per second of 512 px, 25-step video (learnt from its jobs,
    /// else the engine's; filled in by the service's cost model).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seconds_per_video_second: Option<f64>,
}

#[derive(Debug, Default)]
struct State {
    healthy: bool,
    busy: usize,
    last_error: Option<String>,
    consecutive_failures: u32,
    next_check: Option<Instant>,
    checking: bool,
    checked_at: Option<UnixMillis>,
    version: Option<String>,
    device: Option<String>,
    vram_total: Option<u64>,
    vram_free: Option<u64>,
    jobs_done: u64,
    jobs_failed: u64,
    /// Jobs that lost this instance since its last successful job, and until when it gets no new
    /// one: a server that passes health checks but fails jobs is not picked again at once.
    job_failures: u32,
    held_until: Option<Instant>,
}

/// One ComfyUI server.
#[derive(Debug)]
pub struct Instance {
    pub name: String,
    pub client: ComfyClient,
    state: Mutex<State>,
    /// Order of the last reservation, to spread jobs over equally busy instances.
    last_used: AtomicU64,
}

impl Instance {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The instances and who waits for one.
#[derive(Debug)]
pub struct Pool {
    instances: Vec<Arc<Instance>>,
    settings: PoolSettings,
    changed: Notify,
    reservations: AtomicU64,
}

impl Pool {
    pub fn new(clients: Vec<ComfyClient>, settings: PoolSettings) -> Arc<Self> {
        let instances = clients
            .into_iter()
            .enumerate()
            .map(|(i, client)| {
                Arc::new(Instance {
                    name: format!("comfyui-{}", i + 1),
                    client,
                    state: Mutex::new(State::default()),
                    last_used: AtomicU64::new(0),
                })
            })
            .collect();
        Arc::new(Self {
            instances,
            settings,
            changed: Notify::new(),
            reservations: AtomicU64::new(0),
        })
    }

    /// Jobs the pool can ever run at once.
    pub fn lanes(&self) -> usize {
        self.instances.len() * self.settings.max_in_flight
    }

    /// Jobs the healthy instances can run at once now.
    pub fn capacity(&self) -> usize {
        self.instances.iter().filter(|i| i.state().healthy).count() * self.settings.max_in_flight
    }

    pub fn instances(&self, with_urls: bool) -> Vec<InstanceView> {
        self.instances
            .iter()
            .map(|instance| {
                let state = instance.state();
                InstanceView {
                    name: instance.name.clone(),
                    url: with_urls
                        .then(|| crate::config::redacted_url(instance.client.base().as_str())),
                    healthy: state.healthy,
                    busy: state.busy,
                    max_in_flight: self.settings.max_in_flight,
                    comfyui_version: state.version.clone(),
                    device: state.device.clone(),
                    vram_total_bytes: state.vram_total,
                    vram_free_bytes: state.vram_free,
                    checked_at_ms: state.checked_at.map(|t| t.as_millis()),
                    last_error: state.last_error.clone(),
                    jobs_done: state.jobs_done,
                    jobs_failed: state.jobs_failed,
                    seconds_per_video_second: None,
                }
            })
            .collect()
    }

    /// Waits until a healthy instance has room and reserves it; the reservation ends when the
    /// returned lease (and every clone of it) is dropped.
    pub async fn reserve(self: &Arc<Self>) -> Lease {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(lease) = self.try_reserve() {
                return lease;
            }
            changed.await;
        }
    }

    /// The least busy healthy instance with room (the least recently used among equals).
    pub fn try_reserve(self: &Arc<Self>) -> Option<Lease> {
        let max = self.settings.max_in_flight;
        let now = Instant::now();
        let mut best: Option<(usize, u64, &Arc<Instance>)> = None;
        for instance in &self.instances {
            let state = instance.state();
            if !state.healthy || state.busy >= max || state.held_until.is_some_and(|t| t > now) {
                continue;
            }
            let key = (state.busy, instance.last_used.load(Ordering::Relaxed));
            if best.is_none_or(|(busy, used, _)| key < (busy, used)) {
                best = Some((key.0, key.1, instance));
            }
        }
        let (_, _, instance) = best?;
        let mut state = instance.state();
        // Checked again under the lock: another lane may have taken the room meanwhile.
        if !state.healthy || state.busy >= max || state.held_until.is_some_and(|t| t > now) {
            drop(state);
            return self.try_reserve();
        }
        state.busy += 1;
        drop(state);
        let order = self.reservations.fetch_add(1, Ordering::Relaxed) + 1;
        instance.last_used.store(order, Ordering::Relaxed);
        metrics::gauge!("sonic_instance_busy", "instance" => instance.name.clone()).increment(1.0);
        Some(Lease(Arc::new(LeaseInner {
            instance: Arc::clone(instance),
            pool: Arc::clone(self),
        })))
    }

    /// Why no job can run: every instance was checked and none is healthy.
    pub fn unavailable(&self) -> Option<String> {
        let mut errors = Vec::new();
        for instance in &self.instances {
            let state = instance.state();
            if state.healthy || state.checked_at.is_none() {
                return None;
            }
            errors.push(format!(
                "{}: {}",
                instance.name,
                state.last_error.as_deref().unwrap_or("failing")
            ));
        }
        Some(errors.join("; "))
    }

    /// Checks `instance` again at once (a job saw something a check may explain).
    pub fn recheck(&self, instance: &Instance) {
        instance.state().next_check = Some(Instant::now());
    }

    /// A job found its instance failing: skip it until a check passes (the next one is due now),
    /// and give it no new job for a while that doubles with each job it fails in a row (1 s to
    /// 60 s) however its health checks go, so a server that answers checks but fails jobs does
    /// not burn the queue's attempts.
    pub fn report_failure(&self, instance: &Instance, error: &str) {
        let error = clip(error, MAX_ERROR);
        let hold;
        {
            let mut state = instance.state();
            state.healthy = false;
            state.jobs_failed += 1;
            state.job_failures = state.job_failures.saturating_add(1);
            hold = Duration::from_secs(1u64 << state.job_failures.saturating_sub(1).min(6))
                .min(Duration::from_secs(60));
            state.held_until = Some(Instant::now() + hold);
            state.last_error = Some(error.clone());
            state.next_check = Some(Instant::now());
        }
        set_health_gauge(instance, false);
        tracing::warn!(instance = %instance.name, %error, hold_s = hold.as_secs(), "ComfyUI instance failed a job");
        self.changed.notify_waiters();
    }

    /// A job's prompt ended on `instance`.
    pub fn record_job(&self, instance: &Instance, succeeded: bool) {
        let mut state = instance.state();
        if succeeded {
            state.jobs_done += 1;
            state.job_failures = 0;
            state.held_until = None;
        } else {
            state.jobs_failed += 1;
        }
    }

    /// Checks every instance now (first at startup), then each when it is due, until dropped.
    pub async fn watch(self: Arc<Self>) {
        loop {
            let now = Instant::now();
            for instance in &self.instances {
                let due = {
                    let mut state = instance.state();
                    let due = !state.checking && state.next_check.is_none_or(|t| t <= now);
                    if due {
                        state.checking = true;
                    }
                    due
                };
                if due {
                    let pool = Arc::clone(&self);
                    let instance = Arc::clone(instance);
                    tokio::spawn(async move { pool.check(&instance).await });
                }
            }
            let next = self
                .instances
                .iter()
                .filter_map(|i| i.state().next_check)
                .min()
                .unwrap_or(now + Duration::from_secs(1));
            let wait = next
                .saturating_duration_since(Instant::now())
                .clamp(Duration::from_millis(100), Duration::from_secs(1));
            tokio::time::sleep(wait).await;
            // Instances whose hold after a failed job ended can be reserved again.
            self.changed.notify_waiters();
        }
    }

    async fn check(&self, instance: &Instance) {
        let result = check_instance(&instance.client, &self.settings.models).await;
        let healthy = result.is_ok();
        let was_healthy;
        {
            let mut state = instance.state();
            was_healthy = state.healthy;
            state.checking = false;
            state.checked_at = Some(now_ms());
            match result {
                Ok(stats) => {
                    state.healthy = true;
                    state.consecutive_failures = 0;
                    state.last_error = None;
                    state.version = stats.version;
                    state.device = stats.device;
                    state.vram_total = stats.vram_total;
                    state.vram_free = stats.vram_free;
                    state.next_check = Some(Instant::now() + self.settings.health_interval);
                }
                Err(error) => {
                    let error = clip(&error, MAX_ERROR);
                    state.healthy = false;
                    state.consecutive_failures = state.consecutive_failures.saturating_add(1);
                    // 1 s doubling, at most the check interval: a server that comes back is
                    // used again within one interval.
                    let backoff = Duration::from_secs(
                        1u64 << state.consecutive_failures.saturating_sub(1).min(6),
                    )
                    .min(self.settings.health_interval.max(Duration::from_secs(1)));
                    state.next_check = Some(Instant::now() + backoff);
                    if state.last_error.as_deref() != Some(error.as_str()) || was_healthy {
                        tracing::warn!(instance = %instance.name, %error, retry_in_s = backoff.as_secs(), "ComfyUI instance unhealthy");
                    }
                    state.last_error = Some(error);
                }
            }
        }
        set_health_gauge(instance, healthy);
        if healthy && !was_healthy {
            tracing::info!(instance = %instance.name, "ComfyUI instance healthy");
        }
        if healthy != was_healthy {
            self.changed.notify_waiters();
        }
    }

    fn release(&self, instance: &Instance) {
        {
            let mut state = instance.state();
            state.busy = state.busy.saturating_sub(1);
        }
        metrics::gauge!("sonic_instance_busy", "instance" => instance.name.clone()).decrement(1.0);
        self.changed.notify_waiters();
    }
}

fn set_health_gauge(instance: &Instance, healthy: bool) {
    metrics::gauge!("sonic_instance_healthy", "instance" => instance.name.clone())
        .set(if healthy { 1.0 } else { 0.0 });
}

/// A reserved place on one instance. Clones share it; it is released when the last one drops,
/// so a cancelled prompt can keep its instance busy until ComfyUI reports it idle.
#[derive(Clone, Debug)]
pub struct Lease(Arc<LeaseInner>);

#[derive(Debug)]
struct LeaseInner {
    instance: Arc<Instance>,
    pool: Arc<Pool>,
}

impl Drop for LeaseInner {
    fn drop(&mut self) {
        self.pool.release(&self.instance);
    }
}

impl Lease {
    pub fn instance(&self) -> &Arc<Instance> {
        &self.0.instance
    }

    pub fn pool(&self) -> &Arc<Pool> {
        &self.0.pool
    }

    /// Holds the instance until ComfyUI no longer runs or queues `prompt_id` (bounded), then
    /// releases it: after a cancel, the GPU is not free until the interrupted node returns.
    pub async fn hold_until_idle(self, prompt_id: &str) {
        let client = &self.0.instance.client;
        let until = Instant::now() + MAX_DRAIN;
        let mut wait = Duration::from_millis(100);
        while Instant::now() < until {
            match client.queue().await {
                Ok(queue)
                    if !queue.running.iter().any(|id| id == prompt_id)
                        && !queue.pending.iter().any(|id| id == prompt_id) =>
                {
                    return;
                }
                Ok(_) => {}
                // Unreachable: the watcher will mark it unhealthy; nothing runs there any more.
                Err(ComfyError::Unreachable { .. }) => return,
                Err(_) => {}
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(2));
        }
        tracing::warn!(instance = %self.0.instance.name, prompt_id, "a cancelled prompt is still listed; releasing its instance anyway");
    }
}

/// What a passing check learnt.
#[derive(Debug, Default)]
struct Stats {
    version: Option<String>,
    device: Option<String>,
    vram_total: Option<u64>,
    vram_free: Option<u64>,
}

/// `/system_stats`, then the nodes the workflow uses: installed, with the inputs we send, the
/// configured model files and ranges that take every value the gateway accepts.
async fn check_instance(client: &ComfyClient, models: &Models) -> Result<Stats, String> {
    let stats = client.system_stats().await.map_err(|e| e.to_string())?;
    let device = &stats["devices"][0];
    // Shown to every user in GET /v1/engines: the server's text, kept short and on one line.
    let found = Stats {
        version: stats["system"]["comfyui_version"]
            .as_str()
            .map(|v| clip(v, 64)),
        device: device["name"].as_str().map(|d| clip(d, 100)),
        vram_total: device["vram_total"].as_u64(),
        vram_free: device["vram_free"].as_u64(),
    };
    for requirement in requirements(models) {
        let info = client
            .object_info(requirement.class)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| {
                format!(
                    "node {} is not installed (install ComfyUI_Sonic and restart ComfyUI)",
                    requirement.class
                )
            })?;
        requirement.check(&info)?;
    }
    Ok(found)
}

/// One input a node must accept.
enum Accepts {
    /// A linked input or anything: only its presence is checked.
    Present,
    /// A combo list that must contain this value.
    Choice(String),
    /// A number whose range must include `[lo, hi]`.
    Range(f64, f64),
}

struct Requirement {
    class: &'static str,
    inputs: Vec<(&'static str, Accepts)>,
}

fn requirements(models: &Models) -> Vec<Requirement> {
    use Accepts::*;
    vec![
        Requirement {
            class: "ImageOnlyCheckpointLoader",
            inputs: vec![("ckpt_name", Choice(models.checkpoint.clone()))],
        },
        Requirement {
            class: "SONICTLoader",
            inputs: vec![
                ("model", Present),
                ("sonic_unet", Choice(models.unet.clone())),
                ("ip_audio_scale", Range(1.0, 1.0)),
                ("use_interframe", Present),
                ("dtype", Choice(models.dtype.clone())),
            ],
        },
        Requirement {
            class: "SONIC_PreData",
            inputs: vec![
                ("clip_vision", Present),
                ("vae", Present),
                ("audio", Present),
                ("image", Present),
                ("weight_dtype", Present),
                ("min_resolution", Range(128.0, 2048.0)),
                ("duration", Range(1.0, 3600.0)),
                ("expand_ratio", Range(0.1, 1.0)),
            ],
        },
        Requirement {
            class: "SONICSampler",
            inputs: vec![
                ("model", Present),
                ("data_dict", Present),
                ("seed", Range(0.0, f64::from(i32::MAX))),
                ("inference_steps", Range(1.0, 100.0)),
                ("dynamic_scale", Range(0.5, 2.0)),
                (
                    "fps",
                    Range(super::workflow::SONIC_FPS, super::workflow::SONIC_FPS),
                ),
            ],
        },
    ]
}

impl Requirement {
    /// `info` is the node's `/object_info` entry: `input.required.<name> = [type, options]`.
    fn check(&self, info: &Value) -> Result<(), String> {
        let class = self.class;
        for (name, accepts) in &self.inputs {
            let spec = info["input"]["required"]
                .get(*name)
                .or_else(|| info["input"]["optional"].get(*name))
                .ok_or_else(|| {
                    format!("node {class} has no input {name:?} (outdated node pack?)")
                })?;
            match accepts {
                Accepts::Present => {}
                Accepts::Choice(value) => {
                    let choices = spec[0].as_array().cloned().unwrap_or_default();
                    if !choices.iter().any(|c| c.as_str() == Some(value)) {
                        return Err(format!(
                            "node {class} input {name}: {value:?} is not installed (offered: {})",
                            offered(&choices)
                        ));
                    }
                }
                Accepts::Range(lo, hi) => {
                    let options = &spec[1];
                    let min = options["min"].as_f64().unwrap_or(f64::NEG_INFINITY);
                    let max = options["max"].as_f64().unwrap_or(f64::INFINITY);
                    if min > *lo || max < *hi {
                        return Err(format!(
                            "node {class} input {name} takes {min}..{max}, the gateway sends {lo}..{hi}"
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

/// A combo list for an error message, shortened.
fn offered(choices: &[Value]) -> String {
    let names: Vec<String> = choices
        .iter()
        .filter_map(Value::as_str)
        .take(10)
        .map(|n| clip(n, 64))
        .collect();
    let more = choices.len().saturating_sub(names.len());
    let mut text = if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    };
    if more > 0 {
        text.push_str(&format!(" and {more} more"));
    }
    text
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;

    use super::*;

    fn models() -> Models {
        Models {
            checkpoint: "svd_xt_1_1.safetensors".into(),
            unet: "unet.pth".into(),
            dtype: "fp16".into(),
        }
    }

    fn pool(instances: usize, max_in_flight: usize) -> Arc<Pool> {
        let clients = (0..instances)
            .map(|i| ComfyClient::new(&format!("http://gpu{i}:8188"), &BTreeMap::new()).unwrap())
            .collect();
        Pool::new(
            clients,
            PoolSettings {
                max_in_flight,
                health_interval: Duration::from_secs(10),
                models: models(),
            },
        )
    }

    fn set_healthy(pool: &Pool, index: usize, healthy: bool) {
        pool.instances[index].state().healthy = healthy;
    }

    #[test]
    fn reservations_go_to_healthy_instances_with_room_and_end_on_drop() {
        let pool = pool(2, 1);
        assert!(
            pool.try_reserve().is_none(),
            "nothing is healthy before a check"
        );
        set_healthy(&pool, 0, true);
        set_healthy(&pool, 1, true);
        assert_eq!(pool.capacity(), 2);
        let a = pool.try_reserve().unwrap();
        let b = pool.try_reserve().unwrap();
        assert_ne!(a.instance().name, b.instance().name, "spread over both");
        assert!(pool.try_reserve().is_none(), "both are busy");
        let held = a.clone();
        drop(a);
        assert!(
            pool.try_reserve().is_none(),
            "a clone still holds the instance"
        );
        drop(held);
        let c = pool.try_reserve().unwrap();
        assert_eq!(
            pool.instances(false).iter().map(|i| i.busy).sum::<usize>(),
            2
        );
        drop((b, c));
        assert_eq!(
            pool.instances(false).iter().map(|i| i.busy).sum::<usize>(),
            0
        );
    }

    #[test]
    fn a_failed_instance_is_skipped_and_max_in_flight_is_per_instance() {
        let pool = pool(2, 2);
        set_healthy(&pool, 0, true);
        set_healthy(&pool, 1, true);
        pool.report_failure(&pool.instances[1], "connection refused");
        let leases: Vec<Lease> = std::iter::from_fn(|| pool.try_reserve()).collect();
        assert_eq!(leases.len(), 2);
        assert!(leases.iter().all(|l| l.instance().name == "comfyui-1"));
        let views = pool.instances(true);
        assert_eq!(views[1].last_error.as_deref(), Some("connection refused"));
        assert!(views[1].url.as_deref().unwrap().contains("gpu1"));
        assert!(pool.instances(false)[1].url.is_none());
    }

    #[tokio::test]
    async fn a_waiting_reservation_wakes_when_an_instance_frees() {
        let pool = pool(1, 1);
        set_healthy(&pool, 0, true);
        let first = pool.try_reserve().unwrap();
        let waiter = tokio::spawn({
            let pool = Arc::clone(&pool);
            async move { pool.reserve().await.instance().name.clone() }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(first);
        assert_eq!(waiter.await.unwrap(), "comfyui-1");
    }

    fn node(inputs: Value) -> Value {
        json!({"input": {"required": inputs}})
    }

    #[test]
    fn node_checks_name_missing_inputs_models_and_narrow_ranges() {
        let reqs = requirements(&models());
        let loader = reqs.iter().find(|r| r.class == "SONICTLoader").unwrap();
        let good = node(
            json!({"model": ["MODEL"], "sonic_unet": [["none", "unet.pth"]],
            "ip_audio_scale": ["FLOAT", {"min": 0.5, "max": 2.0}], "use_interframe": ["BOOLEAN", {}],
            "dtype": [["fp16", "fp32", "bf16"]]}),
        );
        assert_eq!(loader.check(&good), Ok(()));
        let no_unet = node(json!({"model": ["MODEL"], "sonic_unet": [["none"]],
            "ip_audio_scale": ["FLOAT", {"min": 0.5, "max": 2.0}], "use_interframe": ["BOOLEAN", {}],
            "dtype": [["fp16"]]}));
        let err = loader.check(&no_unet).unwrap_err();
        assert!(
            err.contains("\"unet.pth\" is not installed (offered: none)"),
            "{err}"
        );
        let missing = node(json!({"model": ["MODEL"]}));
        assert!(loader
            .check(&missing)
            .unwrap_err()
            .contains("no input \"sonic_unet\""));

        let sampler = reqs.iter().find(|r| r.class == "SONICSampler").unwrap();
        let narrow = node(
            json!({"model": ["MODEL_SONIC"], "data_dict": ["SONIC_PREDATA"],
            "seed": ["INT", {"min": 0, "max": 2147483647}], "inference_steps": ["INT", {"min": 1, "max": 50}],
            "dynamic_scale": ["FLOAT", {"min": 0.5, "max": 2.0}], "fps": ["FLOAT", {"min": 5.0, "max": 120.0}]}),
        );
        let err = sampler.check(&narrow).unwrap_err();
        assert!(err.contains("inference_steps takes 1..50"), "{err}");
    }
}
