//! `/api/v2.0/projects/{p}/repositories[/{r}[/artifacts[/{ref}[/tags]]]]`, `/search`
//! and `/statistics`: repositories and artifacts as Harbor shows them. A repository
//! name in a path is the part after the project, URL-encoded twice when it holds a `/`
//! (`a%252Fb`), as Harbor's clients send it.

use super::{json, listing, ok, time, Answer, Call, Failure};
use crate::auth::rbac::Permission;
use crate::meta::{ArtifactFilter, ArtifactInfo, Page, RepositorySummary};
use crate::registry::immutable::Guard;
use axum::http::StatusCode;
use oci::{Reference, RepoName, Tag};
use serde::Deserialize;
use serde_json::{json, Value};

/// The Harbor time of "never" (an artifact never pulled).
const NEVER: &str = "0001-01-01T00:00:00.000Z";

/// `project/rest`, with `rest` decoded a second time (`a%2Fb` -> `a/b`).
fn repo_name(project: &str, rest: &str) -> Result<RepoName, Failure> {
    let rest = percent_encoding::percent_decode_str(rest).decode_utf8_lossy();
    format!("{project}/{rest}").parse().map_err(|e| {
        Failure::bad_request(format!("{project}/{rest} is not a repository name: {e}"))
    })
}

fn render_repo(project_id: i64, r: &RepositorySummary) -> Value {
    json!({
        "id": r.id,
        "project_id": project_id,
        "name": r.name,
        "description": "",
        "artifact_count": r.artifact_count,
        "pull_count": 0,
        "creation_time": time(r.created_at),
        "update_time": time(r.updated_at),
    })
}

pub(super) async fn list(c: &mut Call<'_>, p: &str) -> Answer {
    let (page, size, pg) = c.page()?;
    let a = c
        .accounts
        .project_for(&c.who, &c.project_key(p), Permission::Read)
        .await?;
    let name = c.q("name").map(|(v, _)| v).filter(|n| !n.is_empty());
    let (repos, total) = c
        .accounts
        .repositories(&a.project.name, name.as_deref(), pg)
        .await?;
    let items = repos.iter().map(|r| render_repo(a.project.id, r)).collect();
    Ok(listing(c, items, total, page, size))
}

/// `GET /repositories`: the repositories of every project the caller may see.
pub(super) async fn list_all(c: &mut Call<'_>) -> Answer {
    let (page, size, _) = c.page()?;
    let name = c.q("name").map(|(v, _)| v).filter(|n| !n.is_empty());
    let (projects, _) = c
        .accounts
        .list_projects(&c.who, None, None, Page::all())
        .await?;
    let mut all = Vec::new();
    for p in &projects {
        let (repos, _) = c
            .accounts
            .repositories(&p.name, name.as_deref(), Page::all())
            .await?;
        all.extend(repos.iter().map(|r| render_repo(p.id, r)));
    }
    let total = all.len() as u64;
    let items = all
        .into_iter()
        .skip(((page - 1) * size) as usize)
        .take(size as usize)
        .collect();
    Ok(listing(c, items, total, page, size))
}

pub(super) async fn get(c: &mut Call<'_>, p: &str, r: &str) -> Answer {
    let a = c
        .accounts
        .project_for(&c.who, &c.project_key(p), Permission::Read)
        .await?;
    let repo = repo_name(&a.project.name, r)?;
    let summary = c
        .accounts
        .repository(&repo)
        .await?
        .ok_or_else(|| Failure::not_found(format!("repository {repo} not found")))?;
    Ok(json(StatusCode::OK, &render_repo(a.project.id, &summary)))
}

pub(super) async fn delete(c: &mut Call<'_>, p: &str, r: &str) -> Answer {
    c.writable()?;
    let a = c
        .accounts
        .project_for(&c.who, &c.project_key(p), Permission::DeleteRepository)
        .await?;
    let repo = repo_name(&a.project.name, r)?;
    if c.accounts.repository(&repo).await?.is_none() {
        return Err(Failure::not_found(format!("repository {repo} not found")));
    }
    c.app.registry.delete_repository(&repo).await?;
    c.audit("delete", "repository", repo.as_str(), Some(&a.project.name));
    Ok(ok())
}

