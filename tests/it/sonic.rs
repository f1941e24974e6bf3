//! The `sonic` engine end to end against the fake ComfyUI: a whole job, the workflow it sends,
//! failures as actionable codes with the quota given back, parameters Sonic cannot honour,
//! cancellation of the prompt, stages followed over the websocket with `/history` as the fallback,
//! and an operator's own workflow.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::stream::BoxStream;
use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{json, Value};

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
    c.plans
        .entry("free".to_owned())
        .or_insert_with(sonicgw::domain::Plan::free)
        .videos_per_day = 1;
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
async fn motion_scale_is_accepted_and_listed_as_ignored_by_the_sonic_engine() {
    let fake = FakeComfy::start().await;
    let server = sonic_server(&fake, |_| {}).await;
    let admin = server.admin().await;
    let job = submit_ok(
        &server,
        &admin.access,
        form("speech_en.wav", crate::videos::SONIC_EXAMPLE),
    )
    .await;
    assert_eq!(job["engine"], "sonic");
    assert_eq!(job["ignored_parameters"], json!(["motion_scale"]), "{job}");
    let id = job["id"].as_str().unwrap();
    let events = follow(&server, &admin.access, id).await;
    assert_eq!(events.last().unwrap()["status"], "succeeded", "{events:?}");
    assert_eq!(fake.received().len(), 1);
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
    use sonicgw::engines::sonic::workflow::{JobInputs, Models, Workflow};
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
    let prompt = Workflow::builtin(models).build(&JobInputs {
        image: &image.input_name(),
        audio: &audio.input_name(),
        audio_seconds: 7.6,
        min_resolution: 512,
        expand_ratio: 0.5,
        seed: 1,
        inference_steps: 25,
        dynamic_scale: 1.0,
    });
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

/// A job's Server-Sent Events, read one `job` event at a time.
struct JobStream {
    chunks: BoxStream<'static, Vec<u8>>,
    buffer: String,
    /// Every `job` event read so far.
    seen: Vec<Value>,
}

impl JobStream {
    async fn open(server: &TestServer, token: &str, id: &str) -> Self {
        let response = server
            .client
            .get(server.url(&format!("/v1/videos/{id}/events")))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        Self {
            chunks: response
                .bytes_stream()
                .map(|chunk| chunk.unwrap().to_vec())
                .boxed(),
            buffer: String::new(),
            seen: Vec::new(),
        }
    }

    /// The next `job` event, or `None` at `end`.
    async fn next(&mut self) -> Option<Value> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let field = |name: &str| {
                    block
                        .lines()
                        .find_map(|l| l.strip_prefix(name))
                        .unwrap_or("")
                        .to_owned()
                };
                match field("event: ").as_str() {
                    "job" => {
                        let job: Value = serde_json::from_str(&field("data: ")).unwrap();
                        self.seen.push(job.clone());
                        return Some(job);
                    }
                    "end" => return None,
                    _ => continue,
                }
            }
            let chunk = self
                .chunks
                .next()
                .await
                .expect("the stream ends with `end`");
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    /// Reads until the job is in `stage`; panics if it ends first.
    async fn until_stage(&mut self, stage: &str) {
        let reached = async {
            while let Some(job) = self.next().await {
                if job["stage"] == stage {
                    return;
                }
            }
            panic!("the job ended before {stage}: {:?}", self.seen.last());
        };
        tokio::time::timeout(Duration::from_secs(60), reached)
            .await
            .unwrap_or_else(|_| panic!("the job did not reach {stage}"));
    }

    /// Reads to the end; the last job event.
    async fn last(&mut self) -> Value {
        tokio::time::timeout(Duration::from_secs(120), async {
            while self.next().await.is_some() {}
        })
        .await
        .expect("the job ended in time");
        self.seen.last().cloned().unwrap()
    }

    /// The stages seen, each once, in order.
    fn stages(&self) -> Vec<String> {
        let mut stages: Vec<String> = Vec::new();
        for job in &self.seen {
            let stage = job["stage"].as_str().unwrap().to_owned();
            if stages.last() != Some(&stage) {
                stages.push(stage);
            }
        }
        stages
    }
}

