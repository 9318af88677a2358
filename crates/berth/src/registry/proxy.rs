//! The pull-through cache (`proxy`): manifests, blobs and tags come from the
//! [`Upstream`] on demand and are kept locally.
//!
//! - Manifests by digest: local if cached, else fetched (digest verified) and stored
//!   without requiring their blobs ([`Registry::cache_manifest`]); by tag: a HEAD upstream
//!   says where the tag points now; a cached tag already there is served, else the manifest
//!   is fetched by digest and the tag moved. An unreachable or failing upstream serves the
//!   cached tag (stale-if-error).
//! - Blobs: one background fill per repository and digest ([`Fill`]), independent of any client: the
//!   upstream body is written into an ordinary upload in segments (hashed while written),
//!   verified, committed and linked. Every client asking meanwhile reads the growing upload
//!   up to the mark a `watch` channel publishes; the last byte is only released once the
//!   digest is verified, so no client ever receives a complete wrong blob.
//! - In a cluster, one node fetches a blob at a time: a fill claims
//!   `proxy-fill <repository>@<digest>` through the database (renewed while it runs,
//!   released at its end); a node that finds the claim held waits for the blob to arrive
//!   (polling the metadata) and serves it then, or takes the claim over if the holder
//!   died or gave up.
//! - Use of cached content is recorded in metadata ([`crate::meta::ProxyCache`]) for
//!   `proxy.ttl`; [`Registry::expire_proxy_cache`] removes what went unused.

use super::claims::HeldClaim;
use super::upstream::{Upstream, UpstreamError};
use super::{Page, Registry, RegistryError, Result};
use crate::meta::{now, BlobRecord, MetaError, MetaStore};
use crate::storage::{BlobStore, ByteRange, ByteStream, StorageError, UploadProgress};
use futures_util::StreamExt;
use oci::{Digest, Reference, RepoName, Tag};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// A fill writes at most this much per append before publishing progress (and fsyncing).
pub const FILL_SEGMENT: u64 = 4 << 20;
/// Most cache entries one expiry step removes.
const EXPIRE_BATCH: u32 = 500;
/// A fill's cluster-wide claim lasts this long unless renewed (every third of it).
const FILL_LEASE: Duration = Duration::from_secs(30);
/// How often a node waiting for another node's fill looks for the blob.
const REMOTE_FILL_POLL: Duration = Duration::from_millis(250);

/// How the cache behaves.
#[derive(Debug, Clone, Copy)]
pub struct ProxyOptions {
    /// `proxy.ttl`: unused content is removed after this long; `None` keeps it forever.
    pub ttl: Option<Duration>,
}

