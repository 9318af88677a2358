//! PostgreSQL metadata store: one database shared by every node of a cluster (schema in
//! `migrations/postgres/`, the same tables and meaning as the SQLite one).
//!
//! # Concurrency
//!
//! SQLite gives Berth one global write lock; PostgreSQL runs transactions side by side at
//! READ COMMITTED, each statement seeing what was committed when it started. Where a
//! write checks something and then acts on it, the rows it depends on are locked first,
//! and checked in a statement after the lock (so the check sees what a writer that held
//! the lock committed):
//!
//! - A repository row is the repository's lock. Writers that add to a repository hold
//!   it `FOR KEY SHARE` ([`hold_repository`]: concurrent writers do not block each other);
//!   a write that may remove it ([`drop_if_empty`], `clear_repository`) takes it
//!   `FOR UPDATE` before it looks whether the repository is empty.
//! - A `blobs` row is its digest's lock: recording or mounting a blob locks it (upsert, or
//!   `FOR SHARE`), and garbage collection's forget takes it and the blob's links
//!   `FOR UPDATE`, then checks for references, then deletes (`postgres_ops.rs`). A
//!   digest with a file but no row yet is ordered by its advisory key
//!   ([`BLOB_LOCK_SPACE`]: shared when recorded, exclusive when forgotten).
//! - `put_manifest` locks the links of its required blobs and its required manifests
//!   `FOR SHARE`, and the manifest row itself, so a collection's forget or untagged delete
//!   either waits for the manifest's commit and then sees its references, or commits first
//!   and the manifest is refused ([`MetaError::MissingReferences`]).
//! - The outbox, upload session caps and signing keys serialize on transaction-level
//!   advisory locks (`postgres_events.rs`, [`UPLOADS_LOCK`], `postgres_access.rs`).
//!
//! Lock waits across tables can deadlock (PostgreSQL then aborts one side, SQLSTATE
//! 40P01); every write runs in [`PgMeta::write`], which retries a transaction that failed
//! that way, or with a serialization failure (40001), a bounded number of times.

use super::postgres_events::insert_events;
use super::{
    completed, digest, project_range, BlobRecord, CompletedUpload, ManifestDeletion, Manifests,
    MetaError, NewEvent, NewManifest, Referrer, Repositories, RepositoryClearing, Result,
    SessionCapReached, SessionCaps, StoredManifest, UploadSession, Uploads, COMPLETED_UPLOAD_SECS,
};
use futures_util::TryStreamExt;
use oci::{Digest, Reference, RepoName, Tag};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{Connection, PgConnection, PgPool, Row};
use std::collections::HashSet;
use std::future::Future;
use std::str::FromStr;
use std::time::Duration;

/// Connection settings of [`PgMeta::open`] (`database.pool.*`, `database.connecttimeout`,
/// `database.statementtimeout`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgOptions {
    /// Most connections this process opens (every node has its own pool: the server's
    /// `max_connections` must cover all of them).
    pub max_connections: u32,
    /// How long opening a connection may take.
    pub connect_timeout: Duration,
    /// How long a query waits for a free connection of the pool.
    pub acquire_timeout: Duration,
    /// The server cancels a statement running longer (`statement_timeout`); `None`: the
    /// server's own setting.
    pub statement_timeout: Option<Duration>,
    /// A connection idle this long is closed; `None`: kept.
    pub idle_timeout: Option<Duration>,
    /// A connection is replaced after this long; `None`: kept.
    pub max_lifetime: Option<Duration>,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            max_connections: 10,
            connect_timeout: Duration::from_secs(5),
            acquire_timeout: Duration::from_secs(30),
            statement_timeout: None,
            idle_timeout: Some(Duration::from_secs(600)),
            max_lifetime: Some(Duration::from_secs(1800)),
        }
    }
}

pub struct PgMeta {
    pub(super) pool: PgPool,
    /// `host:port/database` for messages (never the password).
    pub(super) server: String,
    options: PgOptions,
}

/// The database server's clock minus this machine's, in seconds (0 until measured).
/// Every time this backend writes or compares (created_at, updated_at, leases) is
/// this machine's clock corrected by it, so the nodes of a cluster write one clock's
/// times even when theirs disagree; garbage collection's grace period is measured on
/// it too ([`super::Housekeeping::clock`]). Process-wide: a process talks to one
/// database server.
static CLOCK_OFFSET: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

/// Seconds since the epoch by the database server's clock (see [`CLOCK_OFFSET`]).
pub(super) fn now() -> i64 {
    super::now() + CLOCK_OFFSET.load(std::sync::atomic::Ordering::Relaxed)
}

/// Measure the database server's clock against this machine's; returns the server's
/// time. The measurement is off by at most half a round trip, far below a second.
pub(super) async fn sync_clock(pool: &PgPool) -> Result<i64> {
    let before = super::now();
    let db: i64 = sqlx::query_scalar("SELECT EXTRACT(EPOCH FROM clock_timestamp())::BIGINT")
        .fetch_one(pool)
        .await?;
    CLOCK_OFFSET.store(db - before, std::sync::atomic::Ordering::Relaxed);
    Ok(db)
}

/// Attempts of a write transaction that PostgreSQL aborted for a deadlock or a
/// serialization failure.
const WRITE_ATTEMPTS: u32 = 5;

