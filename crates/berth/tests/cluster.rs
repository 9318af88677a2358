//! A real cluster: 3 `berth` nodes sharing one S3 bucket (SeaweedFS) and one PostgreSQL
//! database behind nginx (`tests/common/cluster.rs`). A chunked push spread over the
//! nodes, docker/podman/skopeo through nginx, a node started later, and a node killed
//! while 8 clients push and pull.

mod common;

use common::cluster::Cluster;
use common::layout::noise;
use common::push::{image_manifest, sha256, Registry};
use common::tools::{empty_auth_file, podman, skopeo};
use common::{require_tool, run};
use reqwest::{Method, StatusCode};
use std::collections::BTreeSet;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const MIB: usize = 1024 * 1024;
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// Push an image whose layer goes in the given chunk sizes (each request through nginx,
/// so each goes to the next node); returns the manifest digest.
async fn chunked_image(
    r: &Registry,
    repo: &str,
    tag: &str,
    layer: &[u8],
    chunks: &[usize],
) -> oci::Digest {
    r.push_image_chunked(repo, tag, layer, chunks).await.0
}

/// The manifest `reference` and every blob it names, read from `url`, match `digest`.
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
    let mut blobs = vec![manifest["config"]["digest"]
        .as_str()
        .expect("config")
        .to_string()];
    for l in manifest["layers"].as_array().expect("layers") {
        blobs.push(l["digest"].as_str().expect("layer").to_string());
    }
    for b in blobs {
        // Redirected to the object store and followed.
        let resp = r
            .req(Method::GET, &format!("/v2/{repo}/blobs/{b}"))
            .send()
            .await
            .expect("GET blob");
        assert_eq!(resp.status(), StatusCode::OK, "{url} blob {b}");
        assert_eq!(sha256(&resp.bytes().await.expect("bytes")).to_string(), b);
    }
}

#[tokio::test]
async fn a_chunked_push_spread_over_the_nodes_is_served_by_every_node() {
    let mut c = Cluster::start(3, "");
    let r = Registry::new(&c.url);
    let layer = noise("round robin", 11 * MIB + 7);
    let chunks = [1, MIB, 6 * MIB, 100, 3 * MIB, MIB - 94];
    let digest = chunked_image(&r, "team/app", "v1", &layer, &chunks).await;
    // nginx spread the upload's requests over all three nodes.
    let log = c.nginx_log();
    let patch_nodes: BTreeSet<&str> = log
        .lines()
        .filter(|l| l.starts_with("PATCH "))
        .filter_map(|l| l.split_whitespace().nth(3))
        .collect();
    assert_eq!(
        patch_nodes.len(),
        3,
        "PATCHes went to {patch_nodes:?}:\n{log}"
    );
    for node in c.live() {
        assert_serves(&node.url, "team/app", "v1", &digest).await;
        assert_serves(&node.url, "team/app", &digest.to_string(), &digest).await;
    }
    // A node started now serves everything at once: no warm-up, no scan.
    let started = Instant::now();
    let late = c.add_node().url.clone();
    assert_serves(&late, "team/app", "v1", &digest).await;
    let tags: serde_json::Value = reqwest::get(format!("{late}/v2/team/app/tags/list"))
        .await
        .expect("tags")
        .json()
        .await
        .expect("json");
    assert_eq!(tags["tags"], serde_json::json!(["v1"]));
    eprintln!(
        "a node started later served the image {:?} after its start",
        started.elapsed()
    );
    c.reload_nginx();
    assert_serves(&c.url, "team/app", "v1", &digest).await;
}

