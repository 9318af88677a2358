//! Proxy-cache projects: a project bound to a registered upstream registry
//! (`projects.registry_id`) is a pull-through cache of it, side by side with ordinary
//! projects. Each such project gets a [`Proxy`] whose upstream maps the project's names
//! onto the upstream's ([`ProjectUpstream`]); everything else (fills, stale-if-error, tag
//! revalidation, tokens, limits, counters) is the `proxy` section's machinery, shared.
//!
//! Which projects are caches is read from the database into a snapshot, re-read at most
//! every [`REFRESH`] (so a project made or changed on another node works within that)
//! and at once after a change made through this node. Refusing pushes does not trust the
//! snapshot: it asks the database ([`Registry::push_refusal`]).

use super::proxy::{Proxy, ProxyOptions};
use super::upstream::{
    is_docker_hub, url_authority, ProjectUpstream, UnusableUpstream, UpstreamFactory,
    UpstreamSettings, DOCKER_HUB,
};
use super::{Registry, Result};
use crate::meta::{Conflict, NewRegistry, ProxyProject, RegistryDeletion, StoredRegistry};
use oci::RepoName;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// The snapshot of proxy-cache projects is re-read after this long.
pub const REFRESH: Duration = Duration::from_secs(5);

/// One proxy-cache project in the snapshot.
#[derive(Clone)]
struct Entry {
    /// The registry and its settings: an unchanged one keeps its client (and tokens).
    registry_id: i64,
    settings: NewRegistry,
    /// `host[:port]` of the upstream, for mirror requests (`?ns=`).
    authority: Option<String>,
    docker_hub: bool,
    proxy: Arc<Proxy>,
}

#[derive(Default)]
struct Snapshot {
    loaded: Option<Instant>,
    by_project: HashMap<String, Entry>,
}

/// The proxy-cache projects known to this process.
#[derive(Default)]
pub(super) struct ProjectProxies {
    /// Makes upstream clients; `None` (unit tests, CLI commands): no proxy-cache projects.
    factory: Option<Arc<dyn UpstreamFactory>>,
    snapshot: RwLock<Arc<Snapshot>>,
    reloading: tokio::sync::Mutex<()>,
    /// Bumped by every change through this node: a reload that began before a change
    /// does not count as fresh.
    generation: AtomicU64,
}

/// What a mirror request's `ns` leads to.
#[derive(Debug, PartialEq, Eq)]
pub enum MirrorRoute {
    /// The proxy-cache project caching that host.
    Project(String),
    /// Proxy-cache projects are in use, but none caches that host: not served here, so
    /// the client goes on to its next host (never to a local project's look-alike).
    NotMirrored,
    /// No proxy-cache projects (or the whole registry is one cache): `ns` is ignored,
    /// as Distribution does.
    Ignore,
}

/// Whether the cache `e` is of the registry at `host` (`docker.io`, `ghcr.io:443`).
fn caches(e: &Entry, host: &str) -> bool {
    let host = host.trim().to_ascii_lowercase();
    (DOCKER_HUB.contains(&host.as_str()) && e.docker_hub)
        || e.authority
            .as_deref()
            .is_some_and(|a| a == host || a.strip_suffix(":443") == Some(&host))
}

/// Where a registry's content is pulled from: Harbor registers Docker Hub as
/// `https://hub.docker.com` (its web site); its registry API is elsewhere.
fn upstream_url(reg: &NewRegistry) -> String {
    if reg.kind == "docker-hub" {
        "https://registry-1.docker.io".to_string()
    } else {
        reg.url.clone()
    }
}

fn settings_of<'a>(r: &'a StoredRegistry, url: &'a str) -> UpstreamSettings<'a> {
    let reg = &r.registry;
    UpstreamSettings {
        url,
        credentials: reg.access_key.clone().zip(reg.access_secret.clone()),
        insecure: reg.insecure,
        ca_certificate: reg.ca_certificate.as_deref(),
        credentials_origin: format!(
            "the credentials of registry {:?} (/api/v2.0/registries/{})",
            reg.name, r.id
        ),
    }
}

impl Registry {
    /// Serve proxy-cache projects, making their upstream clients with `factory`.
    pub fn with_upstream_factory(mut self, factory: Arc<dyn UpstreamFactory>) -> Registry {
        self.project_proxies.factory = Some(factory);
        self
    }

    /// A client of `registry` as configured now (for health checks).
    pub fn upstream_for(
        &self,
        registry: &StoredRegistry,
    ) -> std::result::Result<Arc<dyn super::upstream::Upstream>, String> {
        let url = upstream_url(&registry.registry);
        match &self.project_proxies.factory {
            Some(f) => f.upstream(&settings_of(registry, &url)),
            None => Err("this process makes no upstream connections".into()),
        }
    }

