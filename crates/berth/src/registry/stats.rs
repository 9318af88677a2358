//! What the operations side asks of the registry: stored counts for metrics, and a
//! cheap probe that the blob store and the metadata database answer (the
//! `storagedriver` health check).

use super::{Registry, Result};
use crate::meta::Stats;
use oci::{Algorithm, Digest};

impl Registry {
    /// Repositories, manifests, blobs, stored bytes and open uploads, from metadata.
    pub async fn stats(&self) -> Result<Stats> {
        Ok(self.meta.stats().await?)
    }

    /// Ask the blob store and the metadata database about one blob: an answer (present
    /// or not) from each means both work. A node cut off from either fails this, so the
    /// health gate takes it out of its load balancer.
    pub async fn storage_check(&self) -> Result<()> {
        let probe = Digest::of(Algorithm::Sha256, b"");
        self.blobs.stat((&probe).into()).await?;
        self.meta.known_blob(&probe).await?;
        Ok(())
    }
}

impl Registry {
    /// Every project's storage quota (for metrics; one row per project with a quota).
    pub async fn quotas(&self) -> Result<Vec<crate::meta::Quota>> {
        Ok(self.meta.quotas(crate::meta::Page::all()).await?.0)
    }
}
