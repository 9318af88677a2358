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

/// `auth.token`: Distribution's token authentication against an external issuer.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenConfig {
    /// `realm`: the issuer's token endpoint, sent in challenges.
    pub realm: String,
    /// `service`: the audience tokens must name.
    pub service: String,
    /// `issuer`: the `iss` tokens must carry.
    pub issuer: String,
    /// `rootcertbundle`: PEM certificates whose keys sign tokens (by libtrust `kid`)
    /// or that `x5c` chains must end in.
    pub root_cert_bundle: Option<PathBuf>,
    /// `jwks`: a JSON Web Key Set file of signing keys (by `kid`).
    pub jwks: Option<PathBuf>,
    /// `signingalgorithms`: the allowed JWS algorithms (empty: every asymmetric one).
    pub signing_algorithms: Vec<String>,
    /// `autoredirect`: the realm is `autoredirectpath` on the host a request came to.
    pub auto_redirect: bool,
    /// `autoredirectpath` (default `/auth/token`).
    pub auto_redirect_path: String,
}

/// How a push to a project that does not exist is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProjectCreationConfig {
    Everyone,
    AdminOnly,
}

/// `auth.berth`: Berth's projects, users, robots and token service.
#[derive(Debug, Clone, PartialEq)]
pub struct BerthAuthConfig {
    /// `realm`: the token endpoint clients are sent to (default: `/service/token` on the
    /// host a request came to).
    pub realm: Option<String>,
    /// `service` (default `berth-registry`).
    pub service: String,
    /// `issuer` (default `berth-token-issuer`).
    pub issuer: String,
    /// `tokenexpiration` (default 30m).
    pub token_expiration: Duration,
    /// `adminpassword`: the first administrator's password, used when `admin` is
    /// created on first start.
    pub admin_password: Option<String>,
    /// `projectcreation`: `everyone` (default) or `adminonly`.
    pub project_creation: ProjectCreationConfig,
    /// `createprojectsonpush`: a push to a missing project creates it (default false).
    pub create_projects_on_push: bool,
    /// `robotprefix` (default `robot$`).
    pub robot_prefix: String,
    /// `pushnetworks`: CIDRs of clients that may push and delete (default: any).
    pub push_networks: Vec<ipnet::IpNet>,
    /// `ldap`: users may log in with their directory password.
    pub ldap: Option<super::ldap::LdapConfig>,
    /// `auditretention`: how long audit records are kept (default 90 days).
    pub audit_retention: Duration,
    /// `storagequota`: the storage quota a new project gets, in bytes (default: none).
    pub storage_quota: Option<u64>,
    /// `mirrors`: host names that serve one project each as a pull-only mirror.
    pub mirrors: Vec<MirrorHostConfig>,
}

/// One `auth.berth.mirrors` entry: every request that comes to `host` (and `port`, when
/// one is given) is a pull from `project`, under the names of the registry it mirrors
/// (a Docker Engine's `registry-mirrors` asks `hub-mirror.example.com` for
/// `library/alpine`, served from `hub/library/alpine`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorHostConfig {
    /// Lower case, without a trailing dot; an IPv6 address without brackets.
    pub host: String,
    pub port: Option<u16>,
    pub project: String,
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
    /// `auth.htpasswd`; `None` (and no other controller) means open access.
    pub htpasswd: Option<HtpasswdConfig>,
    /// `auth.token`: tokens of an external issuer.
    pub token: Option<TokenConfig>,
    /// `auth.berth`: projects, users, robots, Berth's own tokens.
    pub berth: Option<BerthAuthConfig>,
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

