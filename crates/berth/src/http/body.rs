//! Request bodies: streaming into the registry with an idle timeout, and bounded reads.

use crate::storage::ByteStream;
use axum::body::Body;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http_body_util::BodyExt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// A request body that counts its bytes as the handler reads them, for the access log.
/// End-of-stream and size hints pass through, so handlers can still tell an empty body.
pub struct Counted {
    pub inner: Body,
    pub counter: Arc<AtomicU64>,
}

impl http_body::Body for Counted {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                self.counter.fetch_add(data.len() as u64, Ordering::Relaxed);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// An HTTP/2 response body stream that its client must keep taking: when it has not been
/// polled for `limit` before its end (its stream's window stayed shut), a watchdog drops
/// what it holds (the file, the chunks read ahead) and cuts the connection. A client
/// slower than a 128 KiB chunk per `limit` (about 2 KB/s with the default 60 s) is
/// taken for a stalled one.
pub fn guard_stall(inner: ByteStream, limit: Duration, cut: super::ConnectionCut) -> ByteStream {
    let started = tokio::time::Instant::now();
    let shared = Arc::new(StallState {
        inner: std::sync::Mutex::new(Some(inner)),
        polled_ms: AtomicU64::new(0),
        done: std::sync::atomic::AtomicBool::new(false),
    });
    let watched = Arc::downgrade(&shared);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep((limit / 4).max(Duration::from_millis(50))).await;
            let Some(state) = watched.upgrade() else {
                return; // the response was dropped: nothing to watch
            };
            if state.done.load(Ordering::Relaxed) {
                return;
            }
            let polled = Duration::from_millis(state.polled_ms.load(Ordering::Relaxed));
            if started.elapsed().saturating_sub(polled) >= limit {
                drop(state.take());
                cut.cut();
                return;
            }
        }
    });
    Box::pin(StallGuarded { shared, started })
}

struct StallState {
    inner: std::sync::Mutex<Option<ByteStream>>,
    /// When the body was last polled, in ms since `started`.
    polled_ms: AtomicU64,
    done: std::sync::atomic::AtomicBool,
}

impl StallState {
    fn take(&self) -> Option<ByteStream> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

struct StallGuarded {
    shared: Arc<StallState>,
    started: tokio::time::Instant,
}

impl Stream for StallGuarded {
    type Item = io::Result<Bytes>;
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let now = self.started.elapsed().as_millis() as u64;
        self.shared.polled_ms.store(now, Ordering::Relaxed);
        let mut inner = self.shared.inner.lock().unwrap_or_else(|p| p.into_inner());
        let Some(stream) = inner.as_mut() else {
            return Poll::Ready(Some(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client stopped taking the response",
            ))));
        };
        let polled = stream.poll_next_unpin(cx);
        if matches!(polled, Poll::Ready(None)) {
            self.shared.done.store(true, Ordering::Relaxed);
        }
        polled
    }
}

/// A request body that notes when it has been read to its end.
pub struct EndSeen {
    pub inner: Body,
    pub seen: Arc<std::sync::atomic::AtomicBool>,
}

impl http_body::Body for EndSeen {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) || self.inner.is_end_stream() {
            self.seen.store(true, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Read and drop what is left of a request body refused before it was read, up to
/// `limit` bytes within `within`, so that the connection can serve the client's next
/// request (a retry with credentials, typically). What is not drained by then stays
/// unread, and the caller's connection is closed after the answer.
pub async fn discard(body: Body, limit: u64, within: Duration) {
    let mut stream = body.into_data_stream();
    let mut read = 0u64;
    let _ = tokio::time::timeout(within, async {
        while let Some(Ok(chunk)) = stream.next().await {
            read += chunk.len() as u64;
            if read > limit {
                break;
            }
        }
    })
    .await;
}

/// A body stream that fails with `TimedOut` when no bytes arrive for `idle`. The timer
/// starts when the handler first waits for bytes, not when the request arrived.
struct IdleTimeout<S> {
    inner: S,
    idle: Duration,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S: Stream<Item = Result<Bytes, axum::Error>> + Unpin> Stream for IdleTimeout<S> {
    type Item = io::Result<Bytes>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.inner.poll_next_unpin(cx) {
            Poll::Ready(item) => {
                self.sleep = None;
                Poll::Ready(item.map(|r| r.map_err(io::Error::other)))
            }
            Poll::Pending => {
                let idle = self.idle;
                let sleep = self
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no request body bytes arrived for {} s", idle.as_secs()),
                    )))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

/// Stream a request body, failing if it stalls for `idle`.
pub fn stream(body: Body, idle: Duration) -> ByteStream {
    Box::pin(IdleTimeout {
        inner: body.into_data_stream(),
        idle,
        sleep: None,
    })
}

/// Why a bounded read failed.
pub enum ReadError {
    TooLarge,
    Io(io::Error),
}

/// Read a whole body of at most `limit` bytes.
pub async fn read_limited(body: Body, limit: usize, idle: Duration) -> Result<Vec<u8>, ReadError> {
    let limited = http_body_util::Limited::new(body, limit);
    let collected =
        tokio::time::timeout(idle.max(Duration::from_secs(1)) * 4, limited.collect()).await;
    match collected {
        Err(_) => Err(ReadError::Io(io::Error::new(
            io::ErrorKind::TimedOut,
            "manifest body timed out",
        ))),
        Ok(Ok(c)) => Ok(c.to_bytes().to_vec()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(ReadError::TooLarge),
        Ok(Err(e)) => Err(ReadError::Io(io::Error::other(e))),
    }
}
