//! S3-compatible blob store (AWS, MinIO, Ceph RGW, Garage, SeaweedFS).
//!
//! Layout under `rootdirectory` in the bucket:
//! ```text
//! blobs/<algorithm>/<first two hex>/<hex>   committed, immutable, content-addressed
//! uploads/<id>/state                        an upload's record (JSON): size, parts, the
//!                                           saved hash state, committed or not
//! uploads/<id>/part-<n>-<random>            the upload's bytes, in order
//! trash/<algorithm>-<hex>-<uuid>            blobs garbage collection moved aside
//! ```
//!
//! An upload is a list of part objects plus its record. An append streams the body into
//! new parts of `chunksize` (growing after every thousand parts, so a layer never needs
//! more than S3's 10,000), hashing as it goes; the record, written last, is the append's
//! commit point: an append that fails leaves the record as it was, and its parts are
//! orphans removed with the upload. Every part but the last is at least S3's 5 MiB part
//! minimum: a shorter last part (a small chunk) is read back (at most 5 MiB, never
//! rehashed) and rewritten together with the next chunk. The record carries the running
//! hash state ([`oci::Hasher::state`]), so whichever node gets the next chunk continues
//! without reading earlier bytes. Memory per append: one part being filled and up to
//! three being sent.
//!
//! Commit assembles the parts into the blob's object with one multipart upload of
//! server-side part copies (`UploadPartCopy`, `multipartcopymaxconcurrency` at once),
//! which S3 makes visible atomically when it completes; the registry has verified the
//! digest from the hash state before. A blob is never copied whole in one request above
//! `multipartcopythresholdsize`.
//!
//! Requests are signed with SigV4 by `rusty-s3` (presigned URLs, no HTTP stack of its
//! own) and sent with the binary's one `reqwest`/rustls client.

use super::StoredBlob;
use super::{BlobRef, ByteRange, ByteStream, HiddenBlob, Ingest, Result, StorageError};
use super::{StoredUpload, UploadProgress};
use crate::config::s3::{S3Config, MAX_PART, MIN_PART};
use bytes::{Bytes, BytesMut};
use futures_util::{StreamExt, TryStreamExt};
use oci::{Algorithm, Digest, Hasher};
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};
use std::io;
use std::path::Path;
use std::time::{Duration, SystemTime};

/// How long the URLs Berth signs for its own requests stay valid (a request must start
/// within it; a slow body may take longer).
const SIGN_FOR: Duration = Duration::from_secs(15 * 60);
/// How long opening a connection to the object store may take (TCP and TLS).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long data sent to the object store may stay unacknowledged before the
/// connection is dropped (`TCP_USER_TIMEOUT`).
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a redirect URL handed to a client stays valid (as Distribution's 20 minutes).
pub const REDIRECT_FOR: Duration = Duration::from_secs(20 * 60);
/// Longest wait for the object store's next bytes (of an answer, or of a blob being read).
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// S3's most parts per multipart upload.
const MAX_PARTS: usize = 10_000;
/// Parts of one upload being sent at once (memory per upload: this many parts plus the
/// one filling).
const PARTS_IN_FLIGHT: usize = 3;
/// Part sizes grow by `chunksize` after every this many parts.
const PARTS_PER_STEP: usize = 1000;
/// Most objects one listing page returns (S3's maximum).
const PAGE: usize = 1000;
/// Error bodies are read up to this much.
const ERROR_BODY: usize = 16 * 1024;

/// Cheap to clone (the HTTP client and signing state are shared or small), so a part
/// upload or a read can run in a task of its own.
#[derive(Clone)]
pub struct S3BlobStore {
    bucket: Bucket,
    credentials: Option<Credentials>,
    http: reqwest::Client,
    /// Key prefix: `rootdirectory/`, or empty.
    root: String,
    /// Headers every object write carries (server-side encryption, storage class).
    write_headers: Vec<(&'static str, String)>,
    chunk_size: u64,
    copy_chunk: u64,
    copy_concurrency: usize,
    copy_threshold: u64,
    redirect: bool,
    /// `middleware.storage` redirect: redirects go here (plus the key under the root),
    /// unsigned, instead of to a presigned URL of the bucket.
    redirect_base: Option<String>,
    /// `storage.s3.blobkeys`: client pushes are written once, as multipart uploads
    /// completed in place at keys of their own (`objects/...`), instead of being copied
    /// into their digest's key at commit.
    blob_keys: bool,
}

/// The record name of an upload staged in part objects (copied into the digest's key at
/// commit), and of a keyed upload. Two names, so that a node of a release without keyed
/// uploads finds no record (the upload is unknown to it) instead of misreading one.
const STAGED_RECORD: &str = "state";
const KEYED_RECORD: &str = "keyed";

/// One part sent to a keyed upload's multipart upload.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Sent {
    number: u16,
    etag: String,
    size: u64,
}

/// One part of an upload, in order.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Part {
    /// Object name under the upload's directory.
    name: String,
    size: u64,
}

/// `uploads/<id>/state`.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct Record {
    size: u64,
    /// [`Hasher::state`] of every byte so far, base64; absent before the first append.
    #[serde(default)]
    hash: Option<String>,
    parts: Vec<Part>,
    #[serde(default)]
    committed: bool,
    /// A keyed upload: the key (under the root, `objects/...`) its blob is written to and
    /// completed at. Its `parts` then hold at most the short tail that could not be a
    /// multipart part yet (under 5 MiB), staged as an object of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    /// The keyed upload's multipart upload id, from its first full part on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    multipart: Option<String>,
    /// The parts sent to it, in order, by ETag: completing with exactly these yields
    /// exactly the bytes the saved hash state describes (or fails).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    sent: Vec<Sent>,
}

impl Record {
    fn hasher(&self) -> Result<Option<Hasher>> {
        use base64::Engine as _;
        let Some(saved) = &self.hash else {
            return Ok(None);
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(saved)
            .map_err(|e| failure(format!("an upload's saved hash state is not base64: {e}")))?;
        Hasher::resume(&bytes)
            .map(Some)
            .map_err(|e| failure(e.to_string()))
    }
}

fn failure(what: impl Into<String>) -> StorageError {
    StorageError::Io(io::Error::other(what.into()))
}

/// The text of the first `<tag>...</tag>` in an XML answer.
fn xml_tag<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find(&format!("</{tag}>"))? + start;
    Some(&xml[start..end])
}

/// Text of an XML element with the five predefined entities decoded.
fn xml_text(raw: &str) -> String {
    raw.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

/// `<Upload>` entries of a ListMultipartUploads answer: key, upload id, and when it was
/// started (`None` when the server did not say in a form Berth reads).
fn parse_open_multipart(xml: &str) -> Vec<OpenMultipart> {
    xml.split("<Upload>")
        .skip(1)
        .filter_map(|entry| {
            let entry = entry.split("</Upload>").next().unwrap_or("");
            Some(OpenMultipart {
                key: xml_text(xml_tag(entry, "Key")?),
                upload_id: xml_text(xml_tag(entry, "UploadId")?),
                initiated: xml_tag(entry, "Initiated").and_then(parse_time),
            })
        })
        .collect()
}

/// A multipart upload the object store holds open.
#[derive(Debug, Clone, PartialEq)]
struct OpenMultipart {
    key: String,
    upload_id: String,
    initiated: Option<SystemTime>,
}

/// ISO 8601 times as S3 lists them (`2026-12-06T09:00:00.000Z`).
fn parse_time(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    if b.len() < 19 || b[4] != b'-' || b[10] != b'T' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hh * 3600 + mm * 60 + ss;
    let millis = s
        .get(20..23)
        .filter(|_| b[19] == b'.')
        .and_then(|f| f.parse::<u64>().ok())
        .unwrap_or(0);
    let secs = u64::try_from(secs).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(millis))
}

/// A listed object.
struct Listed {
    key: String,
    size: u64,
    modified: SystemTime,
}

