//! Step 4 of the reconcile: observe and write the status.
//!
//! [`observe`] (IO) reads what exists: the StatefulSet, the member pods, the Lease, and each sidecar's
//! `GET /patroni` report (short timeout, reads only). [`compute`] (pure) derives the new status and the
//! transitions worth an Event from the previous status and that observation; conditions keep their
//! `lastTransitionTime` unless their status changed. [`write`] (IO) patches the status subresource only
//! when it differs from the stored one, ignoring timestamps.

use std::{collections::BTreeMap, time::Duration};

use futures::future::join_all;
use k8s_openapi::jiff::Timestamp;
use k8s_openapi::{
    api::{apps::v1::StatefulSet, coordination::v1::Lease, core::v1::Pod},
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
};
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, Patch, PatchParams},
};
use pgpilot_crds::{
    PostgresCluster, PostgresClusterStatus,
    cluster::{FailoverRecord, MemberStatus, condition, phase},
    contract::{
        self, FIELD_MANAGER, LABEL_CLUSTER, LABEL_ROLE, MemberReport, MemberTags, REST_PORT,
        ROLE_PRIMARY,
    },
};
use serde_json::json;
use tracing::debug;

use crate::{events::Transition, switchover::SwitchoverOutcome, validate::ValidatedCluster};

/// How long the operator waits for one sidecar's report.
pub const REPORT_TIMEOUT: Duration = Duration::from_millis(800);

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

/// What exists, as read in one reconcile.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    pub statefulset: Option<StatefulSet>,
    /// Member pods, sorted by name.
    pub pods: Vec<Pod>,
    pub lease: Option<Lease>,
    /// Sidecar reports by pod name; a pod whose sidecar did not answer is absent.
    pub reports: BTreeMap<String, MemberReport>,
}

impl Observed {
    pub fn pod(&self, name: &str) -> Option<&Pod> {
        self.pods
            .iter()
            .find(|p| p.metadata.name.as_deref() == Some(name))
    }

    /// The Lease holder, if any.
    pub fn holder(&self) -> Option<&str> {
        self.lease
            .as_ref()?
            .spec
            .as_ref()?
            .holder_identity
            .as_deref()
            .filter(|h| !h.is_empty())
    }

    /// The primary: the Lease holder, confirmed by the role label its sidecar put on its pod. Either alone
    /// is not enough: a label can be stale (L7) and a holder may not have promoted yet.
    pub fn primary(&self) -> Option<String> {
        let holder = self.holder()?;
        let labelled = self
            .pod(holder)?
            .labels()
            .get(LABEL_ROLE)
            .is_some_and(|r| r == ROLE_PRIMARY);
        labelled.then(|| holder.to_owned())
    }

    pub fn epoch(&self) -> Option<i64> {
        self.lease
            .as_ref()?
            .spec
            .as_ref()?
            .lease_transitions
            .map(i64::from)
    }
}

fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn pod_ip(pod: &Pod) -> Option<&str> {
    pod.status
        .as_ref()?
        .pod_ip
        .as_deref()
        .filter(|ip| !ip.is_empty())
}

/// Reads one sidecar's report; `None` when it does not answer in time or answers garbage.
async fn fetch_report(http: &reqwest::Client, ip: &str) -> Option<MemberReport> {
    let url = format!("http://{ip}:{REST_PORT}/patroni");
    let response = http.get(&url).timeout(REPORT_TIMEOUT).send().await.ok()?;
    // Patroni answers /patroni with 200 whatever the role; a 503 body is still a valid report.
    match response.json::<MemberReport>().await {
        Ok(r) => Some(r),
        Err(e) => {
            debug!(%url, error = %e, "unreadable member report");
            None
        }
    }
}

pub async fn observe(
    client: &Client,
    http: &reqwest::Client,
    c: &ValidatedCluster,
) -> Result<Observed, Error> {
    let ns = c.namespace.as_str();
    let statefulset = Api::<StatefulSet>::namespaced(client.clone(), ns)
        .get_opt(&c.name)
        .await
        .map_err(|source| Error::Read {
            kind: "StatefulSet",
            source,
        })?;
    let mut pods = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&format!("{LABEL_CLUSTER}={}", c.name)))
        .await
        .map_err(|source| Error::Read {
            kind: "Pods",
            source,
        })?
        .items;
    pods.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let lease = Api::<Lease>::namespaced(client.clone(), ns)
        .get_opt(&contract::lease_name(&c.name))
        .await
        .map_err(|source| Error::Read {
            kind: "Lease",
            source,
        })?;
    let fetches = pods
        .iter()
        .filter_map(|p| Some((p.name_any(), pod_ip(p)?.to_owned())))
        .map(|(name, ip)| async move { fetch_report(http, &ip).await.map(|r| (name, r)) });
    let reports = join_all(fetches).await.into_iter().flatten().collect();
    Ok(Observed {
        statefulset,
        pods,
        lease,
        reports,
    })
}

