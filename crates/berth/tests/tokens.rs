//! Token authentication against the real binary, both ways round. `auth.token`: Berth
//! verifies the JWTs of an external issuer the test makes with the `openssl` command (a
//! `kid` naming a `rootcertbundle` key by its libtrust id, an `x5c` chain ending in the
//! bundle, a `jwks` key), and refuses every token it must not trust or accept (a key of
//! the token's own, `alg: none`, wrong audience or issuer, expired, not yet valid, an
//! algorithm `signingalgorithms` leaves out) with Distribution's challenges; bad
//! settings stop start-up. And Berth as the issuer: Debian's `docker-registry`
//! (Distribution 2.8) trusting `berth token certificate`, driven by docker and skopeo
//! with Berth's users and roles.

mod common;

use common::jwt::{self, Alg};
use common::layout::{layer_tar_gz, plain_tar, Layout};
use common::pki::{make_ca, make_cert, Key};
use common::push::{image_manifest, sha256, OCI_CONFIG, OCI_LAYER_GZIP, OCI_MANIFEST};
use common::registry2::Registry2;
use common::tools::{empty_auth_file, skopeo};
use common::{require_tool, run, Berth};
use reqwest::{Client, Method, Response, StatusCode};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const REALM: &str = "https://auth.test.example/token";
const SERVICE: &str = "registry.test.example";
const ISSUER: &str = "auth.test.example";

/// The external issuer's keys, made with openssl in a temporary directory: an RSA CA
/// (`ca.key`/`ca.crt`, the `rootcertbundle`), a P-256 signing certificate it issued
/// (`leaf.key`/`leaf.crt`), and a self-signed P-256 certificate nobody trusts
/// (`rogue/ca.key`/`rogue/ca.crt`).
struct Issuer {
    dir: tempfile::TempDir,
}

impl Issuer {
    fn new() -> Issuer {
        let dir = tempfile::tempdir().expect("tempdir");
        make_ca(dir.path(), Key::Rsa2048, "Test Token CA");
        make_cert(
            dir.path(),
            Key::EcP256,
            "leaf",
            "token-signer",
            "keyUsage=critical,digitalSignature\n",
        );
        let rogue = dir.path().join("rogue");
        std::fs::create_dir(&rogue).expect("rogue dir");
        make_ca(&rogue, Key::EcP256, "Test Token CA");
        Issuer { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The `rootcertbundle`: the CA certificate only.
    fn bundle(&self) -> PathBuf {
        self.path("ca.crt")
    }

    /// RS256 by the CA's own key, found by its libtrust `kid` (as Distribution 2.8 and
    /// Harbor sign).
    fn kid_token(&self, claims: &Value) -> String {
        let header =
            json!({"typ": "JWT", "alg": "RS256", "kid": jwt::libtrust_kid(&self.bundle())});
        jwt::sign(&self.path("ca.key"), Alg::Rs256, &header, claims)
    }

    /// ES256 by the leaf's key, with `x5c: [leaf]`: trusted through the chain to the CA.
    fn x5c_token(&self, claims: &Value) -> String {
        let header =
            json!({"typ": "JWT", "alg": "ES256", "x5c": [jwt::x5c_entry(&self.path("leaf.crt"))]});
        jwt::sign(&self.path("leaf.key"), Alg::Es256, &header, claims)
    }
}

/// Claims from the test issuer for `sub`, valid now for five minutes, granting `access`.
fn claims(access: Value) -> Value {
    let now = jwt::now();
    json!({
        "iss": ISSUER,
        "sub": "tester",
        "aud": SERVICE,
        "exp": now + 300,
        "nbf": now - 5,
        "iat": now - 5,
        "jti": format!("jti-{now}-{}", access.to_string().len()),
        "access": access,
    })
}

/// One `access` entry.
fn grant(repo: &str, actions: &[&str]) -> Value {
    json!({"type": "repository", "name": repo, "actions": actions})
}

/// A complete config with `auth.token` (issuer, service, realm, then `keys`, 4-space
/// indented).
fn token_config(keys: &str) -> String {
    format!(
        "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: DATA\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:0\nauth:\n  token:\n    realm: {REALM}\n    service: {SERVICE}\n    issuer: {ISSUER}\n{keys}"
    )
}

fn start(issuer: &Issuer, extra: &str) -> Berth {
    Berth::start_with_config(&token_config(&format!(
        "    rootcertbundle: {}\n{extra}",
        issuer.bundle().display()
    )))
}

async fn send(b: &Berth, method: Method, path: &str, token: Option<&str>) -> Response {
    let mut r = Client::new().request(method, format!("{}{path}", b.url));
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    r.send().await.expect("send")
}

fn challenge_of(r: &Response) -> String {
    r.headers()
        .get("www-authenticate")
        .unwrap_or_else(|| panic!("no WWW-Authenticate on {}", r.status()))
        .to_str()
        .expect("ascii")
        .to_string()
}

/// A 401 with `error="invalid_token"` and the spec's UNAUTHORIZED envelope.
async fn assert_invalid_token(r: Response, what: &str) {
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{what}");
    let challenge = challenge_of(&r);
    assert!(
        challenge.starts_with(&format!("Bearer realm=\"{REALM}\",service=\"{SERVICE}\""))
            && challenge.ends_with(",error=\"invalid_token\""),
        "{what}: {challenge}"
    );
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["errors"][0]["code"], "UNAUTHORIZED", "{what}: {v}");
}

/// An image unique to `salt`: (config, layer, manifest bytes).
fn image(salt: &str) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let config = format!("{{\"salt\":\"{salt}\"}}").into_bytes();
    let layer = format!("layer of {salt}").into_bytes();
    let manifest = serde_json::to_vec(&image_manifest(&config, &layer)).expect("json");
    (config, layer, manifest)
}

