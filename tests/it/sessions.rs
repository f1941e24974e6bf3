//! Refresh rotation, reuse detection, logout and revocation, on both database backends.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::*;

async fn refresh_ok(server: &TestServer, refresh: &str) -> Session {
    let response = server.refresh(refresh).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["token_type"], "Bearer");
    Session {
        access: body["access_token"].as_str().unwrap().to_owned(),
        refresh: body["refresh_token"].as_str().unwrap().to_owned(),
    }
}

async fn assert_invalid_grant(response: reqwest::Response) {
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "invalid_grant");
}

async fn rotation_and_reuse_detection(backend: Backend) {
    let server = TestServer::start_with(backend, |_| {}).await;
    let first = server.admin().await;
    let second = refresh_ok(&server, &first.refresh).await;
    assert_ne!(second.refresh, first.refresh);
    assert_eq!(
        server.get("/v1/me", &second.access).await.status(),
        StatusCode::OK
    );

    // The old refresh token again: reuse. The whole family dies, including tokens issued after it.
    assert_invalid_grant(server.refresh(&first.refresh).await).await;
    assert_invalid_grant(server.refresh(&second.refresh).await).await;
    assert_invalid_token(server.get("/v1/me", &second.access).await, "family revoked").await;
    assert_invalid_token(server.get("/v1/me", &first.access).await, "family revoked").await;

    let admin = server.admin().await;
    let audit: Value = server
        .get(
            "/v1/audit?action=auth.refresh_reuse_detected",
            &admin.access,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(audit["items"].as_array().unwrap().len(), 1, "{audit}");
}

#[tokio::test]
async fn refresh_rotates_and_reuse_revokes_the_family_sqlite() {
    rotation_and_reuse_detection(Backend::Sqlite).await;
}

#[tokio::test]
async fn refresh_rotates_and_reuse_revokes_the_family_postgres() {
    rotation_and_reuse_detection(Backend::Postgres).await;
}

#[tokio::test]
async fn concurrent_refreshes_of_one_token_let_at_most_one_through() {
    let server = TestServer::start().await;
    let session = server.admin().await;
    let (a, b) = tokio::join!(
        server.refresh(&session.refresh),
        server.refresh(&session.refresh)
    );
    let ok = [a.status(), b.status()]
        .iter()
        .filter(|s| **s == StatusCode::OK)
        .count();
    assert!(ok <= 1, "both concurrent refreshes succeeded");
}

async fn logout_revokes_access_and_refresh(backend: Backend) {
    let server = TestServer::start_with(backend, |_| {}).await;
    let session = server.admin().await;
    let other = server.admin().await;
    let response = server
        .client
        .post(server.url("/v1/auth/logout"))
        .bearer_auth(&session.access)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_invalid_token(server.get("/v1/me", &session.access).await, "logged out").await;
    assert_invalid_grant(server.refresh(&session.refresh).await).await;
    // Another sign-in of the same user is untouched.
    assert_eq!(
        server.get("/v1/me", &other.access).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn logout_revokes_the_access_token_and_its_refresh_family_sqlite() {
    logout_revokes_access_and_refresh(Backend::Sqlite).await;
}

#[tokio::test]
async fn logout_revokes_the_access_token_and_its_refresh_family_postgres() {
    logout_revokes_access_and_refresh(Backend::Postgres).await;
}

async fn revoke(server: &TestServer, token: &str, hint: Option<&str>) -> reqwest::Response {
    let mut form = vec![("token", token)];
    if let Some(hint) = hint {
        form.push(("token_type_hint", hint));
    }
    server
        .client
        .post(server.url("/v1/auth/revoke"))
        .form(&form)
        .send()
        .await
        .unwrap()
}

async fn revocation_endpoint(backend: Backend) {
    let server = TestServer::start_with(backend, |_| {}).await;
    let a = server.admin().await;
    assert_eq!(
        revoke(&server, &a.access, Some("access_token"))
            .await
            .status(),
        StatusCode::OK
    );
    assert_invalid_token(
        server.get("/v1/me", &a.access).await,
        "revoked access token",
    )
    .await;

    let b = server.admin().await;
    assert_eq!(
        revoke(&server, &b.refresh, None).await.status(),
        StatusCode::OK
    );
    assert_invalid_grant(server.refresh(&b.refresh).await).await;
    assert_invalid_token(
        server.get("/v1/me", &b.access).await,
        "family of revoked refresh",
    )
    .await;

    // RFC 7009 2.2: unknown tokens get 200 too.
    assert_eq!(
        revoke(&server, "not-a-token", None).await.status(),
        StatusCode::OK
    );
    let missing = server
        .client
        .post(server.url("/v1/auth/revoke"))
        .form(&[("x", "y")])
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn revoke_endpoint_revokes_access_and_refresh_tokens_sqlite() {
    revocation_endpoint(Backend::Sqlite).await;
}

#[tokio::test]
async fn revoke_endpoint_revokes_access_and_refresh_tokens_postgres() {
    revocation_endpoint(Backend::Postgres).await;
}

async fn revocation_survives_restart(backend: Backend) {
    let server = TestServer::start_with(backend, |_| {}).await;
    let kept = server.admin().await;
    let revoked = server.admin().await;
    assert_eq!(
        revoke(&server, &revoked.access, None).await.status(),
        StatusCode::OK
    );
    let server = server.restart().await;
    assert_eq!(
        server.get("/v1/me", &kept.access).await.status(),
        StatusCode::OK
    );
    assert_invalid_token(
        server.get("/v1/me", &revoked.access).await,
        "revoked before restart",
    )
    .await;
}

#[tokio::test]
async fn revoked_token_stays_refused_after_restart_sqlite() {
    revocation_survives_restart(Backend::Sqlite).await;
}

#[tokio::test]
async fn revoked_token_stays_refused_after_restart_postgres() {
    revocation_survives_restart(Backend::Postgres).await;
}

#[tokio::test]
async fn password_change_revokes_every_token_of_the_user() {
    let server = TestServer::start().await;
    let admin = server.admin().await;
    let id = server
        .create_user(&admin.access, "erin", "user", None)
        .await;
    let erin = server.login("erin", USER_PASSWORD).await;
    let response = server
        .patch_json(
            &format!("/v1/users/{id}"),
            &admin.access,
            json!({ "password": "a brand new password" }),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_invalid_token(
        server.get("/v1/me", &erin.access).await,
        "after password change",
    )
    .await;
    assert_invalid_grant(server.refresh(&erin.refresh).await).await;
    assert_invalid_grant(server.try_login("erin", USER_PASSWORD, None).await).await;
    server.login("erin", "a brand new password").await;
}

#[tokio::test]
async fn role_change_takes_effect_at_the_next_refresh() {
    let server = TestServer::start().await;
    let admin = server.admin().await;
    let id = server
        .create_user(&admin.access, "frank", "user", None)
        .await;
    let frank = server.login("frank", USER_PASSWORD).await;
    assert_eq!(
        server.get("/v1/users", &frank.access).await.status(),
        StatusCode::FORBIDDEN
    );
    server
        .patch_json(
            &format!("/v1/users/{id}"),
            &admin.access,
            json!({ "role": "admin" }),
        )
        .await;
    assert_invalid_token(server.get("/v1/me", &frank.access).await, "stale role").await;
    let refreshed = refresh_ok(&server, &frank.refresh).await;
    assert_eq!(decode_part(&refreshed.access, 1)["role"], "admin");
    assert_eq!(
        server.get("/v1/users", &refreshed.access).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn token_endpoint_speaks_rfc6749_errors() {
    let server = TestServer::start().await;
    let post = |form: Vec<(&'static str, &'static str)>| {
        server
            .client
            .post(server.url("/v1/auth/token"))
            .form(&form)
            .send()
    };
    let body: Value = post(vec![("grant_type", "authorization_code")])
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["error"], "unsupported_grant_type");
    let body: Value = post(vec![("grant_type", "client_credentials")])
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["error"], "invalid_request", "no client credentials");
    let body: Value = post(vec![("grant_type", "password"), ("username", "admin")])
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["error"], "invalid_request");
    let response = server
        .client
        .post(server.url("/v1/auth/token"))
        .json(&json!({ "grant_type": "password" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "invalid_request");
}

#[tokio::test]
async fn login_endpoint_is_the_password_grant() {
    let server = TestServer::start().await;
    let response = server
        .client
        .post(server.url("/login"))
        .form(&[("username", "admin"), ("password", ADMIN_PASSWORD)])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        server
            .get("/v1/me", body["access_token"].as_str().unwrap())
            .await
            .status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn same_username_in_two_tenants_needs_the_tenant_parameter() {
    let server = TestServer::start().await;
    let admin = server.admin().await;
    let acme = server.create_tenant(&admin.access, "acme", "free").await;
    let globex = server.create_tenant(&admin.access, "globex", "pro").await;
    server
        .create_user(&admin.access, "sam", "user", Some(&acme))
        .await;
    server
        .create_user(&admin.access, "sam", "user", Some(&globex))
        .await;
    let ambiguous: Value = server
        .try_login("sam", USER_PASSWORD, None)
        .await
        .json()
        .await
        .unwrap();
    // Answered like any failed login (no oracle for shared names), with the hint to name the tenant.
    assert_eq!(ambiguous["error"], "invalid_grant");
    assert!(ambiguous["error_description"]
        .as_str()
        .unwrap()
        .contains("tenant parameter"));
    let sam = server.login_in("sam", USER_PASSWORD, Some("globex")).await;
    let me: Value = server
        .get("/v1/me", &sam.access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["tenant"]["name"], "globex");
    assert_eq!(me["plan"], "pro");
    assert_eq!(me["limits"]["max_resolution"], 1024);
}

#[tokio::test]
async fn operator_cli_manages_users_and_its_revocations_reach_the_running_server() {
    let server = TestServer::start().await;
    let cli = |args: &[&str], stdin: Option<&str>| {
        use std::io::Write;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_sonicgw"))
            .args(args)
            .env("SONICGW_DATA_DIR", server.dir.path())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        if let Some(input) = stdin {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
        }
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    };
    cli(
        &["admin", "create-tenant", "initech", "--plan", "pro"],
        None,
    );
    let created = cli(
        &[
            "admin",
            "create-user",
            "--tenant",
            "initech",
            "peter",
            "--role",
            "admin",
        ],
        None,
    );
    let password = created
        .lines()
        .find_map(|l| l.strip_prefix("password (shown only now): "))
        .expect("generated password printed")
        .to_owned();
    let peter = server.login_in("peter", &password, Some("initech")).await;
    let me: Value = server
        .get("/v1/me", &peter.access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["role"], "admin");
    assert_eq!(me["plan"], "pro");

    cli(
        &["admin", "disable-user", "--tenant", "initech", "peter"],
        None,
    );
    // The server learns of the CLI's revocation by polling the database every second.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let status = server.get("/v1/me", &peter.access).await.status();
        if status == StatusCode::UNAUTHORIZED {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "CLI revocation not seen"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    cli(
        &["admin", "enable-user", "--tenant", "initech", "peter"],
        None,
    );
    cli(
        &[
            "admin",
            "reset-password",
            "--tenant",
            "initech",
            "peter",
            "--password-stdin",
        ],
        Some("the operator's new password\n"),
    );
    server
        .login_in("peter", "the operator's new password", Some("initech"))
        .await;
}
