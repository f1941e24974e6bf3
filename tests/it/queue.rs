//! The durable job queue on both backends: quota atomicity, fairness across tenants, leases.

use std::sync::Arc;

use sonicgw::domain::{
    JobId, JobStatus, PlanName, Role, Stage, TenantId, TenantName, UserId, Username, WorkerId,
};
use sonicgw::storage::jobs::{JobOutcome, JobRecord, JobScope, QuotaLimits, QuotaRefusal};
use sonicgw::storage::{connect, Store, TenantRecord, TenantScope, UserRecord};
use sonicgw::time::UnixMillis;

use crate::helpers::PgDatabase;

fn worker(id: &str) -> WorkerId {
    WorkerId::parse(id).unwrap()
}

/// A store on either backend, kept alive with its database.
struct Db {
    store: Arc<dyn Store>,
    _dir: tempfile::TempDir,
    _pg: Option<PgDatabase>,
}

async fn sqlite() -> Db {
    let dir = tempfile::tempdir().unwrap();
    let store = connect(&format!("sqlite://{}/q.db", dir.path().display()))
        .await
        .unwrap();
    Db {
        store,
        _dir: dir,
        _pg: None,
    }
}

async fn postgres() -> Db {
    let pg = PgDatabase::create().await;
    let store = connect(&pg.url).await.unwrap();
    Db {
        store,
        _dir: tempfile::tempdir().unwrap(),
        _pg: Some(pg),
    }
}

async fn tenant_with_user(store: &dyn Store, name: &str) -> (TenantId, UserId) {
    let tenant = TenantRecord {
        id: TenantId::generate(),
        name: TenantName::parse(name).unwrap(),
        plan: PlanName::from_stored("free".into()),
        created_at: UnixMillis::from_millis(0),
        updated_at: UnixMillis::from_millis(0),
    };
    store.insert_tenant(&tenant).await.unwrap();
    let user = UserRecord {
        id: UserId::generate(),
        tenant_id: tenant.id,
        username: Username::parse("u").unwrap(),
        password_hash: "x".into(),
        role: Role::User,
        plan: None,
        disabled: false,
        created_at: UnixMillis::from_millis(0),
        updated_at: UnixMillis::from_millis(0),
    };
    store.insert_user(&user).await.unwrap();
    (tenant.id, user.id)
}

fn job(tenant: TenantId, user: UserId, created_at: i64) -> JobRecord {
    JobRecord {
        id: JobId::generate(),
        tenant_id: tenant,
        user_id: user,
        status: JobStatus::Queued,
        stage: Stage::Queued,
        progress: 0.0,
        engine: "builtin".into(),
        params: "{}".into(),
        input: "{}".into(),
        output_plan: "{}".into(),
        callback_url: None,
        vtag: 0.0,
        attempts: 0,
        worker_id: None,
        lease_expires_at: None,
        counts_toward_quota: true,
        error_code: None,
        error_message: None,
        error_detail: None,
        result_key: None,
        result_bytes: None,
        created_at: UnixMillis::from_millis(created_at),
        started_at: None,
        finished_at: None,
        updated_at: UnixMillis::from_millis(created_at),
        ignored_parameters: Vec::new(),
    }
}

fn limits(per_day: i64, concurrent: i64) -> QuotaLimits {
    QuotaLimits {
        videos_per_day: per_day,
        max_concurrent_jobs: concurrent,
        priority_weight: 1.0,
        day_start: UnixMillis::from_millis(0),
    }
}

const ENGINES: &[&str] = &["builtin"];

fn engines() -> Vec<String> {
    ENGINES.iter().map(|e| e.to_string()).collect()
}

