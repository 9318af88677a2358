//! What the pull-through cache needs from the registry it mirrors: the [`Upstream`] trait
//! (implemented over HTTP in the top-level `upstream` module, which alone makes those
//! requests) and its
//! error. Plain Rust types only: no HTTP client, no status codes.

use crate::storage::ByteStream;
use oci::{Digest, Reference, RepoName, Tag};

/// Why the upstream could not answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    /// The upstream says the manifest, blob or repository does not exist.
    #[error("not found upstream")]
    NotFound,
    /// The upstream refused access (401 with the configured credentials, 403): for a
    /// repository it does not serve to us, as good as not found. The message says why.
    #[error("{0}")]
    Denied(String),
    /// Anything else: unreachable, timed out, a 5xx, a bad answer. The message names the
    /// upstream and the cause.
    #[error("{0}")]
    Failed(String),
}

/// A manifest fetched from upstream, its digest checked.
#[derive(Debug, Clone)]
pub struct UpstreamManifest {
    pub digest: Digest,
    pub media_type: String,
    pub content: Vec<u8>,
}

/// A blob body streaming from upstream.
pub struct UpstreamBlob {
    /// The upstream's `Content-Length`, when it sent one.
    pub size: Option<u64>,
    pub body: ByteStream,
}

/// The registry a pull-through cache mirrors.
#[async_trait::async_trait]
pub trait Upstream: Send + Sync + 'static {
    /// The upstream's base URL, for messages.
    fn url(&self) -> &str;
    /// Check that the upstream answers the distribution API with the configured
    /// credentials (`GET /v2/`, authenticating as it asks).
    async fn ping(&self) -> Result<(), UpstreamError>;
    /// The digest `tag` points at now (a HEAD: not counted against Docker Hub's rate
    /// limit). `None` when the upstream answered without a digest.
    async fn tag_digest(&self, repo: &RepoName, tag: &Tag)
        -> Result<Option<Digest>, UpstreamError>;
    /// Fetch a manifest; a manifest asked for by digest is checked against it.
    async fn manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<UpstreamManifest, UpstreamError>;
    /// A blob's size (a HEAD).
    async fn blob_size(&self, repo: &RepoName, digest: &Digest) -> Result<u64, UpstreamError>;
    /// Stream a blob (not verified here: the cache hashes it as it stores it).
    async fn blob(&self, repo: &RepoName, digest: &Digest) -> Result<UpstreamBlob, UpstreamError>;
    /// The repository's tags after `last`: at least `n` of them when the upstream has
    /// that many (following its pages), all of them without `n`.
    async fn tags(
        &self,
        repo: &RepoName,
        n: Option<u32>,
        last: Option<&str>,
    ) -> Result<Vec<String>, UpstreamError>;
}

/// Docker Hub's registry host names (its token service is `auth.docker.io`, its
/// one-component names live under `library/`).
pub const DOCKER_HUB: &[&str] = &[
    "registry-1.docker.io",
    "index.docker.io",
    "docker.io",
    "registry.hub.docker.com",
];

/// `host[:port]` of an `http(s)://` URL, lower-cased (`None` for anything else).
pub fn url_authority(url: &str) -> Option<String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))?;
    let authority = rest.split(['/', '?', '#']).next()?;
    (!authority.is_empty() && !authority.contains('@')).then(|| authority.to_ascii_lowercase())
}

/// Whether `url` is Docker Hub's registry.
pub fn is_docker_hub(url: &str) -> bool {
    url_authority(url).is_some_and(|a| {
        let host = a.strip_suffix(":443").unwrap_or(&a);
        DOCKER_HUB.contains(&host)
    })
}

/// The settings of one upstream registry, as an administrator registered it.
pub struct UpstreamSettings<'a> {
    /// Base URL, `https://host[:port]`.
    pub url: &'a str,
    /// Basic credentials (also used to obtain Bearer tokens).
    pub credentials: Option<(String, String)>,
    /// Skip TLS certificate verification.
    pub insecure: bool,
    /// PEM certificates to trust besides the system's.
    pub ca_certificate: Option<&'a str>,
    /// Where the credentials are set, for error messages ("registry 'hub' (id 3)").
    pub credentials_origin: String,
}

/// Makes [`Upstream`]s for registered upstream registries (proxy-cache projects);
/// implemented over HTTP in the top-level `upstream` module.
pub trait UpstreamFactory: Send + Sync + 'static {
    /// A client of the registry `settings` describe; `Err` says what is wrong with them.
    fn upstream(
        &self,
        settings: &UpstreamSettings<'_>,
    ) -> Result<std::sync::Arc<dyn Upstream>, String>;
}

/// An upstream that cannot be used (its settings were refused): every request fails
/// with the reason, so a proxy-cache project says why instead of looking empty.
pub struct UnusableUpstream {
    pub url: String,
    pub reason: String,
}

