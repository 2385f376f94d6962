//! The verdict of one fault scenario, computed from what was recorded. Pure: no IO, no clock.
//!
//! Inputs are the probes' [`Sample`]s (one stream per pod incarnation), the writer's acknowledged and
//! in-doubt ids, the ids the final primary holds, and the fault [`Timeline`]. Outputs are the three
//! properties a user relies on — acknowledged writes kept, never two writable members at once, converged
//! again in time — as a [`Verdict`] that prints as a table and serialises to JSON.
//!
//! Time is Unix microseconds on the host clock ([`crate::clock`]).
//!
//! The parts: [`runs`] (split brain: writable runs and their overlaps), [`shape`] (who is writable or
//! streaming at an instant; convergence), [`writes`] (acknowledged, lost, gaps), [`timeline`]; this module
//! puts them together into the [`Verdict`] and its table.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
};

use serde::{Deserialize, Serialize};

pub mod runs;
pub mod shape;
#[cfg(test)]
mod test_samples;
pub mod timeline;
pub mod writes;

pub use runs::{Overlap, WritableRun, member_of, overlaps, writable_events, writable_runs};
pub use shape::{FRESH_US, Shape, converged_at, shape_at, takeover_after};
pub use timeline::{Event, Timeline};
pub use writes::{
    Ack, Unreachable, longest_write_gap, lost_writes, resumed_after, unreachable_primary,
};

use super::probe::Sample;
pub use crate::clock::Micros;
use crate::cluster::LeaseRecord;

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
    /// When the writer was stopped (its silence after that means nothing).
    pub writes_until_us: Micros,
    pub end_us: Micros,
    /// Each member's last HA decision (`GET /patroni` → `pgpilot.last_decision`), or why it is unknown.
    pub last_decisions: BTreeMap<String, String>,
    /// The Lease once the cluster had converged after the heal, if it could be read.
    pub final_lease: Option<LeaseRecord>,
    /// What this scenario asserts beyond the expectations.
    pub requirements: Vec<Requirement>,
}

/// Something a scenario asserts beyond its [`Expectations`]; a broken one is a failure of the verdict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Requirement {
    /// Writes never unavailable for longer than this after the fault (failsafe mode promises a primary
    /// that keeps serving while the apiserver is gone).
    WriteGapAtMost(Micros),
    /// This member is the final primary: the primary did not move again after the takeover (the old one
    /// rejoined as a replica).
    FinalPrimary(String),
    /// The Lease at the end: held by `holder` after exactly `transitions` transitions (one takeover, no
    /// more).
    FinalLease { holder: String, transitions: i32 },
    /// Another member accepted writes within this long of the fault (the Lease was released, not left to
    /// expire: L4, L8).
    TakeoverWithin(Micros),
}

