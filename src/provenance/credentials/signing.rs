//! Who signs the Content Credentials: the operator's certificate chain and private key (`c2pa_cert`,
//! `c2pa_key`, PEM), or, without them, a chain generated once under `keys_dir`: a CA of its own and a
//! signing certificate it issued, with the extended key usages C2PA asks of a claim signer. No
//! verifier knows that CA, so they report the manifest as valid but untrusted; it proves only that
//! this installation signed it.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use zeroize::Zeroizing;

/// The file under `keys_dir` with the generated key and chain (PEM: the key, the signing
/// certificate, the CA).
pub const SELF_SIGNED_FILE: &str = "c2pa-self-signed.pem";

/// id-kp-documentSigning (RFC 9336) and C2PA's own claim-signing purpose, beside
/// id-kp-emailProtection: c2pa 0.90 accepts any of them, but the reader of c2pa-python 0.38 (c2pa-rs
/// 0.91) answers `signingCredential.invalid` ("missing required EKU") without emailProtection.
const DOCUMENT_SIGNING_EKU: [u64; 9] = [1, 3, 6, 1, 5, 5, 7, 3, 36];
const C2PA_CLAIM_SIGNING_EKU: [u64; 9] = [1, 3, 6, 1, 4, 1, 62558, 2, 1];

/// Years the generated certificates are valid: without a time-stamp authority, verifiers check the
/// certificate against the time they verify, so a video stays verifiable as long as this.
const SELF_SIGNED_YEARS: i64 = 10;

/// Where the signing credentials came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialOrigin {
    /// `c2pa_cert` and `c2pa_key`.
    Operator,
    /// Generated under `keys_dir`; untrusted by every verifier.
    SelfSigned,
}

impl CredentialOrigin {
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialOrigin::Operator => "operator",
            CredentialOrigin::SelfSigned => "self_signed",
        }
    }
}

/// A certificate chain (signing certificate first) and its private key, as c2pa's signer takes them.
pub struct SigningMaterial {
    pub chain_pem: Vec<u8>,
    pub key_pem: Zeroizing<Vec<u8>>,
    pub alg: c2pa::SigningAlg,
    pub origin: CredentialOrigin,
}

impl std::fmt::Debug for SigningMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningMaterial")
            .field("alg", &self.alg)
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

/// The configured chain and key, or the generated ones under `keys_dir` (created on first use).
pub fn load(
    cert: Option<&Path>,
    key: Option<&Path>,
    keys_dir: &Path,
) -> anyhow::Result<SigningMaterial> {
    match (cert, key) {
        (Some(cert), Some(key)) => operator(cert, key),
        (None, None) => self_signed(keys_dir),
        _ => bail!("c2pa_cert and c2pa_key must be set together"),
    }
}

fn operator(cert: &Path, key: &Path) -> anyhow::Result<SigningMaterial> {
    let chain_pem =
        std::fs::read(cert).with_context(|| format!("reading c2pa_cert {}", cert.display()))?;
    let key_pem = Zeroizing::new(
        std::fs::read(key).with_context(|| format!("reading c2pa_key {}", key.display()))?,
    );
    let alg = key_algorithm(&key_pem).with_context(|| format!("c2pa_key {}", key.display()))?;
    if !String::from_utf8_lossy(&chain_pem).contains("-----BEGIN CERTIFICATE-----") {
        bail!(
            "c2pa_cert {}: no PEM certificate in it (the signing certificate first, then its \
             intermediates)",
            cert.display()
        );
    }
    Ok(SigningMaterial {
        chain_pem,
        key_pem,
        alg,
        origin: CredentialOrigin::Operator,
    })
}

/// ES256 for a P-256 key (PKCS#8 PEM). Ed25519 keys are refused until a test shows their manifests
/// validate with this c2pa version and with c2pa-python.
fn key_algorithm(pem: &[u8]) -> anyhow::Result<c2pa::SigningAlg> {
    use p256::pkcs8::DecodePrivateKey;
    let text = std::str::from_utf8(pem).context("not PEM text")?;
    if p256::SecretKey::from_pkcs8_pem(text).is_ok() {
        return Ok(c2pa::SigningAlg::Es256);
    }
    if ed25519_dalek::SigningKey::from_pkcs8_pem(text).is_ok() {
        bail!("an Ed25519 key, which is not supported yet; use a P-256 key (ES256)");
    }
    bail!(
        "not a PKCS#8 PEM P-256 (ES256) private key (convert an EC key with \
         `openssl pkcs8 -topk8 -nocrypt`)"
    )
}

