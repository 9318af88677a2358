//! Access and transport settings: `auth.htpasswd`, `http.tls`, `http.http2`,
//! `http.headers`, `http.draintimeout` and `storage.maintenance.readonly`, read with
//! Distribution 2.8's meaning. Produces plain values; knows nothing of HTTP or TLS
//! libraries.

use super::yaml::Value;
use super::{bad, did_you_mean, get, get_bool, get_str, parse_duration, scalar, ConfigError};
use std::path::PathBuf;
use std::time::Duration;

/// `auth.htpasswd`: Basic authentication against an htpasswd file of bcrypt hashes.
#[derive(Debug, Clone, PartialEq)]
pub struct HtpasswdConfig {
    /// `realm`: named in the `WWW-Authenticate` challenge.
    pub realm: String,
    /// `path`: the htpasswd file (created with user `docker` when missing).
    pub path: PathBuf,
}

/// The lowest TLS version the server accepts (`http.tls.minimumtls`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

/// `http.tls`: serve HTTPS, optionally requiring client certificates.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsConfig {
    /// `certificate`: PEM chain, server certificate first.
    pub certificate: PathBuf,
    /// `key`: PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// `clientcas`: PEM CA files; when non-empty every client must present a
    /// certificate signed by one of them (mutual TLS).
    pub client_cas: Vec<PathBuf>,
    /// `minimumtls` (default tls1.2).
    pub minimum: TlsVersion,
    /// `ciphersuites`: Go/IANA names of the TLS 1.2 suites to offer (empty: the
    /// defaults). TLS 1.3 suites are always on, as in Go; naming them changes nothing.
    pub cipher_suites: Vec<String>,
}

/// Every name Distribution 2.8 accepts in `http.tls.ciphersuites` (Go's names).
pub const GO_CIPHER_SUITES: &[&str] = &[
    "TLS_RSA_WITH_RC4_128_SHA",
    "TLS_RSA_WITH_3DES_EDE_CBC_SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA256",
    "TLS_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_RC4_128_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_RC4_128_SHA",
    "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
];

/// The access and transport section of [`super::Config`].
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AuthConfig {
    /// `auth.htpasswd`; `None` means open access.
    pub htpasswd: Option<HtpasswdConfig>,
    /// `http.tls`; `None` means plain HTTP.
    pub tls: Option<TlsConfig>,
    /// `http.http2.disabled`: offer only HTTP/1.1 over TLS.
    pub http2_disabled: bool,
    /// `http.headers`: added to every API response, in order.
    pub headers: Vec<(String, String)>,
    /// `http.draintimeout`: how long shutdown waits for in-flight requests; `None` (or
    /// 0) waits until they finish.
    pub drain_timeout: Option<Duration>,
    /// `storage.maintenance.readonly.enabled`: refuse every write with 405.
    pub read_only: bool,
    /// Accepted settings that do nothing, to log at start-up (`http.tls.letsencrypt`
    /// beside a certificate).
    pub warnings: Vec<String>,
}

