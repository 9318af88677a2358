//! `berth import distribution`: images pushed with skopeo to a real CNCF Distribution
//! (Debian's `docker-registry`, 2.8) are imported from its stopped filesystem store, then
//! pulled from Berth with skopeo: same digests, same tags, blobs hard-linked. A corrupted
//! blob in the source is reported and not imported.

mod common;

use common::{berth_command, require_tool, run, Berth};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

fn sha256(bytes: &[u8]) -> oci::Digest {
    oci::Digest::of(oci::Algorithm::Sha256, bytes)
}

/// A real `docker-registry serve` (CNCF Distribution 2.8) on a free loopback port.
struct Distribution {
    host: String,
    child: Option<Child>,
    _config_dir: tempfile::TempDir,
}

impl Distribution {
    fn start(root: &Path) -> Distribution {
        Distribution::start_with(root, "")
    }

    /// Start with `extra` YAML appended to the config.
    fn start_with(root: &Path, extra: &str) -> Distribution {
        let bin = require_tool("docker-registry");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let host = format!("127.0.0.1:{port}");
        let config_dir = tempfile::tempdir().expect("tempdir");
        let config = config_dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {host}\n{extra}",
                root.display()
            ),
        )
        .expect("write config");
        let child = Command::new(bin)
            .arg("serve")
            .arg(&config)
            .env_remove("AWS_CA_BUNDLE")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn docker-registry");
        let mut peer = Distribution {
            host,
            child: Some(child),
            _config_dir: config_dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(&peer.host).is_err() {
            if let Some(status) = peer
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("docker-registry exited with {status} before listening");
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry did not listen within 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        peer
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Distribution {
    fn drop(&mut self) {
        self.stop();
    }
}

fn skopeo() -> Command {
    require_tool("skopeo");
    Command::new("skopeo")
}

fn push(layout: &Path, layout_tag: &str, host: &str, target: &str) {
    run(skopeo()
        .args([
            "copy",
            "--all",
            "--preserve-digests",
            "--dest-tls-verify=false",
        ])
        .arg(format!("oci:{}:{layout_tag}", layout.display()))
        .arg(format!("docker://{host}/{target}")));
}

fn curl_json(url: &str) -> Value {
    require_tool("curl");
    let out = run(Command::new("curl").args(["-sSf", url]));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{url}: {e}: {out}"))
}

fn curl_status(url: &str) -> String {
    require_tool("curl");
    run(Command::new("curl").args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-I", url]))
}

fn tags_of(host: &str, repo: &str) -> BTreeSet<String> {
    let v = curl_json(&format!("http://{host}/v2/{repo}/tags/list"));
    v["tags"]
        .as_array()
        .unwrap_or_else(|| panic!("tags of {repo}: {v}"))
        .iter()
        .map(|t| t.as_str().expect("tag").to_string())
        .collect()
}

/// A gzipped tar holding `files`, with fixed headers.
fn layer(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        builder.append_data(&mut h, path, *data).expect("tar");
    }
    let tar = builder.into_inner().expect("tar");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &tar).expect("gzip");
    gz.finish().expect("gzip")
}

/// Deterministic incompressible bytes.
fn noise(seed: &str, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 32);
    let mut block = sha256(seed.as_bytes()).hex().as_bytes().to_vec();
    while out.len() < len {
        block = hex_bytes(&sha256(&block));
        out.extend_from_slice(&block);
    }
    out.truncate(len);
    out
}

fn hex_bytes(d: &oci::Digest) -> Vec<u8> {
    (0..32)
        .map(|i| u8::from_str_radix(&d.hex()[2 * i..2 * i + 2], 16).expect("hex"))
        .collect()
}

/// An OCI image layout written by the test.
struct Layout {
    dir: PathBuf,
    refs: Vec<Value>,
}

