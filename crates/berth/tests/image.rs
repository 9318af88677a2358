//! Berth's container image (`Dockerfile`, `scripts/build-image.sh`) run the way the
//! guides run registry:2, with the real Docker Engine: `docker run -d -p ...:5000
//! --restart=always -v VOLUME:/var/lib/registry`, push and pull with the docker CLI, data
//! surviving `docker rm -f` and a new container on the same volume, and `REGISTRY_*`
//! variables given with `-e`, and the guides' `docker exec registry registry garbage-collect`
//! cron line. The image is built once per test run.
//!
//! And the guides' production deployment: TLS and htpasswd from `REGISTRY_HTTP_TLS_*` and
//! `REGISTRY_AUTH*` variables with mounted `/certs` and `/auth` directories, then
//! `docker login`, `docker push` and `docker pull`.

mod common;

use common::docker::{docker, image};
use common::layout::plain_tar;
use common::pki::{make_ca, make_cert, Key};
use common::{require_tool, run};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// A name no other test run uses.
fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}-{}-{nanos}", std::process::id())
}

/// Containers, volumes and local images a test made; removed when it ends, pass or fail.
#[derive(Default)]
struct Cleanup {
    containers: Vec<String>,
    volumes: Vec<String>,
    images: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = docker().args(["rm", "-f", c]).output();
        }
        for v in &self.volumes {
            let _ = docker().args(["volume", "rm", "-f", v]).output();
        }
        for i in &self.images {
            let _ = docker().args(["rmi", "-f", i]).output();
        }
    }
}

/// `docker run -d -p 127.0.0.1::5000 --restart=always -v VOLUME:/var/lib/registry [-e ...]`;
/// returns `127.0.0.1:PORT` once the registry answers.
fn run_registry(cleanup: &mut Cleanup, volume: &str, env: &[&str]) -> (String, String) {
    let mut cmd = docker();
    cmd.args([
        "run",
        "-d",
        "-p",
        "127.0.0.1::5000",
        "--restart=always",
        "-v",
    ])
    .arg(format!("{volume}:/var/lib/registry"));
    for e in env {
        cmd.args(["-e", e]);
    }
    cmd.arg(image());
    let id = run(&mut cmd).trim().to_string();
    cleanup.containers.push(id.clone());
    let port = run(docker().args(["port", &id, "5000/tcp"]));
    let addr = port
        .lines()
        .find(|l| l.starts_with("127.0.0.1:"))
        .unwrap_or_else(|| panic!("no 127.0.0.1 port published: {port}"))
        .to_string();
    // docker-proxy accepts connections before Berth listens: wait for an HTTP answer.
    wait_for_container(
        &id,
        &format!("the container did not answer on {addr} within 60 s"),
        || http_status("GET", &format!("http://{addr}/v2/"), &[]) == "200",
    );
    (id, addr)
}

