//! `sonicgw migrate` as a deploy step and `serve --no-migrate` on both backends: the real binary
//! on its own SQLite file or PostgreSQL database; `/readyz` follows the schema.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::*;
use crate::redis_replicas::Replica;

/// The binary with `args`, the database and data directory given, to completion.
fn sonicgw(args: &[&str], database_url: &str, data_dir: &std::path::Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sonicgw"))
        .args(args)
        .env("SONICGW_DATABASE_URL", database_url)
        .env("SONICGW_DATA_DIR", data_dir)
        .env("SONICGW_LISTEN", "127.0.0.1:0")
        .env("SONICGW_METRICS_LISTEN", "")
        .env("SONICGW_ADMIN_PASSWORD", ADMIN_PASSWORD)
        .env("SONICGW_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("sonicgw runs")
}

async fn migrate_is_a_deploy_step_and_serve_no_migrate_requires_it(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let pg = match backend {
        Backend::Postgres => Some(PgDatabase::create().await),
        Backend::Sqlite => None,
    };
    let url = match &pg {
        Some(pg) => pg.url.clone(),
        None => format!("sqlite://{}/sonicgw.db", dir.path().display()),
    };

    // Before any migration: `serve --no-migrate` refuses to start, saying what to do.
    let refused = sonicgw(&["serve", "--no-migrate"], &url, dir.path());
    assert!(!refused.status.success(), "served on an empty schema");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("schema is behind") && stderr.contains("sonicgw migrate"),
        "{stderr}"
    );
    assert!(
        !String::from_utf8_lossy(&refused.stdout).contains("listening"),
        "it never listened"
    );
    assert_eq!(
        tables(&url).await,
        0,
        "--no-migrate created nothing in the database"
    );

    // The deploy step: migrations alone; running it again changes nothing.
    for run in ["first", "second"] {
        let migrated = sonicgw(&["migrate"], &url, dir.path());
        assert!(
            migrated.status.success(),
            "{run} migrate: {}",
            String::from_utf8_lossy(&migrated.stderr)
        );
        assert!(
            String::from_utf8_lossy(&migrated.stdout).contains("database schema is current"),
            "{run} migrate said {}",
            String::from_utf8_lossy(&migrated.stdout)
        );
    }
    assert!(tables(&url).await > 5, "the schema exists");
    assert_eq!(
        count(&url, "SELECT COUNT(*) FROM tenants").await,
        0,
        "migrate only migrates: no tenant, no admin"
    );

    // Now `serve --no-migrate` starts and is ready.
    let replica = Replica::start_with_args(
        &["serve", "--no-migrate"],
        &[
            ("SONICGW_DATABASE_URL", url.clone()),
            ("SONICGW_DATA_DIR", dir.path().display().to_string()),
        ],
        dir.path().join("serve.log"),
    );
    let ready = reqwest::get(format!("{}/readyz", replica.base))
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(ready["migrations"], true, "{ready}");
    assert_eq!(ready["database"], true, "{ready}");
    assert_eq!(ready["shutting_down"], false, "{ready}");
}

#[tokio::test]
async fn migrate_is_a_deploy_step_and_serve_no_migrate_requires_it_on_sqlite() {
    migrate_is_a_deploy_step_and_serve_no_migrate_requires_it(Backend::Sqlite).await;
}

#[tokio::test]
async fn migrate_is_a_deploy_step_and_serve_no_migrate_requires_it_on_postgres() {
    migrate_is_a_deploy_step_and_serve_no_migrate_requires_it(Backend::Postgres).await;
}

async fn readiness_fails_when_the_schema_falls_behind(backend: Backend) {
    let server = TestServer::start_with(backend, |_| {}).await;
    let ready = server
        .client
        .get(server.url("/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    // As if this release's newest migration had not run (a replica rolled out before `migrate`).
    let db = RawDb::open(&server.database_url()).await;
    let removed = db
        .execute(
            "DELETE FROM _sqlx_migrations WHERE version = (SELECT MAX(version) FROM _sqlx_migrations)",
        )
        .await;
    assert_eq!(removed, 1);
    let response = server
        .client
        .get(server.url("/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["migrations"], false, "{body}");
    assert_eq!(body["database"], true, "{body}");
    assert_eq!(body["status"], "unavailable", "{body}");
}

#[tokio::test]
async fn readiness_fails_when_the_schema_falls_behind_on_sqlite() {
    readiness_fails_when_the_schema_falls_behind(Backend::Sqlite).await;
}

#[tokio::test]
async fn readiness_fails_when_the_schema_falls_behind_on_postgres() {
    readiness_fails_when_the_schema_falls_behind(Backend::Postgres).await;
}

#[tokio::test]
async fn serve_no_migrate_refuses_a_schema_missing_one_migration() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/sonicgw.db", dir.path().display());
    assert!(sonicgw(&["migrate"], &url, dir.path()).status.success());
    let removed = count(
        &url,
        "DELETE FROM _sqlx_migrations WHERE version = (SELECT MAX(version) FROM _sqlx_migrations) \
         RETURNING 1",
    )
    .await;
    assert_eq!(removed, 1);
    let refused = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::task::spawn_blocking({
            let (url, path) = (url.clone(), dir.path().to_path_buf());
            move || sonicgw(&["serve", "--no-migrate"], &url, &path)
        }),
    )
    .await
    .expect("refused promptly")
    .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("are not applied"), "{stderr}");
}

/// Tables in the database, sqlx's bookkeeping included.
async fn tables(url: &str) -> i64 {
    if url.starts_with("postgres") {
        count(
            url,
            "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = 'public'",
        )
        .await
    } else {
        count(
            url,
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
        )
        .await
    }
}

/// One number from the database at `url`, on a connection closed afterwards (the binary under
/// test is the database's user; this only looks).
async fn count(url: &str, sql: &str) -> i64 {
    use sqlx::Connection;
    if url.starts_with("postgres") {
        let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
        let n = sqlx::query_scalar(sql).fetch_one(&mut conn).await.unwrap();
        conn.close().await.unwrap();
        n
    } else {
        let mut conn = sqlx::SqliteConnection::connect(url).await.unwrap();
        let n = sqlx::query_scalar(sql).fetch_one(&mut conn).await.unwrap();
        conn.close().await.unwrap();
        n
    }
}

#[tokio::test]
async fn replicas_starting_together_on_an_empty_database_bootstrap_it_once() {
    let db = PgDatabase::create().await;
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let opened = futures::future::join_all(dirs.iter().map(|dir| {
        let config = test_config(dir.path(), Some(&db.url));
        async move { sonicgw::app::Core::open(&config).await.unwrap() }
    }))
    .await;
    let results = futures::future::join_all(
        opened
            .iter()
            .map(|core| core.bootstrap(Some(ADMIN_PASSWORD.to_owned()))),
    )
    .await;
    for result in &results {
        assert!(result.is_ok(), "{result:?}");
    }
    assert_eq!(count(&db.url, "SELECT COUNT(*) FROM tenants").await, 1);
    assert_eq!(count(&db.url, "SELECT COUNT(*) FROM users").await, 1);
}