/// Counters for metrics (`berth_proxy_*`).
#[derive(Debug, Default)]
pub struct ProxyCounters {
    pub manifest_hit: AtomicU64,
    pub manifest_miss: AtomicU64,
    pub manifest_stale: AtomicU64,
    pub blob_hit: AtomicU64,
    pub blob_miss: AtomicU64,
    pub upstream_bytes: AtomicU64,
    pub upstream_errors: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// What every pull-through cache of the process shares (the `proxy` section's and the
/// proxy-cache projects'): fills (keyed by the local repository name), counters, and the
/// owner name of its cluster-wide claims.
pub(super) struct ProxyShared {
    fills: Fills,
    counters: Arc<ProxyCounters>,
    owner: String,
}

impl Default for ProxyShared {
    fn default() -> Self {
        ProxyShared {
            fills: Arc::default(),
            counters: Arc::default(),
            owner: format!("proxy {}", uuid::Uuid::new_v4()),
        }
    }
}

/// A pull-through cache of one upstream: the whole registry's (`proxy`), or one
/// proxy-cache project's.
pub(super) struct Proxy {
    upstream: Arc<dyn Upstream>,
    options: ProxyOptions,
    /// Whether a blob the registry holds may be served through this cache when the
    /// upstream cannot confirm the repository has it. True only for the whole-registry
    /// cache: beside ordinary projects, that would hand out any project's blobs to
    /// whoever knows a digest.
    serve_unconfirmed: bool,
    fills: Fills,
    counters: Arc<ProxyCounters>,
    /// This process, in the cluster-wide claims of its fills.
    owner: String,
}

/// The claim a fill of `digest` through `repo` holds in a cluster.
fn fill_claim(repo: &RepoName, digest: &Digest) -> String {
    format!("proxy-fill {repo}@{digest}")
}

#[derive(Debug, Clone)]
enum FillError {
    NotFound,
    Failed(String),
}

/// Progress of a blob fill, published to every client reading it.
#[derive(Debug, Clone, Default)]
struct FillState {
    /// The blob's size, once the upstream answered.
    size: Option<u64>,
    /// Bytes durably written to the upload so far.
    written: u64,
    /// `Some(Ok)` once committed; `Some(Err)` when the fill failed.
    outcome: Option<Result<(), FillError>>,
}

/// One background fetch of a blob from upstream, for one repository.
struct Fill {
    upload_id: String,
    state: watch::Sender<FillState>,
}

/// The fills in progress, by repository and digest: pulls of one blob through one
/// repository share a fetch; a pull through another repository (which the upstream may
/// not serve it from, or may refuse) never rides on, or spoils, someone else's.
type Fills = Arc<tokio::sync::Mutex<HashMap<(RepoName, Digest), Arc<Fill>>>>;

/// What a blob request found.
enum Source {
    /// Present locally (now linked into the repository).
    Local,
    /// Present locally, not confirmed for this repository (the upstream failed): served,
    /// not linked.
    Unlinked(BlobRecord),
    /// Being fetched.
    Filling(Arc<Fill>),
}

/// What the cache holds of a blob asked for through a repository it is not linked into.
enum Cached {
    /// Linked now (the upstream confirmed the repository has it).
    Linked(BlobRecord),
    /// Held, but the upstream could not confirm: serve without linking.
    Unlinked(BlobRecord),
    /// Not held.
    No,
}

/// Everything a fill task needs, owned (the task outlives the request that started it).
struct FillTask {
    upstream: Arc<dyn Upstream>,
    blobs: Arc<dyn BlobStore>,
    meta: Arc<dyn MetaStore>,
    fills: Fills,
    counters: Arc<ProxyCounters>,
    fill: Arc<Fill>,
    repo: RepoName,
    digest: Digest,
    max_blob_bytes: u64,
    touch: (i64, i64),
    /// The claim this fill holds, and for whom.
    claim: String,
    owner: String,
}

impl FillTask {
    async fn run(self) {
        // Keep the cluster-wide claim while fetching; give it up at the end (a panic
        // drops it: the claim then runs out within FILL_LEASE).
        let held = HeldClaim::hold(self.meta.clone(), &self.claim, &self.owner, FILL_LEASE);
        self.fill_and_record().await;
        held.release().await;
    }

    async fn fill_and_record(&self) {
        let result = self.fetch().await;
        let outcome = match result {
            Ok(size) => self.record(size).await,
            Err(e) => {
                self.fills.lock().await.remove(&self.key());
                let _ = self.blobs.delete_upload(&self.fill.upload_id).await;
                if let FillError::Failed(msg) = &e {
                    bump(&self.counters.upstream_errors);
                    tracing::warn!(digest = %self.digest, repo = %self.repo, "pull-through fetch failed: {msg}");
                }
                Err(e)
            }
        };
        self.fill.state.send_modify(|s| s.outcome = Some(outcome));
    }

    fn key(&self) -> (RepoName, Digest) {
        (self.repo.clone(), self.digest.clone())
    }

    /// After the commit: record the blob in metadata, link it into the repository, and
    /// retire the fill.
    async fn record(&self, size: u64) -> Result<(), FillError> {
        // The link first, while the fill is still findable: a request that no longer
        // finds the fill finds the linked blob instead of fetching it again.
        let linked = self.link(&self.repo, size).await;
        self.fills.lock().await.remove(&self.key());
        // Garbage collection may have taken the file between the commit and the link
        // (see registry/gc.rs); the upload still holds the bytes, so commit them again.
        // (A blob recorded at a key of its own meanwhile is read there: the fill's copy
        // at the digest's path is only what this fill's readers stream.)
        let by_digest = matches!(linked, Ok(None));
        let mut linked = linked.map(drop);
        let kept = async {
            if by_digest && self.blobs.stat((&self.digest).into()).await?.is_none() {
                tracing::info!(digest = %self.digest, "blob collected while it was cached; committing it again");
                self.blobs
                    .commit_upload(&self.fill.upload_id, &self.digest)
                    .await?;
            }
            self.blobs.delete_upload(&self.fill.upload_id).await
        };
        if let Err(e) = kept.await {
            tracing::error!(digest = %self.digest, "cannot finish storing a fetched blob: {e}");
            linked = linked.and(Err(FillError::Failed(format!(
                "storing the blob failed: {e}"
            ))));
        }
        linked
    }

