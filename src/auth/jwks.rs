//! The issuer's public keys, for a process that only verifies (`jwks_url`): fetched over HTTP with a
//! size cap and timeouts, without following redirects, cached, refreshed periodically and on an
//! unknown `kid` (at most once per [`UNKNOWN_KID_REFRESH`]), and kept when a refresh fails
//! (stale-while-error). Only asymmetric keys are taken (RS256, ES256, EdDSA), each pinned to its `alg`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures::StreamExt;
use jsonwebtoken::DecodingKey;
use serde_json::Value;

use super::keys::{KeyRing, SigningAlg, VerifyingKey};
use crate::time::Clock;

/// Largest JWKS document read; a real one with a few RSA keys is a few KiB.
pub const MAX_JWKS_BYTES: usize = 256 * 1024;
/// Keys past this many in one document are ignored.
const MAX_KEYS: usize = 32;
/// Longest `kid` taken.
const MAX_KID_BYTES: usize = 128;
/// A whole fetch (connect, headers, body) takes at most this long.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// An unknown `kid` makes the JWKS be fetched again at most this often: tokens with made-up key ids
/// must not turn into requests to the issuer.
pub const UNKNOWN_KID_REFRESH: Duration = Duration::from_secs(30);

/// The issuer's JWKS endpoint and the bookkeeping of its refreshes.
pub struct RemoteJwks {
    url: url::Url,
    http: reqwest::Client,
    /// When an unknown `kid` last caused a fetch. Held across that fetch, so concurrent requests with
    /// the same new `kid` cause one fetch, not one each.
    unknown_kid_fetch: tokio::sync::Mutex<Option<Instant>>,
    clock: Clock,
    fetches: std::sync::atomic::AtomicU64,
}

