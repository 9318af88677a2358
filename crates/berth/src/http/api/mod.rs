//! The management API under `/api/v2.0`, in Harbor's shapes (paths, JSON fields,
//! pagination with `X-Total-Count` and `Link`, the `{"errors":[...]}` envelope), so
//! Harbor's clients and scripts work against Berth. Thin: each handler decodes, asks
//! `auth::accounts` (or the registry) one question, and renders. Request bodies are
//! strict types (`deny_unknown_fields`): no field a caller may not set slips through.

mod audit;
mod gc;
mod immutable;
mod projects;
mod quotas;
mod registries;
mod repositories;
mod retentions;
mod robots;
mod system;
mod users;

use super::body::read_limited;
use super::App;
use crate::auth::accounts::{AccountError, Accounts, ProjectKey};
use crate::auth::berth::Who;
use crate::auth::{AuthError, Credentials};
use crate::meta::{AuditRecord, Page};
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, request::Parts, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use std::net::SocketAddr;
use std::time::Duration;

/// The most a request body of the API may hold.
const MAX_BODY: usize = 1024 * 1024;

/// What a handler gets.
pub(super) struct Call<'a> {
    pub app: &'a App,
    pub accounts: &'a Accounts,
    pub who: Who,
    pub method: Method,
    pub parts: &'a Parts,
    pub query: Vec<(String, String)>,
    /// Path segments after `/api/v2.0/`, percent-decoded once.
    pub segments: Vec<String>,
    /// Taken once by [`Call::json`]; behind a mutex so that `&Call` is `Send` (a body is
    /// not `Sync`).
    body: std::sync::Mutex<Option<Body>>,
}

/// An answer the API gives: a response, or an error in Harbor's envelope.
pub(super) type Answer = Result<Response, Failure>;

/// An error of the API.
#[derive(Debug)]
pub(super) struct Failure {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl Failure {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Failure {
        Failure {
            status,
            code,
            message: message.into(),
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Failure {
        Failure::new(StatusCode::BAD_REQUEST, "BAD_REQUEST", message)
    }
    pub fn not_found(message: impl Into<String>) -> Failure {
        Failure::new(StatusCode::NOT_FOUND, "NOT_FOUND", message)
    }
}

impl From<AccountError> for Failure {
    fn from(e: AccountError) -> Failure {
        let message = e.to_string();
        match e {
            AccountError::Unauthenticated => {
                Failure::new(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", message)
            }
            AccountError::Forbidden(_) => Failure::new(StatusCode::FORBIDDEN, "FORBIDDEN", message),
            AccountError::NotFound(_) => Failure::not_found(message),
            AccountError::Conflict(_) => Failure::new(StatusCode::CONFLICT, "CONFLICT", message),
            AccountError::Invalid(_) => Failure::bad_request(message),
            AccountError::Precondition(_) => {
                Failure::new(StatusCode::PRECONDITION_FAILED, "PRECONDITION", message)
            }
            AccountError::Store(_) | AccountError::Internal(_) => {
                tracing::error!(error = %message, "management API request failed");
                Failure::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "UNKNOWN",
                    "internal server error: the registry logged the cause",
                )
            }
        }
    }
}

impl From<crate::registry::RegistryError> for Failure {
    fn from(e: crate::registry::RegistryError) -> Failure {
        use crate::registry::RegistryError as E;
        let message = e.to_string();
        match e {
            E::ManifestUnknown(_) | E::NameUnknown | E::BlobUnknown(_) | E::TagUnknown { .. } => {
                Failure::not_found(message)
            }
            E::TagInvalid(_) | E::DigestInvalid(_) | E::ManifestInvalid(_) => {
                Failure::bad_request(message)
            }
            E::Unsupported(_) => Failure::new(StatusCode::FORBIDDEN, "FORBIDDEN", message),
            E::Meta(crate::meta::MetaError::QuotaExceeded { .. }) => {
                Failure::new(StatusCode::FORBIDDEN, "FORBIDDEN", message)
            }
            // Harbor's answer to a change an immutable tag rule refuses.
            E::Denied(_) => Failure::new(StatusCode::PRECONDITION_FAILED, "PRECONDITION", message),
            _ => {
                tracing::error!(error = %message, "management API request failed");
                Failure::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "UNKNOWN",
                    "internal server error: the registry logged the cause",
                )
            }
        }
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"errors": [{"code": self.code, "message": self.message}]});
        let mut resp = (
            self.status,
            [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
            format!("{body}\n"),
        )
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"berth\""),
            );
        }
        resp
    }
}

