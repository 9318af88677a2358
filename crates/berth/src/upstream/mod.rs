//! The pull-through cache's client of its upstream registry: the distribution API over
//! HTTP(S) (reqwest, rustls, the system trust store), implementing
//! [`crate::registry::upstream::Upstream`]. With `jobs/`, the only module that makes
//! outgoing HTTP requests.
//!
//! Authentication as real registries require it: anonymous first; on a 401 the
//! `WWW-Authenticate` challenge decides — Basic with `proxy.username`/`password`, or a
//! Bearer token from the challenge's realm (Docker token spec, scope
//! `repository:NAME:pull`, Basic credentials when configured), cached per scope until
//! shortly before `expires_in`. A request is retried once after authenticating.

pub mod auth;

use crate::registry::upstream::{
    Upstream, UpstreamBlob, UpstreamError, UpstreamFactory, UpstreamManifest, UpstreamSettings,
    DOCKER_HUB,
};
use auth::{parse_challenge, TokenCache, TokenResponse};
use futures_util::{StreamExt, TryStreamExt};
use oci::{media, Digest, Reference, RepoName, Tag};
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, WWW_AUTHENTICATE};
use reqwest::{Method, Response};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

/// Every manifest type the cache asks for: it stores what the upstream holds and does
/// content negotiation itself.
const MANIFEST_TYPES: &[&str] = &[
    media::OCI_INDEX,
    media::DOCKER_MANIFEST_LIST,
    media::OCI_MANIFEST,
    media::DOCKER_MANIFEST,
];

/// Connecting to the upstream gives up after this long.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A response (headers, or the next bytes of a body) may take this long.
pub const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// How the upstream wants to be authenticated, learnt from its last challenge.
#[derive(Debug, Clone, PartialEq)]
enum Scheme {
    Unknown,
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

/// The HTTP client of one upstream registry.
pub struct HttpUpstream {
    base: String,
    client: reqwest::Client,
    credentials: Option<(String, String)>,
    /// Where the credentials are configured, for error messages.
    credentials_origin: String,
    scheme: Mutex<Scheme>,
    tokens: TokenCache,
    max_manifest_bytes: usize,
}

impl HttpUpstream {
    /// A client for the registry at `base` (`https://registry-1.docker.io`), configured
    /// by the `proxy` section.
    pub fn new(
        base: &str,
        credentials: Option<(String, String)>,
        max_manifest_bytes: usize,
    ) -> Result<HttpUpstream, String> {
        let settings = UpstreamSettings {
            url: base,
            credentials,
            insecure: false,
            ca_certificate: None,
            credentials_origin: "proxy.username and proxy.password".into(),
        };
        HttpUpstream::with_settings(&settings, max_manifest_bytes)
    }

    /// A client for a registered upstream registry (a proxy-cache project's).
    pub fn with_settings(
        settings: &UpstreamSettings<'_>,
        max_manifest_bytes: usize,
    ) -> Result<HttpUpstream, String> {
        let base = settings.url;
        let url = reqwest::Url::parse(base).map_err(|e| format!("{base:?}: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(format!(
                "{base:?} is not an http:// or https:// URL with a host"
            ));
        }
        let mut builder = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .user_agent(concat!(
                "berth/",
                env!("CARGO_PKG_VERSION"),
                " (pull-through cache)"
            ));
        if let Some(pem) = settings.ca_certificate.filter(|p| !p.trim().is_empty()) {
            let certs = reqwest::Certificate::from_pem_bundle(pem.as_bytes())
                .map_err(|e| format!("the CA certificate is not PEM: {e}"))?;
            if certs.is_empty() {
                return Err("the CA certificate holds no PEM certificate".into());
            }
            for c in certs {
                builder = builder.add_root_certificate(c);
            }
        }
        if settings.insecure {
            builder = builder.danger_accept_invalid_certs(true);
        }
        let client = builder
            .build()
            .map_err(|e| format!("cannot set up the HTTP client: {e}"))?;
        Ok(HttpUpstream {
            base: base.trim_end_matches('/').to_string(),
            client,
            credentials: settings.credentials.clone(),
            credentials_origin: settings.credentials_origin.clone(),
            scheme: Mutex::new(Scheme::Unknown),
            tokens: TokenCache::default(),
            max_manifest_bytes,
        })
    }

    fn failed(&self, what: &str, cause: impl std::fmt::Display) -> UpstreamError {
        UpstreamError::Failed(format!("upstream registry {} {what}: {cause}", self.base))
    }

