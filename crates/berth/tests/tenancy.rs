//! Multi-tenancy (`auth.berth`) against the real binary: the token flow and its
//! challenges, the permission matrix of every role (and non-members, anonymous) on a
//! private and a public project, both through tokens and Basic credentials sent straight
//! to `/v2/`, with expectations taken from the same table the server decides with
//! (`berth::auth::rbac`); token forgery and revocation; catalog filtering and mounts;
//! the push network allowlist; Docker's login/push/pull through the token flow; the
//! CLI's account commands.

mod common;

use berth::auth::rbac::{Permission, Role};
use common::push::{image_manifest, sha256, Registry, OCI_MANIFEST};
use common::{berth_bin, require_tool, run, Berth};
use reqwest::{Client, Method, StatusCode};
use serde_json::Value;
use std::io::Write as _;
use std::process::{Command, Stdio};

const ADMIN_PASSWORD: &str = "Harbor12345";
const USER_PASSWORD: &str = "Passw0rdUser";

/// A server with `auth.berth`; `extra` holds more `auth.berth` keys (4-space indented).
fn start(extra: &str) -> Berth {
    Berth::start_with(&format!(
        "auth:\n  berth:\n    adminpassword: {ADMIN_PASSWORD}\n{extra}"
    ))
}

/// `berth ARGS... CONFIG` with `stdin`, which must succeed; its standard output.
fn cli(b: &Berth, args: &[&str], stdin: Option<&str>) -> String {
    b.cli(args, stdin)
}

fn add_user(b: &Berth, name: &str) {
    cli(b, &["user", "add", name], Some(USER_PASSWORD));
}

/// How a request authenticates.
#[derive(Clone, Copy, Debug)]
enum Cred<'a> {
    Anonymous,
    /// Basic credentials straight to `/v2/`.
    Basic(&'a str, &'a str),
    /// A token from `/service/token` (with these credentials, or anonymous).
    Token(Option<(&'a str, &'a str)>),
}

/// A token for `scopes` from the token endpoint.
async fn token(c: &Client, b: &Berth, creds: Option<(&str, &str)>, scopes: &[String]) -> String {
    let mut url = format!("{}/service/token?service=berth-registry", b.url);
    for s in scopes {
        url.push_str("&scope=");
        url.push_str(&urlencode(s));
    }
    let mut r = c.get(url);
    if let Some((u, p)) = creds {
        r = r.basic_auth(u, Some(p));
    }
    let resp = r.send().await.expect("token request");
    assert_eq!(
        resp.status(),
        StatusCode::OK,
        "token for {creds:?} {scopes:?}"
    );
    let v: Value = resp.json().await.expect("token json");
    assert_eq!(v["token"], v["access_token"]);
    assert!(v["expires_in"].as_u64().unwrap_or(0) >= 60, "{v}");
    assert!(v["issued_at"].as_str().is_some(), "{v}");
    v["token"].as_str().expect("token").to_string()
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Send `method path` with `cred` (fetching a token for `scope` first when asked).
async fn send(
    c: &Client,
    b: &Berth,
    cred: Cred<'_>,
    scope: &str,
    method: Method,
    path: &str,
    body: Option<(&str, Vec<u8>)>,
) -> reqwest::Response {
    let mut r = c.request(method, format!("{}{path}", b.url));
    match cred {
        Cred::Anonymous => {}
        Cred::Basic(u, p) => r = r.basic_auth(u, Some(p)),
        Cred::Token(creds) => {
            let t = token(c, b, creds, &[scope.to_string()]).await;
            r = r.bearer_auth(t);
        }
    }
    if let Some((ct, bytes)) = body {
        r = r.header("content-type", ct).body(bytes);
    }
    r.send().await.expect("send")
}

/// Whether a request was allowed; a refusal must be 401 with a Bearer challenge for an
/// anonymous caller and 403 DENIED for an authenticated one.
async fn allowed(resp: reqwest::Response, anonymous: bool, what: &str) -> bool {
    let status = resp.status();
    if status.is_success() {
        return true;
    }
    if anonymous {
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}");
        let challenge = resp.headers()["www-authenticate"]
            .to_str()
            .expect("ascii")
            .to_string();
        assert!(
            challenge.starts_with("Bearer realm="),
            "{what}: {challenge}"
        );
    } else {
        assert_eq!(status, StatusCode::FORBIDDEN, "{what}");
        let v: Value = resp.json().await.expect("json");
        assert_eq!(v["errors"][0]["code"], "DENIED", "{what}: {v}");
    }
    false
}

/// An image unique to `salt`: (config, layer, manifest bytes, manifest digest).
fn image(salt: &str) -> (Vec<u8>, Vec<u8>, Vec<u8>, oci::Digest) {
    let config = format!("{{\"salt\":\"{salt}\"}}").into_bytes();
    let layer = format!("layer of {salt}").into_bytes();
    let manifest = serde_json::to_vec(&image_manifest(&config, &layer)).expect("json");
    let d = sha256(&manifest);
    (config, layer, manifest, d)
}

