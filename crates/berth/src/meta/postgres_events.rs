//! PostgreSQL implementation of the outbox and maintenance traits (notifications, upload
//! purging).
//!
//! # Sequence order is commit order
//!
//! An outbox entry's `seq` is its delivery order within an endpoint, and a reader (a
//! claim takes the lowest `seq`; a poller remembers the last `seq` it saw) relies on a
//! committed entry never appearing below one it has already seen. With writers on
//! several nodes, identity values are handed out when rows are inserted, not when they
//! commit: B could take seq 11 after A took 10 and commit first, and a reader could see
//! 11 before 10 exists. So every transaction that appends entries first takes the
//! transaction-level advisory lock [`OUTBOX_LOCK`] ([`insert_events`]), held until it
//! commits or rolls back: entries get their numbers one transaction at a time, in commit
//! order. The lock is taken last, right before the inserts, so it is held only for the
//! inserts and the commit; writes without events (no endpoint configured) never take it.
//!
//! A claim is one `UPDATE ... RETURNING` on the head row of an endpoint, guarded by its
//! lease: two claimers contend for the row lock, and the second re-checks the lease on
//! the row the first committed, so both never own an entry. (`FOR UPDATE SKIP LOCKED`
//! would let a second worker claim the entry behind a leased head, out of order.)

use super::postgres::{now, upload_session, PgMeta};
use super::{
    JobHolder, Maintenance, MetaError, NewEvent, Outbox, OutboxEntry, Result, Trimmed,
    UploadSession,
};
use oci::{Digest, RepoName, Tag};
use sqlx::{PgConnection, Row};

/// The advisory lock (transaction level) serializing outbox appends; see the module
/// comment.
pub(super) const OUTBOX_LOCK: i64 = 0x4265_7274_0001;

/// Append `events` to the outbox inside the caller's transaction, so they commit (or roll
/// back) with the change they describe, in commit order ([`OUTBOX_LOCK`]). Call it as the
/// transaction's last step before the commit.
pub(super) async fn insert_events(tx: &mut PgConnection, events: &[NewEvent]) -> Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(OUTBOX_LOCK)
        .execute(&mut *tx)
        .await?;
    let t = now();
    let (endpoints, payloads): (Vec<&str>, Vec<&str>) = events
        .iter()
        .map(|e| (e.endpoint.as_str(), e.payload.as_str()))
        .unzip();
    // One statement; WITH ORDINALITY and ORDER BY keep the batch's order in `seq`.
    sqlx::query(
        "INSERT INTO outbox (endpoint, payload, created_at)
         SELECT e, p, $3 FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS x(e, p, n)
         ORDER BY n",
    )
    .bind(&endpoints)
    .bind(&payloads)
    .bind(t)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