    fn scheme(&self) -> Scheme {
        self.scheme
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn basic(&self) -> Option<String> {
        use base64::Engine as _;
        self.credentials.as_ref().map(|(u, p)| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
            )
        })
    }

    /// The Authorization header to send for `scope`, from what is known so far.
    fn authorization(&self, scope: &str) -> Option<String> {
        match self.scheme() {
            Scheme::Unknown => None,
            Scheme::Basic => self.basic(),
            Scheme::Bearer { .. } => self.tokens.get(scope).map(|t| format!("Bearer {t}")),
        }
    }

    /// Learn from a 401's challenge; fetch a token when it asks for Bearer. `Ok(false)`
    /// when there is nothing new to try.
    async fn authenticate(&self, resp: &Response, scope: &str) -> Result<bool, UpstreamError> {
        let challenge = resp
            .headers()
            .get_all(WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(parse_challenge)
            .find(|c| c.scheme == "bearer" || c.scheme == "basic");
        let Some(challenge) = challenge else {
            return Ok(false);
        };
        let scheme = if challenge.scheme == "basic" {
            Scheme::Basic
        } else {
            let realm = challenge.param("realm").unwrap_or_default().to_string();
            if realm.is_empty() {
                return Err(self.failed(
                    "sent a Bearer challenge without a realm",
                    "cannot get a token",
                ));
            }
            Scheme::Bearer {
                realm,
                service: challenge.param("service").map(str::to_string),
            }
        };
        *self.scheme.lock().unwrap_or_else(|p| p.into_inner()) = scheme.clone();
        match scheme {
            Scheme::Basic => Ok(self.credentials.is_some()),
            Scheme::Bearer { realm, service } => {
                self.fetch_token(&realm, service.as_deref(), scope).await?;
                Ok(true)
            }
            Scheme::Unknown => Ok(false),
        }
    }

    async fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: &str,
    ) -> Result<(), UpstreamError> {
        let mut url = reqwest::Url::parse(realm)
            .map_err(|e| self.failed(&format!("named token realm {realm:?}"), e))?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = service {
                q.append_pair("service", s);
            }
            if !scope.is_empty() {
                q.append_pair("scope", scope);
            }
        }
        let base = reqwest::Url::parse(&self.base).map_err(|e| self.failed("is not a URL", e))?;
        let mut req = self.client.get(url.clone());
        // Credentials kept back from a token service on another host: the token is
        // asked for anonymously (enough for public content), and a refusal says why.
        let mut withheld = false;
        if let Some(b) = self.basic() {
            match credentials_may_go_to(&base, &url) {
                Destination::Allowed => req = req.header(AUTHORIZATION, b),
                Destination::OtherHost => withheld = true,
                Destination::Downgrade => {
                    return Err(self.failed(
                        &format!("named the token service {realm}"),
                        "it is plain http while the registry is https: the proxy credentials are not sent over it",
                    ))
                }
            }
        }
        let resp = req
            .send()
            .await
            .map_err(|e| self.failed(&format!("token service {realm}"), error_chain(&e)))?;
        let status = resp.status();
        if !status.is_success() {
            let hint = if withheld && matches!(status.as_u16(), 401 | 403) {
                ": the token service is on another host than the registry, so Berth asked anonymously and did not send the upstream's credentials there (they go only to the registry's own host, and to auth.docker.io for Docker Hub)".to_string()
            } else if matches!(status.as_u16(), 401 | 403) {
                format!(": check {}", self.credentials_origin)
            } else {
                String::new()
            };
            return Err(self.failed(
                &format!("token service {realm}"),
                format!("refused a token for {scope} with {status}{hint}"),
            ));
        }
        let body = self
            .read_limited(
                resp,
                MAX_TOKEN_RESPONSE_BYTES,
                &format!("token service {realm}"),
                "the token response limit",
            )
            .await?;
        let body: TokenResponse = serde_json::from_slice(&body).map_err(|e| {
            self.failed(
                &format!("token service {realm}"),
                format!("sent an unreadable answer: {e}"),
            )
        })?;
        let (token, lifetime) = body.into_token().ok_or_else(|| {
            self.failed(
                &format!("token service {realm}"),
                "answered without a token",
            )
        })?;
        self.tokens.put(scope, token, lifetime);
        Ok(())
    }

    /// Send `method path` for `repo`, authenticating and retrying once on a 401. Returns
    /// the response whatever its status, except that a 401 after authenticating is an error.
    async fn send(
        &self,
        method: Method,
        repo: &RepoName,
        path: &str,
        headers: HeaderMap,
    ) -> Result<Response, UpstreamError> {
        self.send_scoped(method, &format!("repository:{repo}:pull"), path, headers)
            .await
    }

    /// [`HttpUpstream::send`] with a token for `scope` (none: `""`).
    async fn send_scoped(
        &self,
        method: Method,
        scope: &str,
        path: &str,
        headers: HeaderMap,
    ) -> Result<Response, UpstreamError> {
        let scope = scope.to_string();
        let url = format!("{}{path}", self.base);
        let mut retried = false;
        loop {
            let mut req = self
                .client
                .request(method.clone(), &url)
                .headers(headers.clone());
            if let Some(a) = self.authorization(&scope) {
                req = req.header(AUTHORIZATION, a);
            }
            let resp = req
                .send()
                .await
                .map_err(|e| self.failed("is unreachable", error_chain(&e)))?;
            if resp.status().as_u16() != 401 {
                return Ok(resp);
            }
            // Only the registry itself says how to authenticate: a 401 from where it
            // redirected to (a CDN, storage) must not steer the credentials elsewhere.
            if !same_origin(resp.url().as_str(), &url) {
                return Err(self.failed(
                    &format!("redirected {path} to {}", resp.url()),
                    "which answered 401",
                ));
            }
            if !retried {
                self.tokens.forget(&scope);
                if self.authenticate(&resp, &scope).await? {
                    retried = true;
                    continue;
                }
            }
            let hint = if self.credentials.is_some() {
                format!(
                    "refused the configured credentials (401): check {}",
                    self.credentials_origin
                )
            } else {
                format!(
                    "requires credentials (401): set {}",
                    self.credentials_origin
                )
            };
            return Err(UpstreamError::Denied(format!(
                "upstream registry {} {hint}",
                self.base
            )));
        }
    }

    /// Read a whole answer of at most `limit` bytes (`limit_name` says which limit in
    /// the error); `what` names the request in errors.
    async fn read_limited(
        &self,
        resp: Response,
        limit: usize,
        what: &str,
        limit_name: &str,
    ) -> Result<Vec<u8>, UpstreamError> {
        let mut content = Vec::new();
        let mut body = resp.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk =
                chunk.map_err(|e| self.failed(&format!("broke off {what}"), error_chain(&e)))?;
            if content.len() + chunk.len() > limit {
                return Err(self.failed(
                    &format!("answered {what}"),
                    format!("with more than {limit} bytes ({limit_name})"),
                ));
            }
            content.extend_from_slice(&chunk);
        }
        Ok(content)
    }

    /// Map a non-success status to an error (404 -> not found).
    fn check(&self, resp: Response, what: &str) -> Result<Response, UpstreamError> {
        let status = resp.status();
        if status.is_success() {
            Ok(resp)
        } else if status.as_u16() == 404 {
            Err(UpstreamError::NotFound)
        } else if status.as_u16() == 403 {
            Err(UpstreamError::Denied(format!(
                "upstream registry {} refused {what} with {status}",
                self.base
            )))
        } else {
            Err(self.failed(&format!("answered {what} with"), status))
        }
    }
}

