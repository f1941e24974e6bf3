//! Webhooks: the final job is POSTed to `callback_url`, signed the Standard Webhooks way; the signature
//! is checked here by an independent implementation (Python's standard library).

use std::sync::{Arc, Mutex};

use axum::http::HeaderMap;
use reqwest::StatusCode;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::helpers::*;
use crate::traces::{span, Traces};
use crate::videos::{form, submit, submit_ok};

/// A receiver on port 0 that records each delivery.
async fn receiver() -> (String, mpsc::UnboundedReceiver<(HeaderMap, String)>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let tx = Arc::new(Mutex::new(tx));
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: String| {
            let tx = Arc::clone(&tx);
            async move {
                let _ = tx.lock().unwrap().send((headers, body));
                StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, rx)
}

const VERIFY_PY: &str = r#"
import base64, hashlib, hmac, sys
secret, msg_id, ts, signature = sys.argv[1:5]
body = sys.stdin.buffer.read()
key = base64.b64decode(secret.removeprefix("whsec_"))
expected = base64.b64encode(hmac.new(key, msg_id.encode() + b"." + ts.encode() + b"." + body, hashlib.sha256).digest()).decode()
ok = any(part.split(",", 1)[1] == expected for part in signature.split(" ") if part.startswith("v1,"))
sys.exit(0 if ok else 1)
"#;

fn python_verifies(secret: &str, headers: &HeaderMap, body: &str) -> bool {
    use std::io::Write;
    let header = |name: &str| headers[name].to_str().unwrap().to_owned();
    let mut child = std::process::Command::new("python3")
        .args([
            "-c",
            VERIFY_PY,
            secret,
            &header("webhook-id"),
            &header("webhook-timestamp"),
            &header("webhook-signature"),
        ])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    child.wait().unwrap().success()
}

#[tokio::test]
async fn finished_job_is_delivered_signed_with_the_tenant_secret() {
    let server = TestServer::start_with(Backend::Sqlite, |c| {
        c.webhook_allow_private = true;
        c.simulated_engine_ms = 20;
        c.default_engine = "simulated".to_owned();
    })
    .await;
    let admin = server.admin().await;
    let (url, mut deliveries) = receiver().await;
    let secret: Value = server
        .get("/v1/webhook-secret", &admin.access)
        .await
        .json()
        .await
        .unwrap();
    let secret = secret["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"));

    let job = submit_ok(
        &server,
        &admin.access,
        form("speech_en.wav", &[("callback_url", &url)]),
    )
    .await;
    let (headers, body) =
        tokio::time::timeout(std::time::Duration::from_secs(60), deliveries.recv())
            .await
            .expect("a delivery")
            .unwrap();
    let delivered: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(delivered["id"], job["id"]);
    assert_eq!(delivered["status"], "succeeded");
    assert!(
        python_verifies(&secret, &headers, &body),
        "independent verification"
    );
    assert!(
        !python_verifies(&secret, &headers, &body.replace("succeeded", "failed")),
        "a changed body fails"
    );

    // After rotation, the old secret no longer verifies new deliveries.
    let rotated: Value = server
        .client
        .post(server.url("/v1/webhook-secret"))
        .bearer_auth(&admin.access)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let rotated = rotated["secret"].as_str().unwrap().to_owned();
    assert_ne!(rotated, secret);
    submit_ok(
        &server,
        &admin.access,
        form("speech_en.wav", &[("callback_url", &url)]),
    )
    .await;
    let (headers, body) =
        tokio::time::timeout(std::time::Duration::from_secs(60), deliveries.recv())
            .await
            .expect("a second delivery")
            .unwrap();
    assert!(python_verifies(&rotated, &headers, &body));
    assert!(!python_verifies(&secret, &headers, &body));
}

#[tokio::test]
async fn loopback_callback_is_refused_unless_configured() {
    let server = TestServer::start().await;
    let admin = server.admin().await;
    let response = submit(
        &server,
        &admin.access,
        form(
            "speech_en.wav",
            &[("callback_url", "http://127.0.0.1:9/hook")],
        ),
    )
    .await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["errors"][0]["field"], "callback_url");
}

