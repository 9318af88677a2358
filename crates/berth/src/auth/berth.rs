//! Berth's own access control (`auth.berth`): users, projects with Harbor's roles,
//! robot accounts, and the token service that hands out the JWTs registry clients
//! use. Authentication: Basic (users and robots, straight to `/v2/` or to the token
//! endpoint; directory users through [`super::ldap`]), Bearer (tokens this service
//! signed), or anonymous (public projects). Authorization: [`allows`], a pure function
//! over the principal and its roles or robot permissions in a project, used by
//! registry requests, token requests and the management API alike. Signing keys live
//! in the metadata database, so every node of a cluster signs and verifies with the
//! same ones. Knows nothing of HTTP.

use super::ldap::{Directory, DirectoryUser, LdapError, LdapSettings};
use super::password::{self, Checker};
use super::rbac::{robot_allows, Permission, RobotPermission, Role};
use super::scope::{covers, intersect, Scope};
use super::token::{self, Issued, Signer, Verifier};
use super::{
    AccessControl, AccessRequest, AuthError, Credentials, Decision, Principal, PrincipalKind,
};
use crate::meta::{
    MetaError, MetaStore, NewUser, ProjectAccess, Robot, SigningKey, User, UserChanges, UserSource,
    Viewer,
};
use ipnet::IpNet;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// Who may create projects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProjectCreation {
    /// Every authenticated user (Harbor's default, `everyone`).
    Everyone,
    /// System administrators only (`adminonly`).
    AdminOnly,
}

/// The settings of `auth.berth`.
#[derive(Debug, Clone)]
pub struct BerthSettings {
    /// Where clients get tokens; `None`: `/service/token` on the host a request came to.
    pub realm: Option<String>,
    /// The token audience (`service` in challenges and token requests).
    pub service: String,
    /// The `iss` of the tokens Berth signs.
    pub issuer: String,
    /// How long an issued token is valid.
    pub token_ttl: Duration,
    /// How long a refresh token (OAuth2 `access_type=offline`) is valid.
    pub refresh_ttl: Duration,
    /// The first administrator's password (`adminpassword`, `BERTH_ADMIN_PASSWORD`);
    /// used only when `admin` is created.
    pub admin_password: Option<String>,
    pub project_creation: ProjectCreation,
    /// A push to a project that does not exist creates it, with the pusher as its
    /// project admin (when the pusher may create projects).
    pub create_projects_on_push: bool,
    /// Robot names start with this (`robot$`).
    pub robot_prefix: String,
    /// Client networks that may push and delete; empty: any.
    pub push_networks: Vec<IpNet>,
    /// Users may also log in with an LDAP directory's password.
    pub ldap: Option<LdapSettings>,
    /// The storage quota a new project gets (`storagequota`); `None`: no limit.
    pub storage_quota: Option<u64>,
}

impl Default for BerthSettings {
    fn default() -> Self {
        BerthSettings {
            realm: None,
            service: "berth-registry".into(),
            issuer: "berth-token-issuer".into(),
            token_ttl: Duration::from_secs(30 * 60),
            refresh_ttl: Duration::from_secs(30 * 24 * 3600),
            admin_password: None,
            project_creation: ProjectCreation::Everyone,
            create_projects_on_push: false,
            robot_prefix: "robot$".into(),
            push_networks: Vec::new(),
            ldap: None,
            storage_quota: None,
        }
    }
}

/// An authenticated identity, with what decisions need.
#[derive(Debug, Clone)]
pub enum Who {
    Anonymous,
    /// The command line (`berth user add`...): whoever can read the configuration and
    /// its database already holds everything.
    System,
    User {
        user: User,
        /// Directory groups (LDAP), for group memberships.
        groups: Vec<String>,
    },
    Robot {
        robot: Robot,
        /// The name the robot logs in with (`robot$team+ci`).
        full_name: String,
        permissions: Vec<RobotPermission>,
    },
}

impl Who {
    pub fn principal(&self) -> Principal {
        match self {
            Who::Anonymous => Principal::anonymous(),
            Who::System => Principal::named("system"),
            Who::User { user, .. } => Principal {
                name: user.username.clone(),
                kind: PrincipalKind::User {
                    id: user.id,
                    admin: user.admin,
                },
            },
            Who::Robot {
                robot, full_name, ..
            } => Principal {
                name: full_name.clone(),
                kind: PrincipalKind::Robot { id: robot.id },
            },
        }
    }

    pub fn viewer(&self) -> Viewer {
        match self {
            Who::User { user, groups } => Viewer {
                user_id: Some(user.id),
                groups: groups.clone(),
            },
            _ => Viewer::default(),
        }
    }

    /// A system administrator (or the command line).
    pub fn is_admin(&self) -> bool {
        matches!(self, Who::System) || matches!(self, Who::User { user, .. } if user.admin)
    }
}

/// Whether `who` may do `p` in the project of `access`. The one decision function:
/// registry requests, token requests and the management API all ask it.
pub fn allows(who: &Who, access: &ProjectAccess, p: Permission) -> bool {
    if access.project.public && matches!(p, Permission::Pull | Permission::Read) {
        return true;
    }
    match who {
        Who::Anonymous => false,
        Who::System => true,
        Who::User { user, .. } if user.admin => true,
        Who::User { .. } => access
            .roles
            .iter()
            .filter_map(|r| Role::from_id(*r))
            .any(|r| r.allows(p)),
        Who::Robot {
            robot, permissions, ..
        } => {
            // A project robot acts in its own project only, whatever its list says.
            // Seeing a project (and listing it) comes with any permission in it.
            robot.project_id.is_none_or(|id| id == access.project.id)
                && (robot_allows(permissions, &access.project.name, p)
                    || (p == Permission::Read
                        && Permission::ALL
                            .into_iter()
                            .any(|q| robot_allows(permissions, &access.project.name, q))))
        }
    }
}

