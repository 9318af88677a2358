//! Background jobs that must run on one node at a time in a cluster (upload purging,
//! pull-through cache expiry, garbage collection) claim their turn through the metadata
//! database (`meta::Maintenance::claim_job`): a lease by the database's clock, renewed
//! by its holder, running out by itself when the holder dies. On a single node the
//! claim always succeeds and costs one small write per run. Garbage collection also
//! claims each digest whose file it is removing (`gc-blob <digest>`, committed with the
//! forget in `meta`), which `link_blob` refuses to record past (see `gc.rs`).

use super::{Registry, RegistryError, Result};
use crate::meta::{JobHolder, MetaStore};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The names jobs claim under.
pub const UPLOAD_PURGE: &str = "uploadpurge";
pub const PROXY_EXPIRY: &str = "proxyexpiry";
pub const GARBAGE_COLLECT: &str = "garbage-collect";
pub const REGISTRY_HEALTH: &str = "registry-health";

/// How long a garbage collection's claim lasts without renewal; it is renewed every
/// third of that while the collection runs, so a collector that dies frees the claim
/// within this time.
pub const GC_LEASE: Duration = Duration::from_secs(60);

/// How long a collection's claim on one digest lasts without renewal (see `gc.rs`):
/// pushes of that digest wait for it, so a collector that dies while removing the file
/// holds them up for at most this long.
pub const COLLECTING_LEASE: Duration = Duration::from_secs(30);

/// How long before its claims run out (by this machine's clock) a collection stops
/// starting to remove files: leases are counted in whole seconds by the database's
/// clock, which may also run at a slightly different rate.
pub const COLLECTING_MARGIN: Duration = Duration::from_secs(5);

impl Registry {
    /// Claim `job` for `owner` for `lease` (or renew `owner`'s claim); `Err` names the
    /// node holding it.
    pub async fn claim_job(
        &self,
        job: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<std::result::Result<(), JobHolder>> {
        Ok(self.meta.claim_job(job, owner, lease).await?)
    }

    /// Give `owner`'s claim of `job` up.
    pub async fn release_job(&self, job: &str, owner: &str) -> Result<()> {
        Ok(self.meta.release_job(job, owner).await?)
    }

    /// Claim garbage collection for `owner` and keep the claim renewed until the
    /// returned guard is dropped (or released); refused while another collector holds it.
    pub(super) async fn claim_collection(&self, owner: &str) -> Result<HeldClaim> {
        match self.claim_job(GARBAGE_COLLECT, owner, GC_LEASE).await? {
            Ok(()) => {}
            Err(holder) => {
                return Err(RegistryError::JobRunning(format!(
                    "another garbage collection is running ({}, started {} s ago): run one at a time; if it died, its claim runs out within {} s",
                    holder.owner,
                    (holder.now - holder.claimed_at).max(0),
                    (holder.lease_until - holder.now).max(0)
                )))
            }
        }
        Ok(HeldClaim::hold(
            self.meta.clone(),
            GARBAGE_COLLECT,
            owner,
            GC_LEASE,
        ))
    }
}

/// A claim this process holds, renewed in the background every third of its lease
/// until [`HeldClaim::release`], or until dropped (a panic included): then the renewal
/// stops and the claim runs out by itself within its lease.
pub(super) struct HeldClaim {
    renew: tokio::task::JoinHandle<()>,
    meta: Arc<dyn MetaStore>,
    name: String,
    owner: String,
}

impl HeldClaim {
    /// Keep `name`, which `owner` has just claimed, renewed.
    pub(super) fn hold(
        meta: Arc<dyn MetaStore>,
        name: &str,
        owner: &str,
        lease: Duration,
    ) -> HeldClaim {
        let (m, n, o) = (meta.clone(), name.to_string(), owner.to_string());
        let renew = tokio::spawn(async move {
            let mut tick = tokio::time::interval(lease / 3);
            tick.tick().await;
            loop {
                tick.tick().await;
                match m.claim_job(&n, &o, lease).await {
                    Ok(Ok(())) => {}
                    Ok(Err(holder)) => {
                        tracing::error!(claim = %n, holder = %holder.owner, "lost a claim (the database's clock jumped, or this process stalled for a whole lease): another node may run the same work now");
                    }
                    Err(e) => {
                        tracing::warn!(claim = %n, error = %e, "renewing a claim failed; retrying")
                    }
                }
            }
        });
        HeldClaim {
            renew,
            meta,
            name: name.to_string(),
            owner: owner.to_string(),
        }
    }

