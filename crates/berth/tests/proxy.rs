//! The pull-through cache (`proxy`) against a real upstream: Debian's `docker-registry`
//! (CNCF Distribution 2.8.2) with htpasswd auth on a loopback port, images pushed to it
//! with skopeo, pulled through Berth with skopeo, the Docker CLI and podman. Upstream
//! requests are counted from docker-registry's own access log.

mod common;

use common::layout::{layer_tar_gz_at, noise, Layout};
use common::pki::Pki;
use common::push::{digest_of, sha256, OCI_CONFIG, OCI_LAYER_GZIP};
use common::{require_tool, run, Berth};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const USER: &str = "mirror";
const PASSWORD: &str = "s3cret-pull";

/// A real `docker-registry serve` with htpasswd auth; its access log goes to a file.
struct Upstream {
    host: String,
    /// `http` or `https`.
    scheme: &'static str,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

/// How the test upstream authenticates, and whether it serves HTTPS.
enum UpstreamAuth<'a> {
    /// htpasswd (Basic) with `USER`/`PASSWORD`, plain HTTP.
    Htpasswd,
    /// `auth: token` trusting tokens from `issuer`, TLS with the server certificate of
    /// `pki` (a CA made with openssl).
    Token { issuer: &'a Issuer, pki: &'a Pki },
    /// As `Token`, but the challenge names the issuer by another host name (`realm`).
    TokenElsewhere { pki: &'a Pki, realm: String },
}

impl Upstream {
    fn start() -> Upstream {
        Upstream::start_with(UpstreamAuth::Htpasswd)
    }

