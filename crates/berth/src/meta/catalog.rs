//! The catalog as a management API (Harbor's `/api/v2.0/projects/{p}/repositories`,
//! artifacts and `/statistics`) asks for it: repositories with their counts and last
//! change, manifests ("artifacts") with their tags, sizes and children, and each
//! project's usage. Questions only; the writes behind that API are the registry's own
//! (`registry/repositories.rs`).

use super::access::Page;
use super::Result;
use oci::{Digest, RepoName};

/// A repository as a listing shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepositorySummary {
    pub id: i64,
    pub name: String,
    pub created_at: i64,
    /// Newest of its manifests' and tags' times (its `created_at` when it has neither).
    pub updated_at: i64,
    /// Manifests in it.
    pub artifact_count: u64,
}

/// A tag of an artifact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagInfo {
    pub name: String,
    /// When the tag was last pointed at its manifest.
    pub updated_at: i64,
}

/// A manifest of a repository, as an artifact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactInfo {
    pub digest: Digest,
    pub media_type: String,
    pub artifact_type: Option<String>,
    /// The manifest's own size plus the sizes of the blobs it references (for an index:
    /// its own size plus its children's manifests' sizes, as Harbor counts).
    pub size: u64,
    /// When it was first stored in the repository.
    pub created_at: i64,
    pub subject: Option<Digest>,
    /// Its annotations, as a JSON object.
    pub annotations: Option<String>,
    /// When it was last pulled (a GET of it, recorded within seconds), if ever.
    pub pulled_at: Option<i64>,
    /// By name.
    pub tags: Vec<TagInfo>,
    /// Child manifests (of an index), in order.
    pub children: Vec<Digest>,
}

/// Which artifacts a listing shows; every set field must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArtifactFilter {
    /// `Some(true)`: tagged only; `Some(false)`: untagged only.
    pub tagged: Option<bool>,
    /// Some tag's name contains this.
    pub tag_contains: Option<String>,
}

#[async_trait::async_trait]
pub trait Catalog: Send + Sync {
    /// Repositories named `<project>/...` (name containing `name_contains` if given), by
    /// name, and the total. A `project` holding a '/' has none.
    async fn repository_summaries(
        &self,
        project: &str,
        name_contains: Option<&str>,
        page: Page,
    ) -> Result<(Vec<RepositorySummary>, u64)>;
    async fn repository_summary(&self, repo: &RepoName) -> Result<Option<RepositorySummary>>;
    /// Manifests of `repo` newest first (created_at DESC, digest), with their tags (by
    /// name), and the total. An unknown repository has none.
    async fn artifacts(
        &self,
        repo: &RepoName,
        filter: &ArtifactFilter,
        page: Page,
    ) -> Result<(Vec<ArtifactInfo>, u64)>;
    async fn artifact(&self, repo: &RepoName, digest: &Digest) -> Result<Option<ArtifactInfo>>;
    /// For each of `projects`, in the order given (all projects' repositories grouped by
    /// the text before the first '/' when `None`, by project name; names without '/' are
    /// in no project): (project name, repository count, total bytes of distinct blobs
    /// linked into its repositories). A project without repositories counts zeros.
    async fn project_usage(&self, projects: Option<&[String]>) -> Result<Vec<(String, u64, u64)>>;
}
