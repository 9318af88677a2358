//! OCI semantics, written once over the two storage traits: blob reads and deletes,
//! uploads (chunked, monolithic, mounts, resume), manifests (validation, references,
//! tags, referrers, content negotiation), listings, and whole repositories (delete, tag
//! and untag by digest) for the management API.
//!
//! This layer speaks validated `oci` types and domain errors. It knows nothing of HTTP
//! (no status codes, no headers) and nothing of SQL or file paths.

mod blobs;
pub mod claims;
pub mod events;
pub mod gc;
pub mod gc_runs;
pub mod immutable;
mod import;
mod listing;
mod manifests;
pub mod proxy;
mod proxy_projects;
pub use proxy_projects::MirrorRoute;
mod pull_events;
pub mod pull_times;
mod purge;
mod repositories;
pub mod retention;
mod stats;
mod uploads;
pub mod upstream;

pub use blobs::BlobRead;
pub use events::RequestInfo;
pub use import::BlobImport;
pub use listing::Page;
pub use manifests::{Accept, PushedManifest};
pub use purge::PurgeReport;
pub use uploads::{ChunkRange, UploadState};

use crate::meta::{MetaError, MetaStore};
use crate::storage::{BlobStore, StorageError};
use oci::{Digest, Tag};
use std::sync::Arc;
use std::time::Duration;

/// Limits and switches the registry enforces.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `storage.delete.enabled`: manifest, tag and blob deletes are allowed.
    pub delete_enabled: bool,
    /// Largest manifest accepted, in bytes.
    pub max_manifest_bytes: usize,
    /// Largest blob accepted, in bytes.
    pub max_blob_bytes: u64,
    /// Most entries one page of a tags or catalog listing returns.
    pub max_page_entries: u32,
    /// Catalog page size when the client gives no `n`.
    pub default_catalog_entries: u32,
    /// How long an upload may wait for the next bytes of a request body.
    pub body_idle_timeout: Duration,
    /// The `OCI-Chunk-Min-Length` advertised for chunked uploads.
    pub chunk_min_length: u64,
    /// Most open upload sessions, overall and per repository.
    pub upload_sessions: crate::meta::SessionCaps,
    /// `validation.manifests.urls`: which URLs layers fetched from elsewhere may name.
    pub layer_urls: UrlPolicy,
    /// `storage.maintenance.garbagecollect`: the garbage collection schedule followed
    /// while none was set through the management API.
    pub gc_schedule: Option<crate::meta::GcSchedule>,
}

/// Distribution's `validation.manifests.urls`: a layer URL must match one `allow` pattern
/// (when any is given) and no `deny` pattern. With neither, any URL is accepted.
#[derive(Debug, Clone, Default)]
pub struct UrlPolicy {
    pub allow: Vec<regex::Regex>,
    pub deny: Vec<regex::Regex>,
}

impl UrlPolicy {
    /// An http or https URL without a fragment (as Distribution requires), matching the
    /// patterns.
    pub fn permits(&self, url: &str) -> bool {
        let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
        let web = lower.starts_with("http://") || lower.starts_with("https://");
        web && !url.contains('#')
            && (self.allow.is_empty() || self.allow.iter().any(|r| r.is_match(url)))
            && !self.deny.iter().any(|r| r.is_match(url))
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            delete_enabled: false,
            max_manifest_bytes: oci::manifest::DEFAULT_MAX_MANIFEST_BYTES,
            max_blob_bytes: 1 << 40,
            max_page_entries: 10_000,
            default_catalog_entries: 100,
            body_idle_timeout: Duration::from_secs(60),
            chunk_min_length: 0,
            upload_sessions: crate::meta::SessionCaps::default(),
            layer_urls: UrlPolicy::default(),
            gc_schedule: None,
        }
    }
}

