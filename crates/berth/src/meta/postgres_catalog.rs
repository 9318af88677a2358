//! PostgreSQL implementation of [`Catalog`] (indexes in `migrations/postgres/0006_catalog.sql`).
//! As on SQLite: a listing's count, its page, the page's tags and the page's references
//! are four queries over one snapshot (REPEATABLE READ), the page's digests passed as one
//! array parameter, so a page costs the same few statements however long it is. A
//! project's repositories are one range of the name index (`meta::project_range`; the
//! name column is `COLLATE "C"`, so the range is a byte range).

use super::access::Page;
use super::catalog::{ArtifactFilter, ArtifactInfo, Catalog, RepositorySummary, TagInfo};
use super::postgres::PgMeta;
use super::{digest, limit_offset, project_range, total, MetaError, Result};
use oci::{Digest, RepoName};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};
use std::collections::HashMap;

/// The columns of a [`RepositorySummary`] of repository `r`. The newest manifest and tag
/// are the first entries of `manifests_by_time` and `tags_by_time`.
macro_rules! summary_columns {
    () => {
        "r.id, r.name, r.created_at,
         GREATEST(r.created_at,
             COALESCE((SELECT created_at FROM manifests WHERE repository_id = r.id
                       ORDER BY created_at DESC LIMIT 1), 0),
             COALESCE((SELECT updated_at FROM tags WHERE repository_id = r.id
                       ORDER BY updated_at DESC LIMIT 1), 0)),
         (SELECT COUNT(*) FROM manifests WHERE repository_id = r.id)"
    };
}

/// The repositories of a project range (`$1`, `$2`) whose name contains `$3` (any when
/// NULL).
macro_rules! in_project {
    () => {
        " FROM repositories r
         WHERE r.name >= $1 AND r.name < $2 AND ($3::text IS NULL OR strpos(r.name, $3) > 0)"
    };
}

const SUMMARIES_COUNT: &str = concat!("SELECT COUNT(*)", in_project!());
/// A page of summaries (`LIMIT $4 OFFSET $5`).
const SUMMARIES: &str = concat!(
    "SELECT ",
    summary_columns!(),
    in_project!(),
    " ORDER BY r.name LIMIT $4 OFFSET $5"
);
const SUMMARY: &str = concat!(
    "SELECT ",
    summary_columns!(),
    " FROM repositories r WHERE r.name = $1"
);

/// The columns of an [`ArtifactInfo`] of manifest `m` (tags and children aside).
macro_rules! artifact_columns {
    () => {
        "m.digest, m.media_type, m.artifact_type, m.size, m.created_at, m.subject, m.annotations,
         m.pulled_at"
    };
}

/// The manifests of repository `$1` that [`ArtifactFilter`] keeps: tagged or not (`$2`),
/// with a tag containing `$3`.
macro_rules! artifact_filter {
    () => {
        " FROM manifests m WHERE m.repository_id = $1
          AND ($2::boolean IS NULL OR EXISTS (SELECT 1 FROM tags t
                                     WHERE t.repository_id = m.repository_id
                                       AND t.digest = m.digest) = $2)
          AND ($3::text IS NULL OR EXISTS (SELECT 1 FROM tags t
                                     WHERE t.repository_id = m.repository_id
                                       AND t.digest = m.digest AND strpos(t.name, $3) > 0))"
    };
}

const ARTIFACTS_COUNT: &str = concat!("SELECT COUNT(*)", artifact_filter!());
/// A page of artifacts (`LIMIT $4 OFFSET $5`), in the order of `manifests_by_time`.
const ARTIFACTS: &str = concat!(
    "SELECT ",
    artifact_columns!(),
    artifact_filter!(),
    " ORDER BY m.created_at DESC, m.digest LIMIT $4 OFFSET $5"
);
const ARTIFACT: &str = concat!(
    "SELECT ",
    artifact_columns!(),
    " FROM manifests m WHERE m.repository_id = $1 AND m.digest = $2"
);

/// The tags of the manifests `$2` (an array of distinct digests) of repository `$1`.
const PAGE_TAGS: &str = "SELECT t.digest, t.name, t.updated_at FROM tags t
     WHERE t.repository_id = $1 AND t.digest = ANY($2)";

/// The references of the manifests `$2` (an array of distinct digests) of repository
/// `$1`, with each one's size: a child manifest's (in the same repository) or a blob's,
/// whichever it is (an index may list blobs, as BuildKit's cache indexes do).
const PAGE_REFERENCES: &str = "SELECT x.manifest_digest, x.child_digest, x.child_is_manifest,
            CASE WHEN x.child_is_manifest THEN COALESCE(c.size, b.size)
                 ELSE COALESCE(b.size, c.size) END,
            x.position
     FROM manifest_references x
     LEFT JOIN blobs b ON b.digest = x.child_digest
     LEFT JOIN manifests c ON c.repository_id = x.repository_id AND c.digest = x.child_digest
     WHERE x.repository_id = $1 AND x.manifest_digest = ANY($2)";