    /// The key metadata holds for the blob afterwards (`None`: the digest's own path).
    async fn link(&self, repo: &RepoName, size: u64) -> Result<Option<String>, FillError> {
        let r = super::blobs::record_blob(&*self.meta, repo, &self.digest, size, None, &[]).await;
        let t = self
            .meta
            .cache_touch(repo, &self.digest, false, self.touch.0, self.touch.1)
            .await;
        r.and_then(|key| t.map(|()| key)).map_err(|e| {
            tracing::error!(digest = %self.digest, %repo, "cannot link a fetched blob: {e}");
            FillError::Failed(format!("storing blob metadata failed: {e}"))
        })
    }

    /// Fetch, write, verify and commit; the blob's size on success.
    async fn fetch(&self) -> Result<u64, FillError> {
        let blob = self
            .upstream
            .blob(&self.repo, &self.digest)
            .await
            .map_err(|e| match e {
                UpstreamError::NotFound => FillError::NotFound,
                UpstreamError::Failed(m) | UpstreamError::Denied(m) => FillError::Failed(m),
            })?;
        let url = self.upstream.url().to_string();
        let failed = |what: String| {
            FillError::Failed(format!("fetching {} from {url}: {what}", self.digest))
        };
        let size = blob
            .size
            .ok_or_else(|| failed("the upstream sent no Content-Length".into()))?;
        if size > self.max_blob_bytes {
            return Err(failed(format!(
                "the blob has {size} bytes, more than limits.blobsize ({})",
                self.max_blob_bytes
            )));
        }
        let storage = |e: StorageError| failed(format!("storage: {e}"));
        self.blobs
            .create_upload(&self.fill.upload_id)
            .await
            .map_err(storage)?;
        self.fill.state.send_modify(|s| s.size = Some(size));
        let body = Arc::new(tokio::sync::Mutex::new(blob.body));
        let ended = Arc::new(AtomicBool::new(false));
        let mut progress = UploadProgress {
            size: 0,
            hasher: self.digest.algorithm().hasher(),
        };
        while !ended.load(Ordering::Relaxed) {
            let before = progress.size;
            let segment = segment(body.clone(), ended.clone(), FILL_SEGMENT);
            progress = self
                .blobs
                .append_upload(&self.fill.upload_id, progress, segment, size)
                .await
                .map_err(|e| match e {
                    StorageError::TooLarge { .. } => failed(format!(
                        "the upstream sent more than its Content-Length ({size} bytes)"
                    )),
                    StorageError::Body(e) => failed(format!("the download broke off: {e}")),
                    other => storage(other),
                })?;
            self.counters
                .upstream_bytes
                .fetch_add(progress.size - before, Ordering::Relaxed);
            let written = progress.size;
            self.fill.state.send_modify(|s| s.written = written);
        }
        if progress.size != size {
            return Err(failed(format!(
                "the upstream sent {} of {size} bytes",
                progress.size
            )));
        }
        let actual = progress.hasher.digest();
        if actual != self.digest {
            return Err(failed(format!(
                "the content's digest is {actual}: discarded"
            )));
        }
        self.blobs
            .commit_upload(&self.fill.upload_id, &self.digest)
            .await
            .map_err(storage)?;
        Ok(size)
    }
}

/// The next `limit` bytes (or a little more: whole chunks) of a shared body; sets `ended`
/// when the body is exhausted.
fn segment(
    body: Arc<tokio::sync::Mutex<ByteStream>>,
    ended: Arc<AtomicBool>,
    limit: u64,
) -> ByteStream {
    Box::pin(futures_util::stream::unfold(0u64, move |taken| {
        let body = body.clone();
        let ended = ended.clone();
        async move {
            if taken >= limit {
                return None;
            }
            match body.lock().await.next().await {
                Some(Ok(b)) => {
                    let n = b.len() as u64;
                    Some((Ok(b), taken + n))
                }
                Some(Err(e)) => Some((Err(e), u64::MAX)),
                None => {
                    ended.store(true, Ordering::Relaxed);
                    None
                }
            }
        }
    }))
}

/// A client's view of a fill: bytes `pos..end` as they become available.
struct FillReader {
    blobs: Arc<dyn BlobStore>,
    fill: Arc<Fill>,
    rx: watch::Receiver<FillState>,
    digest: Digest,
    pos: u64,
    end: u64,
    inner: Option<ByteStream>,
    failed: bool,
}

impl FillReader {
    async fn next_chunk(&mut self) -> Option<std::io::Result<bytes::Bytes>> {
        loop {
            if self.failed {
                return None;
            }
            if let Some(inner) = &mut self.inner {
                match inner.next().await {
                    Some(Ok(b)) => {
                        self.pos += b.len() as u64;
                        return Some(Ok(b));
                    }
                    Some(Err(e)) => {
                        self.failed = true;
                        return Some(Err(e));
                    }
                    None => {
                        self.inner = None;
                        continue;
                    }
                }
            }
            if self.pos >= self.end {
                return None;
            }
            let state = self.rx.borrow_and_update().clone();
            match state.outcome {
                Some(Err(e)) => {
                    self.failed = true;
                    let msg = match e {
                        FillError::NotFound => "the upstream no longer has the blob".to_string(),
                        FillError::Failed(m) => m,
                    };
                    return Some(Err(std::io::Error::other(msg)));
                }
                Some(Ok(())) => {
                    let range = ByteRange {
                        start: self.pos,
                        end: self.end - 1,
                    };
                    match self.blobs.get((&self.digest).into(), Some(range)).await {
                        Ok(s) => self.inner = Some(s),
                        Err(e) => {
                            self.failed = true;
                            return Some(Err(std::io::Error::other(e.to_string())));
                        }
                    }
                }
                None => {
                    // The last byte waits for verification.
                    let size = state.size.unwrap_or(0);
                    let ready = state.written.min(size.saturating_sub(1)).min(self.end);
                    if ready > self.pos {
                        let range = ByteRange {
                            start: self.pos,
                            end: ready - 1,
                        };
                        match self.blobs.read_upload(&self.fill.upload_id, range).await {
                            Ok(s) => {
                                self.inner = Some(s);
                                continue;
                            }
                            // Committed meanwhile: the next state says so.
                            Err(StorageError::UploadNotFound) => {}
                            Err(e) => {
                                self.failed = true;
                                return Some(Err(std::io::Error::other(e.to_string())));
                            }
                        }
                    }
                    if self.rx.changed().await.is_err() {
                        self.failed = true;
                        return Some(Err(std::io::Error::other("the blob fetch stopped")));
                    }
                }
            }
        }
    }

