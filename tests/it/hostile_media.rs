//! Hostile uploads: files built so that a tool guessing their format reads something else (an ID3 tag
//! hiding an HLS playlist, `concat:`/`subfile` references, ffconcat lists), uploads that cost the
//! server more than the sender, and failures that must not leak tool output or refund abuse.

use std::path::{Path, PathBuf};

use reqwest::multipart::{Form, Part};
use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::*;
use crate::videos::{follow, form, no_jobs, problem, sample, submit, submit_ok};

/// An ID3v2.4 tag around `body`.
fn id3_tag(body: &[u8]) -> Vec<u8> {
    let n = body.len() as u32;
    let mut tag = b"ID3\x04\x00\x00".to_vec();
    tag.extend([
        (n >> 21) as u8 & 0x7F,
        (n >> 14) as u8 & 0x7F,
        (n >> 7) as u8 & 0x7F,
        n as u8 & 0x7F,
    ]);
    tag.extend_from_slice(body);
    tag
}

/// The sample MP3's frames without its own tag.
fn bare_mp3_frames() -> Vec<u8> {
    let data = std::fs::read(sample("speech_en.mp3")).unwrap();
    let size = data[6..10]
        .iter()
        .fold(0usize, |acc, b| (acc << 7) | usize::from(*b));
    data[10 + size..].to_vec()
}

/// The attack from the security review: an ID3 tag, then an HLS playlist naming another file on the
/// server, then real MP3 frames (so a decoder that scans for frames finds a valid recording).
fn playlist_polyglot(target: &Path) -> Vec<u8> {
    let mut file = id3_tag(b"TIT2\x00\x00\x00\x02\x00\x00\x03x");
    file.extend(
        format!(
            "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:10\n#EXTINF:10.0,\n{}\n#EXT-X-ENDLIST\n",
            target.display()
        )
        .as_bytes(),
    );
    file.extend(bare_mp3_frames());
    file
}

/// A 1000 Hz tone on the server's disk: the file a polyglot would try to smuggle into a video. An
/// `.mp3` name, because ffmpeg's HLS demuxer opens segments with media extensions (another job's
/// `audio.mp3` in the blob store is such a file).
fn tone_file(dir: &Path) -> PathBuf {
    let path = dir.join("tone.mp3");
    let status = std::process::Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi"])
        .args(["-i", "sine=frequency=1000:duration=8:sample_rate=22050"])
        .arg(&path)
        .status()
        .expect("ffmpeg is required for this test");
    assert!(status.success());
    path
}

fn form_with(image: Part, audio: Part) -> Form {
    Form::new().part("image", image).part("audio", audio)
}

fn face_part() -> Part {
    Part::bytes(std::fs::read(sample("face_astronaut.png")).unwrap()).file_name("face.png")
}