/// Serve `/api/v2.0{rest}`.
pub(super) async fn handle(
    app: &App,
    accounts: &Accounts,
    parts: &Parts,
    body: Body,
    rest: &str,
) -> Response {
    let credentials = super::auth::credentials(parts);
    let presented = !matches!(credentials, Credentials::None);
    let who = match accounts.access().who(&credentials).await {
        Ok(w) => w,
        Err(AuthError::Unauthenticated | AuthError::InvalidToken(_)) => {
            let user = match &credentials {
                Credentials::Basic { user, .. } => user.clone(),
                _ => String::new(),
            };
            if presented {
                audit(
                    app,
                    parts,
                    &user,
                    "login",
                    "user",
                    &user,
                    None,
                    "unauthorized",
                );
            }
            return Failure::new(
                StatusCode::UNAUTHORIZED,
                "UNAUTHORIZED",
                "wrong user name or password",
            )
            .into_response();
        }
        Err(e) => {
            tracing::error!(error = %e, "management API authentication failed");
            return Failure::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "UNKNOWN",
                "internal server error: the registry logged the cause",
            )
            .into_response();
        }
    };
    let segments: Vec<String> = rest
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect();
    let query = parts
        .uri
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let mut call = Call {
        app,
        accounts,
        who,
        method: parts.method.clone(),
        parts,
        query,
        segments,
        body: std::sync::Mutex::new(Some(body)),
    };
    let answer = route(&mut call).await;
    match answer {
        Ok(r) => r,
        Err(f) => f.into_response(),
    }
}

