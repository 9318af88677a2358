//! Start-up against configuration files, as an operator meets it: a key Berth does not
//! know is reported by its path and the server runs; a bad value stops start-up with one
//! line naming the key and the reason (no backtrace, whatever `RUST_BACKTRACE` says).
//!
//! And the Distribution keys around logging and the listener: `log.fields`,
//! `http.net: unix`, `http.tls.ciphersuites`, `http.tls.letsencrypt` and Berth's
//! `limits.headerreadtimeout`, against the real binary with curl and openssl.

mod common;

use common::pki::Pki;
use common::push::sha256;
use common::{require_tool, run, spawn_berth_until, Berth};
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn bad_value_stops_startup_with_one_line_naming_the_key() {
    let cases = [
        (
            "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: DATA\n  delete:\n    enabled: maybe\nhttp:\n  addr: 127.0.0.1:0\n",
            "storage.delete.enabled",
        ),
        (
            "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: DATA\nhttp:\n  addr: 127.0.0.1:0\nlimits:\n  manifestsize: lots\n",
            "limits.manifestsize",
        ),
        (
            "version: 0.1\nstorage:\n  inmemory: {}\nhttp:\n  addr: 127.0.0.1:0\n",
            "storage.inmemory",
        ),
        // Token authentication whose trusted certificates cannot be read: never an open
        // registry instead.
        (
            "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: DATA\nhttp:\n  addr: 127.0.0.1:0\nauth:\n  token:\n    realm: https://auth.example/token\n    service: registry\n    issuer: auth\n    rootcertbundle: /nonexistent/ca.pem\n",
            "auth.token.rootcertbundle",
        ),
        (
            "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: DATA\nhttp:\n  addr: 127.0.0.1:0\nauth:\n  htpassword:\n    realm: r\n    path: /etc/registry/htpasswd\n",
            "auth.htpassword",
        ),
    ];
    for (config, key) in cases {
        let stderr = Berth::fails_to_start(config);
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "one line expected, got:\n{stderr}");
        assert!(lines[0].starts_with("error: "), "{stderr}");
        assert!(lines[0].contains(key), "{key} not named:\n{stderr}");
        assert!(!stderr.contains("backtrace"), "{stderr}");
    }
}

#[tokio::test]
async fn unknown_key_is_reported_by_path_and_the_server_runs() {
    let berth = Berth::start_with_config(
        "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: DATA\nhttp:\n  addr: 127.0.0.1:0\n  notakey: 1\nfrobnicate:\n  level: 3\n",
    );
    let nested = berth.wait_for_log("http.notakey", 0, Duration::from_secs(10));
    assert!(nested[0].contains("WARN"), "{nested:?}");
    berth.wait_for_log("frobnicate", 0, Duration::from_secs(10));
    let status = reqwest::get(format!("{}/v2/", berth.url))
        .await
        .expect("GET /v2/")
        .status();
    assert_eq!(status, 200);
}

// ---------------------------------------------------------------------------------------
// log.fields
// ---------------------------------------------------------------------------------------

fn base(extra: &str) -> String {
    format!(
        "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: DATA\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:0\n{extra}"
    )
}

