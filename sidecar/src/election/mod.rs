//! Leader election over the cluster's Lease, split into a pure core and a thin IO shell.
//!
//! - This module is pure: [`decide`] maps an [`Observation`] (the Lease record as last read, this
//!   member's PostgreSQL, its peers as they answered over REST, the holder's pod as the kubelet reports
//!   it), the current instant and the [`Timings`] to one [`Decision`]. It reads no clock and does no IO,
//!   so every rule of docs/design.md (L1–L9) is unit-tested below with injected instants.
//! - [`LeaseWatch`] is the only memory the rules need across loops: since when the record has been
//!   unchanged on the local monotonic clock (L2) and the holder's container at that moment (L8).
//! - [`lease`] is the IO shell: conditional reads/writes of the Lease object (L1).
//!
//! The HA loop (`crate::ha`) observes, calls [`decide`], and acts.

mod eligibility;
pub mod lease;
mod record;
mod roles;
pub mod switchover;

pub use eligibility::{Policy, eligibility, waived_by_manual};
use eligibility::{may_bootstrap, objections};
pub use record::{LeaseRecord, LeaseWatch, PodStatus};
pub use roles::{RoleMark, role_patch, stale_primaries, wanted_mark};

use std::time::{Duration, Instant};

use pgpilot_crds::contract::HaTimings;

/// The three Lease timings as durations, checked against docs/design.md L6 when built.
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
        "leaseDuration ({lease}s) > renewDeadline ({renew}s) > 1.2 x retryPeriod ({retry}s) does not hold (docs/design.md L6)"
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
    /// retry period (5 s with the defaults, so 12 writes a minute — docs/design.md's steady-state budget, L9).
    /// Safety does not depend on it: L5 fences at `renewDeadline` after the last successful renewal was
    /// sent, and failed renewals are retried every retry period until then, so with the defaults a holder
    /// gets three attempts (at 5, 7 and 9 s) before it fences at 10 s, while others wait 15 s (L2).
    pub fn renew_interval(&self) -> Duration {
        self.lease_duration
            .saturating_sub(self.renew_deadline)
            .max(self.retry_period)
    }

    /// L2: how long another member's record must stay unchanged before it may be taken — the longer of
    /// this member's `leaseDuration` and the one the record was written with.
    pub fn effective_lease_duration(&self, record: &LeaseRecord) -> Duration {
        self.lease_duration
            .max(record.lease_duration.unwrap_or_default())
    }
}

/// A member's PostgreSQL as seen this loop: this member's own (observed over the local socket) or a
/// peer's (as its REST API reported it). One type, so the rules compare like with like.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PgView {
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

/// One other member of the cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Peer {
    pub name: String,
    /// `None`: its REST API did not answer (within the short timeout).
    pub report: Option<PgView>,
}

/// Everything [`decide`] looks at.
#[derive(Clone, Debug)]
pub struct Observation {
    pub me: String,
    /// This pod is a member: a StatefulSet ordinal below `instances` (issue 13 hole 10). Any other pod
    /// with the cluster label never races for the Lease.
    pub member: bool,
    /// The Lease as read this loop; `None` when the read failed (apiserver unreachable).
    pub lease: Option<LeaseRecord>,
    pub watch: LeaseWatch,
    /// The Lease holder's pod (L8); [`PodStatus::Unknown`] when there is no holder.
    pub holder_pod: PodStatus,
    pub local: PgView,
    /// Every other member the pod list knows, reachable or not.
    pub peers: Vec<Peer>,
    /// When the last successful renewal (or acquisition) by *this process* was sent. `None` until this
    /// process has confirmed the Lease with a conditional write, and again after a write lost a race.
    pub renewed_sent_at: Option<Instant>,
    /// This process's last successful write naming itself holder, kept across a lost race (a 409
    /// clears `renewed_sent_at`, not this): L5 counts from it while PostgreSQL runs as a primary.
    pub last_renewal: Option<Renewal>,
    /// When this member last kept serving by failsafe, every member having confirmed it (L5).
    pub failsafe_held_at: Option<Instant>,
    /// The highest WAL position this member saw the holder of the current record report (REST).
    pub primary_wal_seen: Option<u64>,
    /// When this member's WAL receiver was last seen streaming.
    pub streamed_at: Option<Instant>,
    /// Failsafe (L5): every peer answered over REST this loop and none disputes this member as primary.
    pub failsafe_confirmed: bool,
    pub policy: Policy,
}

