//! The multi-tenancy part of the metadata contract (users, projects, members, robots,
//! signing keys, audit log, and the catalog restricted to projects), run by
//! [`super::testsuite::run`] on every backend. It uses its own names, so it holds on a
//! store that already has the rest of the suite's repositories.

use super::{
    AuditQuery, AuditRecord, Conflict, MemberEntity, MetaStore, NewRobot, NewUser, Page,
    ProjectDeletion, ProjectFilter, Robot, RobotChanges, SigningKey, User, UserChanges, UserSource,
    Viewer,
};
use oci::{Algorithm, Digest, RepoName};

fn repo(s: &str) -> RepoName {
    s.parse().expect("repo name")
}

fn digest(s: &str) -> Digest {
    Digest::of(Algorithm::Sha256, s.as_bytes())
}

fn new_user(name: &str) -> NewUser {
    NewUser {
        username: name.to_string(),
        email: format!("{name}@example.com"),
        realname: name.to_uppercase(),
        comment: format!("comment of {name}"),
        admin: false,
        source: UserSource::Local,
        password_hash: Some(format!("$2b$12$hash-of-{name}")),
    }
}

async fn create_user(m: &dyn MetaStore, name: &str) -> User {
    m.create_user(&new_user(name))
        .await
        .expect("create user")
        .expect("name free")
}

fn new_robot(name: &str, project_id: Option<i64>) -> NewRobot {
    NewRobot {
        name: name.to_string(),
        description: format!("robot {name}"),
        project_id,
        secret_hash: format!("$2b$12$secret-of-{name}"),
        disabled: false,
        expires_at: None,
        permissions: r#"[{"kind":"project","access":["pull"]}]"#.to_string(),
        creator: "user:admin".to_string(),
    }
}

fn viewer(user_id: Option<i64>, groups: &[&str]) -> Viewer {
    Viewer {
        user_id,
        groups: groups.iter().map(|g| g.to_string()).collect(),
    }
}

fn page(offset: u64, limit: u32) -> Page {
    Page { offset, limit }
}

fn names<T>(items: &[T], name: impl Fn(&T) -> &str) -> Vec<String> {
    items.iter().map(|i| name(i).to_string()).collect()
}

pub async fn run(m: &dyn MetaStore) {
    users(m).await;
    projects(m).await;
    members(m).await;
    deletions(m).await;
    robots(m).await;
    signing_keys(m).await;
    audit(m).await;
    catalog_within(m).await;
}

async fn users(m: &dyn MetaStore) {
    let alice = create_user(m, "alice").await;
    assert_eq!(alice.username, "alice");
    assert_eq!(alice.email, "alice@example.com");
    assert_eq!(alice.realname, "ALICE");
    assert_eq!(alice.comment, "comment of alice");
    assert!(!alice.admin);
    assert_eq!(alice.source, UserSource::Local);
    assert_eq!(alice.password_hash.as_deref(), Some("$2b$12$hash-of-alice"));
    assert!(alice.created_at > 0);
    assert_eq!(alice.created_at, alice.updated_at);
    let dir = m
        .create_user(&NewUser {
            source: UserSource::Ldap,
            password_hash: None,
            admin: true,
            ..new_user("dir")
        })
        .await
        .expect("create")
        .expect("free");
    assert_eq!(dir.source, UserSource::Ldap);
    assert_eq!(dir.password_hash, None);
    assert!(dir.admin);
    assert_ne!(dir.id, alice.id);

    // Names are unique, exactly (the caller lower-cases).
    assert_eq!(
        m.create_user(&new_user("alice")).await.expect("create"),
        Err(Conflict)
    );
    let upper = create_user(m, "Alice").await;
    assert_ne!(upper.id, alice.id);

    assert_eq!(
        m.user_by_name("alice").await.expect("by name"),
        Some(alice.clone())
    );
    assert_eq!(
        m.user_by_id(dir.id).await.expect("by id"),
        Some(dir.clone())
    );
    assert_eq!(m.user_by_name("nobody").await.expect("by name"), None);
    assert_eq!(m.user_by_id(-1).await.expect("by id"), None);

    // Listing: by id, totals, pages, and names matched literally ('_' and '%' too).
    for name in ["a_b", "axb", "a%c", "abc"] {
        create_user(m, name).await;
    }
    let (all, n) = m.list_users(None, Page::all()).await.expect("list");
    assert_eq!(n, 7);
    assert_eq!(
        names(&all, |u| &u.username),
        ["alice", "dir", "Alice", "a_b", "axb", "a%c", "abc"]
    );
    let (p, n) = m.list_users(None, page(2, 3)).await.expect("page");
    assert_eq!(
        (names(&p, |u| &u.username), n),
        (vec!["Alice".into(), "a_b".into(), "axb".into()], 7)
    );
    let (p, n) = m
        .list_users(None, page(u64::MAX, 10))
        .await
        .expect("far page");
    assert!(p.is_empty());
    assert_eq!(n, 7);
    let (p, n) = m.list_users(None, page(0, 0)).await.expect("empty page");
    assert!(p.is_empty());
    assert_eq!(n, 7);
    for (part, want) in [
        ("_", vec!["a_b"]),
        ("%", vec!["a%c"]),
        ("a%", vec!["a%c"]),
        ("b", vec!["a_b", "axb", "abc"]),
        ("lic", vec!["alice", "Alice"]),
        ("zz", vec![]),
        (
            "",
            vec!["alice", "dir", "Alice", "a_b", "axb", "a%c", "abc"],
        ),
    ] {
        let (got, n) = m.list_users(Some(part), Page::all()).await.expect("filter");
        assert_eq!(names(&got, |u| &u.username), want, "contains {part:?}");
        assert_eq!(n, want.len() as u64, "count of {part:?}");
    }
    let (got, n) = m
        .list_users(Some("b"), page(1, 1))
        .await
        .expect("filter page");
    assert_eq!((names(&got, |u| &u.username), n), (vec!["axb".into()], 3));

    // Changes: only the fields given; false for an unknown user.
    assert!(m
        .update_user(
            alice.id,
            &UserChanges {
                email: Some("a@new.example".into()),
                ..UserChanges::default()
            },
        )
        .await
        .expect("update"));
    let changed = m.user_by_id(alice.id).await.expect("get").expect("alice");
    assert_eq!(changed.email, "a@new.example");
    assert_eq!(changed.realname, "ALICE");
    assert_eq!(changed.comment, "comment of alice");
    assert!(changed.updated_at >= alice.updated_at);
    assert!(m
        .update_user(
            alice.id,
            &UserChanges {
                realname: Some("Alice A.".into()),
                comment: Some(String::new()),
                ..UserChanges::default()
            },
        )
        .await
        .expect("update"));
    let changed = m.user_by_id(alice.id).await.expect("get").expect("alice");
    assert_eq!(
        (
            changed.email.as_str(),
            changed.realname.as_str(),
            changed.comment.as_str()
        ),
        ("a@new.example", "Alice A.", "")
    );
    assert!(!m
        .update_user(-1, &UserChanges::default())
        .await
        .expect("update unknown"));

    assert!(m
        .set_password(alice.id, "$2b$12$new")
        .await
        .expect("password"));
    assert_eq!(
        m.user_by_id(alice.id)
            .await
            .expect("get")
            .expect("alice")
            .password_hash
            .as_deref(),
        Some("$2b$12$new")
    );
    assert!(!m.set_password(-1, "x").await.expect("password unknown"));
    assert!(m.set_admin(alice.id, true).await.expect("admin"));
    assert!(
        m.user_by_id(alice.id)
            .await
            .expect("get")
            .expect("alice")
            .admin
    );
    assert!(m.set_admin(alice.id, false).await.expect("admin"));
    assert!(
        !m.user_by_id(alice.id)
            .await
            .expect("get")
            .expect("alice")
            .admin
    );
    assert!(!m.set_admin(-1, true).await.expect("admin unknown"));
}

