//! Registry metadata: repositories, blob links, manifests, tags, referrers and upload
//! sessions, and (in [`access`]) users, projects, members, robots, signing keys and the
//! audit log, and (in [`catalog`]) the catalog as a management API lists it, behind
//! small traits combined as [`MetaStore`]. Backends: [`sqlite::SqliteMeta`] (embedded
//! default) and [`postgres::PgMeta`] (a database shared by every node of a cluster), both
//! passing the same shared suite.
//!
//! This is the only module that speaks SQL. It knows nothing of HTTP or blob bytes, and
//! does not judge OCI semantics (that is `registry/`): it stores and answers.
//!
//! A repository exists while it holds something: the write that removes its last
//! manifest or blob link (a delete, an unlink, garbage collection, cache expiry) removes
//! the repository too, in the same transaction, so an emptied repository leaves the
//! catalog.

pub mod access;
pub mod catalog;
pub mod policy;
pub mod postgres;
mod postgres_access;
mod postgres_catalog;
mod postgres_events;
mod postgres_gc;
mod postgres_ops;
mod postgres_policy;
mod postgres_proxy;
mod postgres_registries;
mod postgres_retention;
#[cfg(test)]
pub(crate) mod postgres_test;
mod postgres_transfer;
pub mod registries;
pub mod sqlite;
mod sqlite_access;
mod sqlite_catalog;
mod sqlite_events;
mod sqlite_gc;
mod sqlite_ops;
#[cfg(test)]
mod sqlite_plan;
mod sqlite_policy;
mod sqlite_proxy;
mod sqlite_registries;
mod sqlite_retention;
mod sqlite_transfer;
#[cfg(test)]
mod testsuite;
#[cfg(test)]
mod testsuite_access;
#[cfg(test)]
mod testsuite_catalog;
pub mod transfer;

pub use access::*;
pub use catalog::*;
pub use policy::*;
pub use registries::*;

use oci::{Algorithm, Digest, Reference, RepoName, Tag};

#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("metadata database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("metadata migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("metadata holds an invalid value: {0}")]
    Corrupt(String),
    /// A manifest's content disappeared before it could be written (a concurrent delete
    /// or garbage collection): nothing was written.
    #[error("referenced content is no longer in the repository")]
    MissingReferences(Vec<Digest>),
    /// Another writer held the database for longer than every attempt waited (or kept
    /// changing what the write depended on).
    #[error("{0}")]
    Busy(String),
    /// The database server cannot be reached (refused, gone, no free connection in time,
    /// or the pool closed): the message names the server and what to check.
    #[error("{0}")]
    Unavailable(String),
    /// A garbage collection is removing this blob's file (it holds the digest's
    /// [`collecting_claim`]): nothing was written; link again once the claim is gone.
    #[error("garbage collection is removing blob {0}; link it again when it is done")]
    Collecting(Digest),
    /// A guarded tag ([`Manifests::put_manifest_guarded`]) points at another manifest:
    /// nothing was written.
    #[error("tag {0} is immutable and points at another manifest")]
    ImmutableTag(Tag),
    /// Linking a blob new to the project would take its usage past its quota: nothing
    /// was written.
    #[error("storage quota exceeded: project {project} uses {used} of its {hard} bytes and this blob needs {size} more; delete images and let garbage collection free their blobs, or ask an administrator to raise the quota")]
    QuotaExceeded {
        project: String,
        hard: u64,
        used: u64,
        size: u64,
    },
}

impl MetaError {
    /// The database cannot be reached (refused, gone, no free connection in time): worth
    /// a retry later, on this node or another.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            MetaError::Unavailable(_)
                | MetaError::Database(
                    sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed
                )
        )
    }

    /// The database's disk is full (SQLITE_FULL, PostgreSQL's disk_full 53100, ENOSPC).
    pub fn is_out_of_space(&self) -> bool {
        match self {
            MetaError::Database(sqlx::Error::Database(db)) => {
                matches!(db.code().as_deref(), Some("13" | "53100"))
            }
            MetaError::Database(sqlx::Error::Io(e)) => matches!(
                e.kind(),
                std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
            ),
            _ => false,
        }
    }
}

pub type Result<T, E = MetaError> = std::result::Result<T, E>;

