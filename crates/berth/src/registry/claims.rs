//! Background jobs that must run on one node at a time in a cluster (upload purging,
//! pull-through cache expiry, garbage collection) claim their turn through the metadata
//! database (`meta::Maintenance::claim_job`): a lease by the database's clock, renewed
//! by its holder, running out by itself when the holder dies. On a single node the
//! claim always succeeds and costs one small write per run. Garbage collection also
//! claims each digest whose file it is removing (`gc-blob <digest>`, committed with the
//! forget in `meta`), which `link_blob` refuses to record past (see `gc.rs`).

use super::{Registry, RegistryError, Result};
use crate::meta::{JobHolder, MetaStore};
use std::sync::Arc;
use std::time::Duration;

/// The names jobs claim under.
pub const UPLOAD_PURGE: &str = "uploadpurge";
pub const PROXY_EXPIRY: &str = "proxyexpiry";
pub const GARBAGE_COLLECT: &str = "garbage-collect";

/// How long a garbage collection's claim lasts without renewal; it is renewed every
/// third of that while the collection runs, so a collector that dies frees the claim
/// within this time.
pub const GC_LEASE: Duration = Duration::from_secs(60);

/// How long a collection's claim on one digest lasts without renewal (see `gc.rs`):
/// pushes of that digest wait for it, so a collector that dies while removing the file
/// holds them up for at most this long.
pub const COLLECTING_LEASE: Duration = Duration::from_secs(30);

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
