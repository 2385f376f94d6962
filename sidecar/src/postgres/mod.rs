//! PostgreSQL lifecycle for one member: the files pgpilot manages in PGDATA, the `postgres` child process,
//! and the server's own tools (`initdb`, `pg_basebackup`, `pg_rewind`, `pg_controldata`).
//!
//! Contract with the HA loop (which owns one [`Postgres`] and decides *when* to call what):
//! - Reads: [`Postgres::observe`] (never fails; one round-trip over the local socket), [`Postgres::exited`]
//!   (crash detection), [`Postgres::controldata`] (a stopped data directory).
//! - Plans are pure: [`render`] turns settings + [`Desired`] + [`Credentials`] into file contents;
//!   [`config::plan_change`] says whether a difference needs a reload or a restart.
//! - Actions do IO and are never retried here: the caller re-observes and decides again.
//!
//! Which calls an HA decision maps to:
//!
//! | decision | calls |
//! |---|---|
//! | first holder, empty PGDATA | [`Postgres::bootstrap_primary`] |
//! | join, empty (or half-cloned) PGDATA | [`Postgres::clone_replica`] |
//! | restart as replica of the holder | [`Postgres::configure`] (replica) + [`Postgres::start`] |
//! | holder changed, replica follows | [`Postgres::configure`] (new upstream): `primary_conninfo` reloads |
//! | former primary / diverged timeline | [`Postgres::rejoin`]: rewind, else re-clone |
//! | promote (Lease acquired first, L4) | optionally [`Postgres::configure`] (replica, with the new `synchronous`), then [`Postgres::promote`], then [`Postgres::configure`] (primary) |
//! | crash seen by [`Postgres::exited`] | [`Postgres::start`] (crash recovery) while still holding the Lease |
//! | renew deadline missed (L5) | [`Postgres::fence`] |
//! | SIGTERM / release | [`Postgres::stop`] (`Fast`), then release the Lease (L4) |
//! | spec parameters changed | [`Postgres::configure`]; [`Change::NeedsRestart`] = `pendingRestart` |
//!
//! Safety-relevant behaviour (docs/design.md L4/L5): nothing in this module makes a server writable on its own.
//! A data directory becomes a primary only through [`Postgres::promote`] or by the caller rendering
//! [`Role::Primary`] (no `standby.signal`) before [`Postgres::start`]; [`Postgres::fence`] stops accepting
//! writes at once.

mod apply;
pub mod config;
pub mod credentials;
mod lifecycle;
mod process;
mod sql;
mod tools;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::ExitStatus,
    time::Duration,
};

use pgpilot_crds::contract::ReplicationMode;
use tokio::{process::Child, sync::Mutex};

use crate::state::Heartbeat;

pub use config::{Change, Rendered, render};
pub use credentials::{Credentials, CredentialsError, UserPassword};
pub use lifecycle::Rejoined;

/// Where and how this member's PostgreSQL runs. Built once at start-up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgSettings {
    /// Directory with `postgres`, `initdb`, `pg_basebackup`, `pg_rewind`, `pg_controldata`.
    pub bin_dir: PathBuf,
    /// PGDATA.
    pub data_dir: PathBuf,
    pub port: u16,
    /// `unix_socket_directories`; the sidecar's own superuser connections go through it.
    pub socket_dir: PathBuf,
    pub listen_addresses: String,
    /// `(uid, gid)` the children run as. Set when the sidecar runs as root (tests): PostgreSQL refuses
    /// to run as root. `None` in the pod, where the sidecar already runs as the postgres user.
    pub run_as: Option<(u32, u32)>,
    /// This member's name (the pod name); also its `application_name` upstream and its slot's base name.
    pub member: String,
    /// The cluster's name; `cluster_name` default and the prefix of the slots pgpilot manages.
    pub cluster: String,
    /// How long [`Postgres::start`] waits for the server to accept connections.
    pub start_timeout: Duration,
    /// How long [`Postgres::stop`] waits for a fast shutdown before escalating to immediate.
    pub stop_timeout: Duration,
    /// Append the server's stdout/stderr to this file; `None` inherits the sidecar's (container logs).
    pub log_file: Option<PathBuf>,
}

