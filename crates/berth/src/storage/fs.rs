//! Filesystem blob store.
//!
//! Layout under the root directory:
//! ```text
//! <root>/
//!   blobs/<algorithm>/<first two hex>/<hex>   committed, immutable, content-addressed
//!   uploads/<id[0..2]>/<upload id>           in-progress upload data (appends go here)
//!   uploads/<id[0..2]>/<upload id>.kept       a committed upload's bytes, until deleted
//!   uploads/<id[0..2]>/<upload id>.commit     a commit's staging link (transient)
//!   trash/<algorithm>-<hex>-<uuid>            blobs garbage collection moved aside
//! ```
//! Writes go to `uploads/`, are fsynced, and become visible when the upload is renamed to
//! its kept name and a hard link of that is renamed into `blobs/`, followed by an fsync of
//! each directory, so a crash never leaves a partial blob under a digest. The kept file
//! stays until the registry deletes the upload (so it can commit again if garbage
//! collection took the blob meanwhile); appends, sizes and reads only open the upload's
//! own name, so after a commit they find no upload and nothing can write into the file
//! the blob shares. Reads and writes run on blocking threads with large buffers.

use super::{BlobRef, ByteRange, ByteStream, Ingest, Result, StorageError, UploadProgress};
use bytes::Bytes;
use futures_util::StreamExt;
use oci::{Algorithm, Digest, Hasher};
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::{self, IoSlice, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Bytes gathered before one write to disk (and read at once when rehashing).
const IO_CHUNK: usize = 1024 * 1024;
/// Size of each read when serving a blob: small enough that the bytes are still in the
/// CPU cache when the socket write copies them (measured: 128 KiB beat 256 KiB and 1 MiB
/// on 8 concurrent 64 MiB GETs).
const READ_CHUNK: usize = 128 * 1024;
/// Chunks read ahead of the network per GET (in flight or waiting to be sent).
const READ_AHEAD: usize = 8;
/// Chunks one blocking call reads (fewer hand-offs to the reader pool per GiB).
const CHUNKS_PER_READ: usize = 4;

pub struct FsBlobStore {
    root: PathBuf,
}

impl FsBlobStore {
    /// Open (creating if needed) a store rooted at `root`.
    pub fn open(root: &Path) -> io::Result<FsBlobStore> {
        std::fs::create_dir_all(root.join("blobs"))?;
        std::fs::create_dir_all(root.join("uploads"))?;
        make_fan_out(&root.join("uploads"))?;
        std::fs::create_dir_all(root.join("trash"))?;
        Ok(FsBlobStore {
            root: root.to_path_buf(),
        })
    }

    /// Bring uploads of the flat layout of older versions (`uploads/<id>`) into the
    /// fanned-out one, so sessions in flight across an upgrade go on; how many moved.
    /// For the server to call at start-up only: another process (a `garbage-collect`
    /// run beside an older server) must not move a live server's uploads.
    pub fn adopt_legacy_uploads(&self) -> io::Result<usize> {
        fan_out_legacy_uploads(&self.root.join("uploads"))
    }

    fn blob_path(&self, d: &Digest) -> PathBuf {
        let hex = d.hex();
        self.root
            .join("blobs")
            .join(d.algorithm().as_str())
            .join(&hex[..2])
            .join(hex)
    }

    fn hidden_path(&self, h: &super::HiddenBlob) -> Result<PathBuf> {
        let valid = h.name.starts_with(&format!(
            "{}-{}-",
            h.digest.algorithm().as_str(),
            h.digest.hex()
        )) && h
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !valid {
            return Err(StorageError::Io(io::Error::other(format!(
                "{:?} does not name a hidden copy of {}",
                h.name, h.digest
            ))));
        }
        Ok(self.root.join("trash").join(&h.name))
    }

    fn upload_path(&self, id: &str) -> Result<PathBuf> {
        if !super::valid_upload_id(id) {
            return Err(StorageError::InvalidUploadId);
        }
        Ok(self.upload_dir(id).join(id))
    }

    /// The directory an upload's files live in: fanned out by the id's first two
    /// characters, so no one directory holds every upload.
    fn upload_dir(&self, id: &str) -> PathBuf {
        self.root.join("uploads").join(id.get(..2).unwrap_or(id))
    }
}

fn not_found_as(e: io::Error, err: StorageError) -> StorageError {
    if e.kind() == io::ErrorKind::NotFound {
        err
    } else {
        StorageError::Io(e)
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StorageError::Io(io::Error::other(e)))?
}

/// The name an upload's file has once committed (`uploads/<id>.kept`): never opened for
/// appending, so a blob sharing its inode cannot change.
fn kept_path(upload: &Path) -> PathBuf {
    upload.with_extension("kept")
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

type WriteJob = tokio::task::JoinHandle<io::Result<(File, Hasher)>>;

/// Hash and write one batch on a blocking thread.
fn spawn_write(mut f: File, mut hasher: Hasher, mut bufs: Vec<Bytes>) -> WriteJob {
    tokio::task::spawn_blocking(move || {
        for b in &bufs {
            hasher.update(b);
        }
        write_all_vectored(&mut f, &mut bufs)?;
        Ok((f, hasher))
    })
}

async fn finish_write(job: WriteJob) -> Result<(File, Hasher)> {
    Ok(job
        .await
        .map_err(|e| StorageError::Io(io::Error::other(e)))??)
}

fn writer_lost() -> StorageError {
    StorageError::Io(io::Error::other("upload writer state lost"))
}

/// Write all of `bufs` (which may be partially written by each call).
fn write_all_vectored(f: &mut File, bufs: &mut Vec<Bytes>) -> io::Result<()> {
    let mut slices: Vec<IoSlice<'_>> = bufs.iter().map(|b| IoSlice::new(b)).collect();
    let mut slices = &mut slices[..];
    while !slices.is_empty() {
        let n = f.write_vectored(slices)?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut slices, n);
    }
    bufs.clear();
    Ok(())
}

/// Put `source`'s content at `to` (a new path inside the store): a hard link if possible,
/// else a copy, fsynced. Returns the size, the content's digest and how it got there.
fn link_or_copy(source: &Path, to: &Path, algorithm: Algorithm) -> Result<(u64, Digest, Ingest)> {
    let src_err = |e: io::Error| StorageError::Source {
        path: source.to_path_buf(),
        source: e,
    };
    let (mut reader, mut writer, how) = match std::fs::hard_link(source, to) {
        Ok(()) => (File::open(to)?, None, Ingest::Linked),
        Err(e) if e.kind() == io::ErrorKind::NotFound && !source.exists() => {
            return Err(src_err(e))
        }
        // Another filesystem (EXDEV), or links refused: copy instead.
        Err(_) => (
            File::open(source).map_err(src_err)?,
            Some(OpenOptions::new().write(true).create_new(true).open(to)?),
            Ingest::Copied,
        ),
    };
    let mut hasher = algorithm.hasher();
    let mut buf = vec![0u8; IO_CHUNK];
    let mut size = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(src_err(e)),
        };
        hasher.update(&buf[..n]);
        if let Some(w) = writer.as_mut() {
            w.write_all(&buf[..n])?;
        }
        size += n as u64;
    }
    if let Some(w) = writer {
        w.sync_all()?;
    }
    Ok((size, hasher.finish(), how))
}

