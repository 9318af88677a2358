//! A minimal OCI distribution client over raw HTTP/1.1: the exact request sequences a
//! container engine sends to push and pull images, mount blobs and walk the catalog.
//!
//! Each helper checks the status codes the OCI distribution spec requires and turns
//! anything else into an error that carries the request, the status and the start of the
//! response body. It knows nothing about timing or figures (that is `workloads.rs`).

use anyhow::{ensure, Context, Result};
use bytes::Bytes;
use futures_util::StreamExt as _;
use oci::{Algorithm, Digest};
use rand::{RngCore as _, SeedableRng as _};
use reqwest::header::{ACCEPT, CONTENT_LENGTH, CONTENT_TYPE, LINK, LOCATION};
use reqwest::{Body, Client, Response, StatusCode, Url};
use serde_json::{json, Value};
use std::time::Duration;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";

/// What `docker pull` sends: every OCI and Docker manifest type it can handle.
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
     application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json";

/// Size of the pieces a streamed PATCH body is sent in.
const PATCH_CHUNK: usize = 1024 * 1024;

/// Content addressed by its sha256 digest.
#[derive(Debug, Clone)]
pub struct Blob {
    pub digest: Digest,
    pub data: Bytes,
}

impl Blob {
    pub fn new(data: Bytes) -> Blob {
        Blob {
            digest: Digest::of(Algorithm::Sha256, &data),
            data,
        }
    }

    /// `size` bytes of fresh random content (CPU-bound: call from a blocking thread for
    /// large sizes).
    pub fn random(size: usize) -> Blob {
        let mut data = vec![0u8; size];
        rand::rngs::StdRng::from_entropy().fill_bytes(&mut data);
        Blob::new(Bytes::from(data))
    }

    pub fn size(&self) -> u64 {
        self.data.len() as u64
    }
}

/// A layer or config reference inside a manifest.
#[derive(Debug, Clone)]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
}

impl Descriptor {
    fn of(media_type: &str, blob: &Blob) -> Descriptor {
        Descriptor {
            media_type: media_type.to_string(),
            digest: blob.digest.clone(),
            size: blob.size(),
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "mediaType": self.media_type,
            "digest": self.digest.as_str(),
            "size": self.size,
        })
    }

    fn from_json(v: &Value) -> Result<Descriptor> {
        let media_type = v
            .get("mediaType")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let digest = v
            .get("digest")
            .and_then(Value::as_str)
            .context("descriptor has no digest")?
            .parse::<Digest>()
            .context("descriptor digest is invalid")?;
        let size = v
            .get("size")
            .and_then(Value::as_u64)
            .context("descriptor has no size")?;
        Ok(Descriptor {
            media_type,
            digest,
            size,
        })
    }
}

/// An image ready to push: layers, a config blob describing them, and the OCI image
/// manifest that references both.
#[derive(Debug, Clone)]
pub struct Image {
    pub layers: Vec<Blob>,
    pub config: Blob,
    pub manifest: Blob,
}

impl Image {
    pub fn new(layers: Vec<Blob>) -> Image {
        let diff_ids: Vec<&str> = layers.iter().map(|l| l.digest.as_str()).collect();
        let config = json!({
            "architecture": "amd64",
            "os": "linux",
            "config": { "Cmd": ["/bin/sh"] },
            "rootfs": { "type": "layers", "diff_ids": diff_ids },
        });
        let config = Blob::new(Bytes::from(config.to_string()));
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": Descriptor::of(OCI_CONFIG, &config).to_json(),
            "layers": layers
                .iter()
                .map(|l| Descriptor::of(OCI_LAYER, l).to_json())
                .collect::<Vec<_>>(),
        });
        let manifest = Blob::new(Bytes::from(manifest.to_string()));
        Image {
            layers,
            config,
            manifest,
        }
    }

    pub fn layer_bytes(&self) -> u64 {
        self.layers.iter().map(Blob::size).sum()
    }
}