/// Push both blobs and the manifest of `image(salt)` as `repo:tag` with `token`.
async fn push_with(b: &Berth, token: &str, repo: &str, tag: &str, salt: &str) -> Vec<u8> {
    let c = Client::new();
    let (config, layer, manifest) = image(salt);
    for blob in [config, layer] {
        let r = c
            .post(format!(
                "{}/v2/{repo}/blobs/uploads/?digest={}",
                b.url,
                sha256(&blob)
            ))
            .bearer_auth(token)
            .header("content-type", "application/octet-stream")
            .body(blob)
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), StatusCode::CREATED, "blob push to {repo}");
    }
    let r = c
        .put(format!("{}/v2/{repo}/manifests/{tag}", b.url))
        .bearer_auth(token)
        .header("content-type", OCI_MANIFEST)
        .body(manifest.clone())
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::CREATED, "manifest push to {repo}");
    manifest
}

/// Pull `repo:tag` with `token` and check the manifest and both blobs are `salt`'s.
async fn pull_with(b: &Berth, token: &str, repo: &str, tag: &str, salt: &str) {
    let c = Client::new();
    let (config, layer, manifest) = image(salt);
    let r = c
        .get(format!("{}/v2/{repo}/manifests/{tag}", b.url))
        .bearer_auth(token)
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::OK, "manifest pull of {repo}:{tag}");
    assert_eq!(r.bytes().await.expect("body").as_ref(), manifest.as_slice());
    for blob in [config, layer] {
        let r = c
            .get(format!("{}/v2/{repo}/blobs/{}", b.url, sha256(&blob)))
            .bearer_auth(token)
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), StatusCode::OK, "blob pull from {repo}");
        assert_eq!(r.bytes().await.expect("body").as_ref(), blob.as_slice());
    }
}

/// The libtrust id the test computes with openssl is the shape Distribution writes.
#[test]
fn libtrust_kid_has_distributions_shape() {
    let issuer = Issuer::new();
    let kid = jwt::libtrust_kid(&issuer.bundle());
    assert_eq!(kid.len(), 59, "{kid}");
    let groups: Vec<&str> = kid.split(':').collect();
    assert_eq!(groups.len(), 12, "{kid}");
    assert!(
        groups.iter().all(|g| g.len() == 4
            && g.bytes()
                .all(|c| c.is_ascii_uppercase() || (b'2'..=b'7').contains(&c))),
        "{kid}"
    );
    assert_ne!(kid, jwt::libtrust_kid(&issuer.path("leaf.crt")));
    // ECDSA signatures come out of openssl as DER and go into the JWT as r || s.
    let raw = jwt::ecdsa_der_to_raw(
        &[0x30, 0x08, 0x02, 0x02, 0x00, 0x81, 0x02, 0x02, 0x01, 0x02],
        32,
    );
    assert_eq!(raw.len(), 64);
    assert_eq!((raw[31], raw[62], raw[63]), (0x81, 0x01, 0x02));
}

