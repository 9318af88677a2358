//! Tag retention (Harbor's): per project, rules saying which artifacts to keep; a run
//! deletes every other artifact of the repositories the rules cover.
//!
//! A policy is a list of rules, combined as the union of what they keep. A rule covers
//! the repositories its repository selectors pick (doublestar, as immutable tag rules'
//! `registry/immutable.rs`), selects among their artifacts with its tag selectors (an
//! artifact is selected when one of its tags is; untagged artifacts only when the
//! selector's `extras` say `{"untagged": true}`), and keeps of those: the N most recently
//! pushed, the N most recently pulled, those pushed or pulled within N days, or all of
//! them. In a repository no enabled rule covers nothing happens.
//!
//! What a run never deletes: an artifact with an immutable tag; an index's children
//! and an artifact's referrers (signatures, SBOMs) while what they belong to stays (the
//! artifacts are the repository's top-level manifests, and the children and referrers
//! of a deleted artifact go with it); anything pushed or re-tagged while the run looked
//! (a tagged artifact is deleted only if its tags are still the ones the run saw, an
//! untagged one only if it is still untagged and nothing references it, each checked in
//! the delete's transaction). The blobs are freed by the next garbage collection.
//!
//! A run is recorded (`meta::Retentions`) with one task per repository and that task's
//! log of what was kept and why, and what went (a dry run: what would go). One real run
//! of a policy at a time in the deployment (claimed through the database); a scheduled
//! run also takes its tick, so of several nodes firing on one tick one runs.

use super::claims::HeldClaim;
use super::gc_runs::AbortOnDrop;
use super::immutable::{check_selectors, covers, selects_tag, Guard, Selector};
use super::{Registry, RegistryError, Result};
use crate::meta::{
    ManifestDeletion, MetaError, Page, RetentionManifest, RetentionRun, RetentionTask,
    StoredRetention,
};
use oci::{Digest, RepoName, Tag};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The most rules a policy may have (Harbor's limit).
pub const MAX_RULES: usize = 15;
/// The largest count or number of days a rule takes.
pub const MAX_PARAM: i64 = 1 << 31;
/// Runs kept per policy, with their tasks and logs.
pub const KEPT_RUNS: u32 = 100;
/// A run started by hand, and one the schedule started.
pub const MANUAL: &str = "MANUAL";
pub const SCHEDULED: &str = "SCHEDULE";
/// How long a real run's claim lasts without renewal.
const LEASE: Duration = Duration::from_secs(60);
/// How often a run says it is alive and looks whether it was asked to stop; a
/// `Running` record not updated for [`STALE_AFTER`] belongs to a node that died.
const ALIVE_EVERY: Duration = Duration::from_secs(5);
pub const STALE_AFTER: Duration = Duration::from_secs(60);

/// The rule templates: what a rule keeps of the artifacts it selects.
pub const TEMPLATES: &[(&str, &str)] = &[
    (
        "latestPushedK",
        "retain the most recently pushed # artifacts",
    ),
    (
        "latestPulledN",
        "retain the most recently pulled # artifacts",
    ),
    (
        "nDaysSinceLastPush",
        "retain the artifacts pushed within the last # days",
    ),
    (
        "nDaysSinceLastPull",
        "retain the artifacts pulled within the last # days",
    ),
    ("always", "retain always"),
];

/// A retention rule in Harbor's `RetentionRule` shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionRule {
    #[serde(default)]
    pub id: i64,
    #[serde(default)]
    pub priority: i64,
    #[serde(default)]
    pub disabled: bool,
    #[serde(default = "retain")]
    pub action: String,
    pub template: String,
    #[serde(default)]
    pub params: BTreeMap<String, Value>,
    #[serde(default)]
    pub tag_selectors: Vec<Selector>,
    #[serde(default)]
    pub scope_selectors: BTreeMap<String, Vec<Selector>>,
}

fn retain() -> String {
    "retain".into()
}

/// When a policy runs by itself: `settings.cron`, six fields, '' for never.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trigger {
    #[serde(default = "schedule_kind")]
    pub kind: String,
    #[serde(default)]
    pub settings: TriggerSettings,
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub references: Value,
}

fn schedule_kind() -> String {
    "Schedule".into()
}

impl Default for Trigger {
    fn default() -> Trigger {
        Trigger {
            kind: schedule_kind(),
            settings: TriggerSettings::default(),
            references: Value::Null,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct TriggerSettings {
    #[serde(default)]
    pub cron: String,
}

/// Which project a policy belongs to: `{"level": "project", "ref": <project id>}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scope {
    pub level: String,
    #[serde(rename = "ref")]
    pub reference: i64,
}

/// A policy in Harbor's `RetentionPolicy` shape (`id` is given by the registry).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    #[serde(default, skip_serializing)]
    pub id: Option<i64>,
    #[serde(default = "or")]
    pub algorithm: String,
    #[serde(default)]
    pub rules: Vec<RetentionRule>,
    #[serde(default)]
    pub trigger: Trigger,
    pub scope: Scope,
}

fn or() -> String {
    "or".into()
}

impl Policy {
    /// What the API accepts; numbers the rules' ids 1, 2, ... in order.
    pub fn check(&mut self) -> std::result::Result<(), String> {
        if self.algorithm != "or" {
            return Err(format!(
                "algorithm {:?} is not supported: rules combine as \"or\" (the union of what each keeps)",
                self.algorithm
            ));
        }
        if self.scope.level != "project" {
            return Err(format!(
                "scope level {:?} is not supported: a policy belongs to a project (\"project\")",
                self.scope.level
            ));
        }
        if self.rules.len() > MAX_RULES {
            return Err(format!(
                "a policy has at most {MAX_RULES} rules; this one has {}",
                self.rules.len()
            ));
        }
        for (i, r) in self.rules.iter_mut().enumerate() {
            r.check().map_err(|e| format!("rule {}: {e}", i + 1))?;
            r.id = i as i64 + 1;
        }
        match self.trigger.kind.as_str() {
            "Schedule" => {
                let cron = self.trigger.settings.cron.trim();
                if !cron.is_empty() {
                    super::gc_runs::check_cron(cron)
                        .map_err(|e| format!("trigger.settings.cron: {e}"))?;
                }
            }
            "Manual" | "" => self.trigger.settings.cron.clear(),
            other => {
                return Err(format!(
                    "trigger kind {other:?} is not supported: \"Schedule\" (with settings.cron, '' for none) or \"Manual\""
                ))
            }
        }
        Ok(())
    }

