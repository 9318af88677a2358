//! Parses `/v2/...` paths into an [`Endpoint`]. OCI names contain `/`, so no framework
//! router fits: the path is read from its end, where the resource markers are. Each
//! endpoint also says what access it needs, so authorization follows from routing.

use axum::http::Method;
use oci::{Digest, NameError, RepoName};

/// One route of the distribution API, with its validated parts.
#[derive(Debug, Clone, PartialEq)]
pub enum Endpoint {
    /// `/v2/`
    Base,
    /// `/v2/_catalog`
    Catalog,
    /// `/v2/<name>/tags/list`
    Tags { repo: RepoName },
    /// `/v2/<name>/manifests/<reference>`; the reference is validated by the handler,
    /// because an invalid one means 404 on reads but 400 on writes.
    Manifest { repo: RepoName, reference: String },
    /// `/v2/<name>/blobs/<digest>`
    Blob { repo: RepoName, digest: Digest },
    /// `/v2/<name>/blobs/uploads/`
    Uploads { repo: RepoName },
    /// `/v2/<name>/blobs/uploads/<id>`
    Upload { repo: RepoName, id: String },
    /// `/v2/<name>/referrers/<digest>`
    Referrers { repo: RepoName, digest: Digest },
}

/// What a request must be allowed to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Pull,
    Push,
    Delete,
}

/// Why a path is not an endpoint.
#[derive(Debug, Clone, PartialEq)]
pub enum PathError {
    /// Not under `/v2/`, or no known resource: a plain 404.
    NotFound,
    NameInvalid(NameError),
    DigestInvalid(String),
}

impl Endpoint {
    /// The repository the endpoint is about, if any.
    pub fn repo(&self) -> Option<&RepoName> {
        match self {
            Endpoint::Base | Endpoint::Catalog => None,
            Endpoint::Tags { repo }
            | Endpoint::Manifest { repo, .. }
            | Endpoint::Blob { repo, .. }
            | Endpoint::Uploads { repo }
            | Endpoint::Upload { repo, .. }
            | Endpoint::Referrers { repo, .. } => Some(repo),
        }
    }

    fn repo_mut(&mut self) -> Option<&mut RepoName> {
        match self {
            Endpoint::Base | Endpoint::Catalog => None,
            Endpoint::Tags { repo }
            | Endpoint::Manifest { repo, .. }
            | Endpoint::Blob { repo, .. }
            | Endpoint::Uploads { repo }
            | Endpoint::Upload { repo, .. }
            | Endpoint::Referrers { repo, .. } => Some(repo),
        }
    }

    /// The same endpoint for the repository `project/<name>` (a mirror request routed to
    /// a proxy-cache project).
    pub fn within_project(mut self, project: &str) -> Result<Endpoint, NameError> {
        if let Some(repo) = self.repo_mut() {
            *repo = format!("{project}/{repo}").parse()?;
        }
        Ok(self)
    }

    pub fn parse(path: &str) -> Result<Endpoint, PathError> {
        let rest = path.strip_prefix("/v2").ok_or(PathError::NotFound)?;
        if rest.is_empty() || rest == "/" {
            return Ok(Endpoint::Base);
        }
        let rest = rest.strip_prefix('/').ok_or(PathError::NotFound)?;
        if rest == "_catalog" {
            return Ok(Endpoint::Catalog);
        }
        let segs: Vec<&str> = rest.split('/').collect();
        let n = segs.len();
        let name = |upto: usize| -> Result<RepoName, PathError> {
            if upto == 0 {
                return Err(PathError::NameInvalid(NameError::InvalidName));
            }
            segs[..upto]
                .join("/")
                .parse()
                .map_err(PathError::NameInvalid)
        };
        let digest = |s: &str| -> Result<Digest, PathError> {
            s.parse()
                .map_err(|e: oci::DigestError| PathError::DigestInvalid(e.to_string()))
        };
        let last = |i: usize| segs.get(n.wrapping_sub(i)).copied();
        match (last(3), last(2), last(1)) {
            (_, Some("tags"), Some("list")) => Ok(Endpoint::Tags { repo: name(n - 2)? }),
            (_, Some("manifests"), Some(r)) if !r.is_empty() => Ok(Endpoint::Manifest {
                repo: name(n - 2)?,
                reference: r.to_string(),
            }),
            (Some("blobs"), Some("uploads"), Some("")) => {
                Ok(Endpoint::Uploads { repo: name(n - 3)? })
            }
            (Some("blobs"), Some("uploads"), Some(id)) => Ok(Endpoint::Upload {
                repo: name(n - 3)?,
                id: id.to_string(),
            }),
            (_, Some("blobs"), Some("uploads")) => Ok(Endpoint::Uploads { repo: name(n - 2)? }),
            (_, Some("blobs"), Some(d)) if !d.is_empty() => Ok(Endpoint::Blob {
                repo: name(n - 2)?,
                digest: digest(d)?,
            }),
            (_, Some("referrers"), Some(d)) if !d.is_empty() => Ok(Endpoint::Referrers {
                repo: name(n - 2)?,
                digest: digest(d)?,
            }),
            _ => Err(PathError::NotFound),
        }
    }

