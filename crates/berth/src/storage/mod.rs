//! Blob bytes: content-addressed blobs and in-progress upload files, behind the
//! [`BlobStore`] trait. Backends: [`fs::FsBlobStore`] (default) and
//! [`memory::MemoryBlobStore`] (tests) and [`s3::S3BlobStore`] (S3-compatible buckets).
//!
//! A backend writes an upload while hashing it in the same pass, and only makes a blob
//! visible under its digest after the registry has verified it (`commit_upload`), atomically
//! and durably. This module knows nothing of HTTP, repositories, manifests or SQL: it sees
//! digests, upload ids and byte streams.

pub mod fs;
pub mod memory;
pub mod s3;
#[cfg(test)]
mod testsuite;

use bytes::Bytes;
use futures_util::Stream;
use oci::{Algorithm, Digest, Hasher};
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;

/// A stream of bytes going into or out of the store.
pub type ByteStream = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

/// An inclusive byte range `start..=end` within a blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    pub start: u64,
    pub end: u64,
}

impl ByteRange {
    pub fn byte_count(&self) -> u64 {
        self.end - self.start + 1
    }
}

/// How far an upload has got: its size and the hash of everything in it.
#[derive(Debug, Clone)]
pub struct UploadProgress {
    pub size: u64,
    pub hasher: Hasher,
}

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("blob not found in storage")]
    BlobNotFound,
    #[error("upload not found in storage")]
    UploadNotFound,
    #[error("upload holds {actual} bytes, the write expected {expected}")]
    OffsetMismatch { expected: u64, actual: u64 },
    #[error("upload would exceed the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("reading the request body failed: {0}")]
    Body(io::Error),
    #[error("invalid upload id")]
    InvalidUploadId,
    #[error("storage I/O error: {0}")]
    Io(#[from] io::Error),
    /// The storage service cannot be reached or answers that it is overloaded (an
    /// object store's connection failures, timeouts and 5xx answers).
    #[error("{0}")]
    Unavailable(String),
    #[error("content of {path} has digest {actual}, not {expected}: the file is corrupt; nothing was stored")]
    DigestMismatch {
        path: PathBuf,
        expected: Digest,
        actual: Digest,
    },
    #[error("cannot read {path}: {source}")]
    Source { path: PathBuf, source: io::Error },
    /// A keyed upload's bytes cannot be read back before its commit (its parts are an
    /// object store's unfinished multipart upload): a re-hash with another algorithm is
    /// left to the commit, which verifies the digest itself, and a copy of the open
    /// upload is not possible.
    #[error("upload is written to a key of its own and cannot be read before its commit")]
    KeyedUploadUnreadable,
    /// An upload's stored parts are not the ones its record names (a concurrent append
    /// at the same offset replaced one): it can never be committed as recorded.
    #[error("{0}")]
    PartsReplaced(String),
}

impl StorageError {
    /// The storage service is unreachable or overloaded: worth a retry later.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StorageError::Unavailable(_))
    }

    /// The filesystem or object store ran out of space (or quota).
    pub fn is_out_of_space(&self) -> bool {
        match self {
            StorageError::Io(e) | StorageError::Source { source: e, .. } => out_of_space(e),
            _ => false,
        }
    }
}

/// ENOSPC or EDQUOT.
pub fn out_of_space(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}

/// How [`BlobStore::import_file`] brought a file in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingest {
    /// A hard link to the source file: no bytes copied.
    Linked,
    /// A copy of the source file (another filesystem, or linking was refused).
    Copied,
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// A committed blob as [`BlobStore::list`] reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredBlob {
    pub digest: Digest,
    pub size: u64,
    /// When it was committed (or last re-committed).
    pub modified: std::time::SystemTime,
}

/// An upload as [`BlobStore::list_uploads`] reports it: open or committed, by any of its
/// names.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredUpload {
    pub id: String,
    /// When it was last written (or committed): the latest of its names.
    pub modified: std::time::SystemTime,
}

