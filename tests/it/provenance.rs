//! C2PA Content Credentials through the real server: every builtin video is signed after its labels,
//! read back by our endpoints and by an independent reader (c2pa-python, the Content Authenticity
//! Initiative's own library, installed by `scripts/setup.sh` into `<target>/c2pa-venv`); a tampered
//! byte fails both; `POST /v1/provenance/verify` answers hostile uploads with a clear 4xx.

use std::path::{Path, PathBuf};
use std::process::Command;

use reqwest::StatusCode;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::helpers::*;
use crate::videos::{follow, form, problem, sample, submit_ok};

/// The venv's Python: `SONICGW_TEST_C2PA_PYTHON`, else `<target dir>/c2pa-venv/bin/python`.
fn c2pa_python() -> PathBuf {
    if let Ok(path) = std::env::var("SONICGW_TEST_C2PA_PYTHON") {
        return PathBuf::from(path);
    }
    // The test binary is <target>/<profile>/deps/it-<hash>.
    let exe = std::env::current_exe().expect("test binary path");
    let target = exe
        .ancestors()
        .nth(3)
        .expect("the test binary lives under a target directory");
    target.join("c2pa-venv/bin/python")
}

/// The manifest store of `video` as c2pa-python reads it.
fn independent_read(video: &Path) -> Value {
    let python = c2pa_python();
    assert!(
        python.exists(),
        "the independent C2PA reader is not installed ({} is missing): run scripts/setup.sh with \
         the same CARGO_TARGET_DIR, or point SONICGW_TEST_C2PA_PYTHON at a Python with c2pa-python",
        python.display()
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/c2pa-read.py");
    let out = Command::new(&python)
        .arg(&script)
        .arg(video)
        .output()
        .expect("running c2pa-read.py");
    assert!(
        out.status.success(),
        "c2pa-read.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("c2pa-read.py prints JSON")
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

async fn verify_upload(server: &TestServer, body: Vec<u8>) -> reqwest::Response {
    server
        .client
        .post(server.url("/v1/provenance/verify"))
        .header("content-type", "video/mp4")
        .body(body)
        .send()
        .await
        .unwrap()
}

/// A short H.264/AAC MP4 made by ffmpeg, with no labels and no manifest.
fn plain_mp4(dir: &Path) -> Vec<u8> {
    let path = dir.join("plain.mp4");
    let status = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi", "-i"])
        .arg("testsrc=s=64x64:r=25:d=1")
        .args(["-f", "lavfi", "-i", "sine=d=1"])
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
    std::fs::read(path).unwrap()
}

/// A signed video of a job submitted by `carol`, a user of tenant `acme`: the server, carol's ids
/// and session, the job id and the downloaded bytes.
struct SignedJob {
    server: TestServer,
    carol: Session,
    carol_id: String,
    tenant_id: String,
    id: String,
    video: Vec<u8>,
}

async fn signed_job() -> SignedJob {
    let server = TestServer::start().await;
    let admin = server.admin().await;
    let tenant_id = server.create_tenant(&admin.access, "acme", "free").await;
    let carol_id = server
        .create_user(&admin.access, "carol", "user", Some(&tenant_id))
        .await;
    let carol = server.login_in("carol", USER_PASSWORD, Some("acme")).await;
    let created = submit_ok(&server, &carol.access, form("speech_en.wav", &[])).await;
    let id = created["id"].as_str().unwrap().to_owned();
    let events = follow(&server, &carol.access, &id).await;
    assert_eq!(events.last().unwrap()["status"], "succeeded", "{events:?}");
    let response = server
        .get(&format!("/v1/videos/{id}/content"), &carol.access)
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let video = response.bytes().await.unwrap().to_vec();
    SignedJob {
        server,
        carol,
        carol_id,
        tenant_id,
        id,
        video,
    }
}

/// A byte of the media data flipped (well past the boxes in front of it).
fn tampered(video: &[u8]) -> Vec<u8> {
    let mut bytes = video.to_vec();
    let at = bytes.len() - 4096;
    bytes[at] ^= 0x01;
    bytes
}

#[tokio::test]
async fn every_builtin_video_carries_content_credentials_that_an_independent_reader_validates() {
    let job = signed_job().await;
    let SignedJob {
        server, carol, id, ..
    } = &job;

    // Our endpoint, on the stored video.
    let response = server
        .get(&format!("/v1/videos/{id}/provenance"), &carol.access)
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let report: Value = response.json().await.unwrap();
    let c2pa = &report["c2pa"];
    assert_eq!(c2pa["state"], "valid", "{report:#}");
    assert_eq!(
        c2pa["failures"][0]["code"], "signingCredential.untrusted",
        "{report:#}"
    );
    assert_eq!(c2pa["failures"].as_array().unwrap().len(), 1, "{report:#}");
    assert_eq!(c2pa["created"]["action"], "c2pa.created");
    assert_eq!(
        c2pa["created"]["digitalSourceType"],
        "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
    );
    assert_eq!(c2pa["created"]["softwareAgent"]["name"], "sonicgw");
    assert_eq!(
        c2pa["created"]["softwareAgent"]["version"],
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(
        c2pa["created"]["softwareAgent"]["org.sonicgw.engine"],
        "builtin"
    );
    let facts = &c2pa["job"];
    assert_eq!(facts["job_id"], id.as_str());
    assert_eq!(facts["engine"], "builtin");
    assert!(facts["model"].as_str().unwrap().contains("builtin"));
    let producer = facts["producer"].as_str().unwrap();
    assert!(
        producer.starts_with("sgw:") && producer.len() == 36,
        "{producer}"
    );
    assert_eq!(
        facts["inputs"]["photo"]["sha256"],
        sha256_hex(&std::fs::read(sample("face_astronaut.png")).unwrap())
    );
    assert_eq!(
        facts["inputs"]["recording"]["sha256"],
        sha256_hex(&std::fs::read(sample("speech_en.wav")).unwrap())
    );
    // The inputs are named by their digests only, never embedded.
    let ingredients = c2pa["manifest_store"]["manifests"]
        [c2pa["active_manifest"].as_str().unwrap()]["ingredients"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(ingredients.len(), 2, "{ingredients:?}");
    for ingredient in &ingredients {
        assert!(ingredient.get("data").is_none(), "{ingredient}");
        assert!(
            ingredient["instance_id"]
                .as_str()
                .unwrap()
                .starts_with("sha256:"),
            "{ingredient}"
        );
    }
    assert_eq!(report["aigc"]["ProduceID"], id.as_str());
    assert_eq!(report["visible_label_claimed"], true);
    // A pseudonym: neither the username nor the user's or tenant's ids appear anywhere.
    let text = report.to_string();
    for secret in ["carol", job.carol_id.as_str(), job.tenant_id.as_str()] {
        assert!(!text.contains(secret), "{secret} appears in {text}");
    }

    // The independent reader, on the downloaded bytes.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("video.mp4");
    std::fs::write(&path, &job.video).unwrap();
    let independent = independent_read(&path);
    assert!(independent.get("error").is_none(), "{independent:#}");
    assert_eq!(independent["validation_state"], "Valid", "{independent:#}");
    let manifest = &independent["manifests"][independent["active_manifest"].as_str().unwrap()];
    let assertion = |label: &str| {
        manifest["assertions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["label"] == label)
            .unwrap_or_else(|| panic!("no {label} in {manifest:#}"))["data"]
            .clone()
    };
    let created = &assertion("c2pa.actions.v2")["actions"][0];
    assert_eq!(created["action"], "c2pa.created");
    assert_eq!(
        created["digitalSourceType"],
        "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
    );
    assert_eq!(assertion("org.sonicgw.job")["job_id"], id.as_str());
    assert!(!independent.to_string().contains("carol"));

    // The same bytes uploaded to the verify endpoint, no account needed.
    let response = verify_upload(server, job.video.clone()).await;
    assert_eq!(response.status(), StatusCode::OK);
    let uploaded: Value = response.json().await.unwrap();
    assert_eq!(uploaded["c2pa"]["state"], "valid", "{uploaded:#}");
    assert_eq!(uploaded["c2pa"]["job"]["job_id"], id.as_str());
}

#[tokio::test]
async fn a_tampered_byte_fails_validation_here_and_in_the_independent_reader() {
    let job = signed_job().await;
    let bad = tampered(&job.video);

    let response = verify_upload(&job.server, bad.clone()).await;
    assert_eq!(response.status(), StatusCode::OK);
    let report: Value = response.json().await.unwrap();
    assert_eq!(report["c2pa"]["state"], "invalid", "{report:#}");
    let codes: Vec<&str> = report["c2pa"]["failures"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["code"].as_str())
        .collect();
    assert!(
        codes.iter().any(|c| c.starts_with("assertion.bmffHash")),
        "{codes:?}"
    );

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tampered.mp4");
    std::fs::write(&path, &bad).unwrap();
    let independent = independent_read(&path);
    assert_eq!(
        independent["validation_state"], "Invalid",
        "{independent:#}"
    );
    let failures = independent["validation_results"]["activeManifest"]["failure"].to_string();
    assert!(failures.contains("assertion.bmffHash"), "{independent:#}");
}

#[tokio::test]
async fn a_plain_mp4_has_no_manifest_and_no_labels() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let response = verify_upload(&server, plain_mp4(dir.path())).await;
    assert_eq!(response.status(), StatusCode::OK);
    let report: Value = response.json().await.unwrap();
    assert_eq!(report["c2pa"]["state"], "absent", "{report:#}");
    assert!(report.get("aigc").is_none(), "{report:#}");
    assert!(report.get("visible_label_claimed").is_none(), "{report:#}");
}

/// An MP4 box: big-endian size, type, body.
fn mp4_box(kind: &[u8; 4], body: &[u8]) -> Vec<u8> {
    let mut out = ((body.len() + 8) as u32).to_be_bytes().to_vec();
    out.extend_from_slice(kind);
    out.extend_from_slice(body);
    out
}

#[tokio::test]
async fn hostile_uploads_get_a_clear_4xx_and_the_server_lives_on() {
    let server = TestServer::start_with(Backend::Sqlite, |c| {
        c.verify_max_bytes = 1024 * 1024;
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let plain = plain_mp4(dir.path());
    let ftyp = mp4_box(b"ftyp", b"isom\0\0\0\0isom");

    let mut huge_box = ftyp.clone();
    huge_box.extend(0xffff_fff0u32.to_be_bytes());
    huge_box.extend(b"moov");
    huge_box.extend([0u8; 64]);

    let mut huge_large_size = ftyp.clone();
    huge_large_size.extend(1u32.to_be_bytes());
    huge_large_size.extend(b"uuid");
    huge_large_size.extend(u64::MAX.to_be_bytes());
    huge_large_size.extend([0u8; 64]);

    let mut lying_table = ftyp.clone();
    let stts = mp4_box(b"stts", &[0, 0, 0, 0, 0x7f, 0xff, 0xff, 0xff]);
    lying_table.extend(mp4_box(b"moov", &mp4_box(b"trak", &stts)));

    // A C2PA box whose manifest is garbage.
    let mut garbage_manifest = ftyp.clone();
    let mut uuid_body = hex::decode("d8fec3d61b0e483c92975828877ec481").unwrap();
    uuid_body.extend([0u8; 4]);
    uuid_body.extend(b"manifest\0");
    uuid_body.extend([0xffu8; 200]);
    garbage_manifest.extend(mp4_box(b"uuid", &uuid_body));
    garbage_manifest.extend_from_slice(&plain[ftyp.len().min(plain.len())..]);

    let cases: Vec<(&str, Vec<u8>, StatusCode, &str)> = vec![
        (
            "empty",
            Vec::new(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "not_mp4",
        ),
        (
            "a PNG",
            std::fs::read(sample("face_astronaut.png")).unwrap(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "not_mp4",
        ),
        (
            "truncated",
            plain[..plain.len() / 2].to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "malformed_mp4",
        ),
        (
            "a 4 GiB box",
            huge_box,
            StatusCode::UNPROCESSABLE_ENTITY,
            "malformed_mp4",
        ),
        (
            "a 2^64 byte box",
            huge_large_size,
            StatusCode::UNPROCESSABLE_ENTITY,
            "malformed_mp4",
        ),
        (
            "a table claiming 2^31 entries",
            lying_table,
            StatusCode::UNPROCESSABLE_ENTITY,
            "malformed_mp4",
        ),
        (
            "over verify_max_bytes",
            vec![0u8; 1024 * 1024 + 1],
            StatusCode::PAYLOAD_TOO_LARGE,
            "file_too_large",
        ),
    ];
    for (what, body, status, code) in cases {
        let response = verify_upload(&server, body).await;
        let body = problem(response, status).await;
        assert_eq!(body["code"], code, "{what}: {body}");
    }

    // Garbage where the manifest should be is a file that fails validation, never a crash.
    let response = verify_upload(&server, garbage_manifest).await;
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    match status {
        StatusCode::OK => assert_eq!(body["c2pa"]["state"], "invalid", "{body}"),
        StatusCode::UNPROCESSABLE_ENTITY => {
            assert!(
                ["malformed_mp4", "unreadable_manifest"].contains(&body["code"].as_str().unwrap()),
                "{body}"
            )
        }
        other => panic!("garbage manifest: {other} {body}"),
    }

    // A streamed body with no length is cut off at the limit too.
    let chunks =
        futures::stream::iter((0..3).map(|_| Ok::<_, std::io::Error>(vec![0u8; 512 * 1024])));
    let response = server
        .client
        .post(server.url("/v1/provenance/verify"))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    let body = problem(response, StatusCode::PAYLOAD_TOO_LARGE).await;
    assert_eq!(body["code"], "file_too_large");

    let health = server
        .client
        .get(server.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
}

#[tokio::test]
async fn the_verify_endpoint_is_rate_limited_per_client() {
    let server = TestServer::start().await;
    for _ in 0..sonicgw::http::routes::provenance::VERIFY_PER_CLIENT_PER_MINUTE {
        let response = verify_upload(&server, b"not a video".to_vec()).await;
        assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    }
    let response = verify_upload(&server, b"not a video".to_vec()).await;
    assert!(response.headers().contains_key("retry-after"));
    let body = problem(response, StatusCode::TOO_MANY_REQUESTS).await;
    assert_eq!(body["code"], "rate_limited");
    assert!(
        body["detail"].as_str().unwrap().contains("client"),
        "{body}"
    );
}

#[tokio::test]
async fn a_jobs_provenance_is_tenant_scoped_and_only_for_finished_videos() {
    let job = signed_job().await;
    let SignedJob { server, id, .. } = &job;
    let admin = server.admin().await;
    let other_tenant = server.create_tenant(&admin.access, "other", "free").await;
    server
        .create_user(&admin.access, "dave", "admin", Some(&other_tenant))
        .await;
    let dave = server.login_in("dave", USER_PASSWORD, Some("other")).await;
    let response = server
        .get(&format!("/v1/videos/{id}/provenance"), &dave.access)
        .await;
    problem(response, StatusCode::NOT_FOUND).await;
    let response = server
        .client
        .get(server.url(&format!("/v1/videos/{id}/provenance")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}
