//! Managing users, projects, members and robot accounts: the operations of the
//! management API and the CLI, each checked against the acting principal with the same
//! decision function as registry requests ([`super::berth::allows`]). The rule no path
//! may break: a principal never grants more than it holds (a role or a robot permission
//! list is refused unless the actor holds every permission it carries, in that
//! project). Knows nothing of HTTP.

use super::berth::{allows, check_project_name, BerthAccess, Who};
use super::password;
use super::rbac::{permission_of, Permission, RobotAccess, RobotPermission, Role};
use crate::meta::{
    ArtifactFilter, ArtifactInfo, AuditEntry, AuditQuery, Member, MemberEntity, MetaError,
    MetaStore, NewRobot, NewUser, Page, Project, ProjectAccess, ProjectDeletion, ProjectFilter,
    Quota, RepositorySummary, Robot, RobotChanges, User, UserChanges, UserSource, Viewer,
};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    /// Not authenticated: a 401 for the API.
    #[error("authentication required")]
    Unauthenticated,
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    /// A precondition failed (a project that still holds repositories).
    #[error("{0}")]
    Precondition(String),
    #[error("metadata database: {0}")]
    Store(#[from] MetaError),
    #[error("{0}")]
    Internal(String),
}

type Result<T> = std::result::Result<T, AccountError>;

/// Management operations over the metadata, for one access configuration.
pub struct Accounts {
    meta: Arc<dyn MetaStore>,
    access: Arc<BerthAccess>,
}

impl std::fmt::Debug for Accounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Accounts")
    }
}

/// A new user, as the API and CLI take it.
#[derive(Debug, Clone)]
pub struct UserRequest {
    pub username: String,
    pub password: String,
    pub email: String,
    pub realname: String,
    pub comment: String,
}

/// A robot to create.
#[derive(Debug, Clone)]
pub struct RobotRequest {
    pub name: String,
    pub description: String,
    /// `system` or `project`.
    pub level: String,
    pub disable: bool,
    /// Days until it expires; -1 never; 0 the default (30 days, as Harbor).
    pub duration: i64,
    pub permissions: Vec<RobotPermission>,
}

/// A created robot: its record, the name it logs in with, and its secret (shown once).
#[derive(Debug, Clone)]
pub struct CreatedRobot {
    pub robot: Robot,
    pub full_name: String,
    pub secret: String,
}

/// Default robot lifetime when `duration` is 0 (Harbor's `robot_token_duration`).
const DEFAULT_ROBOT_DAYS: i64 = 30;

fn forbidden() -> AccountError {
    AccountError::Forbidden("forbidden: the caller lacks the permission this needs".into())
}

impl Accounts {
    pub fn new(meta: Arc<dyn MetaStore>, access: Arc<BerthAccess>) -> Accounts {
        Accounts { meta, access }
    }

    pub fn access(&self) -> &BerthAccess {
        &self.access
    }

    fn require_login(who: &Who) -> Result<()> {
        if matches!(who, Who::Anonymous) {
            Err(AccountError::Unauthenticated)
        } else {
            Ok(())
        }
    }

    pub fn require_admin(who: &Who) -> Result<()> {
        Self::require_login(who)?;
        if who.is_admin() {
            Ok(())
        } else {
            Err(AccountError::Forbidden(
                "forbidden: only a system administrator may do this".into(),
            ))
        }
    }

    // ---- users ----

    pub async fn create_user(&self, who: &Who, req: UserRequest, admin: bool) -> Result<User> {
        Self::require_admin(who)?;
        check_username(&req.username)?;
        password::check_strength(&req.password).map_err(AccountError::Invalid)?;
        if req
            .username
            .starts_with(&self.access.settings().robot_prefix)
        {
            return Err(AccountError::Invalid(format!(
                "a user name must not start with the robot prefix {:?}",
                self.access.settings().robot_prefix
            )));
        }
        let hash = password::hash(&req.password)
            .await
            .map_err(AccountError::Internal)?;
        self.meta
            .create_user(&NewUser {
                username: req.username.clone(),
                email: req.email,
                realname: req.realname,
                comment: req.comment,
                admin,
                source: UserSource::Local,
                password_hash: Some(hash),
            })
            .await?
            .map_err(|_| AccountError::Conflict(format!("user {} already exists", req.username)))
    }

