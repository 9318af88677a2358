//! Blob uploads: sessions, chunks, monolithic pushes, cross-repository mounts, and the
//! verify-then-commit step.
//!
//! The running hash of an upload is kept in memory between chunks (one lock per upload,
//! so concurrent chunks to one session are serialized), and dropped once nobody has
//! written to the upload for a minute. When it is missing or stale — after a restart,
//! after such a pause, or when another node wrote the previous chunk — it is rebuilt
//! from the stored bytes, so any node can continue any upload.

use super::events::Action;
use super::{Registry, RegistryError, Result};
use crate::meta::{now, SessionCapReached, UploadSession};
use crate::storage::{ByteStream, StorageError, UploadProgress};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use oci::{Algorithm, Digest, RepoName};
use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// Where an upload stands.
#[derive(Debug, Clone)]
pub struct UploadState {
    pub id: String,
    /// Bytes received so far.
    pub size: u64,
}

/// An inclusive `Content-Range` of a chunk: `start-end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkRange {
    pub start: u64,
    pub end: u64,
}

type Slot = Arc<tokio::sync::Mutex<Option<UploadProgress>>>;
/// An upload's lock, owning the cached state; it can move into a task.
type Guard = tokio::sync::OwnedMutexGuard<Option<UploadProgress>>;

/// Upload hash states by upload id, with when each was last asked for.
#[derive(Default)]
pub(super) struct UploadCache {
    slots: Mutex<Slots>,
}

#[derive(Default)]
struct Slots {
    by_id: HashMap<String, (Slot, Instant)>,
    last_sweep: Option<Instant>,
}

/// Beyond this many cached states, idle ones are dropped (they can be rebuilt).
const MAX_CACHED_UPLOADS: usize = 4096;
/// A state nobody has asked for in this long belongs to a session nobody is writing
/// to: it is dropped (the next chunk, if one ever comes, rebuilds it from storage).
const IDLE_STATE: Duration = Duration::from_secs(60);

impl UploadCache {
    fn slot(&self, id: &str) -> Slot {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let full = slots.by_id.len() >= MAX_CACHED_UPLOADS && !slots.by_id.contains_key(id);
        let due = slots
            .last_sweep
            .is_none_or(|t| now.duration_since(t) >= IDLE_STATE / 4);
        if full || due {
            slots.last_sweep = Some(now);
            slots.by_id.retain(|k, (s, used)| {
                k == id
                    || Arc::strong_count(s) > 1
                    || (!full && now.duration_since(*used) < IDLE_STATE)
            });
        }
        let entry = slots
            .by_id
            .entry(id.to_string())
            .or_insert_with(|| (Slot::default(), now));
        entry.1 = now;
        entry.0.clone()
    }

    pub(super) async fn lock(&self, id: &str) -> Guard {
        self.slot(id).lock_owned().await
    }

    /// Note that a write to `id` just ended: its idle time starts now, not when the
    /// write began (a long chunk is no pause).
    pub(super) fn touch(&self, id: &str) {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, used)) = slots.by_id.get_mut(id) {
            *used = Instant::now();
        }
    }

    pub(super) fn forget(&self, id: &str) {
        self.slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .by_id
            .remove(id);
    }
}

/// Fails unless the inner stream carries exactly `len` bytes, so a short or long chunk is
/// cut back by the store instead of being half-applied.
struct ExactLength {
    inner: ByteStream,
    len: u64,
    seen: u64,
    done: bool,
}

impl Stream for ExactLength {
    type Item = io::Result<Bytes>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        let item = match self.inner.poll_next_unpin(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(item) => item,
        };
        let (len, seen) = (self.len, self.seen);
        Poll::Ready(match item {
            Some(Ok(chunk)) => {
                self.seen += chunk.len() as u64;
                if self.seen > len {
                    self.done = true;
                    Some(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("the chunk is longer than the {len} bytes its range declares"),
                    )))
                } else {
                    Some(Ok(chunk))
                }
            }
            Some(Err(e)) => {
                self.done = true;
                Some(Err(e))
            }
            None => {
                self.done = true;
                (seen < len).then(|| {
                    Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("the chunk has {seen} bytes but its range declares {len}"),
                    ))
                })
            }
        })
    }
}

fn exact_length(inner: ByteStream, len: u64) -> ByteStream {
    Box::pin(ExactLength {
        inner,
        len,
        seen: 0,
        done: false,
    })
}

