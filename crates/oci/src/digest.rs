//! Content digests (`algorithm:encoded`) and the streaming hasher that produces them.

use sha2::Digest as _;
use std::fmt;
use std::str::FromStr;

/// A digest algorithm Berth can compute and verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    Sha256,
    Sha512,
}

impl Algorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    /// Length of the hex-encoded digest.
    pub fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }

    pub fn hasher(self) -> Hasher {
        match self {
            Algorithm::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
            Algorithm::Sha512 => Hasher::Sha512(sha2::Sha512::new()),
        }
    }
}

impl FromStr for Algorithm {
    type Err = DigestError;
    fn from_str(s: &str) -> Result<Self, DigestError> {
        match s {
            "sha256" => Ok(Algorithm::Sha256),
            "sha512" => Ok(Algorithm::Sha512),
            other if is_algorithm_grammar(other) => {
                Err(DigestError::UnsupportedAlgorithm(other.to_string()))
            }
            _ => Err(DigestError::Malformed),
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a string is not a digest Berth accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    #[error("digest is not of the form algorithm:hex")]
    Malformed,
    #[error("digest algorithm {0:?} is not supported (use sha256 or sha512)")]
    UnsupportedAlgorithm(String),
    #[error("{algorithm} digest must be {expected} lowercase hex characters")]
    BadEncoding {
        algorithm: Algorithm,
        expected: usize,
    },
}

/// A validated digest of a supported algorithm, always in canonical lowercase hex.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    algorithm: Algorithm,
    // The whole "algorithm:hex" string, so Display/as_str never allocate.
    full: String,
}

impl Digest {
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The hex-encoded part after the colon.
    pub fn hex(&self) -> &str {
        &self.full[self.algorithm.as_str().len() + 1..]
    }

    pub fn as_str(&self) -> &str {
        &self.full
    }

    /// Digest of `data` with `algorithm`.
    pub fn of(algorithm: Algorithm, data: &[u8]) -> Digest {
        let mut h = algorithm.hasher();
        h.update(data);
        h.finish()
    }

    /// The spec's "referrers tag schema" tag for this digest: `alg-hex`.
    pub fn referrers_tag(&self) -> String {
        format!("{}-{}", self.algorithm.as_str(), &self.hex()[..64])
    }
}

fn is_algorithm_grammar(s: &str) -> bool {
    // algorithm-component ([+._-] algorithm-component)*, component = [a-z0-9]+
    !s.is_empty()
        && s.split(['+', '.', '_', '-']).all(|c| {
            !c.is_empty()
                && c.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
}

impl FromStr for Digest {
    type Err = DigestError;
    fn from_str(s: &str) -> Result<Self, DigestError> {
        let (alg, enc) = s.split_once(':').ok_or(DigestError::Malformed)?;
        if enc.is_empty()
            || !enc
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'=' || b == b'_' || b == b'-')
        {
            return Err(DigestError::Malformed);
        }
        let algorithm: Algorithm = alg.parse()?;
        if enc.len() != algorithm.hex_len()
            || !enc
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(DigestError::BadEncoding {
                algorithm,
                expected: algorithm.hex_len(),
            });
        }
        Ok(Digest {
            algorithm,
            full: s.to_string(),
        })
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.full)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.full)
    }
}

/// A running hash of a blob being written. Cloneable so that an upload's state can be
/// kept between chunks.
#[derive(Clone)]
pub enum Hasher {
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

impl Hasher {
    pub fn algorithm(&self) -> Algorithm {
        match self {
            Hasher::Sha256(_) => Algorithm::Sha256,
            Hasher::Sha512(_) => Algorithm::Sha512,
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }

    /// The digest of everything hashed so far (the hasher itself is left unchanged).
    pub fn digest(&self) -> Digest {
        self.clone().finish()
    }

    pub fn finish(self) -> Digest {
        let (algorithm, hex) = match self {
            Hasher::Sha256(h) => (Algorithm::Sha256, hex::encode(h.finalize())),
            Hasher::Sha512(h) => (Algorithm::Sha512, hex::encode(h.finalize())),
        };
        Digest {
            algorithm,
            full: format!("{}:{}", algorithm.as_str(), hex),
        }
    }
}

impl fmt::Debug for Hasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hasher({})", self.algorithm())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY256: &str =
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_and_rejects() {
        let cases: &[(&str, Result<(), DigestError>)] = &[
            (EMPTY256, Ok(())),
            ("sha512:cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e", Ok(())),
            ("sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855", Err(DigestError::BadEncoding { algorithm: Algorithm::Sha256, expected: 64 })),
            ("sha256:abc", Err(DigestError::BadEncoding { algorithm: Algorithm::Sha256, expected: 64 })),
            ("md5:abc", Err(DigestError::UnsupportedAlgorithm("md5".into()))),
            ("sha256", Err(DigestError::Malformed)),
            (":abc", Err(DigestError::Malformed)),
            ("sha256:", Err(DigestError::Malformed)),
            ("SHA256:abc", Err(DigestError::Malformed)),
            ("sha256:ab/cd", Err(DigestError::Malformed)),
        ];
        for (s, want) in cases {
            assert_eq!(s.parse::<Digest>().map(|_| ()), *want, "{s}");
        }
    }

    #[test]
    fn hashes() {
        assert_eq!(Digest::of(Algorithm::Sha256, b"").as_str(), EMPTY256);
        let mut h = Algorithm::Sha256.hasher();
        h.update(b"hello ");
        let mid = h.digest();
        h.update(b"world");
        assert_ne!(mid, h.digest());
        assert_eq!(h.finish(), Digest::of(Algorithm::Sha256, b"hello world"));
        let d: Digest = EMPTY256.parse().expect("valid test input");
        assert_eq!(d.hex().len(), 64);
        assert_eq!(d.referrers_tag(), format!("sha256-{}", d.hex()));
    }
}
