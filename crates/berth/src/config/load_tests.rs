//! Loading as an operator meets it, through `Loaded::load` with a file and `REGISTRY_*`
//! pairs: strings keep the text they were written with, malformed security sections and
//! files without a storage driver are refused, unknown keys get a suggestion.

use super::*;

/// A file naming the filesystem driver, for tests about other keys.
const FS: &str = "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: /data\n";

/// Load `yaml` as a config file, with `env` as the `REGISTRY_*` variables.
pub(super) fn load(yaml: &str, env: &[(&str, &str)]) -> Result<Loaded, ConfigError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("config.yml");
    std::fs::write(&p, yaml).expect("write");
    Loaded::load(
        Some(&p),
        env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
    )
}

fn refused(yaml: &str, env: &[(&str, &str)], key: &str) -> String {
    let e = match load(yaml, env) {
        Ok(l) => panic!(
            "accepted, expected an error naming {key}: {yaml}\n{env:?}\n{:?}",
            l.config
        ),
        Err(e) => e.to_string(),
    };
    assert!(
        e.contains(&format!("configuration key {key}:"))
            || e.contains(&format!("configuration key {key} "))
            || e.contains(&format!("environment variable {key}")),
        "{key} not named: {e}"
    );
    assert!(!e.contains('\n'), "one line: {e}");
    e
}

// ---------------------------------------------------------------------------------------
// Item 5: literal strings
// ---------------------------------------------------------------------------------------

#[test]
fn strings_keep_their_text_from_the_file() {
    let yaml = format!(
        "{FS}auth:\n  htpasswd:\n    realm: 1.10\n    path: 0x1F\n\
         proxy:\n  remoteurl: https://up.example\n  username: True\n  password: 0x1F\n\
         notifications:\n  endpoints:\n  - name: 1e3\n    url: http://hook/\n    headers:\n      X-Version: [1.10]\n      X-Flag: True\n\
         http:\n  headers:\n    X-Num: [1e3]\n    X-Hex: 0o17\n  prefix: 010\n\
         validation:\n  manifests:\n    urls:\n      allow: [1.10]\n"
    );
    let c = load(&yaml, &[]).expect("load").config;
    let h = c.auth.htpasswd.expect("htpasswd");
    assert_eq!(h.realm, "1.10");
    assert_eq!(h.path, PathBuf::from("0x1F"));
    let p = c.proxy.expect("proxy");
    assert_eq!(p.username.as_deref(), Some("True"));
    assert_eq!(p.password.as_deref(), Some("0x1F"));
    let ep = &c.events.endpoints[0];
    assert_eq!(ep.name, "1e3");
    assert_eq!(
        ep.headers,
        vec![
            ("X-Version".to_string(), "1.10".to_string()),
            ("X-Flag".to_string(), "True".to_string())
        ]
    );
    assert_eq!(
        c.auth.headers,
        vec![
            ("X-Num".to_string(), "1e3".to_string()),
            ("X-Hex".to_string(), "0o17".to_string())
        ]
    );
    assert_eq!(c.http_prefix, "/010");
    // The pattern is the literal text `1.10`, not the number 1.1.
    assert_eq!(
        c.layer_urls
            .allow
            .iter()
            .map(|r| r.as_str())
            .collect::<Vec<_>>(),
        ["1.10"]
    );
}

