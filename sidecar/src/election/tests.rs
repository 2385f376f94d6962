//! `decide()` branch by branch, one group per rule of docs/design.md. Time is injected: `t(s)` is `s` seconds
//! after a fixed origin; nothing sleeps.

use std::{
    sync::LazyLock,
    time::{Duration, Instant},
};

use pgpilot_crds::contract::{HaTimings, MemberTags, ROLE_PRIMARY, ROLE_REPLICA, ReplicationMode};

use super::*;

static ORIGIN: LazyLock<Instant> = LazyLock::new(Instant::now);

fn t(secs: f64) -> Instant {
    *ORIGIN + Duration::from_secs_f64(secs)
}

fn timings() -> Timings {
    Timings::new(&HaTimings::default()).unwrap()
}

/// Issue 13's longer timings, 30/20/5.
fn long_timings() -> Timings {
    Timings::new(&HaTimings {
        lease_duration_seconds: 30,
        renew_deadline_seconds: 20,
        retry_period_seconds: 5,
    })
    .unwrap()
}

fn record(holder: Option<&str>, rv: &str, transitions: u64) -> LeaseRecord {
    LeaseRecord {
        holder: holder.map(str::to_owned),
        renew_time: Some(format!("renew-{rv}")),
        resource_version: rv.into(),
        transitions,
        sync_members: None,
        handover_to: None,
        lease_duration: Some(Duration::from_secs(15)),
        wal_position: None,
        timeline: None,
        system_id: None,
        renew_deadline: Some(Duration::from_secs(10)),
    }
}

fn healthy_replica(wal: u64) -> PgView {
    PgView {
        initialized: true,
        healthy: true,
        primary: false,
        timeline: Some(1),
        wal: Some(wal),
    }
}

fn running_primary(wal: u64) -> PgView {
    PgView {
        primary: true,
        ..healthy_replica(wal)
    }
}

fn replica_report(wal: u64) -> PgView {
    PgView {
        initialized: true,
        healthy: true,
        primary: false,
        timeline: Some(1),
        wal: Some(wal),
    }
}

fn peer(name: &str, report: Option<PgView>) -> Peer {
    Peer {
        name: name.into(),
        report,
    }
}

fn pod(uid: &str, terminated: bool, restarts: u32) -> PodStatus {
    PodStatus::Present {
        uid: uid.into(),
        terminated,
        restarts,
    }
}

/// `c-1`, a healthy replica, watching a Lease held by `c-0` since `t(0)`; peers `c-0` (unreachable) and
/// `c-2` (a replica behind it).
fn replica_obs(lease: LeaseRecord) -> Observation {
    let holder_pod = pod("uid-0", false, 0);
    let mut watch = LeaseWatch::default();
    watch.observe(&lease, &holder_pod, t(0.0));
    Observation {
        me: "c-1".into(),
        member: true,
        lease: Some(lease),
        watch,
        holder_pod,
        local: healthy_replica(1000),
        peers: vec![peer("c-0", None), peer("c-2", Some(replica_report(900)))],
        renewed_sent_at: None,
        last_renewal: None,
        failsafe_held_at: None,
        primary_wal_seen: None,
        streamed_at: Some(t(0.0)),
        failsafe_confirmed: false,
        policy: Policy {
            maximum_lag_on_failover: 1 << 20,
            ..Policy::default()
        },
    }
}

/// `c-0` holding the Lease, its last renewal sent at `t(0)`.
fn holder_obs() -> Observation {
    let mut obs = replica_obs(record(Some("c-0"), "10", 1));
    obs.me = "c-0".into();
    obs.local = running_primary(1000);
    obs.renewed_sent_at = Some(t(0.0));
    obs.last_renewal = Some(Renewal {
        sent_at: t(0.0),
        renew_deadline: timings().renew_deadline,
    });
    obs.peers = vec![
        peer("c-1", Some(replica_report(1000))),
        peer("c-2", Some(replica_report(1000))),
    ];
    obs
}

// ---- L1: every write conditional; the loser re-reads ----------------------------------------------

#[test]
fn l1_a_lost_write_leaves_no_holder_belief() {
    // The shell clears `renewed_sent_at` after a 409 and re-reads: the record now names c-2, so c-0 (still
    // running as primary) demotes instead of renewing blindly.
    let mut obs = holder_obs();
    obs.renewed_sent_at = None;
    obs.lease = Some(record(Some("c-2"), "11", 2));
    assert_eq!(
        decide(&obs, t(1.0), &timings()),
        Decision::Demote {
            leader: Some("c-2".into())
        }
    );
}

#[test]
fn l1_a_confirmed_holder_that_reads_another_holder_stops_renewing() {
    let mut obs = holder_obs();
    obs.lease = Some(record(Some("c-2"), "11", 2));
    assert_eq!(
        decide(&obs, t(1.0), &timings()),
        Decision::Demote {
            leader: Some("c-2".into())
        }
    );
}

// ---- L2: takeover only after leaseDuration unchanged on the local clock; empty holder at once --------

#[test]
fn l2_no_takeover_before_lease_duration() {
    let obs = replica_obs(record(Some("c-0"), "10", 1));
    assert_eq!(
        decide(&obs, t(14.9), &timings()),
        Decision::Follow {
            leader: Some("c-0".into()),
            why: FollowReason::Leader
        }
    );
    assert_eq!(
        decide(&obs, t(15.0), &timings()),
        Decision::Acquire(AcquireReason::Expired)
    );
}

