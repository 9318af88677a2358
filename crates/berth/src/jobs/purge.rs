//! Upload purging on a schedule (`storage.maintenance.uploadpurging`): the first run after
//! a random jitter, then every `interval`, removing uploads older than `age` (or, in a
//! dry run, only logging them). Distribution's jitter is 0–59 minutes whatever the
//! interval; Berth bounds it by the interval too, so short intervals behave.

use super::{JobError, Worker, WorkerState};
use crate::config::events::UploadPurging;
use crate::registry::claims::UPLOAD_PURGE;
use crate::registry::Registry;
use rand::Rng;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

pub struct PurgeWorker {
    registry: Arc<Registry>,
    config: UploadPurging,
    next: Instant,
    /// This node, in the cluster-wide claim of each run.
    owner: String,
}

impl PurgeWorker {
    pub fn new(registry: Arc<Registry>, config: UploadPurging, owner: String) -> PurgeWorker {
        let bound = config.interval.min(Duration::from_secs(3600));
        let jitter = if config.interval >= Duration::from_secs(3600) {
            // Whole minutes, as Distribution does.
            Duration::from_secs(60 * rand::thread_rng().gen_range(0..60))
        } else {
            bound.mul_f64(rand::thread_rng().gen_range(0.0..1.0))
        };
        tracing::info!("Starting upload purge in {}", go_duration(jitter));
        PurgeWorker {
            registry,
            config,
            next: Instant::now() + jitter,
            owner,
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
        // One run per interval in a whole cluster: the claim lasts (almost) the
        // interval, and whichever node's timer fires first after it ran out runs.
        let period = self
            .config
            .interval
            .saturating_sub(Duration::from_secs(1))
            .max(Duration::from_secs(1));
        match self
            .registry
            .claim_job(UPLOAD_PURGE, &self.owner, period)
            .await
            .map_err(|e| JobError(format!("upload purge could not claim its run: {e}")))?
        {
            Ok(()) => {
                self.registry
                    .purge_uploads(self.config.age, self.config.dry_run)
                    .await
                    .map_err(|e| JobError(format!("upload purge failed: {e}")))?;
            }
            Err(holder) => tracing::debug!(
                holder = %holder.owner,
                "upload purge: another node ran it in this interval"
            ),
        }
        tracing::info!(
            "Starting upload purge in {}",
            go_duration(self.config.interval)
        );
        Ok(WorkerState::Idle)
    }

    async fn wait_for_work(&mut self) {
        tokio::time::sleep_until(self.next).await;
    }
}

/// A duration as Go prints it (`24h0m0s`, `37m0s`, `1.5s`), for Distribution's log lines.
fn go_duration(d: Duration) -> String {
    let secs = d.as_secs();
    let frac = d.subsec_nanos();
    let s = if frac == 0 {
        format!("{}s", secs % 60)
    } else {
        let f = format!("{frac:09}");
        format!("{}.{}s", secs % 60, f.trim_end_matches('0'))
    };
    match (secs / 3600, secs / 60 % 60) {
        (0, 0) => s,
        (0, m) => format!("{m}m{s}"),
        (h, m) => format!("{h}h{m}m{s}"),
    }
}

#[cfg(test)]
mod tests {
    use super::go_duration;
    use std::time::Duration;

    #[test]
    fn durations_print_like_go() {
        assert_eq!(go_duration(Duration::from_secs(24 * 3600)), "24h0m0s");
        assert_eq!(go_duration(Duration::from_secs(37 * 60)), "37m0s");
        assert_eq!(go_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(go_duration(Duration::ZERO), "0s");
    }
}
