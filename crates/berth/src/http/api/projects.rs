//! `/api/v2.0/projects` and `/projects/{p}/members`: Harbor's project and member API.

use super::{created, id, json, listing, ok, time, Answer, Call, Failure};
use crate::auth::accounts::{MemberTarget, ProjectKey};
use crate::auth::rbac::{Permission, Role};
use crate::meta::{Member, MemberEntity, Page, Project};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// Harbor's `Project`, with the caller's roles in it.
pub(super) async fn render(c: &Call<'_>, p: &Project, roles: &[u8]) -> Result<Value, Failure> {
    let owner_name = match p.owner_id {
        Some(id) => c.accounts.user_name(id).await?.unwrap_or_default(),
        None => String::new(),
    };
    let repo_count = c.accounts.repository_count(&p.name).await?;
    let mut v = json!({
        "project_id": p.id,
        "owner_id": p.owner_id.unwrap_or(0),
        "owner_name": owner_name,
        "name": p.name,
        "creation_time": time(p.created_at),
        "update_time": time(p.updated_at),
        "repo_count": repo_count,
        "current_user_role_ids": roles,
        "metadata": {"public": if p.public { "true" } else { "false" }},
    });
    if !p.push_networks.is_empty() {
        v["metadata"]["pushnetworks"] = json!(p.push_networks);
    }
    if let Some(id) = c.app.registry.project_registry_id(p.id).await? {
        v["registry_id"] = json!(id);
    }
    if let Some(id) = c.app.registry.project_retention_id(p.id).await? {
        v["metadata"]["retention_id"] = json!(id.to_string());
    }
    if let Some(top) = roles.iter().min_by_key(|r| rank(**r)) {
        v["current_user_role_id"] = json!(top);
    }
    Ok(v)
}

