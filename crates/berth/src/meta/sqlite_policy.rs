//! SQLite implementation of project policies ([`ImmutableRules`]).

use super::sqlite::SqliteMeta;
use super::{
    now, project_range, ImmutableRules, MetaError, NewRule, Quota, Quotas, Result, StoredRule,
};
use oci::Digest;
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, SqliteConnection};

fn rule(r: &SqliteRow) -> Result<StoredRule> {
    Ok(StoredRule {
        id: r.try_get(0)?,
        project_id: r.try_get(1)?,
        priority: r.try_get(2)?,
        disabled: r.try_get::<i64, _>(3)? != 0,
        selectors: r.try_get(4)?,
    })
}

#[async_trait::async_trait]
impl ImmutableRules for SqliteMeta {
    async fn immutable_rules(&self, project_id: i64) -> Result<Vec<StoredRule>> {
        let rows = sqlx::query(
            "SELECT id, project_id, priority, disabled, selectors FROM immutable_rules
              WHERE project_id = ?1 ORDER BY id",
        )
        .bind(project_id)
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(rule).collect()
    }

    async fn active_immutable_rules(&self, project: &str) -> Result<Vec<StoredRule>> {
        let rows = sqlx::query(
            "SELECT r.id, r.project_id, r.priority, r.disabled, r.selectors
               FROM immutable_rules r JOIN projects p ON p.id = r.project_id
              WHERE p.name = ?1 AND r.disabled = 0 ORDER BY r.id",
        )
        .bind(project)
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(rule).collect()
    }

    async fn add_immutable_rule(
        &self,
        project_id: i64,
        r: &NewRule,
        max: u32,
    ) -> Result<Option<i64>> {
        // One statement: two requests at once cannot both pass the cap.
        let id: Option<i64> = sqlx::query_scalar(
            "INSERT INTO immutable_rules (project_id, priority, disabled, selectors, created_at, updated_at)
             SELECT ?1, ?2, ?3, ?4, ?5, ?5
              WHERE (SELECT COUNT(*) FROM immutable_rules WHERE project_id = ?1) < ?6
             RETURNING id",
        )
        .bind(project_id)
        .bind(r.priority)
        .bind(r.disabled)
        .bind(&r.selectors)
        .bind(now())
        .bind(i64::from(max))
        .fetch_optional(&self.writer)
        .await?;
        Ok(id)
    }

    async fn update_immutable_rule(&self, project_id: i64, id: i64, r: &NewRule) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE immutable_rules SET priority = ?3, disabled = ?4, selectors = ?5, updated_at = ?6
              WHERE project_id = ?1 AND id = ?2",
        )
        .bind(project_id)
        .bind(id)
        .bind(r.priority)
        .bind(r.disabled)
        .bind(&r.selectors)
        .bind(now())
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn delete_immutable_rule(&self, project_id: i64, id: i64) -> Result<bool> {
        let done = sqlx::query("DELETE FROM immutable_rules WHERE project_id = ?1 AND id = ?2")
            .bind(project_id)
            .bind(id)
            .execute(&self.writer)
            .await?;
        Ok(done.rows_affected() == 1)
    }
}

const QUOTA_COLUMNS: &str =
    "q.project_id, p.name, q.hard, q.used, q.created_at, q.updated_at FROM project_quotas q
     JOIN projects p ON p.id = q.project_id";

fn quota(r: &SqliteRow) -> Result<Quota> {
    let hard: i64 = r.try_get(2)?;
    Ok(Quota {
        project_id: r.try_get(0)?,
        project: r.try_get(1)?,
        hard: u64::try_from(hard).ok(),
        used: u64::try_from(r.try_get::<i64, _>(3)?).unwrap_or(0),
        created_at: r.try_get(4)?,
        updated_at: r.try_get(5)?,
    })
}

