//! `GET /v2/<name>/tags/list`, `GET /v2/_catalog` and `GET /v2/<name>/referrers/<digest>`.

use super::error::ApiError;
use super::Req;
use crate::registry::{Page, Registry};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use oci::{Digest, ErrorCode, RepoName};

fn parse_n(req: &Req) -> Result<Option<u32>, ApiError> {
    match req.param("n") {
        None | Some("") => Ok(None),
        Some(v) => v.parse::<u32>().map(Some).map_err(|_| {
            ApiError::new(
                ErrorCode::PaginationNumberInvalid,
                format!("n={v:?} is not a non-negative integer"),
            )
        }),
    }
}

fn json(body: serde_json::Value, content_type: &'static str, link: Option<String>) -> Response {
    let mut resp = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, content_type)],
        body.to_string(),
    )
        .into_response();
    if let Some(l) = link.and_then(|l| HeaderValue::from_str(&l).ok()) {
        resp.headers_mut().insert(header::LINK, l);
    }
    resp
}

fn next_link(path: &str, page: &Page) -> Option<String> {
    let n = page.more?;
    let last = page.items.last()?;
    let query: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("last", last)
        .append_pair("n", &n.to_string())
        .finish();
    Some(format!("<{path}?{query}>; rel=\"next\""))
}

pub async fn tags(r: &Registry, req: &Req, repo: &RepoName) -> Result<Response, ApiError> {
    let page = r.list_tags(repo, req.param("last"), parse_n(req)?).await?;
    let name = req.client_name(repo);
    let link = next_link(&req.url(&format!("/v2/{name}/tags/list")), &page);
    Ok(json(
        serde_json::json!({ "name": name, "tags": page.items }),
        "application/json",
        link,
    ))
}

pub async fn catalog(r: &Registry, req: &Req) -> Result<Response, ApiError> {
    let page = r
        .catalog(req.param("last"), parse_n(req)?, req.within.as_deref())
        .await?;
    let link = next_link(&req.url("/v2/_catalog"), &page);
    Ok(json(
        serde_json::json!({ "repositories": page.items }),
        "application/json",
        link,
    ))
}

pub async fn referrers(
    r: &Registry,
    req: &Req,
    repo: &RepoName,
    digest: &Digest,
) -> Result<Response, ApiError> {
    let filter = req.param("artifactType").filter(|a| !a.is_empty());
    let (list, next) = r.referrers(repo, digest, filter, req.param("last")).await?;
    let manifests: Vec<serde_json::Value> = list
        .into_iter()
        .map(|m| {
            let mut d = serde_json::json!({
                "mediaType": m.media_type,
                "digest": m.digest.as_str(),
                "size": m.size,
            });
            if let Some(a) = m.artifact_type {
                d["artifactType"] = a.into();
            }
            if let Some(a) = m
                .annotations
                .and_then(|a| serde_json::from_str::<serde_json::Value>(&a).ok())
            {
                d["annotations"] = a;
            }
            d
        })
        .collect();
    let body = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": oci::media::OCI_INDEX,
        "manifests": manifests,
    });
    // The spec's Link header when the list does not fit one response.
    let link = next.map(|last| {
        let mut q = form_urlencoded::Serializer::new(String::new());
        q.append_pair("last", &last);
        if let Some(f) = filter {
            q.append_pair("artifactType", f);
        }
        format!(
            "<{}?{}>; rel=\"next\"",
            req.url(&format!("/v2/{}/referrers/{digest}", req.client_name(repo))),
            q.finish()
        )
    });
    let mut resp = json(body, oci::media::OCI_INDEX, link);
    if filter.is_some() {
        resp.headers_mut().insert(
            "oci-filters-applied",
            HeaderValue::from_static("artifactType"),
        );
    }
    Ok(resp)
}
