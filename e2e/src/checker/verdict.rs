//! The verdict of one fault scenario, computed from what was recorded. Pure: no IO, no clock.
//!
//! Inputs are the probes' [`Sample`]s (one stream per pod incarnation), the writer's acknowledged and
//! in-doubt ids, the ids the final primary holds, and the fault [`Timeline`]. Outputs are the three
//! properties a user relies on — acknowledged writes kept, never two writable members at once, converged
//! again in time — as a [`Verdict`] that prints as a table and serialises to JSON.
//!
//! Time is Unix microseconds on the host clock. Every pod of the local cluster runs on this one kernel, so
//! the probes' timestamps and the servers' `clock_timestamp()` are directly comparable.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
};

use serde::{Deserialize, Serialize};

use super::probe::Sample;
pub use crate::clock::Micros;

/// One thing that happened during a scenario: a fault injected or healed, a Lease holder change, a
/// writable member appearing … in the order they happened.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub at_us: Micros,
    pub what: String,
}

/// The fault timeline of a scenario.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Timeline {
    pub events: Vec<Event>,
}

impl Timeline {
    pub fn push(&mut self, at_us: Micros, what: impl Into<String>) {
        self.events.push(Event {
            at_us,
            what: what.into(),
        });
    }

    /// The events sorted by time (stable: equal times keep their order).
    pub fn sorted(&self) -> Vec<Event> {
        let mut events = self.events.clone();
        events.sort_by_key(|e| e.at_us);
        events
    }
}

/// An acknowledged write: the writer saw its commit succeed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    pub id: u64,
    /// When the acknowledgement arrived.
    pub at_us: Micros,
    /// The server address that acknowledged it (`inet_server_addr()`), i.e. the pod behind `-rw`.
    pub server: String,
}

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

/// Everything recorded in one scenario, as the verdict needs it.
#[derive(Clone, Debug, Default)]
pub struct Recording {
    pub scenario: String,
    /// `sync` or `async`.
    pub mode: String,
    pub members: Vec<String>,
    pub samples: Vec<Sample>,
    pub acks: Vec<Ack>,
    /// Ids whose outcome the writer never learned (error or timeout after sending the commit).
    pub in_doubt: Vec<u64>,
    pub final_ids: BTreeSet<u64>,
    /// The member that holds `final_ids`.
    pub final_primary: Option<String>,
    pub timeline: Timeline,
    /// When the first fault was injected, and when the last one was healed.
    pub fault_at_us: Micros,
    pub healed_at_us: Micros,
    pub end_us: Micros,
    /// Each member's last HA decision (`GET /patroni` → `pgpilot.last_decision`), or why it is unknown.
    pub last_decisions: BTreeMap<String, String>,
}

/// What a scenario must show.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Expectations {
    /// Acknowledged writes that may be lost: `Some(0)` in synchronous mode; `None` only reports the loss
    /// (asynchronous mode, bounded by `maximumLagOnFailover`).
    pub max_lost: Option<u64>,
    /// Convergence must come within this long of the heal.
    pub converge_within_us: Micros,
}

/// The verdict of a scenario.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub scenario: String,
    pub mode: String,
    pub expectations: Expectations,
    pub acknowledged: usize,
    pub in_doubt: usize,
    /// Acknowledged ids missing from the final primary.
    pub lost: Vec<u64>,
    /// In-doubt ids that did make it (not a defect: the commit happened, its acknowledgement was lost).
    pub in_doubt_kept: usize,
    pub final_primary: Option<String>,
    /// Spans with two writable members.
    pub split_brain: Vec<Overlap>,
    /// Heal → converged (one primary, all replicas streaming), if it converged.
    pub converge_us: Option<Micros>,
    /// Fault → first acknowledged write after it, through the `-rw` Service.
    pub writes_resumed_us: Option<Micros>,
    /// The longest span without an acknowledged write after the fault.
    pub longest_write_gap_us: Option<Micros>,
    pub timeline: Vec<Event>,
    pub last_decisions: BTreeMap<String, String>,
    /// Each broken expectation, in words; empty when the scenario passed.
    pub failures: Vec<String>,
}

/// The stable window convergence must hold for before it counts.
pub const STABLE_US: Micros = 2_000_000;

