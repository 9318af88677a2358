//! `storage.s3`: blobs in an S3-compatible bucket, with Distribution's keys (and so its
//! `REGISTRY_STORAGE_S3_*` variables), plus `storage.redirect.disable` and the
//! `middleware.storage` entry `redirect` (a CDN or proxy base URL for blob redirects).

use super::yaml::Value;
use super::{bad, get, get_bool, get_size, get_str, ConfigError};

/// S3's smallest part (every part of a multipart upload but the last).
pub const MIN_PART: u64 = 5 * 1024 * 1024;
/// S3's largest single copy (CopyObject) and largest part.
pub const MAX_PART: u64 = 5 * 1024 * 1024 * 1024;

/// The `storage.s3` section.
#[derive(Clone, PartialEq)]
pub struct S3Config {
    /// `accesskey` / `secretkey`; absent, the standard AWS variables
    /// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`) are read.
    pub access_key: Option<String>,
    pub secret_key: Option<String>,
    /// `region` (required, as in Distribution).
    pub region: String,
    /// `regionendpoint`: the S3 server's URL (`http://127.0.0.1:9000`); absent, AWS's
    /// `s3.<region>.amazonaws.com`.
    pub region_endpoint: Option<String>,
    /// `forcepathstyle`: `https://host/bucket/key` instead of `https://bucket.host/key`.
    /// Defaults to true when `regionendpoint` is set (MinIO, Ceph, Garage, SeaweedFS all
    /// serve path-style), false for AWS.
    pub force_path_style: bool,
    pub bucket: String,
    /// `rootdirectory`: a key prefix inside the bucket (no leading or trailing `/`).
    pub root_directory: String,
    /// `encrypt` / `keyid`: server-side encryption (SSE-S3, or SSE-KMS with a key id).
    pub encrypt: bool,
    pub key_id: Option<String>,
    /// `secure`: https to AWS's endpoint (default true; a `regionendpoint` keeps its own
    /// scheme).
    pub secure: bool,
    /// `skipverify`: do not verify the server's TLS certificate.
    pub skip_verify: bool,
    /// `chunksize`: the size of each part Berth writes (default 10 MiB, at least 5 MiB).
    pub chunk_size: u64,
    /// `multipartcopychunksize`: the part size of a server-side copy (default 32 MiB).
    pub multipart_copy_chunk_size: u64,
    /// `multipartcopymaxconcurrency`: parts copied at once (default 100).
    pub multipart_copy_max_concurrency: usize,
    /// `multipartcopythresholdsize`: objects up to this size are copied in one request
    /// (default 32 MiB, at most 5 GiB).
    pub multipart_copy_threshold: u64,
    /// `storageclass`: `STANDARD` (default), `REDUCED_REDUNDANCY`, ... or `NONE` to send
    /// no storage class (servers that know none).
    pub storage_class: Option<String>,
    /// `storage.redirect.disable`: serve blob bytes through Berth instead of answering
    /// 307 with a presigned URL.
    pub redirect: bool,
    /// `middleware.storage: [{name: redirect, options: {baseurl: ...}}]`: blob
    /// redirects go to this base URL plus the object's path under `rootdirectory`
    /// (unsigned, as Distribution's redirect middleware does: a CDN or proxy with its own
    /// read access to the bucket serves them). No trailing slash.
    pub redirect_base: Option<String>,
    /// `blobkeys` (Berth's): write each pushed blob once, as a multipart upload
    /// completed in place at a key of its own (`objects/...`, recorded in the metadata
    /// database), instead of copying it into its digest's key at commit. Absent: the
    /// metadata database's `blob_keys` setting decides (on for a database this release
    /// created, off for one an older release created, whose nodes cannot read keys).
    pub blob_keys: Option<bool>,
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("access_key", &self.access_key)
            .field(
                "secret_key",
                &self.secret_key.as_ref().map(|_| "<redacted>"),
            )
            .field("region", &self.region)
            .field("region_endpoint", &self.region_endpoint)
            .field("force_path_style", &self.force_path_style)
            .field("bucket", &self.bucket)
            .field("root_directory", &self.root_directory)
            .field("chunk_size", &self.chunk_size)
            .field("redirect", &self.redirect)
            .field("redirect_base", &self.redirect_base)
            .field("blob_keys", &self.blob_keys)
            .finish_non_exhaustive()
    }
}