    /// The schedule, '' for none.
    pub fn cron(&self) -> &str {
        self.trigger.settings.cron.trim()
    }
}

impl RetentionRule {
    fn check(&self) -> std::result::Result<(), String> {
        if self.action != "retain" {
            return Err(format!(
                "action {:?} is not supported: a retention rule's action is \"retain\"",
                self.action
            ));
        }
        if !TEMPLATES.iter().any(|(t, _)| *t == self.template) {
            let known: Vec<&str> = TEMPLATES.iter().map(|(t, _)| *t).collect();
            return Err(format!(
                "template {:?} is not one of {}",
                self.template,
                known.join(", ")
            ));
        }
        if self.template != "always" {
            let n = self.param();
            if !(1..=MAX_PARAM).contains(&n) {
                return Err(format!(
                    "params.{} must be a whole number from 1 to {MAX_PARAM}",
                    self.template
                ));
            }
        }
        if let Some(other) = self.params.keys().find(|k| **k != self.template) {
            return Err(format!(
                "params.{other} does not belong to template {:?}",
                self.template
            ));
        }
        check_selectors(&self.tag_selectors, &self.scope_selectors)?;
        for s in &self.tag_selectors {
            untagged(s).map_err(|e| format!("tag selector extras {:?}: {e}", s.extras))?;
        }
        Ok(())
    }

    /// The rule's count or number of days (0 when missing or not a whole number).
    fn param(&self) -> i64 {
        match self.params.get(&self.template) {
            Some(Value::Number(n)) => n.as_i64().unwrap_or(0),
            Some(Value::String(s)) => s.trim().parse().unwrap_or(0),
            _ => 0,
        }
    }

    fn covers(&self, repository: &str) -> bool {
        !self.disabled && covers(&self.scope_selectors, repository)
    }

    /// Whether the rule selects an artifact with these tags.
    fn selects(&self, tags: &[String]) -> bool {
        if tags.is_empty() {
            return self
                .tag_selectors
                .iter()
                .any(|s| untagged(s).unwrap_or(false));
        }
        tags.iter().any(|t| selects_tag(&self.tag_selectors, t))
    }

    /// What the rule says, for logs.
    fn describe(&self) -> String {
        let what = TEMPLATES
            .iter()
            .find(|(t, _)| *t == self.template)
            .map(|(_, d)| *d)
            .unwrap_or("retain");
        format!(
            "rule {} ({})",
            self.id,
            what.replace('#', &self.param().to_string())
        )
    }
}

/// A tag selector's `extras`: `{"untagged": true}` selects untagged artifacts too.
fn untagged(s: &Selector) -> std::result::Result<bool, String> {
    if s.extras.trim().is_empty() {
        return Ok(false);
    }
    let v: Value = serde_json::from_str(&s.extras).map_err(|e| e.to_string())?;
    let o = v.as_object().ok_or("must be a JSON object")?;
    if let Some(k) = o.keys().find(|k| *k != "untagged") {
        return Err(format!("{k:?} is not supported, only \"untagged\""));
    }
    match o.get("untagged") {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err("\"untagged\" must be true or false".into()),
    }
}

/// What a policy decides for one repository.
#[derive(Debug, Default, PartialEq)]
pub struct Decision {
    /// The repository's artifacts (top-level manifests).
    pub total: usize,
    /// Artifacts kept, with why.
    pub keep: Vec<(Digest, String)>,
    /// Artifacts to delete, with the tags they had.
    pub delete: Vec<(Digest, Vec<String>)>,
}

/// Decide for the repository named `name` within its project, whose manifests are
/// `manifests`, at `now` (seconds since the epoch); `None` if no enabled rule covers it.
pub fn decide(
    policy: &Policy,
    name: &str,
    manifests: &[RetentionManifest],
    now: i64,
    immutable: impl Fn(&str) -> bool,
) -> Option<Decision> {
    let rules: Vec<&RetentionRule> = policy.rules.iter().filter(|r| r.covers(name)).collect();
    if rules.is_empty() {
        return None;
    }
    let present: HashSet<&Digest> = manifests.iter().map(|m| &m.digest).collect();
    let children: HashSet<&Digest> = manifests.iter().flat_map(|m| &m.children).collect();
    // Artifacts: what no manifest lists, and that is not a referrer of one present.
    let artifacts: Vec<&RetentionManifest> = manifests
        .iter()
        .filter(|m| !children.contains(&m.digest))
        .filter(|m| m.subject.as_ref().is_none_or(|s| !present.contains(s)))
        .collect();
    let mut why: HashMap<&Digest, String> = HashMap::new();
    for m in &artifacts {
        if let Some(t) = m.tags.iter().find(|t| immutable(t)) {
            why.insert(&m.digest, format!("tag {t} is immutable"));
        }
    }
    for rule in rules {
        let mut selected: Vec<&RetentionManifest> = artifacts
            .iter()
            .copied()
            .filter(|m| rule.selects(&m.tags))
            .collect();
        let n = rule.param();
        let kept: Vec<&RetentionManifest> = match rule.template.as_str() {
            "latestPushedK" => {
                selected.sort_by(|a, b| {
                    b.pushed_at
                        .cmp(&a.pushed_at)
                        .then_with(|| a.digest.as_str().cmp(b.digest.as_str()))
                });
                selected.truncate(usize::try_from(n).unwrap_or(0));
                selected
            }
            "latestPulledN" => {
                selected.sort_by(|a, b| {
                    b.pulled_at
                        .cmp(&a.pulled_at)
                        .then_with(|| b.pushed_at.cmp(&a.pushed_at))
                        .then_with(|| a.digest.as_str().cmp(b.digest.as_str()))
                });
                selected.truncate(usize::try_from(n).unwrap_or(0));
                selected
            }
            "nDaysSinceLastPush" => {
                let since = now.saturating_sub(n.saturating_mul(86_400));
                selected.retain(|m| m.pushed_at >= since);
                selected
            }
            "nDaysSinceLastPull" => {
                let since = now.saturating_sub(n.saturating_mul(86_400));
                selected.retain(|m| m.pulled_at.is_some_and(|p| p >= since));
                selected
            }
            _ => selected,
        };
        for m in kept {
            why.entry(&m.digest).or_insert_with(|| rule.describe());
        }
    }
    let mut d = Decision {
        total: artifacts.len(),
        ..Decision::default()
    };
    for m in artifacts {
        match why.remove(&m.digest) {
            Some(reason) => d.keep.push((m.digest.clone(), reason)),
            None => d.delete.push((m.digest.clone(), m.tags.clone())),
        }
    }
    Some(d)
}

/// A run's status as the API shows it: a `Running` run not heard of for
/// [`STALE_AFTER`] ran on a node that died.
pub fn shown_status(run: &RetentionRun, now: i64) -> &str {
    let stale = i64::try_from(STALE_AFTER.as_secs()).unwrap_or(i64::MAX);
    if run.status == "Running" && now.saturating_sub(run.updated_at) > stale {
        "Error"
    } else {
        &run.status
    }
}

/// A stored policy, read.
pub fn parse(stored: &StoredRetention) -> Result<Policy> {
    let mut p: Policy = serde_json::from_str(&stored.policy).map_err(|e| {
        RegistryError::Meta(MetaError::Corrupt(format!(
            "retention policy {}: {e}",
            stored.id
        )))
    })?;
    p.id = Some(stored.id);
    Ok(p)
}

/// Why a run did not start.
#[derive(Debug)]
pub enum NotStarted {
    /// No such policy.
    Unknown,
    /// A scheduled tick another node took.
    TickTaken,
}

impl Registry {
    /// Store a checked policy for its project; its id, or `None` if the project has
    /// one already.
    pub async fn create_retention(&self, policy: &Policy) -> Result<Option<i64>> {
        Ok(self
            .meta
            .create_retention(policy.scope.reference, &stored_json(policy), policy.cron())
            .await?)
    }

