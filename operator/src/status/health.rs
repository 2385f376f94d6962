//! The phase and the conditions about the cluster's health — `Ready`, `Progressing`, `Degraded`, `Paused`
//! — with the Events of their transitions. Pure.

use pgpilot_crds::{
    PostgresClusterStatus,
    cluster::{condition, phase, reason},
};

use super::Derived;
use crate::{conditions::is_true, events::Transition, validate::ValidatedCluster};

/// Member counts the phase and the conditions are judged by.
#[derive(Clone, Copy, Debug)]
pub(super) struct Counts {
    /// Members whose pod is Ready.
    pub ready: i32,
    /// Members that exist (the StatefulSet's replicas, else the pods).
    pub existing: i32,
    /// `spec.instances`.
    pub want: i32,
}

/// `status.phase`: whether there is a primary, whether there ever was one, and whether anything exists yet.
pub(super) fn phase(
    primary: bool,
    had_primary: bool,
    anything_exists: bool,
    n: Counts,
) -> &'static str {
    match (primary, anything_exists) {
        (false, false) => phase::PENDING,
        (false, true) if had_primary => phase::NO_PRIMARY,
        (false, true) => phase::CREATING,
        (true, _) if n.ready >= n.want && n.existing == n.want => phase::RUNNING,
        (true, _) => phase::DEGRADED,
    }
}

pub(super) fn ready(phase: &str, n: Counts, primary: Option<&str>) -> Derived {
    let Counts { ready, want, .. } = n;
    let (why, message) = match phase {
        phase::RUNNING => (
            reason::ALL_MEMBERS_READY,
            format!(
                "{ready}/{want} members ready, primary {}",
                primary.unwrap_or_default()
            ),
        ),
        phase::DEGRADED => (
            reason::MEMBERS_NOT_READY,
            format!("{ready}/{want} members ready"),
        ),
        phase::NO_PRIMARY => (
            reason::NO_PRIMARY,
            "no member holds the leader Lease as primary".into(),
        ),
        phase::HIBERNATED => (
            reason::HIBERNATED,
            "every member is stopped (spec.hibernation); the volumes are kept".into(),
        ),
        _ => (
            reason::CREATING,
            format!("{ready}/{want} members ready, waiting for the first primary"),
        ),
    };
    (phase == phase::RUNNING, why, message)
}

/// `scale`: what a scale-down under way waits for or does ([`crate::scale::note`]); `rolling`: the same
/// of a rolling update ([`crate::rollout::Plan::note`]); `hibernation`: the same of a hibernation
/// ([`crate::hibernation::Stage::note`]), which comes first (it holds the others).
pub(super) fn progressing(
    phase: &str,
    n: Counts,
    scale: Option<&str>,
    rolling: Option<(&'static str, &str)>,
    hibernation: Option<(&'static str, &str)>,
) -> Derived {
    let Counts { existing, want, .. } = n;
    if let Some((why, note)) = hibernation {
        (why != reason::HIBERNATED, why, note.to_owned())
    } else if phase == phase::CREATING || phase == phase::PENDING {
        (true, reason::CREATING, "creating the members".to_owned())
    } else if let Some(note) = scale {
        (true, reason::SCALING, note.to_owned())
    } else if existing != want {
        (
            true,
            reason::SCALING,
            format!("{existing} members, scaling to {want}"),
        )
    } else if let Some((why, note)) = rolling {
        (true, why, note.to_owned())
    } else {
        (false, reason::STABLE, format!("{want} members"))
    }
}

/// `Degraded`. A member refusing to touch its data comes first: nothing heals that on its own.
pub(super) fn degraded(phase: &str, n: Counts, refusals: &[(String, String)]) -> Derived {
    let Counts { ready, want, .. } = n;
    if !refusals.is_empty() {
        let list: Vec<String> = refusals
            .iter()
            .map(|(m, why)| format!("{m}: {why}"))
            .collect();
        return (true, reason::MEMBER_REFUSING, list.join("; "));
    }
    match phase {
        phase::DEGRADED => (
            true,
            reason::MEMBERS_NOT_READY,
            format!("{} of {want} members not ready", want - ready.min(want)),
        ),
        phase::NO_PRIMARY => (
            true,
            reason::NO_PRIMARY,
            "the cluster has no writable primary".to_owned(),
        ),
        phase::RUNNING => (false, reason::HEALTHY, "every member is ready".to_owned()),
        phase::HIBERNATED => (
            false,
            reason::HIBERNATED,
            "every member is stopped (spec.hibernation)".to_owned(),
        ),
        _ => (
            false,
            reason::CREATING,
            "the members are being created".to_owned(),
        ),
    }
}

pub(super) fn paused(c: &ValidatedCluster) -> Derived {
    if c.spec.paused {
        (
            true,
            reason::PAUSED,
            "automatic failover is paused (spec.paused)".into(),
        )
    } else {
        (
            false,
            reason::NOT_PAUSED,
            "automatic failover is active".into(),
        )
    }
}

/// The Events of this reconcile's health: the first status, `Ready` flipping (named by the new `Ready`
/// reason), `Paused` flipping (not announced as resumed on the first status).
pub(super) fn transitions(
    prev: &PostgresClusterStatus,
    phase: &str,
    ready_reason: &str,
    n: Counts,
    paused: bool,
) -> Vec<Transition> {
    let mut events = Vec::new();
    let first = prev.observed_generation.is_none();
    if first {
        events.push(Transition::Created);
    }
    let was_ready = is_true(prev, condition::READY);
    if phase == phase::RUNNING && !was_ready {
        events.push(Transition::Ready {
            ready: n.ready,
            instances: n.want,
        });
    } else if phase != phase::RUNNING && was_ready {
        events.push(Transition::NotReady {
            reason: ready_reason.into(),
        });
    }
    let was_paused = is_true(prev, condition::PAUSED);
    if paused != was_paused && (paused || !first) {
        events.push(Transition::Paused { paused });
    }
    events
}