pub(super) fn read(tree: &Value) -> Result<AuthConfig, ConfigError> {
    let mut c = AuthConfig::default();
    // An operator who asked for authentication Berth cannot do must not get an open
    // registry: refuse to start rather than serve everyone.
    // Any access controller but htpasswd is refused, as Distribution refuses one it
    // does not know (a typo included).
    if let Some(section) = get(tree, "auth").and_then(Value::as_mapping) {
        for name in section.keys() {
            if name == "htpasswd" {
                continue;
            }
            let why = match name {
                "token" | "silly" => format!("{name} authentication is not implemented yet"),
                _ => format!(
                    "this access controller is unknown (Distribution knows htpasswd, token and silly){}",
                    did_you_mean(name, ["htpasswd", "token", "silly"].into_iter())
                        .map(|n| format!("; did you mean {n}?"))
                        .unwrap_or_default()
                ),
            };
            return Err(bad(
                &format!("auth.{name}"),
                format!("{why}, and Berth does not start open when authentication was asked for: use auth.htpasswd, or authenticate in a reverse proxy in front of Berth and remove auth.{name}"),
            ));
        }
    }
    if get(tree, "auth.htpasswd").is_some() || has_key(tree, "auth", "htpasswd") {
        let need = |key: &str| -> Result<String, ConfigError> {
            get_str(tree, key)?
                .filter(|s| !s.is_empty())
                .ok_or_else(|| bad(key, "must be set for htpasswd authentication"))
        };
        c.htpasswd = Some(HtpasswdConfig {
            realm: need("auth.htpasswd.realm")?,
            path: PathBuf::from(need("auth.htpasswd.path")?),
        });
    }
    if let Some(cert) = get_str(tree, "http.tls.certificate")?.filter(|s| !s.is_empty()) {
        let key = get_str(tree, "http.tls.key")?
            .filter(|s| !s.is_empty())
            .ok_or_else(|| bad("http.tls.key", "must be set when http.tls.certificate is"))?;
        let client_cas = match get(tree, "http.tls.clientcas") {
            None => Vec::new(),
            Some(Value::Sequence(items)) => items
                .iter()
                .map(|v| {
                    v.as_str().map(PathBuf::from).ok_or_else(|| {
                        bad("http.tls.clientcas", "expected a list of PEM file paths")
                    })
                })
                .collect::<Result<_, _>>()?,
            Some(Value::Scalar(s)) => vec![PathBuf::from(&s.text)],
            Some(_) => {
                return Err(bad(
                    "http.tls.clientcas",
                    "expected a list of PEM file paths",
                ))
            }
        };
        let minimum = match get_str(tree, "http.tls.minimumtls")?.as_deref() {
            None | Some("") | Some("tls1.2") => TlsVersion::Tls12,
            Some("tls1.3") => TlsVersion::Tls13,
            Some(v @ ("tls1.0" | "tls1.1")) => {
                return Err(bad(
                    "http.tls.minimumtls",
                    format!("{v} is not supported (Berth speaks TLS 1.2 and 1.3 only): use tls1.2 or tls1.3"),
                ))
            }
            Some(other) => {
                return Err(bad(
                    "http.tls.minimumtls",
                    format!("unknown minimum TLS level {other:?}: use tls1.2 or tls1.3"),
                ))
            }
        };
        let cipher_suites = match get(tree, "http.tls.ciphersuites") {
            None => Vec::new(),
            Some(Value::Sequence(items)) => items
                .iter()
                .map(|v| {
                    let name = v.as_str().ok_or_else(|| {
                        bad("http.tls.ciphersuites", "expected a list of cipher suite names")
                    })?;
                    if !GO_CIPHER_SUITES.contains(&name) {
                        return Err(bad(
                            "http.tls.ciphersuites",
                            format!("unknown TLS cipher suite {name:?} (names as in Go and IANA, e.g. TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256)"),
                        ));
                    }
                    Ok(name.to_string())
                })
                .collect::<Result<_, _>>()?,
            Some(_) => {
                return Err(bad(
                    "http.tls.ciphersuites",
                    "expected a list of cipher suite names",
                ))
            }
        };
        c.tls = Some(TlsConfig {
            certificate: PathBuf::from(cert),
            key: PathBuf::from(key),
            client_cas,
            minimum,
            cipher_suites,
        });
    }
    letsencrypt(tree, &mut c)?;
    if c.tls.is_none() {
        for key in [
            "http.tls.key",
            "http.tls.clientcas",
            "http.tls.minimumtls",
            "http.tls.ciphersuites",
        ] {
            if get(tree, key).is_some() {
                return Err(bad(
                    key,
                    "is set but http.tls.certificate is not: set the certificate to serve HTTPS, or remove the key",
                ));
            }
        }
    }
    c.http2_disabled = get_bool(tree, "http.http2.disabled")?.unwrap_or(false);
    if let Some(headers) = get(tree, "http.headers") {
        let map = headers
            .as_mapping()
            .ok_or_else(|| bad("http.headers", "expected a map of header name to values"))?;
        for (name, values) in map.iter() {
            let key = format!("http.headers.{name}");
            let tchar = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
            if name.is_empty() || !name.chars().all(tchar) {
                return Err(bad(&key, "not a valid HTTP header name"));
            }
            let values: Vec<String> = match values {
                Value::Sequence(items) => items
                    .iter()
                    .map(|v| scalar(v).ok_or_else(|| bad(&key, "expected a list of strings")))
                    .collect::<Result<_, _>>()?,
                v => vec![scalar(v).ok_or_else(|| bad(&key, "expected a list of strings"))?],
            };
            for v in values {
                if v.chars().any(|c| c.is_control() && c != '\t') {
                    return Err(bad(
                        &key,
                        "header values must not contain control characters",
                    ));
                }
                c.headers.push((name.to_string(), v));
            }
        }
    }
    if let Some(s) = get_str(tree, "http.draintimeout")? {
        let d = parse_duration(&s).ok_or_else(|| {
            bad(
                "http.draintimeout",
                format!("{s:?} is not a duration like 60s"),
            )
        })?;
        c.drain_timeout = (!d.is_zero()).then_some(d);
    }
    if let Some(ro) = get(tree, "storage.maintenance.readonly") {
        if !ro.is_mapping() {
            return Err(bad(
                "storage.maintenance.readonly",
                "must be a map with the key enabled: true|false",
            ));
        }
        c.read_only = get_bool(tree, "storage.maintenance.readonly.enabled")?.unwrap_or(false);
    }
    Ok(c)
}

