//! Rolling updates: a changed pod template reaches every member, one replica at a time and the primary
//! last (docs/design.md, "Changing a running cluster").
//!
//! The StatefulSet updates on delete only, so the operator decides which pod goes next. [`plan`] (pure)
//! reads the observation: a member is *updated* when its pod carries the StatefulSet's update revision
//! and its PostgreSQL does not report `pending_restart` (unless `postgresql.onPendingRestart: manual`).
//! 1. Nothing while the cluster scales, while a switchover is under way, or while paused.
//! 2. Every member must have a pod that is not terminating, and every updated member must be healthy
//!    (Ready, running, streaming within `maximumLagOnFailover` or serving as the primary); one that
//!    does not come back within [`STALL_AFTER`] stops the roll for good, with a condition, until it does.
//! 3. Outdated replicas go one at a time, highest ordinal first, those not recorded synchronous before
//!    those that are — each only while every other member is healthy. A replica that has not been Ready
//!    for [`STUCK_AFTER`] does not block the others and goes first: the new template may be its fix.
//! 4. Then the primary: `supervised` waits for a switchover in the spec; `switchover` hands over to the
//!    best updated replica ([`crate::scale::target`]) and the former primary is rolled as a replica;
//!    `restart` deletes the primary's pod.
//!
//! [`carry_out`] deletes the chosen pod (with its uid as a precondition, so a pod recreated meanwhile is
//! left alone) and names the step in `Progressing` and in an Event.

use std::time::Duration;

use k8s_openapi::{api::core::v1::Pod, jiff::Timestamp};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, Preconditions},
};
use pgpilot_crds::{
    PostgresClusterStatus,
    cluster::{OnPendingRestart, PrimaryUpdateMethod, PrimaryUpdateStrategy, condition, reason},
    contract::{self, ROLE_PRIMARY, ROLE_REPLICA},
};
use tracing::{info, warn};

use crate::{
    conditions::find_condition, events::Transition, status::Observed, validate::ValidatedCluster,
};

/// An updated member that is not healthy this long after its pod was created stops the roll.
pub const STALL_AFTER: Duration = Duration::from_secs(300);
/// An outdated replica not Ready for this long no longer holds the roll up: it is updated first.
pub const STUCK_AFTER: Duration = Duration::from_secs(60);

/// The next step of a rolling update.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Roll {
    /// Every member runs the current template (or the StatefulSet reports no revision yet).
    Current,
    /// Not now, and why.
    Wait(String),
    /// An updated member did not come back: the roll goes no further.
    Stalled { member: String, why: String },
    /// Delete this member's pod now.
    Restart {
        member: String,
        uid: Option<String>,
        primary: bool,
    },
    /// `supervised`: only the primary is outdated; it waits for a switchover in the spec.
    Supervised { primary: String },
    /// `switchover`: only the primary is outdated; it hands over first.
    HandOver { primary: String },
}

/// The roll's next step with what `Progressing` and `status.updatedInstances` show.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub roll: Roll,
    /// Members on an older template, by name.
    pub outdated: Vec<String>,
    /// Members whose pod runs the current template.
    pub updated: i32,
    /// Members (pods observed).
    pub members: i32,
}

impl Plan {
    /// The primary the roll asks to hand over.
    pub fn leaving_primary(&self) -> Option<&str> {
        match &self.roll {
            Roll::HandOver { primary } => Some(primary),
            _ => None,
        }
    }

    /// Whether a roll is under way: the reconcile looks again soon.
    pub fn rolling(&self) -> bool {
        self.roll != Roll::Current
    }

    /// The start of every `Progressing` message of the roll.
    pub fn head(&self) -> String {
        format!(
            "rolling update: {}/{} members updated",
            self.updated, self.members
        )
    }

