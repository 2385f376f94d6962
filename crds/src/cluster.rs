//! The `PostgresCluster` custom resource (`pgpilot.io/v1alpha1`, short name `pgc`).
//!
//! Types only: serde + schemars + kube derive. Every `///` becomes the field's description in the CRD;
//! the OpenAPI bounds and CEL rules (`x-kubernetes-validations`) make the apiserver reject bad input with
//! a message a user can act on. The operator re-checks the same rules in its `validate` step, so an object
//! stored before a rule existed still ends up `Ready=False` with a reason instead of half-applied.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::{Affinity, ResourceRequirements, Toleration, TopologySpreadConstraint},
    apimachinery::pkg::{
        apis::meta::v1::{Condition, Time},
        util::intstr::IntOrString,
    },
};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::contract::{HaTimings, MemberTags, ReplicationMode};

/// PostgreSQL parameters that pgpilot sets itself; the CRD rejects them in `spec.postgresql.parameters`.
pub const OWNED_PARAMETERS: [&str; 19] = [
    "port",
    "listen_addresses",
    "unix_socket_directories",
    "data_directory",
    "config_file",
    "hba_file",
    "ident_file",
    "hot_standby",
    "primary_conninfo",
    "primary_slot_name",
    "promote_trigger_file",
    "recovery_target_timeline",
    "restore_command",
    "synchronous_standby_names",
    "cluster_name",
    "wal_log_hints",
    // Follow the Lease timings, so a dead standby is noticed in seconds (docs/design.md L3).
    "wal_sender_timeout",
    "wal_receiver_timeout",
    "wal_receiver_status_interval",
];

