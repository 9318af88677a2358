//! Garbage collection (`berth garbage-collect`): mark every blob a manifest references,
//! then sweep the stored blobs nothing marks, with Distribution 2.8's output.
//!
//! Safe while the server runs: only blobs older than the grace period are swept, a blob
//! linked or re-committed within it is kept, and each delete re-checks in one metadata
//! transaction that nothing references the blob before the file is removed. With
//! `delete_untagged`, manifests no tag reaches are deleted first — unlike 2.8, the
//! children of a tagged index and referrers of a reachable manifest count as reachable,
//! and manifests younger than the grace period are kept (a multi-arch push stores its
//! children before the tagged index).
//!
//! # Sweeping one blob against concurrent writers
//!
//! The sweep of blob D (`gc` below), the server's upload commit of the same bytes
//! (`up`), and a cross-repository mount of D (`mount`) run these steps:
//!
//! ```text
//! gc:    G1  forget transaction: no manifest references D, no link or record of D newer
//!            than the cutoff, else keep D and stop; delete D's links and its `blobs` row,
//!            claim "gc-blob D" for this collector (a lease on the database's clock,
//!            renewed while held), commit
//!        G2  hide the file (a rename to a name of its own; a copy and a delete on S3),
//!            only while the claim is surely held
//!        G3  release the claim; then purge the hidden copy if the claim was held until
//!            the hide ended, else put the file back
//! up:    U1  commit the upload's file under D (its bytes are kept, never appended to)
//!        U2  link transaction: refused while "gc-blob D" is live (then wait and retry);
//!            else record D (row + link) and its push event
//!        U3  if no file is under D, commit the upload's bytes again
//!        U4  delete the upload
//! mount: M1  link transaction: link D only if its `blobs` row exists (never creates it)
//! ```
//!
//! No transaction is held across the storage calls of G2 (an object-store copy of a large
//! layer takes seconds). U2 and G1 are ordered (SQLite's one writer; on PostgreSQL G1
//! holds D's advisory key exclusive and U2 shared, and M1 and G1 lock D's row), so U2
//! and M1 each come wholly before G1, or after it, and then U2 also after G3:
//!
//! - M1 before G1: the link is newer than the cutoff, G1 keeps D, no file is touched.
//! - M1 after G1: the row is gone, M1 links nothing and the mount falls back to an
//!   upload session (202), as the spec allows. A link to a deleted file cannot appear.
//! - U2 before G1: as for M1, the new link keeps D.
//! - U2 after G1: it waits for G3, so it runs after the hide. U1 before G2: G2 hides the
//!   upload's own file, G3 purges it, U3 finds no file and commits the kept bytes again.
//!   U1 after G2: U1's file is a new one under D, G3 purges only the hidden older copy,
//!   U3 finds the file. (Without the claim, U2 and U3 could both fall between G1 and G2,
//!   and G2 would then take the file of a blob just linked.)
//! - Two collections at once cannot happen: each holds the deployment's claim
//!   (`claims.rs`). If a collector's claims ran out anyway, a second forget of D finds no
//!   row, and its claim on D is refused while the first one's is live.
//! - A collector that dies after G1 stops renewing its claim, which runs out within
//!   [`COLLECTING_LEASE`]: waiting pushes then go on (the file may still be there; U3
//!   handles both). One that dies inside G2 may leave a hidden copy; the next collection
//!   first unhides every hidden copy (`recover`), which can never lose data: at worst it
//!   brings back a file nothing records, and that one is swept again.
//!
//! The sweep runs these steps for a batch of digests at a time ([`SWEEP_BATCH`]): one G1
//! transaction forgets and claims every digest of the batch that nothing needs, G2 hides
//! their files a few at a time, and G3 releases all their claims in one statement. Each
//! digest's reasoning above is unchanged; the batch only shares the commits, which
//! otherwise cost two fsyncs per blob on SQLite. A collector that stalls for a whole
//! lease (a paused VM) may find its claims ran out meanwhile (the renewal never revives
//! one): it then hides no more files and puts back those it hid, as a push may have
//! linked one meanwhile.
//!
//! # Blobs at keys of their own
//!
//! A blob whose row records a storage key (see `meta::BlobRecord`) is not under its
//! digest's path, so the store's listing does not show it: its candidates are the keyed
//! rows no manifest marks and not recorded within the grace period
//! (`Housekeeping::gc_keyed_blobs`). One transaction per batch forgets those nothing
//! needs, ordered against links and mounts exactly as G1 (`gc_forget_keyed`), and then
//! their objects are deleted. No claim is needed: a push of the same digest after the
//! forget records a key of its own (or the digest's path), never the one being deleted,
//! so the delete cannot take a newer copy; a link or mount before the forget is newer
//! than the cutoff and keeps the blob. The digest-path forget never takes a keyed row.
//! An object whose delete fails after its forget is recorded nowhere; the error names it.
//!
//! Left: between U2 and U3 (one `stat`), a client other than the uploader can see D
//! linked while its file is being committed again; it gets 404 for that instant. With a
//! zero grace period, a blob linked in the same second as the cutoff can be collected
//! (a later manifest push then fails with MANIFEST_BLOB_UNKNOWN, never a dangling link).

use super::claims::{HeldClaims, COLLECTING_LEASE, COLLECTING_MARGIN};
use super::{Registry, Result};
use crate::meta::{collecting_claim, GcManifest, KeyedBlob};
use crate::storage::{BlobRef, HiddenBlob, StoredBlob};
use futures_util::StreamExt;
use oci::{Digest, RepoName};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

/// Blobs forgotten in one transaction and then removed together: one commit (and on
/// SQLite one fsync) forgets the whole batch, and one statement releases its claims.
const SWEEP_BATCH: usize = 64;

