//! ETAs from a cost model. Each engine instance has a speed: engine seconds per second of output video
//! at the reference size (512x512 pixels, 25 inference steps), seeded from configuration, learned from
//! every succeeded job with an exponential moving average, and stored, so it survives restarts. A job's
//! cost is that speed times its video's length, scaled by its pixels and, for engines that honour
//! `inference_steps`, its steps. A queued job's start is simulated: the engine's running jobs hold its
//! slots for their remaining time, and the queued jobs ahead of it, in dispatch order, each take the
//! slot that frees first.

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BinaryHeap};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::view::OutputPlan;
use super::VideoService;
use crate::domain::{JobId, JobStatus, SonicParams};
use crate::engines::Engines;
use crate::storage::estimates::EngineSpeed;
use crate::storage::jobs::JobRecord;
use crate::storage::Store;
use crate::time::{now_ms, UnixMillis};

/// Weight of the newest job in an instance's moving average.
pub const ALPHA: f64 = 0.3;
/// Output pixels of the reference job.
pub const REFERENCE_PIXELS: f64 = 512.0 * 512.0;
/// Inference steps of the reference job.
pub const REFERENCE_STEPS: f64 = 25.0;
/// At most this many running jobs, and this many queued jobs ahead, count toward one estimate; behind
/// a longer queue the estimate is a lower bound.
pub const MAX_JOBS_CONSIDERED: i64 = 1000;
/// What a running job is assumed to still need once it has overrun its estimate (at most its estimate).
pub const MIN_REMAINING_S: f64 = 1.0;
/// Progress derived from elapsed time stops here: only the engine knows when it is done.
pub const PROGRESS_CAP: f64 = 0.95;
/// Speeds outside this range (seconds per reference second) are measurement errors, whatever the engine.
const PLAUSIBLE_SPEED: (f64, f64) = (1e-3, 1e4);
/// Once an instance has this many samples, a sample more than `MAX_JUMP` times off its speed is ignored
/// (a job that mostly waited, a clock jump); before, the seed may be that far off.
const SETTLED_SAMPLES: i64 = 3;
const MAX_JUMP: f64 = 10.0;
/// Jobs smaller than this (reference seconds) are not timed: fixed overheads would dominate.
const MIN_TIMED_WORK: f64 = 0.05;
/// How long other processes' speed updates may go unseen here.
const RELOAD_AFTER: Duration = Duration::from_secs(30);

/// The seed of an engine without `engine_speed_seed` for it, in seconds per reference second. Sonic
/// takes 15-30 s of GPU time per second of video; the built-in engine was timed on a 2-core machine.
pub fn default_seed(engine: &str) -> f64 {
    match engine {
        "sonic" => 20.0,
        "builtin" => 0.5,
        _ => 1.0,
    }
}

/// How much there is to generate in one job, as its cost scales.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Work {
    pub video_seconds: f64,
    pub pixels: f64,
    pub steps: u32,
}

/// The part of a job's stored parameters the cost depends on.
#[derive(Deserialize)]
struct StoredSteps {
    inference_steps: u32,
}

impl Work {
    pub fn new(params: &SonicParams, output: &OutputPlan) -> Self {
        Self::of(params.inference_steps, output)
    }

    /// From a job's stored `params` and `output_plan` documents.
    pub fn from_stored(params: &str, output_plan: &str) -> anyhow::Result<Self> {
        let steps: StoredSteps = serde_json::from_str(params)
            .map_err(|e| anyhow::anyhow!("stored job params are invalid: {e}"))?;
        let output: OutputPlan = serde_json::from_str(output_plan)
            .map_err(|e| anyhow::anyhow!("stored job output is invalid: {e}"))?;
        Ok(Self::of(steps.inference_steps, &output))
    }

    fn of(steps: u32, output: &OutputPlan) -> Self {
        Self {
            video_seconds: f64::from(output.frames) / f64::from(output.fps.max(1)),
            pixels: f64::from(output.width) * f64::from(output.height),
            steps,
        }
    }

