//! Embedded SQLite metadata store (the default): one database file beside the blobs.
//!
//! WAL journal with `synchronous=FULL`, so a committed transaction survives power loss.
//! Writes go through a single connection (SQLite has one writer anyway, and this avoids
//! lock-upgrade deadlocks); reads use a pool of read-only connections in parallel.

use super::sqlite_access::REPOSITORIES_IN_RANGE;
use super::sqlite_events::insert_events;
use super::{
    completed, digest, now, project_range, BlobRecord, CompletedUpload, ManifestDeletion,
    Manifests, MetaError, NewEvent, NewManifest, Referrer, Repositories, RepositoryClearing,
    Result, SessionCapReached, SessionCaps, StoredManifest, UploadSession, Uploads,
    COMPLETED_UPLOAD_SECS,
};
use futures_util::TryStreamExt;
use oci::{Digest, Reference, RepoName, Tag};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};
use std::path::Path;
use std::time::Duration;

pub struct SqliteMeta {
    /// The single writer connection (sibling modules add their own trait impls).
    pub(super) writer: SqlitePool,
    /// Read-only connections.
    pub(super) reader: SqlitePool,
    /// How long a statement waits for another process's write lock.
    pub(super) busy_timeout: Duration,
}

const READERS: u32 = 8;
/// How long a statement waits for another process's write lock (garbage collection and
/// the server share the database).
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

impl SqliteMeta {
    /// Open (creating and migrating if needed) the database at `path`.
    pub async fn open(path: &Path) -> Result<SqliteMeta> {
        let base = SqliteConnectOptions::new()
            .filename(path)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(base.clone().create_if_missing(true))
            .await?;
        // Migrations of a newer version may be applied already (a binary rolled back
        // after an upgrade): they are expand-only, so start anyway.
        let fresh: bool = sqlx::query_scalar(
            "SELECT NOT EXISTS (SELECT 1 FROM sqlite_master
                                WHERE type = 'table' AND name = '_sqlx_migrations')",
        )
        .fetch_one(&writer)
        .await?;
        let mut migrator = sqlx::migrate!("./migrations/sqlite");
        migrator.set_ignore_missing(true);
        migrator.run(&writer).await?;
        if fresh {
            // Created by this release: see `super::FRESH_SETTINGS`.
            for (name, value) in super::FRESH_SETTINGS {
                sqlx::query(
                    "INSERT INTO settings (name, value, updated_at) VALUES (?1, ?2, ?3)
                     ON CONFLICT (name) DO NOTHING",
                )
                .bind(name)
                .bind(value)
                .bind(now())
                .execute(&writer)
                .await?;
            }
        }
        let reader = SqlitePoolOptions::new()
            .max_connections(READERS)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(base.read_only(true))
            .await?;
        Ok(SqliteMeta {
            writer,
            reader,
            busy_timeout: BUSY_TIMEOUT,
        })
    }
}

/// An `uploads` row (`id, repository, algorithm, created_at`) as a session.
pub(super) fn upload_session(r: &sqlx::sqlite::SqliteRow) -> Result<UploadSession> {
    let repo: String = r.get(1);
    let alg: String = r.get(2);
    Ok(UploadSession {
        id: r.get(0),
        repository: repo
            .parse()
            .map_err(|_| MetaError::Corrupt(format!("repository name {repo:?}")))?,
        algorithm: alg
            .parse()
            .map_err(|_| MetaError::Corrupt(format!("algorithm {alg:?}")))?,
        created_at: r.get(3),
    })
}