/// Formats a WAL byte position the way PostgreSQL prints an LSN.
pub fn format_lsn(pos: u64) -> String {
    format!("{:X}/{:X}", pos >> 32, pos & 0xFFFF_FFFF)
}

/// The state of a member whose sidecar did not report: what the kubelet says about its containers
/// (`init: ImagePullBackOff`, `CrashLoopBackOff`), else the pod phase, else `unreachable`.
fn silent_member_state(pod: &Pod) -> String {
    let Some(status) = pod.status.as_ref() else {
        return "pending".into();
    };
    let waiting = |statuses: &Option<Vec<k8s_openapi::api::core::v1::ContainerStatus>>| {
        statuses
            .iter()
            .flatten()
            .find_map(|c| c.state.as_ref()?.waiting.as_ref()?.reason.clone())
    };
    if let Some(reason) = waiting(&status.init_container_statuses) {
        return format!("init: {reason}");
    }
    if let Some(reason) = waiting(&status.container_statuses) {
        return reason;
    }
    match status.phase.as_deref() {
        Some("Running") | None => "unreachable".into(),
        Some(phase) => phase.to_lowercase(),
    }
}

fn member_status(pod: &Pod, report: Option<&MemberReport>) -> MemberStatus {
    let name = pod.name_any();
    let ready = pod_ready(pod);
    let Some(r) = report else {
        return MemberStatus {
            role: pod
                .labels()
                .get(LABEL_ROLE)
                .cloned()
                .unwrap_or_else(|| "unknown".into()),
            state: silent_member_state(pod),
            name,
            ready,
            ..MemberStatus::default()
        };
    };
    let position = r.xlog.as_ref().and_then(|x| {
        if r.role == ROLE_PRIMARY {
            x.location
        } else {
            x.replayed_location
        }
    });
    MemberStatus {
        name,
        role: r.role.clone(),
        state: r.state.clone(),
        timeline: r.timeline.map(i64::from),
        lsn: position.map(format_lsn),
        lag_bytes: r.pgpilot.lag_bytes.and_then(|l| i64::try_from(l).ok()),
        ready,
        pending_restart: r.pending_restart,
    }
}

/// Sets condition `type_` in `conds`, keeping its `lastTransitionTime` unless the status changed.
pub fn set_condition(
    conds: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: Timestamp,
) {
    let status = if status { "True" } else { "False" }.to_owned();
    let previous = conds.iter().position(|c| c.type_ == type_);
    let last_transition_time = match previous.map(|i| &conds[i]) {
        Some(old) if old.status == status => old.last_transition_time.clone(),
        _ => Time(now),
    };
    let new = Condition {
        type_: type_.into(),
        status,
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time,
    };
    match previous {
        Some(i) => conds[i] = new,
        None => conds.push(new),
    }
}