/// A successful write naming this member holder, as L5 counts from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Renewal {
    /// When the request was sent (not when the answer came).
    pub sent_at: Instant,
    /// The `renewDeadline` in force when it was written, paired with the `leaseDurationSeconds` it wrote.
    pub renew_deadline: Duration,
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
    /// The holder's container terminated or restarted (L8).
    HolderDead,
    /// The holder's pod is gone or was replaced, and the record has not changed for `renewDeadline`
    /// (by then a holder cut off with it has fenced, L5/L8).
    HolderGone,
    /// The Lease has no holder (it was recreated) while this member runs as the primary: it takes it
    /// back without stopping, conditionally (L1).
    Reclaim,
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
    /// This pod is not a member of the cluster (its ordinal is not below `instances`).
    NotAMember,
    /// Its WAL receiver has not streamed from the primary recently, and it is behind the position the
    /// Lease records: it cannot know how much it misses.
    NotStreamedRecently,
}

impl std::fmt::Display for Ineligible {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ineligible::Unhealthy => write!(f, "PostgreSQL is not running and answering"),
            Ineligible::NoFailover => write!(f, "tagged noFailover"),
            Ineligible::NotAMember => write!(f, "not a member (ordinal not below instances)"),
            Ineligible::NotSynchronous => write!(f, "not a recorded synchronous standby"),
            Ineligible::PrimaryRunning(p) => write!(f, "{p} still runs as primary"),
            Ineligible::OlderTimeline(p) => write!(f, "{p} is on a newer timeline"),
            Ineligible::TooFarBehind { behind } => {
                write!(
                    f,
                    "{behind} bytes behind the primary (maximumLagOnFailover)"
                )
            }
            Ineligible::PeerAhead(p) => write!(f, "{p} ranks higher"),
            Ineligible::NotStreamedRecently => write!(
                f,
                "has not streamed from the primary recently and lacks the position the Lease records"
            ),
        }
    }
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

impl Decision {
    /// Whether `self` is news after `previous`, worth a log line: a holder renewing and holding in turn
    /// (every other loop) is one course, leading; any other change is news.
    pub fn is_news_after(&self, previous: Option<&Decision>) -> bool {
        let leading = |d: &Decision| matches!(d, Decision::Renew | Decision::Hold);
        match previous {
            Some(prev) => prev != self && !(leading(prev) && leading(self)),
            None => true,
        }
    }
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
///    old, and holds otherwise; past its fencing deadline ([`fencing_deadline`]) it fences a running
///    primary instead (L5) — paused or not. Failsafe (opt-in) holds instead of renewing or fencing
///    while the Lease is unreadable and every member confirms this primary.
/// 2. A running primary is the confirmed holder or it is being fenced: past the deadline of its last
///    confirmed write it fences even when a lost race (409) took the belief away (L5).
/// 3. The Lease unreadable: nobody else changes anything.
/// 4. A running primary the Lease still names re-confirms with a conditional write, with no rank test
///    against itself (L1, L4): it never follows.
/// 5. Pause: nobody else changes anything.
/// 6. A running primary the Lease does not name demotes (L4) — unless the Lease has no holder at all
///    (recreated) and no reachable peer disputes it: then it takes it back without stopping (L1).
/// 7. The Lease names this member but this process never wrote it (restart or handover): confirm with a
///    conditional write first (L4) — a restarted holder only if it is still the best candidate (L3).
/// 8. Released (L2) or never held (bootstrap, never once a system identifier is recorded): the best
///    eligible member races (L1, L3).
/// 9. Held by another: follow, unless the record expired (L2: by the longer of this member's and the
///    record's `leaseDuration`), the holder's container died (L8), or its pod is gone and the record
///    has not changed for the holder's `renewDeadline` and one retry period — and this member is the
///    best eligible one (L3).
pub fn decide(obs: &Observation, now: Instant, timings: &Timings) -> Decision {
    let me = obs.me.as_str();
    let confirmed_holder = obs.renewed_sent_at.is_some()
        && obs
            .lease
            .as_ref()
            .is_none_or(|record| record.holder() == Some(me));
    let deadline = fencing_deadline(obs, timings);
    let past_deadline = deadline.is_some_and(|d| now >= d);
    let primary = obs.local.primary;

    if let Some(sent) = obs.renewed_sent_at.filter(|_| confirmed_holder) {
        // Due at the interval; at once when `spec.ha` changed since the last write (L6: the new pair is
        // in force only once written); and whenever the next loop would come after the deadline.
        let due = now.saturating_duration_since(sent) >= timings.renew_interval()
            || obs
                .last_renewal
                .is_some_and(|r| r.renew_deadline != timings.renew_deadline)
            || deadline.is_some_and(|d| now + timings.retry_period >= d);
        // Failsafe takes over from the first due renewal the apiserver does not answer (the Lease was
        // unreadable this loop), well before the deadline: the watchdog fences at the deadline itself.
        let apiserver_gone = obs.lease.is_none() && (due || past_deadline);
        if primary && apiserver_gone && obs.policy.failsafe && obs.failsafe_confirmed {
            return Decision::FailsafeHold;
        }
        if primary && past_deadline {
            return Decision::Fence;
        }
        return if due { Decision::Renew } else { Decision::Hold };
    }
    if primary && past_deadline {
        return Decision::Fence;
    }

    let Some(record) = &obs.lease else {
        return Decision::Wait(WaitReason::LeaseUnknown);
    };
    let holder = record.holder();
    if primary && holder == Some(me) {
        return Decision::Acquire(AcquireReason::Confirm);
    }
    if obs.policy.paused {
        return Decision::Wait(WaitReason::Paused);
    }
    if primary {
        if holder.is_none() && undisputed_primary(obs) {
            return Decision::Acquire(AcquireReason::Reclaim);
        }
        return Decision::Demote {
            leader: holder.map(str::to_owned),
        };
    }

    let lease_duration = timings.effective_lease_duration(record);
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
            match eligibility(obs, record)
                .and_then(|()| streamed_recently(obs, record, now, lease_duration, timings))
            {
                Ok(()) => Decision::Acquire(AcquireReason::Released),
                Err(why) => follow_none(FollowReason::Ineligible(why)),
            }
        }
        Some(h) => {
            let leader = Some(h.to_owned());
            let reason = match takeover(obs, record, h, now, timings) {
                Ok(reason) => reason,
                Err(why) => return Decision::Follow { leader, why },
            };
            match eligibility(obs, record)
                .and_then(|()| streamed_recently(obs, record, now, lease_duration, timings))
            {
                Ok(()) => Decision::Acquire(reason),
                Err(why) => Decision::Follow {
                    leader,
                    why: FollowReason::Ineligible(why),
                },
            }
        }
    }
}

