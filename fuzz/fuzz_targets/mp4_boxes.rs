//! The MP4 box walkers: the structure check before symphonia or ffmpeg sees an MP4, and the edit-list reader.
//! The parsers read a file, as intake does with the upload it streamed to disk.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

fn scratch() -> &'static tempfile::TempDir {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("a temporary folder"))
}

fuzz_target!(|data: &[u8]| {
    let path = scratch().path().join("upload");
    std::fs::write(&path, data).expect("the scratch file is writable");
    sonicgw::fuzzing::walk_mp4(&path);
});
