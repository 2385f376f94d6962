//! What the writer saw: acknowledged writes, the ones the final primary lost, the spans without an
//! acknowledgement, when writes through `-rw` resumed after the heal, and how long a primary served that
//! `-rw` did not reach. Pure.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::{Micros, shape_at};
use crate::checker::probe::Sample;

/// An acknowledged write: the writer saw its commit succeed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    pub id: u64,
    /// When the acknowledgement arrived.
    pub at_us: Micros,
    /// The server address that acknowledged it (`inet_server_addr()`), i.e. the pod behind `-rw`.
    pub server: String,
}

/// Acknowledged ids that the final primary does not hold, in id order.
pub fn lost_writes(acks: &[Ack], final_ids: &BTreeSet<u64>) -> Vec<u64> {
    let mut lost: Vec<u64> = acks
        .iter()
        .map(|a| a.id)
        .filter(|id| !final_ids.contains(id))
        .collect();
    lost.sort_unstable();
    lost.dedup();
    lost
}

/// The longest span without an acknowledged write that starts at or after `from_us` (the span from
/// `from_us` to the first acknowledgement counts too), with where it started.
pub fn longest_write_gap(
    acks: &[Ack],
    from_us: Micros,
    until_us: Micros,
) -> Option<(Micros, Micros)> {
    let mut times: Vec<Micros> = acks
        .iter()
        .map(|a| a.at_us)
        .filter(|&t| t >= from_us && t <= until_us)
        .collect();
    times.sort_unstable();
    let mut prev = from_us;
    let mut best: Option<(Micros, Micros)> = None;
    for t in times {
        if best.is_none_or(|(_, gap)| t - prev > gap) {
            best = Some((prev, t - prev));
        }
        prev = t;
    }
    best
}

/// How long after `from_us` the first write through `-rw` at or after it was acknowledged (0 when writes
/// never stopped), if one was.
pub fn resumed_after(acks: &[Ack], from_us: Micros) -> Option<Micros> {
    acks.iter()
        .map(|a| a.at_us)
        .filter(|&t| t >= from_us)
        .min()
        .map(|t| t - from_us)
}

/// A span in which one member accepted writes throughout (as the probes saw it) while no write through
/// `-rw` was acknowledged: a primary serving that the application could not reach.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unreachable {
    pub member: String,
    pub from_us: Micros,
    pub to_us: Micros,
}

/// The longest [`Unreachable`] span in `[from_us, until_us]` (spans that began earlier count from
/// `from_us`; `until_us` is when the writer stopped), judged at every sample's end. `None` when there is
/// none.
pub fn unreachable_primary(
    samples: &[Sample],
    members: &[String],
    acks: &[Ack],
    from_us: Micros,
    until_us: Micros,
) -> Option<Unreachable> {
    let mut instants: Vec<Micros> = samples
        .iter()
        .map(|s| s.end_us)
        .filter(|&t| t <= until_us)
        .collect();
    instants.sort_unstable();
    instants.dedup();
    let mut acked: Vec<Micros> = acks.iter().map(|a| a.at_us).collect();
    acked.sort_unstable();
    // The member writable alone since when, and the start of the span open at the previous instant.
    let mut alone: Option<(String, Micros)> = None;
    let mut open: Option<Micros> = None;
    let mut longest: Option<Unreachable> = None;
    let mut keep = |member: &str, from: Micros, to: Micros| {
        if longest
            .as_ref()
            .is_none_or(|u| to - from > u.to_us - u.from_us)
        {
            longest = Some(Unreachable {
                member: member.to_owned(),
                from_us: from,
                to_us: to,
            });
        }
    };
    for t in instants {
        let shape = shape_at(samples, members, t);
        let [m] = shape.writable.as_slice() else {
            alone = None;
            open = None;
            continue;
        };
        let since = match &alone {
            Some((prev, since)) if prev == m => *since,
            _ => {
                open = None;
                t
            }
        };
        alone = Some((m.clone(), since));
        if t < from_us {
            continue;
        }
        let last_ack = acked[..acked.partition_point(|&a| a <= t)].last().copied();
        let start = since.max(from_us).max(last_ack.unwrap_or(Micros::MIN));
        // An acknowledgement since the previous instant ended the span that was open there.
        if let (Some(was), Some(ack)) = (open, last_ack)
            && start > was
        {
            keep(m, was, ack);
        }
        keep(m, start, t);
        open = Some(start);
    }
    longest
}

#[cfg(test)]
mod tests {
    use super::{super::test_samples::*, *};