pub fn find_condition<'a>(status: &'a PostgresClusterStatus, type_: &str) -> Option<&'a Condition> {
    status.conditions.iter().find(|c| c.type_ == type_)
}

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
/// lag. The operator writes such changes at most every [`crate::controller::VOLATILE_STATUS_EVERY`]
/// (DESIGN.md L9 in spirit: live WAL positions are the REST API's job, not the apiserver's).
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
        "InvalidSpec",
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
    now: Timestamp,
) -> (PostgresClusterStatus, Vec<Transition>) {
    let mut events = Vec::new();
    let generation = c.generation;
    let want = c.spec.instances;
    let members: Vec<MemberStatus> = obs
        .pods
        .iter()
        .map(|p| member_status(p, obs.reports.get(&p.name_any())))
        .collect();
    let ready = i32::try_from(members.iter().filter(|m| m.ready).count()).unwrap_or(i32::MAX);
    let existing = obs
        .statefulset
        .as_ref()
        .and_then(|s| s.status.as_ref())
        .map(|s| s.replicas)
        .unwrap_or_else(|| i32::try_from(obs.pods.len()).unwrap_or(i32::MAX));
    let primary = obs.primary();
    let last_primary = primary.clone().or_else(|| prev.last_primary.clone());
    let timeline = primary
        .as_ref()
        .and_then(|p| obs.reports.get(p))
        .and_then(|r| r.timeline)
        .map(i64::from);

    // A change of primary: named after the member it came from, even across a spell without one.
    let mut last_failover = prev.last_failover.clone();
    if let (Some(new), Some(old)) = (&primary, &prev.last_primary)
        && new != old
    {
        let requested = switchover.targets(new);
        let reason = if requested { "Switchover" } else { "Failover" };
        last_failover = Some(FailoverRecord {
            time: Time(now),
            from: old.clone(),
            to: new.clone(),
            reason: reason.into(),
        });
        events.push(if requested {
            Transition::SwitchoverCompleted {
                from: old.clone(),
                to: new.clone(),
            }
        } else {
            Transition::FailoverObserved {
                from: old.clone(),
                to: new.clone(),
            }
        });
    } else if let (Some(new), None) = (&primary, &prev.last_primary) {
        events.push(Transition::PrimaryElected {
            member: new.clone(),
        });
    }

    let phase = match (&primary, obs.statefulset.is_some() || !obs.pods.is_empty()) {
        (None, false) => phase::PENDING,
        (None, true) if last_primary.is_some() => phase::NO_PRIMARY,
        (None, true) => phase::CREATING,
        (Some(_), _) if ready >= want && existing == want => phase::RUNNING,
        (Some(_), _) => phase::DEGRADED,
    };

    let mut conditions = prev.conditions.clone();
    let cond = |conds: &mut Vec<Condition>, t: &str, s: bool, reason: &str, msg: String| {
        set_condition(conds, t, s, reason, msg, generation, now);
    };
    let (ready_reason, ready_msg) = match phase {
        phase::RUNNING => (
            "AllMembersReady",
            format!(
                "{ready}/{want} members ready, primary {}",
                primary.as_deref().unwrap_or_default()
            ),
        ),
        phase::DEGRADED => ("MembersNotReady", format!("{ready}/{want} members ready")),
        phase::NO_PRIMARY => (
            "NoPrimary",
            "no member holds the leader Lease as primary".into(),
        ),
        _ => (
            "Creating",
            format!("{ready}/{want} members ready, waiting for the first primary"),
        ),
    };
    cond(
        &mut conditions,
        condition::READY,
        phase == phase::RUNNING,
        ready_reason,
        ready_msg,
    );
    let (progressing, p_reason, p_msg) = if phase == phase::CREATING || phase == phase::PENDING {
        (true, "Creating", "creating the members".to_owned())
    } else if existing != want {
        (
            true,
            "Scaling",
            format!("{existing} members, scaling to {want}"),
        )
    } else if let Some(outdated) = outdated_members(obs).filter(|o| !o.is_empty()) {
        // The StatefulSet updates on delete only, so that the primary can go last; until the operator
        // rolls members itself, say which ones still run the previous pod template.
        (
            true,
            "UpdatePending",
            format!(
                "{} run an older pod template: delete the replicas, then switch over and delete the old primary",
                outdated.join(", ")
            ),
        )
    } else {
        (false, "Stable", format!("{want} members"))
    };
    cond(
        &mut conditions,
        condition::PROGRESSING,
        progressing,
        p_reason,
        p_msg,
    );
    let (degraded, d_reason, d_msg) = match phase {
        phase::DEGRADED => (
            true,
            "MembersNotReady",
            format!("{} of {want} members not ready", want - ready.min(want)),
        ),
        phase::NO_PRIMARY => (
            true,
            "NoPrimary",
            "the cluster has no writable primary".to_owned(),
        ),
        phase::RUNNING => (false, "Healthy", "every member is ready".to_owned()),
        _ => (
            false,
            "Creating",
            "the members are being created".to_owned(),
        ),
    };
    cond(
        &mut conditions,
        condition::DEGRADED,
        degraded,
        d_reason,
        d_msg,
    );
    let (blocked, b_reason, b_msg) = failover_blocked(c);
    cond(
        &mut conditions,
        condition::FAILOVER_BLOCKED,
        blocked,
        b_reason,
        b_msg,
    );
    let (s_status, s_reason, s_msg) = switchover.condition();
    cond(
        &mut conditions,
        condition::SWITCHOVER_IN_PROGRESS,
        s_status,
        s_reason,
        s_msg,
    );
    let paused = c.spec.paused;
    let (pa_reason, pa_msg) = if paused {
        ("Paused", "automatic failover is paused (spec.paused)")
    } else {
        ("NotPaused", "automatic failover is active")
    };
    cond(
        &mut conditions,
        condition::PAUSED,
        paused,
        pa_reason,
        pa_msg.into(),
    );

    // Events on transitions only.
    if prev.observed_generation.is_none() {
        events.push(Transition::Created);
    }
    let was_ready = find_condition(prev, condition::READY).is_some_and(|c| c.status == "True");
    if phase == phase::RUNNING && !was_ready {
        events.push(Transition::Ready {
            ready,
            instances: want,
        });
    } else if phase != phase::RUNNING && was_ready {
        events.push(Transition::NotReady {
            reason: ready_reason.into(),
        });
    }
    let was_paused = find_condition(prev, condition::PAUSED).is_some_and(|c| c.status == "True");
    if paused != was_paused && (paused || prev.observed_generation.is_some()) {
        events.push(Transition::Paused { paused });
    }

    let status = PostgresClusterStatus {
        phase: Some(phase.into()),
        primary,
        last_primary,
        timeline: timeline.or(prev.timeline),
        epoch: obs.epoch(),
        instances: existing,
        ready_instances: ready,
        selector: Some(format!("{LABEL_CLUSTER}={}", c.name)),
        members,
        last_failover,
        conditions,
        observed_generation: generation,
    };
    (status, events)
}

