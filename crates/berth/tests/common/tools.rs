//! Client programs as the tests run them: skopeo, and podman and buildah with their
//! storage (vfs) and credentials in a temporary root of the test's own, so that a test
//! neither reads nor changes the user's images or logins.

use super::require_tool;
use std::path::{Path, PathBuf};
use std::process::Command;

/// `skopeo`, checked to be installed.
pub fn skopeo() -> Command {
    require_tool("skopeo");
    Command::new("skopeo")
}

/// An empty auth file in `root`, so that the user's credentials are never used.
pub fn empty_auth_file(root: &Path) -> PathBuf {
    let path = root.join("auth.json");
    if !path.exists() {
        std::fs::create_dir_all(root).expect("root dir");
        std::fs::write(&path, br#"{"auths":{}}"#).expect("auth.json");
    }
    path
}

/// `podman` with vfs storage, run and temporary directories under `root`.
pub fn podman(root: &Path) -> Command {
    require_tool("podman");
    let mut c = Command::new("podman");
    c.arg("--root")
        .arg(root.join("root"))
        .arg("--runroot")
        .arg(root.join("run"))
        .arg("--tmpdir")
        .arg(root.join("tmp"))
        .args([
            "--storage-driver",
            "vfs",
            "--events-backend",
            "file",
            "--cgroup-manager",
            "cgroupfs",
        ])
        .env("REGISTRY_AUTH_FILE", empty_auth_file(root));
    c
}

/// `buildah` with vfs storage under `root`.
pub fn buildah(root: &Path) -> Command {
    require_tool("buildah");
    let mut c = Command::new("buildah");
    c.arg("--root")
        .arg(root.join("root"))
        .arg("--runroot")
        .arg(root.join("run"))
        .args(["--storage-driver", "vfs"])
        .env("REGISTRY_AUTH_FILE", empty_auth_file(root))
        .env("TMPDIR", root);
    c
}