    fn start_with(auth: UpstreamAuth) -> Upstream {
        let bin = require_tool("docker-registry");
        let dir = tempfile::tempdir().expect("tempdir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let host = format!("127.0.0.1:{port}");
        let (auth_yaml, tls_yaml, scheme) = match auth {
            UpstreamAuth::Htpasswd => {
                require_tool("htpasswd");
                let htpasswd = dir.path().join("htpasswd");
                std::fs::write(
                    &htpasswd,
                    run(Command::new("htpasswd").args(["-Bbn", USER, PASSWORD])),
                )
                .expect("htpasswd");
                (
                    format!(
                        "  htpasswd:\n    realm: upstream\n    path: {}\n",
                        htpasswd.display()
                    ),
                    String::new(),
                    "http",
                )
            }
            UpstreamAuth::Token { .. } | UpstreamAuth::TokenElsewhere { .. } => {
                let (realm, pki) = match &auth {
                    UpstreamAuth::Token { issuer, pki } => (issuer.realm.clone(), *pki),
                    UpstreamAuth::TokenElsewhere { realm, pki, .. } => (realm.clone(), *pki),
                    UpstreamAuth::Htpasswd => unreachable!(),
                };
                (
                format!(
                    "  token:\n    realm: {realm}\n    service: {TOKEN_SERVICE}\n    issuer: {TOKEN_ISSUER}\n    rootcertbundle: {}\n",
                    pki.path("ca.crt").display()
                ),
                format!(
                    "  tls:\n    certificate: {}\n    key: {}\n",
                    pki.path("server.crt").display(),
                    pki.path("server.key").display()
                ),
                "https",
            )
            }
        };
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {host}\n{tls_yaml}auth:\n{auth_yaml}",
                dir.path().join("data").display(),
            ),
        )
        .expect("config");
        let mut up = Upstream {
            host,
            scheme,
            dir,
            child: None,
        };
        let log = std::fs::File::create(up.log_path()).expect("log");
        let child = Command::new(bin)
            .arg("serve")
            .arg(&config)
            .env_remove("AWS_CA_BUNDLE")
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn docker-registry");
        up.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(&up.host).is_err() {
            assert!(
                Instant::now() < deadline,
                "docker-registry did not listen within 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        up
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("access.log")
    }

    /// Successful requests `METHOD path` in the access log (2.8 logs every request,
    /// `"GET /v2/... HTTP/1.1" 200 ...`, `HTTP/2.0` over TLS; the 401 that precedes
    /// authentication is not counted).
    fn requests(&self, method: &str, path: &str) -> usize {
        let needle = format!("\"{method} {path} HTTP/");
        std::fs::read_to_string(self.log_path())
            .unwrap_or_default()
            .lines()
            .filter(|l| {
                l.split_once(&needle)
                    .and_then(|(_, rest)| rest.split_once("\" "))
                    .is_some_and(|(_, rest)| rest.starts_with("200 "))
            })
            .count()
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.host)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Berth as a pull-through cache of `up`, configured through the environment, with
/// `extra` YAML in its config file.
fn proxy_of(up: &Upstream, extra: &str, env: &[(&str, &str)]) -> Berth {
    let url = up.url();
    let mut all = vec![
        ("REGISTRY_PROXY_REMOTEURL", url.as_str()),
        ("REGISTRY_PROXY_USERNAME", USER),
        ("REGISTRY_PROXY_PASSWORD", PASSWORD),
    ];
    all.extend_from_slice(env);
    Berth::start_with_config_env(
        &format!("version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: DATA\nhttp:\n  addr: 127.0.0.1:0\n{extra}"),
        &all,
        "http",
    )
}

fn skopeo() -> Command {
    let mut c = common::tools::skopeo();
    c.env_remove("AWS_CA_BUNDLE");
    c
}

/// Push `layout:tag` to the upstream as `target` (with its credentials).
fn push(up: &Upstream, layout: &Path, tag: &str, target: &str) {
    run(skopeo()
        .args([
            "copy",
            "--all",
            "--preserve-digests",
            "--dest-tls-verify=false",
            "--dest-creds",
            &format!("{USER}:{PASSWORD}"),
        ])
        .arg(format!("oci:{}:{tag}", layout.display()))
        .arg(format!("docker://{}/{target}", up.host)));
}

/// `skopeo inspect --raw` of a manifest through an anonymous client: its digest.
fn raw_digest(host: &str, reference: &str, creds: bool) -> oci::Digest {
    let mut c = skopeo();
    c.args(["inspect", "--raw", "--tls-verify=false"]);
    if creds {
        c.args(["--creds", &format!("{USER}:{PASSWORD}")]);
    }
    let out = c
        .arg(format!("docker://{host}/{reference}"))
        .output()
        .expect("skopeo");
    assert!(
        out.status.success(),
        "skopeo inspect {host}/{reference}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    sha256(&out.stdout)
}

fn exec(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn curl(args: &[&str]) -> String {
    require_tool("curl");
    run(Command::new("curl").args(args))
}

/// Status code and body of `METHOD url`.
fn http(method: &str, url: &str, extra: &[&str]) -> (u16, String) {
    let out = curl(
        &[
            &[
                "-s",
                "-X",
                method,
                "-w",
                "\n%{http_code}",
                "--max-time",
                "60",
            ],
            extra,
            &[url],
        ]
        .concat(),
    );
    let (body, code) = out.rsplit_once('\n').expect("status line");
    (code.trim().parse().expect("status"), body.to_string())
}

/// A runnable-looking image in `layout` whose layers hold `files` (one layer each, gzip
/// level 0: the noise layers are incompressible and large).
fn put_image(layout: &Layout, arch: &str, layers: &[Vec<(&str, Vec<u8>)>]) -> Value {
    let mut descriptors = Vec::new();
    let mut diff_ids = Vec::new();
    for files in layers {
        let files: Vec<(&str, &[u8])> = files.iter().map(|(p, d)| (*p, d.as_slice())).collect();
        let (gz, diff_id) = layer_tar_gz_at(&files, flate2::Compression::none());
        descriptors.push(layout.put_blob(OCI_LAYER_GZIP, &gz));
        diff_ids.push(diff_id.to_string());
    }
    let config = json!({
        "architecture": arch,
        "os": "linux",
        "config": {"Cmd": ["/hello"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    let config = layout.put_blob(OCI_CONFIG, &serde_json::to_vec(&config).expect("json"));
    layout.put_manifest(config, descriptors, false)
}

/// A small image unique to `salt`: two layers.
fn small_image(layout: &Layout, arch: &str, salt: &str) -> Value {
    put_image(
        layout,
        arch,
        &[
            vec![("etc/hostname", format!("{salt}\n").into_bytes())],
            vec![("data/noise.bin", noise(salt, 300_000))],
        ],
    )
}

/// Wait until `f` holds, for at most `timeout`.
fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn catalog(b: &Berth) -> Vec<String> {
    let v: Value =
        serde_json::from_str(&curl(&["-sSf", &format!("{}/v2/_catalog", b.url)])).expect("json");
    v["repositories"]
        .as_array()
        .expect("repositories")
        .iter()
        .map(|r| r.as_str().expect("name").to_string())
        .collect()
}

/// skopeo (single image and `copy --all` of a multi-arch index), the Docker CLI and podman
/// pull through the cache and get the upstream's digests; the cache then serves what it
/// holds, counted in the metrics.
#[test]
fn clients_pull_through_the_cache() {
    let up = Upstream::start();
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut layout = Layout::create(&tmp.path().join("layout"));
    let hello = small_image(&layout, "amd64", "hello through the cache");
    layout.tag(&hello, "v1");
    let amd = small_image(&layout, "amd64", "multi amd64");
    let arm = small_image(&layout, "arm64", "multi arm64");
    let index = layout.put_index(
        &[(amd.clone(), "amd64"), (arm.clone(), "arm64")],
        Value::Null,
    );
    layout.tag(&index, "multi");
    push(&up, &layout.dir, "v1", "library/hello:v1");
    push(&up, &layout.dir, "multi", "multi/arch:multi");

    let debug_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let b = proxy_of(
        &up,
        &format!(
            "  debug:\n    addr: 127.0.0.1:{debug_port}\n    prometheus:\n      enabled: true\n"
        ),
        &[],
    );

    // skopeo: same digest as upstream, by tag; the whole image copied.
    let upstream_digest = raw_digest(&up.host, "library/hello:v1", true);
    assert_eq!(upstream_digest, digest_of(&hello));
    assert_eq!(
        raw_digest(&b.host, "library/hello:v1", false),
        upstream_digest
    );
    let out_dir = tmp.path().join("copied");
    run(skopeo()
        .args(["copy", "--src-tls-verify=false", "--preserve-digests"])
        .arg(format!("docker://{}/library/hello:v1", b.host))
        .arg(format!("oci:{}:v1", out_dir.display())));
    let copied: Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("index.json")).expect("index.json"))
            .expect("json");
    assert_eq!(copied["manifests"][0]["digest"], hello["digest"]);

    // Multi-arch: skopeo copy --all brings the index and both images, digests intact.
    let multi_dir = tmp.path().join("multi");
    run(skopeo()
        .args([
            "copy",
            "--all",
            "--src-tls-verify=false",
            "--preserve-digests",
        ])
        .arg(format!("docker://{}/multi/arch:multi", b.host))
        .arg(format!("oci:{}:multi", multi_dir.display())));
    let copied: Value =
        serde_json::from_slice(&std::fs::read(multi_dir.join("index.json")).expect("index.json"))
            .expect("json");
    assert_eq!(copied["manifests"][0]["digest"], index["digest"]);
    for image in [&amd, &arm] {
        let d = digest_of(image);
        assert!(
            multi_dir.join("blobs/sha256").join(d.hex()).is_file(),
            "child {d} copied"
        );
        let m = layout.json(image);
        for l in m["layers"].as_array().expect("layers") {
            let d = digest_of(l);
            let bytes = std::fs::read(multi_dir.join("blobs/sha256").join(d.hex())).expect("layer");
            assert_eq!(sha256(&bytes), d, "layer content");
        }
    }

    // The Docker CLI (its own config dir, so no credentials of the user's are used).
    require_tool("docker");
    let docker_config = tempfile::tempdir().expect("tempdir");
    let docker = |args: &[&str]| {
        let mut c = Command::new("docker");
        c.arg("--config").arg(docker_config.path()).args(args);
        c
    };
    let reference = format!("{}/library/hello:v1", b.host);
    let pulled = run(&mut docker(&["pull", &reference]));
    let _ = exec(&mut docker(&["rmi", "-f", &reference]));
    let digest = pulled
        .lines()
        .find_map(|l| l.strip_prefix("Digest: "))
        .unwrap_or_else(|| panic!("no digest in docker pull output:\n{pulled}"));
    assert_eq!(
        digest.trim(),
        upstream_digest.as_str(),
        "docker pull digest"
    );

    // podman, into an empty storage.
    let root = tmp.path().join("podman");
    let podman = |args: &[&str]| {
        let mut c = common::tools::podman(&root);
        c.args(args);
        c
    };
    let multi_ref = format!("{}/multi/arch:multi", b.host);
    run(&mut podman(&[
        "pull",
        "--tls-verify=false",
        "--arch",
        "arm64",
        &multi_ref,
    ]));
    let inspect: Value =
        serde_json::from_str(&run(&mut podman(&["image", "inspect", &multi_ref]))).expect("json");
    assert_eq!(inspect[0]["Digest"], index["digest"], "podman digest");
    assert_eq!(inspect[0]["Architecture"], "arm64");

    // Everything pulled is now in the catalog; layers were fetched once each.
    assert_eq!(catalog(&b), ["library/hello", "multi/arch"]);
    let hello_manifest = layout.json(&hello);
    for l in hello_manifest["layers"].as_array().expect("layers") {
        let path = format!("/v2/library/hello/blobs/{}", digest_of(l));
        assert_eq!(up.requests("GET", &path), 1, "{path} fetched once upstream");
    }
    let metrics = curl(&["-sSf", &format!("http://127.0.0.1:{debug_port}/metrics")]);
    let value = |line: &str| -> u64 {
        metrics
            .lines()
            .find(|l| l.starts_with(line))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{line} not in metrics:\n{metrics}"))
    };
    assert!(value("berth_proxy_requests_total{kind=\"blob\",result=\"hit\"}") >= 2);
    assert!(value("berth_proxy_requests_total{kind=\"blob\",result=\"miss\"}") >= 4);
    assert!(value("berth_proxy_requests_total{kind=\"manifest\",result=\"hit\"}") >= 1);
    assert!(value("berth_proxy_requests_total{kind=\"manifest\",result=\"miss\"}") >= 3);
    assert!(value("berth_proxy_upstream_bytes_total") > 600_000);
    assert_eq!(value("berth_proxy_upstream_errors_total"), 0);
}

/// Push an image whose second layer holds `size` bytes of noise; returns that layer's
/// digest and size.
fn big_layer_image(up: &Upstream, dir: &Path, repo: &str, size: usize) -> (oci::Digest, u64) {
    let mut layout = Layout::create(dir);
    let image = put_image(
        &layout,
        "amd64",
        &[
            vec![("etc/hostname", b"big\n".to_vec())],
            vec![("data/big.bin", noise(repo, size))],
        ],
    );
    layout.tag(&image, "v1");
    push(up, &layout.dir, "v1", &format!("{repo}:v1"));
    let layer = &layout.json(&image)["layers"][1];
    (digest_of(layer), layer["size"].as_u64().expect("size"))
}

/// 20 clients asking for the same uncached blob at once cause exactly one upstream GET
/// and all get the right bytes; a client that hangs up half-way through another blob does
/// not break its fill: the next pull is a hit with no new upstream GET.
#[test]
fn one_upstream_fetch_per_blob() {
    let up = Upstream::start();
    let tmp = tempfile::tempdir().expect("tempdir");
    let (shared, _) = big_layer_image(&up, &tmp.path().join("a"), "single/flight", 24 << 20);
    let (large, large_size) = big_layer_image(&up, &tmp.path().join("b"), "hang/up", 32 << 20);
    let b = proxy_of(&up, "", &[]);

    require_tool("curl");
    let path = format!("/v2/single/flight/blobs/{shared}");
    let clients: Vec<(Child, PathBuf)> = (0..20)
        .map(|i| {
            let out = tmp.path().join(format!("client-{i}"));
            let child = Command::new("curl")
                .args(["-sSf", "--max-time", "120", "-o"])
                .arg(&out)
                .arg(format!("{}{path}", b.url))
                .spawn()
                .expect("curl");
            (child, out)
        })
        .collect();
    for (mut child, out) in clients {
        let status = child.wait().expect("curl");
        assert!(status.success(), "client {} failed", out.display());
        let bytes = std::fs::read(&out).expect("downloaded");
        assert_eq!(
            sha256(&bytes),
            shared,
            "client {} got the blob",
            out.display()
        );
    }
    assert_eq!(up.requests("GET", &path), 1, "exactly one upstream GET");
    let berth_gets = b
        .log_lines()
        .iter()
        .filter(|l| l.contains("berth::access") && l.contains(&path) && l.contains("status=200"))
        .count();
    assert_eq!(berth_gets, 20, "all 20 were served by Berth");

    // A client reads 1 MiB of a 32 MiB uncached blob and hangs up.
    let big_path = format!("/v2/hang/up/blobs/{large}");
    {
        let mut s = std::net::TcpStream::connect(&b.host).expect("connect");
        write!(s, "GET {big_path} HTTP/1.1\r\nHost: {}\r\n\r\n", b.host).expect("request");
        let mut buf = vec![0u8; 1 << 20];
        s.read_exact(&mut buf).expect("first MiB");
    }
    let blob_file = b
        .data_dir()
        .join("blobs/sha256")
        .join(&large.hex()[..2])
        .join(large.hex());
    wait_until(
        "the fill completes without its client",
        Duration::from_secs(60),
        || blob_file.is_file(),
    );
    assert!(b.upload_file_sizes().is_empty(), "no upload left behind");
    let fetched = curl(&[
        "-sSf",
        "-o",
        "/dev/null",
        "-w",
        "%{size_download}",
        &format!("{}{big_path}", b.url),
    ]);
    assert_eq!(fetched.trim(), large_size.to_string());
    let bytes = std::fs::read(&blob_file).expect("blob");
    assert_eq!(sha256(&bytes), large);
    assert_eq!(
        up.requests("GET", &big_path),
        1,
        "the later pull was a cache hit"
    );

    // The cached blob asked for through a repository the upstream does not have: 404,
    // and the cache invents no repository.
    let (status, body) = http("GET", &format!("{}/v2/made/up/blobs/{large}", b.url), &[]);
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("BLOB_UNKNOWN"), "{body}");
    assert!(!catalog(&b).contains(&"made/up".to_string()));
    // Through another repository the upstream has it in: served from the cache after a
    // HEAD upstream, no second GET.
    push(&up, &tmp.path().join("b"), "v1", "hang/copy:v1");
    let copy_path = format!("/v2/hang/copy/blobs/{large}");
    let fetched = curl(&[
        "-sSf",
        "-o",
        "/dev/null",
        "-w",
        "%{size_download}",
        &format!("{}{copy_path}", b.url),
    ]);
    assert_eq!(fetched.trim(), large_size.to_string());
    assert_eq!(up.requests("GET", &copy_path), 0, "served from the cache");
    assert!(catalog(&b).contains(&"hang/copy".to_string()));
}

/// A tag moved upstream is seen on the next pull; writes are refused with 405 UNSUPPORTED
/// and change nothing; with the upstream stopped, cached images (by tag too) still pull
/// and an uncached one gets an error naming the upstream.
#[test]
fn tags_follow_upstream_and_cache_survives_it() {
    let up = Upstream::start();
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut layout = Layout::create(&tmp.path().join("layout"));
    let first = small_image(&layout, "amd64", "first");
    layout.tag(&first, "v1");
    let second = small_image(&layout, "amd64", "second");
    layout.tag(&second, "v2");
    let other = small_image(&layout, "amd64", "never pulled");
    layout.tag(&other, "other");
    push(&up, &layout.dir, "v1", "app/moving:latest");
    push(&up, &layout.dir, "other", "app/uncached:latest");
    let b = proxy_of(&up, "", &[]);

    assert_eq!(
        raw_digest(&b.host, "app/moving:latest", false),
        digest_of(&first)
    );
    push(&up, &layout.dir, "v2", "app/moving:latest");
    assert_eq!(
        raw_digest(&b.host, "app/moving:latest", false),
        digest_of(&second),
        "the moved tag is seen"
    );
    let copy = |reference: &str, to: &str| {
        exec(
            skopeo()
                .args(["copy", "--src-tls-verify=false"])
                .arg(format!("docker://{}/{reference}", b.host))
                .arg(format!("oci:{}:x", tmp.path().join(to).display())),
        )
    };
    let out = copy("app/moving:latest", "pulled");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (code, tags) = http("GET", &format!("{}/v2/app/moving/tags/list", b.url), &[]);
    assert_eq!(code, 200);
    assert!(tags.contains("latest"), "{tags}");

    // Pushes and deletes: 405 UNSUPPORTED, nothing changes.
    let before = catalog(&b);
    let writes = [
        ("POST", "/v2/app/new/blobs/uploads/".to_string()),
        ("PUT", "/v2/app/moving/manifests/latest".to_string()),
        (
            "DELETE",
            format!("/v2/app/moving/manifests/{}", digest_of(&second)),
        ),
        (
            "DELETE",
            format!("/v2/app/moving/blobs/{}", digest_of(&second)),
        ),
    ];
    for (method, path) in &writes {
        let (code, body) = http(
            method,
            &format!("{}{path}", b.url),
            &[
                "-H",
                "content-type: application/vnd.oci.image.manifest.v1+json",
                "--data-binary",
                "{}",
            ],
        );
        assert_eq!(code, 405, "{method} {path}: {body}");
        assert!(
            body.contains("UNSUPPORTED") && body.contains("pull-through cache"),
            "{body}"
        );
    }
    assert_eq!(catalog(&b), before);
    assert_eq!(
        raw_digest(&b.host, "app/moving:latest", false),
        digest_of(&second)
    );

    // A tag the upstream no longer has is gone from the cache too: not found now, and
    // not brought back as stale when the upstream is down later.
    push(&up, &layout.dir, "other", "app/dropped:latest");
    assert_eq!(
        raw_digest(&b.host, "app/dropped:latest", false),
        digest_of(&other)
    );
    let (code, body) = http(
        "DELETE",
        &format!(
            "http://{}/v2/app/dropped/manifests/{}",
            up.host,
            digest_of(&other)
        ),
        &["-u", &format!("{USER}:{PASSWORD}")],
    );
    assert_eq!(code, 202, "upstream delete: {body}");
    let dropped = format!("{}/v2/app/dropped/manifests/latest", b.url);
    let (code, body) = http("GET", &dropped, &[]);
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("MANIFEST_UNKNOWN"), "{body}");

    // Upstream gone: the cached tag still pulls (stale), a whole image too.
    let mut up = up;
    up.stop();
    let (code, body) = http("GET", &dropped, &[]);
    assert_ne!(code, 200, "a tag gone upstream came back as stale: {body}");
    assert_eq!(
        raw_digest(&b.host, "app/moving:latest", false),
        digest_of(&second),
        "stale-if-error by tag"
    );
    let out = copy("app/moving:latest", "offline");
    assert!(
        out.status.success(),
        "offline pull: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(b
        .log_lines()
        .iter()
        .any(|l| l.contains("serving the cached tag")));
    // Not cached: a clear error naming the upstream.
    let (code, body) = http(
        "GET",
        &format!("{}/v2/app/uncached/manifests/latest", b.url),
        &[],
    );
    assert_eq!(code, 502, "{body}");
    assert!(
        body.contains(&up.url()) && body.contains("unreachable") && body.contains("not cached"),
        "{body}"
    );
    let out = copy("app/uncached:latest", "never");
    assert!(
        !out.status.success(),
        "an uncached image cannot be pulled offline"
    );
}

/// `proxy.ttl`: content unused for the ttl leaves the metadata and the catalog.
#[test]
fn unused_content_expires() {
    let up = Upstream::start();
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut layout = Layout::create(&tmp.path().join("layout"));
    let image = small_image(&layout, "amd64", "short lived");
    layout.tag(&image, "v1");
    push(&up, &layout.dir, "v1", "brief/stay:v1");
    let b = proxy_of(
        &up,
        "",
        &[
            ("REGISTRY_PROXY_TTL", "2s"),
            ("REGISTRY_PROXY_EXPIRYINTERVAL", "500ms"),
        ],
    );
    let out = exec(
        skopeo()
            .args(["copy", "--src-tls-verify=false"])
            .arg(format!("docker://{}/brief/stay:v1", b.host))
            .arg(format!("oci:{}:x", tmp.path().join("pulled").display())),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(catalog(&b), ["brief/stay"]);
    wait_until(
        "the cached repository expires",
        Duration::from_secs(15),
        || catalog(&b).is_empty(),
    );
    let expired = b
        .log_lines()
        .iter()
        .filter(|l| l.contains("expired from the pull-through cache"))
        .count();
    assert_eq!(expired, 4, "manifest, config and two layers");
    // Gone from metadata: with the upstream stopped, the manifest is no longer served.
    let mut up = up;
    up.stop();
    let (code, body) = http(
        "GET",
        &format!("{}/v2/brief/stay/manifests/{}", b.url, digest_of(&image)),
        &[],
    );
    assert_eq!(code, 502, "{body}");
}

/// Wrong upstream credentials give the client a clear error, quickly; a bad remote URL
/// stops start-up naming the key.
#[test]
fn upstream_credentials_and_url_errors() {
    let up = Upstream::start();
    let b = proxy_of(&up, "", &[("REGISTRY_PROXY_PASSWORD", "wrong")]);
    let start = Instant::now();
    let (code, body) = http(
        "GET",
        &format!("{}/v2/library/any/manifests/latest", b.url),
        &[],
    );
    assert!(start.elapsed() < Duration::from_secs(10), "no hang");
    assert_eq!(code, 502, "{body}");
    assert!(body.contains("proxy.username and proxy.password"), "{body}");

    let err = Berth::fails_to_start(
        "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: DATA\nhttp:\n  addr: 127.0.0.1:0\nproxy:\n  remoteurl: ftp://example.com\n",
    );
    assert!(err.contains("proxy.remoteurl"), "{err}");
}

// ---------------------------------------------------------------------------------------
// A Bearer-token upstream: docker-registry with `auth: token`, over TLS
// ---------------------------------------------------------------------------------------

const TOKEN_SERVICE: &str = "upstream.test";
const TOKEN_ISSUER: &str = "berth-test-issuer";

/// One request the token issuer answered.
#[derive(Debug, Clone)]
struct TokenRequest {
    user_agent: String,
    scopes: Vec<String>,
    service: Option<String>,
    granted: bool,
}

struct IssuerState {
    key: ring::signature::EcdsaKeyPair,
    rng: ring::rand::SystemRandom,
    /// The signing certificate (DER, standard base64) for the JWT header's `x5c`.
    x5c: String,
    /// `expires_in` of the answers, seconds.
    expires_in: std::sync::atomic::AtomicI64,
    /// When set, the JWT's `exp` claim says this many seconds from now instead of
    /// `expires_in` (so the registry refuses a token its holder still thinks valid).
    jwt_lifetime: std::sync::Mutex<Option<i64>>,
    requests: std::sync::Mutex<Vec<TokenRequest>>,
}

/// A token issuer as the Docker token spec describes one, in the test process: checks
/// Basic credentials (`USER`/`PASSWORD`), grants the scopes asked for, and signs an ES256
/// JWT whose header carries `x5c` = [a certificate issued by the test CA], which is what
/// Distribution 2.8's `auth: token` verifies against its `rootcertbundle`.
struct Issuer {
    realm: String,
    state: std::sync::Arc<IssuerState>,
    _runtime: tokio::runtime::Runtime,
}

fn b64url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl IssuerState {
    fn token(&self, scopes: &[String]) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs() as i64;
        let lifetime = self
            .jwt_lifetime
            .lock()
            .expect("lock")
            .unwrap_or_else(|| self.expires_in.load(std::sync::atomic::Ordering::SeqCst));
        let access: Vec<Value> = scopes
            .iter()
            .filter_map(|s| {
                let (kind, rest) = s.split_once(':')?;
                let (name, actions) = rest.rsplit_once(':')?;
                Some(json!({"type": kind, "name": name, "actions": actions.split(',').collect::<Vec<_>>()}))
            })
            .collect();
        let header = json!({"typ": "JWT", "alg": "ES256", "x5c": [self.x5c]});
        let claims = json!({
            "iss": TOKEN_ISSUER,
            "sub": USER,
            "aud": TOKEN_SERVICE,
            "exp": now + lifetime,
            "nbf": now - 1,
            "iat": now,
            "jti": uuid::Uuid::new_v4().to_string(),
            "access": access,
        });
        let signed = format!(
            "{}.{}",
            b64url(&serde_json::to_vec(&header).expect("json")),
            b64url(&serde_json::to_vec(&claims).expect("json"))
        );
        let signature = self.key.sign(&self.rng, signed.as_bytes()).expect("sign");
        format!("{signed}.{}", b64url(signature.as_ref()))
    }
}

async fn issue(
    axum::extract::State(state): axum::extract::State<std::sync::Arc<IssuerState>>,
    headers: axum::http::HeaderMap,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> (axum::http::StatusCode, String) {
    use base64::Engine as _;
    let mut scopes = Vec::new();
    let mut service = None;
    for (k, v) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match &*k {
            "scope" => scopes.push(v.into_owned()),
            "service" => service = Some(v.into_owned()),
            _ => {}
        }
    }
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"))
    );
    let granted = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == expected);
    let user_agent = headers
        .get("user-agent")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    state.requests.lock().expect("lock").push(TokenRequest {
        user_agent,
        scopes: scopes.clone(),
        service,
        granted,
    });
    if !granted {
        return (
            axum::http::StatusCode::UNAUTHORIZED,
            r#"{"details":"incorrect username or password"}"#.into(),
        );
    }
    let expires_in = state.expires_in.load(std::sync::atomic::Ordering::SeqCst);
    let token = state.token(&scopes);
    (
        axum::http::StatusCode::OK,
        json!({"token": token, "access_token": token, "expires_in": expires_in, "issued_at": "2024-01-01T00:00:00Z"}).to_string(),
    )
}

impl Issuer {
    /// Sign with `pki`'s client key and certificate (issued by its CA).
    fn start(pki: &Pki) -> Issuer {
        use base64::Engine as _;
        let pkcs8 = pki.path("signer.p8");
        run(Command::new("openssl")
            .args(["pkcs8", "-topk8", "-nocrypt", "-outform", "DER"])
            .arg("-in")
            .arg(pki.path("client.key"))
            .arg("-out")
            .arg(&pkcs8));
        let der = pki.path("signer.der");
        run(Command::new("openssl")
            .args(["x509", "-outform", "DER"])
            .arg("-in")
            .arg(pki.path("client.crt"))
            .arg("-out")
            .arg(&der));
        let rng = ring::rand::SystemRandom::new();
        let key = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &std::fs::read(&pkcs8).expect("key"),
            &rng,
        )
        .expect("P-256 key");
        let state = std::sync::Arc::new(IssuerState {
            key,
            rng,
            x5c: base64::engine::general_purpose::STANDARD
                .encode(std::fs::read(&der).expect("cert")),
            expires_in: std::sync::atomic::AtomicI64::new(300),
            jwt_lifetime: std::sync::Mutex::new(None),
            requests: std::sync::Mutex::default(),
        });
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        let app = axum::Router::new()
            .route("/token", axum::routing::get(issue))
            .with_state(state.clone());
        // Over HTTPS like Docker Hub's auth.docker.io: Berth sends its credentials to a
        // token service only over TLS when the registry is https.
        let addr = runtime.block_on(common::pki::serve_https(
            app,
            &pki.path("server.crt"),
            &pki.path("server.key"),
        ));
        Issuer {
            realm: format!("https://{addr}/token"),
            state,
            _runtime: runtime,
        }
    }

    /// The requests Berth made (its User-Agent), in order.
    fn berth_requests(&self) -> Vec<TokenRequest> {
        self.state
            .requests
            .lock()
            .expect("lock")
            .iter()
            .filter(|r| r.user_agent.starts_with("berth/"))
            .cloned()
            .collect()
    }

    fn granted_for(&self, scope: &str) -> usize {
        self.berth_requests()
            .iter()
            .filter(|r| r.granted && r.scopes.iter().any(|s| s == scope))
            .count()
    }
}

/// The way real registries (Docker Hub) work: the upstream is HTTPS and wants a Bearer
/// token from an issuer that checks Berth's `proxy.username`/`password`. Anonymous pulls
/// are refused upstream; Berth gets a token per repository scope, reuses it while valid,
/// renews it when it expires or the upstream stops accepting it, and reports refused
/// credentials or an untrusted certificate as a clear error, quickly.
#[test]
fn bearer_token_upstream_over_tls() {
    require_tool("openssl");
    let pki = Pki::new();
    let issuer = Issuer::start(&pki);
    let up = Upstream::start_with(UpstreamAuth::Token {
        issuer: &issuer,
        pki: &pki,
    });
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut layout = Layout::create(&tmp.path().join("layout"));
    let image = small_image(&layout, "amd64", "behind a token");
    layout.tag(&image, "v1");
    for repo in [
        "library/tokened",
        "other/repo",
        "short/lived",
        "stale/token",
    ] {
        // skopeo gets its own push token from the issuer.
        push(&up, &layout.dir, "v1", &format!("{repo}:v1"));
    }
    assert!(issuer.berth_requests().is_empty());

    // Anonymous: the upstream refuses (the issuer wants credentials).
    let out = exec(
        skopeo()
            .args(["inspect", "--raw", "--tls-verify=false"])
            .arg(format!("docker://{}/library/tokened:v1", up.host)),
    );
    assert!(!out.status.success(), "anonymous pull refused upstream");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("401") || err.contains("unauthorized"), "{err}");

