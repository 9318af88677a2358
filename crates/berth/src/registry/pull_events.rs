//! Pull events, recorded off the request path. A pull changes nothing, so its event has
//! no transaction to ride in; writing one transaction (`synchronous=FULL`, on the single
//! writer) per pull made every pull wait behind pushes and garbage collection. Instead a
//! pull hands its outbox rows to this bounded in-process queue and returns; a flush
//! (the `jobs::pull_events` worker, every [`FLUSH_INTERVAL`] or [`BATCH`] pulls, and on
//! shutdown) writes them in one transaction per batch and wakes the delivery workers.
//!
//! What this costs: a crash loses the pulls still queued (the last interval's, or up to
//! [`CAPACITY`] when the database stalled), never a change's event, which stays in the
//! change's own transaction. When the queue is full the new pull's event is dropped and
//! counted, and the request goes on. Order: batches are written in queue order under one
//! lock, and a change with events first flushes the pulls queued before it
//! ([`PullQueue::flush`] from `Registry::pulls_first`), so an endpoint still sees a pull
//! before a change made after that pull completed.

use super::events::{DropReason, DroppedEvents};
use crate::meta::{MetaError, MetaStore, NewEvent};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Most pulls waiting for a flush; past it, new pull events are dropped.
pub const CAPACITY: usize = 10_000;
/// Most pulls written in one transaction; a full batch is flushed at once.
pub const BATCH: usize = 250;
/// Longest a queued pull waits for its flush, when no batch fills up.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(100);
/// Least time between two log lines about dropped pull events.
const DROP_LOG_EVERY: Duration = Duration::from_secs(10);

/// The queue of pull events not yet in the outbox.
pub struct PullQueue {
    inner: Arc<Inner>,
}

struct Inner {
    meta: Arc<dyn MetaStore>,
    state: Mutex<State>,
    /// Held from taking a batch until it is written: batches reach the outbox in queue
    /// order, and whoever flushes after a batch was taken waits for it.
    flushing: Arc<tokio::sync::Mutex<()>>,
    /// Rung when the queue gets its first pull, or a full batch.
    ready: Notify,
    /// Each endpoint's delivery bell.
    wakes: Vec<(String, Arc<Notify>)>,
    dropped: Arc<DroppedEvents>,
    capacity: usize,
}

#[derive(Default)]
struct State {
    /// One entry per pull: its outbox rows (one per endpoint that wants it).
    queued: VecDeque<Vec<NewEvent>>,
    /// Pulls dropped since the last log line about it, and when that was.
    unlogged_drops: u64,
    last_drop_log: Option<Instant>,
}