    /// Proxy-cache projects changed through this node: read them again at the next use.
    pub fn proxy_projects_changed(&self) {
        self.project_proxies
            .generation
            .fetch_add(1, Ordering::SeqCst);
        let mut s = self
            .project_proxies
            .snapshot
            .write()
            .unwrap_or_else(|p| p.into_inner());
        // Keep the entries (and their clients); only the time goes.
        *s = Arc::new(Snapshot {
            loaded: None,
            by_project: s.by_project.clone(),
        });
    }

    /// Whether proxy-cache projects were seen (at the last look).
    pub(super) fn has_proxy_projects(&self) -> bool {
        !self
            .project_proxies
            .snapshot
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .by_project
            .is_empty()
    }

    /// The pull-through cache `repo` is read through: the `proxy` section's for the
    /// whole registry, or its proxy-cache project's.
    pub(super) async fn proxy_for(&self, repo: &RepoName) -> Option<Arc<Proxy>> {
        if let Some(p) = &self.proxy {
            return Some(p.clone());
        }
        self.project_proxies.factory.as_ref()?;
        let (project, _) = repo.as_str().split_once('/')?;
        let snapshot = self.proxy_snapshot().await;
        snapshot.by_project.get(project).map(|e| e.proxy.clone())
    }

    /// Where a mirror request for the registry at `host` goes (its `?ns=`: `docker.io`,
    /// `ghcr.io`, `127.0.0.1:5001`): the proxy-cache project caching it (the first by
    /// name when several do).
    pub async fn mirror_route(&self, host: &str) -> MirrorRoute {
        if self.proxy.is_some() || self.project_proxies.factory.is_none() {
            return MirrorRoute::Ignore;
        }
        let snapshot = self.proxy_snapshot().await;
        let mut found: Vec<&String> = snapshot
            .by_project
            .iter()
            .filter(|(_, e)| caches(e, host))
            .map(|(name, _)| name)
            .collect();
        found.sort();
        match found.first() {
            Some(p) => MirrorRoute::Project(p.to_string()),
            None if snapshot.by_project.is_empty() => MirrorRoute::Ignore,
            None => MirrorRoute::NotMirrored,
        }
    }

    /// Whether `project` may answer a mirror request for the registry at `host` (its
    /// `?ns=`): a proxy-cache project only if it caches that host; any other project (a
    /// curated one behind a mirror host name) whatever the host.
    pub async fn mirror_serves(&self, project: &str, host: &str) -> bool {
        if self.proxy.is_some() || self.project_proxies.factory.is_none() {
            return true;
        }
        let snapshot = self.proxy_snapshot().await;
        snapshot
            .by_project
            .get(project)
            .is_none_or(|e| caches(e, host))
    }

    /// Why a push to `repo` is refused because its project is a proxy cache (asked of
    /// the database, not the snapshot); `None` when it is not one.
    pub async fn push_refusal(&self, repo: &RepoName) -> Result<Option<String>> {
        if self.proxy.is_some() {
            return Ok(None); // the whole registry is a cache: refused before this
        }
        let Some((project, _)) = repo.as_str().split_once('/') else {
            return Ok(None);
        };
        Ok(self.meta.proxy_project(project).await?.map(|p| {
            format!(
                "project {:?} is a proxy cache of {} (registry {:?}): pushes to it are refused; push to the upstream registry, or to an ordinary project",
                p.project, p.registry.registry.url, p.registry.registry.name
            )
        }))
    }

    /// The snapshot, re-read when older than [`REFRESH`] or changed through this node
    /// (by one request at a time; the others go on with the old one, unless it was
    /// invalidated or there is none yet).
    async fn proxy_snapshot(&self) -> Arc<Snapshot> {
        let pp = &self.project_proxies;
        let read = || {
            pp.snapshot
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
        };
        let current = read();
        if current.loaded.is_some_and(|t| t.elapsed() < REFRESH) {
            return current;
        }
        let _guard = match pp.reloading.try_lock() {
            Ok(g) => g,
            Err(_) if current.loaded.is_some() => return current,
            Err(_) => {
                let g = pp.reloading.lock().await;
                let now = read();
                if now.loaded.is_some() {
                    return now;
                }
                g
            }
        };
        let current = read();
        let generation = pp.generation.load(Ordering::SeqCst);
        let by_project = match self.meta.proxy_projects().await {
            Ok(projects) => {
                let mut by_project = HashMap::new();
                for ProxyProject {
                    project, registry, ..
                } in projects
                {
                    let entry = match current.by_project.get(&project) {
                        Some(e)
                            if e.registry_id == registry.id && e.settings == registry.registry =>
                        {
                            e.clone()
                        }
                        _ => self.make_entry(&project, &registry),
                    };
                    by_project.insert(project, entry);
                }
                by_project
            }
            Err(e) => {
                tracing::warn!(
                    "cannot read the proxy-cache projects (trying again in {}s): {e}",
                    REFRESH.as_secs()
                );
                current.by_project.clone()
            }
        };
        // A change through this node while the database was read may be missing from
        // this view: it serves now, and the next request reads again.
        let unchanged = pp.generation.load(Ordering::SeqCst) == generation;
        let fresh = Arc::new(Snapshot {
            loaded: unchanged.then(Instant::now),
            by_project,
        });
        *pp.snapshot.write().unwrap_or_else(|p| p.into_inner()) = fresh.clone();
        fresh
    }