fn nonempty(tree: &Value, key: &str) -> Result<Option<String>, ConfigError> {
    Ok(get_str(tree, key)?.filter(|s| !s.is_empty()))
}

/// Parse `storage.s3` (called when the section is present).
pub fn parse(tree: &Value) -> Result<S3Config, ConfigError> {
    let region = nonempty(tree, "storage.s3.region")?.ok_or_else(|| {
        bad(
            "storage.s3.region",
            "is required: the bucket's region (any name, e.g. us-east-1, for servers that ignore it)",
        )
    })?;
    let bucket = nonempty(tree, "storage.s3.bucket")?.ok_or_else(|| {
        bad(
            "storage.s3.bucket",
            "is required: the name of an existing bucket",
        )
    })?;
    let access_key = nonempty(tree, "storage.s3.accesskey")?;
    let secret_key = nonempty(tree, "storage.s3.secretkey")?;
    if access_key.is_some() != secret_key.is_some() {
        return Err(bad(
            "storage.s3.secretkey",
            "accesskey and secretkey go together: set both, or neither to use AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
        ));
    }
    let region_endpoint = match nonempty(tree, "storage.s3.regionendpoint")? {
        None => None,
        Some(e) => {
            let with_scheme = if e.contains("://") {
                e
            } else {
                // Distribution accepts a bare host; `secure` then picks the scheme.
                let secure = get_bool(tree, "storage.s3.secure")?.unwrap_or(true);
                format!("{}://{e}", if secure { "https" } else { "http" })
            };
            let url = with_scheme.trim_end_matches('/').to_string();
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(bad(
                    "storage.s3.regionendpoint",
                    format!("{url:?} must be an http:// or https:// URL"),
                ));
            }
            Some(url)
        }
    };
    if get_bool(tree, "storage.s3.v4auth")? == Some(false) {
        return Err(bad(
            "storage.s3.v4auth",
            "Berth signs every request with AWS Signature Version 4 (v2 signatures are deprecated by every S3 server): remove the key or set it to true",
        ));
    }
    let force_path_style =
        get_bool(tree, "storage.s3.forcepathstyle")?.unwrap_or(region_endpoint.is_some());
    let chunk_size = get_size(tree, "storage.s3.chunksize")?.unwrap_or(10 * 1024 * 1024);
    if !(MIN_PART..=MAX_PART).contains(&chunk_size) {
        return Err(bad(
            "storage.s3.chunksize",
            format!("{chunk_size} is outside S3's part sizes: give 5MiB to 5GiB"),
        ));
    }
    let multipart_copy_chunk_size =
        get_size(tree, "storage.s3.multipartcopychunksize")?.unwrap_or(32 * 1024 * 1024);
    if !(MIN_PART..=MAX_PART).contains(&multipart_copy_chunk_size) {
        return Err(bad(
            "storage.s3.multipartcopychunksize",
            format!("{multipart_copy_chunk_size} is outside S3's part sizes: give 5MiB to 5GiB"),
        ));
    }
    let multipart_copy_max_concurrency =
        get_size(tree, "storage.s3.multipartcopymaxconcurrency")?.unwrap_or(100);
    if multipart_copy_max_concurrency == 0 {
        return Err(bad(
            "storage.s3.multipartcopymaxconcurrency",
            "must be at least 1",
        ));
    }
    let multipart_copy_threshold =
        get_size(tree, "storage.s3.multipartcopythresholdsize")?.unwrap_or(32 * 1024 * 1024);
    if multipart_copy_threshold > MAX_PART {
        return Err(bad(
            "storage.s3.multipartcopythresholdsize",
            "must be at most 5GiB, S3's largest single copy",
        ));
    }
    let storage_class = match nonempty(tree, "storage.s3.storageclass")?.as_deref() {
        None => Some("STANDARD".to_string()),
        Some("NONE") => None,
        Some(c) => Some(c.to_string()),
    };
    let root_directory = get_str(tree, "storage.s3.rootdirectory")?
        .unwrap_or_default()
        .trim_matches('/')
        .to_string();
    Ok(S3Config {
        access_key,
        secret_key,
        region,
        region_endpoint,
        force_path_style,
        bucket,
        root_directory,
        encrypt: get_bool(tree, "storage.s3.encrypt")?.unwrap_or(false),
        key_id: nonempty(tree, "storage.s3.keyid")?,
        secure: get_bool(tree, "storage.s3.secure")?.unwrap_or(true),
        skip_verify: get_bool(tree, "storage.s3.skipverify")?.unwrap_or(false),
        chunk_size,
        multipart_copy_chunk_size,
        multipart_copy_max_concurrency: usize::try_from(multipart_copy_max_concurrency)
            .unwrap_or(usize::MAX)
            .min(1000),
        multipart_copy_threshold,
        storage_class,
        redirect: !get_bool(tree, "storage.redirect.disable")?.unwrap_or(false),
        redirect_base: redirect_middleware(tree)?,
        blob_keys: get_bool(tree, "storage.s3.blobkeys")?,
    })
}