#[test]
fn l2_any_change_of_the_record_restarts_the_clock() {
    let mut obs = replica_obs(record(Some("c-0"), "10", 1));
    // A renewal at t=10 changes renewTime and resourceVersion.
    let renewed = record(Some("c-0"), "11", 1);
    obs.watch.observe(&renewed, &obs.holder_pod, t(10.0));
    obs.lease = Some(renewed.clone());
    assert!(matches!(
        decide(&obs, t(20.0), &timings()),
        Decision::Follow { .. }
    ));
    assert_eq!(
        decide(&obs, t(25.0), &timings()),
        Decision::Acquire(AcquireReason::Expired)
    );
    // Observing the same record again does not move the clock.
    obs.watch.observe(&renewed, &obs.holder_pod, t(24.0));
    assert_eq!(
        decide(&obs, t(25.0), &timings()),
        Decision::Acquire(AcquireReason::Expired)
    );
}

#[test]
fn l2_remote_timestamps_are_not_read_as_time() {
    // A renewTime far in the past (skewed clock) does not count as expired: only the local clock does.
    let mut stale = record(Some("c-0"), "10", 1);
    stale.renew_time = Some("1970-01-01T00:00:00.000000Z".into());
    let obs = replica_obs(stale);
    assert!(matches!(
        decide(&obs, t(1.0), &timings()),
        Decision::Follow { .. }
    ));
}

#[test]
fn l2_an_empty_holder_is_claimed_at_once() {
    let obs = replica_obs(record(None, "12", 3));
    assert_eq!(
        decide(&obs, t(0.1), &timings()),
        Decision::Acquire(AcquireReason::Released)
    );
    let mut empty_string = record(Some(""), "12", 3);
    empty_string.holder = Some(String::new());
    assert_eq!(
        decide(&replica_obs(empty_string), t(0.1), &timings()),
        Decision::Acquire(AcquireReason::Released)
    );
}

#[test]
fn bootstrap_only_when_nobody_has_data() {
    let mut obs = replica_obs(record(None, "1", 0));
    obs.local = PgView::default();
    obs.peers = vec![peer("c-0", None), peer("c-2", Some(PgView::default()))];
    assert_eq!(
        decide(&obs, t(0.0), &timings()),
        Decision::Acquire(AcquireReason::Bootstrap)
    );
    // A peer with data: no second initdb; an empty member may not lead either.
    obs.peers[1].report = Some(replica_report(5));
    assert_eq!(
        decide(&obs, t(0.0), &timings()),
        follow_none(FollowReason::Ineligible(Ineligible::Unhealthy))
    );
    // Held before (transitions > 0) and a peer unreachable: it may have data, so wait.
    obs.lease = Some(record(None, "9", 2));
    obs.peers[1].report = Some(PgView::default());
    assert_eq!(
        decide(&obs, t(0.0), &timings()),
        follow_none(FollowReason::Ineligible(Ineligible::Unhealthy))
    );
    // ... but when everyone answers and nobody has data (the holder died during initdb), bootstrap again.
    obs.peers[0].report = Some(PgView::default());
    assert_eq!(
        decide(&obs, t(0.0), &timings()),
        Decision::Acquire(AcquireReason::Bootstrap)
    );
}

// ---- L3: only eligible members race; they step back for better peers --------------------------------

fn expired_obs() -> Observation {
    replica_obs(record(Some("c-0"), "10", 1))
}

const EXPIRED: f64 = 16.0;

fn ineligible(obs: &Observation, why: Ineligible) {
    assert_eq!(
        decide(obs, t(EXPIRED), &timings()),
        Decision::Follow {
            leader: Some("c-0".into()),
            why: FollowReason::Ineligible(why)
        }
    );
}

#[test]
fn l3_unhealthy_members_do_not_race() {
    let mut obs = expired_obs();
    obs.local.healthy = false;
    ineligible(&obs, Ineligible::Unhealthy);
    let mut obs = expired_obs();
    obs.local.wal = None;
    ineligible(&obs, Ineligible::Unhealthy);
}

#[test]
fn l3_nofailover_and_priority_zero_do_not_race() {
    let mut obs = expired_obs();
    obs.policy.tags.insert(
        "c-1".into(),
        MemberTags {
            no_failover: true,
            ..MemberTags::default()
        },
    );
    ineligible(&obs, Ineligible::NoFailover);
    obs.policy.tags.insert(
        "c-1".into(),
        MemberTags {
            failover_priority: Some(0),
            ..MemberTags::default()
        },
    );
    ineligible(&obs, Ineligible::NoFailover);
}

#[test]
fn l3_steps_back_when_a_peer_is_ahead() {
    let mut obs = expired_obs();
    obs.peers[1].report = Some(replica_report(1001));
    ineligible(&obs, Ineligible::PeerAhead("c-2".into()));
    // An unhealthy or nofailover peer cannot object.
    obs.peers[1].report = Some(PgView {
        healthy: false,
        ..replica_report(5000)
    });
    assert_eq!(
        decide(&obs, t(EXPIRED), &timings()),
        Decision::Acquire(AcquireReason::Expired)
    );
    obs.peers[1].report = Some(replica_report(1001));
    obs.policy.tags.insert(
        "c-2".into(),
        MemberTags {
            no_failover: true,
            ..MemberTags::default()
        },
    );
    assert_eq!(
        decide(&obs, t(EXPIRED), &timings()),
        Decision::Acquire(AcquireReason::Expired)
    );
}

#[test]
fn l3_lag_limit_against_the_best_reachable_peer() {
    // c-2 is nofailover (cannot win itself) but 2 MiB ahead: c-1 lost too much to lead.
    let mut obs = expired_obs();
    obs.policy.tags.insert(
        "c-2".into(),
        MemberTags {
            no_failover: true,
            ..MemberTags::default()
        },
    );
    obs.peers[1].report = Some(replica_report(1000 + (2 << 20)));
    ineligible(&obs, Ineligible::TooFarBehind { behind: 2 << 20 });
    obs.peers[1].report = Some(replica_report(1000 + (1 << 20)));
    assert_eq!(
        decide(&obs, t(EXPIRED), &timings()),
        Decision::Acquire(AcquireReason::Expired)
    );
}

