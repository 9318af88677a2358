//! Black-box tests of the operations side: the debug server (`/debug/health`, Prometheus
//! metrics), health checks gating the main port, and `berth garbage-collect` run as a
//! separate process while the server serves, checked with skopeo pulls.

mod common;

use common::push::{
    digest_of, image_manifest, sha256, Registry, OCI_CONFIG, OCI_INDEX, OCI_LAYER, OCI_MANIFEST,
};
use common::{require_tool, run, Berth};
use oci::Digest;
use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn config(extra: &str) -> String {
    format!(
        "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: DATA\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:0\n  debug:\n    addr: 127.0.0.1:0\n    prometheus:\n      enabled: true\n{extra}"
    )
}

/// Poll `f` until it returns `Some`, failing after 20 s.
async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn status_of(c: &Client, url: &str) -> StatusCode {
    c.get(url).send().await.expect("send").status()
}

/// `/debug/health`: status and the failing checks.
async fn debug_health(c: &Client, debug: &str) -> (StatusCode, Value) {
    let r = c
        .get(format!("http://{debug}/debug/health"))
        .send()
        .await
        .expect("send");
    let status = r.status();
    (status, r.json().await.expect("health body is JSON"))
}

async fn assert_unavailable(c: &Client, url: &str) {
    let r = c.get(url).send().await.expect("send");
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE, "{url}");
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["errors"][0]["code"], "UNAVAILABLE", "{body}");
}

#[tokio::test]
async fn file_check_gates_the_main_port() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let down = tmp.path().join("down");
    let (b, debug) = Berth::start_with_debug(&config(&format!(
        "health:\n  file:\n    - file: {}\n      interval: 100ms\n",
        down.display()
    )));
    let c = Client::new();

    // Healthy: `/` is the liveness answer, the API works, /debug/health says {}.
    let r = c.get(format!("{}/", b.url)).send().await.expect("send");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.headers()
            .get("cache-control")
            .and_then(|v| v.to_str().ok()),
        Some("no-cache")
    );
    assert!(r.bytes().await.expect("body").is_empty());
    assert_eq!(
        status_of(&c, &format!("{}/v2/", b.url)).await,
        StatusCode::OK
    );
    assert_eq!(debug_health(&c, &debug).await, (StatusCode::OK, json!({})));

    // The file appears: within an interval every request on the main port gets 503.
    std::fs::write(&down, "maintenance").expect("write");
    let (_, failing) = eventually("the file check to fail", || async {
        let h = debug_health(&c, &debug).await;
        (h.0 == StatusCode::SERVICE_UNAVAILABLE).then_some(h)
    })
    .await;
    assert_eq!(
        failing[down.display().to_string()],
        "file exists",
        "{failing}"
    );
    for path in ["/", "/v2/", "/v2/some/repo/tags/list", "/nowhere"] {
        assert_unavailable(&c, &format!("{}{path}", b.url)).await;
    }
    // A request with a body the gate refuses unread gets the answer too, not a reset
    // connection (a chunk of a push to a node that just turned unhealthy).
    for (method, size) in [
        (reqwest::Method::PATCH, 64 * 1024),
        (reqwest::Method::PUT, 1000),
    ] {
        let r = c
            .request(
                method.clone(),
                format!("{}/v2/some/repo/blobs/uploads/x", b.url),
            )
            .header("content-type", "application/octet-stream")
            .body(vec![7u8; size])
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} with a body to the gated port: {e:?}"));
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE, "{method}");
        let body: Value = r.json().await.expect("json");
        assert_eq!(body["errors"][0]["code"], "UNAVAILABLE", "{body}");
    }

    // Removed: healthy again.
    std::fs::remove_file(&down).expect("remove");
    eventually("the main port to recover", || async {
        (status_of(&c, &format!("{}/v2/", b.url)).await == StatusCode::OK).then_some(())
    })
    .await;
    assert_eq!(debug_health(&c, &debug).await, (StatusCode::OK, json!({})));
    assert_eq!(status_of(&c, &format!("{}/", b.url)).await, StatusCode::OK);
}

#[tokio::test]
async fn tcp_check_follows_a_listener() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let (b, debug) = Berth::start_with_debug(&config(&format!(
        "health:\n  tcp:\n    - addr: {addr}\n      timeout: 1s\n      interval: 100ms\n      threshold: 2\n"
    )));
    let c = Client::new();
    // The check connects (twice) while the listener is open: it stays healthy.
    listener.set_nonblocking(true).expect("nonblocking");
    let mut accepted = 0;
    eventually("two checks against the open listener", || {
        accepted += usize::from(listener.accept().is_ok());
        let done = accepted >= 2;
        async move { done.then_some(()) }
    })
    .await;
    assert_eq!(debug_health(&c, &debug).await, (StatusCode::OK, json!({})));
    assert_eq!(
        status_of(&c, &format!("{}/v2/", b.url)).await,
        StatusCode::OK
    );

    drop(listener);
    let (_, failing) = eventually("the tcp check to fail", || async {
        let h = debug_health(&c, &debug).await;
        (h.0 == StatusCode::SERVICE_UNAVAILABLE).then_some(h)
    })
    .await;
    assert_eq!(
        failing[addr.as_str()],
        format!("connection to {addr} failed"),
        "{failing}"
    );
    assert_unavailable(&c, &format!("{}/v2/", b.url)).await;

    // The service comes back on the same address: healthy again.
    let _listener = std::net::TcpListener::bind(&addr).expect("rebind the same address");
    eventually("the tcp check to pass", || async {
        (status_of(&c, &format!("{}/v2/", b.url)).await == StatusCode::OK).then_some(())
    })
    .await;
}

