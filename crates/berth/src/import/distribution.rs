//! Reader for the filesystem store CNCF Distribution (`registry:2`, Debian's
//! `docker-registry`) writes: the only code in Berth that knows that foreign layout.
//!
//! ```text
//! <rootdirectory>/docker/registry/v2/
//!   blobs/sha256/<hex[0..2]>/<hex>/data                      blob bytes (manifests too)
//!   repositories/<name>/_layers/<alg>/<hex>/link             blob linked into <name>
//!   repositories/<name>/_manifests/revisions/<alg>/<hex>/link  manifest of <name>
//!   repositories/<name>/_manifests/tags/<tag>/current/link   what <tag> points at
//!   repositories/<name>/_uploads/...                         unfinished uploads (ignored)
//! ```
//! A link file holds a digest (`sha256:<hex>`, no newline); the digest it holds is the
//! canonical one (a `_layers/sha512/...` link may name a sha256 blob). `<name>` may have
//! several components, so a repository is any directory under `repositories/` that has a
//! `_layers` or `_manifests` directory. The reader only reads: it never changes the store.

use super::ImportError;
use oci::Digest;
use std::path::{Path, PathBuf};

/// A Distribution filesystem store, opened for reading.
pub struct DistributionStore {
    /// `<rootdirectory>/docker/registry/v2`.
    v2: PathBuf,
}

fn read_error(path: &Path, source: std::io::Error) -> ImportError {
    ImportError::Read {
        path: path.to_path_buf(),
        source,
    }
}

/// Sorted entry names of a directory; a missing directory has none.
fn dir_names(dir: &Path) -> Result<Vec<String>, ImportError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(read_error(dir, e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| read_error(dir, e))?;
        let is_dir = entry.file_type().map_err(|e| read_error(dir, e))?.is_dir();
        if is_dir {
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    names.sort();
    Ok(names)
}

impl DistributionStore {
    /// Open the store under Distribution's `storage.filesystem.rootdirectory`.
    pub fn open(root: &Path) -> Result<DistributionStore, ImportError> {
        let v2 = root.join("docker").join("registry").join("v2");
        if !v2.is_dir() {
            return Err(ImportError::NotADistributionRoot {
                root: root.to_path_buf(),
            });
        }
        Ok(DistributionStore { v2 })
    }

    fn repo_dir(&self, repo: &str) -> PathBuf {
        self.v2.join("repositories").join(repo)
    }

    /// Repository names (`a/b/c` for nested ones), sorted.
    pub fn repositories(&self) -> Result<Vec<String>, ImportError> {
        let mut out = Vec::new();
        let mut pending = vec![String::new()];
        while let Some(prefix) = pending.pop() {
            let dir = self.v2.join("repositories").join(&prefix);
            let names = dir_names(&dir)?;
            if names.iter().any(|n| n == "_layers" || n == "_manifests") {
                out.push(prefix.clone());
            }
            for n in names.into_iter().filter(|n| !n.starts_with('_')) {
                pending.push(if prefix.is_empty() {
                    n
                } else {
                    format!("{prefix}/{n}")
                });
            }
        }
        out.sort();
        Ok(out)
    }

    /// Read one link file: the digest it holds.
    fn read_link(&self, path: &Path) -> Result<Digest, ImportError> {
        let text = std::fs::read_to_string(path).map_err(|e| read_error(path, e))?;
        text.trim().parse().map_err(|_| ImportError::BadLink {
            path: path.to_path_buf(),
            content: text.chars().take(100).collect(),
        })
    }

    /// Digests under `<dir>/<alg>/<hex>/link`, each read from its link file. A link that
    /// cannot be read is returned as an error in its place, so one bad file does not hide
    /// the others.
    fn links_under(&self, dir: &Path) -> Result<Vec<Result<Digest, ImportError>>, ImportError> {
        let mut out = Vec::new();
        for alg in dir_names(dir)? {
            for hex in dir_names(&dir.join(&alg))? {
                out.push(self.read_link(&dir.join(&alg).join(&hex).join("link")));
            }
        }
        Ok(out)
    }

    /// Blobs (layers and configs) linked into `repo`.
    pub fn layers(&self, repo: &str) -> Result<Vec<Result<Digest, ImportError>>, ImportError> {
        self.links_under(&self.repo_dir(repo).join("_layers"))
    }

    /// Manifests stored in `repo`.
    pub fn revisions(&self, repo: &str) -> Result<Vec<Result<Digest, ImportError>>, ImportError> {
        self.links_under(&self.repo_dir(repo).join("_manifests").join("revisions"))
    }

    /// Tags of `repo` with what each points at now (`current/link`); tag history is not
    /// read.
    #[allow(clippy::type_complexity)]
    pub fn tags(
        &self,
        repo: &str,
    ) -> Result<Vec<(String, Result<Digest, ImportError>)>, ImportError> {
        let dir = self.repo_dir(repo).join("_manifests").join("tags");
        let mut out = Vec::new();
        for tag in dir_names(&dir)? {
            let link = dir.join(&tag).join("current").join("link");
            if link.exists() {
                let target = self.read_link(&link);
                out.push((tag, target));
            }
        }
        Ok(out)
    }

    /// Where the bytes of blob `digest` are.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.v2
            .join("blobs")
            .join(digest.algorithm().as_str())
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// The bytes of blob `digest` (a manifest), refusing more than `limit` bytes.
    pub fn read_small_blob(&self, digest: &Digest, limit: usize) -> Result<Vec<u8>, ImportError> {
        let path = self.blob_path(digest);
        let len = std::fs::metadata(&path)
            .map_err(|e| read_error(&path, e))?
            .len();
        if len > limit as u64 {
            return Err(ImportError::TooLarge { path, limit });
        }
        std::fs::read(&path).map_err(|e| read_error(&path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::DistributionStore;
    use oci::{Algorithm, Digest};

    #[test]
    fn reads_nested_repositories_links_and_tags() {
        let dir = tempfile::tempdir().expect("tempdir");
        let v2 = dir.path().join("docker/registry/v2");
        let d = Digest::of(Algorithm::Sha256, b"x");
        let link = |rel: &str| {
            let p = v2.join(rel);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(&p, d.as_str()).expect("write");
        };
        link(&format!(
            "repositories/a/b/c/_layers/sha256/{}/link",
            d.hex()
        ));
        link(&format!(
            "repositories/a/_manifests/revisions/sha256/{}/link",
            d.hex()
        ));
        link("repositories/a/_manifests/tags/v1/current/link");
        std::fs::create_dir_all(v2.join("repositories/a/_uploads/u1")).expect("mkdir");

        let store = DistributionStore::open(dir.path()).expect("open");
        assert_eq!(store.repositories().expect("repos"), ["a", "a/b/c"]);
        let layers = store.layers("a/b/c").expect("layers");
        assert_eq!(layers.len(), 1);
        assert_eq!(layers[0].as_ref().expect("link"), &d);
        assert!(store.layers("a").expect("layers").is_empty());
        let tags = store.tags("a").expect("tags");
        assert_eq!(tags[0].0, "v1");
        assert!(store.blob_path(&d).ends_with(format!(
            "blobs/sha256/{}/{}/data",
            &d.hex()[..2],
            d.hex()
        )));
        assert!(DistributionStore::open(&dir.path().join("nope")).is_err());
    }
}