#[tokio::test]
async fn sonic_job_shows_the_gpu_stages_in_order_as_comfyui_reports_them() {
    let fake = FakeComfy::start().await;
    fake.set_stepping();
    let server = sonic_server(&fake, |_| {}).await;
    let admin = server.admin().await;
    let created = submit_ok(&server, &admin.access, form("speech_en.wav", &[])).await;
    let id = created["id"].as_str().unwrap();
    let mut events = JobStream::open(&server, &admin.access, id).await;
    // Submitted, but ComfyUI has not started it.
    events.until_stage("queued_on_gpu").await;
    let seen = job(&server, &admin.access, id).await;
    assert_eq!(seen["stage"], "queued_on_gpu", "GET agrees: {seen}");
    // execution_start, then node 1 (ImageOnlyCheckpointLoader).
    fake.step(2);
    events.until_stage("loading_model").await;
    // Nodes 2 to 4 load too; node 5 is SONIC_PreData.
    fake.step(4);
    events.until_stage("generating").await;
    // Node 6 (SONICSampler), then node 7 (CreateVideo).
    fake.step(2);
    events.until_stage("encoding").await;
    fake.run_freely();
    let last = events.last().await;
    assert_eq!(last["status"], "succeeded", "{last}");
    let stages = events.stages();
    let remote = ["queued_on_gpu", "loading_model", "generating", "encoding"];
    let order: Vec<usize> = remote
        .iter()
        .map(|s| stages.iter().position(|seen| seen == s).unwrap())
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{stages:?}");
    assert!(
        stages
            .iter()
            .filter(|s| remote.contains(&s.as_str()))
            .count()
            == remote.len(),
        "no stage twice: {stages:?}"
    );
    let progress: Vec<f64> = events
        .seen
        .iter()
        .map(|j| j["progress"].as_f64().unwrap())
        .collect();
    assert!(
        progress.windows(2).all(|w| w[0] <= w[1]),
        "progress never goes back: {progress:?}"
    );
}

#[tokio::test]
async fn sonic_job_succeeds_through_history_when_websockets_are_refused() {
    let fake = FakeComfy::start().await;
    fake.set_websocket(false);
    let server = sonic_server(&fake, |_| {}).await;
    let admin = server.admin().await;
    let created = submit_ok(&server, &admin.access, form("speech_en.wav", &[])).await;
    let id = created["id"].as_str().unwrap();
    let mut events = JobStream::open(&server, &admin.access, id).await;
    let last = events.last().await;
    assert_eq!(last["status"], "succeeded", "{last}");
    assert!(
        fake.websocket_attempts() >= 1,
        "the engine tried the socket"
    );
    // Without events there is nothing to tell the loaders from the sampler.
    assert!(
        !events.stages().iter().any(|s| s == "loading_model"),
        "{:?}",
        events.stages()
    );
}

#[tokio::test]
async fn sonic_job_succeeds_when_the_websocket_drops_mid_run() {
    let fake = FakeComfy::start().await;
    fake.set_stepping();
    let server = sonic_server(&fake, |_| {}).await;
    let admin = server.admin().await;
    let created = submit_ok(&server, &admin.access, form("speech_en.wav", &[])).await;
    let id = created["id"].as_str().unwrap();
    let mut events = JobStream::open(&server, &admin.access, id).await;
    events.until_stage("queued_on_gpu").await;
    fake.step(6);
    events.until_stage("generating").await;
    let prompt_id = fake.running().expect("the prompt runs");
    assert_eq!(fake.drop_websockets(), 1, "the job's socket was open");
    assert!(fake.history_of(&prompt_id).is_none(), "mid-run");
    fake.run_freely();
    let last = events.last().await;
    assert_eq!(last["status"], "succeeded", "{last}");
    assert!(fake.history_of(&prompt_id).is_some());
}

