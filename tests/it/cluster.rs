//! Issue 9's cluster as real processes on the real PostgreSQL, Redis and S3 (moto): an issuer
//! holding the keys, two API replicas verifying with its JWKS (no private key, `serve
//! --no-migrate`), and two `sonicgw worker` processes running the builtin engine, leasing from the
//! issuer (the address that also answers `/v1/auth/*`, as the README's operator's page says).
//! Under a steady load of submissions (each with an `Idempotency-Key`, retried on the other replica
//! when one fails) and downloads, one API replica is SIGKILLed and restarted, then one worker
//! while it runs a job. Then: no job lost, none run to completion twice, no submission charged
//! twice, every video downloadable through every replica, and a revocation made on one replica
//! refused by the others within 1 s.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::multipart::{Form, Part};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::*;
use crate::redis_replicas::Replica;
use crate::s3::Bucket;

/// Logical submissions of the load, at least: it goes on until worker 1 was killed in a job.
const SUBMISSIONS: usize = 8;
/// ... and at most.
const MAX_SUBMISSIONS: usize = 20;
/// Jobs of the load user in flight at most (the plan allows more; this keeps the two cores busy,
/// not swamped).
const IN_FLIGHT: usize = 3;

/// A `sonicgw worker` child process, killed on drop.
struct Worker {
    child: Child,
}

impl Worker {
    fn start(server: &str, credentials: &(String, String), data_dir: &std::path::Path) -> Self {
        std::fs::create_dir_all(data_dir).unwrap();
        let log = std::fs::File::create(data_dir.join("worker.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_sonicgw"))
            .args(["worker", "--engine", "builtin"])
            .env("SONICGW_SERVER", server)
            .env("SONICGW_WORKER_CLIENT_ID", &credentials.0)
            .env("SONICGW_WORKER_CLIENT_SECRET", &credentials.1)
            .env("SONICGW_DATA_DIR", data_dir)
            .env("SONICGW_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("sonicgw worker starts");
        Self { child }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `sonicgw admin create-worker <name>`: the account's id, client id and secret.
fn create_worker(env: &[(&str, String)], name: &str) -> (String, (String, String)) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sonicgw"));
    command.args(["admin", "create-worker", name]);
    for (key, value) in env {
        command.env(key, value);
    }
    let output = command.output().expect("sonicgw admin runs");
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8(output.stdout).unwrap();
    let field = |prefix: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("{prefix} in {text}"))
            .split(' ')
            .next()
            .unwrap()
            .to_owned()
    };
    let account = text
        .lines()
        .find_map(|l| l.strip_prefix(&format!("created worker {name} (")))
        .and_then(|rest| rest.strip_suffix(')'))
        .expect("the account id")
        .to_owned();
    (
        account,
        (
            field("SONICGW_WORKER_CLIENT_ID="),
            field("SONICGW_WORKER_CLIENT_SECRET="),
        ),
    )
}

/// One second of tone: the builtin engine's shortest useful job.
fn short_audio(dir: &std::path::Path) -> Vec<u8> {
    let path = dir.join("tone.wav");
    let status = Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=220:duration=1",
        ])
        .args(["-ar", "16000", "-ac", "1", "-y"])
        .arg(&path)
        .status()
        .expect("ffmpeg runs");
    assert!(status.success());
    std::fs::read(path).unwrap()
}

fn form(audio: &[u8]) -> Form {
    Form::new()
        .part(
            "image",
            Part::bytes(std::fs::read(crate::videos::sample("face_astronaut.png")).unwrap())
                .file_name("face.png"),
        )
        .part("audio", Part::bytes(audio.to_vec()).file_name("tone.wav"))
}

struct Load<'a> {
    client: reqwest::Client,
    token: String,
    audio: Vec<u8>,
    replicas: [&'a str; 2],
}