/// `'a', 'b', ...`: a CEL list's elements.
fn cel_list(items: &[&str]) -> String {
    items
        .iter()
        .map(|p| format!("'{p}'"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The CEL rule rejecting [`OWNED_PARAMETERS`], built from the one list so the two cannot disagree.
/// PostgreSQL's parameter names are case-insensitive, so is the rule.
fn owned_parameters_rule() -> kube::core::Rule {
    let list = cel_list(&OWNED_PARAMETERS);
    kube::core::Rule::new(format!("self.all(k, !(k.lowerAscii() in [{list}]))")).message(
        kube::core::Message::Message(format!(
            "postgresql.parameters may not set parameters pgpilot manages itself: {}",
            OWNED_PARAMETERS.join(", ")
        )),
    )
}

/// A PostgreSQL parameter name as `postgresql.conf` reads it (`guc-file.l`): an identifier, or two joined
/// by one `.` for an extension's parameter (`pg_stat_statements.max`). ASCII only.
pub const PARAMETER_NAME_PATTERN: &str = "^[A-Za-z_][A-Za-z0-9_]*([.][A-Za-z_][A-Za-z0-9_]*)?$";

/// The values of `synchronous_commit` that wait for the synchronous standbys (`on` and its boolean
/// spellings, `remote_write`, `remote_apply`); `off` and `local` acknowledge commits no standby has, so
/// the sync modes reject them.
pub const WAITING_SYNCHRONOUS_COMMIT: [&str; 6] =
    ["on", "true", "yes", "1", "remote_write", "remote_apply"];

fn synchronous_commit_rule() -> kube::core::Rule {
    kube::core::Rule::new(format!(
        "self.replication.mode == 'async' || self.postgresql.parameters.all(k, \
         k.lowerAscii() != 'synchronous_commit' || self.postgresql.parameters[k].lowerAscii() in [{}])",
        cel_list(&WAITING_SYNCHRONOUS_COMMIT)
    ))
    .message(
        "postgresql.parameters.synchronous_commit must be on, remote_write or remote_apply in the sync and \
         strictSync modes (off and local acknowledge commits that no standby has)",
    )
    .field_path(".postgresql.parameters")
}

/// The PostgreSQL major version an image's tag declares: the leading number of the tag (`15` of
/// `postgres:15`, `17` of `registry:5000/postgresql:17.2-bookworm@sha256:…`); `None` for a tag that does
/// not start with a number (`latest`, `alpine`) or no tag. [`IMAGE_TAG_CEL`] is the same reading in CEL.
pub fn image_major(image: &str) -> Option<u32> {
    let name = image.split('@').next().unwrap_or_default();
    let last = name.rsplit('/').next().unwrap_or_default();
    let (_, tag) = last.split_once(':')?;
    let digits: String = tag.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// CEL: `self`'s tag from its colon when the tag starts with a digit (`':17.2-bookworm'`), else `''`.
/// The digest goes first; a colon followed by a `/` is a registry's port, not a tag.
const IMAGE_TAG_CEL: &str = "{0}.split('@')[0].find(':[0-9]+[^/:]*$')";

fn image_tag_cel(of: &str) -> String {
    IMAGE_TAG_CEL.replace("{0}", of)
}

/// CEL: the major version `of`'s tag declares (only where [`image_tag_cel`] is not empty).
fn image_major_cel(of: &str) -> String {
    format!("int({}.find('[0-9]+'))", image_tag_cel(of))
}

/// `spec.image` may not name a PostgreSQL older than [`crate::contract::MIN_MAJOR`] by its tag.
fn image_minimum_rule() -> kube::core::Rule {
    let min = crate::contract::MIN_MAJOR;
    kube::core::Rule::new(format!(
        "{} == '' || {} >= {min}",
        image_tag_cel("self"),
        image_major_cel("self")
    ))
    .message(kube::core::Message::Message(format!(
        "image: pgpilot needs PostgreSQL {min} or newer, and this image's tag names an older major version"
    )))
}

/// A change of `spec.image` may not change the major version the tags declare: a replaced member could
/// not start on its data directory (major upgrades are not supported yet).
fn image_major_change_rule() -> kube::core::Rule {
    kube::core::Rule::new(format!(
        "{} == '' || {} == '' || {} == {}",
        image_tag_cel("oldSelf"),
        image_tag_cel("self"),
        image_major_cel("oldSelf"),
        image_major_cel("self")
    ))
    .message(
        "image: the new image's tag names another PostgreSQL major version than the current one's; a major \
         version upgrade is not an image change (the members' data directories could not be read), keep \
         the major version and change only the minor one",
    )
}

/// A highly-available PostgreSQL cluster: one primary and streaming replicas, elected through a Lease by
/// the pgpilot sidecar in every pod.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "pgpilot.io",
    version = "v1alpha1",
    kind = "PostgresCluster",
    plural = "postgresclusters",
    shortname = "pgc",
    category = "all",
    namespaced,
    status = "PostgresClusterStatus",
    derive = "PartialEq",
    doc = "A highly-available PostgreSQL cluster managed by pgpilot.",
    scale(
        spec_replicas_path = ".spec.instances",
        status_replicas_path = ".status.instances",
        label_selector_path = ".status.selector"
    ),
    printcolumn(name = "Instances", type_ = "integer", json_path = ".spec.instances", description = "Desired members"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyInstances", description = "Ready members"),
    printcolumn(name = "Primary", type_ = "string", json_path = ".status.primary", description = "Current primary"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase", description = "Overall state"),
    printcolumn(name = "Timeline", type_ = "integer", json_path = ".status.timeline", description = "PostgreSQL timeline"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = kube::core::Rule::new(
        "!has(self.spec.switchover) || (self.spec.switchover.targetInstance.startsWith(self.metadata.name + '-') \
         && self.spec.switchover.targetInstance.substring(size(self.metadata.name) + 1).matches('^(0|[1-9][0-9]?)$') \
         && int(self.spec.switchover.targetInstance.substring(size(self.metadata.name) + 1)) < self.spec.instances)"
    )
    .message("switchover.targetInstance must name a member: <cluster name>-<ordinal> with ordinal < instances")
    .field_path(".spec.switchover.targetInstance"),
    validation = kube::core::Rule::new(
        "!has(self.spec.tags) || self.spec.tags.all(m, m.startsWith(self.metadata.name + '-') \
         && m.substring(size(self.metadata.name) + 1).matches('^(0|[1-9][0-9]?)$'))"
    )
    .message("tags keys must be member names: <cluster name>-<ordinal>")
    .field_path(".spec.tags")
)]
#[x_kube(
    validation = kube::core::Rule::new(
        "self.replication.mode == 'async' || self.replication.syncReplicas < self.instances"
    )
    .message("replication.syncReplicas must be less than instances (the primary cannot be its own synchronous standby)")
    .field_path(".replication.syncReplicas"),
    validation = synchronous_commit_rule()
)]
#[serde(rename_all = "camelCase")]
pub struct PostgresClusterSpec {
    /// Number of PostgreSQL members (pods), 1 to 9. `kubectl scale pgc/<name> --replicas=N` changes it.
    #[schemars(range(min = 1, max = 9))]
    #[serde(default = "default_instances")]
    pub instances: i32,
    /// A stock PostgreSQL image (Docker's official `postgres` or compatible); the sidecar is copied into it.
    /// The tag's leading number is read as the PostgreSQL major version: older than 15 is refused, and so
    /// is a change to another major version (major upgrades are not supported yet).
    #[serde(default = "default_image")]
    #[schemars(length(min = 1, max = 512))]
    #[x_kube(validation = image_minimum_rule(), validation = image_major_change_rule())]
    pub image: String,
    /// The volume each member keeps its data directory on.
    #[serde(default)]
    pub storage: StorageSpec,
    /// CPU and memory for the PostgreSQL container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// PostgreSQL configuration.
    #[serde(default)]
    pub postgresql: PostgresqlSpec,
    /// Streaming replication and failover limits.
    #[serde(default)]
    pub replication: ReplicationSpec,
    /// Lease timings and failsafe mode of the election between members.
    #[serde(default)]
    pub ha: HaSpec,
    /// Ask for a switchover to a named member (once per change of the spec).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switchover: Option<SwitchoverSpec>,
    /// Pause automatic failover: members keep their roles and the primary keeps its Lease.
    #[serde(default)]
    pub paused: bool,
    /// Hibernate: pause the members, then stop every one and remove the pods, keeping the volumes.
    /// Turned off again, the members start on the same data and the member that was primary when they
    /// stopped takes its role back.
    #[serde(default)]
    pub hibernation: bool,
    /// The database and owner created when the cluster is first initialised.
    #[serde(default)]
    pub bootstrap: BootstrapSpec,
    /// Scheduling and metadata of the member pods.
    #[serde(default)]
    pub pod: PodSpecOptions,
    /// Per-member tags, keyed by member name (`<cluster>-<ordinal>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxProperties" = 9))]
    pub tags: Option<BTreeMap<String, MemberTagsSpec>>,
    /// Which client Services to create and their type.
    #[serde(default)]
    pub services: ServicesSpec,
    /// A changed pod template (image, resources, environment, a newer operator's sidecar) is rolled by
    /// the operator, one replica at a time and the primary last. `unsupervised`: the operator updates the
    /// primary too; `supervised`: it stops before the primary and waits for a switchover in the spec.
    #[serde(default)]
    pub primary_update_strategy: PrimaryUpdateStrategy,
    /// How the primary is updated once every replica runs the new template. `switchover`: it hands over
    /// to an updated replica (a recorded synchronous standby in the sync modes) and is then updated as a
    /// replica. `restart`: its pod is deleted without a switchover first; the members elect a primary as
    /// after any clean shutdown, so writes pause until one takes over.
    #[serde(default)]
    pub primary_update_method: PrimaryUpdateMethod,
}

/// `spec.primaryUpdateStrategy`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum PrimaryUpdateStrategy {
    #[default]
    Unsupervised,
    Supervised,
}

/// `spec.primaryUpdateMethod`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum PrimaryUpdateMethod {
    #[default]
    Switchover,
    Restart,
}

fn default_instances() -> i32 {
    1
}

/// The default image: a current PostgreSQL major.
pub const DEFAULT_IMAGE: &str = "postgres:17";

fn default_image() -> String {
    DEFAULT_IMAGE.into()
}

/// The volume claim template of each member.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new(
    "has(self.storageClassName) == has(oldSelf.storageClassName) \
     && (!has(self.storageClassName) || self.storageClassName == oldSelf.storageClassName)"
)
.message("storage.storageClassName cannot be changed after creation")
.field_path(".storageClassName"))]
pub struct StorageSpec {
    /// Size of each member's volume, a positive quantity such as `10Gi`. Fixed after creation.
    #[serde(default = "default_storage_size")]
    #[x_kube(
        validation = kube::core::Rule::new("isQuantity(self) && quantity(self).isGreaterThan(quantity('0'))")
            .message("storage.size must be a positive quantity such as 1Gi"),
        validation = kube::core::Rule::new("self == oldSelf")
            .message("storage.size cannot be changed after creation (volume expansion is not supported yet)")
    )]
    #[schemars(length(max = 64))]
    pub size: String,
    /// StorageClass of the volumes; the cluster default when unset. Fixed after creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub storage_class_name: Option<String>,
    /// Delete the volume of a member that a scale-down removes. By default it is kept, and a later
    /// scale-up finds the member's data again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub delete_on_scale_down: bool,
}