/// Tokens whose key Berth trusts (libtrust `kid` of the bundle's certificate, `x5c`
/// chain to it) push and pull; `*` grants every action; `/v2/` needs only a valid token.
#[tokio::test]
async fn trusted_tokens_push_and_pull() {
    let issuer = Issuer::new();
    let b = start(&issuer, "");

    // Without a token: the challenge names the issuer, no error.
    let r = send(&b, Method::GET, "/v2/", None).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        challenge_of(&r),
        format!("Bearer realm=\"{REALM}\",service=\"{SERVICE}\"")
    );
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["errors"][0]["code"], "UNAUTHORIZED", "{v}");

    let empty = issuer.kid_token(&claims(json!([])));
    assert_eq!(
        send(&b, Method::GET, "/v2/", Some(&empty)).await.status(),
        StatusCode::OK,
        "a valid token with no access opens /v2/"
    );

    // kid: push a blob and a manifest, read them back.
    let push = issuer.kid_token(&claims(json!([grant("team/app", &["pull", "push"])])));
    push_with(&b, &push, "team/app", "v1", "kid").await;
    pull_with(&b, &push, "team/app", "v1", "kid").await;

    // x5c [leaf] signed by the CA: pull what the kid token pushed, and push.
    let x5c = issuer.x5c_token(&claims(json!([grant("team/app", &["pull", "push"])])));
    pull_with(&b, &x5c, "team/app", "v1", "kid").await;
    push_with(&b, &x5c, "team/app", "v2", "x5c").await;
    pull_with(&b, &push, "team/app", "v2", "x5c").await;

    // `*` holds delete too; pull,push does not.
    let (_, _, manifest) = image("x5c");
    let path = format!("/v2/team/app/manifests/{}", sha256(&manifest));
    let r = send(&b, Method::DELETE, &path, Some(&push)).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(
        challenge_of(&r)
            .ends_with(",scope=\"repository:team/app:delete\",error=\"insufficient_scope\""),
        "{}",
        challenge_of(&r)
    );
    let all = issuer.kid_token(&claims(json!([grant("team/app", &["*"])])));
    assert_eq!(
        send(&b, Method::DELETE, &path, Some(&all)).await.status(),
        StatusCode::ACCEPTED
    );
    assert_eq!(
        send(&b, Method::GET, &path, Some(&all)).await.status(),
        StatusCode::NOT_FOUND
    );
}

