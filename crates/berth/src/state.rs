//! Composition root: the only place that picks concrete backends (filesystem blobs,
//! SQLite metadata), builds the registry and the HTTP app, binds the listener and runs.

use crate::config::Config;
use crate::http::{self, HttpOptions};
use crate::jobs::health::{HealthStatus, HealthWorker};
use crate::jobs::Runner;
use crate::meta::sqlite::SqliteMeta;
use crate::meta::MetaError;
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
    #[error("cannot open the metadata database {path}: {source}")]
    Meta { path: PathBuf, source: MetaError },
    #[error("cannot listen on {addr}: {source} (is another registry already using the port?)")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("server error: {0}")]
    Serve(std::io::Error),
    #[error(transparent)]
    Metrics(#[from] http::metrics::MetricsError),
    #[error("garbage collection failed: {0}")]
    Gc(crate::registry::RegistryError),
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
    let health = HealthStatus::default();
    let mut workers = Runner::default();
    for check in &config.ops.checks {
        workers.spawn(Box::new(HealthWorker::new(
            check.clone(),
            registry.clone(),
            health.clone(),
        )));
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
    let listener = bind(&config.addr).await?;
    let local = listener.local_addr().map_err(StartError::Serve)?;
    let app = http::router(
        registry,
        HttpOptions {
            access_log: config.access_log,
            prefix: config.http_prefix.clone(),
            host: config.http_host.clone(),
            absolute_urls: config.absolute_urls,
            health,
            metrics,
        },
    );
    tracing::info!(
        root = %config.root.display(),
        delete_enabled = config.delete_enabled,
        "listening on http://{local}"
    );
    let served = http::serve(listener, app, shutdown).await;
    let _ = stop_debug.send(true);
    if let Some(task) = debug_server {
        if let Ok(Err(e)) = task.await {
            tracing::error!("debug server error: {e}");
        }
    }
    workers.stop().await;
    served.map_err(StartError::Serve)
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
