//! What the pull-through cache needs from the registry it mirrors: the [`Upstream`] trait
//! (implemented over HTTP in the top-level `upstream` module, which alone makes those
//! requests) and its
//! error. Plain Rust types only: no HTTP client, no status codes.

use crate::storage::ByteStream;
use oci::{Digest, Reference, RepoName, Tag};

/// Why the upstream could not answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    /// The upstream says the manifest, blob or repository does not exist.
    #[error("not found upstream")]
    NotFound,
    /// The upstream refused access (401 with the configured credentials, 403): for a
    /// repository it does not serve to us, as good as not found. The message says why.
    #[error("{0}")]
    Denied(String),
    /// Anything else: unreachable, timed out, a 5xx, a bad answer. The message names the
    /// upstream and the cause.
    #[error("{0}")]
    Failed(String),
}

/// A manifest fetched from upstream, its digest checked.
#[derive(Debug, Clone)]
pub struct UpstreamManifest {
    pub digest: Digest,
    pub media_type: String,
    pub content: Vec<u8>,
}

/// A blob body streaming from upstream.
pub struct UpstreamBlob {
    /// The upstream's `Content-Length`, when it sent one.
    pub size: Option<u64>,
    pub body: ByteStream,
}

/// The registry a pull-through cache mirrors.
#[async_trait::async_trait]
pub trait Upstream: Send + Sync + 'static {
    /// The upstream's base URL, for messages.
    fn url(&self) -> &str;
    /// The digest `tag` points at now (a HEAD: not counted against Docker Hub's rate
    /// limit). `None` when the upstream answered without a digest.
    async fn tag_digest(&self, repo: &RepoName, tag: &Tag)
        -> Result<Option<Digest>, UpstreamError>;
    /// Fetch a manifest; a manifest asked for by digest is checked against it.
    async fn manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<UpstreamManifest, UpstreamError>;
    /// A blob's size (a HEAD).
    async fn blob_size(&self, repo: &RepoName, digest: &Digest) -> Result<u64, UpstreamError>;
    /// Stream a blob (not verified here: the cache hashes it as it stores it).
    async fn blob(&self, repo: &RepoName, digest: &Digest) -> Result<UpstreamBlob, UpstreamError>;
    /// The repository's tags after `last`: at least `n` of them when the upstream has
    /// that many (following its pages), all of them without `n`.
    async fn tags(
        &self,
        repo: &RepoName,
        n: Option<u32>,
        last: Option<&str>,
    ) -> Result<Vec<String>, UpstreamError>;
}