/// Push an image as the administrator (Basic straight to /v2/).
async fn admin_push(b: &Berth, repo: &str, tag: &str, salt: &str) -> oci::Digest {
    let reg = Registry::new(&b.url).with_auth("admin", ADMIN_PASSWORD);
    let (config, layer, manifest, d) = image(salt);
    reg.push_blob(repo, &config).await;
    reg.push_blob(repo, &layer).await;
    let r = reg.put_manifest(repo, tag, OCI_MANIFEST, &manifest).await;
    assert_eq!(r.status(), StatusCode::CREATED, "admin push {repo}:{tag}");
    d
}

/// The client's push of an image: both blobs, then the manifest. Whether it was allowed
/// (a refusal at the first step ends it).
async fn try_push(
    c: &Client,
    b: &Berth,
    cred: Cred<'_>,
    repo: &str,
    tag: &str,
    salt: &str,
) -> bool {
    let anonymous = matches!(cred, Cred::Anonymous | Cred::Token(None));
    let scope = format!("repository:{repo}:pull,push");
    let (config, layer, manifest, _) = image(salt);
    for blob in [config, layer] {
        let d = sha256(&blob);
        let r = send(
            c,
            b,
            cred,
            &scope,
            Method::POST,
            &format!("/v2/{repo}/blobs/uploads/?digest={d}"),
            Some(("application/octet-stream", blob)),
        )
        .await;
        if !allowed(r, anonymous, &format!("push blob to {repo} as {cred:?}")).await {
            return false;
        }
    }
    let r = send(
        c,
        b,
        cred,
        &scope,
        Method::PUT,
        &format!("/v2/{repo}/manifests/{tag}"),
        Some((OCI_MANIFEST, manifest)),
    )
    .await;
    allowed(
        r,
        anonymous,
        &format!("push manifest to {repo} as {cred:?}"),
    )
    .await
}

/// Every role, a non-member and anonymous, on a private and a public project, through
/// Basic credentials and through tokens: pull, tag list, push, delete, catalog.
#[tokio::test]
async fn permission_matrix_follows_the_role_table() {
    let b = start("");
    cli(&b, &["project", "create", "priv"], None);
    cli(&b, &["project", "create", "pub", "--public"], None);
    add_user(&b, "outsider");
    for role in Role::ALL {
        let user = format!("u-{}", role.name().to_lowercase());
        add_user(&b, &user);
        for project in ["priv", "pub"] {
            cli(
                &b,
                &[
                    "project",
                    "add-member",
                    project,
                    &user,
                    "--role",
                    &role.id().to_string(),
                ],
                None,
            );
        }
    }
    for project in ["priv", "pub"] {
        admin_push(&b, &format!("{project}/app"), "v1", project).await;
    }
    let c = Client::new();
    let mut principals: Vec<(Option<Role>, String)> = Role::ALL
        .iter()
        .map(|r| (Some(*r), format!("u-{}", r.name().to_lowercase())))
        .collect();
    principals.push((None, "outsider".into()));
    principals.push((None, String::new()));
    let mut checked = 0;
    for (role, user) in &principals {
        for (i, via_token) in [false, true].into_iter().enumerate() {
            let cred = match (user.is_empty(), via_token) {
                (true, false) => Cred::Anonymous,
                (true, true) => Cred::Token(None),
                (false, false) => Cred::Basic(user, USER_PASSWORD),
                (false, true) => Cred::Token(Some((user, USER_PASSWORD))),
            };
            let anonymous = user.is_empty();
            for project in ["priv", "pub"] {
                let public = project == "pub";
                let may = |p: Permission| {
                    (public && matches!(p, Permission::Pull | Permission::Read))
                        || role.is_some_and(|r| r.allows(p))
                };
                let repo = format!("{project}/app");
                let what = format!("{user:?} via {cred:?} on {project}");
                // Pull and tag list.
                let r = send(
                    &c,
                    &b,
                    cred,
                    &format!("repository:{repo}:pull"),
                    Method::GET,
                    &format!("/v2/{repo}/manifests/v1"),
                    None,
                )
                .await;
                assert_eq!(
                    allowed(r, anonymous, &format!("pull {what}")).await,
                    may(Permission::Pull),
                    "pull {what}"
                );
                let r = send(
                    &c,
                    &b,
                    cred,
                    &format!("repository:{repo}:pull"),
                    Method::GET,
                    &format!("/v2/{repo}/tags/list"),
                    None,
                )
                .await;
                assert_eq!(
                    allowed(r, anonymous, &format!("tags {what}")).await,
                    may(Permission::Pull),
                    "tags {what}"
                );
                // Push.
                let salt = format!("{user}-{project}-{i}");
                let pushed =
                    try_push(&c, &b, cred, &repo, &format!("t-{i}-{}", user.len()), &salt).await;
                assert_eq!(pushed, may(Permission::Push), "push {what}");
                // Delete a manifest the administrator pushed for this check.
                let d = admin_push(
                    &b,
                    &repo,
                    &format!("del-{i}-{}", user.len()),
                    &format!("del-{salt}"),
                )
                .await;
                let r = send(
                    &c,
                    &b,
                    cred,
                    &format!("repository:{repo}:delete"),
                    Method::DELETE,
                    &format!("/v2/{repo}/manifests/{d}"),
                    None,
                )
                .await;
                assert_eq!(
                    allowed(r, anonymous, &format!("delete {what}")).await,
                    may(Permission::DeleteArtifact),
                    "delete {what}"
                );
                checked += 4;
            }
            // The catalog lists what the caller may pull, nothing else.
            if !anonymous {
                let r = send(
                    &c,
                    &b,
                    cred,
                    "registry:catalog:*",
                    Method::GET,
                    "/v2/_catalog",
                    None,
                )
                .await;
                assert_eq!(r.status(), StatusCode::OK, "catalog as {user}");
                let v: Value = r.json().await.expect("json");
                let repos: Vec<&str> = v["repositories"]
                    .as_array()
                    .expect("list")
                    .iter()
                    .filter_map(Value::as_str)
                    .collect();
                assert!(repos.contains(&"pub/app"), "{user}: {repos:?}");
                assert_eq!(
                    repos.contains(&"priv/app"),
                    role.is_some(),
                    "{user}: {repos:?}"
                );
            } else {
                let r = send(
                    &c,
                    &b,
                    cred,
                    "registry:catalog:*",
                    Method::GET,
                    "/v2/_catalog",
                    None,
                )
                .await;
                assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "anonymous catalog");
            }
        }
    }
    assert!(checked >= 7 * 2 * 2 * 4, "{checked}");
}