impl S3BlobStore {
    /// A store over the configured bucket. Checks nothing over the network (the health
    /// check and the first request do).
    pub fn new(c: &S3Config) -> io::Result<S3BlobStore> {
        let endpoint = match &c.region_endpoint {
            Some(e) => e.clone(),
            None => format!(
                "{}://s3.{}.amazonaws.com",
                if c.secure { "https" } else { "http" },
                c.region
            ),
        };
        let url = endpoint.parse().map_err(|e| {
            io::Error::other(format!(
                "storage.s3.regionendpoint {endpoint:?} is not a URL: {e}"
            ))
        })?;
        let style = if c.force_path_style {
            UrlStyle::Path
        } else {
            UrlStyle::VirtualHost
        };
        let bucket = Bucket::new(url, style, c.bucket.clone(), c.region.clone())
            .map_err(|e| io::Error::other(format!("storage.s3: {e}")))?;
        let credentials = match (&c.access_key, &c.secret_key) {
            (Some(k), Some(s)) => Some(Credentials::new(k.clone(), s.clone())),
            _ => {
                let key = std::env::var("AWS_ACCESS_KEY_ID").ok();
                let secret = std::env::var("AWS_SECRET_ACCESS_KEY").ok();
                match (key, secret) {
                    (Some(k), Some(s)) => Some(match std::env::var("AWS_SESSION_TOKEN") {
                        Ok(t) if !t.is_empty() => Credentials::new_with_token(k, s, t),
                        _ => Credentials::new(k, s),
                    }),
                    _ => None,
                }
            }
        };
        let mut http = reqwest::Client::builder()
            // An object store answers a connection in milliseconds; one cut off by the
            // network never does: fail over to 503 in seconds, not tens of seconds
            // (tests/cluster_containers.rs cuts a node off its bucket).
            .connect_timeout(CONNECT_TIMEOUT)
            // Bytes sent on a pooled connection into a dead link stay unacknowledged:
            // the kernel gives up on the connection after this, well before the read
            // timeout below would.
            .tcp_user_timeout(TCP_USER_TIMEOUT)
            // A server that stops answering fails the request (503) instead of holding
            // it forever; a slow but moving transfer is unaffected.
            .read_timeout(READ_TIMEOUT)
            .pool_idle_timeout(Duration::from_secs(60))
            .danger_accept_invalid_certs(c.skip_verify);
        // The AWS SDKs' way to trust a private CA; Berth honours it too.
        if let Some(bundle) = std::env::var_os("AWS_CA_BUNDLE").filter(|b| !b.is_empty()) {
            match std::fs::read(&bundle) {
                Ok(pem) => match reqwest::Certificate::from_pem_bundle(&pem) {
                    Ok(certs) => {
                        for cert in certs {
                            http = http.add_root_certificate(cert);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(bundle = %Path::new(&bundle).display(), error = %e, "AWS_CA_BUNDLE holds no usable PEM certificates; ignoring it")
                    }
                },
                Err(e) => {
                    tracing::warn!(bundle = %Path::new(&bundle).display(), error = %e, "cannot read AWS_CA_BUNDLE; ignoring it")
                }
            }
        }
        let http = http
            .build()
            .map_err(|e| io::Error::other(format!("storage.s3: HTTP client: {e}")))?;
        let mut write_headers = Vec::new();
        if c.encrypt {
            match &c.key_id {
                Some(k) => {
                    write_headers.push(("x-amz-server-side-encryption", "aws:kms".to_string()));
                    write_headers.push(("x-amz-server-side-encryption-aws-kms-key-id", k.clone()));
                }
                None => write_headers.push(("x-amz-server-side-encryption", "AES256".to_string())),
            }
        }
        if let Some(class) = &c.storage_class {
            write_headers.push(("x-amz-storage-class", class.clone()));
        }
        Ok(S3BlobStore {
            bucket,
            credentials,
            http,
            root: if c.root_directory.is_empty() {
                String::new()
            } else {
                format!("{}/", c.root_directory)
            },
            write_headers,
            chunk_size: c.chunk_size,
            copy_chunk: c.multipart_copy_chunk_size,
            copy_concurrency: c.multipart_copy_max_concurrency,
            copy_threshold: c.multipart_copy_threshold,
            redirect: c.redirect,
            redirect_base: c.redirect_base.clone(),
            blob_keys: c.blob_keys.unwrap_or(false),
        })
    }

    /// Where the bucket is, for messages (never with credentials).
    /// Whether pushes write blobs at keys of their own (`storage.s3.blobkeys`, or the
    /// deployment's setting when the configuration does not say).
    pub fn with_blob_keys(mut self, on: bool) -> S3BlobStore {
        self.blob_keys = on;
        self
    }

    pub fn describe(&self) -> String {
        format!(
            "bucket {} at {}",
            self.bucket.name(),
            self.bucket.base_url()
        )
    }

    /// The object a blob is kept in: the key recorded for it (under the root directory),
    /// or its digest's own path. Recorded keys live under `objects/`, where no digest
    /// path, upload or hidden blob is.
    fn object_key(&self, blob: BlobRef<'_>) -> Result<String> {
        match blob.key {
            None => Ok(self.blob_key(blob.digest)),
            Some(key)
                if key.starts_with("objects/")
                    && !key
                        .split('/')
                        .any(|p| p.is_empty() || p == "." || p == "..") =>
            {
                Ok(format!("{}{key}", self.root))
            }
            Some(key) => Err(failure(format!(
                "blob {} is recorded at key {key:?}, which is not a blob object key (objects/...)",
                blob.digest
            ))),
        }
    }

    fn blob_key(&self, d: &Digest) -> String {
        let hex = d.hex();
        format!(
            "{}blobs/{}/{}/{}",
            self.root,
            d.algorithm().as_str(),
            &hex[..2],
            hex
        )
    }

    fn upload_dir(&self, id: &str) -> Result<String> {
        if !super::valid_upload_id(id) {
            return Err(StorageError::InvalidUploadId);
        }
        Ok(format!("{}uploads/{id}/", self.root))
    }

    fn trash_key(&self, name: &str) -> String {
        format!("{}trash/{name}", self.root)
    }

    fn creds(&self) -> Option<&Credentials> {
        self.credentials.as_ref()
    }

    /// Send a signed request; any answer but 2xx (and 404 when `missing_ok`) is an error
    /// naming the operation, the key and S3's error code.
    async fn send(
        &self,
        what: &str,
        key: &str,
        request: reqwest::RequestBuilder,
        missing_ok: bool,
    ) -> Result<Option<reqwest::Response>> {
        let response = request.send().await.map_err(|e| {
            StorageError::Unavailable(format!(
                "S3 {what} {key} ({}): {e}; check that the server is reachable",
                self.describe()
            ))
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(Some(response));
        }
        if status.as_u16() == 404 && missing_ok {
            return Ok(None);
        }
        let body = read_limited(response).await;
        let code = xml_tag(&body, "Code").unwrap_or("");
        let message = xml_tag(&body, "Message").unwrap_or("");
        let hint = match status.as_u16() {
            403 => "; check storage.s3.accesskey/secretkey and the bucket's permissions",
            404 if code == "NoSuchBucket" => "; create the bucket first",
            _ => "",
        };
        let what = format!(
            "S3 {what} {key} ({}) failed: {status} {code} {message}{hint}",
            self.describe()
        );
        Err(if status.is_server_error() {
            StorageError::Unavailable(what)
        } else {
            failure(what)
        })
    }

    async fn head(&self, key: &str) -> Result<Option<u64>> {
        let url = self.bucket.head_object(self.creds(), key).sign(SIGN_FOR);
        let Some(r) = self.send("HEAD", key, self.http.head(url), true).await? else {
            return Ok(None);
        };
        let len = r
            .headers()
            .get(reqwest::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| failure(format!("S3 HEAD {key}: no Content-Length")))?;
        Ok(Some(len))
    }

    async fn get_object(&self, key: &str, range: Option<ByteRange>) -> Result<Option<ByteStream>> {
        let url = self.bucket.get_object(self.creds(), key).sign(SIGN_FOR);
        let mut request = self.http.get(url);
        if let Some(r) = range {
            request = request.header(
                reqwest::header::RANGE,
                format!("bytes={}-{}", r.start, r.end),
            );
        }
        let Some(response) = self.send("GET", key, request, true).await? else {
            return Ok(None);
        };
        Ok(Some(Box::pin(
            response.bytes_stream().map_err(io::Error::other),
        )))
    }

    async fn get_all(&self, key: &str) -> Result<Option<Bytes>> {
        let url = self.bucket.get_object(self.creds(), key).sign(SIGN_FOR);
        let Some(response) = self.send("GET", key, self.http.get(url), true).await? else {
            return Ok(None);
        };
        let bytes = response
            .bytes()
            .await
            .map_err(|e| failure(format!("S3 GET {key}: {e}")))?;
        Ok(Some(bytes))
    }

    /// The keys (under the root) of every object under `space` (`objects/`, ...), sorted.
    #[cfg(test)]
    pub(crate) async fn keys_under(&self, space: &str) -> Vec<String> {
        let mut keys: Vec<String> = self
            .list_prefix(&format!("{}{space}", self.root))
            .await
            .expect("list")
            .into_iter()
            .filter_map(|o| o.key.strip_prefix(&self.root).map(str::to_string))
            .collect();
        keys.sort();
        keys
    }

    /// Write `body` at `key` under the store's root, as a keyed push would leave a blob
    /// (for tests of readers of recorded keys).
    #[cfg(test)]
    pub(crate) async fn put_at(&self, key: &str, body: Bytes) -> Result<()> {
        self.put(&format!("{}{key}", self.root), body).await
    }

    async fn put(&self, key: &str, body: Bytes) -> Result<()> {
        let mut action = self.bucket.put_object(self.creds(), key);
        for (k, v) in &self.write_headers {
            action.headers_mut().insert(*k, v.clone());
        }
        let url = action.sign(SIGN_FOR);
        let mut request = self.http.put(url).body(body);
        for (k, v) in &self.write_headers {
            request = request.header(*k, v);
        }
        self.send("PUT", key, request, false).await?;
        Ok(())
    }

    async fn delete_key(&self, key: &str) -> Result<()> {
        let url = self.bucket.delete_object(self.creds(), key).sign(SIGN_FOR);
        self.send("DELETE", key, self.http.delete(url), true)
            .await?;
        Ok(())
    }

    /// Every object under `prefix`.
    async fn list_prefix(&self, prefix: &str) -> Result<Vec<Listed>> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut action = self.bucket.list_objects_v2(self.creds());
            action.with_prefix(prefix);
            action.with_max_keys(PAGE);
            if let Some(t) = &token {
                action.with_continuation_token(t.clone());
            }
            let url = action.sign(SIGN_FOR);
            let Some(response) = self.send("LIST", prefix, self.http.get(url), false).await? else {
                break;
            };
            let text = response
                .text()
                .await
                .map_err(|e| failure(format!("S3 LIST {prefix}: {e}")))?;
            let page = rusty_s3::actions::ListObjectsV2::parse_response(&text)
                .map_err(|e| failure(format!("S3 LIST {prefix}: unreadable answer: {e}")))?;
            for o in page.contents {
                // Listings ask for `encoding-type=url`: keys come back percent-encoded
                // (some servers encode `/` too).
                let key = percent_encoding::percent_decode_str(&o.key)
                    .decode_utf8()
                    .map_err(|e| failure(format!("S3 LIST {prefix}: a key is not UTF-8: {e}")))?
                    .into_owned();
                out.push(Listed {
                    modified: parse_time(&o.last_modified).unwrap_or(SystemTime::UNIX_EPOCH),
                    key,
                    size: o.size,
                });
            }
            match page.next_continuation_token {
                Some(t) if !t.is_empty() => token = Some(t),
                _ => break,
            }
        }
        Ok(out)
    }

    /// `x-amz-copy-source` for a key of this bucket.
    fn copy_source(&self, key: &str) -> String {
        const KEEP: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
            .remove(b'/')
            .remove(b'-')
            .remove(b'_')
            .remove(b'.')
            .remove(b'~');
        format!(
            "/{}/{}",
            self.bucket.name(),
            percent_encoding::utf8_percent_encode(key, KEEP)
        )
    }

    /// Copy one whole object in one request (CopyObject; at most 5 GiB).
    async fn copy_object(&self, from: &str, to: &str) -> Result<()> {
        let source = self.copy_source(from);
        let mut action = self.bucket.put_object(self.creds(), to);
        action
            .headers_mut()
            .insert("x-amz-copy-source", source.clone());
        for (k, v) in &self.write_headers {
            action.headers_mut().insert(*k, v.clone());
        }
        let url = action.sign(SIGN_FOR);
        let mut request = self.http.put(url).header("x-amz-copy-source", source);
        for (k, v) in &self.write_headers {
            request = request.header(*k, v);
        }
        let response = self
            .send("COPY", to, request, false)
            .await?
            .ok_or_else(|| failure(format!("S3 COPY {from} -> {to}: not found")))?;
        // A copy can fail after its 200 has been sent: the error is then in the body.
        let body = read_limited(response).await;
        if body.contains("<Error>") {
            return Err(failure(format!(
                "S3 COPY {from} -> {to} failed: {} {}",
                xml_tag(&body, "Code").unwrap_or(""),
                xml_tag(&body, "Message").unwrap_or("")
            )));
        }
        Ok(())
    }

    /// Build `to` from `pieces` (a key and an optional inclusive byte range of it), in
    /// order, with one multipart upload of server-side part copies. Every piece but the
    /// last must be at least 5 MiB. `to` appears only when the upload completes.
    async fn multipart_copy(
        &self,
        to: &str,
        pieces: Vec<(String, Option<ByteRange>)>,
    ) -> Result<()> {
        if pieces.len() > MAX_PARTS {
            return Err(failure(format!(
                "S3 COPY {to}: {} parts is more than S3's {MAX_PARTS}",
                pieces.len()
            )));
        }
        let upload_id = self.create_multipart(to).await?;
        let copied = futures_util::stream::iter(pieces.into_iter().enumerate())
            .map(|(i, (from, range))| {
                let upload_id = upload_id.clone();
                async move { self.copy_part(to, &upload_id, i + 1, &from, range).await }
            })
            .buffered(self.copy_concurrency)
            .try_collect::<Vec<String>>()
            .await;
        let etags = match copied {
            Ok(etags) => etags,
            Err(e) => {
                self.abort(to, &upload_id).await;
                return Err(e);
            }
        };
        let complete = self.bucket.complete_multipart_upload(
            self.creds(),
            to,
            &upload_id,
            etags.iter().map(String::as_str),
        );
        let url = complete.sign(SIGN_FOR);
        let body = complete.body();
        let done = self
            .send(
                "COMPLETE MULTIPART",
                to,
                self.http.post(url).body(body),
                false,
            )
            .await;
        let answer = match done {
            Ok(Some(r)) => read_limited(r).await,
            Ok(None) => String::new(),
            Err(e) => {
                self.abort(to, &upload_id).await;
                return Err(e);
            }
        };
        if answer.contains("<Error>") {
            self.abort(to, &upload_id).await;
            return Err(failure(format!(
                "S3 COMPLETE MULTIPART {to} failed: {} {}",
                xml_tag(&answer, "Code").unwrap_or(""),
                xml_tag(&answer, "Message").unwrap_or("")
            )));
        }
        Ok(())
    }

