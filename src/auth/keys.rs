//! Signing keys: generated on first start, kept as 0600 files under `<data_dir>/keys`, rotated by
//! `sonicgw keys rotate`. Public halves are published as a JWKS; private halves never leave the file.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use anyhow::{bail, Context};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use rand::rngs::OsRng;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::time::UnixMillis;

/// The signing algorithms the gateway offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SigningAlg {
    RS256,
    ES256,
    EdDSA,
    /// Only with an explicitly configured secret of at least 32 bytes.
    HS256,
}

impl SigningAlg {
    pub fn as_str(self) -> &'static str {
        match self {
            SigningAlg::RS256 => "RS256",
            SigningAlg::ES256 => "ES256",
            SigningAlg::EdDSA => "EdDSA",
            SigningAlg::HS256 => "HS256",
        }
    }

    pub fn jwt_algorithm(self) -> Algorithm {
        match self {
            SigningAlg::RS256 => Algorithm::RS256,
            SigningAlg::ES256 => Algorithm::ES256,
            SigningAlg::EdDSA => Algorithm::EdDSA,
            SigningAlg::HS256 => Algorithm::HS256,
        }
    }
}

impl FromStr for SigningAlg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "RS256" => Ok(SigningAlg::RS256),
            "ES256" => Ok(SigningAlg::ES256),
            "EdDSA" => Ok(SigningAlg::EdDSA),
            "HS256" => Ok(SigningAlg::HS256),
            other => Err(format!(
                "unsupported signing algorithm {other:?}; use RS256, ES256, EdDSA or HS256"
            )),
        }
    }
}

/// A key file as stored on disk.
#[derive(Serialize, Deserialize)]
struct KeyFile {
    kid: String,
    alg: SigningAlg,
    /// Unix milliseconds.
    created_at: UnixMillis,
    private_key_pem: String,
}

/// A key that verifies tokens.
pub struct VerifyingKey {
    pub alg: SigningAlg,
    pub decoding: DecodingKey,
}

/// The key new tokens are signed with.
pub struct SigningKey {
    pub kid: String,
    pub alg: SigningAlg,
    pub encoding: EncodingKey,
}

/// The active signing key (none in a process that only verifies), every key still accepted for
/// verification, and the public JWKS.
pub struct KeyRing {
    pub signing: Option<SigningKey>,
    verifying: HashMap<String, VerifyingKey>,
    jwks: serde_json::Value,
}

impl KeyRing {
    /// Keys that verify but never sign: the issuer's published keys, in a verifier.
    pub fn verify_only(verifying: HashMap<String, VerifyingKey>, jwks: serde_json::Value) -> Self {
        Self {
            signing: None,
            verifying,
            jwks,
        }
    }

    /// No keys at all: a verifier that has not reached its issuer yet.
    pub fn empty() -> Self {
        Self::verify_only(HashMap::new(), serde_json::json!({ "keys": [] }))
    }

    pub fn verifying_key(&self, kid: &str) -> Option<&VerifyingKey> {
        self.verifying.get(kid)
    }

    pub fn jwks(&self) -> &serde_json::Value {
        &self.jwks
    }

    /// Loads the key directory, generating a first key of `alg` when there is none.
    ///
    /// A key stays accepted after it was superseded for `retain_s` seconds (the access-token lifetime
    /// plus leeway), so tokens it signed keep working until they expire.
    pub fn load_or_create(
        dir: &Path,
        alg: SigningAlg,
        hs256_secret: Option<&str>,
        retain_s: i64,
    ) -> anyhow::Result<Self> {
        if alg == SigningAlg::HS256 {
            return Self::symmetric(hs256_secret);
        }
        let mut files = read_key_files(dir)?;
        if !files.iter().any(|f| f.alg == alg) {
            files.push(write_new_key(dir, alg)?);
        }
        Self::from_files(files, alg, retain_s)
    }

    fn symmetric(secret: Option<&str>) -> anyhow::Result<Self> {
        let Some(secret) = secret else {
            bail!("signing_alg = \"HS256\" needs hs256_secret (SONICGW_HS256_SECRET)");
        };
        if secret.len() < 32 {
            bail!("hs256_secret must be at least 32 bytes of random data");
        }
        let kid = format!(
            "hs-{}",
            &hex::encode(Sha256::digest(secret.as_bytes()))[..16]
        );
        let verifying = HashMap::from([(
            kid.clone(),
            VerifyingKey {
                alg: SigningAlg::HS256,
                decoding: DecodingKey::from_secret(secret.as_bytes()),
            },
        )]);
        Ok(Self {
            signing: Some(SigningKey {
                kid,
                alg: SigningAlg::HS256,
                encoding: EncodingKey::from_secret(secret.as_bytes()),
            }),
            verifying,
            // A shared secret is never published.
            jwks: serde_json::json!({ "keys": [] }),
        })
    }