/// A tiny HTTP server on a thread: answers every request with the status in `status`
/// and records the request heads it got.
fn downstream(
    status: std::sync::Arc<std::sync::atomic::AtomicU16>,
) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { break };
            let mut buf = [0u8; 2048];
            let n = conn.read(&mut buf).unwrap_or(0);
            log.lock()
                .expect("lock")
                .push(String::from_utf8_lossy(&buf[..n]).into_owned());
            let code = status.load(std::sync::atomic::Ordering::SeqCst);
            let _ = write!(conn, "HTTP/1.1 {code} X\r\nContent-Length: 0\r\n\r\n");
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn http_check_follows_a_downstream_service() {
    use std::sync::atomic::{AtomicU16, Ordering};
    let status = std::sync::Arc::new(AtomicU16::new(200));
    let (addr, seen) = downstream(status.clone());
    let uri = format!("http://{addr}/healthz");
    let (b, debug) = Berth::start_with_debug(&config(&format!(
        "health:\n  http:\n    - uri: {uri}\n      headers:\n        X-Check: [berth]\n      statuscode: 200\n      timeout: 2s\n      interval: 100ms\n"
    )));
    let c = Client::new();
    eventually("the first check", || async {
        (!seen.lock().expect("lock").is_empty()).then_some(())
    })
    .await;
    let head = seen.lock().expect("lock")[0].clone();
    assert!(head.starts_with("HEAD /healthz HTTP/1.1\r\n"), "{head}");
    assert!(head.contains("X-Check: berth\r\n"), "{head}");
    assert_eq!(
        status_of(&c, &format!("{}/v2/", b.url)).await,
        StatusCode::OK
    );

    status.store(503, Ordering::SeqCst);
    let (_, failing) = eventually("the http check to fail", || async {
        let h = debug_health(&c, &debug).await;
        (h.0 == StatusCode::SERVICE_UNAVAILABLE).then_some(h)
    })
    .await;
    assert_eq!(
        failing[uri.as_str()],
        "downstream service returned unexpected status: 503"
    );
    assert_unavailable(&c, &format!("{}/v2/", b.url)).await;

    status.store(200, Ordering::SeqCst);
    eventually("the http check to pass", || async {
        (status_of(&c, &format!("{}/v2/", b.url)).await == StatusCode::OK).then_some(())
    })
    .await;
}

/// The value of the sample `name{labels}` (labels as Prometheus prints them), or 0.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

/// The debug server's Prometheus text.
async fn scrape(c: &Client, debug: &str) -> String {
    let r = c
        .get(format!("http://{debug}/metrics"))
        .send()
        .await
        .expect("metrics");
    assert_eq!(r.status(), StatusCode::OK);
    r.text().await.expect("text")
}

