//! Step 1 of the reconcile: validate the spec. Pure, no IO.
//!
//! Reads a `PostgresCluster` as stored and the operator's settings; returns a [`ValidatedCluster`] that every
//! builder takes, or an [`InvalidSpec`] naming the first rule broken. The CRD's schema and CEL rules reject
//! the same input at the apiserver; this repeats them because an object stored under an older CRD, or a
//! rule CEL cannot express, must still end as `Ready=False` with a reason and never as half-applied children.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::{
    api::resource::Quantity, apis::meta::v1::OwnerReference, util::intstr::IntOrString,
};
use kube::{Resource, ResourceExt};
use pgpilot_crds::{
    PostgresCluster, PostgresClusterSpec,
    cluster::{OWNED_PARAMETERS, ReplicationModeSpec, WAITING_SYNCHRONOUS_COMMIT, image_major},
    contract::{self, BootstrapConfig, HaTimings, ReplicationConfig, SidecarConfig},
};

/// A spec that passed validation, with everything the builders need resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidatedCluster {
    pub name: String,
    pub namespace: String,
    pub generation: Option<i64>,
    /// Controller owner reference to the `PostgresCluster`, put on every child.
    pub owner: OwnerReference,
    pub spec: PostgresClusterSpec,
    /// The image whose `/usr/local/bin/pgpilot-sidecar` the init container copies into the pod.
    pub sidecar_image: String,
    pub storage_size: Quantity,
    /// The document rendered into the `<c>-config` ConfigMap.
    pub sidecar_config: SidecarConfig,
}

impl ValidatedCluster {
    /// `sync` or `strictSync`: commits wait for a recorded synchronous standby.
    pub fn sync_mode(&self) -> bool {
        !matches!(self.spec.replication.mode, ReplicationModeSpec::Async)
    }
}

/// Why a spec was rejected; the message is what the user reads in the `Ready` condition and the Event.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InvalidSpec {
    #[error("the object has no {0} (not read from the apiserver?)")]
    MissingMetadata(&'static str),
    #[error("instances must be between 1 and 9, got {0}")]
    InstancesOutOfRange(i32),
    #[error(
        "ha timings must satisfy leaseDurationSeconds > renewDeadlineSeconds > 1.2 x retryPeriodSeconds, got {lease}/{renew}/{retry}"
    )]
    LeaseTimings { lease: i32, renew: i32, retry: i32 },
    #[error(
        "replication.syncReplicas ({sync}) must be less than instances ({instances}) in {mode} mode"
    )]
    SyncReplicas {
        sync: i32,
        instances: i32,
        mode: &'static str,
    },
    #[error(
        "switchover.targetInstance {0:?} is not a member of this cluster (<cluster name>-<ordinal < instances>)"
    )]
    SwitchoverTarget(String),
    #[error(
        "image {image:?} names PostgreSQL {major} by its tag; pgpilot needs PostgreSQL {min} or newer"
    )]
    ImageTooOld { image: String, major: u32, min: u32 },
    #[error("storage.size {0:?} is not a positive quantity such as 1Gi")]
    StorageSize(String),
    #[error(
        "replication.maximumLagOnFailover {0:?} is not a non-negative byte count such as 1048576 or 1Mi"
    )]
    MaximumLag(String),
    #[error("postgresql.parameters may not set {0:?}: pgpilot manages it")]
    OwnedParameter(String),
    #[error(
        "postgresql.parameters key {0:?} is not a PostgreSQL parameter name (letters, digits and _, optionally two such names joined by one . as in pg_stat_statements.max)"
    )]
    ParameterName(String),
    #[error(
        "postgresql.parameters {0:?} and {1:?} name the same parameter (PostgreSQL's names are case-insensitive)"
    )]
    DuplicateParameter(String, String),
    #[error(
        "postgresql.parameters.{0} contains a control character (newline, carriage return, NUL ...)"
    )]
    ParameterValue(String),
    #[error(
        "postgresql.parameters.synchronous_commit {value:?} acknowledges commits no standby has: in {mode} mode it must be on, remote_write or remote_apply"
    )]
    SynchronousCommit { value: String, mode: &'static str },
    #[error("postgresql.pgHba entry {line:?} {problem}")]
    PgHba { line: String, problem: HbaProblem },
    #[error("tags key {0:?} is not a member name (<cluster name>-<ordinal>)")]
    TagKey(String),
}

