//! Queue fairness and dispatch benchmark: a server with 4 in-process workers and the simulated engine;
//! tenant A submits 200 jobs, then tenant B submits 5. Prints dispatch latency (p50/p99), worker
//! utilisation and B's wait.   `cargo run --release --example queue_bench [engine_ms]`

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::Value;
use sonicgw::config::Config;
use sonicgw::domain::Plan;
use sonicgw::storage::jobs::{JobRecord, JobScope};
use sonicgw::storage::TenantScope;
use sonicgw::time::UnixMillis;

const WORKERS: usize = 4;
const A_JOBS: usize = 200;
const B_JOBS: usize = 5;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let engine_ms: u64 = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(500);
    let data = tempfile::tempdir()?;
    let bench_plan = Plan {
        max_resolution: 512,
        max_duration_s: 30,
        max_inference_steps: 25,
        videos_per_day: 1000,
        max_concurrent_jobs: 1000,
        priority_weight: 1,
        allow_lip_sync_correction: false,
        // Throughput is measured here, not the request rate limit.
        requests_per_minute: u32::MAX / 20,
        tenant_requests_per_minute: None,
        previews_per_minute: 10,
    };
    let config = Config {
        listen: "127.0.0.1:0".parse()?,
        metrics_listen: String::new(),
        data_dir: data.path().to_path_buf(),
        workers: WORKERS,
        simulated_engine_ms: engine_ms,
        default_engine: "simulated".to_owned(),
        plans: BTreeMap::from([
            ("bench".to_owned(), bench_plan),
            (
                "pro".to_owned(),
                Plan {
                    requests_per_minute: u32::MAX / 20,
                    ..Plan::pro()
                },
            ),
        ]),
        ..Config::default()
    };
    let server =
        sonicgw::app::start_with_admin_password(config, Some("bench-admin-password".into()))
            .await?;
    let base = format!("http://{}", server.addr);
    let client = reqwest::Client::new();
    let token = |user: &'static str, password: &'static str, tenant: &'static str| {
        let client = client.clone();
        let base = base.clone();
        async move {
            let body: Value = client
                .post(format!("{base}/v1/auth/token"))
                .form(&[
                    ("grant_type", "password"),
                    ("username", user),
                    ("password", password),
                    ("tenant", tenant),
                ])
                .send()
                .await?
                .json()
                .await?;
            anyhow::Ok(body["access_token"].as_str().unwrap_or_default().to_owned())
        }
    };
    let admin = token("admin", "bench-admin-password", "default").await?;
    for tenant in ["tenant-a", "tenant-b"] {
        let created: Value = client
            .post(format!("{base}/v1/tenants"))
            .bearer_auth(&admin)
            .json(&serde_json::json!({ "name": tenant, "plan": "bench" }))
            .send()
            .await?
            .json()
            .await?;
        client
            .post(format!("{base}/v1/users"))
            .bearer_auth(&admin)
            .json(
                &serde_json::json!({ "username": "submitter", "password": "bench-user-password",
                                        "tenant_id": created["id"] }),
            )
            .send()
            .await?
            .error_for_status()?;
    }
    let a = token("submitter", "bench-user-password", "tenant-a").await?;
    let b = token("submitter", "bench-user-password", "tenant-b").await?;
    let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/samples");
    let face = std::fs::read(samples.join("face_astronaut.png"))?;
    let speech = std::fs::read(samples.join("speech_en.mp3"))?;
    let submit = |token: String| {
        let form = reqwest::multipart::Form::new()
            .part(
                "image",
                reqwest::multipart::Part::bytes(face.clone()).file_name("f.png"),
            )
            .part(
                "audio",
                reqwest::multipart::Part::bytes(speech.clone()).file_name("s.mp3"),
            );
        let request = client
            .post(format!("{base}/v1/videos"))
            .bearer_auth(token)
            .multipart(form);
        async move {
            let response = request.send().await?;
            anyhow::ensure!(
                response.status().is_success(),
                "submit: {}",
                response.text().await?
            );
            anyhow::Ok(())
        }
    };
    let started = Instant::now();
    // Eight uploads in flight: intake (face detection, audio decoding) is the slow part of a submission.
    let uploads: Vec<_> = (0..A_JOBS).map(|_| submit(a.clone())).collect();
    for result in futures::stream::iter(uploads)
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await
    {
        result?;
    }
    let a_submitted = started.elapsed();
    for _ in 0..B_JOBS {
        submit(b.clone()).await?;
    }

    let store = std::sync::Arc::clone(&server.state.store);
    let scope = JobScope {
        tenant: TenantScope::operator(),
        user: None,
    };
    let jobs: Vec<JobRecord> = loop {
        let jobs = store.list_jobs(scope, None, None, 1000).await?;
        if jobs.iter().all(|j| j.status.is_final()) {
            break jobs;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    anyhow::ensure!(
        jobs.iter()
            .all(|j| j.status == sonicgw::domain::JobStatus::Succeeded),
        "every job succeeds"
    );

    // Dispatch latency: from the moment a job could run (queued and its worker free) to its start.
    let mut by_worker: HashMap<&str, Vec<&JobRecord>> = HashMap::new();
    for job in &jobs {
        by_worker
            .entry(job.worker_id.as_ref().map_or("?", |w| w.as_str()))
            .or_default()
            .push(job);
    }
    let mut latencies = Vec::new();
    let mut busy_ms = 0i64;
    for runs in by_worker.values_mut() {
        runs.sort_by_key(|j| j.started_at);
        let mut free_at = i64::MIN;
        for job in runs.iter() {
            let (start, end) = (
                job.started_at.map_or(0, UnixMillis::as_millis),
                job.finished_at.map_or(0, UnixMillis::as_millis),
            );
            latencies.push((start - job.created_at.as_millis().max(free_at)) as f64);
            busy_ms += end - start;
            free_at = end;
        }
    }
    latencies.sort_by(f64::total_cmp);
    let first_created = jobs
        .iter()
        .map(|j| j.created_at.as_millis())
        .min()
        .unwrap_or(0);
    let last_finished = jobs
        .iter()
        .filter_map(|j| j.finished_at)
        .max()
        .map_or(0, UnixMillis::as_millis);
    let utilisation = busy_ms as f64 / (WORKERS as f64 * (last_finished - first_created) as f64);

    let a_tenant = jobs
        .iter()
        .min_by_key(|j| j.created_at)
        .map(|j| j.tenant_id);
    let b_tenant = jobs
        .iter()
        .map(|j| j.tenant_id)
        .find(|t| Some(*t) != a_tenant);
    let b_jobs: Vec<&JobRecord> = jobs
        .iter()
        .filter(|j| Some(j.tenant_id) == b_tenant)
        .collect();
    let b_first = b_jobs.iter().min_by_key(|j| j.created_at).unwrap();
    let b_wait =
        b_first.started_at.map_or(0, UnixMillis::as_millis) - b_first.created_at.as_millis();
    let a_started_before_b = jobs
        .iter()
        .filter(|j| Some(j.tenant_id) != b_tenant)
        .filter(|j| {
            j.started_at.unwrap_or(UnixMillis::EPOCH) > b_first.created_at
                && j.started_at < b_first.started_at
        })
        .count();
    let b_last_done = b_jobs
        .iter()
        .filter_map(|j| j.finished_at)
        .max()
        .map_or(0, UnixMillis::as_millis)
        - b_first.created_at.as_millis();

    println!("queue_bench: {WORKERS} workers, simulated engine {engine_ms} ms/job, A {A_JOBS} jobs then B {B_JOBS}");
    let a_queued_when_b_came = jobs
        .iter()
        .filter(|j| Some(j.tenant_id) == a_tenant)
        .filter(|j| j.started_at.unwrap_or(UnixMillis::from_millis(i64::MAX)) > b_first.created_at)
        .count();
    println!(
        "  A's {A_JOBS} submissions took {:.2} s (8 uploads in flight); A's jobs still queued when B submitted: {a_queued_when_b_came}",
        a_submitted.as_secs_f64()
    );
    println!(
        "  dispatch latency: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} jobs)",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or(0.0),
        latencies.len()
    );
    println!("  worker utilisation: {:.1} %", utilisation * 100.0);
    println!(
        "  B's first job waited {b_wait} ms; A jobs started in between: {a_started_before_b} (bound: {WORKERS}, one per worker); all of B done after {b_last_done} ms"
    );
    server.stop().await?;
    Ok(())
}
