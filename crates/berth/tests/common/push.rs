//! Pushing content with plain HTTP requests (reqwest), as a registry client does: sha256
//! digests, monolithic and two-step blob uploads, manifest PUTs, and the one-layer OCI
//! image manifest many tests push. Each helper asserts the status the spec requires, so a
//! test that only needs content in place can call it and go on.

use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde_json::{json, Value};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// The sha256 digest of `bytes`.
pub fn sha256(bytes: &[u8]) -> oci::Digest {
    oci::Digest::of(oci::Algorithm::Sha256, bytes)
}

/// The `digest` of a descriptor (`{"mediaType", "digest", "size"}`), parsed.
pub fn digest_of(descriptor: &Value) -> oci::Digest {
    descriptor["digest"]
        .as_str()
        .unwrap_or_else(|| panic!("no digest in {descriptor}"))
        .parse()
        .unwrap_or_else(|e| panic!("bad digest in {descriptor}: {e:?}"))
}

/// An OCI image manifest with `config` and one uncompressed tar layer `layer`.
pub fn image_manifest(config: &[u8], layer: &[u8]) -> Value {
    json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha256(config).as_str(), "size": config.len()},
        "layers": [{"mediaType": OCI_LAYER, "digest": sha256(layer).as_str(), "size": layer.len()}],
    })
}

/// A registry at `url` as one client sees it: its HTTP client, and the Basic credentials
/// and User-Agent it sends with every request.
#[derive(Clone)]
pub struct Registry {
    pub c: reqwest::Client,
    /// `http://HOST:PORT`, no trailing slash.
    pub url: String,
    auth: Option<(String, String)>,
    user_agent: Option<String>,
}

impl Registry {
    pub fn new(url: &str) -> Registry {
        Registry::with_client(reqwest::Client::new(), url)
    }

    /// The same, sharing `c`'s connection pool.
    pub fn with_client(c: reqwest::Client, url: &str) -> Registry {
        Registry {
            c,
            url: url.to_string(),
            auth: None,
            user_agent: None,
        }
    }

    /// Send Basic credentials with every request.
    pub fn with_auth(mut self, user: &str, password: &str) -> Registry {
        self.auth = Some((user.to_string(), password.to_string()));
        self
    }

    /// Send this User-Agent with every request.
    pub fn with_user_agent(mut self, user_agent: &str) -> Registry {
        self.user_agent = Some(user_agent.to_string());
        self
    }

    /// A request to `path` (`/v2/...`, or an absolute URL such as an upload's Location).
    pub fn req(&self, m: Method, path: &str) -> RequestBuilder {
        let url = if path.starts_with("http") {
            path.to_string()
        } else {
            format!("{}{path}", self.url)
        };
        let mut r = self.c.request(m, url);
        if let Some((u, p)) = &self.auth {
            r = r.basic_auth(u, Some(p));
        }
        if let Some(ua) = &self.user_agent {
            r = r.header("user-agent", ua);
        }
        r
    }

    /// A monolithic upload (`POST ...?digest=`) of `data` into `repo`; must answer 201.
    pub async fn push_blob(&self, repo: &str, data: &[u8]) -> oci::Digest {
        let d = sha256(data);
        let r = self.try_push_blob(repo, data).await;
        assert_eq!(
            r.status(),
            StatusCode::CREATED,
            "monolithic push of {d} to {repo}"
        );
        d
    }

    /// A monolithic upload of `data` into `repo`, whatever it is answered.
    pub async fn try_push_blob(&self, repo: &str, data: &[u8]) -> Response {
        let d = sha256(data);
        self.req(
            Method::POST,
            &format!("/v2/{repo}/blobs/uploads/?digest={d}"),
        )
        .body(data.to_vec())
        .send()
        .await
        .expect("send")
    }

