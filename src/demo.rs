//! `sonicgw demo`: the whole path in one command on the embedded default: a fresh data directory, the
//! server on a free port, an admin sign-in, an upload of the bundled sample face and speech, a progress
//! bar while the job runs, and the MP4 written to disk.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

use crate::config::Config;

const FACE: &[u8] = include_bytes!("../assets/samples/face_astronaut.png");
const SPEECH: &[u8] = include_bytes!("../assets/samples/speech_en.wav");

/// Runs the demo; returns the path of the MP4.
pub async fn run(mut config: Config, out: PathBuf) -> anyhow::Result<PathBuf> {
    let data = tempfile::tempdir().context("creating a data directory")?;
    config.data_dir = data.path().to_path_buf();
    config.database_url = String::new();
    config.keys_dir = String::new();
    config.redis_url = String::new();
    config.listen = "127.0.0.1:0".parse()?;
    config.metrics_listen = String::new();
    config.workers = config.workers.max(1);
    let password = crate::app::generate_password();
    let server = crate::app::start_with_admin_password(config, Some(password.clone())).await?;
    let base = format!("http://{}", server.addr);
    println!(
        "sonicgw demo: server on {base}, data in {}",
        data.path().display()
    );

    let client = reqwest::Client::new();
    let token: Value = client
        .post(format!("{base}/v1/auth/token"))
        .form(&[
            ("grant_type", "password"),
            ("username", "admin"),
            ("password", password.as_str()),
        ])
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let access = token["access_token"]
        .as_str()
        .context("no access token")?
        .to_owned();

    let form = reqwest::multipart::Form::new()
        .part(
            "image",
            reqwest::multipart::Part::bytes(FACE).file_name("face_astronaut.png"),
        )
        .part(
            "audio",
            reqwest::multipart::Part::bytes(SPEECH).file_name("speech_en.wav"),
        );
    let response = client
        .post(format!("{base}/v1/videos"))
        .bearer_auth(&access)
        .multipart(form)
        .send()
        .await?;
    let status = response.status();
    let job: Value = response.json().await?;
    if !status.is_success() {
        bail!("the upload was refused: {job}");
    }
    let id = job["id"].as_str().context("no job id")?.to_owned();
    println!(
        "queued job {id}: {}x{} at 25 fps, {} frames",
        job["output"]["width"], job["output"]["height"], job["output"]["frames"]
    );

    let bar = ProgressBar::new(1000);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{bar:40}] {percent:>3}% {msg}")?
            .progress_chars("=> "),
    );
    let finished = loop {
        let job: Value = client
            .get(format!("{base}/v1/videos/{id}"))
            .bearer_auth(&access)
            .send()
            .await?
            .json()
            .await?;
        bar.set_position((job["progress"].as_f64().unwrap_or(0.0) * 1000.0) as u64);
        bar.set_message(format!(
            "{} / {}",
            job["status"].as_str().unwrap_or("?"),
            job["stage"].as_str().unwrap_or("?")
        ));
        if matches!(
            job["status"].as_str(),
            Some("succeeded" | "failed" | "cancelled")
        ) {
            break job;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    bar.finish_and_clear();
    if finished["status"] != "succeeded" {
        bail!("the job did not succeed: {}", finished["error"]);
    }
    let video = client
        .get(format!("{base}/v1/videos/{id}/content"))
        .bearer_auth(&access)
        .send()
        .await?
        .error_for_status()?
        .bytes()
        .await?;
    write_output(&out, &video)?;
    server.stop().await?;
    Ok(out)
}

fn write_output(out: &Path, video: &[u8]) -> anyhow::Result<()> {
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(out, video).with_context(|| format!("writing {}", out.display()))
}
