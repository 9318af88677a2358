//! Upload purging on a schedule (`storage.maintenance.uploadpurging`): the first run after
//! a random jitter, then every `interval`, removing uploads older than `age` (or, in a
//! dry run, only logging them). Distribution's jitter is 0–59 minutes whatever the
//! interval; Berth bounds it by the interval too, so short intervals behave.

use super::{JobError, Worker, WorkerState};
use crate::config::events::UploadPurging;
use crate::registry::Registry;
use rand::Rng;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

pub struct PurgeWorker {
    registry: Arc<Registry>,
    config: UploadPurging,
    next: Instant,
}

impl PurgeWorker {
    pub fn new(registry: Arc<Registry>, config: UploadPurging) -> PurgeWorker {
        let bound = config.interval.min(Duration::from_secs(3600));
        let jitter = if config.interval >= Duration::from_secs(3600) {
            // Whole minutes, as Distribution does.
            Duration::from_secs(60 * rand::thread_rng().gen_range(0..60))
        } else {
            bound.mul_f64(rand::thread_rng().gen_range(0.0..1.0))
        };
        tracing::info!("Starting upload purge in {jitter:?}");
        PurgeWorker {
            registry,
            config,
            next: Instant::now() + jitter,
        }
    }
}

#[async_trait::async_trait]
impl Worker for PurgeWorker {
    fn name(&self) -> String {
        "uploadpurge".into()
    }

    async fn work(&mut self) -> Result<WorkerState, JobError> {
        if Instant::now() < self.next {
            return Ok(WorkerState::Idle);
        }
        self.next = Instant::now() + self.config.interval;
        self.registry
            .purge_uploads(self.config.age, self.config.dry_run)
            .await
            .map_err(|e| JobError(format!("upload purge failed: {e}")))?;
        tracing::info!("Starting upload purge in {:?}", self.config.interval);
        Ok(WorkerState::Idle)
    }

    async fn wait_for_work(&mut self) {
        tokio::time::sleep_until(self.next).await;
    }
}