#[tokio::test]
async fn metrics_move_with_pushes_and_pulls() {
    let (b, debug) = Berth::start_with_debug(&config(""));
    let c = Client::new();
    let metrics = || scrape(&c, &debug);
    let before = metrics().await;
    assert!(before.contains("# TYPE berth_blobs gauge"), "{before}");
    assert_eq!(sample(&before, "berth_blobs"), 0.0);

    // Push one blob and pull it twice.
    let data = vec![7u8; 5000];
    let d = Registry::with_client(c.clone(), &b.url)
        .push_blob("metrics/test", &data)
        .await;
    for _ in 0..2 {
        let r = c
            .get(format!("{}/v2/metrics/test/blobs/{d}", b.url))
            .send()
            .await
            .expect("send");
        assert_eq!(r.bytes().await.expect("body").len(), 5000);
    }
    let after = metrics().await;
    assert!(
        after.contains("# TYPE registry_http_requests_total counter"),
        "{after}"
    );
    assert_eq!(
        sample(
            &after,
            r#"registry_http_requests_total{code="201",handler="blob_upload",method="post"}"#
        ),
        1.0,
        "{after}"
    );
    assert_eq!(
        sample(
            &after,
            r#"registry_http_requests_total{code="200",handler="blob",method="get"}"#
        ),
        2.0
    );
    assert_eq!(
        sample(
            &after,
            r#"registry_http_request_duration_seconds_count{handler="blob",method="get"}"#
        ),
        2.0
    );
    assert_eq!(
        sample(
            &after,
            r#"berth_http_received_bytes_total{handler="blob_upload"}"#
        ),
        5000.0
    );
    assert_eq!(
        sample(&after, r#"berth_http_sent_bytes_total{handler="blob"}"#),
        10000.0
    );
    assert_eq!(sample(&after, "berth_blobs"), 1.0);
    assert_eq!(sample(&after, "berth_blob_bytes"), 5000.0);
    assert_eq!(sample(&after, "berth_repositories"), 1.0);
    assert_eq!(
        sample(
            &after,
            r#"registry_http_in_flight_requests{handler="blob"}"#
        ),
        0.0
    );

    // An open upload session shows; metrics are not served on the main port.
    let r = c
        .post(format!("{}/v2/metrics/test/blobs/uploads/", b.url))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(sample(&metrics().await, "berth_uploads_in_progress"), 1.0);
    assert_eq!(
        status_of(&c, &format!("{}/metrics", b.url)).await,
        StatusCode::NOT_FOUND
    );

    // Garbage collection: the latest run's outcome (the pushed blob is referenced by
    // nothing, so a collection without grace period takes it).
    let none = metrics().await;
    assert!(
        none.contains("# TYPE berth_gc_last_run_success gauge"),
        "{none}"
    );
    assert_eq!(sample(&none, "berth_gc_last_run_start_seconds"), 0.0);
    gc(&b, &["--grace", "0s"]);
    let after_gc = metrics().await;
    assert_eq!(sample(&after_gc, "berth_gc_last_run_success"), 1.0);
    assert_eq!(sample(&after_gc, "berth_gc_last_run_deleted_blobs"), 1.0);
    assert_eq!(
        sample(&after_gc, "berth_gc_last_run_freed_bytes"),
        data.len() as f64
    );
    assert_eq!(sample(&after_gc, "berth_gc_running"), 0.0);
    assert!(sample(&after_gc, "berth_gc_last_run_end_seconds") > 1.7e9);
}

// ---------------------------------------------------------------------------------------
// garbage-collect
// ---------------------------------------------------------------------------------------

struct Pusher {
    c: Client,
    url: String,
}

impl Pusher {
    fn reg(&self) -> Registry {
        Registry::with_client(self.c.clone(), &self.url)
    }

    async fn blob(&self, repo: &str, data: &[u8]) -> Value {
        let d = self.reg().push_blob(repo, data).await;
        json!({"mediaType": OCI_LAYER, "digest": d.as_str(), "size": data.len()})
    }

    async fn manifest(&self, repo: &str, reference: &str, media_type: &str, m: &Value) -> Value {
        let bytes = serde_json::to_vec(m).expect("json");
        let r = self
            .reg()
            .put_manifest(repo, reference, media_type, &bytes)
            .await;
        assert_eq!(r.status(), StatusCode::CREATED, "push manifest {m}");
        json!({"mediaType": media_type, "digest": sha256(&bytes).as_str(), "size": bytes.len()})
    }

    /// An image whose layers are `layers` (pushed as blobs); tagged `tag` if given.
    async fn image(&self, repo: &str, tag: Option<&str>, arch: &str, layers: &[&[u8]]) -> Value {
        // The layers make each config unique, so configs are not shared between images.
        let seed: Vec<String> = layers.iter().map(|l| sha256(l).to_string()).collect();
        let cfg = json!({"architecture": arch, "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}, "seed": seed});
        let mut cdesc = self
            .blob(repo, &serde_json::to_vec(&cfg).expect("json"))
            .await;
        cdesc["mediaType"] = json!(OCI_CONFIG);
        let mut ls = Vec::new();
        for l in layers {
            ls.push(self.blob(repo, l).await);
        }
        let m =
            json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": cdesc, "layers": ls});
        let bytes = serde_json::to_vec(&m).expect("json");
        let reference = tag
            .map(str::to_string)
            .unwrap_or_else(|| sha256(&bytes).to_string());
        self.manifest(repo, &reference, OCI_MANIFEST, &m).await
    }
}

fn blob_file(b: &Berth, d: &Digest) -> PathBuf {
    let hex = d.hex();
    b.data_dir().join("blobs/sha256").join(&hex[..2]).join(hex)
}

/// Run `berth garbage-collect ARGS CONFIG` as its own process; returns stdout.
fn gc(b: &Berth, args: &[&str]) -> String {
    run(Command::new(common::berth_bin())
        .arg("garbage-collect")
        .args(args)
        .arg(b.config_path())
        .env("NO_COLOR", "1"))
}

fn skopeo_pulls(b: &Berth, image: &str, all: bool) {
    require_tool("skopeo");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cmd = Command::new("skopeo");
    cmd.args(["copy", "--src-tls-verify=false"]);
    if all {
        cmd.arg("--all");
    }
    cmd.arg(format!("docker://{}/{image}", b.host))
        .arg(format!("oci:{}:x", dir.path().display()));
    run(&mut cmd);
}

#[tokio::test]
async fn garbage_collect_while_serving() {
    let b = Berth::start();
    let p = Pusher {
        c: Client::new(),
        url: b.url.clone(),
    };
    let shared: &[u8] = b"shared layer";
    let a = p
        .image("app", Some("a"), "amd64", &[b"layer a", shared])
        .await;
    let only_b: &[u8] = b"layer only in b";
    let img_b = p.image("app", Some("b"), "amd64", &[only_b, shared]).await;
    let img_b_config = config_of(&p, "app", &img_b).await;
    p.image("other", Some("c"), "amd64", &[shared, b"layer c"])
        .await;
    // A multi-arch index: untagged children, tagged index.
    let amd = p.image("multi", None, "amd64", &[b"amd64 layer"]).await;
    let arm = p.image("multi", None, "arm64", &[b"arm64 layer"]).await;
    let mut amd_p = amd.clone();
    amd_p["platform"] = json!({"architecture": "amd64", "os": "linux"});
    let mut arm_p = arm.clone();
    arm_p["platform"] = json!({"architecture": "arm64", "os": "linux"});
    let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [amd_p, arm_p]});
    p.manifest("multi", "latest", OCI_INDEX, &index).await;
    // An artifact whose subject is image a (untagged, found through the referrers API).
    let sig_blob = p.blob("app", b"signature payload").await;
    let empty = p.blob("app", b"{}").await;
    let artifact = json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.example.signature",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty["digest"], "size": 2},
        "layers": [sig_blob],
        "subject": a,
    });
    let art_bytes = serde_json::to_vec(&artifact).expect("json");
    let art = p
        .manifest(
            "app",
            &sha256(&art_bytes).to_string(),
            OCI_MANIFEST,
            &artifact,
        )
        .await;
    // An untagged manifest nothing reaches, with its own layer.
    let orphan_layer: &[u8] = b"orphan layer";
    let orphan = p.image("app", None, "amd64", &[orphan_layer]).await;

    // Delete image b: its config and its own layer become garbage, the shared one not.
    let r =
        p.c.request(
            Method::DELETE,
            format!(
                "{}/v2/app/manifests/{}",
                b.url,
                img_b["digest"].as_str().expect("d")
            ),
        )
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let b_config = img_b_config.clone();
    for d in [sha256(only_b), b_config.clone()] {
        assert!(blob_file(&b, &d).exists(), "{d} is stored before GC");
    }

    // Dry run: reports, deletes nothing.
    let out = gc(&b, &["--dry-run", "--grace", "0s"]);
    assert!(
        out.contains(&format!(
            "app: marking manifest {} ",
            a["digest"].as_str().expect("d")
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!("blob eligible for deletion: {}", sha256(only_b))),
        "{out}"
    );
    assert!(
        out.contains(&format!("blob eligible for deletion: {b_config}")),
        "{out}"
    );
    assert!(
        out.contains("blobs marked, 2 blobs and 0 manifests eligible for deletion"),
        "{out}"
    );
    assert!(
        blob_file(&b, &sha256(only_b)).exists(),
        "dry run deletes nothing"
    );

    // Default grace period (1h): everything was just pushed, so nothing is deleted.
    let out = gc(&b, &[]);
    assert!(out.contains("deleted 0 blobs"), "{out}");
    assert!(
        blob_file(&b, &sha256(only_b)).exists(),
        "fresh blobs are kept"
    );

    // Real run, while the server serves: the unreferenced blobs go, nothing else.
    let out = gc(&b, &["--grace", "0s"]);
    assert!(out.contains("deleted 2 blobs"), "{out}");
    assert!(
        !blob_file(&b, &sha256(only_b)).exists(),
        "unreferenced layer deleted"
    );
    assert!(
        !blob_file(&b, &b_config).exists(),
        "unreferenced config deleted"
    );
    assert!(out.contains("bytes freed"), "{out}");
    let r =
        p.c.get(format!("{}/v2/app/blobs/{}", b.url, sha256(only_b)))
            .send()
            .await
            .expect("send");
    assert_eq!(
        r.status(),
        StatusCode::NOT_FOUND,
        "a collected blob is unknown, not broken"
    );
    for d in [
        sha256(shared),
        sha256(b"layer a"),
        sha256(b"layer c"),
        sha256(orphan_layer),
    ] {
        assert!(blob_file(&b, &d).exists(), "{d} is still referenced");
    }
    skopeo_pulls(&b, "app:a", false);
    skopeo_pulls(&b, "other:c", false);
    skopeo_pulls(&b, "multi:latest", true);

    // --delete-untagged: the orphan manifest and its layer go; index children and the
    // referrer of a tagged image stay.
    let out = gc(&b, &["--delete-untagged", "--grace", "0s"]);
    assert!(
        out.contains(&format!(
            "manifest eligible for deletion: {}",
            orphan["digest"].as_str().expect("d")
        )),
        "{out}"
    );
    assert!(
        out.contains("and 1 manifests eligible for deletion"),
        "{out}"
    );
    assert!(
        !blob_file(&b, &sha256(orphan_layer)).exists(),
        "orphan's layer deleted"
    );
    let status = |repo: &'static str, desc: Value| {
        let c = p.c.clone();
        let url = format!(
            "{}/v2/{repo}/manifests/{}",
            b.url,
            desc["digest"].as_str().expect("d")
        );
        async move {
            c.get(url)
                .header("accept", format!("{OCI_MANIFEST}, {OCI_INDEX}"))
                .send()
                .await
                .expect("send")
                .status()
        }
    };
    assert_eq!(status("app", orphan.clone()).await, StatusCode::NOT_FOUND);
    assert_eq!(status("multi", amd.clone()).await, StatusCode::OK);
    assert_eq!(status("multi", arm.clone()).await, StatusCode::OK);
    assert_eq!(status("app", art.clone()).await, StatusCode::OK);
    for d in [
        digest_of(&sig_blob),
        sha256(b"amd64 layer"),
        sha256(b"arm64 layer"),
    ] {
        assert!(blob_file(&b, &d).exists(), "{d} is reachable and kept");
    }
    skopeo_pulls(&b, "multi:latest", true);
    skopeo_pulls(&b, "app:a", false);
    let r =
        p.c.get(format!("{}/v2/app/blobs/{}", b.url, digest_of(&sig_blob)))
            .send()
            .await
            .expect("send");
    assert_eq!(
        r.status(),
        StatusCode::OK,
        "the referrer's layer still pulls"
    );
}

