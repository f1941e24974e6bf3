//! One storage suite, run against both backends.

use sonicgw::domain::{FamilyId, Jti, PlanName, Role, TenantId, TenantName, UserId, Username};
use sonicgw::storage::{
    connect, NewAuditRecord, QueuedWebhook, RefreshTokenRecord, RevokedToken, Store, StoreError,
    TenantRecord, TenantScope, TenantUpdate, TokenId, UserRecord,
};
use sonicgw::time::UnixMillis;

use crate::helpers::PgDatabase;

fn tenant(name: &str) -> TenantRecord {
    TenantRecord {
        id: TenantId::generate(),
        name: TenantName::parse(name).unwrap(),
        plan: PlanName::from_stored("free".into()),
        created_at: UnixMillis::from_millis(1),
        updated_at: UnixMillis::from_millis(1),
    }
}

fn user(tenant: TenantId, name: &str) -> UserRecord {
    UserRecord {
        id: UserId::generate(),
        tenant_id: tenant,
        username: Username::parse(name).unwrap(),
        password_hash: "$argon2id$placeholder".into(),
        role: Role::User,
        plan: None,
        disabled: false,
        created_at: UnixMillis::from_millis(1),
        updated_at: UnixMillis::from_millis(1),
    }
}

async fn tenants_and_users_are_scoped(store: &dyn Store) {
    let a = tenant("a");
    let b = tenant("b");
    store.insert_tenant(&a).await.unwrap();
    store.insert_tenant(&b).await.unwrap();
    assert!(matches!(
        store.insert_tenant(&tenant("a")).await,
        Err(StoreError::Conflict)
    ));
    let alice = user(a.id, "alice");
    let bob = user(b.id, "bob");
    store.insert_user(&alice).await.unwrap();
    store.insert_user(&bob).await.unwrap();
    assert!(matches!(
        store.insert_user(&user(a.id, "alice")).await,
        Err(StoreError::Conflict)
    ));
    store.insert_user(&user(b.id, "alice")).await.unwrap();

    let in_a = TenantScope::tenant(a.id);
    assert_eq!(
        store.user(in_a, alice.id).await.unwrap(),
        Some(alice.clone())
    );
    assert_eq!(store.user(in_a, bob.id).await.unwrap(), None);
    assert_eq!(store.list_users(in_a).await.unwrap().len(), 1);
    assert_eq!(
        store
            .list_users(TenantScope::operator())
            .await
            .unwrap()
            .len(),
        3
    );
    assert_eq!(
        store
            .users_by_username(&Username::parse("alice").unwrap())
            .await
            .unwrap()
            .len(),
        2
    );
    assert_eq!(store.tenant(in_a, b.id).await.unwrap(), None);

    let mut changed = bob.clone();
    changed.disabled = true;
    changed.role = Role::Admin;
    assert!(
        !store.update_user(in_a, &changed).await.unwrap(),
        "out of scope"
    );
    assert!(store
        .update_user(TenantScope::tenant(b.id), &changed)
        .await
        .unwrap());
    assert_eq!(
        store
            .user(TenantScope::operator(), bob.id)
            .await
            .unwrap()
            .unwrap(),
        changed
    );
    assert!(!store.delete_user(in_a, bob.id).await.unwrap());
    assert!(store
        .delete_user(TenantScope::operator(), bob.id)
        .await
        .unwrap());

    let update = TenantUpdate {
        name: None,
        plan: Some(PlanName::from_stored("pro".into())),
    };
    let updated = store
        .update_tenant(a.id, &update, UnixMillis::from_millis(5))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(updated.plan.as_str(), "pro");
    assert_eq!(updated.name.as_str(), "a");
    assert_eq!(store.count_tenants().await.unwrap(), 2);
}