/// What is wrong with a `pgHba` entry.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum HbaProblem {
    ControlCharacter,
    Continuation,
    Trust,
    Include,
}

impl std::fmt::Display for HbaProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::ControlCharacter => {
                "contains a control character: each entry must be one line (tabs are allowed)"
            }
            Self::Continuation => {
                "ends with a backslash, which continues on the next line (pgpilot's own rule)"
            }
            Self::Trust => {
                "uses trust: host lines may not use the trust method (anyone who reaches the pod would get in without a password)"
            }
            Self::Include => "may not include other files (include, include_if_exists, include_dir)",
        })
    }
}

/// Validates `cluster` and resolves what the builders need.
pub fn validate(
    cluster: &PostgresCluster,
    sidecar_image: &str,
) -> Result<ValidatedCluster, InvalidSpec> {
    let name = cluster
        .metadata
        .name
        .clone()
        .ok_or(InvalidSpec::MissingMetadata("name"))?;
    let namespace = cluster
        .namespace()
        .ok_or(InvalidSpec::MissingMetadata("namespace"))?;
    let owner = cluster
        .controller_owner_ref(&())
        .ok_or(InvalidSpec::MissingMetadata("uid"))?;
    let spec = &cluster.spec;

    if !(1..=9).contains(&spec.instances) {
        return Err(InvalidSpec::InstancesOutOfRange(spec.instances));
    }
    if let Some(major) = image_major(&spec.image)
        && major < contract::MIN_MAJOR
    {
        return Err(InvalidSpec::ImageTooOld {
            image: spec.image.clone(),
            major,
            min: contract::MIN_MAJOR,
        });
    }
    let timings = ha_timings(spec)?;
    let sync_mode = match spec.replication.mode {
        ReplicationModeSpec::Async => None,
        ReplicationModeSpec::Sync => Some("sync"),
        ReplicationModeSpec::StrictSync => Some("strictSync"),
    };
    if let Some(mode) = sync_mode
        && (spec.replication.sync_replicas < 1 || spec.replication.sync_replicas >= spec.instances)
    {
        return Err(InvalidSpec::SyncReplicas {
            sync: spec.replication.sync_replicas,
            instances: spec.instances,
            mode,
        });
    }
    if let Some(s) = &spec.switchover
        && member_ordinal(&name, &s.target_instance).is_none_or(|o| o >= spec.instances)
    {
        return Err(InvalidSpec::SwitchoverTarget(s.target_instance.clone()));
    }
    let storage_bytes = parse_bytes(&spec.storage.size).filter(|b| *b > 0);
    if storage_bytes.is_none() {
        return Err(InvalidSpec::StorageSize(spec.storage.size.clone()));
    }
    let max_lag = match &spec.replication.maximum_lag_on_failover {
        IntOrString::Int(i) => u64::try_from(*i).ok(),
        IntOrString::String(s) => parse_bytes(s),
    }
    .ok_or_else(|| {
        InvalidSpec::MaximumLag(int_or_string(&spec.replication.maximum_lag_on_failover))
    })?;
    check_parameters(spec, sync_mode)?;
    check_pg_hba(&spec.postgresql.pg_hba)?;
    let tags = spec.tags.clone().unwrap_or_default();
    if let Some(k) = tags.keys().find(|k| member_ordinal(&name, k).is_none()) {
        return Err(InvalidSpec::TagKey(k.clone()));
    }

    let sidecar_config = SidecarConfig {
        ha: timings,
        failsafe: spec.ha.failsafe,
        replication: ReplicationConfig {
            mode: spec.replication.mode.into(),
            sync_replicas: u32::try_from(spec.replication.sync_replicas).unwrap_or(1),
            maximum_lag_on_failover_bytes: max_lag,
        },
        parameters: spec.postgresql.parameters.clone(),
        pg_hba: spec.postgresql.pg_hba.clone(),
        paused: spec.paused,
        bootstrap: BootstrapConfig {
            database: spec.bootstrap.database.clone(),
            owner: spec.bootstrap.owner.clone(),
        },
        tags: tags.iter().map(|(k, v)| (k.clone(), v.into())).collect(),
        instances: u32::try_from(spec.instances).ok(),
    };
    Ok(ValidatedCluster {
        name,
        namespace,
        generation: cluster.metadata.generation,
        owner,
        spec: spec.clone(),
        sidecar_image: sidecar_image.to_owned(),
        storage_size: Quantity(spec.storage.size.clone()),
        sidecar_config,
    })
}