fn default_storage_size() -> String {
    "1Gi".into()
}

impl Default for StorageSpec {
    fn default() -> Self {
        Self {
            size: default_storage_size(),
            storage_class_name: None,
            delete_on_scale_down: false,
        }
    }
}

/// PostgreSQL server configuration.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PostgresqlSpec {
    /// `postgresql.conf` parameters (values as strings, without control characters). Keys are PostgreSQL
    /// parameter names (`work_mem`, `pg_stat_statements.max`); parameters pgpilot manages itself are
    /// rejected, and so is `synchronous_commit` = `off` or `local` in the sync modes.
    #[serde(default)]
    #[x_kube(
        validation = owned_parameters_rule(),
        validation = kube::core::Rule::new(format!("self.all(k, k.matches('{PARAMETER_NAME_PATTERN}'))"))
            .message("postgresql.parameters keys must be PostgreSQL parameter names: letters, digits and _, \
                      optionally two such names joined by one . (pg_stat_statements.max)"),
        validation = kube::core::Rule::new("self.all(k, !self[k].matches('[[:cntrl:]]'))")
            .message("postgresql.parameters values may not contain control characters (newline, carriage return, NUL ...)")
    )]
    #[schemars(extend(
        "maxProperties" = 256,
        "additionalProperties" = {"type": "string", "maxLength": 4096}
    ))]
    pub parameters: BTreeMap<String, String>,
    /// Extra `pg_hba.conf` lines, placed before pgpilot's own rules: one line each, no `trust` on `host*`
    /// lines, no `include` directives.
    #[serde(default)]
    #[schemars(length(max = 128), inner(length(max = 1024)))]
    #[x_kube(
        validation = kube::core::Rule::new("self.all(l, !l.matches('[\\\\x00-\\\\x08\\\\x0a-\\\\x1f\\\\x7f]'))")
            .message("postgresql.pgHba entries must be single lines without control characters (tabs are allowed)"),
        validation = kube::core::Rule::new("self.all(l, !l.trim().endsWith('\\\\'))")
            .message("postgresql.pgHba entries may not end with a backslash (it would continue the entry on pgpilot's own next line)"),
        validation = kube::core::Rule::new(
            "self.all(l, !(l.split('#')[0].lowerAscii().matches('^[[:space:]]*host') \
             && l.split('#')[0].lowerAscii().matches('(^|[[:space:]])trust([[:space:]]|$)')))"
        )
        .message("postgresql.pgHba host lines may not use the trust method (it would let anyone who reaches the pod in without a password)"),
        validation = kube::core::Rule::new("self.all(l, !l.lowerAscii().matches('^[[:space:]]*include(_if_exists|_dir)?([[:space:]]|$)'))")
            .message("postgresql.pgHba may not include other files (include, include_if_exists, include_dir)")
    )]
    pub pg_hba: Vec<String>,
    /// What happens to a member whose PostgreSQL reports `pending_restart` (a changed parameter that
    /// needs a restart, such as `max_connections`): `roll` (default) restarts the members as a rolling
    /// update does, the primary last; `manual` leaves it to you (`POST /restart` on each member).
    #[serde(default)]
    pub on_pending_restart: OnPendingRestart,
}

