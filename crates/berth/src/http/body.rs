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

/// An HTTP/2 response body stream that its client must keep taking: when the client owes
/// the next poll (the last one yielded bytes) and has not made it for `limit` (its
/// stream's window stayed shut), a watchdog drops what the body holds (the file, the
/// chunks read ahead) and cuts the connection. Time the body spends waiting on its own
/// source (a pull-through fill from a slow upstream) is never counted. A client slower
/// than a 128 KiB chunk per `limit` (about 2 KB/s with the default 60 s) is taken for a
/// stalled one.
pub fn guard_stall(inner: ByteStream, limit: Duration, cut: super::ConnectionCut) -> ByteStream {
    let started = tokio::time::Instant::now();
    let shared = Arc::new(StallState {
        inner: std::sync::Mutex::new(Some(inner)),
        owed_since_ms: AtomicU64::new(NOT_OWED),
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
            let owed = state.owed_since_ms.load(Ordering::Relaxed);
            if owed != NOT_OWED
                && started
                    .elapsed()
                    .saturating_sub(Duration::from_millis(owed))
                    >= limit
            {
                drop(state.take());
                cut.cut();
                return;
            }
        }
    });
    Box::pin(StallGuarded { shared, started })
}

/// [`StallState::owed_since_ms`] when the body waits on its source, not on its client.
const NOT_OWED: u64 = u64::MAX;

struct StallState {
    inner: std::sync::Mutex<Option<ByteStream>>,
    /// Since when (ms after `started`) the client owes the next poll: the last poll
    /// yielded bytes; [`NOT_OWED`] while a poll is pending on the source.
    owed_since_ms: AtomicU64,
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
        let mut inner = self.shared.inner.lock().unwrap_or_else(|p| p.into_inner());
        let Some(stream) = inner.as_mut() else {
            return Poll::Ready(Some(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client stopped taking the response",
            ))));
        };
        let polled = stream.poll_next_unpin(cx);
        let owed = match &polled {
            Poll::Ready(Some(Ok(_))) => self.started.elapsed().as_millis() as u64,
            Poll::Ready(_) => {
                self.shared.done.store(true, Ordering::Relaxed);
                NOT_OWED
            }
            Poll::Pending => NOT_OWED,
        };
        self.shared.owed_since_ms.store(owed, Ordering::Relaxed);
        polled
    }
}

/// A request body that notes when it has been read to its end. The body itself stays
/// shared with whoever made this, who may take what the handler left unread.
pub struct EndSeen {
    pub inner: Arc<std::sync::Mutex<Option<Body>>>,
    pub seen: Arc<std::sync::atomic::AtomicBool>,
}

impl http_body::Body for EndSeen {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let Some(inner) = guard.as_mut() else {
            // Taken after the answer: whoever still reads must not see a clean end.
            return Poll::Ready(Some(Err(axum::Error::new(io::Error::other(
                "the request was answered; its body is no longer read",
            )))));
        };
        let polled = Pin::new(&mut *inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) || inner.is_end_stream() {
            self.seen.store(true, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(Body::size_hint)
            .unwrap_or_default()
    }
}

/// Read and drop what is left of a request body refused before it was read, up to
/// `limit` bytes within `within`, so that the connection can serve the client's next
/// request (a retry with credentials, typically). What is not drained by then stays
/// unread, and the caller's connection is closed after the answer. True when the body
/// was read to its end.
pub async fn discard(body: Body, limit: u64, within: Duration) -> bool {
    let mut stream = body.into_data_stream();
    let mut read = 0u64;
    tokio::time::timeout(within, async {
        while let Some(chunk) = stream.next().await {
            let Ok(chunk) = chunk else { return false };
            read += chunk.len() as u64;
            if read > limit {
                return false;
            }
        }
        true
    })
    .await
    .unwrap_or(false)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn cut() -> (super::super::ConnectionCut, Arc<tokio::sync::Notify>) {
        let n = Arc::new(tokio::sync::Notify::new());
        (super::super::ConnectionCut(n.clone()), n)
    }

    async fn was_cut(n: &tokio::sync::Notify, within: Duration) -> bool {
        tokio::time::timeout(within, n.notified()).await.is_ok()
    }

    #[tokio::test]
    async fn waiting_on_the_source_is_not_a_stalled_client() {
        let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(1);
        let source: ByteStream = Box::pin(futures_util::stream::unfold(rx, |mut rx| async {
            rx.recv().await.map(|item| (item, rx))
        }));
        let (c, notify) = cut();
        let mut body = guard_stall(source, Duration::from_millis(200), c);
        // The client keeps polling while the source (a slow upstream) sends nothing.
        let sender = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(800)).await;
            tx.send(Ok(Bytes::from_static(b"late")))
                .await
                .expect("send");
        });
        let first = body.next().await.expect("an item").expect("bytes");
        assert_eq!(&first[..], b"late");
        sender.await.expect("sender");
        assert!(!was_cut(&notify, Duration::from_millis(10)).await);
        // Then the client stops polling while it owes the next poll: cut.
        assert!(was_cut(&notify, Duration::from_secs(2)).await);
        let after = body.next().await.expect("an item");
        assert!(after.is_err(), "the body ends with an error once cut");
    }
}
