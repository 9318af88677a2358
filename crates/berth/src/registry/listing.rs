//! Listings: tags, the catalog and referrers, with bounded pages.

use super::{Registry, RegistryError, Result};
use crate::meta::Referrer;
use oci::{Digest, RepoName};

/// One page of a listing.
#[derive(Debug, Clone)]
pub struct Page {
    pub items: Vec<String>,
    /// The `n` the page was cut at, when more entries follow (for the `Link` header).
    pub more: Option<u32>,
}

impl Registry {
    /// Page size for a request asking for `n` (capped, so no client can ask the server to
    /// build an unbounded response).
    fn page_size(&self, n: Option<u32>, default: u32) -> u32 {
        n.unwrap_or(default).min(self.settings.max_page_entries)
    }

    fn page(items: Vec<String>, n: u32) -> Page {
        let mut items = items;
        let more = (items.len() > n as usize).then(|| {
            items.truncate(n as usize);
            n
        });
        Page { items, more }
    }

    pub async fn list_tags(
        &self,
        repo: &RepoName,
        last: Option<&str>,
        n: Option<u32>,
    ) -> Result<Page> {
        if let Some(page) = self.proxy_tags(repo, last, n).await? {
            return Ok(page);
        }
        let n = self.page_size(n, self.settings.max_page_entries);
        let items = self
            .meta
            .list_tags(repo, last, n.saturating_add(1))
            .await?
            .ok_or(RegistryError::NameUnknown)?;
        if n == 0 {
            return Ok(Page {
                items: Vec::new(),
                more: None,
            });
        }
        Ok(Self::page(items, n))
    }

    /// One page of repository names after `last`; with `within`, only those of these
    /// projects (filtered by the query, so pages keep their size).
    pub async fn catalog(
        &self,
        last: Option<&str>,
        n: Option<u32>,
        within: Option<&[String]>,
    ) -> Result<Page> {
        let n = self.page_size(n, self.settings.default_catalog_entries);
        if n == 0 {
            return Ok(Page {
                items: Vec::new(),
                more: None,
            });
        }
        let items = self
            .meta
            .list_repositories(last, n.saturating_add(1), within)
            .await?;
        Ok(Self::page(items, n))
    }

    /// One page of the manifests in `repo` whose subject is `subject` (empty for unknown
    /// repositories), after `last`; the second value is the `last` of the next page.
    pub async fn referrers(
        &self,
        repo: &RepoName,
        subject: &Digest,
        artifact_type: Option<&str>,
        last: Option<&str>,
    ) -> Result<(Vec<Referrer>, Option<String>)> {
        // A page is bounded by entries and by bytes: each entry may carry annotations
        // up to a manifest's size, and a page is an image index a client reads whole,
        // so it is kept within the manifest size limit (one entry at least).
        let n = self.settings.max_page_entries as usize;
        let max_bytes = self.settings.max_manifest_bytes as u64;
        let mut list = self
            .meta
            .referrers(
                repo,
                subject,
                artifact_type,
                last,
                self.settings.max_page_entries.saturating_add(1),
                max_bytes,
            )
            .await?;
        let mut bytes = 0u64;
        let fits = list
            .iter()
            .enumerate()
            .take_while(|(i, r)| {
                bytes += r.listed_bytes();
                *i == 0 || (*i < n && bytes <= max_bytes)
            })
            .count();
        let next = (list.len() > fits).then(|| {
            list.truncate(fits);
            list.last().map(|r| r.digest.to_string())
        });
        Ok((list, next.flatten()))
    }
}
