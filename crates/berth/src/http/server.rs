//! The listener: accepts TCP or Unix-socket connections, optionally terminates TLS (rustls with the
//! ring provider; client certificates required when `http.tls.clientcas` is set),
//! serves HTTP/1.1 and HTTP/2 on each connection with hyper, and on shutdown stops
//! accepting and drains in-flight requests, bounded by `http.draintimeout`. Each request
//! carries the peer address (`ConnectInfo`) and, over TLS, a [`super::TlsConnection`] mark.

use super::{ConnectionCut, TlsConnection};
use crate::config::{TlsConfig, TlsVersion};
use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tower::ServiceExt as _;

/// How long a client may take to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// Why the TLS configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} from {path}: {reason} (check http.tls and that the file is PEM)")]
    Pem {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("{path} holds no {what} (expected PEM \"-----BEGIN ...\" blocks)")]
    Empty { what: &'static str, path: PathBuf },
    #[error("cannot add the client CA {path}: {reason}")]
    ClientCa { path: PathBuf, reason: String },
    #[error("http.tls.ciphersuites: {name} is not supported (Berth's TLS library offers only AEAD suites with forward secrecy): use {supported}")]
    CipherSuite { name: String, supported: String },
    #[error("invalid TLS setup (certificate {certificate}, key {key}): {reason}")]
    Setup {
        certificate: PathBuf,
        key: PathBuf,
        reason: String,
    },
}

/// How connections are served.
#[derive(Clone, Default)]
pub struct ServeOptions {
    /// Terminate TLS with this configuration; plain HTTP when `None`.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Offer only HTTP/1.1 (`http.http2.disabled`).
    pub http1_only: bool,
    /// Bound on draining in-flight requests at shutdown; `None` waits for all of them.
    pub drain_timeout: Option<Duration>,
    /// How long a client may take to send a request's headers (`limits.headerreadtimeout`);
    /// `None`: [`HEADER_READ_TIMEOUT`].
    pub header_read_timeout: Option<Duration>,
    /// How long a response may wait for a client that takes no bytes
    /// (`limits.bodyidletimeout`); `None`: [`SEND_STALL_TIMEOUT`].
    pub send_stall_timeout: Option<Duration>,
}

/// Build the rustls server configuration for `tls`.
pub fn tls_config(tls: &TlsConfig, http2: bool) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(provider_with_suites(&tls.cipher_suites)?);
    let setup = |reason: String| TlsError::Setup {
        certificate: tls.certificate.clone(),
        key: tls.key.clone(),
        reason,
    };
    let versions: &[&'static rustls::SupportedProtocolVersion] = match tls.minimum {
        TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::Tls13 => &[&rustls::version::TLS13],
    };
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| setup(e.to_string()))?;
    let builder = if tls.client_cas.is_empty() {
        builder.with_no_client_auth()
    } else {
        let mut roots = rustls::RootCertStore::empty();
        for path in &tls.client_cas {
            for cert in read_certs(path, "client CA certificates")? {
                roots.add(cert).map_err(|e| TlsError::ClientCa {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
            }
        }
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| setup(format!("client certificate verifier: {e}")))?;
        builder.with_client_cert_verifier(verifier)
    };
    let certs = read_certs(&tls.certificate, "certificates")?;
    let key = PrivateKeyDer::from_pem_file(&tls.key).map_err(|e| TlsError::Pem {
        what: "a private key",
        path: tls.key.clone(),
        reason: e.to_string(),
    })?;
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| setup(e.to_string()))?;
    config.alpn_protocols = if http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(Arc::new(config))
}

/// The ring provider offering, for TLS 1.2, only the suites `names` lists (all of them
/// when empty); TLS 1.3 suites always stay on, as in Go, whose configuration cannot
/// change them either.
fn provider_with_suites(names: &[String]) -> Result<rustls::crypto::CryptoProvider, TlsError> {
    let mut provider = rustls::crypto::ring::default_provider();
    if names.is_empty() {
        return Ok(provider);
    }
    let all = provider.cipher_suites.clone();
    let name_of = |s: &rustls::SupportedCipherSuite| format!("{:?}", s.suite());
    let is13 = |s: &rustls::SupportedCipherSuite| s.version() == &rustls::version::TLS13;
    let mut chosen: Vec<rustls::SupportedCipherSuite> = all.iter().copied().filter(is13).collect();
    for name in names {
        // rustls spells TLS 1.3 suites TLS13_...; Go and IANA spell them TLS_...
        if all
            .iter()
            .any(|s| is13(s) && name_of(s).replacen("TLS13_", "TLS_", 1) == *name)
        {
            continue;
        }
        match all.iter().find(|s| !is13(s) && name_of(s) == *name) {
            Some(s) if !chosen.iter().any(|c| c.suite() == s.suite()) => chosen.push(*s),
            Some(_) => {}
            None => {
                let supported: Vec<String> = all.iter().filter(|s| !is13(s)).map(name_of).collect();
                return Err(TlsError::CipherSuite {
                    name: name.clone(),
                    supported: supported.join(", "),
                });
            }
        }
    }
    provider.cipher_suites = chosen;
    Ok(provider)
}

