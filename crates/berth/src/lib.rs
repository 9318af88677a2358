//! Berth: an OCI container registry. `main.rs` is a thin CLI over this library.
//!
//! Layers, top to bottom: [`state`] (composition root) -> [`http`] (the only HTTP-aware
//! module) -> [`registry`] (OCI semantics) -> [`storage`] (blob bytes) and [`meta`]
//! (metadata) -> the `oci` crate (vocabulary); [`jobs`] (background workers) sits beside
//! [`http`] over [`registry`]. See ARCHITECTURE.md.

pub mod auth;
pub mod config;
pub mod http;
pub mod import;
pub mod jobs;
pub mod logging;
pub mod meta;
pub mod migrate;
pub mod registry;
pub mod state;
pub mod storage;
pub mod upstream;