/// Makes [`HttpUpstream`]s for proxy-cache projects.
pub struct HttpUpstreams {
    pub max_manifest_bytes: usize,
}

impl UpstreamFactory for HttpUpstreams {
    fn upstream(&self, settings: &UpstreamSettings<'_>) -> Result<Arc<dyn Upstream>, String> {
        Ok(Arc::new(HttpUpstream::with_settings(
            settings,
            self.max_manifest_bytes,
        )?))
    }
}

/// Where a token service is, for the proxy's credentials.
#[derive(Debug, PartialEq, Eq)]
enum Destination {
    /// The registry's own host (any port), or Docker Hub's token service for Docker Hub.
    Allowed,
    /// Another host: a registry cannot make Berth hand its credentials to a third party
    /// by naming it as its token realm.
    OtherHost,
    /// Plain http while the registry is https.
    Downgrade,
}

/// Whether the proxy's credentials may be sent to the token service at `realm` for the
/// registry at `base`.
fn credentials_may_go_to(base: &reqwest::Url, realm: &reqwest::Url) -> Destination {
    if realm.scheme() != "https" && base.scheme() == "https" {
        return Destination::Downgrade;
    }
    let (Some(b), Some(r)) = (base.host_str(), realm.host_str()) else {
        return Destination::OtherHost;
    };
    let (b, r) = (b.to_ascii_lowercase(), r.to_ascii_lowercase());
    if b == r || (r == "auth.docker.io" && DOCKER_HUB.contains(&b.as_str())) {
        Destination::Allowed
    } else {
        Destination::OtherHost
    }
}