/// L2/L8: whether another member's Lease (`holder`) may be taken now, and on which ground; if not, why
/// this member follows. Expired by the longer of this member's and the record's `leaseDuration`, the
/// holder's container died, or its pod is gone and the record has not changed for the holder's
/// `renewDeadline` and one retry period.
fn takeover(
    obs: &Observation,
    record: &LeaseRecord,
    holder: &str,
    now: Instant,
    timings: &Timings,
) -> Result<AcquireReason, FollowReason> {
    let lease_duration = timings.effective_lease_duration(record);
    let unchanged = obs.watch.unchanged_for(now);
    let expired = unchanged >= lease_duration;
    let dead = obs.watch.holder_dead(&obs.holder_pod);
    // The holder's own deadline, as it wrote it (without it, only expiry counts), plus one retry period
    // for the fence itself to land: the watchdog fires at the deadline counted from when the holder
    // *sent* its last write, which is before this member saw it.
    let fenced_by = record
        .renew_deadline
        .map_or(lease_duration, |d| d + timings.retry_period);
    let gone = obs.watch.holder_gone(&obs.holder_pod) && unchanged >= fenced_by;
    if expired {
        Ok(AcquireReason::Expired)
    } else if dead {
        Ok(AcquireReason::HolderDead)
    } else if gone {
        Ok(AcquireReason::HolderGone)
    } else if record.handover_to.as_deref() == Some(holder) {
        Err(FollowReason::HandoverPending)
    } else if obs.watch.holder_gone(&obs.holder_pod) {
        Err(FollowReason::NotExpired)
    } else {
        Err(FollowReason::Leader)
    }
}

/// One step of a manual failover to this member (`POST /failover` without a live primary).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ManualStep {
    /// Take the Lease now, with a conditional write (L1), then promote (L4).
    Acquire(AcquireReason),
    /// Not yet: the holder's Lease may not be taken yet (L2/L8), or it could not be read.
    NotYet(String),
    /// Not with this request.
    Refused(String),
}