/// Every token Berth must not accept gets 401 with `error="invalid_token"`: keys it does
/// not trust, `alg: none`, another audience or issuer, expired or not yet valid beyond
/// the 60 s leeway, a forged payload. Within the leeway the same tokens pass.
#[tokio::test]
async fn untrusted_and_invalid_tokens_are_refused() {
    let issuer = Issuer::new();
    let b = start(&issuer, "");
    let access = json!([grant("team/app", &["pull"])]);
    let path = "/v2/team/app/tags/list";
    // The reference: a good token reaches the endpoint (404: nothing pushed yet).
    let good = issuer.kid_token(&claims(access.clone()));
    let r = send(&b, Method::GET, path, Some(&good)).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND, "a good token");

    let rogue_key = issuer.path("rogue/ca.key");
    let rogue_cert = issuer.path("rogue/ca.crt");
    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = claims(access.clone());
        f(&mut c);
        c
    };
    let now = jwt::now();
    let mut refused: Vec<(&str, String)> = vec![
        (
            "x5c of a self-signed certificate not in the bundle",
            jwt::sign(
                &rogue_key,
                Alg::Es256,
                &json!({"typ": "JWT", "alg": "ES256", "x5c": [jwt::x5c_entry(&rogue_cert)]}),
                &claims(access.clone()),
            ),
        ),
        (
            "x5c to nowhere beside the trusted kid",
            jwt::sign(
                &rogue_key,
                Alg::Es256,
                &json!({"typ": "JWT", "alg": "ES256", "kid": jwt::libtrust_kid(&issuer.bundle()), "x5c": [jwt::x5c_entry(&rogue_cert)]}),
                &claims(access.clone()),
            ),
        ),
        (
            "its own key as jwk, no kid",
            jwt::sign(
                &rogue_key,
                Alg::Es256,
                &json!({"typ": "JWT", "alg": "ES256", "jwk": jwt::ec_jwk(&rogue_cert, None)}),
                &claims(access.clone()),
            ),
        ),
        (
            "the trusted kid, signed by another key",
            jwt::sign(
                &rogue_key,
                Alg::Es256,
                &json!({"typ": "JWT", "alg": "ES256", "kid": jwt::libtrust_kid(&issuer.bundle())}),
                &claims(access.clone()),
            ),
        ),
        (
            "a kid nobody configured",
            jwt::sign(
                &issuer.path("ca.key"),
                Alg::Rs256,
                &json!({"typ": "JWT", "alg": "RS256", "kid": jwt::libtrust_kid(&rogue_cert)}),
                &claims(access.clone()),
            ),
        ),
        (
            "wrong aud",
            issuer.kid_token(&with(&|c| c["aud"] = json!("elsewhere.example"))),
        ),
        (
            "wrong iss",
            issuer.kid_token(&with(&|c| c["iss"] = json!("mallory.example"))),
        ),
        (
            "expired beyond the leeway",
            issuer.kid_token(&with(&|c| {
                c["exp"] = json!(now - 90);
                c["nbf"] = json!(now - 400);
                c["iat"] = json!(now - 400);
            })),
        ),
        (
            "not valid before a minute from now",
            issuer.kid_token(&with(&|c| c["nbf"] = json!(now + 120))),
        ),
    ];
    // alg none: the good token's header and claims, no signature.
    let parts: Vec<&str> = good.split('.').collect();
    refused.push((
        "alg none",
        format!(
            "{}.{}.",
            jwt::b64url(br#"{"typ":"JWT","alg":"none"}"#),
            parts[1]
        ),
    ));
    // The good token with more access than it was signed with.
    refused.push((
        "a forged payload",
        format!(
            "{}.{}.{}",
            parts[0],
            jwt::b64url(
                claims(json!([grant("team/app", &["pull", "push"])]))
                    .to_string()
                    .as_bytes()
            ),
            parts[2]
        ),
    ));
    refused.push(("garbage", "not.a.jwt".to_string()));
    for (what, token) in &refused {
        let r = send(&b, Method::GET, path, Some(token)).await;
        assert_invalid_token(r, what).await;
    }

    // The leeway is 60 s each way: a token expired 30 s ago, or valid from 30 s on,
    // passes.
    for (what, token) in [
        (
            "expired 30 s ago",
            issuer.kid_token(&with(&|c| {
                c["exp"] = json!(now - 30);
                c["nbf"] = json!(now - 400);
            })),
        ),
        (
            "valid in 30 s",
            issuer.kid_token(&with(&|c| c["nbf"] = json!(now + 30))),
        ),
        (
            "aud as a list holding the service",
            issuer.kid_token(&with(&|c| c["aud"] = json!(["other", SERVICE]))),
        ),
    ] {
        let r = send(&b, Method::GET, path, Some(&token)).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{what}");
    }
}

