//! The job queue in SQLite. Quota check and insert share one `BEGIN IMMEDIATE` transaction; a claim is
//! one `UPDATE ... WHERE id = (SELECT ...)`, atomic under SQLite's single writer.

use async_trait::async_trait;

use super::SqliteStore;
use crate::domain::{JobId, JobStatus, Stage, UserId, WorkerId};
use crate::storage::jobs::{
    ExpiredLease, IdempotencyState, JobOutcome, JobRecord, JobScope, JobStore, QuotaLimits,
    QuotaRefusal, QuotaUsage,
};
use crate::storage::shared::{
    finish_tag, held_key_state, job_from_row, job_scope_binds, names_json, placeholders,
    quota_usage_from_row, FinishColumns, StoredRow, ABANDONED_RESERVATION, IDEMPOTENCY_TTL,
    JOB_COLUMNS,
};
use crate::storage::StoreResult;
use crate::time::UnixMillis;

/// A user's jobs counting toward today's quota ($2 = start of the UTC day) and running now.
const QUOTA_USAGE_SQL: &str = "
    SELECT
      COALESCE(SUM(CASE WHEN created_at >= $2 AND counts_toward_quota THEN 1 ELSE 0 END), 0) AS today,
      COALESCE(SUM(CASE WHEN status IN ('queued', 'running') THEN 1 ELSE 0 END), 0) AS active
    FROM jobs WHERE user_id = $1";

