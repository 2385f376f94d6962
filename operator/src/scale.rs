//! Scale-down without an unplanned failover: the StatefulSet loses one member at a time, never the
//! primary's pod and never a member the synchronous record still names.
//!
//! The ConfigMap tells the sidecars the new `instances` at once, so members with an ordinal at or above
//! it stop counting (docs/design.md L3): the primary moves the synchronous role off them in L3's order.
//! The StatefulSet's `replicas` follows one step at a time, as [`plan`] (pure) decides from [`Shape`],
//! read just before the apply by [`read`]:
//! 1. the pod removed last is gone;
//! 2. the Lease holder stays (its ordinal is below `instances`): otherwise the operator asks it to switch
//!    over to a member that stays ([`target`]; a recorded synchronous one in the sync modes) and waits;
//! 3. the Lease's synchronous record names no member that leaves;
//! 4. then the highest member goes.
//!
//! Growing is not held: the new members join as replicas.

use k8s_openapi::{
    api::{apps::v1::StatefulSet, coordination::v1::Lease, core::v1::Pod},
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::Timestamp,
};
use kube::{Api, Client};
use pgpilot_crds::{
    PostgresClusterStatus,
    cluster::PlannedSwitchover,
    contract::{self, ROLE_REPLICA},
};
use tracing::{info, warn};

use crate::{
    events::Transition,
    status::{Observed, sync_record},
    switchover::{self, COMPLETION_TIMEOUT},
    validate::ValidatedCluster,
};

/// What the shrink decision reads, just before the apply.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Shape {
    /// The StatefulSet's `spec.replicas`; `None` before it exists.
    pub replicas: Option<i32>,
    /// The pod of ordinal `replicas` (the one removed last) still exists, terminating or not.
    pub removed_pod_exists: bool,
    /// The Lease holder.
    pub holder: Option<String>,
    /// The Lease's synchronous record.
    pub sync_members: Vec<String>,
}

/// Why a scale-down waits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hold {
    /// The member removed last still has a pod.
    Terminating { member: String },
    /// No member holds the Lease: nobody can move the synchronous role or hand over.
    NoPrimary,
    /// The primary's pod would be removed: it switches over first.
    PrimaryLeaves { primary: String },
    /// The synchronous record still names a member that leaves.
    SyncLeaves { member: String },
}

/// What the apply does with the StatefulSet's size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Not shrinking: the StatefulSet gets `spec.instances`.
    Steady,
    /// The highest member goes now.
    Remove { member: String },
    /// The StatefulSet keeps its size.
    Hold(Hold),
}

impl Step {
    /// The StatefulSet's `replicas` to apply.
    pub fn replicas(&self, shape: &Shape, want: i32) -> i32 {
        match (self, shape.replicas) {
            (Self::Steady, _) | (_, None) => want,
            (Self::Remove { .. }, Some(current)) => current - 1,
            (Self::Hold(_), Some(current)) => current,
        }
    }

    /// The primary that must hand over before the shrink goes on.
    pub fn leaving_primary(&self) -> Option<&str> {
        match self {
            Self::Hold(Hold::PrimaryLeaves { primary }) => Some(primary),
            _ => None,
        }
    }
}

fn ordinal(cluster: &str, member: &str) -> Option<i32> {
    contract::member_ordinal(cluster, member).and_then(|o| i32::try_from(o).ok())
}

/// Decides the StatefulSet's next size toward `want` members.
pub fn plan(cluster: &str, want: i32, shape: &Shape) -> Step {
    let Some(current) = shape.replicas else {
        return Step::Steady;
    };
    if want >= current {
        return Step::Steady;
    }
    if shape.removed_pod_exists {
        return Step::Hold(Hold::Terminating {
            member: format!("{cluster}-{current}"),
        });
    }
    let Some(holder) = shape.holder.as_deref() else {
        return Step::Hold(Hold::NoPrimary);
    };
    match ordinal(cluster, holder) {
        None => return Step::Hold(Hold::NoPrimary),
        Some(o) if o >= want => {
            return Step::Hold(Hold::PrimaryLeaves {
                primary: holder.to_owned(),
            });
        }
        Some(_) => {}
    }
    if let Some(m) = shape
        .sync_members
        .iter()
        .find(|m| ordinal(cluster, m).is_none_or(|o| o >= want))
    {
        return Step::Hold(Hold::SyncLeaves { member: m.clone() });
    }
    Step::Remove {
        member: format!("{cluster}-{}", current - 1),
    }
}