async fn projects(m: &dyn MetaStore) {
    let owner = create_user(m, "owner").await;
    let acme = m
        .create_project("acme", false, Some(owner.id))
        .await
        .expect("create")
        .expect("free");
    assert_eq!(acme.name, "acme");
    assert!(!acme.public);
    assert_eq!(acme.owner_id, Some(owner.id));
    assert!(acme.created_at > 0);
    assert_eq!(acme.created_at, acme.updated_at);
    // The owner is its project admin.
    let (members, n) = m
        .list_members(acme.id, None, Page::all())
        .await
        .expect("members");
    assert_eq!(n, 1);
    assert_eq!(members[0].entity, MemberEntity::User(owner.id));
    assert_eq!(members[0].entity_name, "owner");
    assert_eq!(members[0].role, 1);
    assert_eq!(members[0].project_id, acme.id);

    // A taken name: nothing written (no second membership either).
    let other = create_user(m, "other").await;
    assert_eq!(
        m.create_project("acme", true, Some(other.id))
            .await
            .expect("create"),
        Err(Conflict)
    );
    assert_eq!(
        m.list_members(acme.id, None, Page::all())
            .await
            .expect("members")
            .1,
        1
    );
    let open = m
        .create_project("open", true, None)
        .await
        .expect("create")
        .expect("free");
    assert_eq!(open.owner_id, None);
    assert!(m
        .list_members(open.id, None, Page::all())
        .await
        .expect("members")
        .0
        .is_empty());
    let x_y = m
        .create_project("x_y", false, None)
        .await
        .expect("create")
        .expect("free");
    let xzy = m
        .create_project("xzy", true, None)
        .await
        .expect("create")
        .expect("free");
    assert!(xzy.public && !x_y.public);

    assert_eq!(
        m.project_by_name("acme").await.expect("by name"),
        Some(acme.clone())
    );
    assert_eq!(
        m.project_by_id(open.id).await.expect("by id"),
        Some(open.clone())
    );
    assert_eq!(m.project_by_name("none").await.expect("by name"), None);
    assert_eq!(m.project_by_id(-1).await.expect("by id"), None);

    // Listing: by name, with totals, filters and pages.
    let list = |filter: ProjectFilter, p: Page| async move {
        let (got, n) = m.list_projects(&filter, p).await.expect("list projects");
        (names(&got, |p| &p.name), n)
    };
    let all = vec![
        "acme".to_string(),
        "open".into(),
        "x_y".into(),
        "xzy".into(),
    ];
    assert_eq!(
        list(ProjectFilter::default(), Page::all()).await,
        (all.clone(), 4)
    );
    assert_eq!(
        list(ProjectFilter::default(), page(1, 2)).await,
        (all[1..3].to_vec(), 4)
    );
    assert_eq!(
        list(ProjectFilter::default(), page(9, 2)).await,
        (vec![], 4)
    );
    let named = |s: &str| ProjectFilter {
        name_contains: Some(s.to_string()),
        ..ProjectFilter::default()
    };
    assert_eq!(list(named("_"), Page::all()).await, (vec!["x_y".into()], 1));
    assert_eq!(list(named("%"), Page::all()).await, (vec![], 0));
    assert_eq!(
        list(named("x"), Page::all()).await,
        (vec!["x_y".into(), "xzy".into()], 2)
    );
    let public = |p: bool| ProjectFilter {
        public: Some(p),
        ..ProjectFilter::default()
    };
    assert_eq!(
        list(public(true), Page::all()).await,
        (vec!["open".into(), "xzy".into()], 2)
    );
    assert_eq!(
        list(public(false), Page::all()).await,
        (vec!["acme".into(), "x_y".into()], 2)
    );
    assert_eq!(
        list(
            ProjectFilter {
                name_contains: Some("x".into()),
                public: Some(true),
                visible_to: None,
            },
            Page::all()
        )
        .await,
        (vec!["xzy".into()], 1)
    );

    // Roles: direct, through groups, both; an unknown project is None.
    let dev = create_user(m, "dev").await;
    m.add_member(
        acme.id,
        &MemberEntity::Group("cn=devs,dc=example".into()),
        2,
    )
    .await
    .expect("add")
    .expect("free");
    m.add_member(acme.id, &MemberEntity::Group("cn=ops,dc=example".into()), 4)
        .await
        .expect("add")
        .expect("free");
    m.add_member(x_y.id, &MemberEntity::Group("cn=devs,dc=example".into()), 3)
        .await
        .expect("add")
        .expect("free");
    m.add_member(acme.id, &MemberEntity::User(dev.id), 2)
        .await
        .expect("add")
        .expect("free");
    let roles = |name: &'static str, v: Viewer| async move {
        m.project_access(name, &v)
            .await
            .expect("access")
            .map(|a| a.roles)
    };
    let access = m
        .project_access("acme", &viewer(Some(owner.id), &[]))
        .await
        .expect("access")
        .expect("acme");
    assert_eq!(access.project, acme);
    assert_eq!(access.roles, vec![1]);
    assert_eq!(
        roles("acme", viewer(Some(other.id), &[])).await,
        Some(vec![])
    );
    assert_eq!(roles("acme", Viewer::default()).await, Some(vec![]));
    assert_eq!(
        roles("acme", viewer(None, &["cn=devs,dc=example"])).await,
        Some(vec![2])
    );
    assert_eq!(
        roles(
            "acme",
            viewer(Some(owner.id), &["cn=ops,dc=example", "cn=devs,dc=example"])
        )
        .await,
        Some(vec![1, 2, 4])
    );
    // The same role directly and through a group counts once.
    assert_eq!(
        roles("acme", viewer(Some(dev.id), &["cn=devs,dc=example"])).await,
        Some(vec![2])
    );
    assert_eq!(
        roles("acme", viewer(Some(other.id), &["cn=other", "cn=devs"])).await,
        Some(vec![]),
        "group names match exactly"
    );
    assert_eq!(
        roles("x_y", viewer(Some(owner.id), &["cn=devs,dc=example"])).await,
        Some(vec![3])
    );
    assert_eq!(roles("nope", viewer(Some(owner.id), &[])).await, None);
    let public_access = m
        .project_access("open", &Viewer::default())
        .await
        .expect("access")
        .expect("open");
    assert!(public_access.project.public);
    assert!(public_access.roles.is_empty());

    // What a viewer sees: public projects and those with a role.
    let visible = |v: Viewer| async move { m.visible_projects(&v).await.expect("visible") };
    assert_eq!(visible(Viewer::default()).await, ["open", "xzy"]);
    assert_eq!(
        visible(viewer(Some(owner.id), &[])).await,
        ["acme", "open", "xzy"]
    );
    assert_eq!(
        visible(viewer(Some(other.id), &["cn=devs,dc=example"])).await,
        ["acme", "open", "x_y", "xzy"]
    );
    assert_eq!(
        visible(viewer(None, &["cn=ops,dc=example"])).await,
        ["acme", "open", "xzy"]
    );
    let seen = |v: Viewer| ProjectFilter {
        visible_to: Some(v),
        ..ProjectFilter::default()
    };
    assert_eq!(
        list(seen(Viewer::default()), Page::all()).await,
        (vec!["open".into(), "xzy".into()], 2)
    );
    assert_eq!(
        list(seen(viewer(None, &["cn=devs,dc=example"])), page(1, 2)).await,
        (vec!["open".into(), "x_y".into()], 4)
    );
    assert_eq!(
        list(
            ProjectFilter {
                name_contains: Some("x".into()),
                public: Some(false),
                visible_to: Some(viewer(None, &["cn=devs,dc=example"])),
            },
            Page::all()
        )
        .await,
        (vec!["x_y".into()], 1)
    );

    // Public flag.
    assert!(m.set_project_public(acme.id, true).await.expect("public"));
    let now_public = m.project_by_id(acme.id).await.expect("get").expect("acme");
    assert!(now_public.public);
    assert!(now_public.updated_at >= acme.updated_at);
    assert_eq!(visible(Viewer::default()).await, ["acme", "open", "xzy"]);
    assert!(m.set_project_public(acme.id, false).await.expect("private"));
    assert!(!m.set_project_public(-1, true).await.expect("unknown"));
    assert_eq!(acme.push_networks, "", "no project allowlist by default");
    assert!(m
        .set_project_push_networks(acme.id, "10.0.0.0/8,127.0.0.2/32")
        .await
        .expect("networks"));
    let got = m.project_by_name("acme").await.expect("get").expect("acme");
    assert_eq!(got.push_networks, "10.0.0.0/8,127.0.0.2/32");
    let access = m
        .project_access("acme", &Viewer::default())
        .await
        .expect("access")
        .expect("acme");
    assert_eq!(access.project.push_networks, "10.0.0.0/8,127.0.0.2/32");
    assert!(m
        .set_project_push_networks(acme.id, "")
        .await
        .expect("clear"));
    assert!(!m.set_project_push_networks(-1, "").await.expect("unknown"));

    // Repositories of a project: `acme/...` at any depth, not `acme` itself nor
    // names that merely start with it.
    for name in [
        "acme/app",
        "acme/team/app",
        "acme-b/app",
        "acmeb/app",
        "acme0/app",
        "acme",
    ] {
        m.link_blob(&repo(name), &digest("access"), 1, &[])
            .await
            .expect("link");
    }
    assert_eq!(m.repository_count("acme").await.expect("count"), 2);
    assert_eq!(m.repository_count("acme-b").await.expect("count"), 1);
    assert_eq!(m.repository_count("open").await.expect("count"), 0);
    assert_eq!(m.repository_count("acm").await.expect("count"), 0);
}

