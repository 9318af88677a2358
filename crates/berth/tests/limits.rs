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
    assert!(
        during < Duration::from_secs(2),
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
