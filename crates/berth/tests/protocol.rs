//! Black-box protocol tests: the real `berth` binary on a random loopback port, driven
//! with raw HTTP, one server per test. Each endpoint of the OCI distribution spec, its
//! error codes, limits, and that a rejected request leaves stored content untouched.

mod common;

use common::push::{image_manifest, sha256, Registry, OCI_INDEX, OCI_MANIFEST};
use common::Berth;
use oci::{Algorithm, Digest};
use reqwest::{Client, Method, Response, StatusCode};
use serde_json::{json, Value};

const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

fn hdr<'a>(r: &'a Response, name: &str) -> Option<&'a str> {
    r.headers().get(name).and_then(|v| v.to_str().ok())
}

async fn error_codes(r: Response) -> Vec<String> {
    let v: Value = r.json().await.expect("error body is JSON");
    v["errors"]
        .as_array()
        .expect("errors array")
        .iter()
        .map(|e| e["code"].as_str().expect("code").to_string())
        .collect()
}

/// Assert status and the first error code of the JSON envelope.
async fn expect_error(r: Response, status: u16, code: &str) {
    assert_eq!(r.status().as_u16(), status, "status for {}", r.url());
    let codes = error_codes(r).await;
    assert_eq!(
        codes.first().map(String::as_str),
        Some(code),
        "codes {codes:?}"
    );
}

struct Api {
    b: Berth,
    c: Client,
}

impl Api {
    fn new() -> Api {
        Api::with("")
    }

    fn with(extra: &str) -> Api {
        Api {
            b: Berth::start_with(extra),
            c: Client::new(),
        }
    }

    fn with_config(config: &str) -> Api {
        Api {
            b: Berth::start_with_config(config),
            c: Client::new(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.b.url, path)
    }

    fn req(&self, m: Method, path: &str) -> reqwest::RequestBuilder {
        self.c.request(m, self.url(path))
    }

    /// The registry through this test's client (asked each time: the URL changes when
    /// the server is restarted).
    fn reg(&self) -> Registry {
        Registry::with_client(self.c.clone(), &self.b.url)
    }

    async fn push_blob(&self, repo: &str, data: &[u8]) -> Digest {
        self.reg().push_blob(repo, data).await
    }

    async fn start_upload(&self, repo: &str) -> String {
        let r = self
            .req(Method::POST, &format!("/v2/{repo}/blobs/uploads/"))
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        assert!(hdr(&r, "docker-upload-uuid").is_some());
        assert_eq!(hdr(&r, "range"), Some("0-0"));
        hdr(&r, "location").expect("location").to_string()
    }

    async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> Response {
        self.reg()
            .put_manifest(repo, reference, media_type, body)
            .await
    }

    /// Push an image with one layer; returns (manifest bytes, digest).
    async fn push_image(&self, repo: &str, tag: &str, seed: &str) -> (Vec<u8>, Digest) {
        let config = format!(r#"{{"architecture":"amd64","os":"linux","seed":"{seed}"}}"#);
        let layer = format!("layer-{seed}");
        self.push_blob(repo, config.as_bytes()).await;
        self.push_blob(repo, layer.as_bytes()).await;
        let m = image_manifest(config.as_bytes(), layer.as_bytes());
        let bytes = serde_json::to_vec_pretty(&m).expect("json");
        let r = self.put_manifest(repo, tag, OCI_MANIFEST, &bytes).await;
        assert_eq!(r.status(), StatusCode::CREATED, "push image");
        let d = sha256(&bytes);
        assert_eq!(hdr(&r, "docker-content-digest"), Some(d.as_str()));
        assert_eq!(
            hdr(&r, "location"),
            Some(format!("/v2/{repo}/manifests/{d}").as_str())
        );
        (bytes, d)
    }

    async fn get(&self, path: &str) -> Response {
        self.req(Method::GET, path).send().await.expect("send")
    }
}

#[tokio::test]
async fn base_endpoint() {
    let a = Api::new();
    let r = a.get("/v2/").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        hdr(&r, "docker-distribution-api-version"),
        Some("registry/2.0")
    );
    let r = a.get("/v2").await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = a.req(Method::HEAD, "/v2/").send().await.expect("head");
    assert_eq!(r.status(), StatusCode::OK, "clients probe with HEAD too");
    let r = a.get("/nothing").await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn blob_pull_head_range_and_errors() {
    let a = Api::new();
    let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    let d = a.push_blob("lib/app", &data).await;

    let r = a
        .req(Method::HEAD, &format!("/v2/lib/app/blobs/{d}"))
        .send()
        .await
        .expect("head");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(hdr(&r, "content-length"), Some("10000"));
    assert_eq!(hdr(&r, "docker-content-digest"), Some(d.as_str()));
    assert_eq!(hdr(&r, "etag"), Some(format!("\"{d}\"").as_str()));

    let r = a.get(&format!("/v2/lib/app/blobs/{d}")).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.expect("body").as_ref(), &data[..]);

    let r = a
        .req(Method::GET, &format!("/v2/lib/app/blobs/{d}"))
        .header("range", "bytes=100-199")
        .send()
        .await
        .expect("range");
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(hdr(&r, "content-range"), Some("bytes 100-199/10000"));
    assert_eq!(hdr(&r, "content-length"), Some("100"));
    assert_eq!(r.bytes().await.expect("body").as_ref(), &data[100..200]);

    let r = a
        .req(Method::GET, &format!("/v2/lib/app/blobs/{d}"))
        .header("range", "bytes=-10")
        .send()
        .await
        .expect("suffix");
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.bytes().await.expect("body").as_ref(), &data[9990..]);

    for bad in ["bytes=10000-", "bytes=500-0"] {
        let r = a
            .req(Method::GET, &format!("/v2/lib/app/blobs/{d}"))
            .header("range", bad)
            .send()
            .await
            .expect("416");
        assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE, "{bad}");
        assert_eq!(hdr(&r, "content-range"), Some("bytes */10000"));
    }

    // Unknown blob, and a blob that exists but not in this repository.
    expect_error(
        a.get(&format!("/v2/lib/app/blobs/{}", sha256(b"nope")))
            .await,
        404,
        "BLOB_UNKNOWN",
    )
    .await;
    expect_error(
        a.get(&format!("/v2/other/blobs/{d}")).await,
        404,
        "BLOB_UNKNOWN",
    )
    .await;
    let r = a
        .req(Method::HEAD, &format!("/v2/other/blobs/{d}"))
        .send()
        .await
        .expect("head");
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    // Bad digests and names.
    expect_error(
        a.get("/v2/lib/app/blobs/sha256:abc").await,
        400,
        "DIGEST_INVALID",
    )
    .await;
    expect_error(
        a.get(&format!("/v2/lib/app/blobs/md5:{}", "a".repeat(32)))
            .await,
        400,
        "DIGEST_INVALID",
    )
    .await;
    expect_error(
        a.get(&format!("/v2/Lib/App/blobs/{d}")).await,
        400,
        "NAME_INVALID",
    )
    .await;

    // The empty blob.
    let e = a.push_blob("lib/app", b"").await;
    let r = a.get(&format!("/v2/lib/app/blobs/{e}")).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(hdr(&r, "content-length"), Some("0"));
}