/// `spec.postgresql.onPendingRestart`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum OnPendingRestart {
    #[default]
    Roll,
    Manual,
}

/// Replication between the primary and the replicas.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplicationSpec {
    /// `async` (default), `sync` (synchronous, falls back to async when no standby is available) or
    /// `strictSync` (writes wait for a synchronous standby, always).
    #[serde(default)]
    pub mode: ReplicationModeSpec,
    /// How many synchronous standbys a commit waits for in the sync modes; must be less than instances.
    #[serde(default = "default_sync_replicas")]
    #[schemars(range(min = 1, max = 8))]
    pub sync_replicas: i32,
    /// A replica further behind than this (bytes, or a quantity such as `1Mi`) may not take over.
    #[serde(default = "default_max_lag")]
    #[x_kube(validation = kube::core::Rule::new(
        "type(self) == int ? self >= 0 : (isQuantity(self) && !quantity(self).isLessThan(quantity('0')) && quantity(self).isInteger())"
    )
    .message("replication.maximumLagOnFailover must be a non-negative byte count such as 1048576 or 1Mi"))]
    pub maximum_lag_on_failover: IntOrString,
}

fn default_sync_replicas() -> i32 {
    1
}

fn default_max_lag() -> IntOrString {
    IntOrString::String("1Mi".into())
}

impl Default for ReplicationSpec {
    fn default() -> Self {
        Self {
            mode: ReplicationModeSpec::default(),
            sync_replicas: default_sync_replicas(),
            maximum_lag_on_failover: default_max_lag(),
        }
    }
}

/// The replication mode, as in the CRD (`async` | `sync` | `strictSync`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ReplicationModeSpec {
    #[default]
    Async,
    Sync,
    StrictSync,
}

impl From<ReplicationModeSpec> for ReplicationMode {
    fn from(m: ReplicationModeSpec) -> Self {
        match m {
            ReplicationModeSpec::Async => Self::Async,
            ReplicationModeSpec::Sync => Self::Sync,
            ReplicationModeSpec::StrictSync => Self::StrictSync,
        }
    }
}

