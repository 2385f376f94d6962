//! Leader election over the cluster's Lease, split into a pure core and a thin IO shell.
//!
//! - This module is pure: [`decide`] maps an [`Observation`] (the Lease record as last read, this
//!   member's PostgreSQL, its peers as they answered over REST, the holder's pod as the kubelet reports
//!   it), the current instant and the [`Timings`] to one [`Decision`]. It reads no clock and does no IO,
//!   so every rule of DESIGN.md (L1–L9) is unit-tested below with injected instants.
//! - [`LeaseWatch`] is the only memory the rules need across loops: since when the record has been
//!   unchanged on the local monotonic clock (L2) and the holder's container at that moment (L8).
//! - [`lease`] is the IO shell: conditional reads/writes of the Lease object (L1).
//!
//! The HA loop (`crate::ha`) observes, calls [`decide`], and acts.

pub mod lease;

use std::{
    cmp::Reverse,
    collections::BTreeMap,
    time::{Duration, Instant},
};

use pgpilot_crds::contract::{HaTimings, MemberTags, ReplicationMode};

/// The three Lease timings as durations, checked against DESIGN.md L6 when built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timings {
    /// How long a record must stay unchanged before anyone else may take over (L2).
    pub lease_duration: Duration,
    /// How long the holder may go without a successful renewal before it fences itself (L5).
    pub renew_deadline: Duration,
    /// The HA loop's period: every member observes and decides this often; a failed renewal is retried
    /// this often.
    pub retry_period: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum TimingsError {
    #[error(
        "leaseDuration ({lease}s) > renewDeadline ({renew}s) > 1.2 x retryPeriod ({retry}s) does not hold (DESIGN.md L6)"
    )]
    Invalid { lease: u32, renew: u32, retry: u32 },
}

impl Timings {
    /// L6: refuses timings where the holder could still be serving when someone else may take over.
    pub fn new(ha: &HaTimings) -> Result<Self, TimingsError> {
        if !ha.is_valid() {
            return Err(TimingsError::Invalid {
                lease: ha.lease_duration_seconds,
                renew: ha.renew_deadline_seconds,
                retry: ha.retry_period_seconds,
            });
        }
        Ok(Self {
            lease_duration: Duration::from_secs(ha.lease_duration_seconds.into()),
            renew_deadline: Duration::from_secs(ha.renew_deadline_seconds.into()),
            retry_period: Duration::from_secs(ha.retry_period_seconds.into()),
        })
    }

    /// How often the holder writes a successful renewal: `leaseDuration − renewDeadline`, at least one
    /// retry period (5 s with the defaults, so 12 writes a minute — DESIGN.md's steady-state budget, L9).
    /// Safety does not depend on it: L5 fences at `renewDeadline` after the last successful renewal was
    /// sent, and failed renewals are retried every retry period until then, so with the defaults a holder
    /// gets three attempts (at 5, 7 and 9 s) before it fences at 10 s, while others wait 15 s (L2).
    pub fn renew_interval(&self) -> Duration {
        self.lease_duration
            .saturating_sub(self.renew_deadline)
            .max(self.retry_period)
    }
}

/// The Lease as last read. Remote timestamps are opaque: compared for equality only (L2).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaseRecord {
    /// `spec.holderIdentity`; `None` or empty means released (or never held).
    pub holder: Option<String>,
    /// `spec.renewTime` as the apiserver returned it.
    pub renew_time: Option<String>,
    pub resource_version: String,
    /// `spec.leaseTransitions`: the fencing epoch (L7).
    pub transitions: u64,
    /// The members recorded as synchronous (annotation `pgpilot.io/sync-members`), `None` when absent.
    pub sync_members: Option<Vec<String>>,
    /// The member a switchover handed the Lease to, until it confirms (annotation `pgpilot.io/handover-to`).
    pub handover_to: Option<String>,
}

impl LeaseRecord {
    /// The holder, treating an empty identity as none.
    pub fn holder(&self) -> Option<&str> {
        self.holder.as_deref().filter(|h| !h.is_empty())
    }