/// What a scenario must show.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Expectations {
    /// Acknowledged writes that may be lost: `Some(0)` in synchronous mode; `None` only reports the loss
    /// (asynchronous mode, bounded by `maximumLagOnFailover`).
    pub max_lost: Option<u64>,
    /// Convergence, and writes through `-rw` again, must come within this long of the heal.
    pub converge_within_us: Micros,
    /// After the heal, a member may accept writes for at most this long while no write through `-rw` is
    /// acknowledged (the role label, the EndpointSlice, kube-proxy and the client's reconnect; issue 13
    /// saw a primary serve for 27 s with no `-rw` endpoint).
    pub rw_unreachable_within_us: Micros,
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
    /// Fault → a member other than the one writable at the fault accepts writes (probes).
    pub takeover_us: Option<Micros>,
    /// Heal → the first acknowledged write through `-rw` at or after it (0 when writes never stopped).
    pub rw_resumed_us: Option<Micros>,
    /// After the heal, the longest span in which one member accepted writes and `-rw` acknowledged none.
    pub rw_unreachable: Option<Unreachable>,
    pub final_lease: Option<LeaseRecord>,
    pub requirements: Vec<Requirement>,
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
        let takeover_us = takeover_after(&rec.samples, rec.fault_at_us);
        let rw_resumed_us = resumed_after(&rec.acks, rec.healed_at_us);
        let rw_unreachable = unreachable_primary(
            &rec.samples,
            &rec.members,
            &rec.acks,
            rec.healed_at_us,
            rec.writes_until_us,
        );
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
        match rw_resumed_us {
            None => failures.push("writes through -rw never resumed after the heal".into()),
            Some(t) if t > expect.converge_within_us => failures.push(format!(
                "writes through -rw resumed {} ms after the heal, bound {} ms",
                t / 1000,
                expect.converge_within_us / 1000
            )),
            Some(_) => {}
        }
        if let Some(u) = &rw_unreachable
            && u.to_us - u.from_us > expect.rw_unreachable_within_us
        {
            failures.push(format!(
                "{} accepted writes for {} ms (from {} ms after the heal) while no write through -rw \
                 was acknowledged, allowed {} ms",
                u.member,
                (u.to_us - u.from_us) / 1000,
                (u.from_us - rec.healed_at_us) / 1000,
                expect.rw_unreachable_within_us / 1000
            ));
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
        let mut verdict = Self {
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
            takeover_us,
            rw_resumed_us,
            rw_unreachable,
            final_lease: rec.final_lease.clone(),
            requirements: rec.requirements.clone(),
            timeline,
            last_decisions: rec.last_decisions.clone(),
            failures,
        };
        for r in &rec.requirements {
            if let Some(failure) = verdict.broken(r) {
                verdict.failures.push(failure);
            }
        }
        verdict
    }

    /// How `r` is broken, in words; `None` when it holds.
    fn broken(&self, r: &Requirement) -> Option<String> {
        let ms = |us: Micros| us / 1000;
        match r {
            Requirement::WriteGapAtMost(max) => match self.longest_write_gap_us {
                Some(gap) if gap > *max => Some(format!(
                    "writes unavailable for {} ms, allowed {} ms",
                    ms(gap),
                    ms(*max)
                )),
                None => Some("no acknowledged write after the fault".into()),
                Some(_) => None,
            },
            Requirement::FinalPrimary(want) => {
                (self.final_primary.as_ref() != Some(want)).then(|| {
                    format!(
                        "the final primary is {}, not {want}: the primary moved again",
                        self.final_primary.as_deref().unwrap_or("nobody")
                    )
                })
            }
            Requirement::FinalLease {
                holder,
                transitions,
            } => match &self.final_lease {
                None => Some("the Lease could not be read at the end".into()),
                Some(l) if l.holder.as_ref() != Some(holder) || l.transitions != *transitions => {
                    Some(format!(
                        "the Lease ends held by {} after {} transitions, expected {holder} after {transitions}",
                        l.holder.as_deref().unwrap_or("nobody"),
                        l.transitions
                    ))
                }
                Some(_) => None,
            },
            Requirement::TakeoverWithin(max) => match self.takeover_us {
                Some(t) if t > *max => Some(format!(
                    "another member accepted writes {} ms after the fault, allowed {} ms",
                    ms(t),
                    ms(*max)
                )),
                None => Some("no other member accepted writes after the fault".into()),
                Some(_) => None,
            },
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
            ("fault -> another member writable", ms(self.takeover_us)),
            (
                "heal -> writes via -rw resumed",
                format!(
                    "{} (bound {})",
                    ms(self.rw_resumed_us),
                    ms(Some(self.expectations.converge_within_us))
                ),
            ),
            (
                "primary serving, -rw not (after heal)",
                format!(
                    "{} (bound {})",
                    ms(self.rw_unreachable.as_ref().map(|u| u.to_us - u.from_us)),
                    ms(Some(self.expectations.rw_unreachable_within_us))
                ),
            ),
            ("longest write gap", ms(self.longest_write_gap_us)),
            (
                "final Lease",
                self.final_lease.as_ref().map_or_else(
                    || "-".to_owned(),
                    |l| {
                        format!(
                            "holder {}, transitions {}",
                            l.holder.as_deref().unwrap_or("-"),
                            l.transitions
                        )
                    },
                ),
            ),
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
mod tests;
