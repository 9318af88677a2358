//! PostgreSQL implementation of the garbage collection record ([`GcRuns`]). Times are
//! the database server's clock ([`now`]).

use super::postgres::{now, PgMeta};
use super::{GcRun, GcRunEnd, GcRuns, GcRunsKept, GcSchedule, Page, Result};
use sqlx::postgres::PgRow;
use sqlx::Row;

const RUN_COLUMNS: &str = "id, kind, scheduled_for, parameters, owner, status, started_at,
     updated_at, deleted_blobs, deleted_manifests, freed_bytes, error";

fn run(r: &PgRow) -> Result<GcRun> {
    let n = |i: usize| -> Result<u64> { Ok(u64::try_from(r.try_get::<i64, _>(i)?).unwrap_or(0)) };
    Ok(GcRun {
        id: r.try_get(0)?,
        kind: r.try_get(1)?,
        scheduled_for: r.try_get(2)?,
        parameters: r.try_get(3)?,
        owner: r.try_get(4)?,
        status: r.try_get(5)?,
        started_at: r.try_get(6)?,
        updated_at: r.try_get(7)?,
        deleted_blobs: n(8)?,
        deleted_manifests: n(9)?,
        freed_bytes: n(10)?,
        error: r.try_get(11)?,
    })
}

#[async_trait::async_trait]
impl GcRuns for PgMeta {
    async fn gc_run_start(
        &self,
        kind: &str,
        scheduled_for: Option<i64>,
        parameters: &str,
        owner: &str,
        keep: GcRunsKept,
    ) -> Result<Option<i64>> {
        let t = now();
        let id: Option<i64> = sqlx::query_scalar(
            "INSERT INTO gc_runs (kind, scheduled_for, parameters, owner, status, started_at, updated_at)
             VALUES ($1, $2, $3, $4, 'Running', $5, $5)
             ON CONFLICT (scheduled_for) DO NOTHING RETURNING id",
        )
        .bind(kind)
        .bind(scheduled_for)
        .bind(parameters)
        .bind(owner)
        .bind(t)
        .fetch_optional(&self.pool)
        .await?;
        // History is bounded: the oldest runs go, and the logs of all but the newest.
        for (sql, n) in [
            ("DELETE FROM gc_runs WHERE id <= (SELECT id FROM gc_runs ORDER BY id DESC LIMIT 1 OFFSET $1)", keep.runs),
            ("UPDATE gc_runs SET log = '' WHERE log <> '' AND id <= (SELECT id FROM gc_runs ORDER BY id DESC LIMIT 1 OFFSET $1)", keep.logs),
        ] {
            sqlx::query(sql)
                .bind(i64::from(n))
                .execute(&self.pool)
                .await?;
        }
        Ok(id)
    }

    async fn gc_run_stop(&self, id: i64) -> Result<bool> {
        let found: Option<i64> = sqlx::query_scalar("SELECT id FROM gc_runs WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        if found.is_none() {
            return Ok(false);
        }
        sqlx::query(
            "UPDATE gc_runs SET stop_requested = true WHERE id = $1 AND status = 'Running'",
        )
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(true)
    }

    async fn gc_run_stop_requested(&self, id: i64) -> Result<bool> {
        let asked: Option<bool> =
            sqlx::query_scalar("SELECT stop_requested FROM gc_runs WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(asked.unwrap_or(false))
    }

    async fn gc_run_alive(&self, id: i64) -> Result<()> {
        sqlx::query("UPDATE gc_runs SET updated_at = $2 WHERE id = $1 AND status = 'Running'")
            .bind(id)
            .bind(now())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn gc_run_end(&self, id: i64, end: &GcRunEnd) -> Result<()> {
        sqlx::query(
            "UPDATE gc_runs SET status = $2, updated_at = $3, deleted_blobs = $4,
                 deleted_manifests = $5, freed_bytes = $6, error = $7, log = $8
             WHERE id = $1",
        )
        .bind(id)
        .bind(&end.status)
        .bind(now())
        .bind(i64::try_from(end.deleted_blobs).unwrap_or(i64::MAX))
        .bind(i64::try_from(end.deleted_manifests).unwrap_or(i64::MAX))
        .bind(i64::try_from(end.freed_bytes).unwrap_or(i64::MAX))
        .bind(&end.error)
        .bind(&end.log)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn gc_runs(&self, page: Page) -> Result<(Vec<GcRun>, u64)> {
        let rows = sqlx::query(&format!(
            "SELECT {RUN_COLUMNS} FROM gc_runs ORDER BY id DESC LIMIT $1 OFFSET $2"
        ))
        .bind(i64::from(page.limit))
        .bind(i64::try_from(page.offset).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?;
        let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM gc_runs")
            .fetch_one(&self.pool)
            .await?;
        let runs = rows.iter().map(run).collect::<Result<Vec<_>>>()?;
        Ok((runs, u64::try_from(total).unwrap_or(0)))
    }

    async fn gc_run(&self, id: i64) -> Result<Option<GcRun>> {
        let row = sqlx::query(&format!("SELECT {RUN_COLUMNS} FROM gc_runs WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(run).transpose()
    }

    async fn gc_run_log(&self, id: i64) -> Result<Option<String>> {
        Ok(sqlx::query_scalar("SELECT log FROM gc_runs WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?)
    }

    async fn gc_schedule(&self) -> Result<Option<GcSchedule>> {
        let row =
            sqlx::query("SELECT kind, cron, parameters, updated_at FROM gc_schedule WHERE id = 1")
                .fetch_optional(&self.pool)
                .await?;
        row.map(|r| {
            Ok(GcSchedule {
                kind: r.try_get(0)?,
                cron: r.try_get(1)?,
                parameters: r.try_get(2)?,
                updated_at: r.try_get(3)?,
            })
        })
        .transpose()
    }

    async fn set_gc_schedule(&self, s: &GcSchedule) -> Result<()> {
        sqlx::query(
            "INSERT INTO gc_schedule (id, kind, cron, parameters, updated_at)
             VALUES (1, $1, $2, $3, $4)
             ON CONFLICT (id) DO UPDATE SET kind = excluded.kind, cron = excluded.cron,
                 parameters = excluded.parameters, updated_at = excluded.updated_at",
        )
        .bind(&s.kind)
        .bind(&s.cron)
        .bind(&s.parameters)
        .bind(now())
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
