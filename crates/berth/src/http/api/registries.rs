//! `/api/v2.0/registries`: the upstream registries proxy-cache projects pull through, in
//! Harbor's `Registry` shape, for system administrators; `/registries/ping` checks one
//! before or after it is saved, and `/replication/adapters` lists the types Berth can
//! cache. The secret is never shown (`*****`, as Harbor); sending `*****` back keeps it.

use super::{created, id, json, listing, ok, time, Answer, Call, Failure};
use crate::auth::accounts::Accounts;
use crate::meta::{NewRegistry, RegistryDeletion, StoredRegistry};
use crate::registry::upstream::url_authority;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{json, Value};

/// Registry types whose content is pulled with the distribution API and Basic or
/// Bearer (token) authentication: what a proxy-cache project can use.
pub(super) const ADAPTERS: &[&str] = &[
    "docker-hub",
    "docker-registry",
    "harbor",
    "github-ghcr",
    "quay",
    "gitlab",
    "jfrog-artifactory",
    "azure-acr",
    "google-gcr",
];

/// What Harbor shows instead of a secret.
const HIDDEN: &str = "*****";

fn render(r: &StoredRegistry) -> Value {
    let reg = &r.registry;
    let credential = match &reg.access_key {
        Some(key) => json!({"type": "basic", "access_key": key, "access_secret": HIDDEN}),
        None => json!({"type": "basic", "access_key": "", "access_secret": ""}),
    };
    json!({
        "id": r.id,
        "name": reg.name,
        "type": reg.kind,
        "url": reg.url,
        "description": reg.description,
        "credential": credential,
        "insecure": reg.insecure,
        "ca_certificate": reg.ca_certificate.as_deref().unwrap_or(""),
        "status": r.status,
        "creation_time": time(r.created_at),
        "update_time": time(r.updated_at),
    })
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Credential {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    access_key: Option<String>,
    #[serde(default)]
    access_secret: Option<String>,
}

/// A registry as a client sends it: every field optional, so a PUT may change some
/// only. Harbor's `Registry` (POST) nests the credential; its `RegistryUpdate` (PUT) and
/// `RegistryPing` have it flat (`credential_type`, `access_key`, `access_secret`): both
/// are taken everywhere.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RegistryReq {
    #[serde(default)]
    id: Option<i64>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    credential: Option<Credential>,
    #[serde(default)]
    credential_type: Option<String>,
    #[serde(default)]
    access_key: Option<String>,
    #[serde(default)]
    access_secret: Option<String>,
    #[serde(default)]
    insecure: Option<bool>,
    #[serde(default)]
    ca_certificate: Option<String>,
    // Shown by GET and sent back by clients that PUT what they read: ignored.
    #[serde(default, rename = "status")]
    _status: Option<Value>,
    #[serde(default, rename = "creation_time")]
    _creation_time: Option<Value>,
    #[serde(default, rename = "update_time")]
    _update_time: Option<Value>,
}

impl RegistryReq {
    /// `base` with this request's changes, checked.
    fn apply(mut self, mut base: NewRegistry) -> Result<NewRegistry, Failure> {
        if self.credential_type.is_some()
            || self.access_key.is_some()
            || self.access_secret.is_some()
        {
            let nested = self.credential.take().unwrap_or_default();
            self.credential = Some(Credential {
                kind: self.credential_type.take().or(nested.kind),
                access_key: self.access_key.take().or(nested.access_key),
                access_secret: self.access_secret.take().or(nested.access_secret),
            });
        }
        let (old_url, old_kind) = (base.url.clone(), base.kind.clone());
        let new_secret = self.credential.as_ref().is_some_and(|c| {
            c.access_secret
                .as_deref()
                .is_some_and(|s| s != HIDDEN && !s.is_empty())
        });
        if let Some(n) = self.name {
            base.name = n.trim().to_string();
        }
        if let Some(k) = self.kind {
            base.kind = k;
        }
        if let Some(u) = self.url {
            base.url = u.trim().trim_end_matches('/').to_string();
        }
        if let Some(d) = self.description {
            base.description = d;
        }
        if let Some(i) = self.insecure {
            base.insecure = i;
        }
        if let Some(ca) = self.ca_certificate {
            base.ca_certificate = Some(ca).filter(|c| !c.trim().is_empty());
        }
        if let Some(c) = self.credential {
            if let Some(k) = c.kind.filter(|k| !k.is_empty() && k != "basic") {
                return Err(Failure::bad_request(format!(
                    "credential type {k:?} is not supported: use \"basic\" (a user name or access key and its password or token)"
                )));
            }
            if let Some(key) = c.access_key {
                base.access_key = Some(key).filter(|k| !k.is_empty());
            }
            match c.access_secret.as_deref() {
                Some(HIDDEN) | None => {}
                Some(s) => base.access_secret = Some(s.to_string()).filter(|s| !s.is_empty()),
            }
            if base.access_key.is_none() {
                base.access_secret = None;
            }
        }
        // A stored secret never follows the registry to another place unless sent again:
        // otherwise whoever may change the URL could have it sent to a host of theirs.
        let moved = url_authority(&old_url) != url_authority(&base.url) || old_kind != base.kind;
        if moved && !old_url.is_empty() && base.access_secret.is_some() && !new_secret {
            return Err(Failure::bad_request(
                "the url or type changes: send credential.access_secret again (the stored one is only sent to the registry it was given for)",
            ));
        }
        check(&base)?;
        Ok(base)
    }
}

