//! Health checks (`health` in config.yml), one [`Worker`] per check, with Distribution
//! 2.8's meaning: the first run is one interval after start, a check with a threshold
//! fails after that many consecutive failures and one success clears it. The results go
//! into a shared [`HealthStatus`] that the HTTP layer reads (the 503 gate on the main
//! port, `/debug/health`). Knows nothing of HTTP serving.

use super::{JobError, Worker, WorkerState};
use crate::config::ops::{HealthCheck, Probe};
use crate::registry::Registry;
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The current failures, by check name. Empty means healthy.
#[derive(Debug, Clone, Default)]
pub struct HealthStatus(Arc<RwLock<BTreeMap<String, String>>>);

impl HealthStatus {
    fn set(&self, name: &str, failure: Option<String>) {
        let mut map = self.0.write().unwrap_or_else(|p| p.into_inner());
        match failure {
            Some(e) => map.insert(name.to_string(), e),
            None => map.remove(name),
        };
    }

    /// Every failing check and its error.
    pub fn failures(&self) -> BTreeMap<String, String> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn healthy(&self) -> bool {
        self.0.read().unwrap_or_else(|p| p.into_inner()).is_empty()
    }
}

/// Runs one configured check on its interval.
pub struct HealthWorker {
    check: HealthCheck,
    registry: Arc<Registry>,
    status: HealthStatus,
    /// Consecutive failures so far.
    failures: u32,
    /// The first check runs one interval after start, as in Distribution.
    started: bool,
}

impl HealthWorker {
    pub fn new(check: HealthCheck, registry: Arc<Registry>, status: HealthStatus) -> Self {
        HealthWorker {
            check,
            registry,
            status,
            failures: 0,
            started: false,
        }
    }
}

/// The name Distribution reports a check under.
fn check_name(probe: &Probe) -> String {
    match probe {
        Probe::Storage(driver) => format!("storagedriver_{driver}"),
        Probe::File(f) => f.clone(),
        Probe::Http { uri, .. } => uri.clone(),
        Probe::Tcp { addr, .. } => addr.clone(),
    }
}

async fn with_timeout<T>(
    timeout: Option<Duration>,
    f: impl std::future::Future<Output = Result<T, String>>,
) -> Result<T, String> {
    match timeout {
        Some(t) => tokio::time::timeout(t, f)
            .await
            .unwrap_or_else(|_| Err(format!("timed out after {t:?}"))),
        None => f.await,
    }
}

/// HEAD `uri` (plain http://) and return the status code.
async fn head_status(uri: &str, headers: &[(String, String)]) -> Result<u16, String> {
    let rest = uri.strip_prefix("http://").unwrap_or(uri);
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let target = if authority.contains(':') {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    let mut stream = tokio::net::TcpStream::connect(&target)
        .await
        .map_err(|e| e.to_string())?;
    let mut req = format!("HEAD {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    stream
        .write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 1024];
    let mut got = 0;
    while got < buf.len() {
        let n = stream
            .read(&mut buf[got..])
            .await
            .map_err(|e| e.to_string())?;
        if n == 0 || buf[..got + n].contains(&b'\n') {
            got += n;
            break;
        }
        got += n;
    }
    let line = String::from_utf8_lossy(&buf[..got]);
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| "not an HTTP response".to_string())
}

impl HealthWorker {
    async fn probe(&self) -> Result<(), String> {
        match &self.check.probe {
            // A backend that accepts connections but never answers (a hung object store,
            // a partitioned database) must fail the check too: bounded by the interval,
            // within 1..10 s.
            Probe::Storage(_) => {
                let limit = self
                    .check
                    .interval
                    .clamp(Duration::from_secs(1), Duration::from_secs(10));
                with_timeout(Some(limit), async {
                    self.registry
                        .storage_check()
                        .await
                        .map_err(|e| e.to_string())
                })
                .await
            }
            Probe::File(f) => {
                if std::path::Path::new(f).exists() {
                    Err("file exists".into())
                } else {
                    Ok(())
                }
            }
            Probe::Http {
                uri,
                headers,
                status,
                timeout,
            } => {
                let got = with_timeout(*timeout, head_status(uri, headers))
                    .await
                    .map_err(|_| format!("error while checking: {uri}"))?;
                if got == *status {
                    Ok(())
                } else {
                    Err(format!(
                        "downstream service returned unexpected status: {got}"
                    ))
                }
            }
            Probe::Tcp { addr, timeout } => with_timeout(*timeout, async {
                tokio::net::TcpStream::connect(addr.as_str())
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            })
            .await
            .map_err(|_| format!("connection to {addr} failed")),
        }
    }
}

#[async_trait::async_trait]
impl Worker for HealthWorker {
    fn name(&self) -> String {
        format!("health check {}", check_name(&self.check.probe))
    }

    /// One check (the first step only starts the clock).
    async fn work(&mut self) -> Result<WorkerState, JobError> {
        if !self.started {
            self.started = true;
            return Ok(WorkerState::Idle);
        }
        let name = check_name(&self.check.probe);
        let threshold = self.check.threshold.max(1);
        match self.probe().await {
            Ok(()) => {
                if self.failures >= threshold {
                    tracing::info!(check = %name, "health check passes again");
                }
                self.failures = 0;
                self.status.set(&name, None);
            }
            Err(e) => {
                self.failures = self.failures.saturating_add(1);
                if self.failures >= threshold {
                    if self.failures == threshold {
                        tracing::warn!(check = %name, "health check fails: {e}");
                    }
                    self.status.set(&name, Some(e));
                }
            }
        }
        Ok(WorkerState::Idle)
    }

    async fn wait_for_work(&mut self) {
        tokio::time::sleep(self.check.interval).await;
    }
}