    /// Its size in seconds of reference video: what a speed multiplies.
    pub fn reference_seconds(&self, honours_steps: bool) -> f64 {
        let steps = if honours_steps {
            f64::from(self.steps) / REFERENCE_STEPS
        } else {
            1.0
        };
        self.video_seconds * (self.pixels / REFERENCE_PIXELS) * steps
    }
}

/// An instance's speed after one more job measured at `sample` seconds per reference second: the
/// moving average from its stored speed; its first measurement replaces the configured `seed` (a
/// guess, often far off for the operator's hardware). `None` when the sample is
/// implausible and should be ignored.
pub fn next_speed(current: Option<(f64, i64)>, seed: f64, sample: f64) -> Option<(f64, i64)> {
    if !sample.is_finite() || !(PLAUSIBLE_SPEED.0..=PLAUSIBLE_SPEED.1).contains(&sample) {
        return None;
    }
    let (speed, samples) = current.unwrap_or((seed, 0));
    if samples >= SETTLED_SAMPLES && !(speed / MAX_JUMP..=speed * MAX_JUMP).contains(&sample) {
        return None;
    }
    if samples == 0 {
        return Some((sample, 1));
    }
    Some((speed + ALPHA * (sample - speed), samples + 1))
}

/// Seconds a running job still needs: what is left of `expected_total` after `elapsed`, and never less
/// than a small floor once it overruns (it is still running), nor negative.
pub fn remaining(expected_total: f64, elapsed: f64) -> f64 {
    let floor = MIN_REMAINING_S.min(expected_total).max(0.0);
    (expected_total - elapsed).max(floor)
}

/// Progress of a job that reports none (Sonic's sampler): the share of its expected time that has
/// elapsed, capped below 1 at `PROGRESS_CAP`.
pub fn progress_estimate(expected_total: f64, elapsed: f64) -> f64 {
    if expected_total.is_nan() || expected_total <= 0.0 || elapsed.is_nan() {
        return 0.0;
    }
    (elapsed / expected_total).clamp(0.0, PROGRESS_CAP)
}

/// When the next queued job starts, in seconds from now, with `slots` jobs running at once: the jobs
/// running now hold a slot each for `busy_for` seconds, then each job `ahead` (its cost, in dispatch
/// order) takes the slot that frees first. More running jobs than slots means there are more slots
/// than this process knows of. `None` without any slot.
///
/// Costs O(`ahead` x log `slots`) whatever `slots` is: remote workers report capacity (up to 64
/// processes x 256 per account), and slots that no job ahead can reach change nothing (with more
/// free slots than jobs ahead, one is still free now), so only those that can are simulated.
pub fn start_after(slots: usize, busy_for: &[f64], ahead: &[f64]) -> Option<f64> {
    let reachable = slots
        .max(busy_for.len())
        .min(busy_for.len() + ahead.len() + 1);
    let idle = reachable - busy_for.len();
    let mut free_at: BinaryHeap<Reverse<FreeAt>> = busy_for
        .iter()
        .map(|busy| busy.max(0.0))
        .chain(std::iter::repeat_n(0.0, idle))
        .map(|at| Reverse(FreeAt(at)))
        .collect();
    for cost in ahead {
        let Reverse(FreeAt(at)) = free_at.pop()?;
        free_at.push(Reverse(FreeAt(at + cost.max(0.0))));
    }
    free_at.peek().map(|Reverse(FreeAt(at))| *at)
}

/// A time a slot frees, ordered totally (for the heap of `start_after`).
#[derive(Debug, Clone, Copy)]
struct FreeAt(f64);

