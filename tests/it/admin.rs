//! The admin API: role checks, and tenant isolation on every route (another tenant's objects are 404).

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::*;

/// Two tenants, each with an admin and a user, and the platform admin.
struct World {
    server: TestServer,
    platform: Session,
    acme_admin: Session,
    acme_id: String,
    globex_id: String,
    globex_user_id: String,
    acme_user: Session,
}

async fn world() -> World {
    let server = TestServer::start().await;
    let platform = server.admin().await;
    let acme_id = server.create_tenant(&platform.access, "acme", "free").await;
    let globex_id = server
        .create_tenant(&platform.access, "globex", "pro")
        .await;
    server
        .create_user(&platform.access, "acme-admin", "admin", Some(&acme_id))
        .await;
    server
        .create_user(&platform.access, "acme-user", "user", Some(&acme_id))
        .await;
    let globex_user_id = server
        .create_user(&platform.access, "globex-user", "user", Some(&globex_id))
        .await;
    let acme_admin = server.login("acme-admin", USER_PASSWORD).await;
    let acme_user = server.login("acme-user", USER_PASSWORD).await;
    World {
        server,
        platform,
        acme_admin,
        acme_id,
        globex_id,
        globex_user_id,
        acme_user,
    }
}

async fn assert_not_found(response: reqwest::Response, what: &str) {
    assert_eq!(response.status(), StatusCode::NOT_FOUND, "{what}");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "not_found", "{what}");
    assert!(
        !body.to_string().contains("globex"),
        "{what} leaked data: {body}"
    );
}

#[tokio::test]
async fn tenant_admin_sees_another_tenants_user_as_not_found_on_every_route() {
    let w = world().await;
    let s = &w.server;
    let path = format!("/v1/users/{}", w.globex_user_id);
    assert_not_found(s.get(&path, &w.acme_admin.access).await, "GET").await;
    assert_not_found(
        s.patch_json(&path, &w.acme_admin.access, json!({ "disabled": true }))
            .await,
        "PATCH",
    )
    .await;
    assert_not_found(
        s.patch_json(
            &path,
            &w.acme_admin.access,
            json!({ "password": "hijacked password" }),
        )
        .await,
        "PATCH password",
    )
    .await;
    assert_not_found(s.delete(&path, &w.acme_admin.access).await, "DELETE").await;
    // Untouched: the globex user still signs in with the old password.
    s.login("globex-user", USER_PASSWORD).await;
}

