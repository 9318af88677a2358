//! The metadata of multi-tenancy: users, projects and their members, robot accounts,
//! token signing keys and the audit log. Rows and questions only: who may do what is
//! decided in `auth/`, never here. Secrets arrive hashed.

use super::Result;

/// A page of a listing: skip `offset` rows, return at most `limit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub offset: u64,
    pub limit: u32,
}

impl Page {
    pub fn all() -> Page {
        Page {
            offset: 0,
            limit: u32::MAX,
        }
    }
}

/// A unique name is taken: nothing was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conflict;

/// Where a user's identity is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserSource {
    /// A local user with a bcrypt password hash.
    Local,
    /// A directory user: the password is checked by LDAP, never stored.
    Ldap,
}

impl UserSource {
    pub fn as_str(self) -> &'static str {
        match self {
            UserSource::Local => "local",
            UserSource::Ldap => "ldap",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: i64,
    pub username: String,
    pub email: String,
    pub realname: String,
    pub comment: String,
    /// A system administrator.
    pub admin: bool,
    pub source: UserSource,
    /// bcrypt hash; `None` for directory users.
    pub password_hash: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewUser {
    pub username: String,
    pub email: String,
    pub realname: String,
    pub comment: String,
    pub admin: bool,
    pub source: UserSource,
    pub password_hash: Option<String>,
}

/// Profile fields to change; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserChanges {
    pub email: Option<String>,
    pub realname: Option<String>,
    pub comment: Option<String>,
}

#[async_trait::async_trait]
pub trait Users: Send + Sync {
    /// A user named `username` already existing is a [`Conflict`] (names compare
    /// exactly; the caller lower-cases them).
    async fn create_user(&self, user: &NewUser) -> Result<std::result::Result<User, Conflict>>;
    async fn user_by_name(&self, username: &str) -> Result<Option<User>>;
    async fn user_by_id(&self, id: i64) -> Result<Option<User>>;
    /// Users whose name contains `name_contains` (all when `None`), by id, and the
    /// total count of matches.
    async fn list_users(&self, name_contains: Option<&str>, page: Page)
        -> Result<(Vec<User>, u64)>;
    /// `false` when there is no such user.
    async fn update_user(&self, id: i64, changes: &UserChanges) -> Result<bool>;
    async fn set_password(&self, id: i64, password_hash: &str) -> Result<bool>;
    async fn set_admin(&self, id: i64, admin: bool) -> Result<bool>;
    /// Delete the user and, in the same transaction, their memberships. Robots they
    /// created stay (they carry their own permissions). `false` when absent.
    async fn delete_user(&self, id: i64) -> Result<bool>;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Project {
    pub id: i64,
    pub name: String,
    /// Anyone (anonymous included) may pull.
    pub public: bool,
    /// The user who created it; `None` when created by configuration or a robot, or
    /// when the owner was deleted.
    pub owner_id: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
    /// Client networks that may push and delete here, comma-separated CIDRs (empty:
    /// no restriction of the project's own; its meaning belongs to `auth/`).
    pub push_networks: String,
}

/// Who a membership is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberEntity {
    /// A user, by id.
    User(i64),
    /// A directory group, by its name (the group's DN for LDAP).
    Group(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: i64,
    pub project_id: i64,
    pub entity: MemberEntity,
    /// The user's name, or the group's.
    pub entity_name: String,
    /// Harbor's role id: 1 project admin, 2 developer, 3 guest, 4 maintainer, 5 limited
    /// guest.
    pub role: u8,
}

/// Which projects a listing shows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProjectFilter {
    pub name_contains: Option<String>,
    pub public: Option<bool>,
    /// Only public projects and those where this user (or one of these groups) is a
    /// member; `None`: every project (an administrator's view).
    pub visible_to: Option<Viewer>,
}

/// A principal's identities for membership questions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Viewer {
    pub user_id: Option<i64>,
    pub groups: Vec<String>,
}

/// A project and the roles a principal holds in it (direct and through groups).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectAccess {
    pub project: Project,
    pub roles: Vec<u8>,
}