    /// Stop renewing and give the claim up now.
    pub(super) async fn release(self) {
        self.renew.abort();
        if let Err(e) = self.meta.release_job(&self.name, &self.owner).await {
            tracing::warn!(claim = %self.name, error = %e, "releasing a claim failed; it runs out by itself");
        }
    }
}

impl Drop for HeldClaim {
    fn drop(&mut self) {
        self.renew.abort();
    }
}

/// Claims on many names committed together (a collection's batch of digests), renewed
/// together in one statement every third of their lease until [`HeldClaims::release`]
/// or until dropped. Unlike [`HeldClaim`], it tells until when they are surely all
/// still held ([`HeldClaims::held_for`]): measured from before each renewal was sent,
/// and ended for good by a renewal that finds one ran out (never revived, since others
/// may have gone ahead meanwhile).
pub(super) struct HeldClaims {
    renew: tokio::task::JoinHandle<()>,
    meta: Arc<dyn MetaStore>,
    names: Vec<String>,
    owner: String,
    lease: Duration,
    until: Arc<Mutex<Instant>>,
}

impl HeldClaims {
    /// Keep `names`, which `owner` claimed for `lease` in a transaction that began after
    /// `claimed_at`, renewed.
    pub(super) fn hold(
        meta: Arc<dyn MetaStore>,
        names: Vec<String>,
        owner: &str,
        lease: Duration,
        claimed_at: Instant,
    ) -> HeldClaims {
        let until = Arc::new(Mutex::new(claimed_at + lease));
        let (m, n, o, u) = (
            meta.clone(),
            names.clone(),
            owner.to_string(),
            until.clone(),
        );
        let renew = tokio::spawn(async move {
            let mut tick = tokio::time::interval(lease / 3);
            tick.tick().await;
            loop {
                tick.tick().await;
                let sent = Instant::now();
                match m.renew_jobs(&n, &o, lease).await {
                    Ok(k) if k as usize == n.len() => set(&u, sent + lease),
                    Ok(k) => {
                        tracing::error!(
                            held = k,
                            claimed = n.len(),
                            "lost claims this process held (it stalled for a whole lease, or the database's clock jumped): another node may run the same work now"
                        );
                        set(&u, sent);
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "renewing claims failed; retrying")
                    }
                }
            }
        });
        HeldClaims {
            renew,
            meta,
            names,
            owner: owner.to_string(),
            lease,
            until,
        }
    }

    /// Whether every claim is surely held for `margin` more.
    pub(super) fn held_for(&self, margin: Duration) -> bool {
        let until = *self.until.lock().unwrap_or_else(|p| p.into_inner());
        Instant::now() + margin < until
    }

    /// Whether every claim is still held, by the database's answer: one renewal now,
    /// counted. A claim that ran out is never revived, so `true` means none ran out at
    /// any time since they were taken (the local [`HeldClaims::held_for`] cannot tell
    /// that to the second: leases are whole seconds on the database's clock).
    pub(super) async fn confirm(&self) -> bool {
        if !self.held_for(Duration::ZERO) {
            return false;
        }
        let lease = self.lease;
        match self.meta.renew_jobs(&self.names, &self.owner, lease).await {
            Ok(k) if k as usize == self.names.len() => true,
            Ok(_) => {
                set(&self.until, Instant::now());
                false
            }
            Err(e) => {
                tracing::warn!(error = %e, "confirming claims failed; treating them as lost");
                false
            }
        }
    }

    /// Stop renewing and give every claim up now.
    pub(super) async fn release(self) {
        self.renew.abort();
        if let Err(e) = self.meta.release_jobs(&self.names, &self.owner).await {
            tracing::warn!(error = %e, claims = self.names.len(), "releasing claims failed; they run out by themselves");
        }
    }
}

impl Drop for HeldClaims {
    fn drop(&mut self) {
        self.renew.abort();
    }
}

fn set(until: &Mutex<Instant>, to: Instant) {
    *until.lock().unwrap_or_else(|p| p.into_inner()) = to;
}

