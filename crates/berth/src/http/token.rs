//! `/service/token`: Berth's token endpoint (Harbor's path), in both forms of Docker's
//! token authentication: `GET` with optional Basic credentials and `service`/`scope`
//! parameters, and the OAuth2 `POST` form (`grant_type=password` or `refresh_token`).
//! Decoding and rendering only: `auth::berth` authenticates, decides and signs.

use super::body::read_limited;
use super::error::ApiError;
use super::App;
use crate::auth::berth::{BerthAccess, TokenRequest};
use crate::auth::{AuthError, Credentials, Scope};
use axum::body::Body;
use axum::http::{header, request::Parts, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use oci::ErrorCode;
use std::time::Duration;

/// The most a token request's form may hold.
const MAX_FORM: usize = 64 * 1024;

/// `mirror`: the project of the mirror host name the request is for (its repository
/// names are the mirrored registry's).
pub(super) async fn handle(
    app: &App,
    berth: &BerthAccess,
    parts: &Parts,
    body: Body,
    mirror: Option<&str>,
) -> Response {
    let (resp, who, scopes) = match answer(berth, parts, body, mirror).await {
        Ok((r, who, scopes)) => (r, who, scopes),
        Err((e, who)) => (e.into_response(), who, String::new()),
    };
    if let Some(log) = &app.options.audit {
        let ok = resp.status().is_success();
        if ok || !who.is_empty() {
            log.record(crate::meta::AuditRecord {
                time_ms: super::api::now_ms(),
                principal: if who.is_empty() {
                    "anonymous".into()
                } else {
                    who
                },
                client: super::api::client_of(parts),
                resource_type: "token".into(),
                resource: scopes,
                project: None,
                operation: if ok { "issue" } else { "login" }.into(),
                result: if ok { "success" } else { "unauthorized" }.into(),
            });
        }
    }
    resp
}

/// The answer, the principal's name and the granted scopes; or the error and the name
/// the caller gave.
async fn answer(
    berth: &BerthAccess,
    parts: &Parts,
    body: Body,
    mirror: Option<&str>,
) -> Result<(Response, String, String), (ApiError, String)> {
    let mut who = String::new();
    let result = answer_inner(berth, parts, body, mirror, &mut who).await;
    result.map_err(|e| (e, who))
}

async fn answer_inner(
    berth: &BerthAccess,
    parts: &Parts,
    body: Body,
    mirror: Option<&str>,
    who: &mut String,
) -> Result<(Response, String, String), ApiError> {
    let query: Vec<(String, String)> = parts
        .uri
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let (mut request, oauth) = match parts.method {
        Method::GET | Method::HEAD => (
            TokenRequest {
                credentials: super::auth::credentials(parts),
                refresh_token: None,
                service: param(&query, "service"),
                scopes: scopes(&query),
                offline: param(&query, "offline_token").as_deref() == Some("true"),
            },
            false,
        ),
        Method::POST => {
            let bytes = read_limited(body, MAX_FORM, Duration::from_secs(30))
                .await
                .map_err(|e| match e {
                    super::body::ReadError::TooLarge => ApiError::with_status(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        ErrorCode::Unsupported,
                        format!("a token request form may hold at most {MAX_FORM} bytes"),
                    ),
                    super::body::ReadError::Io(e) => ApiError::new(
                        ErrorCode::Unsupported,
                        format!("cannot read the token request: {e}"),
                    ),
                })?;
            let form: Vec<(String, String)> = form_urlencoded::parse(&bytes).into_owned().collect();
            let grant = param(&form, "grant_type").unwrap_or_default();
            let (credentials, refresh_token) = match grant.as_str() {
                "password" => (
                    Credentials::Basic {
                        user: param(&form, "username").unwrap_or_default(),
                        password: param(&form, "password").unwrap_or_default(),
                    },
                    None,
                ),
                "refresh_token" => (
                    Credentials::None,
                    Some(param(&form, "refresh_token").unwrap_or_default()),
                ),
                other => {
                    return Err(oauth_error(
                        StatusCode::BAD_REQUEST,
                        "unsupported_grant_type",
                        &format!(
                            "grant_type {other:?} is not supported: use password or refresh_token"
                        ),
                    ))
                }
            };
            (
                TokenRequest {
                    credentials,
                    refresh_token,
                    service: param(&form, "service"),
                    scopes: scopes(&form),
                    offline: param(&form, "access_type").as_deref() == Some("offline"),
                },
                true,
            )
        }
        _ => {
            return Err(ApiError::with_status(
                StatusCode::METHOD_NOT_ALLOWED,
                ErrorCode::Unsupported,
                "the token endpoint takes GET and POST",
            )
            .header(header::ALLOW, "GET, POST"))
        }
    };
    if let Credentials::Basic { user, .. } = &request.credentials {
        who.clone_from(user);
    }
    if let Some(project) = mirror {
        request.scopes =
            super::mirror::project_scopes(project, std::mem::take(&mut request.scopes));
    }
    match berth.issue(request).await {
        Ok(a) => {
            let issued_at = crate::registry::events::rfc3339_nano(
                std::time::UNIX_EPOCH + Duration::from_secs(a.issued.issued_at.max(0) as u64),
            );
            let mut body = serde_json::json!({
                "token": a.issued.token,
                "access_token": a.issued.token,
                "expires_in": a.issued.expires_in,
                "issued_at": issued_at,
            });
            if let Some(r) = a.refresh_token {
                body["refresh_token"] = r.into();
            }
            if oauth {
                body["scope"] = a
                    .issued
                    .claims
                    .access
                    .iter()
                    .map(Scope::to_string)
                    .collect::<Vec<_>>()
                    .join(" ")
                    .into();
            }
            let scopes: Vec<String> = a.issued.claims.access.iter().map(Scope::to_string).collect();
            Ok((
                (
                    StatusCode::OK,
                    [
                        (header::CONTENT_TYPE, "application/json"),
                        (header::CACHE_CONTROL, "no-store"),
                    ],
                    body.to_string(),
                )
                    .into_response(),
                a.principal.display_name().to_string(),
                scopes.join(" "),
            ))
        }
        Err(AuthError::Unauthenticated) if oauth => Err(oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_grant",
            "wrong user name or password",
        )),
        Err(AuthError::Unauthenticated) => Err(ApiError::new(
            ErrorCode::Unauthorized,
            "wrong user name or password: check the credentials (robot accounts log in as robot$project+name with their secret)",
        )
        .header(header::WWW_AUTHENTICATE, "Basic realm=\"berth\"")),
        Err(AuthError::InvalidToken(why)) => Err(ApiError::new(
            ErrorCode::Unauthorized,
            format!("the refresh token is not valid: {why}; log in again"),
        )),
        Err(AuthError::Denied(why)) => Err(ApiError::with_status(
            StatusCode::BAD_REQUEST,
            ErrorCode::Denied,
            why,
        )),
        Err(AuthError::Store(why)) => {
            tracing::error!(error = %why, "token request failed");
            Err(ApiError::with_status(
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorCode::Unknown,
                "the token service cannot check credentials (its database or LDAP directory): its log says why",
            ))
        }
    }
}

fn param(params: &[(String, String)], key: &str) -> Option<String> {
    params
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
        .filter(|v| !v.is_empty())
}

/// Every `scope` parameter, each possibly holding several scopes separated by spaces.
fn scopes(params: &[(String, String)]) -> Vec<Scope> {
    params
        .iter()
        .filter(|(k, _)| k == "scope")
        .flat_map(|(_, v)| v.split(' ').filter_map(Scope::parse).collect::<Vec<_>>())
        .collect()
}

/// An OAuth2 error answer (RFC 6749 section 5.2), inside the registry's error envelope
/// shape so both kinds of client read a message.
fn oauth_error(status: StatusCode, error: &str, description: &str) -> ApiError {
    ApiError::with_status(
        status,
        ErrorCode::Unauthorized,
        format!("{error}: {description}"),
    )
}
