//! The reconcile driver: validate → build → apply → switchover → status, one module per step.
//!
//! Reads a `PostgresCluster` and the cluster state through the steps; returns when to look again.
//! An invalid spec is written as `Ready=False` with a Warning Event and waits for a change of the spec
//! (no requeue loop). A valid cluster is looked at again every [`RESYNC`], because the sidecars change
//! member state (roles, lag, timelines) that no watched object shows.

use std::{sync::Arc, time::Duration};

use futures::StreamExt;
use k8s_openapi::api::{
    apps::v1::StatefulSet,
    core::v1::{ConfigMap, Pod, Service},
    policy::v1::PodDisruptionBudget,
};
use k8s_openapi::jiff::Timestamp;
use kube::{
    Api, Client, ResourceExt,
    runtime::{
        Controller,
        controller::Action,
        events::{Recorder, Reporter},
        reflector::ObjectRef,
        watcher,
    },
};
use pgpilot_crds::{
    PostgresCluster, PostgresClusterStatus,
    cluster::{condition, planned_reason, reason},
    contract::{LABEL_CLUSTER, error_chain},
};
use tokio::time::Instant;
use tracing::{info, instrument, warn};

use crate::{
    apply,
    build::{self, Children},
    conditions::find_condition,
    events::{self, Transition},
    hibernation,
    memo::{AnnouncedFailures, Memo, Memos, cluster_key, needs_apply},
    metrics::Metrics,
    rollout, scale, status,
    switchover::{self, SwitchoverOutcome},
    validate::{InvalidSpec, ValidatedCluster, validate},
};

