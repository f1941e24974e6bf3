//! The parser fuzz targets' committed inputs (`fuzz/corpus/<target>/`, and `fuzz/regressions/<target>/`
//! where a crash found by `scripts/fuzz.sh` is kept), replayed through the same `sonicgw::fuzzing`
//! entry points in every test run: the coverage-guided runs themselves need a cold instrumented build
//! too long for CI, but nothing they found can come back unnoticed.

use std::path::{Path, PathBuf};

/// Every file of `fuzz/corpus/<target>` and `fuzz/regressions/<target>`.
fn inputs(target: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut files: Vec<PathBuf> = ["corpus", "regressions"]
        .iter()
        .filter_map(|kind| std::fs::read_dir(root.join(kind).join(target)).ok())
        .flatten()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    files
}

/// Feeds each input of `target` to `run` as a file, as the target does; panics name the input.
fn replay_files(target: &str, run: impl Fn(&Path)) {
    let files = inputs(target);
    assert!(!files.is_empty(), "no committed inputs for {target}");
    let scratch = tempfile::tempdir().unwrap();
    let upload = scratch.path().join("upload");
    for file in files {
        std::fs::copy(&file, &upload).unwrap();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&upload)));
        assert!(outcome.is_ok(), "{target}: {} panicked", file.display());
    }
}

#[test]
fn image_probe_inputs() {
    replay_files("image_probe", sonicgw::fuzzing::probe_image);
}

#[test]
fn audio_probe_inputs() {
    replay_files("audio_probe", sonicgw::fuzzing::probe_audio);
}

#[test]
fn mp4_box_inputs() {
    replay_files("mp4_boxes", sonicgw::fuzzing::walk_mp4);
}

#[tokio::test]
async fn token_and_claims_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = sonicgw::fuzzing::token_verifier(dir.path()).await.unwrap();
    let (raw, parts) = (inputs("token"), inputs("token_claims"));
    assert!(!raw.is_empty() && !parts.is_empty());
    for file in raw {
        if let Ok(token) = String::from_utf8(std::fs::read(&file).unwrap()) {
            sonicgw::fuzzing::verify_token(&tokens, &token).await;
        }
    }
    for file in parts {
        let token = sonicgw::fuzzing::token_from_parts(&std::fs::read(&file).unwrap());
        sonicgw::fuzzing::verify_token(&tokens, &token).await;
    }
}

#[tokio::test]
async fn upload_field_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let files = inputs("upload_fields");
    assert!(!files.is_empty());
    for file in files {
        sonicgw::fuzzing::receive_upload(dir.path(), std::fs::read(&file).unwrap()).await;
    }
}
