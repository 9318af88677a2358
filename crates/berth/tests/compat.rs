//! Side by side with CNCF Distribution: the same config file is given to Berth and to
//! Debian's `docker-registry` (Distribution 2.8.2), the same requests are sent to both,
//! and the answers (status code and first error code) must be the same. Where Berth
//! deliberately follows the OCI spec instead (single-POST uploads, referrers, tag deletes,
//! the 4 MiB manifest limit's status, ...), the README says so; those requests are not in
//! this table.

mod common;

use common::push::{sha256, OCI_INDEX, OCI_MANIFEST};
use common::registry2::Registry2;
use common::{require_tool, Berth};
use oci::Digest;
use reqwest::{Client, Method, Response};
use serde_json::{json, Value};

const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// The config both servers get; DATA becomes each one's own directory.
fn config(delete: bool) -> String {
    format!(
        "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: DATA\n  delete:\n    enabled: {delete}\nhttp:\n  addr: 127.0.0.1:0\n"
    )
}

/// One row of the table: what was asked and what came back.
#[derive(Debug, Clone, PartialEq)]
struct Answer {
    status: u16,
    code: Option<String>,
    /// The `Allow` header, recorded for OPTIONS rows.
    allow: Option<String>,
}

struct Run<'a> {
    c: &'a Client,
    base: &'a str,
    rows: Vec<(String, Answer)>,
}

impl Run<'_> {
    /// Resolve a Location (absolute for Distribution, relative for Berth).
    fn abs(&self, location: &str) -> String {
        if location.starts_with("http") {
            location.to_string()
        } else {
            format!("{}{location}", self.base)
        }
    }

    async fn send(&mut self, name: &str, rb: reqwest::RequestBuilder) -> Response {
        let r = rb.send().await.unwrap_or_else(|e| panic!("{name}: {e}"));
        let status = r.status().as_u16();
        // The error code, if any, is filled in by `call` once the body is read.
        self.rows.push((
            name.to_string(),
            Answer {
                status,
                code: None,
                allow: None,
            },
        ));
        r
    }

    /// Send and record status plus the first error code of a JSON error body.
    async fn call(
        &mut self,
        name: &str,
        rb: reqwest::RequestBuilder,
    ) -> (u16, Vec<u8>, reqwest::header::HeaderMap) {
        let r = self.send(name, rb).await;
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let body = r.bytes().await.map(|b| b.to_vec()).unwrap_or_default();
        if status >= 400 {
            if let Ok(v) = serde_json::from_slice::<Value>(&body) {
                if let Some(code) = v["errors"][0]["code"].as_str() {
                    if let Some(last) = self.rows.last_mut() {
                        last.1.code = Some(code.to_string());
                    }
                }
            }
        }
        (status, body, headers)
    }

    /// OPTIONS `path`: status, error code and (when `allow`) the `Allow` header.
    async fn options(&mut self, name: &str, path: &str, allow: bool) {
        let (_, body, headers) = self.call(name, self.req(Method::OPTIONS, path)).await;
        if let Some(last) = self.rows.last_mut() {
            if allow {
                last.1.allow = Some(
                    headers
                        .get("allow")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("(none)")
                        .to_string(),
                );
            }
            if last.1.status == 200 && name != "OPTIONS /v2/" {
                assert!(body.is_empty(), "{name}: OPTIONS answered with a body");
            }
        }
    }

    fn req(&self, m: Method, path: &str) -> reqwest::RequestBuilder {
        let url = if path.starts_with("http") {
            path.to_string()
        } else {
            format!("{}{path}", self.base)
        };
        self.c.request(m, url)
    }

    /// Push a blob the way docker does (POST, then PUT with the bytes).
    async fn push_blob(&mut self, name: &str, repo: &str, data: &[u8]) -> Digest {
        let d = sha256(data);
        let (_, _, h) = self
            .call(
                &format!("{name}: POST upload"),
                self.req(Method::POST, &format!("/v2/{repo}/blobs/uploads/")),
            )
            .await;
        let loc = self.abs(
            h.get("location")
                .and_then(|v| v.to_str().ok())
                .expect("location"),
        );
        let sep = if loc.contains('?') { '&' } else { '?' };
        self.call(
            &format!("{name}: PUT upload with digest"),
            self.req(Method::PUT, &format!("{loc}{sep}digest={d}"))
                .header("content-type", "application/octet-stream")
                .body(data.to_vec()),
        )
        .await;
        d
    }
}

