//! Multi-tenancy (`auth.berth`) through real clients: skopeo with `--dest-creds` and
//! `--src-creds`, podman's login, push and pull, and robot accounts through skopeo. Each
//! client goes through Berth's token flow (a 401 challenge, a token from
//! `/service/token` with Basic credentials, the request again with the token); every
//! allowed case is checked against what the server then holds, and every refused one
//! against what the client reports and what the server does not hold.

mod common;

use common::layout::{layer_tar_gz, plain_tar, Layout};
use common::push::{OCI_CONFIG, OCI_LAYER_GZIP, OCI_MANIFEST};
use common::tools::{empty_auth_file, podman, skopeo};
use common::Berth;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};

const ADMIN_PASSWORD: &str = "Harbor12345";
const USER_PASSWORD: &str = "Passw0rdUser";

/// A server with `auth.berth`, projects `team` (private), `open` (public) and `other`
/// (private); users `dev` (developer in team), `visitor` (guest in team) and `outsider`
/// (no role).
fn start() -> Berth {
    let b = Berth::start_with(&format!(
        "auth:\n  berth:\n    adminpassword: {ADMIN_PASSWORD}\n"
    ));
    b.cli(&["project", "create", "team"], None);
    b.cli(&["project", "create", "open", "--public"], None);
    b.cli(&["project", "create", "other"], None);
    for user in ["dev", "visitor", "outsider"] {
        b.cli(&["user", "add", user], Some(USER_PASSWORD));
    }
    for (user, role) in [("dev", "developer"), ("visitor", "guest")] {
        b.cli(
            &["project", "add-member", "team", user, "--role", role],
            None,
        );
    }
    b
}

/// A tiny OCI layout image tagged `v1` in `dir`, unique to `salt`; its manifest digest.
fn layout_image(dir: &Path, salt: &str) -> String {
    let mut layout = Layout::create(dir);
    let (layer, diff_id) = layer_tar_gz(&[("salt.txt", format!("{salt}\n").as_bytes())]);
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [diff_id.as_str()]},
    });
    let config = layout.put_blob(OCI_CONFIG, config.to_string().as_bytes());
    let layer = layout.put_blob(OCI_LAYER_GZIP, &layer);
    let manifest = layout.put_manifest(config, vec![layer], false);
    layout.tag(&manifest, "v1");
    manifest["digest"].as_str().expect("digest").to_string()
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// skopeo with an empty auth file of its own (never the user's logins).
fn sk(auth: &Path) -> Command {
    let mut c = skopeo();
    c.env("REGISTRY_AUTH_FILE", auth);
    c
}

/// `skopeo copy` with `creds` for the source or destination, as given.
fn copy(
    auth: &Path,
    src_creds: Option<&str>,
    dest_creds: Option<&str>,
    from: &str,
    to: &str,
) -> Output {
    let mut c = sk(auth);
    c.args([
        "copy",
        "--preserve-digests",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
    ]);
    if let Some(creds) = src_creds {
        c.args(["--src-creds", creds]);
    }
    if let Some(creds) = dest_creds {
        c.args(["--dest-creds", creds]);
    }
    c.args([from, to]).output().expect("skopeo copy")
}

/// The digest `repo:tag` has on the server, asked as the administrator; `None` when the
/// tag does not exist.
fn served_digest(b: &Berth, repo: &str, tag: &str) -> Option<String> {
    let url = format!("{}/v2/{repo}/manifests/{tag}", b.url);
    let r = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(async move {
            reqwest::Client::new()
                .head(url)
                .basic_auth("admin", Some(ADMIN_PASSWORD))
                .header("accept", OCI_MANIFEST)
                .send()
                .await
                .expect("send")
        });
    match r.status() {
        StatusCode::OK => Some(
            r.headers()["docker-content-digest"]
                .to_str()
                .expect("ascii")
                .to_string(),
        ),
        StatusCode::NOT_FOUND => None,
        s => panic!("HEAD {repo}:{tag} as admin: {s}"),
    }
}

/// The digest skopeo wrote into the layout at `dir` (its first image).
fn layout_digest(dir: &Path) -> String {
    let index: Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).expect("index.json"))
            .expect("json");
    index["manifests"][0]["digest"]
        .as_str()
        .expect("digest")
        .to_string()
}

