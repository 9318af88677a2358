//! `GET`/`HEAD`/`DELETE /v2/<name>/blobs/<digest>`, with single `Range` requests.

use super::error::ApiError;
use super::{empty, Req};
use crate::registry::{Registry, RegistryError};
use crate::storage::ByteRange;
use axum::body::Body;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::Response;
use oci::{Digest, RepoName};

/// Parse a `Range` header against a blob of `size` bytes. A header that is not a single
/// well-formed byte range (other units, several ranges, garbage) is ignored and the whole
/// blob served, as HTTP says; a well-formed range the blob cannot satisfy is a 416.
pub fn parse_range(value: Option<&str>, size: u64) -> Result<Option<ByteRange>, RegistryError> {
    let Some(spec) = value.and_then(|v| v.trim().strip_prefix("bytes=")) else {
        return Ok(None);
    };
    let Some((a, b)) = spec.split_once('-') else {
        return Ok(None);
    };
    let (a, b) = (a.trim(), b.trim());
    let number = |s: &str| {
        (!s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()))
            .then(|| s.parse::<u64>().ok())
            .flatten()
    };
    let unsatisfiable = Err(RegistryError::RangeNotSatisfiable { size });
    match (number(a), number(b)) {
        // Suffix: the last n bytes.
        (None, Some(n)) if a.is_empty() => {
            if n == 0 || size == 0 {
                return unsatisfiable;
            }
            Ok(Some(ByteRange {
                start: size.saturating_sub(n),
                end: size - 1,
            }))
        }
        (Some(start), None) if b.is_empty() => {
            if start >= size {
                return unsatisfiable;
            }
            Ok(Some(ByteRange {
                start,
                end: size - 1,
            }))
        }
        (Some(start), Some(end)) => {
            if start >= size || end < start {
                return unsatisfiable;
            }
            Ok(Some(ByteRange {
                start,
                end: end.min(size - 1),
            }))
        }
        _ => Ok(None),
    }
}

pub async fn get(
    r: &Registry,
    req: &Req,
    repo: &RepoName,
    digest: &Digest,
) -> Result<Response, ApiError> {
    let common = |size: u64| {
        vec![
            ("docker-content-digest", digest.to_string()),
            ("etag", format!("\"{digest}\"")),
            ("accept-ranges", "bytes".to_string()),
            ("cache-control", "max-age=31536000".to_string()),
            ("content-type", "application/octet-stream".to_string()),
            ("content-length", size.to_string()),
        ]
    };
    if req.method == Method::HEAD {
        let size = r.stat_blob(repo, digest).await?;
        return Ok(empty(StatusCode::OK, &common(size)));
    }
    if let Some(url) = r.blob_redirect(repo, digest).await? {
        // The object store serves the bytes (and the Range, which the client resends).
        return Ok(empty(
            StatusCode::TEMPORARY_REDIRECT,
            &[
                ("location", url),
                ("docker-content-digest", digest.to_string()),
            ],
        ));
    }
    let range_header = req.header(header::RANGE);
    let read = r
        .read_blob(repo, digest, |size| parse_range(range_header, size))
        .await?;
    let (status, mut headers) = match read.range {
        Some(rg) => {
            let mut h = common(rg.byte_count());
            h.push((
                "content-range",
                format!("bytes {}-{}/{}", rg.start, rg.end, read.size),
            ));
            (StatusCode::PARTIAL_CONTENT, h)
        }
        None => (StatusCode::OK, common(read.size)),
    };
    let body = match &req.connection_cut {
        // An HTTP/2 stream the client never opens its window for is never polled:
        // watch it from outside.
        Some(cut) => {
            super::body::guard_stall(read.body, r.settings().body_idle_timeout, cut.clone())
        }
        None => read.body,
    };
    let mut resp = Response::new(Body::from_stream(body));
    *resp.status_mut() = status;
    for (k, v) in headers.drain(..) {
        if let Ok(v) = HeaderValue::from_str(&v) {
            resp.headers_mut().insert(k, v);
        }
    }
    Ok(resp)
}

pub async fn delete(r: &Registry, repo: &RepoName, digest: &Digest) -> Result<Response, ApiError> {
    r.delete_blob(repo, digest).await?;
    Ok(empty(StatusCode::ACCEPTED, &[]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let r = |s: &str, size| parse_range(Some(s), size).map(|o| o.map(|r| (r.start, r.end)));
        assert_eq!(r("bytes=0-9", 100).ok(), Some(Some((0, 9))));
        assert_eq!(r("bytes=90-", 100).ok(), Some(Some((90, 99))));
        assert_eq!(r("bytes=-10", 100).ok(), Some(Some((90, 99))));
        assert_eq!(r("bytes=-1000", 100).ok(), Some(Some((0, 99))));
        assert_eq!(r("bytes=50-1000", 100).ok(), Some(Some((50, 99))));
        assert_eq!(r("bytes=0-1,5-6", 100).ok(), Some(None));
        assert_eq!(r("items=0-1", 100).ok(), Some(None));
        assert!(r("bytes=100-", 100).is_err());
        assert!(r("bytes=500-0", 1000).is_err());
        assert!(r("bytes=10-5", 100).is_err());
        assert!(r("bytes=-0", 100).is_err());
        assert_eq!(r("bytes=x-1", 100).ok(), Some(None), "garbage is ignored");
        assert_eq!(r("bytes=5", 100).ok(), Some(None));
        assert_eq!(r("bytes=-", 100).ok(), Some(None));
        assert!(r("bytes=0-0", 0).is_err());
    }
}