/// The member a leaving primary hands over to: one that stays (ordinal below `instances`), runs as a
/// streaming replica and may fail over; in the sync modes one the synchronous record names. Among those,
/// the one with the most WAL received, then the lowest ordinal. `Err` says why there is none.
pub fn target(c: &ValidatedCluster, obs: &Observed) -> Result<String, String> {
    let want = c.spec.instances;
    let sync = obs.sync_members();
    let tags = c.spec.tags.as_ref();
    let mut best: Option<(u64, i32, &str)> = None;
    for (name, report) in &obs.reports {
        let Some(o) = ordinal(&c.name, name).filter(|o| *o < want) else {
            continue;
        };
        let fit = report.role == ROLE_REPLICA
            && report.state == "running"
            && report.replication_state.as_deref() == Some("streaming")
            && !tags
                .and_then(|t| t.get(name))
                .is_some_and(|t| t.no_failover)
            && (!c.sync_mode() || sync.iter().any(|s| s == name));
        if !fit {
            continue;
        }
        let received = report
            .xlog
            .as_ref()
            .and_then(|x| x.received_location.or(x.replayed_location))
            .unwrap_or(0);
        if best.is_none_or(|(r, bo, _)| received > r || (received == r && o < bo)) {
            best = Some((received, o, name));
        }
    }
    best.map(|(_, _, n)| n.to_owned()).ok_or_else(|| {
        if c.sync_mode() {
            format!("no streaming synchronous standby with an ordinal below {want} to hand over to")
        } else {
            format!("no streaming replica with an ordinal below {want} to hand over to")
        }
    })
}

/// The operator's own switchover still in flight: asked of the primary that still holds, not older than
/// the switchover timeout.
pub fn in_flight<'a>(
    prev: &'a PostgresClusterStatus,
    primary: &str,
    now: Timestamp,
) -> Option<&'a PlannedSwitchover> {
    prev.planned_switchover.as_ref().filter(|p| {
        p.from == primary
            && now.duration_since(p.requested_at.0).unsigned_abs() < COMPLETION_TIMEOUT
    })
}

/// The operator's own switchover whose change of primary the status has not reported yet (it still
/// names the member asked to hand over as the last primary), not older than the switchover timeout.
fn unreported(prev: &PostgresClusterStatus, now: Timestamp) -> Option<&PlannedSwitchover> {
    in_flight(prev, prev.last_primary.as_deref()?, now)
}

/// The `Progressing` message of a shrink that waits or goes on (`None` when not shrinking).
pub fn note(step: &Step, existing: i32, want: i32, why_no_target: Option<&str>) -> Option<String> {
    let head = format!("{existing} members, scaling to {want}");
    let tail = match step {
        Step::Steady => return None,
        Step::Remove { member } => format!("removing {member}"),
        Step::Hold(Hold::Terminating { member }) => format!("waiting until {member} is gone"),
        Step::Hold(Hold::NoPrimary) => "waiting for a primary before removing a member".into(),
        Step::Hold(Hold::PrimaryLeaves { primary }) => match why_no_target {
            Some(why) => format!("{primary} is the primary and must hand over first: {why}"),
            None => format!("{primary} is the primary: switching over before removing it"),
        },
        Step::Hold(Hold::SyncLeaves { member }) => {
            format!("waiting until the primary no longer records {member} as synchronous")
        }
    };
    Some(format!("{head}: {tail}"))
}

