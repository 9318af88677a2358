//! Content digests (`algorithm:encoded`) and the streaming hasher that produces them.

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
            Algorithm::Sha256 => Hasher::Sha256(Sha256State::new()),
            Algorithm::Sha512 => Hasher::Sha512(Sha512State::new()),
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
/// kept between chunks, and resumable: [`Hasher::state`] is a few hundred bytes that
/// [`Hasher::resume`] turns back into the same running hash, so an upload continued by
/// another process (another node of a cluster) never re-reads the bytes already hashed.
///
/// The block function is `sha2`'s (`compress256`/`compress512`, with its CPU-specific
/// backends); only the buffering and the final padding (FIPS 180-4, 5.1) are here, since
/// `sha2` 0.10 cannot export its state.
#[derive(Clone)]
pub enum Hasher {
    Sha256(Sha256State),
    Sha512(Sha512State),
}

/// The running state of a SHA-256.
#[derive(Clone)]
pub struct Sha256State {
    h: [u32; 8],
    buf: [u8; 64],
    buffered: usize,
    /// Bytes hashed so far.
    len: u64,
}

/// The running state of a SHA-512.
#[derive(Clone)]
pub struct Sha512State {
    h: [u64; 8],
    buf: [u8; 128],
    buffered: usize,
    len: u128,
}

const SHA256_IV: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];
const SHA512_IV: [u64; 8] = [
    0x6a09e667f3bcc908,
    0xbb67ae8584caa73b,
    0x3c6ef372fe94f82b,
    0xa54ff53a5f1d36f1,
    0x510e527fade682d1,
    0x9b05688c2b3e6c1f,
    0x1f83d9abfb41bd6b,
    0x5be0cd19137e2179,
];

/// Blocks handed to the block function per call.
const BATCH: usize = 64;

type Block256 = sha2::digest::generic_array::GenericArray<u8, sha2::digest::consts::U64>;
type Block512 = sha2::digest::generic_array::GenericArray<u8, sha2::digest::consts::U128>;

/// Feed `data` through a block function with `B`-byte blocks, buffering the remainder.
fn absorb<const B: usize>(
    buf: &mut [u8; B],
    buffered: &mut usize,
    mut data: &[u8],
    mut blocks: impl FnMut(&[u8]),
) {
    if *buffered > 0 {
        let take = (B - *buffered).min(data.len());
        buf[*buffered..*buffered + take].copy_from_slice(&data[..take]);
        *buffered += take;
        data = &data[take..];
        if *buffered < B {
            return;
        }
        blocks(&buf[..]);
        *buffered = 0;
    }
    let whole = data.len() - data.len() % B;
    if whole > 0 {
        blocks(&data[..whole]);
    }
    let rest = &data[whole..];
    buf[..rest.len()].copy_from_slice(rest);
    *buffered = rest.len();
}

impl Sha256State {
    fn new() -> Self {
        Sha256State {
            h: SHA256_IV,
            buf: [0; 64],
            buffered: 0,
            len: 0,
        }
    }

    /// Whole blocks of `data`, in batches (one call into `sha2` per batch keeps its
    /// per-call feature dispatch off the per-block path).
    fn compress(h: &mut [u32; 8], data: &[u8]) {
        let mut batch = [Block256::default(); BATCH];
        for run in data.chunks(64 * BATCH) {
            let n = run.len() / 64;
            for (b, chunk) in batch.iter_mut().zip(run.chunks_exact(64)) {
                b.copy_from_slice(chunk);
            }
            sha2::compress256(h, &batch[..n]);
        }
    }

    fn update(&mut self, data: &[u8]) {
        self.len = self.len.wrapping_add(data.len() as u64);
        let h = &mut self.h;
        absorb(&mut self.buf, &mut self.buffered, data, |b| {
            Self::compress(h, b)
        });
    }