impl Load<'_> {
    /// Submits with `key` through replica `first`, retrying through the other when a replica does
    /// not answer (killed mid-request): the same key, so at most one job. The job id.
    async fn submit(&self, key: &str, first: usize) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut target = first;
        loop {
            let sent = self
                .client
                .post(format!("{}/v1/videos", self.replicas[target]))
                .bearer_auth(&self.token)
                .header("Idempotency-Key", key)
                .multipart(form(&self.audio))
                .send()
                .await;
            match sent {
                Ok(response) if response.status().is_success() => {
                    let job: Value = response.json().await.unwrap();
                    return job["id"].as_str().unwrap().to_owned();
                }
                Ok(response) if response.status().is_server_error() => {}
                Ok(response) => panic!(
                    "submission {key} refused: {} {}",
                    response.status(),
                    response.text().await.unwrap()
                ),
                Err(_) => {}
            }
            assert!(
                Instant::now() < deadline,
                "no replica took submission {key}"
            );
            target = 1 - target;
        }
    }

    /// The job as some live replica sees it.
    async fn job(&self, id: &str) -> Value {
        for base in self.replicas.iter().cycle().take(4) {
            if let Ok(response) = self
                .client
                .get(format!("{base}/v1/videos/{id}"))
                .bearer_auth(&self.token)
                .send()
                .await
            {
                if response.status() == StatusCode::OK {
                    return response.json().await.unwrap();
                }
            }
        }
        panic!("no replica answered for job {id}");
    }

    /// The video's bytes through `base`.
    async fn download(&self, base: &str, id: &str) -> Vec<u8> {
        let response = self
            .client
            .get(format!("{base}/v1/videos/{id}/content"))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{base} job {id}");
        response.bytes().await.unwrap().to_vec()
    }
}