impl PgSettings {
    /// Settings for the pod (contract.rs): PGDATA from the environment (default `contract::PGDATA`),
    /// port `contract::PG_PORT`, listening on all addresses, the binaries from [`find_bin_dir`], the
    /// socket in `/var/run/postgresql` when that directory exists (the stock images' default), else `/tmp`.
    pub fn for_pod(cluster: &str, member: &str) -> Self {
        use pgpilot_crds::contract;
        let socket_dir = Path::new("/var/run/postgresql");
        Self {
            bin_dir: find_bin_dir(),
            data_dir: std::env::var_os(contract::ENV_PGDATA)
                .map_or_else(|| PathBuf::from(contract::PGDATA), PathBuf::from),
            port: contract::PG_PORT,
            socket_dir: if socket_dir.is_dir() {
                socket_dir.to_owned()
            } else {
                PathBuf::from("/tmp")
            },
            listen_addresses: "*".into(),
            run_as: None,
            member: member.to_owned(),
            cluster: cluster.to_owned(),
            start_timeout: Duration::from_secs(120),
            stop_timeout: Duration::from_secs(30),
            log_file: None,
        }
    }

    fn bin(&self, tool: &str) -> PathBuf {
        self.bin_dir.join(tool)
    }
}

/// The PostgreSQL binaries: `$PGBIN` if set, else the directory of `postgres` on `$PATH` (symlinks
/// resolved: distributions link a few programs into `/usr/bin` but not `pg_rewind` or `pg_controldata`),
/// else Debian's `/usr/lib/postgresql/15/bin`.
pub fn find_bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PGBIN") {
        return PathBuf::from(dir);
    }
    std::env::var_os("PATH")
        .and_then(|path| {
            std::env::split_paths(&path).find_map(|dir| {
                let real = std::fs::canonicalize(dir.join("postgres")).ok()?;
                real.is_file()
                    .then(|| real.parent().map(Path::to_path_buf))
                    .flatten()
            })
        })
        .unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"))
}

/// The major version in `postgres --version`'s answer, e.g. 17 of `postgres (PostgreSQL) 17.2 (Debian
/// 17.2-1)`.
pub fn parse_major(version: &str) -> Option<u32> {
    let number = version.split(')').nth(1)?.split_whitespace().next()?;
    number.split(['.', 'b', 'r']).next()?.parse().ok()
}

/// The primary to clone from, stream from or rewind from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upstream {
    /// Pod IP or name. Empty in [`Role::Replica`]: no primary known yet — the standby replays what it
    /// has and waits (empty `primary_conninfo`).
    pub host: String,
    pub port: u16,
}

/// The role this member should have.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// No `standby.signal`; `synchronous_standby_names` from [`Desired::synchronous`].
    Primary,
    /// `standby.signal` + `primary_conninfo` to `upstream` with `application_name` = member name, and
    /// `primary_slot_name` = `slot` when given (normally [`slot_name`] of this member).
    Replica {
        upstream: Upstream,
        slot: Option<String>,
    },
}

/// How `synchronous_standby_names` counts acknowledgements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncMethod {
    /// `FIRST n (a, b, …)`: the first `n` connected standbys in list order are synchronous; the others
    /// are `potential` and step in when one of them disconnects.
    First,
    /// `ANY n (a, b, …)`: a commit waits for any `n` of the listed standbys (quorum).
    Any,
}

/// The synchronous standbys PostgreSQL should wait for (primary only).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncStandbys {
    pub method: SyncMethod,
    /// How many acknowledgements a commit waits for.
    pub count: u32,
    /// Member names (their `application_name`). Empty means `*`: any standby that connects.
    pub names: Vec<String>,
}

impl SyncStandbys {
    /// `synchronous_standby_names` for a replication mode, given the members the HA loop has chosen as
    /// synchronous (at most `syncReplicas` of them).
    ///
    /// Every chosen member must acknowledge a commit (`FIRST len (chosen)`): then each member recorded as
    /// synchronous in Kubernetes holds every acknowledged commit, which is what lets L3 promote any of
    /// them without loss. A longer list with a smaller count (`FIRST n` with potential standbys, or
    /// `ANY n`) would let an unrecorded or lagging member acknowledge instead, and is only safe with an
    /// election that compares a quorum of members; it is available through [`SyncMethod`] but not chosen
    /// here. The HA loop keeps the record a superset of who may hold acknowledged commits: it removes a
    /// member from the record before dropping it here, and records a new one only after
    /// `pg_stat_replication` shows it `sync`.
    ///
    /// - `Async`: `None`.
    /// - `Sync`: `None` when nobody is chosen (degrade to asynchronous rather than block).
    /// - `StrictSync`: when nobody is chosen, `FIRST 1 (*)`: commits block until some standby connects.
    pub fn for_mode(mode: ReplicationMode, chosen: &[String]) -> Option<Self> {
        let count = u32::try_from(chosen.len()).unwrap_or(u32::MAX);
        match mode {
            ReplicationMode::Async => None,
            ReplicationMode::Sync if chosen.is_empty() => None,
            ReplicationMode::StrictSync if chosen.is_empty() => Some(Self {
                method: SyncMethod::First,
                count: 1,
                names: vec![],
            }),
            ReplicationMode::Sync | ReplicationMode::StrictSync => Some(Self {
                method: SyncMethod::First,
                count,
                names: chosen.to_vec(),
            }),
        }
    }
}

