//! Upload purging (`storage.maintenance.uploadpurging`): upload sessions started before a
//! cut-off are removed, session row and stored bytes, as Distribution's purger removes
//! old `_uploads` directories. Then upload files no session records (a pull-through fill
//! or a monolithic push cut off by a crash or shutdown, a committed upload's kept bytes
//! whose cleanup failed) are removed once they were last written before the cut-off.
//! Those writers have no session row, so their age is all there is to go by: a live fill
//! or monolithic push writes its file at least every body idle timeout (60 s by default)
//! and commits within a request, far inside any sensible `age` (168h by default), so the
//! assumption is that `age` is longer than the longest pause in writing one upload.
//! Committed blobs are never touched. Last, on an object store, multipart uploads left
//! open before the cut-off (a commit's server-side copy cut off by a crash) are aborted:
//! a copy takes seconds, so one that old is nobody's.

use super::{Registry, Result};
use std::time::{Duration, SystemTime};

/// What one purge did (or, in a dry run, would have done).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PurgeReport {
    /// Upload sessions removed (or, in a dry run, found).
    pub deleted: u64,
    /// Upload files without a session removed (or, in a dry run, found).
    pub orphans: u64,
    /// Multipart uploads an object store held open, aborted (or, in a dry run, found).
    pub multipart: u64,
    pub errors: u64,
}

/// Sessions looked at per metadata query.
const BATCH: u32 = 500;
/// Most sessions a dry run lists.
const DRY_RUN_LIMIT: u32 = 10_000;

impl Registry {
    /// Remove upload sessions started more than `age` ago; with `dry_run`, only log them.
    pub async fn purge_uploads(&self, age: Duration, dry_run: bool) -> Result<PurgeReport> {
        // On the clock the sessions' start times were written with (the database
        // server's in a cluster).
        let cutoff = self
            .meta
            .clock()
            .await?
            .saturating_sub(i64::try_from(age.as_secs()).unwrap_or(i64::MAX));
        tracing::info!(
            older_than = cutoff,
            actually_delete = !dry_run,
            "PurgeUploads starting"
        );
        let mut report = PurgeReport::default();
        // A dry run deletes nothing, so one (large) page is all it looks at.
        let limit = if dry_run { DRY_RUN_LIMIT } else { BATCH };
        loop {
            let fresh = self.meta.uploads_created_before(cutoff, limit).await?;
            if fresh.is_empty() {
                break;
            }
            let n = fresh.len();
            for s in fresh {
                tracing::info!(
                    upload = %s.id,
                    repository = %s.repository,
                    started_at = s.created_at,
                    dry_run,
                    "upload is older than the purge age; removing it"
                );
                if dry_run {
                    report.deleted += 1;
                    continue;
                }
                // Not while a chunk is being written to it.
                let lock = self.uploads.lock(&s.id).await;
                let removed = async {
                    self.blobs.delete_upload(&s.id).await?;
                    self.meta.delete_upload(&s.id).await?;
                    Result::<()>::Ok(())
                }
                .await;
                match removed {
                    Ok(()) => report.deleted += 1,
                    Err(e) => {
                        report.errors += 1;
                        tracing::warn!(upload = %s.id, error = %e, "cannot purge upload");
                    }
                }
                drop(lock);
                self.uploads.forget(&s.id);
            }
            if dry_run || n < limit as usize || report.errors > 0 {
                break;
            }
        }
        // Stored files and multipart uploads are aged by their own times, not the
        // sessions' database clock.
        let written_before = SystemTime::now()
            .checked_sub(age)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        self.purge_orphan_uploads(written_before, dry_run, &mut report)
            .await?;
        match self
            .blobs
            .abort_stale_multipart(written_before, dry_run)
            .await
        {
            Ok(n) => report.multipart = n,
            Err(e) => {
                report.errors += 1;
                tracing::warn!(error = %e, "cannot list the object store's open multipart uploads");
            }
        }
        tracing::info!(
            deleted = report.deleted,
            orphans = report.orphans,
            multipart = report.multipart,
            errors = report.errors,
            dry_run,
            "Purge uploads finished"
        );
        Ok(report)
    }

    /// Remove upload files last written before `cutoff` that no session records.
    async fn purge_orphan_uploads(
        &self,
        cutoff: SystemTime,
        dry_run: bool,
        report: &mut PurgeReport,
    ) -> Result<()> {
        for upload in self.blobs.list_uploads().await? {
            if upload.modified >= cutoff {
                continue;
            }
            // A session's upload is purged by its start time, above.
            if self.meta.get_upload(&upload.id).await?.is_some() {
                continue;
            }
            let written = upload
                .modified
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            tracing::info!(
                upload = %upload.id,
                last_written = written,
                dry_run,
                "upload file without a session is older than the purge age; removing it"
            );
            if dry_run {
                report.orphans += 1;
                continue;
            }
            // Not while a monolithic push is writing it: under its lock, look again (the
            // push may have written since the listing, or committed it).
            let lock = self.uploads.lock(&upload.id).await;
            let still_old = self
                .blobs
                .upload_written(&upload.id)
                .await?
                .is_some_and(|written| written < cutoff);
            if !still_old {
                drop(lock);
                continue;
            }
            match self.blobs.delete_upload(&upload.id).await {
                Ok(()) => report.orphans += 1,
                Err(e) => {
                    report.errors += 1;
                    tracing::warn!(upload = %upload.id, error = %e, "cannot purge upload file");
                }
            }
            drop(lock);
            self.uploads.forget(&upload.id);
        }
        Ok(())
    }
}
