//! Composition root: the only place that picks concrete backends (filesystem blobs,
//! SQLite or PostgreSQL metadata as `database.driver` says), builds the registry and the HTTP app, binds the listener and runs.

use crate::auth::AccessControl;
use crate::config::database::{redact_dsn, DatabaseConfig, Driver};
use crate::config::{Config, Net};
use crate::http::{self, HttpOptions};
use crate::jobs::health::{HealthStatus, HealthWorker};
use crate::jobs::notify::NotifyWorker;
use crate::jobs::purge::PurgeWorker;
use crate::jobs::Jobs;
use crate::meta::postgres::{PgMeta, PgOptions};
use crate::meta::sqlite::SqliteMeta;
use crate::meta::{MetaError, MetaStore};
use crate::registry::events::{EventSink, Source, Subscriber};
use crate::registry::gc::{GcOptions, GcReport};
use crate::registry::Registry;
use crate::storage::fs::FsBlobStore;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot use storage directory {path}: {source} (check that it exists or can be created and is writable)")]
    Storage {
        path: PathBuf,
        source: std::io::Error,
    },
    /// `at` names the database: the SQLite file, or the PostgreSQL DSN without its
    /// password.
    #[error("cannot open the metadata database {at}: {source}")]
    Meta { at: String, source: MetaError },
    #[error("cannot listen on {addr}: {cause}{}", bind_hint(cause))]
    Bind {
        addr: String,
        /// Not a `source`: the message already says it, and the `error:` line prints a
        /// cause once.
        cause: std::io::Error,
    },
    #[error("cannot set up storage.s3: {0}")]
    S3(std::io::Error),
    #[error("configuration key proxy.remoteurl: {0}")]
    Proxy(String),
    #[error("cannot listen on the Unix socket {path}: {reason}")]
    Socket { path: PathBuf, reason: String },
    #[error("cannot start background jobs: {0}")]
    Jobs(String),
    #[error("cannot set up auth.htpasswd: {0}")]
    Auth(#[from] crate::auth::htpasswd::ProvisionError),
    #[error("cannot set up access control: {0}")]
    AccessControl(String),
    #[error("cannot set up http.tls: {0}")]
    Tls(#[from] http::server::TlsError),
    #[error("server error: {0}")]
    Serve(std::io::Error),
    #[error(transparent)]
    Metrics(#[from] http::metrics::MetricsError),
    #[error("garbage collection failed: {0}")]
    Gc(crate::registry::RegistryError),
    /// `berth migrate` cannot run between these two configurations.
    #[error("{0}")]
    MigrateSetup(String),
    #[error("{0}")]
    Migrate(#[from] crate::migrate::MigrateError),
}

/// The hint that fits a listen error: the port-in-use question only when it is in use.
fn bind_hint(cause: &std::io::Error) -> &'static str {
    match cause.kind() {
        std::io::ErrorKind::AddrInUse => " (is another registry already using the port?)",
        std::io::ErrorKind::PermissionDenied => {
            " (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
        }
        std::io::ErrorKind::AddrNotAvailable => " (no interface of this machine has that address)",
        _ => "",
    }
}

/// Build the registry over the backends `config` names.
pub async fn build_registry(config: &Config) -> Result<Arc<Registry>, StartError> {
    open_registry(config, false).await.map(|(r, _)| Arc::new(r))
}

/// Open the backends; `serving` (the server, not a CLI command) also adopts uploads an
/// older version left in its layout.
async fn open_registry(
    config: &Config,
    serving: bool,
) -> Result<(Registry, Arc<dyn MetaStore>), StartError> {
    let meta = open_meta(config).await?;
    let blob_keys = blob_keys(config, &*meta).await?;
    let blobs = open_blobs(config, serving, blob_keys)?;
    let registry = Registry::new(blobs, meta.clone(), config.settings());
    let registry = match &config.proxy {
        Some(p) => {
            let credentials = p.username.clone().zip(p.password.clone());
            let upstream = crate::upstream::HttpUpstream::new(
                &p.remote_url,
                credentials,
                config.max_manifest_bytes,
            )
            .map_err(StartError::Proxy)?;
            registry.with_proxy(
                Arc::new(upstream),
                crate::registry::proxy::ProxyOptions { ttl: p.ttl },
            )
        }
        None => registry,
    };
    // Proxy-cache projects connect to their upstreams only in the server.
    let registry = if serving {
        registry.with_upstream_factory(Arc::new(crate::upstream::HttpUpstreams {
            max_manifest_bytes: config.max_manifest_bytes,
        }))
    } else {
        registry
    };
    Ok((registry, meta))
}

/// Whether pushes to S3 write blobs at keys of their own: `storage.s3.blobkeys` when
/// the configuration says, else the deployment's setting (on for a database this
/// release created; see `meta::FRESH_SETTINGS`).
async fn blob_keys(config: &Config, meta: &dyn MetaStore) -> Result<bool, StartError> {
    let Some(s3) = &config.s3 else {
        return Ok(false);
    };
    if let Some(on) = s3.blob_keys {
        return Ok(on);
    }
    let setting = meta
        .setting(crate::meta::BLOB_KEYS_SETTING)
        .await
        .map_err(|source| StartError::Meta {
            at: "(the deployment's blob_keys setting)".into(),
            source,
        })?;
    Ok(setting.as_deref() == Some("on"))
}

/// The blob store `config` names: S3 or the filesystem root. `serving` also adopts
/// uploads an older version left in the filesystem layout; `blob_keys`: see
/// [`blob_keys`].
fn open_blobs(
    config: &Config,
    serving: bool,
    blob_keys: bool,
) -> Result<Arc<dyn crate::storage::BlobStore>, StartError> {
    let storage_error = |source| StartError::Storage {
        path: config.root.clone(),
        source,
    };
    Ok(match &config.s3 {
        Some(s3) => {
            let store = crate::storage::s3::S3BlobStore::new(s3)
                .map_err(StartError::S3)?
                .with_blob_keys(blob_keys);
            tracing::info!(storage = %store.describe(), redirect = s3.redirect, blob_keys, "blobs are stored in S3");
            Arc::new(store)
        }
        None => {
            let blobs = FsBlobStore::open(&config.root).map_err(storage_error)?;
            if serving {
                let moved = blobs.adopt_legacy_uploads().map_err(storage_error)?;
                if moved > 0 {
                    tracing::info!(
                        moved,
                        "moved upload files of the flat layout into uploads/<xx>/"
                    );
                }
            }
            Arc::new(blobs)
        }
    })
}

/// The metadata backend `database.driver` names: `berth.db` under the storage root, or
/// the PostgreSQL server of `database.dsn`. The server and every CLI command that opens
/// the database (accounts, garbage-collect, import) come through here.
async fn open_meta(config: &Config) -> Result<Arc<dyn MetaStore>, StartError> {
    Ok(match config.database.driver {
        Driver::Postgres => Arc::new(open_postgres(config).await?),
        Driver::Sqlite => Arc::new(open_sqlite(config).await?),
    })
}

/// PostgreSQL at `database.dsn`.
async fn open_postgres(config: &Config) -> Result<PgMeta, StartError> {
    let db: &DatabaseConfig = &config.database;
    let Some(dsn) = db.dsn.as_deref() else {
        // `config` refuses postgres without a dsn; this only guards.
        return Err(StartError::Meta {
            at: "(database.dsn)".into(),
            source: MetaError::Unavailable(
                "database.driver is postgres but database.dsn is not set".into(),
            ),
        });
    };
    let options = PgOptions {
        max_connections: db.max_open,
        connect_timeout: db.connect_timeout,
        acquire_timeout: db.acquire_timeout,
        statement_timeout: db.statement_timeout,
        idle_timeout: db.max_idle_time,
        max_lifetime: db.max_lifetime,
    };
    let meta = PgMeta::open(dsn, options)
        .await
        .map_err(|source| StartError::Meta {
            at: redact_dsn(dsn),
            source,
        })?;
    tracing::info!(database = %redact_dsn(dsn), pool = db.max_open, "metadata in PostgreSQL");
    Ok(meta)
}

/// Where the embedded database lives: `database.path`, or `berth.db` under the root.
fn sqlite_path(config: &Config) -> std::path::PathBuf {
    config
        .sqlite_path
        .clone()
        .unwrap_or_else(|| config.root.join("berth.db"))
}

/// The embedded SQLite database.
async fn open_sqlite(config: &Config) -> Result<SqliteMeta, StartError> {
    let path = sqlite_path(config);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| StartError::Storage {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    SqliteMeta::open(&path)
        .await
        .map_err(|source| StartError::Meta {
            at: path.display().to_string(),
            source,
        })
}

/// The registry with notifications wired in, and the background jobs over it.
/// `auth.berth`, when that is the access control.
type Access = Option<Arc<crate::auth::berth::BerthAccess>>;

async fn build_with_jobs(
    config: &Config,
) -> Result<(Arc<Registry>, Arc<dyn MetaStore>, Jobs, Access), StartError> {
    let (registry, meta) = open_registry(config, true).await?;
    // Before any job starts (they log): a refused access configuration is one line.
    let access = berth_access_control(&config.auth, meta.clone()).await?;
    let events = &config.events;
    for note in &events.skipped {
        tracing::warn!("{note}");
    }
    if config.proxy.is_some() || !events.endpoints.is_empty() {
        let file = std::env::var_os("SSL_CERT_FILE").filter(|f| !f.is_empty());
        let dir = std::env::var_os("SSL_CERT_DIR").filter(|d| !d.is_empty());
        let file_problem = file.as_ref().and_then(|f| cert_file_problem(f.as_ref()));
        let dir_problem = dir.as_ref().and_then(|d| cert_dir_problem(d.as_ref()));
        // Either variable replaces the system store; together they add up.
        let no_roots = (file.is_none() || file_problem.is_some())
            && (dir.is_none() || dir_problem.is_some())
            && (file.is_some() || dir.is_some());
        for problem in [file_problem, dir_problem].into_iter().flatten() {
            if no_roots {
                tracing::warn!("{problem}: outgoing HTTPS connections (proxy.remoteurl, notification endpoints) will trust no certificate authority and fail; fix it or unset the variable to use the system's certificates");
            } else {
                tracing::warn!("{problem}: its certificates are not trusted");
            }
        }
    }
    let subscribers: Vec<Subscriber> = events.endpoints.iter().map(Subscriber::new).collect();
    let instance_id = uuid::Uuid::new_v4().to_string();
    let host = crate::config::events::hostname();
    let host_name = host.clone();
    let source_addr = match config.net {
        Net::Tcp => format!(
            "{host}:{}",
            config.addr.rsplit(':').next().unwrap_or_default()
        ),
        Net::Unix => host,
    };
    let sink = EventSink {
        subscribers: subscribers.clone(),
        include_references: events.include_references,
        source: Source {
            addr: source_addr,
            instance_id: instance_id.clone(),
        },
    };
    let registry = Arc::new(registry.with_events(sink));
    let mut jobs = Jobs::new();
    for (endpoint, sub) in events.endpoints.iter().zip(&subscribers) {
        // Header names only: values are often credentials (Authorization: Bearer ...).
        let header_names: Vec<&str> = endpoint.headers.iter().map(|(k, _)| k.as_str()).collect();
        tracing::info!(
            "configuring endpoint {} ({}), timeout={:?}, headers={:?}",
            endpoint.name,
            endpoint.url,
            endpoint.timeout,
            header_names
        );
        match NotifyWorker::new(
            registry.clone(),
            endpoint.clone(),
            instance_id.clone(),
            sub.wake.clone(),
        ) {
            Ok(w) => jobs.spawn(w),
            Err(e) => return Err(StartError::Jobs(e.to_string())),
        }
    }
    if !events.endpoints.is_empty() {
        jobs.spawn(crate::jobs::pull_events::PullEventsWorker::new(
            registry.clone(),
        ));
    }
    if events.upload_purging.enabled {
        jobs.spawn(PurgeWorker::new(
            registry.clone(),
            events.upload_purging.clone(),
            format!("{host_name} {instance_id}"),
        ));
    }
    // A node in read-only mode (e.g. while `berth migrate` copies its last state)
    // changes nothing, so it collects nothing, runs no retention on a schedule and
    // records no pull times; in a cluster the other nodes still do. A pull-through
    // cache does collect: its expired blobs are only unlinked, and a collection frees
    // their files.
    if config.auth.read_only {
        registry.stop_recording_pulls();
        tracing::info!("scheduled garbage collection and retention, and pull times, are off on this node: read-only mode (storage.maintenance.readonly.enabled)");
    } else {
        jobs.spawn(crate::jobs::gc::GcScheduleWorker::new(
            registry.clone(),
            format!("{host_name} {instance_id}"),
        ));
        jobs.spawn(crate::jobs::retention::RetentionScheduleWorker::new(
            registry.clone(),
            format!("{host_name} {instance_id}"),
        ));
        jobs.spawn(crate::jobs::pull_times::PullTimesWorker::new(
            registry.clone(),
        ));
        jobs.spawn(crate::jobs::registry_health::RegistryHealthWorker::new(
            registry.clone(),
            format!("{host_name} {instance_id}"),
        ));
    }
    if let Some(p) = &config.proxy {
        tracing::info!(
            remote = %p.remote_url,
            ttl = ?p.ttl,
            authenticated = p.username.is_some(),
            "pull-through cache: read-only for clients"
        );
        if p.ttl.is_some() {
            jobs.spawn(crate::jobs::proxy::ProxyExpiryWorker::new(
                registry.clone(),
                p.expiry_interval,
                format!("{host_name} {instance_id}"),
            ));
        }
    }
    Ok((registry, meta, jobs, access))
}

/// What is wrong with the `SSL_CERT_FILE` at `path`, if anything: when the variable
/// is set, the HTTP client (rustls-native-certs) reads that file (with `SSL_CERT_DIR`)
/// instead of the system store, and an unreadable file or one without certificates
/// silently adds no roots.
fn cert_file_problem(path: &std::path::Path) -> Option<String> {
    match std::fs::read(path) {
        Err(e) => Some(format!(
            "SSL_CERT_FILE={} cannot be read ({e})",
            path.display()
        )),
        Ok(bytes)
            if !bytes
                .windows(27)
                .any(|w| w == b"-----BEGIN CERTIFICATE-----") =>
        {
            Some(format!(
                "SSL_CERT_FILE={} holds no PEM certificate",
                path.display()
            ))
        }
        Ok(_) => None,
    }
}

/// The same for `SSL_CERT_DIR` (one or more directories, `:`-separated): a problem when
/// none of them can be listed or holds any file.
fn cert_dir_problem(dirs: &std::ffi::OsStr) -> Option<String> {
    let text = dirs.to_string_lossy();
    let usable = text
        .split(':')
        .filter(|d| !d.is_empty())
        .any(|d| std::fs::read_dir(d).is_ok_and(|mut entries| entries.any(|e| e.is_ok())));
    (!usable).then(|| format!("SSL_CERT_DIR={text} holds no readable certificate files"))
}

/// Bind `http.addr`: `:port` means every interface (IPv6 and IPv4 where available).
pub async fn bind(addr: &str) -> Result<tokio::net::TcpListener, StartError> {
    let err = |cause| StartError::Bind {
        addr: addr.to_string(),
        cause,
    };
    if let Some(port) = addr.strip_prefix(':') {
        match tokio::net::TcpListener::bind(format!("[::]:{port}")).await {
            Ok(l) => return Ok(l),
            Err(_) => {
                return tokio::net::TcpListener::bind(format!("0.0.0.0:{port}"))
                    .await
                    .map_err(err)
            }
        }
    }
    tokio::net::TcpListener::bind(addr).await.map_err(err)
}

/// Bind a Unix domain socket at `path` (`http.net: unix`). A socket file left behind by
/// a process that is gone (nothing accepts on it) is replaced; a socket someone still
/// serves on, or a file that is not a socket, is an error: Berth never takes over another
/// server's socket or deletes a regular file. (Distribution 2.8 removes any socket.)
pub fn bind_unix(
    path: &std::path::Path,
) -> Result<(tokio::net::UnixListener, SocketFile), StartError> {
    use std::os::unix::fs::FileTypeExt as _;
    let fail = |reason: String| StartError::Socket {
        path: path.to_path_buf(),
        reason,
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(fail(
                "the file exists and is not a socket: remove it or choose another http.addr"
                    .into(),
            ))
        }
        Ok(_) => match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => {
                return Err(fail(
                    "another server is accepting connections on it: stop it or choose another http.addr".into(),
                ))
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                tracing::info!("removing stale socket {} (nothing listens on it)", path.display());
                std::fs::remove_file(path)
                    .map_err(|e| fail(format!("cannot remove the stale socket: {e}")))?;
            }
            Err(e) => return Err(fail(format!("cannot check whether it is in use: {e}"))),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(fail(e.to_string())),
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(|e| fail(e.to_string()))?;
    let file = SocketFile::of(path).map_err(|e| fail(e.to_string()))?;
    Ok((listener, file))
}

/// The socket file a listener created, known by device and inode, so that shutting down
/// removes that file and not one a newer instance (a rolling restart) bound at the same
/// path meanwhile.
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    id: (u64, u64),
}

impl SocketFile {
    fn of(path: &std::path::Path) -> std::io::Result<SocketFile> {
        use std::os::unix::fs::MetadataExt as _;
        let m = std::fs::symlink_metadata(path)?;
        Ok(SocketFile {
            path: path.to_path_buf(),
            id: (m.dev(), m.ino()),
        })
    }

    /// Remove the file if it is still the one this process bound.
    pub fn remove(&self) {
        match SocketFile::of(&self.path) {
            Ok(now) if now.id == self.id => {
                if let Err(e) = std::fs::remove_file(&self.path) {
                    tracing::warn!("cannot remove the socket {}: {e}", self.path.display());
                }
            }
            Ok(_) => tracing::info!(
                "leaving the socket {}: another server has bound it since",
                self.path.display()
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!("cannot check the socket {}: {e}", self.path.display()),
        }
    }
}

/// Run the registry described by `config` until `shutdown` completes.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    // The files of the access control and TLS are read before anything starts (jobs,
    // listeners): a refusal is then the one line an operator sees, and nothing is bound.
    let a = &config.auth;
    let tls = match &a.tls {
        Some(t) => Some(http::server::tls_config(t, !a.http2_disabled)?),
        None => None,
    };
    let file_access = file_access_control(a)?;
    let (registry, meta, mut jobs, berth_access) = build_with_jobs(&config).await?;
    let health = HealthStatus::default();
    for check in &config.ops.checks {
        jobs.spawn(HealthWorker::new(
            check.clone(),
            registry.clone(),
            health.clone(),
        ));
    }
    // Distribution serves metrics only on the debug server: without it, none are kept.
    let metrics = if config.ops.prometheus && config.ops.debug_addr.is_some() {
        Some(Arc::new(http::metrics::Metrics::new()?))
    } else {
        None
    };
    let (stop_debug, debug_stopped) = tokio::sync::watch::channel(false);
    let mut debug_server = None;
    if let Some(addr) = &config.ops.debug_addr {
        let listener = bind(addr).await?;
        let local = listener.local_addr().map_err(StartError::Serve)?;
        let prometheus = metrics
            .clone()
            .map(|m| (m, config.ops.prometheus_path.clone()));
        if prometheus.is_some() {
            tracing::info!(
                "providing prometheus metrics on {}",
                config.ops.prometheus_path
            );
        }
        let app = http::debug::router(registry.clone(), health.clone(), prometheus);
        let mut stopped = debug_stopped;
        let stop = async move {
            let _ = stopped.wait_for(|s| *s).await;
        };
        tracing::info!("debug server listening {local}");
        debug_server = Some(tokio::spawn(http::serve(listener, app, stop)));
    }
    let mut socket_file = None;
    let (listener, local): (http::server::Listener, String) = match config.net {
        Net::Tcp => {
            let l = bind(&config.addr).await?;
            let local = l.local_addr().map_err(StartError::Serve)?.to_string();
            (l.into(), local)
        }
        Net::Unix => {
            let path = PathBuf::from(&config.addr);
            let (l, file) = bind_unix(&path)?;
            socket_file = Some(file);
            (http::server::Listener::Unix(l), path.display().to_string())
        }
    };
    let access: Option<Arc<dyn AccessControl>> = match file_access {
        Some(access) => Some(access),
        None => berth_access.clone().map(|b| b as Arc<dyn AccessControl>),
    };
    let (berth, audit) = match (berth_access, &a.berth) {
        (Some(access), Some(b)) => {
            let log = Arc::new(crate::auth::audit::AuditLog::new(
                meta.clone(),
                b.audit_retention,
            ));
            jobs.spawn(crate::jobs::audit::AuditWorker::new(log.clone()));
            (
                Some(Arc::new(crate::auth::accounts::Accounts::new(
                    meta.clone(),
                    access,
                ))),
                Some(log),
            )
        }
        _ => (None, None),
    };
    let serve_options = http::server::ServeOptions {
        tls,
        http1_only: a.http2_disabled,
        drain_timeout: a.drain_timeout,
        header_read_timeout: Some(config.header_read_timeout),
        send_stall_timeout: Some(config.body_idle_timeout),
    };
    let app = http::router(
        registry,
        HttpOptions {
            access_log: config.access_log,
            prefix: config.http_prefix.clone(),
            host: config.http_host.clone(),
            absolute_urls: config.absolute_urls,
            health,
            metrics,
            access,
            berth,
            audit,
            headers: a.headers.clone(),
            read_only: a.read_only,
            proxy: config.proxy.as_ref().map(|p| p.remote_url.clone()),
            notify: !config.events.endpoints.is_empty(),
            mirrors: http::mirror::MirrorHosts::new(
                a.berth
                    .as_ref()
                    .map(|b| b.mirrors.clone())
                    .unwrap_or_default(),
            ),
        },
    );
    tracing::info!(
        root = %config.root.display(),
        delete_enabled = config.delete_enabled,
        read_only = a.read_only,
        auth = if a.htpasswd.is_some() {
            "htpasswd"
        } else if a.token.is_some() {
            "token"
        } else if a.berth.is_some() {
            "berth"
        } else {
            "none"
        },
        "listening on {}{}://{local}",
        if a.tls.is_some() { "https" } else { "http" },
        if config.net == Net::Unix { "+unix" } else { "" }
    );
    let served = http::server::serve(listener, app, serve_options, shutdown).await;
    if let Some(file) = socket_file {
        // As Go's listener does on close: the next start finds no socket file.
        file.remove();
    }
    let _ = stop_debug.send(true);
    if let Some(task) = debug_server {
        if let Ok(Err(e)) = task.await {
            tracing::error!("debug server error: {e}");
        }
    }
    jobs.shutdown(std::time::Duration::from_secs(10)).await;
    served.map_err(StartError::Serve)
}

/// The access control `auth` names when it needs only its files (htpasswd,
/// `auth.token`); `None` for `auth.berth` and open access.
fn file_access_control(
    a: &crate::config::auth::AuthConfig,
) -> Result<Option<Arc<dyn AccessControl>>, StartError> {
    if let Some(h) = &a.htpasswd {
        let htpasswd = crate::auth::htpasswd::Htpasswd::open(&h.realm, &h.path)?;
        return Ok(Some(Arc::new(crate::auth::BasicAccess(Arc::new(htpasswd)))));
    }
    if let Some(t) = &a.token {
        return Ok(Some(Arc::new(token_access(t)?)));
    }
    Ok(None)
}

/// `auth.berth` over the metadata database (none: open access).
async fn berth_access_control(
    a: &crate::config::auth::AuthConfig,
    meta: Arc<dyn MetaStore>,
) -> Result<Option<Arc<crate::auth::berth::BerthAccess>>, StartError> {
    if let Some(b) = &a.berth {
        let berth = Arc::new(
            crate::auth::berth::BerthAccess::open(meta, berth_settings(b)?)
                .await
                .map_err(|e| StartError::AccessControl(format!("auth.berth: {e}")))?,
        );
        return Ok(Some(berth));
    }
    Ok(None)
}

/// `auth.token` as a verifier of the external issuer's tokens.
fn token_access(
    t: &crate::config::auth::TokenConfig,
) -> Result<crate::auth::token::TokenAccess, StartError> {
    use crate::auth::token::{parse_algorithm, TokenAccess, Verifier};
    let fail =
        |key: &str, why: String| StartError::AccessControl(format!("auth.token.{key}: {why}"));
    let algorithms = t
        .signing_algorithms
        .iter()
        .filter_map(|a| parse_algorithm(a))
        .collect();
    let mut verifier = Verifier::new(&t.issuer, &t.service, algorithms);
    if let Some(path) = &t.root_cert_bundle {
        let pem = std::fs::read_to_string(path).map_err(|e| {
            fail(
                "rootcertbundle",
                format!("cannot read {}: {e}", path.display()),
            )
        })?;
        let n = verifier
            .add_root_bundle(&pem)
            .map_err(|e| fail("rootcertbundle", format!("{}: {e}", path.display())))?;
        if n == 0 {
            return Err(fail(
                "rootcertbundle",
                format!("{} holds no PEM certificate", path.display()),
            ));
        }
    }
    if let Some(path) = &t.jwks {
        let json = std::fs::read_to_string(path)
            .map_err(|e| fail("jwks", format!("cannot read {}: {e}", path.display())))?;
        verifier
            .add_jwks(&json)
            .map_err(|e| fail("jwks", format!("{}: {e}", path.display())))?;
    }
    Ok(TokenAccess {
        verifier,
        realm: t.realm.clone(),
        autoredirect_path: t.auto_redirect.then(|| t.auto_redirect_path.clone()),
    })
}

/// `auth.berth` as the access layer's settings (`BERTH_ADMIN_PASSWORD` is the
/// variable of `adminpassword`; `ldap.cacert` is read here).
fn berth_settings(
    b: &crate::config::auth::BerthAuthConfig,
) -> Result<crate::auth::berth::BerthSettings, StartError> {
    use crate::auth::berth::{BerthSettings, ProjectCreation};
    use crate::config::auth::ProjectCreationConfig;
    let ldap = match &b.ldap {
        Some(l) => Some(ldap_settings(l)?),
        None => None,
    };
    Ok(BerthSettings {
        realm: b.realm.clone(),
        service: b.service.clone(),
        issuer: b.issuer.clone(),
        token_ttl: b.token_expiration,
        admin_password: b.admin_password.clone().or_else(|| {
            std::env::var("BERTH_ADMIN_PASSWORD")
                .ok()
                .filter(|p| !p.is_empty())
        }),
        project_creation: match b.project_creation {
            ProjectCreationConfig::Everyone => ProjectCreation::Everyone,
            ProjectCreationConfig::AdminOnly => ProjectCreation::AdminOnly,
        },
        create_projects_on_push: b.create_projects_on_push,
        robot_prefix: b.robot_prefix.clone(),
        push_networks: b.push_networks.clone(),
        storage_quota: b.storage_quota,
        ldap,
        ..BerthSettings::default()
    })
}

/// `auth.berth.ldap` as the LDAP layer's settings, with the CA file's text.
fn ldap_settings(
    l: &crate::config::ldap::LdapConfig,
) -> Result<crate::auth::ldap::LdapSettings, StartError> {
    let ca_pem = match &l.ca_cert {
        Some(path) => Some(std::fs::read_to_string(path).map_err(|e| {
            StartError::AccessControl(format!(
                "auth.berth.ldap.cacert: cannot read {}: {e}",
                path.display()
            ))
        })?),
        None => None,
    };
    Ok(crate::auth::ldap::LdapSettings {
        url: l.url.clone(),
        starttls: l.starttls,
        skip_verify: l.skip_verify,
        ca_pem,
        base_dn: l.base_dn.clone(),
        search_filter: l.search_filter.clone(),
        uid_attribute: l.uid_attribute.clone(),
        search_dn: l.search_dn.clone(),
        search_password: l.search_password.clone(),
        group_base_dn: l.group_base_dn.clone(),
        group_filter: l.group_filter.clone(),
        group_member_attribute: l.group_member_attribute.clone(),
        timeout: l.timeout,
    })
}

/// The account operations of `auth.berth` over the configuration's database (the CLI's
/// `berth user`, `project`, `robot`, `token` commands).
pub async fn accounts(config: &Config) -> Result<crate::auth::accounts::Accounts, StartError> {
    let Some(b) = &config.auth.berth else {
        return Err(StartError::AccessControl(
            "the configuration has no auth.berth section: users, projects and robots exist only with auth.berth (add `auth: {berth: {}}`, or set REGISTRY_AUTH=berth)".into(),
        ));
    };
    let (_, meta) = open_registry(config, false).await?;
    let access = crate::auth::berth::BerthAccess::open(meta.clone(), berth_settings(b)?)
        .await
        .map_err(|e| StartError::AccessControl(format!("auth.berth: {e}")))?;
    Ok(crate::auth::accounts::Accounts::new(meta, Arc::new(access)))
}

/// `berth garbage-collect`: one collection over the storage `config` names, each report
/// line handed to `out`.
pub async fn garbage_collect(
    config: &Config,
    options: &GcOptions,
    out: &mut (dyn FnMut(String) + Send),
) -> Result<GcReport, StartError> {
    let registry = build_registry(config).await?;
    registry
        .garbage_collect(options, out)
        .await
        .map_err(StartError::Gc)
}

/// Names a blob store and database for `berth migrate`'s record of where a migration
/// came from.
fn describe_storage(config: &Config) -> String {
    let blobs = match &config.s3 {
        Some(s3) => format!(
            "s3 bucket {} at {} root {:?}",
            s3.bucket,
            s3.region_endpoint.as_deref().unwrap_or(&s3.region),
            s3.root_directory
        ),
        None => format!(
            "filesystem {}",
            std::fs::canonicalize(&config.root)
                .unwrap_or_else(|_| config.root.clone())
                .display()
        ),
    };
    let db = sqlite_path(config);
    let db = std::fs::canonicalize(&db).unwrap_or(db);
    format!("{blobs}, sqlite {}", db.display())
}

/// `berth migrate`: copy the single node `source` names (its blob store and SQLite
/// database) into the blob store and PostgreSQL database `target` names.
pub async fn migrate(
    source: &Config,
    target: &Config,
    force: bool,
    concurrency: usize,
    on_event: &mut (dyn FnMut(crate::migrate::Event) + Send),
) -> Result<crate::migrate::Summary, StartError> {
    if source.database.driver != Driver::Sqlite {
        return Err(StartError::MigrateSetup(
            "the source configuration already uses PostgreSQL (database.driver: postgres): a cluster can run on that database as it is; berth migrate copies a single node's embedded SQLite database".into(),
        ));
    }
    if target.database.driver != Driver::Postgres {
        return Err(StartError::MigrateSetup(
            "the target configuration must use PostgreSQL (database: {driver: postgres, dsn: ...}): berth migrate moves a single node into what a cluster runs on".into(),
        ));
    }
    if source.s3.is_none() && target.s3.is_none() {
        let a = std::fs::canonicalize(&source.root).unwrap_or_else(|_| source.root.clone());
        let b = std::fs::canonicalize(&target.root).unwrap_or_else(|_| target.root.clone());
        if a == b {
            return Err(StartError::MigrateSetup(format!(
                "source and target store blobs in the same directory ({}): the target's blobs need storage of their own (storage.s3, or another rootdirectory)",
                a.display()
            )));
        }
    }
    if !sqlite_path(source).exists() {
        return Err(StartError::MigrateSetup(format!(
            "the source has no database at {}: is this the configuration the node runs with (storage.filesystem.rootdirectory, database.path)?",
            sqlite_path(source).display()
        )));
    }
    // Copies are written by digest; no push goes through these stores.
    let source_blobs = open_blobs(source, false, false)?;
    let source_meta = Arc::new(open_sqlite(source).await?);
    let target_blobs = open_blobs(target, false, false)?;
    let target_meta = Arc::new(open_postgres(target).await?);
    let migration = crate::migrate::Migration {
        source_blobs,
        source_meta,
        target_blobs,
        target_meta,
        source_id: describe_storage(source),
        force,
        concurrency,
    };
    Ok(migration.run(on_event).await?)
}