/// What [`Manifests::delete_manifest`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManifestDeletion {
    /// Deleted with its tags; the events were appended.
    Deleted,
    /// No such manifest in the repository: nothing written.
    NotFound,
    /// Other tags point at the manifest than the caller named (a tag was pushed or
    /// deleted meanwhile): nothing written. These are the tags now, in byte order.
    TagsChanged(Vec<Tag>),
    /// Another manifest of the repository lists it (an index pushed meanwhile), and the
    /// caller asked to keep such ones ([`Manifests::delete_unreferenced_manifest`]):
    /// nothing written.
    Referenced,
}

/// What [`Repositories::clear_repository`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RepositoryClearing {
    /// Its blob links (this many) and the repository itself are gone; the events were
    /// appended. An unknown repository is cleared with 0.
    Cleared(u64),
    /// It holds manifests (pushed meanwhile): nothing written.
    HasManifests,
    /// Other blobs are linked than the caller named: nothing written. These are the
    /// linked digests now, in byte order.
    LinksChanged(Vec<Digest>),
}

/// A manifest to store.
#[derive(Debug, Clone)]
pub struct NewManifest {
    pub digest: Digest,
    pub media_type: String,
    pub content: Vec<u8>,
    pub subject: Option<Digest>,
    /// The artifact type the referrers API reports.
    pub artifact_type: Option<String>,
    /// Annotations as a JSON object, for the referrers API.
    pub annotations: Option<String>,
    /// Blobs (false) and child manifests (true) it references.
    pub references: Vec<(Digest, bool)>,
    /// Blobs that must still be linked into the repository, and manifests that must still
    /// be in it, when the manifest is written: checked inside the write transaction, so a
    /// concurrent delete or garbage collection cannot leave it pointing at nothing.
    pub required_blobs: Vec<Digest>,
    pub required_manifests: Vec<Digest>,
}

/// A stored manifest.
#[derive(Debug, Clone)]
pub struct StoredManifest {
    pub digest: Digest,
    pub media_type: String,
    pub content: Vec<u8>,
}

/// One entry of a referrers listing.
#[derive(Debug, Clone, PartialEq)]
pub struct Referrer {
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
    pub artifact_type: Option<String>,
    pub annotations: Option<String>,
}

impl Referrer {
    /// About how many bytes this entry takes in a referrers listing.
    pub fn listed_bytes(&self) -> u64 {
        let text = self.digest.as_str().len()
            + self.media_type.len()
            + self.artifact_type.as_deref().map_or(0, str::len)
            + self.annotations.as_deref().map_or(0, str::len);
        text as u64 + 96
    }
}

/// An upload session.
#[derive(Debug, Clone, PartialEq)]
pub struct UploadSession {
    pub id: String,
    pub repository: RepoName,
    pub algorithm: Algorithm,
    pub created_at: i64,
}

/// A notification event to append to the outbox in the same transaction as the change it
/// describes, for one endpoint. Writes take a slice of these, empty when no endpoint wants
/// the event (then nothing extra is done).
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub endpoint: String,
    /// The event, as JSON.
    pub payload: String,
}

/// What metadata records of a committed blob: its size, and where its bytes are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobRecord {
    pub size: u64,
    /// The blob store key its bytes were written to, or `None` for the digest's own
    /// path (every blob committed by digest; see migration 0016).
    pub key: Option<String>,
}

