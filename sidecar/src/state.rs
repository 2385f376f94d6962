//! What this member publishes, and the commands the REST API hands to the HA loop.
//!
//! The HA loop is the only writer of [`MemberState`]; it publishes a new snapshot on a
//! `tokio::sync::watch` channel after every loop. REST handlers and metrics read the latest snapshot and
//! never call Kubernetes or PostgreSQL themselves (docs/design.md: GETs answer from in-memory state).
//! Mutating REST calls become a [`Command`] on an mpsc channel with a oneshot for the answer; the HA loop
//! takes them between two loops, so no action ever runs concurrently with the loop's own.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use pgpilot_crds::contract::{
    AgentInfo, MemberReport, MemberTags, PgpilotInfo, ROLE_PRIMARY, ROLE_REPLICA, SidecarConfig,
    Xlog,
};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};

/// Everything the REST API and the metrics show about this member.
#[derive(Clone, Debug)]
pub struct MemberState {
    pub cluster: String,
    pub member: String,
    pub version: String,
    /// `primary`, `replica` or `uninitialized` (Patroni's words).
    pub role: String,
    /// `running`, `starting`, `stopped`, `crashed`, `creating replica`, `restarting`, `fenced` …
    pub state: String,
    /// PostgreSQL runs and answers queries.
    pub running: bool,
    /// This member holds the Lease, confirmed by its own write (L4) — Patroni's "leader".
    pub holder: bool,
    /// The Lease holder as last read (any member).
    pub leader: Option<String>,
    /// The Lease epoch as last read (L7).
    pub epoch: u64,
    pub server_version: Option<u32>,
    pub timeline: Option<u32>,
    /// Primary: write position.
    pub wal_location: Option<u64>,
    /// Replica: received and replayed positions.
    pub received_location: Option<u64>,
    pub replayed_location: Option<u64>,
    /// `streaming` while a replica's WAL receiver is connected.
    pub replication_state: Option<String>,
    /// Replica: bytes its replay lags behind the primary, as last measured against the primary's report.
    pub lag_bytes: Option<u64>,
    pub pending_restart: bool,
    /// Members the Lease records as synchronous (L3).
    pub sync_members: Vec<String>,
    pub tags: MemberTags,
    pub config: SidecarConfig,
    pub last_decision: String,
    /// A replica: why it may not take over if the primary went away now (`None`: it may).
    pub failover_blocked: Option<String>,
    /// The database system identifier of this member's data.
    pub system_identifier: Option<String>,
    /// Why this member refuses to act on its data, if it does.
    pub refusal: Option<String>,
    /// The other members as last seen: for `/cluster` and switchover checks.
    pub peers: Vec<PeerState>,
    /// Timeline switches this member made or saw, oldest first (`/history`).
    pub history: Vec<HistoryEntry>,
    /// A switchover waiting for its time.
    pub scheduled_switchover: Option<ScheduledSwitchover>,
}

impl MemberState {
    pub fn new(cluster: &str, member: &str) -> Self {
        Self {
            cluster: cluster.to_owned(),
            member: member.to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            role: "uninitialized".into(),
            state: "starting".into(),
            running: false,
            holder: false,
            leader: None,
            epoch: 0,
            server_version: None,
            timeline: None,
            wal_location: None,
            received_location: None,
            replayed_location: None,
            replication_state: None,
            lag_bytes: None,
            pending_restart: false,
            sync_members: Vec::new(),
            tags: MemberTags::default(),
            config: SidecarConfig::default(),
            last_decision: String::new(),
            failover_blocked: None,
            system_identifier: None,
            refusal: None,
            peers: Vec::new(),
            history: Vec::new(),
            scheduled_switchover: None,
        }
    }

    /// Running as the primary under a Lease this process holds.
    pub fn is_primary(&self) -> bool {
        self.holder && self.running && self.role == ROLE_PRIMARY
    }

    pub fn is_replica(&self) -> bool {
        self.running && self.role == ROLE_REPLICA
    }

    /// The Lease's holder when it runs as the primary, by this member's view (itself, or the holder's
    /// report this loop); `None` when the holder is absent, unreachable or not serving.
    pub fn live_leader(&self) -> Option<&str> {
        let leader = self.leader.as_deref()?;
        let serving = if leader == self.member {
            self.is_primary()
        } else {
            self.peers
                .iter()
                .find(|p| p.name == leader)
                .and_then(|p| p.report.as_ref())
                .is_some_and(|r| r.role == ROLE_PRIMARY && r.state == "running")
        };
        serving.then_some(leader)
    }

    /// A replica fit to serve reads: streaming, and its lag as last measured within
    /// `maximumLagOnFailover` (issue 13 hole 10: `-ro` never serves arbitrarily stale reads).
    pub fn is_ready_replica(&self) -> bool {
        self.is_replica()
            && self.replication_state.as_deref() == Some("streaming")
            && self
                .lag_bytes
                .is_some_and(|lag| lag <= self.config.replication.maximum_lag_on_failover_bytes)
    }