    fn into_stream(self) -> ByteStream {
        Box::pin(futures_util::stream::unfold(self, |mut r| async move {
            r.next_chunk().await.map(|c| (c, r))
        }))
    }
}

impl Registry {
    /// Attach a pull-through cache of `upstream`: reads fall through to it, and the
    /// registry refuses pushes and deletes (the HTTP layer answers them).
    pub fn with_proxy(mut self, upstream: Arc<dyn Upstream>, options: ProxyOptions) -> Registry {
        let mut proxy = self.project_proxy(upstream, options);
        proxy.serve_unconfirmed = true;
        self.proxy = Some(Arc::new(proxy));
        self
    }

    /// A cache of `upstream` sharing the process's fills and counters.
    pub(super) fn project_proxy(
        &self,
        upstream: Arc<dyn Upstream>,
        options: ProxyOptions,
    ) -> Proxy {
        let shared = &self.proxy_shared;
        Proxy {
            upstream,
            options,
            serve_unconfirmed: false,
            fills: shared.fills.clone(),
            counters: shared.counters.clone(),
            owner: shared.owner.clone(),
        }
    }

    /// The upstream's URL when this registry is a pull-through cache.
    pub fn proxy_url(&self) -> Option<&str> {
        self.proxy.as_ref().map(|p| p.upstream.url())
    }

    /// The pull-through caches' counters (the `proxy` section's and the proxy-cache
    /// projects' together), when there is a cache.
    pub fn proxy_counters(&self) -> Option<&ProxyCounters> {
        (self.proxy.is_some() || self.has_proxy_projects())
            .then_some(self.proxy_shared.counters.as_ref())
    }

