//! Recordings from phones and browsers: Opus in Ogg (voice notes) and WebM (browsers' recorders), AAC in
//! MP4/MOV/M4A, fragmented MP4; made with Debian's ffmpeg (libopus, aac) from the sample speech at test
//! time. What symphonia cannot decode ffmpeg decodes, with its demuxer forced to the detected container.

use std::path::{Path, PathBuf};
use std::process::Command;

use reqwest::multipart::{Form, Part};
use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::*;
use crate::videos::{ffprobe, follow, no_jobs, problem, sample, submit, submit_ok};

/// The sample speech (7.564 s) transcoded by ffmpeg with `args` into `dir/name`.
fn transcode(dir: &Path, name: &str, input: &[&str], args: &[&str]) -> PathBuf {
    let out = dir.join(name);
    let status = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y"])
        .args(input)
        .args(args)
        .arg(&out)
        .status()
        .expect("ffmpeg is installed (apt-get install -y ffmpeg)");
    assert!(status.success(), "ffmpeg failed making {name}");
    out
}

fn speech(dir: &Path, name: &str, args: &[&str]) -> PathBuf {
    let wav = sample("speech_en.wav");
    transcode(dir, name, &["-i", wav.to_str().unwrap()], args)
}

fn with_audio(path: &Path, fields: &[(&str, &str)]) -> Form {
    let mut form = Form::new()
        .part(
            "image",
            Part::bytes(std::fs::read(sample("face_astronaut.png")).unwrap()).file_name("face.png"),
        )
        .part(
            "audio",
            Part::bytes(std::fs::read(path).unwrap()).file_name("recording"),
        );
    for (name, value) in fields {
        form = form.text(name.to_string(), value.to_string());
    }
    form
}

#[tokio::test]
async fn opus_and_aac_recordings_from_phones_and_browsers_are_accepted_with_their_real_duration() {
    let server = TestServer::start_with(Backend::Sqlite, |c| c.simulated_engine_ms = 20).await;
    let admin = server.admin().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cases = [
        // (file, container shown, decoded by ffmpeg)
        (
            speech(d, "voice.ogg", &["-c:a", "libopus", "-b:a", "24k"]),
            "ogg",
            true,
        ),
        (
            speech(d, "voice.opus", &["-c:a", "libopus", "-f", "ogg"]),
            "ogg",
            true,
        ),
        (
            speech(d, "browser.webm", &["-c:a", "libopus"]),
            "webm",
            true,
        ),
        (
            speech(d, "memo.m4a", &["-c:a", "aac", "-b:a", "64k"]),
            "m4a",
            false,
        ),
        (speech(d, "phone.mov", &["-c:a", "aac"]), "m4a", false),
        (
            speech(
                d,
                "safari.mp4",
                &[
                    "-c:a",
                    "aac",
                    "-movflags",
                    "frag_keyframe+empty_moov+default_base_moof",
                ],
            ),
            "m4a",
            true,
        ),
        (speech(d, "opus.mp4", &["-c:a", "libopus"]), "m4a", true),
    ];
    for (path, format, decoded) in cases {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        // `duration` as a client measures it: checked against what was really decoded.
        let job = submit_ok(
            &server,
            &admin.access,
            with_audio(&path, &[("engine", "simulated"), ("duration", "7.56")]),
        )
        .await;
        let audio = &job["input"]["audio"];
        assert_eq!(audio["format"], format, "{name}: {audio}");
        let duration = audio["duration"].as_f64().unwrap();
        // AAC in a fragmented MP4 keeps its encoder priming (no edit list): about 50 ms more.
        assert!((duration - 7.564).abs() < 0.06, "{name}: {audio}");
        assert_eq!(audio.get("stored_as").is_some(), decoded, "{name}: {audio}");
        let events = follow(&server, &admin.access, job["id"].as_str().unwrap()).await;
        assert_eq!(events.last().unwrap()["status"], "succeeded", "{name}");
    }
}

