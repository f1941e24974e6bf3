//! What the SQLite and PostgreSQL stores share, none of it SQL: reading rows into records, the values
//! bound for scopes and outcomes, column lists, time limits, and the decisions and arithmetic the stores
//! make between statements (chaining an audit record, the fair-queue tag, an idempotency key's state).

use std::str::FromStr;
use std::time::Duration;

use sqlx::{ColumnIndex, Decode, Row, Type};

use super::chain::{chain_hash, NewAuditRecord, GENESIS_HASH};
use super::estimates::{EngineSpeed, PendingWork, WorkAhead};
use super::jobs::{IdempotencyState, JobOutcome, JobRecord, JobScope, QuotaUsage};
use super::{
    AuditRecord, RefreshTokenRecord, RevokedToken, StoreError, StoreResult, TenantRecord, TokenId,
    UserRecord,
};
use crate::domain::{JobStatus, PlanName, TenantName, Username};
use crate::time::UnixMillis;

pub(super) const TENANT_COLUMNS: &str = "id, name, plan, created_at, updated_at";
pub(super) const USER_COLUMNS: &str =
    "id, tenant_id, username, password_hash, role, plan, disabled, created_at, updated_at";
pub(super) const REFRESH_COLUMNS: &str =
    "token_hash, family_id, user_id, tenant_id, issued_at, expires_at, used_at, revoked_at, dpop_jkt";
pub(super) const AUDIT_COLUMNS: &str = "seq, at, request_id, actor_user_id, actor_tenant_id, \
    tenant_id, client_ip, user_agent, action, target, outcome, reason, prev_hash, hash";
pub(super) const JOB_COLUMNS: &str = "id, tenant_id, user_id, status, stage, progress, engine, \
    params, input, output_plan, callback_url, vtag, attempts, worker_id, lease_expires_at, \
    counts_toward_quota, error_code, error_message, error_detail, result_key, result_bytes, \
    created_at, started_at, finished_at, updated_at, ignored_parameters";

/// A reservation without a job after this long belongs to a request that died.
pub(super) const ABANDONED_RESERVATION: Duration = Duration::from_secs(5 * 60);
/// Idempotency keys are honoured for a day.
pub(super) const IDEMPOTENCY_TTL: Duration = Duration::from_secs(24 * 3600);

/// Parses a stored text column into its domain type; a value that does not parse is corruption.
pub(super) fn parse_stored<T: FromStr>(column: &str, value: &str) -> Result<T, StoreError> {
    value
        .parse()
        .map_err(|_| StoreError::Corrupt(format!("{column}: {value:?}")))
}

/// A list of names as stored: a JSON array of strings.
pub(super) fn names_json(names: &[String]) -> String {
    serde_json::to_string(names).expect("a list of strings always serialises")
}

/// Parses a stored JSON array of names.
pub(super) fn parse_names(column: &str, value: &str) -> Result<Vec<String>, StoreError> {
    serde_json::from_str(value).map_err(|_| StoreError::Corrupt(format!("{column}: {value:?}")))
}

/// A result row of either backend, read by column name as the types the schema uses.
pub(super) trait StoredRow {
    fn text(&self, column: &str) -> sqlx::Result<String>;
    fn opt_text(&self, column: &str) -> sqlx::Result<Option<String>>;
    fn int(&self, column: &str) -> sqlx::Result<i64>;
    fn opt_int(&self, column: &str) -> sqlx::Result<Option<i64>>;
    fn instant(&self, column: &str) -> sqlx::Result<UnixMillis>;
    fn opt_instant(&self, column: &str) -> sqlx::Result<Option<UnixMillis>>;
    fn real(&self, column: &str) -> sqlx::Result<f64>;
    fn opt_real(&self, column: &str) -> sqlx::Result<Option<f64>>;
    fn flag(&self, column: &str) -> sqlx::Result<bool>;
}

