//! `berth migrate`: a single node (filesystem + SQLite) moved into S3 (SeaweedFS) and
//! PostgreSQL while it serves, interrupted and resumed, caught up after the node stops,
//! then served by two cluster nodes exactly as the single node served it: every tag,
//! manifest and blob, referrers, the catalog, an upload a client had half sent (finished
//! on the cluster), and the notification events still waiting in the outbox. A target
//! that holds anything else is refused.

mod common;

use common::cluster::fresh_database;
use common::layout::noise;
use common::push::{image_manifest, sha256, Registry};
use common::s3::{s3, S3Kind};
use common::{berth_bin, require_tool, run, Berth};
use reqwest::{Method, StatusCode};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const MIB: usize = 1024 * 1024;
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// `berth migrate SOURCE TARGET` to completion; its output is shown in the test's log.
fn migrate(source: &Path, target: &Path) -> Output {
    let out = Command::new(berth_bin())
        .arg("migrate")
        .arg(source)
        .arg(target)
        .env("NO_COLOR", "1")
        .output()
        .expect("run berth migrate");
    eprintln!("berth migrate:\n{}", text(&out));
    out
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Everything a client can read of a registry, by URL path: the catalog, every tag
/// list, every manifest by tag and by digest, every blob those name, referrers.
async fn contents(url: &str, repos: &[&str]) -> Vec<(String, Vec<u8>)> {
    let r = Registry::new(url);
    let get = |path: String, accept: Option<&'static str>| {
        let mut req = r.req(Method::GET, &path);
        if let Some(a) = accept {
            req = req.header("accept", a);
        }
        async move {
            let resp = req.send().await.expect("GET");
            assert_eq!(resp.status(), StatusCode::OK, "GET {path}");
            resp.bytes().await.expect("body").to_vec()
        }
    };
    let mut out = Vec::new();
    let catalog = get("/v2/_catalog?n=1000".into(), None).await;
    out.push(("/v2/_catalog".into(), catalog));
    for repo in repos {
        let path = format!("/v2/{repo}/tags/list");
        let list = get(path.clone(), None).await;
        let tags: serde_json::Value = serde_json::from_slice(&list).expect("tags json");
        out.push((path, list));
        for tag in tags["tags"].as_array().expect("tags") {
            let tag = tag.as_str().expect("tag");
            let path = format!("/v2/{repo}/manifests/{tag}");
            let body = get(path.clone(), Some("application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json")).await;
            let manifest: serde_json::Value = serde_json::from_slice(&body).expect("manifest");
            let digest = sha256(&body);
            let mut children = Vec::new();
            if let Some(m) = manifest["manifests"].as_array() {
                children.extend(
                    m.iter()
                        .map(|d| d["digest"].as_str().expect("digest").to_string()),
                );
            }
            for child in &children {
                let path = format!("/v2/{repo}/manifests/{child}");
                let child_body = get(path.clone(), Some(OCI_MANIFEST)).await;
                let child_manifest: serde_json::Value =
                    serde_json::from_slice(&child_body).expect("child");
                for blob in blob_digests(&child_manifest) {
                    let path = format!("/v2/{repo}/blobs/{blob}");
                    let bytes = get(path.clone(), None).await;
                    assert_eq!(sha256(&bytes).to_string(), blob, "{url}{path}");
                    out.push((path, bytes));
                }
                out.push((path, child_body));
            }
            for blob in blob_digests(&manifest) {
                let path = format!("/v2/{repo}/blobs/{blob}");
                let bytes = get(path.clone(), None).await;
                assert_eq!(sha256(&bytes).to_string(), blob, "{url}{path}");
                out.push((path, bytes));
            }
            let path_by_digest = format!("/v2/{repo}/manifests/{digest}");
            out.push((path_by_digest, body.clone()));
            out.push((path, body));
            let referrers = format!("/v2/{repo}/referrers/{digest}");
            out.push((referrers.clone(), get(referrers, None).await));
        }
    }
    out.sort();
    out.dedup();
    out
}

fn blob_digests(manifest: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(c) = manifest["config"]["digest"].as_str() {
        out.push(c.to_string());
    }
    for l in manifest["layers"].as_array().into_iter().flatten() {
        out.push(l["digest"].as_str().expect("layer").to_string());
    }
    out
}

