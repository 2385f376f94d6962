//! The Events the operator publishes on the cluster: one per transition, never per reconcile.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::{
    Resource,
    runtime::events::{Event, EventType, Recorder},
};
use pgpilot_crds::{PostgresCluster, cluster::event};
use tracing::warn;

/// Something that changed and is worth a line in `kubectl describe pgc`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transition {
    /// First reconcile of the cluster: its children were applied.
    Created,
    Scaled {
        from: i32,
        to: i32,
    },
    PrimaryElected {
        member: String,
    },
    FailoverObserved {
        from: String,
        to: String,
    },
    SwitchoverRequested {
        from: String,
        to: String,
    },
    SwitchoverCompleted {
        from: String,
        to: String,
    },
    SwitchoverFailed {
        to: String,
        error: String,
    },
    Ready {
        ready: i32,
        instances: i32,
    },
    NotReady {
        reason: String,
    },
    Paused {
        paused: bool,
    },
    InvalidSpec {
        message: String,
    },
    SecretsCreated {
        kinds: Vec<&'static str>,
    },
    SecretsRecreated {
        kinds: Vec<&'static str>,
    },
    /// `FailoverBlocked` became true because no replica may take over (`message` names them and why).
    FailoverBlocked {
        message: String,
    },
    /// `FailoverBlocked` was true for that reason and a replica may take over again.
    FailoverPossible,
    /// A member refuses to clone, rewind or wipe: its data or the primary's belongs to another database
    /// system than the cluster's.
    MemberRefusing {
        message: String,
    },
    /// A rolling update deleted a member's pod so that it comes back on the current template.
    MemberUpdating {
        member: String,
        primary: bool,
    },
    /// A rolling update stopped: an updated member did not come back.
    RollingUpdateStalled {
        member: String,
        why: String,
    },
    /// `primaryUpdateStrategy: supervised`: only the primary is left, waiting for a switchover.
    PrimaryUpdatePending {
        primary: String,
    },
    /// Every member runs the current template again.
    RollingUpdateDone {
        members: i32,
    },
    /// `spec.hibernation`: every member answering is paused; the operator stops them all.
    Hibernating {
        primary: Option<String>,
    },
    /// Back from a hibernation: a primary runs again (the former one unless it could not come back).
    WokeUp {
        primary: String,
        former: Option<String>,
    },
    /// A reconcile failed; `reason` is the error's category. Announced once per change of category.
    ReconcileFailed {
        reason: String,
        message: String,
    },
}

impl Transition {
    /// The member pod an Event is about besides the cluster.
    pub fn member_pod(&self) -> Option<&str> {
        match self {
            Self::MemberUpdating { member, .. } => Some(member),
            _ => None,
        }
    }

