//! The only module that knows HTTP. Parses each request into an [`endpoint::Endpoint`],
//! calls one `registry` service, and renders the answer; [`error`] is the one mapping
//! from errors to responses. Also the access log; [`server`] is the listener loop (TLS,
//! draining), [`auth`] the authentication check every routed request passes.

mod api;
mod auth;
mod blobs;
mod body;
pub mod debug;
pub mod endpoint;
mod error;
mod listing;
mod manifests;
pub mod metrics;
pub mod mirror;
pub mod server;
mod token;
mod uploads;

use crate::auth::{AccessControl, Principal};
use crate::registry::{MirrorRoute, Registry, RequestInfo};
use axum::body::Body;
use axum::body::HttpBody as _;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use endpoint::{Endpoint, PathError};
use error::ApiError;
use oci::ErrorCode;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Options of the HTTP layer itself.
#[derive(Debug, Clone, Default)]
pub struct HttpOptions {
    /// Log one line per request.
    pub access_log: bool,
    /// `http.prefix`: the API lives under this path (`/registry` -> `/registry/v2/`).
    pub prefix: String,
    /// `http.host`: absolute base URL for `Location` headers (`https://reg.example.com`).
    pub host: Option<String>,
    /// Absolute `Location` URLs built from the request (`http.relativeurls: false` given
    /// explicitly); otherwise they are relative paths.
    pub absolute_urls: bool,
    /// Health check results: while any check fails, every request gets 503.
    pub health: crate::jobs::health::HealthStatus,
    /// Record request metrics here (when Prometheus is enabled).
    pub metrics: Option<Arc<metrics::Metrics>>,
    /// `auth`: who may call and do what; `None` means open access.
    pub access: Option<Arc<dyn AccessControl>>,
    /// `auth.berth`: the token service and the management API are served.
    pub berth: Option<Arc<crate::auth::accounts::Accounts>>,
    /// `auth.berth`: where audit records go.
    pub audit: Option<Arc<crate::auth::audit::AuditLog>>,
    /// `http.headers`: added to every routed response (errors included).
    pub headers: Vec<(String, String)>,
    /// `storage.maintenance.readonly.enabled`: writes answer 405.
    pub read_only: bool,
    /// `proxy.remoteurl`: a pull-through cache of this upstream; writes answer 405.
    pub proxy: Option<String>,
    /// Notification endpoints are configured: describe each request for their events.
    pub notify: bool,
    /// `auth.berth.mirrors`: host names that are pull-only mirrors of one project each.
    pub mirrors: mirror::MirrorHosts,
}

/// Marks a request that arrived over TLS (set by the listener), for absolute URLs.
#[derive(Debug, Clone, Copy)]
pub struct TlsConnection;

/// Ends the connection a request arrived on (set by the listener): a response body that
/// its client has stopped taking uses it, since over HTTP/2 a stalled stream is never
/// polled again and so could not end itself.
#[derive(Debug, Clone)]
pub struct ConnectionCut(pub Arc<tokio::sync::Notify>);

impl ConnectionCut {
    pub fn cut(&self) {
        self.0.notify_one();
    }
}

/// Everything a request needs from the application.
pub(crate) struct App {
    registry: Arc<Registry>,
    options: HttpOptions,
}

/// What a handler gets: the parsed request.
pub(crate) struct Req {
    pub method: Method,
    pub headers: HeaderMap,
    pub query: Vec<(String, String)>,
    /// What goes before `/v2/...` in URLs this response hands out: the prefix, or an
    /// absolute base.
    pub base: String,
    /// Ends the request's HTTP/2 connection (none over HTTP/1, whose connection wrapper
    /// in `server.rs` sees a stalled client itself, and none when the request did not
    /// come through the listener).
    pub connection_cut: Option<ConnectionCut>,
    /// The catalog lists only repositories of these projects (`None`: all).
    pub within: Option<Vec<String>>,
    /// The request came to the mirror host name of this project (`auth.berth.mirrors`):
    /// its client names repositories without it.
    pub mirror: Option<String>,
}

