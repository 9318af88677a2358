//! Pull-through cache expiry (`proxy.ttl`): every `proxy.expiryinterval`, remove cached
//! manifests (with their tags) and blob links unused for the ttl, through `registry/`.
//! The bookkeeping lives in metadata, so a restart loses nothing.

use super::{JobError, Worker, WorkerState};
use crate::registry::claims::PROXY_EXPIRY;
use crate::registry::Registry;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

pub struct ProxyExpiryWorker {
    registry: Arc<Registry>,
    interval: Duration,
    next: Instant,
    /// This node, in the cluster-wide claim of each round.
    owner: String,
}

impl ProxyExpiryWorker {
    pub fn new(registry: Arc<Registry>, interval: Duration, owner: String) -> ProxyExpiryWorker {
        ProxyExpiryWorker {
            registry,
            interval,
            next: Instant::now() + interval,
            owner,
        }
    }
}

#[async_trait::async_trait]
impl Worker for ProxyExpiryWorker {
    fn name(&self) -> String {
        "proxyexpiry".into()
    }

    async fn work(&mut self) -> Result<WorkerState, JobError> {
        if Instant::now() < self.next {
            return Ok(WorkerState::Idle);
        }
        // One node expires the cache per interval in a cluster (the holder renews its
        // claim while it works through full batches).
        let period = self.interval.max(Duration::from_secs(1));
        if let Err(holder) = self
            .registry
            .claim_job(PROXY_EXPIRY, &self.owner, period)
            .await
            .map_err(|e| {
                JobError(format!(
                    "pull-through cache expiry could not claim its round: {e}"
                ))
            })?
        {
            tracing::debug!(holder = %holder.owner, "pull-through cache expiry: another node runs it in this interval");
            self.next = Instant::now() + self.interval;
            return Ok(WorkerState::Idle);
        }
        let removed = self
            .registry
            .expire_proxy_cache()
            .await
            .map_err(|e| JobError(format!("pull-through cache expiry failed: {e}")))?;
        if removed > 0 {
            // A full batch: more may be waiting.
            tracing::info!(removed, "pull-through cache: expired entries removed");
            return Ok(WorkerState::Busy);
        }
        self.next = Instant::now() + self.interval;
        Ok(WorkerState::Idle)
    }

    async fn wait_for_work(&mut self) {
        tokio::time::sleep_until(self.next).await;
    }
}
