//! Prometheus metrics: the request middleware (counts, latency, sizes, in-flight, bytes
//! in and out, by handler, method and status, with Distribution 2.8's metric names) and
//! the text exposition, which also reports what is stored (computed from metadata at
//! scrape time) and the registry's own counters (pull-through cache, dropped events). Served on the debug server only.

use super::body;
use super::endpoint::Endpoint;
use crate::registry::Registry;
use axum::body::Body;
use axum::extract::Request;

use axum::middleware::Next;
use axum::response::Response;
use prometheus::{
    exponential_buckets, Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry as Prom, TextEncoder,
};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Every metric Berth exports, in its own Prometheus registry.
pub struct Metrics {
    prom: Prom,
    requests: IntCounterVec,
    duration: HistogramVec,
    in_flight: IntGaugeVec,
    request_size: HistogramVec,
    response_size: HistogramVec,
    bytes_in: IntCounterVec,
    bytes_out: IntCounterVec,
    repositories: IntGauge,
    manifests: IntGauge,
    blobs: IntGauge,
    blob_bytes: IntGauge,
    uploads: IntGauge,
    proxy_requests: IntCounterVec,
    proxy_bytes: IntCounter,
    proxy_errors: IntCounter,
    events_dropped: IntCounterVec,
    /// The deployment's most recent garbage collection run (from metadata at scrape).
    gc_running: IntGauge,
    gc_last_start: IntGauge,
    gc_last_end: IntGauge,
    gc_last_success: IntGauge,
    gc_last_deleted_blobs: IntGauge,
    gc_last_deleted_manifests: IntGauge,
    gc_last_freed_bytes: IntGauge,
    quota_used: IntGaugeVec,
    quota_limit: IntGaugeVec,
    retention_end: IntGaugeVec,
    retention_success: IntGaugeVec,
    retention_deleted: IntGaugeVec,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

/// A metrics definition error (a bug in the names above, never a runtime condition).
#[derive(Debug, thiserror::Error)]
#[error("cannot set up metrics: {0}")]
pub struct MetricsError(#[from] prometheus::Error);

/// A gauge per project, registered.
fn project_gauge(prom: &Prom, name: &str, help: &str) -> Result<IntGaugeVec, MetricsError> {
    register(prom, IntGaugeVec::new(Opts::new(name, help), &["project"])?)
}

fn register<T: prometheus::core::Collector + Clone + 'static>(
    prom: &Prom,
    metric: T,
) -> Result<T, MetricsError> {
    prom.register(Box::new(metric.clone()))?;
    Ok(metric)
}

impl Metrics {
    pub fn new() -> Result<Metrics, MetricsError> {
        let prom = Prom::new();
        let sizes = exponential_buckets(1024.0, 2.0, 22)?;
        let gauge = |name: &str, help: &str| -> Result<IntGauge, MetricsError> {
            register(&prom, IntGauge::new(name, help)?)
        };
        Ok(Metrics {
            requests: register(
                &prom,
                IntCounterVec::new(
                    Opts::new(
                        "registry_http_requests_total",
                        "Requests by handler, status code and method.",
                    ),
                    &["handler", "code", "method"],
                )?,
            )?,
            duration: register(
                &prom,
                HistogramVec::new(
                    HistogramOpts::new(
                        "registry_http_request_duration_seconds",
                        "Time to the response headers, by handler and method.",
                    )
                    .buckets(vec![
                        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                    ]),
                    &["handler", "method"],
                )?,
            )?,
            in_flight: register(
                &prom,
                IntGaugeVec::new(
                    Opts::new(
                        "registry_http_in_flight_requests",
                        "Requests being served, by handler.",
                    ),
                    &["handler"],
                )?,
            )?,
            request_size: register(
                &prom,
                HistogramVec::new(
                    HistogramOpts::new(
                        "registry_http_request_size_bytes",
                        "Request body sizes, by handler.",
                    )
                    .buckets(sizes.clone()),
                    &["handler"],
                )?,
            )?,
            response_size: register(
                &prom,
                HistogramVec::new(
                    HistogramOpts::new(
                        "registry_http_response_size_bytes",
                        "Response body sizes, by handler.",
                    )
                    .buckets(sizes),
                    &["handler"],
                )?,
            )?,
            bytes_in: register(
                &prom,
                IntCounterVec::new(
                    Opts::new(
                        "berth_http_received_bytes_total",
                        "Request body bytes received, by handler.",
                    ),
                    &["handler"],
                )?,
            )?,
            bytes_out: register(
                &prom,
                IntCounterVec::new(
                    Opts::new(
                        "berth_http_sent_bytes_total",
                        "Response body bytes sent (by length), by handler.",
                    ),
                    &["handler"],
                )?,
            )?,
            repositories: gauge("berth_repositories", "Repositories stored.")?,
            manifests: gauge("berth_manifests", "Manifests stored (per repository).")?,
            blobs: gauge("berth_blobs", "Distinct blobs stored.")?,
            blob_bytes: gauge("berth_blob_bytes", "Bytes of the distinct blobs stored.")?,
            uploads: gauge("berth_uploads_in_progress", "Upload sessions in progress.")?,
            proxy_requests: register(
                &prom,
                IntCounterVec::new(
                    Opts::new(
                        "berth_proxy_requests_total",
                        "Pull-through cache reads by kind (manifest, blob) and result (hit, miss, stale).",
                    ),
                    &["kind", "result"],
                )?,
            )?,
            proxy_bytes: register(
                &prom,
                IntCounter::new(
                    "berth_proxy_upstream_bytes_total",
                    "Blob bytes fetched from the pull-through cache's upstream.",
                )?,
            )?,
            proxy_errors: register(
                &prom,
                IntCounter::new(
                    "berth_proxy_upstream_errors_total",
                    "Failed requests to the pull-through cache's upstream (not counting 404s).",
                )?,
            )?,
            events_dropped: register(
                &prom,
                IntCounterVec::new(
                    Opts::new(
                        "berth_notification_events_dropped_total",
                        "Notification events dropped before delivery, by endpoint and reason (queue_full: pull events while the outbox could not keep up; outbox_full, outbox_expired: over the endpoint's maxevents or maxage).",
                    ),
                    &["endpoint", "reason"],
                )?,
            )?,
            gc_running: gauge(
                "berth_gc_running",
                "1 while a garbage collection runs anywhere in the deployment.",
            )?,
            gc_last_start: gauge(
                "berth_gc_last_run_start_seconds",
                "When the most recent garbage collection started (Unix seconds).",
            )?,
            gc_last_end: gauge(
                "berth_gc_last_run_end_seconds",
                "When the most recent finished garbage collection ended (Unix seconds).",
            )?,
            gc_last_success: gauge(
                "berth_gc_last_run_success",
                "1 if the most recent finished garbage collection succeeded, else 0.",
            )?,
            gc_last_deleted_blobs: gauge(
                "berth_gc_last_run_deleted_blobs",
                "Blobs the most recent finished garbage collection deleted.",
            )?,
            gc_last_deleted_manifests: gauge(
                "berth_gc_last_run_deleted_manifests",
                "Manifests the most recent finished garbage collection deleted.",
            )?,
            gc_last_freed_bytes: gauge(
                "berth_gc_last_run_freed_bytes",
                "Bytes the most recent finished garbage collection freed.",
            )?,
            quota_used: register(
                &prom,
                IntGaugeVec::new(
                    Opts::new(
                        "berth_project_quota_used_bytes",
                        "Bytes of the distinct blobs linked into a project with a storage quota.",
                    ),
                    &["project"],
                )?,
            )?,
            quota_limit: register(
                &prom,
                IntGaugeVec::new(
                    Opts::new(
                        "berth_project_quota_limit_bytes",
                        "A project's storage quota in bytes (-1: no limit).",
                    ),
                    &["project"],
                )?,
            )?,
            retention_end: project_gauge(
                &prom,
                "berth_retention_last_run_end_seconds",
                "When the latest finished real run of a project's tag retention policy ended.",
            )?,
            retention_success: project_gauge(
                &prom,
                "berth_retention_last_run_success",
                "Whether that run succeeded (1) or not (0: it failed or was stopped).",
            )?,
            retention_deleted: project_gauge(
                &prom,
                "berth_retention_last_run_deleted_artifacts",
                "Artifacts that run deleted.",
            )?,
            prom,
        })
    }