#[tokio::test]
async fn post_then_put_and_digest_mismatch() {
    let a = Api::new();
    let loc = a.start_upload("r").await;
    let data = b"monolithic via put";
    let d = sha256(data);
    let r =
        a.c.put(a.url(&format!("{loc}?digest={d}")))
            .body(data.to_vec())
            .send()
            .await
            .expect("put");
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(
        hdr(&r, "location"),
        Some(format!("/v2/r/blobs/{d}").as_str())
    );
    assert_eq!(
        a.get(&format!("/v2/r/blobs/{d}"))
            .await
            .bytes()
            .await
            .expect("body")
            .as_ref(),
        data
    );

    // Wrong digest: 400 DIGEST_INVALID, nothing stored under either digest, session gone.
    let loc = a.start_upload("r").await;
    let claimed = sha256(b"something else");
    let r =
        a.c.put(a.url(&format!("{loc}?digest={claimed}")))
            .body(data.to_vec())
            .send()
            .await
            .expect("put");
    expect_error(r, 400, "DIGEST_INVALID").await;
    expect_error(
        a.get(&format!("/v2/r/blobs/{claimed}")).await,
        404,
        "BLOB_UNKNOWN",
    )
    .await;
    expect_error(a.get(&loc).await, 404, "BLOB_UPLOAD_UNKNOWN").await;
    // Monolithic POST with a wrong digest.
    let r = a
        .req(
            Method::POST,
            &format!("/v2/r/blobs/uploads/?digest={claimed}"),
        )
        .body(data.to_vec())
        .send()
        .await
        .expect("post");
    expect_error(r, 400, "DIGEST_INVALID").await;
    // PUT without a digest, and with a malformed one.
    let loc = a.start_upload("r").await;
    expect_error(
        a.c.put(a.url(&loc)).send().await.expect("put"),
        400,
        "DIGEST_INVALID",
    )
    .await;
    expect_error(
        a.c.put(a.url(&format!("{loc}?digest=sha256:xyz")))
            .send()
            .await
            .expect("put"),
        400,
        "DIGEST_INVALID",
    )
    .await;
    // The session survived the malformed closes.
    assert_eq!(a.get(&loc).await.status(), StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn chunked_upload_with_out_of_order_chunks() {
    let a = Api::new();
    let loc = a.start_upload("chunky").await;
    let data: Vec<u8> = (0..3000u32).map(|i| (i * 7 % 256) as u8).collect();
    let d = sha256(&data);
    let patch = |range: &str, body: &[u8]| {
        a.c.patch(a.url(&loc))
            .header("content-type", "application/octet-stream")
            .header("content-range", range.to_string())
            .body(body.to_vec())
            .send()
    };
    let r = patch("0-999", &data[..1000]).await.expect("patch");
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(hdr(&r, "range"), Some("0-999"));
    let next = hdr(&r, "location").expect("location").to_string();
    assert_eq!(next, loc);

    // Repeating the chunk, skipping ahead, or a range that does not match the body: 416
    // and the upload is unchanged.
    let r = patch("0-999", &data[..1000]).await.expect("patch");
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(hdr(&r, "range"), Some("0-999"));
    let r = patch("1500-1999", &data[1500..2000]).await.expect("patch");
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    let r = patch("1000-1999", &data[1000..1500]).await.expect("patch");
    assert_eq!(r.status(), StatusCode::BAD_REQUEST, "short chunk");
    let r = a.get(&loc).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(hdr(&r, "range"), Some("0-999"));
    assert_eq!(hdr(&r, "location"), Some(loc.as_str()));

    let r = patch("1000-1999", &data[1000..2000]).await.expect("patch");
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(hdr(&r, "range"), Some("0-1999"));
    // Final chunk in the closing PUT, out of order first.
    let r =
        a.c.put(a.url(&format!("{loc}?digest={d}")))
            .header("content-range", "2500-2999")
            .body(data[2500..].to_vec())
            .send()
            .await
            .expect("put");
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    let r =
        a.c.put(a.url(&format!("{loc}?digest={d}")))
            .header("content-range", "2000-2999")
            .body(data[2000..].to_vec())
            .send()
            .await
            .expect("put");
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(
        a.get(&format!("/v2/chunky/blobs/{d}"))
            .await
            .bytes()
            .await
            .expect("body")
            .as_ref(),
        &data[..]
    );
    // The session is closed.
    expect_error(a.get(&loc).await, 404, "BLOB_UPLOAD_UNKNOWN").await;
}

#[tokio::test]
async fn streamed_patch_and_cancel() {
    let a = Api::new();
    let loc = a.start_upload("s").await;
    let data = vec![42u8; 300_000];
    let d = sha256(&data);
    let stream = futures_util::stream::iter(
        data.chunks(65536)
            .map(|c| Ok::<_, std::io::Error>(bytes::Bytes::copy_from_slice(c)))
            .collect::<Vec<_>>(),
    );
    let r =
        a.c.patch(a.url(&loc))
            .body(reqwest::Body::wrap_stream(stream))
            .send()
            .await
            .expect("patch");
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(hdr(&r, "range"), Some("0-299999"));
    let r =
        a.c.put(a.url(&format!("{loc}?digest={d}")))
            .send()
            .await
            .expect("put");
    assert_eq!(r.status(), StatusCode::CREATED);
    let first_location = hdr(&r, "location").map(str::to_string);
    // The same closing PUT again (its answer lost; a load balancer resending it): the
    // same answer, while the session stays closed to everything else.
    let r =
        a.c.put(a.url(&format!("{loc}?digest={d}")))
            .send()
            .await
            .expect("put again");
    assert_eq!(r.status(), StatusCode::CREATED, "a repeated closing PUT");
    assert_eq!(hdr(&r, "location").map(str::to_string), first_location);
    assert_eq!(hdr(&r, "docker-content-digest"), Some(d.as_str()));
    expect_error(a.get(&loc).await, 404, "BLOB_UPLOAD_UNKNOWN").await;
    let other = sha256(b"another blob");
    expect_error(
        a.c.put(a.url(&format!("{loc}?digest={other}")))
            .send()
            .await
            .expect("put"),
        404,
        "BLOB_UPLOAD_UNKNOWN",
    )
    .await;

    // Cancel.
    let loc = a.start_upload("s").await;
    a.c.patch(a.url(&loc))
        .body("abc")
        .send()
        .await
        .expect("patch");
    let r = a.c.delete(a.url(&loc)).send().await.expect("delete");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    expect_error(a.get(&loc).await, 404, "BLOB_UPLOAD_UNKNOWN").await;
    expect_error(
        a.c.patch(a.url(&loc))
            .body("x")
            .send()
            .await
            .expect("patch"),
        404,
        "BLOB_UPLOAD_UNKNOWN",
    )
    .await;
    expect_error(
        a.c.delete(a.url(&loc)).send().await.expect("delete"),
        404,
        "BLOB_UPLOAD_UNKNOWN",
    )
    .await;
    // An upload id is bound to its repository, and invented ids are unknown.
    let loc = a.start_upload("s").await;
    let other = loc.replace("/v2/s/", "/v2/t/");
    expect_error(a.get(&other).await, 404, "BLOB_UPLOAD_UNKNOWN").await;
    expect_error(
        a.get("/v2/s/blobs/uploads/not-a-real-id").await,
        404,
        "BLOB_UPLOAD_UNKNOWN",
    )
    .await;
    expect_error(
        a.get("/v2/s/blobs/uploads/..%2f..%2fetc").await,
        404,
        "BLOB_UPLOAD_UNKNOWN",
    )
    .await;
}

#[tokio::test]
async fn sha512_blobs_and_manifests() {
    let a = Api::new();
    let data = b"sha512 content";
    let d = Digest::of(Algorithm::Sha512, data);
    // Monolithic.
    let r = a
        .req(Method::POST, &format!("/v2/x/blobs/uploads/?digest={d}"))
        .body(data.to_vec())
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(hdr(&r, "docker-content-digest"), Some(d.as_str()));
    let r = a.get(&format!("/v2/x/blobs/{d}")).await;
    assert_eq!(hdr(&r, "docker-content-digest"), Some(d.as_str()));
    assert_eq!(r.bytes().await.expect("body").as_ref(), data);
    // Chunked, session opened without naming the algorithm, and with digest-algorithm.
    for query in ["", "?digest-algorithm=sha512"] {
        let r = a
            .req(Method::POST, &format!("/v2/y/blobs/uploads/{query}"))
            .send()
            .await
            .expect("post");
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        let loc = hdr(&r, "location").expect("location").to_string();
        a.c.patch(a.url(&loc))
            .header("content-range", "0-6")
            .body(&data[..7])
            .send()
            .await
            .expect("patch");
        let r =
            a.c.put(a.url(&format!("{loc}?digest={d}")))
                .header("content-range", "7-13")
                .body(&data[7..])
                .send()
                .await
                .expect("put");
        assert_eq!(r.status(), StatusCode::CREATED, "{query}");
    }
    let r = a
        .req(Method::POST, "/v2/y/blobs/uploads/?digest-algorithm=md5")
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    // A manifest pushed by sha512 digest is verified and served by it.
    let m = json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": d.as_str(), "size": data.len()},
        "layers": [],
    });
    let bytes = serde_json::to_vec(&m).expect("json");
    let md = Digest::of(Algorithm::Sha512, &bytes);
    let r = a.put_manifest("x", md.as_str(), OCI_MANIFEST, &bytes).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(hdr(&r, "docker-content-digest"), Some(md.as_str()));
    let r = a.get(&format!("/v2/x/manifests/{md}")).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(hdr(&r, "docker-content-digest"), Some(md.as_str()));
    assert_eq!(r.bytes().await.expect("body").as_ref(), &bytes[..]);
}

