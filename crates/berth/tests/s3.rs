//! `storage.s3` against real S3 servers (SeaweedFS and Garage, `tests/common/s3.rs`):
//! docker and skopeo push and pull, blob GETs answered with presigned redirects (or
//! served through Berth with `storage.redirect.disable`), chunked uploads of awkward
//! sizes, ranges, and garbage collection removing the objects.

mod common;

use common::layout::noise;
use common::push::{sha256, Registry};
use common::s3::{s3, S3Kind};
use common::{require_tool, run, Berth};
use reqwest::{Method, StatusCode};
use std::process::Command;

const MIB: usize = 1024 * 1024;

fn berth_on(kind: S3Kind, extra_storage: &str) -> (Berth, String) {
    let (storage, root) = s3(kind).storage_yaml(extra_storage);
    let b = Berth::start_with_config(&format!(
        "version: 0.1\nlog:\n  level: info\n{storage}http:\n  addr: 127.0.0.1:0\ndatabase:\n  path: DATA/berth.db\n"
    ));
    (b, root)
}

/// A client that does not follow redirects, to see Berth's own answers.
fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

/// A one-layer image whose layer is pushed in chunks of 1 byte, 3 MiB and the rest (an
/// S3 part boundary and a short part included).
async fn push_image(
    r: &Registry,
    repo: &str,
    tag: &str,
    layer: &[u8],
) -> (oci::Digest, oci::Digest) {
    r.push_image_chunked(repo, tag, layer, &[1, 3 * MIB, layer.len() - 3 * MIB - 1])
        .await
}