/// The config and layer descriptors of a pulled OCI or Docker v2 image manifest.
#[derive(Debug, Clone)]
pub struct PulledManifest {
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

/// Outcome of a cross-repository mount request.
#[derive(Debug)]
pub enum Mount {
    /// 201: the blob is now linked into the target repository.
    Mounted,
    /// 202: the registry declined and opened an ordinary upload session here instead.
    Upload(Url),
}

/// One registry endpoint with a pooled HTTP/1.1 client. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Registry {
    http: Client,
    base: Url,
}

impl Registry {
    /// A client for the registry at `base` (e.g. `http://127.0.0.1:5000`).
    pub fn new(base: &str) -> Result<Registry> {
        let base = Url::parse(base).with_context(|| format!("invalid registry URL {base:?}"))?;
        ensure!(
            base.scheme() == "http",
            "only plain http:// registry URLs are supported, got {base}"
        );
        let http = Client::builder()
            .http1_only()
            .no_proxy()
            .tcp_nodelay(true)
            .pool_max_idle_per_host(128)
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(600))
            .build()
            .context("building the HTTP client")?;
        Ok(Registry { http, base })
    }

    pub fn base(&self) -> &Url {
        &self.base
    }

    fn url(&self, path: &str) -> Result<Url> {
        self.base
            .join(path)
            .with_context(|| format!("cannot build a URL for {path}"))
    }

    /// `GET /v2/`; true when the registry answers 200, or 401 (it is up and asks for
    /// credentials).
    pub async fn ping(&self) -> Result<bool> {
        let resp = self.http.get(self.url("/v2/")?).send().await?;
        Ok(resp.status() == StatusCode::OK || resp.status() == StatusCode::UNAUTHORIZED)
    }

    /// The same registry, sending `authorization` with every request.
    pub fn with_authorization(&self, authorization: &str) -> Result<Registry> {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::AUTHORIZATION,
            authorization
                .parse()
                .context("an Authorization header value")?,
        );
        let http = Client::builder()
            .http1_only()
            .no_proxy()
            .tcp_nodelay(true)
            .pool_max_idle_per_host(128)
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(600))
            .default_headers(headers)
            .build()
            .context("building the HTTP client")?;
        Ok(Registry {
            http,
            base: self.base.clone(),
        })
    }

    /// The underlying HTTP client (for requests outside the distribution API).
    pub fn http(&self) -> &Client {
        &self.http
    }

    /// `HEAD /v2/<repo>/blobs/<digest>`: true on 200, false on 404.
    pub async fn blob_exists(&self, repo: &str, digest: &Digest) -> Result<bool> {
        let url = self.url(&format!("/v2/{repo}/blobs/{digest}"))?;
        let resp = send(self.http.head(url.clone()), "HEAD", &url).await?;
        match resp.status() {
            StatusCode::OK => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(unexpected(resp, "HEAD", &url, "200 or 404").await),
        }
    }

    /// `POST /v2/<repo>/blobs/uploads/` -> 202 with the session's Location.
    pub async fn start_upload(&self, repo: &str) -> Result<Url> {
        let url = self.url(&format!("/v2/{repo}/blobs/uploads/"))?;
        let resp = send(
            self.http.post(url.clone()).header(CONTENT_LENGTH, "0"),
            "POST",
            &url,
        )
        .await?;
        let resp = expect(resp, "POST", &url, StatusCode::ACCEPTED).await?;
        self.location(&resp)
    }

    /// Pushes a blob as `docker push` does: HEAD (must be absent), POST to open a session,
    /// one streamed PATCH with the whole content (chunked transfer encoding, no
    /// Content-Range), then PUT `?digest=` with an empty body.
    pub async fn push_blob_streamed(&self, repo: &str, blob: &Blob) -> Result<()> {
        ensure!(
            !self.blob_exists(repo, &blob.digest).await?,
            "blob {} unexpectedly exists in {repo} before its push",
            blob.digest
        );
        let location = self.start_upload(repo).await?;

        let data = blob.data.clone();
        let chunks = (0..data.len())
            .step_by(PATCH_CHUNK)
            .map(move |start| {
                let end = (start + PATCH_CHUNK).min(data.len());
                Ok::<Bytes, std::io::Error>(data.slice(start..end))
            })
            .collect::<Vec<_>>();
        let body = Body::wrap_stream(futures_util::stream::iter(chunks));
        let req = self
            .http
            .patch(location.clone())
            .header(CONTENT_TYPE, "application/octet-stream")
            .body(body);
        let resp = send(req, "PATCH", &location).await?;
        let resp = expect(resp, "PATCH", &location, StatusCode::ACCEPTED).await?;
        let location = self.location(&resp)?;

        self.finish_upload(location, &blob.digest, Bytes::new())
            .await
    }

    /// Pushes a small blob monolithically: POST to open a session, then PUT `?digest=`
    /// with the whole content as the body.
    pub async fn push_blob_monolithic(&self, repo: &str, blob: &Blob) -> Result<()> {
        let location = self.start_upload(repo).await?;
        self.finish_upload(location, &blob.digest, blob.data.clone())
            .await
    }

    /// `PUT <location>?digest=...` with `body` (possibly empty) -> 201.
    pub async fn finish_upload(
        &self,
        mut location: Url,
        digest: &Digest,
        body: Bytes,
    ) -> Result<()> {
        location
            .query_pairs_mut()
            .append_pair("digest", digest.as_str());
        let req = self
            .http
            .put(location.clone())
            .header(CONTENT_TYPE, "application/octet-stream")
            .header(CONTENT_LENGTH, body.len())
            .body(body);
        let resp = send(req, "PUT", &location).await?;
        expect(resp, "PUT", &location, StatusCode::CREATED).await?;
        Ok(())
    }

    /// `POST /v2/<repo>/blobs/uploads/?mount=<digest>&from=<source>`.
    pub async fn mount_blob(&self, repo: &str, digest: &Digest, source: &str) -> Result<Mount> {
        let mut url = self.url(&format!("/v2/{repo}/blobs/uploads/"))?;
        url.query_pairs_mut()
            .append_pair("mount", digest.as_str())
            .append_pair("from", source);
        let resp = send(
            self.http.post(url.clone()).header(CONTENT_LENGTH, "0"),
            "POST",
            &url,
        )
        .await?;
        match resp.status() {
            StatusCode::CREATED => Ok(Mount::Mounted),
            StatusCode::ACCEPTED => Ok(Mount::Upload(self.location(&resp)?)),
            _ => Err(unexpected(resp, "POST", &url, "201 or 202").await),
        }
    }

    /// Mounts `blob` from `source`, uploading it if the registry declines the mount.
    /// Returns true when the mount succeeded.
    pub async fn mount_or_upload(&self, repo: &str, blob: &Blob, source: &str) -> Result<bool> {
        match self.mount_blob(repo, &blob.digest, source).await? {
            Mount::Mounted => Ok(true),
            Mount::Upload(location) => {
                self.finish_upload(location, &blob.digest, blob.data.clone())
                    .await?;
                Ok(false)
            }
        }
    }

    /// `PUT /v2/<repo>/manifests/<reference>` with an OCI image manifest -> 201.
    pub async fn put_manifest(&self, repo: &str, reference: &str, manifest: &Blob) -> Result<()> {
        let url = self.url(&format!("/v2/{repo}/manifests/{reference}"))?;
        let req = self
            .http
            .put(url.clone())
            .header(CONTENT_TYPE, OCI_MANIFEST)
            .body(manifest.data.clone());
        let resp = send(req, "PUT", &url).await?;
        expect(resp, "PUT", &url, StatusCode::CREATED).await?;
        Ok(())
    }

    /// Pushes a whole image: layers streamed (at most `concurrency` at a time), then the
    /// config monolithically, then the manifest under `tag`.
    pub async fn push_image(
        &self,
        repo: &str,
        tag: &str,
        image: &Image,
        concurrency: usize,
    ) -> Result<()> {
        futures_util::stream::iter(&image.layers)
            .map(|layer| self.push_blob_streamed(repo, layer))
            .buffer_unordered(concurrency.max(1))
            .collect::<Vec<Result<()>>>()
            .await
            .into_iter()
            .collect::<Result<()>>()?;
        self.push_blob_monolithic(repo, &image.config).await?;
        self.put_manifest(repo, tag, &image.manifest).await
    }

    /// `DELETE /v2/<repo>/manifests/<digest>` -> 202.
    pub async fn delete_manifest(&self, repo: &str, digest: &Digest) -> Result<()> {
        let url = self.url(&format!("/v2/{repo}/manifests/{digest}"))?;
        let resp = send(self.http.delete(url.clone()), "DELETE", &url).await?;
        expect(resp, "DELETE", &url, StatusCode::ACCEPTED).await?;
        Ok(())
    }

    /// `GET /v2/<repo>/manifests/<reference>` with the Accept header of `docker pull`;
    /// returns the body.
    pub async fn get_manifest(&self, repo: &str, reference: &str) -> Result<Bytes> {
        let url = self.url(&format!("/v2/{repo}/manifests/{reference}"))?;
        let req = self.http.get(url.clone()).header(ACCEPT, MANIFEST_ACCEPT);
        let resp = send(req, "GET", &url).await?;
        let resp = expect(resp, "GET", &url, StatusCode::OK).await?;
        resp.bytes()
            .await
            .with_context(|| format!("reading the body of GET {url}"))
    }

    /// `HEAD /v2/<repo>/manifests/<reference>` -> 200.
    pub async fn head_manifest(&self, repo: &str, reference: &str) -> Result<()> {
        let url = self.url(&format!("/v2/{repo}/manifests/{reference}"))?;
        let req = self.http.head(url.clone()).header(ACCEPT, MANIFEST_ACCEPT);
        let resp = send(req, "HEAD", &url).await?;
        expect(resp, "HEAD", &url, StatusCode::OK).await?;
        Ok(())
    }

    /// Fetches and parses an image manifest (OCI or Docker v2 schema 2).
    pub async fn pull_manifest(&self, repo: &str, reference: &str) -> Result<PulledManifest> {
        let body = self.get_manifest(repo, reference).await?;
        let doc: Value = serde_json::from_slice(&body)
            .with_context(|| format!("manifest {repo}:{reference} is not JSON"))?;
        let config = Descriptor::from_json(
            doc.get("config")
                .with_context(|| format!("manifest {repo}:{reference} has no config"))?,
        )?;
        let layers = doc
            .get("layers")
            .and_then(Value::as_array)
            .with_context(|| format!("manifest {repo}:{reference} has no layers array"))?
            .iter()
            .map(Descriptor::from_json)
            .collect::<Result<Vec<_>>>()?;
        Ok(PulledManifest { config, layers })
    }

    /// `GET /v2/<repo>/blobs/<digest>`, streaming the body and counting its bytes, which
    /// must add up to `size`. With `verify`, the content's digest is checked too.
    pub async fn pull_blob(
        &self,
        repo: &str,
        digest: &Digest,
        size: u64,
        verify: bool,
    ) -> Result<u64> {
        let url = self.url(&format!("/v2/{repo}/blobs/{digest}"))?;
        let resp = send(self.http.get(url.clone()), "GET", &url).await?;
        let resp = expect(resp, "GET", &url, StatusCode::OK).await?;
        let mut hasher = verify.then(|| digest.algorithm().hasher());
        let mut received = 0u64;
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.with_context(|| format!("reading the body of GET {url}"))?;
            received += chunk.len() as u64;
            if let Some(h) = hasher.as_mut() {
                h.update(&chunk);
            }
        }
        ensure!(
            received == size,
            "GET {url} returned {received} bytes, expected {size}"
        );
        if let Some(h) = hasher {
            let got = h.finish();
            ensure!(
                got == *digest,
                "GET {url} returned content with digest {got}"
            );
        }
        Ok(received)
    }

    /// URL of the first catalog page of `page_size` entries.
    pub fn catalog_url(&self, page_size: usize) -> Result<Url> {
        self.url(&format!("/v2/_catalog?n={page_size}"))
    }

    /// One catalog page: its repositories and the next page's URL from the `Link` header.
    pub async fn catalog_page(&self, url: &Url) -> Result<(Vec<String>, Option<Url>)> {
        let resp = send(self.http.get(url.clone()), "GET", url).await?;
        let resp = expect(resp, "GET", url, StatusCode::OK).await?;
        let next = match resp.headers().get(LINK) {
            Some(link) => {
                let link = link
                    .to_str()
                    .with_context(|| format!("GET {url}: Link header is not ASCII"))?;
                next_link(link)
                    .map(|target| {
                        self.base
                            .join(target)
                            .with_context(|| format!("GET {url}: bad Link target {target:?}"))
                    })
                    .transpose()?
            }
            None => None,
        };
        let doc: Value = resp
            .json()
            .await
            .with_context(|| format!("GET {url}: body is not JSON"))?;
        let repos = doc
            .get("repositories")
            .and_then(Value::as_array)
            .with_context(|| format!("GET {url}: no repositories array"))?
            .iter()
            .map(|r| {
                r.as_str()
                    .map(str::to_string)
                    .with_context(|| format!("GET {url}: repository name is not a string"))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((repos, next))
    }

    /// The session URL in a response's `Location` header, resolved against the base URL
    /// (registries may answer with an absolute URL or an absolute path).
    fn location(&self, resp: &Response) -> Result<Url> {
        let raw = resp
            .headers()
            .get(LOCATION)
            .with_context(|| {
                format!(
                    "{} response to {} has no Location",
                    resp.status(),
                    resp.url()
                )
            })?
            .to_str()
            .context("Location header is not ASCII")?;
        self.base
            .join(raw)
            .with_context(|| format!("Location {raw:?} is not a valid URL"))
    }
}

/// The target of the `rel="next"` entry of a `Link` header, e.g.
/// `</v2/_catalog?last=a&n=100>; rel="next"`.
fn next_link(header: &str) -> Option<&str> {
    header.split(',').find_map(|entry| {
        let (target, params) = entry.split_once(';')?;
        let is_next = params
            .split(';')
            .any(|p| matches!(p.trim(), "rel=\"next\"" | "rel=next"));
        let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
        is_next.then_some(target)
    })
}

async fn send(req: reqwest::RequestBuilder, method: &str, url: &Url) -> Result<Response> {
    req.send()
        .await
        .with_context(|| format!("{method} {url} failed"))
}

/// `resp` if it has the `want` status, otherwise an error describing it.
async fn expect(resp: Response, method: &str, url: &Url, want: StatusCode) -> Result<Response> {
    if resp.status() == want {
        Ok(resp)
    } else {
        Err(unexpected(resp, method, url, want.as_str()).await)
    }
}

async fn unexpected(resp: Response, method: &str, url: &Url, wanted: &str) -> anyhow::Error {
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    let body: String = body.chars().take(300).collect();
    anyhow::anyhow!("{method} {url}: expected {wanted}, got {status}: {body}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_link_is_extracted() {
        assert_eq!(
            next_link("</v2/_catalog?last=b%2Fc&n=100>; rel=\"next\""),
            Some("/v2/_catalog?last=b%2Fc&n=100")
        );
        assert_eq!(next_link("<http://x/y>; rel=\"prev\""), None);
        assert_eq!(next_link("garbage"), None);
    }

    #[test]
    fn image_manifest_references_config_and_layers() -> Result<()> {
        let image = Image::new(vec![Blob::random(10), Blob::random(20)]);
        let doc: Value = serde_json::from_slice(&image.manifest.data)?;
        assert_eq!(doc["mediaType"], OCI_MANIFEST);
        assert_eq!(doc["config"]["digest"], image.config.digest.as_str());
        assert_eq!(doc["layers"][1]["size"], 20);
        assert_eq!(image.layer_bytes(), 30);
        Ok(())
    }
}