/// The registry permission a scope action needs.
fn permission_of_action(action: &str) -> Option<Permission> {
    match action {
        "pull" => Some(Permission::Pull),
        "push" => Some(Permission::Push),
        "delete" => Some(Permission::DeleteArtifact),
        _ => None,
    }
}

struct Keys {
    signer: Signer,
    verifier: Verifier,
    /// The current key's certificate (for a registry:2 that trusts Berth's tokens).
    cert_pem: String,
}

/// `auth.berth`.
pub struct BerthAccess {
    meta: Arc<dyn MetaStore>,
    settings: BerthSettings,
    passwords: Checker,
    /// `auth.berth.ldap`.
    directory: Option<Directory>,
    keys: RwLock<Arc<Keys>>,
    /// When keys were last read from the database (a token of a key another node
    /// rotated to makes this node read them again, at most once a second).
    keys_read: Mutex<Instant>,
    /// Principals of tokens, by subject, for a short while: a token stays valid only
    /// while its user exists and its robot is enabled and unexpired, and looking that
    /// up on every request would cost a query each.
    subjects: Recent<Who>,
    /// Projects as anonymous callers see them, for a short while: an anonymous pull of a
    /// public project would otherwise cost a query each.
    anonymous_projects: Recent<Option<ProjectAccess>>,
}

impl std::fmt::Debug for BerthAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BerthAccess")
            .field("service", &self.settings.service)
            .finish_non_exhaustive()
    }
}

/// Answers trusted for [`SUBJECT_TTL`] without asking the database again, by name;
/// emptied whole when it holds more than 10,000.
struct Recent<V>(Mutex<HashMap<String, (Instant, V)>>);

impl<V> Default for Recent<V> {
    fn default() -> Self {
        Recent(Mutex::new(HashMap::new()))
    }
}

impl<V: Clone> Recent<V> {
    fn get(&self, key: &str) -> Option<V> {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.get(key)
            .filter(|(at, _)| at.elapsed() < SUBJECT_TTL)
            .map(|(_, v)| v.clone())
    }

    fn put(&self, key: &str, value: V) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > 10_000 {
            map.clear();
        }
        map.insert(key.to_string(), (Instant::now(), value));
    }

    fn forget(&self, key: &str) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
    }
}

/// How often the token service reads the signing keys again, so that a rotation made
/// by another node or the CLI is followed.
const KEY_REFRESH: Duration = Duration::from_secs(5);

/// How long a token's subject is trusted without asking the database again: the most
/// a deleted user or a disabled robot keeps working with a token already issued.
const SUBJECT_TTL: Duration = Duration::from_secs(2);

fn meta_err(e: MetaError) -> AuthError {
    AuthError::Store(format!("metadata database: {e}"))
}

impl BerthAccess {
    /// Set up: create the administrator and the signing key on first start, load keys.
    pub async fn open(
        meta: Arc<dyn MetaStore>,
        settings: BerthSettings,
    ) -> Result<BerthAccess, AuthError> {
        let directory = match &settings.ldap {
            Some(l) => {
                Some(Directory::new(l.clone()).map_err(|e| AuthError::Store(format!("ldap.{e}")))?)
            }
            None => None,
        };
        ensure_admin(meta.as_ref(), settings.admin_password.as_deref()).await?;
        let key = generate(&settings)?;
        meta.add_first_signing_key(&key).await.map_err(meta_err)?;
        let keys = load_keys(meta.as_ref(), &settings).await?;
        Ok(BerthAccess {
            meta,
            settings,
            passwords: Checker::default(),
            directory,
            keys: RwLock::new(Arc::new(keys)),
            keys_read: Mutex::new(Instant::now()),
            subjects: Recent::default(),
            anonymous_projects: Recent::default(),
        })
    }

    pub fn settings(&self) -> &BerthSettings {
        &self.settings
    }

    /// The certificate of the current signing key, PEM.
    pub fn signing_certificate(&self) -> String {
        self.keys().cert_pem.clone()
    }