#[tokio::test]
async fn cross_repository_mounts() {
    let a = Api::new();
    let d = a.push_blob("src/repo", b"shared layer").await;
    let r = a
        .req(
            Method::POST,
            &format!("/v2/dst/one/blobs/uploads/?mount={d}&from=src/repo"),
        )
        .send()
        .await
        .expect("mount");
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(
        hdr(&r, "location"),
        Some(format!("/v2/dst/one/blobs/{d}").as_str())
    );
    assert_eq!(hdr(&r, "docker-content-digest"), Some(d.as_str()));
    assert_eq!(
        a.get(&format!("/v2/dst/one/blobs/{d}")).await.status(),
        StatusCode::OK
    );
    // Without `from`, a blob the registry knows is mounted.
    let r = a
        .req(
            Method::POST,
            &format!("/v2/dst/two/blobs/uploads/?mount={d}"),
        )
        .send()
        .await
        .expect("mount");
    assert_eq!(r.status(), StatusCode::CREATED);
    // An unknown blob, or one `from` does not have, starts an upload session instead.
    let unknown = sha256(b"never pushed");
    let r = a
        .req(
            Method::POST,
            &format!("/v2/dst/three/blobs/uploads/?mount={unknown}&from=src/repo"),
        )
        .send()
        .await
        .expect("mount");
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert!(hdr(&r, "location")
        .expect("location")
        .starts_with("/v2/dst/three/blobs/uploads/"));
    let r = a
        .req(
            Method::POST,
            &format!("/v2/dst/four/blobs/uploads/?mount={d}&from=dst/nothing"),
        )
        .send()
        .await
        .expect("mount");
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    expect_error(
        a.get(&format!("/v2/dst/four/blobs/{d}")).await,
        404,
        "BLOB_UNKNOWN",
    )
    .await;
}

#[tokio::test]
async fn manifest_push_pull_and_validation() {
    let a = Api::new();
    let (bytes, d) = a.push_image("team/app", "v1", "a").await;
    for reference in ["v1".to_string(), d.to_string()] {
        let r = a
            .req(Method::GET, &format!("/v2/team/app/manifests/{reference}"))
            .header("accept", OCI_MANIFEST)
            .send()
            .await
            .expect("get");
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(hdr(&r, "content-type"), Some(OCI_MANIFEST));
        assert_eq!(hdr(&r, "docker-content-digest"), Some(d.as_str()));
        assert_eq!(
            r.bytes().await.expect("body").as_ref(),
            &bytes[..],
            "stored byte for byte"
        );
        let r = a
            .req(Method::HEAD, &format!("/v2/team/app/manifests/{reference}"))
            .send()
            .await
            .expect("head");
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(
            hdr(&r, "content-length"),
            Some(bytes.len().to_string().as_str())
        );
        assert_eq!(hdr(&r, "content-type"), Some(OCI_MANIFEST));
    }
    // Unknown and invalid references are 404 on reads.
    // The detail names what was missing, as Distribution's does (Docker relies on it).
    let v: Value = a
        .get("/v2/team/app/manifests/nope")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(v["errors"][0]["code"], "MANIFEST_UNKNOWN");
    assert_eq!(v["errors"][0]["detail"]["Tag"], "nope");
    expect_error(
        a.get("/v2/team/app/manifests/.INVALID").await,
        404,
        "MANIFEST_UNKNOWN",
    )
    .await;
    expect_error(
        a.get("/v2/no/such/repo/manifests/v1").await,
        404,
        "MANIFEST_UNKNOWN",
    )
    .await;
    let r = a
        .req(Method::HEAD, "/v2/team/app/manifests/nope")
        .send()
        .await
        .expect("head");
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    // Rejections, each leaving v1 as it was.
    let missing = sha256(b"not pushed");
    let bad_ref = json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": missing.as_str(), "size": 10},
        "layers": [],
    });
    let r = a
        .put_manifest(
            "team/app",
            "v1",
            OCI_MANIFEST,
            &serde_json::to_vec(&bad_ref).expect("json"),
        )
        .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["errors"][0]["code"], "MANIFEST_BLOB_UNKNOWN");
    assert_eq!(v["errors"][0]["detail"]["digest"], missing.as_str());
    expect_error(
        a.put_manifest("team/app", "v1", OCI_MANIFEST, b"{not json")
            .await,
        400,
        "MANIFEST_INVALID",
    )
    .await;
    let schema1 = br#"{"schemaVersion":1,"name":"team/app","tag":"v1","fsLayers":[],"history":[]}"#;
    let r = a
        .put_manifest(
            "team/app",
            "v1",
            "application/vnd.docker.distribution.manifest.v1+prettyjws",
            schema1,
        )
        .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["errors"][0]["code"], "MANIFEST_INVALID");
    assert!(v["errors"][0]["message"]
        .as_str()
        .expect("message")
        .contains("schema1"));
    let r = a
        .put_manifest("team/app", d.as_str(), OCI_MANIFEST, b"{}")
        .await;
    expect_error(r, 400, "DIGEST_INVALID").await;
    expect_error(
        a.put_manifest("team/app", "sha256:baddigeststring", OCI_MANIFEST, &bytes)
            .await,
        400,
        "DIGEST_INVALID",
    )
    .await;
    expect_error(
        a.put_manifest("team/app", "bad!tag", OCI_MANIFEST, &bytes)
            .await,
        400,
        "TAG_INVALID",
    )
    .await;
    // Content-Type disagreeing with mediaType.
    expect_error(
        a.put_manifest("team/app", "v1", OCI_INDEX, &bytes).await,
        400,
        "MANIFEST_INVALID",
    )
    .await;
    let r = a.get("/v2/team/app/manifests/v1").await;
    assert_eq!(
        r.bytes().await.expect("body").as_ref(),
        &bytes[..],
        "v1 unchanged after rejections"
    );

    // Docker schema2 manifests are stored and served with their own type.
    let cfg = a.push_blob("team/app", b"{\"os\":\"linux\"}").await;
    let docker = json!({
        "schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": cfg.as_str(), "size": 14},
        "layers": [],
    });
    let db = serde_json::to_vec(&docker).expect("json");
    assert_eq!(
        a.put_manifest("team/app", "docker", DOCKER_MANIFEST, &db)
            .await
            .status(),
        StatusCode::CREATED
    );
    let r = a.get("/v2/team/app/manifests/docker").await;
    assert_eq!(hdr(&r, "content-type"), Some(DOCKER_MANIFEST));

    // Foreign (non-distributable) layers need not be pushed.
    let foreign = json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfg.as_str(), "size": 14},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
                    "digest": sha256(b"elsewhere").as_str(), "size": 123, "urls": ["https://example.invalid/l"]}],
    });
    let r = a
        .put_manifest(
            "team/app",
            "foreign",
            OCI_MANIFEST,
            &serde_json::to_vec(&foreign).expect("json"),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn manifest_size_limit() {
    let a = Api::new();
    let cfg = a.push_blob("big", b"{}").await;
    let manifest_with_padding = |pad: usize| {
        serde_json::to_vec(&json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfg.as_str(), "size": 2},
            "layers": [],
            "annotations": {"pad": "x".repeat(pad)},
        }))
        .expect("json")
    };
    // Just under 4 MiB is accepted.
    let ok = manifest_with_padding(4 * 1024 * 1024 - 400);
    assert!(ok.len() <= 4 * 1024 * 1024);
    assert_eq!(
        a.put_manifest("big", "ok", OCI_MANIFEST, &ok)
            .await
            .status(),
        StatusCode::CREATED
    );
    let r = a.get("/v2/big/manifests/ok").await;
    assert_eq!(r.bytes().await.expect("body").len(), ok.len());
    // Over 4 MiB: 413, not stored.
    let big = manifest_with_padding(4 * 1024 * 1024 + 10);
    let r = a.put_manifest("big", "toobig", OCI_MANIFEST, &big).await;
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error_codes(r).await, vec!["MANIFEST_INVALID"]);
    expect_error(
        a.get("/v2/big/manifests/toobig").await,
        404,
        "MANIFEST_UNKNOWN",
    )
    .await;
}