impl Req {
    /// A URL for `path` (which starts with `/v2/`) as this registry hands it out.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `repo` as this request's client names it (without the project of a mirror host).
    pub fn client_name<'a>(&self, repo: &'a oci::RepoName) -> &'a str {
        self.mirror
            .as_deref()
            .and_then(|p| repo.as_str().strip_prefix(p)?.strip_prefix('/'))
            .unwrap_or(repo.as_str())
    }
}

impl Req {
    /// The first value of query parameter `key`.
    pub fn param(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn header(&self, name: header::HeaderName) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// The application: every request goes through [`dispatch`].
pub fn router(registry: Arc<Registry>, options: HttpOptions) -> Router {
    let log_requests = options.access_log;
    let health = options.health.clone();
    let measured = options.metrics.clone().map(|m| (m, options.prefix.clone()));
    let app = Router::new()
        .fallback(dispatch)
        .with_state(Arc::new(App { registry, options }));
    let mut app = app.layer(middleware::map_response(api_version_header));
    if let Some((m, prefix)) = measured {
        app = app.layer(middleware::from_fn(move |req: Request, next: Next| {
            metrics::measure(m.clone(), prefix.clone(), req, next)
        }));
    }
    let app = app.layer(middleware::from_fn(move |req: Request, next: Next| {
        debug::gate(health.clone(), req, next)
    }));
    if log_requests {
        app.layer(middleware::from_fn(access_log))
    } else {
        app
    }
}

/// Serve `app` over plain HTTP on `listener` until `shutdown` completes, then drain
/// in-flight requests ([`server::serve`] takes TLS and drain options).
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    server::serve(listener, app, server::ServeOptions::default(), shutdown).await
}

/// Bytes a response sends: its length (none for HEAD).
pub(crate) fn response_bytes(method: &Method, resp: &Response) -> u64 {
    if method == Method::HEAD {
        return 0;
    }
    resp.headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .or_else(|| resp.body().size_hint().exact())
        .unwrap_or(0)
}

async fn api_version_header(mut resp: Response) -> Response {
    resp.headers_mut().insert(
        "docker-distribution-api-version",
        HeaderValue::from_static("registry/2.0"),
    );
    resp
}

async fn access_log(req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let remote = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.to_string())
        .unwrap_or_default();
    let mut user = String::new();
    // Count request bytes as the handler reads them (chunked bodies have no length).
    let bytes_in = Arc::new(AtomicU64::new(0));
    let counter = bytes_in.clone();
    let req = req.map(|inner| Body::new(body::Counted { inner, counter }));
    let resp = next.run(req).await;
    if let Some(p) = resp.extensions().get::<Principal>() {
        user.clone_from(&p.name);
    }
    let bytes_out = response_bytes(&method, &resp);
    tracing::info!(
        target: "berth::access",
        %method,
        path,
        status = resp.status().as_u16(),
        duration_ms = start.elapsed().as_micros() as f64 / 1000.0,
        bytes_in = bytes_in.load(Ordering::Relaxed),
        bytes_out,
        remote,
        user,
        "request"
    );
    resp
}

/// The base of the URLs handed out for this request.
fn url_base(options: &HttpOptions, parts: &axum::http::request::Parts) -> String {
    base_of(options, parts, options.absolute_urls)
}

/// The base of URLs, absolute (from `http.host` or the request) when `absolute`.
fn base_of(options: &HttpOptions, parts: &axum::http::request::Parts, absolute: bool) -> String {
    if let Some(host) = &options.host {
        return format!("{}{}", host.trim_end_matches('/'), options.prefix);
    }
    if !absolute {
        return options.prefix.clone();
    }
    let header = |n: &str| parts.headers.get(n).and_then(|v| v.to_str().ok());
    let first = |v: &str| v.split(',').next().unwrap_or("").trim().to_string();
    let scheme = header("x-forwarded-proto").map(first).unwrap_or_else(|| {
        if parts.extensions.get::<TlsConnection>().is_some() {
            "https"
        } else {
            "http"
        }
        .to_string()
    });
    let host = request_host(parts).unwrap_or_default();
    format!("{scheme}://{host}{}", options.prefix)
}