/// Harbor's `Artifact`.
fn render_artifact(
    project_id: i64,
    repository_id: i64,
    a: &ArtifactInfo,
    with_tags: bool,
    guard: &Guard,
) -> Value {
    let image = a.artifact_type.as_deref().is_none_or(|t| {
        t == "application/vnd.oci.image.config.v1+json"
            || t == "application/vnd.docker.container.image.v1+json"
    }) && a.subject.is_none();
    let annotations: Value = a
        .annotations
        .as_deref()
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or_else(|| json!({}));
    let mut v = json!({
        "type": if image { "IMAGE" } else { "UNKNOWN" },
        "media_type": a.artifact_type.clone().unwrap_or_else(|| a.media_type.clone()),
        "manifest_media_type": a.media_type,
        "artifact_type": a.artifact_type,
        "project_id": project_id,
        "repository_id": repository_id,
        "digest": a.digest.as_str(),
        "size": a.size,
        "push_time": time(a.created_at),
        "pull_time": a.pulled_at.map(time).unwrap_or_else(|| NEVER.into()),
        "annotations": annotations,
        "extra_attrs": {},
        "references": a.children.iter().map(|d| json!({"child_digest": d.as_str()})).collect::<Vec<_>>(),
    });
    if with_tags {
        v["tags"] = a
            .tags
            .iter()
            .map(|t| {
                json!({
                    "repository_id": repository_id,
                    "name": t.name,
                    "push_time": time(t.updated_at),
                    "pull_time": a.pulled_at.map(time).unwrap_or_else(|| NEVER.into()),
                    "immutable": guard.protects(&t.name),
                })
            })
            .collect();
    }
    v
}

pub(super) async fn artifacts(c: &mut Call<'_>, p: &str, r: &str) -> Answer {
    let (page, size, pg) = c.page()?;
    let a = c
        .accounts
        .project_for(&c.who, &c.project_key(p), Permission::Read)
        .await?;
    let repo = repo_name(&a.project.name, r)?;
    let summary = c
        .accounts
        .repository(&repo)
        .await?
        .ok_or_else(|| Failure::not_found(format!("repository {repo} not found")))?;
    let mut filter = ArtifactFilter::default();
    if let Some((tags, fuzzy)) = c.q("tags") {
        match (tags.as_str(), fuzzy) {
            ("*", false) => filter.tagged = Some(true),
            ("nil", false) => filter.tagged = Some(false),
            (t, _) => filter.tag_contains = Some(t.to_string()),
        }
    }
    let with_tag = c.param("with_tag") != Some("false");
    let (items, total) = c.accounts.artifacts(&repo, &filter, pg).await?;
    let guard = c.app.registry.immutable_guard(&repo).await?;
    let rendered = items
        .iter()
        .map(|x| render_artifact(a.project.id, summary.id, x, with_tag, &guard))
        .collect();
    Ok(listing(c, rendered, total, page, size))
}

/// The digest `reference` (a digest or a tag) names in `repo`.
async fn resolve(c: &Call<'_>, repo: &RepoName, reference: &str) -> Result<oci::Digest, Failure> {
    let r: Reference = reference.parse().map_err(|_| {
        Failure::bad_request(format!("{reference:?} is neither a digest nor a tag"))
    })?;
    Ok(c.app.registry.resolve(repo, &r).await?)
}

