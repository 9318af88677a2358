//! SQLite implementation of the pull-through cache's bookkeeping ([`ProxyCache`]): one
//! row per cached manifest or blob link with its last use; expiry removes the content and
//! the row in one transaction, re-checking that it was not used meanwhile.

use super::sqlite::SqliteMeta;
use super::{CacheEntry, MetaError, ProxyCache, Result};
use oci::{Digest, RepoName};
use sqlx::Row;

#[async_trait::async_trait]
impl ProxyCache for SqliteMeta {
    async fn cache_touch(
        &self,
        repo: &RepoName,
        digest: &Digest,
        is_manifest: bool,
        at: i64,
        fresh_after: i64,
    ) -> Result<()> {
        // A read first: most hits find the entry fresh and need no write at all.
        let fresh = sqlx::query(
            "SELECT 1 FROM proxy_cache WHERE repository = ?1 AND digest = ?2
               AND is_manifest = ?3 AND last_used > ?4",
        )
        .bind(repo.as_str())
        .bind(digest.as_str())
        .bind(is_manifest)
        .bind(fresh_after)
        .fetch_optional(&self.reader)
        .await?;
        if fresh.is_some() {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO proxy_cache (repository, digest, is_manifest, last_used)
             VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (repository, digest, is_manifest)
             DO UPDATE SET last_used = excluded.last_used WHERE last_used < excluded.last_used",
        )
        .bind(repo.as_str())
        .bind(digest.as_str())
        .bind(is_manifest)
        .bind(at)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn cache_expired(&self, before: i64, limit: u32) -> Result<Vec<CacheEntry>> {
        let rows = sqlx::query(
            "SELECT repository, digest, is_manifest, last_used FROM proxy_cache
              WHERE last_used < ?1 ORDER BY last_used LIMIT ?2",
        )
        .bind(before)
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await?;
        rows.into_iter()
            .map(|r| {
                let repo: String = r.get(0);
                let digest: String = r.get(1);
                Ok(CacheEntry {
                    repository: repo.parse().map_err(|e| {
                        MetaError::Corrupt(format!("proxy_cache repository {repo:?}: {e}"))
                    })?,
                    digest: digest.parse().map_err(|e| {
                        MetaError::Corrupt(format!("proxy_cache digest {digest:?}: {e}"))
                    })?,
                    is_manifest: r.get(2),
                    last_used: r.get(3),
                })
            })
            .collect()
    }

    async fn cache_expire(&self, entry: &CacheEntry, before: i64) -> Result<bool> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let gone = sqlx::query(
            "DELETE FROM proxy_cache WHERE repository = ?1 AND digest = ?2
               AND is_manifest = ?3 AND last_used < ?4",
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
        let Some(repo_id) = sqlx::query("SELECT id FROM repositories WHERE name = ?1")
            .bind(entry.repository.as_str())
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| r.get::<i64, _>(0))
        else {
            tx.commit().await?;
            return Ok(true);
        };
        let d = entry.digest.as_str();
        if entry.is_manifest {
            for sql in [
                "DELETE FROM tags WHERE repository_id = ?1 AND digest = ?2",
                "DELETE FROM manifest_references WHERE repository_id = ?1 AND manifest_digest = ?2",
                "DELETE FROM manifests WHERE repository_id = ?1 AND digest = ?2",
            ] {
                sqlx::query(sql)
                    .bind(repo_id)
                    .bind(d)
                    .execute(&mut *tx)
                    .await?;
            }
        } else {
            let unlinked = sqlx::query(
                "DELETE FROM repository_blobs WHERE repository_id = ?1 AND digest = ?2",
            )
            .bind(repo_id)
            .bind(d)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if unlinked == 1 {
                let size = super::sqlite_policy::blob_size(&mut tx, &entry.digest).await?;
                super::sqlite_policy::release(
                    &mut tx,
                    entry.repository.as_str(),
                    &entry.digest,
                    size,
                )
                .await?;
            }
        }
        // An emptied repository leaves the catalog too.
        super::sqlite::drop_if_empty(&mut tx, repo_id).await?;
        tx.commit().await?;
        Ok(true)
    }
}
