//! C2PA Content Credentials: every output MP4 is signed as the last change made to it
//! (`videos::output`, after the visible label and the AIGC metadata), and uploaded or stored videos
//! are read back with their validation state (`inspect`).
//!
//! The `c2pa` crate is built without any HTTP client, and every context here also sets a resolver
//! that refuses every request and an empty list of allowed hosts: neither signing nor reading ever
//! goes to the network (no remote manifests, no OCSP, no time-stamp authority).

pub mod inspect;
pub mod manifest;
pub mod signing;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use c2pa::http::{HttpResolverError, SyncHttpResolver};

pub use manifest::{InputDigest, ManifestFacts, ProducerIds};
pub use signing::CredentialOrigin;

/// Why a video could not be signed.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("C2PA signing failed: {0}")]
    C2pa(#[from] c2pa::Error),
    #[error("C2PA signing: {0}")]
    Io(#[from] std::io::Error),
    #[error("C2PA signing took longer than {0:?}")]
    TimedOut(Duration),
}

impl SignError {
    /// Stable code.
    pub fn code(&self) -> &'static str {
        match self {
            SignError::C2pa(_) => "c2pa_failed",
            SignError::Io(_) => "c2pa_io",
            SignError::TimedOut(_) => "c2pa_timeout",
        }
    }
}

/// The signer of every output video, built once at startup (where a bad key or chain stops the
/// server).
pub struct ContentCredentials {
    signer: Arc<c2pa::BoxedSigner>,
    origin: CredentialOrigin,
    producers: ProducerIds,
    /// Most one signing may take.
    timeout: Duration,
}

impl std::fmt::Debug for ContentCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContentCredentials")
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

/// Settings of every c2pa context here: nothing fetched, nothing decoded that is not needed,
/// Brotli-compressed manifests bounded.
fn offline_settings(trust_anchors: Option<&str>) -> serde_json::Value {
    let mut settings = serde_json::json!({
        "verify": {
            "remote_manifest_fetch": false,
            "ocsp_fetch": false,
            "verify_after_reading": true,
            "verify_after_sign": false,
            "verify_trust": true,
        },
        "core": {
            "allowed_network_hosts": [],
            "decode_identity_assertions": false,
            "max_decompressed_manifest_size_in_mb": 16,
        },
        "builder": {
            "thumbnail": { "enabled": false },
        },
    });
    if let Some(anchors) = trust_anchors {
        settings["trust"] = serde_json::json!({ "trust_anchors": anchors });
    }
    settings
}

/// A resolver that refuses every request: set on every context, so that even a `c2pa` built with
/// an HTTP client by some other crate's features could not reach the network from here.
struct NoNetwork;

impl SyncHttpResolver for NoNetwork {
    fn http_resolve(
        &self,
        _request: c2pa::http::http::Request<Vec<u8>>,
    ) -> Result<c2pa::http::http::Response<Box<dyn std::io::Read>>, HttpResolverError> {
        Err(HttpResolverError::SyncHttpResolverNotImplemented)
    }
}

/// A context that never touches the network and gives up (`OperationCancelled`) after `budget`.
fn offline_context(
    trust_anchors: Option<&str>,
    budget: Duration,
) -> Result<c2pa::Context, c2pa::Error> {
    let deadline = Instant::now() + budget;
    Ok(c2pa::Context::new()
        .with_settings(offline_settings(trust_anchors))?
        .with_resolver(NoNetwork)
        .with_progress_callback(move |_, _, _| Instant::now() < deadline))
}

impl ContentCredentials {
    /// The signer from the operator's chain and key, or the self-signed chain under `keys_dir`;
    /// `producer_secret` keys the pseudonymous producer ids.
    pub fn new(
        cert: Option<&Path>,
        key: Option<&Path>,
        keys_dir: &Path,
        producer_secret: &[u8],
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let material = signing::load(cert, key, keys_dir)?;
        let signer = c2pa::create_signer::from_keys(
            &material.chain_pem,
            &material.key_pem,
            material.alg,
            None,
        )
        .map_err(|e| anyhow::anyhow!("the C2PA certificate chain or key: {e}"))?;
        Ok(Self {
            signer: Arc::new(signer),
            origin: material.origin,
            producers: ProducerIds::new(producer_secret),
            timeout,
        })
    }

    pub fn origin(&self) -> CredentialOrigin {
        self.origin
    }

    /// The pseudonymous producer id of a user.
    pub fn producer_id(&self, tenant: &str, user: &str) -> String {
        self.producers.producer_id(tenant, user)
    }

    /// Writes `output`: `input` with a signed manifest stating `facts` embedded. Nothing may change
    /// the file afterwards: the manifest hashes its final bytes.
    pub async fn sign(
        &self,
        facts: &ManifestFacts,
        input: &Path,
        output: &Path,
    ) -> Result<(), SignError> {
        let signer = Arc::clone(&self.signer);
        let definition = facts.definition();
        let (input, output): (PathBuf, PathBuf) = (input.to_path_buf(), output.to_path_buf());
        let timeout = self.timeout;
        tokio::task::spawn_blocking(move || {
            let signed = sign_blocking(&signer, definition, &input, &output, timeout);
            if signed.is_err() {
                let _ = std::fs::remove_file(&output);
            }
            signed
        })
        .await
        .map_err(|e| SignError::Io(std::io::Error::other(e.to_string())))?
    }
}

fn sign_blocking(
    signer: &c2pa::BoxedSigner,
    definition: serde_json::Value,
    input: &Path,
    output: &Path,
    timeout: Duration,
) -> Result<(), SignError> {
    let context = offline_context(None, timeout)?;
    let mut builder = c2pa::Builder::from_context(context).with_definition(definition)?;
    builder.set_intent(c2pa::BuilderIntent::Create(
        c2pa::DigitalSourceType::TrainedAlgorithmicMedia,
    ));
    let mut source = std::fs::File::open(input)?;
    let mut dest = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(output)?;
    match builder.sign(&**signer, "video/mp4", &mut source, &mut dest) {
        Ok(_) => Ok(()),
        Err(c2pa::Error::OperationCancelled) => Err(SignError::TimedOut(timeout)),
        Err(err) => Err(err.into()),
    }
}

#[cfg(test)]
mod tests;