    pub fn to_event(&self) -> Event {
        let (type_, reason, note) = match self {
            Self::Created => (
                EventType::Normal,
                event::CREATED,
                "created the cluster's objects".to_owned(),
            ),
            Self::Scaled { from, to } => (
                EventType::Normal,
                event::SCALED,
                format!("scaled from {from} to {to} instances"),
            ),
            Self::PrimaryElected { member } => (
                EventType::Normal,
                event::PRIMARY_ELECTED,
                format!("{member} is the primary"),
            ),
            Self::FailoverObserved { from, to } => (
                EventType::Warning,
                event::FAILOVER_OBSERVED,
                format!("primary changed from {from} to {to}"),
            ),
            Self::SwitchoverRequested { from, to } => (
                EventType::Normal,
                event::SWITCHOVER_REQUESTED,
                format!("asked {from} to hand over to {to}"),
            ),
            Self::SwitchoverCompleted { from, to } => (
                EventType::Normal,
                event::SWITCHOVER_COMPLETED,
                format!("switched over from {from} to {to}"),
            ),
            Self::SwitchoverFailed { to, error } => (
                EventType::Warning,
                event::SWITCHOVER_FAILED,
                format!("switchover to {to}: {error}"),
            ),
            Self::Ready { ready, instances } => (
                EventType::Normal,
                event::CLUSTER_READY,
                format!("{ready}/{instances} members ready"),
            ),
            Self::NotReady { reason } => (
                EventType::Warning,
                event::CLUSTER_NOT_READY,
                format!("not ready: {reason}"),
            ),
            Self::Paused { paused: true } => (
                EventType::Normal,
                event::PAUSED,
                "automatic failover paused".to_owned(),
            ),
            Self::Paused { paused: false } => (
                EventType::Normal,
                event::RESUMED,
                "automatic failover resumed".to_owned(),
            ),
            Self::InvalidSpec { message } => {
                (EventType::Warning, event::INVALID_SPEC, message.clone())
            }
            Self::SecretsCreated { kinds } => (
                EventType::Normal,
                event::SECRETS_CREATED,
                format!("generated credentials: {}", kinds.join(", ")),
            ),
            Self::FailoverBlocked { message } => {
                (EventType::Warning, event::FAILOVER_BLOCKED, message.clone())
            }
            Self::MemberRefusing { message } => {
                (EventType::Warning, event::MEMBER_REFUSING, message.clone())
            }
            Self::FailoverPossible => (
                EventType::Normal,
                event::FAILOVER_POSSIBLE,
                "a replica may take over again".to_owned(),
            ),
            Self::MemberUpdating { member, primary } => (
                EventType::Normal,
                event::MEMBER_UPDATING,
                if *primary {
                    format!(
                        "rolling update: restarting the primary {member} on the current template"
                    )
                } else {
                    format!("rolling update: restarting {member} on the current template")
                },
            ),
            Self::RollingUpdateStalled { member, why } => (
                EventType::Warning,
                event::ROLLING_UPDATE_STALLED,
                format!("rolling update stopped: {member} does not come back ({why})"),
            ),
            Self::PrimaryUpdatePending { primary } => (
                EventType::Normal,
                event::PRIMARY_UPDATE_PENDING,
                format!(
                    "every replica is updated; the primary {primary} waits for a switchover in the spec"
                ),
            ),
            Self::RollingUpdateDone { members } => (
                EventType::Normal,
                event::ROLLING_UPDATE_DONE,
                format!("rolling update done: {members} members on the current template"),
            ),
            Self::Hibernating { primary } => (
                EventType::Normal,
                event::HIBERNATING,
                match primary {
                    Some(p) => format!(
                        "hibernation: stopping every member, volumes kept; {p} is the primary again on wake"
                    ),
                    None => {
                        "hibernation: stopping every member, volumes kept (no primary ran)".into()
                    }
                },
            ),
            Self::WokeUp { primary, former } => (
                EventType::Normal,
                event::WOKE_UP,
                match former {
                    Some(f) if f != primary => format!(
                        "woke up from hibernation with {primary} as primary: {f}, the primary when the \
                         members stopped, did not take its role back in time"
                    ),
                    _ => format!("woke up from hibernation with {primary} as primary"),
                },
            ),
            Self::ReconcileFailed { reason, message } => (
                EventType::Warning,
                reason.as_str(),
                message.chars().take(1000).collect(),
            ),
            Self::SecretsRecreated { kinds } => (
                EventType::Warning,
                event::SECRETS_RECREATED,
                format!(
                    "Secrets {} were missing and got new random passwords, which PostgreSQL does not know yet",
                    kinds.join(", ")
                ),
            ),
        };
        Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: "Reconcile".into(),
            secondary: None,
        }
    }
}

/// Publishes each transition; a failed publish is logged, never fails the reconcile.
pub async fn publish(recorder: &Recorder, cluster: &PostgresCluster, transitions: &[Transition]) {
    let reference = cluster.object_ref(&());
    for t in transitions {
        let mut event = t.to_event();
        // The recorder folds Events with the same reason, action and objects into one series and keeps
        // the first note: a member's own Event names its pod, so each member's shows.
        event.secondary = t.member_pod().map(|pod| ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: Some(pod.to_owned()),
            namespace: cluster.metadata.namespace.clone(),
            ..ObjectReference::default()
        });
        if let Err(e) = recorder.publish(&event, &reference).await {
            warn!(error = %e, event = ?t, "could not publish event");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_read_well_in_kubectl_describe() {
        let e = Transition::FailoverObserved {
            from: "pg-0".into(),
            to: "pg-1".into(),
        }
        .to_event();
        assert_eq!(
            (e.type_, e.reason.as_str()),
            (EventType::Warning, "FailoverObserved")
        );
        assert_eq!(e.note.as_deref(), Some("primary changed from pg-0 to pg-1"));
        let e = Transition::Scaled { from: 3, to: 5 }.to_event();
        assert_eq!((e.type_, e.reason.as_str()), (EventType::Normal, "Scaled"));
        let long = "x".repeat(5000);
        let e = Transition::ReconcileFailed {
            reason: "ApplyStatefulSetFailed".into(),
            message: long,
        }
        .to_event();
        assert_eq!(
            (e.type_, e.reason.as_str()),
            (EventType::Warning, "ApplyStatefulSetFailed")
        );
        assert_eq!(
            e.note.map(|n| n.len()),
            Some(1000),
            "notes are limited to 1 kB"
        );
    }
}