#[cfg(test)]
mod tests {
    use super::{GARBAGE_COLLECT, GC_LEASE};
    use crate::meta::sqlite::SqliteMeta;
    use crate::registry::gc::GcOptions;
    use crate::registry::{Registry, RegistryError, Settings};
    use crate::storage::memory::MemoryBlobStore;
    use std::sync::Arc;
    use std::time::Duration;

    fn options(owner: &str, dry_run: bool) -> GcOptions {
        GcOptions {
            dry_run,
            delete_untagged: true,
            grace: Duration::ZERO,
            owner: owner.into(),
        }
    }

    /// Claims held together are renewed together, and once one ran out and another
    /// owner took it, `held_for` says so for good (a collector then stops removing files).
    #[tokio::test]
    async fn held_claims_learn_they_were_lost() {
        let dir = tempfile::tempdir().expect("tempdir");
        let meta: Arc<dyn crate::meta::MetaStore> = Arc::new(
            SqliteMeta::open(&dir.path().join("berth.db"))
                .await
                .expect("meta"),
        );
        let lease = Duration::from_secs(3);
        let names: Vec<String> = ["gc-blob a", "gc-blob b"].map(String::from).to_vec();
        let claimed_at = std::time::Instant::now();
        for n in &names {
            meta.claim_job(n, "gc-1", lease)
                .await
                .expect("claim")
                .expect("free");
        }
        let held = super::HeldClaims::hold(meta.clone(), names.clone(), "gc-1", lease, claimed_at);
        assert!(held.held_for(Duration::from_secs(1)));
        assert!(!held.held_for(lease), "never beyond the lease");
        // Renewed every second: still held after two leases.
        tokio::time::sleep(lease * 2).await;
        assert!(held.held_for(Duration::from_secs(1)), "renewed");
        // Another node takes one over (as it may once the lease ran out).
        meta.release_job(&names[1], "gc-1").await.expect("release");
        meta.claim_job(&names[1], "gc-2", lease)
            .await
            .expect("claim")
            .expect("free");
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(
            !held.held_for(Duration::ZERO),
            "lost one, so not surely held"
        );
        held.release().await;
        // Release gives up only its own: gc-2 keeps its claim.
        match meta
            .claim_job(&names[1], "gc-3", lease)
            .await
            .expect("claim")
        {
            Err(holder) => assert_eq!(holder.owner, "gc-2"),
            Ok(()) => panic!("gc-2's claim was released by gc-1"),
        }
        meta.claim_job(&names[0], "gc-3", lease)
            .await
            .expect("claim")
            .expect("gc-1 released its own");
    }

    /// A collection refuses to start while another holds the deployment's claim (a
    /// dry run, which deletes nothing, still runs), and gives its own claim back.
    #[tokio::test]
    async fn one_garbage_collection_at_a_time() {
        let dir = tempfile::tempdir().expect("tempdir");
        let meta = SqliteMeta::open(&dir.path().join("berth.db"))
            .await
            .expect("meta");
        let registry = Registry::new(
            Arc::new(MemoryBlobStore::new()),
            Arc::new(meta),
            Settings::default(),
        );
        registry
            .claim_job(GARBAGE_COLLECT, "pid 7 on node-2", GC_LEASE)
            .await
            .expect("claim")
            .expect("free");
        let err = registry
            .garbage_collect(&options("pid 8 on node-1", false), &mut |_| {})
            .await
            .expect_err("refused while node-2 collects");
        match &err {
            RegistryError::JobRunning(m) => assert!(m.contains("pid 7 on node-2"), "{m}"),
            other => panic!("expected JobRunning, got {other:?}"),
        }
        registry
            .garbage_collect(&options("pid 8 on node-1", true), &mut |_| {})
            .await
            .expect("a dry run needs no claim");
        registry
            .release_job(GARBAGE_COLLECT, "pid 7 on node-2")
            .await
            .expect("release");
        registry
            .garbage_collect(&options("pid 8 on node-1", false), &mut |_| {})
            .await
            .expect("runs once the claim is free");
        // ... and released its claim when it finished.
        registry
            .claim_job(GARBAGE_COLLECT, "pid 9 on node-3", GC_LEASE)
            .await
            .expect("claim")
            .expect("free again");
    }
}