/// An image whose layer is `layer`, tagged `tag`; its manifest digest.
async fn image(r: &Registry, repo: &str, tag: &str, layer: &[u8]) -> oci::Digest {
    let config =
        format!("{{\"architecture\":\"amd64\",\"os\":\"linux\",\"tag\":\"{repo}:{tag}\"}}");
    r.push_blob(repo, config.as_bytes()).await;
    r.push_blob(repo, layer).await;
    let body = serde_json::to_vec(&image_manifest(config.as_bytes(), layer)).expect("json");
    let resp = r.put_manifest(repo, tag, OCI_MANIFEST, &body).await;
    assert_eq!(resp.status(), StatusCode::CREATED, "{repo}:{tag}");
    sha256(&body)
}

/// Start `berth migrate` and SIGKILL it once it has been copying blobs for a moment.
fn interrupted_migrate(source: &Path, target: &Path) -> String {
    let mut child = Command::new(berth_bin())
        .arg("migrate")
        .arg(source)
        .arg(target)
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn berth migrate");
    let stdout = child.stdout.take().expect("stdout");
    let mut seen = String::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("line");
        seen.push_str(&line);
        seen.push('\n');
        if line.starts_with("copying blobs") {
            std::thread::sleep(Duration::from_millis(400));
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_serving_node_moves_into_s3_and_postgres_and_the_cluster_serves_exactly_the_same() {
    require_tool("psql");
    // A webhook endpoint nobody listens on: the node's events wait in its outbox.
    let mut node = Berth::start_with(
        "notifications:\n  endpoints:\n    - name: hook\n      url: http://127.0.0.1:9/events\n      timeout: 1s\n      threshold: 2\n      backoff: 1h\n",
    );
    let r = Registry::new(&node.url);
    let v1 = image(&r, "team/app", "v1", &noise("v1", 6 * MIB + 3)).await;
    let v2 = image(&r, "team/app", "v2", &noise("v2", 2 * MIB)).await;
    // An index of both, and a signature-like artifact whose subject is v1.
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": v1.to_string(), "size": 0, "platform": {"architecture": "amd64", "os": "linux"}},
        ],
    });
    // Sizes must be right: read them back.
    let v1_size = r
        .req(Method::HEAD, &format!("/v2/team/app/manifests/{v1}"))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .expect("HEAD")
        .headers()["content-length"]
        .to_str()
        .expect("length")
        .parse::<u64>()
        .expect("number");
    let mut index = index;
    index["manifests"][0]["size"] = v1_size.into();
    let index_body = serde_json::to_vec(&index).expect("json");
    let resp = r
        .put_manifest("team/app", "multi", OCI_INDEX, &index_body)
        .await;
    assert_eq!(resp.status(), StatusCode::CREATED, "index");
    let empty = b"{}";
    r.push_blob("team/app", empty).await;
    let signature = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.example.signature",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": sha256(empty).to_string(), "size": 2},
        "layers": [{"mediaType": "application/vnd.oci.empty.v1+json", "digest": sha256(empty).to_string(), "size": 2}],
        "subject": {"mediaType": OCI_MANIFEST, "digest": v1.to_string(), "size": v1_size},
    });
    let sig_body = serde_json::to_vec(&signature).expect("json");
    let resp = r
        .put_manifest(
            "team/app",
            &sha256(&sig_body).to_string(),
            OCI_MANIFEST,
            &sig_body,
        )
        .await;
    assert_eq!(resp.status(), StatusCode::CREATED, "signature");
    // Enough bytes that an interrupted run stops mid-copy.
    for i in 0..24 {
        image(
            &r,
            "bulk/layers",
            &format!("n{i}"),
            &noise(&format!("bulk {i}"), 2 * MIB + i),
        )
        .await;
    }
    let small = image(&r, "library/small", "latest", b"small layer").await;

    // A client has sent the first MiB of a blob and will send the rest to the cluster.
    let half_sent = noise("half sent", 3 * MIB);
    let resp = r
        .req(Method::POST, "/v2/team/app/blobs/uploads/")
        .send()
        .await
        .expect("POST");
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let location = resp.headers()["location"]
        .to_str()
        .expect("location")
        .to_string();
    let resp = r
        .req(Method::PATCH, &location)
        .header("content-type", "application/octet-stream")
        .header("content-range", format!("0-{}", MIB - 1))
        .body(half_sent[..MIB].to_vec())
        .send()
        .await
        .expect("PATCH");
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let location = resp.headers()["location"]
        .to_str()
        .expect("location")
        .to_string();

    let dsn = fresh_database();
    let (storage, _) = s3(S3Kind::SeaweedFs).storage_yaml("");
    let target_config = format!(
        "version: 0.1\nlog:\n  level: info\n{storage}database:\n  driver: postgres\n  dsn: {dsn}\n"
    );
    let work = tempfile::tempdir().expect("tempdir");
    let target = work.path().join("cluster.yml");
    std::fs::write(&target, &target_config).expect("write target config");
    let source = node.config_path();

    // Interrupted while copying blobs, then run again: it goes on where it stopped.
    let seen = interrupted_migrate(&source, &target);
    eprintln!("interrupted berth migrate:\n{seen}");
    assert!(seen.contains("copying blobs"), "{seen}");
    let late = image(&r, "team/late", "1", &noise("pushed while migrating", MIB)).await;
    let out = migrate(&source, &target);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(stdout.contains("migrated "), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("blobs: ") && !l.contains(", 0 already in the target")),
        "the second run found the first run's blobs in the target: {stdout}"
    );

    // More changes before the switch: a deleted image, a new one.
    let resp = r
        .req(
            Method::DELETE,
            &format!("/v2/library/small/manifests/{small}"),
        )
        .send()
        .await
        .expect("DELETE");
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let last = image(
        &r,
        "team/app",
        "v3",
        &noise("last before the switch", MIB / 2),
    )
    .await;
    let repos = ["team/app", "team/late", "bulk/layers"];
    let before = contents(&node.url, &repos).await;
    node.stop();

    // The final catch-up, with the node stopped.
    let out = migrate(&source, &target);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        stdout.contains("replacing it with the source's current content"),
        "{stdout}"
    );
    let outbox_rows: u64 = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("outbox: "))
        .and_then(|l| l.strip_suffix(" rows"))
        .and_then(|n| n.parse().ok())
        .expect("the outbox line");
    assert!(outbox_rows > 20, "events waited in the outbox: {stdout}");
    let in_pg =
        run(Command::new("psql")
            .arg(&dsn)
            .args(["-At", "-c", "SELECT COUNT(*) FROM outbox"]));
    assert_eq!(in_pg.trim(), outbox_rows.to_string());

    // Two cluster nodes on the target serve exactly what the node served.
    let node_config = format!("{target_config}http:\n  addr: 127.0.0.1:0\n");
    let a = Berth::start_with_config(&node_config);
    let b = Berth::start_with_config(&node_config);
    for n in [&a, &b] {
        let after = contents(&n.url, &repos).await;
        assert_eq!(after.len(), before.len(), "{}", n.url);
        for (x, y) in before.iter().zip(&after) {
            assert_eq!(x.0, y.0);
            assert!(x.1 == y.1, "{} differs on {}", x.0, n.url);
        }
        let gone = Registry::new(&n.url)
            .req(Method::GET, &format!("/v2/library/small/manifests/{small}"))
            .send()
            .await
            .expect("GET");
        assert_eq!(
            gone.status(),
            StatusCode::NOT_FOUND,
            "deleted before the switch"
        );
    }
    for (repo, d) in [
        ("team/app", &v1),
        ("team/app", &v2),
        ("team/late", &late),
        ("team/app", &last),
    ] {
        let resp = Registry::new(&b.url)
            .req(Method::HEAD, &format!("/v2/{repo}/manifests/{d}"))
            .send()
            .await
            .expect("HEAD");
        assert_eq!(resp.status(), StatusCode::OK, "{repo}@{d}");
    }

    // The half-sent upload is finished on the cluster, on the other node.
    let path = location
        .split_once("/v2/")
        .map(|(_, p)| format!("/v2/{p}"))
        .expect("a /v2/ location");
    let rb = Registry::new(&b.url);
    let resp = rb
        .req(Method::PATCH, &path)
        .header("content-type", "application/octet-stream")
        .header("content-range", format!("{}-{}", MIB, half_sent.len() - 1))
        .body(half_sent[MIB..].to_vec())
        .send()
        .await
        .expect("PATCH on the cluster");
    assert_eq!(
        resp.status(),
        StatusCode::ACCEPTED,
        "the upload continues on the cluster"
    );
    let next = resp.headers()["location"]
        .to_str()
        .expect("location")
        .to_string();
    let d = sha256(&half_sent);
    let sep = if next.contains('?') { '&' } else { '?' };
    let resp = rb
        .req(Method::PUT, &format!("{next}{sep}digest={d}"))
        .send()
        .await
        .expect("PUT");
    assert_eq!(
        resp.status(),
        StatusCode::CREATED,
        "the upload completes on the cluster"
    );
    let got = Registry::new(&a.url)
        .req(Method::GET, &format!("/v2/team/app/blobs/{d}"))
        .send()
        .await
        .expect("GET")
        .bytes()
        .await
        .expect("bytes");
    assert_eq!(sha256(&got), d);

    // The cluster now holds content of its own: a migration would lose it.
    image(
        &Registry::new(&a.url),
        "team/cluster",
        "1",
        b"written by the cluster",
    )
    .await;
    drop((a, b));
    let out = migrate(&source, &target);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("refusing to replace it"),
        "{}",
        text(&out)
    );
    // So is another source's.
    let other = Berth::start();
    image(
        &Registry::new(&other.url),
        "other/one",
        "1",
        b"another node",
    )
    .await;
    let out = migrate(&other.config_path(), &target);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("another source"), "{}", text(&out));
}