    pub async fn list_users(
        &self,
        who: &Who,
        name: Option<&str>,
        page: Page,
    ) -> Result<(Vec<User>, u64)> {
        Self::require_admin(who)?;
        Ok(self.meta.list_users(name, page).await?)
    }

    /// Users whose name contains `name`, for any logged-in caller (to add members).
    pub async fn search_users(
        &self,
        who: &Who,
        name: &str,
        page: Page,
    ) -> Result<(Vec<User>, u64)> {
        Self::require_login(who)?;
        Ok(self.meta.list_users(Some(name), page).await?)
    }

    /// The user named `name` (administrators only).
    pub async fn user_named(&self, who: &Who, name: &str) -> Result<User> {
        Self::require_admin(who)?;
        self.meta.user_by_name(name).await?.ok_or_else(|| {
            AccountError::NotFound(format!(
                "no user named {name}: `berth user list` shows who exists"
            ))
        })
    }

    fn is_self(who: &Who, id: i64) -> bool {
        matches!(who, Who::User { user, .. } if user.id == id)
    }

    pub async fn get_user(&self, who: &Who, id: i64) -> Result<User> {
        Self::require_login(who)?;
        if !who.is_admin() && !Self::is_self(who, id) {
            return Err(forbidden());
        }
        self.meta
            .user_by_id(id)
            .await?
            .ok_or_else(|| AccountError::NotFound(format!("user {id} not found")))
    }

    pub async fn update_user(&self, who: &Who, id: i64, changes: UserChanges) -> Result<()> {
        self.get_user(who, id).await?;
        if !self.meta.update_user(id, &changes).await? {
            return Err(AccountError::NotFound(format!("user {id} not found")));
        }
        Ok(())
    }

    /// Change a password: one's own needs the old one; an administrator sets another
    /// user's without it.
    pub async fn change_password(
        &self,
        who: &Who,
        id: i64,
        old: Option<&str>,
        new: &str,
    ) -> Result<()> {
        let user = self.get_user(who, id).await?;
        if user.source != UserSource::Local {
            return Err(AccountError::Invalid(format!(
                "{} is a directory user: change the password in the directory",
                user.username
            )));
        }
        password::check_strength(new).map_err(AccountError::Invalid)?;
        let own = Self::is_self(who, id) || matches!(who, Who::System);
        if Self::is_self(who, id) {
            let ok = match (old, user.password_hash.as_deref()) {
                (Some(old), Some(hash)) => bcrypt::verify(old, hash).unwrap_or(false),
                _ => false,
            };
            if !ok {
                return Err(AccountError::Forbidden(
                    "the current password (old_password) is incorrect".into(),
                ));
            }
            if old == Some(new) {
                return Err(AccountError::Invalid(
                    "the new password is the same as the old one".into(),
                ));
            }
        } else if !own && !who.is_admin() {
            return Err(forbidden());
        }
        let hash = password::hash(new).await.map_err(AccountError::Internal)?;
        self.meta.set_password(id, &hash).await?;
        Ok(())
    }

    pub async fn set_admin(&self, who: &Who, id: i64, admin: bool) -> Result<()> {
        Self::require_admin(who)?;
        if Self::is_self(who, id) && !admin {
            return Err(AccountError::Forbidden(
                "an administrator cannot remove their own administrator flag: ask another administrator".into(),
            ));
        }
        if !self.meta.set_admin(id, admin).await? {
            return Err(AccountError::NotFound(format!("user {id} not found")));
        }
        Ok(())
    }

    pub async fn delete_user(&self, who: &Who, id: i64) -> Result<()> {
        Self::require_admin(who)?;
        if Self::is_self(who, id) {
            return Err(AccountError::Forbidden(
                "a user cannot delete themself".into(),
            ));
        }
        let user = self
            .meta
            .user_by_id(id)
            .await?
            .ok_or_else(|| AccountError::NotFound(format!("user {id} not found")))?;
        if user.username == "admin" {
            return Err(AccountError::Forbidden(
                "the system administrator \"admin\" cannot be deleted".into(),
            ));
        }
        self.meta.delete_user(id).await?;
        Ok(())
    }

    // ---- projects ----