    fn key(&self) -> RecordKey {
        RecordKey {
            holder: self.holder().map(str::to_owned),
            renew_time: self.renew_time.clone(),
            resource_version: self.resource_version.clone(),
        }
    }
}

/// What L2 compares: the record is "unchanged" while all three are equal.
#[derive(Clone, Debug, PartialEq, Eq)]
struct RecordKey {
    holder: Option<String>,
    renew_time: Option<String>,
    resource_version: String,
}

/// A member's pod and PostgreSQL container as the kubelet reports them (L8).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum PodStatus {
    /// Pods not listed yet, or the member has no pod to judge by (tests without pods).
    #[default]
    Unknown,
    /// The pod list is complete and has no pod of that name.
    Gone,
    Present {
        uid: String,
        /// The PostgreSQL container's current state is `terminated`.
        terminated: bool,
        /// The PostgreSQL container's `restartCount`.
        restarts: u32,
    },
}

/// Local memory of the Lease record: since when it has been unchanged on this member's monotonic clock
/// (L2), and what the holder's pod looked like when it last changed (L8). Pure: the caller passes `now`.
#[derive(Clone, Debug, Default)]
pub struct LeaseWatch {
    key: Option<RecordKey>,
    since: Option<Instant>,
    /// The holder pod's uid and container restart count when the record last changed.
    holder_baseline: Option<(String, u32)>,
}

impl LeaseWatch {
    /// Records one observation of the Lease and of its holder's pod.
    pub fn observe(&mut self, record: &LeaseRecord, holder_pod: &PodStatus, now: Instant) {
        let key = record.key();
        if self.key.as_ref() != Some(&key) {
            self.key = Some(key);
            self.since = Some(now);
            self.holder_baseline = baseline(holder_pod);
        } else if self.holder_baseline.is_none() {
            // The pod became known after the record changed: what it says now is the earliest we know.
            self.holder_baseline = baseline(holder_pod);
        }
    }

    /// How long the record has been unchanged (zero before the first observation).
    pub fn unchanged_for(&self, now: Instant) -> Duration {
        self.since
            .map_or(Duration::ZERO, |since| now.saturating_duration_since(since))
    }

    /// L8: the kubelet says the processes that could accept writes under this record are dead — the
    /// holder's pod is gone or was replaced, or its PostgreSQL container terminated or restarted since
    /// the record last changed.
    pub fn holder_dead(&self, holder_pod: &PodStatus) -> bool {
        match holder_pod {
            PodStatus::Unknown => false,
            PodStatus::Gone => true,
            PodStatus::Present {
                uid,
                terminated,
                restarts,
            } => {
                *terminated
                    || self
                        .holder_baseline
                        .as_ref()
                        .is_some_and(|(base_uid, base_restarts)| {
                            base_uid != uid || restarts > base_restarts
                        })
            }
        }
    }
}

fn baseline(pod: &PodStatus) -> Option<(String, u32)> {
    match pod {
        PodStatus::Present {
            uid,
            terminated: false,
            restarts,
        } => Some((uid.clone(), *restarts)),
        _ => None,
    }
}

/// This member's PostgreSQL as observed this loop.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LocalPg {
    /// PGDATA holds a complete data directory.
    pub initialized: bool,
    /// The postmaster runs and answers queries.
    pub healthy: bool,
    /// It runs as a primary (not in recovery): it may accept writes.
    pub primary: bool,
    pub timeline: Option<u32>,
    /// Write position (primary) or received/replayed position (replica).
    pub wal: Option<u64>,
}

/// What a peer answered on its REST API this loop.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerReport {
    pub initialized: bool,
    /// Its PostgreSQL runs and answers.
    pub healthy: bool,
    /// It runs PostgreSQL as a primary.
    pub primary: bool,
    pub timeline: Option<u32>,
    pub wal: Option<u64>,
}

/// One other member of the cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Peer {
    pub name: String,
    /// `None`: its REST API did not answer (within the short timeout).
    pub report: Option<PeerReport>,
}

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