impl<R> StoredRow for R
where
    R: Row,
    for<'a> &'a str: ColumnIndex<R>,
    String: for<'r> Decode<'r, R::Database> + Type<R::Database>,
    i64: for<'r> Decode<'r, R::Database> + Type<R::Database>,
    f64: for<'r> Decode<'r, R::Database> + Type<R::Database>,
    bool: for<'r> Decode<'r, R::Database> + Type<R::Database>,
{
    fn text(&self, column: &str) -> sqlx::Result<String> {
        self.try_get(column)
    }
    fn opt_text(&self, column: &str) -> sqlx::Result<Option<String>> {
        self.try_get(column)
    }
    fn int(&self, column: &str) -> sqlx::Result<i64> {
        self.try_get(column)
    }
    fn opt_int(&self, column: &str) -> sqlx::Result<Option<i64>> {
        self.try_get(column)
    }
    fn instant(&self, column: &str) -> sqlx::Result<UnixMillis> {
        self.try_get(column)
    }
    fn opt_instant(&self, column: &str) -> sqlx::Result<Option<UnixMillis>> {
        self.try_get(column)
    }
    fn real(&self, column: &str) -> sqlx::Result<f64> {
        self.try_get(column)
    }
    fn opt_real(&self, column: &str) -> sqlx::Result<Option<f64>> {
        self.try_get(column)
    }
    fn flag(&self, column: &str) -> sqlx::Result<bool> {
        self.try_get(column)
    }
}

/// A row of `TENANT_COLUMNS`.
pub(super) fn tenant_from_row(row: &impl StoredRow) -> StoreResult<TenantRecord> {
    Ok(TenantRecord {
        id: parse_stored("tenants.id", &row.text("id")?)?,
        name: TenantName::from_stored(row.text("name")?),
        plan: PlanName::from_stored(row.text("plan")?),
        created_at: row.instant("created_at")?,
        updated_at: row.instant("updated_at")?,
    })
}

/// A row of `USER_COLUMNS`.
pub(super) fn user_from_row(row: &impl StoredRow) -> StoreResult<UserRecord> {
    Ok(UserRecord {
        id: parse_stored("users.id", &row.text("id")?)?,
        tenant_id: parse_stored("users.tenant_id", &row.text("tenant_id")?)?,
        username: Username::from_stored(row.text("username")?),
        password_hash: row.text("password_hash")?,
        role: parse_stored("users.role", &row.text("role")?)?,
        plan: row.opt_text("plan")?.map(PlanName::from_stored),
        disabled: row.flag("disabled")?,
        created_at: row.instant("created_at")?,
        updated_at: row.instant("updated_at")?,
    })
}

/// A row of `REFRESH_COLUMNS`.
pub(super) fn refresh_from_row(row: &impl StoredRow) -> StoreResult<RefreshTokenRecord> {
    Ok(RefreshTokenRecord {
        token_hash: row.text("token_hash")?,
        family_id: parse_stored("refresh_tokens.family_id", &row.text("family_id")?)?,
        user_id: parse_stored("refresh_tokens.user_id", &row.text("user_id")?)?,
        tenant_id: parse_stored("refresh_tokens.tenant_id", &row.text("tenant_id")?)?,
        issued_at: row.instant("issued_at")?,
        expires_at: row.instant("expires_at")?,
        used_at: row.opt_instant("used_at")?,
        revoked_at: row.opt_instant("revoked_at")?,
        dpop_jkt: row.opt_text("dpop_jkt")?,
    })
}

/// A row of `jti, expires_at`.
pub(super) fn token_id_from_row(row: &impl StoredRow) -> StoreResult<TokenId> {
    Ok(TokenId {
        jti: parse_stored("access_tokens.jti", &row.text("jti")?)?,
        expires_at: row.instant("expires_at")?,
    })
}

/// A row of `jti, expires_at, revoked_at`.
pub(super) fn revoked_from_row(row: &impl StoredRow) -> StoreResult<RevokedToken> {
    Ok(RevokedToken {
        jti: parse_stored("revoked_tokens.jti", &row.text("jti")?)?,
        expires_at: row.instant("expires_at")?,
        revoked_at: row.instant("revoked_at")?,
    })
}