    let ca = pki.path("ca.crt").display().to_string();
    let url = up.url();
    assert!(url.starts_with("https://"));
    let proxy = |password: &str, ca: &str| {
        Berth::start_with_config_env(
            "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: DATA\nhttp:\n  addr: 127.0.0.1:0\n",
            &[
                ("REGISTRY_PROXY_REMOTEURL", url.as_str()),
                ("REGISTRY_PROXY_USERNAME", USER),
                ("REGISTRY_PROXY_PASSWORD", password),
                ("SSL_CERT_FILE", ca),
            ],
            "http",
        )
    };
    let b = proxy(PASSWORD, &ca);

    // A whole image through the cache, digests intact, one token for the scope.
    let out_dir = tmp.path().join("copied");
    run(skopeo()
        .args(["copy", "--src-tls-verify=false", "--preserve-digests"])
        .arg(format!("docker://{}/library/tokened:v1", b.host))
        .arg(format!("oci:{}:v1", out_dir.display())));
    let copied: Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("index.json")).expect("index.json"))
            .expect("json");
    assert_eq!(copied["manifests"][0]["digest"], image["digest"]);
    let manifest = layout.json(&image);
    let mut blobs: Vec<oci::Digest> = manifest["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .map(digest_of)
        .collect();
    blobs.push(digest_of(&manifest["config"]));
    for d in &blobs {
        let bytes = std::fs::read(out_dir.join("blobs/sha256").join(d.hex())).expect("blob");
        assert_eq!(sha256(&bytes), *d, "blob content");
        let path = format!("/v2/library/tokened/blobs/{d}");
        assert_eq!(
            up.requests("GET", &path),
            1,
            "{path} fetched once, with a token"
        );
    }
    let requests = issuer.berth_requests();
    assert_eq!(
        requests.len(),
        1,
        "one token for the whole pull: {requests:?}"
    );
    assert!(requests[0].granted);
    assert_eq!(requests[0].scopes, ["repository:library/tokened:pull"]);
    assert_eq!(requests[0].service.as_deref(), Some(TOKEN_SERVICE));

    // While valid the token is reused; another repository is another scope.
    assert_eq!(
        raw_digest(&b.host, "library/tokened:v1", false),
        digest_of(&image)
    );
    assert_eq!(issuer.granted_for("repository:library/tokened:pull"), 1);
    assert_eq!(
        raw_digest(&b.host, "other/repo:v1", false),
        digest_of(&image)
    );
    assert_eq!(issuer.granted_for("repository:other/repo:pull"), 1);
    assert_eq!(issuer.berth_requests().len(), 2);

    // A token with expires_in 2 s is renewed after it expired.
    issuer
        .state
        .expires_in
        .store(2, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(
        raw_digest(&b.host, "short/lived:v1", false),
        digest_of(&image)
    );
    assert_eq!(issuer.granted_for("repository:short/lived:pull"), 1);
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        raw_digest(&b.host, "short/lived:v1", false),
        digest_of(&image)
    );
    assert_eq!(
        issuer.granted_for("repository:short/lived:pull"),
        2,
        "the expired token was renewed"
    );

    // A token Berth holds as valid (expires_in 300) that the upstream no longer accepts
    // (its exp claim passed; 2.8 allows 60 s of leeway): the 401 makes Berth get a new one.
    issuer
        .state
        .expires_in
        .store(300, std::sync::atomic::Ordering::SeqCst);
    *issuer.state.jwt_lifetime.lock().expect("lock") = Some(4 - 60);
    assert_eq!(
        raw_digest(&b.host, "stale/token:v1", false),
        digest_of(&image)
    );
    assert_eq!(issuer.granted_for("repository:stale/token:pull"), 1);
    std::thread::sleep(Duration::from_millis(5500));
    assert_eq!(
        raw_digest(&b.host, "stale/token:v1", false),
        digest_of(&image)
    );
    assert_eq!(
        issuer.granted_for("repository:stale/token:pull"),
        2,
        "a refused token was replaced"
    );
    *issuer.state.jwt_lifetime.lock().expect("lock") = None;
    let scopes: Vec<String> = issuer
        .berth_requests()
        .iter()
        .flat_map(|r| r.scopes.clone())
        .collect();
    assert!(
        scopes
            .iter()
            .all(|s| s.starts_with("repository:") && s.ends_with(":pull")),
        "Berth asks for pull only: {scopes:?}"
    );

    // Wrong credentials: the issuer refuses, the client gets a clear 502, quickly.
    let wrong = proxy("wrong", &ca);
    let start = Instant::now();
    let (code, body) = http(
        "GET",
        &format!("{}/v2/library/tokened/manifests/v1", wrong.url),
        &[],
    );
    assert!(start.elapsed() < Duration::from_secs(10), "no hang");
    assert_eq!(code, 502, "{body}");
    assert!(
        body.contains("token service")
            && body.contains("401")
            && body.contains("proxy.username and proxy.password"),
        "{body}"
    );
    assert!(issuer.berth_requests().iter().any(|r| !r.granted));

    // A CA that did not issue the upstream's certificate: a TLS error naming the upstream.
    let other = Pki::new();
    let untrusting = proxy(PASSWORD, &other.path("ca.crt").display().to_string());
    let (code, body) = http(
        "GET",
        &format!("{}/v2/library/tokened/manifests/v1", untrusting.url),
        &[],
    );
    assert_eq!(code, 502, "{body}");
    assert!(
        body.contains(&url) && body.to_lowercase().contains("certificate"),
        "{body}"
    );
}