/// What went wrong, in the registry's terms.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("blob {0} is unknown to this repository")]
    BlobUnknown(Digest),
    #[error("upload session unknown")]
    UploadUnknown,
    #[error("upload invalid: {0}")]
    UploadInvalid(String),
    #[error(
        "chunk out of order: the upload holds {size} bytes, so the next chunk must start at {size}"
    )]
    ChunkOutOfOrder { size: u64 },
    #[error("digest invalid: {0}")]
    DigestInvalid(String),
    #[error("size invalid: {0}")]
    SizeInvalid(String),
    #[error("blob exceeds the limit of {limit} bytes")]
    BlobTooLarge { limit: u64 },
    #[error("manifest exceeds the limit of {limit} bytes")]
    ManifestTooLarge { limit: usize },
    #[error("manifest invalid: {0}")]
    ManifestInvalid(String),
    #[error("manifest references content this repository does not have: {}", .0.iter().map(|d| d.as_str()).collect::<Vec<_>>().join(", "))]
    ManifestBlobUnknown(Vec<Digest>),
    #[error("manifest {0} is unknown to this repository")]
    ManifestUnknown(String),
    #[error("repository unknown")]
    NameUnknown,
    /// The tag is not on that manifest (absent, or pointing at another one).
    #[error("tag {tag} does not point at manifest {digest} in this repository")]
    TagUnknown { tag: Tag, digest: Digest },
    #[error("tag invalid: {0}")]
    TagInvalid(String),
    #[error("requested range not satisfiable (blob is {size} bytes)")]
    RangeNotSatisfiable { size: u64 },
    #[error("{0}")]
    Unsupported(&'static str),
    /// A cap on open upload sessions was reached.
    #[error("{0}")]
    TooManyUploads(String),
    /// The pull-through cache's upstream failed and nothing cached could stand in.
    #[error("{0}")]
    Upstream(String),
    /// A job that runs once per deployment (garbage collection) is running elsewhere.
    #[error("{0}")]
    JobRunning(String),
    /// A project policy refuses the change (an immutable tag moved or deleted); the
    /// message names the rule. Nothing was written.
    #[error("{0}")]
    Denied(String),
    #[error("reading the request body failed: {0}")]
    Body(std::io::Error),
    #[error(transparent)]
    Storage(StorageError),
    #[error(transparent)]
    Meta(#[from] MetaError),
}

pub type Result<T, E = RegistryError> = std::result::Result<T, E>;

impl RegistryError {
    /// Blob storage or the metadata database ran out of space.
    /// The metadata database or the blob store cannot be reached now.
    pub fn is_unavailable(&self) -> bool {
        match self {
            RegistryError::Storage(e) => e.is_unavailable(),
            RegistryError::Meta(e) => e.is_unavailable(),
            _ => false,
        }
    }

    pub fn is_out_of_space(&self) -> bool {
        match self {
            RegistryError::Storage(e) => e.is_out_of_space(),
            RegistryError::Meta(e) => e.is_out_of_space(),
            _ => false,
        }
    }
}

/// Storage errors that are not faults become domain errors here, explicitly.
impl From<StorageError> for RegistryError {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::UploadNotFound | StorageError::InvalidUploadId => {
                RegistryError::UploadUnknown
            }
            StorageError::OffsetMismatch { actual, .. } => {
                RegistryError::ChunkOutOfOrder { size: actual }
            }
            StorageError::TooLarge { limit } => RegistryError::BlobTooLarge { limit },
            StorageError::Body(e) => RegistryError::Body(e),
            other => RegistryError::Storage(other),
        }
    }
}

/// The registry service: one per process, shared by all requests.
pub struct Registry {
    blobs: Arc<dyn BlobStore>,
    meta: Arc<dyn MetaStore>,
    settings: Settings,
    uploads: uploads::UploadCache,
    /// Where notification events go; `None` when no endpoint is configured.
    events: Option<events::Events>,
    /// The pull-through cache of the whole registry, when `proxy` is configured.
    proxy: Option<Arc<proxy::Proxy>>,
    /// What every pull-through cache shares.
    proxy_shared: proxy::ProxyShared,
    /// Proxy-cache projects.
    project_proxies: proxy_projects::ProjectProxies,
    /// Pull times not written yet.
    pull_times: pull_times::PullTimes,
}

impl Registry {
    pub fn new(
        blobs: Arc<dyn BlobStore>,
        meta: Arc<dyn MetaStore>,
        settings: Settings,
    ) -> Registry {
        Registry {
            blobs,
            meta,
            settings,
            uploads: uploads::UploadCache::default(),
            events: None,
            proxy: None,
            proxy_shared: proxy::ProxyShared::default(),
            project_proxies: proxy_projects::ProjectProxies::default(),
            pull_times: pull_times::PullTimes::default(),
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    fn check_delete_enabled(&self) -> Result<()> {
        if self.settings.delete_enabled {
            Ok(())
        } else {
            Err(RegistryError::Unsupported(
                "deletes are disabled: set storage.delete.enabled to true to allow them",
            ))
        }
    }
}
