//! SQLite implementation of tag retention's records ([`Retentions`]).

use super::sqlite::SqliteMeta;
use super::{
    now, Page, PullTime, Result, RetentionManifest, RetentionOutcome, RetentionRun, RetentionTask,
    Retentions, StoredRetention,
};
use oci::{Digest, RepoName};
use sqlx::sqlite::SqliteRow;
use sqlx::Row;
use std::collections::BTreeMap;

const POLICY_COLUMNS: &str = "r.id, r.project_id, p.name, r.policy, r.cron, r.created_at,
     r.updated_at FROM retention_policies r JOIN projects p ON p.id = r.project_id";

fn policy(r: &SqliteRow) -> Result<StoredRetention> {
    Ok(StoredRetention {
        id: r.try_get(0)?,
        project_id: r.try_get(1)?,
        project: r.try_get(2)?,
        policy: r.try_get(3)?,
        cron: r.try_get(4)?,
        created_at: r.try_get(5)?,
        updated_at: r.try_get(6)?,
    })
}

const RUN_COLUMNS: &str =
    "id, policy_id, kind, dry_run, owner, status, started_at, updated_at, ended_at";

fn run(r: &SqliteRow) -> Result<RetentionRun> {
    Ok(RetentionRun {
        id: r.try_get(0)?,
        policy_id: r.try_get(1)?,
        kind: r.try_get(2)?,
        dry_run: r.try_get::<i64, _>(3)? != 0,
        owner: r.try_get(4)?,
        status: r.try_get(5)?,
        started_at: r.try_get(6)?,
        updated_at: r.try_get(7)?,
        ended_at: r.try_get(8)?,
    })
}

const TASK_COLUMNS: &str = "id, run_id, repository, status, total, retained, started_at, ended_at";

fn task(r: &SqliteRow) -> Result<RetentionTask> {
    let n = |i: usize| -> Result<u64> { Ok(u64::try_from(r.try_get::<i64, _>(i)?).unwrap_or(0)) };
    Ok(RetentionTask {
        id: r.try_get(0)?,
        run_id: r.try_get(1)?,
        repository: r.try_get(2)?,
        status: r.try_get(3)?,
        total: n(4)?,
        retained: n(5)?,
        started_at: r.try_get(6)?,
        ended_at: r.try_get(7)?,
        log: String::new(),
    })
}

fn digest(s: &str) -> Result<Digest> {
    s.parse()
        .map_err(|_| super::MetaError::Corrupt(format!("stored digest {s:?} is not valid")))
}

#[async_trait::async_trait]
impl Retentions for SqliteMeta {
    async fn create_retention(
        &self,
        project_id: i64,
        policy: &str,
        cron: &str,
    ) -> Result<Option<i64>> {
        let t = now();
        Ok(sqlx::query_scalar(
            "INSERT INTO retention_policies (project_id, policy, cron, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?4) ON CONFLICT (project_id) DO NOTHING RETURNING id",
        )
        .bind(project_id)
        .bind(policy)
        .bind(cron)
        .bind(t)
        .fetch_optional(&self.writer)
        .await?)
    }

    async fn retention(&self, id: i64) -> Result<Option<StoredRetention>> {
        let row = sqlx::query(&format!("SELECT {POLICY_COLUMNS} WHERE r.id = ?1"))
            .bind(id)
            .fetch_optional(&self.reader)
            .await?;
        row.as_ref().map(policy).transpose()
    }

    async fn project_retention(&self, project_id: i64) -> Result<Option<StoredRetention>> {
        let row = sqlx::query(&format!("SELECT {POLICY_COLUMNS} WHERE r.project_id = ?1"))
            .bind(project_id)
            .fetch_optional(&self.reader)
            .await?;
        row.as_ref().map(policy).transpose()
    }