    /// The project named (or numbered) `key`, if `who` may see it. A project the caller
    /// may not see is "not found" (its existence is not told); anonymous gets 401.
    pub async fn project(&self, who: &Who, key: &ProjectKey) -> Result<ProjectAccess> {
        let project = match key {
            ProjectKey::Name(n) => self.meta.project_by_name(n).await?,
            ProjectKey::Id(id) => self.meta.project_by_id(*id).await?,
        };
        let missing = || AccountError::NotFound(format!("project {key} not found"));
        let Some(project) = project else {
            return Err(if matches!(who, Who::Anonymous) {
                AccountError::Unauthenticated
            } else {
                missing()
            });
        };
        let access = self
            .meta
            .project_access(&project.name, &who.viewer())
            .await?
            .ok_or_else(missing)?;
        if !allows(who, &access, Permission::Read) {
            return Err(if matches!(who, Who::Anonymous) {
                AccountError::Unauthenticated
            } else {
                missing()
            });
        }
        Ok(access)
    }

    /// The project, requiring `p` of `who` in it.
    pub async fn project_for(
        &self,
        who: &Who,
        key: &ProjectKey,
        p: Permission,
    ) -> Result<ProjectAccess> {
        let access = self.project(who, key).await?;
        if !allows(who, &access, p) {
            return Err(if matches!(who, Who::Anonymous) {
                AccountError::Unauthenticated
            } else {
                forbidden()
            });
        }
        Ok(access)
    }

    pub async fn create_project(&self, who: &Who, name: &str, public: bool) -> Result<Project> {
        Self::require_login(who)?;
        if !self.access.may_create_projects(who) && !matches!(who, Who::System) {
            return Err(AccountError::Forbidden(
                "only a system administrator may create projects here (auth.berth.projectcreation: adminonly)".into(),
            ));
        }
        check_project_name(name).map_err(AccountError::Invalid)?;
        let owner = match who {
            Who::User { user, .. } => Some(user.id),
            _ => None,
        };
        let p = self
            .meta
            .create_project(name, public, owner)
            .await?
            .map_err(|_| {
                AccountError::Conflict(format!("the project named {name} already exists"))
            })?;
        if let Some(hard) = self.access.default_quota() {
            self.meta.set_quota(p.id, Some(hard)).await?;
        }
        Ok(p)
    }

    /// Set a project's storage quota (`None`: no limit): system administrators only.
    pub async fn set_quota(&self, who: &Who, project_id: i64, hard: Option<u64>) -> Result<Quota> {
        if !matches!(who, Who::System) {
            Self::require_admin(who)?;
        }
        self.meta
            .set_quota(project_id, hard)
            .await?
            .ok_or_else(|| AccountError::NotFound(format!("quota {project_id} not found")))
    }

    /// Every project's quota, by project id: system administrators only.
    pub async fn quotas(&self, who: &Who, page: Page) -> Result<(Vec<Quota>, u64)> {
        Self::require_admin(who)?;
        Ok(self.meta.quotas(page).await?)
    }

    /// One project's quota, by project id: system administrators only.
    pub async fn quota(&self, who: &Who, project_id: i64) -> Result<Quota> {
        Self::require_admin(who)?;
        self.meta
            .quota(project_id)
            .await?
            .ok_or_else(|| AccountError::NotFound(format!("quota {project_id} not found")))
    }

    /// The quota of a project the caller was already allowed to see (its summary).
    pub async fn project_quota(&self, project_id: i64) -> Result<Option<Quota>> {
        Ok(self.meta.quota(project_id).await?)
    }

    pub async fn list_projects(
        &self,
        who: &Who,
        name: Option<String>,
        public: Option<bool>,
        page: Page,
    ) -> Result<(Vec<Project>, u64)> {
        let visible_to = match who {
            Who::User { user, .. } if user.admin => None,
            Who::System => None,
            Who::Robot { .. } => {
                // A robot sees the projects its list names (all with `*`) and public ones.
                return self.robot_projects(who, name, public, page).await;
            }
            w => Some(w.viewer()),
        };
        Ok(self
            .meta
            .list_projects(
                &ProjectFilter {
                    name_contains: name,
                    public,
                    visible_to,
                },
                page,
            )
            .await?)
    }