/// Repositories and the blobs linked into them.
#[async_trait::async_trait]
pub trait Repositories: Send + Sync {
    /// Record a blob committed at its digest's own path and link it into `repo`
    /// (creating the repository), and append `events`, in one transaction: [`Self::link_blob_at`]
    /// with no key. A key already recorded for the digest stays (readers use it).
    async fn link_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        size: u64,
        events: &[NewEvent],
    ) -> Result<()> {
        self.link_blob_at(repo, digest, size, None, events)
            .await
            .map(drop)
    }
    /// Record a committed blob whose bytes are at `key` in the blob store (`None`: at the
    /// digest's own path) and link it into `repo` (creating the repository), and append
    /// `events`, in one transaction. The first key recorded for a digest wins, `None`
    /// included: if the digest already has a row, its key is kept (and its creation time
    /// refreshed), so the caller's copy is surplus. Returns the key the row holds after
    /// the call, which the caller compares with its own. Refused with
    /// [`MetaError::Collecting`] while a garbage collection holds the digest's
    /// [`collecting_claim`] (it is removing the file).
    async fn link_blob_at(
        &self,
        repo: &RepoName,
        digest: &Digest,
        size: u64,
        key: Option<&str>,
        events: &[NewEvent],
    ) -> Result<Option<String>>;
    /// Link a blob metadata already records into `repo` (a cross-repository mount) and
    /// append `events`, in one transaction. With `from`, the blob must be linked there.
    /// Never records a blob: its record if linked, `None` (nothing written) when the blob
    /// is unknown — garbage collection may have forgotten it, and its file may be going.
    async fn mount_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        from: Option<&RepoName>,
        events: &[NewEvent],
    ) -> Result<Option<BlobRecord>>;
    /// The record of `digest` if it is linked into `repo`.
    async fn linked_blob(&self, repo: &RepoName, digest: &Digest) -> Result<Option<BlobRecord>>;
    /// The record of `digest` if any repository has it.
    async fn known_blob(&self, digest: &Digest) -> Result<Option<BlobRecord>>;
    /// Remove the link and append `events`, in one transaction; `false` (nothing written)
    /// if there was no link.
    async fn unlink_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        events: &[NewEvent],
    ) -> Result<bool>;
    /// Every digest linked into `repo`, in byte order.
    async fn linked_digests(&self, repo: &RepoName) -> Result<Vec<Digest>>;
    /// Remove every blob link of `repo` and the repository, and append `events`, in one
    /// transaction, only if `repo` holds no manifest. With `links` (the digests the caller
    /// built `events` from), the transaction first checks that exactly those are linked;
    /// if not, nothing is written and the links found are returned
    /// ([`RepositoryClearing::LinksChanged`]) for the caller to try again.
    async fn clear_repository(
        &self,
        repo: &RepoName,
        links: Option<&[Digest]>,
        events: &[NewEvent],
    ) -> Result<RepositoryClearing>;
    /// For each digest, its size if linked into `repo`.
    async fn linked_blobs(&self, repo: &RepoName, digests: &[Digest]) -> Result<Vec<Option<u64>>>;
    async fn repository_exists(&self, repo: &RepoName) -> Result<bool>;
    /// Repository names after `last`, in byte order, at most `limit`. With `within`, only
    /// those in one of these projects (whose name is `<project>/...`; a name without `/`
    /// is in no project): `Some(&[])` lists nothing. Filtered in the query, so a page is
    /// as full as without it.
    async fn list_repositories(
        &self,
        last: Option<&str>,
        limit: u32,
        within: Option<&[String]>,
    ) -> Result<Vec<String>>;
}

