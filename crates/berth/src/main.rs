//! The `berth` command: `berth serve [CONFIG]` and friends. Parses arguments, loads the
//! configuration, sets up logging, and hands over to the library.

use anyhow::Context as _;
use berth::config::{Loaded, LogFormat};
use berth::logging::WithFields;
use clap::{Parser, Subcommand};
use std::io::IsTerminal;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "berth",
    version,
    about = "A fast OCI container registry, drop-in for registry:2"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the registry. Without CONFIG: filesystem storage in ./berth-data, port 5000.
    Serve {
        /// A CNCF Distribution config.yml (version 0.1); REGISTRY_* variables override it.
        config: Option<PathBuf>,
    },
    /// Delete blobs no manifest references (safe while the registry serves: blobs younger
    /// than --grace are kept), as Distribution's `registry garbage-collect` does.
    GarbageCollect {
        /// Do everything except delete.
        #[arg(short = 'd', long)]
        dry_run: bool,
        /// Delete manifests no tag reaches (index children and referrers of reachable
        /// manifests are reachable), then the blobs only they referenced.
        #[arg(short = 'm', long)]
        delete_untagged: bool,
        /// Keep anything younger than this (e.g. 30m, 1h, 24h).
        #[arg(long, default_value = "1h", value_parser = parse_grace)]
        grace: std::time::Duration,
        /// The registry's config.yml; REGISTRY_* variables override it.
        #[arg(env = "REGISTRY_CONFIGURATION_PATH")]
        config: PathBuf,
    },
    /// Bring content from another registry's storage into Berth's.
    Import {
        #[command(subcommand)]
        source: ImportSource,
    },
    /// Copy a single node (filesystem or S3 blobs + its SQLite database) into a cluster's
    /// storage and PostgreSQL database, while the node serves; run it again after
    /// stopping the node to catch up. REGISTRY_* variables apply to the target only.
    Migrate {
        /// Replace the target database's content even if something other than this
        /// source's last migration wrote it.
        #[arg(long)]
        force: bool,
        /// Blobs copied at once.
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
        concurrency: u16,
        /// The single node's config.yml (read as written; no REGISTRY_* variables).
        source: PathBuf,
        /// The cluster's config.yml (storage.s3 or another filesystem root, and
        /// database.driver: postgres); REGISTRY_* variables override it.
        target: PathBuf,
    },
    /// Manage users of auth.berth (on the configuration's database; no server needed).
    User {
        #[command(subcommand)]
        action: UserAction,
    },
    /// Manage projects of auth.berth.
    Project {
        #[command(subcommand)]
        action: ProjectAction,
    },
    /// Manage robot accounts of auth.berth.
    Robot {
        #[command(subcommand)]
        action: RobotAction,
    },
    /// The token service's signing key (auth.berth).
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
}

