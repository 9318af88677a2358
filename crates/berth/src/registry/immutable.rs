//! Immutable tag rules (Harbor's tag immutability). Per project, a tag whose repository
//! and name match an enabled rule may be pushed, and pushed again at the same manifest,
//! but never moved to another manifest or deleted; the attempt is refused with a
//! message naming the rule, and nothing is written.
//!
//! The rules are kept in the metadata database (`meta::ImmutableRules`) as the API took
//! them and matched here, with Harbor's doublestar patterns: the repository pattern
//! against the repository's name within its project (`app/web` of `acme/app/web`), the
//! tag pattern against the tag. Matching decides which tags a write must guard; the
//! write itself enforces it ([`crate::meta::Manifests::put_manifest_guarded`]), so of
//! two pushes racing for one immutable tag exactly one wins. A tag name a rule matches
//! is never deleted, whatever it points at; deleting a manifest re-checks its tags in
//! the delete's own transaction.

use super::{Registry, RegistryError, Result};
use crate::meta::{NewRule, StoredRule};
use globset::{GlobBuilder, GlobMatcher};
use oci::{RepoName, Tag};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The most rules a project may have (Harbor's limit).
pub const MAX_RULES: u32 = 15;

/// A selector as Harbor writes it: `{"kind": "doublestar", "decoration": "matches",
/// "pattern": "v*"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Selector {
    pub kind: String,
    pub decoration: String,
    pub pattern: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub extras: String,
}

/// What a rule selects: tags (all selectors hold), within repositories (all hold).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Selectors {
    pub tag_selectors: Vec<Selector>,
    pub scope_selectors: BTreeMap<String, Vec<Selector>>,
}

/// `pattern` as Harbor's doublestar matches it: `*` and `?` stop at `/`, `**` crosses
/// it, `{a,b}` and `[...]` as in a shell.
fn glob(pattern: &str) -> std::result::Result<GlobMatcher, String> {
    GlobBuilder::new(pattern)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
        .map(|g| g.compile_matcher())
        .map_err(|e| format!("pattern {pattern:?} is not a valid doublestar pattern: {e}"))
}

impl Selector {
    pub(super) fn check(
        &self,
        what: &str,
        matches: &str,
        excludes: &str,
    ) -> std::result::Result<(), String> {
        if self.kind != "doublestar" {
            return Err(format!(
                "{what} selector kind {:?} is not supported: use \"doublestar\"",
                self.kind
            ));
        }
        if self.decoration != matches && self.decoration != excludes {
            return Err(format!(
                "{what} selector decoration {:?} is not one of {matches:?} and {excludes:?}",
                self.decoration
            ));
        }
        if self.pattern.is_empty() {
            return Err(format!("{what} selector has an empty pattern"));
        }
        glob(&self.pattern).map(|_| ())
    }

    /// Whether `candidate` is selected. A pattern that no longer compiles selects
    /// everything: a rule that cannot be read protects rather than lets go.
    pub(super) fn selects(&self, candidate: &str, excludes: &str) -> bool {
        let hit = match glob(&self.pattern) {
            Ok(g) => g.is_match(candidate),
            Err(e) => {
                tracing::error!(error = %e, "an immutable tag rule's stored pattern does not compile; treating it as matching");
                return true;
            }
        };
        hit != (self.decoration == excludes)
    }
}

impl Selectors {
    /// What the API accepts: at least one tag selector and one repository selector,
    /// each a valid doublestar pattern with Harbor's decorations.
    pub fn check(&self) -> std::result::Result<(), String> {
        check_selectors(&self.tag_selectors, &self.scope_selectors)
    }

    /// Whether the rule selects `tag` of the repository named `repository` within its
    /// project.
    pub fn selects(&self, repository: &str, tag: &str) -> bool {
        covers(&self.scope_selectors, repository) && selects_tag(&self.tag_selectors, tag)
    }
}