/// Files hidden at once within a batch (each a rename on a filesystem, a copy and a
/// delete on an object store).
const HIDE_CONCURRENCY: usize = 8;

/// How to collect.
#[derive(Debug, Clone)]
pub struct GcOptions {
    /// Report only; delete nothing.
    pub dry_run: bool,
    /// Delete manifests that no tag reaches (and the blobs only they referenced).
    pub delete_untagged: bool,
    /// Blobs and manifests younger than this are never deleted.
    pub grace: Duration,
    /// Who collects, as other collectors are told while this one holds the
    /// deployment's claim (e.g. `berth garbage-collect, pid 42 on node-1`).
    pub owner: String,
}

/// What a collection found and did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GcReport {
    pub marked: usize,
    pub eligible_blobs: usize,
    pub eligible_manifests: usize,
    /// Unmarked blobs kept because they are younger than the grace period.
    pub young_blobs: usize,
    pub deleted_blobs: usize,
    pub deleted_manifests: usize,
    pub freed_bytes: u64,
    /// Stopped on request (`PUT /api/v2.0/system/gc/{id}`) before the end.
    pub stopped: bool,
}

/// Manifests of one repository that a tag reaches: tagged ones, the manifests they
/// reference (index children), referrers of reachable ones, and young ones (`protected`).
pub fn reachable(
    manifests: &[GcManifest],
    protected: impl Fn(&GcManifest) -> bool,
) -> HashSet<Digest> {
    let mut seen: HashSet<Digest> = manifests
        .iter()
        .filter(|m| m.tagged || protected(m))
        .map(|m| m.digest.clone())
        .collect();
    loop {
        let before = seen.len();
        for m in manifests {
            if seen.contains(&m.digest) {
                for (child, is_manifest) in &m.references {
                    if *is_manifest {
                        seen.insert(child.clone());
                    }
                }
            } else if m.subject.as_ref().is_some_and(|s| seen.contains(s)) {
                seen.insert(m.digest.clone());
            }
        }
        if seen.len() == before {
            return seen;
        }
    }
}

impl Registry {
    /// Run one collection, recorded as a manual run; every line of the report goes to
    /// `out`. Refused while another collection runs anywhere in the deployment.
    pub async fn garbage_collect(
        &self,
        options: &GcOptions,
        out: &mut (dyn FnMut(String) + Send),
    ) -> Result<GcReport> {
        let run = self
            .start_run(super::gc_runs::MANUAL, None, options)
            .await?
            .ok_or_else(super::gc_runs::untracked)?;
        self.finish_run(run, options, out).await
    }

    pub(super) async fn collect(
        &self,
        options: &GcOptions,
        out: &mut (dyn FnMut(String) + Send),
        stop: &AtomicBool,
    ) -> Result<GcReport> {
        // The grace period on the clock the stored times were written with (the
        // database server's in a cluster), not on this machine's.
        let now = self.meta.clock().await?;
        let cutoff = now.saturating_sub(i64::try_from(options.grace.as_secs()).unwrap_or(i64::MAX));
        // Stored files' times, to the sub-second, on that clock: this machine's time
        // shifted by the whole seconds the two clocks differ.
        let local = SystemTime::now();
        let local_secs = local
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let shift = now - local_secs;
        let shifted = if shift >= 0 {
            local.checked_add(Duration::from_secs(shift.unsigned_abs()))
        } else {
            local.checked_sub(Duration::from_secs(shift.unsigned_abs()))
        };
        let cutoff_time = shifted
            .and_then(|t| t.checked_sub(options.grace))
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let mut report = GcReport::default();
        if !options.dry_run {
            self.recover_hidden().await?;
        }
        let mut marked: HashSet<Digest> = HashSet::new();
        let mut untagged: Vec<(RepoName, Digest)> = Vec::new();

        let mut last: Option<String> = None;
        loop {
            let page = self
                .meta
                .list_repositories(last.as_deref(), 1000, None)
                .await?;
            let Some(tail) = page.last().cloned() else {
                break;
            };
            for name in page {
                if stop.load(Ordering::Relaxed) {
                    out("stopped on request while marking; nothing was deleted".into());
                    report.stopped = true;
                    return Ok(report);
                }
                let Ok(repo) = name.parse::<RepoName>() else {
                    continue;
                };
                out(name.clone());
                let manifests = self.meta.gc_manifests(&repo).await?;
                let keep = options
                    .delete_untagged
                    .then(|| reachable(&manifests, |m| m.created_at > cutoff));
                for m in &manifests {
                    if keep.as_ref().is_some_and(|k| !k.contains(&m.digest)) {
                        out(format!("manifest eligible for deletion: {}", m.digest));
                        untagged.push((repo.clone(), m.digest.clone()));
                        continue;
                    }
                    out(format!("{name}: marking manifest {} ", m.digest));
                    marked.insert(m.digest.clone());
                    for (child, _) in &m.references {
                        out(format!("{name}: marking blob {child}"));
                        marked.insert(child.clone());
                    }
                }
            }
            last = Some(tail);
        }

        let mut eligible = Vec::new();
        for blob in self.blobs.list().await? {
            if marked.contains(&blob.digest) {
                continue;
            }
            if blob.modified > cutoff_time {
                report.young_blobs += 1;
            } else {
                eligible.push(blob);
            }
        }
        eligible.sort_by(|a, b| a.digest.as_str().cmp(b.digest.as_str()));
        let mut keyed = Vec::new();
        let mut after: Option<Digest> = None;
        loop {
            let page = self.meta.gc_keyed_blobs(after.as_ref(), 1000).await?;
            let Some(last) = page.last() else {
                break;
            };
            after = Some(last.digest.clone());
            for blob in page {
                if marked.contains(&blob.digest) {
                    continue;
                }
                if blob.created_at > cutoff {
                    report.young_blobs += 1;
                } else {
                    keyed.push(blob);
                }
            }
        }
        report.marked = marked.len();
        report.eligible_blobs = eligible.len() + keyed.len();
        report.eligible_manifests = untagged.len();
        out(String::new());
        out(format!(
            "{} blobs marked, {} blobs and {} manifests eligible for deletion",
            report.marked, report.eligible_blobs, report.eligible_manifests
        ));
        for digest in eligible
            .iter()
            .map(|b| &b.digest)
            .chain(keyed.iter().map(|b| &b.digest))
        {
            out(format!("blob eligible for deletion: {digest}"));
        }
        if options.dry_run {
            out(format!(
                "dry run: nothing deleted; {} blobs ({} bytes) and {} manifests would be deleted, {} unreferenced blobs are younger than the grace period",
                report.eligible_blobs,
                eligible.iter().map(|b| b.size).sum::<u64>()
                    + keyed.iter().map(|b| b.size).sum::<u64>(),
                report.eligible_manifests,
                report.young_blobs
            ));
            return Ok(report);
        }

        for (repo, digest) in &untagged {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            if self.meta.gc_delete_untagged(repo, digest).await? {
                tracing::info!("deleting manifest: {repo}@{digest}");
                report.deleted_manifests += 1;
            } else {
                tracing::info!(
                    "keeping manifest {repo}@{digest}: it was tagged or referenced meanwhile"
                );
            }
        }
        for batch in eligible.chunks(SWEEP_BATCH) {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let (deleted, freed) = self.sweep_blobs(batch, cutoff, &options.owner).await?;
            report.deleted_blobs += deleted;
            report.freed_bytes += freed;
        }
        for batch in keyed.chunks(SWEEP_BATCH) {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let (deleted, freed) = self.sweep_keyed(batch, cutoff).await?;
            report.deleted_blobs += deleted;
            report.freed_bytes += freed;
        }
        if stop.load(Ordering::Relaxed) {
            report.stopped = true;
            out("stopped on request before the end of the sweep".into());
        }
        out(format!(
            "deleted {} blobs ({} bytes freed) and {} manifests; {} unreferenced blobs are younger than the grace period and were kept",
            report.deleted_blobs, report.freed_bytes, report.deleted_manifests, report.young_blobs
        ));
        Ok(report)
    }
}

