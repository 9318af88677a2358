//! Black-box tests of authentication (htpasswd), TLS and mutual TLS, `http.headers` and
//! read-only mode: the real binary, driven by reqwest, curl, openssl, skopeo, podman and
//! docker.

mod common;

use common::layout::{plain_tar, Layout};
use common::pki::Pki;
use common::push::{image_manifest, sha256, Registry, OCI_CONFIG, OCI_LAYER, OCI_MANIFEST};
use common::tools::podman;
use common::{require_tool, run, Berth};
use serde_json::{json, Value};
use std::path::Path;
use std::process::{Command, Output};

fn exec(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn htpasswd_line(user: &str, password: &str) -> String {
    require_tool("htpasswd");
    run(Command::new("htpasswd").args(["-Bbn", user, password]))
        .trim()
        .to_string()
}

fn auth_config(htpasswd: &Path, extra: &str) -> String {
    format!(
        "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: DATA\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:0\n{extra}auth:\n  htpasswd:\n    realm: Berth Test Realm\n    path: {}\n",
        htpasswd.display()
    )
}

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

async fn body_json(r: reqwest::Response) -> Value {
    let text = r.text().await.expect("body");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Push a one-layer OCI image with plain HTTP requests; returns the manifest digest.
async fn push_image(url: &str, repo: &str, tag: &str, auth: Option<(&str, &str)>) -> String {
    let mut reg = Registry::new(url);
    if let Some((u, p)) = auth {
        reg = reg.with_auth(u, p);
    }
    let layer = format!("layer of {repo}:{tag}").into_bytes();
    let config = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
    reg.push_blob(repo, &config).await;
    reg.push_blob(repo, &layer).await;
    let bytes = serde_json::to_vec(&image_manifest(&config, &layer)).expect("json");
    let r = reg.put_manifest(repo, tag, OCI_MANIFEST, &bytes).await;
    assert_eq!(r.status().as_u16(), 201, "manifest put");
    sha256(&bytes).to_string()
}

/// No credentials, wrong ones and non-bcrypt entries get 401 with the Basic challenge and
/// Distribution's body; right ones get through; the file is re-read when it changes; an
/// invalid file answers 400 naming the file.
#[tokio::test]
async fn htpasswd_challenges_and_reloads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("htpasswd");
    require_tool("htpasswd");
    let sha = run(Command::new("htpasswd").args(["-sbn", "shauser", "secret"]));
    std::fs::write(
        &file,
        format!(
            "# users\n{}\n{}\n",
            htpasswd_line("alice", "s3cret"),
            sha.trim()
        ),
    )
    .expect("htpasswd");
    let b = Berth::start_with_config(&auth_config(&file, ""));
    let c = client();
    let v2 = format!("{}/v2/", b.url);

    let r = c.get(&v2).send().await.expect("get");
    assert_eq!(r.status().as_u16(), 401);
    assert_eq!(
        r.headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok()),
        Some("Basic realm=\"Berth Test Realm\"")
    );
    assert_eq!(
        body_json(r).await,
        json!({"errors":[{"code":"UNAUTHORIZED","message":"authentication required","detail":null}]})
    );

    for (user, password) in [
        ("alice", "wrong"),
        ("nobody", "s3cret"),
        ("shauser", "secret"),
    ] {
        let r = c
            .get(&v2)
            .basic_auth(user, Some(password))
            .send()
            .await
            .expect("get");
        assert_eq!(r.status().as_u16(), 401, "{user}:{password}");
        assert!(r.headers().contains_key("www-authenticate"));
    }

    let r = c
        .get(&v2)
        .basic_auth("alice", Some("s3cret"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.text().await.expect("body"), "{}");

    // Every endpoint is protected, with the access it asked for as detail.
    let r = c
        .get(format!("{}/v2/some/repo/tags/list", b.url))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status().as_u16(), 401);
    assert_eq!(
        body_json(r).await["errors"][0]["detail"],
        json!([{"Type":"repository","Class":"","Name":"some/repo","Action":"pull"}])
    );
    let r = c
        .post(format!("{}/v2/some/repo/blobs/uploads/", b.url))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status().as_u16(), 401);
    let digest = push_image(&b.url, "some/repo", "v1", Some(("alice", "s3cret"))).await;
    let r = c
        .get(format!("{}/v2/some/repo/manifests/{digest}", b.url))
        .basic_auth("alice", Some("s3cret"))
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await
        .expect("get");
    assert_eq!(r.status().as_u16(), 200);

    // A user added while the server runs can log in at once.
    let mut text = std::fs::read_to_string(&file).expect("read");
    text.push_str(&htpasswd_line("carol", "n3w"));
    text.push('\n');
    std::fs::write(&file, text).expect("rewrite");
    let r = c
        .get(&v2)
        .basic_auth("carol", Some("n3w"))
        .send()
        .await
        .expect("get");
    assert_eq!(
        r.status().as_u16(),
        200,
        "user added to the file while serving"
    );

    // A broken file: 400, not a silent open door. The answer names the key to fix but
    // not the file's content (a bad line can hold a password hash); the log has the rest.
    std::fs::write(&file, "this line has no colon\n").expect("break");
    let r = c
        .get(&v2)
        .basic_auth("carol", Some("n3w"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status().as_u16(), 400);
    let body = body_json(r).await;
    let message = body["errors"][0]["message"].as_str().unwrap_or_default();
    assert!(message.contains("auth.htpasswd.path"), "{body}");
    assert!(
        !message.contains("no colon"),
        "the file's content leaked: {body}"
    );
    let logged = b.wait_for_log(
        "error checking authorization",
        0,
        std::time::Duration::from_secs(10),
    );
    assert!(
        logged
            .iter()
            .any(|l| l.contains(&file.display().to_string()) && l.contains("line 1")),
        "{logged:?}"
    );
    // Without credentials it is still a challenge, as in Distribution.
    assert_eq!(c.get(&v2).send().await.expect("get").status().as_u16(), 401);
}