impl Layout {
    fn create(dir: &Path) -> Layout {
        std::fs::create_dir_all(dir.join("blobs/sha256")).expect("layout dir");
        std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)
            .expect("oci-layout");
        Layout {
            dir: dir.to_path_buf(),
            refs: Vec::new(),
        }
    }

    fn put_blob(&self, media_type: &str, bytes: &[u8]) -> Value {
        let digest = sha256(bytes);
        std::fs::write(self.dir.join("blobs/sha256").join(digest.hex()), bytes).expect("blob");
        json!({"mediaType": media_type, "digest": digest.as_str(), "size": bytes.len()})
    }

    /// An image of the given (already built) layers; returns its manifest's descriptor.
    fn put_image(&self, arch: &str, layers: &[&[u8]]) -> Value {
        let descriptors: Vec<Value> = layers
            .iter()
            .map(|l| self.put_blob(OCI_LAYER_GZIP, l))
            .collect();
        let config = json!({
            "architecture": arch,
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": descriptors.iter().map(|d| d["digest"].clone()).collect::<Vec<_>>()},
        });
        let config = self.put_blob(OCI_CONFIG, &serde_json::to_vec(&config).expect("json"));
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config,
            "layers": descriptors,
        });
        self.put_blob(OCI_MANIFEST, &serde_json::to_vec(&manifest).expect("json"))
    }

    fn put_index(&self, manifests: &[(Value, &str)]) -> Value {
        let manifests: Vec<Value> = manifests
            .iter()
            .map(|(d, arch)| {
                let mut d = d.clone();
                d["platform"] = json!({"architecture": arch, "os": "linux"});
                d
            })
            .collect();
        let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests});
        self.put_blob(OCI_INDEX, &serde_json::to_vec(&index).expect("json"))
    }

    fn tag(&mut self, descriptor: &Value, tag: &str) {
        let mut d = descriptor.clone();
        d["annotations"] = json!({"org.opencontainers.image.ref.name": tag});
        self.refs.push(d);
        let index = json!({"schemaVersion": 2, "manifests": self.refs});
        std::fs::write(
            self.dir.join("index.json"),
            serde_json::to_vec(&index).expect("json"),
        )
        .expect("index.json");
    }

    fn layers_of(&self, manifest: &Value) -> Vec<oci::Digest> {
        let d: oci::Digest = manifest["digest"]
            .as_str()
            .expect("digest")
            .parse()
            .expect("digest");
        let bytes = std::fs::read(self.dir.join("blobs/sha256").join(d.hex())).expect("manifest");
        let m: Value = serde_json::from_slice(&bytes).expect("json");
        m["layers"]
            .as_array()
            .expect("layers")
            .iter()
            .map(|l| {
                l["digest"]
                    .as_str()
                    .expect("digest")
                    .parse()
                    .expect("digest")
            })
            .collect()
    }
}

fn digest_of(descriptor: &Value) -> String {
    descriptor["digest"].as_str().expect("digest").to_string()
}

fn distribution_blob(root: &Path, d: &oci::Digest) -> PathBuf {
    root.join("docker/registry/v2/blobs/sha256")
        .join(&d.hex()[..2])
        .join(d.hex())
        .join("data")
}

fn berth_blob(data: &Path, d: &oci::Digest) -> PathBuf {
    data.join("blobs/sha256").join(&d.hex()[..2]).join(d.hex())
}

/// A Berth config whose storage is `<dir>/data`.
fn berth_config(dir: &Path) -> PathBuf {
    let path = dir.join("config.yml");
    std::fs::write(
        &path,
        format!(
            "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:0\n",
            dir.join("data").display()
        ),
    )
    .expect("write config");
    path
}