#[tokio::test]
async fn index_tags_and_accept_negotiation() {
    let a = Api::new();
    let (amd, amd_d) = a.push_image("multi", "amd64", "amd").await;
    let (arm, arm_d) = a.push_image("multi", "arm64", "arm").await;
    let index = json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": arm_d.as_str(), "size": arm.len(), "platform": {"os": "linux", "architecture": "arm64"}},
            {"mediaType": OCI_MANIFEST, "digest": amd_d.as_str(), "size": amd.len(), "platform": {"os": "linux", "architecture": "amd64"}},
        ],
    });
    let ib = serde_json::to_vec(&index).expect("json");
    let id = sha256(&ib);
    // Several tags in one push by digest.
    let r = a
        .put_manifest(
            "multi",
            &format!("{id}?tag=latest&tag=1.0&tag=1"),
            OCI_INDEX,
            &ib,
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let tags: Vec<&str> = r
        .headers()
        .get_all("oci-tag")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    assert_eq!(tags, vec!["latest", "1.0", "1"]);
    for t in ["latest", "1.0", "1"] {
        let r = a
            .req(Method::GET, &format!("/v2/multi/manifests/{t}"))
            .header("accept", OCI_INDEX)
            .send()
            .await
            .expect("get");
        assert_eq!(hdr(&r, "docker-content-digest"), Some(id.as_str()), "{t}");
    }
    expect_error(
        a.put_manifest("multi", &format!("{id}?tag=ok&tag=-bad"), OCI_INDEX, &ib)
            .await,
        400,
        "TAG_INVALID",
    )
    .await;
    // A client that only takes image manifests gets the linux/amd64 image for a tag...
    let r = a
        .req(Method::GET, "/v2/multi/manifests/latest")
        .header("accept", OCI_MANIFEST)
        .header("accept", DOCKER_MANIFEST)
        .send()
        .await
        .expect("get");
    assert_eq!(hdr(&r, "docker-content-digest"), Some(amd_d.as_str()));
    // ...but a digest is always served as it is.
    let r = a
        .req(Method::GET, &format!("/v2/multi/manifests/{id}"))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .expect("get");
    assert_eq!(hdr(&r, "docker-content-digest"), Some(id.as_str()));
    // An index whose children are missing is refused.
    let dangling = json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": sha256(b"x").as_str(), "size": 1}],
    });
    let r = a
        .put_manifest(
            "multi",
            "dangling",
            OCI_INDEX,
            &serde_json::to_vec(&dangling).expect("json"),
        )
        .await;
    expect_error(r, 400, "MANIFEST_BLOB_UNKNOWN").await;
}