/// The host (and port) the client addressed: `X-Forwarded-Host` from a proxy in front
/// (its first value), else `Host`, else the URI's authority (HTTP/2).
fn request_host(parts: &axum::http::request::Parts) -> Option<String> {
    let header = |n: &str| parts.headers.get(n).and_then(|v| v.to_str().ok());
    header("x-forwarded-host")
        .map(|v| v.split(',').next().unwrap_or("").trim().to_string())
        .or_else(|| header("host").map(str::to_string))
        .or_else(|| parts.uri.authority().map(|a| a.to_string()))
}

/// The request as notifications describe it (Distribution's `request` and `actor`).
fn request_info(
    options: &HttpOptions,
    parts: &axum::http::request::Parts,
    actor: Option<&Principal>,
) -> RequestInfo {
    let header = |n: &str| {
        parts
            .headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    let forwarded = header("x-forwarded-for")
        .split(',')
        .next()
        .map(str::trim)
        .filter(|a| a.parse::<std::net::IpAddr>().is_ok());
    let real_ip = Some(header("x-real-ip").trim()).filter(|a| !a.is_empty());
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.to_string());
    RequestInfo {
        id: uuid::Uuid::new_v4().to_string(),
        addr: forwarded
            .or(real_ip)
            .map(str::to_string)
            .or(peer)
            .unwrap_or_default(),
        host: header("host").to_string(),
        method: parts.method.to_string(),
        user_agent: header("user-agent").to_string(),
        // The authenticated principal (a user, a robot, a token's subject); without
        // authentication nobody is known, whatever Basic header a client sends
        // (Distribution 2.8 leaves the actor empty too).
        actor: actor.filter(|p| !p.is_anonymous()).map(|p| p.name.clone()),
        url_base: base_of(options, parts, true),
    }
}

/// How much of a refused request's body is read and dropped to keep its connection.
const REFUSED_BODY_DRAIN: u64 = 256 * 1024;
/// How much of a body is read and dropped after a server-side failure, so the client
/// reads the error instead of a reset connection.
const FAILED_BODY_DRAIN: u64 = 64 << 20;

/// Answer `resp` to a request refused before its body was read. Over HTTP/1 a little
/// of the body is drained first (see [`body::discard`]), unless the client waits for
/// `100 Continue` before sending it (reading would ask for the body it need not send:
/// the answer closes the connection instead). HTTP/2 resets the stream on its own.
async fn refuse(parts: &axum::http::request::Parts, body: Body, resp: Response) -> Response {
    let expects_continue = expects_continue(&parts.headers);
    if parts.version < axum::http::Version::HTTP_2 && !expects_continue {
        body::discard(body, REFUSED_BODY_DRAIN, std::time::Duration::from_secs(2)).await;
    }
    resp
}

/// Whether the client waits for `100 Continue` before it sends the body.
fn expects_continue(headers: &HeaderMap) -> bool {
    headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

/// Whether a request says it carries a body.
fn declares_body(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() != "0")
}

