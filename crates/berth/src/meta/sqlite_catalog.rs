//! SQLite implementation of [`Catalog`] (indexes in `migrations/sqlite/0006_catalog.sql`).
//! A listing's count, its page, the page's tags and the page's references (for sizes and
//! children) are four queries in one read transaction, the page's digests passed as a
//! JSON array to `json_each`: a page costs the same few statements however long it is,
//! and its parts agree. A project's repositories are one range of the name index
//! (`meta::project_range`); an artifact page is read in the order of
//! `manifests_by_time`. No statement sorts (the few tags and references of one manifest
//! are put in order here).

use super::access::Page;
use super::catalog::{ArtifactFilter, ArtifactInfo, Catalog, RepositorySummary, TagInfo};
use super::sqlite::SqliteMeta;
use super::{digest, limit_offset, project_range, total, MetaError, Result};
use oci::{Digest, RepoName};
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, SqliteConnection};
use std::collections::HashMap;

/// The columns of a [`RepositorySummary`] of repository `r`. The newest manifest and tag
/// are the first entries of `manifests_by_time` and `tags_by_time`.
macro_rules! summary_columns {
    () => {
        "r.id, r.name, r.created_at,
         MAX(r.created_at,
             COALESCE((SELECT created_at FROM manifests WHERE repository_id = r.id
                       ORDER BY created_at DESC LIMIT 1), 0),
             COALESCE((SELECT updated_at FROM tags WHERE repository_id = r.id
                       ORDER BY updated_at DESC LIMIT 1), 0)),
         (SELECT COUNT(*) FROM manifests WHERE repository_id = r.id)"
    };
}

/// The repositories of a project range (`?1`, `?2`) whose name contains `?3` (any when
/// NULL).
macro_rules! in_project {
    () => {
        " FROM repositories r
         WHERE r.name >= ?1 AND r.name < ?2 AND (?3 IS NULL OR instr(r.name, ?3) > 0)"
    };
}

const SUMMARIES_COUNT: &str = concat!("SELECT COUNT(*)", in_project!());
/// A page of summaries (`LIMIT ?4 OFFSET ?5`).
const SUMMARIES: &str = concat!(
    "SELECT ",
    summary_columns!(),
    in_project!(),
    " ORDER BY r.name LIMIT ?4 OFFSET ?5"
);
const SUMMARY: &str = concat!(
    "SELECT ",
    summary_columns!(),
    " FROM repositories r WHERE r.name = ?1"
);

/// The columns of an [`ArtifactInfo`] of manifest `m` (tags and children aside).
macro_rules! artifact_columns {
    () => {
        "m.digest, m.media_type, m.artifact_type, m.size, m.created_at, m.subject, m.annotations,
         m.pulled_at"
    };
}

/// The manifests of repository `?1` that [`ArtifactFilter`] keeps: tagged or not (`?2`),
/// with a tag containing `?3`.
macro_rules! artifact_filter {
    () => {
        " FROM manifests m WHERE m.repository_id = ?1
          AND (?2 IS NULL OR EXISTS (SELECT 1 FROM tags t
                                     WHERE t.repository_id = m.repository_id
                                       AND t.digest = m.digest) = ?2)
          AND (?3 IS NULL OR EXISTS (SELECT 1 FROM tags t
                                     WHERE t.repository_id = m.repository_id
                                       AND t.digest = m.digest AND instr(t.name, ?3) > 0))"
    };
}

const ARTIFACTS_COUNT: &str = concat!("SELECT COUNT(*)", artifact_filter!());
/// A page of artifacts (`LIMIT ?4 OFFSET ?5`), in the order of `manifests_by_time`.
const ARTIFACTS: &str = concat!(
    "SELECT ",
    artifact_columns!(),
    artifact_filter!(),
    " ORDER BY m.created_at DESC, m.digest LIMIT ?4 OFFSET ?5"
);
const ARTIFACT: &str = concat!(
    "SELECT ",
    artifact_columns!(),
    " FROM manifests m WHERE m.repository_id = ?1 AND m.digest = ?2"
);

/// The tags of the manifests `?2` (a JSON array of distinct digests) of repository `?1`:
/// one probe of `tags_by_digest` per manifest, so a repository's other tags are never
/// read (CROSS JOIN keeps the array outside; without `INDEXED BY` the planner prefers
/// walking all the repository's tags in the primary key, which holds `updated_at`).
const PAGE_TAGS: &str = "SELECT t.digest, t.name, t.updated_at
     FROM json_each(?2) j CROSS JOIN tags t INDEXED BY tags_by_digest
     WHERE t.repository_id = ?1 AND t.digest = j.value";

