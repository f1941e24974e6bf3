//! Upload to S3: throughput and peak memory by upload size (the goal: memory flat in the size).
//!
//! `scripts/setup.sh && cargo run --release --example s3_upload_bench`
//!
//! Each size (5, 22 and 45 MB) runs in a process of its own (the example starts itself once per size),
//! so no run inherits another's memory. Such a process starts moto's S3 server (the test suite's, from
//! `<target>/s3-venv`; or set `SONICGW_BENCH_S3_PYTHON`), an in-process API server (`workers = 0`,
//! storage on S3), makes a 48 kHz stereo WAV recording of that size, warms both paths up with a 1 MB
//! recording, then three times each:
//! 1. stores the recording with `BlobStore::put_file` (the path every upload and result takes into
//!    storage);
//! 2. submits it with the sample photo through `POST /v1/videos`: the request body streamed from disk
//!    by the client, streamed to a scratch file by the server, probed, stored.
//!
//! Peak memory: how far the process's peak resident set (`VmHWM`, reset through `/proc/self/clear_refs`
//! before each phase) rose above the resident set at the phase's start. Client, API server and S3
//! uploads are all in this process; the S3 server runs in its own and is not counted.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use serde_json::Value;
use sonicgw::blobs::{BlobStore, StorageLocation};
use sonicgw::config::Config;
use sonicgw::domain::Plan;

const SIZES_MB: [f64; 3] = [5.0, 22.0, 45.0];
const RUNS: usize = 3;
const MB: f64 = 1_000_000.0;

/// Peak resident set of this process since the last reset, in MB.
fn peak_rss_mb() -> f64 {
    status_mb("VmHWM:")
}

/// Resident set now, in MB.
fn rss_mb() -> f64 {
    status_mb("VmRSS:")
}

fn status_mb(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<f64>()
                .ok()
        })
        .map(|kb| kb * 1024.0 / MB)
        .unwrap_or(f64::NAN)
}

/// Sets the peak back to the current resident set.
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn python() -> PathBuf {
    if let Ok(path) = std::env::var("SONICGW_BENCH_S3_PYTHON") {
        return PathBuf::from(path);
    }
    // <target>/<profile>/examples/s3_upload_bench
    let exe = std::env::current_exe().expect("own path");
    exe.ancestors()
        .nth(3)
        .expect("built under a target directory")
        .join("s3-venv/bin/python")
}

