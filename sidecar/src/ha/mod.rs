//! The HA loop: every `retryPeriod` observe (local PostgreSQL, peers over REST, the Lease, the holder's
//! pod) → [`decide`] (pure) → act, then publish the member's state on the `watch` channel.
//!
//! Only this loop changes anything: PostgreSQL (through [`Postgres`]), the Lease (through [`Elector`]),
//! and this member's pod label. REST commands are taken between two loops. The rules live in
//! `election` and are unit-tested there; the actions here name the rule they carry out.
//!
//! One module per concern:
//! - [`member`]: the member's [`Phase`] and [`Lineage`], and everything derived from them;
//! - `primary`: lead (bootstrap, start, promote), release, demote;
//! - `fencing`: renewing while a long action runs, fencing, the watchdog (L5);
//! - `replica`: follow (clone, rejoin, reconfigure);
//! - [`sync`]: synchronous standbys (the pure plan and its upkeep);
//! - `labels`: the pods' role labels (L7, L9);
//! - `commands`: what the REST API asks for (switchover, restart, reload, reinitialize);
//! - `publish`: the state the REST API and the metrics serve.

mod commands;
mod fencing;
mod labels;
pub mod member;
mod primary;
mod publish;
mod replica;
pub mod sync;

use std::{
    collections::BTreeSet,
    sync::Arc,
    time::{Duration, Instant},
};

use k8s_openapi::{api::core::v1::Pod, jiff::Timestamp};
use kube::Api;
use pgpilot_crds::contract::{ROLE_PRIMARY, SidecarConfig, is_member};
use tokio::sync::{mpsc, watch};
use tracing::{info, instrument, warn};

pub use self::{
    member::{Lineage, Member, Phase},
    sync::{SyncPlan, plan_sync},
};
use crate::{
    election::{
        Decision, Observation, Peer, PgView, Policy, RoleMark, Timings, decide, failover_blocked,
        lease::{Elector, LeaseError},
    },
    metrics::Metrics,
    peers::Peers,
    postgres::{self, Desired, Postgres, Role},
    state::{Command, Heartbeat, HistoryEntry, MemberState, PeerState},
};

/// Everything the loop owns.
pub struct HaLoop {
    me: String,
    timings: Timings,
    config: watch::Receiver<SidecarConfig>,
    elector: Elector,
    pg: Postgres,
    peers: Peers,
    pods: Api<Pod>,
    request_timeout: Duration,
    state: watch::Sender<MemberState>,
    commands: mpsc::Receiver<Command>,
    metrics: Arc<Metrics>,
    heartbeat: Heartbeat,
    watchdog: watch::Sender<Option<(Instant, u32)>>,
    member: Member,
    mem: Memory,
}

/// What the loop remembers between iterations besides the [`Member`].
#[derive(Debug, Default)]
struct Memory {
    primary_start_failures: u32,
    /// Names in `synchronous_standby_names` as last configured (`None`: asynchronous).
    sync_configured: Option<Vec<String>>,
    last_pg: postgres::Observation,
    peers: Vec<PeerState>,
    /// The Lease holder when it is not a member ([`Peers::poll_holder`]): an upstream, not a voter.
    leaving_holder: Option<PeerState>,
    /// Last own-pod role mark written, and when.
    patched: Option<(RoleMark, Instant)>,
    scheduled: Option<(Option<String>, Timestamp)>,
    history: Vec<HistoryEntry>,
    last_decision: Option<Decision>,
    /// When this member last held by failsafe (L5).
    failsafe_held_at: Option<Instant>,
    /// The highest WAL position the holder reported in an epoch: `(epoch, position)`.
    primary_wal_seen: Option<(u64, u64)>,
    /// When the WAL receiver was last seen streaming.
    streamed_at: Option<Instant>,
    /// The database system identifier of the local data, once known (`pg_controldata`).
    system_id: Option<String>,
    /// The major version of this image's server, read at startup.
    binary_major: Option<u32>,
    /// Why this member refuses to act on its data (shown over REST; the operator reports it).
    refusal: Option<String>,
    /// A replica: why it could not take over now (shown over REST; the operator's `FailoverBlocked`).
    failover_blocked: Option<String>,
    /// Primary: when each standby last replied (hole 3).
    replies: sync::ReplyWatch,
    /// Primary: synchronous standbys not yet recorded and the position each must reach (hole 2).
    catching_up: std::collections::BTreeMap<String, u64>,
}

