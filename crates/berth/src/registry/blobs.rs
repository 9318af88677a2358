//! Reading and deleting blobs within a repository.

use super::events::{Action, Target};
use super::{Registry, RegistryError, Result};
use crate::meta::{BlobRecord, MetaError, MetaStore, NewEvent};
use crate::storage::{BlobRef, ByteRange, ByteStream, StorageError};
use oci::{Digest, RepoName};
use std::time::{Duration, Instant};

/// How long recording a blob waits for a garbage collection that is removing the same
/// digest's older file (it holds the digest's claim for the length of one object-store
/// delete, or copy and delete); past this the push fails with 503 and can be retried.
pub const COLLECTING_WAIT: Duration = Duration::from_secs(300);

/// Where the bytes of `digest` are, as metadata records them.
pub(super) fn stored_at<'a>(digest: &'a Digest, record: &'a BlobRecord) -> BlobRef<'a> {
    BlobRef {
        digest,
        key: record.key.as_deref(),
    }
}

/// Remove the copy of `digest` at its digest's path that a commit by digest left when
/// metadata already recorded the digest at a key of its own (the first key wins): no
/// reader goes there. Failures are logged; the copy is only surplus.
pub(super) async fn drop_digest_copy(blobs: &dyn crate::storage::BlobStore, digest: &Digest) {
    if let Err(e) = blobs.delete(digest.into()).await {
        tracing::warn!(%digest, error = %e, "could not delete a surplus copy at the digest's path of a blob recorded at a key of its own");
    }
}

