//! Mirror host names (`auth.berth.mirrors`). A Docker Engine's `registry-mirrors`, and
//! a podman or CRI-O `[[registry.mirror]]`, ask the mirror for the mirrored registry's
//! own names (`library/alpine`) and say nowhere which registry that is: the host name
//! they were given says it. So every request that comes to a mirror host name is a pull
//! from that host's project, `library/alpine` read as `hub/library/alpine`, and nothing
//! else is served there (no push, no delete, no catalog). The registry's own host names
//! are untouched: a name that is no project there never reaches a mirror's upstream.
//!
//! Tokens: the challenge on a mirror host names the client's repository names and a
//! realm carrying `mirror=<project>`; the token service maps the names a client asks
//! for back into the project, pull only ([`project_scopes`]).

use crate::auth::Scope;
use crate::config::auth::{mirror_for, MirrorHostConfig};
use axum::http::request::Parts;

/// The realm parameter naming the project of a mirror host (`auth::mirror_realm`).
pub(super) const REALM_PARAM: &str = "mirror";

/// The configured mirror host names.
#[derive(Debug, Clone, Default)]
pub struct MirrorHosts(Vec<MirrorHostConfig>);

/// Marks a request that came to a mirror host name: the project it reads from.
#[derive(Debug, Clone)]
pub(super) struct MirrorOf(pub String);

impl MirrorHosts {
    pub fn new(hosts: Vec<MirrorHostConfig>) -> MirrorHosts {
        MirrorHosts(hosts)
    }

    /// The project of the host name the request came to (the host `base_of` builds
    /// URLs with).
    pub(super) fn project_for(&self, parts: &Parts) -> Option<&str> {
        if self.0.is_empty() {
            return None;
        }
        self.project_of(&super::request_host(parts)?)
    }

    fn project_of(&self, authority: &str) -> Option<&str> {
        mirror_for(&self.0, authority).map(|m| m.project.as_str())
    }

    /// Whether `project` is the project of some mirror host name.
    pub(super) fn is_project(&self, project: &str) -> bool {
        self.0.iter().any(|m| m.project == project)
    }
}

/// What a token request through a mirror of `project` asks for: each repository the
/// client names is the project's repository of that name, and only `pull` is asked
/// (a mirror serves nothing else); other scopes are dropped.
pub(super) fn project_scopes(project: &str, asked: Vec<Scope>) -> Vec<Scope> {
    asked
        .into_iter()
        .filter(|s| s.kind == "repository" && s.allows("pull"))
        .map(|s| Scope::repository(&format!("{project}/{}", s.name), ["pull"]))
        .collect()
}

/// The scopes a challenge on a mirror host names: the client's names for the
/// project's repositories.
pub(super) fn client_scopes(project: &str, wanted: &[Scope]) -> Vec<Scope> {
    let prefix = format!("{project}/");
    wanted
        .iter()
        .map(|s| match s.name.strip_prefix(&prefix) {
            Some(name) if s.kind == "repository" => Scope {
                name: name.to_string(),
                ..s.clone()
            },
            _ => s.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts() -> MirrorHosts {
        MirrorHosts::new(vec![
            MirrorHostConfig {
                host: "hub-mirror.example.com".into(),
                port: None,
                project: "hub".into(),
            },
            MirrorHostConfig {
                host: "ghcr-mirror.example.com".into(),
                port: Some(443),
                project: "ghcr".into(),
            },
            MirrorHostConfig {
                host: "::1".into(),
                port: Some(5001),
                project: "quay".into(),
            },
        ])
    }

    #[test]
    fn host_names_match_with_any_or_their_port() {
        let h = hosts();
        assert_eq!(h.project_of("hub-mirror.example.com"), Some("hub"));
        assert_eq!(h.project_of("HUB-Mirror.example.com.:5000"), Some("hub"));
        assert_eq!(h.project_of("ghcr-mirror.example.com"), Some("ghcr"));
        assert_eq!(h.project_of("ghcr-mirror.example.com:443"), Some("ghcr"));
        assert_eq!(h.project_of("ghcr-mirror.example.com:5000"), None);
        assert_eq!(h.project_of("[::1]:5001"), Some("quay"));
        assert_eq!(h.project_of("[0:0:0:0:0:0:0:1]:5001"), Some("quay"));
        assert_eq!(h.project_of("[::1]:5000"), None);
        assert_eq!(h.project_of("berth.example.com"), None);
        assert_eq!(h.project_of("mirror.example.com"), None);
        assert!(h.is_project("ghcr") && !h.is_project("library"));
        let both = MirrorHosts::new(vec![
            MirrorHostConfig {
                host: "m.example".into(),
                port: None,
                project: "any".into(),
            },
            MirrorHostConfig {
                host: "m.example".into(),
                port: Some(5001),
                project: "exact".into(),
            },
        ]);
        assert_eq!(both.project_of("m.example:5001"), Some("exact"));
        assert_eq!(both.project_of("m.example:5000"), Some("any"));
    }

    #[test]
    fn token_scopes_are_mapped_into_the_project_pull_only() {
        let asked = vec![
            Scope::parse("repository:library/alpine:pull").expect("scope"),
            Scope::parse("repository:org/app:pull,push").expect("scope"),
            Scope::parse("repository:org/other:push").expect("scope"),
            Scope::parse("repository:x:*").expect("scope"),
            Scope::parse("registry:catalog:*").expect("scope"),
        ];
        let got: Vec<String> = project_scopes("hub", asked)
            .iter()
            .map(Scope::to_string)
            .collect();
        assert_eq!(
            got,
            [
                "repository:hub/library/alpine:pull",
                "repository:hub/org/app:pull",
                "repository:hub/x:pull"
            ]
        );
    }

    #[test]
    fn challenges_name_the_clients_names() {
        let wanted = vec![Scope::repository("hub/library/alpine", ["pull"])];
        assert_eq!(
            client_scopes("hub", &wanted)[0].to_string(),
            "repository:library/alpine:pull"
        );
        assert_eq!(
            crate::auth::mirror_realm("https://b.example/service/token", "hub"),
            "https://b.example/service/token?mirror=hub"
        );
        assert_eq!(
            crate::auth::mirror_realm("https://b/t?a=1", "hub"),
            "https://b/t?a=1&mirror=hub"
        );
    }
}
