//! L3: who may try to take the Lease, and in which order (pure).

use std::{cmp::Reverse, collections::BTreeMap};

use pgpilot_crds::contract::{MemberTags, ReplicationMode};

use super::{Ineligible, LeaseRecord, Observation};

/// The parts of the cluster configuration the rules read.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Policy {
    pub mode: ReplicationMode,
    pub maximum_lag_on_failover: u64,
    pub failsafe: bool,
    pub paused: bool,
    pub tags: BTreeMap<String, MemberTags>,
}

impl Policy {
    fn tags(&self, member: &str) -> MemberTags {
        self.tags.get(member).cloned().unwrap_or_default()
    }

    /// [`MemberTags::may_fail_over`] of `member`.
    pub fn may_fail_over(&self, member: &str) -> bool {
        self.tags(member).may_fail_over()
    }

    fn priority(&self, member: &str) -> u32 {
        self.tags(member).priority()
    }
}

/// Bootstrap only into a cluster that never had data: this member's PGDATA is empty, the Lease records
/// no system identifier (set once the first `initdb` succeeded, so a deleted and recreated Lease never
/// lets an empty member create a second cluster), and either the Lease was never held (transitions 0)
/// or every peer answered and none has data. A holder that died half-way through initdb therefore
/// bootstraps again instead of waiting forever.
pub(super) fn may_bootstrap(obs: &Observation, record: &LeaseRecord) -> bool {
    if !obs.member || obs.local.initialized || record.system_id.is_some() {
        return false;
    }
    let peer_has_data = obs
        .peers
        .iter()
        .any(|p| p.report.as_ref().is_some_and(|r| r.initialized));
    let all_answered = obs.peers.iter().all(|p| p.report.is_some());
    !peer_has_data && (record.transitions == 0 || all_answered)
}

/// The order of candidates: most WAL, then highest failover priority, then not the member the Lease
/// still names (a restarted former holder lets an equal replica win, so a container crash moves the
/// primary), then the smaller name. Total, so two equal replicas never both think they are best.
fn rank<'a>(policy: &Policy, record: &LeaseRecord, name: &'a str, wal: u64) -> impl Ord + use<'a> {
    (
        wal,
        policy.priority(name),
        record.holder() != Some(name),
        Reverse(name),
    )
}

/// L3: may this member try to take the Lease? It must be healthy, allowed to fail over, synchronous in
/// the sync modes (recorded, or the holder the Lease still names), and — by what the reachable peers
/// report — no primary may still run elsewhere, none may be on a newer timeline, no eligible peer may
/// rank above it ([`rank`]), and it must be within `maximumLagOnFailover` of the best position known:
/// a reachable peer's, the primary's as the Lease recorded it, or as the primary last reported it to
/// this member. Unreachable peers cannot object: that is what the Lease's own rules are for.
pub fn eligibility(obs: &Observation, record: &LeaseRecord) -> Result<(), Ineligible> {
    objections(obs, record)
        .into_iter()
        .next()
        .map_or(Ok(()), Err)
}

/// Every reason of [`eligibility`] that holds, in the order it checks them (the first is its answer).
/// A manual failover waives some of them ([`waived_by_manual`]), never all.
pub fn objections(obs: &Observation, record: &LeaseRecord) -> Vec<Ineligible> {
    let me = obs.me.as_str();
    let policy = &obs.policy;
    let (true, Some(my_wal)) = (obs.local.healthy, obs.local.wal) else {
        return vec![Ineligible::Unhealthy];
    };
    let mut found = Vec::new();
    if !obs.member {
        found.push(Ineligible::NotAMember);
    }
    if !policy.may_fail_over(me) {
        found.push(Ineligible::NoFailover);
    }
    // The members recorded as having every acknowledged commit — and the holder the record names, whose
    // own data is the reference (a restarted primary may reclaim its Lease even if no standby was
    // recorded while it ran).
    let synchronous = |name: &str| {
        record.holder() == Some(name)
            || record
                .sync_members
                .as_ref()
                .is_some_and(|s| s.iter().any(|m| m == name))
    };
    let sync_mode = policy.mode != ReplicationMode::Async;
    if sync_mode && !synchronous(me) {
        found.push(Ineligible::NotSynchronous);
    }
    let my_timeline = obs.local.timeline.unwrap_or(0);
    let my_rank = rank(policy, record, me, my_wal);
    // The primary's position as last known — the Lease's record of it (written with each renewal) and
    // what its REST API reported to this member — counts like a reachable peer's: a sole replica, or
    // replicas all equally behind, cannot hide their lag.
    let mut best_wal = my_wal
        .max(record.wal_position.unwrap_or(0))
        .max(obs.primary_wal_seen.unwrap_or(0));
    for peer in &obs.peers {
        let Some(report) = &peer.report else { continue };
        if report.primary && report.healthy {
            found.push(Ineligible::PrimaryRunning(peer.name.clone()));
        }
        if report.timeline.unwrap_or(0) > my_timeline {
            found.push(Ineligible::OlderTimeline(peer.name.clone()));
        }
        let Some(wal) = report.wal.filter(|_| report.healthy) else {
            continue;
        };
        best_wal = best_wal.max(wal);
        let competes = policy.may_fail_over(&peer.name) && (!sync_mode || synchronous(&peer.name));
        if competes && rank(policy, record, &peer.name, wal) > my_rank {
            found.push(Ineligible::PeerAhead(peer.name.clone()));
        }
    }
    let behind = best_wal - my_wal;
    if behind > policy.maximum_lag_on_failover {
        found.push(Ineligible::TooFarBehind { behind });
    }
    found
}

/// Which objections a manual failover to this member (`POST /failover`) sets aside: that another member
/// ranks higher always (the user chose); with `force`, also what costs acknowledged or replicated
/// writes (not synchronous, an older timeline, too far behind, not streamed recently). Never an
/// unhealthy member, a `noFailover` one, a non-member, or one while another primary runs.
pub fn waived_by_manual(why: &Ineligible, force: bool) -> bool {
    match why {
        Ineligible::PeerAhead(_) => true,
        Ineligible::NotSynchronous
        | Ineligible::OlderTimeline(_)
        | Ineligible::TooFarBehind { .. }
        | Ineligible::NotStreamedRecently => force,
        Ineligible::Unhealthy
        | Ineligible::NoFailover
        | Ineligible::NotAMember
        | Ineligible::PrimaryRunning(_) => false,
    }
}
