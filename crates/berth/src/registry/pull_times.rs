//! When each manifest was last pulled, for retention's "most recently pulled" rules and
//! the API's `pull_time`. A pull writes nothing: it notes (repository, digest, now) in a
//! bounded in-process map, and a flush (the `jobs::pull_times` worker, every
//! [`FLUSH_EVERY`] and on shutdown) moves the stored times forward in one transaction
//! per [`BATCH`]. Several pulls of one manifest between flushes are one write.
//!
//! What this costs: a crash loses the last interval's pull times (a pull time is a hint
//! for retention, never a change of content); past [`CAPACITY`] distinct manifests
//! waiting, new ones are not noted until the next flush.

use super::Registry;
use crate::meta::PullTime;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Most distinct manifests waiting for a flush.
pub const CAPACITY: usize = 50_000;
/// Most pull times written in one transaction.
pub const BATCH: usize = 500;
/// How often the noted pull times are written.
pub const FLUSH_EVERY: Duration = Duration::from_secs(10);

/// Pull times not written yet.
#[derive(Default)]
pub struct PullTimes {
    pending: Mutex<HashMap<(String, String), i64>>,
    /// Off on a node in read-only mode, which changes nothing in the metadata.
    off: AtomicBool,
}

impl PullTimes {
    /// Note a pull of `digest` in `repository` at `at`; `false` if the map was full.
    pub fn note(&self, repository: &str, digest: &str, at: i64) -> bool {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let full = pending.len() >= CAPACITY;
        match pending.get_mut(&(repository.to_string(), digest.to_string())) {
            Some(t) => {
                *t = (*t).max(at);
                true
            }
            None if full => false,
            None => {
                pending.insert((repository.to_string(), digest.to_string()), at);
                true
            }
        }
    }

    /// Everything noted, sorted (so concurrent flushes of several nodes update rows in
    /// one order); the map is left empty.
    fn take(&self) -> Vec<PullTime> {
        let taken = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        let mut out: Vec<PullTime> = taken
            .into_iter()
            .map(|((repository, digest), at)| PullTime {
                repository,
                digest,
                at,
            })
            .collect();
        out.sort_by(|a, b| (&a.repository, &a.digest).cmp(&(&b.repository, &b.digest)));
        out
    }
}

impl Registry {
    /// Stop recording pull times (read-only mode).
    pub fn stop_recording_pulls(&self) {
        self.pull_times.off.store(true, Ordering::Relaxed);
    }

    /// Note that a client pulled (GET) manifest `digest` of `repository`.
    pub fn note_pull(&self, repository: &oci::RepoName, digest: &oci::Digest) {
        if self.pull_times.off.load(Ordering::Relaxed) {
            return;
        }
        if !self
            .pull_times
            .note(repository.as_str(), digest.as_str(), crate::meta::now())
        {
            tracing::debug!(
                "pull times waiting for a flush are at their cap; this pull's time is not recorded"
            );
        }
    }

    /// Write the noted pull times; how many. On an error the batches not written are
    /// noted again for the next flush.
    pub async fn flush_pull_times(&self) -> super::Result<usize> {
        let all = self.pull_times.take();
        let mut written = 0;
        for (i, batch) in all.chunks(BATCH).enumerate() {
            if let Err(e) = self.meta.record_pulls(batch).await {
                for p in &all[i * BATCH..] {
                    self.pull_times.note(&p.repository, &p.digest, p.at);
                }
                return Err(e.into());
            }
            written += batch.len();
        }
        Ok(written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pulls_of_one_manifest_are_one_write_at_the_latest_time() {
        let p = PullTimes::default();
        assert!(p.note("a/b", "sha256:1", 10));
        assert!(p.note("a/b", "sha256:1", 30));
        assert!(p.note("a/b", "sha256:1", 20));
        assert!(p.note("a/a", "sha256:2", 5));
        let taken = p.take();
        assert_eq!(taken.len(), 2);
        assert_eq!((taken[0].repository.as_str(), taken[0].at), ("a/a", 5));
        assert_eq!((taken[1].repository.as_str(), taken[1].at), ("a/b", 30));
        assert!(p.take().is_empty());
    }

    #[test]
    fn a_full_map_takes_no_new_manifest() {
        let p = PullTimes::default();
        for i in 0..CAPACITY {
            assert!(p.note("a/b", &i.to_string(), 1));
        }
        assert!(!p.note("a/b", "one more", 1));
        assert!(p.note("a/b", "0", 2), "a manifest already noted is updated");
        assert_eq!(p.take().len(), CAPACITY);
        assert!(p.note("a/b", "one more", 1));
    }
}
