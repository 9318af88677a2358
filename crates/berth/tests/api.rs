//! The management API (`/api/v2.0`, Harbor's shapes) against the real binary with
//! `auth.berth`: users, projects, members, robots, repositories, artifacts, tags, audit
//! logs, pagination; the no-escalation rules, each path with its own test; every JSON
//! answer checked against the OpenAPI document the server serves; and Harbor's own
//! Python client (`harborapi`, from PyPI) driving it unchanged.

mod common;

use common::push::{image_manifest, sha256, Registry, OCI_MANIFEST};
use common::Berth;
use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Mutex;

const ADMIN: (&str, &str) = ("admin", "Harbor12345");
const PASSWORD: &str = "Passw0rdUser";

fn start(extra: &str) -> Berth {
    Berth::start_with(&format!(
        "auth:\n  berth:\n    adminpassword: {}\n{extra}",
        ADMIN.1
    ))
}

/// A client of the API that checks every JSON answer against the served OpenAPI
/// document.
struct Api {
    c: Client,
    url: String,
    spec: Value,
    /// (method, path template) -> answers seen, for the coverage check.
    seen: Mutex<BTreeMap<String, u32>>,
}

impl Api {
    async fn new(b: &Berth) -> Api {
        let c = Client::new();
        let spec: Value = c
            .get(format!("{}/api/v2.0/openapi.json", b.url))
            .send()
            .await
            .expect("openapi")
            .json()
            .await
            .expect("openapi json");
        Api {
            c,
            url: b.url.clone(),
            spec,
            seen: Mutex::new(BTreeMap::new()),
        }
    }

    /// Send `method path` as `who` with `body`; returns status, headers and JSON (Null
    /// when there is none), after validating the JSON against the document.
    async fn call(
        &self,
        who: Option<(&str, &str)>,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let mut r = self
            .c
            .request(method.clone(), format!("{}/api/v2.0{path}", self.url));
        if let Some((u, p)) = who {
            r = r.basic_auth(u, Some(p));
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.expect("send");
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await.expect("body");
        let value: Value = if text.trim().is_empty()
            || headers
                .get("content-type")
                .is_some_and(|c| c.to_str().unwrap_or("").starts_with("text/"))
        {
            Value::Null
        } else {
            serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {text}"))
        };
        self.validate(&method, path, status, &value);
        (status, headers, value)
    }

    /// Check `value` against the document's schema for this path, method and status.
    fn validate(&self, method: &Method, path: &str, status: StatusCode, value: &Value) {
        let path_only = path.split('?').next().unwrap_or(path);
        let Some((template, item)) = self.spec["paths"]
            .as_object()
            .expect("paths")
            .iter()
            .find(|(t, _)| matches_template(t, path_only))
        else {
            panic!("{method} {path_only} is not in the OpenAPI document");
        };
        let op = &item[method.as_str().to_lowercase()];
        assert!(
            op.is_object(),
            "{method} {template} is not in the OpenAPI document"
        );
        let code = status.as_u16().to_string();
        let response = if op["responses"][&code].is_object() {
            &op["responses"][&code]
        } else {
            &op["responses"]["default"]
        };
        assert!(
            response.is_object(),
            "{method} {template}: status {code} undocumented"
        );
        *self
            .seen
            .lock()
            .expect("lock")
            .entry(format!("{method} {template}"))
            .or_default() += 1;
        let schema = &response["content"]["application/json"]["schema"];
        if schema.is_object() && !value.is_null() {
            self.check(schema, value, &format!("{method} {path_only} {code}"));
        }
    }

    fn check(&self, schema: &Value, v: &Value, at: &str) {
        if let Some(r) = schema["$ref"].as_str() {
            let name = r.rsplit('/').next().expect("ref");
            return self.check(&self.spec["components"]["schemas"][name], v, at);
        }
        if v.is_null() {
            assert!(
                schema["nullable"] == true,
                "{at}: null where the document says {schema}"
            );
            return;
        }
        match schema["type"].as_str() {
            Some("object") => {
                let o = v
                    .as_object()
                    .unwrap_or_else(|| panic!("{at}: expected an object, got {v}"));
                for req in schema["required"].as_array().into_iter().flatten() {
                    let k = req.as_str().expect("name");
                    assert!(o.contains_key(k), "{at}: required field {k} missing in {v}");
                }
                if let Some(props) = schema["properties"].as_object() {
                    for (k, s) in props {
                        if let Some(x) = o.get(k) {
                            self.check(s, x, &format!("{at}.{k}"));
                        }
                    }
                }
            }
            Some("array") => {
                for (i, x) in v
                    .as_array()
                    .unwrap_or_else(|| panic!("{at}: expected an array, got {v}"))
                    .iter()
                    .enumerate()
                {
                    self.check(&schema["items"], x, &format!("{at}[{i}]"));
                }
            }
            Some("string") => assert!(v.is_string(), "{at}: expected a string, got {v}"),
            Some("integer") => assert!(
                v.is_i64() || v.is_u64(),
                "{at}: expected an integer, got {v}"
            ),
            Some("boolean") => assert!(v.is_boolean(), "{at}: expected a boolean, got {v}"),
            _ => {}
        }
    }
}

/// Whether `path` fits an OpenAPI path template (`/users/{user_id}`).
fn matches_template(template: &str, path: &str) -> bool {
    let t: Vec<&str> = template.trim_matches('/').split('/').collect();
    let p: Vec<&str> = path.trim_matches('/').split('/').collect();
    t.len() == p.len() && t.iter().zip(&p).all(|(a, b)| a.starts_with('{') || a == b)
}

/// Push a small image as `who` (Basic straight to /v2/).
async fn push(b: &Berth, who: (&str, &str), repo: &str, tag: &str, salt: &str) -> oci::Digest {
    let reg = Registry::new(&b.url).with_auth(who.0, who.1);
    let config = format!("{{\"salt\":\"{salt}\"}}").into_bytes();
    let layer = format!("layer {salt}").into_bytes();
    reg.push_blob(repo, &config).await;
    reg.push_blob(repo, &layer).await;
    let manifest = serde_json::to_vec(&image_manifest(&config, &layer)).expect("json");
    let r = reg.put_manifest(repo, tag, OCI_MANIFEST, &manifest).await;
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "push {repo}:{tag} as {}",
        who.0
    );
    sha256(&manifest)
}

async fn create_user(api: &Api, name: &str) -> i64 {
    let (s, h, _) = api
        .call(Some(ADMIN), Method::POST, "/users", Some(json!({"username": name, "password": PASSWORD, "email": format!("{name}@example.org"), "realname": name})))
        .await;
    assert_eq!(s, StatusCode::CREATED, "create user {name}");
    let loc = h["location"].to_str().expect("location");
    loc.rsplit('/')
        .next()
        .expect("id")
        .parse()
        .expect("numeric id")
}

async fn create_project(api: &Api, who: (&str, &str), name: &str, public: bool) {
    let (s, h, v) = api
        .call(Some(who), Method::POST, "/projects", Some(json!({"project_name": name, "metadata": {"public": if public { "true" } else { "false" }}})))
        .await;
    assert_eq!(s, StatusCode::CREATED, "create project {name}: {v}");
    assert!(h["location"]
        .to_str()
        .expect("loc")
        .starts_with("/api/v2.0/projects/"));
}

async fn add_member(
    api: &Api,
    who: (&str, &str),
    project: &str,
    user: &str,
    role: u8,
) -> StatusCode {
    api.call(
        Some(who),
        Method::POST,
        &format!("/projects/{project}/members"),
        Some(json!({"role_id": role, "member_user": {"username": user}})),
    )
    .await
    .0
}

