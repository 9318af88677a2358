//! The operations sections of Distribution's configuration: `http.debug` (the debug
//! server and its Prometheus endpoint) and `health` (storage driver, file, HTTP and TCP
//! checks), read into [`OpsConfig`] with Distribution 2.8's defaults. Knows nothing of
//! how the checks run or how the debug server serves.

use super::yaml::Value;
use super::{bad, get, get_bool, get_int, get_str, go_duration, ConfigError};
use std::time::Duration;

/// Distribution's default interval for every health check.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);

/// `http.debug` and `health`.
#[derive(Debug, Clone, PartialEq)]
pub struct OpsConfig {
    /// `http.debug.addr`: where the plain-HTTP debug server listens (none: not started).
    pub debug_addr: Option<String>,
    /// `http.debug.prometheus.enabled`: serve metrics on the debug server.
    pub prometheus: bool,
    /// `http.debug.prometheus.path` (default `/metrics`).
    pub prometheus_path: String,
    /// `health`: the checks that gate the main port.
    pub checks: Vec<HealthCheck>,
}

impl Default for OpsConfig {
    fn default() -> Self {
        OpsConfig {
            debug_addr: None,
            prometheus: false,
            prometheus_path: "/metrics".into(),
            checks: Vec::new(),
        }
    }
}

/// One configured health check.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheck {
    /// How often it runs; the first run is one interval after start (as in Distribution).
    pub interval: Duration,
    /// Consecutive failures before it counts as failing (0 and 1: the first failure).
    pub threshold: u32,
    pub probe: Probe,
}

/// What a health check looks at.
#[derive(Debug, Clone, PartialEq)]
pub enum Probe {
    /// `health.storagedriver`: the blob store (and the metadata database) answer; the
    /// configured driver's name (`filesystem`, `s3`) names the check, as in Distribution.
    Storage(String),
    /// `health.file[]`: failing while the file exists.
    File(String),
    /// `health.http[]`: a HEAD request must answer `status`.
    Http {
        uri: String,
        headers: Vec<(String, String)>,
        status: u16,
        timeout: Option<Duration>,
    },
    /// `health.tcp[]`: a TCP connection must open.
    Tcp {
        addr: String,
        timeout: Option<Duration>,
    },
}

fn number(tree: &Value, key: &str) -> Result<Option<u64>, ConfigError> {
    match get_int(tree, key)? {
        None => Ok(None),
        Some(n) => u64::try_from(n)
            .map(Some)
            .map_err(|_| bad(key, "expected a non-negative whole number")),
    }
}

fn interval(tree: &Value, key: &str) -> Result<Duration, ConfigError> {
    Ok(go_duration(tree, key)?
        .filter(|d| !d.is_zero())
        .unwrap_or(DEFAULT_INTERVAL))
}

fn threshold(tree: &Value, key: &str) -> Result<u32, ConfigError> {
    let n = number(tree, key)?.unwrap_or(0);
    u32::try_from(n).map_err(|_| bad(key, "too large"))
}

fn list<'a>(tree: &'a Value, key: &str) -> Result<&'a [Value], ConfigError> {
    match get(tree, key) {
        None => Ok(&[]),
        Some(Value::Sequence(s)) => Ok(s),
        Some(_) => Err(bad(key, "expected a list of checks")),
    }
}

fn required(item: &Value, key: &str, field: &str) -> Result<String, ConfigError> {
    get_str(item, field)?
        .filter(|s| !s.is_empty())
        .ok_or_else(|| bad(&format!("{key}.{field}"), "must be set"))
}

/// The configured storage driver's key (`storage.s3`, else the filesystem).
fn storage_driver(tree: &Value) -> String {
    let s3 = tree
        .as_mapping()
        .and_then(|m| m.get("storage"))
        .and_then(Value::as_mapping)
        .is_some_and(|m| m.contains_key("s3"));
    if s3 { "s3" } else { "filesystem" }.to_string()
}