    /// Start a multipart upload at `key` (with the store's write headers); its upload id.
    async fn create_multipart(&self, key: &str) -> Result<String> {
        let mut create = self.bucket.create_multipart_upload(self.creds(), key);
        for (k, v) in &self.write_headers {
            create.headers_mut().insert(*k, v.clone());
        }
        let url = create.sign(SIGN_FOR);
        let mut request = self.http.post(url);
        for (k, v) in &self.write_headers {
            request = request.header(*k, v);
        }
        let response = self
            .send("CREATE MULTIPART", key, request, false)
            .await?
            .ok_or_else(|| failure(format!("S3 CREATE MULTIPART {key}: not found")))?;
        let text = read_limited(response).await;
        Ok(
            rusty_s3::actions::CreateMultipartUpload::parse_response(&text)
                .map_err(|e| failure(format!("S3 CREATE MULTIPART {key}: unreadable answer: {e}")))?
                .upload_id()
                .to_string(),
        )
    }

    async fn copy_part(
        &self,
        to: &str,
        upload_id: &str,
        number: usize,
        from: &str,
        range: Option<ByteRange>,
    ) -> Result<String> {
        let number16 = u16::try_from(number)
            .map_err(|_| failure(format!("S3 COPY {to}: part {number} beyond S3's limit")))?;
        let source = self.copy_source(from);
        let mut action = self
            .bucket
            .upload_part(self.creds(), to, number16, upload_id);
        action
            .headers_mut()
            .insert("x-amz-copy-source", source.clone());
        let range = range.map(|r| format!("bytes={}-{}", r.start, r.end));
        if let Some(r) = &range {
            action
                .headers_mut()
                .insert("x-amz-copy-source-range", r.clone());
        }
        let url = action.sign(SIGN_FOR);
        let mut request = self.http.put(url).header("x-amz-copy-source", source);
        if let Some(r) = range {
            request = request.header("x-amz-copy-source-range", r);
        }
        let response = self
            .send("COPY PART", to, request, false)
            .await?
            .ok_or_else(|| failure(format!("S3 COPY PART {from}: not found")))?;
        let body = read_limited(response).await;
        match xml_tag(&body, "ETag") {
            Some(etag) if !body.contains("<Error>") => Ok(xml_text(etag)),
            _ => Err(failure(format!(
                "S3 COPY PART {from} -> {to} failed: {} {}",
                xml_tag(&body, "Code").unwrap_or("no ETag in the answer"),
                xml_tag(&body, "Message").unwrap_or("")
            ))),
        }
    }

    async fn abort(&self, key: &str, upload_id: &str) {
        if let Err(e) = self.try_abort(key, upload_id).await {
            tracing::warn!(error = %e, "could not abort a multipart upload; upload purging (or the bucket's lifecycle rules) removes it");
        }
    }

    /// Abort a multipart upload; one already gone is not an error.
    async fn try_abort(&self, key: &str, upload_id: &str) -> Result<()> {
        let url = self
            .bucket
            .abort_multipart_upload(self.creds(), key, upload_id)
            .sign(SIGN_FOR);
        self.send("ABORT MULTIPART", key, self.http.delete(url), true)
            .await?;
        Ok(())
    }

    /// A signed URL for a GET of the bucket itself with `query` (sorted here, as SigV4's
    /// canonical request wants it), for the requests rusty-s3 has no action for.
    fn signed_bucket_get(&self, mut query: Vec<(&'static str, String)>) -> reqwest::Url {
        query.sort();
        let pairs = query.iter().map(|(k, v)| (*k, v.as_str()));
        let url = self.bucket.base_url().clone();
        match self.creds() {
            Some(c) => rusty_s3::signing::sign(
                &jiff::Timestamp::now(),
                rusty_s3::Method::Get,
                url,
                c.key(),
                c.secret(),
                c.token(),
                self.bucket.region(),
                SIGN_FOR.as_secs(),
                pairs,
                std::iter::empty(),
            ),
            None => {
                let mut url = url;
                url.query_pairs_mut().extend_pairs(pairs);
                url
            }
        }
    }

    /// Every multipart upload open under `prefix` (ListMultipartUploads, page by page).
    async fn list_multipart(&self, prefix: &str) -> Result<Vec<OpenMultipart>> {
        let mut out = Vec::new();
        let mut marker: Option<(String, String)> = None;
        loop {
            let mut query = vec![
                ("uploads", String::new()),
                ("prefix", prefix.to_string()),
                ("max-uploads", PAGE.to_string()),
            ];
            if let Some((key, id)) = &marker {
                query.push(("key-marker", key.clone()));
                query.push(("upload-id-marker", id.clone()));
            }
            let url = self.signed_bucket_get(query);
            let Some(response) = self
                .send("LIST MULTIPART", prefix, self.http.get(url), false)
                .await?
            else {
                break;
            };
            let text = response
                .text()
                .await
                .map_err(|e| failure(format!("S3 LIST MULTIPART {prefix}: {e}")))?;
            out.extend(parse_open_multipart(&text));
            if xml_tag(&text, "IsTruncated") != Some("true") {
                break;
            }
            let next = match (
                xml_tag(&text, "NextKeyMarker"),
                xml_tag(&text, "NextUploadIdMarker"),
            ) {
                (Some(key), Some(id)) if !key.is_empty() => (xml_text(key), xml_text(id)),
                _ => break,
            };
            // A server that hands back the same page again would loop forever.
            if marker.as_ref() == Some(&next) {
                break;
            }
            marker = Some(next);
        }
        Ok(out)
    }

    /// Copy a whole object of `size` bytes: one request up to the threshold, ranged part
    /// copies beyond.
    async fn copy(&self, from: &str, to: &str, size: u64) -> Result<()> {
        if size <= self.copy_threshold {
            return self.copy_object(from, to).await;
        }
        let mut pieces = Vec::new();
        let mut start = 0;
        // Grow the pieces if the chunk size would need more parts than S3 allows.
        let chunk = self.copy_chunk.max(size.div_ceil(MAX_PARTS as u64));
        while start < size {
            let end = (start + chunk).min(size) - 1;
            pieces.push((from.to_string(), Some(ByteRange { start, end })));
            start = end + 1;
        }
        self.multipart_copy(to, pieces).await
    }

    async fn load(&self, id: &str) -> Result<(String, Record)> {
        let dir = self.upload_dir(id)?;
        // The kind this node opens first is looked for first.
        let names = if self.blob_keys {
            [KEYED_RECORD, STAGED_RECORD]
        } else {
            [STAGED_RECORD, KEYED_RECORD]
        };
        for name in names {
            let key = format!("{dir}{name}");
            if let Some(bytes) = self.get_all(&key).await? {
                let record: Record = serde_json::from_slice(&bytes)
                    .map_err(|e| failure(format!("upload record {key} is unreadable: {e}")))?;
                return Ok((dir, record));
            }
        }
        Err(StorageError::UploadNotFound)
    }

    /// An open (not committed) upload's record.
    async fn load_open(&self, id: &str) -> Result<(String, Record)> {
        let (dir, record) = self.load(id).await?;
        if record.committed {
            return Err(StorageError::UploadNotFound);
        }
        Ok((dir, record))
    }

    async fn save(&self, dir: &str, record: &Record) -> Result<()> {
        let json = serde_json::to_vec(record).map_err(|e| failure(e.to_string()))?;
        let name = match record.key {
            Some(_) => KEYED_RECORD,
            None => STAGED_RECORD,
        };
        self.put(&format!("{dir}{name}"), Bytes::from(json)).await
    }

    /// A staged piece of an upload, read back whole and checked against its record.
    async fn read_piece(&self, dir: &str, part: &Part) -> Result<Bytes> {
        let bytes = self
            .get_all(&format!("{dir}{}", part.name))
            .await?
            .ok_or_else(|| failure(format!("upload part {dir}{} is missing", part.name)))?;
        if bytes.len() as u64 != part.size {
            return Err(failure(format!(
                "upload part {dir}{} holds {} bytes, its record says {}",
                part.name,
                bytes.len(),
                part.size
            )));
        }
        Ok(bytes)
    }

    /// The size of the next part, given how many there are: `chunksize`, one more
    /// `chunksize` after every thousand parts (10 MiB parts reach 550 GiB in 10,000).
    fn part_target(&self, parts: usize) -> u64 {
        (self.chunk_size * (1 + (parts / PARTS_PER_STEP) as u64)).min(MAX_PART)
    }

    /// Stream `body` into new parts after `record`'s; returns the new record (not yet
    /// saved) and the names written (to remove on failure).
    async fn write_parts(
        &self,
        dir: &str,
        record: &Record,
        mut hasher: Hasher,
        mut body: ByteStream,
        limit: u64,
        written: &mut Vec<String>,
    ) -> Result<(Record, Hasher)> {
        let mut parts = record.parts.clone();
        let mut buf = BytesMut::new();
        // A last part below S3's minimum is rewritten together with what comes now.
        if parts.last().is_some_and(|p| p.size < MIN_PART) {
            if let Some(last) = parts.pop() {
                buf.extend_from_slice(&self.read_piece(dir, &last).await?);
            }
        }
        let mut size = record.size;
        let mut sending = Sending::default();
        loop {
            let target = self.part_target(parts.len()) as usize;
            if buf.len() >= target {
                let part = buf.split_to(target).freeze();
                self.send_part(dir, &mut parts, part, &mut sending, written)
                    .await?;
                continue;
            }
            match body.next().await {
                None => break,
                Some(Err(e)) => {
                    finish(&mut sending).await?;
                    return Err(StorageError::Body(e));
                }
                Some(Ok(chunk)) => {
                    size += chunk.len() as u64;
                    if size > limit {
                        finish(&mut sending).await?;
                        return Err(StorageError::TooLarge { limit });
                    }
                    hasher.update(&chunk);
                    buf.extend_from_slice(&chunk);
                }
            }
        }
        if !buf.is_empty() {
            let part = buf.split().freeze();
            self.send_part(dir, &mut parts, part, &mut sending, written)
                .await?;
        }
        finish(&mut sending).await?;
        Ok((
            Record {
                size,
                parts,
                ..Record::default()
            },
            hasher,
        ))
    }

    /// [`Self::write_parts`] for a keyed upload: full parts go to its multipart upload
    /// (created with the first), a short tail is staged as an object of its own and
    /// sent with what comes next. Returns the new record (not yet saved).
    async fn write_keyed(
        &self,
        dir: &str,
        record: &Record,
        mut hasher: Hasher,
        mut body: ByteStream,
        limit: u64,
        written: &mut Vec<String>,
    ) -> Result<(Record, Hasher)> {
        let Some(key) = record.key.as_deref() else {
            return Err(failure("write_keyed on a staged upload"));
        };
        let key = format!("{}{key}", self.root);
        let mut next = record.clone();
        next.hash = None;
        let mut buf = BytesMut::new();
        if let Some(tail) = next.parts.pop() {
            buf.extend_from_slice(&self.read_piece(dir, &tail).await?);
        }
        let mut size = record.size;
        let mut sending = tokio::task::JoinSet::new();
        let outcome: Result<()> = async {
            loop {
                let target = self.part_target(next.sent.len()) as usize;
                if buf.len() >= target {
                    let part = buf.split_to(target).freeze();
                    self.send_keyed_part(&key, &mut next, part, &mut sending)
                        .await?;
                    continue;
                }
                match body.next().await {
                    None => break,
                    Some(Err(e)) => return Err(StorageError::Body(e)),
                    Some(Ok(chunk)) => {
                        size += chunk.len() as u64;
                        if size > limit {
                            return Err(StorageError::TooLarge { limit });
                        }
                        hasher.update(&chunk);
                        buf.extend_from_slice(&chunk);
                    }
                }
            }
            if buf.len() as u64 >= MIN_PART {
                let part = buf.split().freeze();
                self.send_keyed_part(&key, &mut next, part, &mut sending)
                    .await?;
            } else if !buf.is_empty() {
                // The tail goes as the last part at the commit: it needs a number too.
                if next.sent.len() >= MAX_PARTS {
                    return Err(failure(format!(
                        "S3 UPLOAD PART {key}: the upload would need more than S3's {MAX_PARTS} parts"
                    )));
                }
                let name = format!("tail-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
                let part = buf.split().freeze();
                written.push(name.clone());
                next.parts = vec![Part {
                    name: name.clone(),
                    size: part.len() as u64,
                }];
                self.put(&format!("{dir}{name}"), part).await?;
            }
            Ok(())
        }
        .await;
        // Every part on its way lands (or fails) before the record can name it.
        let mut first = outcome;
        while let Some(done) = sending.join_next().await {
            match landed(done) {
                Ok((i, etag)) => next.sent[i].etag = etag,
                Err(e) => {
                    if first.is_ok() {
                        first = Err(e);
                    }
                }
            }
        }
        first?;
        next.size = size;
        Ok((next, hasher))
    }

    /// Start sending one full part of a keyed upload (creating its multipart upload
    /// first), once fewer than [`PARTS_IN_FLIGHT`] are on their way.
    async fn send_keyed_part(
        &self,
        key: &str,
        next: &mut Record,
        bytes: Bytes,
        sending: &mut tokio::task::JoinSet<Result<(usize, String)>>,
    ) -> Result<()> {
        while sending.len() >= PARTS_IN_FLIGHT {
            if let Some(done) = sending.join_next().await {
                let (i, etag) = landed(done)?;
                next.sent[i].etag = etag;
            }
        }
        let upload_id = match &next.multipart {
            Some(id) => id.clone(),
            None => {
                let id = self.create_multipart(key).await?;
                next.multipart = Some(id.clone());
                id
            }
        };
        let index = next.sent.len();
        let number = u16::try_from(index + 1)
            .ok()
            .filter(|n| usize::from(*n) <= MAX_PARTS)
            .ok_or_else(|| {
                failure(format!(
                    "S3 UPLOAD PART {key}: more than S3's {MAX_PARTS} parts"
                ))
            })?;
        next.sent.push(Sent {
            number,
            etag: String::new(),
            size: bytes.len() as u64,
        });
        let this = self.clone();
        let key = key.to_string();
        sending.spawn(async move {
            let etag = this.upload_part(&key, &upload_id, number, bytes).await?;
            Ok((index, etag))
        });
        Ok(())
    }

    /// Send one part of multipart upload `upload_id` at `key`; its ETag.
    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: u16,
        bytes: Bytes,
    ) -> Result<String> {
        let url = self
            .bucket
            .upload_part(self.creds(), key, number, upload_id)
            .sign(SIGN_FOR);
        let response = self
            .send("UPLOAD PART", key, self.http.put(url).body(bytes), false)
            .await?
            .ok_or_else(|| failure(format!("S3 UPLOAD PART {key}: not found")))?;
        response
            .headers()
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .ok_or_else(|| failure(format!("S3 UPLOAD PART {key}: no ETag in the answer")))
    }

    /// Complete multipart upload `upload_id` at `key` with `parts` (number, ETag).
    /// `Ok(false)` when the server no longer knows the upload (completed before, or
    /// aborted): the caller looks at the key. A named part the server does not hold as
    /// named (replaced by a concurrent append) fails.
    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        etags: &[String],
    ) -> Result<bool> {
        let complete = self.bucket.complete_multipart_upload(
            self.creds(),
            key,
            upload_id,
            etags.iter().map(String::as_str),
        );
        let url = complete.sign(SIGN_FOR);
        let body = complete.body();
        // Sent here rather than through `send`: the answer's code decides (an error
        // may come as a 4xx or inside a 200).
        let response = self.http.post(url).body(body).send().await.map_err(|e| {
            StorageError::Unavailable(format!(
                "S3 COMPLETE MULTIPART {key} ({}): {e}; check that the server is reachable",
                self.describe()
            ))
        })?;
        let status = response.status();
        let answer = read_limited(response).await;
        if status.is_success() && !answer.contains("<Error>") {
            return Ok(true);
        }
        let code = xml_tag(&answer, "Code").unwrap_or("");
        if code == "NoSuchUpload" || (status.as_u16() == 404 && code.is_empty()) {
            return Ok(false);
        }
        let what = format!(
            "S3 COMPLETE MULTIPART {key} ({}) failed: {status} {code} {}",
            self.describe(),
            xml_tag(&answer, "Message").unwrap_or("")
        );
        Err(match code {
            "InvalidPart" | "InvalidPartOrder" => StorageError::PartsReplaced(format!(
                "{what}: the upload's parts were replaced by a concurrent append at the same offset; start the upload again"
            )),
            _ if status.is_server_error() => StorageError::Unavailable(what),
            _ => failure(what),
        })
    }