async fn route(c: &mut Call<'_>) -> Answer {
    let segs: Vec<String> = c.segments.clone();
    let s: Vec<&str> = segs.iter().map(String::as_str).collect();
    let m = c.method.clone();
    let get = m == Method::GET || m == Method::HEAD;
    match (s.as_slice(), m.as_str()) {
        (["ping"], _) if get => Ok(system::ping()),
        (["health"], _) if get => system::health(c).await,
        (["systeminfo"], _) if get => system::systeminfo(c).await,
        (["statistics"], _) if get => repositories::statistics(c).await,
        (["search"], _) if get => repositories::search(c).await,
        (["openapi.json"] | ["swagger.json"], _) if get => Ok(system::openapi()),
        (["users"], "GET") => users::list(c).await,
        (["users"], "POST") => users::create(c).await,
        (["users", "current"], "GET") => users::current(c).await,
        (["users", "search"], "GET") => users::search(c).await,
        (["users", id], "GET") => users::get(c, id).await,
        (["users", id], "PUT") => users::update(c, id).await,
        (["users", id], "DELETE") => users::delete(c, id).await,
        (["users", id, "password"], "PUT") => users::password(c, id).await,
        (["users", id, "sysadmin"], "PUT") => users::sysadmin(c, id).await,
        (["projects"], "GET") => projects::list(c).await,
        (["projects"], "HEAD") => projects::head(c).await,
        (["projects"], "POST") => projects::create(c).await,
        (["projects", p], _) if get => projects::get(c, p).await,
        (["projects", p], "PUT") => projects::update(c, p).await,
        (["projects", p], "DELETE") => projects::delete(c, p).await,
        (["projects", p, "summary"], _) if get => projects::summary(c, p).await,
        (["projects", p, "members"], "GET") => projects::members(c, p).await,
        (["projects", p, "members"], "POST") => projects::add_member(c, p).await,
        (["projects", p, "members", id], "GET") => projects::member(c, p, id).await,
        (["projects", p, "members", id], "PUT") => projects::update_member(c, p, id).await,
        (["projects", p, "members", id], "DELETE") => projects::remove_member(c, p, id).await,
        (["projects", p, "robots"], "GET") => robots::list_of_project(c, p).await,
        (["projects", p, "logs"], "GET") => audit::project_logs(c, p).await,
        (["projects", p, "immutabletagrules"], "GET") => immutable::list(c, p).await,
        (["projects", p, "immutabletagrules"], "POST") => immutable::create(c, p).await,
        (["projects", p, "immutabletagrules", id], "PUT") => immutable::update(c, p, id).await,
        (["projects", p, "immutabletagrules", id], "DELETE") => immutable::delete(c, p, id).await,
        (["projects", p, "repositories"], "GET") => repositories::list(c, p).await,
        (["projects", p, "repositories", r], "GET") => repositories::get(c, p, r).await,
        (["projects", p, "repositories", r], "DELETE") => repositories::delete(c, p, r).await,
        (["projects", p, "repositories", r, "artifacts"], "GET") => repositories::artifacts(c, p, r).await,
        (["projects", p, "repositories", r, "artifacts", a], "GET") => repositories::artifact(c, p, r, a).await,
        (["projects", p, "repositories", r, "artifacts", a], "DELETE") => repositories::delete_artifact(c, p, r, a).await,
        (["projects", p, "repositories", r, "artifacts", a, "tags"], "GET") => repositories::tags(c, p, r, a).await,
        (["projects", p, "repositories", r, "artifacts", a, "tags"], "POST") => repositories::add_tag(c, p, r, a).await,
        (["projects", p, "repositories", r, "artifacts", a, "tags", t], "DELETE") => repositories::delete_tag(c, p, r, a, t).await,
        (["repositories"], "GET") => repositories::list_all(c).await,
        (["robots"], "GET") => robots::list(c).await,
        (["robots"], "POST") => robots::create(c).await,
        (["robots", id], "GET") => robots::get(c, id).await,
        (["robots", id], "PUT") => robots::update(c, id).await,
        (["robots", id], "PATCH") => robots::refresh(c, id).await,
        (["robots", id], "DELETE") => robots::delete(c, id).await,
        (["audit-logs"], "GET") => audit::list(c).await,
        (["registries"], "GET") => registries::list(c).await,
        (["registries"], "POST") => registries::create(c).await,
        (["registries", "ping"], "POST") => registries::ping(c).await,
        (["registries", id], "GET") => registries::get(c, id).await,
        (["registries", id], "PUT") => registries::update(c, id).await,
        (["registries", id], "DELETE") => registries::delete(c, id).await,
        (["replication", "adapters"], "GET") => registries::adapters(c).await,
        (["quotas"], "GET") => quotas::list(c).await,
        (["quotas", id], "GET") => quotas::get(c, id).await,
        (["quotas", id], "PUT") => quotas::update(c, id).await,
        (["retentions", "metadatas"], "GET") => retentions::metadatas(c).await,
        (["retentions"], "POST") => retentions::create(c).await,
        (["retentions", id], "GET") => retentions::get(c, id).await,
        (["retentions", id], "PUT") => retentions::update(c, id).await,
        (["retentions", id], "DELETE") => retentions::delete(c, id).await,
        (["retentions", id, "executions"], "GET") => retentions::runs(c, id).await,
        (["retentions", id, "executions"], "POST") => retentions::run(c, id).await,
        (["retentions", id, "executions", e], "PATCH") => retentions::stop(c, id, e).await,
        (["retentions", id, "executions", e, "tasks"], "GET") => retentions::tasks(c, id, e).await,
        (["retentions", id, "executions", e, "tasks", t], "GET") => retentions::task_log(c, id, e, t).await,
        (["system", "gc"], "GET") => gc::list(c).await,
        (["system", "gc", "schedule"], "GET") => gc::schedule(c).await,
        (["system", "gc", "schedule"], "POST") => gc::set_schedule(c, true).await,
        (["system", "gc", "schedule"], "PUT") => gc::set_schedule(c, false).await,
        (["system", "gc", id], "GET") => gc::get(c, id).await,
        (["system", "gc", id], "PUT") => gc::stop(c, id).await,
        (["system", "gc", id, "log"], "GET") => gc::log(c, id).await,
        _ => Err(Failure::not_found(format!(
            "{} /api/v2.0/{} is not part of Berth's management API (GET /api/v2.0/openapi.json lists what is)",
            c.method,
            c.segments.join("/")
        ))),
    }
}