/// The entries of `middleware.storage` as (index, name, entry); an error if the section
/// is not a list of maps with a `name`.
fn storage_middleware(tree: &Value) -> Result<Vec<(usize, String, &Value)>, ConfigError> {
    let Some(list) = get(tree, "middleware.storage") else {
        return Ok(Vec::new());
    };
    if list.is_null() {
        return Ok(Vec::new());
    }
    let Some(items) = list.as_sequence() else {
        return Err(bad(
            "middleware.storage",
            "must be a list of entries like `- name: redirect` with their `options`",
        ));
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let name = get_str(item, "name")
            .map_err(|_| {
                bad(
                    &format!("middleware.storage[{i}].name"),
                    "expected a string",
                )
            })?
            .ok_or_else(|| bad(&format!("middleware.storage[{i}]"), "needs a name"))?;
        out.push((i, name, item));
    }
    Ok(out)
}

/// `baseurl` of the `redirect` storage middleware, checked.
fn redirect_middleware(tree: &Value) -> Result<Option<String>, ConfigError> {
    for (i, name, item) in storage_middleware(tree)? {
        if name != "redirect" {
            continue;
        }
        let key = format!("middleware.storage[{i}].options.baseurl");
        let base = get_str(item, "options.baseurl")
            .map_err(|_| bad(&key, "expected a URL"))?
            .filter(|b| !b.is_empty())
            .ok_or_else(|| bad(&key, "is required: the CDN or proxy URL blob redirects go to, e.g. https://cdn.example.com/registry"))?;
        let ok = ["http://", "https://"].iter().any(|p| {
            base.strip_prefix(p)
                .is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/'))
        });
        if !ok || base.contains(['?', '#', ' ']) {
            return Err(bad(
                &key,
                format!("{base:?} must be an http:// or https:// URL with a host (and optionally a path), without query or fragment"),
            ));
        }
        return Ok(Some(base.trim_end_matches('/').to_string()));
    }
    Ok(None)
}

/// What to tell the operator about `middleware.storage` entries Berth does not act on.
pub fn middleware_warnings(tree: &Value, s3: Option<&S3Config>) -> Vec<String> {
    let Ok(entries) = storage_middleware(tree) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, name, _) in entries {
        match (name.as_str(), s3) {
            ("redirect", Some(c)) if !c.redirect => out.push(format!(
                "middleware.storage[{i}] redirect is ignored: storage.redirect.disable is true, so blobs are served through Berth"
            )),
            ("redirect", Some(_)) => {}
            ("redirect", None) => out.push(format!(
                "middleware.storage[{i}] redirect applies to storage.s3 only (ignored): filesystem blobs are served by Berth"
            )),
            (other, _) => out.push(format!(
                "middleware.storage[{i}] {other} is not implemented (ignored): blob GETs redirect to presigned URLs of the bucket; for a CDN in front of the bucket use `name: redirect` with `options: {{baseurl: ...}}`"
            )),
        }
    }
    out
}
