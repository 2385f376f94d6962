//! The contract between the operator and the sidecars.
//!
//! The operator writes the objects named here; the sidecars read them and publish their own state through
//! the pod label/annotation below and their REST API ([`MemberReport`] is what `GET /patroni` returns).
//! Changing anything here changes both sides: keep them in this one file.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Field manager for every server-side apply by the operator.
pub const FIELD_MANAGER: &str = "pgpilot-operator";
/// Field manager for the sidecars' writes (Lease, their own pod's role label).
pub const SIDECAR_FIELD_MANAGER: &str = "pgpilot-sidecar";

/// Label on every child object and pod: the owning cluster's name.
pub const LABEL_CLUSTER: &str = "pgpilot.io/cluster";
/// Label on every pod: the member (pod) name.
pub const LABEL_INSTANCE: &str = "pgpilot.io/instance";
/// Label on every pod, set by its sidecar: [`ROLE_PRIMARY`] or [`ROLE_REPLICA`]. Services select on it.
pub const LABEL_ROLE: &str = "pgpilot.io/role";
/// Label on every pod, set by its sidecar with the role label: [`BALANCED`] unless the member is tagged
/// `noLoadBalance`. The `-ro` and `-r` Services select on it; `-rw` does not.
pub const LABEL_LOAD_BALANCE: &str = "pgpilot.io/load-balance";
/// The [`LABEL_LOAD_BALANCE`] value of a member that takes read traffic (`"false"` otherwise).
pub const BALANCED: &str = "true";
/// Annotation on a pod, set by its sidecar with the role label: the Lease epoch (`leaseTransitions`) the
/// role was taken under (docs/design.md L7), so a stale primary's label can be recognised.
pub const ANNOTATION_EPOCH: &str = "pgpilot.io/epoch";
/// Annotation on the Lease, written by the holder only when it changes: comma-separated names of the
/// members PostgreSQL currently treats as synchronous. In `sync`/`strictSync` mode only these (or the
/// holder) may acquire the Lease (docs/design.md L3).
pub const ANNOTATION_SYNC_MEMBERS: &str = "pgpilot.io/sync-members";
/// Annotation on the Lease, written by a primary handing the Lease over in a switchover: the member it
/// named as holder, which confirms with its own conditional write (clearing this) before promoting.
pub const ANNOTATION_HANDOVER: &str = "pgpilot.io/handover-to";
/// Annotation on the Lease, written once by the member that ran `initdb`: the database system
/// identifier (`pg_control_system()`) of the cluster's data. Once set, no member bootstraps again, and no
/// member rewinds, re-clones or wipes its data against a server with a different identifier.
pub const ANNOTATION_SYSTEM_ID: &str = "pgpilot.io/system-identifier";
/// Annotation on the Lease, written by the holder with every renewal (no extra write): its WAL write
/// position then, as a byte offset. A member judges its own lag against it (Patroni keeps the leader's
/// optime in its store for the same reason), even right after a restart.
pub const ANNOTATION_WAL_POSITION: &str = "pgpilot.io/wal-position";
/// Annotation on the Lease, written by the holder with every renewal: the newest timeline a primary of
/// the cluster ran on (it only rises). A member about to promote reserves every ID up to it, so it never
/// picks a timeline ID another primary already used (a standby that missed a promotion's history file
/// would otherwise, and pg_rewind, which compares only the IDs, could not bring that primary back).
pub const ANNOTATION_TIMELINE: &str = "pgpilot.io/timeline";
/// Annotation on the Lease, written by the holder with every renewal: the `renewDeadline` (seconds) it
/// fences by, so a member that stops waiting for a vanished holder's pod waits at least that long (L8).
pub const ANNOTATION_RENEW_DEADLINE: &str = "pgpilot.io/renew-deadline-seconds";
/// Label and annotation keys applied by the operator alongside `app.kubernetes.io/*`.
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "pgpilot";

pub const ROLE_PRIMARY: &str = "primary";
pub const ROLE_REPLICA: &str = "replica";

/// Port of the sidecar's REST API (Patroni's default).
pub const REST_PORT: u16 = 8008;
/// PostgreSQL port inside the pod.
pub const PG_PORT: u16 = 5432;

/// Name of the PostgreSQL container, whose entrypoint is the sidecar.
pub const POSTGRES_CONTAINER: &str = "postgres";
/// Where the init container copies the sidecar binary; an emptyDir shared with the PostgreSQL container.
pub const SIDECAR_BIN_DIR: &str = "/pgpilot/bin";
pub const SIDECAR_BINARY: &str = "pgpilot-sidecar";
/// Mount point of the data volume; PGDATA is a subdirectory so the volume's root can hold lost+found.
pub const DATA_MOUNT: &str = "/var/lib/postgresql/data";
pub const PGDATA: &str = "/var/lib/postgresql/data/pgdata";
/// Where the Secrets are mounted: `<SECRETS_DIR>/<kind>/{username,password}` for kind in
/// superuser, replication, app; `<SECRETS_DIR>/api/{username,password}` guards mutating REST calls.
pub const SECRETS_DIR: &str = "/etc/pgpilot/secrets";
/// The oldest PostgreSQL major version pgpilot runs (the grants and catalog views it uses).
pub const MIN_MAJOR: u32 = 15;
/// Unix user id of PostgreSQL in the stock image (and our local stand-in).
pub const POSTGRES_UID: i64 = 999;