    async fn robot_projects(
        &self,
        who: &Who,
        name: Option<String>,
        public: Option<bool>,
        page: Page,
    ) -> Result<(Vec<Project>, u64)> {
        let (all, _) = self
            .meta
            .list_projects(
                &ProjectFilter {
                    name_contains: name,
                    public,
                    visible_to: None,
                },
                Page::all(),
            )
            .await?;
        let mut seen = Vec::new();
        for p in all {
            let access = ProjectAccess {
                project: p.clone(),
                roles: Vec::new(),
            };
            if allows(who, &access, Permission::Read) || allows(who, &access, Permission::Pull) {
                seen.push(p);
            }
        }
        let total = seen.len() as u64;
        let items = seen
            .into_iter()
            .skip(page.offset as usize)
            .take(page.limit as usize)
            .collect();
        Ok((items, total))
    }

    pub async fn set_project_public(
        &self,
        who: &Who,
        key: &ProjectKey,
        public: bool,
    ) -> Result<()> {
        let a = self
            .project_for(who, key, Permission::UpdateProject)
            .await?;
        self.meta.set_project_public(a.project.id, public).await?;
        Ok(())
    }

    /// Set the networks that may push to and delete in the project (comma-separated
    /// CIDRs; empty: no project allowlist).
    pub async fn set_project_push_networks(
        &self,
        who: &Who,
        key: &ProjectKey,
        networks: &str,
    ) -> Result<()> {
        let a = self
            .project_for(who, key, Permission::UpdateProject)
            .await?;
        let parsed = super::berth::parse_networks(networks).map_err(AccountError::Invalid)?;
        let text: Vec<String> = parsed.iter().map(ToString::to_string).collect();
        self.meta
            .set_project_push_networks(a.project.id, &text.join(","))
            .await?;
        Ok(())
    }

    pub async fn delete_project(&self, who: &Who, key: &ProjectKey) -> Result<Project> {
        let a = self
            .project_for(who, key, Permission::DeleteProject)
            .await?;
        match self.meta.delete_project(a.project.id).await? {
            ProjectDeletion::Deleted => Ok(a.project),
            ProjectDeletion::NotFound => {
                Err(AccountError::NotFound(format!("project {key} not found")))
            }
            ProjectDeletion::NotEmpty(n) => Err(AccountError::Precondition(format!(
                "the project {} still holds {n} repositories: delete them first",
                a.project.name
            ))),
        }
    }

    /// The name of user `id`, if it exists (a project owner's, for listings).
    pub async fn user_name(&self, id: i64) -> Result<Option<String>> {
        Ok(self.meta.user_by_id(id).await?.map(|u| u.username))
    }

    /// How many repositories `project` holds.
    pub async fn repository_count(&self, project: &str) -> Result<u64> {
        Ok(self.meta.repository_count(project).await?)
    }

    /// Whether a project named `name` exists.
    pub async fn project_exists(&self, name: &str) -> Result<bool> {
        Ok(self.meta.project_by_name(name).await?.is_some())
    }

    /// The roles `who` holds in `project`.
    pub async fn roles_in(&self, who: &Who, project: &Project) -> Result<Vec<u8>> {
        Ok(self
            .meta
            .project_access(&project.name, &who.viewer())
            .await?
            .map(|a| a.roles)
            .unwrap_or_default())
    }

    // ---- repositories and artifacts (the caller checked the project's permission) ----

    pub async fn repositories(
        &self,
        project: &str,
        name_contains: Option<&str>,
        page: Page,
    ) -> Result<(Vec<RepositorySummary>, u64)> {
        Ok(self
            .meta
            .repository_summaries(project, name_contains, page)
            .await?)
    }

    pub async fn repository(&self, repo: &oci::RepoName) -> Result<Option<RepositorySummary>> {
        Ok(self.meta.repository_summary(repo).await?)
    }

    pub async fn artifacts(
        &self,
        repo: &oci::RepoName,
        filter: &ArtifactFilter,
        page: Page,
    ) -> Result<(Vec<ArtifactInfo>, u64)> {
        Ok(self.meta.artifacts(repo, filter, page).await?)
    }

    pub async fn artifact(
        &self,
        repo: &oci::RepoName,
        digest: &oci::Digest,
    ) -> Result<Option<ArtifactInfo>> {
        Ok(self.meta.artifact(repo, digest).await?)
    }

    /// (project, repositories, bytes) of these projects.
    pub async fn usage(&self, projects: Option<&[String]>) -> Result<Vec<(String, u64, u64)>> {
        Ok(self.meta.project_usage(projects).await?)
    }

    // ---- audit ----