/// The challenges name Berth's token endpoint and the refused scope; the endpoint
/// grants only what the caller holds (the intersection), anonymous included.
#[tokio::test]
async fn token_flow_challenges_and_intersection() {
    let b = start("");
    cli(&b, &["project", "create", "team"], None);
    add_user(&b, "alice");
    cli(
        &b,
        &["project", "add-member", "team", "alice", "--role", "guest"],
        None,
    );
    admin_push(&b, "team/app", "v1", "x").await;
    let c = Client::new();
    let r = c.get(format!("{}/v2/", b.url)).send().await.expect("send");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        r.headers()["www-authenticate"],
        format!(
            "Bearer realm=\"{}/service/token\",service=\"berth-registry\"",
            b.url
        )
        .as_str()
    );
    let r = c
        .get(format!("{}/v2/team/app/manifests/v1", b.url))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let challenge = r.headers()["www-authenticate"]
        .to_str()
        .expect("ascii")
        .to_string();
    assert!(
        challenge.contains("scope=\"repository:team/app:pull\""),
        "{challenge}"
    );

    // A guest asking for pull and push gets pull only; a catalog scope too.
    let t = token(
        &c,
        &b,
        Some(("alice", USER_PASSWORD)),
        &[
            "repository:team/app:pull,push,delete".into(),
            "registry:catalog:*".into(),
        ],
    )
    .await;
    let claims = claims_of(&t);
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["aud"], "berth-registry");
    assert_eq!(claims["iss"], "berth-token-issuer");
    assert_eq!(
        claims["access"],
        serde_json::json!([{"type":"repository","name":"team/app","actions":["pull"]},{"type":"registry","name":"catalog","actions":["*"]}])
    );
    let r = c
        .get(format!("{}/v2/team/app/manifests/v1", b.url))
        .bearer_auth(&t)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::OK);
    // The token does not open another repository (alice may pull there: the challenge
    // says which token to get), nor push (which no token would let her: denied).
    let r = c
        .get(format!("{}/v2/team/other/tags/list", b.url))
        .bearer_auth(&t)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        r.headers()["www-authenticate"],
        format!(
            "Bearer realm=\"{}/service/token\",service=\"berth-registry\",scope=\"repository:team/other:pull\",error=\"insufficient_scope\"",
            b.url
        )
        .as_str()
    );
    let r = c
        .post(format!("{}/v2/team/app/blobs/uploads/", b.url))
        .bearer_auth(&t)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // Anonymous tokens carry no access to a private project.
    let t = token(&c, &b, None, &["repository:team/app:pull".into()]).await;
    assert_eq!(claims_of(&t)["access"], serde_json::json!([]));
    // Wrong password: 401, and no token.
    let r = c
        .get(format!(
            "{}/service/token?scope=repository:team/app:pull",
            b.url
        ))
        .basic_auth("alice", Some("wrong"))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // The OAuth2 form, with a refresh token that works in place of the password.
    let r = c
        .post(format!("{}/service/token", b.url))
        .form(&[
            ("grant_type", "password"),
            ("username", "alice"),
            ("password", USER_PASSWORD),
            ("service", "berth-registry"),
            ("scope", "repository:team/app:pull"),
            ("client_id", "test"),
            ("access_type", "offline"),
        ])
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.expect("json");
    let refresh = v["refresh_token"]
        .as_str()
        .expect("refresh token")
        .to_string();
    let r = c
        .post(format!("{}/service/token", b.url))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh.as_str()),
            ("service", "berth-registry"),
            ("scope", "repository:team/app:pull"),
        ])
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.expect("json");
    assert_eq!(
        claims_of(v["access_token"].as_str().expect("token"))["access"][0]["actions"],
        serde_json::json!(["pull"])
    );
    // An access token is not a refresh token.
    let access = v["access_token"].as_str().expect("token").to_string();
    let r = c
        .post(format!("{}/service/token", b.url))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", access.as_str()),
        ])
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