/// Route the request, and close an HTTP/1 connection whose request body was not read
/// to its end, saying so with `Connection: close`: otherwise the client may send its
/// next request on a connection the server is about to close, and see it fail (Go's
/// client does not retry a PUT or PATCH that fails that way).
async fn dispatch(State(app): State<Arc<App>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let http1 = parts.version < axum::http::Version::HTTP_2;
    if !http1 || !declares_body(&parts.headers) {
        return dispatch_parts(app, parts, body).await;
    }
    let expects_continue = expects_continue(&parts.headers);
    let seen = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let shared = Arc::new(std::sync::Mutex::new(Some(body)));
    let body = Body::new(body::EndSeen {
        inner: shared.clone(),
        seen: seen.clone(),
    });
    let mut resp = dispatch_parts(app, parts, body).await;
    // A server-side failure in the middle of a body (a full disk, the object store
    // gone) is answered after a bounded drain of the rest: a client still sending
    // would otherwise see its connection reset instead of the error that says why.
    if !seen.load(Ordering::Relaxed) && resp.status().is_server_error() && !expects_continue {
        let rest = shared.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(rest) = rest {
            if body::discard(rest, FAILED_BODY_DRAIN, std::time::Duration::from_secs(5)).await {
                seen.store(true, Ordering::Relaxed);
            }
        }
    }
    if !seen.load(Ordering::Relaxed) {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

async fn dispatch_parts(
    app: Arc<App>,
    mut parts: axum::http::request::Parts,
    body: Body,
) -> Response {
    let Some(path) = parts
        .uri
        .path()
        .strip_prefix(app.options.prefix.as_str())
        .map(str::to_string)
    else {
        return not_found();
    };
    // `http.headers` go on every answer of a route (errors, 401s, the token service and
    // the API included), not on the 404 of a path that is none (as in 2.8).
    let Some(mut resp) = dispatch_path(&app, &mut parts, body, &path).await else {
        return not_found();
    };
    for (name, value) in &app.options.headers {
        if let (Ok(n), Ok(v)) = (
            header::HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            resp.headers_mut().append(n, v);
        }
    }
    if let Some(p) = parts.extensions.get::<Principal>() {
        resp.extensions_mut().insert(p.clone());
    }
    resp
}

fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "404 page not found\n").into_response()
}

/// The answer of the route `path` (below `http.prefix`); `None` when there is none.
async fn dispatch_path(
    app: &Arc<App>,
    parts: &mut axum::http::request::Parts,
    body: Body,
    path: &str,
) -> Option<Response> {
    let mirror = app.options.mirrors.project_for(parts).map(str::to_string);
    if let Some(accounts) = &app.options.berth {
        if path == "/service/token" {
            let mirror = match token_mirror(&app.options.mirrors, parts, mirror) {
                Ok(m) => m,
                Err(e) => return Some(e.into_response()),
            };
            return Some(
                token::handle(app, accounts.access(), parts, body, mirror.as_deref()).await,
            );
        }
        if let Some(rest) = path.strip_prefix("/api/v2.0") {
            if rest.is_empty() || rest.starts_with('/') {
                if let Some(project) = &mirror {
                    return Some(
                        ApiError::with_status(
                            StatusCode::NOT_FOUND,
                            ErrorCode::Unsupported,
                            format!("this host name is a mirror of project {project} (auth.berth.mirrors): the management API is on the registry's own host name"),
                        )
                        .into_response(),
                    );
                }
                return Some(api::handle(app, accounts, parts, body, rest).await);
            }
        }
    }
    let endpoint = match Endpoint::parse(path) {
        Ok(e) => e,
        Err(PathError::NotFound) => return None,
        Err(PathError::NameInvalid(e)) => {
            return Some(ApiError::new(ErrorCode::NameInvalid, e.to_string()).into_response())
        }
        Err(PathError::DigestInvalid(e)) => {
            return Some(ApiError::new(ErrorCode::DigestInvalid, e).into_response())
        }
    };
    let endpoint = match mirror {
        Some(project) => match mirror_endpoint(app, &project, parts, endpoint).await {
            Ok(e) => {
                parts.extensions.insert(mirror::MirrorOf(project));
                e
            }
            Err(e) => return Some(refuse(parts, body, e.into_response()).await),
        },
        None => match namespace_endpoint(app, parts, endpoint).await {
            Ok(e) => e,
            Err(e) => return Some(e.into_response()),
        },
    };
    Some(route(app, parts, body, endpoint).await)
}