/// Where a shrink or a roll stands after this reconcile: the operator's own switchover in flight (kept
/// in `status.plannedSwitchover`), the `Progressing` notes of both and the members updated.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Progress {
    pub planned: Option<PlannedSwitchover>,
    /// The shrink's note ([`note`]).
    pub note: Option<String>,
    /// The roll's reason and note ([`crate::rollout::Plan::note`]).
    pub rolling: Option<(&'static str, String)>,
    /// Members whose pod runs the current template (`status.updatedInstances`).
    pub updated: i32,
    /// A hibernation's reason and note ([`crate::hibernation::Stage::note`]).
    pub hibernation: Option<(&'static str, String)>,
}

/// What to do about a primary that must hand over before a shrink removes its pod or a roll updates it.
#[derive(Clone, Debug, PartialEq)]
pub enum HandOver {
    /// Nothing to hand over (no primary leaves).
    Nothing,
    /// The operator's request is in flight: keep it.
    InFlight(PlannedSwitchover),
    /// Not now, and why.
    Wait(String),
    /// Ask `from` (at `ip`) to hand over to `to`.
    Ask {
        from: String,
        to: String,
        ip: Option<String>,
    },
}

/// After the observation, pure: a `leaving` primary (one whose pod the shrink would remove, or the last
/// member a roll updates) is asked once to hand over to [`target`]; the request is kept until it
/// completes or times out. A switchover from the spec that is under way goes first.
pub fn hand_over(
    c: &ValidatedCluster,
    prev: &PostgresClusterStatus,
    obs: &Observed,
    leaving: Option<&str>,
    spec_switchover_busy: bool,
    now: Timestamp,
) -> HandOver {
    let Some(leaving) = leaving else {
        // Handed over, not yet reported: while no member serves (the target promotes) the request stays
        // on record, so the change of primary it causes is reported as the switchover it is.
        return unreported(prev, now).map_or(HandOver::Nothing, |p| HandOver::InFlight(p.clone()));
    };
    if let Some(p) = in_flight(prev, leaving, now) {
        return HandOver::InFlight(p.clone());
    }
    if spec_switchover_busy {
        return HandOver::Wait("waiting for the switchover in spec.switchover".into());
    }
    if obs.primary().as_deref() != Some(leaving) {
        return HandOver::Wait("waiting until it serves as primary".into());
    }
    match target(c, obs) {
        Ok(to) => HandOver::Ask {
            from: leaving.to_owned(),
            to,
            ip: obs
                .pod(leaving)
                .and_then(|p| p.status.as_ref()?.pod_ip.clone()),
        },
        Err(why) => HandOver::Wait(why),
    }
}

/// Carries out [`hand_over`]'s answer (IO: the request, recorded with `reason`, a
/// [`pgpilot_crds::cluster::planned_reason`]): returns the switchover in flight, why none is when one was needed, and the Event.
pub async fn carry_out(
    client: &Client,
    http: &reqwest::Client,
    c: &ValidatedCluster,
    decision: HandOver,
    reason: &'static str,
    now: Timestamp,
) -> (Option<PlannedSwitchover>, Option<String>, Vec<Transition>) {
    match decision {
        HandOver::Nothing => (None, None, Vec::new()),
        HandOver::InFlight(p) => (Some(p), None, Vec::new()),
        HandOver::Wait(why) => (None, Some(why), Vec::new()),
        HandOver::Ask { from, to, ip } => {
            match switchover::ask(client, http, c, ip.as_deref(), &from, &to).await {
                Ok(()) => {
                    info!(%from, %to, reason, "the operator asked the primary to switch over");
                    let event = Transition::SwitchoverRequested {
                        from: from.clone(),
                        to: to.clone(),
                    };
                    let planned = PlannedSwitchover {
                        from,
                        to,
                        reason: reason.into(),
                        requested_at: Time(now),
                    };
                    (Some(planned), None, vec![event])
                }
                Err(e) => {
                    warn!(%from, %to, reason, error = %e, "the operator's switchover failed; asking again");
                    let why = format!("asking it to hand over to {to} failed: {e}");
                    (None, Some(why), Vec::new())
                }
            }
        }
    }
}

/// Reads the [`Shape`]: the StatefulSet, the pod removed last, and the Lease.
pub async fn read(client: &Client, c: &ValidatedCluster) -> Result<Shape, kube::Error> {
    let ns = c.namespace.as_str();
    let replicas = Api::<StatefulSet>::namespaced(client.clone(), ns)
        .get_opt(&c.name)
        .await?
        .and_then(|s| s.spec.replicas);
    let Some(current) = replicas.filter(|r| *r > c.spec.instances) else {
        // Not shrinking: nothing else matters.
        return Ok(Shape {
            replicas,
            ..Shape::default()
        });
    };
    let removed_pod_exists = Api::<Pod>::namespaced(client.clone(), ns)
        .get_opt(&format!("{}-{current}", c.name))
        .await?
        .is_some();
    let lease = Api::<Lease>::namespaced(client.clone(), ns)
        .get_opt(&contract::lease_name(&c.name))
        .await?;
    Ok(Shape {
        replicas,
        removed_pod_exists,
        holder: lease
            .as_ref()
            .and_then(|l| l.spec.as_ref()?.holder_identity.clone())
            .filter(|h| !h.is_empty()),
        sync_members: lease.as_ref().map(sync_record).unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::coordination::v1::Lease;
    use pgpilot_crds::cluster::{MemberTagsSpec, ReplicationModeSpec};

    use super::*;
    use crate::status::fixtures::{cluster, healthy, report, t};

    fn with_sync(obs: &mut Observed, members: &str) {
        let lease: &mut Lease = obs.lease.as_mut().unwrap();
        lease.metadata.annotations = Some(
            [(
                contract::ANNOTATION_SYNC_MEMBERS.to_owned(),
                members.to_owned(),
            )]
            .into(),
        );
    }

    fn shape(replicas: i32, holder: &str, sync: &[&str]) -> Shape {
        Shape {
            replicas: Some(replicas),
            removed_pod_exists: false,
            holder: Some(holder.into()).filter(|h: &String| !h.is_empty()),
            sync_members: sync.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    #[test]
    fn growing_or_steady_applies_the_spec() {
        assert_eq!(plan("pg", 3, &Shape::default()), Step::Steady);
        assert_eq!(plan("pg", 3, &shape(3, "pg-2", &[])), Step::Steady);
        assert_eq!(plan("pg", 5, &shape(3, "pg-2", &[])), Step::Steady);
        assert_eq!(Step::Steady.replicas(&shape(3, "pg-0", &[]), 5), 5);
    }

    #[test]
    fn the_primarys_pod_is_never_removed_before_it_hands_over() {
        let s = shape(3, "pg-2", &["pg-1"]);
        let step = plan("pg", 2, &s);
        assert_eq!(
            step,
            Step::Hold(Hold::PrimaryLeaves {
                primary: "pg-2".into()
            })
        );
        assert_eq!(step.replicas(&s, 2), 3);
        assert_eq!(step.leaving_primary(), Some("pg-2"));
        // 3 → 1 with the primary in the middle: it leaves too.
        assert!(matches!(
            plan("pg", 1, &shape(3, "pg-1", &[])),
            Step::Hold(Hold::PrimaryLeaves { .. })
        ));
    }

    #[test]
    fn a_member_recorded_synchronous_is_not_removed() {
        let s = shape(3, "pg-0", &["pg-2"]);
        assert_eq!(
            plan("pg", 2, &s),
            Step::Hold(Hold::SyncLeaves {
                member: "pg-2".into()
            })
        );
        // Once the primary recorded another standby, the highest member goes.
        let s = shape(3, "pg-0", &["pg-1"]);
        let step = plan("pg", 2, &s);
        assert_eq!(
            step,
            Step::Remove {
                member: "pg-2".into()
            }
        );
        assert_eq!(step.replicas(&s, 2), 2);
    }

    #[test]
    fn one_member_at_a_time_and_never_without_a_primary() {
        // 3 → 1: one step removes pg-2 only.
        let s = shape(3, "pg-0", &[]);
        assert_eq!(plan("pg", 1, &s).replicas(&s, 1), 2);
        // While pg-2's pod still exists, pg-1 stays.
        let s = Shape {
            removed_pod_exists: true,
            ..shape(2, "pg-0", &[])
        };
        let step = plan("pg", 1, &s);
        assert_eq!(
            step,
            Step::Hold(Hold::Terminating {
                member: "pg-2".into()
            })
        );
        assert_eq!(step.replicas(&s, 1), 2);
        // Gone: pg-1 goes.
        let s = shape(2, "pg-0", &[]);
        assert_eq!(plan("pg", 1, &s).replicas(&s, 1), 1);
        // No holder: nobody can move the synchronous role, so nobody leaves.
        assert_eq!(
            plan("pg", 1, &shape(2, "", &[])),
            Step::Hold(Hold::NoPrimary)
        );
    }

    #[test]
    fn the_notes_say_why_a_shrink_waits() {
        let hold = Step::Hold(Hold::PrimaryLeaves {
            primary: "pg-2".into(),
        });
        assert_eq!(
            note(&hold, 3, 2, None).as_deref(),
            Some("3 members, scaling to 2: pg-2 is the primary: switching over before removing it")
        );
        assert!(
            note(&hold, 3, 2, Some("no streaming replica"))
                .unwrap()
                .ends_with("must hand over first: no streaming replica")
        );
        assert_eq!(note(&Step::Steady, 3, 3, None), None);
    }

    #[test]
    fn a_leaving_primary_hands_over_to_the_best_member_that_stays() {
        // pg-2 is the primary; pg-0 and pg-1 stream, pg-1 with more WAL.
        let mut c = cluster();
        c.spec.instances = 2;
        let mut obs = healthy();
        for (name, r) in [
            ("pg-0", report("replica", 2, 0x100, None)),
            ("pg-1", report("replica", 2, 0x200, None)),
            ("pg-2", report("primary", 2, 0x200, None)),
        ] {
            let mut r = r;
            r.replication_state = (r.role == "replica").then(|| "streaming".into());
            obs.reports.insert(name.into(), r);
        }
        assert_eq!(target(&c, &obs), Ok("pg-1".into()));
        // One that stays only: 3 → 1 leaves pg-0, even with less WAL.
        c.spec.instances = 1;
        assert_eq!(target(&c, &obs), Ok("pg-0".into()));
        // Tagged noFailover: nobody.
        c.spec.tags = Some(
            [(
                "pg-0".to_owned(),
                MemberTagsSpec {
                    no_failover: true,
                    ..MemberTagsSpec::default()
                },
            )]
            .into(),
        );
        assert!(
            target(&c, &obs)
                .unwrap_err()
                .contains("no streaming replica")
        );
        // Sync mode: only the recorded synchronous standby.
        c.spec.tags = None;
        c.spec.instances = 2;
        c.spec.replication.mode = ReplicationModeSpec::Sync;
        with_sync(&mut obs, "pg-0");
        assert_eq!(target(&c, &obs), Ok("pg-0".into()));
        with_sync(&mut obs, "");
        assert!(
            target(&c, &obs)
                .unwrap_err()
                .contains("synchronous standby")
        );
        // A replica that does not stream is not a target.
        with_sync(&mut obs, "pg-0,pg-1");
        obs.reports.get_mut("pg-1").unwrap().replication_state = None;
        assert_eq!(target(&c, &obs), Ok("pg-0".into()));
    }

    #[test]
    fn the_operators_own_switchover_is_kept_until_it_times_out() {
        let prev = PostgresClusterStatus {
            planned_switchover: Some(crate::status::fixtures::planned("pg-2", "pg-1", 0)),
            ..PostgresClusterStatus::default()
        };
        assert!(in_flight(&prev, "pg-2", t(10)).is_some());
        assert!(in_flight(&prev, "pg-0", t(10)).is_none());
        let late = i64::try_from(COMPLETION_TIMEOUT.as_secs()).unwrap() + 1;
        assert!(in_flight(&prev, "pg-2", t(late)).is_none());
    }

    /// Between the old primary's release and the new one's promotion no member serves as primary (the
    /// Lease names the target, its pod is not labelled yet): the step no longer holds for a leaving
    /// primary, yet the request stays on record, or the change would be reported as a failover (seen in
    /// the fault row scale-down-primary [async]).
    #[test]
    fn the_operators_own_switchover_is_kept_while_no_primary_serves() {
        let mut c = cluster();
        c.spec.instances = 2;
        let planned = crate::status::fixtures::planned("pg-2", "pg-1", 0);
        let prev = PostgresClusterStatus {
            last_primary: Some("pg-2".into()),
            planned_switchover: Some(planned.clone()),
            ..PostgresClusterStatus::default()
        };
        let mut between = healthy();
        between.lease = Some(crate::status::fixtures::lease(Some("pg-1"), 5));
        assert_eq!(between.primary(), None);
        let step = plan("pg", 2, &shape(3, "pg-1", &[]));
        assert_eq!(step.leaving_primary(), None);
        assert_eq!(
            hand_over(&c, &prev, &between, step.leaving_primary(), false, t(1)),
            HandOver::InFlight(planned.clone())
        );
        // Once the status names the new primary, the record has served; and it times out.
        let reported = PostgresClusterStatus {
            last_primary: Some("pg-1".into()),
            ..prev.clone()
        };
        assert_eq!(
            hand_over(&c, &reported, &between, step.leaving_primary(), false, t(1)),
            HandOver::Nothing
        );
        let late = i64::try_from(COMPLETION_TIMEOUT.as_secs()).unwrap() + 1;
        assert_eq!(
            hand_over(&c, &prev, &between, step.leaving_primary(), false, t(late)),
            HandOver::Nothing
        );
    }

    #[test]
    fn a_leaving_primary_is_asked_once_and_only_while_it_serves() {
        let mut c = cluster();
        c.spec.instances = 2;
        // healthy(): pg-0 is the primary and stays: nothing to hand over.
        let obs = healthy();
        let keep = plan("pg", 2, &shape(3, "pg-0", &[]));
        assert_eq!(
            hand_over(
                &c,
                &PostgresClusterStatus::default(),
                &obs,
                keep.leaving_primary(),
                false,
                t(0)
            ),
            HandOver::Nothing
        );
        // The Lease names pg-2, which is not labelled primary yet: wait.
        let leaves = plan("pg", 2, &shape(3, "pg-2", &[]));
        let none = PostgresClusterStatus::default();
        assert!(matches!(
            hand_over(&c, &none, &obs, leaves.leaving_primary(), false, t(0)),
            HandOver::Wait(_)
        ));
        // pg-2 serves: ask it to hand over to pg-1 (pg-1 streams; pg-0 is no replica here).
        let mut serving = healthy();
        serving.lease = Some(crate::status::fixtures::lease(Some("pg-2"), 4));
        serving.pods[0] = crate::status::fixtures::pod("pg-0", Some("replica"), true);
        serving.pods[2] = crate::status::fixtures::pod("pg-2", Some("primary"), true);
        let mut r = report("replica", 2, 0x100, None);
        r.replication_state = Some("streaming".into());
        serving.reports.insert("pg-1".into(), r);
        serving.reports.remove("pg-0");
        let asked = hand_over(&c, &none, &serving, leaves.leaving_primary(), false, t(0));
        assert!(matches!(&asked, HandOver::Ask { from, to, .. } if from == "pg-2" && to == "pg-1"));
        // A switchover from the spec under way goes first.
        assert!(matches!(
            hand_over(&c, &none, &serving, leaves.leaving_primary(), true, t(0)),
            HandOver::Wait(_)
        ));
        // Asked already: kept, not asked again.
        let prev = PostgresClusterStatus {
            planned_switchover: Some(crate::status::fixtures::planned("pg-2", "pg-1", 0)),
            ..PostgresClusterStatus::default()
        };
        assert!(matches!(
            hand_over(&c, &prev, &serving, leaves.leaving_primary(), false, t(5)),
            HandOver::InFlight(_)
        ));
    }
}