#[tokio::test]
async fn webhook_secret_is_for_admins() {
    let server = TestServer::start().await;
    let admin = server.admin().await;
    server
        .create_user(&admin.access, "plain", "user", None)
        .await;
    let user = server.login("plain", USER_PASSWORD).await;
    assert_eq!(
        server
            .get("/v1/webhook-secret", &user.access)
            .await
            .status(),
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn delivery_is_traced_by_tenant_message_and_attempt_never_the_query_secret_or_signature() {
    let server = TestServer::start_with(Backend::Sqlite, |c| {
        c.webhook_allow_private = true;
        c.simulated_engine_ms = 20;
        c.default_engine = "simulated".to_owned();
    })
    .await;
    let admin = server.admin().await;
    let tenant = decode_part(&admin.access, 1)["tid"].clone();
    let (url, mut deliveries) = receiver().await;
    let secret: Value = server
        .get("/v1/webhook-secret", &admin.access)
        .await
        .json()
        .await
        .unwrap();
    let secret = secret["secret"].as_str().unwrap().to_owned();

    let traces = Traces::capture();
    let callback = format!("{url}?token=the-receivers-own-token");
    let job = submit_ok(
        &server,
        &admin.access,
        form("speech_en.wav", &[("callback_url", &callback)]),
    )
    .await;
    let (headers, body) =
        tokio::time::timeout(std::time::Duration::from_secs(60), deliveries.recv())
            .await
            .expect("a delivery")
            .unwrap();
    let message_id = headers["webhook-id"].to_str().unwrap().to_owned();
    let delivered = traces
        .wait_for_where(
            "webhook delivered",
            |line| line["fields"]["message_id"] == message_id.as_str(),
            std::time::Duration::from_secs(10),
        )
        .await;

    let deliver = span(&delivered, "webhook.deliver");
    assert_eq!(deliver["tenant_id"], tenant);
    assert_eq!(
        deliver["message_id"],
        headers["webhook-id"].to_str().unwrap()
    );
    let attempt = span(&delivered, "webhook.attempt");
    assert_eq!(attempt["attempt"], 0);
    assert_eq!(attempt["host"], "127.0.0.1");
    // A span of its own, not kept open by (or keeping open) the job's run; the message id names the job.
    assert_eq!(
        delivered["spans"].as_array().unwrap().len(),
        2,
        "{delivered}"
    );
    let job_id = job["id"].as_str().unwrap();
    assert!(deliver["message_id"].as_str().unwrap().contains(job_id));
    let text = traces.text();
    let escaped_body = serde_json::to_string(&body).unwrap();
    for leak in [
        "the-receivers-own-token",
        "/hook",
        secret.as_str(),
        headers["webhook-signature"].to_str().unwrap(),
        body.as_str(),
        escaped_body.trim_matches('"'),
    ] {
        assert!(!text.contains(leak), "{leak} was logged:\n{text}");
    }
}

/// A receiver on port 0 that answers 503 to the first delivery and 204 afterwards, recording each.
async fn flaky_receiver() -> (String, mpsc::UnboundedReceiver<(HeaderMap, String)>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let tx = Arc::new(Mutex::new(tx));
    let answered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: String| {
            let tx = Arc::clone(&tx);
            let answered = Arc::clone(&answered);
            async move {
                let _ = tx.lock().unwrap().send((headers, body));
                if answered.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::NO_CONTENT
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, rx)
}

/// The process that ran the job (and queued its webhook) is killed (SIGKILL) after the first attempt
/// failed; the other replica on the same database delivers the retry from the outbox, with the same
/// message id. Sent from the dead process's memory, it would have been lost.
#[tokio::test]
async fn a_webhook_outlives_the_process_that_queued_it() {
    let db = PgDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let mut runner = crate::redis_replicas::Replica::start(
        &[
            ("SONICGW_DATABASE_URL", db.url.clone()),
            ("SONICGW_DATA_DIR", dir.path().display().to_string()),
            ("SONICGW_WEBHOOK_ALLOW_PRIVATE", "true".to_owned()),
            ("SONICGW_SIMULATED_ENGINE_MS", "20".to_owned()),
            ("SONICGW_DEFAULT_ENGINE", "simulated".to_owned()),
        ],
        dir.path().join("runner.log"),
    );
    let other = TestServer::start_with(Backend::Sqlite, |c| {
        c.webhook_allow_private = true;
        c.workers = 0;
        c.database_url = db.url.clone();
    })
    .await;
    let client = reqwest::Client::new();
    let login: Value = client
        .post(format!("{}/v1/auth/token", runner.base))
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
    let access = login["access_token"].as_str().unwrap();
    let (url, mut deliveries) = flaky_receiver().await;
    let submitted = client
        .post(format!("{}/v1/videos", runner.base))
        .bearer_auth(access)
        .multipart(form("speech_en.wav", &[("callback_url", &url)]))
        .send()
        .await
        .unwrap();
    assert_eq!(submitted.status(), StatusCode::ACCEPTED);
    let (first, _) = tokio::time::timeout(std::time::Duration::from_secs(60), deliveries.recv())
        .await
        .expect("a first attempt")
        .unwrap();
    // Once the failed attempt is recorded (its retry due in 2 s), the process dies.
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let rescheduled = "SELECT count(*) FROM webhook_outbox \
                       WHERE attempts = 1 AND next_attempt_at < $1";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let soon = sonicgw::time::now_ms() + std::time::Duration::from_secs(10);
        let count: i64 = sqlx::query_scalar(rescheduled)
            .bind(soon.as_millis())
            .fetch_one(&pool)
            .await
            .unwrap();
        if count == 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the failed attempt was not recorded"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    runner.kill();
    let (second, body) =
        tokio::time::timeout(std::time::Duration::from_secs(30), deliveries.recv())
            .await
            .expect("the retry, from the other replica")
            .unwrap();
    assert_eq!(first["webhook-id"], second["webhook-id"]);
    let delivered: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(delivered["status"], "succeeded");
    // Removed once delivered: the receiver answered before the row went, so poll briefly.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_outbox")
            .fetch_one(&pool)
            .await
            .unwrap();
        if left == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the delivered webhook is still in the outbox"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    drop(other);
}
