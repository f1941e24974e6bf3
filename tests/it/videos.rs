//! `/v1/videos` end to end: validation before queueing, plan limits and quotas, idempotency, tenant
//! isolation, cancellation, restarts, delivery (bearer, signed links, ranges) and a real MP4.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use reqwest::multipart::{Form, Part};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::*;
use crate::traces::{in_request, span, Traces};

pub fn sample(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("assets/samples")
        .join(name)
}

fn file_part(path: &Path, file_name: &str) -> Part {
    Part::bytes(std::fs::read(path).unwrap()).file_name(file_name.to_owned())
}

/// A form with the sample face, the given audio and text fields.
pub fn form(audio: &str, fields: &[(&str, &str)]) -> Form {
    let mut form = Form::new()
        .part(
            "image",
            file_part(&sample("face_astronaut.png"), "face.png"),
        )
        .part("audio", file_part(&sample(audio), audio));
    for (name, value) in fields {
        form = form.text(name.to_string(), value.to_string());
    }
    form
}

pub async fn submit(server: &TestServer, token: &str, form: Form) -> reqwest::Response {
    server
        .client
        .post(server.url("/v1/videos"))
        .bearer_auth(token)
        .multipart(form)
        .send()
        .await
        .unwrap()
}

pub async fn submit_ok(server: &TestServer, token: &str, form: Form) -> Value {
    let response = submit(server, token, form).await;
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    body
}