/// Harbor's checks of a rule's selectors (immutable tag rules and retention rules
/// share them): at least one tag selector and one repository selector, each a valid
/// doublestar pattern with Harbor's decorations.
pub(super) fn check_selectors(
    tags: &[Selector],
    scopes: &BTreeMap<String, Vec<Selector>>,
) -> std::result::Result<(), String> {
    if tags.is_empty() {
        return Err("a rule needs a tag selector (tag_selectors)".into());
    }
    for s in tags {
        s.check("tag", "matches", "excludes")?;
    }
    if let Some(other) = scopes.keys().find(|k| *k != "repository") {
        return Err(format!(
            "scope selector {other:?} is not supported: only \"repository\""
        ));
    }
    let repos = scopes
        .get("repository")
        .filter(|r| !r.is_empty())
        .ok_or("a rule needs a repository selector (scope_selectors.repository)")?;
    for s in repos {
        s.check("repository", "repoMatches", "repoExcludes")?;
    }
    Ok(())
}

/// Whether every repository selector holds for `repository` (its name within its
/// project).
pub(super) fn covers(scopes: &BTreeMap<String, Vec<Selector>>, repository: &str) -> bool {
    scopes
        .get("repository")
        .into_iter()
        .flatten()
        .all(|s| s.selects(repository, "repoExcludes"))
}

/// Whether every tag selector holds for `tag`.
pub(super) fn selects_tag(tags: &[Selector], tag: &str) -> bool {
    tags.iter().all(|s| s.selects(tag, "excludes"))
}

/// A rule as the API shows it (Harbor's `ImmutableRule`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub id: i64,
    pub priority: i64,
    pub disabled: bool,
    pub selectors: Selectors,
}

impl Rule {
    fn from_stored(r: &StoredRule) -> Result<Rule> {
        let selectors = serde_json::from_str(&r.selectors).map_err(|e| {
            RegistryError::Meta(crate::meta::MetaError::Corrupt(format!(
                "immutable tag rule {}: {e}",
                r.id
            )))
        })?;
        Ok(Rule {
            id: r.id,
            priority: r.priority,
            disabled: r.disabled,
            selectors,
        })
    }
}

/// The enabled rules that apply to one repository.
pub struct Guard {
    project: String,
    /// The repository's name within its project.
    name: String,
    rules: Vec<Rule>,
}