impl PartialEq for FreeAt {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for FreeAt {}

impl PartialOrd for FreeAt {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for FreeAt {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// An engine's seed and whether inference steps change its cost.
#[derive(Debug, Clone, Copy)]
struct EngineCost {
    seed: f64,
    honours_steps: bool,
}

/// The measured speeds as last read or written here.
struct Measured {
    speeds: BTreeMap<(String, String), f64>,
    loaded: Instant,
}

/// Every engine's speed: seeds from configuration, measurements from the database.
pub struct CostModel {
    store: Arc<dyn Store>,
    engines: BTreeMap<String, EngineCost>,
    measured: RwLock<Measured>,
}

impl CostModel {
    /// Seeds each of `engines` from `seeds` (or `default_seed`) and loads the stored measurements.
    pub async fn load(
        store: Arc<dyn Store>,
        engines: &Engines,
        seeds: &BTreeMap<String, f64>,
    ) -> anyhow::Result<Self> {
        let engines = engines
            .all()
            .map(|engine| {
                let capabilities = engine.capabilities();
                let cost = EngineCost {
                    seed: seeds
                        .get(&capabilities.name)
                        .copied()
                        .unwrap_or_else(|| default_seed(&capabilities.name)),
                    honours_steps: capabilities.honours.iter().any(|p| p == "inference_steps"),
                };
                (capabilities.name, cost)
            })
            .collect();
        let model = Self {
            store,
            engines,
            measured: RwLock::new(Measured {
                speeds: BTreeMap::new(),
                loaded: Instant::now(),
            }),
        };
        model.reload().await?;
        Ok(model)
    }

    async fn reload(&self) -> anyhow::Result<()> {
        let stored = self.store.engine_speeds().await?;
        let speeds = stored
            .into_iter()
            .map(|s| ((s.engine, s.instance), s.seconds_per_second))
            .collect();
        *self.measured.write().unwrap_or_else(|e| e.into_inner()) = Measured {
            speeds,
            loaded: Instant::now(),
        };
        Ok(())
    }

    /// Picks up other processes' measurements when the ones here are older than `RELOAD_AFTER`.
    pub async fn reload_if_stale(&self) {
        let stale = self
            .measured
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .loaded
            .elapsed()
            >= RELOAD_AFTER;
        if stale {
            if let Err(err) = self.reload().await {
                tracing::warn!(error = %err, "reading engine speeds failed");
            }
        }
    }

    fn cost_of(&self, engine: &str) -> EngineCost {
        self.engines.get(engine).copied().unwrap_or(EngineCost {
            seed: default_seed(engine),
            honours_steps: true,
        })
    }

    /// Seconds per reference second of `instance` of `engine`; `None`, or an instance never measured:
    /// the median of the engine's measured instances (a few odd ones, say a remote worker's made-up
    /// instances, cannot drag it); never measured at all: its seed.
    pub fn speed(&self, engine: &str, instance: Option<&str>) -> f64 {
        let measured = self.measured.read().unwrap_or_else(|e| e.into_inner());
        if let Some(instance) = instance {
            if let Some(speed) = measured
                .speeds
                .get(&(engine.to_owned(), instance.to_owned()))
            {
                return *speed;
            }
        }
        let mut of_engine: Vec<f64> = measured
            .speeds
            .iter()
            .filter(|((e, _), _)| e == engine)
            .map(|(_, speed)| *speed)
            .collect();
        if of_engine.is_empty() {
            return self.cost_of(engine).seed;
        }
        of_engine.sort_by(f64::total_cmp);
        let middle = of_engine.len() / 2;
        if of_engine.len() % 2 == 1 {
            of_engine[middle]
        } else {
            (of_engine[middle - 1] + of_engine[middle]) / 2.0
        }
    }

    /// The measured instances of `engine` whose names start with `prefix`.
    pub fn instances_named(&self, engine: &str, prefix: &str) -> Vec<String> {
        self.measured
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .speeds
            .keys()
            .filter(|(e, instance)| e == engine && instance.starts_with(prefix))
            .map(|(_, instance)| instance.clone())
            .collect()
    }

    /// Engine seconds `work` is expected to take on `instance` of `engine` (`None`: any instance).
    pub fn estimate(&self, engine: &str, instance: Option<&str>, work: Work) -> f64 {
        let reference = work.reference_seconds(self.cost_of(engine).honours_steps);
        self.speed(engine, instance) * reference
    }