/// Manifests, tags and referrers.
#[async_trait::async_trait]
pub trait Manifests: Send + Sync {
    /// Store a manifest (idempotent for the same digest), point `tags` at it and append
    /// `events` to the outbox, in one transaction. Refused (nothing written, no event)
    /// when required content is missing.
    async fn put_manifest(
        &self,
        repo: &RepoName,
        m: &NewManifest,
        tags: &[Tag],
        events: &[NewEvent],
    ) -> Result<()> {
        self.put_manifest_guarded(repo, m, tags, &[], events).await
    }
    /// [`Manifests::put_manifest`], where each of `tags` also in `guarded` (immutable
    /// tags) may be created or pointed again at the same manifest, but not moved: if one
    /// points at another manifest when the transaction writes it, nothing is written
    /// and [`MetaError::ImmutableTag`] names it. Checked by the write itself, so of two
    /// pushes of one guarded tag at once exactly one wins.
    async fn put_manifest_guarded(
        &self,
        repo: &RepoName,
        m: &NewManifest,
        tags: &[Tag],
        guarded: &[Tag],
        events: &[NewEvent],
    ) -> Result<()>;
    async fn get_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<Option<StoredManifest>>;
    /// For each digest, whether it is a manifest in `repo`.
    async fn manifests_exist(&self, repo: &RepoName, digests: &[Digest]) -> Result<Vec<bool>>;
    /// Delete a manifest and every tag pointing at it, and append `events`, in one
    /// transaction. With `tags` (the tags the caller built `events` from), the transaction
    /// first checks that exactly those tags point at the manifest, so the events name
    /// the tags really deleted; if not, nothing is written and the tags found are
    /// returned ([`ManifestDeletion::TagsChanged`]) for the caller to try again.
    async fn delete_manifest(
        &self,
        repo: &RepoName,
        digest: &Digest,
        tags: Option<&[Tag]>,
        events: &[NewEvent],
    ) -> Result<ManifestDeletion>;
    /// [`Manifests::delete_manifest`] with exactly `tags`, and only if no manifest of the
    /// repository lists it (checked in the same transaction, after the delete has locked
    /// the row: an index pushed at the same time either committed first and is seen, or
    /// finds its child gone and fails): tag retention's delete.
    async fn delete_unreferenced_manifest(
        &self,
        repo: &RepoName,
        digest: &Digest,
        tags: &[Tag],
        events: &[NewEvent],
    ) -> Result<ManifestDeletion>;
    /// Delete one tag and append `events`, in one transaction; `false` (nothing written)
    /// if absent.
    async fn delete_tag(&self, repo: &RepoName, tag: &Tag, events: &[NewEvent]) -> Result<bool>;
    /// [`Manifests::delete_tag`] only if the tag points at `digest` (checked in the same
    /// transaction); `false` (nothing written) otherwise.
    async fn delete_tag_at(
        &self,
        repo: &RepoName,
        tag: &Tag,
        digest: &Digest,
        events: &[NewEvent],
    ) -> Result<bool>;
    /// Tags after `last` in byte order, at most `limit`; `None` if the repository is unknown.
    async fn list_tags(
        &self,
        repo: &RepoName,
        last: Option<&str>,
        limit: u32,
    ) -> Result<Option<Vec<String>>>;
    /// Manifests in `repo` whose subject is `subject`, optionally of one artifact type,
    /// in digest order after `after`: at most `limit`, stopping after the first entry
    /// (other than the first one) at which the running total of
    /// [`Referrer::listed_bytes`] exceeds `max_bytes`, so that large annotations stay
    /// bounded in memory and the caller still sees whether more follow its page.
    async fn referrers(
        &self,
        repo: &RepoName,
        subject: &Digest,
        artifact_type: Option<&str>,
        after: Option<&str>,
        limit: u32,
        max_bytes: u64,
    ) -> Result<Vec<Referrer>>;
}

/// Most open upload sessions allowed (`limits.uploadsessions`,
/// `limits.repositoryuploadsessions`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionCaps {
    pub total: u64,
    pub per_repository: u64,
}

impl Default for SessionCaps {
    fn default() -> Self {
        SessionCaps {
            total: 10_000,
            per_repository: 1_000,
        }
    }
}

/// Which cap kept a new upload session from being recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionCapReached {
    /// The repository already has this many open sessions.
    Repository(u64),
    /// The registry already has this many open sessions.
    Total(u64),
}

/// Upload sessions.
#[async_trait::async_trait]
pub trait Uploads: Send + Sync {
    /// Record a new session unless `caps` are reached (checked and inserted atomically).
    async fn create_upload(
        &self,
        session: &UploadSession,
        caps: SessionCaps,
    ) -> Result<std::result::Result<(), SessionCapReached>>;
    async fn get_upload(&self, id: &str) -> Result<Option<UploadSession>>;
    async fn delete_upload(&self, id: &str) -> Result<()>;
    /// The session's blob `digest` (`size` bytes) is committed and linked: remove the
    /// session and remember its completion for [`COMPLETED_UPLOAD_SECS`], so a PUT
    /// repeated after its answer was lost gets the same answer (older completions are
    /// dropped in the same transaction).
    async fn complete_upload(&self, s: &UploadSession, digest: &Digest, size: u64) -> Result<()>;
    /// A session completed within the last [`COMPLETED_UPLOAD_SECS`].
    async fn completed_upload(&self, id: &str) -> Result<Option<CompletedUpload>>;
}

/// How long a completed upload session is remembered (a repeated PUT within this gets
/// the same 201).
pub const COMPLETED_UPLOAD_SECS: i64 = 600;

/// Whether this completion also removes expired completion records: one in 64 (the
/// first one included), so a push pays for a range delete rarely while the table stays
/// bounded by ten minutes' completions plus 64; lookups ignore expired rows anyway.
fn prune_completed_now() -> bool {
    static COMPLETIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    COMPLETIONS
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        .is_multiple_of(64)
}

