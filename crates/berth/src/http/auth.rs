//! Access control at the HTTP edge: decodes `Authorization` (Basic or Bearer), works
//! out the scopes the endpoint needs, asks the configured [`AccessControl`], and renders
//! refusals: 401 `UNAUTHORIZED` with a `WWW-Authenticate` challenge (and Distribution
//! 2.8's access records as detail) when credentials are missing, wrong or too weak for
//! a token issuer; 403 `DENIED` when an authenticated caller is not allowed (Berth's
//! projects). Runs right after routing, before method dispatch, so every endpoint is
//! covered.

use super::endpoint::Endpoint;
use super::error::ApiError;
use crate::auth::scope::covers;
use crate::auth::{AccessControl, AccessRequest, AuthError, Credentials, Principal, Scope};
use axum::extract::ConnectInfo;
use axum::http::{header, request::Parts, Method, StatusCode};
use base64::Engine as _;
use oci::ErrorCode;
use std::net::SocketAddr;

/// The outcome of a request that passed.
pub(super) struct Allowed {
    pub principal: Principal,
    /// A cross-repository mount may read its `from` repository (or there is none).
    pub mount_allowed: bool,
}

/// Authorize the request in `parts` for `endpoint`; `base` is the scheme and host the
/// request came to (for realms that point back at this registry).
pub(super) async fn check(
    access: &dyn AccessControl,
    endpoint: &Endpoint,
    parts: &Parts,
    base: &str,
) -> Result<Allowed, ApiError> {
    let (required, mount_from) = wanted(endpoint, parts);
    let mut all = required.clone();
    all.extend(mount_from.clone());
    let credentials = credentials(parts);
    let bearer = matches!(credentials, Credentials::Bearer(_));
    let client = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    // The challenge names every scope, the mount source's `pull` too (as Distribution
    // does): a client that asks for the scopes it was challenged with (the OCI
    // conformance suite's) then gets a token that lets the mount happen.
    // On a mirror host name the challenge names the client's repository names, and a
    // realm whose token service maps them into the mirror's project.
    let mirror = parts
        .extensions
        .get::<super::mirror::MirrorOf>()
        .map(|m| m.0.as_str());
    let challenged = match mirror {
        Some(project) => super::mirror::client_scopes(project, &all),
        None => all.clone(),
    };
    let challenge = |error: Option<&str>, message: &str| {
        ApiError::new(ErrorCode::Unauthorized, message.to_string())
            .detail(access_records(endpoint, parts))
            .header(
                header::WWW_AUTHENTICATE,
                &access.challenge(base, &challenged, error, mirror),
            )
    };
    let decision = match access
        .authorize(AccessRequest {
            credentials,
            wanted: &all,
            client,
        })
        .await
    {
        Ok(d) => d,
        Err(AuthError::Unauthenticated) => return Err(challenge(None, "authentication required")),
        Err(AuthError::InvalidToken(why)) => {
            tracing::info!("refused a bearer token: {why}");
            return Err(challenge(Some("invalid_token"), "authentication required"));
        }
        Err(AuthError::Denied(why)) => return Err(ApiError::new(ErrorCode::Denied, why)),
        Err(AuthError::Store(message)) => {
            // The cause (file, line) goes to the log only: a bad line can hold a hash.
            tracing::error!(error = %message, "error checking authorization");
            return Err(ApiError::with_status(
                StatusCode::BAD_REQUEST,
                ErrorCode::Unknown,
                format!(
                    "the registry cannot read {}: its log says why",
                    access.store()
                ),
            ));
        }
    };
    let needs_login = matches!(endpoint, Endpoint::Base) && decision.principal.is_anonymous();
    let held = required.iter().all(|w| covers(&decision.granted, w));
    if needs_login || (!held && decision.principal.is_anonymous()) {
        return Err(challenge(None, "authentication required"));
    }
    if !held {
        // A Bearer token narrower than its holder's rights gets the challenge for the
        // scope a new token would hold; only what no token would allow is forbidden.
        let renewable = bearer && required.iter().all(|w| covers(&decision.obtainable, w));
        if access.forbids() && !renewable {
            return Err(ApiError::new(
                ErrorCode::Denied,
                "requested access to the resource is denied",
            ));
        }
        return Err(challenge(
            bearer.then_some("insufficient_scope"),
            "authentication required",
        ));
    }
    let mount_allowed = match &mount_from {
        Some(from) => covers(&decision.granted, from),
        None => true,
    };
    // A token without the mount source's pull, which its holder may get: challenge for
    // it (Distribution requires it) so that the client comes back with a token that
    // lets the mount happen. Without the right to pull there, the upload just starts.
    if bearer
        && !mount_allowed
        && mount_from
            .as_ref()
            .is_some_and(|from| covers(&decision.obtainable, from))
    {
        return Err(challenge(
            Some("insufficient_scope"),
            "authentication required",
        ));
    }
    Ok(Allowed {
        principal: decision.principal,
        mount_allowed,
    })
}

/// The scopes a request needs, and the optional one of a mount's source repository
/// (without it the mount is not tried and the request starts an ordinary upload).
fn wanted(endpoint: &Endpoint, parts: &Parts) -> (Vec<Scope>, Option<Scope>) {
    let repo = match endpoint {
        Endpoint::Base => return (Vec::new(), None),
        Endpoint::Catalog => return (vec![Scope::catalog()], None),
        Endpoint::Tags { repo }
        | Endpoint::Manifest { repo, .. }
        | Endpoint::Blob { repo, .. }
        | Endpoint::Uploads { repo }
        | Endpoint::Upload { repo, .. }
        | Endpoint::Referrers { repo, .. } => repo.as_str(),
    };
    let m = &parts.method;
    let required = if m == Method::GET || m == Method::HEAD {
        vec![Scope::repository(repo, ["pull"])]
    } else if m == Method::DELETE && !matches!(endpoint, Endpoint::Upload { .. }) {
        vec![Scope::repository(repo, ["delete"])]
    } else {
        vec![Scope::repository(repo, ["pull", "push"])]
    };
    let from = match endpoint {
        Endpoint::Uploads { .. } => mount_source(parts).map(|f| Scope::repository(&f, ["pull"])),
        _ => None,
    };
    (required, from)
}

/// The `from` of a cross-repository mount request (`?mount=...&from=...`).
fn mount_source(parts: &Parts) -> Option<String> {
    let q = parts.uri.query()?;
    let params: Vec<(String, String)> = form_urlencoded::parse(q.as_bytes()).into_owned().collect();
    if !params.iter().any(|(k, _)| k == "mount") {
        return None;
    }
    params
        .into_iter()
        .find(|(k, _)| k == "from")
        .map(|(_, v)| v)
}

/// The credentials of `Authorization: Basic base64(user:password)` or `Bearer token`;
/// anything else is [`Credentials::None`] (a challenge follows).
pub(super) fn credentials(parts: &Parts) -> Credentials {
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
    if scheme.eq_ignore_ascii_case("bearer") {
        let token = encoded.trim();
        return if token.is_empty() {
            Credentials::None
        } else {
            Credentials::Bearer(token.to_string())
        };
    }
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
        assert_eq!(
            credentials(&parts("GET", "/v2/", Some("Bearer abc.def"))),
            Credentials::Bearer("abc.def".into())
        );
        for bad in [
            "Bearer  ",
            "Digest abc",
            "Basic !!!",
            "Basic",
            "Basic YWxpY2U=",
        ] {
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
