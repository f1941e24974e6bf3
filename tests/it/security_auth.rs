//! Findings of the authentication security review: throttled logins leave no audit rows, an ambiguous
//! username is no oracle, metrics labels are bounded, and the SQLite database and data folders are
//! owner-only.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::*;

async fn metrics_text(server: &TestServer) -> String {
    reqwest::get(format!("http://{}/metrics", server.metrics_addr.unwrap()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of an unlabelled counter (0 before its first increment). The recorder is process-wide, so
/// other tests running at the same time may add to it too.
fn counter(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .map_or(0, |value| value.trim().parse().unwrap())
}

async fn login_audit_rows(server: &TestServer, admin: &str) -> Vec<Value> {
    let response = server
        .get("/v1/audit?action=auth.login&limit=1000", admin)
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    body["items"].as_array().unwrap().clone()
}

#[tokio::test]
async fn throttled_logins_are_counted_in_metrics_not_audited() {
    let server = TestServer::start_with(Backend::Sqlite, |c| c.login_ip_max_failures = 1000).await;
    let admin = server.admin().await;
    for _ in 0..10 {
        let response = server.try_login("victim", "wrong password!!", None).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    }
    let rows_before = login_audit_rows(&server, &admin.access).await;
    // The admin's login and the ten failures.
    assert_eq!(rows_before.len(), 11);
    let throttled_before = counter(&metrics_text(&server).await, "auth_login_throttled_total");
    for _ in 0..25 {
        let response = server.try_login("victim", "wrong password!!", None).await;
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    }
    let rows_after = login_audit_rows(&server, &admin.access).await;
    assert_eq!(
        rows_after, rows_before,
        "no audit row for a throttled login"
    );
    let metrics = metrics_text(&server).await;
    let throttled_after = counter(&metrics, "auth_login_throttled_total");
    assert!(
        throttled_after >= throttled_before + 25,
        "{throttled_before} -> {throttled_after}"
    );
    // One series, no caller-chosen label.
    assert!(
        metrics.contains("\nauth_login_throttled_total "),
        "{metrics}"
    );
}

/// Tenants `acme` and `globex`, each with a user `sam` (password `USER_PASSWORD`).
async fn sam_in_two_tenants(server: &TestServer) {
    let admin = server.admin().await;
    for tenant in ["acme", "globex"] {
        let id = server.create_tenant(&admin.access, tenant, "free").await;
        server
            .create_user(&admin.access, "sam", "user", Some(&id))
            .await;
    }
}

#[tokio::test]
async fn an_ambiguous_username_with_a_wrong_password_answers_like_an_unknown_user() {
    let server = TestServer::start_with(Backend::Sqlite, |c| c.login_ip_max_failures = 1000).await;
    sam_in_two_tenants(&server).await;
    let mut answers = Vec::new();
    for user in ["nobody", "sam"] {
        let response = server.try_login(user, "wrong password!!", None).await;
        answers.push((response.status(), response.text().await.unwrap()));
    }
    assert_eq!(answers[0].0, StatusCode::BAD_REQUEST);
    assert!(answers[0].1.contains("invalid_grant"), "{}", answers[0].1);
    assert_eq!(answers[1], answers[0]);

    // Audited as a failure, without naming either user.
    let admin = server.admin().await;
    let rows = login_audit_rows(&server, &admin.access).await;
    let failures: Vec<&Value> = rows.iter().filter(|r| r["outcome"] == "failure").collect();
    assert_eq!(failures.len(), 2, "{rows:?}");
    let sam = failures
        .iter()
        .find(|r| r["reason"] == "ambiguous_username")
        .unwrap_or_else(|| panic!("{failures:?}"));
    assert!(sam["target"].is_null(), "{sam}");
    assert!(sam["actor_user_id"].is_null(), "{sam}");
}

#[tokio::test]
async fn an_ambiguous_username_counts_toward_the_lockout() {
    let server = TestServer::start_with(Backend::Sqlite, |c| c.login_ip_max_failures = 1000).await;
    sam_in_two_tenants(&server).await;
    for _ in 0..10 {
        let response = server.try_login("sam", "wrong password!!", None).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    }
    for tenant in [None, Some("acme")] {
        let response = server.try_login("sam", USER_PASSWORD, tenant).await;
        assert_eq!(
            response.status(),
            StatusCode::TOO_MANY_REQUESTS,
            "{tenant:?}"
        );
    }
}

/// Someone guessing at sam@globex must not get a fresh count each time the sam of acme signs in.
#[tokio::test]
async fn a_namesake_signing_in_does_not_reset_guesses_at_another_tenant() {
    let server = TestServer::start_with(Backend::Sqlite, |c| c.login_ip_max_failures = 1000).await;
    sam_in_two_tenants(&server).await;
    for round in 0..3 {
        for _ in 0..3 {
            let response = server
                .try_login("sam", "wrong password!!", Some("globex"))
                .await;
            assert_eq!(response.status(), StatusCode::BAD_REQUEST, "round {round}");
        }
        let namesake = server.try_login("sam", USER_PASSWORD, Some("acme")).await;
        assert_eq!(namesake.status(), StatusCode::OK, "round {round}");
    }
    // Nine failures so far: the tenth locks the name.
    let response = server
        .try_login("sam", "wrong password!!", Some("globex"))
        .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let response = server.try_login("sam", USER_PASSWORD, Some("globex")).await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn an_ambiguous_username_with_the_right_password_answers_like_any_failed_login() {
    let server = TestServer::start_with(Backend::Sqlite, |c| c.login_ip_max_failures = 1000).await;
    sam_in_two_tenants(&server).await;
    let sam = server.try_login("sam", USER_PASSWORD, None).await;
    let nobody = server.try_login("nobody", USER_PASSWORD, None).await;
    let (sam_status, sam_body) = (sam.status(), sam.text().await.unwrap());
    assert_eq!(sam_status, StatusCode::BAD_REQUEST);
    assert_eq!(
        (sam_status, &sam_body),
        (nobody.status(), &nobody.text().await.unwrap())
    );
    // The one answer for every failure says what to do when a name is shared.
    let body: Value = serde_json::from_str(&sam_body).unwrap();
    assert_eq!(body["error"], "invalid_grant");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("tenant"),
        "{body}"
    );
    // It counted as a failure: eight more keep sam under the limit of ten, and naming the tenant works.
    for _ in 0..8 {
        server.try_login("sam", "wrong password!!", None).await;
    }
    server.login_in("sam", USER_PASSWORD, Some("acme")).await;
}

#[tokio::test]
async fn extension_methods_share_one_metrics_label() {
    let server = TestServer::start().await;
    let size_before = metrics_text(&server).await.len();
    let names: Vec<String> = (0..20)
        .map(|i| {
            format!(
                "XM{}{}",
                uuid::Uuid::new_v4().simple(),
                "Q".repeat(4096 + i)
            )
        })
        .collect();
    for name in &names {
        let method = reqwest::Method::from_bytes(name.as_bytes()).unwrap();
        let response = server
            .client
            .request(method, server.url("/healthz"))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_client_error(), "{}", response.status());
    }
    let metrics = metrics_text(&server).await;
    assert!(metrics.contains("method=\"OTHER\""), "{metrics}");
    for name in &names {
        assert!(
            !metrics.contains(&name[..34]),
            "{:.40} became a label",
            name
        );
    }
    // 20 methods of over 4 KB each would have added more than 80 KB.
    assert!(
        metrics.len() < size_before + 32 * 1024,
        "{size_before} -> {}",
        metrics.len()
    );
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// The database, with its `-wal` and `-shm` files (both exist while the server runs in WAL mode).
fn database_files(dir: &Path) -> Vec<std::path::PathBuf> {
    ["sonicgw.db", "sonicgw.db-wal", "sonicgw.db-shm"]
        .iter()
        .map(|name| dir.join(name))
        .collect()
}

#[tokio::test]
async fn a_new_sqlite_database_and_its_folders_are_owner_only() {
    let server =
        TestServer::start_with(Backend::Sqlite, |c| c.data_dir = c.data_dir.join("data")).await;
    let data = server.config.data_dir.clone();
    // Written to, so that the WAL is in use.
    server.admin().await;
    assert_eq!(mode(&data), 0o700, "data_dir");
    assert_eq!(mode(&data.join("blobs")), 0o700, "blobs");
    for file in database_files(&data) {
        assert_eq!(mode(&file), 0o600, "{}", file.display());
    }
}

#[tokio::test]
async fn an_existing_sqlite_database_and_blob_folder_are_made_owner_only() {
    let dir = tempfile::tempdir().unwrap();
    let blobs = dir.path().join("blobs");
    std::fs::create_dir(&blobs).unwrap();
    std::fs::set_permissions(&blobs, std::fs::Permissions::from_mode(0o755)).unwrap();
    // An empty file is an empty SQLite database; -wal and -shm as a crashed older version left them.
    for file in database_files(dir.path()) {
        std::fs::write(&file, b"").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let server = TestServer::start_on(dir, |_| {}).await;
    server.admin().await;
    assert_eq!(mode(&server.dir.path().join("blobs")), 0o700);
    for file in database_files(server.dir.path()) {
        assert_eq!(mode(&file), 0o600, "{}", file.display());
    }
}
