//! The OpenAPI document tells the truth: what `scripts/api-fuzz.sh` (schemathesis) found, each pinned
//! here against the real server: answers the document did not list, a schema under the wrong name,
//! and refusals that were plain text instead of problem documents.

use reqwest::{header, StatusCode};
use serde_json::{json, Value};
use sonicgw::audit::AuditContext;

use crate::helpers::*;

async fn document(server: &TestServer) -> Value {
    server.get_public("/openapi.json").await
}

/// The statuses the document lists for one operation.
fn documented(doc: &Value, path: &str, method: &str) -> Vec<String> {
    doc["paths"][path][method]["responses"]
        .as_object()
        .unwrap_or_else(|| panic!("{method} {path} is not documented"))
        .keys()
        .cloned()
        .collect()
}

/// Asserts a problem document with `code`, and that the document lists its status for the operation.
async fn assert_documented_problem(
    doc: &Value,
    (method, path): (&str, &str),
    response: reqwest::Response,
    status: StatusCode,
    code: &str,
) {
    assert_eq!(response.status(), status);
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "application/problem+json"
    );
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["code"], code, "{problem}");
    let listed = documented(doc, path, method);
    assert!(
        listed.contains(&status.as_str().to_owned()),
        "{method} {path} answers {status} but lists {listed:?}"
    );
    let content = &doc["paths"][path][method]["responses"][status.as_str()]["content"];
    assert!(
        content.get("application/problem+json").is_some(),
        "{method} {path} {status}: {content}"
    );
}

#[tokio::test]
async fn healthz_answers_the_schema_the_document_names() {
    let server = TestServer::start().await;
    let doc = document(&server).await;
    let reference = doc["paths"]["/healthz"]["get"]["responses"]["200"]["content"]
        ["application/json"]["schema"]["$ref"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_owned();
    // The engines' health was also called `Health` and replaced this one in the document.
    let schema = &doc["components"]["schemas"][&reference];
    let required: Vec<&str> = schema["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(required, ["status"], "{schema}");
    let health = server.get_public("/healthz").await;
    assert_eq!(health["status"], "ok");
    assert!(doc["components"]["schemas"]["EngineHealth"]["required"]
        .as_array()
        .unwrap()
        .contains(&json!("healthy")));
}

#[tokio::test]
async fn every_secured_operation_lists_its_authentication_and_rate_limit_answers() {
    let server = TestServer::start().await;
    let doc = document(&server).await;
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let responses = operation["responses"].as_object().unwrap();
            for (status, response) in responses {
                let reference = response["content"]["application/json"]["schema"]["$ref"].as_str();
                assert!(
                    reference.is_none_or(|r| !r.ends_with("/Problem")),
                    "{method} {path} {status}: problems are sent as application/problem+json"
                );
            }
            if operation["security"].as_array().is_none_or(Vec::is_empty) {
                continue;
            }
            assert!(responses.contains_key("401"), "{method} {path}");
            // Worker tokens are not rate limited; every user's request is.
            let worker = operation["tags"]
                .as_array()
                .unwrap()
                .contains(&json!("worker"));
            if !worker {
                let limited = responses["429"]["description"].as_str().unwrap_or_default();
                assert!(
                    limited.contains("rate_limited"),
                    "{method} {path}: {limited}"
                );
            }
            checked += 1;
        }
    }
    assert!(checked > 30, "only {checked} secured operations");
}

#[tokio::test]
async fn refusing_to_delete_or_disable_yourself_is_a_documented_conflict() {
    let server = TestServer::start().await;
    let doc = document(&server).await;
    let admin = server.admin().await;
    let me: Value = server
        .get("/v1/me", &admin.access)
        .await
        .json()
        .await
        .unwrap();
    let path = format!("/v1/users/{}", me["id"].as_str().unwrap());
    let deleted = server.delete(&path, &admin.access).await;
    assert_documented_problem(
        &doc,
        ("delete", "/v1/users/{id}"),
        deleted,
        StatusCode::CONFLICT,
        "conflict",
    )
    .await;
    let disabled = server
        .patch_json(&path, &admin.access, json!({ "disabled": true }))
        .await;
    assert_documented_problem(
        &doc,
        ("patch", "/v1/users/{id}"),
        disabled,
        StatusCode::CONFLICT,
        "conflict",
    )
    .await;
}

