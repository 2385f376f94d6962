//! The fault-matrix checker: does the cluster lose acknowledged writes, or ever have two writable
//! primaries, under a fault — and how long until it is whole again?
//!
//! - [`writer`]: an application writing sequential ids through the `-rw` Service, recording every
//!   acknowledged id.
//! - [`probe`]: one member's PostgreSQL observed every ~100 ms from inside the pod's network namespace (the
//!   `pgpilot-probe` binary); [`probes`] runs one per member pod.
//! - [`verdict`] (pure): lost acknowledged ids, spans with two writable members, time to converge, the
//!   timeline; a table and JSON.
//! - [`pg`]: the probe's and the writer's PostgreSQL connections (one error type, one bounded connect).
//! - [`member_logs`]: the members' own log lines about HA, for a failed scenario's timeline.
//! - [`harness`]: one scenario end to end.

use std::time::Duration;

pub mod harness;
pub mod member_logs;
pub mod pg;
pub mod probe;
pub mod probes;
pub mod verdict;
pub mod writer;

/// A wait of the checker that ran out: what never came.
#[derive(Debug, thiserror::Error)]
#[error("timed out after {waited:?} waiting for {what}")]
pub struct Timeout {
    pub waited: Duration,
    pub what: String,
}