/// Everything the HA loop wants PostgreSQL's configuration to say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    pub role: Role,
    /// Parameters from the spec. pgpilot-owned ones ([`config::is_owned`]) are ignored.
    pub parameters: BTreeMap<String, String>,
    /// Extra `pg_hba.conf` lines, placed before pgpilot's own.
    pub pg_hba: Vec<String>,
    /// `None`: asynchronous replication (`synchronous_standby_names = ''`). Rendered for both roles: a
    /// replica ignores it until it is promoted, so setting it before [`Postgres::promote`] makes the very
    /// first commits on the new primary wait for these standbys (they must not name the member itself).
    pub synchronous: Option<SyncStandbys>,
    /// Members that should have a physical slot on the primary (see [`Postgres::ensure_slots`]).
    pub member_slots: Vec<String>,
    /// `wal_sender_timeout` and `wal_receiver_timeout` (`None`: the server's defaults), with standbys
    /// replying every second.
    pub replication_timeout: Option<Duration>,
}

/// How to stop the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopMode {
    /// SIGINT: roll back open transactions, checkpoint, exit. Clean: no crash recovery, no rewind needed
    /// when a replica had received everything.
    Fast,
    /// SIGQUIT: every backend exits at once without a checkpoint; the next start runs crash recovery.
    Immediate,
}

/// The physical replication slot name for a member: lower case, `-` and `.` replaced by `_`.
pub fn slot_name(member: &str) -> String {
    member
        .chars()
        .map(|c| {
            if c == '-' || c == '.' {
                '_'
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect()
}

/// One member's PostgreSQL: its data directory, its files and its `postgres` child process.
///
/// Owned by the HA loop; every method that changes something takes `&mut self`, so actions on one server
/// never interleave. Dropping it sends SIGQUIT (immediate shutdown) to a still-running child: a sidecar that
/// goes away must not leave a server that could accept writes behind it.
pub struct Postgres {
    settings: PgSettings,
    creds: Credentials,
    child: Option<Child>,
    /// Set when the child exited without being asked to (a crash); cleared by the next start or stop.
    crashed: Option<ExitStatus>,
    /// A cached superuser connection over the socket, reopened on demand.
    client: Mutex<Option<tokio_postgres::Client>>,
    /// Beaten while a server program or the server itself is being waited on (`/liveness`).
    heartbeat: Heartbeat,
    /// The newest timeline this data directory was seen on (cleared when it is replaced or rewound):
    /// a standby's own report falls back to its checkpoint's timeline while no WAL receiver runs.
    timeline_seen: Option<u32>,
}

impl std::fmt::Debug for Postgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Postgres")
            .field("member", &self.settings.member)
            .field("data_dir", &self.settings.data_dir)
            .field("pid", &self.child.as_ref().and_then(Child::id))
            .finish_non_exhaustive()
    }
}

impl Postgres {
    pub fn new(settings: PgSettings, creds: Credentials) -> Self {
        Self {
            settings,
            creds,
            child: None,
            crashed: None,
            client: Mutex::new(None),
            heartbeat: Heartbeat::default(),
            timeline_seen: None,
        }
    }

    /// The HA loop's heartbeat, beaten while this waits on a program that runs (a long clone or
    /// recovery is progress, not a hung loop).
    pub fn set_heartbeat(&mut self, heartbeat: Heartbeat) {
        self.heartbeat = heartbeat;
    }

    pub fn settings(&self) -> &PgSettings {
        &self.settings
    }

    /// Fast stop, then start (crash recovery included when the server had crashed).
    pub async fn restart(&mut self) -> Result<()> {
        self.stop(StopMode::Fast).await?;
        self.start().await
    }

    /// The postmaster's pid while a child runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// PGDATA holds a complete data directory: `PG_VERSION` exists and no clone or rewind was left
    /// half-done (see [`Postgres::rewind`]). A `false` with a non-empty directory means: wipe and re-clone.
    pub fn is_initialized(&self) -> bool {
        self.settings.data_dir.join("PG_VERSION").is_file() && !self.incomplete_marker().exists()
    }

    /// The PostgreSQL major version the data directory was made by (`PG_VERSION`), `None` without one.
    pub fn data_major(&self) -> Option<u32> {
        let text = std::fs::read_to_string(self.settings.data_dir.join("PG_VERSION")).ok()?;
        text.trim().parse().ok()
    }

    /// The major version of this image's server (`postgres --version`), `None` when it cannot be run
    /// or read.
    pub async fn binary_major(&self) -> Option<u32> {
        let out = self
            .command("postgres")
            .arg("--version")
            .output()
            .await
            .ok()?;
        parse_major(&String::from_utf8_lossy(&out.stdout))
    }

    /// Whether the child is alive (reaping it if it just exited).
    pub fn is_running(&mut self) -> bool {
        self.poll_child();
        self.child.is_some()
    }

    /// The exit status of a child that died without [`Postgres::stop`] or [`Postgres::fence`] being asked
    /// for (a crash, an OOM kill, a fatal error). Stays set until the next start or stop.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.poll_child();
        self.crashed
    }

    fn poll_child(&mut self) {
        if let Some(child) = &mut self.child
            && let Ok(Some(status)) = child.try_wait()
        {
            tracing::warn!(member = %self.settings.member, %status, "postgres exited unexpectedly");
            self.child = None;
            self.crashed = Some(status);
        }
    }

    /// Marker beside PGDATA (not inside: pg_rewind deletes files the source lacks) naming an operation
    /// that rewrites PGDATA; present while it runs and after it failed.
    fn incomplete_marker(&self) -> PathBuf {
        let mut name = self.settings.data_dir.clone().into_os_string();
        name.push(".pgpilot-incomplete");
        PathBuf::from(name)
    }
}