/// Advisory lock (transaction level) serializing upload session creation, so that the
/// caps are counted and the session inserted as one step across nodes.
pub(super) const UPLOADS_LOCK: i64 = 0x4265_7274_0002;
/// Advisory lock key space (the two-int4 form, disjoint from the bigint keys above) of
/// projects by name: a new repository holds its project's key shared, deleting a
/// project holds it exclusive, so no repository appears in a project being deleted.
pub(super) const PROJECT_LOCK_SPACE: i32 = 0x4265_7274;
/// Advisory lock key space of blob digests: recording a blob ([`Repositories::link_blob`])
/// holds its digest's key shared, garbage collection's forget holds it exclusive, so the
/// two are ordered even when the digest has no `blobs` row to lock yet (a file left by an
/// upload that crashed before its link).
pub(super) const BLOB_LOCK_SPACE: i32 = 0x4265_7275;

impl PgMeta {
    /// Connect to `dsn` (`postgres://user:password@host:port/database?sslmode=...`), and
    /// create or migrate the schema.
    ///
    /// Several nodes may start at once on a fresh database: sqlx's PostgreSQL migrator
    /// holds a session-level advisory lock (`pg_advisory_lock`, keyed by the database
    /// name) from before it creates its bookkeeping table until it has applied every
    /// migration, so one node migrates and the others wait, then find nothing left to do
    /// (tested by `concurrent_opens_of_a_fresh_database`).
    pub async fn open(dsn: &str, options: PgOptions) -> Result<PgMeta> {
        let mut connect = PgConnectOptions::from_str(dsn).map_err(|e| {
            MetaError::Unavailable(format!(
                "database.dsn is not a usable PostgreSQL URL ({}): write it as postgres://user:password@host:port/database?sslmode=disable",
                redact(&e.to_string(), dsn)
            ))
        })?;
        connect = connect.application_name("berth");
        if let Some(t) = options.statement_timeout {
            connect = connect.options([("statement_timeout", format!("{}", t.as_millis()))]);
        }
        let server = format!(
            "{}:{}/{}",
            connect.get_host(),
            connect.get_port(),
            connect.get_database().unwrap_or("(default database)")
        );
        let who = connect.get_username().to_string();
        // One connection first, with its own timeout: a pool would retry until its
        // acquire timeout and report only that it timed out, not why.
        let cannot = |reason: String| {
            MetaError::Unavailable(format!(
                "cannot connect to PostgreSQL at {server} as user {who}: {reason}; check that the server runs and is reachable from this host (firewall, listen_addresses), that database.dsn names the right host, port, database and user, the password, sslmode and the server's pg_hba.conf"
            ))
        };
        match tokio::time::timeout(
            options.connect_timeout,
            PgConnection::connect_with(&connect),
        )
        .await
        {
            Err(_) => {
                return Err(cannot(format!(
                    "no answer within {:?} (database.connecttimeout)",
                    options.connect_timeout
                )))
            }
            Ok(Err(e)) => return Err(cannot(redact(&e.to_string(), dsn))),
            Ok(Ok(conn)) => {
                let _ = conn.close().await;
            }
        }
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .min_connections(0)
            .acquire_timeout(options.acquire_timeout)
            .idle_timeout(options.idle_timeout)
            .max_lifetime(options.max_lifetime)
            .connect_lazy_with(connect);
        // A newer version's migrations may already be applied (a rolling upgrade: a
        // node of the new version started first). Migrations are expand-only, so this
        // version's code still works on that schema: start anyway rather than refuse
        // (sqlx's default), or an old node restarting mid-upgrade would stay down.
        // Nodes starting at once on a new database may all see it new: they then write
        // the same settings, and the first write stands.
        let fresh: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NULL")
            .fetch_one(&pool)
            .await?;
        let mut migrator = sqlx::migrate!("./migrations/postgres");
        migrator.set_ignore_missing(true);
        migrator.run(&pool).await?;
        if fresh {
            // Created by this release: see `super::FRESH_SETTINGS`.
            for (name, value) in super::FRESH_SETTINGS {
                sqlx::query(
                    "INSERT INTO settings (name, value, updated_at) VALUES ($1, $2, $3)
                     ON CONFLICT (name) DO NOTHING",
                )
                .bind(name)
                .bind(value)
                .bind(now())
                .execute(&pool)
                .await?;
            }
        }
        let offset = sync_clock(&pool).await? - super::now();
        if offset.abs() > 60 {
            tracing::warn!(
                offset_secs = offset,
                "this machine's clock is {offset} s off the PostgreSQL server's: Berth uses the server's for everything it stores, but fix the clock (NTP)"
            );
        }
        Ok(PgMeta {
            pool,
            server,
            options,
        })
    }

    /// Close every connection (tests drop their database after this).
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// `e`, with the connection failures a caller cannot act on from the bare sqlx error
    /// explained.
    pub(super) fn explain(&self, e: MetaError) -> MetaError {
        let server = &self.server;
        match e {
            MetaError::Database(sqlx::Error::PoolClosed) => MetaError::Unavailable(format!(
                "the connection pool to PostgreSQL at {server} is closed (Berth is shutting down)"
            )),
            MetaError::Database(sqlx::Error::PoolTimedOut) => MetaError::Unavailable(format!(
                "no connection to PostgreSQL at {server} within {:?}: all {} of database.pool.maxopen are busy, or the server does not answer; check the server, its max_connections and database.pool.maxopen",
                self.options.acquire_timeout, self.options.max_connections
            )),
            MetaError::Database(sqlx::Error::Io(io)) => MetaError::Unavailable(format!(
                "lost the connection to PostgreSQL at {server}: {io}; check that the server runs and is reachable"
            )),
            other => other,
        }
    }

    /// A read, with connection failures explained.
    pub(super) async fn read<T>(&self, f: impl Future<Output = Result<T>>) -> Result<T> {
        f.await.map_err(|e| self.explain(e))
    }