/// An upload session that completed ([`Uploads::completed_upload`]).
#[derive(Debug, Clone, PartialEq)]
pub struct CompletedUpload {
    pub repository: RepoName,
    pub digest: Digest,
    pub size: u64,
}

/// A notification waiting in the outbox for one endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxEntry {
    /// Position in the outbox: delivery order within an endpoint.
    pub seq: i64,
    pub endpoint: String,
    /// The event, as JSON.
    pub payload: String,
    /// Delivery attempts so far (counting the claim that returned this entry).
    pub attempts: i64,
}

/// Most outbox entries one [`Outbox::trim`] call drops of each kind (expired, over cap).
pub const TRIM_BATCH: i64 = 10_000;

/// The durable outbox of notification events (see `migrations/sqlite/0002_events.sql`).
#[async_trait::async_trait]
pub trait Outbox: Send + Sync {
    /// Append `events` in one transaction, in the order given (events that describe no
    /// change, such as a batch of pulls; a change's events go with its own write).
    async fn enqueue(&self, events: &[NewEvent]) -> Result<()>;
    /// Claim the oldest pending entry of `endpoint` for `lease_secs` on behalf of `owner`.
    /// `None` when the endpoint has nothing pending, or when its oldest entry is leased by
    /// someone else (so entries of one endpoint are delivered in order).
    async fn claim(
        &self,
        endpoint: &str,
        owner: &str,
        lease_secs: i64,
    ) -> Result<Option<OutboxEntry>>;
    /// The entry was delivered: remove it.
    async fn complete(&self, seq: i64, owner: &str) -> Result<()>;
    /// Give a claimed entry back (shutdown), so it can be claimed again at once.
    async fn release(&self, seq: i64, owner: &str) -> Result<()>;
    /// How many entries `endpoint` has pending.
    async fn pending(&self, endpoint: &str) -> Result<u64>;
    /// Bound `endpoint`'s backlog: drop its oldest entries created before `created_before`
    /// (seconds since the epoch), then its oldest entries beyond the newest `keep`. An
    /// entry leased for delivery (`claim`, lease not expired) is never dropped, but counts
    /// towards `keep`. At most [`TRIM_BATCH`] entries go per call of each kind, so that
    /// one call never holds the write lock long (a large backlog takes several calls).
    /// Meant to run now and then, not on every insert.
    async fn trim(&self, endpoint: &str, keep: u64, created_before: Option<i64>)
        -> Result<Trimmed>;
}

/// What [`Outbox::trim`] dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Trimmed {
    /// Entries beyond the count cap.
    pub over_cap: u64,
    /// Entries older than the age cap.
    pub expired: u64,
}

/// Questions asked by notifications and maintenance jobs (upload purging).
#[async_trait::async_trait]
pub trait Maintenance: Send + Sync {
    /// A deployment-wide setting (`settings`, migration 0017), if set.
    async fn setting(&self, name: &str) -> Result<Option<String>>;
    /// Upload sessions created before `before` (seconds since the epoch), oldest first,
    /// at most `limit`.
    async fn uploads_created_before(&self, before: i64, limit: u32) -> Result<Vec<UploadSession>>;
    /// The tags in `repo` pointing at `digest`, in byte order.
    async fn tags_of(&self, repo: &RepoName, digest: &Digest) -> Result<Vec<Tag>>;
    /// Claim the background job `name` for `owner` for `lease` from now, by the
    /// database's clock: taken when nobody holds it or its holder's lease ran out,
    /// renewed when `owner` holds it already. `Err` names the current holder. One
    /// statement, so two nodes claiming at once cannot both win.
    async fn claim_job(
        &self,
        name: &str,
        owner: &str,
        lease: std::time::Duration,
    ) -> Result<std::result::Result<(), JobHolder>>;
    /// Give up `owner`'s claim of `name` (nothing if someone else holds it).
    async fn release_job(&self, name: &str, owner: &str) -> Result<()>;
    /// Renew, for `lease` from now, those of `names` that `owner` holds and whose lease
    /// has not run out, in one statement; the number renewed. Unlike
    /// [`Maintenance::claim_job`], a claim that ran out stays lost: whoever relies on it
    /// (a garbage collection removing files) learns that others may have gone ahead.
    async fn renew_jobs(
        &self,
        names: &[String],
        owner: &str,
        lease: std::time::Duration,
    ) -> Result<u64>;
    /// Give up `owner`'s claims among `names`, in one statement.
    async fn release_jobs(&self, names: &[String], owner: &str) -> Result<()>;
}

