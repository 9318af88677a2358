//! `berth import distribution`: images pushed with skopeo to a real CNCF Distribution
//! (Debian's `docker-registry`, 2.8) are imported from its stopped filesystem store, then
//! pulled from Berth with skopeo: same digests, same tags, blobs hard-linked. A corrupted
//! blob in the source is reported and not imported.

mod common;

use common::layout::{layer_tar_gz, noise, Layout};
use common::push::{sha256, OCI_CONFIG, OCI_LAYER_GZIP};
use common::registry2::Registry2;
use common::tools::skopeo;
use common::{berth_command, require_tool, run, Berth};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A real `docker-registry serve` (CNCF Distribution 2.8) whose filesystem store is
/// `root`, with `extra` YAML appended to its config.
fn distribution(root: &Path, extra: &str) -> Registry2 {
    Registry2::start(&format!(
        "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:0\n{extra}",
        root.display()
    ))
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

/// A gzipped tar holding `files`.
fn layer(files: &[(&str, &[u8])]) -> Vec<u8> {
    layer_tar_gz(files).0
}

/// An image of the given (already built) layers; returns its manifest's descriptor.
fn put_image(layout: &Layout, arch: &str, layers: &[&[u8]]) -> Value {
    let descriptors: Vec<Value> = layers
        .iter()
        .map(|l| layout.put_blob(OCI_LAYER_GZIP, l))
        .collect();
    let config = json!({
        "architecture": arch,
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": descriptors.iter().map(|d| d["digest"].clone()).collect::<Vec<_>>()},
    });
    let config = layout.put_blob(OCI_CONFIG, &serde_json::to_vec(&config).expect("json"));
    layout.put_manifest(config, descriptors, false)
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
    let mut peer = distribution(&source, "");

    let mut layout = Layout::create(&tmp.path().join("layout"));
    let base = layer(&[("etc/os-release", b"ID=berth-test\n")]);
    let big = layer(&[("usr/lib/big.bin", &noise("big", 512 * 1024))]);
    let shared = layer(&[("usr/share/common", b"shared by two repositories\n")]);
    let app_v1 = put_image(
        &layout,
        "amd64",
        &[&base, &big, &layer(&[("app/version", b"1\n")])],
    );
    let app_v2 = put_image(
        &layout,
        "amd64",
        &[&base, &layer(&[("app/version", b"2\n")])],
    );
    let amd64 = put_image(&layout, "amd64", &[&layer(&[("etc/arch", b"amd64\n")])]);
    let arm64 = put_image(
        &layout,
        "arm64",
        &[
            &layer(&[("etc/arch", b"arm64\n")]),
            &layer(&[("etc/x", b"arm\n")]),
        ],
    );
    let index = layout.put_index(&[(amd64, "amd64"), (arm64, "arm64")], Value::Null);
    let one = put_image(&layout, "amd64", &[&shared, &layer(&[("one", b"1\n")])]);
    let two = put_image(&layout, "amd64", &[&shared, &layer(&[("two", b"2\n")])]);
    let abc = put_image(&layout, "amd64", &[&layer(&[("nested", b"a/b/c\n")])]);
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
    let mut peer = distribution(&source, "");
    let mut layout = Layout::create(&tmp.path().join("layout"));
    let broken = put_image(
        &layout,
        "amd64",
        &[
            &layer(&[("ok", b"fine\n")]),
            &layer(&[("bad", b"to be corrupted\n")]),
        ],
    );
    let fine = put_image(&layout, "amd64", &[&layer(&[("fine", b"untouched\n")])]);
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
    let mut peer = distribution(&source, "compatibility:\n  schema1:\n    enabled: true\n");
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
    let current = put_image(&layout, "amd64", &[&layer(&[("new", b"new\n")])]);
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