/// Blob GETs redirect to a presigned URL that serves the exact bytes (and a Range
/// sent to it); HEAD answers from Berth.
async fn redirects(kind: S3Kind) {
    let (b, _) = berth_on(kind, "");
    let r = Registry::with_client(no_redirects(), &b.url);
    let layer = noise("redirect layer", 9 * MIB + 17);
    let (_, d) = push_image(&r, "team/app", "v1", &layer).await;
    let resp = r
        .req(Method::GET, &format!("/v2/team/app/blobs/{d}"))
        .send()
        .await
        .expect("GET");
    assert_eq!(resp.status(), StatusCode::TEMPORARY_REDIRECT);
    assert_eq!(
        resp.headers()["docker-content-digest"],
        d.to_string().as_str()
    );
    let location = resp.headers()["location"]
        .to_str()
        .expect("location")
        .to_string();
    assert!(
        location.starts_with(s3(kind).get("S3_ENDPOINT")),
        "{location}"
    );
    let fetched = reqwest::get(&location).await.expect("presigned GET");
    assert_eq!(fetched.status(), StatusCode::OK);
    assert_eq!(sha256(&fetched.bytes().await.expect("bytes")), d);
    let ranged = reqwest::Client::new()
        .get(&location)
        .header("range", "bytes=5-9")
        .send()
        .await
        .expect("ranged");
    assert_eq!(ranged.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(ranged.bytes().await.expect("bytes").as_ref(), &layer[5..10]);
    let head = r
        .req(Method::HEAD, &format!("/v2/team/app/blobs/{d}"))
        .send()
        .await
        .expect("HEAD");
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(
        head.headers()["content-length"],
        layer.len().to_string().as_str()
    );
    // A blob of another repository is still unknown here: no redirect for it.
    let other = r
        .req(Method::GET, &format!("/v2/team/other/blobs/{d}"))
        .send()
        .await
        .expect("GET");
    assert_eq!(other.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn redirects_on_seaweedfs() {
    redirects(S3Kind::SeaweedFs).await;
}

#[tokio::test]
async fn redirects_on_garage() {
    redirects(S3Kind::Garage).await;
}

/// With redirects off, Berth streams the bytes (whole and ranged); chunks of 1 byte,
/// a few MiB and past a part boundary assemble to the pushed digest.
async fn served_through_berth(kind: S3Kind) {
    let (b, _) = berth_on(kind, "  redirect:\n    disable: true\n");
    let r = Registry::with_client(no_redirects(), &b.url);
    let layer = noise("served layer", 11 * MIB + 3);
    let (manifest, d) = push_image(&r, "team/app", "v1", &layer).await;
    let resp = r
        .req(Method::GET, &format!("/v2/team/app/blobs/{d}"))
        .send()
        .await
        .expect("GET");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(sha256(&resp.bytes().await.expect("bytes")), d);
    let resp = r
        .req(Method::GET, &format!("/v2/team/app/blobs/{d}"))
        .header("range", format!("bytes={}-{}", 5 * MIB - 2, 5 * MIB + 2))
        .send()
        .await
        .expect("GET range");
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        resp.bytes().await.expect("bytes").as_ref(),
        &layer[5 * MIB - 2..=5 * MIB + 2]
    );
    let resp = r
        .req(Method::GET, "/v2/team/app/manifests/v1")
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await
        .expect("GET manifest");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(sha256(&resp.bytes().await.expect("bytes")), manifest);
}

#[tokio::test]
async fn served_through_berth_on_seaweedfs() {
    served_through_berth(S3Kind::SeaweedFs).await;
}

#[tokio::test]
async fn served_through_berth_on_garage() {
    served_through_berth(S3Kind::Garage).await;
}

/// Signed HEAD of one object of the bucket, with curl's SigV4 (not Berth's code).
fn object_exists(kind: S3Kind, key: &str) -> bool {
    let s = s3(kind);
    let code = run(Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-I"])
        .arg("--aws-sigv4")
        .arg(format!("aws:amz:{}:s3", s.get("S3_REGION")))
        .arg("-u")
        .arg(format!(
            "{}:{}",
            s.get("S3_ACCESS_KEY_ID"),
            s.get("S3_SECRET_ACCESS_KEY")
        ))
        .args(["-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD"])
        .arg(format!(
            "{}/{}/{key}",
            s.get("S3_ENDPOINT"),
            s.get("S3_BUCKET")
        )));
    match code.trim() {
        "200" => true,
        "404" => false,
        other => panic!("HEAD {key}: {other}"),
    }
}

/// `berth garbage-collect` on S3 removes the objects of blobs nothing references and
/// keeps the rest; upload objects go with their sessions. Blobs at their digests' keys
/// (`blobkeys: false`; `keyed_pushes` covers keyed ones).
async fn garbage_collection(kind: S3Kind) {
    let (b, root) = berth_on(kind, "    blobkeys: false\n");
    let r = Registry::new(&b.url);
    let keep = noise("kept layer", 4 * MIB);
    let drop = noise("dropped layer", 6 * MIB);
    let (_, kept) = push_image(&r, "team/app", "keep", &keep).await;
    let (dropped_manifest, dropped) = push_image(&r, "team/app", "drop", &drop).await;
    let key = |d: &oci::Digest| format!("{root}/blobs/sha256/{}/{}", &d.hex()[..2], d.hex());
    assert!(object_exists(kind, &key(&dropped)));
    let resp = r
        .req(
            Method::DELETE,
            &format!("/v2/team/app/manifests/{dropped_manifest}"),
        )
        .send()
        .await
        .expect("DELETE");
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let out = run(Command::new(common::berth_bin())
        .args(["garbage-collect", "--grace", "0s"])
        .arg(b.config_path())
        .env("NO_COLOR", "1"));
    assert!(
        out.contains("blobs eligible for deletion") || !out.is_empty(),
        "{out}"
    );
    assert!(
        !object_exists(kind, &key(&dropped)),
        "GC removed the object:\n{out}"
    );
    assert!(
        object_exists(kind, &key(&kept)),
        "GC kept the referenced layer"
    );
    let resp = Registry::new(&b.url)
        .req(Method::GET, &format!("/v2/team/app/blobs/{kept}"))
        .send()
        .await
        .expect("GET");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(sha256(&resp.bytes().await.expect("bytes")), kept);
}

/// A new deployment (no `blobkeys` in its configuration, a database this release
/// created) writes a pushed layer once, at a key of its own: nothing appears at its
/// digest's key, the redirect points at `objects/...` and serves
/// the exact bytes, the same layer pushed again (another repository, monolithically)
/// is served from the first copy, and garbage collection deletes it once nothing
/// references it.
async fn keyed_pushes(kind: S3Kind) {
    let (b, root) = berth_on(kind, "");
    let r = Registry::with_client(no_redirects(), &b.url);
    let layer = noise("keyed layer", 11 * MIB + 3);
    let (manifest, d) = push_image(&r, "team/app", "v1", &layer).await;
    let digest_key = format!("{root}/blobs/sha256/{}/{}", &d.hex()[..2], d.hex());
    assert!(
        !object_exists(kind, &digest_key),
        "no copy at the digest's key"
    );
    let location = |repo: &'static str| {
        let r = &r;
        let d = &d;
        async move {
            let resp = r
                .req(Method::GET, &format!("/v2/{repo}/blobs/{d}"))
                .send()
                .await
                .expect("GET");
            assert_eq!(resp.status(), StatusCode::TEMPORARY_REDIRECT);
            resp.headers()["location"]
                .to_str()
                .expect("location")
                .to_string()
        }
    };
    let first = location("team/app").await;
    assert!(first.contains(&format!("{root}/objects/")), "{first}");
    let fetched = reqwest::get(&first).await.expect("presigned GET");
    assert_eq!(sha256(&fetched.bytes().await.expect("bytes")), d);
    // The same bytes again, in one POST: linked to the first copy.
    let resp = r
        .req(
            Method::POST,
            &format!("/v2/team/other/blobs/uploads/?digest={d}"),
        )
        .header("content-type", "application/octet-stream")
        .body(layer.clone())
        .send()
        .await
        .expect("POST");
    assert_eq!(resp.status(), StatusCode::CREATED);
    let second = location("team/other").await;
    assert_eq!(
        second.split('?').next(),
        first.split('?').next(),
        "the first key stays"
    );
    // Unreferenced everywhere: collected.
    for (repo, what) in [
        ("team/app", format!("manifests/{manifest}")),
        ("team/other", format!("blobs/{d}")),
    ] {
        let resp = r
            .req(Method::DELETE, &format!("/v2/{repo}/{what}"))
            .send()
            .await
            .expect("DELETE");
        assert_eq!(resp.status(), StatusCode::ACCEPTED);
    }
    let out = run(Command::new(common::berth_bin())
        .args(["garbage-collect", "--grace", "0s"])
        .arg(b.config_path())
        .env("NO_COLOR", "1"));
    assert!(
        out.contains(&format!("blob eligible for deletion: {d}")),
        "{out}"
    );
    let gone = reqwest::get(&first).await.expect("presigned GET");
    assert_eq!(gone.status(), StatusCode::NOT_FOUND, "{out}");
}

#[tokio::test]
async fn keyed_pushes_on_seaweedfs() {
    keyed_pushes(S3Kind::SeaweedFs).await;
}

#[tokio::test]
async fn keyed_pushes_on_garage() {
    keyed_pushes(S3Kind::Garage).await;
}

#[tokio::test]
async fn garbage_collection_on_seaweedfs() {
    garbage_collection(S3Kind::SeaweedFs).await;
}

#[tokio::test]
async fn garbage_collection_on_garage() {
    garbage_collection(S3Kind::Garage).await;
}

/// docker pushes an imported image and pulls it back through the redirects; skopeo
/// copies it out to an OCI layout with the same manifest digest.
fn clients(kind: S3Kind, extra_storage: &str) {
    require_tool("docker");
    require_tool("skopeo");
    let (b, _) = berth_on(kind, extra_storage);
    let tmp = tempfile::tempdir().expect("tempdir");
    let rootfs = tmp.path().join("rootfs.tar");
    std::fs::write(
        &rootfs,
        common::layout::plain_tar(&[
            ("etc/hostname", b"berth-s3\n"),
            ("data/noise.bin", &noise(&format!("s3 {}", b.host), 7 * MIB)),
        ]),
    )
    .expect("rootfs");
    let reference = format!("{}/s3{}/imported:v1", b.host, kind.name());
    let id = run(Command::new("docker")
        .args(["import"])
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
    let inspect =
        run(Command::new("docker").args(["image", "inspect", "--format", "{{.Id}}", &reference]));
    assert_eq!(inspect.trim(), id);
    let _ = Command::new("docker")
        .args(["rmi", "-f", &reference])
        .output();
    let layout = tmp.path().join("layout");
    run(Command::new("skopeo")
        .args(["copy", "--src-tls-verify=false", "--preserve-digests"])
        .arg(format!("docker://{reference}"))
        .arg(format!("oci:{}:v1", layout.display())));
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).expect("index.json"))
            .expect("json");
    assert_eq!(index["manifests"][0]["digest"], digest.as_str());
}

