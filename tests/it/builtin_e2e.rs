//! End to end through ffmpeg: sample photo + speech → MP4, checked with
//! ffprobe and by decoding the frames back. Needs `ffmpeg` on PATH.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sonicgw::engines::builtin::{crop_for_render, features, render_video, BuiltinParams};
use sonicgw::media::audio::{decode_for_render, PcmFile};
use sonicgw::media::face::{plan_crop, FaceDetector, Rect};
use sonicgw::media::ffmpeg;

const SAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/samples");

/// Reads a 16-bit WAV with hound and resamples linearly to 16 kHz mono.
fn load_16k(path: &Path) -> Vec<f32> {
    let mut reader = hound::WavReader::open(path).expect("open wav");
    let spec = reader.spec();
    let ch = spec.channels as usize;
    let raw: Vec<f32> = reader
        .samples::<i16>()
        .map(|s| s.expect("sample") as f32 / 32768.0)
        .collect();
    let mono: Vec<f32> = raw
        .chunks_exact(ch)
        .map(|c| c.iter().sum::<f32>() / ch as f32)
        .collect();
    let ratio = spec.sample_rate as f64 / 16_000.0;
    let n = (mono.len() as f64 / ratio).floor() as usize;
    (0..n)
        .map(|i| {
            let pos = i as f64 * ratio;
            let (j, t) = (pos as usize, pos.fract() as f32);
            let b = mono.get(j + 1).copied().unwrap_or(mono[j]);
            mono[j] * (1.0 - t) + b * t
        })
        .collect()
}

/// The recording as the raw PCM the encoder muxes.
fn pcm_of(audio: &Path, dir: &Path) -> PcmFile {
    decode_for_render(audio, &dir.join("audio.f32le"), 16_000, None)
        .expect("decode sample")
        .1
}

/// Pearson correlation of two series (over their common length).
fn pearson(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len().min(b.len()) as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let (mut cov, mut va, mut vb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        cov += (x - ma) * (y - mb);
        va += (x - ma).powi(2);
        vb += (y - mb).powi(2);
    }
    cov / (va * vb).sqrt().max(1e-12)
}

fn params(offset: f64) -> BuiltinParams {
    BuiltinParams {
        dynamic_scale: 1.0,
        motion_scale: 1.0,
        seed: 9,
        lip_sync_offset_s: offset,
    }
}

/// The sample photo prepared as production prepares it: the face detector, intake's crop plan
/// (default `expand_ratio` 0.5, `min_resolution` 512), then the engine's crop.
fn sample_face() -> (image::RgbImage, (u32, u32, u32, u32)) {
    let img = image::open(Path::new(SAMPLES).join("face_astronaut.png"))
        .expect("sample photo")
        .to_rgb8();
    let faces = FaceDetector::new().unwrap().detect(&img);
    let face = faces.first().expect("the sample has a face");
    let plan = plan_crop(face, img.width(), img.height(), 0.5, 512);
    let face = Rect {
        x: face.x,
        y: face.y,
        width: face.width,
        height: face.height,
    };
    crop_for_render(&img, plan.crop, face, plan.output_width, plan.output_height)
}

/// Decodes the video as 128x128 greyscale frames.
fn decode_gray(path: &Path) -> Vec<Vec<u8>> {
    let out = std::process::Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(path)
        .args([
            "-vf",
            "scale=128:128",
            "-f",
            "rawvideo",
            "-pix_fmt",
            "gray",
            "-",
        ])
        .output()
        .expect("run ffmpeg");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
        .chunks_exact(128 * 128)
        .map(<[u8]>::to_vec)
        .collect()
}

/// Mean per-pixel variance over time inside a rectangle of 128x128 frames.
fn temporal_variance(frames: &[Vec<u8>], x0: usize, y0: usize, x1: usize, y1: usize) -> f64 {
    let n = frames.len() as f64;
    let mut total = 0.0;
    for y in y0..y1 {
        for x in x0..x1 {
            let v: Vec<f64> = frames.iter().map(|f| f[y * 128 + x] as f64).collect();
            let mean = v.iter().sum::<f64>() / n;
            total += v.iter().map(|p| (p - mean).powi(2)).sum::<f64>() / n;
        }
    }
    total / ((x1 - x0) * (y1 - y0)) as f64
}