    fn from_files(mut files: Vec<KeyFile>, alg: SigningAlg, retain_s: i64) -> anyhow::Result<Self> {
        files.sort_by(|a, b| (a.created_at, &a.kid).cmp(&(b.created_at, &b.kid)));
        let now = crate::time::now_ms();
        let retention = Duration::from_secs(u64::try_from(retain_s).unwrap_or(0));
        let active_index = files
            .iter()
            .rposition(|f| f.alg == alg)
            .context("no key of the configured algorithm")?;
        let mut verifying = HashMap::new();
        let mut jwks = Vec::new();
        for (index, file) in files.iter().enumerate() {
            // A key is superseded when the next key was created; it retires `retain_s` later.
            let superseded_at = files.get(index + 1).map(|next| next.created_at);
            let still_valid = superseded_at.is_none_or(|at| at + retention > now);
            if index != active_index && !still_valid {
                continue;
            }
            let (decoding, jwk) = public_parts(file)?;
            verifying.insert(
                file.kid.clone(),
                VerifyingKey {
                    alg: file.alg,
                    decoding,
                },
            );
            jwks.push(jwk);
        }
        let active = &files[active_index];
        let encoding = match active.alg {
            SigningAlg::RS256 => EncodingKey::from_rsa_pem(active.private_key_pem.as_bytes()),
            SigningAlg::ES256 => EncodingKey::from_ec_pem(active.private_key_pem.as_bytes()),
            SigningAlg::EdDSA => EncodingKey::from_ed_pem(active.private_key_pem.as_bytes()),
            SigningAlg::HS256 => unreachable!("symmetric keys are not stored in files"),
        }
        .with_context(|| format!("key {} is unreadable", active.kid))?;
        Ok(Self {
            signing: Some(SigningKey {
                kid: active.kid.clone(),
                alg: active.alg,
                encoding,
            }),
            verifying,
            jwks: serde_json::json!({ "keys": jwks }),
        })
    }
}

/// Adds a new signing key of `alg`; it becomes the active key on the next start.
pub fn rotate(dir: &Path, alg: SigningAlg) -> anyhow::Result<String> {
    if alg == SigningAlg::HS256 {
        bail!("HS256 uses a configured secret; rotate it by changing hs256_secret");
    }
    Ok(write_new_key(dir, alg)?.kid)
}

/// Every key `dir` holds, retired ones included, by kid: for documents that outlive access tokens
/// (signed audit checkpoints), which must stay verifiable after the key that signed them retired.
pub fn all_verifying_keys(dir: &Path) -> anyhow::Result<HashMap<String, VerifyingKey>> {
    let mut keys = HashMap::new();
    for file in read_key_files(dir)? {
        let (decoding, _) = public_parts(&file)?;
        keys.insert(
            file.kid.clone(),
            VerifyingKey {
                alg: file.alg,
                decoding,
            },
        );
    }
    Ok(keys)
}

fn read_key_files(dir: &Path) -> anyhow::Result<Vec<KeyFile>> {
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let text =
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let file: KeyFile =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        files.push(file);
    }
    Ok(files)
}

fn write_new_key(dir: &Path, alg: SigningAlg) -> anyhow::Result<KeyFile> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    let mut id = [0u8; 12];
    OsRng.fill_bytes(&mut id);
    // Strictly after every existing key, so "newest" is never a tie.
    let latest = read_key_files(dir)?
        .iter()
        .map(|f| f.created_at)
        .max()
        .unwrap_or(UnixMillis::EPOCH);
    let file = KeyFile {
        kid: URL_SAFE_NO_PAD.encode(id),
        alg,
        created_at: crate::time::now_ms().max(latest + Duration::from_millis(1)),
        private_key_pem: generate_private_pem(alg)?,
    };
    let path: PathBuf = dir.join(format!("{}.json", file.kid));
    let mut out = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    out.write_all(serde_json::to_string_pretty(&file)?.as_bytes())?;
    out.sync_all()?;
    Ok(file)
}

fn generate_private_pem(alg: SigningAlg) -> anyhow::Result<String> {
    use rsa::pkcs8::{EncodePrivateKey, LineEnding};
    Ok(match alg {
        SigningAlg::RS256 => rsa::RsaPrivateKey::new(&mut OsRng, 2048)?
            .to_pkcs8_pem(LineEnding::LF)?
            .to_string(),
        SigningAlg::ES256 => p256::SecretKey::random(&mut OsRng)
            .to_pkcs8_pem(LineEnding::LF)?
            .to_string(),
        SigningAlg::EdDSA => ed25519_dalek::SigningKey::generate(&mut OsRng)
            .to_pkcs8_pem(LineEnding::LF)?
            .to_string(),
        SigningAlg::HS256 => bail!("HS256 keys are not generated"),
    })
}