const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// `GET url` with `Accept: accept` (and Basic credentials when `creds`): status, the
/// `Content-Type` and `Docker-Content-Digest` headers, and the body.
fn get_manifest(url: &str, accept: &str, creds: bool) -> (u16, String, String, Vec<u8>) {
    require_tool("curl");
    let dir = tempfile::tempdir().expect("tempdir");
    let (headers, body) = (dir.path().join("headers"), dir.path().join("body"));
    let mut c = Command::new("curl");
    c.args(["-s", "--max-time", "60", "-H", &format!("Accept: {accept}")])
        .arg("-D")
        .arg(&headers)
        .arg("-o")
        .arg(&body);
    if creds {
        c.args(["-u", &format!("{USER}:{PASSWORD}")]);
    }
    run(c.arg(url));
    let headers = std::fs::read_to_string(&headers).expect("headers");
    let status = headers
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status");
    let header = |name: &str| {
        headers
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
            })
            .unwrap_or_default()
    };
    (
        status,
        header("content-type"),
        header("docker-content-digest"),
        std::fs::read(&body).unwrap_or_default(),
    )
}

/// An old client asking for a multi-arch image by tag with an `Accept` that leaves out
/// manifest lists gets the list's linux/amd64 image, as Distribution does, even when the
/// cache does not hold that image yet: it is fetched (once) through the cache.
#[test]
fn old_clients_get_the_amd64_image_of_a_list() {
    let up = Upstream::start();
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut layout = Layout::create(&tmp.path().join("layout"));
    let amd = small_image(&layout, "amd64", "old client amd64");
    let arm = small_image(&layout, "arm64", "old client arm64");
    let index = layout.put_index(&[(arm, "arm64"), (amd, "amd64")], Value::Null);
    layout.tag(&index, "multi");
    // As a Docker manifest list of Docker images (2.8 picks a child only for those).
    run(skopeo()
        .args([
            "copy",
            "--all",
            "--format",
            "v2s2",
            "--dest-tls-verify=false",
            "--dest-creds",
            &format!("{USER}:{PASSWORD}"),
        ])
        .arg(format!("oci:{}:multi", layout.dir.display()))
        .arg(format!("docker://{}/old/client:latest", up.host)));
    let path = "/v2/old/client/manifests/latest";
    let (status, media_type, list_digest, list) =
        get_manifest(&format!("{}{path}", up.url()), DOCKER_LIST, true);
    assert_eq!((status, media_type.as_str()), (200, DOCKER_LIST));
    let list: Value = serde_json::from_slice(&list).expect("json");
    let amd64 = list["manifests"]
        .as_array()
        .expect("manifests")
        .iter()
        .find(|m| m["platform"]["architecture"] == "amd64")
        .map(digest_of)
        .expect("an amd64 image");
    // The upstream itself (Distribution 2.8) answers an old client with the amd64 image.
    let (status, _, digest, _) =
        get_manifest(&format!("{}{path}", up.url()), DOCKER_MANIFEST, true);
    assert_eq!((status, digest.as_str()), (200, amd64.as_str()));

    let b = proxy_of(&up, "", &[]);
    let child_path = format!("/v2/old/client/manifests/{amd64}");
    let before = up.requests("GET", &child_path);
    for round in 0..2 {
        let (status, media_type, digest, body) =
            get_manifest(&format!("{}{path}", b.url), DOCKER_MANIFEST, false);
        assert_eq!(status, 200, "round {round}");
        assert_eq!(media_type, DOCKER_MANIFEST, "round {round}");
        assert_eq!(digest, amd64.as_str(), "round {round}");
        assert_eq!(sha256(&body), amd64, "round {round}");
    }
    assert_eq!(
        up.requests("GET", &child_path),
        before + 1,
        "the amd64 image was fetched once, then served from the cache"
    );
    // A client that accepts lists still gets the list.
    let (status, media_type, digest, _) = get_manifest(
        &format!("{}{path}", b.url),
        &format!("{DOCKER_LIST}, {DOCKER_MANIFEST}"),
        false,
    );
    assert_eq!(
        (status, media_type.as_str(), digest.as_str()),
        (200, DOCKER_LIST, list_digest.as_str())
    );
}