/// The usage of each project of `$1` (an array of names), in that order: its range of
/// the name index. A blob linked into several of its repositories is one digest in the
/// `IN` list, counted once. A name holding '/' is no project.
const USAGE_OF: &str = "SELECT p.value,
        CASE WHEN strpos(p.value, '/') > 0 THEN 0 ELSE
          (SELECT COUNT(*) FROM repositories
           WHERE name >= p.value || '/' AND name < p.value || '0') END,
        CASE WHEN strpos(p.value, '/') > 0 THEN 0 ELSE
          (SELECT COALESCE(SUM(size), 0)::BIGINT FROM blobs WHERE digest IN
             (SELECT rb.digest FROM repositories r
              JOIN repository_blobs rb ON rb.repository_id = r.id
              WHERE r.name >= p.value || '/' AND r.name < p.value || '0')) END
     FROM unnest($1::text[]) WITH ORDINALITY AS p(value, key) ORDER BY p.key";

/// The usage of every project: each repository with a '/', grouped by its first
/// component (a walk of the whole catalog and its links, as the question is).
const USAGE_ALL: &str = "WITH rp AS (SELECT id, split_part(name, '/', 1) AS project
                 FROM repositories WHERE strpos(name, '/') > 0)
     SELECT c.project, c.n, COALESCE(s.bytes, 0)::BIGINT
     FROM (SELECT project, COUNT(*) AS n FROM rp GROUP BY project) c
     LEFT JOIN (SELECT d.project, SUM(b.size) AS bytes
                FROM (SELECT DISTINCT rp.project, rb.digest FROM rp
                      JOIN repository_blobs rb ON rb.repository_id = rp.id) d
                JOIN blobs b ON b.digest = d.digest
                GROUP BY d.project) s ON s.project = c.project
     ORDER BY c.project";

/// A stored size or count as `u64`.
fn unsigned(n: i64, what: &str) -> Result<u64> {
    u64::try_from(n).map_err(|_| MetaError::Corrupt(format!("negative {what} {n}")))
}

fn summary(r: &PgRow) -> Result<RepositorySummary> {
    Ok(RepositorySummary {
        id: r.try_get(0)?,
        name: r.try_get(1)?,
        created_at: r.try_get(2)?,
        updated_at: r.try_get(3)?,
        artifact_count: total(r.try_get(4)?)?,
    })
}

/// An artifact row (see `artifact_columns!`), its tags and children still empty and its
/// size the manifest's own.
fn artifact(r: &PgRow) -> Result<ArtifactInfo> {
    let subject: Option<String> = r.try_get(5)?;
    Ok(ArtifactInfo {
        digest: digest(r.try_get(0)?)?,
        media_type: r.try_get(1)?,
        artifact_type: r.try_get(2)?,
        size: unsigned(r.try_get(3)?, "manifest size")?,
        created_at: r.try_get(4)?,
        subject: subject.map(digest).transpose()?,
        annotations: r.try_get(6)?,
        pulled_at: r.try_get(7)?,
        tags: Vec::new(),
        children: Vec::new(),
    })
}

async fn repository_id(conn: &mut PgConnection, repo: &RepoName) -> Result<Option<i64>> {
    Ok(
        sqlx::query_scalar("SELECT id FROM repositories WHERE name = $1")
            .bind(repo.as_str())
            .fetch_optional(conn)
            .await?,
    )
}

/// Add the tags (by name), the referenced sizes and the children (in their order) of
/// `artifacts`, manifests of repository `repo_id`: one query for all their tags, one for
/// all their references.
async fn complete(
    conn: &mut PgConnection,
    repo_id: i64,
    artifacts: &mut [ArtifactInfo],
) -> Result<()> {
    if artifacts.is_empty() {
        return Ok(());
    }
    let digests: Vec<&str> = artifacts.iter().map(|a| a.digest.as_str()).collect();
    let at: HashMap<String, usize> = artifacts
        .iter()
        .enumerate()
        .map(|(i, a)| (a.digest.to_string(), i))
        .collect();
    let tags = sqlx::query(PAGE_TAGS)
        .bind(repo_id)
        .bind(&digests)
        .fetch_all(&mut *conn)
        .await?;
    let references = sqlx::query(PAGE_REFERENCES)
        .bind(repo_id)
        .bind(&digests)
        .fetch_all(&mut *conn)
        .await?;
    for r in tags {
        let d: String = r.try_get(0)?;
        if let Some(&i) = at.get(&d) {
            artifacts[i].tags.push(TagInfo {
                name: r.try_get(1)?,
                updated_at: r.try_get(2)?,
            });
        }
    }
    // Children in their place (unplaced ones last, by digest), per artifact.
    let mut children: Vec<Vec<(Option<i64>, String)>> = vec![Vec::new(); artifacts.len()];
    for r in references {
        let parent: String = r.try_get(0)?;
        let Some(&i) = at.get(&parent) else { continue };
        if let Some(size) = r.try_get::<Option<i64>, _>(3)? {
            artifacts[i].size = artifacts[i].size.saturating_add(unsigned(size, "size")?);
        }
        if r.try_get::<bool, _>(2)? {
            children[i].push((r.try_get(4)?, r.try_get(1)?));
        }
    }
    for (a, mut kids) in artifacts.iter_mut().zip(children) {
        a.tags.sort_by(|x, y| x.name.cmp(&y.name));
        kids.sort_by(|(p, d), (q, e)| (p.is_none(), p, d).cmp(&(q.is_none(), q, e)));
        a.children = kids
            .into_iter()
            .map(|(_, d)| digest(d))
            .collect::<Result<_>>()?;
    }
    Ok(())
}