    /// A write transaction (`f` runs it from `begin` to `commit`), run again when
    /// PostgreSQL aborted it for a deadlock or a serialization failure, at most
    /// [`WRITE_ATTEMPTS`] times; connection failures explained.
    pub(super) async fn write<T, F, Fut>(&self, what: &str, mut f: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut attempt = 1;
        loop {
            match f().await {
                Err(MetaError::Database(e)) if is_retryable(&e) => {
                    if attempt >= WRITE_ATTEMPTS {
                        return Err(MetaError::Busy(format!(
                            "{what}: PostgreSQL aborted the transaction {WRITE_ATTEMPTS} times for conflicts with concurrent writers (last: {e}); nothing was changed — try again"
                        )));
                    }
                    tracing::debug!(attempt, error = %e, "{what}: transaction conflict, trying again");
                    // A little jitter, so that two victims do not collide again in step.
                    let jitter = u64::from(rand::random::<u8>()) % 20;
                    tokio::time::sleep(Duration::from_millis(5 * u64::from(attempt) + jitter))
                        .await;
                    attempt += 1;
                }
                Err(e) => return Err(self.explain(e)),
                Ok(v) => return Ok(v),
            }
        }
    }
}

/// A serialization failure (40001) or a deadlock (40P01): the transaction was rolled
/// back and may simply run again.
pub(super) fn is_retryable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => matches!(db.code().as_deref(), Some("40001" | "40P01")),
        _ => false,
    }
}

/// `text` without the password of `dsn`, should an error message ever quote it.
fn redact(text: &str, dsn: &str) -> String {
    let password = dsn
        .split_once("://")
        .and_then(|(_, rest)| rest.split(['/', '?']).next())
        .and_then(|authority| authority.rsplit_once('@'))
        .and_then(|(userinfo, _)| userinfo.split_once(':'))
        .map(|(_, p)| p)
        .filter(|p| !p.is_empty());
    match password {
        Some(p) => text.replace(p, "<password>"),
        None => text.to_string(),
    }
}

/// An `uploads` row (`id, repository, algorithm, created_at`) as a session.
pub(super) fn upload_session(r: &PgRow) -> Result<UploadSession> {
    let repo: String = r.try_get(1)?;
    let alg: String = r.try_get(2)?;
    Ok(UploadSession {
        id: r.try_get(0)?,
        repository: repo
            .parse()
            .map_err(|_| MetaError::Corrupt(format!("repository name {repo:?}")))?,
        algorithm: alg
            .parse()
            .map_err(|_| MetaError::Corrupt(format!("algorithm {alg:?}")))?,
        created_at: r.try_get(3)?,
    })
}

/// The id of repository `repo`, created at `t` if it does not exist, locked
/// `FOR KEY SHARE` until the caller's transaction ends: it cannot be deleted meanwhile
/// ([`drop_if_empty`] waits), while other writers to it go on. A new repository holds its
/// project's advisory key shared ([`PROJECT_LOCK_SPACE`]).
pub(super) async fn hold_repository(tx: &mut PgConnection, repo: &str, t: i64) -> Result<i64> {
    for _ in 0..WRITE_ATTEMPTS {
        let id: Option<i64> =
            sqlx::query_scalar("SELECT id FROM repositories WHERE name = $1 FOR KEY SHARE")
                .bind(repo)
                .fetch_optional(&mut *tx)
                .await?;
        if let Some(id) = id {
            return Ok(id);
        }
        if let Some((project, _)) = repo.split_once('/') {
            sqlx::query("SELECT pg_advisory_xact_lock_shared($1, hashtext($2))")
                .bind(PROJECT_LOCK_SPACE)
                .bind(project)
                .execute(&mut *tx)
                .await?;
        }
        // No row: another transaction may be inserting or deleting it; DO NOTHING waits
        // for that one and then inserts, or finds its row (then read it again above).
        let id: Option<i64> = sqlx::query_scalar(
            "INSERT INTO repositories (name, created_at) VALUES ($1, $2)
             ON CONFLICT (name) DO NOTHING RETURNING id",
        )
        .bind(repo)
        .bind(t)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(id) = id {
            return Ok(id);
        }
    }
    Err(MetaError::Busy(format!(
        "repository {repo} was created and deleted by concurrent writers {WRITE_ATTEMPTS} times in a row; try again"
    )))
}