/// A proxy whose upstream is never reached: only its start-up is looked at.
const UNREACHED_PROXY: &str = "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: DATA\nhttp:\n  addr: 127.0.0.1:0\nproxy:\n  remoteurl: https://127.0.0.1:9\n";

/// `SSL_CERT_FILE` replaces the system's certificates for outgoing HTTPS; set to a file
/// that cannot be read or holds no certificate it would leave Berth trusting nothing, so
/// start-up says so, naming the variable.
#[test]
fn unusable_ssl_cert_file_is_reported_at_start() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let empty = tmp.path().join("empty.pem");
    std::fs::write(&empty, "not a certificate\n").expect("file");
    let missing = tmp.path().join("missing.pem");
    let pki = Pki::new();
    let good = pki.path("ca.crt");
    let cases = [
        (&missing, Some("cannot be read")),
        (&empty, Some("holds no PEM certificate")),
        (&good, None),
    ];
    for (file, expected) in cases {
        let file = file.display().to_string();
        let b = Berth::start_with_config_env(
            UNREACHED_PROXY,
            // SSL_CERT_DIR would add its own roots (the machine may set it): empty is unset.
            &[("SSL_CERT_FILE", &file), ("SSL_CERT_DIR", "")],
            "http",
        );
        let warning = b
            .log_lines()
            .into_iter()
            .find(|l| l.contains("SSL_CERT_FILE="));
        match expected {
            Some(why) => {
                let w = warning.unwrap_or_else(|| panic!("no warning for {file}"));
                assert!(
                    w.contains("WARN")
                        && w.contains(&format!("SSL_CERT_FILE={file}"))
                        && w.contains(why)
                        && w.contains("trust no certificate authority"),
                    "{w}"
                );
            }
            None => assert!(warning.is_none(), "{warning:?}"),
        }
    }
    // A bad file beside a usable SSL_CERT_DIR: reported, but roots remain.
    let file = empty.display().to_string();
    let b = Berth::start_with_config_env(
        UNREACHED_PROXY,
        &[("SSL_CERT_FILE", &file), ("SSL_CERT_DIR", "/etc/ssl/certs")],
        "http",
    );
    let w = b
        .log_lines()
        .into_iter()
        .find(|l| l.contains("SSL_CERT_FILE="))
        .expect("warning");
    assert!(w.contains("its certificates are not trusted"), "{w}");
    // An empty SSL_CERT_DIR alone leaves no roots.
    let dir = tmp.path().join("no-certs");
    std::fs::create_dir_all(&dir).expect("dir");
    let b = Berth::start_with_config_env(
        UNREACHED_PROXY,
        &[
            ("SSL_CERT_FILE", ""),
            ("SSL_CERT_DIR", &dir.display().to_string()),
        ],
        "http",
    );
    let w = b
        .log_lines()
        .into_iter()
        .find(|l| l.contains("SSL_CERT_DIR="))
        .expect("warning");
    assert!(w.contains("trust no certificate authority"), "{w}");
}

/// Tag lists through the cache from an upstream that pages them (a Berth whose pages hold
/// at most 2 entries): `n=5` gets 5 tags and a `Link`, no `n` gets the whole list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_lists_follow_upstream_pages() {
    use common::push::{image_manifest, Registry, OCI_MANIFEST};
    let upstream = Berth::start_with("limits:\n  pageentries: 2\n");
    let push = Registry::new(&upstream.url);
    let (config, layer) = (b"{}".as_slice(), b"paged layer".as_slice());
    push.push_blob("paged/app", config).await;
    push.push_blob("paged/app", layer).await;
    let manifest = serde_json::to_vec(&image_manifest(config, layer)).expect("json");
    let tags: Vec<String> = (1..=7).map(|i| format!("t{i}")).collect();
    for t in &tags {
        let r = push
            .put_manifest("paged/app", t, OCI_MANIFEST, &manifest)
            .await;
        assert_eq!(r.status(), 201);
    }
    let b = Berth::start_with_config_env(
        &format!(
            "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: DATA\nhttp:\n  addr: 127.0.0.1:0\nproxy:\n  remoteurl: {}\n",
            upstream.url
        ),
        &[],
        "http",
    );
    let c = reqwest::Client::new();
    let r = c
        .get(format!("{}/v2/paged/app/tags/list?n=5", b.url))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("link"), "a Link to the rest");
    let page: Value = r.json().await.expect("json");
    assert_eq!(page["tags"], json!(tags[..5]));
    let all: Value = c
        .get(format!("{}/v2/paged/app/tags/list", b.url))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(all["tags"], json!(tags));
}

/// A registry cannot make Berth hand the proxy credentials to a token service on
/// another host by naming it as its realm: the token is asked for anonymously, the
/// credentials never reach it, and the refusal says why.
#[test]
fn credentials_never_go_to_a_token_realm_on_another_host() {
    require_tool("openssl");
    let pki = Pki::new();
    let issuer = Issuer::start(&pki);
    // The same issuer, named as another host (the certificate also covers localhost).
    let elsewhere = issuer.realm.replace("127.0.0.1", "localhost");
    assert_ne!(elsewhere, issuer.realm);
    let up = Upstream::start_with(UpstreamAuth::TokenElsewhere {
        pki: &pki,
        realm: elsewhere,
    });
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut layout = Layout::create(&tmp.path().join("layout"));
    let image = small_image(&layout, "amd64", "token elsewhere");
    layout.tag(&image, "v1");
    push(&up, &layout.dir, "v1", "library/guarded:v1");
    let ca = pki.path("ca.crt").display().to_string();
    let b = Berth::start_with_config_env(
        "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: DATA\nhttp:\n  addr: 127.0.0.1:0\n",
        &[
            ("REGISTRY_PROXY_REMOTEURL", up.url().as_str()),
            ("REGISTRY_PROXY_USERNAME", USER),
            ("REGISTRY_PROXY_PASSWORD", PASSWORD),
            ("SSL_CERT_FILE", ca.as_str()),
        ],
        "http",
    );
    let out = exec(
        skopeo()
            .args(["inspect", "--raw", "--tls-verify=false"])
            .arg(format!("docker://{}/library/guarded:v1", b.host)),
    );
    assert!(!out.status.success(), "pulled without a token");
    let asked = issuer.berth_requests();
    assert!(!asked.is_empty(), "Berth never asked the token service");
    assert!(
        asked.iter().all(|r| !r.granted),
        "the credentials reached a token service on another host: {asked:?}"
    );
    let said = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        b.log_lines().join("\n")
    );
    assert!(
        said.contains("another host than the registry"),
        "the refusal does not say why: {said}"
    );
}

/// Pull `upstream/reference` with containerd's `ctr` (the Docker Engine's containerd),
/// configured by a hosts.toml to try the mirror at `mirror` first; the image is removed
/// again. Returns ctr's output.
fn containerd_pull_through_mirror(
    upstream: &str,
    mirror: &str,
    reference: &str,
    dir: &Path,
) -> String {
    require_tool("ctr");
    let socket = ["/run/containerd/containerd.sock", "/run/docker/containerd/containerd.sock"]
        .into_iter()
        .find(|s| Path::new(s).exists())
        .expect("no containerd socket (/run/containerd or /run/docker/containerd): is the Docker Engine running?");
    let hosts = dir.join("hosts.d");
    std::fs::create_dir_all(hosts.join(upstream)).expect("hosts dir");
    std::fs::write(
        hosts.join(upstream).join("hosts.toml"),
        format!("server = \"http://{upstream}\"\n\n[host.\"http://{mirror}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"),
    )
    .expect("hosts.toml");
    let namespace = format!("berth-test-{}", std::process::id());
    let image = format!("{upstream}/{reference}");
    let ctr = |args: &[&str]| {
        let mut c = Command::new("ctr");
        c.args(["-a", socket, "-n", &namespace]).args(args);
        c
    };
    let out = exec(
        ctr(&["images", "pull", "--plain-http", "--hosts-dir"])
            .arg(&hosts)
            .arg(&image),
    );
    let _ = exec(&mut ctr(&["images", "rm", &image]));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "ctr pull through the mirror: {text}");
    text
}

