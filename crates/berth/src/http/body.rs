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
