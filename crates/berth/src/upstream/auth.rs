//! Upstream authentication: parsing `WWW-Authenticate` challenges (RFC 7235 auth-params,
//! as the Docker token spec uses them) and the per-scope Bearer token cache.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A parsed challenge: the scheme (lower-cased) and its parameters (keys lower-cased).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub scheme: String,
    pub params: HashMap<String, String>,
}

impl Challenge {
    pub fn param(&self, key: &str) -> Option<&str> {
        self.params.get(key).map(String::as_str)
    }
}

/// Parse one `WWW-Authenticate` value such as
/// `Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull"`.
/// Quoted values may contain commas and backslash escapes. `None` when there is no scheme.
pub fn parse_challenge(value: &str) -> Option<Challenge> {
    let value = value.trim();
    let (scheme, mut rest) = match value.find(char::is_whitespace) {
        Some(i) => (&value[..i], value[i..].trim_start()),
        None => (value, ""),
    };
    if scheme.is_empty()
        || !scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return None;
    }
    let mut params = HashMap::new();
    while !rest.is_empty() {
        rest = rest.trim_start_matches(|c: char| c == ',' || c.is_whitespace());
        let Some(eq) = rest.find('=') else { break };
        let key = rest[..eq].trim().to_ascii_lowercase();
        rest = rest[eq + 1..].trim_start();
        let mut val = String::new();
        if let Some(quoted) = rest.strip_prefix('"') {
            let mut chars = quoted.char_indices();
            let mut end = quoted.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, n)) = chars.next() {
                            val.push(n);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => val.push(c),
                }
            }
            rest = &quoted[end.min(quoted.len())..];
        } else {
            let end = rest.find(',').unwrap_or(rest.len());
            val = rest[..end].trim().to_string();
            rest = &rest[end..];
        }
        if !key.is_empty() {
            params.insert(key, val);
        }
    }
    Some(Challenge {
        scheme: scheme.to_ascii_lowercase(),
        params,
    })
}

/// How long a token is trusted when the issuer does not say (the token spec's default).
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);
/// Tokens are dropped this long before they expire, so none is sent stale.
const EXPIRY_MARGIN: Duration = Duration::from_secs(10);

/// Bearer tokens by scope, each until shortly before it expires.
#[derive(Default)]
pub struct TokenCache {
    tokens: Mutex<HashMap<String, (String, Instant)>>,
}

impl TokenCache {
    pub fn get(&self, scope: &str) -> Option<String> {
        let mut tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        match tokens.get(scope) {
            Some((t, until)) if Instant::now() < *until => Some(t.clone()),
            Some(_) => {
                tokens.remove(scope);
                None
            }
            None => None,
        }
    }

    pub fn put(&self, scope: &str, token: String, lifetime: Option<Duration>) {
        let lifetime = lifetime.unwrap_or(DEFAULT_TOKEN_LIFETIME);
        // Short-lived tokens keep at least half their life rather than none.
        let keep = lifetime
            .checked_sub(EXPIRY_MARGIN)
            .filter(|d| *d >= lifetime / 2)
            .unwrap_or(lifetime / 2);
        let mut tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        // Bounded: one entry per repository pulled; expired ones go first.
        if tokens.len() >= 10_000 {
            let now = Instant::now();
            tokens.retain(|_, (_, until)| *until > now);
            if tokens.len() >= 10_000 {
                tokens.clear();
            }
        }
        tokens.insert(scope.to_string(), (token, Instant::now() + keep));
    }

    pub fn forget(&self, scope: &str) {
        self.tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(scope);
    }
}

/// The token endpoint's answer: `token` or `access_token`, and `expires_in` seconds.
#[derive(Debug, serde::Deserialize)]
pub struct TokenResponse {
    pub token: Option<String>,
    pub access_token: Option<String>,
    pub expires_in: Option<u64>,
}

impl TokenResponse {
    pub fn into_token(self) -> Option<(String, Option<Duration>)> {
        let lifetime = self.expires_in.filter(|s| *s > 0).map(Duration::from_secs);
        self.token
            .filter(|t| !t.is_empty())
            .or(self.access_token.filter(|t| !t.is_empty()))
            .map(|t| (t, lifetime))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_hub_challenge() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull""#,
        )
        .expect("parsed");
        assert_eq!(c.scheme, "bearer");
        assert_eq!(c.param("realm"), Some("https://auth.docker.io/token"));
        assert_eq!(c.param("service"), Some("registry.docker.io"));
        assert_eq!(c.param("scope"), Some("repository:library/alpine:pull"));
    }

    #[test]
    fn challenge_variants() {
        let c = parse_challenge(r#"Basic realm="Registry Realm""#).expect("basic");
        assert_eq!(c.scheme, "basic");
        assert_eq!(c.param("realm"), Some("Registry Realm"));
        // Commas inside quotes, escapes, unquoted values, odd spacing and case.
        let c = parse_challenge(
            r#"bearer  Realm = "https://a/token" , scope="repository:a/b:pull,push",error=insufficient_scope, note="say \"hi\"""#,
        )
        .expect("bearer");
        assert_eq!(c.scheme, "bearer");
        assert_eq!(c.param("realm"), Some("https://a/token"));
        assert_eq!(c.param("scope"), Some("repository:a/b:pull,push"));
        assert_eq!(c.param("error"), Some("insufficient_scope"));
        assert_eq!(c.param("note"), Some(r#"say "hi""#));
        assert_eq!(parse_challenge("Bearer").expect("bare").params.len(), 0);
        assert!(parse_challenge("").is_none());
        assert!(parse_challenge("\"x\" y").is_none());
        // An unterminated quote takes the rest.
        let c = parse_challenge(r#"Bearer realm="https://x"#).expect("unterminated");
        assert_eq!(c.param("realm"), Some("https://x"));
    }

    #[test]
    fn token_responses_and_cache() {
        let r: TokenResponse =
            serde_json::from_str(r#"{"access_token":"a","expires_in":300}"#).expect("json");
        assert_eq!(
            r.into_token(),
            Some(("a".into(), Some(Duration::from_secs(300))))
        );
        let r: TokenResponse = serde_json::from_str(r#"{"token":"t"}"#).expect("json");
        assert_eq!(r.into_token(), Some(("t".into(), None)));
        let r: TokenResponse = serde_json::from_str(r#"{"token":""}"#).expect("json");
        assert_eq!(r.into_token(), None);
        let cache = TokenCache::default();
        cache.put("s", "t".into(), None);
        assert_eq!(cache.get("s").as_deref(), Some("t"));
        cache.put("z", "u".into(), Some(Duration::ZERO));
        assert_eq!(cache.get("z"), None, "an already expired token is not used");
        cache.forget("s");
        assert_eq!(cache.get("s"), None);
    }
}