    /// `Progressing`'s reason and message while rolling; `None` when current.
    pub fn note(&self, why_no_target: Option<&str>) -> Option<(&'static str, String)> {
        let head = self.head();
        let (why, tail) = match &self.roll {
            Roll::Current => return None,
            Roll::Wait(w) => (reason::ROLLING_UPDATE, w.clone()),
            Roll::Stalled { member, why } => (
                reason::ROLLING_UPDATE_STALLED,
                format!("{member} does not come back ({why}); the roll stops until it does"),
            ),
            Roll::Restart { member, .. } => (reason::ROLLING_UPDATE, format!("updating {member}")),
            Roll::Supervised { primary } => (
                reason::UPDATE_PENDING,
                format!(
                    "the primary {primary} is the last on an older template: set spec.switchover.targetInstance to an updated member (primaryUpdateStrategy: supervised)"
                ),
            ),
            Roll::HandOver { primary } => (
                reason::ROLLING_UPDATE,
                match why_no_target {
                    Some(w) => format!("{primary} is the primary and must hand over first: {w}"),
                    None => format!("{primary} is the primary: switching over before updating it"),
                },
            ),
        };
        Some((why, format!("{head}: {tail}")))
    }
}

fn ready_since(pod: &Pod) -> Option<(bool, Option<Timestamp>)> {
    let c = pod
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")?;
    Some((
        c.status == "True",
        c.last_transition_time.as_ref().map(|t| t.0),
    ))
}

fn age(since: Option<Timestamp>, now: Timestamp) -> Duration {
    since.map_or(Duration::ZERO, |s| {
        Duration::try_from(now.duration_since(s)).unwrap_or_default()
    })
}

/// Why a member is not healthy for the roll, `None` when it is: its pod Ready, its sidecar reporting
/// `running`, and either the primary that serves or a replica streaming within the lag limit.
fn unhealthy(
    c: &ValidatedCluster,
    obs: &Observed,
    primary: Option<&str>,
    pod: &Pod,
) -> Option<String> {
    let name = pod.name_any();
    if pod.metadata.deletion_timestamp.is_some() {
        return Some("its pod is terminating".into());
    }
    if !ready_since(pod).is_some_and(|(ready, _)| ready) {
        return Some("its pod is not Ready".into());
    }
    let Some(r) = obs.reports.get(&name) else {
        return Some("its sidecar does not answer".into());
    };
    if r.state != "running" {
        return Some(format!("PostgreSQL is {}", r.state));
    }
    if primary == Some(name.as_str()) {
        return (r.role != ROLE_PRIMARY).then(|| format!("it holds the Lease as {}", r.role));
    }
    if r.role != ROLE_REPLICA {
        return Some(format!("it runs as {} without serving", r.role));
    }
    if r.replication_state.as_deref() != Some("streaming") {
        return Some("it does not stream".into());
    }
    let limit = c.sidecar_config.replication.maximum_lag_on_failover_bytes;
    match r.pgpilot.lag_bytes {
        Some(lag) if lag > limit => Some(format!("it lags {lag} bytes behind (limit {limit})")),
        _ => None,
    }
}

/// Decides the next step of the roll. `scaling`: a scale step is under way; `switchover_busy`: a
/// switchover (the spec's or the operator's own) is in flight.
pub fn plan(
    c: &ValidatedCluster,
    obs: &Observed,
    scaling: bool,
    switchover_busy: bool,
    now: Timestamp,
) -> Plan {
    let revision = obs
        .statefulset
        .as_ref()
        .and_then(|s| s.status.as_ref())
        .and_then(|s| s.update_revision.clone());
    // Updated: on the current template, and not waiting for a restart to apply a parameter (unless
    // the user restarts those members).
    let roll_pending = c.spec.postgresql.on_pending_restart == OnPendingRestart::Roll;
    let on_current = |p: &Pod| {
        let template = revision.as_deref().is_none_or(|rev| {
            p.labels()
                .get("controller-revision-hash")
                .map(String::as_str)
                == Some(rev)
        });
        let pending = roll_pending
            && obs
                .reports
                .get(&p.name_any())
                .is_some_and(|r| r.pending_restart);
        template && !pending
    };
    let outdated: Vec<&Pod> = obs.pods.iter().filter(|p| !on_current(p)).collect();
    let mut out = Plan {
        roll: Roll::Current,
        outdated: outdated.iter().map(|p| p.name_any()).collect(),
        updated: i32::try_from(obs.pods.len() - outdated.len()).unwrap_or(i32::MAX),
        members: i32::try_from(obs.pods.len()).unwrap_or(i32::MAX),
    };
    if outdated.is_empty() {
        return out;
    }
    out.roll = decide(
        c,
        obs,
        &outdated,
        &on_current,
        scaling,
        switchover_busy,
        now,
    );
    out
}