/// The scenario: every request is recorded; both servers get exactly the same one.
async fn scenario(c: &Client, base: &str) -> Vec<(String, Answer)> {
    let mut r = Run {
        c,
        base,
        rows: Vec::new(),
    };
    r.call("GET /v2/", r.req(Method::GET, "/v2/")).await;
    r.call("HEAD /v2/", r.req(Method::HEAD, "/v2/")).await;
    r.call("GET unknown path", r.req(Method::GET, "/v3/")).await;
    r.call("GET /nothing", r.req(Method::GET, "/nothing")).await;
    r.call(
        "tags of unknown repo",
        r.req(Method::GET, "/v2/nobody/tags/list"),
    )
    .await;

    // An image in Docker's format.
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let layer = b"not really a gzip layer, but bytes are bytes";
    let cd = r.push_blob("config", "compat/app", config).await;
    let ld = r.push_blob("layer", "compat/app", layer).await;
    let manifest = serde_json::to_vec_pretty(&json!({
        "schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
        "config": {"mediaType": DOCKER_CONFIG, "size": config.len(), "digest": cd.as_str()},
        "layers": [{"mediaType": DOCKER_LAYER, "size": layer.len(), "digest": ld.as_str()}],
    }))
    .expect("json");
    let md = sha256(&manifest);
    let put = |r: &Run, reference: &str, ct: &str, body: &[u8]| {
        r.req(
            Method::PUT,
            &format!("/v2/compat/app/manifests/{reference}"),
        )
        .header("content-type", ct)
        .body(body.to_vec())
    };
    r.call(
        "PUT schema2 manifest by tag",
        put(&r, "v1", DOCKER_MANIFEST, &manifest),
    )
    .await;
    r.call(
        "PUT same manifest by digest",
        put(&r, md.as_str(), DOCKER_MANIFEST, &manifest),
    )
    .await;
    let accept = format!("{DOCKER_MANIFEST}, {OCI_MANIFEST}, {OCI_INDEX}");
    let get = |r: &Run, m: Method, reference: &str| {
        r.req(m, &format!("/v2/compat/app/manifests/{reference}"))
            .header("accept", accept.clone())
    };
    r.call("GET manifest by tag", get(&r, Method::GET, "v1"))
        .await;
    r.call("GET manifest by digest", get(&r, Method::GET, md.as_str()))
        .await;
    r.call("HEAD manifest by tag", get(&r, Method::HEAD, "v1"))
        .await;
    r.call(
        "HEAD manifest by digest",
        get(&r, Method::HEAD, md.as_str()),
    )
    .await;
    r.call("GET unknown tag", get(&r, Method::GET, "nope"))
        .await;
    r.call("HEAD unknown tag", get(&r, Method::HEAD, "nope"))
        .await;
    r.call(
        "GET unknown digest",
        get(&r, Method::GET, sha256(b"none").as_str()),
    )
    .await;
    r.call(
        "GET manifest in unknown repo",
        r.req(Method::GET, "/v2/nobody/here/manifests/v1")
            .header("accept", accept.clone()),
    )
    .await;
    r.call("tags list", r.req(Method::GET, "/v2/compat/app/tags/list"))
        .await;

    // Rejected manifests.
    let other = sha256(b"other content");
    r.call(
        "PUT by digest, body differs",
        put(&r, other.as_str(), DOCKER_MANIFEST, &manifest),
    )
    .await;
    let missing = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
        "config": {"mediaType": DOCKER_CONFIG, "size": config.len(), "digest": cd.as_str()},
        "layers": [{"mediaType": DOCKER_LAYER, "size": 10, "digest": sha256(b"missing layer").as_str()}],
    }))
    .expect("json");
    r.call(
        "PUT manifest with a missing layer",
        put(&r, "broken", DOCKER_MANIFEST, &missing),
    )
    .await;
    let missing_config = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
        "config": {"mediaType": DOCKER_CONFIG, "size": 5, "digest": sha256(b"no config").as_str()},
        "layers": [],
    }))
    .expect("json");
    r.call(
        "PUT manifest with a missing config",
        put(&r, "broken2", DOCKER_MANIFEST, &missing_config),
    )
    .await;
    r.call(
        "PUT invalid JSON as schema2",
        put(&r, "bad", DOCKER_MANIFEST, b"{not json"),
    )
    .await;
    r.call(
        "PUT invalid JSON as OCI",
        put(&r, "bad", OCI_MANIFEST, b"{not json"),
    )
    .await;
    r.call(
        "PUT mediaType differing from Content-Type",
        put(&r, "bad", OCI_MANIFEST, &manifest),
    )
    .await;

    // OCI image and index.
    let oci = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "size": config.len(), "digest": cd.as_str()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "size": layer.len(), "digest": ld.as_str()}],
    }))
    .expect("json");
    let od = sha256(&oci);
    r.call("PUT OCI manifest", put(&r, "oci", OCI_MANIFEST, &oci))
        .await;
    r.call("GET OCI manifest", get(&r, Method::GET, "oci"))
        .await;
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "size": oci.len(), "digest": od.as_str(),
                       "platform": {"architecture": "amd64", "os": "linux"}}],
    }))
    .expect("json");
    r.call("PUT OCI index", put(&r, "multi", OCI_INDEX, &index))
        .await;
    r.call("GET OCI index", get(&r, Method::GET, "multi")).await;
    let dangling = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "size": 3, "digest": sha256(b"abc").as_str()}],
    }))
    .expect("json");
    r.call(
        "PUT index with a missing child",
        put(&r, "dangling", OCI_INDEX, &dangling),
    )
    .await;

    // Blobs.
    let blob = |r: &Run, m: Method, repo: &str, d: &str| r.req(m, &format!("/v2/{repo}/blobs/{d}"));
    r.call("GET blob", blob(&r, Method::GET, "compat/app", ld.as_str()))
        .await;
    r.call(
        "HEAD blob",
        blob(&r, Method::HEAD, "compat/app", ld.as_str()),
    )
    .await;
    r.call(
        "GET blob with Range",
        blob(&r, Method::GET, "compat/app", ld.as_str()).header("range", "bytes=0-9"),
    )
    .await;
    r.call(
        "GET unknown blob",
        blob(&r, Method::GET, "compat/app", sha256(b"?").as_str()),
    )
    .await;
    r.call(
        "HEAD unknown blob",
        blob(&r, Method::HEAD, "compat/app", sha256(b"?").as_str()),
    )
    .await;
    r.call(
        "GET blob not linked in this repo",
        blob(&r, Method::GET, "compat/other", ld.as_str()),
    )
    .await;
    r.call(
        "GET blob with an unsupported algorithm",
        blob(
            &r,
            Method::GET,
            "compat/app",
            &format!("md5:{}", "a".repeat(32)),
        ),
    )
    .await;
    r.call(
        "GET blob with a short sha256",
        blob(
            &r,
            Method::GET,
            "compat/app",
            &format!("sha256:{}", "a".repeat(63)),
        ),
    )
    .await;

    // Upload sessions.
    let (_, _, h) = r
        .call(
            "POST upload",
            r.req(Method::POST, "/v2/compat/up/blobs/uploads/"),
        )
        .await;
    let loc = r.abs(
        h.get("location")
            .and_then(|v| v.to_str().ok())
            .expect("location"),
    );
    let sep = if loc.contains('?') { '&' } else { '?' };
    r.call("GET upload status", r.req(Method::GET, &loc)).await;
    let (_, _, h) = r
        .call(
            "PATCH chunk",
            r.req(Method::PATCH, &loc)
                .header("content-type", "application/octet-stream")
                .body("chunk data"),
        )
        .await;
    let loc = r.abs(
        h.get("location")
            .and_then(|v| v.to_str().ok())
            .expect("location"),
    );
    r.call("PUT upload without digest", r.req(Method::PUT, &loc))
        .await;
    r.call(
        "PUT upload with a garbage digest",
        r.req(Method::PUT, &format!("{loc}{sep}digest=garbage")),
    )
    .await;
    let (_, _, h) = r
        .call(
            "POST second upload",
            r.req(Method::POST, "/v2/compat/up/blobs/uploads/"),
        )
        .await;
    let loc2 = r.abs(
        h.get("location")
            .and_then(|v| v.to_str().ok())
            .expect("location"),
    );
    let sep2 = if loc2.contains('?') { '&' } else { '?' };
    r.call(
        "PUT upload with the wrong digest",
        r.req(
            Method::PUT,
            &format!("{loc2}{sep2}digest={}", sha256(b"not this")),
        )
        .header("content-type", "application/octet-stream")
        .body("these bytes"),
    )
    .await;
    let (_, _, h) = r
        .call(
            "POST third upload",
            r.req(Method::POST, "/v2/compat/up/blobs/uploads/"),
        )
        .await;
    let loc3 = r.abs(
        h.get("location")
            .and_then(|v| v.to_str().ok())
            .expect("location"),
    );
    r.call("DELETE upload", r.req(Method::DELETE, &loc3)).await;
    r.call("GET cancelled upload", r.req(Method::GET, &loc3))
        .await;
    r.call(
        "GET uploads without an id",
        r.req(Method::GET, "/v2/compat/up/blobs/uploads/"),
    )
    .await;

    // Mounts.
    r.call(
        "mount from a repo that has the blob",
        r.req(
            Method::POST,
            &format!("/v2/compat/mounted/blobs/uploads/?mount={ld}&from=compat/app"),
        ),
    )
    .await;
    r.call(
        "GET mounted blob",
        blob(&r, Method::GET, "compat/mounted", ld.as_str()),
    )
    .await;
    r.call(
        "mount from an unknown repo",
        r.req(
            Method::POST,
            &format!("/v2/compat/m2/blobs/uploads/?mount={ld}&from=compat/none"),
        ),
    )
    .await;
    r.call(
        "mount an unknown blob",
        r.req(
            Method::POST,
            &format!(
                "/v2/compat/m3/blobs/uploads/?mount={}&from=compat/app",
                sha256(b"??")
            ),
        ),
    )
    .await;

    // OPTIONS: 200 and the resource's methods, as 2.8's router answers.
    r.options("OPTIONS /v2/", "/v2/", false).await;
    r.options(
        "OPTIONS manifest",
        &format!("/v2/compat/app/manifests/{od}"),
        true,
    )
    .await;
    r.options(
        "OPTIONS unknown manifest",
        "/v2/compat/app/manifests/nope",
        true,
    )
    .await;
    r.options(
        "OPTIONS blob",
        &format!("/v2/compat/app/blobs/{}", sha256(b"z")),
        true,
    )
    .await;
    r.options("OPTIONS catalog", "/v2/_catalog", true).await;
    r.options("OPTIONS tags", "/v2/compat/app/tags/list", true)
        .await;
    // Upload routes: Distribution lists every method of its upload handler; Berth the
    // ones it serves (the status is compared).
    r.options("OPTIONS uploads", "/v2/compat/app/blobs/uploads/", false)
        .await;
    let (_, _, h) = r
        .call(
            "start upload for OPTIONS",
            r.req(Method::POST, "/v2/compat/app/blobs/uploads/"),
        )
        .await;
    let location = r.abs(h["location"].to_str().expect("location"));
    r.options("OPTIONS upload", &location, false).await;

    // Catalog.
    r.call("catalog", r.req(Method::GET, "/v2/_catalog")).await;
    r.call("catalog n=2", r.req(Method::GET, "/v2/_catalog?n=2"))
        .await;
    r.call("catalog n=0", r.req(Method::GET, "/v2/_catalog?n=0"))
        .await;

    // Deletes (the config decides whether they are allowed).
    r.call(
        "DELETE manifest by digest",
        r.req(Method::DELETE, &format!("/v2/compat/app/manifests/{od}")),
    )
    .await;
    r.call("GET deleted manifest", get(&r, Method::GET, od.as_str()))
        .await;
    r.call(
        "DELETE unknown manifest",
        r.req(
            Method::DELETE,
            &format!("/v2/compat/app/manifests/{}", sha256(b"x")),
        ),
    )
    .await;
    r.call(
        "DELETE blob",
        r.req(Method::DELETE, &format!("/v2/compat/mounted/blobs/{ld}")),
    )
    .await;
    r.call(
        "GET deleted blob",
        blob(&r, Method::GET, "compat/mounted", ld.as_str()),
    )
    .await;
    r.call(
        "DELETE unknown blob",
        r.req(
            Method::DELETE,
            &format!("/v2/compat/app/blobs/{}", sha256(b"y")),
        ),
    )
    .await;
    r.rows
}

