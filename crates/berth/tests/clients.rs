//! Interoperability tests with real clients: the Docker CLI (against the machine's Docker
//! Engine), skopeo, podman, buildah and umoci push images to a real `berth serve` and pull
//! them back, and every digest a client reports is checked byte for byte against what the
//! server serves (`GET /v2/<name>/manifests/<ref>` and `/blobs/<digest>`).
//!
//! Every test starts its own server, builds its images locally (nothing comes from the
//! internet), and cleans up what it leaves in shared places (Docker Engine images). Clients
//! are run with a timeout so that a server that stops answering fails the test instead of
//! hanging it. `scripts/install-test-deps.sh` installs every client used here.
//!
//! Run one client's tests with e.g. `cargo test -p berth --test clients skopeo_`.

mod common;

use std::collections::BTreeSet;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::layout::{layer_tar_gz, noise, plain_tar, Layout};
use common::push::{sha256, OCI_CONFIG, OCI_INDEX, OCI_LAYER_GZIP, OCI_MANIFEST};
use common::tools::{buildah, podman, skopeo};
use common::{require_tool, Berth};
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------
// Media types and small helpers
// ---------------------------------------------------------------------------------------

const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// What a client that understands every manifest kind sends.
fn manifest_accept() -> String {
    [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST].join(", ")
}

/// A client process that takes longer than this is treated as hung.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(120);

fn parse_digest(s: &str) -> oci::Digest {
    s.trim()
        .parse()
        .unwrap_or_else(|e| panic!("client reported a malformed digest {s:?}: {e:?}"))
}

/// The digest a client wrote with `--digestfile`.
fn read_digestfile(path: &Path) -> oci::Digest {
    let s = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("digest file {} missing: {e}", path.display()));
    parse_digest(&s)
}

fn json_of(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(2000)])
        )
    })
}

fn str_field<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("no string field {key:?} in {v}"))
}

/// The output of a finished client process.
struct Output {
    success: bool,
    stdout: String,
    stderr: String,
    desc: String,
}

/// Run a client with stdin closed and a timeout; never panics on a non-zero exit.
fn exec(cmd: &mut Command) -> Output {
    let desc = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {desc}: {e}"));
    let mut out = child.stdout.take().expect("stdout pipe");
    let mut err = child.stderr.take().expect("stderr pipe");
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    // Wait in a thread so that the test can give up after CLIENT_TIMEOUT.
    let pid = child.id();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let status = child.wait();
        let _ = done_tx.send(());
        status
    });
    let timed_out = done_rx.recv_timeout(CLIENT_TIMEOUT).is_err();
    if timed_out {
        // Our own child, by its id.
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
    let status = waiter
        .join()
        .expect("waiter thread")
        .unwrap_or_else(|e| panic!("waiting for {desc}: {e}"));
    let stdout = String::from_utf8_lossy(&t_out.join().unwrap_or_default()).into_owned();
    let stderr = String::from_utf8_lossy(&t_err.join().unwrap_or_default()).into_owned();
    if timed_out {
        panic!(
            "{desc} hung for more than {CLIENT_TIMEOUT:?} and was killed\nstdout:\n{stdout}\nstderr:\n{stderr}"
        );
    }
    Output {
        success: status.success(),
        stdout,
        stderr,
        desc,
    }
}

/// Run a client, panic with its output if it fails, return its stdout.
fn run(cmd: &mut Command) -> String {
    let out = exec(cmd);
    if !out.success {
        panic!(
            "{} failed\nstdout:\n{}\nstderr:\n{}",
            out.desc, out.stdout, out.stderr
        );
    }
    out.stdout
}

/// Run a client that must fail; return its stderr.
fn run_fails(cmd: &mut Command) -> String {
    let out = exec(cmd);
    if out.success {
        panic!(
            "{} succeeded but should have failed\nstdout:\n{}",
            out.desc, out.stdout
        );
    }
    out.stderr
}

// ---------------------------------------------------------------------------------------
// Talking to the server directly (reqwest), to check what the clients report
// ---------------------------------------------------------------------------------------

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(f)
}

struct Fetched {
    status: u16,
    content_type: Option<String>,
    docker_digest: Option<String>,
    body: Vec<u8>,
}

fn http_get(url: &str, accept: Option<&str>) -> Fetched {
    block_on(async {
        let mut req = reqwest::Client::new().get(url);
        if let Some(accept) = accept {
            req = req.header("Accept", accept);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let status = resp.status().as_u16();
        let content_type = header("content-type");
        let docker_digest = header("docker-content-digest");
        let body = resp
            .bytes()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: body: {e}"))
            .to_vec();
        Fetched {
            status,
            content_type,
            docker_digest,
            body,
        }
    })
}

fn http_put(url: &str, content_type: &str, body: Vec<u8>) -> u16 {
    block_on(async {
        reqwest::Client::new()
            .put(url)
            .header("Content-Type", content_type)
            .body(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("PUT {url}: {e}"))
            .status()
            .as_u16()
    })
}

fn get_manifest(b: &Berth, name: &str, reference: &str) -> Fetched {
    http_get(
        &format!("{}/v2/{name}/manifests/{reference}", b.url),
        Some(&manifest_accept()),
    )
}

/// GET the manifest `name:reference` and check that it is exactly the manifest with digest
/// `expected` (sha256 of the bytes, `Docker-Content-Digest`), and that fetching it by digest
/// gives the same bytes. Returns the bytes.
fn assert_manifest(b: &Berth, name: &str, reference: &str, expected: &oci::Digest) -> Vec<u8> {
    let got = get_manifest(b, name, reference);
    assert_eq!(
        got.status,
        200,
        "GET /v2/{name}/manifests/{reference}: {}",
        String::from_utf8_lossy(&got.body)
    );
    assert_eq!(
        sha256(&got.body),
        *expected,
        "GET /v2/{name}/manifests/{reference} served bytes whose sha256 is not the digest the client reported"
    );
    assert_eq!(
        got.docker_digest.as_deref(),
        Some(expected.as_str()),
        "Docker-Content-Digest of GET /v2/{name}/manifests/{reference}"
    );
    let media_type = json_of(&got.body)["mediaType"].as_str().map(str::to_string);
    if let Some(media_type) = media_type {
        assert_eq!(
            got.content_type.as_deref().map(oci::media::essence),
            Some(media_type.as_str()),
            "Content-Type of GET /v2/{name}/manifests/{reference} must be the manifest's mediaType"
        );
    }
    if reference != expected.as_str() {
        let by_digest = get_manifest(b, name, expected.as_str());
        assert_eq!(by_digest.status, 200, "GET manifest {name}@{expected}");
        assert_eq!(by_digest.body, got.body, "manifest {name}@{expected}");
    }
    got.body
}

fn get_blob(b: &Berth, name: &str, digest: &str) -> Vec<u8> {
    let got = http_get(&format!("{}/v2/{name}/blobs/{digest}", b.url), None);
    assert_eq!(
        got.status,
        200,
        "GET /v2/{name}/blobs/{digest}: {}",
        String::from_utf8_lossy(&got.body)
    );
    assert_eq!(
        sha256(&got.body).as_str(),
        digest,
        "GET /v2/{name}/blobs/{digest} served other bytes"
    );
    got.body
}

/// Check the config and layers of an image manifest are all served, with the right bytes.
fn assert_blobs_served(b: &Berth, name: &str, manifest: &[u8]) {
    let m = json_of(manifest);
    let config = &m["config"];
    get_blob(b, name, str_field(config, "digest"));
    for layer in m["layers"].as_array().expect("layers") {
        let blob = get_blob(b, name, str_field(layer, "digest"));
        assert_eq!(blob.len() as u64, layer["size"].as_u64().expect("size"));
    }
}

fn tags_list(b: &Berth, name: &str) -> Vec<String> {
    let got = http_get(&format!("{}/v2/{name}/tags/list", b.url), None);
    assert_eq!(got.status, 200, "GET /v2/{name}/tags/list");
    let v = json_of(&got.body);
    v["tags"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|t| t.as_str().expect("tag").to_string())
                .collect()
        })
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------
// OCI image layouts: built here, or read back from what a client wrote
// ---------------------------------------------------------------------------------------

