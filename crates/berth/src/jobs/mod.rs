//! Background work: the [`Worker`] trait and the [`Runner`] that starts workers and stops
//! them on shutdown. A worker runs until its [`Shutdown`] fires; it never goes through
//! HTTP, and works on the registry's domain services. Workers: [`health`] checks.

pub mod health;

use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A long-running background job.
#[async_trait::async_trait]
pub trait Worker: Send + 'static {
    /// A short name for logs.
    fn name(&self) -> String;
    /// Do the work until `shutdown` fires.
    async fn run(self: Box<Self>, shutdown: Shutdown);
}

/// Fires once when the process shuts down.
#[derive(Clone)]
pub struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    /// Wait until shutdown was requested (returns at once if it already was).
    pub async fn wait(&mut self) {
        // An error means the runner is gone: that is a shutdown too.
        let _ = self.0.wait_for(|stop| *stop).await;
    }
}

/// Starts workers and stops them together.
pub struct Runner {
    stop: watch::Sender<bool>,
    tasks: Vec<(String, JoinHandle<()>)>,
}

impl Default for Runner {
    fn default() -> Self {
        Runner {
            stop: watch::channel(false).0,
            tasks: Vec::new(),
        }
    }
}

impl Runner {
    pub fn spawn(&mut self, worker: Box<dyn Worker>) {
        let name = worker.name();
        tracing::debug!(worker = %name, "starting background worker");
        let shutdown = Shutdown(self.stop.subscribe());
        self.tasks.push((
            name,
            tokio::spawn(async move { worker.run(shutdown).await }),
        ));
    }

    /// Signal every worker and wait for them to finish.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for (name, task) in self.tasks {
            if let Err(e) = task.await {
                tracing::error!(worker = %name, "background worker failed: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Waits(tokio::sync::mpsc::Sender<&'static str>);

    #[async_trait::async_trait]
    impl Worker for Waits {
        fn name(&self) -> String {
            "waits".into()
        }
        async fn run(self: Box<Self>, mut shutdown: Shutdown) {
            let _ = self.0.send("started").await;
            shutdown.wait().await;
            let _ = self.0.send("stopped").await;
        }
    }

    #[tokio::test]
    async fn workers_run_until_stopped() {
        let (tx, mut rx) = tokio::sync::mpsc::channel(4);
        let mut runner = Runner::default();
        runner.spawn(Box::new(Waits(tx)));
        assert_eq!(rx.recv().await, Some("started"));
        runner.stop().await;
        assert_eq!(rx.recv().await, Some("stopped"));
    }
}