#[tokio::test]
async fn log_fields_are_on_every_json_line() {
    let b = Berth::start_with_config(&base(
        "log:\n  level: info\n  formatter: json\n  fields:\n    service: registry\n    environment: staging\n    level: shadowed\n",
    ));
    let r = reqwest::get(format!("{}/v2/", b.url)).await.expect("get");
    assert_eq!(r.status(), 200);
    b.wait_for_log("berth::access", 0, Duration::from_secs(10));
    let lines: Vec<Value> = b
        .log_lines()
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let startup = lines
        .iter()
        .find(|v| {
            v["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("listening on"))
        })
        .expect("start-up line");
    let access = lines
        .iter()
        .find(|v| v["target"] == "berth::access")
        .expect("access line");
    for line in [startup, access] {
        assert_eq!(line["service"], "registry", "{line}");
        assert_eq!(line["environment"], "staging", "{line}");
        assert_eq!(
            line["level"], "INFO",
            "the formatter's own key is kept: {line}"
        );
        assert_eq!(line["fields.level"], "shadowed", "{line}");
    }
    assert_eq!(access["fields"]["path"], "/v2/");
}

#[tokio::test]
async fn log_fields_end_text_lines() {
    let b = Berth::start_with_config(&base(
        "log:\n  level: info\n  fields:\n    service: registry\n    note: two words\n",
    ));
    reqwest::get(format!("{}/v2/", b.url)).await.expect("get");
    let access = b.wait_for_log("berth::access", 0, Duration::from_secs(10));
    assert!(
        access[0].ends_with(" service=registry note=\"two words\""),
        "{}",
        access[0]
    );
    let startup = b.wait_for_log("listening on", 0, Duration::from_secs(1));
    assert!(startup[0].ends_with(" service=registry note=\"two words\""));
}

// ---------------------------------------------------------------------------------------
// http.net: unix
// ---------------------------------------------------------------------------------------

fn unix_config(socket: &Path, extra: &str) -> String {
    format!(
        "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: DATA\nhttp:\n  net: unix\n  addr: {}\n{extra}",
        socket.display()
    )
}

/// `curl --unix-socket SOCKET ARGS...`: the status code (the body goes where ARGS say).
fn curl_unix(socket: &Path, args: &[&str]) -> String {
    require_tool("curl");
    run(Command::new("curl")
        .args(["-sS", "-w", "%{http_code}", "--unix-socket"])
        .arg(socket)
        .args(args))
}

/// Push a blob through the socket (POST, then PUT with the digest) and read it back.
fn push_and_pull_blob(socket: &Path, scheme_args: &[&str], base: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let blob = b"a blob through a unix socket".repeat(100);
    let file = dir.path().join("blob");
    std::fs::write(&file, &blob).expect("write");
    let headers = dir.path().join("headers");
    let mut args: Vec<String> = scheme_args.iter().map(|s| s.to_string()).collect();
    args.extend([
        "-o".into(),
        "/dev/null".into(),
        "-D".into(),
        headers.display().to_string(),
        "-X".into(),
        "POST".into(),
        format!("{base}/v2/sock/blobs/uploads/"),
    ]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_eq!(curl_unix(socket, &refs), "202");
    let text = std::fs::read_to_string(&headers).expect("headers");
    let location = text
        .lines()
        .find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.eq_ignore_ascii_case("location"))
                .map(|(_, v)| v.trim().to_string())
        })
        .expect("Location header");
    assert!(
        location.starts_with("/v2/sock/blobs/uploads/"),
        "{location}"
    );
    let digest = sha256(&blob);
    let mut args: Vec<String> = scheme_args.iter().map(|s| s.to_string()).collect();
    args.extend([
        "-o".into(),
        "/dev/null".into(),
        "-X".into(),
        "PUT".into(),
        "-H".into(),
        "Content-Type: application/octet-stream".into(),
        "--data-binary".into(),
        format!("@{}", file.display()),
        format!("{base}{location}?digest={digest}"),
    ]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_eq!(curl_unix(socket, &refs), "201");
    let pulled = dir.path().join("pulled");
    let mut args: Vec<String> = scheme_args.iter().map(|s| s.to_string()).collect();
    args.extend([
        "-o".into(),
        pulled.display().to_string(),
        format!("{base}/v2/sock/blobs/{digest}"),
    ]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_eq!(curl_unix(socket, &refs), "200");
    assert_eq!(std::fs::read(&pulled).expect("pulled"), blob);
}

/// Wait until process `pid` has exited (a zombie until reaped, or gone).
fn wait_exit(pid: u32) {
    let stat = format!("/proc/{pid}/stat");
    let started = Instant::now();
    loop {
        let state = std::fs::read_to_string(&stat).unwrap_or_default();
        if state.is_empty() || state.split_whitespace().nth(2) == Some("Z") {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "berth still running 15 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn unix_socket_serves_the_api() {
    let sockets = tempfile::tempdir().expect("tempdir");
    let socket = sockets.path().join("berth.sock");
    // A socket file left by a process that is gone: replaced.
    drop(std::os::unix::net::UnixListener::bind(&socket).expect("stale socket"));
    assert!(socket.exists());
    let data = tempfile::tempdir().expect("tempdir");
    let config = data.path().join("config.yml");
    std::fs::write(
        &config,
        unix_config(&socket, "  debug:\n    addr: 127.0.0.1:0\n")
            .replace("DATA", &data.path().join("data").display().to_string()),
    )
    .expect("config");
    let (mut child, found) = spawn_berth_until(
        &["serve".as_ref(), config.as_os_str()],
        &["listening on http+unix://", "debug server listening "],
    );
    assert_eq!(found[0], socket.display().to_string());
    assert_eq!(
        curl_unix(&socket, &["-o", "/dev/null", "http://localhost/v2/"]),
        "200"
    );
    push_and_pull_blob(&socket, &[], "http://localhost");
    // The debug server still listens on TCP.
    let health = run(Command::new("curl").args([
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("http://{}/debug/health", found[1]),
    ]));
    assert_eq!(health, "200");

    // While it serves, a second server on the same socket refuses to start.
    let err = Berth::fails_to_start(&unix_config(&socket, ""));
    assert!(
        err.contains("another server is accepting connections"),
        "{err}"
    );

    // SIGTERM: graceful stop, the socket file is removed.
    run(Command::new("kill").args(["-TERM", &child.id().to_string()]));
    wait_exit(child.id());
    let _ = child.wait();
    assert!(!socket.exists(), "socket file left behind after shutdown");

    // A regular file at the path is never deleted.
    std::fs::write(&socket, "not a socket").expect("file");
    let err = Berth::fails_to_start(&unix_config(&socket, ""));
    assert!(err.contains("exists and is not a socket"), "{err}");
    assert_eq!(
        std::fs::read_to_string(&socket).expect("kept"),
        "not a socket"
    );
}

#[test]
fn unix_socket_with_tls() {
    let pki = Pki::new();
    let sockets = tempfile::tempdir().expect("tempdir");
    let socket = sockets.path().join("tls.sock");
    let b = Berth::start_with_config_env(
        &unix_config(
            &socket,
            &format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                pki.path("server.crt").display(),
                pki.path("server.key").display()
            ),
        ),
        &[],
        "https+unix",
    );
    assert_eq!(b.host, socket.display().to_string());
    let ca = pki.path("ca.crt").display().to_string();
    assert_eq!(
        curl_unix(
            &socket,
            &["--cacert", &ca, "-o", "/dev/null", "https://127.0.0.1/v2/"]
        ),
        "200"
    );
    push_and_pull_blob(&socket, &["--cacert", &ca], "https://127.0.0.1");
    // Plain HTTP on the TLS socket is refused.
    let out = Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--unix-socket",
        ])
        .arg(&socket)
        .arg("http://127.0.0.1/v2/")
        .output()
        .expect("curl");
    assert_ne!(String::from_utf8_lossy(&out.stdout), "200");
}