/// Whether two URLs share scheme, host and port.
fn same_origin(a: &str, b: &str) -> bool {
    match (reqwest::Url::parse(a), reqwest::Url::parse(b)) {
        (Ok(a), Ok(b)) => a.origin() == b.origin(),
        _ => false,
    }
}

/// An error with its causes ("error sending request: connection refused").
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let c = cause.to_string();
        if !s.contains(&c) {
            s.push_str(": ");
            s.push_str(&c);
        }
        source = cause.source();
    }
    s
}

fn manifest_accept() -> HeaderMap {
    let mut h = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&MANIFEST_TYPES.join(", ")) {
        h.insert(ACCEPT, v);
    }
    h
}

fn header_digest(resp: &Response) -> Option<Digest> {
    resp.headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

#[async_trait::async_trait]
impl Upstream for HttpUpstream {
    fn url(&self) -> &str {
        &self.base
    }

    async fn ping(&self) -> Result<(), UpstreamError> {
        let resp = self
            .send_scoped(Method::GET, "", "/v2/", HeaderMap::new())
            .await?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(self.failed("answered GET /v2/ with", resp.status()))
        }
    }

    async fn tag_digest(
        &self,
        repo: &RepoName,
        tag: &Tag,
    ) -> Result<Option<Digest>, UpstreamError> {
        let path = format!("/v2/{repo}/manifests/{tag}");
        let resp = self
            .send(Method::HEAD, repo, &path, manifest_accept())
            .await?;
        let resp = self.check(resp, &format!("HEAD {path}"))?;
        Ok(header_digest(&resp))
    }

    async fn manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<UpstreamManifest, UpstreamError> {
        let path = format!("/v2/{repo}/manifests/{reference}");
        let resp = self
            .send(Method::GET, repo, &path, manifest_accept())
            .await?;
        let resp = self.check(resp, &format!("GET {path}"))?;
        let header = header_digest(&resp);
        let media_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| media::essence(v).to_string())
            .unwrap_or_default();
        let content = self
            .read_limited(
                resp,
                self.max_manifest_bytes,
                &format!("GET {path}"),
                "limits.manifestsize",
            )
            .await?;
        let digest = match reference {
            Reference::Digest(d) => {
                let actual = Digest::of(d.algorithm(), &content);
                if &actual != d {
                    return Err(self.failed(
                        &format!("sent the wrong content for {path}"),
                        format!("its digest is {actual}"),
                    ));
                }
                actual
            }
            Reference::Tag(_) => {
                let algorithm = header
                    .as_ref()
                    .map_or(oci::Algorithm::Sha256, |h| h.algorithm());
                let actual = Digest::of(algorithm, &content);
                if header.as_ref().is_some_and(|h| h != &actual) {
                    return Err(self.failed(
                        &format!("sent content for {path}"),
                        format!(
                            "whose digest {actual} is not the Docker-Content-Digest it claimed"
                        ),
                    ));
                }
                actual
            }
        };
        Ok(UpstreamManifest {
            digest,
            media_type,
            content,
        })
    }

    async fn blob_size(&self, repo: &RepoName, digest: &Digest) -> Result<u64, UpstreamError> {
        let path = format!("/v2/{repo}/blobs/{digest}");
        let resp = self
            .send(Method::HEAD, repo, &path, HeaderMap::new())
            .await?;
        let resp = self.check(resp, &format!("HEAD {path}"))?;
        resp.content_length().ok_or_else(|| {
            self.failed(&format!("answered HEAD {path}"), "without a Content-Length")
        })
    }

    async fn blob(&self, repo: &RepoName, digest: &Digest) -> Result<UpstreamBlob, UpstreamError> {
        let path = format!("/v2/{repo}/blobs/{digest}");
        let resp = self
            .send(Method::GET, repo, &path, HeaderMap::new())
            .await?;
        let resp = self.check(resp, &format!("GET {path}"))?;
        let size = resp.content_length();
        let body = resp
            .bytes_stream()
            .map_err(|e| std::io::Error::other(error_chain(&e)));
        Ok(UpstreamBlob {
            size,
            body: Box::pin(body),
        })
    }

    async fn tags(
        &self,
        repo: &RepoName,
        n: Option<u32>,
        last: Option<&str>,
    ) -> Result<Vec<String>, UpstreamError> {
        let mut path = format!("/v2/{repo}/tags/list");
        let query = {
            let mut query = form_urlencoded::Serializer::new(String::new());
            if let Some(n) = n {
                query.append_pair("n", &n.to_string());
            }
            if let Some(l) = last {
                query.append_pair("last", l);
            }
            query.finish()
        };
        if !query.is_empty() {
            path = format!("{path}?{query}");
        }
        #[derive(serde::Deserialize)]
        struct TagList {
            tags: Option<Vec<String>>,
        }
        let mut tags = Vec::new();
        // With no `n` the client wants the whole list, as Distribution's proxy returns it:
        // follow the upstream's `Link` pages (bounded, against a link loop).
        for _ in 0..MAX_TAG_PAGES {
            let resp = self
                .send(Method::GET, repo, &path, HeaderMap::new())
                .await?;
            let resp = self.check(resp, &format!("GET {path}"))?;
            let next = resp
                .headers()
                .get(reqwest::header::LINK)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| next_page(&self.base, v));
            let body = self
                .read_limited(
                    resp,
                    MAX_TAG_PAGE_BYTES,
                    &format!("GET {path}"),
                    "the tag-list page limit",
                )
                .await?;
            let list: TagList = serde_json::from_slice(&body).map_err(|e| {
                self.failed(
                    &format!("answered GET {path} with"),
                    format!("an unreadable tag list: {e}"),
                )
            })?;
            tags.extend(list.tags.unwrap_or_default());
            if tags.len() > MAX_TAGS {
                return Err(self.failed(
                    &format!("listed more than {MAX_TAGS} tags for {repo}"),
                    "giving up: ask for pages with n and last",
                ));
            }
            // With `n`, pages until `n` tags are in hand: an upstream may cap its pages
            // below `n`, and a short page would tell the client the list has ended.
            match next {
                Some(p) if n.is_none_or(|n| tags.len() < n as usize) => path = p,
                _ => return Ok(tags),
            }
        }
        Err(self.failed(
            &format!("listed the tags of {repo} in more than {MAX_TAG_PAGES} pages"),
            "giving up (a Link loop?)",
        ))
    }
}