    /// A two-step upload as docker does it: `POST` (202 with a Location), then `PUT` of
    /// all bytes with the digest (201).
    pub async fn push_blob_two_step(&self, repo: &str, data: &[u8]) -> oci::Digest {
        let r = self
            .req(Method::POST, &format!("/v2/{repo}/blobs/uploads/"))
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), StatusCode::ACCEPTED, "POST upload to {repo}");
        let location = r.headers()["location"]
            .to_str()
            .expect("location")
            .to_string();
        let d = sha256(data);
        let sep = if location.contains('?') { '&' } else { '?' };
        let r = self
            .req(Method::PUT, &format!("{location}{sep}digest={d}"))
            .body(data.to_vec())
            .send()
            .await
            .expect("send");
        assert_eq!(
            r.status(),
            StatusCode::CREATED,
            "PUT upload of {d} to {repo}"
        );
        d
    }

    /// A chunked upload: `POST`, one `PATCH` with a `Content-Range` per size in `chunks`
    /// (each must answer 202 with the `Range` so far), then the closing `PUT` (201).
    pub async fn push_blob_chunked(
        &self,
        repo: &str,
        data: &[u8],
        chunks: &[usize],
    ) -> oci::Digest {
        let resp = self
            .req(Method::POST, &format!("/v2/{repo}/blobs/uploads/"))
            .send()
            .await
            .expect("POST");
        assert_eq!(resp.status(), StatusCode::ACCEPTED, "POST upload to {repo}");
        let mut location = resp.headers()["location"]
            .to_str()
            .expect("location")
            .to_string();
        let mut offset = 0;
        for n in chunks {
            let resp = self
                .req(Method::PATCH, &location)
                .header("content-type", "application/octet-stream")
                .header("content-range", format!("{}-{}", offset, offset + n - 1))
                .body(data[offset..offset + n].to_vec())
                .send()
                .await
                .expect("PATCH");
            assert_eq!(resp.status(), StatusCode::ACCEPTED, "chunk at {offset}");
            assert_eq!(
                resp.headers()["range"].to_str().expect("range"),
                format!("0-{}", offset + n - 1)
            );
            location = resp.headers()["location"]
                .to_str()
                .expect("location")
                .to_string();
            offset += n;
        }
        assert_eq!(offset, data.len(), "the chunks cover the blob");
        let d = sha256(data);
        let sep = if location.contains('?') { '&' } else { '?' };
        let resp = self
            .req(Method::PUT, &format!("{location}{sep}digest={d}"))
            .send()
            .await
            .expect("PUT");
        assert_eq!(resp.status(), StatusCode::CREATED, "closing PUT of {d}");
        d
    }

    /// An image of a small config and `layer` pushed in `chunks` (see
    /// [`Registry::push_blob_chunked`]), tagged `tag`; returns the manifest's and the
    /// layer's digests.
    pub async fn push_image_chunked(
        &self,
        repo: &str,
        tag: &str,
        layer: &[u8],
        chunks: &[usize],
    ) -> (oci::Digest, oci::Digest) {
        let config =
            format!("{{\"architecture\":\"amd64\",\"os\":\"linux\",\"image\":\"{repo}:{tag}\"}}");
        self.push_blob(repo, config.as_bytes()).await;
        let layer_digest = self.push_blob_chunked(repo, layer, chunks).await;
        let manifest = serde_json::to_vec(&image_manifest(config.as_bytes(), layer)).expect("json");
        let resp = self.put_manifest(repo, tag, OCI_MANIFEST, &manifest).await;
        assert_eq!(resp.status(), StatusCode::CREATED, "manifest {repo}:{tag}");
        (sha256(&manifest), layer_digest)
    }

    /// `PUT /v2/REPO/manifests/REFERENCE`; the answer, unchecked.
    pub async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> Response {
        self.req(Method::PUT, &format!("/v2/{repo}/manifests/{reference}"))
            .header("content-type", media_type)
            .body(body.to_vec())
            .send()
            .await
            .expect("send")
    }
}
