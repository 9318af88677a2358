//! The audit log's front: every audited action (pushes, pulls, deletes, logins, tokens,
//! changes through the management API) becomes one structured log line
//! (`target: berth::audit`, for ELK-style collection) and a record queued in memory,
//! which `jobs::audit` writes to the metadata database in batches (one transaction per
//! batch, so a pull costs no synchronous write). The queue is bounded: beyond
//! [`QUEUE_LIMIT`] records are dropped and counted. A crash can lose the last fraction of
//! a second of records; the log lines are written at once.

use crate::meta::{AuditRecord, MetaStore};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Most records waiting to be written.
pub const QUEUE_LIMIT: usize = 10_000;
/// A batch is written once this many records wait, or [`FLUSH_AFTER`] after the first.
pub const BATCH: usize = 500;
pub const FLUSH_AFTER: Duration = Duration::from_millis(200);

/// The queue of audit records.
pub struct AuditLog {
    meta: Arc<dyn MetaStore>,
    queue: Mutex<Vec<AuditRecord>>,
    wake: tokio::sync::Notify,
    dropped: AtomicU64,
    /// How long records are kept (pruned by the worker).
    pub retention: Duration,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditLog")
    }
}

impl AuditLog {
    pub fn new(meta: Arc<dyn MetaStore>, retention: Duration) -> AuditLog {
        AuditLog {
            meta,
            queue: Mutex::new(Vec::new()),
            wake: tokio::sync::Notify::new(),
            dropped: AtomicU64::new(0),
            retention,
        }
    }

    /// Record `r`: a log line now, a database row with the next batch.
    pub fn record(&self, r: AuditRecord) {
        tracing::info!(
            target: "berth::audit",
            principal = %r.principal,
            client = %r.client,
            resource_type = %r.resource_type,
            resource = %r.resource,
            project = r.project.as_deref().unwrap_or(""),
            operation = %r.operation,
            result = %r.result,
            "audit"
        );
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        if q.len() >= QUEUE_LIMIT {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        q.push(r);
        if q.len() == 1 || q.len() >= BATCH {
            self.wake.notify_one();
        }
    }

    /// Records dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Wait until records are queued, then a little longer so they come in one batch.
    pub async fn due(&self) {
        loop {
            let empty = self
                .queue
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_empty();
            if !empty {
                break;
            }
            self.wake.notified().await;
        }
        let full = self.queue.lock().unwrap_or_else(|p| p.into_inner()).len() >= BATCH;
        if !full {
            let _ = tokio::time::timeout(FLUSH_AFTER, self.wake.notified()).await;
        }
    }

    /// Write what is queued; how many records went.
    pub async fn flush(&self) -> Result<usize, crate::meta::MetaError> {
        let batch: Vec<AuditRecord> = {
            let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            let n = q.len().min(BATCH * 4);
            q.drain(..n).collect()
        };
        if batch.is_empty() {
            return Ok(0);
        }
        match self.meta.record_audit(&batch).await {
            Ok(()) => Ok(batch.len()),
            Err(e) => {
                // Put them back in front (keeping order), within the bound.
                let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
                let room = QUEUE_LIMIT.saturating_sub(q.len());
                let keep = batch.len().min(room);
                self.dropped
                    .fetch_add((batch.len() - keep) as u64, Ordering::Relaxed);
                let rest: Vec<AuditRecord> = q.drain(..).collect();
                q.extend(batch.into_iter().take(keep));
                q.extend(rest);
                Err(e)
            }
        }
    }

    /// Drop records older than the retention; how many went.
    pub async fn prune(&self) -> Result<u64, crate::meta::MetaError> {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        let before = now_ms - self.retention.as_millis() as i64;
        let mut total = 0;
        loop {
            let n = self.meta.prune_audit(before, 10_000).await?;
            total += n;
            if n < 10_000 {
                return Ok(total);
            }
        }
    }
}