#[tokio::test]
async fn referrers_api() {
    let a = Api::new();
    let (subject, sd) = a.push_image("signed", "v1", "s").await;
    let empty = a.push_blob("signed", b"{}").await;
    let sig_layer = a.push_blob("signed", b"signature bytes").await;
    let artifact = |artifact_type: &str, note: &str| {
        serde_json::to_vec(&json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "artifactType": artifact_type,
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty.as_str(), "size": 2},
            "layers": [{"mediaType": "application/vnd.example.sig", "digest": sig_layer.as_str(), "size": 15}],
            "subject": {"mediaType": OCI_MANIFEST, "digest": sd.as_str(), "size": subject.len()},
            "annotations": {"org.example.note": note},
        }))
        .expect("json")
    };
    let sig = artifact("application/vnd.example.signature.v1", "sig");
    let sbom = artifact("application/vnd.example.sbom.v1", "sbom");
    for m in [&sig, &sbom] {
        let d = sha256(m);
        let r = a.put_manifest("signed", d.as_str(), OCI_MANIFEST, m).await;
        assert_eq!(r.status(), StatusCode::CREATED);
        assert_eq!(hdr(&r, "oci-subject"), Some(sd.as_str()));
    }
    let r = a.get(&format!("/v2/signed/referrers/{sd}")).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(hdr(&r, "content-type"), Some(OCI_INDEX));
    assert!(hdr(&r, "oci-filters-applied").is_none());
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["mediaType"], OCI_INDEX);
    let list = v["manifests"].as_array().expect("manifests");
    assert_eq!(list.len(), 2);
    let sig_entry = list
        .iter()
        .find(|e| e["digest"] == sha256(&sig).as_str())
        .expect("sig listed");
    assert_eq!(
        sig_entry["artifactType"],
        "application/vnd.example.signature.v1"
    );
    assert_eq!(sig_entry["size"], sig.len());
    assert_eq!(sig_entry["mediaType"], OCI_MANIFEST);
    assert_eq!(sig_entry["annotations"]["org.example.note"], "sig");

    let r = a
        .get(&format!(
            "/v2/signed/referrers/{sd}?artifactType=application/vnd.example.sbom.v1"
        ))
        .await;
    assert_eq!(hdr(&r, "oci-filters-applied"), Some("artifactType"));
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["manifests"].as_array().expect("list").len(), 1);
    assert_eq!(v["manifests"][0]["digest"], sha256(&sbom).as_str());

    // No referrers, unknown repositories: an empty index, never 404. Bad digest: 400.
    for path in [
        format!("/v2/signed/referrers/{}", sha256(b"none")),
        format!("/v2/nobody/referrers/{sd}"),
    ] {
        let r = a.get(&path).await;
        assert_eq!(r.status(), StatusCode::OK);
        let v: Value = r.json().await.expect("json");
        assert_eq!(v["manifests"], json!([]));
    }
    expect_error(
        a.get("/v2/signed/referrers/sha256:123").await,
        400,
        "DIGEST_INVALID",
    )
    .await;

    // A subject that does not exist yet is accepted (referrers may come first); an
    // image manifest without artifactType is listed with its config media type.
    let cfg = a.push_blob("signed", b"{\"kind\":\"cfg\"}").await;
    let later = sha256(b"future subject");
    let m = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.example.config", "digest": cfg.as_str(), "size": 14},
        "layers": [],
        "subject": {"mediaType": OCI_MANIFEST, "digest": later.as_str(), "size": 10},
    }))
    .expect("json");
    let r = a.put_manifest("signed", "early", OCI_MANIFEST, &m).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let v: Value = a
        .get(&format!("/v2/signed/referrers/{later}"))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(
        v["manifests"][0]["artifactType"],
        "application/vnd.example.config"
    );
}

#[tokio::test]
async fn deletes() {
    let a = Api::new();
    let (_, d1) = a.push_image("del", "one", "1").await;
    let (_, d2) = a.push_image("del", "two", "2").await;
    a.put_manifest(
        "del",
        "two-alias",
        OCI_MANIFEST,
        &a.get("/v2/del/manifests/two")
            .await
            .bytes()
            .await
            .expect("b"),
    )
    .await;
    // Deleting a tag removes only the tag.
    let r = a
        .req(Method::DELETE, "/v2/del/manifests/two-alias")
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    expect_error(
        a.get("/v2/del/manifests/two-alias").await,
        404,
        "MANIFEST_UNKNOWN",
    )
    .await;
    assert_eq!(
        a.get("/v2/del/manifests/two").await.status(),
        StatusCode::OK
    );
    assert_eq!(
        a.get(&format!("/v2/del/manifests/{d2}")).await.status(),
        StatusCode::OK
    );
    // Deleting by digest removes the manifest and its tags.
    let r = a
        .req(Method::DELETE, &format!("/v2/del/manifests/{d1}"))
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    expect_error(
        a.get(&format!("/v2/del/manifests/{d1}")).await,
        404,
        "MANIFEST_UNKNOWN",
    )
    .await;
    expect_error(
        a.get("/v2/del/manifests/one").await,
        404,
        "MANIFEST_UNKNOWN",
    )
    .await;
    let tags: Value = a.get("/v2/del/tags/list").await.json().await.expect("json");
    assert_eq!(tags["tags"], json!(["two"]));
    let r = a
        .req(Method::DELETE, &format!("/v2/del/manifests/{d1}"))
        .send()
        .await
        .expect("delete");
    expect_error(r, 404, "MANIFEST_UNKNOWN").await;
    // Blob delete unlinks from the repository.
    let b = a.push_blob("del", b"blob to delete").await;
    let r = a
        .req(Method::DELETE, &format!("/v2/del/blobs/{b}"))
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    expect_error(
        a.get(&format!("/v2/del/blobs/{b}")).await,
        404,
        "BLOB_UNKNOWN",
    )
    .await;
    let r = a
        .req(Method::DELETE, &format!("/v2/del/blobs/{b}"))
        .send()
        .await
        .expect("delete");
    expect_error(r, 404, "BLOB_UNKNOWN").await;
}

#[tokio::test]
async fn deletes_disabled() {
    // The harness's base config enables deletes; this server gets a whole config with
    // them off (Distribution's default).
    let b = common::Berth::start_with_config(
        "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: DATA\n  delete:\n    enabled: false\nhttp:\n  addr: 127.0.0.1:0\n",
    );
    let a = Api {
        b,
        c: Client::new(),
    };
    let (_, d) = a.push_image("keep", "v1", "k").await;
    let blob = a.push_blob("keep", b"kept").await;
    for path in [
        format!("/v2/keep/manifests/{d}"),
        "/v2/keep/manifests/v1".into(),
        format!("/v2/keep/blobs/{blob}"),
    ] {
        let r = a.req(Method::DELETE, &path).send().await.expect("delete");
        expect_error(r, 405, "UNSUPPORTED").await;
    }
    assert_eq!(
        a.get("/v2/keep/manifests/v1").await.status(),
        StatusCode::OK
    );
    assert_eq!(
        a.get(&format!("/v2/keep/blobs/{blob}")).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn tags_pagination() {
    let a = Api::with("limits:\n  pageentries: 5\n");
    let (bytes, _) = a.push_image("paged", "t00", "p").await;
    let mut want: Vec<String> = vec!["t00".into()];
    for i in 1..12 {
        let t = format!("t{i:02}");
        assert_eq!(
            a.put_manifest("paged", &t, OCI_MANIFEST, &bytes)
                .await
                .status(),
            StatusCode::CREATED
        );
        want.push(t);
    }
    for t in ["A", "Z", "_x"] {
        a.put_manifest("paged", t, OCI_MANIFEST, &bytes).await;
        want.push(t.into());
    }
    want.sort();
    // Walk with n=4 following Link headers.
    let mut got = Vec::new();
    let mut next = Some("/v2/paged/tags/list?n=4".to_string());
    while let Some(path) = next.take() {
        let r = a.get(&path).await;
        assert_eq!(r.status(), StatusCode::OK);
        next = hdr(&r, "link").map(|l| {
            assert!(l.ends_with("; rel=\"next\""), "{l}");
            l[1..l.find('>').expect(">")].to_string()
        });
        let v: Value = r.json().await.expect("json");
        assert_eq!(v["name"], "paged");
        got.extend(
            v["tags"]
                .as_array()
                .expect("tags")
                .iter()
                .map(|t| t.as_str().expect("s").to_string()),
        );
    }
    assert_eq!(got, want);
    // `last` without `n`, n=0, a huge n (capped at the page limit, with a Link).
    let v: Value = a
        .get("/v2/paged/tags/list?last=t10")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(v["tags"], json!(["t11"]));
    let r = a.get("/v2/paged/tags/list?n=0").await;
    assert!(hdr(&r, "link").is_none());
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["tags"], json!([]));
    let r = a.get("/v2/paged/tags/list?n=1000000000").await;
    assert!(hdr(&r, "link").is_some());
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["tags"].as_array().expect("tags").len(), 5);
    expect_error(
        a.get("/v2/paged/tags/list?n=-1").await,
        400,
        "PAGINATION_NUMBER_INVALID",
    )
    .await;
    expect_error(a.get("/v2/nobody/tags/list").await, 404, "NAME_UNKNOWN").await;
}