/// Pushes through keyed uploads (a new deployment's default): docker's one-PATCH
/// pushes and skopeo's copies.
#[test]
fn clients_on_seaweedfs() {
    clients(S3Kind::SeaweedFs, "");
}

#[test]
fn clients_on_garage() {
    clients(S3Kind::Garage, "");
}

/// The same with blobs copied into their digests' keys (`blobkeys: false`).
#[test]
fn clients_with_digest_keys_on_seaweedfs() {
    clients(S3Kind::SeaweedFs, "    blobkeys: false\n");
}

#[test]
fn clients_with_digest_keys_on_garage() {
    clients(S3Kind::Garage, "    blobkeys: false\n");
}

/// Peak resident memory of a process (`VmHWM`), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmHWM")
        * 1024
}

/// A 2 GiB layer streams through Berth into S3 in parts: the server's peak memory stays
/// far below the layer's size, and the bytes served back hash to the pushed digest.
#[tokio::test]
async fn a_2_gib_layer_streams_with_bounded_memory() {
    use futures_util::StreamExt;
    const SIZE: u64 = 2 * 1024 * 1024 * 1024 + 5;
    const PIECE: usize = 256 * 1024;
    let (b, _) = berth_on(S3Kind::SeaweedFs, "  redirect:\n    disable: true\n");
    let piece: Vec<u8> = noise("2 GiB layer", PIECE);
    let mut hasher = oci::Algorithm::Sha256.hasher();
    let mut left = SIZE;
    while left > 0 {
        let n = left.min(PIECE as u64) as usize;
        hasher.update(&piece[..n]);
        left -= n as u64;
    }
    let digest = hasher.finish();
    let body_piece = bytes::Bytes::from(piece);
    let stream = futures_util::stream::unfold(SIZE, move |left| {
        let p = body_piece.clone();
        async move {
            (left > 0).then(|| {
                let n = left.min(PIECE as u64) as usize;
                (Ok::<_, std::io::Error>(p.slice(..n)), left - n as u64)
            })
        }
    });
    let before = peak_rss(b.pid());
    let r = Registry::new(&b.url);
    let resp = r
        .req(
            Method::POST,
            &format!("/v2/big/layer/blobs/uploads/?digest={digest}"),
        )
        .header("content-length", SIZE.to_string())
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .expect("push");
    assert_eq!(resp.status(), StatusCode::CREATED);
    let pushed_peak = peak_rss(b.pid());
    // Served back through Berth, hashed as it streams.
    let resp = r
        .req(Method::GET, &format!("/v2/big/layer/blobs/{digest}"))
        .send()
        .await
        .expect("GET");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.content_length(), Some(SIZE));
    let mut back = oci::Algorithm::Sha256.hasher();
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        back.update(&chunk.expect("chunk"));
    }
    assert_eq!(back.finish(), digest);
    let peak = peak_rss(b.pid());
    eprintln!(
        "peak RSS: {} MiB at start, {} MiB after the push, {} MiB after the pull",
        before >> 20,
        pushed_peak >> 20,
        peak >> 20
    );
    assert!(
        peak < 160 * 1024 * 1024,
        "peak RSS {} MiB for a 2 GiB layer",
        peak >> 20
    );
}