/// Wait (at most 60 s) until `ready` holds for container `id`; else panic with `what` and
/// the container's log.
fn wait_for_container(id: &str, what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready() {
        if Instant::now() > deadline {
            let logs = docker().args(["logs", id]).output().ok();
            panic!(
                "{what}; logs:\n{}",
                logs.map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
                    .unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn http_status(method: &str, url: &str, headers: &[&str]) -> String {
    require_tool("curl");
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-o", "/dev/null", "-w", "%{http_code}"]);
    if method == "HEAD" {
        cmd.arg("-I");
    } else {
        cmd.args(["-X", method]);
    }
    for h in headers {
        cmd.args(["-H", h]);
    }
    cmd.arg(url);
    cmd.output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// A one-file image made with `docker import`, tagged `tag`.
fn import_image(cleanup: &mut Cleanup, tag: &str, content: &[u8]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let tar_path = dir.path().join("rootfs.tar");
    std::fs::write(&tar_path, plain_tar(&[("hello.txt", content)])).expect("write tar");
    run(docker().arg("import").arg(&tar_path).arg(tag));
    cleanup.images.push(tag.to_string());
}

fn image_id(tag: &str) -> String {
    run(docker().args(["image", "inspect", "--format", "{{.Id}}", tag]))
        .trim()
        .to_string()
}

#[test]
fn container_serves_docker_and_keeps_data_on_its_volume() {
    let mut cleanup = Cleanup::default();
    let volume = unique("berth-test-data");
    run(docker().args(["volume", "create", &volume]));
    cleanup.volumes.push(volume.clone());

    let (first, addr) = run_registry(&mut cleanup, &volume, &[]);
    let tag = format!("{addr}/test/imported:v1");
    import_image(&mut cleanup, &tag, b"hello from docker import\n");
    let id = image_id(&tag);
    run(docker().args(["push", &tag]));
    run(docker().args(["rmi", &tag]));
    run(docker().args(["pull", &tag]));
    assert_eq!(image_id(&tag), id, "pulled back the pushed image");

    // Data survives the container: a new one on the same volume serves it.
    run(docker().args(["rm", "-f", &first]));
    let (_second, addr2) = run_registry(&mut cleanup, &volume, &[]);
    let tag2 = format!("{addr2}/test/imported:v1");
    cleanup.images.push(tag2.clone());
    run(docker().args(["rmi", &tag]));
    run(docker().args(["pull", &tag2]));
    assert_eq!(image_id(&tag2), id, "the new container serves the old data");
}

#[test]
fn registry_variables_configure_the_container() {
    let mut cleanup = Cleanup::default();
    let accept = "Accept: application/vnd.docker.distribution.manifest.v2+json";

    // The image's default config, as registry:2's: deletes are disabled.
    let plain = unique("berth-test-plain");
    cleanup.volumes.push(plain.clone());
    let (_c, addr) = run_registry(&mut cleanup, &plain, &[]);
    let tag = format!("{addr}/test/deletable:v1");
    import_image(&mut cleanup, &tag, b"delete me\n");
    run(docker().args(["push", &tag]));
    let digest = manifest_digest(&addr, "test/deletable", "v1", accept);
    let url = format!("http://{addr}/v2/test/deletable/manifests/{digest}");
    assert_eq!(http_status("DELETE", &url, &[]), "405");

    // REGISTRY_STORAGE_DELETE_ENABLED=true, given with -e, allows it.
    let enabled = unique("berth-test-delete");
    cleanup.volumes.push(enabled.clone());
    let (id, addr) = run_registry(
        &mut cleanup,
        &enabled,
        &["REGISTRY_STORAGE_DELETE_ENABLED=true"],
    );
    let tag = format!("{addr}/test/deletable:v1");
    import_image(&mut cleanup, &tag, b"delete me\n");
    run(docker().args(["push", &tag]));
    let digest = manifest_digest(&addr, "test/deletable", "v1", accept);
    let url = format!("http://{addr}/v2/test/deletable/manifests/{digest}");
    assert_eq!(http_status("DELETE", &url, &[]), "202");
    assert_eq!(http_status("HEAD", &url, &[accept]), "404");

    // The guides' cron line, unchanged: the image answers to `registry` as registry:2's
    // does, and collects while it serves (what was just deleted is within the grace
    // period, so it is kept for now).
    let out = run(docker().args([
        "exec",
        &id,
        "registry",
        "garbage-collect",
        "/etc/docker/registry/config.yml",
    ]));
    assert!(
        out.contains("blobs marked") && out.contains("younger than the grace period"),
        "{out}"
    );
    let version = run(docker().args(["exec", &id, "registry", "--version"]));
    assert!(version.starts_with("berth "), "{version}");
    assert_eq!(
        http_status("GET", &format!("http://{addr}/v2/"), &[]),
        "200"
    );
}

/// The `Docker-Content-Digest` of a manifest.
fn manifest_digest(addr: &str, repo: &str, tag: &str, accept: &str) -> String {
    let headers = run(Command::new("curl").args([
        "-sf",
        "-I",
        "-H",
        accept,
        &format!("http://{addr}/v2/{repo}/manifests/{tag}"),
    ]));
    headers
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("docker-content-digest")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_else(|| panic!("no Docker-Content-Digest in:\n{headers}"))
}

/// An openssl-made CA and a server certificate for 127.0.0.1 signed by it, in `dir`:
/// `ca.crt`, `domain.crt`, `domain.key`.
fn make_certs(dir: &Path) {
    make_ca(dir, Key::Rsa2048, "Berth test CA");
    make_cert(
        dir,
        Key::Rsa2048,
        "domain",
        "127.0.0.1",
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    );
    // The container's user must be able to read the key through the bind mount.
    for f in ["domain.crt", "domain.key", "ca.crt"] {
        let _ = std::fs::set_permissions(
            dir.join(f),
            std::os::unix::fs::PermissionsExt::from_mode(0o644),
        );
    }
}

/// `curl --cacert` status of an HTTPS request (`-u` credentials optional).
fn https_status(ca: &Path, url: &str, creds: Option<&str>) -> String {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
        .arg(ca);
    if let Some(c) = creds {
        cmd.args(["-u", c]);
    }
    cmd.arg(url);
    cmd.output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

#[test]
fn tls_and_htpasswd_deployment_from_the_guides() {
    require_tool("htpasswd");
    let mut cleanup = Cleanup::default();
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = dir.path().join("certs");
    let auth = dir.path().join("auth");
    std::fs::create_dir_all(&certs).expect("certs dir");
    std::fs::create_dir_all(&auth).expect("auth dir");
    make_certs(&certs);
    // As the guides do it: htpasswd -Bbn user password > auth/htpasswd
    let entry = run(Command::new("htpasswd").args(["-Bbn", "testuser", "testpass"]));
    std::fs::write(auth.join("htpasswd"), entry).expect("htpasswd");
    let volume = unique("berth-test-tls");
    cleanup.volumes.push(volume.clone());

    let mut cmd = docker();
    cmd.args([
        "run",
        "-d",
        "-p",
        "127.0.0.1::5000",
        "--restart=always",
        "-v",
    ])
    .arg(format!("{volume}:/var/lib/registry"))
    .arg("-v")
    .arg(format!("{}:/certs", certs.display()))
    .arg("-v")
    .arg(format!("{}:/auth", auth.display()))
    .args([
        "-e",
        "REGISTRY_HTTP_TLS_CERTIFICATE=/certs/domain.crt",
        "-e",
        "REGISTRY_HTTP_TLS_KEY=/certs/domain.key",
        "-e",
        "REGISTRY_AUTH=htpasswd",
        "-e",
        "REGISTRY_AUTH_HTPASSWD_REALM=Registry Realm",
        "-e",
        "REGISTRY_AUTH_HTPASSWD_PATH=/auth/htpasswd",
    ])
    .arg(image());
    let id = run(&mut cmd).trim().to_string();
    cleanup.containers.push(id.clone());
    let port = run(docker().args(["port", &id, "5000/tcp"]));
    let addr = port
        .lines()
        .find(|l| l.starts_with("127.0.0.1:"))
        .unwrap_or_else(|| panic!("no 127.0.0.1 port published: {port}"))
        .to_string();
    let ca = certs.join("ca.crt");
    let base = format!("https://{addr}/v2/");
    // Wait for TLS and the auth challenge: 401 without credentials.
    wait_for_container(
        &id,
        &format!("the TLS container did not answer 401 on {base}"),
        || https_status(&ca, &base, None) == "401",
    );
    assert_eq!(https_status(&ca, &base, Some("testuser:testpass")), "200");
    assert_eq!(https_status(&ca, &base, Some("testuser:wrong")), "401");
    // Plain HTTP is not served on a TLS port.
    assert_ne!(
        http_status("GET", &format!("http://{addr}/v2/"), &[]),
        "200"
    );

    // docker login / push / pull with a config dir of its own.
    let docker_config = tempfile::tempdir().expect("docker config");
    let with_config = |args: &[&str]| {
        let mut c = docker();
        c.arg("--config").arg(docker_config.path()).args(args);
        c
    };
    let tag = format!("{addr}/guides/secure:v1");
    import_image(&mut cleanup, &tag, b"pushed over TLS with a password\n");
    let id_before = image_id(&tag);
    let refused = with_config(&["push", &tag]).output().expect("docker push");
    assert!(
        !refused.status.success(),
        "push without login must be refused"
    );
    let login = with_config(&["login", &addr, "-u", "testuser", "--password-stdin"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write as _;
            if let Some(mut stdin) = child.stdin.take() {
                stdin.write_all(b"testpass")?;
            }
            child.wait_with_output()
        })
        .expect("docker login");
    assert!(
        login.status.success(),
        "docker login failed: {}",
        String::from_utf8_lossy(&login.stderr)
    );
    run(&mut with_config(&["push", &tag]));
    run(docker().args(["rmi", &tag]));
    run(&mut with_config(&["pull", &tag]));
    assert_eq!(image_id(&tag), id_before, "pulled back what was pushed");
}
