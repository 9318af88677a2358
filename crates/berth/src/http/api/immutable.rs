//! `/api/v2.0/projects/{p}/immutabletagrules`: a project's immutable tag rules, in
//! Harbor's `ImmutableRule` shape. Anyone who sees the project lists them; project
//! admins and maintainers (and robots with `immutable-tag:create`) change them. What a
//! rule does is `registry/immutable.rs`.

use super::{id, listing, ok, Answer, Call, Failure};
use crate::auth::rbac::Permission;
use crate::registry::immutable::{Rule, RuleRefused, Selector, Selectors, MAX_RULES};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;

fn render(r: &Rule) -> Value {
    json!({
        "id": r.id,
        "priority": r.priority,
        "disabled": r.disabled,
        "action": "immutable",
        "template": "immutable_template",
        "params": {},
        "tag_selectors": r.selectors.tag_selectors,
        "scope_selectors": r.selectors.scope_selectors,
    })
}

/// A rule as Harbor's clients send it. `action`, `template` and `params` are taken as
/// Harbor's portal sends them, and must say what Berth does.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleRequest {
    #[serde(default)]
    id: Option<i64>,
    #[serde(default)]
    priority: Option<i64>,
    #[serde(default)]
    disabled: Option<bool>,
    #[serde(default)]
    action: Option<String>,
    #[serde(default)]
    template: Option<String>,
    #[serde(default)]
    params: Option<Value>,
    #[serde(default)]
    tag_selectors: Option<Vec<Selector>>,
    #[serde(default)]
    scope_selectors: Option<BTreeMap<String, Vec<Selector>>>,
}

impl RuleRequest {
    fn check(&self) -> Result<(), Failure> {
        if let Some(a) = self.action.as_deref().filter(|a| *a != "immutable") {
            return Err(Failure::bad_request(format!(
                "action {a:?} is not supported: an immutable tag rule's action is \"immutable\""
            )));
        }
        if let Some(t) = self
            .template
            .as_deref()
            .filter(|t| *t != "immutable_template")
        {
            return Err(Failure::bad_request(format!(
                "template {t:?} is not supported: use \"immutable_template\""
            )));
        }
        if let Some(p) = self
            .params
            .as_ref()
            .filter(|p| !p.as_object().is_some_and(|o| o.is_empty()))
        {
            return Err(Failure::bad_request(format!(
                "params {p} are not supported: an immutable tag rule takes none"
            )));
        }
        Ok(())
    }

    /// The rule this request makes of `base` (a new rule: nothing).
    fn apply(self, base: Option<&Rule>) -> Result<(i64, bool, Selectors), Failure> {
        self.check()?;
        let selectors = Selectors {
            tag_selectors: match (self.tag_selectors, base) {
                (Some(t), _) => t,
                (None, Some(b)) => b.selectors.tag_selectors.clone(),
                (None, None) => Vec::new(),
            },
            scope_selectors: match (self.scope_selectors, base) {
                (Some(s), _) => s,
                (None, Some(b)) => b.selectors.scope_selectors.clone(),
                (None, None) => BTreeMap::new(),
            },
        };
        Ok((
            self.priority.or(base.map(|b| b.priority)).unwrap_or(0),
            self.disabled.or(base.map(|b| b.disabled)).unwrap_or(false),
            selectors,
        ))
    }
}

fn refused(r: RuleRefused) -> Failure {
    match r {
        RuleRefused::Invalid(why) => Failure::bad_request(why),
        RuleRefused::TooMany => Failure::bad_request(format!(
            "the project has {MAX_RULES} immutable tag rules already, the most it may have: change or delete one"
        )),
    }
}

/// `GET`: the rules, by id, paginated.
pub(super) async fn list(c: &mut Call<'_>, p: &str) -> Answer {
    let a = c.accounts.project(&c.who, &c.project_key(p)).await?;
    let (page, size, window) = c.page()?;
    let rules = c.app.registry.immutable_rules(a.project.id).await?;
    let total = rules.len() as u64;
    let shown = rules
        .iter()
        .skip(usize::try_from(window.offset).unwrap_or(usize::MAX))
        .take(window.limit as usize)
        .map(render)
        .collect();
    Ok(listing(c, shown, total, page, size))
}