#[test]
fn l3_steps_back_for_a_newer_timeline_and_a_running_primary() {
    let mut obs = expired_obs();
    obs.peers[1].report = Some(PgView {
        timeline: Some(2),
        ..replica_report(10)
    });
    ineligible(&obs, Ineligible::OlderTimeline("c-2".into()));
    let mut obs = expired_obs();
    obs.peers[0].report = Some(PgView {
        primary: true,
        ..replica_report(10)
    });
    ineligible(&obs, Ineligible::PrimaryRunning("c-0".into()));
}

#[test]
fn l3_failover_priority_breaks_ties_then_the_name() {
    let mut obs = expired_obs();
    obs.peers[1].report = Some(replica_report(1000));
    // Equal WAL, equal priority: the smaller name (c-1) goes, c-2 would step back.
    assert_eq!(
        decide(&obs, t(EXPIRED), &timings()),
        Decision::Acquire(AcquireReason::Expired)
    );
    obs.policy.tags.insert(
        "c-2".into(),
        MemberTags {
            failover_priority: Some(5),
            ..MemberTags::default()
        },
    );
    ineligible(&obs, Ineligible::PeerAhead("c-2".into()));
}

#[test]
fn l3_sync_mode_only_recorded_synchronous_members() {
    let mut lease = record(Some("c-0"), "10", 1);
    lease.sync_members = Some(vec!["c-2".into()]);
    let mut obs = replica_obs(lease.clone());
    obs.policy.mode = ReplicationMode::Sync;
    ineligible(&obs, Ineligible::NotSynchronous);
    // Recorded: eligible, and the asynchronous c-2 ... is the synchronous one here, so swap roles.
    lease.sync_members = Some(vec!["c-1".into()]);
    obs.lease = Some(lease);
    obs.peers[1].report = Some(replica_report(5000));
    assert_eq!(
        decide(&obs, t(EXPIRED), &timings()),
        Decision::Acquire(AcquireReason::Expired),
        "an asynchronous peer further ahead does not outrank the synchronous member"
    );
    obs.policy.mode = ReplicationMode::StrictSync;
    obs.lease.as_mut().unwrap().sync_members = None;
    ineligible(&obs, Ineligible::NotSynchronous);
}

#[test]
fn l3_sync_mode_a_restarted_holder_without_recorded_standbys_may_reclaim() {
    // The primary ran with no recorded standby (degraded sync) and restarted: only it has every
    // acknowledged commit, so it may confirm; the replicas may not take over.
    let mut lease = record(Some("c-0"), "10", 2);
    lease.sync_members = Some(vec![]);
    let mut holder = replica_obs(lease.clone());
    holder.me = "c-0".into();
    holder.peers = vec![
        peer("c-1", Some(replica_report(1000))),
        peer("c-2", Some(replica_report(1000))),
    ];
    holder.policy.mode = ReplicationMode::Sync;
    assert_eq!(
        decide(&holder, t(1.0), &timings()),
        Decision::Acquire(AcquireReason::Confirm)
    );
    let mut replica = replica_obs(lease);
    replica.policy.mode = ReplicationMode::Sync;
    replica.holder_pod = PodStatus::Gone;
    ineligible(&replica, Ineligible::NotSynchronous);
}

// ---- L4: acquire before promote; a restarted holder confirms first ---------------------------------

#[test]
fn l4_a_restarted_holder_confirms_with_a_write_before_anything() {
    // The Lease names c-0 but this process never wrote it: it must not renew-and-serve on belief.
    let mut obs = holder_obs();
    obs.renewed_sent_at = None;
    obs.local = healthy_replica(1000);
    obs.peers = vec![peer("c-1", None), peer("c-2", None)];
    assert_eq!(
        decide(&obs, t(1.0), &timings()),
        Decision::Acquire(AcquireReason::Confirm)
    );
    // A peer that is equally far along wins the tie: the restarted holder defers to it.
    obs.peers[0].report = Some(replica_report(1000));
    assert_eq!(
        decide(&obs, t(1.0), &timings()),
        follow_none(FollowReason::Ineligible(Ineligible::PeerAhead(
            "c-1".into()
        )))
    );
    // Ahead of every peer (writes they never received): it reclaims rather than lose them.
    obs.local.wal = Some(2000);
    assert_eq!(
        decide(&obs, t(1.0), &timings()),
        Decision::Acquire(AcquireReason::Confirm)
    );
}

#[test]
fn l4_a_handover_target_confirms_then_promotes() {
    let mut lease = record(Some("c-1"), "20", 2);
    lease.handover_to = Some("c-1".into());
    let obs = replica_obs(lease.clone());
    assert_eq!(
        decide(&obs, t(0.5), &timings()),
        Decision::Acquire(AcquireReason::Handover)
    );
    // The others follow the named member while it confirms.
    let mut other = replica_obs(lease);
    other.me = "c-2".into();
    other.local = healthy_replica(1000);
    assert_eq!(
        decide(&other, t(0.5), &timings()),
        Decision::Follow {
            leader: Some("c-1".into()),
            why: FollowReason::HandoverPending
        }
    );
}

#[test]
fn l4_a_primary_without_the_lease_demotes() {
    let mut obs = replica_obs(record(Some("c-2"), "30", 4));
    obs.local = running_primary(1000);
    assert_eq!(
        decide(&obs, t(0.0), &timings()),
        Decision::Demote {
            leader: Some("c-2".into())
        }
    );
    // No holder at all, but a reachable peer runs as primary: not this member's to take back.
    obs.lease = Some(record(None, "30", 4));
    obs.peers[1].report = Some(PgView {
        primary: true,
        ..replica_report(1000)
    });
    assert_eq!(
        decide(&obs, t(0.0), &timings()),
        Decision::Demote { leader: None }
    );
}

