//! Reading and deleting blobs within a repository.

use super::events::{Action, Target};
use super::{Registry, RegistryError, Result};
use crate::meta::{MetaError, MetaStore, NewEvent};
use crate::storage::{ByteRange, ByteStream, StorageError};
use oci::{Digest, RepoName};
use std::time::{Duration, Instant};

/// How long recording a blob waits for a garbage collection that is removing the same
/// digest's older file (it holds the digest's claim for the length of one object-store
/// delete, or copy and delete); past this the push fails with 503 and can be retried.
pub const COLLECTING_WAIT: Duration = Duration::from_secs(300);

/// Record a blob whose file was just committed and link it into `repo` (with its outbox
/// rows). While a garbage collection is removing an older file of the same digest this
/// waits for it to finish (polling, up to [`COLLECTING_WAIT`]); the caller then finds
/// the file gone and commits its bytes again (see `gc.rs`).
pub(super) async fn record_blob(
    meta: &dyn MetaStore,
    repo: &RepoName,
    digest: &Digest,
    size: u64,
    events: &[NewEvent],
) -> crate::meta::Result<()> {
    let started = Instant::now();
    let mut pause = Duration::from_millis(50);
    loop {
        match meta.link_blob(repo, digest, size, events).await {
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
            (Some(size), Some(p)) => {
                self.proxy_hit(p, repo, digest).await;
                size
            }
            (Some(size), None) => size,
            (None, Some(p)) => self.proxy_blob_size(p, repo, digest).await?,
            (None, None) => return Err(RegistryError::BlobUnknown(digest.clone())),
        };
        self.emit_blob_pull(repo, digest, size);
        Ok(size)
    }

    async fn linked_size(&self, repo: &RepoName, digest: &Digest) -> Result<u64> {
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
        let Some(url) = self.blobs.redirect_url(digest.into()) else {
            return Ok(None);
        };
        let Some(size) = self.meta.linked_blob(repo, digest).await? else {
            if self.proxy_for(repo).await.is_some() {
                return Ok(None);
            }
            return Err(RegistryError::BlobUnknown(digest.clone()));
        };
        if let Some(p) = self.proxy_for(repo).await {
            self.proxy_hit(&p, repo, digest).await;
        }
        self.emit_blob_pull(repo, digest, size);
        Ok(Some(url))
    }

    /// [`Registry::read_blob`] of a blob linked into `repo`.
    pub(super) async fn read_linked_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        resolve: impl FnOnce(u64) -> Result<Option<ByteRange>>,
    ) -> Result<BlobRead> {
        let size = self.linked_size(repo, digest).await?;
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
            .get(digest.into(), range)
            .await
            .map_err(|e| match e {
                StorageError::BlobNotFound => {
                    tracing::error!(%digest, "blob is linked in metadata but missing from storage");
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
