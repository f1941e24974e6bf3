//! Job events across processes sharing one PostgreSQL database: through Redis pub/sub when
//! `redis_url` is set, else through PostgreSQL LISTEN/NOTIFY. Replica A (no workers) takes the
//! requests; replica B only runs jobs. Both poll the database only every 60 s (`job_poll_s`), so
//! each deadline below, a few seconds, can only be met through the bus.

use std::time::{Duration, Instant};

use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::*;
use crate::tcp_proxy::TcpProxy;
use crate::videos::{form, submit_ok};

/// Far longer than any deadline here: a test that passes did not wait for a poll.
const POLL_S: u64 = 60;

/// How a pair shares events.
#[derive(Clone, Copy, Debug)]
enum Bus {
    Redis,
    Postgres,
}

/// Replica A (API, no workers) and replica B (runs jobs), on one database and one blob directory.
struct Pair {
    a: TestServer,
    /// Runs the jobs (in-process workers, or leases to remote workers).
    b: TestServer,
    admin: Session,
    /// The Redis key prefix of this test (with `Bus::Redis`).
    prefix: String,
    /// B's way to Redis, when the test cuts it.
    redis_proxy: Option<TcpProxy>,
}

impl Pair {
    /// `job_ms`: how long B's simulated engine takes per job. `proxied`: B reaches Redis through a
    /// proxy the test can cut.
    async fn start(bus: Bus, job_ms: u64, proxied: bool) -> Self {
        Self::start_with(bus, job_ms, proxied, 1).await
    }

    /// `start`, with `b_workers` in-process workers on B (0: B only serves remote workers).
    async fn start_with(bus: Bus, job_ms: u64, proxied: bool, b_workers: usize) -> Self {
        let prefix = format!("sonicgw-test-{}", uuid::Uuid::new_v4().simple());
        let redis_proxy = match (bus, proxied) {
            (Bus::Redis, true) => Some(TcpProxy::start(&redis_url()).await),
            _ => None,
        };
        let common = |c: &mut sonicgw::config::Config| {
            c.simulated_engine_ms = job_ms;
            c.default_engine = "simulated".to_owned();
            c.job_poll_s = POLL_S;
            // Long enough that no heartbeat notices a cancellation within a test's deadline.
            c.job_lease_s = 60;
            c.metrics_listen = "127.0.0.1:0".to_owned();
        };
        let a = TestServer::start_with(Backend::Postgres, |c| {
            common(c);
            c.workers = 0;
            if let Bus::Redis = bus {
                c.redis_url = redis_url();
                c.redis_prefix = prefix.clone();
            }
        })
        .await;
        let database_url = a.database_url();
        let blobs = format!("file://{}", a.dir.path().join("blobs").display());
        let b_redis = match &redis_proxy {
            Some(proxy) => proxy.url.replacen("http://", "redis://", 1),
            None => redis_url(),
        };
        let b = TestServer::start_with(Backend::Sqlite, |c| {
            common(c);
            c.workers = b_workers;
            c.database_url = database_url;
            c.storage_url = blobs;
            if let Bus::Redis = bus {
                c.redis_url = b_redis;
                c.redis_prefix = prefix.clone();
            }
        })
        .await;
        let admin = a.admin().await;
        Self {
            a,
            b,
            admin,
            prefix,
            redis_proxy,
        }
    }

    async fn submit(&self) -> String {
        let job = submit_ok(&self.a, &self.admin.access, form("speech_en.wav", &[])).await;
        job["id"].as_str().unwrap().to_owned()
    }

    async fn status(&self, id: &str) -> String {
        let job: Value = self
            .a
            .get(&format!("/v1/videos/{id}"), &self.admin.access)
            .await
            .json()
            .await
            .unwrap();
        job["status"].as_str().unwrap().to_owned()
    }

