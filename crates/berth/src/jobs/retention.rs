//! Scheduled tag retention: every node follows each project's retention schedule
//! (`trigger.settings.cron` of its policy, read from metadata every few seconds) and, at
//! a tick, asks the registry for that tick's run. The tick is recorded with the run, so
//! of the nodes firing on it one runs; a policy's claim keeps it to one run at a time.

use super::{JobError, Worker, WorkerState};
use crate::registry::gc_runs::next_tick;
use crate::registry::Registry;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// How often the schedules are read again.
const REREAD: Duration = Duration::from_secs(5);

pub struct RetentionScheduleWorker {
    registry: Arc<Registry>,
    owner: String,
    /// Per policy: the schedule followed and its next tick.
    armed: HashMap<i64, (String, i64)>,
}

impl RetentionScheduleWorker {
    pub fn new(registry: Arc<Registry>, owner: String) -> RetentionScheduleWorker {
        RetentionScheduleWorker {
            registry,
            owner,
            armed: HashMap::new(),
        }
    }
}

#[async_trait::async_trait]
impl Worker for RetentionScheduleWorker {
    fn name(&self) -> String {
        "retention-schedule".into()
    }

    async fn work(&mut self) -> Result<WorkerState, JobError> {
        let policies = self
            .registry
            .scheduled_retentions()
            .await
            .map_err(|e| JobError(format!("cannot read the retention schedules: {e}")))?;
        let now = crate::meta::now();
        let mut due = Vec::new();
        let mut armed = HashMap::new();
        for p in policies {
            match self.armed.get(&p.id) {
                Some((cron, tick)) if *cron == p.cron => {
                    if now >= *tick {
                        due.push((p.id, *tick));
                        // Missed ticks are not made up: the next is after now.
                        if let Some(t) = next_tick(&p.cron, now) {
                            armed.insert(p.id, (p.cron.clone(), t));
                        }
                    } else {
                        armed.insert(p.id, (cron.clone(), *tick));
                    }
                }
                _ => {
                    if let Some(t) = next_tick(&p.cron, now) {
                        armed.insert(p.id, (p.cron.clone(), t));
                    }
                }
            }
        }
        self.armed = armed;
        let owner = format!("schedule on {}", self.owner);
        for (id, tick) in due {
            match self.registry.scheduled_retention(id, tick, &owner).await {
                Ok(Some((run, status))) => {
                    tracing::info!(policy = id, run, status, "scheduled retention run finished")
                }
                Ok(None) => tracing::debug!(
                    policy = id,
                    tick,
                    "scheduled retention: another node took this tick"
                ),
                Err(e) => tracing::warn!(policy = id, error = %e, "scheduled retention run failed"),
            }
        }
        Ok(WorkerState::Idle)
    }

    async fn wait_for_work(&mut self) {
        let now = crate::meta::now();
        let next = self.armed.values().map(|(_, t)| *t).min();
        let wait = match next {
            Some(t) if t > now => {
                Duration::from_secs(u64::try_from(t - now).unwrap_or(0)).min(REREAD)
            }
            Some(_) => Duration::from_millis(100),
            None => REREAD,
        };
        tokio::time::sleep(wait + Duration::from_millis(20)).await;
    }
}
