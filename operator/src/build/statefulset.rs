//! The members: one StatefulSet whose pods run the sidecar as the entrypoint of a stock PostgreSQL image.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        apps::v1::{
            StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
            StatefulSetUpdateStrategy,
        },
        core::v1::{
            Affinity, Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar,
            EnvVarSource, HTTPGetAction, KeyToPath, ObjectFieldSelector, PersistentVolumeClaim,
            PersistentVolumeClaimSpec, PodAffinityTerm, PodAntiAffinity, PodSecurityContext,
            PodSpec, PodTemplateSpec, Probe, SecretVolumeSource, SecurityContext, Volume,
            VolumeMount, VolumeResourceRequirements, WeightedPodAffinityTerm,
        },
    },
    apimachinery::pkg::{
        apis::meta::v1::{LabelSelector, ObjectMeta},
        util::intstr::IntOrString,
    },
};
use pgpilot_crds::contract::{
    self, DATA_MOUNT, ENV_CLUSTER, ENV_PGDATA, ENV_POD_IP, ENV_POD_NAME, ENV_POD_NAMESPACE,
    PG_PORT, PGDATA, POSTGRES_CONTAINER, POSTGRES_UID, REST_PORT, SECRET_KINDS, SECRETS_DIR,
    SIDECAR_BIN_DIR, SIDECAR_BINARY,
};

use super::{labels, meta, selector_labels};
use crate::validate::ValidatedCluster;

/// Where the sidecar image keeps its binary.
pub const SIDECAR_IMAGE_BINARY: &str = "/usr/local/bin/pgpilot-sidecar";
const BIN_VOLUME: &str = "pgpilot-bin";
const DATA_VOLUME: &str = "data";
const SHM_VOLUME: &str = "shm";

fn env_value(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..EnvVar::default()
    }
}

fn env_field(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: Some(read_only),
        ..VolumeMount::default()
    }
}

fn http_probe(path: &str, period: i32, failure_threshold: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(i32::from(REST_PORT)),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(2),
        failure_threshold: Some(failure_threshold),
        ..Probe::default()
    }
}

fn restricted_container_security() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Capabilities::default()
        }),
        ..SecurityContext::default()
    }
}

fn secret_volume_name(kind: &str) -> String {
    format!("secret-{kind}")
}

/// Pod labels: the user's extra labels, then ours (ours win).
fn pod_labels(c: &ValidatedCluster) -> BTreeMap<String, String> {
    let mut l = c.spec.pod.labels.clone();
    l.extend(labels(c));
    l
}

/// Unless the user gave affinity rules, members prefer distinct nodes (preferred, so a small cluster with
/// fewer nodes than members still schedules).
fn affinity(c: &ValidatedCluster) -> Affinity {
    c.spec.pod.affinity.clone().unwrap_or_else(|| Affinity {
        pod_anti_affinity: Some(PodAntiAffinity {
            preferred_during_scheduling_ignored_during_execution: Some(vec![
                WeightedPodAffinityTerm {
                    weight: 100,
                    pod_affinity_term: PodAffinityTerm {
                        topology_key: "kubernetes.io/hostname".into(),
                        label_selector: Some(LabelSelector {
                            match_labels: Some(selector_labels(c)),
                            ..LabelSelector::default()
                        }),
                        ..PodAffinityTerm::default()
                    },
                },
            ]),
            ..PodAntiAffinity::default()
        }),
        ..Affinity::default()
    })
}

fn postgres_container(c: &ValidatedCluster) -> Container {
    let mut mounts = vec![
        mount(DATA_VOLUME, DATA_MOUNT, false),
        mount(BIN_VOLUME, SIDECAR_BIN_DIR, true),
        mount(SHM_VOLUME, "/dev/shm", false),
    ];
    mounts.extend(
        SECRET_KINDS
            .iter()
            .map(|k| mount(&secret_volume_name(k), &format!("{SECRETS_DIR}/{k}"), true)),
    );
    Container {
        name: POSTGRES_CONTAINER.into(),
        image: Some(c.spec.image.clone()),
        command: Some(vec![format!("{SIDECAR_BIN_DIR}/{SIDECAR_BINARY}")]),
        args: Some(vec!["run".into()]),
        env: Some(vec![
            env_value(ENV_CLUSTER, &c.name),
            env_field(ENV_POD_NAME, "metadata.name"),
            env_field(ENV_POD_NAMESPACE, "metadata.namespace"),
            env_field(ENV_POD_IP, "status.podIP"),
            env_value(ENV_PGDATA, PGDATA),
        ]),
        ports: Some(vec![
            ContainerPort {
                name: Some("postgresql".into()),
                container_port: i32::from(PG_PORT),
                protocol: Some("TCP".into()),
                ..ContainerPort::default()
            },
            ContainerPort {
                name: Some("api".into()),
                container_port: i32::from(REST_PORT),
                protocol: Some("TCP".into()),
                ..ContainerPort::default()
            },
        ]),
        // Readiness follows the sidecar's view (running and, for a replica, streaming) quickly; liveness
        // asks whether the HA loop makes progress (a long pg_basebackup or crash recovery counts: the
        // loop beats while the program runs) and tolerates a minute of failures on top, so only a hung
        // loop gets the container restarted.
        readiness_probe: Some(http_probe("/readiness", 2, 3)),
        liveness_probe: Some(Probe {
            initial_delay_seconds: Some(10),
            ..http_probe("/liveness", 10, 6)
        }),
        resources: c.spec.resources.clone(),
        volume_mounts: Some(mounts),
        security_context: Some(restricted_container_security()),
        ..Container::default()
    }
}