    fn keys(&self) -> Arc<Keys> {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Read the keys again (another node, or `berth token rotate`, rotated), unless
    /// they were read less than `age` ago.
    async fn reload_keys_older_than(&self, age: Duration) -> Result<bool, AuthError> {
        {
            let mut last = self.keys_read.lock().unwrap_or_else(|p| p.into_inner());
            if last.elapsed() < age {
                return Ok(false);
            }
            *last = Instant::now();
        }
        let keys = load_keys(self.meta.as_ref(), &self.settings).await?;
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(keys);
        Ok(true)
    }

    /// Retire the current signing key and sign with a new one from now on; tokens of
    /// the old key stay valid until they expire.
    pub async fn rotate_key(&self) -> Result<String, AuthError> {
        let key = generate(&self.settings)?;
        self.meta
            .rotate_signing_key(&key, crate::meta::now())
            .await
            .map_err(meta_err)?;
        let keys = load_keys(self.meta.as_ref(), &self.settings).await?;
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(keys);
        Ok(key.kid)
    }

    /// Who presented `credentials`: a token of this service, Basic credentials of a
    /// user or robot, or nobody (anonymous). The management API's entry.
    pub async fn who(&self, credentials: &Credentials) -> Result<Who, AuthError> {
        match credentials {
            Credentials::Bearer(t) => self.verify(t).await.map(|(who, _)| who),
            c => self.authenticate(c).await,
        }
    }

    /// Authenticate Basic credentials (a user or a robot), or none (anonymous).
    pub async fn authenticate(&self, credentials: &Credentials) -> Result<Who, AuthError> {
        match credentials {
            Credentials::None => Ok(Who::Anonymous),
            Credentials::Bearer(_) => Err(AuthError::Unauthenticated),
            Credentials::Basic { user, password } => {
                if let Some(rest) = user.strip_prefix(&self.settings.robot_prefix) {
                    return self.authenticate_robot(user, rest, password).await;
                }
                let found = self.meta.user_by_name(user).await.map_err(meta_err)?;
                if let Some(directory) = &self.directory {
                    // A local user with a password is never looked up in the directory:
                    // `admin` keeps its password, and no directory entry takes a local
                    // account over.
                    let local = found.as_ref().is_some_and(|u| {
                        u.source == UserSource::Local && u.password_hash.is_some()
                    });
                    if !local {
                        return self.authenticate_ldap(directory, user, password).await;
                    }
                }
                let hash = found.as_ref().and_then(|u| u.password_hash.clone());
                if self.passwords.check(user, password, hash.as_deref()).await {
                    if let Some(u) = found {
                        return Ok(Who::User {
                            user: u,
                            groups: Vec::new(),
                        });
                    }
                }
                tracing::info!(user = %user, "authentication failed for user {user:?}: wrong password or unknown user");
                Err(AuthError::Unauthenticated)
            }
        }
    }

    /// A directory login: the user record is created on the first one (source LDAP, no
    /// password), its groups come from the directory.
    async fn authenticate_ldap(
        &self,
        directory: &Directory,
        name: &str,
        password: &str,
    ) -> Result<Who, AuthError> {
        let entry = match directory.login(name, password).await {
            Ok(entry) => entry,
            Err(LdapError::Refused(why)) => {
                tracing::info!(user = %name, "authentication failed for user {name:?} (LDAP): {why}");
                return Err(AuthError::Unauthenticated);
            }
            Err(LdapError::Unavailable(why)) => {
                return Err(AuthError::Store(format!("LDAP directory: {why}")));
            }
        };
        let user = self.directory_user(&entry).await?;
        Ok(Who::User {
            user,
            groups: entry.groups,
        })
    }

    /// The Berth user of a directory entry, created on its first login (and its email
    /// and name kept as the directory has them).
    async fn directory_user(&self, entry: &DirectoryUser) -> Result<User, AuthError> {
        let name = &entry.username;
        let refuse = |why: &str| {
            tracing::warn!(user = %name, "LDAP user {name:?} ({}) not logged in: {why}", entry.dn);
            AuthError::Unauthenticated
        };
        if super::accounts::check_username(name).is_err()
            || name.starts_with(&self.settings.robot_prefix)
        {
            return Err(refuse("the name is not one a Berth user may have"));
        }
        for attempt in 0..2 {
            match self.meta.user_by_name(name).await.map_err(meta_err)? {
                Some(u) if u.source == UserSource::Ldap => {
                    let changes = UserChanges {
                        email: (u.email != entry.email).then(|| entry.email.clone()),
                        realname: (u.realname != entry.realname).then(|| entry.realname.clone()),
                        comment: None,
                    };
                    if changes.email.is_none() && changes.realname.is_none() {
                        return Ok(u);
                    }
                    self.meta
                        .update_user(u.id, &changes)
                        .await
                        .map_err(meta_err)?;
                    return Ok(User {
                        email: entry.email.clone(),
                        realname: entry.realname.clone(),
                        ..u
                    });
                }
                Some(_) => {
                    return Err(refuse(
                        "a local user has that name (a directory login never takes over a local account)",
                    ))
                }
                None if attempt == 0 => {
                    let created = self
                        .meta
                        .create_user(&NewUser {
                            username: name.clone(),
                            email: entry.email.clone(),
                            realname: entry.realname.clone(),
                            comment: format!("LDAP: {}", entry.dn),
                            admin: false,
                            source: UserSource::Ldap,
                            password_hash: None,
                        })
                        .await
                        .map_err(meta_err)?;
                    if let Ok(u) = created {
                        tracing::info!(user = %name, "created user {name:?} on the first login through LDAP ({})", entry.dn);
                        return Ok(u);
                    }
                    // Created meanwhile by a concurrent login: read it again.
                }
                None => break,
            }
        }
        Err(AuthError::Store(format!(
            "the LDAP user {name:?} could be neither created nor found"
        )))
    }

    /// `who` with its directory groups (a user of the directory; anyone else as is):
    /// what a decision made anew from a token's subject needs (a refresh, the
    /// catalog). `None` when the directory no longer has the user.
    async fn with_groups(&self, who: Who) -> Result<Option<Who>, AuthError> {
        let (Some(directory), Who::User { user, .. }) = (&self.directory, &who) else {
            return Ok(Some(who));
        };
        if user.source != UserSource::Ldap {
            return Ok(Some(who));
        }
        match directory.lookup(&user.username).await {
            Ok(Some(entry)) => Ok(Some(Who::User {
                user: user.clone(),
                groups: entry.groups,
            })),
            Ok(None) => {
                tracing::info!(user = %user.username, "LDAP user {:?} is no longer in the directory", user.username);
                Ok(None)
            }
            Err(e) => Err(AuthError::Store(format!("LDAP directory: {e}"))),
        }
    }

    async fn authenticate_robot(
        &self,
        full: &str,
        rest: &str,
        secret: &str,
    ) -> Result<Who, AuthError> {
        let who = self.robot_named(full, rest).await?;
        let hash = match &who {
            Some(Who::Robot { robot, .. }) => Some(robot.secret_hash.clone()),
            _ => None,
        };
        if self.passwords.check(full, secret, hash.as_deref()).await {
            if let Some(w) = who {
                return Ok(w);
            }
        }
        tracing::info!(user = %full, "authentication failed for robot {full:?}: wrong secret, unknown, disabled or expired");
        Err(AuthError::Unauthenticated)
    }

    /// The robot `full` (`<prefix>project+name` or `<prefix>name`), if it exists, is
    /// enabled and has not expired.
    async fn robot_named(&self, full: &str, rest: &str) -> Result<Option<Who>, AuthError> {
        let (project_id, name) = match rest.split_once('+') {
            Some((project, name)) => {
                let Some(p) = self.meta.project_by_name(project).await.map_err(meta_err)? else {
                    return Ok(None);
                };
                (Some(p.id), name)
            }
            None => (None, rest),
        };
        let Some(robot) = self
            .meta
            .robot_by_name(project_id, name)
            .await
            .map_err(meta_err)?
        else {
            return Ok(None);
        };
        if robot.disabled || robot.expires_at.is_some_and(|t| t <= crate::meta::now()) {
            return Ok(None);
        }
        let permissions: Vec<RobotPermission> = serde_json::from_str(&robot.permissions)
            .map_err(|e| AuthError::Store(format!("robot {full}: stored permissions: {e}")))?;
        Ok(Some(Who::Robot {
            robot,
            full_name: full.to_string(),
            permissions,
        }))
    }

    /// The principal a token names, if it still exists and may still act.
    async fn subject(&self, sub: &str) -> Result<Option<Who>, AuthError> {
        if sub.is_empty() {
            return Ok(Some(Who::Anonymous));
        }
        if let Some(who) = self.subjects.get(sub) {
            return Ok(Some(who));
        }
        let who = match sub.strip_prefix(&self.settings.robot_prefix) {
            Some(rest) => self.robot_named(sub, rest).await?,
            None => self
                .meta
                .user_by_name(sub)
                .await
                .map_err(meta_err)?
                .map(|user| Who::User {
                    user,
                    groups: Vec::new(),
                }),
        };
        match &who {
            Some(w) => self.subjects.put(sub, w.clone()),
            None => self.subjects.forget(sub),
        }
        Ok(who)
    }

    /// Verify a token this service signed (reading keys again once if its key is new
    /// here) and return its subject and claims.
    async fn verify(&self, token: &str) -> Result<(Who, token::Claims), AuthError> {
        let now = crate::meta::now();
        let claims = match self.keys().verifier.verify(token, now) {
            Ok(c) => c,
            Err(token::TokenError::UntrustedKey(_))
                if self.reload_keys_older_than(Duration::from_secs(1)).await? =>
            {
                self.keys()
                    .verifier
                    .verify(token, now)
                    .map_err(|e| AuthError::InvalidToken(e.to_string()))?
            }
            Err(e) => return Err(AuthError::InvalidToken(e.to_string())),
        };
        let who = self.subject(&claims.sub).await?.ok_or_else(|| {
            AuthError::InvalidToken(format!(
                "the token's subject {:?} no longer exists, is disabled or has expired",
                claims.sub
            ))
        })?;
        Ok((who, claims))
    }

    /// The storage quota a new project gets.
    pub fn default_quota(&self) -> Option<u64> {
        self.settings.storage_quota
    }

    /// Whether `who` may create projects.
    pub fn may_create_projects(&self, who: &Who) -> bool {
        match who {
            Who::System => true,
            Who::User { user, .. } => {
                user.admin || self.settings.project_creation == ProjectCreation::Everyone
            }
            _ => false,
        }
    }

    /// The scopes of `wanted` that `who` holds. With `create`, a push to a project that
    /// does not exist creates it when settings and the pusher allow; without, such a
    /// push is granted if it would be (the token endpoint: the push itself creates it).
    pub async fn decide(
        &self,
        who: &Who,
        wanted: &[Scope],
        create: bool,
    ) -> Result<Vec<Scope>, AuthError> {
        let mut granted = Vec::new();
        for w in wanted {
            match (w.kind.as_str(), w.name.as_str()) {
                ("registry", "catalog") if !matches!(who, Who::Anonymous) => {
                    granted.push(Scope::catalog());
                }
                ("repository", name) => {
                    let Some((project, _)) = name.split_once('/') else {
                        continue;
                    };
                    let wants_push = w.allows("push");
                    let access = match self.project_access(who, project).await? {
                        Some(a) => a,
                        None if wants_push
                            && self.settings.create_projects_on_push
                            && self.may_create_projects(who) =>
                        {
                            if !create {
                                granted.push(Scope::repository(name, ["pull", "push"]));
                                continue;
                            }
                            match self.create_project_for(who, project).await? {
                                Some(a) => a,
                                None => continue,
                            }
                        }
                        None => continue,
                    };
                    let held: Vec<&str> = ["pull", "push", "delete"]
                        .into_iter()
                        .filter(|a| {
                            permission_of_action(a).is_some_and(|p| allows(who, &access, p))
                        })
                        .collect();
                    let mut held_scope = Scope::repository(name, held.iter().copied());
                    if held.len() == 3 {
                        held_scope.actions.push("*".into());
                    }
                    if let Some(s) = intersect(&[held_scope], w) {
                        granted.push(s);
                    }
                }
                _ => {}
            }
        }
        Ok(granted)
    }

    /// Say why a push was refused when the reason tells nothing the caller may not know:
    /// the name has no project part, or the project does not exist.
    async fn explain_refusal(&self, wanted: &[Scope], granted: &[Scope]) -> Result<(), AuthError> {
        for w in wanted {
            if w.kind != "repository" || !w.allows("push") || super::scope::covers(granted, w) {
                continue;
            }
            match w.name.split_once('/') {
                None => {
                    return Err(AuthError::Denied(format!(
                        "repository names start with a project: push to PROJECT/{} (berth project list, or GET /api/v2.0/projects, shows the projects)",
                        w.name
                    )))
                }
                Some((project, _)) => {
                    if self.meta.project_by_name(project).await.map_err(meta_err)?.is_none() {
                        return Err(AuthError::Denied(format!(
                            "project {project} does not exist: create it first (berth project create, or POST /api/v2.0/projects){}",
                            if self.settings.create_projects_on_push {
                                ""
                            } else {
                                ", or set auth.berth.createprojectsonpush to create projects on push"
                            }
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    /// A token may grant a push to a project that does not exist yet (the token
    /// endpoint grants it when the push would create the project): create it now, or,
    /// when it cannot be created (any more), take the push back, so no repository ever
    /// exists outside a project.
    async fn projects_for_pushes(
        &self,
        who: &Who,
        granted: Vec<Scope>,
    ) -> Result<Vec<Scope>, AuthError> {
        let mut out = Vec::with_capacity(granted.len());
        for mut g in granted {
            if g.kind == "repository" && g.allows("push") {
                let project = g.name.split_once('/').map(|(p, _)| p.to_string());
                let exists = match &project {
                    Some(p) => self
                        .meta
                        .project_by_name(p)
                        .await
                        .map_err(meta_err)?
                        .is_some(),
                    None => false,
                };
                if !exists {
                    let created = match &project {
                        Some(p)
                            if self.settings.create_projects_on_push
                                && self.may_create_projects(who) =>
                        {
                            self.create_project_for(who, p).await?.is_some()
                        }
                        _ => false,
                    };
                    if !created {
                        g.actions.retain(|a| a != "push" && a != "*");
                    }
                }
            }
            if !g.actions.is_empty() {
                out.push(g);
            }
        }
        Ok(out)
    }

    /// The project and `who`'s roles in it; for anonymous callers from a cache of
    /// [`SUBJECT_TTL`] (a project made private stops serving anonymous pulls within it).
    async fn project_access(
        &self,
        who: &Who,
        project: &str,
    ) -> Result<Option<ProjectAccess>, AuthError> {
        if !matches!(who, Who::Anonymous) {
            return self
                .meta
                .project_access(project, &who.viewer())
                .await
                .map_err(meta_err);
        }
        if let Some(a) = self.anonymous_projects.get(project) {
            return Ok(a);
        }
        let a = self
            .meta
            .project_access(project, &Viewer::default())
            .await
            .map_err(meta_err)?;
        self.anonymous_projects.put(project, a.clone());
        Ok(a)
    }

    /// Create `project` for a push of `who` (who becomes its project admin).
    async fn create_project_for(
        &self,
        who: &Who,
        project: &str,
    ) -> Result<Option<ProjectAccess>, AuthError> {
        let owner = match who {
            Who::User { user, .. } => Some(user.id),
            _ => None,
        };
        if check_project_name(project).is_err() {
            return Ok(None);
        }
        if let Ok(p) = self
            .meta
            .create_project(project, false, owner)
            .await
            .map_err(meta_err)?
        {
            tracing::info!(project, principal = %who.principal().display_name(), "created project {project:?} for a push (auth.berth.createprojectsonpush)");
            if self.settings.storage_quota.is_some() {
                self.meta
                    .set_quota(p.id, self.settings.storage_quota)
                    .await
                    .map_err(meta_err)?;
            }
        }
        self.meta
            .project_access(project, &who.viewer())
            .await
            .map_err(meta_err)
    }

    /// Whether a push or delete from `client` is allowed by `pushnetworks`.
    fn network_may_push(&self, client: Option<IpAddr>) -> Result<(), AuthError> {
        if self.settings.push_networks.is_empty() {
            return Ok(());
        }
        let allowed = client.is_some_and(|ip| in_networks(&self.settings.push_networks, ip));
        if allowed {
            Ok(())
        } else {
            Err(AuthError::Denied(format!(
                "pushes and deletes from {} are not allowed: only clients in auth.berth.pushnetworks may change content",
                client.map(|c| c.to_string()).unwrap_or_else(|| "this client".into())
            )))
        }
    }

    /// Whether each project a push or delete of `wanted` goes to lets `client` change
    /// its content (its own `pushnetworks`, when it has them).
    async fn project_networks_allow(
        &self,
        wanted: &[Scope],
        client: Option<IpAddr>,
    ) -> Result<(), AuthError> {
        for w in wanted {
            if w.kind != "repository" || !(w.allows("push") || w.allows("delete")) {
                continue;
            }
            let Some((project, _)) = w.name.split_once('/') else {
                continue;
            };
            let Some(p) = self.meta.project_by_name(project).await.map_err(meta_err)? else {
                continue;
            };
            if p.push_networks.trim().is_empty() {
                continue;
            }
            let networks = parse_networks(&p.push_networks).unwrap_or_default();
            if !client.is_some_and(|ip| in_networks(&networks, ip)) {
                return Err(AuthError::Denied(format!(
                    "pushes and deletes to project {project} from {} are not allowed: only clients in the project's push networks ({}) may change its content",
                    client.map(|c| c.to_string()).unwrap_or_else(|| "this client".into()),
                    p.push_networks
                )));
            }
        }
        Ok(())
    }

    /// Answer a token request: authenticate (anonymous allowed), grant the requested
    /// scopes the principal holds, sign. A refresh token (`refresh`) authenticates
    /// instead of credentials when given.
    pub async fn issue(&self, request: TokenRequest) -> Result<TokenAnswer, AuthError> {
        if let Some(s) = &request.service {
            if s != &self.settings.service {
                return Err(AuthError::Denied(format!(
                    "this token service issues tokens for service {:?}, not {s:?}",
                    self.settings.service
                )));
            }
        }
        let who = match &request.refresh_token {
            Some(t) => {
                let (who, claims) = self.verify(t).await?;
                if !claims.access.iter().any(|s| s.kind == REFRESH_KIND) {
                    return Err(AuthError::InvalidToken(
                        "this token is not a refresh token".into(),
                    ));
                }
                // The scopes are decided anew: with the groups the directory has now.
                self.with_groups(who).await?.ok_or_else(|| {
                    AuthError::InvalidToken(format!(
                        "the token's subject {:?} is no longer in the directory",
                        claims.sub
                    ))
                })?
            }
            None => self.authenticate(&request.credentials).await?,
        };
        // A key rotated elsewhere is signed with from here within seconds.
        self.reload_keys_older_than(KEY_REFRESH).await?;
        let wanted = super::scope::merge(request.scopes);
        let granted = self.decide(&who, &wanted, false).await?;
        let principal = who.principal();
        let keys = self.keys();
        let now = crate::meta::now();
        let sign = |access, ttl: Duration| {
            keys.signer
                .issue(&principal.name, access, now, ttl.as_secs())
                .map_err(|e| AuthError::Store(e.to_string()))
        };
        let issued = sign(granted, self.settings.token_ttl)?;
        let refresh = if request.offline && !principal.is_anonymous() {
            Some(
                sign(
                    vec![Scope::new(REFRESH_KIND, "refresh", ["refresh"])],
                    self.settings.refresh_ttl,
                )?
                .token,
            )
        } else {
            None
        };
        Ok(TokenAnswer {
            principal,
            issued,
            refresh_token: refresh,
        })
    }
}

/// The pseudo-scope that marks a refresh token (never matches a registry scope).
const REFRESH_KIND: &str = "berth-refresh";

/// A token request, decoded by the http layer.
#[derive(Debug)]
pub struct TokenRequest {
    pub credentials: Credentials,
    pub refresh_token: Option<String>,
    pub service: Option<String>,
    pub scopes: Vec<Scope>,
    /// Also return a refresh token (OAuth2 `access_type=offline`).
    pub offline: bool,
}

#[derive(Debug)]
pub struct TokenAnswer {
    pub principal: Principal,
    pub issued: Issued,
    pub refresh_token: Option<String>,
}

#[async_trait::async_trait]
impl AccessControl for BerthAccess {
    async fn authorize(&self, req: AccessRequest<'_>) -> Result<Decision, AuthError> {
        let (who, granted, obtainable) = match &req.credentials {
            Credentials::Bearer(t) => {
                let (who, claims) = self.verify(t).await?;
                let granted: Vec<Scope> = req
                    .wanted
                    .iter()
                    .filter_map(|w| intersect(&claims.access, w))
                    .collect();
                let granted = self.projects_for_pushes(&who, granted).await?;
                // A token narrower than its subject's rights (asked for another
                // request): what a new one would hold, so the client is told to get it.
                let obtainable = if req.wanted.iter().all(|w| covers(&granted, w)) {
                    Vec::new()
                } else {
                    self.decide(&who, req.wanted, false).await?
                };
                (who, granted, obtainable)
            }
            c => {
                let who = self.authenticate(c).await?;
                let granted = self.decide(&who, req.wanted, true).await?;
                (who, granted, Vec::new())
            }
        };
        if !matches!(who, Who::Anonymous) {
            let held: Vec<Scope> = granted.iter().chain(&obtainable).cloned().collect();
            self.explain_refusal(req.wanted, &held).await?;
        }
        let changes = req
            .wanted
            .iter()
            .any(|w| w.kind == "repository" && (w.allows("push") || w.allows("delete")));
        if changes && !granted.is_empty() {
            self.network_may_push(req.client)?;
            self.project_networks_allow(req.wanted, req.client).await?;
        }
        Ok(Decision {
            principal: who.principal(),
            granted,
            obtainable,
        })
    }

    fn challenge(
        &self,
        base: &str,
        wanted: &[Scope],
        error: Option<&str>,
        mirror: Option<&str>,
    ) -> String {
        let realm = match &self.settings.realm {
            Some(r) => r.clone(),
            None => format!("{}/service/token", base.trim_end_matches('/')),
        };
        let realm = match mirror {
            Some(project) => super::mirror_realm(&realm, project),
            None => realm,
        };
        super::bearer_challenge(&realm, &self.settings.service, wanted, error)
    }

    fn forbids(&self) -> bool {
        true
    }

    fn store(&self) -> &'static str {
        "its metadata database or LDAP directory (auth.berth)"
    }

    async fn listable_projects(
        &self,
        principal: &Principal,
    ) -> Result<Option<Vec<String>>, AuthError> {
        let who = match &principal.kind {
            PrincipalKind::User { admin: true, .. } => return Ok(None),
            _ => match self.subject(&principal.name).await? {
                Some(who) => self.with_groups(who).await?.unwrap_or(Who::Anonymous),
                None => Who::Anonymous,
            },
        };
        if let Who::Robot {
            robot, permissions, ..
        } = &who
        {
            let pulls = |ns: &str| {
                permissions.iter().any(|e| {
                    e.kind == "project"
                        && e.namespace == ns
                        && e.access.iter().any(|a| {
                            a.effect.as_deref().unwrap_or("allow") == "allow"
                                && super::rbac::permission_of(&a.resource, &a.action)
                                    == Some(Permission::Pull)
                        })
                })
            };
            let mut names: Vec<String> = Vec::new();
            if robot.project_id.is_none() && pulls("*") {
                return Ok(None);
            }
            for e in permissions {
                if e.namespace != "*" && pulls(&e.namespace) && !names.contains(&e.namespace) {
                    names.push(e.namespace.clone());
                }
            }
            if let Some(pid) = robot.project_id {
                let own = self.meta.project_by_id(pid).await.map_err(meta_err)?;
                names.retain(|n| own.as_ref().is_some_and(|p| &p.name == n));
                if pulls("*") {
                    if let Some(p) = own {
                        if !names.contains(&p.name) {
                            names.push(p.name);
                        }
                    }
                }
            }
            let mut public = self
                .meta
                .visible_projects(&Viewer::default())
                .await
                .map_err(meta_err)?;
            public.retain(|p| !names.contains(p));
            names.extend(public);
            return Ok(Some(names));
        }
        self.meta
            .visible_projects(&who.viewer())
            .await
            .map(Some)
            .map_err(meta_err)
    }
}

/// Whether `ip` (an IPv4-mapped IPv6 address counts as its IPv4 one) is in `networks`.
fn in_networks(networks: &[IpNet], ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    networks.iter().any(|n| n.contains(&ip))
}

/// Comma-separated networks (CIDRs, or single addresses).
pub fn parse_networks(text: &str) -> Result<Vec<IpNet>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(|n| {
            n.parse::<IpNet>()
                .or_else(|_| n.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| format!("{n:?} is not a network like 10.0.0.0/8 or an address"))
        })
        .collect()
}

/// A project name is one component of a repository name, as Harbor has it: 1 to 255
/// lower-case letters and digits, separated by single `.`, `_` or `-`.
pub fn check_project_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        })
        && name.split(['.', '_', '-']).all(|part| !part.is_empty());
    if ok {
        Ok(())
    } else {
        Err(format!("{name:?} is not a valid project name: use 1 to 255 lower-case letters and digits, separated by single '.', '_' or '-'"))
    }
}

fn generate(settings: &BerthSettings) -> Result<SigningKey, AuthError> {
    let k = token::generate_key(&settings.issuer).map_err(|e| AuthError::Store(e.to_string()))?;
    Ok(SigningKey {
        kid: k.kid,
        private_pem: k.private_pem,
        cert_pem: k.cert_pem,
        created_at: crate::meta::now(),
        retired_at: None,
    })
}

/// The current key signs; every stored key verifies (retired ones until dropped).
async fn load_keys(meta: &dyn MetaStore, settings: &BerthSettings) -> Result<Keys, AuthError> {
    let all = meta.signing_keys().await.map_err(meta_err)?;
    let current = all.iter().find(|k| k.retired_at.is_none()).ok_or_else(|| {
        AuthError::Store("no current token signing key in the metadata database".into())
    })?;
    let signer = Signer::new(
        &current.kid,
        &current.private_pem,
        &current.cert_pem,
        &settings.issuer,
        &settings.service,
    )
    .map_err(|e| AuthError::Store(e.to_string()))?;
    let mut verifier = Verifier::new(
        &settings.issuer,
        &settings.service,
        vec![jsonwebtoken::Algorithm::ES256],
    );
    for k in &all {
        verifier
            .add_root_bundle(&k.cert_pem)
            .map_err(|e| AuthError::Store(e.to_string()))?;
    }
    Ok(Keys {
        signer,
        verifier,
        cert_pem: current.cert_pem.clone(),
    })
}

/// Create the system administrator `admin` on first start: with the configured
/// password, else a random one logged once.
async fn ensure_admin(meta: &dyn MetaStore, configured: Option<&str>) -> Result<(), AuthError> {
    if meta
        .user_by_name("admin")
        .await
        .map_err(meta_err)?
        .is_some()
    {
        return Ok(());
    }
    let (password, generated) = match configured {
        Some(p) if !p.is_empty() => (p.to_string(), false),
        _ => (password::random_secret(20), true),
    };
    let hash = password::hash(&password).await.map_err(AuthError::Store)?;
    let created = meta
        .create_user(&NewUser {
            username: "admin".into(),
            email: String::new(),
            realname: "system admin".into(),
            comment: "created on first start".into(),
            admin: true,
            source: UserSource::Local,
            password_hash: Some(hash),
        })
        .await
        .map_err(meta_err)?;
    if created.is_ok() && generated {
        tracing::warn!(
            "created the system administrator \"admin\" with password {password:?}: it is shown only this once; change it (berth user passwd admin, or PUT /api/v2.0/users/{{id}}/password), or set auth.berth.adminpassword / BERTH_ADMIN_PASSWORD before the first start"
        );
    } else if created.is_ok() {
        tracing::info!("created the system administrator \"admin\" with the configured password (auth.berth.adminpassword)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::sqlite::SqliteMeta;
    use crate::meta::NewRobot;

    async fn access(dir: &std::path::Path) -> (Arc<dyn MetaStore>, BerthAccess) {
        let meta: Arc<dyn MetaStore> =
            Arc::new(SqliteMeta::open(&dir.join("berth.db")).await.expect("meta"));
        let settings = BerthSettings {
            admin_password: Some("Harbor12345".into()),
            ..BerthSettings::default()
        };
        let a = BerthAccess::open(meta.clone(), settings)
            .await
            .expect("open");
        (meta, a)
    }

    fn basic(user: &str, password: &str) -> Credentials {
        Credentials::Basic {
            user: user.into(),
            password: password.into(),
        }
    }

    /// An expired or disabled robot authenticates no more, and its tokens stop working.
    #[tokio::test]
    async fn expired_and_disabled_robots_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (meta, a) = access(dir.path()).await;
        let p = meta
            .create_project("team", false, None)
            .await
            .expect("create")
            .expect("new");
        let hash = password::hash("Secret123abc").await.expect("hash");
        let perms = r#"[{"kind":"project","namespace":"team","access":[{"resource":"repository","action":"pull"}]}]"#;
        let robot = meta
            .create_robot(&NewRobot {
                name: "ci".into(),
                description: String::new(),
                project_id: Some(p.id),
                secret_hash: hash,
                disabled: false,
                expires_at: Some(crate::meta::now() + 3600),
                permissions: perms.into(),
                creator: "test".into(),
            })
            .await
            .expect("robot")
            .expect("new");
        let creds = basic("robot$team+ci", "Secret123abc");
        let who = a.authenticate(&creds).await.expect("valid robot");
        assert_eq!(who.principal().name, "robot$team+ci");
        let answer = a
            .issue(TokenRequest {
                credentials: creds.clone(),
                refresh_token: None,
                service: None,
                scopes: vec![Scope::repository("team/app", ["pull", "push"])],
                offline: false,
            })
            .await
            .expect("token");
        // Pull only: the robot's list holds no push.
        assert_eq!(
            answer.issued.claims.access,
            vec![Scope::repository("team/app", ["pull"])]
        );
        let token = Credentials::Bearer(answer.issued.token.clone());
        assert!(a.who(&token).await.is_ok());

        // Expired: Basic fails at once; the token once the subject cache (2 s) lapses.
        meta.update_robot(
            robot.id,
            &crate::meta::RobotChanges {
                expires_at: Some(Some(crate::meta::now() - 1)),
                ..Default::default()
            },
        )
        .await
        .expect("expire");
        assert!(matches!(
            a.authenticate(&creds).await,
            Err(AuthError::Unauthenticated)
        ));
        tokio::time::sleep(SUBJECT_TTL + Duration::from_millis(100)).await;
        assert!(matches!(
            a.who(&token).await,
            Err(AuthError::InvalidToken(_))
        ));

        // Disabled (and no longer expired): the same.
        meta.update_robot(
            robot.id,
            &crate::meta::RobotChanges {
                expires_at: Some(None),
                disabled: Some(true),
                ..Default::default()
            },
        )
        .await
        .expect("disable");
        assert!(matches!(
            a.authenticate(&creds).await,
            Err(AuthError::Unauthenticated)
        ));
        assert!(matches!(
            a.who(&token).await,
            Err(AuthError::InvalidToken(_))
        ));
    }

    /// The administrator exists after the first start, with the configured password;
    /// a second start keeps it (and the signing key).
    #[tokio::test]
    async fn first_start_creates_admin_and_one_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (meta, a) = access(dir.path()).await;
        assert!(matches!(
            a.authenticate(&basic("admin", "Harbor12345")).await,
            Ok(Who::User { ref user, .. }) if user.admin
        ));
        let cert = a.signing_certificate();
        drop(a);
        let again = BerthAccess::open(meta.clone(), BerthSettings::default())
            .await
            .expect("reopen");
        assert_eq!(again.signing_certificate(), cert);
        assert_eq!(meta.signing_keys().await.expect("keys").len(), 1);
    }

    #[test]
    fn networks_parse_and_match() {
        let n = parse_networks("10.0.0.0/8, 127.0.0.2").expect("parse");
        assert!(in_networks(&n, "10.1.2.3".parse().expect("ip")));
        assert!(in_networks(&n, "::ffff:127.0.0.2".parse().expect("ip")));
        assert!(!in_networks(&n, "127.0.0.1".parse().expect("ip")));
        assert!(parse_networks("10.0.0.0/33").is_err());
        assert!(parse_networks("").expect("empty").is_empty());
    }
}
