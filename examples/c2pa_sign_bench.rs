//! What C2PA signing costs a job: a 10 s 512x512 H.264/AAC video (ffmpeg, like the labelling pass
//! writes) signed with the self-signed chain, then read back and validated, each timed over a few
//! runs. `cargo run --release --example c2pa_sign_bench` (or without `--release` for a rough
//! debug number: dependencies are optimised in the dev profile too).

use std::process::Command;
use std::time::{Duration, Instant};

use sonicgw::provenance::credentials::inspect::inspect;
use sonicgw::provenance::credentials::{ContentCredentials, InputDigest, ManifestFacts};

const RUNS: usize = 5;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let video = dir.path().join("labelled.mp4");
    let status = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi", "-i"])
        .arg("testsrc2=s=512x512:r=25:d=10")
        .args(["-f", "lavfi", "-i", "sine=d=10"])
        .args([
            "-c:v", "libx264", "-preset", "veryfast", "-crf", "18", "-pix_fmt", "yuv420p",
        ])
        .args(["-c:a", "aac", "-shortest"])
        .arg(&video)
        .status()?;
    anyhow::ensure!(status.success(), "ffmpeg failed");
    let size = std::fs::metadata(&video)?.len();
    let credentials = ContentCredentials::new(
        None,
        None,
        &dir.path().join("keys"),
        b"bench secret",
        Duration::from_secs(600),
    )?;
    let facts = ManifestFacts {
        job_id: "0190c5a0-0000-7000-8000-00000000beef".into(),
        producer: credentials.producer_id("tenant", "user"),
        engine: "builtin".into(),
        model: "sonicgw builtin animator (CPU)".into(),
        photo: InputDigest {
            format: "image/png".into(),
            sha256: "11".repeat(32),
        },
        recording: InputDigest {
            format: "audio/wav".into(),
            sha256: "22".repeat(32),
        },
        visible_label: true,
        corner_mark: true,
        label_language: "both".into(),
        aigc_producer: "sonicgw".into(),
    };
    let (mut sign, mut read) = (Vec::new(), Vec::new());
    for run in 0..RUNS {
        let signed = dir.path().join(format!("signed-{run}.mp4"));
        let started = Instant::now();
        credentials.sign(&facts, &video, &signed).await?;
        sign.push(started.elapsed());
        let started = Instant::now();
        let report = inspect(&signed, None, Duration::from_secs(600))?;
        read.push(started.elapsed());
        anyhow::ensure!(report.job.is_some(), "the manifest did not read back");
    }
    let median = |times: &mut Vec<Duration>| {
        times.sort();
        times[times.len() / 2]
    };
    println!(
        "10 s 512x512 video, {size} bytes, {RUNS} runs: sign median {:?} (min {:?}, max {:?}); \
         read+validate median {:?}",
        median(&mut sign),
        sign[0],
        sign[RUNS - 1],
        median(&mut read)
    );
    Ok(())
}