/// Everything [`decide`] looks at.
#[derive(Clone, Debug)]
pub struct Observation {
    pub me: String,
    /// The Lease as read this loop; `None` when the read failed (apiserver unreachable).
    pub lease: Option<LeaseRecord>,
    pub watch: LeaseWatch,
    /// The Lease holder's pod (L8); [`PodStatus::Unknown`] when there is no holder.
    pub holder_pod: PodStatus,
    pub local: LocalPg,
    /// Every other member the pod list knows, reachable or not.
    pub peers: Vec<Peer>,
    /// When the last successful renewal (or acquisition) by *this process* was sent. `None` until this
    /// process has confirmed the Lease with a conditional write, and again after a write lost a race.
    pub renewed_sent_at: Option<Instant>,
    /// Failsafe (L5): every peer answered over REST this loop and none disputes this member as primary.
    pub failsafe_confirmed: bool,
    pub policy: Policy,
}

/// Why a member tries to take the Lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcquireReason {
    /// Nobody ever held it and nobody has data: the winner runs initdb.
    Bootstrap,
    /// The holder released it cleanly (L2: claimed at once).
    Released,
    /// The record stayed unchanged for `leaseDuration` (L2).
    Expired,
    /// The holder's container terminated or its pod is gone (L8).
    HolderDead,
    /// The Lease names this member but this process has not written it yet (restart, L4).
    Confirm,
    /// A switchover handed the Lease to this member; it confirms before promoting (L4).
    Handover,
}

/// Why a member does not lead.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ineligible {
    Unhealthy,
    NoFailover,
    /// Synchronous mode and not recorded as synchronous (L3).
    NotSynchronous,
    /// A reachable peer still runs PostgreSQL as a primary.
    PrimaryRunning(String),
    /// A reachable peer is on a newer timeline.
    OlderTimeline(String),
    /// More than `maximumLagOnFailover` behind the best reachable peer.
    TooFarBehind {
        behind: u64,
    },
    /// A reachable, eligible peer ranks higher (further ahead, higher priority, or the tie-break).
    PeerAhead(String),
}

/// What to do this loop. The HA loop carries it out; nothing else changes roles.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Holder: write `renewTime` conditionally (L1, L5). Also the retry after a failed renewal.
    Renew,
    /// Holder with a renewal younger than [`Timings::renew_interval`]: keep leading, write nothing (L9).
    Hold,
    /// Try to take the Lease with a conditional write (L1); promote only after it succeeded (L4).
    Acquire(AcquireReason),
    /// Holder without a successful renewal within `renewDeadline`: stop accepting writes now (L5).
    Fence,
    /// Holder without the apiserver (the Lease unreadable when a renewal is due), kept serving because
    /// every member confirmed it over REST this loop (L5). Still tries to renew; the watchdog's deadline
    /// moves to `renewDeadline` after this confirmation.
    FailsafeHold,
    /// Runs as primary without holding the Lease: demote, then follow (L4).
    Demote { leader: Option<String> },
    /// Be (or become) a replica of `leader`; `None` while there is no live holder to follow.
    Follow {
        leader: Option<String>,
        why: FollowReason,
    },
    /// Change nothing this loop.
    Wait(WaitReason),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FollowReason {
    /// Someone else holds a live Lease.
    Leader,
    /// This member may not take over.
    Ineligible(Ineligible),
    /// Waiting for the holder's record to expire or for a kubelet signal (L2/L8).
    NotExpired,
    /// Waiting for the member a switchover named to confirm.
    HandoverPending,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WaitReason {
    /// Pause mode: nothing changes automatically.
    Paused,
    /// The Lease could not be read; a replica keeps doing what it does.
    LeaseUnknown,
}

impl std::fmt::Display for Decision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Decision::Renew => write!(f, "renew"),
            Decision::Hold => write!(f, "hold"),
            Decision::Acquire(why) => write!(f, "acquire ({why:?})"),
            Decision::Fence => write!(f, "fence"),
            Decision::FailsafeHold => write!(f, "failsafe hold"),
            Decision::Demote { leader } => {
                write!(f, "demote (leader {})", leader.as_deref().unwrap_or("none"))
            }
            Decision::Follow { leader, why } => {
                write!(
                    f,
                    "follow {} ({why:?})",
                    leader.as_deref().unwrap_or("nobody")
                )
            }
            Decision::Wait(why) => write!(f, "wait ({why:?})"),
        }
    }
}