/// A valid token that lacks the scope: 401 with `error="insufficient_scope"` and a
/// challenge of exactly the configured realm and service and the scope the request
/// needed, as Distribution writes it; the body lists the access records.
#[tokio::test]
async fn insufficient_scope_challenges_name_the_scope() {
    let issuer = Issuer::new();
    let b = start(&issuer, "");
    let pull_other = issuer.kid_token(&claims(json!([grant("other/app", &["pull"])])));
    let pull_team = issuer.x5c_token(&claims(json!([grant("team/app", &["pull"])])));
    let cases = [
        (
            Method::GET,
            "/v2/team/app/manifests/v1",
            &pull_other,
            "repository:team/app:pull",
        ),
        (
            Method::POST,
            "/v2/team/app/blobs/uploads/",
            &pull_team,
            "repository:team/app:pull,push",
        ),
        (
            Method::DELETE,
            "/v2/team/app/manifests/v1",
            &pull_team,
            "repository:team/app:delete",
        ),
        (
            Method::GET,
            "/v2/_catalog",
            &pull_team,
            "registry:catalog:*",
        ),
    ];
    for (method, path, token, scope) in cases {
        let r = send(&b, method.clone(), path, Some(token)).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{method} {path}");
        assert_eq!(
            challenge_of(&r),
            format!("Bearer realm=\"{REALM}\",service=\"{SERVICE}\",scope=\"{scope}\",error=\"insufficient_scope\""),
            "{method} {path}"
        );
        let v: Value = r.json().await.expect("json");
        assert_eq!(v["errors"][0]["code"], "UNAUTHORIZED", "{v}");
        assert!(v["errors"][0]["detail"].is_array(), "{v}");
    }
    // Without a token the same requests get the challenge with the scope and no error.
    let r = send(&b, Method::POST, "/v2/team/app/blobs/uploads/", None).await;
    assert_eq!(
        challenge_of(&r),
        format!(
            "Bearer realm=\"{REALM}\",service=\"{SERVICE}\",scope=\"repository:team/app:pull,push\""
        )
    );
    // What the token does hold works.
    let r = send(&b, Method::GET, "/v2/team/app/tags/list", Some(&pull_team)).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

/// `signingalgorithms: [ES256]`: an RS256 token of a trusted key is refused, an ES256
/// one passes.
#[tokio::test]
async fn signing_algorithms_limit_what_verifies() {
    let issuer = Issuer::new();
    let b = start(&issuer, "    signingalgorithms: [ES256]\n");
    let access = json!([grant("team/app", &["pull"])]);
    let rs = issuer.kid_token(&claims(access.clone()));
    assert_invalid_token(
        send(&b, Method::GET, "/v2/team/app/tags/list", Some(&rs)).await,
        "RS256 with only ES256 allowed",
    )
    .await;
    let es = issuer.x5c_token(&claims(access));
    let r = send(&b, Method::GET, "/v2/team/app/tags/list", Some(&es)).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND, "ES256 passes");
}

/// `jwks` alone (no bundle): an RSA key and an EC key as JWKs with their `kid`s verify
/// tokens naming them; another kid, or the right kid on another key's signature, does
/// not.
#[tokio::test]
async fn jwks_keys_verify_by_kid() {
    let issuer = Issuer::new();
    let dir = issuer.dir.path();
    run(Command::new("openssl")
        .current_dir(dir)
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ])
        .args(["-out", "jwks.key"]));
    let jwks = dir.join("jwks.json");
    std::fs::write(
        &jwks,
        json!({"keys": [
            jwt::rsa_jwk(&dir.join("jwks.key"), "rsa-key-1"),
            jwt::ec_jwk(&issuer.path("leaf.crt"), Some("ec-key-1")),
        ]})
        .to_string(),
    )
    .expect("jwks");
    let b = Berth::start_with_config(&token_config(&format!("    jwks: {}\n", jwks.display())));
    let access = json!([grant("team/app", &["pull", "push"])]);
    let rsa = jwt::sign(
        &dir.join("jwks.key"),
        Alg::Rs256,
        &json!({"typ": "JWT", "alg": "RS256", "kid": "rsa-key-1"}),
        &claims(access.clone()),
    );
    push_with(&b, &rsa, "team/app", "v1", "jwks").await;
    let ec = jwt::sign(
        &issuer.path("leaf.key"),
        Alg::Es256,
        &json!({"typ": "JWT", "alg": "ES256", "kid": "ec-key-1"}),
        &claims(access.clone()),
    );
    pull_with(&b, &ec, "team/app", "v1", "jwks").await;
    for (what, header, key, alg) in [
        (
            "an unknown kid",
            json!({"typ": "JWT", "alg": "RS256", "kid": "rsa-key-2"}),
            dir.join("jwks.key"),
            Alg::Rs256,
        ),
        (
            "the RSA kid on the CA key's signature",
            json!({"typ": "JWT", "alg": "RS256", "kid": "rsa-key-1"}),
            dir.join("ca.key"),
            Alg::Rs256,
        ),
        (
            "the bundle's libtrust kid (no bundle configured)",
            json!({"typ": "JWT", "alg": "RS256", "kid": jwt::libtrust_kid(&issuer.bundle())}),
            dir.join("ca.key"),
            Alg::Rs256,
        ),
    ] {
        let t = jwt::sign(&key, alg, &header, &claims(access.clone()));
        assert_invalid_token(
            send(&b, Method::GET, "/v2/team/app/tags/list", Some(&t)).await,
            what,
        )
        .await;
    }
}

