//! PostgreSQL implementation of the pull-through cache's bookkeeping ([`ProxyCache`]):
//! one row per cached manifest or blob link with its last use. Expiry deletes the row only
//! while it is still unused (the `DELETE` re-checks `last_used` on the row a concurrent
//! touch committed), and locks a cached manifest before it removes its tags, so a push
//! tagging it meanwhile (which holds it `FOR SHARE`) is waited for.

use super::postgres::{drop_if_empty, PgMeta};
use super::{CacheEntry, MetaError, ProxyCache, Result};
use oci::{Digest, RepoName};
use sqlx::Row;

#[async_trait::async_trait]
impl ProxyCache for PgMeta {
    async fn cache_touch(
        &self,
        repo: &RepoName,
        digest: &Digest,
        is_manifest: bool,
        at: i64,
        fresh_after: i64,
    ) -> Result<()> {
        self.read(async {
            // A read first: most hits find the entry fresh and need no write at all.
            let fresh = sqlx::query(
                "SELECT 1 FROM proxy_cache WHERE repository = $1 AND digest = $2
                   AND is_manifest = $3 AND last_used > $4",
            )
            .bind(repo.as_str())
            .bind(digest.as_str())
            .bind(is_manifest)
            .bind(fresh_after)
            .fetch_optional(&self.pool)
            .await?;
            if fresh.is_some() {
                return Ok(());
            }
            sqlx::query(
                "INSERT INTO proxy_cache (repository, digest, is_manifest, last_used)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (repository, digest, is_manifest)
                 DO UPDATE SET last_used = excluded.last_used
                 WHERE proxy_cache.last_used < excluded.last_used",
            )
            .bind(repo.as_str())
            .bind(digest.as_str())
            .bind(is_manifest)
            .bind(at)
            .execute(&self.pool)
            .await?;
            Ok(())
        })
        .await
    }

    async fn cache_expired(&self, before: i64, limit: u32) -> Result<Vec<CacheEntry>> {
        self.read(async {
            let rows = sqlx::query(
                "SELECT repository, digest, is_manifest, last_used FROM proxy_cache
                  WHERE last_used < $1 ORDER BY last_used LIMIT $2",
            )
            .bind(before)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
            rows.into_iter()
                .map(|r| {
                    let repo: String = r.try_get(0)?;
                    let digest: String = r.try_get(1)?;
                    Ok(CacheEntry {
                        repository: repo.parse().map_err(|e| {
                            MetaError::Corrupt(format!("proxy_cache repository {repo:?}: {e}"))
                        })?,
                        digest: digest.parse().map_err(|e| {
                            MetaError::Corrupt(format!("proxy_cache digest {digest:?}: {e}"))
                        })?,
                        is_manifest: r.try_get(2)?,
                        last_used: r.try_get(3)?,
                    })
                })
                .collect()
        })
        .await
    }

    async fn cache_expire(&self, entry: &CacheEntry, before: i64) -> Result<bool> {
        self.write("expiring a cached entry", || async move {
            let mut tx = self.pool.begin().await?;
            let gone = sqlx::query(
                "DELETE FROM proxy_cache WHERE repository = $1 AND digest = $2
                   AND is_manifest = $3 AND last_used < $4",
            )
            .bind(entry.repository.as_str())
            .bind(entry.digest.as_str())
            .bind(entry.is_manifest)
            .bind(before)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if gone == 0 {
                return Ok(false);
            }
            let Some(repo_id) =
                sqlx::query_scalar::<_, i64>("SELECT id FROM repositories WHERE name = $1")
                    .bind(entry.repository.as_str())
                    .fetch_optional(&mut *tx)
                    .await?
            else {
                tx.commit().await?;
                return Ok(true);
            };
            let d = entry.digest.as_str();
            if entry.is_manifest {
                for sql in [
                    "SELECT 1 FROM manifests WHERE repository_id = $1 AND digest = $2 FOR UPDATE",
                    "DELETE FROM tags WHERE repository_id = $1 AND digest = $2",
                    "DELETE FROM manifest_references WHERE repository_id = $1 AND manifest_digest = $2",
                    "DELETE FROM manifests WHERE repository_id = $1 AND digest = $2",
                ] {
                    sqlx::query(sql)
                        .bind(repo_id)
                        .bind(d)
                        .execute(&mut *tx)
                        .await?;
                }
            } else {
                let unlinked = sqlx::query(
                    "DELETE FROM repository_blobs WHERE repository_id = $1 AND digest = $2",
                )
                .bind(repo_id)
                .bind(d)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if unlinked == 1 {
                    let n = super::postgres_policy::blob_size(&mut tx, &entry.digest).await?;
                    super::postgres_policy::release(
                        &mut tx,
                        entry.repository.as_str(),
                        &entry.digest,
                        n,
                    )
                    .await?;
                }
            }
            // An emptied repository leaves the catalog too.
            drop_if_empty(&mut tx, repo_id).await?;
            tx.commit().await?;
            Ok(true)
        })
        .await
    }
}