    /// Commit a keyed upload: its multipart upload completed in place (the staged tail
    /// sent as its last part), or a short one written whole; the key then holds exactly
    /// the recorded bytes. Returns the key (under the root).
    async fn commit_keyed(
        &self,
        id: &str,
        dir: &str,
        record: &Record,
        digest: &Digest,
        verified: bool,
    ) -> Result<String> {
        let Some(relative) = record.key.clone() else {
            return Err(failure(format!("upload {id} has no key")));
        };
        let key = format!("{}{relative}", self.root);
        // A commit retried (its answer lost, or GC asking again) finds the object: it
        // is trusted only as far as its bytes are read back and hashed.
        let mut trust = false;
        if self.head(&key).await?.is_none() {
            match &record.multipart {
                None => {
                    let bytes = match record.parts.first() {
                        Some(tail) => self.read_piece(dir, tail).await?,
                        None => Bytes::new(),
                    };
                    self.put(&key, bytes).await?;
                    trust = true;
                }
                Some(upload_id) => {
                    let mut etags: Vec<String> =
                        record.sent.iter().map(|p| p.etag.clone()).collect();
                    if let Some(tail) = record.parts.first() {
                        let bytes = self.read_piece(dir, tail).await?;
                        let number = u16::try_from(record.sent.len() + 1)
                            .map_err(|_| failure(format!("upload {id}: too many parts")))?;
                        etags.push(self.upload_part(&key, upload_id, number, bytes).await?);
                    }
                    trust = match self.complete_multipart(&key, upload_id, &etags).await {
                        Ok(done) => done,
                        Err(e @ StorageError::PartsReplaced(_)) => {
                            // It can never complete as recorded: its parts go now,
                            // not at the purge age.
                            self.abort(&key, upload_id).await;
                            return Err(e);
                        }
                        Err(e) => return Err(e),
                    };
                }
            }
        }
        // Checked after writing, a few times: some servers order a write and a read of
        // one key within a millisecond either way (Garage).
        let mut size = None;
        for attempt in 0..3u64 {
            size = self.head(&key).await?;
            if size.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2 << attempt)).await;
        }
        match size {
            Some(n) if n == record.size => {}
            Some(n) => {
                return Err(failure(format!(
                    "committed {key} holds {n} bytes, the upload {}; push the layer again",
                    record.size
                )))
            }
            None => {
                return Err(failure(format!(
                    "completed {key} but the object store does not show it; retry the push"
                )))
            }
        }
        if !(trust && verified) {
            let mut hasher = digest.algorithm().hasher();
            let mut bytes = self
                .get_object(&key, None)
                .await?
                .ok_or_else(|| failure(format!("committed {key} disappeared")))?;
            while let Some(chunk) = bytes.next().await {
                hasher.update(&chunk?);
            }
            let actual = hasher.digest();
            if &actual != digest {
                // Written by this call (no other commit of the upload runs: see
                // `may_hold_keyed_uploads`) and never linked: nothing names it. One
                // found already there may be an earlier commit's, linked: it stays.
                if trust {
                    self.delete_key(&key).await?;
                }
                return Err(StorageError::DigestMismatch {
                    path: std::path::PathBuf::from(key),
                    expected: digest.clone(),
                    actual,
                });
            }
        }
        Ok(relative)
    }

    /// Start sending one part, once fewer than [`PARTS_IN_FLIGHT`] are on their way:
    /// parts go out while the next fills.
    async fn send_part(
        &self,
        dir: &str,
        parts: &mut Vec<Part>,
        bytes: Bytes,
        sending: &mut Sending,
        written: &mut Vec<String>,
    ) -> Result<()> {
        sending.room().await?;
        let name = format!(
            "part-{:05}-{}",
            parts.len() + 1,
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        parts.push(Part {
            name: name.clone(),
            size: bytes.len() as u64,
        });
        written.push(name.clone());
        let this = self.clone();
        let key = format!("{dir}{name}");
        sending
            .tasks
            .spawn(async move { this.put(&key, bytes).await });
        Ok(())
    }

    /// Remove objects, logging (not failing on) what could not go.
    async fn remove_all(&self, keys: impl IntoIterator<Item = String>) {
        let keys: Vec<String> = keys.into_iter().collect();
        let results = futures_util::stream::iter(keys)
            .map(|k| async move { (self.delete_key(&k).await, k) })
            .buffer_unordered(16)
            .collect::<Vec<_>>()
            .await;
        for (r, k) in results {
            if let Err(e) = r {
                tracing::warn!(key = %k, error = %e, "could not remove an object; upload purging retries");
            }
        }
    }

    /// A stream of an upload's bytes in `range`, part after part.
    fn read_parts(&self, dir: &str, parts: &[Part], range: ByteRange) -> ByteStream {
        let mut pieces = Vec::new();
        let mut offset = 0u64;
        for p in parts {
            let (start, end) = (offset, offset + p.size);
            offset = end;
            if p.size == 0 || end <= range.start || start > range.end {
                continue;
            }
            let from = range.start.max(start) - start;
            let to = range.end.min(end - 1) - start;
            pieces.push((
                format!("{dir}{}", p.name),
                ByteRange {
                    start: from,
                    end: to,
                },
            ));
        }
        let this = self.clone();
        let stream = futures_util::stream::iter(pieces)
            .then(move |(key, r)| {
                let this = this.clone();
                async move {
                    match this.get_object(&key, Some(r)).await {
                        Ok(Some(s)) => Ok(s),
                        Ok(None) => Err(io::Error::other(format!("upload part {key} is missing"))),
                        Err(e) => Err(io::Error::other(e.to_string())),
                    }
                }
            })
            .try_flatten();
        Box::pin(stream)
    }
}

/// Part uploads on their way (each part has its name and place before it is sent, so
/// they may finish in any order).
#[derive(Default)]
struct Sending {
    tasks: tokio::task::JoinSet<Result<()>>,
}

impl Sending {
    async fn next(&mut self) -> Option<Result<()>> {
        Some(landed(self.tasks.join_next().await?))
    }