/// Record a blob whose file was just committed (at `key`, or at the digest's own path)
/// and link it into `repo` (with its outbox rows); returns the key metadata holds for the
/// digest afterwards (the first one recorded wins: see
/// [`crate::meta::Repositories::link_blob_at`]). While a garbage collection is removing
/// an older file of the same digest this waits for it to finish (polling, up to
/// [`COLLECTING_WAIT`]); the caller then finds the file gone and commits its bytes again
/// (see `gc.rs`).
pub(super) async fn record_blob(
    meta: &dyn MetaStore,
    repo: &RepoName,
    digest: &Digest,
    size: u64,
    key: Option<&str>,
    events: &[NewEvent],
) -> crate::meta::Result<Option<String>> {
    let started = Instant::now();
    let mut pause = Duration::from_millis(50);
    loop {
        match meta.link_blob_at(repo, digest, size, key, events).await {
            Err(MetaError::Collecting(_)) if started.elapsed() < COLLECTING_WAIT => {
                if pause == Duration::from_millis(50) {
                    tracing::info!(%digest, %repo, "waiting for garbage collection to finish removing an older copy of this blob");
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
            r => return r,
        }
    }
}

/// A blob (or a range of it) ready to stream.
pub struct BlobRead {
    pub size: u64,
    /// The range served, if one was asked for and satisfiable.
    pub range: Option<ByteRange>,
    pub body: ByteStream,
}

impl Registry {
    /// Size of a blob linked into `repo` (a `HEAD`: a pull, for notifications).
    pub async fn stat_blob(&self, repo: &RepoName, digest: &Digest) -> Result<u64> {
        let proxy = self.proxy_for(repo).await;
        let size = match (self.meta.linked_blob(repo, digest).await?, &proxy) {
            (Some(found), Some(p)) => {
                self.proxy_hit(p, repo, digest).await;
                found.size
            }
            (Some(found), None) => found.size,
            (None, Some(p)) => self.proxy_blob_size(p, repo, digest).await?,
            (None, None) => return Err(RegistryError::BlobUnknown(digest.clone())),
        };
        self.emit_blob_pull(repo, digest, size);
        Ok(size)
    }

    async fn linked_record(&self, repo: &RepoName, digest: &Digest) -> Result<BlobRecord> {
        self.meta
            .linked_blob(repo, digest)
            .await?
            .ok_or_else(|| RegistryError::BlobUnknown(digest.clone()))
    }

    /// Record a pull of a blob (see `emit`).
    pub(super) fn emit_blob_pull(&self, repo: &RepoName, d: &Digest, size: u64) {
        if self.events_enabled() {
            self.emit(Action::Pull, self.blob_target(repo, d, size));
        }
    }

    /// Open a blob linked into `repo`, or the range `(start, end_inclusive)` resolved by
    /// `resolve` against its size.
    pub async fn read_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        resolve: impl FnOnce(u64) -> Result<Option<ByteRange>>,
    ) -> Result<BlobRead> {
        if let Some(p) = self.proxy_for(repo).await {
            if self.meta.linked_blob(repo, digest).await?.is_some() {
                self.proxy_hit(&p, repo, digest).await;
            } else {
                // Reports its own pull (once), whether served locally or by a fill.
                return self.proxy_read_blob(&p, repo, digest, resolve).await;
            }
        }
        self.read_linked_blob(repo, digest, resolve).await
    }

    /// Where the client can fetch a blob linked into `repo` straight from the object
    /// store (a presigned URL), when the store offers that; the pull is recorded. `None`
    /// when the blob is to be served by [`Registry::read_blob`] (no redirects, or a
    /// pull-through cache blob not yet here).
    pub async fn blob_redirect(&self, repo: &RepoName, digest: &Digest) -> Result<Option<String>> {
        if !self.blobs.redirects() {
            return Ok(None);
        }
        let Some(found) = self.meta.linked_blob(repo, digest).await? else {
            if self.proxy_for(repo).await.is_some() {
                return Ok(None);
            }
            return Err(RegistryError::BlobUnknown(digest.clone()));
        };
        let Some(url) = self.blobs.redirect_url(stored_at(digest, &found)) else {
            return Ok(None);
        };
        if let Some(p) = self.proxy_for(repo).await {
            self.proxy_hit(&p, repo, digest).await;
        }
        self.emit_blob_pull(repo, digest, found.size);
        Ok(Some(url))
    }

    /// [`Registry::read_blob`] of a blob linked into `repo`.
    pub(super) async fn read_linked_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        resolve: impl FnOnce(u64) -> Result<Option<ByteRange>>,
    ) -> Result<BlobRead> {
        let found = self.linked_record(repo, digest).await?;
        let size = found.size;
        // Distribution reports a pull once the blob is found, even when the range is
        // then refused.
        self.emit_blob_pull(repo, digest, size);
        let range = resolve(size)?;
        if size == 0 {
            return Ok(BlobRead {
                size,
                range: None,
                body: Box::pin(futures_util::stream::empty()),
            });
        }
        let body = self
            .blobs
            .get(stored_at(digest, &found), range)
            .await
            .map_err(|e| match e {
                StorageError::BlobNotFound => {
                    tracing::error!(%digest, key = found.key.as_deref().unwrap_or("(its digest's path)"), "blob is linked in metadata but missing from storage");
                    RegistryError::BlobUnknown(digest.clone())
                }
                other => other.into(),
            })?;
        Ok(BlobRead { size, range, body })
    }

    /// Unlink a blob from `repo`. Its bytes stay until garbage collection finds them
    /// unreferenced everywhere.
    pub async fn delete_blob(&self, repo: &RepoName, digest: &Digest) -> Result<()> {
        self.check_delete_enabled()?;
        let events = self.blob_delete_events(repo, digest);
        self.pulls_first(&events).await;
        if self.meta.unlink_blob(repo, digest, &events).await? {
            self.wake(&events);
            Ok(())
        } else {
            Err(RegistryError::BlobUnknown(digest.clone()))
        }
    }

    /// The outbox rows of unlinking `digest` from `repo` (Distribution names the digest
    /// and the repository).
    pub(super) fn blob_delete_events(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Vec<crate::meta::NewEvent> {
        if !self.events_enabled() {
            return Vec::new();
        }
        let target = Target {
            digest: digest.to_string(),
            repository: repo.to_string(),
            ..Target::default()
        };
        self.event_rows(Action::Delete, &target)
    }
}

#[cfg(test)]
mod tests {
    use crate::meta::sqlite::SqliteMeta;
    use crate::meta::{BlobRecord, Repositories};
    use crate::registry::{Registry, Settings};
    use crate::storage::s3::{testserver, S3BlobStore};
    use crate::storage::{BlobStore, ByteRange, ByteStream};
    use bytes::Bytes;
    use futures_util::TryStreamExt;
    use oci::{Algorithm, Digest, RepoName};
    use std::sync::Arc;
    use std::time::Duration;

    fn repo(s: &str) -> RepoName {
        s.parse().expect("repo")
    }

    /// A registry over SQLite (in the returned directory) and a fresh root of the test
    /// SeaweedFS, with `storage.s3.blobkeys` as given.
    async fn on_seaweedfs(
        blob_keys: Option<bool>,
    ) -> (
        tempfile::TempDir,
        Arc<S3BlobStore>,
        Arc<SqliteMeta>,
        Arc<Registry>,
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(
            S3BlobStore::new(&crate::config::s3::S3Config {
                blob_keys,
                ..testserver::config(testserver::Kind::SeaweedFs, 5 << 20)
            })
            .expect("s3 store"),
        );
        let meta = Arc::new(
            SqliteMeta::open(&dir.path().join("berth.db"))
                .await
                .expect("meta"),
        );
        let registry = Arc::new(Registry::new(
            store.clone(),
            meta.clone(),
            Settings::default(),
        ));
        (dir, store, meta, registry)
    }

    async fn collect(body: ByteStream) -> Vec<u8> {
        let parts: Vec<Bytes> = body.try_collect().await.expect("read");
        parts.concat()
    }

    /// Pushes through a store that writes keys: the blob is recorded at the key its
    /// upload completed at; the same bytes pushed again are linked to the first copy and
    /// the surplus one is deleted; a closing PUT waits while another request holds the
    /// upload's commit.
    #[tokio::test]
    async fn keyed_pushes_record_their_keys() {
        use crate::meta::Maintenance;
        let (_dir, store, meta, registry) = on_seaweedfs(Some(true)).await;
        let data: Vec<u8> = (0..(7u32 << 20)).map(|i| (i % 253) as u8).collect();
        let digest = Digest::of(Algorithm::Sha256, &data);
        let (a, b) = (repo("keys/a"), repo("keys/b"));
        let body = |d: &[u8]| -> ByteStream {
            let d = Bytes::from(d.to_vec());
            Box::pin(futures_util::stream::once(async move { Ok(d) }))
        };
        let upload = registry
            .start_upload(&a, Algorithm::Sha256)
            .await
            .expect("start");
        // Another request holds the commit for a moment: this PUT waits for it.
        let claim = format!("upload-commit {}", upload.id);
        meta.claim_job(&claim, "another request", Duration::from_secs(60))
            .await
            .expect("claim")
            .expect("free");
        let releasing = meta.clone();
        let release = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            releasing
                .release_job(&claim, "another request")
                .await
                .expect("release");
        });
        let size = registry
            .finish_upload(&a, &upload.id, &digest, None, Some(body(&data)))
            .await
            .expect("finish");
        release.await.expect("join");
        assert_eq!(size, data.len() as u64);
        let first = meta
            .linked_blob(&a, &digest)
            .await
            .expect("linked")
            .expect("recorded");
        let key = first.key.clone().expect("a key of its own");
        assert!(key.starts_with("objects/"), "{key}");
        assert_eq!(store.stat((&digest).into()).await.expect("stat"), None);
        let read = registry
            .read_blob(&a, &digest, |_| Ok(None))
            .await
            .expect("read");
        assert_eq!(collect(read.body).await, data);
        // Again, monolithically, into another repository: the first copy is kept.
        registry
            .put_blob(&b, &digest, body(&data))
            .await
            .expect("push again");
        assert_eq!(
            meta.linked_blob(&b, &digest).await.expect("linked"),
            Some(first)
        );
        assert_eq!(
            store.keys_under("objects/").await,
            vec![key.clone()],
            "the surplus copy was deleted"
        );
        // A node configured without keys pushes the same bytes by digest: linked to the
        // key as well, and its copy at the digest's path removed.
        let by_digest = Registry::new(
            Arc::new(store.as_ref().clone().with_blob_keys(false)),
            meta.clone(),
            Settings::default(),
        );
        let c = repo("keys/c");
        by_digest
            .put_blob(&c, &digest, body(&data))
            .await
            .expect("push by digest");
        assert_eq!(
            meta.linked_blob(&c, &digest)
                .await
                .expect("linked")
                .and_then(|b| b.key),
            Some(key)
        );
        assert_eq!(store.stat((&digest).into()).await.expect("stat"), None);
        assert!(store.keys_under("blobs/").await.is_empty());
    }

    /// A closing PUT cut off mid-commit (its request future dropped) releases the
    /// upload's commit claim at once, so a retried PUT does not wait for its lease.
    #[tokio::test]
    async fn a_cut_off_commit_releases_its_claim() {
        use crate::meta::Maintenance;
        use crate::registry::gc::race::Pause;
        let (_dir, store, meta, registry) = on_seaweedfs(None).await;
        assert!(
            store.may_hold_keyed_uploads(),
            "every S3 node serializes commits"
        );
        let a = repo("keys/cut");
        let data = Bytes::from_static(b"a layer whose closing PUT is cut off");
        let digest = Digest::of(Algorithm::Sha256, &data);
        let upload = registry
            .start_upload(&a, Algorithm::Sha256)
            .await
            .expect("start");
        let pause = Pause::at("upload:committed");
        let (committing, id, d, r) = (
            registry.clone(),
            upload.id.clone(),
            digest.clone(),
            a.clone(),
        );
        let put = tokio::spawn(pause.clone().scope(async move {
            let body: ByteStream = Box::pin(futures_util::stream::once(async move { Ok(data) }));
            committing
                .finish_upload(&r, &id, &d, None, Some(body))
                .await
        }));
        pause.reached.notified().await;
        let claim = format!("upload-commit {}", upload.id);
        assert!(
            meta.claim_job(&claim, "a retry", Duration::from_secs(60))
                .await
                .expect("claim")
                .is_err(),
            "held while the commit runs"
        );
        put.abort();
        let _ = put.await;
        let started = std::time::Instant::now();
        loop {
            if meta
                .claim_job(&claim, "a retry", Duration::from_secs(60))
                .await
                .expect("claim")
                .is_ok()
            {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "the claim was released"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A blob metadata records at a key of its own is read, ranged, redirected to,
    /// mounted and served from that key, never from the digest's path; a later commit of
    /// the same digest by digest keeps the key.
    #[tokio::test]
    async fn blobs_recorded_at_keys_are_read_there() {
        let (_dir, store, meta, registry) = on_seaweedfs(None).await;
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let digest = Digest::of(Algorithm::Sha256, &data);
        let key = "objects/ke/a-push-of-its-own";
        store
            .put_at(key, Bytes::from(data.clone()))
            .await
            .expect("put");
        let (a, b, c) = (repo("keys/a"), repo("keys/b"), repo("keys/c"));
        meta.link_blob_at(&a, &digest, data.len() as u64, Some(key), &[])
            .await
            .expect("link");

        assert_eq!(
            registry.stat_blob(&a, &digest).await.expect("stat"),
            data.len() as u64
        );
        let read = registry
            .read_blob(&a, &digest, |_| Ok(None))
            .await
            .expect("read");
        assert_eq!(collect(read.body).await, data);
        let range = ByteRange { start: 10, end: 20 };
        let read = registry
            .read_blob(&a, &digest, |_| Ok(Some(range)))
            .await
            .expect("range");
        assert_eq!(collect(read.body).await, data[10..=20].to_vec());
        let url = registry
            .blob_redirect(&a, &digest)
            .await
            .expect("redirect")
            .expect("a URL");
        assert!(url.contains(key), "{url}");
        let fetched = reqwest::get(&url).await.expect("follow").bytes().await;
        assert_eq!(fetched.expect("body").to_vec(), data);

        assert!(registry
            .mount_blob(&b, &digest, Some(&a))
            .await
            .expect("mount"));
        let read = registry
            .read_blob(&b, &digest, |_| Ok(None))
            .await
            .expect("read the mount");
        assert_eq!(collect(read.body).await, data);
        assert_eq!(store.stat((&digest).into()).await.expect("stat"), None);

        // The same bytes pushed by digest: the push succeeds and the key stays.
        let body: ByteStream = Box::pin(futures_util::stream::once(futures_util::future::ready(
            Ok(Bytes::from(data.clone())),
        )));
        registry.put_blob(&c, &digest, body).await.expect("push");
        let want = Some(BlobRecord {
            size: data.len() as u64,
            key: Some(key.to_string()),
        });
        assert_eq!(meta.linked_blob(&c, &digest).await.expect("linked"), want);
        let read = registry
            .read_blob(&c, &digest, |_| Ok(None))
            .await
            .expect("read the push");
        assert_eq!(collect(read.body).await, data);
    }
}
