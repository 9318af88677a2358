//! An external token issuer made with the `openssl` command, for `auth.token` tests:
//! JWTs signed with `openssl dgst -sha256 -sign` (RS256 as openssl writes it; ES256 with
//! openssl's DER signature turned into JOSE's raw `r || s`), libtrust key ids of
//! certificates, and JWKs of keys. No Rust crypto: what Berth verifies was made by
//! another implementation than the one it verifies with. Keys and certificates come
//! from [`super::pki`].

use super::{require_tool, run};
use base64::Engine as _;
use serde_json::{json, Value};
use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};

/// A JWS algorithm the tests sign with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alg {
    /// RSASSA-PKCS1-v1_5 with SHA-256 (an RSA key).
    Rs256,
    /// ECDSA P-256 with SHA-256 (a P-256 key).
    Es256,
}

impl Alg {
    pub fn name(self) -> &'static str {
        match self {
            Alg::Rs256 => "RS256",
            Alg::Es256 => "ES256",
        }
    }
}

/// base64url without padding, as JWTs use it.
pub fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Run `cmd` with `input` on its standard input; its standard output (it must succeed).
pub fn run_with_input(cmd: &mut Command, input: &[u8]) -> Vec<u8> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input)
        .expect("write stdin");
    let out = child.wait_with_output().expect("output");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn openssl() -> Command {
    require_tool("openssl");
    Command::new("openssl")
}

/// SHA-256 of `bytes`, by `openssl dgst`.
pub fn sha256(bytes: &[u8]) -> Vec<u8> {
    let out = run_with_input(openssl().args(["dgst", "-sha256", "-binary"]), bytes);
    assert_eq!(
        out.len(),
        32,
        "openssl dgst -binary gave {} bytes",
        out.len()
    );
    out
}

/// The DER SubjectPublicKeyInfo of the certificate `cert` (PEM).
pub fn spki_der(cert: &Path) -> Vec<u8> {
    let pem = run(openssl()
        .args(["x509", "-pubkey", "-noout", "-in"])
        .arg(cert));
    run_with_input(
        openssl().args(["pkey", "-pubin", "-outform", "DER"]),
        pem.as_bytes(),
    )
}

/// The DER of the certificate `cert` (PEM), standard base64: an `x5c` entry.
pub fn x5c_entry(cert: &Path) -> String {
    let out = openssl()
        .args(["x509", "-outform", "DER", "-in"])
        .arg(cert)
        .output()
        .expect("openssl x509");
    assert!(out.status.success(), "openssl x509 -outform DER {cert:?}");
    base64::engine::general_purpose::STANDARD.encode(out.stdout)
}

/// The libtrust key id of the certificate's key, as Distribution 2.8 (and Harbor) name
/// keys in `kid`: SHA-256 of the DER SubjectPublicKeyInfo, its first 30 bytes in base32
/// (RFC 4648, no padding), in groups of four joined by `:`.
pub fn libtrust_kid(cert: &Path) -> String {
    let hash = sha256(&spki_der(cert));
    let encoded = base32(&hash[..30]);
    let groups: Vec<&str> = (0..encoded.len())
        .step_by(4)
        .map(|i| &encoded[i..(i + 4).min(encoded.len())])
        .collect();
    groups.join(":")
}

/// RFC 4648 base32, without padding.
fn base32(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::new();
    let (mut buffer, mut bits) = (0u64, 0);
    for &b in bytes {
        buffer = (buffer << 8) | u64::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((buffer >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((buffer << (5 - bits)) & 31) as usize] as char);
    }
    out
}

/// A JWK (`kty: RSA`, with `kid`, `alg`, `use`) of the RSA private key `key` (PEM).
pub fn rsa_jwk(key: &Path, kid: &str) -> Value {
    let text = run(openssl()
        .args(["rsa", "-noout", "-text", "-modulus", "-in"])
        .arg(key));
    assert!(
        text.contains("publicExponent: 65537"),
        "the test key's exponent is not 65537:\n{text}"
    );
    let modulus = text
        .lines()
        .find_map(|l| l.strip_prefix("Modulus="))
        .expect("Modulus= line");
    let n = hex::decode(modulus.trim()).expect("hex modulus");
    json!({"kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig", "n": b64url(&n), "e": "AQAB"})
}

/// A JWK (`kty: EC`, P-256) of the certificate's key, with `kid` when given.
pub fn ec_jwk(cert: &Path, kid: Option<&str>) -> Value {
    let spki = spki_der(cert);
    // An uncompressed P-256 point ends the SubjectPublicKeyInfo: 0x04 || x || y.
    let point = &spki[spki.len() - 65..];
    assert_eq!(point[0], 4, "not an uncompressed point");
    let mut jwk =
        json!({"kty": "EC", "crv": "P-256", "x": b64url(&point[1..33]), "y": b64url(&point[33..])});
    if let Some(kid) = kid {
        jwk["kid"] = json!(kid);
        jwk["alg"] = json!("ES256");
        jwk["use"] = json!("sig");
    }
    jwk
}

/// A JWT of `header` and `claims`, signed with the private key `key` (PEM) by openssl;
/// `alg` is what the signature is (the header says what the test wants it to say).
pub fn sign(key: &Path, alg: Alg, header: &Value, claims: &Value) -> String {
    let input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let der = run_with_input(
        openssl().args(["dgst", "-sha256", "-sign"]).arg(key),
        input.as_bytes(),
    );
    let signature = match alg {
        Alg::Rs256 => der,
        Alg::Es256 => ecdsa_der_to_raw(&der, 32),
    };
    format!("{input}.{}", b64url(&signature))
}

/// openssl's ECDSA signature (DER `SEQUENCE { INTEGER r, INTEGER s }`) as JOSE wants
/// it: `r || s`, each left-padded to `n` bytes.
pub fn ecdsa_der_to_raw(der: &[u8], n: usize) -> Vec<u8> {
    fn length(der: &[u8], at: &mut usize) -> usize {
        let first = der[*at];
        *at += 1;
        if first < 0x80 {
            return usize::from(first);
        }
        let count = usize::from(first & 0x7f);
        let mut len = 0;
        for _ in 0..count {
            len = (len << 8) | usize::from(der[*at]);
            *at += 1;
        }
        len
    }
    assert_eq!(der[0], 0x30, "not a DER SEQUENCE: {der:02x?}");
    let mut at = 1;
    let total = length(der, &mut at);
    assert_eq!(at + total, der.len(), "DER length");
    let mut out = Vec::with_capacity(2 * n);
    for _ in 0..2 {
        assert_eq!(der[at], 0x02, "not a DER INTEGER");
        at += 1;
        let len = length(der, &mut at);
        let mut int = &der[at..at + len];
        at += len;
        while int.len() > n && int[0] == 0 {
            int = &int[1..];
        }
        assert!(int.len() <= n, "integer of {} bytes", int.len());
        out.extend(std::iter::repeat_n(0u8, n - int.len()));
        out.extend_from_slice(int);
    }
    out
}

/// The current Unix time in seconds.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}
