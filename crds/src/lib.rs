//! Types shared by the operator and the sidecar. No IO lives here.
//!
//! - [`contract`]: names, labels, ports, files and documents the operator and the sidecars agree on.

pub mod contract;