    /// Audit entries: of one project (its `ReadLogs` needed), or of every project where
    /// `who` may read logs (all entries for an administrator).
    pub async fn audit_log(
        &self,
        who: &Who,
        project: Option<&ProjectKey>,
        mut query: AuditQuery,
        page: Page,
    ) -> Result<(Vec<AuditEntry>, u64)> {
        Self::require_login(who)?;
        match project {
            Some(key) => {
                let a = self.project_for(who, key, Permission::ReadLogs).await?;
                query.project = Some(a.project.name);
            }
            None if who.is_admin() => {}
            None => {
                let (visible, _) = self.list_projects(who, None, None, Page::all()).await?;
                let mut readable = Vec::new();
                for p in visible {
                    if let Some(a) = self.meta.project_access(&p.name, &who.viewer()).await? {
                        if allows(who, &a, Permission::ReadLogs) {
                            readable.push(p.name);
                        }
                    }
                }
                query.projects = Some(readable);
            }
        }
        Ok(self.meta.audit_log(&query, page).await?)
    }

    // ---- members ----

    /// Refuse a role the actor does not wholly hold in the project.
    fn check_grant(who: &Who, access: &ProjectAccess, role: Role) -> Result<()> {
        let missing: Vec<Permission> = Permission::ALL
            .into_iter()
            .filter(|p| role.allows(*p) && !allows(who, access, *p))
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(AccountError::Forbidden(format!(
                "cannot grant the role {}: the caller does not hold all it allows (missing: {})",
                role.name(),
                missing
                    .iter()
                    .map(|p| p.describe())
                    .collect::<Vec<_>>()
                    .join("; ")
            )))
        }
    }

    pub async fn list_members(
        &self,
        who: &Who,
        key: &ProjectKey,
        name: Option<&str>,
        page: Page,
    ) -> Result<(Vec<Member>, u64)> {
        let a = self.project_for(who, key, Permission::ListMembers).await?;
        Ok(self.meta.list_members(a.project.id, name, page).await?)
    }

    pub async fn member(&self, who: &Who, key: &ProjectKey, id: i64) -> Result<Member> {
        let a = self.project_for(who, key, Permission::ListMembers).await?;
        self.meta
            .member(a.project.id, id)
            .await?
            .ok_or_else(|| AccountError::NotFound(format!("member {id} not found")))
    }

    /// Add a user (by id or name) or a directory group as a member with `role_id`.
    pub async fn add_member(
        &self,
        who: &Who,
        key: &ProjectKey,
        target: MemberTarget,
        role_id: u8,
    ) -> Result<Member> {
        let a = self
            .project_for(who, key, Permission::ManageMembers)
            .await?;
        let role = Role::from_id(role_id).ok_or_else(|| {
            AccountError::Invalid(format!("role_id {role_id} is not a role: use 1 (project admin), 2 (developer), 3 (guest), 4 (maintainer) or 5 (limited guest)"))
        })?;
        Self::check_grant(who, &a, role)?;
        let entity = match target {
            MemberTarget::UserId(id) => {
                self.meta
                    .user_by_id(id)
                    .await?
                    .ok_or_else(|| AccountError::Invalid(format!("user {id} not found")))?;
                MemberEntity::User(id)
            }
            MemberTarget::UserName(name) => {
                let u = self
                    .meta
                    .user_by_name(&name)
                    .await?
                    .ok_or_else(|| AccountError::Invalid(format!("user {name} not found")))?;
                MemberEntity::User(u.id)
            }
            MemberTarget::Group(g) => {
                // Stored as the directory's answers are compared: see `normalize_dn`.
                let dn = super::ldap::normalize_dn(&g);
                if !dn.contains('=') || dn.starts_with(['=', ',']) {
                    return Err(AccountError::Invalid(format!(
                        "{g:?} is not a group's distinguished name, like cn=devs,ou=groups,dc=example,dc=org"
                    )));
                }
                MemberEntity::Group(dn)
            }
        };
        self.meta
            .add_member(a.project.id, &entity, role.id())
            .await?
            .map_err(|_| {
                AccountError::Conflict("the project member specified already exists".into())
            })
    }

    pub async fn set_member_role(
        &self,
        who: &Who,
        key: &ProjectKey,
        id: i64,
        role_id: u8,
    ) -> Result<()> {
        let a = self
            .project_for(who, key, Permission::ManageMembers)
            .await?;
        let role = Role::from_id(role_id).ok_or_else(|| {
            AccountError::Invalid(format!("role_id {role_id} is not a role (1 to 5)"))
        })?;
        Self::check_grant(who, &a, role)?;
        if !self
            .meta
            .set_member_role(a.project.id, id, role.id())
            .await?
        {
            return Err(AccountError::NotFound(format!("member {id} not found")));
        }
        Ok(())
    }

    pub async fn remove_member(&self, who: &Who, key: &ProjectKey, id: i64) -> Result<()> {
        let a = self
            .project_for(who, key, Permission::ManageMembers)
            .await?;
        if let Some(m) = self.meta.member(a.project.id, id).await? {
            if let Some(role) = Role::from_id(m.role) {
                // Removing someone holding more than the actor would be taking what the
                // actor could never have given.
                Self::check_grant(who, &a, role)?;
            }
        }
        if !self.meta.remove_member(a.project.id, id).await? {
            return Err(AccountError::NotFound(format!("member {id} not found")));
        }
        Ok(())
    }

    // ---- robots ----

    /// The name a robot logs in with.
    pub async fn robot_full_name(&self, robot: &Robot) -> Result<String> {
        let prefix = &self.access.settings().robot_prefix;
        Ok(match robot.project_id {
            Some(pid) => {
                let project = self
                    .meta
                    .project_by_id(pid)
                    .await?
                    .map(|p| p.name)
                    .unwrap_or_default();
                format!("{prefix}{project}+{}", robot.name)
            }
            None => format!("{prefix}{}", robot.name),
        })
    }

    /// Check a permission list: known entries only, and each held by `who` in the
    /// project it names (every project for `*`).
    async fn check_permissions(&self, who: &Who, perms: &[RobotPermission]) -> Result<()> {
        if perms.is_empty() {
            return Err(AccountError::Invalid(
                "a robot needs at least one permission".into(),
            ));
        }
        for entry in perms {
            if entry.kind != "project" {
                return Err(AccountError::Invalid(format!(
                    "permission kind {:?} is not supported: use kind \"project\" with a project name or \"*\" as namespace",
                    entry.kind
                )));
            }
            if entry.access.is_empty() {
                return Err(AccountError::Invalid(
                    "each permission needs a non-empty access list".into(),
                ));
            }
            for RobotAccess {
                resource,
                action,
                effect,
            } in &entry.access
            {
                if effect.as_deref().is_some_and(|e| e != "allow") {
                    return Err(AccountError::Invalid(format!(
                        "effect {effect:?} is not supported: robots hold only what their list allows"
                    )));
                }
                let p = permission_of(resource, action).ok_or_else(|| {
                    AccountError::Invalid(format!("unknown permission {resource}:{action}"))
                })?;
                let held = if entry.namespace == "*" {
                    // Every project, present and future: only a principal holding it
                    // everywhere (an administrator, or a robot with `*`) may give it.
                    match who {
                        Who::System => true,
                        Who::User { user, .. } => user.admin,
                        Who::Robot {
                            robot, permissions, ..
                        } => {
                            robot.project_id.is_none()
                                && super::rbac::robot_allows(
                                    &permissions
                                        .iter()
                                        .filter(|e| e.namespace == "*")
                                        .cloned()
                                        .collect::<Vec<_>>(),
                                    "*",
                                    p,
                                )
                        }
                        Who::Anonymous => false,
                    }
                } else {
                    let a = self
                        .meta
                        .project_access(&entry.namespace, &who.viewer())
                        .await?
                        .ok_or_else(|| {
                            AccountError::Invalid(format!("project {} not found", entry.namespace))
                        })?;
                    allows(who, &a, p)
                };
                if !held {
                    return Err(AccountError::Forbidden(format!(
                        "cannot give a robot {resource}:{action} in {}: the caller does not hold it there",
                        entry.namespace
                    )));
                }
            }
        }
        Ok(())
    }

    /// May `who` manage robots of `project` (`None`: system robots)?
    async fn may_manage_robots(&self, who: &Who, project: Option<i64>) -> Result<()> {
        Self::require_login(who)?;
        let ok = match project {
            None => who.is_admin() || matches!(who, Who::System),
            Some(pid) => {
                let a = self.project(who, &ProjectKey::Id(pid)).await?;
                allows(who, &a, Permission::ManageRobots)
            }
        };
        if ok {
            Ok(())
        } else {
            Err(forbidden())
        }
    }

    pub async fn create_robot(&self, who: &Who, req: RobotRequest) -> Result<CreatedRobot> {
        check_project_name(&req.name).map_err(|_| {
            AccountError::Invalid(format!(
                "robot name {:?} is not in lower case or contains illegal characters (letters, digits, single '.', '_' or '-')",
                req.name
            ))
        })?;
        let project_id = match req.level.as_str() {
            "system" => None,
            "project" => {
                let [entry] = req.permissions.as_slice() else {
                    return Err(AccountError::Invalid(
                        "a project robot has exactly one permission entry, naming its project"
                            .into(),
                    ));
                };
                if entry.namespace == "*" {
                    return Err(AccountError::Invalid(
                        "a project robot's permission names its project, not \"*\"".into(),
                    ));
                }
                let a = self
                    .project(who, &ProjectKey::Name(entry.namespace.clone()))
                    .await?;
                Some(a.project.id)
            }
            other => {
                return Err(AccountError::Invalid(format!(
                    "level {other:?} is not a robot level: use system or project"
                )))
            }
        };
        self.may_manage_robots(who, project_id).await?;
        self.check_permissions(who, &req.permissions).await?;
        let expires_at = expiry(req.duration)?;
        let secret = password::random_secret(32);
        let secret_hash = password::hash(&secret)
            .await
            .map_err(AccountError::Internal)?;
        let permissions = serde_json::to_string(&req.permissions)
            .map_err(|e| AccountError::Internal(e.to_string()))?;
        let robot = self
            .meta
            .create_robot(&NewRobot {
                name: req.name.clone(),
                description: req.description,
                project_id,
                secret_hash,
                disabled: req.disable,
                expires_at,
                permissions,
                creator: creator_of(who),
            })
            .await?
            .map_err(|_| {
                AccountError::Conflict(format!("a robot named {} already exists there", req.name))
            })?;
        let full_name = self.robot_full_name(&robot).await?;
        Ok(CreatedRobot {
            robot,
            full_name,
            secret,
        })
    }

    /// A robot `who` may see (list permission in its project, or administrator).
    pub async fn robot(&self, who: &Who, id: i64) -> Result<Robot> {
        Self::require_login(who)?;
        let robot = self
            .meta
            .robot_by_id(id)
            .await?
            .ok_or_else(|| AccountError::NotFound(format!("robot {id} not found")))?;
        let ok = match robot.project_id {
            None => who.is_admin() || matches!(who, Who::System),
            Some(pid) => match self.project(who, &ProjectKey::Id(pid)).await {
                Ok(a) => allows(who, &a, Permission::ListRobots),
                Err(_) => false,
            },
        };
        if ok {
            Ok(robot)
        } else {
            Err(AccountError::NotFound(format!("robot {id} not found")))
        }
    }

    pub async fn list_robots(
        &self,
        who: &Who,
        project: Option<&ProjectKey>,
        page: Page,
    ) -> Result<(Vec<Robot>, u64)> {
        Self::require_login(who)?;
        match project {
            Some(key) => {
                let a = self.project_for(who, key, Permission::ListRobots).await?;
                Ok(self
                    .meta
                    .list_robots(Some(Some(a.project.id)), page)
                    .await?)
            }
            None => {
                Self::require_admin(who).or_else(|e| match who {
                    Who::System => Ok(()),
                    _ => Err(e),
                })?;
                Ok(self.meta.list_robots(Some(None), page).await?)
            }
        }
    }

    /// Change a robot's description, state, expiry or permissions (under the same
    /// no-escalation check as creation).
    pub async fn update_robot(
        &self,
        who: &Who,
        id: i64,
        description: Option<String>,
        disable: Option<bool>,
        duration: Option<i64>,
        permissions: Option<Vec<RobotPermission>>,
    ) -> Result<()> {
        let robot = self.robot(who, id).await?;
        self.may_manage_robots(who, robot.project_id).await?;
        if let Some(perms) = &permissions {
            if let Some(pid) = robot.project_id {
                let project = self
                    .meta
                    .project_by_id(pid)
                    .await?
                    .map(|p| p.name)
                    .unwrap_or_default();
                if perms.len() != 1 || perms[0].namespace != project {
                    return Err(AccountError::Invalid(format!(
                        "a project robot has exactly one permission entry, naming its project {project}"
                    )));
                }
            }
            self.check_permissions(who, perms).await?;
        }
        let changes = RobotChanges {
            description,
            disabled: disable,
            expires_at: duration.map(expiry).transpose()?,
            permissions: permissions
                .map(|p| {
                    serde_json::to_string(&p).map_err(|e| AccountError::Internal(e.to_string()))
                })
                .transpose()?,
        };
        self.meta.update_robot(id, &changes).await?;
        Ok(())
    }

    /// Set a robot's secret (`Some`, checked for strength) or make a new one (returned).
    pub async fn refresh_robot_secret(
        &self,
        who: &Who,
        id: i64,
        secret: Option<String>,
    ) -> Result<Option<String>> {
        let robot = self.robot(who, id).await?;
        self.may_manage_robots(who, robot.project_id).await?;
        let (secret, generated) = match secret.filter(|s| !s.is_empty()) {
            Some(s) => {
                check_robot_secret(&s)?;
                (s, false)
            }
            None => (password::random_secret(32), true),
        };
        let hash = password::hash(&secret)
            .await
            .map_err(AccountError::Internal)?;
        self.meta.set_robot_secret(id, &hash).await?;
        Ok(generated.then_some(secret))
    }

    pub async fn delete_robot(&self, who: &Who, id: i64) -> Result<()> {
        let robot = self.robot(who, id).await?;
        self.may_manage_robots(who, robot.project_id).await?;
        self.meta.delete_robot(id).await?;
        Ok(())
    }
}

