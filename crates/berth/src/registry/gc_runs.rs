//! Recorded garbage collection runs (Harbor's GC history): every collection, from
//! `berth garbage-collect`, the management API or the schedule, is a row of
//! `meta::GcRuns` with its parameters, outcome, counts and log. The deployment's claim
//! (`claims.rs`) keeps it to one run at a time; a scheduled run also takes its tick, so
//! of several nodes firing on the same tick one runs.

use super::claims::HeldClaim;
use super::gc::{GcOptions, GcReport};
use super::{Registry, RegistryError, Result};
use crate::meta::{GcRun, GcRunEnd, GcRunsKept, GcSchedule, MetaStore, Page};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A run started by hand (the API's "run now", or `berth garbage-collect`).
pub const MANUAL: &str = "MANUAL";
/// A run started by the schedule.
pub const SCHEDULED: &str = "SCHEDULE";

/// How often a running collection says it is alive; a `Running` record not updated
/// for [`STALE_AFTER`] belongs to a collector that died.
pub const ALIVE_EVERY: Duration = Duration::from_secs(20);
pub const STALE_AFTER: Duration = Duration::from_secs(120);

/// How often a running collection looks whether it was asked to stop.
pub const STOP_CHECK_EVERY: Duration = Duration::from_secs(2);

/// The history kept: the newest 1,000 runs, the logs of the newest 100.
pub const KEPT: GcRunsKept = GcRunsKept {
    runs: 1000,
    logs: 100,
};

/// The most log kept per run: the first and the last half of it, with a line saying
/// how many lines were left out between.
pub const MAX_LOG_BYTES: usize = 1 << 20;

/// The options of a run the schedule starts, from the schedule's stored parameters:
/// `delete_untagged`, and the grace period as `grace_seconds` (the configuration's) or
/// `time_window` hours (the API's, Harbor's default 2).
pub fn scheduled_options(parameters: &str, owner: String) -> GcOptions {
    let p: serde_json::Value = serde_json::from_str(parameters).unwrap_or_default();
    let grace = p["grace_seconds"]
        .as_u64()
        .unwrap_or_else(|| p["time_window"].as_u64().unwrap_or(2).saturating_mul(3600));
    GcOptions {
        dry_run: false,
        delete_untagged: p["delete_untagged"].as_bool().unwrap_or(false),
        grace: Duration::from_secs(grace),
        owner,
    }
}

/// A run's parameters as recorded (Harbor's `job_parameters`).
pub fn parameters(options: &GcOptions) -> String {
    serde_json::json!({
        "delete_untagged": options.delete_untagged,
        "dry_run": options.dry_run,
        "grace_seconds": options.grace.as_secs(),
    })
    .to_string()
}

/// A run recorded and, unless it is a dry run, holding the deployment's claim.
pub(super) struct StartedRun {
    id: i64,
    claim: Option<HeldClaim>,
}

/// A run's log, bounded by [`MAX_LOG_BYTES`].
#[derive(Default)]
struct RunLog {
    head: String,
    tail: VecDeque<String>,
    tail_bytes: usize,
    omitted: u64,
}

impl RunLog {
    fn push(&mut self, line: &str) {
        let half = MAX_LOG_BYTES / 2;
        if self.tail.is_empty() && self.head.len() + line.len() < half {
            self.head.push_str(line);
            self.head.push('\n');
            return;
        }
        self.tail_bytes += line.len() + 1;
        self.tail.push_back(line.to_string());
        while self.tail_bytes > half {
            let Some(old) = self.tail.pop_front() else {
                break;
            };
            self.tail_bytes -= old.len() + 1;
            self.omitted += 1;
        }
    }

    fn text(self) -> String {
        let mut s = self.head;
        if self.omitted > 0 {
            s.push_str(&format!("... {} lines left out ...\n", self.omitted));
        }
        for line in self.tail {
            s.push_str(&line);
            s.push('\n');
        }
        s
    }
}

impl Registry {
    /// Claim the deployment's collection (not for a dry run) and record a run of
    /// `kind`; `None` if `scheduled_for` is a tick another node took.
    pub(super) async fn start_run(
        &self,
        kind: &str,
        scheduled_for: Option<i64>,
        options: &GcOptions,
    ) -> Result<Option<StartedRun>> {
        let claim = if options.dry_run {
            None
        } else {
            Some(self.claim_collection(&options.owner).await?)
        };
        let recorded = self
            .meta
            .gc_run_start(
                kind,
                scheduled_for,
                &parameters(options),
                &options.owner,
                KEPT,
            )
            .await;
        if let Ok(Some(id)) = recorded {
            return Ok(Some(StartedRun { id, claim }));
        }
        if let Some(c) = claim {
            c.release().await;
        }
        recorded?;
        Ok(None)
    }

    /// Collect for a started run, record how it ended, and give the claim back.
    pub(super) async fn finish_run(
        &self,
        run: StartedRun,
        options: &GcOptions,
        out: &mut (dyn FnMut(String) + Send),
    ) -> Result<GcReport> {
        let stop = Arc::new(AtomicBool::new(false));
        // Stopped when this returns, and also if this future is dropped or panics.
        let alive = AbortOnDrop(keep_alive(self.meta.clone(), run.id, stop.clone()));
        let mut log = RunLog::default();
        let result = {
            let mut tee = |line: String| {
                log.push(&line);
                out(line);
            };
            self.collect(options, &mut tee, &stop).await
        };
        drop(alive);
        let end = match &result {
            Ok(r) => GcRunEnd {
                status: if r.stopped { "Stopped" } else { "Success" }.into(),
                deleted_blobs: r.deleted_blobs as u64,
                deleted_manifests: r.deleted_manifests as u64,
                freed_bytes: r.freed_bytes,
                error: None,
                log: log.text(),
            },
            Err(e) => {
                log.push(&format!("error: {e}"));
                GcRunEnd {
                    status: "Error".into(),
                    error: Some(e.to_string()),
                    log: log.text(),
                    ..GcRunEnd::default()
                }
            }
        };
        if let Err(e) = self.meta.gc_run_end(run.id, &end).await {
            tracing::warn!(run = run.id, error = %e, "cannot record the end of a garbage collection run; it shows as failed once it stops answering");
        }
        if let Some(c) = run.claim {
            c.release().await;
        }
        result
    }

    /// Start a recorded manual run in the background (the API's "run now"); its id, or
    /// [`RegistryError::JobRunning`] while another collection runs.
    pub async fn start_garbage_collection(self: &Arc<Self>, options: GcOptions) -> Result<i64> {
        let run = self
            .start_run(MANUAL, None, &options)
            .await?
            .ok_or_else(untracked)?;
        let id = run.id;
        let registry = self.clone();
        tokio::spawn(async move {
            let mut out = |line: String| tracing::debug!(run = id, "{line}");
            match registry.finish_run(run, &options, &mut out).await {
                Ok(r) => tracing::info!(
                    run = id,
                    deleted_blobs = r.deleted_blobs,
                    deleted_manifests = r.deleted_manifests,
                    freed_bytes = r.freed_bytes,
                    "garbage collection finished"
                ),
                Err(e) => tracing::error!(run = id, error = %e, "garbage collection failed"),
            }
        });
        Ok(id)
    }

    /// Run the collection the schedule asks for at `tick` (seconds since the epoch),
    /// unless another node took that tick or another collection is running.
    pub async fn scheduled_garbage_collection(
        &self,
        tick: i64,
        options: &GcOptions,
    ) -> Result<Option<(i64, GcReport)>> {
        let run = match self.start_run(SCHEDULED, Some(tick), options).await {
            Ok(Some(run)) => run,
            Ok(None) => return Ok(None),
            Err(RegistryError::JobRunning(m)) => {
                tracing::info!("scheduled garbage collection skipped: {m}");
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let id = run.id;
        let mut out = |line: String| tracing::debug!(run = id, "{line}");
        let report = self.finish_run(run, options, &mut out).await?;
        Ok(Some((id, report)))
    }
}

impl Registry {
    /// Recorded runs, newest first, and how many there are.
    pub async fn gc_runs(&self, page: Page) -> Result<(Vec<GcRun>, u64)> {
        Ok(self.meta.gc_runs(page).await?)
    }

    pub async fn gc_run(&self, id: i64) -> Result<Option<GcRun>> {
        Ok(self.meta.gc_run(id).await?)
    }

    pub async fn gc_run_log(&self, id: i64) -> Result<Option<String>> {
        Ok(self.meta.gc_run_log(id).await?)
    }

    /// The schedule in force: the one set through the API (type `None` included), else
    /// the configuration's (`storage.maintenance.garbagecollect`), if any.
    pub async fn gc_schedule(&self) -> Result<Option<GcSchedule>> {
        Ok(match self.meta.gc_schedule().await? {
            Some(s) => Some(s),
            None => self.settings.gc_schedule.clone(),
        })
    }

    /// Ask run `id` to stop (it stops within a few seconds, between two steps; what it
    /// deleted stays deleted); `false` if there is no such run.
    pub async fn stop_gc_run(&self, id: i64) -> Result<bool> {
        Ok(self.meta.gc_run_stop(id).await?)
    }

    /// Replace the schedule (the cron string is checked by the caller: [`check_cron`]).
    pub async fn set_gc_schedule(&self, schedule: &GcSchedule) -> Result<()> {
        Ok(self.meta.set_gc_schedule(schedule).await?)
    }
}

/// Parse a schedule: six fields, seconds first, in UTC (Harbor's syntax, e.g.
/// `0 0 3 * * *` for 03:00 every day).
fn parse_cron(cron: &str) -> std::result::Result<croner::Cron, String> {
    if cron.split_whitespace().count() != 6 {
        return Err(format!(
            "{cron:?} must have six fields, seconds first (e.g. \"0 0 3 * * *\" for 03:00 UTC daily)"
        ));
    }
    croner::Cron::new(cron)
        .with_seconds_required()
        .parse()
        .map_err(|e| format!("{cron:?}: {e}"))
}

/// Whether `cron` is a schedule [`next_tick`] can follow.
pub fn check_cron(cron: &str) -> std::result::Result<(), String> {
    parse_cron(cron).map(|_| ())
}

/// The first tick of `cron` after `after` (seconds since the epoch, UTC); `None` for
/// an empty or invalid schedule, or one that never fires again.
pub fn next_tick(cron: &str, after: i64) -> Option<i64> {
    if cron.trim().is_empty() {
        return None;
    }
    let cron = parse_cron(cron).ok()?;
    let from = chrono::DateTime::from_timestamp(after, 0)?;
    cron.find_next_occurrence(&from, false)
        .ok()
        .map(|t| t.timestamp())
}

/// A manual run (no tick) that was not recorded: the database broke its contract.
pub(super) fn untracked() -> RegistryError {
    RegistryError::Meta(crate::meta::MetaError::Corrupt(
        "a garbage collection run without a tick was not recorded".into(),
    ))
}

/// A background task stopped when this is dropped (a run's keep-alive; retention runs
/// use it too).
pub(super) struct AbortOnDrop(pub(super) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Until aborted: move the run's `updated_at` forward every [`ALIVE_EVERY`], and raise
/// `stop` once a stop was asked for it (looked at every [`STOP_CHECK_EVERY`]).
fn keep_alive(
    meta: Arc<dyn MetaStore>,
    id: i64,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(STOP_CHECK_EVERY);
        let mut last_alive = tokio::time::Instant::now();
        tick.tick().await;
        loop {
            tick.tick().await;
            match meta.gc_run_stop_requested(id).await {
                Ok(true) => stop.store(true, Ordering::Relaxed),
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(run = id, error = %e, "cannot look whether garbage collection was asked to stop")
                }
            }
            if last_alive.elapsed() >= ALIVE_EVERY {
                last_alive = tokio::time::Instant::now();
                if let Err(e) = meta.gc_run_alive(id).await {
                    tracing::warn!(run = id, error = %e, "cannot record that garbage collection is alive");
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::{RunLog, MAX_LOG_BYTES};
    use crate::meta::sqlite::SqliteMeta;
    use crate::meta::Page;
    use crate::registry::gc::GcOptions;
    use crate::registry::{Registry, Settings};
    use crate::storage::memory::MemoryBlobStore;
    use crate::storage::BlobStore;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    use std::time::Duration;

    /// A collection asked to stop stops before it deletes anything; one not asked
    /// collects, and both are in the history with their outcome.
    #[tokio::test]
    async fn a_stopped_collection_deletes_nothing_more() {
        let dir = tempfile::tempdir().expect("tempdir");
        let meta = SqliteMeta::open(&dir.path().join("berth.db"))
            .await
            .expect("meta");
        let blobs = Arc::new(MemoryBlobStore::new());
        let registry = Registry::new(blobs.clone(), Arc::new(meta), Settings::default());
        let data = bytes::Bytes::from_static(b"unreferenced");
        let digest = oci::Digest::of(oci::Algorithm::Sha256, &data);
        let body: crate::storage::ByteStream =
            Box::pin(futures_util::stream::once(async move { Ok(data) }));
        registry
            .put_blob(&"a/b".parse().expect("repo"), &digest, body)
            .await
            .expect("push");
        let options = GcOptions {
            dry_run: false,
            delete_untagged: false,
            grace: Duration::ZERO,
            owner: "test".into(),
        };
        let stopped = registry
            .collect(&options, &mut |_| {}, &AtomicBool::new(true))
            .await
            .expect("collect");
        assert!(stopped.stopped);
        assert_eq!(stopped.deleted_blobs, 0);
        assert!(blobs.stat((&digest).into()).await.expect("stat").is_some());
        let mut lines = Vec::new();
        let done = registry
            .garbage_collect(&options, &mut |l| lines.push(l))
            .await
            .expect("collect");
        assert!(!done.stopped);
        assert_eq!(done.deleted_blobs, 1);
        assert!(blobs.stat((&digest).into()).await.expect("stat").is_none());
        let (runs, total) = registry.gc_runs(Page::all()).await.expect("runs");
        assert_eq!(total, 1, "collect() alone is not a recorded run");
        assert_eq!(runs[0].status, "Success");
        assert_eq!(runs[0].deleted_blobs, 1);
        let log = registry
            .gc_run_log(runs[0].id)
            .await
            .expect("log")
            .expect("found");
        assert_eq!(log, lines.join("\n") + "\n");
    }

    /// A stop asked for in the middle of the sweep ends it after the batch in hand:
    /// that batch's blobs are deleted, every later one is kept.
    #[tokio::test]
    async fn a_stop_mid_sweep_ends_after_the_batch() {
        use std::sync::atomic::Ordering;
        let dir = tempfile::tempdir().expect("tempdir");
        let meta = SqliteMeta::open(&dir.path().join("berth.db"))
            .await
            .expect("meta");
        let blobs = Arc::new(MemoryBlobStore::new());
        let registry = Arc::new(Registry::new(
            blobs.clone(),
            Arc::new(meta),
            Settings::default(),
        ));
        let mut digests = Vec::new();
        for i in 0..100 {
            let data = bytes::Bytes::from(format!("unreferenced {i}"));
            let digest = oci::Digest::of(oci::Algorithm::Sha256, &data);
            let body: crate::storage::ByteStream =
                Box::pin(futures_util::stream::once(async move { Ok(data) }));
            registry
                .put_blob(&"a/b".parse().expect("repo"), &digest, body)
                .await
                .expect("push");
            digests.push(digest);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let pause = crate::registry::gc::race::Pause::at("gc:hidden");
        let (r, s) = (registry.clone(), stop.clone());
        let task = tokio::spawn(pause.clone().scope(async move {
            let options = GcOptions {
                dry_run: false,
                delete_untagged: false,
                grace: Duration::ZERO,
                owner: "test".into(),
            };
            let mut out = |_: String| {};
            r.collect(&options, &mut out, &s).await
        }));
        pause.reached.notified().await;
        stop.store(true, Ordering::Relaxed);
        pause.resume.notify_one();
        let report = task.await.expect("join").expect("collect");
        assert!(report.stopped);
        assert_eq!(report.deleted_blobs, 64, "the first batch");
        let mut kept = 0;
        for d in &digests {
            if blobs.stat(d.into()).await.expect("stat").is_some() {
                kept += 1;
            }
        }
        assert_eq!(kept, 36);
    }

    #[test]
    fn cron_ticks_are_utc_with_seconds_first() {
        use super::{check_cron, next_tick};
        // 2023-11-14T22:13:20Z
        let t = 1_700_000_000;
        assert_eq!(next_tick("0 0 * * * *", t), Some(1_700_002_800)); // 23:00
        assert_eq!(next_tick("0 0 0 * * *", t), Some(1_700_006_400)); // midnight
        assert_eq!(next_tick("*/5 * * * * *", t), Some(t + 5));
        assert_eq!(next_tick("", t), None);
        assert!(check_cron("0 0 * * *").is_err(), "five fields are refused");
        assert!(check_cron("0 0 25 * * *").is_err());
        assert!(check_cron("0 30 2 * * 0").is_ok());
    }

    #[test]
    fn a_long_log_keeps_its_head_and_tail() {
        let mut log = RunLog::default();
        let line = "x".repeat(99);
        for i in 0..30_000 {
            log.push(&format!("{i:05} {line}"));
        }
        let text = log.text();
        assert!(text.len() <= MAX_LOG_BYTES + 100, "{}", text.len());
        assert!(text.starts_with("00000 "));
        assert!(text.ends_with(&format!("29999 {line}\n")));
        assert!(text.contains(" lines left out ...\n"));
        let mut short = RunLog::default();
        short.push("one");
        short.push("two");
        assert_eq!(short.text(), "one\ntwo\n");
    }
}
