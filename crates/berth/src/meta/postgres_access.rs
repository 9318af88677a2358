//! PostgreSQL implementation of the multi-tenancy metadata ([`Users`], [`Projects`],
//! [`Members`], [`Robots`], [`TokenKeys`], [`Audit`]; schema in
//! `migrations/postgres/0005_access.sql`). Rows and questions only: it decides no
//! permission. A taken unique name is `INSERT ... ON CONFLICT DO NOTHING` returning no row
//! ([`Conflict`]). A listing's count and page are read in one REPEATABLE READ
//! transaction, so they agree. Signing keys serialize on [`KEYS_LOCK`]; deleting a
//! project holds its name's advisory key against new repositories in it.

use super::access::{
    AuditEntry, AuditQuery, AuditRecord, Conflict, Member, MemberEntity, NewRobot, NewUser, Page,
    Project, ProjectAccess, ProjectDeletion, ProjectFilter, Robot, RobotChanges, SigningKey, User,
    UserChanges, UserSource, Viewer,
};
use super::postgres::{now, PgMeta, PROJECT_LOCK_SPACE};
use super::{
    limit_offset, project_range, total, Audit, Members, MetaError, Projects, Result, Robots,
    TokenKeys, Users,
};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Postgres, QueryBuilder, Row, Transaction};

/// The advisory lock (transaction level) serializing signing key changes across nodes.
const KEYS_LOCK: i64 = 0x4265_7274_0003;

/// How many repositories one [`project_range`] (`$1`, `$2`) holds.
const REPOSITORY_COUNT: &str = "SELECT COUNT(*) FROM repositories WHERE name >= $1 AND name < $2";

fn role(n: i64) -> Result<u8> {
    u8::try_from(n).map_err(|_| MetaError::Corrupt(format!("member role {n}")))
}

impl PgMeta {
    /// A read-only transaction over one snapshot (a listing's count and its page).
    pub(super) async fn snapshot(&self) -> Result<Transaction<'static, Postgres>> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .execute(&mut *tx)
            .await?;
        Ok(tx)
    }
}

macro_rules! user_columns {
    () => {
        "id, username, email, realname, comment, admin, source, password_hash, created_at, \
         updated_at"
    };
}

fn user(r: &PgRow) -> Result<User> {
    let source: String = r.try_get(6)?;
    let source = match source.as_str() {
        "local" => UserSource::Local,
        "ldap" => UserSource::Ldap,
        _ => return Err(MetaError::Corrupt(format!("user source {source:?}"))),
    };
    Ok(User {
        id: r.try_get(0)?,
        username: r.try_get(1)?,
        email: r.try_get(2)?,
        realname: r.try_get(3)?,
        comment: r.try_get(4)?,
        admin: r.try_get(5)?,
        source,
        password_hash: r.try_get(7)?,
        created_at: r.try_get(8)?,
        updated_at: r.try_get(9)?,
    })
}

#[async_trait::async_trait]
impl Users for PgMeta {
    async fn create_user(&self, u: &NewUser) -> Result<std::result::Result<User, Conflict>> {
        self.read(async {
            let row = sqlx::query(concat!(
                "INSERT INTO users (username, email, realname, comment, admin, source, \
                 password_hash, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)
                 ON CONFLICT (username) DO NOTHING RETURNING ",
                user_columns!()
            ))
            .bind(&u.username)
            .bind(&u.email)
            .bind(&u.realname)
            .bind(&u.comment)
            .bind(u.admin)
            .bind(u.source.as_str())
            .bind(u.password_hash.as_deref())
            .bind(now())
            .fetch_optional(&self.pool)
            .await?;
            match row {
                Some(r) => Ok(Ok(user(&r)?)),
                None => Ok(Err(Conflict)),
            }
        })
        .await
    }

    async fn user_by_name(&self, username: &str) -> Result<Option<User>> {
        self.read(async {
            let row = sqlx::query(concat!(
                "SELECT ",
                user_columns!(),
                " FROM users WHERE username = $1"
            ))
            .bind(username)
            .fetch_optional(&self.pool)
            .await?;
            row.as_ref().map(user).transpose()
        })
        .await
    }

