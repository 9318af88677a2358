//! Who may do what in a project: Harbor's project roles as one table, robot permission
//! lists, and the pure decision over them. Knows no storage and no HTTP: callers bring
//! the principal's roles or permissions. The README's permission table is rendered from
//! [`ROLE_TABLE`] and a test keeps the two equal.

use serde::{Deserialize, Serialize};

/// Something a principal may do in a project.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Permission {
    /// See the project and list its repositories, artifacts and tags.
    Read,
    Pull,
    Push,
    DeleteArtifact,
    DeleteRepository,
    CreateTag,
    DeleteTag,
    ListMembers,
    ManageMembers,
    ListRobots,
    ManageRobots,
    ReadLogs,
    UpdateProject,
    DeleteProject,
    /// Add, change and delete the project's immutable tag rules.
    ManageImmutableTags,
    /// Set the project's tag retention policy, run it, stop its runs.
    ManageRetention,
}

impl Permission {
    pub const ALL: [Permission; 16] = [
        Permission::Read,
        Permission::Pull,
        Permission::Push,
        Permission::DeleteArtifact,
        Permission::DeleteRepository,
        Permission::CreateTag,
        Permission::DeleteTag,
        Permission::ListMembers,
        Permission::ManageMembers,
        Permission::ListRobots,
        Permission::ManageRobots,
        Permission::ReadLogs,
        Permission::UpdateProject,
        Permission::DeleteProject,
        Permission::ManageImmutableTags,
        Permission::ManageRetention,
    ];

    /// How the README names it.
    pub fn describe(self) -> &'static str {
        match self {
            Permission::Read => "see the project, list repositories, artifacts, tags",
            Permission::Pull => "pull",
            Permission::Push => "push",
            Permission::DeleteArtifact => "delete an artifact (manifest, blob, tag via /v2/)",
            Permission::DeleteRepository => "delete a repository",
            Permission::CreateTag => "add a tag (API)",
            Permission::DeleteTag => "remove a tag (API)",
            Permission::ListMembers => "list members",
            Permission::ManageMembers => "add, change, remove members",
            Permission::ListRobots => "list robot accounts",
            Permission::ManageRobots => "create, change, delete robot accounts",
            Permission::ReadLogs => "read the project's audit log",
            Permission::UpdateProject => "change the project (public/private)",
            Permission::DeleteProject => "delete the project",
            Permission::ManageImmutableTags => "add, change, delete immutable tag rules",
            Permission::ManageRetention => "set the tag retention policy, run it, stop a run",
        }
    }

    /// The Harbor robot permission (`resource`, `action`) that grants it.
    pub fn robot_access(self) -> (&'static str, &'static str) {
        match self {
            Permission::Read => ("repository", "list"),
            Permission::Pull => ("repository", "pull"),
            Permission::Push => ("repository", "push"),
            Permission::DeleteArtifact => ("artifact", "delete"),
            Permission::DeleteRepository => ("repository", "delete"),
            Permission::CreateTag => ("tag", "create"),
            Permission::DeleteTag => ("tag", "delete"),
            Permission::ListMembers => ("member", "list"),
            Permission::ManageMembers => ("member", "create"),
            Permission::ListRobots => ("robot", "list"),
            Permission::ManageRobots => ("robot", "create"),
            Permission::ReadLogs => ("log", "list"),
            Permission::UpdateProject => ("project", "update"),
            Permission::DeleteProject => ("project", "delete"),
            Permission::ManageImmutableTags => ("immutable-tag", "create"),
            Permission::ManageRetention => ("tag-retention", "operate"),
        }
    }
}