/// A committed blob that garbage collection moved aside ([`BlobStore::hide`]): no longer
/// readable under its digest, not yet gone.
#[derive(Debug, Clone, PartialEq)]
pub struct HiddenBlob {
    pub digest: Digest,
    /// The backend's name for the moved-aside copy (unique per hide).
    pub name: String,
}

/// A committed blob as the stores are asked for it: its digest, and the object key the
/// metadata database recorded for it. Every blob today is kept at its digest's own path
/// (`key: None`); the own-key layout planned for S3 (`objects/...`, written once, see
/// ARCHITECTURE.md "A cluster") will hand stores the key from the blob's row. Stores that
/// keep blobs only by digest refuse a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobRef<'a> {
    pub digest: &'a Digest,
    pub key: Option<&'a str>,
}

impl<'a> From<&'a Digest> for BlobRef<'a> {
    /// The blob at its digest's own path.
    fn from(digest: &'a Digest) -> Self {
        BlobRef { digest, key: None }
    }
}

impl BlobRef<'_> {
    /// For stores that keep blobs by digest only: a key is a caller's error.
    pub fn by_digest_only(&self) -> Result<&Digest> {
        match self.key {
            None => Ok(self.digest),
            Some(key) => Err(StorageError::Io(io::Error::other(format!(
                "blob {} was asked for at key {key}, but this store keeps blobs only at their digests",
                self.digest
            )))),
        }
    }
}