fn read_certs(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = |e: rustls::pki_types::pem::Error| TlsError::Pem {
        what,
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(pem)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem)?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            what,
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// How often an idle HTTP/2 connection is pinged, and how long the answer may take.
const HTTP2_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(60);
const HTTP2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a client may take to send a request's headers, by default.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a response may wait for a client that takes no bytes, by default.
pub const SEND_STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the server accepts connections.
pub enum Listener {
    Tcp(tokio::net::TcpListener),
    /// A Unix domain socket (`http.net: unix`): requests carry no peer address.
    Unix(tokio::net::UnixListener),
}

impl From<tokio::net::TcpListener> for Listener {
    fn from(l: tokio::net::TcpListener) -> Self {
        Listener::Tcp(l)
    }
}

/// Serve `app` on `listener` until `shutdown` completes, then stop accepting and drain.
pub async fn serve(
    listener: impl Into<Listener>,
    app: Router,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = listener.into();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // A client must send its request headers within this time (no slowloris holding
    // connections open for ever); bodies have their own idle timeout (limits.bodyidletimeout).
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(options.header_read_timeout.unwrap_or(HEADER_READ_TIMEOUT));
    // An HTTP/2 peer that stops answering pings is dropped (an idle but live one stays).
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(Some(HTTP2_KEEP_ALIVE_INTERVAL))
        .keep_alive_timeout(HTTP2_KEEP_ALIVE_TIMEOUT);
    if options.http1_only {
        builder = builder.http1_only();
    }
    let conns = Connections {
        builder: Arc::new(builder),
        first_byte_timeout: options.header_read_timeout.unwrap_or(HEADER_READ_TIMEOUT),
        send_stall: options.send_stall_timeout.unwrap_or(SEND_STALL_TIMEOUT),
        acceptor: options.tls.clone().map(tokio_rustls::TlsAcceptor::from),
        graceful: GracefulShutdown::new(),
        app,
    };
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = accept(&listener) => accepted,
            () = &mut shutdown => break,
        };
        match accepted {
            Ok(Accepted::Tcp(stream, remote)) => {
                let _ = stream.set_nodelay(true);
                conns.spawn(stream, Some(remote));
            }
            Ok(Accepted::Unix(stream)) => conns.spawn(stream, None),
            Err(e) => {
                if !is_connection_error(&e) {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::error!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    drop(listener);
    drain(conns.graceful, options.drain_timeout).await;
    Ok(())
}

enum Accepted {
    Tcp(tokio::net::TcpStream, SocketAddr),
    Unix(tokio::net::UnixStream),
}

async fn accept(listener: &Listener) -> std::io::Result<Accepted> {
    match listener {
        Listener::Tcp(l) => l.accept().await.map(|(s, a)| Accepted::Tcp(s, a)),
        Listener::Unix(l) => l.accept().await.map(|(s, _)| Accepted::Unix(s)),
    }
}

/// What every connection is served with.
struct Connections {
    builder: Arc<auto::Builder<TokioExecutor>>,
    /// How long a new connection may stay silent (the header-read limit).
    first_byte_timeout: Duration,
    /// How long a write may wait for the peer.
    send_stall: Duration,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    graceful: GracefulShutdown,
    app: Router,
}

impl Connections {
    /// Serve one accepted connection on its own task (TLS handshake first, if any).
    fn spawn<S>(&self, stream: S, remote: Option<SocketAddr>)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let is_tls = self.acceptor.is_some();
        let cut = Arc::new(tokio::sync::Notify::new());
        let cut_for_requests = cut.clone();
        let service = self
            .app
            .clone()
            .map_request(move |mut req: axum::extract::Request<_>| {
                if let Some(remote) = remote {
                    req.extensions_mut().insert(ConnectInfo(remote));
                }
                if is_tls {
                    req.extensions_mut().insert(TlsConnection);
                }
                req.extensions_mut()
                    .insert(ConnectionCut(cut_for_requests.clone()));
                req
            });
        let service = TowerToHyperService::new(service);
        let builder = self.builder.clone();
        let watcher = self.graceful.watcher();
        let acceptor = self.acceptor.clone();
        let first_byte = self.first_byte_timeout;
        let send_stall = self.send_stall;
        let peer = remote.map_or_else(|| "unix socket".to_string(), |r| r.to_string());
        tokio::spawn(async move {
            match acceptor {
                None => {
                    let stream = FirstByteDeadline::new(stream, first_byte, send_stall);
                    let conn =
                        builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    serve_until_cut(watcher.watch(conn.into_owned()), &cut, &peer).await;
                }
                Some(acceptor) => {
                    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::info!(remote = %peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::info!(remote = %peer, "TLS handshake timed out");
                            return;
                        }
                    };
                    let tls = FirstByteDeadline::new(tls, first_byte, send_stall);
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
                    serve_until_cut(watcher.watch(conn.into_owned()), &cut, &peer).await;
                }
            }
        });
    }
}

/// Serve a connection until it ends, or until a response on it is found stalled
/// ([`ConnectionCut`]): then it is dropped, socket, streams and buffers with it.
async fn serve_until_cut<E: std::fmt::Display>(
    conn: impl Future<Output = Result<(), E>>,
    cut: &tokio::sync::Notify,
    peer: &str,
) {
    tokio::select! {
        ended = conn => {
            if let Err(e) = ended {
                tracing::debug!(remote = %peer, error = %e, "connection ended with an error");
            }
        }
        () = cut.notified() => {
            tracing::info!(remote = %peer, "closing a connection whose client stopped taking a response");
        }
    }
}

/// A connection with two deadlines hyper does not keep. First, it must show what it
/// speaks within the header-read limit: hyper's header-read
/// timer only starts once the auto builder has told HTTP/1 from HTTP/2, which it does by
/// reading, untimed, until the bytes leave or complete the HTTP/2 preface; a client that
/// connects and says nothing, or sends part of the preface and stops, would otherwise
/// hold a connection and a task for ever. Second, a write may wait for the peer to take
/// bytes for at most the send-stall limit ([`FirstByteDeadline::watch_send`]).
struct FirstByteDeadline<S> {
    inner: S,
    /// `None` once hyper's own timers take over.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    /// How many bytes read so far match the HTTP/2 connection preface.
    preface_matched: usize,
    /// How long a write may wait for the peer.
    send_stall: Duration,
    /// Running while a write waits for the peer.
    send_stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// What an HTTP/2 client sends first (RFC 9113, 3.4). hyper-util's version detection
/// reads, untimed, until these bytes are complete or one differs.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

impl<S> FirstByteDeadline<S> {
    fn new(inner: S, timeout: Duration, send_stall: Duration) -> Self {
        FirstByteDeadline {
            inner,
            deadline: Some(Box::pin(tokio::time::sleep(timeout))),
            preface_matched: 0,
            send_stall,
            send_stalled: None,
        }
    }

    /// Account for `bytes` just read: the deadline ends when they leave the preface (an
    /// HTTP/1 request, whose header timer hyper runs) or complete it (HTTP/2, with its
    /// keep-alive pings).
    fn saw(&mut self, bytes: &[u8]) {
        if self.deadline.is_none() {
            return;
        }
        let rest = &H2_PREFACE[self.preface_matched..];
        let n = bytes.len().min(rest.len());
        if bytes[..n] != rest[..n] || self.preface_matched + n == H2_PREFACE.len() {
            self.deadline = None;
        } else {
            self.preface_matched += n;
        }
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for FirstByteDeadline<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if this.deadline.is_some() && buf.filled().len() > before {
                    this.saw(&buf.filled()[before..]);
                }
                Poll::Ready(r)
            }
            Poll::Pending => {
                let expired = match this.deadline.as_mut() {
                    Some(d) => d.as_mut().poll(cx).is_ready(),
                    None => false,
                };
                if expired {
                    Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "no request within the header-read limit",
                    )))
                } else {
                    Poll::Pending
                }
            }
        }
    }
}