/// Delete repository `id` if it holds nothing (no manifest, tag or blob link), inside the
/// caller's transaction: a repository exists while it holds something, so one emptied by
/// the caller's write leaves the catalog with it.
pub(super) async fn drop_if_empty(tx: &mut sqlx::SqliteConnection, id: i64) -> Result<()> {
    sqlx::query(
        "DELETE FROM repositories WHERE id = ?1
           AND NOT EXISTS (SELECT 1 FROM manifests WHERE repository_id = ?1)
           AND NOT EXISTS (SELECT 1 FROM tags WHERE repository_id = ?1)
           AND NOT EXISTS (SELECT 1 FROM repository_blobs WHERE repository_id = ?1)",
    )
    .bind(id)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

const UPSERT_REPO: &str =
    "INSERT INTO repositories (name, created_at) VALUES (?1, ?2) ON CONFLICT (name) DO NOTHING";

/// Link `d` into `repo` (creating the repository) at time `t`, inside `tx`. A link that
/// exists is renewed: a blob pushed or mounted again counts as new for garbage
/// collection's grace period.
async fn link_in(
    tx: &mut sqlx::SqliteConnection,
    repo: &RepoName,
    d: &Digest,
    size: u64,
    t: i64,
) -> Result<()> {
    // Counted against the project's quota if the link makes the blob new to it.
    super::sqlite_policy::charge(tx, repo.as_str(), d, size).await?;
    sqlx::query(UPSERT_REPO)
        .bind(repo.as_str())
        .bind(t)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO repository_blobs (repository_id, digest, created_at)
         SELECT id, ?2, ?3 FROM repositories WHERE name = ?1
         ON CONFLICT (repository_id, digest) DO UPDATE SET created_at = excluded.created_at",
    )
    .bind(repo.as_str())
    .bind(d.as_str())
    .bind(t)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// A `blobs` row's (size, storage_key).
fn blob_record(r: &sqlx::sqlite::SqliteRow) -> BlobRecord {
    BlobRecord {
        size: r.get::<i64, _>(0) as u64,
        key: r.get(1),
    }
}

#[async_trait::async_trait]
impl Repositories for SqliteMeta {
    async fn link_blob_at(
        &self,
        repo: &RepoName,
        d: &Digest,
        size: u64,
        key: Option<&str>,
        events: &[NewEvent],
    ) -> Result<Option<String>> {
        let t = now();
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        // A collection that forgot this digest is removing its file: the caller waits.
        let collecting: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM job_claims WHERE name = ?1
                            AND lease_until > CAST(strftime('%s', 'now') AS INTEGER))",
        )
        .bind(super::collecting_claim(d))
        .fetch_one(&mut *tx)
        .await?;
        if collecting {
            return Err(MetaError::Collecting(d.clone()));
        }
        // A (re-)committed blob and its link count as new for garbage collection's grace
        // period: a collection that read the old rows must not take the fresh file. The
        // row's key is never replaced: the first one recorded wins.
        let effective: Option<String> = sqlx::query_scalar(
            "INSERT INTO blobs (digest, size, created_at, storage_key) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (digest) DO UPDATE SET created_at = excluded.created_at
             RETURNING storage_key",
        )
        .bind(d.as_str())
        .bind(size as i64)
        .bind(t)
        .bind(key)
        .fetch_one(&mut *tx)
        .await?;
        link_in(&mut tx, repo, d, size, t).await?;
        insert_events(&mut tx, events).await?;
        tx.commit().await?;
        Ok(effective)
    }

    async fn mount_blob(
        &self,
        repo: &RepoName,
        d: &Digest,
        from: Option<&RepoName>,
        events: &[NewEvent],
    ) -> Result<Option<BlobRecord>> {
        let t = now();
        // IMMEDIATE: the check that the blob is still recorded and the link are one step
        // against garbage collection in another process.
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let found = match from {
            Some(from) => sqlx::query(
                "SELECT b.size, b.storage_key FROM repositories r
                 JOIN repository_blobs rb ON rb.repository_id = r.id
                 JOIN blobs b ON b.digest = rb.digest
                 WHERE r.name = ?1 AND rb.digest = ?2",
            )
            .bind(from.as_str())
            .bind(d.as_str()),
            None => sqlx::query("SELECT size, storage_key FROM blobs WHERE digest = ?1")
                .bind(d.as_str()),
        }
        .fetch_optional(&mut *tx)
        .await?
        .map(|r| blob_record(&r));
        let Some(found) = found else {
            return Ok(None);
        };
        link_in(&mut tx, repo, d, found.size, t).await?;
        insert_events(&mut tx, events).await?;
        tx.commit().await?;
        Ok(Some(found))
    }

    async fn linked_blob(&self, repo: &RepoName, d: &Digest) -> Result<Option<BlobRecord>> {
        let row = sqlx::query(
            "SELECT b.size, b.storage_key FROM repositories r
             JOIN repository_blobs rb ON rb.repository_id = r.id
             JOIN blobs b ON b.digest = rb.digest
             WHERE r.name = ?1 AND rb.digest = ?2",
        )
        .bind(repo.as_str())
        .bind(d.as_str())
        .fetch_optional(&self.reader)
        .await?;
        Ok(row.map(|r| blob_record(&r)))
    }

    async fn known_blob(&self, d: &Digest) -> Result<Option<BlobRecord>> {
        let row = sqlx::query(
            "SELECT b.size, b.storage_key FROM blobs b WHERE b.digest = ?1
             AND EXISTS (SELECT 1 FROM repository_blobs rb WHERE rb.digest = b.digest)",
        )
        .bind(d.as_str())
        .fetch_optional(&self.reader)
        .await?;
        Ok(row.map(|r| blob_record(&r)))
    }

    async fn unlink_blob(&self, repo: &RepoName, d: &Digest, events: &[NewEvent]) -> Result<bool> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        // fetch_all: the statement runs to its end before the row is read.
        let gone: Vec<i64> = sqlx::query_scalar(
            "DELETE FROM repository_blobs WHERE digest = ?2
             AND repository_id = (SELECT id FROM repositories WHERE name = ?1)
             RETURNING repository_id",
        )
        .bind(repo.as_str())
        .bind(d.as_str())
        .fetch_all(&mut *tx)
        .await?;
        let Some(&repo_id) = gone.first() else {
            return Ok(false);
        };
        let size = super::sqlite_policy::blob_size(&mut tx, d).await?;
        super::sqlite_policy::release(&mut tx, repo.as_str(), d, size).await?;
        drop_if_empty(&mut tx, repo_id).await?;
        insert_events(&mut tx, events).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn linked_digests(&self, repo: &RepoName) -> Result<Vec<Digest>> {
        let rows: Vec<String> = sqlx::query_scalar(
            "SELECT rb.digest FROM repositories r
             JOIN repository_blobs rb ON rb.repository_id = r.id
             WHERE r.name = ?1 ORDER BY rb.digest",
        )
        .bind(repo.as_str())
        .fetch_all(&self.reader)
        .await?;
        rows.into_iter().map(digest).collect()
    }

    async fn clear_repository(
        &self,
        repo: &RepoName,
        links: Option<&[Digest]>,
        events: &[NewEvent],
    ) -> Result<RepositoryClearing> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let Some(repo_id) =
            sqlx::query_scalar::<_, i64>("SELECT id FROM repositories WHERE name = ?1")
                .bind(repo.as_str())
                .fetch_optional(&mut *tx)
                .await?
        else {
            return Ok(RepositoryClearing::Cleared(0));
        };
        let has_manifests = sqlx::query("SELECT 1 FROM manifests WHERE repository_id = ?1 LIMIT 1")
            .bind(repo_id)
            .fetch_optional(&mut *tx)
            .await?
            .is_some();
        if has_manifests {
            return Ok(RepositoryClearing::HasManifests);
        }
        if let Some(expected) = links {
            // Under the write lock: the links removed below are exactly these.
            let found: Vec<String> = sqlx::query_scalar(
                "SELECT digest FROM repository_blobs WHERE repository_id = ?1 ORDER BY digest",
            )
            .bind(repo_id)
            .fetch_all(&mut *tx)
            .await?;
            let mut expected: Vec<&str> = expected.iter().map(Digest::as_str).collect();
            expected.sort_unstable();
            expected.dedup();
            if found.iter().map(String::as_str).ne(expected) {
                tx.rollback().await?;
                let found = found.into_iter().map(digest).collect::<Result<_>>()?;
                return Ok(RepositoryClearing::LinksChanged(found));
            }
        }
        let gone = sqlx::query("DELETE FROM repository_blobs WHERE repository_id = ?1")
            .bind(repo_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        super::sqlite_policy::recount(&mut tx, repo.as_str()).await?;
        drop_if_empty(&mut tx, repo_id).await?;
        insert_events(&mut tx, events).await?;
        tx.commit().await?;
        Ok(RepositoryClearing::Cleared(gone))
    }

    async fn linked_blobs(&self, repo: &RepoName, digests: &[Digest]) -> Result<Vec<Option<u64>>> {
        let mut conn = self.reader.acquire().await?;
        let mut out = Vec::with_capacity(digests.len());
        for d in digests {
            let row = sqlx::query(
                "SELECT b.size FROM repositories r
                 JOIN repository_blobs rb ON rb.repository_id = r.id
                 JOIN blobs b ON b.digest = rb.digest
                 WHERE r.name = ?1 AND rb.digest = ?2",
            )
            .bind(repo.as_str())
            .bind(d.as_str())
            .fetch_optional(&mut *conn)
            .await?;
            out.push(row.map(|r| r.get::<i64, _>(0) as u64));
        }
        Ok(out)
    }

    async fn repository_exists(&self, repo: &RepoName) -> Result<bool> {
        let row = sqlx::query("SELECT 1 FROM repositories WHERE name = ?1")
            .bind(repo.as_str())
            .fetch_optional(&self.reader)
            .await?;
        Ok(row.is_some())
    }

    async fn list_repositories(
        &self,
        last: Option<&str>,
        limit: u32,
        within: Option<&[String]>,
    ) -> Result<Vec<String>> {
        let Some(projects) = within else {
            let rows =
                sqlx::query("SELECT name FROM repositories WHERE name > ?1 ORDER BY name LIMIT ?2")
                    .bind(last.unwrap_or(""))
                    .bind(i64::from(limit))
                    .fetch_all(&self.reader)
                    .await?;
            return Ok(rows.into_iter().map(|r| r.get::<String, _>(0)).collect());
        };
        // Each project's repositories are one range of the name index, `p/` to `p0` ('0'
        // is the byte after '/'). Project names hold no '/', so the ranges are disjoint and
        // in the order of their prefixes: reading them in that order, each up to what the
        // page still needs, lists names in byte order. A page costs its rows plus one index
        // probe per project passed, however few of the catalog's repositories the projects
        // hold (a filter on a scan of every name could read the whole catalog for a page).
        let mut ranges: Vec<(String, String)> = projects
            .iter()
            .filter(|p| !p.contains('/'))
            .map(|p| project_range(p))
            .collect();
        ranges.sort_unstable();
        ranges.dedup();
        let mut conn = self.reader.acquire().await?;
        let mut out = Vec::new();
        for (lo, hi) in ranges {
            let want = (limit as usize).saturating_sub(out.len());
            if want == 0 {
                break;
            }
            if last.is_some_and(|last| hi.as_str() <= last) {
                continue;
            }
            let rows = sqlx::query(REPOSITORIES_IN_RANGE)
                .bind(&lo)
                .bind(&hi)
                .bind(last.unwrap_or(""))
                .bind(i64::try_from(want).unwrap_or(i64::MAX))
                .fetch_all(&mut *conn)
                .await?;
            out.extend(rows.into_iter().map(|r| r.get::<String, _>(0)));
        }
        Ok(out)
    }
}

