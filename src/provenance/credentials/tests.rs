//! Signing real ffmpeg output and reading it back with c2pa's validation.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::inspect::{inspect, CredentialsState};
use super::*;

/// A 2 s H.264/AAC video, as an engine (and the labelling pass) would write it.
fn video(dir: &Path) -> PathBuf {
    let path = dir.join("labelled.mp4");
    let status = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi", "-i"])
        .arg("testsrc=s=128x128:r=25:d=2")
        .args(["-f", "lavfi", "-i", "sine=d=2"])
        .args([
            "-c:v",
            "libx264",
            "-pix_fmt",
            "yuv420p",
            "-c:a",
            "aac",
            "-shortest",
        ])
        .arg(&path)
        .status()
        .expect("ffmpeg runs");
    assert!(status.success());
    path
}

fn facts() -> ManifestFacts {
    ManifestFacts {
        job_id: "0190c5a0-0000-7000-8000-000000000001".into(),
        producer: ProducerIds::new(b"k").producer_id("tenant", "user"),
        engine: "builtin".into(),
        model: "sonicgw builtin animator (CPU)".into(),
        photo: InputDigest {
            format: "image/png".into(),
            sha256: "11".repeat(32),
        },
        recording: InputDigest {
            format: "audio/wav".into(),
            sha256: "22".repeat(32),
        },
        visible_label: true,
        corner_mark: true,
        label_language: "both".into(),
        aigc_producer: "sonicgw".into(),
    }
}

fn self_signed(keys: &Path) -> ContentCredentials {
    ContentCredentials::new(None, None, keys, b"secret", Duration::from_secs(60)).unwrap()
}

const BUDGET: Duration = Duration::from_secs(30);

#[tokio::test]
async fn a_signed_video_reads_back_valid_but_untrusted_with_its_facts() {
    let dir = tempfile::tempdir().unwrap();
    let credentials = self_signed(&dir.path().join("keys"));
    assert_eq!(credentials.origin(), CredentialOrigin::SelfSigned);
    let signed = dir.path().join("signed.mp4");
    credentials
        .sign(&facts(), &video(dir.path()), &signed)
        .await
        .unwrap();

    let report = inspect(&signed, None, BUDGET).unwrap();
    assert_eq!(report.state, CredentialsState::Valid, "{report:#?}");
    let codes: Vec<&str> = report.failures.iter().map(|f| f.code.as_str()).collect();
    assert_eq!(codes, ["signingCredential.untrusted"], "{report:#?}");
    let created = report.created.as_ref().expect("a created action");
    assert_eq!(
        created["digitalSourceType"],
        manifest::TRAINED_ALGORITHMIC_MEDIA
    );
    assert_eq!(created["softwareAgent"]["name"], "sonicgw");
    let job = report.job.as_ref().expect("our assertion");
    assert_eq!(job["job_id"], "0190c5a0-0000-7000-8000-000000000001");
    assert_eq!(job["inputs"]["photo"]["sha256"], "11".repeat(32));
    assert_eq!(report.visible_label_claimed(), Some(true));
}

#[tokio::test]
async fn a_tampered_byte_makes_the_manifest_invalid() {
    let dir = tempfile::tempdir().unwrap();
    let credentials = self_signed(dir.path());
    let signed = dir.path().join("signed.mp4");
    credentials
        .sign(&facts(), &video(dir.path()), &signed)
        .await
        .unwrap();
    let mut bytes = std::fs::read(&signed).unwrap();
    // A byte of the media data, well past the boxes before it.
    let at = bytes.len() - 2000;
    bytes[at] ^= 0x01;
    std::fs::write(&signed, &bytes).unwrap();

    let report = inspect(&signed, None, BUDGET).unwrap();
    assert_eq!(report.state, CredentialsState::Invalid, "{report:#?}");
    assert!(
        report
            .failures
            .iter()
            .any(|f| f.code.starts_with("assertion.bmffHash")),
        "{report:#?}"
    );
}

