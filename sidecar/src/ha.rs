//! The HA loop: every `retryPeriod` observe (local PostgreSQL, peers over REST, the Lease, the holder's
//! pod) → [`decide`] (pure) → act, then publish the member's state on the `watch` channel.
//!
//! Only this loop changes anything: PostgreSQL (through [`Postgres`]), the Lease (through [`Elector`]),
//! and this member's pod label. REST commands are taken between two loops. Safety notes per action name
//! the rule of DESIGN.md they enforce; the rules themselves live in `election` and are unit-tested there.
//!
//! Beyond the loop, a fencing watchdog (L5) runs as its own task: armed with the renewal deadline and the
//! postmaster's pid while this member serves as primary, it sends SIGQUIT (immediate shutdown: no commit
//! after delivery) when the deadline passes, even if the loop is stuck in a slow call.

use std::{
    collections::BTreeSet,
    sync::Arc,
    time::{Duration, Instant},
};

use k8s_openapi::{api::core::v1::Pod, jiff::Timestamp};
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use pgpilot_crds::contract::{
    ANNOTATION_EPOCH, LABEL_ROLE, MemberTags, PG_PORT, ROLE_PRIMARY, ROLE_REPLICA, ReplicationMode,
    SIDECAR_FIELD_MANAGER, SidecarConfig,
};
use serde_json::json;
use tokio::sync::{mpsc, watch};
use tracing::{debug, error, info, instrument, warn};

use crate::{
    election::{
        AcquireReason, Decision, LocalPg, Observation, Peer, PeerReport, Policy, RoleMark, Timings,
        decide,
        lease::{Elector, LeaseError},
        role_patch, stale_primaries,
    },
    metrics::Metrics,
    peers::Peers,
    postgres::{
        self, Change, Desired, Postgres, Role, StopMode, SyncMethod, SyncStandbys, Upstream,
        slot_name,
    },
    state::{Action, Command, HistoryEntry, MemberState, Outcome, PeerState, ScheduledSwitchover},
};

/// Consecutive failed starts of PostgreSQL as primary after which the holder gives the Lease up.
const MAX_PRIMARY_START_FAILURES: u32 = 3;
/// How long a switchover waits for the candidate to receive the old primary's shutdown checkpoint.
const SWITCHOVER_CATCH_UP: Duration = Duration::from_secs(15);

/// Everything the loop owns.
pub struct HaLoop {
    me: String,
    timings: Timings,
    config: watch::Receiver<SidecarConfig>,
    elector: Elector,
    pg: Postgres,
    peers: Peers,
    pods: Api<Pod>,
    state: watch::Sender<MemberState>,
    commands: mpsc::Receiver<Command>,
    metrics: Arc<Metrics>,
    watchdog: watch::Sender<Option<(Instant, u32)>>,
    replication: postgres::UserPassword,
    mem: Memory,
}

/// What the loop remembers between iterations.
#[derive(Debug, Default)]
struct Memory {
    /// This data directory ran as a primary since its last clone or rewind: before following another
    /// primary it must be rewound (or re-cloned).
    needs_rewind: bool,
    /// PostgreSQL was started or promoted as primary by this process and not stopped since.
    serving_primary: bool,
    /// The Lease was acquired with `Bootstrap`: initdb is ours to run.
    bootstrapping: bool,
    /// Roles and database still to be created on the fresh primary.
    roles_pending: bool,
    primary_start_failures: u32,
    /// Names in `synchronous_standby_names` as last configured (`None`: asynchronous).
    sync_configured: Option<Vec<String>>,
    last_pg: postgres::Observation,
    peers: Vec<PeerState>,
    /// Last own-pod role mark written, and when.
    patched: Option<(RoleMark, Instant)>,
    scheduled: Option<(Option<String>, Timestamp)>,
    history: Vec<HistoryEntry>,
    /// Shown as `state` while PostgreSQL is not answering.
    pg_state: &'static str,
    last_decision: String,
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
    pub state: watch::Sender<MemberState>,
    pub commands: mpsc::Receiver<Command>,
    pub metrics: Arc<Metrics>,
    /// The replication user, for checking a switchover candidate's received WAL directly.
    pub replication: postgres::UserPassword,
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
    #[error("the renewal deadline passed during {0}: fenced")]
    DeadlinePassed(&'static str),
}

impl HaError {
    pub fn category(&self) -> &'static str {
        match self {
            HaError::Postgres { source } => source.category(),
            HaError::Lease { source } => source.category(),
            HaError::Pod { .. } => "PodPatch",
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
        tokio::spawn(fencing_watchdog(armed));
        Self {
            me: p.me,
            timings: p.timings,
            config: p.config,
            elector: p.elector,
            pg: p.pg,
            peers: p.peers,
            pods: p.pods,
            state: p.state,
            commands: p.commands,
            metrics: p.metrics,
            watchdog,
            replication: p.replication,
            mem: Memory {
                pg_state: "starting",
                ..Memory::default()
            },
        }
    }