/// What reaches `postgresql.conf` is one `name = 'value'` line per parameter, and never one of pgpilot's
/// own (issue 13, hole 12): the CRD's CEL rules say the same, but an object stored before them must fail
/// here, and case-insensitive duplicates are beyond what CEL can check cheaply.
fn check_parameters(
    spec: &PostgresClusterSpec,
    sync_mode: Option<&'static str>,
) -> Result<(), InvalidSpec> {
    let mut seen: BTreeMap<String, &String> = BTreeMap::new();
    for (name, value) in &spec.postgresql.parameters {
        if !is_parameter_name(name) {
            return Err(InvalidSpec::ParameterName(name.clone()));
        }
        let lower = name.to_ascii_lowercase();
        if OWNED_PARAMETERS.contains(&lower.as_str()) {
            return Err(InvalidSpec::OwnedParameter(name.clone()));
        }
        if value.chars().any(|c| c.is_ascii_control()) {
            return Err(InvalidSpec::ParameterValue(name.clone()));
        }
        if let Some(mode) = sync_mode
            && lower == "synchronous_commit"
            && !WAITING_SYNCHRONOUS_COMMIT.contains(&value.to_ascii_lowercase().as_str())
        {
            return Err(InvalidSpec::SynchronousCommit {
                value: value.clone(),
                mode,
            });
        }
        if let Some(first) = seen.insert(lower, name) {
            return Err(InvalidSpec::DuplicateParameter(first.clone(), name.clone()));
        }
    }
    Ok(())
}