async fn members(m: &dyn MetaStore) {
    let mem = m
        .create_project("mem", false, None)
        .await
        .expect("create")
        .expect("free");
    let other_project = m
        .create_project("mem-other", false, None)
        .await
        .expect("create")
        .expect("free");
    let u1 = create_user(m, "member-one").await;
    let u2 = create_user(m, "member-two").await;

    let m1 = m
        .add_member(mem.id, &MemberEntity::User(u1.id), 2)
        .await
        .expect("add")
        .expect("free");
    assert_eq!(m1.project_id, mem.id);
    assert_eq!(m1.entity, MemberEntity::User(u1.id));
    assert_eq!(m1.entity_name, "member-one");
    assert_eq!(m1.role, 2);
    // Once per entity, whatever the role.
    assert_eq!(
        m.add_member(mem.id, &MemberEntity::User(u1.id), 3)
            .await
            .expect("add"),
        Err(Conflict)
    );
    let g = m
        .add_member(mem.id, &MemberEntity::Group("cn=member_group".into()), 3)
        .await
        .expect("add")
        .expect("free");
    assert_eq!(g.entity, MemberEntity::Group("cn=member_group".into()));
    assert_eq!(g.entity_name, "cn=member_group");
    assert_eq!(
        m.add_member(mem.id, &MemberEntity::Group("cn=member_group".into()), 2)
            .await
            .expect("add"),
        Err(Conflict)
    );
    // The same entities in another project are fine.
    m.add_member(other_project.id, &MemberEntity::User(u1.id), 1)
        .await
        .expect("add")
        .expect("free");
    m.add_member(
        other_project.id,
        &MemberEntity::Group("cn=member_group".into()),
        1,
    )
    .await
    .expect("add")
    .expect("free");
    // A user that does not exist is the caller's error.
    assert!(m
        .add_member(mem.id, &MemberEntity::User(-5), 2)
        .await
        .is_err());
    let m2 = m
        .add_member(mem.id, &MemberEntity::User(u2.id), 5)
        .await
        .expect("add")
        .expect("free");

    let mem_id = mem.id;
    let list = |contains: Option<&'static str>, p: Page| async move {
        let (got, n) = m
            .list_members(mem_id, contains, p)
            .await
            .expect("list members");
        (got.into_iter().map(|x| x.id).collect::<Vec<_>>(), n)
    };
    assert_eq!(list(None, Page::all()).await, (vec![m1.id, g.id, m2.id], 3));
    assert_eq!(list(None, page(1, 1)).await, (vec![g.id], 3));
    assert_eq!(
        list(Some("member"), Page::all()).await,
        (vec![m1.id, g.id, m2.id], 3)
    );
    assert_eq!(list(Some("-t"), Page::all()).await, (vec![m2.id], 1));
    assert_eq!(list(Some("_"), Page::all()).await, (vec![g.id], 1));
    assert_eq!(list(Some("%"), Page::all()).await, (vec![], 0));
    assert_eq!(list(Some("member"), page(2, 5)).await, (vec![m2.id], 3));

    assert_eq!(
        m.member(mem.id, m2.id).await.expect("member"),
        Some(m2.clone())
    );
    assert_eq!(
        m.member(other_project.id, m2.id).await.expect("member"),
        None,
        "a member id of another project"
    );
    assert!(m.set_member_role(mem.id, m2.id, 4).await.expect("role"));
    assert_eq!(
        m.member(mem.id, m2.id)
            .await
            .expect("member")
            .map(|x| x.role),
        Some(4)
    );
    assert!(!m
        .set_member_role(other_project.id, m2.id, 1)
        .await
        .expect("role elsewhere"));
    assert_eq!(
        m.member(mem.id, m2.id)
            .await
            .expect("member")
            .map(|x| x.role),
        Some(4)
    );
    assert!(!m
        .remove_member(other_project.id, m2.id)
        .await
        .expect("remove elsewhere"));
    assert!(m.remove_member(mem.id, m2.id).await.expect("remove"));
    assert!(!m.remove_member(mem.id, m2.id).await.expect("remove again"));
    assert_eq!(m.member(mem.id, m2.id).await.expect("member"), None);
    assert_eq!(list(None, Page::all()).await, (vec![m1.id, g.id], 2));
}