/// Roles from most to least powerful, for `current_user_role_id`.
fn rank(role: u8) -> u8 {
    match role {
        1 => 0,
        4 => 1,
        2 => 2,
        3 => 3,
        _ => 4,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProjectReq {
    #[serde(default)]
    project_name: Option<String>,
    #[serde(default)]
    public: Option<bool>,
    #[serde(default)]
    metadata: Option<BTreeMap<String, Value>>,
    /// The project's storage quota in bytes (-1: no limit), set when a system
    /// administrator creates it; others get the default (`auth.berth.storagequota`), as
    /// Harbor's portal sends this field for everyone. Changed later through
    /// `/quotas/{id}`.
    #[serde(default)]
    storage_limit: Option<i64>,
    /// Makes a proxy-cache project of this upstream registry (`/registries`): set at
    /// creation by a system administrator, never changed.
    #[serde(default)]
    registry_id: Option<i64>,
    #[serde(default)]
    cve_allowlist: Option<Value>,
}

impl ProjectReq {
    /// The `pushnetworks` metadata (Berth's: comma-separated CIDRs), if given.
    fn push_networks(&self) -> Option<String> {
        self.metadata
            .as_ref()
            .and_then(|m| m.get("pushnetworks"))
            .and_then(Value::as_str)
            .map(str::to_string)
    }

    /// The `public` setting it asks for, if any; refuses what Berth does not do yet.
    fn public(&self) -> Result<Option<bool>, Failure> {
        if self.storage_limit.is_some_and(|l| l < -1) {
            return Err(Failure::bad_request(
                "storage_limit must be a number of bytes, or -1 for no limit",
            ));
        }
        if self
            .cve_allowlist
            .as_ref()
            .is_some_and(|v| v["items"].as_array().is_some_and(|a| !a.is_empty()))
        {
            return Err(Failure::bad_request("cve_allowlist is not supported"));
        }
        let mut public = self.public;
        if let Some(meta) = &self.metadata {
            for (k, v) in meta {
                match (k.as_str(), v) {
                    ("public", Value::String(s)) if s == "true" || s == "false" => {
                        public = Some(s == "true");
                    }
                    ("public", Value::Bool(b)) => public = Some(*b),
                    ("public", _) => {
                        return Err(Failure::bad_request(
                            "metadata.public must be \"true\" or \"false\"",
                        ))
                    }
                    ("pushnetworks", Value::String(_)) => {}
                    // Set by POST /retentions; a client may send it back unchanged.
                    ("retention_id", _) => {}
                    ("pushnetworks", _) => {
                        return Err(Failure::bad_request(
                            "metadata.pushnetworks must be a string of comma-separated networks",
                        ))
                    }
                    (other, _) => {
                        return Err(Failure::bad_request(format!(
                            "metadata.{other} is not supported by Berth (only public, pushnetworks and the read-only retention_id are)"
                        )))
                    }
                }
            }
        }
        Ok(public)
    }
}

pub(super) async fn create(c: &mut Call<'_>) -> Answer {
    let req: ProjectReq = c.json().await?;
    let name = req
        .project_name
        .clone()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| Failure::bad_request("project_name is required"))?;
    let public = req.public()?.unwrap_or(false);
    let networks = req.push_networks();
    if let Some(n) = &networks {
        crate::auth::berth::parse_networks(n).map_err(Failure::bad_request)?;
    }
    let registry_id = req.registry_id.filter(|r| *r != 0);
    if let Some(rid) = registry_id {
        super::registries::check_no_proxy_section(c)?;
        crate::auth::accounts::Accounts::require_admin(&c.who).map_err(|_| {
            Failure::new(
                StatusCode::FORBIDDEN,
                "FORBIDDEN",
                "only a system administrator may create a proxy-cache project (registry_id)",
            )
        })?;
        if c.app.registry.upstream_registry(rid).await?.is_none() {
            return Err(Failure::bad_request(format!(
                "registry_id {rid}: there is no such registry (GET /api/v2.0/registries lists them)"
            )));
        }
    }
    let p = c.accounts.create_project(&c.who, &name, public).await?;
    if let Some(rid) = registry_id {
        let bound = c.app.registry.bind_proxy_project(p.id, rid).await;
        if !matches!(bound, Ok(true)) {
            // No half-made cache stays behind as an ordinary project.
            c.accounts
                .delete_project(&c.who, &ProjectKey::Id(p.id))
                .await?;
            bound?;
            return Err(Failure::bad_request(format!(
                "registry_id {rid}: the registry was deleted meanwhile"
            )));
        }
    }
    if let Some(limit) = req.storage_limit.filter(|_| c.who.is_admin()) {
        c.accounts
            .set_quota(&c.who, p.id, u64::try_from(limit).ok())
            .await?;
    }
    if let Some(n) = networks {
        c.accounts
            .set_project_push_networks(&c.who, &ProjectKey::Id(p.id), &n)
            .await?;
    }
    c.audit("create", "project", &p.name, Some(&p.name));
    let by_name = c
        .parts
        .headers
        .get("x-resource-name-in-location")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    Ok(created(&if by_name {
        format!("/api/v2.0/projects/{}", p.name)
    } else {
        format!("/api/v2.0/projects/{}", p.id)
    }))
}

pub(super) async fn list(c: &mut Call<'_>) -> Answer {
    let (page, size, p) = c.page()?;
    let name = c
        .param("name")
        .map(str::to_string)
        .or_else(|| c.q("name").map(|(v, _)| v))
        .filter(|n| !n.is_empty());
    let public = match c.param("public") {
        Some("true") => Some(true),
        Some("false") => Some(false),
        Some(other) => {
            return Err(Failure::bad_request(format!(
                "public must be true or false, not {other:?}"
            )))
        }
        None => c.q("public").map(|(v, _)| v == "true"),
    };
    let (projects, total) = c.accounts.list_projects(&c.who, name, public, p).await?;
    let mut items = Vec::with_capacity(projects.len());
    for p in &projects {
        let roles = c.accounts.roles_in(&c.who, p).await?;
        items.push(render(c, p, &roles).await?);
    }
    Ok(listing(c, items, total, page, size))
}

/// `HEAD /projects?project_name=`: whether a project of that name exists.
pub(super) async fn head(c: &mut Call<'_>) -> Answer {
    let name = c
        .param("project_name")
        .filter(|n| !n.is_empty())
        .ok_or_else(|| Failure::bad_request("project_name is required"))?
        .to_string();
    if matches!(c.who, crate::auth::berth::Who::Anonymous) {
        return Err(Failure::new(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "authentication required",
        ));
    }
    if c.accounts.project_exists(&name).await? {
        Ok(ok())
    } else {
        Err(Failure::not_found(format!("project {name} not found")))
    }
}

pub(super) async fn get(c: &mut Call<'_>, p: &str) -> Answer {
    let a = c.accounts.project(&c.who, &c.project_key(p)).await?;
    Ok(json(
        StatusCode::OK,
        &render(c, &a.project, &a.roles).await?,
    ))
}

pub(super) async fn update(c: &mut Call<'_>, p: &str) -> Answer {
    let req: ProjectReq = c.json().await?;
    let key = c.project_key(p);
    if let Some(name) = &req.project_name {
        let a = c.accounts.project(&c.who, &key).await?;
        if name != &a.project.name {
            return Err(Failure::bad_request("a project cannot be renamed"));
        }
    }
    let public = req.public()?;
    if let Some(rid) = req.registry_id {
        let a = c.accounts.project(&c.who, &key).await?;
        let current = c.app.registry.project_registry_id(a.project.id).await?;
        if current.unwrap_or(0) != rid {
            return Err(Failure::bad_request(
                "registry_id is set when a project is created and cannot change: create another project",
            ));
        }
    }
    if let Some(n) = req.push_networks() {
        c.accounts
            .set_project_push_networks(&c.who, &key, &n)
            .await?;
    }
    if let Some(public) = public {
        c.accounts.set_project_public(&c.who, &key, public).await?;
    } else {
        c.accounts
            .project_for(&c.who, &key, Permission::UpdateProject)
            .await?;
    }
    c.audit("update", "project", p, Some(p));
    Ok(ok())
}

pub(super) async fn delete(c: &mut Call<'_>, p: &str) -> Answer {
    let project = c.accounts.delete_project(&c.who, &c.project_key(p)).await?;
    c.app.registry.proxy_projects_changed();
    c.audit("delete", "project", &project.name, Some(&project.name));
    Ok(ok())
}

/// `GET /projects/{p}/summary`: repository and member counts by role.
pub(super) async fn summary(c: &mut Call<'_>, p: &str) -> Answer {
    let a = c.accounts.project(&c.who, &c.project_key(p)).await?;
    let repo_count = c.accounts.repository_count(&a.project.name).await?;
    let mut counts = [0u64; 6];
    if crate::auth::berth::allows(&c.who, &a, Permission::ListMembers) {
        let (members, _) = c
            .accounts
            .list_members(&c.who, &ProjectKey::Id(a.project.id), None, Page::all())
            .await?;
        for m in members {
            if let Some(n) = counts.get_mut(m.role as usize) {
                *n += 1;
            }
        }
    }
    let mut summary = json!({
        "repo_count": repo_count,
        "project_admin_count": counts[1],
        "maintainer_count": counts[4],
        "developer_count": counts[2],
        "guest_count": counts[3],
        "limited_guest_count": counts[5],
    });
    if let Some(q) = c.accounts.project_quota(a.project.id).await? {
        summary["quota"] = json!({
            "hard": {"storage": super::quotas::limit(&q)},
            "used": {"storage": q.used},
        });
    }
    Ok(json(StatusCode::OK, &summary))
}

/// Harbor's `ProjectMemberEntity`.
fn render_member(m: &Member) -> Value {
    let role = Role::from_id(m.role);
    let (entity_id, entity_type) = match &m.entity {
        MemberEntity::User(id) => (*id, "u"),
        MemberEntity::Group(_) => (0, "g"),
    };
    json!({
        "id": m.id,
        "project_id": m.project_id,
        "entity_name": m.entity_name,
        "role_name": role.map(Role::name).unwrap_or("unknown"),
        "role_id": m.role,
        "entity_id": entity_id,
        "entity_type": entity_type,
    })
}

pub(super) async fn members(c: &mut Call<'_>, p: &str) -> Answer {
    let (page, size, pg) = c.page()?;
    let name = c
        .param("entityname")
        .filter(|n| !n.is_empty())
        .map(str::to_string);
    let (members, total) = c
        .accounts
        .list_members(&c.who, &c.project_key(p), name.as_deref(), pg)
        .await?;
    Ok(listing(
        c,
        members.iter().map(render_member).collect(),
        total,
        page,
        size,
    ))
}

pub(super) async fn member(c: &mut Call<'_>, p: &str, mid: &str) -> Answer {
    let m = c
        .accounts
        .member(&c.who, &c.project_key(p), id(mid, "member id")?)
        .await?;
    Ok(json(StatusCode::OK, &render_member(&m)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserEntity {
    #[serde(default)]
    user_id: Option<i64>,
    #[serde(default)]
    username: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupEntity {
    #[serde(default)]
    id: Option<i64>,
    #[serde(default)]
    group_name: Option<String>,
    #[serde(default)]
    group_type: Option<i64>,
    #[serde(default)]
    ldap_group_dn: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProjectMember {
    role_id: u8,
    #[serde(default)]
    member_user: Option<UserEntity>,
    #[serde(default)]
    member_group: Option<GroupEntity>,
}

pub(super) async fn add_member(c: &mut Call<'_>, p: &str) -> Answer {
    let req: ProjectMember = c.json().await?;
    let target = match (req.member_user, req.member_group) {
        (
            Some(UserEntity {
                user_id: Some(id), ..
            }),
            _,
        ) if id > 0 => MemberTarget::UserId(id),
        (
            Some(UserEntity {
                username: Some(n), ..
            }),
            _,
        ) if !n.is_empty() => MemberTarget::UserName(n),
        (_, Some(g)) => {
            let _ = (g.id, g.group_type);
            match g.ldap_group_dn.or(g.group_name).filter(|n| !n.is_empty()) {
                Some(name) => MemberTarget::Group(name),
                None => {
                    return Err(Failure::bad_request(
                        "member_group needs ldap_group_dn or group_name",
                    ))
                }
            }
        }
        _ => {
            return Err(Failure::bad_request(
                "name the member: member_user (user_id or username) or member_group",
            ))
        }
    };
    let key = c.project_key(p);
    let m = c
        .accounts
        .add_member(&c.who, &key, target, req.role_id)
        .await?;
    c.audit(
        "create",
        "member",
        &format!("{} as {}", m.entity_name, req.role_id),
        Some(p),
    );
    Ok(created(&format!("/api/v2.0/projects/{p}/members/{}", m.id)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleRequest {
    role_id: u8,
}

pub(super) async fn update_member(c: &mut Call<'_>, p: &str, mid: &str) -> Answer {
    let req: RoleRequest = c.json().await?;
    let mid_n = id(mid, "member id")?;
    c.accounts
        .set_member_role(&c.who, &c.project_key(p), mid_n, req.role_id)
        .await?;
    c.audit(
        "update",
        "member",
        &format!("{mid} as {}", req.role_id),
        Some(p),
    );
    Ok(ok())
}

pub(super) async fn remove_member(c: &mut Call<'_>, p: &str, mid: &str) -> Answer {
    c.accounts
        .remove_member(&c.who, &c.project_key(p), id(mid, "member id")?)
        .await?;
    c.audit("delete", "member", mid, Some(p));
    Ok(ok())
}
