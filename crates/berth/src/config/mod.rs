//! Configuration: CNCF Distribution's `config.yml` (version 0.1) with `REGISTRY_*`
//! environment overrides, plus Berth's own sections beside it (`limits`).
//!
//! The file is read as a YAML tree whose scalars keep their text (`yaml.rs`), environment
//! overrides are applied to the tree (`REGISTRY_STORAGE_DELETE_ENABLED=true` sets
//! `storage.delete.enabled`), sections that must be maps are checked to be maps, every key
//! is checked against what Berth knows, and typed values are read from the text with
//! errors that name the key: a key whose type is a string gets the text as written. This
//! module knows nothing of the server: it produces a [`Config`].

pub mod database;
pub mod events;
pub mod gc;
pub mod ops;
pub mod proxy;
pub mod s3;

pub mod auth;
pub mod ldap;
#[cfg(test)]
mod load_tests;
mod yaml;

pub use auth::{AuthConfig, HtpasswdConfig, TlsConfig, TlsVersion, GO_CIPHER_SUITES};
use std::path::{Path, PathBuf};
use std::time::Duration;
use yaml::{Mapping, Value};

/// Root directory when Berth runs with no configuration file.
pub const DEFAULT_ROOT: &str = "./berth-data";
/// Distribution's default filesystem root, used when a config file names the filesystem
/// driver without a root directory.
pub const DISTRIBUTION_DEFAULT_ROOT: &str = "/var/lib/registry";

/// What `http.addr` names (`http.net`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Net {
    /// `host:port`.
    Tcp,
    /// A Unix domain socket path.
    Unix,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Everything `berth serve` needs to start.
#[derive(Debug, Clone)]
pub struct Config {
    /// `log.level`: error, warn, info or debug.
    pub log_level: String,
    /// `log.formatter`: text, or json (logstash is treated as json).
    pub log_format: LogFormat,
    /// `log.accesslog.disabled`: no per-request log lines.
    pub access_log: bool,
    /// `log.fields`: added to every log line, in configuration order.
    pub log_fields: Vec<(String, serde_json::Value)>,
    /// `storage.filesystem.rootdirectory`: where blobs and the metadata database live.
    pub root: PathBuf,
    /// `storage.filesystem.maxthreads`: most threads doing filesystem work at once
    /// (Distribution's default 100, minimum 25); unset, Berth's runtime default (512).
    pub max_threads: Option<usize>,
    /// `storage.delete.enabled`: allow deleting manifests, tags and blobs.
    pub delete_enabled: bool,
    /// `http.addr`: `host:port`, or `:port` for every interface; with `http.net: unix`,
    /// the path of a Unix domain socket.
    pub addr: String,
    /// `http.net`: `tcp` (default) or `unix`.
    pub net: Net,
    /// `http.prefix`: the API is served under this path (normalized: `/path`, or empty).
    pub http_prefix: String,
    /// `http.host`: absolute base URL (scheme and host) for the URLs the registry hands out.
    pub http_host: Option<String>,
    /// `http.relativeurls`: Berth hands out relative URLs unless this is explicitly false
    /// (then absolute ones built from the request, as Distribution does by default).
    pub absolute_urls: bool,
    /// `validation.manifests.urls.allow`/`deny` (regular expressions) for layer URLs;
    /// ignored when `validation.disabled` is true.
    pub layer_urls: crate::registry::UrlPolicy,
    /// `limits.manifestsize`: largest manifest accepted (default 4 MiB).
    pub max_manifest_bytes: usize,
    /// `limits.blobsize`: largest blob accepted (default 1 TiB).
    pub max_blob_bytes: u64,
    /// `limits.bodyidletimeout`: how long an upload may stall before it is failed (default 60s).
    pub body_idle_timeout: Duration,
    /// `limits.headerreadtimeout`: how long a client may take to send a request's
    /// headers before the connection is closed (default 30s).
    pub header_read_timeout: Duration,
    /// `limits.pageentries`: most entries in one tags or catalog page (default 10000).
    pub max_page_entries: u32,
    /// `limits.chunkminlength`: the `OCI-Chunk-Min-Length` advertised (default 0: none).
    pub chunk_min_length: u64,
    /// `limits.uploadsessions` and `limits.repositoryuploadsessions`: most open upload
    /// sessions overall and per repository.
    pub upload_sessions: crate::meta::SessionCaps,
    /// `notifications` and `storage.maintenance.uploadpurging`.
    pub events: events::EventsConfig,
    /// `storage.maintenance.garbagecollect`: scheduled garbage collection.
    pub gc_schedule: Option<gc::GcScheduleConfig>,
    /// `http.debug` (debug server, Prometheus) and `health` (checks gating the main port).
    pub ops: ops::OpsConfig,
    /// Authentication, TLS, response headers, drain timeout, read-only mode.
    pub auth: AuthConfig,
    /// `proxy`: pull-through cache of an upstream registry (read-only for clients).
    pub proxy: Option<proxy::ProxyConfig>,
    /// `storage.s3`: blobs in an S3-compatible bucket instead of under `root`.
    pub s3: Option<s3::S3Config>,
    /// `database.path` (Berth): the embedded SQLite database file; default
    /// `<root>/berth.db` (with `storage.s3`, root is /var/lib/registry).
    pub sqlite_path: Option<PathBuf>,
    /// `database`: the metadata backend (embedded SQLite, or a shared PostgreSQL).
    pub database: database::DatabaseConfig,
}

impl Default for Config {
    fn default() -> Self {
        let s = crate::registry::Settings::default();
        Config {
            log_level: "info".into(),
            log_format: LogFormat::Text,
            access_log: true,
            log_fields: Vec::new(),
            root: PathBuf::from(DEFAULT_ROOT),
            delete_enabled: s.delete_enabled,
            max_threads: None,
            addr: ":5000".into(),
            net: Net::Tcp,
            layer_urls: crate::registry::UrlPolicy::default(),
            http_prefix: String::new(),
            http_host: None,
            absolute_urls: false,
            max_manifest_bytes: s.max_manifest_bytes,
            max_blob_bytes: s.max_blob_bytes,
            body_idle_timeout: s.body_idle_timeout,
            header_read_timeout: Duration::from_secs(30),
            max_page_entries: s.max_page_entries,
            chunk_min_length: s.chunk_min_length,
            upload_sessions: s.upload_sessions,
            events: events::EventsConfig {
                endpoints: Vec::new(),
                include_references: false,
                upload_purging: events::UploadPurging::default(),
                skipped: Vec::new(),
            },
            gc_schedule: None,
            ops: ops::OpsConfig::default(),
            auth: AuthConfig::default(),
            proxy: None,
            s3: None,
            sqlite_path: None,
            database: database::DatabaseConfig::default(),
        }
    }
}

