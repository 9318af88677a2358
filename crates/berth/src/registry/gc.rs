//! Garbage collection (`berth garbage-collect`): mark every blob a manifest references,
//! then sweep the stored blobs nothing marks, with Distribution 2.8's output.
//!
//! Safe while the server runs: only blobs older than the grace period are swept, a blob
//! linked or re-committed within it is kept, and each delete re-checks in one metadata
//! transaction that nothing references the blob before the file is removed. With
//! `delete_untagged`, manifests no tag reaches are deleted first — unlike 2.8, the
//! children of a tagged index and referrers of a reachable manifest count as reachable,
//! and manifests younger than the grace period are kept (a multi-arch push stores its
//! children before the tagged index).

use super::{Registry, Result};
use crate::meta::GcManifest;
use oci::{Digest, RepoName};
use std::collections::HashSet;
use std::time::{Duration, SystemTime};

/// How to collect.
#[derive(Debug, Clone)]
pub struct GcOptions {
    /// Report only; delete nothing.
    pub dry_run: bool,
    /// Delete manifests that no tag reaches (and the blobs only they referenced).
    pub delete_untagged: bool,
    /// Blobs and manifests younger than this are never deleted.
    pub grace: Duration,
}

/// What a collection found and did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GcReport {
    pub marked: usize,
    pub eligible_blobs: usize,
    pub eligible_manifests: usize,
    /// Unmarked blobs kept because they are younger than the grace period.
    pub young_blobs: usize,
    pub deleted_blobs: usize,
    pub deleted_manifests: usize,
    pub freed_bytes: u64,
}

/// Manifests of one repository that a tag reaches: tagged ones, the manifests they
/// reference (index children), referrers of reachable ones, and young ones (`protected`).
pub fn reachable(
    manifests: &[GcManifest],
    protected: impl Fn(&GcManifest) -> bool,
) -> HashSet<Digest> {
    let mut seen: HashSet<Digest> = manifests
        .iter()
        .filter(|m| m.tagged || protected(m))
        .map(|m| m.digest.clone())
        .collect();
    loop {
        let before = seen.len();
        for m in manifests {
            if seen.contains(&m.digest) {
                for (child, is_manifest) in &m.references {
                    if *is_manifest {
                        seen.insert(child.clone());
                    }
                }
            } else if m.subject.as_ref().is_some_and(|s| seen.contains(s)) {
                seen.insert(m.digest.clone());
            }
        }
        if seen.len() == before {
            return seen;
        }
    }
}

