//! `spec.hibernation`: the members are paused, then all stopped (the StatefulSet at 0 replicas, the
//! volumes kept); turned off, they start on the same data and the member that was primary when they
//! stopped takes its role back. Pure.
//!
//! Paused first, so that no replica takes over while the pods go: the primary stops and releases the
//! Lease (recording its shutdown checkpoint, which only a member that has it may take over from, L3),
//! and a paused replica never races for a released Lease. On wake every other member is `noFailover`
//! until the former primary runs as primary — a member that starts first would otherwise win the
//! released Lease, since members that have not started cannot object — or until [`WAKE_PATIENCE`]
//! passed, after which any eligible member may (the former primary's volume may be gone).

use std::time::Duration;

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use pgpilot_crds::{
    PostgresClusterStatus,
    cluster::{HibernationStatus, reason},
};

use crate::{events::Transition, status::Observed, validate::ValidatedCluster};

/// How long after the wake the former primary alone may take the Lease.
pub const WAKE_PATIENCE: Duration = Duration::from_secs(120);

/// Where a hibernation stands in this reconcile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stage {
    /// No hibernation: nothing changes.
    Awake,
    /// `spec.hibernation` set, the members still run: they are paused, and stopped once every member
    /// that answers reports the pause.
    Pausing,
    /// The members are stopped (or stopping): the StatefulSet has no replicas.
    Stopped,
    /// `spec.hibernation` unset again after a stop: the members start; while `prefer`, only `former`
    /// may take the Lease.
    Waking {
        former: Option<String>,
        prefer: bool,
    },
}

/// The stage, from the spec and what the last status recorded.
pub fn stage(hibernation: bool, prev: &PostgresClusterStatus, now: Timestamp) -> Stage {
    match (&prev.hibernation, hibernation) {
        (None, false) => Stage::Awake,
        (None, true) => Stage::Pausing,
        (Some(_), true) => Stage::Stopped,
        (Some(h), false) => {
            let waited = h.waking_since.as_ref().map_or(Duration::ZERO, |t| {
                Duration::try_from(now.duration_since(t.0)).unwrap_or(Duration::ZERO)
            });
            Stage::Waking {
                former: h.primary.clone(),
                prefer: waited < WAKE_PATIENCE,
            }
        }
    }
}

impl Stage {
    /// The StatefulSet's replicas: none once stopped, `otherwise` in every other stage.
    pub fn replicas(&self, otherwise: i32) -> i32 {
        if *self == Self::Stopped { 0 } else { otherwise }
    }

    /// Whether the roll, the scale-down's hand-over and restarts wait: in every stage but `Awake`.
    pub fn holds_changes(&self) -> bool {
        *self != Self::Awake
    }

    /// The members' configuration: paused while they go; while waking, every member but the former
    /// primary may not take the Lease. The volumes are kept whatever `storage.deleteOnScaleDown` says:
    /// the StatefulSet's retention policy is `Retain` from the first step on, before it shrinks to 0.
    pub fn configure(&self, c: &mut ValidatedCluster) {
        if *self != Self::Awake {
            c.spec.storage.delete_on_scale_down = false;
        }
        match self {
            Self::Awake => {}
            Self::Pausing | Self::Stopped => c.sidecar_config.paused = true,
            Self::Waking {
                former: Some(former),
                prefer: true,
            } => {
                for o in 0..c.spec.instances {
                    let member = format!("{}-{o}", c.name);
                    if member != *former {
                        c.sidecar_config.tags.entry(member).or_default().no_failover = true;
                    }
                }
            }
            Self::Waking { .. } => {}
        }
    }

    /// `Progressing`'s reason and message while a hibernation is under way (`None`: awake). `stopped`:
    /// no member pod exists any more.
    pub fn note(&self, stopped: bool) -> Option<(&'static str, String)> {
        match self {
            Self::Awake => None,
            Self::Pausing => Some((
                reason::HIBERNATING,
                "hibernation: pausing the members before stopping them".into(),
            )),
            Self::Stopped if stopped => Some((
                reason::HIBERNATED,
                "hibernated (spec.hibernation): every member is stopped, the volumes are kept"
                    .into(),
            )),
            Self::Stopped => Some((
                reason::HIBERNATING,
                "hibernation: stopping every member".into(),
            )),
            Self::Waking {
                former: Some(f),
                prefer: true,
            } => Some((
                reason::WAKING_UP,
                format!(
                    "waking up: starting the members; {f}, the primary when they stopped, takes its role back"
                ),
            )),
            Self::Waking { .. } => Some((
                reason::WAKING_UP,
                "waking up: starting the members; the best of them takes the primary role".into(),
            )),
        }
    }
}