/// Deleting users and projects, and what goes with them.
async fn deletions(m: &dyn MetaStore) {
    // A user: their memberships go, projects they own lose their owner, robots they
    // created stay.
    let carol = create_user(m, "carol").await;
    let carols = m
        .create_project("carols", false, Some(carol.id))
        .await
        .expect("create")
        .expect("free");
    let shared = m
        .create_project("shared", false, None)
        .await
        .expect("create")
        .expect("free");
    let kept = create_user(m, "kept").await;
    let kept_member = m
        .add_member(shared.id, &MemberEntity::User(kept.id), 2)
        .await
        .expect("add")
        .expect("free");
    m.add_member(shared.id, &MemberEntity::User(carol.id), 2)
        .await
        .expect("add")
        .expect("free");
    let robot = m
        .create_robot(&NewRobot {
            creator: "user:carol".into(),
            ..new_robot("carols-bot", Some(carols.id))
        })
        .await
        .expect("robot")
        .expect("free");
    assert!(m.delete_user(carol.id).await.expect("delete"));
    assert_eq!(m.user_by_id(carol.id).await.expect("get"), None);
    assert_eq!(m.user_by_name("carol").await.expect("get"), None);
    assert_eq!(
        m.project_by_id(carols.id)
            .await
            .expect("get")
            .map(|p| p.owner_id),
        Some(None)
    );
    assert!(m
        .list_members(carols.id, None, Page::all())
        .await
        .expect("members")
        .0
        .is_empty());
    let (left, n) = m
        .list_members(shared.id, None, Page::all())
        .await
        .expect("members");
    assert_eq!((left, n), (vec![kept_member], 1));
    assert_eq!(
        m.robot_by_id(robot.id).await.expect("robot"),
        Some(robot.clone())
    );
    assert!(!m.delete_user(carol.id).await.expect("delete again"));
    // A name freed by a deletion is free again, under a new id.
    let again = create_user(m, "carol").await;
    assert_ne!(again.id, carol.id);

    // A project holding a repository stays, whole.
    let full = m
        .create_project("full", false, Some(kept.id))
        .await
        .expect("create")
        .expect("free");
    let full_bot = m
        .create_robot(&new_robot("bot", Some(full.id)))
        .await
        .expect("robot")
        .expect("free");
    m.link_blob(&repo("full/x"), &digest("full"), 4, &[])
        .await
        .expect("link");
    assert_eq!(
        m.delete_project(full.id).await.expect("delete"),
        ProjectDeletion::NotEmpty(1)
    );
    assert_eq!(
        m.project_by_id(full.id).await.expect("get"),
        Some(full.clone())
    );
    assert_eq!(
        m.list_members(full.id, None, Page::all())
            .await
            .expect("members")
            .1,
        1
    );
    assert!(m.robot_by_id(full_bot.id).await.expect("robot").is_some());

    // An empty one goes with its members and robots, not other projects' or system ones.
    let g = m
        .add_member(carols.id, &MemberEntity::Group("cn=g".into()), 3)
        .await
        .expect("add")
        .expect("free");
    let u = m
        .add_member(carols.id, &MemberEntity::User(kept.id), 3)
        .await
        .expect("add")
        .expect("free");
    let system = m
        .create_robot(&new_robot("carols-bot", None))
        .await
        .expect("robot")
        .expect("free");
    assert_eq!(
        m.delete_project(carols.id).await.expect("delete"),
        ProjectDeletion::Deleted
    );
    assert_eq!(m.project_by_id(carols.id).await.expect("get"), None);
    assert_eq!(m.project_by_name("carols").await.expect("get"), None);
    assert_eq!(m.member(carols.id, g.id).await.expect("member"), None);
    assert_eq!(m.member(carols.id, u.id).await.expect("member"), None);
    assert_eq!(m.robot_by_id(robot.id).await.expect("robot"), None);
    assert_eq!(
        m.robot_by_name(Some(carols.id), "carols-bot")
            .await
            .expect("robot"),
        None
    );
    assert_eq!(
        m.robot_by_id(system.id).await.expect("robot"),
        Some(system.clone())
    );
    assert!(m.robot_by_id(full_bot.id).await.expect("robot").is_some());
    assert_eq!(
        m.list_members(shared.id, None, Page::all())
            .await
            .expect("members")
            .1,
        1
    );
    assert_eq!(
        m.user_by_id(kept.id).await.expect("user").map(|u| u.id),
        Some(kept.id)
    );
    assert_eq!(
        m.delete_project(carols.id).await.expect("delete again"),
        ProjectDeletion::NotFound
    );
    // Its name is free again.
    m.create_project("carols", true, None)
        .await
        .expect("create")
        .expect("free");

    m.delete_robot(system.id).await.expect("delete robot");
}