/// [`pgpilot_crds::cluster::PARAMETER_NAME_PATTERN`]: an identifier, or two joined by one `.`.
fn is_parameter_name(name: &str) -> bool {
    let identifier = |part: &str| {
        let mut chars = part.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    match name.split_once('.') {
        Some((class, rest)) => identifier(class) && identifier(rest),
        None => identifier(name),
    }
}

/// Each `pgHba` entry is one line of `pg_hba.conf` that cannot open the server without a password.
fn check_pg_hba(lines: &[String]) -> Result<(), InvalidSpec> {
    for line in lines {
        let problem = if line.chars().any(|c| c.is_ascii_control() && c != '\t') {
            Some(HbaProblem::ControlCharacter)
        } else if line.trim().ends_with('\\') {
            Some(HbaProblem::Continuation)
        } else {
            let words = hba_words(line);
            let first = words.first().map(|(w, _)| w.to_ascii_lowercase());
            match first.as_deref() {
                Some("include" | "include_if_exists" | "include_dir") => Some(HbaProblem::Include),
                Some(t)
                    if t.starts_with("host")
                        && words
                            .iter()
                            .any(|(w, quoted)| !quoted && w.eq_ignore_ascii_case("trust")) =>
                {
                    Some(HbaProblem::Trust)
                }
                _ => None,
            }
        };
        if let Some(problem) = problem {
            return Err(InvalidSpec::PgHba {
                line: line.clone(),
                problem,
            });
        }
    }
    Ok(())
}

/// The words of a `pg_hba.conf` line as PostgreSQL splits them: whitespace separates, `"` quotes
/// (a quoted `"trust"` is a name, not the keyword), `#` outside quotes starts a comment. Each word comes
/// with whether any of it was quoted.
fn hba_words(line: &str) -> Vec<(String, bool)> {
    let mut words = Vec::new();
    let mut word = String::new();
    let (mut quoted, mut in_quotes) = (false, false);
    for c in line.chars() {
        match c {
            '"' => {
                in_quotes = !in_quotes;
                quoted = true;
            }
            '#' if !in_quotes => break,
            c if c.is_whitespace() && !in_quotes => {
                if !word.is_empty() || quoted {
                    words.push((std::mem::take(&mut word), quoted));
                }
                quoted = false;
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() || quoted {
        words.push((word, quoted));
    }
    words
}

fn ha_timings(spec: &PostgresClusterSpec) -> Result<HaTimings, InvalidSpec> {
    let (lease, renew, retry) = (
        spec.ha.lease_duration_seconds,
        spec.ha.renew_deadline_seconds,
        spec.ha.retry_period_seconds,
    );
    let broken = InvalidSpec::LeaseTimings {
        lease,
        renew,
        retry,
    };
    let to_u32 = |v: i32| u32::try_from(v).ok();
    let (Some(l), Some(d), Some(r)) = (to_u32(lease), to_u32(renew), to_u32(retry)) else {
        return Err(broken);
    };
    let t = HaTimings {
        lease_duration_seconds: l,
        renew_deadline_seconds: d,
        retry_period_seconds: r,
    };
    if t.is_valid() { Ok(t) } else { Err(broken) }
}

fn int_or_string(v: &IntOrString) -> String {
    match v {
        IntOrString::Int(i) => i.to_string(),
        IntOrString::String(s) => s.clone(),
    }
}

/// The ordinal of `member` if it is `<cluster>-<ordinal>` (no leading zeros): `contract::member_ordinal`.
pub fn member_ordinal(cluster: &str, member: &str) -> Option<i32> {
    contract::member_ordinal(cluster, member).and_then(|o| i32::try_from(o).ok())
}

/// Parses a Kubernetes quantity that denotes a whole number of bytes (`1048576`, `1Mi`, `1.5Gi`, `10G`).
/// `None` for anything malformed, negative, fractional or beyond `u64`.
pub fn parse_bytes(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(split);
    let multiplier: u128 = match suffix {
        "" => 1,
        "k" => 1000,
        "M" => 1000_u128.pow(2),
        "G" => 1000_u128.pow(3),
        "T" => 1000_u128.pow(4),
        "P" => 1000_u128.pow(5),
        "E" => 1000_u128.pow(6),
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "Pi" => 1 << 50,
        "Ei" => 1 << 60,
        _ => return None,
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if (whole.is_empty() && fraction.is_empty()) || fraction.len() > 9 || fraction.contains('.') {
        return None;
    }
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let scale = 10_u128.pow(u32::try_from(fraction.len()).ok()?);
    let fraction: u128 = if fraction.is_empty() {
        0
    } else {
        fraction.parse().ok()?
    };
    let scaled = whole
        .checked_mul(scale)?
        .checked_add(fraction)?
        .checked_mul(multiplier)?;
    if scaled % scale != 0 {
        return None;
    }
    u64::try_from(scaled / scale).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::cluster_from_yaml;

    const SIDECAR: &str = "localhost/pgpilot-sidecar:dev";

    fn check(extra_spec: &str) -> Result<ValidatedCluster, InvalidSpec> {
        validate(&cluster_from_yaml(extra_spec), SIDECAR)
    }

    #[test]
    fn defaults_are_valid_and_render_the_sidecar_config() {
        let v = check("instances: 3").unwrap();
        assert_eq!(v.name, "pg");
        assert_eq!(v.namespace, "db");
        assert_eq!(v.owner.kind, "PostgresCluster");
        assert_eq!(v.owner.controller, Some(true));
        assert_eq!(v.sidecar_config.ha, HaTimings::default());
        assert_eq!(v.sidecar_config.replication, ReplicationConfig::default());
        assert_eq!(v.sidecar_config.bootstrap, BootstrapConfig::default());
        assert_eq!(v.storage_size, Quantity("1Gi".into()));
    }

    #[test]
    fn full_spec_is_carried_into_the_sidecar_config() {
        let v = check(
            r#"
instances: 3
replication: {mode: strictSync, syncReplicas: 2, maximumLagOnFailover: 4096}
ha: {leaseDurationSeconds: 30, renewDeadlineSeconds: 20, retryPeriodSeconds: 5, failsafe: true}
postgresql:
  parameters: {max_connections: "200"}
  pgHba: ["host all all 10.0.0.0/8 scram-sha-256"]
paused: true
bootstrap: {database: shop, owner: shopper}
tags: {pg-2: {noFailover: true, failoverPriority: 3}}
"#,
        )
        .unwrap();
        let c = &v.sidecar_config;
        assert_eq!(
            c.replication.mode,
            pgpilot_crds::contract::ReplicationMode::StrictSync
        );
        assert_eq!(c.replication.sync_replicas, 2);
        assert_eq!(c.replication.maximum_lag_on_failover_bytes, 4096);
        assert_eq!(c.ha.lease_duration_seconds, 30);
        assert!(c.failsafe && c.paused);
        assert_eq!(c.parameters["max_connections"], "200");
        assert_eq!(c.pg_hba.len(), 1);
        assert_eq!(c.bootstrap.database, "shop");
        assert!(c.tags["pg-2"].no_failover);
        assert_eq!(c.tags["pg-2"].failover_priority, Some(3));
    }

    #[test]
    fn each_bad_input_is_rejected_with_its_reason() {
        let cases: [(&str, InvalidSpec); 12] = [
            ("instances: 0", InvalidSpec::InstancesOutOfRange(0)),
            ("instances: 10", InvalidSpec::InstancesOutOfRange(10)),
            (
                "ha: {leaseDurationSeconds: 10, renewDeadlineSeconds: 10, retryPeriodSeconds: 2}",
                InvalidSpec::LeaseTimings {
                    lease: 10,
                    renew: 10,
                    retry: 2,
                },
            ),
            (
                "ha: {leaseDurationSeconds: 15, renewDeadlineSeconds: 6, retryPeriodSeconds: 5}",
                InvalidSpec::LeaseTimings {
                    lease: 15,
                    renew: 6,
                    retry: 5,
                },
            ),
            (
                "{instances: 2, replication: {mode: sync, syncReplicas: 2}}",
                InvalidSpec::SyncReplicas {
                    sync: 2,
                    instances: 2,
                    mode: "sync",
                },
            ),
            (
                "{instances: 3, switchover: {targetInstance: pg-3}}",
                InvalidSpec::SwitchoverTarget("pg-3".into()),
            ),
            (
                "{instances: 3, switchover: {targetInstance: other-1}}",
                InvalidSpec::SwitchoverTarget("other-1".into()),
            ),
            (
                "storage: {size: -1Gi}",
                InvalidSpec::StorageSize("-1Gi".into()),
            ),
            (
                "replication: {maximumLagOnFailover: '1.5'}",
                InvalidSpec::MaximumLag("1.5".into()),
            ),
            (
                "postgresql: {parameters: {port: '5433'}}",
                InvalidSpec::OwnedParameter("port".into()),
            ),
            (
                "tags: {pg-x: {noFailover: true}}",
                InvalidSpec::TagKey("pg-x".into()),
            ),
            (
                "image: 'postgres:14.9-bookworm'",
                InvalidSpec::ImageTooOld {
                    image: "postgres:14.9-bookworm".into(),
                    major: 14,
                    min: 15,
                },
            ),
        ];
        for (spec, want) in cases {
            assert_eq!(check(spec).unwrap_err(), want, "spec {spec}");
        }
    }

    /// Issue 13, hole 12: nothing in `postgresql` may reach the configuration files as more than the one
    /// setting or `pg_hba.conf` line it claims to be, or weaken commits in the sync modes.
    #[test]
    fn configuration_cannot_be_injected() {
        let cases = [
            (
                r#"postgresql: {parameters: {"synchronous_standby_names ": "*"}}"#,
                "is not a PostgreSQL parameter name",
            ),
            (
                r#"postgresql: {parameters: {"x\nsynchronous_standby_names": "*"}}"#,
                "is not a PostgreSQL parameter name",
            ),
            (
                r#"postgresql: {parameters: {"work_mem = 1MB": "8MB"}}"#,
                "is not a PostgreSQL parameter name",
            ),
            (
                r#"postgresql: {parameters: {SYNCHRONOUS_STANDBY_NAMES: "*"}}"#,
                "pgpilot manages it",
            ),
            (
                r#"postgresql: {parameters: {work_mem: "8MB", WORK_MEM: "16MB"}}"#,
                "name the same parameter",
            ),
            (
                r#"postgresql: {parameters: {work_mem: "8MB\nsynchronous_standby_names = ''"}}"#,
                "control character",
            ),
            (
                r#"postgresql: {parameters: {work_mem: "8MB\r"}}"#,
                "control character",
            ),
            (
                r#"postgresql: {parameters: {work_mem: "8MB\0"}}"#,
                "control character",
            ),
            (
                r#"{instances: 3, replication: {mode: sync}, postgresql: {parameters: {synchronous_commit: "off"}}}"#,
                "synchronous_commit",
            ),
            (
                r#"{instances: 3, replication: {mode: strictSync}, postgresql: {parameters: {synchronous_commit: local}}}"#,
                "synchronous_commit",
            ),
            (
                r#"{instances: 3, replication: {mode: sync}, postgresql: {parameters: {Synchronous_Commit: "OFF"}}}"#,
                "synchronous_commit",
            ),
            (
                r#"{instances: 3, replication: {mode: sync}, postgresql: {parameters: {synchronous_commit: "false"}}}"#,
                "synchronous_commit",
            ),
            (
                r#"postgresql: {pgHba: ["host all all 0.0.0.0/0 trust"]}"#,
                "may not use the trust method",
            ),
            (
                r#"postgresql: {pgHba: ["hostssl all all 10.0.0.1 255.255.255.255 trust"]}"#,
                "may not use the trust method",
            ),
            (
                r#"postgresql: {pgHba: ["host all all 10.0.0.0/8 scram-sha-256\nhost all all 0.0.0.0/0 trust"]}"#,
                "control character",
            ),
            (
                r#"postgresql: {pgHba: ["host all all 10.0.0.0/8 scram-sha-256 \\"]}"#,
                "continues on the next line",
            ),
            (
                r#"postgresql: {pgHba: ["include_dir /tmp"]}"#,
                "may not include other files",
            ),
        ];
        let accepted: Vec<&str> = cases
            .iter()
            .filter(|(spec, _)| check(spec).is_ok())
            .map(|(spec, _)| *spec)
            .collect();
        assert!(accepted.is_empty(), "accepted: {accepted:#?}");
        for (spec, want) in cases {
            let message = check(spec).unwrap_err().to_string();
            assert!(message.contains(want), "{spec}: {message:?} lacks {want:?}");
        }
    }

    #[test]
    fn ordinary_configuration_is_accepted() {
        for spec in [
            r#"postgresql: {parameters: {work_mem: "8MB", "pg_stat_statements.max": "5000", TimeZone: UTC, search_path: '"$user", public'}}"#,
            r#"{instances: 3, replication: {mode: sync}, postgresql: {parameters: {synchronous_commit: remote_apply}}}"#,
            r#"postgresql: {parameters: {synchronous_commit: "off"}}"#,
            r##"postgresql: {pgHba: ["host all all 10.0.0.0/8 scram-sha-256", "local all all trust", "hostssl \"trust\" all all cert", "host all all 10.0.0.0/8 scram-sha-256 # trust nobody", "# a comment"]}"##,
        ] {
            if let Err(e) = check(spec) {
                panic!("{spec}: {e}");
            }
        }
    }

    #[test]
    fn async_mode_ignores_sync_replicas() {
        assert!(check("{instances: 1, replication: {mode: async, syncReplicas: 1}}").is_ok());
    }

    #[test]
    fn switchover_to_an_existing_member_is_valid() {
        assert!(check("{instances: 3, switchover: {targetInstance: pg-2}}").is_ok());
    }

    #[test]
    fn member_ordinals() {
        assert_eq!(member_ordinal("pg", "pg-0"), Some(0));
        assert_eq!(member_ordinal("pg", "pg-12"), Some(12));
        assert_eq!(member_ordinal("pg", "pg-01"), None);
        assert_eq!(member_ordinal("pg", "pg-"), None);
        assert_eq!(member_ordinal("pg", "pgx-1"), None);
        assert_eq!(member_ordinal("pg-a", "pg-a-1"), Some(1));
    }

    #[test]
    fn byte_quantities() {
        assert_eq!(parse_bytes("1048576"), Some(1 << 20));
        assert_eq!(parse_bytes("1Mi"), Some(1 << 20));
        assert_eq!(parse_bytes("1.5Gi"), Some(3 << 29));
        assert_eq!(parse_bytes("10G"), Some(10_000_000_000));
        assert_eq!(parse_bytes("0"), Some(0));
        assert_eq!(parse_bytes("-1"), None);
        assert_eq!(parse_bytes("1.5"), None, "fractional bytes");
        assert_eq!(parse_bytes("1Xi"), None);
        assert_eq!(parse_bytes(""), None);
        assert_eq!(parse_bytes("."), None);
        assert_eq!(parse_bytes("1.2.3"), None);
        assert_eq!(parse_bytes("100Ei"), None, "beyond u64");
    }
}
