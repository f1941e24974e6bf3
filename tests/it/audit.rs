//! The audit chain detects edits and deletions, on both backends, through the API and the CLI.

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::*;

async fn verify(server: &TestServer, token: &str) -> Value {
    let response = server.get("/v1/audit/verify", token).await;
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.unwrap()
}

/// A server with a few records: bootstrap, and five logins.
async fn server_with_records(backend: Backend) -> (TestServer, Session) {
    let server = TestServer::start_with(backend, |_| {}).await;
    for _ in 0..5 {
        server.admin().await;
    }
    let admin = server.admin().await;
    let report = verify(&server, &admin.access).await;
    assert_eq!(report["valid"], true, "{report}");
    assert!(report["records"].as_i64().unwrap() >= 8);
    (server, admin)
}

async fn detects_edited_record(backend: Backend) {
    let (server, admin) = server_with_records(backend).await;
    let db = RawDb::open(&server.database_url()).await;
    assert_eq!(
        db.execute("UPDATE audit_log SET outcome = 'failure' WHERE seq = 4")
            .await,
        1
    );
    let report = verify(&server, &admin.access).await;
    assert_eq!(report["valid"], false);
    assert_eq!(report["first_broken"]["seq"], 4);
    assert_eq!(report["first_broken"]["reason"], "record_altered");
}

async fn detects_deleted_record(backend: Backend) {
    let (server, admin) = server_with_records(backend).await;
    let db = RawDb::open(&server.database_url()).await;
    assert_eq!(db.execute("DELETE FROM audit_log WHERE seq = 5").await, 1);
    let report = verify(&server, &admin.access).await;
    assert_eq!(report["valid"], false);
    assert_eq!(report["first_broken"]["seq"], 5);
    assert_eq!(report["first_broken"]["reason"], "record_missing");
}

async fn detects_rewritten_and_renumbered_chain(backend: Backend) {
    // Deleting a record and renumbering the rest hides the gap, but not the broken hash link.
    let (server, admin) = server_with_records(backend).await;
    let db = RawDb::open(&server.database_url()).await;
    db.execute("DELETE FROM audit_log WHERE seq = 3").await;
    db.execute("UPDATE audit_log SET seq = seq - 1 WHERE seq > 3")
        .await;
    let report = verify(&server, &admin.access).await;
    assert_eq!(report["first_broken"]["seq"], 3);
    assert_eq!(report["first_broken"]["reason"], "link_broken");
}

#[tokio::test]
async fn audit_chain_detects_an_edited_record_sqlite() {
    detects_edited_record(Backend::Sqlite).await;
}

#[tokio::test]
async fn audit_chain_detects_an_edited_record_postgres() {
    detects_edited_record(Backend::Postgres).await;
}

#[tokio::test]
async fn audit_chain_detects_a_deleted_record_sqlite() {
    detects_deleted_record(Backend::Sqlite).await;
}

#[tokio::test]
async fn audit_chain_detects_a_deleted_record_postgres() {
    detects_deleted_record(Backend::Postgres).await;
}

#[tokio::test]
async fn audit_chain_detects_a_renumbered_chain_sqlite() {
    detects_rewritten_and_renumbered_chain(Backend::Sqlite).await;
}

#[tokio::test]
async fn audit_verify_command_exits_non_zero_on_a_broken_chain() {
    let (server, _) = server_with_records(Backend::Sqlite).await;
    let run = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_sonicgw"))
            .args(["audit", "verify"])
            .env("SONICGW_DATA_DIR", server.dir.path())
            .output()
            .unwrap()
    };
    let ok = run();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let db = RawDb::open(&server.database_url()).await;
    db.execute("UPDATE audit_log SET client_ip = '10.9.9.9' WHERE seq = 2")
        .await;
    let broken = run();
    assert_eq!(broken.status.code(), Some(1));
    let report: Value = serde_json::from_slice(&broken.stdout).unwrap();
    assert_eq!(report["first_broken"]["seq"], 2);
}