impl Registry {
    /// Put back every blob an interrupted collection left hidden (see the module comment).
    async fn recover_hidden(&self) -> Result<()> {
        for h in self.blobs.hidden().await? {
            if self.blobs.unhide(&h).await? {
                tracing::warn!(
                    digest = %h.digest,
                    "restored a blob an interrupted garbage collection had moved aside"
                );
            }
        }
        Ok(())
    }

    /// Steps G1..G3 of the module comment for a batch of blobs, for collector `owner`:
    /// one forget transaction (G1) for the whole batch, the files hidden a few at a time
    /// (G2), every claim released in one statement (G3). The blobs deleted, and their
    /// bytes.
    ///
    /// The hides run only while the batch's claims are surely held (renewed in the
    /// background; a renewal that finds one ran out ends that), and the hidden copies
    /// are purged only if they still are once every hide is done: a collector that
    /// stalled past its lease (a paused VM) puts the files back instead, since a push
    /// may have linked one of them meanwhile. A file left or put back that nothing
    /// records is swept by the next collection.
    pub(super) async fn sweep_blobs(
        &self,
        batch: &[StoredBlob],
        cutoff: i64,
        owner: &str,
    ) -> Result<(usize, u64)> {
        let digests: Vec<Digest> = batch.iter().map(|b| b.digest.clone()).collect();
        let claimed_at = Instant::now();
        let forgotten = self
            .meta
            .gc_forget_blobs(&digests, cutoff, owner, COLLECTING_LEASE)
            .await?;
        if forgotten.len() < digests.len() {
            let gone: HashSet<&Digest> = forgotten.iter().collect();
            for d in digests.iter().filter(|d| !gone.contains(d)) {
                tracing::info!("keeping blob {d}: referenced or linked meanwhile");
            }
        }
        if forgotten.is_empty() {
            return Ok((0, 0));
        }
        // The forget committed the digests' claims; keep them renewed while the files
        // go (a copy and a delete each on an object store), then let waiting writers
        // link again.
        let claims = HeldClaims::hold(
            self.meta.clone(),
            forgotten.iter().map(collecting_claim).collect(),
            owner,
            COLLECTING_LEASE,
            claimed_at,
        );
        #[cfg(test)]
        race::point("gc:forgotten").await;
        // A few at a time (a plain loop over a set of futures: no closure to borrow
        // the digests, which keeps the future `Send` for any lifetime).
        let mut hides = Vec::with_capacity(forgotten.len());
        let mut running = futures_util::stream::FuturesUnordered::new();
        for d in &forgotten {
            if running.len() >= HIDE_CONCURRENCY {
                hides.extend(running.next().await);
            }
            running.push(self.hide_while_held(d, &claims));
        }
        while let Some(done) = running.next().await {
            hides.push(done);
        }
        drop(running);
        #[cfg(test)]
        race::point("gc:hidden").await;
        // Purge only if the database says every claim is still held (then none ran out
        // while the files were moved: a lapsed claim is never renewed again).
        let intact = claims.confirm().await;
        claims.release().await;
        if !intact {
            tracing::error!(
                "this collection's claims on {} blobs ran out while their files were being removed (the process stalled, or the database was unreachable for {} s): putting the files back; the next collection sweeps those nothing records",
                forgotten.len(),
                COLLECTING_LEASE.as_secs()
            );
        }
        let sizes: std::collections::HashMap<&Digest, u64> =
            batch.iter().map(|b| (&b.digest, b.size)).collect();
        let (mut deleted, mut freed) = (0, 0);
        let mut failed = None;
        for (digest, hidden) in hides {
            // A failed hide leaves the file in place, recorded nowhere: the next
            // collection sweeps it (a half-done one left a hidden copy, which it puts
            // back first).
            let hidden = match hidden {
                Ok(Some(hidden)) => hidden,
                Ok(None) => continue,
                Err(e) => {
                    failed.get_or_insert(e);
                    continue;
                }
            };
            if !intact {
                self.blobs.unhide(&hidden).await?;
                continue;
            }
            tracing::info!("deleting blob: {digest}");
            if self.blobs.purge(&hidden).await? {
                deleted += 1;
                freed += sizes.get(digest).copied().unwrap_or(0);
            }
        }
        match failed {
            Some(e) => Err(e.into()),
            None => Ok((deleted, freed)),
        }
    }