async fn compare(delete: bool) {
    let cfg = config(delete);
    let dist = Registry2::start(&cfg);
    let berth = Berth::start_with_config(&cfg);
    let c = Client::new();
    let theirs = scenario(&c, &dist.url).await;
    let ours = scenario(&c, &berth.url).await;
    assert_eq!(theirs.len(), ours.len());
    let mut table = String::new();
    let mut differ = Vec::new();
    for ((name, t), (_, o)) in theirs.iter().zip(&ours) {
        let mark = if t == o { "same" } else { "DIFFERENT" };
        table.push_str(&format!(
            "{name:<45} distribution {} {:<22} berth {} {:<22} {mark}\n",
            t.status,
            t.code.as_deref().unwrap_or("-"),
            o.status,
            o.code.as_deref().unwrap_or("-"),
        ));
        if t != o {
            differ.push(name.clone());
        }
    }
    eprintln!("delete.enabled={delete}\n{table}");
    assert!(ours.len() >= 40, "the table has {} requests", ours.len());
    assert!(
        differ.is_empty(),
        "answers differ from Distribution 2.8 for: {differ:?}\n{table}"
    );
}

#[tokio::test]
async fn same_answers_as_distribution_with_deletes_enabled() {
    compare(true).await;
}

#[tokio::test]
async fn same_answers_as_distribution_with_deletes_disabled() {
    compare(false).await;
}