fn epoch_secs(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl Registry {
    /// Run one collection; every line of the report goes to `out`.
    pub async fn garbage_collect(
        &self,
        options: &GcOptions,
        out: &mut (dyn FnMut(String) + Send),
    ) -> Result<GcReport> {
        let now = SystemTime::now();
        let cutoff_time = now
            .checked_sub(options.grace)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let cutoff = epoch_secs(cutoff_time);
        let mut report = GcReport::default();
        let mut marked: HashSet<Digest> = HashSet::new();
        let mut untagged: Vec<(RepoName, Digest)> = Vec::new();

        let mut last: Option<String> = None;
        loop {
            let page = self.meta.list_repositories(last.as_deref(), 1000).await?;
            let Some(tail) = page.last().cloned() else {
                break;
            };
            for name in page {
                let Ok(repo) = name.parse::<RepoName>() else {
                    continue;
                };
                out(name.clone());
                let manifests = self.meta.gc_manifests(&repo).await?;
                let keep = options
                    .delete_untagged
                    .then(|| reachable(&manifests, |m| m.created_at > cutoff));
                for m in &manifests {
                    if keep.as_ref().is_some_and(|k| !k.contains(&m.digest)) {
                        out(format!("manifest eligible for deletion: {}", m.digest));
                        untagged.push((repo.clone(), m.digest.clone()));
                        continue;
                    }
                    out(format!("{name}: marking manifest {} ", m.digest));
                    marked.insert(m.digest.clone());
                    for (child, _) in &m.references {
                        out(format!("{name}: marking blob {child}"));
                        marked.insert(child.clone());
                    }
                }
            }
            last = Some(tail);
        }

        let mut eligible = Vec::new();
        for blob in self.blobs.list().await? {
            if marked.contains(&blob.digest) {
                continue;
            }
            if blob.modified > cutoff_time {
                report.young_blobs += 1;
            } else {
                eligible.push(blob);
            }
        }
        eligible.sort_by(|a, b| a.digest.as_str().cmp(b.digest.as_str()));
        report.marked = marked.len();
        report.eligible_blobs = eligible.len();
        report.eligible_manifests = untagged.len();
        out(String::new());
        out(format!(
            "{} blobs marked, {} blobs and {} manifests eligible for deletion",
            report.marked, report.eligible_blobs, report.eligible_manifests
        ));
        for blob in &eligible {
            out(format!("blob eligible for deletion: {}", blob.digest));
        }
        if options.dry_run {
            out(format!(
                "dry run: nothing deleted; {} blobs ({} bytes) and {} manifests would be deleted, {} unreferenced blobs are younger than the grace period",
                report.eligible_blobs,
                eligible.iter().map(|b| b.size).sum::<u64>(),
                report.eligible_manifests,
                report.young_blobs
            ));
            return Ok(report);
        }

        for (repo, digest) in &untagged {
            if self.meta.gc_delete_untagged(repo, digest).await? {
                tracing::info!("deleting manifest: {repo}@{digest}");
                report.deleted_manifests += 1;
            } else {
                tracing::info!(
                    "keeping manifest {repo}@{digest}: it was tagged or referenced meanwhile"
                );
            }
        }
        for blob in &eligible {
            // Metadata first, re-checked in its transaction: from then on nothing can
            // link or reference the blob without uploading it again.
            if !self.meta.gc_forget_blob(&blob.digest, cutoff).await? {
                tracing::info!(
                    "keeping blob {}: referenced or linked meanwhile",
                    blob.digest
                );
                continue;
            }
            tracing::info!("deleting blob: {}", blob.digest);
            if self.blobs.delete(&blob.digest).await? {
                report.deleted_blobs += 1;
                report.freed_bytes += blob.size;
            }
        }
        out(format!(
            "deleted {} blobs ({} bytes freed) and {} manifests; {} unreferenced blobs are younger than the grace period and were kept",
            report.deleted_blobs, report.freed_bytes, report.deleted_manifests, report.young_blobs
        ));
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci::Algorithm;

    fn d(s: &str) -> Digest {
        Digest::of(Algorithm::Sha256, s.as_bytes())
    }

    fn m(name: &str, tagged: bool, subject: Option<&str>, children: &[&str]) -> GcManifest {
        GcManifest {
            digest: d(name),
            tagged,
            subject: subject.map(d),
            created_at: 0,
            references: children.iter().map(|c| (d(c), true)).collect(),
        }
    }

    #[test]
    fn index_children_and_referrers_are_reachable() {
        let all = vec![
            m("index", true, None, &["amd64", "arm64"]),
            m("amd64", false, None, &[]),
            m("arm64", false, None, &[]),
            m("signature", false, Some("index"), &[]),
            m("sbom-of-signature", false, Some("signature"), &[]),
            m("old", false, None, &[]),
            m("referrer-of-old", false, Some("old"), &[]),
        ];
        let r = reachable(&all, |_| false);
        for name in ["index", "amd64", "arm64", "signature", "sbom-of-signature"] {
            assert!(r.contains(&d(name)), "{name} is reachable");
        }
        assert!(!r.contains(&d("old")));
        assert!(!r.contains(&d("referrer-of-old")));
        let young = reachable(&all, |m| m.digest == d("old"));
        assert!(young.contains(&d("old")) && young.contains(&d("referrer-of-old")));
    }
}
