//! Engine speeds and the work ahead of a job, in PostgreSQL. A speed update is read, computed and
//! written in one transaction holding an advisory lock.

use async_trait::async_trait;

use super::PgStore;
use crate::storage::estimates::{EngineSpeed, EstimateStore, SpeedUpdate, WorkAhead};
use crate::storage::jobs::JobRecord;
use crate::storage::shared::{engine_speed_from_row, work_ahead_from_rows, ENGINE_SPEED_COLUMNS};
use crate::storage::StoreResult;

#[async_trait]
impl EstimateStore for PgStore {
    async fn engine_speeds(&self) -> StoreResult<Vec<EngineSpeed>> {
        let sql = format!("SELECT {ENGINE_SPEED_COLUMNS} FROM engine_speeds");
        sqlx::query(&sql)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(engine_speed_from_row)
            .collect()
    }

    async fn update_engine_speed(
        &self,
        engine: &str,
        instance: &str,
        update: &SpeedUpdate<'_>,
    ) -> StoreResult<Option<EngineSpeed>> {
        // Rolled back if dropped before commit, which also releases the advisory lock.
        let mut tx = self.pool.begin().await?;
        // Serialises updates across processes (key: "SONICSPD"), so another process's update cannot be
        // lost between the read and the write; a row lock could not cover an instance's first row.
        sqlx::query("SELECT pg_advisory_xact_lock(6003102904877273156)")
            .execute(&mut *tx)
            .await?;
        let sql = format!(
            "SELECT {ENGINE_SPEED_COLUMNS} FROM engine_speeds WHERE engine = $1 AND instance = $2"
        );
        let current = sqlx::query(&sql)
            .bind(engine)
            .bind(instance)
            .fetch_optional(&mut *tx)
            .await?
            .as_ref()
            .map(engine_speed_from_row)
            .transpose()?;
        let Some(next) = update(current.as_ref()) else {
            return Ok(None);
        };
        sqlx::query(
            "INSERT INTO engine_speeds (engine, instance, seconds_per_second, samples, updated_at)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (engine, instance) DO UPDATE
             SET seconds_per_second = excluded.seconds_per_second, samples = excluded.samples,
                 updated_at = excluded.updated_at",
        )
        .bind(engine)
        .bind(instance)
        .bind(next.seconds_per_second)
        .bind(next.samples)
        .bind(next.updated_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(next))
    }

    async fn work_ahead(&self, job: &JobRecord, limit: i64) -> StoreResult<WorkAhead> {
        let rows = sqlx::query(
            "SELECT status, params, output_plan, started_at, vtag, created_at, id FROM (
                 SELECT status, params, output_plan, started_at, vtag, created_at, id FROM jobs
                 WHERE status = 'running' AND engine = $1
                 ORDER BY started_at
                 LIMIT $5) AS running
             UNION ALL
             SELECT status, params, output_plan, started_at, vtag, created_at, id FROM (
                 SELECT status, params, output_plan, started_at, vtag, created_at, id FROM jobs
                 WHERE status = 'queued' AND engine = $1
                   AND (vtag < $2 OR (vtag = $2 AND created_at < $3)
                        OR (vtag = $2 AND created_at = $3 AND id < $4))
                 ORDER BY vtag, created_at, id
                 LIMIT $5) AS queued",
        )
        .bind(&job.engine)
        .bind(job.vtag)
        .bind(job.created_at)
        .bind(job.id.to_string())
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        work_ahead_from_rows(&rows)
    }
}