    /// Record use of cached content: `(now, fresh_after)` for [`crate::meta::ProxyCache::cache_touch`].
    fn touch_times(p: &Proxy) -> (i64, i64) {
        let t = now();
        let granularity = p.options.ttl.map_or(60, |ttl| (ttl.as_secs() / 10).min(60)) as i64;
        (
            t,
            if granularity == 0 {
                i64::MAX
            } else {
                t - granularity
            },
        )
    }

    async fn touch(&self, p: &Proxy, repo: &RepoName, digest: &Digest, is_manifest: bool) {
        let (at, fresh_after) = Self::touch_times(p);
        if let Err(e) = self
            .meta
            .cache_touch(repo, digest, is_manifest, at, fresh_after)
            .await
        {
            tracing::warn!(%repo, %digest, "cannot record use of cached content: {e}");
        }
    }

    /// A blob linked into `repo`, which `p` caches, was served: counted and recorded.
    pub(super) async fn proxy_hit(&self, p: &Proxy, repo: &RepoName, digest: &Digest) {
        bump(&p.counters.blob_hit);
        self.touch(p, repo, digest, false).await;
    }

    fn upstream_failed(&self, p: &Proxy, msg: String) -> RegistryError {
        bump(&p.counters.upstream_errors);
        RegistryError::Upstream(msg)
    }

    /// Store a manifest fetched from upstream. Unlike a push, its blobs need not be
    /// present (they are fetched when asked for); the content was verified against its
    /// digest by the caller.
    async fn cache_manifest(
        &self,
        p: &Proxy,
        repo: &RepoName,
        digest: &Digest,
        media_type: &str,
        content: Vec<u8>,
        tag: Option<&Tag>,
    ) -> Result<()> {
        let parsed = oci::manifest::parse(Some(media_type).filter(|m| !m.is_empty()), &content)
            .map_err(|e| {
                RegistryError::ManifestInvalid(format!(
                    "the upstream's manifest {digest} cannot be cached: {e}"
                ))
            })?;
        let record = super::manifests::manifest_record(
            &parsed,
            digest.clone(),
            content,
            Vec::new(),
            Vec::new(),
        );
        let tags: Vec<Tag> = tag.into_iter().cloned().collect();
        self.meta
            .put_manifest(repo, &record, &tags, &[])
            .await
            .map_err(|e| match e {
                MetaError::MissingReferences(gone) => RegistryError::ManifestBlobUnknown(gone),
                other => other.into(),
            })?;
        self.touch(p, repo, digest, true).await;
        Ok(())
    }

    /// Make sure `reference` is in the cache as fresh as the upstream allows; called
    /// before a manifest is read in proxy mode.
    pub(super) async fn proxy_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<()> {
        let Some(p) = self.proxy_for(repo).await else {
            return Ok(());
        };
        let p = &*p;
        let cached = self.meta.get_manifest(repo, reference).await?;
        match reference {
            Reference::Digest(d) => {
                if cached.is_some() {
                    bump(&p.counters.manifest_hit);
                    self.touch(p, repo, d, true).await;
                    return Ok(());
                }
                match p.upstream.manifest(repo, reference).await {
                    Ok(m) => {
                        bump(&p.counters.manifest_miss);
                        self.cache_manifest(p, repo, &m.digest, &m.media_type, m.content, None)
                            .await
                    }
                    Err(UpstreamError::NotFound) => {
                        Err(RegistryError::ManifestUnknown(reference.to_string()))
                    }
                    Err(UpstreamError::Failed(msg) | UpstreamError::Denied(msg)) => Err(self
                        .upstream_failed(
                            p,
                            format!("{msg}; manifest {d} of {repo} is not cached"),
                        )),
                }
            }
            Reference::Tag(tag) => {
                let fresh = match p.upstream.tag_digest(repo, tag).await {
                    Ok(Some(d)) if cached.as_ref().is_some_and(|c| c.digest == d) => {
                        bump(&p.counters.manifest_hit);
                        self.touch(p, repo, &d, true).await;
                        return Ok(());
                    }
                    Ok(Some(d)) => {
                        let by_digest = Reference::Digest(d.clone());
                        match self.meta.get_manifest(repo, &by_digest).await? {
                            Some(m) => Ok(m),
                            None => p.upstream.manifest(repo, &by_digest).await.map(|m| {
                                crate::meta::StoredManifest {
                                    digest: m.digest,
                                    media_type: m.media_type,
                                    content: m.content,
                                }
                            }),
                        }
                    }
                    Ok(None) => p.upstream.manifest(repo, reference).await.map(|m| {
                        crate::meta::StoredManifest {
                            digest: m.digest,
                            media_type: m.media_type,
                            content: m.content,
                        }
                    }),
                    Err(e) => Err(e),
                };
                match fresh {
                    Ok(m) => {
                        bump(&p.counters.manifest_miss);
                        self.cache_manifest(p, repo, &m.digest, &m.media_type, m.content, Some(tag))
                            .await
                    }
                    Err(UpstreamError::NotFound) => {
                        // Gone upstream: the cached tag goes too, so a later outage does
                        // not bring it back as stale.
                        if cached.is_some() {
                            if let Err(e) = self.meta.delete_tag(repo, tag, &[]).await {
                                tracing::warn!(%repo, %tag, "cannot drop a tag the upstream no longer has: {e}");
                            }
                        }
                        Err(RegistryError::ManifestUnknown(reference.to_string()))
                    }
                    Err(UpstreamError::Failed(msg) | UpstreamError::Denied(msg)) => {
                        bump(&p.counters.upstream_errors);
                        match cached {
                            Some(c) => {
                                bump(&p.counters.manifest_stale);
                                tracing::warn!(
                                    %repo, %tag, digest = %c.digest,
                                    "serving the cached tag: the upstream failed: {msg}"
                                );
                                self.touch(p, repo, &c.digest, true).await;
                                Ok(())
                            }
                            None => Err(RegistryError::Upstream(format!(
                                "{msg}; {repo}:{tag} is not cached"
                            ))),
                        }
                    }
                }
            }
        }
    }

