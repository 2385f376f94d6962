//! Failover as the status reports it: a change of primary (`status.lastFailover` and its Event), and
//! `FailoverBlocked` — whether an automatic failover could happen now, and why not. Pure.

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use pgpilot_crds::{
    PostgresClusterStatus,
    cluster::{FailoverRecord, failover_reason, reason},
    contract::MemberTags,
};

use super::Derived;
use crate::{events::Transition, switchover::SwitchoverOutcome, validate::ValidatedCluster};

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
    let requested = switchover.targets(new);
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

/// `FailoverBlocked`: whether no automatic failover can happen, and why.
pub(super) fn blocked(c: &ValidatedCluster) -> Derived {
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
    (
        false,
        reason::FAILOVER_POSSIBLE,
        "replicas can take over".into(),
    )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::status::{
        compute,
        fixtures::{cluster, healthy, lease, pod, t},
    };

    #[test]
    fn a_failover_is_recorded_and_announced_once() {
        let c = cluster();
        let (first, _) = compute(
            &c,
            &PostgresClusterStatus::default(),
            &healthy(),
            &SwitchoverOutcome::None,
            t(0),
        );
        // pg-0 dies: no primary for a while.
        let mut gap = healthy();
        gap.pods.remove(0);
        gap.lease = Some(lease(Some("pg-0"), 4));
        let (during, events) = compute(&c, &first, &gap, &SwitchoverOutcome::None, t(10));
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
        let (s, events) = compute(&c, &during, &after, &SwitchoverOutcome::None, t(20));
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
        let (again, events) = compute(&c, &s, &after, &SwitchoverOutcome::None, t(30));
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
}
