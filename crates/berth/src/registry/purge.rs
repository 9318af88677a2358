//! Upload purging (`storage.maintenance.uploadpurging`): upload sessions started before a
//! cut-off are removed, session row and stored bytes, as Distribution's purger removes
//! old `_uploads` directories. Committed blobs are never touched.

use super::{Registry, Result};
use std::time::{Duration, SystemTime};

/// What one purge did (or, in a dry run, would have done).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PurgeReport {
    pub deleted: u64,
    pub errors: u64,
}

/// Sessions looked at per metadata query.
const BATCH: u32 = 500;
/// Most sessions a dry run lists.
const DRY_RUN_LIMIT: u32 = 10_000;

impl Registry {
    /// Remove upload sessions started more than `age` ago; with `dry_run`, only log them.
    pub async fn purge_uploads(&self, age: Duration, dry_run: bool) -> Result<PurgeReport> {
        let cutoff = SystemTime::now()
            .checked_sub(age)
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
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
        tracing::info!(
            deleted = report.deleted,
            errors = report.errors,
            dry_run,
            "Purge uploads finished"
        );
        Ok(report)
    }
}