/// Harbor's project roles, by their ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    ProjectAdmin = 1,
    Developer = 2,
    Guest = 3,
    Maintainer = 4,
    LimitedGuest = 5,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::ProjectAdmin,
        Role::Maintainer,
        Role::Developer,
        Role::Guest,
        Role::LimitedGuest,
    ];

    pub fn from_id(id: u8) -> Option<Role> {
        Role::ALL.into_iter().find(|r| *r as u8 == id)
    }

    pub fn id(self) -> u8 {
        self as u8
    }

    /// Harbor's `role_name`.
    pub fn name(self) -> &'static str {
        match self {
            Role::ProjectAdmin => "projectAdmin",
            Role::Developer => "developer",
            Role::Guest => "guest",
            Role::Maintainer => "maintainer",
            Role::LimitedGuest => "limitedGuest",
        }
    }

    pub fn allows(self, p: Permission) -> bool {
        ROLE_TABLE
            .iter()
            .find(|(perm, _)| *perm == p)
            .is_some_and(|(_, roles)| roles[self.column()])
    }

    /// The role's column in [`ROLE_TABLE`].
    fn column(self) -> usize {
        match self {
            Role::ProjectAdmin => 0,
            Role::Maintainer => 1,
            Role::Developer => 2,
            Role::Guest => 3,
            Role::LimitedGuest => 4,
        }
    }
}

/// The one source of who may do what: for each permission, whether project admin,
/// maintainer, developer, guest and limited guest (in that order) hold it. Harbor's
/// meanings: a developer pushes but deletes nothing, a maintainer also deletes and
/// manages tags, only a project admin manages members and robots; a limited guest only
/// pulls and sees the project.
pub const ROLE_TABLE: [(Permission, [bool; 5]); 16] = [
    (Permission::Read, [true, true, true, true, true]),
    (Permission::Pull, [true, true, true, true, true]),
    (Permission::Push, [true, true, true, false, false]),
    (
        Permission::DeleteArtifact,
        [true, true, false, false, false],
    ),
    (
        Permission::DeleteRepository,
        [true, true, false, false, false],
    ),
    (Permission::CreateTag, [true, true, true, false, false]),
    (Permission::DeleteTag, [true, true, false, false, false]),
    (Permission::ListMembers, [true, true, true, true, false]),
    (
        Permission::ManageMembers,
        [true, false, false, false, false],
    ),
    (Permission::ListRobots, [true, true, true, true, false]),
    (Permission::ManageRobots, [true, false, false, false, false]),
    (Permission::ReadLogs, [true, true, true, true, false]),
    (
        Permission::UpdateProject,
        [true, false, false, false, false],
    ),
    (
        Permission::DeleteProject,
        [true, false, false, false, false],
    ),
    (
        Permission::ManageImmutableTags,
        [true, true, false, false, false],
    ),
    (
        Permission::ManageRetention,
        [true, true, false, false, false],
    ),
];

/// The README's table, rendered from [`ROLE_TABLE`].
pub fn role_table_markdown() -> String {
    let mut out = String::from(
        "| may | project admin (1) | maintainer (4) | developer (2) | guest (3) | limited guest (5) | robot permission |\n|---|---|---|---|---|---|---|\n",
    );
    for (p, roles) in ROLE_TABLE {
        let cells: Vec<&str> = roles
            .iter()
            .map(|r| if *r { "yes" } else { "no" })
            .collect();
        let (res, act) = p.robot_access();
        out.push_str(&format!(
            "| {} | {} | `{res}:{act}` |\n",
            p.describe(),
            cells.join(" | ")
        ));
    }
    out
}

/// One entry of a robot's permission list, in Harbor's shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RobotPermission {
    /// `project` (Berth grants nothing else).
    pub kind: String,
    /// A project name, or `*` for every project.
    pub namespace: String,
    pub access: Vec<RobotAccess>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RobotAccess {
    pub resource: String,
    pub action: String,
    /// `allow` (the default); `deny` entries are refused at creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effect: Option<String>,
}

/// Map a robot access entry to the permission it grants; `None` for entries Berth does
/// not know (refused at creation so a robot never holds a permission that means nothing).
pub fn permission_of(resource: &str, action: &str) -> Option<Permission> {
    let p = match (resource, action) {
        ("repository", "pull") => Permission::Pull,
        ("repository", "push") => Permission::Push,
        ("repository", "delete") => Permission::DeleteRepository,
        ("repository" | "artifact" | "tag", "list" | "read") => Permission::Read,
        ("project", "read") => Permission::Read,
        ("artifact", "delete") => Permission::DeleteArtifact,
        ("tag", "create") => Permission::CreateTag,
        ("tag", "delete") => Permission::DeleteTag,
        ("member", "list" | "read") => Permission::ListMembers,
        ("member", "create" | "update" | "delete") => Permission::ManageMembers,
        ("robot", "list" | "read") => Permission::ListRobots,
        ("robot", "create" | "update" | "delete") => Permission::ManageRobots,
        ("log", "list") => Permission::ReadLogs,
        ("project", "update") => Permission::UpdateProject,
        ("project", "delete") => Permission::DeleteProject,
        ("immutable-tag", "list") => Permission::Read,
        ("immutable-tag", "create" | "update" | "delete") => Permission::ManageImmutableTags,
        ("tag-retention", "read" | "list") => Permission::Read,
        ("tag-retention", "create" | "update" | "delete" | "operate") => {
            Permission::ManageRetention
        }
        _ => return None,
    };
    Some(p)
}

