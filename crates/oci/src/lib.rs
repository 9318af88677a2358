//! Pure OCI distribution vocabulary: repository names, tags, references, digests,
//! media types, manifest parsing and validation, and the spec's error-code table.
//!
//! This crate knows nothing about HTTP, storage, databases or async runtimes: it is
//! the validated-types layer that every other layer speaks, and it must stay free of
//! I/O so that it is cheap to test and fuzz.

mod digest;
mod error;
pub mod manifest;
pub mod media;
mod name;

pub use digest::{Algorithm, Digest, DigestError, Hasher};
pub use error::ErrorCode;
pub use name::{NameError, Reference, RepoName, Tag};