/// One row of `pg_stat_replication` on a primary.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplicationRow {
    pub application_name: String,
    pub client_addr: Option<String>,
    /// `streaming`, `catchup`, `startup`, `backup`, `stopping`.
    pub state: String,
    /// `async`, `potential`, `sync` or `quorum`.
    pub sync_state: String,
    pub sent_lsn: Option<u64>,
    pub flush_lsn: Option<u64>,
    pub replay_lsn: Option<u64>,
    /// `reply_time` as text: the standby's clock, compared for equality only.
    pub reply_time: Option<String>,
}

/// The WAL receiver of a replica (`pg_stat_wal_receiver`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WalReceiver {
    /// `streaming`, `starting`, `waiting`, `restarting`, `stopping`.
    pub status: String,
    pub upstream_host: Option<String>,
    pub upstream_port: Option<u16>,
    pub received_timeline: Option<u32>,
    pub slot_name: Option<String>,
}

/// A snapshot of the local server. Fields are `None` when the server could not answer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observation {
    /// The postmaster child is alive.
    pub running: bool,
    /// A superuser connection over the socket succeeded and the queries answered.
    pub accepting: bool,
    pub in_recovery: Option<bool>,
    /// `server_version_num`, e.g. 150010.
    pub server_version: Option<u32>,
    /// Primary: the timeline WAL is written on; replica: the newest of the received timeline, the
    /// checkpoint's and the one this data directory was last seen on (the receiver comes and goes with its
    /// upstream, the checkpoint's lags a switch until the next restartpoint).
    pub timeline: Option<u32>,
    /// Primary: `pg_current_wal_lsn()`.
    pub current_lsn: Option<u64>,
    /// Replica: `pg_last_wal_receive_lsn()`.
    pub received_lsn: Option<u64>,
    /// Replica: `pg_last_wal_replay_lsn()`.
    pub replayed_lsn: Option<u64>,
    pub wal_receiver: Option<WalReceiver>,
    /// Parameters whose new value waits for a restart (`pg_settings.pending_restart`).
    pub pending_restart: Vec<String>,
    /// Primary: its standbys.
    pub replication: Vec<ReplicationRow>,
    /// Why the server could not be observed, for humans.
    pub error: Option<String>,
}

impl Observation {
    /// The position that matters for comparing members: a primary's write position, a replica's
    /// received position (or replayed, when nothing was received since start).
    pub fn wal_position(&self) -> Option<u64> {
        match self.in_recovery {
            Some(false) => self.current_lsn,
            Some(true) => match (self.received_lsn, self.replayed_lsn) {
                (Some(r), Some(p)) => Some(r.max(p)),
                (r, p) => r.or(p),
            },
            None => None,
        }
    }
}

