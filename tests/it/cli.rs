//! The command-line client: real `sonicgw` processes speaking HTTP to a server on port 0, with their
//! sign-in in a temporary credentials file.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use tokio::io::AsyncWriteExt as _;

use crate::helpers::*;
use crate::videos::{follow, sample};

/// A CLI user: their own credentials file.
struct CliUser {
    dir: tempfile::TempDir,
}

/// What a CLI process did.
struct Ran {
    status: i32,
    stdout: String,
    stderr: String,
}

impl Ran {
    fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {}", self.stdout))
    }
}

impl CliUser {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn credentials(&self) -> PathBuf {
        self.dir
            .path()
            .join("config")
            .join("sonicgw")
            .join("credentials.json")
    }

    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_sonicgw"));
        command
            .args(args)
            .current_dir(self.dir.path())
            .env("SONICGW_CREDENTIALS", self.credentials())
            .env_remove("SONICGW_SERVER")
            .env_remove("SONICGW_CONFIG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        command
    }

    async fn run(&self, args: &[&str], stdin: &str) -> Ran {
        let mut child = self.command(args).spawn().expect("sonicgw starts");
        let mut input = child.stdin.take().unwrap();
        input.write_all(stdin.as_bytes()).await.unwrap();
        drop(input);
        let output = child.wait_with_output().await.unwrap();
        Ran {
            status: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    async fn login(&self, server: &TestServer, username: &str, password: &str) -> Ran {
        let url = server.url("");
        self.run(
            &[
                "login",
                "--server",
                &url,
                "--username",
                username,
                "--password-stdin",
            ],
            &format!("{password}\n"),
        )
        .await
    }
}

fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[tokio::test]
async fn the_cli_signs_in_makes_a_video_and_signs_out() {
    let server = TestServer::start().await;
    let user = CliUser::new();

    let refused = user.login(&server, "admin", "wrong password").await;
    assert_eq!(refused.status, 1, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("error: invalid_grant"),
        "{}",
        refused.stderr
    );
    assert!(!user.credentials().exists());

    let signed_in = user.login(&server, "admin", ADMIN_PASSWORD).await;
    assert_eq!(signed_in.status, 0, "{}", signed_in.stderr);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(user.credentials())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the credentials are private");
    }

    let face = sample("face_astronaut.png");
    let speech = sample("speech_en.wav");
    let out = user.dir.path().join("out.mp4");
    let made = user
        .run(
            &[
                "generate",
                "--image",
                path_str(&face),
                "--audio",
                path_str(&speech),
                "--wait",
                "-o",
                path_str(&out),
                "--json",
            ],
            "",
        )
        .await;
    assert_eq!(made.status, 0, "{}", made.stderr);
    let made = made.json();
    assert_eq!(made["status"], "succeeded", "{made}");
    let video = std::fs::read(&out).unwrap();
    assert_eq!(&video[4..8], b"ftyp", "an MP4");
    assert_eq!(made["bytes"], video.len());
    let id = made["id"].as_str().unwrap().to_owned();

    let listed = user.run(&["videos", "list", "--json"], "").await;
    assert_eq!(listed.status, 0, "{}", listed.stderr);
    assert!(listed.json()["items"]
        .as_array()
        .unwrap()
        .iter()
        .any(|j| j["id"] == id.as_str()));
    let again = user.dir.path().join("again.mp4");
    let downloaded = user
        .run(&["videos", "download", &id, "-o", path_str(&again)], "")
        .await;
    assert_eq!(downloaded.status, 0, "{}", downloaded.stderr);
    assert_eq!(std::fs::read(&again).unwrap(), video);

    // A submission sent again with its Idempotency-Key is the same job, never a second one.
    let submit = |key: &'static str| {
        let (face, speech) = (face.clone(), speech.clone());
        let user = &user;
        async move {
            user.run(
                &[
                    "generate",
                    "--image",
                    path_str(&face),
                    "--audio",
                    path_str(&speech),
                    "--idempotency-key",
                    key,
                    "--json",
                ],
                "",
            )
            .await
        }
    };
    let first = submit("retry-me-1").await;
    let second = submit("retry-me-1").await;
    assert_eq!(first.status, 0, "{}", first.stderr);
    assert_eq!(second.status, 0, "{}", second.stderr);
    assert_eq!(first.json()["id"], second.json()["id"]);

    // What can be checked here is refused before anything is sent; the rest with the server's code.
    let local = user
        .run(
            &[
                "generate",
                "--image",
                path_str(&speech),
                "--audio",
                path_str(&speech),
            ],
            "",
        )
        .await;
    assert_eq!(local.status, 2, "{}", local.stderr);
    assert!(
        local.stderr.contains("error: unsupported_image_format"),
        "{}",
        local.stderr
    );
    let refused = user
        .run(
            &[
                "generate",
                "--image",
                path_str(&face),
                "--audio",
                path_str(&speech),
                "--min-resolution",
                "100",
            ],
            "",
        )
        .await;
    assert_eq!(refused.status, 1, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("error: validation_failed"),
        "{}",
        refused.stderr
    );
    assert!(
        refused.stderr.contains("min_resolution"),
        "{}",
        refused.stderr
    );