    /// Learns from a succeeded job: `instance` of `engine` generated `work` in `took`. Failures to
    /// store are logged: an estimate is not worth failing a finished job for.
    pub async fn observe(&self, engine: &str, instance: &str, work: Work, took: Duration) {
        let cost = self.cost_of(engine);
        let reference = work.reference_seconds(cost.honours_steps);
        if reference.is_nan() || reference < MIN_TIMED_WORK {
            return;
        }
        let sample = took.as_secs_f64() / reference;
        let now = now_ms();
        let update = |current: Option<&EngineSpeed>| {
            let current = current.map(|s| (s.seconds_per_second, s.samples));
            next_speed(current, cost.seed, sample).map(|(speed, samples)| EngineSpeed {
                engine: engine.to_owned(),
                instance: instance.to_owned(),
                seconds_per_second: speed,
                samples,
                updated_at: now,
            })
        };
        match self
            .store
            .update_engine_speed(engine, instance, &update)
            .await
        {
            Ok(Some(stored)) => {
                tracing::debug!(
                    engine,
                    instance,
                    sample,
                    speed = stored.seconds_per_second,
                    "engine speed updated"
                );
                self.measured
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .speeds
                    .insert((stored.engine, stored.instance), stored.seconds_per_second);
            }
            Ok(None) => {
                tracing::info!(
                    engine,
                    instance,
                    sample,
                    "an implausible engine speed was ignored"
                )
            }
            Err(err) => tracing::warn!(engine, error = %err, "storing an engine speed failed"),
        }
    }
}

/// A job's estimates, in seconds from now: `None` when unknown (no engine slot, or the job has ended).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Eta {
    /// When it starts (0 once running).
    pub start_s: Option<f64>,
    /// When it is done.
    pub done_s: Option<f64>,
}

/// Seconds since `started_at` (zero when unknown or in the future).
fn elapsed_s(started_at: Option<UnixMillis>, now: UnixMillis) -> f64 {
    started_at.map_or(0.0, |at| now.saturating_sub(at).as_secs_f64())
}

impl VideoService {
    /// How many of `engine`'s jobs can run at once: this process's (what the engine says, or the
    /// in-process workers; none without workers or for an engine that runs only remotely) plus what
    /// the remote workers reported.
    async fn slots(&self, engine: &str) -> usize {
        let local = match self.engines.get(engine) {
            Some(_) if self.settings.workers == 0 => 0,
            Some(e) if e.lanes() == Some(0) => 0,
            Some(e) => e.capacity().unwrap_or(self.settings.workers),
            None => 0,
        };
        local + self.remote.slots(engine).await
    }

    /// The job's estimated start and end. Never fails the view it is part of: a problem is logged and
    /// the estimate is unknown.
    pub async fn eta(&self, job: &JobRecord) -> Eta {
        match self.try_eta(job).await {
            Ok(eta) => eta,
            Err(err) => {
                tracing::warn!(job = %job.id, error = %err, "estimating a job's ETA failed");
                Eta::default()
            }
        }
    }

    /// The estimates of a page of jobs with one queue query per engine, not one per job: the
    /// queue ahead of the page's last queued job holds every earlier one's queue too. A job the
    /// shared query does not reach (beyond its cap) is estimated on its own.
    pub async fn etas(&self, jobs: &[JobRecord]) -> std::collections::HashMap<JobId, Eta> {
        let mut etas = std::collections::HashMap::new();
        let mut last_queued: std::collections::BTreeMap<&str, &JobRecord> = Default::default();
        for job in jobs.iter().filter(|j| j.status == JobStatus::Queued) {
            let later = |other: &JobRecord| {
                (job.vtag, job.created_at, job.id.to_string())
                    > (other.vtag, other.created_at, other.id.to_string())
            };
            let slot = last_queued.entry(job.engine.as_str()).or_insert(job);
            if later(slot) {
                *slot = job;
            }
        }
        for (engine, last) in last_queued {
            if let Err(err) = self.page_etas(engine, last, jobs, &mut etas).await {
                tracing::warn!(engine, error = %err, "estimating a page's ETAs failed");
            }
        }
        for job in jobs {
            if let std::collections::hash_map::Entry::Vacant(slot) = etas.entry(job.id) {
                slot.insert(self.eta(job).await);
            }
        }
        etas
    }