impl Config {
    pub fn settings(&self) -> crate::registry::Settings {
        crate::registry::Settings {
            delete_enabled: self.delete_enabled,
            max_manifest_bytes: self.max_manifest_bytes,
            max_blob_bytes: self.max_blob_bytes,
            max_page_entries: self.max_page_entries,
            body_idle_timeout: self.body_idle_timeout,
            chunk_min_length: self.chunk_min_length,
            upload_sessions: self.upload_sessions,
            layer_urls: self.layer_urls.clone(),
            gc_schedule: self.gc_schedule.as_ref().map(|g| crate::meta::GcSchedule {
                kind: "Custom".into(),
                cron: g.cron.clone(),
                parameters: serde_json::json!({
                    "delete_untagged": g.delete_untagged,
                    "grace_seconds": g.grace.as_secs(),
                })
                .to_string(),
                updated_at: 0,
            }),
            ..Default::default()
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("configuration file {path} is not valid YAML: {reason}")]
    Yaml {
        path: PathBuf,
        reason: yaml::YamlError,
    },
    #[error("configuration key {key}: {reason}")]
    Value { key: String, reason: String },
    #[error("environment variable {var}: {reason}")]
    Env { var: String, reason: String },
}

/// A loaded configuration and the warnings to log once logging is up.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<String>,
    /// Keys that need nothing from Berth, with why (logged at info level).
    pub notes: Vec<String>,
}

/// Keys Berth honours.
const IMPLEMENTED: &[&str] = &[
    "version",
    "loglevel",
    "log.level",
    "log.formatter",
    "log.accesslog.disabled",
    "log.fields",
    "storage.filesystem.rootdirectory",
    "storage.filesystem.maxthreads",
    "storage.s3.accesskey",
    "storage.s3.secretkey",
    "storage.s3.region",
    "storage.s3.regionendpoint",
    "storage.s3.forcepathstyle",
    "storage.s3.bucket",
    "storage.s3.rootdirectory",
    "storage.s3.encrypt",
    "storage.s3.keyid",
    "storage.s3.secure",
    "storage.s3.skipverify",
    "storage.s3.v4auth",
    "storage.s3.chunksize",
    "storage.s3.multipartcopychunksize",
    "storage.s3.multipartcopymaxconcurrency",
    "storage.s3.multipartcopythresholdsize",
    "storage.s3.storageclass",
    "storage.s3.blobkeys",
    "storage.redirect.disable",
    "database.path",
    "storage.delete.enabled",
    "http.addr",
    "http.net",
    "http.prefix",
    "http.host",
    "http.relativeurls",
    "validation.disabled",
    "validation.enabled",
    "validation.manifests.urls.allow",
    "validation.manifests.urls.deny",
    "limits.manifestsize",
    "limits.blobsize",
    "limits.bodyidletimeout",
    "limits.headerreadtimeout",
    "limits.pageentries",
    "limits.chunkminlength",
    "limits.uploadsessions",
    "limits.repositoryuploadsessions",
    "notifications.endpoints",
    "notifications.events.includereferences",
    "storage.maintenance.uploadpurging",
    "storage.maintenance.garbagecollect.enabled",
    "storage.maintenance.garbagecollect.schedule",
    "storage.maintenance.garbagecollect.deleteuntagged",
    "storage.maintenance.garbagecollect.grace",
    "http.debug.addr",
    "http.debug.prometheus.enabled",
    "http.debug.prometheus.path",
    "health.storagedriver.enabled",
    "health.storagedriver.interval",
    "health.storagedriver.threshold",
    "health.file",
    "health.http",
    "health.tcp",
    "auth.htpasswd.realm",
    "auth.htpasswd.path",
    "auth.token.realm",
    "auth.token.service",
    "auth.token.issuer",
    "auth.token.rootcertbundle",
    "auth.token.jwks",
    "auth.token.signingalgorithms",
    "auth.token.autoredirect",
    "auth.token.autoredirectpath",
    "auth.berth.realm",
    "auth.berth.service",
    "auth.berth.issuer",
    "auth.berth.tokenexpiration",
    "auth.berth.adminpassword",
    "auth.berth.projectcreation",
    "auth.berth.createprojectsonpush",
    "auth.berth.robotprefix",
    "auth.berth.pushnetworks",
    "auth.berth.ldap.url",
    "auth.berth.ldap.starttls",
    "auth.berth.ldap.skipverify",
    "auth.berth.ldap.cacert",
    "auth.berth.ldap.basedn",
    "auth.berth.ldap.searchfilter",
    "auth.berth.ldap.uid",
    "auth.berth.ldap.searchdn",
    "auth.berth.ldap.searchpassword",
    "auth.berth.ldap.groupbasedn",
    "auth.berth.ldap.groupfilter",
    "auth.berth.ldap.groupmemberattribute",
    "auth.berth.ldap.timeout",
    "auth.berth.auditretention",
    "auth.berth.storagequota",
    "auth.berth.mirrors",
    "http.tls.certificate",
    "http.tls.key",
    "http.tls.clientcas",
    "http.tls.minimumtls",
    "http.tls.ciphersuites",
    "http.tls.letsencrypt",
    "http.http2.disabled",
    "http.headers",
    "http.draintimeout",
    "storage.maintenance.readonly.enabled",
    "proxy.remoteurl",
    "proxy.username",
    "proxy.password",
    "proxy.ttl",
    "proxy.expiryinterval",
    "database.driver",
    "database.dsn",
    "database.connecttimeout",
    "database.statementtimeout",
    "database.pool.maxopen",
    "database.pool.maxidletime",
    "database.pool.maxlifetime",
    "database.pool.acquiretimeout",
    "middleware.storage",
];

/// Distribution keys whose purpose Berth's design already serves.
const BY_DESIGN: &[(&str, &str)] = &[
    ("http.secret", "not needed: upload state lives in the metadata database, not in signed URLs, so any node can continue any upload"),
    ("storage.cache.blobdescriptor", "not needed: blob descriptors are served from the metadata database"),
    ("storage.cache", "not needed: blob descriptors are served from the metadata database"),
];