#[tokio::test]
async fn catalog_pagination_and_deep_names() {
    let a = Api::new();
    let mut names = vec!["a/b/c/d/e/f/g/h/app".to_string()];
    for i in 0..7 {
        names.push(format!("cat{i}"));
    }
    for n in &names {
        a.push_image(n, "v1", n).await;
    }
    names.sort();
    let r = a.get("/v2/a/b/c/d/e/f/g/h/app/manifests/v1").await;
    assert_eq!(r.status(), StatusCode::OK);
    let mut got = Vec::new();
    let mut next = Some("/v2/_catalog?n=3".to_string());
    while let Some(path) = next.take() {
        let r = a.get(&path).await;
        next = hdr(&r, "link").map(|l| l[1..l.find('>').expect(">")].to_string());
        let v: Value = r.json().await.expect("json");
        got.extend(
            v["repositories"]
                .as_array()
                .expect("repos")
                .iter()
                .map(|t| t.as_str().expect("s").to_string()),
        );
    }
    assert_eq!(got, names);
    let v: Value = a.get("/v2/_catalog").await.json().await.expect("json");
    assert_eq!(
        v["repositories"].as_array().expect("repos").len(),
        names.len()
    );
}

#[tokio::test]
async fn upload_resumes_after_crash() {
    let mut a = Api::new();
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 13) as u8).collect();
    let d = sha256(&data);
    let loc = a.start_upload("resume/me").await;
    let r =
        a.c.patch(a.url(&loc))
            .header("content-range", "0-99999")
            .body(data[..100_000].to_vec())
            .send()
            .await
            .expect("patch");
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    a.b.crash_and_restart();
    let r = a.get(&loc).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(hdr(&r, "range"), Some("0-99999"));
    let r =
        a.c.patch(a.url(&loc))
            .header("content-range", "100000-199999")
            .body(data[100_000..].to_vec())
            .send()
            .await
            .expect("patch");
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let r =
        a.c.put(a.url(&format!("{loc}?digest={d}")))
            .send()
            .await
            .expect("put");
    assert_eq!(r.status(), StatusCode::CREATED);
    // And everything acknowledged before another crash is still there after it.
    let (m, md) = a.push_image("resume/me", "v1", "r").await;
    a.b.crash_and_restart();
    assert_eq!(
        a.get(&format!("/v2/resume/me/blobs/{d}"))
            .await
            .bytes()
            .await
            .expect("b")
            .as_ref(),
        &data[..]
    );
    let r = a.get("/v2/resume/me/manifests/v1").await;
    assert_eq!(hdr(&r, "docker-content-digest"), Some(md.as_str()));
    assert_eq!(r.bytes().await.expect("b").as_ref(), &m[..]);
}

#[tokio::test]
async fn blobs_are_content_addressed_files() {
    let a = Api::new();
    let d = a.push_blob("one", b"dedup me").await;
    a.push_blob("two", b"dedup me").await;
    let path =
        a.b.data_dir()
            .join("blobs/sha256")
            .join(&d.hex()[..2])
            .join(d.hex());
    assert_eq!(std::fs::read(&path).expect("blob file"), b"dedup me");
    let uploads = a.b.upload_files();
    assert!(
        uploads.is_empty(),
        "no upload files left behind: {uploads:?}"
    );
}

#[tokio::test]
async fn blob_size_limit() {
    let a = Api::with("limits:\n  blobsize: 1KiB\n");
    let r = a
        .req(
            Method::POST,
            &format!("/v2/l/blobs/uploads/?digest={}", sha256(&[1u8; 2048])),
        )
        .body(vec![1u8; 2048])
        .send()
        .await
        .expect("post");
    expect_error(r, 413, "SIZE_INVALID").await;
    let loc = a.start_upload("l").await;
    let r =
        a.c.patch(a.url(&loc))
            .body(vec![1u8; 1000])
            .send()
            .await
            .expect("patch");
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let r =
        a.c.patch(a.url(&loc))
            .body(vec![1u8; 100])
            .send()
            .await
            .expect("patch");
    expect_error(r, 413, "SIZE_INVALID").await;
    // The upload is as it was before the refused chunk, and can still be finished.
    let r = a.get(&loc).await;
    assert_eq!(hdr(&r, "range"), Some("0-999"));
    let r =
        a.c.put(a.url(&format!("{loc}?digest={}", sha256(&[1u8; 1000]))))
            .send()
            .await
            .expect("put");
    assert_eq!(r.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn stalled_upload_times_out_and_changes_nothing() {
    let a = Api::with("limits:\n  bodyidletimeout: 1s\n");
    let loc = a.start_upload("slow").await;
    let stalled = futures_util::stream::unfold(0, |state| async move {
        match state {
            0 => Some((
                Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"first bytes")),
                1,
            )),
            _ => {
                tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                None
            }
        }
    });
    let started = std::time::Instant::now();
    let r =
        a.c.patch(a.url(&loc))
            .body(reqwest::Body::wrap_stream(stalled))
            .send()
            .await;
    assert!(
        started.elapsed() < std::time::Duration::from_secs(4),
        "server gave up after its idle timeout"
    );
    if let Ok(r) = r {
        assert_eq!(r.status(), StatusCode::REQUEST_TIMEOUT);
    }
    let r = a.get(&loc).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(hdr(&r, "range"), Some("0-0"));
    assert_eq!(a.b.upload_file_sizes(), vec![0]);
}

#[tokio::test]
async fn method_not_allowed_and_unknown_routes() {
    let a = Api::new();
    let r = a
        .req(Method::POST, "/v2/x/manifests/v1")
        .send()
        .await
        .expect("post");
    expect_error(r, 405, "UNSUPPORTED").await;
    let r = a
        .req(Method::PUT, "/v2/_catalog")
        .send()
        .await
        .expect("put");
    expect_error(r, 405, "UNSUPPORTED").await;
    assert_eq!(
        a.get("/v2/x/unknown/thing").await.status(),
        StatusCode::NOT_FOUND
    );
}

/// Peak resident memory of a process, from /proc.
fn peak_rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM");
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .expect("value")
        .parse()
        .expect("number");
    kb * 1024
}