impl Guard {
    /// The rule protecting `tag`, if any.
    pub(super) fn rule_for(&self, tag: &Tag) -> Option<i64> {
        self.rules
            .iter()
            .find(|r| r.selectors.selects(&self.name, tag.as_str()))
            .map(|r| r.id)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Whether a tag of this name is immutable (Harbor's `immutable` of a tag).
    pub fn protects(&self, tag: &str) -> bool {
        self.rules
            .iter()
            .any(|r| r.selectors.selects(&self.name, tag))
    }

    /// The refusal of changing `tag` (`doing`: "moved to another manifest", "deleted").
    pub(super) fn denied(&self, repo: &RepoName, tag: &Tag, doing: &str) -> RegistryError {
        let rule = self
            .rule_for(tag)
            .map(|id| format!("rule {id}"))
            .unwrap_or_else(|| "a rule".into());
        RegistryError::Denied(format!(
            "tag {tag} of {repo} is immutable ({rule} of project {}'s immutable tag rules) and cannot be {doing}: push under a new tag, or ask a project admin or maintainer to change the rule",
            self.project
        ))
    }
}

impl Registry {
    /// The enabled immutable tag rules of `repo`'s project (none outside projects).
    pub async fn immutable_guard(&self, repo: &RepoName) -> Result<Guard> {
        let Some((project, name)) = repo.as_str().split_once('/') else {
            return Ok(Guard {
                project: String::new(),
                name: repo.to_string(),
                rules: Vec::new(),
            });
        };
        let rules = self
            .meta
            .active_immutable_rules(project)
            .await?
            .iter()
            .map(Rule::from_stored)
            .collect::<Result<Vec<_>>>()?;
        Ok(Guard {
            project: project.to_string(),
            name: name.to_string(),
            rules,
        })
    }

    /// A project's rules, by id.
    pub async fn immutable_rules(&self, project_id: i64) -> Result<Vec<Rule>> {
        self.meta
            .immutable_rules(project_id)
            .await?
            .iter()
            .map(Rule::from_stored)
            .collect()
    }

    /// Add a rule to a project; its id, or why it was refused (an invalid selector, or
    /// the project has [`MAX_RULES`] already).
    pub async fn add_immutable_rule(
        &self,
        project_id: i64,
        priority: i64,
        disabled: bool,
        selectors: &Selectors,
    ) -> Result<std::result::Result<i64, RuleRefused>> {
        if let Err(e) = selectors.check() {
            return Ok(Err(RuleRefused::Invalid(e)));
        }
        let rule = stored(priority, disabled, selectors);
        Ok(
            match self
                .meta
                .add_immutable_rule(project_id, &rule, MAX_RULES)
                .await?
            {
                Some(id) => Ok(id),
                None => Err(RuleRefused::TooMany),
            },
        )
    }

    /// Replace rule `id` of a project; `Ok(Ok(false))` if there is none.
    pub async fn update_immutable_rule(
        &self,
        project_id: i64,
        id: i64,
        priority: i64,
        disabled: bool,
        selectors: &Selectors,
    ) -> Result<std::result::Result<bool, RuleRefused>> {
        if let Err(e) = selectors.check() {
            return Ok(Err(RuleRefused::Invalid(e)));
        }
        let rule = stored(priority, disabled, selectors);
        Ok(Ok(self
            .meta
            .update_immutable_rule(project_id, id, &rule)
            .await?))
    }

    /// Delete rule `id` of a project; `false` if there is none.
    pub async fn delete_immutable_rule(&self, project_id: i64, id: i64) -> Result<bool> {
        Ok(self.meta.delete_immutable_rule(project_id, id).await?)
    }
}

/// Why a rule was not stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleRefused {
    Invalid(String),
    TooMany,
}

fn stored(priority: i64, disabled: bool, selectors: &Selectors) -> NewRule {
    NewRule {
        priority,
        disabled,
        selectors: serde_json::to_string(selectors).unwrap_or_else(|_| "{}".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(repo: (&str, &str), tag: (&str, &str)) -> Selectors {
        let sel = |(decoration, pattern): (&str, &str)| Selector {
            kind: "doublestar".into(),
            decoration: decoration.into(),
            pattern: pattern.into(),
            extras: String::new(),
        };
        Selectors {
            tag_selectors: vec![sel(tag)],
            scope_selectors: BTreeMap::from([("repository".to_string(), vec![sel(repo)])]),
        }
    }

    #[test]
    fn doublestar_patterns_as_harbor_matches_them() {
        let r = rule(("repoMatches", "**"), ("matches", "v*"));
        assert!(r.check().is_ok());
        assert!(r.selects("app", "v1.0"));
        assert!(r.selects("team/app", "v2"));
        assert!(!r.selects("app", "latest"));
        // `*` stops at `/`, `**` does not.
        let one_level = rule(("repoMatches", "team/*"), ("matches", "**"));
        assert!(one_level.selects("team/app", "x"));
        assert!(!one_level.selects("team/app/web", "x"));
        assert!(!one_level.selects("app", "x"));
        // Alternatives, and exclusions.
        let alt = rule(("repoExcludes", "tmp-*"), ("matches", "{latest,stable}"));
        assert!(alt.selects("app", "latest") && alt.selects("app", "stable"));
        assert!(!alt.selects("app", "v1"));
        assert!(!alt.selects("tmp-build", "latest"));
        let except = rule(("repoMatches", "**"), ("excludes", "dev-*"));
        assert!(except.selects("app", "v1"));
        assert!(!except.selects("app", "dev-42"));
    }

    #[test]
    fn what_the_api_refuses() {
        let mut r = rule(("repoMatches", "**"), ("matches", "v*"));
        r.tag_selectors[0].kind = "regex".into();
        assert!(r.check().expect_err("refused").contains("doublestar"));
        let r = rule(("repoMatches", "**"), ("sometimes", "v*"));
        assert!(r.check().expect_err("refused").contains("decoration"));
        let r = rule(("matches", "**"), ("matches", "v*"));
        assert!(r.check().expect_err("refused").contains("repoMatches"));
        let r = rule(("repoMatches", "**"), ("matches", ""));
        assert!(r.check().expect_err("refused").contains("empty"));
        let r = rule(("repoMatches", "**"), ("matches", "v[1"));
        assert!(r.check().expect_err("refused").contains("not a valid"));
        let mut r = rule(("repoMatches", "**"), ("matches", "v*"));
        r.scope_selectors.clear();
        assert!(r
            .check()
            .expect_err("refused")
            .contains("repository selector"));
        let mut r = rule(("repoMatches", "**"), ("matches", "v*"));
        r.tag_selectors.clear();
        assert!(r.check().expect_err("refused").contains("tag selector"));
    }
}