/// Members whose pod was created from an older revision of the StatefulSet's template; `None` before the
/// StatefulSet reports its revision.
fn outdated_members(obs: &Observed) -> Option<Vec<String>> {
    let revision = obs
        .statefulset
        .as_ref()?
        .status
        .as_ref()?
        .update_revision
        .clone()?;
    Some(
        obs.pods
            .iter()
            .filter(|p| {
                p.labels()
                    .get("controller-revision-hash")
                    .is_some_and(|r| *r != revision)
            })
            .map(ResourceExt::name_any)
            .collect(),
    )
}

/// `FailoverBlocked`: whether no automatic failover can happen, and why.
fn failover_blocked(c: &ValidatedCluster) -> (bool, &'static str, String) {
    if c.spec.paused {
        return (true, "Paused", "spec.paused is set".into());
    }
    if c.spec.instances == 1 {
        return (
            true,
            "SingleInstance",
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
            "NoFailoverCandidate",
            "at most one member may be promoted (noFailover tags)".into(),
        );
    }
    (false, "FailoverPossible", "replicas can take over".into())
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
    use k8s_openapi::api::{
        apps::v1::StatefulSetStatus,
        coordination::v1::LeaseSpec,
        core::v1::{
            ContainerState, ContainerStateWaiting, ContainerStatus, PodCondition, PodStatus,
        },
    };
    use pgpilot_crds::contract::{PgpilotInfo, Xlog};

    use super::*;
    use crate::{testutil::example, validate::validate};

    fn cluster() -> ValidatedCluster {
        validate(&example("cluster-3.yaml"), "s").unwrap()
    }

    fn pod(name: &str, role: Option<&str>, ready: bool) -> Pod {
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

    fn lease(holder: Option<&str>, transitions: i32) -> Lease {
        Lease {
            spec: Some(LeaseSpec {
                holder_identity: holder.map(Into::into),
                lease_transitions: Some(transitions),
                ..LeaseSpec::default()
            }),
            ..Lease::default()
        }
    }

    fn sts(replicas: i32) -> StatefulSet {
        StatefulSet {
            status: Some(StatefulSetStatus {
                replicas,
                ..StatefulSetStatus::default()
            }),
            ..StatefulSet::default()
        }
    }

    fn report(role: &str, timeline: u32, pos: u64, lag: Option<u64>) -> MemberReport {
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

    fn healthy() -> Observed {
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

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    fn cond<'a>(s: &'a PostgresClusterStatus, t: &str) -> &'a Condition {
        find_condition(s, t).unwrap()
    }

    #[test]
    fn a_healthy_cluster_is_running_and_reports_its_members() {
        let (s, events) = compute(
            &cluster(),
            &PostgresClusterStatus::default(),
            &healthy(),
            &SwitchoverOutcome::None,
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
    fn a_holder_without_the_primary_label_is_not_the_primary() {
        let mut obs = healthy();
        obs.pods[0] = pod("pg-0", Some("replica"), true);
        let (s, _) = compute(
            &cluster(),
            &PostgresClusterStatus::default(),
            &obs,
            &SwitchoverOutcome::None,
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
            t(0),
        );
        assert_eq!(s.phase.as_deref(), Some("Creating"));
        assert_eq!((s.instances, s.ready_instances, s.members.len()), (3, 0, 3));
        assert!(
            s.members
                .iter()
                .all(|m| m.role == "unknown" && m.state == "unreachable" && !m.ready)
        );
        let mut pulling = pod("pg-0", None, false);
        let st = pulling.status.as_mut().unwrap();
        st.phase = Some("Pending".into());
        st.init_container_statuses = Some(vec![ContainerStatus {
            state: Some(ContainerState {
                waiting: Some(ContainerStateWaiting {
                    reason: Some("ImagePullBackOff".into()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }]);
        assert_eq!(
            member_status(&pulling, None).state,
            "init: ImagePullBackOff"
        );
        pulling.status.as_mut().unwrap().init_container_statuses = None;
        assert_eq!(member_status(&pulling, None).state, "pending");
        assert_eq!(cond(&s, "Progressing").reason, "Creating");
        assert_eq!(events, [Transition::Created]);
    }

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
        assert_eq!(cond(&during, "Degraded").reason, "NoPrimary");
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
    fn conditions_keep_their_transition_time_until_they_flip() {
        let c = cluster();
        let (a, _) = compute(
            &c,
            &PostgresClusterStatus::default(),
            &healthy(),
            &SwitchoverOutcome::None,
            t(0),
        );
        let (b, events) = compute(&c, &a, &healthy(), &SwitchoverOutcome::None, t(50));
        assert!(eq_time_insensitive(&a, &b));
        assert_eq!(a, b, "nothing changed: identical, times included");
        assert!(events.is_empty(), "{events:?}");
        let mut obs = healthy();
        obs.pods[2] = pod("pg-2", Some("replica"), false);
        let (d, _) = compute(&c, &b, &obs, &SwitchoverOutcome::None, t(60));
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
            t(0),
        );
        assert_eq!(cond(&s, "Progressing").reason, "Scaling");
        assert_eq!(s.phase.as_deref(), Some("Degraded"));
    }

    #[test]
    fn members_on_an_old_template_are_an_update_pending() {
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
        let (s, _) = compute(
            &cluster(),
            &PostgresClusterStatus::default(),
            &obs,
            &SwitchoverOutcome::None,
            t(0),
        );
        let p = cond(&s, "Progressing");
        assert_eq!(
            (p.status.as_str(), p.reason.as_str()),
            ("True", "UpdatePending")
        );
        assert!(
            p.message
                .starts_with("pg-0, pg-2 run an older pod template"),
            "{}",
            p.message
        );
        assert_eq!(
            s.phase.as_deref(),
            Some("Running"),
            "an update pending does not make the cluster unready"
        );
    }

    #[test]
    fn wal_positions_alone_are_volatile() {
        let c = cluster();
        let (a, _) = compute(
            &c,
            &PostgresClusterStatus::default(),
            &healthy(),
            &SwitchoverOutcome::None,
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
        let (b, _) = compute(&c, &a, &moved, &SwitchoverOutcome::None, t(10));
        assert!(only_volatile_changes(&a, &b));
        assert!(
            !only_volatile_changes(&a, &a),
            "no change at all is not a volatile change"
        );
        let mut unready = moved.clone();
        unready.pods[2] = pod("pg-2", Some("replica"), false);
        let (d, _) = compute(&c, &a, &unready, &SwitchoverOutcome::None, t(20));
        assert!(!only_volatile_changes(&a, &d), "readiness is not volatile");
    }

    #[test]
    fn failover_blocked_reasons() {
        let mut c = cluster();
        assert!(!failover_blocked(&c).0);
        c.spec.paused = true;
        assert_eq!(failover_blocked(&c).1, "Paused");
        c.spec.paused = false;
        let tag = |nf| pgpilot_crds::contract::MemberTags {
            no_failover: nf,
            ..Default::default()
        };
        c.sidecar_config.tags =
            BTreeMap::from([("pg-1".into(), tag(true)), ("pg-2".into(), tag(true))]);
        assert_eq!(failover_blocked(&c).1, "NoFailoverCandidate");
        c.spec.instances = 1;
        assert_eq!(failover_blocked(&c).1, "SingleInstance");
    }

    #[test]
    fn invalid_spec_keeps_observations_and_sets_ready_false() {
        let (ok, _) = compute(
            &cluster(),
            &PostgresClusterStatus::default(),
            &healthy(),
            &SwitchoverOutcome::None,
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

    #[test]
    fn lsn_format_matches_postgres() {
        assert_eq!(format_lsn(0x3_0000_0060), "3/60");
        assert_eq!(format_lsn(0x16B_3742_8D20), "16B/37428D20");
    }
}