/// Follows the job's Server-Sent Events until the final event; returns every `job` event.
pub async fn follow(server: &TestServer, token: &str, id: &str) -> Vec<Value> {
    let response = server
        .client
        .get(server.url(&format!("/v1/videos/{id}/events")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let mut stream = response.bytes_stream();
    let mut buffer = String::new();
    let mut events = Vec::new();
    let read = async {
        while let Some(chunk) = stream.next().await {
            buffer.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
            while let Some(end) = buffer.find("\n\n") {
                let block: String = buffer.drain(..end + 2).collect();
                let event = block
                    .lines()
                    .find_map(|l| l.strip_prefix("event: "))
                    .unwrap_or("");
                let data = block
                    .lines()
                    .find_map(|l| l.strip_prefix("data: "))
                    .unwrap_or("");
                match event {
                    "job" => events.push(serde_json::from_str(data).unwrap()),
                    "end" => return,
                    _ => {}
                }
            }
        }
        panic!("event stream closed without an end event");
    };
    tokio::time::timeout(Duration::from_secs(180), read)
        .await
        .expect("job finished in time");
    events
}

/// Follows the job's events until one says it is running.
pub async fn wait_until_running(server: &TestServer, token: &str, id: &str) {
    let response = server
        .client
        .get(server.url(&format!("/v1/videos/{id}/events")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let mut stream = response.bytes_stream();
    let mut seen = String::new();
    let running = async {
        while let Some(chunk) = stream.next().await {
            seen.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
            if seen.contains("\"status\":\"running\"") {
                return;
            }
        }
        panic!("the event stream ended before job {id} ran");
    };
    tokio::time::timeout(Duration::from_secs(30), running)
        .await
        .unwrap_or_else(|_| panic!("job {id} did not start within 30 s"));
}

pub async fn problem(response: reqwest::Response, status: StatusCode) -> Value {
    let actual = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(actual, status, "{body}");
    body
}

pub async fn no_jobs(server: &TestServer, token: &str) {
    let list: Value = server.get("/v1/videos", token).await.json().await.unwrap();
    assert_eq!(
        list["items"].as_array().unwrap().len(),
        0,
        "nothing was queued: {list}"
    );
}

pub async fn ffprobe(path: &Path) -> Value {
    let output = tokio::process::Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-count_frames",
            "-print_format",
            "json",
            "-show_streams",
            "-show_format",
        ])
        .arg(path)
        .output()
        .await
        .unwrap();
    assert!(output.status.success());
    serde_json::from_slice(&output.stdout).unwrap()
}

#[tokio::test]
async fn end_to_end_builtin_engine_makes_a_real_lip_synced_mp4() {
    let server = TestServer::start().await;
    let admin = server.admin().await;
    let created = submit_ok(
        &server,
        &admin.access,
        form("speech_en.wav", &[("seed", "7")]),
    )
    .await;
    assert_eq!(created["status"], "queued");
    assert_eq!(created["input"]["image"]["faces_detected"], 1);
    assert_eq!(
        created["output"],
        json!({ "width": 512, "height": 512, "fps": 25, "frames": 189 })
    );
    let audio_duration = created["input"]["audio"]["duration"].as_f64().unwrap();
    assert!((audio_duration - 7.564).abs() < 0.01, "{audio_duration}");
    let id = created["id"].as_str().unwrap();

    let events = follow(&server, &admin.access, id).await;
    let last = events.last().unwrap();
    assert_eq!(last["status"], "succeeded", "{last}");
    assert!(
        events.iter().any(|e| e["status"] == "running"),
        "a running event was seen"
    );
    let progress: Vec<f64> = events
        .iter()
        .map(|e| e["progress"].as_f64().unwrap())
        .collect();
    assert!(
        progress.windows(2).all(|w| w[0] <= w[1]),
        "progress only grows: {progress:?}"
    );

    let response = server
        .get(&format!("/v1/videos/{id}/content"), &admin.access)
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "video/mp4");
    let etag = response.headers()["etag"].to_str().unwrap().to_owned();
    let bytes = response.bytes().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.mp4");
    std::fs::write(&path, &bytes).unwrap();
    let probe = ffprobe(&path).await;
    let streams = probe["streams"].as_array().unwrap();
    let video = streams.iter().find(|s| s["codec_type"] == "video").unwrap();
    let audio = streams.iter().find(|s| s["codec_type"] == "audio").unwrap();
    assert_eq!(video["codec_name"], "h264");
    assert_eq!(video["pix_fmt"], "yuv420p");
    assert_eq!(
        (video["width"].as_u64(), video["height"].as_u64()),
        (Some(512), Some(512))
    );
    assert_eq!(video["avg_frame_rate"], "25/1");
    assert_eq!(video["nb_read_frames"], "189");
    assert_eq!(audio["codec_name"], "aac");
    let duration: f64 = probe["format"]["duration"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (duration - audio_duration).abs() <= 0.04,
        "video {duration} s vs audio {audio_duration} s"
    );

    // Conditional GET.
    let not_modified = server
        .client
        .get(server.url(&format!("/v1/videos/{id}/content")))
        .bearer_auth(&admin.access)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(not_modified.status(), StatusCode::NOT_MODIFIED);
}

#[tokio::test]
async fn signed_link_plays_without_a_token_supports_ranges_and_refuses_tampering_and_expiry() {
    let server = TestServer::start_with(Backend::Sqlite, |c| c.link_ttl_s = 2).await;
    let admin = server.admin().await;
    let created = submit_ok(&server, &admin.access, form("speech_en.wav", &[])).await;
    let id = created["id"].as_str().unwrap();
    follow(&server, &admin.access, id).await;
    let job: Value = server
        .get(&format!("/v1/videos/{id}"), &admin.access)
        .await
        .json()
        .await
        .unwrap();
    let url = job["result"]["url"].as_str().unwrap().to_owned();
    let size = job["result"]["bytes"].as_u64().unwrap();

    let whole = server.client.get(server.url(&url)).send().await.unwrap();
    assert_eq!(whole.status(), StatusCode::OK, "no bearer token needed");
    let whole = whole.bytes().await.unwrap();
    assert_eq!(whole.len() as u64, size);

    let ranged = server
        .client
        .get(server.url(&url))
        .header("range", "bytes=100-199")
        .send()
        .await
        .unwrap();
    assert_eq!(ranged.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        ranged.headers()["content-range"],
        format!("bytes 100-199/{size}").as_str()
    );
    assert_eq!(ranged.bytes().await.unwrap(), whole.slice(100..200));
    let tail = server
        .client
        .get(server.url(&url))
        .header("range", "bytes=-10")
        .send()
        .await
        .unwrap();
    assert_eq!(tail.bytes().await.unwrap(), whole.slice(whole.len() - 10..));
    let beyond = server
        .client
        .get(server.url(&url))
        .header("range", format!("bytes={size}-"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        beyond.headers()["content-range"].to_str().unwrap(),
        format!("bytes */{size}")
    );
    assert_eq!(beyond.headers()["content-type"], "application/problem+json");
    let body = problem(beyond, StatusCode::RANGE_NOT_SATISFIABLE).await;
    assert_eq!(body["code"], "range_not_satisfiable");
    assert_eq!(body["errors"][0]["field"], "Range");

    let tampered_sig = url.replace("sig=", "sig=A");
    let body = problem(
        server
            .client
            .get(server.url(&tampered_sig))
            .send()
            .await
            .unwrap(),
        StatusCode::FORBIDDEN,
    )
    .await;
    assert_eq!(body["code"], "invalid_signature");
    let (path, query) = url.split_once('?').unwrap();
    let expires: i64 = query
        .split('&')
        .find_map(|p| p.strip_prefix("expires="))
        .unwrap()
        .parse()
        .unwrap();
    // Another spelling of the same expiry is another URL (a CDN cache miss): only the canonical one counts.
    for respelled in [
        format!("expires=0{expires}"),
        format!("expires=%2B{expires}"),
    ] {
        let respelled = url.replace(&format!("expires={expires}"), &respelled);
        let body = problem(
            server
                .client
                .get(server.url(&respelled))
                .send()
                .await
                .unwrap(),
            StatusCode::FORBIDDEN,
        )
        .await;
        assert_eq!(body["code"], "invalid_signature", "{respelled}");
    }
    let extended = url.replace(
        &format!("expires={expires}"),
        &format!("expires={}", expires + 3600),
    );
    let body = problem(
        server
            .client
            .get(server.url(&extended))
            .send()
            .await
            .unwrap(),
        StatusCode::FORBIDDEN,
    )
    .await;
    assert_eq!(body["code"], "invalid_signature");
    let other = url.replace(id, &uuid::Uuid::now_v7().to_string());
    assert_eq!(
        server
            .client
            .get(server.url(&other))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        server
            .client
            .get(server.url(path))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::FORBIDDEN
    );

    // Once the link's time is up it is refused; a fresh GET of the job gives a fresh link.
    let wait = (expires - sonicgw::time::now_s() + 1).max(0) as u64;
    tokio::time::sleep(Duration::from_secs(wait)).await;
    let body = problem(
        server.client.get(server.url(&url)).send().await.unwrap(),
        StatusCode::FORBIDDEN,
    )
    .await;
    assert_eq!(body["code"], "link_expired");
}

async fn assert_duration_mismatch(audio: &str) {
    let server = TestServer::start().await;
    let admin = server.admin().await;
    let body = problem(
        submit(&server, &admin.access, form(audio, &[("duration", "10")])).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(body["code"], "duration_mismatch");
    assert_eq!(body["errors"][0]["field"], "duration");
    let message = body["errors"][0]["message"].as_str().unwrap();
    assert!(
        message.contains("10") && message.contains("7.56"),
        "{message}"
    );
    no_jobs(&server, &admin.access).await;
    // The real length, which the MP3's encoder padding must not change, is accepted.
    submit_ok(&server, &admin.access, form(audio, &[("duration", "7.56")])).await;
}

#[tokio::test]
async fn duration_mismatch_names_both_numbers_wav() {
    assert_duration_mismatch("speech_en.wav").await;
}

#[tokio::test]
async fn duration_mismatch_names_both_numbers_mp3() {
    assert_duration_mismatch("speech_en.mp3").await;
}

#[tokio::test]
async fn photo_without_a_face_is_refused_before_queueing() {
    let server = TestServer::start().await;
    let admin = server.admin().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wall.png");
    image::RgbImage::from_fn(400, 300, |x, y| {
        image::Rgb([(x / 2) as u8, (y / 2) as u8, 128])
    })
    .save(&path)
    .unwrap();
    let form = Form::new()
        .part("image", file_part(&path, "wall.png"))
        .part("audio", file_part(&sample("speech_en.wav"), "speech.wav"));
    let body = problem(
        submit(&server, &admin.access, form).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(body["code"], "no_face_detected");
    no_jobs(&server, &admin.access).await;
}

/// The sample photo shrunk so its face is about 50 px, pasted off-centre into a 2000 x 1500 canvas.
fn small_face_photo(dir: &Path) -> PathBuf {
    let face = image::open(sample("face_astronaut.png"))
        .unwrap()
        .into_rgb8();
    // The sample's face is about 94 px of its 512.
    let small = image::imageops::resize(&face, 272, 272, image::imageops::FilterType::Triangle);
    let mut canvas = image::RgbImage::from_fn(2000, 1500, |x, y| {
        image::Rgb([90 + (x / 40) as u8, 100 + (y / 40) as u8, 110])
    });
    image::imageops::replace(&mut canvas, &small, 1500, 1100);
    let path = dir.join("small_face.png");
    canvas.save(&path).unwrap();
    path
}

#[tokio::test]
async fn small_face_in_a_large_photo_is_found_and_too_small_only_for_a_high_resolution() {
    let server = TestServer::start().await;
    let admin = server.admin().await;
    let dir = tempfile::tempdir().unwrap();
    let photo = small_face_photo(dir.path());
    let with = |fields: &[(&str, &str)]| {
        let mut form = Form::new()
            .part("image", file_part(&photo, "small_face.png"))
            .part("audio", file_part(&sample("speech_en.wav"), "speech.wav"));
        for (name, value) in fields {
            form = form.text(name.to_string(), value.to_string());
        }
        form
    };
    // The default 512 px from a 50 px face (a 100 px crop): found, and used.
    let job = submit_ok(&server, &admin.access, with(&[])).await;
    let face = &job["input"]["image"]["face"];
    let size = face["width"]
        .as_u64()
        .unwrap()
        .max(face["height"].as_u64().unwrap());
    assert!((40..=62).contains(&size), "{face}");
    let (x, y) = (face["x"].as_u64().unwrap(), face["y"].as_u64().unwrap());
    assert!(
        (1500..1772).contains(&x) && (1100..1372).contains(&y),
        "{face}"
    );
    // 1024 px from a crop of 1.2 x the face: more than 10x enlarged.
    let body = problem(
        submit(
            &server,
            &admin.access,
            with(&[("min_resolution", "1024"), ("expand_ratio", "0.1")]),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(body["code"], "face_too_small", "{body}");
    assert_eq!(body["errors"][0]["field"], "image");
    let detail = body["detail"].as_str().unwrap();
    assert!(
        detail.contains(&format!("is {size} px"))
            && detail.contains("smallest usable face is 86 px"),
        "{detail}"
    );
}

#[tokio::test]
async fn file_types_are_detected_from_content_not_names() {
    let server = TestServer::start().await;
    let admin = server.admin().await;
    let audio_as_image = Form::new()
        .part(
            "image",
            file_part(&sample("speech_en.wav"), "face.png")
                .mime_str("image/png")
                .unwrap(),
        )
        .part("audio", file_part(&sample("speech_en.wav"), "speech.wav"));
    let body = problem(
        submit(&server, &admin.access, audio_as_image).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(body["code"], "unsupported_image_format");
    assert_eq!(body["errors"][0]["field"], "image");
    let image_as_audio = Form::new()
        .part(
            "image",
            file_part(&sample("face_astronaut.png"), "face.png"),
        )
        .part(
            "audio",
            file_part(&sample("face_astronaut.png"), "speech.mp3")
                .mime_str("audio/mpeg")
                .unwrap(),
        );
    let body = problem(
        submit(&server, &admin.access, image_as_audio).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(body["code"], "unsupported_audio_format");
    // A PNG named .jpg is still accepted: the content decides.
    let renamed = Form::new()
        .part(
            "image",
            file_part(&sample("face_astronaut.png"), "face.jpg")
                .mime_str("image/jpeg")
                .unwrap(),
        )
        .part("audio", file_part(&sample("speech_en.mp3"), "a.bin"));
    submit_ok(&server, &admin.access, renamed).await;
}

#[tokio::test]
async fn missing_files_are_named() {
    let server = TestServer::start().await;
    let admin = server.admin().await;
    let only_audio = Form::new().part("audio", file_part(&sample("speech_en.wav"), "speech.wav"));
    let body = problem(
        submit(&server, &admin.access, only_audio).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(body["errors"][0]["field"], "image");
}

#[tokio::test]
async fn upload_over_the_size_limit_is_413_while_streaming() {
    let server = TestServer::start_with(Backend::Sqlite, |c| c.max_image_bytes = 100 * 1024).await;
    let admin = server.admin().await;
    let body = problem(
        submit(&server, &admin.access, form("speech_en.wav", &[])).await,
        StatusCode::PAYLOAD_TOO_LARGE,
    )
    .await;
    assert_eq!(body["code"], "file_too_large");
    assert_eq!(body["errors"][0]["field"], "image");
    no_jobs(&server, &admin.access).await;
}

#[tokio::test]
async fn decompression_bomb_is_refused_from_its_header() {
    let server = TestServer::start().await;
    let admin = server.admin().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bomb.png");
    // 5000 x 5000 of one colour: tiny on disk, 75 MB decoded.
    image::GrayImage::new(5000, 5000).save(&path).unwrap();
    assert!(std::fs::metadata(&path).unwrap().len() < 1024 * 1024);
    let form = Form::new()
        .part("image", file_part(&path, "bomb.png"))
        .part("audio", file_part(&sample("speech_en.wav"), "speech.wav"));
    let body = problem(
        submit(&server, &admin.access, form).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(body["code"], "image_too_large");
}

#[tokio::test]
async fn each_parameter_range_is_a_422_naming_the_field() {
    let server = TestServer::start().await;
    let admin = server.admin().await;
    for (field, value) in [
        ("min_resolution", "500"),
        ("expand_ratio", "0"),
        ("dynamic_scale", "3"),
        ("motion_scale", "0.1"),
        ("seed", "-5"),
        ("lip_sync_offset", "0.3"),
        ("engine", "nope"),
        ("colour", "blue"),
    ] {
        let body = problem(
            submit(
                &server,
                &admin.access,
                form("speech_en.wav", &[(field, value)]),
            )
            .await,
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await;
        assert_eq!(body["errors"][0]["field"], field, "{body}");
    }
    no_jobs(&server, &admin.access).await;
}

/// The request of Sonic's own example, as clients written for Sonic send it.
pub const SONIC_EXAMPLE: &[(&str, &str)] = &[
    ("inference_steps", "25"),
    ("min_resolution", "1024"),
    ("expand_ratio", "0.18"),
    ("dynamic_scale", "1.1"),
    ("motion_scale", "1.05"),
    ("enable_lip_sync_correction", "true"),
    ("lip_sync_offset", "0.03"),
];

#[tokio::test]
async fn sonic_example_request_is_accepted_by_the_builtin_engine_listing_what_it_ignores() {
    let server = TestServer::start().await;
    let admin = server.admin().await;
    let job = submit_ok(&server, &admin.access, form("speech_en.wav", SONIC_EXAMPLE)).await;
    assert_eq!(job["engine"], "builtin");
    assert_eq!(
        job["ignored_parameters"],
        json!(["inference_steps"]),
        "{job}"
    );
    assert_eq!(job["params"]["min_resolution"], 1024);
    assert_eq!(job["params"]["lip_sync_offset"], 0.03);
    let id = job["id"].as_str().unwrap();
    let shown: Value = server
        .client
        .get(server.url(&format!("/v1/videos/{id}")))
        .bearer_auth(&admin.access)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        shown["ignored_parameters"],
        json!(["inference_steps"]),
        "{shown}"
    );
    // Nothing ignored when nothing unused was given.
    let plain = submit_ok(
        &server,
        &admin.access,
        form("speech_en.wav", &[("seed", "7")]),
    )
    .await;
    assert_eq!(plain["ignored_parameters"], json!([]), "{plain}");
}

#[tokio::test]
async fn the_openapi_document_describes_ignored_parameters_and_the_new_refusals() {
    let server = TestServer::start().await;
    let doc: Value = server.get_public("/openapi.json").await;
    let schemas = &doc["components"]["schemas"];
    let ignored = &schemas["JobView"]["properties"]["ignored_parameters"];
    assert_eq!(ignored["type"], "array", "{ignored}");
    assert!(ignored["description"]
        .as_str()
        .unwrap()
        .contains("does not use"));
    assert!(schemas["JobView"]["required"]
        .as_array()
        .unwrap()
        .contains(&json!("ignored_parameters")));
    let responses = &doc["paths"]["/v1/videos"]["post"]["responses"];
    assert!(responses["202"]["description"]
        .as_str()
        .unwrap()
        .contains("ignored_parameters"));
    assert!(responses["422"]["description"]
        .as_str()
        .unwrap()
        .contains("face_too_small"));
}

#[tokio::test]
async fn ignored_parameters_are_still_checked_against_their_range_and_the_plan() {
    let server = TestServer::start().await;
    let admin = server.admin().await;
    let body = problem(
        submit(
            &server,
            &admin.access,
            form("speech_en.wav", &[("inference_steps", "101")]),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(body["code"], "validation_failed");
    assert_eq!(body["errors"][0]["field"], "inference_steps");
    // The admin's pro plan allows 50 steps: 60 is over the plan even on an engine that ignores it.
    let body = problem(
        submit(
            &server,
            &admin.access,
            form("speech_en.wav", &[("inference_steps", "60")]),
        )
        .await,
        StatusCode::FORBIDDEN,
    )
    .await;
    assert_eq!(body["code"], "plan_limit");
    assert_eq!(body["errors"][0]["field"], "max_inference_steps");
    no_jobs(&server, &admin.access).await;
}

#[tokio::test]
async fn plan_limits_are_403_naming_the_limit_and_plan() {
    let server = TestServer::start_with(Backend::Sqlite, |c| c.simulated_engine_ms = 50).await;
    let admin = server.admin().await;
    let tenant = server.create_tenant(&admin.access, "cheap", "free").await;
    server
        .create_user(&admin.access, "frugal", "user", Some(&tenant))
        .await;
    let user = server.login("frugal", USER_PASSWORD).await;
    for (fields, limit) in [
        (vec![("min_resolution", "1024")], "max_resolution"),
        (
            vec![("inference_steps", "40"), ("engine", "simulated")],
            "max_inference_steps",
        ),
        (
            vec![("enable_lip_sync_correction", "true")],
            "allow_lip_sync_correction",
        ),
    ] {
        let body = problem(
            submit(&server, &user.access, form("speech_en.wav", &fields)).await,
            StatusCode::FORBIDDEN,
        )
        .await;
        assert_eq!(body["code"], "plan_limit");
        assert_eq!(body["errors"][0]["field"], limit);
        assert!(body["detail"].as_str().unwrap().contains("free"), "{body}");
    }
    no_jobs(&server, &user.access).await;
    // The pro platform admin may.
    submit_ok(
        &server,
        &admin.access,
        form("speech_en.wav", &[("min_resolution", "1024")]),
    )
    .await;
}

#[tokio::test]
async fn a_downgraded_tenant_gets_the_new_limits_at_its_next_submission_with_its_old_token() {
    downgraded_tenant_gets_the_new_limits(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_downgraded_tenant_gets_the_new_limits_at_once_on_postgres() {
    downgraded_tenant_gets_the_new_limits(Backend::Postgres).await;
}

async fn downgraded_tenant_gets_the_new_limits(backend: Backend) {
    let server = TestServer::start_with(backend, |c| c.simulated_engine_ms = 50).await;
    let admin = server.admin().await;
    let tenant = server
        .create_tenant(&admin.access, "shrinking", "pro")
        .await;
    server
        .create_user(&admin.access, "paula", "user", Some(&tenant))
        .await;
    // Her token says `pro`, and stays valid through the downgrade.
    let user = server.login("paula", USER_PASSWORD).await;
    assert_eq!(decode_part(&user.access, 1)["plan"], "pro");
    let fields = [("min_resolution", "1024"), ("engine", "simulated")];
    let job = submit_ok(&server, &user.access, form("speech_en.wav", &fields)).await;
    let events = follow(&server, &user.access, job["id"].as_str().unwrap()).await;
    assert_eq!(events.last().unwrap()["status"], "succeeded");
    let response = server
        .patch_json(
            &format!("/v1/tenants/{tenant}"),
            &admin.access,
            json!({ "plan": "free" }),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body = problem(
        submit(&server, &user.access, form("speech_en.wav", &fields)).await,
        StatusCode::FORBIDDEN,
    )
    .await;
    assert_eq!(body["code"], "plan_limit");
    assert_eq!(body["errors"][0]["field"], "max_resolution");
    assert!(body["detail"].as_str().unwrap().contains("free"), "{body}");
    // An upgrade takes effect as fast.
    server
        .patch_json(
            &format!("/v1/tenants/{tenant}"),
            &admin.access,
            json!({ "plan": "pro" }),
        )
        .await;
    submit_ok(&server, &user.access, form("speech_en.wav", &fields)).await;
}

#[tokio::test]
async fn concurrency_quota_is_429_with_retry_after() {
    let server = TestServer::start_with(Backend::Sqlite, |c| c.workers = 0).await;
    let admin = server.admin().await;
    let tenant = server.create_tenant(&admin.access, "small", "free").await;
    server
        .create_user(&admin.access, "one-at-a-time", "user", Some(&tenant))
        .await;
    let user = server.login("one-at-a-time", USER_PASSWORD).await;
    let first = submit_ok(&server, &user.access, form("speech_en.wav", &[])).await;
    let response = submit(&server, &user.access, form("speech_en.wav", &[])).await;
    assert!(response.headers().contains_key("retry-after"));
    let body = problem(response, StatusCode::TOO_MANY_REQUESTS).await;
    assert_eq!(body["code"], "quota_exceeded");
    // Cancelling the queued job gives the slot back.
    let cancel = server
        .client
        .post(server.url(&format!(
            "/v1/videos/{}/cancel",
            first["id"].as_str().unwrap()
        )))
        .bearer_auth(&user.access)
        .send()
        .await
        .unwrap();
    assert_eq!(cancel.status(), StatusCode::OK);
    submit_ok(&server, &user.access, form("speech_en.wav", &[])).await;
}

#[tokio::test]
async fn idempotency_key_replays_the_original_job_and_refuses_a_different_request() {
    let server = TestServer::start_with(Backend::Sqlite, |c| c.workers = 0).await;
    let admin = server.admin().await;
    let send = |seed: &'static str| {
        server
            .client
            .post(server.url("/v1/videos"))
            .bearer_auth(&admin.access)
            .header("idempotency-key", "order-42")
            .multipart(form("speech_en.wav", &[("seed", seed)]))
            .send()
    };
    let first = send("1").await.unwrap();
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    let first: Value = first.json().await.unwrap();
    let again = send("1").await.unwrap();
    assert_eq!(again.status(), StatusCode::OK);
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["id"], first["id"]);
    let different = problem(send("2").await.unwrap(), StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(different["code"], "idempotency_key_reused");
    let list: Value = server
        .get("/v1/videos", &admin.access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn a_replay_answers_with_its_job_even_when_the_quota_is_used_up() {
    // A client retrying after a lost response must learn its job, not "quota exceeded" (the job it
    // retries is what uses the quota).
    let server = TestServer::start_with(Backend::Sqlite, |c| c.workers = 0).await;
    let admin = server.admin().await;
    let tenant = server.create_tenant(&admin.access, "retries", "free").await;
    server
        .create_user(&admin.access, "retrier", "user", Some(&tenant))
        .await;
    let user = server.login("retrier", USER_PASSWORD).await;
    let send = |key: &'static str| {
        server
            .client
            .post(server.url("/v1/videos"))
            .bearer_auth(&user.access)
            .header("idempotency-key", key)
            .multipart(form("speech_en.wav", &[("seed", "7")]))
            .send()
    };
    let first = send("retry-1").await.unwrap();
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    let first: Value = first.json().await.unwrap();
    let again = send("retry-1").await.unwrap();
    assert_eq!(again.status(), StatusCode::OK);
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["id"], first["id"]);
    // A new key is a new job, and the free plan's one slot is taken.
    let other = problem(
        send("retry-2").await.unwrap(),
        StatusCode::TOO_MANY_REQUESTS,
    )
    .await;
    assert_eq!(other["code"], "quota_exceeded");
    // The refused key was not kept: once the slot is free it makes a job.
    let cancel = server
        .client
        .post(server.url(&format!(
            "/v1/videos/{}/cancel",
            first["id"].as_str().unwrap()
        )))
        .bearer_auth(&user.access)
        .send()
        .await
        .unwrap();
    assert_eq!(cancel.status(), StatusCode::OK);
    let second = send("retry-2").await.unwrap();
    assert_eq!(second.status(), StatusCode::ACCEPTED);
}

#[tokio::test]
async fn another_tenants_job_is_404_on_every_video_route() {
    let server = TestServer::start_with(Backend::Sqlite, |c| c.workers = 0).await;
    let admin = server.admin().await;
    let other = server.create_tenant(&admin.access, "other", "pro").await;
    server
        .create_user(&admin.access, "outsider", "admin", Some(&other))
        .await;
    let outsider = server.login("outsider", USER_PASSWORD).await;
    let job = submit_ok(&server, &admin.access, form("speech_en.wav", &[])).await;
    let id = job["id"].as_str().unwrap();
    for (method, path) in [
        (reqwest::Method::GET, format!("/v1/videos/{id}")),
        (reqwest::Method::GET, format!("/v1/videos/{id}/events")),
        (reqwest::Method::GET, format!("/v1/videos/{id}/content")),
        (reqwest::Method::POST, format!("/v1/videos/{id}/cancel")),
        (reqwest::Method::DELETE, format!("/v1/videos/{id}")),
    ] {
        let response = server
            .client
            .request(method.clone(), server.url(&path))
            .bearer_auth(&outsider.access)
            .send()
            .await
            .unwrap();
        let body = problem(response, StatusCode::NOT_FOUND).await;
        assert_eq!(body["code"], "not_found", "{method} {path}");
    }
    let list: Value = server
        .get("/v1/videos", &outsider.access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["items"].as_array().unwrap().len(), 0);
    // Untouched.
    let mine: Value = server
        .get(&format!("/v1/videos/{id}"), &admin.access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(mine["status"], "queued");
}

#[tokio::test]
async fn users_see_only_their_own_jobs_and_admins_their_tenants() {
    let server = TestServer::start_with(Backend::Sqlite, |c| c.workers = 0).await;
    let admin = server.admin().await;
    server
        .create_user(&admin.access, "alice", "user", None)
        .await;
    server.create_user(&admin.access, "bob", "user", None).await;
    let alice = server.login("alice", USER_PASSWORD).await;
    let bob = server.login("bob", USER_PASSWORD).await;
    let job = submit_ok(&server, &alice.access, form("speech_en.wav", &[])).await;
    let id = job["id"].as_str().unwrap();
    assert_eq!(
        server
            .get(&format!("/v1/videos/{id}"), &bob.access)
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        server
            .get(&format!("/v1/videos/{id}"), &admin.access)
            .await
            .status(),
        StatusCode::OK
    );
    let queued: Value = server
        .get("/v1/videos?status=queued", &alice.access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(queued["items"][0]["queue_position"], 0);
    let done: Value = server
        .get("/v1/videos?status=succeeded", &alice.access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(done["items"].as_array().unwrap().len(), 0);
    assert_eq!(
        server
            .get("/v1/videos?status=bogus", &alice.access)
            .await
            .status(),
        StatusCode::UNPROCESSABLE_ENTITY
    );
    // Delete removes the record.
    assert_eq!(
        server
            .delete(&format!("/v1/videos/{id}"), &alice.access)
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        server
            .get(&format!("/v1/videos/{id}"), &alice.access)
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn cancelling_a_running_job_stops_it_and_frees_the_worker() {
    let server = TestServer::start_with(Backend::Sqlite, |c| {
        c.job_lease_s = 3;
        c.simulated_engine_ms = 60_000;
        c.default_engine = "simulated".to_owned();
    })
    .await;
    let admin = server.admin().await;
    let job = submit_ok(&server, &admin.access, form("speech_en.wav", &[])).await;
    let id = job["id"].as_str().unwrap().to_owned();
    // Wait for the running event, then cancel.
    wait_until_running(&server, &admin.access, &id).await;
    let cancelled: Value = server
        .client
        .post(server.url(&format!("/v1/videos/{id}/cancel")))
        .bearer_auth(&admin.access)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(cancelled["status"], "cancelled");
    // The worker notices at its next heartbeat and takes the next job; the second job runs.
    let second = submit_ok(&server, &admin.access, form("speech_en.wav", &[])).await;
    let second_id = second["id"].as_str().unwrap();
    wait_until_running(&server, &admin.access, second_id).await;
    let first: Value = server
        .get(&format!("/v1/videos/{id}"), &admin.access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(first["status"], "cancelled");
}

#[tokio::test]
async fn restart_loses_no_queued_or_running_job() {
    let server = TestServer::start_with(Backend::Sqlite, |c| {
        c.simulated_engine_ms = 60_000;
        c.default_engine = "simulated".to_owned();
        c.job_lease_s = 3;
    })
    .await;
    let admin = server.admin().await;
    let running = submit_ok(&server, &admin.access, form("speech_en.wav", &[])).await;
    let running_id = running["id"].as_str().unwrap().to_owned();
    let queued = submit_ok(&server, &admin.access, form("speech_en.wav", &[])).await;
    let queued_id = queued["id"].as_str().unwrap().to_owned();
    wait_until_running(&server, &admin.access, &running_id).await;
    let server = server.restart_with(|c| c.simulated_engine_ms = 100).await;
    let admin = server.admin().await;
    // The running job's lease expires (its worker is gone), it is requeued and both finish.
    for id in [&running_id, &queued_id] {
        let events = follow(&server, &admin.access, id).await;
        assert_eq!(events.last().unwrap()["status"], "succeeded", "{id}");
    }
    let job: Value = server
        .get(&format!("/v1/videos/{running_id}"), &admin.access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(job["status"], "succeeded");
}

#[tokio::test]
async fn engines_are_listed_with_capabilities_and_health() {
    let server = TestServer::start_with(Backend::Sqlite, |c| c.simulated_engine_ms = 10).await;
    let admin = server.admin().await;
    let engines: Value = server
        .get("/v1/engines", &admin.access)
        .await
        .json()
        .await
        .unwrap();
    let builtin = engines["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "builtin")
        .unwrap();
    assert_eq!(builtin["default"], true);
    assert_eq!(builtin["health"]["healthy"], true);
    assert!(builtin["honours"]
        .as_array()
        .unwrap()
        .contains(&json!("dynamic_scale")));
    assert!(!builtin["honours"]
        .as_array()
        .unwrap()
        .contains(&json!("inference_steps")));
}

#[tokio::test]
async fn job_of_a_killed_worker_process_is_requeued_when_its_lease_expires() {
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("SONICGW_DATA_DIR", dir.path().display().to_string()),
        ("SONICGW_SIMULATED_ENGINE_MS", "600000".to_owned()),
        ("SONICGW_DEFAULT_ENGINE", "simulated".to_owned()),
        ("SONICGW_JOB_LEASE_S", "3".to_owned()),
        ("SONICGW_LOG", "warn".to_owned()),
    ];
    let mut doomed = crate::redis_replicas::Replica::start(&env, dir.path().join("doomed.log"));
    let client = reqwest::Client::new();
    let login: Value = client
        .post(format!("{}/v1/auth/token", doomed.base))
        .form(&[
            ("grant_type", "password"),
            ("username", "admin"),
            ("password", ADMIN_PASSWORD),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = login["access_token"].as_str().unwrap().to_owned();
    let created: Value = client
        .post(format!("{}/v1/videos", doomed.base))
        .bearer_auth(&token)
        .multipart(form("speech_en.wav", &[]))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let job: Value = client
            .get(format!("{}/v1/videos/{id}", doomed.base))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if job["status"] == "running" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "job never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    doomed.kill();

    let server = TestServer::start_on(dir, |c| {
        c.simulated_engine_ms = 100;
        c.default_engine = "simulated".to_owned();
        c.job_lease_s = 3;
    })
    .await;
    let admin = server.admin().await;
    let events = follow(&server, &admin.access, &id).await;
    assert_eq!(events.last().unwrap()["status"], "succeeded");
}

#[tokio::test]
async fn demo_command_writes_a_playable_mp4() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("demo.mp4");
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_sonicgw"))
        .args(["demo", "--out"])
        .arg(&out)
        .env("SONICGW_LOG", "warn")
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("video written to"), "{stdout}");
    let probe = ffprobe(&out).await;
    let streams = probe["streams"].as_array().unwrap();
    assert!(streams.iter().any(|s| s["codec_name"] == "h264"));
    assert!(streams.iter().any(|s| s["codec_name"] == "aac"));
}

#[tokio::test]
async fn demo_shows_only_its_own_progress_unless_verbose() {
    let dir = tempfile::tempdir().unwrap();
    let run = |verbose: bool| {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_sonicgw"));
        command
            .args(["demo", "--out"])
            .arg(dir.path().join(format!("demo-{verbose}.mp4")))
            .env_remove("SONICGW_LOG");
        if verbose {
            command.arg("--verbose");
        }
        command.output()
    };
    let quiet = run(false).await.unwrap();
    assert!(quiet.status.success());
    let (stdout, stderr) = (
        String::from_utf8_lossy(&quiet.stdout),
        String::from_utf8_lossy(&quiet.stderr),
    );
    // The demo's own lines, and no server log line anywhere.
    assert!(
        stdout.contains("queued job") && stdout.contains("video written to"),
        "{stdout}"
    );
    for log_level in ["INFO", "WARN", "DEBUG"] {
        assert!(!stderr.contains(log_level), "{stderr}");
        assert!(!stdout.contains(log_level), "{stdout}");
    }
    let verbose = run(true).await.unwrap();
    assert!(verbose.status.success());
    let stderr = String::from_utf8_lossy(&verbose.stderr);
    assert!(stderr.contains("INFO"), "{stderr}");
}

#[tokio::test]
async fn job_is_traced_from_claim_through_the_engine_to_its_ffmpeg_process() {
    let server = TestServer::start().await;
    let admin = server.admin().await;
    let traces = Traces::capture();
    let created = submit_ok(&server, &admin.access, form("speech_en.wav", &[])).await;
    let id = &created["id"];
    let events = follow(&server, &admin.access, id.as_str().unwrap()).await;
    assert_eq!(events.last().unwrap()["status"], "succeeded");
    let within = Duration::from_secs(10);

    let claim = traces
        .wait_closed("worker.claim", "job_id", id, within)
        .await;
    assert_eq!(claim["span"]["engine"], "builtin");
    assert_eq!(claim["span"]["attempt"], 1);
    let worker = &claim["span"]["worker_id"];
    assert!(worker.as_str().is_some_and(|w| !w.is_empty()), "{claim}");
    let run = traces.wait_closed("job.run", "job_id", id, within).await;
    assert_eq!(&run["span"]["worker_id"], worker);
    assert_eq!(run["span"]["engine"], "builtin");
    assert_eq!(run["span"]["attempt"], 1);
    assert_eq!(run["span"]["outcome"], "succeeded");
    let generate = traces
        .wait_closed("engine.generate", "job_id", id, within)
        .await;
    assert_eq!(generate["span"]["engine"], "builtin");
    assert_eq!(span(&generate, "job.run")["job_id"], *id);
    let encode = traces
        .wait_closed_where(
            "process",
            |line| {
                line["spans"].as_array().is_some_and(|spans| {
                    spans
                        .iter()
                        .any(|s| s["name"] == "engine.generate" && s["job_id"] == *id)
                })
            },
            within,
        )
        .await;
    assert_eq!(encode["span"]["program"], "ffmpeg");
    assert_eq!(encode["span"]["what"], "encode");
    assert_eq!(encode["span"]["outcome"], "success");

    let metrics = reqwest::get(format!("http://{}/metrics", server.metrics_addr.unwrap()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let labels = r#"{program="ffmpeg",what="encode",outcome="success""#;
    for series in [
        "ffmpeg_processes_total",
        "ffmpeg_process_duration_seconds_bucket",
    ] {
        assert!(
            metrics.contains(&format!("{series}{labels}")),
            "{series}: {metrics}"
        );
    }
}

#[tokio::test]
async fn signed_link_signature_never_reaches_the_logs() {
    let server = TestServer::start_with(Backend::Sqlite, |c| {
        c.simulated_engine_ms = 20;
        c.default_engine = "simulated".to_owned();
    })
    .await;
    let admin = server.admin().await;
    let created = submit_ok(&server, &admin.access, form("speech_en.wav", &[])).await;
    let id = created["id"].as_str().unwrap();
    follow(&server, &admin.access, id).await;
    let job: Value = server
        .get(&format!("/v1/videos/{id}"), &admin.access)
        .await
        .json()
        .await
        .unwrap();
    let url = job["result"]["url"].as_str().unwrap().to_owned();
    let sig = url.split_once("sig=").unwrap().1.to_owned();

    let traces = Traces::capture();
    let played = server
        .client
        .get(server.url(&url))
        .header("x-request-id", "trace-link-1")
        .send()
        .await
        .unwrap();
    assert_eq!(played.status(), StatusCode::OK);
    let tampered = server
        .client
        .get(server.url(&url.replace("sig=", "sig=A")))
        .header("x-request-id", "trace-link-2")
        .send()
        .await
        .unwrap();
    assert_eq!(tampered.status(), StatusCode::FORBIDDEN);

    let requests = traces.events_where("request", |line| {
        in_request(line, "trace-link-1") || in_request(line, "trace-link-2")
    });
    assert_eq!(requests.len(), 2, "{}", traces.text());
    for request in &requests {
        assert_eq!(request["fields"]["route"], "/v1/files/videos/{file}");
    }
    let text = traces.text();
    for leak in ["sig=", sig.as_str(), "expires="] {
        assert!(!text.contains(leak), "{leak} was logged:\n{text}");
    }
}

#[tokio::test]
async fn platform_admins_see_each_jobs_tenant_and_tenants_do_not() {
    let server = TestServer::start_with(Backend::Sqlite, |c| c.simulated_engine_ms = 50).await;
    let admin = server.admin().await;
    let tenant = server.create_tenant(&admin.access, "acme", "pro").await;
    server
        .create_user(&admin.access, "ann", "admin", Some(&tenant))
        .await;
    let ann = server.login("ann", USER_PASSWORD).await;
    let job = submit_ok(
        &server,
        &ann.access,
        form("speech_en.wav", &[("engine", "simulated")]),
    )
    .await;
    let id = job["id"].as_str().unwrap();
    assert!(job.get("tenant_id").is_none(), "{job}");
    let own: Value = server
        .get(&format!("/v1/videos/{id}"), &ann.access)
        .await
        .json()
        .await
        .unwrap();
    assert!(own.get("tenant_id").is_none(), "{own}");
    let listed: Value = server
        .get("/v1/videos", &admin.access)
        .await
        .json()
        .await
        .unwrap();
    let seen = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["id"] == id)
        .expect("platform admins list every tenant's jobs");
    assert_eq!(seen["tenant_id"], tenant.as_str());
}

/// An upload whose body stops arriving holds scratch disk: a user may have 4 arriving at once, the
/// fifth is refused before its body is read, and a slot comes back when its connection goes.
#[tokio::test]
async fn a_user_has_at_most_four_uploads_arriving_at_once() {
    use tokio::io::AsyncWriteExt as _;
    let server = TestServer::start().await;
    let admin = server.admin().await;
    let stalled_upload = || async {
        let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        let head = format!(
            "POST /v1/videos HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
             Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 10000000\r\n\r\n\
             --b\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n\r\n",
            server.addr, admin.access
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(&[0u8; 64 * 1024]).await.unwrap();
        stream
    };
    let mut stalled = Vec::new();
    for _ in 0..4 {
        stalled.push(stalled_upload().await);
    }
    // The server has read the stalled bodies' start by the time a full submission is answered...
    let refused = |response: reqwest::Response| async move {
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        (status, body["code"].as_str().unwrap_or_default().to_owned())
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let response = server
            .client
            .post(server.url("/v1/videos"))
            .bearer_auth(&admin.access)
            .multipart(form("speech_en.mp3", &[]))
            .send()
            .await
            .unwrap();
        let (status, code) = refused(response).await;
        if status == StatusCode::TOO_MANY_REQUESTS && code == "too_many_uploads" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never refused: {status} {code}"
        );
    }
    // ...and gives a slot back once one of them is gone.
    drop(stalled.pop());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let response = server
            .client
            .post(server.url("/v1/videos"))
            .bearer_auth(&admin.access)
            .multipart(form("speech_en.mp3", &[]))
            .send()
            .await
            .unwrap();
        if response.status() == StatusCode::ACCEPTED {
            break;
        }
        let (status, code) = refused(response).await;
        assert_eq!(code, "too_many_uploads", "{status}");
        assert!(
            std::time::Instant::now() < deadline,
            "the slot never came back"
        );
    }
}