#[tokio::test]
async fn users_projects_members_and_pagination() {
    let b = start("");
    let api = Api::new(&b).await;
    // System endpoints.
    let resp = api
        .c
        .get(format!("{}/api/v2.0/ping", b.url))
        .send()
        .await
        .expect("ping");
    assert_eq!(resp.text().await.expect("text"), "Pong");
    let (s, _, info) = api.call(None, Method::GET, "/systeminfo", None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        info.get("project_creation_restriction").is_none(),
        "anonymous sees less: {info}"
    );
    let (_, _, info) = api
        .call(Some(ADMIN), Method::GET, "/systeminfo", None)
        .await;
    assert_eq!(info["project_creation_restriction"], "everyone");
    let (_, _, health) = api.call(None, Method::GET, "/health", None).await;
    assert_eq!(health["status"], "healthy");

    // Users.
    let alice = create_user(&api, "alice").await;
    let bob = create_user(&api, "bob").await;
    let (s, _, _) = api
        .call(
            Some(ADMIN),
            Method::POST,
            "/users",
            Some(json!({"username": "alice", "password": PASSWORD})),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    let (s, _, _) = api
        .call(
            Some(ADMIN),
            Method::POST,
            "/users",
            Some(json!({"username": "weak", "password": "short"})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _, me) = api
        .call(
            Some(("alice", PASSWORD)),
            Method::GET,
            "/users/current",
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(me["username"], "alice");
    assert_eq!(me["sysadmin_flag"], false);
    assert_eq!(
        api.call(Some(("alice", PASSWORD)), Method::GET, "/users", None)
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        api.call(
            Some(("alice", PASSWORD)),
            Method::GET,
            &format!("/users/{bob}"),
            None
        )
        .await
        .0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        api.call(None, Method::GET, "/users/current", None).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        api.call(
            Some(("alice", "wrong")),
            Method::GET,
            "/users/current",
            None
        )
        .await
        .0,
        StatusCode::UNAUTHORIZED
    );
    let (s, _, found) = api
        .call(
            Some(("alice", PASSWORD)),
            Method::GET,
            "/users/search?username=bo",
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(found[0]["username"], "bob");
    // Profile and password.
    assert_eq!(
        api.call(
            Some(("alice", PASSWORD)),
            Method::PUT,
            &format!("/users/{alice}"),
            Some(json!({"realname": "Alice A."}))
        )
        .await
        .0,
        StatusCode::OK
    );
    let (s, _, _) = api
        .call(
            Some(("alice", PASSWORD)),
            Method::PUT,
            &format!("/users/{alice}/password"),
            Some(json!({"old_password": "nope", "new_password": "Another1Pass"})),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "the old password is checked");
    let (s, _, _) = api
        .call(
            Some(("alice", PASSWORD)),
            Method::PUT,
            &format!("/users/{alice}/password"),
            Some(json!({"old_password": PASSWORD, "new_password": "Another1Pass"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        api.call(
            Some(ADMIN),
            Method::PUT,
            &format!("/users/{alice}/password"),
            Some(json!({"new_password": PASSWORD}))
        )
        .await
        .0,
        StatusCode::OK,
        "an administrator resets it"
    );

    // Projects: create, list with pagination, get by name and id, visibility.
    for i in 0..12 {
        create_project(&api, ADMIN, &format!("p{i:02}"), i % 2 == 0).await;
    }
    let (s, h, page) = api
        .call(
            Some(ADMIN),
            Method::GET,
            "/projects?page=2&page_size=5",
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(h["x-total-count"], "12");
    assert_eq!(page.as_array().expect("list").len(), 5);
    assert_eq!(
        h["link"].to_str().expect("link"),
        "</api/v2.0/projects?page=1&page_size=5>; rel=\"prev\" , </api/v2.0/projects?page=3&page_size=5>; rel=\"next\""
    );
    let (_, h, _) = api
        .call(
            Some(("alice", PASSWORD)),
            Method::GET,
            "/projects?page_size=100",
            None,
        )
        .await;
    assert_eq!(h["x-total-count"], "6", "alice sees the public ones only");
    let (_, h, _) = api.call(None, Method::GET, "/projects", None).await;
    assert_eq!(h["x-total-count"], "6", "anonymous sees public projects");
    assert_eq!(
        api.call(
            Some(("alice", PASSWORD)),
            Method::GET,
            "/projects/p01",
            None
        )
        .await
        .0,
        StatusCode::NOT_FOUND,
        "a private project is not shown to strangers"
    );
    let (s, _, p) = api
        .call(Some(ADMIN), Method::GET, "/projects/p01", None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(p["metadata"]["public"], "false");
    let pid = p["project_id"].as_i64().expect("id");
    let (_, _, by_id) = api
        .call(Some(ADMIN), Method::GET, &format!("/projects/{pid}"), None)
        .await;
    assert_eq!(by_id["name"], "p01");
    assert_eq!(
        api.c
            .head(format!("{}/api/v2.0/projects?project_name=p01", b.url))
            .basic_auth("alice", Some(PASSWORD))
            .send()
            .await
            .expect("head")
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        api.c
            .head(format!("{}/api/v2.0/projects?project_name=nope", b.url))
            .basic_auth("alice", Some(PASSWORD))
            .send()
            .await
            .expect("head")
            .status(),
        StatusCode::NOT_FOUND
    );
    let (s, _, _) = api
        .call(
            Some(ADMIN),
            Method::POST,
            "/projects",
            Some(json!({"project_name": "p01"})),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    let (s, _, _) = api
        .call(
            Some(ADMIN),
            Method::POST,
            "/projects",
            Some(json!({"project_name": "Bad Name"})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);

    // Members.
    create_project(&api, ("alice", PASSWORD), "team", false).await;
    let (_, _, members) = api
        .call(
            Some(("alice", PASSWORD)),
            Method::GET,
            "/projects/team/members",
            None,
        )
        .await;
    assert_eq!(members[0]["entity_name"], "alice");
    assert_eq!(members[0]["role_name"], "projectAdmin");
    assert_eq!(
        add_member(&api, ("alice", PASSWORD), "team", "bob", 2).await,
        StatusCode::CREATED
    );
    assert_eq!(
        add_member(&api, ("alice", PASSWORD), "team", "bob", 3).await,
        StatusCode::CONFLICT
    );
    assert_eq!(
        add_member(&api, ("alice", PASSWORD), "team", "nobody", 3).await,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        add_member(&api, ("alice", PASSWORD), "team", "admin", 9).await,
        StatusCode::BAD_REQUEST
    );
    let (_, h, members) = api
        .call(
            Some(("bob", PASSWORD)),
            Method::GET,
            "/projects/team/members?entityname=bo",
            None,
        )
        .await;
    assert_eq!(h["x-total-count"], "1");
    let mid = members[0]["id"].as_i64().expect("member id");
    assert_eq!(members[0]["role_id"], 2);
    // A developer may not manage members.
    assert_eq!(
        api.call(
            Some(("bob", PASSWORD)),
            Method::PUT,
            &format!("/projects/team/members/{mid}"),
            Some(json!({"role_id": 1}))
        )
        .await
        .0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        api.call(
            Some(("alice", PASSWORD)),
            Method::PUT,
            &format!("/projects/team/members/{mid}"),
            Some(json!({"role_id": 4}))
        )
        .await
        .0,
        StatusCode::OK
    );
    let (_, _, m) = api
        .call(
            Some(("alice", PASSWORD)),
            Method::GET,
            &format!("/projects/team/members/{mid}"),
            None,
        )
        .await;
    assert_eq!(m["role_name"], "maintainer");
    let (_, _, summary) = api
        .call(
            Some(("alice", PASSWORD)),
            Method::GET,
            "/projects/team/summary",
            None,
        )
        .await;
    assert_eq!(summary["maintainer_count"], 1);
    assert_eq!(
        api.call(
            Some(("alice", PASSWORD)),
            Method::DELETE,
            &format!("/projects/team/members/{mid}"),
            None
        )
        .await
        .0,
        StatusCode::OK
    );
    assert_eq!(
        api.call(Some(("bob", PASSWORD)), Method::GET, "/projects/team", None)
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    // Public toggle by the project admin; deleting needs an empty project.
    assert_eq!(
        api.call(
            Some(("alice", PASSWORD)),
            Method::PUT,
            "/projects/team",
            Some(json!({"metadata": {"public": "true"}}))
        )
        .await
        .0,
        StatusCode::OK
    );
    assert_eq!(
        api.call(Some(("bob", PASSWORD)), Method::GET, "/projects/team", None)
            .await
            .0,
        StatusCode::OK
    );
    push(&b, ("alice", PASSWORD), "team/app", "v1", "x").await;
    let (s, _, v) = api
        .call(
            Some(("alice", PASSWORD)),
            Method::DELETE,
            "/projects/team",
            None,
        )
        .await;
    assert_eq!(s, StatusCode::PRECONDITION_FAILED, "{v}");
    assert_eq!(
        api.call(Some(ADMIN), Method::DELETE, "/projects/p03", None)
            .await
            .0,
        StatusCode::OK
    );
    // Users: administrators delete; not themselves; not admin.
    assert_eq!(
        api.call(Some(ADMIN), Method::DELETE, "/users/1", None)
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        api.call(Some(ADMIN), Method::DELETE, &format!("/users/{bob}"), None)
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        api.call(Some(("bob", PASSWORD)), Method::GET, "/users/current", None)
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
}

/// Harbor's mass-assignment CVE: no request field can make a user an administrator or
/// set anything a caller may not set.
#[tokio::test]
async fn strict_bodies_refuse_unknown_fields() {
    let b = start("");
    let api = Api::new(&b).await;
    let alice = create_user(&api, "alice").await;
    let me = Some(("alice", PASSWORD));
    let (s, _, v) = api
        .call(
            Some(ADMIN),
            Method::POST,
            "/users",
            Some(json!({"username": "mallory", "password": PASSWORD, "sysadmin_flag": true})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(
        v["errors"][0]["message"]
            .as_str()
            .unwrap_or("")
            .contains("sysadmin_flag"),
        "{v}"
    );
    for body in [
        json!({"realname": "x", "sysadmin_flag": true}),
        json!({"email": "x@y", "admin_role_in_auth": true}),
        json!({"user_id": 1}),
    ] {
        assert_eq!(
            api.call(
                me,
                Method::PUT,
                &format!("/users/{alice}"),
                Some(body.clone())
            )
            .await
            .0,
            StatusCode::BAD_REQUEST,
            "{body}"
        );
    }
    assert_eq!(
        api.call(
            me,
            Method::PUT,
            &format!("/users/{alice}/sysadmin"),
            Some(json!({"sysadmin_flag": true}))
        )
        .await
        .0,
        StatusCode::FORBIDDEN
    );
    let (_, _, cur) = api.call(me, Method::GET, "/users/current", None).await;
    assert_eq!(cur["sysadmin_flag"], false);
    assert_eq!(
        api.call(
            me,
            Method::POST,
            "/projects",
            Some(json!({"project_name": "x", "owner_id": 1}))
        )
        .await
        .0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        api.call(
            me,
            Method::POST,
            "/projects",
            Some(json!({"project_name": "x", "metadata": {"public": "true", "auto_scan": "true"}}))
        )
        .await
        .0,
        StatusCode::BAD_REQUEST
    );
    create_project(&api, ("alice", PASSWORD), "mine", false).await;
    assert_eq!(
        api.call(
            me,
            Method::POST,
            "/projects/mine/members",
            Some(json!({"role_id": 1, "member_user": {"username": "admin"}, "sysadmin": true}))
        )
        .await
        .0,
        StatusCode::BAD_REQUEST
    );
    let robot = json!({"name": "r", "level": "project", "duration": -1, "permissions": [{"kind": "project", "namespace": "mine", "access": [{"resource": "repository", "action": "pull"}]}], "secret_hash": "x"});
    assert_eq!(
        api.call(me, Method::POST, "/robots", Some(robot)).await.0,
        StatusCode::BAD_REQUEST
    );
}

fn robot_body(name: &str, level: &str, entries: &[(&str, &[(&str, &str)])]) -> Value {
    json!({
        "name": name, "level": level, "duration": -1, "description": "test",
        "permissions": entries.iter().map(|(ns, acc)| json!({
            "kind": "project", "namespace": ns,
            "access": acc.iter().map(|(r, a)| json!({"resource": r, "action": a})).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

/// Robots: the secret is shown once and works; refresh, disable, delete; and every
/// escalation path is closed.
#[tokio::test]
async fn robots_and_no_escalation() {
    let b = start("");
    let api = Api::new(&b).await;
    create_user(&api, "alice").await;
    create_user(&api, "bob").await;
    let alice = ("alice", PASSWORD);
    create_project(&api, alice, "a", false).await;
    create_project(&api, ADMIN, "other", false).await;
    // A project admin makes a project robot of their project.
    let (s, h, created) = api
        .call(
            Some(alice),
            Method::POST,
            "/robots",
            Some(robot_body(
                "ci",
                "project",
                &[("a", &[("repository", "pull"), ("repository", "push")])],
            )),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{created}");
    assert!(h["location"]
        .to_str()
        .expect("loc")
        .starts_with("/api/v2.0/robots/"));
    assert_eq!(created["name"], "robot$a+ci");
    let secret = created["secret"].as_str().expect("secret").to_string();
    let rid = created["id"].as_i64().expect("id");
    let (_, _, got) = api
        .call(Some(alice), Method::GET, &format!("/robots/{rid}"), None)
        .await;
    assert_eq!(got["secret"], "", "the secret is shown only once");
    assert_eq!(got["level"], "project");
    push(&b, ("robot$a+ci", &secret), "a/app", "v1", "robot").await;
    // Refresh: the old secret stops working, the new one works.
    let (s, _, sec) = api
        .call(
            Some(alice),
            Method::PATCH,
            &format!("/robots/{rid}"),
            Some(json!({})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let fresh = sec["secret"].as_str().expect("new secret").to_string();
    let v2 = |u: &str, p: &str| {
        let c = api.c.clone();
        let url = format!("{}/v2/a/app/tags/list", b.url);
        let (u, p) = (u.to_string(), p.to_string());
        async move {
            c.get(url)
                .basic_auth(u, Some(p))
                .send()
                .await
                .expect("send")
                .status()
        }
    };
    assert_eq!(v2("robot$a+ci", &secret).await, StatusCode::UNAUTHORIZED);
    assert_eq!(v2("robot$a+ci", &fresh).await, StatusCode::OK);
    // Disable through PUT of the Robot model Harbor's clients send back.
    let mut model = got.clone();
    model["disable"] = json!(true);
    assert_eq!(
        api.call(
            Some(alice),
            Method::PUT,
            &format!("/robots/{rid}"),
            Some(model.clone())
        )
        .await
        .0,
        StatusCode::OK
    );
    assert_eq!(v2("robot$a+ci", &fresh).await, StatusCode::UNAUTHORIZED);
    model["disable"] = json!(false);
    model["level"] = json!("system");
    assert_eq!(
        api.call(
            Some(alice),
            Method::PUT,
            &format!("/robots/{rid}"),
            Some(model.clone())
        )
        .await
        .0,
        StatusCode::BAD_REQUEST,
        "the level cannot change"
    );
    model["level"] = json!("project");
    assert_eq!(
        api.call(
            Some(alice),
            Method::PUT,
            &format!("/robots/{rid}"),
            Some(model)
        )
        .await
        .0,
        StatusCode::OK
    );
    assert_eq!(v2("robot$a+ci", &fresh).await, StatusCode::OK);
    let (_, h, _) = api
        .call(Some(alice), Method::GET, "/projects/a/robots", None)
        .await;
    assert_eq!(h["x-total-count"], "1");
    let (_, h, _) = api
        .call(
            Some(ADMIN),
            Method::GET,
            &format!(
                "/robots?q=Level=project,ProjectID={}",
                got_project_id(&api, "a").await
            ),
            None,
        )
        .await;
    assert_eq!(h["x-total-count"], "1");

    // Escalation 1: a project admin cannot make a robot reaching another project.
    let (s, _, _) = api
        .call(
            Some(alice),
            Method::POST,
            "/robots",
            Some(robot_body(
                "x",
                "project",
                &[("other", &[("repository", "pull")])],
            )),
        )
        .await;
    assert!(
        s == StatusCode::NOT_FOUND || s == StatusCode::FORBIDDEN,
        "{s}"
    );
    let (s, _, _) = api
        .call(
            Some(alice),
            Method::POST,
            "/robots",
            Some(robot_body(
                "x",
                "system",
                &[
                    ("a", &[("repository", "pull")]),
                    ("other", &[("repository", "pull")]),
                ],
            )),
        )
        .await;
    assert_eq!(
        s,
        StatusCode::FORBIDDEN,
        "system robots are for administrators"
    );
    let (s, _, _) = api
        .call(
            Some(alice),
            Method::POST,
            "/robots",
            Some(robot_body(
                "x",
                "project",
                &[("*", &[("repository", "pull")])],
            )),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    // Escalation 2: a developer cannot give a robot delete (they do not hold it).
    assert_eq!(
        add_member(&api, alice, "a", "bob", 2).await,
        StatusCode::CREATED
    );
    let (s, _, _) = api
        .call(
            Some(("bob", PASSWORD)),
            Method::POST,
            "/robots",
            Some(robot_body(
                "y",
                "project",
                &[("a", &[("repository", "pull")])],
            )),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "a developer manages no robots");
    // Escalation 3: a robot allowed to manage robots cannot mint a stronger robot.
    let (s, _, mgr) = api
        .call(
            Some(alice),
            Method::POST,
            "/robots",
            Some(robot_body(
                "mgr",
                "project",
                &[("a", &[("robot", "create"), ("repository", "pull")])],
            )),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let mgr_auth = ("robot$a+mgr", mgr["secret"].as_str().expect("secret"));
    let (s, _, _) = api
        .call(
            Some(mgr_auth),
            Method::POST,
            "/robots",
            Some(robot_body(
                "strong",
                "project",
                &[("a", &[("repository", "push")])],
            )),
        )
        .await;
    assert_eq!(
        s,
        StatusCode::FORBIDDEN,
        "push is more than the manager robot holds"
    );
    let (s, _, weak) = api
        .call(
            Some(mgr_auth),
            Method::POST,
            "/robots",
            Some(robot_body(
                "weak",
                "project",
                &[("a", &[("repository", "pull")])],
            )),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{weak}");
    // Escalation 4: a role is given only by who holds all of it.
    let (s, _, _) = api
        .call(
            Some(mgr_auth),
            Method::POST,
            "/projects/a/members",
            Some(json!({"role_id": 1, "member_user": {"username": "bob"}})),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // Escalation 5: deleting a robot's creator opens nothing: the weak robot keeps only pull.
    let weak_auth = ("robot$a+weak", weak["secret"].as_str().expect("secret"));
    assert_eq!(
        api.call(
            Some(alice),
            Method::DELETE,
            &format!("/robots/{}", mgr["id"]),
            None
        )
        .await
        .0,
        StatusCode::OK
    );
    let reg = Registry::new(&b.url).with_auth(weak_auth.0, weak_auth.1);
    let r = reg
        .req(Method::GET, "/v2/a/app/tags/list")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::OK);
    let r = reg
        .req(Method::POST, "/v2/a/app/blobs/uploads/")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // The same when a user who made robots is deleted.
    let alice_id = user_id(&api, "alice").await;
    assert_eq!(
        api.call(
            Some(ADMIN),
            Method::DELETE,
            &format!("/users/{alice_id}"),
            None
        )
        .await
        .0,
        StatusCode::OK
    );
    assert_eq!(v2("robot$a+ci", &fresh).await, StatusCode::OK);
    let r = Registry::new(&b.url)
        .with_auth("robot$a+ci", &fresh)
        .req(Method::DELETE, "/v2/a/app/manifests/v1")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // Delete.
    assert_eq!(
        api.call(Some(ADMIN), Method::DELETE, &format!("/robots/{rid}"), None)
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(v2("robot$a+ci", &fresh).await, StatusCode::UNAUTHORIZED);
}

async fn got_project_id(api: &Api, name: &str) -> i64 {
    api.call(Some(ADMIN), Method::GET, &format!("/projects/{name}"), None)
        .await
        .2["project_id"]
        .as_i64()
        .expect("id")
}

async fn user_id(api: &Api, name: &str) -> i64 {
    let (_, _, users) = api
        .call(
            Some(ADMIN),
            Method::GET,
            &format!("/users?q=username%3D{name}&page_size=100"),
            None,
        )
        .await;
    users
        .as_array()
        .expect("users")
        .iter()
        .find(|u| u["username"] == name)
        .expect("user")["user_id"]
        .as_i64()
        .expect("id")
}

/// Repositories, artifacts and tags as the API lists them after real pushes; tags added
/// and removed; an artifact and a repository deleted; the audit log records all of it.
#[tokio::test]
async fn repositories_artifacts_tags_and_audit() {
    let b = start("");
    let api = Api::new(&b).await;
    create_project(&api, ADMIN, "lib", false).await;
    let d1 = push(&b, ADMIN, "lib/app", "v1", "one").await;
    let d2 = push(&b, ADMIN, "lib/app", "v2", "two").await;
    push(&b, ADMIN, "lib/tools/cli", "latest", "three").await;
    let (s, h, repos) = api
        .call(Some(ADMIN), Method::GET, "/projects/lib/repositories", None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(h["x-total-count"], "2");
    let names: Vec<&str> = repos
        .as_array()
        .expect("repos")
        .iter()
        .map(|r| r["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["lib/app", "lib/tools/cli"]);
    assert_eq!(repos[0]["artifact_count"], 2);
    let (s, _, r) = api
        .call(
            Some(ADMIN),
            Method::GET,
            "/projects/lib/repositories/tools%252Fcli",
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "a nested name, encoded twice");
    assert_eq!(r["name"], "lib/tools/cli");
    let (s, h, arts) = api
        .call(
            Some(ADMIN),
            Method::GET,
            "/projects/lib/repositories/app/artifacts?with_tag=true",
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(h["x-total-count"], "2");
    let digests: Vec<&str> = arts
        .as_array()
        .expect("arts")
        .iter()
        .map(|a| a["digest"].as_str().expect("digest"))
        .collect();
    assert!(
        digests.contains(&d1.as_str()) && digests.contains(&d2.as_str()),
        "{digests:?}"
    );
    let (_, _, a) = api
        .call(
            Some(ADMIN),
            Method::GET,
            "/projects/lib/repositories/app/artifacts/v1",
            None,
        )
        .await;
    assert_eq!(a["digest"], d1.as_str());
    assert_eq!(a["tags"][0]["name"], "v1");
    assert!(a["size"].as_u64().expect("size") > 0);
    // Tags: add, conflict, remove.
    assert_eq!(
        api.call(
            Some(ADMIN),
            Method::POST,
            &format!("/projects/lib/repositories/app/artifacts/{d1}/tags"),
            Some(json!({"name": "stable"}))
        )
        .await
        .0,
        StatusCode::CREATED
    );
    assert_eq!(
        api.call(
            Some(ADMIN),
            Method::POST,
            &format!("/projects/lib/repositories/app/artifacts/{d1}/tags"),
            Some(json!({"name": "v2"}))
        )
        .await
        .0,
        StatusCode::CONFLICT
    );
    let r = Registry::new(&b.url)
        .with_auth(ADMIN.0, ADMIN.1)
        .req(Method::GET, "/v2/lib/app/manifests/stable")
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .expect("send");
    assert_eq!(
        r.headers()["docker-content-digest"],
        d1.as_str(),
        "the new tag serves the artifact"
    );
    let (_, _, tags) = api
        .call(
            Some(ADMIN),
            Method::GET,
            &format!("/projects/lib/repositories/app/artifacts/{d1}/tags"),
            None,
        )
        .await;
    assert_eq!(tags.as_array().expect("tags").len(), 2);
    assert_eq!(
        api.call(
            Some(ADMIN),
            Method::DELETE,
            &format!("/projects/lib/repositories/app/artifacts/{d1}/tags/stable"),
            None
        )
        .await
        .0,
        StatusCode::OK
    );
    // Delete an artifact, then a repository.
    assert_eq!(
        api.call(
            Some(ADMIN),
            Method::DELETE,
            "/projects/lib/repositories/app/artifacts/v2",
            None
        )
        .await
        .0,
        StatusCode::OK
    );
    let (_, h, _) = api
        .call(
            Some(ADMIN),
            Method::GET,
            "/projects/lib/repositories/app/artifacts",
            None,
        )
        .await;
    assert_eq!(h["x-total-count"], "1");
    assert_eq!(
        api.call(
            Some(ADMIN),
            Method::DELETE,
            "/projects/lib/repositories/tools%252Fcli",
            None
        )
        .await
        .0,
        StatusCode::OK
    );
    let (_, h, _) = api
        .call(Some(ADMIN), Method::GET, "/projects/lib/repositories", None)
        .await;
    assert_eq!(h["x-total-count"], "1");
    // Search and statistics.
    let (_, _, found) = api
        .call(Some(ADMIN), Method::GET, "/search?q=ap", None)
        .await;
    assert_eq!(found["repository"][0]["repository_name"], "lib/app");
    let (_, _, stats) = api
        .call(Some(ADMIN), Method::GET, "/statistics", None)
        .await;
    assert_eq!(stats["private_project_count"], 1);
    assert_eq!(stats["private_repo_count"], 1);
    assert!(stats["total_storage_consumption"].as_u64().expect("bytes") > 0);
    // A failed login and a denied push are recorded too.
    let _ = Registry::new(&b.url)
        .with_auth("admin", "wrong")
        .req(Method::GET, "/v2/lib/app/tags/list")
        .send()
        .await;
    // The audit log: pushes, pulls, deletes, the failed login, API changes.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let logs = loop {
        let (_, _, logs) = api
            .call(Some(ADMIN), Method::GET, "/audit-logs?page_size=100", None)
            .await;
        let ops: Vec<(String, String)> = logs
            .as_array()
            .expect("logs")
            .iter()
            .map(|l| {
                (
                    l["operation"].as_str().unwrap_or("").to_string(),
                    l["resource_type"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        let has = |o: &str, t: &str| ops.iter().any(|(a, b)| a == o && b == t);
        if has("push", "artifact")
            && has("pull", "artifact")
            && has("delete", "artifact")
            && has("delete", "repository")
            && has("create", "tag")
            && has("create", "project")
            && has("login", "artifact")
        {
            break logs;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "audit log incomplete: {ops:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    let login = logs
        .as_array()
        .expect("logs")
        .iter()
        .find(|l| l["operation"] == "login")
        .expect("login");
    assert_eq!(login["result"], "unauthorized");
    assert_eq!(login["client"], "127.0.0.1");
    let (_, h, filtered) = api
        .call(
            Some(ADMIN),
            Method::GET,
            "/audit-logs?q=operation%3Dpush&page_size=100",
            None,
        )
        .await;
    assert!(filtered
        .as_array()
        .expect("logs")
        .iter()
        .all(|l| l["operation"] == "push"));
    assert_eq!(h["x-total-count"], "3");
    let (s, _, plogs) = api
        .call(
            Some(ADMIN),
            Method::GET,
            "/projects/lib/logs?page_size=100",
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert!(plogs
        .as_array()
        .expect("logs")
        .iter()
        .all(|l| l["project"] == "lib"));
    // The records survive a restart (they are in the metadata database).
    let mut b = b;
    b.stop_and_restart();
    let api = Api::new(&b).await;
    let (_, h, _) = api
        .call(
            Some(ADMIN),
            Method::GET,
            "/audit-logs?q=operation%3Dpush",
            None,
        )
        .await;
    assert_eq!(h["x-total-count"], "3");
}

/// Garbage collection through `/api/v2.0/system/gc`: a manual run (as Harbor's portal
/// starts it) deletes an unreferenced blob and keeps the image, with its counts and
/// log recorded; `berth garbage-collect` runs are recorded too; a cron schedule set
/// through the API fires on its own and stops when removed; only system
/// administrators may do any of it.
#[tokio::test]
async fn garbage_collection_runs_history_and_schedule() {
    let b = start("");
    let api = Api::new(&b).await;
    create_user(&api, "gcdev").await;
    let dev = ("gcdev", PASSWORD);
    create_project(&api, ADMIN, "gc", false).await;
    let image = push(&b, ADMIN, "gc/app", "v1", "kept").await;
    let reg = Registry::new(&b.url).with_auth(ADMIN.0, ADMIN.1);
    let loose = b"a layer no manifest references".to_vec();
    let loose_digest = reg.push_blob("gc/app", &loose).await;

    // Who may: system administrators only.
    let (s, _, _) = api.call(None, Method::GET, "/system/gc", None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    for (method, path) in [
        (Method::GET, "/system/gc"),
        (Method::GET, "/system/gc/schedule"),
        (Method::POST, "/system/gc/schedule"),
        (Method::PUT, "/system/gc/schedule"),
    ] {
        let body = (method != Method::GET).then(|| json!({"schedule": {"type": "Manual"}}));
        let (s, _, _) = api.call(Some(dev), method.clone(), path, body).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{method} {path} as a user");
    }
    let (s, _, runs) = api.call(Some(ADMIN), Method::GET, "/system/gc", None).await;
    assert_eq!((s, runs), (StatusCode::OK, json!([])));

    // Run now, as the portal sends it.
    let (s, h, _) = api
        .call(
            Some(ADMIN),
            Method::POST,
            "/system/gc/schedule",
            Some(json!({"schedule": {"type": "Manual"}, "parameters": {"delete_untagged": true, "delete_tag": false, "workers": 1, "dry_run": false, "time_window": 0}})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let location = h["location"].to_str().expect("location").to_string();
    let id: i64 = location
        .strip_prefix("/api/v2.0/system/gc/")
        .expect("run location")
        .parse()
        .expect("id");
    let run = wait_for_run(&api, id).await;
    assert_eq!(run["job_status"], "Success", "{run}");
    assert_eq!(run["job_kind"], "MANUAL");
    assert_eq!(run["job_name"], "GARBAGE_COLLECTION");
    assert_eq!(run["deleted_blobs"], 1, "{run}");
    assert_eq!(run["freed_bytes"], loose.len() as u64, "{run}");
    let params: Value =
        serde_json::from_str(run["job_parameters"].as_str().expect("parameters")).expect("json");
    assert_eq!(params["delete_untagged"], true);
    let log = api
        .c
        .get(format!("{}/api/v2.0/system/gc/{id}/log", b.url))
        .basic_auth(ADMIN.0, Some(ADMIN.1))
        .send()
        .await
        .expect("log");
    assert_eq!(log.status(), StatusCode::OK);
    assert!(log.headers()["content-type"]
        .to_str()
        .unwrap_or("")
        .starts_with("text/plain"));
    let log = log.text().await.expect("text");
    assert!(
        log.contains(&format!("blob eligible for deletion: {loose_digest}")),
        "{log}"
    );
    assert!(log.contains("deleted 1 blobs"), "{log}");
    api.validate(
        &Method::GET,
        &format!("/system/gc/{id}/log"),
        StatusCode::OK,
        &Value::Null,
    );
    // The image is untouched; the loose blob is gone.
    let r = reg
        .req(Method::GET, &format!("/v2/gc/app/manifests/{image}"))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), StatusCode::OK);
    let r = reg
        .req(Method::HEAD, &format!("/v2/gc/app/blobs/{loose_digest}"))
        .send()
        .await
        .expect("head");
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let (s, _, _) = api
        .call(Some(ADMIN), Method::GET, "/system/gc/999", None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // Stopping: a finished run stays as it was; an unknown one is not found.
    let (s, _, _) = api
        .call(Some(ADMIN), Method::PUT, &format!("/system/gc/{id}"), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    let (_, _, same) = api
        .call(Some(ADMIN), Method::GET, &format!("/system/gc/{id}"), None)
        .await;
    assert_eq!(same["job_status"], "Success");
    let (s, _, _) = api
        .call(Some(ADMIN), Method::PUT, "/system/gc/999", None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _, _) = api
        .call(Some(dev), Method::PUT, &format!("/system/gc/{id}"), None)
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    // `berth garbage-collect` (the guides' cron line) is a recorded run as well.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["garbage-collect", "--grace", "0s"])
        .arg(b.config_path())
        .output()
        .expect("berth garbage-collect");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, h, runs) = api
        .call(Some(ADMIN), Method::GET, "/system/gc?page_size=1", None)
        .await;
    assert_eq!(h["x-total-count"], "2");
    assert!(h["link"].to_str().expect("link").contains("rel=\"next\""));
    assert!(
        runs[0]["owner"]
            .as_str()
            .expect("owner")
            .starts_with("berth garbage-collect, pid "),
        "{runs}"
    );
    assert_eq!(runs[0]["job_status"], "Success");

    // Bad schedules are refused, naming what is wrong.
    for (body, needle) in [
        (
            json!({"schedule": {"type": "Custom", "cron": "0 0 * * *"}}),
            "six fields",
        ),
        (json!({"schedule": {"type": "Daily", "cron": ""}}), "cron"),
        (
            json!({"schedule": {"type": "Manual"}, "parameters": {"delete_tag": true}}),
            "delete_tag",
        ),
        (
            json!({"schedule": {"type": "Manual"}, "parameters": {"workers": 11}}),
            "workers",
        ),
        (json!({"schedule": {"type": "Sometimes"}}), "Sometimes"),
    ] {
        let (s, _, e) = api
            .call(
                Some(ADMIN),
                Method::PUT,
                "/system/gc/schedule",
                Some(body.clone()),
            )
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
        assert!(e.to_string().contains(needle), "{body}: {e}");
    }

    // A schedule fires by itself (every 2 s here), and stops when removed.
    let (s, _, none) = api
        .call(Some(ADMIN), Method::GET, "/system/gc/schedule", None)
        .await;
    assert_eq!(
        (s, &none["schedule"]["type"]),
        (StatusCode::OK, &json!("None"))
    );
    let (s, _, _) = api
        .call(
            Some(ADMIN),
            Method::PUT,
            "/system/gc/schedule",
            Some(json!({"schedule": {"type": "Custom", "cron": "*/2 * * * * *"}, "parameters": {"delete_untagged": false, "time_window": 0}})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (_, _, sched) = api
        .call(Some(ADMIN), Method::GET, "/system/gc/schedule", None)
        .await;
    assert_eq!(sched["schedule"]["type"], "Custom");
    assert_eq!(sched["schedule"]["cron"], "*/2 * * * * *");
    assert!(
        sched["schedule"]["next_scheduled_time"].is_string(),
        "{sched}"
    );
    let scheduled = |runs: &Value| {
        runs.as_array()
            .expect("runs")
            .iter()
            .filter(|r| r["job_kind"] == "SCHEDULE")
            .count()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (_, _, runs) = api
            .call(Some(ADMIN), Method::GET, "/system/gc?page_size=100", None)
            .await;
        if scheduled(&runs) > 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no scheduled run: {runs}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    let (s, _, _) = api
        .call(
            Some(ADMIN),
            Method::POST,
            "/system/gc/schedule",
            Some(json!({"schedule": {"type": "None"}})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    // Every node re-reads the schedule within 5 s; after that no run starts.
    tokio::time::sleep(std::time::Duration::from_secs(7)).await;
    let (_, _, before) = api
        .call(Some(ADMIN), Method::GET, "/system/gc?page_size=100", None)
        .await;
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    let (_, _, after) = api
        .call(Some(ADMIN), Method::GET, "/system/gc?page_size=100", None)
        .await;
    assert_eq!(
        scheduled(&before),
        scheduled(&after),
        "a removed schedule fired"
    );
    for run in after.as_array().expect("runs") {
        assert_ne!(run["job_status"], "Error", "{run}");
    }
    let r = reg
        .req(Method::GET, &format!("/v2/gc/app/manifests/{image}"))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), StatusCode::OK);
}

/// Poll a run until it ends (at most 30 s).
/// An immutable tag rule as Harbor's portal sends it.
/// A private project `name` with three new users as its maintainer, developer and
/// guest (in that order); their credentials.
async fn project_with_roles(
    api: &Api,
    name: &str,
    users: [&'static str; 3],
) -> [(&'static str, &'static str); 3] {
    for u in users {
        create_user(api, u).await;
    }
    create_project(api, ADMIN, name, false).await;
    for (user, role) in users.into_iter().zip([4, 2, 3]) {
        assert_eq!(
            add_member(api, ADMIN, name, user, role).await,
            StatusCode::CREATED
        );
    }
    users.map(|u| (u, PASSWORD))
}

fn immutable_rule(repos: &str, tags: &str) -> Value {
    json!({
        "action": "immutable",
        "template": "immutable_template",
        "params": {},
        "disabled": false,
        "priority": 0,
        "tag_selectors": [{"kind": "doublestar", "decoration": "matches", "pattern": tags}],
        "scope_selectors": {"repository": [{"kind": "doublestar", "decoration": "repoMatches", "pattern": repos}]},
    })
}

/// The body of a manifest of the image `push` would make with `salt` (its blobs must
/// be pushed already).
fn manifest_of(salt: &str) -> Vec<u8> {
    let config = format!("{{\"salt\":\"{salt}\"}}").into_bytes();
    let layer = format!("layer {salt}").into_bytes();
    serde_json::to_vec(&image_manifest(&config, &layer)).expect("json")
}

/// Immutable tag rules: who may set them, what they refuse (moving a tag by push or by
/// the API, deleting it or its manifest or repository, over /v2/ and the API), what they
/// let through (the same digest again, other tags, a disabled rule), and a race of
/// pushes of one immutable tag that exactly one wins.
#[tokio::test]
async fn immutable_tag_rules() {
    let b = start("");
    let api = Api::new(&b).await;
    let [maint, dev, guest] =
        project_with_roles(&api, "frozen", ["immaint", "imdev", "imguest"]).await;
    let rules = "/projects/frozen/immutabletagrules";

    // Who may: anyone who sees the project lists; admins and maintainers change.
    let rule = immutable_rule("**", "v*");
    let (s, _, _) = api
        .call(None, Method::POST, rules, Some(rule.clone()))
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    for who in [dev, guest] {
        let (s, _, _) = api
            .call(Some(who), Method::POST, rules, Some(rule.clone()))
            .await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{} adds a rule", who.0);
    }
    let (s, h, v) = api
        .call(Some(maint), Method::POST, rules, Some(rule.clone()))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let location = h["location"].to_str().expect("location").to_string();
    let id: i64 = location
        .strip_prefix("/api/v2.0/projects/frozen/immutabletagrules/")
        .expect("rule location")
        .parse()
        .expect("id");
    let (s, h, list) = api.call(Some(guest), Method::GET, rules, None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(h["x-total-count"], "1");
    assert_eq!(list[0]["id"], id);
    assert_eq!(list[0]["action"], "immutable");
    assert_eq!(list[0]["tag_selectors"][0]["pattern"], "v*");
    assert_eq!(
        list[0]["scope_selectors"]["repository"][0]["decoration"],
        "repoMatches"
    );
    let one = format!("{rules}/{id}");
    for who in [dev, guest] {
        let (s, _, _) = api
            .call(
                Some(who),
                Method::PUT,
                &one,
                Some(json!({"disabled": true})),
            )
            .await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{} changes a rule", who.0);
        let (s, _, _) = api.call(Some(who), Method::DELETE, &one, None).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{} deletes a rule", who.0);
    }

    // What is refused, with the reason.
    for (body, why) in [
        (
            immutable_rule("**", "v[1"),
            "not a valid doublestar pattern",
        ),
        (immutable_rule("**", ""), "empty pattern"),
        (
            json!({"tag_selectors": [{"kind": "regex", "decoration": "matches", "pattern": "v.*"}], "scope_selectors": {"repository": [{"kind": "doublestar", "decoration": "repoMatches", "pattern": "**"}]}}),
            "doublestar",
        ),
        (
            json!({"tag_selectors": [{"kind": "doublestar", "decoration": "matches", "pattern": "v*"}]}),
            "repository selector",
        ),
        (json!({"action": "retain", "tag_selectors": []}), "action"),
        (json!({"colour": "blue"}), "unknown field"),
    ] {
        let (s, _, v) = api.call(Some(maint), Method::POST, rules, Some(body)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        assert!(v.to_string().contains(why), "{why}: {v}");
    }

    // A matching tag is pushed once, and pushed again at the same digest.
    let v1 = push(&b, dev, "frozen/app", "v1", "first").await;
    push(&b, dev, "frozen/app", "v1", "first").await;
    let reg = Registry::new(&b.url).with_auth(dev.0, dev.1);
    // Moving it is refused, naming the rule; the tag stays.
    push(&b, dev, "frozen/app", "other", "second").await;
    let second = manifest_of("second");
    let r = reg
        .put_manifest("frozen/app", "v1", OCI_MANIFEST, &second)
        .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let e: Value = r.json().await.expect("error body");
    assert_eq!(e["errors"][0]["code"], "DENIED", "{e}");
    let msg = e["errors"][0]["message"].as_str().expect("message");
    assert!(
        msg.contains("immutable") && msg.contains(&format!("rule {id}")) && msg.contains("v1"),
        "{msg}"
    );
    let head = reg
        .req(Method::HEAD, "/v2/frozen/app/manifests/v1")
        .send()
        .await
        .expect("head");
    assert_eq!(head.headers()["docker-content-digest"], v1.as_str());
    // The API shows which tags are immutable.
    let (_, _, tags) = api
        .call(
            Some(dev),
            Method::GET,
            &format!("/projects/frozen/repositories/app/artifacts/{v1}/tags"),
            None,
        )
        .await;
    assert_eq!(tags[0]["name"], "v1");
    assert_eq!(tags[0]["immutable"], true, "{tags}");
    let (_, _, art) = api
        .call(
            Some(dev),
            Method::GET,
            "/projects/frozen/repositories/app/artifacts/other",
            None,
        )
        .await;
    assert_eq!(art["tags"][0]["immutable"], false, "{art}");
    // Tags the rule does not match move freely.
    push(&b, dev, "frozen/app", "latest", "first").await;
    push(&b, dev, "frozen/app", "latest", "second").await;
    // The API's "add tag" never moves a tag (409, as Harbor); a new matching tag it
    // adds is then protected like a pushed one.
    let d2 = sha256(&second);
    let tags_of_d2 = format!("/projects/frozen/repositories/app/artifacts/{d2}/tags");
    let (s, _, v) = api
        .call(
            Some(ADMIN),
            Method::POST,
            &tags_of_d2,
            Some(json!({"name": "v1"})),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    let (s, _, v) = api
        .call(
            Some(ADMIN),
            Method::POST,
            &tags_of_d2,
            Some(json!({"name": "v3"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let r = reg
        .put_manifest("frozen/app", "v3", OCI_MANIFEST, &manifest_of("first"))
        .await;
    assert_eq!(
        r.status(),
        StatusCode::FORBIDDEN,
        "v3 is protected once added"
    );

    // Deleting it is refused every way, even for the system administrator.
    let admin_reg = Registry::new(&b.url).with_auth(ADMIN.0, ADMIN.1);
    for path in [
        "/v2/frozen/app/manifests/v1".to_string(),
        format!("/v2/frozen/app/manifests/{v1}"),
    ] {
        let r = admin_reg
            .req(Method::DELETE, &path)
            .send()
            .await
            .expect("delete");
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "DELETE {path}");
        let e: Value = r.json().await.expect("error body");
        assert_eq!(e["errors"][0]["code"], "DENIED", "{e}");
    }
    for path in [
        format!("/projects/frozen/repositories/app/artifacts/{v1}/tags/v1"),
        format!("/projects/frozen/repositories/app/artifacts/{v1}"),
        "/projects/frozen/repositories/app".to_string(),
    ] {
        let (s, _, v) = api.call(Some(ADMIN), Method::DELETE, &path, None).await;
        assert_eq!(s, StatusCode::PRECONDITION_FAILED, "DELETE {path}: {v}");
        assert!(v.to_string().contains("immutable"), "{v}");
    }
    let head = admin_reg
        .req(Method::HEAD, "/v2/frozen/app/manifests/v1")
        .send()
        .await
        .expect("head");
    assert_eq!(head.status(), StatusCode::OK, "nothing was deleted");
    assert_eq!(head.headers()["docker-content-digest"], v1.as_str());
    // A tag a rule matches that does not exist is unknown (404), not refused.
    let r = admin_reg
        .req(Method::DELETE, "/v2/frozen/app/manifests/v9")
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    // Other projects are not affected.
    create_project(&api, ADMIN, "thawed", false).await;
    push(&b, ADMIN, "thawed/app", "v1", "first").await;
    push(&b, ADMIN, "thawed/app", "v1", "second").await;

    // A repository the rule's scope excludes moves freely.
    let (s, _, _) = api
        .call(
            Some(maint),
            Method::PUT,
            &one,
            Some(json!({"scope_selectors": {"repository": [{"kind": "doublestar", "decoration": "repoExcludes", "pattern": "scratch/**"}]}})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    push(&b, dev, "frozen/scratch/tmp", "v1", "first").await;
    push(&b, dev, "frozen/scratch/tmp", "v1", "second").await;
    let r = reg
        .put_manifest("frozen/app", "v1", OCI_MANIFEST, &second)
        .await;
    assert_eq!(
        r.status(),
        StatusCode::FORBIDDEN,
        "still protected outside scratch/"
    );

    // Disabled, the rule lets the tag move; enabled again, it protects the new digest.
    let (s, _, _) = api
        .call(
            Some(maint),
            Method::PUT,
            &one,
            Some(json!({"disabled": true})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (_, _, list) = api.call(Some(maint), Method::GET, rules, None).await;
    assert_eq!(list[0]["disabled"], true);
    assert_eq!(
        list[0]["tag_selectors"][0]["pattern"], "v*",
        "kept by a partial update"
    );
    let r = reg
        .put_manifest("frozen/app", "v1", OCI_MANIFEST, &second)
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let (s, _, _) = api
        .call(
            Some(maint),
            Method::PUT,
            &one,
            Some(json!({"disabled": false})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let first = manifest_of("first");
    let r = reg
        .put_manifest("frozen/app", "v1", OCI_MANIFEST, &first)
        .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    // A race: 8 clients push 8 different images to one new immutable tag at once.
    for i in 0..8 {
        push(
            &b,
            dev,
            "frozen/race",
            &format!("seed-{i}"),
            &format!("race {i}"),
        )
        .await;
    }
    let bodies: Vec<Vec<u8>> = (0..8).map(|i| manifest_of(&format!("race {i}"))).collect();
    let statuses = futures_util::future::join_all(bodies.iter().map(|m| {
        let reg = Registry::new(&b.url).with_auth(dev.0, dev.1);
        async move {
            reg.put_manifest("frozen/race", "v2", OCI_MANIFEST, m)
                .await
                .status()
        }
    }))
    .await;
    let winners: Vec<usize> = (0..8)
        .filter(|i| statuses[*i] == StatusCode::CREATED)
        .collect();
    assert_eq!(winners.len(), 1, "exactly one push wins: {statuses:?}");
    assert!(
        statuses
            .iter()
            .all(|s| *s == StatusCode::CREATED || *s == StatusCode::FORBIDDEN),
        "{statuses:?}"
    );
    let head = reg
        .req(Method::HEAD, "/v2/frozen/race/manifests/v2")
        .send()
        .await
        .expect("head");
    assert_eq!(
        head.headers()["docker-content-digest"],
        sha256(&bodies[winners[0]]).as_str()
    );

    // At most 15 rules a project.
    for i in 1..15 {
        let (s, _, v) = api
            .call(
                Some(maint),
                Method::POST,
                rules,
                Some(immutable_rule("**", &format!("r{i}-*"))),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "rule {i}: {v}");
    }
    let (s, _, v) = api
        .call(
            Some(maint),
            Method::POST,
            rules,
            Some(immutable_rule("**", "r15-*")),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(v.to_string().contains("15"), "{v}");
    let (_, h, page) = api
        .call(
            Some(maint),
            Method::GET,
            &format!("{rules}?page=2&page_size=10"),
            None,
        )
        .await;
    assert_eq!(h["x-total-count"], "15");
    assert_eq!(page.as_array().expect("page").len(), 5);

    // Deleted, the rule protects nothing: the tag can go.
    let (s, _, _) = api.call(Some(maint), Method::DELETE, &one, None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _, _) = api.call(Some(maint), Method::DELETE, &one, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let r = admin_reg
        .req(Method::DELETE, "/v2/frozen/app/manifests/v1")
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), StatusCode::ACCEPTED);
}

/// A monolithic blob upload's answer (status and body), whatever it is.
async fn try_push_blob(reg: &Registry, repo: &str, data: &[u8]) -> (StatusCode, Value) {
    let r = reg.try_push_blob(repo, data).await;
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn quota_of(api: &Api, id: i64) -> (i64, i64) {
    let (s, _, q) = api
        .call(Some(ADMIN), Method::GET, &format!("/quotas/{id}"), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{q}");
    (
        q["hard"]["storage"].as_i64().expect("hard"),
        q["used"]["storage"].as_i64().expect("used"),
    )
}

/// Storage quotas with real pushes: who may set them, each blob counted once per
/// project, a push past the quota refused with the numbers and nothing linked, usage
/// given back by deletes, concurrent pushes never past the quota, and the quota given
/// at project creation.
#[tokio::test]
async fn storage_quotas() {
    let b = start("");
    let api = Api::new(&b).await;
    create_user(&api, "qdev").await;
    let dev = ("qdev", PASSWORD);
    create_project(&api, ADMIN, "quota", false).await;
    assert_eq!(
        add_member(&api, ADMIN, "quota", "qdev", 2).await,
        StatusCode::CREATED
    );
    let id = got_project_id(&api, "quota").await;
    let one = format!("/quotas/{id}");

    // Who may: system administrators only.
    let set = |n: i64| Some(json!({"hard": {"storage": n}}));
    let (s, _, _) = api.call(None, Method::PUT, &one, set(1000)).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    for (method, path) in [
        (Method::PUT, one.as_str()),
        (Method::GET, one.as_str()),
        (Method::GET, "/quotas"),
    ] {
        let body = (method == Method::PUT).then(|| json!({"hard": {"storage": 1000}}));
        let (s, _, _) = api.call(Some(dev), method.clone(), path, body).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{method} {path} as a developer");
    }
    for (body, why) in [
        (json!({"hard": {"count": 5}}), "hard.count"),
        (json!({"hard": {"storage": -5}}), "-1 for no limit"),
        (json!({"hard": {}}), "hard.storage is required"),
    ] {
        let (s, _, v) = api.call(Some(ADMIN), Method::PUT, &one, Some(body)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        assert!(v.to_string().contains(why), "{why}: {v}");
    }
    let (s, _, _) = api.call(Some(ADMIN), Method::PUT, &one, set(1000)).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(quota_of(&api, id).await, (1000, 0));

    // Each blob once per project, whichever repositories hold it.
    let reg = Registry::new(&b.url).with_auth(dev.0, dev.1);
    let a = vec![b'a'; 600];
    reg.push_blob("quota/app", &a).await;
    assert_eq!(quota_of(&api, id).await, (1000, 600));
    reg.push_blob("quota/other", &a).await;
    assert_eq!(quota_of(&api, id).await, (1000, 600), "counted once");
    // Past the quota: 403 DENIED with the numbers, nothing linked.
    let big = vec![b'b'; 500];
    let (s, e) = try_push_blob(&reg, "quota/app", &big).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{e}");
    assert_eq!(e["errors"][0]["code"], "DENIED", "{e}");
    let msg = e["errors"][0]["message"].as_str().expect("message");
    for n in ["quota", "1000", "600", "500"] {
        assert!(msg.contains(n), "{n} in {msg}");
    }
    let r = reg
        .req(
            Method::HEAD,
            &format!("/v2/quota/app/blobs/{}", sha256(&big)),
        )
        .send()
        .await
        .expect("head");
    assert_eq!(r.status(), StatusCode::NOT_FOUND, "nothing linked");
    // Up to the byte is fine.
    let c = vec![b'c'; 400];
    reg.push_blob("quota/app", &c).await;
    assert_eq!(quota_of(&api, id).await, (1000, 1000));
    // Full: a new upload is refused before any byte is sent; a blob the repository
    // holds already may be pushed again.
    let r = reg
        .req(Method::POST, "/v2/quota/app/blobs/uploads/")
        .send()
        .await
        .expect("start");
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let e: Value = r.json().await.expect("error body");
    assert_eq!(e["errors"][0]["code"], "DENIED", "{e}");
    let msg = e["errors"][0]["message"].as_str().expect("message");
    assert!(
        msg.contains("no new blob fits") && msg.contains("1000"),
        "{msg}"
    );
    let (s, e) = try_push_blob(&reg, "quota/app", &a).await;
    assert_eq!(s, StatusCode::CREATED, "{e}");
    let (_, _, summary) = api
        .call(Some(dev), Method::GET, "/projects/quota/summary", None)
        .await;
    assert_eq!(summary["quota"]["hard"]["storage"], 1000, "{summary}");
    assert_eq!(summary["quota"]["used"]["storage"], 1000, "{summary}");
    // A delete gives it back.
    let r = Registry::new(&b.url)
        .with_auth(ADMIN.0, ADMIN.1)
        .req(
            Method::DELETE,
            &format!("/v2/quota/app/blobs/{}", sha256(&c)),
        )
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(quota_of(&api, id).await, (1000, 600));

    // 8 clients push 8 different 100-byte blobs at once with room for 5: exactly 5 win.
    let (s, _, _) = api.call(Some(ADMIN), Method::PUT, &one, set(1100)).await;
    assert_eq!(s, StatusCode::OK);
    let blobs: Vec<Vec<u8>> = (0..8u8).map(|i| vec![b'0' + i; 100]).collect();
    let answers = futures_util::future::join_all(blobs.iter().enumerate().map(|(i, data)| {
        let reg = Registry::new(&b.url).with_auth(dev.0, dev.1);
        async move {
            try_push_blob(&reg, &format!("quota/race{}", i % 3), data)
                .await
                .0
        }
    }))
    .await;
    let won = answers
        .iter()
        .filter(|s| **s == StatusCode::CREATED)
        .count();
    let refused = answers
        .iter()
        .filter(|s| **s == StatusCode::FORBIDDEN)
        .count();
    assert_eq!((won, refused), (5, 3), "{answers:?}");
    assert_eq!(quota_of(&api, id).await, (1100, 1100));

    // No limit: still counted. A deleted repository gives back what only it held.
    let (s, _, _) = api.call(Some(ADMIN), Method::PUT, &one, set(-1)).await;
    assert_eq!(s, StatusCode::OK);
    reg.push_blob("quota/app", &big).await;
    assert_eq!(quota_of(&api, id).await, (-1, 1600));
    for r in ["app", "race0", "race1", "race2"] {
        let (s, _, v) = api
            .call(
                Some(ADMIN),
                Method::DELETE,
                &format!("/projects/quota/repositories/{r}"),
                None,
            )
            .await;
        // A race repository whose every push was refused was never created.
        assert!(
            s == StatusCode::OK || (r != "app" && s == StatusCode::NOT_FOUND),
            "delete {r}: {s} {v}"
        );
    }
    assert_eq!(
        quota_of(&api, id).await,
        (-1, 600),
        "quota/other still holds a"
    );
    let (s, h, list) = api
        .call(
            Some(ADMIN),
            Method::GET,
            "/quotas?page=1&page_size=10",
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(h["x-total-count"], "1");
    assert_eq!(list[0]["ref"]["name"], "quota");

    // At creation: an administrator's storage_limit is taken; a user's is not.
    let (s, _, v) = api
        .call(
            Some(ADMIN),
            Method::POST,
            "/projects",
            Some(json!({"project_name": "sized", "storage_limit": 2048})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let sized = got_project_id(&api, "sized").await;
    let (_, _, q) = api
        .call(
            Some(ADMIN),
            Method::GET,
            &format!("/quotas?reference=project&reference_id={sized}"),
            None,
        )
        .await;
    assert_eq!(q[0]["hard"]["storage"], 2048, "{q}");
    let (s, _, v) = api
        .call(
            Some(dev),
            Method::POST,
            "/projects",
            Some(json!({"project_name": "mine", "storage_limit": 5})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let mine = got_project_id(&api, "mine").await;
    let (_, _, q) = api
        .call(
            Some(ADMIN),
            Method::GET,
            &format!("/quotas?reference=project&reference_id={mine}"),
            None,
        )
        .await;
    assert_eq!(q, json!([]), "a user sets no quota");
}

/// `auth.berth.storagequota` gives every new project its quota.
#[tokio::test]
async fn a_default_quota_for_new_projects() {
    let b = start("    storagequota: 1KiB\n");
    let api = Api::new(&b).await;
    create_project(&api, ADMIN, "small", false).await;
    let id = got_project_id(&api, "small").await;
    assert_eq!(quota_of(&api, id).await, (1024, 0));
    let reg = Registry::new(&b.url).with_auth(ADMIN.0, ADMIN.1);
    reg.push_blob("small/app", &[7u8; 1000]).await;
    let (s, _) = try_push_blob(&reg, "small/app", &[8u8; 100]).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
}

async fn wait_for_run(api: &Api, id: i64) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (s, _, run) = api
            .call(Some(ADMIN), Method::GET, &format!("/system/gc/{id}"), None)
            .await;
        assert_eq!(s, StatusCode::OK);
        if run["job_status"] != "Running" {
            return run;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "run {id} still running: {run}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Harbor's own Python client, unchanged, against Berth.
#[test]
fn harborapi_client_works_unchanged() {
    let python = common::python();
    let b = start("");
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/harbor/harborapi_check.py");
    let out = std::process::Command::new(python)
        .arg(&script)
        .arg(format!("{}/api/v2.0", b.url))
        .arg(&b.url)
        .env("HARBOR_USER", ADMIN.0)
        .env("HARBOR_PASSWORD", ADMIN.1)
        .output()
        .expect("python");
    assert!(
        out.status.success(),
        "harborapi check failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("harborapi: all checks passed"), "{text}");
    assert!(text.contains("registries ok"), "{text}");
}

fn retention_rule(template: &str, n: i64, repos: &str, tags: &str, untagged: bool) -> Value {
    let params = if template == "always" {
        json!({})
    } else {
        json!({ template: n })
    };
    json!({
        "disabled": false,
        "action": "retain",
        "template": template,
        "params": params,
        "tag_selectors": [{"kind": "doublestar", "decoration": "matches", "pattern": tags, "extras": format!("{{\"untagged\":{untagged}}}")}],
        "scope_selectors": {"repository": [{"kind": "doublestar", "decoration": "repoMatches", "pattern": repos}]},
    })
}

fn retention_policy(project_id: i64, rules: Vec<Value>, cron: &str) -> Value {
    json!({
        "algorithm": "or",
        "rules": rules,
        "trigger": {"kind": "Schedule", "settings": {"cron": cron}, "references": {}},
        "scope": {"level": "project", "ref": project_id},
    })
}

/// Run policy `id` now (`dry_run`) as `who` and wait for the run to end; the run's
/// listing entry and its tasks.
async fn run_retention(api: &Api, who: (&str, &str), id: i64, dry_run: bool) -> (Value, Value) {
    let runs = format!("/retentions/{id}/executions");
    let (s, h, v) = api
        .call(
            Some(who),
            Method::POST,
            &runs,
            Some(json!({"dry_run": dry_run})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let location = h["location"].to_str().expect("location").to_string();
    let run: i64 = location
        .rsplit('/')
        .next()
        .and_then(|r| r.parse().ok())
        .expect("run id");
    assert_eq!(
        location,
        format!("/api/v2.0/retentions/{id}/executions/{run}")
    );
    for _ in 0..300 {
        let (_, _, list) = api.call(Some(who), Method::GET, &runs, None).await;
        let entry = list
            .as_array()
            .expect("runs")
            .iter()
            .find(|r| r["id"] == run)
            .cloned()
            .expect("listed");
        if entry["status"] != "Running" {
            let (s, _, tasks) = api
                .call(Some(who), Method::GET, &format!("{runs}/{run}/tasks"), None)
                .await;
            assert_eq!(s, StatusCode::OK);
            return (entry, tasks);
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("retention run {run} did not end within 30 s");
}

/// A task's log, as text.
async fn task_log(b: &Berth, who: (&str, &str), id: i64, run: &Value, task: &Value) -> String {
    Client::new()
        .get(format!(
            "{}/api/v2.0/retentions/{id}/executions/{}/tasks/{}",
            b.url, run["id"], task["id"]
        ))
        .basic_auth(who.0, Some(who.1))
        .send()
        .await
        .expect("log")
        .text()
        .await
        .expect("text")
}

/// Tag retention: who may set and run a policy, what each rule keeps (most recently
/// pushed, pulled within N days, always by pattern, untagged artifacts), immutable tags
/// and other repositories untouched, an index's children going with it, dry runs that
/// delete nothing, runs recorded with per-repository tasks and logs, the schedule, and
/// the policy's removal.
#[tokio::test]
async fn tag_retention() {
    let b = start("");
    let api = Api::new(&b).await;
    let [maint, dev, guest] =
        project_with_roles(&api, "ret", ["retmaint", "retdev", "retguest"]).await;
    let (_, _, project) = api
        .call(Some(ADMIN), Method::GET, "/projects/ret", None)
        .await;
    let pid = project["project_id"].as_i64().expect("project id");
    let (s, _, meta) = api
        .call(Some(guest), Method::GET, "/retentions/metadatas", None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(meta["templates"].as_array().expect("templates").len(), 5);

    // Content, oldest first, a second apart: v1 (immutable), v2, v3, v4, keep-me, one
    // untagged image, an index tagged idx with two untagged children, and another
    // repository no rule covers.
    let mut pushed = BTreeMap::new();
    for (tag, salt) in [
        ("v1", "r1"),
        ("v2", "r2"),
        ("idx", ""),
        ("v3", "r3"),
        ("v4", "r4"),
        ("keep-me", "rk"),
    ] {
        if tag == "idx" {
            let reg = Registry::new(&b.url).with_auth(dev.0, dev.1);
            let mut children = Vec::new();
            for salt in ["child-a", "child-b"] {
                let m = manifest_of(salt);
                let config = format!("{{\"salt\":\"{salt}\"}}").into_bytes();
                reg.push_blob("ret/app", &config).await;
                reg.push_blob("ret/app", format!("layer {salt}").as_bytes())
                    .await;
                let d = sha256(&m);
                let r = reg
                    .put_manifest("ret/app", d.as_str(), OCI_MANIFEST, &m)
                    .await;
                assert_eq!(r.status(), StatusCode::CREATED);
                children.push(
                    json!({"mediaType": OCI_MANIFEST, "digest": d.as_str(), "size": m.len()}),
                );
                pushed.insert(salt.to_string(), d);
            }
            let index = serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": children})).expect("json");
            let r = reg
                .put_manifest(
                    "ret/app",
                    "idx",
                    "application/vnd.oci.image.index.v1+json",
                    &index,
                )
                .await;
            assert_eq!(r.status(), StatusCode::CREATED);
            pushed.insert("idx".to_string(), sha256(&index));
        } else {
            pushed.insert(tag.to_string(), push(&b, dev, "ret/app", tag, salt).await);
        }
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    }
    let reg = Registry::new(&b.url).with_auth(dev.0, dev.1);
    let loose = manifest_of("untagged");
    reg.push_blob("ret/app", b"{\"salt\":\"untagged\"}").await;
    reg.push_blob("ret/app", b"layer untagged").await;
    let loose_digest = sha256(&loose);
    let r = reg
        .put_manifest("ret/app", loose_digest.as_str(), OCI_MANIFEST, &loose)
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let other = push(&b, dev, "ret/other", "v0", "o0").await;
    let (s, _, _) = api
        .call(
            Some(maint),
            Method::POST,
            "/projects/ret/immutabletagrules",
            Some(immutable_rule("**", "v1")),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let present = |repo: &'static str, d: oci::Digest| {
        let reg = Registry::new(&b.url).with_auth(dev.0, dev.1);
        async move {
            reg.req(Method::HEAD, &format!("/v2/{repo}/manifests/{d}"))
                .send()
                .await
                .expect("head")
                .status()
                == StatusCode::OK
        }
    };

    // Keep the 2 most recently pushed v* (untagged not selected), and keep-* always,
    // in repository app only.
    let policy = retention_policy(
        pid,
        vec![
            retention_rule("latestPushedK", 2, "app", "v*", false),
            retention_rule("always", 0, "app", "keep-*", false),
        ],
        "",
    );
    let (s, _, _) = api
        .call(None, Method::POST, "/retentions", Some(policy.clone()))
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    for who in [dev, guest] {
        let (s, _, _) = api
            .call(Some(who), Method::POST, "/retentions", Some(policy.clone()))
            .await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{} sets a policy", who.0);
    }
    let mut bad = policy.clone();
    bad["rules"][0]["template"] = json!("latestK");
    let (s, _, v) = api
        .call(Some(maint), Method::POST, "/retentions", Some(bad))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(v.to_string().contains("template"), "{v}");
    let (s, h, v) = api
        .call(
            Some(maint),
            Method::POST,
            "/retentions",
            Some(policy.clone()),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let id: i64 = h["location"]
        .to_str()
        .expect("location")
        .strip_prefix("/api/v2.0/retentions/")
        .and_then(|i| i.parse().ok())
        .expect("policy id");
    let (s, _, v) = api
        .call(
            Some(maint),
            Method::POST,
            "/retentions",
            Some(policy.clone()),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "one per project: {v}");
    let (_, _, project) = api
        .call(Some(guest), Method::GET, "/projects/ret", None)
        .await;
    assert_eq!(project["metadata"]["retention_id"], id.to_string());
    let (s, _, got) = api
        .call(Some(guest), Method::GET, &format!("/retentions/{id}"), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        (got["id"].as_i64(), got["rules"][1]["id"].as_i64()),
        (Some(id), Some(2))
    );
    assert_eq!(got["scope"]["ref"], pid);
    for who in [dev, guest] {
        let (s, _, _) = api
            .call(
                Some(who),
                Method::POST,
                &format!("/retentions/{id}/executions"),
                Some(json!({"dry_run": true})),
            )
            .await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{} runs the policy", who.0);
    }

    // A dry run lists what would go and deletes nothing.
    let (run, tasks) = run_retention(&api, maint, id, true).await;
    assert_eq!(
        (
            run["status"].as_str(),
            run["dry_run"].as_bool(),
            run["trigger"].as_str()
        ),
        (Some("Succeed"), Some(true), Some("MANUAL"))
    );
    assert_eq!(
        tasks.as_array().expect("tasks").len(),
        1,
        "only ret/app is covered: {tasks}"
    );
    assert_eq!(tasks[0]["repository"], "ret/app");
    // Artifacts: v1..v4, keep-me, idx, the untagged one; kept: v1 (immutable), v3, v4, keep-me.
    assert_eq!(
        (tasks[0]["total"].as_u64(), tasks[0]["retained"].as_u64()),
        (Some(7), Some(4))
    );
    let log = task_log(&b, guest, id, &run, &tasks[0]).await;
    for gone in [&pushed["v2"], &pushed["idx"], &loose_digest] {
        assert!(log.contains(&format!("would delete {gone}")), "{log}");
    }
    assert!(
        log.contains(&format!(
            "kept {} (tags v1): tag v1 is immutable",
            pushed["v1"]
        )),
        "{log}"
    );
    for d in pushed.values() {
        assert!(present("ret/app", d.clone()).await, "a dry run deleted {d}");
    }

    // The real run.
    let (run, tasks) = run_retention(&api, maint, id, false).await;
    assert_eq!(run["status"], "Succeed", "{run}");
    let log = task_log(&b, maint, id, &run, &tasks[0]).await;
    assert!(
        log.contains("deleted 2 manifests that only the deleted artifacts listed"),
        "{log}"
    );
    for kept in ["v1", "v3", "v4", "keep-me"] {
        assert!(
            present("ret/app", pushed[kept].clone()).await,
            "{kept} was deleted: {log}"
        );
    }
    for gone in ["v2", "idx", "child-a", "child-b"] {
        assert!(
            !present("ret/app", pushed[gone].clone()).await,
            "{gone} was kept: {log}"
        );
    }
    assert!(
        !present("ret/app", loose_digest.clone()).await,
        "the untagged image was kept"
    );
    assert!(
        present("ret/other", other.clone()).await,
        "another repository was touched"
    );

    // Pulled within a day: pull v3 by tag, wait until its pull time is recorded.
    let r = reg
        .req(Method::GET, "/v2/ret/app/manifests/v3")
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .expect("pull");
    assert_eq!(r.status(), StatusCode::OK);
    let artifact = format!("/projects/ret/repositories/app/artifacts/{}", pushed["v3"]);
    let mut recorded = false;
    for _ in 0..150 {
        let (_, _, a) = api.call(Some(guest), Method::GET, &artifact, None).await;
        if !a["pull_time"]
            .as_str()
            .expect("pull_time")
            .starts_with("0001")
        {
            recorded = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(recorded, "the pull time of v3 was not recorded within 15 s");
    let pulled = retention_policy(
        pid,
        vec![retention_rule("nDaysSinceLastPull", 1, "**", "**", true)],
        "",
    );
    for who in [dev, guest] {
        let (s, _, _) = api
            .call(
                Some(who),
                Method::PUT,
                &format!("/retentions/{id}"),
                Some(pulled.clone()),
            )
            .await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{} changes the policy", who.0);
    }
    let mut moved = pulled.clone();
    moved["scope"]["ref"] = json!(pid + 1000);
    let (s, _, _) = api
        .call(
            Some(maint),
            Method::PUT,
            &format!("/retentions/{id}"),
            Some(moved),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _, _) = api
        .call(
            Some(maint),
            Method::PUT,
            &format!("/retentions/{id}"),
            Some(pulled),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (run, tasks) = run_retention(&api, maint, id, false).await;
    assert_eq!(run["status"], "Succeed");
    assert_eq!(
        tasks.as_array().expect("tasks").len(),
        2,
        "both repositories now: {tasks}"
    );
    assert!(
        present("ret/app", pushed["v3"].clone()).await,
        "pulled today"
    );
    assert!(present("ret/app", pushed["v1"].clone()).await, "immutable");
    for gone in ["v4", "keep-me"] {
        assert!(
            !present("ret/app", pushed[gone].clone()).await,
            "{gone} never pulled, kept"
        );
    }
    assert!(
        !present("ret/other", other).await,
        "ret/other is covered now"
    );

    // Stopping: only "stop" is an action; a finished run stays as it ended.
    let runs = format!("/retentions/{id}/executions");
    let one = format!("{runs}/{}", run["id"]);
    let (s, _, _) = api
        .call(
            Some(maint),
            Method::PATCH,
            &one,
            Some(json!({"action": "pause"})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _, _) = api
        .call(
            Some(guest),
            Method::PATCH,
            &one,
            Some(json!({"action": "stop"})),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _, _) = api
        .call(
            Some(maint),
            Method::PATCH,
            &one,
            Some(json!({"action": "stop"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);

    // The schedule: every 2 seconds, run by the node's scheduler, then off again.
    let scheduled = retention_policy(
        pid,
        vec![retention_rule("always", 0, "**", "**", true)],
        "*/2 * * * * *",
    );
    let (s, _, _) = api
        .call(
            Some(maint),
            Method::PUT,
            &format!("/retentions/{id}"),
            Some(scheduled),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let mut ran = false;
    for _ in 0..200 {
        let (_, _, list) = api.call(Some(guest), Method::GET, &runs, None).await;
        if list
            .as_array()
            .expect("runs")
            .iter()
            .any(|r| r["trigger"] == "SCHEDULE" && r["status"] == "Succeed")
        {
            ran = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(ran, "no scheduled run within 20 s");
    let (_, h, _) = api
        .call(
            Some(guest),
            Method::GET,
            &format!("{runs}?page_size=1"),
            None,
        )
        .await;
    assert!(
        h["x-total-count"]
            .to_str()
            .expect("count")
            .parse::<u64>()
            .expect("n")
            >= 4
    );

    // Deleting the policy takes its history; the project no longer names it.
    let (s, _, _) = api
        .call(
            Some(dev),
            Method::DELETE,
            &format!("/retentions/{id}"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _, _) = api
        .call(
            Some(maint),
            Method::DELETE,
            &format!("/retentions/{id}"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _, _) = api
        .call(Some(maint), Method::GET, &format!("/retentions/{id}"), None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (_, _, project) = api
        .call(Some(guest), Method::GET, "/projects/ret", None)
        .await;
    assert!(
        project["metadata"].get("retention_id").is_none(),
        "{project}"
    );
}

/// The rules that read times, with real pushes and pulls: the most recently pulled N
/// (a pull is a manifest GET, not a HEAD), and pushed within N days.
#[tokio::test]
async fn retention_by_pull_and_push_times() {
    let b = start("");
    let api = Api::new(&b).await;
    create_project(&api, ADMIN, "times", false).await;
    let (_, _, project) = api
        .call(Some(ADMIN), Method::GET, "/projects/times", None)
        .await;
    let pid = project["project_id"].as_i64().expect("project id");
    let mut pulled = Vec::new();
    for t in ["a", "b", "c"] {
        pulled.push(push(&b, ADMIN, "times/pulled", t, &format!("p{t}")).await);
    }
    let fresh = push(&b, ADMIN, "times/fresh", "x", "fx").await;
    let reg = Registry::new(&b.url).with_auth(ADMIN.0, ADMIN.1);
    // b is pulled; c is only looked at (HEAD), which is no pull.
    let r = reg
        .req(Method::GET, "/v2/times/pulled/manifests/b")
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .expect("pull");
    assert_eq!(r.status(), StatusCode::OK);
    let r = reg
        .req(Method::HEAD, "/v2/times/pulled/manifests/c")
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .expect("head");
    assert_eq!(r.status(), StatusCode::OK);
    let artifact = |d: &oci::Digest| format!("/projects/times/repositories/pulled/artifacts/{d}");
    let mut recorded = false;
    for _ in 0..150 {
        let (_, _, a) = api
            .call(Some(ADMIN), Method::GET, &artifact(&pulled[1]), None)
            .await;
        if !a["pull_time"]
            .as_str()
            .expect("pull_time")
            .starts_with("0001")
        {
            recorded = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(recorded, "the pull of b was not recorded within 15 s");
    let (_, _, c) = api
        .call(Some(ADMIN), Method::GET, &artifact(&pulled[2]), None)
        .await;
    assert!(
        c["pull_time"]
            .as_str()
            .expect("pull_time")
            .starts_with("0001"),
        "a HEAD is no pull: {c}"
    );
    let (_, _, tags) = api
        .call(
            Some(ADMIN),
            Method::GET,
            &format!("{}/tags", artifact(&pulled[1])),
            None,
        )
        .await;
    assert!(
        !tags[0]["pull_time"]
            .as_str()
            .expect("pull_time")
            .starts_with("0001"),
        "{tags}"
    );

    let policy = retention_policy(
        pid,
        vec![
            retention_rule("latestPulledN", 1, "pulled", "**", true),
            retention_rule("nDaysSinceLastPush", 1, "fresh", "**", true),
        ],
        "",
    );
    let (s, h, v) = api
        .call(Some(ADMIN), Method::POST, "/retentions", Some(policy))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let id: i64 = h["location"]
        .to_str()
        .expect("location")
        .rsplit('/')
        .next()
        .and_then(|i| i.parse().ok())
        .expect("policy id");
    let (run, tasks) = run_retention(&api, ADMIN, id, false).await;
    assert_eq!(run["status"], "Succeed", "{run}");
    let tasks = tasks.as_array().expect("tasks");
    let of = |repo: &str| {
        tasks
            .iter()
            .find(|t| t["repository"] == repo)
            .cloned()
            .expect("task")
    };
    assert_eq!(
        (
            of("times/pulled")["total"].as_u64(),
            of("times/pulled")["retained"].as_u64()
        ),
        (Some(3), Some(1))
    );
    assert_eq!(
        (
            of("times/fresh")["total"].as_u64(),
            of("times/fresh")["retained"].as_u64()
        ),
        (Some(1), Some(1))
    );
    let status = |repo: &'static str, d: oci::Digest| {
        let reg = Registry::new(&b.url).with_auth(ADMIN.0, ADMIN.1);
        async move {
            reg.req(Method::HEAD, &format!("/v2/{repo}/manifests/{d}"))
                .send()
                .await
                .expect("head")
                .status()
        }
    };
    assert_eq!(
        status("times/pulled", pulled[1].clone()).await,
        StatusCode::OK,
        "b was the pulled one"
    );
    for gone in [&pulled[0], &pulled[2]] {
        assert_eq!(
            status("times/pulled", gone.clone()).await,
            StatusCode::NOT_FOUND
        );
    }
    assert_eq!(
        status("times/fresh", fresh).await,
        StatusCode::OK,
        "pushed today"
    );
}

/// `/api/v2.0/registries` and `/replication/adapters` in the document's shapes: a Berth
/// registered as an upstream of itself (token auth on its own host) checks healthy;
/// validation, conflicts, the hidden secret kept when sent back, updates, deletion
/// refused while a proxy-cache project uses the registry, and system administrators
/// only.
#[tokio::test(flavor = "multi_thread")]
async fn upstream_registries() {
    let b = start("");
    let api = Api::new(&b).await;
    create_user(&api, "rdev").await;
    let dev = ("rdev", PASSWORD);
    for (method, path) in [
        (Method::GET, "/registries"),
        (Method::POST, "/registries"),
        (Method::GET, "/replication/adapters"),
        (Method::POST, "/registries/ping"),
    ] {
        let body = (method == Method::POST).then(|| json!({"name": "x"}));
        let (s, _, _) = api.call(Some(dev), method.clone(), path, body).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{method} {path} as a user");
    }
    let (s, _, adapters) = api
        .call(Some(ADMIN), Method::GET, "/replication/adapters", None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert!(adapters
        .as_array()
        .expect("array")
        .contains(&json!("harbor")));

    let own = json!({"name": "self", "type": "harbor", "url": b.url,
        "credential": {"type": "basic", "access_key": ADMIN.0, "access_secret": ADMIN.1}});
    for (body, why) in [
        (json!({"type": "harbor", "url": b.url}), "name is required"),
        (
            json!({"name": "a", "type": "aws-ecr", "url": b.url}),
            "aws-ecr\\\" is not supported",
        ),
        (
            json!({"name": "a", "type": "harbor", "url": "ftp://x"}),
            "http:// or https://",
        ),
        (
            json!({"name": "a", "type": "harbor", "url": b.url, "credential": {"access_key": "u"}}),
            "access_secret is required",
        ),
    ] {
        let (s, _, v) = api
            .call(Some(ADMIN), Method::POST, "/registries", Some(body))
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        assert!(v.to_string().contains(why), "{why}: {v}");
    }
    let (s, _, _) = api
        .call(
            Some(ADMIN),
            Method::POST,
            "/registries/ping",
            Some(own.clone()),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "Berth answers as an upstream of itself");
    let (s, headers, _) = api
        .call(Some(ADMIN), Method::POST, "/registries", Some(own.clone()))
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let location = headers["location"].to_str().expect("location").to_string();
    let path = location.trim_start_matches("/api/v2.0");
    let (s, _, _) = api
        .call(Some(ADMIN), Method::POST, "/registries", Some(own.clone()))
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    let (s, _, r) = api.call(Some(ADMIN), Method::GET, path, None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(r["status"], "healthy", "{r}");
    assert_eq!(r["credential"]["access_secret"], "*****");
    // What a client read, sent back: the secret stays (the ping by id still passes).
    let mut back = r.clone();
    back["description"] = json!("this Berth");
    let (s, _, _) = api.call(Some(ADMIN), Method::PUT, path, Some(back)).await;
    assert_eq!(s, StatusCode::OK);
    let id = r["id"].as_i64().expect("id");
    let (s, _, v) = api
        .call(
            Some(ADMIN),
            Method::POST,
            "/registries/ping",
            Some(json!({"id": id})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, _, v) = api
        .call(
            Some(ADMIN),
            Method::POST,
            "/registries/ping",
            Some(
                json!({"id": id, "credential": {"access_key": "admin", "access_secret": "wrong"}}),
            ),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(v.to_string().contains("credentials"), "{v}");
    let (s, _, list) = api
        .call(Some(ADMIN), Method::GET, "/registries?q=name%3D~sel", None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(list[0]["description"], "this Berth");
    assert_eq!(
        list[0]["status"], "healthy",
        "an unsaved ping changes nothing"
    );

    // In use by a proxy-cache project: kept.
    let (s, _, v) = api
        .call(
            Some(ADMIN),
            Method::POST,
            "/projects",
            Some(json!({"project_name": "cache", "registry_id": id})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, _, p) = api
        .call(Some(ADMIN), Method::GET, "/projects/cache", None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(p["registry_id"], id);
    // The cache serves what its upstream (this Berth's `lib`) holds, under its own name.
    create_project(&api, ADMIN, "lib", false).await;
    let v1 = push(&b, ADMIN, "lib/app", "v1", "served through the cache").await;
    push(&b, ADMIN, "lib/app", "v2", "asked for after the change").await;
    let reg = Registry::new(&b.url).with_auth(ADMIN.0, ADMIN.1);
    let get = |tag: &str| {
        reg.req(Method::GET, &format!("/v2/cache/lib/app/manifests/{tag}"))
            .header("accept", OCI_MANIFEST)
            .send()
    };
    let r = get("v1").await.expect("GET");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.headers()["docker-content-digest"]
            .to_str()
            .expect("digest"),
        v1.as_str()
    );
    // Wrong credentials, at once (within the same second as the last change): the
    // next uncached pull uses them and says whose they are.
    let (s, _, v) = api
        .call(
            Some(ADMIN),
            Method::PUT,
            path,
            Some(json!({"credential": {"access_key": "admin", "access_secret": "wrong"}})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let r = get("v2").await.expect("GET");
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    let text = r.text().await.expect("body");
    assert!(text.contains("credentials of registry"), "{text}");
    // Moving the registry elsewhere without sending the secret again is refused: the
    // stored secret never goes to another host.
    for (method, p) in [(Method::PUT, path), (Method::POST, "/registries/ping")] {
        let (s, _, v) = api
            .call(
                Some(ADMIN),
                method.clone(),
                p,
                Some(json!({"id": id, "url": "http://127.0.0.2:9"})),
            )
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{method} {p}: {v}");
        assert!(v.to_string().contains("access_secret again"), "{v}");
    }
    // No push into the cache, by /v2/ or by the API's tag creation.
    let r = reg
        .req(Method::POST, "/v2/cache/lib/app/blobs/uploads/")
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = reg
        .req(Method::PUT, "/v2/cache/lib/app/manifests/mine")
        .header("content-type", OCI_MANIFEST)
        .body("{}")
        .send()
        .await
        .expect("PUT");
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(r.text().await.expect("body").contains("proxy cache"));
    let (s, _, v) = api
        .call(
            Some(ADMIN),
            Method::POST,
            "/projects/cache/repositories/lib%252Fapp/artifacts/v1/tags",
            Some(json!({"name": "planted"})),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    let (s, _, _) = api
        .call(
            Some(ADMIN),
            Method::DELETE,
            "/projects/cache/repositories/lib%252Fapp",
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "a cached repository can be deleted");
    let (s, _, v) = api.call(Some(ADMIN), Method::DELETE, path, None).await;
    assert_eq!(s, StatusCode::PRECONDITION_FAILED, "{v}");
    assert!(v.to_string().contains("cache"), "{v}");
    let (s, _, _) = api
        .call(Some(ADMIN), Method::DELETE, "/projects/cache", None)
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _, _) = api.call(Some(ADMIN), Method::DELETE, path, None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _, _) = api.call(Some(ADMIN), Method::GET, path, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}