#[tokio::test]
async fn tenant_admin_lists_only_their_tenant() {
    let w = world().await;
    let users: Value = w
        .server
        .get("/v1/users", &w.acme_admin.access)
        .await
        .json()
        .await
        .unwrap();
    let mut names: Vec<&str> = users["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["username"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["acme-admin", "acme-user"]);
    let all: Value = w
        .server
        .get("/v1/users", &w.platform.access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(all["items"].as_array().unwrap().len(), 4);
}

#[tokio::test]
async fn tenant_admin_cannot_create_users_in_another_tenant() {
    let w = world().await;
    let response = w
        .server
        .post_json(
            "/v1/users",
            &w.acme_admin.access,
            json!({ "username": "spy", "password": USER_PASSWORD, "tenant_id": w.globex_id }),
        )
        .await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["errors"][0]["field"], "tenant_id");
    let created = w
        .server
        .create_user(&w.acme_admin.access, "newbie", "user", None)
        .await;
    let user: Value = w
        .server
        .get(&format!("/v1/users/{created}"), &w.platform.access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(user["tenant_id"], w.acme_id.as_str());
}

#[tokio::test]
async fn tenant_routes_are_scoped_and_platform_only_for_changes() {
    let w = world().await;
    let s = &w.server;
    assert_not_found(
        s.get(
            &format!("/v1/tenants/{}", w.globex_id),
            &w.acme_admin.access,
        )
        .await,
        "other tenant",
    )
    .await;
    let own: Value = s
        .get(&format!("/v1/tenants/{}", w.acme_id), &w.acme_admin.access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(own["name"], "acme");
    assert_eq!(
        s.get("/v1/tenants", &w.acme_admin.access).await.status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        s.post_json(
            "/v1/tenants",
            &w.acme_admin.access,
            json!({ "name": "rogue" })
        )
        .await
        .status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        s.patch_json(
            &format!("/v1/tenants/{}", w.acme_id),
            &w.acme_admin.access,
            json!({ "plan": "pro" })
        )
        .await
        .status(),
        StatusCode::FORBIDDEN
    );
    let updated: Value = s
        .patch_json(
            &format!("/v1/tenants/{}", w.acme_id),
            &w.platform.access,
            json!({ "plan": "pro" }),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(updated["plan"], "pro");
    let list: Value = s
        .get("/v1/tenants", &w.platform.access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["items"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn tenant_admin_reads_only_their_tenants_audit_records() {
    let w = world().await;
    // An event in globex: its user signs in.
    w.server.login("globex-user", USER_PASSWORD).await;
    let audit: Value = w
        .server
        .get("/v1/audit?limit=1000", &w.acme_admin.access)
        .await
        .json()
        .await
        .unwrap();
    let items = audit["items"].as_array().unwrap();
    assert!(!items.is_empty());
    assert!(
        items.iter().all(|r| r["tenant_id"] == w.acme_id.as_str()),
        "{audit}"
    );
    assert_eq!(
        w.server
            .get("/v1/audit/verify", &w.acme_admin.access)
            .await
            .status(),
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn plain_user_is_refused_admin_routes_and_the_refusal_is_audited() {
    let w = world().await;
    let s = &w.server;
    for path in [
        "/v1/users",
        "/v1/audit",
        "/v1/tenants",
        &format!("/v1/tenants/{}", w.acme_id),
    ] {
        let response = s.get(path, &w.acme_user.access).await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{path}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["code"], "forbidden");
    }
    let audit: Value = s
        .get("/v1/audit?action=access.denied", &w.acme_admin.access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(audit["items"].as_array().unwrap().len(), 4);
    assert_eq!(
        s.get("/v1/me", &w.acme_user.access).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn tenant_admin_cannot_grant_or_touch_platform_admin() {
    let w = world().await;
    let s = &w.server;
    let response = s
        .post_json(
            "/v1/users",
            &w.acme_admin.access,
            json!({ "username": "boss", "password": USER_PASSWORD, "role": "platform_admin" }),
        )
        .await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let users: Value = s
        .get("/v1/users", &w.acme_admin.access)
        .await
        .json()
        .await
        .unwrap();
    let acme_user_id = users["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["username"] == "acme-user")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let response = s
        .patch_json(
            &format!("/v1/users/{acme_user_id}"),
            &w.acme_admin.access,
            json!({ "role": "platform_admin" }),
        )
        .await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn admin_cannot_lock_themselves_out() {
    let w = world().await;
    let me: Value = w
        .server
        .get("/v1/me", &w.acme_admin.access)
        .await
        .json()
        .await
        .unwrap();
    let path = format!("/v1/users/{}", me["id"].as_str().unwrap());
    assert_eq!(
        w.server
            .patch_json(&path, &w.acme_admin.access, json!({ "disabled": true }))
            .await
            .status(),
        StatusCode::CONFLICT
    );
    assert_eq!(
        w.server.delete(&path, &w.acme_admin.access).await.status(),
        StatusCode::CONFLICT
    );
}

#[tokio::test]
async fn invalid_user_input_is_a_422_naming_the_field_and_changes_nothing() {
    let w = world().await;
    let s = &w.server;
    let cases = [
        (
            json!({ "username": "ok-name", "password": "short" }),
            "password",
        ),
        (
            json!({ "username": "bad/name", "password": USER_PASSWORD }),
            "username",
        ),
        (
            json!({ "username": "ok-name", "password": USER_PASSWORD, "role": "god" }),
            "role",
        ),
        (
            json!({ "username": "ok-name", "password": USER_PASSWORD, "colour": "red" }),
            "colour",
        ),
        (
            json!({ "username": 7, "password": USER_PASSWORD }),
            "username",
        ),
    ];
    for (body, field) in cases {
        let response = s
            .post_json("/v1/users", &w.acme_admin.access, body.clone())
            .await;
        assert_eq!(
            response.status(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}"
        );
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["code"], "validation_failed");
        assert_eq!(problem["errors"][0]["field"], field, "{problem}");
    }
    let users: Value = s
        .get("/v1/users", &w.acme_admin.access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(users["items"].as_array().unwrap().len(), 2);
    let duplicate = s
        .post_json(
            "/v1/users",
            &w.acme_admin.access,
            json!({ "username": "acme-user", "password": USER_PASSWORD }),
        )
        .await;
    assert_eq!(duplicate.status(), StatusCode::CONFLICT);
    let body: Value = duplicate.json().await.unwrap();
    assert_eq!(body["code"], "already_exists");
    let malformed = s
        .client
        .post(s.url("/v1/users"))
        .bearer_auth(&w.acme_admin.access)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), StatusCode::BAD_REQUEST);
    let not_a_uuid = s.get("/v1/users/not-a-uuid", &w.acme_admin.access).await;
    assert_eq!(not_a_uuid.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn user_plan_overrides_tenant_plan_in_me() {
    let w = world().await;
    let me: Value = w
        .server
        .get("/v1/me", &w.acme_user.access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["plan"], "free");
    assert_eq!(me["limits"]["videos_per_day"], 5);
    let id = me["id"].as_str().unwrap();
    // A tenant admin cannot lift anyone above the tenant's plan; the platform admin can.
    let refused = w
        .server
        .patch_json(
            &format!("/v1/users/{id}"),
            &w.acme_admin.access,
            json!({ "plan": "pro" }),
        )
        .await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    let refused = w
        .server
        .post_json(
            "/v1/users",
            &w.acme_admin.access,
            json!({ "username": "vip", "password": USER_PASSWORD, "plan": "pro" }),
        )
        .await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    let granted = w
        .server
        .patch_json(
            &format!("/v1/users/{id}"),
            &w.platform.access,
            json!({ "plan": "pro" }),
        )
        .await;
    assert_eq!(granted.status(), StatusCode::OK);
    let fresh = w.server.login("acme-user", USER_PASSWORD).await;
    let me: Value = w
        .server
        .get("/v1/me", &fresh.access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["plan"], "pro");
    assert_eq!(me["limits"]["videos_per_day"], 200);
    assert_eq!(me["username"], "acme-user");
    assert_eq!(me["role"], "user");
}