async fn robots(m: &dyn MetaStore) {
    let p1 = m
        .create_project("bots-one", false, None)
        .await
        .expect("create")
        .expect("free");
    let p2 = m
        .create_project("bots-two", false, None)
        .await
        .expect("create")
        .expect("free");
    let (_, before) = m.list_robots(None, Page::all()).await.expect("list");

    let sys = m
        .create_robot(&NewRobot {
            expires_at: Some(4_000_000_000),
            disabled: true,
            ..new_robot("ci", None)
        })
        .await
        .expect("create")
        .expect("free");
    assert_eq!(sys.name, "ci");
    assert_eq!(sys.description, "robot ci");
    assert_eq!(sys.project_id, None);
    assert_eq!(sys.secret_hash, "$2b$12$secret-of-ci");
    assert!(sys.disabled);
    assert_eq!(sys.expires_at, Some(4_000_000_000));
    assert_eq!(sys.permissions, r#"[{"kind":"project","access":["pull"]}]"#);
    assert_eq!(sys.creator, "user:admin");
    assert!(sys.created_at > 0);
    assert_eq!(sys.created_at, sys.updated_at);
    // Unique among system robots...
    assert_eq!(
        m.create_robot(&new_robot("ci", None))
            .await
            .expect("create"),
        Err(Conflict)
    );
    // ...and per project, but the same name in two projects (and the system) is fine.
    let r1 = m
        .create_robot(&new_robot("ci", Some(p1.id)))
        .await
        .expect("create")
        .expect("free");
    let r2 = m
        .create_robot(&new_robot("ci", Some(p2.id)))
        .await
        .expect("create")
        .expect("free");
    assert_eq!(
        m.create_robot(&new_robot("ci", Some(p1.id)))
            .await
            .expect("create"),
        Err(Conflict)
    );
    let r3 = m
        .create_robot(&new_robot("deploy", Some(p1.id)))
        .await
        .expect("create")
        .expect("free");
    assert_eq!(r1.project_id, Some(p1.id));
    assert_ne!(r1.id, r2.id);
    // A project that does not exist is the caller's error.
    assert!(m.create_robot(&new_robot("ci", Some(-7))).await.is_err());

    assert_eq!(m.robot_by_id(r2.id).await.expect("by id"), Some(r2.clone()));
    assert_eq!(m.robot_by_id(-1).await.expect("by id"), None);
    assert_eq!(
        m.robot_by_name(None, "ci").await.expect("by name"),
        Some(sys.clone())
    );
    assert_eq!(
        m.robot_by_name(Some(p1.id), "ci").await.expect("by name"),
        Some(r1.clone())
    );
    assert_eq!(
        m.robot_by_name(Some(p2.id), "ci").await.expect("by name"),
        Some(r2.clone())
    );
    assert_eq!(
        m.robot_by_name(Some(p2.id), "deploy")
            .await
            .expect("by name"),
        None
    );
    assert_eq!(
        m.robot_by_name(None, "deploy").await.expect("by name"),
        None
    );

    let ids =
        |(robots, n): (Vec<Robot>, u64)| (robots.into_iter().map(|r| r.id).collect::<Vec<_>>(), n);
    assert_eq!(
        ids(m
            .list_robots(Some(Some(p1.id)), Page::all())
            .await
            .expect("list")),
        (vec![r1.id, r3.id], 2)
    );
    assert_eq!(
        ids(m
            .list_robots(Some(Some(p1.id)), page(1, 1))
            .await
            .expect("list")),
        (vec![r3.id], 2)
    );
    assert_eq!(
        ids(m
            .list_robots(Some(Some(p2.id)), Page::all())
            .await
            .expect("list")),
        (vec![r2.id], 1)
    );
    let (system, n) = m.list_robots(Some(None), Page::all()).await.expect("list");
    assert!(system.iter().all(|r| r.project_id.is_none()));
    assert!(system.iter().any(|r| r.id == sys.id));
    assert_eq!(n, system.len() as u64);
    let (all, n) = m.list_robots(None, Page::all()).await.expect("list");
    assert_eq!(n, before + 4);
    assert_eq!(all.len() as u64, n);
    assert!(all.windows(2).all(|w| w[0].id < w[1].id), "by id");
    let (tail, n) = m.list_robots(None, page(n - 1, 10)).await.expect("list");
    assert_eq!(tail.len(), 1);
    assert_eq!(n, before + 4);

    // Changes: only the fields given; expiry can be cleared.
    assert!(m
        .update_robot(
            sys.id,
            &RobotChanges {
                description: Some("new".into()),
                ..RobotChanges::default()
            }
        )
        .await
        .expect("update"));
    let got = m.robot_by_id(sys.id).await.expect("get").expect("sys");
    assert_eq!(got.description, "new");
    assert!(got.disabled);
    assert_eq!(got.expires_at, Some(4_000_000_000));
    assert_eq!(got.permissions, sys.permissions);
    assert!(got.updated_at >= sys.updated_at);
    assert!(m
        .update_robot(
            sys.id,
            &RobotChanges {
                disabled: Some(false),
                expires_at: Some(None),
                permissions: Some("[]".into()),
                ..RobotChanges::default()
            }
        )
        .await
        .expect("update"));
    let got = m.robot_by_id(sys.id).await.expect("get").expect("sys");
    assert_eq!(
        (
            got.description.as_str(),
            got.disabled,
            got.expires_at,
            got.permissions.as_str()
        ),
        ("new", false, None, "[]")
    );
    assert!(m
        .update_robot(
            sys.id,
            &RobotChanges {
                expires_at: Some(Some(17)),
                ..RobotChanges::default()
            }
        )
        .await
        .expect("update"));
    assert_eq!(
        m.robot_by_id(sys.id)
            .await
            .expect("get")
            .expect("sys")
            .expires_at,
        Some(17)
    );
    assert!(!m
        .update_robot(-1, &RobotChanges::default())
        .await
        .expect("update unknown"));

    assert!(m
        .set_robot_secret(r1.id, "$2b$12$rotated")
        .await
        .expect("secret"));
    assert_eq!(
        m.robot_by_id(r1.id)
            .await
            .expect("get")
            .expect("r1")
            .secret_hash,
        "$2b$12$rotated"
    );
    assert!(!m.set_robot_secret(-1, "x").await.expect("secret unknown"));

    assert!(m.delete_robot(r1.id).await.expect("delete"));
    assert!(!m.delete_robot(r1.id).await.expect("delete again"));
    assert_eq!(m.robot_by_id(r1.id).await.expect("get"), None);
    // The name is free again in its project.
    m.create_robot(&new_robot("ci", Some(p1.id)))
        .await
        .expect("create")
        .expect("free");
}

fn key(kid: &str, created_at: i64) -> SigningKey {
    SigningKey {
        kid: kid.to_string(),
        private_pem: format!("-----BEGIN PRIVATE KEY-----\n{kid}\n-----END PRIVATE KEY-----\n"),
        cert_pem: format!("-----BEGIN CERTIFICATE-----\n{kid}\n-----END CERTIFICATE-----\n"),
        created_at,
        retired_at: None,
    }
}

fn retired(mut k: SigningKey, at: i64) -> SigningKey {
    k.retired_at = Some(at);
    k
}

async fn signing_keys(m: &dyn MetaStore) {
    assert!(m.signing_keys().await.expect("keys").is_empty());
    // Nodes starting at once: the first key wins, the others are not stored.
    assert!(m.add_first_signing_key(&key("k1", 10)).await.expect("add"));
    assert!(!m.add_first_signing_key(&key("k2", 11)).await.expect("add"));
    assert_eq!(m.signing_keys().await.expect("keys"), vec![key("k1", 10)]);

    // Rotation: the old key retired at the given time, the new one current.
    m.rotate_signing_key(&key("k3", 20), 100)
        .await
        .expect("rotate");
    assert_eq!(
        m.signing_keys().await.expect("keys"),
        vec![key("k3", 20), retired(key("k1", 10), 100)]
    );
    // Still a current key: a starting node adds none.
    assert!(!m.add_first_signing_key(&key("k4", 30)).await.expect("add"));
    // Rotated again within the same second: still newest first.
    m.rotate_signing_key(&key("k5", 20), 150)
        .await
        .expect("rotate");
    assert_eq!(
        m.signing_keys().await.expect("keys"),
        vec![
            key("k5", 20),
            retired(key("k3", 20), 150),
            retired(key("k1", 10), 100)
        ]
    );

    // Retired keys go once retired before the cut; the current one never.
    assert_eq!(m.drop_retired_keys(100).await.expect("drop"), 0);
    assert_eq!(m.drop_retired_keys(101).await.expect("drop"), 1);
    assert_eq!(
        m.signing_keys().await.expect("keys"),
        vec![key("k5", 20), retired(key("k3", 20), 150)]
    );
    assert_eq!(m.drop_retired_keys(i64::MAX).await.expect("drop"), 1);
    assert_eq!(m.signing_keys().await.expect("keys"), vec![key("k5", 20)]);
}

fn record(
    time_ms: i64,
    principal: &str,
    project: Option<&str>,
    op: &str,
    resource: &str,
) -> AuditRecord {
    AuditRecord {
        time_ms,
        principal: principal.to_string(),
        client: "192.0.2.1".to_string(),
        resource_type: if project.is_some() {
            "artifact"
        } else {
            "user"
        }
        .to_string(),
        resource: resource.to_string(),
        project: project.map(str::to_string),
        operation: op.to_string(),
        result: "success".to_string(),
    }
}

async fn audit(m: &dyn MetaStore) {
    m.record_audit(&[]).await.expect("nothing to record");
    assert_eq!(
        m.audit_log(&AuditQuery::default(), Page::all())
            .await
            .expect("log"),
        (vec![], 0)
    );
    let records = [
        record(1_000, "alice", Some("web"), "push", "web/app:1.0"),
        record(2_000, "bob", Some("web"), "pull", "web/app:1.0"),
        record(3_000, "alice", None, "create", "bob"),
        record(4_000, "robot$web+ci", Some("web"), "push", "web/app_%:2.0"),
        record(5_000, "alice", Some("api"), "delete", "api/svc@sha256:00"),
    ];
    m.record_audit(&records[..3]).await.expect("record");
    m.record_audit(&records[3..]).await.expect("record");
    // Same millisecond as the newest: the later append lists first.
    let late = record(5_000, "anonymous", Some("api"), "pull", "api/svc:1");
    m.record_audit(std::slice::from_ref(&late))
        .await
        .expect("record");

    let (all, n) = m
        .audit_log(&AuditQuery::default(), Page::all())
        .await
        .expect("log");
    assert_eq!(n, 6);
    let got: Vec<AuditRecord> = all.iter().map(|e| e.record.clone()).collect();
    let mut want = vec![late.clone()];
    want.extend(records.iter().rev().cloned());
    assert_eq!(got, want, "newest first");
    assert!(all.windows(2).all(|w| w[0].id != w[1].id));
    assert!(all[0].id > all[1].id);

    let query = |q: AuditQuery, p: Page| async move {
        let (entries, n) = m.audit_log(&q, p).await.expect("log");
        (
            entries
                .into_iter()
                .map(|e| e.record.time_ms)
                .collect::<Vec<_>>(),
            n,
        )
    };
    let q = AuditQuery::default;
    assert_eq!(query(q(), page(1, 2)).await, (vec![5_000, 4_000], 6));
    assert_eq!(query(q(), page(6, 2)).await, (vec![], 6));
    assert_eq!(
        query(
            AuditQuery {
                project: Some("web".into()),
                ..q()
            },
            Page::all()
        )
        .await,
        (vec![4_000, 2_000, 1_000], 3)
    );
    assert_eq!(
        query(
            AuditQuery {
                principal: Some("alice".into()),
                ..q()
            },
            Page::all()
        )
        .await,
        (vec![5_000, 3_000, 1_000], 3)
    );
    assert_eq!(
        query(
            AuditQuery {
                principal: Some("ali".into()),
                ..q()
            },
            Page::all()
        )
        .await,
        (vec![], 0),
        "principal matches exactly"
    );
    assert_eq!(
        query(
            AuditQuery {
                operation: Some("push".into()),
                ..q()
            },
            Page::all()
        )
        .await,
        (vec![4_000, 1_000], 2)
    );
    assert_eq!(
        query(
            AuditQuery {
                resource_type: Some("user".into()),
                ..q()
            },
            Page::all()
        )
        .await,
        (vec![3_000], 1)
    );
    assert_eq!(
        query(
            AuditQuery {
                resource_contains: Some("_%".into()),
                ..q()
            },
            Page::all()
        )
        .await,
        (vec![4_000], 1),
        "a substring, literally"
    );
    assert_eq!(
        query(
            AuditQuery {
                resource_contains: Some("app".into()),
                ..q()
            },
            Page::all()
        )
        .await,
        (vec![4_000, 2_000, 1_000], 3)
    );
    assert_eq!(
        query(
            AuditQuery {
                from_ms: Some(2_000),
                to_ms: Some(4_000),
                ..q()
            },
            Page::all()
        )
        .await,
        (vec![4_000, 3_000, 2_000], 3),
        "bounds inclusive"
    );
    assert_eq!(
        query(
            AuditQuery {
                from_ms: Some(4_500),
                ..q()
            },
            Page::all()
        )
        .await,
        (vec![5_000, 5_000], 2)
    );
    assert_eq!(
        query(
            AuditQuery {
                project: Some("web".into()),
                principal: Some("alice".into()),
                operation: Some("push".into()),
                resource_type: Some("artifact".into()),
                resource_contains: Some("web/".into()),
                from_ms: Some(1_000),
                to_ms: Some(1_000),
                projects: Some(vec!["web".into(), "ops".into()]),
            },
            Page::all()
        )
        .await,
        (vec![1_000], 1),
        "every filter at once"
    );
    assert_eq!(
        query(
            AuditQuery {
                projects: Some(Vec::new()),
                ..AuditQuery::default()
            },
            Page::all()
        )
        .await
        .1,
        0,
        "an empty project list shows nothing"
    );
    assert_eq!(
        query(
            AuditQuery {
                project: Some("web".into()),
                ..q()
            },
            page(1, 1)
        )
        .await,
        (vec![2_000], 3)
    );

    // Pruning: oldest first, at most `limit`, strictly before the cut.
    assert_eq!(m.prune_audit(3_000, 1).await.expect("prune"), 1);
    assert_eq!(
        query(q(), Page::all()).await,
        (vec![5_000, 5_000, 4_000, 3_000, 2_000], 5),
        "the oldest went first"
    );
    assert_eq!(m.prune_audit(3_000, 0).await.expect("prune"), 0);
    assert_eq!(m.prune_audit(3_000, 10).await.expect("prune"), 1);
    assert_eq!(m.prune_audit(3_000, 10).await.expect("prune"), 0);
    assert_eq!(
        query(q(), Page::all()).await,
        (vec![5_000, 5_000, 4_000, 3_000], 4)
    );
}

async fn catalog_within(m: &dyn MetaStore) {
    for name in ["ab/x", "a/y", "a/b/c", "a-b/x", "a0/x", "a/x", "b/z"] {
        m.link_blob(&repo(name), &digest("catalog"), 1, &[])
            .await
            .expect("link");
    }
    let list = |last: Option<&'static str>, limit: u32, within: &'static [&'static str]| async move {
        let within: Vec<String> = within.iter().map(|s| s.to_string()).collect();
        m.list_repositories(last, limit, Some(&within))
            .await
            .expect("list")
    };
    assert!(m
        .list_repositories(None, 100, Some(&[]))
        .await
        .expect("list")
        .is_empty());
    // A project is a whole first component: `a` holds neither `ab/x` nor `a-b/x`.
    assert_eq!(list(None, 100, &["a"]).await, ["a/b/c", "a/x", "a/y"]);
    assert_eq!(list(None, 100, &["ab"]).await, ["ab/x"]);
    assert_eq!(list(None, 100, &["nope"]).await, Vec::<String>::new());
    assert_eq!(
        list(None, 100, &["a/b"]).await,
        Vec::<String>::new(),
        "no first component holds a '/'"
    );
    // Byte order across projects, whatever order they are given in, duplicates once.
    let full = ["a-b/x", "a/b/c", "a/x", "a/y", "ab/x", "b/z"];
    assert_eq!(list(None, 100, &["b", "ab", "a", "a-b", "a"]).await, full);
    // Pages keep their size and continue after `last`.
    let projects: &'static [&'static str] = &["ab", "a", "b", "a-b"];
    let mut walked = Vec::new();
    let mut last: Option<&'static str> = None;
    loop {
        let page = list(last, 2, projects).await;
        assert!(page.len() <= 2);
        let Some(tail) = page.last() else { break };
        last = Some(
            full.iter()
                .copied()
                .find(|n| *n == tail.as_str())
                .expect("listed"),
        );
        let short = page.len() < 2;
        walked.extend(page);
        if short {
            break;
        }
    }
    assert_eq!(walked, full);
    assert_eq!(list(Some("a/x"), 2, &["a", "b"]).await, ["a/y", "b/z"]);
    assert_eq!(list(Some("a/"), 1, &["a"]).await, ["a/b/c"]);
    assert_eq!(list(Some("a0"), 10, &["a", "b"]).await, ["b/z"]);
    assert_eq!(list(Some("zzz"), 10, projects).await, Vec::<String>::new());
    assert_eq!(list(None, 0, projects).await, Vec::<String>::new());
    // Without a restriction: everything, as before.
    let everything = m
        .list_repositories(None, u32::MAX, None)
        .await
        .expect("list");
    for name in ["a/x", "a0/x", "ab/x", "team/app", "acme"] {
        assert!(everything.iter().any(|n| n == name), "{name} listed");
    }
    assert!(everything.windows(2).all(|w| w[0] < w[1]));
}
