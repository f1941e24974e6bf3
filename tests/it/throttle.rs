//! Login protection: one answer for every kind of failure, and lockouts per account and per address.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::*;

#[tokio::test]
async fn unknown_user_wrong_password_and_disabled_user_get_the_same_answer() {
    let server = TestServer::start().await;
    let admin = server.admin().await;
    let id = server
        .create_user(&admin.access, "gina", "user", None)
        .await;
    server
        .patch_json(
            &format!("/v1/users/{id}"),
            &admin.access,
            json!({ "disabled": true }),
        )
        .await;
    let mut answers = Vec::new();
    for (user, password) in [
        ("nobody", USER_PASSWORD),
        ("admin", "wrong password!!"),
        ("gina", USER_PASSWORD),
    ] {
        let response = server.try_login(user, password, None).await;
        answers.push((response.status(), response.text().await.unwrap()));
    }
    assert_eq!(answers[0].0, StatusCode::BAD_REQUEST);
    assert!(answers.iter().all(|a| *a == answers[0]), "{answers:?}");
    // The audit log keeps the real reason, never the password.
    let audit: Value = server
        .get("/v1/audit?action=auth.login&outcome=failure", &admin.access)
        .await
        .json()
        .await
        .unwrap();
    let reasons: Vec<&str> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["reason"].as_str().unwrap())
        .collect();
    assert_eq!(reasons, ["user_disabled", "wrong_password", "unknown_user"]);
    assert!(!audit.to_string().contains(USER_PASSWORD));
}

#[tokio::test]
async fn account_is_locked_after_ten_failures_even_for_the_right_password() {
    let server = TestServer::start_with(Backend::Sqlite, |c| c.login_ip_max_failures = 1000).await;
    for _ in 0..10 {
        let response = server.try_login("admin", "wrong password!!", None).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    }
    let response = server.try_login("admin", ADMIN_PASSWORD, None).await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after > 800 && retry_after <= 900, "{retry_after}");
}

#[tokio::test]
async fn client_address_is_locked_after_failures_across_accounts() {
    let server = TestServer::start_with(Backend::Sqlite, |c| {
        c.login_ip_max_failures = 5;
        c.login_max_failures = 1000;
    })
    .await;
    for i in 0..5 {
        let response = server
            .try_login(&format!("user{i}"), "wrong password!!", None)
            .await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    }
    let response = server.try_login("admin", ADMIN_PASSWORD, None).await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(response.headers().contains_key("retry-after"));
}

#[tokio::test]
async fn failures_below_the_limit_do_not_lock() {
    let server = TestServer::start().await;
    for _ in 0..9 {
        server.try_login("admin", "wrong password!!", None).await;
    }
    assert_eq!(
        server
            .try_login("admin", ADMIN_PASSWORD, None)
            .await
            .status(),
        StatusCode::OK
    );
}

/// `(invalid_grant answers, 429 answers)` of `count` concurrent wrong-password logins; `username(i)` names
/// the account of the i-th. Every answer must be one of the two.
async fn concurrent_wrong_logins(
    server: &TestServer,
    count: usize,
    username: impl Fn(usize) -> String,
) -> (usize, usize) {
    let names: Vec<String> = (0..count).map(username).collect();
    let answers = futures::future::join_all(
        names
            .iter()
            .map(|name| server.try_login(name, "wrong password!!", None)),
    )
    .await;
    let (mut invalid, mut throttled) = (0, 0);
    for response in answers {
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        match (status, body["error"].as_str()) {
            (StatusCode::BAD_REQUEST, Some("invalid_grant")) => invalid += 1,
            (StatusCode::TOO_MANY_REQUESTS, Some("too_many_attempts")) => throttled += 1,
            other => panic!("unexpected answer {other:?}"),
        }
    }
    (invalid, throttled)
}

#[tokio::test]
async fn concurrent_wrong_passwords_cannot_outrun_the_account_limit() {
    let server = TestServer::start_with(Backend::Sqlite, |c| c.login_ip_max_failures = 1000).await;
    let (invalid, throttled) = concurrent_wrong_logins(&server, 50, |_| "admin".to_owned()).await;
    // Slots are only given back by failures, so exactly the limit is verified and failed.
    assert_eq!((invalid, throttled), (10, 40));
    let response = server.try_login("admin", ADMIN_PASSWORD, None).await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after > 800, "{retry_after}");
}

#[tokio::test]
async fn concurrent_wrong_passwords_cannot_outrun_the_address_limit() {
    let server = TestServer::start_with(Backend::Sqlite, |c| {
        c.login_max_failures = 1000;
        c.login_ip_max_failures = 10;
    })
    .await;
    let (invalid, throttled) = concurrent_wrong_logins(&server, 50, |i| format!("user{i}")).await;
    assert_eq!((invalid, throttled), (10, 40));
    let response = server.try_login("admin", ADMIN_PASSWORD, None).await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn an_overlong_username_is_throttled_like_any_other() {
    let server = TestServer::start_with(Backend::Sqlite, |c| c.login_ip_max_failures = 1000).await;
    let long = "u".repeat(60 * 1024);
    for _ in 0..10 {
        let response = server.try_login(&long, "wrong password!!", None).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    }
    let response = server.try_login(&long, "wrong password!!", None).await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn concurrent_logins_with_the_right_password_are_not_refused() {
    let server = TestServer::start().await;
    // More than the limit of 10 at once: the attempts past it wait for a slot instead of getting 429.
    let logins = (0..25).map(|_| server.try_login("admin", ADMIN_PASSWORD, None));
    for response in futures::future::join_all(logins).await {
        assert_eq!(response.status(), StatusCode::OK);
    }
}

#[tokio::test]
async fn by_default_one_address_outlasts_the_per_account_limit() {
    // Defaults: 10 per account, 100 per address. Colleagues behind one NAT address mistype their
    // passwords a dozen times between them; the address is not locked, so the next sign-in works.
    let server = TestServer::start().await;
    for i in 0..12 {
        let response = server
            .try_login(&format!("colleague{i}"), "mistyped password", None)
            .await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    }
    let response = server.try_login("admin", ADMIN_PASSWORD, None).await;
    assert_eq!(response.status(), StatusCode::OK);
}