#[tokio::test]
async fn comfy_client_follows_a_prompt_over_the_websocket_to_its_history() {
    use sonicgw::engines::sonic::client::ComfyClient;
    use sonicgw::engines::sonic::events::ComfyEvent;
    use sonicgw::engines::sonic::follow::{await_prompt, RemoteStage};
    use sonicgw::engines::sonic::outcome::outcome;
    use sonicgw::engines::sonic::workflow::{JobInputs, Models, Workflow};
    let fake = FakeComfy::start().await;
    let client = ComfyClient::new(&format!("{}/api", fake.url), &BTreeMap::new()).unwrap();
    let image = client
        .upload(
            "f.png",
            std::fs::read(crate::videos::sample("face_astronaut.png")).unwrap(),
            "image/png",
        )
        .await
        .unwrap();
    let audio = client
        .upload(
            "s.wav",
            std::fs::read(crate::videos::sample("speech_en.wav")).unwrap(),
            "audio/wav",
        )
        .await
        .unwrap();
    let workflow = Workflow::builtin(Models {
        checkpoint: "svd_xt_1_1.safetensors".into(),
        unet: "unet.pth".into(),
        dtype: "fp16".into(),
    });
    let prompt = workflow.build(&JobInputs {
        image: &image.input_name(),
        audio: &audio.input_name(),
        audio_seconds: 7.6,
        min_resolution: 512,
        expand_ratio: 0.5,
        seed: 1,
        inference_steps: 25,
        dynamic_scale: 1.0,
    });
    let mut events = client.events("test-client").await.unwrap();
    assert_eq!(
        events.next().await,
        Some(ComfyEvent::Status {
            queue_remaining: Some(0)
        }),
        "ComfyUI greets with the queue"
    );
    let prompt_id = uuid::Uuid::new_v4().to_string();
    client
        .submit(&prompt, "test-client", &prompt_id)
        .await
        .unwrap();
    let mut stages = Vec::new();
    // An interval far beyond the test's timeout: only the socket can end the wait in time.
    let entry = tokio::time::timeout(
        Duration::from_secs(60),
        await_prompt(
            &client,
            Some(events),
            &prompt,
            &prompt_id,
            Duration::from_secs(3600),
            |stage| stages.push(stage),
        ),
    )
    .await
    .expect("the socket said the prompt ended")
    .unwrap();
    assert_eq!(
        stages,
        [
            RemoteStage::QueuedOnGpu,
            RemoteStage::LoadingModel,
            RemoteStage::Generating,
            RemoteStage::Encoding
        ]
    );
    let file = outcome(&entry, workflow.output_node()).unwrap();
    assert!(file.filename.ends_with(".mp4"), "{file:?}");
}

#[tokio::test]
async fn comfy_client_events_are_unreachable_when_the_upgrade_is_refused() {
    use sonicgw::engines::sonic::client::{ComfyClient, ComfyError};
    let fake = FakeComfy::start().await;
    fake.set_websocket(false);
    let client = ComfyClient::new(&fake.url, &BTreeMap::new()).unwrap();
    match client.events("test-client").await {
        Err(ComfyError::Unreachable { reason, .. }) => {
            assert!(reason.contains("404"), "{reason}")
        }
        Err(other) => panic!("expected unreachable, got {other}"),
        Ok(_) => panic!("the upgrade was refused"),
    }
    assert_eq!(fake.websocket_attempts(), 1);
}