/// A missing htpasswd file is created with user `docker` and a random password, which
/// is logged once and works.
#[tokio::test]
async fn missing_htpasswd_is_provisioned() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("auth/htpasswd");
    let b = Berth::start_with_config(&auth_config(&file, ""));
    let text = std::fs::read_to_string(&file).expect("provisioned file");
    assert!(text.starts_with("docker:$2"), "{text}");
    let r = client()
        .get(format!("{}/v2/", b.url))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status().as_u16(), 401);
}

fn rootfs_tar(path: &Path, salt: &str) {
    std::fs::write(path, plain_tar(&[("salt", salt.as_bytes())])).expect("rootfs");
}

/// podman login/push/pull and skopeo with credentials against an htpasswd-protected
/// Berth; without credentials the clients are refused.
#[test]
fn podman_and_skopeo_with_htpasswd() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    let file = root.join("htpasswd");
    std::fs::write(&file, htpasswd_line("pusher", "pa55word") + "\n").expect("htpasswd");
    let b = Berth::start_with_config(&auth_config(&file, ""));
    let rootfs = root.join("rootfs.tar");
    rootfs_tar(&rootfs, &format!("auth test {}\n", b.host));
    let reference = format!("{}/auth/podman:v1", b.host);
    run(podman(root).args(["import"]).arg(&rootfs).arg(&reference));

    let refused = exec(podman(root).args(["push", "--tls-verify=false", &reference]));
    assert!(!refused.status.success(), "push without login must fail");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("authentication required")
            || String::from_utf8_lossy(&refused.stderr).contains("unauthorized"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let bad = exec(podman(root).args([
        "login",
        "--tls-verify=false",
        "-u",
        "pusher",
        "-p",
        "wrong",
        &b.host,
    ]));
    assert!(
        !bad.status.success(),
        "login with a wrong password must fail"
    );
    run(podman(root).args([
        "login",
        "--tls-verify=false",
        "-u",
        "pusher",
        "-p",
        "pa55word",
        &b.host,
    ]));
    run(podman(root).args(["push", "--tls-verify=false", &reference]));
    run(podman(root).args(["rmi", &reference]));
    run(podman(root).args(["pull", "--tls-verify=false", &reference]));

    require_tool("skopeo");
    let copy = |creds: Option<&str>| {
        let mut c = Command::new("skopeo");
        c.args(["copy", "--src-tls-verify=false", "--dest-tls-verify=false"]);
        if let Some(creds) = creds {
            c.args(["--src-creds", creds, "--dest-creds", creds]);
        }
        c.arg(format!("docker://{reference}"))
            .arg(format!("docker://{}/auth/skopeo:v1", b.host))
            .env("REGISTRY_AUTH_FILE", root.join("skopeo-auth.json"));
        std::fs::write(root.join("skopeo-auth.json"), br#"{"auths":{}}"#).expect("auth");
        exec(&mut c)
    };
    assert!(!copy(None).status.success(), "skopeo without credentials");
    let ok = copy(Some("pusher:pa55word"));
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let inspect = run(Command::new("skopeo").args([
        "inspect",
        "--tls-verify=false",
        "--creds",
        "pusher:pa55word",
        &format!("docker://{}/auth/skopeo:v1", b.host),
    ]));
    let v: Value = serde_json::from_str(&inspect).expect("inspect json");
    assert!(v["Digest"]
        .as_str()
        .unwrap_or_default()
        .starts_with("sha256:"));
}

/// `docker login` with a user from an htpasswd file, then a push/pull of a tiny image.
#[test]
fn docker_login_with_htpasswd() {
    require_tool("docker");
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = tmp.path().join("htpasswd");
    std::fs::write(&file, htpasswd_line("dockeruser", "d0cker") + "\n").expect("htpasswd");
    let b = Berth::start_with_config(&auth_config(&file, ""));
    let config_dir = tmp.path().join("docker-config");
    std::fs::create_dir_all(&config_dir).expect("config dir");
    let docker = || {
        let mut c = Command::new("docker");
        c.env("DOCKER_CONFIG", &config_dir);
        c
    };
    let login = |password: &str| {
        let mut child = docker()
            .args(["login", &b.host, "-u", "dockeruser", "--password-stdin"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("docker login");
        use std::io::Write as _;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(password.as_bytes())
            .expect("password");
        child.wait_with_output().expect("docker login output")
    };
    let bad = login("wrong");
    assert!(!bad.status.success(), "docker login with a wrong password");
    let ok = login("d0cker");
    assert!(
        ok.status.success(),
        "docker login: {}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let saved = std::fs::read_to_string(config_dir.join("config.json")).expect("config.json");
    assert!(saved.contains(&b.host), "{saved}");
}

// ---------------------------------------------------------------------------------------
// TLS
// ---------------------------------------------------------------------------------------

fn curl(args: &[&str]) -> Output {
    require_tool("curl");
    exec(
        Command::new("curl")
            .args([
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code} %{http_version}",
            ])
            .args(args),
    )
}

/// An OCI layout with one tiny image tagged `v1`, for skopeo to push.
fn oci_layout(dir: &Path) {
    let mut layout = Layout::create(dir);
    let layer = layout.put_blob(OCI_LAYER, &plain_tar(&[("tls", b"tls")]));
    let config = json!({"architecture":"amd64","os":"linux",
        "rootfs":{"type":"layers","diff_ids":[layer["digest"]]}});
    let config = layout.put_blob(OCI_CONFIG, &serde_json::to_vec(&config).expect("json"));
    let manifest = layout.put_manifest(config, vec![layer], false);
    layout.tag(&manifest, "v1");
}

/// HTTPS with a certificate from a private CA: curl and skopeo trust it through the CA,
/// plain HTTP is not served, HTTP/2 is offered unless disabled; the server starts with
/// AWS_CA_BUNDLE in its environment.
#[test]
fn tls_serves_https() {
    let pki = Pki::new();
    let b = Berth::start_with_config_env(
        &pki.tls_config(""),
        &[("AWS_CA_BUNDLE", &pki.path("ca.crt").display().to_string())],
        "https",
    );
    let ca = pki.path("ca.crt").display().to_string();
    let url = format!("{}/v2/", b.url);
    let out = curl(&["--cacert", &ca, &url]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200 2", "{out:?}");
    let out = curl(&["--cacert", &ca, "--http1.1", &url]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200 1.1", "{out:?}");
    assert!(
        !curl(&[&url]).status.success(),
        "an untrusted certificate must fail"
    );
    let plain = curl(&[&format!("http://{}/v2/", b.host)]);
    assert_ne!(
        String::from_utf8_lossy(&plain.stdout),
        "200 1.1",
        "plain HTTP served"
    );

    let layout = pki.path("layout");
    oci_layout(&layout);
    require_tool("skopeo");
    run(Command::new("skopeo")
        .args(["copy", "--dest-cert-dir"])
        .arg(pki.cert_dir(false))
        .arg(format!("oci:{}:v1", layout.display()))
        .arg(format!("docker://{}/tls/img:v1", b.host)));
    let back = pki.path("back");
    run(Command::new("skopeo")
        .args(["copy", "--src-cert-dir"])
        .arg(pki.cert_dir(false))
        .arg(format!("docker://{}/tls/img:v1", b.host))
        .arg(format!("oci:{}:v1", back.display())));
    assert!(back.join("index.json").is_file());

    drop(b);
    let b = Berth::start_with_config_env(
        &pki.tls_config("  http2:\n    disabled: true\n"),
        &[],
        "https",
    );
    let out = curl(&["--cacert", &ca, &format!("{}/v2/", b.url)]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "200 1.1",
        "http2.disabled"
    );
}

/// `clientcas`: a client without a certificate is refused during the handshake; one
/// with a certificate from the CA gets in (curl and skopeo).
#[test]
fn mutual_tls_requires_client_certificates() {
    let pki = Pki::new();
    let extra = format!("    clientcas:\n      - {}\n", pki.path("ca.crt").display());
    let b = Berth::start_with_config_env(&pki.tls_config(&extra), &[], "https");
    let ca = pki.path("ca.crt").display().to_string();
    let url = format!("{}/v2/", b.url);
    let refused = curl(&["--cacert", &ca, &url]);
    assert_ne!(
        String::from_utf8_lossy(&refused.stdout),
        "200 2",
        "no client certificate"
    );
    let cert = pki.path("client.crt").display().to_string();
    let key = pki.path("client.key").display().to_string();
    let ok = curl(&["--cacert", &ca, "--cert", &cert, "--key", &key, &url]);
    assert_eq!(String::from_utf8_lossy(&ok.stdout), "200 2", "{ok:?}");

    let layout = pki.path("layout");
    oci_layout(&layout);
    let no_cert = exec(
        Command::new("skopeo")
            .args(["copy", "--dest-cert-dir"])
            .arg(pki.cert_dir(false))
            .arg(format!("oci:{}:v1", layout.display()))
            .arg(format!("docker://{}/mtls/img:v1", b.host)),
    );
    assert!(
        !no_cert.status.success(),
        "skopeo without a client certificate"
    );
    run(Command::new("skopeo")
        .args(["copy", "--dest-cert-dir"])
        .arg(pki.cert_dir(true))
        .arg(format!("oci:{}:v1", layout.display()))
        .arg(format!("docker://{}/mtls/img:v1", b.host)));
}

/// `minimumtls: tls1.3` refuses TLS 1.2 clients; tls1.0/tls1.1 stop start-up with a
/// message naming the key.
#[test]
fn minimum_tls_version_is_enforced() {
    let pki = Pki::new();
    let b = Berth::start_with_config_env(&pki.tls_config("    minimumtls: tls1.3\n"), &[], "https");
    let ca = pki.path("ca.crt").display().to_string();
    let url = format!("{}/v2/", b.url);
    let old = curl(&["--cacert", &ca, "--tls-max", "1.2", &url]);
    assert!(
        !old.status.success(),
        "TLS 1.2 accepted under minimumtls tls1.3"
    );
    let new = curl(&["--cacert", &ca, "--tlsv1.3", &url]);
    assert_eq!(String::from_utf8_lossy(&new.stdout), "200 2", "{new:?}");

    let err = Berth::fails_to_start(&pki.tls_config("    minimumtls: tls1.0\n"));
    assert!(err.contains("http.tls.minimumtls"), "{err}");
    let err = Berth::fails_to_start(&format!(
        "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: DATA\nhttp:\n  addr: 127.0.0.1:0\n  tls:\n    certificate: {}\n    key: {}\n",
        pki.path("missing.crt").display(),
        pki.path("server.key").display()
    ));
    assert!(err.contains("missing.crt"), "{err}");
}

// ---------------------------------------------------------------------------------------
// http.headers and read-only mode
// ---------------------------------------------------------------------------------------

/// Configured headers appear on successful and error responses, and on the 401 of an
/// authenticated registry.
#[tokio::test]
async fn configured_headers_on_every_api_response() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("htpasswd");
    std::fs::write(&file, htpasswd_line("u", "p") + "\n").expect("htpasswd");
    let headers =
        "  headers:\n    X-Content-Type-Options: [nosniff]\n    X-Berth-Test: [one, two]\n";
    let b = Berth::start_with_config(&auth_config(&file, headers));
    let c = client();
    let check = |r: &reqwest::Response| {
        assert_eq!(
            r.headers()
                .get("x-content-type-options")
                .and_then(|v| v.to_str().ok()),
            Some("nosniff")
        );
        let two: Vec<&str> = r
            .headers()
            .get_all("x-berth-test")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        assert_eq!(two, ["one", "two"]);
    };
    let r = c.get(format!("{}/v2/", b.url)).send().await.expect("get");
    assert_eq!(r.status().as_u16(), 401);
    check(&r);
    let r = c
        .get(format!("{}/v2/", b.url))
        .basic_auth("u", Some("p"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status().as_u16(), 200);
    check(&r);
    let r = c
        .get(format!("{}/v2/nothing/manifests/latest", b.url))
        .basic_auth("u", Some("p"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status().as_u16(), 404);
    check(&r);
    drop(b);

    // With auth.berth: the token service and the management API carry them too.
    let b = Berth::start_with_config(&format!(
        "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: DATA\nhttp:\n  addr: 127.0.0.1:0\n{headers}auth:\n  berth:\n    adminpassword: Harbor12345\n"
    ));
    let r = c
        .get(format!("{}/service/token?service=berth-registry", b.url))
        .send()
        .await
        .expect("token");
    assert_eq!(r.status().as_u16(), 200);
    check(&r);
    let r = c
        .get(format!("{}/api/v2.0/projects", b.url))
        .basic_auth("admin", Some("Harbor12345"))
        .send()
        .await
        .expect("api");
    assert_eq!(r.status().as_u16(), 200);
    check(&r);
    let r = c
        .get(format!("{}/api/v2.0/users/current", b.url))
        .send()
        .await
        .expect("api");
    assert_eq!(r.status().as_u16(), 401);
    check(&r);
}

/// Read-only mode: what was pushed before stays readable; pushes and deletes answer
/// 405 with `Allow: GET, HEAD` and an UNSUPPORTED error saying why.
#[tokio::test]
async fn read_only_mode_refuses_writes() {
    let root = tempfile::tempdir().expect("tempdir");
    let config = |readonly: bool| {
        format!(
            "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n  maintenance:\n    readonly:\n      enabled: {readonly}\nhttp:\n  addr: 127.0.0.1:0\n",
            root.path().display()
        )
    };
    let b = Berth::start_with_config(&config(false));
    let digest = push_image(&b.url, "ro/img", "v1", None).await;
    drop(b);

    let b = Berth::start_with_config(&config(true));
    let c = client();
    let r = c
        .get(format!("{}/v2/ro/img/manifests/v1", b.url))
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await
        .expect("get");
    assert_eq!(r.status().as_u16(), 200);
    let r = c
        .get(format!("{}/v2/ro/img/tags/list", b.url))
        .send()
        .await
        .expect("tags");
    assert_eq!(r.status().as_u16(), 200);

    let writes = [
        c.post(format!("{}/v2/ro/img/blobs/uploads/", b.url)),
        c.put(format!("{}/v2/ro/img/manifests/v2", b.url))
            .header("content-type", "application/vnd.oci.image.manifest.v1+json")
            .body("{}"),
        c.delete(format!("{}/v2/ro/img/manifests/{digest}", b.url)),
        c.delete(format!("{}/v2/ro/img/blobs/{}", b.url, sha256(b"x"))),
        c.patch(format!("{}/v2/ro/img/blobs/uploads/some-id", b.url)),
    ];
    for w in writes {
        let r = w.send().await.expect("write");
        assert_eq!(r.status().as_u16(), 405);
        assert_eq!(
            r.headers().get("allow").and_then(|v| v.to_str().ok()),
            Some("GET, HEAD")
        );
        let body = body_json(r).await;
        assert_eq!(body["errors"][0]["code"], "UNSUPPORTED");
        assert!(
            body["errors"][0]["message"]
                .as_str()
                .unwrap_or_default()
                .contains("read-only"),
            "{body}"
        );
    }
    let r = c
        .get(format!("{}/v2/ro/img/manifests/{digest}", b.url))
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await
        .expect("get");
    assert_eq!(
        r.status().as_u16(),
        200,
        "the refused delete deleted nothing"
    );
}

// ---------------------------------------------------------------------------------------
// http.draintimeout
// ---------------------------------------------------------------------------------------

/// With `draintimeout: 1s`, SIGTERM stops the server even though an upload is stuck in
/// flight: the drain is bounded.
#[test]
fn drain_timeout_bounds_shutdown() {
    use std::io::{BufRead as _, BufReader, Write as _};
    let b = Berth::start_with_config(
        "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: DATA\nhttp:\n  addr: 127.0.0.1:0\n  draintimeout: 1s\n",
    );
    let mut conn = std::net::TcpStream::connect(&b.host).expect("connect");
    conn.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .expect("timeout");
    let digest = sha256(&[0u8; 1000]);
    write!(
        conn,
        "POST /v2/drain/blobs/uploads/?digest={digest} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/octet-stream\r\nContent-Length: 1000\r\nExpect: 100-continue\r\n\r\n",
        b.host
    )
    .expect("request");
    // The server says 100 Continue when the handler starts reading the body: from then
    // on the request is in flight.
    let mut reader = BufReader::new(conn.try_clone().expect("clone"));
    let mut status = String::new();
    reader.read_line(&mut status).expect("status line");
    assert!(status.starts_with("HTTP/1.1 100"), "{status}");
    conn.write_all(&[0u8; 10]).expect("part of the body");

    let started = std::time::Instant::now();
    run(Command::new("kill").args(["-TERM", &b.pid().to_string()]));
    let stat = format!("/proc/{}/stat", b.pid());
    loop {
        let state = std::fs::read_to_string(&stat).unwrap_or_default();
        // Exited (a zombie until the harness reaps it) or gone.
        if state.is_empty() || state.split_whitespace().nth(2) == Some("Z") {
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(15),
            "berth still running 15 s after SIGTERM with draintimeout 1s"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(900),
        "berth did not wait for the in-flight request"
    );
}

/// Send `request` on `s` and read one response (headers and a `Content-Length` body);
/// `None` when the server closed the connection instead.
async fn exchange(s: &mut tokio::net::TcpStream, request: &[u8]) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(request).await.ok()?;
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let text = String::from_utf8_lossy(&got).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                })
                .unwrap_or(0);
            if got.len() >= end + 4 + length {
                return Some(text);
            }
        }
        let n = tokio::time::timeout(std::time::Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("the server answered within 10 s")
            .ok()?;
        if n == 0 {
            return (!got.is_empty()).then(|| String::from_utf8_lossy(&got).to_string());
        }
        got.extend_from_slice(&buf[..n]);
    }
}

/// A client that sends a body without credentials (as Go clients do before they retry
/// with them) gets its 401 on a connection it can use again, or one the server says it
/// closes: never one closed under its next request.
#[tokio::test]
async fn a_refused_body_leaves_the_connection_usable_or_says_close() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("htpasswd");
    std::fs::write(&file, htpasswd_line("alice", "wonderland")).expect("htpasswd");
    let b = Berth::start_with_config(&auth_config(&file, ""));
    let creds = "YWxpY2U6d29uZGVybGFuZA=="; // alice:wonderland
    let host = &b.host;
    // A small body is drained: the same connection serves the retry.
    let mut s = tokio::net::TcpStream::connect(host).await.expect("connect");
    let body = vec![b'x'; 10_000];
    let mut put = format!(
        "PUT /v2/team/app/manifests/v1 HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    put.extend_from_slice(&body);
    let first = exchange(&mut s, &put).await.expect("a 401");
    assert!(first.starts_with("HTTP/1.1 401"), "{first}");
    assert!(
        !first.to_ascii_lowercase().contains("connection: close"),
        "{first}"
    );
    let retry =
        format!("GET /v2/ HTTP/1.1\r\nHost: {host}\r\nAuthorization: Basic {creds}\r\n\r\n");
    let second = exchange(&mut s, retry.as_bytes())
        .await
        .expect("the connection still serves requests");
    assert!(second.starts_with("HTTP/1.1 200"), "{second}");

    // A body too large to drain: the 401 says the connection closes.
    let mut s = tokio::net::TcpStream::connect(host).await.expect("connect");
    let head = format!(
        "PATCH /v2/team/app/blobs/uploads/x HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\n\r\n",
        8 << 20
    );
    let mut request = head.into_bytes();
    request.extend(vec![b'y'; 1 << 20]);
    let refused = exchange(&mut s, &request).await.expect("a 401");
    assert!(refused.starts_with("HTTP/1.1 401"), "{refused}");
    assert!(
        refused.to_ascii_lowercase().contains("connection: close"),
        "{refused}"
    );

    // A client that waits for 100 Continue is not asked for a body that would be
    // refused: the 401 comes first, and the connection closes.
    let mut s = tokio::net::TcpStream::connect(host).await.expect("connect");
    let head = format!(
        "PUT /v2/team/app/blobs/uploads/x?digest=sha256:00 HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        64 << 20
    );
    let answer = exchange(&mut s, head.as_bytes()).await.expect("an answer");
    assert!(
        answer.starts_with("HTTP/1.1 401"),
        "no 100 Continue first: {answer}"
    );
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
}
