//! htpasswd authentication as Distribution 2.8 does it: `user:hash` lines, only bcrypt
//! hashes authenticate (`$2a$`, `$2b$`, `$2y$`; MD5, SHA1, crypt and plain entries are
//! read but never match), the file is read lazily and re-read whenever its modification
//! time or size changes, and a missing file is created at start-up with user `docker`
//! and a random password that is logged once. Knows nothing of HTTP.

// The dummy hash compared against for an unknown user or a non-bcrypt entry, so those
// answers take as long as a wrong password; its cost is replaced by the file's (see
// [`dummy_hash`]).
use super::password::{Checker, DUMMY_HASH};
use super::{quote, AuthError, Authenticator, Credentials, Principal};
use async_trait::async_trait;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// Cost of the dummy check when the file has no bcrypt entry (nobody can log in then).
const DEFAULT_COST: u32 = 10;

/// The entries of one version of the file.
struct Users {
    entries: HashMap<String, String>,
    /// [`DUMMY_HASH`] at the cost of the file's first bcrypt entry: `htpasswd -B`
    /// writes cost 5 by default, so a fixed cost 10 would make unknown users 32 times
    /// slower than real ones, telling an attacker which names exist.
    dummy: String,
}

/// Parsed entries, and the file version they came from.
struct Loaded {
    version: (SystemTime, u64),
    users: Arc<Users>,
}

/// [`DUMMY_HASH`] with the cost of the first bcrypt entry among `hashes`.
fn dummy_hash<'a>(hashes: impl IntoIterator<Item = &'a String>) -> String {
    let cost = hashes
        .into_iter()
        .filter(|h| is_bcrypt(h))
        .find_map(|h| h.get(4..6)?.parse::<u32>().ok())
        .filter(|c| (4..=31).contains(c))
        .unwrap_or(DEFAULT_COST);
    format!("$2y${cost:02}{}", &DUMMY_HASH[6..])
}

/// Authenticates HTTP Basic credentials against an htpasswd file.
pub struct Htpasswd {
    realm: String,
    path: PathBuf,
    cache: Mutex<Option<Loaded>>,
    /// bcrypt off the workers, and the credentials it already accepted (a client sends
    /// the same Basic credentials with every request). The entry's hash is part of the
    /// cache key, so a changed or removed entry never matches an old success.
    passwords: Checker,
}

/// Why the htpasswd file could not be prepared at start-up.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("cannot open the htpasswd file {path}: {source} (check auth.htpasswd.path and its permissions)")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot create the default htpasswd file {path}: {source} (create it yourself with `htpasswd -Bbc {path} USER PASSWORD`)")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot hash the default password for {}: {reason}", path.display())]
    Hash { path: PathBuf, reason: String },
}

impl Htpasswd {
    /// Prepare authentication against `path`. As in Distribution, the file is not parsed
    /// here (an invalid file fails requests, not start-up); a missing one is created with
    /// user `docker` and a random password, logged as a warning.
    pub fn open(realm: &str, path: &Path) -> Result<Htpasswd, ProvisionError> {
        match std::fs::File::open(path) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => provision(path)?,
            Err(source) => {
                return Err(ProvisionError::Open {
                    path: path.to_path_buf(),
                    source,
                })
            }
        }
        Ok(Htpasswd {
            realm: realm.to_string(),
            path: path.to_path_buf(),
            cache: Mutex::new(None),
            passwords: Checker::default(),
        })
    }

    /// The current entries, re-reading the file if it changed since last time.
    fn users(&self) -> Result<Arc<Users>, AuthError> {
        let store = |what: &str, e: &dyn std::fmt::Display| {
            AuthError::Store(format!(
                "cannot {what} the htpasswd file {}: {e} (fix auth.htpasswd.path or the file)",
                self.path.display()
            ))
        };
        let meta = std::fs::metadata(&self.path).map_err(|e| store("read", &e))?;
        let version = (
            meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            meta.len(),
        );
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(l) = cache.as_ref().filter(|l| l.version == version) {
            return Ok(l.users.clone());
        }
        let text = std::fs::read_to_string(&self.path).map_err(|e| store("read", &e))?;
        let entries = parse(&text).map_err(|e| store("parse", &e))?;
        // "First" in file order: the map has none, so take the first line's user.
        let first = text
            .lines()
            .filter_map(|l| l.trim().split_once(':'))
            .filter_map(|(u, _)| entries.get(u))
            .find(|h| is_bcrypt(h));
        let dummy = dummy_hash(first.into_iter().chain(entries.values()));
        let users = Arc::new(Users { entries, dummy });
        *cache = Some(Loaded {
            version,
            users: users.clone(),
        });
        Ok(users)
    }
}