    /// Wait until another part may start.
    async fn room(&mut self) -> Result<()> {
        while self.tasks.len() >= PARTS_IN_FLIGHT {
            if let Some(r) = self.next().await {
                r?;
            }
        }
        Ok(())
    }
}

/// A part upload's outcome once its task ended (a panicked or cancelled task is a
/// failure like any other).
fn landed<T>(done: std::result::Result<Result<T>, tokio::task::JoinError>) -> Result<T> {
    done.map_err(|e| failure(format!("a part upload stopped: {e}")))
        .and_then(|r| r)
}

/// Wait for every part on its way; the first failure is returned.
async fn finish(sending: &mut Sending) -> Result<()> {
    let mut first = Ok(());
    while let Some(r) = sending.next().await {
        if first.is_ok() {
            first = r;
        }
    }
    first
}

async fn read_limited(response: reqwest::Response) -> String {
    let mut out = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(Ok(chunk)) = stream.next().await {
        let room = ERROR_BODY.saturating_sub(out.len());
        out.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if out.len() >= ERROR_BODY {
            break;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_blob_key(rest: &str) -> Option<Digest> {
    let mut it = rest.split('/');
    let (alg, _, hex) = (it.next()?, it.next()?, it.next()?);
    if it.next().is_some() {
        return None;
    }
    format!("{alg}:{hex}").parse().ok()
}

fn parse_hidden(name: &str) -> Option<HiddenBlob> {
    let (alg, rest) = name.split_once('-')?;
    let (hex, _uuid) = rest.split_once('-')?;
    let digest = format!("{alg}:{hex}").parse().ok()?;
    Some(HiddenBlob {
        digest,
        name: name.to_string(),
    })
}

#[async_trait::async_trait]
impl super::BlobStore for S3BlobStore {
    /// A presigned GET for the client to follow (307), unless `storage.redirect.disable`.
    fn redirects(&self) -> bool {
        self.redirect
    }

    fn writes_keys(&self) -> bool {
        self.blob_keys
    }

    fn may_hold_keyed_uploads(&self) -> bool {
        true
    }

    fn redirect_url(&self, blob: BlobRef<'_>) -> Option<String> {
        if !self.redirect {
            return None;
        }
        let key = self.object_key(blob).ok()?;
        if let Some(base) = &self.redirect_base {
            let path = key.strip_prefix(&self.root).unwrap_or(&key);
            return Some(format!("{base}/{path}"));
        }
        Some(
            self.bucket
                .get_object(self.creds(), &key)
                .sign(REDIRECT_FOR)
                .to_string(),
        )
    }

    async fn stat(&self, blob: BlobRef<'_>) -> Result<Option<u64>> {
        self.head(&self.object_key(blob)?).await
    }

    async fn get(&self, blob: BlobRef<'_>, range: Option<ByteRange>) -> Result<ByteStream> {
        self.get_object(&self.object_key(blob)?, range)
            .await?
            .ok_or(StorageError::BlobNotFound)
    }

    async fn delete(&self, blob: BlobRef<'_>) -> Result<bool> {
        let key = self.object_key(blob)?;
        if self.head(&key).await?.is_none() {
            return Ok(false);
        }
        self.delete_key(&key).await?;
        Ok(true)
    }

    async fn hide(&self, digest: &Digest) -> Result<Option<HiddenBlob>> {
        let key = self.blob_key(digest);
        let Some(size) = self.head(&key).await? else {
            return Ok(None);
        };
        let name = format!(
            "{}-{}-{}",
            digest.algorithm().as_str(),
            digest.hex(),
            uuid::Uuid::new_v4().simple()
        );
        self.copy(&key, &self.trash_key(&name), size).await?;
        self.delete_key(&key).await?;
        Ok(Some(HiddenBlob {
            digest: digest.clone(),
            name,
        }))
    }

    async fn unhide(&self, hidden: &HiddenBlob) -> Result<bool> {
        let trash = self.trash_key(&hidden.name);
        let Some(size) = self.head(&trash).await? else {
            return Ok(false);
        };
        let key = self.blob_key(&hidden.digest);
        let restored = if self.head(&key).await?.is_some() {
            false
        } else {
            self.copy(&trash, &key, size).await?;
            true
        };
        self.delete_key(&trash).await?;
        Ok(restored)
    }

    async fn purge(&self, hidden: &HiddenBlob) -> Result<bool> {
        let trash = self.trash_key(&hidden.name);
        if self.head(&trash).await?.is_none() {
            return Ok(false);
        }
        self.delete_key(&trash).await?;
        Ok(true)
    }

    async fn hidden(&self) -> Result<Vec<HiddenBlob>> {
        let prefix = self.trash_key("");
        Ok(self
            .list_prefix(&prefix)
            .await?
            .into_iter()
            .filter_map(|o| parse_hidden(o.key.strip_prefix(&prefix)?))
            .collect())
    }

    async fn list(&self) -> Result<Vec<StoredBlob>> {
        let prefix = format!("{}blobs/", self.root);
        Ok(self
            .list_prefix(&prefix)
            .await?
            .into_iter()
            .filter_map(|o| {
                let digest = parse_blob_key(o.key.strip_prefix(&prefix)?)?;
                Some(StoredBlob {
                    digest,
                    size: o.size,
                    modified: o.modified,
                })
            })
            .collect())
    }

    async fn create_upload(&self, id: &str) -> Result<()> {
        let dir = self.upload_dir(id)?;
        self.save(&dir, &Record::default()).await
    }

    async fn create_keyed_upload(&self, id: &str) -> Result<()> {
        if !self.blob_keys {
            return self.create_upload(id).await;
        }
        let dir = self.upload_dir(id)?;
        let own = uuid::Uuid::new_v4().simple().to_string();
        let record = Record {
            key: Some(format!("objects/{}/{own}", &own[..2])),
            ..Record::default()
        };
        self.save(&dir, &record).await
    }

    async fn upload_size(&self, id: &str) -> Result<u64> {
        Ok(self.load_open(id).await?.1.size)
    }

    async fn read_upload(&self, id: &str, range: ByteRange) -> Result<ByteStream> {
        let (dir, record) = self.load_open(id).await?;
        if range.end >= record.size || range.start > range.end {
            return Err(failure(format!(
                "bytes {}-{} are not within upload {id}'s {} bytes",
                range.start, range.end, record.size
            )));
        }
        if !record.sent.is_empty() {
            return Err(StorageError::KeyedUploadUnreadable);
        }
        Ok(self.read_parts(&dir, &record.parts, range))
    }

    async fn append_upload(
        &self,
        id: &str,
        progress: UploadProgress,
        body: ByteStream,
        limit: u64,
    ) -> Result<UploadProgress> {
        let (dir, record) = self.load_open(id).await?;
        if progress.size != record.size {
            return Err(StorageError::OffsetMismatch {
                expected: progress.size,
                actual: record.size,
            });
        }
        // The stored state is the truth (another node may have written the last chunk);
        // the caller's is used before the first append or for another algorithm.
        let hasher = match record.hasher()? {
            Some(h) if h.algorithm() == progress.hasher.algorithm() && h.len() == record.size => h,
            _ => progress.hasher,
        };
        let mut written = Vec::new();
        let result = match record.key {
            Some(_) => {
                self.write_keyed(&dir, &record, hasher, body, limit, &mut written)
                    .await
            }
            None => {
                self.write_parts(&dir, &record, hasher, body, limit, &mut written)
                    .await
            }
        };
        let (mut next, hasher) = match result {
            Ok(r) => r,
            Err(e) => {
                self.remove_all(written.iter().map(|n| format!("{dir}{n}")))
                    .await;
                return Err(e);
            }
        };
        {
            use base64::Engine as _;
            next.hash = Some(base64::engine::general_purpose::STANDARD.encode(hasher.state()));
        }
        if let Err(e) = self.save(&dir, &next).await {
            self.remove_all(written.iter().map(|n| format!("{dir}{n}")))
                .await;
            return Err(e);
        }
        // A short last part that was rewritten into a new one is not needed any more.
        let replaced = record
            .parts
            .iter()
            .filter(|p| !next.parts.iter().any(|n| n.name == p.name))
            .map(|p| format!("{dir}{}", p.name));
        self.remove_all(replaced).await;
        Ok(UploadProgress {
            size: next.size,
            hasher,
        })
    }

    async fn rehash_upload(&self, id: &str, algorithm: Algorithm) -> Result<UploadProgress> {
        let (dir, record) = self.load_open(id).await?;
        if let Some(h) = record.hasher()? {
            if h.algorithm() == algorithm && h.len() == record.size {
                return Ok(UploadProgress {
                    size: record.size,
                    hasher: h,
                });
            }
        }
        if !record.sent.is_empty() {
            return Err(StorageError::KeyedUploadUnreadable);
        }
        let mut hasher = algorithm.hasher();
        if record.size > 0 {
            let mut bytes = self.read_parts(
                &dir,
                &record.parts,
                ByteRange {
                    start: 0,
                    end: record.size - 1,
                },
            );
            while let Some(chunk) = bytes.next().await {
                hasher.update(&chunk?);
            }
        }
        Ok(UploadProgress {
            size: record.size,
            hasher,
        })
    }

    async fn commit_upload(&self, id: &str, digest: &Digest) -> Result<Option<String>> {
        let (dir, mut record) = self.load(id).await?;
        let mut verified = false;
        // The stored hash state describes the parts the record lists, whichever node
        // wrote them: verify against it, not only against the caller's idea of the
        // upload (another node's append at the same offset may have replaced the
        // content the caller hashed; then the record wins and this refuses).
        if let Some(h) = record.hasher()? {
            if h.algorithm() == digest.algorithm() && h.len() == record.size {
                let actual = h.digest();
                if &actual != digest {
                    return Err(StorageError::DigestMismatch {
                        path: std::path::PathBuf::from(format!("{dir}state")),
                        expected: digest.clone(),
                        actual,
                    });
                }
                verified = true;
            }
        }
        if !record.committed {
            // Closed first: from now on no append can change the parts being copied.
            record.committed = true;
            self.save(&dir, &record).await?;
        }
        if record.key.is_some() {
            return self
                .commit_keyed(id, &dir, &record, digest, verified)
                .await
                .map(Some);
        }
        let key = self.blob_key(digest);
        if self.head(&key).await?.is_some() {
            return Ok(None);
        }
        let parts: Vec<(String, Option<ByteRange>)> = record
            .parts
            .iter()
            .filter(|p| p.size > 0)
            .map(|p| (format!("{dir}{}", p.name), None))
            .collect();
        // Checked after writing: some servers order a write and a delete of the same key
        // within one millisecond either way (Garage), so a blob deleted just before may
        // still hide the new one; then it is written again.
        for attempt in 0..3u64 {
            match parts.len() {
                0 => self.put(&key, Bytes::new()).await?,
                1 => self.copy(&parts[0].0, &key, record.size).await?,
                _ => self.multipart_copy(&key, parts.clone()).await?,
            }
            match self.head(&key).await? {
                Some(size) if size == record.size => return Ok(None),
                Some(size) => {
                    return Err(failure(format!(
                        "committed {key} holds {size} bytes, the upload {}",
                        record.size
                    )))
                }
                None => tokio::time::sleep(Duration::from_millis(2 << attempt)).await,
            }
        }
        Err(failure(format!(
            "committed {key} but the object store does not show it; retry the push"
        )))
    }

    async fn delete_upload(&self, id: &str) -> Result<()> {
        let dir = self.upload_dir(id)?;
        let objects = self.list_prefix(&dir).await?;
        let records = [
            format!("{dir}{STAGED_RECORD}"),
            format!("{dir}{KEYED_RECORD}"),
        ];
        // A keyed upload's multipart upload is aborted unless its commit began (then
        // it completes, or purging aborts it). Its key is never deleted here: once
        // completed it may be a recorded blob's.
        if objects.iter().any(|o| o.key == records[1]) {
            if let Ok((_, record)) = self.load(id).await {
                if let (Some(key), Some(upload_id), false) =
                    (&record.key, &record.multipart, record.committed)
                {
                    self.abort(&format!("{}{key}", self.root), upload_id).await;
                }
            }
        }
        // The record first: from then on the upload is gone, whatever parts remain.
        for record in &records {
            if objects.iter().any(|o| &o.key == record) {
                self.delete_key(record).await?;
            }
        }
        self.remove_all(
            objects
                .into_iter()
                .map(|o| o.key)
                .filter(|k| !records.contains(k)),
        )
        .await;
        Ok(())
    }

    async fn list_uploads(&self) -> Result<Vec<StoredUpload>> {
        let prefix = format!("{}uploads/", self.root);
        let mut by_id: std::collections::HashMap<String, SystemTime> = Default::default();
        for o in self.list_prefix(&prefix).await? {
            let Some((id, _)) = o.key.strip_prefix(&prefix).and_then(|r| r.split_once('/')) else {
                continue;
            };
            let t = by_id.entry(id.to_string()).or_insert(o.modified);
            *t = (*t).max(o.modified);
        }
        Ok(by_id
            .into_iter()
            .map(|(id, modified)| StoredUpload { id, modified })
            .collect())
    }

    async fn upload_written(&self, id: &str) -> Result<Option<SystemTime>> {
        let dir = self.upload_dir(id)?;
        Ok(self
            .list_prefix(&dir)
            .await?
            .into_iter()
            .map(|o| o.modified)
            .max())
    }

    async fn abort_stale_multipart(&self, before: SystemTime, dry_run: bool) -> Result<u64> {
        // Only Berth's own key spaces, never the whole bucket: without a rootdirectory
        // the bucket may hold other writers' uploads. Commits and hides copy into
        // `blobs/` and `trash/`; keyed uploads write to `objects/`.
        let mut found = 0;
        for space in ["blobs/", "objects/", "trash/", "uploads/"] {
            let prefix = format!("{}{space}", self.root);
            for open in self.list_multipart(&prefix).await? {
                // An upload whose start the server did not say is left alone.
                let Some(initiated) = open.initiated.filter(|t| *t < before) else {
                    continue;
                };
                let started = initiated
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                tracing::info!(key = %open.key, upload_id = %open.upload_id, started, dry_run, "multipart upload left open is older than the purge age; aborting it");
                if dry_run {
                    found += 1;
                    continue;
                }
                match self.try_abort(&open.key, &open.upload_id).await {
                    Ok(()) => found += 1,
                    Err(e) => {
                        tracing::warn!(key = %open.key, error = %e, "cannot abort a multipart upload left open; the next purge tries again")
                    }
                }
            }
        }
        Ok(found)
    }

    async fn import_file(&self, source: &Path, digest: &Digest) -> Result<(u64, Ingest)> {
        use tokio::io::AsyncReadExt;
        let source_err = |e| StorageError::Source {
            path: source.to_path_buf(),
            source: e,
        };
        let file = tokio::fs::File::open(source).await.map_err(source_err)?;
        let path = source.to_path_buf();
        let stream = futures_util::stream::unfold(Some(file), |file| async move {
            let mut file = file?;
            let mut buf = vec![0u8; 1024 * 1024];
            match file.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok(Bytes::from(buf)), Some(file)))
                }
                Err(e) => Some((Err(e), None)),
            }
        });
        let id = format!("import-{}", uuid::Uuid::new_v4().simple());
        self.create_upload(&id).await?;
        let result = async {
            let fresh = UploadProgress {
                size: 0,
                hasher: digest.algorithm().hasher(),
            };
            let p = match self
                .append_upload(&id, fresh, Box::pin(stream), u64::MAX)
                .await
            {
                Err(StorageError::Body(e)) => {
                    return Err(StorageError::Source {
                        path: path.clone(),
                        source: e,
                    })
                }
                other => other?,
            };
            let actual = p.hasher.digest();
            if &actual != digest {
                return Err(StorageError::DigestMismatch {
                    path: path.clone(),
                    expected: digest.clone(),
                    actual,
                });
            }
            self.commit_upload(&id, digest).await?;
            Ok(p.size)
        }
        .await;
        self.delete_upload(&id).await?;
        Ok((result?, Ingest::Copied))
    }
}