/// The verification key and the public JWK of a stored private key.
fn public_parts(file: &KeyFile) -> anyhow::Result<(DecodingKey, serde_json::Value)> {
    use rsa::pkcs8::DecodePrivateKey;
    use rsa::traits::PublicKeyParts;
    let b64 = |bytes: &[u8]| URL_SAFE_NO_PAD.encode(bytes);
    let pem = file.private_key_pem.as_str();
    let (decoding, mut jwk) = match file.alg {
        SigningAlg::RS256 => {
            let key = rsa::RsaPrivateKey::from_pkcs8_pem(pem)?;
            let (n, e) = (b64(&key.n().to_bytes_be()), b64(&key.e().to_bytes_be()));
            (
                DecodingKey::from_rsa_components(&n, &e)?,
                serde_json::json!({ "kty": "RSA", "n": n, "e": e }),
            )
        }
        SigningAlg::ES256 => {
            use p256::elliptic_curve::sec1::ToEncodedPoint;
            let key = p256::SecretKey::from_pkcs8_pem(pem)?;
            let point = key.public_key().to_encoded_point(false);
            let x = b64(point.x().context("EC point without x")?);
            let y = b64(point.y().context("EC point without y")?);
            (
                DecodingKey::from_ec_components(&x, &y)?,
                serde_json::json!({ "kty": "EC", "crv": "P-256", "x": x, "y": y }),
            )
        }
        SigningAlg::EdDSA => {
            let key = ed25519_dalek::SigningKey::from_pkcs8_pem(pem)?;
            let x = b64(key.verifying_key().as_bytes());
            (
                DecodingKey::from_ed_components(&x)?,
                serde_json::json!({ "kty": "OKP", "crv": "Ed25519", "x": x }),
            )
        }
        SigningAlg::HS256 => bail!("HS256 keys are not stored"),
    };
    jwk["kid"] = file.kid.clone().into();
    jwk["use"] = "sig".into();
    jwk["alg"] = file.alg.as_str().into();
    Ok((decoding, jwk))
}

#[cfg(test)]
mod tests {
    use super::*;

    impl KeyRing {
        fn signing(&self) -> &SigningKey {
            self.signing.as_ref().expect("a local key ring signs")
        }
    }

    #[test]
    fn first_load_creates_a_private_key_file_readable_only_by_owner() {
        let dir = tempfile::tempdir().unwrap();
        let ring = KeyRing::load_or_create(dir.path(), SigningAlg::EdDSA, None, 1800).unwrap();
        let path = dir.path().join(format!("{}.json", ring.signing().kid));
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let jwks = ring.jwks().to_string();
        assert!(jwks.contains(&ring.signing().kid));
        assert!(
            !jwks.contains("PRIVATE"),
            "JWKS must not carry private material"
        );
    }

    #[test]
    fn rotation_keeps_the_previous_key_verifying_and_signs_with_the_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let first = KeyRing::load_or_create(dir.path(), SigningAlg::ES256, None, 1800).unwrap();
        let new_kid = rotate(dir.path(), SigningAlg::ES256).unwrap();
        let ring = KeyRing::load_or_create(dir.path(), SigningAlg::ES256, None, 1800).unwrap();
        assert!(ring.verifying_key(&first.signing().kid).is_some());
        assert!(ring.verifying_key(&new_kid).is_some());
        assert_eq!(ring.signing().kid, new_kid);
        assert_eq!(ring.jwks()["keys"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn superseded_key_is_dropped_after_its_retention() {
        let dir = tempfile::tempdir().unwrap();
        let first = KeyRing::load_or_create(dir.path(), SigningAlg::EdDSA, None, 60).unwrap();
        let second = rotate(dir.path(), SigningAlg::EdDSA).unwrap();
        // Age both keys: the first was superseded 2 minutes ago, beyond its 60 s retention.
        let now = crate::time::now_ms();
        for (kid, age_ms) in [(&first.signing().kid, 300_000), (&second, 120_000)] {
            let path = dir.path().join(format!("{kid}.json"));
            let mut file: KeyFile =
                serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
            file.created_at = now - Duration::from_millis(age_ms);
            fs::write(&path, serde_json::to_string(&file).unwrap()).unwrap();
        }
        let ring = KeyRing::load_or_create(dir.path(), SigningAlg::EdDSA, None, 60).unwrap();
        assert_eq!(ring.signing().kid, second);
        assert!(ring.verifying_key(&first.signing().kid).is_none());
        assert_eq!(ring.jwks()["keys"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn hs256_requires_a_long_secret_and_is_never_published() {
        assert!(KeyRing::load_or_create(
            Path::new("/nonexistent"),
            SigningAlg::HS256,
            Some("short"),
            1
        )
        .is_err());
        let ring = KeyRing::load_or_create(
            Path::new("/nonexistent"),
            SigningAlg::HS256,
            Some("0123456789abcdef0123456789abcdef"),
            1,
        )
        .unwrap();
        assert_eq!(ring.jwks()["keys"].as_array().unwrap().len(), 0);
    }
}