// ---- L5: the holder fences itself within renewDeadline ---------------------------------------------

#[test]
fn l5_holder_renews_until_the_deadline_then_fences() {
    let mut obs = holder_obs();
    assert_eq!(decide(&obs, t(4.9), &timings()), Decision::Hold);
    assert_eq!(decide(&obs, t(5.0), &timings()), Decision::Renew);
    assert_eq!(decide(&obs, t(9.9), &timings()), Decision::Renew);
    assert_eq!(decide(&obs, t(10.0), &timings()), Decision::Fence);
    // Also when the Lease cannot be read at all.
    obs.lease = None;
    assert_eq!(decide(&obs, t(9.9), &timings()), Decision::Renew);
    assert_eq!(decide(&obs, t(10.0), &timings()), Decision::Fence);
    // A renewal at t=7 (the second attempt) succeeded: the deadline moves with it.
    obs.renewed_sent_at = Some(t(7.0));
    assert_eq!(decide(&obs, t(10.0), &timings()), Decision::Hold);
    assert_eq!(decide(&obs, t(17.0), &timings()), Decision::Fence);
    // Once fenced (no longer a running primary) it keeps trying to renew.
    obs.local.primary = false;
    assert_eq!(decide(&obs, t(12.0), &timings()), Decision::Renew);
}

#[test]
fn l5_the_holder_is_fenced_before_anyone_may_take_over() {
    // The replica saw the last renewal no earlier than the holder sent it, so the earliest takeover
    // (last change + leaseDuration) comes after the holder's fence (sent + renewDeadline).
    let holder = holder_obs();
    let replica = replica_obs(record(Some("c-0"), "10", 1));
    let first_takeover = (0..400)
        .map(|i| t(f64::from(i) * 0.1))
        .find(|now| matches!(decide(&replica, *now, &timings()), Decision::Acquire(_)))
        .unwrap();
    let first_fence = (0..400)
        .map(|i| t(f64::from(i) * 0.1))
        .find(|now| decide(&holder, *now, &timings()) == Decision::Fence)
        .unwrap();
    assert!(
        first_fence + timings().retry_period < first_takeover,
        "fence {first_fence:?} takeover {first_takeover:?}"
    );
}

#[test]
fn l5_failsafe_keeps_serving_only_when_every_member_confirms() {
    let mut obs = holder_obs();
    obs.lease = None;
    obs.policy.failsafe = true;
    assert_eq!(
        decide(&obs, t(11.0), &timings()),
        Decision::Fence,
        "no confirmation, no failsafe"
    );
    obs.failsafe_confirmed = true;
    assert_eq!(decide(&obs, t(11.0), &timings()), Decision::FailsafeHold);
    assert_eq!(
        decide(&obs, t(5.0), &timings()),
        Decision::FailsafeHold,
        "from the first due renewal without the apiserver, before the watchdog's deadline"
    );
    assert_eq!(decide(&obs, t(1.0), &timings()), Decision::Hold);
    let mut reachable = obs.clone();
    reachable.lease = holder_obs().lease;
    assert_eq!(
        decide(&reachable, t(5.0), &timings()),
        Decision::Renew,
        "a readable Lease is renewed"
    );
    assert_eq!(
        decide(&reachable, t(11.0), &timings()),
        Decision::Fence,
        "a readable Lease that cannot be renewed is no failsafe case"
    );
    obs.policy.failsafe = false;
    assert_eq!(
        decide(&obs, t(11.0), &timings()),
        Decision::Fence,
        "failsafe is opt-in"
    );
}

// ---- L6: timings ----------------------------------------------------------------------------------

#[test]
fn l6_invalid_timings_are_refused_at_start() {
    let bad = HaTimings {
        lease_duration_seconds: 10,
        renew_deadline_seconds: 10,
        retry_period_seconds: 2,
    };
    assert!(Timings::new(&bad).is_err());
    let bad = HaTimings {
        lease_duration_seconds: 15,
        renew_deadline_seconds: 6,
        retry_period_seconds: 5,
    };
    assert!(Timings::new(&bad).is_err());
    let ok = Timings::new(&HaTimings::default()).unwrap();
    assert_eq!(ok.lease_duration, Duration::from_secs(15));
    assert_eq!(ok.renew_deadline, Duration::from_secs(10));
    assert_eq!(ok.retry_period, Duration::from_secs(2));
}

#[test]
fn l6_a_changed_renew_deadline_is_written_before_the_old_one_runs_out() {
    // spec.ha 15/10/2 -> 30/20/5 right after a renewal at t(0): the watchdog still fences at t(10) (the
    // old renewDeadline counts until a write records the new pair), so the holder renews at once rather
    // than at the new interval (t(10)), which left it fenced under load (seen on the local cluster).
    let obs = holder_obs();
    let longer = long_timings();
    assert_eq!(decide(&obs, t(1.0), &longer), Decision::Renew);
    // Written: the new pair is in force and the new interval applies.
    let mut renewed = obs.clone();
    renewed.last_renewal = Some(Renewal {
        sent_at: t(1.0),
        renew_deadline: longer.renew_deadline,
    });
    renewed.renewed_sent_at = Some(t(1.0));
    assert_eq!(decide(&renewed, t(6.0), &longer), Decision::Hold);
    assert_eq!(decide(&renewed, t(11.0), &longer), Decision::Renew);
    // Whatever the timings, the renewal is due while the next loop still comes before the deadline.
    let slow_loop = Timings {
        retry_period: Duration::from_secs(6),
        ..timings()
    };
    assert_eq!(decide(&obs, t(4.1), &slow_loop), Decision::Renew);
    assert_eq!(decide(&obs, t(3.9), &slow_loop), Decision::Hold);
}