/// `POST`: add a rule; 201 with its `Location`.
pub(super) async fn create(c: &mut Call<'_>, p: &str) -> Answer {
    let req: RuleRequest = c.json().await?;
    let a = c
        .accounts
        .project_for(&c.who, &c.project_key(p), Permission::ManageImmutableTags)
        .await?;
    if req.id.is_some() {
        return Err(Failure::bad_request(
            "id is given by the registry: leave it out of a new rule",
        ));
    }
    let (priority, disabled, selectors) = req.apply(None)?;
    let id = c
        .app
        .registry
        .add_immutable_rule(a.project.id, priority, disabled, &selectors)
        .await?
        .map_err(refused)?;
    c.audit(
        "create",
        "immutable_tag_rule",
        &id.to_string(),
        Some(&a.project.name),
    );
    let location = format!(
        "/api/v2.0/projects/{}/immutabletagrules/{id}",
        a.project.name
    );
    Ok(super::super::empty(
        StatusCode::CREATED,
        &[("location", location)],
    ))
}

/// `PUT /{id}`: change a rule (fields left out keep their values; Harbor's portal
/// disables a rule by sending it back with `disabled: true`).
pub(super) async fn update(c: &mut Call<'_>, p: &str, rule: &str) -> Answer {
    let req: RuleRequest = c.json().await?;
    let a = c
        .accounts
        .project_for(&c.who, &c.project_key(p), Permission::ManageImmutableTags)
        .await?;
    let rid = id(rule, "immutable tag rule id")?;
    if req.id.is_some_and(|i| i != rid) {
        return Err(Failure::bad_request(format!(
            "the body's id is not {rid}, the rule of the path"
        )));
    }
    let rules = c.app.registry.immutable_rules(a.project.id).await?;
    let base = rules
        .iter()
        .find(|r| r.id == rid)
        .ok_or_else(|| not_found(rid, &a.project.name))?;
    let (priority, disabled, selectors) = req.apply(Some(base))?;
    let found = c
        .app
        .registry
        .update_immutable_rule(a.project.id, rid, priority, disabled, &selectors)
        .await?
        .map_err(refused)?;
    if !found {
        return Err(not_found(rid, &a.project.name));
    }
    c.audit("update", "immutable_tag_rule", rule, Some(&a.project.name));
    Ok(ok())
}

/// `DELETE /{id}`.
pub(super) async fn delete(c: &mut Call<'_>, p: &str, rule: &str) -> Answer {
    let a = c
        .accounts
        .project_for(&c.who, &c.project_key(p), Permission::ManageImmutableTags)
        .await?;
    let rid = id(rule, "immutable tag rule id")?;
    if !c
        .app
        .registry
        .delete_immutable_rule(a.project.id, rid)
        .await?
    {
        return Err(not_found(rid, &a.project.name));
    }
    c.audit("delete", "immutable_tag_rule", rule, Some(&a.project.name));
    Ok(ok())
}

fn not_found(id: i64, project: &str) -> Failure {
    Failure::not_found(format!(
        "immutable tag rule {id} not found in project {project}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partial_update_keeps_the_rest() {
        let base = Rule {
            id: 3,
            priority: 2,
            disabled: false,
            selectors: Selectors {
                tag_selectors: vec![Selector {
                    kind: "doublestar".into(),
                    decoration: "matches".into(),
                    pattern: "v*".into(),
                    extras: String::new(),
                }],
                scope_selectors: BTreeMap::new(),
            },
        };
        let req: RuleRequest = serde_json::from_str(r#"{"disabled": true}"#).expect("parse");
        let (priority, disabled, s) = req.apply(Some(&base)).expect("apply");
        assert_eq!((priority, disabled), (2, true));
        assert_eq!(s, base.selectors);
        let bad: RuleRequest = serde_json::from_str(r#"{"action": "retain"}"#).expect("parse");
        assert!(bad.apply(Some(&base)).is_err());
        assert_eq!(render(&base)["template"], "immutable_template");
    }
}