#[derive(Subcommand)]
enum UserAction {
    /// Create a local user; the password is read from standard input (one line).
    Add {
        name: String,
        /// Make the user a system administrator.
        #[arg(long)]
        admin: bool,
        #[arg(long, default_value = "")]
        email: String,
        #[arg(long, default_value = "")]
        realname: String,
        /// The registry's config.yml (default: the embedded defaults, ./berth-data).
        #[arg(env = "REGISTRY_CONFIGURATION_PATH")]
        config: Option<PathBuf>,
    },
    /// List users.
    List {
        #[arg(env = "REGISTRY_CONFIGURATION_PATH")]
        config: Option<PathBuf>,
    },
    /// Set a user's password, read from standard input (one line).
    Passwd {
        name: String,
        #[arg(env = "REGISTRY_CONFIGURATION_PATH")]
        config: Option<PathBuf>,
    },
    /// Delete a user and their memberships (tokens they hold stop working within seconds).
    Delete {
        name: String,
        #[arg(env = "REGISTRY_CONFIGURATION_PATH")]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ProjectAction {
    /// Create a project.
    Create {
        name: String,
        /// Anyone, anonymous included, may pull.
        #[arg(long)]
        public: bool,
        /// Make this user its project admin.
        #[arg(long)]
        owner: Option<String>,
        /// Only clients in these networks (comma-separated CIDRs) may push to and delete
        /// in it (beside auth.berth.pushnetworks).
        #[arg(long)]
        push_networks: Option<String>,
        #[arg(env = "REGISTRY_CONFIGURATION_PATH")]
        config: Option<PathBuf>,
    },
    /// List projects.
    List {
        #[arg(env = "REGISTRY_CONFIGURATION_PATH")]
        config: Option<PathBuf>,
    },
    /// Give a user, or with --group a directory group, a role in a project: admin (1),
    /// developer (2), guest (3), maintainer (4) or limited-guest (5).
    #[command(
        override_usage = "berth project add-member PROJECT (USER | --group DN) [--role ROLE] [CONFIG]"
    )]
    AddMember {
        project: String,
        /// The user (omitted with --group).
        #[arg(required_unless_present = "group")]
        user: Option<String>,
        /// An LDAP group's DN (cn=devs,ou=groups,dc=example,dc=org): its members hold
        /// the role.
        #[arg(long, value_name = "DN")]
        group: Option<String>,
        #[arg(long, default_value = "developer")]
        role: String,
        #[arg(env = "REGISTRY_CONFIGURATION_PATH")]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum RobotAction {
    /// Create a robot account and print its name and secret (shown only this once).
    Create {
        name: String,
        /// A project robot of this project; without it, a system robot.
        #[arg(long)]
        project: Option<String>,
        /// Projects a system robot reaches: names, or `*` for all (repeatable).
        #[arg(long = "namespace", default_value = "*")]
        namespaces: Vec<String>,
        /// Permissions as resource:action, comma-separated (repository:pull,repository:push,
        /// artifact:delete, tag:create, ...).
        #[arg(long, default_value = "repository:pull")]
        access: String,
        /// Days until it expires; -1 never.
        #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
        duration: i64,
        #[arg(long, default_value = "")]
        description: String,
        #[arg(env = "REGISTRY_CONFIGURATION_PATH")]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum TokenAction {
    /// Print the certificate of the current signing key (PEM): a registry:2 that should
    /// trust Berth's tokens takes it as auth.token.rootcertbundle.
    Certificate {
        #[arg(env = "REGISTRY_CONFIGURATION_PATH")]
        config: Option<PathBuf>,
    },
    /// Sign with a new key from now on; tokens of the old one stay valid until they expire.
    Rotate {
        #[arg(env = "REGISTRY_CONFIGURATION_PATH")]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ImportSource {
    /// Import every repository, tag, manifest and blob of a filesystem store written by
    /// CNCF Distribution (registry:2). Stop Berth first, or import into a fresh root.
    Distribution {
        /// Distribution's storage.filesystem.rootdirectory (holds docker/registry/v2).
        rootdirectory: PathBuf,
        /// Berth's config.yml naming the target storage (default: ./berth-data).
        config: Option<PathBuf>,
    },
}

fn parse_grace(s: &str) -> Result<std::time::Duration, String> {
    berth::config::parse_duration(s)
        .ok_or_else(|| format!("{s:?} is not a duration like 30m or 1h"))
}

fn init_logging(config: &berth::config::Config) {
    init_logging_at(&config.log_level, config);
}

/// Logging at `level` with the formatter and `log.fields` of `config`.
fn init_logging_at(level: &str, config: &berth::config::Config) {
    use tracing_subscriber::fmt::format;
    let filter = tracing_subscriber::EnvFilter::try_from_env("BERTH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("{level},sqlx=warn")));
    let fields = &config.log_fields;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Json => builder
            .json()
            .event_format(WithFields::new(format().json(), fields, true))
            .init(),
        LogFormat::Text => {
            // With log.fields the line is assembled in a buffer, which keeps no colours.
            let ansi = fields.is_empty()
                && std::io::stderr().is_terminal()
                && std::env::var_os("NO_COLOR").is_none();
            builder
                .with_ansi(ansi)
                .event_format(WithFields::new(format().with_ansi(ansi), fields, false))
                .init()
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down: finishing in-flight requests");
}

fn main() -> std::process::ExitCode {
    // One crypto provider for every rustls user in the process: the server's TLS (which
    // also names ring explicitly) and reqwest's client for https webhooks and upstreams.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The whole cause chain on one line, never a backtrace: RUST_BACKTRACE set in
            // an operator's environment must not turn a configuration error into a dump.
            use std::io::Write as _;
            let _ = writeln!(std::io::stderr(), "error: {}", error_line(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// The cause chain joined with `: `, each cause once: many errors already say their
/// source in their own message, and printing it again after them only repeats it.
fn error_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { config } => {
            let loaded = Loaded::load(config.as_deref(), std::env::vars())
                .context("invalid configuration")?;
            init_logging(&loaded.config);
            for w in &loaded.warnings {
                tracing::warn!("{w}");
            }
            for n in &loaded.notes {
                tracing::info!("{n}");
            }
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            if let Some(n) = loaded.config.max_threads {
                builder.max_blocking_threads(n);
            }
            let runtime = builder
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            runtime.block_on(berth::state::run(loaded.config, shutdown_signal()))?;
            Ok(())
        }
        Command::GarbageCollect {
            dry_run,
            delete_untagged,
            grace,
            config,
        } => {
            let loaded =
                Loaded::load(Some(&config), std::env::vars()).context("invalid configuration")?;
            init_logging(&loaded.config);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            let options = berth::registry::gc::GcOptions {
                dry_run,
                delete_untagged,
                grace,
                owner: format!(
                    "berth garbage-collect, pid {} on {}",
                    std::process::id(),
                    berth::config::events::hostname()
                ),
            };
            let mut print = |line: String| {
                use std::io::Write as _;
                let _ = writeln!(std::io::stdout(), "{line}");
            };
            runtime
                .block_on(berth::state::garbage_collect(
                    &loaded.config,
                    &options,
                    &mut print,
                ))
                .context("failed to garbage collect")?;
            Ok(())
        }
        Command::Import {
            source:
                ImportSource::Distribution {
                    rootdirectory,
                    config,
                },
        } => import_distribution(&rootdirectory, config.as_deref()),
        Command::Migrate {
            force,
            concurrency,
            source,
            target,
        } => migrate(&source, &target, force, concurrency.into()),
        Command::User { action } => admin::user(action),
        Command::Project { action } => admin::project(action),
        Command::Robot { action } => admin::robot(action),
        Command::Token { action } => admin::token(action),
    }
}

/// The account commands: each opens the configuration's database, acts as the system
/// (whoever holds the configuration holds everything), prints a result line.
mod admin {
    use super::{ProjectAction, RobotAction, TokenAction, UserAction};
    use anyhow::Context as _;
    use berth::auth::accounts::{Accounts, MemberTarget, ProjectKey, RobotRequest, UserRequest};
    use berth::auth::berth::Who;
    use berth::auth::rbac::{RobotAccess, RobotPermission};
    use berth::config::Loaded;
    use std::io::Write as _;
    use std::path::Path;

    fn out(line: String) {
        let _ = writeln!(std::io::stdout(), "{line}");
    }

    /// Run `f` over the accounts of the configuration at `config`.
    fn with_accounts<T>(
        config: Option<&Path>,
        f: impl AsyncFnOnce(&Accounts) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let loaded = Loaded::load(config, std::env::vars()).context("invalid configuration")?;
        super::init_logging_at("warn", &loaded.config);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?;
        runtime.block_on(async {
            let accounts = berth::state::accounts(&loaded.config).await?;
            f(&accounts).await
        })
    }

    /// One line of standard input, without its line end.
    fn read_password() -> anyhow::Result<String> {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .context("cannot read the password from standard input")?;
        let p = line.trim_end_matches(['\n', '\r']).to_string();
        if p.is_empty() {
            anyhow::bail!("no password on standard input: pipe it in, e.g. echo 'S3cretPassw0rd' | berth user add NAME CONFIG");
        }
        Ok(p)
    }

    pub fn user(action: UserAction) -> anyhow::Result<()> {
        match action {
            UserAction::Add {
                name,
                admin,
                email,
                realname,
                config,
            } => {
                let password = read_password()?;
                with_accounts(config.as_deref(), async |a| {
                    let u = a
                        .create_user(
                            &Who::System,
                            UserRequest {
                                username: name,
                                password,
                                email,
                                realname,
                                comment: String::new(),
                            },
                            admin,
                        )
                        .await?;
                    out(format!(
                        "created user {} (id {}){}",
                        u.username,
                        u.id,
                        if u.admin {
                            ", a system administrator"
                        } else {
                            ""
                        }
                    ));
                    Ok(())
                })
            }
            UserAction::List { config } => with_accounts(config.as_deref(), async |a| {
                let (users, total) = a
                    .list_users(&Who::System, None, berth::meta::Page::all())
                    .await?;
                for u in users {
                    out(format!(
                        "{}\t{}\t{}\t{}",
                        u.id,
                        u.username,
                        if u.admin { "admin" } else { "user" },
                        u.source.as_str()
                    ));
                }
                out(format!("{total} users"));
                Ok(())
            }),
            UserAction::Passwd { name, config } => {
                let password = read_password()?;
                with_accounts(config.as_deref(), async |a| {
                    let user = a.user_named(&Who::System, &name).await?;
                    a.change_password(&Who::System, user.id, None, &password)
                        .await?;
                    out(format!("changed the password of {name}"));
                    Ok(())
                })
            }
            UserAction::Delete { name, config } => with_accounts(config.as_deref(), async |a| {
                let user = a.user_named(&Who::System, &name).await?;
                a.delete_user(&Who::System, user.id).await?;
                out(format!("deleted user {name}"));
                Ok(())
            }),
        }
    }

    /// A role by name or number.
    fn role_id(role: &str) -> anyhow::Result<u8> {
        Ok(match role {
            "1" | "admin" | "projectadmin" | "projectAdmin" => 1,
            "2" | "developer" => 2,
            "3" | "guest" => 3,
            "4" | "maintainer" => 4,
            "5" | "limited-guest" | "limitedguest" | "limitedGuest" => 5,
            other => anyhow::bail!(
                "{other:?} is not a role: use admin, maintainer, developer, guest or limited-guest"
            ),
        })
    }

    pub fn project(action: ProjectAction) -> anyhow::Result<()> {
        match action {
            ProjectAction::Create {
                name,
                public,
                owner,
                push_networks,
                config,
            } => with_accounts(config.as_deref(), async |a| {
                let p = a.create_project(&Who::System, &name, public).await?;
                if let Some(n) = &push_networks {
                    a.set_project_push_networks(&Who::System, &ProjectKey::Id(p.id), n)
                        .await?;
                    out(format!("only clients in {n} may push to it"));
                }
                out(format!(
                    "created {} project {} (id {})",
                    if p.public { "public" } else { "private" },
                    p.name,
                    p.id
                ));
                if let Some(owner) = owner {
                    a.add_member(
                        &Who::System,
                        &ProjectKey::Id(p.id),
                        MemberTarget::UserName(owner.clone()),
                        1,
                    )
                    .await?;
                    out(format!("{owner} is its project admin"));
                }
                Ok(())
            }),
            ProjectAction::AddMember {
                project,
                user,
                group,
                role,
                config,
            } => {
                let role = role_id(&role)?;
                // With --group the first positional after PROJECT is the configuration.
                // (REGISTRY_CONFIGURATION_PATH fills `config` when no third is given.)
                let from_env = |c: &std::path::PathBuf| {
                    std::env::var_os("REGISTRY_CONFIGURATION_PATH").is_some_and(|v| v == *c)
                };
                let (target, config) = match (group, user, config) {
                    (Some(_), Some(_), Some(c)) if !from_env(&c) => {
                        anyhow::bail!("give either a user or --group DN, not both")
                    }
                    (Some(dn), Some(positional), _) => (
                        MemberTarget::Group(dn),
                        Some(std::path::PathBuf::from(positional)),
                    ),
                    (Some(dn), None, config) => (MemberTarget::Group(dn), config),
                    (None, Some(user), config) => (MemberTarget::UserName(user), config),
                    (None, None, _) => anyhow::bail!("name a user, or a group with --group DN"),
                };
                with_accounts(config.as_deref(), async |a| {
                    let member = a
                        .add_member(
                            &Who::System,
                            &ProjectKey::Name(project.clone()),
                            target.clone(),
                            role,
                        )
                        .await?;
                    // The group's DN as stored (normalized), which memberships match.
                    let name = match member.entity {
                        berth::meta::MemberEntity::Group(dn) => format!("group {dn}"),
                        berth::meta::MemberEntity::User(_) => member.entity_name,
                    };
                    out(format!("{name} now has role {role} in {project}"));
                    Ok(())
                })
            }
            ProjectAction::List { config } => with_accounts(config.as_deref(), async |a| {
                let (projects, total) = a
                    .list_projects(&Who::System, None, None, berth::meta::Page::all())
                    .await?;
                for p in projects {
                    out(format!(
                        "{}\t{}\t{}",
                        p.id,
                        p.name,
                        if p.public { "public" } else { "private" }
                    ));
                }
                out(format!("{total} projects"));
                Ok(())
            }),
        }
    }

    pub fn robot(action: RobotAction) -> anyhow::Result<()> {
        let RobotAction::Create {
            name,
            project,
            namespaces,
            access,
            duration,
            description,
            config,
        } = action;
        let mut entries = Vec::new();
        for item in access.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (resource, action) = item.split_once(':').with_context(|| {
                format!("{item:?} is not resource:action (e.g. repository:push)")
            })?;
            entries.push(RobotAccess {
                resource: resource.into(),
                action: action.into(),
                effect: None,
            });
        }
        let (level, namespaces) = match &project {
            Some(p) => ("project", vec![p.clone()]),
            None => ("system", namespaces),
        };
        let permissions = namespaces
            .into_iter()
            .map(|namespace| RobotPermission {
                kind: "project".into(),
                namespace,
                access: entries.clone(),
            })
            .collect();
        with_accounts(config.as_deref(), async |a| {
            let created = a
                .create_robot(
                    &Who::System,
                    RobotRequest {
                        name,
                        description,
                        level: level.into(),
                        disable: false,
                        duration,
                        permissions,
                    },
                )
                .await?;
            out(format!("name: {}", created.full_name));
            out(format!("secret: {}", created.secret));
            out("(the secret is shown only this once: store it now)".into());
            Ok(())
        })
    }

    pub fn token(action: TokenAction) -> anyhow::Result<()> {
        match action {
            TokenAction::Certificate { config } => with_accounts(config.as_deref(), async |a| {
                let _ = write!(std::io::stdout(), "{}", a.access().signing_certificate());
                Ok(())
            }),
            TokenAction::Rotate { config } => with_accounts(config.as_deref(), async |a| {
                let kid = a.access().rotate_key().await?;
                out(format!("signing with the new key {kid}; tokens of the old key stay valid until they expire (servers pick the new key up within a second of seeing a token of it)"));
                Ok(())
            }),
        }
    }
}

/// `berth import distribution`: progress on stdout, problems on stderr, a summary last;
/// fails (non-zero exit) if anything was not imported.
fn import_distribution(
    root: &std::path::Path,
    config: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    use berth::import::Event;
    use std::io::Write as _;
    let loaded = Loaded::load(config, std::env::vars()).context("invalid configuration")?;
    init_logging_at("warn", &loaded.config);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let target = loaded.config.root.clone();
    let summary = runtime.block_on(async {
        let registry = berth::state::build_registry(&loaded.config).await?;
        let mut on_event = |event: Event| {
            let _ = match event {
                Event::Repository {
                    name,
                    blobs,
                    manifests,
                    tags,
                    errors,
                } => writeln!(
                    std::io::stdout(),
                    "{name}: {blobs} blobs, {manifests} manifests, {tags} tags imported, {errors} errors"
                ),
                Event::Warning(w) => writeln!(std::io::stderr(), "warning: {w}"),
                Event::Error(e) => writeln!(std::io::stderr(), "error: {e}"),
            };
        };
        let summary = berth::import::import_distribution(&registry, root, &mut on_event).await?;
        anyhow::Ok(summary)
    })?;
    let _ = writeln!(
        std::io::stdout(),
        "imported {} into {}: {summary}",
        root.display(),
        target.display()
    );
    if summary.errors > 0 {
        anyhow::bail!(
            "{} items were not imported (see the errors above); fix or remove them in the source and run the import again: what is already imported is not imported twice",
            summary.errors
        );
    }
    Ok(())
}

/// `berth migrate`: steps and progress on stdout, problems on stderr, a summary last.
fn migrate(
    source: &std::path::Path,
    target: &std::path::Path,
    force: bool,
    concurrency: usize,
) -> anyhow::Result<()> {
    use berth::migrate::{bytes, Event};
    use std::io::Write as _;
    let no_env = std::iter::empty::<(String, String)>();
    let from = Loaded::load(Some(source), no_env)
        .with_context(|| format!("invalid source configuration {}", source.display()))?;
    let to = Loaded::load(Some(target), std::env::vars())
        .with_context(|| format!("invalid target configuration {}", target.display()))?;
    init_logging_at("warn", &to.config);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let mut on_event = |event: Event| {
        let _ = match event {
            Event::Step(s) => writeln!(std::io::stdout(), "{s}"),
            Event::Blobs(b) => writeln!(
                std::io::stdout(),
                "blobs: {} copied ({}), {} to copy in this pass ({}), {} already in the target, {} failed",
                b.copied,
                bytes(b.copied_bytes),
                b.pending,
                bytes(b.pending_bytes),
                b.present,
                b.failed
            ),
            Event::Table(t) => writeln!(std::io::stdout(), "  {}: {} rows", t.table, t.rows),
            Event::Warning(w) => writeln!(std::io::stderr(), "warning: {w}"),
            Event::Error(e) => writeln!(std::io::stderr(), "error: {e}"),
        };
    };
    let summary = runtime
        .block_on(berth::state::migrate(
            &from.config,
            &to.config,
            force,
            concurrency,
            &mut on_event,
        ))
        .context("berth migrate stopped")?;
    let _ = writeln!(
        std::io::stdout(),
        "migrated {} into {}: {summary}",
        source.display(),
        target.display()
    );
    Ok(())
}