/// Lease timings of the election (docs/design.md L6: leaseDuration > renewDeadline > 1.2 x retryPeriod).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = kube::core::Rule::new("self.leaseDurationSeconds > self.renewDeadlineSeconds")
        .message("ha.leaseDurationSeconds must be greater than ha.renewDeadlineSeconds"),
    validation = kube::core::Rule::new("self.renewDeadlineSeconds * 10 > self.retryPeriodSeconds * 12")
        .message("ha.renewDeadlineSeconds must be greater than 1.2 x ha.retryPeriodSeconds")
)]
pub struct HaSpec {
    /// How long a Lease is valid without renewal; a failed primary is replaced after about this long.
    #[serde(default = "default_lease_duration")]
    #[schemars(range(min = 2, max = 600))]
    pub lease_duration_seconds: i32,
    /// The primary stops accepting writes when it could not renew the Lease for this long.
    #[serde(default = "default_renew_deadline")]
    #[schemars(range(min = 2, max = 600))]
    pub renew_deadline_seconds: i32,
    /// How often members renew or try the Lease.
    #[serde(default = "default_retry_period")]
    #[schemars(range(min = 1, max = 300))]
    pub retry_period_seconds: i32,
    /// Keep the primary writable while the apiserver is unreachable, as long as every member confirms
    /// it over the REST API (like Patroni's failsafe mode).
    #[serde(default)]
    pub failsafe: bool,
}

fn default_lease_duration() -> i32 {
    i32::try_from(HaTimings::default().lease_duration_seconds).unwrap_or(15)
}
fn default_renew_deadline() -> i32 {
    i32::try_from(HaTimings::default().renew_deadline_seconds).unwrap_or(10)
}
fn default_retry_period() -> i32 {
    i32::try_from(HaTimings::default().retry_period_seconds).unwrap_or(2)
}

impl Default for HaSpec {
    fn default() -> Self {
        Self {
            lease_duration_seconds: default_lease_duration(),
            renew_deadline_seconds: default_renew_deadline(),
            retry_period_seconds: default_retry_period(),
            failsafe: false,
        }
    }
}

/// A requested switchover.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SwitchoverSpec {
    /// The member that should become primary, e.g. `pg-1`.
    #[schemars(length(min = 3, max = 63))]
    pub target_instance: String,
    /// Do not start before this time (RFC 3339); at once when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_at: Option<Time>,
}

/// What is created at initialisation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BootstrapSpec {
    /// The application database.
    #[serde(default = "default_app")]
    #[schemars(regex(pattern = r"^[a-z_][a-z0-9_]{0,62}$"))]
    pub database: String,
    /// The role owning the application database; its password is in the `<cluster>-app` Secret.
    #[serde(default = "default_app")]
    #[schemars(regex(pattern = r"^[a-z_][a-z0-9_]{0,62}$"))]
    pub owner: String,
}

fn default_app() -> String {
    "app".into()
}

impl Default for BootstrapSpec {
    fn default() -> Self {
        Self {
            database: default_app(),
            owner: default_app(),
        }
    }
}

/// Scheduling and metadata of the member pods.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodSpecOptions {
    /// Affinity rules; when unset, members prefer different nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// Tolerations of the member pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Topology spread constraints of the member pods (their label selector is filled in when unset).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topology_spread_constraints: Vec<TopologySpreadConstraint>,
    /// PriorityClass of the member pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
    /// Node selector of the member pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Extra labels on the member pods (pgpilot's own `pgpilot.io/*` labels win).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Extra annotations on the member pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// Tags of one member, as in Patroni.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemberTagsSpec {
    /// Never promote this member.
    #[serde(default)]
    pub no_failover: bool,
    /// Keep this member out of the `-ro` and `-r` Services.
    #[serde(default)]
    pub no_load_balance: bool,
    /// Higher wins among equally eligible members; 0 means never promote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub failover_priority: Option<i32>,
}

impl From<&MemberTagsSpec> for MemberTags {
    fn from(t: &MemberTagsSpec) -> Self {
        Self {
            no_failover: t.no_failover,
            no_load_balance: t.no_load_balance,
            failover_priority: t.failover_priority.and_then(|p| u32::try_from(p).ok()),
        }
    }
}

/// The client Services: `<cluster>-rw` (primary), `<cluster>-ro` (replicas), `<cluster>-r` (any member).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServicesSpec {
    /// Create `<cluster>-rw`, routing to the primary.
    #[serde(default = "default_true")]
    pub rw: bool,
    /// Create `<cluster>-ro`, routing to the replicas.
    #[serde(default = "default_true")]
    pub ro: bool,
    /// Create `<cluster>-r`, routing to any member.
    #[serde(default = "default_true")]
    pub r: bool,
    /// Type of the client Services.
    #[serde(default, rename = "type")]
    pub type_: ServiceTypeSpec,
}

fn default_true() -> bool {
    true
}

