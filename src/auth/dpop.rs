//! DPoP (RFC 9449): sender-constrained tokens. A client that sends a `DPoP` proof to the token
//! endpoint gets tokens bound to its key (`cnf.jkt`, the key's RFC 7638 thumbprint); a bound access
//! token is then accepted only as `Authorization: DPoP <token>` with a fresh proof signed by that key,
//! naming the request's method and URL and the token's hash (`ath`). A stolen bound token is useless
//! without the private key, and a captured proof is refused when replayed (`jti` remembered for the
//! proof's whole acceptance window, in Redis when configured so every replica sees it).
//!
//! Proofs are hostile input: size-capped, the header parsed by hand before any cryptography, only
//! asymmetric algorithms, only public keys, `typ` exactly `dpop+jwt`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::redis_script::RedisScript;

/// Proofs longer than this are refused before any parsing (an RSA-4096 key fits easily).
pub const MAX_PROOF_BYTES: usize = 4096;
/// How far a proof's `iat` may be from now, either way: its acceptance window.
pub const PROOF_WINDOW: Duration = Duration::from_secs(60);
/// The algorithms proofs may use, as the metadata's `dpop_signing_alg_values_supported` lists them.
pub const SUPPORTED_ALGS: &[&str] = &["ES256", "EdDSA", "RS256", "PS256"];
/// `jti`s remembered in process at most (about 800 proofs a second across the window); past that,
/// proofs are refused until old ones expire, never accepted unchecked.
const MAX_REMEMBERED: usize = 100_000;

/// Why a proof was refused; each is `invalid_dpop_proof` to the client, `code()` for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProofRejection {
    #[error("the DPoP proof is larger than 4 KiB")]
    Oversized,
    #[error("send exactly one DPoP header")]
    NotOne,
    #[error("the DPoP proof is not a well-formed JWT")]
    Malformed,
    #[error("the DPoP proof's typ must be dpop+jwt")]
    WrongType,
    #[error("the DPoP proof's alg is not one of ES256, EdDSA, RS256, PS256")]
    UnsupportedAlgorithm,
    #[error("the DPoP proof's jwk is missing, private, or does not fit its alg")]
    BadKey,
    #[error("the DPoP proof's signature is invalid")]
    BadSignature,
    #[error("the DPoP proof lacks jti, htm, htu or iat")]
    MissingClaim,
    #[error("the DPoP proof is for another HTTP method")]
    WrongMethod,
    #[error("the DPoP proof is for another URL")]
    WrongUrl,
    #[error("the DPoP proof's iat is not within 60 s of now")]
    Stale,
    #[error("the DPoP proof's ath does not match the access token")]
    WrongTokenHash,
    #[error("the DPoP proof was signed by another key than the token is bound to")]
    WrongKey,
    #[error("this DPoP proof was used before")]
    Replayed,
    #[error("too many DPoP proofs are being checked; try again shortly")]
    ReplayCacheFull,
}

impl ProofRejection {
    pub fn code(self) -> &'static str {
        match self {
            ProofRejection::Oversized => "dpop_oversized",
            ProofRejection::NotOne => "dpop_not_one",
            ProofRejection::Malformed => "dpop_malformed",
            ProofRejection::WrongType => "dpop_wrong_type",
            ProofRejection::UnsupportedAlgorithm => "dpop_unsupported_alg",
            ProofRejection::BadKey => "dpop_bad_key",
            ProofRejection::BadSignature => "dpop_bad_signature",
            ProofRejection::MissingClaim => "dpop_missing_claim",
            ProofRejection::WrongMethod => "dpop_wrong_method",
            ProofRejection::WrongUrl => "dpop_wrong_url",
            ProofRejection::Stale => "dpop_stale",
            ProofRejection::WrongTokenHash => "dpop_wrong_ath",
            ProofRejection::WrongKey => "dpop_wrong_key",
            ProofRejection::Replayed => "dpop_replayed",
            ProofRejection::ReplayCacheFull => "dpop_replay_cache_full",
        }
    }
}

/// What a proof must match: the request it came with.
pub struct ProofTarget<'a> {
    /// The request's method, e.g. `POST`.
    pub method: &'a str,
    /// The request's path (no query).
    pub path: &'a str,
    /// The origins (`scheme://host[:port]`) this server is reached at.
    pub origins: &'a [String],
    /// The access token the proof must name (`ath`), for resource requests.
    pub access_token: Option<&'a str>,
    /// Unix seconds now.
    pub now: i64,
}

