//! Failover as the status reports it: a change of primary (`status.lastFailover` and its Event), and
//! `FailoverBlocked` — whether an automatic failover could happen now, and why not. Pure.

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use pgpilot_crds::{
    PostgresClusterStatus,
    cluster::{FailoverRecord, condition, failover_reason, reason},
    contract::MemberTags,
};

use super::{Derived, Observed};
use crate::{
    conditions::find_condition, events::Transition, switchover::SwitchoverOutcome,
    validate::ValidatedCluster,
};

/// The `lastFailover` after this reconcile and the Event of a change of primary, if any. A change is named
/// after the member it came from even across a spell without a primary, and is a switchover when it went
/// where the spec's switchover asked.
pub(super) fn change_of_primary(
    prev: &PostgresClusterStatus,
    primary: Option<&str>,
    switchover: &SwitchoverOutcome,
    now: Timestamp,
) -> (Option<FailoverRecord>, Option<Transition>) {
    let Some(new) = primary else {
        return (prev.last_failover.clone(), None);
    };
    let Some(old) = prev.last_primary.as_deref() else {
        return (
            prev.last_failover.clone(),
            Some(Transition::PrimaryElected {
                member: new.to_owned(),
            }),
        );
    };
    if new == old {
        return (prev.last_failover.clone(), None);
    }
    let (from, to) = (old.to_owned(), new.to_owned());
    // Asked for through the spec, or by the operator itself before a scale-down removed the primary.
    let requested = switchover.targets(new)
        || prev
            .planned_switchover
            .as_ref()
            .is_some_and(|p| p.from == old && p.to == new);
    let record = FailoverRecord {
        time: Time(now),
        from: from.clone(),
        to: to.clone(),
        reason: if requested {
            failover_reason::SWITCHOVER
        } else {
            failover_reason::FAILOVER
        }
        .into(),
    };
    let event = if requested {
        Transition::SwitchoverCompleted { from, to }
    } else {
        Transition::FailoverObserved { from, to }
    };
    (Some(record), Some(event))
}

/// What a person can do about a blocked failover, appended to its reasons.
const MANUAL_HINT: &str = " (should the primary fail, POST /failover with a candidate, and \"force\": true if it must lose writes, overrules this)";

/// `FailoverBlocked`: whether no automatic failover can happen, and why. First what the spec says
/// (paused, one member, `noFailover` tags), then what the replicas say: once the cluster has had a
/// primary, when every member other than the primary whose sidecar answered reports why it may not take
/// over now (`failover_blocked`: lag beyond the limit, not a recorded synchronous standby, ...), the
/// condition names each with its reason. Members that did not answer are not counted either way; with
/// none answering the replicas say nothing. The elections themselves decide per member (docs/design.md L3);
/// this only makes a cluster that cannot fail over visible before it needs to.
pub(super) fn blocked(
    c: &ValidatedCluster,
    obs: &Observed,
    prev: &PostgresClusterStatus,
) -> Derived {
    if c.spec.paused {
        return (true, reason::PAUSED, "spec.paused is set".into());
    }
    if c.spec.instances == 1 {
        return (
            true,
            reason::SINGLE_INSTANCE,
            "one member: there is no replica to fail over to".into(),
        );
    }
    let tags = &c.sidecar_config.tags;
    let eligible = (0..c.spec.instances)
        .map(|i| format!("{}-{i}", c.name))
        .filter(|m| tags.get(m).is_none_or(MemberTags::may_fail_over));
    if eligible.count() < 2 {
        return (
            true,
            reason::NO_FAILOVER_CANDIDATE,
            "at most one member may be promoted (noFailover tags)".into(),
        );
    }
    let primary = obs.primary();
    if primary.is_some() || prev.last_primary.is_some() {
        let replicas: Vec<(&str, Option<&str>)> = obs
            .reports
            .iter()
            .filter(|(name, _)| Some(name.as_str()) != primary.as_deref())
            .map(|(name, r)| {
                let why = r.pgpilot.failover_blocked.as_deref();
                (name.as_str(), why.filter(|w| !w.is_empty()))
            })
            .collect();
        let reasons: Vec<String> = replicas
            .iter()
            .filter_map(|(name, why)| Some(format!("{name}: {}", (*why)?)))
            .collect();
        if !replicas.is_empty() && reasons.len() == replicas.len() {
            return (
                true,
                reason::NO_ELIGIBLE_REPLICA,
                format!(
                    "no replica may take over: {}{MANUAL_HINT}",
                    reasons.join("; ")
                ),
            );
        }
    }
    (
        false,
        reason::FAILOVER_POSSIBLE,
        "replicas can take over".into(),
    )
}

