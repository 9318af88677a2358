//! Authentication at the HTTP edge: decodes `Authorization: Basic`, asks the configured
//! [`Authenticator`], and renders failures as Distribution 2.8 does (401 `UNAUTHORIZED`
//! with a `WWW-Authenticate` challenge and the requested access records as detail).
//! Runs right after routing, before method dispatch, so every endpoint is covered.

use super::endpoint::Endpoint;
use super::error::ApiError;
use crate::auth::{AuthError, Authenticator, Credentials, Principal};
use axum::http::{header, request::Parts, Method, StatusCode};
use base64::Engine as _;
use oci::ErrorCode;

/// Authenticate the request in `parts` for `endpoint`.
pub(super) async fn check(
    auth: &dyn Authenticator,
    endpoint: &Endpoint,
    parts: &Parts,
) -> Result<Principal, ApiError> {
    match auth.authenticate(credentials(parts)).await {
        Ok(p) => Ok(p),
        Err(AuthError::Unauthenticated) => Err(ApiError::new(
            ErrorCode::Unauthorized,
            "authentication required",
        )
        .detail(access_records(endpoint, parts))
        .header(header::WWW_AUTHENTICATE, &auth.challenge())),
        Err(AuthError::Store(message)) => {
            // The cause (file, line) goes to the log only: a bad line can hold a hash.
            tracing::error!(error = %message, "error checking authorization");
            Err(ApiError::with_status(
                StatusCode::BAD_REQUEST,
                ErrorCode::Unknown,
                "the registry cannot read its password file (auth.htpasswd.path): its log says why",
            ))
        }
    }
}

/// The credentials of `Authorization: Basic base64(user:password)`; anything else is
/// [`Credentials::None`] (a challenge follows).
fn credentials(parts: &Parts) -> Credentials {
    let Some(value) = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return Credentials::None;
    };
    let Some((scheme, encoded)) = value.trim().split_once(' ') else {
        return Credentials::None;
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return Credentials::None;
    }
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
        return Credentials::None;
    };
    let Ok(text) = String::from_utf8(decoded) else {
        return Credentials::None;
    };
    match text.split_once(':') {
        Some((user, password)) => Credentials::Basic {
            user: user.to_string(),
            password: password.to_string(),
        },
        None => Credentials::None,
    }
}

/// What the request asked for, in Distribution's shape (Go field names): `null` for
/// `/v2/`, `registry:catalog:*` for the catalog, otherwise the repository with `pull`
/// for reads, `pull` + `push` for writes, `delete` for deletes, plus `pull` on the
/// source repository of a cross-repository mount.
fn access_records(endpoint: &Endpoint, parts: &Parts) -> serde_json::Value {
    let record = |ty: &str, name: &str, action: &str| serde_json::json!({ "Type": ty, "Class": "", "Name": name, "Action": action });
    let repo = match endpoint {
        Endpoint::Base => return serde_json::Value::Null,
        Endpoint::Catalog => return serde_json::json!([record("registry", "catalog", "*")]),
        Endpoint::Tags { repo }
        | Endpoint::Manifest { repo, .. }
        | Endpoint::Blob { repo, .. }
        | Endpoint::Uploads { repo }
        | Endpoint::Upload { repo, .. }
        | Endpoint::Referrers { repo, .. } => repo.as_str(),
    };
    let m = &parts.method;
    let mut records = if m == Method::GET || m == Method::HEAD {
        vec![record("repository", repo, "pull")]
    } else if m == Method::DELETE {
        vec![record("repository", repo, "delete")]
    } else {
        vec![
            record("repository", repo, "pull"),
            record("repository", repo, "push"),
        ]
    };
    if let (Endpoint::Uploads { .. }, Some(q)) = (endpoint, parts.uri.query()) {
        let params: Vec<(String, String)> =
            form_urlencoded::parse(q.as_bytes()).into_owned().collect();
        let has_mount = params.iter().any(|(k, _)| k == "mount");
        if let Some((_, from)) = params
            .iter()
            .find(|(k, _)| k == "from")
            .filter(|_| has_mount)
        {
            records.push(record("repository", from, "pull"));
        }
    }
    serde_json::Value::Array(records)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Request;

    fn parts(method: &str, uri: &str, auth: Option<&str>) -> Parts {
        let mut b = Request::builder().method(method).uri(uri);
        if let Some(a) = auth {
            b = b.header("authorization", a);
        }
        b.body(()).expect("request").into_parts().0
    }

    #[test]
    fn decodes_basic_credentials() {
        // "alice:pa:ss" — the password may contain colons.
        let p = parts("GET", "/v2/", Some("Basic YWxpY2U6cGE6c3M="));
        assert_eq!(
            credentials(&p),
            Credentials::Basic {
                user: "alice".into(),
                password: "pa:ss".into()
            }
        );
        for bad in ["Bearer abc", "Basic !!!", "Basic", "Basic YWxpY2U="] {
            assert_eq!(
                credentials(&parts("GET", "/v2/", Some(bad))),
                Credentials::None,
                "{bad}"
            );
        }
        assert_eq!(credentials(&parts("GET", "/v2/", None)), Credentials::None);
    }

    #[test]
    fn access_records_follow_distribution() {
        let cases = [
            ("GET", "/v2/", serde_json::Value::Null),
            (
                "GET",
                "/v2/_catalog",
                serde_json::json!([{"Type":"registry","Class":"","Name":"catalog","Action":"*"}]),
            ),
            (
                "HEAD",
                "/v2/a/b/manifests/latest",
                serde_json::json!([{"Type":"repository","Class":"","Name":"a/b","Action":"pull"}]),
            ),
            (
                "DELETE",
                "/v2/a/manifests/latest",
                serde_json::json!([{"Type":"repository","Class":"","Name":"a","Action":"delete"}]),
            ),
            (
                "POST",
                "/v2/a/blobs/uploads/?mount=sha256:x&from=b",
                serde_json::json!([
                    {"Type":"repository","Class":"","Name":"a","Action":"pull"},
                    {"Type":"repository","Class":"","Name":"a","Action":"push"},
                    {"Type":"repository","Class":"","Name":"b","Action":"pull"}
                ]),
            ),
        ];
        for (method, uri, want) in cases {
            let p = parts(method, uri, None);
            let e = Endpoint::parse(p.uri.path()).expect("endpoint");
            assert_eq!(access_records(&e, &p), want, "{method} {uri}");
        }
    }
}
