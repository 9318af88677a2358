//! `GET`/`HEAD`/`PUT`/`DELETE /v2/<name>/manifests/<reference>`.

use super::body::{read_limited, ReadError};
use super::error::ApiError;
use super::{empty, Req};
use crate::registry::{Accept, Registry, RegistryError};
use axum::body::Body;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::Response;
use oci::{ErrorCode, Reference, RepoName, Tag};

/// Most `?tag=` parameters one push may carry.
pub const MAX_TAGS_PER_PUSH: usize = 100;

/// Media types listed in `Accept` (parameters such as `q` dropped).
fn accept(req: &Req) -> Accept {
    Accept(
        req.headers
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|t| oci::media::essence(t).to_string())
            .filter(|t| !t.is_empty())
            .collect(),
    )
}

pub async fn get(
    r: &Registry,
    req: &Req,
    repo: &RepoName,
    reference: &str,
) -> Result<Response, ApiError> {
    // A reference that cannot exist is simply not found.
    let reference: Reference = reference
        .parse()
        .map_err(|_| ApiError::from(RegistryError::ManifestUnknown(reference.to_string())))?;
    let m = r.get_manifest(repo, &reference, &accept(req)).await?;
    let headers = [
        ("content-type", m.media_type.clone()),
        ("content-length", m.content.len().to_string()),
        ("docker-content-digest", m.digest.to_string()),
        ("etag", format!("\"{}\"", m.digest)),
    ];
    if req.method == Method::HEAD {
        return Ok(empty(StatusCode::OK, &headers));
    }
    r.note_pull(repo, &m.digest);
    let mut resp = Response::new(Body::from(m.content));
    for (k, v) in headers {
        if let Ok(v) = HeaderValue::from_str(&v) {
            resp.headers_mut().insert(k, v);
        }
    }
    Ok(resp)
}

pub async fn put(
    r: &Registry,
    req: &Req,
    body: Body,
    repo: &RepoName,
    reference: &str,
) -> Result<Response, ApiError> {
    let reference: Reference = reference.parse().map_err(|e: oci::NameError| match e {
        oci::NameError::InvalidDigest(d) => ApiError::new(ErrorCode::DigestInvalid, d.to_string()),
        other => ApiError::new(ErrorCode::TagInvalid, other.to_string()),
    })?;
    let tags: Vec<Tag> = req
        .query
        .iter()
        .filter(|(k, _)| k == "tag")
        .map(|(_, v)| {
            v.parse().map_err(|e: oci::NameError| {
                ApiError::new(ErrorCode::TagInvalid, format!("tag {v:?}: {e}"))
            })
        })
        .collect::<Result<_, _>>()?;
    if tags.len() > MAX_TAGS_PER_PUSH {
        return Err(ApiError::with_status(
            StatusCode::URI_TOO_LONG,
            ErrorCode::TagInvalid,
            format!("at most {MAX_TAGS_PER_PUSH} tags may be pushed at once"),
        ));
    }
    let content_type = req.header(header::CONTENT_TYPE).map(str::to_string);
    let settings = r.settings();
    let limit = settings.max_manifest_bytes;
    let content = read_limited(body, limit, settings.body_idle_timeout)
        .await
        .map_err(|e| match e {
            ReadError::TooLarge => RegistryError::ManifestTooLarge { limit },
            ReadError::Io(io) => RegistryError::Body(io),
        })?;
    let query_tags = !tags.is_empty();
    let pushed = r
        .put_manifest(repo, &reference, content_type.as_deref(), content, tags)
        .await?;
    let mut headers = vec![
        (
            "location",
            req.url(&format!("/v2/{repo}/manifests/{}", pushed.digest)),
        ),
        ("docker-content-digest", pushed.digest.to_string()),
    ];
    if let Some(s) = &pushed.subject {
        headers.push(("oci-subject", s.to_string()));
    }
    if query_tags {
        for t in &pushed.tags {
            headers.push(("oci-tag", t.to_string()));
        }
    }
    Ok(empty(StatusCode::CREATED, &headers))
}

pub async fn delete(r: &Registry, repo: &RepoName, reference: &str) -> Result<Response, ApiError> {
    let reference: Reference = reference
        .parse()
        .map_err(|_| ApiError::from(RegistryError::ManifestUnknown(reference.to_string())))?;
    r.delete_manifest(repo, &reference).await?;
    Ok(empty(StatusCode::ACCEPTED, &[]))
}
