//! pgpilot's per-pod agent as a library, so integration tests can drive its parts; `main.rs` is the
//! thin binary.
//!
//! - [`config`]: the cluster's configuration from its ConfigMap.
//! - [`election`]: the pure election rules (`decide`) and the Lease IO shell.
//! - [`peers`]: the cluster's pods and the other members' REST reports.
//! - [`ha`]: the HA loop that observes, decides and acts.
//! - [`postgres`]: the PostgreSQL lifecycle (files, child process, server tools) the HA loop calls.
//! - [`state`]: what the member publishes (a `watch` channel) and the commands the REST API sends.
//! - [`rest`]: the Patroni-compatible REST API; [`metrics`]: Prometheus metrics.

pub mod config;
pub mod election;
pub mod ha;
pub mod logsink;
pub mod metrics;
pub mod peers;
pub mod postgres;
pub mod rest;
pub mod state;