/// A manual failover to this member: the Lease rules (L1, L2, L4, L5, L8) hold as for any takeover —
/// only a released, expired or dead holder's Lease is taken — but the candidate is the user's choice:
/// [`waived_by_manual`] sets aside the objections a person may overrule (`force` for those that cost
/// writes). Pure, like [`decide`].
pub fn manual_failover(
    obs: &Observation,
    now: Instant,
    timings: &Timings,
    force: bool,
) -> ManualStep {
    let me = obs.me.as_str();
    let Some(record) = &obs.lease else {
        return ManualStep::NotYet("the Lease cannot be read".into());
    };
    if obs.policy.paused {
        return ManualStep::Refused(
            "the cluster is paused: resume it (spec.paused: false) to fail over".into(),
        );
    }
    if obs.local.primary {
        return ManualStep::Refused(format!("{me} already runs as the primary"));
    }
    let reason = match record.holder() {
        Some(h) if h == me => {
            return ManualStep::Refused(format!("the Lease already names {me}"));
        }
        None if may_bootstrap(obs, record) => {
            return ManualStep::Refused("the cluster has no data yet".into());
        }
        None => AcquireReason::Released,
        Some(h) => match takeover(obs, record, h, now, timings) {
            Ok(reason) => reason,
            Err(FollowReason::HandoverPending) => {
                return ManualStep::Refused(format!("a switchover to {h} is in progress"));
            }
            Err(_) => {
                return ManualStep::NotYet(format!(
                    "{h} holds the Lease and it has not expired (its pod is not known dead)"
                ));
            }
        },
    };
    let lease_duration = timings.effective_lease_duration(record);
    let mut objections = objections(obs, record);
    if let Err(why) = streamed_recently(obs, record, now, lease_duration, timings) {
        objections.push(why);
    }
    match objections.iter().find(|why| !waived_by_manual(why, force)) {
        None => ManualStep::Acquire(reason),
        Some(why) if waived_by_manual(why, true) => ManualStep::Refused(format!(
            "{me}: {why}; \"force\": true fails over anyway, losing what only the others have"
        )),
        Some(why) => ManualStep::Refused(format!("{me}: {why}")),
    }
}

/// L5: when a running primary must have fenced — `renewDeadline` after its last successful write was
/// sent, using the deadline paired with the `leaseDurationSeconds` that write recorded (a longer one
/// from a configuration change counts only from the next write, L6), or after its last failsafe hold.
/// `None` before this process ever confirmed the Lease.
pub fn fencing_deadline(obs: &Observation, timings: &Timings) -> Option<Instant> {
    fencing_deadline_of(
        obs.renewed_sent_at,
        obs.last_renewal,
        obs.failsafe_held_at,
        timings,
    )
}

/// [`fencing_deadline`] from its parts, for the watchdog and the renewals during long actions, which
/// fence by the same deadline.
pub fn fencing_deadline_of(
    renewed_sent_at: Option<Instant>,
    last_renewal: Option<Renewal>,
    failsafe_held_at: Option<Instant>,
    timings: &Timings,
) -> Option<Instant> {
    // `None < Some`: the later of the two sends.
    let sent = renewed_sent_at.max(last_renewal.map(|r| r.sent_at))?;
    let base = failsafe_held_at.map_or(sent, |f| f.max(sent));
    let deadline = last_renewal.map_or(timings.renew_deadline, |r| r.renew_deadline);
    Some(base + deadline)
}

/// A replica: why it could not take over if the holder went away now (`None`: it could, or another
/// member ranks higher and could). The operator sets `FailoverBlocked` when no member could.
pub fn failover_blocked(obs: &Observation, now: Instant, timings: &Timings) -> Option<Ineligible> {
    let record = obs.lease.as_ref()?;
    let holder = record.holder().filter(|h| *h != obs.me)?;
    let mut without = obs.clone();
    without.peers.retain(|p| p.name != holder);
    let lease_duration = timings.effective_lease_duration(record);
    match eligibility(&without, record)
        .and_then(|()| streamed_recently(&without, record, now, lease_duration, timings))
    {
        Ok(()) | Err(Ineligible::PeerAhead(_)) => None,
        Err(why) => Some(why),
    }
}

/// A running primary that finds the Lease without a holder (recreated): no reachable peer runs as a
/// primary or is on a newer timeline, so its own data is the cluster's newest.
fn undisputed_primary(obs: &Observation) -> bool {
    let mine = obs.local.timeline.unwrap_or(0);
    obs.peers
        .iter()
        .filter_map(|p| p.report.as_ref())
        .all(|r| !(r.primary && r.healthy) && r.timeline.unwrap_or(0) <= mine)
}

/// L3 for a takeover: a member that has not streamed from the primary within `leaseDuration +
/// renewDeadline` (the longest the primary can have been writing without it noticing) cannot know what
/// it misses — unless it already has the position the Lease recorded at the last renewal.
fn streamed_recently(
    obs: &Observation,
    record: &LeaseRecord,
    now: Instant,
    lease_duration: Duration,
    timings: &Timings,
) -> Result<(), Ineligible> {
    let window = lease_duration + timings.renew_deadline;
    let recent = obs
        .streamed_at
        .is_some_and(|at| now.saturating_duration_since(at) <= window);
    let has_recorded = record
        .wal_position
        .is_some_and(|p| obs.local.wal.is_some_and(|w| w >= p));
    if recent || has_recorded {
        Ok(())
    } else {
        Err(Ineligible::NotStreamedRecently)
    }
}

fn follow_none(why: FollowReason) -> Decision {
    Decision::Follow { leader: None, why }
}

#[cfg(test)]
mod tests;