/// A proof that passed every check but the replay check: its key's thumbprint and its `jti`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedProof {
    pub jkt: String,
    pub jti: String,
}

#[derive(Deserialize)]
struct ProofClaims {
    jti: Option<String>,
    htm: Option<String>,
    htu: Option<String>,
    iat: Option<i64>,
    ath: Option<String>,
}

/// The `DPoP` header of a request: `None` when absent, refused when repeated or not text.
pub fn proof_header(headers: &axum::http::HeaderMap) -> Result<Option<&str>, ProofRejection> {
    let mut values = headers.get_all("dpop").iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ProofRejection::NotOne);
    }
    let value = value.to_str().map_err(|_| ProofRejection::Malformed)?;
    Ok(Some(value.trim()))
}

/// The RFC 7638 thumbprint of a public JWK: SHA-256 over its required members in lexicographic
/// order, base64url. `None` for a key type we do not take.
pub fn thumbprint(jwk: &serde_json::Map<String, Value>) -> Option<String> {
    let members: &[&str] = match jwk.get("kty")?.as_str()? {
        "EC" => &["crv", "kty", "x", "y"],
        "RSA" => &["e", "kty", "n"],
        "OKP" => &["crv", "kty", "x"],
        _ => return None,
    };
    let mut canonical = BTreeMap::new();
    for &member in members {
        canonical.insert(member, jwk.get(member)?.as_str()?);
    }
    let json = serde_json::to_string(&canonical).ok()?;
    Some(URL_SAFE_NO_PAD.encode(Sha256::digest(json.as_bytes())))
}

/// `ath`: base64url SHA-256 of the access token.
pub fn token_hash(access_token: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(access_token.as_bytes()))
}

/// The verifying key for `alg` from a public JWK, after checking that the key fits the algorithm.
fn verifying_key(alg: Algorithm, jwk: &serde_json::Map<String, Value>) -> Option<DecodingKey> {
    // Private members must never be sent; a client that does has leaked its key.
    if ["d", "p", "q", "dp", "dq", "qi", "oth", "k"]
        .iter()
        .any(|m| jwk.contains_key(*m))
    {
        return None;
    }
    let text = |member: &str| jwk.get(member).and_then(Value::as_str);
    match (alg, text("kty")?) {
        (Algorithm::ES256, "EC") if text("crv")? == "P-256" => {
            DecodingKey::from_ec_components(text("x")?, text("y")?).ok()
        }
        (Algorithm::EdDSA, "OKP") if text("crv")? == "Ed25519" => {
            DecodingKey::from_ed_components(text("x")?).ok()
        }
        (Algorithm::RS256 | Algorithm::PS256, "RSA") => {
            // At least 2048-bit moduli.
            let modulus = URL_SAFE_NO_PAD.decode(text("n")?).ok()?;
            let significant = modulus.iter().skip_while(|b| **b == 0).count();
            (significant >= 256)
                .then(|| DecodingKey::from_rsa_components(text("n")?, text("e")?).ok())
                .flatten()
        }
        _ => None,
    }
}