/// Authenticate, enforce read-only mode, and call the endpoint's handler.
async fn route(
    app: &App,
    parts: &mut axum::http::request::Parts,
    body: Body,
    endpoint: Endpoint,
) -> Response {
    let mut mount_allowed = true;
    let mut within = None;
    if let Some(access) = &app.options.access {
        let base = base_of(&app.options, parts, true);
        let checked = auth::check(access.as_ref(), &endpoint, parts, &base).await;
        if let (Some(log), Err(e)) = (&app.options.audit, &checked) {
            audit_refusal(log, parts, &endpoint, e);
        }
        match checked {
            // Kept in the request's extensions (and copied to the response's, for the
            // access log) for whoever needs the caller: notifications' actor, audit.
            Ok(allowed) => {
                mount_allowed = allowed.mount_allowed;
                if matches!(endpoint, Endpoint::Catalog) {
                    match access.listable_projects(&allowed.principal).await {
                        Ok(w) => within = w,
                        Err(e) => {
                            tracing::error!(error = %e, "cannot list the caller's projects");
                            return ApiError::with_status(
                                StatusCode::INTERNAL_SERVER_ERROR,
                                ErrorCode::Unknown,
                                "the registry cannot list the caller's projects: its log says why",
                            )
                            .into_response();
                        }
                    }
                }
                parts.extensions.insert(allowed.principal);
            }
            Err(e) => return refuse(parts, body, e.into_response()).await,
        }
    }
    if app.options.read_only && is_write(&parts.method, &endpoint) {
        return refuse(
            parts,
            body,
            ApiError::with_status(
            StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::Unsupported,
            "the registry is in read-only mode (storage.maintenance.readonly.enabled): pushes and deletes are refused",
        )
        .header(header::ALLOW, "GET, HEAD")
        .into_response(),
        )
        .await;
    }
    if let Some(upstream) = &app.options.proxy {
        if is_write(&parts.method, &endpoint) {
            return refuse(
            parts,
            body,
            ApiError::with_status(
                StatusCode::METHOD_NOT_ALLOWED,
                ErrorCode::Unsupported,
                format!("this registry is a pull-through cache of {upstream} (proxy.remoteurl): pushes and deletes are refused; push to the upstream registry instead"),
            )
            .header(header::ALLOW, "GET, HEAD")
            .into_response(),
        )
        .await;
        }
    }
    // A proxy-cache project takes no pushes (deletes evict cached content). Every push
    // starts an upload session (or mounts, or sends a blob whole) or puts a manifest;
    // the chunks of a session that could start are not asked again.
    let starts_a_push = matches!(
        (&parts.method, &endpoint),
        (&Method::POST, Endpoint::Uploads { .. }) | (&Method::PUT, Endpoint::Manifest { .. })
    );
    if starts_a_push && app.options.berth.is_some() {
        if let Some(repo) = endpoint.repo() {
            match app.registry.push_refusal(repo).await {
                Ok(None) => {}
                Ok(Some(msg)) => {
                    return refuse(
                        parts,
                        body,
                        ApiError::new(ErrorCode::Denied, msg).into_response(),
                    )
                    .await
                }
                Err(e) => return ApiError::from(e).into_response(),
            }
        }
    }
    let mut query: Vec<(String, String)> = parts
        .uri
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    // With per-repository access, a mount happens only from a repository the caller may
    // pull, and never without `from` (that would link any blob the registry holds):
    // otherwise the request starts an ordinary upload, as Distribution answers a mount it
    // cannot do.
    let scoped = app.options.access.as_ref().is_some_and(|a| a.scoped());
    if matches!(endpoint, Endpoint::Uploads { .. })
        && (!mount_allowed || (scoped && !query.iter().any(|(k, _)| k == "from")))
    {
        query.retain(|(k, _)| k != "mount" && k != "from");
    }
    // Notification events of this request name it and its principal (a task-local:
    // no signature below http/ carries it); without endpoints nothing reads it. Built
    // before the headers move into the handler's request.
    let info = app
        .options
        .notify
        .then(|| request_info(&app.options, parts, parts.extensions.get::<Principal>()));
    let req = Req {
        base: url_base(&app.options, parts),
        method: parts.method.clone(),
        headers: std::mem::take(&mut parts.headers),
        query,
        connection_cut: (parts.version == axum::http::Version::HTTP_2)
            .then(|| parts.extensions.get::<ConnectionCut>().cloned())
            .flatten(),
        within,
        mirror: parts
            .extensions
            .get::<mirror::MirrorOf>()
            .map(|m| m.0.clone()),
    };
    let audited =
        app.options.audit.as_ref().and_then(|log| {
            audited_action(&req.method, &endpoint).map(|a| (log, a, endpoint.clone()))
        });
    let resp = match info {
        Some(info) => info.scope(handle(app, req, body, endpoint)).await,
        None => handle(app, req, body, endpoint).await,
    };
    if let Some((log, (operation, resource_type), endpoint)) = audited {
        let principal = parts
            .extensions
            .get::<Principal>()
            .map(|p| p.display_name().to_string())
            .unwrap_or_else(|| "anonymous".into());
        let result = if resp.status().is_success() {
            "success"
        } else {
            "failed"
        };
        log.record(audit_record(
            parts,
            &endpoint,
            principal,
            operation,
            resource_type,
            result,
        ));
    }
    resp
}

