//! The `sonic` engine end to end against the fake ComfyUI: a whole job, the workflow it sends,
//! failures as actionable codes with the quota given back, parameters Sonic cannot honour, and
//! cancellation of the prompt.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::fake_comfyui::{FakeComfy, Mode};
use crate::helpers::*;
use crate::videos::{ffprobe, follow, form, problem, submit, submit_ok};

async fn sonic_server(
    fake: &FakeComfy,
    tweak: impl FnOnce(&mut sonicgw::config::Config),
) -> TestServer {
    let url = fake.url.clone();
    TestServer::start_with(Backend::Sqlite, move |c| {
        c.comfyui_urls = vec![url];
        tweak(c);
    })
    .await
}

async fn job(server: &TestServer, token: &str, id: &str) -> Value {
    server
        .get(&format!("/v1/videos/{id}"), token)
        .await
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn sonic_job_makes_an_mp4_as_long_as_the_audio_from_the_workflow_it_sends() {
    let fake = FakeComfy::start().await;
    let server = sonic_server(&fake, |_| {}).await;
    let admin = server.admin().await;
    let created = submit_ok(
        &server,
        &admin.access,
        form(
            "speech_en.wav",
            &[("seed", "4242"), ("inference_steps", "12")],
        ),
    )
    .await;
    let id = created["id"].as_str().unwrap();
    let audio_duration = created["input"]["audio"]["duration"].as_f64().unwrap();
    let frames = created["output"]["frames"].as_u64().unwrap();
    let events = follow(&server, &admin.access, id).await;
    let last = events.last().unwrap();
    assert_eq!(last["status"], "succeeded", "{last}");
    let seen = job(&server, &admin.access, id).await;
    assert_eq!(
        seen["engine"], "sonic",
        "sonic is the default engine: {seen}"
    );

    let prompts = fake.received();
    assert_eq!(prompts.len(), 1);
    let prompt = &prompts[0];
    let duration = prompt["5"]["inputs"]["duration"].as_f64().unwrap();
    assert!(
        duration >= audio_duration && duration - audio_duration < 0.002,
        "duration sent {duration} for {audio_duration} s of audio"
    );
    assert_eq!(prompt["6"]["inputs"]["fps"], 25.0);
    assert_eq!(prompt["6"]["inputs"]["seed"], 4242);
    assert_eq!(prompt["6"]["inputs"]["inference_steps"], 12);
    assert_eq!(prompt["2"]["inputs"]["use_interframe"], true);
    assert_eq!(prompt["1"]["inputs"]["ckpt_name"], "svd_xt_1_1.safetensors");

    let response = server
        .get(&format!("/v1/videos/{id}/content"), &admin.access)
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.mp4");
    std::fs::write(&path, response.bytes().await.unwrap()).unwrap();
    let probe = ffprobe(&path).await;
    let streams = probe["streams"].as_array().unwrap();
    let video = streams.iter().find(|s| s["codec_type"] == "video").unwrap();
    let audio = streams.iter().find(|s| s["codec_type"] == "audio").unwrap();
    assert_eq!(video["codec_name"], "h264");
    assert_eq!(video["pix_fmt"], "yuv420p");
    assert_eq!(video["avg_frame_rate"], "25/1");
    assert_eq!(
        video["nb_read_frames"],
        frames.to_string(),
        "the fake's 2K-1 frames were padded"
    );
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
}

/// The free plan with one video a day: a second submission is accepted only if the failed job's
/// quota came back.
fn one_video_a_day(c: &mut sonicgw::config::Config) {
    let mut free = sonicgw::domain::Plan::free();
    free.videos_per_day = 1;
    c.plans = BTreeMap::from([("free".to_owned(), free)]);
}

#[tokio::test]
async fn comfyui_failures_become_actionable_codes_and_give_the_quota_back() {
    let fake = FakeComfy::start().await;
    let server = sonic_server(&fake, one_video_a_day).await;
    let admin = server.admin().await;
    let tenant = server.create_tenant(&admin.access, "studio", "free").await;
    server
        .create_user(&admin.access, "artist", "user", Some(&tenant))
        .await;
    let user = server.login("artist", USER_PASSWORD).await;
    for (mode, code, says) in [
        (Mode::NodeError, "engine_rejected_workflow", "configuration"),
        (Mode::OutOfMemory, "gpu_out_of_memory", "min_resolution"),
        (Mode::Exception, "engine_failed", "our side"),
    ] {
        fake.set_mode(mode);
        let created = submit_ok(&server, &user.access, form("speech_en.wav", &[])).await;
        let id = created["id"].as_str().unwrap();
        follow(&server, &user.access, id).await;
        let seen = job(&server, &user.access, id).await;
        assert_eq!(seen["status"], "failed", "{seen}");
        assert_eq!(seen["error"]["code"], code, "{mode:?}: {seen}");
        let message = seen["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{message}");
        assert!(
            !message.contains('\n') && !message.contains("127.0.0.1"),
            "{message}"
        );
        assert!(seen["error"].get("detail").is_none(), "{seen}");
        let as_platform = job(&server, &admin.access, id).await;
        let detail = as_platform["error"]["detail"].as_str().unwrap_or_default();
        let expected = match mode {
            Mode::NodeError => "SONICTLoader",
            Mode::OutOfMemory => "OutOfMemoryError",
            _ => "IndexError",
        };
        assert!(detail.contains(expected), "{mode:?}: {detail}");
    }
    // Three failures on a one-a-day plan, and a fourth job is still accepted.
    fake.set_mode(Mode::Works);
    let created = submit_ok(&server, &user.access, form("speech_en.wav", &[])).await;
    let events = follow(&server, &user.access, created["id"].as_str().unwrap()).await;
    assert_eq!(events.last().unwrap()["status"], "succeeded");
    let body = problem(
        submit(&server, &user.access, form("speech_en.wav", &[])).await,
        StatusCode::TOO_MANY_REQUESTS,
    )
    .await;
    assert_eq!(body["code"], "quota_exceeded");
}

#[tokio::test]
async fn with_every_comfyui_unreachable_submissions_are_refused_as_engine_unavailable() {
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let server = TestServer::start_with(Backend::Sqlite, move |c| c.comfyui_urls = vec![url]).await;
    let admin = server.admin().await;
    // Once the first health check has failed, nothing is queued that no server could run.
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let engines: Value = server
                .get("/v1/engines", &admin.access)
                .await
                .json()
                .await
                .unwrap();
            let sonic = &engines["items"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["name"] == "sonic")
                .unwrap()["instances"][0];
            if sonic["checked_at_ms"].is_number() {
                assert_eq!(sonic["healthy"], false, "{sonic}");
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the server was checked");
    let response = submit(&server, &admin.access, form("speech_en.wav", &[])).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["retry-after"], "30");
    let body = problem(response, StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(body["code"], "engine_unavailable");
    assert!(
        !body["detail"].as_str().unwrap().contains("127.0.0.1"),
        "{body}"
    );
    crate::videos::no_jobs(&server, &admin.access).await;
}

#[tokio::test]
async fn motion_scale_is_refused_by_the_sonic_engine() {
    let fake = FakeComfy::start().await;
    let server = sonic_server(&fake, |_| {}).await;
    let admin = server.admin().await;
    let body = problem(
        submit(
            &server,
            &admin.access,
            form("speech_en.wav", &[("motion_scale", "1.5")]),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(body["code"], "unsupported_parameter");
    assert_eq!(body["errors"][0]["field"], "motion_scale");
    assert!(fake.received().is_empty());
}

#[tokio::test]
async fn cancelling_a_sonic_job_interrupts_its_running_prompt() {
    let fake = FakeComfy::start().await;
    fake.set_mode(Mode::Slow(Duration::from_secs(60)));
    let server = sonic_server(&fake, |c| c.job_lease_s = 3).await;
    let admin = server.admin().await;
    let created = submit_ok(&server, &admin.access, form("speech_en.wav", &[])).await;
    let id = created["id"].as_str().unwrap();
    let running = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            if let Some(prompt_id) = fake.running() {
                return prompt_id;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the prompt started");
    let cancelled = server
        .client
        .post(server.url(&format!("/v1/videos/{id}/cancel")))
        .bearer_auth(&admin.access)
        .send()
        .await
        .unwrap();
    assert_eq!(cancelled.status(), StatusCode::OK);
    let entry = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if let Some(entry) = fake.history_of(&running) {
                return entry;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the prompt was interrupted, not run to its end");
    assert_eq!(entry["status"]["status_str"], "error");
    let (interrupts, _) = fake.cancellations();
    assert!(
        interrupts
            .iter()
            .any(|b| b["prompt_id"] == running.as_str()),
        "{interrupts:?}"
    );
}

#[tokio::test]
async fn fake_comfyui_validates_prompts_like_the_server_and_the_client_names_node_and_input() {
    use sonicgw::engines::sonic::client::{ComfyClient, ComfyError};
    use sonicgw::engines::sonic::workflow::{build, JobInputs, Models};
    let fake = FakeComfy::start().await;
    let client = ComfyClient::new(&fake.url, &BTreeMap::new()).unwrap();
    let models = Models {
        checkpoint: "svd_xt_1_1.safetensors".into(),
        unet: "unet.pth".into(),
        dtype: "fp16".into(),
    };
    let png = std::fs::read(crate::videos::sample("face_astronaut.png")).unwrap();
    let image = client.upload("f.png", png, "image/png").await.unwrap();
    let audio = client
        .upload(
            "s.wav",
            std::fs::read(crate::videos::sample("speech_en.wav")).unwrap(),
            "audio/wav",
        )
        .await
        .unwrap();
    let prompt = build(
        &models,
        &JobInputs {
            image: &image.input_name(),
            audio: &audio.input_name(),
            audio_seconds: 7.6,
            min_resolution: 512,
            expand_ratio: 0.5,
            seed: 1,
            inference_steps: 25,
            dynamic_scale: 1.0,
        },
    );
    let refused = |prompt: Value| {
        let client = client.clone();
        async move {
            match client
                .submit(&prompt, "test", &uuid::Uuid::new_v4().to_string())
                .await
            {
                Err(ComfyError::Rejected { summary }) => summary,
                other => panic!("expected a refusal, got {other:?}"),
            }
        }
    };
    let mut missing = prompt.clone();
    missing["5"]["inputs"]
        .as_object_mut()
        .unwrap()
        .remove("duration");
    let summary = refused(missing).await;
    assert!(
        summary.contains("node 5 (SONIC_PreData) input \"duration\""),
        "{summary}"
    );
    let mut text = prompt.clone();
    text["5"]["inputs"]["duration"] = "ten seconds".into();
    assert!(refused(text).await.contains("FLOAT"));
    let mut unknown = prompt.clone();
    unknown["6"]["class_type"] = "SONIC_Inference".into();
    assert!(refused(unknown).await.contains("SONIC_Inference"));
    let mut no_file = prompt.clone();
    no_file["3"]["inputs"]["image"] = "someone-else.png".into();
    assert!(refused(no_file).await.contains("node 3 (LoadImage)"));
    let info: Value = reqwest::get(format!("{}/api/object_info/SONIC_PreData", fake.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        info["SONIC_PreData"]["input"]["required"]["duration"][1]["min"],
        1.0
    );
    // The valid prompt is accepted under our own id.
    let id = uuid::Uuid::new_v4().to_string();
    client.submit(&prompt, "test", &id).await.unwrap();
    let stats = client.system_stats().await.unwrap();
    assert_eq!(stats["devices"][0]["type"], "cuda");
}
