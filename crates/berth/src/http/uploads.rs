//! Blob uploads: `POST /v2/<name>/blobs/uploads/` (session, monolithic `?digest=`, mounts),
//! and `GET`/`PATCH`/`PUT`/`DELETE` on the session URL.

use super::body as request_body;
use super::error::ApiError;
use super::{empty, Req};
use crate::registry::{ChunkRange, Registry, RegistryError, UploadState};
use axum::body::Body;
use axum::http::{header, StatusCode};
use axum::response::Response;
use oci::{Algorithm, Digest, ErrorCode, RepoName};

fn upload_location(req: &Req, repo: &RepoName, id: &str) -> String {
    req.url(&format!("/v2/{repo}/blobs/uploads/{id}"))
}

/// `Range: 0-<last byte>` as Distribution sends it (`0-0` for an empty upload).
fn range_header(size: u64) -> String {
    format!("0-{}", size.saturating_sub(1))
}

fn session_headers(req: &Req, repo: &RepoName, s: &UploadState) -> Vec<(&'static str, String)> {
    vec![
        ("location", upload_location(req, repo, &s.id)),
        ("docker-upload-uuid", s.id.clone()),
        ("range", range_header(s.size)),
    ]
}

fn created(req: &Req, repo: &RepoName, digest: &Digest) -> Response {
    empty(
        StatusCode::CREATED,
        &[
            ("location", req.url(&format!("/v2/{repo}/blobs/{digest}"))),
            ("docker-content-digest", digest.to_string()),
        ],
    )
}

fn parse_digest(s: &str) -> Result<Digest, ApiError> {
    s.parse()
        .map_err(|e: oci::DigestError| ApiError::new(ErrorCode::DigestInvalid, e.to_string()))
}

/// `Content-Range: <start>-<end>` (also tolerating a `bytes ` or `bytes=` prefix and a
/// `/<total>` suffix, as some clients send).
fn parse_content_range(req: &Req) -> Result<Option<ChunkRange>, ApiError> {
    let Some(v) = req.header(header::CONTENT_RANGE) else {
        return Ok(None);
    };
    let bad = || {
        ApiError::with_status(
            StatusCode::BAD_REQUEST,
            ErrorCode::BlobUploadInvalid,
            format!("Content-Range {v:?} is not of the form <start>-<end>"),
        )
    };
    let s = v.trim();
    let s = s
        .strip_prefix("bytes")
        .map(|s| s.trim_start_matches([' ', '=']))
        .unwrap_or(s);
    let s = s.split('/').next().unwrap_or(s);
    let (a, b) = s.split_once('-').ok_or_else(bad)?;
    let start = a.trim().parse().map_err(|_| bad())?;
    let end = b.trim().parse().map_err(|_| bad())?;
    Ok(Some(ChunkRange { start, end }))
}

/// Does the request carry a body? (Over HTTP/2 there is no Transfer-Encoding, and the
/// length may be absent: the body itself knows whether it has ended.)
fn has_body(body: &Body) -> bool {
    !axum::body::HttpBody::is_end_stream(body)
}

/// A 416 that tells the client where the upload really stands.
fn out_of_order(req: &Req, repo: &RepoName, id: &str, e: RegistryError) -> ApiError {
    match e {
        RegistryError::ChunkOutOfOrder { size } => ApiError::from(e)
            .header(header::LOCATION, &upload_location(req, repo, id))
            .header(header::RANGE, &range_header(size))
            .header(header::HeaderName::from_static("docker-upload-uuid"), id),
        other => other.into(),
    }
}

pub async fn post(
    r: &Registry,
    req: &Req,
    body: Body,
    repo: &RepoName,
) -> Result<Response, ApiError> {
    if let Some(mount) = req.param("mount") {
        let digest = parse_digest(mount)?;
        // An invalid `from` cannot name a repository holding the blob: start a session.
        let from = req.param("from").and_then(|f| f.parse::<RepoName>().ok());
        let mounted = match req.param("from") {
            Some(_) if from.is_none() => false,
            _ => r.mount_blob(repo, &digest, from.as_ref()).await?,
        };
        if mounted {
            return Ok(created(req, repo, &digest));
        }
    } else if let Some(d) = req.param("digest") {
        let digest = parse_digest(d)?;
        let idle = r.settings().body_idle_timeout;
        r.put_blob(repo, &digest, request_body::stream(body, idle))
            .await?;
        return Ok(created(req, repo, &digest));
    }
    let algorithm = match req.param("digest-algorithm") {
        None => Algorithm::Sha256,
        Some(a) => a.parse().map_err(|e: oci::DigestError| {
            ApiError::new(ErrorCode::DigestInvalid, e.to_string())
        })?,
    };
    let state = r.start_upload(repo, algorithm).await?;
    let mut headers = session_headers(req, repo, &state);
    let min = r.settings().chunk_min_length;
    if min > 0 {
        headers.push(("oci-chunk-min-length", min.to_string()));
    }
    Ok(empty(StatusCode::ACCEPTED, &headers))
}

pub async fn status(
    r: &Registry,
    req: &Req,
    repo: &RepoName,
    id: &str,
) -> Result<Response, ApiError> {
    let state = r.upload_status(repo, id).await?;
    Ok(empty(
        StatusCode::NO_CONTENT,
        &session_headers(req, repo, &state),
    ))
}

pub async fn patch(
    r: &Registry,
    req: &Req,
    body: Body,
    repo: &RepoName,
    id: &str,
) -> Result<Response, ApiError> {
    let range = parse_content_range(req)?;
    let idle = r.settings().body_idle_timeout;
    let state = r
        .upload_chunk(repo, id, range, request_body::stream(body, idle))
        .await
        .map_err(|e| out_of_order(req, repo, id, e))?;
    Ok(empty(
        StatusCode::ACCEPTED,
        &session_headers(req, repo, &state),
    ))
}

pub async fn put(
    r: &Registry,
    req: &Req,
    body: Body,
    repo: &RepoName,
    id: &str,
) -> Result<Response, ApiError> {
    let digest = parse_digest(req.param("digest").ok_or_else(|| {
        ApiError::new(
            ErrorCode::DigestInvalid,
            "closing an upload needs ?digest=<digest of the whole blob>",
        )
    })?)?;
    let range = parse_content_range(req)?;
    let idle = r.settings().body_idle_timeout;
    let body = has_body(&body).then(|| request_body::stream(body, idle));
    r.finish_upload(repo, id, &digest, range, body)
        .await
        .map_err(|e| out_of_order(req, repo, id, e))?;
    Ok(created(req, repo, &digest))
}

pub async fn cancel(r: &Registry, repo: &RepoName, id: &str) -> Result<Response, ApiError> {
    r.cancel_upload(repo, id).await?;
    Ok(empty(StatusCode::NO_CONTENT, &[]))
}