    async fn page_etas(
        &self,
        engine: &str,
        last: &JobRecord,
        jobs: &[JobRecord],
        etas: &mut std::collections::HashMap<JobId, Eta>,
    ) -> anyhow::Result<()> {
        let slots = self.slots(engine).await;
        if slots == 0 {
            return Ok(());
        }
        let costs = &self.costs;
        costs.reload_if_stale().await;
        let cost = |params: &str, output: &str| -> anyhow::Result<f64> {
            Ok(costs.estimate(engine, None, Work::from_stored(params, output)?))
        };
        let ahead = self.store.work_ahead(last, MAX_JOBS_CONSIDERED).await?;
        let (busy_for, queued) = self.queue_costs(engine, &ahead)?;
        let position: std::collections::HashMap<&str, usize> = ahead
            .queued
            .iter()
            .enumerate()
            .map(|(i, w)| (w.id.as_str(), i))
            .collect();
        for job in jobs
            .iter()
            .filter(|j| j.status == JobStatus::Queued && j.engine == engine)
        {
            let id = job.id.to_string();
            let before = if job.id == last.id {
                queued.len()
            } else if let Some(index) = position.get(id.as_str()) {
                *index
            } else {
                continue;
            };
            let start = start_after(slots, &busy_for, &queued[..before]);
            let own = cost(&job.params, &job.output_plan)?;
            etas.insert(
                job.id,
                Eta {
                    start_s: start,
                    done_s: start.map(|s| s + own),
                },
            );
        }
        Ok(())
    }

    /// The queue ahead as the scheduler needs it: how long each running job still holds its slot,
    /// and each queued job's cost, in dispatch order.
    fn queue_costs(
        &self,
        engine: &str,
        ahead: &crate::storage::estimates::WorkAhead,
    ) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
        let cost = |params: &str, output: &str| -> anyhow::Result<f64> {
            Ok(self
                .costs
                .estimate(engine, None, Work::from_stored(params, output)?))
        };
        let now = now_ms();
        let busy_for = ahead
            .running
            .iter()
            .map(|w| {
                let total = cost(&w.params, &w.output_plan)?;
                Ok(remaining(total, elapsed_s(w.started_at, now)))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let queued = ahead
            .queued
            .iter()
            .map(|w| cost(&w.params, &w.output_plan))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok((busy_for, queued))
    }

    async fn try_eta(&self, job: &JobRecord) -> anyhow::Result<Eta> {
        let costs = &self.costs;
        let cost = |params: &str, output: &str| -> anyhow::Result<f64> {
            Ok(costs.estimate(&job.engine, None, Work::from_stored(params, output)?))
        };
        match job.status {
            JobStatus::Running => {
                costs.reload_if_stale().await;
                let total = cost(&job.params, &job.output_plan)?;
                let left = remaining(total, elapsed_s(job.started_at, now_ms()));
                Ok(Eta {
                    start_s: Some(0.0),
                    done_s: Some(left),
                })
            }
            JobStatus::Queued => {
                let slots = self.slots(&job.engine).await;
                if slots == 0 {
                    return Ok(Eta::default());
                }
                costs.reload_if_stale().await;
                let ahead = self.store.work_ahead(job, MAX_JOBS_CONSIDERED).await?;
                let (busy_for, queued) = self.queue_costs(&job.engine, &ahead)?;
                let start = start_after(slots, &busy_for, &queued);
                let own = cost(&job.params, &job.output_plan)?;
                Ok(Eta {
                    start_s: start,
                    done_s: start.map(|s| s + own),
                })
            }
            _ => Ok(Eta::default()),
        }
    }
}

#[cfg(test)]
#[path = "eta_tests.rs"]
mod tests;