/// How an API path names a project.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProjectKey {
    Name(String),
    Id(i64),
}

impl std::fmt::Display for ProjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProjectKey::Name(n) => f.write_str(n),
            ProjectKey::Id(id) => write!(f, "{id}"),
        }
    }
}

/// Who a new membership is for.
#[derive(Debug, Clone)]
pub enum MemberTarget {
    UserId(i64),
    UserName(String),
    Group(String),
}

/// The expiry of a robot `duration` days from now (-1 never, 0 the default).
fn expiry(duration: i64) -> Result<Option<i64>> {
    match duration {
        -1 => Ok(None),
        0 => Ok(Some(crate::meta::now() + DEFAULT_ROBOT_DAYS * 86_400)),
        d if d > 0 && d < 100_000 => Ok(Some(crate::meta::now() + d * 86_400)),
        d => Err(AccountError::Invalid(format!(
            "duration {d} is not a number of days (-1 for never, 0 for the default {DEFAULT_ROBOT_DAYS})"
        ))),
    }
}

fn creator_of(who: &Who) -> String {
    match who {
        Who::User { user, .. } => format!("user:{}", user.username),
        Who::Robot { robot, .. } => format!("robot:{}", robot.id),
        Who::System => "system:cli".into(),
        Who::Anonymous => "anonymous".into(),
    }
}