impl RemoteJwks {
    /// Checks the URL (http or https, no credentials in it) and builds the client.
    pub fn new(url: &str) -> anyhow::Result<Self> {
        let url = url::Url::parse(url).context("jwks_url is not a URL")?;
        if !matches!(url.scheme(), "http" | "https") {
            bail!("jwks_url must be an http:// or https:// URL");
        }
        if !url.username().is_empty() || url.password().is_some() {
            bail!("jwks_url must not carry credentials");
        }
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(FETCH_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .context("building the JWKS client")?;
        Ok(Self {
            url,
            http,
            unknown_kid_fetch: tokio::sync::Mutex::new(None),
            clock: Clock::default(),
            fetches: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// The clock the unknown-`kid` bound is measured with (tests advance it).
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// How many fetches were attempted since start.
    pub fn fetches(&self) -> u64 {
        self.fetches.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Fetches and parses the key set.
    pub async fn fetch(&self) -> anyhow::Result<KeyRing> {
        self.fetches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let body = self.fetch_body().await?;
        let ring = parse_jwks(&body)?;
        crate::metrics::jwks_refreshed();
        Ok(ring)
    }

    /// Fetches for an unknown `kid`, unless one was fetched for that reason less than
    /// [`UNKNOWN_KID_REFRESH`] ago. `known` tells whether a fetch that finished while this call waited
    /// for the lock already brought the key. `None`: nothing new (not due, or the fetch failed).
    pub async fn fetch_for_unknown_kid(
        &self,
        known: impl Fn() -> bool,
    ) -> Option<anyhow::Result<KeyRing>> {
        let mut last = self.unknown_kid_fetch.lock().await;
        if known() {
            return None;
        }
        let now = self.clock.now();
        if last.is_some_and(|at| now.saturating_duration_since(at) < UNKNOWN_KID_REFRESH) {
            return None;
        }
        *last = Some(now);
        Some(self.fetch().await)
    }

    async fn fetch_body(&self) -> anyhow::Result<Vec<u8>> {
        let response = self
            .http
            .get(self.url.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .context("requesting the issuer's JWKS")?;
        if response.status() != reqwest::StatusCode::OK {
            bail!("the issuer's JWKS answered {}", response.status());
        }
        if response
            .content_length()
            .is_some_and(|length| length > MAX_JWKS_BYTES as u64)
        {
            bail!("the issuer's JWKS is larger than {MAX_JWKS_BYTES} bytes");
        }
        let mut body = Vec::new();
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.context("reading the issuer's JWKS")?;
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                bail!("the issuer's JWKS is larger than {MAX_JWKS_BYTES} bytes");
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

/// The usable keys of a JWKS document. A key that is not a signature key of a supported asymmetric
/// algorithm with a matching key type is skipped; a document with no usable key is an error, so a
/// broken answer never replaces working keys.
pub fn parse_jwks(body: &[u8]) -> anyhow::Result<KeyRing> {
    let document: Value = serde_json::from_slice(body).context("the JWKS is not JSON")?;
    let keys = document
        .get("keys")
        .and_then(Value::as_array)
        .context("the JWKS has no \"keys\" array")?;
    let mut verifying = HashMap::new();
    let mut published = Vec::new();
    for jwk in keys.iter().take(MAX_KEYS) {
        match parse_jwk(jwk) {
            Ok((kid, key, public)) => {
                if verifying.insert(kid, key).is_none() {
                    published.push(public);
                }
            }
            Err(reason) => tracing::warn!(reason, "skipping a key of the issuer's JWKS"),
        }
    }
    if verifying.is_empty() {
        bail!("the issuer's JWKS has no usable key");
    }
    Ok(KeyRing::verify_only(
        verifying,
        serde_json::json!({ "keys": published }),
    ))
}

/// One key: its `kid`, the verifying key pinned to its `alg`, and its public members only.
fn parse_jwk(jwk: &Value) -> Result<(String, VerifyingKey, Value), &'static str> {
    let text = |name: &str| jwk.get(name).and_then(Value::as_str);
    if text("use").is_some_and(|u| u != "sig") {
        return Err("not a signature key");
    }
    let kid = text("kid").ok_or("no kid")?;
    if kid.is_empty() || kid.len() > MAX_KID_BYTES {
        return Err("kid empty or too long");
    }
    let alg: SigningAlg = text("alg")
        .ok_or("no alg")?
        .parse()
        .map_err(|_| "unsupported alg")?;
    let member = |name: &'static str| text(name).ok_or("a key member is missing");
    let (decoding, mut public) = match (alg, text("kty"), text("crv")) {
        (SigningAlg::RS256, Some("RSA"), _) => {
            let (n, e) = (member("n")?, member("e")?);
            (
                DecodingKey::from_rsa_components(n, e).map_err(|_| "invalid RSA key")?,
                serde_json::json!({ "kty": "RSA", "n": n, "e": e }),
            )
        }
        (SigningAlg::ES256, Some("EC"), Some("P-256")) => {
            let (x, y) = (member("x")?, member("y")?);
            (
                DecodingKey::from_ec_components(x, y).map_err(|_| "invalid EC key")?,
                serde_json::json!({ "kty": "EC", "crv": "P-256", "x": x, "y": y }),
            )
        }
        (SigningAlg::EdDSA, Some("OKP"), Some("Ed25519")) => {
            let x = member("x")?;
            (
                DecodingKey::from_ed_components(x).map_err(|_| "invalid Ed25519 key")?,
                serde_json::json!({ "kty": "OKP", "crv": "Ed25519", "x": x }),
            )
        }
        (SigningAlg::HS256, _, _) => return Err("symmetric keys are never taken from a JWKS"),
        _ => return Err("key type does not match alg"),
    };
    public["kid"] = kid.into();
    public["use"] = "sig".into();
    public["alg"] = alg.as_str().into();
    Ok((kid.to_owned(), VerifyingKey { alg, decoding }, public))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local_jwks(alg: SigningAlg) -> Value {
        let dir = tempfile::tempdir().unwrap();
        let ring = KeyRing::load_or_create(dir.path(), alg, None, 60).unwrap();
        ring.jwks().clone()
    }

    #[test]
    fn takes_the_keys_a_local_key_ring_publishes() {
        for alg in [SigningAlg::RS256, SigningAlg::ES256, SigningAlg::EdDSA] {
            let jwks = local_jwks(alg);
            let kid = jwks["keys"][0]["kid"].as_str().unwrap().to_owned();
            let ring = parse_jwks(jwks.to_string().as_bytes()).unwrap();
            assert_eq!(ring.verifying_key(&kid).unwrap().alg, alg);
            assert!(ring.signing.is_none());
        }
    }

    #[test]
    fn skips_symmetric_mismatched_and_encryption_keys() {
        let mut jwks = local_jwks(SigningAlg::EdDSA);
        let good = jwks["keys"][0].clone();
        let mut wrong_alg = good.clone();
        wrong_alg["kid"] = "wrong-alg".into();
        wrong_alg["alg"] = "RS256".into();
        let mut encryption = good.clone();
        encryption["kid"] = "enc".into();
        encryption["use"] = "enc".into();
        let symmetric =
            serde_json::json!({ "kty": "oct", "kid": "hs", "alg": "HS256", "k": "c2VjcmV0" });
        jwks["keys"] = serde_json::json!([good, wrong_alg, encryption, symmetric]);
        let ring = parse_jwks(jwks.to_string().as_bytes()).unwrap();
        assert_eq!(ring.jwks()["keys"].as_array().unwrap().len(), 1);
        for kid in ["wrong-alg", "enc", "hs"] {
            assert!(ring.verifying_key(kid).is_none(), "{kid} was taken");
        }
    }

    #[test]
    fn refuses_a_document_without_usable_keys() {
        assert!(parse_jwks(b"{\"keys\": []}").is_err());
        assert!(parse_jwks(b"<html>").is_err());
        assert!(parse_jwks(b"{}").is_err());
    }

    #[test]
    fn refuses_urls_that_are_not_plain_http() {
        assert!(RemoteJwks::new("file:///etc/passwd").is_err());
        assert!(RemoteJwks::new("http://user:pw@issuer/.well-known/jwks.json").is_err());
        assert!(RemoteJwks::new("https://issuer.example/.well-known/jwks.json").is_ok());
    }
}
