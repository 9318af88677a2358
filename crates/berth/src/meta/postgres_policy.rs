//! PostgreSQL implementation of project policies ([`ImmutableRules`]).

use super::postgres::{now, PgMeta};
use super::{project_range, ImmutableRules, MetaError, NewRule, Quota, Quotas, Result, StoredRule};
use oci::Digest;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};

fn rule(r: &PgRow) -> Result<StoredRule> {
    Ok(StoredRule {
        id: r.try_get(0)?,
        project_id: r.try_get(1)?,
        priority: r.try_get(2)?,
        disabled: r.try_get(3)?,
        selectors: r.try_get(4)?,
    })
}

#[async_trait::async_trait]
impl ImmutableRules for PgMeta {
    async fn immutable_rules(&self, project_id: i64) -> Result<Vec<StoredRule>> {
        self.read(async {
            let rows = sqlx::query(
                "SELECT id, project_id, priority, disabled, selectors FROM immutable_rules
                  WHERE project_id = $1 ORDER BY id",
            )
            .bind(project_id)
            .fetch_all(&self.pool)
            .await?;
            rows.iter().map(rule).collect()
        })
        .await
    }

    async fn active_immutable_rules(&self, project: &str) -> Result<Vec<StoredRule>> {
        self.read(async {
            let rows = sqlx::query(
                "SELECT r.id, r.project_id, r.priority, r.disabled, r.selectors
                   FROM immutable_rules r JOIN projects p ON p.id = r.project_id
                  WHERE p.name = $1 AND NOT r.disabled ORDER BY r.id",
            )
            .bind(project)
            .fetch_all(&self.pool)
            .await?;
            rows.iter().map(rule).collect()
        })
        .await
    }