/// How long a keyed upload's commit may hold its claim (a commit that reads a large
/// blob back to verify it takes a while; a dead node's claim runs out after this).
const COMMIT_LEASE: std::time::Duration = std::time::Duration::from_secs(600);
/// How long a closing PUT waits for another request completing the same upload.
const COMMIT_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// A held `upload-commit <id>` claim. Released by [`CommitClaim::release`], or, when
/// the request is cut off mid-commit (its future dropped), by a task of its own, so a
/// retried PUT does not wait for the lease to run out.
struct CommitClaim {
    meta: Option<std::sync::Arc<dyn crate::meta::MetaStore>>,
    name: String,
    owner: String,
}

impl CommitClaim {
    async fn release(mut self) {
        if let Some(meta) = self.meta.take() {
            release_commit(&*meta, &self.name, &self.owner).await;
        }
    }
}

impl Drop for CommitClaim {
    fn drop(&mut self) {
        let Some(meta) = self.meta.take() else {
            return;
        };
        let (name, owner) = (
            std::mem::take(&mut self.name),
            std::mem::take(&mut self.owner),
        );
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { release_commit(&*meta, &name, &owner).await });
        }
    }
}

async fn release_commit(meta: &dyn crate::meta::MetaStore, name: &str, owner: &str) {
    if let Err(e) = meta.release_job(name, owner).await {
        tracing::warn!(claim = %name, error = %e, "could not release an upload's commit claim; it runs out by itself");
    }
}

impl Registry {
    async fn session(&self, repo: &RepoName, id: &str) -> Result<UploadSession> {
        if !crate::storage::valid_upload_id(id) {
            return Err(RegistryError::UploadUnknown);
        }
        match self.meta.get_upload(id).await? {
            Some(s) if &s.repository == repo => Ok(s),
            _ => Err(RegistryError::UploadUnknown),
        }
    }

    /// The cached progress if it matches the stored size, else a rebuilt one. Called
    /// under the upload's lock. A session whose upload storage no longer has was
    /// committed by a finish that failed afterwards (or was dropped): its bytes may now be
    /// a blob, so they are never written again; the session is removed and the client,
    /// told the upload is unknown, starts a new one.
    async fn progress(
        &self,
        cached: Option<UploadProgress>,
        s: &UploadSession,
    ) -> Result<UploadProgress> {
        let stored = match self.blobs.upload_size(&s.id).await {
            Ok(size) => size,
            Err(StorageError::UploadNotFound) => {
                tracing::info!(upload = %s.id, repository = %s.repository, "upload was committed by an earlier request that failed after the commit; removing the session");
                self.discard_upload(&s.id).await?;
                return Err(RegistryError::UploadUnknown);
            }
            Err(e) => return Err(e.into()),
        };
        match cached {
            Some(p) if p.size == stored => Ok(p),
            _ => Ok(self.blobs.rehash_upload(&s.id, s.algorithm).await?),
        }
    }

    /// Refuse an upload into a project whose quota has no room left for any new blob,
    /// before its bytes are sent (the commit is still checked exactly).
    pub(super) async fn check_quota_room(&self, repo: &RepoName) -> Result<()> {
        let Some((project, _)) = repo.as_str().split_once('/') else {
            return Ok(());
        };
        let Some(p) = self.meta.project_by_name(project).await? else {
            return Ok(());
        };
        let Some(q) = self.meta.quota(p.id).await? else {
            return Ok(());
        };
        match q.hard {
            Some(hard) if q.used >= hard => Err(RegistryError::Denied(format!(
                "storage quota exceeded: project {project} uses {} of its {hard} bytes, so no new blob fits; delete images and let garbage collection free their blobs, or ask an administrator to raise the quota",
                q.used
            ))),
            _ => Ok(()),
        }
    }

    /// Open an upload session.
    pub async fn start_upload(&self, repo: &RepoName, algorithm: Algorithm) -> Result<UploadState> {
        self.check_quota_room(repo).await?;
        let id = uuid::Uuid::new_v4().to_string();
        let caps = self.settings.upload_sessions;
        let recorded = self
            .meta
            .create_upload(
                &UploadSession {
                    id: id.clone(),
                    repository: repo.clone(),
                    algorithm,
                    created_at: now(),
                },
                caps,
            )
            .await?;
        if let Err(reached) = recorded {
            let (limit, whose, key) = match reached {
                SessionCapReached::Repository(n) => {
                    (n, "this repository", "limits.repositoryuploadsessions")
                }
                SessionCapReached::Total(n) => (n, "the registry", "limits.uploadsessions"),
            };
            return Err(RegistryError::TooManyUploads(format!(
                "{whose} already has {limit} open upload sessions ({key}): finish or cancel some, or wait for abandoned ones to be purged, then retry"
            )));
        }
        if let Err(e) = self.blobs.create_keyed_upload(&id).await {
            self.meta.delete_upload(&id).await?;
            return Err(e.into());
        }
        Ok(UploadState { id, size: 0 })
    }