/// The generated chain: read when present, else made now. Two processes starting at once each make
/// one and only the first file written is kept (a hard link never replaces a file), so both end up
/// signing with the same key.
fn self_signed(keys_dir: &Path) -> anyhow::Result<SigningMaterial> {
    let path = keys_dir.join(SELF_SIGNED_FILE);
    if !path.exists() {
        crate::app::owner_only_dir(keys_dir)?;
        let generated = Zeroizing::new(generate_chain()?);
        let temporary = keys_dir.join(format!(
            ".{SELF_SIGNED_FILE}.{}.tmp",
            uuid::Uuid::new_v4().simple()
        ));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temporary)
            .with_context(|| format!("creating {}", temporary.display()))?;
        file.write_all(generated.as_bytes())?;
        file.sync_all()?;
        let linked = std::fs::hard_link(&temporary, &path);
        let _ = std::fs::remove_file(&temporary);
        match linked {
            Ok(()) => tracing::warn!(
                path = %path.display(),
                "generated a self-signed C2PA signing certificate: verifiers will report videos' \
                 Content Credentials as untrusted until c2pa_cert and c2pa_key name a certificate \
                 from a trusted CA"
            ),
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(err) => return Err(err).with_context(|| format!("creating {}", path.display())),
        }
    }
    let text = Zeroizing::new(
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?,
    );
    let key = pem_blocks(&text, "PRIVATE KEY");
    let chain = pem_blocks(&text, "CERTIFICATE");
    if key.len() != 1 || chain.len() != 2 {
        bail!(
            "{} is not a generated C2PA chain (one key, two certificates); delete it to have a new \
             one generated",
            path.display()
        );
    }
    Ok(SigningMaterial {
        chain_pem: chain.concat().into_bytes(),
        key_pem: Zeroizing::new(key[0].clone().into_bytes()),
        alg: c2pa::SigningAlg::Es256,
        origin: CredentialOrigin::SelfSigned,
    })
}

/// The PEM blocks of one label in `text`, each with its armour lines.
pub(super) fn pem_blocks(text: &str, label: &str) -> Vec<String> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let mut blocks = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(&begin) {
        let Some(stop) = rest[start..].find(&end) else {
            break;
        };
        let stop = start + stop + end.len();
        blocks.push(format!("{}\n", &rest[start..stop]));
        rest = &rest[stop..];
    }
    blocks
}

/// A P-256 CA and a signing certificate it issued, as one PEM text: key, signing certificate, CA.
pub(super) fn generate_chain() -> anyhow::Result<String> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
    };
    let now = time::OffsetDateTime::now_utc();
    let not_before = now - time::Duration::days(1);
    let not_after = now + time::Duration::days(365 * SELF_SIGNED_YEARS);
    let host = hostname();

    let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut ca = CertificateParams::default();
    ca.distinguished_name.push(
        DnType::CommonName,
        format!("sonicgw self-signed C2PA CA ({host})"),
    );
    ca.distinguished_name
        .push(DnType::OrganizationName, "sonicgw (untrusted)");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.not_before = not_before;
    ca.not_after = not_after;
    let ca_cert = ca.self_signed(&ca_key)?;

    let signing_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut signing = CertificateParams::default();
    signing
        .distinguished_name
        .push(DnType::CommonName, format!("sonicgw C2PA signer ({host})"));
    signing
        .distinguished_name
        .push(DnType::OrganizationName, "sonicgw (untrusted)");
    signing.is_ca = IsCa::ExplicitNoCa;
    signing.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    signing.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::EmailProtection,
        ExtendedKeyUsagePurpose::Other(DOCUMENT_SIGNING_EKU.to_vec()),
        ExtendedKeyUsagePurpose::Other(C2PA_CLAIM_SIGNING_EKU.to_vec()),
    ];
    signing.use_authority_key_identifier_extension = true;
    signing.not_before = not_before;
    signing.not_after = not_after;
    let signing_cert = signing.signed_by(&signing_key, &ca_cert, &ca_key)?;

    Ok(format!(
        "{}{}{}",
        signing_key.serialize_pem(),
        signing_cert.pem(),
        ca_cert.pem()
    ))
}

/// This machine's name for the certificates' names (one installation's chain told from another's).
fn hostname() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let name: String = name
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.'))
        .take(64)
        .collect();
    if name.is_empty() {
        "localhost".to_owned()
    } else {
        name
    }
}

/// Where the generated chain lives.
pub fn self_signed_path(keys_dir: &Path) -> PathBuf {
    keys_dir.join(SELF_SIGNED_FILE)
}