/// Top-level sections of Distribution's configuration.
const DISTRIBUTION_SECTIONS: &[&str] = &[
    "version",
    "log",
    "loglevel",
    "storage",
    "auth",
    "middleware",
    "reporting",
    "http",
    "notifications",
    "redis",
    "health",
    "proxy",
    "compatibility",
    "validation",
    "catalog",
    "policy",
];

impl Loaded {
    /// Load `path` (or the embedded defaults when `None`) with `REGISTRY_*` overrides from `env`.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Loaded, ConfigError> {
        let mut tree = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.to_path_buf(),
                    source,
                })?;
                match yaml::parse(&text).map_err(|reason| ConfigError::Yaml {
                    path: p.to_path_buf(),
                    reason,
                })? {
                    Value::Null => Value::Mapping(Mapping::new()),
                    v @ Value::Mapping(_) => v,
                    _ => {
                        return Err(ConfigError::Value {
                            key: "(top level)".into(),
                            reason: "the configuration must be a YAML mapping".into(),
                        })
                    }
                }
            }
            None => Value::Mapping(Mapping::new()),
        };
        let mut env: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("REGISTRY_"))
            .collect();
        env.sort();
        for (var, value) in env {
            apply_env(&mut tree, &var, &value)?;
        }
        normalize_sections(&mut tree)?;
        check_shapes(&tree)?;
        let mut warnings = Vec::new();
        check_keys(&tree, "", &mut warnings);
        let notes = BY_DESIGN
            .iter()
            .filter(|(key, _)| get(&tree, key).is_some())
            .map(|(key, why)| format!("configuration key {key}: {why}"))
            .collect();
        let config = read_config(&tree, path.is_some())?;
        warnings.extend(config.auth.warnings.iter().cloned());
        warnings.extend(s3::middleware_warnings(&tree, config.s3.as_ref()));
        let purging = &config.events.upload_purging;
        if purging.enabled && !purging.dry_run && purging.age < config.body_idle_timeout {
            warnings.push(format!(
                "configuration key storage.maintenance.uploadpurging.age: {:?} is shorter than limits.bodyidletimeout ({:?}): an upload or pull-through fetch that is slow but alive can be purged; use an age of hours (Distribution's default is 168h)",
                purging.age, config.body_idle_timeout
            ));
        }
        Ok(Loaded {
            config,
            warnings,
            notes,
        })
    }
}

/// Distribution matches environment variables against its Go field names; where those
/// differ from the YAML keys, the variable uses the Go name (`..._EVENTCONFIG_...`).
const ENV_ALIASES: &[(&str, &str)] = &[
    ("notifications.eventconfig", "notifications.events"),
    ("health.filecheckers", "health.file"),
    ("health.httpcheckers", "health.http"),
    ("health.tcpcheckers", "health.tcp"),
    (
        "compatibility.schema1.trustkey",
        "compatibility.schema1.signingkeyfile",
    ),
    ("log.hooks.mailoptions", "log.hooks.options"),
];

/// `REGISTRY_A_B_C=value` sets `a.b.c` to `value` parsed as YAML, replacing whatever was
/// there (a map value replaces the whole subtree, as in Distribution). Variables are
/// applied in sorted order, so `REGISTRY_AUTH=htpasswd` comes before
/// `REGISTRY_AUTH_HTPASSWD_PATH=...`. A numeric component indexes a list
/// (`REGISTRY_NOTIFICATIONS_ENDPOINTS_0_URL`), as Distribution 3 allows.
fn apply_env(tree: &mut Value, var: &str, value: &str) -> Result<(), ConfigError> {
    let mut path: Vec<String> = var["REGISTRY_".len()..]
        .split('_')
        .map(|s| s.to_ascii_lowercase())
        .collect();
    if path.iter().any(|p| p.is_empty()) {
        return Err(ConfigError::Env {
            var: var.into(),
            reason: "is not of the form REGISTRY_SECTION_KEY".into(),
        });
    }
    let joined = path.join(".");
    for (alias, real) in ENV_ALIASES {
        if joined == *alias || joined.starts_with(&format!("{alias}.")) {
            let rest = &joined[alias.len()..];
            path = format!("{real}{rest}")
                .split('.')
                .map(str::to_string)
                .collect();
            break;
        }
    }
    // As Distribution does (yaml.Unmarshal of the value into the field): YAML, and a
    // scalar keeps its text, so `0x1F` is the string "0x1F" for a string key.
    let parsed = yaml::parse(value).unwrap_or_else(|_| Value::plain(value));
    set_path(tree, &path, parsed).map_err(|reason| ConfigError::Env {
        var: var.into(),
        reason,
    })
}

fn set_path(node: &mut Value, path: &[String], value: Value) -> Result<(), String> {
    let Some((first, rest)) = path.split_first() else {
        *node = value;
        return Ok(());
    };
    if let (Value::Sequence(seq), Ok(i)) = (&mut *node, first.parse::<usize>()) {
        if i == seq.len() {
            seq.push(Value::Null);
        }
        return match seq.get_mut(i) {
            Some(item) => set_path(item, rest, value),
            None => Err(format!(
                "list index {i} is past the end (the list has {} entries)",
                seq.len()
            )),
        };
    }
    if !node.is_mapping() {
        *node = Value::Mapping(Mapping::new());
    }
    match node {
        Value::Mapping(map) => {
            let child = map.entry(first.clone());
            set_path(child, rest, value)
        }
        _ => Err("cannot set a key inside a non-map value".into()),
    }
}

/// Storage drivers of Distribution 2.8 and 3, which `storage: NAME` may name.
const STORAGE_DRIVERS: &[&str] = &[
    "filesystem",
    "inmemory",
    "s3",
    "s3-aws",
    "azure",
    "gcs",
    "swift",
    "oss",
];
/// Access controllers of Distribution, which `auth: NAME` may name (`none`: Berth's
/// spelling of no authentication).
const ACCESS_CONTROLLERS: &[&str] = &["htpasswd", "token", "berth", "silly", "none"];