/// The config digest of an image manifest, read back from the registry.
async fn config_of(p: &Pusher, repo: &str, desc: &Value) -> Digest {
    let m: Value =
        p.c.get(format!(
            "{}/v2/{repo}/manifests/{}",
            p.url,
            desc["digest"].as_str().expect("d")
        ))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    digest_of(&m["config"])
}

/// One image of the load below: its manifest and every blob it references.
struct Pushed {
    repo: String,
    tag: String,
    manifest: Vec<u8>,
    blobs: Vec<Vec<u8>>,
}

/// Push `data` as a blob of `repo`: every fourth time by mounting it from `from` (a 202
/// answer — the blob was collected meanwhile — falls back to an upload), else by a
/// monolithic upload even when the registry has it (a re-upload of the same bytes).
async fn load_blob(c: &Client, url: &str, repo: &str, data: &[u8], mount_from: Option<&str>) {
    let d = sha256(data);
    if let Some(from) = mount_from {
        let r = c
            .post(format!(
                "{url}/v2/{repo}/blobs/uploads/?mount={d}&from={from}"
            ))
            .send()
            .await
            .expect("send");
        match r.status() {
            StatusCode::CREATED => return,
            StatusCode::ACCEPTED => {}
            s => panic!("mount answered {s}"),
        }
    }
    Registry::with_client(c.clone(), url)
        .push_blob(repo, data)
        .await;
}