/// The bytes of the distinct blobs linked into the repositories of project `?1`.
const USAGE: &str = "SELECT COALESCE(SUM(size), 0) FROM blobs WHERE digest IN
       (SELECT rb.digest FROM repositories r JOIN repository_blobs rb ON rb.repository_id = r.id
         WHERE r.name >= ?1 AND r.name < ?2)";

/// Whether a repository of the project whose name range is `?2..?3` links `?1`.
const HOLDS: &str = "SELECT EXISTS (SELECT 1 FROM repository_blobs rb
       JOIN repositories r ON r.id = rb.repository_id
      WHERE rb.digest = ?1 AND r.name >= ?2 AND r.name < ?3)";

/// The quota (project id, hard, used) of the project `repo` is in, if it has one.
async fn quota_of(
    tx: &mut SqliteConnection,
    repo: &str,
) -> Result<Option<(String, i64, i64, i64)>> {
    let Some((project, _)) = repo.split_once('/') else {
        return Ok(None);
    };
    let row = sqlx::query(
        "SELECT q.project_id, q.hard, q.used FROM project_quotas q
           JOIN projects p ON p.id = q.project_id WHERE p.name = ?1",
    )
    .bind(project)
    .fetch_optional(&mut *tx)
    .await?;
    Ok(match row {
        Some(r) => Some((
            project.to_string(),
            r.try_get(0)?,
            r.try_get(1)?,
            r.try_get(2)?,
        )),
        None => None,
    })
}

/// Whether a repository of `project` links `d`.
async fn holds(tx: &mut SqliteConnection, project: &str, d: &Digest) -> Result<bool> {
    let (lo, hi) = project_range(project);
    Ok(sqlx::query_scalar(HOLDS)
        .bind(d.as_str())
        .bind(&lo)
        .bind(&hi)
        .fetch_one(&mut *tx)
        .await?)
}