/// Where blob bytes live. Small on purpose (house rule 5).
#[async_trait::async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// Size of a committed blob, or `None`.
    async fn stat(&self, blob: BlobRef<'_>) -> Result<Option<u64>>;
    /// Whether [`Self::redirect_url`] gives URLs at all (checked before metadata is
    /// asked where a blob is).
    fn redirects(&self) -> bool {
        false
    }
    /// Where a client may fetch a committed blob directly (a presigned URL of an object
    /// store), instead of through Berth; `None` (the default) serves it through Berth.
    fn redirect_url(&self, _blob: BlobRef<'_>) -> Option<String> {
        None
    }
    /// Stream a committed blob, or the given range of it.
    async fn get(&self, blob: BlobRef<'_>, range: Option<ByteRange>) -> Result<ByteStream>;
    /// Remove a committed blob; `false` if it was not there.
    async fn delete(&self, blob: BlobRef<'_>) -> Result<bool>;
    /// Move a committed blob aside, atomically, under a name no other call gets: from
    /// then on it is not readable under its digest, and a blob committed again under the
    /// digest is a separate file. `None` if there was no blob.
    async fn hide(&self, digest: &Digest) -> Result<Option<HiddenBlob>>;
    /// Put a hidden blob back under its digest, unless a blob of that digest exists again
    /// (same content: the hidden copy is then dropped). `true` if it was put back; an
    /// already purged or restored one is not an error.
    async fn unhide(&self, hidden: &HiddenBlob) -> Result<bool>;
    /// Remove a hidden blob for good; `false` if it was not there.
    async fn purge(&self, hidden: &HiddenBlob) -> Result<bool>;
    /// Every hidden blob (those an interrupted garbage collection left behind).
    async fn hidden(&self) -> Result<Vec<HiddenBlob>>;
    /// Every committed blob (for garbage collection), in no particular order. Files
    /// that are not blobs are skipped.
    async fn list(&self) -> Result<Vec<StoredBlob>>;

    /// Create an empty upload.
    async fn create_upload(&self, id: &str) -> Result<()>;
    /// Create an empty upload whose commit may leave the blob at a key of its own
    /// instead of its digest's path, so the store writes its bytes once (an object
    /// store's multipart upload, completed in place). Such an upload cannot be read
    /// back while open ([`Self::read_upload`]) nor always re-hashed
    /// ([`StorageError::KeyedUploadUnreadable`]; its commit then verifies the digest itself).
    /// The default, for stores that keep blobs by digest only: [`Self::create_upload`].
    async fn create_keyed_upload(&self, id: &str) -> Result<()> {
        self.create_upload(id).await
    }
    /// Whether this store opens keyed uploads ([`Self::create_keyed_upload`]).
    fn writes_keys(&self) -> bool {
        false
    }
    /// Whether an upload this store holds may be keyed, whatever this node writes (a
    /// node configured without keys still commits the keyed uploads others opened): a
    /// keyed upload completes at one key whatever digest its closing PUT names, so its
    /// commits must be serialized.
    fn may_hold_keyed_uploads(&self) -> bool {
        self.writes_keys()
    }
    /// Bytes written to an upload so far.
    async fn upload_size(&self, id: &str) -> Result<u64>;
    /// Stream `range` of an upload's bytes written so far (the pull-through cache serves
    /// a blob while it is still being fetched). The range must lie within what was written.
    async fn read_upload(&self, id: &str, range: ByteRange) -> Result<ByteStream>;
    /// Append `body` to an upload that must hold exactly `progress.size` bytes, hashing it
    /// into `progress.hasher` as it is written, refusing to grow past `limit` bytes. On any
    /// error the upload is cut back to where it was. The appended data is durable when this
    /// returns.
    async fn append_upload(
        &self,
        id: &str,
        progress: UploadProgress,
        body: ByteStream,
        limit: u64,
    ) -> Result<UploadProgress>;
    /// Hash an upload's content from the start (after a restart, or on another node).
    /// A keyed upload whose saved hash state is of another algorithm answers
    /// [`StorageError::KeyedUploadUnreadable`].
    async fn rehash_upload(&self, id: &str, algorithm: Algorithm) -> Result<UploadProgress>;
    /// Make a verified upload visible as `digest`, atomically and durably. From then on
    /// the upload is closed: append, size, rehash and read answer
    /// [`StorageError::UploadNotFound`], so nothing can ever change the committed bytes.
    /// Its bytes are kept until [`BlobStore::delete_upload`], so the registry can commit
    /// them again (this method, again) if garbage collection took the blob away before
    /// the upload was linked (see `registry/gc.rs`). Committing content that already
    /// exists is not an error. Returns where the blob now is: `None` at its digest's
    /// path, or the key of its own a keyed upload completed at (which the caller
    /// records; the commit verified that the key holds exactly `digest`'s bytes, and
    /// [`Self::delete_upload`] never removes it).
    async fn commit_upload(&self, id: &str, digest: &Digest) -> Result<Option<String>>;
    /// Remove an upload, open or committed, with every name it has; absent uploads are
    /// not an error.
    async fn delete_upload(&self, id: &str) -> Result<()>;
    /// Every upload in storage, open or committed and not yet deleted (upload purging
    /// finds those nothing records), one entry per id, in no particular order.
    async fn list_uploads(&self) -> Result<Vec<StoredUpload>>;
    /// When one upload was last written (or committed), by the latest of its names;
    /// `None` when it has none left.
    async fn upload_written(&self, id: &str) -> Result<Option<std::time::SystemTime>>;

    /// Abort the object store's multipart uploads under the store's own key spaces that
    /// were started before `before` (with `dry_run`, only count them); stores without
    /// multipart uploads have none. A server-side copy cut off by a crash or a lost
    /// connection leaves one behind: invisible to listings, its parts still stored (and
    /// billed) until aborted. Returns how many it found.
    async fn abort_stale_multipart(
        &self,
        _before: std::time::SystemTime,
        _dry_run: bool,
    ) -> Result<u64> {
        Ok(0)
    }

    /// Bring the file at `source` (outside the store) in as blob `digest`: a hard link when
    /// the backend can make one, a copy otherwise. Either way the stored content is hashed
    /// first and must match `digest`, or nothing is stored ([`StorageError::DigestMismatch`]).
    /// The source file is never changed. Returns the blob's size.
    async fn import_file(&self, source: &Path, digest: &Digest) -> Result<(u64, Ingest)>;
}

/// Upload ids are generated by the registry (UUIDs); anything else is refused before it
/// can reach a path.
pub fn valid_upload_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}