/// What [`Projects::delete_project`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProjectDeletion {
    Deleted,
    NotFound,
    /// It still holds this many repositories: nothing was deleted.
    NotEmpty(u64),
}

#[async_trait::async_trait]
pub trait Projects: Send + Sync {
    /// Create a project; with an owner, make them its project admin (role 1) in the same
    /// transaction.
    async fn create_project(
        &self,
        name: &str,
        public: bool,
        owner: Option<i64>,
    ) -> Result<std::result::Result<Project, Conflict>>;
    async fn project_by_name(&self, name: &str) -> Result<Option<Project>>;
    async fn project_by_id(&self, id: i64) -> Result<Option<Project>>;
    /// Projects by name, and the total count of matches.
    async fn list_projects(
        &self,
        filter: &ProjectFilter,
        page: Page,
    ) -> Result<(Vec<Project>, u64)>;
    async fn set_project_public(&self, id: i64, public: bool) -> Result<bool>;
    /// Set the project's push network allowlist (comma-separated CIDRs; empty: none).
    async fn set_project_push_networks(&self, id: i64, networks: &str) -> Result<bool>;
    /// Delete a project with its memberships and project robots, unless a repository
    /// named `<project>/...` exists (checked in the same transaction).
    async fn delete_project(&self, id: i64) -> Result<ProjectDeletion>;
    /// The project named `name` and the viewer's roles in it, in one query (the check of
    /// every request); `None` when no such project exists.
    async fn project_access(&self, name: &str, viewer: &Viewer) -> Result<Option<ProjectAccess>>;
    /// Names of the projects the viewer may see (public ones and those with a role), for
    /// filtering listings.
    async fn visible_projects(&self, viewer: &Viewer) -> Result<Vec<String>>;
    /// How many repositories are named `<project>/...`.
    async fn repository_count(&self, project: &str) -> Result<u64>;
}

#[async_trait::async_trait]
pub trait Members: Send + Sync {
    /// The entity already being a member is a [`Conflict`]; a user id that does not exist
    /// is an error of the caller's making and returns `Ok(Err(Conflict))` too only if
    /// a member row exists (check users first).
    async fn add_member(
        &self,
        project_id: i64,
        entity: &MemberEntity,
        role: u8,
    ) -> Result<std::result::Result<Member, Conflict>>;
    /// Members whose name contains `name_contains`, by id, and the total count.
    async fn list_members(
        &self,
        project_id: i64,
        name_contains: Option<&str>,
        page: Page,
    ) -> Result<(Vec<Member>, u64)>;
    async fn member(&self, project_id: i64, member_id: i64) -> Result<Option<Member>>;
    async fn set_member_role(&self, project_id: i64, member_id: i64, role: u8) -> Result<bool>;
    async fn remove_member(&self, project_id: i64, member_id: i64) -> Result<bool>;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Robot {
    pub id: i64,
    /// The name given at creation, without prefix or project (`ci`).
    pub name: String,
    pub description: String,
    /// A project robot's project; `None` for a system robot.
    pub project_id: Option<i64>,
    /// bcrypt hash of the secret.
    pub secret_hash: String,
    pub disabled: bool,
    /// Unix seconds; `None` never expires.
    pub expires_at: Option<i64>,
    /// The permission list as JSON (its shape belongs to `auth/`).
    pub permissions: String,
    /// Who created it (`user:alice`, `robot:12`), for the record.
    pub creator: String,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRobot {
    pub name: String,
    pub description: String,
    pub project_id: Option<i64>,
    pub secret_hash: String,
    pub disabled: bool,
    pub expires_at: Option<i64>,
    pub permissions: String,
    pub creator: String,
}

/// Robot fields to change; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RobotChanges {
    pub description: Option<String>,
    pub disabled: Option<bool>,
    pub expires_at: Option<Option<i64>>,
    pub permissions: Option<String>,
}

#[async_trait::async_trait]
pub trait Robots: Send + Sync {
    /// Names are unique per project (and among system robots).
    async fn create_robot(&self, robot: &NewRobot) -> Result<std::result::Result<Robot, Conflict>>;
    async fn robot_by_id(&self, id: i64) -> Result<Option<Robot>>;
    async fn robot_by_name(&self, project_id: Option<i64>, name: &str) -> Result<Option<Robot>>;
    /// Robots of one project (`Some(Some(id))`), the system robots (`Some(None)`), or
    /// all (`None`), by id, and the total count.
    async fn list_robots(
        &self,
        project_id: Option<Option<i64>>,
        page: Page,
    ) -> Result<(Vec<Robot>, u64)>;
    async fn update_robot(&self, id: i64, changes: &RobotChanges) -> Result<bool>;
    async fn set_robot_secret(&self, id: i64, secret_hash: &str) -> Result<bool>;
    async fn delete_robot(&self, id: i64) -> Result<bool>;
}

/// A key the token service signs with, kept in the database so every node of a
/// cluster signs and verifies with the same keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningKey {
    /// The key id tokens name in their `kid` header.
    pub kid: String,
    /// PKCS#8 private key, PEM.
    pub private_pem: String,
    /// Self-signed certificate of the public key, PEM (what a registry:2 that trusts
    /// Berth's tokens puts in `auth.token.rootcertbundle`).
    pub cert_pem: String,
    pub created_at: i64,
    /// Since when it no longer signs (still verifies until tokens it signed expire).
    pub retired_at: Option<i64>,
}

