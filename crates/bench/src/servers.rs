//! Process management for `compare`: starts a registry binary (`BINARY serve CONFIG`)
//! on a loopback port with a fresh temporary data directory and a Distribution-format
//! `config.yml`, waits until `GET /v2/` answers 200, and kills it when done.
//!
//! Both Berth and CNCF Distribution (`docker-registry`) read the same config keys, so
//! one code path serves both. A [`Server`] is killed and its directory removed when it is
//! dropped, so an error or an interrupted run does not leave processes behind. This
//! module does not measure anything.

use crate::client::Registry;
use crate::procfs::Probe;
use anyhow::{bail, Context, Result};
use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to answer `GET /v2/` after it is started.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Environment variables removed from every server's environment: `AWS_CA_BUNDLE` makes
/// Distribution fail at startup, and `REGISTRY_*` variables would override the generated
/// config on one side only.
fn scrubbed_env() -> Vec<String> {
    std::env::vars_os()
        .filter_map(|(k, _)| k.into_string().ok())
        .filter(|k| k == "AWS_CA_BUNDLE" || k.starts_with("REGISTRY_"))
        .collect()
}

/// Configuration beyond the common base, for the pull-through cache scenario.
#[derive(Debug, Clone, Default)]
pub struct Extra {
    /// Write the access log (to `server.log`), so requests can be counted.
    pub access_log: bool,
    /// Top-level YAML appended to the config, e.g. a `proxy:` section.
    pub yaml: String,
}

/// A registry program to benchmark.
#[derive(Debug, Clone)]
pub struct ServerSpec {
    /// Label used in output ("berth", "distribution").
    pub name: String,
    /// A binary that accepts `serve CONFIG`.
    pub binary: PathBuf,
    /// Blobs in this S3 bucket instead of the data directory (the same server and
    /// bucket for both registries; each start gets a root directory of its own).
    pub s3: Option<S3Storage>,
    /// Berth's metadata in PostgreSQL: the server's admin URL (`postgres://user@host:port/db`);
    /// each start creates a fresh database there with `psql`. Distribution ignores it.
    pub postgres: Option<String>,
}

/// An S3-compatible server for the blobs (`--s3 ENV_FILE`).
#[derive(Debug, Clone)]
pub struct S3Storage {
    pub endpoint: String,
    pub region: String,
    pub access_key: String,
    pub secret_key: String,
    pub bucket: String,
    /// `storage.redirect.disable`: registries stream blob bytes themselves.
    pub redirect_disable: bool,
    /// `storage.s3.blobkeys: false` (Berth's only): blobs copied into their digests'
    /// keys at commit instead of written once at keys of their own.
    pub digest_keys: bool,
}

impl S3Storage {
    /// Read the `export NAME=value` lines a `../shared/s3/start-*.sh` script printed.
    pub fn from_env_file(path: &Path, redirect_disable: bool) -> Result<S3Storage> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the S3 environment file {}", path.display()))?;
        let get = |name: &str| {
            text.lines()
                .filter_map(|l| l.strip_prefix("export ")?.split_once('='))
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.trim_matches(['\'', '"']).to_string())
                .with_context(|| format!("{} exports no {name}", path.display()))
        };
        Ok(S3Storage {
            endpoint: get("S3_ENDPOINT")?,
            region: get("S3_REGION")?,
            access_key: get("S3_ACCESS_KEY_ID")?,
            secret_key: get("S3_SECRET_ACCESS_KEY")?,
            bucket: get("S3_BUCKET")?,
            redirect_disable,
            digest_keys: false,
        })
    }

    fn storage_yaml(&self, root: &str) -> String {
        format!(
            "storage:\n  s3:\n    accesskey: {}\n    secretkey: {}\n    region: {}\n    regionendpoint: {}\n    bucket: {}\n    rootdirectory: /{root}\n{}  delete:\n    enabled: true\n  redirect:\n    disable: {}\n",
            self.access_key,
            self.secret_key,
            self.region,
            self.endpoint,
            self.bucket,
            if self.digest_keys {
                "    blobkeys: false\n"
            } else {
                ""
            },
            self.redirect_disable
        )
    }
}