    pub async fn retention(&self, id: i64) -> Result<Option<(StoredRetention, Policy)>> {
        match self.meta.retention(id).await? {
            Some(s) => {
                let p = parse(&s)?;
                Ok(Some((s, p)))
            }
            None => Ok(None),
        }
    }

    /// The id of project `project_id`'s policy, if it has one.
    pub async fn project_retention_id(&self, project_id: i64) -> Result<Option<i64>> {
        Ok(self.meta.project_retention(project_id).await?.map(|s| s.id))
    }

    pub async fn update_retention(&self, id: i64, policy: &Policy) -> Result<bool> {
        Ok(self
            .meta
            .update_retention(id, &stored_json(policy), policy.cron())
            .await?)
    }

    pub async fn delete_retention(&self, id: i64) -> Result<bool> {
        Ok(self.meta.delete_retention(id).await?)
    }

    /// Per policy, its latest finished real run (for metrics).
    pub async fn retention_outcomes(&self) -> Result<Vec<crate::meta::RetentionOutcome>> {
        Ok(self.meta.retention_outcomes().await?)
    }

    /// Now, by the clock the metadata's times are written with.
    pub async fn clock(&self) -> Result<i64> {
        Ok(self.meta.clock().await?)
    }

    pub async fn scheduled_retentions(&self) -> Result<Vec<StoredRetention>> {
        Ok(self.meta.scheduled_retentions().await?)
    }

    pub async fn retention_runs(
        &self,
        policy_id: i64,
        page: Page,
    ) -> Result<(Vec<RetentionRun>, u64)> {
        Ok(self.meta.retention_runs(policy_id, page).await?)
    }

    pub async fn retention_run(&self, policy_id: i64, id: i64) -> Result<Option<RetentionRun>> {
        Ok(self.meta.retention_run(policy_id, id).await?)
    }

    pub async fn stop_retention_run(&self, policy_id: i64, id: i64) -> Result<bool> {
        Ok(self.meta.retention_run_stop(policy_id, id).await?)
    }

    pub async fn retention_tasks(
        &self,
        run_id: i64,
        page: Page,
    ) -> Result<(Vec<RetentionTask>, u64)> {
        Ok(self.meta.retention_tasks(run_id, page).await?)
    }

    pub async fn retention_task(&self, run_id: i64, id: i64) -> Result<Option<RetentionTask>> {
        Ok(self.meta.retention_task(run_id, id).await?)
    }

    /// Start a run of policy `id` in the background (the API's); the run's id.
    /// [`RegistryError::JobRunning`] while another real run of it is going.
    pub async fn start_retention(
        self: &Arc<Self>,
        id: i64,
        dry_run: bool,
        owner: &str,
    ) -> Result<std::result::Result<i64, NotStarted>> {
        let started = match self
            .begin_retention(id, MANUAL, None, dry_run, owner)
            .await?
        {
            Ok(s) => s,
            Err(n) => return Ok(Err(n)),
        };
        let run_id = started.run;
        let registry = self.clone();
        tokio::spawn(async move {
            match registry.finish_retention(started).await {
                Ok(status) => tracing::info!(run = run_id, status, "retention run finished"),
                Err(e) => tracing::error!(run = run_id, error = %e, "retention run failed"),
            }
        });
        Ok(Ok(run_id))
    }

    /// The run of policy `id` the schedule asks for at `tick`, unless another node took
    /// the tick or another run of it is going; its id and status.
    pub async fn scheduled_retention(
        &self,
        id: i64,
        tick: i64,
        owner: &str,
    ) -> Result<Option<(i64, &'static str)>> {
        let started = match self
            .begin_retention(id, SCHEDULED, Some(tick), false, owner)
            .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(_)) => return Ok(None),
            Err(RegistryError::JobRunning(m)) => {
                tracing::info!(policy = id, "scheduled retention run skipped: {m}");
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let run = started.run;
        Ok(Some((run, self.finish_retention(started).await?)))
    }