/// An admin's call to the management API of `b` (curl): status and body.
fn api(b: &Berth, who: &str, method: &str, path: &str, body: Option<Value>) -> (u16, String) {
    let url = format!("{}/api/v2.0{path}", b.url);
    let body = body.map(|v| v.to_string());
    let mut extra = vec!["-u", who, "-H", "content-type: application/json"];
    if let Some(b) = &body {
        extra.extend(["--data-binary", b.as_str()]);
    }
    http(method, &url, &extra)
}

/// Proxy-cache projects: one Berth caches two upstreams side by side with an ordinary
/// project — Distribution with htpasswd over HTTP (project `up`), and a Berth with token
/// auth over TLS with a private CA (project `tok`) — registered through
/// `/api/v2.0/registries`, pulled by skopeo, the Docker CLI and podman; a mirror
/// request (`?ns=`) routes to the project for its host; pushes to a cache are refused;
/// a registry in use cannot be deleted; only system administrators manage registries.
#[test]
fn proxy_cache_projects_for_two_upstreams() {
    require_tool("openssl");
    const ADMIN: &str = "admin:Harbor12345";
    let up = Upstream::start();
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut layout = Layout::create(&tmp.path().join("layout"));
    let hello = small_image(&layout, "amd64", "hello via a project");
    layout.tag(&hello, "v1");
    let app = small_image(&layout, "amd64", "app via a project");
    layout.tag(&app, "app");
    let tool = small_image(&layout, "amd64", "tool via a token upstream");
    layout.tag(&tool, "tool");
    push(&up, &layout.dir, "v1", "library/hello:v1");
    push(&up, &layout.dir, "app", "team/app:1");

    // The second upstream: a Berth with token auth (its own /service/token) over TLS.
    let pki = Pki::new();
    let token_up = Berth::start_with_config_env(
        &pki.tls_config("auth:\n  berth:\n    adminpassword: Upstream123\n"),
        &[],
        "https",
    );
    let ca = pki.path("ca.crt").display().to_string();
    let (code, body) = http(
        "POST",
        &format!("{}/api/v2.0/projects", token_up.url),
        &[
            "--cacert",
            &ca,
            "-u",
            "admin:Upstream123",
            "-H",
            "content-type: application/json",
            "--data-binary",
            r#"{"project_name": "lib"}"#,
        ],
    );
    assert_eq!(code, 201, "{body}");
    run(skopeo()
        .args([
            "copy",
            "--preserve-digests",
            "--dest-creds",
            "admin:Upstream123",
        ])
        .arg("--dest-cert-dir")
        .arg(pki.cert_dir(false))
        .arg(format!("oci:{}:tool", layout.dir.display()))
        .arg(format!("docker://{}/lib/tool:2", token_up.host)));

    let b = Berth::start_with_config(&format!(
        "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: DATA\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:0\nauth:\n  berth:\n    adminpassword: {}\n",
        &ADMIN[6..]
    ));
    // Only system administrators manage registries.
    let (code, _) = api(
        &b,
        ADMIN,
        "POST",
        "/users",
        Some(
            json!({"username": "dev", "password": "Passw0rdDev", "email": "dev@example.org", "realname": "dev"}),
        ),
    );
    assert_eq!(code, 201);
    let (code, _) = api(&b, "dev:Passw0rdDev", "GET", "/registries", None);
    assert_eq!(code, 403, "a user lists registries");
    let (code, body) = api(&b, ADMIN, "GET", "/replication/adapters", None);
    assert_eq!(code, 200);
    assert!(
        body.contains("docker-registry") && body.contains("docker-hub"),
        "{body}"
    );

    // Ping: wrong credentials are named; right ones pass.
    let mut up_reg = json!({"name": "distribution", "type": "docker-registry", "url": up.url(),
        "credential": {"type": "basic", "access_key": USER, "access_secret": "wrong"}});
    let (code, body) = api(&b, ADMIN, "POST", "/registries/ping", Some(up_reg.clone()));
    assert_eq!(code, 400, "{body}");
    assert!(
        body.contains("refused the configured credentials"),
        "{body}"
    );
    up_reg["credential"]["access_secret"] = json!(PASSWORD);
    let (code, body) = api(&b, ADMIN, "POST", "/registries/ping", Some(up_reg.clone()));
    assert_eq!(code, 200, "{body}");
    let (code, body) = api(
        &b,
        "dev:Passw0rdDev",
        "POST",
        "/registries",
        Some(up_reg.clone()),
    );
    assert_eq!(code, 403, "{body}");
    let (code, body) = api(&b, ADMIN, "POST", "/registries", Some(up_reg.clone()));
    assert_eq!(code, 201, "{body}");
    let (code, _) = api(&b, ADMIN, "POST", "/registries", Some(up_reg.clone()));
    assert_eq!(code, 409, "a second registry of the same name");
    // The token upstream needs its private CA: without it the check says so.
    let mut tok_reg = json!({"name": "berth-tls", "type": "harbor", "url": token_up.url,
        "credential": {"type": "basic", "access_key": "admin", "access_secret": "Upstream123"}});
    let (code, body) = api(&b, ADMIN, "POST", "/registries/ping", Some(tok_reg.clone()));
    assert_eq!(code, 400, "{body}");
    tok_reg["ca_certificate"] = json!(std::fs::read_to_string(pki.path("ca.crt")).expect("ca"));
    let (code, body) = api(&b, ADMIN, "POST", "/registries", Some(tok_reg.clone()));
    assert_eq!(code, 201, "{body}");
    let (_, body) = api(&b, ADMIN, "GET", "/registries", None);
    let regs: Value = serde_json::from_str(&body).expect("json");
    let reg_id = |name: &str| -> i64 {
        regs.as_array()
            .expect("array")
            .iter()
            .find(|r| r["name"] == name)
            .and_then(|r| r["id"].as_i64())
            .unwrap_or_else(|| panic!("no registry {name}: {regs}"))
    };
    for r in regs.as_array().expect("array") {
        assert_eq!(r["status"], "healthy", "{r}");
        assert_eq!(
            r["credential"]["access_secret"], "*****",
            "the secret is never shown"
        );
    }
    let (up_id, tok_id) = (reg_id("distribution"), reg_id("berth-tls"));

    // Projects bound to them (a user may not make one), and an ordinary one.
    let project = |name: &str, registry: Option<i64>| {
        let mut body = json!({"project_name": name, "metadata": {"public": "true"}});
        if let Some(r) = registry {
            body["registry_id"] = json!(r);
        }
        body
    };
    let (code, _) = api(
        &b,
        "dev:Passw0rdDev",
        "POST",
        "/projects",
        Some(project("mine", Some(up_id))),
    );
    assert_eq!(code, 403, "a user makes a proxy-cache project");
    let (code, _) = api(
        &b,
        ADMIN,
        "POST",
        "/projects",
        Some(project("bad", Some(9999))),
    );
    assert_eq!(code, 400, "an unknown registry");
    for (name, r) in [("up", Some(up_id)), ("tok", Some(tok_id)), ("plain", None)] {
        let (code, body) = api(&b, ADMIN, "POST", "/projects", Some(project(name, r)));
        assert_eq!(code, 201, "{name}: {body}");
    }
    let (_, body) = api(&b, ADMIN, "GET", "/projects/up", None);
    let p: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(p["registry_id"], up_id);
    let (code, _) = api(
        &b,
        ADMIN,
        "PUT",
        "/projects/up",
        Some(json!({"registry_id": tok_id})),
    );
    assert_eq!(code, 400, "registry_id changed");

    // skopeo through `up`: the upstream's digest, the whole image.
    let upstream_digest = raw_digest(&up.host, "library/hello:v1", true);
    assert_eq!(upstream_digest, digest_of(&hello));
    assert_eq!(
        raw_digest(&b.host, "up/library/hello:v1", false),
        upstream_digest
    );
    let out_dir = tmp.path().join("copied");
    run(skopeo()
        .args(["copy", "--src-tls-verify=false", "--preserve-digests"])
        .arg(format!("docker://{}/up/library/hello:v1", b.host))
        .arg(format!("oci:{}:v1", out_dir.display())));
    // The Docker CLI through `up`.
    require_tool("docker");
    let docker_config = tempfile::tempdir().expect("tempdir");
    let docker = |args: &[&str]| {
        let mut c = Command::new("docker");
        c.arg("--config").arg(docker_config.path()).args(args);
        c
    };
    let reference = format!("{}/up/team/app:1", b.host);
    let pulled = run(&mut docker(&["pull", &reference]));
    let _ = exec(&mut docker(&["rmi", "-f", &reference]));
    assert!(
        pulled.contains(digest_of(&app).as_str()),
        "docker pull digest: {pulled}"
    );
    // podman through `tok` (a Bearer token from the upstream Berth, its CA from the
    // registry's settings).
    let root = tmp.path().join("podman");
    let tool_ref = format!("{}/tok/lib/tool:2", b.host);
    run(common::tools::podman(&root).args(["pull", "--tls-verify=false", &tool_ref]));
    let inspect: Value = serde_json::from_str(&run(
        common::tools::podman(&root).args(["image", "inspect", &tool_ref])
    ))
    .expect("json");
    assert_eq!(inspect[0]["Digest"], tool["digest"], "podman digest");
    // Each client through each upstream: podman through `up`, skopeo and docker through
    // `tok`.
    let hello_ref = format!("{}/up/library/hello:v1", b.host);
    run(common::tools::podman(&root).args(["pull", "--tls-verify=false", &hello_ref]));
    let inspect: Value = serde_json::from_str(&run(
        common::tools::podman(&root).args(["image", "inspect", &hello_ref])
    ))
    .expect("json");
    assert_eq!(
        inspect[0]["Digest"], hello["digest"],
        "podman digest through up"
    );
    assert_eq!(
        raw_digest(&b.host, "tok/lib/tool:2", false),
        digest_of(&tool)
    );
    let pulled = run(&mut docker(&["pull", &tool_ref]));
    let _ = exec(&mut docker(&["rmi", "-f", &tool_ref]));
    assert!(
        pulled.contains(digest_of(&tool).as_str()),
        "docker pull digest through tok: {pulled}"
    );

    // A mirror request (containerd's hosts.toml): `?ns=<upstream host>` goes to the
    // project caching that host; another host's request is an ordinary one.
    let (code, body) = http(
        "GET",
        &format!("{}/v2/team/app/manifests/1?ns={}", b.url, up.host),
        &["-H", "Accept: application/vnd.oci.image.manifest.v1+json"],
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(sha256(body.as_bytes()), digest_of(&app));
    // A host no project caches is not served from a local look-alike: the client goes
    // on to its next host.
    let (code, body) = http(
        "GET",
        &format!("{}/v2/plain/hello/manifests/v1?ns=ghcr.io", b.url),
        &["-u", ADMIN],
    );
    assert_eq!(code, 404, "{body}");
    assert!(
        body.contains("NAME_UNKNOWN") && body.contains("ghcr.io"),
        "{body}"
    );

    // containerd itself (the Docker Engine's), told by a hosts.toml that Berth mirrors
    // the upstream: it asks Berth with `?ns=`, and Berth's project answers. The upstream
    // wants credentials containerd does not have, so the pull succeeds only through
    // the mirror.
    let asked = |b: &Berth| {
        b.log_lines()
            .iter()
            .filter(|l| l.contains("path=\"/v2/team/app/manifests/1\" status=200"))
            .count()
    };
    let before = asked(&b);
    containerd_pull_through_mirror(&up.host, &b.host, "team/app:1", tmp.path());
    assert!(asked(&b) > before, "containerd never asked the mirror");

    // Pushes to a cache are refused, saying why; the ordinary project takes them.
    let push_to = |target: &str| {
        exec(
            skopeo()
                .args(["copy", "--dest-tls-verify=false", "--dest-creds", ADMIN])
                .arg(format!("oci:{}:v1", layout.dir.display()))
                .arg(format!("docker://{}/{target}", b.host)),
        )
    };
    let refused = push_to("up/library/hello:mine");
    assert!(
        !refused.status.success(),
        "pushed into a proxy-cache project"
    );
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("is a proxy cache of"), "{said}");
    assert!(
        push_to("plain/hello:v1").status.success(),
        "ordinary project"
    );
    let (code, body) = http(
        "POST",
        &format!("{}/v2/up/library/x/blobs/uploads/", b.url),
        &["-u", ADMIN],
    );
    assert_eq!(code, 403, "{body}");
    assert!(
        body.contains("DENIED") && body.contains("proxy cache"),
        "{body}"
    );

    // The catalog holds what was pulled, under the projects.
    let (code, body) = http("GET", &format!("{}/v2/_catalog", b.url), &["-u", ADMIN]);
    assert_eq!(code, 200, "{body}");
    let cat: Vec<String> = serde_json::from_value(
        serde_json::from_str::<Value>(&body).expect("json")["repositories"].clone(),
    )
    .expect("repositories");
    for repo in [
        "up/library/hello",
        "up/team/app",
        "tok/lib/tool",
        "plain/hello",
    ] {
        assert!(cat.iter().any(|r| r == repo), "{repo} not in {cat:?}");
    }
    // A project at its quota fetches nothing new: 403 before any download.
    push(&up, &layout.dir, "tool", "team/tool:1");
    let (_, body) = api(&b, ADMIN, "GET", "/projects/up", None);
    let up_project: Value = serde_json::from_str(&body).expect("json");
    let quota = format!("/quotas/{}", up_project["project_id"]);
    let (code, body) = api(
        &b,
        ADMIN,
        "PUT",
        &quota,
        Some(json!({"hard": {"storage": 1}})),
    );
    assert_eq!(code, 200, "{body}");
    let fetched_before = up.requests(
        "GET",
        &format!(
            "/v2/team/tool/blobs/{}",
            digest_of(&layout.json(&tool)["layers"][1])
        ),
    );
    let (code, body) = http(
        "GET",
        &format!(
            "{}/v2/up/team/tool/blobs/{}",
            b.url,
            digest_of(&layout.json(&tool)["layers"][1])
        ),
        &[],
    );
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("DENIED") && body.contains("quota"), "{body}");
    assert_eq!(
        up.requests(
            "GET",
            &format!(
                "/v2/team/tool/blobs/{}",
                digest_of(&layout.json(&tool)["layers"][1])
            )
        ),
        fetched_before,
        "nothing downloaded"
    );
    let (code, _) = api(
        &b,
        ADMIN,
        "PUT",
        &quota,
        Some(json!({"hard": {"storage": -1}})),
    );
    assert_eq!(code, 200);

    // A registry in use stays; once its project is gone, it can go.
    let (code, body) = api(&b, ADMIN, "DELETE", &format!("/registries/{tok_id}"), None);
    assert_eq!(code, 412, "{body}");
    assert!(body.contains("tok"), "{body}");
    let (code, body) = api(
        &b,
        ADMIN,
        "DELETE",
        "/projects/tok/repositories/lib%252Ftool",
        None,
    );
    assert_eq!(code, 200, "{body}");
    let (code, body) = api(&b, ADMIN, "DELETE", "/projects/tok", None);
    assert_eq!(code, 200, "{body}");
    let (code, body) = api(&b, ADMIN, "DELETE", &format!("/registries/{tok_id}"), None);
    assert_eq!(code, 200, "{body}");
    // Credentials changed through the API take effect at once on this node.
    let (code, _) = api(
        &b,
        ADMIN,
        "PUT",
        &format!("/registries/{up_id}"),
        Some(json!({"credential": {"access_key": USER, "access_secret": "wrong"}})),
    );
    assert_eq!(code, 200);
    let (_, body) = api(&b, ADMIN, "GET", &format!("/registries/{up_id}"), None);
    assert!(body.contains("\"unhealthy\""), "{body}");
    let (code, said) = http(
        "GET",
        &format!("{}/v2/up/library/other/manifests/v1", b.url),
        &[],
    );
    assert_eq!(code, 502, "{said}");
    assert!(
        said.contains("credentials of registry \\\"distribution\\\""),
        "the refusal names whose credentials: {said}"
    );

    // A blob of a private project is never served through a cache whose upstream does
    // not confirm it, not even while the upstream is down.
    let (code, body) = api(
        &b,
        ADMIN,
        "POST",
        "/projects",
        Some(json!({"project_name": "private"})),
    );
    assert_eq!(code, 201, "{body}");
    let mut secret_layout = Layout::create(&tmp.path().join("secret"));
    let secret = small_image(&secret_layout, "amd64", "a private layer");
    secret_layout.tag(&secret, "v1");
    let out = exec(
        skopeo()
            .args(["copy", "--dest-tls-verify=false", "--dest-creds", ADMIN])
            .arg(format!("oci:{}:v1", secret_layout.dir.display()))
            .arg(format!("docker://{}/private/app:v1", b.host)),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let private_layer = digest_of(&secret_layout.json(&secret)["layers"][1]);
    let through_cache = format!("{}/v2/up/any/blobs/{private_layer}", b.url);
    assert_eq!(
        http("GET", &through_cache, &[]).0,
        404,
        "upstream says: not there"
    );
    let mut up = up;
    up.stop();
    for method in ["GET", "HEAD"] {
        let (code, body) = http(
            method,
            &through_cache,
            &["-I"][..(method == "HEAD") as usize],
        );
        assert_ne!(
            code, 200,
            "{method} of a private blob through the cache: {body}"
        );
    }
}