/// Delete repository `id` if it holds nothing (no manifest, tag or blob link), inside the
/// caller's transaction: a repository exists while it holds something. It is locked
/// `FOR UPDATE` before the check that decides (so writers that hold it have committed and
/// are seen, and new ones wait), but only when a first look finds it empty.
pub(super) async fn drop_if_empty(tx: &mut PgConnection, id: i64) -> Result<()> {
    const EMPTY: &str = "NOT EXISTS (SELECT 1 FROM manifests WHERE repository_id = $1)
           AND NOT EXISTS (SELECT 1 FROM tags WHERE repository_id = $1)
           AND NOT EXISTS (SELECT 1 FROM repository_blobs WHERE repository_id = $1)";
    let looks_empty: bool = sqlx::query_scalar(&format!("SELECT {EMPTY}"))
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
    if !looks_empty {
        return Ok(());
    }
    sqlx::query("SELECT 1 FROM repositories WHERE id = $1 FOR UPDATE")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    sqlx::query(&format!(
        "DELETE FROM repositories WHERE id = $1 AND {EMPTY}"
    ))
    .bind(id)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Link `d` into `repo` (creating the repository) at time `t`, inside `tx`. A link that
/// exists is renewed: a blob pushed or mounted again counts as new for garbage
/// collection's grace period.
async fn link_in(
    tx: &mut PgConnection,
    repo: &RepoName,
    d: &Digest,
    size: u64,
    t: i64,
) -> Result<()> {
    // Counted against the project's quota if the link makes the blob new to it.
    super::postgres_policy::charge(tx, repo.as_str(), d, size).await?;
    let repo_id = hold_repository(tx, repo.as_str(), t).await?;
    sqlx::query(
        "INSERT INTO repository_blobs (repository_id, digest, created_at) VALUES ($1, $2, $3)
         ON CONFLICT (repository_id, digest) DO UPDATE SET created_at = excluded.created_at",
    )
    .bind(repo_id)
    .bind(d.as_str())
    .bind(t)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// The size and key of blob `$2` if it is linked into repository `$1`.
macro_rules! linked_size {
    () => {
        "SELECT b.size, b.storage_key FROM repositories r
         JOIN repository_blobs rb ON rb.repository_id = r.id
         JOIN blobs b ON b.digest = rb.digest
         WHERE r.name = $1 AND rb.digest = $2"
    };
}
const LINKED_SIZE: &str = linked_size!();

fn size(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// A `blobs` row's (size, storage_key).
fn blob_record((n, key): (i64, Option<String>)) -> BlobRecord {
    BlobRecord { size: size(n), key }
}

#[async_trait::async_trait]
impl Repositories for PgMeta {
    async fn link_blob_at(
        &self,
        repo: &RepoName,
        d: &Digest,
        blob_size: u64,
        key: Option<&str>,
        events: &[NewEvent],
    ) -> Result<Option<String>> {
        self.write("linking a blob", || async move {
            let t = now();
            let mut tx = self.pool.begin().await?;
            // The digest's key shared: a collection's forget holds it exclusive, so it
            // either saw this link or committed (with its claim) before the check below.
            sqlx::query("SELECT pg_advisory_xact_lock_shared($1, hashtext($2))")
                .bind(BLOB_LOCK_SPACE)
                .bind(d.as_str())
                .execute(&mut *tx)
                .await?;
            // A collection that forgot this digest is removing its file: the caller waits.
            let collecting: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM job_claims WHERE name = $1
                    AND lease_until > EXTRACT(EPOCH FROM clock_timestamp())::BIGINT)",
            )
            .bind(super::collecting_claim(d))
            .fetch_one(&mut *tx)
            .await?;
            if collecting {
                return Err(MetaError::Collecting(d.clone()));
            }
            // A (re-)committed blob and its link count as new for garbage collection's
            // grace period. The row's key is never replaced: the first one recorded wins
            // (concurrent inserts of one digest wait on its primary key).
            let effective: Option<String> = sqlx::query_scalar(
                "INSERT INTO blobs (digest, size, created_at, storage_key) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (digest) DO UPDATE SET created_at = excluded.created_at
                 RETURNING storage_key",
            )
            .bind(d.as_str())
            .bind(i64::try_from(blob_size).unwrap_or(i64::MAX))
            .bind(t)
            .bind(key)
            .fetch_one(&mut *tx)
            .await?;
            link_in(&mut tx, repo, d, blob_size, t).await?;
            insert_events(&mut tx, events).await?;
            tx.commit().await?;
            Ok(effective)
        })
        .await
    }

    async fn mount_blob(
        &self,
        repo: &RepoName,
        d: &Digest,
        from: Option<&RepoName>,
        events: &[NewEvent],
    ) -> Result<Option<BlobRecord>> {
        self.write("mounting a blob", || async move {
            let t = now();
            let mut tx = self.pool.begin().await?;
            // FOR SHARE on the blob's row (and the source link): a collection forgetting
            // the blob holds them FOR UPDATE, so this waits and then finds them gone.
            let found: Option<(i64, Option<String>)> = match from {
                Some(from) => sqlx::query_as(concat!(linked_size!(), " FOR SHARE OF rb, b"))
                    .bind(from.as_str())
                    .bind(d.as_str()),
                None => sqlx::query_as(
                    "SELECT size, storage_key FROM blobs WHERE digest = $1 FOR SHARE",
                )
                .bind(d.as_str()),
            }
            .fetch_optional(&mut *tx)
            .await?;
            let Some(found) = found.map(blob_record) else {
                return Ok(None);
            };
            link_in(&mut tx, repo, d, found.size, t).await?;
            insert_events(&mut tx, events).await?;
            tx.commit().await?;
            Ok(Some(found))
        })
        .await
    }

    async fn linked_blob(&self, repo: &RepoName, d: &Digest) -> Result<Option<BlobRecord>> {
        self.read(async {
            let found: Option<(i64, Option<String>)> = sqlx::query_as(LINKED_SIZE)
                .bind(repo.as_str())
                .bind(d.as_str())
                .fetch_optional(&self.pool)
                .await?;
            Ok(found.map(blob_record))
        })
        .await
    }

    async fn known_blob(&self, d: &Digest) -> Result<Option<BlobRecord>> {
        self.read(async {
            let found: Option<(i64, Option<String>)> = sqlx::query_as(
                "SELECT b.size, b.storage_key FROM blobs b WHERE b.digest = $1
                 AND EXISTS (SELECT 1 FROM repository_blobs rb WHERE rb.digest = b.digest)",
            )
            .bind(d.as_str())
            .fetch_optional(&self.pool)
            .await?;
            Ok(found.map(blob_record))
        })
        .await
    }

    async fn unlink_blob(&self, repo: &RepoName, d: &Digest, events: &[NewEvent]) -> Result<bool> {
        self.write("unlinking a blob", || async move {
            let mut tx = self.pool.begin().await?;
            let gone: Option<i64> = sqlx::query_scalar(
                "DELETE FROM repository_blobs WHERE digest = $2
                 AND repository_id = (SELECT id FROM repositories WHERE name = $1)
                 RETURNING repository_id",
            )
            .bind(repo.as_str())
            .bind(d.as_str())
            .fetch_optional(&mut *tx)
            .await?;
            let Some(repo_id) = gone else {
                return Ok(false);
            };
            let n = super::postgres_policy::blob_size(&mut tx, d).await?;
            super::postgres_policy::release(&mut tx, repo.as_str(), d, n).await?;
            drop_if_empty(&mut tx, repo_id).await?;
            insert_events(&mut tx, events).await?;
            tx.commit().await?;
            Ok(true)
        })
        .await
    }

    async fn linked_digests(&self, repo: &RepoName) -> Result<Vec<Digest>> {
        self.read(async {
            let rows: Vec<String> = sqlx::query_scalar(
                "SELECT rb.digest FROM repositories r
                 JOIN repository_blobs rb ON rb.repository_id = r.id
                 WHERE r.name = $1 ORDER BY rb.digest",
            )
            .bind(repo.as_str())
            .fetch_all(&self.pool)
            .await?;
            rows.into_iter().map(digest).collect()
        })
        .await
    }

    async fn clear_repository(
        &self,
        repo: &RepoName,
        links: Option<&[Digest]>,
        events: &[NewEvent],
    ) -> Result<RepositoryClearing> {
        self.write("clearing a repository", || async move {
            let mut tx = self.pool.begin().await?;
            // FOR UPDATE: writers adding to the repository hold it FOR KEY SHARE, so what
            // is read below stays so until the commit.
            let Some(repo_id) = sqlx::query_scalar::<_, i64>(
                "SELECT id FROM repositories WHERE name = $1 FOR UPDATE",
            )
            .bind(repo.as_str())
            .fetch_optional(&mut *tx)
            .await?
            else {
                return Ok(RepositoryClearing::Cleared(0));
            };
            let has_manifests: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM manifests WHERE repository_id = $1)",
            )
            .bind(repo_id)
            .fetch_one(&mut *tx)
            .await?;
            if has_manifests {
                return Ok(RepositoryClearing::HasManifests);
            }
            if let Some(expected) = links {
                let found: Vec<String> = sqlx::query_scalar(
                    "SELECT digest FROM repository_blobs WHERE repository_id = $1 ORDER BY digest",
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
            let gone = sqlx::query("DELETE FROM repository_blobs WHERE repository_id = $1")
                .bind(repo_id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            super::postgres_policy::recount(&mut tx, repo.as_str()).await?;
            drop_if_empty(&mut tx, repo_id).await?;
            insert_events(&mut tx, events).await?;
            tx.commit().await?;
            Ok(RepositoryClearing::Cleared(gone))
        })
        .await
    }

    async fn linked_blobs(&self, repo: &RepoName, digests: &[Digest]) -> Result<Vec<Option<u64>>> {
        self.read(async {
            let list: Vec<&str> = digests.iter().map(Digest::as_str).collect();
            let rows: Vec<(String, i64)> = sqlx::query_as(
                "SELECT rb.digest, b.size FROM repositories r
                 JOIN repository_blobs rb ON rb.repository_id = r.id
                 JOIN blobs b ON b.digest = rb.digest
                 WHERE r.name = $1 AND rb.digest = ANY($2)",
            )
            .bind(repo.as_str())
            .bind(&list)
            .fetch_all(&self.pool)
            .await?;
            let found: std::collections::HashMap<String, i64> = rows.into_iter().collect();
            Ok(digests
                .iter()
                .map(|d| found.get(d.as_str()).copied().map(size))
                .collect())
        })
        .await
    }

    async fn repository_exists(&self, repo: &RepoName) -> Result<bool> {
        self.read(async {
            Ok(
                sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM repositories WHERE name = $1)")
                    .bind(repo.as_str())
                    .fetch_one(&self.pool)
                    .await?,
            )
        })
        .await
    }

    async fn list_repositories(
        &self,
        last: Option<&str>,
        limit: u32,
        within: Option<&[String]>,
    ) -> Result<Vec<String>> {
        self.read(async {
            let Some(projects) = within else {
                return Ok(sqlx::query_scalar(
                    "SELECT name FROM repositories WHERE name > $1 ORDER BY name LIMIT $2",
                )
                .bind(last.unwrap_or(""))
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?);
            };
            // As on SQLite: each project's repositories are one range of the name index
            // (`project_range`), read in the order of their prefixes.
            let mut ranges: Vec<(String, String)> = projects
                .iter()
                .filter(|p| !p.contains('/'))
                .map(|p| project_range(p))
                .collect();
            ranges.sort_unstable();
            ranges.dedup();
            let mut conn = self.pool.acquire().await?;
            let mut out = Vec::new();
            for (lo, hi) in ranges {
                let want = (limit as usize).saturating_sub(out.len());
                if want == 0 {
                    break;
                }
                if last.is_some_and(|last| hi.as_str() <= last) {
                    continue;
                }
                let rows: Vec<String> = sqlx::query_scalar(REPOSITORIES_IN_RANGE)
                    .bind(&lo)
                    .bind(&hi)
                    .bind(last.unwrap_or(""))
                    .bind(i64::try_from(want).unwrap_or(i64::MAX))
                    .fetch_all(&mut *conn)
                    .await?;
                out.extend(rows);
            }
            Ok(out)
        })
        .await
    }
}

/// The repositories of one [`project_range`] (`$1`, `$2`) after `$3`, at most `$4`.
pub(super) const REPOSITORIES_IN_RANGE: &str =
    "SELECT name FROM repositories WHERE name >= $1 AND name < $2 AND name > $3
     ORDER BY name LIMIT $4";

/// `items` without repeats, in first-seen order.
fn distinct<'a>(items: impl Iterator<Item = &'a Digest>) -> Vec<&'a str> {
    let mut seen = HashSet::new();
    items
        .map(Digest::as_str)
        .filter(|d| seen.insert(*d))
        .collect()
}