/// `storage: filesystem` and `auth: htpasswd` (or the same through `REGISTRY_STORAGE`/
/// `REGISTRY_AUTH`) name a driver without parameters: make them maps. `auth: none`
/// means no authentication. A scalar that names no driver (`auth: true`) is refused:
/// Distribution refuses it too, and guessing would start an open registry.
fn normalize_sections(tree: &mut Value) -> Result<(), ConfigError> {
    let Value::Mapping(map) = tree else {
        return Ok(());
    };
    for (section, names, what) in [
        ("storage", STORAGE_DRIVERS, "storage driver"),
        ("auth", ACCESS_CONTROLLERS, "access controller"),
    ] {
        let Some(Value::Scalar(s)) = map.get(section).cloned() else {
            continue;
        };
        let name = s.text.to_ascii_lowercase();
        if !names.contains(&name.as_str()) {
            let example = SECTION_SHAPES
                .iter()
                .find(|(k, _)| *k == section)
                .map_or("", |(_, e)| *e);
            let hint = match did_you_mean(&name, names.iter().copied()) {
                Some(near) => format!("did you mean {near}?"),
                None => format!("write the section as a map, {example}"),
            };
            return Err(bad(
                section,
                format!(
                    "{:?} names no {what} ({}): {hint}",
                    s.text,
                    names.join(", ")
                ),
            ));
        }
        let mut inner = Mapping::new();
        if name != "none" {
            inner.insert(name, Value::Mapping(Mapping::new()));
        }
        map.insert(section.to_string(), Value::Mapping(inner));
    }
    Ok(())
}

/// How the sections that must be maps look, for the error when one is not.
const SECTION_SHAPES: &[(&str, &str)] = &[
    (
        "auth",
        "e.g. `auth: {htpasswd: {realm: Registry, path: /auth/htpasswd}}`",
    ),
    (
        "storage",
        "e.g. `storage: {filesystem: {rootdirectory: /var/lib/registry}}`",
    ),
    (
        "http.tls",
        "e.g. `tls: {certificate: /certs/domain.crt, key: /certs/domain.key}`",
    ),
    (
        "proxy",
        "e.g. `proxy: {remoteurl: https://registry-1.docker.io}`",
    ),
    (
        "notifications",
        "e.g. `notifications: {endpoints: [{name: hook, url: https://hook.example/events}]}`",
    ),
    (
        "database",
        "e.g. `database: {driver: postgres, dsn: \"postgres://berth:secret@db:5432/berth\"}`",
    ),
];

/// Every section Berth reads keys from (each proper prefix of an [`IMPLEMENTED`] key)
/// must be a map when present: a list or a scalar there would otherwise read as "not
/// set" and start Berth open (`auth: [htpasswd]`), on plain HTTP (`http.tls` as a list)
/// or as an ordinary registry (`proxy`). Distribution refuses such files; so does Berth.
fn check_shapes(tree: &Value) -> Result<(), ConfigError> {
    let mut sections: Vec<&str> = IMPLEMENTED
        .iter()
        .flat_map(|key| key.match_indices('.').map(move |(i, _)| &key[..i]))
        .collect();
    sections.sort_by_key(|s| (s.matches('.').count(), *s));
    sections.dedup();
    for section in sections {
        let Some(node) = get(tree, section) else {
            continue;
        };
        if node.is_mapping() {
            continue;
        }
        let example = SECTION_SHAPES
            .iter()
            .find(|(k, _)| *k == section)
            .map_or(String::new(), |(_, e)| format!(", {e}"));
        return Err(bad(
            section,
            format!("must be a map of keys{example}; got {}", node.describe()),
        ));
    }
    Ok(())
}

/// The candidate nearest to `word` by edit distance, when near enough to be a typo.
fn did_you_mean<'a>(word: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let limit = (word.chars().count() / 4).clamp(1, 3);
    candidates
        .filter(|c| *c != word)
        .map(|c| (strsim::osa_distance(word, c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// The keys Berth knows directly under `prefix` (`""`: the top level).
fn known_keys(prefix: &str) -> Vec<&'static str> {
    let mut keys: Vec<&'static str> = IMPLEMENTED
        .iter()
        .copied()
        .chain(BY_DESIGN.iter().map(|(k, _)| *k))
        .filter_map(|k| {
            let rest = if prefix.is_empty() {
                k
            } else {
                k.strip_prefix(prefix)?.strip_prefix('.')?
            };
            rest.split('.').next()
        })
        .collect();
    if prefix.is_empty() {
        keys.extend(DISTRIBUTION_SECTIONS);
    }
    keys.sort_unstable();
    keys.dedup();
    keys
}

fn check_keys(v: &Value, prefix: &str, warnings: &mut Vec<String>) {
    let Value::Mapping(map) = v else { return };
    for (k, child) in map.iter() {
        let path = if prefix.is_empty() {
            k.to_string()
        } else {
            format!("{prefix}.{k}")
        };
        if IMPLEMENTED.contains(&path.as_str()) || BY_DESIGN.iter().any(|(k, _)| *k == path) {
            continue;
        }
        let is_prefix = IMPLEMENTED
            .iter()
            .any(|i| i.starts_with(&format!("{path}.")));
        if is_prefix && child.is_mapping() {
            check_keys(child, &path, warnings);
            continue;
        }
        if is_prefix && child.is_null() {
            // An empty section Berth knows (`auth:`): nothing set.
            continue;
        }
        let top = path.split('.').next().unwrap_or("");
        if let Some(near) = did_you_mean(k, known_keys(prefix).into_iter()) {
            let near = if prefix.is_empty() {
                near.to_string()
            } else {
                format!("{prefix}.{near}")
            };
            warnings.push(format!(
                "unknown configuration key {path} (ignored); did you mean {near}?"
            ));
        } else if top == "limits" {
            warnings.push(format!("unknown configuration key {path} (ignored)"));
        } else if DISTRIBUTION_SECTIONS.contains(&top) {
            warnings.push(format!(
                "configuration key {path} is accepted but not implemented yet (ignored)"
            ));
        } else {
            warnings.push(format!("unknown configuration key {path} (ignored)"));
        }
    }
}

fn get<'a>(tree: &'a Value, path: &str) -> Option<&'a Value> {
    let mut node = tree;
    for seg in path.split('.') {
        node = node.as_mapping()?.get(seg)?;
    }
    (!node.is_null()).then_some(node)
}

fn bad(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Value {
        key: key.to_string(),
        reason: reason.into(),
    }
}

/// A scalar's text as written (`0x1F` stays `0x1F`, `1.10` stays `1.10`).
fn scalar(v: &Value) -> Option<String> {
    v.as_str().map(str::to_string)
}