impl Verdict {
    pub fn new(rec: &Recording, expect: Expectations) -> Self {
        // Without a final primary there is nothing to hold the ids against: the loss is unknown, not total.
        let lost = if rec.final_primary.is_some() {
            lost_writes(&rec.acks, &rec.final_ids)
        } else {
            Vec::new()
        };
        let split_brain = overlaps(&rec.samples);
        let converge_us = converged_at(&rec.samples, &rec.members, rec.healed_at_us, STABLE_US)
            .map(|t| t - rec.healed_at_us);
        let writes_resumed_us = rec
            .acks
            .iter()
            .map(|a| a.at_us)
            .filter(|&t| t >= rec.fault_at_us)
            .min()
            .map(|t| t - rec.fault_at_us);
        let longest_write_gap_us =
            longest_write_gap(&rec.acks, rec.fault_at_us, rec.end_us).map(|(_, g)| g);
        let mut timeline = rec.timeline.events.clone();
        timeline.extend(writable_events(&rec.samples));
        timeline.sort_by_key(|e| e.at_us);

        let mut failures = Vec::new();
        if !split_brain.is_empty() {
            let total: Micros = split_brain.iter().map(|o| o.to_us - o.from_us).sum();
            failures.push(format!(
                "{} span(s) with two writable members ({} ms in all)",
                split_brain.len(),
                total / 1000
            ));
        }
        if let Some(max) = expect.max_lost
            && lost.len() as u64 > max
        {
            failures.push(format!(
                "{} acknowledged write(s) lost (allowed: {max})",
                lost.len()
            ));
        }
        match converge_us {
            None => {
                failures.push("never converged to one primary with every replica streaming".into())
            }
            Some(t) if t > expect.converge_within_us => failures.push(format!(
                "converged after {} ms, bound {} ms",
                t / 1000,
                expect.converge_within_us / 1000
            )),
            Some(_) => {}
        }
        if rec.final_primary.is_none() {
            failures.push("no final primary to check acknowledged writes against".into());
        }
        if rec.acks.is_empty() {
            failures.push("the writer never got an acknowledged write".into());
        }
        let in_doubt_kept = rec
            .in_doubt
            .iter()
            .filter(|id| rec.final_ids.contains(id))
            .count();
        Self {
            scenario: rec.scenario.clone(),
            mode: rec.mode.clone(),
            expectations: expect,
            acknowledged: rec.acks.len(),
            in_doubt: rec.in_doubt.len(),
            lost,
            in_doubt_kept,
            final_primary: rec.final_primary.clone(),
            split_brain,
            converge_us,
            writes_resumed_us,
            longest_write_gap_us,
            timeline,
            last_decisions: rec.last_decisions.clone(),
            failures,
        }
    }