/// What [`HaLoop::new`] needs.
pub struct Parts {
    pub me: String,
    pub timings: Timings,
    pub config: watch::Receiver<SidecarConfig>,
    pub elector: Elector,
    pub pg: Postgres,
    pub peers: Peers,
    pub pods: Api<Pod>,
    /// Bound on each pod patch (the Lease client bounds its own requests).
    pub request_timeout: Duration,
    pub state: watch::Sender<MemberState>,
    pub commands: mpsc::Receiver<Command>,
    pub metrics: Arc<Metrics>,
    /// Beaten after every loop and command (`/liveness`); give the same one to [`Postgres`].
    pub heartbeat: Heartbeat,
}

#[derive(Debug, thiserror::Error)]
pub enum HaError {
    #[error("PostgreSQL: {source}")]
    Postgres {
        #[source]
        source: postgres::Error,
    },
    #[error("Lease: {source}")]
    Lease {
        #[source]
        source: LeaseError,
    },
    #[error("pod patch: {source}")]
    Pod {
        #[source]
        source: kube::Error,
    },
    #[error("pod patch timed out after {0:?}")]
    PodTimeout(Duration),
    #[error("the renewal deadline passed during {0}: fenced")]
    DeadlinePassed(&'static str),
}

impl HaError {
    pub fn category(&self) -> &'static str {
        match self {
            HaError::Postgres { source } => source.category(),
            HaError::Lease { source } => source.category(),
            HaError::Pod { .. } => "PodPatch",
            HaError::PodTimeout(_) => "PodPatchTimeout",
            HaError::DeadlinePassed(_) => "DeadlinePassed",
        }
    }
}

impl From<postgres::Error> for HaError {
    fn from(source: postgres::Error) -> Self {
        HaError::Postgres { source }
    }
}

impl From<LeaseError> for HaError {
    fn from(source: LeaseError) -> Self {
        HaError::Lease { source }
    }
}

impl HaLoop {
    pub fn new(p: Parts) -> Self {
        let (watchdog, armed) = watch::channel(None);
        tokio::spawn(fencing::watchdog(armed));
        Self {
            me: p.me,
            timings: p.timings,
            config: p.config,
            elector: p.elector,
            pg: p.pg,
            peers: p.peers,
            pods: p.pods,
            request_timeout: p.request_timeout,
            state: p.state,
            commands: p.commands,
            metrics: p.metrics,
            heartbeat: p.heartbeat,
            watchdog,
            member: Member::default(),
            mem: Memory::default(),
        }
    }