#[tokio::test]
async fn renaming_a_tenant_to_a_taken_name_is_a_documented_conflict() {
    let server = TestServer::start().await;
    let doc = document(&server).await;
    let admin = server.admin().await;
    let id = server.create_tenant(&admin.access, "acme", "free").await;
    let renamed = server
        .patch_json(
            &format!("/v1/tenants/{id}"),
            &admin.access,
            json!({ "name": "default" }),
        )
        .await;
    assert_documented_problem(
        &doc,
        ("patch", "/v1/tenants/{id}"),
        renamed,
        StatusCode::CONFLICT,
        "already_exists",
    )
    .await;
}

#[tokio::test]
async fn path_parameters_that_are_not_utf8_are_problem_documents() {
    let server = TestServer::start().await;
    let doc = document(&server).await;
    let admin = server.admin().await;
    // `%FF` decodes to a byte that is not UTF-8: axum's own `Path` answered a plain-text 400.
    for (method, path) in [
        ("get", "/v1/videos/{id}"),
        ("get", "/v1/users/{id}"),
        ("get", "/v1/tenants/{id}"),
    ] {
        let response = server
            .get(&path.replace("{id}", "%FF"), &admin.access)
            .await;
        assert_documented_problem(
            &doc,
            (method, path),
            response,
            StatusCode::NOT_FOUND,
            "not_found",
        )
        .await;
    }
}

#[tokio::test]
async fn the_worker_protocol_refuses_bad_requests_with_documented_problems() {
    let server = TestServer::start().await;
    let doc = document(&server).await;
    let created = server
        .state()
        .workers
        .create(&AuditContext::cli(), "contract")
        .await
        .unwrap();
    let token: Value = server
        .client
        .post(server.url("/v1/auth/token"))
        .basic_auth(&created.account.client_id, Some(&created.client_secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = token["access_token"].as_str().unwrap();
    let job = "0190f5a2-7d3c-7a4b-9c1e-2f3a4b5c6d7e";

    // A body that is not JSON: axum's `Json` answered 415 in plain text.
    let not_json = server
        .client
        .post(server.url(&format!("/v1/worker/jobs/{job}/heartbeat")))
        .bearer_auth(token)
        .body("stage=rendering")
        .send()
        .await
        .unwrap();
    assert_documented_problem(
        &doc,
        ("post", "/v1/worker/jobs/{id}/heartbeat"),
        not_json,
        StatusCode::BAD_REQUEST,
        "unsupported_media_type",
    )
    .await;
    // JSON of the wrong shape: a 422 naming the field, not axum's plain text.
    let wrong_shape = server
        .client
        .post(server.url("/v1/worker/presence"))
        .bearer_auth(token)
        .json(&json!({ "engine": 7 }))
        .send()
        .await
        .unwrap();
    assert_documented_problem(
        &doc,
        ("post", "/v1/worker/presence"),
        wrong_shape,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    // A job id that is not a UUID names no job.
    let bad_id = server
        .client
        .post(server.url("/v1/worker/jobs/not-a-job/fail"))
        .bearer_auth(token)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_documented_problem(
        &doc,
        ("post", "/v1/worker/jobs/{id}/fail"),
        bad_id,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    // The input download without its lease header.
    let no_lease = server
        .client
        .get(server.url(&format!("/v1/worker/jobs/{job}/inputs/image")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_documented_problem(
        &doc,
        ("get", "/v1/worker/jobs/{id}/inputs/{name}"),
        no_lease,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
}
