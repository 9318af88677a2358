//! [`Housekeeping`] for SQLite: cheap COUNT/SUM accounting for metrics, and the
//! garbage collector's queries. Every delete re-checks its condition inside its own write
//! transaction, so a push that lands between GC's mark and its sweep wins.
//!
//! A delete that empties a repository removes it too (see `sqlite::drop_if_empty`).
//!
//! Garbage collection runs in another process than the server, so its transactions take
//! the write lock up front (`BEGIN IMMEDIATE`: a deferred one that reads first can fail
//! with "database is locked" when the server writes in between), wait for it up to the
//! busy timeout, and try again a bounded number of times.

use super::sqlite::{drop_if_empty, SqliteMeta};
use super::{GcManifest, Housekeeping, KeyedBlob, MetaError, Result, Stats};
use oci::{Digest, RepoName};
use sqlx::{Row, Sqlite, Transaction};
use std::collections::BTreeMap;
use std::time::Duration;

/// Attempts to get the write lock, each waiting up to the connection's busy timeout.
const LOCK_ATTEMPTS: u32 = 4;
/// Pause between attempts.
const LOCK_RETRY_PAUSE: Duration = Duration::from_millis(500);

/// SQLITE_BUSY or SQLITE_LOCKED, extended codes included.
fn is_busy(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db
            .code()
            .and_then(|c| c.parse::<i64>().ok())
            .is_some_and(|c| matches!(c & 0xff, 5 | 6)),
        _ => false,
    }
}