async fn refresh_tokens_are_used_once(store: &dyn Store) {
    let t = tenant("t");
    store.insert_tenant(&t).await.unwrap();
    let u = user(t.id, "u");
    store.insert_user(&u).await.unwrap();
    let f1 = FamilyId::parse("f1").unwrap();
    let (j1, j2) = (Jti::parse("j1").unwrap(), Jti::parse("j2").unwrap());
    let record = RefreshTokenRecord {
        token_hash: "h1".into(),
        family_id: f1.clone(),
        user_id: u.id,
        tenant_id: t.id,
        issued_at: UnixMillis::from_millis(10),
        expires_at: UnixMillis::from_millis(i64::MAX / 2),
        used_at: None,
        revoked_at: None,
        dpop_jkt: None,
    };
    store.insert_refresh_token(&record).await.unwrap();
    store
        .insert_refresh_token(&RefreshTokenRecord {
            token_hash: "h2".into(),
            dpop_jkt: Some("thumbprint-2".into()),
            ..record.clone()
        })
        .await
        .unwrap();
    // The key binding reads back as written.
    assert_eq!(
        store
            .refresh_token("h2")
            .await
            .unwrap()
            .unwrap()
            .dpop_jkt
            .as_deref(),
        Some("thumbprint-2")
    );
    assert_eq!(
        store.refresh_token("h1").await.unwrap().unwrap().dpop_jkt,
        None
    );
    assert!(store
        .mark_refresh_token_used("h1", UnixMillis::from_millis(20))
        .await
        .unwrap());
    assert!(!store
        .mark_refresh_token_used("h1", UnixMillis::from_millis(21))
        .await
        .unwrap());
    assert_eq!(
        store.refresh_token("h1").await.unwrap().unwrap().used_at,
        Some(UnixMillis::from_millis(20))
    );
    assert_eq!(
        store
            .revoke_refresh_family(&f1, UnixMillis::from_millis(30))
            .await
            .unwrap(),
        2
    );
    assert!(
        !store
            .mark_refresh_token_used("h2", UnixMillis::from_millis(31))
            .await
            .unwrap(),
        "revoked"
    );

    let now = UnixMillis::from_millis(1_000);
    let live = TokenId {
        jti: j1.clone(),
        expires_at: UnixMillis::from_millis(5_000),
    };
    let dead = TokenId {
        jti: j2,
        expires_at: UnixMillis::from_millis(500),
    };
    store.insert_access_token(&live, u.id, &f1).await.unwrap();
    store.insert_access_token(&dead, u.id, &f1).await.unwrap();
    assert_eq!(
        store.family_access_tokens(&f1, now).await.unwrap(),
        vec![live.clone()]
    );
    assert_eq!(
        store.user_access_tokens(u.id, now).await.unwrap(),
        vec![live.clone()]
    );
    assert_eq!(
        store.access_token_family(&j1).await.unwrap(),
        Some(f1.clone())
    );

    let revoked = RevokedToken {
        jti: j1,
        expires_at: UnixMillis::from_millis(5_000),
        revoked_at: UnixMillis::from_millis(900),
    };
    store.insert_revoked_token(&revoked).await.unwrap();
    store.insert_revoked_token(&revoked).await.unwrap();
    assert_eq!(
        store
            .revoked_tokens_since(UnixMillis::from_millis(800), now)
            .await
            .unwrap(),
        vec![revoked.clone()]
    );
    assert!(store
        .revoked_tokens_since(UnixMillis::from_millis(901), now)
        .await
        .unwrap()
        .is_empty());
    store
        .purge_expired(UnixMillis::from_millis(6_000))
        .await
        .unwrap();
    assert!(store
        .revoked_tokens_since(UnixMillis::from_millis(0), UnixMillis::from_millis(0))
        .await
        .unwrap()
        .is_empty());
}

async fn audit_appends_chain_under_concurrency(store: std::sync::Arc<dyn Store>) {
    let appends = (0..40).map(|i| {
        let store = std::sync::Arc::clone(&store);
        tokio::spawn(async move {
            store
                .append_audit(&NewAuditRecord {
                    at: UnixMillis::from_millis(i),
                    action: format!("test.{i}"),
                    outcome: "success".into(),
                    ..NewAuditRecord::default()
                })
                .await
                .unwrap()
        })
    });
    for handle in appends {
        handle.await.unwrap();
    }
    let report = sonicgw::audit::verify_chain(store.as_ref()).await.unwrap();
    assert!(report.valid, "{report:?}");
    assert_eq!(report.records, 40);
}