#[async_trait::async_trait]
impl Outbox for PgMeta {
    async fn enqueue(&self, events: &[NewEvent]) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        self.write("appending events", || async move {
            let mut tx = self.pool.begin().await?;
            insert_events(&mut tx, events).await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    async fn claim(
        &self,
        endpoint: &str,
        owner: &str,
        lease_secs: i64,
    ) -> Result<Option<OutboxEntry>> {
        self.read(async {
            let t = now();
            let row = sqlx::query(
                "UPDATE outbox
                    SET lease_until = $3 + $4, lease_owner = $2, attempts = attempts + 1
                  WHERE seq = (SELECT seq FROM outbox WHERE endpoint = $1 ORDER BY seq LIMIT 1)
                    AND (lease_until <= $3 OR lease_owner = $2)
              RETURNING seq, endpoint, payload, attempts",
            )
            .bind(endpoint)
            .bind(owner)
            .bind(t)
            .bind(lease_secs)
            .fetch_optional(&self.pool)
            .await?;
            row.map(|r| {
                Ok(OutboxEntry {
                    seq: r.try_get(0)?,
                    endpoint: r.try_get(1)?,
                    payload: r.try_get(2)?,
                    attempts: r.try_get(3)?,
                })
            })
            .transpose()
        })
        .await
    }

    async fn complete(&self, seq: i64, owner: &str) -> Result<()> {
        self.read(async {
            sqlx::query("DELETE FROM outbox WHERE seq = $1 AND lease_owner = $2")
                .bind(seq)
                .bind(owner)
                .execute(&self.pool)
                .await?;
            Ok(())
        })
        .await
    }

    async fn release(&self, seq: i64, owner: &str) -> Result<()> {
        self.read(async {
            sqlx::query(
                "UPDATE outbox SET lease_until = 0, lease_owner = NULL WHERE seq = $1 AND lease_owner = $2",
            )
            .bind(seq)
            .bind(owner)
            .execute(&self.pool)
            .await?;
            Ok(())
        })
        .await
    }

    async fn pending(&self, endpoint: &str) -> Result<u64> {
        self.read(async {
            let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE endpoint = $1")
                .bind(endpoint)
                .fetch_one(&self.pool)
                .await?;
            Ok(u64::try_from(n).unwrap_or(0))
        })
        .await
    }

    async fn trim(
        &self,
        endpoint: &str,
        keep: u64,
        created_before: Option<i64>,
    ) -> Result<Trimmed> {
        let keep = i64::try_from(keep).unwrap_or(i64::MAX);
        let t = now();
        // Look first: nearly always there is nothing to drop.
        let (n, oldest): (i64, Option<i64>) = self
            .read(async {
                Ok(sqlx::query_as(
                    "SELECT (SELECT COUNT(*) FROM outbox WHERE endpoint = $1),
                            (SELECT created_at FROM outbox WHERE endpoint = $1 AND lease_until <= $2
                              ORDER BY seq LIMIT 1)",
                )
                .bind(endpoint)
                .bind(t)
                .fetch_one(&self.pool)
                .await?)
            })
            .await?;
        let expired = matches!((oldest, created_before), (Some(o), Some(c)) if o < c);
        if n <= keep && !expired {
            return Ok(Trimmed::default());
        }
        self.write("trimming the outbox", || async move {
            let mut out = Trimmed::default();
            let mut tx = self.pool.begin().await?;
            if let Some(before) = created_before.filter(|_| expired) {
                out.expired = sqlx::query(
                    "DELETE FROM outbox WHERE seq IN (
                        SELECT seq FROM outbox WHERE endpoint = $1 AND created_at < $2
                           AND lease_until <= $3 ORDER BY seq LIMIT $4)",
                )
                .bind(endpoint)
                .bind(before)
                .bind(t)
                .bind(super::TRIM_BATCH)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            }
            // Counted again: deliveries may have shrunk the backlog. (An entry claimed
            // meanwhile is re-checked by the DELETE: its lease is then in the future.)
            let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE endpoint = $1")
                .bind(endpoint)
                .fetch_one(&mut *tx)
                .await?;
            if n > keep {
                out.over_cap = sqlx::query(
                    "DELETE FROM outbox WHERE seq IN (
                        SELECT seq FROM outbox WHERE endpoint = $1 AND lease_until <= $2
                         ORDER BY seq LIMIT $3)
                       AND lease_until <= $2",
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
        })
        .await
    }
}

/// Claim job `$1` for owner `$2` for `$3` seconds by the database server's clock:
/// taken when free or run out, renewed by its holder; one row affected when it was.
/// `INSERT ... ON CONFLICT DO UPDATE` locks the row: of two nodes claiming at once, the
/// second re-evaluates the `WHERE` against the first's claim.
pub(super) const CLAIM_JOB: &str = "INSERT INTO job_claims (name, owner, claimed_at, lease_until)
     VALUES ($1, $2, EXTRACT(EPOCH FROM clock_timestamp())::BIGINT,
             EXTRACT(EPOCH FROM clock_timestamp())::BIGINT + $3)
     ON CONFLICT (name) DO UPDATE SET
         owner = excluded.owner,
         claimed_at = CASE WHEN job_claims.owner = excluded.owner
                           THEN job_claims.claimed_at ELSE excluded.claimed_at END,
         lease_until = excluded.lease_until
     WHERE job_claims.lease_until <= excluded.claimed_at
        OR job_claims.owner = excluded.owner";

#[async_trait::async_trait]
impl Maintenance for PgMeta {
    async fn setting(&self, name: &str) -> Result<Option<String>> {
        self.read(async {
            Ok(
                sqlx::query_scalar("SELECT value FROM settings WHERE name = $1")
                    .bind(name)
                    .fetch_optional(&self.pool)
                    .await?,
            )
        })
        .await
    }

    async fn uploads_created_before(&self, before: i64, limit: u32) -> Result<Vec<UploadSession>> {
        self.read(async {
            let rows = sqlx::query(
                "SELECT id, repository, algorithm, created_at FROM uploads
                  WHERE created_at < $1 ORDER BY created_at, id LIMIT $2",
            )
            .bind(before)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
            rows.iter().map(upload_session).collect()
        })
        .await
    }

    async fn tags_of(&self, repo: &RepoName, digest: &Digest) -> Result<Vec<Tag>> {
        self.read(async {
            let names: Vec<String> = sqlx::query_scalar(
                "SELECT t.name FROM tags t JOIN repositories r ON r.id = t.repository_id
                  WHERE r.name = $1 AND t.digest = $2 ORDER BY t.name",
            )
            .bind(repo.as_str())
            .bind(digest.as_str())
            .fetch_all(&self.pool)
            .await?;
            names
                .into_iter()
                .map(|name| {
                    name.parse()
                        .map_err(|_| MetaError::Corrupt(format!("tag {name:?}")))
                })
                .collect()
        })
        .await
    }

    async fn claim_job(
        &self,
        name: &str,
        owner: &str,
        lease: std::time::Duration,
    ) -> Result<std::result::Result<(), JobHolder>> {
        let lease = i64::try_from(lease.as_secs().max(1)).unwrap_or(i64::MAX / 4);
        self.read(async {
            // The holder may release between the two statements: then claim again.
            for _ in 0..3 {
                let done = sqlx::query(CLAIM_JOB)
                    .bind(name)
                    .bind(owner)
                    .bind(lease)
                    .execute(&self.pool)
                    .await?;
                if done.rows_affected() == 1 {
                    return Ok(Ok(()));
                }
                let holder = sqlx::query(
                    "SELECT owner, claimed_at, lease_until,
                            EXTRACT(EPOCH FROM clock_timestamp())::BIGINT
                       FROM job_claims WHERE name = $1",
                )
                .bind(name)
                .fetch_optional(&self.pool)
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
        })
        .await
    }

    async fn release_job(&self, name: &str, owner: &str) -> Result<()> {
        self.read(async {
            sqlx::query("DELETE FROM job_claims WHERE name = $1 AND owner = $2")
                .bind(name)
                .bind(owner)
                .execute(&self.pool)
                .await?;
            Ok(())
        })
        .await
    }

    async fn renew_jobs(
        &self,
        names: &[String],
        owner: &str,
        lease: std::time::Duration,
    ) -> Result<u64> {
        let lease = i64::try_from(lease.as_secs().max(1)).unwrap_or(i64::MAX / 4);
        self.read(async {
            let done = sqlx::query(
                "UPDATE job_claims
                    SET lease_until = EXTRACT(EPOCH FROM clock_timestamp())::BIGINT + $3
                  WHERE name = ANY($1) AND owner = $2
                    AND lease_until > EXTRACT(EPOCH FROM clock_timestamp())::BIGINT",
            )
            .bind(names)
            .bind(owner)
            .bind(lease)
            .execute(&self.pool)
            .await?;
            Ok(done.rows_affected())
        })
        .await
    }

    async fn release_jobs(&self, names: &[String], owner: &str) -> Result<()> {
        self.read(async {
            sqlx::query("DELETE FROM job_claims WHERE name = ANY($1) AND owner = $2")
                .bind(names)
                .bind(owner)
                .execute(&self.pool)
                .await?;
            Ok(())
        })
        .await
    }
}