fn decide(
    c: &ValidatedCluster,
    obs: &Observed,
    outdated: &[&Pod],
    on_current: &dyn Fn(&Pod) -> bool,
    scaling: bool,
    switchover_busy: bool,
    now: Timestamp,
) -> Roll {
    if scaling {
        return Roll::Wait("waiting until the scale-down is done".into());
    }
    if c.spec.paused {
        return Roll::Wait("paused (spec.paused): no member is restarted".into());
    }
    if switchover_busy {
        return Roll::Wait("waiting for the switchover under way".into());
    }
    let want = u32::try_from(c.spec.instances).unwrap_or(0);
    for o in 0..want {
        let name = format!("{}-{o}", c.name);
        if obs.pod(&name).is_none() {
            return Roll::Wait(format!("waiting until {name} has a pod"));
        }
    }
    let Some(primary) = obs.primary() else {
        return Roll::Wait("waiting for a primary".into());
    };
    let health = |p: &Pod| unhealthy(c, obs, Some(&primary), p);
    // Updated members first: one that does not come back stops everything.
    for p in obs.pods.iter().filter(|p| on_current(p)) {
        if let Some(why) = health(p) {
            let created = p.metadata.creation_timestamp.as_ref().map(|t| t.0);
            let name = p.name_any();
            return if age(created, now) >= STALL_AFTER {
                Roll::Stalled { member: name, why }
            } else {
                Roll::Wait(format!("waiting until {name} is back: {why}"))
            };
        }
    }
    let stuck = |p: &Pod| {
        ready_since(p).is_none_or(|(ready, since)| !ready && age(since, now) >= STUCK_AFTER)
    };
    let sync = obs.sync_members();
    let ordinal = |p: &Pod| contract::member_ordinal(&c.name, &p.name_any()).unwrap_or(0);
    let mut replicas: Vec<&Pod> = outdated
        .iter()
        .copied()
        .filter(|p| p.name_any() != primary)
        .collect();
    // Stuck first, then not recorded synchronous, then the highest ordinal.
    replicas.sort_by_key(|p| {
        (
            !stuck(p),
            sync.contains(&p.name_any()),
            std::cmp::Reverse(ordinal(p)),
        )
    });
    if let Some(next) = replicas.first() {
        let name = next.name_any();
        // Every other member healthy (a stuck outdated one aside), and this one too unless stuck.
        let blocker = obs
            .pods
            .iter()
            .filter(|p| p.name_any() != name && (on_current(p) || !stuck(p)))
            .find_map(|p| health(p).map(|why| (p.name_any(), why)))
            .or_else(|| {
                (!stuck(next))
                    .then(|| health(next).map(|why| (name.clone(), why)))
                    .flatten()
            });
        return match blocker {
            Some((m, why)) => Roll::Wait(format!("waiting until {m} is healthy: {why}")),
            None => Roll::Restart {
                member: name,
                uid: next.metadata.uid.clone(),
                primary: false,
            },
        };
    }
    // Only the primary is left.
    match (c.spec.primary_update_strategy, c.spec.primary_update_method) {
        (PrimaryUpdateStrategy::Supervised, _) => Roll::Supervised { primary },
        (PrimaryUpdateStrategy::Unsupervised, PrimaryUpdateMethod::Switchover) => {
            Roll::HandOver { primary }
        }
        (PrimaryUpdateStrategy::Unsupervised, PrimaryUpdateMethod::Restart) => Roll::Restart {
            uid: obs.pod(&primary).and_then(|p| p.metadata.uid.clone()),
            member: primary,
            primary: true,
        },
    }
}

/// The Events of the roll's state changing: stalled, waiting for a supervised switchover, done.
pub fn transitions(prev: &PostgresClusterStatus, plan: &Plan) -> Vec<Transition> {
    let was = find_condition(prev, condition::PROGRESSING).map(|c| c.reason.as_str());
    let rolled = matches!(
        was,
        Some(reason::ROLLING_UPDATE | reason::ROLLING_UPDATE_STALLED | reason::UPDATE_PENDING)
    );
    match &plan.roll {
        Roll::Current if rolled => vec![Transition::RollingUpdateDone {
            members: plan.members,
        }],
        Roll::Stalled { member, why } if was != Some(reason::ROLLING_UPDATE_STALLED) => {
            vec![Transition::RollingUpdateStalled {
                member: member.clone(),
                why: why.clone(),
            }]
        }
        Roll::Supervised { primary } if was != Some(reason::UPDATE_PENDING) => {
            vec![Transition::PrimaryUpdatePending {
                primary: primary.clone(),
            }]
        }
        _ => Vec::new(),
    }
}