/// PUT `manifest` as `repo:tag`, pushing `blobs` first, and again (blobs included) while
/// the push is refused with MANIFEST_BLOB_UNKNOWN (a collection with no grace period may
/// take a layer pushed but not yet referenced: the spec's answer, the client pushes
/// again), at most `attempts` times; the number of retries.
async fn push_with_retries(
    c: &Client,
    url: &str,
    (repo, tag): (&str, &str),
    blobs: &[(&[u8], Option<&str>)],
    manifest: &[u8],
    attempts: usize,
) -> usize {
    let mut retries = 0;
    loop {
        for (blob, mount) in blobs {
            load_blob(c, url, repo, blob, *mount).await;
        }
        let r = c
            .put(format!("{url}/v2/{repo}/manifests/{tag}"))
            .header("content-type", OCI_MANIFEST)
            .body(manifest.to_vec())
            .send()
            .await
            .expect("send");
        let status = r.status();
        if status == StatusCode::CREATED {
            return retries;
        }
        let text = r.text().await.unwrap_or_default();
        assert!(
            status == StatusCode::BAD_REQUEST && text.contains("MANIFEST_BLOB_UNKNOWN"),
            "manifest push answered {status}: {text}"
        );
        retries += 1;
        assert!(
            retries < attempts,
            "image {repo}:{tag} refused {attempts} times: {text}"
        );
    }
}

/// Every pushed image serves its manifest bytes and every blob with its digest.
async fn assert_served(c: &Client, url: &str, pushed: &[Pushed]) {
    for p in pushed {
        let r = c
            .get(format!("{url}/v2/{}/manifests/{}", p.repo, p.tag))
            .header("accept", OCI_MANIFEST)
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), StatusCode::OK, "{}:{}", p.repo, p.tag);
        assert_eq!(
            r.bytes().await.expect("body").as_ref(),
            p.manifest.as_slice()
        );
        for blob in &p.blobs {
            let d = sha256(blob);
            let r = c
                .get(format!("{url}/v2/{}/blobs/{d}", p.repo))
                .send()
                .await
                .expect("send");
            assert_eq!(r.status(), StatusCode::OK, "{}:{} blob {d}", p.repo, p.tag);
            assert_eq!(
                sha256(&r.bytes().await.expect("body")),
                d,
                "{}:{} blob {d}",
                p.repo,
                p.tag
            );
        }
    }
}

/// The pause between two collections of the stress tests (see
/// `garbage_collect_during_continuous_pushes`).
const PAUSE_BETWEEN_COLLECTIONS: Duration = Duration::from_millis(50);

/// 200 small images pushed in a loop (a shared layer uploaded again each time or
/// mounted, a layer and a config of their own), retrying an image whose manifest push is
/// refused with MANIFEST_BLOB_UNKNOWN (a collection with no grace period may take a
/// layer pushed but not yet referenced: the spec's answer, the client pushes again).
async fn push_load(url: String) -> (Vec<Pushed>, usize) {
    let c = Client::new();
    let shared: &[u8] = b"the base layer every image of the load shares";
    let mut pushed = Vec::new();
    let mut retries = 0;
    for i in 0..200 {
        let repo = format!("load/app{}", i % 4);
        let layer = format!("layer of image {i}").into_bytes();
        let cfg = serde_json::to_vec(&json!({"architecture": "amd64", "os": "linux", "seed": i}))
            .expect("json");
        let m = json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha256(&cfg).as_str(), "size": cfg.len()},
        "layers": [
            {"mediaType": OCI_LAYER, "digest": sha256(shared).as_str(), "size": shared.len()},
            {"mediaType": OCI_LAYER, "digest": sha256(&layer).as_str(), "size": layer.len()},
        ]});
        let manifest = serde_json::to_vec(&m).expect("json");
        let tag = format!("v{i}");
        let from = format!("load/app{}", (i + 1) % 4);
        let mount = (i % 4 == 0 && i > 0).then_some(from.as_str());
        let blobs = [(shared, mount), (&layer[..], None), (&cfg[..], None)];
        retries += push_with_retries(&c, &url, (&repo, &tag), &blobs, &manifest, 40).await;
        pushed.push(Pushed {
            repo,
            tag,
            manifest,
            blobs: vec![shared.to_vec(), layer, cfg],
        });
    }
    (pushed, retries)
}

