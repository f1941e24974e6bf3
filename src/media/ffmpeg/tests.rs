//! Tests for `ffmpeg.rs` (kept apart to keep that file short).
use super::*;

/// `ffmpeg_processes_total` for one label set, read from the Prometheus rendering.
fn processes(program: &str, what: &str, outcome: &str) -> u64 {
    let series = format!(
        "ffmpeg_processes_total{{program=\"{program}\",what=\"{what}\",outcome=\"{outcome}\"}} "
    );
    crate::metrics::recorder()
        .render()
        .lines()
        .find_map(|line| line.strip_prefix(&series))
        .map_or(0, |count| count.trim().parse().unwrap())
}

/// Runs `run` and asserts it added one process with these labels, with its duration.
async fn counts_one<T>(
    program: &str,
    what: &str,
    outcome: &str,
    run: impl std::future::Future<Output = T>,
) -> T {
    let before = processes(program, what, outcome);
    let result = run.await;
    // Other tests run ffmpeg concurrently, so "at least one more".
    assert!(
        processes(program, what, outcome) > before,
        "{program} {what} {outcome}"
    );
    let labels = format!("{{program=\"{program}\",what=\"{what}\",outcome=\"{outcome}\"");
    let rendered = crate::metrics::recorder().render();
    for series in ["_count", "_sum", "_bucket"] {
        let name = format!("ffmpeg_process_duration_seconds{series}{labels}");
        assert!(rendered.contains(&name), "{name} missing from\n{rendered}");
    }
    result
}

/// A short encode: 16x16 frames, a second of silent 16 kHz audio.
fn small_encode(dir: &Path) -> EncodeSpec {
    let audio = dir.join("audio.f32le");
    std::fs::write(&audio, vec![0u8; 16_000 * 4]).unwrap();
    EncodeSpec {
        width: 16,
        height: 16,
        fps: 25,
        audio: PcmFile {
            path: audio,
            sample_rate: 16_000,
            channels: 1,
        },
        audio_offset_s: 0.0,
        out_path: dir.join("out.mp4"),
        timeout: Duration::from_secs(60),
    }
}

#[tokio::test]
async fn ended_processes_are_counted_by_program_step_and_outcome() {
    counts_one("ffmpeg", "version", "success", check_available())
        .await
        .unwrap();
    let missing = Path::new("/nonexistent/sonicgw/none.mp4");
    let err = counts_one(
        "ffmpeg",
        "decode_audio",
        "failure",
        decode_audio_16k(missing),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), "encode_failed");
    let err = counts_one("ffprobe", "probe", "failure", probe(missing))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "encode_failed");
}

#[tokio::test]
async fn a_process_past_its_budget_is_counted_as_timeout() {
    // An endless silent source: only the timeout ends it.
    let args = words("-nostdin -v error -f lavfi -i anullsrc -f null -");
    let run = run_capture(FFMPEG, &args, "test_endless", Duration::from_millis(300));
    let err = counts_one("ffmpeg", "test_endless", "timeout", run)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "encode_timeout");
}

#[tokio::test]
async fn finished_encode_is_counted_as_success() {
    let dir = tempfile::tempdir().unwrap();
    let encode = async {
        let mut encoder = Mp4Encoder::start(small_encode(dir.path())).await?;
        for _ in 0..5 {
            encoder.write_frame(&[128; 16 * 16 * 3]).await?;
        }
        encoder.finish().await
    };
    counts_one("ffmpeg", "encode", "success", encode)
        .await
        .unwrap();
}

#[tokio::test]
async fn encode_dropped_midway_is_counted_as_killed() {
    let dir = tempfile::tempdir().unwrap();
    let encode = async {
        let mut encoder = Mp4Encoder::start(small_encode(dir.path())).await.unwrap();
        for _ in 0..5 {
            encoder.write_frame(&[128; 16 * 16 * 3]).await.unwrap();
        }
        // Mid-way: ffmpeg waits for more frames until the future is dropped.
        std::future::pending::<()>().await;
    };
    let dropped = counts_one("ffmpeg", "encode", "killed", async {
        tokio::time::timeout(Duration::from_millis(500), encode).await
    })
    .await;
    assert!(dropped.is_err(), "the encode was cut off, not finished");
}

#[tokio::test]
async fn missing_program_has_clear_error() {
    let err = check_available_with("definitely-not-ffmpeg-xyz")
        .await
        .unwrap_err();
    assert_eq!(err.code(), "ffmpeg_missing");
    assert!(err.to_string().contains("apt-get install ffmpeg"), "{err}");
}

#[test]
fn offsets_map_to_delay_or_seek() {
    let mut spec = EncodeSpec {
        width: 4,
        height: 4,
        fps: 25,
        audio: PcmFile {
            path: "a.f32le".into(),
            sample_rate: 22_050,
            channels: 1,
        },
        audio_offset_s: 0.12,
        out_path: "o.mp4".into(),
        timeout: Duration::from_secs(1),
    };
    let joined = |s: &EncodeSpec| {
        encode_args(s)
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert!(joined(&spec).contains("adelay=delays=120:all=1,apad"));
    spec.audio_offset_s = -0.2;
    let j = joined(&spec);
    assert!(
        j.contains("-ss 0.200 -protocol_whitelist file -f f32le -ar 22050 -ac 1 -i file:a.f32le")
            && !j.contains("adelay"),
        "{j}"
    );
}

#[test]
fn every_input_has_a_forced_format_and_a_protocol_whitelist() {
    let spec = EncodeSpec {
        width: 4,
        height: 4,
        fps: 25,
        audio: PcmFile {
            path: "/tmp/x/audio.f32le".into(),
            sample_rate: 48_000,
            channels: 2,
        },
        audio_offset_s: 0.0,
        out_path: "/tmp/x/o.mp4".into(),
        timeout: Duration::from_secs(1),
    };
    let args: Vec<String> = encode_args(&spec)
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    for (i, _) in args.iter().enumerate().filter(|(_, a)| *a == "-i") {
        let before = &args[..i];
        let last = |flag: &str| before.iter().rposition(|a| a == flag);
        let prev_input = before.iter().rposition(|a| a == "-i");
        assert!(
            last("-f") > prev_input,
            "input {i} has no forced format: {args:?}"
        );
        assert!(
            last("-protocol_whitelist") > prev_input,
            "input {i} has no protocol whitelist: {args:?}"
        );
        let source = &args[i + 1];
        assert!(
            source == "pipe:0" || source.starts_with("file:"),
            "{source}"
        );
    }
}

#[tokio::test]
async fn an_address_space_limit_applies_to_the_child() {
    // 32 MiB is not enough for ffmpeg even to map its libraries: the limit reaches the child.
    let limited = run_capture_limited(
        FFMPEG,
        &words("-version"),
        "version",
        SHORT_TIMEOUT,
        Some(32 * 1024 * 1024),
    )
    .await;
    assert!(
        matches!(limited, Err(FfmpegError::EncodeFailed { .. })),
        "{limited:?}"
    );
    // The limit uploads are decoded under leaves room for real work.
    let ok = run_capture_limited(
        FFMPEG,
        &words("-version"),
        "version",
        SHORT_TIMEOUT,
        Some(1024 * 1024 * 1024),
    )
    .await;
    assert!(ok.is_ok(), "{ok:?}");
}
