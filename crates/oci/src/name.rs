//! Repository names, tags and manifest references, validated by the spec's grammar.

use crate::digest::{Digest, DigestError};
use std::fmt;
use std::str::FromStr;

/// Longest repository name accepted. Clients cap `host/name` at 255 characters.
pub const MAX_NAME_LEN: usize = 255;
/// Longest tag the spec allows.
pub const MAX_TAG_LEN: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("repository name must match [a-z0-9]+((\\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\\.|_|__|-+)[a-z0-9]+)*)* and be at most {MAX_NAME_LEN} characters")]
    InvalidName,
    #[error("tag must match [a-zA-Z0-9_][a-zA-Z0-9._-]{{0,127}}")]
    InvalidTag,
    #[error("invalid digest: {0}")]
    InvalidDigest(#[from] DigestError),
}

/// A repository name (`library/alpine`, `a/b/c/d/e/f/g/h/app`): any number of components.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepoName(String);

impl RepoName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// One path component: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !is_alnum(b[0]) || !is_alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if is_alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run: ".", "_", "__" or one or more "-", then an alnum must follow.
        let start = i;
        match b[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if i < b.len() && b[i] == b'_' {
                    i += 1;
                }
            }
            b'-' => {
                while i < b.len() && b[i] == b'-' {
                    i += 1;
                }
            }
            _ => return false,
        }
        if i == start || i >= b.len() || !is_alnum(b[i]) {
            return false;
        }
    }
    true
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

impl FromStr for RepoName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, NameError> {
        if s.is_empty() || s.len() > MAX_NAME_LEN || !s.split('/').all(valid_component) {
            return Err(NameError::InvalidName);
        }
        Ok(RepoName(s.to_string()))
    }
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RepoName({})", self.0)
    }
}

/// A tag: `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(String);

impl Tag {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Tag {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, NameError> {
        let b = s.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= MAX_TAG_LEN
            && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
            && b[1..]
                .iter()
                .all(|&c| c.is_ascii_alphanumeric() || c == b'_' || c == b'.' || c == b'-');
        if ok {
            Ok(Tag(s.to_string()))
        } else {
            Err(NameError::InvalidTag)
        }
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tag({})", self.0)
    }
}

/// What follows `/manifests/`: a tag or a digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    Tag(Tag),
    Digest(Digest),
}

impl FromStr for Reference {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, NameError> {
        if s.contains(':') {
            Ok(Reference::Digest(s.parse()?))
        } else {
            Ok(Reference::Tag(s.parse()?))
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(t) => t.fmt(f),
            Reference::Digest(d) => d.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_names() {
        for ok in [
            "a",
            "library/alpine",
            "a/b/c/d/e/f/g/h/app",
            "my-app",
            "my--app",
            "my_app",
            "my__app",
            "my.app",
            "0abc/x9",
        ] {
            assert!(ok.parse::<RepoName>().is_ok(), "{ok}");
        }
        for bad in [
            "",
            "A",
            "a//b",
            "/a",
            "a/",
            "a___b",
            "a..b",
            "-a",
            "a-",
            "a_",
            "a.-b",
            "a b",
            "a/B",
            "ä",
            &"a".repeat(256),
        ] {
            assert!(bad.parse::<RepoName>().is_err(), "{bad}");
        }
    }

    #[test]
    fn tags_and_refs() {
        for ok in ["latest", "v1.0", "_x", "A-b_c.d", &"t".repeat(128)] {
            assert!(ok.parse::<Tag>().is_ok(), "{ok}");
        }
        for bad in ["", ".x", "-x", "a/b", "a:b", &"t".repeat(129)] {
            assert!(bad.parse::<Tag>().is_err(), "{bad}");
        }
        assert!(matches!(
            "latest".parse::<Reference>(),
            Ok(Reference::Tag(_))
        ));
        assert!(matches!(
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
                .parse::<Reference>(),
            Ok(Reference::Digest(_))
        ));
        assert!("sha256:zz".parse::<Reference>().is_err());
    }
}
