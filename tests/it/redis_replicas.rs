//! Two real server processes sharing PostgreSQL, the key directory and Redis: a token revoked through
//! one is refused by the other within a second, with no per-request Redis round trip.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;

use crate::helpers::*;

/// A `sonicgw serve` child process, killed on drop.
pub struct Replica {
    child: Child,
    pub base: String,
    stderr_path: std::path::PathBuf,
}

impl Replica {
    pub fn start(env: &[(&str, String)], stderr_path: std::path::PathBuf) -> Self {
        Self::start_with_args(&["serve"], env, stderr_path)
    }

    /// `start` with other arguments than plain `serve` (e.g. `serve --no-migrate`).
    pub fn start_with_args(
        args: &[&str],
        env: &[(&str, String)],
        stderr_path: std::path::PathBuf,
    ) -> Self {
        let stderr = std::fs::File::create(&stderr_path).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_sonicgw"));
        command
            .args(args)
            .env("SONICGW_LISTEN", "127.0.0.1:0")
            .env("SONICGW_METRICS_LISTEN", "")
            .env("SONICGW_ADMIN_PASSWORD", ADMIN_PASSWORD)
            .stdout(Stdio::piped())
            .stderr(stderr);
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("sonicgw starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let base = line
            .trim()
            .strip_prefix("sonicgw listening on ")
            .unwrap_or_else(|| {
                panic!(
                    "unexpected first line {line:?}; see {}",
                    stderr_path.display()
                )
            })
            .to_owned();
        Self {
            child,
            base,
            stderr_path,
        }
    }
}

impl Replica {
    /// SIGKILL: no clean shutdown, like a crashed machine.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn token_revoked_on_one_replica_is_refused_by_the_other_within_a_second() {
    let db = PgDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("sonicgw-test-{}", uuid::Uuid::new_v4().simple());
    let env = [
        ("SONICGW_DATABASE_URL", db.url.clone()),
        ("SONICGW_REDIS_URL", redis_url()),
        ("SONICGW_REDIS_PREFIX", prefix.clone()),
        ("SONICGW_DATA_DIR", dir.path().display().to_string()),
        ("SONICGW_ISSUER", "http://sonicgw.test".to_owned()),
    ];
    let a = Replica::start(&env, dir.path().join("a.log"));
    let b = Replica::start(&env, dir.path().join("b.log"));
    let client = reqwest::Client::new();

    let login: serde_json::Value = client
        .post(format!("{}/v1/auth/token", a.base))
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
    let access = login["access_token"].as_str().unwrap().to_owned();
    let me = |base: &str| {
        client
            .get(format!("{base}/v1/me"))
            .bearer_auth(&access)
            .send()
    };
    assert_eq!(
        me(&b.base).await.unwrap().status(),
        StatusCode::OK,
        "replica B accepts A's token"
    );

    let revoked_at = Instant::now();
    let response = client
        .post(format!("{}/v1/auth/revoke", a.base))
        .form(&[("token", access.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        me(&a.base).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );

    // Poll B until it refuses; the deadline is the requirement, not a synchronisation sleep.
    let deadline = revoked_at + Duration::from_secs(1);
    let mut refused = false;
    while Instant::now() < deadline {
        if me(&b.base).await.unwrap().status() == StatusCode::UNAUTHORIZED {
            refused = true;
            break;
        }
        tokio::task::yield_now().await;
    }
    let waited = revoked_at.elapsed();
    assert!(
        refused,
        "replica B still accepted the revoked token after {waited:?}"
    );

    // Redis holds the revocation, expiring with the token.
    let jti = decode_part(&access, 1)["jti"].as_str().unwrap().to_owned();
    let mut redis = redis::Client::open(redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let ttl: i64 = redis::cmd("TTL")
        .arg(format!("{prefix}:revoked:{jti}"))
        .query_async(&mut redis)
        .await
        .unwrap();
    // Until the token expires, plus the largest clock leeway a verifier may apply.
    assert!(ttl > 0 && ttl <= 1800 + 60, "ttl {ttl}");

    // A third replica started afterwards loads the revocation from Redis.
    let c = Replica::start(&env, dir.path().join("c.log"));
    assert_eq!(
        me(&c.base).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );

    drop((a, b, c));
    for log in ["a.log", "b.log", "c.log"] {
        let text = std::fs::read_to_string(dir.path().join(log)).unwrap();
        assert!(
            !text.contains(ADMIN_PASSWORD),
            "{log} contains the password"
        );
        assert!(!text.contains(&access), "{log} contains a token");
    }
    let _ = redis::cmd("DEL")
        .arg(format!("{prefix}:revoked:{jti}"))
        .query_async::<()>(&mut redis)
        .await;
}

#[tokio::test]
async fn logs_never_contain_passwords_or_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("SONICGW_DATA_DIR", dir.path().display().to_string()),
        ("SONICGW_LOG_FORMAT", "json".to_owned()),
        ("SONICGW_LOG", "debug".to_owned()),
    ];
    let server = Replica::start(&env, dir.path().join("server.log"));
    let client = reqwest::Client::new();
    let login: serde_json::Value = client
        .post(format!("{}/login", server.base))
        .form(&[("username", "admin"), ("password", ADMIN_PASSWORD)])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let access = login["access_token"].as_str().unwrap();
    let refresh = login["refresh_token"].as_str().unwrap();
    client
        .get(format!("{}/v1/me", server.base))
        .bearer_auth(access)
        .send()
        .await
        .unwrap();
    client
        .get(format!("{}/v1/me", server.base))
        .bearer_auth(format!("{access}x"))
        .send()
        .await
        .unwrap();
    client
        .post(format!("{}/login", server.base))
        .form(&[
            ("username", "admin"),
            ("password", "wrong-password-in-log?"),
        ])
        .send()
        .await
        .unwrap();
    let path = server.stderr_path.clone();
    drop(server);
    let log = std::fs::read_to_string(path).unwrap();
    assert!(
        log.contains("\"route\":\"/v1/me\""),
        "JSON request log present: {log}"
    );
    for secret in [ADMIN_PASSWORD, "wrong-password-in-log?", access, refresh] {
        assert!(!log.contains(secret), "log contains a secret");
    }
}

/// A revocation Redis never carried (its publication failed, the link was down, Redis lost it) still
/// reaches a replica with `redis_url` set: from the database, within the safety poll (5 s).
#[tokio::test]
async fn a_revocation_redis_never_carried_arrives_from_the_database() {
    use sonicgw::auth::revocation::Revocations;
    use sonicgw::domain::Jti;
    let dir = tempfile::tempdir().unwrap();
    let store = sonicgw::storage::connect(&format!("sqlite://{}/r.db", dir.path().display()))
        .await
        .unwrap();
    // Two replicas on one database, each on its own Redis prefix: Redis links nothing between them.
    let unique = uuid::Uuid::new_v4().simple().to_string();
    let a = Revocations::start(store.clone(), Some(&redis_url()), &format!("t-{unique}-a"))
        .await
        .unwrap();
    let b = Revocations::start(store.clone(), Some(&redis_url()), &format!("t-{unique}-b"))
        .await
        .unwrap();
    let jti = Jti::generate();
    a.revoke(&jti, sonicgw::time::now_s() + 600).await.unwrap();
    assert!(a.is_revoked(&jti));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !b.is_revoked(&jti) {
        assert!(Instant::now() < deadline, "the revocation never reached B");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A replica started later reads it at start, whatever Redis holds.
    let c = Revocations::start(store, Some(&redis_url()), &format!("t-{unique}-c"))
        .await
        .unwrap();
    assert!(c.is_revoked(&jti));
}
