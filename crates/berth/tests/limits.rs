//! Black-box tests of the limits that keep one client from hurting the others: slow and
//! stalled downloads against the thread pool that writes uploads, the send-stall cut-off,
//! caps on open upload sessions, and a full disk.

mod common;

use common::push::{sha256, Registry};
use common::Berth;
use reqwest::StatusCode;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A config with the smallest blocking pool Berth allows (as a Distribution config with
/// `maxthreads` would give it) and `extra` appended.
fn config(extra: &str) -> String {
    format!(
        "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: DATA\n    maxthreads: 25\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:0\n{extra}"
    )
}

/// A client that sends `GET path` and then reads nothing: its receive window closes
/// once the kernel buffers are full. The socket's receive buffer is made small so that
/// happens soon.
async fn stalled_get(host: &str, path: &str) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    let mut s = socket
        .connect(host.parse().expect("addr"))
        .await
        .expect("connect");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
        .await
        .expect("request");
    s
}

/// A client reading `path` at about `rate` bytes a second until `until`; returns the
/// bytes it got.
async fn slow_get(host: String, path: String, rate: usize, until: Instant) -> usize {
    let mut s = stalled_get(&host, &path).await;
    let mut got = 0;
    let mut buf = vec![0u8; rate / 10];
    while Instant::now() < until {
        match tokio::time::timeout(Duration::from_millis(100), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got += n,
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    got
}

/// Push a small blob and pull another one back; how long both took.
async fn push_and_pull(reg: &Registry, url: &str, seed: usize, other: &oci::Digest) -> Duration {
    let started = Instant::now();
    reg.push_blob("fast/app", format!("small blob {seed}").as_bytes())
        .await;
    let r = reqwest::Client::new()
        .get(format!("{url}/v2/fast/app/blobs/{other}"))
        .send()
        .await
        .expect("pull");
    assert_eq!(r.status(), StatusCode::OK);
    r.bytes().await.expect("body");
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_stalled_downloads_do_not_hold_back_pushes() {
    let b = Berth::start_with_config(&config(""));
    let reg = Registry::new(&b.url);
    let big: Vec<u8> = (0..32u32 << 20).map(|i| (i % 251) as u8).collect();
    let big_digest = reg.push_blob("slow/app", &big).await;
    let other = reg.push_blob("fast/app", b"another blob").await;

    let before = push_and_pull(&reg, &b.url, 0, &other).await;

    // As many stalled readers as the blocking pool has threads, and as many more
    // reading at a slow client's pace (about 150 KB/s).
    let path = format!("/v2/slow/app/blobs/{big_digest}");
    let mut stalled = Vec::new();
    for _ in 0..30 {
        stalled.push(stalled_get(&b.host, &path).await);
    }
    let until = Instant::now() + Duration::from_secs(8);
    let slow: Vec<_> = (0..30)
        .map(|_| tokio::spawn(slow_get(b.host.clone(), path.clone(), 150_000, until)))
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;

    let mut during = Duration::ZERO;
    for seed in 1..=3 {
        during = during.max(push_and_pull(&reg, &b.url, seed, &other).await);
    }
    eprintln!(
        "push + pull of small blobs: {:?} alone, {:?} (worst of 3) beside 30 stalled and 30 slow readers of a 32 MiB blob",
        before, during
    );
    // Generous for a loaded 2-core machine: the old code took a minute here.
    assert!(
        during < before + Duration::from_secs(5),
        "a push and a pull took {during:?} while slow clients downloaded (alone: {before:?})"
    );
    // The slow readers were served all along, every one of them.
    for s in slow {
        let got = s.await.expect("slow reader");
        assert!(got > 100_000, "a slow reader got only {got} bytes in 7 s");
    }
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut_off() {
    let b = Berth::start_with_config(&config("limits:\n  bodyidletimeout: 2s\n"));
    let reg = Registry::new(&b.url);
    let big: Vec<u8> = (0..32u32 << 20).map(|i| (i % 253) as u8).collect();
    let d = reg.push_blob("cut/app", &big).await;
    let mut s = stalled_get(&b.host, &format!("/v2/cut/app/blobs/{d}")).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    // Whatever was buffered arrives, then the connection ends well short of the blob.
    let started = Instant::now();
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got += n,
            Err(_) => panic!("the stalled connection was still open after 15 s"),
        }
    }
    assert!(
        got < big.len(),
        "the stalled client got the whole blob ({got} bytes): it was never cut off"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    // The server is fine and serves the blob to a client that reads.
    let r = reqwest::get(format!("{}/v2/cut/app/blobs/{d}", b.url))
        .await
        .expect("get");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(sha256(&r.bytes().await.expect("body")), d);
}

/// `POST .../blobs/uploads/`: the status, the error code if any, and the Location.
async fn open_session(url: &str, repo: &str) -> (StatusCode, String, Option<String>) {
    let r = reqwest::Client::new()
        .post(format!("{url}/v2/{repo}/blobs/uploads/"))
        .send()
        .await
        .expect("post");
    let status = r.status();
    let location = r
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = r.text().await.expect("body");
    (status, body, location)
}

#[tokio::test]
async fn open_upload_sessions_are_capped() {
    let b = Berth::start_with_config(&config(
        "limits:\n  uploadsessions: 5\n  repositoryuploadsessions: 3\n",
    ));
    let mut sessions = Vec::new();
    for _ in 0..3 {
        let (status, _, location) = open_session(&b.url, "capped/one").await;
        assert_eq!(status, StatusCode::ACCEPTED);
        sessions.push(location.expect("location"));
    }
    let (status, body, _) = open_session(&b.url, "capped/one").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert!(body.contains("TOOMANYREQUESTS"), "{body}");
    assert!(body.contains("limits.repositoryuploadsessions"), "{body}");
    for _ in 0..2 {
        let (status, _, _) = open_session(&b.url, "capped/two").await;
        assert_eq!(status, StatusCode::ACCEPTED);
    }
    let (status, body, _) = open_session(&b.url, "capped/three").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert!(body.contains("limits.uploadsessions"), "{body}");
    // At the cap, a whole blob in one request (no session) still goes in.
    let reg = Registry::new(&b.url);
    reg.push_blob("capped/three", b"monolithic").await;
    // A cancelled session makes room.
    let cancelled = reqwest::Client::new()
        .delete(format!("{}{}", b.url, sessions[0]))
        .send()
        .await
        .expect("delete");
    assert_eq!(cancelled.status(), StatusCode::NO_CONTENT);
    let (status, _, _) = open_session(&b.url, "capped/three").await;
    assert_eq!(status, StatusCode::ACCEPTED);
    // Upload files live in fanned-out directories, not one flat one.
    let files = b.upload_files();
    assert_eq!(files.len(), 5, "{files:?}");
    for f in files {
        let fan = f.parent().and_then(|p| p.file_name()).expect("fan-out dir");
        let name = f.file_name().expect("name").to_string_lossy().into_owned();
        assert_eq!(fan.to_string_lossy(), name[..2], "{f:?}");
    }
}

/// A full disk: the client is told the registry is out of space (in the spec's error
/// envelope), and what was stored before stays intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_reported_as_such() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mount = dir.path().join("small");
    std::fs::create_dir(&mount).expect("mkdir");
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=24m", "tmpfs"])
        .arg(&mount)
        .status()
        .expect("run mount");
    assert!(
        mounted.success(),
        "mounting a 24 MiB tmpfs failed: this test needs root (the README's test command runs as root)"
    );
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
    let _unmount = Unmount(mount.clone());
    let b = Berth::start_with_config(&format!(
        "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:0\n",
        mount.join("data").display()
    ));
    let reg = Registry::new(&b.url);
    let small = reg
        .push_blob("full/app", b"stored before the disk filled")
        .await;
    let big: Vec<u8> = (0..40u32 << 20).map(|i| (i % 241) as u8).collect();
    let d = sha256(&big);
    let r = reqwest::Client::new()
        .post(format!("{}/v2/full/app/blobs/uploads/?digest={d}", b.url))
        .body(big)
        .send()
        .await
        .expect("push");
    assert_eq!(r.status(), StatusCode::INSUFFICIENT_STORAGE);
    let body = r.text().await.expect("body");
    assert!(body.contains("\"errors\""), "the spec's envelope: {body}");
    assert!(body.contains("out of storage space"), "{body}");
    let logged = b.log_lines().join("\n");
    assert!(
        logged.contains("No space left on device"),
        "ENOSPC is logged: {logged}"
    );
    // Nothing half-written is visible, what was there is intact, and space comes back.
    let r = reqwest::get(format!("{}/v2/full/app/blobs/{d}", b.url))
        .await
        .expect("get");
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = reqwest::get(format!("{}/v2/full/app/blobs/{small}", b.url))
        .await
        .expect("get");
    assert_eq!(sha256(&r.bytes().await.expect("body")), small);
    reg.push_blob("full/app", b"after the failed push").await;
}

/// Over HTTP/2 a stream whose window the client never opens is never polled again, so
/// the server watches it from outside: after `limits.bodyidletimeout` the connection is
/// cut (and its buffers freed); the client can connect again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_http2_stream_is_cut_off() {
    let b = Berth::start_with_config(&config("limits:\n  bodyidletimeout: 2s\n"));
    let reg = Registry::new(&b.url);
    let big: Vec<u8> = (0..32u32 << 20).map(|i| (i % 239) as u8).collect();
    let d = reg.push_blob("h2/app", &big).await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .expect("h2 client");
    let url = format!("{}/v2/h2/app/blobs/{d}", b.url);
    let r = h2.get(&url).send().await.expect("get");
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), StatusCode::OK);
    // Take nothing: the stream's window fills and stays shut, until the server cuts it.
    let cut = b.wait_for_log(
        "client stopped taking a response",
        0,
        Duration::from_secs(20),
    );
    assert!(!cut.is_empty(), "the server logged no cut connection");
    let got = r.bytes().await;
    assert!(
        got.as_ref().map_or(true, |body| body.len() < big.len()),
        "the stalled stream still delivered the whole blob"
    );
    // A new connection is served as usual.
    let again = h2.get(&url).send().await.expect("get again");
    assert_eq!(sha256(&again.bytes().await.expect("body")), d);
}