    async fn begin_retention(
        &self,
        id: i64,
        kind: &str,
        tick: Option<i64>,
        dry_run: bool,
        owner: &str,
    ) -> Result<std::result::Result<StartedRetention, NotStarted>> {
        let Some((stored, mut policy)) = self.retention(id).await? else {
            return Ok(Err(NotStarted::Unknown));
        };
        // What no longer passes the checks (a pattern a newer globset refuses) stops the
        // run rather than widen or narrow a rule; the policy can still be read, changed
        // and deleted.
        policy.check().map_err(|e| {
            RegistryError::Denied(format!(
                "retention policy {id} no longer passes the checks ({e}); fix it with PUT /api/v2.0/retentions/{id}"
            ))
        })?;
        let claim = if dry_run {
            None
        } else {
            self.check_delete_enabled()?;
            let job = format!("retention {id}");
            match self.claim_job(&job, owner, LEASE).await? {
                Ok(()) => Some(HeldClaim::hold(self.meta.clone(), &job, owner, LEASE)),
                Err(holder) => {
                    return Err(RegistryError::JobRunning(format!(
                        "a run of retention policy {id} is going already ({}, started {} s ago): wait for it to end, or stop it",
                        holder.owner,
                        (holder.now - holder.claimed_at).max(0)
                    )))
                }
            }
        };
        let run = self
            .meta
            .retention_run_start(id, kind, tick, dry_run, owner, KEPT_RUNS)
            .await;
        match run {
            Ok(Some(run)) => Ok(Ok(StartedRetention {
                run,
                dry_run,
                project: stored.project,
                policy,
                claim,
            })),
            other => {
                if let Some(c) = claim {
                    c.release().await;
                }
                other?;
                Ok(Err(NotStarted::TickTaken))
            }
        }
    }