/// `http.tls.letsencrypt`: Berth obtains no certificates itself (its users are often
/// air-gapped, and ACME needs the registry reachable from the internet). Active in 2.8
/// when `cachefile` is set: then Berth refuses to start unless a certificate is
/// configured too, in which case the section is ignored with a warning (2.8 refuses
/// that combination outright).
fn letsencrypt(tree: &Value, c: &mut AuthConfig) -> Result<(), ConfigError> {
    if get(tree, "http.tls.letsencrypt").is_none() {
        return Ok(());
    }
    let active = get_str(tree, "http.tls.letsencrypt.cachefile")?.is_some_and(|f| !f.is_empty());
    if !active {
        c.warnings.push(
            "configuration key http.tls.letsencrypt has no cachefile, so it does nothing (as in Distribution): remove it".into(),
        );
    } else if c.tls.is_some() {
        c.warnings.push(
            "configuration key http.tls.letsencrypt is ignored: Berth does not fetch certificates from Let's Encrypt and serves the configured http.tls.certificate".into(),
        );
    } else {
        return Err(bad(
            "http.tls.letsencrypt",
            "Berth does not obtain certificates from Let's Encrypt (it runs where the ACME servers may be unreachable): get a certificate and key (e.g. `certbot certonly --standalone -d registry.example.com`, or from your own CA) and set http.tls.certificate and http.tls.key to their files, then remove http.tls.letsencrypt",
        ));
    }
    Ok(())
}

