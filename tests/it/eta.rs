//! ETAs over the real server with the simulated engine, whose time per job is known: the 202 answer
//! and every view of a queued or running job carry `estimated_start_s` and `eta_s`; queued jobs are
//! scheduled behind the ones ahead; a running job's ETA only shrinks; measured speeds survive a restart;
//! and a predicted start comes true.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use serde_json::Value;

use crate::helpers::*;
use crate::videos::{follow, form, submit_ok, wait_until_running};

/// Seconds of 512x512 video at 25 steps in a job of the sample face and speech (189 frames at 25 fps),
/// the unit the cost model's speeds are in; checked against each job's output plan.
const SAMPLE_REFERENCE_SECONDS: f64 = 189.0 / 25.0;

/// The seed that makes the model's estimate of one sample job equal `job_ms`, the simulated engine's
/// time per job.
fn seed_for(job_ms: u64) -> f64 {
    job_ms as f64 / 1000.0 / SAMPLE_REFERENCE_SECONDS
}

fn assert_sample_output(job: &Value) {
    assert_eq!(job["output"]["width"], 512, "{job}");
    assert_eq!(job["output"]["height"], 512, "{job}");
    assert_eq!(job["output"]["fps"], 25, "{job}");
    assert_eq!(job["output"]["frames"], 189, "{job}");
    assert_eq!(job["params"]["inference_steps"], 25, "{job}");
}

/// A server whose one worker runs simulated jobs of `job_ms`, with the model seeded to `seed`.
async fn simulated(backend: Backend, job_ms: u64, seed: f64) -> TestServer {
    TestServer::start_with(backend, |c| {
        c.simulated_engine_ms = job_ms;
        c.default_engine = "simulated".to_owned();
        c.engine_speed_seed.insert("simulated".to_owned(), seed);
    })
    .await
}

async fn job(server: &TestServer, token: &str, id: &str) -> Value {
    server
        .get(&format!("/v1/videos/{id}"), token)
        .await
        .json()
        .await
        .unwrap()
}

fn seconds(job: &Value, field: &str) -> f64 {
    job[field]
        .as_f64()
        .unwrap_or_else(|| panic!("{field} is not a number: {job}"))
}

fn unix_now_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn rfc3339_s(value: &Value) -> f64 {
    let at = sonicgw::time::UnixMillis::parse_rfc3339(value.as_str().unwrap()).unwrap();
    at.as_millis() as f64 / 1000.0
}

async fn measured_speed_survives_a_restart(backend: Backend) {
    // A seed far above the engine's real speed: the first job pulls the estimate well below it.
    let seed = 100.0;
    let server = simulated(backend, 200, seed).await;
    let admin = server.admin().await;
    let first = submit_ok(&server, &admin.access, form("speech_en.wav", &[])).await;
    assert_sample_output(&first);
    let events = follow(&server, &admin.access, first["id"].as_str().unwrap()).await;
    assert_eq!(events.last().unwrap()["status"], "succeeded");
    let learned = server.state().videos.costs.speed("simulated", None);
    assert!(learned < seed * 0.8, "{learned}");

    let server = server.restart_with(|c| c.workers = 0).await;
    assert_eq!(
        server.state().videos.costs.speed("simulated", None),
        learned
    );
    // Without a worker nothing can start it: no estimate.
    let admin = server.admin().await;
    let waiting = submit_ok(&server, &admin.access, form("speech_en.wav", &[])).await;
    assert!(waiting["eta_s"].is_null(), "{waiting}");
    assert!(waiting["estimated_start_s"].is_null(), "{waiting}");

    // With a worker, the job is estimated at the learned speed, not the seed (a long job this time,
    // so that it is still queued or running when looked at).
    let server = server
        .restart_with(|c| {
            c.workers = 1;
            c.simulated_engine_ms = 60_000;
        })
        .await;
    let admin = server.admin().await;
    let waiting = job(&server, &admin.access, waiting["id"].as_str().unwrap()).await;
    let expected = learned * SAMPLE_REFERENCE_SECONDS;
    let eta = seconds(&waiting, "eta_s");
    // Queued (nothing ahead) or just started: at most a second of it has passed.
    assert!(
        eta <= expected + 0.05 && eta >= expected - 1.0,
        "eta {eta}, expected {expected}: {waiting}"
    );
}

#[tokio::test]
async fn measured_engine_speed_survives_a_restart_sqlite() {
    measured_speed_survives_a_restart(Backend::Sqlite).await;
}

#[tokio::test]
async fn measured_engine_speed_survives_a_restart_postgres() {
    measured_speed_survives_a_restart(Backend::Postgres).await;
}