/// A running registry process with its own temporary directory.
#[derive(Debug)]
pub struct Server {
    child: Child,
    url: String,
    log: PathBuf,
    // Dropped (and so deleted) after the child is killed, see `Drop`.
    dir: Option<tempfile::TempDir>,
}

impl Server {
    /// Starts `spec` with a fresh data directory under `workdir` (or the system temp
    /// directory) and waits until it is ready.
    pub async fn start(spec: &ServerSpec, workdir: Option<&Path>) -> Result<Server> {
        Server::start_with(spec, workdir, &Extra::default()).await
    }

    /// [`Server::start`] with `extra` configuration (the same for every server).
    pub async fn start_with(
        spec: &ServerSpec,
        workdir: Option<&Path>,
        extra: &Extra,
    ) -> Result<Server> {
        let prefix = format!("berth-bench-{}-", spec.name);
        let mut builder = tempfile::Builder::new();
        builder.prefix(&prefix);
        let dir = match workdir {
            Some(w) => builder.tempdir_in(w),
            None => builder.tempdir(),
        }
        .context("creating the server's temporary directory")?;
        let port = free_port()?;
        let data = dir.path().join("data");
        std::fs::create_dir(&data).with_context(|| format!("creating {}", data.display()))?;
        let config = dir.path().join("config.yml");
        let storage = spec.s3.as_ref().map(|s3| {
            let root = dir
                .path()
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| format!("bench-{port}"));
            s3.storage_yaml(&root)
        });
        let storage = match (&spec.postgres, storage) {
            (Some(admin), storage) => {
                let name = format!("berth_bench_{}_{port}", std::process::id());
                let out = Command::new("psql")
                    .arg(admin)
                    .args(["-q", "-v", "ON_ERROR_STOP=1", "-c"])
                    .arg(format!("DROP DATABASE IF EXISTS {name}"))
                    .arg("-c")
                    .arg(format!("CREATE DATABASE {name}"))
                    .output()
                    .context("running psql to create the benchmark database")?;
                if !out.status.success() {
                    bail!(
                        "psql could not create {name}: {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
                let base = admin
                    .rsplit_once('/')
                    .map(|(b, _)| b)
                    .context("--postgres URL names no database")?;
                let db = format!("database:\n  driver: postgres\n  dsn: {base}/{name}\n");
                Some(match storage {
                    // Replaces the SQLite path with the PostgreSQL section.
                    Some(s3) => format!("{}{db}", s3),
                    None => format!(
                        "storage:\n  filesystem:\n    rootdirectory: {:?}\n  delete:\n    enabled: true\n{db}",
                        data.display().to_string()
                    ),
                })
            }
            (None, storage) => storage,
        };
        std::fs::write(&config, config_yaml(&data, port, extra, storage.as_deref()))
            .with_context(|| format!("writing {}", config.display()))?;
        let log = dir.path().join("server.log");
        let stdout = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let stderr = stdout
            .try_clone()
            .context("duplicating the log file handle")?;

        // The server runs in its temporary directory, so a relative path must be
        // resolved here (a bare name is still looked up in PATH).
        let binary = if spec.binary.components().count() > 1 {
            std::fs::canonicalize(&spec.binary)
                .with_context(|| format!("finding the server binary {}", spec.binary.display()))?
        } else {
            spec.binary.clone()
        };
        let mut cmd = Command::new(&binary);
        cmd.arg("serve")
            .arg(&config)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        for key in scrubbed_env() {
            cmd.env_remove(key);
        }
        let child = cmd.spawn().with_context(|| {
            format!(
                "starting {} serve {}",
                spec.binary.display(),
                config.display()
            )
        })?;
        let mut server = Server {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log,
            dir: Some(dir),
        };
        server.wait_ready().await.with_context(|| {
            format!(
                "{} ({}) did not become ready",
                spec.name,
                spec.binary.display()
            )
        })?;
        Ok(server)
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The configuration file the server was started with (for its own commands, such
    /// as `garbage-collect`, against the same storage).
    pub fn config_path(&self) -> PathBuf {
        self.dir
            .as_ref()
            .map(|d| d.path().join("config.yml"))
            .unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn probe(&self) -> Result<Probe> {
        Probe::new(self.pid())
    }

    /// Polls `GET /v2/` until it answers 200, failing early if the process exits.
    async fn wait_ready(&mut self) -> Result<()> {
        let registry = Registry::new(&self.url)?;
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self
                .child
                .try_wait()
                .context("checking the server process")?
            {
                bail!(
                    "server exited with {status} during startup; log:\n{}",
                    self.log_tail()
                );
            }
            if matches!(registry.ping().await, Ok(true)) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "no 200 from GET {}/v2/ after {READY_TIMEOUT:?}; log:\n{}",
                    self.url,
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The whole log (stdout and stderr; the access log when enabled).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last lines of the server's log, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Kills the server and removes its directory.
    pub fn stop(mut self) -> Result<()> {
        self.kill()?;
        if let Some(dir) = self.dir.take() {
            let path = dir.path().to_path_buf();
            dir.close()
                .with_context(|| format!("removing {}", path.display()))?;
        }
        Ok(())
    }

    fn kill(&mut self) -> Result<()> {
        if self.child.try_wait()?.is_none() {
            self.child.kill().context("killing the server")?;
        }
        self.child
            .wait()
            .context("waiting for the server to exit")?;
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Best effort: the process must not outlive the benchmark. `TempDir` removes the
        // directory after this, once the process no longer writes to it.
        let _ = self.kill();
    }
}

/// A loopback port that was free a moment ago (bind port 0, read it, release it).
fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// A Distribution-format config: filesystem storage in `data` (or the `storage` section
/// given, with Berth's metadata database in `data`), deletes enabled, quiet logs (the
/// access log only when `extra` asks), listening on `127.0.0.1:port`, then `extra.yaml`.
fn config_yaml(data: &Path, port: u16, extra: &Extra, storage: Option<&str>) -> String {
    let data = data.display().to_string();
    let storage = match storage {
        // Distribution ignores the `database` key; Berth keeps its database there.
        Some(s) if s.contains("database:") => s.to_string(),
        Some(s) => format!("{s}database:\n  path: {:?}\n", format!("{data}/berth.db")),
        None => format!(
            "storage:\n  filesystem:\n    rootdirectory: {data:?}\n  delete:\n    enabled: true\n"
        ),
    };
    format!(
        "version: 0.1\n\
         log:\n  level: error\n  accesslog:\n    disabled: {no_access_log}\n\
         {storage}\
         http:\n  addr: 127.0.0.1:{port}\n{yaml}",
        no_access_log = !extra.access_log,
        yaml = extra.yaml,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_has_the_distribution_keys() {
        let yaml = config_yaml(Path::new("/tmp/x y/data"), 5123, &Extra::default(), None);
        assert!(yaml.starts_with("version: 0.1\n"));
        assert!(yaml.contains("  filesystem:\n    rootdirectory: \"/tmp/x y/data\"\n"));
        assert!(yaml.contains("  delete:\n    enabled: true\n"));
        assert!(yaml.contains("http:\n  addr: 127.0.0.1:5123\n"));
        assert!(yaml.contains("  accesslog:\n    disabled: true\n"));
        let extra = Extra {
            access_log: true,
            yaml: "proxy:\n  remoteurl: http://127.0.0.1:1\n".into(),
        };
        let yaml = config_yaml(Path::new("/d"), 5123, &extra, None);
        assert!(yaml.contains("  accesslog:\n    disabled: false\n"));
        assert!(yaml
            .ends_with("http:\n  addr: 127.0.0.1:5123\nproxy:\n  remoteurl: http://127.0.0.1:1\n"));
    }
}