async fn quota_race_lets_exactly_the_limit_through(db: Db) {
    let (tenant, user) = tenant_with_user(db.store.as_ref(), "racers").await;
    let attempts = (0..8).map(|i| {
        let store = Arc::clone(&db.store);
        tokio::spawn(async move {
            store
                .create_job(&job(tenant, user, i), &limits(100, 3))
                .await
                .unwrap()
        })
    });
    let mut created = 0;
    let mut refused = 0;
    for handle in attempts {
        match handle.await.unwrap() {
            Ok(_) => created += 1,
            Err(QuotaRefusal::Concurrent) => refused += 1,
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((created, refused), (3, 5));
}

#[tokio::test]
async fn simultaneous_jobs_at_the_concurrency_limit_cannot_all_pass_sqlite() {
    quota_race_lets_exactly_the_limit_through(sqlite().await).await;
}

#[tokio::test]
async fn simultaneous_jobs_at_the_concurrency_limit_cannot_all_pass_postgres() {
    quota_race_lets_exactly_the_limit_through(postgres().await).await;
}

async fn daily_quota_counts_and_refunds(db: Db) {
    let store = db.store.as_ref();
    let (tenant, user) = tenant_with_user(store, "daily").await;
    let scope = JobScope {
        tenant: TenantScope::operator(),
        user: None,
    };
    let first = store
        .create_job(&job(tenant, user, 1), &limits(2, 10))
        .await
        .unwrap()
        .unwrap();
    store
        .create_job(&job(tenant, user, 2), &limits(2, 10))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        store
            .create_job(&job(tenant, user, 3), &limits(2, 10))
            .await
            .unwrap()
            .unwrap_err(),
        QuotaRefusal::Daily
    );
    // Cancelling a queued job gives its quota back.
    let cancelled = store
        .cancel_job(scope, first.id, UnixMillis::from_millis(10))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cancelled.status, JobStatus::Cancelled);
    assert!(!cancelled.counts_toward_quota);
    store
        .create_job(&job(tenant, user, 4), &limits(2, 10))
        .await
        .unwrap()
        .unwrap();
    // Deleting a job that already started does not give its quota back.
    let claimed = store
        .claim_job(
            &worker("w"),
            &engines(),
            UnixMillis::from_millis(5),
            UnixMillis::from_millis(100),
        )
        .await
        .unwrap()
        .unwrap();
    let deleted = store
        .delete_job(scope, claimed.id, UnixMillis::from_millis(6))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        deleted.status,
        JobStatus::Cancelled,
        "a running job is cancelled by deletion"
    );
    assert!(
        store.job(scope, claimed.id).await.unwrap().is_none(),
        "deleted jobs are hidden"
    );
    let refused = store
        .create_job(&job(tenant, user, 7), &limits(2, 10))
        .await
        .unwrap();
    assert_eq!(refused.unwrap_err(), QuotaRefusal::Daily);
    // Jobs from before the quota day do not count.
    let tomorrow = QuotaLimits {
        day_start: UnixMillis::from_millis(100),
        ..limits(2, 10)
    };
    store
        .create_job(&job(tenant, user, 101), &tomorrow)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn daily_quota_counts_jobs_and_cancel_gives_quota_back_sqlite() {
    daily_quota_counts_and_refunds(sqlite().await).await;
}

#[tokio::test]
async fn daily_quota_counts_jobs_and_cancel_gives_quota_back_postgres() {
    daily_quota_counts_and_refunds(postgres().await).await;
}

async fn fair_order(db: Db) {
    let store = db.store.as_ref();
    let (a, a_user) = tenant_with_user(store, "a").await;
    let (b, b_user) = tenant_with_user(store, "b").await;
    let plenty = limits(1000, 1000);
    for i in 0..100 {
        store
            .create_job(&job(a, a_user, i), &plenty)
            .await
            .unwrap()
            .unwrap();
    }
    // One worker has taken A's first job when B submits.
    let first = store
        .claim_job(
            &worker("w1"),
            &engines(),
            UnixMillis::from_millis(1000),
            UnixMillis::from_millis(2000),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.tenant_id, a);
    let b_job = store
        .create_job(&job(b, b_user, 1000), &plenty)
        .await
        .unwrap()
        .unwrap();
    assert!(store.queue_position(&b_job).await.unwrap() <= 1);
    let mut dispatched_before_b = 0;
    loop {
        let next = store
            .claim_job(
                &worker("w1"),
                &engines(),
                UnixMillis::from_millis(1001),
                UnixMillis::from_millis(2000),
            )
            .await
            .unwrap()
            .unwrap();
        if next.tenant_id == b {
            break;
        }
        dispatched_before_b += 1;
    }
    assert!(
        dispatched_before_b <= 1,
        "B waited behind {dispatched_before_b} of A's jobs"
    );
}

#[tokio::test]
async fn second_tenant_first_job_starts_before_first_tenant_backlog_sqlite() {
    fair_order(sqlite().await).await;
}

#[tokio::test]
async fn second_tenant_first_job_starts_before_first_tenant_backlog_postgres() {
    fair_order(postgres().await).await;
}

async fn weighted_share(db: Db) {
    let store = db.store.as_ref();
    let (free, free_user) = tenant_with_user(store, "free").await;
    let (pro, pro_user) = tenant_with_user(store, "pro").await;
    for i in 0..40 {
        store
            .create_job(&job(free, free_user, i), &limits(1000, 1000))
            .await
            .unwrap()
            .unwrap();
        let weighted = QuotaLimits {
            priority_weight: 4.0,
            ..limits(1000, 1000)
        };
        store
            .create_job(&job(pro, pro_user, i), &weighted)
            .await
            .unwrap()
            .unwrap();
    }
    let mut pro_count = 0;
    for _ in 0..20 {
        let next = store
            .claim_job(
                &worker("w"),
                &engines(),
                UnixMillis::from_millis(1),
                UnixMillis::from_millis(2),
            )
            .await
            .unwrap()
            .unwrap();
        if next.tenant_id == pro {
            pro_count += 1;
        }
    }
    assert_eq!(
        pro_count, 16,
        "weight 4 against 1 gets 4 of every 5 dispatches"
    );
}