    /// Runs until `shutdown` flips; then stops PostgreSQL (fast) and, if holding it, releases the Lease
    /// (L4: release only after stop).
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        self.heartbeat.beat();
        self.startup().await;
        loop {
            let started = Instant::now();
            self.iteration().await;
            self.heartbeat.beat();
            let holder = self.elector.renewed_sent_at().is_some();
            let next = started + self.timings.retry_period;
            let pod_change = self.peers.changed.clone();
            tokio::select! {
                () = tokio::time::sleep_until(next.into()) => {}
                // A follower reacts to a pod change (a dead holder, L8) at once; the holder keeps its pace.
                () = pod_change.notified(), if !holder => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Some(cmd) = self.commands.recv() => {
                    let outcome = self.command(cmd.action).await;
                    self.heartbeat.beat();
                    let _ = cmd.reply.send(outcome);
                }
                _ = shutdown.changed() => {
                    self.shutdown().await;
                    return;
                }
            }
        }
    }

    /// A restarted sidecar finds out what its data directory was: a former primary must rewind before it
    /// follows anyone (L4: it never starts writable on belief — it starts as a replica).
    async fn startup(&mut self) {
        self.mem.binary_major = self.pg.binary_major().await;
        if self.mem.binary_major.is_none() {
            warn!("cannot read the server's version (postgres --version)");
        }
        if self.pg.is_initialized() {
            match self.pg.controldata().await {
                Ok(cd) => {
                    if cd.state == "in production" || cd.is_clean_primary_shutdown() {
                        self.member.lineage = Lineage::FormerPrimary;
                    }
                    self.mem.system_id = Some(cd.system_identifier.clone());
                    info!(member = %self.me, state = %cd.state, timeline = cd.timeline, lineage = ?self.member.lineage, "found a data directory");
                }
                Err(e) => warn!(error = %e, "pg_controldata failed"),
            }
        }
    }

    fn policy(&self, cfg: &SidecarConfig) -> Policy {
        Policy {
            mode: cfg.replication.mode,
            maximum_lag_on_failover: cfg.replication.maximum_lag_on_failover_bytes,
            failsafe: cfg.failsafe,
            paused: cfg.paused,
            tags: cfg.tags.clone(),
        }
    }

    /// One loop: observe → decide → act → watchdog, label, publish.
    #[instrument(skip(self), fields(member = %self.me))]
    async fn iteration(&mut self) {
        let cfg = self.config.borrow().clone();
        self.apply_timings(&cfg);
        let obs = self.observe(&cfg).await;

        // Once a scheduled switchover is due, it runs as if just requested.
        if let Some((candidate, at)) = self.mem.scheduled.clone()
            && Timestamp::now() >= at
        {
            self.mem.scheduled = None;
            let outcome = self.switchover(candidate).await;
            info!(status = outcome.status, message = %outcome.message, "scheduled switchover");
        }

        let now = Instant::now();
        let decision = decide(&obs, now, &self.timings);
        self.mem.failover_blocked =
            failover_blocked(&obs, now, &self.timings).map(|w| w.to_string());
        if decision.is_news_after(self.mem.last_decision.as_ref()) {
            let epoch = obs.lease.as_ref().map_or(0, |l| l.transitions);
            info!(decision = %decision, epoch, "decision");
        }
        self.mem.last_decision = Some(decision.clone());
        self.metrics.decision(decision_kind(&decision));
        if let Err(e) = self.act(&decision, &cfg).await {
            warn!(error = %e, category = e.category(), decision = %decision, "action failed");
            self.metrics.error("ha", e.category());
        }
        self.arm_watchdog();
        self.label_own_pod().await;
        self.publish(&cfg);
    }

    /// `spec.ha` changes apply live (issue 13 hole 7). Safe in any order: followers wait the longer of
    /// their own and the recorded `leaseDuration`, and the holder's new `renewDeadline` counts only from
    /// the write that records the `leaseDuration` paired with it (L6). Invalid timings are refused (the
    /// CRD rejects them too) and the current ones stay.
    fn apply_timings(&mut self, cfg: &SidecarConfig) {
        match Timings::new(&cfg.ha) {
            Ok(t) if t != self.timings => {
                info!(lease_duration = ?t.lease_duration, renew_deadline = ?t.renew_deadline, retry_period = ?t.retry_period, "Lease timings changed");
                self.timings = t;
                self.elector.set_timings(t);
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "ignoring invalid Lease timings"),
        }
    }

    /// The WAL position a holder's write records: the primary's write position, when it runs as one.
    fn wal_stamp(&self) -> Option<u64> {
        (self.member.phase == Phase::Primary)
            .then_some(self.mem.last_pg.current_lsn)
            .flatten()
    }

    /// Reads everything [`decide`] looks at: the local server (noting a crash), the peers' reports, the
    /// Lease and its holder's pod.
    async fn observe(&mut self, cfg: &SidecarConfig) -> Observation {
        let pg_obs = self.pg.observe().await;
        if let Some(status) = self.pg.exited() {
            warn!(%status, "PostgreSQL exited unexpectedly");
            self.member.stopped(Phase::Crashed);
        }
        self.mem.last_pg = pg_obs.clone();
        self.elector.set_primary_timeline(
            (self.member.phase == Phase::Primary)
                .then_some(pg_obs.timeline)
                .flatten(),
        );
        let peer_states = self.peers.poll(cfg.instances).await;
        let peers = &self.peers;
        let observed = self
            .elector
            .observe(|holder| peers.pod_status(holder))
            .await;
        let (lease, holder_pod) =
            observed.map_or((None, Default::default()), |(r, p)| (Some(r), p));
        let leaving_holder = match lease.as_ref().and_then(|r| r.holder()) {
            Some(h) => self.peers.poll_holder(h, cfg.instances).await,
            None => None,
        };
        if pg_obs
            .wal_receiver
            .as_ref()
            .is_some_and(|w| w.status == "streaming")
        {
            self.mem.streamed_at = Some(Instant::now());
        }
        // The holder's position as it reports it, kept for the epoch (L3's lag reference).
        if let Some(record) = &lease
            && let Some(position) = record
                .holder()
                .filter(|h| *h != self.me)
                .and_then(|h| peer_named(&peer_states, leaving_holder.as_ref(), h))
                .and_then(|p| p.report.as_ref())
                .filter(|r| r.role == ROLE_PRIMARY)
                .and_then(|r| r.xlog.as_ref()?.location)
        {
            self.mem.primary_wal_seen = Some(match self.mem.primary_wal_seen {
                Some((epoch, seen)) if epoch == record.transitions => (epoch, seen.max(position)),
                _ => (record.transitions, position),
            });
        }
        let local = PgView {
            initialized: self.pg.is_initialized(),
            healthy: pg_obs.accepting,
            primary: self.member.runs_as_primary(&pg_obs),
            timeline: pg_obs.timeline,
            wal: pg_obs.wal_position(),
        };
        // The epoch as last known: with the apiserver unreachable (failsafe's case) the last record read.
        let epoch = lease
            .as_ref()
            .or(self.elector.record())
            .map(|l| l.transitions);
        let failsafe_confirmed = failsafe_confirmed(&peer_states, epoch);
        let epoch_now = lease.as_ref().map(|l| l.transitions);
        let obs = Observation {
            me: self.me.clone(),
            member: is_member(&self.pg.settings().cluster, &self.me, cfg.instances),
            lease,
            watch: self.elector.watch().clone(),
            holder_pod,
            local,
            peers: peer_states.iter().map(peer_view).collect(),
            renewed_sent_at: self.elector.renewed_sent_at(),
            last_renewal: self.elector.last_renewal(),
            failsafe_held_at: self.mem.failsafe_held_at,
            primary_wal_seen: self
                .mem
                .primary_wal_seen
                .filter(|(epoch, _)| Some(*epoch) == epoch_now)
                .map(|(_, wal)| wal),
            streamed_at: self.mem.streamed_at,
            failsafe_confirmed,
            policy: self.policy(cfg),
        };
        self.mem.peers = peer_states;
        self.mem.leaving_holder = leaving_holder;
        obs
    }

    /// Carries out one decision.
    async fn act(&mut self, decision: &Decision, cfg: &SidecarConfig) -> Result<(), HaError> {
        match decision {
            Decision::Hold => self.lead(cfg).await,
            Decision::Renew => {
                let result = self
                    .elector
                    .renew(self.wal_stamp(), self.mem.system_id.as_deref())
                    .await;
                self.metrics.lease_write("renew", result.is_ok());
                result?;
                self.lead(cfg).await
            }
            Decision::Acquire(reason) => self.acquire(*reason, cfg).await,
            Decision::Fence => self.fence().await,
            Decision::FailsafeHold => self.failsafe_hold(cfg).await,
            Decision::Demote { leader } => {
                self.demote().await?;
                self.follow(leader.as_deref(), cfg).await
            }
            Decision::Follow { leader, .. } => self.follow(leader.as_deref(), cfg).await,
            Decision::Wait(_) => Ok(()),
        }
    }

    /// This process confirmed the Lease, PostgreSQL runs as primary under it, and it still runs: the one
    /// definition of "this member is the primary" for labels, switchover and restart.
    fn is_leading(&mut self) -> bool {
        self.elector.renewed_sent_at().is_some()
            && self.member.phase == Phase::Primary
            && self.pg.is_running()
    }

    fn desired(
        &self,
        cfg: &SidecarConfig,
        role: Role,
        synchronous: Option<postgres::SyncStandbys>,
    ) -> Desired {
        Desired {
            role,
            parameters: cfg.parameters.clone(),
            pg_hba: cfg.pg_hba.clone(),
            synchronous,
            member_slots: self.member_names(),
            replication_timeout: Some(self.timings.renew_deadline),
        }
    }

    /// Every member, this one included: with `instances` known, all of `<cluster>-0 …`, present or not,
    /// so a member's slot survives its short absence (issue 13 hole 10); otherwise the pods listed now.
    fn member_names(&self) -> Vec<String> {
        let mut names: BTreeSet<String> = self.mem.peers.iter().map(|p| p.name.clone()).collect();
        names.insert(self.me.clone());
        if let Some(n) = self.config.borrow().instances {
            let cluster = &self.pg.settings().cluster;
            names = (0..n).map(|i| format!("{cluster}-{i}")).collect();
            names.insert(self.me.clone());
        }
        names.into_iter().collect()
    }

    /// SIGTERM: stop PostgreSQL (fast), then release the Lease if this process holds it (L4), so a
    /// replica takes over within about one retry period (L2: an empty holder is claimed at once).
    async fn shutdown(&mut self) {
        info!(member = %self.me, "shutting down");
        let _ = self.watchdog.send(None);
        let holder = self.elector.renewed_sent_at().is_some();
        self.member.stopped(Phase::Stopped);
        if let Err(e) = self.pg.stop(postgres::StopMode::Fast).await {
            warn!(error = %e, "fast stop failed");
            let _ = self.pg.stop(postgres::StopMode::Immediate).await;
        }
        if holder {
            let end = self.pg.controldata().await.ok().map(|c| c.checkpoint_lsn);
            match self.elector.release(self.synchronous_mode(), end).await {
                Ok(()) => info!("released the Lease"),
                Err(e) => {
                    warn!(error = %e, "cannot release the Lease; it expires by leaseDuration")
                }
            }
        }
    }

    fn synchronous_mode(&self) -> bool {
        self.config.borrow().replication.mode != pgpilot_crds::contract::ReplicationMode::Async
    }
}