#[test]
fn strings_keep_their_text_from_the_environment() {
    let env = [
        ("REGISTRY_AUTH", "htpasswd"),
        ("REGISTRY_AUTH_HTPASSWD_REALM", "1.10"),
        ("REGISTRY_AUTH_HTPASSWD_PATH", "1e3"),
        ("REGISTRY_PROXY_REMOTEURL", "https://up.example"),
        ("REGISTRY_PROXY_USERNAME", "True"),
        ("REGISTRY_PROXY_PASSWORD", "0x1F"),
        ("REGISTRY_HTTP_HEADERS_X-NUM", "[1.10, 0x1F]"),
        (
            "REGISTRY_NOTIFICATIONS_ENDPOINTS",
            "[{name: a, url: 'http://hook/'}]",
        ),
        ("REGISTRY_NOTIFICATIONS_ENDPOINTS_0_HEADERS_X-V", "[1e3]"),
        ("REGISTRY_NOTIFICATIONS_ENDPOINTS_0_NAME", "0x10"),
    ];
    let c = load(FS, &env).expect("load").config;
    let h = c.auth.htpasswd.expect("htpasswd");
    assert_eq!(h.realm, "1.10");
    assert_eq!(h.path, PathBuf::from("1e3"));
    let p = c.proxy.expect("proxy");
    assert_eq!(p.username.as_deref(), Some("True"));
    assert_eq!(p.password.as_deref(), Some("0x1F"));
    assert_eq!(
        c.auth.headers,
        vec![
            ("x-num".to_string(), "1.10".to_string()),
            ("x-num".to_string(), "0x1F".to_string())
        ]
    );
    let ep = &c.events.endpoints[0];
    assert_eq!(ep.name, "0x10");
    assert_eq!(ep.headers, vec![("x-v".to_string(), "1e3".to_string())]);
}

#[test]
fn typed_keys_still_read_their_text() {
    let yaml = format!(
        "{FS}  delete:\n    enabled: True\nlimits:\n  manifestsize: 1048576\n  pageentries: 50\n\
         health:\n  storagedriver:\n    enabled: yes\n    interval: 1000000000\n    threshold: 3\n\
         log:\n  fields:\n    n: 3\n    f: 1.5\n    b: true\n    s: '3'\n"
    );
    let c = load(&yaml, &[]).expect("load").config;
    assert!(c.delete_enabled);
    assert_eq!(c.max_manifest_bytes, 1 << 20);
    assert_eq!(c.max_page_entries, 50);
    assert_eq!(c.ops.checks[0].interval, Duration::from_secs(1));
    assert_eq!(c.ops.checks[0].threshold, 3);
    assert_eq!(
        c.log_fields,
        vec![
            ("n".to_string(), serde_json::json!(3)),
            ("f".to_string(), serde_json::json!(1.5)),
            ("b".to_string(), serde_json::json!(true)),
            ("s".to_string(), serde_json::json!("3")),
        ]
    );
    // A version is text too: 0.10 is not 0.1.
    refused("version: 0.10\nstorage: filesystem\n", &[], "version");
    // A quoted number is a string, not a count.
    refused(
        &format!("{FS}health:\n  storagedriver:\n    enabled: true\n    threshold: '3'\n"),
        &[],
        "health.storagedriver.threshold",
    );
}

#[test]
fn yaml_errors_name_file_line_and_column() {
    let e = load("version: 0.1\nstorage:\n  filesystem: [\n", &[])
        .expect_err("bad yaml")
        .to_string();
    assert!(e.contains("config.yml") && e.contains("line"), "{e}");
    let e = load(&format!("{FS}http:\n  addr: :1\n  addr: :2\n"), &[])
        .expect_err("duplicate key")
        .to_string();
    assert!(e.contains("addr") && e.contains("line 7"), "{e}");
    // Anchors and aliases still work.
    let l = load(
        &format!("{FS}http:\n  headers:\n    X-A: &v [shared]\n    X-B: *v\n"),
        &[],
    )
    .expect("aliases");
    assert_eq!(l.config.auth.headers.len(), 2);
}

// ---------------------------------------------------------------------------------------
// Item 2: malformed security sections
// ---------------------------------------------------------------------------------------

#[test]
fn malformed_sections_are_refused() {
    let cases: &[(&str, &str)] = &[
        ("auth: [htpasswd]\n", "auth"),
        ("auth: true\n", "auth"),
        (
            "auth:\n  - htpasswd:\n      realm: r\n      path: /etc/htpasswd\n",
            "auth",
        ),
        ("auth:\n  htpasswd: [realm, path]\n", "auth.htpasswd"),
        (
            "http:\n  tls:\n  - certificate: /c\n    key: /k\n",
            "http.tls",
        ),
        ("http:\n  tls: true\n", "http.tls"),
        ("http: [addr]\n", "http"),
        ("proxy: [https://up.example]\n", "proxy"),
        ("proxy: https://up.example\n", "proxy"),
        (
            "notifications:\n  - name: a\n    url: http://hook/\n",
            "notifications",
        ),
        ("notifications: true\n", "notifications"),
        (
            "notifications:\n  endpoints:\n  - http://hook/\n",
            "notifications.endpoints[0]",
        ),
    ];
    for (section, key) in cases {
        refused(&format!("{FS}{section}"), &[], key);
    }
    let storage: &[(&str, &str)] = &[
        ("storage: [filesystem]\n", "storage"),
        (
            "storage:\n  - filesystem:\n      rootdirectory: /x\n",
            "storage",
        ),
        ("storage: true\n", "storage"),
        ("storage:\n  filesystem: /data\n", "storage.filesystem"),
        (
            "storage:\n  filesystem:\n    rootdirectory: /x\n  delete: true\n",
            "storage.delete",
        ),
    ];
    for (yaml, key) in storage {
        refused(&format!("version: 0.1\n{yaml}"), &[], key);
    }
}