#[test]
fn l6_a_shorter_renew_deadline_does_not_shorten_a_renewal_written_under_the_longer_one() {
    // spec.ha 30/20/5 -> 15/10/2, 11 s after a renewal that recorded leaseDurationSeconds 30: others wait
    // 30 s from it, so its own 20 s deadline stands (no fence at 0 + 10); the new pair is written at once.
    let mut obs = holder_obs();
    obs.last_renewal = Some(Renewal {
        sent_at: t(0.0),
        renew_deadline: Duration::from_secs(20),
    });
    assert_eq!(decide(&obs, t(11.0), &timings()), Decision::Renew);
    assert_eq!(decide(&obs, t(20.0), &timings()), Decision::Fence);
}

// ---- L7: the epoch -------------------------------------------------------------------------------

#[test]
fn l7_stale_primary_labels_are_found_for_the_new_holder() {
    let mark = |role: &str, epoch| wanted_mark(role, Some(epoch), false);
    let pods = [
        ("c-0", mark(ROLE_PRIMARY, 3)),
        ("c-1", mark(ROLE_PRIMARY, 4)),
        ("c-2", mark(ROLE_REPLICA, 3)),
    ];
    let stale = stale_primaries(pods.iter().map(|(n, m)| (*n, m)), "c-1", ROLE_PRIMARY);
    assert_eq!(stale, vec!["c-0".to_owned()]);
}

// ---- L8: a dead holder's Lease is taken without waiting for expiry ----------------------------------

#[test]
fn l8_container_restart_or_termination_allows_early_takeover_a_gone_pod_waits_renew_deadline() {
    let mut obs = expired_obs();
    assert!(matches!(
        decide(&obs, t(3.0), &timings()),
        Decision::Follow { .. }
    ));
    for dead in [pod("uid-0", false, 1), pod("uid-0", true, 0)] {
        obs.holder_pod = dead.clone();
        assert_eq!(
            decide(&obs, t(3.0), &timings()),
            Decision::Acquire(AcquireReason::HolderDead),
            "{dead:?}"
        );
    }
    // Gone from the API (or replaced) proves nothing about the processes: wait for the holder's own
    // renewDeadline (and a retry period for the fence to land) since the last change (L5).
    for gone in [pod("uid-new", false, 0), PodStatus::Gone] {
        obs.holder_pod = gone.clone();
        assert_eq!(
            decide(&obs, t(11.9), &timings()),
            Decision::Follow {
                leader: Some("c-0".into()),
                why: FollowReason::NotExpired
            },
            "{gone:?}"
        );
        assert_eq!(
            decide(&obs, t(12.0), &timings()),
            Decision::Acquire(AcquireReason::HolderGone),
            "{gone:?}"
        );
    }
    // Unknown (pods not listed) is no signal: only L2 applies.
    obs.holder_pod = PodStatus::Unknown;
    assert!(matches!(
        decide(&obs, t(3.0), &timings()),
        Decision::Follow { .. }
    ));
}

#[test]
fn l8_a_renewal_after_the_restart_resets_the_baseline() {
    // The holder restarted, then (confirmed and) renewed: the restart is history, not a signal.
    let mut obs = expired_obs();
    let restarted = pod("uid-0", false, 1);
    let renewed = record(Some("c-0"), "11", 1);
    obs.watch.observe(&renewed, &restarted, t(2.0));
    obs.lease = Some(renewed);
    obs.holder_pod = restarted;
    assert!(matches!(
        decide(&obs, t(3.0), &timings()),
        Decision::Follow { .. }
    ));
}

#[test]
fn l8_still_needs_eligibility() {
    let mut obs = expired_obs();
    obs.holder_pod = pod("uid-0", true, 0);
    obs.local.healthy = false;
    assert_eq!(
        decide(&obs, t(3.0), &timings()),
        Decision::Follow {
            leader: Some("c-0".into()),
            why: FollowReason::Ineligible(Ineligible::Unhealthy)
        }
    );
}

#[test]
fn l8_a_restarted_holder_loses_the_tie_to_a_replica() {
    // After a container kill the former holder comes back as a replica with the same WAL: the replica
    // that saw the restart outranks it, so the primary moves.
    let mut obs = expired_obs();
    obs.holder_pod = pod("uid-0", false, 1);
    obs.peers[0].report = Some(replica_report(1000));
    assert_eq!(
        decide(&obs, t(3.0), &timings()),
        Decision::Acquire(AcquireReason::HolderDead)
    );
}

// ---- L9: only changes are written ------------------------------------------------------------------

#[test]
fn l9_role_label_patched_on_change_only() {
    let wanted = wanted_mark(ROLE_REPLICA, Some(4), false);
    assert_eq!(role_patch(&wanted.clone(), &wanted), None);
    assert_eq!(
        role_patch(&RoleMark::default(), &wanted),
        Some(wanted.clone())
    );
    let older = RoleMark {
        epoch: Some(3),
        ..wanted.clone()
    };
    assert_eq!(role_patch(&older, &wanted), Some(wanted));
}

#[test]
fn l9_a_no_load_balance_tag_changes_the_label_once() {
    // A pod labelled before the tag existed (no load-balance label) and one tagged later both get one
    // patch; the label then says "false", which the -ro and -r selectors do not match.
    let balanced = wanted_mark(ROLE_REPLICA, Some(4), false);
    let tagged = wanted_mark(ROLE_REPLICA, Some(4), true);
    assert_eq!(balanced.load_balance.as_deref(), Some("true"));
    assert_eq!(tagged.load_balance.as_deref(), Some("false"));
    let unlabelled = RoleMark {
        load_balance: None,
        ..balanced.clone()
    };
    assert_eq!(role_patch(&unlabelled, &balanced), Some(balanced.clone()));
    assert_eq!(role_patch(&balanced, &tagged), Some(tagged.clone()));
    assert_eq!(role_patch(&tagged, &tagged), None);
}