    async fn user_by_id(&self, id: i64) -> Result<Option<User>> {
        self.read(async {
            let row = sqlx::query(concat!(
                "SELECT ",
                user_columns!(),
                " FROM users WHERE id = $1"
            ))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
            row.as_ref().map(user).transpose()
        })
        .await
    }

    async fn list_users(
        &self,
        name_contains: Option<&str>,
        page: Page,
    ) -> Result<(Vec<User>, u64)> {
        self.read(async {
            let (limit, offset) = limit_offset(page);
            let mut tx = self.snapshot().await?;
            let n: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM users WHERE $1::text IS NULL OR strpos(username, $1) > 0",
            )
            .bind(name_contains)
            .fetch_one(&mut *tx)
            .await?;
            let rows = sqlx::query(concat!(
                "SELECT ",
                user_columns!(),
                " FROM users WHERE $1::text IS NULL OR strpos(username, $1) > 0
                 ORDER BY id LIMIT $2 OFFSET $3"
            ))
            .bind(name_contains)
            .bind(limit)
            .bind(offset)
            .fetch_all(&mut *tx)
            .await?;
            tx.commit().await?;
            let users = rows.iter().map(user).collect::<Result<_>>()?;
            Ok((users, total(n)?))
        })
        .await
    }

    async fn update_user(&self, id: i64, c: &UserChanges) -> Result<bool> {
        self.read(async {
            let done = sqlx::query(
                "UPDATE users SET email = COALESCE($2, email), realname = COALESCE($3, realname),
                        comment = COALESCE($4, comment), updated_at = $5
                 WHERE id = $1",
            )
            .bind(id)
            .bind(c.email.as_deref())
            .bind(c.realname.as_deref())
            .bind(c.comment.as_deref())
            .bind(now())
            .execute(&self.pool)
            .await?
            .rows_affected();
            Ok(done > 0)
        })
        .await
    }

    async fn set_password(&self, id: i64, password_hash: &str) -> Result<bool> {
        self.read(async {
            let done =
                sqlx::query("UPDATE users SET password_hash = $2, updated_at = $3 WHERE id = $1")
                    .bind(id)
                    .bind(password_hash)
                    .bind(now())
                    .execute(&self.pool)
                    .await?
                    .rows_affected();
            Ok(done > 0)
        })
        .await
    }

    async fn set_admin(&self, id: i64, admin: bool) -> Result<bool> {
        self.read(async {
            let done = sqlx::query("UPDATE users SET admin = $2, updated_at = $3 WHERE id = $1")
                .bind(id)
                .bind(admin)
                .bind(now())
                .execute(&self.pool)
                .await?
                .rows_affected();
            Ok(done > 0)
        })
        .await
    }

    async fn delete_user(&self, id: i64) -> Result<bool> {
        self.write("deleting a user", || async move {
            // The foreign keys would do the first two as well; spelled out, the statements
            // say what a user's deletion takes along.
            let mut tx = self.pool.begin().await?;
            sqlx::query("DELETE FROM members WHERE user_id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            sqlx::query("UPDATE projects SET owner_id = NULL WHERE owner_id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            let gone = sqlx::query("DELETE FROM users WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            tx.commit().await?;
            Ok(gone > 0)
        })
        .await
    }
}

macro_rules! project_columns {
    () => {
        "p.id, p.name, p.public, p.owner_id, p.created_at, p.updated_at, p.push_networks"
    };
}

/// Whether the viewer (user id `$user`, groups `$groups` as a text array: the
/// placeholders) is a member of project `p`, directly or through a group.
macro_rules! viewer_is_member {
    ($user:literal, $groups:literal) => {
        concat!(
            "EXISTS (SELECT 1 FROM members m WHERE m.project_id = p.id AND (m.user_id = ",
            $user,
            " OR m.group_name = ANY(",
            $groups,
            ")))"
        )
    };
}

/// The filter of [`Projects::list_projects`]: name `$1`, public `$2`, restricted to what
/// the viewer sees when `$3`.
macro_rules! project_filter {
    () => {
        concat!(
            " WHERE ($1::text IS NULL OR strpos(p.name, $1) > 0)
               AND ($2::boolean IS NULL OR p.public = $2)
               AND (NOT $3 OR p.public OR ",
            viewer_is_member!("$4", "$5"),
            ")"
        )
    };
}

/// Project `$1` and the roles of user `$2` and groups `$3` (a text array) in it: one row
/// per role held (directly or through a group), or one with a NULL role.
const PROJECT_ACCESS: &str = concat!(
    "SELECT ",
    project_columns!(),
    ", m.role FROM projects p
     LEFT JOIN members m ON m.project_id = p.id
       AND (m.user_id = $2 OR m.group_name = ANY($3))
     WHERE p.name = $1"
);

fn project(r: &PgRow) -> Result<Project> {
    Ok(Project {
        id: r.try_get(0)?,
        name: r.try_get(1)?,
        public: r.try_get(2)?,
        owner_id: r.try_get(3)?,
        created_at: r.try_get(4)?,
        updated_at: r.try_get(5)?,
        push_networks: r.try_get(6)?,
    })
}

/// How many repositories are named `<project>/...`, on `conn`.
async fn count_repositories(conn: &mut PgConnection, project: &str) -> Result<u64> {
    let (lo, hi) = project_range(project);
    let n: i64 = sqlx::query_scalar(REPOSITORY_COUNT)
        .bind(lo)
        .bind(hi)
        .fetch_one(conn)
        .await?;
    total(n)
}

#[async_trait::async_trait]
impl Projects for PgMeta {
    async fn create_project(
        &self,
        name: &str,
        public: bool,
        owner: Option<i64>,
    ) -> Result<std::result::Result<Project, Conflict>> {
        self.write("creating a project", || async move {
            let mut tx = self.pool.begin().await?;
            let row = sqlx::query(
                "INSERT INTO projects (name, public, owner_id, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $4)
                 ON CONFLICT (name) DO NOTHING
                 RETURNING id, name, public, owner_id, created_at, updated_at, push_networks",
            )
            .bind(name)
            .bind(public)
            .bind(owner)
            .bind(now())
            .fetch_optional(&mut *tx)
            .await?;
            let Some(row) = row else {
                return Ok(Err(Conflict));
            };
            let p = project(&row)?;
            if let Some(owner) = owner {
                sqlx::query(
                    "INSERT INTO members (project_id, entity_type, user_id, role) VALUES ($1, 'u', $2, 1)",
                )
                .bind(p.id)
                .bind(owner)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(Ok(p))
        })
        .await
    }

    async fn project_by_name(&self, name: &str) -> Result<Option<Project>> {
        self.read(async {
            let row = sqlx::query(concat!(
                "SELECT ",
                project_columns!(),
                " FROM projects p WHERE p.name = $1"
            ))
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
            row.as_ref().map(project).transpose()
        })
        .await
    }

    async fn project_by_id(&self, id: i64) -> Result<Option<Project>> {
        self.read(async {
            let row = sqlx::query(concat!(
                "SELECT ",
                project_columns!(),
                " FROM projects p WHERE p.id = $1"
            ))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
            row.as_ref().map(project).transpose()
        })
        .await
    }

    async fn list_projects(
        &self,
        filter: &ProjectFilter,
        page: Page,
    ) -> Result<(Vec<Project>, u64)> {
        self.read(async {
            let (limit, offset) = limit_offset(page);
            let viewer = filter.visible_to.as_ref();
            let user = viewer.and_then(|v| v.user_id);
            let groups: Vec<String> = viewer.map(|v| v.groups.clone()).unwrap_or_default();
            let mut tx = self.snapshot().await?;
            let n: i64 = sqlx::query_scalar(concat!(
                "SELECT COUNT(*) FROM projects p",
                project_filter!()
            ))
            .bind(filter.name_contains.as_deref())
            .bind(filter.public)
            .bind(viewer.is_some())
            .bind(user)
            .bind(&groups)
            .fetch_one(&mut *tx)
            .await?;
            let rows = sqlx::query(concat!(
                "SELECT ",
                project_columns!(),
                " FROM projects p",
                project_filter!(),
                " ORDER BY p.name LIMIT $6 OFFSET $7"
            ))
            .bind(filter.name_contains.as_deref())
            .bind(filter.public)
            .bind(viewer.is_some())
            .bind(user)
            .bind(&groups)
            .bind(limit)
            .bind(offset)
            .fetch_all(&mut *tx)
            .await?;
            tx.commit().await?;
            let projects = rows.iter().map(project).collect::<Result<_>>()?;
            Ok((projects, total(n)?))
        })
        .await
    }

    async fn set_project_public(&self, id: i64, public: bool) -> Result<bool> {
        self.read(async {
            let done =
                sqlx::query("UPDATE projects SET public = $2, updated_at = $3 WHERE id = $1")
                    .bind(id)
                    .bind(public)
                    .bind(now())
                    .execute(&self.pool)
                    .await?
                    .rows_affected();
            Ok(done > 0)
        })
        .await
    }

    async fn set_project_push_networks(&self, id: i64, networks: &str) -> Result<bool> {
        self.read(async {
            let done = sqlx::query(
                "UPDATE projects SET push_networks = $2, updated_at = $3 WHERE id = $1",
            )
            .bind(id)
            .bind(networks)
            .bind(now())
            .execute(&self.pool)
            .await?
            .rows_affected();
            Ok(done > 0)
        })
        .await
    }

    async fn delete_project(&self, id: i64) -> Result<ProjectDeletion> {
        self.write("deleting a project", || async move {
            let mut tx = self.pool.begin().await?;
            let Some(name) = sqlx::query_scalar::<_, String>(
                "SELECT name FROM projects WHERE id = $1 FOR UPDATE",
            )
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
            else {
                return Ok(ProjectDeletion::NotFound);
            };
            // Exclusive on the project's name: a transaction creating a repository in it
            // holds the key shared (`postgres::hold_repository`), so the count below sees
            // it, and one that comes later waits and finds the project gone.
            sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
                .bind(PROJECT_LOCK_SPACE)
                .bind(&name)
                .execute(&mut *tx)
                .await?;
            let repositories = count_repositories(&mut tx, &name).await?;
            if repositories > 0 {
                return Ok(ProjectDeletion::NotEmpty(repositories));
            }
            for sql in [
                "DELETE FROM members WHERE project_id = $1",
                "DELETE FROM robots WHERE project_id = $1",
                "DELETE FROM projects WHERE id = $1",
            ] {
                sqlx::query(sql).bind(id).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(ProjectDeletion::Deleted)
        })
        .await
    }

    async fn project_access(&self, name: &str, viewer: &Viewer) -> Result<Option<ProjectAccess>> {
        self.read(async {
            let rows = sqlx::query(PROJECT_ACCESS)
                .bind(name)
                .bind(viewer.user_id)
                .bind(&viewer.groups)
                .fetch_all(&self.pool)
                .await?;
            let Some(first) = rows.first() else {
                return Ok(None);
            };
            let project = project(first)?;
            let mut roles = Vec::new();
            for r in &rows {
                if let Some(n) = r.try_get::<Option<i64>, _>(7)? {
                    roles.push(role(n)?);
                }
            }
            roles.sort_unstable();
            roles.dedup();
            Ok(Some(ProjectAccess { project, roles }))
        })
        .await
    }

    async fn visible_projects(&self, viewer: &Viewer) -> Result<Vec<String>> {
        self.read(async {
            let names = sqlx::query_scalar(concat!(
                "SELECT p.name FROM projects p WHERE p.public OR ",
                viewer_is_member!("$1", "$2"),
                " ORDER BY p.name"
            ))
            .bind(viewer.user_id)
            .bind(&viewer.groups)
            .fetch_all(&self.pool)
            .await?;
            Ok(names)
        })
        .await
    }

    async fn repository_count(&self, project: &str) -> Result<u64> {
        self.read(async {
            let mut conn = self.pool.acquire().await?;
            count_repositories(&mut conn, project).await
        })
        .await
    }
}

macro_rules! member_select {
    () => {
        "SELECT m.id, m.project_id, m.entity_type, m.user_id, m.group_name,
                COALESCE(u.username, m.group_name), m.role
         FROM members m LEFT JOIN users u ON u.id = m.user_id"
    };
}

fn member(r: &PgRow) -> Result<Member> {
    let id: i64 = r.try_get(0)?;
    let kind: String = r.try_get(2)?;
    let corrupt = |what: &str| MetaError::Corrupt(format!("member {id}: {what}"));
    let entity = match kind.as_str() {
        "u" => MemberEntity::User(
            r.try_get::<Option<i64>, _>(3)?
                .ok_or_else(|| corrupt("a user membership without a user"))?,
        ),
        "g" => MemberEntity::Group(
            r.try_get::<Option<String>, _>(4)?
                .ok_or_else(|| corrupt("a group membership without a group"))?,
        ),
        _ => return Err(corrupt(&format!("entity type {kind:?}"))),
    };
    Ok(Member {
        id,
        project_id: r.try_get(1)?,
        entity,
        entity_name: r
            .try_get::<Option<String>, _>(5)?
            .ok_or_else(|| corrupt("its user is gone"))?,
        role: role(r.try_get(6)?)?,
    })
}

#[async_trait::async_trait]
impl Members for PgMeta {
    async fn add_member(
        &self,
        project_id: i64,
        entity: &MemberEntity,
        role: u8,
    ) -> Result<std::result::Result<Member, Conflict>> {
        let (kind, user_id, group) = match entity {
            MemberEntity::User(id) => ("u", Some(*id), None),
            MemberEntity::Group(name) => ("g", None, Some(name.as_str())),
        };
        self.write("adding a member", || async move {
            let mut tx = self.pool.begin().await?;
            let id: Option<i64> = sqlx::query_scalar(
                "INSERT INTO members (project_id, entity_type, user_id, group_name, role)
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING RETURNING id",
            )
            .bind(project_id)
            .bind(kind)
            .bind(user_id)
            .bind(group)
            .bind(i64::from(role))
            .fetch_optional(&mut *tx)
            .await?;
            let Some(id) = id else {
                return Ok(Err(Conflict));
            };
            let row = sqlx::query(concat!(member_select!(), " WHERE m.id = $1"))
                .bind(id)
                .fetch_one(&mut *tx)
                .await?;
            let m = member(&row)?;
            tx.commit().await?;
            Ok(Ok(m))
        })
        .await
    }

    async fn list_members(
        &self,
        project_id: i64,
        name_contains: Option<&str>,
        page: Page,
    ) -> Result<(Vec<Member>, u64)> {
        self.read(async {
            let (limit, offset) = limit_offset(page);
            let mut tx = self.snapshot().await?;
            let n: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM members m LEFT JOIN users u ON u.id = m.user_id
                 WHERE m.project_id = $1
                   AND ($2::text IS NULL OR strpos(COALESCE(u.username, m.group_name), $2) > 0)",
            )
            .bind(project_id)
            .bind(name_contains)
            .fetch_one(&mut *tx)
            .await?;
            let rows = sqlx::query(concat!(
                member_select!(),
                " WHERE m.project_id = $1
                    AND ($2::text IS NULL OR strpos(COALESCE(u.username, m.group_name), $2) > 0)
                  ORDER BY m.id LIMIT $3 OFFSET $4"
            ))
            .bind(project_id)
            .bind(name_contains)
            .bind(limit)
            .bind(offset)
            .fetch_all(&mut *tx)
            .await?;
            tx.commit().await?;
            let members = rows.iter().map(member).collect::<Result<_>>()?;
            Ok((members, total(n)?))
        })
        .await
    }

    async fn member(&self, project_id: i64, member_id: i64) -> Result<Option<Member>> {
        self.read(async {
            let row = sqlx::query(concat!(
                member_select!(),
                " WHERE m.project_id = $1 AND m.id = $2"
            ))
            .bind(project_id)
            .bind(member_id)
            .fetch_optional(&self.pool)
            .await?;
            row.as_ref().map(member).transpose()
        })
        .await
    }

    async fn set_member_role(&self, project_id: i64, member_id: i64, role: u8) -> Result<bool> {
        self.read(async {
            let done =
                sqlx::query("UPDATE members SET role = $3 WHERE project_id = $1 AND id = $2")
                    .bind(project_id)
                    .bind(member_id)
                    .bind(i64::from(role))
                    .execute(&self.pool)
                    .await?
                    .rows_affected();
            Ok(done > 0)
        })
        .await
    }

    async fn remove_member(&self, project_id: i64, member_id: i64) -> Result<bool> {
        self.read(async {
            let done = sqlx::query("DELETE FROM members WHERE project_id = $1 AND id = $2")
                .bind(project_id)
                .bind(member_id)
                .execute(&self.pool)
                .await?
                .rows_affected();
            Ok(done > 0)
        })
        .await
    }
}

macro_rules! robot_columns {
    () => {
        "id, name, description, project_id, secret_hash, disabled, expires_at, permissions, \
         creator, created_at, updated_at"
    };
}

/// Robot `$2` of project `$1` (0: the system robots), spelling the expression of the
/// unique index robots_by_name, so that the index answers.
const ROBOT_BY_NAME: &str = concat!(
    "SELECT ",
    robot_columns!(),
    " FROM robots WHERE COALESCE(project_id, 0) = $1 AND name = $2"
);

fn robot(r: &PgRow) -> Result<Robot> {
    Ok(Robot {
        id: r.try_get(0)?,
        name: r.try_get(1)?,
        description: r.try_get(2)?,
        project_id: r.try_get(3)?,
        secret_hash: r.try_get(4)?,
        disabled: r.try_get(5)?,
        expires_at: r.try_get(6)?,
        permissions: r.try_get(7)?,
        creator: r.try_get(8)?,
        created_at: r.try_get(9)?,
        updated_at: r.try_get(10)?,
    })
}

#[async_trait::async_trait]
impl Robots for PgMeta {
    async fn create_robot(&self, b: &NewRobot) -> Result<std::result::Result<Robot, Conflict>> {
        self.read(async {
            // The conflict is on robots_by_name (system robots count as project 0).
            let row = sqlx::query(concat!(
                "INSERT INTO robots (name, description, project_id, secret_hash, disabled, \
                 expires_at, permissions, creator, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9)
                 ON CONFLICT DO NOTHING RETURNING ",
                robot_columns!()
            ))
            .bind(&b.name)
            .bind(&b.description)
            .bind(b.project_id)
            .bind(&b.secret_hash)
            .bind(b.disabled)
            .bind(b.expires_at)
            .bind(&b.permissions)
            .bind(&b.creator)
            .bind(now())
            .fetch_optional(&self.pool)
            .await?;
            match row {
                Some(r) => Ok(Ok(robot(&r)?)),
                None => Ok(Err(Conflict)),
            }
        })
        .await
    }

    async fn robot_by_id(&self, id: i64) -> Result<Option<Robot>> {
        self.read(async {
            let row = sqlx::query(concat!(
                "SELECT ",
                robot_columns!(),
                " FROM robots WHERE id = $1"
            ))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
            row.as_ref().map(robot).transpose()
        })
        .await
    }

    async fn robot_by_name(&self, project_id: Option<i64>, name: &str) -> Result<Option<Robot>> {
        self.read(async {
            let row = sqlx::query(ROBOT_BY_NAME)
                .bind(project_id.unwrap_or(0))
                .bind(name)
                .fetch_optional(&self.pool)
                .await?;
            row.as_ref().map(robot).transpose()
        })
        .await
    }

    async fn list_robots(
        &self,
        project_id: Option<Option<i64>>,
        page: Page,
    ) -> Result<(Vec<Robot>, u64)> {
        self.read(async {
            let (limit, offset) = limit_offset(page);
            // `IS NOT DISTINCT FROM $n`: one project's robots, or (NULL) the system robots.
            let (count_sql, list_sql) = match project_id {
                None => (
                    "SELECT COUNT(*) FROM robots",
                    concat!(
                        "SELECT ",
                        robot_columns!(),
                        " FROM robots ORDER BY id LIMIT $1 OFFSET $2"
                    ),
                ),
                Some(_) => (
                    "SELECT COUNT(*) FROM robots WHERE project_id IS NOT DISTINCT FROM $1",
                    concat!(
                        "SELECT ",
                        robot_columns!(),
                        " FROM robots WHERE project_id IS NOT DISTINCT FROM $3
                          ORDER BY id LIMIT $1 OFFSET $2"
                    ),
                ),
            };
            let mut tx = self.snapshot().await?;
            let mut count = sqlx::query_scalar::<_, i64>(count_sql);
            let mut list = sqlx::query(list_sql).bind(limit).bind(offset);
            if let Some(p) = project_id {
                count = count.bind(p);
                list = list.bind(p);
            }
            let n = count.fetch_one(&mut *tx).await?;
            let rows = list.fetch_all(&mut *tx).await?;
            tx.commit().await?;
            let robots = rows.iter().map(robot).collect::<Result<_>>()?;
            Ok((robots, total(n)?))
        })
        .await
    }

    async fn update_robot(&self, id: i64, c: &RobotChanges) -> Result<bool> {
        self.read(async {
            let done = sqlx::query(
                "UPDATE robots SET description = COALESCE($2, description),
                        disabled = COALESCE($3, disabled),
                        expires_at = CASE WHEN $4 THEN $5 ELSE expires_at END,
                        permissions = COALESCE($6, permissions), updated_at = $7
                 WHERE id = $1",
            )
            .bind(id)
            .bind(c.description.as_deref())
            .bind(c.disabled)
            .bind(c.expires_at.is_some())
            .bind(c.expires_at.flatten())
            .bind(c.permissions.as_deref())
            .bind(now())
            .execute(&self.pool)
            .await?
            .rows_affected();
            Ok(done > 0)
        })
        .await
    }

    async fn set_robot_secret(&self, id: i64, secret_hash: &str) -> Result<bool> {
        self.read(async {
            let done =
                sqlx::query("UPDATE robots SET secret_hash = $2, updated_at = $3 WHERE id = $1")
                    .bind(id)
                    .bind(secret_hash)
                    .bind(now())
                    .execute(&self.pool)
                    .await?
                    .rows_affected();
            Ok(done > 0)
        })
        .await
    }

    async fn delete_robot(&self, id: i64) -> Result<bool> {
        self.read(async {
            let done = sqlx::query("DELETE FROM robots WHERE id = $1")
                .bind(id)
                .execute(&self.pool)
                .await?
                .rows_affected();
            Ok(done > 0)
        })
        .await
    }
}

#[async_trait::async_trait]
impl TokenKeys for PgMeta {
    async fn signing_keys(&self) -> Result<Vec<SigningKey>> {
        self.read(async {
            let rows = sqlx::query(
                "SELECT kid, private_pem, cert_pem, created_at, retired_at FROM signing_keys
                 ORDER BY created_at DESC, seq DESC",
            )
            .fetch_all(&self.pool)
            .await?;
            rows.iter()
                .map(|r| {
                    Ok(SigningKey {
                        kid: r.try_get(0)?,
                        private_pem: r.try_get(1)?,
                        cert_pem: r.try_get(2)?,
                        created_at: r.try_get(3)?,
                        retired_at: r.try_get(4)?,
                    })
                })
                .collect()
        })
        .await
    }

    async fn add_first_signing_key(&self, key: &SigningKey) -> Result<bool> {
        self.write("storing the first signing key", || async move {
            // Under KEYS_LOCK, the check and the insert cannot interleave with another
            // node's. Stored as the current key whatever `key.retired_at` says.
            let mut tx = self.pool.begin().await?;
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(KEYS_LOCK)
                .execute(&mut *tx)
                .await?;
            let stored = sqlx::query(
                "INSERT INTO signing_keys (kid, private_pem, cert_pem, created_at, retired_at)
                 SELECT $1, $2, $3, $4, NULL
                 WHERE NOT EXISTS (SELECT 1 FROM signing_keys WHERE retired_at IS NULL)",
            )
            .bind(&key.kid)
            .bind(&key.private_pem)
            .bind(&key.cert_pem)
            .bind(key.created_at)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            tx.commit().await?;
            Ok(stored > 0)
        })
        .await
    }

    async fn rotate_signing_key(&self, key: &SigningKey, at: i64) -> Result<()> {
        self.write("rotating the signing key", || async move {
            let mut tx = self.pool.begin().await?;
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(KEYS_LOCK)
                .execute(&mut *tx)
                .await?;
            sqlx::query("UPDATE signing_keys SET retired_at = $1 WHERE retired_at IS NULL")
                .bind(at)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "INSERT INTO signing_keys (kid, private_pem, cert_pem, created_at, retired_at)
                 VALUES ($1, $2, $3, $4, NULL)",
            )
            .bind(&key.kid)
            .bind(&key.private_pem)
            .bind(&key.cert_pem)
            .bind(key.created_at)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    async fn drop_retired_keys(&self, before: i64) -> Result<u64> {
        self.read(async {
            Ok(sqlx::query(
                "DELETE FROM signing_keys WHERE retired_at IS NOT NULL AND retired_at < $1",
            )
            .bind(before)
            .execute(&self.pool)
            .await?
            .rows_affected())
        })
        .await
    }
}

/// Appends the `WHERE` clause of `q` (only the filters set, so each can use its index).
fn audit_filter<'a>(qb: &mut QueryBuilder<'a, Postgres>, q: &'a AuditQuery) {
    qb.push(" WHERE TRUE");
    for (column, value) in [
        ("project", &q.project),
        ("principal", &q.principal),
        ("operation", &q.operation),
        ("resource_type", &q.resource_type),
    ] {
        if let Some(v) = value {
            qb.push(format_args!(" AND {column} = "))
                .push_bind(v.as_str());
        }
    }
    if let Some(projects) = &q.projects {
        qb.push(" AND project = ANY(")
            .push_bind(projects.clone())
            .push(")");
    }
    if let Some(part) = &q.resource_contains {
        qb.push(" AND strpos(resource, ")
            .push_bind(part.as_str())
            .push(") > 0");
    }
    if let Some(from) = q.from_ms {
        qb.push(" AND time_ms >= ").push_bind(from);
    }
    if let Some(to) = q.to_ms {
        qb.push(" AND time_ms <= ").push_bind(to);
    }
}

/// The count and the page of an audit query.
fn audit_queries(
    q: &AuditQuery,
    page: Page,
) -> (QueryBuilder<'_, Postgres>, QueryBuilder<'_, Postgres>) {
    let (limit, offset) = limit_offset(page);
    let mut count = QueryBuilder::new("SELECT COUNT(*) FROM audit_log");
    audit_filter(&mut count, q);
    let mut list = QueryBuilder::new(
        "SELECT id, time_ms, principal, client, resource_type, resource, project, operation,
                result FROM audit_log",
    );
    audit_filter(&mut list, q);
    // Newest first; every audit index ends with (time_ms, id), read backwards.
    list.push(" ORDER BY time_ms DESC, id DESC LIMIT ")
        .push_bind(limit)
        .push(" OFFSET ")
        .push_bind(offset);
    (count, list)
}

#[async_trait::async_trait]
impl Audit for PgMeta {
    async fn record_audit(&self, records: &[AuditRecord]) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        self.read(async {
            // One statement per 1000 records (8 parameters each, within PostgreSQL's
            // 65535), all in one transaction, in their order.
            let mut tx = self.pool.begin().await?;
            for chunk in records.chunks(1000) {
                let mut qb = QueryBuilder::<Postgres>::new(
                    "INSERT INTO audit_log (time_ms, principal, client, resource_type, resource,
                                            project, operation, result) ",
                );
                qb.push_values(chunk, |mut b, a| {
                    b.push_bind(a.time_ms)
                        .push_bind(&a.principal)
                        .push_bind(&a.client)
                        .push_bind(&a.resource_type)
                        .push_bind(&a.resource)
                        .push_bind(a.project.as_deref())
                        .push_bind(&a.operation)
                        .push_bind(&a.result);
                });
                qb.build().execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    async fn audit_log(&self, q: &AuditQuery, page: Page) -> Result<(Vec<AuditEntry>, u64)> {
        self.read(async {
            let (mut count, mut list) = audit_queries(q, page);
            let mut tx = self.snapshot().await?;
            let n: i64 = count.build_query_scalar().fetch_one(&mut *tx).await?;
            let rows = list.build().fetch_all(&mut *tx).await?;
            tx.commit().await?;
            let entries = rows
                .iter()
                .map(|r| {
                    Ok(AuditEntry {
                        id: r.try_get(0)?,
                        record: AuditRecord {
                            time_ms: r.try_get(1)?,
                            principal: r.try_get(2)?,
                            client: r.try_get(3)?,
                            resource_type: r.try_get(4)?,
                            resource: r.try_get(5)?,
                            project: r.try_get(6)?,
                            operation: r.try_get(7)?,
                            result: r.try_get(8)?,
                        },
                    })
                })
                .collect::<Result<_>>()?;
            Ok((entries, total(n)?))
        })
        .await
    }

    async fn prune_audit(&self, before_ms: i64, limit: u32) -> Result<u64> {
        self.read(async {
            Ok(sqlx::query(
                "DELETE FROM audit_log WHERE id IN
                   (SELECT id FROM audit_log WHERE time_ms < $1 ORDER BY time_ms LIMIT $2)",
            )
            .bind(before_ms)
            .bind(i64::from(limit))
            .execute(&self.pool)
            .await?
            .rows_affected())
        })
        .await
    }
}