#[tokio::test]
async fn priority_weight_shares_the_queue_sqlite() {
    weighted_share(sqlite().await).await;
}

#[tokio::test]
async fn priority_weight_shares_the_queue_postgres() {
    weighted_share(postgres().await).await;
}

async fn lease_expiry(db: Db) {
    let store = db.store.as_ref();
    let (tenant, user) = tenant_with_user(store, "lease").await;
    let created = store
        .create_job(&job(tenant, user, 0), &limits(10, 10))
        .await
        .unwrap()
        .unwrap();
    let claimed = store
        .claim_job(
            &worker("crashed-worker"),
            &engines(),
            UnixMillis::from_millis(10),
            UnixMillis::from_millis(20),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(claimed.id, created.id);
    assert_eq!(claimed.attempts, 1);
    assert!(
        store
            .claim_job(
                &worker("other"),
                &engines(),
                UnixMillis::from_millis(11),
                UnixMillis::from_millis(21)
            )
            .await
            .unwrap()
            .is_none(),
        "leased job is not claimable"
    );
    assert!(
        store
            .expire_leases(UnixMillis::from_millis(19), 2)
            .await
            .unwrap()
            .is_empty(),
        "lease still valid"
    );
    let expired = store
        .expire_leases(UnixMillis::from_millis(21), 2)
        .await
        .unwrap();
    assert_eq!(expired.len(), 1);
    assert!(expired[0].requeued);
    // The crashed worker's late reports are refused.
    assert!(!store
        .heartbeat(
            created.id,
            &worker("crashed-worker"),
            UnixMillis::from_millis(22),
            UnixMillis::from_millis(40)
        )
        .await
        .unwrap());
    let again = store
        .claim_job(
            &worker("w2"),
            &engines(),
            UnixMillis::from_millis(23),
            UnixMillis::from_millis(30),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!((again.id, again.attempts), (created.id, 2));
    let outcome = JobOutcome::Succeeded {
        result_key: "k".into(),
        result_bytes: 1,
    };
    assert!(store
        .finish_job(
            created.id,
            &worker("crashed-worker"),
            &outcome,
            UnixMillis::from_millis(24)
        )
        .await
        .unwrap()
        .is_none());
    // Second lease expiry: out of attempts, failed with worker_lost and quota refunded.
    let expired = store
        .expire_leases(UnixMillis::from_millis(31), 2)
        .await
        .unwrap();
    assert!(!expired[0].requeued);
    assert_eq!(expired[0].job.status, JobStatus::Failed);
    assert_eq!(expired[0].job.error_code.as_deref(), Some("worker_lost"));
    assert!(!expired[0].job.counts_toward_quota);
}

#[tokio::test]
async fn expired_lease_requeues_then_fails_with_worker_lost_sqlite() {
    lease_expiry(sqlite().await).await;
}

#[tokio::test]
async fn expired_lease_requeues_then_fails_with_worker_lost_postgres() {
    lease_expiry(postgres().await).await;
}

async fn release_on_shutdown(db: Db) {
    let store = db.store.as_ref();
    let (tenant, user) = tenant_with_user(store, "release").await;
    let created = store
        .create_job(&job(tenant, user, 0), &limits(10, 10))
        .await
        .unwrap()
        .unwrap();
    let claim = |who: &'static str, at: i64| async move {
        store
            .claim_job(
                &worker(who),
                &engines(),
                UnixMillis::from_millis(at),
                UnixMillis::from_millis(at + 1_000_000),
            )
            .await
            .unwrap()
    };
    let claimed = claim("stopping-worker", 10).await.unwrap();
    assert_eq!(claimed.attempts, 1);
    assert!(
        store
            .release_job(created.id, &worker("another"), UnixMillis::from_millis(11))
            .await
            .unwrap()
            .is_none(),
        "only the job's own worker hands it back"
    );
    let released = store
        .release_job(
            created.id,
            &worker("stopping-worker"),
            UnixMillis::from_millis(12),
        )
        .await
        .unwrap()
        .expect("released");
    assert_eq!(released.status, JobStatus::Queued);
    assert_eq!(released.attempts, 0, "the attempt is given back");
    assert!(
        store
            .release_job(
                created.id,
                &worker("stopping-worker"),
                UnixMillis::from_millis(13)
            )
            .await
            .unwrap()
            .is_none(),
        "a queued job is not released twice"
    );
    // Claimable at once, though the first lease (a million ms) is far from over; a late heartbeat
    // of the stopped worker is refused.
    let again = claim("next-worker", 14).await.expect("claimable at once");
    assert_eq!((again.id, again.attempts), (created.id, 1));
    assert!(!store
        .heartbeat(
            created.id,
            &worker("stopping-worker"),
            UnixMillis::from_millis(15),
            UnixMillis::from_millis(40)
        )
        .await
        .unwrap());
}

#[tokio::test]
async fn release_hands_a_running_job_back_without_using_an_attempt_sqlite() {
    release_on_shutdown(sqlite().await).await;
}

#[tokio::test]
async fn release_hands_a_running_job_back_without_using_an_attempt_postgres() {
    release_on_shutdown(postgres().await).await;
}

async fn concurrent_claims(db: Db) {
    let (tenant, user) = tenant_with_user(db.store.as_ref(), "claims").await;
    for i in 0..20 {
        db.store
            .create_job(&job(tenant, user, i), &limits(100, 100))
            .await
            .unwrap()
            .unwrap();
    }
    let workers = (0..4).map(|w| {
        let store = Arc::clone(&db.store);
        tokio::spawn(async move {
            let mut mine = Vec::new();
            while let Some(job) = store
                .claim_job(
                    &worker(&format!("w{w}")),
                    &engines(),
                    UnixMillis::from_millis(1),
                    UnixMillis::from_millis(1000),
                )
                .await
                .unwrap()
            {
                mine.push(job.id);
            }
            mine
        })
    });
    let mut all = Vec::new();
    for handle in workers {
        all.extend(handle.await.unwrap());
    }
    let count = all.len();
    all.sort();
    all.dedup();
    assert_eq!(
        (count, all.len()),
        (20, 20),
        "every job claimed exactly once"
    );
}

#[tokio::test]
async fn concurrent_workers_claim_each_job_once_sqlite() {
    concurrent_claims(sqlite().await).await;
}

#[tokio::test]
async fn concurrent_workers_claim_each_job_once_postgres() {
    concurrent_claims(postgres().await).await;
}

async fn scoping_and_idempotency(db: Db) {
    use sonicgw::storage::jobs::IdempotencyState;
    let store = db.store.as_ref();
    let (a, a_user) = tenant_with_user(store, "scope-a").await;
    let (b, _) = tenant_with_user(store, "scope-b").await;
    let created = store
        .create_job(&job(a, a_user, 5), &limits(10, 10))
        .await
        .unwrap()
        .unwrap();
    let other_tenant = JobScope {
        tenant: TenantScope::tenant(b),
        user: None,
    };
    assert!(store.job(other_tenant, created.id).await.unwrap().is_none());
    assert!(store
        .cancel_job(other_tenant, created.id, UnixMillis::from_millis(1))
        .await
        .unwrap()
        .is_none());
    assert!(store
        .delete_job(other_tenant, created.id, UnixMillis::from_millis(1))
        .await
        .unwrap()
        .is_none());
    let own = JobScope {
        tenant: TenantScope::tenant(a),
        user: Some(a_user),
    };
    assert_eq!(store.list_jobs(own, None, None, 10).await.unwrap().len(), 1);
    assert_eq!(
        store
            .list_jobs(own, Some(JobStatus::Running), None, 10)
            .await
            .unwrap()
            .len(),
        0
    );

    assert_eq!(
        store
            .reserve_idempotency_key(a_user, "k1", "h1", UnixMillis::from_millis(0))
            .await
            .unwrap(),
        IdempotencyState::Reserved
    );
    assert_eq!(
        store
            .reserve_idempotency_key(a_user, "k1", "h1", UnixMillis::from_millis(1))
            .await
            .unwrap(),
        IdempotencyState::InProgress
    );
    assert_eq!(
        store
            .reserve_idempotency_key(a_user, "k1", "h2", UnixMillis::from_millis(1))
            .await
            .unwrap(),
        IdempotencyState::Mismatch
    );
    store
        .complete_idempotency_key(a_user, "k1", created.id)
        .await
        .unwrap();
    assert_eq!(
        store
            .reserve_idempotency_key(a_user, "k1", "h1", UnixMillis::from_millis(2))
            .await
            .unwrap(),
        IdempotencyState::Existing(created.id)
    );
    // After a day the key may be used again.
    let day = 24 * 3600 * 1000;
    assert_eq!(
        store
            .reserve_idempotency_key(a_user, "k1", "h9", UnixMillis::from_millis(day + 10))
            .await
            .unwrap(),
        IdempotencyState::Reserved
    );
}

#[tokio::test]
async fn jobs_are_tenant_scoped_and_idempotency_keys_behave_sqlite() {
    scoping_and_idempotency(sqlite().await).await;
}

#[tokio::test]
async fn jobs_are_tenant_scoped_and_idempotency_keys_behave_postgres() {
    scoping_and_idempotency(postgres().await).await;
}
