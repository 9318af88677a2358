//! What the operations side asks of the registry: stored counts for metrics, and a
//! cheap probe that the blob store answers (the `storagedriver` health check).

use super::{Registry, Result};
use crate::meta::Stats;
use oci::{Algorithm, Digest};

impl Registry {
    /// Repositories, manifests, blobs, stored bytes and open uploads, from metadata.
    pub async fn stats(&self) -> Result<Stats> {
        Ok(self.meta.stats().await?)
    }

    /// Ask the blob store about one blob: an answer (present or not) means it works.
    pub async fn storage_check(&self) -> Result<()> {
        self.blobs.stat(&Digest::of(Algorithm::Sha256, b"")).await?;
        Ok(())
    }
}