    async fn add_immutable_rule(
        &self,
        project_id: i64,
        r: &NewRule,
        max: u32,
    ) -> Result<Option<i64>> {
        self.write("adding an immutable tag rule", || async move {
            let mut tx = self.pool.begin().await?;
            // The project's row locked: two requests at once cannot both pass the cap.
            sqlx::query("SELECT 1 FROM projects WHERE id = $1 FOR UPDATE")
                .bind(project_id)
                .execute(&mut *tx)
                .await?;
            let id: Option<i64> = sqlx::query_scalar(
                "INSERT INTO immutable_rules (project_id, priority, disabled, selectors, created_at, updated_at)
                 SELECT $1, $2, $3, $4, $5, $5
                  WHERE (SELECT COUNT(*) FROM immutable_rules WHERE project_id = $1) < $6
                 RETURNING id",
            )
            .bind(project_id)
            .bind(r.priority)
            .bind(r.disabled)
            .bind(&r.selectors)
            .bind(now())
            .bind(i64::from(max))
            .fetch_optional(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(id)
        })
        .await
    }

    async fn update_immutable_rule(&self, project_id: i64, id: i64, r: &NewRule) -> Result<bool> {
        self.read(async {
            let done = sqlx::query(
                "UPDATE immutable_rules SET priority = $3, disabled = $4, selectors = $5, updated_at = $6
                  WHERE project_id = $1 AND id = $2",
            )
            .bind(project_id)
            .bind(id)
            .bind(r.priority)
            .bind(r.disabled)
            .bind(&r.selectors)
            .bind(now())
            .execute(&self.pool)
            .await?;
            Ok(done.rows_affected() == 1)
        })
        .await
    }

    async fn delete_immutable_rule(&self, project_id: i64, id: i64) -> Result<bool> {
        self.read(async {
            let done = sqlx::query("DELETE FROM immutable_rules WHERE project_id = $1 AND id = $2")
                .bind(project_id)
                .bind(id)
                .execute(&self.pool)
                .await?;
            Ok(done.rows_affected() == 1)
        })
        .await
    }
}

const QUOTA_COLUMNS: &str =
    "q.project_id, p.name, q.hard, q.used, q.created_at, q.updated_at FROM project_quotas q
     JOIN projects p ON p.id = q.project_id";

fn quota(r: &PgRow) -> Result<Quota> {
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

/// The bytes of the distinct blobs linked into the repositories of the project whose
/// name range is `$1..$2`.
const USAGE: &str = "SELECT COALESCE(SUM(size), 0)::BIGINT FROM blobs WHERE digest IN
       (SELECT rb.digest FROM repositories r JOIN repository_blobs rb ON rb.repository_id = r.id
         WHERE r.name >= $1 AND r.name < $2)";

/// Whether a repository of the project whose name range is `$2..$3` links `$1`.
const HOLDS: &str = "SELECT EXISTS (SELECT 1 FROM repository_blobs rb
       JOIN repositories r ON r.id = rb.repository_id
      WHERE rb.digest = $1 AND r.name >= $2 AND r.name < $3)";

/// The quota (project, id, hard, used) of the project `repo` is in, if it has one, its
/// row locked: the links and unlinks of one project's blobs take turns on it, so each
/// sees what the one before committed. The project's row is held too (key share), so a
/// quota being set meanwhile (which counts the usage) waits for this transaction.
async fn quota_of(tx: &mut PgConnection, repo: &str) -> Result<Option<(String, i64, i64, i64)>> {
    let Some((project, _)) = repo.split_once('/') else {
        return Ok(None);
    };
    let Some(id) =
        sqlx::query_scalar::<_, i64>("SELECT id FROM projects WHERE name = $1 FOR KEY SHARE")
            .bind(project)
            .fetch_optional(&mut *tx)
            .await?
    else {
        return Ok(None);
    };
    let row = sqlx::query("SELECT hard, used FROM project_quotas WHERE project_id = $1 FOR UPDATE")
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
    Ok(match row {
        Some(r) => Some((project.to_string(), id, r.try_get(0)?, r.try_get(1)?)),
        None => None,
    })
}

async fn holds(tx: &mut PgConnection, project: &str, d: &Digest) -> Result<bool> {
    let (lo, hi) = project_range(project);
    Ok(sqlx::query_scalar(HOLDS)
        .bind(d.as_str())
        .bind(&lo)
        .bind(&hi)
        .fetch_one(&mut *tx)
        .await?)
}

/// See `sqlite_policy::charge`.
pub(super) async fn charge(tx: &mut PgConnection, repo: &str, d: &Digest, size: u64) -> Result<()> {
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
        "UPDATE project_quotas SET used = used + $2, updated_at = $3 WHERE project_id = $1",
    )
    .bind(id)
    .bind(size_i)
    .bind(now())
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// See `sqlite_policy::release`.
pub(super) async fn release(
    tx: &mut PgConnection,
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
        "UPDATE project_quotas SET used = GREATEST(used - $2, 0), updated_at = $3 WHERE project_id = $1",
    )
    .bind(id)
    .bind(i64::try_from(size).unwrap_or(i64::MAX))
    .bind(now())
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// See `sqlite_policy::recount`.
pub(super) async fn recount(tx: &mut PgConnection, repo: &str) -> Result<()> {
    let Some((project, id, _, _)) = quota_of(tx, repo).await? else {
        return Ok(());
    };
    let (lo, hi) = project_range(&project);
    let used: i64 = sqlx::query_scalar(USAGE)
        .bind(&lo)
        .bind(&hi)
        .fetch_one(&mut *tx)
        .await?;
    sqlx::query("UPDATE project_quotas SET used = $2, updated_at = $3 WHERE project_id = $1")
        .bind(id)
        .bind(used)
        .bind(now())
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// The size of a recorded blob (0 if it is not recorded).
pub(super) async fn blob_size(tx: &mut PgConnection, d: &Digest) -> Result<u64> {
    let size: Option<i64> = sqlx::query_scalar("SELECT size FROM blobs WHERE digest = $1")
        .bind(d.as_str())
        .fetch_optional(&mut *tx)
        .await?;
    Ok(size.and_then(|s| u64::try_from(s).ok()).unwrap_or(0))
}

#[async_trait::async_trait]
impl Quotas for PgMeta {
    async fn set_quota(&self, project_id: i64, hard: Option<u64>) -> Result<Option<Quota>> {
        let hard = hard.map_or(-1, |h| i64::try_from(h).unwrap_or(i64::MAX));
        self.write("setting a quota", || async move {
            let mut tx = self.pool.begin().await?;
            // The project's row exclusive: links into it (which hold it in key share)
            // wait, so the usage counted here is the one they then add to.
            let Some(name) = sqlx::query_scalar::<_, String>(
                "SELECT name FROM projects WHERE id = $1 FOR UPDATE",
            )
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
            sqlx::query(
                "INSERT INTO project_quotas (project_id, hard, used, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $4)
                 ON CONFLICT (project_id) DO UPDATE SET hard = excluded.hard,
                     used = excluded.used, updated_at = excluded.updated_at",
            )
            .bind(project_id)
            .bind(hard)
            .bind(used)
            .bind(now())
            .execute(&mut *tx)
            .await?;
            let q = sqlx::query(&format!("SELECT {QUOTA_COLUMNS} WHERE q.project_id = $1"))
                .bind(project_id)
                .fetch_one(&mut *tx)
                .await?;
            let q = quota(&q)?;
            tx.commit().await?;
            Ok(Some(q))
        })
        .await
    }

    async fn quota(&self, project_id: i64) -> Result<Option<Quota>> {
        self.read(async {
            let row = sqlx::query(&format!("SELECT {QUOTA_COLUMNS} WHERE q.project_id = $1"))
                .bind(project_id)
                .fetch_optional(&self.pool)
                .await?;
            row.as_ref().map(quota).transpose()
        })
        .await
    }

    async fn quotas(&self, page: super::Page) -> Result<(Vec<Quota>, u64)> {
        let (limit, offset) = super::limit_offset(page);
        self.read(async {
            let rows = sqlx::query(&format!(
                "SELECT {QUOTA_COLUMNS} ORDER BY q.project_id LIMIT $1 OFFSET $2"
            ))
            .bind(limit)
            .bind(offset)
            .fetch_all(&self.pool)
            .await?;
            let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM project_quotas")
                .fetch_one(&self.pool)
                .await?;
            Ok((
                rows.iter().map(quota).collect::<Result<_>>()?,
                u64::try_from(total).unwrap_or(0),
            ))
        })
        .await
    }
}
