//! The cluster of `cluster.rs` as containers (issue 14): three nodes of Berth's image
//! (`common::docker`) share one PostgreSQL database and one S3 bucket, behind nginx.
//! Every network is a private `--internal` Docker network: `front` (nginx on the host to
//! the nodes), `pg` and `s3`, where a relay on the host's address of the network forwards
//! to the test PostgreSQL or SeaweedFS on 127.0.0.1. One node is cut off from PostgreSQL,
//! then from S3, with `docker network disconnect`: its requests fail with 503 UNAVAILABLE
//! in the spec's envelope within a bounded time, its health endpoint and its main port's
//! health gate report it (nginx sends everything to the other nodes), a push it was
//! given meanwhile leaves nothing behind, and it serves again by itself once
//! `docker network connect` gives the network back.

mod common;

use common::cluster::{fresh_database, postgres_url, Nginx};
use common::docker::{image, Container, Network, Relay};
use common::layout::noise;
use common::push::{image_manifest, sha256, Registry, OCI_MANIFEST};
use common::require_tool;
use common::s3::{s3, unique_suffix, S3Kind};
use reqwest::{Method, StatusCode};
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

const MIB: usize = 1024 * 1024;
/// The chunk a cut-off node is sent: small enough to be drained when refused unread (a
/// larger one may meet a reset connection instead of the 503, see the README).
const REFUSED: usize = 64 * 1024;

/// The fresh database of this test, dropped at the end (pass or fail).
struct Database(String);