// ---------------------------------------------------------------------------------------
// http.tls.ciphersuites and http.tls.letsencrypt
// ---------------------------------------------------------------------------------------

/// `openssl s_client` to `host` with `args`: whether the handshake succeeded, and the
/// output.
fn s_client(host: &str, args: &[&str]) -> (bool, String) {
    require_tool("openssl");
    let out = Command::new("openssl")
        .args(["s_client", "-connect", host])
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn cipher_suites_limit_tls12() {
    let pki = Pki::new();
    // The test certificate is ECDSA: the ECDSA suites are the ones a client can use.
    let b = Berth::start_with_config_env(
        &pki.tls_config(
            "    ciphersuites:\n      - TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256\n      - TLS_AES_128_GCM_SHA256\n",
        ),
        &[],
        "https",
    );
    let listed = s_client(
        &b.host,
        &["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"],
    );
    assert!(listed.0, "a listed suite is refused: {}", listed.1);
    assert!(
        listed.1.contains("ECDHE-ECDSA-AES128-GCM-SHA256"),
        "{}",
        listed.1
    );
    for unlisted in [
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
    ] {
        let (ok, text) = s_client(&b.host, &["-tls1_2", "-cipher", unlisted]);
        assert!(!ok, "{unlisted} accepted though not listed: {text}");
    }
    // TLS 1.3 suites stay on, listed or not (as in Go).
    for suite in ["TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"] {
        let (ok, text) = s_client(&b.host, &["-tls1_3", "-ciphersuites", suite]);
        assert!(ok, "TLS 1.3 {suite} refused: {text}");
    }

    let err = Berth::fails_to_start(
        &pki.tls_config("    ciphersuites: [TLS_RSA_WITH_AES_128_CBC_SHA]\n"),
    );
    assert!(
        err.contains("TLS_RSA_WITH_AES_128_CBC_SHA is not supported")
            && err.contains("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"),
        "{err}"
    );
    let err = Berth::fails_to_start(&pki.tls_config("    ciphersuites: [TLS_NO_SUCH_SUITE]\n"));
    assert!(
        err.contains("http.tls.ciphersuites") && err.contains("TLS_NO_SUCH_SUITE"),
        "{err}"
    );
}

#[test]
fn letsencrypt_is_refused_without_a_certificate() {
    let err = Berth::fails_to_start(&base(
        "  tls:\n    letsencrypt:\n      cachefile: /tmp/le.cache\n      email: ops@example.com\n",
    ));
    assert!(
        err.contains("http.tls.letsencrypt")
            && err.contains("certbot")
            && err.contains("http.tls.certificate"),
        "{err}"
    );
    // With a certificate too: served over HTTPS with that certificate, and a warning.
    let pki = Pki::new();
    let b = Berth::start_with_config_env(
        &pki.tls_config("    letsencrypt:\n      cachefile: /tmp/le.cache\n"),
        &[],
        "https",
    );
    let warned = b.wait_for_log("http.tls.letsencrypt is ignored", 0, Duration::from_secs(5));
    assert!(warned[0].contains("WARN"), "{}", warned[0]);
    let ca = pki.path("ca.crt").display().to_string();
    let code = run(Command::new("curl").args([
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--cacert",
        &ca,
        &format!("{}/v2/", b.url),
    ]));
    assert_eq!(code, "200");
}

// ---------------------------------------------------------------------------------------
// limits.headerreadtimeout
// ---------------------------------------------------------------------------------------

/// A client that sends its request headers slowly (slowloris) is cut off once
/// `limits.headerreadtimeout` passes; a prompt one is served.
#[test]
fn slow_request_headers_are_cut_off() {
    use std::io::{Read as _, Write as _};
    let b = Berth::start_with_config(&base("limits:\n  headerreadtimeout: 1s\n"));
    let mut prompt = std::net::TcpStream::connect(&b.host).expect("connect");
    write!(
        prompt,
        "GET /v2/ HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        b.host
    )
    .expect("request");
    let mut answer = String::new();
    prompt.read_to_string(&mut answer).expect("read");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    let mut slow = std::net::TcpStream::connect(&b.host).expect("connect");
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let started = Instant::now();
    slow.write_all(b"GET /v2/ HTTP/1.1\r\n").expect("start");
    // One header line every 300 ms: never finishes within the limit.
    let mut closed_after = None;
    for i in 0..30 {
        std::thread::sleep(Duration::from_millis(300));
        if slow
            .write_all(format!("X-Slow-{i}: a\r\n").as_bytes())
            .is_err()
        {
            closed_after = Some(started.elapsed());
            break;
        }
        let mut buf = [0u8; 512];
        slow.set_nonblocking(true).expect("nonblocking");
        let read = slow.read(&mut buf);
        slow.set_nonblocking(false).expect("blocking");
        match read {
            Ok(0) => {
                closed_after = Some(started.elapsed());
                break;
            }
            Ok(n) => {
                // hyper may answer 408 before closing.
                let text = String::from_utf8_lossy(&buf[..n]).to_string();
                assert!(text.starts_with("HTTP/1.1 408"), "{text}");
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => {
                closed_after = Some(started.elapsed());
                break;
            }
        }
    }
    let closed_after = closed_after.expect("the slow connection was never closed");
    assert!(
        closed_after >= Duration::from_millis(900) && closed_after < Duration::from_secs(4),
        "closed after {closed_after:?} with a 1s limit"
    );
    let err = Berth::fails_to_start(&base("limits:\n  headerreadtimeout: soon\n"));
    assert!(err.contains("limits.headerreadtimeout"), "{err}");
}

/// A rolling restart on one socket path: the new instance binds while the old one
/// drains; the old one's shutdown must not remove the new instance's socket.
#[test]
fn shutdown_leaves_a_newer_socket_alone() {
    let sockets = tempfile::tempdir().expect("tempdir");
    let socket = sockets.path().join("berth.sock");
    let data = tempfile::tempdir().expect("tempdir");
    let config = data.path().join("config.yml");
    std::fs::write(
        &config,
        unix_config(&socket, "").replace("DATA", &data.path().join("data").display().to_string()),
    )
    .expect("config");
    let (mut child, _) = spawn_berth_until(
        &["serve".as_ref(), config.as_os_str()],
        &["listening on http+unix://"],
    );
    // The newer instance: its own socket file at the same path.
    std::fs::remove_file(&socket).expect("unlink the old socket");
    let newer = std::os::unix::net::UnixListener::bind(&socket).expect("newer socket");
    run(Command::new("kill").args(["-TERM", &child.id().to_string()]));
    wait_exit(child.id());
    let _ = child.wait();
    assert!(socket.exists(), "the old instance removed the newer socket");
    std::os::unix::net::UnixStream::connect(&socket).expect("the newer socket still answers");
    drop(newer);
}

/// A client that connects and never sends a byte (plain or after the TLS handshake, where
/// hyper's own header timer has not started) is cut off after the header-read limit.
#[test]
fn silent_connections_are_cut_off() {
    use std::io::Read as _;
    let b = Berth::start_with_config(&base("limits:\n  headerreadtimeout: 1s\n"));
    let mut silent = std::net::TcpStream::connect(&b.host).expect("connect");
    silent
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let n = silent.read(&mut buf).unwrap_or(0);
    let elapsed = started.elapsed();
    assert_eq!(n, 0, "the server answered a silent connection");
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(4),
        "closed after {elapsed:?} with a 1s limit"
    );

    // Part of the HTTP/2 preface, then silence: hyper would wait for the rest for ever.
    use std::io::Write as _;
    let mut partial = std::net::TcpStream::connect(&b.host).expect("connect");
    partial
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let started = Instant::now();
    partial.write_all(b"PRI * HT").expect("write");
    let n = partial.read(&mut buf).unwrap_or(0);
    let elapsed = started.elapsed();
    assert_eq!(n, 0, "the server answered half a preface");
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(4),
        "half a preface closed after {elapsed:?} with a 1s limit"
    );
}