fn import(source: &Path, config: &Path) -> std::process::Output {
    let out = berth_command(&[
        "import".as_ref(),
        "distribution".as_ref(),
        source.as_os_str(),
        config.as_os_str(),
    ]);
    eprintln!(
        "[import] stdout:\n{}\n[import] stderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn import_distribution_store_then_pull_everything_from_berth() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let source = tmp.path().join("distribution");
    let mut peer = Distribution::start(&source);

    let mut layout = Layout::create(&tmp.path().join("layout"));
    let base = layer(&[("etc/os-release", b"ID=berth-test\n")]);
    let big = layer(&[("usr/lib/big.bin", &noise("big", 512 * 1024))]);
    let shared = layer(&[("usr/share/common", b"shared by two repositories\n")]);
    let app_v1 = layout.put_image("amd64", &[&base, &big, &layer(&[("app/version", b"1\n")])]);
    let app_v2 = layout.put_image("amd64", &[&base, &layer(&[("app/version", b"2\n")])]);
    let amd64 = layout.put_image("amd64", &[&layer(&[("etc/arch", b"amd64\n")])]);
    let arm64 = layout.put_image(
        "arm64",
        &[
            &layer(&[("etc/arch", b"arm64\n")]),
            &layer(&[("etc/x", b"arm\n")]),
        ],
    );
    let index = layout.put_index(&[(amd64, "amd64"), (arm64, "arm64")]);
    let one = layout.put_image("amd64", &[&shared, &layer(&[("one", b"1\n")])]);
    let two = layout.put_image("amd64", &[&shared, &layer(&[("two", b"2\n")])]);
    let abc = layout.put_image("amd64", &[&layer(&[("nested", b"a/b/c\n")])]);
    for (d, t) in [
        (&app_v1, "app-v1"),
        (&app_v2, "app-v2"),
        (&index, "multi"),
        (&one, "one"),
        (&two, "two"),
        (&abc, "abc"),
    ] {
        layout.tag(d, t);
    }
    let lay = layout.dir.clone();
    let host = peer.host.clone();
    push(&lay, "app-v1", &host, "app:v1");
    push(&lay, "app-v2", &host, "app:v2");
    push(&lay, "app-v1", &host, "app:latest");
    // A retag: `latest` moves on to v2 (Distribution keeps the old target in its history).
    push(&lay, "app-v2", &host, "app:latest");
    push(&lay, "multi", &host, "multi/arch:multi");
    push(&lay, "multi", &host, "multi/arch:stable");
    push(&lay, "one", &host, "shared/one:1.0");
    push(&lay, "two", &host, "shared/two:1.0");
    push(&lay, "abc", &host, "a/b/c:edge");

    let expected: Vec<(&str, &str, String)> = vec![
        ("app", "v1", digest_of(&app_v1)),
        ("app", "v2", digest_of(&app_v2)),
        ("app", "latest", digest_of(&app_v2)),
        ("multi/arch", "multi", digest_of(&index)),
        ("multi/arch", "stable", digest_of(&index)),
        ("shared/one", "1.0", digest_of(&one)),
        ("shared/two", "1.0", digest_of(&two)),
        ("a/b/c", "edge", digest_of(&abc)),
    ];
    let repos = ["a/b/c", "app", "multi/arch", "shared/one", "shared/two"];
    let source_tags: Vec<BTreeSet<String>> = repos.iter().map(|r| tags_of(&host, r)).collect();
    peer.stop();

    // Import, without Distribution running.
    let target = tempfile::tempdir().expect("tempdir");
    let config = berth_config(target.path());
    let out = import(&source, &config);
    assert!(out.status.success(), "import failed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    for r in repos {
        assert!(
            stdout.lines().any(|l| l.starts_with(&format!("{r}: "))),
            "a progress line for {r}"
        );
    }
    assert!(
        stdout.contains("5 repositories, 8 tags"),
        "summary: {stdout}"
    );
    assert!(
        stdout.contains(" 0 copied, 0 skipped, 0 errors"),
        "summary: {stdout}"
    );

    // Running it again imports nothing twice.
    let again = import(&source, &config);
    assert!(again.status.success(), "second import failed");
    let stdout = String::from_utf8_lossy(&again.stdout);
    assert!(
        stdout.contains("0 manifests imported") && stdout.contains("0 blobs imported"),
        "second run: {stdout}"
    );

    // Blobs are hard links to Distribution's files (one filesystem here).
    let data = target.path().join("data");
    for d in layout.layers_of(&app_v1) {
        let src = std::fs::metadata(distribution_blob(&source, &d)).expect("source blob");
        let dst = std::fs::metadata(berth_blob(&data, &d)).expect("imported blob");
        assert_eq!(src.ino(), dst.ino(), "{d} is hard-linked");
    }

    // Pull everything from Berth.
    let berth = Berth::serve_config_in(target, &config);
    let back = tmp.path().join("back");
    for (repo, tag, digest) in &expected {
        let raw = run(skopeo().args([
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{}/{repo}:{tag}", berth.host),
        ]));
        assert_eq!(&sha256(raw.as_bytes()).to_string(), digest, "{repo}:{tag}");
        let digestfile = tmp.path().join("pulled.digest");
        run(skopeo()
            .args([
                "copy",
                "--all",
                "--preserve-digests",
                "--src-tls-verify=false",
            ])
            .arg("--digestfile")
            .arg(&digestfile)
            .arg(format!("docker://{}/{repo}:{tag}", berth.host))
            .arg(format!(
                "oci:{}:{}-{tag}",
                back.display(),
                repo.replace('/', "-")
            )));
        let pulled = std::fs::read_to_string(&digestfile).expect("digestfile");
        assert_eq!(pulled.trim(), digest, "{repo}:{tag} pulled");
    }
    for (r, tags) in repos.iter().zip(&source_tags) {
        assert_eq!(&tags_of(&berth.host, r), tags, "tags of {r}");
    }
    let catalog = curl_json(&format!("http://{}/v2/_catalog", berth.host));
    assert_eq!(catalog["repositories"], json!(repos));
}

#[test]
fn corrupted_blob_in_source_is_reported_and_not_imported() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let source = tmp.path().join("distribution");
    let mut peer = Distribution::start(&source);
    let mut layout = Layout::create(&tmp.path().join("layout"));
    let broken = layout.put_image(
        "amd64",
        &[
            &layer(&[("ok", b"fine\n")]),
            &layer(&[("bad", b"to be corrupted\n")]),
        ],
    );
    let fine = layout.put_image("amd64", &[&layer(&[("fine", b"untouched\n")])]);
    layout.tag(&broken, "broken");
    layout.tag(&fine, "fine");
    let host = peer.host.clone();
    push(&layout.dir, "broken", &host, "broken:v1");
    push(&layout.dir, "fine", &host, "fine:v1");
    peer.stop();

    // Change the bytes of one layer, keeping its length.
    let bad = layout.layers_of(&broken)[1].clone();
    let path = distribution_blob(&source, &bad);
    let mut bytes = std::fs::read(&path).expect("blob");
    bytes[0] ^= 0xff;
    std::fs::write(&path, &bytes).expect("corrupt");

    let target = tempfile::tempdir().expect("tempdir");
    let config = berth_config(target.path());
    let out = import(&source, &config);
    assert!(
        !out.status.success(),
        "a corrupted blob makes the import fail"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("blob {bad} not imported")) && stderr.contains("corrupt"),
        "the corrupted blob is named: {stderr}"
    );
    assert!(
        stderr.contains(&format!("manifest {} not imported", digest_of(&broken))),
        "the manifest using it is named: {stderr}"
    );
    assert!(!berth_blob(&target.path().join("data"), &bad).exists());

    // What was intact is served; the corrupted blob and its manifest are not.
    let berth = Berth::serve_config_in(target, &config);
    assert_eq!(
        curl_status(&format!("http://{}/v2/broken/blobs/{bad}", berth.host)),
        "404"
    );
    assert_eq!(
        curl_status(&format!("http://{}/v2/broken/manifests/v1", berth.host)),
        "404"
    );
    let raw = run(skopeo().args([
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{}/fine:v1", berth.host),
    ]));
    assert_eq!(sha256(raw.as_bytes()).to_string(), digest_of(&fine));
}

