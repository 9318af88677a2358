//! Passwords and secrets: bcrypt hashing and checking off the async workers, with a
//! bounded cache of checks bcrypt already accepted (clients send the same Basic
//! credentials with every request, and each bcrypt check costs tens of milliseconds).
//! The stored hash is part of a cache key, so a changed password never matches an old
//! success. Also random secrets for robots and the first admin.

use sha2::Digest as _;
use std::collections::HashSet;
use std::sync::Mutex;

/// bcrypt cost of hashes Berth writes (Harbor and htpasswd -B use 10 or less).
pub const COST: u32 = 10;

/// A bcrypt hash of a random password, checked when a user is unknown so that the
/// answer takes as long as a wrong password.
pub const DUMMY_HASH: &str = "$2y$10$6fofTOB5xMonFCNj6hIQBOM4zvoRgH9vg3XoFmEe65OH/EOTyzINK";

const MAX_VERIFIED: usize = 4096;

/// Checks passwords against bcrypt hashes, remembering successes.
pub struct Checker {
    verified: Mutex<HashSet<[u8; 32]>>,
    secret: [u8; 32],
}

impl Default for Checker {
    fn default() -> Self {
        use rand::RngCore as _;
        let mut secret = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut secret);
        Checker {
            verified: Mutex::new(HashSet::new()),
            secret,
        }
    }
}

impl Checker {
    fn key(&self, who: &str, password: &str, hash: &str) -> [u8; 32] {
        let mut h = sha2::Sha256::new();
        h.update(self.secret);
        for part in [who, password, hash] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part.as_bytes());
        }
        h.finalize().into()
    }

    /// Whether `password` matches `hash`; with no hash (an unknown name) the same work
    /// is done and the answer is no.
    pub async fn check(&self, who: &str, password: &str, hash: Option<&str>) -> bool {
        self.check_or_dummy(who, password, hash, DUMMY_HASH).await
    }

    /// [`Checker::check`], checking `dummy` when there is no hash (a hash whose cost
    /// matches the store's real ones, so that unknown names take as long).
    pub async fn check_or_dummy(
        &self,
        who: &str,
        password: &str,
        hash: Option<&str>,
        dummy: &str,
    ) -> bool {
        let key = hash.map(|h| self.key(who, password, h));
        if let Some(k) = &key {
            if self
                .verified
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(k)
            {
                return true;
            }
        }
        let password = password.to_string();
        let hash = hash.map(str::to_string);
        let dummy = dummy.to_string();
        let ok = tokio::task::spawn_blocking(move || match hash {
            Some(h) => bcrypt::verify(&password, &h).unwrap_or(false),
            None => {
                let _ = bcrypt::verify(&password, &dummy);
                false
            }
        })
        .await
        .unwrap_or(false);
        if ok {
            if let Some(k) = key {
                let mut v = self.verified.lock().unwrap_or_else(|p| p.into_inner());
                if v.len() >= MAX_VERIFIED {
                    v.clear();
                }
                v.insert(k);
            }
        }
        ok
    }
}

/// A bcrypt hash of `password` (on a blocking thread).
pub async fn hash(password: &str) -> Result<String, String> {
    let password = password.to_string();
    tokio::task::spawn_blocking(move || bcrypt::hash(password, COST))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
}

/// A random secret of `len` letters and digits.
pub fn random_secret(len: usize) -> String {
    use rand::Rng as _;
    const CHARS: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    let mut rng = rand::thread_rng();
    (0..len)
        .map(|_| CHARS[rng.gen_range(0..CHARS.len())] as char)
        .collect()
}

/// Harbor's password rule for local users: 8 to 256 characters with at least one
/// upper-case letter, one lower-case letter and one digit.
pub fn check_strength(password: &str) -> Result<(), String> {
    let n = password.chars().count();
    let ok = (8..=256).contains(&n)
        && password.chars().any(|c| c.is_ascii_uppercase())
        && password.chars().any(|c| c.is_ascii_lowercase())
        && password.chars().any(|c| c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err("a password needs 8 to 256 characters, with at least one upper-case letter, one lower-case letter and one digit".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn checks_and_remembers() {
        let c = Checker::default();
        let h = hash("Secret123").await.expect("hash");
        assert!(c.check("a", "Secret123", Some(&h)).await);
        assert!(c.check("a", "Secret123", Some(&h)).await);
        assert!(!c.check("a", "wrong", Some(&h)).await);
        assert!(!c.check("a", "Secret123", None).await);
        let other = hash("Other1234").await.expect("hash");
        assert!(!c.check("a", "Secret123", Some(&other)).await);
    }

    #[test]
    fn strength_and_secrets() {
        assert!(check_strength("Harbor12345").is_ok());
        for weak in ["short1A", "alllowercase1", "ALLUPPER123", "NoDigitsHere"] {
            assert!(check_strength(weak).is_err(), "{weak}");
        }
        let s = random_secret(32);
        assert_eq!(s.len(), 32);
        assert_ne!(s, random_secret(32));
    }
}