/// Who holds a background job's claim ([`Maintenance::claim_job`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobHolder {
    pub owner: String,
    /// Seconds since the epoch (the database's clock), when the holder first claimed it.
    pub claimed_at: i64,
    /// Seconds since the epoch when the claim runs out unless renewed.
    pub lease_until: i64,
    /// The database's clock now.
    pub now: i64,
}

/// What is stored, counted cheaply (for metrics).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    pub repositories: u64,
    pub manifests: u64,
    /// Distinct blobs known to metadata and their total size.
    pub blobs: u64,
    pub blob_bytes: u64,
    pub uploads: u64,
}

/// A manifest as garbage collection sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct GcManifest {
    pub digest: Digest,
    /// Some tag of the repository points at it.
    pub tagged: bool,
    pub subject: Option<Digest>,
    /// Seconds since the epoch when it was stored.
    pub created_at: i64,
    /// Blobs (false) and child manifests (true) it references.
    pub references: Vec<(Digest, bool)>,
}

/// Settings a database created by this release starts with (table `settings`,
/// migration 0017): what every node of a new deployment can do from the start, and a
/// deployment upgraded from an older release (whose nodes may still run) must not
/// assume. `blob_keys`: pushed blobs written at keys of their own (`storage.s3.blobkeys`
/// overrides it either way).
pub const FRESH_SETTINGS: &[(&str, &str)] = &[(BLOB_KEYS_SETTING, "on")];

/// The setting that turns keyed blob writes on for a deployment (`on` or `off`).
pub const BLOB_KEYS_SETTING: &str = "blob_keys";

/// A blob recorded at a key of its own (see [`BlobRecord`]), as garbage collection
/// sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyedBlob {
    pub digest: Digest,
    pub size: u64,
    pub key: String,
    /// Seconds since the epoch when it was (last) recorded.
    pub created_at: i64,
}

/// Accounting and garbage collection: whole-store queries, and deletes that re-check
/// their condition inside their transaction.
#[async_trait::async_trait]
pub trait Housekeeping: Send + Sync {
    async fn stats(&self) -> Result<Stats>;
    /// Now, in seconds since the epoch, by the clock the stored times were written with
    /// (the database server's, for a database shared by several machines): garbage
    /// collection and upload purging measure their grace periods on it.
    async fn clock(&self) -> Result<i64>;
    /// Every manifest of `repo`, in digest order.
    async fn gc_manifests(&self, repo: &RepoName) -> Result<Vec<GcManifest>>;
    /// Delete a manifest only if no tag points at it and no manifest of the repository
    /// references it (checked in the same transaction); `false` if it was kept.
    async fn gc_delete_untagged(&self, repo: &RepoName, digest: &Digest) -> Result<bool>;
    /// Forget each of `digests` (distinct) whose blob no manifest references, is
    /// recorded at its digest's own path (a blob at a key of its own is never forgotten
    /// here: a stray file at the digest's path must not take its row), and neither
    /// the blob nor any link to it is newer than `cutoff` (seconds since the epoch): its
    /// links and its `blobs` row go, and in the same transaction [`collecting_claim`] of
    /// the digest is claimed for `owner` for `lease`. Until that claim is released or
    /// runs out, [`Repositories::link_blob`] of the digest is refused with
    /// [`MetaError::Collecting`], so the caller removes the files and then releases the
    /// claims, holding no transaction across the storage calls. One transaction for the
    /// whole batch; returns the digests forgotten (the others were kept). See
    /// `registry/gc.rs`.
    async fn gc_forget_blobs(
        &self,
        digests: &[Digest],
        cutoff: i64,
        owner: &str,
        lease: std::time::Duration,
    ) -> Result<Vec<Digest>>;

