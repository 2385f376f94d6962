//! The cluster's shape at an instant as the probes last saw it (who is writable, who streams), and when it
//! converged: one writable member, every other member a streaming replica, held for a stable window. Pure.

use std::collections::BTreeMap;

use super::{Micros, member_of};
use crate::checker::probe::Sample;

/// The cluster's shape at one instant, as the probes last saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shape {
    /// Members whose latest observation was a successful write.
    pub writable: Vec<String>,
    /// Members in recovery whose WAL receiver is streaming.
    pub streaming: Vec<String>,
    /// Members with no fresh observation, or neither of the above.
    pub other: Vec<String>,
}

impl Shape {
    /// One primary, every other expected member a streaming replica.
    pub fn is_converged(&self) -> bool {
        self.writable.len() == 1 && self.other.is_empty()
    }
}

/// How fresh the latest sample of a member must be to count: the probe samples every 100 ms and gives up
/// on a sample after 1 s.
pub const FRESH_US: Micros = 1_500_000;

/// The shape at `at_us` from each member's latest sample at or before it (the latest stream wins when a
/// pod was replaced).
pub fn shape_at(samples: &[Sample], members: &[String], at_us: Micros) -> Shape {
    let mut latest: BTreeMap<&str, &Sample> = BTreeMap::new();
    for s in samples.iter().filter(|s| s.end_us <= at_us) {
        let m = member_of(&s.stream);
        if latest.get(m).is_none_or(|prev| prev.end_us <= s.end_us) {
            latest.insert(m, s);
        }
    }
    let mut shape = Shape {
        writable: vec![],
        streaming: vec![],
        other: vec![],
    };
    for m in members {
        match latest.get(m.as_str()) {
            Some(s) if at_us - s.end_us <= FRESH_US && s.writable => shape.writable.push(m.clone()),
            Some(s)
                if at_us - s.end_us <= FRESH_US
                    && s.in_recovery == Some(true)
                    && s.streaming == Some(true) =>
            {
                shape.streaming.push(m.clone());
            }
            _ => shape.other.push(m.clone()),
        }
    }
    shape
}

/// The first instant at or after `from_us` from which the cluster stayed converged (one writable member,
/// every other member streaming) for at least `stable_us`, judged at every sample's end. `None` when it
/// never did within the samples.
pub fn converged_at(
    samples: &[Sample],
    members: &[String],
    from_us: Micros,
    stable_us: Micros,
) -> Option<Micros> {
    let mut instants: Vec<Micros> = samples
        .iter()
        .map(|s| s.end_us)
        .filter(|&t| t >= from_us)
        .collect();
    instants.sort_unstable();
    instants.dedup();
    let mut since: Option<Micros> = None;
    let mut primary: Option<String> = None;
    for t in instants {
        let shape = shape_at(samples, members, t);
        let now_primary = shape.writable.first().cloned();
        if shape.is_converged() && (since.is_none() || now_primary == primary) {
            let start = *since.get_or_insert(t);
            primary = now_primary;
            if t - start >= stable_us {
                return Some(start);
            }
        } else {
            since = None;
            primary = None;
        }
    }
    None
}

/// How long after `fault_us` a member other than the last one to accept a write before it first accepted
/// a write (the takeover). `None` when nobody wrote before the fault, or nobody else after it.
pub fn takeover_after(samples: &[Sample], fault_us: Micros) -> Option<Micros> {
    let old = samples
        .iter()
        .filter_map(|s| Some((s.writable_at()?, member_of(&s.stream))))
        .filter(|(t, _)| *t <= fault_us)
        .max_by_key(|(t, _)| *t)?
        .1;
    samples
        .iter()
        .filter(|s| member_of(&s.stream) != old)
        .filter_map(Sample::writable_at)
        .filter(|&t| t >= fault_us)
        .min()
        .map(|t| t - fault_us)
}

#[cfg(test)]
mod tests {
    use super::{super::test_samples::*, *};

    #[test]
    fn convergence_needs_one_writer_and_every_replica_streaming_for_the_window() {
        let m = members(3);
        let mut samples = every("pg-0@a", 0, 5000, "w");
        samples.extend(every("pg-1@b", 0, 5000, "r"));
        // pg-2 is down until 2 s, then streams.
        samples.extend(every("pg-2@c", 0, 2000, "down"));
        samples.extend(every("pg-2@c", 2000, 5000, "r"));
        let at = converged_at(&samples, &m, 0, 1_000_000).expect("converges");
        assert!((2_000_000..=2_100_000).contains(&at), "converged at {at}");
        assert_eq!(
            converged_at(&samples, &m, 0, 4_000_000),
            None,
            "not stable for 4 s within the samples"
        );
    }

    #[test]
    fn a_change_of_primary_restarts_the_stable_window() {
        let m = members(2);
        let mut samples = every("pg-0@a", 0, 1000, "w");
        samples.extend(every("pg-0@a", 1000, 4000, "r"));
        samples.extend(every("pg-1@b", 0, 1000, "r"));
        samples.extend(every("pg-1@b", 1000, 4000, "w"));
        let at = converged_at(&samples, &m, 0, 1_500_000).expect("converges");
        assert!(
            at >= 1_000_000,
            "the window restarts when pg-1 takes over: {at}"
        );
    }

    #[test]
    fn a_member_without_fresh_samples_is_not_converged() {
        let m = members(2);
        let mut samples = every("pg-0@a", 0, 5000, "w");
        samples.extend(every("pg-1@b", 0, 500, "r"));
        assert_eq!(
            converged_at(&samples, &m, 0, 1_000_000),
            Some(2_000),
            "converged at the start only while fresh"
        );
        assert_eq!(converged_at(&samples, &m, 1_000_000, 1_000_000), None);
        let shape = shape_at(&samples, &m, 4_000_000);
        assert_eq!(shape.other, vec!["pg-1".to_string()]);
    }

    #[test]
    fn two_writable_members_are_not_converged() {
        let shape = shape_at(
            &[s("pg-0@a", 0, "w"), s("pg-1@b", 0, "w")],
            &members(2),
            10_000,
        );
        assert_eq!(shape.writable.len(), 2);
        assert!(!shape.is_converged());
    }

    #[test]
    fn the_takeover_is_the_first_write_by_another_member_after_the_fault() {
        let mut samples = every("pg-0@a", 0, 1000, "w");
        samples.extend(every("pg-0@a", 1000, 3000, "down"));
        samples.extend(every("pg-1@b", 0, 1500, "r"));
        samples.extend(every("pg-1@b", 1500, 3000, "w"));
        samples.extend(every("pg-2@c", 0, 3000, "r"));
        // pg-0 last wrote at 901 ms; pg-1's first write after the fault at 950 ms ran at 1501 ms.
        assert_eq!(takeover_after(&samples, 950_000), Some(551_000));
        // At 2 s pg-1 is the last writer; nobody else writes after.
        assert_eq!(takeover_after(&samples, 2_000_000), None);
        // Nobody wrote before: no takeover to measure.
        assert_eq!(takeover_after(&samples[10..], 0), None);
    }
}