/// Mirror host names (`auth.berth.mirrors`): a Docker Engine started with
/// `registry-mirrors` and podman and skopeo with a `[[registry.mirror]]` ask the mirror
/// for Docker Hub's names (`library/hello`), and the host name they use (`localhost`,
/// while the registry itself is `127.0.0.1`) says which project serves them: here a
/// proxy-cache project of a real Distribution. Docker Hub cannot be reached from the
/// test, so each pull succeeds only through the mirror. The registry's own host name
/// is untouched; a mirror host serves pulls only; a private project behind a mirror host
/// name needs a token, which the token service maps into the project, pull only.
#[test]
fn registry_mirrors_pull_through_mirror_host_names() {
    const ADMIN: &str = "admin:Harbor12345";
    let up = Upstream::start();
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut layout = Layout::create(&tmp.path().join("layout"));
    let hello = small_image(&layout, "amd64", "hello via a mirror host");
    layout.tag(&hello, "v1");
    let app = small_image(&layout, "amd64", "app via a mirror host");
    layout.tag(&app, "app");
    push(&up, &layout.dir, "v1", "library/hello:v1");
    push(&up, &layout.dir, "app", "team/app:1");

    let b = Berth::start_with_config(&format!(
        "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: DATA\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:0\nauth:\n  berth:\n    adminpassword: {}\n    mirrors:\n      localhost: hub\n      private-mirror.test: corp\n",
        &ADMIN[6..]
    ));
    let port = b.host.rsplit_once(':').expect("port").1.to_string();
    let mirror = format!("localhost:{port}");
    let reg = json!({"name": "distribution", "type": "docker-registry", "url": up.url(),
        "credential": {"type": "basic", "access_key": USER, "access_secret": PASSWORD}});
    let (code, body) = api(&b, ADMIN, "POST", "/registries", Some(reg));
    assert_eq!(code, 201, "{body}");
    let (_, body) = api(&b, ADMIN, "GET", "/registries", None);
    let regs: Value = serde_json::from_str(&body).expect("json");
    let reg_id = regs[0]["id"].as_i64().expect("id");
    let (code, body) = api(
        &b,
        ADMIN,
        "POST",
        "/projects",
        Some(json!({"project_name": "hub", "registry_id": reg_id, "metadata": {"public": "true"}})),
    );
    assert_eq!(code, 201, "{body}");
    let (code, body) = api(
        &b,
        ADMIN,
        "POST",
        "/projects",
        Some(json!({"project_name": "corp", "metadata": {"public": "false"}})),
    );
    assert_eq!(code, 201, "{body}");

    // The registry's own host name knows no `library` project: nothing of the upstream
    // is reachable by Docker Hub's names there.
    let (code, body) = http(
        "GET",
        &format!("{}/v2/library/hello/manifests/v1", b.url),
        &["-u", ADMIN],
    );
    assert!(code == 403 || code == 404, "{code}: {body}");

    // The Docker Engine: `registry-mirrors` in its daemon.json. It asks the mirror for
    // `library/hello` without any namespace.
    let engine =
        common::docker::Engine::start(&format!(r#"{{"registry-mirrors": ["http://{mirror}"]}}"#));
    let out = exec(engine.docker().args(["pull", "hello:v1"]));
    assert!(
        out.status.success(),
        "docker pull through the mirror: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let pulled = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        pulled.contains(digest_of(&hello).as_str()),
        "docker pull digest: {pulled}"
    );
    let digests = run(engine.docker().args([
        "image",
        "inspect",
        "--format",
        "{{json .RepoDigests}}",
        "hello:v1",
    ]));
    assert!(digests.contains(digest_of(&hello).as_str()), "{digests}");
    assert!(
        b.log_lines()
            .iter()
            .any(|l| l.contains("path=\"/v2/library/hello/manifests/v1\"")
                && l.contains("status=200")),
        "the engine never asked the mirror"
    );
    let _ = exec(engine.docker().args(["image", "rm", "-f", "hello:v1"]));
    drop(engine);
    // The pull filled the project's cache: it is there under the project's name.
    assert_eq!(
        raw_digest(&b.host, "hub/library/hello:v1", false),
        digest_of(&hello)
    );

    // podman and skopeo: a `[[registry.mirror]]` for docker.io.
    let conf = tmp.path().join("registries.conf");
    std::fs::write(
        &conf,
        format!("unqualified-search-registries = [\"docker.io\"]\n\n[[registry]]\nprefix = \"docker.io\"\nlocation = \"docker.io\"\n\n[[registry.mirror]]\nlocation = \"{mirror}\"\ninsecure = true\n"),
    )
    .expect("registries.conf");
    let root = tmp.path().join("podman");
    run(common::tools::podman(&root)
        .env("CONTAINERS_REGISTRIES_CONF", &conf)
        .args(["pull", "docker.io/team/app:1"]));
    let inspect: Value = serde_json::from_str(&run(common::tools::podman(&root).args([
        "image",
        "inspect",
        "docker.io/team/app:1",
    ])))
    .expect("json");
    assert_eq!(inspect[0]["Digest"], app["digest"], "podman digest");
    let out_dir = tmp.path().join("copied");
    run(skopeo()
        .arg("--registries-conf")
        .arg(&conf)
        .args([
            "copy",
            "--preserve-digests",
            "docker://docker.io/library/hello:v1",
        ])
        .arg(format!("oci:{}:v1", out_dir.display())));
    let index: Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("index.json")).expect("index"))
            .expect("json");
    assert_eq!(index["manifests"][0]["digest"], hello["digest"]);

    // A mirror host name serves pulls only, and no catalog.
    let m = format!("http://{mirror}");
    let (code, body) = http(
        "POST",
        &format!("{m}/v2/library/hello/blobs/uploads/"),
        &["-u", ADMIN],
    );
    assert_eq!(code, 405, "{body}");
    assert!(
        body.contains("UNSUPPORTED") && body.contains("mirror of project hub"),
        "{body}"
    );
    let (code, body) = http(
        "DELETE",
        &format!("{m}/v2/library/hello/manifests/v1"),
        &["-u", ADMIN],
    );
    assert_eq!(code, 405, "{body}");
    let (code, body) = http("GET", &format!("{m}/v2/_catalog"), &["-u", ADMIN]);
    assert_eq!(code, 404, "{body}");
    let (code, body) = http("GET", &format!("{m}/api/v2.0/projects"), &["-u", ADMIN]);
    assert_eq!(
        code, 404,
        "the management API is on the registry's own name: {body}"
    );
    // HEAD, and a proxy in front saying which name the client used (X-Forwarded-Host).
    let (code, _) = http(
        "HEAD",
        &format!("{m}/v2/library/hello/manifests/v1"),
        &[
            "-I",
            "-H",
            "Accept: application/vnd.oci.image.manifest.v1+json",
        ],
    );
    assert_eq!(code, 200);
    let (code, body) = http(
        "GET",
        &format!("{}/v2/library/hello/manifests/v1", b.url),
        &[
            "-H",
            &format!("X-Forwarded-Host: {mirror}"),
            "-H",
            "Accept: application/vnd.oci.image.manifest.v1+json",
        ],
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(sha256(body.as_bytes()), digest_of(&hello));
    // containerd says which registry it wants (`ns`): a cache of another one refuses.
    let (code, body) = http(
        "GET",
        &format!("{m}/v2/library/hello/manifests/v1?ns=ghcr.io"),
        &["-H", "Accept: application/vnd.oci.image.manifest.v1+json"],
    );
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("NAME_UNKNOWN"), "{body}");
    let (code, body) = http(
        "GET",
        &format!("{m}/v2/library/hello/manifests/v1?ns={}", up.host),
        &["-H", "Accept: application/vnd.oci.image.manifest.v1+json"],
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        raw_digest(&b.host, "hub/library/hello:v1", false),
        digest_of(&hello),
        "what the refusals left"
    );

    // A private project behind a mirror host name: an image pushed to it on the
    // registry's own host name, asked for by its name within the project.
    let push_app = |tag: &str| {
        run(skopeo()
            .args([
                "copy",
                "--preserve-digests",
                "--dest-tls-verify=false",
                "--dest-creds",
                ADMIN,
            ])
            .arg(format!("oci:{}:app", layout.dir.display()))
            .arg(format!("docker://{}/corp/tools/app:{tag}", b.host)))
    };
    push_app("2");
    let private = format!("private-mirror.test:{port}");
    let resolve = format!("private-mirror.test:{port}:127.0.0.1");
    let manifest_url = format!("http://{private}/v2/tools/app/manifests/2");
    let accept = "Accept: application/vnd.oci.image.manifest.v1+json";
    let out = curl(&[
        "-s",
        "-i",
        "--resolve",
        &resolve,
        "-H",
        accept,
        &manifest_url,
    ]);
    assert!(out.starts_with("HTTP/1.1 401"), "{out}");
    let challenge = out
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("www-authenticate:"))
        .unwrap_or_else(|| panic!("no challenge: {out}"));
    let realm = format!("http://{private}/service/token?mirror=corp");
    assert!(
        challenge.contains(&format!("realm=\"{realm}\""))
            && challenge.contains("scope=\"repository:tools/app:pull\""),
        "the challenge names the client's names and the mirror's realm: {challenge}"
    );
    // The token service maps the client's names into the project, pull only.
    let token = |who: Option<&str>| -> String {
        let url = format!("{realm}&service=berth-registry&scope=repository:tools/app:pull,push");
        let mut args = vec!["-s", "--resolve", &resolve];
        if let Some(w) = who {
            args.extend(["-u", w]);
        }
        args.push(&url);
        let v: Value = serde_json::from_str(&curl(&args)).expect("token json");
        v["token"].as_str().expect("token").to_string()
    };
    let claims = |t: &str| -> Value {
        use base64::Engine as _;
        let part = t.split('.').nth(1).expect("jwt");
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(part)
                .expect("b64"),
        )
        .expect("claims")
    };
    let admin_token = token(Some(ADMIN));
    assert_eq!(
        claims(&admin_token)["access"],
        json!([{"type": "repository", "name": "corp/tools/app", "actions": ["pull"]}])
    );
    let bearer = format!("Authorization: Bearer {admin_token}");
    let (code, body) = http(
        "GET",
        &manifest_url,
        &["--resolve", &resolve, "-H", accept, "-H", &bearer],
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(sha256(body.as_bytes()), digest_of(&app));
    // Tag lists page in the client's names (the `Link` of the next page too).
    push_app("3");
    let out = curl(&[
        "-s",
        "-i",
        "--resolve",
        &resolve,
        "-H",
        &bearer,
        &format!("http://{private}/v2/tools/app/tags/list?n=1"),
    ]);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(
        out.contains(r#"{"name":"tools/app","tags":["2"]}"#),
        "{out}"
    );
    let next = out
        .lines()
        .find_map(|l| {
            l.strip_prefix("link: <")
                .or_else(|| l.strip_prefix("Link: <"))
        })
        .and_then(|l| l.split_once('>'))
        .map(|(u, _)| u.to_string())
        .unwrap_or_else(|| panic!("no Link: {out}"));
    assert_eq!(next, "/v2/tools/app/tags/list?last=2&n=1");
    let (code, body) = http(
        "GET",
        &format!("http://{private}{next}"),
        &["--resolve", &resolve, "-H", &bearer],
    );
    assert_eq!(code, 200, "{body}");
    assert!(body.contains(r#""tags":["3"]"#), "{body}");
    // Pushing with that token on the registry's own host name is still refused: the
    // token holds pull only.
    let (code, _) = http(
        "POST",
        &format!("{}/v2/corp/tools/app/blobs/uploads/", b.url),
        &["-H", &bearer],
    );
    assert!(
        code == 401 || code == 403,
        "a push with a mirror token: {code}"
    );
    // Anonymous callers get nothing of a private project through its mirror.
    let anonymous = format!("Authorization: Bearer {}", token(None));
    let (code, body) = http(
        "GET",
        &manifest_url,
        &["--resolve", &resolve, "-H", accept, "-H", &anonymous],
    );
    assert!(code == 401 || code == 403, "{code}: {body}");
    // A realm naming a project no mirror host has is refused.
    let (code, body) = http(
        "GET",
        &format!(
            "{}/service/token?mirror=library&scope=repository:x:pull",
            b.url
        ),
        &[],
    );
    assert_eq!(code, 400, "{body}");
}