    /// Find where to read `digest` for `repo` in proxy mode: local, or a fill (joined or
    /// started). `None` when not in proxy mode.
    async fn blob_source(&self, p: &Proxy, repo: &RepoName, digest: &Digest) -> Result<Source> {
        let key = (repo.clone(), digest.clone());
        if let Some(fill) = p.fills.lock().await.get(&key) {
            return Ok(Source::Filling(fill.clone()));
        }
        match self.mount_cached(p, repo, digest).await? {
            Cached::Linked(_) => return Ok(Source::Local),
            Cached::Unlinked(size) => return Ok(Source::Unlinked(size)),
            Cached::No => {}
        }
        // A project at its quota fetches nothing (the exact check is at the link).
        self.check_quota_room(repo).await?;
        let mut fills = p.fills.lock().await;
        if let Some(fill) = fills.get(&key) {
            return Ok(Source::Filling(fill.clone()));
        }
        let claim = fill_claim(repo, digest);
        // Each fill claims for itself, so a finished fill's release can never drop the
        // claim of a newer fill of the same blob.
        let upload_id = uuid::Uuid::new_v4().to_string();
        let owner = format!("{} fill {upload_id}", p.owner);
        if let Err(holder) = self.meta.claim_job(&claim, &owner, FILL_LEASE).await? {
            // Another node is fetching it: wait for the blob rather than fetch it twice.
            drop(fills);
            tracing::debug!(%repo, %digest, holder = %holder.owner, "pull-through: another node is fetching this blob; waiting for it");
            return Box::pin(self.await_remote_fill(p, repo, digest)).await;
        }
        let fill = Arc::new(Fill {
            upload_id,
            state: watch::channel(FillState::default()).0,
        });
        fills.insert(key.clone(), fill.clone());
        drop(fills);
        let task = FillTask {
            upstream: p.upstream.clone(),
            blobs: self.blobs.clone(),
            meta: self.meta.clone(),
            fills: p.fills.clone(),
            counters: p.counters.clone(),
            fill: fill.clone(),
            repo: repo.clone(),
            digest: digest.clone(),
            max_blob_bytes: self.settings.max_blob_bytes,
            touch: Self::touch_times(p),
            claim,
            owner,
        };
        let (map, watched) = (p.fills.clone(), fill.clone());
        tokio::spawn(async move {
            use futures_util::FutureExt as _;
            // A panic in the fill must not leave its readers waiting for ever, nor later
            // requests joining a dead fill: retire it with an error.
            if std::panic::AssertUnwindSafe(task.run())
                .catch_unwind()
                .await
                .is_err()
            {
                tracing::error!(repo = %key.0, digest = %key.1, "the pull-through fetch task panicked");
                let mut map = map.lock().await;
                if map.get(&key).is_some_and(|f| Arc::ptr_eq(f, &watched)) {
                    map.remove(&key);
                }
                drop(map);
                watched.state.send_modify(|s| {
                    if s.outcome.is_none() {
                        s.outcome = Some(Err(FillError::Failed(
                            "the fetch from the upstream failed unexpectedly".into(),
                        )));
                    }
                });
            }
        });
        Ok(Source::Filling(fill))
    }