#[tokio::test]
async fn large_blobs_stream_in_bounded_memory() {
    use futures_util::StreamExt;
    const SIZE: usize = 256 << 20;
    const CHUNK: usize = 1 << 20;
    let a = Api::new();
    // Deterministic content, generated on the fly on both sides.
    let chunk = |i: usize| bytes::Bytes::from(vec![(i % 251) as u8; CHUNK]);
    let mut h = Algorithm::Sha256.hasher();
    for i in 0..SIZE / CHUNK {
        h.update(&chunk(i));
    }
    let d = h.finish();
    let loc = a.start_upload("large").await;
    let body = futures_util::stream::iter(
        (0..SIZE / CHUNK).map(move |i| Ok::<_, std::io::Error>(chunk(i))),
    );
    let r =
        a.c.patch(a.url(&loc))
            .body(reqwest::Body::wrap_stream(body))
            .send()
            .await
            .expect("patch");
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let r =
        a.c.put(a.url(&format!("{loc}?digest={d}")))
            .send()
            .await
            .expect("put");
    assert_eq!(r.status(), StatusCode::CREATED);
    // Pull it back as a stream, hashing as it comes.
    let r = a.get(&format!("/v2/large/blobs/{d}")).await;
    assert_eq!(r.status(), StatusCode::OK);
    let mut s = r.bytes_stream();
    let mut h = Algorithm::Sha256.hasher();
    let mut n = 0usize;
    while let Some(c) = s.next().await {
        let c = c.expect("chunk");
        n += c.len();
        h.update(&c);
    }
    assert_eq!(n, SIZE);
    assert_eq!(h.finish(), d);
    let peak = peak_rss_bytes(a.b.pid());
    assert!(
        peak < 96 << 20,
        "server peak RSS {} MiB for a 256 MiB blob",
        peak >> 20
    );
}

#[tokio::test]
async fn http2_uploads_without_lengths() {
    // Over HTTP/2 a body has no Transfer-Encoding and may have no Content-Length: the
    // final chunk of a PUT must still be seen.
    let a = Api::new();
    let h2 = Client::builder()
        .http2_prior_knowledge()
        .build()
        .expect("h2 client");
    let loc = a.start_upload("h2").await;
    let data = b"first part, then the final chunk in the PUT";
    let d = sha256(data);
    let stream = |b: &'static [u8]| {
        reqwest::Body::wrap_stream(futures_util::stream::iter(vec![Ok::<_, std::io::Error>(
            bytes::Bytes::from_static(b),
        )]))
    };
    let r = h2
        .patch(a.url(&loc))
        .body(stream(&data[..10]))
        .send()
        .await
        .expect("patch");
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let r = h2
        .put(a.url(&format!("{loc}?digest={d}")))
        .body(stream(&data[10..]))
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(
        a.get(&format!("/v2/h2/blobs/{d}"))
            .await
            .bytes()
            .await
            .expect("b")
            .as_ref(),
        data
    );
}

#[tokio::test]
async fn index_of_blobs_is_accepted() {
    // BuildKit's registry cache pushes an index whose entries are layer blobs.
    let a = Api::new();
    let layer = a.push_blob("cache", b"cached layer").await;
    let cfg = a.push_blob("cache", b"{\"cacheconfig\":true}").await;
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer.as_str(), "size": 12},
            {"mediaType": "application/vnd.buildkit.cacheconfig.v0", "digest": cfg.as_str(), "size": 20},
        ],
    }))
    .expect("json");
    let r = a
        .put_manifest("cache", "buildcache", OCI_INDEX, &index)
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    // An entry that is neither a manifest nor a blob of the repository is still refused.
    let bad = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": "application/vnd.buildkit.cacheconfig.v0", "digest": sha256(b"zz").as_str(), "size": 2}],
    }))
    .expect("json");
    expect_error(
        a.put_manifest("cache", "bad", OCI_INDEX, &bad).await,
        400,
        "MANIFEST_BLOB_UNKNOWN",
    )
    .await;
}

#[tokio::test]
async fn refused_chunk_keeps_the_upload_resumable() {
    // A chunk refused mid-way (too large here) is cut back, and the next chunk continues
    // from the same state: the finished blob has the right digest.
    let a = Api::with("limits:\n  blobsize: 100KiB\n");
    let loc = a.start_upload("keep").await;
    let first = vec![7u8; 60_000];
    let r =
        a.c.patch(a.url(&loc))
            .body(first.clone())
            .send()
            .await
            .expect("patch");
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let r =
        a.c.patch(a.url(&loc))
            .body(vec![8u8; 60_000])
            .send()
            .await
            .expect("patch");
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let r =
        a.c.patch(a.url(&loc))
            .header("content-range", "0-9")
            .body(vec![9u8; 10])
            .send()
            .await
            .expect("patch");
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    let second = vec![9u8; 30_000];
    let r =
        a.c.patch(a.url(&loc))
            .body(second.clone())
            .send()
            .await
            .expect("patch");
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let mut all = first;
    all.extend_from_slice(&second);
    let r =
        a.c.put(a.url(&format!("{loc}?digest={}", sha256(&all))))
            .send()
            .await
            .expect("put");
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = a.get(&format!("/v2/keep/blobs/{}", sha256(&all))).await;
    assert_eq!(r.bytes().await.expect("b").as_ref(), &all[..]);
    // A garbage Range is ignored: the whole blob is served.
    let r = a
        .req(Method::GET, &format!("/v2/keep/blobs/{}", sha256(&all)))
        .header("range", "bytes=abc")
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn url_prefix_host_and_absolute_urls() {
    // http.prefix: the API moves under the prefix, and handed-out URLs include it.
    let a = Api::with_config("version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: DATA\nhttp:\n  addr: 127.0.0.1:0\n  prefix: /registry/\n");
    assert_eq!(a.get("/registry/v2/").await.status(), StatusCode::OK);
    assert_eq!(a.get("/v2/").await.status(), StatusCode::NOT_FOUND);
    let r = a
        .req(Method::POST, "/registry/v2/p/blobs/uploads/")
        .send()
        .await
        .expect("post");
    let loc = hdr(&r, "location").expect("location").to_string();
    assert!(loc.starts_with("/registry/v2/p/blobs/uploads/"), "{loc}");
    let d = sha256(b"x");
    let r =
        a.c.put(a.url(&format!("{loc}?digest={d}")))
            .body("x")
            .send()
            .await
            .expect("put");
    assert_eq!(
        hdr(&r, "location"),
        Some(format!("/registry/v2/p/blobs/{d}").as_str())
    );

    // http.host: absolute URLs on that host.
    let a = Api::with_config("version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: DATA\nhttp:\n  addr: 127.0.0.1:0\n  host: https://registry.example.com/\n");
    let r = a
        .req(Method::POST, "/v2/h/blobs/uploads/")
        .send()
        .await
        .expect("post");
    assert!(hdr(&r, "location")
        .expect("location")
        .starts_with("https://registry.example.com/v2/h/blobs/uploads/"));

    // relativeurls: false -> absolute URLs from the request, honouring a proxy's headers.
    let a = Api::with_config("version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: DATA\nhttp:\n  addr: 127.0.0.1:0\n  relativeurls: false\n");
    let r = a
        .req(Method::POST, "/v2/abs/blobs/uploads/")
        .send()
        .await
        .expect("post");
    let want = format!("http://{}/v2/abs/blobs/uploads/", a.b.host);
    assert!(hdr(&r, "location").expect("location").starts_with(&want));
    let r = a
        .req(Method::POST, "/v2/abs/blobs/uploads/")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "proxy.example:8443, inner")
        .send()
        .await
        .expect("post");
    assert!(hdr(&r, "location")
        .expect("location")
        .starts_with("https://proxy.example:8443/v2/abs/blobs/uploads/"));
}

