//! Types shared by the operator and the sidecar. No IO lives here.
//!
//! - [`cluster`]: the `PostgresCluster` custom resource (spec, status, CEL rules, condition types).
//! - [`contract`]: names, labels, ports, files and documents the operator and the sidecars agree on.

pub mod cluster;
pub mod contract;

pub use cluster::{PostgresCluster, PostgresClusterSpec, PostgresClusterStatus};
