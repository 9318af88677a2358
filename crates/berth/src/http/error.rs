//! The single place where errors become HTTP responses: spec error code, status, the
//! `{"errors":[...]}` envelope. Server faults are logged once with their full chain and
//! answered with a generic body.

use crate::registry::RegistryError;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use oci::ErrorCode;

/// An error answer (boxed: it travels in every handler's `Result`).
#[derive(Debug)]
pub struct ApiError(Box<Inner>);

#[derive(Debug)]
struct Inner {
    status: StatusCode,
    errors: Vec<(ErrorCode, String, Option<serde_json::Value>)>,
    headers: HeaderMap,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError::with_status(
            StatusCode::from_u16(code.status()).unwrap_or(StatusCode::BAD_REQUEST),
            code,
            message,
        )
    }

    pub fn with_status(
        status: StatusCode,
        code: ErrorCode,
        message: impl Into<String>,
    ) -> ApiError {
        ApiError(Box::new(Inner {
            status,
            errors: vec![(code, message.into(), None)],
            headers: HeaderMap::new(),
        }))
    }

    /// Attach `detail` to the (first) error.
    pub fn detail(mut self, detail: serde_json::Value) -> ApiError {
        if let Some(e) = self.0.errors.first_mut() {
            e.2 = Some(detail);
        }
        self
    }

    pub fn status(&self) -> StatusCode {
        self.0.status
    }

    pub fn header(mut self, name: HeaderName, value: &str) -> ApiError {
        if let Ok(v) = HeaderValue::from_str(value) {
            self.0.headers.insert(name, v);
        }
        self
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> ApiError {
        use RegistryError as E;
        let msg = e.to_string();
        match e {
            // Details as Distribution sends them: clients (Docker) tell "not found"
            // from other failures by them.
            E::BlobUnknown(d) => ApiError::new(ErrorCode::BlobUnknown, msg).detail(d.as_str().into()),
            E::UploadUnknown => ApiError::new(ErrorCode::BlobUploadUnknown, msg),
            E::UploadInvalid(_) => ApiError::new(ErrorCode::BlobUploadInvalid, msg),
            E::ChunkOutOfOrder { .. } => {
                ApiError::with_status(StatusCode::RANGE_NOT_SATISFIABLE, ErrorCode::BlobUploadInvalid, msg)
            }
            E::DigestInvalid(_) => ApiError::new(ErrorCode::DigestInvalid, msg),
            E::SizeInvalid(_) => ApiError::new(ErrorCode::SizeInvalid, msg),
            E::BlobTooLarge { .. } => ApiError::with_status(StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::SizeInvalid, msg),
            E::ManifestTooLarge { .. } => {
                ApiError::with_status(StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::ManifestInvalid, msg)
            }
            E::ManifestInvalid(_) => ApiError::new(ErrorCode::ManifestInvalid, msg),
            E::ManifestBlobUnknown(digests) => ApiError(Box::new(Inner {
                status: StatusCode::BAD_REQUEST,
                errors: digests
                    .into_iter()
                    .map(|d| {
                        (
                            ErrorCode::ManifestBlobUnknown,
                            format!("manifest references {d}, which this repository does not have: push it first"),
                            Some(serde_json::json!({ "digest": d.as_str() })),
                        )
                    })
                    .collect(),
                headers: HeaderMap::new(),
            })),
            E::ManifestUnknown(reference) => {
                let key = if reference.contains(':') { "Revision" } else { "Tag" };
                ApiError::new(ErrorCode::ManifestUnknown, msg).detail(serde_json::json!({ key: reference }))
            }
            E::NameUnknown => ApiError::new(ErrorCode::NameUnknown, msg),
            E::TagUnknown { tag, .. } => {
                ApiError::new(ErrorCode::ManifestUnknown, msg).detail(serde_json::json!({ "Tag": tag.as_str() }))
            }
            E::TagInvalid(_) => ApiError::new(ErrorCode::TagInvalid, msg),
            E::RangeNotSatisfiable { size } => {
                ApiError::with_status(StatusCode::RANGE_NOT_SATISFIABLE, ErrorCode::RangeInvalid, msg)
                    .header(header::CONTENT_RANGE, &format!("bytes */{size}"))
            }
            E::Unsupported(_) => ApiError::new(ErrorCode::Unsupported, msg),
            E::TooManyUploads(_) => ApiError::new(ErrorCode::TooManyRequests, msg),
            E::JobRunning(_) => ApiError::with_status(StatusCode::CONFLICT, ErrorCode::Unknown, msg),
            E::Denied(_) => ApiError::new(ErrorCode::Denied, msg),
            // A blob past its project's storage quota: the spec's DENIED, with the
            // quota, the usage and the size in the message.
            E::Meta(crate::meta::MetaError::QuotaExceeded { .. }) => {
                ApiError::new(ErrorCode::Denied, msg)
            }
            // The pull-through cache's upstream failed: a gateway error, with the cause
            // (Distribution 2.8 answers 404 MANIFEST_UNKNOWN, losing the cause).
            E::Upstream(_) => {
                tracing::warn!(error = %msg, "pull-through cache: upstream failed");
                ApiError::with_status(StatusCode::BAD_GATEWAY, ErrorCode::Unknown, msg)
            }
            E::Body(io) => match io.kind() {
                std::io::ErrorKind::InvalidData => ApiError::new(ErrorCode::SizeInvalid, msg),
                std::io::ErrorKind::TimedOut => {
                    ApiError::with_status(StatusCode::REQUEST_TIMEOUT, ErrorCode::BlobUploadInvalid, msg)
                }
                _ => ApiError::new(ErrorCode::BlobUploadInvalid, msg),
            },
            E::Meta(crate::meta::MetaError::Collecting(_)) => {
                tracing::warn!(error = %msg, "request failed: garbage collection held the blob for too long");
                ApiError::with_status(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ErrorCode::Unavailable,
                    "garbage collection is still removing an older copy of this blob: nothing was linked; retry the push",
                )
            }
            E::Storage(_) | E::Meta(_) if e.is_out_of_space() => {
                tracing::error!(error = %msg, "request failed: the registry is out of storage space");
                ApiError::with_status(
                    StatusCode::INSUFFICIENT_STORAGE,
                    ErrorCode::Unknown,
                    "the registry is out of storage space: nothing was stored; its operator must free space or grow the volume, then retry",
                )
            }
            E::Storage(_) | E::Meta(_) if e.is_unavailable() => {
                tracing::error!(error = %msg, "request failed: a backend is unavailable");
                ApiError::with_status(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ErrorCode::Unavailable,
                    "the registry cannot reach its metadata database or blob storage right now: nothing was changed; retry later",
                )
            }
            E::Storage(_) | E::Meta(_) => {
                tracing::error!(error = %msg, "request failed");
                ApiError::with_status(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    ErrorCode::Unknown,
                    "internal server error: the registry logged the cause",
                )
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let inner = *self.0;
        let errors: Vec<serde_json::Value> = inner
            .errors
            .iter()
            .map(|(code, message, detail)| {
                let mut e = serde_json::json!({ "code": code.as_str(), "message": message });
                if let Some(d) = detail {
                    e["detail"] = d.clone();
                }
                e
            })
            .collect();
        let body = serde_json::json!({ "errors": errors }).to_string();
        let mut resp = (
            inner.status,
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response();
        resp.headers_mut().extend(inner.headers);
        resp
    }
}