/// `berth garbage-collect` run again and again (no grace period, so it sweeps blobs the
/// pushes just wrote) while a client pushes 200 images: every run finishes without error
/// ("database is locked" included), every image whose push succeeded stays complete, and
/// the garbage seeded before is collected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_collect_during_continuous_pushes() {
    let b = Berth::start();
    let c = Client::new();
    let mut garbage = Vec::new();
    for i in 0..20 {
        let data = format!("garbage blob {i}").into_bytes();
        load_blob(&c, &b.url, "garbage/x", &data, None).await;
        garbage.push(sha256(&data));
    }

    let pusher = tokio::spawn(push_load(b.url.clone()));
    let config = b.config_path();
    let mut runs = 0;
    while !pusher.is_finished() {
        let config = config.clone();
        let out = tokio::task::spawn_blocking(move || {
            run(Command::new(common::berth_bin())
                .args(["garbage-collect", "--grace", "0s"])
                .arg(config)
                .env("NO_COLOR", "1"))
        })
        .await
        .expect("join");
        assert!(out.contains("blobs marked"), "report: {out}");
        runs += 1;
        // A breath between runs, as any schedule leaves: with a zero grace period, a
        // collection that starts between a push's blobs and its manifest takes the
        // blobs (the spec's MANIFEST_BLOB_UNKNOWN, then a retry), and back-to-back runs
        // on a slow machine could refuse the same image every time.
        tokio::time::sleep(PAUSE_BETWEEN_COLLECTIONS).await;
    }
    let (pushed, retries) = pusher.await.expect("pusher");
    assert!(runs >= 2, "only {runs} collections overlapped the pushes");
    // And once more after the load, with nothing in flight.
    gc(&b, &["--grace", "0s"]);
    eprintln!("{runs} collections during the pushes; {retries} manifest pushes retried");

    for d in &garbage {
        assert!(!blob_file(&b, d).exists(), "garbage blob {d} was collected");
    }
    assert_served(&c, &b.url, &pushed).await;
    let missing: Vec<String> = b
        .log_lines()
        .into_iter()
        .filter(|l| l.contains("missing from storage"))
        .collect();
    assert!(
        missing.is_empty(),
        "linked blobs without a file: {missing:?}"
    );
}