    /// The text exposition, with the storage gauges refreshed from `registry`.
    pub async fn render(&self, registry: &Registry) -> String {
        match registry.stats().await {
            Ok(s) => {
                let set = |g: &IntGauge, v: u64| g.set(i64::try_from(v).unwrap_or(i64::MAX));
                set(&self.repositories, s.repositories);
                set(&self.manifests, s.manifests);
                set(&self.blobs, s.blobs);
                set(&self.blob_bytes, s.blob_bytes);
                set(&self.uploads, s.uploads);
            }
            Err(e) => tracing::error!("metrics: cannot count stored content: {e}"),
        }
        self.gc(registry).await;
        self.quotas(registry).await;
        self.retention(registry).await;
        if let Some(c) = registry.proxy_counters() {
            // The registry counts; bring the exported counters up to its values.
            let sync = |counter: &IntCounter, value: &AtomicU64| {
                let v = value.load(Ordering::Relaxed);
                counter.inc_by(v.saturating_sub(counter.get()));
            };
            for (kind, result, value) in [
                ("manifest", "hit", &c.manifest_hit),
                ("manifest", "miss", &c.manifest_miss),
                ("manifest", "stale", &c.manifest_stale),
                ("blob", "hit", &c.blob_hit),
                ("blob", "miss", &c.blob_miss),
            ] {
                sync(
                    &self.proxy_requests.with_label_values(&[kind, result]),
                    value,
                );
            }
            sync(&self.proxy_bytes, &c.upstream_bytes);
            sync(&self.proxy_errors, &c.upstream_errors);
        }
        if let Some(dropped) = registry.dropped_events() {
            for (endpoint, reason, value) in dropped.snapshot() {
                let counter = self.events_dropped.with_label_values(&[&endpoint, reason]);
                counter.inc_by(value.saturating_sub(counter.get()));
            }
        }
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.prom.gather(), &mut out) {
            tracing::error!("metrics: cannot encode: {e}");
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

impl Metrics {
    /// The projects' quota gauges, from the shared database (every node of a cluster
    /// reports the same); projects gone since the last scrape disappear.
    async fn quotas(&self, registry: &Registry) {
        let quotas = match registry.quotas().await {
            Ok(q) => q,
            Err(e) => {
                tracing::error!("metrics: cannot read project quotas: {e}");
                return;
            }
        };
        self.quota_used.reset();
        self.quota_limit.reset();
        for q in quotas {
            self.quota_used
                .with_label_values(&[q.project.as_str()])
                .set(i64::try_from(q.used).unwrap_or(i64::MAX));
            self.quota_limit
                .with_label_values(&[q.project.as_str()])
                .set(q.hard.map_or(-1, |h| i64::try_from(h).unwrap_or(i64::MAX)));
        }
    }

    /// The tag retention gauges, per project with a policy that ran.
    async fn retention(&self, registry: &Registry) {
        let outcomes = match registry.retention_outcomes().await {
            Ok(o) => o,
            Err(e) => {
                tracing::error!("metrics: cannot read tag retention runs: {e}");
                return;
            }
        };
        for g in [
            &self.retention_end,
            &self.retention_success,
            &self.retention_deleted,
        ] {
            g.reset();
        }
        for o in outcomes {
            let p = [o.project.as_str()];
            self.retention_end.with_label_values(&p).set(o.ended_at);
            self.retention_success
                .with_label_values(&p)
                .set(i64::from(o.status == "Succeed"));
            self.retention_deleted
                .with_label_values(&p)
                .set(i64::try_from(o.deleted).unwrap_or(i64::MAX));
        }
    }

    /// The garbage collection gauges, from the latest runs recorded.
    async fn gc(&self, registry: &Registry) {
        let recent = crate::meta::Page {
            offset: 0,
            limit: 10,
        };
        let runs = match registry.gc_runs(recent).await {
            Ok((runs, _)) => runs,
            Err(e) => {
                tracing::error!("metrics: cannot read garbage collection runs: {e}");
                return;
            }
        };
        let now = crate::meta::now();
        let stale = i64::try_from(crate::registry::gc_runs::STALE_AFTER.as_secs()).unwrap_or(0);
        let live = |r: &crate::meta::GcRun| r.status == "Running" && r.updated_at + stale >= now;
        self.gc_running.set(i64::from(runs.iter().any(live)));
        if let Some(r) = runs.first() {
            self.gc_last_start.set(r.started_at);
        }
        let set = |g: &IntGauge, v: u64| g.set(i64::try_from(v).unwrap_or(i64::MAX));
        if let Some(r) = runs.iter().find(|r| r.status != "Running") {
            self.gc_last_end.set(r.updated_at);
            self.gc_last_success.set(i64::from(r.status == "Success"));
            set(&self.gc_last_deleted_blobs, r.deleted_blobs);
            set(&self.gc_last_deleted_manifests, r.deleted_manifests);
            set(&self.gc_last_freed_bytes, r.freed_bytes);
        }
    }
}

/// The handler label: Distribution 2.8's names where it has the route.
fn handler(endpoint: &Endpoint) -> &'static str {
    match endpoint {
        Endpoint::Uploads { .. } => "blob_upload",
        Endpoint::Upload { .. } => "blob_upload_chunk",
        e => e.route(),
    }
}

/// Counts a request in flight until dropped, also when the client goes away mid-request.
struct InFlight(IntGauge);

impl InFlight {
    fn enter(gauge: IntGauge) -> InFlight {
        gauge.inc();
        InFlight(gauge)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Middleware: measure every request that reaches an API route.
pub(super) async fn measure(
    metrics: Arc<Metrics>,
    prefix: String,
    req: Request,
    next: Next,
) -> Response {
    let route = req
        .uri()
        .path()
        .strip_prefix(prefix.as_str())
        .and_then(|p| Endpoint::parse(p).ok())
        .map(|e| handler(&e));
    let Some(route) = route else {
        return next.run(req).await;
    };
    let method = req.method().clone();
    let start = Instant::now();
    let in_flight = InFlight::enter(metrics.in_flight.with_label_values(&[route]));
    let received = Arc::new(AtomicU64::new(0));
    let counter = received.clone();
    let req = req.map(|inner| Body::new(body::Counted { inner, counter }));
    let resp = next.run(req).await;
    drop(in_flight);
    let sent = super::response_bytes(&method, &resp);
    let received = received.load(Ordering::Relaxed);
    // Only the methods of the API as label values: anything else would let any client
    // create new series without bound.
    let m = match method.as_str() {
        "GET" | "HEAD" | "PUT" | "POST" | "PATCH" | "DELETE" | "OPTIONS" => {
            method.as_str().to_ascii_lowercase()
        }
        _ => "other".to_string(),
    };
    metrics
        .requests
        .with_label_values(&[route, resp.status().as_str(), m.as_str()])
        .inc();
    metrics
        .duration
        .with_label_values(&[route, m.as_str()])
        .observe(start.elapsed().as_secs_f64());
    metrics
        .request_size
        .with_label_values(&[route])
        .observe(received as f64);
    metrics
        .response_size
        .with_label_values(&[route])
        .observe(sent as f64);
    metrics
        .bytes_in
        .with_label_values(&[route])
        .inc_by(received);
    metrics.bytes_out.with_label_values(&[route]).inc_by(sent);
    resp
}