    /// Another node holds the fill of `digest` for `repo`: wait until the blob is in the
    /// cache (then serve it as a cached one), or until the claim is free (the other node
    /// finished without it, failed, or died and its claim ran out), then look again,
    /// starting a fill here if it is still missing.
    async fn await_remote_fill(
        &self,
        p: &Proxy,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Source> {
        let claim = fill_claim(repo, digest);
        loop {
            tokio::time::sleep(REMOTE_FILL_POLL).await;
            if let Some(found) = self.meta.linked_blob(repo, digest).await? {
                if self
                    .blobs
                    .stat(super::blobs::stored_at(digest, &found))
                    .await?
                    .is_some()
                {
                    return Ok(Source::Local);
                }
            }
            match self.meta.claim_job(&claim, &p.owner, FILL_LEASE).await? {
                Err(_) => continue,
                Ok(()) => {
                    // Free: give it back and decide afresh (the blob may have arrived).
                    self.meta.release_job(&claim, &p.owner).await?;
                    return self.blob_source(p, repo, digest).await;
                }
            }
        }
    }

    /// Link a blob the cache already holds (fetched through another repository) into
    /// `repo` once the upstream confirms `repo` has it, with a HEAD: the cache never
    /// invents repositories. If the upstream cannot answer (unreachable, 5xx), the cached
    /// bytes are served (they are content-addressed) without linking them; if it refuses
    /// (401, 403) or does not have the blob there, the blob is unknown to `repo`.
    async fn mount_cached(&self, p: &Proxy, repo: &RepoName, digest: &Digest) -> Result<Cached> {
        let Some(known) = self.meta.known_blob(digest).await? else {
            return Ok(Cached::No);
        };
        match p.upstream.blob_size(repo, digest).await {
            Ok(_) => {}
            Err(UpstreamError::NotFound | UpstreamError::Denied(_)) => {
                return Err(RegistryError::BlobUnknown(digest.clone()))
            }
            Err(UpstreamError::Failed(msg)) if !p.serve_unconfirmed => {
                return Err(self
                    .upstream_failed(p, format!("{msg}; blob {digest} is not cached in {repo}")));
            }
            Err(UpstreamError::Failed(msg)) => {
                bump(&p.counters.upstream_errors);
                tracing::warn!(%repo, %digest, "serving a cached blob unconfirmed (not linked): the upstream failed: {msg}");
                let at = super::blobs::stored_at(digest, &known);
                return Ok(match self.blobs.stat(at).await? {
                    Some(size) => Cached::Unlinked(BlobRecord { size, ..known }),
                    None => Cached::No,
                });
            }
        }
        Ok(match self.meta.mount_blob(repo, digest, None, &[]).await? {
            Some(found) => {
                self.touch(p, repo, digest, false).await;
                Cached::Linked(found)
            }
            None => Cached::No,
        })
    }

    /// Size of a blob not linked into `repo`, which `p` caches: local, being fetched, or
    /// a HEAD upstream (nothing is fetched).
    pub(super) async fn proxy_blob_size(
        &self,
        p: &Proxy,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<u64> {
        if let Cached::Linked(found) | Cached::Unlinked(found) =
            self.mount_cached(p, repo, digest).await?
        {
            bump(&p.counters.blob_hit);
            return Ok(found.size);
        }
        if let Some(size) = {
            let fills = p.fills.lock().await;
            fills
                .get(&(repo.clone(), digest.clone()))
                .and_then(|f| f.state.borrow().size)
        } {
            return Ok(size);
        }
        match p.upstream.blob_size(repo, digest).await {
            Ok(size) => Ok(size),
            Err(UpstreamError::NotFound) => Err(RegistryError::BlobUnknown(digest.clone())),
            Err(UpstreamError::Failed(msg) | UpstreamError::Denied(msg)) => {
                Err(self.upstream_failed(p, format!("{msg}; blob {digest} is not cached")))
            }
        }
    }

    /// Read a blob not linked into `repo`, which `p` caches: from storage, or as the
    /// fill brings it in. `resolve` turns the size into the range to serve.
    pub(super) async fn proxy_read_blob(
        &self,
        p: &Proxy,
        repo: &RepoName,
        digest: &Digest,
        resolve: impl FnOnce(u64) -> Result<Option<ByteRange>>,
    ) -> Result<super::BlobRead> {
        let fill = match self.blob_source(p, repo, digest).await? {
            Source::Local => {
                bump(&p.counters.blob_hit);
                return self.read_linked_blob(repo, digest, resolve).await;
            }
            Source::Unlinked(found) => {
                let size = found.size;
                bump(&p.counters.blob_hit);
                self.emit_blob_pull(repo, digest, size);
                let range = resolve(size)?;
                let body = if size == 0 {
                    Box::pin(futures_util::stream::empty()) as ByteStream
                } else {
                    self.blobs
                        .get(super::blobs::stored_at(digest, &found), range)
                        .await?
                };
                return Ok(super::BlobRead { size, range, body });
            }
            Source::Filling(f) => f,
        };
        bump(&p.counters.blob_miss);
        let mut rx = fill.state.subscribe();
        let size = loop {
            let state = rx.borrow_and_update().clone();
            match (state.size, state.outcome) {
                (_, Some(Err(FillError::NotFound))) => {
                    return Err(RegistryError::BlobUnknown(digest.clone()))
                }
                (_, Some(Err(FillError::Failed(m)))) => return Err(RegistryError::Upstream(m)),
                (Some(size), _) => break size,
                (None, Some(Ok(()))) => {
                    return self.read_linked_blob(repo, digest, resolve).await;
                }
                (None, None) => {}
            }
            if rx.changed().await.is_err() {
                return Err(RegistryError::Upstream(format!(
                    "fetching {digest} from {} stopped",
                    p.upstream.url()
                )));
            }
        };
        self.emit_blob_pull(repo, digest, size);
        let range = resolve(size)?;
        let (start, end) = match range {
            Some(r) => (r.start, r.end + 1),
            None => (0, size),
        };
        let reader = FillReader {
            blobs: self.blobs.clone(),
            fill,
            rx,
            digest: digest.clone(),
            pos: start,
            end,
            inner: None,
            failed: false,
        };
        Ok(super::BlobRead {
            size,
            range,
            body: reader.into_stream(),
        })
    }

    /// Tags in proxy mode: the upstream's list when it answers, else the cached tags.
    pub(super) async fn proxy_tags(
        &self,
        repo: &RepoName,
        last: Option<&str>,
        n: Option<u32>,
    ) -> Result<Option<Page>> {
        let Some(p) = self.proxy_for(repo).await else {
            return Ok(None);
        };
        let page = n.map(|n| n.min(self.settings.max_page_entries));
        match p.upstream.tags(repo, page, last).await {
            Ok(mut items) => {
                let more = page.filter(|n| items.len() >= *n as usize && *n > 0);
                if let Some(n) = page {
                    items.truncate(n as usize);
                }
                Ok(Some(Page { items, more }))
            }
            Err(UpstreamError::NotFound) => Err(RegistryError::NameUnknown),
            Err(UpstreamError::Failed(msg) | UpstreamError::Denied(msg)) => {
                bump(&p.counters.upstream_errors);
                tracing::warn!(%repo, "listing the cached tags: the upstream failed: {msg}");
                Ok(None)
            }
        }
    }

    /// Remove cached content unused for `proxy.ttl` (one batch); how many entries went.
    /// Blob files become garbage for `berth garbage-collect`.
    pub async fn expire_proxy_cache(&self) -> Result<usize> {
        let Some(ttl) = self.proxy.as_ref().and_then(|p| p.options.ttl) else {
            return Ok(0);
        };
        let before = now() - ttl.as_secs().max(1) as i64;
        let entries = self.meta.cache_expired(before, EXPIRE_BATCH).await?;
        let mut removed = 0;
        for e in &entries {
            if self.meta.cache_expire(e, before).await? {
                tracing::info!(
                    repository = %e.repository,
                    digest = %e.digest,
                    kind = if e.is_manifest { "manifest" } else { "blob" },
                    "expired from the pull-through cache (proxy.ttl)"
                );
                removed += 1;
            }
        }
        Ok(removed)
    }
}