#[async_trait]
impl Authenticator for Htpasswd {
    fn challenge(&self) -> String {
        format!("Basic realm={}", quote(&self.realm))
    }

    async fn authenticate(&self, credentials: Credentials) -> Result<Principal, AuthError> {
        let Credentials::Basic { user, password } = credentials else {
            return Err(AuthError::Unauthenticated);
        };
        let users = self.users()?;
        // An unknown user, or an entry that can never match (not bcrypt): the same work
        // as a real check, against the dummy at the file's cost.
        let hash = users
            .entries
            .get(&user)
            .map(String::as_str)
            .filter(|h| is_bcrypt(h));
        if self
            .passwords
            .check_or_dummy(&user, &password, hash, &users.dummy)
            .await
        {
            Ok(Principal::named(user))
        } else {
            tracing::info!(user = %user, "authentication failed for user {user:?}: wrong password, unknown user or non-bcrypt entry");
            Err(AuthError::Unauthenticated)
        }
    }
}

/// Only bcrypt entries can authenticate, as in Distribution.
fn is_bcrypt(hash: &str) -> bool {
    ["$2a$", "$2b$", "$2y$", "$2x$"]
        .iter()
        .any(|p| hash.starts_with(p))
}

/// Why an htpasswd file does not parse.
#[derive(Debug, PartialEq, thiserror::Error)]
#[error("invalid entry at line {line}: {text:?} (expected user:hash)")]
pub struct ParseError {
    line: usize,
    text: String,
}

/// `user:hash` per line; blank lines and `#` comments skipped; the hash is everything
/// after the first `:`; a later duplicate replaces an earlier one.
fn parse(text: &str) -> Result<HashMap<String, String>, ParseError> {
    let mut users = HashMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (user, hash) = line.split_once(':').ok_or_else(|| ParseError {
            line: i + 1,
            text: line.to_string(),
        })?;
        users.insert(user.to_string(), hash.to_string());
    }
    Ok(users)
}