/// The election rules. Pure: same inputs, same decision.
///
/// Order of precedence:
/// 1. The holder (this process confirmed it) renews once its last renewal is [`Timings::renew_interval`]
///    old, and holds otherwise; past `renewDeadline` since the last successful renewal was sent it
///    fences a running primary instead (L5). Failsafe (opt-in) holds instead of renewing or fencing
///    while the Lease is unreadable and every member confirms this primary.
/// 2. The Lease unreadable: a non-holder changes nothing.
/// 3. Pause: the holder still renews, nobody else changes anything.
/// 4. A running primary that does not hold the Lease demotes (L4).
/// 5. The Lease names this member but this process never wrote it (restart or handover): confirm with a
///    conditional write first (L4) — a restarted holder only if it is still the best candidate (L3).
/// 6. Released (L2) or never held (bootstrap): the best eligible member races (L1, L3).
/// 7. Held by another: follow, unless the record expired (L2) or the holder is dead (L8) and this member
///    is the best eligible one (L3).
pub fn decide(obs: &Observation, now: Instant, timings: &Timings) -> Decision {
    let me = obs.me.as_str();
    let confirmed_holder = obs.renewed_sent_at.is_some()
        && obs
            .lease
            .as_ref()
            .is_none_or(|record| record.holder() == Some(me));

    if let Some(sent) = obs.renewed_sent_at.filter(|_| confirmed_holder) {
        let since = now.saturating_duration_since(sent);
        let due = since >= timings.renew_interval();
        let serving = obs.local.primary && !obs.policy.paused;
        // Failsafe takes over from the first due renewal the apiserver does not answer (the Lease was
        // unreadable this loop), well before the deadline: the watchdog fences at the deadline itself.
        let apiserver_gone = obs.lease.is_none() && (due || since >= timings.renew_deadline);
        if serving && apiserver_gone && obs.policy.failsafe && obs.failsafe_confirmed {
            return Decision::FailsafeHold;
        }
        if serving && since >= timings.renew_deadline {
            return Decision::Fence;
        }
        return if due { Decision::Renew } else { Decision::Hold };
    }

    let Some(record) = &obs.lease else {
        return Decision::Wait(WaitReason::LeaseUnknown);
    };
    if obs.policy.paused {
        return Decision::Wait(WaitReason::Paused);
    }
    let holder = record.holder();
    if obs.local.primary && holder != Some(me) {
        return Decision::Demote {
            leader: holder.map(str::to_owned),
        };
    }

    match holder {
        Some(h) if h == me => {
            if record.handover_to.as_deref() == Some(me) {
                return if obs.local.healthy {
                    Decision::Acquire(AcquireReason::Handover)
                } else {
                    follow_none(FollowReason::Ineligible(Ineligible::Unhealthy))
                };
            }
            if may_bootstrap(obs, record) {
                return Decision::Acquire(AcquireReason::Bootstrap);
            }
            match eligibility(obs, record) {
                Ok(()) => Decision::Acquire(AcquireReason::Confirm),
                Err(why) => follow_none(FollowReason::Ineligible(why)),
            }
        }
        None => {
            if may_bootstrap(obs, record) {
                return Decision::Acquire(AcquireReason::Bootstrap);
            }
            match eligibility(obs, record) {
                Ok(()) => Decision::Acquire(AcquireReason::Released),
                Err(why) => follow_none(FollowReason::Ineligible(why)),
            }
        }
        Some(h) => {
            let leader = Some(h.to_owned());
            let expired = obs.watch.unchanged_for(now) >= timings.lease_duration;
            let dead = obs.watch.holder_dead(&obs.holder_pod);
            if !expired && !dead {
                let why = if record.handover_to.as_deref() == Some(h) {
                    FollowReason::HandoverPending
                } else {
                    FollowReason::Leader
                };
                return Decision::Follow { leader, why };
            }
            match eligibility(obs, record) {
                Ok(()) if expired => Decision::Acquire(AcquireReason::Expired),
                Ok(()) => Decision::Acquire(AcquireReason::HolderDead),
                Err(why) => Decision::Follow {
                    leader,
                    why: FollowReason::Ineligible(why),
                },
            }
        }
    }
}