/// `auth.token`, as Distribution reads it (2.8's keys, and 3.0's `jwks`,
/// `signingalgorithms`, `autoredirect`).
fn token(tree: &Value) -> Result<TokenConfig, ConfigError> {
    let need = |key: &str| -> Result<String, ConfigError> {
        get_str(tree, key)?
            .filter(|s| !s.is_empty())
            .ok_or_else(|| bad(key, "must be set for token authentication"))
    };
    let path = |key: &str| -> Result<Option<PathBuf>, ConfigError> {
        Ok(get_str(tree, key)?
            .filter(|s| !s.is_empty())
            .map(PathBuf::from))
    };
    let root_cert_bundle = path("auth.token.rootcertbundle")?;
    let jwks = path("auth.token.jwks")?;
    if root_cert_bundle.is_none() && jwks.is_none() {
        return Err(bad(
            "auth.token.rootcertbundle",
            "must be set for token authentication (or auth.token.jwks): without trusted keys no token could be verified",
        ));
    }
    let signing_algorithms = string_list(tree, "auth.token.signingalgorithms")?;
    for a in &signing_algorithms {
        if crate::auth::token::parse_algorithm(a).is_none() {
            return Err(bad(
                "auth.token.signingalgorithms",
                format!("{a:?} is not an allowed signing algorithm (use ES256, ES384, RS256, RS384, RS512, PS256, PS384, PS512 or EdDSA; none and shared-secret HS* are never accepted)"),
            ));
        }
    }
    let auto_redirect = get_bool(tree, "auth.token.autoredirect")?.unwrap_or(false);
    let realm = if auto_redirect {
        get_str(tree, "auth.token.realm")?.unwrap_or_default()
    } else {
        need("auth.token.realm")?
    };
    Ok(TokenConfig {
        realm,
        service: need("auth.token.service")?,
        issuer: need("auth.token.issuer")?,
        root_cert_bundle,
        jwks,
        signing_algorithms,
        auto_redirect,
        auto_redirect_path: get_str(tree, "auth.token.autoredirectpath")?
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "/auth/token".into()),
    })
}

/// `auth.berth`.
fn berth(tree: &Value, warnings: &mut Vec<String>) -> Result<BerthAuthConfig, ConfigError> {
    let text = |key: &str, default: &str| -> Result<String, ConfigError> {
        Ok(get_str(tree, key)?
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| default.to_string()))
    };
    let token_expiration = match get_str(tree, "auth.berth.tokenexpiration")? {
        None => Duration::from_secs(30 * 60),
        Some(s) => parse_duration(&s)
            .filter(|d| d.as_secs() >= 60)
            .ok_or_else(|| {
                bad(
                    "auth.berth.tokenexpiration",
                    format!("{s:?} is not a duration of a minute or more, like 30m"),
                )
            })?,
    };
    let project_creation = match get_str(tree, "auth.berth.projectcreation")?.as_deref() {
        None | Some("") | Some("everyone") => ProjectCreationConfig::Everyone,
        Some("adminonly") => ProjectCreationConfig::AdminOnly,
        Some(other) => {
            return Err(bad(
                "auth.berth.projectcreation",
                format!("{other:?} is not a choice: use everyone or adminonly"),
            ))
        }
    };
    let mut push_networks = Vec::new();
    for n in string_list(tree, "auth.berth.pushnetworks")? {
        let net: ipnet::IpNet = n
            .parse()
            .or_else(|_| n.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
            .map_err(|_| {
                bad(
                    "auth.berth.pushnetworks",
                    format!("{n:?} is not a network like 10.0.0.0/8 or an address"),
                )
            })?;
        push_networks.push(net);
    }
    let robot_prefix = text("auth.berth.robotprefix", "robot$")?;
    if robot_prefix.contains(['/', ':', '+']) {
        return Err(bad(
            "auth.berth.robotprefix",
            "must not contain '/', ':' or '+'",
        ));
    }
    let storage_quota = match get_str(tree, "auth.berth.storagequota")?.as_deref() {
        None | Some("") | Some("-1") => None,
        Some(s) => Some(super::parse_size(s).ok_or_else(|| {
            bad(
                "auth.berth.storagequota",
                format!("{s:?} is not a size like 10GiB or 500000000, or -1 for none"),
            )
        })?),
    };
    Ok(BerthAuthConfig {
        storage_quota,
        mirrors: mirrors(tree)?,
        realm: get_str(tree, "auth.berth.realm")?.filter(|s| !s.is_empty()),
        service: text("auth.berth.service", "berth-registry")?,
        issuer: text("auth.berth.issuer", "berth-token-issuer")?,
        token_expiration,
        admin_password: get_str(tree, "auth.berth.adminpassword")?.filter(|s| !s.is_empty()),
        project_creation,
        create_projects_on_push: get_bool(tree, "auth.berth.createprojectsonpush")?
            .unwrap_or(false),
        robot_prefix,
        push_networks,
        ldap: super::ldap::read(tree, warnings)?,
        audit_retention: match get_str(tree, "auth.berth.auditretention")? {
            None => Duration::from_secs(90 * 24 * 3600),
            Some(s) => parse_duration(&s)
                .filter(|d| d.as_secs() >= 3600)
                .ok_or_else(|| {
                    bad(
                        "auth.berth.auditretention",
                        format!("{s:?} is not a duration of an hour or more, like 2160h"),
                    )
                })?,
        },
    })
}