    /// Link an existing blob into `repo` from `from` (or, without `from`, from any
    /// repository that has it). `false` when there is nothing to mount.
    pub async fn mount_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        from: Option<&RepoName>,
    ) -> Result<bool> {
        if self.meta.linked_blob(repo, digest).await?.is_some() {
            // Already here: the mount still renews the link's time, so that a collection
            // running now keeps the blob for the manifest that is about to name it.
            if self
                .meta
                .mount_blob(repo, digest, Some(repo), &[])
                .await?
                .is_some()
            {
                return Ok(true);
            }
        }
        let found = match from {
            Some(from) => self.meta.linked_blob(from, digest).await?,
            None => self.meta.known_blob(digest).await?,
        };
        let Some(found) = found else { return Ok(false) };
        if self
            .blobs
            .stat(super::blobs::stored_at(digest, &found))
            .await?
            .is_none()
        {
            return Ok(false);
        }
        #[cfg(test)]
        super::gc::race::point("mount:checked").await;
        let events = if self.events_enabled() {
            let mut target = self.blob_target(repo, digest, found.size);
            target.from_repository = from.map(RepoName::to_string).unwrap_or_default();
            self.event_rows(Action::Mount, &target)
        } else {
            Vec::new()
        };
        // Links only a blob metadata still records (re-checked in the transaction): if
        // garbage collection forgot it meanwhile, the client is asked to upload instead.
        self.pulls_first(&events).await;
        let mounted = self.meta.mount_blob(repo, digest, from, &events).await?;
        if mounted.is_some() {
            self.wake(&events);
        }
        Ok(mounted.is_some())
    }

    /// Where an upload stands.
    pub async fn upload_status(&self, repo: &RepoName, id: &str) -> Result<UploadState> {
        let s = self.session(repo, id).await?;
        let size = self.blobs.upload_size(&s.id).await?;
        Ok(UploadState { id: s.id, size })
    }

    /// Append one chunk. With a `range`, it must start where the upload ends.
    pub async fn upload_chunk(
        &self,
        repo: &RepoName,
        id: &str,
        range: Option<ChunkRange>,
        body: ByteStream,
    ) -> Result<UploadState> {
        let s = self.session(repo, id).await?;
        let mut guard = self.uploads.lock(&s.id).await;
        let progress = self.progress(guard.take(), &s).await?;
        let (guard, progress) = self.append(&s.id, guard, progress, range, body).await?;
        drop(guard);
        self.uploads.touch(&s.id);
        Ok(UploadState {
            id: s.id,
            size: progress.size,
        })
    }

    /// Append under the upload's lock, in a task of its own: if the request is dropped
    /// mid-body (a reset stream), the write still finishes or is cut back before the lock
    /// is released, so a retry can never interleave with it. Returns the lock with the
    /// new state cached in it. A refused chunk leaves the cached state as it was.
    async fn append(
        &self,
        id: &str,
        mut guard: Guard,
        progress: UploadProgress,
        range: Option<ChunkRange>,
        body: ByteStream,
    ) -> Result<(Guard, UploadProgress)> {
        let body = match range {
            Some(r) if r.start != progress.size || r.end < r.start => {
                let size = progress.size;
                *guard = Some(progress);
                return Err(RegistryError::ChunkOutOfOrder { size });
            }
            Some(r) => match (r.end - r.start).checked_add(1) {
                Some(len) => exact_length(body, len),
                None => {
                    *guard = Some(progress);
                    return Err(RegistryError::UploadInvalid(
                        "Content-Range is too large".into(),
                    ));
                }
            },
            None => body,
        };
        let blobs = self.blobs.clone();
        let limit = self.settings.max_blob_bytes;
        let id = id.to_string();
        let task = tokio::spawn(async move {
            let before = progress.clone();
            match blobs.append_upload(&id, progress, body, limit).await {
                Ok(p) => {
                    *guard = Some(p.clone());
                    Ok((guard, p))
                }
                Err(e) => {
                    // The store cut the upload back to `before` on these; other failures
                    // leave the state unknown, to be rebuilt from storage.
                    if matches!(e, StorageError::Body(_) | StorageError::TooLarge { .. }) {
                        *guard = Some(before);
                    }
                    Err(e)
                }
            }
        });
        match task.await {
            Ok(result) => Ok(result?),
            Err(join) => Err(RegistryError::Storage(StorageError::Io(io::Error::other(
                join,
            )))),
        }
    }

    /// Close an upload: append the final chunk if any, verify the digest, commit.
    pub async fn finish_upload(
        &self,
        repo: &RepoName,
        id: &str,
        digest: &Digest,
        range: Option<ChunkRange>,
        body: Option<ByteStream>,
    ) -> Result<u64> {
        let s = match self.session(repo, id).await {
            Ok(s) => s,
            Err(RegistryError::UploadUnknown) => {
                return self.finished_before(repo, id, digest).await;
            }
            Err(e) => return Err(e),
        };
        let mut guard = self.uploads.lock(&s.id).await;
        let mut progress = self.progress(guard.take(), &s).await?;
        if let Some(body) = body {
            let (g, p) = self.append(&s.id, guard, progress, range, body).await?;
            guard = g;
            progress = p;
        }
        *guard = Some(progress.clone());
        let size = progress.size;
        // A keyed upload completes at one key whatever digest is asked for: two closing
        // PUTs of it must not complete it at once (each would trust its own), so the
        // commit and the session's end are one holder's, cluster-wide.
        let claim = if self.blobs.may_hold_keyed_uploads() {
            Some(self.claim_commit(&s.id).await?)
        } else {
            None
        };
        let committed = async {
            if let Err(e) = self.verify_and_commit(repo, &s.id, digest, progress).await {
                if matches!(e, RegistryError::DigestInvalid(_)) {
                    // The content can never become this digest: the session is over.
                    return Err(match self.discard_upload(&s.id).await {
                        Ok(()) => (e, true),
                        Err(discard) => (discard, false),
                    });
                }
                return Err((e, false));
            }
            self.meta
                .complete_upload(&s, digest, size)
                .await
                .map_err(|e| (e.into(), false))
        }
        .await;
        if let Some(claim) = claim {
            claim.release().await;
        }
        if let Err((e, over)) = committed {
            if over {
                *guard = None;
            }
            return Err(e);
        }
        *guard = None;
        drop(guard);
        self.uploads.forget(&s.id);
        Ok(size)
    }

    /// A closing PUT for a session that is gone: the same PUT again, after its answer
    /// was lost (a client's retry, or a load balancer resending it to another node
    /// after the first died), gets the same answer while the session's completion is
    /// remembered and its blob is still there. Anything else is an unknown upload.
    async fn finished_before(&self, repo: &RepoName, id: &str, digest: &Digest) -> Result<u64> {
        if !crate::storage::valid_upload_id(id) {
            return Err(RegistryError::UploadUnknown);
        }
        match self.meta.completed_upload(id).await? {
            Some(c) if &c.repository == repo && &c.digest == digest => {
                match self.stat_blob(repo, digest).await {
                    Ok(size) if size == c.size => {
                        tracing::info!(upload = %id, %digest, "a closing PUT repeated for a completed upload: answered as the first");
                        Ok(size)
                    }
                    _ => Err(RegistryError::UploadUnknown),
                }
            }
            _ => Err(RegistryError::UploadUnknown),
        }
    }

    async fn verify_and_commit(
        &self,
        repo: &RepoName,
        id: &str,
        digest: &Digest,
        progress: UploadProgress,
    ) -> Result<()> {
        let progress = if progress.hasher.algorithm() == digest.algorithm() {
            Some(progress)
        } else {
            match self.blobs.rehash_upload(id, digest.algorithm()).await {
                Ok(p) => Some(p),
                // A keyed upload hashed with another algorithm: its commit reads the
                // completed object back and verifies it.
                Err(StorageError::KeyedUploadUnreadable) => None,
                Err(e) => return Err(e.into()),
            }
        };
        let size = match &progress {
            Some(p) => {
                let actual = p.hasher.digest();
                if &actual != digest {
                    return Err(RegistryError::DigestInvalid(format!(
                        "the uploaded content has digest {actual}, not {digest}"
                    )));
                }
                p.size
            }
            None => self.blobs.upload_size(id).await?,
        };
        let own = match self.blobs.commit_upload(id, digest).await {
            Ok(own) => own,
            // The store verified against its own saved hash state (S3: another node's
            // append replaced what this node hashed): the content is not `digest`.
            Err(StorageError::DigestMismatch { actual, .. }) => {
                return Err(RegistryError::DigestInvalid(format!(
                    "the uploaded content has digest {actual}, not {digest}"
                )))
            }
            // A keyed upload whose parts a concurrent append replaced: what it would
            // complete is not what was hashed, so it can never be `digest` as recorded.
            Err(StorageError::PartsReplaced(why)) => return Err(RegistryError::DigestInvalid(why)),
            Err(e) => return Err(e.into()),
        };
        #[cfg(test)]
        super::gc::race::point("upload:committed").await;
        let events = if self.events_enabled() {
            let target = self.blob_target(repo, digest, size);
            self.event_rows(Action::Push, &target)
        } else {
            Vec::new()
        };
        self.pulls_first(&events).await;
        let key =
            super::blobs::record_blob(&*self.meta, repo, digest, size, own.as_deref(), &events)
                .await?;
        self.wake(&events);
        match (&own, &key) {
            // Garbage collection may have taken the file between the commit and the
            // link (it had forgotten an older copy of the same blob): the upload still
            // holds the bytes, so commit them again. See `registry/gc.rs`.
            (None, None) => {
                if self.blobs.stat(digest.into()).await?.is_none() {
                    tracing::info!(%digest, "blob collected while it was re-uploaded; committing it again");
                    self.blobs.commit_upload(id, digest).await?;
                }
            }
            (Some(own), Some(key)) if own == key => {}
            // The digest was recorded first elsewhere (its own key, or its digest's
            // path): this copy is surplus, and nothing records its key.
            (Some(own), _) => {
                let at = crate::storage::BlobRef {
                    digest,
                    key: Some(own),
                };
                if let Err(e) = self.blobs.delete(at).await {
                    tracing::warn!(%digest, key = %own, error = %e, "could not delete a surplus copy of a blob that was recorded first elsewhere; nothing records it");
                }
            }
            // A key was recorded first: the copy just committed at the digest's path is
            // surplus (readers go to the key, and garbage collection's digest-path
            // forget never takes a keyed row, so nothing else would remove it).
            (None, Some(_)) => super::blobs::drop_digest_copy(&*self.blobs, digest).await,
        }
        // The blob is committed and linked: the push has succeeded whatever happens to
        // the upload's own files now. Failing the request here would only send the client
        // back to push the layer again (the retried PUT finds the upload half removed);
        // what is left is upload purging's, which removes stored uploads nothing records.
        if let Err(e) = self.blobs.delete_upload(id).await {
            tracing::warn!(upload = %id, %digest, error = %e, "could not remove a finished upload's files; upload purging removes them later");
        }
        Ok(())
    }

    /// Claim the commit of upload `id` (see `finish_upload`): waits a little for another
    /// request completing it, then answers that it is busy.
    async fn claim_commit(&self, id: &str) -> Result<CommitClaim> {
        let name = format!("upload-commit {id}");
        let owner = uuid::Uuid::new_v4().to_string();
        let started = std::time::Instant::now();
        loop {
            match self.meta.claim_job(&name, &owner, COMMIT_LEASE).await? {
                Ok(()) => {
                    return Ok(CommitClaim {
                        meta: Some(self.meta.clone()),
                        name,
                        owner,
                    })
                }
                Err(_) if started.elapsed() < COMMIT_WAIT => {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(holder) => {
                    return Err(RegistryError::Storage(StorageError::Unavailable(format!(
                        "another request ({}) is completing upload {id}: retry the PUT in a moment",
                        holder.owner
                    ))))
                }
            }
        }
    }

    async fn discard_upload(&self, id: &str) -> Result<()> {
        self.blobs.delete_upload(id).await?;
        self.meta.delete_upload(id).await?;
        Ok(())
    }

    /// Cancel an upload session.
    pub async fn cancel_upload(&self, repo: &RepoName, id: &str) -> Result<()> {
        let s = self.session(repo, id).await?;
        let mut guard = self.uploads.lock(&s.id).await;
        self.discard_upload(&s.id).await?;
        *guard = None;
        drop(guard);
        self.uploads.forget(&s.id);
        Ok(())
    }

    /// A whole blob in one request (`POST ...?digest=`): write, verify, commit.
    pub async fn put_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        body: ByteStream,
    ) -> Result<u64> {
        // A blob the repository holds already costs nothing more.
        if self.meta.linked_blob(repo, digest).await?.is_none() {
            self.check_quota_room(repo).await?;
        }
        let id = uuid::Uuid::new_v4().to_string();
        self.blobs.create_keyed_upload(&id).await?;
        let fresh = UploadProgress {
            size: 0,
            hasher: digest.algorithm().hasher(),
        };
        let result = async {
            let guard = self.uploads.lock(&id).await;
            let (guard, progress) = self.append(&id, guard, fresh, None, body).await?;
            drop(guard);
            self.uploads.forget(&id);
            let size = progress.size;
            self.verify_and_commit(repo, &id, digest, progress).await?;
            Ok(size)
        }
        .await;
        if result.is_err() {
            self.uploads.forget(&id);
            self.blobs.delete_upload(&id).await?;
        }
        result
    }
}