/// A row of `AUDIT_COLUMNS`.
pub(super) fn audit_from_row(row: &impl StoredRow) -> StoreResult<AuditRecord> {
    Ok(AuditRecord {
        seq: row.int("seq")?,
        event: NewAuditRecord {
            at: row.instant("at")?,
            request_id: row.opt_text("request_id")?,
            actor_user_id: row.opt_text("actor_user_id")?,
            actor_tenant_id: row.opt_text("actor_tenant_id")?,
            tenant_id: row.opt_text("tenant_id")?,
            client_ip: row.opt_text("client_ip")?,
            user_agent: row.opt_text("user_agent")?,
            action: row.text("action")?,
            target: row.opt_text("target")?,
            outcome: row.text("outcome")?,
            reason: row.opt_text("reason")?,
        },
        prev_hash: row.text("prev_hash")?,
        hash: row.text("hash")?,
    })
}

/// Links `event` to the chain's head (its newest record's `seq, hash` row, `None` for an empty log):
/// the record to insert.
pub(super) fn chain_after(
    head: Option<&impl StoredRow>,
    event: &NewAuditRecord,
) -> StoreResult<AuditRecord> {
    let (prev_seq, prev_hash) = match head {
        Some(row) => (row.int("seq")?, row.text("hash")?),
        None => (0, GENESIS_HASH.to_owned()),
    };
    let seq = prev_seq + 1;
    let hash = chain_hash(seq, &prev_hash, event);
    Ok(AuditRecord {
        seq,
        event: event.clone(),
        prev_hash,
        hash,
    })
}

/// A row of `JOB_COLUMNS`.
pub(super) fn job_from_row(row: &impl StoredRow) -> StoreResult<JobRecord> {
    Ok(JobRecord {
        id: parse_stored("jobs.id", &row.text("id")?)?,
        tenant_id: parse_stored("jobs.tenant_id", &row.text("tenant_id")?)?,
        user_id: parse_stored("jobs.user_id", &row.text("user_id")?)?,
        status: parse_stored("jobs.status", &row.text("status")?)?,
        stage: parse_stored("jobs.stage", &row.text("stage")?)?,
        progress: row.real("progress")?,
        engine: row.text("engine")?,
        params: row.text("params")?,
        input: row.text("input")?,
        output_plan: row.text("output_plan")?,
        callback_url: row.opt_text("callback_url")?,
        vtag: row.real("vtag")?,
        attempts: row.int("attempts")?,
        worker_id: row
            .opt_text("worker_id")?
            .map(|worker| parse_stored("jobs.worker_id", &worker))
            .transpose()?,
        lease_expires_at: row.opt_instant("lease_expires_at")?,
        counts_toward_quota: row.flag("counts_toward_quota")?,
        error_code: row.opt_text("error_code")?,
        error_message: row.opt_text("error_message")?,
        error_detail: row.opt_text("error_detail")?,
        result_key: row.opt_text("result_key")?,
        result_bytes: row.opt_int("result_bytes")?,
        created_at: row.instant("created_at")?,
        started_at: row.opt_instant("started_at")?,
        finished_at: row.opt_instant("finished_at")?,
        updated_at: row.instant("updated_at")?,
        ignored_parameters: parse_names(
            "jobs.ignored_parameters",
            &row.text("ignored_parameters")?,
        )?,
    })
}

/// A row of `today, active` counts.
pub(super) fn quota_usage_from_row(row: &impl StoredRow) -> StoreResult<QuotaUsage> {
    Ok(QuotaUsage {
        today: row.int("today")?,
        active: row.int("active")?,
    })
}

/// The values bound for a `JobScope`: `(tenant_id, user_id)`, `None` meaning any.
pub(super) fn job_scope_binds(scope: JobScope) -> (Option<String>, Option<String>) {
    (
        scope.tenant.tenant_filter(),
        scope.user.map(|u| u.to_string()),
    )
}

