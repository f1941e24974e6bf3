//! Remote workers: real `sonicgw worker` processes against an API-only server, the
//! client_credentials grant, and what a worker token can and cannot reach.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use sonicgw::audit::AuditContext;

use crate::helpers::*;
use crate::videos::{follow, form, submit_ok, wait_until_running};

/// A `sonicgw worker` child process, killed on drop.
struct WorkerProcess {
    child: Child,
    _dir: tempfile::TempDir,
}

impl WorkerProcess {
    fn start(
        server: &TestServer,
        credentials: &(String, String),
        engine: &str,
        sim_ms: u64,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let log = std::fs::File::create(dir.path().join("worker.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_sonicgw"))
            .args(["worker", "--engine", engine])
            .env("SONICGW_SERVER", server.url(""))
            .env("SONICGW_WORKER_CLIENT_ID", &credentials.0)
            .env("SONICGW_WORKER_CLIENT_SECRET", &credentials.1)
            .env("SONICGW_DATA_DIR", dir.path().join("data"))
            .env("SONICGW_SIMULATED_ENGINE_MS", sim_ms.to_string())
            .env("SONICGW_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("sonicgw worker starts");
        Self { child, _dir: dir }
    }

    /// SIGKILL: no clean shutdown, like a crashed GPU host.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An API-only server (no in-process workers) with the simulated engine available at intake.
async fn api_only(lease_s: u64) -> TestServer {
    TestServer::start_with(Backend::Sqlite, |c| {
        c.workers = 0;
        c.simulated_engine_ms = 100;
        c.job_lease_s = lease_s;
    })
    .await
}

/// Creates a worker account; its client id and secret.
async fn create_worker(server: &TestServer, name: &str) -> (String, String) {
    let created = server
        .state()
        .workers
        .create(&AuditContext::cli(), name)
        .await
        .unwrap();
    (created.account.client_id, created.client_secret)
}

async fn worker_token(server: &TestServer, credentials: &(String, String)) -> String {
    let response = server
        .client
        .post(server.url("/v1/auth/token"))
        .basic_auth(&credentials.0, Some(&credentials.1))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["scope"], "worker");
    assert!(body.get("refresh_token").is_none(), "{body}");
    body["access_token"].as_str().unwrap().to_owned()
}

async fn lease(server: &TestServer, token: &str, engine: &str) -> reqwest::Response {
    server
        .client
        .post(server.url("/v1/worker/lease"))
        .bearer_auth(token)
        .json(&json!({ "engines": [engine], "wait_s": 0 }))
        .send()
        .await
        .unwrap()
}

async fn lease_ok(server: &TestServer, token: &str, engine: &str) -> Value {
    let response = lease(server, token, engine).await;
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.unwrap()
}

async fn job_status(server: &TestServer, token: &str, id: &str) -> Value {
    server
        .get(&format!("/v1/videos/{id}"), token)
        .await
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn api_only_server_and_a_remote_builtin_worker_process_complete_a_job() {
    let server = api_only(30).await;
    let admin = server.admin().await;
    let credentials = create_worker(&server, "cpu-1").await;
    let created = submit_ok(&server, &admin.access, form("speech_en.wav", &[])).await;
    let id = created["id"].as_str().unwrap();
    assert!(
        created["estimated_start_s"].is_null(),
        "nothing can run it yet: {created}"
    );
    let _worker = WorkerProcess::start(&server, &credentials, "builtin", 0);

    let events = follow(&server, &admin.access, id).await;
    assert_eq!(events.last().unwrap()["status"], "succeeded", "{events:?}");
    let response = server
        .get(&format!("/v1/videos/{id}/content"), &admin.access)
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let video = response.bytes().await.unwrap();
    assert_eq!(&video[4..8], b"ftyp", "an MP4");
    // The gateway labelled the remote result before storing it.
    let aigc = crate::labels::aigc_of_download(&server, &admin.access, id).await;
    assert_eq!(aigc["ProduceID"], id, "{aigc}");

    // The worker process reported its capacity, and its run taught the cost model its speed.
    let store = &server.state().store;
    let since = sonicgw::time::now_ms() - Duration::from_secs(60);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut capacity = store.remote_capacity(since).await.unwrap();
    while capacity.is_empty() && Instant::now() < deadline {
        // Polled: the report comes from another process.
        tokio::time::sleep(Duration::from_millis(50)).await;
        capacity = store.remote_capacity(since).await.unwrap();
    }
    assert_eq!(
        capacity,
        vec![sonicgw::storage::Presence {
            engine: "builtin".into(),
            capacity: 1
        }]
    );
    let speeds = store.engine_speeds().await.unwrap();
    assert!(
        speeds
            .iter()
            .any(|s| s.engine == "builtin" && s.instance == "cpu-1/-" && s.samples == 1),
        "{speeds:?}"
    );
}

async fn report_presence(
    server: &TestServer,
    token: &str,
    process: &str,
    engines: Value,
) -> reqwest::Response {
    server
        .client
        .post(server.url("/v1/worker/presence"))
        .bearer_auth(token)
        .json(&json!({ "process": process, "engines": engines }))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn an_api_only_server_estimates_its_queue_on_the_capacity_remote_workers_report() {
    let server = api_only(30).await;
    let admin = server.admin().await;
    let credentials = create_worker(&server, "gpu-1").await;
    let token = worker_token(&server, &credentials).await;
    let first = submit_ok(&server, &admin.access, form("speech_en.wav", &[])).await;
    let first_id = first["id"].as_str().unwrap();
    assert!(first["estimated_start_s"].is_null() && first["eta_s"].is_null());

    let process = "0123456789abcdef";
    let response = report_presence(
        &server,
        &token,
        process,
        json!([{ "engine": "builtin", "capacity": 2 }]),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["report_every_s"], 10);
    let view = job_status(&server, &admin.access, first_id).await;
    assert_eq!(view["estimated_start_s"], 0.0, "{view}");
    assert!(view["eta_s"].as_f64().unwrap() > 0.0, "{view}");
    submit_ok(&server, &admin.access, form("speech_en.wav", &[])).await;
    let third = submit_ok(&server, &admin.access, form("speech_en.wav", &[])).await;
    assert!(
        third["estimated_start_s"].as_f64().unwrap() > 0.0,
        "two slots, two jobs ahead: {third}"
    );

    // A worker that stops reports zero, and its capacity no longer counts.
    let response = report_presence(
        &server,
        &token,
        process,
        json!([{ "engine": "builtin", "capacity": 0 }]),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let view = job_status(&server, &admin.access, first_id).await;
    assert!(view["estimated_start_s"].is_null(), "{view}");

    // Reports are validated, and only worker tokens may send them.
    for (process, engines, field) in [
        (
            "0123456789abcdef",
            json!([{ "engine": "nope", "capacity": 1 }]),
            "engine",
        ),
        (
            "0123456789abcdef",
            json!([{ "engine": "builtin", "capacity": 257 }]),
            "capacity",
        ),
        (
            "x",
            json!([{ "engine": "builtin", "capacity": 1 }]),
            "process",
        ),
        (
            "0123456789abcdef",
            json!([{ "engine": "builtin", "capacity": 1 }, { "engine": "builtin", "capacity": 1 }]),
            "engine",
        ),
    ] {
        let response = report_presence(&server, &token, process, engines).await;
        let problem = crate::videos::problem(response, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(problem["errors"][0]["field"], field, "{problem}");
    }
    let response = report_presence(
        &server,
        &admin.access,
        process,
        json!([{ "engine": "builtin", "capacity": 9 }]),
    )
    .await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);

    // One account cannot make up capacity without bound.
    for n in 0..63 {
        let response = report_presence(
            &server,
            &token,
            &format!("{n:016x}"),
            json!([{ "engine": "builtin", "capacity": 256 }]),
        )
        .await;
        assert_eq!(response.status(), StatusCode::OK);
    }
    let response = report_presence(
        &server,
        &token,
        "ffffffffffffffff",
        json!([{ "engine": "builtin", "capacity": 256 }]),
    )
    .await;
    let problem = crate::videos::problem(response, StatusCode::TOO_MANY_REQUESTS).await;
    assert_eq!(problem["code"], "too_many_processes");
    let response = report_presence(&server, &token, process, json!([])).await;
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "a reporting process may report again"
    );
}

#[tokio::test]
async fn a_remote_worker_reads_inputs_from_and_stores_its_result_in_s3_through_the_gateway() {
    let bucket = crate::s3::Bucket::create().await;
    let server = TestServer::start_with(Backend::Sqlite, |c| {
        c.workers = 0;
        c.storage_url = bucket.url("gw");
        c.storage_options = bucket.options();
    })
    .await;
    let admin = server.admin().await;
    let credentials = create_worker(&server, "cpu-s3").await;
    let created = submit_ok(&server, &admin.access, form("speech_en.wav", &[])).await;
    let id = created["id"].as_str().unwrap();
    let _worker = WorkerProcess::start(&server, &credentials, "builtin", 0);

    let events = follow(&server, &admin.access, id).await;
    assert_eq!(events.last().unwrap()["status"], "succeeded", "{events:?}");
    let keys = bucket.keys().await;
    assert!(
        keys.iter()
            .any(|k| k.ends_with(&format!("/{id}/video.mp4"))),
        "the result is in the bucket: {keys:?}"
    );
    let video = server
        .get(&format!("/v1/videos/{id}/content"), &admin.access)
        .await
        .bytes()
        .await
        .unwrap();
    assert_eq!(&video[4..8], b"ftyp", "an MP4");
}

#[tokio::test]
async fn job_of_a_killed_worker_process_is_requeued_and_finished_by_another() {
    let server = api_only(3).await;
    let admin = server.admin().await;
    let credentials = create_worker(&server, "cpu-1").await;
    let created = submit_ok(&server, &admin.access, form("speech_en.wav", &[])).await;
    let id = created["id"].as_str().unwrap();
    // A builtin job of this length runs for seconds: the kill lands mid-job.
    let mut doomed = WorkerProcess::start(&server, &credentials, "builtin", 0);
    wait_until_running(&server, &admin.access, id).await;
    doomed.kill();

    let _second = WorkerProcess::start(&server, &credentials, "builtin", 0);
    let events = follow(&server, &admin.access, id).await;
    assert_eq!(events.last().unwrap()["status"], "succeeded", "{events:?}");
    assert!(
        events
            .iter()
            .any(|e| e["status"] == "queued" && e["started_at"].is_string()),
        "the job went back to the queue after its lease expired: {events:?}"
    );
}

#[tokio::test]
async fn a_result_the_gateway_refuses_is_reported_as_the_jobs_failure() {
    // The simulated engine writes a text file, not an MP4.
    let server = api_only(30).await;
    let admin = server.admin().await;
    let credentials = create_worker(&server, "sim-1").await;
    let created = submit_ok(
        &server,
        &admin.access,
        form("speech_en.wav", &[("engine", "simulated")]),
    )
    .await;
    let id = created["id"].as_str().unwrap();
    let _worker = WorkerProcess::start(&server, &credentials, "simulated", 100);
    let events = follow(&server, &admin.access, id).await;
    let last = events.last().unwrap();
    assert_eq!(last["status"], "failed", "{last}");
    assert_eq!(last["error"]["code"], "engine_failed");
}

#[tokio::test]
async fn a_worker_token_is_worth_no_more_than_no_token_outside_the_worker_routes() {
    let server = api_only(30).await;
    let admin = server.admin().await;
    let credentials = create_worker(&server, "gpu-1").await;
    let token = worker_token(&server, &credentials).await;

    for path in [
        "/v1/me",
        "/v1/videos",
        "/v1/engines",
        "/v1/tenants",
        "/v1/audit",
    ] {
        let response = server.get(path, &token).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{path}");
    }
    let doc: Value = server.get_public("/openapi.json").await;
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        if path.starts_with("/v1/worker/") {
            continue;
        }
        let url = server.url(&path.replace('{', "x").replace('}', ""));
        for method in ["get", "post", "put", "patch", "delete"] {
            if item.get(method).is_none() || path.ends_with("/events") {
                continue;
            }
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let without = server
                .client
                .request(method.clone(), &url)
                .send()
                .await
                .unwrap();
            let with = server
                .client
                .request(method.clone(), &url)
                .bearer_auth(&token)
                .send()
                .await
                .unwrap();
            assert!(
                !with.status().is_success() || without.status().is_success(),
                "{method} {path}: {} with the worker token",
                with.status()
            );
            assert_eq!(with.status(), without.status(), "{method} {path}");
            checked += 1;
        }
    }
    assert!(checked > 20, "{checked}");

    // And a user's token is refused on the worker routes.
    let response = lease(&server, &admin.access, "builtin").await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_worker_touches_only_the_job_it_leases() {
    let server = api_only(30).await;
    let admin = server.admin().await;
    let mine = create_worker(&server, "gpu-1").await;
    let other = create_worker(&server, "gpu-2").await;
    let token = worker_token(&server, &mine).await;
    let other_token = worker_token(&server, &other).await;
    let a = submit_ok(&server, &admin.access, form("speech_en.wav", &[])).await;
    let b = submit_ok(&server, &admin.access, form("speech_en.wav", &[])).await;
    let (a, b) = (a["id"].as_str().unwrap(), b["id"].as_str().unwrap());

    let leased = lease_ok(&server, &token, "builtin").await;
    let lease_id = leased["lease_id"].as_str().unwrap();
    let leased_id = leased["job"]["id"].as_str().unwrap();
    let unleased = if leased_id == a { b } else { a };
    assert!(leased["job"]["params"].is_object() && leased["job"]["output"]["frames"].is_u64());

    let input = |id: &str, token: &str, lease: &str| {
        server
            .client
            .get(server.url(&format!("/v1/worker/jobs/{id}/inputs/image")))
            .bearer_auth(token.to_owned())
            .header("x-lease-id", lease.to_owned())
            .send()
    };
    assert_eq!(
        input(leased_id, &token, lease_id).await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(
        input(unleased, &token, lease_id).await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        input(leased_id, &other_token, lease_id)
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_FOUND,
        "another account cannot use this lease"
    );

    let heartbeat = |id: &str, token: &str| {
        server
            .client
            .post(server.url(&format!("/v1/worker/jobs/{id}/heartbeat")))
            .bearer_auth(token.to_owned())
            .json(&json!({ "lease_id": lease_id, "stage": "generating", "progress": 0.5 }))
            .send()
    };
    assert_eq!(
        heartbeat(leased_id, &token).await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(
        heartbeat(unleased, &token).await.unwrap().status(),
        StatusCode::CONFLICT
    );
    assert_eq!(
        heartbeat(leased_id, &other_token).await.unwrap().status(),
        StatusCode::CONFLICT
    );
    let job = job_status(&server, &admin.access, leased_id).await;
    assert_eq!(job["stage"], "generating");

    let fail = server
        .client
        .post(server.url(&format!("/v1/worker/jobs/{unleased}/fail")))
        .bearer_auth(&token)
        .json(
            &json!({ "lease_id": lease_id, "code": "engine_failed", "message": "no",
            "detail": "", "server_side": true, "retry": false }),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(fail.status(), StatusCode::NOT_FOUND);
    let body = b"not even a video".to_vec();
    let upload = server
        .client
        .put(server.url(&format!("/v1/worker/jobs/{unleased}/result")))
        .bearer_auth(&token)
        .header("x-lease-id", lease_id)
        .header("x-content-sha256", hex::encode(Sha256::digest(&body)))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(upload.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        job_status(&server, &admin.access, unleased).await["status"],
        "queued"
    );

    // A failure with retry puts the leased job back in the queue.
    let fail = server
        .client
        .post(server.url(&format!("/v1/worker/jobs/{leased_id}/fail")))
        .bearer_auth(&token)
        .json(
            &json!({ "lease_id": lease_id, "code": "gpu_lost", "message": "the GPU went away",
            "detail": "xid 79", "server_side": true, "retry": true }),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(fail.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        job_status(&server, &admin.access, leased_id).await["status"],
        "queued"
    );
}

#[tokio::test]
async fn a_disabled_accounts_worker_is_refused_at_its_next_call_sqlite() {
    a_disabled_accounts_worker_is_refused_at_its_next_call(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_disabled_accounts_worker_is_refused_at_its_next_call_postgres() {
    a_disabled_accounts_worker_is_refused_at_its_next_call(Backend::Postgres).await;
}

async fn a_disabled_accounts_worker_is_refused_at_its_next_call(backend: Backend) {
    let server = TestServer::start_with(backend, |c| c.workers = 0).await;
    let credentials = create_worker(&server, "gpu-1").await;
    let token = worker_token(&server, &credentials).await;
    assert_eq!(
        lease(&server, &token, "builtin").await.status(),
        StatusCode::NO_CONTENT
    );
    server
        .state()
        .workers
        .set_disabled(&AuditContext::cli(), "gpu-1", true)
        .await
        .unwrap();
    assert_eq!(
        lease(&server, &token, "builtin").await.status(),
        StatusCode::UNAUTHORIZED
    );
    let response = server
        .client
        .post(server.url("/v1/auth/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", credentials.0.as_str()),
            ("client_secret", credentials.1.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let accounts = server.state().workers.list().await.unwrap();
    assert_eq!(accounts.len(), 1);
    assert!(accounts[0].disabled && accounts[0].last_seen_at.is_some());
    assert_ne!(accounts[0].secret_hash, credentials.1, "stored hashed");
    let again = server
        .state()
        .workers
        .create(&AuditContext::cli(), "gpu-1")
        .await;
    assert!(again.is_err(), "names are unique");

    // Enabling the account again does not revive the tokens it had when it was disabled.
    server
        .state()
        .workers
        .set_disabled(&AuditContext::cli(), "gpu-1", false)
        .await
        .unwrap();
    assert_eq!(
        lease(&server, &token, "builtin").await.status(),
        StatusCode::UNAUTHORIZED
    );
    let fresh = worker_token(&server, &credentials).await;
    assert_eq!(
        lease(&server, &fresh, "builtin").await.status(),
        StatusCode::NO_CONTENT
    );

    // A new secret refuses the old secret and every token issued with it.
    let rotated = server
        .state()
        .workers
        .rotate_secret(&AuditContext::cli(), "gpu-1")
        .await
        .unwrap();
    assert_eq!(
        lease(&server, &fresh, "builtin").await.status(),
        StatusCode::UNAUTHORIZED
    );
    let response = server
        .client
        .post(server.url("/v1/auth/token"))
        .basic_auth(&credentials.0, Some(&credentials.1))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let rotated_credentials = (credentials.0.clone(), rotated.client_secret);
    let newest = worker_token(&server, &rotated_credentials).await;
    assert_eq!(
        lease(&server, &newest, "builtin").await.status(),
        StatusCode::NO_CONTENT
    );
}

#[tokio::test]
async fn a_result_with_a_wrong_checksum_or_not_an_mp4_is_refused_and_the_job_keeps_running() {
    let server = api_only(30).await;
    let admin = server.admin().await;
    let credentials = create_worker(&server, "gpu-1").await;
    let token = worker_token(&server, &credentials).await;
    let created = submit_ok(&server, &admin.access, form("speech_en.wav", &[])).await;
    let id = created["id"].as_str().unwrap();
    let leased = lease_ok(&server, &token, "builtin").await;
    let lease_id = leased["lease_id"].as_str().unwrap();

    let upload = |body: Vec<u8>, digest: String| {
        server
            .client
            .put(server.url(&format!("/v1/worker/jobs/{id}/result")))
            .bearer_auth(&token)
            .header("x-lease-id", lease_id)
            .header("x-content-sha256", digest)
            .body(body)
            .send()
    };
    let video = std::fs::read(crate::videos::sample("speech_en.wav")).unwrap();
    let response = upload(video.clone(), hex::encode([0u8; 32])).await.unwrap();
    let problem = crate::videos::problem(response, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(problem["code"], "result_checksum_mismatch");
    let response = upload(video.clone(), hex::encode(Sha256::digest(&video)))
        .await
        .unwrap();
    let problem = crate::videos::problem(response, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(problem["code"], "result_not_mp4");
    assert_eq!(
        job_status(&server, &admin.access, id).await["status"],
        "running"
    );
}

#[tokio::test]
async fn client_credentials_with_a_wrong_secret_is_invalid_client() {
    let server = api_only(30).await;
    let credentials = create_worker(&server, "gpu-1").await;
    for (id, secret) in [
        (credentials.0.as_str(), "wrong-secret"),
        ("wkr_unknown", credentials.1.as_str()),
    ] {
        let started = Instant::now();
        let response = server
            .client
            .post(server.url("/v1/auth/token"))
            .basic_auth(id, Some(secret))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert!(response.headers().contains_key("www-authenticate"));
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], "invalid_client");
        assert!(started.elapsed() < Duration::from_secs(30));
    }
}

#[tokio::test]
async fn an_api_server_without_gpu_access_queues_sonic_jobs_for_a_remote_sonic_worker() {
    let fake = crate::fake_comfyui::FakeComfy::start().await;
    let server = TestServer::start_with(Backend::Sqlite, |c| {
        c.workers = 0;
        c.remote_engines = vec!["sonic".to_owned()];
        c.job_lease_s = 30;
    })
    .await;
    let admin = server.admin().await;
    let credentials = create_worker(&server, "gpu-1").await;
    let created = submit_ok(&server, &admin.access, form("speech_en.wav", &[])).await;
    assert_eq!(created["engine"], "sonic", "sonic is the default engine");
    let id = created["id"].as_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = std::fs::File::create(dir.path().join("worker.log")).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_sonicgw"))
        .args(["worker", "--engine", "sonic", "--comfyui-url", &fake.url])
        .env("SONICGW_SERVER", server.url(""))
        .env("SONICGW_WORKER_CLIENT_ID", &credentials.0)
        .env("SONICGW_WORKER_CLIENT_SECRET", &credentials.1)
        .env("SONICGW_DATA_DIR", dir.path().join("data"))
        .env("SONICGW_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("sonicgw worker starts");
    let _worker = WorkerProcess { child, _dir: dir };
    let events = follow(&server, &admin.access, id).await;
    assert_eq!(events.last().unwrap()["status"], "succeeded", "{events:?}");
    assert_eq!(
        fake.received().len(),
        1,
        "the remote worker ran it on its ComfyUI"
    );
    // Its capacity is its healthy ComfyUI's one place (reported on its own schedule, so polled).
    let store = &server.state().store;
    let since = sonicgw::time::now_ms() - Duration::from_secs(60);
    let deadline = Instant::now() + Duration::from_secs(30);
    let sonic = sonicgw::storage::Presence {
        engine: "sonic".into(),
        capacity: 1,
    };
    while !store.remote_capacity(since).await.unwrap().contains(&sonic) {
        assert!(
            Instant::now() < deadline,
            "the sonic worker never reported its place"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let response = server
        .get(&format!("/v1/videos/{id}/content"), &admin.access)
        .await;
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_failure_message_with_hidden_characters_is_refused_and_the_job_keeps_its_lease() {
    let server = api_only(30).await;
    let admin = server.admin().await;
    let credentials = create_worker(&server, "gpu-1").await;
    let token = worker_token(&server, &credentials).await;
    let created = submit_ok(&server, &admin.access, form("speech_en.wav", &[])).await;
    let id = created["id"].as_str().unwrap();
    let leased = lease_ok(&server, &token, "builtin").await;
    let lease_id = leased["lease_id"].as_str().unwrap();
    // Each shows the user something other than what the text says: a bidirectional mark, hidden
    // tag letters, a soft hyphen, an interlinear annotation.
    for message in [
        "GPU \u{061C}failed",
        "out of memory\u{E0041}\u{E0042}",
        "re\u{00AD}try",
        "\u{FFF9}x\u{FFFB}",
    ] {
        let response = server
            .client
            .post(server.url(&format!("/v1/worker/jobs/{id}/fail")))
            .bearer_auth(&token)
            .json(
                &json!({ "lease_id": lease_id, "code": "engine_failed", "message": message,
                "detail": "", "server_side": true, "retry": false }),
            )
            .send()
            .await
            .unwrap();
        let problem = crate::videos::problem(response, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(
            problem["errors"][0]["field"], "message",
            "{message:?}: {problem}"
        );
    }
    assert_eq!(
        job_status(&server, &admin.access, id).await["status"],
        "running"
    );
}

#[tokio::test]
async fn the_most_capacity_an_account_may_report_estimates_a_queue_at_once() {
    let server = api_only(30).await;
    let admin = server.admin().await;
    let credentials = create_worker(&server, "gpu-1").await;
    let token = worker_token(&server, &credentials).await;
    // 64 processes x 256: every queued job can start now.
    for n in 0..64 {
        let response = report_presence(
            &server,
            &token,
            &format!("{n:016x}"),
            json!([{ "engine": "builtin", "capacity": 256 }]),
        )
        .await;
        assert_eq!(response.status(), StatusCode::OK);
    }
    let mut ids = Vec::new();
    for _ in 0..3 {
        let created = submit_ok(&server, &admin.access, form("speech_en.wav", &[])).await;
        assert_eq!(created["estimated_start_s"], 0.0, "{created}");
        ids.push(created["id"].as_str().unwrap().to_owned());
    }
    let page: Value = server
        .get("/v1/videos?status=queued&limit=100", &admin.access)
        .await
        .json()
        .await
        .unwrap();
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 3, "{page}");
    for item in items {
        assert_eq!(item["estimated_start_s"], 0.0, "{item}");
        assert!(item["eta_s"].as_f64().unwrap() > 0.0, "{item}");
    }
}