/// A finish that fails after its commit must never let a retry write into the committed
/// blob (over the filesystem store the upload and the blob share an inode).
#[cfg(test)]
mod tests {
    use super::super::gc::race::Pause;
    use crate::meta::sqlite::SqliteMeta;
    use crate::meta::Uploads;
    use crate::registry::{Registry, RegistryError, Settings};
    use crate::storage::fs::FsBlobStore;
    use crate::storage::memory::MemoryBlobStore;
    use crate::storage::{BlobStore, ByteStream};
    use bytes::Bytes;
    use futures_util::StreamExt;
    use oci::{Algorithm, Digest, RepoName};
    use std::sync::Arc;

    const DATA: &[u8] = b"a layer committed before its request failed";

    fn body(b: &'static [u8]) -> ByteStream {
        Box::pin(futures_util::stream::once(async move {
            Ok(Bytes::from_static(b))
        }))
    }

    async fn retry_after_a_failed_finish(fs: bool) {
        let dir = tempfile::tempdir().expect("tempdir");
        let meta = Arc::new(
            SqliteMeta::open(&dir.path().join("berth.db"))
                .await
                .expect("meta"),
        );
        let root = dir.path().join("root");
        let blobs: Arc<dyn BlobStore> = if fs {
            Arc::new(FsBlobStore::open(&root).expect("fs store"))
        } else {
            Arc::new(MemoryBlobStore::new())
        };
        let registry = Arc::new(Registry::new(
            blobs.clone(),
            meta.clone(),
            Settings::default(),
        ));
        let repo: RepoName = "app".parse().expect("repo");
        let digest = Digest::of(Algorithm::Sha256, DATA);

        let up = registry
            .start_upload(&repo, Algorithm::Sha256)
            .await
            .expect("start");
        registry
            .upload_chunk(&repo, &up.id, None, body(DATA))
            .await
            .expect("chunk");
        // The finish commits the blob, then fails before the link and the session's
        // removal (here: its request is dropped, as when the client goes away).
        let pause = Pause::at("upload:committed");
        let (r, repo2, id) = (registry.clone(), repo.clone(), up.id.clone());
        let d = digest.clone();
        let finish = tokio::spawn(
            pause
                .clone()
                .scope(async move { r.finish_upload(&repo2, &id, &d, None, None).await }),
        );
        pause.reached.notified().await;
        finish.abort();
        assert!(finish.await.expect_err("aborted").is_cancelled());
        assert!(meta.get_upload(&up.id).await.expect("get").is_some());

        // The client retries with a final chunk: refused, and the blob is unchanged.
        let retried = registry
            .finish_upload(&repo, &up.id, &digest, None, Some(body(b"trailing")))
            .await;
        let mut read = blobs.get((&digest).into(), None).await.expect("blob");
        let mut bytes = Vec::new();
        while let Some(chunk) = read.next().await {
            bytes.extend_from_slice(&chunk.expect("chunk"));
        }
        assert_eq!(
            String::from_utf8_lossy(&bytes),
            String::from_utf8_lossy(DATA),
            "fs={fs}: the committed blob is intact"
        );
        assert!(
            matches!(retried, Err(RegistryError::UploadUnknown)),
            "fs={fs}: {retried:?}"
        );
        // The session and every file of it are gone; a PATCH is refused the same way.
        assert!(meta.get_upload(&up.id).await.expect("get").is_none());
        assert!(matches!(
            registry
                .upload_chunk(&repo, &up.id, None, body(b"more"))
                .await,
            Err(RegistryError::UploadUnknown)
        ));
        if fs {
            let left = crate::storage::fs::tests::upload_files(&root);
            assert!(left.is_empty(), "upload files left: {left:?}");
        }
        // Pushing the blob again works as usual.
        let up = registry
            .start_upload(&repo, Algorithm::Sha256)
            .await
            .expect("start");
        registry
            .finish_upload(&repo, &up.id, &digest, None, Some(body(DATA)))
            .await
            .expect("push again");
        assert_eq!(
            blobs.stat((&digest).into()).await.expect("stat"),
            Some(DATA.len() as u64)
        );
    }

