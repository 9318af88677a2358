//! `berth import distribution`: bring a filesystem store written by CNCF Distribution into
//! Berth's storage, through the registry layer, so imported content is verified and
//! validated exactly as pushed content is.
//!
//! Per repository: every linked blob first (hashed against its digest; a hard link when
//! source and target share a filesystem, a copy otherwise), then image manifests, then
//! indexes once their children are in, each with the tags that point at it. Schema1
//! manifests are skipped with a warning. Re-running stores nothing twice. Errors are
//! collected per item, not fatal: the [`Summary`] counts them and the caller decides the
//! exit code. This module reads the foreign layout only through
//! [`distribution::DistributionStore`]; it prints nothing (the caller gets [`Event`]s).

pub mod distribution;

use crate::registry::{BlobImport, Registry, RegistryError};
use crate::storage::Ingest;
use distribution::DistributionStore;
use oci::manifest::{Kind, ManifestError};
use oci::{Digest, Reference, RepoName, Tag};
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{root} is not the root directory of a Distribution filesystem store: {root}/docker/registry/v2 does not exist (give the storage.filesystem.rootdirectory of the registry:2 config, e.g. /var/lib/registry)")]
    NotADistributionRoot { root: PathBuf },
    #[error("cannot read {path}: {source} (check that the store is readable by this user)")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} does not hold a digest (it holds {content:?}): the store is damaged; the entry was skipped")]
    BadLink { path: PathBuf, content: String },
    #[error("{path} is larger than the manifest limit of {limit} bytes (raise limits.manifestsize in the target config to import it)")]
    TooLarge { path: PathBuf, limit: usize },
}

/// Something worth telling the user while an import runs.
#[derive(Debug, Clone)]
pub enum Event {
    /// A repository is done.
    Repository {
        name: String,
        blobs: u64,
        manifests: u64,
        tags: u64,
        errors: u64,
    },
    /// Something was skipped on purpose.
    Warning(String),
    /// Something failed; the import goes on with the rest.
    Error(String),
}

/// Totals of one import run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub repositories: u64,
    pub tags: u64,
    /// Manifests stored by this run.
    pub manifests: u64,
    /// Manifests the target already had.
    pub manifests_present: u64,
    /// Blobs stored by this run (linked + copied).
    pub blobs: u64,
    /// Blob links the target already had the bytes for.
    pub blobs_present: u64,
    /// Bytes of the blobs stored by this run.
    pub bytes: u64,
    pub linked: u64,
    pub copied: u64,
    pub skipped: u64,
    pub errors: u64,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} repositories, {} tags, {} manifests imported ({} already present), {} blobs imported ({} already present), {} bytes, {} hard-linked, {} copied, {} skipped, {} errors",
            self.repositories,
            self.tags,
            self.manifests,
            self.manifests_present,
            self.blobs,
            self.blobs_present,
            self.bytes,
            self.linked,
            self.copied,
            self.skipped,
            self.errors
        )
    }
}

/// Import every repository of the Distribution store at `root` into `registry`,
/// reporting progress through `on_event`. Fails as a whole only if `root` is not a
/// Distribution store or cannot be listed; everything else is counted in the summary.
pub async fn import_distribution(
    registry: &Registry,
    root: &Path,
    on_event: &mut (dyn FnMut(Event) + Send),
) -> Result<Summary, ImportError> {
    let store = DistributionStore::open(root)?;
    let mut summary = Summary::default();
    for name in store.repositories()? {
        let mut run = RepoRun {
            registry,
            store: &store,
            summary: &mut summary,
            on_event: &mut *on_event,
            blobs: 0,
            manifests: 0,
            tags: 0,
            errors: 0,
            skipped: HashSet::new(),
        };
        run.import(&name).await;
        let event = Event::Repository {
            name,
            blobs: run.blobs,
            manifests: run.manifests,
            tags: run.tags,
            errors: run.errors,
        };
        summary.repositories += 1;
        on_event(event);
    }
    Ok(summary)
}