    async fn update_retention(&self, id: i64, policy: &str, cron: &str) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE retention_policies SET policy = ?2, cron = ?3, updated_at = ?4 WHERE id = ?1",
        )
        .bind(id)
        .bind(policy)
        .bind(cron)
        .bind(now())
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn delete_retention(&self, id: i64) -> Result<bool> {
        let done = sqlx::query("DELETE FROM retention_policies WHERE id = ?1")
            .bind(id)
            .execute(&self.writer)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn scheduled_retentions(&self) -> Result<Vec<StoredRetention>> {
        let rows = sqlx::query(&format!(
            "SELECT {POLICY_COLUMNS} WHERE r.cron <> '' ORDER BY r.id"
        ))
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(policy).collect()
    }

    async fn retention_run_start(
        &self,
        policy_id: i64,
        kind: &str,
        scheduled_for: Option<i64>,
        dry_run: bool,
        owner: &str,
        keep: u32,
    ) -> Result<Option<i64>> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let id: Option<i64> = sqlx::query_scalar(
            "INSERT INTO retention_runs (policy_id, kind, scheduled_for, dry_run, owner, status, started_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, 'Running', ?6, ?6)
             ON CONFLICT (policy_id, scheduled_for) DO NOTHING RETURNING id",
        )
        .bind(policy_id)
        .bind(kind)
        .bind(scheduled_for)
        .bind(dry_run)
        .bind(owner)
        .bind(now())
        .fetch_optional(&mut *tx)
        .await?;
        sqlx::query(
            "DELETE FROM retention_runs WHERE policy_id = ?1 AND id <=
               (SELECT id FROM retention_runs WHERE policy_id = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2)",
        )
        .bind(policy_id)
        .bind(i64::from(keep))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(id)
    }

    async fn retention_run_alive(&self, id: i64) -> Result<bool> {
        let asked: Option<bool> = sqlx::query_scalar(
            "UPDATE retention_runs SET updated_at = ?2 WHERE id = ?1 RETURNING stop_requested",
        )
        .bind(id)
        .bind(now())
        .fetch_optional(&self.writer)
        .await?;
        Ok(asked.unwrap_or(false))
    }

    async fn retention_run_end(&self, id: i64, status: &str) -> Result<()> {
        let t = now();
        sqlx::query(
            "UPDATE retention_runs SET status = ?2, updated_at = ?3, ended_at = ?3 WHERE id = ?1",
        )
        .bind(id)
        .bind(status)
        .bind(t)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn retention_run_stop(&self, policy_id: i64, id: i64) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE retention_runs SET stop_requested = 1 WHERE policy_id = ?1 AND id = ?2",
        )
        .bind(policy_id)
        .bind(id)
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn retention_runs(&self, policy_id: i64, page: Page) -> Result<(Vec<RetentionRun>, u64)> {
        let rows = sqlx::query(&format!(
            "SELECT {RUN_COLUMNS} FROM retention_runs WHERE policy_id = ?1
              ORDER BY id DESC LIMIT ?2 OFFSET ?3"
        ))
        .bind(policy_id)
        .bind(i64::from(page.limit))
        .bind(i64::try_from(page.offset).unwrap_or(i64::MAX))
        .fetch_all(&self.reader)
        .await?;
        let total: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM retention_runs WHERE policy_id = ?1")
                .bind(policy_id)
                .fetch_one(&self.reader)
                .await?;
        let runs = rows.iter().map(run).collect::<Result<Vec<_>>>()?;
        Ok((runs, u64::try_from(total).unwrap_or(0)))
    }

    async fn retention_run(&self, policy_id: i64, id: i64) -> Result<Option<RetentionRun>> {
        let row = sqlx::query(&format!(
            "SELECT {RUN_COLUMNS} FROM retention_runs WHERE policy_id = ?1 AND id = ?2"
        ))
        .bind(policy_id)
        .bind(id)
        .fetch_optional(&self.reader)
        .await?;
        row.as_ref().map(run).transpose()
    }

    async fn retention_task_add(&self, run_id: i64, t: &RetentionTask) -> Result<i64> {
        Ok(sqlx::query_scalar(
            "INSERT INTO retention_tasks (run_id, repository, status, total, retained, started_at, ended_at, log)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) RETURNING id",
        )
        .bind(run_id)
        .bind(&t.repository)
        .bind(&t.status)
        .bind(i64::try_from(t.total).unwrap_or(i64::MAX))
        .bind(i64::try_from(t.retained).unwrap_or(i64::MAX))
        .bind(t.started_at)
        .bind(t.ended_at)
        .bind(&t.log)
        .fetch_one(&self.writer)
        .await?)
    }

    async fn retention_tasks(&self, run_id: i64, page: Page) -> Result<(Vec<RetentionTask>, u64)> {
        let rows = sqlx::query(&format!(
            "SELECT {TASK_COLUMNS} FROM retention_tasks WHERE run_id = ?1
              ORDER BY id LIMIT ?2 OFFSET ?3"
        ))
        .bind(run_id)
        .bind(i64::from(page.limit))
        .bind(i64::try_from(page.offset).unwrap_or(i64::MAX))
        .fetch_all(&self.reader)
        .await?;
        let total: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM retention_tasks WHERE run_id = ?1")
                .bind(run_id)
                .fetch_one(&self.reader)
                .await?;
        let tasks = rows.iter().map(task).collect::<Result<Vec<_>>>()?;
        Ok((tasks, u64::try_from(total).unwrap_or(0)))
    }

    async fn retention_task(&self, run_id: i64, id: i64) -> Result<Option<RetentionTask>> {
        let row = sqlx::query(&format!(
            "SELECT {TASK_COLUMNS}, log FROM retention_tasks WHERE run_id = ?1 AND id = ?2"
        ))
        .bind(run_id)
        .bind(id)
        .fetch_optional(&self.reader)
        .await?;
        row.as_ref()
            .map(|r| {
                let mut t = task(r)?;
                t.log = r.try_get(8)?;
                Ok(t)
            })
            .transpose()
    }

    async fn retention_manifests(&self, repo: &RepoName) -> Result<Vec<RetentionManifest>> {
        // One read transaction: manifests, tags and references of the same moment.
        let mut tx = self.reader.begin().await?;
        let rows = sqlx::query(
            "SELECT m.digest, m.subject, m.created_at, m.pulled_at FROM manifests m
               JOIN repositories r ON r.id = m.repository_id WHERE r.name = ?1",
        )
        .bind(repo.as_str())
        .fetch_all(&mut *tx)
        .await?;
        let mut out = BTreeMap::new();
        for row in rows {
            let d: String = row.try_get(0)?;
            let subject: Option<String> = row.try_get(1)?;
            out.insert(
                d.clone(),
                RetentionManifest {
                    digest: digest(&d)?,
                    subject: subject.as_deref().map(digest).transpose()?,
                    pushed_at: row.try_get(2)?,
                    pulled_at: row.try_get(3)?,
                    tags: Vec::new(),
                    children: Vec::new(),
                },
            );
        }
        let tags = sqlx::query(
            "SELECT t.digest, t.name, t.updated_at FROM tags t
               JOIN repositories r ON r.id = t.repository_id WHERE r.name = ?1 ORDER BY t.name",
        )
        .bind(repo.as_str())
        .fetch_all(&mut *tx)
        .await?;
        for row in tags {
            let d: String = row.try_get(0)?;
            if let Some(m) = out.get_mut(&d) {
                m.tags.push(row.try_get(1)?);
                m.pushed_at = m.pushed_at.max(row.try_get(2)?);
            }
        }
        let refs = sqlx::query(
            "SELECT x.manifest_digest, x.child_digest FROM manifest_references x
               JOIN repositories r ON r.id = x.repository_id
              WHERE r.name = ?1 AND x.child_is_manifest <> 0",
        )
        .bind(repo.as_str())
        .fetch_all(&mut *tx)
        .await?;
        for row in refs {
            let parent: String = row.try_get(0)?;
            let child: String = row.try_get(1)?;
            if let Some(m) = out.get_mut(&parent) {
                m.children.push(digest(&child)?);
            }
        }
        Ok(out.into_values().collect())
    }

    async fn retention_outcomes(&self) -> Result<Vec<RetentionOutcome>> {
        let rows = sqlx::query(
            "SELECT p.name, r.status, COALESCE(r.ended_at, r.updated_at),
                    COALESCE((SELECT SUM(t.total - t.retained) FROM retention_tasks t
                               WHERE t.run_id = r.id), 0)
               FROM retention_policies pol
               JOIN projects p ON p.id = pol.project_id
               JOIN retention_runs r ON r.id =
                    (SELECT MAX(x.id) FROM retention_runs x
                      WHERE x.policy_id = pol.id AND x.dry_run = 0 AND x.status <> 'Running')
              ORDER BY p.name",
        )
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(RetentionOutcome {
                    project: r.try_get(0)?,
                    status: r.try_get(1)?,
                    ended_at: r.try_get(2)?,
                    deleted: u64::try_from(r.try_get::<i64, _>(3)?).unwrap_or(0),
                })
            })
            .collect()
    }

    async fn record_pulls(&self, pulls: &[PullTime]) -> Result<()> {
        if pulls.is_empty() {
            return Ok(());
        }
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        for p in pulls {
            sqlx::query(
                "UPDATE manifests SET pulled_at = ?3
                  WHERE repository_id = (SELECT id FROM repositories WHERE name = ?1)
                    AND digest = ?2 AND (pulled_at IS NULL OR pulled_at < ?3)",
            )
            .bind(&p.repository)
            .bind(&p.digest)
            .bind(p.at)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn retentions_suite() {
        let dir = tempfile::tempdir().expect("tempdir");
        let meta = crate::meta::sqlite::SqliteMeta::open(&dir.path().join("berth.db"))
            .await
            .expect("open");
        crate::meta::testsuite::retentions(&meta).await;
    }
}