#[async_trait::async_trait]
impl Manifests for SqliteMeta {
    async fn put_manifest_guarded(
        &self,
        repo: &RepoName,
        m: &NewManifest,
        tags: &[Tag],
        guarded: &[Tag],
        events: &[NewEvent],
    ) -> Result<()> {
        let t = now();
        // IMMEDIATE: take the write lock before reading, so the checks below and the
        // writes see the same state even against another process (garbage-collect).
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::query(UPSERT_REPO)
            .bind(repo.as_str())
            .bind(t)
            .execute(&mut *tx)
            .await?;
        let repo_id: i64 = sqlx::query("SELECT id FROM repositories WHERE name = ?1")
            .bind(repo.as_str())
            .fetch_one(&mut *tx)
            .await?
            .get(0);
        let mut missing = Vec::new();
        for d in &m.required_blobs {
            let linked = sqlx::query(
                "SELECT 1 FROM repository_blobs WHERE repository_id = ?1 AND digest = ?2",
            )
            .bind(repo_id)
            .bind(d.as_str())
            .fetch_optional(&mut *tx)
            .await?;
            if linked.is_none() {
                missing.push(d.clone());
            }
        }
        for d in &m.required_manifests {
            let present =
                sqlx::query("SELECT 1 FROM manifests WHERE repository_id = ?1 AND digest = ?2")
                    .bind(repo_id)
                    .bind(d.as_str())
                    .fetch_optional(&mut *tx)
                    .await?;
            if present.is_none() {
                missing.push(d.clone());
            }
        }
        if !missing.is_empty() {
            return Err(MetaError::MissingReferences(missing));
        }
        let inserted = sqlx::query(
            "INSERT INTO manifests (repository_id, digest, media_type, size, content, subject, artifact_type, annotations, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
             ON CONFLICT (repository_id, digest) DO NOTHING",
        )
        .bind(repo_id)
        .bind(m.digest.as_str())
        .bind(&m.media_type)
        .bind(m.content.len() as i64)
        .bind(&m.content)
        .bind(m.subject.as_ref().map(|s| s.as_str()))
        .bind(m.artifact_type.as_deref())
        .bind(m.annotations.as_deref())
        .bind(t)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted > 0 {
            for (position, (child, is_manifest)) in m.references.iter().enumerate() {
                // A digest listed twice keeps its first position.
                sqlx::query(
                    "INSERT INTO manifest_references (repository_id, manifest_digest, child_digest, child_is_manifest, position)
                     VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING",
                )
                .bind(repo_id)
                .bind(m.digest.as_str())
                .bind(child.as_str())
                .bind(*is_manifest)
                .bind(i64::try_from(position).unwrap_or(i64::MAX))
                .execute(&mut *tx)
                .await?;
            }
        }
        for tag in tags {
            // A guarded tag is written only where it is new or already at this digest;
            // no row written means it points elsewhere: the transaction is dropped.
            let written = sqlx::query(if guarded.contains(tag) {
                "INSERT INTO tags (repository_id, name, digest, updated_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (repository_id, name) DO UPDATE SET digest = excluded.digest, updated_at = excluded.updated_at
                 WHERE tags.digest = excluded.digest"
            } else {
                "INSERT INTO tags (repository_id, name, digest, updated_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (repository_id, name) DO UPDATE SET digest = excluded.digest, updated_at = excluded.updated_at"
            })
            .bind(repo_id)
            .bind(tag.as_str())
            .bind(m.digest.as_str())
            .bind(t)
            .execute(&mut *tx)
            .await?;
            if written.rows_affected() == 0 {
                return Err(MetaError::ImmutableTag(tag.clone()));
            }
        }
        insert_events(&mut tx, events).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<Option<StoredManifest>> {
        let row = match reference {
            Reference::Tag(tag) => {
                sqlx::query(
                    "SELECT m.digest, m.media_type, m.content FROM repositories r
                     JOIN tags t ON t.repository_id = r.id
                     JOIN manifests m ON m.repository_id = r.id AND m.digest = t.digest
                     WHERE r.name = ?1 AND t.name = ?2",
                )
                .bind(repo.as_str())
                .bind(tag.as_str())
                .fetch_optional(&self.reader)
                .await?
            }
            Reference::Digest(d) => {
                sqlx::query(
                    "SELECT m.digest, m.media_type, m.content FROM repositories r
                     JOIN manifests m ON m.repository_id = r.id
                     WHERE r.name = ?1 AND m.digest = ?2",
                )
                .bind(repo.as_str())
                .bind(d.as_str())
                .fetch_optional(&self.reader)
                .await?
            }
        };
        row.map(|r| {
            Ok(StoredManifest {
                digest: digest(r.get(0))?,
                media_type: r.get(1),
                content: r.get(2),
            })
        })
        .transpose()
    }

    async fn manifests_exist(&self, repo: &RepoName, digests: &[Digest]) -> Result<Vec<bool>> {
        let mut conn = self.reader.acquire().await?;
        let mut out = Vec::with_capacity(digests.len());
        for d in digests {
            let row = sqlx::query(
                "SELECT 1 FROM repositories r JOIN manifests m ON m.repository_id = r.id
                 WHERE r.name = ?1 AND m.digest = ?2",
            )
            .bind(repo.as_str())
            .bind(d.as_str())
            .fetch_optional(&mut *conn)
            .await?;
            out.push(row.is_some());
        }
        Ok(out)
    }

    async fn delete_manifest(
        &self,
        repo: &RepoName,
        d: &Digest,
        tags: Option<&[Tag]>,
        events: &[NewEvent],
    ) -> Result<ManifestDeletion> {
        self.delete_manifest_checked(repo, d, tags, events, false)
            .await
    }

    async fn delete_unreferenced_manifest(
        &self,
        repo: &RepoName,
        d: &Digest,
        tags: &[Tag],
        events: &[NewEvent],
    ) -> Result<ManifestDeletion> {
        self.delete_manifest_checked(repo, d, Some(tags), events, true)
            .await
    }

    async fn delete_tag(&self, repo: &RepoName, tag: &Tag, events: &[NewEvent]) -> Result<bool> {
        self.remove_tag(repo, tag, None, events).await
    }

    async fn delete_tag_at(
        &self,
        repo: &RepoName,
        tag: &Tag,
        d: &Digest,
        events: &[NewEvent],
    ) -> Result<bool> {
        self.remove_tag(repo, tag, Some(d), events).await
    }

    async fn list_tags(
        &self,
        repo: &RepoName,
        last: Option<&str>,
        limit: u32,
    ) -> Result<Option<Vec<String>>> {
        let mut conn = self.reader.acquire().await?;
        let Some(repo_id) = sqlx::query("SELECT id FROM repositories WHERE name = ?1")
            .bind(repo.as_str())
            .fetch_optional(&mut *conn)
            .await?
            .map(|r| r.get::<i64, _>(0))
        else {
            return Ok(None);
        };
        let rows = sqlx::query(
            "SELECT name FROM tags WHERE repository_id = ?1 AND name > ?2 ORDER BY name LIMIT ?3",
        )
        .bind(repo_id)
        .bind(last.unwrap_or(""))
        .bind(i64::from(limit))
        .fetch_all(&mut *conn)
        .await?;
        Ok(Some(
            rows.into_iter().map(|r| r.get::<String, _>(0)).collect(),
        ))
    }

    async fn referrers(
        &self,
        repo: &RepoName,
        subject: &Digest,
        artifact_type: Option<&str>,
        after: Option<&str>,
        limit: u32,
        max_bytes: u64,
    ) -> Result<Vec<Referrer>> {
        let mut rows = sqlx::query(
            "SELECT m.digest, m.media_type, m.size, m.artifact_type, m.annotations
             FROM repositories r JOIN manifests m ON m.repository_id = r.id
             WHERE r.name = ?1 AND m.subject = ?2 AND (?3 IS NULL OR m.artifact_type = ?3)
               AND m.digest > ?4
             ORDER BY m.digest LIMIT ?5",
        )
        .bind(repo.as_str())
        .bind(subject.as_str())
        .bind(artifact_type)
        .bind(after.unwrap_or(""))
        .bind(i64::from(limit))
        .fetch(&self.reader);
        let mut out = Vec::new();
        let mut bytes = 0u64;
        while let Some(r) = rows.try_next().await? {
            let referrer = Referrer {
                digest: digest(r.get(0))?,
                media_type: r.get(1),
                size: r.get::<i64, _>(2) as u64,
                artifact_type: r.get(3),
                annotations: r.get(4),
            };
            bytes += referrer.listed_bytes();
            out.push(referrer);
            if bytes > max_bytes && out.len() > 1 {
                break;
            }
        }
        Ok(out)
    }
}

impl SqliteMeta {
    /// Delete `tag` (only if it points at `at`, when given) and append `events`, in one
    /// transaction. A tag never holds its repository alone (its manifest is there).
    async fn remove_tag(
        &self,
        repo: &RepoName,
        tag: &Tag,
        at: Option<&Digest>,
        events: &[NewEvent],
    ) -> Result<bool> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let gone = sqlx::query(
            "DELETE FROM tags WHERE name = ?2
             AND repository_id = (SELECT id FROM repositories WHERE name = ?1)
             AND (?3 IS NULL OR digest = ?3)",
        )
        .bind(repo.as_str())
        .bind(tag.as_str())
        .bind(at.map(Digest::as_str))
        .execute(&mut *tx)
        .await?
        .rows_affected()
            > 0;
        if gone {
            insert_events(&mut tx, events).await?;
            tx.commit().await?;
        }
        Ok(gone)
    }
}