/// `auth.berth.mirrors`: a map of host name to project, or a list (a comma-separated
/// `REGISTRY_AUTH_BERTH_MIRRORS`) of `host=project`.
fn mirrors(tree: &Value) -> Result<Vec<MirrorHostConfig>, ConfigError> {
    const KEY: &str = "auth.berth.mirrors";
    let pairs: Vec<(String, String)> = match get(tree, KEY) {
        Some(Value::Mapping(m)) => m
            .iter()
            .map(|(host, v)| {
                scalar(v)
                    .map(|p| (host.to_string(), p.to_string()))
                    .ok_or_else(|| {
                        bad(KEY, format!("the value of {host:?} must be a project name"))
                    })
            })
            .collect::<Result<_, _>>()?,
        _ => string_list(tree, KEY)?
            .into_iter()
            .map(|e| {
                e.split_once('=')
                    .map(|(h, p)| (h.trim().to_string(), p.trim().to_string()))
                    .ok_or_else(|| {
                        bad(
                            KEY,
                            format!("{e:?} is not host=project, like hub-mirror.example.com=hub"),
                        )
                    })
            })
            .collect::<Result<_, _>>()?,
    };
    let mut out: Vec<MirrorHostConfig> = Vec::new();
    for (given, project) in pairs {
        let m = mirror_host(&given, &project).map_err(|why| bad(KEY, why))?;
        if out.iter().any(|o| o.host == m.host && o.port == m.port) {
            return Err(bad(KEY, format!("{given:?} is given twice")));
        }
        out.push(m);
    }
    Ok(out)
}

/// The entry of `mirrors` that a request addressed to `authority` (a `Host` header's
/// `host[:port]`) is routed to: an entry naming the port wins over one for the host on
/// any port; a request without a port matches an entry for port 80 or 443; addresses
/// are compared as addresses.
pub fn mirror_for<'a>(
    mirrors: &'a [MirrorHostConfig],
    authority: &str,
) -> Option<&'a MirrorHostConfig> {
    let lower = authority.to_ascii_lowercase();
    let (host, port) = split_host_port(&lower)?;
    let host = host.trim_end_matches('.');
    let address = host.parse::<std::net::IpAddr>().ok();
    let same_host = |m: &&MirrorHostConfig| {
        m.host == host || (address.is_some() && m.host.parse().ok() == address)
    };
    mirrors
        .iter()
        .filter(same_host)
        .find(|m| {
            m.port.is_some()
                && (m.port == port || (port.is_none() && matches!(m.port, Some(80 | 443))))
        })
        .or_else(|| mirrors.iter().filter(same_host).find(|m| m.port.is_none()))
}

/// A mirror host name must not be the registry's own (`http.host`): every request to it
/// would be a pull from the mirror's project, and every push would be refused. Checked
/// with the routing's own matching, so what is refused here is exactly what would be
/// routed.
pub(super) fn check_mirrors_against_host(
    mirrors: &[MirrorHostConfig],
    http_host: &str,
) -> Result<(), ConfigError> {
    let authority = http_host
        .split_once("://")
        .map_or(http_host, |(_, rest)| rest)
        .split('/')
        .next()
        .unwrap_or_default();
    if let Some(m) = mirror_for(mirrors, authority) {
        return Err(bad(
            "auth.berth.mirrors",
            format!(
                "{:?} is this registry's own host (http.host {http_host:?}): every request to it would be a pull from project {:?} and every push refused; give the mirror a host name of its own",
                m.host, m.project
            ),
        ));
    }
    Ok(())
}