/// Create `path` with user `docker` and a random password, and log the password.
fn provision(path: &Path) -> Result<(), ProvisionError> {
    use rand::RngCore as _;
    let create = |source| ProvisionError::Create {
        path: path.to_path_buf(),
        source,
    };
    let mut raw = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut raw);
    let password = base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, raw);
    let hash = bcrypt::hash(&password, 10).map_err(|e| ProvisionError::Hash {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        let mut b = std::fs::DirBuilder::new();
        b.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
        b.create(dir).map_err(create)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(create)?;
    std::io::Write::write_all(&mut file, format!("docker:{hash}").as_bytes()).map_err(create)?;
    tracing::warn!(
        user = "docker",
        password = %password,
        path = %path.display(),
        "htpasswd is missing, provisioning with default user"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_like_distribution() {
        let users =
            parse("# comment\n\n  alice:$2y$05$abc:with:colons  \nbob:{SHA}x\nalice:second\n")
                .expect("parse");
        assert_eq!(users.get("alice").map(String::as_str), Some("second"));
        assert_eq!(users.get("bob").map(String::as_str), Some("{SHA}x"));
        let e = parse("ok:x\nbroken line\n").expect_err("no colon");
        assert_eq!(e.line, 2);
        assert!(e.to_string().contains("line 2"));
    }

    #[test]
    fn dummy_cost_follows_the_file() {
        let h5 = bcrypt::hash("pw", 5).expect("hash");
        let h7 = bcrypt::hash("pw", 7).expect("hash");
        let plain = "{SHA}x".to_string();
        assert!(dummy_hash([&plain, &h5, &h7]).starts_with("$2y$05$"));
        assert!(dummy_hash([&h7]).starts_with("$2y$07$"));
        assert!(dummy_hash([&plain]).starts_with("$2y$10$"));
        // Still a well-formed hash that bcrypt checks (and that never matches).
        let d = dummy_hash([&h5]);
        assert_eq!(d.len(), DUMMY_HASH.len());
        assert!(matches!(bcrypt::verify("pw", &d), Ok(false)));
    }

    /// Median time of `n` failed authentications of `user`.
    /// The fastest of `n` failed checks: interference from other processes (tests run
    /// in parallel on small CI machines) only ever adds time, so the minimum is the
    /// check's own cost.
    async fn fastest_failure(h: &Htpasswd, user: &str, n: usize) -> std::time::Duration {
        let mut fastest = std::time::Duration::MAX;
        for i in 0..n {
            let start = std::time::Instant::now();
            let r = h
                .authenticate(Credentials::Basic {
                    user: user.into(),
                    password: format!("wrong{i}"),
                })
                .await;
            assert!(matches!(r, Err(AuthError::Unauthenticated)));
            fastest = fastest.min(start.elapsed());
        }
        fastest
    }

    /// An unknown user and a non-bcrypt entry cost about what a wrong password for a real
    /// user costs (within a factor of 2; a fixed cost-10 dummy made them 32 times slower
    /// than `htpasswd -B`'s default cost 5). Cost 7 here so the hash, not scheduling
    /// noise, dominates each measurement.
    #[tokio::test]
    async fn unknown_users_cost_what_real_ones_do() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("htpasswd");
        let hash = bcrypt::hash("pw", 7).expect("hash");
        std::fs::write(&path, format!("alice:{hash}\nplain:pw\n")).expect("write");
        let h = Htpasswd::open("r", &path).expect("open");
        let _ = fastest_failure(&h, "alice", 2).await; // warm up: file read, threads
        let real = fastest_failure(&h, "alice", 7).await;
        for user in ["nobody", "plain"] {
            let other = fastest_failure(&h, user, 7).await;
            let ratio = other.as_secs_f64() / real.as_secs_f64();
            assert!(
                (0.5..2.0).contains(&ratio),
                "{user}: {other:?} against {real:?} for a real user"
            );
        }
    }

    #[tokio::test]
    async fn verifies_bcrypt_only_and_provisions() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/htpasswd");
        let h = Htpasswd::open("r", &path).expect("provision");
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.starts_with("docker:$2"), "{text}");
        assert_eq!(h.challenge(), "Basic realm=\"r\"");
        let hash = bcrypt::hash("pw", 4).expect("hash");
        std::fs::write(&path, format!("alice:{hash}\nplain:pw\n")).expect("write");
        let basic = |u: &str, p: &str| Credentials::Basic {
            user: u.into(),
            password: p.into(),
        };
        let p = h.authenticate(basic("alice", "pw")).await.expect("alice");
        assert_eq!(p.name, "alice");
        for c in [
            basic("alice", "no"),
            basic("plain", "pw"),
            basic("nobody", "pw"),
            Credentials::None,
        ] {
            assert!(matches!(
                h.authenticate(c).await,
                Err(AuthError::Unauthenticated)
            ));
        }
        // A remembered success does not outlive a password change.
        let other = bcrypt::hash("new", 4).expect("hash");
        std::fs::write(&path, format!("alice:{other}\n")).expect("write");
        assert!(
            h.authenticate(basic("alice", "pw")).await.is_err(),
            "old password after change"
        );
        assert!(h.authenticate(basic("alice", "new")).await.is_ok());
        std::fs::write(&path, "garbage\n").expect("write");
        match h.authenticate(basic("alice", "pw")).await {
            Err(AuthError::Store(m)) => {
                assert!(m.contains("htpasswd") && m.contains("line 1"), "{m}")
            }
            other => panic!("expected a store error, got {other:?}"),
        }
    }
}
