//! `berth migrate`: move a single node (its blob store and embedded SQLite database) into
//! what a cluster runs on (an S3 bucket, or any other blob store, and PostgreSQL),
//! while the node keeps serving.
//!
//! 1. The target is checked: empty, or holding exactly what the last migration from
//!    this source left (a re-run), or refused unless forced.
//! 2. Blobs are copied from the source's current list, several at a time, each
//!    streamed through the target's upload path and verified against its digest before
//!    it is committed; blobs the target already has are not read again, so an
//!    interrupted run continues where it stopped. No database snapshot is held open
//!    during this long part.
//! 3. A snapshot of the source database is taken; blobs it records that the first pass
//!    did not see (pushed meanwhile) are copied the same way, then the bytes of open
//!    upload sessions (so a client mid-push can go on against the cluster).
//! 4. Only when every blob the snapshot names is in the target is the metadata
//!    replaced, in one transaction (`meta::transfer`): the target then serves exactly
//!    what the snapshot described, or, if anything failed, still what it served before.
//!
//! Run it again after stopping the node (or making it read-only) for a final catch-up:
//! only the blobs pushed since are copied.

use crate::meta::transfer::{MigrationSource, MigrationTarget, TableCopied, TargetState};
use crate::meta::{BlobRecord, MetaError};
use crate::storage::{BlobRef, BlobStore, ByteRange, ByteStream, StorageError, UploadProgress};
use futures_util::{StreamExt, TryStreamExt};
use oci::Digest;
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often blob progress is reported while bytes flow.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// The two sides of a migration.
pub struct Migration {
    pub source_blobs: Arc<dyn BlobStore>,
    pub source_meta: Arc<dyn MigrationSource>,
    pub target_blobs: Arc<dyn BlobStore>,
    pub target_meta: Arc<dyn MigrationTarget>,
    /// Names the source (its database file and blob store): a re-run from the same
    /// source may replace what the previous one wrote.
    pub source_id: String,
    /// Replace the target's content even when it holds something this source's last
    /// migration did not write.
    pub force: bool,
    /// Blobs copied at once.
    pub concurrency: usize,
}

/// Where a migration stands, as it goes.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A step begins (a line for the operator).
    Step(String),
    /// Blob copying so far.
    Blobs(BlobCounts),
    /// A table's rows were written.
    Table(TableCopied),
    /// Something was skipped that does not stop the migration.
    Warning(String),
    /// Something failed; the metadata will not be replaced in this run.
    Error(String),
}

/// Blob counts of a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlobCounts {
    /// Blobs the source records (as of the latest listing).
    pub total: u64,
    pub total_bytes: u64,
    /// Already in the target when they were listed (an earlier run, or the same
    /// content another way): not read again.
    pub present: u64,
    /// Blobs to copy in the current pass, and their bytes.
    pub pending: u64,
    pub pending_bytes: u64,
    /// Copied so far in this run.
    pub copied: u64,
    pub copied_bytes: u64,
    pub failed: u64,
}

/// What a finished migration did.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub blobs: BlobCounts,
    /// Open upload sessions whose bytes were copied.
    pub uploads: u64,
    pub tables: Vec<TableCopied>,
    pub elapsed: Duration,
}

impl Summary {
    fn rows(&self, table: &str) -> u64 {
        self.tables
            .iter()
            .find(|t| t.table == table)
            .map_or(0, |t| t.rows)
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} repositories, {} manifests, {} tags, {} blobs ({}; {} copied now, {} already there), {} upload sessions, {} notification events, {} users, {} projects, {} robots in {:.1}s",
            self.rows("repositories"),
            self.rows("manifests"),
            self.rows("tags"),
            self.blobs.total,
            bytes(self.blobs.total_bytes),
            self.blobs.copied,
            self.blobs.present,
            self.uploads,
            self.rows("outbox"),
            self.rows("users"),
            self.rows("projects"),
            self.rows("robots"),
            self.elapsed.as_secs_f64()
        )
    }
}

