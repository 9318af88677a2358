//! Berth: an OCI container registry. `main.rs` is a thin CLI over this library.
//!
//! Layers, top to bottom: [`state`] (composition root) -> [`http`] (the only HTTP-aware
//! module) -> [`registry`] (OCI semantics) -> [`storage`] (blob bytes) and [`meta`]
//! (metadata) -> the `oci` crate (vocabulary). See ARCHITECTURE.md.

pub mod config;
pub mod http;
pub mod import;
pub mod meta;
pub mod registry;
pub mod state;
pub mod storage;