/// How often a valid cluster is reconciled without any watched change.
pub const RESYNC: Duration = Duration::from_secs(10);
/// How often a scale-down or a rolling update under way is looked at: each of its steps waits on the
/// sidecars.
const SHRINK_LOOK: Duration = Duration::from_secs(2);
/// Back-off after a failed reconcile.
pub const RETRY: Duration = Duration::from_secs(5);
pub struct Context {
    pub client: Client,
    pub http: reqwest::Client,
    pub recorder: Recorder,
    pub metrics: Metrics,
    /// The sidecar image given to the init container.
    pub sidecar_image: String,
    pub memos: Memos,
    pub failures: AnnouncedFailures,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("rendering the sidecar configuration")]
    Build(#[source] serde_json::Error),
    #[error(transparent)]
    Apply(#[from] apply::Error),
    #[error(transparent)]
    Status(#[from] status::Error),
    #[error("reading the cluster's current status")]
    ReadStatus(#[source] kube::Error),
    #[error("reading the StatefulSet and the Lease before a scale-down step")]
    ReadScale(#[source] kube::Error),
}

impl Error {
    /// Names the variant: the metric label and the Event reason.
    pub fn category(&self) -> String {
        match self {
            Self::Build(_) => "BuildFailed".into(),
            Self::Apply(e) => e.category(),
            Self::Status(e) => e.category(),
            Self::ReadStatus(_) => "ReadFailed".into(),
            Self::ReadScale(_) => "ReadScaleFailed".into(),
        }
    }
}

#[instrument(skip_all, fields(cluster = %cluster.name_any(), namespace = cluster.namespace().unwrap_or_default()))]
pub async fn reconcile(cluster: Arc<PostgresCluster>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let result = reconcile_steps(&cluster, &ctx).await;
    let category = result.as_ref().err().map(Error::category);
    ctx.metrics.observe(started.elapsed(), category.clone());
    let unannounced = ctx
        .failures
        .record(&cluster_key(&cluster), category.as_deref());
    if let Err(e) = &result
        && unannounced
    {
        let failed = Transition::ReconcileFailed {
            reason: e.category(),
            message: error_chain(e),
        };
        events::publish(&ctx.recorder, &cluster, &[failed]).await;
    }
    result
}

/// The steps: validate (pure) → scale-down step (reads) → build (pure) → apply (SSA) → observe →
/// switchover (the spec's) → roll (pure) → hand over (a leaving primary's) → restart (the roll's pod)
/// → compute the status
/// (pure) → update it → announce its transitions.
async fn reconcile_steps(cluster: &PostgresCluster, ctx: &Context) -> Result<Action, Error> {
    let now = Timestamp::now();
    let api: Api<PostgresCluster> =
        Api::namespaced(ctx.client.clone(), &cluster.namespace().unwrap_or_default());
    // The object as it is now, not as cached: a reconcile runs from the watch's cache, which after a
    // restarted apiserver answered the watches "too old resource version" kept an old spec for good
    // (seen in a soak: `spec.paused: true` never reached the ConfigMap while the status was patched
    // every 10 s). The status subresource answers with the whole object: one read for both.
    let fresh = timed("read the cluster", last_written(&api, cluster)).await?;
    let prev = fresh.status.clone().unwrap_or_default();
    let cluster = &fresh;
    // Being deleted: the garbage collector removes the children; applying them again would fight it.
    if cluster.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let mut c = match validate(cluster, &ctx.sidecar_image) {
        Ok(c) => c,
        Err(invalid) => return reject_invalid_spec(ctx, cluster, &api, &prev, &invalid, now).await,
    };
    // A hibernation pauses the members, then stops them; on wake the former primary goes first.
    let hibernation = hibernation::stage(c.spec.hibernation, &prev, now);
    hibernation.configure(&mut c);
    let c = c;
    // How far a scale-down may shrink the StatefulSet now (never the primary's pod, never a member
    // still recorded synchronous, one at a time), from the StatefulSet and the Lease as they are now.
    let shape = timed("read the scale", scale::read(&ctx.client, &c))
        .await
        .map_err(Error::ReadScale)?;
    let step = scale::plan(&c.name, c.spec.instances, &shape);
    let replicas = hibernation.replicas(step.replicas(&shape, c.spec.instances));
    let children = build::build_children(&c, prev.system_identifier.as_deref(), replicas)
        .map_err(Error::Build)?;
    let mut memo = timed(
        "apply",
        apply_step(ctx, cluster, &c, &children, &prev, replicas),
    )
    .await?;
    let observed = timed("observe", status::observe(&ctx.client, &ctx.http, &c)).await?;
    let (outcome, mut transitions) = timed(
        "switchover",
        switchover_step(ctx, &c, &prev, &observed, now),
    )
    .await;
    let spec_switchover_busy = matches!(outcome, SwitchoverOutcome::InProgress { .. });
    let scaling = step != scale::Step::Steady;
    let held = hibernation.holds_changes();
    let roll = rollout::plan(&c, &observed, scaling || held, spec_switchover_busy, now);
    // One primary hands over at a time: for the shrink that would remove its pod, or for the roll that
    // reached it.
    let (leaving, why_planned) = match (step.leaving_primary(), roll.leaving_primary()) {
        _ if held => (None, planned_reason::SCALE_DOWN),
        (Some(p), _) => (Some(p), planned_reason::SCALE_DOWN),
        (None, p) => (p, planned_reason::ROLLING_UPDATE),
    };
    let decision = scale::hand_over(&c, &prev, &observed, leaving, spec_switchover_busy, now);
    let (planned, why_not, handed) = timed(
        "hand over",
        scale::carry_out(&ctx.client, &ctx.http, &c, decision, why_planned, now),
    )
    .await;
    transitions.extend(handed);
    let restarted = timed("roll", rollout::carry_out(&ctx.client, &c, &roll)).await;
    let existing = observed
        .statefulset
        .as_ref()
        .and_then(|s| s.status.as_ref())
        .map_or(c.spec.instances, |s| s.replicas);
    let shrink_why = why_not
        .as_deref()
        .filter(|_| step.leaving_primary().is_some());
    let rolling = match restarted {
        Ok(events) => {
            transitions.extend(events);
            roll.note(
                why_not
                    .as_deref()
                    .filter(|_| roll.leaving_primary().is_some()),
            )
        }
        Err(e) => Some((reason::ROLLING_UPDATE, format!("{}: {e}", roll.head()))),
    };
    transitions.extend(rollout::transitions(&prev, &roll));
    let progress = scale::Progress {
        planned,
        note: scale::note(&step, existing, c.spec.instances, shrink_why),
        rolling,
        updated: roll.updated,
        hibernation: hibernation.note(observed.pods.is_empty()),
    };
    let (mut next, more) = status::compute(&c, &prev, &observed, &outcome, &progress, now);
    transitions.extend(more);
    let (hibernated, step_event) = hibernation::next(&hibernation, &prev, &observed, now);
    next.hibernation = hibernated;
    transitions.extend(step_event);
    timed("status", update_status(&api, &c, &prev, &next, &mut memo)).await?;
    timed(
        "events",
        events::publish(&ctx.recorder, cluster, &transitions),
    )
    .await;
    ctx.memos.put(cluster_key(cluster), memo);
    let settled = matches!(hibernation, hibernation::Stage::Awake)
        || (hibernation == hibernation::Stage::Stopped && observed.pods.is_empty());
    let look = if !scaling && !roll.rolling() && settled {
        next_look(&outcome, now)
    } else {
        SHRINK_LOOK.min(next_look(&outcome, now))
    };
    Ok(Action::requeue(look))
}

/// A reconcile step slower than this is named in a warning: a reconcile runs one at a time per cluster,
/// so a slow step delays every change of the spec (a `paused: false` reaching the members) behind it.
const SLOW_STEP: Duration = Duration::from_secs(2);

/// Runs one reconcile step, warning when it took longer than [`SLOW_STEP`].
async fn timed<T>(step: &'static str, work: impl Future<Output = T>) -> T {
    let started = Instant::now();
    let out = work.await;
    let took = started.elapsed();
    if took > SLOW_STEP {
        warn!(
            step,
            took_ms = took.as_millis() as u64,
            "slow reconcile step"
        );
    }
    out
}

/// The cluster with its status as last written, not as cached: a reconcile triggered right after the
/// previous one's status patch can run before the watch delivers it, and would then misjudge transitions
/// (a requested switchover seen as a failover).
async fn last_written(
    api: &Api<PostgresCluster>,
    cluster: &PostgresCluster,
) -> Result<PostgresCluster, Error> {
    api.get_status(&cluster.name_any())
        .await
        .map_err(Error::ReadStatus)
}

/// An invalid spec: `Ready=False` with the reason, a Warning Event when the reason is new, and no
/// requeue: the next look is at the next change of the spec.
async fn reject_invalid_spec(
    ctx: &Context,
    cluster: &PostgresCluster,
    api: &Api<PostgresCluster>,
    prev: &PostgresClusterStatus,
    invalid: &InvalidSpec,
    now: Timestamp,
) -> Result<Action, Error> {
    let message = invalid.to_string();
    warn!(reason = %message, "invalid spec");
    let next = status::invalid(prev, cluster.metadata.generation, message.clone(), now);
    let announced = find_condition(prev, condition::READY)
        .is_some_and(|c| c.reason == reason::INVALID_SPEC && c.message == message);
    status::write(api, &cluster.name_any(), prev, &next).await?;
    if !announced {
        events::publish(
            &ctx.recorder,
            cluster,
            &[Transition::InvalidSpec { message }],
        )
        .await;
    }
    Ok(Action::await_change())
}

/// Applies the children when they changed, when it is time to re-assert them, or when one is missing;
/// announces what the apply changed at once (a later step failing must not lose it). Returns the memo
/// to keep for the cluster.
async fn apply_step(
    ctx: &Context,
    cluster: &PostgresCluster,
    c: &ValidatedCluster,
    children: &Children,
    prev: &PostgresClusterStatus,
    replicas: i32,
) -> Result<Memo, Error> {
    let previous = ctx.memos.get(&cluster_key(cluster));
    let fingerprint = apply::fingerprint(children).map_err(Error::Build)?;
    let started = Instant::now();
    let must_apply = needs_apply(previous.as_ref(), fingerprint, started)
        || apply::any_missing(&ctx.client, c, children).await?;
    let applied = if must_apply {
        apply::apply(&ctx.client, c, children).await?
    } else {
        apply::Applied::default()
    };
    events::publish(
        &ctx.recorder,
        cluster,
        &apply_transitions(&applied, replicas, prev.observed_generation.is_none()),
    )
    .await;
    Ok(Memo::after_apply(
        previous,
        fingerprint,
        must_apply,
        started,
    ))
}

/// Plans the switchover in the spec against the observed primary and carries it out.
async fn switchover_step(
    ctx: &Context,
    c: &ValidatedCluster,
    prev: &PostgresClusterStatus,
    observed: &status::Observed,
    now: Timestamp,
) -> (SwitchoverOutcome, Vec<Transition>) {
    let primary = observed.primary();
    let plan = switchover::plan(c, prev, primary.as_deref(), now);
    let primary_ip = primary
        .as_deref()
        .and_then(|p| observed.pod(p))
        .and_then(|p| p.status.as_ref()?.pod_ip.clone());
    switchover::run(&ctx.client, &ctx.http, c, plan, primary_ip.as_deref(), prev).await
}

/// Writes the new status unless it equals the stored one, or changes only WAL positions and the status
/// was written recently; notes the write in the memo.
async fn update_status(
    api: &Api<PostgresCluster>,
    c: &ValidatedCluster,
    prev: &PostgresClusterStatus,
    next: &PostgresClusterStatus,
    memo: &mut Memo,
) -> Result<(), Error> {
    if !memo.defers(prev, next) && status::write(api, &c.name, prev, next).await? {
        memo.status_written_at = Some(Instant::now());
        info!(
            phase = next.phase.as_deref().unwrap_or_default(),
            primary = next.primary.as_deref().unwrap_or_default(),
            ready = next.ready_instances,
            "status updated"
        );
    }
    Ok(())
}

/// What an apply changed that is worth an Event: a scale, and Secrets generated (expected on the first
/// reconcile, a warning later: someone deleted them, and PostgreSQL does not know the new password).
fn apply_transitions(applied: &apply::Applied, instances: i32, first: bool) -> Vec<Transition> {
    let mut t = Vec::new();
    if let Some(before) = applied.previous_replicas
        && before != instances
    {
        t.push(Transition::Scaled {
            from: before,
            to: instances,
        });
    }
    if !applied.created_secrets.is_empty() {
        let kinds = applied.created_secrets.clone();
        t.push(if first {
            Transition::SecretsCreated { kinds }
        } else {
            Transition::SecretsRecreated { kinds }
        });
    }
    t
}

/// A scheduled switchover is looked at when it is due, if that is sooner than the resync.
fn next_look(outcome: &SwitchoverOutcome, now: Timestamp) -> Duration {
    match outcome {
        SwitchoverOutcome::Scheduled { at, .. } => {
            let until = Duration::try_from(now.duration_until(*at)).unwrap_or_default();
            until.clamp(Duration::from_millis(200), RESYNC)
        }
        SwitchoverOutcome::InProgress { .. } => Duration::from_secs(2),
        _ => RESYNC,
    }
}

pub fn error_policy(cluster: Arc<PostgresCluster>, error: &Error, _ctx: Arc<Context>) -> Action {
    warn!(cluster = %cluster.name_any(), reason = %error.category(), error = %error_chain(error), "reconcile failed");
    Action::requeue(RETRY)
}

/// Runs the controller until shutdown. `namespace` limits it to one namespace; `None` watches all.
pub async fn run(
    client: Client,
    namespace: Option<String>,
    sidecar_image: String,
    metrics: Metrics,
) {
    fn api<K>(client: &Client, ns: Option<&str>) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        match ns {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        }
    }
    let ns = namespace.as_deref();
    let owned = || watcher::Config::default().labels(LABEL_CLUSTER);
    let reporter = Reporter {
        controller: "pgpilot-operator".into(),
        instance: std::env::var("POD_NAME").ok(),
    };
    let ctx = Arc::new(Context {
        client: client.clone(),
        http: reqwest::Client::new(),
        recorder: Recorder::new(client.clone(), reporter),
        metrics,
        sidecar_image,
        memos: Memos::default(),
        failures: AnnouncedFailures::default(),
    });
    Controller::new(
        api::<PostgresCluster>(&client, ns),
        watcher::Config::default(),
    )
    .owns(api::<StatefulSet>(&client, ns), owned())
    .owns(api::<Service>(&client, ns), owned())
    .owns(api::<ConfigMap>(&client, ns), owned())
    .owns(api::<PodDisruptionBudget>(&client, ns), owned())
    // Not the Lease: its holder renews it every retry period, and the resync reads it anyway.
    // Pods belong to the StatefulSet, not to the cluster: map them back through their label, so a
    // role label written by a sidecar shows in the status at once.
    .watches(api::<Pod>(&client, ns), owned(), |pod: Pod| {
        let cluster = pod.labels().get(LABEL_CLUSTER).cloned()?;
        Some(ObjectRef::<PostgresCluster>::new(&cluster).within(&pod.namespace()?))
    })
    .shutdown_on_signal()
    .run(reconcile, error_policy, ctx)
    .for_each(|result| async move {
        if let Err(e) = result {
            warn!(error = %e, "controller event");
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apply_announces_scales_and_generated_secrets() {
        let applied = |prev, secrets: Vec<&'static str>| apply::Applied {
            previous_replicas: prev,
            created_secrets: secrets,
        };
        assert_eq!(
            apply_transitions(&applied(Some(3), vec![]), 5, false),
            [Transition::Scaled { from: 3, to: 5 }]
        );
        assert!(apply_transitions(&applied(Some(3), vec![]), 3, false).is_empty());
        assert!(
            apply_transitions(&applied(None, vec![]), 3, false).is_empty(),
            "created, not scaled"
        );
        assert_eq!(
            apply_transitions(&applied(None, vec!["app", "api"]), 3, true),
            [Transition::SecretsCreated {
                kinds: vec!["app", "api"]
            }]
        );
        assert_eq!(
            apply_transitions(&applied(Some(3), vec!["api"]), 3, false),
            [Transition::SecretsRecreated { kinds: vec!["api"] }]
        );
    }

    #[test]
    fn scheduled_switchovers_are_looked_at_when_due() {
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let at = |s| SwitchoverOutcome::Scheduled {
            target: "pg-1".into(),
            at: now + k8s_openapi::jiff::SignedDuration::from_secs(s),
        };
        assert_eq!(next_look(&at(3), now), Duration::from_secs(3));
        assert_eq!(next_look(&at(3600), now), RESYNC);
        assert_eq!(next_look(&at(-5), now), Duration::from_millis(200));
        assert_eq!(next_look(&SwitchoverOutcome::None, now), RESYNC);
    }
}