/// An image with one layer per entry of `layers` (its files), with the config and
/// history a built image has; returns the manifest's descriptor.
fn put_image(layout: &Layout, arch: &str, layers: &[&[(&str, &[u8])]]) -> Value {
    let mut descriptors = Vec::new();
    let mut diff_ids = Vec::new();
    let mut history = Vec::new();
    for files in layers {
        let (gz, diff_id) = layer_tar_gz(files);
        descriptors.push(layout.put_blob(OCI_LAYER_GZIP, &gz));
        diff_ids.push(diff_id.to_string());
        history
            .push(json!({"created": "2024-01-01T00:00:00Z", "created_by": "berth clients test"}));
    }
    let config = json!({
        "created": "2024-01-01T00:00:00Z",
        "architecture": arch,
        "os": "linux",
        "config": {"Env": ["PATH=/usr/bin:/bin"], "Cmd": ["/bin/true"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": history,
    });
    let config = layout.put_blob(OCI_CONFIG, &serde_json::to_vec(&config).expect("json"));
    layout.put_manifest(config, descriptors, true)
}

fn layout_blob(dir: &Path, digest: &str) -> Vec<u8> {
    let digest = parse_digest(digest);
    let path = dir.join("blobs/sha256").join(digest.hex());
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The descriptor tagged `tag` in the layout's index.json.
fn layout_ref(dir: &Path, tag: &str) -> Value {
    let index = json_of(&std::fs::read(dir.join("index.json")).expect("index.json"));
    index["manifests"]
        .as_array()
        .expect("manifests")
        .iter()
        .find(|d| d["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap_or_else(|| panic!("no {tag:?} in {}: {index}", dir.display()))
        .clone()
}

/// Every blob reachable from manifest/index `digest` in layout `a` is in layout `b` with
/// the same bytes. Returns how many blobs were compared.
fn assert_same_closure(a: &Path, b: &Path, digest: &str) -> usize {
    let bytes_a = layout_blob(a, digest);
    let bytes_b = layout_blob(b, digest);
    assert!(
        bytes_a == bytes_b,
        "manifest {digest} differs between layouts"
    );
    let m = json_of(&bytes_a);
    let mut count = 1;
    if let Some(children) = m["manifests"].as_array() {
        for child in children {
            count += assert_same_closure(a, b, str_field(child, "digest"));
        }
    } else {
        let mut blobs = vec![&m["config"]];
        blobs.extend(m["layers"].as_array().expect("layers"));
        for d in blobs {
            let digest = str_field(d, "digest");
            assert!(
                layout_blob(a, digest) == layout_blob(b, digest),
                "blob {digest} differs"
            );
            count += 1;
        }
    }
    count
}

/// Everything reachable from manifest/index `digest` in the layout is served by the
/// registry under `name` with the same bytes.
fn assert_served_closure(reg: &Berth, name: &str, dir: &Path, digest: &str) {
    let local = layout_blob(dir, digest);
    let served = assert_manifest(reg, name, digest, &parse_digest(digest));
    assert!(
        served == local,
        "manifest {name}@{digest}: served bytes differ from the layout's"
    );
    let m = json_of(&local);
    if let Some(children) = m["manifests"].as_array() {
        for child in children {
            assert_served_closure(reg, name, dir, str_field(child, "digest"));
        }
    } else {
        let mut blobs = vec![&m["config"]];
        blobs.extend(m["layers"].as_array().expect("layers"));
        for d in blobs {
            let digest = str_field(d, "digest");
            assert!(
                get_blob(reg, name, digest) == layout_blob(dir, digest),
                "blob {name}@{digest} differs from the layout's"
            );
        }
    }
}

/// A small single-arch image with three layers, unique to `salt`.
fn three_layer_image(layout: &Layout, salt: &str) -> Value {
    let a = format!("layer one {salt}\n");
    let b = vec![b'x'; 70_000];
    let c = format!("#!/bin/sh\necho {salt}\n");
    put_image(
        layout,
        "amd64",
        &[
            &[("etc/berth-release", a.as_bytes())],
            &[("data/big.bin", &b[..])],
            &[("usr/bin/hello", c.as_bytes()), ("etc/motd", b"hi\n")],
        ],
    )
}

// ---------------------------------------------------------------------------------------
// skopeo (and umoci)
// ---------------------------------------------------------------------------------------

fn umoci(args: &[&str]) -> String {
    require_tool("umoci");
    run(Command::new("umoci").args(args))
}

/// 2a: a three-layer image made by umoci goes OCI layout -> Berth -> OCI layout unchanged.
#[test]
fn skopeo_umoci_layout_round_trip() {
    let b = Berth::start();
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = tmp.path().join("src");
    let src_s = src.to_str().expect("utf-8 path");
    let image = format!("{src_s}:v1");
    umoci(&["init", "--layout", src_s]);
    umoci(&["new", "--image", &image]);
    for i in 1..=3 {
        let file = tmp.path().join(format!("file{i}"));
        // The last layer is a few MiB, so it crosses any buffer or chunk size.
        let size = if i == 3 { 3 << 20 } else { 30_000 };
        let content = noise(&format!("umoci {i} {}", b.host), size);
        std::fs::write(&file, content).expect("write");
        umoci(&[
            "insert",
            "--rootless",
            "--image",
            &image,
            file.to_str().expect("utf-8"),
            &format!("/data/file{i}"),
        ]);
    }
    umoci(&[
        "config",
        "--image",
        &image,
        "--config.cmd",
        "/bin/true",
        "--config.label",
        "org.test=berth",
    ]);
    umoci(&["gc", "--layout", src_s]);
    let local = layout_ref(&src, "v1");
    let local_digest = str_field(&local, "digest").to_string();
    let local_manifest = layout_blob(&src, &local_digest);
    assert_eq!(
        json_of(&local_manifest)["layers"]
            .as_array()
            .expect("layers")
            .len(),
        3,
        "umoci image should have three layers"
    );

    let digestfile = tmp.path().join("pushed.digest");
    run(skopeo()
        .args(["copy", "--dest-tls-verify=false", "--preserve-digests"])
        .arg("--digestfile")
        .arg(&digestfile)
        .arg(format!("oci:{image}"))
        .arg(format!("docker://{}/umoci/image:v1", b.host)));
    let pushed = read_digestfile(&digestfile);
    assert_eq!(pushed.as_str(), local_digest, "skopeo --digestfile");
    assert_manifest(&b, "umoci/image", "v1", &pushed);
    assert_served_closure(&b, "umoci/image", &src, &local_digest);

    // skopeo inspect --raw sees exactly the layout's manifest bytes.
    let raw = run(skopeo().args([
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{}/umoci/image:v1", b.host),
    ]));
    assert!(
        raw.as_bytes() == local_manifest.as_slice(),
        "skopeo inspect --raw differs from the layout's manifest:\n{raw}"
    );
    let inspect = json_of(
        run(skopeo().args([
            "inspect",
            "--tls-verify=false",
            &format!("docker://{}/umoci/image:v1", b.host),
        ]))
        .as_bytes(),
    );
    assert_eq!(str_field(&inspect, "Digest"), local_digest);
    assert_eq!(inspect["Labels"]["org.test"], "berth");
    assert_eq!(inspect["Layers"].as_array().expect("Layers").len(), 3);

    // Pull back into a fresh layout: identical manifest and blobs.
    let back = tmp.path().join("back");
    run(skopeo()
        .args(["copy", "--src-tls-verify=false", "--preserve-digests"])
        .arg(format!("docker://{}/umoci/image:v1", b.host))
        .arg(format!("oci:{}:v1", back.display())));
    assert_eq!(str_field(&layout_ref(&back, "v1"), "digest"), local_digest);
    assert_eq!(assert_same_closure(&src, &back, &local_digest), 5);

    // umoci can unpack what came back.
    let bundle = tmp.path().join("bundle");
    umoci(&[
        "unpack",
        "--rootless",
        "--image",
        &format!("{}:v1", back.display()),
        bundle.to_str().expect("utf-8"),
    ]);
    for i in 1..=3 {
        let original = std::fs::read(tmp.path().join(format!("file{i}"))).expect("read");
        let unpacked =
            std::fs::read(bundle.join(format!("rootfs/data/file{i}"))).expect("unpacked file");
        assert!(original == unpacked, "file{i} differs after the round trip");
    }
}

/// Build a two-platform index (linux/amd64, linux/arm64) tagged `tag` in a new layout.
fn multi_arch_layout(dir: &Path, tag: &str, salt: &str) -> Value {
    let mut layout = Layout::create(dir);
    let amd = format!("amd64 {salt}\n");
    let arm = format!("arm64 {salt}\n");
    let amd64 = put_image(&layout, "amd64", &[&[("etc/arch", amd.as_bytes())]]);
    let arm64 = put_image(
        &layout,
        "arm64",
        &[
            &[("etc/arch", arm.as_bytes())],
            &[("etc/extra", b"arm only\n")],
        ],
    );
    let index = layout.put_index(
        &[(amd64, "amd64"), (arm64, "arm64")],
        json!({"org.opencontainers.image.description": "berth clients test"}),
    );
    layout.tag(&index, tag);
    index
}

/// 2b: a multi-arch index pushed with `--all` is stored and served unchanged.
#[test]
fn skopeo_multi_arch_index_all() {
    let b = Berth::start();
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = tmp.path().join("src");
    let index = multi_arch_layout(&src, "multi", &b.host);
    let index_digest = str_field(&index, "digest").to_string();

    let digestfile = tmp.path().join("pushed.digest");
    run(skopeo()
        .args([
            "copy",
            "--all",
            "--preserve-digests",
            "--dest-tls-verify=false",
        ])
        .arg("--digestfile")
        .arg(&digestfile)
        .arg(format!("oci:{}:multi", src.display()))
        .arg(format!("docker://{}/multi/arch:multi", b.host)));
    let pushed = read_digestfile(&digestfile);
    assert_eq!(pushed.as_str(), index_digest);
    let served = assert_manifest(&b, "multi/arch", "multi", &pushed);
    assert_eq!(json_of(&served)["mediaType"], OCI_INDEX);
    assert_served_closure(&b, "multi/arch", &src, &index_digest);

    // A single platform can be selected from the index.
    let arm = json_of(
        run(skopeo().args([
            "inspect",
            "--tls-verify=false",
            "--override-arch",
            "arm64",
            &format!("docker://{}/multi/arch:multi", b.host),
        ]))
        .as_bytes(),
    );
    assert_eq!(str_field(&arm, "Architecture"), "arm64");
    assert_eq!(arm["Layers"].as_array().expect("Layers").len(), 2);

    let back = tmp.path().join("back");
    run(skopeo()
        .args([
            "copy",
            "--all",
            "--preserve-digests",
            "--src-tls-verify=false",
        ])
        .arg(format!("docker://{}/multi/arch:multi", b.host))
        .arg(format!("oci:{}:multi", back.display())));
    assert_eq!(
        str_field(&layout_ref(&back, "multi"), "digest"),
        index_digest
    );
    // index + 2 manifests + 2 configs + 3 layers
    assert_eq!(assert_same_closure(&src, &back, &index_digest), 8);
}

/// 2c: registry-to-registry copy between two Berth servers keeps every digest.
#[test]
fn skopeo_copy_between_two_berths() {
    let a = Berth::start();
    let b = Berth::start();
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = tmp.path().join("src");
    let index = multi_arch_layout(&src, "multi", &a.host);
    let mut layout = Layout::open(&src);
    let single = three_layer_image(&layout, &a.host);
    layout.tag(&single, "single");

    for (tag, all) in [("single", false), ("multi", true)] {
        let mut cmd = skopeo();
        cmd.args(["copy", "--preserve-digests", "--dest-tls-verify=false"]);
        if all {
            cmd.arg("--all");
        }
        run(cmd
            .arg(format!("oci:{}:{tag}", src.display()))
            .arg(format!("docker://{}/x:{tag}", a.host)));

        let digestfile = tmp.path().join(format!("{tag}.digest"));
        let mut cmd = skopeo();
        cmd.args([
            "copy",
            "--preserve-digests",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
        ]);
        if all {
            cmd.arg("--all");
        }
        run(cmd
            .arg("--digestfile")
            .arg(&digestfile)
            .arg(format!("docker://{}/x:{tag}", a.host))
            .arg(format!("docker://{}/team/y:{tag}-copy", b.host)));
        let copied = read_digestfile(&digestfile);
        let want = layout_ref(&src, tag);
        assert_eq!(copied.as_str(), str_field(&want, "digest"));
        let from_a = assert_manifest(&a, "x", tag, &copied);
        let from_b = assert_manifest(&b, "team/y", &format!("{tag}-copy"), &copied);
        assert!(from_a == from_b, "{tag}: A and B serve different bytes");
        assert_served_closure(&b, "team/y", &src, copied.as_str());
    }
    assert_eq!(
        str_field(&layout_ref(&src, "multi"), "digest"),
        str_field(&index, "digest")
    );
    assert_eq!(
        tags_list(&b, "team/y"),
        vec!["multi-copy".to_string(), "single-copy".to_string()]
    );
}

/// 2d: `skopeo list-tags` sees every tag, including more than one page's worth.
#[test]
fn skopeo_list_tags() {
    let b = Berth::start();
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = tmp.path().join("src");
    let mut layout = Layout::create(&src);
    let image = three_layer_image(&layout, &b.host);
    layout.tag(&image, "v1");
    let other = put_image(&layout, "arm64", &[&[("other", b"other image\n")]]);
    layout.tag(&other, "other");

    let mut expected = BTreeSet::new();
    for tag in ["1.0", "1.1", "latest", "v2-rc.1", "stable_X"] {
        run(skopeo()
            .args(["copy", "--preserve-digests", "--dest-tls-verify=false"])
            .arg(format!("oci:{}:v1", src.display()))
            .arg(format!("docker://{}/tags/repo:{tag}", b.host)));
        expected.insert(tag.to_string());
    }
    run(skopeo()
        .args(["copy", "--preserve-digests", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:other", src.display()))
        .arg(format!("docker://{}/tags/repo:other", b.host)));
    expected.insert("other".to_string());

    let tags_of = |b: &Berth| -> Vec<String> {
        let out = run(skopeo().args([
            "list-tags",
            "--tls-verify=false",
            &format!("docker://{}/tags/repo", b.host),
        ]));
        let v = json_of(out.as_bytes());
        assert_eq!(str_field(&v, "Repository"), format!("{}/tags/repo", b.host));
        v["Tags"]
            .as_array()
            .expect("Tags")
            .iter()
            .map(|t| t.as_str().expect("tag").to_string())
            .collect()
    };
    let listed = tags_of(&b);
    assert_eq!(
        listed.iter().cloned().collect::<BTreeSet<_>>(),
        expected,
        "skopeo list-tags"
    );
    assert_eq!(
        listed.len(),
        expected.len(),
        "no duplicate tags: {listed:?}"
    );

    // Many more tags (same manifest, pushed over HTTP): skopeo must still see them all,
    // following Link headers if the server paginates.
    let manifest = layout_blob(&src, str_field(&image, "digest"));
    for i in 0..150 {
        let tag = format!("bulk-{i:03}");
        let status = http_put(
            &format!("{}/v2/tags/repo/manifests/{tag}", b.url),
            OCI_MANIFEST,
            manifest.clone(),
        );
        assert_eq!(status, 201, "PUT manifest tags/repo:{tag}");
        expected.insert(tag);
    }
    let listed = tags_of(&b);
    assert_eq!(
        listed.len(),
        expected.len(),
        "skopeo list-tags after bulk tagging"
    );
    assert_eq!(listed.into_iter().collect::<BTreeSet<_>>(), expected);
    assert_eq!(
        skopeo_digest(&b, "tags/repo:bulk-149"),
        str_field(&image, "digest")
    );
}

fn skopeo_digest(b: &Berth, reference: &str) -> String {
    let v = json_of(
        run(skopeo().args([
            "inspect",
            "--tls-verify=false",
            &format!("docker://{}/{reference}", b.host),
        ]))
        .as_bytes(),
    );
    str_field(&v, "Digest").to_string()
}

/// 2e: `skopeo delete` by digest removes that manifest (and its tags); others survive.
#[test]
fn skopeo_delete_by_digest() {
    let b = Berth::start();
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = tmp.path().join("src");
    let mut layout = Layout::create(&src);
    let keep = three_layer_image(&layout, &format!("keep {}", b.host));
    layout.tag(&keep, "keep");
    let gone = put_image(
        &layout,
        "amd64",
        &[
            &[("etc/gone", b"to be deleted\n")],
            &[("etc/more", b"more\n")],
        ],
    );
    layout.tag(&gone, "gone");
    let keep_digest = str_field(&keep, "digest").to_string();
    let gone_digest = str_field(&gone, "digest").to_string();

    for (from, to) in [("keep", "keep"), ("gone", "gone"), ("gone", "gone-too")] {
        run(skopeo()
            .args(["copy", "--preserve-digests", "--dest-tls-verify=false"])
            .arg(format!("oci:{}:{from}", src.display()))
            .arg(format!("docker://{}/del/repo:{to}", b.host)));
    }
    assert_eq!(skopeo_digest(&b, "del/repo:gone-too"), gone_digest);

    run(skopeo().args([
        "delete",
        "--tls-verify=false",
        &format!("docker://{}/del/repo@{gone_digest}", b.host),
    ]));

    for reference in [gone_digest.as_str(), "gone", "gone-too"] {
        let got = get_manifest(&b, "del/repo", reference);
        assert_eq!(
            got.status,
            404,
            "GET /v2/del/repo/manifests/{reference} after skopeo delete: {}",
            String::from_utf8_lossy(&got.body)
        );
        let body = json_of(&got.body);
        let code = body["errors"][0]["code"].as_str().unwrap_or("");
        assert!(
            code == "MANIFEST_UNKNOWN" || code == "NAME_UNKNOWN",
            "404 body should carry MANIFEST_UNKNOWN: {body}"
        );
    }
    let err = run_fails(skopeo().args([
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{}/del/repo:gone", b.host),
    ]));
    assert!(
        err.contains("manifest unknown") || err.contains("not found"),
        "skopeo inspect of a deleted tag: {err}"
    );

    // The other image is untouched.
    assert_manifest(&b, "del/repo", "keep", &parse_digest(&keep_digest));
    assert_served_closure(&b, "del/repo", &src, &keep_digest);
    let listed = run(skopeo().args([
        "list-tags",
        "--tls-verify=false",
        &format!("docker://{}/del/repo", b.host),
    ]));
    assert_eq!(json_of(listed.as_bytes())["Tags"], json!(["keep"]));

    // Deleting it again is a 404 (MANIFEST_UNKNOWN), which skopeo reports as an error.
    run_fails(skopeo().args([
        "delete",
        "--tls-verify=false",
        &format!("docker://{}/del/repo@{gone_digest}", b.host),
    ]));
}

// ---------------------------------------------------------------------------------------
// Docker CLI + Docker Engine
// ---------------------------------------------------------------------------------------

/// The Docker CLI with a private config directory (so `docker login` does not touch the
/// user's), which removes every image it was told about when dropped.
struct Docker {
    config: tempfile::TempDir,
    cleanup: Vec<String>,
}

impl Docker {
    fn new() -> Docker {
        require_tool("docker");
        let d = Docker {
            config: tempfile::tempdir().expect("tempdir"),
            cleanup: Vec::new(),
        };
        let info = exec(d.cmd().args(["info", "--format", "{{.ServerVersion}}"]));
        assert!(
            info.success,
            "the Docker Engine is not reachable (`docker info` failed): {}",
            info.stderr
        );
        d
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("docker");
        c.arg("--config").arg(self.config.path());
        c
    }

    fn run(&self, args: &[&str]) -> String {
        run(self.cmd().args(args))
    }

    /// Remove `reference` (an image name or ID) when the test ends, pass or fail.
    fn remove_later(&mut self, reference: &str) {
        self.cleanup.push(reference.to_string());
    }

    fn inspect(&self, reference: &str) -> Value {
        let out = self.run(&["image", "inspect", reference]);
        json_of(out.as_bytes())[0].clone()
    }

    fn exists(&self, reference: &str) -> bool {
        exec(self.cmd().args(["image", "inspect", reference])).success
    }

    /// `docker push`, returning the digest it reports and its output.
    fn push(&self, reference: &str) -> (oci::Digest, String) {
        let out = self.run(&["push", reference]);
        let digest = out
            .lines()
            .find_map(|l| l.split("digest: ").nth(1))
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no digest in docker push output:\n{out}"));
        (parse_digest(digest), out)
    }

    /// `docker pull`, returning the digest it reports.
    fn pull(&self, reference: &str) -> (oci::Digest, String) {
        let out = self.run(&["pull", reference]);
        let digest = out
            .lines()
            .find_map(|l| l.strip_prefix("Digest: "))
            .unwrap_or_else(|| panic!("no digest in docker pull output:\n{out}"));
        (parse_digest(digest), out)
    }
}

impl Drop for Docker {
    fn drop(&mut self) {
        for reference in self.cleanup.iter().rev() {
            let _ = exec(self.cmd().args(["rmi", "-f", reference]));
        }
    }
}

fn repo_digests(image: &Value) -> Vec<String> {
    image["RepoDigests"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| s.as_str().expect("repo digest").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// `docker import` a small rootfs unique to `salt` as `reference`; returns the image ID.
fn docker_import(docker: &mut Docker, dir: &Path, reference: &str, salt: &str) -> String {
    let rootfs = dir.join("rootfs.tar");
    let hello = format!("hello from {salt}\n");
    std::fs::write(
        &rootfs,
        plain_tar(&[
            ("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n"),
            ("etc/hostname", b"berth-test\n"),
            ("hello.txt", hello.as_bytes()),
            ("data/noise.bin", &noise(salt, 2 << 20)),
        ]),
    )
    .expect("rootfs.tar");
    docker.remove_later(reference);
    let id = docker
        .run(&[
            "import",
            "--change",
            "CMD [\"/hello\"]",
            rootfs.to_str().expect("utf-8"),
            reference,
        ])
        .trim()
        .to_string();
    docker.remove_later(&id);
    id
}

/// 1: an imported single-layer image: login, push, inspect, remove, pull.
#[test]
fn docker_push_pull_imported_image() {
    let b = Berth::start();
    let mut docker = Docker::new();
    let tmp = tempfile::tempdir().expect("tempdir");
    let port = b.host.rsplit(':').next().expect("port");
    let name = format!("docker-{port}/imported");
    let reference = format!("{}/{name}:v1", b.host);
    let id = docker_import(&mut docker, tmp.path(), &reference, &b.host);

    // No auth configured: login must still succeed.
    let login = docker.run(&["login", &b.host, "-u", "x", "-p", "y"]);
    assert!(login.contains("Login Succeeded"), "docker login: {login}");

    let (pushed, _) = docker.push(&reference);
    let manifest = json_of(&assert_manifest(&b, &name, "v1", &pushed));
    assert_eq!(manifest["mediaType"], DOCKER_MANIFEST);
    assert_eq!(manifest["config"]["mediaType"], DOCKER_CONFIG);
    assert_eq!(str_field(&manifest["config"], "digest"), id);
    assert_eq!(manifest["layers"].as_array().expect("layers").len(), 1);
    assert_blobs_served(&b, &name, &serde_json::to_vec(&manifest).expect("json"));
    let before = docker.inspect(&reference);
    let repo_digest = format!("{}/{name}@{pushed}", b.host);
    assert!(
        repo_digests(&before).contains(&repo_digest),
        "RepoDigests after push: {:?}",
        before["RepoDigests"]
    );

    let inspected = json_of(
        docker
            .run(&["manifest", "inspect", "--insecure", &reference])
            .as_bytes(),
    );
    assert_eq!(inspected["schemaVersion"], 2);
    assert_eq!(str_field(&inspected["config"], "digest"), id);
    assert_eq!(inspected["layers"], manifest["layers"]);

    docker.run(&["rmi", &reference]);
    assert!(!docker.exists(&id), "image {id} still present after rmi");
    let (pulled, _) = docker.pull(&reference);
    assert_eq!(pulled, pushed, "docker pull reports another digest");
    let after = docker.inspect(&reference);
    assert_eq!(str_field(&after, "Id"), id, "image ID after pull");
    assert_eq!(repo_digests(&after), vec![repo_digest.clone()]);

    // Pull by digest too.
    docker.run(&["rmi", &reference]);
    docker.remove_later(&repo_digest);
    let (by_digest, _) = docker.pull(&repo_digest);
    assert_eq!(by_digest, pushed);
    assert_eq!(str_field(&docker.inspect(&repo_digest), "Id"), id);
}

/// 1: a three-layer image built with `docker build` on top of a pushed base.
#[test]
fn docker_build_multi_layer_push_pull() {
    let b = Berth::start();
    let mut docker = Docker::new();
    let tmp = tempfile::tempdir().expect("tempdir");
    let port = b.host.rsplit(':').next().expect("port");
    let base = format!("{}/docker-{port}/base:v1", b.host);
    let app_name = format!("docker-{port}/app");
    let app = format!("{}/{app_name}:v2", b.host);
    let base_id = docker_import(&mut docker, tmp.path(), &base, &format!("base {}", b.host));
    let (base_digest, _) = docker.push(&base);
    assert_manifest(&b, &format!("docker-{port}/base"), "v1", &base_digest);

    let ctx = tmp.path().join("ctx");
    std::fs::create_dir(&ctx).expect("ctx");
    std::fs::write(ctx.join("a.txt"), format!("a {}\n", b.host)).expect("a.txt");
    std::fs::write(ctx.join("b.bin"), vec![3u8; 40_000]).expect("b.bin");
    std::fs::write(
        ctx.join("Dockerfile"),
        format!("FROM {base}\nCOPY a.txt /a.txt\nCOPY b.bin /opt/b.bin\nLABEL org.test=berth\n"),
    )
    .expect("Dockerfile");
    docker.remove_later(&app);
    // The classic builder builds FROM the local image; BuildKit (buildx) may be missing.
    run(docker
        .cmd()
        .env("DOCKER_BUILDKIT", "0")
        .args(["build", "-t", &app])
        .arg(&ctx));
    let app_id = str_field(&docker.inspect(&app), "Id").to_string();
    docker.remove_later(&app_id);

    let (pushed, out) = docker.push(&app);
    // The base layer already in docker-PORT/base is mounted, not uploaded again.
    assert!(
        out.contains(&format!("Mounted from docker-{port}/base")),
        "docker push should mount the base layer from the base repository:\n{out}"
    );
    let manifest_bytes = assert_manifest(&b, &app_name, "v2", &pushed);
    let manifest = json_of(&manifest_bytes);
    assert_eq!(manifest["mediaType"], DOCKER_MANIFEST);
    assert_eq!(manifest["layers"].as_array().expect("layers").len(), 3);
    assert_eq!(str_field(&manifest["config"], "digest"), app_id);
    assert_blobs_served(&b, &app_name, &manifest_bytes);

    // Remove both images so that the pull has to fetch all three layers.
    docker.run(&["rmi", &app]);
    docker.run(&["rmi", &base]);
    assert!(!docker.exists(&app_id) && !docker.exists(&base_id));
    let (pulled, out) = docker.pull(&app);
    assert_eq!(pulled, pushed);
    assert_eq!(
        out.matches("Pull complete").count(),
        3,
        "docker pull should download three layers:\n{out}"
    );
    let after = docker.inspect(&app);
    assert_eq!(str_field(&after, "Id"), app_id);
    assert_eq!(
        repo_digests(&after),
        vec![format!("{}/{app_name}@{pushed}", b.host)]
    );
    assert_eq!(after["Config"]["Labels"]["org.test"], "berth");
    let tags = tags_list(&b, &app_name);
    assert_eq!(tags, vec!["v2".to_string()]);
}

/// 1: pulling what does not exist is a "not found" for Docker, not an internal error.
/// (The Docker Engine only recognises MANIFEST_UNKNOWN / NAME_UNKNOWN as "not found" when
/// the error it parses is a full error object, as Distribution sends it.)
#[test]
fn docker_pull_missing_is_not_found() {
    let b = Berth::start();
    let mut docker = Docker::new();
    let tmp = tempfile::tempdir().expect("tempdir");
    let port = b.host.rsplit(':').next().expect("port");
    let reference = format!("{}/docker-{port}/present:v1", b.host);
    docker_import(&mut docker, tmp.path(), &reference, &b.host);
    docker.push(&reference);

    for missing in [
        format!("{}/docker-{port}/present:missing", b.host),
        format!("{}/docker-{port}/absent:v1", b.host),
    ] {
        let err = run_fails(docker.cmd().args(["pull", &missing]));
        assert!(
            err.contains(&format!("manifest for {missing} not found")),
            "docker pull {missing} should say the manifest was not found, got: {err}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// podman and buildah, with vfs storage in a temporary root
// ---------------------------------------------------------------------------------------

fn podman_inspect(root: &Path, reference: &str) -> Value {
    let out = run(podman(root).args(["image", "inspect", reference]));
    json_of(out.as_bytes())[0].clone()
}

/// 3: podman import, push (OCI and Docker v2s2), remove, pull.
#[test]
fn podman_push_pull() {
    let b = Berth::start();
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    let rootfs = root.join("rootfs.tar");
    let salt = format!("podman {}\n", b.host);
    std::fs::write(
        &rootfs,
        plain_tar(&[
            ("etc/hostname", b"podman-test\n"),
            ("salt", salt.as_bytes()),
            ("big/zeros", &vec![0u8; 100_000]),
        ]),
    )
    .expect("rootfs");
    let reference = format!("{}/podman/img:v1", b.host);
    run(podman(root)
        .args(["import", "--change", "CMD=/salt"])
        .arg(&rootfs)
        .arg(&reference));
    let id = str_field(&podman_inspect(root, &reference), "Id").to_string();

    let oci_file = root.join("oci.digest");
    run(podman(root)
        .args([
            "push",
            "--tls-verify=false",
            "--format",
            "oci",
            "--digestfile",
        ])
        .arg(&oci_file)
        .arg(&reference));
    let oci_digest = read_digestfile(&oci_file);
    let m = json_of(&assert_manifest(&b, "podman/img", "v1", &oci_digest));
    assert_eq!(m["config"]["mediaType"], OCI_CONFIG);
    assert_eq!(str_field(&m["config"], "digest"), format!("sha256:{id}"));
    assert_blobs_served(&b, "podman/img", &serde_json::to_vec(&m).expect("json"));

    let v2_file = root.join("v2s2.digest");
    let v2_reference = format!("{}/podman/img:v2s2", b.host);
    run(podman(root)
        .args([
            "push",
            "--tls-verify=false",
            "--format",
            "v2s2",
            "--digestfile",
        ])
        .arg(&v2_file)
        .arg(&reference)
        .arg(format!("docker://{v2_reference}")));
    let v2_digest = read_digestfile(&v2_file);
    assert_ne!(v2_digest, oci_digest);
    let m = json_of(&assert_manifest(&b, "podman/img", "v2s2", &v2_digest));
    assert_eq!(m["mediaType"], DOCKER_MANIFEST);
    assert_eq!(m["config"]["mediaType"], DOCKER_CONFIG);

    run(podman(root).args(["rmi", &reference]));
    assert!(!exec(podman(root).args(["image", "exists", &id])).success);

    run(podman(root).args(["pull", "--tls-verify=false", &reference]));
    let after = podman_inspect(root, &reference);
    assert_eq!(str_field(&after, "Id"), id, "image ID after pull");
    assert_eq!(str_field(&after, "Digest"), oci_digest.as_str());

    run(podman(root).args(["pull", "--tls-verify=false", &v2_reference]));
    let after = podman_inspect(root, &v2_reference);
    assert_eq!(str_field(&after, "Id"), id);
    assert!(
        after["RepoDigests"]
            .as_array()
            .expect("RepoDigests")
            .contains(&json!(format!("{}/podman/img@{v2_digest}", b.host))),
        "RepoDigests: {}",
        after["RepoDigests"]
    );

    // zstd-compressed layers: a media type the registry must store without judging it.
    // (A new layer: podman would reuse the gzip blob it already pushed for the old one.)
    let zstd_rootfs = root.join("zstd.tar");
    let zstd_salt = format!("zstd {}\n", b.host);
    std::fs::write(
        &zstd_rootfs,
        plain_tar(&[
            ("salt", zstd_salt.as_bytes()),
            ("noise", &noise(&zstd_salt, 1 << 20)),
        ]),
    )
    .expect("zstd rootfs");
    let zstd_local = "localhost/podman/zstd:v1";
    run(podman(root).arg("import").arg(&zstd_rootfs).arg(zstd_local));
    let zstd_id = str_field(&podman_inspect(root, zstd_local), "Id").to_string();
    let zstd_file = root.join("zstd.digest");
    let zstd_reference = format!("{}/podman/img:zstd", b.host);
    run(podman(root)
        .args([
            "push",
            "--tls-verify=false",
            "--format",
            "oci",
            "--compression-format",
            "zstd",
            "--digestfile",
        ])
        .arg(&zstd_file)
        .arg(zstd_local)
        .arg(format!("docker://{zstd_reference}")));
    let zstd_digest = read_digestfile(&zstd_file);
    let manifest = assert_manifest(&b, "podman/img", "zstd", &zstd_digest);
    assert_eq!(
        json_of(&manifest)["layers"][0]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+zstd"
    );
    assert_blobs_served(&b, "podman/img", &manifest);
    let fresh = root.join("fresh");
    run(podman(&fresh).args(["pull", "--tls-verify=false", &zstd_reference]));
    let after = podman_inspect(&fresh, &zstd_reference);
    assert_eq!(str_field(&after, "Id"), zstd_id);
    assert_eq!(str_field(&after, "Digest"), zstd_digest.as_str());
}

/// 3: podman moves a three-layer image from an OCI layout to Berth and back.
#[test]
fn podman_multi_layer_from_layout() {
    let b = Berth::start();
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    let src = root.join("layout");
    let mut layout = Layout::create(&src);
    let image = three_layer_image(&layout, &format!("podman {}", b.host));
    layout.tag(&image, "v1");

    let reference = format!("{}/podman/layers:v1", b.host);
    // `podman pull` prints the new image's ID on stdout. It names the image after the
    // layout's path, which must be lowercase: use a relative path.
    let id = run(podman(root)
        .current_dir(root)
        .args(["pull", "oci:layout:v1"]))
    .trim()
    .to_string();
    let config =
        json_of(&layout_blob(&src, str_field(&image, "digest")))["config"]["digest"].clone();
    assert_eq!(json!(format!("sha256:{id}")), config, "podman image ID");
    run(podman(root).args(["tag", &id, &reference]));

    let digestfile = root.join("pushed.digest");
    run(podman(root)
        .args(["push", "--tls-verify=false", "--digestfile"])
        .arg(&digestfile)
        .arg(&reference));
    let pushed = read_digestfile(&digestfile);
    let manifest = assert_manifest(&b, "podman/layers", "v1", &pushed);
    assert_eq!(
        json_of(&manifest)["layers"]
            .as_array()
            .expect("layers")
            .len(),
        3
    );
    assert_blobs_served(&b, "podman/layers", &manifest);

    // Pull into a second, empty storage.
    let root2 = root.join("second");
    run(podman(&root2).args(["pull", "--tls-verify=false", &reference]));
    let after = podman_inspect(&root2, &reference);
    assert_eq!(str_field(&after, "Id"), id);
    assert_eq!(str_field(&after, "Digest"), pushed.as_str());
}

/// 3: `podman search` lists the repositories (`/v2/_catalog`) and a repository's tags.
#[test]
fn podman_search_catalog_and_tags() {
    let b = Berth::start();
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    let src = root.join("layout");
    let mut layout = Layout::create(&src);
    let salt = format!("search {}\n", b.host);
    let image = put_image(&layout, "amd64", &[&[("salt", salt.as_bytes())]]);
    layout.tag(&image, "v1");
    for target in [
        "search/alpha:v1",
        "search/beta:v1",
        "search/beta:2.0",
        "gamma:v1",
    ] {
        run(skopeo()
            .args(["copy", "--preserve-digests", "--dest-tls-verify=false"])
            .arg(format!("oci:{}:v1", src.display()))
            .arg(format!("docker://{}/{target}", b.host)));
    }

    let found = run(podman(root).args([
        "search",
        "--tls-verify=false",
        "--format",
        "{{.Name}}",
        &format!("{}/", b.host),
    ]));
    let found: BTreeSet<&str> = found.lines().map(str::trim).collect();
    let expected: BTreeSet<String> = ["search/alpha", "search/beta", "gamma"]
        .iter()
        .map(|r| format!("{}/{r}", b.host))
        .collect();
    assert_eq!(
        found,
        expected.iter().map(String::as_str).collect(),
        "podman search {}/",
        b.host
    );

    // `--list-tags` prints a NAME/TAG table (it ignores --format in podman 4).
    let table = run(podman(root).args([
        "search",
        "--tls-verify=false",
        "--list-tags",
        &format!("{}/search/beta", b.host),
    ]));
    let tags: BTreeSet<&str> = table
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    assert_eq!(
        tags,
        BTreeSet::from(["v1", "2.0"]),
        "podman search --list-tags:\n{table}"
    );
}

/// 4: buildah from scratch, copy, config, commit (two layers), push; skopeo pulls it back.
#[test]
fn buildah_build_push_skopeo_pull() {
    let b = Berth::start();
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    let hello = root.join("hello.sh");
    std::fs::write(&hello, format!("#!/bin/sh\necho {}\n", b.host)).expect("hello");
    let data = root.join("data.bin");
    std::fs::write(&data, vec![9u8; 60_000]).expect("data");

    let ctr = run(buildah(root).args(["from", "scratch"]))
        .trim()
        .to_string();
    run(buildah(root)
        .arg("copy")
        .arg(&ctr)
        .arg(&hello)
        .arg("/hello.sh"));
    run(buildah(root).args([
        "config",
        "--cmd",
        "/hello.sh",
        "--label",
        "org.test=berth",
        "--env",
        "GREETING=hi",
        &ctr,
    ]));
    run(buildah(root).args(["commit", &ctr, "localhost/buildah/base:v1"]));
    run(buildah(root).args(["rm", &ctr]));
    let ctr = run(buildah(root).args(["from", "localhost/buildah/base:v1"]))
        .trim()
        .to_string();
    run(buildah(root)
        .arg("copy")
        .arg(&ctr)
        .arg(&data)
        .arg("/data/data.bin"));
    run(buildah(root).args(["commit", &ctr, "localhost/buildah/app:v1"]));
    run(buildah(root).args(["rm", &ctr]));

    let target = format!("{}/buildah/app", b.host);
    let mut pushed = Vec::new();
    for (tag, format, manifest_type) in [
        ("oci", "oci", OCI_MANIFEST),
        ("v2s2", "v2s2", DOCKER_MANIFEST),
    ] {
        let digestfile = root.join(format!("{tag}.digest"));
        run(buildah(root)
            .args([
                "push",
                "--tls-verify=false",
                "--format",
                format,
                "--digestfile",
            ])
            .arg(&digestfile)
            .arg("localhost/buildah/app:v1")
            .arg(format!("docker://{target}:{tag}")));
        let digest = read_digestfile(&digestfile);
        let manifest = assert_manifest(&b, "buildah/app", tag, &digest);
        let m = json_of(&manifest);
        assert_eq!(m["mediaType"], manifest_type);
        assert_eq!(m["layers"].as_array().expect("layers").len(), 2);
        assert_blobs_served(&b, "buildah/app", &manifest);

        let raw = run(skopeo().args([
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{target}:{tag}"),
        ]));
        assert_eq!(sha256(raw.as_bytes()), digest, "skopeo inspect --raw {tag}");

        // Pull back with skopeo into a `dir:` (which keeps any manifest type as is).
        let back = root.join(format!("back-{tag}"));
        run(skopeo()
            .args(["copy", "--src-tls-verify=false", "--preserve-digests"])
            .arg(format!("docker://{target}:{tag}"))
            .arg(format!("dir:{}", back.display())));
        let pulled = std::fs::read(back.join("manifest.json")).expect("manifest.json");
        assert_eq!(sha256(&pulled), digest, "manifest pulled back by skopeo");
        for layer in m["layers"].as_array().expect("layers") {
            let d = parse_digest(str_field(layer, "digest"));
            let blob = std::fs::read(back.join(d.hex())).expect("layer pulled back");
            assert_eq!(sha256(&blob), d);
        }
        pushed.push(digest);
    }
    let inspect = json_of(
        run(skopeo().args([
            "inspect",
            "--tls-verify=false",
            &format!("docker://{target}:oci"),
        ]))
        .as_bytes(),
    );
    assert_eq!(inspect["Labels"]["org.test"], "berth");
    assert_eq!(
        tags_list(&b, "buildah/app"),
        vec!["oci".to_string(), "v2s2".to_string()]
    );
    assert_ne!(pushed[0], pushed[1]);
}

/// 4: `buildah manifest push --all` of a two-platform list, as a Docker manifest list and
/// as an OCI index.
#[test]
fn buildah_manifest_list_push() {
    let b = Berth::start();
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    for (arch, image) in [
        ("amd64", "localhost/list/one:v1"),
        ("arm64", "localhost/list/two:v1"),
    ] {
        let file = root.join(format!("{arch}.bin"));
        std::fs::write(&file, noise(&format!("{arch} {}", b.host), 100_000)).expect("write");
        let ctr = run(buildah(root).args(["from", "scratch"]))
            .trim()
            .to_string();
        run(buildah(root)
            .arg("copy")
            .arg(&ctr)
            .arg(&file)
            .arg("/payload.bin"));
        run(buildah(root).args(["config", "--arch", arch, "--os", "linux", &ctr]));
        run(buildah(root).args(["commit", &ctr, image]));
        run(buildah(root).args(["rm", &ctr]));
    }
    run(buildah(root).args(["manifest", "create", "localhost/list:v1"]));
    for (arch, image) in [
        ("amd64", "localhost/list/one:v1"),
        ("arm64", "localhost/list/two:v1"),
    ] {
        run(buildah(root).args([
            "manifest",
            "add",
            "--arch",
            arch,
            "--os",
            "linux",
            "localhost/list:v1",
            image,
        ]));
    }

    for (format, list_type, child_type) in [
        ("v2s2", DOCKER_LIST, DOCKER_MANIFEST),
        ("oci", OCI_INDEX, OCI_MANIFEST),
    ] {
        let digestfile = root.join(format!("{format}.digest"));
        let target = format!("{}/buildah/list:{format}", b.host);
        run(buildah(root)
            .args([
                "manifest",
                "push",
                "--all",
                "--tls-verify=false",
                "--format",
                format,
                "--digestfile",
            ])
            .arg(&digestfile)
            .arg("localhost/list:v1")
            .arg(format!("docker://{target}")));
        let digest = read_digestfile(&digestfile);
        let list_bytes = assert_manifest(&b, "buildah/list", format, &digest);
        let list = json_of(&list_bytes);
        assert_eq!(list["mediaType"], list_type, "{format} list");
        let children = list["manifests"].as_array().expect("manifests");
        assert_eq!(children.len(), 2);
        for child in children {
            assert_eq!(child["mediaType"], child_type);
            let child_digest = parse_digest(str_field(child, "digest"));
            let bytes = assert_manifest(&b, "buildah/list", child_digest.as_str(), &child_digest);
            assert_eq!(bytes.len() as u64, child["size"].as_u64().expect("size"));
            assert_blobs_served(&b, "buildah/list", &bytes);
            let arch = str_field(&child["platform"], "architecture");
            let inspect = json_of(
                run(skopeo().args([
                    "inspect",
                    "--tls-verify=false",
                    "--override-arch",
                    arch,
                    &format!("docker://{target}"),
                ]))
                .as_bytes(),
            );
            // (skopeo's "Digest" is the list's; the layers identify the platform's image.)
            let layers: Vec<Value> = json_of(&bytes)["layers"]
                .as_array()
                .expect("layers")
                .iter()
                .map(|l| l["digest"].clone())
                .collect();
            assert_eq!(inspect["Layers"], json!(layers), "{format} {arch} layers");
            assert_eq!(str_field(&inspect, "Architecture"), arch);
        }
        let raw = run(skopeo().args([
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{target}"),
        ]));
        assert!(
            raw.as_bytes() == list_bytes.as_slice(),
            "skopeo inspect --raw {format}"
        );
    }
}
