//! GPU pool benchmark: the `sonic` engine over 4 fake ComfyUI servers that take a fixed 2 s per
//! prompt (the test suite's protocol-faithful fake), a warm-up of 8 jobs so the cost model has
//! learnt the speed, then a burst of 100 jobs from 3 tenants. Prints instance utilisation,
//! dispatch gaps and the error of the start time each job was promised when it was submitted.
//!   `cargo run --release --example gpu_pool_bench [instances] [jobs]`

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::Value;
use sonicgw::config::Config;
use sonicgw::domain::{JobStatus, Plan};
use sonicgw::storage::jobs::{JobRecord, JobScope};
use sonicgw::storage::TenantScope;
use sonicgw::time::UnixMillis;

#[allow(dead_code)]
#[path = "../tests/it/fake_comfyui.rs"]
mod fake_comfyui;

use fake_comfyui::{FakeComfy, Mode};

const PROMPT_TIME: Duration = Duration::from_secs(2);
const WARM_UP: usize = 8;
const TENANTS: [&str; 3] = ["tenant-a", "tenant-b", "tenant-c"];

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let instances: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(4);
    let burst: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(100);

    let mut fakes = Vec::new();
    for _ in 0..instances {
        let fake = FakeComfy::start().await;
        fake.set_mode(Mode::Slow(PROMPT_TIME));
        fakes.push(fake);
    }
    let data = tempfile::tempdir()?;
    let bench_plan = Plan {
        max_resolution: 512,
        max_duration_s: 30,
        max_inference_steps: 25,
        videos_per_day: 10_000,
        max_concurrent_jobs: 10_000,
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
        comfyui_urls: fakes.iter().map(|f| f.url.clone()).collect(),
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
    let mut tokens = Vec::new();
    for tenant in TENANTS {
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
        tokens.push(token("submitter", "bench-user-password", tenant).await?);
    }
    // Wait until every instance passed its first health check.
    let started_waiting = Instant::now();
    loop {
        let engines: Value = client
            .get(format!("{base}/v1/engines"))
            .bearer_auth(&admin)
            .send()
            .await?
            .json()
            .await?;
        let healthy = engines["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["name"] == "sonic")
            .flat_map(|e| e["instances"].as_array().cloned().unwrap_or_default())
            .filter(|i| i["healthy"] == true)
            .count();
        if healthy == instances {
            break;
        }
        anyhow::ensure!(
            started_waiting.elapsed() < Duration::from_secs(30),
            "instances healthy"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/samples");
    let face = std::fs::read(samples.join("face_astronaut.png"))?;
    let speech = std::fs::read(samples.join("speech_en.mp3"))?;
    // Returns (job id, promised start in seconds from submission).
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
        let client = client.clone();
        let url = format!("{base}/v1/videos");
        let (face, speech) = (face.clone(), speech.clone());
        async move {
            // Each user may have 2 uploads being checked at once: wait and retry past that.
            let mut form = Some(form);
            let response = loop {
                let body = form.take().unwrap_or_else(|| {
                    reqwest::multipart::Form::new()
                        .part(
                            "image",
                            reqwest::multipart::Part::bytes(face.clone()).file_name("f.png"),
                        )
                        .part(
                            "audio",
                            reqwest::multipart::Part::bytes(speech.clone()).file_name("s.mp3"),
                        )
                });
                let response = client
                    .post(&url)
                    .bearer_auth(&token)
                    .multipart(body)
                    .send()
                    .await?;
                if response.status() != reqwest::StatusCode::TOO_MANY_REQUESTS {
                    break response;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            anyhow::ensure!(
                response.status().is_success(),
                "submit: {}",
                response.text().await?
            );
            let body: Value = response.json().await?;
            anyhow::Ok((
                body["id"].as_str().unwrap_or_default().to_owned(),
                body["estimated_start_s"].as_f64(),
            ))
        }
    };
    let store = std::sync::Arc::clone(&server.state.store);
    let scope = JobScope {
        tenant: TenantScope::operator(),
        user: None,
    };
    let all_final = || async {
        loop {
            let jobs = store.list_jobs(scope, None, None, 1000).await?;
            if jobs.iter().all(|j| j.status.is_final()) {
                return anyhow::Ok(jobs);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };

    for i in 0..WARM_UP {
        submit(tokens[i % TENANTS.len()].clone()).await?;
    }
    all_final().await?;

    let burst_began = Instant::now();
    let uploads: Vec<_> = (0..burst)
        .map(|i| submit(tokens[i % TENANTS.len()].clone()))
        .collect();
    let mut promised: HashMap<String, Option<f64>> = HashMap::new();
    for result in futures::stream::iter(uploads)
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await
    {
        let (id, start) = result?;
        promised.insert(id, start);
    }
    let submitted_in = burst_began.elapsed();
    let jobs = all_final().await?;
    let burst_jobs: Vec<&JobRecord> = jobs
        .iter()
        .filter(|j| promised.contains_key(&j.id.to_string()))
        .collect();
    anyhow::ensure!(
        burst_jobs.len() == burst && burst_jobs.iter().all(|j| j.status == JobStatus::Succeeded),
        "every burst job succeeds"
    );

    // Utilisation and dispatch gaps, from when each instance ran each prompt of the burst.
    let mut busy = Duration::ZERO;
    let mut gaps = Vec::new();
    let (mut first, mut last) = (None::<Instant>, None::<Instant>);
    for fake in &fakes {
        let mut runs = fake.timeline();
        runs.sort_by_key(|r| r.1);
        let runs: Vec<_> = runs.into_iter().filter(|r| r.1 >= burst_began).collect();
        for pair in runs.windows(2) {
            gaps.push(pair[1].1.duration_since(pair[0].2).as_secs_f64() * 1000.0);
        }
        for run in &runs {
            busy += run.2 - run.1;
            first = Some(first.map_or(run.1, |f: Instant| f.min(run.1)));
            last = Some(last.map_or(run.2, |l: Instant| l.max(run.2)));
        }
    }
    let span = last.zip(first).map_or(Duration::ZERO, |(l, f)| l - f);
    let utilisation = busy.as_secs_f64() / (instances as f64 * span.as_secs_f64());
    gaps.sort_by(f64::total_cmp);

    // The promised start against the real one (claim time), in seconds from submission.
    let mut errors = Vec::new();
    for job in &burst_jobs {
        let Some(Some(promised)) = promised.get(&job.id.to_string()) else {
            continue;
        };
        let actual = job.started_at.map_or(0, UnixMillis::as_millis) - job.created_at.as_millis();
        errors.push((actual as f64 / 1000.0 - promised, actual as f64 / 1000.0));
    }
    let mut absolute: Vec<f64> = errors.iter().map(|(e, _)| e.abs()).collect();
    absolute.sort_by(f64::total_cmp);
    let waited: Vec<&(f64, f64)> = errors.iter().filter(|(_, a)| *a >= 10.0).collect();
    let relative: f64 =
        waited.iter().map(|(e, a)| e.abs() / a).sum::<f64>() / waited.len().max(1) as f64;
    let bias: f64 = errors.iter().map(|(e, _)| e).sum::<f64>() / errors.len().max(1) as f64;

    println!(
        "gpu_pool_bench: {instances} fake ComfyUI instances at {} s per prompt, {WARM_UP} warm-up jobs, a burst of {burst} from {} tenants",
        PROMPT_TIME.as_secs(),
        TENANTS.len()
    );
    println!(
        "  burst submitted in {:.2} s (8 uploads in flight); all done {:.1} s after the burst began",
        submitted_in.as_secs_f64(),
        last.map_or(0.0, |l| (l - burst_began).as_secs_f64())
    );
    println!(
        "  instance utilisation: {:.1} % (busy {:.1} s of {instances} x {:.1} s)",
        utilisation * 100.0,
        busy.as_secs_f64(),
        span.as_secs_f64()
    );
    println!(
        "  dispatch gap on an instance (previous prompt ended -> next started, backlog waiting): p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms ({} gaps)",
        percentile(&gaps, 0.5),
        percentile(&gaps, 0.99),
        gaps.last().copied().unwrap_or(f64::NAN),
        gaps.len()
    );
    println!(
        "  promised start vs actual: |error| p50 {:.2} s, p90 {:.2} s, max {:.2} s; mean signed error {:+.2} s; mean relative error of jobs that waited >= 10 s: {:.1} % ({} of {} jobs had an estimate)",
        percentile(&absolute, 0.5),
        percentile(&absolute, 0.9),
        absolute.last().copied().unwrap_or(f64::NAN),
        bias,
        relative * 100.0,
        errors.len(),
        burst
    );
    server.stop().await?;
    Ok(())
}