pub(super) async fn artifact(c: &mut Call<'_>, p: &str, r: &str, reference: &str) -> Answer {
    let a = c
        .accounts
        .project_for(&c.who, &c.project_key(p), Permission::Read)
        .await?;
    let repo = repo_name(&a.project.name, r)?;
    let digest = resolve(c, &repo, reference).await?;
    let summary = c
        .accounts
        .repository(&repo)
        .await?
        .ok_or_else(|| Failure::not_found(format!("repository {repo} not found")))?;
    let info = c
        .accounts
        .artifact(&repo, &digest)
        .await?
        .ok_or_else(|| Failure::not_found(format!("artifact {repo}@{digest} not found")))?;
    let with_tag = c.param("with_tag") != Some("false");
    let guard = c.app.registry.immutable_guard(&repo).await?;
    Ok(json(
        StatusCode::OK,
        &render_artifact(a.project.id, summary.id, &info, with_tag, &guard),
    ))
}

pub(super) async fn delete_artifact(c: &mut Call<'_>, p: &str, r: &str, reference: &str) -> Answer {
    c.writable()?;
    let a = c
        .accounts
        .project_for(&c.who, &c.project_key(p), Permission::DeleteArtifact)
        .await?;
    let repo = repo_name(&a.project.name, r)?;
    let digest = resolve(c, &repo, reference).await?;
    c.app
        .registry
        .delete_manifest(&repo, &Reference::Digest(digest.clone()))
        .await?;
    c.audit(
        "delete",
        "artifact",
        &format!("{repo}@{digest}"),
        Some(&a.project.name),
    );
    Ok(ok())
}

