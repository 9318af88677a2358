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