/// The claims of a JWT (unverified: the test only reads them).
fn claims_of(token: &str) -> Value {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).expect("payload");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64");
    serde_json::from_slice(&bytes).expect("json")
}

/// Forged, tampered, unsigned and foreign tokens are refused with `invalid_token`; a
/// deleted user's token stops working.
#[tokio::test]
async fn forged_and_revoked_tokens_are_refused() {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let b = start("");
    cli(&b, &["project", "create", "team"], None);
    add_user(&b, "bob");
    cli(
        &b,
        &["project", "add-member", "team", "bob", "--role", "guest"],
        None,
    );
    admin_push(&b, "team/app", "v1", "x").await;
    let c = Client::new();
    let t = token(
        &c,
        &b,
        Some(("bob", USER_PASSWORD)),
        &["repository:team/app:pull".into()],
    )
    .await;
    let get = |tok: String| {
        let c = c.clone();
        let url = format!("{}/v2/team/app/manifests/v1", b.url);
        async move { c.get(url).bearer_auth(tok).send().await.expect("send") }
    };
    assert_eq!(get(t.clone()).await.status(), StatusCode::OK);
    let parts: Vec<&str> = t.split('.').collect();
    // Scope escalation by editing the claims.
    let mut claims = claims_of(&t);
    claims["access"][0]["actions"] = serde_json::json!(["pull", "push", "delete"]);
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        b64.encode(claims.to_string()),
        parts[2]
    );
    // alg none.
    let none = format!(
        "{}.{}.",
        b64.encode(r#"{"alg":"none","typ":"JWT"}"#),
        parts[1]
    );
    // A signature of another server's key (a second Berth).
    let other = start("");
    let foreign = token(
        &c,
        &other,
        Some(("admin", ADMIN_PASSWORD)),
        &["repository:team/app:pull".into()],
    )
    .await;
    // Garbage.
    for (what, bad) in [
        ("forged", forged),
        ("none", none),
        ("foreign", foreign),
        ("garbage", "abc.def.ghi".to_string()),
    ] {
        let r = get(bad).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{what}");
        let challenge = r.headers()["www-authenticate"]
            .to_str()
            .expect("ascii")
            .to_string();
        assert!(
            challenge.contains("error=\"invalid_token\""),
            "{what}: {challenge}"
        );
    }
    // The user is deleted: the token stops working (within the subject cache's seconds).
    cli(&b, &["user", "delete", "bob"], None);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let s = get(t.clone()).await.status();
        if s == StatusCode::UNAUTHORIZED {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a deleted user's token still works: {s}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// A token narrower than its holder's rights (one kept from another request, as
/// clients that cache a token per kind of request do) gets 401 `insufficient_scope`
/// naming what to ask for, and the token that answer leads to works; what no token
/// would allow stays 403 DENIED. A token lacking only a mount source its holder may pull
/// is challenged for it (the scope lists both repositories), so the mount happens.
#[tokio::test]
async fn narrow_tokens_are_challenged_for_what_their_holder_may_get() {
    let b = start("");
    cli(&b, &["project", "create", "team"], None);
    cli(&b, &["project", "create", "secret"], None);
    for (user, role) in [("maya", "maintainer"), ("gus", "guest")] {
        add_user(&b, user);
        cli(
            &b,
            &["project", "add-member", "team", user, "--role", role],
            None,
        );
    }
    let c = Client::new();
    let maya = Some(("maya", USER_PASSWORD));
    let challenge = |r: &reqwest::Response| {
        r.headers()["www-authenticate"]
            .to_str()
            .expect("ascii")
            .to_string()
    };
    let expected = |scope: &str| {
        format!(
            "Bearer realm=\"{}/service/token\",service=\"berth-registry\",scope=\"{scope}\",error=\"insufficient_scope\"",
            b.url
        )
    };

    // An upload started with a push token, cancelled with the delete token kept from a
    // blob delete: challenged for pull,push; the token it leads to cancels.
    let push = token(&c, &b, maya, &["repository:team/app:pull,push".into()]).await;
    let r = c
        .post(format!("{}/v2/team/app/blobs/uploads/", b.url))
        .bearer_auth(&push)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let location = r.headers()["location"].to_str().expect("ascii").to_string();
    let delete = token(&c, &b, maya, &["repository:team/app:delete".into()]).await;
    let r = c
        .delete(format!("{}{location}", b.url))
        .bearer_auth(&delete)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(challenge(&r), expected("repository:team/app:pull,push"));
    let renewed = token(&c, &b, maya, &["repository:team/app:pull,push".into()]).await;
    let r = c
        .delete(format!("{}{location}", b.url))
        .bearer_auth(&renewed)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);

    // A guest's token lacks push, and so would any other: denied, no challenge.
    let gus = token(
        &c,
        &b,
        Some(("gus", USER_PASSWORD)),
        &["repository:team/app:pull,push".into()],
    )
    .await;
    let r = c
        .post(format!("{}/v2/team/app/blobs/uploads/", b.url))
        .bearer_auth(&gus)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    // Mounts: from a repository maya may pull, her push token is challenged for both
    // scopes and the token of that challenge mounts (201); from one she may not pull,
    // the upload just starts (202).
    admin_push(&b, "team/base", "v1", "shared").await;
    admin_push(&b, "secret/app", "v1", "hidden").await;
    let (shared, _, _, _) = image("shared");
    let (hidden, _, _, _) = image("hidden");
    let mount = |d: oci::Digest, from: &str| {
        format!("{}/v2/team/app/blobs/uploads/?mount={d}&from={from}", b.url)
    };
    let r = c
        .post(mount(sha256(&hidden), "secret/app"))
        .bearer_auth(&push)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::ACCEPTED, "no pull on secret/app");
    let r = c
        .post(mount(sha256(&shared), "team/base"))
        .bearer_auth(&push)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let scopes = "repository:team/app:pull,push repository:team/base:pull";
    assert_eq!(challenge(&r), expected(scopes));
    let both = token(
        &c,
        &b,
        maya,
        &scopes.split(' ').map(str::to_string).collect::<Vec<_>>(),
    )
    .await;
    let r = c
        .post(mount(sha256(&shared), "team/base"))
        .bearer_auth(&both)
        .send()
        .await
        .expect("send");
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "the mount with both scopes"
    );
}