#[test]
fn l9_the_holder_writes_at_most_once_per_renew_interval() {
    // Simulate a minute of a healthy holder looping every retry period: each Renew is one write,
    // which (succeeding) moves `renewed_sent_at`.
    let mut obs = holder_obs();
    let mut writes = 0;
    for i in 0..30 {
        let now = t(f64::from(i) * 2.0);
        match decide(&obs, now, &timings()) {
            Decision::Renew => {
                writes += 1;
                obs.renewed_sent_at = Some(now);
            }
            Decision::Hold => {}
            other => panic!("{other:?}"),
        }
    }
    assert!(writes <= 12, "{writes} writes in a minute");
    assert!(
        writes >= 9,
        "{writes}: renewals must still come well before the deadline"
    );
    assert_eq!(timings().renew_interval(), Duration::from_secs(5));
}

#[test]
fn l9_followers_decide_nothing_that_writes_in_steady_state() {
    // A follower of a live holder: many loops, never an Acquire (the only write a non-holder makes).
    let obs = replica_obs(record(Some("c-0"), "10", 1));
    for i in 0..70 {
        assert!(!matches!(
            decide(&obs, t(f64::from(i) * 0.2), &timings()),
            Decision::Acquire(_)
        ));
    }
}

// ---- pause ---------------------------------------------------------------------------------------

#[test]
fn pause_holder_keeps_renewing_others_change_nothing() {
    let mut obs = holder_obs();
    obs.policy.paused = true;
    assert_eq!(decide(&obs, t(5.0), &timings()), Decision::Renew);
    assert_eq!(
        decide(&obs, t(10.0), &timings()),
        Decision::Fence,
        "L5 holds in pause too (issue 13 hole 8)"
    );
    let mut obs = replica_obs(record(Some("c-0"), "10", 1));
    obs.policy.paused = true;
    obs.holder_pod = PodStatus::Gone;
    assert_eq!(
        decide(&obs, t(60.0), &timings()),
        Decision::Wait(WaitReason::Paused)
    );
}

// ---- grey failures (issue 13), written against the code before the fixes ---------------------------

#[test]
fn grey_a_running_primary_the_lease_names_reconfirms_after_a_lost_race() {
    // A renewal committed but its reply was lost; the next renewal got 409: this process no longer
    // counts as the confirmed holder, yet the Lease still names it and PostgreSQL is a running primary.
    let mut obs = holder_obs();
    obs.renewed_sent_at = None;
    obs.lease = Some(record(Some("c-0"), "12", 1));
    assert_eq!(
        decide(&obs, t(1.0), &timings()),
        Decision::Acquire(AcquireReason::Confirm),
        "a running primary re-confirms with a conditional write, it never follows"
    );
}

#[test]
fn grey_a_deleted_holder_pod_without_a_terminated_container_waits_renew_deadline() {
    // A pod force-deleted on a partitioned node: the API has no pod, but its PostgreSQL may still
    // accept writes until it fences at renewDeadline.
    let mut obs = expired_obs();
    obs.holder_pod = PodStatus::Gone;
    assert!(
        matches!(decide(&obs, t(3.0), &timings()), Decision::Follow { .. }),
        "{:?}",
        decide(&obs, t(3.0), &timings())
    );
    obs.holder_pod = pod("uid-new", false, 0);
    assert!(matches!(
        decide(&obs, t(3.0), &timings()),
        Decision::Follow { .. }
    ));
}

#[test]
fn grey_a_paused_holder_still_fences_at_the_deadline() {
    let mut obs = holder_obs();
    obs.policy.paused = true;
    assert_eq!(decide(&obs, t(10.0), &timings()), Decision::Fence);
}

#[test]
fn grey_a_running_primary_keeps_its_deadline_across_a_lost_race() {
    // After the 409 the belief is gone but the deadline of the last confirmed renewal is not (L5).
    let mut obs = holder_obs();
    obs.renewed_sent_at = None;
    obs.lease = Some(record(Some("c-0"), "12", 1));
    assert_eq!(decide(&obs, t(10.0), &timings()), Decision::Fence);
    obs.lease = None;
    assert_eq!(
        decide(&obs, t(10.0), &timings()),
        Decision::Fence,
        "also without the apiserver"
    );
}

#[test]
fn grey_a_running_primary_retakes_a_recreated_lease_without_stopping() {
    let mut obs = holder_obs();
    obs.renewed_sent_at = None;
    obs.lease = Some(record(None, "1", 0));
    assert_eq!(
        decide(&obs, t(1.0), &timings()),
        Decision::Acquire(AcquireReason::Reclaim)
    );
}

#[test]
fn grey_a_recorded_system_identifier_forbids_bootstrap() {
    // The Lease was deleted and recreated (transitions 0) while the members with data are unreachable.
    let mut lease = record(None, "1", 0);
    lease.system_id = Some("7412345678901234567".into());
    let mut obs = replica_obs(lease);
    obs.local = PgView::default();
    obs.peers = vec![peer("c-0", None), peer("c-2", None)];
    assert!(
        !matches!(
            decide(&obs, t(1.0), &timings()),
            Decision::Acquire(AcquireReason::Bootstrap)
        ),
        "{:?}",
        decide(&obs, t(1.0), &timings())
    );
}