/// The references of the manifests `?2` (a JSON array of distinct digests) of repository
/// `?1`, with each one's size: a child manifest's (in the same repository) or a blob's,
/// whichever it is (an index may list blobs, as BuildKit's cache indexes do). One range
/// of the primary key per manifest, as for `PAGE_TAGS`.
const PAGE_REFERENCES: &str = "SELECT x.manifest_digest, x.child_digest, x.child_is_manifest,
            CASE WHEN x.child_is_manifest THEN COALESCE(c.size, b.size)
                 ELSE COALESCE(b.size, c.size) END,
            x.position
     FROM json_each(?2) j CROSS JOIN manifest_references x
     LEFT JOIN blobs b ON b.digest = x.child_digest
     LEFT JOIN manifests c ON c.repository_id = x.repository_id AND c.digest = x.child_digest
     WHERE x.repository_id = ?1 AND x.manifest_digest = j.value";

/// The usage of each project of `?1` (a JSON array of names), in that order: two probes
/// of its range of the name index. A blob linked into several of its repositories is one
/// digest in the `IN` list, counted once. A name holding '/' is no project.
const USAGE_OF: &str = "SELECT p.value,
        CASE WHEN instr(p.value, '/') > 0 THEN 0 ELSE
          (SELECT COUNT(*) FROM repositories
           WHERE name >= p.value || '/' AND name < p.value || '0') END,
        CASE WHEN instr(p.value, '/') > 0 THEN 0 ELSE
          (SELECT COALESCE(SUM(size), 0) FROM blobs WHERE digest IN
             (SELECT rb.digest FROM repositories r
              JOIN repository_blobs rb ON rb.repository_id = r.id
              WHERE r.name >= p.value || '/' AND r.name < p.value || '0')) END
     FROM json_each(?1) p ORDER BY p.key";

/// The usage of every project: each repository with a '/', grouped by its first
/// component (a walk of the whole catalog and its links, as the question is).
const USAGE_ALL: &str = "WITH rp AS (SELECT id, substr(name, 1, instr(name, '/') - 1) AS project
                 FROM repositories WHERE instr(name, '/') > 0)
     SELECT c.project, c.n, COALESCE(s.bytes, 0)
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