impl SqliteMeta {
    /// A write transaction holding the lock from its start, for `what`; retried when
    /// another writer keeps the database locked past the busy timeout.
    pub(super) async fn begin_immediate(&self, what: &str) -> Result<Transaction<'static, Sqlite>> {
        let mut attempt = 1;
        loop {
            match self.writer.begin_with("BEGIN IMMEDIATE").await {
                Ok(tx) => return Ok(tx),
                Err(e) if is_busy(&e) && attempt < LOCK_ATTEMPTS => {
                    tracing::warn!(
                        attempt,
                        "the metadata database is locked by another writer; {what} tries again"
                    );
                    tokio::time::sleep(LOCK_RETRY_PAUSE).await;
                    attempt += 1;
                }
                Err(e) if is_busy(&e) => {
                    return Err(MetaError::Busy(format!(
                        "{what}: the metadata database stayed locked by another writer through \
                         {LOCK_ATTEMPTS} attempts of up to {}s each ({e}); nothing was changed \
                         by this step — run the command again, and check for a process stuck \
                         holding berth.db",
                        self.busy_timeout.as_secs()
                    )))
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

#[cfg(test)]
impl SqliteMeta {
    /// Tests: make every blob, link and manifest recorded so far look `secs` older.
    pub async fn backdate(&self, secs: i64) -> Result<()> {
        for table in ["blobs", "repository_blobs", "manifests"] {
            sqlx::query(&format!("UPDATE {table} SET created_at = created_at - ?1"))
                .bind(secs)
                .execute(&self.writer)
                .await?;
        }
        Ok(())
    }
}

fn digest(s: &str) -> Result<Digest> {
    s.parse()
        .map_err(|e| MetaError::Corrupt(format!("digest {s:?}: {e}")))
}

fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

#[async_trait::async_trait]
impl Housekeeping for SqliteMeta {
    async fn clock(&self) -> Result<i64> {
        // The database is a file on this machine: its writers used this clock.
        Ok(super::now())
    }

    async fn stats(&self) -> Result<Stats> {
        let row = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM repositories),
                    (SELECT COUNT(*) FROM manifests),
                    (SELECT COUNT(*) FROM blobs),
                    (SELECT COALESCE(SUM(size), 0) FROM blobs),
                    (SELECT COUNT(*) FROM uploads)",
        )
        .fetch_one(&self.reader)
        .await?;
        Ok(Stats {
            repositories: count(row.get(0)),
            manifests: count(row.get(1)),
            blobs: count(row.get(2)),
            blob_bytes: count(row.get(3)),
            uploads: count(row.get(4)),
        })
    }

    async fn gc_manifests(&self, repo: &RepoName) -> Result<Vec<GcManifest>> {
        let rows = sqlx::query(
            "SELECT m.digest, m.subject, m.created_at,
                    EXISTS (SELECT 1 FROM tags t
                            WHERE t.repository_id = m.repository_id AND t.digest = m.digest)
             FROM manifests m JOIN repositories r ON r.id = m.repository_id
             WHERE r.name = ?1 ORDER BY m.digest",
        )
        .bind(repo.as_str())
        .fetch_all(&self.reader)
        .await?;
        let mut out = BTreeMap::new();
        for row in rows {
            let d: String = row.get(0);
            let subject: Option<String> = row.get(1);
            let m = GcManifest {
                digest: digest(&d)?,
                tagged: row.get::<i64, _>(3) != 0,
                subject: subject.as_deref().map(digest).transpose()?,
                created_at: row.get(2),
                references: Vec::new(),
            };
            out.insert(d, m);
        }
        let refs = sqlx::query(
            "SELECT x.manifest_digest, x.child_digest, x.child_is_manifest
             FROM manifest_references x JOIN repositories r ON r.id = x.repository_id
             WHERE r.name = ?1 ORDER BY x.manifest_digest, x.child_is_manifest, x.child_digest",
        )
        .bind(repo.as_str())
        .fetch_all(&self.reader)
        .await?;
        for row in refs {
            let parent: String = row.get(0);
            let child: String = row.get(1);
            if let Some(m) = out.get_mut(&parent) {
                m.references
                    .push((digest(&child)?, row.get::<i64, _>(2) != 0));
            }
        }
        Ok(out.into_values().collect())
    }

    async fn gc_delete_untagged(&self, repo: &RepoName, d: &Digest) -> Result<bool> {
        let mut tx = self
            .begin_immediate(&format!("deleting manifest {repo}@{d}"))
            .await?;
        // fetch_all: the statement runs to its end before the row is read.
        let done: Vec<i64> = sqlx::query_scalar(
            "DELETE FROM manifests
             WHERE repository_id = (SELECT id FROM repositories WHERE name = ?1) AND digest = ?2
               AND NOT EXISTS (SELECT 1 FROM tags
                               WHERE repository_id = manifests.repository_id AND digest = ?2)
               AND NOT EXISTS (SELECT 1 FROM manifest_references
                               WHERE repository_id = manifests.repository_id
                                 AND child_digest = ?2)
             RETURNING repository_id",
        )
        .bind(repo.as_str())
        .bind(d.as_str())
        .fetch_all(&mut *tx)
        .await?;
        if let Some(&repo_id) = done.first() {
            sqlx::query(
                "DELETE FROM manifest_references WHERE repository_id = ?1 AND manifest_digest = ?2",
            )
            .bind(repo_id)
            .bind(d.as_str())
            .execute(&mut *tx)
            .await?;
            drop_if_empty(&mut tx, repo_id).await?;
        }
        tx.commit().await?;
        Ok(!done.is_empty())
    }

    async fn gc_forget_blobs(
        &self,
        digests: &[Digest],
        cutoff: i64,
        owner: &str,
        lease: Duration,
    ) -> Result<Vec<Digest>> {
        let lease = i64::try_from(lease.as_secs().max(1)).unwrap_or(i64::MAX / 4);
        let mut tx = self
            .begin_immediate(&format!("deleting {} blobs", digests.len()))
            .await?;
        // Statements of one writer inside one transaction cost no I/O of their own: the
        // batch costs one commit (one fsync) however many blobs it forgets.
        let mut forgotten = Vec::new();
        for d in digests {
            let keep: i64 = sqlx::query(
                "SELECT EXISTS (SELECT 1 FROM manifest_references WHERE child_digest = ?1)
                     OR EXISTS (SELECT 1 FROM repository_blobs
                                WHERE digest = ?1 AND created_at > ?2)
                     OR EXISTS (SELECT 1 FROM blobs WHERE digest = ?1
                                AND (created_at > ?2 OR storage_key IS NOT NULL))",
            )
            .bind(d.as_str())
            .bind(cutoff)
            .fetch_one(&mut *tx)
            .await?
            .get(0);
            if keep != 0 {
                continue;
            }
            // The collector's claim on the digest first, committed with the forget: from
            // the commit until the file is gone, `link_blob` of the digest waits (see
            // `registry/gc.rs`). Refused only if another collector holds the digest (one
            // runs at a time, so only after a lost claim): leave the blob to it.
            let claimed = sqlx::query(super::sqlite_events::CLAIM_JOB)
                .bind(super::collecting_claim(d))
                .bind(owner)
                .bind(lease)
                .execute(&mut *tx)
                .await?;
            if claimed.rows_affected() != 1 {
                continue;
            }
            forget_in(&mut tx, d).await?;
            forgotten.push(d.clone());
        }
        tx.commit().await?;
        Ok(forgotten)
    }

    async fn gc_keyed_blobs(&self, after: Option<&Digest>, limit: u32) -> Result<Vec<KeyedBlob>> {
        let rows = sqlx::query(
            "SELECT digest, size, storage_key, created_at FROM blobs
              WHERE storage_key IS NOT NULL AND digest > ?1 ORDER BY digest LIMIT ?2",
        )
        .bind(after.map(Digest::as_str).unwrap_or(""))
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(keyed_blob).collect()
    }

    async fn gc_forget_keyed(&self, digests: &[Digest], cutoff: i64) -> Result<Vec<KeyedBlob>> {
        let mut tx = self
            .begin_immediate(&format!("deleting {} blobs", digests.len()))
            .await?;
        let mut forgotten = Vec::new();
        for d in digests {
            let found = sqlx::query(
                "SELECT digest, size, storage_key, created_at FROM blobs b
                  WHERE digest = ?1 AND storage_key IS NOT NULL AND created_at <= ?2
                    AND NOT EXISTS (SELECT 1 FROM manifest_references WHERE child_digest = ?1)
                    AND NOT EXISTS (SELECT 1 FROM repository_blobs
                                    WHERE digest = ?1 AND created_at > ?2)",
            )
            .bind(d.as_str())
            .bind(cutoff)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(row) = found {
                forgotten.push(keyed_blob(&row)?);
                forget_in(&mut tx, d).await?;
            }
        }
        tx.commit().await?;
        Ok(forgotten)
    }
}

/// A `blobs` row with a key, as (digest, size, storage_key, created_at).
fn keyed_blob(r: &sqlx::sqlite::SqliteRow) -> Result<KeyedBlob> {
    Ok(KeyedBlob {
        digest: digest(r.get(0))?,
        size: u64::try_from(r.get::<i64, _>(1)).unwrap_or(0),
        key: r.get(2),
        created_at: r.get(3),
    })
}

/// Delete blob `d`'s links (off the quota of each project that held it) and its row, in
/// the caller's transaction: garbage collection's forget once it decided.
async fn forget_in(tx: &mut sqlx::SqliteConnection, d: &Digest) -> Result<()> {
    let size = super::sqlite_policy::blob_size(&mut *tx, d).await?;
    let unlinked: Vec<(i64, String)> = sqlx::query_as(
        "SELECT r.id, r.name FROM repository_blobs rb
           JOIN repositories r ON r.id = rb.repository_id WHERE rb.digest = ?1",
    )
    .bind(d.as_str())
    .fetch_all(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM repository_blobs WHERE digest = ?1")
        .bind(d.as_str())
        .execute(&mut *tx)
        .await?;
    // Off the quota of each project that held it (once a project, however many of its
    // repositories linked it); a repository that held only this blob goes with its link.
    let mut projects = std::collections::HashSet::new();
    for (repo_id, name) in unlinked {
        if projects.insert(name.split_once('/').map(|(p, _)| p.to_string())) {
            super::sqlite_policy::release(&mut *tx, &name, d, size).await?;
        }
        drop_if_empty(&mut *tx, repo_id).await?;
    }
    sqlx::query("DELETE FROM blobs WHERE digest = ?1")
        .bind(d.as_str())
        .execute(&mut *tx)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn housekeeping_suite() {
        let dir = tempfile::tempdir().expect("tempdir");
        let meta = super::SqliteMeta::open(&dir.path().join("berth.db"))
            .await
            .expect("open");
        crate::meta::testsuite::housekeeping(&meta).await;
    }
}