/// A mount reads only a repository the caller may pull, and never without `from`: both
/// start an ordinary upload (202) instead of linking the blob (201).
#[tokio::test]
async fn mounts_need_pull_on_their_source() {
    let b = start("");
    for p in ["secret", "mine"] {
        cli(&b, &["project", "create", p], None);
    }
    add_user(&b, "carol");
    cli(
        &b,
        &[
            "project",
            "add-member",
            "mine",
            "carol",
            "--role",
            "developer",
        ],
        None,
    );
    admin_push(&b, "secret/app", "v1", "hidden").await;
    let (config, _, _, _) = image("hidden");
    let d = sha256(&config);
    let reg = Registry::new(&b.url).with_auth("carol", USER_PASSWORD);
    for query in [format!("mount={d}&from=secret/app"), format!("mount={d}")] {
        let r = reg
            .req(
                Method::POST,
                &format!("/v2/mine/app/blobs/uploads/?{query}"),
            )
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), StatusCode::ACCEPTED, "{query}");
        let r = reg
            .req(Method::HEAD, &format!("/v2/mine/app/blobs/{d}"))
            .send()
            .await
            .expect("send");
        assert_eq!(
            r.status(),
            StatusCode::NOT_FOUND,
            "{query}: the blob must not be linked"
        );
    }
    // From a repository she may pull, the mount happens.
    admin_push(&b, "mine/base", "v1", "shared").await;
    let (config, _, _, _) = image("shared");
    let d = sha256(&config);
    let r = reg
        .req(
            Method::POST,
            &format!("/v2/mine/app/blobs/uploads/?mount={d}&from=mine/base"),
        )
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::CREATED);
}

/// `pushnetworks`: pushes from 127.0.0.1 are refused with a message naming the setting,
/// pushes from 127.0.0.2 work, pulls work from both.
#[tokio::test]
async fn push_networks_allowlist() {
    let b = start("    pushnetworks: [127.0.0.2/32]\n");
    cli(&b, &["project", "create", "team"], None);
    let port = b.host.rsplit(':').next().expect("port");
    let from = |ip: &str| {
        Client::builder()
            .local_address(ip.parse::<std::net::IpAddr>().expect("ip"))
            .build()
            .expect("client")
    };
    let one = Registry::with_client(from("127.0.0.1"), &format!("http://127.0.0.1:{port}"))
        .with_auth("admin", ADMIN_PASSWORD);
    let r = one
        .req(Method::POST, "/v2/team/app/blobs/uploads/")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let v: Value = r.json().await.expect("json");
    assert!(
        v["errors"][0]["message"]
            .as_str()
            .unwrap_or("")
            .contains("pushnetworks"),
        "{v}"
    );
    let two = Registry::with_client(from("127.0.0.2"), &format!("http://127.0.0.1:{port}"))
        .with_auth("admin", ADMIN_PASSWORD);
    let (config, layer, manifest, _) = image("net");
    two.push_blob("team/app", &config).await;
    two.push_blob("team/app", &layer).await;
    assert_eq!(
        two.put_manifest("team/app", "v1", OCI_MANIFEST, &manifest)
            .await
            .status(),
        StatusCode::CREATED
    );
    let r = one
        .req(Method::GET, "/v2/team/app/manifests/v1")
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::OK);
    let r = one
        .req(Method::DELETE, "/v2/team/app/manifests/v1")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
}