fn install_sidecar_container(c: &ValidatedCluster) -> Container {
    Container {
        name: "install-sidecar".into(),
        image: Some(c.sidecar_image.clone()),
        image_pull_policy: Some("IfNotPresent".into()),
        command: Some(vec![
            "cp".into(),
            SIDECAR_IMAGE_BINARY.into(),
            format!("{SIDECAR_BIN_DIR}/{SIDECAR_BINARY}"),
        ]),
        volume_mounts: Some(vec![mount(BIN_VOLUME, SIDECAR_BIN_DIR, false)]),
        security_context: Some(restricted_container_security()),
        ..Container::default()
    }
}

fn volumes(c: &ValidatedCluster) -> Vec<Volume> {
    let mut v = vec![
        Volume {
            name: BIN_VOLUME.into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        },
        // The container runtime's default /dev/shm (64 MiB) is too small for PostgreSQL's parallel queries.
        Volume {
            name: SHM_VOLUME.into(),
            empty_dir: Some(EmptyDirVolumeSource {
                medium: Some("Memory".into()),
                ..EmptyDirVolumeSource::default()
            }),
            ..Volume::default()
        },
    ];
    v.extend(SECRET_KINDS.iter().map(|kind| Volume {
        name: secret_volume_name(kind),
        secret: Some(SecretVolumeSource {
            secret_name: Some(contract::secret_name(&c.name, kind)),
            items: Some(vec![
                KeyToPath {
                    key: "username".into(),
                    path: "username".into(),
                    ..KeyToPath::default()
                },
                KeyToPath {
                    key: "password".into(),
                    path: "password".into(),
                    ..KeyToPath::default()
                },
            ]),
            // Owner root, group fsGroup (PostgreSQL's): readable by PostgreSQL only.
            default_mode: Some(0o440),
            optional: Some(false),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    }));
    v
}

/// `replicas`: the size the scale-down step allows now ([`crate::scale`]); `spec.instances` otherwise.
pub fn build_statefulset(c: &ValidatedCluster, replicas: i32) -> StatefulSet {
    let pod = &c.spec.pod;
    let mut spread = pod.topology_spread_constraints.clone();
    for t in &mut spread {
        if t.label_selector.is_none() {
            t.label_selector = Some(LabelSelector {
                match_labels: Some(selector_labels(c)),
                ..LabelSelector::default()
            });
        }
    }
    let template = PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(pod_labels(c)),
            annotations: (!pod.annotations.is_empty()).then(|| pod.annotations.clone()),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            service_account_name: Some(contract::service_account_name(&c.name)),
            enable_service_links: Some(false),
            // Time for the sidecar to demote, stop PostgreSQL cleanly and release the Lease (L4).
            termination_grace_period_seconds: Some(60),
            security_context: Some(PodSecurityContext {
                run_as_user: Some(POSTGRES_UID),
                run_as_group: Some(POSTGRES_UID),
                run_as_non_root: Some(true),
                fs_group: Some(POSTGRES_UID),
                fs_group_change_policy: Some("OnRootMismatch".into()),
                ..PodSecurityContext::default()
            }),
            init_containers: Some(vec![install_sidecar_container(c)]),
            containers: vec![postgres_container(c)],
            volumes: Some(volumes(c)),
            affinity: Some(affinity(c)),
            tolerations: (!pod.tolerations.is_empty()).then(|| pod.tolerations.clone()),
            topology_spread_constraints: (!spread.is_empty()).then_some(spread),
            priority_class_name: pod.priority_class_name.clone(),
            node_selector: (!pod.node_selector.is_empty()).then(|| pod.node_selector.clone()),
            ..PodSpec::default()
        }),
    };
    let claim = PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(DATA_VOLUME.into()),
            labels: Some(labels(c)),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: c.spec.storage.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_owned(),
                    c.storage_size.clone(),
                )])),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    };
    StatefulSet {
        metadata: meta(c, c.name.clone()),
        spec: StatefulSetSpec {
            replicas: Some(replicas),
            service_name: Some(contract::headless_service_name(&c.name)),
            selector: LabelSelector {
                match_labels: Some(selector_labels(c)),
                ..LabelSelector::default()
            },
            // Members start together: the Lease, not pod order, decides who initialises.
            pod_management_policy: Some("Parallel".into()),
            // The operator decides when each pod is replaced (replicas first, the primary last).
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("OnDelete".into()),
                ..Default::default()
            }),
            // Deleting the cluster deletes the data; scaling down keeps it for a later scale-up unless
            // `storage.deleteOnScaleDown` says otherwise.
            persistent_volume_claim_retention_policy: Some(
                StatefulSetPersistentVolumeClaimRetentionPolicy {
                    when_deleted: Some("Delete".into()),
                    when_scaled: Some(
                        if c.spec.storage.delete_on_scale_down {
                            "Delete"
                        } else {
                            "Retain"
                        }
                        .into(),
                    ),
                },
            ),
            template,
            volume_claim_templates: Some(vec![claim]),
            ..StatefulSetSpec::default()
        },
        ..StatefulSet::default()
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{Toleration, TopologySpreadConstraint};

    use super::*;
    use crate::{testutil::example, validate::validate};

    fn sts(file: &str) -> (ValidatedCluster, StatefulSetSpec, PodSpec) {
        let c = validate(&example(file), "localhost/pgpilot-sidecar:dev").unwrap();
        let spec = build_statefulset(&c, c.spec.instances).spec;
        let pod = spec.template.spec.clone().unwrap();
        (c, spec, pod)
    }

    #[test]
    fn statefulset_of_the_three_member_example() {
        let (_, spec, pod) = sts("cluster-3.yaml");
        assert_eq!(spec.replicas, Some(3));
        assert_eq!(spec.service_name.as_deref(), Some("pg-pods"));
        assert_eq!(
            spec.update_strategy.unwrap().type_.as_deref(),
            Some("OnDelete")
        );
        assert_eq!(spec.pod_management_policy.as_deref(), Some("Parallel"));
        assert_eq!(
            spec.selector.match_labels.unwrap()["pgpilot.io/cluster"],
            "pg"
        );
        let labels = spec.template.metadata.unwrap().labels.unwrap();
        assert_eq!(labels["pgpilot.io/cluster"], "pg");

        assert_eq!(pod.service_account_name.as_deref(), Some("pg-sidecar"));
        let sc = pod.security_context.unwrap();
        assert_eq!(
            (sc.run_as_user, sc.fs_group, sc.run_as_non_root),
            (Some(999), Some(999), Some(true))
        );

        let init = &pod.init_containers.unwrap()[0];
        assert_eq!(init.image.as_deref(), Some("localhost/pgpilot-sidecar:dev"));
        assert_eq!(
            init.command.clone().unwrap(),
            [
                "cp",
                "/usr/local/bin/pgpilot-sidecar",
                "/pgpilot/bin/pgpilot-sidecar"
            ]
        );

        let pg = &pod.containers[0];
        assert_eq!(pg.name, "postgres");
        assert_eq!(pg.image.as_deref(), Some("postgres:15"));
        assert_eq!(
            pg.command.clone().unwrap(),
            ["/pgpilot/bin/pgpilot-sidecar"]
        );
        assert_eq!(pg.args.clone().unwrap(), ["run"]);
        let env: BTreeMap<_, _> = pg
            .env
            .clone()
            .unwrap()
            .into_iter()
            .map(|e| {
                (
                    e.name,
                    e.value
                        .or_else(|| e.value_from.and_then(|v| v.field_ref).map(|f| f.field_path)),
                )
            })
            .collect();
        assert_eq!(env["PGPILOT_CLUSTER"].as_deref(), Some("pg"));
        assert_eq!(env["POD_NAME"].as_deref(), Some("metadata.name"));
        assert_eq!(env["POD_NAMESPACE"].as_deref(), Some("metadata.namespace"));
        assert_eq!(env["POD_IP"].as_deref(), Some("status.podIP"));
        assert_eq!(
            env["PGDATA"].as_deref(),
            Some("/var/lib/postgresql/data/pgdata")
        );
        let ports: Vec<i32> = pg
            .ports
            .clone()
            .unwrap()
            .iter()
            .map(|p| p.container_port)
            .collect();
        assert_eq!(ports, [5432, 8008]);
        let readiness = pg.readiness_probe.clone().unwrap().http_get.unwrap();
        assert_eq!(
            (readiness.path.as_deref(), readiness.port.clone()),
            (Some("/readiness"), IntOrString::Int(8008))
        );
        let liveness = pg.liveness_probe.clone().unwrap();
        assert_eq!(
            liveness.http_get.unwrap().path.as_deref(),
            Some("/liveness")
        );
        assert!(
            liveness.period_seconds.unwrap() * liveness.failure_threshold.unwrap() >= 60,
            "generous liveness"
        );

        let mounts: BTreeMap<_, _> = pg
            .volume_mounts
            .clone()
            .unwrap()
            .into_iter()
            .map(|m| (m.mount_path, m.name))
            .collect();
        assert_eq!(mounts["/var/lib/postgresql/data"], "data");
        assert_eq!(mounts["/pgpilot/bin"], "pgpilot-bin");
        for kind in SECRET_KINDS {
            let volume = &mounts[&format!("/etc/pgpilot/secrets/{kind}")];
            let v = pod
                .volumes
                .clone()
                .unwrap()
                .into_iter()
                .find(|v| &v.name == volume)
                .unwrap();
            assert_eq!(v.secret.unwrap().secret_name, Some(format!("pg-{kind}")));
        }

        let claim = &spec.volume_claim_templates.unwrap()[0];
        assert_eq!(claim.metadata.name.as_deref(), Some("data"));
        let claim = claim.spec.clone().unwrap();
        assert_eq!(
            claim.resources.unwrap().requests.unwrap()["storage"].0,
            "1Gi"
        );
        assert_eq!(claim.storage_class_name, None);
        let anti = pod.affinity.unwrap().pod_anti_affinity.unwrap();
        assert_eq!(
            anti.preferred_during_scheduling_ignored_during_execution
                .unwrap()[0]
                .weight,
            100
        );
    }

    #[test]
    fn pod_options_are_carried_through() {
        let mut c = validate(&example("cluster-3.yaml"), "s").unwrap();
        c.spec.pod.tolerations = vec![Toleration {
            key: Some("db".into()),
            ..Toleration::default()
        }];
        c.spec.pod.topology_spread_constraints = vec![TopologySpreadConstraint {
            max_skew: 1,
            topology_key: "zone".into(),
            when_unsatisfiable: "DoNotSchedule".into(),
            ..TopologySpreadConstraint::default()
        }];
        c.spec.pod.priority_class_name = Some("critical".into());
        c.spec.pod.labels = BTreeMap::from([
            ("team".into(), "a".into()),
            ("pgpilot.io/cluster".into(), "x".into()),
        ]);
        c.spec.pod.annotations = BTreeMap::from([("note".into(), "n".into())]);
        c.spec.storage.storage_class_name = Some("fast".into());
        let spec = build_statefulset(&c, c.spec.instances).spec;
        let meta = spec.template.metadata.clone().unwrap();
        let labels = meta.labels.unwrap();
        assert_eq!(labels["team"], "a");
        assert_eq!(labels["pgpilot.io/cluster"], "pg", "our labels win");
        assert_eq!(meta.annotations.unwrap()["note"], "n");
        let pod = spec.template.spec.unwrap();
        assert_eq!(pod.tolerations.unwrap()[0].key.as_deref(), Some("db"));
        let spread = &pod.topology_spread_constraints.unwrap()[0];
        assert_eq!(
            spread.label_selector.clone().unwrap().match_labels.unwrap()["pgpilot.io/cluster"],
            "pg"
        );
        assert_eq!(pod.priority_class_name.as_deref(), Some("critical"));
        let claim = spec.volume_claim_templates.unwrap()[0]
            .spec
            .clone()
            .unwrap();
        assert_eq!(claim.storage_class_name.as_deref(), Some("fast"));
    }

    #[test]
    fn resources_and_image_from_the_sync_example() {
        let (c, _, pod) = sts("cluster-sync.yaml");
        let pg = &pod.containers[0];
        assert_eq!(pg.resources, c.spec.resources);
        assert!(pg.resources.is_some(), "the sync example sets resources");
    }
}