/// How long ago `at` (seconds since the epoch) was, for people.
fn ago(at: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(at);
    match (now - at).max(0) {
        s if s < 120 => format!("{s} s ago"),
        s if s < 7200 => format!("{} min ago", s / 60),
        s if s < 172_800 => format!("{} h ago", s / 3600),
        s => format!("{} days ago", s / 86_400),
    }
}

/// `n` bytes for people.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// The target holds content this run would replace.
    #[error("{0}")]
    Refused(String),
    /// Some blobs or uploads could not be copied: the metadata was not replaced.
    #[error("{0}")]
    Incomplete(String),
    #[error("{0}")]
    Meta(#[from] MetaError),
    #[error("{0}")]
    Storage(#[from] StorageError),
}

impl Migration {
    /// Run the whole migration, telling `on_event` as it goes.
    pub async fn run(
        &self,
        on_event: &mut (dyn FnMut(Event) + Send),
    ) -> Result<Summary, MigrateError> {
        let started = Instant::now();
        match self.target_meta.state(&self.source_id).await? {
            TargetState::Empty => {}
            TargetState::LastMigrated { finished_at } => on_event(Event::Step(format!(
                "the target holds what the migration from this source wrote {}: replacing it with the source's current content",
                ago(finished_at)
            ))),
            TargetState::Occupied { holds, last_source } => {
                let whose = match last_source {
                    Some(s) if s == self.source_id => "the last migration from this source wrote other content: nodes have written to it since".to_string(),
                    Some(s) => format!("the last migration into it came from another source ({s})"),
                    None => "no migration wrote it".to_string(),
                };
                if !self.force {
                    return Err(MigrateError::Refused(format!(
                        "the target database already holds {holds}, and {whose}; refusing to replace it. Migrate into an empty database, or pass --force to replace everything in it with the source's content"
                    )));
                }
                on_event(Event::Warning(format!(
                    "--force: replacing the target's {holds} ({whose})"
                )));
            }
        }

        let mut counts = BlobCounts::default();
        on_event(Event::Step("listing the target's blobs".into()));
        let mut present: HashMap<Digest, u64> = self
            .target_blobs
            .list()
            .await?
            .into_iter()
            .map(|b| (b.digest, b.size))
            .collect();

        // First pass: the source's blobs as of now, no snapshot held.
        let first = self.source_meta.blob_list().await?;
        counts.total = first.len() as u64;
        counts.total_bytes = first.iter().map(|(_, b)| b.size).sum();
        on_event(Event::Step(format!(
            "copying blobs: {} in the source ({}), {} in the target",
            first.len(),
            bytes(counts.total_bytes),
            present.len()
        )));
        self.copy_blobs(&first, &mut present, &mut counts, on_event)
            .await;

        // Second pass: what the snapshot records, which the metadata will describe.
        on_event(Event::Step(
            "taking a snapshot of the source database".into(),
        ));
        let mut snapshot = self.source_meta.snapshot().await?;
        let all = snapshot.blobs().await?;
        counts.total = all.len() as u64;
        counts.total_bytes = all.iter().map(|(_, b)| b.size).sum();
        let before = counts.copied;
        self.copy_blobs(&all, &mut present, &mut counts, on_event)
            .await;
        if counts.copied > before {
            on_event(Event::Step(format!(
                "copied {} blobs pushed during the first pass",
                counts.copied - before
            )));
        }
        counts.present = counts.total.saturating_sub(counts.copied);
        counts.pending = 0;
        counts.pending_bytes = 0;
        on_event(Event::Blobs(counts));

        let sessions = snapshot.uploads().await?;
        let mut uploads = 0u64;
        let mut upload_failures = 0u64;
        if !sessions.is_empty() {
            on_event(Event::Step(format!(
                "copying {} open upload sessions",
                sessions.len()
            )));
        }
        for s in &sessions {
            match self.copy_upload(&s.id, s.algorithm).await {
                Ok(UploadCopy::Copied) => uploads += 1,
                Ok(UploadCopy::Gone) => on_event(Event::Warning(format!(
                    "upload session {} of {} has no bytes in the source any more (finished or purged meanwhile); its row is copied, and the cluster's upload purging removes it",
                    s.id, s.repository
                ))),
                Ok(UploadCopy::Keyed) => on_event(Event::Warning(format!(
                    "upload session {} of {} is an open push written to a key of its own in the source (an object store's unfinished multipart upload), which cannot be read before its commit: it is not copied; its client's next request finds no upload and starts the push again, and the cluster's upload purging removes the row",
                    s.id, s.repository
                ))),
                Err(e) => {
                    upload_failures += 1;
                    on_event(Event::Error(format!(
                        "upload session {} of {}: {e}",
                        s.id, s.repository
                    )));
                }
            }
        }

        let failed = counts.failed + upload_failures;
        if failed > 0 {
            return Err(MigrateError::Incomplete(format!(
                "{failed} blobs or uploads could not be copied (see the errors above), so the target's metadata was not replaced: fix the cause and run berth migrate again; what was copied is not copied twice"
            )));
        }

        on_event(Event::Step(
            "replacing the target's metadata with the snapshot (one transaction)".into(),
        ));
        let mut summary = Summary {
            blobs: counts,
            uploads,
            tables: Vec::new(),
            elapsed: Duration::ZERO,
        };
        let mut on_table = |t: TableCopied| on_event(Event::Table(t));
        let tables = self
            .target_meta
            .replace(
                &self.source_id,
                &summary.to_string(),
                snapshot.as_mut(),
                &mut on_table,
            )
            .await?;
        summary.tables = tables;
        summary.elapsed = started.elapsed();
        Ok(summary)
    }

    /// Copy every blob of `wanted` the target lacks, `concurrency` at a time, reporting
    /// progress; failures are reported and counted, not returned.
    async fn copy_blobs(
        &self,
        wanted: &[(Digest, BlobRecord)],
        present: &mut HashMap<Digest, u64>,
        counts: &mut BlobCounts,
        on_event: &mut (dyn FnMut(Event) + Send),
    ) {
        let mut todo = Vec::new();
        for (digest, blob) in wanted {
            let size = &blob.size;
            match present.get(digest) {
                Some(have) if have == size => {}
                Some(have) => {
                    counts.failed += 1;
                    // Never overwritten: a blob under its digest is immutable.
                    on_event(Event::Error(format!(
                        "the target already holds blob {digest} with {have} bytes, the source's has {size}: the target's copy is damaged; delete it from the target's storage and run berth migrate again"
                    )));
                }
                None => todo.push((digest.clone(), blob.clone())),
            }
        }
        counts.present = wanted.len() as u64 - todo.len() as u64;
        counts.pending = todo.len() as u64;
        counts.pending_bytes = todo.iter().map(|(_, b)| b.size).sum();
        if todo.is_empty() {
            return;
        }
        let flowing = Arc::new(AtomicU64::new(0));
        let copied_before = counts.copied_bytes;
        let mut jobs = futures_util::stream::iter(todo.into_iter().map(|(digest, blob)| {
            let flowing = flowing.clone();
            async move {
                let result = self.copy_blob(&digest, &blob, flowing).await;
                (digest, blob.size, result)
            }
        }))
        .buffer_unordered(self.concurrency.max(1));
        let mut tick = tokio::time::interval(PROGRESS_EVERY);
        tick.tick().await;
        loop {
            tokio::select! {
                next = jobs.next() => match next {
                    None => break,
                    Some((digest, size, Ok(()))) => {
                        counts.copied += 1;
                        present.insert(digest, size);
                    }
                    Some((digest, _, Err(e))) => {
                        counts.failed += 1;
                        on_event(Event::Error(format!("blob {digest}: {e}")));
                    }
                },
                _ = tick.tick() => {
                    counts.copied_bytes = copied_before + flowing.load(Ordering::Relaxed);
                    on_event(Event::Blobs(*counts));
                }
            }
        }
        counts.copied_bytes = copied_before + flowing.load(Ordering::Relaxed);
    }

    /// Stream one blob into the target through an upload of its own, verify, commit.
    /// The source's copy is read where its metadata records it; the target's is kept at
    /// the digest's own path (the copied metadata records no key).
    async fn copy_blob(
        &self,
        digest: &Digest,
        blob: &BlobRecord,
        flowing: Arc<AtomicU64>,
    ) -> Result<(), String> {
        let size = blob.size;
        let at = BlobRef {
            digest,
            key: blob.key.as_deref(),
        };
        // One name per blob: a run interrupted mid-copy leaves at most this upload, which
        // the next run replaces.
        let id = format!("migrate-{}-{}", digest.algorithm(), &digest.hex()[..32]);
        let target = &self.target_blobs;
        target.delete_upload(&id).await.map_err(|e| e.to_string())?;
        target.create_upload(&id).await.map_err(|e| e.to_string())?;
        let result = async {
            let body = match self.source_blobs.get(at, None).await {
                Ok(body) => body,
                Err(StorageError::BlobNotFound) => {
                    return Err(
                        "its file is missing from the source's storage (garbage collection may have removed it after it was listed, or the source is damaged); run berth migrate again".to_string(),
                    )
                }
                Err(e) => return Err(format!("reading it from the source failed: {e}")),
            };
            let body: ByteStream = Box::pin(body.inspect_ok(move |chunk| {
                flowing.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }));
            let progress = UploadProgress {
                size: 0,
                hasher: digest.algorithm().hasher(),
            };
            let written = target
                .append_upload(&id, progress, body, u64::MAX)
                .await
                .map_err(|e| format!("writing it into the target failed: {e}"))?;
            let actual = written.hasher.digest();
            if written.size != size || actual != *digest {
                return Err(format!(
                    "the source's bytes ({} bytes, digest {actual}) do not match the blob ({size} bytes): the source's copy is damaged; it was not copied",
                    written.size
                ));
            }
            target
                .commit_upload(&id, digest)
                .await
                .map(drop)
                .map_err(|e| format!("committing it in the target failed: {e}"))
        }
        .await;
        let _ = target.delete_upload(&id).await;
        result
    }

    /// Copy an open upload's bytes under the same id.
    async fn copy_upload(&self, id: &str, algorithm: oci::Algorithm) -> Result<UploadCopy, String> {
        let size = match self.source_blobs.upload_size(id).await {
            Ok(size) => size,
            Err(StorageError::UploadNotFound) => return Ok(UploadCopy::Gone),
            Err(e) => return Err(format!("reading its size failed: {e}")),
        };
        let target = &self.target_blobs;
        if target.upload_size(id).await.ok() == Some(size) {
            return Ok(UploadCopy::Copied);
        }
        target.delete_upload(id).await.map_err(|e| e.to_string())?;
        target.create_upload(id).await.map_err(|e| e.to_string())?;
        if size == 0 {
            return Ok(UploadCopy::Copied);
        }
        let body = match self
            .source_blobs
            .read_upload(
                id,
                ByteRange {
                    start: 0,
                    end: size - 1,
                },
            )
            .await
        {
            Ok(body) => body,
            Err(StorageError::UploadNotFound) => {
                let _ = target.delete_upload(id).await;
                return Ok(UploadCopy::Gone);
            }
            Err(StorageError::KeyedUploadUnreadable) => {
                let _ = target.delete_upload(id).await;
                return Ok(UploadCopy::Keyed);
            }
            Err(e) => return Err(format!("reading it failed: {e}")),
        };
        let progress = UploadProgress {
            size: 0,
            hasher: algorithm.hasher(),
        };
        if let Err(e) = target.append_upload(id, progress, body, u64::MAX).await {
            let _ = target.delete_upload(id).await;
            return Err(format!("writing it into the target failed: {e}"));
        }
        Ok(UploadCopy::Copied)
    }
}

/// What became of one open upload in a migration.
enum UploadCopy {
    /// Its bytes are in the target under the same id.
    Copied,
    /// The source has none any more (finished or purged meanwhile).
    Gone,
    /// A keyed upload, unreadable before its commit: not copied.
    Keyed,
}

#[cfg(test)]
mod tests {
    use super::bytes;

    /// A single node on S3 whose pushes were written at keys of their own moves into a
    /// cluster: its keyed blob is read at its key and lands at its digest's path in the
    /// target (recorded without a key there), and an open keyed upload, unreadable
    /// before its commit, is skipped with a warning instead of failing the migration.
    #[tokio::test]
    async fn keyed_blobs_and_uploads_of_the_source() {
        use crate::meta::postgres_test::TestDb;
        use crate::meta::sqlite::SqliteMeta;
        use crate::meta::{Repositories, SessionCaps, UploadSession, Uploads};
        use crate::registry::{Registry, Settings};
        use crate::storage::s3::{testserver, S3BlobStore};
        use crate::storage::{BlobStore, ByteStream, UploadProgress};
        use bytes::Bytes;
        use oci::{Algorithm, Digest};
        use std::sync::Arc;

        let dir = tempfile::tempdir().expect("tempdir");
        let keyed = crate::config::s3::S3Config {
            blob_keys: Some(true),
            ..testserver::config(testserver::Kind::SeaweedFs, 5 << 20)
        };
        let source_blobs = Arc::new(S3BlobStore::new(&keyed).expect("source store"));
        let source_meta = Arc::new(
            SqliteMeta::open(&dir.path().join("berth.db"))
                .await
                .expect("source meta"),
        );
        let registry = Registry::new(
            source_blobs.clone(),
            source_meta.clone(),
            Settings::default(),
        );
        let body = |d: Vec<u8>| -> ByteStream {
            Box::pin(futures_util::stream::once(
                async move { Ok(Bytes::from(d)) },
            ))
        };
        let data: Vec<u8> = (0..(6u32 << 20)).map(|i| (i % 249) as u8).collect();
        let digest = Digest::of(Algorithm::Sha256, &data);
        let repo: oci::RepoName = "team/app".parse().expect("repo");
        registry
            .put_blob(&repo, &digest, body(data.clone()))
            .await
            .expect("push");
        let key = source_meta
            .linked_blob(&repo, &digest)
            .await
            .expect("linked")
            .and_then(|b| b.key)
            .expect("recorded at a key of its own");
        // An open push with a full part sent.
        let session = UploadSession {
            id: "0b1c2d3e-open-keyed".into(),
            repository: repo.clone(),
            algorithm: Algorithm::Sha256,
            created_at: crate::meta::now(),
        };
        source_meta
            .create_upload(&session, SessionCaps::default())
            .await
            .expect("session")
            .expect("room");
        source_blobs
            .create_keyed_upload(&session.id)
            .await
            .expect("create");
        let fresh = UploadProgress {
            size: 0,
            hasher: Algorithm::Sha256.hasher(),
        };
        source_blobs
            .append_upload(&session.id, fresh, body(data.clone()), u64::MAX)
            .await
            .expect("append");

        let db = TestDb::create().await;
        let target_meta = Arc::new(db.open().await);
        let target_blobs = Arc::new(
            S3BlobStore::new(&testserver::config(testserver::Kind::SeaweedFs, 5 << 20))
                .expect("target store"),
        );
        let migration = super::Migration {
            source_blobs: source_blobs.clone(),
            source_meta: source_meta.clone(),
            target_blobs: target_blobs.clone(),
            target_meta: target_meta.clone(),
            source_id: "keyed node".into(),
            force: false,
            concurrency: 2,
        };
        let mut warnings = Vec::new();
        let summary = migration
            .run(&mut |e| {
                if let super::Event::Warning(w) = e {
                    warnings.push(w);
                }
            })
            .await
            .expect("migrate");
        assert_eq!(summary.blobs.copied, 1);
        assert_eq!(summary.uploads, 0);
        assert!(
            warnings
                .iter()
                .any(|w| w.contains(&session.id) && w.contains("key of its own")),
            "{warnings:?}"
        );
        assert_eq!(
            target_meta.known_blob(&digest).await.expect("known"),
            Some(crate::meta::BlobRecord {
                size: data.len() as u64,
                key: None,
            })
        );
        assert_eq!(
            target_blobs.stat((&digest).into()).await.expect("stat"),
            Some(data.len() as u64)
        );
        assert!(key.starts_with("objects/"));
        target_meta.close().await;
        db.drop_db().await;
    }

    #[test]
    fn byte_counts_read_well() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(5 << 30), "5.0 GiB");
    }
}