impl Call<'_> {
    /// The request body as a strict type: malformed JSON or an unknown field is a 400.
    pub async fn json<T: DeserializeOwned>(&mut self) -> Result<T, Failure> {
        self.json_or(None).await
    }

    /// [`Call::json`], or `empty` when the request has no body.
    pub async fn json_or<T: DeserializeOwned>(&mut self, empty: Option<T>) -> Result<T, Failure> {
        let body = self
            .body
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .unwrap_or_else(Body::empty);
        let bytes = read_limited(body, MAX_BODY, Duration::from_secs(30))
            .await
            .map_err(|_| {
                Failure::bad_request(format!(
                    "the request body must be JSON of at most {MAX_BODY} bytes"
                ))
            })?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            if let Some(v) = empty {
                return Ok(v);
            }
        }
        let mut de = serde_json::Deserializer::from_slice(&bytes);
        serde_path_to_error::deserialize(&mut de)
            .map_err(|e| Failure::bad_request(format!("invalid request body: {e}")))
    }

    pub fn param(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// `page` (from 1) and `page_size` (default 10, at most 100), as Harbor reads them.
    pub fn page(&self) -> Result<(u64, u64, Page), Failure> {
        let number = |key: &str, default: u64| -> Result<u64, Failure> {
            match self.param(key) {
                None | Some("") => Ok(default),
                Some(v) => v
                    .parse::<u64>()
                    .map_err(|_| Failure::bad_request(format!("{key} must be a whole number"))),
            }
        };
        let page = number("page", 1)?.max(1);
        let size = number("page_size", 10)?.min(100);
        let size = if size == 0 { 10 } else { size };
        Ok((
            page,
            size,
            Page {
                offset: (page - 1).saturating_mul(size),
                limit: size as u32,
            },
        ))
    }

    /// Refuse a change of stored content when the registry takes none (read-only
    /// mode, a pull-through cache), as `/v2/` does.
    pub fn writable(&self) -> Result<(), Failure> {
        if self.app.options.read_only {
            return Err(Failure::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "METHOD_NOT_ALLOWED",
                "the registry is in read-only mode (storage.maintenance.readonly.enabled)",
            ));
        }
        if let Some(upstream) = &self.app.options.proxy {
            return Err(Failure::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "METHOD_NOT_ALLOWED",
                format!("this registry is a pull-through cache of {upstream}: its content is not changed here"),
            ));
        }
        Ok(())
    }

    /// A key of Harbor's `q` parameter (`q=name=~abc,public=true`): (value, fuzzy).
    pub fn q(&self, key: &str) -> Option<(String, bool)> {
        let q = self.param("q")?;
        q.split(',').find_map(|term| {
            let (k, v) = term.split_once('=')?;
            (k.trim() == key).then(|| match v.strip_prefix('~') {
                Some(f) => (f.to_string(), true),
                None => (v.to_string(), false),
            })
        })
    }

    /// How a path names a project: by id when it is a number, unless the
    /// `X-Is-Resource-Name` header says it is a name.
    pub fn project_key(&self, p: &str) -> ProjectKey {
        let by_name = self
            .parts
            .headers
            .get("x-is-resource-name")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("true"));
        match p.parse::<i64>() {
            Ok(id) if !by_name => ProjectKey::Id(id),
            _ => ProjectKey::Name(p.to_string()),
        }
    }

    /// Record an audited change made through the API.
    pub fn audit(
        &self,
        operation: &str,
        resource_type: &str,
        resource: &str,
        project: Option<&str>,
    ) {
        let name = self.who.principal().display_name().to_string();
        audit(
            self.app,
            self.parts,
            &name,
            operation,
            resource_type,
            resource,
            project,
            "success",
        );
    }
}