/// The webhook outbox: queued once per message, taken by one process at a time, held while it is
/// attempted, due again when rescheduled or when its holder's hold ends, gone when removed.
async fn webhook_outbox_hands_each_delivery_to_one_taker(store: &dyn Store) {
    let at = UnixMillis::from_millis;
    let webhook = QueuedWebhook {
        message_id: "msg_1_succeeded".into(),
        tenant_id: TenantId::generate(),
        url: "https://hooks.example/a".into(),
        body: "{}".into(),
        attempts: 0,
    };
    assert!(store.queue_webhook(&webhook, at(1_000)).await.unwrap());
    assert!(
        !store.queue_webhook(&webhook, at(1_001)).await.unwrap(),
        "queued once per message"
    );
    assert!(store
        .claim_webhooks(at(999), at(60_000), 10)
        .await
        .unwrap()
        .is_empty());
    let taken = store
        .claim_webhooks(at(1_000), at(61_000), 10)
        .await
        .unwrap();
    assert_eq!(taken, vec![webhook.clone()]);
    assert!(
        store
            .claim_webhooks(at(2_000), at(62_000), 10)
            .await
            .unwrap()
            .is_empty(),
        "held by its taker"
    );
    // The taker died: due again when its hold ends, as the second attempt.
    let retaken = store
        .claim_webhooks(at(61_000), at(121_000), 10)
        .await
        .unwrap();
    assert_eq!(retaken.len(), 1);
    assert_eq!(retaken[0].attempts, 1);
    store
        .retry_webhook(&webhook.message_id, at(70_000))
        .await
        .unwrap();
    assert!(store
        .claim_webhooks(at(69_999), at(130_000), 10)
        .await
        .unwrap()
        .is_empty());
    let third = store
        .claim_webhooks(at(70_000), at(130_000), 10)
        .await
        .unwrap();
    assert_eq!(third[0].attempts, 2);
    store.remove_webhook(&webhook.message_id).await.unwrap();
    assert!(store
        .claim_webhooks(at(999_999), at(1_999_999), 10)
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn storage_webhook_outbox_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let store = connect(&format!("sqlite://{}/s.db", dir.path().display()))
        .await
        .unwrap();
    webhook_outbox_hands_each_delivery_to_one_taker(store.as_ref()).await;
}

#[tokio::test]
async fn storage_webhook_outbox_postgres() {
    let db = PgDatabase::create().await;
    webhook_outbox_hands_each_delivery_to_one_taker(connect(&db.url).await.unwrap().as_ref()).await;
}

async fn run_suite(url: &str) {
    tenants_and_users_are_scoped(connect(url).await.unwrap().as_ref()).await;
}

#[tokio::test]
async fn storage_scopes_tenants_and_users_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    run_suite(&format!("sqlite://{}/s.db", dir.path().display())).await;
}

#[tokio::test]
async fn storage_scopes_tenants_and_users_postgres() {
    let db = PgDatabase::create().await;
    run_suite(&db.url).await;
}

#[tokio::test]
async fn storage_uses_refresh_tokens_once_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let store = connect(&format!("sqlite://{}/s.db", dir.path().display()))
        .await
        .unwrap();
    refresh_tokens_are_used_once(store.as_ref()).await;
}

#[tokio::test]
async fn storage_uses_refresh_tokens_once_postgres() {
    let db = PgDatabase::create().await;
    refresh_tokens_are_used_once(connect(&db.url).await.unwrap().as_ref()).await;
}

#[tokio::test]
async fn storage_chains_concurrent_audit_appends_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    audit_appends_chain_under_concurrency(
        connect(&format!("sqlite://{}/s.db", dir.path().display()))
            .await
            .unwrap(),
    )
    .await;
}

#[tokio::test]
async fn storage_chains_concurrent_audit_appends_postgres() {
    let db = PgDatabase::create().await;
    audit_appends_chain_under_concurrency(connect(&db.url).await.unwrap()).await;
}

#[tokio::test]
async fn migrations_are_idempotent_on_reconnect() {
    let db = PgDatabase::create().await;
    connect(&db.url).await.unwrap();
    connect(&db.url).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/s.db", dir.path().display());
    connect(&url).await.unwrap();
    connect(&url).await.unwrap();
}