#[tokio::test]
async fn a_webm_voice_note_becomes_a_video_with_its_sound() {
    let server = TestServer::start().await;
    let admin = server.admin().await;
    let dir = tempfile::tempdir().unwrap();
    let webm = speech(dir.path(), "note.webm", &["-c:a", "libopus"]);
    let job = submit_ok(&server, &admin.access, with_audio(&webm, &[])).await;
    let id = job["id"].as_str().unwrap();
    let events = follow(&server, &admin.access, id).await;
    assert_eq!(events.last().unwrap()["status"], "succeeded", "{events:?}");
    let bytes = server
        .client
        .get(server.url(&format!("/v1/videos/{id}/content")))
        .bearer_auth(&admin.access)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let out = dir.path().join("out.mp4");
    std::fs::write(&out, &bytes).unwrap();
    let probe = ffprobe(&out).await;
    let streams = probe["streams"].as_array().unwrap();
    assert!(
        streams.iter().any(|s| s["codec_type"] == "audio"),
        "{probe}"
    );
    let duration: f64 = probe["format"]["duration"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((duration - 7.56).abs() < 0.1, "{probe}");
}

#[tokio::test]
async fn an_opus_recording_longer_than_the_plan_is_refused_without_decoding_it_all() {
    let server = TestServer::start().await;
    let admin = server.admin().await;
    let tenant = server.create_tenant(&admin.access, "short", "free").await;
    server
        .create_user(&admin.access, "brief", "user", Some(&tenant))
        .await;
    let user = server.login("brief", USER_PASSWORD).await;
    let dir = tempfile::tempdir().unwrap();
    // Ten minutes of tone against the free plan's 30 s.
    let long = transcode(
        dir.path(),
        "long.ogg",
        &["-f", "lavfi", "-i", "sine=frequency=220:duration=600"],
        &["-c:a", "libopus", "-b:a", "16k"],
    );
    let body = problem(
        submit(&server, &user.access, with_audio(&long, &[])).await,
        StatusCode::FORBIDDEN,
    )
    .await;
    assert_eq!(body["code"], "plan_limit", "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("more than 30"),
        "{body}"
    );
    no_jobs(&server, &user.access).await;
}

/// Files that start like a container ffmpeg is told to read, then carry what a guessing demuxer would
/// follow: an HLS playlist and an ffconcat list naming a file on the server.
#[tokio::test]
async fn recordings_that_hide_playlists_behind_an_ogg_or_webm_header_are_refused() {
    let server = TestServer::start().await;
    let admin = server.admin().await;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret.wav");
    std::fs::copy(sample("speech_en.wav"), &secret).unwrap();
    let playlist = format!(
        "#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\nfile:{0}\n#EXT-X-ENDLIST\nffconcat version 1.0\nfile '{0}'\n",
        secret.display()
    );
    let mut ogg = b"OggS\x00\x02\x00\x00\x00\x00\x00\x00\x00\x00".to_vec();
    ogg.extend_from_slice(playlist.as_bytes());
    let mut webm = vec![0x1A, 0x45, 0xDF, 0xA3, 0x80];
    webm.extend_from_slice(playlist.as_bytes());
    // A real Opus note with the playlist appended: whatever ffmpeg decodes comes from the note only.
    let note = speech(dir.path(), "note.ogg", &["-c:a", "libopus", "-t", "1"]);
    let mut appended = std::fs::read(&note).unwrap();
    appended.extend_from_slice(playlist.as_bytes());
    for (name, bytes) in [("ogg", ogg), ("webm", webm)] {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let body: Value = problem(
            submit(&server, &admin.access, with_audio(&path, &[])).await,
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await;
        let code = body["code"].as_str().unwrap();
        assert!(
            ["unsupported_audio_format", "audio_decode_failed"].contains(&code),
            "{name}: {body}"
        );
        // ffmpeg's own message names our paths: it stays in the log.
        assert!(!body.to_string().contains("/tmp"), "{name}: {body}");
    }
    let path = dir.path().join("appended.ogg");
    std::fs::write(&path, appended).unwrap();
    let job = submit_ok(&server, &admin.access, with_audio(&path, &[])).await;
    let duration = job["input"]["audio"]["duration"].as_f64().unwrap();
    assert!((duration - 1.0).abs() < 0.05, "{job}");
    no_more_than_one_job(&server, &admin.access).await;
}

async fn no_more_than_one_job(server: &TestServer, token: &str) {
    let list: Value = server
        .client
        .get(server.url("/v1/videos"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["items"].as_array().unwrap().len(), 1, "{list}");
}