impl PgMeta {
    async fn put_manifest_once(
        &self,
        repo: &RepoName,
        m: &NewManifest,
        tags: &[Tag],
        guarded: &[Tag],
        events: &[NewEvent],
    ) -> Result<()> {
        let t = now();
        let mut tx = self.pool.begin().await?;
        let repo_id = hold_repository(&mut tx, repo.as_str(), t).await?;
        // FOR SHARE: a collection that forgets one of these blobs, or deletes one of these
        // manifests, locks the same rows FOR UPDATE and checks for references after it
        // has them, so it either waits for this commit (and then sees the references) or
        // commits first (and these rows are gone: the manifest is refused).
        let mut missing = Vec::new();
        if !m.required_blobs.is_empty() {
            let found: HashSet<String> = sqlx::query_scalar(
                "SELECT digest FROM repository_blobs
                 WHERE repository_id = $1 AND digest = ANY($2)
                 ORDER BY digest FOR SHARE",
            )
            .bind(repo_id)
            .bind(distinct(m.required_blobs.iter()))
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .collect();
            missing.extend(
                m.required_blobs
                    .iter()
                    .filter(|d| !found.contains(d.as_str()))
                    .cloned(),
            );
        }
        if !m.required_manifests.is_empty() {
            let found: HashSet<String> = sqlx::query_scalar(
                "SELECT digest FROM manifests WHERE repository_id = $1 AND digest = ANY($2)
                 ORDER BY digest FOR SHARE",
            )
            .bind(repo_id)
            .bind(distinct(m.required_manifests.iter()))
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .collect();
            missing.extend(
                m.required_manifests
                    .iter()
                    .filter(|d| !found.contains(d.as_str()))
                    .cloned(),
            );
        }
        if !missing.is_empty() {
            return Err(MetaError::MissingReferences(missing));
        }
        // The manifest's own row, inserted or locked FOR SHARE: a concurrent untagged
        // delete (or manifest delete) then waits for the tags written below, and one
        // that committed first is seen as the row being gone (insert it again).
        let mut inserted = None;
        for _ in 0..WRITE_ATTEMPTS {
            let n = sqlx::query(
                "INSERT INTO manifests (repository_id, digest, media_type, size, content, subject, artifact_type, annotations, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                 ON CONFLICT (repository_id, digest) DO NOTHING",
            )
            .bind(repo_id)
            .bind(m.digest.as_str())
            .bind(&m.media_type)
            .bind(i64::try_from(m.content.len()).unwrap_or(i64::MAX))
            .bind(&m.content)
            .bind(m.subject.as_ref().map(|s| s.as_str()))
            .bind(m.artifact_type.as_deref())
            .bind(m.annotations.as_deref())
            .bind(t)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if n > 0 {
                inserted = Some(true);
                break;
            }
            let held = sqlx::query(
                "SELECT 1 FROM manifests WHERE repository_id = $1 AND digest = $2 FOR SHARE",
            )
            .bind(repo_id)
            .bind(m.digest.as_str())
            .fetch_optional(&mut *tx)
            .await?;
            if held.is_some() {
                inserted = Some(false);
                break;
            }
        }
        let Some(inserted) = inserted else {
            return Err(MetaError::Busy(format!(
                "manifest {repo}@{} was deleted by concurrent writers {WRITE_ATTEMPTS} times while it was being stored; try again",
                m.digest
            )));
        };
        if inserted && !m.references.is_empty() {
            // A digest listed twice keeps its first position.
            let mut seen = HashSet::new();
            let (mut children, mut kinds, mut positions) = (Vec::new(), Vec::new(), Vec::new());
            for (position, (child, is_manifest)) in m.references.iter().enumerate() {
                if seen.insert(child.as_str()) {
                    children.push(child.as_str());
                    kinds.push(*is_manifest);
                    positions.push(i64::try_from(position).unwrap_or(i64::MAX));
                }
            }
            sqlx::query(
                "INSERT INTO manifest_references (repository_id, manifest_digest, child_digest, child_is_manifest, position)
                 SELECT $1, $2, c, k, p FROM unnest($3::text[], $4::boolean[], $5::bigint[]) AS x(c, k, p)
                 ON CONFLICT DO NOTHING",
            )
            .bind(repo_id)
            .bind(m.digest.as_str())
            .bind(&children)
            .bind(&kinds)
            .bind(&positions)
            .execute(&mut *tx)
            .await?;
        }
        for tag in tags {
            // A guarded tag is written only where it is new or already at this digest;
            // no row written means it points elsewhere: the transaction is dropped. Of
            // two pushes at once, the second waits on the first's row and then sees it.
            let written = sqlx::query(if guarded.contains(tag) {
                "INSERT INTO tags (repository_id, name, digest, updated_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (repository_id, name) DO UPDATE SET digest = excluded.digest, updated_at = excluded.updated_at
                 WHERE tags.digest = excluded.digest"
            } else {
                "INSERT INTO tags (repository_id, name, digest, updated_at) VALUES ($1, $2, $3, $4)
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

    async fn delete_manifest_once(
        &self,
        repo: &RepoName,
        d: &Digest,
        tags: Option<&[Tag]>,
        events: &[NewEvent],
        keep_referenced: bool,
    ) -> Result<ManifestDeletion> {
        let mut tx = self.pool.begin().await?;
        let Some(repo_id) =
            sqlx::query_scalar::<_, i64>("SELECT id FROM repositories WHERE name = $1")
                .bind(repo.as_str())
                .fetch_optional(&mut *tx)
                .await?
        else {
            return Ok(ManifestDeletion::NotFound);
        };
        // Deleting the row locks it: a push of the same manifest (which holds it
        // FOR SHARE before it writes tags) waits, so no tag can point at it anew.
        let gone = sqlx::query("DELETE FROM manifests WHERE repository_id = $1 AND digest = $2")
            .bind(repo_id)
            .bind(d.as_str())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if gone == 0 {
            return Ok(ManifestDeletion::NotFound);
        }
        // FOR UPDATE: a tag moved to another manifest meanwhile is waited for and then
        // not listed; the tags deleted below are exactly these.
        let found: Vec<String> = sqlx::query_scalar(
            "SELECT name FROM tags WHERE repository_id = $1 AND digest = $2 ORDER BY name FOR UPDATE",
        )
        .bind(repo_id)
        .bind(d.as_str())
        .fetch_all(&mut *tx)
        .await?;
        if let Some(expected) = tags {
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
            // After the delete locked the row: an index listing it committed before is
            // seen here; one committing after finds its child gone.
            let listed: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM manifest_references
                  WHERE repository_id = $1 AND child_digest = $2 AND child_is_manifest)",
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
        sqlx::query("DELETE FROM tags WHERE repository_id = $1 AND name = ANY($2)")
            .bind(repo_id)
            .bind(&found)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "DELETE FROM manifest_references WHERE repository_id = $1 AND manifest_digest = $2",
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

    /// Delete `tag` (only if it points at `at`, when given) and append `events`, in one
    /// transaction. A tag never holds its repository alone (its manifest is there).
    async fn remove_tag(
        &self,
        repo: &RepoName,
        tag: &Tag,
        at: Option<&Digest>,
        events: &[NewEvent],
    ) -> Result<bool> {
        self.write("deleting a tag", || async move {
            let mut tx = self.pool.begin().await?;
            let gone = sqlx::query(
                "DELETE FROM tags WHERE name = $2
                 AND repository_id = (SELECT id FROM repositories WHERE name = $1)
                 AND ($3::text IS NULL OR digest = $3)",
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
        })
        .await
    }
}

#[async_trait::async_trait]
impl Manifests for PgMeta {
    async fn put_manifest_guarded(
        &self,
        repo: &RepoName,
        m: &NewManifest,
        tags: &[Tag],
        guarded: &[Tag],
        events: &[NewEvent],
    ) -> Result<()> {
        self.write("storing a manifest", || {
            self.put_manifest_once(repo, m, tags, guarded, events)
        })
        .await
    }

    async fn get_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<Option<StoredManifest>> {
        self.read(async {
            let row = match reference {
                Reference::Tag(tag) => {
                    sqlx::query(
                        "SELECT m.digest, m.media_type, m.content FROM repositories r
                         JOIN tags t ON t.repository_id = r.id
                         JOIN manifests m ON m.repository_id = r.id AND m.digest = t.digest
                         WHERE r.name = $1 AND t.name = $2",
                    )
                    .bind(repo.as_str())
                    .bind(tag.as_str())
                    .fetch_optional(&self.pool)
                    .await?
                }
                Reference::Digest(d) => {
                    sqlx::query(
                        "SELECT m.digest, m.media_type, m.content FROM repositories r
                         JOIN manifests m ON m.repository_id = r.id
                         WHERE r.name = $1 AND m.digest = $2",
                    )
                    .bind(repo.as_str())
                    .bind(d.as_str())
                    .fetch_optional(&self.pool)
                    .await?
                }
            };
            row.map(|r| {
                Ok(StoredManifest {
                    digest: digest(r.try_get(0)?)?,
                    media_type: r.try_get(1)?,
                    content: r.try_get(2)?,
                })
            })
            .transpose()
        })
        .await
    }

    async fn manifests_exist(&self, repo: &RepoName, digests: &[Digest]) -> Result<Vec<bool>> {
        self.read(async {
            let list: Vec<&str> = digests.iter().map(Digest::as_str).collect();
            let found: HashSet<String> = sqlx::query_scalar(
                "SELECT m.digest FROM repositories r JOIN manifests m ON m.repository_id = r.id
                 WHERE r.name = $1 AND m.digest = ANY($2)",
            )
            .bind(repo.as_str())
            .bind(&list)
            .fetch_all(&self.pool)
            .await?
            .into_iter()
            .collect();
            Ok(digests.iter().map(|d| found.contains(d.as_str())).collect())
        })
        .await
    }

    async fn delete_manifest(
        &self,
        repo: &RepoName,
        d: &Digest,
        tags: Option<&[Tag]>,
        events: &[NewEvent],
    ) -> Result<ManifestDeletion> {
        self.write("deleting a manifest", || {
            self.delete_manifest_once(repo, d, tags, events, false)
        })
        .await
    }

    async fn delete_unreferenced_manifest(
        &self,
        repo: &RepoName,
        d: &Digest,
        tags: &[Tag],
        events: &[NewEvent],
    ) -> Result<ManifestDeletion> {
        self.write("deleting a manifest", || {
            self.delete_manifest_once(repo, d, Some(tags), events, true)
        })
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
        self.read(async {
            let mut tx = self.pool.begin().await?;
            let Some(repo_id) =
                sqlx::query_scalar::<_, i64>("SELECT id FROM repositories WHERE name = $1")
                    .bind(repo.as_str())
                    .fetch_optional(&mut *tx)
                    .await?
            else {
                return Ok(None);
            };
            let names: Vec<String> = sqlx::query_scalar(
                "SELECT name FROM tags WHERE repository_id = $1 AND name > $2 ORDER BY name LIMIT $3",
            )
            .bind(repo_id)
            .bind(last.unwrap_or(""))
            .bind(i64::from(limit))
            .fetch_all(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(Some(names))
        })
        .await
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
        self.read(async {
            let mut rows = sqlx::query(
                "SELECT m.digest, m.media_type, m.size, m.artifact_type, m.annotations
                 FROM repositories r JOIN manifests m ON m.repository_id = r.id
                 WHERE r.name = $1 AND m.subject = $2
                   AND ($3::text IS NULL OR m.artifact_type = $3)
                   AND m.digest > $4
                 ORDER BY m.digest LIMIT $5",
            )
            .bind(repo.as_str())
            .bind(subject.as_str())
            .bind(artifact_type)
            .bind(after.unwrap_or(""))
            .bind(i64::from(limit))
            .fetch(&self.pool);
            let mut out = Vec::new();
            let mut bytes = 0u64;
            while let Some(r) = rows.try_next().await? {
                let referrer = Referrer {
                    digest: digest(r.try_get(0)?)?,
                    media_type: r.try_get(1)?,
                    size: size(r.try_get(2)?),
                    artifact_type: r.try_get(3)?,
                    annotations: r.try_get(4)?,
                };
                bytes += referrer.listed_bytes();
                out.push(referrer);
                if bytes > max_bytes && out.len() > 1 {
                    break;
                }
            }
            Ok(out)
        })
        .await
    }
}

#[async_trait::async_trait]
impl Uploads for PgMeta {
    async fn create_upload(
        &self,
        s: &UploadSession,
        caps: SessionCaps,
    ) -> Result<std::result::Result<(), SessionCapReached>> {
        self.write("recording an upload session", || async move {
            let mut tx = self.pool.begin().await?;
            // Every node counts and inserts under the same transaction-level lock, so two
            // sessions can never both take the last place under a cap.
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(UPLOADS_LOCK)
                .execute(&mut *tx)
                .await?;
            let inserted = sqlx::query(
                "INSERT INTO uploads (id, repository, algorithm, created_at)
                 SELECT $1, $2, $3, $4
                 WHERE (SELECT COUNT(*) FROM uploads WHERE repository = $2) < $5
                   AND (SELECT COUNT(*) FROM uploads) < $6",
            )
            .bind(&s.id)
            .bind(s.repository.as_str())
            .bind(s.algorithm.as_str())
            .bind(s.created_at)
            .bind(i64::try_from(caps.per_repository).unwrap_or(i64::MAX))
            .bind(i64::try_from(caps.total).unwrap_or(i64::MAX))
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if inserted == 1 {
                tx.commit().await?;
                return Ok(Ok(()));
            }
            let in_repository: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM uploads WHERE repository = $1")
                    .bind(s.repository.as_str())
                    .fetch_one(&mut *tx)
                    .await?;
            tx.commit().await?;
            Ok(Err(if size(in_repository) >= caps.per_repository {
                SessionCapReached::Repository(caps.per_repository)
            } else {
                SessionCapReached::Total(caps.total)
            }))
        })
        .await
    }

    async fn get_upload(&self, id: &str) -> Result<Option<UploadSession>> {
        self.read(async {
            let row = sqlx::query(
                "SELECT id, repository, algorithm, created_at FROM uploads WHERE id = $1",
            )
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
            row.as_ref().map(upload_session).transpose()
        })
        .await
    }

    async fn delete_upload(&self, id: &str) -> Result<()> {
        self.read(async {
            sqlx::query("DELETE FROM uploads WHERE id = $1")
                .bind(id)
                .execute(&self.pool)
                .await?;
            Ok(())
        })
        .await
    }

    async fn complete_upload(&self, s: &UploadSession, digest: &Digest, size: u64) -> Result<()> {
        let at = now();
        let size = i64::try_from(size).unwrap_or(i64::MAX);
        self.write("complete an upload", || async {
            let mut tx = self.pool.begin().await?;
            sqlx::query("DELETE FROM uploads WHERE id = $1")
                .bind(&s.id)
                .execute(&mut *tx)
                .await?;
            if super::prune_completed_now() {
                sqlx::query("DELETE FROM completed_uploads WHERE completed_at < $1")
                    .bind(at - COMPLETED_UPLOAD_SECS)
                    .execute(&mut *tx)
                    .await?;
            }
            sqlx::query(
                "INSERT INTO completed_uploads (id, repository, digest, size, completed_at)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (id) DO UPDATE SET repository = excluded.repository,
                     digest = excluded.digest, size = excluded.size,
                     completed_at = excluded.completed_at",
            )
            .bind(&s.id)
            .bind(s.repository.as_str())
            .bind(digest.as_str())
            .bind(size)
            .bind(at)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    async fn completed_upload(&self, id: &str) -> Result<Option<CompletedUpload>> {
        self.read(async {
            let row = sqlx::query(
                "SELECT repository, digest, size FROM completed_uploads
                  WHERE id = $1 AND completed_at >= $2",
            )
            .bind(id)
            .bind(now() - COMPLETED_UPLOAD_SECS)
            .fetch_optional(&self.pool)
            .await?;
            row.map(|r| completed(r.get(0), r.get(1), r.get(2)))
                .transpose()
        })
        .await
    }
}