    /// Polls A until job `id` has left the queue (B claimed it), at most `within`.
    async fn left_queue_within(&self, id: &str, within: Duration) -> Duration {
        let started = Instant::now();
        loop {
            let status = self.status(id).await;
            if status != "queued" {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < within,
                "job {id} still queued after {within:?}: B's worker was not woken"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn cancel(&self, id: &str) {
        let response = self
            .a
            .client
            .post(self.a.url(&format!("/v1/videos/{id}/cancel")))
            .bearer_auth(&self.admin.access)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }

    /// A's metric `name{...outcome=<outcome>...}` summed over its label sets (the recorder is
    /// process-wide, so both replicas of this test binary count into it).
    async fn counter(&self, name: &str, outcome: &str) -> u64 {
        let text = reqwest::get(format!("http://{}/metrics", self.a.metrics_addr.unwrap()))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .filter(|l| l.starts_with(name) && l.contains(&format!("outcome=\"{outcome}\"")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }
}

/// The wall clock in Unix milliseconds, as the server records `finished_at`.
fn unix_ms_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A's Server-Sent Events for job `id`, read until `end`: every job status seen, and when `end`
/// arrived, counted from `since`.
async fn follow_on_a(pair: &Pair, id: &str, since: Instant) -> (Vec<String>, Duration) {
    let response = pair
        .a
        .client
        .get(pair.a.url(&format!("/v1/videos/{id}/events")))
        .bearer_auth(&pair.admin.access)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut stream = response.bytes_stream();
    let mut buffer = String::new();
    let mut statuses = Vec::new();
    let read = async {
        while let Some(chunk) = stream.next().await {
            buffer.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
            while let Some(end) = buffer.find("\n\n") {
                let block: String = buffer.drain(..end + 2).collect();
                let event = block.lines().find_map(|l| l.strip_prefix("event: "));
                let data = block.lines().find_map(|l| l.strip_prefix("data: "));
                match (event, data) {
                    (Some("job"), Some(data)) => {
                        let job: Value = serde_json::from_str(data).unwrap();
                        statuses.push(job["status"].as_str().unwrap().to_owned());
                    }
                    (Some("end"), _) => return since.elapsed(),
                    _ => {}
                }
            }
        }
        panic!("the event stream closed without an end event");
    };
    // The bound only ends a broken test; the assertions below measure.
    let ended = tokio::time::timeout(Duration::from_secs(POLL_S / 2), read)
        .await
        .expect("the job ended before any poll could have told A");
    (statuses, ended)
}

/// Submitted on A, run by B: B's idle worker wakes at once, and A's SSE follower sees it run and
/// succeed promptly.
async fn submission_on_a_runs_on_b_and_a_follower_sees_it_succeed(bus: Bus) {
    let pair = Pair::start(bus, 300, false).await;
    let submitted = Instant::now();
    let id = pair.submit().await;
    let woke = pair.left_queue_within(&id, Duration::from_secs(2)).await;
    let (statuses, ended) = follow_on_a(&pair, &id, submitted).await;
    assert_eq!(
        statuses.last().map(String::as_str),
        Some("succeeded"),
        "{statuses:?}"
    );
    // B recorded the end at `finished_at`; A's follower had it a moment later, over the bus.
    let seen_at = unix_ms_now();
    let pool = sqlx::PgPool::connect(&pair.a.database_url()).await.unwrap();
    let finished_at: i64 = sqlx::query_scalar("SELECT finished_at FROM jobs WHERE id = $1")
        .bind(&id)
        .fetch_one(&pool)
        .await
        .unwrap();
    let lag = Duration::from_millis((seen_at - finished_at).max(0) as u64);
    assert!(
        lag < Duration::from_secs(2),
        "{bus:?}: A's follower saw the end {lag:?} after B recorded it (B woke after {woke:?})"
    );
    assert!(
        ended < Duration::from_secs(POLL_S / 4),
        "{bus:?}: {ended:?}"
    );
    assert_eq!(pair.status(&id).await, "succeeded");
}

/// Cancelled on A while B runs it: B's worker stops it at once and is free for the next job,
/// though its heartbeat (every 20 s) would not have noticed yet.
async fn cancel_on_a_stops_the_job_running_on_b(bus: Bus) {
    let pair = Pair::start(bus, 60_000, false).await;
    let first = pair.submit().await;
    pair.left_queue_within(&first, Duration::from_secs(2)).await;
    let second = pair.submit().await;
    assert_eq!(pair.status(&second).await, "queued", "B has one worker");
    let cancelled = Instant::now();
    pair.cancel(&first).await;
    // Well before its heartbeat at 20 s, let alone the poll.
    let freed = pair
        .left_queue_within(&second, Duration::from_secs(5))
        .await;
    assert_eq!(pair.status(&first).await, "cancelled");
    assert_eq!(pair.status(&second).await, "running");
    assert!(
        cancelled.elapsed() < Duration::from_secs(5),
        "{bus:?}: {freed:?}"
    );
    pair.cancel(&second).await;
}

#[tokio::test]
async fn redis_bus_wakes_a_worker_on_another_replica_and_streams_its_progress() {
    submission_on_a_runs_on_b_and_a_follower_sees_it_succeed(Bus::Redis).await;
}

#[tokio::test]
async fn postgres_bus_wakes_a_worker_on_another_replica_and_streams_its_progress() {
    submission_on_a_runs_on_b_and_a_follower_sees_it_succeed(Bus::Postgres).await;
}

#[tokio::test]
async fn redis_bus_cancel_on_one_replica_stops_the_job_on_another() {
    cancel_on_a_stops_the_job_running_on_b(Bus::Redis).await;
}

#[tokio::test]
async fn postgres_bus_cancel_on_one_replica_stops_the_job_on_another() {
    cancel_on_a_stops_the_job_running_on_b(Bus::Postgres).await;
}

/// B loses Redis; a job submitted on A meanwhile is announced to nobody. When B's connection is
/// back, it reconnects (with backoff) and looks for work at once, instead of at its next poll.
#[tokio::test]
async fn redis_bus_reconnects_and_catches_up_on_what_it_missed() {
    let pair = Pair::start(Bus::Redis, 300, true).await;
    let proxy = pair.redis_proxy.as_ref().unwrap();
    proxy.kill();
    let id = pair.submit().await;
    assert_eq!(pair.status(&id).await, "queued");
    proxy.revive().await;
    let revived = Instant::now();
    // The backoff after a short outage is well under a second; ten is the bound of this test.
    let (statuses, ended) = follow_on_a(&pair, &id, revived).await;
    assert_eq!(
        statuses.last().map(String::as_str),
        Some("succeeded"),
        "{statuses:?}"
    );
    assert!(
        ended < Duration::from_secs(10),
        "caught up {ended:?} after Redis came back"
    );
}

/// The same over PostgreSQL: both replicas' LISTEN connections are terminated by the server.
#[tokio::test]
async fn postgres_bus_reconnects_and_catches_up_on_what_it_missed() {
    let pair = Pair::start(Bus::Postgres, 300, false).await;
    let database = pair.a.pg.as_ref().unwrap().name.clone();
    let admin = sqlx::PgPool::connect(&postgres_admin_url()).await.unwrap();
    let listeners: Vec<i32> = sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND query LIKE 'LISTEN%'",
    )
    .bind(&database)
    .fetch_all(&admin)
    .await
    .unwrap();
    let mut terminated = 0;
    for pid in listeners {
        let done: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
            .bind(pid)
            .fetch_one(&admin)
            .await
            .unwrap();
        terminated += usize::from(done);
    }
    assert_eq!(terminated, 2, "one LISTEN connection per replica");
    let submitted = Instant::now();
    let id = pair.submit().await;
    let (statuses, ended) = follow_on_a(&pair, &id, submitted).await;
    assert_eq!(
        statuses.last().map(String::as_str),
        Some("succeeded"),
        "{statuses:?}"
    );
    assert!(
        ended < Duration::from_secs(10),
        "caught up {ended:?} after the cut"
    );
}

/// Garbage on the channel is counted and ignored; the bus goes on working.
#[tokio::test]
async fn malformed_messages_on_the_channel_are_ignored_and_counted() {
    let pair = Pair::start(Bus::Redis, 300, false).await;
    let before = pair.counter("job_events_received_total", "malformed").await;
    let mut redis = redis::Client::open(redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let channel = format!("{}:job-events", pair.prefix);
    let long = "1 ".repeat(4096);
    let garbage: [&[u8]; 5] = [
        b"",
        b"hello",
        b"1 0123456789abcdef0123456789abcdef c not-a-job-id",
        &[0xff, 0x00, 0xfe],
        long.as_bytes(),
    ];
    for message in garbage {
        let receivers: u64 = redis::cmd("PUBLISH")
            .arg(&channel)
            .arg(message)
            .query_async(&mut redis)
            .await
            .unwrap();
        assert_eq!(receivers, 2, "both replicas subscribe");
    }
    // Both replicas count each one; the counter is shared by the two servers of this binary.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let counted = pair.counter("job_events_received_total", "malformed").await - before;
        if counted >= 10 {
            break;
        }
        assert!(Instant::now() < deadline, "only {counted} of 10 counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    submission_still_runs_promptly(&pair).await;
}

async fn submission_still_runs_promptly(pair: &Pair) {
    let submitted = Instant::now();
    let id = pair.submit().await;
    let (statuses, ended) = follow_on_a(pair, &id, submitted).await;
    assert_eq!(
        statuses.last().map(String::as_str),
        Some("succeeded"),
        "{statuses:?}"
    );
    assert!(ended < Duration::from_secs(POLL_S / 4), "{ended:?}");
}

/// A remote worker long-polling B for a lease gets a job submitted on A at once, not at B's poll.
async fn a_lease_waiting_on_b_gets_a_job_submitted_on_a(bus: Bus) {
    let pair = Pair::start_with(bus, 300, false, 0).await;
    let created = pair
        .b
        .state()
        .workers
        .create(&sonicgw::audit::AuditContext::cli(), "w1")
        .await
        .unwrap();
    let token: Value = pair
        .b
        .client
        .post(pair.b.url("/v1/auth/token"))
        .basic_auth(&created.account.client_id, Some(&created.client_secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = token["access_token"].as_str().unwrap().to_owned();
    let lease = pair
        .b
        .client
        .post(pair.b.url("/v1/worker/lease"))
        .bearer_auth(&token)
        .json(&serde_json::json!({ "engines": ["simulated"], "wait_s": 25 }))
        .send();
    let submit = async {
        let id = pair.submit().await;
        (id, Instant::now())
    };
    let (leased, (id, submitted)) = tokio::join!(lease, submit);
    let leased = leased.unwrap();
    let waited = submitted.elapsed();
    assert_eq!(
        leased.status(),
        StatusCode::OK,
        "{bus:?}: no job after {waited:?}"
    );
    let leased: Value = leased.json().await.unwrap();
    assert_eq!(leased["job"]["id"], id.as_str());
    assert!(
        waited < Duration::from_secs(2),
        "{bus:?}: leased {waited:?} after the submission"
    );
}

#[tokio::test]
async fn redis_bus_serves_a_remote_workers_lease_on_another_replica() {
    a_lease_waiting_on_b_gets_a_job_submitted_on_a(Bus::Redis).await;
}

#[tokio::test]
async fn postgres_bus_serves_a_remote_workers_lease_on_another_replica() {
    a_lease_waiting_on_b_gets_a_job_submitted_on_a(Bus::Postgres).await;
}
