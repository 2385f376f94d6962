//! pgpilot's per-pod agent as a library, so integration tests can drive its parts; `main.rs` is the
//! thin binary.
//!
//! - [`election`]: the pure election rules (`decide`) and the Lease IO shell.
//! - [`postgres`]: the PostgreSQL lifecycle (files, child process, server tools) the HA loop calls.

pub mod election;
pub mod postgres;