/// Proof under load: 200 collections back to back (no grace period, untagged manifests
/// deleted) while 4 clients push images that share a pool of layers and delete most of
/// them again, so temporary layers go unreferenced and are pushed again while
/// collections take them. Afterwards every image whose
/// push succeeded and that was not deleted pulls with the right digests, every deleted
/// one is gone, and no link points at a missing file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_collections_while_clients_push_share_and_delete() {
    const ROUNDS: usize = 200;
    let b = Berth::start();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for client in 0..4 {
        let url = b.url.clone();
        let done = done.clone();
        clients.push(tokio::spawn(async move {
            let c = Client::new();
            let pool: Vec<Vec<u8>> = (0..12)
                .map(|k| format!("pool layer {k}").into_bytes())
                .collect();
            let repo = format!("stress/app{client}");
            let (mut alive, mut deleted, mut retries) = (Vec::new(), Vec::new(), 0usize);
            let mut i = 0usize;
            // Every tenth image is kept and uses only pool layers; the others each use a
            // temporary layer (one of three per client) and are deleted once the next
            // one is pushed, so a temporary layer goes unreferenced, may be collected,
            // and is pushed again three images later.
            let temp: Vec<Vec<u8>> = (0..3)
                .map(|k| format!("temporary layer {k} of client {client}").into_bytes())
                .collect();
            let mut transient: Option<Pushed> = None;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let keep = i.is_multiple_of(10);
                let second = if keep {
                    &pool[(i * 5 + client + 3) % 12]
                } else {
                    &temp[i % 3]
                };
                let layers = [&pool[i % 12], second];
                let cfg = serde_json::to_vec(&json!({"architecture": "amd64", "os": "linux", "client": client, "seed": i}))
                    .expect("json");
                let m = json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                    "config": {"mediaType": OCI_CONFIG, "digest": sha256(&cfg).as_str(), "size": cfg.len()},
                    "layers": layers.iter().map(|l| json!({"mediaType": OCI_LAYER, "digest": sha256(l).as_str(), "size": l.len()})).collect::<Vec<_>>()});
                let manifest = serde_json::to_vec(&m).expect("json");
                let tag = format!("v{i}");
                let blobs = [
                    (layers[0].as_slice(), None),
                    (layers[1].as_slice(), None),
                    (&cfg[..], None),
                ];
                retries += push_with_retries(&c, &url, (&repo, &tag), &blobs, &manifest, 40).await;
                let this = Pushed {
                    repo: repo.clone(),
                    tag,
                    manifest: manifest.clone(),
                    blobs: vec![layers[0].clone(), layers[1].clone(), cfg],
                };
                if keep {
                    alive.push(this);
                } else if let Some(gone) = transient.replace(this) {
                    let r = c
                        .delete(format!(
                            "{url}/v2/{}/manifests/{}",
                            gone.repo,
                            sha256(&gone.manifest)
                        ))
                        .send()
                        .await
                        .expect("send");
                    assert_eq!(r.status(), StatusCode::ACCEPTED, "delete {}:{}", gone.repo, gone.tag);
                    deleted.push(gone);
                }
                i += 1;
            }
            alive.extend(transient);
            (alive, deleted, retries)
        }));
    }
    let config = b.config_path();
    let mut rounds = 0;
    let started = Instant::now();
    while rounds < ROUNDS && started.elapsed() < Duration::from_secs(300) {
        assert!(
            clients.iter().all(|c| !c.is_finished()),
            "a client stopped early"
        );
        let config = config.clone();
        let out = tokio::task::spawn_blocking(move || {
            run(Command::new(common::berth_bin())
                .args(["garbage-collect", "--grace", "0s", "--delete-untagged"])
                .arg(config)
                .env("NO_COLOR", "1"))
        })
        .await
        .expect("join");
        assert!(out.contains("blobs marked"), "report: {out}");
        rounds += 1;
        tokio::time::sleep(PAUSE_BETWEEN_COLLECTIONS).await;
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut alive, mut deleted, mut retries) = (Vec::new(), Vec::new(), 0);
    for client in clients {
        let (a, d, r) = client.await.expect("client");
        alive.extend(a);
        deleted.extend(d);
        retries += r;
    }
    // Before any further collection: every blob of every image pushed, deleted ones
    // included, is either served with its bytes or answered 404, never linked without
    // its file (a read of such a link logs "missing from storage", checked below).
    let c = Client::new();
    for p in alive.iter().chain(&deleted) {
        for blob in &p.blobs {
            let d = sha256(blob);
            let r = c
                .get(format!("{}/v2/{}/blobs/{d}", b.url, p.repo))
                .send()
                .await
                .expect("send");
            match r.status() {
                StatusCode::OK => assert_eq!(sha256(&r.bytes().await.expect("body")), d),
                StatusCode::NOT_FOUND => {}
                s => panic!("{}:{} blob {d} answered {s}", p.repo, p.tag),
            }
        }
    }
    gc(&b, &["--grace", "0s", "--delete-untagged"]);
    eprintln!(
        "{rounds} collections while {} images were pushed and {} deleted; {retries} manifest pushes retried",
        alive.len() + deleted.len(),
        deleted.len()
    );
    assert_eq!(rounds, ROUNDS, "collections in {:?}", started.elapsed());
    assert!(deleted.len() > 100 && alive.len() > 20, "too little load");
    assert_served(&c, &b.url, &alive).await;
    for p in &deleted {
        let r = c
            .get(format!(
                "{}/v2/{}/manifests/{}",
                b.url,
                p.repo,
                sha256(&p.manifest)
            ))
            .header("accept", OCI_MANIFEST)
            .send()
            .await
            .expect("send");
        assert_eq!(
            r.status(),
            StatusCode::NOT_FOUND,
            "deleted {}:{}",
            p.repo,
            p.tag
        );
    }
    let missing: Vec<String> = b
        .log_lines()
        .into_iter()
        .filter(|l| l.contains("missing from storage"))
        .collect();
    assert!(
        missing.is_empty(),
        "linked blobs without a file: {missing:?}"
    );
}

/// A schedule in the configuration (`storage.maintenance.garbagecollect`; no
/// `auth.berth`, so no API): the node collects at its ticks by itself, and the run's
/// outcome shows in the metrics.
#[tokio::test]
async fn a_configured_schedule_collects_by_itself() {
    let yaml = config("").replace(
        "  delete:\n",
        "  maintenance:\n    garbagecollect:\n      schedule: \"*/2 * * * * *\"\n      grace: 0s\n  delete:\n",
    );
    let (b, debug) = Berth::start_with_debug(&yaml);
    let c = Client::new();
    let data = b"a blob the schedule collects".to_vec();
    load_blob(&c, &b.url, "sched/app", &data, None).await;
    let d = sha256(&data);
    eventually("the scheduled collection", || async {
        (!blob_file(&b, &d).exists()).then_some(())
    })
    .await;
    let text = eventually("the run's metrics", || async {
        let text = c
            .get(format!("http://{debug}/metrics"))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        (sample(&text, "berth_gc_last_run_deleted_blobs") >= 1.0).then_some(text)
    })
    .await;
    assert_eq!(sample(&text, "berth_gc_last_run_success"), 1.0);
    // The schedule keeps running: later runs (nothing left to delete) succeed too.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let text = scrape(&c, &debug).await;
    assert_eq!(sample(&text, "berth_gc_last_run_success"), 1.0);
    assert_eq!(sample(&text, "berth_gc_running"), 0.0);
}

/// A node in read-only mode follows no schedule: a schedule of every second records no
/// run in 3 s (a writable node's first run comes within about 1 s, as above).
#[tokio::test]
async fn a_read_only_node_collects_nothing_on_a_schedule() {
    let yaml = config("").replace(
        "  delete:\n",
        "  maintenance:\n    readonly:\n      enabled: true\n    garbagecollect:\n      schedule: \"* * * * * *\"\n      grace: 0s\n  delete:\n",
    );
    let (_b, debug) = Berth::start_with_debug(&yaml);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let text = scrape(&Client::new(), &debug).await;
    assert_eq!(
        sample(&text, "berth_gc_last_run_start_seconds"),
        0.0,
        "no run"
    );
}

