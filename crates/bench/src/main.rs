//! `berth-bench`: measures an OCI registry over raw HTTP (push, pull, blob fan-out,
//! small pushes, manifest GET/HEAD, catalog pagination, and, in `compare`, a
//! pull-through cache scenario, manifest GETs with a webhook endpoint, and Berth's token
//! authentication against anonymous requests) and compares
//! Berth with CNCF Distribution.
//!
//! This file is the command line only: `run` benchmarks a registry that is already
//! running, `compare` starts both servers itself and prints a table of medians. The
//! request sequences live in `client`, the workloads in `workloads`, process handling in
//! `servers`, and formatting in `report`.

// A CLI program whose output is its product: printing to stdout is the point.
#![allow(clippy::print_stdout)]

mod auth;
mod client;
mod gc;
mod notify;
mod procfs;
mod proxy;
mod report;
mod servers;
mod stats;
mod workloads;

use anyhow::{ensure, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use client::Registry;
use report::Figure;
use servers::{Server, ServerSpec};
use std::path::PathBuf;
use workloads::{Options, Scale};

#[derive(Debug, Parser)]
#[command(name = "berth-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Benchmark a registry that is already running; prints `workload key=value ...`
    /// lines.
    Run {
        /// Base URL of the registry, e.g. http://127.0.0.1:5000 (no auth, plain HTTP).
        #[arg(long)]
        url: String,
        /// PID of the server process, to report its CPU time and peak RSS.
        #[arg(long)]
        pid: Option<u32>,
        #[command(flatten)]
        common: Common,
    },
    /// Start Berth and Distribution on loopback, run the workloads on each in turn for
    /// several rounds, and print a table of medians.
    Compare {
        /// The Berth binary (any binary accepting `serve CONFIG` with a
        /// Distribution-format config works, which is how this mode is tested).
        #[arg(long)]
        berth: PathBuf,
        /// The CNCF Distribution binary.
        #[arg(long, default_value = "/usr/bin/docker-registry")]
        distribution: PathBuf,
        /// Rounds per server; medians are taken over rounds [default: 3, or 1 with
        /// --quick].
        #[arg(long)]
        rounds: Option<usize>,
        /// Where the servers' temporary data directories go (default: the system temp
        /// directory). Both servers use the same file system.
        #[arg(long)]
        workdir: Option<PathBuf>,
        /// Which scenarios to run: the standard workloads, the pull-through cache
        /// scenario (each server as a proxy of a Distribution upstream), manifest GETs
        /// without and with a notification endpoint (a receiver run by the bench), or
        /// all of them.
        #[arg(long, value_enum, default_value_t = Scenario::All)]
        scenario: Scenario,
        /// Keep both registries' blobs in an S3-compatible bucket: the file of `export`
        /// lines `../shared/s3/start-seaweedfs.sh` (or `start-garage.sh`) printed. Both
        /// registries use the same server and bucket, each round its own root directory.
        #[arg(long, value_name = "ENV_FILE")]
        s3: Option<PathBuf>,
        /// With --s3: `storage.redirect.disable: true` (registries stream blob bytes
        /// themselves instead of redirecting clients to presigned URLs).
        #[arg(long, requires = "s3")]
        s3_no_redirect: bool,
        /// With --s3: Berth copies each pushed blob into its digest's key at commit, as
        /// Distribution does (`storage.s3.blobkeys: false`, a deployment upgraded from
        /// an older release), instead of writing it once at a key of its own (the
        /// default of a new deployment).
        #[arg(long, requires = "s3")]
        s3_digest_keys: bool,
        /// Berth's metadata in PostgreSQL: an admin URL of a server (e.g. the
        /// BERTH_TEST_POSTGRES_URL `scripts/start-postgres.sh` prints); every Berth start
        /// gets a fresh database there (needs `psql`). Distribution has no metadata
        /// database and ignores it.
        #[arg(long, value_name = "URL")]
        postgres: Option<String>,
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    All,
    Standard,
    Proxy,
    Notify,
    /// Berth's token authentication: bearer vs anonymous, token requests per second.
    Auth,
    /// Garbage collection of 10,000 images (half deleted) while clients pull: the
    /// collector's time and memory, and the pulls' p99 against a run without it.
    Gc,
}

#[derive(Debug, Args)]
struct Common {
    /// Scale everything down so a run takes seconds (a smoke test, not a measurement).
    #[arg(long)]
    quick: bool,
    /// Verify the digest of every pulled layer (adds client CPU to the pull figures).
    #[arg(long)]
    verify_digests: bool,
}

impl Common {
    fn options(&self) -> Options {
        Options {
            scale: if self.quick {
                Scale::quick()
            } else {
                Scale::full()
            },
            verify_digests: self.verify_digests,
            quick: self.quick,
        }
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let work = async {
        match cli.command {
            Cmd::Run { url, pid, common } => run(&url, pid, &common.options()).await,
            Cmd::Compare {
                berth,
                distribution,
                rounds,
                workdir,
                scenario,
                s3,
                s3_no_redirect,
                s3_digest_keys,
                postgres,
                common,
            } => {
                let s3 = s3
                    .map(|f| servers::S3Storage::from_env_file(&f, s3_no_redirect))
                    .transpose()?;
                let servers = [
                    ServerSpec {
                        name: "berth".to_string(),
                        binary: berth,
                        s3: s3.clone().map(|s| servers::S3Storage {
                            digest_keys: s3_digest_keys,
                            ..s
                        }),
                        postgres,
                    },
                    ServerSpec {
                        name: "distribution".to_string(),
                        binary: distribution,
                        s3,
                        postgres: None,
                    },
                ];
                let rounds = rounds.unwrap_or(if common.quick { 1 } else { 3 });
                compare(&servers, rounds, workdir, scenario, &common.options()).await
            }
        }
    };
    // On Ctrl-C the work future is dropped, which kills any server it started.
    tokio::select! {
        result = work => result,
        signal = tokio::signal::ctrl_c() => {
            signal.context("listening for Ctrl-C")?;
            anyhow::bail!("interrupted")
        }
    }
}

fn print_figures(prefix: &str, figures: &[Figure]) {
    for line in report::workload_lines(prefix, figures) {
        println!("{line}");
    }
}

async fn run(url: &str, pid: Option<u32>, opts: &Options) -> Result<()> {
    let registry = Registry::new(url)?;
    let probe = pid.map(procfs::Probe::new).transpose()?;
    workloads::run_all(&registry, probe.as_ref(), opts, |f| print_figures("", f)).await?;
    Ok(())
}

/// Rounds alternate between the servers (A1, B1, A2, B2, ...). Each round starts the
/// server afresh with an empty data directory and stops it afterwards, so every round
/// sees the same starting state, peak RSS is per round, and only one server competes
/// with the client for the CPU at a time.
async fn compare(
    servers: &[ServerSpec; 2],
    rounds: usize,
    workdir: Option<PathBuf>,
    scenario: Scenario,
    opts: &Options,
) -> Result<()> {
    ensure!(rounds >= 1, "--rounds must be at least 1");
    for spec in servers {
        ensure!(
            spec.binary.is_file(),
            "{} binary {} does not exist",
            spec.name,
            spec.binary.display()
        );
    }
    let mut results: [Vec<Vec<Figure>>; 2] = [Vec::new(), Vec::new()];
    // The pull-through scenario's upstream is Distribution (the second server), shared by
    // every round; each round's caches start empty.
    let upstream = if matches!(
        scenario,
        Scenario::Standard | Scenario::Notify | Scenario::Auth | Scenario::Gc
    ) {
        None
    } else {
        eprintln!("== upstream for the pull-through scenario: pushing images");
        Some(proxy::Upstream::start(&servers[1], workdir.as_deref(), opts).await?)
    };
    for round in 1..=rounds {
        for (spec, rounds_of_server) in servers.iter().zip(results.iter_mut()) {
            eprintln!("== {} round {round}/{rounds}", spec.name);
            let prefix = format!("{} round={round} ", spec.name);
            let mut figures = Vec::new();
            if matches!(scenario, Scenario::All | Scenario::Standard) {
                let server = Server::start(spec, workdir.as_deref()).await?;
                let registry = Registry::new(server.url())?;
                let probe = server.probe()?;
                figures = workloads::run_all(&registry, Some(&probe), opts, |f| {
                    print_figures(&prefix, f)
                })
                .await
                .map_err(|e| e.context(format!("server log tail:\n{}", server.log_tail())))
                .with_context(|| format!("{} round {round}", spec.name))?;
                server.stop()?;
            }
            if let Some(up) = &upstream {
                let label = format!("{}-{round}", spec.name);
                let more = proxy::run(spec, workdir.as_deref(), up, opts, &label)
                    .await
                    .with_context(|| {
                        format!("{} round {round}, pull-through scenario", spec.name)
                    })?;
                print_figures(&prefix, &more);
                figures.extend(more);
            }
            if matches!(scenario, Scenario::All | Scenario::Notify) {
                let more = notify::run(spec, workdir.as_deref(), opts)
                    .await
                    .with_context(|| {
                        format!("{} round {round}, notification scenario", spec.name)
                    })?;
                print_figures(&prefix, &more);
                figures.extend(more);
            }
            if matches!(scenario, Scenario::All | Scenario::Auth) {
                let more = auth::run(spec, workdir.as_deref(), opts)
                    .await
                    .with_context(|| format!("{} round {round}, auth scenario", spec.name))?;
                print_figures(&prefix, &more);
                figures.extend(more);
            }
            if matches!(scenario, Scenario::All | Scenario::Gc) {
                let more = gc::run(spec, workdir.as_deref(), opts)
                    .await
                    .with_context(|| {
                        format!("{} round {round}, garbage collection scenario", spec.name)
                    })?;
                print_figures(&prefix, &more);
                figures.extend(more);
            }
            rounds_of_server.push(figures);
        }
    }
    if let Some(up) = upstream {
        up.stop()?;
    }
    println!();
    println!(
        "{} vs {} ({rounds} round(s) each{}); medians over rounds",
        servers[0].name,
        servers[1].name,
        if opts.quick {
            ", QUICK scale: smoke test, not a measurement"
        } else {
            ""
        }
    );
    print!(
        "{}",
        report::comparison_table(&servers[0].name, &results[0], &servers[1].name, &results[1])
    );
    Ok(())
}