/// A parsed manifest waiting to be stored.
struct Pending {
    digest: Digest,
    content: Vec<u8>,
    kind: Kind,
    children: Vec<Digest>,
}

/// One repository's import, with its counts.
struct RepoRun<'a> {
    registry: &'a Registry,
    store: &'a DistributionStore,
    summary: &'a mut Summary,
    on_event: &'a mut (dyn FnMut(Event) + Send),
    blobs: u64,
    manifests: u64,
    tags: u64,
    errors: u64,
    /// Manifests skipped on purpose (schema1): their tags are skipped too, not errors.
    skipped: HashSet<Digest>,
}

impl RepoRun<'_> {
    fn error(&mut self, message: String) {
        self.errors += 1;
        self.summary.errors += 1;
        (self.on_event)(Event::Error(message));
    }

    fn warn(&mut self, message: String) {
        self.summary.skipped += 1;
        (self.on_event)(Event::Warning(message));
    }

    async fn import(&mut self, name: &str) {
        let repo: RepoName = match name.parse() {
            Ok(r) => r,
            Err(e) => {
                self.error(format!(
                    "repository {name:?}: not a valid repository name ({e}); skipped"
                ));
                return;
            }
        };
        self.import_blobs(&repo).await;
        let tags = self.read_tags(&repo);
        let pending = self.read_manifests(&repo);
        self.store_manifests(&repo, pending, tags).await;
    }

    async fn import_blobs(&mut self, repo: &RepoName) {
        let links = match self.store.layers(repo.as_str()) {
            Ok(l) => l,
            Err(e) => return self.error(format!("repository {repo}: {e}")),
        };
        let mut seen = HashSet::new();
        for link in links {
            let digest = match link {
                Ok(d) => d,
                Err(e) => {
                    self.error(format!("repository {repo}: {e}"));
                    continue;
                }
            };
            if !seen.insert(digest.clone()) {
                continue;
            }
            let source = self.store.blob_path(&digest);
            if !source.exists() {
                // Distribution's garbage collection leaves layer links behind.
                self.warn(format!(
                    "repository {repo}: blob {digest} is linked but its data {} is gone (garbage-collected?); skipped",
                    source.display()
                ));
                continue;
            }
            match self.registry.import_blob(repo, &digest, &source).await {
                Ok(BlobImport::AlreadyPresent { .. }) => self.summary.blobs_present += 1,
                Ok(BlobImport::Stored { size, how }) => {
                    self.blobs += 1;
                    self.summary.blobs += 1;
                    self.summary.bytes += size;
                    match how {
                        Ingest::Linked => self.summary.linked += 1,
                        Ingest::Copied => self.summary.copied += 1,
                    }
                }
                Err(e) => self.error(format!(
                    "repository {repo}: blob {digest} not imported: {e}"
                )),
            }
        }
    }

    /// Tags by the digest they point at.
    fn read_tags(&mut self, repo: &RepoName) -> BTreeMap<Digest, Vec<Tag>> {
        let mut by_digest: BTreeMap<Digest, Vec<Tag>> = BTreeMap::new();
        let tags = match self.store.tags(repo.as_str()) {
            Ok(t) => t,
            Err(e) => {
                self.error(format!("repository {repo}: {e}"));
                return by_digest;
            }
        };
        for (name, target) in tags {
            let tag: Tag = match name.parse() {
                Ok(t) => t,
                Err(e) => {
                    self.error(format!(
                        "repository {repo}: tag {name:?} is not a valid tag ({e}); skipped"
                    ));
                    continue;
                }
            };
            match target {
                Ok(d) => by_digest.entry(d).or_default().push(tag),
                Err(e) => self.error(format!("repository {repo}: tag {name}: {e}")),
            }
        }
        by_digest
    }

    fn read_manifests(&mut self, repo: &RepoName) -> Vec<Pending> {
        let links = match self.store.revisions(repo.as_str()) {
            Ok(l) => l,
            Err(e) => {
                self.error(format!("repository {repo}: {e}"));
                return Vec::new();
            }
        };
        let limit = self.registry.settings().max_manifest_bytes;
        let mut out = Vec::new();
        for link in links {
            let digest = match link {
                Ok(d) => d,
                Err(e) => {
                    self.error(format!("repository {repo}: {e}"));
                    continue;
                }
            };
            let content = match self.store.read_small_blob(&digest, limit) {
                Ok(c) => c,
                Err(e) => {
                    self.error(format!("repository {repo}: manifest {digest}: {e}"));
                    continue;
                }
            };
            match oci::manifest::parse(None, &content) {
                Ok(m) => out.push(Pending {
                    digest,
                    kind: m.kind,
                    children: m.manifests.iter().map(|d| d.digest.clone()).collect(),
                    content,
                }),
                Err(ManifestError::Schema1) => {
                    self.warn(format!(
                        "repository {repo}: manifest {digest} is a Docker schema1 manifest, which Berth does not serve; skipped (re-push the image with a current client to convert it)"
                    ));
                    self.skipped.insert(digest);
                }
                Err(e) => self.error(format!(
                    "repository {repo}: manifest {digest} is not valid: {e}; skipped"
                )),
            }
        }
        out
    }

    /// Images first, then indexes whose children are all in, until nothing moves; what
    /// is left is tried anyway so the registry names what it lacks.
    async fn store_manifests(
        &mut self,
        repo: &RepoName,
        pending: Vec<Pending>,
        mut tags: BTreeMap<Digest, Vec<Tag>>,
    ) {
        let (mut todo, indexes): (Vec<Pending>, Vec<Pending>) =
            pending.into_iter().partition(|p| p.kind == Kind::Image);
        let mut waiting = indexes;
        let mut done: HashSet<Digest> = HashSet::new();
        loop {
            for p in todo.drain(..) {
                let t = tags.remove(&p.digest).unwrap_or_default();
                if self
                    .store_manifest(repo, p.digest.clone(), p.content, t)
                    .await
                {
                    done.insert(p.digest);
                }
            }
            let (ready, rest): (Vec<Pending>, Vec<Pending>) = waiting
                .into_iter()
                .partition(|p| p.children.iter().all(|c| done.contains(c)));
            waiting = rest;
            if ready.is_empty() {
                break;
            }
            todo = ready;
        }
        // Children missing or failed: storing reports exactly which.
        for p in waiting {
            let t = tags.remove(&p.digest).unwrap_or_default();
            self.store_manifest(repo, p.digest, p.content, t).await;
        }
        for (digest, names) in tags {
            let names: Vec<&str> = names.iter().map(|t| t.as_str()).collect();
            if self.skipped.contains(&digest) {
                (self.on_event)(Event::Warning(format!(
                    "repository {repo}: tag(s) {} skipped with the schema1 manifest {digest}",
                    names.join(", ")
                )));
                continue;
            }
            self.error(format!(
                "repository {repo}: tag(s) {} point at {digest}, which is not an importable manifest of this repository; not imported",
                names.join(", ")
            ));
        }
    }

    async fn store_manifest(
        &mut self,
        repo: &RepoName,
        digest: Digest,
        content: Vec<u8>,
        tags: Vec<Tag>,
    ) -> bool {
        let present = match self.registry.has_manifest(repo, &digest).await {
            Ok(p) => p,
            Err(e) => {
                self.error(format!("repository {repo}: manifest {digest}: {e}"));
                return false;
            }
        };
        let ntags = tags.len() as u64;
        let reference = Reference::Digest(digest.clone());
        match self
            .registry
            .put_manifest(repo, &reference, None, content, tags)
            .await
        {
            Ok(_) => {
                if present {
                    self.summary.manifests_present += 1;
                } else {
                    self.manifests += 1;
                    self.summary.manifests += 1;
                }
                self.tags += ntags;
                self.summary.tags += ntags;
                true
            }
            Err(e) => {
                let hint = match e {
                    RegistryError::ManifestBlobUnknown(_) => {
                        " (content it references was not imported: see the errors above)"
                    }
                    _ => "",
                };
                self.error(format!(
                    "repository {repo}: manifest {digest} not imported: {e}{hint}"
                ));
                false
            }
        }
    }
}