#[test]
fn docker_podman_and_skopeo_through_nginx() {
    require_tool("docker");
    require_tool("skopeo");
    require_tool("podman");
    let c = Cluster::start(3, "");
    let tmp = tempfile::tempdir().expect("tempdir");
    let rootfs = tmp.path().join("rootfs.tar");
    std::fs::write(
        &rootfs,
        common::layout::plain_tar(&[
            ("etc/hostname", b"berth-cluster\n"),
            (
                "data/noise.bin",
                &noise(&format!("cluster {}", c.host), 6 * MIB),
            ),
        ]),
    )
    .expect("rootfs");
    let reference = format!("{}/cluster/imported:v1", c.host);
    let id = run(Command::new("docker")
        .arg("import")
        .arg(&rootfs)
        .arg(&reference))
    .trim()
    .to_string();
    let pushed = run(Command::new("docker").args(["push", &reference]));
    let digest = pushed
        .lines()
        .find_map(|l| l.split("digest: ").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no digest in: {pushed}"))
        .to_string();
    run(Command::new("docker").args(["rmi", "-f", &reference, &id]));
    let pulled = run(Command::new("docker").args(["pull", &reference]));
    assert!(pulled.contains(&digest), "{pulled}");
    let _ = Command::new("docker")
        .args(["rmi", "-f", &reference])
        .output();

    // skopeo copies it to another repository through nginx, podman pulls that one.
    let auth = empty_auth_file(tmp.path());
    run(skopeo()
        .args([
            "copy",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            "--authfile",
        ])
        .arg(&auth)
        .arg(format!("docker://{reference}"))
        .arg(format!("docker://{}/cluster/copied:v1", c.host)));
    let root = tmp.path().join("podman");
    let out = run(podman(&root)
        .args(["pull", "--tls-verify=false"])
        .arg(format!("{}/cluster/copied:v1", c.host)));
    assert!(!out.trim().is_empty(), "podman pull printed no image id");
    let inspected = run(podman(&root).args([
        "image",
        "inspect",
        "--format",
        "{{.Digest}}",
        &format!("{}/cluster/copied:v1", c.host),
    ]));
    assert_eq!(inspected.trim(), digest);
    // And podman pushes through nginx too.
    run(podman(&root)
        .args(["push", "--tls-verify=false"])
        .arg(format!("{}/cluster/copied:v1", c.host))
        .arg(format!("docker://{}/cluster/podman:v1", c.host)));
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let d: oci::Digest = digest.parse().expect("digest");
    for node in c.live() {
        rt.block_on(assert_serves(&node.url, "cluster/imported", "v1", &d));
    }
}

/// One client's loop: push small images (a retry starts the blob over), and pull what
/// was pushed before; every push that returned 201 is recorded.
async fn client(
    url: String,
    id: usize,
    until: Instant,
    pushed: Arc<Mutex<Vec<(String, oci::Digest)>>>,
    failures: Arc<Mutex<Vec<String>>>,
) {
    let r = Registry::with_client(
        reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("client"),
        &url,
    );
    let mut n = 0;
    while Instant::now() < until {
        n += 1;
        let repo = format!("load/c{id}");
        let tag = format!("t{n}");
        let layer = noise(&format!("load {id} {n}"), 64 * 1024 + n * 4096 + id);
        let config = format!("{{\"client\":{id},\"n\":{n}}}");
        let mut done = false;
        for _attempt in 0..10 {
            match try_push(&r, &repo, &tag, config.as_bytes(), &layer).await {
                Ok(d) => {
                    pushed
                        .lock()
                        .expect("lock")
                        .push((format!("{repo}:{tag}"), d));
                    done = true;
                    break;
                }
                Err(e) => {
                    failures.lock().expect("lock").push(e);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        assert!(
            done,
            "client {id} could not push {repo}:{tag} in 10 attempts"
        );
        // Pull something pushed before (by anyone).
        let earlier = {
            let p = pushed.lock().expect("lock");
            p.get(n * 7 % p.len().max(1)).cloned()
        };
        if let Some((name, d)) = earlier {
            let (repo, tag) = name.split_once(':').expect("name");
            for _attempt in 0..10 {
                let resp = r
                    .req(Method::GET, &format!("/v2/{repo}/manifests/{tag}"))
                    .header("accept", OCI_MANIFEST)
                    .send()
                    .await;
                match resp {
                    Ok(resp) if resp.status() == StatusCode::OK => {
                        let body = resp.bytes().await.unwrap_or_default();
                        assert_eq!(sha256(&body), d, "{name} pulled with another digest");
                        break;
                    }
                    Ok(resp) if resp.status().is_server_error() => {
                        failures
                            .lock()
                            .expect("lock")
                            .push(format!("pull {name}: {}", resp.status()));
                    }
                    Ok(resp) => panic!("pull {name}: {}", resp.status()),
                    Err(e) => failures
                        .lock()
                        .expect("lock")
                        .push(format!("pull {name}: {e}")),
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn try_push(
    r: &Registry,
    repo: &str,
    tag: &str,
    config: &[u8],
    layer: &[u8],
) -> Result<oci::Digest, String> {
    async fn blob(r: &Registry, repo: &str, data: &[u8]) -> Result<(), String> {
        let d = sha256(data);
        let resp = r
            .req(Method::POST, &format!("/v2/{repo}/blobs/uploads/"))
            .send()
            .await
            .map_err(|e| format!("POST: {e}"))?;
        if resp.status() != StatusCode::ACCEPTED {
            return Err(format!("POST: {}", resp.status()));
        }
        let location = resp.headers()["location"]
            .to_str()
            .map_err(|e| e.to_string())?
            .to_string();
        let half = data.len() / 2;
        let resp = r
            .req(Method::PATCH, &location)
            .header("content-type", "application/octet-stream")
            .header("content-range", format!("0-{}", half - 1))
            .body(data[..half].to_vec())
            .send()
            .await
            .map_err(|e| format!("PATCH: {e}"))?;
        if resp.status() != StatusCode::ACCEPTED {
            return Err(format!("PATCH: {}", resp.status()));
        }
        let location = resp.headers()["location"]
            .to_str()
            .map_err(|e| e.to_string())?
            .to_string();
        let sep = if location.contains('?') { '&' } else { '?' };
        let resp = r
            .req(Method::PUT, &format!("{location}{sep}digest={d}"))
            .header("content-range", format!("{}-{}", half, data.len() - 1))
            .body(data[half..].to_vec())
            .send()
            .await
            .map_err(|e| format!("PUT: {e}"))?;
        if resp.status() != StatusCode::CREATED {
            return Err(format!("PUT: {}", resp.status()));
        }
        Ok(())
    }
    blob(r, repo, config).await?;
    blob(r, repo, layer).await?;
    let manifest = serde_json::to_vec(&image_manifest(config, layer)).map_err(|e| e.to_string())?;
    let resp = r
        .req(Method::PUT, &format!("/v2/{repo}/manifests/{tag}"))
        .header("content-type", OCI_MANIFEST)
        .body(manifest.clone())
        .send()
        .await
        .map_err(|e| format!("PUT manifest: {e}"))?;
    if resp.status() != StatusCode::CREATED {
        return Err(format!("PUT manifest: {}", resp.status()));
    }
    Ok(sha256(&manifest))
}

/// 8 clients push and pull through nginx for 24 s; node 1 is SIGKILLed after 8 s. Every
/// push that returned 201 is then served, with its digests, by every surviving node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_under_load_loses_nothing_that_was_acknowledged() {
    let mut c = Cluster::start(3, "");
    let pushed = Arc::new(Mutex::new(Vec::new()));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let until = Instant::now() + Duration::from_secs(24);
    let clients: Vec<_> = (0..8)
        .map(|id| {
            tokio::spawn(client(
                c.url.clone(),
                id,
                until,
                pushed.clone(),
                failures.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(8)).await;
    let before_kill = pushed.lock().expect("lock").len();
    c.kill_node(1);
    for t in clients {
        t.await.expect("client");
    }
    let pushed = pushed.lock().expect("lock").clone();
    let failures = failures.lock().expect("lock").clone();
    eprintln!(
        "{} images pushed ({} before the kill); {} failed requests retried: {:?}",
        pushed.len(),
        before_kill,
        failures.len(),
        failures.iter().take(10).collect::<Vec<_>>()
    );
    assert!(pushed.len() > before_kill, "pushes went on after the kill");
    c.reload_nginx();
    for node in c.live() {
        for (name, d) in &pushed {
            let (repo, tag) = name.split_once(':').expect("name");
            assert_serves(&node.url, repo, tag, d).await;
        }
    }
}

/// A garbage collection schedule (every 2 s) followed by 3 nodes at once: each tick is
/// recorded once (the tick is unique with its run, so the other nodes' starts for it
/// record nothing and collect nothing), runs keep the schedule's pace, none fails, and
/// the unreferenced blob pushed through nginx is deleted exactly once.
#[tokio::test]
async fn a_schedule_runs_once_per_tick_across_the_nodes() {
    let c = Cluster::start_with_storage(
        3,
        "  maintenance:\n    garbagecollect:\n      schedule: \"*/2 * * * * *\"\n      grace: 0s\n",
        "",
    );
    let data = b"a layer nothing references".to_vec();
    Registry::new(&c.url).push_blob("sched/app", &data).await;
    tokio::time::sleep(Duration::from_secs(9)).await;
    let row = run(Command::new("psql")
        .arg(&c.dsn)
        .args(["-At", "-F", " ", "-c"])
        .arg(
            "SELECT count(*), count(DISTINCT scheduled_for),
                        count(*) FILTER (WHERE status NOT IN ('Success', 'Running')),
                        COALESCE(sum(deleted_blobs), 0)
                   FROM gc_runs WHERE kind = 'SCHEDULE'",
        ));
    let n: Vec<i64> = row
        .split_whitespace()
        .map(|x| x.parse().expect("number"))
        .collect();
    let (runs, ticks, failed, deleted) = (n[0], n[1], n[2], n[3]);
    assert!(runs >= 3, "only {runs} scheduled runs in 9 s: {row}");
    assert_eq!(runs, ticks, "a tick was collected twice: {row}");
    assert_eq!(failed, 0, "{row}");
    assert_eq!(deleted, 1, "{row}");
}

/// A directory the `postgres` user can enter (the tests run as root; PostgreSQL will not).
fn shared_tempdir() -> tempfile::TempDir {
    let d = tempfile::Builder::new()
        .prefix("berth-outage-")
        .tempdir_in("/tmp")
        .expect("tempdir");
    run(Command::new("chmod").arg("755").arg(d.path()));
    d
}

fn env_value(exports: &str, key: &str) -> String {
    common::s3::parse_env(exports)
        .remove(key)
        .unwrap_or_else(|| panic!("no {key} in {exports}"))
}

/// Poll `GET url` until its status is `want` (or fail after `within`); returns the body.
async fn until_status(url: &str, want: StatusCode, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let last = match reqwest::Client::new()
            .get(url)
            .header("accept", OCI_MANIFEST)
            .send()
            .await
        {
            Ok(r) if r.status() == want => return r.text().await.unwrap_or_default(),
            Ok(r) => format!("{}", r.status()),
            Err(e) => e.to_string(),
        };
        assert!(
            Instant::now() < deadline,
            "{url}: still {last}, wanted {want}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A node whose PostgreSQL, then whose object store, goes away: its requests fail with
/// 503 UNAVAILABLE in the spec's envelope (the health gate takes over, for a load
/// balancer to drop it), nothing pushed before is harmed, and it serves again on its own
/// once each comes back.
#[tokio::test]
async fn a_node_cut_off_from_postgres_or_s3_answers_503_and_recovers() {
    let dir = shared_tempdir();
    let pg_dir = dir.path().join("pg");
    let start_pg = || {
        run(Command::new("bash")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../scripts/start-postgres.sh"
            ))
            .arg(&pg_dir))
    };
    let stop_pg = || {
        run(Command::new("bash")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../scripts/stop-postgres.sh"
            ))
            .arg(&pg_dir))
    };
    let dsn = env_value(&start_pg(), "BERTH_TEST_POSTGRES_URL");
    let shared_s3 = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/s3");
    let s3_dir = dir.path().join("s3");
    let s3_env = common::s3::start_in(common::s3::S3Kind::SeaweedFs, &s3_dir);
    let s3_pid = env_value(&s3_env, "S3_PID");
    let config = format!(
        "version: 0.1\nstorage:\n  s3:\n    accesskey: {}\n    secretkey: {}\n    region: {}\n    regionendpoint: {}\n    bucket: {}\n  delete:\n    enabled: true\n  redirect:\n    disable: true\ndatabase:\n  driver: postgres\n  dsn: {dsn}\n  connecttimeout: 2s\n  pool:\n    acquiretimeout: 3s\nhealth:\n  storagedriver:\n    enabled: true\n    interval: 1s\n    threshold: 2\nhttp:\n  addr: 127.0.0.1:0\n",
        env_value(&s3_env, "S3_ACCESS_KEY_ID"),
        env_value(&s3_env, "S3_SECRET_ACCESS_KEY"),
        env_value(&s3_env, "S3_REGION"),
        env_value(&s3_env, "S3_ENDPOINT"),
        env_value(&s3_env, "S3_BUCKET"),
    );
    let node = common::Berth::start_with_config(&config);
    let r = Registry::new(&node.url);
    let layer = noise("outage", 2 * MIB);
    let digest = chunked_image(&r, "ha/app", "v1", &layer, &[MIB, MIB]).await;
    let manifest_url = format!("{}/v2/ha/app/manifests/v1", node.url);
    until_status(&manifest_url, StatusCode::OK, Duration::from_secs(5)).await;

    for (what, stop, restart) in [
        (
            "PostgreSQL",
            Box::new(|| {
                stop_pg();
            }) as Box<dyn Fn()>,
            Box::new(|| {
                start_pg();
            }) as Box<dyn Fn()>,
        ),
        (
            // The object store stops answering (SIGSTOP: connections open, nothing
            // comes back, as behind a broken link); the health check's bound catches it.
            "S3",
            Box::new(|| {
                run(Command::new("kill").args(["-STOP", &s3_pid]));
            }),
            Box::new(|| {
                run(Command::new("kill").args(["-CONT", &s3_pid]));
            }),
        ),
    ] {
        stop();
        let body = until_status(
            &manifest_url,
            StatusCode::SERVICE_UNAVAILABLE,
            Duration::from_secs(30),
        )
        .await;
        let json: serde_json::Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("{what} down: not JSON ({e}): {body}"));
        assert_eq!(
            json["errors"][0]["code"], "UNAVAILABLE",
            "{what} down: {body}"
        );
        // A push meanwhile is refused the same way.
        let resp = r
            .req(Method::POST, "/v2/ha/app/blobs/uploads/")
            .send()
            .await
            .expect("POST");
        assert_eq!(
            resp.status(),
            StatusCode::SERVICE_UNAVAILABLE,
            "{what} down: POST"
        );
        restart();
        until_status(&manifest_url, StatusCode::OK, Duration::from_secs(60)).await;
        assert_serves(&node.url, "ha/app", "v1", &digest).await;
    }
    // Pushing works again.
    let again = chunked_image(&r, "ha/app", "v2", &noise("after", MIB), &[MIB]).await;
    assert_serves(&node.url, "ha/app", "v2", &again).await;
    drop(node);
    stop_pg();
    let _ = Command::new("bash")
        .arg(format!("{shared_s3}/stop-seaweedfs.sh"))
        .arg(&s3_dir)
        .arg("--purge")
        .output();
}
