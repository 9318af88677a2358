//! Writes queued audit records to the metadata database in batches, and prunes records
//! older than the retention once an hour (and at start). A last flush on shutdown, after
//! the HTTP server drained, keeps a graceful stop from losing any.

use super::{JobError, Worker, WorkerState};
use crate::auth::audit::AuditLog;
use std::sync::Arc;
use std::time::{Duration, Instant};

const PRUNE_EVERY: Duration = Duration::from_secs(3600);

pub struct AuditWorker {
    log: Arc<AuditLog>,
    pruned_at: Option<Instant>,
}

impl AuditWorker {
    pub fn new(log: Arc<AuditLog>) -> AuditWorker {
        AuditWorker {
            log,
            pruned_at: None,
        }
    }
}

#[async_trait::async_trait]
impl Worker for AuditWorker {
    fn name(&self) -> String {
        "audit".into()
    }

    async fn work(&mut self) -> Result<WorkerState, JobError> {
        if self.pruned_at.is_none_or(|t| t.elapsed() >= PRUNE_EVERY) {
            self.pruned_at = Some(Instant::now());
            let n = self
                .log
                .prune()
                .await
                .map_err(|e| JobError(format!("cannot prune the audit log: {e}")))?;
            if n > 0 {
                tracing::info!(
                    removed = n,
                    "pruned audit records older than the retention (auth.berth.auditretention)"
                );
            }
        }
        self.log
            .flush()
            .await
            .map_err(|e| JobError(format!("cannot write audit records: {e}")))?;
        Ok(WorkerState::Idle)
    }

    async fn wait_for_work(&mut self) {
        let until_prune =
            PRUNE_EVERY.saturating_sub(self.pruned_at.map_or(PRUNE_EVERY, |t| t.elapsed()));
        let _ = tokio::time::timeout(until_prune, self.log.due()).await;
    }

    async fn stop(&mut self) {
        loop {
            match self.log.flush().await {
                Ok(0) => break,
                Ok(_) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot write queued audit records on shutdown; their log lines remain");
                    break;
                }
            }
        }
    }
}