/// Deletes the pod [`plan`] chose (IO); returns the Event, or why the delete failed.
pub async fn carry_out(
    client: &Client,
    c: &ValidatedCluster,
    plan: &Plan,
) -> Result<Vec<Transition>, String> {
    let Roll::Restart {
        member,
        uid,
        primary,
    } = &plan.roll
    else {
        return Ok(Vec::new());
    };
    let pods = Api::<Pod>::namespaced(client.clone(), &c.namespace);
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: uid.clone(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match pods.delete(member, &params).await {
        Ok(_) => {
            info!(%member, primary, "rolling update: pod deleted to come back on the current template");
            Ok(vec![Transition::MemberUpdating {
                member: member.clone(),
                primary: *primary,
            }])
        }
        // Gone or replaced meanwhile: the next look sees the new pod.
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(Vec::new()),
        Err(e) => {
            warn!(%member, error = %e, "rolling update: deleting the pod failed");
            Err(format!("deleting {member}'s pod failed: {e}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use pgpilot_crds::cluster::ReplicationModeSpec;

    use super::*;
    use crate::status::fixtures::{cluster, healthy, report, t};

    const OLD: &str = "rev-1";
    const NEW: &str = "rev-2";

    /// pg-0 primary, pg-1 and pg-2 streaming replicas, every pod Ready since t(0) on revision `OLD`; the
    /// StatefulSet's update revision is `NEW`.
    fn rolling() -> Observed {
        let mut obs = healthy();
        obs.statefulset
            .as_mut()
            .unwrap()
            .status
            .as_mut()
            .unwrap()
            .update_revision = Some(NEW.into());
        for p in &mut obs.pods {
            p.metadata.uid = Some(format!("uid-{}", p.name_any()));
            p.metadata.creation_timestamp = Some(Time(t(0)));
            p.labels_mut()
                .insert("controller-revision-hash".into(), OLD.into());
            for cond in p.status.as_mut().unwrap().conditions.as_mut().unwrap() {
                cond.last_transition_time = Some(Time(t(0)));
            }
        }
        for name in ["pg-1", "pg-2"] {
            let mut r = report("replica", 2, 0x1_0000_0000, Some(96));
            r.replication_state = Some("streaming".into());
            obs.reports.insert(name.into(), r);
        }
        obs
    }

    fn update(obs: &mut Observed, name: &str, created: i64) {
        let p = obs.pods.iter_mut().find(|p| p.name_any() == name).unwrap();
        p.labels_mut()
            .insert("controller-revision-hash".into(), NEW.into());
        p.metadata.creation_timestamp = Some(Time(t(created)));
        p.metadata.uid = Some(format!("uid-{name}-new"));
    }

    fn not_ready(obs: &mut Observed, name: &str, since: i64) {
        let p = obs.pods.iter_mut().find(|p| p.name_any() == name).unwrap();
        for cond in p.status.as_mut().unwrap().conditions.as_mut().unwrap() {
            cond.status = "False".into();
            cond.last_transition_time = Some(Time(t(since)));
        }
    }

    fn restart(member: &str, primary: bool) -> Roll {
        Roll::Restart {
            member: member.into(),
            uid: Some(format!("uid-{member}")),
            primary,
        }
    }

    #[test]
    fn a_current_cluster_has_nothing_to_roll() {
        let mut obs = rolling();
        for n in ["pg-0", "pg-1", "pg-2"] {
            update(&mut obs, n, 0);
        }
        let p = plan(&cluster(), &obs, false, false, t(10));
        assert_eq!((p.roll, p.updated, p.members), (Roll::Current, 3, 3));
        // Before the StatefulSet reports a revision, nothing is judged outdated.
        let mut obs = rolling();
        obs.statefulset
            .as_mut()
            .unwrap()
            .status
            .as_mut()
            .unwrap()
            .update_revision = None;
        assert_eq!(
            plan(&cluster(), &obs, false, false, t(10)).roll,
            Roll::Current
        );
    }

    #[test]
    fn replicas_go_one_at_a_time_highest_first_and_the_primary_last() {
        let c = cluster();
        let mut obs = rolling();
        let p = plan(&c, &obs, false, false, t(10));
        assert_eq!(p.roll, restart("pg-2", false));
        assert_eq!(p.outdated, ["pg-0", "pg-1", "pg-2"]);
        // pg-2 came back but is not streaming yet: pg-1 waits.
        update(&mut obs, "pg-2", 20);
        obs.reports.get_mut("pg-2").unwrap().replication_state = Some("catchup".into());
        let p = plan(&c, &obs, false, false, t(30));
        assert!(
            matches!(&p.roll, Roll::Wait(w) if w.contains("pg-2") && w.contains("stream")),
            "{p:?}"
        );
        assert_eq!(p.updated, 1);
        // Streaming, but lagging past the limit: still waits.
        obs.reports.get_mut("pg-2").unwrap().replication_state = Some("streaming".into());
        obs.reports.get_mut("pg-2").unwrap().pgpilot.lag_bytes = Some(64 * 1024 * 1024);
        assert!(
            matches!(plan(&c, &obs, false, false, t(30)).roll, Roll::Wait(w) if w.contains("lags"))
        );
        obs.reports.get_mut("pg-2").unwrap().pgpilot.lag_bytes = Some(0);
        assert_eq!(
            plan(&c, &obs, false, false, t(30)).roll,
            restart("pg-1", false)
        );
        // Both replicas updated: the primary hands over (unsupervised, switchover: the defaults).
        update(&mut obs, "pg-1", 40);
        let p = plan(&c, &obs, false, false, t(50));
        assert_eq!(
            p.roll,
            Roll::HandOver {
                primary: "pg-0".into()
            }
        );
        assert_eq!(p.leaving_primary(), Some("pg-0"));
        assert!(p.note(None).unwrap().1.contains("2/3 members updated"));
    }

    #[test]
    fn a_replica_recorded_synchronous_goes_after_the_others() {
        let mut c = cluster();
        c.spec.replication.mode = ReplicationModeSpec::Sync;
        let mut obs = rolling();
        obs.lease.as_mut().unwrap().metadata.annotations = Some(
            [(
                contract::ANNOTATION_SYNC_MEMBERS.to_owned(),
                "pg-2".to_owned(),
            )]
            .into(),
        );
        assert_eq!(
            plan(&c, &obs, false, false, t(10)).roll,
            restart("pg-1", false)
        );
    }

    #[test]
    fn the_roll_waits_for_scaling_switchovers_pauses_missing_pods_and_a_primary() {
        let mut c = cluster();
        let obs = rolling();
        let wait = |p: Plan| matches!(p.roll, Roll::Wait(_));
        assert!(wait(plan(&c, &obs, true, false, t(10))));
        assert!(wait(plan(&c, &obs, false, true, t(10))));
        let mut gone = obs.clone();
        gone.pods.remove(1);
        assert!(
            matches!(plan(&c, &gone, false, false, t(10)).roll, Roll::Wait(w) if w.contains("pg-1"))
        );
        let mut headless = obs.clone();
        headless.lease = None;
        assert!(wait(plan(&c, &headless, false, false, t(10))));
        c.spec.paused = true;
        assert!(
            matches!(plan(&c, &obs, false, false, t(10)).roll, Roll::Wait(w) if w.contains("paused"))
        );
    }

    #[test]
    fn a_member_that_does_not_come_back_stops_the_roll_before_the_primary() {
        let c = cluster();
        let mut obs = rolling();
        update(&mut obs, "pg-2", 100);
        update(&mut obs, "pg-1", 100);
        not_ready(&mut obs, "pg-1", 100);
        // Within the stall time it waits; past it, stalled — never the primary.
        let before = 100 + i64::try_from(STALL_AFTER.as_secs()).unwrap() - 1;
        assert!(matches!(
            plan(&c, &obs, false, false, t(before)).roll,
            Roll::Wait(_)
        ));
        let p = plan(&c, &obs, false, false, t(before + 1));
        assert!(
            matches!(&p.roll, Roll::Stalled { member, .. } if member == "pg-1"),
            "{p:?}"
        );
        let (why, message) = p.note(None).unwrap();
        assert_eq!(why, reason::ROLLING_UPDATE_STALLED);
        assert!(message.contains("pg-1 does not come back"), "{message}");
        // The Event fires once, on entering the stall.
        let events = transitions(&PostgresClusterStatus::default(), &p);
        assert!(
            matches!(&events[..], [Transition::RollingUpdateStalled { member, .. }] if member == "pg-1")
        );
    }

    #[test]
    fn an_outdated_replica_stuck_unready_goes_first_and_does_not_block() {
        let c = cluster();
        let mut obs = rolling();
        // pg-1 has not been Ready for a while (its old template is the trouble): it is updated first,
        // although pg-2 has the higher ordinal.
        not_ready(&mut obs, "pg-1", 0);
        let stuck = i64::try_from(STUCK_AFTER.as_secs()).unwrap();
        assert_eq!(
            plan(&c, &obs, false, false, t(stuck)).roll,
            restart("pg-1", false)
        );
        // Not Ready for a short while only: the roll waits for it.
        assert!(
            matches!(plan(&c, &obs, false, false, t(stuck - 1)).roll, Roll::Wait(w) if w.contains("pg-1"))
        );
    }

    #[test]
    fn the_primary_waits_when_supervised_and_is_deleted_with_restart() {
        let mut c = cluster();
        let mut obs = rolling();
        update(&mut obs, "pg-1", 0);
        update(&mut obs, "pg-2", 0);
        c.spec.primary_update_strategy = PrimaryUpdateStrategy::Supervised;
        let p = plan(&c, &obs, false, false, t(10));
        assert_eq!(
            p.roll,
            Roll::Supervised {
                primary: "pg-0".into()
            }
        );
        assert_eq!(p.note(None).unwrap().0, reason::UPDATE_PENDING);
        assert_eq!(p.leaving_primary(), None);
        c.spec.primary_update_strategy = PrimaryUpdateStrategy::Unsupervised;
        c.spec.primary_update_method = PrimaryUpdateMethod::Restart;
        assert_eq!(
            plan(&c, &obs, false, false, t(10)).roll,
            restart("pg-0", true)
        );
    }

    #[test]
    fn a_parameter_pending_a_restart_is_rolled_unless_manual() {
        let mut c = cluster();
        let mut obs = rolling();
        for n in ["pg-0", "pg-1", "pg-2"] {
            update(&mut obs, n, 0);
            obs.reports.get_mut(n).unwrap().pending_restart = true;
        }
        let p = plan(&c, &obs, false, false, t(10));
        assert_eq!(p.updated, 0);
        assert!(
            matches!(&p.roll, Roll::Restart { member, primary: false, .. } if member == "pg-2"),
            "{p:?}"
        );
        // Restarted replicas no longer report it: the primary hands over last.
        for n in ["pg-1", "pg-2"] {
            obs.reports.get_mut(n).unwrap().pending_restart = false;
        }
        assert_eq!(
            plan(&c, &obs, false, false, t(10)).roll,
            Roll::HandOver {
                primary: "pg-0".into()
            }
        );
        c.spec.postgresql.on_pending_restart = OnPendingRestart::Manual;
        let p = plan(&c, &obs, false, false, t(10));
        assert_eq!((p.roll, p.updated), (Roll::Current, 3));
    }

    #[test]
    fn the_end_of_a_roll_is_announced_once() {
        let mut prev = PostgresClusterStatus::default();
        let current = Plan {
            roll: Roll::Current,
            outdated: Vec::new(),
            updated: 3,
            members: 3,
        };
        assert!(transitions(&prev, &current).is_empty());
        prev.conditions
            .push(k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
                type_: condition::PROGRESSING.into(),
                reason: reason::ROLLING_UPDATE.into(),
                status: "True".into(),
                message: String::new(),
                observed_generation: None,
                last_transition_time: Time(t(0)),
            });
        assert_eq!(
            transitions(&prev, &current),
            [Transition::RollingUpdateDone { members: 3 }]
        );
    }
}