#[tokio::test]
async fn speech_sample_renders_a_talking_head() {
    ffmpeg::check_available()
        .await
        .expect("ffmpeg is required for this test");
    let wav = PathBuf::from(SAMPLES).join("speech_en.wav");
    let samples = load_16k(&wav);
    let (crop, face) = sample_face();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.mp4");
    let mut seen = Vec::new();
    let pcm = pcm_of(&wav, dir.path());
    let stats = render_video(crop, face, &samples, &pcm, params(0.0), &out, |p| {
        seen.push(p)
    })
    .await
    .unwrap();
    assert_eq!(stats.frames, 189);
    assert!(
        seen.windows(2).all(|w| w[0] <= w[1]) && seen.last() == Some(&1.0),
        "progress {seen:?}"
    );

    let info = ffmpeg::probe(&out).await.unwrap();
    println!("{info:?}");
    assert_eq!(info.video_codec.as_deref(), Some("h264"));
    assert_eq!(info.pix_fmt.as_deref(), Some("yuv420p"));
    assert_eq!(info.audio_codec.as_deref(), Some("aac"));
    assert_eq!((info.width, info.height), (512, 512));
    assert!((info.avg_fps - 25.0).abs() < 1e-6, "fps {}", info.avg_fps);
    assert!(
        (info.duration_s - 7.56).abs() <= 0.04,
        "duration {}",
        info.duration_s
    );
    assert!(
        info.nb_frames.abs_diff(189) <= 1,
        "frames {}",
        info.nb_frames
    );

    // The mouth moves a lot over time; a background corner hardly at all.
    let frames = decode_gray(&out);
    assert!(frames.len().abs_diff(189) <= 1);
    let (mx, my) = (
        (face.0 + face.2 / 2) as usize / 4,
        (face.1 + face.3 * 78 / 100) as usize / 4,
    );
    let mouth = temporal_variance(&frames, mx - 8, my - 2, mx + 8, my + 8);
    let corner = temporal_variance(&frames, 2, 2, 14, 14);
    // The nose sways like the mouth but is not animated: it separates real
    // mouth movement from head motion.
    let ny = (face.1 + face.3 * 55 / 100) as usize / 4;
    let nose = temporal_variance(&frames, mx - 8, ny - 5, mx + 8, ny + 5);
    // The mouth darkens (opens) when the speech is loud.
    let dark: Vec<f64> = frames
        .iter()
        .map(|f| {
            let rows = (my - 1..my + 6).flat_map(|y| f[y * 128 + mx - 6..y * 128 + mx + 6].iter());
            -rows.map(|&p| p as f64).sum::<f64>()
        })
        .collect();
    let loud: Vec<f64> = samples
        .chunks(640)
        .take(dark.len())
        .map(|c| (c.iter().map(|s| (s * s) as f64).sum::<f64>() / c.len() as f64).sqrt())
        .collect();
    let corr = pearson(&dark, &loud);
    println!("variance: mouth {mouth:.1}, nose {nose:.1}, corner {corner:.1}; loudness correlation {corr:.2}");
    assert!(
        mouth > 150.0 && mouth > 20.0 * corner,
        "mouth {mouth}, corner {corner}"
    );
    assert!(mouth > 3.0 * nose, "mouth {mouth}, nose {nose}");
    assert!(
        corr > 0.5,
        "mouth does not follow the speech: correlation {corr}"
    );
}

#[tokio::test]
async fn lip_sync_offsets_keep_video_length() {
    let wav = PathBuf::from(SAMPLES).join("speech_en.wav");
    let samples = load_16k(&wav);
    let short = &samples[..16_000 * 2];
    let (crop, face) = sample_face();
    let dir = tempfile::tempdir().unwrap();
    let pcm = pcm_of(&wav, dir.path());
    for offset in [-0.3, 0.3] {
        let out = dir.path().join(format!("offset_{offset}.mp4"));
        render_video(
            crop.clone(),
            face,
            short,
            &pcm,
            params(offset),
            &out,
            |_| {},
        )
        .await
        .unwrap();
        let info = ffmpeg::probe(&out).await.unwrap();
        assert_eq!(info.audio_codec.as_deref(), Some("aac"));
        assert!(
            (info.duration_s - 2.0).abs() <= 0.04,
            "offset {offset}: {}",
            info.duration_s
        );
        assert!(
            info.nb_frames.abs_diff(50) <= 1,
            "offset {offset}: {}",
            info.nb_frames
        );
        // The speech starts at once, so a delayed track opens with silence.
        let audio = ffmpeg::decode_audio_16k(&out).await.unwrap();
        let head = &audio[..4_000];
        let rms = (head.iter().map(|s| s * s).sum::<f32>() / head.len() as f32).sqrt();
        if offset > 0.0 {
            assert!(rms < 1e-3, "delayed audio should start silent, rms {rms}");
        } else {
            assert!(
                rms > 1e-2,
                "advanced audio should start with speech, rms {rms}"
            );
        }
    }
}

/// Whether any process has `needle` in its command line (Linux /proc).
fn process_running_with(needle: &str) -> bool {
    std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
        std::fs::read(e.path().join("cmdline"))
            .map(|c| String::from_utf8_lossy(&c).contains(needle))
            .unwrap_or(false)
    })
}

#[tokio::test]
async fn dropping_the_render_kills_ffmpeg() {
    let wav = PathBuf::from(SAMPLES).join("speech_en.wav");
    // Two minutes of audio: far longer than the time we let it run.
    let samples: Vec<f32> = (0..16_000 * 120)
        .map(|i| (i as f32 * 0.05).sin() * 0.3)
        .collect();
    let (crop, face) = sample_face();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cancelled.mp4");
    let needle = out.to_string_lossy().into_owned();
    let pcm = pcm_of(&wav, dir.path());
    // Boxed so `drop` really drops the future (a stack-pinned one would live
    // until the end of the test).
    let mut fut = Box::pin(render_video(
        crop,
        face,
        &samples,
        &pcm,
        params(0.0),
        &out,
        |_| {},
    ));
    let watch = async {
        // Wait until ffmpeg is really running before cancelling.
        while !process_running_with(&needle) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    tokio::select! {
        r = &mut fut => panic!("render finished unexpectedly: {r:?}"),
        _ = tokio::time::timeout(Duration::from_secs(20), watch) => {}
    }
    drop(fut);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while process_running_with(&needle) {
        assert!(
            std::time::Instant::now() < deadline,
            "ffmpeg still running after drop"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(features::frame_count(samples.len()) == 3000);
}