    fn make_entry(&self, project: &str, registry: &StoredRegistry) -> Entry {
        let url = upstream_url(&registry.registry);
        let docker_hub = is_docker_hub(&url);
        let inner = self.upstream_for(registry).unwrap_or_else(|reason| {
            tracing::warn!(project, registry = %registry.registry.name, "the upstream registry's settings are refused: {reason}");
            Arc::new(UnusableUpstream {
                url: url.clone(),
                reason,
            })
        });
        let upstream = Arc::new(ProjectUpstream {
            inner,
            project: project.to_string(),
            docker_hub,
        });
        Entry {
            registry_id: registry.id,
            settings: registry.registry.clone(),
            authority: url_authority(&url),
            docker_hub,
            proxy: Arc::new(self.project_proxy(upstream, ProxyOptions { ttl: None })),
        }
    }
}

/// The upstream registries' administration (`/api/v2.0/registries`); every change
/// refreshes this node's view of the proxy-cache projects at once.
impl Registry {
    pub async fn upstream_registries(&self) -> Result<Vec<StoredRegistry>> {
        Ok(self.meta.registries().await?)
    }

    pub async fn upstream_registry(&self, id: i64) -> Result<Option<StoredRegistry>> {
        Ok(self.meta.registry(id).await?)
    }

    pub async fn add_upstream_registry(
        &self,
        r: &NewRegistry,
    ) -> Result<std::result::Result<i64, Conflict>> {
        Ok(self.meta.add_registry(r).await?)
    }

    pub async fn update_upstream_registry(
        &self,
        id: i64,
        r: &NewRegistry,
    ) -> Result<std::result::Result<bool, Conflict>> {
        let changed = self.meta.update_registry(id, r).await?;
        self.proxy_projects_changed();
        Ok(changed)
    }

    pub async fn delete_upstream_registry(&self, id: i64) -> Result<RegistryDeletion> {
        Ok(self.meta.delete_registry(id).await?)
    }

    /// Make the (new, empty) project `project_id` a cache of registry `registry_id`.
    pub async fn bind_proxy_project(&self, project_id: i64, registry_id: i64) -> Result<bool> {
        let bound = self
            .meta
            .set_project_registry(project_id, registry_id)
            .await?;
        self.proxy_projects_changed();
        Ok(bound)
    }

    /// The registry project `project_id` caches, if it is a proxy-cache project.
    pub async fn project_registry_id(&self, project_id: i64) -> Result<Option<i64>> {
        Ok(self.meta.project_registry_id(project_id).await?)
    }

    /// Check that `settings` reach a working registry (`GET /v2/` with its credentials).
    pub async fn ping_upstream(
        &self,
        registry: &StoredRegistry,
    ) -> std::result::Result<(), String> {
        let upstream = self.upstream_for(registry)?;
        upstream.ping().await.map_err(|e| match e {
            super::upstream::UpstreamError::NotFound => format!(
                "{} does not answer the registry API (GET /v2/ is not found): check the URL",
                registry.registry.url
            ),
            super::upstream::UpstreamError::Denied(m)
            | super::upstream::UpstreamError::Failed(m) => m,
        })
    }

    /// Check registry `id` as stored and record the verdict; the verdict and, when
    /// unhealthy, why.
    pub async fn check_upstream_registry(
        &self,
        registry: &StoredRegistry,
    ) -> Result<std::result::Result<(), String>> {
        let verdict = self.ping_upstream(registry).await;
        let status = if verdict.is_ok() {
            "healthy"
        } else {
            "unhealthy"
        };
        self.meta
            .set_registry_status(registry.id, status, crate::meta::now())
            .await?;
        Ok(verdict)
    }
}