/// In a write transaction, before `d` (`size` bytes) is linked into `repo`: charge it
/// to the quota of `repo`'s project if the project does not hold it yet, or refuse
/// with [`MetaError::QuotaExceeded`] if that would pass the limit.
pub(super) async fn charge(
    tx: &mut SqliteConnection,
    repo: &str,
    d: &Digest,
    size: u64,
) -> Result<()> {
    let Some((project, id, hard, used)) = quota_of(tx, repo).await? else {
        return Ok(());
    };
    if holds(tx, &project, d).await? {
        return Ok(());
    }
    let size_i = i64::try_from(size).unwrap_or(i64::MAX);
    if hard >= 0 && used.saturating_add(size_i) > hard {
        return Err(MetaError::QuotaExceeded {
            project,
            hard: hard.unsigned_abs(),
            used: used.max(0).unsigned_abs(),
            size,
        });
    }
    sqlx::query(
        "UPDATE project_quotas SET used = used + ?2, updated_at = ?3 WHERE project_id = ?1",
    )
    .bind(id)
    .bind(size_i)
    .bind(now())
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// In a write transaction, after a link of `d` (`size` bytes) left `repo`: take it off
/// the quota of `repo`'s project if no repository of the project links it any more.
pub(super) async fn release(
    tx: &mut SqliteConnection,
    repo: &str,
    d: &Digest,
    size: u64,
) -> Result<()> {
    let Some((project, id, _, _)) = quota_of(tx, repo).await? else {
        return Ok(());
    };
    if holds(tx, &project, d).await? {
        return Ok(());
    }
    sqlx::query(
        "UPDATE project_quotas SET used = MAX(used - ?2, 0), updated_at = ?3 WHERE project_id = ?1",
    )
    .bind(id)
    .bind(i64::try_from(size).unwrap_or(i64::MAX))
    .bind(now())
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// In a write transaction, after many links of `repo` went: count its project's usage
/// again.
pub(super) async fn recount(tx: &mut SqliteConnection, repo: &str) -> Result<()> {
    let Some((project, id, _, _)) = quota_of(tx, repo).await? else {
        return Ok(());
    };
    let (lo, hi) = project_range(&project);
    let used: i64 = sqlx::query_scalar(USAGE)
        .bind(&lo)
        .bind(&hi)
        .fetch_one(&mut *tx)
        .await?;
    sqlx::query("UPDATE project_quotas SET used = ?2, updated_at = ?3 WHERE project_id = ?1")
        .bind(id)
        .bind(used)
        .bind(now())
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// The size of a recorded blob (0 if it is not recorded).
pub(super) async fn blob_size(tx: &mut SqliteConnection, d: &Digest) -> Result<u64> {
    let size: Option<i64> = sqlx::query_scalar("SELECT size FROM blobs WHERE digest = ?1")
        .bind(d.as_str())
        .fetch_optional(&mut *tx)
        .await?;
    Ok(size.and_then(|s| u64::try_from(s).ok()).unwrap_or(0))
}

#[async_trait::async_trait]
impl Quotas for SqliteMeta {
    async fn set_quota(&self, project_id: i64, hard: Option<u64>) -> Result<Option<Quota>> {
        let mut tx = self.begin_immediate("setting a quota").await?;
        let Some(name) = sqlx::query_scalar::<_, String>("SELECT name FROM projects WHERE id = ?1")
            .bind(project_id)
            .fetch_optional(&mut *tx)
            .await?
        else {
            return Ok(None);
        };
        let (lo, hi) = project_range(&name);
        let used: i64 = sqlx::query_scalar(USAGE)
            .bind(&lo)
            .bind(&hi)
            .fetch_one(&mut *tx)
            .await?;
        let hard = hard.map_or(-1, |h| i64::try_from(h).unwrap_or(i64::MAX));
        sqlx::query(
            "INSERT INTO project_quotas (project_id, hard, used, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?4)
             ON CONFLICT (project_id) DO UPDATE SET hard = excluded.hard, used = excluded.used,
                 updated_at = excluded.updated_at",
        )
        .bind(project_id)
        .bind(hard)
        .bind(used)
        .bind(now())
        .execute(&mut *tx)
        .await?;
        let q = sqlx::query(&format!("SELECT {QUOTA_COLUMNS} WHERE q.project_id = ?1"))
            .bind(project_id)
            .fetch_one(&mut *tx)
            .await?;
        let q = quota(&q)?;
        tx.commit().await?;
        Ok(Some(q))
    }

    async fn quota(&self, project_id: i64) -> Result<Option<Quota>> {
        let row = sqlx::query(&format!("SELECT {QUOTA_COLUMNS} WHERE q.project_id = ?1"))
            .bind(project_id)
            .fetch_optional(&self.reader)
            .await?;
        row.as_ref().map(quota).transpose()
    }

    async fn quotas(&self, page: super::Page) -> Result<(Vec<Quota>, u64)> {
        let (limit, offset) = super::limit_offset(page);
        let rows = sqlx::query(&format!(
            "SELECT {QUOTA_COLUMNS} ORDER BY q.project_id LIMIT ?1 OFFSET ?2"
        ))
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.reader)
        .await?;
        let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM project_quotas")
            .fetch_one(&self.reader)
            .await?;
        Ok((
            rows.iter().map(quota).collect::<Result<_>>()?,
            u64::try_from(total).unwrap_or(0),
        ))
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn immutable_rules_suite() {
        let dir = tempfile::tempdir().expect("tempdir");
        let meta = super::SqliteMeta::open(&dir.path().join("berth.db"))
            .await
            .expect("open");
        crate::meta::testsuite::immutable_rules(&meta).await;
    }

    #[tokio::test]
    async fn quotas_suite() {
        let dir = tempfile::tempdir().expect("tempdir");
        let meta = super::SqliteMeta::open(&dir.path().join("berth.db"))
            .await
            .expect("open");
        crate::meta::testsuite::quotas(&meta).await;
    }
}