    /// Forget a batch of blobs at keys of their own in one transaction, then delete the
    /// objects of those forgotten, a few at a time (see "Blobs at keys of their own").
    /// The blobs deleted, and their bytes; the first failed delete is returned after
    /// the others were tried.
    pub(super) async fn sweep_keyed(
        &self,
        batch: &[KeyedBlob],
        cutoff: i64,
    ) -> Result<(usize, u64)> {
        let digests: Vec<Digest> = batch.iter().map(|b| b.digest.clone()).collect();
        let forgotten = self.meta.gc_forget_keyed(&digests, cutoff).await?;
        if forgotten.len() < digests.len() {
            let gone: HashSet<&Digest> = forgotten.iter().map(|b| &b.digest).collect();
            for d in digests.iter().filter(|d| !gone.contains(d)) {
                tracing::info!("keeping blob {d}: referenced or linked meanwhile");
            }
        }
        #[cfg(test)]
        race::point("gc:keyed-forgotten").await;
        // A plain loop over a set of futures, as for the hides (keeps the future `Send`).
        let mut deletes = Vec::with_capacity(forgotten.len());
        let mut running = futures_util::stream::FuturesUnordered::new();
        for b in &forgotten {
            if running.len() >= HIDE_CONCURRENCY {
                deletes.extend(running.next().await);
            }
            running.push(self.delete_keyed(b));
        }
        while let Some(done) = running.next().await {
            deletes.push(done);
        }
        drop(running);
        let (mut deleted, mut freed) = (0, 0);
        let mut failed = None;
        for (b, result) in deletes {
            match result {
                Ok(existed) => {
                    tracing::info!("deleting blob: {} (at {})", b.digest, b.key);
                    if existed {
                        deleted += 1;
                        freed += b.size;
                    }
                }
                Err(e) => {
                    tracing::error!(digest = %b.digest, key = %b.key, "blob {} is forgotten but deleting its object {} failed: {e}; nothing records the object any more: delete it from the bucket by hand", b.digest, b.key);
                    failed.get_or_insert(e);
                }
            }
        }
        match failed {
            Some(e) => Err(e.into()),
            None => Ok((deleted, freed)),
        }
    }

    async fn delete_keyed<'a>(
        &self,
        b: &'a KeyedBlob,
    ) -> (&'a KeyedBlob, crate::storage::Result<bool>) {
        let at = BlobRef {
            digest: &b.digest,
            key: Some(&b.key),
        };
        (b, self.blobs.delete(at).await)
    }

    /// Step G2 for one digest: hide its file, unless the claims may run out too soon.
    async fn hide_while_held<'a>(
        &self,
        digest: &'a Digest,
        claims: &HeldClaims,
    ) -> (&'a Digest, crate::storage::Result<Option<HiddenBlob>>) {
        if !claims.held_for(COLLECTING_MARGIN) {
            return (digest, Ok(None));
        }
        (digest, self.blobs.hide(digest).await)
    }

    /// [`Registry::sweep_blobs`] of one blob; `true` if its file was deleted.
    #[cfg(test)]
    pub(super) async fn sweep_blob(
        &self,
        digest: &Digest,
        cutoff: i64,
        owner: &str,
    ) -> Result<bool> {
        let blob = StoredBlob {
            digest: digest.clone(),
            size: 0,
            modified: SystemTime::UNIX_EPOCH,
        };
        let (deleted, _) = self.sweep_blobs(&[blob], cutoff, owner).await?;
        Ok(deleted == 1)
    }
}

/// Tests: named points where a task can be held, so racing steps run in a chosen order.
#[cfg(test)]
pub(super) mod race {
    use std::future::Future;
    use std::sync::Arc;
    use tokio::sync::Notify;

    /// Hold the task at point `at`: `reached` is signalled, then it waits for `resume`.
    #[derive(Clone)]
    pub struct Pause {
        pub at: &'static str,
        pub reached: Arc<Notify>,
        pub resume: Arc<Notify>,
    }

    impl Pause {
        pub fn at(at: &'static str) -> Pause {
            Pause {
                at,
                reached: Arc::new(Notify::new()),
                resume: Arc::new(Notify::new()),
            }
        }

        pub async fn scope<F: Future>(self, f: F) -> F::Output {
            PAUSE.scope(self, f).await
        }
    }

    tokio::task_local! {
        static PAUSE: Pause;
    }