/// The registry requests the audit log records: (operation, resource type).
fn audited_action(method: &Method, endpoint: &Endpoint) -> Option<(&'static str, &'static str)> {
    match (method, endpoint) {
        (&Method::GET, Endpoint::Manifest { .. }) => Some(("pull", "artifact")),
        (&Method::PUT, Endpoint::Manifest { .. }) => Some(("push", "artifact")),
        (&Method::DELETE, Endpoint::Manifest { .. }) => Some(("delete", "artifact")),
        (&Method::DELETE, Endpoint::Blob { .. }) => Some(("delete", "blob")),
        _ => None,
    }
}

/// An audit record of a registry request.
fn audit_record(
    parts: &axum::http::request::Parts,
    endpoint: &Endpoint,
    principal: String,
    operation: &str,
    resource_type: &str,
    result: &str,
) -> crate::meta::AuditRecord {
    let (resource, project) = match endpoint {
        Endpoint::Manifest { repo, reference } => {
            let sep = if reference.contains(':') { "@" } else { ":" };
            (
                format!("{repo}{sep}{reference}"),
                repo.as_str().split_once('/').map(|(p, _)| p.to_string()),
            )
        }
        Endpoint::Blob { repo, digest } => (
            format!("{repo}@{digest}"),
            repo.as_str().split_once('/').map(|(p, _)| p.to_string()),
        ),
        Endpoint::Tags { repo }
        | Endpoint::Uploads { repo }
        | Endpoint::Upload { repo, .. }
        | Endpoint::Referrers { repo, .. } => (
            repo.to_string(),
            repo.as_str().split_once('/').map(|(p, _)| p.to_string()),
        ),
        Endpoint::Base => ("/v2/".into(), None),
        Endpoint::Catalog => ("catalog".into(), None),
    };
    crate::meta::AuditRecord {
        time_ms: api::now_ms(),
        principal,
        client: api::client_of(parts),
        resource_type: resource_type.into(),
        resource,
        project,
        operation: operation.into(),
        result: result.into(),
    }
}

/// Audit a refused registry request: wrong credentials (a failed login), or an
/// authenticated caller denied. Anonymous probes (a client's first request before it
/// logs in) are not recorded.
fn audit_refusal(
    log: &crate::auth::audit::AuditLog,
    parts: &axum::http::request::Parts,
    endpoint: &Endpoint,
    e: &ApiError,
) {
    let credentials = auth::credentials(parts);
    let presented = match &credentials {
        crate::auth::Credentials::None => return,
        crate::auth::Credentials::Basic { user, .. } => user.clone(),
        crate::auth::Credentials::Bearer(_) => "(token)".to_string(),
    };
    let status = e.status();
    let (operation, result) = if status == StatusCode::UNAUTHORIZED {
        ("login", "unauthorized")
    } else if status == StatusCode::FORBIDDEN {
        (
            match parts.method {
                Method::GET | Method::HEAD => "pull",
                Method::DELETE => "delete",
                _ => "push",
            },
            "denied",
        )
    } else {
        return;
    };
    log.record(audit_record(
        parts, endpoint, presented, operation, "artifact", result,
    ));
}

