//! The debug server (`http.debug.addr`, plain HTTP, its own listener): `/debug/health`
//! (200 `{}`, or 503 with each failing check and its error) and, when enabled, the
//! Prometheus text at `http.debug.prometheus.path`. Also the health gate of the main
//! port: while any check fails every request there gets 503 UNAVAILABLE, and `GET /`
//! answers 200 with an empty body when healthy (Distribution 2.8's behaviour).

use super::metrics::Metrics;
use crate::jobs::health::HealthStatus;
use crate::registry::Registry;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use std::sync::Arc;

const JSON: &str = "application/json; charset=utf-8";

fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "404 page not found\n",
    )
        .into_response()
}

/// The debug server's routes.
pub fn router(
    registry: Arc<Registry>,
    health: HealthStatus,
    prometheus: Option<(Arc<Metrics>, String)>,
) -> Router {
    Router::new().fallback(move |req: Request| {
        let registry = registry.clone();
        let health = health.clone();
        let prometheus = prometheus.clone();
        async move {
            let path = req.uri().path();
            if path == "/debug/health" && req.method() == Method::GET {
                let failures = health.failures();
                let status = if failures.is_empty() {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                let body = serde_json::to_string(&failures).unwrap_or_else(|_| "{}".into());
                return (status, [(header::CONTENT_TYPE, JSON)], body).into_response();
            }
            if let Some((metrics, metrics_path)) = &prometheus {
                if path == metrics_path {
                    return (
                        StatusCode::OK,
                        [(
                            header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )],
                        metrics.render(&registry).await,
                    )
                        .into_response();
                }
            }
            not_found()
        }
    })
}

/// Middleware on the main port: the health gate and the `/` liveness answer.
pub(super) async fn gate(health: HealthStatus, req: Request, next: Next) -> Response {
    if !health.healthy() {
        let mut resp = (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONTENT_TYPE, JSON)],
            "{\"errors\":[{\"code\":\"UNAVAILABLE\",\"message\":\"service unavailable\",\"detail\":\"health check failed: please see /debug/health\"}]}\n",
        )
            .into_response();
        // A PATCH or PUT refused here has its body unread: drained (bounded) first, as
        // for any refused request, so the client reads this answer instead of a reset
        // connection, and the connection closed after it (the client retries elsewhere).
        let (parts, body) = req.into_parts();
        if super::declares_body(&parts.headers) && parts.version < axum::http::Version::HTTP_2 {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return super::refuse(&parts, body, resp).await;
        }
        return resp;
    }
    if req.uri().path() == "/" {
        let mut resp = Response::new(Body::empty());
        let h = resp.headers_mut();
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        return resp;
    }
    next.run(req).await
}
