//! What each party learns and how much it can make us write: downloads audited once and as the link
//! holder's, platform staff hidden from tenant admins, event streams bounded per user and ended when
//! their token is revoked or expires.

use std::time::Duration;

use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::*;
use crate::videos::{follow, form, problem, submit_ok};

async fn audit(server: &TestServer, token: &str, query: &str) -> Vec<Value> {
    let page: Value = server
        .get(&format!("/v1/audit?{query}"), token)
        .await
        .json()
        .await
        .unwrap();
    page["items"].as_array().unwrap().clone()
}

#[tokio::test]
async fn signed_link_downloads_are_audited_once_as_the_link_holder() {
    let server = TestServer::start().await;
    let admin = server.admin().await;
    let tenant = server.create_tenant(&admin.access, "studio", "pro").await;
    server
        .create_user(&admin.access, "boss", "admin", Some(&tenant))
        .await;
    server
        .create_user(&admin.access, "creator", "user", Some(&tenant))
        .await;
    let creator = server.login("creator", USER_PASSWORD).await;
    let job = submit_ok(&server, &creator.access, form("speech_en.wav", &[])).await;
    let id = job["id"].as_str().unwrap().to_owned();
    follow(&server, &creator.access, &id).await;
    let job: Value = server
        .get(&format!("/v1/videos/{id}"), &creator.access)
        .await
        .json()
        .await
        .unwrap();
    let url = job["result"]["url"].as_str().unwrap().to_owned();
    for _ in 0..5 {
        let response = server.client.get(server.url(&url)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        response.bytes().await.unwrap();
    }
    let boss = server.login("boss", USER_PASSWORD).await;
    let downloads = audit(&server, &boss.access, "action=video.download").await;
    assert_eq!(downloads.len(), 1, "{downloads:?}");
    let record = &downloads[0];
    assert_eq!(record["actor_kind"], "link_holder");
    assert!(record["actor_user_id"].is_null(), "{record}");
    assert_eq!(record["tenant_id"], tenant.as_str());
    assert_eq!(record["target"], id.as_str());
    assert_eq!(record["reason"], "signed_link");
}

#[tokio::test]
async fn tenant_admins_see_platform_staff_without_their_identity() {
    let server = TestServer::start().await;
    let admin = server.admin().await;
    let tenant = server.create_tenant(&admin.access, "acme", "free").await;
    server
        .create_user(&admin.access, "acme-admin", "admin", Some(&tenant))
        .await;
    // The platform admin acts inside the tenant, from a recognisable client.
    let response = server
        .client
        .post(server.url("/v1/users"))
        .bearer_auth(&admin.access)
        .header("user-agent", "staff-console/1.0")
        .json(
            &json!({ "username": "newhire", "password": USER_PASSWORD, "role": "user",
                        "tenant_id": tenant }),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::CREATED,
        "{:?}",
        response.text().await
    );

    let tenant_admin = server.login("acme-admin", USER_PASSWORD).await;
    let seen = audit(&server, &tenant_admin.access, "action=user.create").await;
    let staff: Vec<&Value> = seen
        .iter()
        .filter(|r| r["actor_kind"] == "platform_staff")
        .collect();
    assert!(!staff.is_empty(), "{seen:?}");
    for record in &staff {
        for hidden in [
            "actor_user_id",
            "actor_tenant_id",
            "client_ip",
            "user_agent",
        ] {
            assert!(record[hidden].is_null(), "{hidden} shown: {record}");
        }
    }
    let text = serde_json::to_string(&seen).unwrap();
    assert!(!text.contains("staff-console"), "{text}");
    let me: Value = server
        .get("/v1/me", &admin.access)
        .await
        .json()
        .await
        .unwrap();
    assert!(!text.contains(me["id"].as_str().unwrap()), "{text}");

    // The platform admin sees the same records with the actor.
    let full = audit(&server, &admin.access, "action=user.create").await;
    assert!(full
        .iter()
        .any(|r| r["actor_user_id"] == me["id"] && r["user_agent"] == "staff-console/1.0"));
}

/// Reads an event stream until its `end` event and the end of the body; returns the end's data.
async fn read_until_end(response: reqwest::Response) -> Value {
    let mut stream = response.bytes_stream();
    let mut buffer = String::new();
    let mut end = None;
    let read = async {
        while let Some(chunk) = stream.next().await {
            buffer.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
            if end.is_none() {
                if let Some(at) = buffer.find("event: end\ndata: ") {
                    let rest = &buffer[at + "event: end\ndata: ".len()..];
                    if let Some(line) = rest.split_once('\n') {
                        end = Some(serde_json::from_str::<Value>(line.0).unwrap());
                    }
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("the stream ended in time");
    end.expect("an end event")
}

async fn open_stream(server: &TestServer, token: &str, id: &str) -> reqwest::Response {
    server
        .client
        .get(server.url(&format!("/v1/videos/{id}/events")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn event_streams_are_limited_per_user_and_end_when_the_token_is_revoked() {
    let server = TestServer::start_with(Backend::Sqlite, |c| c.workers = 0).await;
    let admin = server.admin().await;
    let job = submit_ok(&server, &admin.access, form("speech_en.wav", &[])).await;
    let id = job["id"].as_str().unwrap().to_owned();
    let session = server.admin().await;
    let mut streams = Vec::new();
    for _ in 0..8 {
        let response = open_stream(&server, &session.access, &id).await;
        assert_eq!(response.status(), StatusCode::OK);
        streams.push(response);
    }
    let refused = open_stream(&server, &session.access, &id).await;
    assert!(refused.headers().contains_key("retry-after"));
    let body = problem(refused, StatusCode::TOO_MANY_REQUESTS).await;
    assert_eq!(body["code"], "too_many_streams");

    let logout = server
        .client
        .post(server.url("/v1/auth/logout"))
        .bearer_auth(&session.access)
        .send()
        .await
        .unwrap();
    assert_eq!(logout.status(), StatusCode::NO_CONTENT);
    for stream in streams {
        assert_eq!(read_until_end(stream).await["reason"], "token_revoked");
    }
    // The ended streams gave their slots back.
    let again = server.admin().await;
    assert_eq!(
        open_stream(&server, &again.access, &id).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn an_event_stream_ends_when_its_token_expires() {
    let server = TestServer::start_with(Backend::Sqlite, |c| c.workers = 0).await;
    let admin = server.admin().await;
    let job = submit_ok(&server, &admin.access, form("speech_en.wav", &[])).await;
    let id = job["id"].as_str().unwrap().to_owned();
    let mut claims = server.valid_claims().await;
    let now = claims["iat"].as_i64().unwrap();
    claims["exp"] = json!(now + 3);
    claims["jti"] = json!(uuid::Uuid::new_v4().to_string());
    let short_lived = server.forge(json!({}), &claims);
    let response = open_stream(&server, &short_lived, &id).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(read_until_end(response).await["reason"], "token_expired");
}

async fn audit_count(server: &TestServer, admin: &str, query: &str) -> usize {
    audit(server, admin, &format!("{query}&limit=1000"))
        .await
        .len()
}

/// A dead token presented in a loop is one event: a revoked refresh token refused once is recorded
/// once, and revoking what is already revoked records nothing.
#[tokio::test]
async fn a_dead_token_presented_again_and_again_is_recorded_once() {
    let server = TestServer::start().await;
    let admin = server.admin().await;
    let victim = server.admin().await;
    let revoke = |token: String| {
        let server = &server;
        async move {
            let response = server
                .client
                .post(server.url("/v1/auth/revoke"))
                .form(&[("token", token.as_str())])
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK);
        }
    };
    revoke(victim.refresh.clone()).await;
    // Revoking the refresh token revoked its sign-in, the access token with it: nothing more to record.
    revoke(victim.access.clone()).await;
    let revokes = audit_count(&server, &admin.access, "action=auth.revoke").await;
    assert_eq!(revokes, 1);
    for _ in 0..5 {
        revoke(victim.refresh.clone()).await;
        revoke(victim.access.clone()).await;
        let refused = server.refresh(&victim.refresh).await;
        assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    }
    assert_eq!(
        audit_count(&server, &admin.access, "action=auth.revoke").await,
        revokes
    );
    assert_eq!(
        audit_count(
            &server,
            &admin.access,
            "action=auth.refresh&outcome=failure"
        )
        .await,
        1
    );
}

/// A role refusal records the route, not the caller's path (which can be as long as the URI limit),
/// once a minute per user and route.
#[tokio::test]
async fn role_refusals_record_the_route_once_not_the_path() {
    let server = TestServer::start().await;
    let admin = server.admin().await;
    server
        .create_user(&admin.access, "pleb", "user", None)
        .await;
    let user = server.login("pleb", USER_PASSWORD).await;
    let long = "A".repeat(4000);
    for _ in 0..5 {
        let response = server.get(&format!("/v1/users/{long}"), &user.access).await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
    }
    let denied = audit(&server, &admin.access, "action=access.denied").await;
    assert_eq!(denied.len(), 1, "{denied:?}");
    assert_eq!(denied[0]["target"], "GET /v1/users/{id}");
}