    fn finish(mut self) -> [u8; 32] {
        let bits = self.len.wrapping_mul(8);
        let mut tail = [0u8; 128];
        let n = self.buffered;
        tail[..n].copy_from_slice(&self.buf[..n]);
        tail[n] = 0x80;
        let total = if n < 56 { 64 } else { 128 };
        tail[total - 8..total].copy_from_slice(&bits.to_be_bytes());
        Self::compress(&mut self.h, &tail[..total]);
        let mut out = [0u8; 32];
        for (o, w) in out.chunks_exact_mut(4).zip(self.h) {
            o.copy_from_slice(&w.to_be_bytes());
        }
        out
    }
}

impl Sha512State {
    fn new() -> Self {
        Sha512State {
            h: SHA512_IV,
            buf: [0; 128],
            buffered: 0,
            len: 0,
        }
    }

    fn compress(h: &mut [u64; 8], data: &[u8]) {
        let mut batch = [Block512::default(); BATCH / 2];
        for run in data.chunks(128 * (BATCH / 2)) {
            let n = run.len() / 128;
            for (b, chunk) in batch.iter_mut().zip(run.chunks_exact(128)) {
                b.copy_from_slice(chunk);
            }
            sha2::compress512(h, &batch[..n]);
        }
    }

    fn update(&mut self, data: &[u8]) {
        self.len = self.len.wrapping_add(data.len() as u128);
        let h = &mut self.h;
        absorb(&mut self.buf, &mut self.buffered, data, |b| {
            Self::compress(h, b)
        });
    }

    fn finish(mut self) -> [u8; 64] {
        let bits = self.len.wrapping_mul(8);
        let mut tail = [0u8; 256];
        let n = self.buffered;
        tail[..n].copy_from_slice(&self.buf[..n]);
        tail[n] = 0x80;
        let total = if n < 112 { 128 } else { 256 };
        tail[total - 16..total].copy_from_slice(&bits.to_be_bytes());
        Self::compress(&mut self.h, &tail[..total]);
        let mut out = [0u8; 64];
        for (o, w) in out.chunks_exact_mut(8).zip(self.h) {
            o.copy_from_slice(&w.to_be_bytes());
        }
        out
    }
}

