//! Observations for the status tests: a 3-member cluster `pg` and the pods, Lease and reports it shows.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        apps::v1::{StatefulSet, StatefulSetStatus},
        coordination::v1::{Lease, LeaseSpec},
        core::v1::{Pod, PodCondition, PodStatus},
    },
    apimachinery::pkg::apis::meta::v1::Condition,
    jiff::Timestamp,
};
use pgpilot_crds::{
    PostgresClusterStatus,
    contract::{LABEL_CLUSTER, LABEL_ROLE, MemberReport, PgpilotInfo, Xlog},
};

use super::Observed;
use crate::{
    conditions::find_condition,
    testutil::example,
    validate::{ValidatedCluster, validate},
};

pub fn cluster() -> ValidatedCluster {
    validate(&example("cluster-3.yaml"), "s").unwrap()
}

pub fn pod(name: &str, role: Option<&str>, ready: bool) -> Pod {
    let mut p = Pod::default();
    p.metadata.name = Some(name.into());
    let mut labels = BTreeMap::from([(LABEL_CLUSTER.to_owned(), "pg".to_owned())]);
    if let Some(r) = role {
        labels.insert(LABEL_ROLE.into(), r.into());
    }
    p.metadata.labels = Some(labels);
    p.status = Some(PodStatus {
        phase: Some("Running".into()),
        pod_ip: Some("10.0.0.1".into()),
        conditions: Some(vec![PodCondition {
            type_: "Ready".into(),
            status: if ready { "True" } else { "False" }.into(),
            ..PodCondition::default()
        }]),
        ..PodStatus::default()
    });
    p
}

pub fn lease(holder: Option<&str>, transitions: i32) -> Lease {
    Lease {
        spec: Some(LeaseSpec {
            holder_identity: holder.map(Into::into),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }),
        ..Lease::default()
    }
}

pub fn sts(replicas: i32) -> StatefulSet {
    StatefulSet {
        status: Some(StatefulSetStatus {
            replicas,
            ..StatefulSetStatus::default()
        }),
        ..StatefulSet::default()
    }
}

pub fn report(role: &str, timeline: u32, pos: u64, lag: Option<u64>) -> MemberReport {
    MemberReport {
        state: "running".into(),
        role: role.into(),
        timeline: Some(timeline),
        xlog: Some(if role == "primary" {
            Xlog {
                location: Some(pos),
                ..Xlog::default()
            }
        } else {
            Xlog {
                replayed_location: Some(pos),
                received_location: Some(pos),
                ..Xlog::default()
            }
        }),
        pgpilot: PgpilotInfo {
            epoch: 4,
            lag_bytes: lag,
            ..PgpilotInfo::default()
        },
        ..MemberReport::default()
    }
}

/// pg-0 primary, pg-1 and pg-2 replicas, all Ready; pg-2's sidecar does not answer.
pub fn healthy() -> Observed {
    Observed {
        statefulset: Some(sts(3)),
        pods: vec![
            pod("pg-0", Some("primary"), true),
            pod("pg-1", Some("replica"), true),
            pod("pg-2", Some("replica"), true),
        ],
        lease: Some(lease(Some("pg-0"), 4)),
        reports: BTreeMap::from([
            ("pg-0".into(), report("primary", 2, 0x1_0000_0060, None)),
            ("pg-1".into(), report("replica", 2, 0x1_0000_0000, Some(96))),
        ]),
    }
}

pub fn t(secs: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + secs).unwrap()
}

pub fn cond<'a>(s: &'a PostgresClusterStatus, t: &str) -> &'a Condition {
    find_condition(s, t).unwrap()
}

/// The operator's own switchover before a scale-down, asked at `at` seconds.
pub fn planned(from: &str, to: &str, at: i64) -> pgpilot_crds::cluster::PlannedSwitchover {
    pgpilot_crds::cluster::PlannedSwitchover {
        from: from.into(),
        to: to.into(),
        reason: pgpilot_crds::cluster::planned_reason::SCALE_DOWN.into(),
        requested_at: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(t(at)),
    }
}
