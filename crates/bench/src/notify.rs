//! The notification scenario of `compare`: what a webhook endpoint costs on the pull
//! path. Each server is started twice with a fresh directory, once without
//! notifications and once with one endpoint pointing at a tiny HTTP receiver this
//! program runs on 127.0.0.1:0 (it answers every POST with 200 and counts them); one
//! small image is pushed, then `manifest_requests` GETs of its manifest are timed, as in
//! the standard `manifest_get` workload.
//!
//! Figures: `notify_off_manifest_get` and `notify_on_manifest_get` (req/s, latencies,
//! server CPU), `notify_on_off.ratio` (req/s with the endpoint over without), and
//! `notify_on_receiver.posts` (POSTs the receiver had accepted when the timed run ended:
//! how far delivery kept up, informational).

use crate::client::{Blob, Image, Registry};
use crate::report::Figure;
use crate::servers::{Extra, Server, ServerSpec};
use crate::workloads::{manifest_requests, Options};
use anyhow::{Context, Result};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// A webhook receiver: HTTP/1.1 with keep-alive, 200 to every request, POSTs counted.
pub struct Receiver {
    url: String,
    posts: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    pub async fn start() -> Result<Receiver> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the webhook receiver")?;
        let url = format!("http://{}/events", listener.local_addr()?);
        let posts = Arc::new(AtomicU64::new(0));
        let counter = posts.clone();
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(serve(conn, counter.clone()));
            }
        });
        Ok(Receiver { url, posts, task })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn posts(&self) -> u64 {
        self.posts.load(Ordering::Relaxed)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One connection: read requests (headers, then `Content-Length` bytes of body) and
/// answer each with an empty 200, until the client closes it or sends something this
/// receiver does not understand.
async fn serve(mut conn: TcpStream, posts: Arc<AtomicU64>) {
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    let mut chunk = [0u8; 8192];
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            match conn.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        if head.contains("transfer-encoding: chunked") {
            return;
        }
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        while buf.len() < head_end + length {
            match conn.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        if head.starts_with("post ") {
            posts.fetch_add(1, Ordering::Relaxed);
        }
        buf.drain(..head_end + length);
        if conn
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .await
            .is_err()
        {
            return;
        }
    }
}

/// The `notifications:` section of a Distribution config with one endpoint at `url`.
fn notifications_yaml(url: &str) -> String {
    format!(
        "notifications:\n  endpoints:\n  - name: bench\n    url: {url}\n    timeout: 5s\n    threshold: 10\n    backoff: 1s\n"
    )
}

/// Start `spec` (without, then with, an endpoint), push one small image, time manifest
/// GETs. Both runs use fresh data directories.
pub async fn run(spec: &ServerSpec, workdir: Option<&Path>, opts: &Options) -> Result<Vec<Figure>> {
    let receiver = Receiver::start().await?;
    let mut figures = Vec::new();
    let mut rates = [0.0; 2];
    for (i, (on, workload)) in [
        (false, "notify_off_manifest_get"),
        (true, "notify_on_manifest_get"),
    ]
    .into_iter()
    .enumerate()
    {
        let extra = Extra {
            access_log: false,
            yaml: if on {
                notifications_yaml(receiver.url())
            } else {
                String::new()
            },
        };
        let server = Server::start_with(spec, workdir, &extra).await?;
        let result = async {
            let registry = Registry::new(server.url())?;
            let repo = "notify/app";
            let image = Image::new(vec![Blob::random(4096)]);
            registry
                .push_image(repo, "v1", &image, 1)
                .await
                .context("pushing the image")?;
            let probe = server.probe()?;
            let measured = manifest_requests(&registry, Some(&probe), &opts.scale, repo, false)
                .await
                .with_context(|| format!("{workload} on {}", spec.name))?;
            Ok::<_, anyhow::Error>(measured)
        }
        .await
        .map_err(|e| e.context(format!("{} log tail:\n{}", spec.name, server.log_tail())));
        let posts = receiver.posts();
        server.stop()?;
        for mut f in result? {
            if f.key == "req_per_s" {
                rates[i] = f.value;
            }
            f.workload = workload;
            figures.push(f);
        }
        if on {
            figures.push(Figure::info("notify_on_receiver", "posts", posts as f64));
        }
    }
    if rates[0] > 0.0 {
        figures.push(Figure::higher(
            "notify_on_off",
            "ratio",
            rates[1] / rates[0],
        ));
    }
    Ok(figures)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two requests on one connection (one POST with a body, one GET), answered in turn.
    #[tokio::test]
    async fn the_receiver_answers_and_counts_posts() {
        let r = Receiver::start().await.expect("start");
        let addr = r
            .url()
            .trim_start_matches("http://")
            .trim_end_matches("/events");
        let mut conn = TcpStream::connect(addr).await.expect("connect");
        conn.write_all(
            b"POST /events HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloGET / HTTP/1.1\r\nHost: x\r\n\r\n",
        )
        .await
        .expect("write");
        let mut got = Vec::new();
        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        while got.len() < answer.len() * 2 {
            let mut chunk = [0u8; 256];
            let n = conn.read(&mut chunk).await.expect("read");
            assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&chunk[..n]);
        }
        assert_eq!(got, [answer.as_slice(), answer.as_slice()].concat());
        assert_eq!(r.posts(), 1);
        assert!(notifications_yaml(r.url()).contains("    url: http://127.0.0.1:"));
    }
}
