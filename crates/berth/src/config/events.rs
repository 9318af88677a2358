//! The `notifications` section (webhook endpoints with Berth's outbox caps `maxevents`
//! and `maxage`, `events.includereferences`) and
//! `storage.maintenance.uploadpurging`, read with Distribution 2.8's defaults. Produces
//! plain data for `registry/events.rs` and `jobs/`; knows nothing of how they run.

use super::yaml::Value;
use super::{bad, get, get_bool, get_int, get_str, go_duration, parse_int, scalar, ConfigError};
use std::time::Duration;

/// Which envelope media type an endpoint receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EnvelopeVersion {
    /// `application/vnd.docker.distribution.events.v1+json` (Distribution 2.8).
    #[default]
    V1,
    /// `application/vnd.docker.distribution.events.v2+json` (Distribution 3).
    V2,
}

/// One `notifications.endpoints[]` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    pub name: String,
    pub url: String,
    /// Extra request headers, each value sent as given.
    pub headers: Vec<(String, String)>,
    /// Per-POST timeout (≤0 or absent: 1 s).
    pub timeout: Duration,
    /// Consecutive failures before backing off (≤0 or absent: 10).
    pub threshold: u32,
    /// Pause between attempts once `threshold` is reached (≤0 or absent: 1 s).
    pub backoff: Duration,
    /// Target media types not sent (`ignoredmediatypes` ∪ `ignore.mediatypes`).
    pub ignored_media_types: Vec<String>,
    /// Actions not sent (`ignore.actions`).
    pub ignored_actions: Vec<String>,
    /// Berth addition: `mediatype: v2` selects the v2 envelope media type.
    pub envelope: EnvelopeVersion,
    /// Berth addition, `maxevents`: most undelivered events kept for this endpoint; the
    /// oldest beyond it are dropped (0: no limit).
    pub max_events: u64,
    /// Berth addition, `maxage`: undelivered events older than this are dropped (absent
    /// or 0: no limit).
    pub max_age: Option<Duration>,
}

/// Undelivered events kept per endpoint when `maxevents` is not set.
pub const DEFAULT_MAX_EVENTS: u64 = 100_000;

/// `notifications` and `storage.maintenance.uploadpurging`.
#[derive(Debug, Clone, PartialEq)]
pub struct EventsConfig {
    /// Enabled endpoints (disabled ones are left out, with a warning at load time).
    pub endpoints: Vec<Endpoint>,
    /// `notifications.events.includereferences`: manifest events list their references.
    pub include_references: bool,
    pub upload_purging: UploadPurging,
    /// Endpoints left out, and why (logged when the server starts).
    pub skipped: Vec<String>,
}

/// `storage.maintenance.uploadpurging`.
#[derive(Debug, Clone, PartialEq)]
pub struct UploadPurging {
    pub enabled: bool,
    /// Uploads started longer ago than this are removed.
    pub age: Duration,
    /// Time between two purges.
    pub interval: Duration,
    /// Only log what would be removed.
    pub dry_run: bool,
}

impl Default for UploadPurging {
    fn default() -> Self {
        UploadPurging {
            enabled: true,
            age: Duration::from_secs(168 * 3600),
            interval: Duration::from_secs(24 * 3600),
            dry_run: false,
        }
    }
}

fn strings(tree: &Value, key: &str) -> Result<Vec<String>, ConfigError> {
    match get(tree, key) {
        None => Ok(Vec::new()),
        Some(Value::Sequence(items)) => items
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| bad(key, "expected a list of strings"))
            })
            .collect(),
        Some(_) => Err(bad(key, "expected a list of strings")),
    }
}