/// Real S3 servers for tests: SeaweedFS and Garage from `../shared/s3/` (beside the
/// checkout), each started once per test process in a temporary directory — or reused
/// when `scripts/test.sh` already started it (`BERTH_TEST_S3_<KIND>_ENV` names its env
/// file). Each test works under a `rootdirectory` of its own.
#[cfg(test)]
pub(crate) mod testserver {
    use crate::config::s3::S3Config;
    use std::collections::HashMap;
    use std::path::PathBuf;
    use std::sync::OnceLock;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Kind {
        SeaweedFs,
        Garage,
    }

    impl Kind {
        pub fn name(self) -> &'static str {
            match self {
                Kind::SeaweedFs => "seaweedfs",
                Kind::Garage => "garage",
            }
        }
    }

    fn shared_s3() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/s3")
    }

    fn parse_env(text: &str) -> HashMap<String, String> {
        text.lines()
            .filter_map(|l| l.strip_prefix("export ")?.split_once('='))
            .map(|(k, v)| (k.to_string(), v.trim_matches(['\'', '"']).to_string()))
            .collect()
    }

    fn start(kind: Kind) -> HashMap<String, String> {
        let var = format!("BERTH_TEST_S3_{}_ENV", kind.name().to_uppercase());
        if let Ok(file) = std::env::var(&var) {
            let text =
                std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{var}={file}: {e}"));
            return parse_env(&text);
        }
        let dir = std::env::temp_dir().join(format!(
            "berth-test-s3-{}-{}",
            kind.name(),
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("s3 dir");
        let script = shared_s3().join(format!("start-{}.sh", kind.name()));
        assert!(
            script.exists(),
            "{} is missing: ../shared/s3 must sit beside the checkout",
            script.display()
        );
        let out = std::process::Command::new("bash")
            .arg(&script)
            .arg(&dir)
            .output()
            .expect("run the S3 start script");
        assert!(
            out.status.success(),
            "{} failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        parse_env(&String::from_utf8_lossy(&out.stdout))
    }

    fn env(kind: Kind) -> &'static HashMap<String, String> {
        static SEAWEED: OnceLock<HashMap<String, String>> = OnceLock::new();
        static GARAGE: OnceLock<HashMap<String, String>> = OnceLock::new();
        let cell = match kind {
            Kind::SeaweedFs => &SEAWEED,
            Kind::Garage => &GARAGE,
        };
        cell.get_or_init(|| start(kind))
    }

    /// A configuration that reaches no server (for tests of pure logic).
    pub fn config_offline() -> S3Config {
        S3Config {
            access_key: Some("key".into()),
            secret_key: Some("secret".into()),
            region: "us-east-1".into(),
            region_endpoint: Some("http://127.0.0.1:9".into()),
            force_path_style: true,
            bucket: "none".into(),
            root_directory: String::new(),
            encrypt: false,
            key_id: None,
            secure: false,
            skip_verify: false,
            chunk_size: 10 * 1024 * 1024,
            multipart_copy_chunk_size: 32 * 1024 * 1024,
            multipart_copy_max_concurrency: 4,
            multipart_copy_threshold: 32 * 1024 * 1024,
            storage_class: None,
            redirect: true,
            redirect_base: None,
            blob_keys: None,
        }
    }

    /// A configuration for a fresh root directory on `kind`'s server.
    pub fn config(kind: Kind, chunk_size: u64) -> S3Config {
        let e = env(kind);
        let get = |k: &str| {
            e.get(k)
                .cloned()
                .unwrap_or_else(|| panic!("{k} not exported"))
        };
        S3Config {
            access_key: Some(get("S3_ACCESS_KEY_ID")),
            secret_key: Some(get("S3_SECRET_ACCESS_KEY")),
            region: get("S3_REGION"),
            region_endpoint: Some(get("S3_ENDPOINT")),
            force_path_style: true,
            bucket: get("S3_BUCKET"),
            root_directory: format!("test-{}", uuid::Uuid::new_v4().simple()),
            encrypt: false,
            key_id: None,
            secure: false,
            skip_verify: false,
            chunk_size,
            multipart_copy_chunk_size: 5 * 1024 * 1024,
            multipart_copy_max_concurrency: 4,
            multipart_copy_threshold: 5 * 1024 * 1024,
            storage_class: None,
            redirect: true,
            redirect_base: None,
            blob_keys: None,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::testserver::{config, Kind};
    use super::*;
    use crate::storage::BlobStore;

    const MIB: usize = 1024 * 1024;

    async fn shared_suite(kind: Kind) {
        let store = S3BlobStore::new(&config(kind, MIN_PART)).expect("store");
        crate::storage::testsuite::run(&store).await;
        crate::storage::testsuite::import_file(&store).await;
    }

    #[tokio::test]
    async fn shared_suite_on_seaweedfs() {
        shared_suite(Kind::SeaweedFs).await;
    }

    #[tokio::test]
    async fn shared_suite_on_garage() {
        shared_suite(Kind::Garage).await;
    }

    async fn open_under(store: &S3BlobStore) -> Vec<String> {
        let mut keys: Vec<String> = store
            .list_multipart(&store.root)
            .await
            .expect("list")
            .into_iter()
            .map(|o| o.key)
            .collect();
        keys.sort();
        keys
    }

    async fn stale_multipart_uploads_are_aborted(kind: Kind) {
        let store = S3BlobStore::new(&config(kind, MIN_PART)).expect("store");
        let other = S3BlobStore::new(&config(kind, MIN_PART)).expect("store");
        assert!(!store.root.is_empty() && store.root != other.root);
        let copy = format!("{}blobs/sha256/ab/{}", store.root, "ab".repeat(32));
        let hide = format!("{}trash/sha256-{}-1", store.root, "cd".repeat(32));
        let not_berths = format!("{}elsewhere/file", store.root);
        let other_root = format!("{}blobs/sha256/ef/{}", other.root, "ef".repeat(32));
        // Left open, as a crashed copy leaves one.
        for key in [&copy, &hide, &not_berths, &other_root] {
            store.create_multipart(key).await.expect("create");
        }
        let mut expected = vec![copy.clone(), hide.clone(), not_berths.clone()];
        expected.sort();
        assert_eq!(open_under(&store).await, expected, "{kind:?}");

        // Started after the cut-off: kept.
        let an_hour_ago = SystemTime::now() - Duration::from_secs(3600);
        assert_eq!(
            store
                .abort_stale_multipart(an_hour_ago, false)
                .await
                .expect("purge"),
            0
        );
        // Before it: a dry run counts them, a purge aborts them; only Berth's own key
        // spaces of its own root directory.
        let later = SystemTime::now() + Duration::from_secs(3600);
        assert_eq!(
            store
                .abort_stale_multipart(later, true)
                .await
                .expect("dry run"),
            2,
            "{kind:?}"
        );
        assert_eq!(open_under(&store).await, expected);
        assert_eq!(
            store
                .abort_stale_multipart(later, false)
                .await
                .expect("purge"),
            2,
            "{kind:?}"
        );
        assert_eq!(
            open_under(&store).await,
            vec![not_berths.clone()],
            "{kind:?}"
        );
        assert_eq!(
            open_under(&other).await,
            vec![other_root.clone()],
            "{kind:?}"
        );
        for (s, key) in [(&store, &not_berths), (&other, &other_root)] {
            for open in s.list_multipart(key).await.expect("list") {
                s.try_abort(&open.key, &open.upload_id)
                    .await
                    .expect("abort");
            }
        }
    }

    #[tokio::test]
    async fn stale_multipart_uploads_are_aborted_on_seaweedfs() {
        stale_multipart_uploads_are_aborted(Kind::SeaweedFs).await;
    }

    #[tokio::test]
    async fn stale_multipart_uploads_are_aborted_on_garage() {
        stale_multipart_uploads_are_aborted(Kind::Garage).await;
    }

    /// A blob at a recorded key (the own-key layout's `objects/...`) is read, sized,
    /// redirected to and deleted there; keys outside `objects/` are refused.
    async fn blobs_at_recorded_keys(kind: Kind) {
        let store = S3BlobStore::new(&config(kind, MIN_PART)).expect("store");
        let data = pattern(3 * MIB, 7);
        let digest = Digest::of(Algorithm::Sha256, &data);
        let key = "objects/ab/0123456789abcdef0123456789abcdef";
        store
            .put(&format!("{}{key}", store.root), Bytes::from(data.clone()))
            .await
            .expect("put");
        let at = BlobRef {
            digest: &digest,
            key: Some(key),
        };
        assert_eq!(store.stat(at).await.expect("stat"), Some(data.len() as u64));
        assert_eq!(collect(store.get(at, None).await.expect("get")).await, data);
        let range = ByteRange { start: 5, end: 99 };
        assert_eq!(
            collect(store.get(at, Some(range)).await.expect("range")).await,
            data[5..=99].to_vec()
        );
        let url = store.redirect_url(at).expect("a redirect");
        assert!(url.contains(key), "{url}");
        let fetched = reqwest::get(&url).await.expect("follow").bytes().await;
        assert_eq!(fetched.expect("body").to_vec(), data, "{kind:?}");
        // Nothing at the digest's own path.
        assert_eq!(store.stat((&digest).into()).await.expect("stat"), None);
        assert!(store.delete(at).await.expect("delete"));
        assert_eq!(store.stat(at).await.expect("stat"), None);
        for bad in [
            "blobs/sha256/ab/x",
            "objects/../blobs/x",
            "objects//x",
            "uploads/x/state",
        ] {
            let at = BlobRef {
                digest: &digest,
                key: Some(bad),
            };
            assert!(store.stat(at).await.is_err(), "{bad}");
            assert!(store.get(at, None).await.is_err(), "{bad}");
            assert!(store.delete(at).await.is_err(), "{bad}");
            assert_eq!(store.redirect_url(at), None, "{bad}");
        }
    }

    #[tokio::test]
    async fn blobs_at_recorded_keys_on_seaweedfs() {
        blobs_at_recorded_keys(Kind::SeaweedFs).await;
    }

    #[tokio::test]
    async fn blobs_at_recorded_keys_on_garage() {
        blobs_at_recorded_keys(Kind::Garage).await;
    }

    #[test]
    fn list_multipart_answers_are_read() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListMultipartUploadsResult><Bucket>b</Bucket><IsTruncated>true</IsTruncated>
<NextKeyMarker>r/blobs/k2</NextKeyMarker><NextUploadIdMarker>id2</NextUploadIdMarker>
<Upload><Key>r/blobs/a&amp;b</Key><UploadId>id1</UploadId><Initiated>2026-12-06T09:00:00.000Z</Initiated></Upload>
<Upload><Key>r/blobs/k2</Key><UploadId>id2</UploadId></Upload>
<Upload><UploadId>no key</UploadId></Upload>
</ListMultipartUploadsResult>"#;
        let open = parse_open_multipart(xml);
        assert_eq!(open.len(), 2);
        assert_eq!(open[0].key, "r/blobs/a&b");
        assert_eq!(open[0].upload_id, "id1");
        assert_eq!(open[0].initiated, parse_time("2026-12-06T09:00:00.000Z"));
        assert!(open[0].initiated.is_some());
        assert_eq!(open[1].initiated, None);
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u32).wrapping_mul(2654435761).to_be_bytes()[0] ^ seed)
            .collect()
    }

    fn body_of(data: Vec<u8>, piece: usize) -> ByteStream {
        let pieces: Vec<io::Result<Bytes>> = data
            .chunks(piece)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        Box::pin(futures_util::stream::iter(pieces))
    }

    async fn collect(mut s: ByteStream) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(c) = s.next().await {
            out.extend_from_slice(&c.expect("chunk"));
        }
        out
    }

    fn keyed_config(kind: Kind) -> S3Config {
        S3Config {
            blob_keys: Some(true),
            ..config(kind, MIN_PART)
        }
    }

    /// Append `sizes` of `data` to keyed upload `id`, each through a fresh store (as
    /// separate nodes would).
    async fn append_keyed(cfg: &S3Config, id: &str, data: &[u8], sizes: &[usize]) {
        let mut offset = 0;
        for (i, n) in sizes.iter().enumerate() {
            let node = S3BlobStore::new(cfg).expect("store");
            let progress = UploadProgress {
                size: offset as u64,
                hasher: Algorithm::Sha256.hasher(),
            };
            let p = node
                .append_upload(
                    id,
                    progress,
                    body_of(data[offset..offset + n].to_vec(), 64 * 1024 + i),
                    u64::MAX,
                )
                .await
                .expect("append");
            offset += n;
            assert_eq!(p.size, offset as u64);
            let (_, record) = node.load(id).await.expect("record");
            assert!(record.parts.len() <= 1 && record.parts.iter().all(|p| p.size < MIN_PART));
            assert!(record
                .sent
                .iter()
                .all(|p| p.size >= MIN_PART && !p.etag.is_empty()));
        }
    }

    /// A keyed upload in chunks of awkward sizes through several nodes: full parts go to
    /// one multipart upload, short tails are staged and resent; the commit completes it
    /// in place at its own key (nothing at the digest's key), a repeated commit answers
    /// the same key, and removing the upload leaves the blob.
    async fn keyed_uploads_complete_in_place(kind: Kind) {
        let cfg = keyed_config(kind);
        let store = S3BlobStore::new(&cfg).expect("store");
        assert!(store.writes_keys());
        let sizes = [1usize, 3 * MIB, 4 * MIB + 5, 100, 12 * MIB, 2 * MIB + 1];
        let data = pattern(sizes.iter().sum(), 9);
        let digest = Digest::of(Algorithm::Sha256, &data);
        store.create_keyed_upload("keyed").await.expect("create");
        append_keyed(&cfg, "keyed", &data, &sizes).await;
        let range = ByteRange { start: 0, end: 10 };
        assert!(
            store.read_upload("keyed", range).await.is_err(),
            "parts of a multipart upload cannot be read before it completes"
        );
        assert!(matches!(
            store.rehash_upload("keyed", Algorithm::Sha512).await,
            Err(StorageError::KeyedUploadUnreadable)
        ));
        let key = store
            .commit_upload("keyed", &digest)
            .await
            .expect("commit")
            .expect("a key of its own");
        assert!(key.starts_with("objects/"), "{key}");
        let at = BlobRef {
            digest: &digest,
            key: Some(&key),
        };
        assert_eq!(collect(store.get(at, None).await.expect("get")).await, data);
        assert_eq!(store.stat((&digest).into()).await.expect("stat"), None);
        // Repeated (a lost answer): the same key, verified again.
        let again = S3BlobStore::new(&cfg).expect("store");
        assert_eq!(
            again.commit_upload("keyed", &digest).await.expect("again"),
            Some(key.clone())
        );
        store.delete_upload("keyed").await.expect("delete upload");
        assert_eq!(store.stat(at).await.expect("stat"), Some(data.len() as u64));
        assert!(
            open_under(&store).await.is_empty(),
            "no multipart upload left open"
        );
        assert!(store.list_uploads().await.expect("uploads").is_empty());
    }

    #[tokio::test]
    async fn keyed_uploads_complete_in_place_on_seaweedfs() {
        keyed_uploads_complete_in_place(Kind::SeaweedFs).await;
    }

    #[tokio::test]
    async fn keyed_uploads_complete_in_place_on_garage() {
        keyed_uploads_complete_in_place(Kind::Garage).await;
    }

    /// The other paths of a keyed commit: a short upload (no multipart upload at all),
    /// an empty one, a wrong digest (refused before anything is written), another
    /// algorithm than the one hashed (verified by reading the object back: kept when
    /// right, deleted when wrong), and a cancelled upload (its multipart upload aborted).
    async fn keyed_commit_paths(kind: Kind) {
        let cfg = keyed_config(kind);
        let store = S3BlobStore::new(&cfg).expect("store");
        // Short: one PUT of the staged tail.
        let small = pattern(MIB + 3, 1);
        let small_digest = Digest::of(Algorithm::Sha256, &small);
        store.create_keyed_upload("small").await.expect("create");
        append_keyed(&cfg, "small", &small, &[100, MIB - 97]).await;
        let key = store
            .commit_upload("small", &small_digest)
            .await
            .expect("commit")
            .expect("key");
        let at = BlobRef {
            digest: &small_digest,
            key: Some(&key),
        };
        assert_eq!(
            collect(store.get(at, None).await.expect("get")).await,
            small
        );
        store.delete_upload("small").await.expect("delete");
        // Empty.
        let empty = Digest::of(Algorithm::Sha256, b"");
        store.create_keyed_upload("empty").await.expect("create");
        let key = store
            .commit_upload("empty", &empty)
            .await
            .expect("commit")
            .expect("key");
        let at = BlobRef {
            digest: &empty,
            key: Some(&key),
        };
        assert_eq!(store.stat(at).await.expect("stat"), Some(0));
        store.delete_upload("empty").await.expect("delete");
        // A wrong digest: refused by the saved hash state, nothing completed.
        let data = pattern(6 * MIB + 7, 2);
        store.create_keyed_upload("wrong").await.expect("create");
        append_keyed(&cfg, "wrong", &data, &[6 * MIB + 7]).await;
        let (_, record) = store.load("wrong").await.expect("record");
        let key = record.key.clone().expect("key");
        let wrong = Digest::of(Algorithm::Sha256, b"something else");
        assert!(matches!(
            store.commit_upload("wrong", &wrong).await,
            Err(StorageError::DigestMismatch { .. })
        ));
        assert_eq!(
            store
                .head(&format!("{}{key}", store.root))
                .await
                .expect("head"),
            None
        );
        // Another algorithm: the object is read back; a wrong sha512 is deleted...
        let wrong512 = Digest::of(Algorithm::Sha512, b"something else");
        assert!(matches!(
            store.commit_upload("wrong", &wrong512).await,
            Err(StorageError::DigestMismatch { .. })
        ));
        assert_eq!(
            store
                .head(&format!("{}{key}", store.root))
                .await
                .expect("head"),
            None
        );
        store.delete_upload("wrong").await.expect("delete");
        // ... and a right one kept.
        store.create_keyed_upload("sha512").await.expect("create");
        append_keyed(&cfg, "sha512", &data, &[MIB, 5 * MIB + 7]).await;
        let right512 = Digest::of(Algorithm::Sha512, &data);
        let key = store
            .commit_upload("sha512", &right512)
            .await
            .expect("commit")
            .expect("key");
        let at = BlobRef {
            digest: &right512,
            key: Some(&key),
        };
        assert_eq!(store.stat(at).await.expect("stat"), Some(data.len() as u64));
        store.delete_upload("sha512").await.expect("delete");
        // Cancelled with a part sent: its multipart upload is aborted.
        store.create_keyed_upload("cancel").await.expect("create");
        append_keyed(&cfg, "cancel", &data, &[6 * MIB + 7]).await;
        assert_eq!(open_under(&store).await.len(), 1);
        store.delete_upload("cancel").await.expect("delete");
        assert!(open_under(&store).await.is_empty());
        assert!(store.list_uploads().await.expect("uploads").is_empty());
    }

    #[tokio::test]
    async fn keyed_commit_paths_on_seaweedfs() {
        keyed_commit_paths(Kind::SeaweedFs).await;
    }

    #[tokio::test]
    async fn keyed_commit_paths_on_garage() {
        keyed_commit_paths(Kind::Garage).await;
    }

    /// Chunks of every awkward size (1 byte, below and above S3's 5 MiB part minimum,
    /// several parts in one chunk), each appended through a separate store (as separate
    /// nodes would) that knows nothing but what is in the bucket; the blob assembles to
    /// the exact bytes and digest, and reads back by range.
    async fn chunks_across_nodes(kind: Kind) {
        let cfg = config(kind, MIN_PART);
        let sizes = [1usize, 3 * MIB, 7 * MIB + 5, 100, 12 * MIB, 2 * MIB + 1];
        let total: usize = sizes.iter().sum();
        let data = pattern(total, 7);
        let digest = Digest::of(Algorithm::Sha256, &data);
        S3BlobStore::new(&cfg)
            .expect("store")
            .create_upload("chunky")
            .await
            .expect("create");
        let mut offset = 0;
        for (i, n) in sizes.iter().enumerate() {
            let node = S3BlobStore::new(&cfg).expect("store");
            // A node that has not seen the upload: its idea of the hash is a fresh one,
            // and it must continue from the stored state, not from this.
            let progress = UploadProgress {
                size: offset as u64,
                hasher: Algorithm::Sha256.hasher(),
            };
            let p = node
                .append_upload(
                    "chunky",
                    progress,
                    body_of(data[offset..offset + n].to_vec(), 64 * 1024 + i),
                    u64::MAX,
                )
                .await
                .expect("append");
            offset += n;
            assert_eq!(p.size, offset as u64);
            let (_, record) = node.load("chunky").await.expect("record");
            let short = record
                .parts
                .iter()
                .rev()
                .skip(1)
                .filter(|p| p.size < MIN_PART)
                .count();
            assert_eq!(
                short, 0,
                "only the last part may be short: {:?}",
                record.parts
            );
        }
        let node = S3BlobStore::new(&cfg).expect("store");
        let p = node
            .rehash_upload("chunky", Algorithm::Sha256)
            .await
            .expect("state");
        assert_eq!(
            p.hasher.digest(),
            digest,
            "the saved state hashes every byte once"
        );
        let mid = ByteRange {
            start: 3 * MIB as u64 - 10,
            end: 10 * MIB as u64 + 20,
        };
        assert_eq!(
            collect(node.read_upload("chunky", mid).await.expect("read")).await,
            &data[mid.start as usize..=mid.end as usize]
        );
        node.commit_upload("chunky", &digest).await.expect("commit");
        assert_eq!(
            node.stat((&digest).into()).await.expect("stat"),
            Some(total as u64)
        );
        assert_eq!(
            collect(node.get((&digest).into(), None).await.expect("get")).await,
            data
        );
        let r = ByteRange {
            start: 5 * MIB as u64 - 1,
            end: 5 * MIB as u64 + 1,
        };
        assert_eq!(
            collect(node.get((&digest).into(), Some(r)).await.expect("range")).await,
            &data[r.start as usize..=r.end as usize]
        );
        // A presigned URL serves the same bytes to a plain HTTP client.
        let url = node.redirect_url((&digest).into()).expect("redirect url");
        let fetched = reqwest::get(&url).await.expect("presigned GET");
        assert!(fetched.status().is_success(), "{}", fetched.status());
        assert_eq!(fetched.bytes().await.expect("bytes").as_ref(), &data[..]);
        // Hidden and put back (a copy in parts: above the copy threshold).
        let h = node.hide(&digest).await.expect("hide").expect("hidden");
        assert_eq!(node.stat((&digest).into()).await.expect("stat"), None);
        assert!(node.unhide(&h).await.expect("unhide"));
        assert_eq!(
            collect(node.get((&digest).into(), None).await.expect("get")).await,
            data
        );
        node.delete_upload("chunky").await.expect("delete upload");
        assert!(node
            .upload_written("chunky")
            .await
            .expect("written")
            .is_none());
    }

    /// Two nodes append different bytes at the same offset of one upload (a client
    /// error): the record the last one saved is the upload, and a commit under the
    /// digest of the other content is refused, so no blob's bytes ever differ from its
    /// digest, whatever a node had cached.
    #[tokio::test]
    async fn a_lost_concurrent_append_cannot_be_committed() {
        let cfg = config(Kind::SeaweedFs, MIN_PART);
        let a = S3BlobStore::new(&cfg).expect("store");
        let b = S3BlobStore::new(&cfg).expect("store");
        a.create_upload("racing").await.expect("create");
        // What b loaded before a's record landed.
        let (dir, seen_by_b) = b.load("racing").await.expect("record");
        let fresh = || UploadProgress {
            size: 0,
            hasher: Algorithm::Sha256.hasher(),
        };
        let first = a
            .append_upload(
                "racing",
                fresh(),
                body_of(b"written by a".to_vec(), 5),
                u64::MAX,
            )
            .await
            .expect("a appends");
        // b saw the upload empty too, and its record lands last (replayed here: b's
        // append starts from the record it loaded before a saved).
        b.save(&dir, &seen_by_b).await.expect("b's view");
        b.append_upload(
            "racing",
            fresh(),
            body_of(b"written by b".to_vec(), 5),
            u64::MAX,
        )
        .await
        .expect("b appends");
        let a_digest = first.hasher.digest();
        match a.commit_upload("racing", &a_digest).await {
            Err(StorageError::DigestMismatch {
                expected, actual, ..
            }) => {
                assert_eq!(expected, a_digest);
                assert_eq!(actual, Digest::of(Algorithm::Sha256, b"written by b"));
            }
            other => panic!("a's stale view must not commit: {other:?}"),
        }
        assert_eq!(a.stat((&a_digest).into()).await.expect("stat"), None);
        let b_digest = Digest::of(Algorithm::Sha256, b"written by b");
        b.commit_upload("racing", &b_digest)
            .await
            .expect("b's content commits");
        assert_eq!(
            collect(b.get((&b_digest).into(), None).await.expect("get")).await,
            b"written by b"
        );
        b.delete_upload("racing").await.expect("delete");
    }

    /// A keyed upload whose record names a part another append replaced (two appends
    /// at one offset, the loser's record saved last): completing it either fails as
    /// `PartsReplaced` (Garage refuses the replaced ETag) or assembles exactly the
    /// recorded bytes (SeaweedFS keeps both versions); never the other append's bytes
    /// under the recorded digest.
    async fn a_replaced_keyed_part_cannot_be_committed(kind: Kind) {
        let cfg = keyed_config(kind);
        let a = S3BlobStore::new(&cfg).expect("store");
        let b = S3BlobStore::new(&cfg).expect("store");
        a.create_keyed_upload("racing-keyed").await.expect("create");
        let part = |seed| pattern(MIN_PART as usize, seed);
        let at = |offset: usize| UploadProgress {
            size: offset as u64,
            hasher: Algorithm::Sha256.hasher(),
        };
        a.append_upload("racing-keyed", at(0), body_of(part(1), 1 << 16), u64::MAX)
            .await
            .expect("first part");
        let (dir, before) = b.load("racing-keyed").await.expect("record");
        let n = MIN_PART as usize;
        a.append_upload("racing-keyed", at(n), body_of(part(2), 1 << 16), u64::MAX)
            .await
            .expect("a's second part");
        let (_, a_view) = a.load("racing-keyed").await.expect("record");
        // b appends at the same offset from the record it saw, replacing part 2 ...
        b.save(&dir, &before).await.expect("b's view");
        b.append_upload("racing-keyed", at(n), body_of(part(3), 1 << 16), u64::MAX)
            .await
            .expect("b's second part");
        // ... and a's record lands last.
        a.save(&dir, &a_view).await.expect("a's record");
        let recorded = [part(1), part(2)].concat();
        let digest = Digest::of(Algorithm::Sha256, &recorded);
        match a.commit_upload("racing-keyed", &digest).await {
            Err(StorageError::PartsReplaced(why)) => {
                assert!(why.contains("InvalidPart"), "{why}");
            }
            Ok(Some(key)) => {
                let at = BlobRef {
                    digest: &digest,
                    key: Some(&key),
                };
                assert_eq!(collect(a.get(at, None).await.expect("get")).await, recorded);
            }
            other => panic!("{kind:?}: {other:?}"),
        }
        a.delete_upload("racing-keyed").await.expect("delete");
    }

    #[tokio::test]
    async fn a_replaced_keyed_part_cannot_be_committed_on_seaweedfs() {
        a_replaced_keyed_part_cannot_be_committed(Kind::SeaweedFs).await;
    }

    #[tokio::test]
    async fn a_replaced_keyed_part_cannot_be_committed_on_garage() {
        a_replaced_keyed_part_cannot_be_committed(Kind::Garage).await;
    }

    #[tokio::test]
    async fn chunks_across_nodes_on_seaweedfs() {
        chunks_across_nodes(Kind::SeaweedFs).await;
    }

    #[tokio::test]
    async fn chunks_across_nodes_on_garage() {
        chunks_across_nodes(Kind::Garage).await;
    }

    #[test]
    fn parts_grow_so_that_ten_thousand_hold_a_huge_layer() {
        let store = S3BlobStore::new(&S3Config {
            chunk_size: 10 * MIB as u64,
            ..super::testserver::config_offline()
        })
        .expect("store");
        let capacity: u64 = (0..MAX_PARTS).map(|n| store.part_target(n)).sum();
        assert!(capacity > 500 * 1024 * MIB as u64, "{capacity}");
        assert!((0..MAX_PARTS).all(|n| store.part_target(n) <= MAX_PART));
    }

    #[test]
    fn times_as_s3_lists_them() {
        let t = parse_time("2026-12-06T09:00:01.250Z").expect("time");
        let secs = t
            .duration_since(SystemTime::UNIX_EPOCH)
            .expect("after epoch")
            .as_millis();
        assert_eq!(secs, 1_796_547_601_250);
        assert_eq!(
            parse_time("1970-01-01T00:00:00Z"),
            Some(SystemTime::UNIX_EPOCH)
        );
        assert_eq!(parse_time("yesterday"), None);
    }

    #[test]
    fn keys_and_hidden_names_parse_back() {
        let d = Digest::of(Algorithm::Sha256, b"x");
        let key = format!("sha256/{}/{}", &d.hex()[..2], d.hex());
        assert_eq!(parse_blob_key(&key), Some(d.clone()));
        assert_eq!(parse_blob_key("sha256/ab"), None);
        let h = parse_hidden(&format!("sha256-{}-0123abcd", d.hex())).expect("hidden");
        assert_eq!(h.digest, d);
    }
}
