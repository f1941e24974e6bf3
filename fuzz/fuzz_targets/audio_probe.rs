//! The recording probe of intake (format sniffing, the ID3 polyglot check, the MP4 guard and edit list, symphonia decoding up to the limit).
//! The parsers read a file, as intake does with the upload it streamed to disk.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

fn scratch() -> &'static tempfile::TempDir {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("a temporary folder"))
}

fuzz_target!(
    // The default hook, not libfuzzer-sys's aborting one: a panic inside a third-party decoder is
    // caught by `media::guard` and answered as a refused upload, as in the service (the script
    // counts them from the log). A panic that escapes still aborts: `fuzz_target!` checks for it.
    init: drop(std::panic::take_hook()),
    |data: &[u8]| {
        let path = scratch().path().join("upload");
        std::fs::write(&path, data).expect("the scratch file is writable");
        sonicgw::fuzzing::probe_audio(&path);
    }
);
