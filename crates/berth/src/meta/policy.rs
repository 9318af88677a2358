//! Project policies kept in the metadata database: immutable tag rules. The rules'
//! selectors are stored as the API took them; matching them is the registry's work
//! (`registry/immutable.rs`), the guard that makes them race-free is here
//! ([`super::Manifests::put_manifest_guarded`]).

use super::Result;

/// An immutable tag rule as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRule {
    pub id: i64,
    pub project_id: i64,
    pub priority: i64,
    pub disabled: bool,
    /// `{"tag_selectors": [...], "scope_selectors": {...}}` as the API took them.
    pub selectors: String,
}

/// A rule to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRule {
    pub priority: i64,
    pub disabled: bool,
    pub selectors: String,
}

#[async_trait::async_trait]
pub trait ImmutableRules: Send + Sync {
    /// Every rule of a project, by id.
    async fn immutable_rules(&self, project_id: i64) -> Result<Vec<StoredRule>>;
    /// The enabled rules of the project named `project`, by id (none if there is no such
    /// project): what a push or a delete in it is checked against.
    async fn active_immutable_rules(&self, project: &str) -> Result<Vec<StoredRule>>;
    /// Add a rule unless the project has `max` already (`None` then); its id.
    async fn add_immutable_rule(
        &self,
        project_id: i64,
        rule: &NewRule,
        max: u32,
    ) -> Result<Option<i64>>;
    /// Replace rule `id` of the project; `false` if there is none.
    async fn update_immutable_rule(&self, project_id: i64, id: i64, rule: &NewRule)
        -> Result<bool>;
    /// Delete rule `id` of the project; `false` if there is none.
    async fn delete_immutable_rule(&self, project_id: i64, id: i64) -> Result<bool>;
}

/// A project's storage quota: `hard` bytes (`None`: no limit) and `used`, the bytes of
/// the distinct blobs linked into its repositories (each counted once per project).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quota {
    pub project_id: i64,
    pub project: String,
    pub hard: Option<u64>,
    pub used: u64,
    pub created_at: i64,
    pub updated_at: i64,
}

/// Storage quotas. Usage is kept exact by the transactions that link and unlink blobs
/// ([`super::Repositories::link_blob`] and `mount_blob` refuse a new blob past the
/// quota with [`super::MetaError::QuotaExceeded`], nothing written); a project without
/// a quota row has none, and its usage is counted when it gets one.
#[async_trait::async_trait]
pub trait Quotas: Send + Sync {
    /// Set project `project_id`'s limit (`None`: none), counting its usage now if it had
    /// no quota; `None` if there is no such project.
    async fn set_quota(&self, project_id: i64, hard: Option<u64>) -> Result<Option<Quota>>;
    async fn quota(&self, project_id: i64) -> Result<Option<Quota>>;
    /// A page of the quotas, by project id, and how many there are.
    async fn quotas(&self, page: super::Page) -> Result<(Vec<Quota>, u64)>;
}