/// Read `http.debug` and `health`.
pub(super) fn read(tree: &Value) -> Result<OpsConfig, ConfigError> {
    let mut c = OpsConfig {
        debug_addr: get_str(tree, "http.debug.addr")?.filter(|a| !a.is_empty()),
        prometheus: get_bool(tree, "http.debug.prometheus.enabled")?.unwrap_or(false),
        ..OpsConfig::default()
    };
    if let Some(path) = get_str(tree, "http.debug.prometheus.path")?.filter(|p| !p.is_empty()) {
        if !path.starts_with('/') {
            return Err(bad(
                "http.debug.prometheus.path",
                format!("{path:?} must start with /"),
            ));
        }
        c.prometheus_path = path;
    }
    if get_bool(tree, "health.storagedriver.enabled")?.unwrap_or(false) {
        c.checks.push(HealthCheck {
            interval: interval(tree, "health.storagedriver.interval")?,
            threshold: threshold(tree, "health.storagedriver.threshold")?,
            probe: Probe::Storage(storage_driver(tree)),
        });
    }
    for (i, item) in list(tree, "health.file")?.iter().enumerate() {
        let key = format!("health.file[{i}]");
        c.checks.push(HealthCheck {
            interval: interval(item, "interval")?,
            threshold: 0,
            probe: Probe::File(required(item, &key, "file")?),
        });
    }
    for (i, item) in list(tree, "health.http")?.iter().enumerate() {
        let key = format!("health.http[{i}]");
        let uri = required(item, &key, "uri")?;
        if !uri.starts_with("http://") {
            return Err(bad(
                &format!("{key}.uri"),
                format!("{uri:?}: only http:// URIs can be checked"),
            ));
        }
        let mut headers = Vec::new();
        if let Some(Value::Mapping(m)) = get(item, "headers") {
            for (k, v) in m.iter() {
                let name = k.to_string();
                let values: Vec<String> = match v {
                    Value::Sequence(s) => s
                        .iter()
                        .filter_map(|x| x.as_str().map(str::to_string))
                        .collect(),
                    Value::Scalar(s) => vec![s.text.clone()],
                    _ => Vec::new(),
                };
                headers.extend(values.into_iter().map(|v| (name.clone(), v)));
            }
        }
        let status = number(item, "statuscode")?.unwrap_or(200);
        c.checks.push(HealthCheck {
            interval: interval(item, "interval")?,
            threshold: threshold(item, "threshold")?,
            probe: Probe::Http {
                uri,
                headers,
                status: u16::try_from(status)
                    .map_err(|_| bad(&format!("{key}.statuscode"), "not an HTTP status"))?,
                timeout: go_duration(item, "timeout")?.filter(|d| !d.is_zero()),
            },
        });
    }
    for (i, item) in list(tree, "health.tcp")?.iter().enumerate() {
        let key = format!("health.tcp[{i}]");
        c.checks.push(HealthCheck {
            interval: interval(item, "interval")?,
            threshold: threshold(item, "threshold")?,
            probe: Probe::Tcp {
                addr: required(item, &key, "addr")?,
                timeout: go_duration(item, "timeout")?.filter(|d| !d.is_zero()),
            },
        });
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ops(yaml: &str) -> Result<OpsConfig, ConfigError> {
        read(&super::super::yaml::parse(yaml).expect("yaml"))
    }

    #[test]
    fn defaults_and_checks() {
        let c = ops("version: 0.1").expect("empty");
        assert_eq!(c, OpsConfig::default());
        let c = ops(
            "http:\n  debug:\n    addr: :5001\n    prometheus:\n      enabled: true\n\
             health:\n  storagedriver:\n    enabled: true\n    threshold: 3\n\
             \x20 file:\n    - file: /tmp/down\n      interval: 5s\n\
             \x20 tcp:\n    - addr: db:5432\n      timeout: 3s\n",
        )
        .expect("config");
        assert_eq!(c.debug_addr.as_deref(), Some(":5001"));
        assert!(c.prometheus);
        assert_eq!(c.prometheus_path, "/metrics");
        assert_eq!(c.checks.len(), 3);
        assert_eq!(c.checks[0].probe, Probe::Storage("filesystem".into()));
        // On S3 the check is named after that driver, as Distribution names it.
        let s3 =
            ops("storage:\n  s3:\n    bucket: b\nhealth:\n  storagedriver:\n    enabled: true\n")
                .expect("config");
        assert_eq!(s3.checks[0].probe, Probe::Storage("s3".into()));
        assert_eq!(c.checks[0].threshold, 3);
        assert_eq!(c.checks[0].interval, DEFAULT_INTERVAL);
        assert_eq!(c.checks[1].probe, Probe::File("/tmp/down".into()));
        assert_eq!(c.checks[1].interval, Duration::from_secs(5));
        assert!(
            matches!(&c.checks[2].probe, Probe::Tcp { addr, timeout: Some(t) }
            if addr == "db:5432" && *t == Duration::from_secs(3))
        );
    }

    #[test]
    fn bad_values_name_the_key() {
        let e = ops("health:\n  file:\n    - interval: 5s\n").expect_err("no file");
        assert!(e.to_string().contains("health.file[0].file"), "{e}");
        let e = ops("health:\n  tcp:\n    - addr: x:1\n      interval: soon\n").expect_err("bad");
        assert!(e.to_string().contains("interval"), "{e}");
        let e = ops("http:\n  debug:\n    prometheus:\n      path: metrics\n").expect_err("path");
        assert!(e.to_string().contains("http.debug.prometheus.path"), "{e}");
    }
}