/// `$first, $first+1, ...`: the placeholders of `count` values bound one after another (an `IN` list).
pub(super) fn placeholders(first: usize, count: usize) -> String {
    (first..first + count)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Weighted fair queuing: a job's finish tag is where its tenant's previous job ends (`tenant_last`, the
/// largest tag of its queued or running jobs), or the queue's virtual time (`clock`) if the tenant was
/// idle, plus 1/weight; weights below 1 count as 1.
pub(super) fn finish_tag(clock: f64, tenant_last: Option<f64>, priority_weight: f64) -> f64 {
    clock.max(tenant_last.unwrap_or(f64::MIN)) + 1.0 / priority_weight.max(1.0)
}

/// The columns `finish_job` writes for an outcome.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct FinishColumns {
    pub status: JobStatus,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub error_detail: Option<String>,
    pub result_key: Option<String>,
    pub result_bytes: Option<i64>,
    /// The job stops counting toward the quota.
    pub refund: bool,
}

impl FinishColumns {
    pub fn of(outcome: &JobOutcome) -> Self {
        match outcome {
            JobOutcome::Succeeded {
                result_key,
                result_bytes,
            } => Self {
                status: JobStatus::Succeeded,
                error_code: None,
                error_message: None,
                error_detail: None,
                result_key: Some(result_key.clone()),
                result_bytes: Some(*result_bytes),
                refund: false,
            },
            JobOutcome::Failed {
                code,
                message,
                detail,
                refund,
            } => Self {
                status: JobStatus::Failed,
                error_code: Some(code.clone()),
                error_message: Some(message.clone()),
                error_detail: Some(detail.clone()),
                result_key: None,
                result_bytes: None,
                refund: *refund,
            },
        }
    }
}

/// What an `Idempotency-Key` that is already held (its `request_hash, job_id` row) means for a request
/// whose hash is `request_hash`.
pub(super) fn held_key_state(
    row: &impl StoredRow,
    request_hash: &str,
) -> StoreResult<IdempotencyState> {
    idempotency_state(
        &row.text("request_hash")?,
        row.opt_text("job_id")?,
        request_hash,
    )
}

fn idempotency_state(
    stored_hash: &str,
    job_id: Option<String>,
    request_hash: &str,
) -> StoreResult<IdempotencyState> {
    Ok(match (stored_hash == request_hash, job_id) {
        (false, _) => IdempotencyState::Mismatch,
        (true, None) => IdempotencyState::InProgress,
        (true, Some(job)) => {
            IdempotencyState::Existing(parse_stored("idempotency_keys.job_id", &job)?)
        }
    })
}

pub(super) const ENGINE_SPEED_COLUMNS: &str =
    "engine, instance, seconds_per_second, samples, updated_at";

pub(super) fn engine_speed_from_row(row: &impl StoredRow) -> StoreResult<EngineSpeed> {
    Ok(EngineSpeed {
        engine: row.text("engine")?,
        instance: row.text("instance")?,
        seconds_per_second: row.real("seconds_per_second")?,
        samples: row.int("samples")?,
        updated_at: row.instant("updated_at")?,
    })
}

/// Rows of the `work_ahead` query (status, params, output_plan, started_at, vtag, created_at, id,
/// running and queued mixed) split into running jobs and queued ones in dispatch order.
pub(super) fn work_ahead_from_rows(rows: &[impl StoredRow]) -> StoreResult<WorkAhead> {
    let mut queued = Vec::new();
    let mut ahead = WorkAhead::default();
    for row in rows {
        let status: JobStatus = parse_stored("jobs.status", &row.text("status")?)?;
        let work = PendingWork {
            id: row.text("id")?,
            status,
            params: row.text("params")?,
            output_plan: row.text("output_plan")?,
            started_at: row.opt_instant("started_at")?,
        };
        if status == JobStatus::Running {
            ahead.running.push(work);
        } else {
            let order = (
                row.real("vtag")?,
                row.instant("created_at")?,
                row.text("id")?,
            );
            queued.push((order, work));
        }
    }
    queued.sort_by(|(a, _), (b, _)| {
        a.0.total_cmp(&b.0)
            .then_with(|| a.1.cmp(&b.1))
            .then_with(|| a.2.cmp(&b.2))
    });
    ahead.queued = queued.into_iter().map(|(_, work)| work).collect();
    Ok(ahead)
}

/// The columns `worker_account_from_row` reads.
pub(super) const WORKER_ACCOUNT_COLUMNS: &str =
    "id, name, client_id, secret_hash, disabled, created_at, last_seen_at, token_generation";

/// A row of `WORKER_ACCOUNT_COLUMNS`.
pub(super) fn worker_account_from_row(
    row: &impl StoredRow,
) -> StoreResult<crate::storage::workers::WorkerAccount> {
    Ok(crate::storage::workers::WorkerAccount {
        id: parse_stored("worker_accounts.id", &row.text("id")?)?,
        name: row.text("name")?,
        client_id: row.text("client_id")?,
        secret_hash: row.text("secret_hash")?,
        disabled: row.flag("disabled")?,
        created_at: row.instant("created_at")?,
        last_seen_at: row.opt_instant("last_seen_at")?,
        token_generation: row.int("token_generation")?,
    })
}

#[cfg(test)]
mod tests {
    use sqlx::sqlite::SqliteRow;
    use sqlx::SqlitePool;

    use super::*;
    use crate::domain::{JobId, TenantId, UserId};
    use crate::storage::TenantScope;

    async fn row(sql: &str) -> SqliteRow {
        let pool = SqlitePool::connect("sqlite::memory:").await.unwrap();
        sqlx::query(sql).fetch_one(&pool).await.unwrap()
    }

    #[test]
    fn idle_tenant_starts_at_the_queue_clock() {
        assert_eq!(finish_tag(7.0, None, 1.0), 8.0);
        assert_eq!(
            finish_tag(7.0, Some(3.0), 1.0),
            8.0,
            "an old tag is behind the clock"
        );
    }

    #[test]
    fn busy_tenant_queues_after_its_last_job_scaled_by_weight() {
        assert_eq!(finish_tag(7.0, Some(9.0), 1.0), 10.0);
        assert_eq!(finish_tag(7.0, Some(9.0), 4.0), 9.25);
    }

    #[test]
    fn weights_below_one_count_as_one() {
        assert_eq!(finish_tag(0.0, None, 0.0), 1.0);
        assert_eq!(finish_tag(0.0, None, 0.5), 1.0);
    }

    #[test]
    fn held_key_with_other_request_is_a_mismatch() {
        assert_eq!(
            idempotency_state("a", Some(JobId::generate().to_string()), "b").unwrap(),
            IdempotencyState::Mismatch
        );
        assert_eq!(
            idempotency_state("a", None, "b").unwrap(),
            IdempotencyState::Mismatch
        );
    }

    #[test]
    fn held_key_without_job_is_in_progress_and_with_job_is_existing() {
        assert_eq!(
            idempotency_state("a", None, "a").unwrap(),
            IdempotencyState::InProgress
        );
        let job = JobId::generate();
        assert_eq!(
            idempotency_state("a", Some(job.to_string()), "a").unwrap(),
            IdempotencyState::Existing(job)
        );
    }

    #[test]
    fn held_key_with_unparsable_job_is_corrupt() {
        assert!(matches!(
            idempotency_state("a", Some("not-a-job".into()), "a"),
            Err(StoreError::Corrupt(detail)) if detail == "idempotency_keys.job_id: \"not-a-job\""
        ));
    }

    #[test]
    fn placeholders_number_consecutive_binds() {
        assert_eq!(placeholders(4, 1), "$4");
        assert_eq!(placeholders(4, 3), "$4, $5, $6");
        assert_eq!(placeholders(1, 0), "");
    }

    #[test]
    fn job_scope_binds_leave_unscoped_sides_null() {
        let tenant = TenantId::generate();
        let user = UserId::generate();
        let all = JobScope {
            tenant: TenantScope::platform_admin(),
            user: None,
        };
        assert_eq!(job_scope_binds(all), (None, None));
        let own = JobScope {
            tenant: TenantScope::tenant(tenant),
            user: Some(user),
        };
        assert_eq!(
            job_scope_binds(own),
            (Some(tenant.to_string()), Some(user.to_string()))
        );
    }

    #[test]
    fn finish_columns_of_success_and_failure() {
        let done = FinishColumns::of(&JobOutcome::Succeeded {
            result_key: "k".into(),
            result_bytes: 9,
        });
        assert_eq!(done.status, JobStatus::Succeeded);
        assert_eq!(
            (done.result_key.as_deref(), done.result_bytes),
            (Some("k"), Some(9))
        );
        assert_eq!(done.error_code, None);
        assert!(!done.refund);

        let failed = FinishColumns::of(&JobOutcome::Failed {
            code: "engine_failed".into(),
            message: "m".into(),
            detail: "d".into(),
            refund: true,
        });
        assert_eq!(failed.status, JobStatus::Failed);
        assert_eq!(failed.error_code.as_deref(), Some("engine_failed"));
        assert_eq!(failed.error_message.as_deref(), Some("m"));
        assert_eq!(failed.error_detail.as_deref(), Some("d"));
        assert_eq!((failed.result_key, failed.result_bytes), (None, None));
        assert!(failed.refund);
    }

    #[test]
    fn column_lists_name_every_field() {
        let count = |columns: &str| columns.split(',').count();
        assert_eq!(count(TENANT_COLUMNS), 5);
        assert_eq!(count(USER_COLUMNS), 9);
        assert_eq!(count(REFRESH_COLUMNS), 9);
        assert_eq!(count(AUDIT_COLUMNS), 14);
        assert_eq!(count(JOB_COLUMNS), 26);
    }

    #[tokio::test]
    async fn tenant_row_decodes_and_bad_id_is_corrupt() {
        let id = TenantId::generate();
        let good = row(&format!(
            "SELECT '{id}' AS id, 'acme' AS name, 'pro' AS plan, 1 AS created_at, 2 AS updated_at"
        ))
        .await;
        let tenant = tenant_from_row(&good).unwrap();
        assert_eq!(
            (tenant.id, tenant.name.as_str(), tenant.plan.as_str()),
            (id, "acme", "pro")
        );
        assert_eq!(
            (tenant.created_at, tenant.updated_at),
            (UnixMillis::from_millis(1), UnixMillis::from_millis(2))
        );

        let bad =
            row("SELECT 'x' AS id, 'a' AS name, 'p' AS plan, 1 AS created_at, 2 AS updated_at")
                .await;
        assert!(matches!(
            tenant_from_row(&bad),
            Err(StoreError::Corrupt(detail)) if detail == "tenants.id: \"x\""
        ));
    }

    #[tokio::test]
    async fn token_rows_decode_and_bad_token_ids_are_corrupt() {
        let good = row("SELECT 'j1' AS jti, 5 AS expires_at, 3 AS revoked_at").await;
        assert_eq!(token_id_from_row(&good).unwrap().jti.as_str(), "j1");
        assert_eq!(revoked_from_row(&good).unwrap().jti.as_str(), "j1");

        let bad = row("SELECT 'a b' AS jti, 5 AS expires_at, 3 AS revoked_at").await;
        assert!(matches!(
            token_id_from_row(&bad),
            Err(StoreError::Corrupt(detail)) if detail == "access_tokens.jti: \"a b\""
        ));
        assert!(matches!(
            revoked_from_row(&bad),
            Err(StoreError::Corrupt(detail)) if detail == "revoked_tokens.jti: \"a b\""
        ));

        let user = UserId::generate();
        let tenant = TenantId::generate();
        let refresh = |family: &str| {
            format!(
                "SELECT 'h' AS token_hash, '{family}' AS family_id, '{user}' AS user_id, \
                 '{tenant}' AS tenant_id, 1 AS issued_at, 2 AS expires_at, NULL AS used_at, \
                 NULL AS revoked_at, NULL AS dpop_jkt"
            )
        };
        let record = refresh_from_row(&row(&refresh("f1")).await).unwrap();
        assert_eq!(record.family_id.as_str(), "f1");
        assert!(matches!(
            refresh_from_row(&row(&refresh("")).await),
            Err(StoreError::Corrupt(detail)) if detail == "refresh_tokens.family_id: \"\""
        ));
    }

    #[tokio::test]
    async fn first_record_links_to_genesis_and_later_ones_to_the_head() {
        let event = NewAuditRecord {
            at: UnixMillis::from_millis(1),
            action: "test".into(),
            outcome: "success".into(),
            ..NewAuditRecord::default()
        };
        let first = chain_after(None::<&SqliteRow>, &event).unwrap();
        assert_eq!((first.seq, first.prev_hash.as_str()), (1, GENESIS_HASH));
        assert_eq!(first.hash, chain_hash(1, GENESIS_HASH, &event));

        let head = row(&format!("SELECT 1 AS seq, '{}' AS hash", first.hash)).await;
        let second = chain_after(Some(&head), &event).unwrap();
        assert_eq!((second.seq, &second.prev_hash), (2, &first.hash));
        assert_eq!(second.hash, chain_hash(2, &first.hash, &event));
        assert_eq!(second.event, event);
    }
}
