//! Videos on object storage, through the HTTP API: job files in S3, downloads streamed from it with
//! ranges and ETags, presigned delivery, links through a CDN, deletion, and the sweeper (orphans and
//! retention) on both backends.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use sonicgw::config::Config;

use crate::helpers::*;
use crate::s3::Bucket;
use crate::videos::{follow, form, problem, submit_ok};

/// Points the server's storage at `bucket` under `prefix`.
fn on_s3(config: &mut Config, bucket: &Bucket, prefix: &str) {
    config.storage_url = bucket.url(prefix);
    config.storage_options = bucket.options();
}

/// Submits the sample and waits for the job to end; returns its view.
async fn finished_job(server: &TestServer, token: &str) -> Value {
    let created = submit_ok(server, token, form("speech_en.wav", &[])).await;
    let id = created["id"].as_str().unwrap().to_owned();
    follow(server, token, &id).await;
    let job: Value = server
        .get(&format!("/v1/videos/{id}"), token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(job["status"], "succeeded", "{job}");
    job
}

#[tokio::test]
async fn job_files_live_in_s3_and_stream_back_with_ranges_and_etags() {
    let bucket = Bucket::create().await;
    let server = TestServer::start_with(Backend::Sqlite, |c| on_s3(c, &bucket, "gw")).await;
    let admin = server.admin().await;
    let job = finished_job(&server, &admin.access).await;
    let id = job["id"].as_str().unwrap();
    let size = job["result"]["bytes"].as_u64().unwrap();

    let keys = bucket.keys().await;
    assert_eq!(keys.len(), 3, "{keys:?}");
    for name in ["audio.wav", "image.png", "video.mp4"] {
        assert!(
            keys.iter()
                .any(|k| k.starts_with("gw/jobs/") && k.ends_with(&format!("/{id}/{name}"))),
            "{name} in {keys:?}"
        );
    }
    assert!(
        !server.dir.path().join("blobs").exists(),
        "nothing is stored on the API server's disk"
    );

    let content = format!("/v1/videos/{id}/content");
    let whole = server.get(&content, &admin.access).await;
    assert_eq!(whole.status(), StatusCode::OK);
    assert_eq!(whole.headers()["cache-control"], "private, max-age=3600");
    let etag = whole.headers()["etag"].to_str().unwrap().to_owned();
    let whole = whole.bytes().await.unwrap();
    assert_eq!(whole.len() as u64, size);
    assert_eq!(&whole[4..8], b"ftyp", "an MP4");

    let ranged = server
        .client
        .get(server.url(&content))
        .bearer_auth(&admin.access)
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
        .get(server.url(&content))
        .bearer_auth(&admin.access)
        .header("range", "bytes=-10")
        .send()
        .await
        .unwrap();
    assert_eq!(tail.bytes().await.unwrap(), whole.slice(whole.len() - 10..));
    let not_modified = server
        .client
        .get(server.url(&content))
        .bearer_auth(&admin.access)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(not_modified.status(), StatusCode::NOT_MODIFIED);

    let link = job["result"]["url"].as_str().unwrap();
    let signed = server.client.get(server.url(link)).send().await.unwrap();
    assert_eq!(signed.status(), StatusCode::OK);
    let cache = signed.headers()["cache-control"]
        .to_str()
        .unwrap()
        .to_owned();
    let max_age: i64 = cache
        .strip_prefix("public, max-age=")
        .and_then(|rest| rest.strip_suffix(", immutable"))
        .unwrap_or_else(|| panic!("{cache}"))
        .parse()
        .unwrap();
    assert!(
        (3500..=3600).contains(&max_age),
        "cached no longer than the link lives: {cache}"
    );
    assert_eq!(signed.bytes().await.unwrap(), whole);

    let deleted = server
        .delete(&format!("/v1/videos/{id}"), &admin.access)
        .await;
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        bucket.keys().await,
        Vec::<String>::new(),
        "deleting a job deletes its objects"
    );
}

#[tokio::test]
async fn presigned_delivery_links_straight_to_the_bucket_for_the_links_lifetime() {
    let bucket = Bucket::create().await;
    let server = TestServer::start_with(Backend::Sqlite, |c| {
        on_s3(c, &bucket, "");
        c.delivery = "presigned".into();
        c.link_ttl_s = 900;
    })
    .await;
    let admin = server.admin().await;
    let job = finished_job(&server, &admin.access).await;
    let id = job["id"].as_str().unwrap();
    let url = job["result"]["url"].as_str().unwrap();
    assert!(
        url.starts_with(&format!("{}/{}/jobs/", bucket.endpoint, bucket.name)),
        "{url}"
    );
    assert!(url.contains("X-Amz-Expires=900"), "{url}");
    let expires =
        sonicgw::time::UnixMillis::parse_rfc3339(job["result"]["expires_at"].as_str().unwrap())
            .unwrap();
    let lifetime = expires.saturating_sub(sonicgw::time::now_ms());
    assert!(lifetime <= Duration::from_secs(900) && lifetime > Duration::from_secs(850));

    let direct = reqwest::get(url).await.unwrap();
    assert_eq!(direct.status(), StatusCode::OK);
    assert_eq!(direct.headers()["content-type"], "video/mp4");
    let direct = direct.bytes().await.unwrap();
    let proxied = server
        .get(&format!("/v1/videos/{id}/content"), &admin.access)
        .await
        .bytes()
        .await
        .unwrap();
    assert_eq!(direct, proxied);
}

