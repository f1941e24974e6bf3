//! The labels checked on real ffmpeg runs: pixels of labelled frames against the same frames of
//! the unlabelled video, and the metadata read back with ffprobe.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::*;
use crate::domain::{LabelText, LabelTexts};

const W: u32 = 512;
const H: u32 = 640;

/// A 5 s mid-grey H.264/AAC video, as an engine would write it.
fn engine_video(dir: &Path) -> PathBuf {
    let path = dir.join("engine.mp4");
    let status = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi", "-i"])
        .arg(format!("color=c=0x606060:s={W}x{H}:r=25:d=5"))
        .args(["-f", "lavfi", "-i", "sine=d=5"])
        .args([
            "-c:v",
            "libx264",
            "-pix_fmt",
            "yuv420p",
            "-c:a",
            "aac",
            "-shortest",
        ])
        .arg(&path)
        .status()
        .expect("ffmpeg runs");
    assert!(status.success());
    path
}

/// The frame at `t` seconds as 8-bit luma.
fn frame(video: &Path, t: f64) -> Vec<u8> {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-ss", &t.to_string(), "-i"])
        .arg(video)
        .args(["-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "gray", "-"])
        .output()
        .expect("ffmpeg runs");
    assert!(out.status.success());
    assert_eq!(out.stdout.len(), (W * H) as usize);
    out.stdout
}

/// Where two frames differ clearly (more than codec noise): the bounding box of those pixels as
/// (top, bottom, left, right), or `None`.
fn changed(a: &[u8], b: &[u8]) -> Option<(u32, u32, u32, u32)> {
    let mut bounds: Option<(u32, u32, u32, u32)> = None;
    for y in 0..H {
        for x in 0..W {
            let i = (y * W + x) as usize;
            if a[i].abs_diff(b[i]) > 40 {
                bounds = Some(match bounds {
                    None => (y, y, x, x),
                    Some((t, bo, l, r)) => (t.min(y), bo.max(y), l.min(x), r.max(x)),
                });
            }
        }
    }
    bounds
}

/// Rows holding near-white (label text) pixels that the original frame does not have.
fn text_rows(labelled: &[u8], original: &[u8]) -> Vec<u32> {
    (0..H)
        .filter(|&y| {
            (0..W).any(|x| {
                let i = (y * W + x) as usize;
                labelled[i] > 200 && original[i] < 150
            })
        })
        .collect()
}

fn labeller(explicit_label: bool, corner_mark: bool, font: &Path) -> Labeller {
    Labeller::new(LabelSettings {
        explicit_label,
        corner_mark,
        font: font.to_path_buf(),
        producer_id: "测试服务 sonicgw-test".to_owned(),
        timeout: Duration::from_secs(120),
    })
    .expect("the default font is installed (scripts/setup.sh)")
}

fn default_font() -> PathBuf {
    PathBuf::from(crate::config::DEFAULT_LABEL_FONT)
}

async fn label(
    labeller: &Labeller,
    dir: &Path,
    input: &Path,
    language: LabelLanguage,
    texts: &LabelTexts,
) -> PathBuf {
    let output = dir.join(format!("labelled-{}.mp4", uuid::Uuid::new_v4().simple()));
    let scratch = tempfile::tempdir_in(dir).unwrap();
    let request = LabelRequest {
        produce_id: "job-123".to_owned(),
        language,
        texts,
    };
    labeller
        .label(&request, input, &output, scratch.path())
        .await
        .expect("labelling succeeds");
    output
}

fn format_tags(video: &Path) -> serde_json::Value {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-show_entries", "format_tags", "-of", "json"])
        .arg(video)
        .output()
        .expect("ffprobe runs");
    assert!(out.status.success());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    json["format"]["tags"].clone()
}

#[tokio::test]
async fn opening_label_shows_for_the_first_seconds_then_the_corner_mark() {
    let dir = tempfile::tempdir().unwrap();
    let original = engine_video(dir.path());
    let labelled = label(
        &labeller(true, true, &default_font()),
        dir.path(),
        &original,
        LabelLanguage::Zh,
        &LabelTexts::default(),
    )
    .await;
    let short = W.min(H);

    for t in [0.0, 1.0, 2.5] {
        let (before, after) = (frame(&original, t), frame(&labelled, t));
        let (top, bottom, left, right) =
            changed(&before, &after).unwrap_or_else(|| panic!("no label at {t} s"));
        // The opening label: in the upper part, centred, nothing in the lower half.
        assert!(bottom < H / 2, "at {t} s the label reaches row {bottom}");
        let centre = (left + right) / 2;
        assert!(
            centre.abs_diff(W / 2) < W / 20,
            "at {t} s centred at {centre}"
        );
        assert!(top < H / 5, "at {t} s it starts at row {top}");
        let rows = text_rows(&after, &before);
        let height = rows.last().unwrap() - rows.first().unwrap() + 1;
        assert!(
            f64::from(height) >= 0.05 * f64::from(short),
            "text {height} px high, less than 5 % of {short}"
        );
    }

    let (before, after) = (frame(&original, 4.0), frame(&labelled, 4.0));
    let (top, _, left, _) = changed(&before, &after).expect("a corner mark after the opening");
    assert!(
        top > H * 3 / 4 && left > W / 2,
        "corner mark at row {top}, column {left}"
    );
    let rows = text_rows(&after, &before);
    let height = rows.last().unwrap() - rows.first().unwrap() + 1;
    assert!(
        f64::from(height) >= 0.05 * f64::from(short),
        "corner text {height} px high"
    );

    let tags = format_tags(&labelled);
    let aigc: serde_json::Value = serde_json::from_str(tags["AIGC"].as_str().unwrap()).unwrap();
    assert_eq!(aigc["Label"], "1");
    assert_eq!(aigc["ContentProducer"], "测试服务 sonicgw-test");
    assert_eq!(aigc["ProduceID"], "job-123");
    for reserved in [
        "ReservedCode1",
        "ContentPropagator",
        "PropagateID",
        "ReservedCode2",
    ] {
        assert_eq!(aigc[reserved], "", "{reserved}");
    }
}

#[tokio::test]
async fn without_the_corner_mark_the_rest_is_untouched_and_without_the_label_every_frame_is() {
    let dir = tempfile::tempdir().unwrap();
    let original = engine_video(dir.path());
    let texts = LabelTexts::default();
    let no_corner = label(
        &labeller(true, false, &default_font()),
        dir.path(),
        &original,
        LabelLanguage::Both,
        &texts,
    )
    .await;
    assert!(changed(&frame(&original, 1.0), &frame(&no_corner, 1.0)).is_some());
    assert_eq!(
        changed(&frame(&original, 4.0), &frame(&no_corner, 4.0)),
        None
    );

    // Without the visible label no font is needed, and the frames are copied.
    let metadata_only = label(
        &labeller(false, true, Path::new("/nonexistent/font.ttc")),
        dir.path(),
        &original,
        LabelLanguage::Both,
        &texts,
    )
    .await;
    for t in [0.0, 1.0, 4.0] {
        assert_eq!(frame(&original, t), frame(&metadata_only, t), "at {t} s");
    }
    assert!(format_tags(&metadata_only)["AIGC"]
        .as_str()
        .unwrap()
        .contains(r#""ProduceID":"job-123""#));
}

#[tokio::test]
async fn languages_and_tenant_texts_change_what_is_drawn() {
    let dir = tempfile::tempdir().unwrap();
    let original = engine_video(dir.path());
    let l = labeller(true, false, &default_font());
    let defaults = LabelTexts::default();
    let zh = label(&l, dir.path(), &original, LabelLanguage::Zh, &defaults).await;
    let both = label(&l, dir.path(), &original, LabelLanguage::Both, &defaults).await;
    let base = frame(&original, 1.0);
    let zh_box = changed(&base, &frame(&zh, 1.0)).unwrap();
    let both_box = changed(&base, &frame(&both, 1.0)).unwrap();
    // Two lines are taller than one.
    assert!(
        both_box.1 - both_box.0 > (zh_box.1 - zh_box.0) * 3 / 2,
        "{zh_box:?} {both_box:?}"
    );

    // Text that would be filter syntax or drawtext expansions is drawn as text.
    let odd = LabelTexts {
        zh: LabelText::parse("zh", "AI'生成:[x];%{pts}").unwrap(),
        en: LabelText::parse("en", r"gen\,%{n}").unwrap(),
    };
    let drawn = label(&l, dir.path(), &original, LabelLanguage::Both, &odd).await;
    assert_ne!(frame(&drawn, 1.0), frame(&both, 1.0));
}

#[tokio::test]
async fn a_font_path_with_filter_syntax_is_escaped() {
    let dir = tempfile::tempdir().unwrap();
    let original = engine_video(dir.path());
    let odd = dir.path().join("font: a,b'c[0];d\\e.ttc");
    std::os::unix::fs::symlink(default_font(), &odd).unwrap();
    let labelled = label(
        &labeller(true, true, &odd),
        dir.path(),
        &original,
        LabelLanguage::En,
        &LabelTexts::default(),
    )
    .await;
    assert!(changed(&frame(&original, 1.0), &frame(&labelled, 1.0)).is_some());
}

#[test]
fn a_missing_or_wrong_font_stops_startup_with_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let settings = |font: PathBuf| LabelSettings {
        explicit_label: true,
        corner_mark: true,
        font,
        producer_id: "sonicgw".to_owned(),
        timeout: Duration::from_secs(1),
    };
    let err = Labeller::new(settings(dir.path().join("missing.ttc"))).unwrap_err();
    assert!(format!("{err:#}").contains("label_font"), "{err:#}");
    let not_a_font = dir.path().join("font.ttc");
    std::fs::write(&not_a_font, "hello").unwrap();
    let err = Labeller::new(settings(not_a_font)).unwrap_err();
    assert!(format!("{err:#}").contains("not a TrueType"), "{err:#}");
    let mut bad_producer = settings(default_font());
    bad_producer.producer_id = "a\nb".into();
    assert!(Labeller::new(bad_producer).is_err());
}