fn get_str(tree: &Value, key: &str) -> Result<Option<String>, ConfigError> {
    match get(tree, key) {
        None => Ok(None),
        Some(v) => scalar(v)
            .map(Some)
            .ok_or_else(|| bad(key, "expected a string")),
    }
}

/// A boolean: `true`/`false`, or YAML 1.1's `yes`/`no`/`on`/`off`/`y`/`n` as Go's
/// yaml.v2 reads them for Distribution (any case).
fn get_bool(tree: &Value, key: &str) -> Result<Option<bool>, ConfigError> {
    match get(tree, key) {
        None => Ok(None),
        Some(Value::Scalar(s)) => match s.text.to_ascii_lowercase().as_str() {
            "true" | "yes" | "on" | "y" => Ok(Some(true)),
            "false" | "no" | "off" | "n" => Ok(Some(false)),
            _ => Err(bad(
                key,
                format!("expected true or false, got {:?}", s.text),
            )),
        },
        Some(_) => Err(bad(key, "expected true or false")),
    }
}

/// A whole number written plainly (decimal, or `0x`/`0o`/`0b`): a quoted one is a string,
/// as in Distribution.
fn parse_int(text: &str) -> Option<i64> {
    let t = text.replace('_', "");
    let (negative, digits) = match t.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, t.strip_prefix('+').unwrap_or(&t)),
    };
    let n = if let Some(h) = digits.strip_prefix("0x") {
        i64::from_str_radix(h, 16).ok()?
    } else if let Some(o) = digits.strip_prefix("0o") {
        i64::from_str_radix(o, 8).ok()?
    } else if let Some(b) = digits.strip_prefix("0b") {
        i64::from_str_radix(b, 2).ok()?
    } else if !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit()) {
        digits.parse().ok()?
    } else {
        return None;
    };
    Some(if negative { -n } else { n })
}

/// `key` as a whole number (see [`parse_int`]).
/// A duration as Distribution reads one: a bare number is nanoseconds (Go's
/// `time.Duration`), text is `500ms`, `1s`, `24h` and the like.
fn go_duration(tree: &Value, key: &str) -> Result<Option<Duration>, ConfigError> {
    match get(tree, key) {
        None => Ok(None),
        Some(v) => match v.as_plain().and_then(parse_int) {
            Some(n) => Ok(Some(Duration::from_nanos(u64::try_from(n).unwrap_or(0)))),
            None => {
                let s = get_str(tree, key)?.unwrap_or_default();
                parse_duration(&s).map(Some).ok_or_else(|| {
                    bad(
                        key,
                        format!("{s:?} is not a duration like 500ms, 1s or 24h"),
                    )
                })
            }
        },
    }
}

fn get_int(tree: &Value, key: &str) -> Result<Option<i64>, ConfigError> {
    match get(tree, key) {
        None => Ok(None),
        Some(v) => v.as_plain().and_then(parse_int).map(Some).ok_or_else(|| {
            bad(
                key,
                format!("expected a whole number, got {}", v.describe()),
            )
        }),
    }
}

/// A list of regular expressions.
fn get_patterns(tree: &Value, key: &str) -> Result<Vec<regex::Regex>, ConfigError> {
    let Some(v) = get(tree, key) else {
        return Ok(Vec::new());
    };
    let list = v
        .as_sequence()
        .ok_or_else(|| bad(key, "expected a list of regular expressions"))?;
    list.iter()
        .enumerate()
        .map(|(i, p)| {
            let p = p
                .as_str()
                .ok_or_else(|| bad(key, format!("entry {i} is not a string")))?;
            regex::Regex::new(p).map_err(|e| {
                bad(
                    key,
                    format!("entry {i} {p:?} is not a valid regular expression: {e}"),
                )
            })
        })
        .collect()
}

/// A size in bytes: a number, or a number with KB/MB/GB/TB or KiB/MiB/GiB/TiB.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1000,
        "mb" => 1000u64.pow(2),
        "gb" => 1000u64.pow(3),
        "tb" => 1000u64.pow(4),
        "kib" | "k" => 1 << 10,
        "mib" | "m" => 1 << 20,
        "gib" | "g" => 1 << 30,
        "tib" | "t" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// A Go-style duration (`300ms`, `10s`, `1m30s`, `2h`).
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let split = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let (num, tail) = rest.split_at(split);
        let value: f64 = num.parse().ok()?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_len);
        let secs = match unit {
            "ns" => value / 1e9,
            "us" | "µs" => value / 1e6,
            "ms" => value / 1e3,
            "s" => value,
            "m" => value * 60.0,
            "h" => value * 3600.0,
            _ => return None,
        };
        total = total.checked_add(Duration::try_from_secs_f64(secs).ok()?)?;
        rest = next;
    }
    Some(total)
}

fn get_size(tree: &Value, key: &str) -> Result<Option<u64>, ConfigError> {
    match get_str(tree, key)? {
        None => Ok(None),
        Some(s) => parse_size(&s).map(Some).ok_or_else(|| {
            bad(
                key,
                format!("{s:?} is not a size (e.g. 4194304, 4MiB, 10GiB)"),
            )
        }),
    }
}

/// `log.fields`: a map of names to scalar values (strings, numbers, booleans).
fn log_fields(tree: &Value) -> Result<Vec<(String, serde_json::Value)>, ConfigError> {
    let Some(v) = get(tree, "log.fields") else {
        return Ok(Vec::new());
    };
    let map = v
        .as_mapping()
        .ok_or_else(|| bad("log.fields", "expected a map of field names to values"))?;
    let mut out = Vec::new();
    for (key, v) in map.iter() {
        let key = key.to_string();
        let value = match v {
            Value::Null => serde_json::Value::Null,
            // Fields are untyped: a plain scalar is a boolean or a number when it reads
            // as one (YAML 1.2's core schema), a quoted one is a string.
            Value::Scalar(s) if !s.quoted => plain_json(&s.text),
            Value::Scalar(s) => serde_json::Value::String(s.text.clone()),
            _ => {
                return Err(bad(
                    &format!("log.fields.{key}"),
                    "expected a string, number or boolean (nested values are not supported)",
                ))
            }
        };
        out.push((key, value));
    }
    Ok(out)
}