/// Why [`Hasher::resume`] refused a saved state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("saved hash state is invalid: {0}")]
pub struct HashStateError(&'static str);

/// Saved states start with this tag and a version byte.
const STATE_MAGIC: &[u8; 4] = b"bhs1";

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

    /// Bytes hashed so far.
    pub fn len(&self) -> u64 {
        match self {
            Hasher::Sha256(h) => h.len,
            Hasher::Sha512(h) => h.len as u64,
        }
    }

    /// Nothing hashed yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The digest of everything hashed so far (the hasher itself is left unchanged).
    pub fn digest(&self) -> Digest {
        self.clone().finish()
    }

    pub fn finish(self) -> Digest {
        let (algorithm, hex) = match self {
            Hasher::Sha256(h) => (Algorithm::Sha256, hex::encode(h.finish())),
            Hasher::Sha512(h) => (Algorithm::Sha512, hex::encode(h.finish())),
        };
        Digest {
            algorithm,
            full: format!("{}:{}", algorithm.as_str(), hex),
        }
    }

    /// The running state, to be stored and [`Hasher::resume`]d later (by any process):
    /// a tag, the algorithm, the byte count, the chaining words and the buffered partial
    /// block.
    pub fn state(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(220);
        out.extend_from_slice(STATE_MAGIC);
        match self {
            Hasher::Sha256(s) => {
                out.push(1);
                out.extend_from_slice(&(s.len as u128).to_be_bytes());
                for w in s.h {
                    out.extend_from_slice(&w.to_be_bytes());
                }
                out.extend_from_slice(&s.buf[..s.buffered]);
            }
            Hasher::Sha512(s) => {
                out.push(2);
                out.extend_from_slice(&s.len.to_be_bytes());
                for w in s.h {
                    out.extend_from_slice(&w.to_be_bytes());
                }
                out.extend_from_slice(&s.buf[..s.buffered]);
            }
        }
        out
    }

    /// A hasher continuing from a saved [`Hasher::state`].
    pub fn resume(saved: &[u8]) -> Result<Hasher, HashStateError> {
        let rest = saved
            .strip_prefix(STATE_MAGIC.as_slice())
            .ok_or(HashStateError("unknown format"))?;
        let (&alg, rest) = rest.split_first().ok_or(HashStateError("truncated"))?;
        if rest.len() < 16 {
            return Err(HashStateError("truncated"));
        }
        let (len, rest) = rest.split_at(16);
        let len = u128::from_be_bytes(len.try_into().map_err(|_| HashStateError("truncated"))?);
        match alg {
            1 => {
                if rest.len() < 32 {
                    return Err(HashStateError("truncated"));
                }
                let (words, buf) = rest.split_at(32);
                let mut s = Sha256State::new();
                for (w, b) in s.h.iter_mut().zip(words.chunks_exact(4)) {
                    *w = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
                }
                s.len = u64::try_from(len).map_err(|_| HashStateError("length"))?;
                if buf.len() != (s.len % 64) as usize {
                    return Err(HashStateError("buffer does not match the length"));
                }
                s.buf[..buf.len()].copy_from_slice(buf);
                s.buffered = buf.len();
                Ok(Hasher::Sha256(s))
            }
            2 => {
                if rest.len() < 64 {
                    return Err(HashStateError("truncated"));
                }
                let (words, buf) = rest.split_at(64);
                let mut s = Sha512State::new();
                for (w, b) in s.h.iter_mut().zip(words.chunks_exact(8)) {
                    let mut a = [0u8; 8];
                    a.copy_from_slice(b);
                    *w = u64::from_be_bytes(a);
                }
                s.len = len;
                if buf.len() != (s.len % 128) as usize {
                    return Err(HashStateError("buffer does not match the length"));
                }
                s.buf[..buf.len()].copy_from_slice(buf);
                s.buffered = buf.len();
                Ok(Hasher::Sha512(s))
            }
            _ => Err(HashStateError("unknown algorithm")),
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

    /// The reference digest from `sha2` itself.
    fn reference(alg: Algorithm, data: &[u8]) -> String {
        use sha2::Digest as _;
        match alg {
            Algorithm::Sha256 => format!("sha256:{}", hex::encode(sha2::Sha256::digest(data))),
            Algorithm::Sha512 => format!("sha512:{}", hex::encode(sha2::Sha512::digest(data))),
        }
    }

    #[test]
    fn hashes_as_sha2_does_at_every_length_and_split() {
        let data: Vec<u8> = (0..9000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        for alg in [Algorithm::Sha256, Algorithm::Sha512] {
            for len in (0..300).chain([1000, 4095, 4096, 4097, 8191, 8192, 9000]) {
                let want = reference(alg, &data[..len]);
                assert_eq!(Digest::of(alg, &data[..len]).as_str(), want, "{alg} {len}");
                // Fed in pieces of every size, and saved/resumed between them.
                for step in [1usize, 3, 63, 64, 65, 127, 128, 129, 4096] {
                    let mut h = alg.hasher();
                    for piece in data[..len].chunks(step) {
                        h = Hasher::resume(&h.state()).expect("resume");
                        h.update(piece);
                    }
                    assert_eq!(h.len(), len as u64);
                    assert_eq!(h.digest().as_str(), want, "{alg} {len} by {step}");
                }
            }
        }
    }

    #[test]
    fn saved_states_are_checked() {
        let mut h = Algorithm::Sha256.hasher();
        h.update(b"some bytes");
        let saved = h.state();
        assert!(Hasher::resume(&saved).is_ok());
        assert!(Hasher::resume(b"").is_err());
        assert!(Hasher::resume(&saved[..saved.len() - 1]).is_err());
        let mut longer = saved.clone();
        longer.push(0);
        assert!(Hasher::resume(&longer).is_err());
        let mut other = saved.clone();
        other[4] = 9;
        assert!(Hasher::resume(&other).is_err());
    }

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