/// Record an audit entry for a request.
#[allow(clippy::too_many_arguments)]
fn audit(
    app: &App,
    parts: &Parts,
    principal: &str,
    operation: &str,
    resource_type: &str,
    resource: &str,
    project: Option<&str>,
    result: &str,
) {
    if let Some(log) = &app.options.audit {
        log.record(AuditRecord {
            time_ms: now_ms(),
            principal: if principal.is_empty() {
                "anonymous".into()
            } else {
                principal.into()
            },
            client: client_of(parts),
            resource_type: resource_type.into(),
            resource: resource.into(),
            project: project.map(str::to_string),
            operation: operation.into(),
            result: result.into(),
        });
    }
}

pub(super) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The client's address (the connection's peer).
pub(super) fn client_of(parts: &Parts) -> String {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_default()
}

/// A JSON answer.
pub(super) fn json(status: StatusCode, value: &serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        value.to_string(),
    )
        .into_response()
}

/// 200 with no body (Harbor's answer to PUT and DELETE).
pub(super) fn ok() -> Response {
    super::empty(StatusCode::OK, &[])
}

/// 201 with a `Location`.
pub(super) fn created(location: &str) -> Response {
    super::empty(StatusCode::CREATED, &[("location", location.to_string())])
}

/// A page of a listing: the items, `X-Total-Count`, and `Link` (relative, `prev` and
/// `next`, joined by " , " as Harbor writes it).
pub(super) fn listing(
    c: &Call<'_>,
    items: Vec<serde_json::Value>,
    total: u64,
    page: u64,
    size: u64,
) -> Response {
    let mut resp = json(StatusCode::OK, &serde_json::Value::Array(items));
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&total.to_string()) {
        h.insert("x-total-count", v);
    }
    let link_to = |p: u64| {
        let mut q: Vec<(String, String)> = c
            .query
            .iter()
            .filter(|(k, _)| k != "page" && k != "page_size")
            .cloned()
            .collect();
        q.push(("page".into(), p.to_string()));
        q.push(("page_size".into(), size.to_string()));
        q.sort();
        let query: Vec<String> = q.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!("<{}?{}>", c.parts.uri.path(), query.join("&"))
    };
    let mut links = Vec::new();
    if page > 1 && (page - 1) * size < total {
        links.push(format!("{}; rel=\"prev\"", link_to(page - 1)));
    }
    if page * size < total {
        links.push(format!("{}; rel=\"next\"", link_to(page + 1)));
    }
    if !links.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&links.join(" , ")) {
            h.insert(header::LINK, v);
        }
    }
    resp
}

/// Unix seconds as Harbor's timestamps (RFC 3339, UTC).
pub(super) fn time(secs: i64) -> String {
    crate::registry::events::rfc3339_nano(
        std::time::UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64),
    )
}

/// Unix milliseconds likewise.
pub(super) fn time_ms(ms: i64) -> String {
    crate::registry::events::rfc3339_nano(
        std::time::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64),
    )
}

/// A numeric path parameter.
pub(super) fn id(text: &str, what: &str) -> Result<i64, Failure> {
    text.parse()
        .map_err(|_| Failure::bad_request(format!("{what} {text:?} is not a number")))
}