#[tokio::test]
async fn queued_jobs_start_after_the_jobs_ahead_of_them() {
    // Jobs that outlast the test: the first runs, the others wait behind it.
    let job_ms = 60_000;
    let server = simulated(Backend::Sqlite, job_ms, seed_for(job_ms)).await;
    let admin = server.admin().await;
    let mut ids = Vec::new();
    for _ in 0..4 {
        let created = submit_ok(&server, &admin.access, form("speech_en.wav", &[])).await;
        assert_sample_output(&created);
        // The 202 answer carries the estimate.
        assert!(created["estimated_start_s"].as_f64().is_some(), "{created}");
        assert!(created["eta_s"].as_f64().is_some(), "{created}");
        ids.push(created["id"].as_str().unwrap().to_owned());
    }
    wait_until_running(&server, &admin.access, &ids[0]).await;
    let running = job(&server, &admin.access, &ids[0]).await;
    assert_eq!(running["estimated_start_s"], 0.0, "{running}");
    let remaining = seconds(&running, "eta_s");
    assert!(remaining > 0.0 && remaining <= 60.0, "{running}");

    let cost = job_ms as f64 / 1000.0;
    let mut previous_start = 0.0;
    for (i, id) in ids.iter().enumerate().skip(1) {
        let queued = job(&server, &admin.access, id).await;
        assert_eq!(queued["status"], "queued", "{queued}");
        assert_eq!(queued["queue_position"], i as i64 - 1, "{queued}");
        let start = seconds(&queued, "estimated_start_s");
        let eta = seconds(&queued, "eta_s");
        assert!(
            start > previous_start,
            "job {i} starts at {start}, before {previous_start}"
        );
        // One slot: each job starts when the one ahead of it is done, and takes its own cost.
        let expected_start = remaining + cost * (i - 1) as f64;
        assert!(
            (start - expected_start).abs() < 1.0,
            "job {i}: start {start}, expected {expected_start}"
        );
        assert!((eta - start - cost).abs() < 0.2, "job {i}: {queued}");
        previous_start = start;
    }

    // A page estimates all its jobs with one queue query per engine: the same answers.
    let page: Value = server
        .get("/v1/videos?status=queued", &admin.access)
        .await
        .json()
        .await
        .unwrap();
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 3, "{page}");
    for item in items {
        let alone = job(&server, &admin.access, item["id"].as_str().unwrap()).await;
        for field in ["estimated_start_s", "eta_s"] {
            let (listed, single) = (seconds(item, field), seconds(&alone, field));
            assert!(
                (listed - single).abs() < 0.5,
                "{field}: listed {listed}, alone {single}"
            );
        }
    }
}

#[tokio::test]
async fn a_running_jobs_eta_only_shrinks_until_it_is_done() {
    let job_ms = 3_000;
    let server = simulated(Backend::Sqlite, job_ms, seed_for(job_ms)).await;
    let admin = server.admin().await;
    let created = submit_ok(&server, &admin.access, form("speech_en.wav", &[])).await;
    let events = follow(&server, &admin.access, created["id"].as_str().unwrap()).await;
    let etas: Vec<f64> = events
        .iter()
        .filter(|e| e["status"] == "running")
        .map(|e| seconds(e, "eta_s"))
        .collect();
    assert!(
        etas.len() >= 3,
        "too few progress events to compare: {etas:?}"
    );
    for pair in etas.windows(2) {
        assert!(pair[1] <= pair[0], "the ETA grew: {etas:?}");
    }
    assert!(etas.iter().all(|eta| *eta >= 0.0), "{etas:?}");
    assert!(
        etas[0] > etas[etas.len() - 1] + 1.0,
        "the ETA did not shrink: {etas:?}"
    );
    let done = events.last().unwrap();
    assert_eq!(done["status"], "succeeded");
    assert!(
        done["eta_s"].is_null() && done["estimated_start_s"].is_null(),
        "{done}"
    );
}

#[tokio::test]
async fn predicted_start_of_the_third_queued_job_comes_true() {
    let job_ms = 2_000;
    let server = simulated(Backend::Sqlite, job_ms, seed_for(job_ms)).await;
    let admin = server.admin().await;
    let mut ids = Vec::new();
    for _ in 0..4 {
        let created = submit_ok(&server, &admin.access, form("speech_en.wav", &[])).await;
        ids.push(created["id"].as_str().unwrap().to_owned());
    }
    let third = job(&server, &admin.access, &ids[3]).await;
    let asked_at = unix_now_s();
    assert_eq!(third["status"], "queued", "{third}");
    let predicted = seconds(&third, "estimated_start_s");
    // Follow the third queued job to its end and see when it really started.
    let mut stream = server
        .client
        .get(server.url(&format!("/v1/videos/{}/events", ids[3])))
        .bearer_auth(&admin.access)
        .send()
        .await
        .unwrap()
        .bytes_stream();
    let ended = async {
        let mut seen = String::new();
        while let Some(chunk) = stream.next().await {
            seen.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
            if seen.contains("event: end") {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), ended)
        .await
        .expect("the third queued job finished in time");
    let finished = job(&server, &admin.access, &ids[3]).await;
    assert_eq!(finished["status"], "succeeded", "{finished}");
    let actual = rfc3339_s(&finished["started_at"]) - asked_at;
    let error = actual - predicted;
    // Three jobs of 2 s ahead (one partly done): the prediction is about 4-6 s; dispatching,
    // storing and progress writes add a little to each job.
    assert!(
        error.abs() < 1.5,
        "predicted start {predicted:.2} s, actual {actual:.2} s"
    );
}

#[tokio::test]
async fn the_openapi_document_describes_the_estimates() {
    let server = TestServer::start().await;
    let doc: Value = server.get_public("/openapi.json").await;
    let job = &doc["components"]["schemas"]["JobView"]["properties"];
    for field in ["eta_s", "estimated_start_s"] {
        let schema = job[field].to_string();
        assert!(schema.contains("number"), "{field}: {schema}");
        assert!(schema.contains("null"), "{field} is nullable: {schema}");
    }
}