#[tokio::test]
async fn layer_url_validation() {
    let a = Api::with_config(
        "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: DATA\nhttp:\n  addr: 127.0.0.1:0\nvalidation:\n  manifests:\n    urls:\n      allow:\n        - ^https://layers\\.example\\.com/\n      deny:\n        - ^https://layers\\.example\\.com/secret/\n",
    );
    let cfg = a.push_blob("v", b"{}").await;
    let with_url = |url: &str| {
        serde_json::to_vec(&json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfg.as_str(), "size": 2},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
                        "digest": sha256(url.as_bytes()).as_str(), "size": 10, "urls": [url]}],
        }))
        .expect("json")
    };
    let ok = with_url("https://layers.example.com/base.tar.gz");
    assert_eq!(
        a.put_manifest("v", "ok", OCI_MANIFEST, &ok).await.status(),
        StatusCode::CREATED
    );
    for bad in [
        "https://elsewhere.example.org/x",
        "https://layers.example.com/secret/x",
    ] {
        let r = a
            .put_manifest("v", "bad", OCI_MANIFEST, &with_url(bad))
            .await;
        expect_error(r, 400, "MANIFEST_INVALID").await;
    }
}

/// A layer's media type never exempts it from being pushed: only `urls` does, and those
/// are validated on every descriptor, the config's included.
#[tokio::test]
async fn foreign_media_types_without_urls_are_checked() {
    let a = Api::with_config(
        "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: DATA\nhttp:\n  addr: 127.0.0.1:0\nvalidation:\n  manifests:\n    urls:\n      allow:\n        - ^https://layers\\.example\\.com/\n",
    );
    let cfg = a.push_blob("f", b"{}").await;
    let config = json!({"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfg.as_str(), "size": 2});
    let put = |config: Value, layers: Value| {
        let body = serde_json::to_vec(&json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": layers,
        }))
        .expect("json");
        let a = &a;
        async move { a.put_manifest("f", "t", OCI_MANIFEST, &body).await }
    };
    // A non-distributable layer with a made-up digest and no URLs.
    let made_up = sha256(b"nowhere");
    let r = put(
        config.clone(),
        json!([{"mediaType": "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
                "digest": made_up.as_str(), "size": 7}]),
    )
    .await;
    expect_error(r, 400, "MANIFEST_BLOB_UNKNOWN").await;
    // Docker's foreign layer type without URLs.
    let r = put(
        config.clone(),
        json!([{"mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
                "digest": made_up.as_str(), "size": 7}]),
    )
    .await;
    expect_error(r, 400, "MANIFEST_BLOB_UNKNOWN").await;
    // A config whose media type says "foreign" is still a blob the registry must have.
    let r = put(
        json!({"mediaType": "application/x-foreign-config", "digest": made_up.as_str(), "size": 7}),
        json!([]),
    )
    .await;
    expect_error(r, 400, "MANIFEST_BLOB_UNKNOWN").await;
    // URLs on the config are validated too, and a config with URLs is still required.
    let r = put(
        json!({"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfg.as_str(), "size": 2,
               "urls": ["https://elsewhere.example.org/c"]}),
        json!([]),
    )
    .await;
    expect_error(r, 400, "MANIFEST_INVALID").await;
    // Not http(s), or with a fragment: refused as Distribution does.
    for url in [
        "ftp://layers.example.com/l",
        "https://layers.example.com/l#x",
    ] {
        let r = put(
            config.clone(),
            json!([{"mediaType": "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
                    "digest": made_up.as_str(), "size": 7, "urls": [url]}]),
        )
        .await;
        expect_error(r, 400, "MANIFEST_INVALID").await;
    }
    // Nothing was stored by any of these; a layer with an allowed URL is accepted.
    assert_eq!(
        a.get("/v2/f/manifests/t").await.status(),
        StatusCode::NOT_FOUND
    );
    let r = put(
        config,
        json!([{"mediaType": "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
                "digest": made_up.as_str(), "size": 7, "urls": ["https://layers.example.com/l"]}]),
    )
    .await;
    assert_eq!(r.status(), StatusCode::CREATED);
}

/// Push `n` artifacts of type `application/x.note` referring to a fresh image in `repo`,
/// each with `pad` bytes of annotation; returns the subject's digest and the artifacts'
/// digests in order.
async fn push_notes(a: &Api, repo: &str, n: usize, pad: usize) -> (Digest, Vec<String>) {
    let (subject, sd) = a.push_image(repo, "v1", "m").await;
    let empty = a.push_blob(repo, b"{}").await;
    let mut want = Vec::new();
    for i in 0..n {
        let m = serde_json::to_vec(&json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": "application/x.note",
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty.as_str(), "size": 2},
            "layers": [],
            "subject": {"mediaType": OCI_MANIFEST, "digest": sd.as_str(), "size": subject.len()},
            "annotations": {"n": i.to_string(), "pad": "x".repeat(pad)},
        }))
        .expect("json");
        let d = sha256(&m);
        assert_eq!(
            a.put_manifest(repo, d.as_str(), OCI_MANIFEST, &m)
                .await
                .status(),
            StatusCode::CREATED
        );
        want.push(d.to_string());
    }
    want.sort();
    (sd, want)
}

/// Follow a referrers listing's `Link` pages from `path`: each page's
/// `OCI-Filters-Applied` header and body.
async fn referrer_pages(a: &Api, path: String) -> Vec<(Option<String>, Vec<u8>)> {
    let mut pages = Vec::new();
    let mut next = Some(path);
    while let Some(path) = next.take() {
        let r = a.get(&path).await;
        assert_eq!(r.status(), StatusCode::OK);
        next = hdr(&r, "link").map(|l| l[1..l.find('>').expect(">")].to_string());
        let filters = hdr(&r, "oci-filters-applied").map(str::to_string);
        pages.push((filters, r.bytes().await.expect("body").to_vec()));
    }
    pages
}

/// The digests a referrers page lists.
fn listed(body: &[u8]) -> Vec<String> {
    let v: Value = serde_json::from_slice(body).expect("json");
    v["manifests"]
        .as_array()
        .expect("manifests")
        .iter()
        .map(|m| m["digest"].as_str().expect("digest").to_string())
        .collect()
}

/// Each referrer can carry large annotations: a page is bounded by bytes too (the
/// manifest size limit, as a client reads the page as an index), not only by count.
#[tokio::test]
async fn referrers_pages_are_bounded_by_bytes() {
    let a = Api::with("limits:\n  manifestsize: 8192\n");
    let (sd, want) = push_notes(&a, "fat", 6, 3000).await;
    let pages = referrer_pages(&a, format!("/v2/fat/referrers/{sd}")).await;
    assert_eq!(pages.len(), 3, "two entries of about 3 KB per 8 KiB page");
    let mut got = Vec::new();
    for (_, body) in &pages {
        assert!(body.len() <= 8192, "a page of {} bytes", body.len());
        let page = listed(body);
        assert!(!page.is_empty());
        got.extend(page);
    }
    assert_eq!(got, want);
}

#[tokio::test]
async fn referrers_paginate_with_link() {
    let a = Api::with("limits:\n  pageentries: 2\n");
    let (sd, want) = push_notes(&a, "many", 5, 0).await;
    let pages = referrer_pages(
        &a,
        format!("/v2/many/referrers/{sd}?artifactType=application/x.note"),
    )
    .await;
    assert_eq!(pages.len(), 3);
    let mut got = Vec::new();
    for (filters, body) in &pages {
        assert_eq!(filters.as_deref(), Some("artifactType"));
        let page = listed(body);
        assert!(page.len() <= 2);
        got.extend(page);
    }
    assert_eq!(got, want);
}