/// With `auth.berth`, the node's users, projects, memberships and token signing keys
/// move too: the cluster accepts the same passwords, honours the same roles, and a token
/// the node issued before the switch is still valid on the cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_roles_and_issued_tokens_move_with_the_node() {
    require_tool("psql");
    let auth = "auth:\n  berth:\n    adminpassword: Harbor12345\n";
    let mut node = Berth::start_with(auth);
    node.cli(&["project", "create", "team"], None);
    node.cli(&["user", "add", "dev"], Some("Dev-passw0rd"));
    node.cli(
        &[
            "project",
            "add-member",
            "team",
            "dev",
            "--role",
            "developer",
        ],
        None,
    );
    let dev = Registry::new(&node.url).with_auth("dev", "Dev-passw0rd");
    let pushed = image(&dev, "team/app", "v1", b"a layer of the team").await;
    let c = reqwest::Client::new();
    let token: serde_json::Value = c
        .get(format!(
            "{}/service/token?service=berth-registry&scope=repository:team/app:pull",
            node.url
        ))
        .basic_auth("dev", Some("Dev-passw0rd"))
        .send()
        .await
        .expect("token")
        .json()
        .await
        .expect("token json");
    let token = token["token"].as_str().expect("a token").to_string();
    node.stop();

    let dsn = fresh_database();
    let (storage, _) = s3(S3Kind::SeaweedFs).storage_yaml("");
    let target_config = format!(
        "version: 0.1\nlog:\n  level: info\n{storage}database:\n  driver: postgres\n  dsn: {dsn}\n{auth}http:\n  addr: 127.0.0.1:0\n"
    );
    let work = tempfile::tempdir().expect("tempdir");
    let target = work.path().join("cluster.yml");
    std::fs::write(&target, &target_config).expect("write target config");
    let out = migrate(&node.config_path(), &target);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("  users: "),
        "{}",
        text(&out)
    );

    let cluster = Berth::start_with_config(&target_config);
    let manifest = |auth: Option<&str>| {
        let mut req = c
            .get(format!("{}/v2/team/app/manifests/v1", cluster.url))
            .header("accept", OCI_MANIFEST);
        if let Some(t) = auth {
            req = req.bearer_auth(t);
        }
        req.send()
    };
    // The node's token, signed by its key, now in PostgreSQL.
    let resp = manifest(Some(&token)).await.expect("GET");
    assert_eq!(resp.status(), StatusCode::OK, "a token issued by the node");
    assert_eq!(sha256(&resp.bytes().await.expect("body")), pushed);
    // Nobody else.
    let resp = manifest(None).await.expect("GET");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    // The same password and role: a developer may push to the project, not elsewhere.
    let dev = Registry::new(&cluster.url).with_auth("dev", "Dev-passw0rd");
    image(&dev, "team/app", "v2", b"pushed to the cluster").await;
    let resp = dev
        .req(Method::POST, "/v2/elsewhere/app/blobs/uploads/")
        .send()
        .await
        .expect("POST");
    assert_eq!(
        resp.status(),
        StatusCode::FORBIDDEN,
        "no role outside the project"
    );
    let projects: serde_json::Value = c
        .get(format!("{}/api/v2.0/projects?name=team", cluster.url))
        .basic_auth("admin", Some("Harbor12345"))
        .send()
        .await
        .expect("projects")
        .json()
        .await
        .expect("json");
    assert_eq!(projects[0]["name"], "team", "{projects}");
}
