//! Access-token verification past the signature: the input is a JOSE header and a claims set
//! (split at the first NUL byte), signed with the verifier's own secret, so every claim is parsed
//! and checked (types, times, audience, issuer).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

struct Verifier {
    runtime: tokio::runtime::Runtime,
    tokens: sonicgw::auth::tokens::Tokens,
    _dir: tempfile::TempDir,
}

fn verifier() -> &'static Verifier {
    static VERIFIER: OnceLock<Verifier> = OnceLock::new();
    VERIFIER.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let dir = tempfile::tempdir().expect("a temporary folder");
        let tokens = runtime
            .block_on(sonicgw::fuzzing::token_verifier(dir.path()))
            .expect("the verifier starts");
        Verifier {
            runtime,
            tokens,
            _dir: dir,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let token = sonicgw::fuzzing::token_from_parts(data);
    let verifier = verifier();
    verifier
        .runtime
        .block_on(sonicgw::fuzzing::verify_token(&verifier.tokens, &token));
});