    #[test]
    fn lost_writes_are_the_acknowledged_ids_missing_at_the_end() {
        let ack = |id| Ack {
            id,
            at_us: id as i64,
            server: "10.244.1.2".into(),
        };
        let acks = vec![ack(1), ack(2), ack(3), ack(5)];
        let final_ids: BTreeSet<u64> = [1, 3, 4].into_iter().collect();
        assert_eq!(
            lost_writes(&acks, &final_ids),
            vec![2, 5],
            "4 was never acknowledged: not lost"
        );
        assert!(lost_writes(&acks, &[1, 2, 3, 5].into_iter().collect()).is_empty());
    }

    #[test]
    fn longest_gap_counts_from_the_fault() {
        let ack = |ms: i64| Ack {
            id: ms as u64,
            at_us: ms * 1000,
            server: String::new(),
        };
        let acks = vec![ack(0), ack(100), ack(1_000), ack(4_000), ack(4_100)];
        assert_eq!(
            longest_write_gap(&acks, 500_000, 5_000_000),
            Some((1_000_000, 3_000_000))
        );
        assert_eq!(
            longest_write_gap(&acks, 3_000_000, 5_000_000),
            Some((3_000_000, 1_000_000))
        );
        assert_eq!(longest_write_gap(&acks, 4_200_000, 5_000_000), None);
    }

    fn acks_every_100ms(from_ms: i64, to_ms: i64) -> Vec<Ack> {
        (from_ms..to_ms)
            .step_by(100)
            .map(|ms| Ack {
                id: ms as u64,
                at_us: ms * 1000,
                server: String::new(),
            })
            .collect()
    }

    #[test]
    fn writes_resume_from_the_first_acknowledgement_after_the_heal() {
        let acks = acks_every_100ms(0, 1000)
            .into_iter()
            .chain(acks_every_100ms(5000, 6000))
            .collect::<Vec<_>>();
        assert_eq!(resumed_after(&acks, 2_000_000), Some(3_000_000));
        assert_eq!(resumed_after(&acks, 500_000), Some(0));
        assert_eq!(resumed_after(&acks, 7_000_000), None);
    }

    #[test]
    fn a_primary_that_serves_while_rw_acknowledges_nothing_is_unreachable() {
        // Issue 13: after the heal at 1 s pg-0 accepts writes again, but writes through -rw resume only
        // at 28 s.
        let m = members(2);
        let mut samples = every("pg-0@a", 0, 30_000, "w");
        samples.extend(every("pg-1@b", 0, 30_000, "r"));
        let mut acks = acks_every_100ms(0, 500);
        acks.extend(acks_every_100ms(28_000, 30_000));
        let u = unreachable_primary(&samples, &m, &acks, 1_000_000, 30_000_000).expect("a span");
        assert_eq!(u.member, "pg-0");
        assert_eq!(u.from_us, 1_000_000, "counted from the heal");
        assert!(
            (27_000_000..27_100_000).contains(&(u.to_us - u.from_us)),
            "{u:?}"
        );
        // With writes acknowledged throughout, the longest span is one sample period at most.
        let flowing = acks_every_100ms(0, 30_000);
        let u = unreachable_primary(&samples, &m, &flowing, 1_000_000, 30_000_000).expect("a span");
        assert!(u.to_us - u.from_us <= 100_000, "{u:?}");
        // Nobody writable: nothing unreachable (that is a failover, not a routing gap).
        let replicas = every("pg-0@a", 0, 5000, "r");
        assert_eq!(unreachable_primary(&replicas, &m, &[], 0, 5_000_000), None);
    }

    #[test]
    fn a_new_primary_restarts_the_span() {
        let m = members(2);
        let mut samples = every("pg-0@a", 0, 3000, "w");
        samples.extend(every("pg-0@a", 3000, 10_000, "down"));
        samples.extend(every("pg-1@b", 0, 5000, "r"));
        samples.extend(every("pg-1@b", 5000, 10_000, "w"));
        let mut acks = acks_every_100ms(0, 3000);
        acks.extend(acks_every_100ms(6000, 10_000));
        let u = unreachable_primary(&samples, &m, &acks, 0, 10_000_000).expect("a span");
        // pg-0 is acknowledged until it goes down; pg-1 serves from 5.0 s, -rw reaches it at 6 s.
        assert_eq!(u.member, "pg-1");
        assert!(
            (900_000..1_000_000).contains(&(u.to_us - u.from_us)),
            "{u:?}"
        );
    }
}