fn follow_none(why: FollowReason) -> Decision {
    Decision::Follow { leader: None, why }
}

/// Bootstrap only into a cluster that never had data: this member's PGDATA is empty, and either the
/// Lease was never held (transitions 0) or every peer answered and none has data. A holder that died
/// half-way through initdb therefore bootstraps again instead of waiting forever.
fn may_bootstrap(obs: &Observation, record: &LeaseRecord) -> bool {
    if obs.local.initialized {
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
/// the sync modes (recorded, or the holder the Lease still names), and — by what the reachable peers report — no primary may still run elsewhere, none may
/// be on a newer timeline, it must be within `maximumLagOnFailover` of the best, and no eligible peer may
/// rank above it ([`rank`]). Unreachable peers cannot object: that is what the Lease's own rules are for.
pub fn eligibility(obs: &Observation, record: &LeaseRecord) -> Result<(), Ineligible> {
    let me = obs.me.as_str();
    let policy = &obs.policy;
    let (true, Some(my_wal)) = (obs.local.healthy, obs.local.wal) else {
        return Err(Ineligible::Unhealthy);
    };
    if !policy.may_fail_over(me) {
        return Err(Ineligible::NoFailover);
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
        return Err(Ineligible::NotSynchronous);
    }
    let my_timeline = obs.local.timeline.unwrap_or(0);
    let my_rank = rank(policy, record, me, my_wal);
    let mut best_wal = my_wal;
    for peer in &obs.peers {
        let Some(report) = &peer.report else { continue };
        if report.primary && report.healthy {
            return Err(Ineligible::PrimaryRunning(peer.name.clone()));
        }
        if report.timeline.unwrap_or(0) > my_timeline {
            return Err(Ineligible::OlderTimeline(peer.name.clone()));
        }
        let Some(wal) = report.wal.filter(|_| report.healthy) else {
            continue;
        };
        best_wal = best_wal.max(wal);
        let competes = policy.may_fail_over(&peer.name) && (!sync_mode || synchronous(&peer.name));
        if competes && rank(policy, record, &peer.name, wal) > my_rank {
            return Err(Ineligible::PeerAhead(peer.name.clone()));
        }
    }
    let behind = best_wal - my_wal;
    if behind > policy.maximum_lag_on_failover {
        return Err(Ineligible::TooFarBehind { behind });
    }
    Ok(())
}

/// One pod's role label and epoch annotation (L7), as read from the pod or as wanted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoleMark {
    pub role: Option<String>,
    pub epoch: Option<u64>,
}

/// L9: the label patch this member's own pod needs, `None` when the pod already says it — pods are
/// patched on change only, never every loop.
pub fn role_patch(current: &RoleMark, wanted: &RoleMark) -> Option<RoleMark> {
    (current != wanted).then(|| wanted.clone())
}

/// L7: pods other than the new holder's that still carry the primary label: a stale primary's claim
/// the new holder overwrites once (to `replica`) so the `-rw` Service never routes to it.
pub fn stale_primaries<'a>(
    pods: impl IntoIterator<Item = (&'a str, &'a RoleMark)>,
    me: &str,
    primary_role: &str,
) -> Vec<String> {
    pods.into_iter()
        .filter(|(name, mark)| *name != me && mark.role.as_deref() == Some(primary_role))
        .map(|(name, _)| name.to_owned())
        .collect()
}

#[cfg(test)]
mod tests;