    #[tokio::test]
    async fn a_retry_after_a_commit_cannot_change_the_blob() {
        retry_after_a_failed_finish(true).await;
        retry_after_a_failed_finish(false).await;
    }

    /// The closing PUT of a completed upload, sent again (its answer was lost), gets the
    /// same answer; another digest, another repository, or a blob gone since do not.
    #[tokio::test]
    async fn a_repeated_closing_put_gets_the_same_answer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let meta = Arc::new(
            SqliteMeta::open(&dir.path().join("berth.db"))
                .await
                .expect("meta"),
        );
        let registry = Registry::new(
            Arc::new(MemoryBlobStore::new()),
            meta.clone(),
            Settings {
                delete_enabled: true,
                ..Settings::default()
            },
        );
        let repo: RepoName = "app".parse().expect("repo");
        let digest = Digest::of(Algorithm::Sha256, DATA);
        let up = registry
            .start_upload(&repo, Algorithm::Sha256)
            .await
            .expect("start");
        let size = registry
            .finish_upload(&repo, &up.id, &digest, None, Some(body(DATA)))
            .await
            .expect("finish");
        assert_eq!(size, DATA.len() as u64);
        assert!(
            meta.get_upload(&up.id).await.expect("get").is_none(),
            "the session is gone"
        );
        let again = registry
            .finish_upload(&repo, &up.id, &digest, None, Some(body(DATA)))
            .await
            .expect("the same PUT again");
        assert_eq!(again, size);
        let other = Digest::of(Algorithm::Sha256, b"other");
        assert!(matches!(
            registry
                .finish_upload(&repo, &up.id, &other, None, None)
                .await,
            Err(RegistryError::UploadUnknown)
        ));
        let elsewhere: RepoName = "other".parse().expect("repo");
        assert!(matches!(
            registry
                .finish_upload(&elsewhere, &up.id, &digest, None, None)
                .await,
            Err(RegistryError::UploadUnknown)
        ));
        assert!(matches!(
            registry
                .finish_upload(&repo, "never-existed", &digest, None, None)
                .await,
            Err(RegistryError::UploadUnknown)
        ));
        registry.delete_blob(&repo, &digest).await.expect("delete");
        assert!(matches!(
            registry
                .finish_upload(&repo, &up.id, &digest, None, None)
                .await,
            Err(RegistryError::UploadUnknown)
        ));
    }

    /// A push whose blob is committed and linked succeeds even when removing the upload's own
    /// files fails afterwards; upload purging removes what is left.
    mod cleanup {
        use super::body;
        use crate::meta::sqlite::SqliteMeta;
        use crate::meta::Uploads;
        use crate::registry::{Registry, Settings};
        use crate::storage::memory::MemoryBlobStore;
        use crate::storage::{
            BlobRef, BlobStore, ByteRange, ByteStream, HiddenBlob, Ingest, Result, StorageError,
            StoredBlob, StoredUpload, UploadProgress,
        };
        use oci::{Algorithm, Digest, RepoName};
        use std::path::Path;
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        use std::time::Duration;

        /// The memory store, whose `delete_upload` fails while `failing` is set.
        struct CleanupFails {
            inner: MemoryBlobStore,
            failing: AtomicBool,
        }

        #[async_trait::async_trait]
        impl BlobStore for CleanupFails {
            async fn stat(&self, b: BlobRef<'_>) -> Result<Option<u64>> {
                self.inner.stat(b).await
            }
            async fn get(&self, b: BlobRef<'_>, r: Option<ByteRange>) -> Result<ByteStream> {
                self.inner.get(b, r).await
            }
            async fn delete(&self, b: BlobRef<'_>) -> Result<bool> {
                self.inner.delete(b).await
            }
            async fn hide(&self, d: &Digest) -> Result<Option<HiddenBlob>> {
                self.inner.hide(d).await
            }
            async fn unhide(&self, h: &HiddenBlob) -> Result<bool> {
                self.inner.unhide(h).await
            }
            async fn purge(&self, h: &HiddenBlob) -> Result<bool> {
                self.inner.purge(h).await
            }
            async fn hidden(&self) -> Result<Vec<HiddenBlob>> {
                self.inner.hidden().await
            }
            async fn list(&self) -> Result<Vec<StoredBlob>> {
                self.inner.list().await
            }
            async fn create_upload(&self, id: &str) -> Result<()> {
                self.inner.create_upload(id).await
            }
            async fn upload_size(&self, id: &str) -> Result<u64> {
                self.inner.upload_size(id).await
            }
            async fn read_upload(&self, id: &str, r: ByteRange) -> Result<ByteStream> {
                self.inner.read_upload(id, r).await
            }
            async fn append_upload(
                &self,
                id: &str,
                p: UploadProgress,
                body: ByteStream,
                limit: u64,
            ) -> Result<UploadProgress> {
                self.inner.append_upload(id, p, body, limit).await
            }
            async fn rehash_upload(&self, id: &str, a: Algorithm) -> Result<UploadProgress> {
                self.inner.rehash_upload(id, a).await
            }
            async fn commit_upload(&self, id: &str, d: &Digest) -> Result<Option<String>> {
                self.inner.commit_upload(id, d).await
            }
            async fn delete_upload(&self, id: &str) -> Result<()> {
                if self.failing.load(Ordering::SeqCst) {
                    return Err(StorageError::Unavailable(
                        "the object store answered 503".into(),
                    ));
                }
                self.inner.delete_upload(id).await
            }
            async fn list_uploads(&self) -> Result<Vec<StoredUpload>> {
                self.inner.list_uploads().await
            }
            async fn upload_written(&self, id: &str) -> Result<Option<std::time::SystemTime>> {
                self.inner.upload_written(id).await
            }
            async fn import_file(&self, source: &Path, d: &Digest) -> Result<(u64, Ingest)> {
                self.inner.import_file(source, d).await
            }
        }

        #[tokio::test]
        async fn a_failed_cleanup_does_not_fail_a_committed_push() {
            let dir = tempfile::tempdir().expect("tempdir");
            let meta = Arc::new(
                SqliteMeta::open(&dir.path().join("berth.db"))
                    .await
                    .expect("meta"),
            );
            let blobs = Arc::new(CleanupFails {
                inner: MemoryBlobStore::new(),
                failing: AtomicBool::new(true),
            });
            let registry = Registry::new(blobs.clone(), meta.clone(), Settings::default());
            let repo: RepoName = "app".parse().expect("repo");

            // Chunked: POST, PATCH, closing PUT.
            let data: &[u8] = b"a layer whose upload files could not be removed";
            let digest = Digest::of(Algorithm::Sha256, data);
            let up = registry
                .start_upload(&repo, Algorithm::Sha256)
                .await
                .expect("start");
            registry
                .upload_chunk(&repo, &up.id, None, body(data))
                .await
                .expect("chunk");
            let size = registry
                .finish_upload(&repo, &up.id, &digest, None, None)
                .await
                .expect("the push succeeds");
            assert_eq!(size, data.len() as u64);
            assert_eq!(
                registry.stat_blob(&repo, &digest).await.expect("stat"),
                size
            );
            assert!(meta.get_upload(&up.id).await.expect("get").is_none());

            // Monolithic: POST ?digest=.
            let other: &[u8] = b"a monolithic push, same story";
            let other_digest = Digest::of(Algorithm::Sha256, other);
            registry
                .put_blob(&repo, &other_digest, body(other))
                .await
                .expect("the monolithic push succeeds");
            assert_eq!(
                registry
                    .stat_blob(&repo, &other_digest)
                    .await
                    .expect("stat"),
                other.len() as u64
            );

            // Both uploads' files are left, and upload purging takes them; the blobs stay.
            assert_eq!(blobs.list_uploads().await.expect("list").len(), 2);
            blobs.failing.store(false, Ordering::SeqCst);
            let report = registry
                .purge_uploads(Duration::ZERO, false)
                .await
                .expect("purge");
            assert_eq!(report.orphans, 2, "{report:?}");
            assert!(blobs.list_uploads().await.expect("list").is_empty());
            assert_eq!(
                registry.stat_blob(&repo, &digest).await.expect("stat"),
                size
            );
            assert_eq!(
                registry
                    .stat_blob(&repo, &other_digest)
                    .await
                    .expect("stat"),
                other.len() as u64
            );
        }
    }
}