// ---------------------------------------------------------------------------------------
// Malformed sections, missing storage driver, literal strings, start-up messages
// ---------------------------------------------------------------------------------------

/// One `error:` line naming `key`, and the server never listened.
fn one_error_line_naming(stderr: &str, key: &str) {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line expected, got:\n{stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    assert!(
        lines[0].contains(&format!("configuration key {key}:")),
        "{key} not named:\n{stderr}"
    );
    assert!(!stderr.contains("listening on"), "{stderr}");
}

/// A security-relevant section that is not a map (or whose driver cannot be read) must
/// never give an open, plain-HTTP or ordinary registry: Distribution refuses such files.
#[test]
fn malformed_sections_stop_startup() {
    let fs = "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: DATA\n";
    let cases = [
        (format!("{fs}http:\n  addr: 127.0.0.1:0\nauth: [htpasswd]\n"), "auth"),
        (format!("{fs}http:\n  addr: 127.0.0.1:0\nauth: true\n"), "auth"),
        (
            format!("{fs}http:\n  addr: 127.0.0.1:0\nauth:\n  - htpasswd:\n      realm: r\n      path: DATA/htpasswd\n"),
            "auth",
        ),
        (
            format!("{fs}http:\n  addr: 127.0.0.1:0\n  tls:\n  - certificate: /etc/c.pem\n    key: /etc/k.pem\n"),
            "http.tls",
        ),
        (
            format!("{fs}http:\n  addr: 127.0.0.1:0\nproxy:\n  - remoteurl: https://registry-1.docker.io\n"),
            "proxy",
        ),
        (
            format!("{fs}http:\n  addr: 127.0.0.1:0\nnotifications:\n  - name: a\n    url: http://127.0.0.1:9/\n"),
            "notifications",
        ),
        (
            "version: 0.1\nstorage:\n  - filesystem:\n      rootdirectory: DATA\nhttp:\n  addr: 127.0.0.1:0\n".to_string(),
            "storage",
        ),
    ];
    for (config, key) in &cases {
        one_error_line_naming(&Berth::fails_to_start(config), key);
    }
    // The same through REGISTRY_* variables.
    for (var, value, key) in [
        ("REGISTRY_AUTH", "true", "auth"),
        ("REGISTRY_HTTP_TLS", "[/etc/c.pem, /etc/k.pem]", "http.tls"),
    ] {
        let stderr = Berth::fails_to_start_in(
            &format!("{fs}http:\n  addr: 127.0.0.1:0\n"),
            &[(var, value)],
            None,
        );
        one_error_line_naming(&stderr, key);
    }
}

/// A file without a storage driver would put the data in the working directory (`/` in
/// the container image, outside its volume): refused, as Distribution refuses it.
#[test]
fn a_file_without_a_storage_driver_stops_startup() {
    let cwd = tempfile::tempdir().expect("tempdir");
    let stderr = Berth::fails_to_start_in(
        "version: 0.1\nstorage:\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:0\n",
        &[],
        Some(cwd.path()),
    );
    one_error_line_naming(&stderr, "storage");
    assert!(stderr.contains("rootdirectory"), "{stderr}");
    assert_eq!(
        std::fs::read_dir(cwd.path()).expect("cwd").count(),
        0,
        "nothing may be written to the working directory"
    );
}

/// Strings reach the wire as written, from the file and from `REGISTRY_*` variables:
/// YAML would read them as numbers or booleans (`1.10` -> 1.1, `0x1F` -> 31).
#[tokio::test]
async fn strings_reach_the_wire_as_written() {
    let b = Berth::start_with_config_env(
        &base("  headers:\n    X-Version: [1.10]\n    X-Hex: [0x1F]\n"),
        &[("REGISTRY_HTTP_HEADERS_X-FLAG", "True")],
        "http",
    );
    let r = reqwest::get(format!("{}/v2/", b.url)).await.expect("get");
    assert_eq!(r.status(), 200);
    let h = r.headers();
    assert_eq!(h["x-version"], "1.10");
    assert_eq!(h["x-hex"], "0x1F");
    assert_eq!(h["x-flag"], "True");
}

#[tokio::test]
async fn unknown_key_names_the_nearest_known_key() {
    let b = Berth::start_with_config(&base("htp:\n  addr: :5001\n"));
    let warned = b.wait_for_log("unknown configuration key htp", 0, Duration::from_secs(10));
    assert!(
        warned[0].contains("unknown configuration key htp (ignored); did you mean http?"),
        "{}",
        warned[0]
    );
    let status = reqwest::get(format!("{}/v2/", b.url))
        .await
        .expect("GET /v2/")
        .status();
    assert_eq!(status, 200);
}

/// Start-up errors give their cause once, and the port-in-use hint only when the port is
/// in use.
#[test]
fn startup_errors_give_one_cause_and_a_fitting_hint() {
    let fs = "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: DATA\n";
    let stderr = Berth::fails_to_start(&format!("{fs}http:\n  addr: 127.0.0.1:99999\n"));
    assert_eq!(stderr.matches("invalid port value").count(), 1, "{stderr}");
    assert!(!stderr.contains("already"), "{stderr}");

    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let stderr = Berth::fails_to_start(&format!("{fs}http:\n  addr: {addr}\n"));
    assert_eq!(stderr.matches("in use").count(), 1, "{stderr}");
    assert!(stderr.contains("another"), "{stderr}");

    let stderr = Berth::fails_to_start(
        "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: /dev/null/berth\nhttp:\n  addr: 127.0.0.1:0\n",
    );
    assert_eq!(stderr.matches("Not a directory").count(), 1, "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}