/// A plain scalar of `log.fields` as JSON: `true`/`false`, a number, else the text.
fn plain_json(text: &str) -> serde_json::Value {
    match text {
        "true" | "True" | "TRUE" => return serde_json::Value::Bool(true),
        "false" | "False" | "FALSE" => return serde_json::Value::Bool(false),
        _ => {}
    }
    if let Some(n) = parse_int(text) {
        return n.into();
    }
    let numeric = text
        .chars()
        .all(|c| c.is_ascii_digit() || "+-.eE".contains(c))
        && text.chars().any(|c| c.is_ascii_digit());
    match text.parse::<f64>() {
        Ok(f) if numeric => serde_json::Number::from_f64(f)
            .map(serde_json::Value::Number)
            .unwrap_or_else(|| serde_json::Value::String(text.to_string())),
        _ => serde_json::Value::String(text.to_string()),
    }
}

fn read_config(tree: &Value, from_file: bool) -> Result<Config, ConfigError> {
    let mut c = Config::default();
    if let Some(v) = get_str(tree, "version")? {
        if v != "0.1" {
            return Err(bad(
                "version",
                format!("only version 0.1 is supported, got {v:?}"),
            ));
        }
    }
    // `loglevel` is Distribution's deprecated spelling, used when log.level is absent.
    let level = match get_str(tree, "log.level")? {
        Some(l) => Some(l),
        None => get_str(tree, "loglevel")?,
    };
    if let Some(level) = level {
        c.log_level = match level.to_ascii_lowercase().as_str() {
            l @ ("error" | "warn" | "info" | "debug" | "trace") => l.to_string(),
            "warning" => "warn".into(),
            "panic" | "fatal" => "error".into(),
            other => {
                return Err(bad(
                    "log.level",
                    format!("{other:?} is not one of error, warn, info, debug"),
                ))
            }
        };
    }
    if let Some(f) = get_str(tree, "log.formatter")? {
        c.log_format = match f.as_str() {
            "text" => LogFormat::Text,
            "json" | "logstash" => LogFormat::Json,
            other => {
                return Err(bad(
                    "log.formatter",
                    format!("{other:?} is not one of text, json, logstash"),
                ))
            }
        };
    }
    if let Some(disabled) = get_bool(tree, "log.accesslog.disabled")? {
        c.access_log = !disabled;
    }
    c.log_fields = log_fields(tree)?;
    let drivers: Vec<&str> = get(tree, "storage")
        .and_then(Value::as_mapping)
        .map(|storage| {
            storage
                .keys()
                .filter(|k| !["delete", "maintenance", "cache", "redirect", "tag"].contains(k))
                .collect()
        })
        .unwrap_or_default();
    // Distribution refuses a file without a driver ("no storage configuration
    // provided"); Berth's own default, ./berth-data, is for running without a file: in
    // the container image the working directory is /, outside the data volume.
    if drivers.is_empty() && from_file {
        return Err(bad(
            "storage",
            "no storage driver is configured, so nothing says where the data goes: add `storage: {filesystem: {rootdirectory: /var/lib/registry}}` (a directory of your choice) or set REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY",
        ));
    }
    if let Some(storage) = get(tree, "storage").and_then(Value::as_mapping) {
        if drivers.len() > 1 {
            return Err(bad(
                "storage",
                format!(
                    "exactly one storage driver must be configured, found: {}",
                    drivers.join(", ")
                ),
            ));
        }
        if let Some(other) = drivers.iter().find(|d| !["filesystem", "s3"].contains(*d)) {
            return Err(bad(
                &format!("storage.{other}"),
                "this storage driver is not supported; use storage.filesystem or storage.s3",
            ));
        }
        if drivers.contains(&"s3") {
            c.s3 = Some(s3::parse(tree)?);
            // The embedded metadata database still needs a directory of its own.
            c.root = PathBuf::from(DISTRIBUTION_DEFAULT_ROOT);
        }
        if get(tree, "storage.filesystem").is_some() || storage.contains_key("filesystem") {
            c.root = PathBuf::from(DISTRIBUTION_DEFAULT_ROOT);
        }
    }
    if let Some(root) = get_str(tree, "storage.filesystem.rootdirectory")? {
        if root.is_empty() {
            return Err(bad("storage.filesystem.rootdirectory", "must not be empty"));
        }
        c.root = PathBuf::from(root);
    } else if !from_file {
        c.root = PathBuf::from(DEFAULT_ROOT);
    }
    if let Some(n) = get_size(tree, "storage.filesystem.maxthreads")? {
        // Distribution raises values below 25 to 25.
        c.max_threads = Some(usize::try_from(n).unwrap_or(usize::MAX).max(25));
    }
    if let Some(p) = get_str(tree, "database.path")? {
        if p.is_empty() {
            return Err(bad("database.path", "must not be empty"));
        }
        c.sqlite_path = Some(PathBuf::from(p));
    }
    if let Some(d) = get_bool(tree, "storage.delete.enabled")? {
        c.delete_enabled = d;
    }
    c.net = match get_str(tree, "http.net")?.as_deref() {
        None | Some("") | Some("tcp") => Net::Tcp,
        Some("unix") => Net::Unix,
        Some(other) => {
            return Err(bad(
                "http.net",
                format!("unknown network {other:?}: use tcp or unix"),
            ))
        }
    };
    if c.net == Net::Unix {
        let path = get_str(tree, "http.addr")?
            .filter(|a| !a.is_empty())
            .ok_or_else(|| {
                bad(
                    "http.addr",
                    "must be the path of the socket file when http.net is unix",
                )
            })?;
        c.addr = path;
    } else if let Some(addr) = get_str(tree, "http.addr")? {
        if !addr.contains(':') {
            return Err(bad(
                "http.addr",
                format!("{addr:?} has no port: use host:port or :port"),
            ));
        }
        c.addr = addr;
    }
    if let Some(prefix) = get_str(tree, "http.prefix")? {
        let trimmed = prefix.trim_matches('/');
        c.http_prefix = if trimmed.is_empty() {
            String::new()
        } else {
            format!("/{trimmed}")
        };
    }
    if let Some(host) = get_str(tree, "http.host")? {
        let ok = (host.starts_with("http://") || host.starts_with("https://"))
            && host.split("://").nth(1).is_some_and(|h| !h.is_empty());
        if !ok {
            return Err(bad(
                "http.host",
                format!("{host:?} must be an absolute URL such as https://registry.example.com"),
            ));
        }
        c.http_host = Some(host.trim_end_matches('/').to_string());
    }
    if let Some(relative) = get_bool(tree, "http.relativeurls")? {
        c.absolute_urls = !relative;
    }
    // `validation.enabled` is Distribution's deprecated spelling of `!disabled`.
    let disabled = match get_bool(tree, "validation.disabled")? {
        Some(d) => d,
        None => get_bool(tree, "validation.enabled")?.is_some_and(|e| !e),
    };
    if !disabled {
        c.layer_urls = crate::registry::UrlPolicy {
            allow: get_patterns(tree, "validation.manifests.urls.allow")?,
            deny: get_patterns(tree, "validation.manifests.urls.deny")?,
        };
    }
    if let Some(n) = get_size(tree, "limits.manifestsize")? {
        c.max_manifest_bytes =
            usize::try_from(n).map_err(|_| bad("limits.manifestsize", "too large"))?;
    }
    if let Some(n) = get_size(tree, "limits.blobsize")? {
        c.max_blob_bytes = n;
    }
    if let Some(s) = get_str(tree, "limits.bodyidletimeout")? {
        c.body_idle_timeout = parse_duration(&s).filter(|d| !d.is_zero()).ok_or_else(|| {
            bad(
                "limits.bodyidletimeout",
                format!("{s:?} is not a duration like 60s or 2m"),
            )
        })?;
    }
    if let Some(s) = get_str(tree, "limits.headerreadtimeout")? {
        c.header_read_timeout = parse_duration(&s).filter(|d| !d.is_zero()).ok_or_else(|| {
            bad(
                "limits.headerreadtimeout",
                format!("{s:?} is not a duration like 30s or 1m"),
            )
        })?;
    }
    if let Some(n) = get_size(tree, "limits.pageentries")? {
        c.max_page_entries = u32::try_from(n)
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| bad("limits.pageentries", "must be between 1 and 4294967295"))?;
    }
    if let Some(n) = get_size(tree, "limits.chunkminlength")? {
        c.chunk_min_length = n;
    }
    for (key, cap) in [
        ("limits.uploadsessions", &mut c.upload_sessions.total),
        (
            "limits.repositoryuploadsessions",
            &mut c.upload_sessions.per_repository,
        ),
    ] {
        if let Some(n) = get_size(tree, key)? {
            *cap = Some(n)
                .filter(|n| *n > 0)
                .ok_or_else(|| bad(key, "must be at least 1"))?;
        }
    }
    c.events = events::read(tree)?;
    c.gc_schedule = gc::read(tree)?;
    c.ops = ops::read(tree)?;
    c.auth = auth::read(tree)?;
    if let (Some(host), Some(b)) = (&c.http_host, &c.auth.berth) {
        auth::check_mirrors_against_host(&b.mirrors, host)?;
    }
    c.proxy = proxy::read(tree)?;
    c.database = database::read(tree)?;
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(yaml: &str, env: &[(&str, &str)]) -> Result<Loaded, ConfigError> {
        // A file must name a storage driver; these tests are about other keys.
        let yaml = if yaml.contains("storage:") {
            yaml.to_string()
        } else {
            format!("storage: filesystem\n{yaml}")
        };
        super::load_tests::load(&yaml, env)
    }

    #[test]
    fn defaults_without_file() {
        let l = Loaded::load(None, Vec::new()).expect("load");
        assert_eq!(l.config.root, PathBuf::from(DEFAULT_ROOT));
        assert_eq!(l.config.addr, ":5000");
        assert!(!l.config.delete_enabled);
        assert!(l.warnings.is_empty());
    }

    #[test]
    fn debian_config_starts_with_warnings() {
        let yaml = "version: 0.1\nlog:\n  fields:\n    service: registry\nstorage:\n  cache:\n    blobdescriptor: inmemory\n  filesystem:\n    rootdirectory: /var/lib/docker-registry\n  delete:\n    enabled: true\nhttp:\n  addr: :5000\n  headers:\n    X-Content-Type-Options: [nosniff]\nauth:\n  htpasswd:\n    realm: basic-realm\n    path: /etc/docker/registry\nhealth:\n  storagedriver:\n    enabled: true\n    interval: 10s\n    threshold: 3\n";
        let l = load(yaml, &[]).expect("load");
        assert_eq!(l.config.root, PathBuf::from("/var/lib/docker-registry"));
        assert!(l.config.delete_enabled);
        let w = l.warnings.join("\n");
        assert!(
            l.notes.join("\n").contains("key storage.cache"),
            "{:?}",
            l.notes
        );
        assert!(!w.contains("key log.fields"), "{w}");
        assert_eq!(
            l.config.log_fields,
            vec![("service".to_string(), serde_json::json!("registry"))]
        );
        // health.storagedriver, http.headers and auth.htpasswd are honoured: no warnings.
        assert!(!w.contains("key health"), "{w}");
        assert!(
            !w.contains("http.headers") && !w.contains("key auth"),
            "{w}"
        );
        assert_eq!(l.config.ops.checks.len(), 1);
        assert!(l.config.auth.htpasswd.is_some());
    }

    #[test]
    fn env_overrides_and_errors() {
        let l = load(
            "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: /a\n",
            &[
                ("REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY", "/b"),
                ("REGISTRY_STORAGE_DELETE_ENABLED", "true"),
                ("REGISTRY_HTTP_ADDR", "127.0.0.1:5001"),
                ("REGISTRY_LIMITS_MANIFESTSIZE", "1MiB"),
                ("REGISTRY_LIMITS_BODYIDLETIMEOUT", "1m30s"),
                ("OTHER", "x"),
            ],
        )
        .expect("load");
        assert_eq!(l.config.root, PathBuf::from("/b"));
        assert!(l.config.delete_enabled);
        assert_eq!(l.config.addr, "127.0.0.1:5001");
        assert_eq!(l.config.max_manifest_bytes, 1 << 20);
        assert_eq!(l.config.body_idle_timeout, Duration::from_secs(90));

        let e = load(
            "storage:\n  filesystem:\n  delete:\n    enabled: maybe\n",
            &[],
        )
        .expect_err("bad bool");
        assert!(e.to_string().contains("storage.delete.enabled"), "{e}");
        let e = load("http:\n  addr: 5000\n", &[]).expect_err("no port");
        assert!(e.to_string().contains("http.addr"), "{e}");
        let e = load("storage:\n  s3:\n    bucket: x\n", &[]).expect_err("s3");
        assert!(e.to_string().contains("storage.s3"), "{e}");
        let e = load("version: 0.2\n", &[]).expect_err("version");
        assert!(e.to_string().contains("version"), "{e}");
        let l = load("bogus: 1\nlimits:\n  nope: 2\n", &[]).expect("load");
        assert_eq!(l.warnings.len(), 2, "{:?}", l.warnings);
    }

    fn tree_after(yaml: &str, env: &[(&str, &str)]) -> Value {
        let mut tree: Value = yaml::parse(yaml).expect("yaml");
        let mut env: Vec<_> = env.to_vec();
        env.sort();
        for (k, v) in env {
            apply_env(&mut tree, k, v).expect("apply");
        }
        normalize_sections(&mut tree).expect("normalize");
        tree
    }

    #[test]
    fn env_follows_distribution() {
        // A bare driver name, then its parameters (sorted order applies the name first).
        let t = tree_after(
            "auth:\n  token:\n    realm: x\n",
            &[
                ("REGISTRY_AUTH_HTPASSWD_PATH", "/auth/htpasswd"),
                ("REGISTRY_AUTH", "htpasswd"),
                ("REGISTRY_AUTH_HTPASSWD_REALM", "Registry Realm"),
            ],
        );
        assert_eq!(
            get(&t, "auth.htpasswd.path").and_then(Value::as_str),
            Some("/auth/htpasswd")
        );
        assert_eq!(
            get(&t, "auth.htpasswd.realm").and_then(Value::as_str),
            Some("Registry Realm")
        );
        assert!(
            get(&t, "auth.token").is_none(),
            "REGISTRY_AUTH replaces the file's auth section"
        );
        let t = tree_after("version: 0.1\n", &[("REGISTRY_AUTH", "htpasswd")]);
        assert!(get(&t, "auth.htpasswd").is_some());
        let t = tree_after("auth: none\n", &[]);
        assert!(get(&t, "auth")
            .and_then(Value::as_mapping)
            .is_some_and(|m| m.is_empty()));
        // Go field names where they differ from the YAML keys.
        let t = tree_after(
            "version: 0.1\n",
            &[
                (
                    "REGISTRY_NOTIFICATIONS_EVENTCONFIG_INCLUDEREFERENCES",
                    "true",
                ),
                (
                    "REGISTRY_HEALTH_FILECHECKERS",
                    "[{file: /tmp/down, interval: 5s}]",
                ),
            ],
        );
        assert_eq!(
            get(&t, "notifications.events.includereferences").and_then(Value::as_str),
            Some("true")
        );
        assert_eq!(
            get(&t, "health.file.0.file").and_then(Value::as_str),
            None,
            "lists are not maps"
        );
        assert!(get(&t, "health.file")
            .and_then(Value::as_sequence)
            .is_some_and(|s| s.len() == 1));
        // List elements by index.
        let t = tree_after(
            "notifications:\n  endpoints:\n  - name: a\n    url: http://old\n",
            &[(
                "REGISTRY_NOTIFICATIONS_ENDPOINTS_0_URL",
                "http://new:8080/events",
            )],
        );
        let ep = &get(&t, "notifications.endpoints")
            .and_then(Value::as_sequence)
            .expect("list")[0];
        assert_eq!(
            ep.get("url").and_then(Value::as_str),
            Some("http://new:8080/events")
        );
        assert_eq!(ep.get("name").and_then(Value::as_str), Some("a"));
        // YAML typing of values.
        let t = tree_after(
            "version: 0.1\n",
            &[("REGISTRY_HTTP_HEADERS_X-FRAME-OPTIONS", "[DENY]")],
        );
        assert!(get(&t, "http.headers.x-frame-options")
            .and_then(Value::as_sequence)
            .is_some());
    }

    #[test]
    fn http_net_unix() {
        let l = load("http:\n  net: unix\n  addr: /run/berth.sock\n", &[]).expect("load");
        assert_eq!(l.config.net, Net::Unix);
        assert_eq!(l.config.addr, "/run/berth.sock");
        let e = load("http:\n  net: unix\n", &[]).expect_err("no path");
        assert!(e.to_string().contains("http.addr"), "{e}");
        let e = load("http:\n  net: udp\n  addr: :5000\n", &[]).expect_err("udp");
        assert!(e.to_string().contains("http.net"), "{e}");
        let l = load("http:\n  net: tcp\n  addr: :5000\n", &[]).expect("tcp");
        assert_eq!(l.config.net, Net::Tcp);
    }

    #[test]
    fn deprecated_loglevel_and_driver_count() {
        let l = load("loglevel: debug\n", &[]).expect("load");
        assert_eq!(l.config.log_level, "debug");
        let l = load("loglevel: debug\nlog:\n  level: warn\n", &[]).expect("load");
        assert_eq!(l.config.log_level, "warn");
        let e = load(
            "storage:\n  filesystem:\n    rootdirectory: /a\n",
            &[("REGISTRY_STORAGE_INMEMORY", "{}")],
        )
        .expect_err("two drivers");
        assert!(e.to_string().contains("exactly one storage driver"), "{e}");
        let l = load("storage: filesystem\n", &[]).expect("bare driver name");
        assert_eq!(l.config.root, PathBuf::from(DISTRIBUTION_DEFAULT_ROOT));
    }

    #[test]
    fn validation_patterns() {
        let l = load(
            "validation:\n  manifests:\n    urls:\n      allow: ['^https://a/']\n      deny: ['x']\n",
            &[],
        )
        .expect("load");
        assert!(l.config.layer_urls.permits("https://a/b"));
        assert!(!l.config.layer_urls.permits("https://a/x"));
        assert!(!l.config.layer_urls.permits("https://b/"));
        let l = load(
            "validation:\n  disabled: true\n  manifests:\n    urls:\n      allow: ['^https://a/']\n",
            &[],
        )
        .expect("load");
        assert!(l.config.layer_urls.permits("https://anything/"));
        let e = load(
            "validation:\n  manifests:\n    urls:\n      allow: ['(']\n",
            &[],
        )
        .expect_err("bad regex");
        assert!(
            e.to_string().contains("validation.manifests.urls.allow"),
            "{e}"
        );
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("4MiB"), Some(4 << 20));
        assert_eq!(parse_size("10"), Some(10));
        assert_eq!(parse_size("2GB"), Some(2_000_000_000));
        assert_eq!(parse_size("x"), None);
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("1h2m3s"), Some(Duration::from_secs(3723)));
        assert_eq!(parse_duration("10"), None);
        assert_eq!(
            parse_duration("99999999999999999999h"),
            None,
            "too large is an error, not a panic"
        );
    }
}