#[cfg(test)]
mod cache_tests {
    use super::*;

    impl UploadCache {
        fn held(&self) -> usize {
            self.slots
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .by_id
                .len()
        }

        /// Pretend every state was last asked for `ago` earlier than it was.
        fn age(&self, ago: Duration) {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            for (_, used) in slots.by_id.values_mut() {
                *used = used.checked_sub(ago).unwrap_or(*used);
            }
            slots.last_sweep = slots.last_sweep.and_then(|t| t.checked_sub(ago));
        }
    }

    #[tokio::test]
    async fn states_of_abandoned_sessions_are_dropped() {
        let cache = UploadCache::default();
        for i in 0..100 {
            let mut guard = cache.lock(&format!("abandoned-{i}")).await;
            *guard = Some(UploadProgress {
                size: 1,
                hasher: Algorithm::Sha256.hasher(),
            });
        }
        let busy = cache.lock("busy").await;
        assert_eq!(cache.held(), 101);
        // Within the idle time nothing goes; after it, every state nobody holds does.
        drop(cache.lock("fresh").await);
        assert_eq!(cache.held(), 102);
        cache.age(IDLE_STATE + Duration::from_secs(1));
        drop(cache.lock("fresh").await);
        assert_eq!(
            cache.held(),
            2,
            "only the held lock and the fresh state stay"
        );
        drop(busy);
    }

    #[tokio::test]
    async fn the_state_being_locked_is_never_swept() {
        let cache = UploadCache::default();
        *cache.lock("long-chunk").await = Some(UploadProgress {
            size: 1,
            hasher: Algorithm::Sha256.hasher(),
        });
        // Its last write began (and ended) long ago; the next request for it comes now,
        // when a sweep is due: its state is still there.
        cache.age(IDLE_STATE * 2);
        assert!(cache.lock("long-chunk").await.is_some());
        // A write that just ended starts the idle time afresh.
        cache.age(IDLE_STATE * 2);
        cache.touch("long-chunk");
        drop(cache.lock("other").await);
        assert_eq!(cache.held(), 2);
    }
}