#[tokio::test]
async fn the_generated_ca_as_a_trust_anchor_makes_it_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let credentials = self_signed(&keys);
    let signed = dir.path().join("signed.mp4");
    credentials
        .sign(&facts(), &video(dir.path()), &signed)
        .await
        .unwrap();
    let chain = std::fs::read_to_string(signing::self_signed_path(&keys)).unwrap();
    let ca = chain
        .rsplit_once("-----BEGIN CERTIFICATE-----")
        .map(|(_, ca)| format!("-----BEGIN CERTIFICATE-----{ca}"))
        .unwrap();
    let report = inspect(&signed, Some(&ca), BUDGET).unwrap();
    assert_eq!(report.state, CredentialsState::Trusted, "{report:#?}");
    assert!(report.failures.is_empty(), "{report:#?}");
}

#[test]
fn the_generated_chain_is_made_once_and_kept_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let first = signing::load(None, None, dir.path()).unwrap();
    let path = signing::self_signed_path(dir.path());
    let written = std::fs::read(&path).unwrap();
    let second = signing::load(None, None, dir.path()).unwrap();
    assert_eq!(first.chain_pem, second.chain_pem);
    assert_eq!(std::fs::read(&path).unwrap(), written);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[tokio::test]
async fn an_operators_p256_chain_signs_and_an_ed25519_key_is_refused() {
    use rcgen::{KeyPair, PKCS_ED25519};
    let dir = tempfile::tempdir().unwrap();
    let ed25519 = dir.path().join("ed25519.pem");
    std::fs::write(
        &ed25519,
        KeyPair::generate_for(&PKCS_ED25519)
            .unwrap()
            .serialize_pem(),
    )
    .unwrap();
    let chain = dir.path().join("any.pem");
    std::fs::write(&chain, "-----BEGIN CERTIFICATE-----\n").unwrap();
    let err = signing::load(Some(&chain), Some(&ed25519), dir.path()).unwrap_err();
    assert!(format!("{err:#}").contains("P-256"), "{err:#}");

    // An operator's files: a chain with the profile the generated one has, from another CA.
    let generated = signing::generate_chain().unwrap();
    let key = signing::pem_blocks(&generated, "PRIVATE KEY").concat();
    let certificates = signing::pem_blocks(&generated, "CERTIFICATE");
    let cert_path = dir.path().join("chain.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, certificates.concat()).unwrap();
    std::fs::write(&key_path, key).unwrap();
    let credentials = ContentCredentials::new(
        Some(&cert_path),
        Some(&key_path),
        dir.path(),
        b"secret",
        Duration::from_secs(60),
    )
    .unwrap();
    assert_eq!(credentials.origin(), CredentialOrigin::Operator);
    let signed = dir.path().join("signed.mp4");
    credentials
        .sign(&facts(), &video(dir.path()), &signed)
        .await
        .unwrap();
    let report = inspect(&signed, Some(&certificates[1]), BUDGET).unwrap();
    assert_eq!(report.state, CredentialsState::Trusted, "{report:#?}");
    assert!(!signing::self_signed_path(dir.path()).exists());
}

#[test]
fn half_an_operator_configuration_or_a_wrong_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("chain.pem");
    std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\n").unwrap();
    let err = signing::load(Some(&cert), None, dir.path()).unwrap_err();
    assert!(err.to_string().contains("together"), "{err}");
    let key = dir.path().join("key.pem");
    std::fs::write(
        &key,
        "-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n",
    )
    .unwrap();
    let err = signing::load(Some(&cert), Some(&key), dir.path()).unwrap_err();
    assert!(format!("{err:#}").contains("PKCS#8"), "{err:#}");
}

#[test]
fn a_plain_mp4_has_no_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let report = inspect(&video(dir.path()), None, BUDGET).unwrap();
    assert_eq!(report.state, CredentialsState::Absent);
    assert_eq!(report.visible_label_claimed(), None);
}

#[test]
fn contexts_here_never_reach_the_network() {
    let context = offline_context(None, BUDGET).unwrap();
    let request = c2pa::http::http::Request::get("http://127.0.0.1:9/manifest.c2pa")
        .body(Vec::new())
        .unwrap();
    assert!(context.resolver().http_resolve(request).is_err());
    assert!(!context.settings().verify.remote_manifest_fetch);
    assert!(!context.settings().verify.ocsp_fetch);
    assert_eq!(
        context.settings().core.allowed_network_hosts,
        Some(Vec::new())
    );
}
