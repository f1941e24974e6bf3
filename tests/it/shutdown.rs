//! Graceful shutdown of the real `sonicgw serve` process on SIGTERM: it stops accepting, finishes
//! the request in flight, ends event streams with a retry hint, and hands its running job back to
//! the queue so another process takes it at once (not after its lease) without losing an attempt.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::helpers::*;
use crate::videos::{follow, sample};

/// A `sonicgw serve` child process (killed on drop if still running).
struct ServeProcess {
    child: tokio::process::Child,
    addr: std::net::SocketAddr,
    _stdout: tokio::process::ChildStdout,
}

impl ServeProcess {
    async fn start(data_dir: &Path, env: &[(&str, &str)]) -> Self {
        let log = std::fs::File::create(data_dir.join("serve.log")).unwrap();
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_sonicgw"));
        command
            .arg("serve")
            .env("SONICGW_DATA_DIR", data_dir)
            .env("SONICGW_LISTEN", "127.0.0.1:0")
            .env("SONICGW_METRICS_LISTEN", "")
            .env("SONICGW_ADMIN_PASSWORD", ADMIN_PASSWORD)
            .env("SONICGW_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true);
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("sonicgw starts");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        tokio::time::timeout(Duration::from_secs(60), stdout.read_line(&mut line))
            .await
            .expect("the server printed its address")
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("sonicgw listening on http://")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .parse()
            .unwrap();
        Self {
            child,
            addr,
            _stdout: stdout.into_inner(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn terminate(&self) {
        let pid = self.child.id().expect("still running").to_string();
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits (bounded) until the listener is closed: a new connection is refused.
    async fn wait_until_not_accepting(&self) {
        let refused = async {
            while TcpStream::connect(self.addr).await.is_ok() {
                tokio::task::yield_now().await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), refused)
            .await
            .expect("the listener closed after SIGTERM");
    }

    /// The exit status, waiting at most `limit`.
    async fn exit_status(&mut self, limit: Duration) -> std::process::ExitStatus {
        tokio::time::timeout(limit, self.child.wait())
            .await
            .expect("the server exited in time")
            .unwrap()
    }
}

async fn login(client: &reqwest::Client, server: &ServeProcess) -> String {
    let body: Value = client
        .post(server.url("/v1/auth/token"))
        .form(&[
            ("grant_type", "password"),
            ("username", "admin"),
            ("password", ADMIN_PASSWORD),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["access_token"].as_str().unwrap().to_owned()
}

const BOUNDARY: &str = "sonicgw-shutdown-test-boundary";

/// A submission of the sample face and speech for the `simulated` engine, as a multipart body.
fn multipart_body() -> Vec<u8> {
    let mut body = Vec::new();
    for (name, file) in [("image", "face_astronaut.png"), ("audio", "speech_en.wav")] {
        body.extend_from_slice(
            format!(
                "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{file}\"\r\n\
                 Content-Type: application/octet-stream\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(&std::fs::read(sample(file)).unwrap());
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(
        format!(
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"engine\"\r\n\r\nsimulated\r\n--{BOUNDARY}--\r\n"
        )
        .as_bytes(),
    );
    body
}

/// Sends a submission's headers with `Expect: 100-continue` and waits for `100 Continue`: the
/// server is then inside the handler, reading the body. The body is for the caller to send.
async fn start_upload(server: &ServeProcess, token: &str, length: usize) -> TcpStream {
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let head = format!(
        "POST /v1/videos HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {length}\r\n\
         Expect: 100-continue\r\nConnection: close\r\n\r\n",
        server.addr
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut seen = Vec::new();
    let continued = async {
        let mut byte = [0u8; 1];
        while !seen.ends_with(b"\r\n\r\n") {
            assert_eq!(
                stream.read(&mut byte).await.unwrap(),
                1,
                "connection closed"
            );
            seen.push(byte[0]);
        }
    };
    tokio::time::timeout(Duration::from_secs(30), continued)
        .await
        .expect("100 Continue in time");
    let seen = String::from_utf8_lossy(&seen);
    assert!(seen.starts_with("HTTP/1.1 100 Continue"), "{seen}");
    stream
}

/// Reads SSE blocks from `stream` until one whose `event:` is `name`; returns the block.
async fn next_event<S, B>(stream: &mut S, buffer: &mut String, name: &str) -> String
where
    S: futures::Stream<Item = reqwest::Result<B>> + Unpin,
    B: AsRef<[u8]>,
{
    let read = async {
        loop {
            while let Some(end) = buffer.find("\n\n") {
                let block: String = buffer.drain(..end + 2).collect();
                if block.lines().any(|l| l == format!("event: {name}")) {
                    return block;
                }
            }
            let chunk = stream
                .next()
                .await
                .unwrap_or_else(|| panic!("the stream ended before a {name} event"))
                .unwrap();
            buffer.push_str(&String::from_utf8_lossy(chunk.as_ref()));
        }
    };
    tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .unwrap_or_else(|_| panic!("no {name} event in time"))
}

#[tokio::test]
async fn sigterm_finishes_the_request_in_flight_ends_streams_and_hands_the_job_back() {
    let dir = tempfile::tempdir().unwrap();
    // A job that would run for ten minutes, under a ten-minute lease: only a hand-back lets
    // another process run it soon.
    let mut server = ServeProcess::start(
        dir.path(),
        &[
            ("SONICGW_SIMULATED_ENGINE_MS", "600000"),
            ("SONICGW_JOB_LEASE_S", "600"),
            ("SONICGW_WORKERS", "1"),
            ("SONICGW_SHUTDOWN_GRACE_S", "60"),
        ],
    )
    .await;
    let client = reqwest::Client::new();
    let token = login(&client, &server).await;

    // A running job, followed over SSE.
    let created: Value = client
        .post(server.url("/v1/videos"))
        .bearer_auth(&token)
        .header(
            "content-type",
            format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .body(multipart_body())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let running_id = created["id"].as_str().expect("job created").to_owned();
    let response = client
        .get(server.url(&format!("/v1/videos/{running_id}/events")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut events = response.bytes_stream();
    let mut buffer = String::new();
    loop {
        let block = next_event(&mut events, &mut buffer, "job").await;
        if block.contains("\"status\":\"running\"") {
            break;
        }
    }

    // A submission in flight: the server is reading its body when SIGTERM arrives.
    let body = multipart_body();
    let mut upload = start_upload(&server, &token, body.len()).await;

    server.terminate();
    server.wait_until_not_accepting().await;

    // The event stream ends at once, telling the client to reconnect (to another replica).
    let end = next_event(&mut events, &mut buffer, "end").await;
    assert!(end.contains(r#"data: {"reason":"shutting_down"}"#), "{end}");
    let retry: u64 = end
        .lines()
        .find_map(|l| l.strip_prefix("retry: "))
        .unwrap_or_else(|| panic!("no retry field in {end:?}"))
        .parse()
        .unwrap();
    assert!((500..=1500).contains(&retry), "retry {retry} ms");
    let closed = tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .expect("the stream closed after its end event");
    assert!(closed.is_none(), "more after end: {closed:?}");

    // The request in flight completes.
    upload.write_all(&body).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), upload.read_to_end(&mut answer))
        .await
        .expect("the response in time")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    let submitted: Value = serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    let submitted_id = submitted["id"].as_str().unwrap().to_owned();

    let status = server.exit_status(Duration::from_secs(60)).await;
    assert!(status.success(), "exit status {status}");

    // The running job was handed back: queued, its attempt given back, no lease.
    let db = RawDb::open(&format!("sqlite://{}/sonicgw.db", dir.path().display())).await;
    let RawDb::Sqlite(pool) = &db else {
        unreachable!()
    };
    let (state, attempts, worker, lease): (String, i64, Option<String>, Option<i64>) =
        sqlx::query_as(
            "SELECT status, attempts, worker_id, lease_expires_at FROM jobs WHERE id = $1",
        )
        .bind(&running_id)
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(
        (state.as_str(), attempts, worker, lease),
        ("queued", 0, None, None)
    );
    let submitted_status: String = sqlx::query_scalar("SELECT status FROM jobs WHERE id = $1")
        .bind(&submitted_id)
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(
        submitted_status, "queued",
        "the submission in flight was kept"
    );
    pool.close().await;
    let log = std::fs::read_to_string(dir.path().join("serve.log")).unwrap();
    assert!(log.contains("job handed back to the queue"), "{log}");

    // Another process takes it at once: its lease (ten minutes) plays no part.
    let next = TestServer::start_on(dir, |c| {
        c.simulated_engine_ms = 50;
        c.job_lease_s = 600;
        c.workers = 1;
    })
    .await;
    let admin = next.admin().await;
    let seen = follow(&next, &admin.access, &running_id).await;
    assert_eq!(seen.last().unwrap()["status"], "succeeded", "{seen:?}");
    let job: Value = next
        .get(&format!("/v1/videos/{running_id}"), &admin.access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(job["status"], "succeeded", "{job}");
}

#[tokio::test]
async fn sigterm_closes_a_request_that_outlasts_shutdown_grace() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServeProcess::start(dir.path(), &[("SONICGW_SHUTDOWN_GRACE_S", "1")]).await;
    let client = reqwest::Client::new();
    let token = login(&client, &server).await;
    // A client that starts an upload and never sends its body.
    let mut stalled = start_upload(&server, &token, 1 << 20).await;
    server.terminate();
    // Well under the default grace (20 s): the configured one bounds the wait.
    let status = server.exit_status(Duration::from_secs(15)).await;
    assert!(status.success(), "exit status {status}");
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), stalled.read_to_end(&mut rest))
        .await
        .expect("the connection was closed");
    // Closed, whether with a clean end or a reset; no 2xx for an upload that never arrived.
    if closed.is_ok() {
        assert!(
            !String::from_utf8_lossy(&rest).starts_with("HTTP/1.1 2"),
            "{}",
            String::from_utf8_lossy(&rest)
        );
    }
}