impl Default for ServicesSpec {
    fn default() -> Self {
        Self {
            rw: true,
            ro: true,
            r: true,
            type_: ServiceTypeSpec::default(),
        }
    }
}

/// Kubernetes Service type of the client Services.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ServiceTypeSpec {
    #[default]
    ClusterIP,
    NodePort,
    LoadBalancer,
}

impl ServiceTypeSpec {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClusterIP => "ClusterIP",
            Self::NodePort => "NodePort",
            Self::LoadBalancer => "LoadBalancer",
        }
    }
}

/// Observed state, written by the operator from the StatefulSet, the pods, the Lease and the sidecars'
/// reports.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PostgresClusterStatus {
    /// `Pending`, `Creating`, `Running`, `Degraded`, `NoPrimary`, `Hibernated` or `Invalid`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// The member holding the Lease and labelled primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary: Option<String>,
    /// The last member confirmed as primary; kept while there is none, so a failover names its origin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_primary: Option<String>,
    /// The primary's PostgreSQL timeline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<i64>,
    /// The election epoch: the Lease's `leaseTransitions`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<i64>,
    /// The database system identifier of the cluster's data (`pg_control_system()`), as the member that
    /// ran `initdb` recorded it on the Lease. Kept when the Lease is lost, and put back on a Lease the
    /// operator recreates, so that no member takes a new Lease for a cluster without data and bootstraps
    /// over the existing one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_identifier: Option<String>,
    /// Members that exist (pods), for the scale subresource.
    #[serde(default)]
    pub instances: i32,
    /// Members whose pod is Ready.
    #[serde(default)]
    pub ready_instances: i32,
    /// Members whose pod runs the StatefulSet's current pod template.
    #[serde(default)]
    pub updated_instances: i32,
    /// Label selector of the member pods, for the scale subresource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// One entry per member pod.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<MemberStatus>,
    /// The last change of primary the operator observed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failover: Option<FailoverRecord>,
    /// A switchover the operator asked for itself (a scale-down that removes the primary's pod, or a
    /// rolling update that reached it), until it completes or times out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub planned_switchover: Option<PlannedSwitchover>,
    /// Set from the moment the members stop for `spec.hibernation` until they are back with the same
    /// primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hibernation: Option<HibernationStatus>,
    /// `Ready`, `Progressing`, `Degraded`, `FailoverBlocked`, `SwitchoverInProgress`, `Paused`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` this status was computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// One member as observed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemberStatus {
    /// Member (pod) name.
    pub name: String,
    /// `primary`, `replica`, `uninitialized` or `unknown` (sidecar not reachable).
    pub role: String,
    /// PostgreSQL state as the sidecar reports it (`running`, `starting`, ...) or `unreachable`.
    pub state: String,
    /// PostgreSQL timeline of the member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<i64>,
    /// WAL position: written (primary) or replayed (replica), as `X/Y`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lsn: Option<String>,
    /// Bytes this replica's replay is behind the primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_bytes: Option<i64>,
    /// The pod's Ready condition.
    pub ready: bool,
    /// A changed parameter needs a restart of this member.
    #[serde(default)]
    pub pending_restart: bool,
}

/// A change of primary.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FailoverRecord {
    /// When the operator observed the new primary.
    pub time: Time,
    /// The previous primary.
    pub from: String,
    /// The new primary.
    pub to: String,
    /// `Switchover` (requested through the spec) or `Failover`.
    pub reason: String,
}

/// A switchover the operator requested on its own, to keep a change from removing the primary.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlannedSwitchover {
    /// The primary asked to hand over.
    pub from: String,
    /// The member asked to take over.
    pub to: String,
    /// Why: `ScaleDown` or `RollingUpdate`.
    pub reason: String,
    /// When the operator asked.
    pub requested_at: Time,
}

/// A hibernation: the members were stopped, and are stopped or waking up.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HibernationStatus {
    /// The primary when the members stopped; on wake it takes its role back. Unset: there was none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary: Option<String>,
    /// When the operator stopped the members.
    pub stopped_at: Time,
    /// When `spec.hibernation` turned false again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waking_since: Option<Time>,
}

/// Condition types of `status.conditions`.
pub mod condition {
    pub const READY: &str = "Ready";
    pub const PROGRESSING: &str = "Progressing";
    pub const DEGRADED: &str = "Degraded";
    pub const FAILOVER_BLOCKED: &str = "FailoverBlocked";
    pub const SWITCHOVER_IN_PROGRESS: &str = "SwitchoverInProgress";
    pub const PAUSED: &str = "Paused";
}

