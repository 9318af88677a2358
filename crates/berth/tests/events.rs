//! Black-box tests of notifications (webhooks) and upload purging: the real `berth`
//! binary, a real HTTP receiver started by the test on 127.0.0.1:0 that records what it
//! is sent, and raw registry requests.

mod common;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode as AxStatus};
use axum::routing::post;
use axum::Router;
use common::push::{image_manifest, sha256, Registry, OCI_MANIFEST};
use common::registry2::Registry2;
use common::Berth;
use oci::Digest;
use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const V1: &str = "application/vnd.docker.distribution.events.v1+json";
const V2: &str = "application/vnd.docker.distribution.events.v2+json";

/// One POST the receiver accepted.
#[derive(Debug, Clone)]
struct Delivery {
    content_type: String,
    token: String,
    body: String,
}

impl Delivery {
    /// The one event of the envelope.
    fn event(&self) -> Value {
        let v: Value = serde_json::from_str(&self.body).expect("envelope is JSON");
        let events = v["events"].as_array().expect("events array");
        assert_eq!(events.len(), 1, "one event per POST: {}", self.body);
        events[0].clone()
    }
}

/// A webhook receiver: answers `status` (200 by default) and records accepted bodies.
struct Receiver {
    url: String,
    status: Arc<AtomicU16>,
    attempts: Arc<AtomicUsize>,
    accepted: Arc<Mutex<Vec<Delivery>>>,
}

#[derive(Clone)]
struct ReceiverState {
    status: Arc<AtomicU16>,
    attempts: Arc<AtomicUsize>,
    accepted: Arc<Mutex<Vec<Delivery>>>,
}

async fn hook(State(s): State<ReceiverState>, headers: HeaderMap, body: String) -> AxStatus {
    s.attempts.fetch_add(1, Ordering::SeqCst);
    let status = AxStatus::from_u16(s.status.load(Ordering::SeqCst)).expect("status");
    if status.is_success() {
        let h = |n: &str| {
            headers
                .get(n)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        };
        s.accepted.lock().expect("lock").push(Delivery {
            content_type: h("content-type"),
            token: h("x-token"),
            body,
        });
    }
    status
}