#[tokio::test]
async fn operators_workflow_template_is_filled_in_and_its_vhs_output_used() {
    let fake = FakeComfy::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("studio-api.json");
    let template = json!({
        "20": {"class_type": "ImageOnlyCheckpointLoader", "inputs": {"ckpt_name": "{{checkpoint}}"}},
        "21": {"class_type": "SONICTLoader",
               "inputs": {"model": ["20", 0], "sonic_unet": "{{unet}}", "ip_audio_scale": 1.1,
                          "use_interframe": true, "dtype": "{{dtype}}"}},
        "22": {"class_type": "LoadImage", "inputs": {"image": "{{image}}"}},
        "23": {"class_type": "LoadAudio", "inputs": {"audio": "{{audio}}"}},
        "24": {"class_type": "SONIC_PreData",
               "inputs": {"clip_vision": ["20", 1], "vae": ["20", 2], "audio": ["23", 0],
                          "image": ["22", 0], "weight_dtype": ["21", 1],
                          "min_resolution": "{{min_resolution}}", "duration": "{{duration}}",
                          "expand_ratio": "{{expand_ratio}}"}},
        "25": {"class_type": "SONICSampler",
               "inputs": {"model": ["21", 0], "data_dict": ["24", 0], "seed": "{{seed}}",
                          "inference_steps": "{{inference_steps}}",
                          "dynamic_scale": "{{dynamic_scale}}", "fps": "{{fps}}"}},
        "26": {"class_type": "VHS_VideoCombine",
               "inputs": {"images": ["25", 0], "audio": ["23", 0], "frame_rate": ["25", 1],
                          "loop_count": 0, "filename_prefix": "studio", "format": "video/h264-mp4",
                          "pingpong": false, "save_output": true}}
    });
    std::fs::write(&path, serde_json::to_vec_pretty(&template).unwrap()).unwrap();
    let file = path.to_str().unwrap().to_owned();
    let server = sonic_server(&fake, move |c| {
        c.sonic_workflow = file;
        c.sonic_dtype = "bf16".into();
    })
    .await;
    let admin = server.admin().await;
    let created = submit_ok(
        &server,
        &admin.access,
        form(
            "speech_en.wav",
            &[
                ("seed", "777"),
                ("inference_steps", "9"),
                ("dynamic_scale", "1.25"),
            ],
        ),
    )
    .await;
    let id = created["id"].as_str().unwrap();
    let audio_duration = created["input"]["audio"]["duration"].as_f64().unwrap();
    let events = follow(&server, &admin.access, id).await;
    let last = events.last().unwrap();
    assert_eq!(last["status"], "succeeded", "{last}");

    let prompts = fake.received();
    assert_eq!(prompts.len(), 1);
    let sent = &prompts[0];
    let ids: Vec<&String> = sent.as_object().unwrap().keys().collect();
    assert_eq!(
        ids,
        ["20", "21", "22", "23", "24", "25", "26"],
        "the template's nodes"
    );
    assert_eq!(sent["20"]["inputs"]["ckpt_name"], "svd_xt_1_1.safetensors");
    assert_eq!(sent["21"]["inputs"]["sonic_unet"], "unet.pth");
    assert_eq!(sent["21"]["inputs"]["dtype"], "bf16");
    assert_eq!(sent["21"]["inputs"]["ip_audio_scale"], 1.1);
    let image = sent["22"]["inputs"]["image"].as_str().unwrap();
    let audio = sent["23"]["inputs"]["audio"].as_str().unwrap();
    assert!(
        image.starts_with("sonicgw-") && image.ends_with("-face.png"),
        "{image}"
    );
    assert!(
        audio.starts_with("sonicgw-") && audio.ends_with("-speech.wav"),
        "{audio}"
    );
    let pre = &sent["24"]["inputs"];
    let duration = pre["duration"].as_f64().unwrap();
    assert!(
        duration >= audio_duration && duration - audio_duration < 0.002,
        "duration sent {duration} for {audio_duration} s of audio"
    );
    assert_eq!(pre["min_resolution"], 512);
    assert_eq!(pre["expand_ratio"], 0.5);
    let sampler = &sent["25"]["inputs"];
    assert_eq!(sampler["seed"], 777);
    assert_eq!(sampler["inference_steps"], 9);
    assert_eq!(sampler["dynamic_scale"], 1.25);
    assert_eq!(sampler["fps"], 25.0);
    assert_eq!(sent["26"]["inputs"]["images"], json!(["25", 0]));
    assert!(!sent.to_string().contains("{{"), "{sent}");

    let response = server
        .get(&format!("/v1/videos/{id}/content"), &admin.access)
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let out = dir.path().join("out.mp4");
    std::fs::write(&out, response.bytes().await.unwrap()).unwrap();
    let probe = ffprobe(&out).await;
    let video = probe["streams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["codec_type"] == "video")
        .unwrap()
        .clone();
    assert_eq!(
        video["nb_read_frames"],
        created["output"]["frames"].as_u64().unwrap().to_string()
    );
}
