//! Background work: the [`Worker`] trait and the [`Jobs`] runner that drives workers until
//! shutdown. Workers: [`notify::NotifyWorker`] (webhook delivery from the outbox, and
//! each endpoint's backlog cap), [`pull_events::PullEventsWorker`] (pull events written
//! to the outbox in batches),
//! [`purge::PurgeWorker`] (upload purging), [`health::HealthWorker`] (health checks) and
//! [`proxy::ProxyExpiryWorker`] (pull-through cache expiry), [`gc::GcScheduleWorker`]
//! (scheduled garbage collection), [`retention::RetentionScheduleWorker`] (scheduled tag
//! retention), [`pull_times::PullTimesWorker`] (manifests' pull times written in
//! batches), [`registry_health::RegistryHealthWorker`] (proxy-cache projects' upstream
//! registries checked) and [`audit::AuditWorker`]
//! (audit records written in batches, old ones pruned).
//!
//! A worker does one step at a time (`work`) and says whether more is ready; when idle it
//! waits (`wait_for_work`) for a timer or a wake-up. The runner stops it between steps, or
//! by dropping the step in flight, when shutdown is signalled through a
//! `tokio::sync::watch` channel, then calls `stop` so it can hand back what it holds.
//! Workers go through `registry/`, never through HTTP. State that must survive a crash
//! lives in `meta` (the outbox), never only in a worker.

pub mod audit;
pub mod gc;
pub mod health;
pub mod notify;
pub mod proxy;
pub mod pull_events;
pub mod pull_times;
pub mod purge;
pub mod registry_health;
pub mod retention;

use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What a step of work found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerState {
    /// More work is ready: step again.
    Busy,
    /// Nothing to do: wait for work.
    Idle,
    /// Finished for good.
    Done,
}

/// A failed step; the worker is retried after a pause.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct JobError(pub String);

/// A background job.
#[async_trait::async_trait]
pub trait Worker: Send + 'static {
    /// A stable name for logs and status (`notify:<endpoint>`, `uploadpurge`).
    fn name(&self) -> String;
    /// Do one step.
    async fn work(&mut self) -> Result<WorkerState, JobError>;
    /// Wait until there may be work again (a timer, a wake-up).
    async fn wait_for_work(&mut self);
    /// Called once when stopping (possibly after a step was cut short).
    async fn stop(&mut self) {}
}

/// What a worker is doing, for status displays and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerStatus {
    pub name: String,
    /// `starting`, `busy`, `idle`, `done`, `stopped`, or `failing`.
    pub state: &'static str,
    /// Steps completed.
    pub steps: u64,
    /// Failed steps.
    pub errors: u64,
    pub last_error: Option<String>,
}

/// Pause after a failed step.
const RETRY_AFTER_ERROR: Duration = Duration::from_secs(1);

/// The runner: one task per worker, all stopped together.
pub struct Jobs {
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    status: Arc<Mutex<Vec<WorkerStatus>>>,
}

impl Default for Jobs {
    fn default() -> Self {
        Jobs::new()
    }
}

impl Jobs {
    pub fn new() -> Jobs {
        Jobs {
            shutdown: watch::channel(false).0,
            tasks: Vec::new(),
            status: Arc::default(),
        }
    }

    /// Start driving `worker`.
    pub fn spawn(&mut self, mut worker: impl Worker) {
        let name = worker.name();
        let index = {
            let mut all = self.status.lock().unwrap_or_else(|p| p.into_inner());
            all.push(WorkerStatus {
                name: name.clone(),
                state: "starting",
                steps: 0,
                errors: 0,
                last_error: None,
            });
            all.len() - 1
        };
        let status = self.status.clone();
        let set = move |f: &dyn Fn(&mut WorkerStatus)| {
            let mut all = status.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(s) = all.get_mut(index) {
                f(s);
            }
        };
        let mut shutdown = self.shutdown.subscribe();
        self.tasks.push(tokio::spawn(async move {
            tracing::debug!(worker = %name, "worker started");
            loop {
                if *shutdown.borrow() {
                    break;
                }
                let step = tokio::select! {
                    r = worker.work() => r,
                    _ = shutdown.changed() => break,
                };
                match step {
                    Ok(WorkerState::Busy) => set(&|s| {
                        s.state = "busy";
                        s.steps += 1;
                    }),
                    Ok(WorkerState::Idle) => {
                        set(&|s| {
                            s.state = "idle";
                            s.steps += 1;
                        });
                        tokio::select! {
                            _ = worker.wait_for_work() => {}
                            _ = shutdown.changed() => break,
                        }
                    }
                    Ok(WorkerState::Done) => {
                        set(&|s| s.state = "done");
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(worker = %name, error = %e, "background job step failed; retrying");
                        let msg = e.to_string();
                        set(&|s| {
                            s.state = "failing";
                            s.errors += 1;
                            s.last_error = Some(msg.clone());
                        });
                        tokio::select! {
                            _ = tokio::time::sleep(RETRY_AFTER_ERROR) => {}
                            _ = shutdown.changed() => break,
                        }
                    }
                }
            }
            worker.stop().await;
            set(&|s| {
                if s.state != "done" {
                    s.state = "stopped";
                }
            });
            tracing::debug!(worker = %name, "worker stopped");
        }));
    }

    /// Every worker's status.
    pub fn status(&self) -> Vec<WorkerStatus> {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Signal shutdown and wait (at most `grace`) for the workers to stop.
    pub async fn shutdown(self, grace: Duration) {
        let _ = self.shutdown.send(true);
        let all = futures_util::future::join_all(self.tasks);
        if tokio::time::timeout(grace, all).await.is_err() {
            tracing::warn!("background jobs did not stop within {grace:?}; leaving them");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Counter {
        left: u32,
        fail_once: bool,
        stopped: Arc<Mutex<bool>>,
    }

    #[async_trait::async_trait]
    impl Worker for Counter {
        fn name(&self) -> String {
            "counter".into()
        }
        async fn work(&mut self) -> Result<WorkerState, JobError> {
            if self.fail_once {
                self.fail_once = false;
                return Err(JobError("first step fails".into()));
            }
            if self.left == 0 {
                return Ok(WorkerState::Idle);
            }
            self.left -= 1;
            Ok(WorkerState::Busy)
        }
        async fn wait_for_work(&mut self) {
            std::future::pending::<()>().await
        }
        async fn stop(&mut self) {
            *self.stopped.lock().unwrap_or_else(|p| p.into_inner()) = true;
        }
    }

    #[tokio::test]
    async fn runs_until_idle_then_stops_on_shutdown() {
        let stopped = Arc::new(Mutex::new(false));
        let mut jobs = Jobs::new();
        jobs.spawn(Counter {
            left: 3,
            fail_once: true,
            stopped: stopped.clone(),
        });
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let s = jobs.status().remove(0);
            if s.state == "idle" {
                assert_eq!((s.steps, s.errors), (4, 1));
                assert_eq!(s.last_error.as_deref(), Some("first step fails"));
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "worker never went idle: {s:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let status = jobs.status.clone();
        jobs.shutdown(Duration::from_secs(5)).await;
        assert!(*stopped.lock().unwrap_or_else(|p| p.into_inner()));
        assert_eq!(
            status.lock().unwrap_or_else(|p| p.into_inner())[0].state,
            "stopped"
        );
    }
}
