//! Time as the harness measures it: Unix microseconds on the host clock. Every pod of the local cluster
//! runs on this one kernel, so the probes' timestamps, the servers' `clock_timestamp()`, the fault hooks'
//! stamps and the apiserver's audit log are directly comparable.

use std::time::{SystemTime, UNIX_EPOCH};

/// Microseconds since the Unix epoch, on the host clock.
pub type Micros = i64;

/// Microseconds since the Unix epoch, now.
pub fn now_us() -> Micros {
    micros_of(SystemTime::now())
}

/// `t` in microseconds since the Unix epoch (0 before it).
pub fn micros_of(t: SystemTime) -> Micros {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}