/// `auth: {htpasswd: }` (null value) still names the htpasswd controller.
fn has_key(tree: &Value, section: &str, key: &str) -> bool {
    get(tree, section)
        .and_then(Value::as_mapping)
        .is_some_and(|m| m.contains_key(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_yaml(yaml: &str) -> Result<AuthConfig, ConfigError> {
        let tree = super::super::yaml::parse(yaml).expect("yaml");
        read(&tree)
    }

    #[test]
    fn htpasswd_needs_realm_and_path() {
        let c = read_yaml("auth:\n  htpasswd:\n    realm: r\n    path: /x\n").expect("ok");
        assert_eq!(
            c.htpasswd,
            Some(HtpasswdConfig {
                realm: "r".into(),
                path: "/x".into()
            })
        );
        let e = read_yaml("auth:\n  htpasswd:\n    path: /x\n").expect_err("no realm");
        assert!(e.to_string().contains("auth.htpasswd.realm"), "{e}");
        let e = read_yaml("auth:\n  htpasswd:\n").expect_err("empty");
        assert!(e.to_string().contains("auth.htpasswd"), "{e}");
    }

    #[test]
    fn tls_versions_and_clientcas() {
        let c = read_yaml("http:\n  tls:\n    certificate: c\n    key: k\n    clientcas: [a, b]\n    minimumtls: tls1.3\n").expect("ok");
        let tls = c.tls.expect("tls");
        assert_eq!(tls.client_cas, vec![PathBuf::from("a"), PathBuf::from("b")]);
        assert_eq!(tls.minimum, TlsVersion::Tls13);
        let e =
            read_yaml("http:\n  tls:\n    certificate: c\n    key: k\n    minimumtls: tls1.0\n")
                .expect_err("1.0");
        assert!(e.to_string().contains("tls1.2 or tls1.3"), "{e}");
        let e = read_yaml("http:\n  tls:\n    certificate: c\n").expect_err("no key");
        assert!(e.to_string().contains("http.tls.key"), "{e}");
        let e = read_yaml("http:\n  tls:\n    clientcas: [a]\n").expect_err("no certificate");
        assert!(e.to_string().contains("http.tls.certificate"), "{e}");
    }

    #[test]
    fn letsencrypt_needs_a_certificate() {
        let e =
            read_yaml("http:\n  tls:\n    letsencrypt:\n      cachefile: /c\n      email: a@b\n")
                .expect_err("refused");
        assert!(e.to_string().contains("certbot"), "{e}");
        let c = read_yaml("http:\n  tls:\n    certificate: c\n    key: k\n    letsencrypt:\n      cachefile: /c\n").expect("ok");
        assert!(c.tls.is_some());
        assert!(c.warnings[0].contains("is ignored"), "{:?}", c.warnings);
        let c = read_yaml("http:\n  tls:\n    letsencrypt:\n      email: a@b\n").expect("inactive");
        assert!(c.tls.is_none() && c.warnings[0].contains("no cachefile"));
    }

    #[test]
    fn cipher_suite_names() {
        let c = read_yaml("http:\n  tls:\n    certificate: c\n    key: k\n    ciphersuites: [TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, TLS_AES_128_GCM_SHA256]\n").expect("ok");
        assert_eq!(c.tls.expect("tls").cipher_suites.len(), 2);
        let e = read_yaml(
            "http:\n  tls:\n    certificate: c\n    key: k\n    ciphersuites: [TLS_MADE_UP]\n",
        )
        .expect_err("unknown");
        assert!(e.to_string().contains("TLS_MADE_UP"), "{e}");
    }

    #[test]
    fn headers_readonly_drain() {
        let c = read_yaml("http:\n  headers:\n    X-Content-Type-Options: [nosniff]\n    X-Two: [a, b]\n  draintimeout: 5s\nstorage:\n  maintenance:\n    readonly:\n      enabled: true\n").expect("ok");
        assert_eq!(
            c.headers,
            vec![
                ("X-Content-Type-Options".to_string(), "nosniff".to_string()),
                ("X-Two".to_string(), "a".to_string()),
                ("X-Two".to_string(), "b".to_string()),
            ]
        );
        assert!(c.read_only);
        assert_eq!(c.drain_timeout, Some(Duration::from_secs(5)));
        let e = read_yaml("storage:\n  maintenance:\n    readonly: true\n").expect_err("not map");
        assert!(
            e.to_string().contains("storage.maintenance.readonly"),
            "{e}"
        );
    }
}
