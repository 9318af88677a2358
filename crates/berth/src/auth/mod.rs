//! Who is calling: [`Principal`]s, the [`Authenticator`] trait that turns a request's
//! credentials into one, and its htpasswd implementation. Knows nothing of HTTP: the
//! http layer decodes the `Authorization` header into [`Credentials`] and renders
//! [`AuthError`]s; authorization decisions (RBAC, token scopes) come later beside this.

pub mod htpasswd;

use async_trait::async_trait;

/// An authenticated caller; the http layer stores it in the request's extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The user name, as given in the credentials.
    pub name: String,
}

/// What a client presented.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// Nothing usable (no `Authorization` header, or one in another scheme).
    None,
    /// HTTP Basic user and password.
    Basic { user: String, password: String },
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::None => f.write_str("None"),
            Credentials::Basic { user, .. } => write!(f, "Basic({user}, <password>)"),
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

impl std::fmt::Debug for dyn Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Authenticator({})", self.challenge())
    }
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
