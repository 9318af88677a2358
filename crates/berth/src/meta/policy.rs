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