fn endpoint(
    node: &Value,
    i: usize,
    warnings: &mut Vec<String>,
) -> Result<Option<Endpoint>, ConfigError> {
    let key = |k: &str| format!("notifications.endpoints[{i}].{k}");
    if !node.is_mapping() {
        return Err(bad(
            &format!("notifications.endpoints[{i}]"),
            format!("must be a map with name and url; got {}", node.describe()),
        ));
    }
    let at = |k: &str| -> Result<Option<String>, ConfigError> {
        get_str(node, k).map_err(|_| bad(&key(k), "expected a string"))
    };
    let name = at("name")?.unwrap_or_else(|| format!("endpoint{i}"));
    if get_bool(node, "disabled").map_err(|e| rekey(e, &key("disabled")))? == Some(true) {
        warnings.push(format!("notification endpoint {name} disabled, skipping"));
        return Ok(None);
    }
    let url =
        at("url")?.ok_or_else(|| bad(&key("url"), "missing: the URL events are POSTed to"))?;
    if !url.starts_with("http://") && !url.starts_with("https://") {
        return Err(bad(
            &key("url"),
            format!("{url:?} is not an http:// or https:// URL"),
        ));
    }
    let mut headers = Vec::new();
    match get(node, "headers") {
        None => {}
        Some(Value::Mapping(map)) => {
            for (k, v) in map.iter() {
                let values: Vec<String> = match v {
                    Value::Sequence(vs) => vs.iter().filter_map(scalar).collect(),
                    other => scalar(other).into_iter().collect(),
                };
                for v in values {
                    headers.push((k.to_string(), v));
                }
            }
        }
        Some(_) => {
            return Err(bad(
                &key("headers"),
                "expected a map of header names to lists of values",
            ))
        }
    }
    let positive =
        |d: Option<Duration>| d.filter(|d| !d.is_zero()).unwrap_or(Duration::from_secs(1));
    let timeout = positive(go_duration(node, "timeout").map_err(|e| rekey(e, &key("timeout")))?);
    let backoff = positive(go_duration(node, "backoff").map_err(|e| rekey(e, &key("backoff")))?);
    let threshold = match get_int(node, "threshold").map_err(|e| rekey(e, &key("threshold")))? {
        None => 10,
        Some(n) if n > 0 => u32::try_from(n).unwrap_or(u32::MAX),
        Some(_) => 10,
    };
    let mut ignored_media_types =
        strings(node, "ignoredmediatypes").map_err(|e| rekey(e, &key("ignoredmediatypes")))?;
    ignored_media_types.extend(
        strings(node, "ignore.mediatypes").map_err(|e| rekey(e, &key("ignore.mediatypes")))?,
    );
    let ignored_actions =
        strings(node, "ignore.actions").map_err(|e| rekey(e, &key("ignore.actions")))?;
    let envelope = match at("mediatype")?.as_deref() {
        None | Some("v1") | Some("application/vnd.docker.distribution.events.v1+json") => {
            EnvelopeVersion::V1
        }
        Some("v2") | Some("application/vnd.docker.distribution.events.v2+json") => {
            EnvelopeVersion::V2
        }
        Some(other) => return Err(bad(&key("mediatype"), format!("{other:?} is not v1 or v2"))),
    };
    let max_events = match get(node, "maxevents") {
        None => DEFAULT_MAX_EVENTS,
        Some(v) => match v.as_plain().and_then(parse_int) {
            Some(0) => u64::MAX,
            Some(n) if n > 0 => n as u64,
            _ => {
                return Err(bad(
                    &key("maxevents"),
                    "expected a whole number of events (0: no limit)",
                ))
            }
        },
    };
    let max_age = go_duration(node, "maxage")
        .map_err(|e| rekey(e, &key("maxage")))?
        .filter(|d| !d.is_zero());
    Ok(Some(Endpoint {
        name,
        url,
        headers,
        timeout,
        threshold,
        backoff,
        ignored_media_types,
        ignored_actions,
        envelope,
        max_events,
        max_age,
    }))
}

/// This machine's host name, for the `source.addr` of events (Distribution uses
/// `os.Hostname()`).
pub fn hostname() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into())
}

/// Name errors by the full key of the endpoint entry.
pub(super) fn rekey(e: ConfigError, key: &str) -> ConfigError {
    match e {
        ConfigError::Value { reason, .. } => bad(key, reason),
        other => other,
    }
}

/// Read `notifications` and `storage.maintenance.uploadpurging`.
pub(super) fn read(tree: &Value) -> Result<EventsConfig, ConfigError> {
    let mut endpoints = Vec::new();
    let mut skipped = Vec::new();
    match get(tree, "notifications.endpoints") {
        None => {}
        Some(Value::Sequence(items)) => {
            for (i, node) in items.iter().enumerate() {
                if let Some(ep) = endpoint(node, i, &mut skipped)? {
                    if endpoints.iter().any(|e: &Endpoint| e.name == ep.name) {
                        return Err(bad(
                            &format!("notifications.endpoints[{i}].name"),
                            format!("{:?} is used by two endpoints; names must be unique (events are queued by name)", ep.name),
                        ));
                    }
                    endpoints.push(ep);
                }
            }
        }
        Some(_) => {
            return Err(bad(
                "notifications.endpoints",
                "expected a list of endpoints",
            ))
        }
    }
    let include_references =
        get_bool(tree, "notifications.events.includereferences")?.unwrap_or(false);
    Ok(EventsConfig {
        endpoints,
        include_references,
        upload_purging: upload_purging(tree)?,
        skipped,
    })
}