    /// Adds the expectation that writes were never unavailable for longer than `max_us` after the fault
    /// (failsafe mode promises a primary that keeps serving while the apiserver is gone).
    pub fn require_write_gap_at_most(&mut self, max_us: Micros) {
        match self.longest_write_gap_us {
            Some(gap) if gap > max_us => self.failures.push(format!(
                "writes unavailable for {} ms, allowed {} ms",
                gap / 1000,
                max_us / 1000
            )),
            None => self
                .failures
                .push("no acknowledged write after the fault".into()),
            Some(_) => {}
        }
    }

    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }

    /// The verdict as a table (and, when it failed, the timeline and the last HA decisions).
    pub fn table(&self) -> String {
        let ms = |v: Option<Micros>| {
            v.map_or_else(
                || "-".to_owned(),
                |us| format!("{:.0} ms", us as f64 / 1000.0),
            )
        };
        let lost = match (&self.final_primary, self.expectations.max_lost) {
            (None, _) => "unknown (no final primary)".to_owned(),
            (Some(_), Some(max)) => format!("{} (allowed {max})", self.lost.len()),
            (Some(_), None) => format!("{} (reported only)", self.lost.len()),
        };
        let rows = [
            ("scenario", format!("{} [{}]", self.scenario, self.mode)),
            (
                "verdict",
                if self.passed() {
                    "PASS".to_owned()
                } else {
                    "FAIL".to_owned()
                },
            ),
            ("acknowledged writes", self.acknowledged.to_string()),
            ("acknowledged writes lost", lost),
            (
                "in-doubt writes (kept)",
                format!("{} ({})", self.in_doubt, self.in_doubt_kept),
            ),
            (
                "final primary",
                self.final_primary.clone().unwrap_or_else(|| "-".into()),
            ),
            (
                "two writable members",
                format!("{} span(s)", self.split_brain.len()),
            ),
            (
                "converged after heal",
                format!(
                    "{} (bound {})",
                    ms(self.converge_us),
                    ms(Some(self.expectations.converge_within_us))
                ),
            ),
            ("fault -> writes resumed", ms(self.writes_resumed_us)),
            ("longest write gap", ms(self.longest_write_gap_us)),
        ];
        let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        let mut out = String::new();
        for (k, v) in rows {
            let _ = writeln!(out, "  {k:<width$}  {v}");
        }
        for o in &self.split_brain {
            let _ = writeln!(
                out,
                "  ! {} and {} writable together for {} ms",
                o.a,
                o.b,
                (o.to_us - o.from_us) / 1000
            );
        }
        if !self.lost.is_empty() {
            let shown: Vec<String> = self.lost.iter().take(20).map(u64::to_string).collect();
            let more = if self.lost.len() > 20 { " …" } else { "" };
            let _ = writeln!(out, "  lost ids: {}{more}", shown.join(", "));
        }
        if !self.passed() {
            for f in &self.failures {
                let _ = writeln!(out, "  FAILED: {f}");
            }
            out.push_str(&self.timeline_text());
            out.push_str("  last HA decisions:\n");
            for (member, decision) in &self.last_decisions {
                let _ = writeln!(out, "    {member}: {decision}");
            }
        }
        out
    }

    /// The timeline, relative to its first event.
    pub fn timeline_text(&self) -> String {
        let mut out = String::from("  timeline:\n");
        let t0 = self.timeline.first().map_or(0, |e| e.at_us);
        for e in &self.timeline {
            let _ = writeln!(
                out,
                "    +{:>9.3} s  {}",
                (e.at_us - t0) as f64 / 1e6,
                e.what
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sample of `stream` taken at `t` ms: writable (the write ran at `t`), a streaming replica, or down.
    fn s(stream: &str, t_ms: i64, state: &str) -> Sample {
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
    fn every(stream: &str, from: i64, to: i64, state: &str) -> Vec<Sample> {
        (from..to)
            .step_by(100)
            .map(|t| s(stream, t, state))
            .collect()
    }

    fn members(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("pg-{i}")).collect()
    }

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

    fn recording() -> Recording {
        let m = members(2);
        let mut samples = every("pg-0@a", 0, 1000, "w");
        samples.extend(every("pg-0@a", 1000, 6000, "r"));
        samples.extend(every("pg-1@b", 0, 1200, "r"));
        samples.extend(every("pg-1@b", 1200, 6000, "w"));
        let acks: Vec<Ack> = (0..50)
            .map(|i| Ack {
                id: i,
                at_us: i as i64 * 100_000,
                server: "x".into(),
            })
            .collect();
        let mut timeline = Timeline::default();
        timeline.push(900_000, "fault: kill pg-0");
        Recording {
            scenario: "kill-primary".into(),
            mode: "sync".into(),
            members: m,
            samples,
            acks,
            in_doubt: vec![50],
            final_ids: (0..50).collect(),
            final_primary: Some("pg-1".into()),
            timeline,
            fault_at_us: 900_000,
            healed_at_us: 900_000,
            end_us: 6_000_000,
            last_decisions: BTreeMap::new(),
        }
    }

    #[test]
    fn a_clean_recording_passes() {
        let v = Verdict::new(
            &recording(),
            Expectations {
                max_lost: Some(0),
                converge_within_us: 10_000_000,
            },
        );
        assert!(v.passed(), "{}", v.table());
        assert_eq!(
            v.converge_us.map(|t| t / 100_000),
            Some(3),
            "converged ~0.3 s after the fault"
        );
        assert_eq!(v.in_doubt_kept, 0);
        assert!(v.table().contains("PASS"));
        let json = serde_json::to_string(&v).unwrap();
        let back: Verdict = serde_json::from_str(&json).unwrap();
        assert_eq!(back, v);
    }

    #[test]
    fn each_broken_property_fails_the_verdict() {
        let expect = Expectations {
            max_lost: Some(0),
            converge_within_us: 10_000_000,
        };

        let mut lost = recording();
        lost.final_ids.remove(&7);
        let v = Verdict::new(&lost, expect);
        assert_eq!(v.lost, vec![7]);
        assert!(!v.passed());
        assert!(v.table().contains("lost ids: 7"), "{}", v.table());
        assert!(
            v.table().contains("fault: kill pg-0"),
            "a failing verdict prints the timeline"
        );
        // The same loss in async mode is reported, not failed.
        assert!(
            Verdict::new(
                &lost,
                Expectations {
                    max_lost: None,
                    ..expect
                }
            )
            .passed()
        );

        let mut split = recording();
        split.samples.extend(every("pg-0@a", 3000, 3500, "w"));
        split.samples.retain(|s| {
            !(s.stream == "pg-0@a" && (3000..3500).contains(&(s.t_us / 1000)) && !s.writable)
        });
        let v = Verdict::new(&split, expect);
        assert_eq!(v.split_brain.len(), 1, "{:?}", v.split_brain);
        assert!(!v.passed());

        let slow = Verdict::new(
            &recording(),
            Expectations {
                converge_within_us: 100_000,
                ..expect
            },
        );
        assert!(!slow.passed());
        assert!(
            slow.failures[0].contains("bound 100 ms"),
            "{:?}",
            slow.failures
        );

        let mut gap = Verdict::new(&recording(), expect);
        gap.require_write_gap_at_most(50_000);
        assert!(
            gap.failures
                .iter()
                .any(|f| f.starts_with("writes unavailable for")),
            "{:?}",
            gap.failures
        );
        let mut ok = Verdict::new(&recording(), expect);
        ok.require_write_gap_at_most(1_000_000);
        assert!(ok.passed(), "{:?}", ok.failures);

        let mut never = recording();
        never.samples.retain(|s| s.stream != "pg-1@b");
        never.final_primary = None;
        never.final_ids.clear();
        let v = Verdict::new(&never, expect);
        assert!(
            v.lost.is_empty(),
            "no final primary: the loss is unknown, not every id"
        );
        assert!(
            v.table().contains("unknown (no final primary)"),
            "{}",
            v.table()
        );
        assert!(v.failures.iter().any(|f| f.contains("no final primary")));
        assert!(
            Verdict::new(&never, expect)
                .failures
                .iter()
                .any(|f| f.contains("never converged"))
        );
    }
}