/// The peer called `name`: a member, or the Lease holder a scale-down left outside the members
/// ([`Peers::poll_holder`]).
fn peer_named<'a>(
    peers: &'a [PeerState],
    leaving_holder: Option<&'a PeerState>,
    name: &str,
) -> Option<&'a PeerState> {
    peers.iter().chain(leaving_holder).find(|p| p.name == name)
}

/// Failsafe (L5): every other member answered over REST this loop, none runs as primary, and each
/// reports the epoch this member holds — none has seen a newer holder. No peers: no confirmation.
fn failsafe_confirmed(peers: &[PeerState], epoch: Option<u64>) -> bool {
    !peers.is_empty()
        && peers.iter().all(|p| {
            p.report
                .as_ref()
                .is_some_and(|r| r.role != ROLE_PRIMARY && Some(r.pgpilot.epoch) == epoch)
        })
}

/// A peer's REST report as the election rules see it.
fn peer_view(p: &PeerState) -> Peer {
    Peer {
        name: p.name.clone(),
        report: p.report.as_ref().map(|r| PgView {
            initialized: r.role != "uninitialized",
            healthy: r.state == "running",
            primary: r.role == ROLE_PRIMARY,
            timeline: r.timeline,
            wal: p.wal_position(),
        }),
    }
}