    /// Blobs recorded at keys of their own, in digest order after `after`, at most
    /// `limit`: garbage collection's candidates among them (the store's listing of
    /// digest paths does not show them).
    async fn gc_keyed_blobs(&self, after: Option<&Digest>, limit: u32) -> Result<Vec<KeyedBlob>>;
    /// Forget each of `digests` (distinct) whose blob is recorded at a key of its own,
    /// no manifest references it, and neither the blob nor any link to it is newer than
    /// `cutoff`: its links and its row go (off the projects' quotas), in one transaction
    /// ordered against links and mounts of the digests as
    /// [`Housekeeping::gc_forget_blobs`] is. Returns the blobs forgotten, whose objects
    /// the caller then deletes. No claim is taken: a push of the same digest from then
    /// on records a key of its own (or the digest's path), never this one, so deleting
    /// this object cannot take a newer copy.
    async fn gc_forget_keyed(&self, digests: &[Digest], cutoff: i64) -> Result<Vec<KeyedBlob>>;

    /// [`Housekeeping::gc_forget_blobs`] of one digest; `false` if it was kept.
    async fn gc_forget_blob(
        &self,
        digest: &Digest,
        cutoff: i64,
        owner: &str,
        lease: std::time::Duration,
    ) -> Result<bool> {
        let forgotten = self
            .gc_forget_blobs(std::slice::from_ref(digest), cutoff, owner, lease)
            .await?;
        Ok(!forgotten.is_empty())
    }
}

/// The claim a garbage collection holds on a digest while it removes the blob's file
/// ([`Housekeeping::gc_forget_blob`]).
pub fn collecting_claim(digest: &Digest) -> String {
    format!("gc-blob {digest}")
}

/// One garbage collection run as recorded (Harbor's GC history).
#[derive(Debug, Clone, PartialEq)]
pub struct GcRun {
    pub id: i64,
    /// `MANUAL` (the API's "run now", or `berth garbage-collect`) or `SCHEDULE`.
    pub kind: String,
    /// The schedule's tick (seconds since the epoch) a scheduled run is for.
    pub scheduled_for: Option<i64>,
    /// The run's parameters, a JSON object.
    pub parameters: String,
    /// Who ran it (`berth garbage-collect, pid 42 on node-1`).
    pub owner: String,
    /// `Running`, `Success`, `Error` or `Stopped`.
    pub status: String,
    /// Seconds since the epoch (the database's clock).
    pub started_at: i64,
    /// When the run last reported progress, or ended.
    pub updated_at: i64,
    pub deleted_blobs: u64,
    pub deleted_manifests: u64,
    pub freed_bytes: u64,
    pub error: Option<String>,
}

/// The garbage collection schedule set through the API.
#[derive(Debug, Clone, PartialEq)]
pub struct GcSchedule {
    /// Harbor's label: `Hourly`, `Daily`, `Weekly`, `Custom`, or `None` (no schedule).
    pub kind: String,
    /// Six fields, seconds first (empty for `None`).
    pub cron: String,
    /// The parameters of the runs it starts, a JSON object.
    pub parameters: String,
    pub updated_at: i64,
}

/// The record of garbage collection runs, and the schedule set through the API.
#[async_trait::async_trait]
pub trait GcRuns: Send + Sync {
    /// Record a run starting now; `None` if a run for the same `scheduled_for` tick is
    /// already recorded (another node took that tick). Older runs beyond the most
    /// recent `keep.runs` are removed, and logs beyond the most recent `keep.logs`.
    async fn gc_run_start(
        &self,
        kind: &str,
        scheduled_for: Option<i64>,
        parameters: &str,
        owner: &str,
        keep: GcRunsKept,
    ) -> Result<Option<i64>>;
    /// Ask a running run to stop; `false` if there is no such run.
    async fn gc_run_stop(&self, id: i64) -> Result<bool>;
    /// Whether a stop was asked for the run.
    async fn gc_run_stop_requested(&self, id: i64) -> Result<bool>;
    /// The run is alive: move its `updated_at` to now.
    async fn gc_run_alive(&self, id: i64) -> Result<()>;
    /// Record the end of a run: its status, counts, error and log.
    async fn gc_run_end(&self, id: i64, end: &GcRunEnd) -> Result<()>;
    /// Runs, newest first, and how many there are in all.
    async fn gc_runs(&self, page: Page) -> Result<(Vec<GcRun>, u64)>;
    async fn gc_run(&self, id: i64) -> Result<Option<GcRun>>;
    /// A run's log (empty while it runs).
    async fn gc_run_log(&self, id: i64) -> Result<Option<String>>;
    /// The schedule set through the API, if one was.
    async fn gc_schedule(&self) -> Result<Option<GcSchedule>>;
    /// Replace the schedule (its `updated_at` is set to now).
    async fn set_gc_schedule(&self, schedule: &GcSchedule) -> Result<()>;
}

