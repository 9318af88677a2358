//! Scheduled garbage collection: every node follows the schedule set through the API
//! (`/api/v2.0/system/gc/schedule`, stored in metadata; else the configuration's
//! `storage.maintenance.garbagecollect`) and, at each tick, asks the
//! registry for the run of that tick. The tick is recorded with the run, so of the nodes
//! firing on it one collects; the deployment's claim keeps it to one run at a time.

use super::{JobError, Worker, WorkerState};
use crate::registry::gc::GcOptions;
use crate::registry::gc_runs::{next_tick, scheduled_options};
use crate::registry::Registry;
use std::sync::Arc;
use std::time::Duration;

/// How often the schedule is read again (a change through the API on any node is
/// followed within this time).
const REREAD: Duration = Duration::from_secs(5);

pub struct GcScheduleWorker {
    registry: Arc<Registry>,
    /// This node, as runs record who collected.
    owner: String,
    /// The schedule followed (cron, parameters) and its next tick.
    armed: Option<(String, String, i64)>,
}

impl GcScheduleWorker {
    pub fn new(registry: Arc<Registry>, owner: String) -> GcScheduleWorker {
        GcScheduleWorker {
            registry,
            owner,
            armed: None,
        }
    }

    fn options(&self, parameters: &str) -> GcOptions {
        scheduled_options(parameters, format!("schedule on {}", self.owner))
    }
}

#[async_trait::async_trait]
impl Worker for GcScheduleWorker {
    fn name(&self) -> String {
        "gcschedule".into()
    }

    async fn work(&mut self) -> Result<WorkerState, JobError> {
        let schedule =
            self.registry.gc_schedule().await.map_err(|e| {
                JobError(format!("cannot read the garbage collection schedule: {e}"))
            })?;
        let now = crate::meta::now();
        let Some(s) = schedule.filter(|s| !s.cron.is_empty()) else {
            self.armed = None;
            return Ok(WorkerState::Idle);
        };
        let same = matches!(&self.armed, Some((cron, params, _)) if *cron == s.cron && *params == s.parameters);
        if !same {
            self.armed = next_tick(&s.cron, now).map(|t| (s.cron.clone(), s.parameters.clone(), t));
            return Ok(WorkerState::Idle);
        }
        let Some((cron, params, tick)) = self.armed.clone() else {
            return Ok(WorkerState::Idle);
        };
        if now < tick {
            return Ok(WorkerState::Idle);
        }
        // Missed ticks (a busy or paused node) are not made up: the next is after now.
        self.armed = next_tick(&cron, now).map(|t| (cron.clone(), params.clone(), t));
        match self
            .registry
            .scheduled_garbage_collection(tick, &self.options(&params))
            .await
        {
            Ok(Some((id, r))) => tracing::info!(
                run = id,
                deleted_blobs = r.deleted_blobs,
                deleted_manifests = r.deleted_manifests,
                freed_bytes = r.freed_bytes,
                "scheduled garbage collection finished"
            ),
            Ok(None) => {
                tracing::debug!(
                    tick,
                    "scheduled garbage collection: another node took this tick"
                )
            }
            Err(e) => {
                return Err(JobError(format!(
                    "scheduled garbage collection failed: {e}"
                )))
            }
        }
        // Ticks that passed while this run lasted are not made up either.
        self.armed = next_tick(&cron, crate::meta::now()).map(|t| (cron, params, t));
        Ok(WorkerState::Idle)
    }

    async fn wait_for_work(&mut self) {
        let now = crate::meta::now();
        let wait = match &self.armed {
            Some((_, _, tick)) if *tick > now => {
                Duration::from_secs(u64::try_from(tick - now).unwrap_or(0)).min(REREAD)
            }
            Some(_) => Duration::from_millis(100),
            None => REREAD,
        };
        // Whole seconds: wake just after the tick's second began.
        tokio::time::sleep(wait + Duration::from_millis(20)).await;
    }
}
