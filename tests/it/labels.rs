//! Labels on every output video, through the real server: the AIGC metadata names the job, the job
//! records its label language, and only platform admins change a tenant's label texts.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::*;
use crate::videos::{ffprobe, follow, form, problem, submit, submit_ok};

/// The AIGC metadata of a job's downloaded video.
pub async fn aigc_of_download(server: &TestServer, token: &str, id: &str) -> Value {
    let response = server.get(&format!("/v1/videos/{id}/content"), token).await;
    assert_eq!(response.status(), StatusCode::OK);
    let bytes = response.bytes().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("video.mp4");
    std::fs::write(&path, &bytes).unwrap();
    let probe = ffprobe(&path).await;
    let aigc = probe["format"]["tags"]["AIGC"]
        .as_str()
        .unwrap_or_else(|| panic!("no AIGC metadata: {probe}"));
    serde_json::from_str(aigc).unwrap()
}

#[tokio::test]
async fn a_builtin_video_carries_the_aigc_metadata_naming_its_job() {
    let server = TestServer::start_with(Backend::Sqlite, |c| {
        c.aigc_producer_id = "示例服务 example-gw".into();
    })
    .await;
    let admin = server.admin().await;
    let created = submit_ok(
        &server,
        &admin.access,
        form("speech_en.wav", &[("label_language", "en")]),
    )
    .await;
    assert_eq!(created["params"]["label_language"], "en");
    let id = created["id"].as_str().unwrap();
    let events = follow(&server, &admin.access, id).await;
    assert_eq!(events.last().unwrap()["status"], "succeeded", "{events:?}");
    let aigc = aigc_of_download(&server, &admin.access, id).await;
    assert_eq!(
        aigc,
        json!({
            "Label": "1",
            "ContentProducer": "示例服务 example-gw",
            "ProduceID": id,
            "ReservedCode1": "",
            "ContentPropagator": "",
            "PropagateID": "",
            "ReservedCode2": "",
        })
    );
}

#[tokio::test]
async fn an_unknown_label_language_is_refused_before_anything_is_queued() {
    let server = TestServer::start().await;
    let admin = server.admin().await;
    let response = submit(
        &server,
        &admin.access,
        form("speech_en.wav", &[("label_language", "fr")]),
    )
    .await;
    let body = problem(response, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(body["errors"][0]["field"], "label_language", "{body}");
}

#[tokio::test]
async fn platform_admins_set_a_tenants_label_texts_and_tenant_admins_read_them() {
    let server = TestServer::start().await;
    let admin = server.admin().await;
    let tenant = server.create_tenant(&admin.access, "acme", "free").await;
    server
        .create_user(&admin.access, "acme-admin", "admin", Some(&tenant))
        .await;
    let tenant_admin = server
        .login_in("acme-admin", USER_PASSWORD, Some("acme"))
        .await;
    let path = format!("/v1/tenants/{tenant}/label");

    let defaults: Value = server
        .get(&path, &tenant_admin.access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        defaults,
        json!({ "zh": "AI生成", "en": "AI-generated", "custom": false })
    );

    let set = server
        .send_json(
            reqwest::Method::PUT,
            &path,
            &admin.access,
            json!({ "zh": "人工智能生成", "en": "Made with AI" }),
        )
        .await;
    assert_eq!(set.status(), StatusCode::OK);
    let seen: Value = server
        .get(&path, &tenant_admin.access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        seen,
        json!({ "zh": "人工智能生成", "en": "Made with AI", "custom": true })
    );

    // A tenant admin cannot change what the label says.
    let refused = server
        .send_json(
            reqwest::Method::PUT,
            &path,
            &tenant_admin.access,
            json!({ "en": "Real footage" }),
        )
        .await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);

    for (body, field) in [
        (json!({ "en": "two\nlines" }), "en"),
        (json!({ "zh": "" }), "zh"),
        (json!({ "zh": "生".repeat(14) }), "zh"),
        (json!({ "en": "rtl\u{202E}gen" }), "en"),
    ] {
        let response = server
            .send_json(reqwest::Method::PUT, &path, &admin.access, body.clone())
            .await;
        let body = problem(response, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(body["errors"][0]["field"], field, "{body}");
    }

    let reset = server
        .send_json(
            reqwest::Method::PUT,
            &path,
            &admin.access,
            json!({ "reset": true }),
        )
        .await;
    assert_eq!(reset.status(), StatusCode::OK);
    assert_eq!(reset.json::<Value>().await.unwrap()["custom"], false);
    let other = server
        .send_json(
            reqwest::Method::PUT,
            "/v1/tenants/00000000-0000-0000-0000-000000000000/label",
            &admin.access,
            json!({ "en": "AI" }),
        )
        .await;
    assert_eq!(other.status(), StatusCode::NOT_FOUND);
}