    /// The repository and action a request with `method` needs; `None` for endpoints
    /// that need only an authenticated caller (the base and the catalog).
    pub fn access(&self, method: &Method) -> Option<(&RepoName, Action)> {
        let write = |m: &Method| {
            if m == Method::DELETE {
                Action::Delete
            } else if m == Method::GET || m == Method::HEAD {
                Action::Pull
            } else {
                Action::Push
            }
        };
        match self {
            Endpoint::Base | Endpoint::Catalog => None,
            Endpoint::Tags { repo } | Endpoint::Referrers { repo, .. } => {
                Some((repo, Action::Pull))
            }
            Endpoint::Manifest { repo, .. } | Endpoint::Blob { repo, .. } => {
                Some((repo, write(method)))
            }
            // Cancelling or checking one's own upload is part of pushing.
            Endpoint::Uploads { repo } | Endpoint::Upload { repo, .. } => {
                Some((repo, Action::Push))
            }
        }
    }

    /// A low-cardinality name for logs and metrics.
    pub fn route(&self) -> &'static str {
        match self {
            Endpoint::Base => "base",
            Endpoint::Catalog => "catalog",
            Endpoint::Tags { .. } => "tags",
            Endpoint::Manifest { .. } => "manifest",
            Endpoint::Blob { .. } => "blob",
            Endpoint::Uploads { .. } => "uploads",
            Endpoint::Upload { .. } => "upload",
            Endpoint::Referrers { .. } => "referrers",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn repo(s: &str) -> RepoName {
        s.parse().expect("repo")
    }

    #[test]
    fn table() {
        let d: Digest = D.parse().expect("digest");
        let cases: Vec<(String, Result<Endpoint, PathError>)> = vec![
            ("/v2/".into(), Ok(Endpoint::Base)),
            ("/v2".into(), Ok(Endpoint::Base)),
            ("/v2/_catalog".into(), Ok(Endpoint::Catalog)),
            (
                "/v2/a/tags/list".into(),
                Ok(Endpoint::Tags { repo: repo("a") }),
            ),
            (
                "/v2/a/b/c/d/e/f/g/h/app/manifests/latest".into(),
                Ok(Endpoint::Manifest {
                    repo: repo("a/b/c/d/e/f/g/h/app"),
                    reference: "latest".into(),
                }),
            ),
            (
                "/v2/x/manifests/y/manifests/v1".into(),
                Ok(Endpoint::Manifest {
                    repo: repo("x/manifests/y"),
                    reference: "v1".into(),
                }),
            ),
            (
                format!("/v2/lib/app/blobs/{D}"),
                Ok(Endpoint::Blob {
                    repo: repo("lib/app"),
                    digest: d.clone(),
                }),
            ),
            (
                format!("/v2/x/blobs/blobs/{D}"),
                Ok(Endpoint::Blob {
                    repo: repo("x/blobs"),
                    digest: d.clone(),
                }),
            ),
            (
                "/v2/lib/app/blobs/uploads/".into(),
                Ok(Endpoint::Uploads {
                    repo: repo("lib/app"),
                }),
            ),
            (
                "/v2/lib/app/blobs/uploads".into(),
                Ok(Endpoint::Uploads {
                    repo: repo("lib/app"),
                }),
            ),
            (
                "/v2/lib/app/blobs/uploads/0b3f-11".into(),
                Ok(Endpoint::Upload {
                    repo: repo("lib/app"),
                    id: "0b3f-11".into(),
                }),
            ),
            (
                format!("/v2/a/referrers/{D}"),
                Ok(Endpoint::Referrers {
                    repo: repo("a"),
                    digest: d.clone(),
                }),
            ),
            (
                "/v2/A/tags/list".into(),
                Err(PathError::NameInvalid(NameError::InvalidName)),
            ),
            (
                "/v2/tags/list".into(),
                Err(PathError::NameInvalid(NameError::InvalidName)),
            ),
            (
                "/v2/a/blobs/sha256:zz".into(),
                Err(PathError::DigestInvalid(
                    "sha256 digest must be 64 lowercase hex characters".into(),
                )),
            ),
            ("/v2/a/nothing".into(), Err(PathError::NotFound)),
            ("/v3/".into(), Err(PathError::NotFound)),
            ("/".into(), Err(PathError::NotFound)),
            ("/v2x".into(), Err(PathError::NotFound)),
        ];
        for (path, want) in cases {
            assert_eq!(Endpoint::parse(&path), want, "{path}");
        }
    }

    #[test]
    fn access() {
        let e = Endpoint::parse("/v2/a/manifests/v1").expect("parse");
        assert_eq!(e.access(&Method::GET), Some((&repo("a"), Action::Pull)));
        assert_eq!(e.access(&Method::PUT), Some((&repo("a"), Action::Push)));
        assert_eq!(
            e.access(&Method::DELETE),
            Some((&repo("a"), Action::Delete))
        );
        let e = Endpoint::parse("/v2/a/blobs/uploads/x").expect("parse");
        assert_eq!(e.access(&Method::DELETE), Some((&repo("a"), Action::Push)));
        assert_eq!(Endpoint::Catalog.access(&Method::GET), None);
    }
}