/// Most upstream tag-list pages one listing follows.
const MAX_TAG_PAGES: usize = 100;
/// Most tags one listing gathers from the upstream.
const MAX_TAGS: usize = 100_000;
/// Largest upstream tag-list page read.
const MAX_TAG_PAGE_BYTES: usize = 8 << 20;
/// Largest token-service answer read (a JWT with a certificate chain is a few KiB).
const MAX_TOKEN_RESPONSE_BYTES: usize = 1 << 20;

/// The path (and query) of a `Link: <...>; rel="next"` target on the registry at `base`;
/// `None` without one, or when it points to another origin.
fn next_page(base: &str, link: &str) -> Option<String> {
    let (target, params) = link.trim().strip_prefix('<')?.split_once('>')?;
    if !params.split(';').any(|p| {
        matches!(
            p.trim().replace(' ', "").as_str(),
            "rel=\"next\"" | "rel=next"
        )
    }) {
        return None;
    }
    if target.starts_with('/') {
        return Some(target.to_string());
    }
    let url = reqwest::Url::parse(target).ok()?;
    if !same_origin(url.as_str(), base) {
        return None;
    }
    Some(match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> reqwest::Url {
        reqwest::Url::parse(s).expect("url")
    }

    /// A one-route-at-a-time HTTP/1.1 server on 127.0.0.1 answering every request with
    /// `answer(path, base)` (status line and headers, body); returns its base URL.
    async fn tiny_server(
        answer: impl Fn(&str, &str) -> (String, Vec<u8>) + Send + Sync + 'static,
    ) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let answer = std::sync::Arc::new(answer);
        let b = base.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let (answer, base) = (answer.clone(), b.clone());
                tokio::spawn(async move {
                    let mut req = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => req.extend_from_slice(&buf[..n]),
                        }
                    }
                    let text = String::from_utf8_lossy(&req);
                    let path = text.split(' ').nth(1).unwrap_or("/").to_string();
                    let (head, body) = answer(&path, &base);
                    let head = format!(
                        "{head}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = s.write_all(head.as_bytes()).await;
                    let _ = s.write_all(&body).await;
                });
            }
        });
        base
    }

    #[tokio::test]
    async fn upstream_answers_are_bounded() {
        let repo: RepoName = "lib/app".parse().expect("repo");
        // A token service answering with more than a token could ever need.
        let base = tiny_server(|path, base| {
            if path.starts_with("/token") {
                ("HTTP/1.1 200 OK".into(), vec![b' '; 2 << 20])
            } else {
                (
                    format!("HTTP/1.1 401 Unauthorized\r\nwww-authenticate: Bearer realm=\"{base}/token\",service=\"t\""),
                    Vec::new(),
                )
            }
        })
        .await;
        let up = HttpUpstream::new(&base, None, 1 << 20).expect("upstream");
        let err = up
            .tags(&repo, None, None)
            .await
            .expect_err("huge token answer");
        assert!(err.to_string().contains("token response limit"), "{err}");

        // Tag lists: an endless chain of Link pages, and one oversized page.
        let base = tiny_server(|path, _| {
            if path.contains("huge") {
                let mut body = br#"{"tags":[""#.to_vec();
                body.extend(vec![b'a'; 9 << 20]);
                body.extend(br#""]}"#);
                return ("HTTP/1.1 200 OK".into(), body);
            }
            (
                "HTTP/1.1 200 OK\r\nlink: </v2/lib/app/tags/list?last=x>; rel=\"next\"".into(),
                br#"{"tags":["x"]}"#.to_vec(),
            )
        })
        .await;
        let up = HttpUpstream::new(&base, None, 1 << 20).expect("upstream");
        let err = up.tags(&repo, None, None).await.expect_err("endless pages");
        assert!(err.to_string().contains("more than 100 pages"), "{err}");
        let huge: RepoName = "lib/huge".parse().expect("repo");
        let err = up.tags(&huge, None, None).await.expect_err("huge page");
        assert!(err.to_string().contains("tag-list page limit"), "{err}");
    }

    #[test]
    fn credentials_go_only_to_the_registrys_own_token_service() {
        use Destination::*;
        let to = |base: &str, realm: &str| credentials_may_go_to(&url(base), &url(realm));
        // Docker Hub's token service, for Docker Hub only.
        assert_eq!(
            to(
                "https://registry-1.docker.io",
                "https://auth.docker.io/token"
            ),
            Allowed
        );
        assert_eq!(
            to("https://index.docker.io", "https://auth.docker.io/token"),
            Allowed
        );
        assert_eq!(
            to("https://ghcr.io", "https://auth.docker.io/token"),
            OtherHost
        );
        // The registry's own host, any port; nothing else.
        assert_eq!(to("https://ghcr.io", "https://ghcr.io/token"), Allowed);
        assert_eq!(
            to("http://127.0.0.1:5000", "http://127.0.0.1:5001/token"),
            Allowed
        );
        assert_eq!(
            to(
                "https://Registry.Example",
                "https://registry.example:8443/t"
            ),
            Allowed
        );
        assert_eq!(
            to("https://registry.example", "https://evil.example/token"),
            OtherHost
        );
        assert_eq!(
            to("https://127.0.0.1:5000", "https://localhost:5001/token"),
            OtherHost
        );
        assert_eq!(
            to("http://127.0.0.1:5000", "https://auth.example/token"),
            OtherHost
        );
        // Never downgraded from https to plain http.
        assert_eq!(
            to("https://registry.example", "http://registry.example/token"),
            Downgrade
        );
    }

    #[test]
    fn tag_list_links() {
        let base = "https://registry.example";
        assert_eq!(
            next_page(base, r#"</v2/a/tags/list?last=b&n=100>; rel="next""#).as_deref(),
            Some("/v2/a/tags/list?last=b&n=100")
        );
        assert_eq!(
            next_page(
                base,
                r#"<https://registry.example/v2/a/tags/list?last=b>; rel="next""#
            )
            .as_deref(),
            Some("/v2/a/tags/list?last=b")
        );
        assert_eq!(
            next_page(
                base,
                r#"<https://elsewhere.example/v2/a/tags/list>; rel="next""#
            ),
            None
        );
        assert_eq!(
            next_page(base, r#"</v2/a/tags/list?last=b>; rel="prev""#),
            None
        );
    }

    #[test]
    fn origins() {
        assert!(same_origin(
            "https://registry-1.docker.io/v2/library/alpine/blobs/sha256:00",
            "https://registry-1.docker.io/v2/x"
        ));
        assert!(!same_origin(
            "https://cdn.example/blob?sig=1",
            "https://registry-1.docker.io/v2/x"
        ));
        assert!(!same_origin(
            "http://127.0.0.1:5000/v2/",
            "http://127.0.0.1:5001/v2/"
        ));
    }
}