#[tokio::test]
async fn audit_records_carry_context_and_filter_and_page() {
    let (server, admin) = server_with_records(Backend::Sqlite).await;
    let response = server
        .client
        .get(server.url("/v1/audit?action=auth.login&limit=2"))
        .bearer_auth(&admin.access)
        .header("user-agent", "audit-test/1.0")
        .header("x-request-id", "req-audit-1")
        .send()
        .await
        .unwrap();
    let page: Value = response.json().await.unwrap();
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert!(
        items[0]["seq"].as_i64() > items[1]["seq"].as_i64(),
        "newest first"
    );
    let first = &items[0];
    assert_eq!(first["action"], "auth.login");
    assert_eq!(first["outcome"], "success");
    assert_eq!(first["client_ip"], "127.0.0.1");
    assert!(first["request_id"].as_str().is_some());
    let cursor = page["next_cursor"].as_str().unwrap();

    let next: Value = server
        .get(
            &format!("/v1/audit?action=auth.login&limit=2&cursor={cursor}"),
            &admin.access,
        )
        .await
        .json()
        .await
        .unwrap();
    let next_items = next["items"].as_array().unwrap();
    assert!(next_items[0]["seq"].as_i64() < items[1]["seq"].as_i64());

    let future = server
        .get("/v1/audit?since=2999-01-01T00:00:00Z", &admin.access)
        .await;
    let future: Value = future.json().await.unwrap();
    assert_eq!(future["items"].as_array().unwrap().len(), 0);
    let bad = server.get("/v1/audit?since=yesterday", &admin.access).await;
    assert_eq!(bad.status(), StatusCode::UNPROCESSABLE_ENTITY);

    let jsonl = server
        .get("/v1/audit?format=jsonl&limit=3", &admin.access)
        .await;
    assert_eq!(jsonl.headers()["content-type"], "application/jsonl");
    let text = jsonl.text().await.unwrap();
    assert_eq!(text.lines().count(), 3);
    for line in text.lines() {
        serde_json::from_str::<Value>(line).unwrap();
    }
    let csv = server
        .get("/v1/audit?format=csv&limit=3", &admin.access)
        .await;
    assert!(csv.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/csv"));
    let text = csv.text().await.unwrap();
    assert!(text.starts_with("seq,at,actor_kind,request_id"));
    assert_eq!(text.lines().count(), 4);
    // A filter on an action that is never recorded is a mistake, said so.
    let unknown = server
        .get("/v1/audit?action=auth.logn", &admin.access)
        .await;
    assert_eq!(unknown.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body: Value = unknown.json().await.unwrap();
    assert_eq!(body["errors"][0]["field"], "action");
}

#[tokio::test]
async fn concurrent_events_keep_a_single_unbroken_chain_postgres() {
    let server = TestServer::start_with(Backend::Postgres, |_| {}).await;
    let logins = (0..12).map(|_| server.try_login("admin", ADMIN_PASSWORD, None));
    for response in futures::future::join_all(logins).await {
        assert_eq!(response.status(), StatusCode::OK);
    }
    let admin = server.admin().await;
    let report = verify(&server, &admin.access).await;
    assert_eq!(report["valid"], true, "{report}");
}

async fn deleting_the_newest_records_is_detected(backend: Backend) {
    let (server, admin) = server_with_records(backend).await;
    let state = server.state();
    let checkpoint =
        sonicgw::audit::checkpoint::create(state.store.as_ref(), &state.tokens, &state.issuer)
            .await
            .unwrap()
            .expect("the chain has records");
    let again =
        sonicgw::audit::checkpoint::create(state.store.as_ref(), &state.tokens, &state.issuer)
            .await
            .unwrap()
            .unwrap();
    assert_eq!(
        again, checkpoint,
        "a checkpoint of the same head is not signed twice"
    );
    server.admin().await;
    let report = verify(&server, &admin.access).await;
    assert_eq!(report["valid"], true, "{report}");
    assert_eq!(report["checkpoint"]["seq"], checkpoint.seq);
    assert_eq!(report["checkpoint"]["valid"], true);

    // The tail from the checkpoint on is deleted: what is left is a consistent, shorter chain.
    let db = RawDb::open(&server.database_url()).await;
    let deleted = db
        .execute(&format!(
            "DELETE FROM audit_log WHERE seq >= {}",
            checkpoint.seq
        ))
        .await;
    assert!(deleted >= 2);
    let report = verify(&server, &admin.access).await;
    assert!(report["first_broken"].is_null(), "{report}");
    assert_eq!(report["valid"], false, "{report}");
    assert_eq!(report["checkpoint"]["reason"], "records_missing");

    // Nor can the stored checkpoint be edited to match.
    db.execute(&format!(
        "UPDATE audit_checkpoints SET seq = 1 WHERE seq = {}",
        checkpoint.seq
    ))
    .await;
    let report = verify(&server, &admin.access).await;
    assert_eq!(
        report["checkpoint"]["reason"], "checkpoint_altered",
        "{report}"
    );
}

#[tokio::test]
async fn deleting_the_newest_audit_records_is_detected_against_the_checkpoint_sqlite() {
    deleting_the_newest_records_is_detected(Backend::Sqlite).await;
}

#[tokio::test]
async fn deleting_the_newest_audit_records_is_detected_against_the_checkpoint_postgres() {
    deleting_the_newest_records_is_detected(Backend::Postgres).await;
}

#[tokio::test]
async fn an_exported_checkpoint_still_anchors_the_chain_when_the_stored_ones_are_gone() {
    let (server, _) = server_with_records(Backend::Sqlite).await;
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_sonicgw"))
            .args(args)
            .env("SONICGW_DATA_DIR", server.dir.path())
            .output()
            .unwrap()
    };
    let signed = run(&["audit", "checkpoint"]);
    assert!(
        signed.status.success(),
        "{}",
        String::from_utf8_lossy(&signed.stderr)
    );
    let checkpoint: Value = serde_json::from_slice(&signed.stdout).unwrap();
    let exported = server.dir.path().join("checkpoint.jws");
    std::fs::write(&exported, checkpoint["document"].as_str().unwrap()).unwrap();
    // A key rotation later, the checkpoint still verifies.
    assert!(run(&["keys", "rotate"]).status.success());
    let exported_arg = exported.to_str().unwrap();
    let ok = run(&["audit", "verify", "--checkpoint", exported_arg]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );

    let seq = checkpoint["seq"].as_i64().unwrap();
    let db = RawDb::open(&server.database_url()).await;
    db.execute("DELETE FROM audit_checkpoints").await;
    db.execute(&format!("DELETE FROM audit_log WHERE seq >= {seq}"))
        .await;
    let unanchored = run(&["audit", "verify"]);
    assert!(
        unanchored.status.success(),
        "without a checkpoint the shorter chain looks whole"
    );
    let anchored = run(&["audit", "verify", "--checkpoint", exported_arg]);
    assert_eq!(anchored.status.code(), Some(1));
    let report: Value = serde_json::from_slice(&anchored.stdout).unwrap();
    assert_eq!(
        report["checkpoint"]["reason"], "records_missing",
        "{report}"
    );

    // A checkpoint whose signature does not hold anchors nothing.
    let document = checkpoint["document"].as_str().unwrap();
    let (signed_part, signature) = document.rsplit_once('.').unwrap();
    let mut signature: Vec<char> = signature.chars().collect();
    signature[5] = if signature[5] == 'A' { 'B' } else { 'A' };
    let forged = format!(
        "{signed_part}.{}",
        signature.into_iter().collect::<String>()
    );
    std::fs::write(&exported, forged).unwrap();
    let report: Value =
        serde_json::from_slice(&run(&["audit", "verify", "--checkpoint", exported_arg]).stdout)
            .unwrap();
    assert_eq!(
        report["checkpoint"]["reason"], "signature_invalid",
        "{report}"
    );
}