/// Call the endpoint's handler.
async fn handle(app: &App, req: Req, body: Body, endpoint: Endpoint) -> Response {
    let r = &app.registry;
    let result = match (&req.method, endpoint) {
        // Clients probe /v2/ with GET or HEAD; Distribution answers any method.
        (_, Endpoint::Base) => Ok(base()),
        // 2.8 answers OPTIONS with 200, no body, and the route's methods in Allow (an
        // upload's only once the upload is known).
        (&Method::OPTIONS, Endpoint::Upload { repo, id }) => uploads::status(r, &req, &repo, &id)
            .await
            .map(|_| allow("DELETE, GET, PATCH, PUT")),
        (&Method::OPTIONS, e) => Ok(allow(match e {
            Endpoint::Manifest { .. } => "DELETE, GET, HEAD, PUT",
            Endpoint::Blob { .. } => "DELETE, GET, HEAD",
            Endpoint::Uploads { .. } => "GET, POST",
            _ => "GET",
        })),
        (&Method::GET, Endpoint::Catalog) => listing::catalog(r, &req).await,
        (&Method::GET, Endpoint::Tags { repo }) => listing::tags(r, &req, &repo).await,
        (&Method::GET, Endpoint::Referrers { repo, digest }) => {
            listing::referrers(r, &req, &repo, &digest).await
        }
        (&Method::GET | &Method::HEAD, Endpoint::Manifest { repo, reference }) => {
            manifests::get(r, &req, &repo, &reference).await
        }
        (&Method::PUT, Endpoint::Manifest { repo, reference }) => {
            manifests::put(r, &req, body, &repo, &reference).await
        }
        (&Method::DELETE, Endpoint::Manifest { repo, reference }) => {
            manifests::delete(r, &repo, &reference).await
        }
        (&Method::GET | &Method::HEAD, Endpoint::Blob { repo, digest }) => {
            blobs::get(r, &req, &repo, &digest).await
        }
        (&Method::DELETE, Endpoint::Blob { repo, digest }) => {
            blobs::delete(r, &repo, &digest).await
        }
        (&Method::POST, Endpoint::Uploads { repo }) => uploads::post(r, &req, body, &repo).await,
        // Distribution answers a status request without an upload id as an unknown upload.
        (&Method::GET, Endpoint::Uploads { .. }) => Err(ApiError::from(
            crate::registry::RegistryError::UploadUnknown,
        )),
        (&Method::GET, Endpoint::Upload { repo, id }) => uploads::status(r, &req, &repo, &id).await,
        (&Method::PATCH, Endpoint::Upload { repo, id }) => {
            uploads::patch(r, &req, body, &repo, &id).await
        }
        (&Method::PUT, Endpoint::Upload { repo, id }) => {
            uploads::put(r, &req, body, &repo, &id).await
        }
        (&Method::DELETE, Endpoint::Upload { repo, id }) => uploads::cancel(r, &repo, &id).await,
        (m, e) => Err(ApiError::with_status(
            StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::Unsupported,
            format!("{m} is not supported on the {} endpoint", e.route()),
        )),
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

/// The endpoint a request to the mirror host name of `project` reads: the project's
/// repository of the name asked for. Only pulls are served there. A request that says
/// which registry it wants (containerd's `?ns=`) is refused by a cache of another one.
async fn mirror_endpoint(
    app: &App,
    project: &str,
    parts: &axum::http::request::Parts,
    endpoint: Endpoint,
) -> Result<Endpoint, Box<ApiError>> {
    if let Some(ns) = mirror_namespace(parts) {
        if !app.registry.mirror_serves(project, &ns).await {
            return Err(Box::new(ApiError::new(
                ErrorCode::NameUnknown,
                format!("this host name is a mirror of project {project}, which does not cache {ns} (the request's ns): pull from {ns} directly, or through its own mirror"),
            )));
        }
    }
    let reads = matches!(parts.method, Method::GET | Method::HEAD);
    match endpoint {
        Endpoint::Base => Ok(Endpoint::Base),
        Endpoint::Catalog => Err(Box::new(ApiError::with_status(
            StatusCode::NOT_FOUND,
            ErrorCode::Unsupported,
            format!("this host name is a mirror of project {project} (auth.berth.mirrors): it has no catalog; list repositories on the registry's own host name"),
        ))),
        Endpoint::Tags { .. }
        | Endpoint::Manifest { .. }
        | Endpoint::Blob { .. }
        | Endpoint::Referrers { .. }
            if reads =>
        {
            endpoint
                .within_project(project)
                .map_err(|e| Box::new(ApiError::new(ErrorCode::NameInvalid, e.to_string())))
        }
        _ => Err(Box::new(ApiError::with_status(
            StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::Unsupported,
            format!("this host name is a pull-only mirror of project {project} (auth.berth.mirrors): push and delete on the registry's own host name"),
        )
        .header(header::ALLOW, "GET, HEAD"))),
    }
}

/// The project a token request is for when it came through a mirror host name: its
/// realm's `mirror` parameter (a configured mirror's project), else the host name it
/// came to.
fn token_mirror(
    mirrors: &mirror::MirrorHosts,
    parts: &axum::http::request::Parts,
    by_host: Option<String>,
) -> Result<Option<String>, ApiError> {
    let asked = query_param(parts, mirror::REALM_PARAM);
    match asked {
        Some(p) if mirrors.is_project(&p) => Ok(Some(p)),
        Some(p) => Err(ApiError::with_status(
            StatusCode::BAD_REQUEST,
            ErrorCode::Denied,
            format!("{p:?} (the request's mirror) is the project of no mirror host name (auth.berth.mirrors): ask for a token without it"),
        )),
        None => Ok(by_host),
    }
}

/// A mirror request (containerd's hosts.toml adds `?ns=<registry host>`) is served by
/// the proxy-cache project registered for that host; where there are proxy-cache
/// projects but none for that host it is refused (the client goes on to the next
/// host), and without any it is served as any request (Distribution ignores `ns`).
async fn namespace_endpoint(
    app: &App,
    parts: &axum::http::request::Parts,
    endpoint: Endpoint,
) -> Result<Endpoint, ApiError> {
    let Some(ns) = mirror_namespace(parts).filter(|_| endpoint.repo().is_some()) else {
        return Ok(endpoint);
    };
    match app.registry.mirror_route(&ns).await {
        MirrorRoute::Project(project) => endpoint
            .within_project(&project)
            .map_err(|e| ApiError::new(ErrorCode::NameInvalid, e.to_string())),
        MirrorRoute::NotMirrored => Err(ApiError::new(
            ErrorCode::NameUnknown,
            format!("no proxy-cache project of this registry caches {ns} (the request's ns): register it and create a project for it, or pull from {ns} directly"),
        )),
        MirrorRoute::Ignore => Ok(endpoint),
    }
}

/// The `ns` query parameter of a mirror request: the registry host it is for.
fn mirror_namespace(parts: &axum::http::request::Parts) -> Option<String> {
    query_param(parts, "ns").filter(|v| !v.is_empty())
}

/// The first value of the query parameter `key`.
fn query_param(parts: &axum::http::request::Parts, key: &str) -> Option<String> {
    form_urlencoded::parse(parts.uri.query()?.as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

/// Requests that change what is stored: refused in read-only mode.
fn is_write(method: &Method, endpoint: &Endpoint) -> bool {
    let changes = matches!(
        *method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    );
    changes
        && matches!(
            endpoint,
            Endpoint::Manifest { .. }
                | Endpoint::Blob { .. }
                | Endpoint::Uploads { .. }
                | Endpoint::Upload { .. }
        )
}

fn base() -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        "{}",
    )
        .into_response()
}

/// The answer to OPTIONS: 200, no body, the methods the resource takes.
fn allow(methods: &str) -> Response {
    empty(StatusCode::OK, &[("allow", methods.to_string())])
}

/// Build a response from a status and headers, with an empty body.
pub(crate) fn empty(status: StatusCode, headers: &[(&str, String)]) -> Response {
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    for (k, v) in headers {
        if let (Ok(name), Ok(value)) = (
            header::HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            h.append(name, value);
        }
    }
    if !h.contains_key(header::CONTENT_LENGTH) {
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    }
    resp
}