#[test]
fn malformed_sections_from_the_environment_are_refused() {
    for (var, value, key) in [
        ("REGISTRY_AUTH", "true", "auth"),
        ("REGISTRY_AUTH", "[htpasswd]", "auth"),
        ("REGISTRY_HTTP_TLS", "[/c, /k]", "http.tls"),
        ("REGISTRY_PROXY", "https://up.example", "proxy"),
        ("REGISTRY_NOTIFICATIONS", "[a]", "notifications"),
        ("REGISTRY_STORAGE", "[filesystem]", "storage"),
    ] {
        refused(FS, &[(var, value)], key);
    }
}

#[test]
fn valid_string_forms_still_work() {
    let l = load("version: 0.1\nstorage: filesystem\n", &[]).expect("storage: filesystem");
    assert_eq!(l.config.root, PathBuf::from(DISTRIBUTION_DEFAULT_ROOT));
    let l = load(
        &format!("{FS}auth: htpasswd\n"),
        &[
            ("REGISTRY_AUTH_HTPASSWD_REALM", "r"),
            ("REGISTRY_AUTH_HTPASSWD_PATH", "/p"),
        ],
    )
    .expect("auth: htpasswd");
    assert!(l.config.auth.htpasswd.is_some());
    let l = load(&format!("{FS}auth: none\n"), &[]).expect("auth: none");
    assert!(l.config.auth.htpasswd.is_none());
    // Present but empty is absent, as in Distribution.
    let l = load(&format!("{FS}auth:\nproxy:\nhttp:\n  tls:\n"), &[]).expect("empty sections");
    assert!(l.config.auth.htpasswd.is_none() && l.config.auth.tls.is_none());
    assert!(l.config.proxy.is_none());
}

// ---------------------------------------------------------------------------------------
// Item 3: a file must name a storage driver
// ---------------------------------------------------------------------------------------

#[test]
fn a_file_without_a_storage_driver_is_refused() {
    for yaml in [
        "version: 0.1\nstorage:\n  delete:\n    enabled: true\n",
        "version: 0.1\nhttp:\n  addr: :5000\n",
        "",
        "storage:\n",
    ] {
        let e = refused(yaml, &[], "storage");
        assert!(e.contains("rootdirectory"), "{e}");
    }
    // The driver named by the environment counts.
    let l = load(
        "version: 0.1\nstorage:\n  delete:\n    enabled: true\n",
        &[("REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY", "/srv/r")],
    )
    .expect("driver from env");
    assert_eq!(l.config.root, PathBuf::from("/srv/r"));
    let l = load("version: 0.1\n", &[("REGISTRY_STORAGE", "filesystem")]).expect("env driver");
    assert_eq!(l.config.root, PathBuf::from(DISTRIBUTION_DEFAULT_ROOT));
    // Without a file the built-in default stays.
    let l = Loaded::load(
        None,
        [(
            "REGISTRY_STORAGE_DELETE_ENABLED".to_string(),
            "true".to_string(),
        )],
    )
    .expect("no file");
    assert_eq!(l.config.root, PathBuf::from(DEFAULT_ROOT));
    assert!(l.config.delete_enabled);
}

// ---------------------------------------------------------------------------------------
// Item 7: unknown keys get the nearest known key
// ---------------------------------------------------------------------------------------