#[async_trait::async_trait]
impl Uploads for SqliteMeta {
    async fn create_upload(
        &self,
        s: &UploadSession,
        caps: SessionCaps,
    ) -> Result<std::result::Result<(), SessionCapReached>> {
        // One statement on the single writer: the counts and the insert cannot interleave
        // with another session's.
        let inserted = sqlx::query(
            "INSERT INTO uploads (id, repository, algorithm, created_at)
             SELECT ?1, ?2, ?3, ?4
             WHERE (SELECT COUNT(*) FROM uploads WHERE repository = ?2) < ?5
               AND (SELECT COUNT(*) FROM uploads) < ?6",
        )
        .bind(&s.id)
        .bind(s.repository.as_str())
        .bind(s.algorithm.as_str())
        .bind(s.created_at)
        .bind(i64::try_from(caps.per_repository).unwrap_or(i64::MAX))
        .bind(i64::try_from(caps.total).unwrap_or(i64::MAX))
        .execute(&self.writer)
        .await?
        .rows_affected();
        if inserted == 1 {
            return Ok(Ok(()));
        }
        let in_repository: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM uploads WHERE repository = ?1")
                .bind(s.repository.as_str())
                .fetch_one(&self.reader)
                .await?;
        Ok(Err(if in_repository as u64 >= caps.per_repository {
            SessionCapReached::Repository(caps.per_repository)
        } else {
            SessionCapReached::Total(caps.total)
        }))
    }