/// Each project's quota and usage are exported, and follow pushes.
#[tokio::test]
async fn quota_metrics() {
    let (b, debug) = Berth::start_with_debug(&config(
        "auth:\n  berth:\n    adminpassword: Harbor12345\n    storagequota: 1MiB\n",
    ));
    let c = Client::new();
    let r = c
        .post(format!("{}/api/v2.0/projects", b.url))
        .basic_auth("admin", Some("Harbor12345"))
        .json(&json!({"project_name": "metered"}))
        .send()
        .await
        .expect("create");
    assert_eq!(r.status(), StatusCode::CREATED);
    Registry::new(&b.url)
        .with_auth("admin", "Harbor12345")
        .push_blob("metered/app", &[1u8; 1234])
        .await;
    let text = scrape(&c, &debug).await;
    assert_eq!(
        sample(&text, "berth_project_quota_used_bytes{project=\"metered\"}"),
        1234.0,
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "berth_project_quota_limit_bytes{project=\"metered\"}"
        ),
        1048576.0
    );
}

/// A method outside the API is counted under `method="other"`, never under its own
/// name (any client could otherwise create series without bound).
#[tokio::test]
async fn metrics_label_unknown_methods_other() {
    let (b, debug) = Berth::start_with_debug(&config(""));
    let c = Client::new();
    for method in ["BREW", "PROPFIND", "BREW"] {
        let m = Method::from_bytes(method.as_bytes()).expect("method");
        let r = c
            .request(m, format!("{}/v2/", b.url))
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), StatusCode::OK, "/v2/ answers any method");
    }
    let r = c
        .request(
            Method::from_bytes(b"BREW").expect("method"),
            format!("{}/v2/some/repo/manifests/latest", b.url),
        )
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    let text = c
        .get(format!("http://{debug}/metrics"))
        .send()
        .await
        .expect("send")
        .text()
        .await
        .expect("text");
    assert_eq!(
        sample(
            &text,
            r#"registry_http_requests_total{code="200",handler="base",method="other"}"#
        ),
        3.0,
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            r#"registry_http_requests_total{code="405",handler="manifest",method="other"}"#
        ),
        1.0,
        "{text}"
    );
    assert!(
        !text.contains("brew") && !text.contains("BREW") && !text.contains("propfind"),
        "{text}"
    );
}

/// Tag retention's gauges: per project, the latest finished real run's end, success and
/// artifacts deleted.
#[tokio::test]
async fn retention_metrics() {
    let (b, debug) =
        Berth::start_with_debug(&config("auth:\n  berth:\n    adminpassword: Harbor12345\n"));
    let c = Client::new();
    let api = |path: &str| format!("{}/api/v2.0{path}", b.url);
    let r = c
        .post(api("/projects"))
        .basic_auth("admin", Some("Harbor12345"))
        .json(&json!({"project_name": "pruned"}))
        .send()
        .await
        .expect("create");
    assert_eq!(r.status(), StatusCode::CREATED);
    let reg = Registry::new(&b.url).with_auth("admin", "Harbor12345");
    for tag in ["old", "new"] {
        let config = format!("{{\"tag\":\"{tag}\"}}").into_bytes();
        let layer = format!("layer {tag}").into_bytes();
        reg.push_blob("pruned/app", &config).await;
        reg.push_blob("pruned/app", &layer).await;
        let m = serde_json::to_vec(&image_manifest(&config, &layer)).expect("json");
        let r = reg.put_manifest("pruned/app", tag, OCI_MANIFEST, &m).await;
        assert_eq!(r.status(), StatusCode::CREATED);
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    let project: Value = c
        .get(api("/projects/pruned"))
        .basic_auth("admin", Some("Harbor12345"))
        .send()
        .await
        .expect("project")
        .json()
        .await
        .expect("json");
    let selector =
        |d: &str, p: &str| json!([{"kind": "doublestar", "decoration": d, "pattern": p}]);
    let r = c
        .post(api("/retentions"))
        .basic_auth("admin", Some("Harbor12345"))
        .json(&json!({
            "algorithm": "or",
            "rules": [{"template": "latestPushedK", "params": {"latestPushedK": 1},
                       "tag_selectors": selector("matches", "**"),
                       "scope_selectors": {"repository": selector("repoMatches", "**")}}],
            "trigger": {"kind": "Schedule", "settings": {"cron": ""}},
            "scope": {"level": "project", "ref": project["project_id"]},
        }))
        .send()
        .await
        .expect("policy");
    assert_eq!(r.status(), StatusCode::CREATED);
    let policy = r.headers()["location"]
        .to_str()
        .expect("location")
        .to_string();
    let r = c
        .post(format!("{}{policy}/executions", b.url))
        .basic_auth("admin", Some("Harbor12345"))
        .json(&json!({"dry_run": false}))
        .send()
        .await
        .expect("run");
    assert_eq!(r.status(), StatusCode::CREATED);
    let mut text = String::new();
    for _ in 0..100 {
        text = scrape(&c, &debug).await;
        if text.contains("berth_retention_last_run_success{project=\"pruned\"}") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        sample(
            &text,
            "berth_retention_last_run_success{project=\"pruned\"}"
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "berth_retention_last_run_deleted_artifacts{project=\"pruned\"}"
        ),
        1.0
    );
    assert!(
        sample(
            &text,
            "berth_retention_last_run_end_seconds{project=\"pruned\"}"
        ) > 1.7e9
    );
}