#[tokio::test]
async fn links_through_a_cdn_are_absolute_and_shared_by_every_view_within_a_step() {
    let server = TestServer::start_with(Backend::Sqlite, |c| {
        c.public_base_url = "https://cdn.example.com/".into();
    })
    .await;
    let admin = server.admin().await;
    let job = finished_job(&server, &admin.access).await;
    let id = job["id"].as_str().unwrap();
    let url = job["result"]["url"].as_str().unwrap().to_owned();
    let path = url
        .strip_prefix("https://cdn.example.com/v1/files/videos/")
        .map(|rest| format!("/v1/files/videos/{rest}"))
        .unwrap_or_else(|| panic!("{url}"));
    let again: Value = server
        .get(&format!("/v1/videos/{id}"), &admin.access)
        .await
        .json()
        .await
        .unwrap();
    // Views in the same 5-minute step get the same link (the test could straddle a boundary once
    // in 300 s; then the two links differ by exactly one step).
    let expiry = |u: &str| -> i64 {
        u.split("expires=")
            .nth(1)
            .unwrap()
            .split('&')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let (first, second) = (
        expiry(&url),
        expiry(again["result"]["url"].as_str().unwrap()),
    );
    assert!(second == first || second == first + 300, "{first} {second}");
    assert_eq!(first % 300, 0);

    // The CDN forwards the path and query to the gateway.
    let through = server.client.get(server.url(&path)).send().await.unwrap();
    assert_eq!(through.status(), StatusCode::OK);
    assert!(through.headers()["cache-control"]
        .to_str()
        .unwrap()
        .starts_with("public, max-age="));
}

/// Orphans go after the grace period, live jobs stay, and with `retention_days` a finished job's
/// files go once it is older; its video then answers 410.
async fn sweeper_removes_orphans_and_files_past_retention(server: TestServer) {
    let admin = server.admin().await;
    let job = finished_job(&server, &admin.access).await;
    let id = job["id"].as_str().unwrap().to_owned();
    let videos = &server.state().videos;
    let blobs = &videos.blobs;
    let me: Value = server
        .get("/v1/me", &admin.access)
        .await
        .json()
        .await
        .unwrap();
    let tenant = me["tenant"]["id"].as_str().unwrap().to_owned();
    let scratch = tempfile::tempdir().unwrap();
    let source = scratch.path().join("f");
    std::fs::write(&source, b"orphan").unwrap();
    let orphan = format!("jobs/{tenant}/{}/image.png", uuid::Uuid::now_v7());
    blobs.put_file(&orphan, &source).await.unwrap();
    let stray = "jobs/leftover.tmp";
    blobs.put_file(stray, &source).await.unwrap();
    let video = format!("jobs/{tenant}/{id}/video.mp4");

    let now = sonicgw::time::now_ms();
    let report = videos.sweep_storage(now).await.unwrap();
    assert_eq!(
        (report.orphans, report.expired_jobs),
        (0, 0),
        "young objects stay"
    );
    assert!(blobs.head(&orphan).await.unwrap().is_some());

    let report = videos
        .sweep_storage(now.saturating_add(Duration::from_secs(2 * 3600)))
        .await
        .unwrap();
    assert_eq!((report.orphans, report.expired_jobs), (2, 0));
    assert!(blobs.head(&orphan).await.unwrap().is_none());
    assert!(blobs.head(stray).await.unwrap().is_none());
    assert!(
        blobs.head(&video).await.unwrap().is_some(),
        "a live job keeps its files"
    );

    let report = videos
        .sweep_storage(now.saturating_add(Duration::from_secs(2 * 24 * 3600)))
        .await
        .unwrap();
    assert_eq!((report.orphans, report.expired_jobs), (0, 1));
    assert!(blobs.head(&video).await.unwrap().is_none());
    let gone = problem(
        server
            .get(&format!("/v1/videos/{id}/content"), &admin.access)
            .await,
        StatusCode::GONE,
    )
    .await;
    assert_eq!(gone["code"], "video_expired");
    let view: Value = server
        .get(&format!("/v1/videos/{id}"), &admin.access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(view["status"], "succeeded");
    assert!(view["result"].is_null(), "{view}");
}

#[tokio::test]
async fn sweeper_removes_orphans_and_files_past_retention_local() {
    let server = TestServer::start_with(Backend::Sqlite, |c| c.retention_days = Some(1)).await;
    sweeper_removes_orphans_and_files_past_retention(server).await;
}

#[tokio::test]
async fn sweeper_removes_orphans_and_files_past_retention_s3() {
    let bucket = Bucket::create().await;
    let server = TestServer::start_with(Backend::Sqlite, |c| {
        on_s3(c, &bucket, "sweep");
        c.retention_days = Some(1);
    })
    .await;
    sweeper_removes_orphans_and_files_past_retention(server).await;
}

#[tokio::test]
async fn storage_settings_are_checked_at_start() {
    for (toml, why) in [
        ("storage_url = \"ftp://x\"", "file:// or s3://"),
        ("storage_url = \"s3://No_Such/x\"", "bucket"),
        ("delivery = \"presigned\"", "needs S3"),
        ("delivery = \"cdn\"", "proxy or presigned"),
        (
            "public_base_url = \"https://cdn.example.com/videos?x=1\"",
            "origin",
        ),
        ("retention_days = 0", "at least 1"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, toml).unwrap();
        let err = Config::load(Some(&path)).unwrap_err().to_string();
        assert!(err.contains(why), "{toml}: {err}");
    }
}