fn summary(r: &SqliteRow) -> Result<RepositorySummary> {
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
fn artifact(r: &SqliteRow) -> Result<ArtifactInfo> {
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

async fn repository_id(conn: &mut SqliteConnection, repo: &RepoName) -> Result<Option<i64>> {
    Ok(
        sqlx::query_scalar("SELECT id FROM repositories WHERE name = ?1")
            .bind(repo.as_str())
            .fetch_optional(conn)
            .await?,
    )
}

/// Add the tags (by name), the referenced sizes and the children (in their order) of
/// `artifacts`, manifests of repository `repo_id`: one query for all their tags, one for
/// all their references.
async fn complete(
    conn: &mut SqliteConnection,
    repo_id: i64,
    artifacts: &mut [ArtifactInfo],
) -> Result<()> {
    if artifacts.is_empty() {
        return Ok(());
    }
    let digests = serde_json::Value::from(
        artifacts
            .iter()
            .map(|a| a.digest.as_str())
            .collect::<Vec<_>>(),
    )
    .to_string();
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
    for r in tags {
        let d: String = r.try_get(0)?;
        if let Some(&i) = at.get(&d) {
            artifacts[i].tags.push(TagInfo {
                name: r.try_get(1)?,
                updated_at: r.try_get(2)?,
            });
        }
    }
    let references = sqlx::query(PAGE_REFERENCES)
        .bind(repo_id)
        .bind(&digests)
        .fetch_all(&mut *conn)
        .await?;
    // Children in their place (unplaced ones, stored before it was recorded, last by
    // digest), per artifact.
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
impl Catalog for SqliteMeta {
    async fn repository_summaries(
        &self,
        project: &str,
        name_contains: Option<&str>,
        page: Page,
    ) -> Result<(Vec<RepositorySummary>, u64)> {
        if project.contains('/') {
            return Ok((Vec::new(), 0));
        }
        let (lo, hi) = project_range(project);
        let (limit, offset) = limit_offset(page);
        let mut tx = self.reader.begin().await?;
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
    }

    async fn repository_summary(&self, repo: &RepoName) -> Result<Option<RepositorySummary>> {
        let row = sqlx::query(SUMMARY)
            .bind(repo.as_str())
            .fetch_optional(&self.reader)
            .await?;
        row.as_ref().map(summary).transpose()
    }

    async fn artifacts(
        &self,
        repo: &RepoName,
        filter: &ArtifactFilter,
        page: Page,
    ) -> Result<(Vec<ArtifactInfo>, u64)> {
        let (limit, offset) = limit_offset(page);
        let mut tx = self.reader.begin().await?;
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
    }

    async fn artifact(&self, repo: &RepoName, d: &Digest) -> Result<Option<ArtifactInfo>> {
        let mut tx = self.reader.begin().await?;
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
    }

    async fn project_usage(&self, projects: Option<&[String]>) -> Result<Vec<(String, u64, u64)>> {
        let rows = match projects {
            Some(projects) => {
                sqlx::query(USAGE_OF)
                    .bind(serde_json::Value::from(projects).to_string())
                    .fetch_all(&self.reader)
                    .await?
            }
            None => sqlx::query(USAGE_ALL).fetch_all(&self.reader).await?,
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
    }
}

#[cfg(test)]
mod tests {
    use super::super::sqlite::SqliteMeta;
    use super::super::{ArtifactFilter, Catalog, Manifests, NewManifest, Page};
    use oci::{Algorithm, Digest, RepoName, Tag};

    fn d(s: &str) -> Digest {
        Digest::of(Algorithm::Sha256, s.as_bytes())
    }

    fn manifest(content: &str) -> NewManifest {
        NewManifest {
            digest: d(content),
            media_type: oci::media::OCI_MANIFEST.to_string(),
            content: content.as_bytes().to_vec(),
            subject: None,
            artifact_type: None,
            annotations: None,
            references: Vec::new(),
            required_blobs: Vec::new(),
            required_manifests: Vec::new(),
        }
    }

    async fn summary(meta: &SqliteMeta, r: &RepoName) -> super::RepositorySummary {
        meta.repository_summary(r)
            .await
            .expect("summary")
            .expect("present")
    }

    use super::super::sqlite_plan::{assert_indexed, assert_plan};

    #[tokio::test]
    async fn hot_statements_use_their_indexes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let meta = SqliteMeta::open(&dir.path().join("berth.db"))
            .await
            .expect("open");
        let names = "sqlite_autoindex_repositories_1";
        let by_time = "manifests_by_time";
        assert_indexed(&meta, super::SUMMARIES_COUNT, &[names]).await;
        for sql in [super::SUMMARIES, super::SUMMARY] {
            assert_indexed(&meta, sql, &[names, by_time, "tags_by_time"]).await;
        }
        for sql in [super::ARTIFACTS_COUNT, super::ARTIFACTS] {
            assert_indexed(&meta, sql, &[by_time, "tags_by_digest"]).await;
        }
        assert_indexed(&meta, super::ARTIFACT, &["sqlite_autoindex_manifests_1"]).await;
        assert_indexed(
            &meta,
            super::PAGE_TAGS,
            &["tags_by_digest (repository_id=? AND digest=?)"],
        )
        .await;
        assert_indexed(
            &meta,
            super::PAGE_REFERENCES,
            &["PRIMARY KEY (repository_id=? AND manifest_digest=?)"],
        )
        .await;
        // Sorted back into the caller's order: a few names.
        assert_plan(
            &meta,
            super::USAGE_OF,
            &[names, "blobs USING PRIMARY KEY"],
            true,
        )
        .await;
    }

    /// The catalog part of the suite on a store holding nothing else (the shared suite
    /// runs it on a store full of other repositories).
    #[tokio::test]
    async fn catalog_suite() {
        let dir = tempfile::tempdir().expect("tempdir");
        let meta = SqliteMeta::open(&dir.path().join("berth.db"))
            .await
            .expect("open");
        crate::meta::testsuite_catalog::run(&meta).await;
    }

    /// With times apart (the shared suite writes everything within a second or two):
    /// artifacts newest first, digest order within a second; a repository's last change
    /// is its newest manifest or tag.
    #[tokio::test]
    async fn times_order_artifacts_and_date_repositories() {
        let dir = tempfile::tempdir().expect("tempdir");
        let meta = SqliteMeta::open(&dir.path().join("berth.db"))
            .await
            .expect("open");
        let r: RepoName = "t/app".parse().expect("repo");
        let tag: Tag = "v1".parse().expect("tag");
        for (name, at) in [("old", 100), ("newest", 300), ("middle", 200), ("tie", 300)] {
            meta.put_manifest(&r, &manifest(name), &[], &[])
                .await
                .expect("put");
            sqlx::query("UPDATE manifests SET created_at = ?1 WHERE digest = ?2")
                .bind(at)
                .bind(d(name).as_str())
                .execute(&meta.writer)
                .await
                .expect("date");
        }
        meta.put_manifest(&r, &manifest("old"), std::slice::from_ref(&tag), &[])
            .await
            .expect("tag");
        let date = |table: &'static str, column: &'static str, at: i64| {
            let meta = &meta;
            async move {
                sqlx::query(&format!("UPDATE {table} SET {column} = ?1"))
                    .bind(at)
                    .execute(&meta.writer)
                    .await
                    .expect("date");
            }
        };
        date("repositories", "created_at", 10).await;
        date("tags", "updated_at", 500).await;

        let (list, n) = meta
            .artifacts(&r, &ArtifactFilter::default(), Page::all())
            .await
            .expect("artifacts");
        assert_eq!(n, 4);
        let mut ties = [d("newest"), d("tie")];
        ties.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        let want = [ties[0].clone(), ties[1].clone(), d("middle"), d("old")];
        assert_eq!(
            list.iter().map(|a| a.digest.clone()).collect::<Vec<_>>(),
            want
        );
        assert_eq!(
            list.iter().map(|a| a.created_at).collect::<Vec<_>>(),
            [300, 300, 200, 100]
        );
        assert_eq!(list[3].tags[0].updated_at, 500);

        let s = summary(&meta, &r).await;
        assert_eq!((s.created_at, s.updated_at, s.artifact_count), (10, 500, 4));
        date("tags", "updated_at", 50).await;
        assert_eq!(
            summary(&meta, &r).await.updated_at,
            300,
            "the newest manifest"
        );
        let (list, _) = meta
            .repository_summaries("t", None, Page::all())
            .await
            .expect("summaries");
        assert_eq!(list, vec![summary(&meta, &r).await]);
    }

    /// Migration 0006 gives the children of indexes stored before it their place in the
    /// index, and skips what SQLite cannot read as JSON instead of failing.
    #[tokio::test]
    async fn the_migration_orders_children_stored_before_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let old = dir.path().join("migrations");
        std::fs::create_dir(&old).expect("mkdir");
        let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/sqlite");
        for entry in std::fs::read_dir(&source).expect("migrations") {
            let path = entry.expect("entry").path();
            let name = path
                .file_name()
                .expect("name")
                .to_string_lossy()
                .to_string();
            if name.as_str() < "0006" {
                std::fs::copy(&path, old.join(&name)).expect("copy");
            }
        }
        let db = dir.path().join("berth.db");
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(
                sqlx::sqlite::SqliteConnectOptions::new()
                    .filename(&db)
                    .create_if_missing(true),
            )
            .await
            .expect("connect");
        sqlx::migrate::Migrator::new(old.as_path())
            .await
            .expect("migrator")
            .run(&pool)
            .await
            .expect("migrate to 0005");

        let kids = [d("kid c"), d("kid a"), d("kid b")];
        let entries: Vec<String> = kids
            .iter()
            .map(|k| format!(r#"{{"mediaType":"x","digest":"{k}","size":1}}"#))
            .collect();
        let index = format!(
            r#"{{"schemaVersion":2,"manifests":[{}]}}"#,
            entries.join(",")
        );
        let broken = "{not json".to_string();
        let insert = |digest: Digest, content: String| {
            let pool = &pool;
            async move {
                sqlx::query(
                    "INSERT INTO manifests (repository_id, digest, media_type, size, content, created_at)
                     VALUES (1, ?1, 'x', ?2, ?3, 1)",
                )
                .bind(digest.as_str())
                .bind(content.len() as i64)
                .bind(content.into_bytes())
                .execute(pool)
                .await
                .expect("manifest");
            }
        };
        sqlx::query("INSERT INTO repositories (id, name, created_at) VALUES (1, 'old/app', 1)")
            .execute(&pool)
            .await
            .expect("repository");
        let index_digest = d(&index);
        let index_len = index.len() as u64;
        insert(index_digest.clone(), index).await;
        insert(d("broken"), broken).await;
        for k in &kids {
            insert(k.clone(), "{}".into()).await;
            for parent in [&index_digest, &d("broken")] {
                sqlx::query("INSERT INTO manifest_references VALUES (1, ?1, ?2, 1)")
                    .bind(parent.as_str())
                    .bind(k.as_str())
                    .execute(&pool)
                    .await
                    .expect("reference");
            }
        }
        pool.close().await;

        let meta = SqliteMeta::open(&db).await.expect("migrate to 0006");
        let r: RepoName = "old/app".parse().expect("repo");
        let a = meta
            .artifact(&r, &index_digest)
            .await
            .expect("artifact")
            .expect("index");
        assert_eq!(a.children, kids);
        assert_eq!(
            a.size,
            index_len + 3 * 2,
            "the index and its children (`{{}}` each)"
        );
        let b = meta
            .artifact(&r, &d("broken"))
            .await
            .expect("artifact")
            .expect("broken");
        let mut by_digest = kids.to_vec();
        by_digest.sort_by(|x, y| x.as_str().cmp(y.as_str()));
        assert_eq!(b.children, by_digest, "unplaced: digest order");
    }
}