    /// Run a started run through every repository of its project and record how it
    /// ended; its status.
    async fn finish_retention(&self, s: StartedRetention) -> Result<&'static str> {
        let stop = Arc::new(AtomicBool::new(false));
        let alive = {
            let (meta, stop, run) = (self.meta.clone(), stop.clone(), s.run);
            AbortOnDrop(tokio::spawn(async move {
                let mut tick = tokio::time::interval(ALIVE_EVERY);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    match meta.retention_run_alive(run).await {
                        Ok(true) => stop.store(true, Ordering::Relaxed),
                        Ok(false) => {}
                        Err(e) => {
                            tracing::warn!(run, error = %e, "cannot record that a retention run is alive")
                        }
                    }
                }
            }))
        };
        let result = self.retain_project(&s, &stop).await;
        drop(alive);
        let status = match &result {
            Ok(_) if stop.load(Ordering::Relaxed) => "Stopped",
            Ok(true) => "Succeed",
            Ok(false) => "Error",
            Err(e) => {
                tracing::error!(run = s.run, error = %e, "retention run failed");
                "Error"
            }
        };
        if let Err(e) = self.meta.retention_run_end(s.run, status).await {
            tracing::warn!(run = s.run, error = %e, "cannot record the end of a retention run; it shows as failed once it stops answering");
        }
        if let Some(c) = s.claim {
            c.release().await;
        }
        result.map(|_| status)
    }

    /// Every repository of the project, one task each; `false` if a task failed.
    async fn retain_project(&self, s: &StartedRetention, stop: &AtomicBool) -> Result<bool> {
        let prefix = format!("{}/", s.project);
        let mut all_ok = true;
        let mut last: Option<String> = Some(prefix.clone());
        'pages: loop {
            let page = self
                .meta
                .list_repositories(last.as_deref(), 1000, None)
                .await?;
            let Some(tail) = page.last().cloned() else {
                break;
            };
            for name in page {
                if !name.starts_with(&prefix) {
                    break 'pages;
                }
                if stop.load(Ordering::Relaxed) {
                    break 'pages;
                }
                let Ok(repo) = name.parse::<RepoName>() else {
                    continue;
                };
                let started_at = crate::meta::now();
                let mut log = Vec::new();
                let outcome = self.retain_repository(s, &repo, &mut log, stop).await;
                let (status, total, retained) = match outcome {
                    Ok(None) => continue,
                    Ok(Some((total, retained))) => ("Succeed", total, retained),
                    Err(e) => {
                        all_ok = false;
                        log.push(format!("error: {e}"));
                        ("Error", 0, 0)
                    }
                };
                let task = RetentionTask {
                    repository: name.clone(),
                    status: status.into(),
                    total,
                    retained,
                    started_at,
                    ended_at: crate::meta::now(),
                    log: log.join("\n") + "\n",
                    ..RetentionTask::default()
                };
                self.meta.retention_task_add(s.run, &task).await?;
            }
            last = Some(tail);
        }
        Ok(all_ok)
    }

    /// Decide and delete in one repository; (artifacts, kept), `None` if no rule covers
    /// it.
    async fn retain_repository(
        &self,
        s: &StartedRetention,
        repo: &RepoName,
        log: &mut Vec<String>,
        stop: &AtomicBool,
    ) -> Result<Option<(u64, u64)>> {
        let name = repo
            .as_str()
            .strip_prefix(&format!("{}/", s.project))
            .unwrap_or(repo.as_str());
        let manifests = self.meta.retention_manifests(repo).await?;
        let guard: Guard = self.immutable_guard(repo).await?;
        let now = self.meta.clock().await?;
        let Some(d) = decide(&s.policy, name, &manifests, now, |t| guard.protects(t)) else {
            return Ok(None);
        };
        let by_digest: HashMap<&Digest, &RetentionManifest> =
            manifests.iter().map(|m| (&m.digest, m)).collect();
        let tags_of = |d: &Digest| match by_digest.get(d) {
            Some(m) if !m.tags.is_empty() => format!(" (tags {})", m.tags.join(", ")),
            _ => " (untagged)".to_string(),
        };
        for (digest, why) in &d.keep {
            log.push(format!("kept {digest}{}: {why}", tags_of(digest)));
        }
        let mut kept = d.keep.len() as u64;
        let mut gone: Vec<Digest> = Vec::new();
        for (i, (digest, tags)) in d.delete.iter().enumerate() {
            let shown = tags_of(digest);
            if s.dry_run {
                log.push(format!("would delete {digest}{shown}"));
                continue;
            }
            if stop.load(Ordering::Relaxed) {
                kept += (d.delete.len() - i) as u64;
                log.push(format!(
                    "stopped on request: the {} artifacts not looked at yet were kept",
                    d.delete.len() - i
                ));
                break;
            }
            // Rules added since the run looked protect too.
            if !tags.is_empty() {
                let guard = self.immutable_guard(repo).await?;
                if let Some(t) = tags.iter().find(|t| guard.protects(t)) {
                    kept += 1;
                    log.push(format!("kept {digest}{shown}: tag {t} is immutable"));
                    continue;
                }
            }
            if self.retention_delete(repo, digest, tags).await? {
                log.push(format!("deleted {digest}{shown}"));
                gone.push(digest.clone());
            } else {
                kept += 1;
                log.push(format!(
                    "kept {digest}{shown}: it was re-tagged, tagged or referenced while the run looked"
                ));
            }
        }
        if !gone.is_empty() {
            let n = self.delete_dependents(repo, &manifests, &gone).await?;
            if n > 0 {
                log.push(format!(
                    "deleted {n} manifests that only the deleted artifacts listed or referred to (index children, signatures, SBOMs)"
                ));
            }
        }
        log.push(format!(
            "{} artifacts, {} kept, {} {}",
            d.total,
            kept,
            if s.dry_run {
                d.delete.len() as u64
            } else {
                gone.len() as u64
            },
            if s.dry_run {
                "would be deleted (dry run)"
            } else {
                "deleted"
            }
        ));
        Ok(Some((d.total as u64, kept)))
    }

    /// Delete one artifact if it is still as the run saw it: tagged with exactly `tags`
    /// (or untagged), and listed by no manifest of the repository.
    async fn retention_delete(&self, repo: &RepoName, d: &Digest, tags: &[String]) -> Result<bool> {
        if tags.is_empty() {
            return Ok(self.meta.gc_delete_untagged(repo, d).await?);
        }
        let tags: Vec<Tag> = tags.iter().filter_map(|t| t.parse().ok()).collect();
        let mut targets = vec![super::events::Target {
            digest: d.to_string(),
            repository: repo.to_string(),
            ..Default::default()
        }];
        targets.extend(tags.iter().map(|t| super::events::Target {
            repository: repo.to_string(),
            tag: t.to_string(),
            ..Default::default()
        }));
        let events = if self.events_enabled() {
            self.delete_event_rows(&targets)
        } else {
            Vec::new()
        };
        self.pulls_first(&events).await;
        match self
            .meta
            .delete_unreferenced_manifest(repo, d, &tags, &events)
            .await?
        {
            ManifestDeletion::Deleted => {
                self.wake(&events);
                Ok(true)
            }
            ManifestDeletion::NotFound
            | ManifestDeletion::TagsChanged(_)
            | ManifestDeletion::Referenced => Ok(false),
        }
    }

    /// After `gone` were deleted: delete the manifests only they reached (children,
    /// referrers, theirs in turn) that nothing else reaches now; how many went.
    async fn delete_dependents(
        &self,
        repo: &RepoName,
        before: &[RetentionManifest],
        gone: &[Digest],
    ) -> Result<u64> {
        // What the deleted artifacts reached, as the run saw the repository.
        let by_digest: HashMap<&Digest, &RetentionManifest> =
            before.iter().map(|m| (&m.digest, m)).collect();
        let mut referrers: HashMap<&Digest, Vec<&Digest>> = HashMap::new();
        for m in before {
            if let Some(s) = &m.subject {
                referrers.entry(s).or_default().push(&m.digest);
            }
        }
        let mut reached: HashSet<Digest> = HashSet::new();
        let mut frontier: Vec<Digest> = gone.to_vec();
        while let Some(d) = frontier.pop() {
            let children = by_digest
                .get(&d)
                .into_iter()
                .flat_map(|p| p.children.iter());
            let refs = referrers.get(&d).into_iter().flatten().copied();
            for next in children.chain(refs) {
                if reached.insert(next.clone()) {
                    frontier.push(next.clone());
                }
            }
        }
        let mut deleted = 0;
        // Parents before children: a round deletes what nothing references any more.
        for _ in 0..8 {
            let now = self.meta.retention_manifests(repo).await?;
            let live: HashSet<Digest> = reachable_from_live(&now, &reached);
            let mut progress = false;
            for m in now.iter().filter(|m| reached.contains(&m.digest)) {
                if live.contains(&m.digest) || !m.tags.is_empty() {
                    continue;
                }
                if self.meta.gc_delete_untagged(repo, &m.digest).await? {
                    deleted += 1;
                    progress = true;
                }
            }
            if !progress {
                break;
            }
        }
        Ok(deleted)
    }
}

/// The manifests of `now` reached from one outside `dependents` (the artifacts kept,
/// and whatever was pushed meanwhile): through children and referrers.
fn reachable_from_live(now: &[RetentionManifest], dependents: &HashSet<Digest>) -> HashSet<Digest> {
    let mut seen: HashSet<Digest> = now
        .iter()
        .filter(|m| !dependents.contains(&m.digest) || !m.tags.is_empty())
        .map(|m| m.digest.clone())
        .collect();
    loop {
        let before = seen.len();
        for m in now {
            if seen.contains(&m.digest) {
                for c in &m.children {
                    seen.insert(c.clone());
                }
            } else if m.subject.as_ref().is_some_and(|s| seen.contains(s)) {
                seen.insert(m.digest.clone());
            }
        }
        if seen.len() == before {
            return seen;
        }
    }
}

/// The JSON a policy is stored as.
fn stored_json(p: &Policy) -> String {
    serde_json::to_string(p).unwrap_or_else(|_| "{}".into())
}

struct StartedRetention {
    run: i64,
    dry_run: bool,
    project: String,
    policy: Policy,
    claim: Option<HeldClaim>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> Digest {
        Digest::of(oci::Algorithm::Sha256, &[n])
    }

