//! Split brain as the probes saw it: each probe stream's runs of consecutive writable observations, and
//! every span where runs of two members intersect. Pure.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Event, Micros};
use crate::checker::probe::Sample;

/// A span during which two members were both observed accepting writes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Overlap {
    /// The two probe streams (`member@pod-uid`), in name order.
    pub a: String,
    pub b: String,
    pub from_us: Micros,
    pub to_us: Micros,
}

/// A maximal run of consecutive writable observations of one probe stream: the member accepted a write
/// at `from_us` and at `to_us` and was never seen refusing one in between.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WritableRun {
    pub stream: String,
    pub from_us: Micros,
    pub to_us: Micros,
}

/// The runs of each probe stream. A run is delimited by the instants the server executed the probe's
/// write (its `clock_timestamp()`), so it claims only what was observed: between two successful writes
/// with no refusal in between, the member stayed writable. A new pod incarnation is a new stream, so a
/// pod that is deleted and comes back as primary does not bridge the time it was gone.
pub fn writable_runs(samples: &[Sample]) -> Vec<WritableRun> {
    let mut by_stream: BTreeMap<&str, Vec<&Sample>> = BTreeMap::new();
    for s in samples {
        by_stream.entry(&s.stream).or_default().push(s);
    }
    let mut runs = Vec::new();
    for (stream, mut list) in by_stream {
        list.sort_by_key(|s| s.t_us);
        let mut open: Option<WritableRun> = None;
        for s in list {
            match (s.writable_at(), open.as_mut()) {
                (Some(at), Some(run)) => run.to_us = run.to_us.max(at),
                (Some(at), None) => {
                    open = Some(WritableRun {
                        stream: stream.to_owned(),
                        from_us: at,
                        to_us: at,
                    });
                }
                (None, _) => runs.extend(open.take()),
            }
        }
        runs.extend(open);
    }
    runs
}

/// Every span where runs of two different members intersect. Two streams of the same member (an old and
/// a new pod incarnation) are not compared: they cannot both hold the member's data directory.
pub fn overlaps(samples: &[Sample]) -> Vec<Overlap> {
    let runs = writable_runs(samples);
    let mut found = Vec::new();
    for (i, x) in runs.iter().enumerate() {
        for y in &runs[i + 1..] {
            if member_of(&x.stream) == member_of(&y.stream) {
                continue;
            }
            let from_us = x.from_us.max(y.from_us);
            let to_us = x.to_us.min(y.to_us);
            if from_us <= to_us {
                let (a, b) = if x.stream <= y.stream { (x, y) } else { (y, x) };
                found.push(Overlap {
                    a: a.stream.clone(),
                    b: b.stream.clone(),
                    from_us,
                    to_us,
                });
            }
        }
    }
    found.sort_by_key(|o| o.from_us);
    found
}

/// The member name of a probe stream `member@pod-uid`.
pub fn member_of(stream: &str) -> &str {
    stream.split_once('@').map_or(stream, |(m, _)| m)
}

/// Timeline events derived from the samples: when each stream started and stopped accepting writes.
pub fn writable_events(samples: &[Sample]) -> Vec<Event> {
    let mut events = Vec::new();
    for run in writable_runs(samples) {
        events.push(Event {
            at_us: run.from_us,
            what: format!("{} accepts writes", run.stream),
        });
        events.push(Event {
            at_us: run.to_us,
            what: format!("{} last accepted a write", run.stream),
        });
    }
    events
}

#[cfg(test)]
mod tests {
    use super::{super::test_samples::*, *};

    #[test]
    fn clean_failover_has_no_overlap() {
        let mut samples = every("pg-0@a", 0, 1000, "w");
        samples.extend(every("pg-0@a", 1000, 3000, "down"));
        samples.extend(every("pg-1@b", 0, 1500, "r"));
        samples.extend(every("pg-1@b", 1500, 3000, "w"));
        assert!(overlaps(&samples).is_empty());
        let runs = writable_runs(&samples);
        assert_eq!(runs.len(), 2);
        assert_eq!(
            runs[0],
            WritableRun {
                stream: "pg-0@a".into(),
                from_us: 1_000,
                to_us: 901_000
            }
        );
    }

    #[test]
    fn two_writable_members_are_found_with_their_span() {
        let mut samples = every("pg-0@a", 0, 2000, "w");
        samples.extend(every("pg-1@b", 0, 1500, "r"));
        samples.extend(every("pg-1@b", 1500, 3000, "w"));
        let found = overlaps(&samples);
        assert_eq!(found.len(), 1);
        let o = &found[0];
        assert_eq!((o.a.as_str(), o.b.as_str()), ("pg-0@a", "pg-1@b"));
        // pg-1 first wrote at 1501 ms, pg-0 last wrote at 1901 ms.
        assert_eq!((o.from_us, o.to_us), (1_501_000, 1_901_000));
    }

    #[test]
    fn a_single_shared_instant_counts() {
        let samples = vec![
            s("pg-0@a", 100, "w"),
            s("pg-0@a", 300, "w"),
            s("pg-1@b", 200, "w"),
        ];
        assert_eq!(overlaps(&samples).len(), 1);
    }

    #[test]
    fn a_refusal_in_between_breaks_the_run() {
        // pg-0 was read-only (fenced) at 200 ms: its writes at 100 and 300 ms do not bridge pg-1's at 200.
        let samples = vec![
            s("pg-0@a", 100, "w"),
            s("pg-0@a", 200, "ro"),
            s("pg-0@a", 300, "w"),
            s("pg-1@b", 250, "w"),
        ];
        assert!(overlaps(&samples).is_empty());
    }

    #[test]
    fn a_new_pod_incarnation_does_not_bridge_its_absence() {
        // pg-0's pod was deleted after 100 ms and its new pod became primary at 900 ms; pg-1 was primary in
        // between. Per stream there is no overlap; across pg-0's two streams no comparison is made.
        let samples = vec![
            s("pg-0@old", 100, "w"),
            s("pg-1@b", 300, "w"),
            s("pg-1@b", 500, "w"),
            s("pg-1@b", 700, "down"),
            s("pg-0@new", 900, "w"),
        ];
        assert!(overlaps(&samples).is_empty());
    }

    #[test]
    fn samples_out_of_order_are_sorted_per_stream() {
        let mut samples = vec![
            s("pg-0@a", 300, "w"),
            s("pg-0@a", 100, "w"),
            s("pg-0@a", 200, "down"),
        ];
        samples.push(s("pg-1@b", 150, "w"));
        assert!(
            overlaps(&samples).is_empty(),
            "pg-0 refused at 200 ms: no run spans 100..300 ms"
        );
    }
}