impl PullQueue {
    pub fn new(
        meta: Arc<dyn MetaStore>,
        wakes: Vec<(String, Arc<Notify>)>,
        dropped: Arc<DroppedEvents>,
        capacity: usize,
    ) -> PullQueue {
        PullQueue {
            inner: Arc::new(Inner {
                meta,
                state: Mutex::default(),
                flushing: Arc::default(),
                ready: Notify::new(),
                wakes,
                dropped,
                capacity,
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queue one pull's rows without waiting; when the queue is full they are dropped,
    /// counted per endpoint, and logged (at most every few seconds).
    pub fn push(&self, rows: Vec<NewEvent>) {
        let mut st = self.state();
        if st.queued.len() < self.inner.capacity {
            st.queued.push_back(rows);
            let n = st.queued.len();
            drop(st);
            if n == 1 || n == BATCH {
                self.inner.ready.notify_one();
            }
            return;
        }
        for r in &rows {
            self.inner
                .dropped
                .add(&r.endpoint, DropReason::QueueFull, 1);
        }
        st.unlogged_drops += 1;
        let due = st
            .last_drop_log
            .is_none_or(|t| t.elapsed() >= DROP_LOG_EVERY);
        if due {
            let n = std::mem::take(&mut st.unlogged_drops);
            st.last_drop_log = Some(Instant::now());
            drop(st);
            tracing::warn!(
                dropped = n,
                capacity = self.inner.capacity,
                "notification pull events dropped: the queue to the outbox is full (is the metadata database stalled?)"
            );
        }
    }

    /// Pulls waiting for a flush.
    pub fn len(&self) -> usize {
        self.state().queued.len()
    }

    /// Wait until a flush is due: a full batch, or [`FLUSH_INTERVAL`] after the queue
    /// got its first pull.
    pub async fn ready(&self) {
        if self.len() == 0 {
            self.inner.ready.notified().await;
        }
        let deadline = tokio::time::sleep(FLUSH_INTERVAL);
        tokio::pin!(deadline);
        while self.len() < BATCH {
            tokio::select! {
                _ = &mut deadline => return,
                _ = self.inner.ready.notified() => {}
            }
        }
    }

    /// Write every pull queued now to the outbox, [`BATCH`] pulls per transaction, and
    /// wake the endpoints that got events. Returns how many pulls were written. Runs in a
    /// task of its own, so a caller that goes away (a client hanging up, shutdown) does
    /// not cut a batch short; a batch that fails goes back to the head of the queue.
    pub async fn flush(&self) -> Result<usize, MetaError> {
        let inner = self.inner.clone();
        let task = tokio::spawn(async move {
            let _turn = inner.flushing.clone().lock_owned().await;
            let mut left = inner
                .state
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .queued
                .len();
            let mut written = 0;
            while left > 0 {
                let batch: Vec<Vec<NewEvent>> = {
                    let mut st = inner.state.lock().unwrap_or_else(|p| p.into_inner());
                    let n = left.min(BATCH).min(st.queued.len());
                    st.queued.drain(..n).collect()
                };
                if batch.is_empty() {
                    break;
                }
                left -= batch.len();
                let rows: Vec<NewEvent> = batch.iter().flatten().cloned().collect();
                if let Err(e) = inner.meta.enqueue(&rows).await {
                    let mut st = inner.state.lock().unwrap_or_else(|p| p.into_inner());
                    for pull in batch.into_iter().rev() {
                        st.queued.push_front(pull);
                    }
                    return Err(e);
                }
                written += batch.len();
                for (name, wake) in &inner.wakes {
                    if rows.iter().any(|r| &r.endpoint == name) {
                        wake.notify_one();
                    }
                }
            }
            Ok(written)
        });
        task.await
            .map_err(|e| MetaError::Busy(format!("the pull event flush failed: {e}")))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::sqlite::SqliteMeta;
    use std::future::Future as _;

    fn pull(endpoints: &[&str], payload: &str) -> Vec<NewEvent> {
        endpoints
            .iter()
            .map(|e| NewEvent {
                endpoint: e.to_string(),
                payload: payload.to_string(),
            })
            .collect()
    }

    async fn queue(
        capacity: usize,
    ) -> (tempfile::TempDir, Arc<SqliteMeta>, PullQueue, Arc<Notify>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let meta = Arc::new(
            SqliteMeta::open(&dir.path().join("berth.db"))
                .await
                .expect("meta"),
        );
        let bell = Arc::new(Notify::new());
        let q = PullQueue::new(
            meta.clone(),
            vec![("a".into(), bell.clone())],
            Arc::new(DroppedEvents::new(["a".to_string(), "b".to_string()])),
            capacity,
        );
        (dir, meta, q, bell)
    }

    async fn drain(meta: &SqliteMeta, endpoint: &str) -> Vec<String> {
        use crate::meta::Outbox as _;
        let mut out = Vec::new();
        while let Some(e) = meta.claim(endpoint, "t", 30).await.expect("claim") {
            meta.complete(e.seq, "t").await.expect("complete");
            out.push(e.payload);
        }
        out
    }

    #[tokio::test]
    async fn pushing_never_waits_and_a_flush_writes_everything_in_order() {
        use crate::meta::Outbox as _;
        let (_dir, meta, q, bell) = queue(CAPACITY).await;
        let n = BATCH * 2 + 7;
        for i in 0..n {
            q.push(pull(&["a", "b"], &format!("p{i}")));
        }
        assert_eq!(q.len(), n);
        // Nothing reaches the outbox until the flush; then all of it, in order, in
        // three transactions (two full batches and the rest).
        assert_eq!(meta.pending("a").await.expect("pending"), 0);
        assert_eq!(q.flush().await.expect("flush"), n);
        assert_eq!(q.len(), 0);
        let want: Vec<String> = (0..n).map(|i| format!("p{i}")).collect();
        assert_eq!(drain(&meta, "a").await, want);
        assert_eq!(drain(&meta, "b").await, want);
        // The endpoint with a bell was woken.
        tokio::time::timeout(Duration::from_secs(1), bell.notified())
            .await
            .expect("woken");
        // An empty flush writes nothing.
        assert_eq!(q.flush().await.expect("flush"), 0);
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts() {
        let (_dir, meta, q, _bell) = queue(3).await;
        for i in 0..5 {
            q.push(pull(&["a"], &format!("p{i}")));
        }
        assert_eq!(q.len(), 3);
        let counts = q.inner.dropped.snapshot();
        assert!(counts.contains(&("a".to_string(), DropReason::QueueFull.as_str(), 2)));
        assert!(counts.contains(&("b".to_string(), DropReason::QueueFull.as_str(), 0)));
        assert_eq!(q.flush().await.expect("flush"), 3);
        assert_eq!(drain(&meta, "a").await, ["p0", "p1", "p2"]);
    }

    #[tokio::test]
    async fn ready_waits_for_a_batch_or_the_interval() {
        let (_dir, _meta, q, _bell) = queue(CAPACITY).await;
        // Empty: not ready.
        assert!(tokio::time::timeout(FLUSH_INTERVAL * 3, q.ready())
            .await
            .is_err());
        // One pull: ready after about the interval.
        q.push(pull(&["a"], "one"));
        let t = Instant::now();
        tokio::time::timeout(Duration::from_secs(5), q.ready())
            .await
            .expect("ready");
        assert!(t.elapsed() >= FLUSH_INTERVAL / 2, "{:?}", t.elapsed());
        // A full batch: ready at once.
        for i in 0..BATCH {
            q.push(pull(&["a"], &format!("p{i}")));
        }
        tokio::time::timeout(FLUSH_INTERVAL / 2, q.ready())
            .await
            .expect("ready at once");
    }

    /// A flush whose caller goes away (a client hanging up, shutdown cutting a step
    /// short) still writes its batch, once: the next flush finds it done or does it.
    #[tokio::test]
    async fn a_flush_cut_short_still_writes_its_batch() {
        let (_dir, meta, q, _bell) = queue(CAPACITY).await;
        for i in 0..3 {
            q.push(pull(&["a"], &format!("p{i}")));
        }
        // Polled once (the write is started in its task), then dropped.
        let mut cut = Box::pin(q.flush());
        let pending =
            std::future::poll_fn(|cx| std::task::Poll::Ready(cut.as_mut().poll(cx).is_pending()))
                .await;
        assert!(pending);
        drop(cut);
        q.flush().await.expect("flush");
        assert_eq!(q.len(), 0);
        assert_eq!(drain(&meta, "a").await, ["p0", "p1", "p2"]);
    }
}