#[async_trait::async_trait]
impl Upstream for UnusableUpstream {
    fn url(&self) -> &str {
        &self.url
    }
    async fn ping(&self) -> Result<(), UpstreamError> {
        Err(self.failed())
    }
    async fn tag_digest(&self, _: &RepoName, _: &Tag) -> Result<Option<Digest>, UpstreamError> {
        Err(self.failed())
    }
    async fn manifest(
        &self,
        _: &RepoName,
        _: &Reference,
    ) -> Result<UpstreamManifest, UpstreamError> {
        Err(self.failed())
    }
    async fn blob_size(&self, _: &RepoName, _: &Digest) -> Result<u64, UpstreamError> {
        Err(self.failed())
    }
    async fn blob(&self, _: &RepoName, _: &Digest) -> Result<UpstreamBlob, UpstreamError> {
        Err(self.failed())
    }
    async fn tags(
        &self,
        _: &RepoName,
        _: Option<u32>,
        _: Option<&str>,
    ) -> Result<Vec<String>, UpstreamError> {
        Err(self.failed())
    }
}

impl UnusableUpstream {
    fn failed(&self) -> UpstreamError {
        UpstreamError::Failed(format!(
            "upstream registry {} cannot be used: {}",
            self.url, self.reason
        ))
    }
}

/// Repository names in a proxy-cache project, mapped onto the upstream: the project's
/// part goes (`hub/library/alpine` is `library/alpine` upstream), and on Docker Hub a
/// one-component name gets its `library/` (`hub/alpine` is `library/alpine`).
pub struct ProjectUpstream {
    pub inner: std::sync::Arc<dyn Upstream>,
    /// The project's name.
    pub project: String,
    /// The upstream is Docker Hub.
    pub docker_hub: bool,
}

impl ProjectUpstream {
    /// The upstream's name of the local repository `repo`.
    pub fn upstream_name(&self, repo: &RepoName) -> Result<RepoName, UpstreamError> {
        let rest = repo
            .as_str()
            .strip_prefix(self.project.as_str())
            .and_then(|r| r.strip_prefix('/'))
            .ok_or(UpstreamError::NotFound)?;
        let name = if self.docker_hub && !rest.contains('/') {
            format!("library/{rest}")
        } else {
            rest.to_string()
        };
        name.parse().map_err(|_| UpstreamError::NotFound)
    }
}

#[async_trait::async_trait]
impl Upstream for ProjectUpstream {
    fn url(&self) -> &str {
        self.inner.url()
    }
    async fn ping(&self) -> Result<(), UpstreamError> {
        self.inner.ping().await
    }
    async fn tag_digest(
        &self,
        repo: &RepoName,
        tag: &Tag,
    ) -> Result<Option<Digest>, UpstreamError> {
        self.inner.tag_digest(&self.upstream_name(repo)?, tag).await
    }
    async fn manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<UpstreamManifest, UpstreamError> {
        self.inner
            .manifest(&self.upstream_name(repo)?, reference)
            .await
    }
    async fn blob_size(&self, repo: &RepoName, digest: &Digest) -> Result<u64, UpstreamError> {
        self.inner
            .blob_size(&self.upstream_name(repo)?, digest)
            .await
    }
    async fn blob(&self, repo: &RepoName, digest: &Digest) -> Result<UpstreamBlob, UpstreamError> {
        self.inner.blob(&self.upstream_name(repo)?, digest).await
    }
    async fn tags(
        &self,
        repo: &RepoName,
        n: Option<u32>,
        last: Option<&str>,
    ) -> Result<Vec<String>, UpstreamError> {
        self.inner.tags(&self.upstream_name(repo)?, n, last).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities_and_docker_hub() {
        assert_eq!(
            url_authority("https://Registry-1.Docker.io/"),
            Some("registry-1.docker.io".into())
        );
        assert_eq!(
            url_authority("http://127.0.0.1:5000"),
            Some("127.0.0.1:5000".into())
        );
        assert_eq!(url_authority("ftp://x"), None);
        assert_eq!(url_authority("https://u@x"), None);
        assert!(is_docker_hub("https://registry-1.docker.io"));
        assert!(is_docker_hub("https://docker.io:443"));
        assert!(!is_docker_hub("https://ghcr.io"));
        assert!(!is_docker_hub("https://docker.io.example.com"));
    }

    #[test]
    fn project_names_map_onto_the_upstream() {
        let p = |docker_hub| ProjectUpstream {
            inner: std::sync::Arc::new(UnusableUpstream {
                url: "https://x".into(),
                reason: "test".into(),
            }),
            project: "hub".into(),
            docker_hub,
        };
        let name = |s: &str| s.parse::<RepoName>().expect("name");
        assert_eq!(
            p(true).upstream_name(&name("hub/alpine")).expect("mapped"),
            name("library/alpine")
        );
        assert_eq!(
            p(true)
                .upstream_name(&name("hub/library/alpine"))
                .expect("mapped"),
            name("library/alpine")
        );
        assert_eq!(
            p(true).upstream_name(&name("hub/org/app")).expect("mapped"),
            name("org/app")
        );
        assert_eq!(
            p(false).upstream_name(&name("hub/alpine")).expect("mapped"),
            name("alpine")
        );
        assert_eq!(
            p(false).upstream_name(&name("hub/a/b/c")).expect("mapped"),
            name("a/b/c")
        );
        // Never another project's repositories.
        assert!(matches!(
            p(false).upstream_name(&name("hubx/alpine")),
            Err(UpstreamError::NotFound)
        ));
        assert!(matches!(
            p(false).upstream_name(&name("other/alpine")),
            Err(UpstreamError::NotFound)
        ));
    }
}