    fn m(n: u8, tags: &[&str], pushed: i64, pulled: Option<i64>) -> RetentionManifest {
        RetentionManifest {
            digest: d(n),
            subject: None,
            pushed_at: pushed,
            pulled_at: pulled,
            tags: tags.iter().map(|t| t.to_string()).collect(),
            children: Vec::new(),
        }
    }

    fn sel(decoration: &str, pattern: &str, extras: &str) -> Selector {
        Selector {
            kind: "doublestar".into(),
            decoration: decoration.into(),
            pattern: pattern.into(),
            extras: extras.into(),
        }
    }

    fn rule(template: &str, n: i64, tags: Selector, repos: Selector) -> RetentionRule {
        RetentionRule {
            id: 0,
            priority: 0,
            disabled: false,
            action: "retain".into(),
            template: template.into(),
            params: if template == "always" {
                BTreeMap::new()
            } else {
                BTreeMap::from([(template.to_string(), Value::from(n))])
            },
            tag_selectors: vec![tags],
            scope_selectors: BTreeMap::from([("repository".to_string(), vec![repos])]),
        }
    }

    fn policy(rules: Vec<RetentionRule>) -> Policy {
        let mut p = Policy {
            id: None,
            algorithm: "or".into(),
            rules,
            trigger: Trigger::default(),
            scope: Scope {
                level: "project".into(),
                reference: 1,
            },
        };
        p.check().expect("valid");
        p
    }

    fn deleted(dec: &Decision) -> Vec<Digest> {
        let mut v: Vec<Digest> = dec.delete.iter().map(|(d, _)| d.clone()).collect();
        v.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        v
    }

    fn sorted(mut v: Vec<Digest>) -> Vec<Digest> {
        v.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        v
    }

    const DAY: i64 = 86_400;