fn check(r: &NewRegistry) -> Result<(), Failure> {
    if r.name.is_empty() || r.name.len() > 255 {
        return Err(Failure::bad_request(
            "name is required (at most 255 characters)",
        ));
    }
    if !ADAPTERS.contains(&r.kind.as_str()) {
        return Err(Failure::bad_request(format!(
            "type {:?} is not supported: use one of {} (GET /api/v2.0/replication/adapters)",
            r.kind,
            ADAPTERS.join(", ")
        )));
    }
    if url_authority(&r.url).is_none()
        || r.url[r.url.find("://").map_or(0, |i| i + 3)..].contains(['?', '#'])
    {
        return Err(Failure::bad_request(format!(
            "url {:?} must be an http:// or https:// URL with a host and no query, such as https://registry-1.docker.io",
            r.url
        )));
    }
    if r.access_key.is_some() && r.access_secret.is_none() {
        return Err(Failure::bad_request(
            "credential.access_secret is required with credential.access_key",
        ));
    }
    Ok(())
}

fn empty() -> NewRegistry {
    NewRegistry {
        name: String::new(),
        kind: String::new(),
        url: String::new(),
        description: String::new(),
        access_key: None,
        access_secret: None,
        insecure: false,
        ca_certificate: None,
    }
}

async fn find(c: &Call<'_>, text: &str) -> Result<StoredRegistry, Failure> {
    let id = id(text, "registry id")?;
    c.app
        .registry
        .upstream_registry(id)
        .await?
        .ok_or_else(|| Failure::not_found(format!("registry {id} not found")))
}

/// `GET /registries` (`name=` or `q=name=~...` narrow it).
pub(super) async fn list(c: &mut Call<'_>) -> Answer {
    Accounts::require_admin(&c.who)?;
    let (page, size, _) = c.page()?;
    let exact = c.param("name").map(str::to_string);
    let fuzzy = c.q("name");
    let all = c.app.registry.upstream_registries().await?;
    let items: Vec<Value> = all
        .iter()
        .filter(|r| exact.as_ref().is_none_or(|n| &r.registry.name == n))
        .filter(|r| {
            fuzzy.as_ref().is_none_or(|(v, fuzzy)| {
                if *fuzzy {
                    r.registry.name.contains(v.as_str())
                } else {
                    &r.registry.name == v
                }
            })
        })
        .map(render)
        .collect();
    let total = items.len() as u64;
    let start = ((page.saturating_sub(1)) * size) as usize;
    let items = items.into_iter().skip(start).take(size as usize).collect();
    Ok(listing(c, items, total, page, size))
}

pub(super) async fn get(c: &mut Call<'_>, registry: &str) -> Answer {
    Accounts::require_admin(&c.who)?;
    let r = find(c, registry).await?;
    Ok(json(StatusCode::OK, &render(&r)))
}

/// Refuse proxy-cache projects' registries where the whole registry is one cache.
pub(super) fn check_no_proxy_section(c: &Call<'_>) -> Result<(), Failure> {
    match &c.app.options.proxy {
        Some(upstream) => Err(Failure::bad_request(format!(
            "this Berth is a pull-through cache of {upstream} as a whole (the proxy section): proxy-cache projects need a Berth without it"
        ))),
        None => Ok(()),
    }
}

