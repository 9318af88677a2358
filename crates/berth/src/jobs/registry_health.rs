//! Health of the upstream registries proxy-cache projects pull through: every
//! [`HEALTH_INTERVAL`], one node of a cluster (a claim) checks each registered registry
//! (`GET /v2/` with its credentials) and records `healthy` or `unhealthy`, which
//! `/api/v2.0/registries` shows, as Harbor's periodic check does.

use super::{JobError, Worker, WorkerState};
use crate::registry::claims::REGISTRY_HEALTH;
use crate::registry::Registry;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// How often the registries are checked.
pub const HEALTH_INTERVAL: Duration = Duration::from_secs(300);

pub struct RegistryHealthWorker {
    registry: Arc<Registry>,
    next: Instant,
    /// This node, in the cluster-wide claim of each round.
    owner: String,
}

impl RegistryHealthWorker {
    pub fn new(registry: Arc<Registry>, owner: String) -> RegistryHealthWorker {
        RegistryHealthWorker {
            registry,
            next: Instant::now() + HEALTH_INTERVAL,
            owner,
        }
    }
}

#[async_trait::async_trait]
impl Worker for RegistryHealthWorker {
    fn name(&self) -> String {
        "registryhealth".into()
    }

    async fn work(&mut self) -> Result<WorkerState, JobError> {
        if Instant::now() < self.next {
            return Ok(WorkerState::Idle);
        }
        self.next = Instant::now() + HEALTH_INTERVAL;
        let claimed = self
            .registry
            .claim_job(REGISTRY_HEALTH, &self.owner, HEALTH_INTERVAL)
            .await
            .map_err(|e| {
                JobError(format!(
                    "registry health checks could not claim their round: {e}"
                ))
            })?;
        if claimed.is_err() {
            return Ok(WorkerState::Idle); // another node checks them in this interval
        }
        let registries = self.registry.upstream_registries().await.map_err(|e| {
            JobError(format!(
                "registry health checks cannot list the registries: {e}"
            ))
        })?;
        for r in &registries {
            match self.registry.check_upstream_registry(r).await {
                Ok(Ok(())) => {}
                Ok(Err(why)) => tracing::warn!(
                    registry = %r.registry.name,
                    url = %r.registry.url,
                    "upstream registry is unhealthy: {why}"
                ),
                Err(e) => {
                    return Err(JobError(format!(
                        "registry health checks cannot record a verdict: {e}"
                    )))
                }
            }
        }
        Ok(WorkerState::Idle)
    }

    async fn wait_for_work(&mut self) {
        tokio::time::sleep_until(self.next).await;
    }
}
