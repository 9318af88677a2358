//! In-memory blob store for tests. Holds everything in RAM; not for production use.

use super::{BlobRef, ByteRange, ByteStream, Result, StorageError, UploadProgress};
use bytes::Bytes;
use futures_util::StreamExt;
use oci::{Algorithm, Digest};
use std::collections::HashMap;
use std::sync::Mutex;

#[derive(Default)]
pub struct MemoryBlobStore {
    blobs: Mutex<HashMap<Digest, Bytes>>,
    uploads: Mutex<HashMap<String, Vec<u8>>>,
    /// Committed uploads' bytes, kept until the upload is deleted (the fs backend's
    /// `uploads/<id>.kept`): no append, size or read finds them.
    kept: Mutex<HashMap<String, Vec<u8>>>,
    /// When each upload was last written or committed.
    touched: Mutex<HashMap<String, std::time::SystemTime>>,
    /// When each blob was committed.
    committed: Mutex<HashMap<Digest, std::time::SystemTime>>,
    /// Blobs moved aside by `hide`, by name.
    hidden: Mutex<HashMap<String, (Digest, Bytes, std::time::SystemTime)>>,
}

impl MemoryBlobStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn touch(&self, id: &str) {
        lock(&self.touched).insert(id.to_string(), std::time::SystemTime::now());
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[async_trait::async_trait]
impl super::BlobStore for MemoryBlobStore {
    async fn stat(&self, blob: BlobRef<'_>) -> Result<Option<u64>> {
        let digest = blob.by_digest_only()?;
        Ok(lock(&self.blobs).get(digest).map(|b| b.len() as u64))
    }

    async fn get(&self, blob: BlobRef<'_>, range: Option<ByteRange>) -> Result<ByteStream> {
        let digest = blob.by_digest_only()?;
        let blob = lock(&self.blobs)
            .get(digest)
            .cloned()
            .ok_or(StorageError::BlobNotFound)?;
        let blob = match range {
            Some(r) => blob.slice(r.start as usize..=r.end as usize),
            None => blob,
        };
        Ok(Box::pin(futures_util::stream::once(
            async move { Ok(blob) },
        )))
    }

    async fn delete(&self, blob: BlobRef<'_>) -> Result<bool> {
        let digest = blob.by_digest_only()?;
        lock(&self.committed).remove(digest);
        Ok(lock(&self.blobs).remove(digest).is_some())
    }

    async fn hide(&self, digest: &Digest) -> Result<Option<super::HiddenBlob>> {
        // One lock at a time (`list` takes `committed` before `blobs`).
        let Some(bytes) = lock(&self.blobs).remove(digest) else {
            return Ok(None);
        };
        let at = lock(&self.committed)
            .remove(digest)
            .unwrap_or(std::time::UNIX_EPOCH);
        let name = format!("{}-{}", digest.hex(), uuid::Uuid::new_v4());
        lock(&self.hidden).insert(name.clone(), (digest.clone(), bytes, at));
        Ok(Some(super::HiddenBlob {
            digest: digest.clone(),
            name,
        }))
    }

    async fn unhide(&self, hidden: &super::HiddenBlob) -> Result<bool> {
        let Some((digest, bytes, at)) = lock(&self.hidden).remove(&hidden.name) else {
            return Ok(false);
        };
        let restored = {
            let mut blobs = lock(&self.blobs);
            if blobs.contains_key(&digest) {
                false
            } else {
                blobs.insert(digest.clone(), bytes);
                true
            }
        };
        if restored {
            lock(&self.committed).entry(digest).or_insert(at);
        }
        Ok(restored)
    }

    async fn purge(&self, hidden: &super::HiddenBlob) -> Result<bool> {
        Ok(lock(&self.hidden).remove(&hidden.name).is_some())
    }

    async fn hidden(&self) -> Result<Vec<super::HiddenBlob>> {
        Ok(lock(&self.hidden)
            .iter()
            .map(|(name, (digest, _, _))| super::HiddenBlob {
                digest: digest.clone(),
                name: name.clone(),
            })
            .collect())
    }

    async fn list(&self) -> Result<Vec<super::StoredBlob>> {
        let committed = lock(&self.committed);
        Ok(lock(&self.blobs)
            .iter()
            .map(|(d, b)| super::StoredBlob {
                digest: d.clone(),
                size: b.len() as u64,
                modified: committed.get(d).copied().unwrap_or(std::time::UNIX_EPOCH),
            })
            .collect())
    }

    async fn create_upload(&self, id: &str) -> Result<()> {
        lock(&self.uploads).insert(id.to_string(), Vec::new());
        self.touch(id);
        Ok(())
    }

    async fn upload_size(&self, id: &str) -> Result<u64> {
        lock(&self.uploads)
            .get(id)
            .map(|u| u.len() as u64)
            .ok_or(StorageError::UploadNotFound)
    }