/// Environment the StatefulSet gives the sidecar (values from the downward API where they vary by pod).
pub const ENV_CLUSTER: &str = "PGPILOT_CLUSTER";
pub const ENV_POD_NAME: &str = "POD_NAME";
pub const ENV_POD_NAMESPACE: &str = "POD_NAMESPACE";
pub const ENV_POD_IP: &str = "POD_IP";
pub const ENV_PGDATA: &str = "PGDATA";

/// Key in the cluster's ConfigMap that holds the [`SidecarConfig`] as JSON.
pub const CONFIG_KEY: &str = "config.json";

/// Secret kinds the operator generates (random, once, never overwritten).
pub const SECRET_KINDS: [&str; 4] = ["superuser", "replication", "app", "api"];

pub fn lease_name(cluster: &str) -> String {
    format!("{cluster}-leader")
}
pub fn config_map_name(cluster: &str) -> String {
    format!("{cluster}-config")
}
pub fn headless_service_name(cluster: &str) -> String {
    format!("{cluster}-pods")
}
/// `kind` is one of [`SECRET_KINDS`].
pub fn secret_name(cluster: &str, kind: &str) -> String {
    format!("{cluster}-{kind}")
}
pub fn service_account_name(cluster: &str) -> String {
    format!("{cluster}-sidecar")
}
/// The StatefulSet ordinal of pod `pod` of cluster `cluster` (`<cluster>-<ordinal>`), if it is one.
pub fn member_ordinal(cluster: &str, pod: &str) -> Option<u32> {
    let ordinal = pod.strip_prefix(cluster)?.strip_prefix('-')?;
    let canonical = !ordinal.is_empty()
        && ordinal.bytes().all(|b| b.is_ascii_digit())
        && (ordinal == "0" || !ordinal.starts_with('0'));
    if canonical {
        ordinal.parse().ok()
    } else {
        None
    }
}

/// Whether `pod` is a member of a cluster of `instances` members: the StatefulSet's pods with an
/// ordinal below `instances` (`None`: not known, every pod of the cluster counts).
pub fn is_member(cluster: &str, pod: &str, instances: Option<u32>) -> bool {
    member_ordinal(cluster, pod).is_some_and(|o| instances.is_none_or(|n| o < n))
}

/// DNS name of a member inside the namespace, through the headless Service.
pub fn member_host(cluster: &str, member: &str) -> String {
    format!("{member}.{}", headless_service_name(cluster))
}

/// Everything the sidecars need from the spec, rendered by the operator into the cluster's ConfigMap
/// (key [`CONFIG_KEY`]) and read by every sidecar. Defaults here equal the CRD's defaults.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SidecarConfig {
    pub ha: HaTimings,
    /// Keep serving as primary while the apiserver is unreachable if every member confirms over REST.
    pub failsafe: bool,
    pub replication: ReplicationConfig,
    /// PostgreSQL parameters from the spec (pgpilot-owned ones are rejected by the CRD).
    pub parameters: BTreeMap<String, String>,
    /// Extra pg_hba.conf lines, placed before pgpilot's own.
    pub pg_hba: Vec<String>,
    /// Pause mode: change nothing automatically; the holder keeps renewing.
    pub paused: bool,
    pub bootstrap: BootstrapConfig,
    /// Per-member tags, keyed by member (pod) name. Absent members have default tags.
    pub tags: BTreeMap<String, MemberTags>,
    /// `spec.instances`: members are the pods `<cluster>-0` … `<cluster>-(instances-1)`; any other pod
    /// with the cluster label is not a member (no slot, no vote). `None` (an older operator): every pod
    /// with the cluster label counts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instances: Option<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HaTimings {
    pub lease_duration_seconds: u32,
    pub renew_deadline_seconds: u32,
    pub retry_period_seconds: u32,
}

impl Default for HaTimings {
    fn default() -> Self {
        Self {
            lease_duration_seconds: 15,
            renew_deadline_seconds: 10,
            retry_period_seconds: 2,
        }
    }
}