/// A real Distribution (filesystem) holding one image pushed by skopeo from a layout;
/// returns it, the layout's manifest digest and the repository.
fn distribution_with_image(dir: &std::path::Path) -> (common::registry2::Registry2, String) {
    use common::layout::{layer_tar_gz, Layout};
    let store = dir.join("distribution");
    let peer = common::registry2::Registry2::start(&format!(
        "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:0\n",
        store.display()
    ));
    let mut layout = Layout::create(&dir.join("layout"));
    let (big, _) = layer_tar_gz(&[("data/big.bin", &noise(&peer.host, 9 * MIB))]);
    let l1 = layout.put_blob("application/vnd.oci.image.layer.v1.tar+gzip", &big);
    let config = layout.put_blob(
        "application/vnd.oci.image.config.v1+json",
        br#"{"architecture":"amd64","os":"linux"}"#,
    );
    let manifest = layout.put_manifest(config, vec![l1], false);
    layout.tag(&manifest, "v1");
    run(common::tools::skopeo()
        .args(["copy", "--preserve-digests", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:v1", layout.dir.display()))
        .arg(format!("docker://{}/lib/app:v1", peer.host)));
    let digest = manifest["digest"].as_str().expect("digest").to_string();
    (peer, digest)
}

/// `lib/app:v1` as `r` serves it: it must have the manifest digest `digest`; returns the
/// digest of its first layer.
async fn first_layer_of(r: &Registry, digest: &str) -> oci::Digest {
    let resp = r
        .req(Method::GET, "/v2/lib/app/manifests/v1")
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await
        .expect("GET");
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.bytes().await.expect("body");
    assert_eq!(sha256(&body).to_string(), digest);
    let manifest: serde_json::Value = serde_json::from_slice(&body).expect("json");
    let layer: oci::Digest = manifest["layers"][0]["digest"]
        .as_str()
        .expect("layer")
        .parse()
        .expect("digest");
    layer
}

/// `berth import distribution` into S3: the imported image is served with its digests
/// and its layer is an object in the bucket.
#[tokio::test]
async fn import_into_s3() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (mut peer, digest) = distribution_with_image(tmp.path());
    let source = tmp.path().join("distribution");
    peer.stop();
    let (storage, root) = s3(S3Kind::SeaweedFs).storage_yaml("");
    let config = tmp.path().join("config.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\n{storage}database:\n  path: {}/berth.db\nhttp:\n  addr: 127.0.0.1:0\n",
            tmp.path().display()
        ),
    )
    .expect("config");
    let out = common::berth_command(&[
        "import".as_ref(),
        "distribution".as_ref(),
        source.as_os_str(),
        config.as_os_str(),
    ]);
    assert!(
        out.status.success(),
        "import: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let b = Berth::serve_config_in(dir, &config);
    let r = Registry::new(&b.url);
    let layer = first_layer_of(&r, &digest).await;
    let fetched = r
        .req(Method::GET, &format!("/v2/lib/app/blobs/{layer}"))
        .send()
        .await
        .expect("GET layer");
    assert_eq!(sha256(&fetched.bytes().await.expect("bytes")), layer);
    assert!(object_exists(
        S3Kind::SeaweedFs,
        &format!("{root}/blobs/sha256/{}/{}", &layer.hex()[..2], layer.hex())
    ));
}

/// Berth on S3 as a pull-through cache of a real Distribution: 8 clients asking for the
/// same uncached layer at once all get it (served while it is fetched into the bucket),
/// and later pulls come from the bucket.
#[tokio::test]
async fn pull_through_cache_on_s3() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (peer, digest) = distribution_with_image(tmp.path());
    let (storage, root) = s3(S3Kind::SeaweedFs).storage_yaml("");
    let b = Berth::start_with_config(&format!(
        "version: 0.1\n{storage}database:\n  path: DATA/berth.db\nhttp:\n  addr: 127.0.0.1:0\nproxy:\n  remoteurl: {}\n",
        peer.url
    ));
    let r = Registry::new(&b.url);
    let layer = first_layer_of(&r, &digest).await;
    let pulls: Vec<_> = (0..8)
        .map(|_| {
            let r = r.clone();
            let layer = layer.clone();
            tokio::spawn(async move {
                let resp = r
                    .req(Method::GET, &format!("/v2/lib/app/blobs/{layer}"))
                    .send()
                    .await
                    .expect("GET layer");
                assert_eq!(resp.status(), StatusCode::OK);
                sha256(&resp.bytes().await.expect("bytes"))
            })
        })
        .collect();
    for p in pulls {
        assert_eq!(p.await.expect("client"), layer);
    }
    let key = format!("{root}/blobs/sha256/{}/{}", &layer.hex()[..2], layer.hex());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !object_exists(S3Kind::SeaweedFs, &key) {
        assert!(
            std::time::Instant::now() < deadline,
            "the fill reached the bucket"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // Cached now: a redirect to the bucket.
    let resp = Registry::with_client(no_redirects(), &b.url)
        .req(Method::GET, &format!("/v2/lib/app/blobs/{layer}"))
        .send()
        .await
        .expect("GET");
    assert_eq!(resp.status(), StatusCode::TEMPORARY_REDIRECT);
}

/// registry:2's `middleware.storage` redirect, the CDN setting: blob GETs answer 307 to
/// the base URL plus the object's path under the root directory, and whatever serves the
/// bucket there (here SeaweedFS's filer, which serves bucket objects by path without a
/// signature, standing in for a CDN with read access to the bucket) hands out the exact
/// bytes. HEAD and manifests are still answered by Berth.
#[tokio::test]
async fn storage_middleware_redirect_sends_blob_gets_to_the_cdn() {
    let server = s3(S3Kind::SeaweedFs);
    let ports = std::fs::read_to_string(format!("{}/ports", server.get("S3_DIR")))
        .expect("SeaweedFS's ports file");
    let filer = ports.split_whitespace().nth(4).expect("the filer's port");
    // Blobs at their digests' keys, to check the whole path (keyed ones go to
    // objects/..., the same way).
    let (storage, root) = server.storage_yaml("    blobkeys: false\n");
    let cdn = format!(
        "http://127.0.0.1:{filer}/buckets/{}/{root}",
        server.get("S3_BUCKET")
    );
    let b = Berth::start_with_config(&format!(
        "version: 0.1\nlog:\n  level: info\n{storage}middleware:\n  storage:\n    - name: redirect\n      options:\n        baseurl: {cdn}/\nhttp:\n  addr: 127.0.0.1:0\ndatabase:\n  path: DATA/berth.db\n"
    ));
    let r = Registry::with_client(no_redirects(), &b.url);
    let layer = noise("cdn layer", 6 * MIB + 5);
    let (_, d) = push_image(&r, "team/app", "v1", &layer).await;
    let resp = r
        .req(Method::GET, &format!("/v2/team/app/blobs/{d}"))
        .send()
        .await
        .expect("GET");
    assert_eq!(resp.status(), StatusCode::TEMPORARY_REDIRECT);
    let location = resp.headers()["location"]
        .to_str()
        .expect("location")
        .to_string();
    assert_eq!(
        location,
        format!("{cdn}/blobs/sha256/{}/{}", &d.hex()[..2], d.hex()),
        "the base URL and the object's path under the root, unsigned"
    );
    let fetched = reqwest::get(&location).await.expect("GET from the CDN");
    assert_eq!(fetched.status(), StatusCode::OK, "{location}");
    assert_eq!(sha256(&fetched.bytes().await.expect("bytes")), d);
    let head = r
        .req(Method::HEAD, &format!("/v2/team/app/blobs/{d}"))
        .send()
        .await
        .expect("HEAD");
    assert_eq!(head.status(), StatusCode::OK, "HEAD is answered by Berth");
    // A client that follows redirects gets the bytes from the CDN.
    let pulled = Registry::new(&b.url)
        .req(Method::GET, &format!("/v2/team/app/blobs/{d}"))
        .send()
        .await
        .expect("GET")
        .bytes()
        .await
        .expect("bytes");
    assert_eq!(pulled.len(), layer.len());
    assert_eq!(sha256(&pulled), d);
}

/// A pull-through cache run as a cluster (3 nodes on one bucket and one PostgreSQL):
/// 9 clients, 3 on each node, ask for the same uncached layer at once; the upstream is
/// asked for its bytes once (the fill's claim is cluster-wide), and every client gets
/// the exact layer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_cluster_fetches_each_blob_from_the_upstream_once() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (peer, digest) = distribution_with_image(tmp.path());
    let cluster =
        common::cluster::Cluster::start(3, &format!("proxy:\n  remoteurl: {}\n", peer.url));
    let urls: Vec<String> = cluster.live().iter().map(|n| n.url.clone()).collect();
    let layer = first_layer_of(&Registry::new(&urls[0]), &digest).await;
    assert_eq!(
        upstream_layer_gets(&peer, &layer),
        0,
        "the layer is not fetched by reading the manifest"
    );
    nine_clients_get_layer(|i| Registry::new(&urls[i % 3]), "lib/app", &layer).await;
    assert_eq!(
        upstream_layer_gets(&peer, &layer),
        1,
        "one fetch from the upstream for the whole cluster"
    );
}

/// GETs of `lib/app`'s blob `layer` that Distribution `peer` answered (it logs each
/// request with its method and URI).
fn upstream_layer_gets(peer: &common::registry2::Registry2, layer: &oci::Digest) -> usize {
    peer.log()
        .lines()
        .filter(|l| {
            l.contains("msg=\"response completed\"")
                && l.contains("http.request.method=GET")
                && l.contains(&format!("http.request.uri=\"/v2/lib/app/blobs/{layer}\""))
        })
        .count()
}

/// 9 clients at once, client `i` made by `client(i)`, GET `layer` through `repo`: each
/// must get exactly its bytes.
async fn nine_clients_get_layer(
    client: impl Fn(usize) -> Registry,
    repo: &str,
    layer: &oci::Digest,
) {
    let pulls: Vec<_> = (0..9)
        .map(|i| {
            let r = client(i);
            let path = format!("/v2/{repo}/blobs/{layer}");
            tokio::spawn(async move {
                let resp = r.req(Method::GET, &path).send().await.expect("GET layer");
                assert_eq!(resp.status(), StatusCode::OK);
                sha256(&resp.bytes().await.expect("bytes"))
            })
        })
        .collect();
    for p in pulls {
        assert_eq!(&p.await.expect("client"), layer);
    }
}

/// Proxy-cache projects in a cluster (3 nodes, one bucket, one PostgreSQL): a project
/// made through one node is a cache on the others within their 5 s refresh, even though
/// they had already looked; 9 clients on 3 nodes asking for the same uncached layer
/// through the project get it from one upstream fetch; a push through any node is
/// refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_cache_projects_in_a_cluster() {
    const PASSWORD: &str = "Harbor12345";
    let tmp = tempfile::tempdir().expect("tempdir");
    let (peer, digest) = distribution_with_image(tmp.path());
    let cluster = common::cluster::Cluster::start(
        3,
        &format!("auth:\n  berth:\n    adminpassword: {PASSWORD}\n"),
    );
    let urls: Vec<String> = cluster.live().iter().map(|n| n.url.clone()).collect();
    let node = |i: usize| Registry::new(&urls[i]).with_auth("admin", PASSWORD);
    let manifest_status = |i: usize| async move {
        node(i)
            .req(Method::GET, "/v2/cache/lib/app/manifests/v1")
            .header("accept", "application/vnd.oci.image.manifest.v1+json")
            .send()
            .await
            .expect("GET")
            .status()
    };
    // Every node looks before the project exists (so each holds a view without it).
    for i in 0..3 {
        let status = manifest_status(i).await;
        assert!(
            matches!(status, StatusCode::NOT_FOUND | StatusCode::FORBIDDEN),
            "no such project yet: {status}"
        );
    }
    let api = reqwest::Client::new();
    let post = |path: &str, body: serde_json::Value| {
        api.post(format!("{}/api/v2.0{path}", urls[0]))
            .basic_auth("admin", Some(PASSWORD))
            .json(&body)
            .send()
    };
    let resp = post(
        "/registries",
        serde_json::json!({"name": "peer", "type": "docker-registry", "url": peer.url}),
    )
    .await
    .expect("POST registry");
    assert_eq!(resp.status(), StatusCode::CREATED);
    let id: i64 = resp.headers()["location"]
        .to_str()
        .expect("location")
        .rsplit('/')
        .next()
        .and_then(|i| i.parse().ok())
        .expect("id");
    let resp = post(
        "/projects",
        serde_json::json!({"project_name": "cache", "registry_id": id}),
    )
    .await
    .expect("POST project");
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(
        manifest_status(0).await,
        StatusCode::OK,
        "at once where made"
    );
    let made = std::time::Instant::now();
    for i in 1..3 {
        while manifest_status(i).await != StatusCode::OK {
            assert!(
                made.elapsed() < std::time::Duration::from_secs(10),
                "node {i} does not see the proxy-cache project"
            );
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }
    // The manifest each node serves is the upstream's.
    let resp = node(2)
        .req(Method::GET, "/v2/cache/lib/app/manifests/v1")
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await
        .expect("GET");
    let body = resp.bytes().await.expect("body");
    assert_eq!(sha256(&body).to_string(), digest);
    let manifest: serde_json::Value = serde_json::from_slice(&body).expect("json");
    let layer: oci::Digest = manifest["layers"][0]["digest"]
        .as_str()
        .expect("layer")
        .parse()
        .expect("digest");
    assert_eq!(upstream_layer_gets(&peer, &layer), 0);
    nine_clients_get_layer(|i| node(i % 3), "cache/lib/app", &layer).await;
    assert_eq!(
        upstream_layer_gets(&peer, &layer),
        1,
        "one fetch from the upstream for the cluster"
    );
    // No node takes a push into the cache.
    for i in 0..3 {
        let resp = node(i)
            .req(Method::POST, "/v2/cache/lib/app/blobs/uploads/")
            .send()
            .await
            .expect("POST");
        assert_eq!(resp.status(), StatusCode::FORBIDDEN, "node {i}");
        let text = resp.text().await.expect("body");
        assert!(
            text.contains("DENIED") && text.contains("proxy cache"),
            "{text}"
        );
    }
}