impl Receiver {
    async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        Receiver::on(listener).await
    }

    async fn on(listener: tokio::net::TcpListener) -> Receiver {
        let addr = listener.local_addr().expect("addr");
        let state = ReceiverState {
            status: Arc::new(AtomicU16::new(200)),
            attempts: Arc::default(),
            accepted: Arc::default(),
        };
        let app = Router::new()
            .route("/hook", post(hook))
            .with_state(state.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver {
            url: format!("http://{addr}/hook"),
            status: state.status,
            attempts: state.attempts,
            accepted: state.accepted,
        }
    }

    fn set_status(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }

    fn accepted(&self) -> Vec<Delivery> {
        self.accepted.lock().expect("lock").clone()
    }

    /// Wait until `n` deliveries have been accepted; fail if more arrive.
    async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Delivery> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let got = self.accepted();
            if got.len() >= n {
                assert_eq!(got.len(), n, "more events than expected: {got:#?}");
                return got;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "only {} of {n} events arrived within {timeout:?}: {got:#?}",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn wait_for_attempts(&self, n: usize, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.attempts.load(Ordering::SeqCst) < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the receiver saw fewer than {n} attempts within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn endpoint(name: &str, url: &str, extra: &str) -> String {
    format!(
        "  - name: {name}\n    url: {url}\n    timeout: 1s\n    threshold: 2\n    backoff: 100ms\n{extra}"
    )
}

fn notifications(endpoints: &[String], include_references: bool) -> String {
    format!(
        "notifications:\n  events:\n    includereferences: {include_references}\n  endpoints:\n{}",
        endpoints.concat()
    )
}

struct Api {
    b: Berth,
    c: Client,
}

impl Api {
    /// The registry as the test's client `alice` sees it (asked each time: the URL changes
    /// when the server is restarted).
    fn reg(&self) -> Registry {
        Registry::with_client(self.c.clone(), &self.b.url)
            .with_auth("alice", "secret")
            .with_user_agent("events-test/1.0")
    }

    fn req(&self, m: Method, path: &str) -> reqwest::RequestBuilder {
        self.reg().req(m, path)
    }

    async fn push_blob(&self, repo: &str, data: &[u8]) -> Digest {
        self.reg().push_blob(repo, data).await
    }

    /// Push config + layer (two-step uploads) and a manifest by tag.
    async fn push_image(&self, repo: &str, tag: &str) -> (Vec<u8>, Digest, Digest, Digest) {
        let config = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
        let layer = b"layer bytes".to_vec();
        let reg = self.reg();
        let cd = reg.push_blob(repo, &config).await;
        // The layer through POST + PUT, as docker does it.
        let ld = reg.push_blob_two_step(repo, &layer).await;
        let bytes = serde_json::to_vec_pretty(&image_manifest(&config, &layer)).expect("json");
        let r = reg.put_manifest(repo, tag, OCI_MANIFEST, &bytes).await;
        assert_eq!(r.status(), StatusCode::CREATED);
        let md = sha256(&bytes);
        (bytes, md, cd, ld)
    }
}

/// (action, repository, digest, tag) of each event, for order checks.
fn summary(deliveries: &[Delivery]) -> Vec<(String, String, String, String)> {
    deliveries
        .iter()
        .map(|d| {
            let e = d.event();
            let s = |v: &Value| v.as_str().unwrap_or("").to_string();
            (
                s(&e["action"]),
                s(&e["target"]["repository"]),
                s(&e["target"]["digest"]),
                s(&e["target"]["tag"]),
            )
        })
        .collect()
}

fn row(action: &str, repo: &str, digest: &str, tag: &str) -> (String, String, String, String) {
    (action.into(), repo.into(), digest.into(), tag.into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_pull_mount_delete_events_with_distribution_fields() {
    let all = Receiver::start().await;
    let filtered = Receiver::start().await;
    let config = notifications(
        &[
            endpoint(
                "all",
                &all.url,
                "    headers:\n      X-Token: [sesame]\n",
            ),
            endpoint(
                "filtered",
                &filtered.url,
                "    mediatype: v2\n    ignore:\n      mediatypes: [application/octet-stream]\n      actions: [pull]\n",
            ),
            endpoint("off", "http://127.0.0.1:1/never", "    disabled: true\n"),
        ],
        true,
    );
    // With authentication the actor is the user (without it, it stays empty: see
    // https_endpoints_use_the_system_trust_store).
    let auth_dir = tempfile::tempdir().expect("tempdir");
    let htpasswd = auth_dir.path().join("htpasswd");
    let line = common::run(
        std::process::Command::new(common::require_tool("htpasswd"))
            .args(["-Bbn", "alice", "secret"]),
    );
    std::fs::write(&htpasswd, line.trim()).expect("htpasswd");
    let config = format!(
        "{config}auth:\n  htpasswd:\n    realm: test\n    path: {}\n",
        htpasswd.display()
    );
    let api = Api {
        b: Berth::start_with(&config),
        c: Client::new(),
    };
    let (manifest, md, cd, ld) = api.push_image("team/app", "v1").await;

    // Pulls: manifest by tag, blob HEAD and GET.
    let r = api
        .req(Method::GET, "/v2/team/app/manifests/v1")
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::OK);
    let r = api
        .req(Method::HEAD, &format!("/v2/team/app/blobs/{ld}"))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::OK);
    let r = api
        .req(Method::GET, &format!("/v2/team/app/blobs/{ld}"))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::OK);
    // Requests that change nothing emit nothing: tags list, catalog, a missing blob.
    for path in ["/v2/team/app/tags/list", "/v2/_catalog", "/v2/"] {
        let r = api.req(Method::GET, path).send().await.expect("send");
        assert_eq!(r.status(), StatusCode::OK, "{path}");
    }
    let missing = sha256(b"missing");
    let r = api
        .req(Method::GET, &format!("/v2/team/app/blobs/{missing}"))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    // Mount into another repository.
    let r = api
        .req(
            Method::POST,
            &format!("/v2/team/copy/blobs/uploads/?mount={ld}&from=team/app"),
        )
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::CREATED);
    // Delete the manifest by digest (its tag goes too), then a blob.
    let r = api
        .req(Method::DELETE, &format!("/v2/team/app/manifests/{md}"))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let r = api
        .req(Method::DELETE, &format!("/v2/team/copy/blobs/{ld}"))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::ACCEPTED);

    let (md, cd, ld) = (md.to_string(), cd.to_string(), ld.to_string());
    let got = all.wait_for(10, Duration::from_secs(30)).await;
    assert_eq!(
        summary(&got),
        vec![
            row("push", "team/app", &cd, ""),
            row("push", "team/app", &ld, ""),
            row("push", "team/app", &md, "v1"),
            row("pull", "team/app", &md, "v1"),
            row("pull", "team/app", &ld, ""),
            row("pull", "team/app", &ld, ""),
            row("mount", "team/copy", &ld, ""),
            row("delete", "team/app", &md, ""),
            row("delete", "team/app", "", "v1"),
            row("delete", "team/copy", &ld, ""),
        ]
    );
    for d in &got {
        assert_eq!(d.content_type, V1);
        assert_eq!(d.token, "sesame", "configured headers are sent");
        // Go's MarshalIndent layout with three spaces.
        assert!(
            d.body
                .starts_with("{\n   \"events\": [\n      {\n         \"id\": "),
            "{}",
            d.body
        );
    }
    let host = api.b.host.clone();
    let base = format!("http://{host}");

    // Blob push: Distribution's exact target and request fields.
    let e = got[1].event();
    assert_eq!(
        e["target"],
        json!({
            "mediaType": "application/octet-stream",
            "size": 11,
            "digest": ld,
            "length": 11,
            "repository": "team/app",
            "url": format!("{base}/v2/team/app/blobs/{ld}"),
        })
    );
    assert_eq!(e["request"]["method"], "PUT");
    assert_eq!(e["request"]["host"], host.as_str());
    assert_eq!(e["request"]["useragent"], "events-test/1.0");
    assert!(e["request"]["addr"]
        .as_str()
        .expect("addr")
        .starts_with("127.0.0.1:"));
    assert_eq!(e["request"]["id"].as_str().expect("id").len(), 36);
    assert_eq!(e["actor"], json!({"name": "alice"}));
    assert_eq!(e["id"].as_str().expect("id").len(), 36);
    let ts = e["timestamp"].as_str().expect("timestamp");
    assert!(
        ts.len() >= 20 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T',
        "{ts}"
    );
    let source = &e["source"];
    assert!(source["addr"].as_str().expect("source addr").contains(':'));
    let instance = source["instanceID"].as_str().expect("instance id");
    assert!(got
        .iter()
        .all(|d| d.event()["source"]["instanceID"] == instance));
    assert_eq!(got[0].event()["request"]["method"], "POST");

    // Manifest push with references (includereferences: true).
    let e = got[2].event();
    assert_eq!(e["target"]["mediaType"], OCI_MANIFEST);
    assert_eq!(e["target"]["size"], manifest.len());
    assert_eq!(e["target"]["length"], manifest.len());
    assert_eq!(
        e["target"]["url"],
        format!("{base}/v2/team/app/manifests/{md}")
    );
    assert_eq!(
        e["target"]["references"],
        json!([
            {"mediaType": "application/vnd.oci.image.config.v1+json", "size": 37, "digest": cd},
            {"mediaType": "application/vnd.oci.image.layer.v1.tar", "size": 11, "digest": ld},
        ])
    );
    // Pulls say how they were asked for.
    assert_eq!(got[3].event()["request"]["method"], "GET");
    assert_eq!(got[4].event()["request"]["method"], "HEAD");
    // Mount names where from; deletes carry only what identifies them.
    assert_eq!(got[6].event()["target"]["fromRepository"], "team/app");
    assert_eq!(
        got[6].event()["target"]["mediaType"],
        "application/octet-stream"
    );
    assert_eq!(
        got[7].event()["target"],
        json!({"digest": md, "repository": "team/app"})
    );
    assert_eq!(
        got[8].event()["target"],
        json!({"repository": "team/app", "tag": "v1"})
    );

    // The filtered endpoint: no blob events (media type), no pulls (action), v2 type.
    let f = filtered.wait_for(4, Duration::from_secs(30)).await;
    assert_eq!(
        summary(&f),
        vec![
            row("push", "team/app", &md, "v1"),
            row("delete", "team/app", &md, ""),
            row("delete", "team/app", "", "v1"),
            row("delete", "team/copy", &ld, ""),
        ]
    );
    assert!(f.iter().all(|d| d.content_type == V2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receivers_that_are_down_get_every_event_in_order_later() {
    // One receiver answers 500 at first; the other's port refuses connections at first.
    let failing = Receiver::start().await;
    failing.set_status(500);
    let reserved = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let closed_addr = reserved.local_addr().expect("addr");
    drop(reserved);
    let config = notifications(
        &[
            endpoint("failing", &failing.url, ""),
            endpoint("closed", &format!("http://{closed_addr}/hook"), ""),
        ],
        false,
    );
    let api = Api {
        b: Berth::start_with(&config),
        c: Client::new(),
    };
    let mut digests = Vec::new();
    for i in 0..5 {
        digests.push(
            api.push_blob("down/repo", format!("blob {i}").as_bytes())
                .await,
        );
    }
    // Retried past the threshold (and backing off), nothing accepted yet.
    failing.wait_for_attempts(4, Duration::from_secs(30)).await;
    assert!(failing.accepted().is_empty());

    failing.set_status(200);
    let late = Receiver::on(
        tokio::net::TcpListener::bind(closed_addr)
            .await
            .expect("re-bind the reserved port"),
    )
    .await;
    let expected: Vec<_> = digests
        .iter()
        .map(|d| row("push", "down/repo", d.as_str(), ""))
        .collect();
    for r in [&failing, &late] {
        let got = r.wait_for(5, Duration::from_secs(30)).await;
        assert_eq!(summary(&got), expected);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_events_survive_a_crash() {
    let receiver = Receiver::start().await;
    receiver.set_status(503);
    let config = notifications(&[endpoint("hook", &receiver.url, "")], false);
    let mut api = Api {
        b: Berth::start_with(&config),
        c: Client::new(),
    };
    let a = api.push_blob("crash/repo", b"first").await;
    let b = api.push_blob("crash/repo", b"second").await;
    receiver.wait_for_attempts(2, Duration::from_secs(30)).await;
    assert!(receiver.accepted().is_empty());

    // SIGKILL while the events are pending (one of them claimed), then restart.
    api.b.crash_and_restart();
    receiver.set_status(200);
    let got = receiver.wait_for(2, Duration::from_secs(60)).await;
    assert_eq!(
        summary(&got),
        vec![
            row("push", "crash/repo", a.as_str(), ""),
            row("push", "crash/repo", b.as_str(), ""),
        ]
    );
    // Events after the restart follow.
    let c = api.push_blob("crash/repo", b"third").await;
    let got = receiver.wait_for(3, Duration::from_secs(30)).await;
    assert_eq!(summary(&got)[2], row("push", "crash/repo", c.as_str(), ""));
}

fn purge_config(age: &str, dry_run: bool) -> String {
    format!(
        "  maintenance:\n    uploadpurging:\n      enabled: true\n      age: {age}\n      interval: 1s\n      dryrun: {dry_run}\n"
    )
}

/// Start Berth with `storage_extra` inside the `storage:` section.
fn start_with_storage(storage_extra: &str) -> Berth {
    Berth::start_with_config(&format!(
        "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: DATA\n  delete:\n    enabled: true\n{storage_extra}http:\n  addr: 127.0.0.1:0\n"
    ))
}

async fn start_upload(c: &Client, b: &Berth, repo: &str) -> String {
    let r = c
        .post(format!("{}/v2/{repo}/blobs/uploads/", b.url))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    r.headers()["location"]
        .to_str()
        .expect("location")
        .to_string()
}

async fn upload_status(c: &Client, b: &Berth, location: &str) -> StatusCode {
    c.get(format!("{}{location}", b.url))
        .send()
        .await
        .expect("send")
        .status()
}

fn upload_file(b: &Berth, location: &str) -> std::path::PathBuf {
    let id = location.rsplit('/').next().expect("uuid");
    b.upload_path(id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_purging_removes_abandoned_uploads_only() {
    let b = start_with_storage(&purge_config("3s", false));
    let c = Client::new();
    let old = start_upload(&c, &b, "purge/repo").await;
    let r = c
        .patch(format!("{}{old}", b.url))
        .body("some bytes")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert!(upload_file(&b, &old).exists());

    // The abandoned upload disappears, session and bytes.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while upload_status(&c, &b, &old).await != StatusCode::NOT_FOUND {
        assert!(
            tokio::time::Instant::now() < deadline,
            "old upload never purged"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = c.get(format!("{}{old}", b.url)).send().await.expect("send");
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["errors"][0]["code"], "BLOB_UPLOAD_UNKNOWN");
    assert!(
        !upload_file(&b, &old).exists(),
        "the upload's bytes are gone"
    );

    // A fresh upload survives the next purge runs.
    let fresh = start_upload(&c, &b, "purge/repo").await;
    let runs = b
        .wait_for_log("Purge uploads finished", 0, Duration::from_secs(1))
        .len();
    let c2 = c.clone();
    let url = format!("{}{fresh}", b.url);
    let logs = tokio::task::spawn_blocking(move || {
        b.wait_for_log("Purge uploads finished", runs, Duration::from_secs(10));
        b
    })
    .await
    .expect("join");
    assert_eq!(
        c2.get(url).send().await.expect("send").status(),
        StatusCode::NO_CONTENT
    );
    assert!(upload_file(&logs, &fresh).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_purging_dry_run_keeps_everything() {
    let b = start_with_storage(&purge_config("1s", true));
    let c = Client::new();
    let old = start_upload(&c, &b, "dry/repo").await;
    // Wait for a purge that finds it old enough, and would have removed it.
    let b = tokio::task::spawn_blocking(move || {
        b.wait_for_log("deleted=1", 0, Duration::from_secs(30));
        b
    })
    .await
    .expect("join");
    assert!(b
        .log_lines()
        .iter()
        .any(|l| l.contains("older than the purge age") && l.contains("dry_run=true")));
    assert_eq!(upload_status(&c, &b, &old).await, StatusCode::NO_CONTENT);
    assert!(upload_file(&b, &old).exists());
}

/// Plant an upload file no session records, last written an hour ago (what a crash
/// mid pull-through fill or mid monolithic push leaves, or a kept copy whose cleanup
/// failed).
fn plant_orphan(b: &Berth, name: &str) -> std::path::PathBuf {
    let path = b.upload_path(name);
    std::fs::create_dir_all(path.parent().expect("fan-out")).expect("mkdir");
    std::fs::write(&path, b"bytes nothing records").expect("plant orphan");
    let hour_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(&path)
        .and_then(|f| f.set_modified(hour_ago))
        .expect("backdate orphan");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_purging_removes_upload_files_nothing_records() {
    let b = start_with_storage(&purge_config("1h", false));
    let c = Client::new();
    let fill = plant_orphan(&b, "0b5e0c55-6b8e-4c1f-9a51-1d2a3b4c5d6e");
    let kept = plant_orphan(&b, "1c6f1d66-7c9f-4d20-8b62-2e3b4c5d6e7f.kept");
    let staged = plant_orphan(&b, "1c6f1d66-7c9f-4d20-8b62-2e3b4c5d6e7f.commit");
    let stray = plant_orphan(&b, "not-an-upload.txt");
    // A session of the same age is not an orphan: it goes by its start time (just now).
    let live = start_upload(&c, &b, "orphan/repo").await;
    let live_file = upload_file(&b, &live);
    std::fs::File::options()
        .write(true)
        .open(&live_file)
        .and_then(|f| f.set_modified(std::time::SystemTime::now() - Duration::from_secs(3600)))
        .expect("backdate session file");
    let b = tokio::task::spawn_blocking(move || {
        b.wait_for_log("orphans=2", 0, Duration::from_secs(30));
        b
    })
    .await
    .expect("join");
    assert!(!fill.exists() && !kept.exists() && !staged.exists());
    assert!(stray.exists(), "a file that names no upload is left alone");
    assert!(live_file.exists());
    assert_eq!(upload_status(&c, &b, &live).await, StatusCode::NO_CONTENT);
    let lines = b.log_lines();
    assert!(lines
        .iter()
        .any(|l| l.contains("without a session")
            && l.contains("0b5e0c55-6b8e-4c1f-9a51-1d2a3b4c5d6e")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_purging_dry_run_keeps_orphan_files() {
    let b = start_with_storage(&purge_config("1h", true));
    let orphan = plant_orphan(&b, "2d7a2e77-8da0-4e31-9c73-3f4c5d6e7f80");
    let b = tokio::task::spawn_blocking(move || {
        b.wait_for_log("orphans=1", 0, Duration::from_secs(30));
        b
    })
    .await
    .expect("join");
    assert!(b
        .log_lines()
        .iter()
        .any(|l| l.contains("without a session") && l.contains("dry_run=true")));
    assert!(orphan.exists());
}

/// The same requests against `base`: a two-step blob push with credentials, a manifest
/// by tag, pulls, a mount and deletes.
async fn reference_flow(c: &Client, base: &str) {
    let blob = |loc: &str| {
        if loc.starts_with("http") {
            loc.to_string()
        } else {
            format!("{base}{loc}")
        }
    };
    let mut digests = Vec::new();
    for data in [&b"hello"[..], br#"{"architecture":"amd64","os":"linux"}"#] {
        let r = c
            .post(format!("{base}/v2/demo/blobs/uploads/"))
            .basic_auth("bob", Some("pw"))
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        let loc = blob(r.headers()["location"].to_str().expect("location"));
        let r = c
            .patch(&loc)
            .basic_auth("bob", Some("pw"))
            .header("content-type", "application/octet-stream")
            .body(data.to_vec())
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        let loc = blob(r.headers()["location"].to_str().expect("location"));
        let d = sha256(data);
        let sep = if loc.contains('?') { '&' } else { '?' };
        let r = c
            .put(format!("{loc}{sep}digest={d}"))
            .basic_auth("bob", Some("pw"))
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), StatusCode::CREATED);
        digests.push(d);
    }
    let m = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":37}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{}","size":5}}]}}"#,
        digests[1], digests[0]
    );
    let steps: Vec<(Method, String, u16)> = vec![
        (Method::PUT, "/v2/demo/manifests/v1".into(), 201),
        (Method::GET, "/v2/demo/manifests/v1".into(), 200),
        (Method::HEAD, format!("/v2/demo/blobs/{}", digests[0]), 200),
        (
            Method::POST,
            format!("/v2/other/blobs/uploads/?mount={}&from=demo", digests[0]),
            201,
        ),
        (
            Method::DELETE,
            format!("/v2/demo/manifests/{}", sha256(m.as_bytes())),
            202,
        ),
        (
            Method::DELETE,
            format!("/v2/other/blobs/{}", digests[0]),
            202,
        ),
    ];
    for (method, path, status) in steps {
        let r = c
            .request(method.clone(), format!("{base}{path}"))
            .header("content-type", OCI_MANIFEST)
            .header("accept", OCI_MANIFEST)
            .body(if method == Method::PUT {
                m.clone()
            } else {
                String::new()
            })
            .send()
            .await
            .expect("send");
        assert_eq!(r.status().as_u16(), status, "{method} {path}");
    }
}

/// A body with the values that differ by nature (ids, times, peer ports, the host
/// name and port) replaced.
fn normalized(d: &Delivery, host: &str) -> String {
    let e = d.event();
    let mut body = d.body.clone();
    for v in [
        &e["id"],
        &e["timestamp"],
        &e["request"]["id"],
        &e["request"]["addr"],
        &e["source"]["instanceID"],
    ] {
        body = body.replace(v.as_str().expect("string field"), "X");
    }
    body.replace(host, "HOST")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_match_distribution_byte_for_byte() {
    let theirs = Receiver::start().await;
    let ours = Receiver::start().await;
    let config = |url: &str| {
        format!(
            "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: DATA\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:0\n{}",
            notifications(&[endpoint("hook", url, "")], true)
        )
    };
    let mut peer = Registry2::start(&config(&theirs.url));
    let their_host = peer.host.clone();
    let c = Client::new();
    reference_flow(&c, &format!("http://{their_host}")).await;
    let b = Berth::start_with_config(&config(&ours.url));
    reference_flow(&c, &b.url).await;

    let expected = theirs.wait_for(9, Duration::from_secs(30)).await;
    peer.stop();
    let got = ours.wait_for(9, Duration::from_secs(30)).await;
    // Deliberate difference: with no authentication configured, 2.8 reports the user
    // name of any Basic header (unverified, so anyone can claim any name); Berth leaves
    // the actor empty. Everything else is byte-for-byte the same.
    let unverified = "\"actor\": {\n            \"name\": \"bob\"\n         }";
    let claimed = expected
        .iter()
        .filter(|t| normalized(t, &their_host).contains(unverified))
        .count();
    assert!(
        claimed > 0,
        "2.8 reported no unverified actor: {expected:#?}"
    );
    for (t, o) in expected.iter().zip(&got) {
        assert_eq!(o.content_type, t.content_type);
        let theirs = normalized(t, &their_host);
        assert_eq!(
            normalized(o, &b.host),
            theirs.replace(unverified, "\"actor\": {}")
        );
    }
}

fn tool(name: &str, args: &[&str]) -> String {
    common::run(std::process::Command::new(common::require_tool(name)).args(args))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_push_and_pull_are_notified() {
    let receiver = Receiver::start().await;
    let config = notifications(&[endpoint("hook", &receiver.url, "")], false);
    let b = Berth::start_with(&config);
    let tmp = tempfile::tempdir().expect("tempdir");
    let layout = tmp.path().join("layout");
    let layout_s = layout.to_str().expect("utf-8 path").to_string();
    let image = format!("{layout_s}:v1");
    let file = tmp.path().join("hello.txt");
    std::fs::write(&file, format!("hello from {}", b.host)).expect("write");
    let host = b.host.clone();
    let out = tmp.path().join("pulled");
    let out_s = out.to_str().expect("utf-8 path").to_string();
    // The clients are blocking processes: run them off the runtime the receiver uses.
    tokio::task::spawn_blocking(move || {
        tool("umoci", &["init", "--layout", &layout_s]);
        tool("umoci", &["new", "--image", &image]);
        let f = file.to_str().expect("utf-8");
        tool(
            "umoci",
            &["insert", "--rootless", "--image", &image, f, "/hello.txt"],
        );
        tool(
            "skopeo",
            &[
                "copy",
                "--dest-tls-verify=false",
                &format!("oci:{image}"),
                &format!("docker://{host}/skopeo/app:v1"),
            ],
        );
    })
    .await
    .expect("push");
    // Two blobs (config and layer), then the manifest, by tag.
    let pushed = receiver.wait_for(3, Duration::from_secs(30)).await;
    let events: Vec<Value> = pushed.iter().map(Delivery::event).collect();
    assert!(events.iter().all(|e| e["action"] == "push"), "{events:#?}");
    assert!(events[..2]
        .iter()
        .all(|e| e["target"]["mediaType"] == "application/octet-stream"));
    assert_eq!(events[2]["target"]["mediaType"], OCI_MANIFEST);
    assert_eq!(events[2]["target"]["tag"], "v1");
    assert!(events
        .iter()
        .all(|e| e["target"]["repository"] == "skopeo/app"));
    let ua = events[2]["request"]["useragent"]
        .as_str()
        .expect("useragent");
    assert!(ua.starts_with("skopeo/"), "skopeo's user agent: {ua}");

    let host = b.host.clone();
    tokio::task::spawn_blocking(move || {
        tool(
            "skopeo",
            &[
                "copy",
                "--src-tls-verify=false",
                &format!("docker://{host}/skopeo/app:v1"),
                &format!("dir:{out_s}"),
            ],
        );
    })
    .await
    .expect("pull");
    // A pull: the manifest by tag, then both blobs.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let pulls = loop {
        let all: Vec<Value> = receiver.accepted().iter().map(Delivery::event).collect();
        let pulls: Vec<Value> = all.into_iter().skip(3).collect();
        let blobs = pulls
            .iter()
            .filter(|e| e["target"]["mediaType"] == "application/octet-stream")
            .count();
        if blobs >= 2 {
            break pulls;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "pull events: {pulls:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(pulls.iter().all(|e| e["action"] == "pull"), "{pulls:#?}");
    assert!(pulls
        .iter()
        .any(|e| e["target"]["tag"] == "v1"
            && e["target"]["digest"] == events[2]["target"]["digest"]));
    let pulled: std::collections::BTreeSet<&str> = pulls
        .iter()
        .filter(|e| e["target"]["mediaType"] == "application/octet-stream")
        .map(|e| e["target"]["digest"].as_str().expect("digest"))
        .collect();
    let pushed_blobs: std::collections::BTreeSet<&str> = events[..2]
        .iter()
        .map(|e| e["target"]["digest"].as_str().expect("digest"))
        .collect();
    assert_eq!(pulled, pushed_blobs);
}

// ---------------------------------------------------------------------------------------
// https endpoints
// ---------------------------------------------------------------------------------------

/// An HTTPS webhook receiver on 127.0.0.1:0 with `cert`/`key` (tokio-rustls + hyper):
/// every connection is served the same router as [`Receiver`].
async fn https_receiver(cert: &std::path::Path, key: &std::path::Path) -> Receiver {
    let state = ReceiverState {
        status: Arc::new(AtomicU16::new(200)),
        attempts: Arc::default(),
        accepted: Arc::default(),
    };
    let app = Router::new()
        .route("/hook", post(hook))
        .with_state(state.clone());
    let addr = common::pki::serve_https(app, cert, key).await;
    Receiver {
        url: format!("https://127.0.0.1:{}/hook", addr.port()),
        status: state.status,
        attempts: state.attempts,
        accepted: state.accepted,
    }
}

fn start_with_env(extra: &str, env: &[(&str, &str)]) -> Berth {
    Berth::start_with_config_env(
        &format!(
            "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: DATA\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:0\n{extra}"
        ),
        env,
        "http",
    )
}

/// Trust comes from the system store or, as with OpenSSL and Go, `SSL_CERT_FILE`: a
/// receiver whose CA is in that file gets the event. Without authentication the event's
/// actor is empty even though the client sent a Basic header (as in Distribution 2.8).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_endpoints_use_the_system_trust_store() {
    let pki = common::pki::Pki::new();
    let receiver = https_receiver(&pki.path("server.crt"), &pki.path("server.key")).await;
    let config = notifications(
        &[endpoint(
            "secure",
            &receiver.url,
            "    headers:\n      Authorization: [Bearer very-secret-token]\n",
        )],
        false,
    );
    let ca = pki.path("ca.crt").display().to_string();
    let api = Api {
        b: start_with_env(&config, &[("SSL_CERT_FILE", &ca)]),
        c: Client::new(),
    };
    let d = api.push_blob("tls/app", b"over https").await;
    let got = receiver.wait_for(1, Duration::from_secs(30)).await;
    let e = got[0].event();
    assert_eq!(e["action"], "push");
    assert_eq!(e["target"]["digest"], d.as_str());
    assert_eq!(e["actor"], json!({}), "no auth configured: no actor");
    // The start-up line names the endpoint's headers but never their values.
    let lines = api.b.log_lines().join("\n");
    assert!(lines.contains("[\"Authorization\"]"), "{lines}");
    assert!(
        !lines.contains("very-secret-token"),
        "header value logged: {lines}"
    );
}

/// A receiver whose certificate nobody trusts: the event stays queued and is retried,
/// and the logged error names the TLS failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_https_endpoints_keep_events_queued() {
    let pki = common::pki::Pki::new();
    let other = common::pki::Pki::new();
    let receiver = https_receiver(&pki.path("server.crt"), &pki.path("server.key")).await;
    let config = notifications(&[endpoint("secure", &receiver.url, "")], false);
    let wrong_ca = other.path("ca.crt").display().to_string();
    let b = start_with_env(&config, &[("SSL_CERT_FILE", &wrong_ca)]);
    let d = sha256(b"held back");
    let r = Client::new()
        .post(format!("{}/v2/tls/app/blobs/uploads/?digest={d}", b.url))
        .body(b"held back".to_vec())
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::CREATED);
    // Retried: at least three failed attempts, each naming the certificate problem.
    let errors = b.wait_for_log("error writing events", 2, Duration::from_secs(30));
    for line in &errors {
        assert!(
            // Another CA of the same name: BadSignature (UnknownIssuer for a stranger).
            line.contains("invalid peer certificate"),
            "{line}"
        );
    }
    assert!(receiver.accepted().is_empty());
}

/// Another process holding the metadata database's write lock (as `berth
/// garbage-collect` or a long write does), through the `sqlite3` shell: taken when
/// `take` returns, given back (rolled back) by `release` or on drop.
struct WriteLock(std::process::Child);

impl WriteLock {
    fn take(db: &std::path::Path) -> WriteLock {
        use std::io::{BufRead as _, Write as _};
        let mut child = std::process::Command::new(common::require_tool("sqlite3"))
            .arg(db)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn sqlite3");
        let stdin = child.stdin.as_mut().expect("stdin");
        stdin
            .write_all(b".timeout 10000\nBEGIN IMMEDIATE;\nSELECT 'locked';\n")
            .expect("write to sqlite3");
        stdin.flush().expect("flush");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.as_mut().expect("stdout"))
            .read_line(&mut line)
            .expect("read from sqlite3");
        assert_eq!(line.trim(), "locked", "sqlite3 did not take the write lock");
        WriteLock(child)
    }

    fn release(mut self) {
        drop(self.0.stdin.take());
        self.0.wait().expect("sqlite3 exits");
    }
}

impl Drop for WriteLock {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A pull never waits for the metadata writer: with another process holding the write
/// lock, manifest and blob pulls answer at once (they used to wait for the lock, up to the
/// 30 s busy timeout, to record their events), and their events reach the receiver, in
/// order, once the lock is given back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_do_not_wait_for_a_busy_metadata_writer() {
    let receiver = Receiver::start().await;
    let config = notifications(&[endpoint("hook", &receiver.url, "")], false);
    let api = Api {
        b: Berth::start_with(&config),
        c: Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("client"),
    };
    let (_, md, _, ld) = api.push_image("busy/app", "v1").await;
    receiver.wait_for(3, Duration::from_secs(30)).await;

    let lock = WriteLock::take(&api.b.data_dir().join("berth.db"));
    let pulls = [
        (Method::GET, "/v2/busy/app/manifests/v1".to_string()),
        (Method::HEAD, format!("/v2/busy/app/blobs/{ld}")),
        (Method::GET, format!("/v2/busy/app/blobs/{ld}")),
    ];
    for (method, path) in &pulls {
        let start = std::time::Instant::now();
        let r = api
            .req(method.clone(), path)
            .header("accept", OCI_MANIFEST)
            .send()
            .await
            .expect("the pull answers while the writer is busy");
        assert_eq!(r.status(), StatusCode::OK, "{method} {path}");
        r.bytes().await.expect("body");
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{method} {path} waited {:?} for the metadata writer",
            start.elapsed()
        );
    }
    assert_eq!(receiver.accepted().len(), 3, "nothing written while locked");
    lock.release();

    let got = receiver.wait_for(6, Duration::from_secs(30)).await;
    let (md, ld) = (md.to_string(), ld.to_string());
    assert_eq!(
        summary(&got[3..]),
        vec![
            row("pull", "busy/app", &md, "v1"),
            row("pull", "busy/app", &ld, ""),
            row("pull", "busy/app", &ld, ""),
        ]
    );
}

/// Many pulls in a row reach the receiver in the order they were made, and a change made
/// after them (a push, whose event is written with the change) comes after them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_pull_events_keep_their_order() {
    let receiver = Receiver::start().await;
    let config = notifications(&[endpoint("hook", &receiver.url, "")], false);
    let api = Api {
        b: Berth::start_with(&config),
        c: Client::new(),
    };
    let (manifest, md, _, _) = api.push_image("order/app", "t0").await;
    let reg = api.reg();
    const TAGS: usize = 30;
    for i in 1..TAGS {
        let r = reg
            .put_manifest("order/app", &format!("t{i}"), OCI_MANIFEST, &manifest)
            .await;
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    let pushes = 2 + TAGS;
    receiver.wait_for(pushes, Duration::from_secs(30)).await;

    for i in 0..TAGS {
        let r = api
            .req(Method::GET, &format!("/v2/order/app/manifests/t{i}"))
            .header("accept", OCI_MANIFEST)
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), StatusCode::OK);
    }
    let after = api.push_blob("order/app", b"pushed after the pulls").await;

    let got = receiver
        .wait_for(pushes + TAGS + 1, Duration::from_secs(30))
        .await;
    let md = md.to_string();
    let mut expected: Vec<_> = (0..TAGS)
        .map(|i| row("pull", "order/app", &md, &format!("t{i}")))
        .collect();
    expected.push(row("push", "order/app", after.as_str(), ""));
    assert_eq!(summary(&got[pushes..]), expected);
}

/// Read `series` (name with labels) from a Prometheus text exposition.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// Rows of the outbox for `endpoint`, read by another process.
fn outbox_rows(b: &Berth, endpoint: &str) -> usize {
    let out = common::run(
        std::process::Command::new(common::require_tool("sqlite3"))
            .arg(b.data_dir().join("berth.db"))
            .arg(format!(
                "SELECT COUNT(*) FROM outbox WHERE endpoint = '{endpoint}'"
            )),
    );
    out.trim().parse().expect("a count")
}

/// An endpoint that stays down does not grow the outbox without bound: past its
/// `maxevents` the oldest undelivered events are dropped (not the one being retried),
/// counted in `berth_notification_events_dropped_total`; when the receiver comes back it
/// gets the event it was being sent and the newest ones, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_endpoint_keeps_at_most_maxevents() {
    let receiver = Receiver::start().await;
    receiver.set_status(500);
    let config = format!(
        "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: DATA\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:0\n  debug:\n    addr: 127.0.0.1:0\n    prometheus:\n      enabled: true\n{}",
        notifications(
            &[endpoint("capped", &receiver.url, "    maxevents: 5\n")],
            false
        )
    );
    let (b, debug) = Berth::start_with_debug(&config);
    let api = Api {
        b,
        c: Client::new(),
    };
    let mut digests = vec![api.push_blob("cap/repo", b"blob 0").await];
    // The first event is being retried (and so leased) before the others arrive.
    receiver.wait_for_attempts(1, Duration::from_secs(30)).await;
    for i in 1..12 {
        digests.push(
            api.push_blob("cap/repo", format!("blob {i}").as_bytes())
                .await,
        );
    }

    let series =
        "berth_notification_events_dropped_total{endpoint=\"capped\",reason=\"outbox_full\"}";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let text = api
            .c
            .get(format!("http://{debug}/metrics"))
            .send()
            .await
            .expect("send")
            .text()
            .await
            .expect("text");
        if metric(&text, series) == Some(7.0) {
            assert_eq!(
                metric(&text, "berth_notification_events_dropped_total{endpoint=\"capped\",reason=\"queue_full\"}"),
                Some(0.0),
                "{text}"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "7 drops never counted: {text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(outbox_rows(&api.b, "capped"), 5);
    assert!(receiver.accepted().is_empty());

    receiver.set_status(200);
    let got = receiver.wait_for(5, Duration::from_secs(30)).await;
    let expected: Vec<_> = [0, 8, 9, 10, 11]
        .iter()
        .map(|&i| row("push", "cap/repo", digests[i].as_str(), ""))
        .collect();
    assert_eq!(summary(&got), expected);
}

/// A graceful stop writes the pull events still queued: stopped right after a pull, the
/// server delivers that pull's event after its restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_keeps_queued_pull_events() {
    let receiver = Receiver::start().await;
    receiver.set_status(503);
    let config = notifications(&[endpoint("hook", &receiver.url, "")], false);
    let mut api = Api {
        b: Berth::start_with(&config),
        c: Client::new(),
    };
    let d = api.push_blob("stop/repo", b"pulled, then stopped").await;
    let r = api
        .req(Method::HEAD, &format!("/v2/stop/repo/blobs/{d}"))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::OK);
    api.b.stop_and_restart();
    receiver.set_status(200);
    let got = receiver.wait_for(2, Duration::from_secs(30)).await;
    assert_eq!(
        summary(&got),
        vec![
            row("push", "stop/repo", d.as_str(), ""),
            row("pull", "stop/repo", d.as_str(), ""),
        ]
    );
}