/// Debian's own `/etc/docker/registry/config.yml` (from the docker-registry package), used
/// unchanged by both servers, with only the port and data directory moved by `REGISTRY_*`
/// variables: both start, and answer alike. (Its `auth.htpasswd.path` is a directory, so
/// requests with credentials get 400 from both; Berth's body says why.)
#[tokio::test]
async fn debians_config_file_starts_berth_unchanged() {
    let file = std::path::Path::new("/etc/docker/registry/config.yml");
    require_tool("docker-registry");
    let text = std::fs::read_to_string(file).expect("Debian's docker-registry config");
    let dist_dir = tempfile::tempdir().expect("tempdir");
    let berth_dir = tempfile::tempdir().expect("tempdir");
    let dist_root = dist_dir.path().display().to_string();
    let berth_root = berth_dir.path().display().to_string();
    let dist = Registry2::start_env(
        &text,
        &[
            ("REGISTRY_HTTP_ADDR", "127.0.0.1:0"),
            ("REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY", &dist_root),
        ],
    );
    let (mut child, addr) = common::spawn_berth_with(
        &["serve".as_ref(), file.as_os_str()],
        &[
            ("REGISTRY_HTTP_ADDR", "127.0.0.1:0"),
            ("REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY", &berth_root),
        ],
        "http",
    );
    let berth_url = format!("http://{addr}");
    let c = Client::new();
    // (what, path, Basic credentials)
    type Request<'a> = (&'a str, &'a str, Option<(&'a str, &'a str)>);
    let requests: &[Request] = &[
        ("GET /", "/", None),
        ("GET /v2/ without credentials", "/v2/", None),
        (
            "GET /v2/ with credentials",
            "/v2/",
            Some(("docker", "secret")),
        ),
        (
            "tags without credentials",
            "/v2/library/app/tags/list",
            None,
        ),
    ];
    for (name, path, creds) in requests {
        let mut answers = Vec::new();
        for base in [&dist.url, &berth_url] {
            let mut rb = c.get(format!("{base}{path}"));
            if let Some((u, p)) = creds {
                rb = rb.basic_auth(u, Some(p));
            }
            let r = rb.send().await.expect("send");
            let status = r.status().as_u16();
            let challenge = r
                .headers()
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let body: Value = r.json().await.unwrap_or(Value::Null);
            let code = body["errors"][0]["code"].as_str().map(str::to_string);
            answers.push((status, challenge, code));
        }
        let (d, b) = (&answers[0], &answers[1]);
        assert_eq!(d.0, b.0, "{name}: status");
        assert_eq!(d.1, b.1, "{name}: WWW-Authenticate");
        if d.2.is_some() {
            assert_eq!(d.2, b.2, "{name}: error code");
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}