    /// Runs until `shutdown` flips; then stops PostgreSQL (fast) and, if holding it, releases the Lease
    /// (L4: release only after stop).
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        self.startup().await;
        loop {
            let started = Instant::now();
            self.iteration().await;
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
        if self.pg.is_initialized() {
            match self.pg.controldata().await {
                Ok(cd) => {
                    self.mem.needs_rewind =
                        cd.state == "in production" || cd.is_clean_primary_shutdown();
                    info!(member = %self.me, state = %cd.state, timeline = cd.timeline, needs_rewind = self.mem.needs_rewind, "found a data directory");
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

    #[instrument(skip(self), fields(member = %self.me))]
    async fn iteration(&mut self) {
        let cfg = self.config.borrow().clone();
        let pg_obs = self.pg.observe().await;
        if let Some(status) = self.pg.exited() {
            warn!(%status, "PostgreSQL exited unexpectedly");
            self.mem.pg_state = "crashed";
            if self.mem.serving_primary {
                self.mem.needs_rewind = true;
            }
            self.mem.serving_primary = false;
        }
        self.mem.last_pg = pg_obs.clone();
        let peer_states = self.peers.poll().await;
        let peers = &self.peers;
        let observed = self
            .elector
            .observe(|holder| peers.pod_status(holder))
            .await;
        let (lease, holder_pod) =
            observed.map_or((None, Default::default()), |(r, p)| (Some(r), p));

        // Once a scheduled switchover is due, it runs as if just requested.
        if let Some((candidate, at)) = self.mem.scheduled.clone()
            && Timestamp::now() >= at
        {
            self.mem.scheduled = None;
            let outcome = self.switchover(candidate).await;
            info!(status = outcome.status, message = %outcome.message, "scheduled switchover");
        }

        let local = LocalPg {
            initialized: self.pg.is_initialized(),
            healthy: pg_obs.accepting,
            primary: pg_obs.running
                && (pg_obs.in_recovery == Some(false)
                    || (pg_obs.in_recovery.is_none() && self.mem.serving_primary)),
            timeline: pg_obs.timeline,
            wal: pg_obs.wal_position(),
        };
        // The epoch as last known: with the apiserver unreachable (failsafe's case) the last record read.
        let epoch = lease
            .as_ref()
            .or(self.elector.record().as_ref())
            .map(|l| l.transitions);
        let failsafe_confirmed = failsafe_confirmed(&peer_states, epoch);
        let obs = Observation {
            me: self.me.clone(),
            lease: lease.clone(),
            watch: self.elector.watch().clone(),
            holder_pod,
            local,
            peers: peer_states.iter().map(peer_view).collect(),
            renewed_sent_at: self.elector.renewed_sent_at(),
            failsafe_confirmed,
            policy: self.policy(&cfg),
        };
        self.mem.peers = peer_states;
        let decision = decide(&obs, Instant::now(), &self.timings);
        if decision.to_string() != self.mem.last_decision {
            info!(decision = %decision, epoch = epoch.unwrap_or(0), "decision");
        }
        self.mem.last_decision = decision.to_string();
        self.metrics.decision(decision_kind(&decision));
        if let Err(e) = self.act(&decision, &cfg).await {
            warn!(error = %e, category = e.category(), decision = %decision, "action failed");
            self.metrics.error("ha", e.category());
        }
        self.arm_watchdog(&cfg);
        self.label_own_pod().await;
        self.publish(&cfg);
    }

    async fn act(&mut self, decision: &Decision, cfg: &SidecarConfig) -> Result<(), HaError> {
        match decision {
            Decision::Hold => self.lead(cfg).await,
            Decision::Renew => {
                let result = self.elector.renew().await;
                self.metrics.lease_write("renew", result.is_ok());
                result?;
                self.lead(cfg).await
            }
            Decision::Acquire(reason) => {
                let result = self.elector.acquire().await;
                self.metrics.lease_write("acquire", result.is_ok());
                if let Err(LeaseError::Conflict) = result {
                    info!(reason = ?reason, "lost the race for the Lease");
                    return Ok(());
                }
                result?;
                let epoch = self.elector.record().map_or(0, |r| r.transitions);
                info!(reason = ?reason, epoch, "acquired the Lease");
                self.mem.bootstrapping = *reason == AcquireReason::Bootstrap;
                self.mem.primary_start_failures = 0;
                self.lead(cfg).await
            }
            Decision::Fence => self.fence().await,
            Decision::FailsafeHold => {
                let result = self.elector.renew().await;
                self.metrics.lease_write("renew", result.is_ok());
                match result {
                    Ok(()) => self.lead(cfg).await,
                    // Someone else wrote the Lease: no failsafe; the next loop reads it and demotes.
                    Err(e @ LeaseError::Conflict) => Err(e.into()),
                    Err(e) => {
                        warn!(error = %e, "apiserver unreachable: every member confirms this primary, keeping it (failsafe)");
                        Ok(())
                    }
                }
            }
            Decision::Demote { leader } => {
                self.demote().await?;
                self.follow(leader.as_deref(), cfg).await
            }
            Decision::Follow { leader, .. } => self.follow(leader.as_deref(), cfg).await,
            Decision::Wait(_) => Ok(()),
        }
    }

    /// L5: stop accepting writes now.
    async fn fence(&mut self) -> Result<(), HaError> {
        error!(member = %self.me, "no successful Lease renewal within renewDeadline: fencing PostgreSQL");
        self.mem.pg_state = "fenced";
        self.mem.needs_rewind = true;
        self.mem.serving_primary = false;
        self.pg.fence().await?;
        Ok(())
    }

    /// L4: a primary without the Lease stops (a fast shutdown checkpoints) and will rejoin as a replica.
    async fn demote(&mut self) -> Result<(), HaError> {
        warn!(member = %self.me, "running as primary without the Lease: demoting");
        self.mem.needs_rewind = true;
        self.mem.serving_primary = false;
        self.mem.pg_state = "stopped";
        self.pg.stop(StopMode::Fast).await?;
        Ok(())
    }

    /// This member holds the Lease (confirmed by its own write, L4): make PostgreSQL the primary.
    async fn lead(&mut self, cfg: &SidecarConfig) -> Result<(), HaError> {
        if cfg.paused {
            return Ok(());
        }
        if !self.pg.is_initialized() {
            if !self.mem.bootstrapping {
                // Holding the Lease without data and without having won it to bootstrap: give it back.
                warn!("holding the Lease without a data directory: releasing it");
                return self.release().await;
            }
            self.bootstrap(cfg).await?;
        }
        let running = self.pg.is_running();
        let in_recovery = self.mem.last_pg.in_recovery;
        if !running {
            if self.mem.primary_start_failures >= MAX_PRIMARY_START_FAILURES {
                warn!(
                    failures = self.mem.primary_start_failures,
                    "PostgreSQL does not start as primary: releasing the Lease"
                );
                self.mem.primary_start_failures = 0;
                return self.release().await;
            }
            // A fresh cluster starts asynchronous: the roles a standby needs to connect do not exist yet.
            let sync = if self.mem.roles_pending {
                None
            } else {
                self.initial_sync(cfg)
            };
            self.start_primary(cfg, sync).await?;
        } else if in_recovery == Some(true) && !self.mem.serving_primary {
            self.promote(cfg).await?;
        }
        if !self.pg.is_running() {
            return Ok(());
        }
        self.mem.needs_rewind = false;
        if self.mem.roles_pending {
            self.pg.bootstrap_roles().await?;
            self.mem.roles_pending = false;
            info!("roles and database created");
        }
        self.manage_sync(cfg).await?;
        self.relabel_stale_primaries().await;
        Ok(())
    }

    /// The first holder: initdb, then start as primary and create the roles (L4: only after acquiring).
    async fn bootstrap(&mut self, cfg: &SidecarConfig) -> Result<(), HaError> {
        info!(member = %self.me, "bootstrapping a new cluster (initdb)");
        self.mem.pg_state = "initializing new cluster";
        self.publish(cfg);
        if self.pg.settings().data_dir.exists() {
            self.pg.wipe().await?;
        }
        renewing(&mut self.elector, &self.timings, "initdb", self.pg.initdb()).await??;
        self.mem.bootstrapping = false;
        self.mem.roles_pending = true;
        Ok(())
    }

    async fn start_primary(
        &mut self,
        cfg: &SidecarConfig,
        sync: Option<SyncStandbys>,
    ) -> Result<(), HaError> {
        let desired = self.desired(cfg, Role::Primary, sync);
        self.pg.configure(&desired).await?;
        self.mem.sync_configured = desired.synchronous.as_ref().map(|s| s.names.clone());
        self.mem.pg_state = "starting";
        self.publish(cfg);
        match renewing(&mut self.elector, &self.timings, "start", self.pg.start()).await {
            Ok(Ok(())) => {
                info!(member = %self.me, "PostgreSQL started as primary");
                self.mem.serving_primary = true;
                self.mem.primary_start_failures = 0;
                Ok(())
            }
            Ok(Err(e)) => {
                self.mem.primary_start_failures += 1;
                let _ = self.pg.stop(StopMode::Immediate).await;
                Err(e.into())
            }
            Err(e) => {
                self.pg.fence().await?;
                Err(e)
            }
        }
    }

    /// L4: promote only after the Lease was acquired (the caller holds it, confirmed).
    async fn promote(&mut self, cfg: &SidecarConfig) -> Result<(), HaError> {
        info!(member = %self.me, "promoting");
        let desired = self.desired(cfg, Role::Primary, self.initial_sync(cfg));
        match renewing(
            &mut self.elector,
            &self.timings,
            "promote",
            self.pg.promote(),
        )
        .await
        {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                // Never hold the Lease over a member that cannot become primary: another one may.
                error!(member = %self.me, error = %e, "promotion failed: stopping PostgreSQL and releasing the Lease");
                self.metrics.error("promote", e.category());
                self.mem.needs_rewind = true;
                self.release().await?;
                return Err(e.into());
            }
            Err(e) => {
                self.pg.fence().await?;
                return Err(e);
            }
        }
        self.mem.serving_primary = true;
        // `synchronous_standby_names` before the `-rw` Service routes here (the label below): clients of
        // the Service never commit without the synchronous standbys (L3). (It cannot go in before the
        // promotion: PostgreSQL's promotion needs `standby.signal`, which the primary's files drop.)
        self.pg.configure(&desired).await?;
        self.mem.sync_configured = desired.synchronous.as_ref().map(|s| s.names.clone());
        // Route writes here at once; the rest of the primary's upkeep follows in this loop.
        self.label_own_pod().await;
        let obs = self.pg.observe().await;
        self.mem.history.push(HistoryEntry {
            timeline: obs.timeline.unwrap_or(0),
            lsn: obs.current_lsn.unwrap_or(0),
            reason: "promoted by pgpilot".into(),
            timestamp: Timestamp::now().to_string(),
            leader: self.me.clone(),
        });
        self.mem.last_pg = obs;
        Ok(())
    }

    /// Empty holder after PostgreSQL is stopped (L4).
    async fn release(&mut self) -> Result<(), HaError> {
        self.mem.serving_primary = false;
        self.pg.stop(StopMode::Fast).await?;
        let synchronous = self.config.borrow().replication.mode != ReplicationMode::Async;
        let result = self.elector.release(synchronous).await;
        self.metrics.lease_write("release", result.is_ok());
        result?;
        info!(member = %self.me, "released the Lease");
        Ok(())
    }

    /// Be a replica of `leader` (clone, rewind or reconfigure as needed), or a standby waiting for one.
    async fn follow(&mut self, leader: Option<&str>, cfg: &SidecarConfig) -> Result<(), HaError> {
        if cfg.paused {
            return Ok(());
        }
        // The upstream only counts once it runs as primary (its report says so).
        let leader_report = leader.filter(|l| *l != self.me).and_then(|l| {
            let peer = self.mem.peers.iter().find(|p| p.name == l)?;
            let report = peer.report.as_ref()?;
            let host = peer.host.clone()?;
            (report.role == ROLE_PRIMARY && report.state == "running").then_some((
                Upstream {
                    host,
                    port: PG_PORT,
                },
                report.timeline,
            ))
        });
        let upstream = leader_report.as_ref().map(|(up, _)| up.clone());
        if !self.pg.is_initialized() {
            let Some(up) = upstream else {
                self.mem.pg_state = "waiting for a primary";
                return Ok(());
            };
            return self.clone_from(&up, cfg).await;
        }
        if !self.mem.needs_rewind
            && let Some((up, Some(upstream_timeline))) = &leader_report
            && self.replica_diverged(up, *upstream_timeline).await
        {
            self.mem.needs_rewind = true;
        }
        if self.mem.needs_rewind
            && let Some(up) = &upstream
        {
            self.mem.pg_state = "rewinding";
            self.publish(cfg);
            if self.pg.is_running() {
                self.pg.stop(StopMode::Fast).await?;
            }
            match self.pg.rewind(up).await {
                Ok(()) => {
                    info!(member = %self.me, upstream = %up.host, "rewound onto the new primary's timeline");
                    self.mem.needs_rewind = false;
                }
                Err(e @ postgres::Error::Unreachable { .. }) => return Err(e.into()),
                Err(e) => {
                    // Never loop half-rewound: the data directory goes, and the next loop re-clones.
                    warn!(error = %e, "pg_rewind failed: re-cloning");
                    self.metrics.error("rewind", e.category());
                    self.pg.wipe().await?;
                    self.mem.needs_rewind = false;
                    return Ok(());
                }
            }
        }
        let role = Role::Replica {
            // An empty host: no primary to stream from yet (a standby waiting for an election).
            upstream: upstream.clone().unwrap_or(Upstream {
                host: String::new(),
                port: PG_PORT,
            }),
            slot: Some(slot_name(&self.me)),
        };
        let desired = self.desired(cfg, role, None);
        let change = self.pg.configure(&desired).await?;
        self.mem.sync_configured = None;
        if !self.pg.is_running() {
            if self.mem.needs_rewind && upstream.is_none() {
                // Read-only, replaying its own WAL; rewound once a primary is there to rewind from.
                debug!("former primary waiting as a standby until a primary appears");
            }
            self.mem.pg_state = "starting";
            self.publish(cfg);
            self.pg.start().await?;
            self.mem.serving_primary = false;
            info!(member = %self.me, upstream = upstream.as_ref().map_or("none", |u| u.host.as_str()), "PostgreSQL started as replica");
        } else if let Change::NeedsRestart(what) = change {
            debug!(
                ?what,
                "parameters wait for a restart (reported as pending_restart)"
            );
        }
        Ok(())
    }

    /// A running replica on an older timeline than its upstream whose WAL went past the upstream's fork
    /// point: it can never stream from it (after a failover it had received more of the old primary's
    /// WAL than the promoted member). A failed check counts as "not diverged" and is retried next loop.
    async fn replica_diverged(&self, up: &Upstream, upstream_timeline: u32) -> bool {
        let obs = &self.mem.last_pg;
        let (Some(true), Some(timeline), Some(lsn)) =
            (obs.in_recovery, obs.timeline, obs.wal_position())
        else {
            return false;
        };
        match self
            .pg
            .diverged_from(up, upstream_timeline, timeline, lsn)
            .await
        {
            Ok(diverged) => diverged,
            Err(e) => {
                debug!(error = %e, upstream = %up.host, "cannot compare with the upstream's history yet");
                false
            }
        }
    }

    async fn clone_from(&mut self, up: &Upstream, cfg: &SidecarConfig) -> Result<(), HaError> {
        info!(member = %self.me, upstream = %up.host, "cloning with pg_basebackup");
        self.mem.pg_state = "creating replica";
        self.publish(cfg);
        // A failed clone leaves PGDATA incomplete; the next loop clones again (basebackup clears leftovers).
        self.pg.basebackup(up, None).await?;
        self.mem.needs_rewind = false;
        // Start streaming in this same loop.
        let role = Role::Replica {
            upstream: up.clone(),
            slot: Some(slot_name(&self.me)),
        };
        self.pg.configure(&self.desired(cfg, role, None)).await?;
        self.pg.start().await?;
        info!(member = %self.me, "replica created and started");
        Ok(())
    }

    fn desired(
        &self,
        cfg: &SidecarConfig,
        role: Role,
        synchronous: Option<SyncStandbys>,
    ) -> Desired {
        Desired {
            role,
            parameters: cfg.parameters.clone(),
            pg_hba: cfg.pg_hba.clone(),
            synchronous,
            member_slots: self.member_names(),
        }
    }

    /// Every member the pod list knows, this one included.
    fn member_names(&self) -> Vec<String> {
        let mut names: BTreeSet<String> = self.mem.peers.iter().map(|p| p.name.clone()).collect();
        names.insert(self.me.clone());
        names.into_iter().collect()
    }

    /// Synchronous standbys for a primary's start or promotion: those the Lease records (minus this
    /// member), so no commit is acknowledged by a standby the loop has not recorded (L3). With none
    /// recorded, `sync` starts asynchronous and `strictSync` waits for any standby (`*`).
    fn initial_sync(&self, cfg: &SidecarConfig) -> Option<SyncStandbys> {
        let mode = cfg.replication.mode;
        if mode == ReplicationMode::Async {
            return None;
        }
        let recorded: Vec<String> = self
            .elector
            .record()
            .and_then(|r| r.sync_members)
            .unwrap_or_default()
            .into_iter()
            .filter(|m| *m != self.me)
            .collect();
        if recorded.is_empty() && mode == ReplicationMode::Sync {
            return None;
        }
        let count = sync_count(mode, cfg.replication.sync_replicas, recorded.len());
        Some(SyncStandbys {
            method: SyncMethod::First,
            count,
            names: recorded,
        })
    }

    /// Keeps `synchronous_standby_names` and the Lease's record of synchronous members in step, in the
    /// order that keeps L3 safe: a member leaves the record before it leaves the configuration, and
    /// enters the record only after PostgreSQL reports it synchronous. Writes only on change (L9).
    async fn manage_sync(&mut self, cfg: &SidecarConfig) -> Result<(), HaError> {
        let mode = cfg.replication.mode;
        let recorded = self.elector.record().and_then(|r| r.sync_members);
        let rows = &self.mem.last_pg.replication;
        let streaming: Vec<&postgres::ReplicationRow> =
            rows.iter().filter(|r| r.state == "streaming").collect();
        let plan = plan_sync(
            mode,
            cfg.replication.sync_replicas,
            recorded.as_deref(),
            self.mem.sync_configured.as_deref(),
            &streaming
                .iter()
                .map(|r| {
                    (
                        r.application_name.clone(),
                        r.flush_lsn.unwrap_or(0),
                        r.sync_state.clone(),
                    )
                })
                .collect::<Vec<_>>(),
        );
        if let Some(record) = plan.record {
            let result = self.elector.record_sync_members(&record).await;
            self.metrics.lease_write("sync-members", result.is_ok());
            if result? {
                info!(members = ?record, "recorded the synchronous members");
            }
            // The configuration follows on a later loop, after the record is safely written.
            return Ok(());
        }
        let desired = self.desired(cfg, Role::Primary, plan.configure.clone());
        let change = self.pg.configure(&desired).await?;
        if plan.configure.as_ref().map(|s| &s.names) != self.mem.sync_configured.as_ref() {
            info!(standbys = ?plan.configure.as_ref().map(|s| &s.names), ?change, "synchronous_standby_names changed");
        }
        self.mem.sync_configured = plan.configure.map(|s| s.names);
        Ok(())
    }

    async fn relabel_stale_primaries(&mut self) {
        let marks = self.peers.role_marks();
        let stale = stale_primaries(
            marks.iter().map(|(n, m)| (n.as_str(), m)),
            &self.me,
            ROLE_PRIMARY,
        );
        let epoch = self.elector.record().map_or(0, |r| r.transitions);
        for pod in stale {
            info!(pod = %pod, epoch, "relabelling a stale primary's pod as replica (L7)");
            if let Err(e) = self
                .patch_mark(
                    &pod,
                    &RoleMark {
                        role: Some(ROLE_REPLICA.into()),
                        epoch: None,
                    },
                )
                .await
            {
                warn!(error = %e, pod = %pod, "cannot relabel");
            }
        }
    }

    /// L7/L9: this pod's role label and epoch annotation, patched only when they differ.
    async fn label_own_pod(&mut self) {
        let record = self.elector.record();
        let primary = self.elector.renewed_sent_at().is_some()
            && self.mem.serving_primary
            && self.pg.is_running();
        let wanted = RoleMark {
            role: Some(if primary { ROLE_PRIMARY } else { ROLE_REPLICA }.into()),
            epoch: record.map(|r| r.transitions),
        };
        let Some(current) = self.peers.own_mark() else {
            return;
        };
        let Some(patch) = role_patch(&current, &wanted) else {
            return;
        };
        if let Some((last, at)) = &self.mem.patched
            && *last == patch
            && at.elapsed() < self.timings.retry_period * 3
        {
            return; // just written; the pod cache has not caught up yet
        }
        match self.patch_mark(&self.me.clone(), &patch).await {
            Ok(()) => {
                info!(role = ?patch.role, epoch = ?patch.epoch, "pod role label updated");
                self.mem.patched = Some((patch, Instant::now()));
            }
            Err(e) => {
                warn!(error = %e, "cannot label the own pod");
                self.metrics.error("pod", e.category());
            }
        }
    }

    async fn patch_mark(&self, pod: &str, mark: &RoleMark) -> Result<(), HaError> {
        let mut metadata = json!({ "labels": { LABEL_ROLE: mark.role } });
        if let Some(epoch) = mark.epoch {
            metadata["annotations"] = json!({ ANNOTATION_EPOCH: epoch.to_string() });
        }
        let params = PatchParams {
            field_manager: Some(SIDECAR_FIELD_MANAGER.into()),
            ..PatchParams::default()
        };
        self.pods
            .patch(pod, &params, &Patch::Merge(json!({ "metadata": metadata })))
            .await
            .map(|_| ())
            .map_err(|source| HaError::Pod { source })
    }

    /// Arms the fencing watchdog with the renewal deadline while this member serves as primary (L5).
    fn arm_watchdog(&self, cfg: &SidecarConfig) {
        let armed = match (self.elector.renewed_sent_at(), self.pg.pid()) {
            (Some(sent), Some(pid)) if self.mem.serving_primary && !cfg.paused => {
                let deadline = if self.mem.last_decision == Decision::FailsafeHold.to_string() {
                    Instant::now() + self.timings.renew_deadline
                } else {
                    sent + self.timings.renew_deadline
                };
                Some((deadline, pid))
            }
            _ => None,
        };
        self.watchdog.send_if_modified(|current| {
            let changed = *current != armed;
            *current = armed;
            changed
        });
    }

    fn publish(&self, cfg: &SidecarConfig) {
        let pg = &self.mem.last_pg;
        let record = self.elector.record();
        let holder = self.elector.renewed_sent_at().is_some();
        let primary_now = pg.running && pg.in_recovery == Some(false);
        let role = if !self.pg.is_initialized() {
            "uninitialized"
        } else if primary_now || (self.mem.serving_primary && pg.in_recovery.is_none()) {
            ROLE_PRIMARY
        } else {
            ROLE_REPLICA
        };
        let leader_position = record
            .as_ref()
            .and_then(|r| r.holder())
            .and_then(|h| self.mem.peers.iter().find(|p| p.name == h))
            .and_then(|p| p.report.as_ref()?.xlog.as_ref()?.location);
        let lag = match (role, leader_position, pg.replayed_lsn.or(pg.received_lsn)) {
            (ROLE_REPLICA, Some(leader), Some(mine)) => Some(leader.saturating_sub(mine)),
            _ => None,
        };
        let state = if pg.accepting && pg.running {
            "running"
        } else {
            self.mem.pg_state
        };
        let me = &self.me;
        self.state.send_modify(|s| {
            s.role = role.into();
            s.state = state.into();
            s.running = pg.accepting && pg.running;
            s.holder = holder;
            s.leader = record.as_ref().and_then(|r| r.holder().map(str::to_owned));
            s.epoch = record.as_ref().map_or(s.epoch, |r| r.transitions);
            s.server_version = pg.server_version;
            s.timeline = pg.timeline;
            s.wal_location = if role == ROLE_PRIMARY {
                pg.current_lsn
            } else {
                None
            };
            s.received_location = pg.received_lsn;
            s.replayed_location = pg.replayed_lsn;
            s.replication_state = pg.wal_receiver.as_ref().map(|w| w.status.clone());
            s.lag_bytes = lag;
            s.pending_restart = !pg.pending_restart.is_empty();
            s.sync_members = record
                .as_ref()
                .and_then(|r| r.sync_members.clone())
                .unwrap_or_default();
            s.tags = cfg.tags.get(me).cloned().unwrap_or_default();
            s.config = cfg.clone();
            s.last_decision = self.mem.last_decision.clone();
            s.peers = self.mem.peers.clone();
            s.history = self.mem.history.clone();
            s.scheduled_switchover =
                self.mem
                    .scheduled
                    .as_ref()
                    .map(|(c, at)| ScheduledSwitchover {
                        candidate: c.clone(),
                        at: at.to_string(),
                    });
            s.last_loop = Some(Instant::now());
        });
    }

    /// A REST command, between two loops.
    async fn command(&mut self, action: Action) -> Outcome {
        info!(?action, "REST command");
        let cfg = self.config.borrow().clone();
        let outcome = match action {
            Action::Switchover {
                candidate,
                at: Some(at),
            } if at > Timestamp::now() => {
                self.mem.scheduled = Some((candidate, at));
                Outcome::new(202, format!("Switchover scheduled at {at}"))
            }
            Action::Switchover { candidate, .. } => self.switchover(candidate).await,
            Action::Restart => match self.restart(&cfg).await {
                Ok(()) => Outcome::new(200, "restarted successfully"),
                Err(e) => Outcome::new(503, format!("restart failed: {e}")),
            },
            Action::Reload => {
                let role = if self.mem.serving_primary {
                    Role::Primary
                } else {
                    match &self.mem.last_pg.wal_receiver {
                        Some(w) if w.upstream_host.is_some() => Role::Replica {
                            upstream: Upstream {
                                host: w.upstream_host.clone().unwrap_or_default(),
                                port: PG_PORT,
                            },
                            slot: Some(slot_name(&self.me)),
                        },
                        _ => {
                            return Outcome::new(
                                503,
                                "not following a primary yet: nothing to reload",
                            );
                        }
                    }
                };
                let sync = if self.mem.serving_primary {
                    self.current_sync(&cfg)
                } else {
                    None
                };
                match self.pg.configure(&self.desired(&cfg, role, sync)).await {
                    Ok(Change::NeedsRestart(p)) => {
                        Outcome::new(200, format!("reloaded; pending restart: {}", p.join(", ")))
                    }
                    Ok(_) => Outcome::new(200, "reloaded"),
                    Err(e) => Outcome::new(503, format!("reload failed: {e}")),
                }
            }
            Action::Reinitialize => {
                if self.elector.renewed_sent_at().is_some() {
                    return Outcome::new(503, "I am the leader, can not reinitialize");
                }
                let _ = self.pg.stop(StopMode::Immediate).await;
                match self.pg.wipe().await {
                    Ok(()) => {
                        self.mem.needs_rewind = false;
                        self.mem.pg_state = "creating replica";
                        Outcome::new(
                            200,
                            "reinitialize started: the member clones from the primary",
                        )
                    }
                    Err(e) => Outcome::new(503, format!("reinitialize failed: {e}")),
                }
            }
        };
        self.publish(&cfg);
        outcome
    }

    fn current_sync(&self, cfg: &SidecarConfig) -> Option<SyncStandbys> {
        self.mem.sync_configured.as_ref().map(|names| SyncStandbys {
            method: SyncMethod::First,
            count: sync_count(
                cfg.replication.mode,
                cfg.replication.sync_replicas,
                names.len(),
            ),
            names: names.clone(),
        })
    }

    async fn restart(&mut self, cfg: &SidecarConfig) -> Result<(), HaError> {
        let primary = self.mem.serving_primary && self.elector.renewed_sent_at().is_some();
        self.mem.pg_state = "restarting";
        self.publish(cfg);
        self.pg.stop(StopMode::Fast).await?;
        if primary {
            // Still the confirmed holder: the same primary comes back (crash-free, no new timeline).
            self.pg.start().await?;
        } else {
            self.pg.start().await?;
            self.mem.serving_primary = false;
        }
        Ok(())
    }

    /// Switchover (primary only): check the candidate, stop PostgreSQL (fast: a shutdown checkpoint
    /// every connected standby receives), wait until the candidate has that checkpoint, then hand it the
    /// Lease with a conditional write; it confirms and promotes (L4). If the candidate does not catch up,
    /// this member (still the confirmed holder) starts again as primary.
    #[instrument(skip(self), fields(member = %self.me))]
    async fn switchover(&mut self, candidate: Option<String>) -> Outcome {
        let cfg = self.config.borrow().clone();
        if !(self.mem.serving_primary
            && self.elector.renewed_sent_at().is_some()
            && self.pg.is_running())
        {
            return Outcome::new(503, "this member is not the primary");
        }
        self.mem.peers = self.peers.poll().await;
        let my_position = self.pg.observe().await.current_lsn.unwrap_or(0);
        let sync_members = self
            .elector
            .record()
            .and_then(|r| r.sync_members)
            .unwrap_or_default();
        let sync_mode = cfg.replication.mode != ReplicationMode::Async;
        let fit = |p: &&PeerState| {
            p.healthy_replica().is_some()
                && cfg.tags.get(&p.name).is_none_or(MemberTags::may_fail_over)
                && (!sync_mode || sync_members.contains(&p.name))
                && p.wal_position().is_some_and(|w| {
                    w + cfg.replication.maximum_lag_on_failover_bytes >= my_position
                })
        };
        let chosen = match &candidate {
            Some(name) => self
                .mem
                .peers
                .iter()
                .find(|p| &p.name == name)
                .filter(fit)
                .cloned(),
            None => self
                .mem
                .peers
                .iter()
                .filter(fit)
                .max_by_key(|p| p.wal_position())
                .cloned(),
        };
        let Some(target) = chosen else {
            return Outcome::new(
                412,
                "no fit candidate: it must be a healthy replica, allowed to fail over, caught up (and synchronous in sync mode)",
            );
        };
        let Some(host) = target.host.clone() else {
            return Outcome::new(412, format!("candidate {} has no pod IP", target.name));
        };
        info!(candidate = %target.name, "switchover: stopping PostgreSQL");
        self.mem.pg_state = "stopping for switchover";
        self.mem.serving_primary = false;
        self.arm_watchdog(&cfg);
        if let Err(e) = self.pg.stop(StopMode::Fast).await {
            return Outcome::new(503, format!("cannot stop PostgreSQL: {e}"));
        }
        let checkpoint = self
            .pg
            .controldata()
            .await
            .map(|c| c.checkpoint_lsn)
            .unwrap_or(my_position);
        let caught_up = self.wait_caught_up(&host, checkpoint).await;
        if !caught_up {
            warn!(candidate = %target.name, checkpoint, "candidate did not receive the shutdown checkpoint: staying primary");
            let restarted = self.start_primary(&cfg, self.current_sync(&cfg)).await;
            return Outcome::new(
                412,
                format!(
                    "candidate {} did not catch up; primary restarted: {:?}",
                    target.name,
                    restarted.err()
                ),
            );
        }
        let result = self.elector.hand_over(&target.name).await;
        self.metrics.lease_write("handover", result.is_ok());
        match result {
            Ok(()) => {
                self.mem.needs_rewind = true;
                self.mem.pg_state = "stopped";
                info!(candidate = %target.name, "switchover: Lease handed over");
                self.label_own_pod().await;
                Outcome::new(
                    200,
                    format!("Successfully switched over to \"{}\"", target.name),
                )
            }
            Err(e) => {
                let restarted = if self.elector.renewed_sent_at().is_some() {
                    self.start_primary(&cfg, self.current_sync(&cfg))
                        .await
                        .err()
                } else {
                    None
                };
                Outcome::new(
                    503,
                    format!("handing over the Lease failed: {e}; restart: {restarted:?}"),
                )
            }
        }
    }

    /// Polls the candidate's PostgreSQL (as the replication user, over TCP) until its received WAL is
    /// past `checkpoint`, the old primary's shutdown checkpoint: then it has every committed write.
    async fn wait_caught_up(&self, host: &str, checkpoint: u64) -> bool {
        let mut config = tokio_postgres::Config::new();
        config
            .host(host)
            .port(PG_PORT)
            .user(&self.replication.username)
            .password(&self.replication.password)
            .dbname("postgres")
            .connect_timeout(Duration::from_secs(1));
        let until = Instant::now() + SWITCHOVER_CATCH_UP;
        while Instant::now() < until {
            if let Some(received) = received_lsn(&config).await
                && received > checkpoint
            {
                debug!(
                    received,
                    checkpoint, "candidate has the shutdown checkpoint"
                );
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// SIGTERM: stop PostgreSQL (fast), then release the Lease if this process holds it (L4), so a
    /// replica takes over within about one retry period (L2: an empty holder is claimed at once).
    async fn shutdown(&mut self) {
        info!(member = %self.me, "shutting down");
        let _ = self.watchdog.send(None);
        let holder = self.elector.renewed_sent_at().is_some();
        self.mem.serving_primary = false;
        if let Err(e) = self.pg.stop(StopMode::Fast).await {
            warn!(error = %e, "fast stop failed");
            let _ = self.pg.stop(StopMode::Immediate).await;
        }
        if holder {
            let synchronous = self.config.borrow().replication.mode != ReplicationMode::Async;
            match self.elector.release(synchronous).await {
                Ok(()) => info!("released the Lease"),
                Err(e) => {
                    warn!(error = %e, "cannot release the Lease; it expires by leaseDuration")
                }
            }
        }
    }
}

/// Runs `op` while renewing the Lease every [`Timings::renew_interval`]. Fails with
/// [`HaError::DeadlinePassed`] (dropping `op`) once no renewal has succeeded within `renewDeadline` (L5):
/// the caller fences.
async fn renewing<T>(
    elector: &mut Elector,
    timings: &Timings,
    what: &'static str,
    op: impl Future<Output = T>,
) -> Result<T, HaError> {
    let interval = timings.renew_interval();
    let deadline = timings.renew_deadline;
    let mut op = std::pin::pin!(op);
    loop {
        let Some(sent) = elector.renewed_sent_at() else {
            return Err(HaError::DeadlinePassed(what));
        };
        let next = (sent + interval).min(sent + deadline);
        tokio::select! {
            out = &mut op => return Ok(out),
            () = tokio::time::sleep_until(next.into()) => {
                if sent.elapsed() >= deadline {
                    return Err(HaError::DeadlinePassed(what));
                }
                if let Err(e) = elector.renew().await {
                    warn!(error = %e, during = what, "renewal failed");
                    // Retry within the retry period, bounded by the deadline check above.
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }
}

/// L5's last line: fences the postmaster with SIGQUIT when the armed deadline passes.
async fn fencing_watchdog(mut armed: watch::Receiver<Option<(Instant, u32)>>) {
    loop {
        let current = *armed.borrow_and_update();
        match current {
            None => {
                if armed.changed().await.is_err() {
                    return;
                }
            }
            Some((deadline, pid)) => {
                tokio::select! {
                    changed = armed.changed() => if changed.is_err() { return },
                    () = tokio::time::sleep_until(deadline.into()) => {
                        if *armed.borrow() == Some((deadline, pid)) {
                            error!(pid, "renewal deadline passed with PostgreSQL still primary: watchdog fences it (SIGQUIT)");
                            if let Ok(raw) = i32::try_from(pid) {
                                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), nix::sys::signal::Signal::SIGQUIT);
                            }
                            // Disarmed until the loop arms it again.
                            let _ = armed.changed().await;
                        }
                    }
                }
            }
        }
    }
}

/// A standby's `pg_last_wal_receive_lsn()` as a byte position; `None` on any failure.
async fn received_lsn(config: &tokio_postgres::Config) -> Option<u64> {
    let bound = Duration::from_secs(2);
    let (client, connection) = tokio::time::timeout(bound, config.connect(tokio_postgres::NoTls))
        .await
        .ok()?
        .ok()?;
    let driver = tokio::spawn(connection);
    let row = tokio::time::timeout(
        bound,
        client.query_one(
            "SELECT (pg_last_wal_receive_lsn() - '0/0'::pg_lsn)::bigint",
            &[],
        ),
    )
    .await
    .ok()?
    .ok()?;
    drop(client);
    driver.abort();
    row.try_get::<_, Option<i64>>(0)
        .ok()?
        .and_then(|v| u64::try_from(v).ok())
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

fn peer_view(p: &PeerState) -> Peer {
    Peer {
        name: p.name.clone(),
        report: p.report.as_ref().map(|r| PeerReport {
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

/// How many acknowledgements to wait for: `sync` degrades to the standbys available, `strictSync` never.
fn sync_count(mode: ReplicationMode, wanted: u32, available: usize) -> u32 {
    let wanted = wanted.max(1);
    match mode {
        ReplicationMode::StrictSync => wanted,
        _ => wanted
            .min(u32::try_from(available).unwrap_or(u32::MAX))
            .max(1),
    }
}

/// One step of synchronous-standby management.
#[derive(Debug, PartialEq, Eq)]
pub struct SyncPlan {
    /// Write this record of synchronous members to the Lease first (then stop for this loop).
    pub record: Option<Vec<String>>,
    /// Otherwise, configure this (`None`: asynchronous).
    pub configure: Option<SyncStandbys>,
}

/// Pure plan for synchronous replication (L3, zero acknowledged-write loss):
/// - `wanted`: the streaming standbys, those already configured first, then by flushed position;
/// - removals: a recorded member no longer wanted (or not configured) leaves the record first;
/// - the configuration becomes `FIRST n (wanted)` (`strictSync` without standbys keeps waiting on the
///   previous names or on any standby, so writes block rather than go unreplicated);
/// - additions: a configured member PostgreSQL reports as `sync` enters the record.
pub fn plan_sync(
    mode: ReplicationMode,
    sync_replicas: u32,
    recorded: Option<&[String]>,
    configured: Option<&[String]>,
    streaming: &[(String, u64, String)],
) -> SyncPlan {
    let recorded: Vec<String> = recorded.map(<[String]>::to_vec).unwrap_or_default();
    if mode == ReplicationMode::Async {
        // Asynchronous: nothing recorded, nothing configured. An old record is cleared once.
        let record = (!recorded.is_empty()).then(Vec::new);
        return SyncPlan {
            record,
            configure: None,
        };
    }
    let configured: Vec<String> = configured.map(<[String]>::to_vec).unwrap_or_default();
    let mut candidates: Vec<&(String, u64, String)> = streaming.iter().collect();
    candidates.sort_by(|a, b| {
        let a_conf = configured.contains(&a.0);
        let b_conf = configured.contains(&b.0);
        b_conf.cmp(&a_conf).then(b.1.cmp(&a.1)).then(a.0.cmp(&b.0))
    });
    let n = usize::try_from(sync_replicas.max(1)).unwrap_or(1);
    let wanted: Vec<String> = candidates.iter().take(n).map(|c| c.0.clone()).collect();

    let keep: Vec<String> = recorded
        .iter()
        .filter(|m| wanted.contains(m) && configured.contains(m))
        .cloned()
        .collect();
    if keep.len() != recorded.len() {
        return SyncPlan {
            record: Some(keep),
            configure: None,
        };
    }
    let names = if wanted.is_empty() && mode == ReplicationMode::StrictSync {
        configured.clone()
    } else {
        wanted.clone()
    };
    let configure = if names.is_empty() && mode == ReplicationMode::Sync {
        None
    } else {
        Some(SyncStandbys {
            method: SyncMethod::First,
            count: sync_count(mode, sync_replicas, names.len()),
            names,
        })
    };
    let now_configured: Vec<String> = configure
        .as_ref()
        .map(|c| c.names.clone())
        .unwrap_or_default();
    if now_configured == configured {
        let confirmed: Vec<String> = streaming
            .iter()
            .filter(|(name, _, state)| {
                (state == "sync" || state == "quorum") && configured.contains(name)
            })
            .map(|(name, _, _)| name.clone())
            .filter(|name| !recorded.contains(name))
            .collect();
        if !confirmed.is_empty() {
            let mut record = recorded.clone();
            record.extend(confirmed);
            record.sort();
            return SyncPlan {
                record: Some(record),
                configure,
            };
        }
    }
    SyncPlan {
        record: None,
        configure,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| (*x).to_owned()).collect()
    }

    fn row(name: &str, lsn: u64, state: &str) -> (String, u64, String) {
        (name.into(), lsn, state.into())
    }

    #[test]
    fn sync_adds_to_the_configuration_first_then_records_when_postgres_says_sync() {
        let streaming = [row("c-1", 100, "async"), row("c-2", 90, "async")];
        // Step 1: configure FIRST 1 (c-1); record nothing yet.
        let p = plan_sync(ReplicationMode::Sync, 1, None, None, &streaming);
        assert_eq!(p.record, None);
        assert_eq!(p.configure.as_ref().unwrap().names, s(&["c-1"]));
        // Step 2: configured, PostgreSQL reports c-1 sync: record it.
        let streaming = [row("c-1", 100, "sync"), row("c-2", 90, "async")];
        let p = plan_sync(
            ReplicationMode::Sync,
            1,
            None,
            Some(&s(&["c-1"])),
            &streaming,
        );
        assert_eq!(p.record, Some(s(&["c-1"])));
        // Steady: nothing to write.
        let p = plan_sync(
            ReplicationMode::Sync,
            1,
            Some(&s(&["c-1"])),
            Some(&s(&["c-1"])),
            &streaming,
        );
        assert_eq!(p.record, None);
        assert_eq!(p.configure.unwrap().names, s(&["c-1"]));
    }

    #[test]
    fn sync_removes_from_the_record_before_the_configuration() {
        // c-1 stopped streaming; c-2 is the only candidate.
        let streaming = [row("c-2", 90, "potential")];
        let p = plan_sync(
            ReplicationMode::Sync,
            1,
            Some(&s(&["c-1"])),
            Some(&s(&["c-1"])),
            &streaming,
        );
        assert_eq!(
            p,
            SyncPlan {
                record: Some(vec![]),
                configure: None
            },
            "record shrinks first, config untouched"
        );
        let p = plan_sync(
            ReplicationMode::Sync,
            1,
            Some(&[]),
            Some(&s(&["c-1"])),
            &streaming,
        );
        assert_eq!((p.record, p.configure.unwrap().names), (None, s(&["c-2"])));
    }

    #[test]
    fn sync_degrades_to_async_but_strict_keeps_blocking() {
        let p = plan_sync(ReplicationMode::Sync, 1, Some(&[]), Some(&s(&["c-1"])), &[]);
        assert_eq!(
            p,
            SyncPlan {
                record: None,
                configure: None
            }
        );
        let p = plan_sync(
            ReplicationMode::StrictSync,
            1,
            Some(&[]),
            Some(&s(&["c-1"])),
            &[],
        );
        let c = p.configure.unwrap();
        assert_eq!(
            (c.names, c.count),
            (s(&["c-1"]), 1),
            "writes keep waiting for c-1"
        );
        // Fresh strict primary without any standby: FIRST 1 (*).
        let p = plan_sync(ReplicationMode::StrictSync, 1, None, None, &[]);
        assert_eq!(p.configure.unwrap().names, Vec::<String>::new());
    }

    #[test]
    fn sync_keeps_the_configured_standby_rather_than_churning() {
        let streaming = [row("c-1", 50, "sync"), row("c-2", 90, "async")];
        let p = plan_sync(
            ReplicationMode::Sync,
            1,
            Some(&s(&["c-1"])),
            Some(&s(&["c-1"])),
            &streaming,
        );
        assert_eq!((p.record, p.configure.unwrap().names), (None, s(&["c-1"])));
    }

    #[test]
    fn async_clears_an_old_record_once() {
        let p = plan_sync(ReplicationMode::Async, 1, Some(&s(&["c-1"])), None, &[]);
        assert_eq!(p.record, Some(vec![]));
        assert_eq!(
            plan_sync(ReplicationMode::Async, 1, Some(&[]), None, &[]).record,
            None
        );
        assert_eq!(
            plan_sync(ReplicationMode::Async, 1, None, None, &[]).record,
            None
        );
    }

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

    #[test]
    fn sync_count_degrades_only_in_sync() {
        assert_eq!(sync_count(ReplicationMode::Sync, 2, 1), 1);
        assert_eq!(sync_count(ReplicationMode::StrictSync, 2, 1), 2);
        assert_eq!(sync_count(ReplicationMode::Sync, 2, 3), 2);
    }
}
