//! The `sonic` engine over a pool of ComfyUI servers: one prompt per server at a time with the
//! backlog kept in the gateway's fair queue, health checks that keep jobs off a server missing a
//! node, failover when a server dies mid-job, and a cancelled prompt keeping its server busy until
//! ComfyUI has stopped it.

use std::time::Duration;

use serde_json::Value;

use crate::fake_comfyui::{FakeComfy, Mode};
use crate::helpers::*;
use crate::tcp_proxy::TcpProxy;
use crate::videos::{follow, form, submit_ok};

async fn pool_server(
    urls: Vec<String>,
    tweak: impl FnOnce(&mut sonicgw::config::Config),
) -> TestServer {
    TestServer::start_with(Backend::Sqlite, move |c| {
        c.comfyui_urls = urls;
        c.comfyui_health_interval_s = 1;
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

async fn instances(server: &TestServer, token: &str) -> Vec<Value> {
    let engines: Value = server.get("/v1/engines", token).await.json().await.unwrap();
    engines["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "sonic")
        .expect("the sonic engine is listed")["instances"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Polls the API until `done` holds (bounded).
async fn eventually<F, Fut>(what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let wait = async {
        while !done().await {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), wait)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for: {what}"));
}

#[tokio::test]
async fn the_backlog_waits_in_the_gateway_and_jobs_spread_over_free_instances() {
    let (a, b) = (FakeComfy::start().await, FakeComfy::start().await);
    for fake in [&a, &b] {
        fake.set_mode(Mode::Slow(Duration::from_millis(400)));
    }
    let server = pool_server(vec![a.url.clone(), b.url.clone()], |_| {}).await;
    let admin = server.admin().await;
    let mut ids = Vec::new();
    // The admin's plan allows 4 jobs at a time.
    for seed in 0..4 {
        let created = submit_ok(
            &server,
            &admin.access,
            form("speech_en.wav", &[("seed", &seed.to_string())]),
        )
        .await;
        ids.push(created["id"].as_str().unwrap().to_owned());
    }
    // While two run, the other two are still queued in the gateway, not inside ComfyUI.
    eventually("two jobs running", || async {
        let mut running = 0;
        for id in &ids {
            running += usize::from(job(&server, &admin.access, id).await["status"] == "running");
        }
        running == 2
    })
    .await;
    for id in &ids {
        let events = follow(&server, &admin.access, id).await;
        assert_eq!(events.last().unwrap()["status"], "succeeded");
    }
    for fake in [&a, &b] {
        let mut runs = fake.timeline();
        runs.sort_by_key(|r| r.1);
        for pair in runs.windows(2) {
            assert!(pair[1].1 >= pair[0].2, "one prompt at a time per server");
        }
    }
    assert_eq!(a.peak_in_flight(), 1, "ComfyUI never holds a backlog");
    assert_eq!(b.peak_in_flight(), 1, "ComfyUI never holds a backlog");
    assert_eq!(a.received().len() + b.received().len(), 4);
    assert!(
        !a.received().is_empty() && !b.received().is_empty(),
        "both instances were used"
    );
    let seen = instances(&server, &admin.access).await;
    let done: u64 = seen.iter().map(|i| i["jobs_done"].as_u64().unwrap()).sum();
    assert_eq!(done, 4, "{seen:?}");
    for instance in &seen {
        assert_eq!(instance["healthy"], true, "{instance}");
        assert_eq!(instance["busy"], 0, "{instance}");
        assert_eq!(instance["comfyui_version"], "0.3.65");
        assert!(instance["vram_total_bytes"].as_u64().unwrap() > 0);
        assert!(instance["seconds_per_video_second"].as_f64().unwrap() > 0.0);
    }
}

#[tokio::test]
async fn an_instance_missing_a_node_is_unhealthy_and_gets_no_jobs() {
    let (broken, good) = (FakeComfy::start().await, FakeComfy::start().await);
    broken.remove_node("SONICSampler");
    let server = pool_server(vec![broken.url.clone(), good.url.clone()], |_| {}).await;
    let admin = server.admin().await;
    for seed in 0..2 {
        let created = submit_ok(
            &server,
            &admin.access,
            form("speech_en.wav", &[("seed", &seed.to_string())]),
        )
        .await;
        let events = follow(&server, &admin.access, created["id"].as_str().unwrap()).await;
        assert_eq!(events.last().unwrap()["status"], "succeeded");
    }
    assert!(
        broken.received().is_empty(),
        "no prompt went to the broken instance"
    );
    assert_eq!(good.received().len(), 2);
    let seen = instances(&server, &admin.access).await;
    assert_eq!(seen[0]["healthy"], false);
    let error = seen[0]["last_error"].as_str().unwrap();
    assert!(error.contains("SONICSampler is not installed"), "{error}");
    assert!(seen[0]["url"]
        .as_str()
        .unwrap()
        .starts_with("http://127.0.0.1"));

    // A tenant's user sees the instances' state, not their addresses or errors.
    let tenant = server.create_tenant(&admin.access, "acme", "pro").await;
    server
        .create_user(&admin.access, "carol", "user", Some(&tenant))
        .await;
    let carol = server.login_in("carol", USER_PASSWORD, Some("acme")).await;
    let seen = instances(&server, &carol.access).await;
    assert_eq!(seen[0]["healthy"], false);
    assert!(seen[0].get("url").is_none() && seen[0].get("last_error").is_none());
}

#[tokio::test]
async fn a_job_whose_instance_dies_mid_run_runs_again_on_another() {
    let (doomed, spare) = (FakeComfy::start().await, FakeComfy::start().await);
    doomed.set_mode(Mode::Slow(Duration::from_secs(120)));
    let proxy = TcpProxy::start(&doomed.url).await;
    // Only the doomed instance is healthy at first, so the job starts there.
    spare.remove_node("SONIC_PreData");
    let server = pool_server(vec![proxy.url.clone(), spare.url.clone()], |_| {}).await;
    let admin = server.admin().await;
    let created = submit_ok(&server, &admin.access, form("speech_en.wav", &[])).await;
    let id = created["id"].as_str().unwrap();
    eventually("the prompt runs on the first instance", || async {
        doomed.running().is_some()
    })
    .await;
    spare.restore_nodes();
    proxy.kill();
    let events = follow(&server, &admin.access, id).await;
    let last = events.last().unwrap();
    assert_eq!(last["status"], "succeeded", "{last}");
    assert_eq!(doomed.received().len(), 1, "the first attempt ran there");
    assert_eq!(spare.received().len(), 1, "the job ran again on the spare");
    let seen = instances(&server, &admin.access).await;
    assert_eq!(seen[0]["healthy"], false, "{:?}", seen[0]);
    assert!(seen[0]["last_error"]
        .as_str()
        .unwrap()
        .contains("unreachable"));

    // It comes back when it recovers.
    doomed.set_mode(Mode::Works);
    proxy.revive().await;
    eventually("the first instance is healthy again", || async {
        instances(&server, &admin.access).await[0]["healthy"] == true
    })
    .await;
}

#[tokio::test]
async fn a_job_runs_out_of_attempts_when_every_instance_dies_under_it() {
    let fake = FakeComfy::start().await;
    fake.set_mode(Mode::Slow(Duration::from_secs(120)));
    let proxy = TcpProxy::start(&fake.url).await;
    let server = pool_server(vec![proxy.url.clone()], |c| c.job_max_attempts = 1).await;
    let admin = server.admin().await;
    let created = submit_ok(&server, &admin.access, form("speech_en.wav", &[])).await;
    let id = created["id"].as_str().unwrap();
    eventually("the prompt runs", || async { fake.running().is_some() }).await;
    proxy.kill();
    let events = follow(&server, &admin.access, id).await;
    let last = events.last().unwrap();
    assert_eq!(last["status"], "failed", "{last}");
    assert_eq!(last["error"]["code"], "engine_unavailable", "{last}");
    assert!(
        last["error"].get("detail").is_some(),
        "a platform admin sees the detail: {last}"
    );
}

#[tokio::test]
async fn a_cancelled_prompt_keeps_its_instance_busy_until_comfyui_stops_it() {
    let fake = FakeComfy::start().await;
    fake.set_mode(Mode::Slow(Duration::from_secs(120)));
    // Like Sonic's sampler: the interrupt lands only when the running node returns.
    fake.set_interrupt_delay(Duration::from_millis(1500));
    let server = pool_server(vec![fake.url.clone()], |_| {}).await;
    let admin = server.admin().await;
    let first = submit_ok(&server, &admin.access, form("speech_en.wav", &[])).await;
    let first = first["id"].as_str().unwrap();
    eventually("the first prompt runs", || async {
        fake.running().is_some()
    })
    .await;
    let response = server
        .client
        .post(server.url(&format!("/v1/videos/{first}/cancel")))
        .bearer_auth(&admin.access)
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    fake.set_mode(Mode::Works);
    let second = submit_ok(&server, &admin.access, form("speech_en.wav", &[])).await;
    let events = follow(&server, &admin.access, second["id"].as_str().unwrap()).await;
    assert_eq!(events.last().unwrap()["status"], "succeeded");
    let (interrupts, _) = fake.cancellations();
    assert!(!interrupts.is_empty(), "the running prompt was interrupted");
    assert_eq!(
        fake.peak_in_flight(),
        1,
        "the next prompt was sent only after the interrupted one stopped"
    );
}

#[tokio::test]
async fn a_prompt_lost_to_a_comfyui_restart_runs_again() {
    let fake = FakeComfy::start().await;
    fake.set_mode(Mode::Slow(Duration::from_secs(120)));
    let server = pool_server(vec![fake.url.clone()], |_| {}).await;
    let admin = server.admin().await;
    let created = submit_ok(&server, &admin.access, form("speech_en.wav", &[])).await;
    let id = created["id"].as_str().unwrap();
    eventually("the prompt runs", || async { fake.running().is_some() }).await;
    fake.set_mode(Mode::Works);
    fake.restart();
    let events = follow(&server, &admin.access, id).await;
    let last = events.last().unwrap();
    assert_eq!(last["status"], "succeeded", "{last}");
    assert_eq!(
        fake.received().len(),
        2,
        "submitted again after the restart"
    );
}

#[tokio::test]
async fn a_job_cancelled_while_its_prompt_waits_in_comfyuis_queue_is_deleted_there() {
    let fake = FakeComfy::start().await;
    fake.set_mode(Mode::Slow(Duration::from_secs(120)));
    // Two prompts per server: the second waits in ComfyUI's own queue.
    let server = pool_server(vec![fake.url.clone()], |c| c.comfyui_max_in_flight = 2).await;
    let admin = server.admin().await;
    submit_ok(&server, &admin.access, form("speech_en.wav", &[])).await;
    let waiting = submit_ok(&server, &admin.access, form("speech_en.wav", &[])).await;
    let id = waiting["id"].as_str().unwrap();
    eventually("both prompts reached ComfyUI", || async {
        fake.received().len() == 2
    })
    .await;
    let running = fake.running().expect("the first prompt runs");
    let response = server
        .client
        .post(server.url(&format!("/v1/videos/{id}/cancel")))
        .bearer_auth(&admin.access)
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    eventually(
        "the waiting prompt is deleted from ComfyUI's queue",
        || async { !fake.cancellations().1.is_empty() },
    )
    .await;
    let (_, deletes) = fake.cancellations();
    let deleted = deletes[0]["delete"][0].as_str().unwrap().to_owned();
    assert_ne!(
        deleted, running,
        "the running prompt is not the one deleted"
    );
    assert_eq!(
        fake.running().as_deref(),
        Some(running.as_str()),
        "the other job runs on"
    );
}