/// The Event of `FailoverBlocked` after [`blocked`] derived `now`: when no replica may take over any
/// more, and when one may again. The spec's own reasons (paused, one member, tags) are not announced
/// here: they change only with the spec, and pausing has its own Event.
pub(super) fn blocked_transition(
    prev: &PostgresClusterStatus,
    now: &Derived,
) -> Option<Transition> {
    let was = find_condition(prev, condition::FAILOVER_BLOCKED).map(|c| c.reason.as_str());
    let (_, why, message) = now;
    match (was, *why) {
        (Some(reason::NO_ELIGIBLE_REPLICA), reason::NO_ELIGIBLE_REPLICA) => None,
        (_, reason::NO_ELIGIBLE_REPLICA) => Some(Transition::FailoverBlocked {
            message: message.clone(),
        }),
        (Some(reason::NO_ELIGIBLE_REPLICA), reason::FAILOVER_POSSIBLE) => {
            Some(Transition::FailoverPossible)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::{
        scale::Progress,
        status::{
            compute,
            fixtures::{cluster, cond, healthy, lease, pod, report, t},
        },
    };

    #[test]
    fn the_operators_own_switchover_is_a_switchover_not_a_failover() {
        let planned = crate::status::fixtures::planned("pg-2", "pg-0", 0);
        let prev = PostgresClusterStatus {
            last_primary: Some("pg-2".into()),
            planned_switchover: Some(planned),
            ..PostgresClusterStatus::default()
        };
        let (record, event) =
            change_of_primary(&prev, Some("pg-0"), &SwitchoverOutcome::None, t(5));
        assert_eq!(record.unwrap().reason, "Switchover");
        assert!(matches!(
            event,
            Some(Transition::SwitchoverCompleted { .. })
        ));
        // Another member taking over is still a failover.
        let (record, event) =
            change_of_primary(&prev, Some("pg-1"), &SwitchoverOutcome::None, t(5));
        assert_eq!(record.unwrap().reason, "Failover");
        assert!(matches!(event, Some(Transition::FailoverObserved { .. })));
    }

    #[test]
    fn a_failover_is_recorded_and_announced_once() {
        let c = cluster();
        let (first, _) = compute(
            &c,
            &PostgresClusterStatus::default(),
            &healthy(),
            &SwitchoverOutcome::None,
            &Progress::default(),
            t(0),
        );
        // pg-0 dies: no primary for a while.
        let mut gap = healthy();
        gap.pods.remove(0);
        gap.lease = Some(lease(Some("pg-0"), 4));
        let (during, events) = compute(
            &c,
            &first,
            &gap,
            &SwitchoverOutcome::None,
            &Progress::default(),
            t(10),
        );
        assert_eq!(during.phase.as_deref(), Some("NoPrimary"));
        assert_eq!(during.last_primary.as_deref(), Some("pg-0"));
        assert_eq!(
            crate::conditions::find_condition(&during, "Degraded")
                .unwrap()
                .reason,
            "NoPrimary"
        );
        assert!(events.contains(&Transition::NotReady {
            reason: "NoPrimary".into()
        }));
        // pg-1 takes over.
        let mut after = gap.clone();
        after.pods[0] = pod("pg-1", Some("primary"), true);
        after.lease = Some(lease(Some("pg-1"), 5));
        let (s, events) = compute(
            &c,
            &during,
            &after,
            &SwitchoverOutcome::None,
            &Progress::default(),
            t(20),
        );
        let f = s.last_failover.clone().unwrap();
        assert_eq!(
            (f.from.as_str(), f.to.as_str(), f.reason.as_str()),
            ("pg-0", "pg-1", "Failover")
        );
        assert_eq!(f.time, Time(t(20)));
        assert_eq!(s.epoch, Some(5));
        assert!(events.contains(&Transition::FailoverObserved {
            from: "pg-0".into(),
            to: "pg-1".into()
        }));
        let (again, events) = compute(
            &c,
            &s,
            &after,
            &SwitchoverOutcome::None,
            &Progress::default(),
            t(30),
        );
        assert!(
            !events
                .iter()
                .any(|e| matches!(e, Transition::FailoverObserved { .. })),
            "{events:?}"
        );
        assert_eq!(again.last_failover.unwrap().time, Time(t(20)));
    }

    #[test]
    fn failover_blocked_reasons() {
        let mut c = cluster();
        let (obs, prev) = (healthy(), PostgresClusterStatus::default());
        let blocked = |c: &ValidatedCluster| blocked(c, &obs, &prev);
        assert!(!blocked(&c).0);
        c.spec.paused = true;
        assert_eq!(blocked(&c).1, "Paused");
        c.spec.paused = false;
        let tag = |nf| MemberTags {
            no_failover: nf,
            ..Default::default()
        };
        c.sidecar_config.tags =
            BTreeMap::from([("pg-1".into(), tag(true)), ("pg-2".into(), tag(true))]);
        assert_eq!(blocked(&c).1, "NoFailoverCandidate");
        c.spec.instances = 1;
        assert_eq!(blocked(&c).1, "SingleInstance");
    }

    /// `pg-1` answers with `why`, `pg-2` with `pg2` (`None`: it does not answer at all).
    fn replicas_say(why: Option<&str>, pg2: Option<Option<&str>>) -> Observed {
        let mut obs = healthy();
        let mut r1 = report("replica", 2, 0x1_0000_0000, Some(96));
        r1.pgpilot.failover_blocked = why.map(Into::into);
        obs.reports.insert("pg-1".into(), r1);
        if let Some(w) = pg2 {
            let mut r2 = report("replica", 2, 0x1_0000_0000, Some(96));
            r2.pgpilot.failover_blocked = w.map(Into::into);
            obs.reports.insert("pg-2".into(), r2);
        }
        obs
    }

    /// Issue 13, hole 5: a cluster whose replicas all refuse to take over says so before the primary fails.
    #[test]
    fn failover_is_blocked_when_every_answering_replica_says_why() {
        let c = cluster();
        let fresh = PostgresClusterStatus::default();
        let (running, _) = compute(
            &c,
            &fresh,
            &healthy(),
            &SwitchoverOutcome::None,
            &Progress::default(),
            t(0),
        );
        assert_eq!(cond(&running, "FailoverBlocked").status, "False");

        // pg-1 is too far behind and pg-2 does not answer: nobody who answered may take over.
        let lagging = replicas_say(Some("lag 5242880 B beyond maximumLagOnFailover"), None);
        let (s, events) = compute(
            &c,
            &running,
            &lagging,
            &SwitchoverOutcome::None,
            &Progress::default(),
            t(10),
        );
        let b = cond(&s, "FailoverBlocked");
        assert_eq!(
            (b.status.as_str(), b.reason.as_str()),
            ("True", "NoEligibleReplica")
        );
        assert_eq!(
            b.message,
            format!(
                "no replica may take over: pg-1: lag 5242880 B beyond maximumLagOnFailover{MANUAL_HINT}"
            )
        );
        assert_eq!(b.last_transition_time, Time(t(10)));
        assert!(
            events.contains(&Transition::FailoverBlocked {
                message: b.message.clone()
            }),
            "{events:?}"
        );
        let (again, events) = compute(
            &c,
            &s,
            &lagging,
            &SwitchoverOutcome::None,
            &Progress::default(),
            t(20),
        );
        assert!(
            !events
                .iter()
                .any(|e| matches!(e, Transition::FailoverBlocked { .. })),
            "one Event per transition: {events:?}"
        );

        // Both answer, both blocked: both are named.
        let both = replicas_say(
            Some("lag 5242880 B beyond maximumLagOnFailover"),
            Some(Some("not a recorded synchronous standby")),
        );
        let (s2, _) = compute(
            &c,
            &again,
            &both,
            &SwitchoverOutcome::None,
            &Progress::default(),
            t(30),
        );
        assert_eq!(
            cond(&s2, "FailoverBlocked").message,
            format!(
                "no replica may take over: pg-1: lag 5242880 B beyond maximumLagOnFailover; \
                 pg-2: not a recorded synchronous standby{MANUAL_HINT}"
            )
        );

        // One replica may: not blocked, and that is announced.
        let one_may = replicas_say(Some("lag"), Some(None));
        let (s3, events) = compute(
            &c,
            &s2,
            &one_may,
            &SwitchoverOutcome::None,
            &Progress::default(),
            t(40),
        );
        let b = cond(&s3, "FailoverBlocked");
        assert_eq!(
            (b.status.as_str(), b.reason.as_str()),
            ("False", "FailoverPossible")
        );
        assert!(events.contains(&Transition::FailoverPossible), "{events:?}");
    }

    #[test]
    fn silence_and_a_new_cluster_do_not_block_failover() {
        let c = cluster();
        let fresh = PostgresClusterStatus::default();
        // No replica answered: nothing is known about them.
        let mut silent = healthy();
        silent.reports.remove("pg-1");
        assert!(!blocked(&c, &silent, &fresh).0);
        // Members still creating the cluster (never a primary) report reasons that are no news.
        let mut creating = replicas_say(Some("no primary yet"), Some(Some("no primary yet")));
        creating.lease = Some(lease(None, 0));
        creating.reports.remove("pg-0");
        assert!(!blocked(&c, &creating, &fresh).0);
        // Once there was a primary, replicas that all refuse block failover even while there is none
        // (pg-0, the primary, is gone).
        let had = PostgresClusterStatus {
            last_primary: Some("pg-0".into()),
            ..fresh
        };
        assert_eq!(blocked(&c, &creating, &had).1, "NoEligibleReplica");
    }
}