    async fn get_upload(&self, id: &str) -> Result<Option<UploadSession>> {
        let row =
            sqlx::query("SELECT id, repository, algorithm, created_at FROM uploads WHERE id = ?1")
                .bind(id)
                .fetch_optional(&self.reader)
                .await?;
        row.as_ref().map(upload_session).transpose()
    }

    async fn delete_upload(&self, id: &str) -> Result<()> {
        sqlx::query("DELETE FROM uploads WHERE id = ?1")
            .bind(id)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn complete_upload(&self, s: &UploadSession, digest: &Digest, size: u64) -> Result<()> {
        let at = now();
        let mut tx = self.writer.begin().await?;
        sqlx::query("DELETE FROM uploads WHERE id = ?1")
            .bind(&s.id)
            .execute(&mut *tx)
            .await?;
        if super::prune_completed_now() {
            sqlx::query("DELETE FROM completed_uploads WHERE completed_at < ?1")
                .bind(at - COMPLETED_UPLOAD_SECS)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query(
            "INSERT OR REPLACE INTO completed_uploads (id, repository, digest, size, completed_at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .bind(&s.id)
        .bind(s.repository.as_str())
        .bind(digest.as_str())
        .bind(i64::try_from(size).unwrap_or(i64::MAX))
        .bind(at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn completed_upload(&self, id: &str) -> Result<Option<CompletedUpload>> {
        let row = sqlx::query(
            "SELECT repository, digest, size FROM completed_uploads
              WHERE id = ?1 AND completed_at >= ?2",
        )
        .bind(id)
        .bind(now() - COMPLETED_UPLOAD_SECS)
        .fetch_optional(&self.reader)
        .await?;
        row.map(|r| completed(r.get(0), r.get(1), r.get(2)))
            .transpose()
    }
}

impl SqliteMeta {
    /// [`Manifests::delete_manifest`], and with `keep_referenced` only if no manifest of
    /// the repository lists it.
    async fn delete_manifest_checked(
        &self,
        repo: &RepoName,
        d: &Digest,
        tags: Option<&[Tag]>,
        events: &[NewEvent],
        keep_referenced: bool,
    ) -> Result<ManifestDeletion> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let Some(repo_id) = sqlx::query("SELECT id FROM repositories WHERE name = ?1")
            .bind(repo.as_str())
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| r.get::<i64, _>(0))
        else {
            return Ok(ManifestDeletion::NotFound);
        };
        let gone = sqlx::query("DELETE FROM manifests WHERE repository_id = ?1 AND digest = ?2")
            .bind(repo_id)
            .bind(d.as_str())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if gone == 0 {
            return Ok(ManifestDeletion::NotFound);
        }
        if let Some(expected) = tags {
            // Under the write lock: the tags deleted below are exactly these.
            let found: Vec<String> = sqlx::query_scalar(
                "SELECT name FROM tags WHERE repository_id = ?1 AND digest = ?2 ORDER BY name",
            )
            .bind(repo_id)
            .bind(d.as_str())
            .fetch_all(&mut *tx)
            .await?;
            let mut expected: Vec<&str> = expected.iter().map(Tag::as_str).collect();
            expected.sort_unstable();
            expected.dedup();
            if found.iter().map(String::as_str).ne(expected) {
                tx.rollback().await?;
                let found = found
                    .into_iter()
                    .map(|t| {
                        t.parse()
                            .map_err(|_| MetaError::Corrupt(format!("tag {t:?}")))
                    })
                    .collect::<Result<_>>()?;
                return Ok(ManifestDeletion::TagsChanged(found));
            }
        }
        if keep_referenced {
            let listed: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM manifest_references
                  WHERE repository_id = ?1 AND child_digest = ?2 AND child_is_manifest <> 0)",
            )
            .bind(repo_id)
            .bind(d.as_str())
            .fetch_one(&mut *tx)
            .await?;
            if listed {
                tx.rollback().await?;
                return Ok(ManifestDeletion::Referenced);
            }
        }
        sqlx::query("DELETE FROM tags WHERE repository_id = ?1 AND digest = ?2")
            .bind(repo_id)
            .bind(d.as_str())
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "DELETE FROM manifest_references WHERE repository_id = ?1 AND manifest_digest = ?2",
        )
        .bind(repo_id)
        .bind(d.as_str())
        .execute(&mut *tx)
        .await?;
        drop_if_empty(&mut tx, repo_id).await?;
        insert_events(&mut tx, events).await?;
        tx.commit().await?;
        Ok(ManifestDeletion::Deleted)
    }
}

