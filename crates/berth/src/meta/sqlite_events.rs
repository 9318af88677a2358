//! SQLite implementation of the outbox and housekeeping traits (notifications, upload
//! purging). Claims are a single `UPDATE ... RETURNING` on the head row of an endpoint,
//! guarded by its lease, so two claimers can never both own an entry. Trimming an
//! endpoint's backlog looks on a reader first and takes the write lock only when there
//! is something to drop.

use super::sqlite::SqliteMeta;
use super::{
    now, JobHolder, Maintenance, MetaError, NewEvent, Outbox, OutboxEntry, Result, Trimmed,
    UploadSession,
};
use oci::{Digest, RepoName, Tag};
use sqlx::Row;

/// Append `events` to the outbox inside the caller's transaction, so they commit (or
/// roll back) with the change they describe.
pub(super) async fn insert_events(
    tx: &mut sqlx::SqliteConnection,
    events: &[NewEvent],
) -> Result<()> {
    let t = now();
    for e in events {
        sqlx::query("INSERT INTO outbox (endpoint, payload, created_at) VALUES (?1, ?2, ?3)")
            .bind(&e.endpoint)
            .bind(&e.payload)
            .bind(t)
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}

#[async_trait::async_trait]
impl Outbox for SqliteMeta {
    async fn enqueue(&self, events: &[NewEvent]) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        insert_events(&mut tx, events).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn claim(
        &self,
        endpoint: &str,
        owner: &str,
        lease_secs: i64,
    ) -> Result<Option<OutboxEntry>> {
        let t = now();
        let row = sqlx::query(
            "UPDATE outbox
                SET lease_until = ?3 + ?4, lease_owner = ?2, attempts = attempts + 1
              WHERE seq = (SELECT seq FROM outbox WHERE endpoint = ?1 ORDER BY seq LIMIT 1)
                AND (lease_until <= ?3 OR lease_owner = ?2)
          RETURNING seq, endpoint, payload, attempts",
        )
        .bind(endpoint)
        .bind(owner)
        .bind(t)
        .bind(lease_secs)
        .fetch_optional(&self.writer)
        .await?;
        Ok(row.map(|r| OutboxEntry {
            seq: r.get(0),
            endpoint: r.get(1),
            payload: r.get(2),
            attempts: r.get(3),
        }))
    }

    async fn complete(&self, seq: i64, owner: &str) -> Result<()> {
        sqlx::query("DELETE FROM outbox WHERE seq = ?1 AND lease_owner = ?2")
            .bind(seq)
            .bind(owner)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn release(&self, seq: i64, owner: &str) -> Result<()> {
        sqlx::query(
            "UPDATE outbox SET lease_until = 0, lease_owner = NULL WHERE seq = ?1 AND lease_owner = ?2",
        )
        .bind(seq)
        .bind(owner)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn pending(&self, endpoint: &str) -> Result<u64> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE endpoint = ?1")
            .bind(endpoint)
            .fetch_one(&self.reader)
            .await?;
        Ok(n as u64)
    }

    async fn trim(
        &self,
        endpoint: &str,
        keep: u64,
        created_before: Option<i64>,
    ) -> Result<Trimmed> {
        let keep = i64::try_from(keep).unwrap_or(i64::MAX);
        let t = now();
        // Look first (a reader, no write lock): nearly always there is nothing to drop.
        // The count walks the (endpoint, seq) index only; the age is the oldest droppable
        // entry's (entries are created in about `seq` order).
        let (n, oldest): (i64, Option<i64>) = sqlx::query_as(
            "SELECT (SELECT COUNT(*) FROM outbox WHERE endpoint = ?1),
                    (SELECT created_at FROM outbox WHERE endpoint = ?1 AND lease_until <= ?2
                      ORDER BY seq LIMIT 1)",
        )
        .bind(endpoint)
        .bind(t)
        .fetch_one(&self.reader)
        .await?;
        let expired = matches!((oldest, created_before), (Some(o), Some(c)) if o < c);
        if n <= keep && !expired {
            return Ok(Trimmed::default());
        }
        let mut out = Trimmed::default();
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        if let Some(before) = created_before.filter(|_| expired) {
            out.expired = sqlx::query(
                "DELETE FROM outbox WHERE seq IN (
                    SELECT seq FROM outbox WHERE endpoint = ?1 AND created_at < ?2
                       AND lease_until <= ?3 ORDER BY seq LIMIT ?4)",
            )
            .bind(endpoint)
            .bind(before)
            .bind(t)
            .bind(super::TRIM_BATCH)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        // Counted again under the write lock: deliveries may have shrunk the backlog.
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE endpoint = ?1")
            .bind(endpoint)
            .fetch_one(&mut *tx)
            .await?;
        if n > keep {
            out.over_cap = sqlx::query(
                "DELETE FROM outbox WHERE seq IN (
                    SELECT seq FROM outbox WHERE endpoint = ?1 AND lease_until <= ?2
                     ORDER BY seq LIMIT ?3)",
            )
            .bind(endpoint)
            .bind(t)
            .bind((n - keep).min(super::TRIM_BATCH))
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        tx.commit().await?;
        Ok(out)
    }
}

/// Claim job `?1` for owner `?2` for `?3` seconds by this database's clock: taken when
/// free or run out, renewed by its holder; one row affected when it was.
pub(super) const CLAIM_JOB: &str = "INSERT INTO job_claims (name, owner, claimed_at, lease_until)
     VALUES (?1, ?2, CAST(strftime('%s', 'now') AS INTEGER),
             CAST(strftime('%s', 'now') AS INTEGER) + ?3)
     ON CONFLICT (name) DO UPDATE SET
         owner = excluded.owner,
         claimed_at = CASE WHEN job_claims.owner = excluded.owner
                           THEN job_claims.claimed_at ELSE excluded.claimed_at END,
         lease_until = excluded.lease_until
     WHERE job_claims.lease_until <= excluded.claimed_at
        OR job_claims.owner = excluded.owner";

#[async_trait::async_trait]
impl Maintenance for SqliteMeta {
    async fn setting(&self, name: &str) -> Result<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT value FROM settings WHERE name = ?1")
                .bind(name)
                .fetch_optional(&self.reader)
                .await?,
        )
    }

    async fn uploads_created_before(&self, before: i64, limit: u32) -> Result<Vec<UploadSession>> {
        let rows = sqlx::query(
            "SELECT id, repository, algorithm, created_at FROM uploads
              WHERE created_at < ?1 ORDER BY created_at, id LIMIT ?2",
        )
        .bind(before)
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(super::sqlite::upload_session).collect()
    }

    async fn tags_of(&self, repo: &RepoName, digest: &Digest) -> Result<Vec<Tag>> {
        let rows = sqlx::query(
            "SELECT t.name FROM tags t JOIN repositories r ON r.id = t.repository_id
              WHERE r.name = ?1 AND t.digest = ?2 ORDER BY t.name",
        )
        .bind(repo.as_str())
        .bind(digest.as_str())
        .fetch_all(&self.reader)
        .await?;
        rows.into_iter()
            .map(|r| {
                let name: String = r.get(0);
                name.parse()
                    .map_err(|_| MetaError::Corrupt(format!("tag {name:?}")))
            })
            .collect()
    }

    async fn claim_job(
        &self,
        name: &str,
        owner: &str,
        lease: std::time::Duration,
    ) -> Result<std::result::Result<(), JobHolder>> {
        let lease = i64::try_from(lease.as_secs().max(1)).unwrap_or(i64::MAX / 4);
        // The holder may release between the two statements: then claim again.
        for _ in 0..3 {
            let done = sqlx::query(CLAIM_JOB)
                .bind(name)
                .bind(owner)
                .bind(lease)
                .execute(&self.writer)
                .await?;
            if done.rows_affected() == 1 {
                return Ok(Ok(()));
            }
            let holder = sqlx::query(
                "SELECT owner, claimed_at, lease_until, CAST(strftime('%s', 'now') AS INTEGER)
                   FROM job_claims WHERE name = ?1",
            )
            .bind(name)
            .fetch_optional(&self.writer)
            .await?;
            if let Some(r) = holder {
                return Ok(Err(JobHolder {
                    owner: r.try_get(0)?,
                    claimed_at: r.try_get(1)?,
                    lease_until: r.try_get(2)?,
                    now: r.try_get(3)?,
                }));
            }
        }
        Err(MetaError::Busy(format!(
            "the claim {name:?} kept changing hands; try again"
        )))
    }

    async fn release_job(&self, name: &str, owner: &str) -> Result<()> {
        sqlx::query("DELETE FROM job_claims WHERE name = ?1 AND owner = ?2")
            .bind(name)
            .bind(owner)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn renew_jobs(
        &self,
        names: &[String],
        owner: &str,
        lease: std::time::Duration,
    ) -> Result<u64> {
        let lease = i64::try_from(lease.as_secs().max(1)).unwrap_or(i64::MAX / 4);
        let done = sqlx::query(
            "UPDATE job_claims SET lease_until = CAST(strftime('%s', 'now') AS INTEGER) + ?3
              WHERE name IN (SELECT value FROM json_each(?1)) AND owner = ?2
                AND lease_until > CAST(strftime('%s', 'now') AS INTEGER)",
        )
        .bind(names_json(names))
        .bind(owner)
        .bind(lease)
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected())
    }

    async fn release_jobs(&self, names: &[String], owner: &str) -> Result<()> {
        sqlx::query(
            "DELETE FROM job_claims WHERE name IN (SELECT value FROM json_each(?1)) AND owner = ?2",
        )
        .bind(names_json(names))
        .bind(owner)
        .execute(&self.writer)
        .await?;
        Ok(())
    }
}

/// Claim names as the JSON array `json_each` reads.
fn names_json(names: &[String]) -> String {
    serde_json::to_string(names).unwrap_or_else(|_| "[]".into())
}