/// A project's own `pushnetworks` (set by the CLI and the API): only its clients push
/// there, while other projects take pushes from anywhere.
#[tokio::test]
async fn per_project_push_networks() {
    let b = start("");
    cli(
        &b,
        &[
            "project",
            "create",
            "guarded",
            "--push-networks",
            "127.0.0.2/32",
        ],
        None,
    );
    cli(&b, &["project", "create", "open"], None);
    let port = b.host.rsplit(':').next().expect("port").to_string();
    let from = |ip: &str| {
        let c = Client::builder()
            .local_address(ip.parse::<std::net::IpAddr>().expect("ip"))
            .build()
            .expect("client");
        Registry::with_client(c, &format!("http://127.0.0.1:{port}"))
            .with_auth("admin", ADMIN_PASSWORD)
    };
    let (one, two) = (from("127.0.0.1"), from("127.0.0.2"));
    let r = one
        .req(Method::POST, "/v2/guarded/app/blobs/uploads/")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let v: Value = r.json().await.expect("json");
    assert!(
        v["errors"][0]["message"]
            .as_str()
            .unwrap_or("")
            .contains("project guarded"),
        "{v}"
    );
    let r = two
        .req(Method::POST, "/v2/guarded/app/blobs/uploads/")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let r = one
        .req(Method::POST, "/v2/open/app/blobs/uploads/")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    // Through the API: the allowlist is shown, changed, and checked.
    let c = Client::new();
    let api = |m: Method, path: &str| {
        c.request(m, format!("{}/api/v2.0{path}", b.url))
            .basic_auth("admin", Some(ADMIN_PASSWORD))
    };
    let p: Value = api(Method::GET, "/projects/guarded")
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(p["metadata"]["pushnetworks"], "127.0.0.2/32");
    let r = api(Method::PUT, "/projects/open")
        .json(&serde_json::json!({"metadata": {"pushnetworks": "nonsense"}}))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = api(Method::PUT, "/projects/open")
        .json(&serde_json::json!({"metadata": {"pushnetworks": "127.0.0.2"}}))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::OK);
    let r = one
        .req(Method::POST, "/v2/open/app/blobs/uploads/")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
}

/// Repositories need a project: a one-component name is refused, a missing project is
/// refused unless `createprojectsonpush` makes it (with the pusher as project admin).
#[tokio::test]
async fn projects_come_first() {
    let b = start("");
    add_user(&b, "dave");
    let reg = Registry::new(&b.url).with_auth("dave", USER_PASSWORD);
    for (repo, why) in [
        ("loose", "start with a project"),
        ("nowhere/app", "project nowhere does not exist"),
    ] {
        let r = reg
            .req(Method::POST, &format!("/v2/{repo}/blobs/uploads/"))
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{repo}");
        let v: Value = r.json().await.expect("json");
        assert!(
            v["errors"][0]["message"]
                .as_str()
                .unwrap_or("")
                .contains(why),
            "{repo}: {v}"
        );
    }
    let b = start("    createprojectsonpush: true\n");
    add_user(&b, "dave");
    let reg = Registry::new(&b.url).with_auth("dave", USER_PASSWORD);
    let (config, layer, manifest, _) = image("auto");
    reg.push_blob("daves/app", &config).await;
    reg.push_blob("daves/app", &layer).await;
    assert_eq!(
        reg.put_manifest("daves/app", "v1", OCI_MANIFEST, &manifest)
            .await
            .status(),
        StatusCode::CREATED
    );
    let listed = cli(&b, &["project", "list"], None);
    assert!(listed.contains("daves\tprivate"), "{listed}");
    // Through the token flow too: the token grants the push, the push makes the project.
    let c = Client::new();
    assert!(
        try_push(
            &c,
            &b,
            Cred::Token(Some(("dave", USER_PASSWORD))),
            "tokens/app",
            "v1",
            "via-token"
        )
        .await
    );
    let listed = cli(&b, &["project", "list"], None);
    assert!(listed.contains("tokens\tprivate"), "{listed}");
    // Another user may not push there.
    add_user(&b, "erin");
    let other = Registry::new(&b.url).with_auth("erin", USER_PASSWORD);
    let r = other
        .req(Method::POST, "/v2/daves/app/blobs/uploads/")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
}