#[tokio::test]
async fn cluster_survives_losing_an_api_replica_and_a_worker() {
    let started = Instant::now();
    let db = PgDatabase::create().await;
    let bucket = Bucket::create().await;
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("sonicgw-test-{}", uuid::Uuid::new_v4().simple());
    let config = dir.path().join("cluster.toml");
    std::fs::write(
        &config,
        "[plans.cluster]\nmax_resolution = 512\nmax_duration_s = 30\nmax_inference_steps = 25\n\
         videos_per_day = 1000\nmax_concurrent_jobs = 8\npriority_weight = 1\n\
         allow_lip_sync_correction = false\nrequests_per_minute = 100000\n",
    )
    .unwrap();
    let storage_options = bucket
        .options()
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let iss = "http://sonicgw.cluster".to_owned();
    let common = |name: &str| -> Vec<(&'static str, String)> {
        vec![
            ("SONICGW_CONFIG", config.display().to_string()),
            ("SONICGW_DATABASE_URL", db.url.clone()),
            ("SONICGW_REDIS_URL", redis_url()),
            ("SONICGW_REDIS_PREFIX", prefix.clone()),
            ("SONICGW_STORAGE_URL", bucket.url("cluster")),
            ("SONICGW_STORAGE_OPTIONS", storage_options.clone()),
            (
                "SONICGW_URL_SIGNING_SECRET",
                "a-shared-url-signing-secret-of-the-cluster".to_owned(),
            ),
            ("SONICGW_ISSUER", iss.clone()),
            ("SONICGW_WORKERS", "0".to_owned()),
            // A dead worker's job is taken over within seconds.
            ("SONICGW_JOB_LEASE_S", "6".to_owned()),
            // Every prompt reaction below comes from the bus, not from this poll.
            ("SONICGW_JOB_POLL_S", "30".to_owned()),
            ("SONICGW_LOG", "warn".to_owned()),
            (
                "SONICGW_DATA_DIR",
                dir.path().join(name).display().to_string(),
            ),
        ]
    };
    let issuer = Replica::start(&common("issuer"), dir.path().join("issuer.log"));
    let verifier = |name: &str, listen: Option<&str>| {
        let mut env = common(name);
        env.push((
            "SONICGW_JWKS_URL",
            format!("{}/.well-known/jwks.json", issuer.base),
        ));
        if let Some(listen) = listen {
            env.push(("SONICGW_LISTEN", listen.to_owned()));
        }
        Replica::start_with_args(
            &["serve", "--no-migrate"],
            &env,
            dir.path().join(format!("{name}.log")),
        )
    };
    let mut a = verifier("a", None);
    let b = verifier("b", None);
    for name in ["a", "b"] {
        let keys = dir.path().join(name).join("keys");
        // No token-signing key. (A replica labels the results remote workers upload, so without an
        // operator's `c2pa_cert`/`c2pa_key` it makes its own self-signed C2PA chain there.)
        let held = std::fs::read_dir(&keys)
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| {
                        !e.file_name()
                            .to_string_lossy()
                            .trim_start_matches('.')
                            .starts_with("c2pa-")
                    })
                    .count()
            })
            .unwrap_or(0);
        assert_eq!(held, 0, "API replica {name} holds no token-signing key");
    }
    let (w1_account, w1) = create_worker(&common("admin-cli"), "w1");
    let (_, w2) = create_worker(&common("admin-cli"), "w2");
    let mut worker1 = Worker::start(&issuer.base, &w1, &dir.path().join("w1"));
    let _worker2 = Worker::start(&issuer.base, &w2, &dir.path().join("w2"));

    // The load's user, in a tenant whose plan the load does not reach; its admin acts on replica A.
    let client = reqwest::Client::new();
    let token = |username: &'static str, password: &'static str| {
        let client = client.clone();
        let issuer = issuer.base.clone();
        async move {
            let mut form = vec![
                ("grant_type", "password"),
                ("username", username),
                ("password", password),
            ];
            if username != "admin" {
                form.push(("tenant", "load"));
            }
            let body: Value = client
                .post(format!("{issuer}/v1/auth/token"))
                .form(&form)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            body["access_token"].as_str().expect("a token").to_owned()
        }
    };
    let admin = token("admin", ADMIN_PASSWORD).await;
    let post = |base: String, path: &'static str, body: Value, token: String| {
        let client = client.clone();
        async move {
            let response = client
                .post(format!("{base}{path}"))
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::CREATED, "{path}");
            response.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let tenant = post(
        a.base.clone(),
        "/v1/tenants",
        json!({ "name": "load", "plan": "cluster" }),
        admin.clone(),
    )
    .await;
    post(
        a.base.clone(),
        "/v1/users",
        json!({ "username": "loader", "password": USER_PASSWORD, "role": "user", "tenant_id": tenant }),
        admin.clone(),
    )
    .await;
    let bystander = post(
        a.base.clone(),
        "/v1/users",
        json!({ "username": "bystander", "password": USER_PASSWORD, "role": "user", "tenant_id": tenant }),
        admin.clone(),
    )
    .await;
    let (a_base, b_base) = (a.base.clone(), b.base.clone());
    let load = Load {
        client: client.clone(),
        token: token("loader", USER_PASSWORD).await,
        audio: short_audio(dir.path()),
        replicas: [&a_base, &b_base],
    };

    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let mut jobs: Vec<String> = Vec::new();
    let mut downloaded = std::collections::BTreeSet::new();
    let mut a_killed = false;
    let mut worker_killed = false;
    let deadline = Instant::now() + Duration::from_secs(110);
    loop {
        assert!(
            Instant::now() < deadline,
            "the load did not finish: {jobs:?}"
        );
        let mut unfinished = 0;
        for id in &jobs {
            let job = load.job(id).await;
            match job["status"].as_str().unwrap() {
                "succeeded" => {
                    if downloaded.insert(id.clone()) {
                        // A download in the load, through the replica the round-robin names.
                        let base = load.replicas[downloaded.len() % 2];
                        let _ = load
                            .client
                            .get(format!("{base}/v1/videos/{id}/content"))
                            .bearer_auth(&load.token)
                            .send()
                            .await;
                    }
                }
                "queued" | "running" => unfinished += 1,
                other => panic!("job {id} ended {other}: {job}"),
            }
        }
        let wanted = if worker_killed {
            SUBMISSIONS
        } else {
            MAX_SUBMISSIONS
        };
        if jobs.len() >= wanted && unfinished == 0 {
            break;
        }
        if jobs.len() < wanted && unfinished < IN_FLIGHT {
            let n = jobs.len();
            let key = format!("load-{n}");
            if n == 3 && !a_killed {
                // Replica A dies while a submission is on its way to it; the client retries on B.
                let (id, ()) = tokio::join!(load.submit(&key, 0), async {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    a.kill();
                });
                a_killed = true;
                jobs.push(id);
                // Back on the same address, as a restarted pod behind its Service.
                let listen = a_base.trim_start_matches("http://").to_owned();
                a = verifier("a", Some(&listen));
                assert_eq!(a.base, a_base);
            } else {
                jobs.push(load.submit(&key, n % 2).await);
            }
        }
        if a_killed && !worker_killed {
            // Worker 1 dies while it runs a job: its lease runs out and worker 2 takes the job.
            let running: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM jobs WHERE status = 'running' AND worker_id LIKE $1",
            )
            .bind(format!("remote-{}-%", w1_account.replace('-', "")))
            .fetch_one(&pool)
            .await
            .unwrap();
            if running > 0 {
                worker1.kill();
                worker_killed = true;
                worker1 = Worker::start(&issuer.base, &w1, &dir.path().join("w1"));
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(worker_killed, "worker 1 never ran a job to be killed in");

    // No job lost, none charged twice: one job per logical submission, all succeeded.
    let distinct: std::collections::BTreeSet<_> = jobs.iter().collect();
    assert_eq!(distinct.len(), jobs.len());
    let charged: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM jobs j JOIN users u ON u.id = j.user_id WHERE u.username = 'loader'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        charged,
        jobs.len() as i64,
        "one job, one charge, per submission"
    );
    // None ran to completion twice: one success recorded per job, and some job ran more than once.
    let successes: Vec<(String, i64)> = sqlx::query_as(
        "SELECT target, count(*) FROM audit_log WHERE action = 'video.succeeded' GROUP BY target",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(successes.len(), jobs.len(), "{successes:?}");
    assert!(successes.iter().all(|(_, n)| *n == 1), "{successes:?}");
    let attempts: i64 = sqlx::query_scalar("SELECT coalesce(max(attempts), 0) FROM jobs")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(attempts >= 2, "the killed worker's job was run again");
    // Every video through every API process.
    for id in &jobs {
        let reference = load.download(&issuer.base, id).await;
        assert!(reference.len() > 1000);
        for base in [&a.base, &b.base] {
            assert_eq!(load.download(base, id).await, reference, "{base} {id}");
        }
    }

    // A revocation made on replica A (the admin disables a user) is refused by B and the issuer
    // within a second.
    let victim = token("bystander", USER_PASSWORD).await;
    let me = |base: String| {
        let client = client.clone();
        let victim = victim.clone();
        async move {
            client
                .get(format!("{base}/v1/me"))
                .bearer_auth(victim)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(me(b.base.clone()).await, StatusCode::OK);
    let response = client
        .patch(format!("{}/v1/users/{bystander}", a.base))
        .bearer_auth(&admin)
        .json(&json!({ "disabled": true }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let revoked = Instant::now();
    for base in [&b.base, &issuer.base] {
        loop {
            if me(base.clone()).await == StatusCode::UNAUTHORIZED {
                break;
            }
            assert!(
                revoked.elapsed() < Duration::from_secs(1),
                "{base} still accepts a token revoked on A"
            );
            tokio::task::yield_now().await;
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(150),
        "the cluster test took {:?}",
        started.elapsed()
    );
}