    /// A replica the Lease records as synchronous.
    pub fn is_sync_replica(&self) -> bool {
        self.is_replica() && self.sync_members.iter().any(|m| m == &self.member)
    }

    /// The WAL position used to compare members: write position on a primary, else received/replayed.
    pub fn wal_position(&self) -> Option<u64> {
        self.wal_location
            .or(match (self.received_location, self.replayed_location) {
                (Some(r), Some(p)) => Some(r.max(p)),
                (r, p) => r.or(p),
            })
    }

    /// What `GET /patroni` returns (contract.rs).
    pub fn report(&self) -> MemberReport {
        let primary = self.role == ROLE_PRIMARY;
        MemberReport {
            state: self.state.clone(),
            role: self.role.clone(),
            server_version: self.server_version,
            timeline: self.timeline,
            xlog: (self.wal_location.is_some()
                || self.received_location.is_some()
                || self.replayed_location.is_some())
            .then_some(Xlog {
                location: if primary { self.wal_location } else { None },
                received_location: if primary {
                    None
                } else {
                    self.received_location
                },
                replayed_location: if primary {
                    None
                } else {
                    self.replayed_location
                },
            }),
            replication_state: self.replication_state.clone(),
            pending_restart: self.pending_restart,
            pause: self.config.paused,
            patroni: AgentInfo {
                version: self.version.clone(),
                scope: self.cluster.clone(),
                name: self.member.clone(),
            },
            pgpilot: PgpilotInfo {
                epoch: self.epoch,
                lag_bytes: self.lag_bytes,
                last_decision: self.last_decision.clone(),
                failover_blocked: self.failover_blocked.clone(),
                system_identifier: self.system_identifier.clone(),
                refusal: self.refusal.clone(),
            },
        }
    }
}

/// Another member as this one last saw it (pod list + its REST report).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct PeerState {
    pub name: String,
    /// Pod IP, when the pod has one.
    pub host: Option<String>,
    /// Its `GET /patroni` answer this loop; `None` when it did not answer.
    pub report: Option<MemberReport>,
}

impl PeerState {
    /// Running as a replica with a known WAL position.
    pub fn healthy_replica(&self) -> Option<&MemberReport> {
        self.report
            .as_ref()
            .filter(|r| r.role == ROLE_REPLICA && r.state == "running")
    }

    pub fn wal_position(&self) -> Option<u64> {
        let x = self.report.as_ref()?.xlog.as_ref()?;
        x.location
            .or(match (x.received_location, x.replayed_location) {
                (Some(r), Some(p)) => Some(r.max(p)),
                (r, p) => r.or(p),
            })
    }
}

/// One timeline switch (`GET /history` answers Patroni's `[timeline, lsn, reason, timestamp, leader]`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HistoryEntry {
    pub timeline: u32,
    pub lsn: u64,
    pub reason: String,
    pub timestamp: String,
    pub leader: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ScheduledSwitchover {
    pub candidate: Option<String>,
    /// RFC 3339.
    pub at: String,
}

/// An action a REST call asks of the HA loop.
#[derive(Debug)]
pub enum Action {
    /// Hand the Lease to `candidate` (or the best replica) after stopping PostgreSQL; primary only.
    /// `at`: not before this time (a scheduled switchover).
    Switchover {
        candidate: Option<String>,
        at: Option<k8s_openapi::jiff::Timestamp>,
    },
    /// Restart the local PostgreSQL (applies `pending_restart` parameters).
    Restart,
    /// Re-read the configuration and reload PostgreSQL.
    Reload,
    /// Replica only: wipe PGDATA and clone again from the primary.
    Reinitialize,
    /// No primary serves: take the Lease as soon as the Lease rules allow and promote, this member
    /// being the user's choice (`force`: also when that costs writes only others have).
    Failover { force: bool },
}

/// The HA loop's answer: an HTTP status and a message for the caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub status: u16,
    pub message: String,
}

impl Outcome {
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

/// A REST request for the HA loop.
#[derive(Debug)]
pub struct Command {
    pub action: Action,
    pub reply: oneshot::Sender<Outcome>,
}

/// The sending halves the REST API holds.
#[derive(Clone, Debug)]
pub struct Handles {
    pub state: watch::Receiver<MemberState>,
    pub commands: mpsc::Sender<Command>,
    /// When the HA loop last made progress (`/liveness`).
    pub heartbeat: Heartbeat,
}

impl Handles {
    /// Sends `action` to the HA loop and waits for its answer; 503 when the loop is gone or busy past
    /// `timeout`.
    pub async fn ask(&self, action: Action, timeout: std::time::Duration) -> Outcome {
        let (reply, answer) = oneshot::channel();
        if self.commands.send(Command { action, reply }).await.is_err() {
            return Outcome::new(503, "the HA loop is not running");
        }
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => Outcome::new(503, "the HA loop dropped the request"),
            Err(_) => Outcome::new(
                503,
                format!("no answer from the HA loop within {timeout:?}"),
            ),
        }
    }
}

