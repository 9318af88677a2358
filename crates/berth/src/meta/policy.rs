//! Project policies kept in the metadata database: immutable tag rules, storage quotas,
//! tag retention policies with their runs, and the manifests' pull times retention
//! reads. Rules and policies are stored as the API took them; matching and evaluating
//! them is the registry's work (`registry/immutable.rs`, `registry/retention.rs`); the
//! guards that make them race-free are conditions of the writes here
//! ([`super::Manifests::put_manifest_guarded`], the quota charge of a link).

use super::Result;
use oci::{Digest, RepoName};

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

/// A project's tag retention policy as stored: the API's JSON (algorithm, rules,
/// trigger), evaluated by the registry (`registry/retention.rs`), and its schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRetention {
    pub id: i64,
    pub project_id: i64,
    pub project: String,
    pub policy: String,
    /// Six-field cron, '' for none.
    pub cron: String,
    pub created_at: i64,
    pub updated_at: i64,
}

/// One run of a retention policy (Harbor's `RetentionExecution`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionRun {
    pub id: i64,
    pub policy_id: i64,
    /// `MANUAL` or `SCHEDULE`.
    pub kind: String,
    pub dry_run: bool,
    pub owner: String,
    /// `Running`, `Succeed`, `Error` or `Stopped`.
    pub status: String,
    pub started_at: i64,
    pub updated_at: i64,
    pub ended_at: Option<i64>,
}

/// What a run did in one repository (Harbor's `RetentionExecutionTask`), with its log.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RetentionTask {
    pub id: i64,
    pub run_id: i64,
    pub repository: String,
    pub status: String,
    /// Artifacts the rules looked at, and how many of them were kept.
    pub total: u64,
    pub retained: u64,
    pub started_at: i64,
    pub ended_at: i64,
    pub log: String,
}

/// A manifest of a repository as retention sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionManifest {
    pub digest: Digest,
    pub subject: Option<Digest>,
    /// When it was last pushed: stored, or a tag of it pushed (seconds since the epoch).
    pub pushed_at: i64,
    /// When it was last pulled, if ever.
    pub pulled_at: Option<i64>,
    /// Its tags, in byte order.
    pub tags: Vec<String>,
    /// The manifests it references (an index's children).
    pub children: Vec<Digest>,
}

/// The latest finished real run of a project's retention policy, for metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionOutcome {
    pub project: String,
    pub status: String,
    pub ended_at: i64,
    /// Artifacts it deleted (its tasks' artifacts less those kept).
    pub deleted: u64,
}

/// A pull to record: repository, manifest digest, when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullTime {
    pub repository: String,
    pub digest: String,
    pub at: i64,
}

/// Tag retention policies, their runs, and the pull times their rules read.
#[async_trait::async_trait]
pub trait Retentions: Send + Sync {
    /// Store project `project_id`'s policy; its id, or `None` if the project has one
    /// already (one per project).
    async fn create_retention(
        &self,
        project_id: i64,
        policy: &str,
        cron: &str,
    ) -> Result<Option<i64>>;
    async fn retention(&self, id: i64) -> Result<Option<StoredRetention>>;
    async fn project_retention(&self, project_id: i64) -> Result<Option<StoredRetention>>;
    /// Replace policy `id`; `false` if there is none.
    async fn update_retention(&self, id: i64, policy: &str, cron: &str) -> Result<bool>;
    /// Delete policy `id` with its history; `false` if there is none.
    async fn delete_retention(&self, id: i64) -> Result<bool>;
    /// Every policy with a schedule.
    async fn scheduled_retentions(&self) -> Result<Vec<StoredRetention>>;
    /// Record a run starting; `None` if `scheduled_for` is a tick of this policy that
    /// another node took. Only the newest `keep` runs of the policy are kept.
    async fn retention_run_start(
        &self,
        policy_id: i64,
        kind: &str,
        scheduled_for: Option<i64>,
        dry_run: bool,
        owner: &str,
        keep: u32,
    ) -> Result<Option<i64>>;
    /// Record that run `id` is still going; whether it was asked to stop.
    async fn retention_run_alive(&self, id: i64) -> Result<bool>;
    async fn retention_run_end(&self, id: i64, status: &str) -> Result<()>;
    /// Ask run `id` of policy `policy_id` to stop; `false` if there is no such run.
    async fn retention_run_stop(&self, policy_id: i64, id: i64) -> Result<bool>;
    /// A page of a policy's runs, newest first, and how many there are.
    async fn retention_runs(
        &self,
        policy_id: i64,
        page: super::Page,
    ) -> Result<(Vec<RetentionRun>, u64)>;
    async fn retention_run(&self, policy_id: i64, id: i64) -> Result<Option<RetentionRun>>;
    /// Record one repository's task of run `run_id` (its id and `log` as given).
    async fn retention_task_add(&self, run_id: i64, task: &RetentionTask) -> Result<i64>;
    /// A page of a run's tasks, by id (logs left empty), and how many there are.
    async fn retention_tasks(
        &self,
        run_id: i64,
        page: super::Page,
    ) -> Result<(Vec<RetentionTask>, u64)>;
    async fn retention_task(&self, run_id: i64, id: i64) -> Result<Option<RetentionTask>>;
    /// Every manifest of `repo` with its push and pull times, tags and children.
    async fn retention_manifests(&self, repo: &RepoName) -> Result<Vec<RetentionManifest>>;
    /// Per policy, its latest finished real run.
    async fn retention_outcomes(&self) -> Result<Vec<RetentionOutcome>>;
    /// Move each manifest's pull time forward to `at` (never back); unknown ones are
    /// skipped.
    async fn record_pulls(&self, pulls: &[PullTime]) -> Result<()>;
}
