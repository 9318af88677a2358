//! [`Housekeeping`] for PostgreSQL: COUNT/SUM accounting for metrics, and the garbage
//! collector's queries.
//!
//! Every delete locks the rows it is about to delete first, and only then checks its
//! condition, in a statement of its own: at READ COMMITTED each statement sees what was
//! committed when it started, so a check made before the lock could miss a writer that
//! held the rows and committed meanwhile (and a `DELETE ... WHERE NOT EXISTS (...)`
//! re-checks only the deleted row after a lock wait, not its subqueries). Writers lock
//! the same rows (`postgres.rs`: a manifest's required blob links and manifests
//! `FOR SHARE`, a blob's row when it is recorded or mounted), so "garbage collection
//! forgets blob D" and "a manifest naming D is written" never both succeed:
//!
//! - forget first: the manifest's `FOR SHARE` waits, then finds the link gone, and the
//!   manifest is refused (`MissingReferences`);
//! - manifest first: the forget's `FOR UPDATE` waits for its commit, then the check sees
//!   its references and keeps D.
//!
//! The forget also holds D's advisory key ([`BLOB_LOCK_SPACE`]) exclusive, which
//! `link_blob` holds shared (D may have a file but no row to lock), and commits the
//! collector's claim on D with the deletes: a link of D then waits until the caller has
//! removed the file and released the claim (see `registry/gc.rs`).

use super::postgres::{drop_if_empty, PgMeta, BLOB_LOCK_SPACE};
use super::postgres_events::CLAIM_JOB;
use super::{collecting_claim, digest, GcManifest, Housekeeping, KeyedBlob, Result, Stats};
use oci::{Digest, RepoName};
use sqlx::Row;
use std::collections::BTreeMap;

#[cfg(test)]
impl PgMeta {
    /// Tests: make every blob, link and manifest recorded so far look `secs` older.
    pub async fn backdate(&self, secs: i64) -> Result<()> {
        for table in ["blobs", "repository_blobs", "manifests"] {
            sqlx::query(&format!("UPDATE {table} SET created_at = created_at - $1"))
                .bind(secs)
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }
}

fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

#[async_trait::async_trait]
impl Housekeeping for PgMeta {
    async fn clock(&self) -> Result<i64> {
        // Measured afresh (and the offset every write uses refreshed).
        self.read(super::postgres::sync_clock(&self.pool)).await
    }

    async fn stats(&self) -> Result<Stats> {
        self.read(async {
            let row = sqlx::query(
                "SELECT (SELECT COUNT(*) FROM repositories),
                        (SELECT COUNT(*) FROM manifests),
                        (SELECT COUNT(*) FROM blobs),
                        (SELECT COALESCE(SUM(size), 0)::BIGINT FROM blobs),
                        (SELECT COUNT(*) FROM uploads)",
            )
            .fetch_one(&self.pool)
            .await?;
            Ok(Stats {
                repositories: count(row.try_get(0)?),
                manifests: count(row.try_get(1)?),
                blobs: count(row.try_get(2)?),
                blob_bytes: count(row.try_get(3)?),
                uploads: count(row.try_get(4)?),
            })
        })
        .await
    }

    async fn gc_manifests(&self, repo: &RepoName) -> Result<Vec<GcManifest>> {
        self.read(async {
            // One snapshot for both queries (REPEATABLE READ, read only).
            let mut tx = self.pool.begin().await?;
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
                .execute(&mut *tx)
                .await?;
            let rows = sqlx::query(
                "SELECT m.digest, m.subject, m.created_at,
                        EXISTS (SELECT 1 FROM tags t
                                WHERE t.repository_id = m.repository_id AND t.digest = m.digest)
                 FROM manifests m JOIN repositories r ON r.id = m.repository_id
                 WHERE r.name = $1 ORDER BY m.digest",
            )
            .bind(repo.as_str())
            .fetch_all(&mut *tx)
            .await?;
            let mut out = BTreeMap::new();
            for row in rows {
                let d: String = row.try_get(0)?;
                let subject: Option<String> = row.try_get(1)?;
                let m = GcManifest {
                    digest: digest(d.clone())?,
                    tagged: row.try_get(3)?,
                    subject: subject.map(digest).transpose()?,
                    created_at: row.try_get(2)?,
                    references: Vec::new(),
                };
                out.insert(d, m);
            }
            let refs = sqlx::query(
                "SELECT x.manifest_digest, x.child_digest, x.child_is_manifest
                 FROM manifest_references x JOIN repositories r ON r.id = x.repository_id
                 WHERE r.name = $1 ORDER BY x.manifest_digest, x.child_is_manifest, x.child_digest",
            )
            .bind(repo.as_str())
            .fetch_all(&mut *tx)
            .await?;
            tx.commit().await?;
            for row in refs {
                let parent: String = row.try_get(0)?;
                let child: String = row.try_get(1)?;
                if let Some(m) = out.get_mut(&parent) {
                    m.references.push((digest(child)?, row.try_get(2)?));
                }
            }
            Ok(out.into_values().collect())
        })
        .await
    }