/// Distribution: when the key is present it replaces the defaults; `enabled: false`
/// turns purging off, otherwise `age`, `interval` and `dryrun` are all required.
fn upload_purging(tree: &Value) -> Result<UploadPurging, ConfigError> {
    const KEY: &str = "storage.maintenance.uploadpurging";
    let Some(node) = get(tree, KEY) else {
        return Ok(UploadPurging::default());
    };
    if !node.is_mapping() {
        return Err(bad(
            KEY,
            "expected a map with enabled, age, interval and dryrun",
        ));
    }
    let key = |k: &str| format!("{KEY}.{k}");
    if get_bool(node, "enabled").map_err(|e| rekey(e, &key("enabled")))? == Some(false) {
        return Ok(UploadPurging {
            enabled: false,
            ..UploadPurging::default()
        });
    }
    let required = |k: &str| -> Result<Duration, ConfigError> {
        go_duration(node, k)
            .map_err(|e| rekey(e, &key(k)))?
            .filter(|d| !d.is_zero())
            .ok_or_else(|| bad(&key(k), "missing: a duration such as 168h is required when upload purging is configured"))
    };
    let age = required("age")?;
    let interval = required("interval")?;
    let dry_run = get_bool(node, "dryrun")
        .map_err(|e| rekey(e, &key("dryrun")))?
        .ok_or_else(|| {
            bad(
                &key("dryrun"),
                "missing: true or false is required when upload purging is configured",
            )
        })?;
    Ok(UploadPurging {
        enabled: true,
        age,
        interval,
        dry_run,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_yaml(yaml: &str) -> Result<(EventsConfig, Vec<String>), ConfigError> {
        let tree = super::super::yaml::parse(yaml).expect("yaml");
        read(&tree).map(|c| {
            let w = c.skipped.clone();
            (c, w)
        })
    }

    #[test]
    fn endpoints_with_distribution_defaults() {
        let (c, w) = read_yaml(
            "notifications:\n  events:\n    includereferences: true\n  endpoints:\n  - name: a\n    url: http://hook/a\n    headers:\n      Authorization: [Bearer x]\n    timeout: 0s\n    threshold: -1\n    ignoredmediatypes: [x/a]\n    ignore:\n      mediatypes: [x/b]\n      actions: [pull]\n    mediatype: v2\n  - name: off\n    disabled: true\n    url: http://hook/off\n",
        )
        .expect("read");
        assert!(c.include_references);
        assert_eq!(c.endpoints.len(), 1);
        let e = &c.endpoints[0];
        assert_eq!(e.headers, vec![("Authorization".into(), "Bearer x".into())]);
        assert_eq!(e.timeout, Duration::from_secs(1));
        assert_eq!(e.backoff, Duration::from_secs(1));
        assert_eq!(e.threshold, 10);
        assert_eq!(e.ignored_media_types, vec!["x/a", "x/b"]);
        assert_eq!(e.ignored_actions, vec!["pull"]);
        assert_eq!(e.envelope, EnvelopeVersion::V2);
        assert_eq!((e.max_events, e.max_age), (DEFAULT_MAX_EVENTS, None));
        assert!(w[0].contains("off disabled"), "{w:?}");
    }

    #[test]
    fn outbox_caps_per_endpoint() {
        let (c, _) = read_yaml(
            "notifications:\n  endpoints:\n  - name: a\n    url: http://hook/a\n    maxevents: 500\n    maxage: 72h\n  - name: b\n    url: http://hook/b\n    maxevents: 0\n    maxage: 0s\n",
        )
        .expect("read");
        let (a, b) = (&c.endpoints[0], &c.endpoints[1]);
        assert_eq!(a.max_events, 500);
        assert_eq!(a.max_age, Some(Duration::from_secs(72 * 3600)));
        assert_eq!((b.max_events, b.max_age), (u64::MAX, None));
        let err = read_yaml(
            "notifications:\n  endpoints:\n  - name: a\n    url: http://hook/a\n    maxevents: -3\n",
        )
        .expect_err("negative");
        assert!(err.to_string().contains("endpoints[0].maxevents"), "{err}");
        let err = read_yaml(
            "notifications:\n  endpoints:\n  - name: a\n    url: http://hook/a\n    maxage: soon\n",
        )
        .expect_err("not a duration");
        assert!(err.to_string().contains("endpoints[0].maxage"), "{err}");
    }

    #[test]
    fn upload_purging_replaces_defaults() {
        let (c, _) = read_yaml("storage:\n  filesystem: {}\n").expect("read");
        assert_eq!(c.upload_purging, UploadPurging::default());
        let (c, _) = read_yaml(
            "storage:\n  maintenance:\n    uploadpurging:\n      enabled: true\n      age: 2s\n      interval: 1s\n      dryrun: true\n",
        )
        .expect("read");
        assert_eq!(c.upload_purging.age, Duration::from_secs(2));
        assert!(c.upload_purging.dry_run);
        let (c, _) =
            read_yaml("storage:\n  maintenance:\n    uploadpurging:\n      enabled: false\n")
                .expect("read");
        assert!(!c.upload_purging.enabled);
        let err = read_yaml("storage:\n  maintenance:\n    uploadpurging:\n      age: 2s\n")
            .expect_err("interval missing");
        assert!(err.to_string().contains("uploadpurging.interval"), "{err}");
    }
}