/// Whether a robot's list grants `p` in `project`.
pub fn robot_allows(perms: &[RobotPermission], project: &str, p: Permission) -> bool {
    perms.iter().any(|entry| {
        entry.kind == "project"
            && (entry.namespace == "*" || entry.namespace == project)
            && entry.access.iter().any(|a| {
                a.effect.as_deref().unwrap_or("allow") == "allow"
                    && permission_of(&a.resource, &a.action) == Some(p)
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_follow_harbor() {
        use Permission::*;
        // (role, may, may not)
        let cases = [
            (
                Role::ProjectAdmin,
                vec![
                    Pull,
                    Push,
                    DeleteRepository,
                    ManageMembers,
                    ManageRobots,
                    ReadLogs,
                ],
                vec![],
            ),
            (
                Role::Maintainer,
                vec![
                    Pull,
                    Push,
                    DeleteArtifact,
                    DeleteRepository,
                    CreateTag,
                    DeleteTag,
                    ReadLogs,
                ],
                vec![ManageMembers, ManageRobots, DeleteProject],
            ),
            (
                Role::Developer,
                vec![Pull, Push, CreateTag, ReadLogs],
                vec![DeleteArtifact, DeleteRepository, DeleteTag, ManageMembers],
            ),
            (
                Role::Guest,
                vec![Pull, Read, ListMembers, ReadLogs],
                vec![Push, DeleteArtifact, CreateTag],
            ),
            (
                Role::LimitedGuest,
                vec![Pull, Read],
                vec![Push, ListMembers, ReadLogs, ListRobots],
            ),
        ];
        for (role, yes, no) in cases {
            for p in yes {
                assert!(role.allows(p), "{role:?} should {p:?}");
            }
            for p in no {
                assert!(!role.allows(p), "{role:?} should not {p:?}");
            }
        }
        for r in Role::ALL {
            assert_eq!(Role::from_id(r.id()), Some(r));
        }
        assert_eq!(Role::from_id(0), None);
        assert_eq!(Role::from_id(6), None);
    }

    #[test]
    fn every_permission_has_a_row_and_a_robot_entry() {
        for p in Permission::ALL {
            assert!(ROLE_TABLE.iter().any(|(q, _)| *q == p), "{p:?}");
            let (res, act) = p.robot_access();
            assert_eq!(permission_of(res, act), Some(p), "{p:?}");
        }
    }

    #[test]
    fn robots_hold_only_their_list() {
        let perms: Vec<RobotPermission> = serde_json::from_str(
            r#"[{"kind":"project","namespace":"team","access":[{"resource":"repository","action":"pull"},{"resource":"repository","action":"push","effect":"deny"}]},
                {"kind":"project","namespace":"*","access":[{"resource":"artifact","action":"delete"}]}]"#,
        )
        .expect("perms");
        assert!(robot_allows(&perms, "team", Permission::Pull));
        assert!(!robot_allows(&perms, "team", Permission::Push));
        assert!(!robot_allows(&perms, "other", Permission::Pull));
        assert!(robot_allows(&perms, "other", Permission::DeleteArtifact));
        assert!(serde_json::from_str::<Vec<RobotPermission>>(
            r#"[{"kind":"project","namespace":"a","access":[],"sysadmin":true}]"#
        )
        .is_err());
    }

    #[test]
    fn readme_carries_the_table() {
        let readme = include_str!("../../../../README.md");
        let table = role_table_markdown();
        assert!(
            readme.contains(&table),
            "README.md's permission table differs from auth::rbac::ROLE_TABLE; paste this:\n{table}"
        );
    }
}
