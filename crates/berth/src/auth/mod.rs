//! Who is calling and what they may do: [`Principal`]s, the [`Authenticator`] trait
//! (credentials -> principal; htpasswd), and [`AccessControl`], the one question the
//! http layer asks of every request: given these credentials, which of the wanted
//! [`Scope`]s does the caller hold? Implementations: [`BasicAccess`] (htpasswd: an
//! authenticated caller holds everything), [`token::TokenAccess`] (an external token
//! issuer, Distribution's `auth.token`) and [`berth::BerthAccess`] (projects, roles,
//! robots, Berth's own token service, LDAP logins through [`ldap`]). Knows nothing of
//! HTTP: the http layer decodes the `Authorization` header into [`Credentials`] and
//! renders [`AuthError`]s.

pub mod accounts;
pub mod audit;
pub mod berth;
pub mod htpasswd;
pub mod ldap;
pub mod password;
pub mod rbac;
pub mod scope;
pub mod token;

pub use scope::Scope;

use async_trait::async_trait;
use std::net::IpAddr;
use std::sync::Arc;

/// An authenticated caller (or the anonymous one); the http layer stores it in the
/// request's extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The user name, as given in the credentials (`robot$team+ci` for a robot; empty
    /// for anonymous).
    pub name: String,
    pub kind: PrincipalKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrincipalKind {
    /// No credentials (only public projects' content, in Berth's mode).
    Anonymous,
    /// An htpasswd user, or the subject of an external issuer's token.
    External,
    /// A Berth user.
    User { id: i64, admin: bool },
    /// A Berth robot account.
    Robot { id: i64 },
}

impl Principal {
    pub fn named(name: impl Into<String>) -> Principal {
        Principal {
            name: name.into(),
            kind: PrincipalKind::External,
        }
    }

    pub fn anonymous() -> Principal {
        Principal {
            name: String::new(),
            kind: PrincipalKind::Anonymous,
        }
    }

    pub fn is_anonymous(&self) -> bool {
        self.kind == PrincipalKind::Anonymous
    }

    /// The name for logs and audit records.
    pub fn display_name(&self) -> &str {
        if self.is_anonymous() {
            "anonymous"
        } else {
            &self.name
        }
    }
}

/// What a client presented.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// Nothing usable (no `Authorization` header, or one in another scheme).
    None,
    /// HTTP Basic user and password.
    Basic { user: String, password: String },
    /// `Authorization: Bearer <token>`.
    Bearer(String),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::None => f.write_str("None"),
            Credentials::Basic { user, .. } => write!(f, "Basic({user}, <password>)"),
            Credentials::Bearer(_) => f.write_str("Bearer(<token>)"),
        }
    }
}

/// Why a caller was not authenticated.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No credentials, or wrong ones: the client should retry with credentials.
    #[error("authentication required")]
    Unauthenticated,
    /// The credential store itself is unusable (unreadable or invalid file): not the
    /// client's fault, and retrying with other credentials will not help.
    #[error("{0}")]
    Store(String),
    /// A bearer token that is not valid (the http layer answers 401 with
    /// `error="invalid_token"`).
    #[error("{0}")]
    InvalidToken(String),
    /// Authenticated, and refused for a reason the caller should read (a push from a
    /// network not allowed to push, a project that does not exist...): 403 `DENIED`.
    #[error("{0}")]
    Denied(String),
}

/// A way of authenticating requests (htpasswd today; tokens later).
#[async_trait]
pub trait Authenticator: Send + Sync {
    /// The challenge a client gets with a 401, as the value of `WWW-Authenticate`
    /// (`Basic realm="..."`).
    fn challenge(&self) -> String;

    /// The principal `credentials` prove, or why they prove none.
    async fn authenticate(&self, credentials: Credentials) -> Result<Principal, AuthError>;
}

/// What a request asks of [`AccessControl::authorize`].
#[derive(Debug)]
pub struct AccessRequest<'a> {
    pub credentials: Credentials,
    /// Every scope the request needs; the answer says which the caller holds.
    pub wanted: &'a [Scope],
    /// The client's address (the connection's peer).
    pub client: Option<IpAddr>,
}

/// Who the caller is and which of the wanted scopes they hold.
#[derive(Debug, Clone)]
pub struct Decision {
    pub principal: Principal,
    /// A subset of the wanted scopes (actions the caller lacks are left out).
    pub granted: Vec<Scope>,
    /// When a token holds less than its subject may do: the wanted scopes a new token
    /// from the token endpoint would hold (empty otherwise). A refusal the caller can
    /// mend with a better token is then a 401 `insufficient_scope` challenge, not a
    /// final 403: clients that keep one token per kind of request (the OCI conformance
    /// suite keeps its `delete` token for an upload's cancel) fetch the one they need.
    pub obtainable: Vec<Scope>,
}

