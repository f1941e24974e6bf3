//! The multipart body of `POST /v1/videos` (boundary `fuzzboundary`): parts streamed to files or read
//! as text fields with their limits, then Sonic's parameters parsed and checked against the plans.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

struct Scratch {
    runtime: tokio::runtime::Runtime,
    dir: tempfile::TempDir,
}

fn scratch() -> &'static Scratch {
    static SCRATCH: OnceLock<Scratch> = OnceLock::new();
    SCRATCH.get_or_init(|| Scratch {
        runtime: tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime"),
        dir: tempfile::tempdir().expect("a temporary folder"),
    })
}

fuzz_target!(|data: &[u8]| {
    let scratch = scratch();
    scratch.runtime.block_on(sonicgw::fuzzing::receive_upload(
        scratch.dir.path(),
        data.to_vec(),
    ));
});