/// Harbor's rule for a robot secret set by hand: 8 to 128 characters, with a lower-case
/// letter, an upper-case letter and a digit.
fn check_robot_secret(secret: &str) -> Result<()> {
    let n = secret.chars().count();
    if (8..=128).contains(&n)
        && secret.chars().any(|c| c.is_ascii_lowercase())
        && secret.chars().any(|c| c.is_ascii_uppercase())
        && secret.chars().any(|c| c.is_ascii_digit())
    {
        Ok(())
    } else {
        Err(AccountError::Invalid(
            "a robot secret needs 8 to 128 characters with a lower-case letter, an upper-case letter and a digit".into(),
        ))
    }
}

/// A user name: 1 to 255 characters, none of them a control character or one of
/// `,"~#%$:/` (Harbor refuses the first ones; `:` would break Basic credentials and
/// `/` paths).
pub fn check_username(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.chars().count() <= 255
        && !name
            .chars()
            .any(|c| c.is_control() || ",\"~#%$:/ ".contains(c));
    if ok {
        Ok(())
    } else {
        Err(AccountError::Invalid(format!(
            "{name:?} is not a valid user name: 1 to 255 characters, without spaces or any of , \" ~ # % $ : /"
        )))
    }
}

/// The viewer of a user (for listing what they see).
pub fn viewer_of(user: &User) -> Viewer {
    Viewer {
        user_id: Some(user.id),
        groups: Vec::new(),
    }
}
