//! `proxy`: Berth as a pull-through cache of one upstream registry (Distribution's
//! `proxy.remoteurl`, `username`, `password`, and 3.x's `ttl`), plus Berth's own
//! `proxy.expiryinterval` (how often expired cache entries are looked for).

use super::yaml::Value;
use super::{bad, get, get_str, parse_duration, ConfigError};
use std::time::Duration;

/// Distribution 3's default `proxy.ttl`.
pub const DEFAULT_TTL: Duration = Duration::from_secs(168 * 3600);

/// The `proxy` section.
#[derive(Clone, PartialEq)]
pub struct ProxyConfig {
    /// `proxy.remoteurl`: the upstream registry's base URL (`https://registry-1.docker.io`),
    /// without a trailing slash.
    pub remote_url: String,
    /// `proxy.username` / `proxy.password`: credentials for the upstream (Basic, or to
    /// obtain Bearer tokens).
    pub username: Option<String>,
    pub password: Option<String>,
    /// `proxy.ttl`: cached content unused for this long is removed; `None` keeps it forever
    /// (`ttl: 0`).
    pub ttl: Option<Duration>,
    /// `proxy.expiryinterval` (Berth): how often the expiry job runs.
    pub expiry_interval: Duration,
}

impl std::fmt::Debug for ProxyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyConfig")
            .field("remote_url", &self.remote_url)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("ttl", &self.ttl)
            .field("expiry_interval", &self.expiry_interval)
            .finish()
    }
}

/// Check that `url` is an absolute http(s) URL with a host and nothing after the path.
pub fn check_remote_url(url: &str) -> Result<String, String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| format!("{url:?} must start with http:// or https://"))?;
    let host = rest.split('/').next().unwrap_or("");
    if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == '@') {
        return Err(format!(
            "{url:?} has no usable host: give a URL such as https://registry-1.docker.io"
        ));
    }
    if rest.contains(['?', '#']) {
        return Err(format!("{url:?} must not have a query or fragment"));
    }
    Ok(url.trim_end_matches('/').to_string())
}

fn duration(tree: &Value, key: &str) -> Result<Option<Duration>, ConfigError> {
    match get_str(tree, key)? {
        None => Ok(None),
        // Go's time.ParseDuration accepts a bare 0.
        Some(s) if s.trim() == "0" => Ok(Some(Duration::ZERO)),
        Some(s) => parse_duration(&s).map(Some).ok_or_else(|| {
            bad(
                key,
                format!("{s:?} is not a duration like 90s, 30m or 168h"),
            )
        }),
    }
}

/// Read the `proxy` section; `None` when `proxy.remoteurl` is not set.
pub fn read(tree: &Value) -> Result<Option<ProxyConfig>, ConfigError> {
    if let Some(section) = get(tree, "proxy") {
        if !section.is_mapping() {
            return Err(bad(
                "proxy",
                "must be a map with remoteurl (and optionally username, password, ttl)",
            ));
        }
    }
    let Some(url) = get_str(tree, "proxy.remoteurl")? else {
        if get(tree, "proxy").is_some() {
            return Err(bad(
                "proxy.remoteurl",
                "is required when the proxy section is present (the upstream registry's URL)",
            ));
        }
        return Ok(None);
    };
    let remote_url = check_remote_url(url.trim()).map_err(|r| bad("proxy.remoteurl", r))?;
    let username = get_str(tree, "proxy.username")?.filter(|s| !s.is_empty());
    let password = get_str(tree, "proxy.password")?.filter(|s| !s.is_empty());
    if username.is_some() != password.is_some() {
        return Err(bad(
            "proxy.username",
            "proxy.username and proxy.password must be given together",
        ));
    }
    let ttl = match duration(tree, "proxy.ttl")? {
        None => Some(DEFAULT_TTL),
        Some(d) if d.is_zero() => None,
        Some(d) => Some(d),
    };
    let default_interval = ttl
        .map(|t| (t / 10).clamp(Duration::from_secs(1), Duration::from_secs(600)))
        .unwrap_or(Duration::from_secs(600));
    let expiry_interval = match duration(tree, "proxy.expiryinterval")? {
        None => default_interval,
        Some(d) if d.is_zero() => {
            return Err(bad("proxy.expiryinterval", "must be greater than zero"))
        }
        Some(d) => d,
    };
    Ok(Some(ProxyConfig {
        remote_url,
        username,
        password,
        ttl,
        expiry_interval,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_yaml(s: &str) -> Result<Option<ProxyConfig>, ConfigError> {
        read(&super::super::yaml::parse(s).expect("yaml"))
    }

    #[test]
    fn proxy_section() {
        assert!(read_yaml("{}").expect("ok").is_none());
        let p = read_yaml(
            "proxy:\n  remoteurl: https://registry-1.docker.io/\n  username: u\n  password: p\n",
        )
        .expect("ok")
        .expect("some");
        assert_eq!(p.remote_url, "https://registry-1.docker.io");
        assert_eq!(p.ttl, Some(DEFAULT_TTL));
        assert_eq!(p.expiry_interval, Duration::from_secs(600));
        assert!(!format!("{p:?}").contains("\"p\""), "password is redacted");
        let p = read_yaml("proxy:\n  remoteurl: http://127.0.0.1:5000\n  ttl: 0\n")
            .expect("ok")
            .expect("some");
        assert_eq!(p.ttl, None);
        let p = read_yaml("proxy:\n  remoteurl: http://h\n  ttl: 2s\n")
            .expect("ok")
            .expect("some");
        assert_eq!(p.ttl, Some(Duration::from_secs(2)));
        assert_eq!(p.expiry_interval, Duration::from_secs(1));
        for bad_url in [
            "ftp://x",
            "registry-1.docker.io",
            "https://",
            "http://h?x=1",
        ] {
            let e = read_yaml(&format!("proxy:\n  remoteurl: {bad_url:?}\n")).expect_err(bad_url);
            assert!(e.to_string().contains("proxy.remoteurl"), "{e}");
        }
        let e = read_yaml("proxy:\n  remoteurl: http://h\n  username: u\n").expect_err("pair");
        assert!(e.to_string().contains("proxy.password"), "{e}");
        let e = read_yaml("proxy:\n  remoteurl: http://h\n  ttl: soon\n").expect_err("ttl");
        assert!(e.to_string().contains("proxy.ttl"), "{e}");
    }
}