/// `autoredirect: true`: the realm is `/auth/token` on the scheme and host the request
/// came to (no `realm` needed), whatever name the client used.
#[tokio::test]
async fn autoredirect_builds_the_realm_from_the_request() {
    let issuer = Issuer::new();
    let b = Berth::start_with_config(&format!(
        "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: DATA\nhttp:\n  addr: 127.0.0.1:0\nauth:\n  token:\n    autoredirect: true\n    service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: {}\n",
        issuer.bundle().display()
    ));
    let port = b.host.rsplit(':').next().expect("port");
    for (url, host) in [
        (b.url.clone(), b.host.clone()),
        (
            format!("http://localhost:{port}"),
            format!("localhost:{port}"),
        ),
    ] {
        let r = Client::new()
            .get(format!("{url}/v2/team/app/tags/list"))
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            challenge_of(&r),
            format!("Bearer realm=\"http://{host}/auth/token\",service=\"{SERVICE}\",scope=\"repository:team/app:pull\""),
        );
    }
    // Behind a TLS proxy the forwarded scheme and host count.
    let r = Client::new()
        .get(format!("{}/v2/", b.url))
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "registry.example.com")
        .send()
        .await
        .expect("send");
    assert_eq!(
        challenge_of(&r),
        format!("Bearer realm=\"https://registry.example.com/auth/token\",service=\"{SERVICE}\"")
    );
    // Tokens verify as without it.
    let t = issuer.kid_token(&claims(json!([])));
    assert_eq!(
        send(&b, Method::GET, "/v2/", Some(&t)).await.status(),
        StatusCode::OK
    );
}

/// Settings that cannot verify a token safely stop start-up with one `error:` line
/// naming the key.
#[test]
fn bad_token_settings_stop_startup() {
    let issuer = Issuer::new();
    let garbage = issuer.path("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").expect("garbage");
    let missing = issuer.path("missing.pem");
    let bundle = format!("    rootcertbundle: {}\n", issuer.bundle().display());
    let cases = [
        (
            "no trusted keys",
            String::new(),
            "auth.token.rootcertbundle",
        ),
        (
            "HS256",
            format!("{bundle}    signingalgorithms: [HS256]\n"),
            "auth.token.signingalgorithms",
        ),
        (
            "none",
            format!("{bundle}    signingalgorithms: [none]\n"),
            "auth.token.signingalgorithms",
        ),
        (
            "one good, one HS512",
            format!("{bundle}    signingalgorithms: [ES256, HS512]\n"),
            "auth.token.signingalgorithms",
        ),
        (
            "an unreadable bundle",
            format!("    rootcertbundle: {}\n", missing.display()),
            "auth.token.rootcertbundle",
        ),
        (
            "a bundle without certificates",
            format!("    rootcertbundle: {}\n", garbage.display()),
            "auth.token.rootcertbundle",
        ),
        (
            "an unreadable jwks",
            format!("    jwks: {}\n", missing.display()),
            "auth.token.jwks",
        ),
        (
            "a jwks that is not JSON",
            format!("    jwks: {}\n", garbage.display()),
            "auth.token.jwks",
        ),
    ];
    for (what, keys, key) in cases {
        let config = token_config(&keys);
        let stderr = Berth::fails_to_start(&config);
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{what}: one line expected, got:\n{stderr}");
        assert!(lines[0].starts_with("error: "), "{what}: {stderr}");
        assert!(lines[0].contains(key), "{what}: {key} not named:\n{stderr}");
    }
    // And the required strings.
    for key in ["realm", "service", "issuer"] {
        let config = token_config(&bundle)
            .lines()
            .filter(|l| !l.trim_start().starts_with(&format!("{key}:")))
            .collect::<Vec<_>>()
            .join("\n");
        let stderr = Berth::fails_to_start(&config);
        assert!(
            stderr.starts_with("error: ") && stderr.contains(&format!("auth.token.{key}")),
            "without {key}: {stderr}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Berth as the token issuer of Distribution 2.8
// ---------------------------------------------------------------------------------------

const ADMIN_PASSWORD: &str = "Harbor12345";
const USER_PASSWORD: &str = "Passw0rdUser";

/// A tiny OCI layout image (`v1`) unique to `salt`; its manifest digest.
fn layout_image(dir: &Path, salt: &str) -> String {
    let mut layout = Layout::create(dir);
    let (layer, diff_id) = layer_tar_gz(&[("hello.txt", format!("hello {salt}\n").as_bytes())]);
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["/hello.txt"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id.as_str()]},
    });
    let config = layout.put_blob(OCI_CONFIG, config.to_string().as_bytes());
    let layer = layout.put_blob(OCI_LAYER_GZIP, &layer);
    let manifest = layout.put_manifest(config, vec![layer], false);
    layout.tag(&manifest, "v1");
    manifest["digest"].as_str().expect("digest").to_string()
}