/// `status.hibernation` after this reconcile, and the Event of a step. Pausing ends once every member
/// that answers reports the pause (the primary named is the one running then); waking ends once a
/// primary runs — the former one, or any after [`WAKE_PATIENCE`] or when none was recorded.
pub fn next(
    stage: &Stage,
    prev: &PostgresClusterStatus,
    obs: &Observed,
    now: Timestamp,
) -> (Option<HibernationStatus>, Option<Transition>) {
    match stage {
        Stage::Awake => (None, None),
        Stage::Pausing => {
            if !obs.reports.values().all(|r| r.pause) {
                return (None, None);
            }
            let primary = obs.primary();
            let h = HibernationStatus {
                primary: primary.clone(),
                stopped_at: Time(now),
                waking_since: None,
            };
            (Some(h), Some(Transition::Hibernating { primary }))
        }
        Stage::Stopped => (prev.hibernation.clone(), None),
        Stage::Waking { former, prefer } => {
            let Some(mut h) = prev.hibernation.clone() else {
                return (None, None);
            };
            if let Some(primary) = obs.primary()
                && (!prefer || former.as_deref().is_none_or(|f| f == primary))
            {
                let woke = Transition::WokeUp {
                    primary,
                    former: former.clone(),
                };
                return (None, Some(woke));
            }
            h.waking_since.get_or_insert(Time(now));
            (Some(h), None)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use pgpilot_crds::contract::MemberReport;

    use super::*;
    use crate::{
        status::fixtures::{lease, pod, sts},
        testutil::cluster_from_yaml,
        validate::validate,
    };

    fn validated(spec: &str) -> ValidatedCluster {
        validate(&cluster_from_yaml(spec), "s").unwrap()
    }

    fn stopped(primary: Option<&str>, waking_since: Option<Timestamp>) -> PostgresClusterStatus {
        PostgresClusterStatus {
            hibernation: Some(HibernationStatus {
                primary: primary.map(str::to_owned),
                stopped_at: Time(Timestamp::UNIX_EPOCH),
                waking_since: waking_since.map(Time),
            }),
            ..PostgresClusterStatus::default()
        }
    }

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).unwrap()
    }

    #[test]
    fn the_stage_follows_the_spec_and_the_recorded_stop() {
        let awake = PostgresClusterStatus::default();
        assert_eq!(stage(false, &awake, at(0)), Stage::Awake);
        assert_eq!(stage(true, &awake, at(0)), Stage::Pausing);
        assert_eq!(
            stage(true, &stopped(Some("pg-1"), None), at(0)),
            Stage::Stopped
        );
        let waking = |since, now| stage(false, &stopped(Some("pg-1"), since), at(now));
        let prefer = |prefer| Stage::Waking {
            former: Some("pg-1".into()),
            prefer,
        };
        assert_eq!(waking(None, 1000), prefer(true), "the first wake reconcile");
        assert_eq!(waking(Some(at(1000)), 1119), prefer(true));
        assert_eq!(
            waking(Some(at(1000)), 1120),
            prefer(false),
            "patience ran out"
        );
    }

    #[test]
    fn the_members_stop_only_when_stopped_and_are_paused_until_the_wake() {
        assert_eq!(Stage::Awake.replicas(3), 3);
        assert_eq!(Stage::Pausing.replicas(3), 3, "paused first, still running");
        assert_eq!(Stage::Stopped.replicas(3), 0);
        let waking = Stage::Waking {
            former: Some("pg-1".into()),
            prefer: true,
        };
        assert_eq!(waking.replicas(3), 3);
        for (stage, paused) in [
            (Stage::Awake, false),
            (Stage::Pausing, true),
            (Stage::Stopped, true),
            (waking.clone(), false),
        ] {
            let mut c = validated("{instances: 3, storage: {size: 1Gi, deleteOnScaleDown: true}}");
            stage.configure(&mut c);
            assert_eq!(c.sidecar_config.paused, paused, "{stage:?}");
            assert_eq!(stage.holds_changes(), stage != Stage::Awake);
            let sts = crate::build::statefulset::build_statefulset(&c, stage.replicas(3));
            let policy = sts.spec.persistent_volume_claim_retention_policy.unwrap();
            let kept = if stage == Stage::Awake {
                "Delete"
            } else {
                "Retain"
            };
            assert_eq!(
                policy.when_scaled.as_deref(),
                Some(kept),
                "{stage:?}: the volumes"
            );
        }
    }

    #[test]
    fn on_wake_only_the_former_primary_may_take_the_lease_until_patience_runs_out() {
        let mut c = validated("{instances: 3, tags: {pg-2: {failoverPriority: 5}}}");
        Stage::Waking {
            former: Some("pg-1".into()),
            prefer: true,
        }
        .configure(&mut c);
        let may = |m: &str| {
            c.sidecar_config
                .tags
                .get(m)
                .is_none_or(|t| t.may_fail_over())
        };
        assert!(may("pg-1") && !may("pg-0") && !may("pg-2"));
        assert_eq!(
            c.sidecar_config.tags["pg-2"].failover_priority,
            Some(5),
            "the user's tags are kept"
        );
        for stage in [
            Stage::Waking {
                former: Some("pg-1".into()),
                prefer: false,
            },
            Stage::Waking {
                former: None,
                prefer: true,
            },
        ] {
            let mut c = validated("instances: 3");
            stage.configure(&mut c);
            assert!(
                c.sidecar_config.tags.values().all(|t| t.may_fail_over()),
                "{stage:?}"
            );
        }
    }

    fn reporting(pause: &[(&str, bool)], primary: Option<&str>) -> Observed {
        let pods = pause
            .iter()
            .map(|(m, _)| {
                let role = if primary == Some(*m) {
                    "primary"
                } else {
                    "replica"
                };
                pod(m, Some(role), true)
            })
            .collect();
        let mut obs = Observed {
            statefulset: Some(sts(i32::try_from(pause.len()).unwrap())),
            pods,
            lease: Some(lease(primary, 3)),
            reports: BTreeMap::new(),
        };
        obs.reports = pause
            .iter()
            .map(|(m, p)| {
                let report = MemberReport {
                    pause: *p,
                    ..MemberReport::default()
                };
                ((*m).to_owned(), report)
            })
            .collect::<BTreeMap<_, _>>();
        obs
    }

    #[test]
    fn the_stop_waits_for_every_answering_member_to_be_paused_and_names_the_primary() {
        let awake = PostgresClusterStatus::default();
        let not_yet = reporting(&[("pg-0", true), ("pg-1", false)], Some("pg-1"));
        assert_eq!(next(&Stage::Pausing, &awake, &not_yet, at(5)), (None, None));
        let all = reporting(&[("pg-0", true), ("pg-1", true)], Some("pg-1"));
        let (h, event) = next(&Stage::Pausing, &awake, &all, at(5));
        let h = h.expect("the stop is recorded");
        assert_eq!(
            (h.primary.as_deref(), h.stopped_at.0),
            (Some("pg-1"), at(5))
        );
        assert_eq!(
            event,
            Some(Transition::Hibernating {
                primary: Some("pg-1".into())
            })
        );
        let prev = stopped(Some("pg-1"), None);
        let gone = reporting(&[], None);
        assert_eq!(
            next(&Stage::Stopped, &prev, &gone, at(9)),
            (prev.hibernation.clone(), None)
        );
    }

    #[test]
    fn waking_ends_when_the_former_primary_runs_or_any_primary_after_patience() {
        let prev = stopped(Some("pg-1"), None);
        let preferring = Stage::Waking {
            former: Some("pg-1".into()),
            prefer: true,
        };
        let none = reporting(&[("pg-0", false), ("pg-1", false)], None);
        let (h, event) = next(&preferring, &prev, &none, at(100));
        assert_eq!(
            h.unwrap().waking_since,
            Some(Time(at(100))),
            "the wake starts"
        );
        assert_eq!(event, None);
        let other = reporting(&[("pg-0", false), ("pg-1", false)], Some("pg-0"));
        let (h, event) = next(&preferring, &prev, &other, at(101));
        assert!(
            h.is_some() && event.is_none(),
            "pg-0 is not the former primary"
        );
        let former = reporting(&[("pg-0", false), ("pg-1", false)], Some("pg-1"));
        let woke = Transition::WokeUp {
            primary: "pg-1".into(),
            former: Some("pg-1".into()),
        };
        assert_eq!(
            next(&preferring, &prev, &former, at(102)),
            (None, Some(woke))
        );
        let impatient = Stage::Waking {
            former: Some("pg-1".into()),
            prefer: false,
        };
        let (h, event) = next(&impatient, &prev, &other, at(300));
        assert_eq!(h, None);
        assert_eq!(
            event,
            Some(Transition::WokeUp {
                primary: "pg-0".into(),
                former: Some("pg-1".into())
            })
        );
    }
}