    // Signing out revokes the sign-in on the server, not only here.
    let stored: Value =
        serde_json::from_slice(&std::fs::read(user.credentials()).unwrap()).unwrap();
    let refresh = stored["refresh_token"].as_str().unwrap().to_owned();
    let out = user.run(&["logout"], "").await;
    assert_eq!(out.status, 0, "{}", out.stderr);
    assert!(!user.credentials().exists());
    assert_eq!(
        server.refresh(&refresh).await.status(),
        StatusCode::BAD_REQUEST
    );
    let after = user.run(&["videos", "list"], "").await;
    assert_eq!(after.status, 1);
    assert!(after.stderr.contains("not signed in"), "{}", after.stderr);
}

#[tokio::test]
async fn ctrl_c_while_waiting_leaves_the_job_running() {
    let server = TestServer::start_with(Backend::Sqlite, |c| {
        c.simulated_engine_ms = 4000;
        c.default_engine = "simulated".to_owned();
    })
    .await;
    let admin = server.admin().await;
    let user = CliUser::new();
    assert_eq!(user.login(&server, "admin", ADMIN_PASSWORD).await.status, 0);
    let face = sample("face_astronaut.png");
    let speech = sample("speech_en.wav");
    let mut child = user
        .command(&[
            "generate",
            "--image",
            path_str(&face),
            "--audio",
            path_str(&speech),
            "--wait",
            "--json",
        ])
        .spawn()
        .unwrap();
    drop(child.stdin.take());
    // Wait for the job the CLI submitted to be running, then interrupt the CLI.
    let id = loop {
        let list: Value = server
            .get("/v1/videos", &admin.access)
            .await
            .json()
            .await
            .unwrap();
        if let Some(job) = list["items"].as_array().unwrap().first() {
            if job["status"] == "running" {
                break job["id"].as_str().unwrap().to_owned();
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let pid = child.id().unwrap().to_string();
    let killed = tokio::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .await
        .unwrap();
    assert!(killed.success());
    let output = child.wait_with_output().await.unwrap();
    assert_eq!(output.status.code(), Some(130));
    let printed: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(printed["error"]["code"], "interrupted", "{printed}");
    assert!(
        printed["error"]["detail"].as_str().unwrap().contains(&id),
        "{printed}"
    );
    let events = follow(&server, &admin.access, &id).await;
    assert_eq!(
        events.last().unwrap()["status"],
        "succeeded",
        "the job was not cancelled: {events:?}"
    );
}

#[tokio::test]
async fn admins_manage_users_and_export_the_audit_log_from_the_cli() {
    let server = TestServer::start().await;
    let user = CliUser::new();
    assert_eq!(user.login(&server, "admin", ADMIN_PASSWORD).await.status, 0);
    let created = user
        .run(
            &["users", "create", "bob", "--password-stdin", "--json"],
            "a long enough password 1\n",
        )
        .await;
    assert_eq!(created.status, 0, "{}", created.stderr);
    assert_eq!(created.json()["username"], "bob");
    let bob = CliUser::new();
    assert_eq!(
        bob.login(&server, "bob", "a long enough password 1")
            .await
            .status,
        0
    );
    let forbidden = bob.run(&["users", "list"], "").await;
    assert_eq!(forbidden.status, 1);
    assert!(
        forbidden.stderr.contains("error: forbidden"),
        "{}",
        forbidden.stderr
    );

    let disabled = user.run(&["users", "disable", "bob", "--json"], "").await;
    assert_eq!(disabled.status, 0, "{}", disabled.stderr);
    assert_eq!(disabled.json()["disabled"], true);
    let bob_after = bob.run(&["videos", "list"], "").await;
    assert_eq!(
        bob_after.status, 1,
        "a disabled user's sign-in ends: {}",
        bob_after.stdout
    );

    let csv_path = user.dir.path().join("audit.csv");
    let exported = user
        .run(
            &[
                "audit",
                "export",
                "--action",
                "user.create",
                "-o",
                path_str(&csv_path),
            ],
            "",
        )
        .await;
    assert_eq!(exported.status, 0, "{}", exported.stderr);
    let csv = std::fs::read_to_string(&csv_path).unwrap();
    let mut lines = csv.lines();
    assert!(lines.next().unwrap().starts_with("seq,"), "{csv}");
    let rows: Vec<&str> = lines.collect();
    assert!(
        !rows.is_empty() && rows.iter().all(|r| r.contains("user.create")),
        "{csv}"
    );
}