fn mirror_host(given: &str, project: &str) -> Result<MirrorHostConfig, String> {
    let lower = given.trim().trim_end_matches('/').to_ascii_lowercase();
    if lower.contains("://") || lower.contains('/') || lower.contains('@') {
        return Err(format!(
            "{given:?} must be a host name (and port), like hub-mirror.example.com or hub-mirror.example.com:5000: no scheme, user or path"
        ));
    }
    let (host, port) = split_host_port(&lower).ok_or_else(|| {
        format!("{given:?} is not a host name, an address, or either with a port")
    })?;
    let host = host.trim_end_matches('.').to_string();
    let host_ok = !host.is_empty()
        && (host.parse::<std::net::IpAddr>().is_ok()
            || host.split('.').all(|l| {
                !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            }));
    if !host_ok {
        return Err(format!("{given:?} is not a host name or an address"));
    }
    let project_ok = !project.is_empty()
        && project.len() <= 255
        && project.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && project
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'));
    if !project_ok {
        return Err(format!(
            "{project:?} (the project of {given:?}) is not a project name: use lower-case letters, digits, '.', '_' and '-'"
        ));
    }
    Ok(MirrorHostConfig {
        host,
        port,
        project: project.to_string(),
    })
}

/// `host`, `host:port`, `[v6]`, `[v6]:port` or a bare IPv6 address.
pub fn split_host_port(text: &str) -> Option<(&str, Option<u16>)> {
    if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        return match after {
            "" => Some((host, None)),
            _ => Some((host, Some(after.strip_prefix(':')?.parse().ok()?))),
        };
    }
    match text.rsplit_once(':') {
        Some((h, _)) if h.contains(':') => Some((text, None)), // a bare IPv6 address
        Some((h, p)) => Some((h, Some(p.parse().ok()?))),
        None => Some((text, None)),
    }
}

/// A list of strings: a YAML sequence, or one comma-separated string (as a `REGISTRY_*`
/// variable gives it).
fn string_list(tree: &Value, key: &str) -> Result<Vec<String>, ConfigError> {
    match get(tree, key) {
        None => Ok(Vec::new()),
        Some(Value::Sequence(items)) => items
            .iter()
            .map(|v| scalar(v).ok_or_else(|| bad(key, "expected a list of strings")))
            .collect(),
        Some(v) => Ok(scalar(v)
            .ok_or_else(|| bad(key, "expected a list of strings"))?
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()),
    }
}

pub(super) fn read(tree: &Value) -> Result<AuthConfig, ConfigError> {
    let mut c = AuthConfig::default();
    // An operator who asked for authentication Berth cannot do must not get an open
    // registry: refuse to start rather than serve everyone.
    // Any access controller but htpasswd is refused, as Distribution refuses one it
    // does not know (a typo included).
    if let Some(section) = get(tree, "auth").and_then(Value::as_mapping) {
        for name in section.keys() {
            if matches!(name, "htpasswd" | "token" | "berth") {
                continue;
            }
            let why = match name {
                "silly" => "silly authentication (a test controller of Distribution that lets anyone in) is not implemented".to_string(),
                _ => format!(
                    "this access controller is unknown (Berth knows htpasswd, token and berth){}",
                    did_you_mean(name, ["htpasswd", "token", "berth"].into_iter())
                        .map(|n| format!("; did you mean {n}?"))
                        .unwrap_or_default()
                ),
            };
            return Err(bad(
                &format!("auth.{name}"),
                format!("{why}, and Berth does not start open when authentication was asked for: use auth.htpasswd, auth.token or auth.berth, or remove auth.{name}"),
            ));
        }
        if section.keys().count() > 1 {
            let names: Vec<&str> = section.keys().collect();
            return Err(bad(
                "auth",
                format!(
                    "names {} access controllers ({}): keep exactly one",
                    names.len(),
                    names.join(", ")
                ),
            ));
        }
    }
    if has_key(tree, "auth", "token") {
        c.token = Some(token(tree)?);
    }
    if has_key(tree, "auth", "berth") {
        c.berth = Some(berth(tree, &mut c.warnings)?);
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