/// `POST /registries`: stored whatever its health (shown in `status`, checked now).
pub(super) async fn create(c: &mut Call<'_>) -> Answer {
    Accounts::require_admin(&c.who)?;
    check_no_proxy_section(c)?;
    let req: RegistryReq = c.json().await?;
    let new = req.apply(empty())?;
    let id = c
        .app
        .registry
        .add_upstream_registry(&new)
        .await?
        .map_err(|_| {
            Failure::new(
                StatusCode::CONFLICT,
                "CONFLICT",
                format!("a registry named {:?} already exists", new.name),
            )
        })?;
    if let Some(stored) = c.app.registry.upstream_registry(id).await? {
        if let Err(why) = c.app.registry.check_upstream_registry(&stored).await? {
            tracing::warn!(registry = %new.name, "the new upstream registry is not healthy: {why}");
        }
    }
    c.audit("create", "registry", &new.name, None);
    Ok(created(&format!("/api/v2.0/registries/{id}")))
}

/// `PUT /registries/{id}`: the fields sent change, the others stay.
pub(super) async fn update(c: &mut Call<'_>, registry: &str) -> Answer {
    Accounts::require_admin(&c.who)?;
    let current = find(c, registry).await?;
    let req: RegistryReq = c.json().await?;
    if req.id.is_some_and(|i| i != current.id) {
        return Err(Failure::bad_request("id does not match the registry's"));
    }
    let new = req.apply(current.registry.clone())?;
    match c
        .app
        .registry
        .update_upstream_registry(current.id, &new)
        .await?
    {
        Ok(true) => {}
        Ok(false) => {
            return Err(Failure::not_found(format!(
                "registry {} not found",
                current.id
            )))
        }
        Err(_) => {
            return Err(Failure::new(
                StatusCode::CONFLICT,
                "CONFLICT",
                format!("a registry named {:?} already exists", new.name),
            ))
        }
    }
    if let Some(stored) = c.app.registry.upstream_registry(current.id).await? {
        let _ = c.app.registry.check_upstream_registry(&stored).await?;
    }
    c.audit("update", "registry", &new.name, None);
    Ok(ok())
}

/// `DELETE /registries/{id}`: refused (412) while a project caches it.
pub(super) async fn delete(c: &mut Call<'_>, registry: &str) -> Answer {
    Accounts::require_admin(&c.who)?;
    let current = find(c, registry).await?;
    match c.app.registry.delete_upstream_registry(current.id).await? {
        RegistryDeletion::Deleted => {
            c.audit("delete", "registry", &current.registry.name, None);
            Ok(ok())
        }
        RegistryDeletion::NotFound => Err(Failure::not_found(format!(
            "registry {} not found",
            current.id
        ))),
        RegistryDeletion::InUse(projects) => Err(Failure::new(
            StatusCode::PRECONDITION_FAILED,
            "PRECONDITION",
            format!(
                "registry {:?} is the upstream of the proxy-cache project(s) {}: delete them first",
                current.registry.name,
                projects.join(", ")
            ),
        )),
    }
}

/// `POST /registries/ping`: `{"id": N}` checks a stored registry (with any fields sent
/// replacing its own, unsaved); without `id`, the registry described. 200 when it
/// answers with the credentials given, 400 saying why not.
pub(super) async fn ping(c: &mut Call<'_>) -> Answer {
    Accounts::require_admin(&c.who)?;
    let req: RegistryReq = c.json().await?;
    let (stored, base) = match req.id {
        Some(id) => {
            let r = find(c, &id.to_string()).await?;
            (Some(r.clone()), r.registry)
        }
        None => (None, empty()),
    };
    let mut base = base;
    if base.name.is_empty() {
        base.name = "ping".into();
    }
    let new = req.apply(base)?;
    let candidate = StoredRegistry {
        id: stored.as_ref().map_or(0, |s| s.id),
        registry: new.clone(),
        status: String::new(),
        checked_at: None,
        created_at: 0,
        updated_at: 0,
    };
    let verdict = match &stored {
        Some(s) if s.registry == new => c.app.registry.check_upstream_registry(s).await?,
        _ => c.app.registry.ping_upstream(&candidate).await,
    };
    match verdict {
        Ok(()) => Ok(ok()),
        Err(why) => Err(Failure::bad_request(format!(
            "the registry at {} cannot be used: {why}",
            new.url
        ))),
    }
}

/// `GET /replication/adapters`.
pub(super) async fn adapters(c: &mut Call<'_>) -> Answer {
    Accounts::require_admin(&c.who)?;
    Ok(json(StatusCode::OK, &json!(ADAPTERS)))
}