impl HaTimings {
    /// docs/design.md L6: `leaseDuration > renewDeadline > 1.2 · retryPeriod`. The CRD enforces the same rule.
    pub fn is_valid(&self) -> bool {
        self.lease_duration_seconds > self.renew_deadline_seconds
            && u64::from(self.renew_deadline_seconds) * 10
                > u64::from(self.retry_period_seconds) * 12
            && self.retry_period_seconds > 0
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ReplicationMode {
    #[default]
    Async,
    Sync,
    StrictSync,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ReplicationConfig {
    pub mode: ReplicationMode,
    /// How many synchronous standbys PostgreSQL waits for (sync modes only).
    pub sync_replicas: u32,
    /// A replica further behind the best reachable member than this many bytes may not take over.
    pub maximum_lag_on_failover_bytes: u64,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        Self {
            mode: ReplicationMode::Async,
            sync_replicas: 1,
            maximum_lag_on_failover_bytes: 1024 * 1024,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct BootstrapConfig {
    /// Database created at initdb, owned by the app user.
    pub database: String,
    /// Name of the application role (its password is in the `app` Secret).
    pub owner: String,
}

impl Default for BootstrapConfig {
    fn default() -> Self {
        Self {
            database: "app".into(),
            owner: "app".into(),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct MemberTags {
    pub no_failover: bool,
    pub no_load_balance: bool,
    /// Higher wins a tie between equally eligible members; 0 behaves like `noFailover` (as in Patroni).
    pub failover_priority: Option<u32>,
}

impl MemberTags {
    /// Whether a member with these tags may ever be promoted: not `noFailover`, and not a failover
    /// priority of 0 (which Patroni treats the same way). The one definition the election, the HA loop,
    /// the REST API and the operator's status all use.
    pub fn may_fail_over(&self) -> bool {
        !self.no_failover && self.failover_priority != Some(0)
    }

    /// The priority that breaks ties between equally eligible members (default 1).
    pub fn priority(&self) -> u32 {
        self.failover_priority.unwrap_or(1)
    }
}

/// What a sidecar answers on `GET /patroni` (and `GET /`): Patroni's fields, so existing tooling parses it,
/// plus pgpilot's own under `pgpilot`. The operator builds `status.members` from it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MemberReport {
    /// `running`, `starting`, `stopped`, `crashed`, `creating replica`, `restarting` … (Patroni's words).
    pub state: String,
    /// `primary`, `replica` or `uninitialized`.
    pub role: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_version: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeline: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub xlog: Option<Xlog>,
    /// `streaming` when a replica's WAL receiver is connected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replication_state: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub pending_restart: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub pause: bool,
    pub patroni: AgentInfo,
    pub pgpilot: PgpilotInfo,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Xlog {
    /// Primary: current WAL write position, as a byte offset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<u64>,
    /// Replica: last received and replayed positions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub received_location: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replayed_location: Option<u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AgentInfo {
    pub version: String,
    /// The cluster name (Patroni's "scope").
    pub scope: String,
    /// The member name.
    pub name: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PgpilotInfo {
    /// The Lease epoch (`leaseTransitions`) this member last saw; a primary's is the one it holds (L7).
    pub epoch: u64,
    /// Bytes this replica's replay lags behind the primary's write position, as last measured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lag_bytes: Option<u64>,
    /// The last HA decision, for humans (`kubectl describe`, failing tests).
    pub last_decision: String,
    /// A replica: why it may not take over if the primary went away now (`None`: it may). The operator
    /// sets `FailoverBlocked` when no member may.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failover_blocked: Option<String>,
    /// The database system identifier of this member's data (`None`: no data yet).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system_identifier: Option<String>,
    /// Why this member refuses to touch its data or to follow (e.g. its data belongs to another
    /// database system than the cluster's): the operator shows it as a condition and an Event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refusal: Option<String>,
}

/// An error and its sources, `outer: inner: innermost`, as status messages, Events and logs show it.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_are_the_statefulset_pods_below_instances() {
        assert_eq!(member_ordinal("pg", "pg-2"), Some(2));
        assert_eq!(member_ordinal("pg", "pg-02"), None);
        assert_eq!(member_ordinal("pg", "pgx-2"), None);
        assert_eq!(member_ordinal("pg", "pg-"), None);
        assert_eq!(member_ordinal("pg", "pg-+1"), None);
        assert_eq!(member_ordinal("pg-a", "pg-a-1"), Some(1));
        assert!(is_member("pg", "pg-1", Some(2)));
        assert!(!is_member("pg", "pg-2", Some(2)));
        assert!(is_member("pg", "pg-7", None));
        assert!(!is_member("pg", "pg-debug", None));
    }

    #[test]
    fn default_timings_satisfy_l6() {
        assert!(HaTimings::default().is_valid());
    }

    #[test]
    fn l6_rejects_each_broken_inequality() {
        let t = |l, d, r| HaTimings {
            lease_duration_seconds: l,
            renew_deadline_seconds: d,
            retry_period_seconds: r,
        };
        assert!(!t(10, 10, 2).is_valid(), "lease must exceed renew deadline");
        assert!(
            !t(15, 12, 10).is_valid(),
            "renew deadline must exceed 1.2 x retry"
        );
        assert!(!t(15, 6, 5).is_valid(), "6 is exactly 1.2 x 5: not greater");
        assert!(t(15, 7, 5).is_valid());
        assert!(!t(15, 10, 0).is_valid(), "retry period must be positive");
    }

    #[test]
    fn config_round_trips_and_fills_defaults() {
        let c: SidecarConfig =
            serde_json::from_str(r#"{"replication":{"mode":"strictSync"}}"#).unwrap();
        assert_eq!(c.replication.mode, ReplicationMode::StrictSync);
        assert_eq!(c.replication.sync_replicas, 1);
        assert_eq!(c.ha, HaTimings::default());
        let back: SidecarConfig =
            serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
    }
}
