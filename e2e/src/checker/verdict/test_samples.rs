//! Sample streams for the verdict's tests.

use crate::checker::probe::Sample;

/// A sample of `stream` taken at `t` ms: writable (the write ran at `t`), a streaming replica, or down.
pub fn s(stream: &str, t_ms: i64, state: &str) -> Sample {
    let t_us = t_ms * 1000;
    let mut sample = Sample {
        stream: stream.into(),
        t_us,
        end_us: t_us + 2_000,
        writable: false,
        wrote_at_us: None,
        in_recovery: None,
        read_only: None,
        streaming: None,
        error: None,
    };
    match state {
        "w" => {
            sample.writable = true;
            sample.in_recovery = Some(false);
            sample.read_only = Some(false);
            sample.wrote_at_us = Some(t_us + 1_000);
        }
        "r" => {
            sample.in_recovery = Some(true);
            sample.read_only = Some(false);
            sample.streaming = Some(true);
        }
        "ro" => {
            sample.in_recovery = Some(false);
            sample.read_only = Some(true);
        }
        _ => sample.error = Some("connection refused".into()),
    }
    sample
}

/// Samples every 100 ms from `from` to `to` (exclusive) in one state.
pub fn every(stream: &str, from: i64, to: i64, state: &str) -> Vec<Sample> {
    (from..to)
        .step_by(100)
        .map(|t| s(stream, t, state))
        .collect()
}

pub fn members(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("pg-{i}")).collect()
}