#[test]
fn grey_a_sole_replica_far_behind_the_last_primary_position_does_not_take_over() {
    // The only other member is unreachable: reachable peers cannot show the lag.
    let mut obs = expired_obs();
    obs.peers = vec![peer("c-0", None)];
    obs.primary_wal_seen = Some(1000 + (4 << 20));
    assert_eq!(
        decide(&obs, t(EXPIRED), &timings()),
        Decision::Follow {
            leader: Some("c-0".into()),
            why: FollowReason::Ineligible(Ineligible::TooFarBehind { behind: 4 << 20 })
        }
    );
    // A restarted member has seen no position: the one the Lease records counts.
    let mut lease = record(Some("c-0"), "10", 1);
    lease.wal_position = Some(1000 + (4 << 20));
    let mut obs = replica_obs(lease);
    obs.peers = vec![peer("c-0", None)];
    assert_eq!(
        decide(&obs, t(EXPIRED), &timings()),
        Decision::Follow {
            leader: Some("c-0".into()),
            why: FollowReason::Ineligible(Ineligible::TooFarBehind { behind: 4 << 20 })
        }
    );
}

#[test]
fn grey_a_replica_that_has_not_streamed_recently_needs_the_recorded_position() {
    let mut lease = record(Some("c-0"), "10", 1);
    lease.wal_position = Some(1100);
    let mut obs = replica_obs(lease);
    obs.peers = vec![peer("c-0", None)];
    obs.streamed_at = None;
    assert_eq!(
        decide(&obs, t(EXPIRED), &timings()),
        Decision::Follow {
            leader: Some("c-0".into()),
            why: FollowReason::Ineligible(Ineligible::NotStreamedRecently)
        }
    );
    // Streamed at t=0: by t=26 s that is longer ago than leaseDuration + renewDeadline.
    obs.streamed_at = Some(t(0.0));
    assert!(matches!(
        decide(&obs, t(26.0), &timings()),
        Decision::Follow { .. }
    ));
    // It has everything the Lease says the primary had: no need to have streamed.
    obs.local.wal = Some(1100);
    assert_eq!(
        decide(&obs, t(26.0), &timings()),
        Decision::Acquire(AcquireReason::Expired)
    );
}

#[test]
fn grey_followers_wait_the_longer_of_their_own_and_the_recorded_lease_duration() {
    let mut lease = record(Some("c-0"), "10", 1);
    lease.lease_duration = Some(Duration::from_secs(30));
    let obs = replica_obs(lease);
    assert!(
        matches!(decide(&obs, t(16.0), &timings()), Decision::Follow { .. }),
        "the holder writes 30 s: 15 s of our own is not enough"
    );
    assert_eq!(
        decide(&obs, t(30.0), &timings()),
        Decision::Acquire(AcquireReason::Expired)
    );
}

#[test]
fn grey_a_longer_renew_deadline_applies_only_from_the_next_write() {
    // The holder switched from 15/10/2 to 30/20/5, but its last write still said 15 s: it must fence
    // by the deadline paired with that write.
    let mut obs = holder_obs();
    let longer = long_timings();
    assert_eq!(decide(&obs, t(10.0), &longer), Decision::Fence);
    obs.last_renewal = Some(Renewal {
        sent_at: t(0.0),
        renew_deadline: longer.renew_deadline,
    });
    assert_eq!(decide(&obs, t(10.0), &longer), Decision::Renew);
}

#[test]
fn grey_failsafe_renews_first_when_the_apiserver_returns() {
    let mut obs = holder_obs();
    obs.policy.failsafe = true;
    obs.failsafe_confirmed = true;
    // The failsafe held at t=9 s (the apiserver gone since t=5 s); it answers again at t=12 s.
    obs.failsafe_held_at = Some(t(9.0));
    assert_eq!(decide(&obs, t(12.0), &timings()), Decision::Renew);
    assert_eq!(
        decide(&obs, t(19.0), &timings()),
        Decision::Fence,
        "the failsafe's deadline"
    );
}

#[test]
fn grey_a_replica_restarts_its_expiry_clock_after_an_outage() {
    let lease = record(Some("c-0"), "10", 1);
    let mut watch = LeaseWatch::default();
    watch.observe(&lease, &PodStatus::Unknown, t(0.0));
    watch.read_failed();
    watch.observe(&lease, &PodStatus::Unknown, t(20.0));
    assert_eq!(watch.unchanged_for(t(21.0)), Duration::from_secs(1));
}

#[test]
fn grey_failover_blocked_names_what_stops_a_replica() {
    let mut obs = replica_obs(record(Some("c-0"), "10", 1));
    assert_eq!(failover_blocked(&obs, t(1.0), &timings()), None);
    obs.primary_wal_seen = Some(1000 + (4 << 20));
    assert_eq!(
        failover_blocked(&obs, t(1.0), &timings()),
        Some(Ineligible::TooFarBehind { behind: 4 << 20 })
    );
    obs.primary_wal_seen = None;
    obs.policy.mode = ReplicationMode::Sync;
    assert_eq!(
        failover_blocked(&obs, t(1.0), &timings()),
        Some(Ineligible::NotSynchronous)
    );
    // Another member ranking higher is no block: it can take over.
    obs.policy.mode = ReplicationMode::Async;
    obs.peers[1].report = Some(replica_report(2000));
    assert_eq!(failover_blocked(&obs, t(1.0), &timings()), None);
    assert_eq!(failover_blocked(&holder_obs(), t(1.0), &timings()), None);
}

#[test]
fn grey_a_pod_that_is_not_a_member_never_races() {
    let mut obs = expired_obs();
    obs.member = false;
    ineligible(&obs, Ineligible::NotAMember);
    let mut fresh = replica_obs(record(None, "1", 0));
    fresh.member = false;
    fresh.local = PgView::default();
    fresh.peers = vec![];
    assert!(!matches!(
        decide(&fresh, t(1.0), &timings()),
        Decision::Acquire(_)
    ));
}

// ---- Manual failover: the Lease rules hold, the candidate is the user's ------------------------------

