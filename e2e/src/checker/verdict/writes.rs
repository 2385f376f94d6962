//! What the writer saw: acknowledged writes, the ones the final primary lost, and the spans without an
//! acknowledgement. Pure.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::Micros;

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