/// Checks a proof against its request: form, type, algorithm, key, signature, method, URL, age and
/// (for resource requests) the access token's hash. Replays are checked separately
/// ([`ReplayGuard::first_use`]), after everything else passed.
pub fn check_proof(proof: &str, target: &ProofTarget<'_>) -> Result<CheckedProof, ProofRejection> {
    if proof.len() > MAX_PROOF_BYTES {
        return Err(ProofRejection::Oversized);
    }
    let header_b64 = proof.split('.').next().ok_or(ProofRejection::Malformed)?;
    let header: serde_json::Map<String, Value> = URL_SAFE_NO_PAD
        .decode(header_b64)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .ok_or(ProofRejection::Malformed)?;
    if header.get("typ").and_then(Value::as_str) != Some("dpop+jwt") {
        return Err(ProofRejection::WrongType);
    }
    let alg = match header.get("alg").and_then(Value::as_str) {
        Some("ES256") => Algorithm::ES256,
        Some("EdDSA") => Algorithm::EdDSA,
        Some("RS256") => Algorithm::RS256,
        Some("PS256") => Algorithm::PS256,
        _ => return Err(ProofRejection::UnsupportedAlgorithm),
    };
    let jwk = header
        .get("jwk")
        .and_then(Value::as_object)
        .ok_or(ProofRejection::BadKey)?;
    let key = verifying_key(alg, jwk).ok_or(ProofRejection::BadKey)?;
    let jkt = thumbprint(jwk).ok_or(ProofRejection::BadKey)?;

    let mut validation = Validation::new(alg);
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    let claims = jsonwebtoken::decode::<ProofClaims>(proof, &key, &validation)
        .map_err(|err| match err.kind() {
            jsonwebtoken::errors::ErrorKind::InvalidSignature => ProofRejection::BadSignature,
            _ => ProofRejection::Malformed,
        })?
        .claims;
    let (Some(jti), Some(htm), Some(htu), Some(iat)) =
        (claims.jti, claims.htm, claims.htu, claims.iat)
    else {
        return Err(ProofRejection::MissingClaim);
    };
    if jti.is_empty() || jti.len() > 256 {
        return Err(ProofRejection::MissingClaim);
    }
    if htm != target.method {
        return Err(ProofRejection::WrongMethod);
    }
    if !url_matches(&htu, target) {
        return Err(ProofRejection::WrongUrl);
    }
    let window = PROOF_WINDOW.as_secs() as i64;
    if (iat - target.now).abs() > window {
        return Err(ProofRejection::Stale);
    }
    if let Some(token) = target.access_token {
        if claims.ath.as_deref() != Some(token_hash(token).as_str()) {
            return Err(ProofRejection::WrongTokenHash);
        }
    }
    Ok(CheckedProof { jkt, jti })
}

/// `htu` names this request: one of this server's origins and the request's path; its query and
/// fragment are ignored (RFC 9449 4.3).
fn url_matches(htu: &str, target: &ProofTarget<'_>) -> bool {
    let Ok(url) = url::Url::parse(htu) else {
        return false;
    };
    let origin = url.origin().ascii_serialization();
    url.path() == target.path && target.origins.contains(&origin)
}

/// Remembers the `jti`s of accepted proofs for their acceptance window, so each is used once.
pub struct ReplayGuard {
    local: Mutex<HashMap<String, Instant>>,
    redis: Option<(RedisScript, String)>,
    /// When the in-process memory is full of unexpired proofs: refuse new ones (proofs of signed-in
    /// clients' requests), or forget the remembered ones (the token endpoint's, which anyone may send:
    /// refusing there would let an anonymous flood lock every DPoP client out, while a replayed
    /// token-endpoint proof still needs the credentials and gets a token bound to a key it lacks).
    forget_when_full: bool,
}

/// `SET key 1 NX PX window`: 1 when the key was new.
const FIRST_USE_LUA: &str = r#"
if redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1]) then return 1 end
return 0
"#;

impl ReplayGuard {
    /// `jti`s kept in this process only.
    pub fn in_process() -> Self {
        Self {
            local: Mutex::new(HashMap::new()),
            redis: None,
            forget_when_full: false,
        }
    }

    /// For the token endpoint's proofs, sent before any credential is checked: in this process, and
    /// never full (see `forget_when_full`).
    pub fn for_token_endpoint() -> Self {
        Self {
            forget_when_full: true,
            ..Self::in_process()
        }
    }

    /// `jti`s kept in Redis under `<prefix>:dpop:`, seen by every replica.
    pub async fn shared(redis_url: &str, prefix: &str) -> anyhow::Result<Self> {
        Ok(Self {
            redis: Some((
                RedisScript::connect(redis_url, FIRST_USE_LUA).await?,
                format!("{prefix}:dpop"),
            )),
            ..Self::in_process()
        })
    }