#[test]
fn unknown_keys_name_the_nearest_known_key() {
    let l = load(&format!("{FS}htp:\n  addr: :5001\n"), &[]).expect("load");
    assert!(
        l.warnings
            .iter()
            .any(|w| w == "unknown configuration key htp (ignored); did you mean http?"),
        "{:?}",
        l.warnings
    );
    let l = load(&format!("{FS}http:\n  adr: :5001\n"), &[]).expect("load");
    assert!(
        l.warnings.iter().any(|w| w.contains("http.adr")
            && w.contains("did you mean http.addr?")
            && !w.contains("not implemented")),
        "{:?}",
        l.warnings
    );
    let l = load(&format!("{FS}frobnicate: 1\n"), &[]).expect("load");
    assert!(
        l.warnings.iter().all(|w| !w.contains("did you mean")),
        "{:?}",
        l.warnings
    );
    let e = refused(
        &format!("{FS}auth:\n  htpassword:\n    realm: r\n    path: /p\n"),
        &[],
        "auth.htpassword",
    );
    assert!(e.contains("did you mean htpasswd?"), "{e}");
}

// ---------------------------------------------------------------------------------------
// storage.s3

/// A registry:2 S3 configuration as the guides write it (MinIO/Ceph style endpoint).
const REGISTRY2_S3: &str = "version: 0.1\nlog:\n  fields:\n    service: registry\nstorage:\n  cache:\n    blobdescriptor: inmemory\n  s3:\n    accesskey: AKIAEXAMPLE\n    secretkey: 0x1Fsecret\n    region: us-east-1\n    regionendpoint: http://minio.internal:9000\n    bucket: docker-registry\n    encrypt: false\n    secure: false\n    v4auth: true\n    chunksize: 5242880\n    rootdirectory: /registry\n  delete:\n    enabled: true\n  redirect:\n    disable: false\nhttp:\n  addr: :5000\n";

#[test]
fn an_unchanged_registry2_s3_config_loads() {
    let l = load(REGISTRY2_S3, &[]).expect("load");
    assert!(l.warnings.is_empty(), "{:?}", l.warnings);
    let s3 = l.config.s3.expect("s3");
    assert_eq!(s3.bucket, "docker-registry");
    assert_eq!(s3.secret_key.as_deref(), Some("0x1Fsecret"));
    assert_eq!(
        s3.region_endpoint.as_deref(),
        Some("http://minio.internal:9000")
    );
    assert!(s3.force_path_style, "an endpoint of its own is path-style");
    assert_eq!(s3.root_directory, "registry");
    assert_eq!(s3.chunk_size, 5 * 1024 * 1024);
    assert!(s3.redirect);
    assert_eq!(s3.storage_class.as_deref(), Some("STANDARD"));
    assert!(!format!("{s3:?}").contains("0x1Fsecret"), "secret redacted");
}

#[test]
fn s3_keys_come_from_the_environment_too() {
    let l = load(
        "version: 0.1\nstorage:\n  s3:\n    region: eu-west-1\n",
        &[
            ("REGISTRY_STORAGE_S3_BUCKET", "from-env"),
            ("REGISTRY_STORAGE_S3_REGIONENDPOINT", "s3.internal:9000"),
            ("REGISTRY_STORAGE_S3_SECURE", "false"),
            ("REGISTRY_STORAGE_S3_FORCEPATHSTYLE", "false"),
            ("REGISTRY_STORAGE_S3_STORAGECLASS", "NONE"),
            ("REGISTRY_STORAGE_REDIRECT_DISABLE", "true"),
        ],
    )
    .expect("load");
    let s3 = l.config.s3.expect("s3");
    assert_eq!(s3.bucket, "from-env");
    assert_eq!(s3.region, "eu-west-1");
    assert_eq!(
        s3.region_endpoint.as_deref(),
        Some("http://s3.internal:9000"),
        "a bare host takes its scheme from secure"
    );
    assert!(!s3.force_path_style);
    assert_eq!(s3.storage_class, None);
    assert!(!s3.redirect);
    // AWS itself: no endpoint, virtual-host style.
    let l = load(
        "version: 0.1\nstorage:\n  s3:\n    region: us-east-2\n    bucket: b\n",
        &[],
    )
    .expect("load");
    let s3 = l.config.s3.expect("s3");
    assert_eq!(s3.region_endpoint, None);
    assert!(!s3.force_path_style);
    assert_eq!(
        s3.access_key, None,
        "the AWS variables are read at start-up"
    );
}

