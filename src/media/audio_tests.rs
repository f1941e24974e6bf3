//! Tests for `audio.rs` (kept apart to keep that file short). Fixtures other
//! than the shared WAV/MP3 are made with ffmpeg at test time.

use super::*;
use std::path::PathBuf;
use std::process::Command;

const WAV: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/samples/speech_en.wav");
const MP3: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/samples/speech_en.mp3");
const PNG: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/assets/samples/face_astronaut.png"
);
/// 166_794 frames at 22_050 Hz (ffprobe rounds it to 7.56 s).
const WAV_SECS: f64 = 166_794.0 / 22_050.0;

fn tmpdir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("media-audio-test-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Transcodes the reference WAV with ffmpeg. Fails loudly when ffmpeg is
/// missing: these fixtures are part of the contract, not optional.
fn ffmpeg(name: &str, args: &[&str]) -> PathBuf {
    let out = tmpdir().join(name);
    let status = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y", "-i", WAV])
        .args(args)
        .arg(&out)
        .status()
        .unwrap_or_else(|e| {
            panic!(
                "ffmpeg is required for the FLAC/OGG/M4A fixtures (apt-get install -y ffmpeg): {e}"
            )
        });
    assert!(status.success(), "ffmpeg failed making {name}: {status}");
    out
}

#[test]
fn wav_reference() {
    let i = probe_audio(Path::new(WAV), None).unwrap();
    assert_eq!(i.format, AudioFormatName::Wav);
    assert_eq!((i.sample_rate, i.channels), (22_050, 1));
    assert!((i.duration_s - WAV_SECS).abs() < 0.005, "{i:?}");
    assert_eq!(serde_json::to_string(&i.format).unwrap(), "\"wav\"");
}

#[test]
fn mp3_gapless_matches_wav() {
    let w = probe_audio(Path::new(WAV), None).unwrap();
    let m = probe_audio(Path::new(MP3), None).unwrap();
    assert_eq!(m.format, AudioFormatName::Mp3);
    assert_eq!((m.sample_rate, m.channels), (22_050, 1));
    let diff = (m.duration_s - w.duration_s).abs();
    println!(
        "wav {:.4} s, mp3 {:.4} s, diff {:.4} s",
        w.duration_s, m.duration_s, diff
    );
    assert!(diff < 0.03, "mp3 {} vs wav {}", m.duration_s, w.duration_s);
}

#[test]
fn mp3_detected_by_content_under_any_name() {
    let p = tmpdir().join("voice.wav");
    std::fs::copy(MP3, &p).unwrap();
    assert_eq!(probe_audio(&p, None).unwrap().format, AudioFormatName::Mp3);
}

#[test]
fn flac_ogg_m4a_fixtures() {
    let cases = [
        ("s.flac", vec!["-c:a", "flac"], AudioFormatName::Flac, 0.001),
        (
            "s.ogg",
            vec!["-c:a", "libvorbis", "-q:a", "3"],
            AudioFormatName::Ogg,
            0.03,
        ),
        (
            "s.m4a",
            vec!["-c:a", "aac", "-b:a", "64k"],
            AudioFormatName::M4a,
            0.03,
        ),
        // Stereo 44.1 kHz AAC: the common phone-recording shape.
        (
            "st.m4a",
            vec!["-ac", "2", "-ar", "44100", "-c:a", "aac"],
            AudioFormatName::M4a,
            0.03,
        ),
    ];
    for (name, args, fmt, tol) in cases {
        let p = ffmpeg(name, &args);
        let i = probe_audio(&p, None).unwrap_or_else(|e| panic!("{name}: {e}"));
        println!("{name}: {i:?}");
        assert_eq!(i.format, fmt, "{name}");
        assert!(
            (i.duration_s - WAV_SECS).abs() < tol,
            "{name}: {} s",
            i.duration_s
        );
    }
    let st = probe_audio(&tmpdir().join("st.m4a"), None).unwrap();
    assert_eq!((st.sample_rate, st.channels), (44_100, 2));
}

#[test]
fn ogg_opus_and_webm_are_left_to_ffmpeg() {
    // symphonia has no Opus decoder: intake has ffmpeg decode these (`audio_upload`); anywhere else
    // they are unsupported.
    let p = ffmpeg("s.opus.ogg", &["-c:a", "libopus", "-f", "ogg"]);
    let e = probe_audio(&p, None).unwrap_err();
    assert!(matches!(e, MediaError::NeedsFfmpeg { .. }), "{e:?}");
    assert_eq!(e.code(), "unsupported_audio_format");
    assert!(e.to_string().contains("Opus"), "{e}");
    let p = ffmpeg("s.webm", &["-c:a", "libopus", "-f", "webm"]);
    let e = probe_audio(&p, None).unwrap_err();
    assert!(matches!(e, MediaError::NeedsFfmpeg { .. }), "{e:?}");
    assert_eq!(sniff_format(&p).unwrap(), AudioFormatName::Webm);
}

#[test]
fn decode_mono_resamples_and_downmixes() {
    let w = decode_mono(Path::new(WAV), 16_000).unwrap();
    assert!(
        (w.len() as f64 / 16_000.0 - WAV_SECS).abs() < 0.001,
        "{}",
        w.len()
    );
    let m = decode_mono(Path::new(MP3), 16_000).unwrap();
    assert!(
        (m.len() as i64 - w.len() as i64).abs() < 480,
        "{} vs {}",
        m.len(),
        w.len()
    );

    // Stereo where the right channel is the inverse of the left downmixes to ~0.
    let p = tmpdir().join("cancel.wav");
    let st = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y", "-i", WAV])
        .args([
            "-filter_complex",
            "[0:a]asplit[a][b];[b]volume=-1[c];[a][c]join=inputs=2:channel_layout=stereo",
        ])
        .args(["-ar", "44100"])
        .arg(&p)
        .status()
        .expect("ffmpeg is required for this test");
    assert!(st.success());
    let info = probe_audio(&p, None).unwrap();
    assert_eq!((info.channels, info.sample_rate), (2, 44_100));
    let mono = decode_mono(&p, 16_000).unwrap();
    assert!((mono.len() as f64 / 16_000.0 - WAV_SECS).abs() < 0.002);
    assert!(mono.iter().all(|s| s.abs() < 1e-3));
    // Signal energy survives when it is not cancelled.
    assert!(w.iter().map(|s| s.abs()).fold(0.0, f32::max) > 0.1);
}

#[test]
fn non_audio_is_refused() {
    let e = probe_audio(Path::new(PNG), None).unwrap_err();
    assert_eq!(e.code(), "unsupported_audio_format", "{e}");
    let p = tmpdir().join("text.mp3");
    std::fs::write(&p, "just some text pretending to be an mp3 file").unwrap();
    assert_eq!(
        probe_audio(&p, None).unwrap_err().code(),
        "unsupported_audio_format"
    );
    let p = tmpdir().join("empty.wav");
    std::fs::write(&p, b"").unwrap();
    assert!(probe_audio(&p, None).is_err());
    let e = probe_audio(Path::new("/nonexistent.wav"), None).unwrap_err();
    assert_eq!(e.code(), "media_unreadable");
}

#[test]
fn header_only_wav_is_empty() {
    let data = std::fs::read(WAV).unwrap();
    let p = tmpdir().join("hdr.wav");
    std::fs::write(&p, &data[..44]).unwrap();
    let e = probe_audio(&p, None).unwrap_err();
    assert!(
        matches!(e.code(), "audio_empty" | "audio_decode_failed"),
        "{e}"
    );
}

#[test]
fn truncated_and_corrupt_never_panic() {
    let flac = ffmpeg("f.flac", &["-c:a", "flac"]);
    let ogg = ffmpeg("f.ogg", &["-c:a", "libvorbis"]);
    let m4a = ffmpeg("f.m4a", &["-c:a", "aac"]);
    let srcs: Vec<Vec<u8>> = [PathBuf::from(WAV), PathBuf::from(MP3), flac, ogg, m4a]
        .iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    let p = tmpdir().join("fuzz.bin");
    let mut seed = 0x9E37_79B9_u32;
    for src in &srcs {
        for cut in [4, 12, 40, 100, 400, 2_000, src.len() / 3, src.len() - 7] {
            std::fs::write(&p, &src[..cut.min(src.len())]).unwrap();
            // Short cuts must fail; longer ones may yield a shorter recording.
            match probe_audio(&p, None) {
                Ok(i) => assert!(i.duration_s <= WAV_SECS + 0.1),
                Err(e) => assert!(!e.code().is_empty()),
            }
        }
        for round in 0..10 {
            let mut bad = src.clone();
            for _ in 0..50 {
                seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                let i = 16 + (seed as usize % (bad.len() - 16));
                bad[i] = (seed >> 24) as u8;
            }
            std::fs::write(&p, &bad).unwrap();
            let _ = probe_audio(&p, None);
            // decode_mono adds only the resampler; a few rounds cover it.
            if round < 2 {
                let _ = decode_mono(&p, 16_000);
            }
        }
    }
}

/// Lag (in samples) of `b` relative to `a` that maximises their correlation.
fn best_lag(a: &[f32], b: &[f32], max_lag: i64) -> i64 {
    // 1.5 s of speech from 1 s in is plenty to lock onto.
    let (from, to) = (
        16_000_i64.max(max_lag),
        (40_000_i64).min(a.len().min(b.len()) as i64 - max_lag),
    );
    (-max_lag..=max_lag)
        .max_by(|&x, &y| {
            let corr = |lag: i64| -> f64 {
                (from..to)
                    .step_by(4)
                    .map(|i| f64::from(a[i as usize]) * f64::from(b[(i + lag) as usize]))
                    .sum()
            };
            corr(x).total_cmp(&corr(y))
        })
        .unwrap()
}

#[test]
fn lossy_decodes_are_time_aligned_with_wav() {
    // Duration alone could hide trimming the wrong end; the waveforms must line
    // up. Untrimmed AAC priming (1024 samples at 22.05 kHz) would show as a
    // lag of ~743 samples at 16 kHz, inside the search range.
    let wav = decode_mono(Path::new(WAV), 16_000).unwrap();
    let m4a = ffmpeg("align.m4a", &["-c:a", "aac"]);
    for p in [PathBuf::from(MP3), m4a] {
        let x = decode_mono(&p, 16_000).unwrap();
        let lag = best_lag(&wav, &x, 900);
        assert!(lag.abs() <= 2, "{}: lag {lag} samples", p.display());
    }
}

/// An ID3v2.4 tag of `body` (syncsafe size), as taggers write it.
fn id3_tag(body: &[u8]) -> Vec<u8> {
    let n = body.len() as u32;
    let mut tag = b"ID3\x04\x00\x00".to_vec();
    tag.extend([
        (n >> 21) as u8 & 0x7F,
        (n >> 14) as u8 & 0x7F,
        (n >> 7) as u8 & 0x7F,
        n as u8 & 0x7F,
    ]);
    tag.extend_from_slice(body);
    tag
}

/// The sample MP3 without its own ID3 tag: bare MPEG frames.
fn bare_mp3_frames() -> Vec<u8> {
    let data = std::fs::read(MP3).unwrap();
    let size = data[6..10]
        .iter()
        .fold(0usize, |acc, b| (acc << 7) | usize::from(*b));
    data[10 + size..].to_vec()
}

#[test]
fn id3_followed_by_mp3_frames_is_accepted() {
    let p = tmpdir().join("tagged.mp3");
    let mut file = id3_tag(b"TIT2\x00\x00\x00\x06\x00\x00\x03hello");
    file.extend([0u8; 64]); // padding
    file.extend(bare_mp3_frames());
    std::fs::write(&p, &file).unwrap();
    let info = probe_audio(&p, None).unwrap();
    assert_eq!(info.format, AudioFormatName::Mp3);
    assert!(
        (info.duration_s - WAV_SECS).abs() < 0.05,
        "{}",
        info.duration_s
    );
}

#[test]
fn id3_polyglots_are_refused() {
    let frames = bare_mp3_frames();
    let cases: [(&str, Vec<u8>); 4] = [
        (
            "hls playlist",
            b"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\n/etc/passwd\n#EXT-X-ENDLIST\n"
                .to_vec(),
        ),
        (
            "concat protocol",
            b"concat:/etc/passwd|/etc/hosts\n".to_vec(),
        ),
        (
            "ffconcat",
            b"ffconcat version 1.0\nfile '/etc/passwd'\n".to_vec(),
        ),
        ("a WAV header", std::fs::read(WAV).unwrap()[..64].to_vec()),
    ];
    for (name, smuggled) in cases {
        let p = tmpdir().join("polyglot.mp3");
        let mut file = id3_tag(b"TIT2\x00\x00\x00\x02\x00\x00\x03x");
        file.extend(&smuggled);
        file.extend(&frames);
        std::fs::write(&p, &file).unwrap();
        let err = probe_audio(&p, None).unwrap_err();
        assert_eq!(err.code(), "unsupported_audio_format", "{name}: {err}");
    }
    // A tag whose size runs past the end of the file is not MP3 either.
    let p = tmpdir().join("short-tag.mp3");
    let mut file = id3_tag(&[0u8; 100]);
    file.truncate(50);
    std::fs::write(&p, &file).unwrap();
    assert_eq!(
        probe_audio(&p, None).unwrap_err().code(),
        "unsupported_audio_format"
    );
}

#[test]
fn text_pretending_to_be_media_is_refused() {
    for text in [
        "#EXTM3U\n#EXTINF:10,\nfile:///etc/passwd\n",
        "concat:/etc/passwd|/etc/hosts",
        "subfile,,start,0,end,0,,:/etc/passwd",
        "ffconcat version 1.0\nfile '/etc/passwd'\n",
    ] {
        let p = tmpdir().join("trick.mp3");
        std::fs::write(&p, text).unwrap();
        assert_eq!(
            probe_audio(&p, None).unwrap_err().code(),
            "unsupported_audio_format",
            "{text}"
        );
    }
}

#[test]
fn decoding_stops_past_the_duration_limit() {
    let err = probe_audio(Path::new(WAV), Some(3.0)).unwrap_err();
    assert_eq!(err.code(), "audio_too_long", "{err}");
    // Within the limit (and within the slack past it) the exact length is measured.
    let info = probe_audio(Path::new(WAV), Some(7.0)).unwrap();
    assert!((info.duration_s - WAV_SECS).abs() < 1e-6);
    assert!(probe_audio(Path::new(WAV), Some(8.0)).is_ok());
}

#[test]
fn decode_for_render_writes_the_playable_pcm() {
    let out = tmpdir().join("render.f32le");
    let (mono, pcm) = decode_for_render(Path::new(MP3), &out, 16_000, None).unwrap();
    assert_eq!((pcm.sample_rate, pcm.channels), (22_050, 1));
    let bytes = std::fs::metadata(&out).unwrap().len();
    let secs = bytes as f64 / 4.0 / 22_050.0;
    let probed = probe_audio(Path::new(MP3), None).unwrap();
    assert!(
        (secs - probed.duration_s).abs() < 1e-6,
        "{secs} vs {}",
        probed.duration_s
    );
    assert!((mono.len() as f64 / 16_000.0 - probed.duration_s).abs() < 0.001);
    // The same samples as the mono decode (the render path adds no drift).
    let reference = decode_mono(Path::new(MP3), 16_000).unwrap();
    assert_eq!(mono.len(), reference.len());
    assert!(mono
        .iter()
        .zip(&reference)
        .all(|(a, b)| (a - b).abs() < 1e-6));

    // Stereo stays stereo in the file; the animation gets the mono mix.
    let st = ffmpeg("st-render.wav", &["-ac", "2", "-ar", "44100"]);
    let (_, pcm) = decode_for_render(&st, &out, 16_000, None).unwrap();
    assert_eq!((pcm.sample_rate, pcm.channels), (44_100, 2));
    let frames = std::fs::metadata(&out).unwrap().len() as f64 / 8.0;
    assert!((frames / 44_100.0 - WAV_SECS).abs() < 0.001);
}

/// An edit list that keeps 2 s of a 20 s file must not let the 20 s be decoded past a 5 s limit.
#[test]
fn an_edit_list_cannot_hide_the_length_decoded() {
    let p = tmpdir().join("long.m4a");
    let st = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi"])
        .args([
            "-i",
            "sine=frequency=440:duration=20:sample_rate=22050",
            "-c:a",
            "aac",
        ])
        .arg(&p)
        .status()
        .expect("ffmpeg is required for this test");
    assert!(st.success());
    let mut bytes = std::fs::read(&p).unwrap();
    let at = bytes
        .windows(4)
        .position(|w| w == b"elst")
        .expect("ffmpeg writes an edit list");
    // elst v0: version/flags, count, then segment_duration (movie timescale, 1000/s for ffmpeg).
    bytes[at + 12..at + 16].copy_from_slice(&2_000u32.to_be_bytes());
    std::fs::write(&p, &bytes).unwrap();
    let kept = probe_audio(&p, None).unwrap();
    assert!((kept.duration_s - 2.0).abs() < 0.05, "{}", kept.duration_s);
    assert_eq!(
        probe_audio(&p, Some(5.0)).unwrap_err().code(),
        "audio_too_long"
    );
}

#[test]
fn absurd_sample_rates_and_tiny_recordings_are_refused() {
    let mut wav = std::fs::read(WAV).unwrap();
    wav[24..28].copy_from_slice(&4_294_967_291u32.to_le_bytes());
    let p = tmpdir().join("rate.wav");
    std::fs::write(&p, &wav).unwrap();
    assert_eq!(
        probe_audio(&p, None).unwrap_err().code(),
        "unsupported_audio_format"
    );
    // 0.1 s of audio: too short to animate.
    let short = ffmpeg("short.wav", &["-t", "0.1"]);
    assert_eq!(
        probe_audio(&short, None).unwrap_err().code(),
        "audio_too_short"
    );
}