    async fn read_upload(&self, id: &str, range: ByteRange) -> Result<ByteStream> {
        let upload = lock(&self.uploads)
            .get(id)
            .cloned()
            .ok_or(StorageError::UploadNotFound)?;
        let end = (range.end as usize + 1).min(upload.len());
        let start = (range.start as usize).min(end);
        let bytes = Bytes::copy_from_slice(&upload[start..end]);
        Ok(Box::pin(futures_util::stream::once(
            async move { Ok(bytes) },
        )))
    }

    async fn append_upload(
        &self,
        id: &str,
        progress: UploadProgress,
        mut body: ByteStream,
        limit: u64,
    ) -> Result<UploadProgress> {
        let actual = self.upload_size(id).await?;
        if actual != progress.size {
            return Err(StorageError::OffsetMismatch {
                expected: progress.size,
                actual,
            });
        }
        let mut data = Vec::new();
        let mut hasher = progress.hasher;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(StorageError::Body)?;
            if progress.size + (data.len() + chunk.len()) as u64 > limit {
                return Err(StorageError::TooLarge { limit });
            }
            hasher.update(&chunk);
            data.extend_from_slice(&chunk);
        }
        let mut uploads = lock(&self.uploads);
        let u = uploads.get_mut(id).ok_or(StorageError::UploadNotFound)?;
        if u.len() as u64 != progress.size {
            return Err(StorageError::OffsetMismatch {
                expected: progress.size,
                actual: u.len() as u64,
            });
        }
        u.extend_from_slice(&data);
        let size = u.len() as u64;
        drop(uploads);
        self.touch(id);
        Ok(UploadProgress { size, hasher })
    }

    async fn rehash_upload(&self, id: &str, algorithm: Algorithm) -> Result<UploadProgress> {
        let uploads = lock(&self.uploads);
        let u = uploads.get(id).ok_or(StorageError::UploadNotFound)?;
        let mut hasher = algorithm.hasher();
        hasher.update(u);
        Ok(UploadProgress {
            size: u.len() as u64,
            hasher,
        })
    }

    async fn commit_upload(&self, id: &str, digest: &Digest) -> Result<Option<String>> {
        self.commit_at_digest(id, digest).await.map(|()| None)
    }

    async fn import_file(
        &self,
        source: &std::path::Path,
        digest: &Digest,
    ) -> Result<(u64, super::Ingest)> {
        let bytes = std::fs::read(source).map_err(|e| StorageError::Source {
            path: source.to_path_buf(),
            source: e,
        })?;
        let actual = Digest::of(digest.algorithm(), &bytes);
        if &actual != digest {
            return Err(StorageError::DigestMismatch {
                path: source.to_path_buf(),
                expected: digest.clone(),
                actual,
            });
        }
        let size = bytes.len() as u64;
        lock(&self.blobs).insert(digest.clone(), Bytes::from(bytes));
        Ok((size, super::Ingest::Copied))
    }

    async fn list_uploads(&self) -> Result<Vec<super::StoredUpload>> {
        let mut ids: Vec<String> = lock(&self.uploads).keys().cloned().collect();
        ids.extend(lock(&self.kept).keys().cloned());
        ids.sort_unstable();
        ids.dedup();
        let touched = lock(&self.touched);
        Ok(ids
            .into_iter()
            .map(|id| super::StoredUpload {
                modified: touched.get(&id).copied().unwrap_or(std::time::UNIX_EPOCH),
                id,
            })
            .collect())
    }

    async fn upload_written(&self, id: &str) -> Result<Option<std::time::SystemTime>> {
        let present = lock(&self.uploads).contains_key(id) || lock(&self.kept).contains_key(id);
        Ok(present.then(|| {
            lock(&self.touched)
                .get(id)
                .copied()
                .unwrap_or(std::time::UNIX_EPOCH)
        }))
    }

    async fn delete_upload(&self, id: &str) -> Result<()> {
        lock(&self.uploads).remove(id);
        lock(&self.kept).remove(id);
        lock(&self.touched).remove(id);
        Ok(())
    }
}

impl MemoryBlobStore {
    /// [`super::BlobStore::commit_upload`]: always at the digest's own path.
    async fn commit_at_digest(&self, id: &str, digest: &Digest) -> Result<()> {
        // The first commit moves the upload to its kept bytes; later ones commit those.
        let open = lock(&self.uploads).remove(id);
        let data = {
            let mut kept = lock(&self.kept);
            if let Some(open) = open {
                kept.insert(id.to_string(), open);
            }
            kept.get(id).cloned().ok_or(StorageError::UploadNotFound)?
        };
        self.touch(id);
        lock(&self.blobs).insert(digest.clone(), Bytes::from(data));
        lock(&self.committed).insert(digest.clone(), std::time::SystemTime::now());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn shared_suite() {
        let store = super::MemoryBlobStore::new();
        crate::storage::testsuite::run(&store).await;
        crate::storage::testsuite::import_file(&store).await;
        crate::storage::testsuite::refuses_keys(&store).await;
    }
}