impl<S> FirstByteDeadline<S> {
    /// Pass a write's outcome through, failing it once the peer has taken no bytes for
    /// the send-stall limit: a client that stops reading (a zero TCP window) is cut
    /// off and the connection's buffers freed, instead of holding them for ever.
    fn watch_send<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        match polled {
            Poll::Ready(r) => {
                self.send_stalled = None;
                Poll::Ready(r)
            }
            Poll::Pending => {
                let limit = self.send_stall;
                let timer = self
                    .send_stalled
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                if timer.as_mut().poll(cx).is_ready() {
                    Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!(
                            "the client took no response bytes for {} s (limits.bodyidletimeout)",
                            limit.as_secs()
                        ),
                    )))
                } else {
                    Poll::Pending
                }
            }
        }
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for FirstByteDeadline<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch_send(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch_send(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch_send(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.watch_send(cx, polled)
    }
}

async fn drain(graceful: GracefulShutdown, timeout: Option<Duration>) {
    match timeout {
        None => graceful.shutdown().await,
        Some(d) => {
            tracing::info!("stopping server gracefully. Draining connections for {d:?}");
            if tokio::time::timeout(d, graceful.shutdown()).await.is_err() {
                tracing::warn!(
                    "http.draintimeout of {d:?} elapsed with requests still running: closing them"
                );
            }
        }
    }
}

/// Errors that concern one connection only (the client went away during accept).
fn is_connection_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}