/// Whether a refused client said why in words a user recognises (a refused `HEAD` has
/// no body, so skopeo can only name its status).
fn says_refused(out: &Output) -> bool {
    let t = text(out).to_lowercase();
    t.contains("denied")
        || t.contains("unauthorized")
        || t.contains("authentication required")
        || t.contains("403 (forbidden)")
}

/// skopeo pushes from an OCI layout with `--dest-creds` and pulls back with
/// `--src-creds`: a developer may push, a guest, an outsider and a wrong password may
/// not; a guest may pull, an outsider and anonymous may not (private project); anyone
/// pulls from the public project.
#[test]
fn skopeo_with_credentials() {
    let b = start();
    let tmp = tempfile::tempdir().expect("tempdir");
    let auth = empty_auth_file(&tmp.path().join("skopeo"));
    let src = tmp.path().join("src");
    let digest = layout_image(&src, &format!("skopeo {}", b.host));
    let local = format!("oci:{}:v1", src.display());
    let remote = |repo: &str, tag: &str| format!("docker://{}/{repo}:{tag}", b.host);
    let pw = |user: &str| format!("{user}:{USER_PASSWORD}");

    for (creds, tag) in [
        (pw("visitor"), "guest"),
        (pw("outsider"), "outsider"),
        ("dev:Wrong-Passw0rd".to_string(), "wrong"),
    ] {
        let out = copy(&auth, None, Some(&creds), &local, &remote("team/app", tag));
        assert!(!out.status.success(), "{creds} pushed");
        assert!(says_refused(&out), "{creds}: {}", text(&out));
        assert_eq!(served_digest(&b, "team/app", tag), None, "{creds}");
    }
    let out = copy(
        &auth,
        None,
        Some(&pw("dev")),
        &local,
        &remote("team/app", "v1"),
    );
    assert!(out.status.success(), "developer push: {}", text(&out));
    assert_eq!(served_digest(&b, "team/app", "v1"), Some(digest.clone()));
    // A developer may not push into a project they have no role in.
    let out = copy(
        &auth,
        None,
        Some(&pw("dev")),
        &local,
        &remote("other/app", "v1"),
    );
    assert!(
        !out.status.success() && says_refused(&out),
        "{}",
        text(&out)
    );
    assert_eq!(served_digest(&b, "other/app", "v1"), None);

    // Pull back: a guest may, an outsider and anonymous may not.
    let back = tmp.path().join("back-guest");
    let out = copy(
        &auth,
        Some(&pw("visitor")),
        None,
        &remote("team/app", "v1"),
        &format!("oci:{}:v1", back.display()),
    );
    assert!(out.status.success(), "guest pull: {}", text(&out));
    assert_eq!(layout_digest(&back), digest);
    for creds in [Some(pw("outsider")), None] {
        let dir = tmp.path().join("back-refused");
        let out = copy(
            &auth,
            creds.as_deref(),
            None,
            &remote("team/app", "v1"),
            &format!("oci:{}:v1", dir.display()),
        );
        assert!(!out.status.success(), "{creds:?} pulled a private image");
        assert!(says_refused(&out), "{creds:?}: {}", text(&out));
    }

    // The public project: public means anyone may pull, not push (dev has no role
    // there); the administrator pushes, anyone pulls, anonymous included.
    let out = copy(
        &auth,
        None,
        Some(&pw("dev")),
        &local,
        &remote("open/app", "v1"),
    );
    assert!(
        !out.status.success(),
        "a non-member pushed to a public project"
    );
    let out = copy(
        &auth,
        None,
        Some(&format!("admin:{ADMIN_PASSWORD}")),
        &local,
        &remote("open/app", "v1"),
    );
    assert!(out.status.success(), "admin push: {}", text(&out));
    for (i, creds) in [None, Some(pw("outsider"))].iter().enumerate() {
        let dir = tmp.path().join(format!("back-open-{i}"));
        let out = copy(
            &auth,
            creds.as_deref(),
            None,
            &remote("open/app", "v1"),
            &format!("oci:{}:v1", dir.display()),
        );
        assert!(
            out.status.success(),
            "{creds:?} public pull: {}",
            text(&out)
        );
        assert_eq!(layout_digest(&dir), digest);
    }
}