#[async_trait::async_trait]
pub trait TokenKeys: Send + Sync {
    /// Every key, newest first.
    async fn signing_keys(&self) -> Result<Vec<SigningKey>>;
    /// Store `key` as the signing key, unless one that is not retired exists already
    /// (several nodes starting at once: one wins). Returns whether it was stored.
    async fn add_first_signing_key(&self, key: &SigningKey) -> Result<bool>;
    /// Retire the current keys and store `key` in one transaction (rotation).
    async fn rotate_signing_key(&self, key: &SigningKey, at: i64) -> Result<()>;
    /// Forget keys retired before `before`.
    async fn drop_retired_keys(&self, before: i64) -> Result<u64>;
}

/// One audited action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// Unix milliseconds.
    pub time_ms: i64,
    /// `alice`, `robot$team+ci`, or `anonymous`.
    pub principal: String,
    /// The client's address.
    pub client: String,
    /// `repository`, `artifact`, `tag`, `project`, `user`, `member`, `robot`, `token`,
    /// `login`.
    pub resource_type: String,
    /// What was acted on (`team/app:1.0`, `team/app@sha256:...`, `team`, `alice`).
    pub resource: String,
    /// The project it belongs to, for project logs.
    pub project: Option<String>,
    /// `pull`, `push`, `delete`, `create`, `update`, `login`, `issue`...
    pub operation: String,
    /// `success`, or why not (`denied`, `unauthorized`, `failed`).
    pub result: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub id: i64,
    pub record: AuditRecord,
}

/// Filters of an audit query; every set field must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    pub project: Option<String>,
    /// Only entries of one of these projects (a non-administrator's view).
    pub projects: Option<Vec<String>>,
    /// Exact principal name.
    pub principal: Option<String>,
    pub operation: Option<String>,
    pub resource_type: Option<String>,
    /// Substring of the resource.
    pub resource_contains: Option<String>,
    /// Unix milliseconds, inclusive.
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
}

#[async_trait::async_trait]
pub trait Audit: Send + Sync {
    /// Append records in one transaction.
    async fn record_audit(&self, records: &[AuditRecord]) -> Result<()>;
    /// Matching entries, newest first, and the total count.
    async fn audit_log(&self, query: &AuditQuery, page: Page) -> Result<(Vec<AuditEntry>, u64)>;
    /// Drop at most `limit` entries older than `before_ms`; how many went.
    async fn prune_audit(&self, before_ms: i64, limit: u32) -> Result<u64>;
}