/// How much history [`GcRuns::gc_run_start`] keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcRunsKept {
    pub runs: u32,
    pub logs: u32,
}

/// How a run ended ([`GcRuns::gc_run_end`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GcRunEnd {
    pub status: String,
    pub deleted_blobs: u64,
    pub deleted_manifests: u64,
    pub freed_bytes: u64,
    pub error: Option<String>,
    pub log: String,
}

/// A cached manifest or blob link of the pull-through cache, with when it was last used.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheEntry {
    pub repository: RepoName,
    pub digest: Digest,
    pub is_manifest: bool,
    /// Seconds since the epoch.
    pub last_used: i64,
}

/// The pull-through cache's bookkeeping (`proxy.ttl`), kept with the metadata so it
/// survives restarts and is shared by every node.
#[async_trait::async_trait]
pub trait ProxyCache: Send + Sync {
    /// Record that cached content was fetched or served at `at`. Entries already used
    /// after `fresh_after` are left alone (saves a write per hit).
    async fn cache_touch(
        &self,
        repo: &RepoName,
        digest: &Digest,
        is_manifest: bool,
        at: i64,
        fresh_after: i64,
    ) -> Result<()>;
    /// Entries last used before `before`, oldest first, at most `limit`.
    async fn cache_expired(&self, before: i64, limit: u32) -> Result<Vec<CacheEntry>>;
    /// In one transaction, if `entry` is still unused since before `before`: remove it and
    /// what it stands for (a manifest with its tags, or a blob link), and the repository
    /// when nothing is left in it. `false` when it was used meanwhile (or already gone).
    async fn cache_expire(&self, entry: &CacheEntry, before: i64) -> Result<bool>;
}

/// Everything the registry needs from its metadata backend.
pub trait MetaStore:
    GcRuns
    + UpstreamRegistries
    + ImmutableRules
    + Retentions
    + Quotas
    + Repositories
    + Manifests
    + Uploads
    + Outbox
    + Maintenance
    + Housekeeping
    + ProxyCache
    + Catalog
    + Users
    + Projects
    + Members
    + Robots
    + TokenKeys
    + Audit
    + 'static
{
}
impl<
        T: GcRuns
            + UpstreamRegistries
            + ImmutableRules
            + Retentions
            + Quotas
            + Repositories
            + Manifests
            + Uploads
            + Outbox
            + Maintenance
            + Housekeeping
            + ProxyCache
            + Catalog
            + Users
            + Projects
            + Members
            + Robots
            + TokenKeys
            + Audit
            + 'static,
    > MetaStore for T
{
}

/// A stored digest, parsed.
fn digest(s: String) -> Result<Digest> {
    s.parse()
        .map_err(|e| MetaError::Corrupt(format!("digest {s:?}: {e}")))
}

/// The name range holding a project's repositories: `[<project>/, <project>0)`, '0' being
/// the byte after '/', so a range scan of the name index finds them (names compare as
/// bytes: both backends' name columns sort bytewise).
fn project_range(project: &str) -> (String, String) {
    (format!("{project}/"), format!("{project}0"))
}

/// A page as `LIMIT` and `OFFSET` values (an offset past `i64::MAX` is past every row).
fn limit_offset(page: Page) -> (i64, i64) {
    (
        i64::from(page.limit),
        i64::try_from(page.offset).unwrap_or(i64::MAX),
    )
}

/// A `COUNT(*)` as the total of a listing.
fn total(n: i64) -> Result<u64> {
    u64::try_from(n).map_err(|_| MetaError::Corrupt(format!("negative count {n}")))
}

/// A `completed_uploads` row's values as a [`CompletedUpload`].
fn completed(repository: String, d: String, size: i64) -> Result<CompletedUpload> {
    Ok(CompletedUpload {
        repository: repository
            .parse()
            .map_err(|_| MetaError::Corrupt(format!("repository name {repository:?}")))?,
        digest: digest(d)?,
        size: u64::try_from(size).map_err(|_| MetaError::Corrupt(format!("size {size}")))?,
    })
}

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