fn decision_kind(d: &Decision) -> &'static str {
    match d {
        Decision::Renew => "renew",
        Decision::Hold => "hold",
        Decision::Acquire(_) => "acquire",
        Decision::Fence => "fence",
        Decision::FailsafeHold => "failsafe",
        Decision::Demote { .. } => "demote",
        Decision::Follow { .. } => "follow",
        Decision::Wait(_) => "wait",
    }
}

#[cfg(test)]
mod tests {
    use pgpilot_crds::contract::ROLE_REPLICA;

    use super::*;

    fn peer(name: &str, role: &str, epoch: u64, answered: bool) -> PeerState {
        PeerState {
            name: name.into(),
            host: None,
            report: answered.then(|| pgpilot_crds::contract::MemberReport {
                role: role.into(),
                pgpilot: pgpilot_crds::contract::PgpilotInfo {
                    epoch,
                    ..Default::default()
                },
                ..Default::default()
            }),
        }
    }

    #[test]
    fn failsafe_needs_every_peer_on_the_same_epoch_and_none_primary() {
        let ok = [
            peer("b", ROLE_REPLICA, 4, true),
            peer("c", ROLE_REPLICA, 4, true),
        ];
        assert!(failsafe_confirmed(&ok, Some(4)));
        assert!(!failsafe_confirmed(&ok, Some(5)), "a peer on another epoch");
        assert!(!failsafe_confirmed(&ok, None));
        assert!(!failsafe_confirmed(&[], Some(4)), "nobody confirms");
        let silent = [
            peer("b", ROLE_REPLICA, 4, true),
            peer("c", ROLE_REPLICA, 4, false),
        ];
        assert!(!failsafe_confirmed(&silent, Some(4)), "one did not answer");
        let primary = [
            peer("b", ROLE_REPLICA, 4, true),
            peer("c", ROLE_PRIMARY, 4, true),
        ];
        assert!(!failsafe_confirmed(&primary, Some(4)), "another primary");
    }
}