    #[test]
    fn each_template_keeps_what_it_says() {
        let all = sel("matches", "**", r#"{"untagged":true}"#);
        let repos = sel("repoMatches", "**", "");
        let ms = vec![
            m(1, &["v1"], 10 * DAY, None),
            m(2, &["v2"], 20 * DAY, Some(21 * DAY)),
            m(3, &["v3"], 30 * DAY, Some(25 * DAY)),
            m(4, &[], 40 * DAY, None),
        ];
        let now = 41 * DAY;
        let keep_latest = policy(vec![rule("latestPushedK", 2, all.clone(), repos.clone())]);
        let dec = decide(&keep_latest, "app", &ms, now, |_| false).expect("covered");
        assert_eq!(dec.total, 4);
        assert_eq!(deleted(&dec), sorted(vec![d(1), d(2)]));

        let pulled = policy(vec![rule("latestPulledN", 1, all.clone(), repos.clone())]);
        let dec = decide(&pulled, "app", &ms, now, |_| false).expect("covered");
        assert_eq!(deleted(&dec), sorted(vec![d(1), d(2), d(4)]));

        let pushed_days = policy(vec![rule(
            "nDaysSinceLastPush",
            15,
            all.clone(),
            repos.clone(),
        )]);
        let dec = decide(&pushed_days, "app", &ms, now, |_| false).expect("covered");
        assert_eq!(deleted(&dec), sorted(vec![d(1), d(2)]));

        let pulled_days = policy(vec![rule(
            "nDaysSinceLastPull",
            18,
            all.clone(),
            repos.clone(),
        )]);
        let dec = decide(&pulled_days, "app", &ms, now, |_| false).expect("covered");
        assert_eq!(
            deleted(&dec),
            sorted(vec![d(1), d(2), d(4)]),
            "never pulled is not kept"
        );

        let always = policy(vec![rule("always", 0, all, repos)]);
        let dec = decide(&always, "app", &ms, now, |_| false).expect("covered");
        assert!(dec.delete.is_empty());
        assert_eq!(dec.keep.len(), 4);
    }

    #[test]
    fn selectors_untagged_union_and_immutability() {
        let repos = sel("repoMatches", "**", "");
        let ms = vec![
            m(1, &["v1"], 1, None),
            m(2, &["latest", "v2"], 2, None),
            m(3, &["dev-1"], 3, None),
            m(4, &[], 4, None),
        ];
        // Tags matching v*, untagged not selected: only v-tagged ones compete.
        let v_only = policy(vec![rule(
            "latestPushedK",
            1,
            sel("matches", "v*", ""),
            repos.clone(),
        )]);
        let dec = decide(&v_only, "app", &ms, 10, |_| false).expect("covered");
        assert_eq!(deleted(&dec), sorted(vec![d(1), d(3), d(4)]));
        // Union with "always keep dev-*".
        let union = policy(vec![
            rule("latestPushedK", 1, sel("matches", "v*", ""), repos.clone()),
            rule("always", 0, sel("matches", "dev-*", ""), repos.clone()),
        ]);
        let dec = decide(&union, "app", &ms, 10, |_| false).expect("covered");
        assert_eq!(deleted(&dec), sorted(vec![d(1), d(4)]));
        // Excludes: everything but dev-*, untagged included.
        let except = policy(vec![rule(
            "always",
            0,
            sel("excludes", "dev-*", r#"{"untagged": true}"#),
            repos.clone(),
        )]);
        let dec = decide(&except, "app", &ms, 10, |_| false).expect("covered");
        assert_eq!(deleted(&dec), vec![d(3)]);
        // An immutable tag keeps its artifact whatever the rules say.
        let dec = decide(&v_only, "app", &ms, 10, |t| t == "v1").expect("covered");
        assert_eq!(deleted(&dec), sorted(vec![d(3), d(4)]));
        assert!(dec
            .keep
            .iter()
            .any(|(k, why)| *k == d(1) && why.contains("immutable")));
    }

    #[test]
    fn repositories_no_rule_covers_are_left_alone() {
        let p = policy(vec![
            rule(
                "always",
                0,
                sel("matches", "**", ""),
                sel("repoMatches", "team/*", ""),
            ),
            rule(
                "always",
                0,
                sel("matches", "**", ""),
                sel("repoExcludes", "**", ""),
            ),
        ]);
        let ms = vec![m(1, &[], 1, None)];
        assert!(decide(&p, "app", &ms, 10, |_| false).is_none());
        assert!(decide(&p, "team/app/web", &ms, 10, |_| false).is_none());
        let dec = decide(&p, "team/app", &ms, 10, |_| false).expect("covered");
        assert_eq!(deleted(&dec), vec![d(1)]);
        let mut off = p.clone();
        off.rules[0].disabled = true;
        assert!(decide(&off, "team/app", &ms, 10, |_| false).is_none());
    }

    #[test]
    fn children_and_referrers_are_not_artifacts_of_their_own() {
        let mut index = m(1, &["v1"], 5, None);
        index.children = vec![d(2), d(3)];
        let child_a = m(2, &[], 1, None);
        let child_b = m(3, &[], 1, None);
        let mut signature = m(4, &[], 6, None);
        signature.subject = Some(d(1));
        let mut orphan = m(5, &[], 7, None);
        orphan.subject = Some(d(9));
        let ms = vec![index, child_a, child_b, signature, orphan];
        let p = policy(vec![rule(
            "latestPushedK",
            1,
            sel("matches", "**", r#"{"untagged":true}"#),
            sel("repoMatches", "**", ""),
        )]);
        let dec = decide(&p, "app", &ms, 10, |_| false).expect("covered");
        // The index and the referrer whose subject is missing are the artifacts.
        assert_eq!(dec.total, 2);
        assert_eq!(deleted(&dec), vec![d(1)]);
    }

    #[test]
    fn what_a_policy_may_not_say() {
        let ok = || {
            policy(vec![rule(
                "latestPushedK",
                3,
                sel("matches", "**", ""),
                sel("repoMatches", "**", ""),
            )])
        };
        let refused = |f: &dyn Fn(&mut Policy), says: &str| {
            let mut p = ok();
            f(&mut p);
            let e = p.check().expect_err("refused");
            assert!(e.contains(says), "{e:?} should say {says:?}");
        };
        refused(&|p| p.algorithm = "and".into(), "algorithm");
        refused(&|p| p.scope.level = "system".into(), "scope level");
        refused(&|p| p.rules[0].template = "latestK".into(), "template");
        refused(&|p| p.rules[0].action = "delete".into(), "action");
        refused(&|p| p.rules[0].params.clear(), "whole number");
        refused(
            &|p| {
                p.rules[0]
                    .params
                    .insert("latestPushedK".into(), Value::from(-1));
            },
            "whole number",
        );
        refused(
            &|p| {
                p.rules[0].params.insert("other".into(), Value::from(1));
            },
            "does not belong",
        );
        refused(
            &|p| p.rules[0].tag_selectors[0].extras = "{\"x\":1}".into(),
            "extras",
        );
        refused(&|p| p.rules[0].tag_selectors.clear(), "tag selector");
        refused(
            &|p| p.rules[0].scope_selectors.clear(),
            "repository selector",
        );
        refused(
            &|p| p.trigger.settings.cron = "0 3 * * *".into(),
            "six fields",
        );
        refused(&|p| p.trigger.kind = "Event".into(), "trigger kind");
        refused(
            &|p| {
                let r = p.rules[0].clone();
                p.rules = vec![r; MAX_RULES + 1];
            },
            "at most",
        );
        // A numeric string is taken, as Harbor's portal may send one; ids are numbered.
        let mut p = ok();
        p.rules[0]
            .params
            .insert("latestPushedK".into(), Value::from("5"));
        p.rules.push(p.rules[0].clone());
        p.check().expect("valid");
        assert_eq!(
            (p.rules[0].id, p.rules[1].id, p.rules[0].param()),
            (1, 2, 5)
        );
    }

    /// A registry on SQLite and memory storage with project `p` (id 1).
    async fn registry() -> (tempfile::TempDir, Arc<Registry>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let meta = crate::meta::sqlite::SqliteMeta::open(&dir.path().join("berth.db"))
            .await
            .expect("meta");
        let settings = super::super::Settings {
            delete_enabled: true,
            ..super::super::Settings::default()
        };
        let registry = Arc::new(Registry::new(
            Arc::new(crate::storage::memory::MemoryBlobStore::new()),
            Arc::new(meta),
            settings,
        ));
        registry
            .meta
            .create_project("p", false, None)
            .await
            .expect("project")
            .expect("free");
        (dir, registry)
    }

    async fn push_image(r: &Registry, repo: &RepoName, salt: &str, tag: Option<&str>) -> Digest {
        let config = format!("{{\"salt\":\"{salt}\"}}");
        let digest = |b: &str| Digest::of(oci::Algorithm::Sha256, b.as_bytes());
        let body = |b: String| -> crate::storage::ByteStream {
            Box::pin(futures_util::stream::once(async move {
                Ok(bytes::Bytes::from(b))
            }))
        };
        r.put_blob(repo, &digest(&config), body(config.clone()))
            .await
            .expect("config");
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": oci::media::OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(&config).to_string(), "size": config.len()},
            "layers": [],
        })
        .to_string();
        let d = digest(&manifest);
        let reference: oci::Reference = match tag {
            Some(t) => t.parse().expect("tag"),
            None => oci::Reference::Digest(d.clone()),
        };
        r.put_manifest(
            repo,
            &reference,
            Some(oci::media::OCI_MANIFEST),
            manifest.into_bytes(),
            Vec::new(),
        )
        .await
        .expect("manifest");
        d
    }

    fn keep_nothing() -> Policy {
        let mut p = policy(vec![rule(
            "latestPushedK",
            1,
            sel("matches", "nothing-matches-this", ""),
            sel("repoMatches", "**", ""),
        )]);
        p.scope.reference = 1;
        p
    }

    /// Of two real runs of one policy, the second is refused while the first holds the
    /// policy's claim; dry runs are not held up.
    #[tokio::test]
    async fn one_real_run_of_a_policy_at_a_time() {
        let (_dir, r) = registry().await;
        let id = r
            .create_retention(&keep_nothing())
            .await
            .expect("create")
            .expect("first");
        let first = match r.begin_retention(id, MANUAL, None, false, "a").await {
            Ok(Ok(s)) => s,
            _ => panic!("the first run starts"),
        };
        match r.begin_retention(id, MANUAL, None, false, "b").await {
            Err(RegistryError::JobRunning(m)) => assert!(m.contains("going already"), "{m}"),
            Ok(_) => panic!("a second real run started"),
            Err(e) => panic!("{e}"),
        }
        let dry = match r.begin_retention(id, MANUAL, None, true, "c").await {
            Ok(Ok(s)) => s,
            _ => panic!("a dry run starts"),
        };
        assert_eq!(r.finish_retention(dry).await.expect("dry"), "Succeed");
        assert_eq!(r.finish_retention(first).await.expect("first"), "Succeed");
        let again = match r.begin_retention(id, MANUAL, None, false, "b").await {
            Ok(Ok(s)) => s,
            _ => panic!("free again once the first ended"),
        };
        r.finish_retention(again).await.expect("again");
        // A scheduled tick runs once, whoever asks for it.
        assert!(r
            .scheduled_retention(id, 100, "a")
            .await
            .expect("tick")
            .is_some());
        assert!(r
            .scheduled_retention(id, 100, "b")
            .await
            .expect("tick")
            .is_none());
    }

    /// An artifact re-tagged, or tagged, after the run looked is kept.
    #[tokio::test]
    async fn what_changed_since_the_run_looked_is_kept() {
        let (_dir, r) = registry().await;
        let repo: RepoName = "p/app".parse().expect("repo");
        let tagged = push_image(&r, &repo, "tagged", Some("v1")).await;
        let loose = push_image(&r, &repo, "loose", None).await;
        // The run saw `tagged` with v1 alone and `loose` untagged; both got a tag since.
        r.add_tag(&repo, &tagged, &"v2".parse().expect("tag"))
            .await
            .expect("tag");
        r.add_tag(&repo, &loose, &"now".parse().expect("tag"))
            .await
            .expect("tag");
        assert!(!r
            .retention_delete(&repo, &tagged, &["v1".into()])
            .await
            .expect("delete"));
        assert!(!r
            .retention_delete(&repo, &loose, &[])
            .await
            .expect("delete"));
        let left = r.meta.retention_manifests(&repo).await.expect("manifests");
        assert_eq!(left.len(), 2, "nothing deleted");
        // Listed by an index pushed since the run looked: kept too.
        let size = r
            .meta
            .get_manifest(&repo, &oci::Reference::Digest(tagged.clone()))
            .await
            .expect("get")
            .expect("there")
            .content
            .len();
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": oci::media::OCI_INDEX,
            "manifests": [{"mediaType": oci::media::OCI_MANIFEST, "digest": tagged.to_string(), "size": size}],
        })
        .to_string();
        let index_digest = Digest::of(oci::Algorithm::Sha256, index.as_bytes());
        r.put_manifest(
            &repo,
            &oci::Reference::Digest(index_digest.clone()),
            Some(oci::media::OCI_INDEX),
            index.into_bytes(),
            Vec::new(),
        )
        .await
        .expect("index");
        assert!(!r
            .retention_delete(&repo, &tagged, &["v1".into(), "v2".into()])
            .await
            .expect("delete"));
        assert!(r
            .meta
            .gc_delete_untagged(&repo, &index_digest)
            .await
            .expect("index gone"));
        // As seen now, they go.
        assert!(r
            .retention_delete(&repo, &tagged, &["v1".into(), "v2".into()])
            .await
            .expect("delete"));
        // A whole run: keep-nothing deletes what is left, and records it; neighbouring
        // projects' repositories (before and after "p/" in byte order) are not looked at.
        let mut neighbours: Vec<(RepoName, Digest)> = Vec::new();
        for name in ["p-x/app", "p0/app", "pa/app", "o/app"] {
            let n: RepoName = name.parse().expect("repo");
            let d = push_image(&r, &n, name, None).await;
            neighbours.push((n, d));
        }
        let id = r
            .create_retention(&keep_nothing())
            .await
            .expect("create")
            .expect("first");
        let Ok(Ok(run)) = r.begin_retention(id, MANUAL, None, false, "t").await else {
            panic!("starts");
        };
        let run_id = run.run;
        assert_eq!(r.finish_retention(run).await.expect("run"), "Succeed");
        assert!(r
            .meta
            .retention_manifests(&repo)
            .await
            .expect("manifests")
            .is_empty());
        let (tasks, _) = r.retention_tasks(run_id, Page::all()).await.expect("tasks");
        assert_eq!((tasks.len(), tasks[0].total, tasks[0].retained), (1, 1, 0));
        let log = r
            .retention_task(run_id, tasks[0].id)
            .await
            .expect("log")
            .expect("task")
            .log;
        assert!(
            log.contains(&format!("deleted {loose} (tags now)")),
            "{log}"
        );
        for (n, d) in neighbours {
            let left = r.meta.retention_manifests(&n).await.expect("manifests");
            assert_eq!(left.len(), 1, "{n} was touched");
            assert_eq!(left[0].digest, d);
        }
    }

    /// A stored policy that no longer passes the checks can be read, changed and
    /// deleted, but does not run.
    #[tokio::test]
    async fn a_policy_that_no_longer_passes_its_checks_does_not_run() {
        let (_dir, r) = registry().await;
        let mut broken = serde_json::to_value(keep_nothing()).expect("json");
        broken["rules"][0]["tag_selectors"][0]["pattern"] = Value::from("v[1");
        let id = r
            .meta
            .create_retention(1, &broken.to_string(), "")
            .await
            .expect("store")
            .expect("first");
        assert!(r.retention(id).await.expect("read").is_some());
        match r.begin_retention(id, MANUAL, None, false, "t").await {
            Err(RegistryError::Denied(m)) => assert!(m.contains("no longer passes"), "{m}"),
            Ok(_) => panic!("a broken policy ran"),
            Err(e) => panic!("{e}"),
        }
        assert!(r.update_retention(id, &keep_nothing()).await.expect("fix"));
        let Ok(Ok(run)) = r.begin_retention(id, MANUAL, None, true, "t").await else {
            panic!("runs once fixed");
        };
        r.finish_retention(run).await.expect("run");
        assert!(r.delete_retention(id).await.expect("delete"));
    }
}