#[test]
fn manual_failover_waits_for_the_lease_like_any_takeover() {
    // c-0's record is live: no manual failover takes it (L2); once expired, or its container dead (L8),
    // the named candidate takes it.
    let mut obs = expired_obs();
    assert!(matches!(
        manual_failover(&obs, t(5.0), &timings(), false),
        ManualStep::NotYet(_)
    ));
    assert_eq!(
        manual_failover(&obs, t(EXPIRED), &timings(), false),
        ManualStep::Acquire(AcquireReason::Expired)
    );
    obs.holder_pod = pod("uid-0", true, 0);
    assert_eq!(
        manual_failover(&obs, t(5.0), &timings(), false),
        ManualStep::Acquire(AcquireReason::HolderDead)
    );
    // A released Lease is taken at once.
    let released = replica_obs(record(None, "11", 1));
    assert_eq!(
        manual_failover(&released, t(0.5), &timings(), false),
        ManualStep::Acquire(AcquireReason::Released)
    );
}

#[test]
fn manual_failover_overrules_the_rank_and_with_force_what_costs_writes() {
    // c-2 is ahead: automatic failover leaves it to c-2, a manual one to c-1 goes ahead.
    let mut obs = expired_obs();
    obs.peers[1].report = Some(replica_report(1000 + 4096));
    ineligible(&obs, Ineligible::PeerAhead("c-2".into()));
    assert_eq!(
        manual_failover(&obs, t(EXPIRED), &timings(), false),
        ManualStep::Acquire(AcquireReason::Expired)
    );
    // Sync mode, c-1 not recorded synchronous: refused, and the answer says force exists; with force,
    // taken.
    obs.policy.mode = ReplicationMode::Sync;
    let mut rec = record(Some("c-0"), "10", 1);
    rec.sync_members = Some(vec!["c-2".into()]);
    obs.lease = Some(rec);
    let ManualStep::Refused(why) = manual_failover(&obs, t(EXPIRED), &timings(), false) else {
        panic!("a non-synchronous candidate without force");
    };
    assert!(
        why.contains("not a recorded synchronous standby") && why.contains("force"),
        "{why}"
    );
    assert_eq!(
        manual_failover(&obs, t(EXPIRED), &timings(), true),
        ManualStep::Acquire(AcquireReason::Expired)
    );
    // Too far behind: force too.
    obs.policy.mode = ReplicationMode::Async;
    obs.peers[1].report = Some(replica_report(1000 + (4 << 20)));
    assert!(matches!(
        manual_failover(&obs, t(EXPIRED), &timings(), false),
        ManualStep::Refused(_)
    ));
    assert_eq!(
        manual_failover(&obs, t(EXPIRED), &timings(), true),
        ManualStep::Acquire(AcquireReason::Expired)
    );
}

#[test]
fn manual_failover_never_makes_a_second_primary_or_promotes_what_cannot_lead() {
    let at = t(EXPIRED);
    let refused = |obs: &Observation| {
        for force in [false, true] {
            assert!(
                matches!(
                    manual_failover(obs, at, &timings(), force),
                    ManualStep::Refused(_)
                ),
                "force {force}: {obs:?}"
            );
        }
    };
    // Another member still runs as the primary (reachable): never, forced or not.
    let mut obs = expired_obs();
    obs.peers[1].report = Some(running_primary(1000));
    refused(&obs);
    // Unhealthy, tagged noFailover, not a member, paused, already primary.
    let mut obs = expired_obs();
    obs.local.healthy = false;
    refused(&obs);
    let mut obs = expired_obs();
    obs.policy.tags.insert(
        "c-1".into(),
        MemberTags {
            no_failover: true,
            ..MemberTags::default()
        },
    );
    refused(&obs);
    let mut obs = expired_obs();
    obs.member = false;
    refused(&obs);
    let mut obs = expired_obs();
    obs.policy.paused = true;
    refused(&obs);
    let mut obs = expired_obs();
    obs.local = running_primary(1000);
    refused(&obs);
    // A switchover handing the Lease to c-2 is under way.
    let mut obs = expired_obs();
    let mut rec = record(Some("c-2"), "12", 2);
    rec.handover_to = Some("c-2".into());
    obs.watch.observe(&rec, &obs.holder_pod.clone(), t(EXPIRED));
    obs.lease = Some(rec);
    refused(&obs);
}

#[test]
fn eligibility_is_the_first_objection() {
    // The refactor into objections keeps eligibility's answer: the first reason, in the order checked.
    let mut obs = expired_obs();
    obs.policy.mode = ReplicationMode::Sync;
    obs.peers[1].report = Some(running_primary(1000 + (2 << 20)));
    let rec = record(Some("c-0"), "10", 1);
    assert_eq!(eligibility(&obs, &rec), Err(Ineligible::NotSynchronous));
    assert_eq!(
        objections(&obs, &rec),
        vec![
            Ineligible::NotSynchronous,
            Ineligible::PrimaryRunning("c-2".into()),
            Ineligible::TooFarBehind { behind: 2 << 20 },
        ]
    );
}

#[test]
fn a_holder_renewing_and_holding_in_turn_is_logged_once() {
    let follow = Decision::Follow {
        leader: Some("pg-1".into()),
        why: FollowReason::Leader,
    };
    assert!(Decision::Renew.is_news_after(None));
    assert!(!Decision::Hold.is_news_after(Some(&Decision::Renew)));
    assert!(!Decision::Renew.is_news_after(Some(&Decision::Hold)));
    assert!(!follow.is_news_after(Some(&follow.clone())));
    assert!(follow.is_news_after(Some(&Decision::Hold)));
    assert!(Decision::Hold.is_news_after(Some(&follow)));
    assert!(Decision::Fence.is_news_after(Some(&Decision::Renew)));
}
