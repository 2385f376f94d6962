//! Step 5 of the reconcile: observe and write the status.
//!
//! [`observe`] (IO, reads only) reads what exists. [`compute`] (pure) derives the new status and the
//! transitions worth an Event from the previous status and that observation; conditions keep their
//! `lastTransitionTime` unless their status changed. [`write`] (IO) patches the status subresource only
//! when it differs from the stored one, ignoring timestamps.
//!
//! By concern: [`observe`] (what is read), [`members`] (`status.members`), [`health`] (phase, `Ready`,
//! `Progressing`, `Degraded`, `Paused`), [`failover`] (`lastFailover`, `FailoverBlocked`).

mod failover;
#[cfg(test)]
pub(crate) mod fixtures;
mod health;
mod members;
mod observe;

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use pgpilot_crds::{
    PostgresCluster, PostgresClusterStatus,
    cluster::{condition, phase, reason},
    contract::{FIELD_MANAGER, LABEL_CLUSTER},
};
use serde_json::json;

pub use self::{
    members::format_lsn,
    observe::{Observed, REPORT_TIMEOUT, observe, sync_record},
};
use crate::{
    conditions::{find_condition, set_condition},
    events::Transition,
    scale::Progress,
    switchover::SwitchoverOutcome,
    validate::ValidatedCluster,
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading {kind} of the cluster")]
    Read {
        kind: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("patching the status")]
    Patch(#[source] kube::Error),
}

impl Error {
    pub fn category(&self) -> String {
        match self {
            Self::Read { kind, .. } => format!("Read{kind}Failed"),
            Self::Patch(_) => "StatusPatchFailed".into(),
        }
    }
}

/// One condition as derived: `(status, reason, message)`.
type Derived = (bool, &'static str, String);

/// Two statuses are equal but for the times in them (condition transitions, the last failover's time).
pub fn eq_time_insensitive(a: &PostgresClusterStatus, b: &PostgresClusterStatus) -> bool {
    let strip = |s: &PostgresClusterStatus| {
        let mut s = s.clone();
        for c in &mut s.conditions {
            c.last_transition_time = Time(Timestamp::UNIX_EPOCH);
        }
        if let Some(f) = s.last_failover.as_mut() {
            f.time = Time(Timestamp::UNIX_EPOCH);
        }
        s
    };
    strip(a) == strip(b)
}

/// Whether `next` differs from `prev` only in what moves with every transaction: the members' LSNs and
/// lag. The operator writes such changes at most every [`crate::memo::VOLATILE_STATUS_EVERY`]
/// (docs/design.md L9 in spirit: live WAL positions are the REST API's job, not the apiserver's).
pub fn only_volatile_changes(prev: &PostgresClusterStatus, next: &PostgresClusterStatus) -> bool {
    let strip = |s: &PostgresClusterStatus| {
        let mut s = s.clone();
        for m in &mut s.members {
            m.lsn = None;
            m.lag_bytes = None;
        }
        s
    };
    !eq_time_insensitive(prev, next) && eq_time_insensitive(&strip(prev), &strip(next))
}

/// The status of a cluster whose spec failed validation: `Ready=False` with the reason, the rest kept.
pub fn invalid(
    prev: &PostgresClusterStatus,
    generation: Option<i64>,
    message: String,
    now: Timestamp,
) -> PostgresClusterStatus {
    let mut s = prev.clone();
    s.phase = Some(phase::INVALID.into());
    s.observed_generation = generation;
    set_condition(
        &mut s.conditions,
        condition::READY,
        false,
        reason::INVALID_SPEC,
        message,
        generation,
        now,
    );
    s
}

/// Derives the status from the previous one and what was observed; returns it with the transitions
/// worth an Event.
pub fn compute(
    c: &ValidatedCluster,
    prev: &PostgresClusterStatus,
    obs: &Observed,
    switchover: &SwitchoverOutcome,
    scale: &Progress,
    now: Timestamp,
) -> (PostgresClusterStatus, Vec<Transition>) {
    let generation = c.generation;
    let members = members::members(obs);
    let n = health::Counts {
        ready: i32::try_from(members.iter().filter(|m| m.ready).count()).unwrap_or(i32::MAX),
        existing: obs
            .statefulset
            .as_ref()
            .and_then(|s| s.status.as_ref())
            .map(|s| s.replicas)
            .unwrap_or_else(|| i32::try_from(obs.pods.len()).unwrap_or(i32::MAX)),
        want: c.spec.instances,
    };
    let primary = obs.primary();
    let last_primary = primary.clone().or_else(|| prev.last_primary.clone());
    let timeline = primary
        .as_ref()
        .and_then(|p| obs.reports.get(p))
        .and_then(|r| r.timeline)
        .map(i64::from);
    let (last_failover, change) =
        failover::change_of_primary(prev, primary.as_deref(), switchover, now);
    let hibernation = scale.hibernation.as_ref().map(|(r, m)| (*r, m.as_str()));
    let phase = if hibernation.is_some_and(|(r, _)| r == reason::HIBERNATED) {
        phase::HIBERNATED
    } else {
        health::phase(
            primary.is_some(),
            last_primary.is_some(),
            obs.statefulset.is_some() || !obs.pods.is_empty(),
            n,
        )
    };

    let failover_blocked = failover::blocked(c, obs, prev);
    let refusals: Vec<(String, String)> = obs
        .reports
        .iter()
        .filter_map(|(m, r)| Some((m.clone(), r.pgpilot.refusal.clone()?)))
        .collect();
    let degraded = health::degraded(phase, n, &refusals);
    let ready = health::ready(phase, n, primary.as_deref());
    let ready_reason = ready.1;
    let mut conditions = prev.conditions.clone();
    for (type_, (status, why, message)) in [
        (condition::READY, ready),
        (
            condition::PROGRESSING,
            health::progressing(
                phase,
                n,
                scale.note.as_deref(),
                scale.rolling.as_ref().map(|(r, m)| (*r, m.as_str())),
                hibernation,
            ),
        ),
        (condition::DEGRADED, degraded.clone()),
        (condition::FAILOVER_BLOCKED, failover_blocked.clone()),
        (condition::SWITCHOVER_IN_PROGRESS, switchover.condition()),
        (condition::PAUSED, health::paused(c)),
    ] {
        set_condition(
            &mut conditions,
            type_,
            status,
            why,
            message,
            generation,
            now,
        );
    }

    // Events on transitions only.
    let mut events: Vec<Transition> = change.into_iter().collect();
    events.extend(health::transitions(
        prev,
        phase,
        ready_reason,
        n,
        c.spec.paused,
    ));
    events.extend(failover::blocked_transition(prev, &failover_blocked));
    let was_refusing = find_condition(prev, condition::DEGRADED)
        .is_some_and(|c| c.reason == reason::MEMBER_REFUSING && c.message == degraded.2);
    if degraded.1 == reason::MEMBER_REFUSING && !was_refusing {
        events.push(Transition::MemberRefusing {
            message: degraded.2.clone(),
        });
    }

    let status = PostgresClusterStatus {
        phase: Some(phase.into()),
        primary,
        last_primary,
        timeline: timeline.or(prev.timeline),
        epoch: obs.epoch(),
        system_identifier: obs
            .system_identifier()
            .map(str::to_owned)
            .or_else(|| prev.system_identifier.clone()),
        instances: n.existing,
        ready_instances: n.ready,
        updated_instances: scale.updated,
        selector: Some(format!("{LABEL_CLUSTER}={}", c.name)),
        members,
        last_failover,
        planned_switchover: scale.planned.clone(),
        hibernation: prev.hibernation.clone(),
        conditions,
        observed_generation: generation,
    };
    (status, events)
}

/// Writes `status` unless it equals the stored one apart from timestamps.
pub async fn write(
    api: &Api<PostgresCluster>,
    name: &str,
    prev: &PostgresClusterStatus,
    status: &PostgresClusterStatus,
) -> Result<bool, Error> {
    if eq_time_insensitive(prev, status) {
        return Ok(false);
    }
    let patch =
        json!({"apiVersion": "pgpilot.io/v1alpha1", "kind": "PostgresCluster", "status": status});
    api.patch_status(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(Error::Patch)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::{
        fixtures::{cluster, cond, healthy, lease, pod, report, sts, t},
        *,
    };

    #[test]
    fn a_healthy_cluster_is_running_and_reports_its_members() {
        let (s, events) = compute(
            &cluster(),
            &PostgresClusterStatus::default(),
            &healthy(),
            &SwitchoverOutcome::None,
            &Progress::default(),
            t(0),
        );
        assert_eq!(s.phase.as_deref(), Some("Running"));
        assert_eq!(s.primary.as_deref(), Some("pg-0"));
        assert_eq!(
            (s.timeline, s.epoch, s.instances, s.ready_instances),
            (Some(2), Some(4), 3, 3)
        );
        assert_eq!(s.selector.as_deref(), Some("pgpilot.io/cluster=pg"));
        assert_eq!(s.observed_generation, Some(1));
        assert_eq!(s.members[0].lsn.as_deref(), Some("1/60"));
        assert_eq!(s.members[1].lag_bytes, Some(96));
        assert_eq!(s.members[2].state, "unreachable", "no report from pg-2");
        assert_eq!(
            s.members[2].role, "replica",
            "role from the pod label when the sidecar is silent"
        );
        assert_eq!(cond(&s, "Ready").status, "True");
        assert_eq!(cond(&s, "Degraded").status, "False");
        assert_eq!(cond(&s, "Progressing").status, "False");
        assert_eq!(cond(&s, "FailoverBlocked").status, "False");
        assert_eq!(cond(&s, "Paused").status, "False");
        assert!(events.contains(&Transition::Created));
        assert!(events.contains(&Transition::PrimaryElected {
            member: "pg-0".into()
        }));
        assert!(events.contains(&Transition::Ready {
            ready: 3,
            instances: 3
        }));
    }

    #[test]
    fn a_member_refusing_its_data_degrades_the_cluster_and_is_announced_once() {
        let mut obs = healthy();
        let why = "this member's data belongs to database system 1, the cluster's is 2";
        if let Some(r) = obs.reports.get_mut("pg-1") {
            r.pgpilot.refusal = Some(why.into());
        }
        let (s, events) = compute(
            &cluster(),
            &PostgresClusterStatus::default(),
            &obs,
            &SwitchoverOutcome::None,
            &Progress::default(),
            t(0),
        );
        let d = cond(&s, "Degraded");
        assert_eq!(
            (d.status.as_str(), d.reason.as_str()),
            ("True", "MemberRefusing")
        );
        assert_eq!(d.message, format!("pg-1: {why}"));
        assert!(events.contains(&Transition::MemberRefusing {
            message: format!("pg-1: {why}")
        }));
        let (_, again) = compute(
            &cluster(),
            &s,
            &obs,
            &SwitchoverOutcome::None,
            &Progress::default(),
            t(10),
        );
        assert!(
            !again
                .iter()
                .any(|e| matches!(e, Transition::MemberRefusing { .. })),
            "Events on transitions only"
        );
    }

    #[test]
    fn a_holder_without_the_primary_label_is_not_the_primary() {
        let mut obs = healthy();
        obs.pods[0] = pod("pg-0", Some("replica"), true);
        let (s, _) = compute(
            &cluster(),
            &PostgresClusterStatus::default(),
            &obs,
            &SwitchoverOutcome::None,
            &Progress::default(),
            t(0),
        );
        assert_eq!(s.primary, None);
        assert_eq!(s.phase.as_deref(), Some("Creating"));
        assert_eq!(cond(&s, "Ready").status, "False");
    }

    #[test]
    fn new_pods_without_sidecars_are_creating() {
        let obs = Observed {
            statefulset: Some(sts(3)),
            pods: vec![
                pod("pg-0", None, false),
                pod("pg-1", None, false),
                pod("pg-2", None, false),
            ],
            lease: Some(lease(None, 0)),
            reports: BTreeMap::new(),
        };
        let (s, events) = compute(
            &cluster(),
            &PostgresClusterStatus::default(),
            &obs,
            &SwitchoverOutcome::None,
            &Progress::default(),
            t(0),
        );
        assert_eq!(s.phase.as_deref(), Some("Creating"));
        assert_eq!((s.instances, s.ready_instances, s.members.len()), (3, 0, 3));
        assert!(
            s.members
                .iter()
                .all(|m| m.role == "unknown" && m.state == "unreachable" && !m.ready)
        );
        assert_eq!(cond(&s, "Progressing").reason, "Creating");
        assert_eq!(events, [Transition::Created]);
    }

    #[test]
    fn conditions_keep_their_transition_time_until_they_flip() {
        let c = cluster();
        let (a, _) = compute(
            &c,
            &PostgresClusterStatus::default(),
            &healthy(),
            &SwitchoverOutcome::None,
            &Progress::default(),
            t(0),
        );
        let (b, events) = compute(
            &c,
            &a,
            &healthy(),
            &SwitchoverOutcome::None,
            &Progress::default(),
            t(50),
        );
        assert!(eq_time_insensitive(&a, &b));
        assert_eq!(a, b, "nothing changed: identical, times included");
        assert!(events.is_empty(), "{events:?}");
        let mut obs = healthy();
        obs.pods[2] = pod("pg-2", Some("replica"), false);
        let (d, _) = compute(
            &c,
            &b,
            &obs,
            &SwitchoverOutcome::None,
            &Progress::default(),
            t(60),
        );
        assert_eq!(d.phase.as_deref(), Some("Degraded"));
        assert_eq!(cond(&d, "Ready").last_transition_time, Time(t(60)));
        assert_eq!(cond(&d, "Paused").last_transition_time, Time(t(0)));
        assert!(!eq_time_insensitive(&b, &d));
    }

    #[test]
    fn scaling_is_progressing() {
        let mut c = cluster();
        c.spec.instances = 5;
        let (s, _) = compute(
            &c,
            &PostgresClusterStatus::default(),
            &healthy(),
            &SwitchoverOutcome::None,
            &Progress::default(),
            t(0),
        );
        assert_eq!(cond(&s, "Progressing").reason, "Scaling");
        assert_eq!(s.phase.as_deref(), Some("Degraded"));
    }

    #[test]
    fn a_rolling_update_is_progressing_with_its_count_of_updated_members() {
        let mut obs = healthy();
        obs.statefulset
            .as_mut()
            .unwrap()
            .status
            .as_mut()
            .unwrap()
            .update_revision = Some("pg-new".into());
        for (pod, rev) in obs.pods.iter_mut().zip(["pg-old", "pg-new", "pg-old"]) {
            pod.metadata
                .labels
                .as_mut()
                .unwrap()
                .insert("controller-revision-hash".into(), rev.into());
        }
        let c = cluster();
        let roll = crate::rollout::plan(&c, &obs, false, false, t(0));
        let progress = Progress {
            rolling: roll.note(None),
            updated: roll.updated,
            ..Progress::default()
        };
        let (s, _) = compute(
            &c,
            &PostgresClusterStatus::default(),
            &obs,
            &SwitchoverOutcome::None,
            &progress,
            t(0),
        );
        let p = cond(&s, "Progressing");
        assert_eq!(
            (p.status.as_str(), p.reason.as_str()),
            ("True", "RollingUpdate")
        );
        assert!(
            p.message
                .starts_with("rolling update: 1/3 members updated: "),
            "{}",
            p.message
        );
        assert_eq!(s.updated_instances, 1);
        assert_eq!(
            s.phase.as_deref(),
            Some("Running"),
            "a rolling update does not make the cluster unready"
        );
    }

    #[test]
    fn a_hibernated_cluster_says_so_and_a_hibernating_one_is_progressing() {
        let c = cluster();
        let was_running = compute(
            &c,
            &PostgresClusterStatus::default(),
            &healthy(),
            &SwitchoverOutcome::None,
            &Progress::default(),
            t(0),
        )
        .0;
        let stopping = crate::hibernation::Stage::Stopped;
        let progress = Progress {
            hibernation: stopping.note(false),
            ..Progress::default()
        };
        let (s, _) = compute(
            &c,
            &was_running,
            &healthy(),
            &SwitchoverOutcome::None,
            &progress,
            t(1),
        );
        let p = cond(&s, "Progressing");
        assert_eq!(
            (p.status.as_str(), p.reason.as_str()),
            ("True", "Hibernating")
        );
        let gone = Observed {
            statefulset: Some(sts(0)),
            pods: Vec::new(),
            lease: Some(lease(None, 4)),
            reports: BTreeMap::new(),
        };
        let progress = Progress {
            hibernation: stopping.note(true),
            ..Progress::default()
        };
        let (s, events) = compute(&c, &s, &gone, &SwitchoverOutcome::None, &progress, t(2));
        assert_eq!(s.phase.as_deref(), Some("Hibernated"));
        let (r, p, d) = (
            cond(&s, "Ready"),
            cond(&s, "Progressing"),
            cond(&s, "Degraded"),
        );
        assert_eq!(
            (r.status.as_str(), r.reason.as_str()),
            ("False", "Hibernated")
        );
        assert_eq!(
            (p.status.as_str(), p.reason.as_str()),
            ("False", "Hibernated")
        );
        assert_eq!(
            (d.status.as_str(), d.reason.as_str()),
            ("False", "Hibernated")
        );
        assert!(
            !events
                .iter()
                .any(|e| matches!(e, Transition::FailoverObserved { .. })),
            "{events:?}"
        );
        assert_eq!(s.last_primary.as_deref(), Some("pg-0"), "kept for the wake");
    }

    #[test]
    fn wal_positions_alone_are_volatile() {
        let c = cluster();
        let (a, _) = compute(
            &c,
            &PostgresClusterStatus::default(),
            &healthy(),
            &SwitchoverOutcome::None,
            &Progress::default(),
            t(0),
        );
        let mut moved = healthy();
        moved
            .reports
            .insert("pg-0".into(), report("primary", 2, 0x1_0000_9000, None));
        moved.reports.insert(
            "pg-1".into(),
            report("replica", 2, 0x1_0000_8000, Some(4096)),
        );
        let (b, _) = compute(
            &c,
            &a,
            &moved,
            &SwitchoverOutcome::None,
            &Progress::default(),
            t(10),
        );
        assert!(only_volatile_changes(&a, &b));
        assert!(
            !only_volatile_changes(&a, &a),
            "no change at all is not a volatile change"
        );
        let mut unready = moved.clone();
        unready.pods[2] = pod("pg-2", Some("replica"), false);
        let (d, _) = compute(
            &c,
            &a,
            &unready,
            &SwitchoverOutcome::None,
            &Progress::default(),
            t(20),
        );
        assert!(!only_volatile_changes(&a, &d), "readiness is not volatile");
    }

    #[test]
    fn invalid_spec_keeps_observations_and_sets_ready_false() {
        let (ok, _) = compute(
            &cluster(),
            &PostgresClusterStatus::default(),
            &healthy(),
            &SwitchoverOutcome::None,
            &Progress::default(),
            t(0),
        );
        let s = invalid(
            &ok,
            Some(2),
            "instances must be between 1 and 9, got 12".into(),
            t(5),
        );
        assert_eq!(s.phase.as_deref(), Some("Invalid"));
        assert_eq!(s.primary.as_deref(), Some("pg-0"));
        let r = cond(&s, "Ready");
        assert_eq!(
            (r.status.as_str(), r.reason.as_str()),
            ("False", "InvalidSpec")
        );
        assert!(r.message.contains("got 12"));
        assert_eq!(r.observed_generation, Some(2));
    }

    /// Issue 13, hole 4: the status remembers the data's system identifier across the loss of the Lease.
    #[test]
    fn the_system_identifier_is_read_from_the_lease_and_kept_without_it() {
        let c = cluster();
        let mut obs = healthy();
        let (none, _) = compute(
            &c,
            &PostgresClusterStatus::default(),
            &obs,
            &SwitchoverOutcome::None,
            &Progress::default(),
            t(0),
        );
        assert_eq!(none.system_identifier, None);
        obs.lease.as_mut().unwrap().metadata.annotations = Some(BTreeMap::from([(
            pgpilot_crds::contract::ANNOTATION_SYSTEM_ID.to_owned(),
            "7412345678901234567".to_owned(),
        )]));
        let (known, _) = compute(
            &c,
            &none,
            &obs,
            &SwitchoverOutcome::None,
            &Progress::default(),
            t(10),
        );
        assert_eq!(
            known.system_identifier.as_deref(),
            Some("7412345678901234567")
        );
        obs.lease = None;
        let (kept, _) = compute(
            &c,
            &known,
            &obs,
            &SwitchoverOutcome::None,
            &Progress::default(),
            t(20),
        );
        assert_eq!(
            kept.system_identifier.as_deref(),
            Some("7412345678901234567"),
            "the Lease is gone, the identifier stays"
        );
        obs.lease = Some(lease(None, 0));
        let (recreated, _) = compute(
            &c,
            &kept,
            &obs,
            &SwitchoverOutcome::None,
            &Progress::default(),
            t(30),
        );
        assert_eq!(
            recreated.system_identifier.as_deref(),
            Some("7412345678901234567"),
            "a Lease without the annotation does not erase it"
        );
    }
}