/// `podman login` with a Berth user, then push and pull with the stored login: a
/// developer pushes and pulls the image back intact; a guest pulls and is refused a push;
/// a wrong password does not log in.
#[test]
fn podman_login_push_pull() {
    let b = start();
    let tmp = tempfile::tempdir().expect("tempdir");
    let login = |root: &Path, user: &str, password: &str| -> Output {
        let mut child = podman(root)
            .args([
                "login",
                "--tls-verify=false",
                "-u",
                user,
                "--password-stdin",
                &b.host,
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("podman login");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(password.as_bytes())
            .expect("password");
        child.wait_with_output().expect("podman login")
    };
    let dev = tmp.path().join("dev");
    let visitor = tmp.path().join("visitor");
    let out = login(&dev, "dev", "Wrong-Passw0rd");
    assert!(!out.status.success(), "a wrong password logged in");
    for (root, user) in [(&dev, "dev"), (&visitor, "visitor")] {
        let out = login(root, user, USER_PASSWORD);
        assert!(out.status.success(), "podman login {user}: {}", text(&out));
    }

    let rootfs = tmp.path().join("rootfs.tar");
    let salt = format!("podman {}\n", b.host);
    std::fs::write(&rootfs, plain_tar(&[("salt", salt.as_bytes())])).expect("rootfs");
    let reference = format!("{}/team/podman:v1", b.host);
    let out = podman(&dev)
        .arg("import")
        .arg(&rootfs)
        .arg(&reference)
        .output()
        .expect("podman import");
    assert!(out.status.success(), "import: {}", text(&out));
    let digest_file = tmp.path().join("digest");
    let out = podman(&dev)
        .args(["push", "--tls-verify=false", "--digestfile"])
        .arg(&digest_file)
        .arg(&reference)
        .output()
        .expect("podman push");
    assert!(out.status.success(), "developer push: {}", text(&out));
    let pushed = std::fs::read_to_string(&digest_file).expect("digest file");
    assert_eq!(
        served_digest(&b, "team/podman", "v1").as_deref(),
        Some(pushed.trim())
    );

    // The guest pulls it (fresh storage) and may not push it under another tag.
    let out = podman(&visitor)
        .args(["pull", "--tls-verify=false", &reference])
        .output()
        .expect("podman pull");
    assert!(out.status.success(), "guest pull: {}", text(&out));
    let inspect = podman(&visitor)
        .args(["image", "inspect", "--format", "{{.Digest}}", &reference])
        .output()
        .expect("inspect");
    assert_eq!(
        String::from_utf8_lossy(&inspect.stdout).trim(),
        pushed.trim()
    );
    let guest_ref = format!("{}/team/podman:guest", b.host);
    let out = podman(&visitor)
        .args(["tag", &reference, &guest_ref])
        .output()
        .expect("tag");
    assert!(out.status.success(), "tag: {}", text(&out));
    let out = podman(&visitor)
        .args(["push", "--tls-verify=false", &guest_ref])
        .output()
        .expect("podman push");
    assert!(!out.status.success(), "a guest pushed");
    assert!(says_refused(&out), "guest push: {}", text(&out));
    assert_eq!(served_digest(&b, "team/podman", "guest"), None);

    // The developer removes the image and pulls it back: the same image.
    let out = podman(&dev)
        .args(["rmi", &reference])
        .output()
        .expect("rmi");
    assert!(out.status.success(), "rmi: {}", text(&out));
    let out = podman(&dev)
        .args(["pull", "--tls-verify=false", &reference])
        .output()
        .expect("podman pull");
    assert!(out.status.success(), "developer pull: {}", text(&out));
    let inspect = podman(&dev)
        .args(["image", "inspect", "--format", "{{.Digest}}", &reference])
        .output()
        .expect("inspect");
    assert_eq!(
        String::from_utf8_lossy(&inspect.stdout).trim(),
        pushed.trim()
    );

    // After logout the stored credentials are gone and the private image is refused.
    let out = podman(&dev)
        .args(["logout", &b.host])
        .output()
        .expect("logout");
    assert!(out.status.success(), "logout: {}", text(&out));
    let out = podman(&dev)
        .args(["pull", "--tls-verify=false", &guest_ref])
        .output()
        .expect("podman pull");
    assert!(!out.status.success(), "pulled without a login");
}

/// The name and secret `berth robot create` prints.
fn robot(b: &Berth, args: &[&str]) -> (String, String) {
    let mut all = vec!["robot", "create"];
    all.extend_from_slice(args);
    let out = b.cli(&all, None);
    let field = |key: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in {out}"))
            .to_string()
    };
    (field("name: "), field("secret: "))
}

/// Robot accounts through skopeo: a project robot with push pushes into its project
/// only; a pull-only robot pulls and may not push; a system robot reaches the projects
/// named in its list; a wrong secret is refused.
#[test]
fn robots_through_skopeo() {
    let b = start();
    let (pusher, pusher_secret) = robot(
        &b,
        &[
            "builder",
            "--project",
            "team",
            "--access",
            "repository:pull,repository:push",
        ],
    );
    assert_eq!(pusher, "robot$team+builder");
    let (reader, reader_secret) = robot(&b, &["reader", "--project", "team"]);
    assert_eq!(reader, "robot$team+reader");
    let (system, system_secret) = robot(
        &b,
        &[
            "mirror",
            "--namespace",
            "other",
            "--access",
            "repository:pull,repository:push",
        ],
    );
    assert_eq!(system, "robot$mirror");

    let tmp = tempfile::tempdir().expect("tempdir");
    let auth = empty_auth_file(&tmp.path().join("skopeo"));
    let src = tmp.path().join("src");
    let digest = layout_image(&src, &format!("robots {}", b.host));
    let local = format!("oci:{}:v1", src.display());
    let remote = |repo: &str| format!("docker://{}/{repo}:v1", b.host);
    let creds = |name: &str, secret: &str| format!("{name}:{secret}");

    // The project robot pushes into its project.
    let out = copy(
        &auth,
        None,
        Some(&creds(&pusher, &pusher_secret)),
        &local,
        &remote("team/built"),
    );
    assert!(out.status.success(), "robot push: {}", text(&out));
    assert_eq!(served_digest(&b, "team/built", "v1"), Some(digest.clone()));

    // Refused pushes: outside its project, a pull-only robot, a wrong secret, a system
    // robot outside its namespaces.
    for (what, c, repo) in [
        (
            "project robot into another project",
            creds(&pusher, &pusher_secret),
            "other/built",
        ),
        (
            "pull-only robot",
            creds(&reader, &reader_secret),
            "team/read",
        ),
        (
            "wrong secret",
            creds(&pusher, "not-the-secret"),
            "team/wrong",
        ),
        (
            "system robot outside its list",
            creds(&system, &system_secret),
            "team/mirror",
        ),
    ] {
        let out = copy(&auth, None, Some(&c), &local, &remote(repo));
        assert!(!out.status.success(), "{what} pushed");
        assert!(says_refused(&out), "{what}: {}", text(&out));
        assert_eq!(served_digest(&b, repo, "v1"), None, "{what}");
    }

    // The pull-only robot pulls; the system robot pushes to its namespace and pulls.
    let back = tmp.path().join("back");
    let out = copy(
        &auth,
        Some(&creds(&reader, &reader_secret)),
        None,
        &remote("team/built"),
        &format!("oci:{}:v1", back.display()),
    );
    assert!(out.status.success(), "robot pull: {}", text(&out));
    assert_eq!(layout_digest(&back), digest);
    let out = copy(
        &auth,
        None,
        Some(&creds(&system, &system_secret)),
        &local,
        &remote("other/mirrored"),
    );
    assert!(out.status.success(), "system robot push: {}", text(&out));
    assert_eq!(
        served_digest(&b, "other/mirrored", "v1"),
        Some(digest.clone())
    );
    let out = copy(
        &auth,
        Some(&creds(&system, &system_secret)),
        None,
        &remote("team/built"),
        &format!("oci:{}:v2", back.display()),
    );
    assert!(
        !out.status.success() && says_refused(&out),
        "system robot pulled outside its list: {}",
        text(&out)
    );
}