    pub async fn point(name: &'static str) {
        let Ok(p) = PAUSE.try_with(Pause::clone) else {
            return;
        };
        if p.at == name {
            p.reached.notify_one();
            p.resume.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci::Algorithm;

    fn d(s: &str) -> Digest {
        Digest::of(Algorithm::Sha256, s.as_bytes())
    }

    fn m(name: &str, tagged: bool, subject: Option<&str>, children: &[&str]) -> GcManifest {
        GcManifest {
            digest: d(name),
            tagged,
            subject: subject.map(d),
            created_at: 0,
            references: children.iter().map(|c| (d(c), true)).collect(),
        }
    }

    #[test]
    fn index_children_and_referrers_are_reachable() {
        let all = vec![
            m("index", true, None, &["amd64", "arm64"]),
            m("amd64", false, None, &[]),
            m("arm64", false, None, &[]),
            m("signature", false, Some("index"), &[]),
            m("sbom-of-signature", false, Some("signature"), &[]),
            m("old", false, None, &[]),
            m("referrer-of-old", false, Some("old"), &[]),
        ];
        let r = reachable(&all, |_| false);
        for name in ["index", "amd64", "arm64", "signature", "sbom-of-signature"] {
            assert!(r.contains(&d(name)), "{name} is reachable");
        }
        assert!(!r.contains(&d("old")));
        assert!(!r.contains(&d("referrer-of-old")));
        let young = reachable(&all, |m| m.digest == d("old"));
        assert!(young.contains(&d("old")) && young.contains(&d("referrer-of-old")));
    }
}

/// The interleavings of the module comment, run in their racy order over both blob
/// stores (SQLite metadata).
#[cfg(test)]
mod races {
    use super::race::Pause;
    use super::GcOptions;
    use crate::meta::postgres::PgMeta;
    use crate::meta::postgres_test::TestDb;
    use crate::meta::sqlite::SqliteMeta;
    use crate::meta::{now, MetaStore};
    use crate::registry::{Registry, Settings};
    use crate::storage::fs::FsBlobStore;
    use crate::storage::memory::MemoryBlobStore;
    use crate::storage::s3::{testserver, S3BlobStore};
    use crate::storage::{BlobStore, ByteStream};
    use bytes::Bytes;
    use futures_util::StreamExt;
    use oci::{Algorithm, Digest, RepoName};
    use std::sync::Arc;
    use std::time::Duration;

    /// Which backends a race runs over: every interleaving holds on each.
    #[derive(Debug, Clone, Copy)]
    enum Kind {
        /// SQLite (one writer) and blobs in memory.
        Memory,
        /// SQLite and the filesystem store (hide is a rename).
        Fs,
        /// PostgreSQL (row locks at READ COMMITTED, as a cluster runs) and the
        /// filesystem store.
        Postgres,
        /// A cluster's backends: PostgreSQL and a real S3 server (hide is a copy and a
        /// delete there, not a rename).
        PostgresS3,
    }

    struct Setup {
        registry: Arc<Registry>,
        blobs: Arc<dyn BlobStore>,
        meta: Arc<dyn MetaStore>,
        sqlite: Option<Arc<SqliteMeta>>,
        pg: Option<(Arc<PgMeta>, TestDb)>,
        _dir: tempfile::TempDir,
    }

    impl Setup {
        async fn backdate(&self, secs: i64) {
            match (&self.sqlite, &self.pg) {
                (Some(m), _) => m.backdate(secs).await.expect("backdate"),
                (_, Some((m, _))) => m.backdate(secs).await.expect("backdate"),
                _ => unreachable!("a setup has one metadata backend"),
            }
        }

        async fn finish(self) {
            if let Some((m, db)) = self.pg {
                m.close().await;
                db.drop_db().await;
            }
        }
    }

    async fn setup(kind: Kind) -> Setup {
        let dir = tempfile::tempdir().expect("tempdir");
        let blobs: Arc<dyn BlobStore> = match kind {
            Kind::Memory => Arc::new(MemoryBlobStore::new()),
            Kind::Fs | Kind::Postgres => {
                Arc::new(FsBlobStore::open(&dir.path().join("root")).expect("fs store"))
            }
            Kind::PostgresS3 => Arc::new(
                S3BlobStore::new(&testserver::config(testserver::Kind::SeaweedFs, 5 << 20))
                    .expect("s3 store"),
            ),
        };
        let (meta, sqlite, pg): (Arc<dyn MetaStore>, _, _) = match kind {
            Kind::Postgres | Kind::PostgresS3 => {
                let db = TestDb::create().await;
                let m = Arc::new(db.open().await);
                (m.clone(), None, Some((m, db)))
            }
            Kind::Memory | Kind::Fs => {
                let m = Arc::new(
                    SqliteMeta::open(&dir.path().join("berth.db"))
                        .await
                        .expect("meta"),
                );
                (m.clone(), Some(m), None)
            }
        };
        let registry = Arc::new(Registry::new(
            blobs.clone(),
            meta.clone(),
            Settings::default(),
        ));
        Setup {
            registry,
            blobs,
            meta,
            sqlite,
            pg,
            _dir: dir,
        }
    }

    fn repo(s: &str) -> RepoName {
        s.parse().expect("repo")
    }

    const DATA: &[u8] = b"layer bytes that garbage collection races for";

    fn body() -> ByteStream {
        Box::pin(futures_util::stream::once(async {
            Ok(Bytes::from_static(DATA))
        }))
    }

    fn digest() -> Digest {
        Digest::of(Algorithm::Sha256, DATA)
    }

    /// D pushed to `old/app` two hours ago, referenced by nothing.
    async fn old_blob(s: &Setup) {
        s.registry
            .put_blob(&repo("old/app"), &digest(), body())
            .await
            .expect("push");
        s.backdate(7200).await;
    }

    /// The cutoff of a collection with a one-hour grace period.
    fn cutoff() -> i64 {
        now() - 3600
    }

    /// Linked in `repo` and readable there, with the right content.
    async fn readable(s: &Setup, r: &str) -> bool {
        if s.meta
            .linked_blob(&repo(r), &digest())
            .await
            .expect("linked")
            .is_none()
        {
            return false;
        }
        let Ok(read) = s
            .registry
            .read_blob(&repo(r), &digest(), |_| Ok(None))
            .await
        else {
            return false;
        };
        let mut bytes = Vec::new();
        let mut body = read.body;
        while let Some(chunk) = body.next().await {
            bytes.extend_from_slice(&chunk.expect("chunk"));
        }
        Digest::of(Algorithm::Sha256, &bytes) == digest()
    }

    async fn both(f: impl Fn(Kind) -> futures_util::future::BoxFuture<'static, ()>) {
        for kind in [Kind::Memory, Kind::Fs, Kind::Postgres, Kind::PostgresS3] {
            f(kind).await;
        }
    }

    /// U1, then the whole sweep (it hides the upload's own file), then U2..U4: the upload
    /// commits its kept bytes again.
    #[tokio::test]
    async fn reupload_committed_before_the_sweep_linked_after() {
        both(|kind| {
            Box::pin(async move {
                let s = setup(kind).await;
                old_blob(&s).await;
                let pause = Pause::at("upload:committed");
                let registry = s.registry.clone();
                let upload = tokio::spawn(pause.clone().scope(async move {
                    registry.put_blob(&repo("new/app"), &digest(), body()).await
                }));
                pause.reached.notified().await;
                assert!(s
                    .registry
                    .sweep_blob(&digest(), cutoff(), "gc")
                    .await
                    .expect("sweep"));
                pause.resume.notify_one();
                upload.await.expect("join").expect("upload");
                assert!(readable(&s, "new/app").await, "{kind:?}");
                assert!(!readable(&s, "old/app").await, "the old link was collected");
                s.finish().await;
            })
        })
        .await;
    }

    /// G1+G2 (forgotten and hidden, the claim still held), then U1 (a new file under D),
    /// then G3, then U2..U4: the sweep purges only the hidden older copy.
    #[tokio::test]
    async fn reupload_committed_while_the_sweep_holds_the_claim() {
        both(|kind| {
            Box::pin(async move {
                let s = setup(kind).await;
                old_blob(&s).await;
                let gc_pause = Pause::at("gc:hidden");
                let registry = s.registry.clone();
                let sweep =
                    tokio::spawn(gc_pause.clone().scope(async move {
                        registry.sweep_blob(&digest(), cutoff(), "gc").await
                    }));
                gc_pause.reached.notified().await;
                assert_eq!(s.blobs.stat((&digest()).into()).await.expect("stat"), None);
                let up_pause = Pause::at("upload:committed");
                let registry = s.registry.clone();
                let upload = tokio::spawn(up_pause.clone().scope(async move {
                    registry.put_blob(&repo("new/app"), &digest(), body()).await
                }));
                up_pause.reached.notified().await;
                gc_pause.resume.notify_one();
                assert!(sweep.await.expect("join").expect("sweep"));
                up_pause.resume.notify_one();
                upload.await.expect("join").expect("upload");
                assert!(readable(&s, "new/app").await, "{kind:?}");
                assert!(s.blobs.hidden().await.expect("hidden").is_empty());
                s.finish().await;
            })
        })
        .await;
    }

    /// G1 (forgotten, the claim committed, the file still there), then a whole upload:
    /// U1 keeps the old file, U2 waits for the claim; then G2 hides the file and G3
    /// releases, so U2 links and U3 commits the upload's bytes again. Without the claim
    /// U2..U4 would finish before G2, which would then take a linked blob's file.
    #[tokio::test]
    async fn reupload_linked_while_the_sweep_removes_the_file() {
        both(|kind| {
            Box::pin(async move {
                let s = setup(kind).await;
                old_blob(&s).await;
                let gc_pause = Pause::at("gc:forgotten");
                let registry = s.registry.clone();
                let sweep =
                    tokio::spawn(gc_pause.clone().scope(async move {
                        registry.sweep_blob(&digest(), cutoff(), "gc").await
                    }));
                gc_pause.reached.notified().await;
                assert!(s
                    .blobs
                    .stat((&digest()).into())
                    .await
                    .expect("stat")
                    .is_some());
                let registry = s.registry.clone();
                let upload = tokio::spawn(async move {
                    registry.put_blob(&repo("new/app"), &digest(), body()).await
                });
                tokio::time::sleep(Duration::from_millis(400)).await;
                assert!(
                    !upload.is_finished(),
                    "{kind:?}: the link waits for the collector"
                );
                gc_pause.resume.notify_one();
                assert!(sweep.await.expect("join").expect("sweep"));
                upload.await.expect("join").expect("upload");
                assert!(readable(&s, "new/app").await, "{kind:?}");
                assert!(!readable(&s, "old/app").await, "the old link was collected");
                assert!(s.blobs.hidden().await.expect("hidden").is_empty());
                s.finish().await;
            })
        })
        .await;
    }

    /// A collector that dies between G1 and G3 stops renewing its claim on D: a push of
    /// D waits only until the claim runs out, then links (the file is still there).
    #[tokio::test]
    async fn a_dead_collectors_claim_runs_out() {
        both(|kind| {
            Box::pin(async move {
                let s = setup(kind).await;
                old_blob(&s).await;
                // Whole seconds on the database's clock: it runs out 1 to 2 s from now.
                let lease = Duration::from_secs(2);
                assert!(s
                    .meta
                    .gc_forget_blob(&digest(), cutoff(), "dead gc", lease)
                    .await
                    .expect("forget"));
                let started = std::time::Instant::now();
                s.registry
                    .put_blob(&repo("new/app"), &digest(), body())
                    .await
                    .expect("upload");
                let waited = started.elapsed();
                assert!(
                    waited >= Duration::from_millis(500) && waited < Duration::from_secs(10),
                    "{kind:?}: waited {waited:?} for the claim to run out"
                );
                assert!(readable(&s, "new/app").await, "{kind:?}");
                s.finish().await;
            })
        })
        .await;
    }

    /// U1..U4 before the sweep: the fresh link keeps D, and its file is not touched.
    #[tokio::test]
    async fn reupload_before_the_sweep_keeps_the_blob() {
        both(|kind| {
            Box::pin(async move {
                let s = setup(kind).await;
                old_blob(&s).await;
                s.registry
                    .put_blob(&repo("new/app"), &digest(), body())
                    .await
                    .expect("upload");
                assert!(!s
                    .registry
                    .sweep_blob(&digest(), cutoff(), "gc")
                    .await
                    .expect("sweep"));
                assert!(readable(&s, "new/app").await && readable(&s, "old/app").await);
                s.finish().await;
            })
        })
        .await;
    }

    /// A mount checks D (linked in `old/app`, file present), then the whole sweep runs,
    /// then the mount links: it finds no record and links nothing (the client uploads).
    #[tokio::test]
    async fn mount_checked_before_the_sweep_linked_after() {
        both(|kind| {
            Box::pin(async move {
                let s = setup(kind).await;
                old_blob(&s).await;
                let pause = Pause::at("mount:checked");
                let registry = s.registry.clone();
                let mount = tokio::spawn(pause.clone().scope(async move {
                    registry
                        .mount_blob(&repo("new/app"), &digest(), Some(&repo("old/app")))
                        .await
                }));
                pause.reached.notified().await;
                assert!(s
                    .registry
                    .sweep_blob(&digest(), cutoff(), "gc")
                    .await
                    .expect("sweep"));
                pause.resume.notify_one();
                assert!(!mount.await.expect("join").expect("mount"), "{kind:?}");
                assert_eq!(
                    s.meta
                        .linked_blob(&repo("new/app"), &digest())
                        .await
                        .expect("linked"),
                    None
                );
                assert_eq!(s.meta.known_blob(&digest()).await.expect("known"), None);
                // The client's fallback upload then works.
                s.registry
                    .put_blob(&repo("new/app"), &digest(), body())
                    .await
                    .expect("upload");
                assert!(readable(&s, "new/app").await);
                s.finish().await;
            })
        })
        .await;
    }

    /// A mount before the sweep: the fresh link keeps D.
    #[tokio::test]
    async fn mount_before_the_sweep_keeps_the_blob() {
        both(|kind| {
            Box::pin(async move {
                let s = setup(kind).await;
                old_blob(&s).await;
                assert!(s
                    .registry
                    .mount_blob(&repo("new/app"), &digest(), None)
                    .await
                    .expect("mount"));
                assert!(!s
                    .registry
                    .sweep_blob(&digest(), cutoff(), "gc")
                    .await
                    .expect("sweep"));
                assert!(readable(&s, "new/app").await, "{kind:?}");
                s.finish().await;
            })
        })
        .await;
    }

    /// A blob left hidden while still recorded (a collection that died between moving a
    /// file aside and purging it, or a hide with no forget as here): the next collection
    /// puts it back before it looks at anything.
    #[tokio::test]
    async fn hidden_blobs_of_an_interrupted_collection_come_back() {
        both(|kind| {
            Box::pin(async move {
                let s = setup(kind).await;
                s.registry
                    .put_blob(&repo("new/app"), &digest(), body())
                    .await
                    .expect("upload");
                s.blobs
                    .hide(&digest())
                    .await
                    .expect("hide")
                    .expect("hidden");
                assert!(!readable(&s, "new/app").await);
                let options = GcOptions {
                    dry_run: false,
                    delete_untagged: false,
                    grace: Duration::from_secs(3600),
                    owner: "test".into(),
                };
                let report = s
                    .registry
                    .garbage_collect(&options, &mut |_| {})
                    .await
                    .expect("gc");
                assert_eq!(report.deleted_blobs, 0);
                assert_eq!(report.young_blobs, 1);
                assert!(readable(&s, "new/app").await, "{kind:?}");
                assert!(s.blobs.hidden().await.expect("hidden").is_empty());
                s.finish().await;
            })
        })
        .await;
    }
}

/// Blobs at keys of their own are collected from their rows, on a real S3 server with
/// either database.
#[cfg(test)]
mod keyed {
    use super::GcOptions;
    use crate::meta::postgres_test::TestDb;
    use crate::meta::sqlite::SqliteMeta;
    use crate::meta::{Housekeeping, MetaStore, NewManifest, Repositories};
    use crate::registry::{Registry, Settings};
    use crate::storage::s3::{testserver, S3BlobStore};
    use crate::storage::{BlobRef, BlobStore};
    use bytes::Bytes;
    use oci::{Algorithm, Digest, RepoName};
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    use std::time::Duration;

    fn repo(s: &str) -> RepoName {
        s.parse().expect("repo")
    }

    async fn collects_keyed(
        meta: Arc<dyn MetaStore>,
        backdate: impl std::future::Future<Output = ()>,
    ) {
        let store = Arc::new(
            S3BlobStore::new(&testserver::config(testserver::Kind::SeaweedFs, 5 << 20))
                .expect("s3 store"),
        );
        let registry = Registry::new(store.clone(), meta.clone(), Settings::default());
        let app = repo("keyed/app");
        let mut blobs = Vec::new();
        for name in ["unreferenced", "referenced", "young"] {
            let data = Bytes::from(format!("the {name} layer's bytes"));
            let digest = Digest::of(Algorithm::Sha256, &data);
            let key = format!("objects/gc/{name}");
            store.put_at(&key, data.clone()).await.expect("put");
            meta.link_blob_at(&app, &digest, data.len() as u64, Some(&key), &[])
                .await
                .expect("link");
            blobs.push((digest, key, data.len() as u64));
        }
        let content = b"an image naming the referenced layer".to_vec();
        let image = NewManifest {
            digest: Digest::of(Algorithm::Sha256, &content),
            media_type: oci::media::OCI_MANIFEST.to_string(),
            content,
            subject: None,
            artifact_type: None,
            annotations: None,
            references: vec![(blobs[1].0.clone(), false)],
            required_blobs: Vec::new(),
            required_manifests: Vec::new(),
        };
        meta.put_manifest(&app, &image, &["v1".parse().expect("tag")], &[])
            .await
            .expect("manifest");
        backdate.await;
        // Recorded again now (a second push of the same bytes): young.
        meta.link_blob_at(&app, &blobs[2].0, blobs[2].2, Some("objects/gc/other"), &[])
            .await
            .expect("relink");
        let options = |dry_run| GcOptions {
            dry_run,
            delete_untagged: false,
            grace: Duration::from_secs(600),
            owner: "keyed test".into(),
        };
        let stop = AtomicBool::new(false);
        let dry = registry
            .collect(&options(true), &mut |_| {}, &stop)
            .await
            .expect("dry run");
        assert_eq!((dry.eligible_blobs, dry.deleted_blobs), (1, 0));
        assert_eq!(dry.young_blobs, 1);
        let stat = |i: usize| {
            let (digest, key, _) = &blobs[i];
            let store = store.clone();
            let (digest, key) = (digest.clone(), key.clone());
            async move {
                store
                    .stat(BlobRef {
                        digest: &digest,
                        key: Some(&key),
                    })
                    .await
                    .expect("stat")
            }
        };
        assert!(stat(0).await.is_some(), "a dry run deletes nothing");
        let mut lines = Vec::new();
        let report = registry
            .collect(&options(false), &mut |l| lines.push(l), &stop)
            .await
            .expect("collect");
        assert_eq!(report.deleted_blobs, 1, "{lines:?}");
        assert_eq!(report.freed_bytes, blobs[0].2);
        assert_eq!(report.young_blobs, 1);
        assert!(lines.contains(&format!("blob eligible for deletion: {}", blobs[0].0)));
        assert_eq!(stat(0).await, None, "the unreferenced object is gone");
        assert_eq!(meta.known_blob(&blobs[0].0).await.expect("known"), None);
        assert!(stat(1).await.is_some(), "the referenced object stays");
        assert!(stat(2).await.is_some(), "the young object stays");
        let read = registry
            .read_blob(&app, &blobs[1].0, |_| Ok(None))
            .await
            .expect("the referenced blob is still served");
        assert_eq!(read.size, blobs[1].2);
    }

    /// A push of the same digest between the keyed forget and the object's delete
    /// neither waits for the collector nor loses its copy: it records a key of its own.
    #[tokio::test]
    async fn a_push_during_the_keyed_sweep_keeps_its_own_copy() {
        use super::race::Pause;
        let dir = tempfile::tempdir().expect("tempdir");
        let meta = Arc::new(
            SqliteMeta::open(&dir.path().join("berth.db"))
                .await
                .expect("meta"),
        );
        let store = Arc::new(
            S3BlobStore::new(&testserver::config(testserver::Kind::SeaweedFs, 5 << 20))
                .expect("s3 store"),
        );
        let registry = Arc::new(Registry::new(
            store.clone(),
            meta.clone(),
            Settings::default(),
        ));
        let data = Bytes::from_static(b"a layer collected and pushed again at once");
        let digest = Digest::of(Algorithm::Sha256, &data);
        let size = data.len() as u64;
        let (old, new) = ("objects/gc/old-copy", "objects/gc/new-copy");
        store.put_at(old, data.clone()).await.expect("put");
        meta.link_blob_at(&repo("keyed/old"), &digest, size, Some(old), &[])
            .await
            .expect("link");
        meta.backdate(3600).await.expect("backdate");
        let cutoff = crate::meta::now() - 600;
        let batch = meta.gc_keyed_blobs(None, 10).await.expect("keyed");
        let pause = Pause::at("gc:keyed-forgotten");
        let sweeping = registry.clone();
        let sweep = tokio::spawn(
            pause
                .clone()
                .scope(async move { sweeping.sweep_keyed(&batch, cutoff).await }),
        );
        pause.reached.notified().await;
        // Forgotten, not yet deleted: the new push is recorded at once, at its own key.
        store.put_at(new, data.clone()).await.expect("put");
        let linked = tokio::time::timeout(
            Duration::from_secs(5),
            meta.link_blob_at(&repo("keyed/new"), &digest, size, Some(new), &[]),
        )
        .await
        .expect("the link does not wait for the collector")
        .expect("link");
        assert_eq!(linked.as_deref(), Some(new));
        pause.resume.notify_one();
        assert_eq!(sweep.await.expect("join").expect("sweep"), (1, size));
        let at = |key| BlobRef {
            digest: &digest,
            key: Some(key),
        };
        assert_eq!(store.stat(at(old)).await.expect("stat"), None);
        assert_eq!(store.stat(at(new)).await.expect("stat"), Some(size));
        let read = registry
            .read_blob(&repo("keyed/new"), &digest, |_| Ok(None))
            .await
            .expect("the new push is served");
        assert_eq!(read.size, size);
    }

    #[tokio::test]
    async fn keyed_blobs_are_collected_with_sqlite() {
        let dir = tempfile::tempdir().expect("tempdir");
        let meta = Arc::new(
            SqliteMeta::open(&dir.path().join("berth.db"))
                .await
                .expect("meta"),
        );
        let m = meta.clone();
        collects_keyed(
            meta,
            async move { m.backdate(3600).await.expect("backdate") },
        )
        .await;
    }

    #[tokio::test]
    async fn keyed_blobs_are_collected_with_postgres() {
        let db = TestDb::create().await;
        let meta = Arc::new(db.open().await);
        let m = meta.clone();
        collects_keyed(meta.clone(), async move {
            m.backdate(3600).await.expect("backdate")
        })
        .await;
        meta.close().await;
        db.drop_db().await;
    }
}