impl Drop for Database {
    fn drop(&mut self) {
        let name = self.0.rsplit('/').next().unwrap_or("none");
        let _ = Command::new("psql")
            .arg(postgres_url())
            .args(["-q", "-c"])
            .arg(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .output();
    }
}

/// `127.0.0.1:PORT` in a URL (`http://127.0.0.1:PORT`, `postgres://user@127.0.0.1:PORT/db`).
fn loopback_addr(url: &str) -> SocketAddr {
    let at = url
        .find("127.0.0.1:")
        .unwrap_or_else(|| panic!("{url} is not on 127.0.0.1"));
    let rest = &url[at..];
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    rest[..end].parse().unwrap_or_else(|e| panic!("{url}: {e}"))
}

/// One node: its container and its addresses on `front`.
struct Node {
    container: Container,
    /// `IP:5000`
    host: String,
    /// `http://IP:5000`
    url: String,
    /// `http://IP:5001/debug/health`
    health: String,
}

/// What the answer was, and how long it took (a transport error or 90 s without an
/// answer is a failure of the test: requests must not hang).
async fn timed(req: reqwest::RequestBuilder) -> (StatusCode, String, Duration) {
    let started = Instant::now();
    let resp = req
        .timeout(Duration::from_secs(90))
        .send()
        .await
        .unwrap_or_else(|e| panic!("no answer after {:?}: {e}", started.elapsed()));
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    (status, body, started.elapsed())
}

/// The answer is 503 with UNAVAILABLE as the first error of the spec's envelope.
fn assert_unavailable(what: &str, status: StatusCode, body: &str) {
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{what}: {body}");
    let json: serde_json::Value = serde_json::from_str(body)
        .unwrap_or_else(|e| panic!("{what}: not the spec's JSON ({e}): {body}"));
    assert_eq!(json["errors"][0]["code"], "UNAVAILABLE", "{what}: {body}");
    assert!(json["errors"][0]["message"].is_string(), "{what}: {body}");
}

/// Poll `GET url` until it answers `want` (at most `within`); returns the body and how
/// long it took.
async fn until_status(url: &str, want: StatusCode, within: Duration) -> (String, Duration) {
    let started = Instant::now();
    let client = reqwest::Client::new();
    loop {
        let last = match client
            .get(url)
            .header("accept", OCI_MANIFEST)
            .timeout(Duration::from_secs(10))
            .send()
            .await
        {
            Ok(r) if r.status() == want => {
                return (r.text().await.unwrap_or_default(), started.elapsed())
            }
            Ok(r) => format!("{}", r.status()),
            Err(e) => e.to_string(),
        };
        assert!(
            started.elapsed() < within,
            "{url}: still {last} after {within:?}, wanted {want}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `url` serves `repo:reference` as `digest`, and every blob of it (streamed through
/// Berth: redirects are off).
async fn assert_serves(url: &str, repo: &str, reference: &str, digest: &oci::Digest) {
    let r = Registry::new(url);
    let resp = r
        .req(Method::GET, &format!("/v2/{repo}/manifests/{reference}"))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .expect("GET manifest");
    assert_eq!(resp.status(), StatusCode::OK, "{url} {repo}:{reference}");
    let body = resp.bytes().await.expect("body");
    assert_eq!(&sha256(&body), digest, "{url} {repo}:{reference}");
    let manifest: serde_json::Value = serde_json::from_slice(&body).expect("json");
    let mut blobs = vec![manifest["config"]["digest"].clone()];
    blobs.extend(
        manifest["layers"]
            .as_array()
            .expect("layers")
            .iter()
            .map(|l| l["digest"].clone()),
    );
    for b in blobs {
        let b = b.as_str().expect("digest");
        let resp = r
            .req(Method::GET, &format!("/v2/{repo}/blobs/{b}"))
            .send()
            .await
            .expect("GET blob");
        assert_eq!(resp.status(), StatusCode::OK, "{url} blob {b}");
        assert_eq!(sha256(&resp.bytes().await.expect("bytes")).to_string(), b);
    }
}

/// An upload begun with `POST` and one `PATCH` of `first` bytes; returns its Location.
async fn begin_upload(r: &Registry, repo: &str, data: &[u8], first: usize) -> String {
    let resp = r
        .req(Method::POST, &format!("/v2/{repo}/blobs/uploads/"))
        .send()
        .await
        .expect("POST");
    assert_eq!(resp.status(), StatusCode::ACCEPTED, "POST upload");
    let location = resp.headers()["location"]
        .to_str()
        .expect("location")
        .to_string();
    let resp = r
        .req(Method::PATCH, &location)
        .header("content-type", "application/octet-stream")
        .header("content-range", format!("0-{}", first - 1))
        .body(data[..first].to_vec())
        .send()
        .await
        .expect("PATCH");
    assert_eq!(resp.status(), StatusCode::ACCEPTED, "first PATCH");
    resp.headers()["location"]
        .to_str()
        .expect("location")
        .to_string()
}

/// The upload at `location` (a path), continued on `r` from `offset` and closed with
/// the digest of `data`.
async fn finish_upload(r: &Registry, location: &str, data: &[u8], offset: usize) {
    let status = r
        .req(Method::GET, location)
        .send()
        .await
        .expect("GET upload");
    assert_eq!(status.status(), StatusCode::NO_CONTENT, "upload status");
    assert_eq!(
        status.headers()["range"].to_str().expect("range"),
        format!("0-{}", offset - 1),
        "the upload holds exactly what was acknowledged"
    );
    let location = status.headers()["location"]
        .to_str()
        .expect("location")
        .to_string();
    let sep = if location.contains('?') { '&' } else { '?' };
    let resp = r
        .req(
            Method::PUT,
            &format!("{location}{sep}digest={}", sha256(data)),
        )
        .header("content-type", "application/octet-stream")
        .header("content-range", format!("{}-{}", offset, data.len() - 1))
        .body(data[offset..].to_vec())
        .send()
        .await
        .expect("PUT");
    assert_eq!(resp.status(), StatusCode::CREATED, "closing PUT");
}

/// A manifest for `config` and `layer` (both must be in `repo` already) put as `tag`.
fn manifest_of(config: &[u8], layer: &[u8]) -> Vec<u8> {
    serde_json::to_vec(&image_manifest(config, layer)).expect("json")
}

/// GETs of `repo:tag` through nginx: every one answers 200 (a node that answers 503 is
/// passed over).
async fn assert_balancer_serves(nginx: &Nginx, repo: &str, tag: &str, digest: &oci::Digest) {
    let r = Registry::new(&nginx.url);
    for i in 0..9 {
        let resp = r
            .req(Method::GET, &format!("/v2/{repo}/manifests/{tag}"))
            .header("accept", OCI_MANIFEST)
            .send()
            .await
            .expect("GET through nginx");
        assert_eq!(resp.status(), StatusCode::OK, "GET {i} through nginx");
        assert_eq!(&sha256(&resp.bytes().await.expect("body")), digest);
    }
}

#[tokio::test]
async fn a_node_disconnected_from_postgres_or_s3_answers_503_and_recovers() {
    require_tool("docker");
    require_tool("psql");
    let image = image();
    let started = Instant::now();
    let id = unique_suffix();
    let id = &id[id.len().saturating_sub(10)..];
    let front = Network::create(&format!("berth-{id}-front"));
    let pgnet = Network::create(&format!("berth-{id}-pg"));
    let s3net = Network::create(&format!("berth-{id}-s3"));

    let db = Database(fresh_database());
    let server = s3(S3Kind::SeaweedFs);
    let pg_relay = Relay::start(&pgnet, loopback_addr(&db.0));
    let endpoint = server.get("S3_ENDPOINT");
    let s3_relay = Relay::start(&s3net, loopback_addr(endpoint));
    let dsn = db.0.replacen(
        &loopback_addr(&db.0).to_string(),
        &pg_relay.addr.to_string(),
        1,
    );
    // Blobs stream through Berth: a redirect would send the client to the relay.
    let (storage, _) = server.storage_yaml("  redirect:\n    disable: true\n");
    let storage = storage.replace(endpoint, &format!("http://{}", s3_relay.addr));
    let config = format!(
        "version: 0.1\nlog:\n  level: info\n{storage}database:\n  driver: postgres\n  dsn: {dsn}\n  connecttimeout: 2s\n  pool:\n    acquiretimeout: 3s\nhealth:\n  storagedriver:\n    enabled: true\n    interval: 1s\n    threshold: 2\nhttp:\n  addr: :5000\n  debug:\n    addr: :5001\n"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let config_file = dir.path().join("config.yml");
    std::fs::write(&config_file, &config).expect("config.yml");
    let mount = format!(
        "{}:/etc/docker/registry/config.yml:ro",
        config_file.display()
    );

    let nodes: Vec<Node> = (0..3)
        .map(|i| {
            let container = Container::start(
                &format!("berth-{id}-node{i}"),
                &[&front, &pgnet, &s3net],
                &["-v", &mount],
                image,
            );
            let ip = container.ip(&front);
            Node {
                container,
                host: format!("{ip}:5000"),
                url: format!("http://{ip}:5000"),
                health: format!("http://{ip}:5001/debug/health"),
            }
        })
        .collect();
    for n in &nodes {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ok = reqwest::get(format!("{}/v2/", n.url))
                .await
                .is_ok_and(|r| r.status() == StatusCode::OK);
            if ok {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not answer within 60 s; its log:\n{}",
                n.container.name,
                n.container.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let nginx = Nginx::start(&nodes.iter().map(|n| n.host.clone()).collect::<Vec<_>>());
    eprintln!("3 containers and nginx up in {:?}", started.elapsed());

    // An image pushed through nginx (its chunks spread over the nodes), served by each.
    let lb = Registry::new(&nginx.url);
    let layer = noise("containers", 3 * MIB + 5);
    let (v1, _) = lb
        .push_image_chunked("ha/app", "v1", &layer, &[MIB, MIB, MIB + 5])
        .await;
    for n in &nodes {
        assert_serves(&n.url, "ha/app", "v1", &v1).await;
    }

    let cut = &nodes[1];
    let node = Registry::new(&cut.url);
    let other = Registry::new(&nodes[0].url);
    let config_blob = br#"{"architecture":"amd64","os":"linux","image":"ha/app:v1"}"#;

    for (what, network, tag) in [
        ("PostgreSQL", &pgnet, "during-pg-cut"),
        ("S3", &s3net, "during-s3-cut"),
    ] {
        // A push the node has begun: half a layer acknowledged before the cut.
        let pending = noise(tag, 2 * MIB);
        let location = begin_upload(&node, "ha/app", &pending, MIB).await;

        cut.container.disconnect(network);
        let cut_at = Instant::now();
        // What the node answers at once, before its health check has noticed.
        let (s, body, t) = timed(
            node.req(Method::GET, "/v2/ha/app/manifests/v1")
                .header("accept", OCI_MANIFEST),
        )
        .await;
        eprintln!("{what} cut: GET manifest -> {s} after {t:?}");
        if what == "PostgreSQL" || s != StatusCode::OK {
            assert_unavailable(&format!("{what} cut: GET manifest"), s, &body);
        }
        let (s, body, t) =
            timed(node.req(Method::GET, &format!("/v2/ha/app/blobs/{}", sha256(&layer)))).await;
        eprintln!("{what} cut: GET blob -> {s} after {t:?}");
        assert_unavailable(&format!("{what} cut: GET blob"), s, &body);
        let (s, body, t) = timed(
            node.req(Method::PATCH, &location)
                .header("content-type", "application/octet-stream")
                .header("content-range", format!("{MIB}-{}", MIB + REFUSED - 1))
                .body(pending[MIB..MIB + REFUSED].to_vec()),
        )
        .await;
        eprintln!("{what} cut: PATCH -> {s} after {t:?}");
        assert_unavailable(&format!("{what} cut: PATCH"), s, &body);
        let manifest = manifest_of(config_blob, &layer);
        let (s, body, t) = timed(
            node.req(Method::PUT, &format!("/v2/ha/app/manifests/{tag}"))
                .header("content-type", OCI_MANIFEST)
                .body(manifest.clone()),
        )
        .await;
        eprintln!("{what} cut: PUT manifest -> {s} after {t:?}");
        assert_unavailable(&format!("{what} cut: PUT manifest"), s, &body);
        let (s, body, t) = timed(node.req(Method::POST, "/v2/ha/app/blobs/uploads/")).await;
        eprintln!("{what} cut: POST upload -> {s} after {t:?}");
        assert_unavailable(&format!("{what} cut: POST upload"), s, &body);

        // The health endpoint reports it, and the main port's gate answers 503 to all.
        let (failures, _) = until_status(
            &cut.health,
            StatusCode::SERVICE_UNAVAILABLE,
            Duration::from_secs(20),
        )
        .await;
        eprintln!(
            "{what} cut: /debug/health 503 {:?} after the cut: {failures}",
            cut_at.elapsed()
        );
        assert!(failures.contains("storagedriver"), "{failures}");
        let (s, body, _) = timed(node.req(Method::GET, "/")).await;
        assert_unavailable(&format!("{what} cut: GET /"), s, &body);
        let (s, body, _) = timed(
            node.req(Method::GET, "/v2/ha/app/manifests/v1")
                .header("accept", OCI_MANIFEST),
        )
        .await;
        assert_unavailable(&format!("{what} cut: GET manifest, gated"), s, &body);

        // The other nodes serve on, and so does the load balancer.
        for n in [&nodes[0], &nodes[2]] {
            assert_serves(&n.url, "ha/app", "v1", &v1).await;
        }
        assert_balancer_serves(&nginx, "ha/app", "v1", &v1).await;

        cut.container.connect(network);
        let reconnected = Instant::now();
        let (_, t) = until_status(
            &format!("{}/v2/ha/app/manifests/v1", cut.url),
            StatusCode::OK,
            Duration::from_secs(60),
        )
        .await;
        until_status(&cut.health, StatusCode::OK, Duration::from_secs(30)).await;
        eprintln!(
            "{what} back: the node served again after {t:?} (healthy after {:?})",
            reconnected.elapsed()
        );
        assert_serves(&cut.url, "ha/app", "v1", &v1).await;
        // The refused manifest was not stored anywhere.
        for n in &nodes {
            let resp = Registry::new(&n.url)
                .req(Method::GET, &format!("/v2/ha/app/manifests/{tag}"))
                .header("accept", OCI_MANIFEST)
                .send()
                .await
                .expect("GET");
            assert_eq!(
                resp.status(),
                StatusCode::NOT_FOUND,
                "{what}: {tag} on {}",
                n.url
            );
        }
        // The upload holds what was acknowledged before the cut, not the refused PATCH,
        // and another node finishes it; the recovered node takes a new push.
        finish_upload(&other, &location, &pending, MIB).await;
        node.push_blob("ha/app", config_blob).await;
        let resp = node
            .put_manifest(
                "ha/app",
                tag,
                OCI_MANIFEST,
                &manifest_of(config_blob, &pending),
            )
            .await;
        assert_eq!(
            resp.status(),
            StatusCode::CREATED,
            "{what}: a push after recovery"
        );
        let pushed = sha256(&manifest_of(config_blob, &pending));
        for n in &nodes {
            assert_serves(&n.url, "ha/app", tag, &pushed).await;
        }
    }
    let tags: serde_json::Value = reqwest::get(format!("{}/v2/ha/app/tags/list", nginx.url))
        .await
        .expect("tags")
        .json()
        .await
        .expect("json");
    assert_eq!(
        tags["tags"],
        serde_json::json!(["during-pg-cut", "during-s3-cut", "v1"])
    );
    eprintln!("done in {:?}", started.elapsed());
}