pub(super) async fn tags(c: &mut Call<'_>, p: &str, r: &str, reference: &str) -> Answer {
    let (page, size, _) = c.page()?;
    let a = c
        .accounts
        .project_for(&c.who, &c.project_key(p), Permission::Read)
        .await?;
    let repo = repo_name(&a.project.name, r)?;
    let digest = resolve(c, &repo, reference).await?;
    let info = c
        .accounts
        .artifact(&repo, &digest)
        .await?
        .ok_or_else(|| Failure::not_found(format!("artifact {repo}@{digest} not found")))?;
    let total = info.tags.len() as u64;
    let guard = c.app.registry.immutable_guard(&repo).await?;
    let pulled = info.pulled_at.map(time).unwrap_or_else(|| NEVER.into());
    let items = info
        .tags
        .iter()
        .skip(((page - 1) * size) as usize)
        .take(size as usize)
        .map(|t| {
            json!({"name": t.name, "push_time": time(t.updated_at), "pull_time": pulled, "immutable": guard.protects(&t.name)})
        })
        .collect();
    Ok(listing(c, items, total, page, size))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct TagReq {
    name: String,
    #[serde(default)]
    id: Option<i64>,
    #[serde(default)]
    repository_id: Option<i64>,
    #[serde(default)]
    artifact_id: Option<i64>,
    #[serde(default)]
    push_time: Option<String>,
    #[serde(default)]
    pull_time: Option<String>,
    #[serde(default)]
    immutable: Option<bool>,
}

pub(super) async fn add_tag(c: &mut Call<'_>, p: &str, r: &str, reference: &str) -> Answer {
    c.writable()?;
    let req: TagReq = c.json().await?;
    let a = c
        .accounts
        .project_for(&c.who, &c.project_key(p), Permission::CreateTag)
        .await?;
    let repo = repo_name(&a.project.name, r)?;
    if let Some(why) = c.app.registry.push_refusal(&repo).await? {
        return Err(Failure::new(StatusCode::FORBIDDEN, "FORBIDDEN", why));
    }
    let tag: Tag = req
        .name
        .parse()
        .map_err(|_| Failure::bad_request(format!("{:?} is not a valid tag", req.name)))?;
    let digest = resolve(c, &repo, reference).await?;
    if c.app
        .registry
        .resolve(&repo, &Reference::Tag(tag.clone()))
        .await
        .is_ok()
    {
        return Err(Failure::new(
            StatusCode::CONFLICT,
            "CONFLICT",
            format!("tag {tag} already exists in the repository {repo}"),
        ));
    }
    c.app.registry.add_tag(&repo, &digest, &tag).await?;
    c.audit(
        "create",
        "tag",
        &format!("{repo}:{tag}"),
        Some(&a.project.name),
    );
    Ok(super::super::empty(StatusCode::CREATED, &[]))
}

pub(super) async fn delete_tag(
    c: &mut Call<'_>,
    p: &str,
    r: &str,
    reference: &str,
    tag: &str,
) -> Answer {
    c.writable()?;
    let a = c
        .accounts
        .project_for(&c.who, &c.project_key(p), Permission::DeleteTag)
        .await?;
    let repo = repo_name(&a.project.name, r)?;
    let tag: Tag = tag
        .parse()
        .map_err(|_| Failure::bad_request(format!("{tag:?} is not a valid tag")))?;
    let digest = resolve(c, &repo, reference).await?;
    c.app.registry.remove_tag(&repo, &digest, &tag).await?;
    c.audit(
        "delete",
        "tag",
        &format!("{repo}:{tag}"),
        Some(&a.project.name),
    );
    Ok(ok())
}

/// `GET /search?q=`: projects and repositories the caller may see whose names contain q.
pub(super) async fn search(c: &mut Call<'_>) -> Answer {
    let q = c
        .param("q")
        .filter(|q| !q.is_empty())
        .ok_or_else(|| Failure::bad_request("q is required"))?
        .to_string();
    let (projects, _) = c
        .accounts
        .list_projects(&c.who, None, None, Page::all())
        .await?;
    let mut found_projects = Vec::new();
    let mut found_repos = Vec::new();
    for p in &projects {
        if p.name.contains(&q) {
            let roles = c.accounts.roles_in(&c.who, p).await?;
            found_projects.push(super::projects::render(c, p, &roles).await?);
        }
        let (repos, _) = c
            .accounts
            .repositories(
                &p.name,
                Some(&q),
                Page {
                    offset: 0,
                    limit: 100,
                },
            )
            .await?;
        for r in repos {
            found_repos.push(json!({
                "project_id": p.id,
                "project_name": p.name,
                "project_public": p.public,
                "repository_name": r.name,
                "pull_count": 0,
                "artifact_count": r.artifact_count,
            }));
        }
    }
    Ok(json(
        StatusCode::OK,
        &json!({"project": found_projects, "repository": found_repos}),
    ))
}

/// `GET /statistics`: project and repository counts the caller may see, and storage
/// (administrators only, as Harbor).
pub(super) async fn statistics(c: &mut Call<'_>) -> Answer {
    if matches!(c.who, crate::auth::berth::Who::Anonymous) {
        return Err(Failure::new(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "authentication required",
        ));
    }
    let (projects, _) = c
        .accounts
        .list_projects(&c.who, None, None, Page::all())
        .await?;
    let names: Vec<String> = projects.iter().map(|p| p.name.clone()).collect();
    let usage = c.accounts.usage(Some(&names)).await?;
    let count_of = |name: &str| {
        usage
            .iter()
            .find(|(n, _, _)| n == name)
            .map_or(0, |(_, n, _)| *n)
    };
    let (mut public_projects, mut private_projects, mut public_repos, mut private_repos) =
        (0u64, 0u64, 0u64, 0u64);
    for p in &projects {
        if p.public {
            public_projects += 1;
            public_repos += count_of(&p.name);
        } else {
            private_projects += 1;
            private_repos += count_of(&p.name);
        }
    }
    let admin = c.who.is_admin();
    let storage: u64 = if admin {
        usage.iter().map(|(_, _, b)| b).sum()
    } else {
        0
    };
    Ok(json(
        StatusCode::OK,
        &json!({
            "private_project_count": private_projects,
            "private_repo_count": private_repos,
            "public_project_count": public_projects,
            "public_repo_count": public_repos,
            "total_project_count": if admin { public_projects + private_projects } else { 0 },
            "total_repo_count": if admin { public_repos + private_repos } else { 0 },
            "total_storage_consumption": storage,
        }),
    ))
}