#[test]
fn bad_s3_settings_are_refused_naming_the_key() {
    let base = "version: 0.1\nstorage:\n  s3:\n    bucket: b\n    region: r\n";
    refused(
        "version: 0.1\nstorage:\n  s3:\n    bucket: b\n",
        &[],
        "storage.s3.region",
    );
    refused(
        "version: 0.1\nstorage:\n  s3:\n    region: r\n",
        &[],
        "storage.s3.bucket",
    );
    refused(
        &format!("{base}    v4auth: false\n"),
        &[],
        "storage.s3.v4auth",
    );
    refused(
        &format!("{base}    chunksize: 1048576\n"),
        &[],
        "storage.s3.chunksize",
    );
    refused(
        &format!("{base}    accesskey: only-half\n"),
        &[],
        "storage.s3.secretkey",
    );
    refused(
        &format!("{base}    regionendpoint: ftp://x\n"),
        &[],
        "storage.s3.regionendpoint",
    );
    refused(
        "version: 0.1\nstorage:\n  s3:\n    bucket: b\n    region: r\n  filesystem:\n    rootdirectory: /x\n",
        &[],
        "storage",
    );
    refused(
        "version: 0.1\nstorage:\n  gcs:\n    bucket: b\n",
        &[],
        "storage.gcs",
    );
}

/// registry:2's `middleware.storage` redirect (a CDN or proxy in front of the bucket):
/// the base URL is read, trailing slashes dropped; a malformed one is refused naming the
/// key; entries Berth does not act on (cloudfront, redirect without S3 or with
/// redirects disabled) load with a warning that says what happens instead.
#[test]
fn storage_middleware_redirect_sets_a_cdn_base_url() {
    let base = "version: 0.1\nstorage:\n  s3:\n    bucket: b\n    region: r\n";
    let redirect = |url: &str| {
        format!("middleware:\n  storage:\n    - name: redirect\n      options:\n        baseurl: {url}\n")
    };
    let l = load(
        &format!("{base}{}", redirect("https://cdn.example.com/registry/")),
        &[],
    )
    .expect("load");
    assert!(l.warnings.is_empty(), "{:?}", l.warnings);
    assert_eq!(
        l.config.s3.expect("s3").redirect_base.as_deref(),
        Some("https://cdn.example.com/registry")
    );
    for bad in [
        "cdn.example.com",
        "https://",
        "ftp://cdn/",
        "https://cdn/?a=b",
    ] {
        refused(
            &format!("{base}{}", redirect(bad)),
            &[],
            "middleware.storage[0].options.baseurl",
        );
    }
    refused(
        &format!("{base}middleware:\n  storage:\n    - name: redirect\n"),
        &[],
        "middleware.storage[0].options.baseurl",
    );
    refused(
        &format!("{base}middleware:\n  storage:\n    name: redirect\n"),
        &[],
        "middleware.storage",
    );
    let l = load(
        &format!("{base}middleware:\n  storage:\n    - name: cloudfront\n      options:\n        baseurl: https://d111111abcdef8.cloudfront.net/\n        privatekey: /etc/docker/cloudfront/pk.pem\n        keypairid: KEYPAIRID\n"),
        &[],
    )
    .expect("cloudfront loads");
    assert!(
        l.warnings
            .iter()
            .any(|w| w.contains("cloudfront is not implemented")),
        "{:?}",
        l.warnings
    );
    let l = load(&format!("{FS}{}", redirect("https://cdn.example.com")), &[]).expect("fs");
    assert!(
        l.warnings
            .iter()
            .any(|w| w.contains("applies to storage.s3 only")),
        "{:?}",
        l.warnings
    );
    let l = load(
        &format!(
            "{base}  redirect:\n    disable: true\n{}",
            redirect("https://cdn.example.com")
        ),
        &[],
    )
    .expect("disabled");
    assert!(
        l.warnings
            .iter()
            .any(|w| w.contains("storage.redirect.disable is true")),
        "{:?}",
        l.warnings
    );
}

