//! Upstream registries an administrator registered (Harbor's `/api/v2.0/registries`) and
//! the proxy-cache projects bound to them (`projects.registry_id`). Stored as the API took
//! them; connecting to them is the `upstream` module's work, caching through them the
//! registry's (`registry/proxy.rs`).

use super::access::Conflict;
use super::Result;

/// An upstream registry to store.
#[derive(Clone, PartialEq, Eq)]
pub struct NewRegistry {
    /// Unique among registries.
    pub name: String,
    /// Harbor's adapter type (`docker-registry`, `docker-hub`, `harbor`, ...).
    pub kind: String,
    /// Base URL, `https://host[:port]`, no trailing slash.
    pub url: String,
    pub description: String,
    /// Basic credentials (also used to obtain Bearer tokens); `None` for anonymous.
    pub access_key: Option<String>,
    pub access_secret: Option<String>,
    /// Skip TLS certificate verification.
    pub insecure: bool,
    /// PEM certificates to trust besides the system's, for a private CA.
    pub ca_certificate: Option<String>,
}

impl std::fmt::Debug for NewRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewRegistry")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("url", &self.url)
            .field("access_key", &self.access_key)
            .field(
                "access_secret",
                &self.access_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("insecure", &self.insecure)
            .finish()
    }
}

/// An upstream registry as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRegistry {
    pub id: i64,
    pub registry: NewRegistry,
    /// The last health check's verdict: `healthy`, `unhealthy` or `unknown` (never checked).
    pub status: String,
    pub checked_at: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A project bound to an upstream registry: a pull-through cache of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyProject {
    pub project_id: i64,
    pub project: String,
    pub registry: StoredRegistry,
}

/// What deleting a registry did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistryDeletion {
    Deleted,
    NotFound,
    /// Projects (by name, sorted) still cache it: nothing deleted.
    InUse(Vec<String>),
}

#[async_trait::async_trait]
pub trait UpstreamRegistries: Send + Sync {
    /// Store a registry; `Err(Conflict)` when the name is taken. Status starts `unknown`.
    async fn add_registry(&self, r: &NewRegistry) -> Result<std::result::Result<i64, Conflict>>;
    /// Every registry, by id.
    async fn registries(&self) -> Result<Vec<StoredRegistry>>;
    async fn registry(&self, id: i64) -> Result<Option<StoredRegistry>>;
    /// Replace registry `id`'s settings (status kept); `Ok(false)` if there is none,
    /// `Err(Conflict)` when the new name is another registry's.
    async fn update_registry(
        &self,
        id: i64,
        r: &NewRegistry,
    ) -> Result<std::result::Result<bool, Conflict>>;
    /// Delete registry `id` unless a project is bound to it (checked in the delete's
    /// transaction).
    async fn delete_registry(&self, id: i64) -> Result<RegistryDeletion>;
    /// Record a health check's verdict.
    async fn set_registry_status(&self, id: i64, status: &str, at: i64) -> Result<()>;
    /// Bind project `project_id` to registry `registry_id` (a new, empty project); `false`
    /// if either does not exist.
    async fn set_project_registry(&self, project_id: i64, registry_id: i64) -> Result<bool>;
    /// The registry project `project_id` is bound to, if any.
    async fn project_registry_id(&self, project_id: i64) -> Result<Option<i64>>;
    /// Every proxy-cache project with its registry, by project name.
    async fn proxy_projects(&self) -> Result<Vec<ProxyProject>>;
    /// The proxy-cache project named `project` with its registry (`None`: no such
    /// project, or an ordinary one).
    async fn proxy_project(&self, project: &str) -> Result<Option<ProxyProject>>;
}