/// `docker login` against Berth and a push/pull through the token flow; a guest's push
/// is denied, the guest pulls.
#[test]
fn docker_through_the_token_flow() {
    require_tool("docker");
    let b = start("");
    cli(&b, &["project", "create", "team"], None);
    add_user(&b, "dev");
    add_user(&b, "visitor");
    cli(
        &b,
        &[
            "project",
            "add-member",
            "team",
            "dev",
            "--role",
            "developer",
        ],
        None,
    );
    cli(
        &b,
        &[
            "project",
            "add-member",
            "team",
            "visitor",
            "--role",
            "guest",
        ],
        None,
    );
    let tmp = tempfile::tempdir().expect("tempdir");
    let docker = |config: &str, args: &[&str]| {
        Command::new("docker")
            .arg("--config")
            .arg(tmp.path().join(config))
            .args(args)
            .output()
            .expect("docker")
    };
    let login = |config: &str, user: &str| {
        let mut child = Command::new("docker")
            .arg("--config")
            .arg(tmp.path().join(config))
            .args(["login", &b.host, "-u", user, "--password-stdin"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("docker login");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(USER_PASSWORD.as_bytes())
            .expect("pw");
        let out = child.wait_with_output().expect("login");
        assert!(
            out.status.success(),
            "docker login {user}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    login("dev", "dev");
    login("visitor", "visitor");
    // A tiny image from a one-file rootfs (another file, another image).
    let rootfs = tmp.path().join("rootfs.tar");
    let write_rootfs = |content: String| {
        let mut tar = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(content.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(&mut h, "hello.txt", content.as_bytes())
            .expect("tar");
        std::fs::write(&rootfs, tar.into_inner().expect("tar")).expect("rootfs");
    };
    write_rootfs(format!("tenancy {}\n", b.host));
    let reference = format!("{}/team/app:v1", b.host);
    let out = docker(
        "dev",
        &["import", rootfs.to_str().expect("utf-8"), &reference],
    );
    assert!(
        out.status.success(),
        "import: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = docker("dev", &["push", &reference]);
    assert!(
        out.status.success(),
        "developer push: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let guest_ref = format!("{}/team/app:guest", b.host);
    run(Command::new("docker").args(["tag", &reference, &guest_ref]));
    let out = docker("visitor", &["push", &guest_ref]);
    assert!(!out.status.success(), "a guest pushed");
    let text = String::from_utf8_lossy(&out.stderr).to_lowercase()
        + &String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(text.contains("denied"), "guest push: {text}");
    let _ = docker("dev", &["rmi", "-f", &reference, &guest_ref]);
    let out = docker("visitor", &["pull", &reference]);
    assert!(
        out.status.success(),
        "guest pull: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = docker("dev", &["rmi", "-f", &reference]);

    // An immutable tag rule on v*: docker's push of another image to team/app:v1 is
    // refused with the reason shown, and the tag keeps its image.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let served_v1 = || {
        rt.block_on(async {
            let r = Registry::new(&b.url)
                .with_auth("admin", ADMIN_PASSWORD)
                .req(Method::HEAD, "/v2/team/app/manifests/v1")
                .send()
                .await
                .expect("head");
            assert_eq!(r.status(), StatusCode::OK);
            r.headers()["docker-content-digest"]
                .to_str()
                .expect("digest")
                .to_string()
        })
    };
    let before = served_v1();
    let rule = serde_json::json!({
        "tag_selectors": [{"kind": "doublestar", "decoration": "matches", "pattern": "v*"}],
        "scope_selectors": {"repository": [{"kind": "doublestar", "decoration": "repoMatches", "pattern": "**"}]},
    });
    let status = rt.block_on(async {
        Client::new()
            .post(format!(
                "{}/api/v2.0/projects/team/immutabletagrules",
                b.url
            ))
            .basic_auth("admin", Some(ADMIN_PASSWORD))
            .json(&rule)
            .send()
            .await
            .expect("add rule")
            .status()
    });
    assert_eq!(status, StatusCode::CREATED);
    write_rootfs(format!("tenancy, another build {}\n", b.host));
    let out = docker(
        "dev",
        &["import", rootfs.to_str().expect("utf-8"), &reference],
    );
    assert!(
        out.status.success(),
        "import: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = docker("dev", &["push", &reference]);
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "an immutable tag was moved: {text}");
    assert!(
        text.contains("denied") && text.contains("immutable"),
        "docker shows why: {text}"
    );
    assert_eq!(served_v1(), before);

    // A storage quota the project already uses up: docker's push of new layers is
    // refused, saying so.
    let status = rt.block_on(async {
        let c = Client::new();
        let project: Value = c
            .get(format!("{}/api/v2.0/projects/team", b.url))
            .header("x-is-resource-name", "true")
            .basic_auth("admin", Some(ADMIN_PASSWORD))
            .send()
            .await
            .expect("project")
            .json()
            .await
            .expect("json");
        c.put(format!(
            "{}/api/v2.0/quotas/{}",
            b.url, project["project_id"]
        ))
        .basic_auth("admin", Some(ADMIN_PASSWORD))
        .json(&serde_json::json!({"hard": {"storage": 1}}))
        .send()
        .await
        .expect("quota")
        .status()
    });
    assert_eq!(status, StatusCode::OK);
    let v2 = format!("{}/team/app:v2", b.host);
    write_rootfs(format!("tenancy, a third build {}\n", b.host));
    let out = docker("dev", &["import", rootfs.to_str().expect("utf-8"), &v2]);
    assert!(
        out.status.success(),
        "import: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = docker("dev", &["push", &v2]);
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "pushed past the quota: {text}");
    assert!(
        text.contains("denied") && text.contains("storage quota exceeded"),
        "docker shows why: {text}"
    );
    let _ = docker("dev", &["rmi", "-f", &reference, &v2]);
}

/// The CLI's account commands: users, passwords, projects, robots, the signing
/// certificate; a robot's secret works for the registry.
#[tokio::test]
async fn cli_manages_accounts() {
    let b = start("");
    add_user(&b, "frank");
    let users = cli(&b, &["user", "list"], None);
    assert!(
        users.contains("\tadmin\tadmin\tlocal") && users.contains("\tfrank\tuser\tlocal"),
        "{users}"
    );
    cli(&b, &["user", "passwd", "frank"], Some("NewPassw0rd"));
    let c = Client::new();
    let r = c
        .get(format!("{}/v2/", b.url))
        .basic_auth("frank", Some("NewPassw0rd"))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::OK);
    let r = c
        .get(format!("{}/v2/", b.url))
        .basic_auth("frank", Some(USER_PASSWORD))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // Weak passwords are refused with the rule.
    let out = Command::new(berth_bin())
        .args(["user", "add", "weak"])
        .arg(b.config_path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut ch| {
            ch.stdin
                .take()
                .expect("stdin")
                .write_all(b"short\n")
                .expect("pw");
            ch.wait_with_output()
        })
        .expect("berth");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("8 to 256 characters"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    cli(&b, &["project", "create", "ci", "--owner", "frank"], None);
    let robot = cli(
        &b,
        &[
            "robot",
            "create",
            "builder",
            "--project",
            "ci",
            "--access",
            "repository:pull,repository:push",
        ],
        None,
    );
    let name = robot
        .lines()
        .find_map(|l| l.strip_prefix("name: "))
        .expect("name")
        .to_string();
    let secret = robot
        .lines()
        .find_map(|l| l.strip_prefix("secret: "))
        .expect("secret")
        .to_string();
    assert_eq!(name, "robot$ci+builder");
    let reg = Registry::new(&b.url).with_auth(&name, &secret);
    let (config, layer, manifest, _) = image("robot");
    reg.push_blob("ci/app", &config).await;
    reg.push_blob("ci/app", &layer).await;
    assert_eq!(
        reg.put_manifest("ci/app", "v1", OCI_MANIFEST, &manifest)
            .await
            .status(),
        StatusCode::CREATED
    );
    // It cannot delete (not in its list), nor reach another project.
    let r = reg
        .req(Method::DELETE, "/v2/ci/app/manifests/v1")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    cli(&b, &["project", "create", "other"], None);
    let r = reg
        .req(Method::POST, "/v2/other/app/blobs/uploads/")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let cert = cli(&b, &["token", "certificate"], None);
    assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"), "{cert}");
    // Rotation: old tokens still verify, new ones carry the new key.
    let old = token(
        &c,
        &b,
        Some(("admin", ADMIN_PASSWORD)),
        &["repository:ci/app:pull".into()],
    )
    .await;
    cli(&b, &["token", "rotate"], None);
    let r = c
        .get(format!("{}/v2/ci/app/tags/list", b.url))
        .bearer_auth(&old)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::OK, "a token of the retired key");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let new = token(
            &c,
            &b,
            Some(("admin", ADMIN_PASSWORD)),
            &["repository:ci/app:pull".into()],
        )
        .await;
        let r = c
            .get(format!("{}/v2/ci/app/tags/list", b.url))
            .bearer_auth(&new)
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), StatusCode::OK, "a token of the new key");
        if header_kid(&new) != header_kid(&old) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the server still signs with the retired key"
        );
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
}

fn header_kid(token: &str) -> String {
    use base64::Engine as _;
    let h = token.split('.').next().expect("header");
    let v: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(h)
            .expect("b64"),
    )
    .expect("json");
    v["kid"].as_str().unwrap_or_default().to_string()
}

/// oras (the ORAS project's Python client, from PyPI) pushes an artifact as a developer
/// (Basic) and pulls it as a guest through the token flow.
#[test]
fn oras_through_the_token_flow() {
    let b = start("");
    cli(&b, &["project", "create", "artifacts"], None);
    add_user(&b, "writer");
    add_user(&b, "reader");
    cli(
        &b,
        &[
            "project",
            "add-member",
            "artifacts",
            "writer",
            "--role",
            "developer",
        ],
        None,
    );
    cli(
        &b,
        &[
            "project",
            "add-member",
            "artifacts",
            "reader",
            "--role",
            "guest",
        ],
        None,
    );
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/harbor/oras_check.py");
    let out = Command::new(common::python())
        .arg(&script)
        .args([
            b.host.as_str(),
            "artifacts/notes",
            "writer",
            USER_PASSWORD,
            "reader",
            USER_PASSWORD,
        ])
        .output()
        .expect("python");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && text.contains("oras: all checks passed"),
        "oras check failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // What oras pushed is an artifact Berth lists like any other.
    let tags = Command::new("curl")
        .args(["-s", "-u", &format!("reader:{USER_PASSWORD}")])
        .arg(format!("{}/v2/artifacts/notes/tags/list", b.url))
        .output()
        .expect("curl");
    assert!(
        String::from_utf8_lossy(&tags.stdout).contains("\"v1\""),
        "{}",
        String::from_utf8_lossy(&tags.stdout)
    );
}
