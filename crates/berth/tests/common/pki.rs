//! Test certificates made with the `openssl` command: a private CA and certificates it
//! signs, for Berth's `http.tls` (and the clients that must trust it). Nothing here is
//! fit for anything but a test: two-day certificates, unencrypted keys.

use super::{require_tool, run};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The key a certificate is made with.
#[derive(Clone, Copy)]
pub enum Key {
    /// ECDSA on P-256.
    EcP256,
    /// RSA, 2048 bits (what the registry:2 guides make).
    Rsa2048,
}

impl Key {
    fn args(self) -> &'static [&'static str] {
        match self {
            Key::EcP256 => &[
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-sha256",
            ],
            Key::Rsa2048 => &["-newkey", "rsa:2048", "-nodes", "-sha256"],
        }
    }
}

/// A self-signed CA in `dir`: `ca.key`, `ca.crt`, subject `/CN={cn}`.
pub fn make_ca(dir: &Path, key: Key, cn: &str) {
    require_tool("openssl");
    run(Command::new("openssl")
        .current_dir(dir)
        .args(["req", "-x509"])
        .args(key.args())
        .args(["-keyout", "ca.key", "-out", "ca.crt", "-days", "2"])
        .args(["-subj", &format!("/CN={cn}")]));
}

/// `{name}.key` and `{name}.crt` in `dir`, subject `/CN={cn}`, extensions `ext` (openssl
/// extfile lines), signed by the CA `make_ca` put there.
pub fn make_cert(dir: &Path, key: Key, name: &str, cn: &str, ext: &str) {
    require_tool("openssl");
    std::fs::write(dir.join(format!("{name}.ext")), ext).expect("ext");
    run(Command::new("openssl")
        .current_dir(dir)
        .arg("req")
        .args(key.args())
        .args([
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
        ])
        .args(["-subj", &format!("/CN={cn}")]));
    run(Command::new("openssl").current_dir(dir).args([
        "x509",
        "-req",
        "-in",
        &format!("{name}.csr"),
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-sha256",
        "-out",
        &format!("{name}.crt"),
        "-extfile",
        &format!("{name}.ext"),
    ]));
}

/// A test certificate authority with a server certificate for 127.0.0.1 and a client
/// certificate (`ca.crt`, `server.crt`/`.key`, `client.crt`/`.key` in `dir`).
pub struct Pki {
    pub dir: tempfile::TempDir,
}

impl Pki {
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A CA, a server certificate for 127.0.0.1 and a client certificate (ECDSA keys).
    pub fn new() -> Pki {
        let pki = Pki {
            dir: tempfile::tempdir().expect("tempdir"),
        };
        let d = pki.dir.path();
        make_ca(d, Key::EcP256, "Berth Test CA");
        make_cert(
            d,
            Key::EcP256,
            "server",
            "127.0.0.1",
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
        );
        make_cert(
            d,
            Key::EcP256,
            "client",
            "berth-test-client",
            "extendedKeyUsage=clientAuth\n",
        );
        pki
    }

    /// A complete Berth config serving HTTPS with the server certificate (`DATA` for the
    /// data directory); `extra_tls` is appended (more `http.tls` keys, other sections).
    pub fn tls_config(&self, extra_tls: &str) -> String {
        format!(
            "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: DATA\nhttp:\n  addr: 127.0.0.1:0\n  tls:\n    certificate: {}\n    key: {}\n{extra_tls}",
            self.path("server.crt").display(),
            self.path("server.key").display()
        )
    }

    /// A skopeo/containers cert dir: ca.crt, plus client.cert/client.key when `client`.
    pub fn cert_dir(&self, client: bool) -> PathBuf {
        let dir = self.path(if client { "certs-client" } else { "certs-ca" });
        std::fs::create_dir_all(&dir).expect("cert dir");
        std::fs::copy(self.path("ca.crt"), dir.join("ca.crt")).expect("ca");
        if client {
            std::fs::copy(self.path("client.crt"), dir.join("client.cert")).expect("cert");
            std::fs::copy(self.path("client.key"), dir.join("client.key")).expect("key");
        }
        dir
    }
}

/// Serve `app` over HTTPS on 127.0.0.1:0 with the certificate `cert`/`key` (tokio-rustls
/// and hyper, HTTP/1 and HTTP/2) on the current tokio runtime; returns the address. A
/// client that does not trust the certificate fails in the handshake: the app never sees
/// it.
pub async fn serve_https(app: axum::Router, cert: &Path, key: &Path) -> std::net::SocketAddr {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .expect("cert")
        .collect::<Result<Vec<_>, _>>()
        .expect("certs");
    let key = PrivateKeyDer::from_pem_file(key).expect("key");
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            let app = app.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let service = hyper_util::service::TowerToHyperService::new(app);
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .await;
            });
        }
    });
    addr
}
