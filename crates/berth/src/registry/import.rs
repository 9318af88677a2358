//! Content that arrives from outside the HTTP API (the `berth import` command): a blob
//! from a file, verified against its digest and linked into a repository, and the
//! question whether a repository already holds a manifest. Manifests themselves go
//! through [`Registry::put_manifest`], so imported content is validated exactly as a push.
//!
//! Like the rest of `registry/`, this knows no file layout of its own: the file to bring
//! in is named by its caller, and the blob store decides how it is stored.

use super::{Registry, Result};
use crate::storage::Ingest;
use oci::{Digest, RepoName};
use std::path::Path;

/// What [`Registry::import_blob`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobImport {
    /// The store already had the blob: it was only linked into the repository.
    AlreadyPresent { size: u64 },
    /// The blob was brought in, by a hard link or a copy.
    Stored { size: u64, how: Ingest },
}

impl Registry {
    /// Bring the file `source` in as blob `digest` of `repo`. The content is hashed and
    /// must match `digest`, or nothing is stored or linked. A blob the store already has
    /// is not read again.
    pub async fn import_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        source: &Path,
    ) -> Result<BlobImport> {
        // Always recorded at the digest's own path: a key already recorded for the digest
        // stays (and is read), and an import never names another row's key.
        if let Some(size) = self.blobs.stat(digest.into()).await? {
            let key = super::blobs::record_blob(&*self.meta, repo, digest, size, None, &[]).await?;
            // Garbage collection may have swept the file between the stat and the link
            // (see `registry/gc.rs`); then it is brought in below after all.
            if key.is_some() || self.blobs.stat(digest.into()).await?.is_some() {
                return Ok(BlobImport::AlreadyPresent { size });
            }
        }
        let (size, how) = self.blobs.import_file(source, digest).await?;
        let key = super::blobs::record_blob(&*self.meta, repo, digest, size, None, &[]).await?;
        if key.is_some() {
            // Recorded at a key of its own already: the import's copy is surplus.
            super::blobs::drop_digest_copy(&*self.blobs, digest).await;
            return Ok(BlobImport::AlreadyPresent { size });
        }
        if self.blobs.stat(digest.into()).await?.is_none() {
            // Swept between the import and the link: the link is there now, so a second
            // import stays.
            self.blobs.import_file(source, digest).await?;
        }
        Ok(BlobImport::Stored { size, how })
    }

    /// Whether `repo` holds the manifest `digest`.
    pub async fn has_manifest(&self, repo: &RepoName, digest: &Digest) -> Result<bool> {
        let found = self
            .meta
            .manifests_exist(repo, std::slice::from_ref(digest))
            .await?;
        Ok(found.first().copied().unwrap_or(false))
    }
}

#[cfg(test)]
mod tests {
    use super::BlobImport;
    use crate::meta::sqlite::SqliteMeta;
    use crate::registry::{Registry, Settings};
    use crate::storage::memory::MemoryBlobStore;
    use oci::{Algorithm, Digest, RepoName};
    use std::sync::Arc;

    #[tokio::test]
    async fn imported_blob_is_verified_linked_and_not_read_twice() {
        let dir = tempfile::tempdir().expect("tempdir");
        let meta = SqliteMeta::open(&dir.path().join("berth.db"))
            .await
            .expect("meta");
        let registry = Registry::new(
            Arc::new(MemoryBlobStore::new()),
            Arc::new(meta),
            Settings::default(),
        );
        let repo: RepoName = "library/app".parse().expect("name");
        let file = dir.path().join("data");
        std::fs::write(&file, b"layer bytes").expect("write");
        let digest = Digest::of(Algorithm::Sha256, b"layer bytes");

        let first = registry
            .import_blob(&repo, &digest, &file)
            .await
            .expect("import");
        assert!(matches!(first, BlobImport::Stored { size: 11, .. }));
        assert_eq!(registry.stat_blob(&repo, &digest).await.expect("stat"), 11);
        let again = registry
            .import_blob(&repo, &digest, &file)
            .await
            .expect("again");
        assert_eq!(again, BlobImport::AlreadyPresent { size: 11 });

        let wrong = Digest::of(Algorithm::Sha256, b"other bytes");
        assert!(registry.import_blob(&repo, &wrong, &file).await.is_err());
        assert!(registry.stat_blob(&repo, &wrong).await.is_err());
    }
}
