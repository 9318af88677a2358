//! LDAP logins (`auth.berth.ldap`) against a real OpenLDAP slapd started by the test
//! (common/ldap.rs): directory users log in with Basic credentials (straight to `/v2/`
//! and at the token endpoint) and appear as LDAP users; wrong, empty and injected
//! credentials are refused; a directory group granted a role with the CLI lets its
//! members push, through Basic credentials, tokens and refresh tokens alike; StartTLS
//! and LDAPS with a test CA; an unreachable directory is an error, not a refusal.

mod common;

use common::ldap::{Slapd, ALICE_PASSWORD, BOB_PASSWORD};
use common::pki::Pki;
use common::push::{image_manifest, sha256, OCI_MANIFEST};
use common::{berth_bin, Berth};
use reqwest::{Client, StatusCode};
use serde_json::Value;
use std::process::{Command, Stdio};

const ADMIN_PASSWORD: &str = "Harbor12345";

/// A server with `auth.berth` and `ldap` keys (from [`Slapd::berth_config`]).
fn start(ldap: &str) -> Berth {
    Berth::start_with(&format!(
        "auth:\n  berth:\n    adminpassword: {ADMIN_PASSWORD}\n{ldap}"
    ))
}

/// `berth ARGS... CONFIG`, which must succeed; its standard output.
fn cli(b: &Berth, args: &[&str]) -> String {
    let out = Command::new(berth_bin())
        .args(args)
        .arg(b.config_path())
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .expect("run berth");
    assert!(
        out.status.success(),
        "berth {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The status of `GET /v2/` with Basic credentials.
async fn v2(c: &Client, b: &Berth, user: &str, password: &str) -> StatusCode {
    c.get(format!("{}/v2/", b.url))
        .basic_auth(user, Some(password))
        .send()
        .await
        .expect("send")
        .status()
}

/// A token request with Basic credentials: its status and JSON body.
async fn token(
    c: &Client,
    b: &Berth,
    user: &str,
    password: &str,
    scope: &str,
) -> (StatusCode, Value) {
    let r = c
        .get(format!(
            "{}/service/token?service=berth-registry&scope={scope}",
            b.url
        ))
        .basic_auth(user, Some(password))
        .send()
        .await
        .expect("send");
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// The claims of a JWT (unverified: the test only reads them).
fn claims_of(token: &str) -> Value {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).expect("payload");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64");
    serde_json::from_slice(&bytes).expect("claims json")
}

/// The user lines of `berth user list` (`id name admin|user source`) naming `name`.
fn users_named(b: &Berth, name: &str) -> Vec<String> {
    cli(b, &["user", "list"])
        .lines()
        .filter(|l| l.split('\t').nth(1) == Some(name))
        .map(str::to_string)
        .collect()
}

#[derive(Clone, Copy, Debug)]
enum Auth<'a> {
    Basic(&'a str, &'a str),
    Bearer(&'a str),
}

/// Push a one-layer image to `repo:tag` (both blobs, then the manifest); the status of
/// the first step that did not succeed, or of the manifest PUT.
async fn push(c: &Client, b: &Berth, auth: Auth<'_>, repo: &str, salt: &str) -> StatusCode {
    let with = |r: reqwest::RequestBuilder| match auth {
        Auth::Basic(u, p) => r.basic_auth(u, Some(p)),
        Auth::Bearer(t) => r.bearer_auth(t),
    };
    let config = format!("{{\"salt\":\"{salt}\"}}").into_bytes();
    let layer = format!("layer of {salt}").into_bytes();
    for blob in [&config, &layer] {
        let r = with(c.post(format!(
            "{}/v2/{repo}/blobs/uploads/?digest={}",
            b.url,
            sha256(blob)
        )))
        .header("content-type", "application/octet-stream")
        .body(blob.clone())
        .send()
        .await
        .expect("send");
        if r.status() != StatusCode::CREATED {
            return r.status();
        }
    }
    let manifest = serde_json::to_vec(&image_manifest(&config, &layer)).expect("json");
    with(c.put(format!("{}/v2/{repo}/manifests/{salt}", b.url)))
        .header("content-type", OCI_MANIFEST)
        .body(manifest)
        .send()
        .await
        .expect("send")
        .status()
}

#[tokio::test]
async fn directory_users_log_in_and_bad_credentials_are_refused() {
    let slapd = Slapd::start();
    let b = start(&slapd.berth_config(&slapd.url, ""));
    let c = Client::new();

    // Basic straight to /v2/, and at the token endpoint.
    assert_eq!(v2(&c, &b, "alice", ALICE_PASSWORD).await, StatusCode::OK);
    let (status, v) = token(&c, &b, "alice", ALICE_PASSWORD, "registry:catalog:*").await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(
        claims_of(v["token"].as_str().expect("token"))["sub"],
        "alice"
    );
    let alice = users_named(&b, "alice");
    assert_eq!(alice.len(), 1, "{alice:?}");
    assert!(alice[0].ends_with("\tuser\tldap"), "{alice:?}");
    // The directory's spelling of the name is the user's: no second user.
    assert_eq!(v2(&c, &b, "ALICE", ALICE_PASSWORD).await, StatusCode::OK);
    assert!(users_named(&b, "ALICE").is_empty());
    assert_eq!(users_named(&b, "alice").len(), 1);

    // Wrong passwords, unknown users, another user's password.
    for (user, password) in [
        ("alice", "wrong"),
        ("alice", BOB_PASSWORD),
        ("carol", ALICE_PASSWORD),
    ] {
        assert_eq!(
            v2(&c, &b, user, password).await,
            StatusCode::UNAUTHORIZED,
            "{user}"
        );
        let (status, _) = token(&c, &b, user, password, "registry:catalog:*").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{user}");
    }

    // Filter injection: each name is searched for as literal text (RFC 4515 escapes), so
    // none matches alice's entry, whose password is sent along.
    let searches_before = slapd.log().len();
    for name in ["*)(uid=*", "*", "al*", "alice)(|(uid=*", "*)(objectClass=*"] {
        assert_eq!(
            v2(&c, &b, name, ALICE_PASSWORD).await,
            StatusCode::UNAUTHORIZED,
            "{name}"
        );
    }
    let log = slapd.log()[searches_before..].join("\n");
    assert!(
        log.contains(r"(uid=\2A\29\28uid=\2A)") || log.contains(r"(uid=\2a\29\28uid=\2a)"),
        "slapd saw no escaped filter:\n{log}"
    );
    assert!(!log.contains("BIND dn=\"uid=alice"), "{log}");
    assert!(users_named(&b, "*)(uid=*").is_empty());

    // An empty password is refused before the directory is asked (to most servers it
    // would be an anonymous bind, and succeed).
    let connections = slapd.connections();
    assert_eq!(v2(&c, &b, "alice", "").await, StatusCode::UNAUTHORIZED);
    let (status, _) = token(&c, &b, "bob", "", "registry:catalog:*").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(slapd.connections(), connections);

    // The local administrator keeps their local password; bob logs in too.
    assert_eq!(v2(&c, &b, "admin", ADMIN_PASSWORD).await, StatusCode::OK);
    assert_eq!(v2(&c, &b, "bob", BOB_PASSWORD).await, StatusCode::OK);
    let bob = users_named(&b, "bob");
    assert!(bob.len() == 1 && bob[0].ends_with("\tldap"), "{bob:?}");
    let admin = users_named(&b, "admin");
    assert!(admin[0].ends_with("\tadmin\tlocal"), "{admin:?}");

    // Remembered logins: more requests with the same credentials ask slapd nothing.
    let connections = slapd.connections();
    for _ in 0..5 {
        assert_eq!(v2(&c, &b, "alice", ALICE_PASSWORD).await, StatusCode::OK);
    }
    assert_eq!(slapd.connections(), connections);
}

#[tokio::test]
async fn a_group_role_lets_its_members_push_with_basic_and_tokens() {
    let slapd = Slapd::start();
    let b = start(&slapd.berth_config(&slapd.url, ""));
    let c = Client::new();
    cli(&b, &["project", "create", "team"]);
    // The DN as an operator may write it: compared as the directory answers it.
    let out = cli(
        &b,
        &[
            "project",
            "add-member",
            "team",
            "--group",
            "CN=devs, ou=groups,dc=example,dc=org",
            "--role",
            "developer",
        ],
    );
    assert!(
        out.contains("group cn=devs,ou=groups,dc=example,dc=org now has role 2 in team"),
        "{out}"
    );

    // Basic straight to /v2/: alice is in devs, bob is not.
    assert_eq!(
        push(
            &c,
            &b,
            Auth::Basic("alice", ALICE_PASSWORD),
            "team/app",
            "a1"
        )
        .await,
        StatusCode::CREATED
    );
    assert_eq!(
        push(&c, &b, Auth::Basic("bob", BOB_PASSWORD), "team/app", "b1").await,
        StatusCode::FORBIDDEN
    );

    // Tokens: alice's carries push, bob's does not.
    let scope = "repository:team/app:pull,push";
    let (status, v) = token(&c, &b, "alice", ALICE_PASSWORD, scope).await;
    assert_eq!(status, StatusCode::OK);
    let alice_token = v["token"].as_str().expect("token").to_string();
    assert_eq!(
        claims_of(&alice_token)["access"][0]["actions"],
        serde_json::json!(["pull", "push"])
    );
    assert_eq!(
        push(&c, &b, Auth::Bearer(&alice_token), "team/app", "a2").await,
        StatusCode::CREATED
    );
    let (_, v) = token(&c, &b, "bob", BOB_PASSWORD, scope).await;
    let bob_token = v["token"].as_str().expect("token").to_string();
    assert_eq!(claims_of(&bob_token)["access"], serde_json::json!([]));
    assert_ne!(
        push(&c, &b, Auth::Bearer(&bob_token), "team/app", "b2").await,
        StatusCode::CREATED
    );

    // Decisions made anew from a token's subject find the group again: the catalog...
    let catalog = |t: String| {
        let c = c.clone();
        let url = format!("{}/v2/_catalog", b.url);
        async move {
            let r = c.get(url).bearer_auth(t).send().await.expect("send");
            assert_eq!(r.status(), StatusCode::OK);
            r.json::<Value>().await.expect("json")["repositories"].clone()
        }
    };
    let (_, v) = token(&c, &b, "alice", ALICE_PASSWORD, "registry:catalog:*").await;
    assert_eq!(
        catalog(v["token"].as_str().expect("token").to_string()).await,
        serde_json::json!(["team/app"])
    );
    let (_, v) = token(&c, &b, "bob", BOB_PASSWORD, "registry:catalog:*").await;
    assert_eq!(
        catalog(v["token"].as_str().expect("token").to_string()).await,
        serde_json::json!([])
    );
    // ...and a refresh token's exchange for new scopes.
    let r = c
        .post(format!("{}/service/token", b.url))
        .form(&[
            ("grant_type", "password"),
            ("username", "alice"),
            ("password", ALICE_PASSWORD),
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
    let refresh = v["refresh_token"].as_str().expect("refresh").to_string();
    let r = c
        .post(format!("{}/service/token", b.url))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh.as_str()),
            ("service", "berth-registry"),
            ("scope", "repository:team/other:pull,push"),
        ])
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.expect("json");
    let refreshed = v["access_token"].as_str().expect("token").to_string();
    assert_eq!(
        claims_of(&refreshed)["access"][0]["actions"],
        serde_json::json!(["pull", "push"])
    );
    assert_eq!(
        push(&c, &b, Auth::Bearer(&refreshed), "team/other", "a3").await,
        StatusCode::CREATED
    );

    // The user form of add-member still works.
    let out = cli(
        &b,
        &["project", "add-member", "team", "bob", "--role", "guest"],
    );
    assert!(out.contains("bob now has role 3 in team"), "{out}");
}

#[tokio::test]
async fn starttls_and_ldaps_with_a_test_ca() {
    let pki = Pki::new();
    let slapd = Slapd::start_tls(&pki);
    let ldaps = slapd.ldaps_url.clone().expect("ldaps");
    let ca = pki.path("ca.crt").display().to_string();
    let c = Client::new();

    // StartTLS on the ldap:// port, the certificate checked against the test CA.
    let b = start(&slapd.berth_config(
        &slapd.url,
        &format!("      starttls: true\n      cacert: {ca}\n"),
    ));
    assert_eq!(v2(&c, &b, "alice", ALICE_PASSWORD).await, StatusCode::OK);
    let log = slapd.log().join("\n");
    assert!(
        log.contains("STARTTLS") && log.contains("TLS established"),
        "{log}"
    );
    drop(b);

    // LDAPS, its URL given by the REGISTRY_* variable.
    let config = format!(
        "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: DATA\nhttp:\n  addr: 127.0.0.1:0\nauth:\n  berth:\n    adminpassword: {ADMIN_PASSWORD}\n{}",
        slapd.berth_config("ldap://127.0.0.1:1", &format!("      cacert: {ca}\n"))
    );
    let b = Berth::start_with_config_env(
        &config,
        &[("REGISTRY_AUTH_BERTH_LDAP_URL", ldaps.as_str())],
        "http",
    );
    assert_eq!(v2(&c, &b, "alice", ALICE_PASSWORD).await, StatusCode::OK);
    assert_eq!(v2(&c, &b, "alice", "wrong").await, StatusCode::UNAUTHORIZED);
    drop(b);

    // Without the CA (the system's trust store) the certificate is refused: an error
    // for the operator, not a refusal of the user.
    let b = start(&slapd.berth_config(&ldaps, ""));
    assert_eq!(
        v2(&c, &b, "alice", ALICE_PASSWORD).await,
        StatusCode::BAD_REQUEST
    );
    let lines = b.wait_for_log(
        "error checking authorization",
        0,
        std::time::Duration::from_secs(5),
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&ldaps) && l.to_lowercase().contains("certificate")),
        "{lines:?}"
    );
    drop(b);

    // skipverify takes any certificate.
    let b = start(&slapd.berth_config(&ldaps, "      skipverify: true\n"));
    assert_eq!(v2(&c, &b, "alice", ALICE_PASSWORD).await, StatusCode::OK);
}

#[tokio::test]
async fn an_unreachable_directory_is_an_error_not_a_refusal() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let url = format!("ldap://127.0.0.1:{port}");
    let b = start(&format!(
        "    ldap:\n      url: {url}\n      basedn: dc=example,dc=org\n      timeout: 2s\n"
    ));
    let c = Client::new();
    assert_eq!(
        v2(&c, &b, "alice", ALICE_PASSWORD).await,
        StatusCode::BAD_REQUEST
    );
    let lines = b.wait_for_log(
        "error checking authorization",
        0,
        std::time::Duration::from_secs(5),
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&format!("cannot connect to {url}"))),
        "{lines:?}"
    );
    // The local administrator does not depend on the directory.
    assert_eq!(v2(&c, &b, "admin", ADMIN_PASSWORD).await, StatusCode::OK);
    // A bad setting stops the start with the key named.
    let err = Berth::fails_to_start(&format!(
        "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: DATA\nhttp:\n  addr: 127.0.0.1:0\nauth:\n  berth:\n    ldap:\n      url: {url}\n      basedn: dc=x\n      searchfilter: (objectClass=person\n"
    ));
    assert!(err.contains("searchfilter"), "{err}");
}