/// When the HA loop last made progress: it beats after every loop and every command, and its long steps
/// beat while the program they wait on runs (`initdb`, `pg_basebackup`, `pg_rewind`, a server starting
/// or stopping), so only a loop stuck in a step that waits on nothing alive falls silent. Shared by the
/// loop (the writer) and the REST API's `/liveness` (the reader); cheap to clone and to beat.
#[derive(Clone, Debug)]
pub struct Heartbeat {
    /// Tokio's clock (the std clock outside a paused test runtime).
    base: tokio::time::Instant,
    /// Milliseconds after `base` of the last beat, plus one; 0 before the first.
    last: Arc<AtomicU64>,
}

impl Default for Heartbeat {
    fn default() -> Self {
        Self {
            base: tokio::time::Instant::now(),
            last: Arc::new(AtomicU64::new(0)),
        }
    }
}

impl Heartbeat {
    pub fn beat(&self) {
        self.beat_at(tokio::time::Instant::now());
    }

    fn beat_at(&self, at: tokio::time::Instant) {
        let ms =
            u64::try_from(at.saturating_duration_since(self.base).as_millis()).unwrap_or(u64::MAX);
        self.last.fetch_max(ms.saturating_add(1), Ordering::Relaxed);
    }

    /// How long ago the last beat was; `None` before the loop's first beat.
    pub fn age(&self) -> Option<Duration> {
        self.age_at(tokio::time::Instant::now())
    }

    fn age_at(&self, now: tokio::time::Instant) -> Option<Duration> {
        match self.last.load(Ordering::Relaxed) {
            0 => None,
            ms => {
                let at = self.base + Duration::from_millis(ms - 1);
                Some(now.saturating_duration_since(at))
            }
        }
    }

    /// Awaits `op`, beating every second while it runs: for steps that wait on a live program.
    pub async fn while_running<T>(&self, op: impl Future<Output = T>) -> T {
        let mut op = std::pin::pin!(op);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                out = &mut op => return out,
                _ = tick.tick() => self.beat(),
            }
        }
    }
}

/// `/liveness`: the HA loop is alive while it beat within five `retryPeriod`s, and 30 s at the least
/// (a Lease call, a peer poll and a fast stop fit in that on a slow machine); before its first beat it
/// counts as alive (it waits for its configuration). The kubelet restarts the container only after the
/// probe's own failure threshold on top (about a minute).
pub fn loop_alive(age: Option<Duration>, retry_period: Duration) -> bool {
    age.is_none_or(|age| age <= liveness_bound(retry_period))
}

pub fn liveness_bound(retry_period: Duration) -> Duration {
    (retry_period * 5).max(Duration::from_secs(30))
}

#[cfg(test)]
mod heartbeat_tests {
    use super::*;

    #[test]
    fn a_heartbeat_is_silent_until_the_first_beat_then_ages() {
        let hb = Heartbeat::default();
        let t0 = hb.base;
        assert_eq!(hb.age_at(t0 + Duration::from_secs(100)), None);
        hb.beat_at(t0 + Duration::from_secs(10));
        assert_eq!(
            hb.age_at(t0 + Duration::from_secs(40)),
            Some(Duration::from_secs(30))
        );
        // An older beat never moves it back.
        hb.beat_at(t0 + Duration::from_secs(5));
        assert_eq!(
            hb.age_at(t0 + Duration::from_secs(40)),
            Some(Duration::from_secs(30))
        );
        // A clone beats the same heart.
        hb.clone().beat_at(t0 + Duration::from_secs(39));
        assert_eq!(
            hb.age_at(t0 + Duration::from_secs(40)),
            Some(Duration::from_secs(1))
        );
    }

    #[test]
    fn the_loop_is_alive_within_five_retry_periods_and_thirty_seconds_at_the_least() {
        let s = Duration::from_secs;
        assert!(loop_alive(None, s(2)));
        assert!(loop_alive(Some(s(30)), s(2)));
        assert!(!loop_alive(Some(s(31)), s(2)));
        assert!(loop_alive(Some(s(50)), s(10)));
        assert!(!loop_alive(Some(s(51)), s(10)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_step_beats_while_it_runs() {
        let hb = Heartbeat::default();
        hb.beat();
        hb.while_running(tokio::time::sleep(Duration::from_secs(120)))
            .await;
        // Beaten within the last second of the two minutes, not only when the step began.
        let age = hb.age().expect("beaten");
        assert!(age <= Duration::from_secs(1), "{age:?}");
        // And a step that is only awaited leaves the beat where it was.
        tokio::time::sleep(Duration::from_secs(120)).await;
        assert!(hb.age().expect("beaten") >= Duration::from_secs(120));
    }
}