#[tokio::test]
async fn id3_tag_hiding_a_playlist_is_refused_and_queues_nothing() {
    let server = TestServer::start_with(Backend::Sqlite, |c| c.workers = 0).await;
    let admin = server.admin().await;
    let polyglot = playlist_polyglot(&tone_file(server.dir.path()));
    let response = submit(
        &server,
        &admin.access,
        form_with(face_part(), Part::bytes(polyglot).file_name("speech.mp3")),
    )
    .await;
    let body = problem(response, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(body["code"], "unsupported_audio_format", "{body}");
    assert_eq!(body["errors"][0]["field"], "audio");
    no_jobs(&server, &admin.access).await;
}

#[tokio::test]
async fn references_in_audio_and_image_uploads_are_refused() {
    let server = TestServer::start_with(Backend::Sqlite, |c| c.workers = 0).await;
    let admin = server.admin().await;
    let target = tone_file(server.dir.path());
    let tricks = [
        format!("#EXTM3U\n#EXTINF:10,\n{}\n", target.display()),
        format!("concat:{}|{}", target.display(), target.display()),
        format!("subfile,,start,0,end,0,,:{}", target.display()),
        format!("ffconcat version 1.0\nfile '{}'\n", target.display()),
    ];
    for trick in &tricks {
        let audio = Part::bytes(trick.clone().into_bytes()).file_name("speech.mp3");
        let body = problem(
            submit(&server, &admin.access, form_with(face_part(), audio)).await,
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await;
        assert_eq!(body["code"], "unsupported_audio_format", "{trick}: {body}");

        let image = Part::bytes(trick.clone().into_bytes()).file_name("face.png");
        let audio =
            Part::bytes(std::fs::read(sample("speech_en.wav")).unwrap()).file_name("speech.wav");
        let body = problem(
            submit(&server, &admin.access, form_with(image, audio)).await,
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await;
        assert_eq!(body["code"], "unsupported_image_format", "{trick}: {body}");
    }
    no_jobs(&server, &admin.access).await;
}

/// A job whose stored recording is hostile (as if it had been queued before intake refused such
/// files): the engine never hands it to ffmpeg, the user sees a code and one line without paths or
/// tool output, the platform admin sees the detail, and the quota is not given back.
#[tokio::test]
async fn hostile_input_reaching_the_engine_fails_as_the_users_fault_without_leaking_detail() {
    let server = TestServer::start_with(Backend::Sqlite, |c| c.workers = 0).await;
    let admin = server.admin().await;
    let tenant = server
        .create_tenant(&admin.access, "tinkerers", "free")
        .await;
    server
        .create_user(&admin.access, "tinker", "user", Some(&tenant))
        .await;
    let user = server.login("tinker", USER_PASSWORD).await;
    let job = submit_ok(&server, &user.access, form("speech_en.mp3", &[])).await;
    let id = job["id"].as_str().unwrap().to_owned();
    // Swap the stored recording for the polyglot.
    let stored = server
        .dir
        .path()
        .join(format!("blobs/jobs/{tenant}/{id}/audio.mp3"));
    assert!(stored.exists(), "{}", stored.display());
    std::fs::write(&stored, playlist_polyglot(&tone_file(server.dir.path()))).unwrap();

    let server = server.restart_with(|c| c.workers = 1).await;
    let user = server.login("tinker", USER_PASSWORD).await;
    follow(&server, &user.access, &id).await;
    let seen: Value = server
        .get(&format!("/v1/videos/{id}"), &user.access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(seen["status"], "failed", "{seen}");
    assert_eq!(seen["error"]["code"], "unsupported_audio_format");
    let message = seen["error"]["message"].as_str().unwrap();
    assert!(
        !message.contains('/') && !message.contains('\n'),
        "{message}"
    );
    assert!(seen["error"].get("detail").is_none(), "{seen}");

    let admin = server.admin().await;
    let as_platform: Value = server
        .get(&format!("/v1/videos/{id}"), &admin.access)
        .await
        .json()
        .await
        .unwrap();
    assert!(
        as_platform["error"]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("MP3")),
        "{as_platform}"
    );
    // The failure was the upload's: the free plan's single concurrent slot is free again, but the
    // failed job still counts toward the day (4 of 5 left).
    for _ in 0..4 {
        let job = submit_ok(&server, &user.access, form("speech_en.wav", &[])).await;
        follow(&server, &user.access, job["id"].as_str().unwrap()).await;
    }
    let body = problem(
        submit(&server, &user.access, form("speech_en.wav", &[])).await,
        StatusCode::TOO_MANY_REQUESTS,
    )
    .await;
    assert_eq!(body["code"], "quota_exceeded");
}

#[tokio::test]
async fn exhausted_quota_is_refused_before_the_upload_is_probed() {
    let server = TestServer::start_with(Backend::Sqlite, |c| c.workers = 0).await;
    let admin = server.admin().await;
    let tenant = server.create_tenant(&admin.access, "busy", "free").await;
    server
        .create_user(&admin.access, "queued-up", "user", Some(&tenant))
        .await;
    let user = server.login("queued-up", USER_PASSWORD).await;
    submit_ok(&server, &user.access, form("speech_en.wav", &[])).await;
    // A second submission while the free plan's one slot is taken: refused for the quota even though
    // its photo is garbage, because the quota is checked before anything is decoded.
    let garbage = Part::bytes(vec![0x89, b'P', b'N', b'G', 0, 0, 0, 0]).file_name("face.png");
    let audio = Part::bytes(std::fs::read(sample("speech_en.wav")).unwrap()).file_name("a.wav");
    let body = problem(
        submit(&server, &user.access, form_with(garbage, audio)).await,
        StatusCode::TOO_MANY_REQUESTS,
    )
    .await;
    assert_eq!(body["code"], "quota_exceeded", "{body}");
}

#[tokio::test]
async fn a_recording_far_over_the_plan_is_refused_without_decoding_it_all() {
    let server = TestServer::start_with(Backend::Sqlite, |c| c.workers = 0).await;
    let admin = server.admin().await;
    let tenant = server.create_tenant(&admin.access, "talkers", "free").await;
    server
        .create_user(&admin.access, "talker", "user", Some(&tenant))
        .await;
    let user = server.login("talker", USER_PASSWORD).await;
    // Ten hours of silence compress to about a megabyte of FLAC.
    let flac = server.dir.path().join("long.flac");
    let status = std::process::Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi"])
        .args([
            "-i",
            "anullsrc=r=8000:cl=mono",
            "-t",
            "36000",
            "-c:a",
            "flac",
        ])
        .arg(&flac)
        .status()
        .expect("ffmpeg is required for this test");
    assert!(status.success());
    let audio = Part::bytes(std::fs::read(&flac).unwrap()).file_name("long.flac");
    let body = problem(
        submit(&server, &user.access, form_with(face_part(), audio)).await,
        StatusCode::FORBIDDEN,
    )
    .await;
    assert_eq!(body["code"], "plan_limit");
    assert_eq!(body["errors"][0]["field"], "max_duration_s");
    // Decoding stopped at the limit, so the length is "more than 30 s", not the full ten hours.
    let detail = body["detail"].as_str().unwrap();
    assert!(detail.contains("more than 30"), "{detail}");
}

/// Runs ffmpeg to make a fixture; fails loudly without it.
fn make(args: &[&str], out: &Path) {
    let status = std::process::Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y"])
        .args(args)
        .arg(out)
        .status()
        .expect("ffmpeg is required for this test");
    assert!(status.success());
}

/// A sample table that claims 2^32-1 entries made symphonia ask for 32 GiB and abort the process;
/// a WAV claiming a 4 GHz sample rate did the same in the resampler. Both are refused at intake, and
/// the server is still there to answer the next request.
#[tokio::test]
async fn tables_and_rates_that_would_exhaust_memory_are_refused() {
    let server = TestServer::start_with(Backend::Sqlite, |c| c.workers = 0).await;
    let admin = server.admin().await;
    let m4a = server.dir.path().join("speech.m4a");
    make(
        &[
            "-i",
            sample("speech_en.wav").to_str().unwrap(),
            "-c:a",
            "aac",
        ],
        &m4a,
    );
    let mut bytes = std::fs::read(&m4a).unwrap();
    let at = bytes
        .windows(4)
        .position(|w| w == b"stts")
        .expect("an AAC M4A has an stts box");
    bytes[at + 8..at + 12].copy_from_slice(&[0xFF; 4]);
    let body = problem(
        submit(
            &server,
            &admin.access,
            form_with(face_part(), Part::bytes(bytes).file_name("speech.m4a")),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(body["code"], "unsupported_audio_format", "{body}");

    let mut wav = std::fs::read(sample("speech_en.wav")).unwrap();
    assert_eq!(&wav[0..4], b"RIFF");
    wav[24..28].copy_from_slice(&4_294_967_291u32.to_le_bytes());
    let body = problem(
        submit(
            &server,
            &admin.access,
            form_with(face_part(), Part::bytes(wav).file_name("speech.wav")),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(body["code"], "unsupported_audio_format", "{body}");
    assert!(body["detail"].as_str().unwrap().contains("Hz"), "{body}");
    // Still serving.
    submit_ok(&server, &admin.access, form("speech_en.wav", &[])).await;
}