fn output_text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// `docker --config DIR login HOST -u USER --password-stdin`.
fn docker_login(config: &Path, host: &str, user: &str, password: &str) -> Output {
    let mut child = Command::new("docker")
        .arg("--config")
        .arg(config)
        .args(["login", host, "-u", user, "--password-stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("docker login");
    std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), password.as_bytes())
        .expect("password");
    child.wait_with_output().expect("docker login")
}

/// Debian's docker-registry (Distribution 2.8.2) with `auth.token` trusting
/// `berth token certificate`: docker logs in with a Berth user through Berth's token
/// endpoint, a developer pushes and pulls, a guest pulls and is refused a push; skopeo
/// does the same with `--creds`. Berth's ES256 tokens (libtrust `kid`, `x5c`) verify in
/// Distribution 2.8.
#[test]
fn distribution_verifies_berths_tokens() {
    require_tool("docker");
    let b = Berth::start_with(&format!(
        "auth:\n  berth:\n    adminpassword: {ADMIN_PASSWORD}\n"
    ));
    b.cli(&["project", "create", "team"], None);
    for (user, role) in [("dev", "developer"), ("visitor", "guest")] {
        b.cli(&["user", "add", user], Some(USER_PASSWORD));
        b.cli(
            &["project", "add-member", "team", user, "--role", role],
            None,
        );
    }
    b.cli(&["user", "add", "outsider"], Some(USER_PASSWORD));
    let tmp = tempfile::tempdir().expect("tempdir");
    let cert = tmp.path().join("berth-token.crt");
    std::fs::write(&cert, b.cli(&["token", "certificate"], None)).expect("cert");
    let reg = Registry2::start(&format!(
        "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: DATA\nhttp:\n  addr: 127.0.0.1:0\nauth:\n  token:\n    realm: {}/service/token\n    service: berth-registry\n    issuer: berth-token-issuer\n    rootcertbundle: {}\n",
        b.url,
        cert.display()
    ));

    // docker: login with a Berth user, push as a developer, pull back.
    let dev = tmp.path().join("docker-dev");
    let visitor = tmp.path().join("docker-visitor");
    let out = docker_login(&dev, &reg.host, "dev", "wrong-Passw0rd");
    assert!(!out.status.success(), "a wrong password logged in");
    for (config, user) in [(&dev, "dev"), (&visitor, "visitor")] {
        let out = docker_login(config, &reg.host, user, USER_PASSWORD);
        assert!(
            out.status.success(),
            "docker login {user}: {}",
            output_text(&out)
        );
    }
    let docker = |config: &Path, args: &[&str]| {
        Command::new("docker")
            .arg("--config")
            .arg(config)
            .args(args)
            .output()
            .expect("docker")
    };
    let rootfs = tmp.path().join("rootfs.tar");
    let salt = format!("distribution behind {}\n", b.host);
    std::fs::write(&rootfs, plain_tar(&[("hello.txt", salt.as_bytes())])).expect("rootfs");
    let reference = format!("{}/team/app:v1", reg.host);
    let guest_ref = format!("{}/team/app:guest", reg.host);
    let out = docker(
        &dev,
        &["import", rootfs.to_str().expect("utf-8"), &reference],
    );
    assert!(out.status.success(), "import: {}", output_text(&out));
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let cleanup = || {
        let _ = docker(&dev, &["rmi", "-f", &reference, &guest_ref, &id]);
    };
    let out = docker(&dev, &["push", &reference]);
    let text = output_text(&out);
    if !out.status.success() {
        cleanup();
        panic!("developer push through docker-registry: {text}");
    }
    let pushed = text
        .lines()
        .find_map(|l| l.split("digest: ").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no digest in {text}"))
        .to_string();
    run(Command::new("docker").args(["tag", &reference, &guest_ref]));
    let out = docker(&visitor, &["push", &guest_ref]);
    let text = output_text(&out).to_lowercase();
    let _ = docker(&dev, &["rmi", "-f", &reference, &guest_ref]);
    assert!(!out.status.success(), "a guest pushed: {text}");
    assert!(
        text.contains("denied") || text.contains("unauthorized"),
        "guest push: {text}"
    );
    let out = docker(&visitor, &["pull", &reference]);
    let text = output_text(&out);
    cleanup();
    assert!(out.status.success(), "guest pull: {text}");
    assert!(text.contains(&pushed), "pulled digest {pushed}: {text}");

    // skopeo with --creds against the same registry.
    let auth = empty_auth_file(&tmp.path().join("skopeo"));
    let sk = || {
        let mut c = skopeo();
        c.env("REGISTRY_AUTH_FILE", &auth);
        c
    };
    // The guest's push was refused: no such tag.
    let out = sk()
        .args(["inspect", "--raw", "--tls-verify=false", "--creds"])
        .arg(format!("dev:{USER_PASSWORD}"))
        .arg(format!("docker://{guest_ref}"))
        .output()
        .expect("skopeo");
    assert!(!out.status.success(), "the guest's tag exists");
    assert!(
        output_text(&out).contains("manifest unknown"),
        "{}",
        output_text(&out)
    );

    let src = tmp.path().join("src");
    let digest = layout_image(&src, &b.host);
    let copy = |creds: &str, from: String, to: String| {
        sk().args(["copy", "--preserve-digests", "--src-tls-verify=false"])
            .args([
                "--dest-tls-verify=false",
                "--src-creds",
                creds,
                "--dest-creds",
                creds,
            ])
            .args([&from, &to])
            .output()
            .expect("skopeo")
    };
    let layout_ref = format!("oci:{}:v1", src.display());
    let remote = format!("docker://{}/team/skopeo:v1", reg.host);
    for user in ["visitor", "outsider"] {
        let out = copy(
            &format!("{user}:{USER_PASSWORD}"),
            layout_ref.clone(),
            remote.clone(),
        );
        assert!(!out.status.success(), "{user} pushed with skopeo");
    }
    let out = copy(&format!("dev:{USER_PASSWORD}"), layout_ref, remote.clone());
    assert!(out.status.success(), "skopeo push: {}", output_text(&out));
    let back = tmp.path().join("back");
    let out = copy(
        &format!("visitor:{USER_PASSWORD}"),
        remote.clone(),
        format!("oci:{}:v1", back.display()),
    );
    assert!(out.status.success(), "skopeo pull: {}", output_text(&out));
    let index: Value =
        serde_json::from_slice(&std::fs::read(back.join("index.json")).expect("index"))
            .expect("json");
    assert_eq!(index["manifests"][0]["digest"], digest.as_str());
    for creds in [
        format!("outsider:{USER_PASSWORD}"),
        "dev:wrong-Passw0rd".to_string(),
    ] {
        let out = copy(&creds, remote.clone(), format!("oci:{}:v2", back.display()));
        assert!(!out.status.success(), "{creds} pulled");
    }
    // Distribution saw Berth's tokens and accepted them: the registry's own log names
    // the token's subject on the requests it served.
    let log = reg.log();
    assert!(log.contains("auth.user.name=dev"), "{log}");
    assert!(log.contains("auth.user.name=visitor"), "{log}");
}