/// Values of `status.conditions[].reason`, grouped by the condition that uses them. They are kept here,
/// beside the condition types and phases, because they are the same API: users match on them
/// (`kubectl wait`, alerts) and the e2e tests assert them, neither of which should depend on the
/// operator's crate.
pub mod reason {
    // Ready
    pub const ALL_MEMBERS_READY: &str = "AllMembersReady";
    pub const MEMBERS_NOT_READY: &str = "MembersNotReady";
    pub const NO_PRIMARY: &str = "NoPrimary";
    pub const CREATING: &str = "Creating";
    pub const INVALID_SPEC: &str = "InvalidSpec";
    // Progressing
    pub const SCALING: &str = "Scaling";
    /// The operator rolls a changed pod template onto the members, the primary last.
    pub const ROLLING_UPDATE: &str = "RollingUpdate";
    /// The rolling update waits for a member that does not come back: it never goes on to the primary.
    pub const ROLLING_UPDATE_STALLED: &str = "RollingUpdateStalled";
    /// `primaryUpdateStrategy: supervised`: every replica is updated; the primary waits for a switchover
    /// in the spec.
    pub const UPDATE_PENDING: &str = "UpdatePending";
    pub const STABLE: &str = "Stable";
    /// `spec.hibernation`: the members are paused, then stopped.
    pub const HIBERNATING: &str = "Hibernating";
    /// `spec.hibernation` turned off: the members start, the former primary takes its role back.
    pub const WAKING_UP: &str = "WakingUp";
    /// `Ready`: every member is stopped for `spec.hibernation`.
    pub const HIBERNATED: &str = "Hibernated";
    // Degraded
    pub const HEALTHY: &str = "Healthy";
    /// A member refuses to act on its data: it, or the primary, belongs to another database system.
    pub const MEMBER_REFUSING: &str = "MemberRefusing";
    // FailoverBlocked
    pub const PAUSED: &str = "Paused";
    pub const SINGLE_INSTANCE: &str = "SingleInstance";
    pub const NO_FAILOVER_CANDIDATE: &str = "NoFailoverCandidate";
    pub const FAILOVER_POSSIBLE: &str = "FailoverPossible";
    /// Every replica that answered says why it may not take over now (its sidecar's `failover_blocked`).
    pub const NO_ELIGIBLE_REPLICA: &str = "NoEligibleReplica";
    // SwitchoverInProgress
    pub const NO_SWITCHOVER_REQUESTED: &str = "NoSwitchoverRequested";
    pub const SCHEDULED: &str = "Scheduled";
    pub const WAITING_FOR_PRIMARY: &str = "WaitingForPrimary";
    pub const ALREADY_PRIMARY: &str = "AlreadyPrimary";
    pub const REQUESTED: &str = "Requested";
    pub const COMPLETED: &str = "Completed";
    pub const NOT_COMPLETED: &str = "NotCompleted";
    pub const REQUEST_FAILED: &str = "RequestFailed";
    // Paused (and PAUSED above)
    pub const NOT_PAUSED: &str = "NotPaused";
}

/// Values of `status.lastFailover.reason`.
pub mod failover_reason {
    pub const SWITCHOVER: &str = "Switchover";
    pub const FAILOVER: &str = "Failover";
}

/// Reasons of `status.plannedSwitchover`.
pub mod planned_reason {
    pub const SCALE_DOWN: &str = "ScaleDown";
    pub const ROLLING_UPDATE: &str = "RollingUpdate";
}

/// Reasons of the Events the operator publishes on a cluster (`kubectl describe pgc`). A failed reconcile
/// is announced with its error's category instead (`ApplyStatefulSetFailed`, `ReadLeaseFailed`, ...).
pub mod event {
    pub const CREATED: &str = "Created";
    pub const SCALED: &str = "Scaled";
    pub const PRIMARY_ELECTED: &str = "PrimaryElected";
    pub const FAILOVER_OBSERVED: &str = "FailoverObserved";
    pub const SWITCHOVER_REQUESTED: &str = "SwitchoverRequested";
    pub const SWITCHOVER_COMPLETED: &str = "SwitchoverCompleted";
    pub const SWITCHOVER_FAILED: &str = "SwitchoverFailed";
    pub const CLUSTER_READY: &str = "ClusterReady";
    pub const CLUSTER_NOT_READY: &str = "ClusterNotReady";
    pub const PAUSED: &str = "Paused";
    pub const RESUMED: &str = "Resumed";
    pub const INVALID_SPEC: &str = "InvalidSpec";
    pub const SECRETS_CREATED: &str = "SecretsCreated";
    pub const SECRETS_RECREATED: &str = "SecretsRecreated";
    pub const FAILOVER_BLOCKED: &str = "FailoverBlocked";
    pub const FAILOVER_POSSIBLE: &str = "FailoverPossible";
    pub const MEMBER_REFUSING: &str = "MemberRefusing";
    /// A member's pod is deleted so that it comes back on the current pod template.
    pub const MEMBER_UPDATING: &str = "MemberUpdating";
    pub const ROLLING_UPDATE_STALLED: &str = "RollingUpdateStalled";
    /// `supervised`: the replicas are updated and the primary waits for a switchover in the spec.
    pub const PRIMARY_UPDATE_PENDING: &str = "PrimaryUpdatePending";
    pub const ROLLING_UPDATE_DONE: &str = "RollingUpdateDone";
    /// The members are paused and stopped for `spec.hibernation`.
    pub const HIBERNATING: &str = "Hibernating";
    /// After a hibernation, the members run again with the former primary as primary.
    pub const WOKE_UP: &str = "WokeUp";
}