/// Authentication and authorization of registry requests.
#[async_trait]
pub trait AccessControl: Send + Sync {
    /// Authenticate `req.credentials` and decide which of `req.wanted` the caller
    /// holds. `Err(Unauthenticated)` when credentials are missing or wrong and a
    /// challenge should follow.
    async fn authorize(&self, req: AccessRequest<'_>) -> Result<Decision, AuthError>;

    /// The `WWW-Authenticate` value of a 401 for a request wanting `wanted`;
    /// `error` is the RFC 6750 error code (`invalid_token`, `insufficient_scope`).
    /// `base` is the scheme and host the request came to (`https://reg.example`),
    /// for realms that point back at this registry. `mirror` is the project of the
    /// mirror host name the request came to (`auth.berth.mirrors`): its realm says so.
    fn challenge(
        &self,
        base: &str,
        wanted: &[Scope],
        error: Option<&str>,
        mirror: Option<&str>,
    ) -> String;

    /// What holds the credentials, for the answer to a request that failed because it
    /// is unusable ([`AuthError::Store`]): the setting an operator should look at.
    fn store(&self) -> &'static str {
        "its credential store"
    }

    /// Whether an authenticated caller lacking a scope gets 403 `DENIED` (Berth's
    /// projects), rather than a 401 challenge for a better token (Distribution's
    /// token authentication, which knows no other answer).
    fn forbids(&self) -> bool {
        false
    }

    /// Whether access differs between repositories (tokens, projects), so that a
    /// mount may only read a repository the caller may pull. htpasswd: everyone
    /// authenticated may do everything.
    fn scoped(&self) -> bool {
        true
    }

    /// The projects whose repositories `principal` may list in the catalog; `None`
    /// for all of them.
    async fn listable_projects(
        &self,
        _principal: &Principal,
    ) -> Result<Option<Vec<String>>, AuthError> {
        Ok(None)
    }
}

impl std::fmt::Debug for dyn AccessControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AccessControl")
    }
}

/// htpasswd as an [`AccessControl`]: an authenticated caller may do everything.
pub struct BasicAccess(pub Arc<dyn Authenticator>);

#[async_trait]
impl AccessControl for BasicAccess {
    async fn authorize(&self, req: AccessRequest<'_>) -> Result<Decision, AuthError> {
        let principal = self.0.authenticate(req.credentials).await?;
        Ok(Decision {
            principal,
            granted: req.wanted.to_vec(),
            obtainable: Vec::new(),
        })
    }

    fn challenge(
        &self,
        _base: &str,
        _wanted: &[Scope],
        _error: Option<&str>,
        _mirror: Option<&str>,
    ) -> String {
        self.0.challenge()
    }

    fn store(&self) -> &'static str {
        "its password file (auth.htpasswd.path)"
    }

    fn scoped(&self) -> bool {
        false
    }
}

impl std::fmt::Debug for dyn Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Authenticator({})", self.challenge())
    }
}

/// `realm` with `mirror=<project>` added to its query: the realm of a challenge on a
/// mirror host name (`auth.berth.mirrors`), whose token requests name the client's
/// repositories, which the token service maps into that project.
pub fn mirror_realm(realm: &str, project: &str) -> String {
    let sep = if realm.contains('?') { '&' } else { '?' };
    let encoded: String = form_urlencoded::byte_serialize(project.as_bytes()).collect();
    format!("{realm}{sep}mirror={encoded}")
}

/// A Bearer challenge as Distribution writes it: realm, service, the wanted scopes
/// (space-separated in one `scope`), and the error when there is one.
pub fn bearer_challenge(
    realm: &str,
    service: &str,
    wanted: &[Scope],
    error: Option<&str>,
) -> String {
    let mut out = format!("Bearer realm={},service={}", quote(realm), quote(service));
    if !wanted.is_empty() {
        let scopes: Vec<String> = wanted.iter().map(Scope::to_string).collect();
        out.push_str(&format!(",scope={}", quote(&scopes.join(" "))));
    }
    if let Some(e) = error {
        out.push_str(&format!(",error={}", quote(e)));
    }
    out
}

/// Quote `s` as an RFC 7230 quoted-string (Distribution uses Go's `%q`).
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}