#[async_trait::async_trait]
impl Catalog for PgMeta {
    async fn repository_summaries(
        &self,
        project: &str,
        name_contains: Option<&str>,
        page: Page,
    ) -> Result<(Vec<RepositorySummary>, u64)> {
        if project.contains('/') {
            return Ok((Vec::new(), 0));
        }
        self.read(async {
            let (lo, hi) = project_range(project);
            let (limit, offset) = limit_offset(page);
            let mut tx = self.snapshot().await?;
            let n: i64 = sqlx::query_scalar(SUMMARIES_COUNT)
                .bind(&lo)
                .bind(&hi)
                .bind(name_contains)
                .fetch_one(&mut *tx)
                .await?;
            let rows = sqlx::query(SUMMARIES)
                .bind(&lo)
                .bind(&hi)
                .bind(name_contains)
                .bind(limit)
                .bind(offset)
                .fetch_all(&mut *tx)
                .await?;
            tx.commit().await?;
            let list = rows.iter().map(summary).collect::<Result<_>>()?;
            Ok((list, total(n)?))
        })
        .await
    }

    async fn repository_summary(&self, repo: &RepoName) -> Result<Option<RepositorySummary>> {
        self.read(async {
            let row = sqlx::query(SUMMARY)
                .bind(repo.as_str())
                .fetch_optional(&self.pool)
                .await?;
            row.as_ref().map(summary).transpose()
        })
        .await
    }

    async fn artifacts(
        &self,
        repo: &RepoName,
        filter: &ArtifactFilter,
        page: Page,
    ) -> Result<(Vec<ArtifactInfo>, u64)> {
        self.read(async {
            let (limit, offset) = limit_offset(page);
            let mut tx = self.snapshot().await?;
            let Some(repo_id) = repository_id(&mut tx, repo).await? else {
                tx.commit().await?;
                return Ok((Vec::new(), 0));
            };
            let n: i64 = sqlx::query_scalar(ARTIFACTS_COUNT)
                .bind(repo_id)
                .bind(filter.tagged)
                .bind(filter.tag_contains.as_deref())
                .fetch_one(&mut *tx)
                .await?;
            let rows = sqlx::query(ARTIFACTS)
                .bind(repo_id)
                .bind(filter.tagged)
                .bind(filter.tag_contains.as_deref())
                .bind(limit)
                .bind(offset)
                .fetch_all(&mut *tx)
                .await?;
            let mut list = rows.iter().map(artifact).collect::<Result<Vec<_>>>()?;
            complete(&mut tx, repo_id, &mut list).await?;
            tx.commit().await?;
            Ok((list, total(n)?))
        })
        .await
    }

    async fn artifact(&self, repo: &RepoName, d: &Digest) -> Result<Option<ArtifactInfo>> {
        self.read(async {
            let mut tx = self.snapshot().await?;
            let Some(repo_id) = repository_id(&mut tx, repo).await? else {
                tx.commit().await?;
                return Ok(None);
            };
            let row = sqlx::query(ARTIFACT)
                .bind(repo_id)
                .bind(d.as_str())
                .fetch_optional(&mut *tx)
                .await?;
            let Some(row) = row else {
                tx.commit().await?;
                return Ok(None);
            };
            let mut one = [artifact(&row)?];
            complete(&mut tx, repo_id, &mut one).await?;
            tx.commit().await?;
            let [a] = one;
            Ok(Some(a))
        })
        .await
    }

    async fn project_usage(&self, projects: Option<&[String]>) -> Result<Vec<(String, u64, u64)>> {
        self.read(async {
            let rows = match projects {
                Some(projects) => {
                    sqlx::query(USAGE_OF)
                        .bind(projects)
                        .fetch_all(&self.pool)
                        .await?
                }
                None => sqlx::query(USAGE_ALL).fetch_all(&self.pool).await?,
            };
            rows.iter()
                .map(|r| {
                    Ok((
                        r.try_get(0)?,
                        total(r.try_get(1)?)?,
                        unsigned(r.try_get(2)?, "blob size total")?,
                    ))
                })
                .collect()
        })
        .await
    }
}