#[async_trait::async_trait]
impl super::BlobStore for FsBlobStore {
    async fn stat(&self, blob: BlobRef<'_>) -> Result<Option<u64>> {
        match tokio::fs::metadata(self.blob_path(blob.by_digest_only()?)).await {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn get(&self, blob: BlobRef<'_>, range: Option<ByteRange>) -> Result<ByteStream> {
        let path = self.blob_path(blob.by_digest_only()?);
        let file = blocking(move || {
            File::open(path).map_err(|e| not_found_as(e, StorageError::BlobNotFound))
        })
        .await?;
        Ok(self.stream_file(file, range))
    }

    async fn read_upload(&self, id: &str, range: ByteRange) -> Result<ByteStream> {
        let path = self.upload_path(id)?;
        let file = blocking(move || {
            File::open(path).map_err(|e| not_found_as(e, StorageError::UploadNotFound))
        })
        .await?;
        Ok(self.stream_file(file, Some(range)))
    }

    async fn delete(&self, blob: BlobRef<'_>) -> Result<bool> {
        match tokio::fs::remove_file(self.blob_path(blob.by_digest_only()?)).await {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    async fn list(&self) -> Result<Vec<super::StoredBlob>> {
        let root = self.root.join("blobs");
        blocking(move || {
            let mut out = Vec::new();
            let dirs = |p: &Path| -> io::Result<Vec<std::fs::DirEntry>> {
                match std::fs::read_dir(p) {
                    Ok(rd) => rd.collect(),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
                    Err(e) => Err(e),
                }
            };
            for alg in dirs(&root)? {
                for fan in dirs(&alg.path())? {
                    for file in dirs(&fan.path())? {
                        let name = format!(
                            "{}:{}",
                            alg.file_name().to_string_lossy(),
                            file.file_name().to_string_lossy()
                        );
                        let Ok(digest) = name.parse::<Digest>() else {
                            continue;
                        };
                        let meta = match file.metadata() {
                            Ok(m) if m.is_file() => m,
                            Ok(_) => continue,
                            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                            Err(e) => return Err(e.into()),
                        };
                        out.push(super::StoredBlob {
                            digest,
                            size: meta.len(),
                            modified: meta.modified()?,
                        });
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    async fn create_upload(&self, id: &str) -> Result<()> {
        let path = self.upload_path(id)?;
        let dir = self.upload_dir(id);
        let uploads = self.root.join("uploads");
        blocking(move || {
            let create = || OpenOptions::new().write(true).create_new(true).open(&path);
            match create() {
                Ok(_) => {}
                // An id outside the 256 hex prefixes made at start-up.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    std::fs::create_dir_all(&dir)?;
                    fsync_dir(&uploads)?;
                    create()?;
                }
                Err(e) => return Err(e.into()),
            }
            // The session is acknowledged to the client: its file must survive a crash.
            fsync_dir(&dir)?;
            Ok(())
        })
        .await
    }

    async fn upload_size(&self, id: &str) -> Result<u64> {
        let path = self.upload_path(id)?;
        match tokio::fs::metadata(path).await {
            Ok(m) => Ok(m.len()),
            Err(e) => Err(not_found_as(e, StorageError::UploadNotFound)),
        }
    }

    async fn append_upload(
        &self,
        id: &str,
        progress: UploadProgress,
        mut body: ByteStream,
        limit: u64,
    ) -> Result<UploadProgress> {
        let path = self.upload_path(id)?;
        let start = progress.size;
        let open_path = path.clone();
        let file = blocking(move || {
            let mut f = OpenOptions::new()
                .write(true)
                .open(&open_path)
                .map_err(|e| not_found_as(e, StorageError::UploadNotFound))?;
            let actual = f.metadata()?.len();
            if actual != start {
                return Err(StorageError::OffsetMismatch {
                    expected: start,
                    actual,
                });
            }
            f.seek(SeekFrom::Start(start))?;
            Ok(f)
        })
        .await?;

        // The network is read here, on the async side; each ~1 MiB batch goes to a blocking
        // thread that hashes and writes it in one pass while the next batch arrives. The
        // file and hash state travel with the batch and come back, so no thread ever waits
        // on a slow client.
        let mut idle: Option<(File, Hasher)> = Some((file, progress.hasher));
        let mut job: Option<WriteJob> = None;
        let mut pending: Vec<Bytes> = Vec::new();
        let mut pending_len = 0usize;
        let mut size = start;
        let outcome: Result<Hasher> = async {
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(StorageError::Body)?;
                size += chunk.len() as u64;
                if size > limit {
                    return Err(StorageError::TooLarge { limit });
                }
                pending_len += chunk.len();
                pending.push(chunk);
                if pending_len >= IO_CHUNK {
                    if let Some(j) = job.take() {
                        idle = Some(finish_write(j).await?);
                    }
                    let (f, h) = idle.take().ok_or_else(writer_lost)?;
                    job = Some(spawn_write(f, h, std::mem::take(&mut pending)));
                    pending_len = 0;
                }
            }
            if let Some(j) = job.take() {
                idle = Some(finish_write(j).await?);
            }
            let (f, h) = idle.take().ok_or_else(writer_lost)?;
            let (f, h) = finish_write(spawn_write(f, h, std::mem::take(&mut pending))).await?;
            blocking(move || {
                f.sync_data()?;
                Ok(h)
            })
            .await
        }
        .await;
        match outcome {
            Ok(hasher) => Ok(UploadProgress { size, hasher }),
            Err(e) => {
                // Let an in-flight write land, then cut back to where this append started,
                // so the upload stays as it was and resumable.
                if let Some(j) = job.take() {
                    let _ = j.await;
                }
                blocking(move || {
                    let f = OpenOptions::new().write(true).open(&path)?;
                    f.set_len(start)?;
                    f.sync_data()?;
                    Ok(())
                })
                .await?;
                Err(e)
            }
        }
    }

    async fn rehash_upload(&self, id: &str, algorithm: Algorithm) -> Result<UploadProgress> {
        let path = self.upload_path(id)?;
        blocking(move || {
            let mut f =
                File::open(&path).map_err(|e| not_found_as(e, StorageError::UploadNotFound))?;
            let mut hasher = algorithm.hasher();
            let mut buf = vec![0u8; IO_CHUNK];
            let mut size = 0u64;
            loop {
                let n = match f.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e.into()),
                };
                hasher.update(&buf[..n]);
                size += n as u64;
            }
            Ok(UploadProgress { size, hasher })
        })
        .await
    }

    async fn commit_upload(&self, id: &str, digest: &Digest) -> Result<Option<String>> {
        self.commit_at_digest(id, digest).await.map(|()| None)
    }

    async fn hide(&self, digest: &Digest) -> Result<Option<super::HiddenBlob>> {
        let hidden = super::HiddenBlob {
            digest: digest.clone(),
            name: format!(
                "{}-{}-{}",
                digest.algorithm().as_str(),
                digest.hex(),
                uuid::Uuid::new_v4()
            ),
        };
        let to = self.hidden_path(&hidden)?;
        match tokio::fs::rename(self.blob_path(digest), to).await {
            Ok(()) => Ok(Some(hidden)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn unhide(&self, hidden: &super::HiddenBlob) -> Result<bool> {
        let from = self.hidden_path(hidden)?;
        let to = self.blob_path(&hidden.digest);
        blocking(move || {
            let dir = to
                .parent()
                .ok_or_else(|| io::Error::other("blob path has no parent"))?;
            std::fs::create_dir_all(dir)?;
            // A link never replaces: a blob committed meanwhile (same content) stays.
            let restored = match std::fs::hard_link(&from, &to) {
                Ok(()) => true,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
                Err(e) => return Err(e.into()),
            };
            if restored {
                fsync_dir(dir)?;
            }
            match std::fs::remove_file(&from) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
            Ok(restored)
        })
        .await
    }

    async fn purge(&self, hidden: &super::HiddenBlob) -> Result<bool> {
        match tokio::fs::remove_file(self.hidden_path(hidden)?).await {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    async fn hidden(&self) -> Result<Vec<super::HiddenBlob>> {
        let dir = self.root.join("trash");
        blocking(move || {
            let entries = match std::fs::read_dir(&dir) {
                Ok(rd) => rd.collect::<io::Result<Vec<_>>>()?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
                Err(e) => return Err(e.into()),
            };
            let mut out = Vec::new();
            for entry in entries {
                let name = entry.file_name().to_string_lossy().into_owned();
                let mut parts = name.splitn(3, '-');
                let (Some(alg), Some(hex), Some(_)) = (parts.next(), parts.next(), parts.next())
                else {
                    continue;
                };
                if let Ok(digest) = format!("{alg}:{hex}").parse::<Digest>() {
                    out.push(super::HiddenBlob { digest, name });
                }
            }
            Ok(out)
        })
        .await
    }

    async fn import_file(&self, source: &Path, digest: &Digest) -> Result<(u64, Ingest)> {
        // Staged under uploads/ like any upload, verified, then committed by rename.
        let id = uuid::Uuid::new_v4().to_string();
        let staged = self.upload_path(&id)?;
        let source = source.to_path_buf();
        let expected = digest.clone();
        let algorithm = digest.algorithm();
        let staged2 = staged.clone();
        let dir = self.upload_dir(&id);
        let checked = blocking(move || {
            std::fs::create_dir_all(&dir)?;
            let (size, actual, how) = link_or_copy(&source, &staged2, algorithm)?;
            if actual != expected {
                return Err(StorageError::DigestMismatch {
                    path: source,
                    expected,
                    actual,
                });
            }
            Ok((size, how))
        })
        .await;
        let result = match checked {
            Ok(ok) => self.commit_at_digest(&id, digest).await.map(|()| ok),
            Err(e) => Err(e),
        };
        // Every name of the staged upload goes (the source file itself is never one).
        self.delete_upload(&id).await?;
        result
    }

    async fn list_uploads(&self) -> Result<Vec<super::StoredUpload>> {
        let dir = self.root.join("uploads");
        blocking(move || {
            let mut by_id: std::collections::HashMap<String, std::time::SystemTime> =
                std::collections::HashMap::new();
            for fan in std::fs::read_dir(&dir)? {
                let fan = fan?;
                if !fan.file_type()?.is_dir() {
                    continue;
                }
                let entries = match std::fs::read_dir(fan.path()) {
                    Ok(entries) => entries,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e.into()),
                };
                for entry in entries {
                    let entry = entry?;
                    let name = entry.file_name().to_string_lossy().into_owned();
                    let Some(id) = upload_id_of(&name) else {
                        continue;
                    };
                    let Some(modified) = modified_file(entry.metadata())? else {
                        continue;
                    };
                    let latest = by_id.entry(id.to_string()).or_insert(modified);
                    *latest = (*latest).max(modified);
                }
            }
            Ok(by_id
                .into_iter()
                .map(|(id, modified)| super::StoredUpload { id, modified })
                .collect())
        })
        .await
    }

    async fn upload_written(&self, id: &str) -> Result<Option<std::time::SystemTime>> {
        let open = self.upload_path(id)?;
        blocking(move || {
            let mut latest = None;
            for name in [
                open.clone(),
                kept_path(&open),
                open.with_extension("commit"),
            ] {
                latest = latest.max(modified_file(std::fs::metadata(&name))?);
            }
            Ok(latest)
        })
        .await
    }

    async fn delete_upload(&self, id: &str) -> Result<()> {
        let open = self.upload_path(id)?;
        blocking(move || {
            remove_if_present(&open)?;
            remove_if_present(&kept_path(&open))?;
            remove_if_present(&open.with_extension("commit"))?;
            Ok(())
        })
        .await
    }
}

/// Make the 256 fan-out directories upload ids (UUIDs: hex) go into, once, so that
/// creating an upload costs no directory creation and no fsync of `uploads/`.
fn make_fan_out(uploads: &Path) -> io::Result<()> {
    if uploads.join("ff").is_dir() {
        return Ok(()); // made in order: the last one exists, so all do
    }
    for i in 0..=255u8 {
        std::fs::create_dir_all(uploads.join(format!("{i:02x}")))?;
    }
    fsync_dir(uploads)
}

/// When a file was last written; `None` for a directory or a file gone meanwhile
/// (deleted or committed).
fn modified_file(meta: io::Result<std::fs::Metadata>) -> io::Result<Option<std::time::SystemTime>> {
    match meta {
        Ok(m) if m.is_file() => m.modified().map(Some),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Move upload files of the flat layout older versions wrote (`uploads/<id>`) into
/// their fanned-out directories; returns how many moved. Renames are atomic, so an
/// interrupted move resumes at the next call; each directory is fsynced once at the end.
fn fan_out_legacy_uploads(uploads: &Path) -> io::Result<usize> {
    let mut moved = 0;
    let mut dirs = std::collections::BTreeSet::new();
    for entry in std::fs::read_dir(uploads)? {
        let entry = entry?;
        if !entry.file_type()?.is_file() {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(id) = upload_id_of(&name) else {
            continue;
        };
        let dir = uploads.join(id.get(..2).unwrap_or(id));
        if dirs.insert(dir.clone()) {
            std::fs::create_dir_all(&dir)?;
        }
        std::fs::rename(entry.path(), dir.join(&name))?;
        moved += 1;
    }
    for dir in &dirs {
        fsync_dir(dir)?;
    }
    if moved > 0 {
        fsync_dir(uploads)?;
    }
    Ok(moved)
}

/// The upload id a file in `uploads/` belongs to (`<id>`, `<id>.kept`, `<id>.commit`).
fn upload_id_of(name: &str) -> Option<&str> {
    let id = name
        .strip_suffix(".kept")
        .or_else(|| name.strip_suffix(".commit"))
        .unwrap_or(name);
    super::valid_upload_id(id).then_some(id)
}

impl FsBlobStore {
    /// Stream `file` (or `range` of it): reads of a few chunks each on the reader pool,
    /// a little ahead of the network.
    fn stream_file(&self, file: File, range: Option<ByteRange>) -> ByteStream {
        Box::pin(FileChunks {
            file: std::sync::Arc::new(file),
            range,
            pos: 0,
            end: None,
            ready: std::collections::VecDeque::with_capacity(READ_AHEAD),
            in_flight: std::collections::VecDeque::with_capacity(READ_AHEAD / CHUNKS_PER_READ),
        })
    }
}

/// Threads of the reader pool: enough for many disk reads at once.
const READ_THREADS: usize = 64;

/// The reader pool: blocking threads that serve downloads only, one read of a few
/// chunks at a time. It is apart from the runtime's blocking pool (capped by
/// `storage.filesystem.maxthreads`) that upload writes, fsyncs and password checks use,
/// so downloads never queue those up and those never queue downloads. A download holds
/// no thread between reads: a client that reads slowly or not at all costs a file
/// handle and the chunks read ahead, and the server's send-stall limit (see
/// `http/server.rs`) ends it.
fn reader_pool() -> &'static tokio::runtime::Handle {
    static POOL: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(READ_THREADS)
            .thread_name("berth-blob-read")
            .build()
            .unwrap_or_else(|e| panic!("cannot start the blob reader pool: {e}"))
    })
    .handle()
}

type ReadJob = tokio::task::JoinHandle<io::Result<Vec<Bytes>>>;

/// A file as a stream of chunks, read a few at a time by one blocking call on the reader
/// pool. Buffers are allocated by the task that polls (a runtime worker), not on the
/// pool's threads, so freed buffers go back to the workers' allocator arenas instead of
/// staying in one arena per reader thread.
struct FileChunks {
    file: std::sync::Arc<File>,
    range: Option<ByteRange>,
    /// Next offset to ask for.
    pos: u64,
    /// End offset (exclusive), known once the first read has started.
    end: Option<u64>,
    /// Chunks read and not yet yielded, in file order.
    ready: std::collections::VecDeque<Bytes>,
    /// Reads started and not yet done, in file order.
    in_flight: std::collections::VecDeque<ReadJob>,
}

impl FileChunks {
    /// Start reads until `READ_AHEAD` chunks are ready or in flight, or the end is asked for.
    fn fill(&mut self) -> io::Result<()> {
        let end = match self.end {
            Some(end) => end,
            None => {
                let (start, end) = match self.range {
                    Some(r) => (r.start, r.end + 1),
                    None => (0, self.file.metadata()?.len()),
                };
                self.pos = start;
                self.end = Some(end);
                end
            }
        };
        while self.ready.len() + self.in_flight.len() * CHUNKS_PER_READ < READ_AHEAD
            && self.pos < end
        {
            let mut buffers = Vec::with_capacity(CHUNKS_PER_READ);
            let at = self.pos;
            while buffers.len() < CHUNKS_PER_READ && self.pos < end {
                let want = usize::try_from(end - self.pos)
                    .unwrap_or(READ_CHUNK)
                    .min(READ_CHUNK);
                buffers.push(vec![0u8; want]);
                self.pos += want as u64;
            }
            let file = self.file.clone();
            self.in_flight
                .push_back(reader_pool().spawn_blocking(move || read_chunks(&file, at, buffers)));
        }
        Ok(())
    }
}

/// Fill `buffers` with the bytes from `at` on, each exactly.
fn read_chunks(file: &File, mut at: u64, buffers: Vec<Vec<u8>>) -> io::Result<Vec<Bytes>> {
    let mut out = Vec::with_capacity(buffers.len());
    for mut buf in buffers {
        let mut filled = 0;
        while filled < buf.len() {
            match file.read_at(&mut buf[filled..], at + filled as u64) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "blob file is shorter than expected",
                    ))
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        at += buf.len() as u64;
        out.push(Bytes::from(buf));
    }
    Ok(out)
}

impl futures_util::Stream for FileChunks {
    type Item = io::Result<Bytes>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        loop {
            if let Some(chunk) = self.ready.pop_front() {
                // Keep the reads going while this chunk is sent.
                if let Err(e) = self.fill() {
                    self.fail();
                    return Poll::Ready(Some(Err(e)));
                }
                return Poll::Ready(Some(Ok(chunk)));
            }
            if let Err(e) = self.fill() {
                self.fail();
                return Poll::Ready(Some(Err(e)));
            }
            let Some(job) = self.in_flight.front_mut() else {
                return Poll::Ready(None);
            };
            let read = match std::pin::Pin::new(job).poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(read) => read,
            };
            self.in_flight.pop_front();
            match read.unwrap_or_else(|join| Err(io::Error::other(join))) {
                Ok(chunks) => self.ready.extend(chunks),
                Err(e) => {
                    // Nothing after a failed read: stop and end with the error.
                    self.fail();
                    return Poll::Ready(Some(Err(e)));
                }
            }
        }
    }
}

impl FileChunks {
    /// Stop reading: drop what was read ahead, and ask for nothing more.
    fn fail(&mut self) {
        for job in self.in_flight.drain(..) {
            job.abort();
        }
        self.ready.clear();
        self.end = Some(self.pos);
    }
}

impl FsBlobStore {
    /// [`super::BlobStore::commit_upload`]: always at the digest's own path.
    async fn commit_at_digest(&self, id: &str, digest: &Digest) -> Result<()> {
        let open = self.upload_path(id)?;
        let kept = kept_path(&open);
        let staged = open.with_extension("commit");
        let uploads = self.upload_dir(id);
        let to = self.blob_path(digest);
        blocking(move || {
            // The first commit renames the upload to its kept name, which no append ever
            // opens: the blob about to share its inode can never grow afterwards, even if
            // the client retries into the same session. Durable before the blob link is.
            let first = match std::fs::rename(&open, &kept) {
                Ok(()) => {
                    fsync_dir(&uploads)?;
                    true
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    // Committed before: commit again from the kept name.
                    if !kept.exists() {
                        return Err(StorageError::UploadNotFound);
                    }
                    false
                }
                Err(e) => return Err(e.into()),
            };
            let link = || -> Result<std::path::PathBuf> {
                // The data was fsynced by the appends; the rename makes it visible under its
                // digest, and fsyncing each directory that changed makes that durable.
                let dir = to
                    .parent()
                    .ok_or_else(|| io::Error::other("blob path has no parent"))?;
                let mut created = Vec::new();
                let mut d = dir;
                while !d.exists() {
                    created.push(d.to_path_buf());
                    d = d
                        .parent()
                        .ok_or_else(|| io::Error::other("no existing ancestor"))?;
                }
                std::fs::create_dir_all(dir)?;
                for c in created.iter().rev() {
                    if let Some(parent) = c.parent() {
                        fsync_dir(parent)?;
                    }
                }
                // A (re-)committed blob counts as new for garbage collection's grace period.
                File::options()
                    .write(true)
                    .open(&kept)?
                    .set_modified(std::time::SystemTime::now())?;
                // A second name for the kept file, renamed over the blob path (atomic,
                // replacing an existing copy of the same content): the upload keeps its bytes.
                remove_if_present(&staged)?;
                if std::fs::hard_link(&kept, &staged).is_err() {
                    // Links refused by this filesystem: a copy, made durable before it shows.
                    std::fs::copy(&kept, &staged)?;
                    File::open(&staged)?.sync_all()?;
                }
                std::fs::rename(&staged, &to)?;
                Ok(dir.to_path_buf())
            };
            let dir = match link() {
                Ok(dir) => dir,
                Err(e) => {
                    // Nothing shares the upload's inode yet: give the upload its name back,
                    // so the client can retry the commit (or go on appending) as before.
                    if first {
                        let _ = remove_if_present(&staged);
                        if std::fs::rename(&kept, &open).is_ok() {
                            let _ = fsync_dir(&uploads);
                        }
                    }
                    return Err(e);
                }
            };
            // A rename between two names of one file does nothing: the blob path already
            // was this file. The staged name is not needed either way.
            remove_if_present(&staged)?;
            fsync_dir(&dir)?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
pub(crate) mod tests {
    /// Every file under `root/uploads/`, at any depth.
    pub(crate) fn upload_files(root: &std::path::Path) -> Vec<std::path::PathBuf> {
        fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                if e.path().is_dir() {
                    walk(&e.path(), out);
                } else {
                    out.push(e.path());
                }
            }
        }
        let mut out = Vec::new();
        walk(&root.join("uploads"), &mut out);
        out
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shared_suite() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = super::FsBlobStore::open(dir.path()).expect("open");
        crate::storage::testsuite::run(&store).await;
        crate::storage::testsuite::import_file(&store).await;
        crate::storage::testsuite::refuses_keys(&store).await;
    }

    #[tokio::test]
    async fn uploads_fan_out_and_legacy_ones_move_in() {
        use crate::storage::BlobStore;
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("root");
        let store = super::FsBlobStore::open(&root).expect("open");
        store.create_upload("abcd").await.expect("create");
        assert_eq!(upload_files(&root), [root.join("uploads/ab/abcd")]);
        legacy_uploads_move_in().await;
    }

    async fn legacy_uploads_move_in() {
        use crate::storage::{BlobStore, UploadProgress};
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("root");
        // An upload in flight in the flat layout of older versions.
        let id = "0b6c3c1e-6f0a-4c9e-9a57-2d4b6d1c1f00";
        std::fs::create_dir_all(root.join("uploads")).expect("mkdir");
        std::fs::write(root.join("uploads").join(id), b"hello, ").expect("legacy upload");
        let store = super::FsBlobStore::open(&root).expect("open");
        assert!(
            root.join("uploads").join(id).is_file(),
            "opening moves nothing"
        );
        assert_eq!(store.adopt_legacy_uploads().expect("adopt"), 1);
        assert_eq!(store.adopt_legacy_uploads().expect("adopt again"), 0);
        assert!(
            root.join("uploads/0b").join(id).is_file(),
            "moved into its fan-out"
        );
        assert!(!root.join("uploads").join(id).exists());
        assert_eq!(store.upload_size(id).await.expect("size"), 7);
        let progress = store
            .rehash_upload(id, oci::Algorithm::Sha256)
            .await
            .expect("rehash");
        let UploadProgress { size, .. } = store
            .append_upload(
                id,
                progress,
                Box::pin(futures_util::stream::iter([Ok(bytes::Bytes::from_static(
                    b"berth",
                ))])),
                u64::MAX,
            )
            .await
            .expect("append");
        assert_eq!(size, 12);
        // New uploads go into their own fan-out directory.
        store.create_upload("ffee-1").await.expect("create");
        assert!(root.join("uploads/ff/ffee-1").is_file());
        let mut ids: Vec<String> = store
            .list_uploads()
            .await
            .expect("list")
            .into_iter()
            .map(|u| u.id)
            .collect();
        ids.sort();
        assert_eq!(ids, [id, "ffee-1"]);
    }

    #[tokio::test]
    async fn import_on_one_filesystem_is_a_hard_link() {
        use crate::storage::{BlobStore, Ingest};
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let store = super::FsBlobStore::open(&dir.path().join("root")).expect("open");
        let source = dir.path().join("data");
        std::fs::write(&source, b"layer").expect("write");
        let digest = oci::Digest::of(oci::Algorithm::Sha256, b"layer");
        let (_, how) = store.import_file(&source, &digest).await.expect("import");
        assert_eq!(how, Ingest::Linked);
        let ino = |p: &std::path::Path| std::fs::metadata(p).expect("stat").ino();
        assert_eq!(ino(&store.blob_path(&digest)), ino(&source));
        assert_eq!(
            upload_files(&dir.path().join("root")).len(),
            0,
            "no staged file left behind"
        );
    }

    /// Across filesystems a hard link is impossible: the blob is copied (and verified).
    #[tokio::test]
    async fn import_from_another_filesystem_is_a_verified_copy() {
        use crate::storage::{BlobStore, Ingest, StorageError};
        use std::os::unix::fs::MetadataExt;
        let shm = std::path::Path::new("/dev/shm");
        let dir = tempfile::tempdir().expect("tempdir");
        let src_dir = tempfile::tempdir_in(shm).expect("tempdir in /dev/shm");
        let store = super::FsBlobStore::open(&dir.path().join("root")).expect("open");
        let source = src_dir.path().join("data");
        std::fs::write(&source, b"copied layer").expect("write");
        let same_fs = std::fs::metadata(shm).expect("stat").dev()
            == std::fs::metadata(dir.path()).expect("stat").dev();
        let digest = oci::Digest::of(oci::Algorithm::Sha256, b"copied layer");
        let (size, how) = store.import_file(&source, &digest).await.expect("import");
        assert_eq!(size, 12);
        assert_eq!(
            how,
            if same_fs {
                Ingest::Linked
            } else {
                Ingest::Copied
            }
        );
        assert_eq!(
            std::fs::read(store.blob_path(&digest)).expect("blob"),
            b"copied layer"
        );
        let wrong = oci::Digest::of(oci::Algorithm::Sha256, b"something else");
        assert!(matches!(
            store.import_file(&source, &wrong).await,
            Err(StorageError::DigestMismatch { .. })
        ));
        assert!(!store.blob_path(&wrong).exists());
        assert_eq!(
            upload_files(&dir.path().join("root")).len(),
            0,
            "no staged copy left behind"
        );
    }
}