/// Values of `status.phase`.
pub mod phase {
    pub const PENDING: &str = "Pending";
    pub const CREATING: &str = "Creating";
    pub const RUNNING: &str = "Running";
    pub const DEGRADED: &str = "Degraded";
    pub const NO_PRIMARY: &str = "NoPrimary";
    pub const INVALID: &str = "Invalid";
    /// Every member is stopped for `spec.hibernation`; the volumes are kept.
    pub const HIBERNATED: &str = "Hibernated";
}

#[cfg(test)]
mod tests {
    use kube::CustomResourceExt;

    use super::*;

    #[test]
    fn an_image_tag_declares_its_major_version_by_its_leading_number() {
        for (image, major) in [
            ("postgres:15", Some(15)),
            ("postgres:17.2-bookworm", Some(17)),
            ("docker.io/library/postgres:15-rebuilt", Some(15)),
            ("localhost:5000/postgres:16", Some(16)),
            ("localhost:5000/postgres", None),
            ("postgres", None),
            ("postgres:latest", None),
            ("postgres:alpine3.20", None),
            ("postgres@sha256:1234abcd", None),
            ("postgres:14@sha256:9999", Some(14)),
        ] {
            assert_eq!(image_major(image), major, "{image}");
        }
    }

    #[test]
    fn the_image_rules_read_the_tag_as_image_major_does() {
        // The CEL rules and image_major agree only while both read the same part; this pins the CEL.
        let min = image_minimum_rule().rule;
        assert!(
            min.contains("self.split('@')[0].find(':[0-9]+[^/:]*$')"),
            "{min}"
        );
        let change = image_major_change_rule().rule;
        assert!(
            change.contains("oldSelf.split('@')[0]") && change.contains("self.split('@')[0]"),
            "{change}"
        );
    }

    #[test]
    fn crd_names_columns_and_subresources() {
        let crd = PostgresCluster::crd();
        assert_eq!(
            crd.metadata.name.as_deref(),
            Some("postgresclusters.pgpilot.io")
        );
        assert_eq!(crd.spec.names.short_names, Some(vec!["pgc".to_owned()]));
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, "v1alpha1");
        let columns: Vec<String> = version
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.clone())
            .collect();
        assert_eq!(
            columns,
            ["Instances", "Ready", "Primary", "Phase", "Timeline", "Age"]
        );
        let sub = version.subresources.clone().unwrap();
        assert!(sub.status.is_some());
        let scale = sub.scale.unwrap();
        assert_eq!(scale.spec_replicas_path, ".spec.instances");
        assert_eq!(scale.status_replicas_path, ".status.instances");
        assert_eq!(
            scale.label_selector_path.as_deref(),
            Some(".status.selector")
        );
    }

    #[test]
    fn every_spec_field_has_a_description() {
        let crd = serde_json::to_value(PostgresCluster::crd()).unwrap();
        let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        for (name, field) in spec["properties"].as_object().unwrap() {
            assert!(
                field["description"].as_str().is_some_and(|d| !d.is_empty()),
                "spec.{name} has no description"
            );
        }
    }

    #[test]
    fn owned_parameters_rule_lists_every_owned_parameter() {
        let rule = owned_parameters_rule();
        for p in OWNED_PARAMETERS {
            assert!(
                rule.rule.contains(&format!("'{p}'")),
                "{p} missing from {}",
                rule.rule
            );
        }
    }

    #[test]
    fn defaults_match_the_sidecar_contract() {
        let spec: PostgresClusterSpec = serde_json::from_str("{}").unwrap();
        assert_eq!(spec.instances, 1);
        assert_eq!(spec.ha.lease_duration_seconds, 15);
        assert_eq!(spec.ha.renew_deadline_seconds, 10);
        assert_eq!(spec.ha.retry_period_seconds, 2);
        assert_eq!(spec.image, DEFAULT_IMAGE);
        assert_eq!(spec.storage.size, "1Gi");
        assert!(spec.services.rw && spec.services.ro && spec.services.r);
    }
}
