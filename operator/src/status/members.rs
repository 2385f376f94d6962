//! `status.members`: one entry per member pod, from the pod and its sidecar's report. Pure.
//!
//! A member whose sidecar answered is described by its report (role, state, timeline, WAL position, lag);
//! one that did not by what the kubelet says about its pod.

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use kube::ResourceExt;
use pgpilot_crds::{
    cluster::MemberStatus,
    contract::{LABEL_ROLE, MemberReport, ROLE_PRIMARY},
};

use super::Observed;

/// Every observed pod as a member, in name order.
pub(super) fn members(obs: &Observed) -> Vec<MemberStatus> {
    obs.pods
        .iter()
        .map(|p| member_status(p, obs.reports.get(&p.name_any())))
        .collect()
}

/// Formats a WAL byte position the way PostgreSQL prints an LSN.
pub fn format_lsn(pos: u64) -> String {
    format!("{:X}/{:X}", pos >> 32, pos & 0xFFFF_FFFF)
}

fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The state of a member whose sidecar did not report: what the kubelet says about its containers
/// (`init: ImagePullBackOff`, `CrashLoopBackOff`), else the pod phase, else `unreachable`.
fn silent_member_state(pod: &Pod) -> String {
    let Some(status) = pod.status.as_ref() else {
        return "pending".into();
    };
    let waiting = |statuses: &Option<Vec<ContainerStatus>>| {
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

pub(super) fn member_status(pod: &Pod, report: Option<&MemberReport>) -> MemberStatus {
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

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{ContainerState, ContainerStateWaiting};

    use super::*;
    use crate::status::fixtures::pod;

    #[test]
    fn a_silent_member_shows_what_the_kubelet_says() {
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
    }

    #[test]
    fn lsn_format_matches_postgres() {
        assert_eq!(format_lsn(0x3_0000_0060), "3/60");
        assert_eq!(format_lsn(0x16B_3742_8D20), "16B/37428D20");
    }
}