#[async_trait]
impl JobStore for SqliteStore {
    async fn create_job(
        &self,
        job: &JobRecord,
        limits: &QuotaLimits,
    ) -> StoreResult<Result<JobRecord, QuotaRefusal>> {
        // Holding the write lock from the first read: no other request can count or insert in between.
        // Rolled back if dropped before commit.
        let mut tx = self.begin_immediate().await?;
        let usage = sqlx::query(QUOTA_USAGE_SQL)
            .bind(job.user_id.to_string())
            .bind(limits.day_start)
            .fetch_one(&mut *tx)
            .await?;
        if let Some(refusal) = QuotaRefusal::check(quota_usage_from_row(&usage)?, limits) {
            return Ok(Err(refusal));
        }
        let clock = sqlx::query("SELECT vtime FROM queue_clock WHERE id = 1")
            .fetch_one(&mut *tx)
            .await?
            .real("vtime")?;
        let tenant_last = sqlx::query(
            "SELECT MAX(vtag) AS last FROM jobs
             WHERE tenant_id = $1 AND status IN ('queued', 'running')",
        )
        .bind(job.tenant_id.to_string())
        .fetch_one(&mut *tx)
        .await?
        .opt_real("last")?;
        let mut job = job.clone();
        job.vtag = finish_tag(clock, tenant_last, limits.priority_weight);
        let sql = format!(
            "INSERT INTO jobs ({JOB_COLUMNS})
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17,
                     $18, $19, $20, $21, $22, $23, $24, $25, $26)"
        );
        sqlx::query(&sql)
            .bind(job.id.to_string())
            .bind(job.tenant_id.to_string())
            .bind(job.user_id.to_string())
            .bind(job.status.as_str())
            .bind(job.stage.as_str())
            .bind(job.progress)
            .bind(&job.engine)
            .bind(&job.params)
            .bind(&job.input)
            .bind(&job.output_plan)
            .bind(&job.callback_url)
            .bind(job.vtag)
            .bind(job.attempts)
            .bind(job.worker_id.as_ref().map(WorkerId::as_str))
            .bind(job.lease_expires_at)
            .bind(job.counts_toward_quota)
            .bind(&job.error_code)
            .bind(&job.error_message)
            .bind(&job.error_detail)
            .bind(&job.result_key)
            .bind(job.result_bytes)
            .bind(job.created_at)
            .bind(job.started_at)
            .bind(job.finished_at)
            .bind(job.updated_at)
            .bind(names_json(&job.ignored_parameters))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Ok(job))
    }

    async fn quota_usage(&self, user: UserId, day_start: UnixMillis) -> StoreResult<QuotaUsage> {
        let row = sqlx::query(QUOTA_USAGE_SQL)
            .bind(user.to_string())
            .bind(day_start)
            .fetch_one(&self.pool)
            .await?;
        quota_usage_from_row(&row)
    }

    async fn job(&self, scope: JobScope, id: JobId) -> StoreResult<Option<JobRecord>> {
        let (tenant, user) = job_scope_binds(scope);
        let sql = format!(
            "SELECT {JOB_COLUMNS} FROM jobs
             WHERE id = $1 AND ($2 IS NULL OR tenant_id = $2) AND ($3 IS NULL OR user_id = $3)
               AND deleted_at IS NULL"
        );
        sqlx::query(&sql)
            .bind(id.to_string())
            .bind(tenant)
            .bind(user)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(job_from_row)
            .transpose()
    }

    async fn list_jobs(
        &self,
        scope: JobScope,
        status: Option<JobStatus>,
        before: Option<(UnixMillis, JobId)>,
        limit: i64,
    ) -> StoreResult<Vec<JobRecord>> {
        let (tenant, user) = job_scope_binds(scope);
        let sql = format!(
            "SELECT {JOB_COLUMNS} FROM jobs
             WHERE ($1 IS NULL OR tenant_id = $1) AND ($2 IS NULL OR user_id = $2)
               AND ($3 IS NULL OR status = $3) AND deleted_at IS NULL
               AND ($4 IS NULL OR created_at < $4 OR (created_at = $4 AND id < $5))
             ORDER BY created_at DESC, id DESC
             LIMIT $6"
        );
        sqlx::query(&sql)
            .bind(tenant)
            .bind(user)
            .bind(status.map(|s| s.as_str()))
            .bind(before.map(|b| b.0))
            .bind(before.map(|b| b.1.to_string()).unwrap_or_default())
            .bind(limit)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(job_from_row)
            .collect()
    }

    async fn queue_position(&self, job: &JobRecord) -> StoreResult<i64> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS ahead FROM jobs
             WHERE status = 'queued'
               AND (vtag < $1 OR (vtag = $1 AND created_at < $2)
                    OR (vtag = $1 AND created_at = $2 AND id < $3))",
        )
        .bind(job.vtag)
        .bind(job.created_at)
        .bind(job.id.to_string())
        .fetch_one(&self.pool)
        .await?;
        Ok(row.int("ahead")?)
    }

    async fn claim_job(
        &self,
        worker_id: &WorkerId,
        engines: &[String],
        now: UnixMillis,
        lease_until: UnixMillis,
    ) -> StoreResult<Option<JobRecord>> {
        if engines.is_empty() {
            return Ok(None);
        }
        // One statement: SQLite's single writer makes the pick and the update atomic.
        let sql = format!(
            "UPDATE jobs
             SET status = 'running', stage = 'preprocessing', worker_id = $1,
                 lease_expires_at = $3, attempts = attempts + 1,
                 started_at = $2, updated_at = $2
             WHERE id = (SELECT id FROM jobs
                         WHERE status = 'queued' AND engine IN ({engines})
                         ORDER BY vtag, created_at, id
                         LIMIT 1)
               AND status = 'queued'
             RETURNING {JOB_COLUMNS}",
            engines = placeholders(4, engines.len()),
        );
        let mut query = sqlx::query(&sql)
            .bind(worker_id.as_str())
            .bind(now)
            .bind(lease_until);
        for engine in engines {
            query = query.bind(engine);
        }
        let Some(row) = query.fetch_optional(&self.pool).await? else {
            return Ok(None);
        };
        let job = job_from_row(&row)?;
        sqlx::query("UPDATE queue_clock SET vtime = $1 WHERE id = 1 AND vtime < $1")
            .bind(job.vtag)
            .execute(&self.pool)
            .await?;
        Ok(Some(job))
    }

    async fn heartbeat(
        &self,
        id: JobId,
        worker_id: &WorkerId,
        now: UnixMillis,
        lease_until: UnixMillis,
    ) -> StoreResult<bool> {
        let done = sqlx::query(
            "UPDATE jobs SET lease_expires_at = $3, updated_at = $4
             WHERE id = $1 AND worker_id = $2 AND status = 'running'",
        )
        .bind(id.to_string())
        .bind(worker_id.as_str())
        .bind(lease_until)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn set_progress(
        &self,
        id: JobId,
        worker_id: &WorkerId,
        stage: Stage,
        progress: f64,
        now: UnixMillis,
    ) -> StoreResult<bool> {
        let done = sqlx::query(
            "UPDATE jobs SET stage = $3, progress = $4, updated_at = $5
             WHERE id = $1 AND worker_id = $2 AND status = 'running' AND progress <= $4",
        )
        .bind(id.to_string())
        .bind(worker_id.as_str())
        .bind(stage.as_str())
        .bind(progress)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn finish_job(
        &self,
        id: JobId,
        worker_id: &WorkerId,
        outcome: &JobOutcome,
        now: UnixMillis,
    ) -> StoreResult<Option<JobRecord>> {
        let end = FinishColumns::of(outcome);
        let sql = format!(
            "UPDATE jobs
             SET status = $3,
                 progress = CASE WHEN $3 = 'succeeded' THEN 1.0 ELSE progress END,
                 stage = CASE WHEN $3 = 'succeeded' THEN 'done' ELSE stage END,
                 error_code = $4, error_message = $5, result_key = $6, result_bytes = $7,
                 counts_toward_quota = CASE WHEN $8 THEN FALSE ELSE counts_toward_quota END,
                 finished_at = $9, updated_at = $9, lease_expires_at = NULL, error_detail = $10
             WHERE id = $1 AND worker_id = $2 AND status = 'running'
             RETURNING {JOB_COLUMNS}"
        );
        sqlx::query(&sql)
            .bind(id.to_string())
            .bind(worker_id.as_str())
            .bind(end.status.as_str())
            .bind(end.error_code)
            .bind(end.error_message)
            .bind(end.result_key)
            .bind(end.result_bytes)
            .bind(end.refund)
            .bind(now)
            .bind(end.error_detail)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(job_from_row)
            .transpose()
    }

    async fn requeue_job(
        &self,
        id: JobId,
        worker_id: &WorkerId,
        max_attempts: i64,
        now: UnixMillis,
    ) -> StoreResult<Option<JobRecord>> {
        let sql = format!(
            "UPDATE jobs
             SET status = 'queued', stage = 'queued', progress = 0, worker_id = NULL,
                 lease_expires_at = NULL, updated_at = $3
             WHERE id = $1 AND worker_id = $2 AND status = 'running' AND attempts < $4
             RETURNING {JOB_COLUMNS}"
        );
        sqlx::query(&sql)
            .bind(id.to_string())
            .bind(worker_id.as_str())
            .bind(now)
            .bind(max_attempts)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(job_from_row)
            .transpose()
    }

    async fn release_job(
        &self,
        id: JobId,
        worker_id: &WorkerId,
        now: UnixMillis,
    ) -> StoreResult<Option<JobRecord>> {
        let sql = format!(
            "UPDATE jobs
             SET status = 'queued', stage = 'queued', progress = 0, worker_id = NULL,
                 lease_expires_at = NULL, attempts = attempts - 1, updated_at = $3
             WHERE id = $1 AND worker_id = $2 AND status = 'running' AND attempts > 0
             RETURNING {JOB_COLUMNS}"
        );
        sqlx::query(&sql)
            .bind(id.to_string())
            .bind(worker_id.as_str())
            .bind(now)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(job_from_row)
            .transpose()
    }

    async fn cancel_job(
        &self,
        scope: JobScope,
        id: JobId,
        now: UnixMillis,
    ) -> StoreResult<Option<JobRecord>> {
        let (tenant, user) = job_scope_binds(scope);
        let sql = format!(
            "UPDATE jobs
             SET status = 'cancelled',
                 counts_toward_quota = CASE WHEN status = 'queued' THEN FALSE
                                            ELSE counts_toward_quota END,
                 finished_at = $4, updated_at = $4, lease_expires_at = NULL
             WHERE id = $1 AND ($2 IS NULL OR tenant_id = $2) AND ($3 IS NULL OR user_id = $3)
               AND status IN ('queued', 'running') AND deleted_at IS NULL
             RETURNING {JOB_COLUMNS}"
        );
        sqlx::query(&sql)
            .bind(id.to_string())
            .bind(tenant)
            .bind(user)
            .bind(now)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(job_from_row)
            .transpose()
    }

    async fn forget_result(&self, id: JobId, now: UnixMillis) -> StoreResult<()> {
        sqlx::query(
            "UPDATE jobs SET result_key = NULL, updated_at = $2
             WHERE id = $1 AND result_key IS NOT NULL",
        )
        .bind(id.to_string())
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn delete_job(
        &self,
        scope: JobScope,
        id: JobId,
        now: UnixMillis,
    ) -> StoreResult<Option<JobRecord>> {
        let (tenant, user) = job_scope_binds(scope);
        // The row stays, hidden, so a deleted job still counts toward the daily quota; a job
        // that had not started gives it back, as a cancelled one does.
        let sql = format!(
            "UPDATE jobs
             SET deleted_at = $4, updated_at = $4, lease_expires_at = NULL,
                 counts_toward_quota = CASE WHEN status = 'queued' THEN FALSE
                                            ELSE counts_toward_quota END,
                 finished_at = COALESCE(finished_at, $4),
                 status = CASE WHEN status IN ('queued', 'running') THEN 'cancelled'
                               ELSE status END
             WHERE id = $1 AND ($2 IS NULL OR tenant_id = $2) AND ($3 IS NULL OR user_id = $3)
               AND deleted_at IS NULL
             RETURNING {JOB_COLUMNS}"
        );
        sqlx::query(&sql)
            .bind(id.to_string())
            .bind(tenant)
            .bind(user)
            .bind(now)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(job_from_row)
            .transpose()
    }

    async fn expire_leases(
        &self,
        now: UnixMillis,
        max_attempts: i64,
    ) -> StoreResult<Vec<ExpiredLease>> {
        let requeue = format!(
            "UPDATE jobs
             SET status = 'queued', stage = 'queued', progress = 0, worker_id = NULL,
                 lease_expires_at = NULL, updated_at = $1
             WHERE status = 'running' AND lease_expires_at < $1 AND attempts < $2
             RETURNING {JOB_COLUMNS}"
        );
        let requeued = sqlx::query(&requeue)
            .bind(now)
            .bind(max_attempts)
            .fetch_all(&self.pool)
            .await?;
        let fail = format!(
            "UPDATE jobs
             SET status = 'failed', error_code = 'worker_lost',
                 error_message = 'the worker running this job stopped responding too many times; submit it again',
                 counts_toward_quota = FALSE, worker_id = NULL, lease_expires_at = NULL,
                 finished_at = $1, updated_at = $1
             WHERE status = 'running' AND lease_expires_at < $1 AND attempts >= $2
             RETURNING {JOB_COLUMNS}"
        );
        let failed = sqlx::query(&fail)
            .bind(now)
            .bind(max_attempts)
            .fetch_all(&self.pool)
            .await?;
        let mut expired = Vec::with_capacity(requeued.len() + failed.len());
        for (rows, requeued) in [(&requeued, true), (&failed, false)] {
            for row in rows {
                let job = job_from_row(row)?;
                expired.push(ExpiredLease { job, requeued });
            }
        }
        Ok(expired)
    }

    async fn reserve_idempotency_key(
        &self,
        user: UserId,
        key: &str,
        request_hash: &str,
        now: UnixMillis,
    ) -> StoreResult<IdempotencyState> {
        // Expired keys, and reservations whose request died before it created a job.
        sqlx::query(
            "DELETE FROM idempotency_keys
             WHERE user_id = $1 AND key = $2
               AND (created_at < $3 OR (job_id IS NULL AND created_at < $4))",
        )
        .bind(user.to_string())
        .bind(key)
        .bind(now - IDEMPOTENCY_TTL)
        .bind(now - ABANDONED_RESERVATION)
        .execute(&self.pool)
        .await?;
        let inserted = sqlx::query(
            "INSERT INTO idempotency_keys (user_id, key, request_hash, job_id, created_at)
             VALUES ($1, $2, $3, NULL, $4)
             ON CONFLICT (user_id, key) DO NOTHING",
        )
        .bind(user.to_string())
        .bind(key)
        .bind(request_hash)
        .bind(now)
        .execute(&self.pool)
        .await?;
        if inserted.rows_affected() == 1 {
            return Ok(IdempotencyState::Reserved);
        }
        let held = sqlx::query(
            "SELECT request_hash, job_id FROM idempotency_keys WHERE user_id = $1 AND key = $2",
        )
        .bind(user.to_string())
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        match held {
            Some(row) => held_key_state(&row, request_hash),
            // Released between our insert and read: the caller may retry.
            None => Ok(IdempotencyState::InProgress),
        }
    }

    async fn complete_idempotency_key(
        &self,
        user: UserId,
        key: &str,
        job: JobId,
    ) -> StoreResult<()> {
        sqlx::query("UPDATE idempotency_keys SET job_id = $3 WHERE user_id = $1 AND key = $2")
            .bind(user.to_string())
            .bind(key)
            .bind(job.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn release_idempotency_key(&self, user: UserId, key: &str) -> StoreResult<()> {
        sqlx::query(
            "DELETE FROM idempotency_keys WHERE user_id = $1 AND key = $2 AND job_id IS NULL",
        )
        .bind(user.to_string())
        .bind(key)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