    /// Records the proof; `Err(Replayed)` when its key and `jti` were seen within the window. With
    /// Redis unreachable the answer is a refusal, never an unchecked acceptance.
    pub async fn first_use(&self, proof: &CheckedProof) -> Result<(), ProofRejection> {
        // Keyed by key and jti: one client's jtis cannot collide with another's.
        let key = URL_SAFE_NO_PAD.encode(Sha256::digest(
            format!("{}\n{}", proof.jkt, proof.jti).as_bytes(),
        ));
        // Twice the window: a proof from the window's far future end stays remembered until it is stale.
        let remember = PROOF_WINDOW * 2;
        if let Some((script, prefix)) = &self.redis {
            let window_ms = remember.as_millis() as u64;
            return match script
                .run::<i64>(&[format!("{prefix}:{key}")], &[window_ms])
                .await
            {
                Ok(1) => Ok(()),
                Ok(_) => Err(ProofRejection::Replayed),
                Err(err) => {
                    tracing::warn!(error = %err, "the DPoP replay cache is unavailable; refusing proofs");
                    Err(ProofRejection::ReplayCacheFull)
                }
            };
        }
        let now = Instant::now();
        let mut seen = self.local.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() >= MAX_REMEMBERED {
            seen.retain(|_, until| *until > now);
            if seen.len() >= MAX_REMEMBERED {
                if !self.forget_when_full {
                    return Err(ProofRejection::ReplayCacheFull);
                }
                seen.clear();
            }
        }
        match seen.get(&key) {
            Some(until) if *until > now => Err(ProofRejection::Replayed),
            _ => {
                seen.insert(key, now + remember);
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn a_flood_fills_the_signed_in_guard_but_never_the_token_endpoints() {
        let proof = |n: usize| CheckedProof {
            jkt: "key".to_owned(),
            jti: n.to_string(),
        };
        let (guarded, token_endpoint) =
            (ReplayGuard::in_process(), ReplayGuard::for_token_endpoint());
        for n in 0..MAX_REMEMBERED {
            guarded.first_use(&proof(n)).await.unwrap();
            token_endpoint.first_use(&proof(n)).await.unwrap();
        }
        let next = proof(MAX_REMEMBERED);
        assert_eq!(
            guarded.first_use(&next).await,
            Err(ProofRejection::ReplayCacheFull)
        );
        token_endpoint.first_use(&next).await.unwrap();
        assert_eq!(
            token_endpoint.first_use(&next).await,
            Err(ProofRejection::Replayed)
        );
    }

    #[test]
    fn thumbprint_matches_rfc_7638_example() {
        // RFC 7638 section 3.1.
        let jwk = json!({
            "kty": "RSA",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
            "e": "AQAB",
            "alg": "RS256",
            "kid": "2011-04-29"
        });
        assert_eq!(
            thumbprint(jwk.as_object().unwrap()).unwrap(),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    #[test]
    fn private_or_mismatched_keys_are_refused() {
        let ec = json!({"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA", "d": "AA"});
        assert!(verifying_key(Algorithm::ES256, ec.as_object().unwrap()).is_none());
        let okp = json!({"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"});
        assert!(verifying_key(Algorithm::ES256, okp.as_object().unwrap()).is_none());
        assert!(verifying_key(Algorithm::EdDSA, okp.as_object().unwrap()).is_some());
        let small_rsa =
            json!({"kty": "RSA", "n": URL_SAFE_NO_PAD.encode([0xC3u8; 128]), "e": "AQAB"});
        assert!(verifying_key(Algorithm::RS256, small_rsa.as_object().unwrap()).is_none());
        let hmac = json!({"kty": "oct", "k": "c2VjcmV0"});
        assert!(verifying_key(Algorithm::RS256, hmac.as_object().unwrap()).is_none());
    }

    #[test]
    fn garbage_is_refused_without_panicking() {
        let target = ProofTarget {
            method: "GET",
            path: "/v1/me",
            origins: &["http://127.0.0.1:1".to_owned()],
            access_token: None,
            now: 0,
        };
        for proof in [
            "",
            ".",
            "..",
            "a.b.c",
            "eyJ0eXAiOiJkcG9wK2p3dCJ9..",
            &"x".repeat(MAX_PROOF_BYTES + 1),
            "eyJ0eXAiOiJkcG9wK2p3dCIsImFsZyI6Im5vbmUifQ.e30.",
        ] {
            assert!(check_proof(proof, &target).is_err(), "{proof}");
        }
    }

    #[tokio::test]
    async fn a_jti_is_accepted_once_per_key() {
        let guard = ReplayGuard::in_process();
        let proof = CheckedProof {
            jkt: "k1".into(),
            jti: "j1".into(),
        };
        guard.first_use(&proof).await.unwrap();
        assert_eq!(guard.first_use(&proof).await, Err(ProofRejection::Replayed));
        let other_key = CheckedProof {
            jkt: "k2".into(),
            jti: "j1".into(),
        };
        guard.first_use(&other_key).await.unwrap();
    }
}