/// Docker schema1 manifests (pushable to 2.8 with `compatibility.schema1.enabled`) are
/// skipped with a warning naming them, with their tags; the rest imports, exit status 0.
#[test]
fn schema1_manifests_are_skipped_with_a_warning() {
    require_tool("docker");
    let tmp = tempfile::tempdir().expect("tempdir");
    let source = tmp.path().join("distribution");
    let mut peer =
        Distribution::start_with(&source, "compatibility:\n  schema1:\n    enabled: true\n");
    let host = peer.host.clone();

    // A schema1 image: skopeo converts a `docker import`ed image on the way.
    let rootfs = tmp.path().join("rootfs.tar");
    let mut builder = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_size(4);
    h.set_cksum();
    builder
        .append_data(&mut h, "old", &b"old\n"[..])
        .expect("tar");
    std::fs::write(&rootfs, builder.into_inner().expect("tar")).expect("write");
    let local = format!("berth-import-schema1-{}:v1", std::process::id());
    run(Command::new("docker")
        .arg("import")
        .arg(&rootfs)
        .arg(&local));
    let pushed = Command::new("skopeo")
        .args(["copy", "--dest-tls-verify=false", "--format", "v2s1"])
        .arg(format!("docker-daemon:{local}"))
        .arg(format!("docker://{host}/old/schema1:v1"))
        .output();
    let _ = Command::new("docker").args(["rmi", "-f", &local]).output();
    let pushed = pushed.expect("run skopeo");
    assert!(
        pushed.status.success(),
        "schema1 push: {}",
        String::from_utf8_lossy(&pushed.stderr)
    );

    let mut layout = Layout::create(&tmp.path().join("layout"));
    let current = layout.put_image("amd64", &[&layer(&[("new", b"new\n")])]);
    layout.tag(&current, "current");
    push(&layout.dir, "current", &host, "new/image:v1");
    peer.stop();
    let link =
        source.join("docker/registry/v2/repositories/old/schema1/_manifests/tags/v1/current/link");
    let schema1 = std::fs::read_to_string(&link).expect("tag link");

    let target = tempfile::tempdir().expect("tempdir");
    let config = berth_config(target.path());
    let out = import(&source, &config);
    assert!(out.status.success(), "skipping is not a failure");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.lines().any(|l| l.starts_with("warning:")
            && l.contains(schema1.trim())
            && l.contains("schema1")),
        "a warning names the schema1 manifest: {stderr}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("1 manifests imported") && stdout.contains("1 skipped, 0 errors"),
        "summary: {stdout}"
    );

    let berth = Berth::serve_config_in(target, &config);
    let raw = run(skopeo().args([
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{}/new/image:v1", berth.host),
    ]));
    assert_eq!(sha256(raw.as_bytes()).to_string(), digest_of(&current));
    assert_eq!(
        curl_status(&format!(
            "http://{}/v2/old/schema1/manifests/v1",
            berth.host
        )),
        "404"
    );
}