/// What `pg_controldata` says about a data directory (meaningful while the server is stopped).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ControlData {
    /// `shut down`, `shut down in recovery`, `in production`, `in archive recovery`, …
    pub state: String,
    pub timeline: u32,
    pub checkpoint_lsn: u64,
    pub data_checksums: bool,
    /// `Database system identifier`: the same on every member cloned from one `initdb`.
    pub system_identifier: String,
}

impl ControlData {
    /// Cleanly shut down as a primary: a replica that received everything can take over without rewind.
    pub fn is_clean_primary_shutdown(&self) -> bool {
        self.state == "shut down"
    }
}

/// Errors of the PostgreSQL lifecycle actions.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{tool} failed ({status}): {stderr}")]
    Tool {
        tool: &'static str,
        status: String,
        stderr: String,
    },
    #[error("{context}: {source}")]
    Sql {
        context: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("{what} did not finish within {timeout:?}")]
    Timeout {
        what: &'static str,
        timeout: Duration,
    },
    #[error("postgres exited ({status}) before accepting connections")]
    Exited { status: String },
    #[error("postgres is not running")]
    NotRunning,
    #[error("postgres is already running (pid {pid})")]
    AlreadyRunning { pid: u32 },
    #[error("the data directory {0} is not empty")]
    NotEmpty(PathBuf),
    /// No connection to the upstream (`source` is `None` when connecting timed out).
    #[error("cannot reach the upstream {host}:{port}")]
    Unreachable {
        host: String,
        port: u16,
        #[source]
        source: Option<tokio_postgres::Error>,
    },
    #[error("{0}")]
    Signal(String),
    /// The call does not fit the request, e.g. rejoining with a primary role.
    #[error("refused: {0}")]
    Refused(&'static str),
}

impl Error {
    /// The variant's name: the Event reason and the metric label.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Io { .. } => "Io",
            Error::Tool { .. } => "Tool",
            Error::Sql { .. } => "Sql",
            Error::Timeout { .. } => "Timeout",
            Error::Exited { .. } => "Exited",
            Error::NotRunning => "NotRunning",
            Error::AlreadyRunning { .. } => "AlreadyRunning",
            Error::NotEmpty(_) => "NotEmpty",
            Error::Unreachable { .. } => "Unreachable",
            Error::Signal(_) => "Signal",
            Error::Refused(_) => "Refused",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_major_version_is_read_from_postgres_version() {
        for (text, major) in [
            (
                "postgres (PostgreSQL) 15.10 (Debian 15.10-0+deb12u1)\n",
                Some(15),
            ),
            ("postgres (PostgreSQL) 17.2\n", Some(17)),
            ("postgres (PostgreSQL) 18beta1\n", Some(18)),
            ("postgres (PostgreSQL) 16rc1\n", Some(16)),
            ("", None),
            ("command not found", None),
        ] {
            assert_eq!(parse_major(text), major, "{text:?}");
        }
    }

    #[test]
    fn slot_names_are_valid_slot_identifiers() {
        assert_eq!(slot_name("pg-main-0"), "pg_main_0");
        assert_eq!(slot_name("Db.1"), "db_1");
    }

    #[test]
    fn synchronous_standbys_by_mode() {
        let chosen = vec!["db-1".to_owned(), "db-2".to_owned()];
        assert_eq!(
            SyncStandbys::for_mode(ReplicationMode::Async, &chosen),
            None
        );
        assert_eq!(
            SyncStandbys::for_mode(ReplicationMode::Sync, &[]),
            None,
            "sync degrades to async"
        );
        let all = Some(SyncStandbys {
            method: SyncMethod::First,
            count: 2,
            names: chosen.clone(),
        });
        assert_eq!(SyncStandbys::for_mode(ReplicationMode::Sync, &chosen), all);
        assert_eq!(
            SyncStandbys::for_mode(ReplicationMode::StrictSync, &chosen),
            all
        );
        assert_eq!(
            SyncStandbys::for_mode(ReplicationMode::StrictSync, &[]),
            Some(SyncStandbys {
                method: SyncMethod::First,
                count: 1,
                names: vec![]
            }),
            "strict never drops to async"
        );
    }

    #[test]
    fn wal_position_by_role() {
        let primary = Observation {
            in_recovery: Some(false),
            current_lsn: Some(10),
            ..Default::default()
        };
        assert_eq!(primary.wal_position(), Some(10));
        let replica = Observation {
            in_recovery: Some(true),
            received_lsn: Some(7),
            replayed_lsn: Some(9),
            ..Default::default()
        };
        assert_eq!(replica.wal_position(), Some(9));
        assert_eq!(Observation::default().wal_position(), None);
    }
}