/// Every `auth.berth` key Berth reads is one it knows: none is reported as ignored.
#[test]
fn every_berth_key_is_known() {
    let l = load(
        "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: /tmp/x\nauth:\n  berth:\n    adminpassword: Harbor12345\n    projectcreation: adminonly\n    createprojectsonpush: true\n    robotprefix: bot-\n    auditretention: 720h\n    storagequota: 10GiB\n    tokenexpiration: 30m\n",
        &[],
    )
    .expect("load");
    assert!(l.warnings.is_empty(), "{:?}", l.warnings);
    assert_eq!(
        l.config.auth.berth.expect("berth").storage_quota,
        Some(10 << 30)
    );
}

#[test]
fn mirror_host_names_as_a_map_or_a_variable() {
    let mirror = |host: &str, port: Option<u16>, project: &str| auth::MirrorHostConfig {
        host: host.into(),
        port,
        project: project.into(),
    };
    let l = load(
        &format!("{FS}auth:\n  berth:\n    mirrors:\n      Hub-Mirror.example.com.: hub\n      ghcr-mirror.example.com:5443: ghcr\n"),
        &[],
    )
    .expect("load");
    assert!(l.warnings.is_empty(), "{:?}", l.warnings);
    assert_eq!(
        l.config.auth.berth.expect("berth").mirrors,
        [
            mirror("hub-mirror.example.com", None, "hub"),
            mirror("ghcr-mirror.example.com", Some(5443), "ghcr")
        ]
    );
    let l = load(
        &format!("{FS}auth:\n  berth: {{}}\n"),
        &[(
            "REGISTRY_AUTH_BERTH_MIRRORS",
            "hub-mirror.example.com=hub, [::1]:5001=quay",
        )],
    )
    .expect("load");
    assert_eq!(
        l.config.auth.berth.expect("berth").mirrors,
        [
            mirror("hub-mirror.example.com", None, "hub"),
            mirror("::1", Some(5001), "quay")
        ]
    );
    let l = load(
        &format!("{FS}auth:\n  berth: {{}}\n"),
        &[("REGISTRY_AUTH_BERTH_MIRRORS", "[::1]:5001=quay")],
    )
    .expect("load");
    assert_eq!(
        l.config.auth.berth.expect("berth").mirrors,
        [mirror("::1", Some(5001), "quay")]
    );
    for (value, why) in [
        ("https://hub-mirror.example.com=hub", "no scheme"),
        ("hub-mirror.example.com", "host=project"),
        ("hub-mirror.example.com=Hub", "not a project name"),
        ("hub_mirror=hub", "not a host name"),
        ("a.example=hub,A.example=x", "given twice"),
    ] {
        let e = refused(
            &format!("{FS}auth:\n  berth: {{}}\n"),
            &[("REGISTRY_AUTH_BERTH_MIRRORS", value)],
            "auth.berth.mirrors",
        );
        assert!(e.contains(why), "{value}: {e}");
    }
    // The registry's own name cannot be a mirror's: its pushes would all be refused.
    for (host, mirrors) in [
        ("https://registry.example.com", "Registry.example.com=hub"),
        (
            "https://registry.example.com:5000/",
            "registry.example.com:5000=hub",
        ),
        // A request to https://registry.example.com carries no port: it is port 443's.
        (
            "https://registry.example.com",
            "registry.example.com:443=hub",
        ),
        ("https://[::1]:5000", "[0:0:0:0:0:0:0:1]:5000=hub"),
    ] {
        let e = refused(
            &format!("{FS}http:\n  host: {host}\nauth:\n  berth: {{}}\n"),
            &[("REGISTRY_AUTH_BERTH_MIRRORS", mirrors)],
            "auth.berth.mirrors",
        );
        assert!(e.contains("own host"), "{mirrors}: {e}");
    }
    // Another port of the same host is another name.
    load(
        &format!("{FS}http:\n  host: https://registry.example.com\nauth:\n  berth: {{}}\n"),
        &[(
            "REGISTRY_AUTH_BERTH_MIRRORS",
            "registry.example.com:5001=hub",
        )],
    )
    .expect("another port is allowed");
}