    async fn gc_delete_untagged(&self, repo: &RepoName, d: &Digest) -> Result<bool> {
        self.write(&format!("deleting manifest {repo}@{d}"), || async move {
            let mut tx = self.pool.begin().await?;
            // Lock the manifest, then check: a push tagging it or an index naming it
            // holds it FOR SHARE until its commit, which the checks then see.
            let Some(repo_id) = sqlx::query_scalar::<_, i64>(
                "SELECT m.repository_id FROM manifests m JOIN repositories r ON r.id = m.repository_id
                 WHERE r.name = $1 AND m.digest = $2 FOR UPDATE OF m",
            )
            .bind(repo.as_str())
            .bind(d.as_str())
            .fetch_optional(&mut *tx)
            .await?
            else {
                return Ok(false);
            };
            let kept: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM tags WHERE repository_id = $1 AND digest = $2)
                     OR EXISTS (SELECT 1 FROM manifest_references
                                WHERE repository_id = $1 AND child_digest = $2)",
            )
            .bind(repo_id)
            .bind(d.as_str())
            .fetch_one(&mut *tx)
            .await?;
            if kept {
                return Ok(false);
            }
            for sql in [
                "DELETE FROM manifests WHERE repository_id = $1 AND digest = $2",
                "DELETE FROM manifest_references WHERE repository_id = $1 AND manifest_digest = $2",
            ] {
                sqlx::query(sql)
                    .bind(repo_id)
                    .bind(d.as_str())
                    .execute(&mut *tx)
                    .await?;
            }
            drop_if_empty(&mut tx, repo_id).await?;
            tx.commit().await?;
            Ok(true)
        })
        .await
    }

    async fn gc_keyed_blobs(&self, after: Option<&Digest>, limit: u32) -> Result<Vec<KeyedBlob>> {
        self.read(async {
            let rows: Vec<(String, i64, String, i64)> = sqlx::query_as(
                "SELECT digest, size, storage_key, created_at FROM blobs
                  WHERE storage_key IS NOT NULL AND digest > $1 ORDER BY digest LIMIT $2",
            )
            .bind(after.map(Digest::as_str).unwrap_or(""))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
            rows.into_iter().map(keyed_blob).collect()
        })
        .await
    }

    async fn gc_forget_keyed(&self, digests: &[Digest], cutoff: i64) -> Result<Vec<KeyedBlob>> {
        let names: Vec<&str> = digests.iter().map(Digest::as_str).collect();
        let names = &names;
        self.write(
            &format!("deleting {} blobs", digests.len()),
            || async move {
                let mut tx = self.pool.begin().await?;
                lock_blobs(&mut tx, names).await?;
                let rows: Vec<(String, i64, String, i64)> = sqlx::query_as(
                    "SELECT b.digest, b.size, b.storage_key, b.created_at FROM blobs b
                      WHERE b.digest = ANY($1) AND b.storage_key IS NOT NULL
                        AND b.created_at <= $2
                        AND NOT EXISTS (SELECT 1 FROM manifest_references
                                        WHERE child_digest = b.digest)
                        AND NOT EXISTS (SELECT 1 FROM repository_blobs
                                        WHERE digest = b.digest AND created_at > $2)
                      ORDER BY b.digest",
                )
                .bind(names)
                .bind(cutoff)
                .fetch_all(&mut *tx)
                .await?;
                let forgotten = rows
                    .into_iter()
                    .map(keyed_blob)
                    .collect::<Result<Vec<_>>>()?;
                let gone: Vec<&str> = forgotten.iter().map(|b| b.digest.as_str()).collect();
                forget_rows(&mut tx, &gone).await?;
                tx.commit().await?;
                Ok(forgotten)
            },
        )
        .await
    }

    async fn gc_forget_blobs(
        &self,
        digests: &[Digest],
        cutoff: i64,
        owner: &str,
        lease: std::time::Duration,
    ) -> Result<Vec<Digest>> {
        let lease = i64::try_from(lease.as_secs().max(1)).unwrap_or(i64::MAX / 4);
        let names: Vec<&str> = digests.iter().map(Digest::as_str).collect();
        let names = &names;
        self.write(
            &format!("deleting {} blobs", digests.len()),
            || async move {
                let mut tx = self.pool.begin().await?;
                lock_blobs(&mut tx, names).await?;
                let unused: Vec<String> = sqlx::query_scalar(
                    "SELECT d FROM unnest($1::text[]) AS d
                  WHERE NOT EXISTS (SELECT 1 FROM manifest_references WHERE child_digest = d)
                    AND NOT EXISTS (SELECT 1 FROM repository_blobs
                                    WHERE digest = d AND created_at > $2)
                    AND NOT EXISTS (SELECT 1 FROM blobs WHERE digest = d
                                    AND (created_at > $2 OR storage_key IS NOT NULL))",
                )
                .bind(names)
                .bind(cutoff)
                .fetch_all(&mut *tx)
                .await?;
                // The collector's claim on each, committed with the forget: from the commit
                // until the file is gone, `link_blob` of the digest waits. Refused only where
                // another collector holds the digest (one runs at a time, so only after a
                // lost claim): those blobs are left to it.
                let mut forgotten = Vec::new();
                for d in unused {
                    let d = digest(d)?;
                    let claimed = sqlx::query(CLAIM_JOB)
                        .bind(collecting_claim(&d))
                        .bind(owner)
                        .bind(lease)
                        .execute(&mut *tx)
                        .await?;
                    if claimed.rows_affected() == 1 {
                        forgotten.push(d);
                    }
                }
                let gone: Vec<&str> = forgotten.iter().map(Digest::as_str).collect();
                forget_rows(&mut tx, &gone).await?;
                tx.commit().await?;
                Ok(forgotten)
            },
        )
        .await
    }
}

