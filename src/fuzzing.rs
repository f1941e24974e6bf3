//! Entry points for the coverage-guided fuzz targets in `fuzz/` (`scripts/fuzz.sh`): each feeds
//! hostile bytes to one parser exactly as the service does, and must return (an error is fine),
//! never panic, hang or run out of memory. Compiled in every build, so a change that breaks a
//! target is caught by `cargo check`, not only by the fuzz build.

use std::path::Path;

use crate::auth::keys::SigningAlg;
use crate::auth::tokens::{TokenSettings, Tokens};
use crate::domain::{Plans, SonicParams};
use crate::media::image::ImageLimits;

/// The HS256 secret the token target verifies with (also signs its seed corpus).
pub const TOKEN_SECRET: &str = "fuzzing-secret-0123456789abcdef-0123456789";
/// The issuer and audience the token target expects.
pub const TOKEN_ISSUER: &str = "https://fuzz.sonicgw.test";
pub const TOKEN_AUDIENCE: &str = "sonicgw";

/// A token verifier as `sonicgw serve` builds one: HS256 with [`TOKEN_SECRET`], revocations from a
/// SQLite database in `dir`, no cache (every input is parsed in full).
pub async fn token_verifier(dir: &Path) -> anyhow::Result<Tokens> {
    let store = crate::storage::connect(&format!("sqlite://{}/fuzz.db", dir.display())).await?;
    let revocations = crate::auth::revocation::Revocations::start(store, None, "fuzz").await?;
    Tokens::new(
        TokenSettings {
            issuer: TOKEN_ISSUER.to_owned(),
            audience: TOKEN_AUDIENCE.to_owned(),
            ttl_s: 600,
            leeway_s: 30,
            keys_dir: dir.join("keys"),
            alg: SigningAlg::HS256,
            hs256_secret: Some(TOKEN_SECRET.to_owned()),
            cache_capacity: 0,
        },
        revocations,
    )
}

/// Verifies `token` as a user's and as a worker's access token, as the `Caller` and `WorkerCaller`
/// extractors do.
pub async fn verify_token(tokens: &Tokens, token: &str) {
    let _ = tokens.verify(token).await;
    let _ = tokens.verify_worker(token).await;
}

/// Signs `header` and `claims` (any bytes, base64url-encoded as they are) with [`TOKEN_SECRET`],
/// so that the claims are parsed past the signature check.
pub fn sign_hs256(header: &[u8], claims: &[u8]) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use hmac::{Hmac, Mac};
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(TOKEN_SECRET.as_bytes())
        .expect("HMAC takes any key length");
    mac.update(signing_input.as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{signing_input}.{signature}")
}

/// The `token_claims` target's input: a header and claims separated by the first NUL byte (all of
/// it the header when there is none), signed with [`sign_hs256`].
pub fn token_from_parts(data: &[u8]) -> String {
    let (header, claims) = match data.iter().position(|b| *b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &b""[..]),
    };
    sign_hs256(header, claims)
}

/// The image probe of intake, with the default limits.
pub fn probe_image(path: &Path) {
    let _ = crate::media::image::probe_image(path, &ImageLimits::default());
}

/// The audio probe of intake, stopping at 10 s like a short plan would.
pub fn probe_audio(path: &Path) {
    let _ = crate::media::audio::probe_audio(path, Some(10.0));
}

/// The MP4 structure check (intake's and the remote-result path's) and the edit-list reader.
pub fn walk_mp4(path: &Path) {
    let _ = crate::media::mp4guard::check(path);
    let _ = crate::media::mp4edit::read_edit(path);
}

/// The boundary [`receive_upload`] expects the body to use.
pub const MULTIPART_BOUNDARY: &str = "fuzzboundary";

/// `body` as the multipart body of `POST /v1/videos` (files into a temporary folder under `dir`,
/// limited to 64 KiB each), then the text fields parsed as Sonic's parameters and checked against
/// the built-in plans, as intake does.
pub async fn receive_upload(dir: &Path, body: Vec<u8>) {
    use axum::extract::{FromRequest, Multipart};
    let request = axum::http::Request::builder()
        .method("POST")
        .uri("/v1/videos")
        .header(
            "content-type",
            format!("multipart/form-data; boundary={MULTIPART_BOUNDARY}"),
        )
        .body(axum::body::Body::from(body))
        .expect("a valid request");
    let Ok(multipart) = Multipart::from_request(request, &()).await else {
        return;
    };
    let Ok(temp) = tempfile::tempdir_in(dir) else {
        return;
    };
    let limits = crate::http::upload::UploadLimits {
        image_bytes: 64 * 1024,
        audio_bytes: 64 * 1024,
    };
    let Ok(upload) = crate::http::upload::receive(multipart, limits, temp).await else {
        return;
    };
    parse_params(&upload.fields);
}

/// Sonic's parameters from text fields, then the plan check, for a 3 s recording.
pub fn parse_params(fields: &crate::domain::RawParams) {
    let Ok(params) = SonicParams::parse(fields, 3.0, "builtin") else {
        return;
    };
    let plans = Plans::with_overrides(Default::default()).expect("the built-in plans are valid");
    for name in plans.names() {
        if let Some(plan) = plans.get(name) {
            let _ = params.exceeds(plan);
        }
    }
}
