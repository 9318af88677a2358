//! Writes the registry's queued pull events to the outbox in batches: one transaction
//! when a batch fills or a short interval after the first queued pull (see
//! `registry/pull_events.rs`), and a last flush on shutdown, after the HTTP server has
//! drained, so a graceful stop loses none. Knows nothing of how the queue is kept.

use super::{JobError, Worker, WorkerState};
use crate::registry::Registry;
use std::sync::Arc;

/// The flusher of pull events (one per process, when notifications are on).
pub struct PullEventsWorker {
    registry: Arc<Registry>,
}

impl PullEventsWorker {
    pub fn new(registry: Arc<Registry>) -> PullEventsWorker {
        PullEventsWorker { registry }
    }
}

#[async_trait::async_trait]
impl Worker for PullEventsWorker {
    fn name(&self) -> String {
        "notify-pulls".into()
    }

    async fn work(&mut self) -> Result<WorkerState, JobError> {
        self.registry
            .flush_pull_events()
            .await
            .map_err(|e| JobError(format!("cannot write pull events to the outbox: {e}")))?;
        Ok(WorkerState::Idle)
    }

    async fn wait_for_work(&mut self) {
        self.registry.pull_events_due().await;
    }

    async fn stop(&mut self) {
        match self.registry.flush_pull_events().await {
            Ok(0) => {}
            Ok(n) => tracing::debug!("wrote {n} queued pull events to the outbox on shutdown"),
            Err(e) => {
                tracing::warn!(error = %e, "cannot write queued pull events on shutdown; they are lost")
            }
        }
    }
}
