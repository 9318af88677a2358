//! Composition root: the only place that picks concrete backends (filesystem blobs,
//! SQLite metadata), builds the registry and the HTTP app, binds the listener and runs.

use crate::config::Config;
use crate::http::{self, HttpOptions};
use crate::meta::sqlite::SqliteMeta;
use crate::meta::MetaError;
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
    #[error("cannot open the metadata database {path}: {source}")]
    Meta { path: PathBuf, source: MetaError },
    #[error("cannot listen on {addr}: {source} (is another registry already using the port?)")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("cannot set up auth.htpasswd: {0}")]
    Auth(#[from] crate::auth::htpasswd::ProvisionError),
    #[error("cannot set up http.tls: {0}")]
    Tls(#[from] http::server::TlsError),
    #[error("server error: {0}")]
    Serve(std::io::Error),
}

/// Build the registry over the backends `config` names.
pub async fn build_registry(config: &Config) -> Result<Arc<Registry>, StartError> {
    let blobs = FsBlobStore::open(&config.root)
        .map_err(|source| StartError::Storage {
            path: config.root.clone(),
            source,
        })?
        .with_stall_timeout(config.body_idle_timeout);
    let db = config.root.join("berth.db");
    let meta = SqliteMeta::open(&db)
        .await
        .map_err(|source| StartError::Meta { path: db, source })?;
    Ok(Arc::new(Registry::new(
        Arc::new(blobs),
        Arc::new(meta),
        config.settings(),
    )))
}

/// Bind `http.addr`: `:port` means every interface (IPv6 and IPv4 where available).
pub async fn bind(addr: &str) -> Result<tokio::net::TcpListener, StartError> {
    let err = |source| StartError::Bind {
        addr: addr.to_string(),
        source,
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

/// Run the registry described by `config` until `shutdown` completes.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let registry = build_registry(&config).await?;
    let listener = bind(&config.addr).await?;
    let local = listener.local_addr().map_err(StartError::Serve)?;
    let a = &config.auth;
    let authenticator: Option<Arc<dyn crate::auth::Authenticator>> = match &a.htpasswd {
        Some(h) => Some(Arc::new(crate::auth::htpasswd::Htpasswd::open(
            &h.realm, &h.path,
        )?)),
        None => None,
    };
    let serve_options = http::server::ServeOptions {
        tls: match &a.tls {
            Some(t) => Some(http::server::tls_config(t, !a.http2_disabled)?),
            None => None,
        },
        http1_only: a.http2_disabled,
        drain_timeout: a.drain_timeout,
    };
    let app = http::router(
        registry,
        HttpOptions {
            access_log: config.access_log,
            prefix: config.http_prefix.clone(),
            host: config.http_host.clone(),
            absolute_urls: config.absolute_urls,
            authenticator,
            headers: a.headers.clone(),
            read_only: a.read_only,
        },
    );
    tracing::info!(
        root = %config.root.display(),
        delete_enabled = config.delete_enabled,
        read_only = a.read_only,
        auth = if a.htpasswd.is_some() { "htpasswd" } else { "none" },
        "listening on {}://{local}",
        if a.tls.is_some() { "https" } else { "http" }
    );
    http::server::serve(listener, app, serve_options, shutdown)
        .await
        .map_err(StartError::Serve)
}