#[cfg(test)]
mod tests {
    /// The shared contract on SQLite (the same list as PostgreSQL's `shared_suite`).
    #[tokio::test]
    async fn shared_suite() {
        let dir = tempfile::tempdir().expect("tempdir");
        let meta = super::SqliteMeta::open(&dir.path().join("berth.db"))
            .await
            .expect("open");
        crate::meta::testsuite::run(&meta).await;
        crate::meta::testsuite::run_events(&meta).await;
        crate::meta::testsuite::transactional_events(&meta).await;
        crate::meta::testsuite::outbox_trim(&meta).await;
        crate::meta::testsuite::proxy_cache(&meta).await;
        crate::meta::testsuite::job_claims(&meta).await;
        crate::meta::testsuite::completed_uploads(&meta).await;
        crate::meta::testsuite::blob_keys(&meta).await;
        // Reopening keeps everything (migrations are idempotent).
        drop(meta);
        let meta = super::SqliteMeta::open(&dir.path().join("berth.db"))
            .await
            .expect("reopen");
        crate::meta::testsuite::check_persisted(&meta).await;
    }

    /// A database this release creates starts with `FRESH_SETTINGS`; one an older
    /// release created (here: the row removed, as it never had one) does not gain them
    /// when this release opens it.
    #[tokio::test]
    async fn fresh_databases_start_with_blob_keys_on() {
        use crate::meta::{Maintenance, BLOB_KEYS_SETTING};
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("berth.db");
        let meta = super::SqliteMeta::open(&path).await.expect("open");
        assert_eq!(
            meta.setting(BLOB_KEYS_SETTING)
                .await
                .expect("setting")
                .as_deref(),
            Some("on")
        );
        sqlx::query("DELETE FROM settings")
            .execute(&meta.writer)
            .await
            .expect("older");
        drop(meta);
        let meta = super::SqliteMeta::open(&path).await.expect("reopen");
        assert_eq!(
            meta.setting(BLOB_KEYS_SETTING).await.expect("setting"),
            None
        );
    }
}