/// Garbage collection's locks on blobs `names` before it decides: every digest's
/// advisory key exclusive, in key order, then their rows, then their links (see
/// `gc_forget_blobs`).
async fn lock_blobs(tx: &mut sqlx::PgConnection, names: &[&str]) -> Result<()> {
    // Every digest's key exclusive, in key order, before any row: a link of one
    // of them waits from here on, and holds nothing this transaction needs.
    sqlx::query(
        "SELECT pg_advisory_xact_lock($1, k)
       FROM (SELECT DISTINCT hashtext(d) AS k FROM unnest($2::text[]) AS d
              ORDER BY k) AS keys",
    )
    .bind(BLOB_LOCK_SPACE)
    .bind(names)
    .execute(&mut *tx)
    .await?;
    // Then the blobs' rows (every writer that records or mounts one locks it, so
    // they wait from here on), then their links (a manifest requiring one holds
    // it FOR SHARE: wait for that to commit), then the check, in a later
    // statement that sees what those writers committed.
    sqlx::query("SELECT 1 FROM blobs WHERE digest = ANY($1) ORDER BY digest FOR UPDATE")
        .bind(names)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "SELECT 1 FROM repository_blobs WHERE digest = ANY($1)
     ORDER BY digest, repository_id FOR UPDATE",
    )
    .bind(names)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Delete the links (off the projects' quotas) and rows of blobs `gone`, in the
/// caller's transaction: garbage collection's forget once it decided.
async fn forget_rows(tx: &mut sqlx::PgConnection, gone: &[&str]) -> Result<()> {
    // (repository, digest, size) of every link that goes.
    let links: Vec<(i64, String, String, i64)> = sqlx::query_as(
        "SELECT r.id, r.name, rb.digest, b.size FROM repository_blobs rb
           JOIN repositories r ON r.id = rb.repository_id
           JOIN blobs b ON b.digest = rb.digest
          WHERE rb.digest = ANY($1) ORDER BY r.id, rb.digest",
    )
    .bind(gone)
    .fetch_all(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM repository_blobs WHERE digest = ANY($1)")
        .bind(gone)
        .execute(&mut *tx)
        .await?;
    // Off the quota of each project that held them (once a project and digest,
    // however many of its repositories linked it); a repository that held only
    // these blobs goes with their links.
    let mut emptied: Vec<i64> = Vec::new();
    let mut released = std::collections::HashSet::new();
    for (repo_id, name, d, n) in links {
        let project = name.split_once('/').map(|(p, _)| p.to_string());
        if released.insert((project, d.clone())) {
            let d = digest(d)?;
            let n = u64::try_from(n).unwrap_or(0);
            super::postgres_policy::release(&mut *tx, &name, &d, n).await?;
        }
        if emptied.last() != Some(&repo_id) {
            emptied.push(repo_id);
        }
    }
    for repo_id in emptied {
        drop_if_empty(&mut *tx, repo_id).await?;
    }
    sqlx::query("DELETE FROM blobs WHERE digest = ANY($1)")
        .bind(gone)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// A `blobs` row with a key, as (digest, size, storage_key, created_at).
fn keyed_blob((d, size, key, created_at): (String, i64, String, i64)) -> Result<KeyedBlob> {
    Ok(KeyedBlob {
        digest: digest(d)?,
        size: u64::try_from(size).unwrap_or(0),
        key,
        created_at,
    })
}