/// A WAV of about `mb` megabytes: 48 kHz, stereo, 16-bit, a tone with a slow vibrato.
fn wav(path: &Path, mb: f64) -> anyhow::Result<()> {
    let spec = hound::WavSpec {
        channels: 2,
        sample_rate: 48_000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let frames = (mb * MB / 4.0) as u64;
    let mut writer = hound::WavWriter::create(path, spec)?;
    for i in 0..frames {
        let t = i as f64 / 48_000.0;
        let v = (8000.0 * (2.0 * std::f64::consts::PI * (220.0 + 30.0 * (t * 3.0).sin()) * t).sin())
            as i16;
        writer.write_sample(v)?;
        writer.write_sample(v)?;
    }
    writer.finalize()?;
    Ok(())
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if let Some(mb) = std::env::args().nth(1) {
        return run_one(mb.parse()?).await;
    }
    println!(
        "s3_upload_bench: moto S3 server, {RUNS} runs per size (medians), one process per size"
    );
    println!("| upload | put_file s | put_file MB/s | put_file peak RSS growth MB | POST /v1/videos s | POST MB/s | POST peak RSS growth MB | process peak RSS MB |");
    println!("|---|---|---|---|---|---|---|---|");
    let me = std::env::current_exe()?;
    for mb in SIZES_MB {
        let out = Command::new(&me)
            .arg(mb.to_string())
            .stderr(Stdio::inherit())
            .output()?;
        anyhow::ensure!(out.status.success(), "the {mb} MB run failed");
        print!("{}", String::from_utf8_lossy(&out.stdout));
    }
    Ok(())
}

/// One size: prints one table row.
async fn run_one(mb: f64) -> anyhow::Result<()> {
    let python = python();
    anyhow::ensure!(
        python.exists(),
        "{} is missing: run scripts/setup.sh (with the same CARGO_TARGET_DIR)",
        python.display()
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/s3-test-server.py");
    let mut moto = Command::new(&python)
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(moto.stdout.take().expect("piped")).read_line(&mut line)?;
    let address = line
        .trim()
        .strip_prefix("listening ")
        .ok_or_else(|| anyhow::anyhow!("the S3 server did not start: {line:?}"))?;
    let endpoint = format!("http://{address}");
    let client = reqwest::Client::new();
    client
        .put(format!("{endpoint}/bench"))
        .send()
        .await?
        .error_for_status()?;
    let options: BTreeMap<String, String> = [
        ("endpoint", endpoint.as_str()),
        ("access_key_id", "bench"),
        ("secret_access_key", "bench-secret"),
        ("region", "us-east-1"),
        ("allow_http", "true"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();

    let data = tempfile::tempdir()?;
    let warm_up = data.path().join("warm-up.wav");
    wav(&warm_up, 1.0)?;
    let path = data.path().join("speech.wav");
    wav(&path, mb)?;
    let bytes = std::fs::metadata(&path)?.len();

    let location =
        StorageLocation::parse("s3://bench/direct", PathBuf::new()).map_err(anyhow::Error::msg)?;
    let store = BlobStore::open(&location, &options)?;
    let roomy = Plan {
        max_resolution: 512,
        max_duration_s: 300,
        max_inference_steps: 25,
        videos_per_day: 10_000,
        max_concurrent_jobs: 10_000,
        priority_weight: 1,
        allow_lip_sync_correction: false,
        // One client at full speed must measure storage, not the request rate limit.
        requests_per_minute: u32::MAX / 20,
        tenant_requests_per_minute: None,
        previews_per_minute: 10,
    };
    let config = Config {
        listen: "127.0.0.1:0".parse()?,
        metrics_listen: String::new(),
        data_dir: data.path().join("server"),
        workers: 0,
        storage_url: "s3://bench/server".to_owned(),
        storage_options: options.clone(),
        plans: BTreeMap::from([
            ("pro".to_owned(), roomy.clone()),
            ("free".to_owned(), roomy),
        ]),
        ..Config::default()
    };
    let server =
        sonicgw::app::start_with_admin_password(config, Some("bench-admin-password".into()))
            .await?;
    let base = format!("http://{}", server.addr);
    let token: Value = client
        .post(format!("{base}/v1/auth/token"))
        .form(&[
            ("grant_type", "password"),
            ("username", "admin"),
            ("password", "bench-admin-password"),
        ])
        .send()
        .await?
        .json()
        .await?;
    let token = token["access_token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let face = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/samples/face_astronaut.png"),
    )?;
    let submit = |path: PathBuf| {
        let (client, base, token, face) =
            (client.clone(), base.clone(), token.clone(), face.clone());
        async move {
            let length = std::fs::metadata(&path)?.len();
            let file = tokio::fs::File::open(&path).await?;
            let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(file));
            let form = reqwest::multipart::Form::new()
                .part(
                    "image",
                    reqwest::multipart::Part::bytes(face).file_name("face.png"),
                )
                .part(
                    "audio",
                    reqwest::multipart::Part::stream_with_length(body, length)
                        .file_name("speech.wav"),
                );
            let response = client
                .post(format!("{base}/v1/videos"))
                .bearer_auth(&token)
                .multipart(form)
                .send()
                .await?;
            let status = response.status();
            let answer = response.text().await?;
            anyhow::ensure!(
                status.as_u16() == 202,
                "submission refused: {status} {answer}"
            );
            anyhow::Ok(())
        }
    };

    // Lazy set-up (connection pools, the face model) is not the upload's.
    store.put_file("jobs/t/warm-up/audio.wav", &warm_up).await?;
    submit(warm_up.clone()).await?;

    reset_peak();
    let before = rss_mb();
    let mut put_s = Vec::new();
    for run in 0..RUNS {
        let started = Instant::now();
        store
            .put_file(&format!("jobs/t/run{run}/audio.wav"), &path)
            .await?;
        put_s.push(started.elapsed().as_secs_f64());
    }
    let put_peak = peak_rss_mb() - before;

    reset_peak();
    let before = rss_mb();
    let mut post_s = Vec::new();
    for _ in 0..RUNS {
        let started = Instant::now();
        submit(path.clone()).await?;
        post_s.push(started.elapsed().as_secs_f64());
    }
    let post_peak = peak_rss_mb() - before;
    let (put, post) = (median(put_s), median(post_s));
    println!(
        "| {mb:.0} MB | {put:.2} | {:.0} | {put_peak:.0} | {post:.2} | {:.0} | {post_peak:.0} | {:.0} |",
        bytes as f64 / MB / put,
        bytes as f64 / MB / post,
        peak_rss_mb(),
    );
    server.stop().await?;
    drop(moto.stdin.take());
    let _ = moto.wait();
    Ok(())
}
