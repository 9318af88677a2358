//! Writes the pull times the registry noted (`registry/pull_times.rs`) every few
//! seconds, and once more on shutdown after the HTTP server has drained.

use super::{JobError, Worker, WorkerState};
use crate::registry::pull_times::FLUSH_EVERY;
use crate::registry::Registry;
use std::sync::Arc;

pub struct PullTimesWorker {
    registry: Arc<Registry>,
}

impl PullTimesWorker {
    pub fn new(registry: Arc<Registry>) -> PullTimesWorker {
        PullTimesWorker { registry }
    }
}

#[async_trait::async_trait]
impl Worker for PullTimesWorker {
    fn name(&self) -> String {
        "pull-times".into()
    }

    async fn work(&mut self) -> Result<WorkerState, JobError> {
        self.registry
            .flush_pull_times()
            .await
            .map_err(|e| JobError(format!("cannot record pull times: {e}")))?;
        Ok(WorkerState::Idle)
    }

    async fn wait_for_work(&mut self) {
        tokio::time::sleep(FLUSH_EVERY).await;
    }

    async fn stop(&mut self) {
        if let Err(e) = self.registry.flush_pull_times().await {
            tracing::warn!(error = %e, "cannot record the last pull times on shutdown; they are lost");
        }
    }
}
