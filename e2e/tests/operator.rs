//! The operator on the local cluster: the Helm chart installs it, a `PostgresCluster` gets every child it
//! needs (owned, with the expected spec), bad input is rejected by the apiserver with a readable message,
//! `kubectl scale` scales, status and printer columns follow the pods, deletion garbage-collects.
//!
//! These tests do not need the sidecar to work: members may never become Ready here.

use std::{collections::BTreeMap, time::Duration};

use anyhow::{Context, Result, ensure};
use k8s_openapi::{
    api::{
        apps::v1::StatefulSet,
        coordination::v1::Lease,
        core::v1::{ConfigMap, Pod, Secret, Service, ServiceAccount},
        policy::v1::PodDisruptionBudget,
        rbac::v1::{Role, RoleBinding},
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, PostParams},
};
use pgpilot_crds::{
    PostgresCluster,
    contract::{ANNOTATION_SYSTEM_ID, SidecarConfig},
};
use pgpilot_e2e::{TestNamespace, client, install_crd, repo_dir, wait_for};

const SECOND: Duration = Duration::from_secs(1);

fn example(file: &str) -> String {
    repo_dir()
        .join("examples")
        .join(file)
        .to_string_lossy()
        .into_owned()
}

fn owned_by(meta: &ObjectMeta, cluster: &PostgresCluster) -> Result<()> {
    let owners = meta.owner_references.clone().unwrap_or_default();
    ensure!(
        owners.iter().any(|o| o.kind == "PostgresCluster"
            && Some(&o.uid) == cluster.metadata.uid.as_ref()
            && o.controller == Some(true)),
        "{:?} is not controlled by the cluster: {owners:?}",
        meta.name
    );
    Ok(())
}

async fn get<K>(client: &Client, ns: &str, name: &str) -> Result<Option<K>>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    Ok(Api::<K>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await?)
}

/// Every child of cluster `pg`, as (kind, name).
fn children() -> Vec<(&'static str, String)> {
    let mut v = vec![
        ("StatefulSet", "pg".to_owned()),
        ("Service", "pg-pods".into()),
        ("Service", "pg-rw".into()),
        ("Service", "pg-ro".into()),
        ("Service", "pg-r".into()),
        ("ConfigMap", "pg-config".into()),
        ("Lease", "pg-leader".into()),
        ("ServiceAccount", "pg-sidecar".into()),
        ("Role", "pg-sidecar".into()),
        ("RoleBinding", "pg-sidecar".into()),
        ("PodDisruptionBudget", "pg".into()),
    ];
    v.extend(["superuser", "replication", "app", "api"].map(|k| ("Secret", format!("pg-{k}"))));
    v
}

/// The metadata of child `(kind, name)`, if it exists.
async fn child_meta(
    client: &Client,
    ns: &str,
    kind: &str,
    name: &str,
) -> Result<Option<ObjectMeta>> {
    Ok(match kind {
        "StatefulSet" => get::<StatefulSet>(client, ns, name)
            .await?
            .map(|o| o.metadata),
        "Service" => get::<Service>(client, ns, name).await?.map(|o| o.metadata),
        "ConfigMap" => get::<ConfigMap>(client, ns, name)
            .await?
            .map(|o| o.metadata),
        "Lease" => get::<Lease>(client, ns, name).await?.map(|o| o.metadata),
        "ServiceAccount" => get::<ServiceAccount>(client, ns, name)
            .await?
            .map(|o| o.metadata),
        "Role" => get::<Role>(client, ns, name).await?.map(|o| o.metadata),
        "RoleBinding" => get::<RoleBinding>(client, ns, name)
            .await?
            .map(|o| o.metadata),
        "PodDisruptionBudget" => get::<PodDisruptionBudget>(client, ns, name)
            .await?
            .map(|o| o.metadata),
        "Secret" => get::<Secret>(client, ns, name).await?.map(|o| o.metadata),
        other => anyhow::bail!("unknown kind {other}"),
    })
}

fn secret_password(s: &Secret) -> Result<String> {
    let data = s.data.clone().unwrap_or_default();
    let pw = data.get("password").context("no password")?;
    Ok(String::from_utf8(pw.0.clone())?)
}

fn pod_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

async fn cluster(client: &Client, ns: &str) -> Result<PostgresCluster> {
    Ok(Api::<PostgresCluster>::namespaced(client.clone(), ns)
        .get("pg")
        .await?)
}

async fn event_reasons(ns: &TestNamespace) -> Result<Vec<String>> {
    let out = ns.kubectl(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.kind=PostgresCluster,involvedObject.name=pg",
        "-o",
        "jsonpath={range .items[*]}{.reason}{\"\\n\"}{end}",
    ])?;
    Ok(out.lines().map(str::to_owned).collect())
}

#[tokio::test]
#[ignore = "needs the local cluster (make cluster)"]
async fn bad_input_is_rejected_with_a_message_the_user_understands() -> Result<()> {
    install_crd()?;
    let ns = TestNamespace::create("op-reject")?;
    let manifest = |spec: &str| {
        format!(
            "apiVersion: pgpilot.io/v1alpha1\nkind: PostgresCluster\nmetadata: {{name: pg}}\nspec: {spec}\n"
        )
    };
    let dry_run = |spec: &str| {
        ns.kubectl_output(
            &["apply", "--server-side", "--dry-run=server", "-f", "-"],
            Some(&manifest(spec)),
        )
    };

    let cases = [
        (
            "{instances: 12}",
            "spec.instances in body should be less than or equal to 9",
        ),
        (
            "{instances: 0}",
            "spec.instances in body should be greater than or equal to 1",
        ),
        (
            "{ha: {leaseDurationSeconds: 10, renewDeadlineSeconds: 10}}",
            "ha.leaseDurationSeconds must be greater than ha.renewDeadlineSeconds",
        ),
        (
            "{ha: {renewDeadlineSeconds: 6, retryPeriodSeconds: 5}}",
            "ha.renewDeadlineSeconds must be greater than 1.2 x ha.retryPeriodSeconds",
        ),
        (
            "{instances: 3, switchover: {targetInstance: pg-3}}",
            "switchover.targetInstance must name a member",
        ),
        (
            "{instances: 3, switchover: {targetInstance: primary}}",
            "switchover.targetInstance must name a member",
        ),
        (
            "{storage: {size: -1Gi}}",
            "storage.size must be a positive quantity",
        ),
        (
            "{storage: {size: lots}}",
            "storage.size must be a positive quantity",
        ),
        (
            "{replication: {maximumLagOnFailover: -5}}",
            "replication.maximumLagOnFailover must be a non-negative byte count",
        ),
        (
            "{replication: {maximumLagOnFailover: 1.5Zi}}",
            "replication.maximumLagOnFailover must be a non-negative byte count",
        ),
        (
            "{instances: 2, replication: {mode: sync, syncReplicas: 2}}",
            "replication.syncReplicas must be less than instances",
        ),
        (
            "{instances: 3, replication: {mode: strictSync, syncReplicas: 3}}",
            "replication.syncReplicas must be less than instances",
        ),
        (
            "{replication: {mode: quorum}}",
            "Unsupported value: \"quorum\"",
        ),
        (
            "{postgresql: {parameters: {port: '5433'}}}",
            "postgresql.parameters may not set parameters pgpilot manages itself",
        ),
        (
            "{postgresql: {parameters: {synchronous_standby_names: '*'}}}",
            "postgresql.parameters may not set parameters pgpilot manages itself",
        ),
        (
            "{postgresql: {parameters: {primary_conninfo: x}}}",
            "postgresql.parameters may not set parameters pgpilot manages itself",
        ),
        (
            "{tags: {db-1: {noFailover: true}}}",
            "tags keys must be member names",
        ),
        // Configuration injection (issue 13, hole 12): nothing reaches postgresql.conf or pg_hba.conf as
        // more than the one setting or line it claims to be.
        (
            r#"{postgresql: {parameters: {"synchronous_standby_names ": "*"}}}"#,
            "postgresql.parameters keys must be PostgreSQL parameter names",
        ),
        (
            r#"{postgresql: {parameters: {"x\nsynchronous_standby_names": "*"}}}"#,
            "postgresql.parameters keys must be PostgreSQL parameter names",
        ),
        (
            "{postgresql: {parameters: {SYNCHRONOUS_STANDBY_NAMES: '*'}}}",
            "postgresql.parameters may not set parameters pgpilot manages itself",
        ),
        (
            r#"{postgresql: {parameters: {work_mem: "8MB\nsynchronous_standby_names = ''"}}}"#,
            "postgresql.parameters values may not contain control characters",
        ),
        (
            r#"{postgresql: {parameters: {work_mem: "8MB\r"}}}"#,
            "postgresql.parameters values may not contain control characters",
        ),
        (
            "{instances: 3, replication: {mode: sync}, postgresql: {parameters: {synchronous_commit: 'off'}}}",
            "postgresql.parameters.synchronous_commit must be on, remote_write or remote_apply",
        ),
        (
            "{instances: 3, replication: {mode: strictSync}, postgresql: {parameters: {Synchronous_Commit: local}}}",
            "postgresql.parameters.synchronous_commit must be on, remote_write or remote_apply",
        ),
        (
            "{postgresql: {pgHba: ['host all all 0.0.0.0/0 trust']}}",
            "postgresql.pgHba host lines may not use the trust method",
        ),
        (
            r#"{postgresql: {pgHba: ["host all all 10.0.0.0/8 scram-sha-256\nhost all all 0.0.0.0/0 trust"]}}"#,
            "postgresql.pgHba entries must be single lines without control characters",
        ),
        (
            r#"{postgresql: {pgHba: ["host all all 10.0.0.0/8 scram-sha-256 \\"]}}"#,
            "postgresql.pgHba entries may not end with a backslash",
        ),
        (
            "{postgresql: {pgHba: ['include_dir /tmp']}}",
            "postgresql.pgHba may not include other files",
        ),
        // Issue 14: versions pgpilot cannot run are refused by the tag, not by a failed bootstrap.
        (
            "{image: 'postgres:14'}",
            "image: pgpilot needs PostgreSQL 15 or newer",
        ),
        (
            "{image: 'registry.local:5000/postgresql:13.2-bookworm@sha256:ab12'}",
            "image: pgpilot needs PostgreSQL 15 or newer",
        ),
    ];
    // Every case is tried before failing, so one run shows each rule that does not hold.
    let mut wrong = Vec::new();
    for (spec, message) in cases {
        let out = dry_run(spec)?;
        if out.success {
            wrong.push(format!("accepted: {spec}"));
        } else if !out.stderr.contains(message) {
            wrong.push(format!("{spec}: expected {message:?} in {:?}", out.stderr));
        }
    }
    ensure!(wrong.is_empty(), "{}", wrong.join("\n"));
    let good = dry_run(
        "{instances: 3, switchover: {targetInstance: pg-2}, tags: {pg-1: {noFailover: true}}, replication: {mode: sync, syncReplicas: 2, maximumLagOnFailover: 1048576}, \
         postgresql: {parameters: {synchronous_commit: remote_apply, TimeZone: UTC, pg_stat_statements.max: '5000', work_mem: 8MB}, \
         pgHba: ['host all all 10.0.0.0/8 scram-sha-256', 'local all all trust', 'host all all 10.0.0.0/8 scram-sha-256 # trust nobody']}}",
    )?;
    ensure!(good.success, "a valid spec was rejected: {}", good.stderr);
    for image in [
        "registry.local:5000/postgres",
        "postgres:latest",
        "postgres@sha256:1234abcd",
        "postgres:15.4-bookworm",
    ] {
        let out = dry_run(&format!("{{image: '{image}'}}"))?;
        ensure!(out.success, "image {image} was rejected: {}", out.stderr);
    }

    // Immutable after creation: the storage class and the size.
    ns.kubectl_output(
        &["apply", "--server-side", "-f", "-"],
        Some(&manifest("{storage: {size: 1Gi}}")),
    )?
    .ok()?;
    for (spec, message) in [
        (
            "{storage: {size: 1Gi, storageClassName: fast}}",
            "storage.storageClassName cannot be changed after creation",
        ),
        (
            "{storage: {size: 2Gi}}",
            "storage.size cannot be changed after creation",
        ),
        // Stored with the default image, postgres:17: another major version is not an image change.
        (
            "{storage: {size: 1Gi}, image: 'postgres:15'}",
            "a major version upgrade is not an image change",
        ),
    ] {
        let out = dry_run(spec)?;
        ensure!(
            !out.success && out.stderr.contains(message),
            "{spec}: expected {message:?} in {:?}",
            out.stderr
        );
    }
    for image in ["postgres:17.2-bookworm", "postgres:latest"] {
        let out = dry_run(&format!("{{storage: {{size: 1Gi}}, image: '{image}'}}"))?;
        ensure!(
            out.success,
            "a change to {image} was rejected: {}",
            out.stderr
        );
    }
    let scaled = ns.kubectl_output(&["scale", "pgc/pg", "--replicas=10"], None)?;
    ensure!(
        !scaled.success && scaled.stderr.contains("less than or equal to 9"),
        "scale to 10: {:?}",
        scaled.stderr
    );
    Ok(())
}

#[tokio::test]
#[ignore = "needs the local cluster (make cluster)"]
async fn helm_install_then_a_cluster_gets_its_children_scales_and_is_collected() -> Result<()> {
    let client = client().await?;
    let mut ns = TestNamespace::create("op-children")?;
    let notes = ns.install_operator(&[])?;
    ensure!(
        notes.contains("kubectl -n db apply -f examples/cluster-3.yaml"),
        "NOTES tell what to apply next: {notes}"
    );
    let established = pgpilot_e2e::kubectl(&[
        "get",
        "crd",
        "postgresclusters.pgpilot.io",
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"Established\")].status}",
    ])?;
    ensure!(established == "True", "CRD not established: {established}");
    let n = ns.name.clone();

    ns.kubectl(&["apply", "-f", &example("cluster-3.yaml")])?;
    let pgc = cluster(&client, &n).await?;

    // Every child exists and is controlled by the cluster.
    wait_for("every child of pg", 60 * SECOND, SECOND, || async {
        for (kind, name) in children() {
            let Some(meta) = child_meta(&client, &n, kind, &name).await? else {
                anyhow::bail!("{kind} {name} missing");
            };
            owned_by(&meta, &pgc)?;
        }
        Ok(Some(()))
    })
    .await?;

    // The expected spec of the children.
    let sts: StatefulSet = get(&client, &n, "pg").await?.context("statefulset")?;
    ensure!(sts.spec.replicas == Some(3));
    ensure!(sts.spec.service_name.as_deref() == Some("pg-pods"));
    ensure!(
        sts.spec
            .update_strategy
            .clone()
            .and_then(|u| u.type_)
            .as_deref()
            == Some("OnDelete")
    );
    let pod = sts.spec.template.spec.clone().context("pod spec")?;
    let init = &pod.init_containers.clone().context("init containers")?[0];
    ensure!(
        init.image.as_deref() == Some("localhost/pgpilot-sidecar:dev"),
        "sidecar image from the chart: {:?}",
        init.image
    );
    let pg = &pod.containers[0];
    ensure!(pg.image.as_deref() == Some("postgres:15"));
    ensure!(pg.command.clone().unwrap_or_default() == ["/pgpilot/bin/pgpilot-sidecar"]);
    ensure!(pod.service_account_name.as_deref() == Some("pg-sidecar"));
    let claim = &sts.spec.volume_claim_templates.clone().context("claims")?[0];
    let storage = claim
        .spec
        .clone()
        .and_then(|s| s.resources)
        .and_then(|r| r.requests)
        .context("claim size")?;
    ensure!(storage["storage"].0 == "1Gi");

    // -ro and -r route only to members whose tags allow load balancing (the label the sidecar sets).
    for (svc, role, balanced) in [
        ("pg-rw", Some("primary"), false),
        ("pg-ro", Some("replica"), true),
        ("pg-r", None, true),
    ] {
        let s: Service = get(&client, &n, svc).await?.context("service")?;
        let selector = s.spec.and_then(|s| s.selector).unwrap_or_default();
        let mut want = BTreeMap::from([("pgpilot.io/cluster".to_owned(), "pg".to_owned())]);
        if let Some(r) = role {
            want.insert("pgpilot.io/role".into(), r.into());
        }
        if balanced {
            want.insert("pgpilot.io/load-balance".into(), "true".into());
        }
        ensure!(selector == want, "{svc} selects {selector:?}");
    }
    let headless: Service = get(&client, &n, "pg-pods").await?.context("headless")?;
    ensure!(
        headless
            .spec
            .as_ref()
            .and_then(|s| s.publish_not_ready_addresses)
            == Some(true)
    );

    let lease: Lease = get(&client, &n, "pg-leader").await?.context("lease")?;
    let lease_spec = lease.spec.clone().unwrap_or_default();
    ensure!(
        lease_spec.holder_identity.is_none(),
        "the operator creates the Lease without a holder"
    );
    ensure!(lease_spec.lease_duration_seconds == Some(15));

    let cm: ConfigMap = get(&client, &n, "pg-config").await?.context("configmap")?;
    let config: SidecarConfig = serde_json::from_str(&cm.data.unwrap_or_default()["config.json"])?;
    ensure!(
        config.ha.lease_duration_seconds == 15 && config.parameters["max_connections"] == "100",
        "{config:?}"
    );

    let role: Role = get(&client, &n, "pg-sidecar").await?.context("role")?;
    let resources: Vec<String> = role
        .rules
        .unwrap_or_default()
        .iter()
        .flat_map(|r| r.resources.clone().unwrap_or_default())
        .collect();
    ensure!(
        resources == ["leases", "pods", "configmaps", "events"],
        "sidecar role: {resources:?}"
    );

    let app: Secret = get(&client, &n, "pg-app").await?.context("app secret")?;
    let password = secret_password(&app)?;
    ensure!(password.len() == 32 && password.chars().all(|c| c.is_ascii_alphanumeric()));

    // Status and printer columns follow the pods, whatever state the sidecar is in.
    let status = wait_for(
        "status of pg with 3 members",
        60 * SECOND,
        SECOND,
        || async {
            let c = cluster(&client, &n).await?;
            Ok(c.status.filter(|s| {
                s.observed_generation == Some(1) && s.members.len() == 3 && s.instances == 3
            }))
        },
    )
    .await?;
    let names: Vec<&str> = status.members.iter().map(|m| m.name.as_str()).collect();
    ensure!(names == ["pg-0", "pg-1", "pg-2"], "members {names:?}");
    let types: Vec<&str> = status.conditions.iter().map(|c| c.type_.as_str()).collect();
    for t in [
        "Ready",
        "Progressing",
        "Degraded",
        "FailoverBlocked",
        "SwitchoverInProgress",
        "Paused",
    ] {
        ensure!(types.contains(&t), "condition {t} missing: {types:?}");
    }
    ensure!(status.selector.as_deref() == Some("pgpilot.io/cluster=pg"));
    let table = ns.kubectl(&["get", "pgc", "pg"])?;
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    ensure!(
        header
            == [
                "NAME",
                "INSTANCES",
                "READY",
                "PRIMARY",
                "PHASE",
                "TIMELINE",
                "AGE"
            ],
        "columns {header:?}"
    );
    // The Ready column counts the Ready pods (polled: a pod may turn Ready between the two reads).
    wait_for(
        "the Ready column to match the Ready pods",
        60 * SECOND,
        SECOND,
        || async {
            let pods = Api::<Pod>::namespaced(client.clone(), &n)
                .list(&kube::api::ListParams::default().labels("pgpilot.io/cluster=pg"))
                .await?
                .items;
            let ready_pods = pods.iter().filter(|p| pod_ready(p)).count();
            let row = ns.kubectl(&[
                "get",
                "pgc",
                "pg",
                "-o",
                "custom-columns=I:.spec.instances,R:.status.readyInstances,P:.status.phase",
                "--no-headers",
            ])?;
            let row: Vec<String> = row.split_whitespace().map(str::to_owned).collect();
            ensure!(row.len() == 3 && row[0] == "3", "instances column {row:?}");
            ensure!(
                ["Creating", "Running", "Degraded", "NoPrimary"].contains(&row[2].as_str()),
                "phase {row:?}"
            );
            Ok((row[1].parse::<usize>().ok() == Some(ready_pods)).then_some(()))
        },
    )
    .await?;

    // A spec change reaches the sidecars' ConfigMap.
    ns.kubectl(&[
        "patch",
        "pgc",
        "pg",
        "--type=merge",
        "-p",
        r#"{"spec":{"postgresql":{"parameters":{"work_mem":"8MB"}}}}"#,
    ])?;
    wait_for(
        "work_mem in the sidecar config",
        30 * SECOND,
        SECOND / 2,
        || async {
            let cm: ConfigMap = get(&client, &n, "pg-config").await?.context("configmap")?;
            let config: SidecarConfig =
                serde_json::from_str(&cm.data.unwrap_or_default()["config.json"])?;
            Ok(
                (config.parameters.get("work_mem").map(String::as_str) == Some("8MB"))
                    .then_some(()),
            )
        },
    )
    .await?;

    // The Lease is the sidecars' once it exists (issue 13, hole 7): what they write under their own
    // field manager (holder, transitions, their own leaseDurationSeconds, annotations) survives a change
    // of spec.ha, which reaches them through the ConfigMap; the operator does not write the Lease at all,
    // so it never makes the holder's next conditional renewal fail. A cluster whose PostgreSQL image does
    // not exist has no sidecar running, so nothing else writes its Lease during the check.
    let held = "apiVersion: pgpilot.io/v1alpha1\nkind: PostgresCluster\nmetadata: {name: held}\nspec: {image: localhost/pgpilot-none:never}\n";
    ns.kubectl_output(&["apply", "-f", "-"], Some(held))?.ok()?;
    let leases: Api<Lease> = Api::namespaced(client.clone(), &n);
    let mut claimed = wait_for("the held-leader Lease", 30 * SECOND, SECOND / 2, || async {
        Ok(leases.get_opt("held-leader").await?)
    })
    .await?;
    const SYSTEM_ID: &str = "7412345678901234567";
    let spec = claimed.spec.get_or_insert_default();
    spec.holder_identity = Some("held-0".into());
    spec.lease_transitions = Some(7);
    spec.lease_duration_seconds = Some(15);
    claimed
        .metadata
        .annotations
        .get_or_insert_default()
        .insert(ANNOTATION_SYSTEM_ID.into(), SYSTEM_ID.into());
    let sidecar = PostParams {
        field_manager: Some("pgpilot-sidecar".into()),
        ..PostParams::default()
    };
    let written = leases.replace("held-leader", &sidecar, &claimed).await?;
    ns.kubectl(&[
        "patch",
        "pgc",
        "held",
        "--type=merge",
        "-p",
        r#"{"spec":{"ha":{"leaseDurationSeconds":20}}}"#,
    ])?;
    let clusters: Api<PostgresCluster> = Api::namespaced(client.clone(), &n);
    // The status of generation 2 is written after that generation's children were applied.
    let held_status = wait_for(
        "held: status of generation 2 with the system identifier",
        30 * SECOND,
        SECOND / 2,
        || async {
            Ok(clusters.get("held").await?.status.filter(|s| {
                s.observed_generation == Some(2)
                    && s.system_identifier.as_deref() == Some(SYSTEM_ID)
            }))
        },
    )
    .await?;
    let cm: ConfigMap = get(&client, &n, "held-config")
        .await?
        .context("held configmap")?;
    let config: SidecarConfig = serde_json::from_str(&cm.data.unwrap_or_default()["config.json"])?;
    ensure!(
        config.ha.lease_duration_seconds == 20,
        "the new duration reaches the sidecars: {config:?} (status {held_status:?})"
    );
    let after = leases.get("held-leader").await?;
    ensure!(
        after.metadata.resource_version == written.metadata.resource_version,
        "the operator wrote the Lease: {:?} -> {:?}",
        written.metadata,
        after.metadata
    );
    let after_spec = after.spec.clone().unwrap_or_default();
    ensure!(
        after_spec.holder_identity.as_deref() == Some("held-0")
            && after_spec.lease_transitions == Some(7)
            && after_spec.lease_duration_seconds == Some(15),
        "the operator overwrote the election record: {after_spec:?}"
    );

    // A deleted Lease is created again (issue 13, hole 4) with the system identifier the status kept,
    // so a member with an empty data directory cannot take it for a cluster never initialised.
    leases
        .delete("held-leader", &DeleteParams::default())
        .await?;
    let recreated = wait_for("held-leader recreated", 60 * SECOND, SECOND / 2, || async {
        Ok(leases
            .get_opt("held-leader")
            .await?
            .filter(|l| l.metadata.uid != after.metadata.uid))
    })
    .await?;
    let annotations = recreated.metadata.annotations.clone().unwrap_or_default();
    ensure!(
        annotations.get(ANNOTATION_SYSTEM_ID).map(String::as_str) == Some(SYSTEM_ID),
        "the recreated Lease lacks the system identifier: {:?}",
        recreated.metadata
    );
    ensure!(
        recreated
            .spec
            .as_ref()
            .is_none_or(|s| s.holder_identity.is_none()),
        "the recreated Lease has no holder: {:?}",
        recreated.spec
    );
    owned_by(&recreated.metadata, &clusters.get("held").await?)?;
    ns.kubectl(&["delete", "pgc", "held"])?;

    // Secrets are generated once: a reconcile after a spec change leaves the password alone.
    wait_for("status of generation 2", 30 * SECOND, SECOND, || async {
        Ok(cluster(&client, &n)
            .await?
            .status
            .filter(|s| s.observed_generation == Some(2)))
    })
    .await?;
    let again: Secret = get(&client, &n, "pg-app").await?.context("app secret")?;
    ensure!(
        secret_password(&again)? == password,
        "the app password changed"
    );

    // kubectl scale goes through the scale subresource to the StatefulSet.
    ns.kubectl(&["scale", "pgc/pg", "--replicas=4"])?;
    wait_for(
        "4 replicas in the StatefulSet",
        30 * SECOND,
        SECOND / 2,
        || async {
            let s: StatefulSet = get(&client, &n, "pg").await?.context("statefulset")?;
            Ok((s.spec.replicas == Some(4)).then_some(()))
        },
    )
    .await?;
    wait_for("Created and Scaled events", 30 * SECOND, SECOND, || async {
        let reasons = event_reasons(&ns).await?;
        Ok(
            (reasons.iter().any(|r| r == "Created") && reasons.iter().any(|r| r == "Scaled"))
                .then_some(()),
        )
    })
    .await?;
    let described = ns.kubectl(&["describe", "pgc", "pg"])?;
    ensure!(
        described.contains("scaled from 3 to 4 instances"),
        "describe shows the scale event:\n{described}"
    );

    // The operator's metrics and health, through its metrics Service.
    let release = ns.release().context("release")?.to_owned();
    let metrics = ns.kubectl(&[
        "get",
        "--raw",
        &format!("/api/v1/namespaces/{n}/services/{release}-metrics:8080/proxy/metrics"),
    ])?;
    ensure!(
        metrics.contains("pgpilot_operator_reconciles_total"),
        "metrics:\n{metrics}"
    );
    ensure!(
        metrics.contains("pgpilot_operator_reconcile_duration_seconds_bucket"),
        "metrics:\n{metrics}"
    );
    let health = ns.kubectl(&[
        "get",
        "--raw",
        &format!("/api/v1/namespaces/{n}/services/{release}-metrics:8080/proxy/healthz"),
    ])?;
    ensure!(health == "ok", "healthz: {health}");

    // Deleting the cluster garbage-collects every child.
    Api::<PostgresCluster>::namespaced(client.clone(), &n)
        .delete("pg", &DeleteParams::foreground())
        .await?;
    wait_for(
        "every child of pg collected",
        120 * SECOND,
        SECOND,
        || async {
            for (kind, name) in children() {
                if child_meta(&client, &n, kind, &name).await?.is_some() {
                    anyhow::bail!("{kind} {name} still there");
                }
            }
            let left = Api::<Pod>::namespaced(client.clone(), &n)
                .list(&kube::api::ListParams::default().labels("pgpilot.io/cluster=pg"))
                .await?
                .items;
            if !left.is_empty() {
                anyhow::bail!(
                    "pods left: {:?}",
                    left.iter().map(ResourceExt::name_any).collect::<Vec<_>>()
                );
            }
            Ok(Some(()))
        },
    )
    .await?;
    Ok(())
}

/// The pod holding the operator's election Lease.
async fn operator_leader(client: &Client, ns: &str, lease: &str) -> Result<Option<String>> {
    let l: Option<Lease> = get(client, ns, lease).await?;
    Ok(l.and_then(|l| l.spec?.holder_identity)
        .filter(|h| !h.is_empty()))
}

#[tokio::test]
#[ignore = "needs the local cluster (make cluster)"]
async fn with_two_operator_replicas_only_the_lease_holder_reconciles() -> Result<()> {
    let client = client().await?;
    let mut ns = TestNamespace::create("op-election")?;
    ns.install_operator(&["replicaCount=2"])?;
    let n = ns.name.clone();
    let release = ns.release().context("release")?.to_owned();
    let pods = ns.kubectl(&[
        "get",
        "pods",
        "-l",
        "app.kubernetes.io/component=operator",
        "-o",
        "jsonpath={.items[*].metadata.name}",
    ])?;
    let pods: Vec<String> = pods.split_whitespace().map(str::to_owned).collect();
    ensure!(pods.len() == 2, "two operator pods: {pods:?}");

    let leader = wait_for("an operator leader", 60 * SECOND, SECOND, || {
        operator_leader(&client, &n, &release)
    })
    .await?;
    ensure!(
        pods.contains(&leader),
        "leader {leader} is not one of {pods:?}"
    );
    let follower = pods
        .iter()
        .find(|p| **p != leader)
        .context("follower")?
        .clone();

    ns.kubectl(&["apply", "-f", &example("cluster-minimal.yaml")])?;
    wait_for(
        "the minimal cluster's StatefulSet",
        60 * SECOND,
        SECOND,
        || get::<StatefulSet>(&client, &n, "pg-minimal"),
    )
    .await?;
    let logs = |pod: &str| ns.kubectl(&["logs", pod]);
    ensure!(
        logs(&leader)?.contains("leading: reconciling"),
        "the leader reconciles"
    );
    let follower_logs = logs(&follower)?;
    ensure!(
        !follower_logs.contains("leading: reconciling")
            && !follower_logs.contains("status updated"),
        "the follower must not reconcile:\n{follower_logs}"
    );

    // The leader is deleted: it releases the Lease on SIGTERM, so another replica (the follower, or the
    // Deployment's replacement pod) takes over well before the lease duration (15 s) would have run out.
    let deleted = std::time::Instant::now();
    ns.kubectl(&["delete", "pod", &leader, "--wait=false"])?;
    let successor = wait_for(
        "another replica to take over",
        90 * SECOND,
        SECOND / 4,
        || async {
            Ok(operator_leader(&client, &n, &release)
                .await?
                .filter(|h| *h != leader))
        },
    )
    .await?;
    let takeover = deleted.elapsed();
    ensure!(
        takeover < 12 * SECOND,
        "{successor} took over after {takeover:?}: the leader did not release its Lease"
    );
    ns.kubectl(&["scale", "pgc/pg-minimal", "--replicas=2"])?;
    wait_for(
        "the new leader to scale the StatefulSet",
        60 * SECOND,
        SECOND,
        || async {
            let s: Option<StatefulSet> = get(&client, &n, "pg-minimal").await?;
            Ok(s.filter(|s| s.spec.replicas == Some(2)).map(|_| ()))
        },
    )
    .await?;
    Ok(())
}

/// Switchover through the spec: the operator asks the primary's sidecar (basic auth from the `<c>-api`
/// Secret) once, and reports the change. Needs working sidecars: the members must elect a primary.
#[tokio::test]
#[ignore = "needs the local cluster (make cluster)"]
async fn a_switchover_in_the_spec_is_requested_once_and_reported() -> Result<()> {
    let client = client().await?;
    let mut ns = TestNamespace::create("op-switchover")?;
    ns.install_operator(&[])?;
    let n = ns.name.clone();
    ns.kubectl(&["apply", "-f", &example("cluster-3.yaml")])?;
    let running = wait_for(
        "pg Running with a primary",
        180 * SECOND,
        SECOND,
        || async {
            let s = cluster(&client, &n).await?.status;
            Ok(s.filter(|s| s.phase.as_deref() == Some("Running") && s.primary.is_some()))
        },
    )
    .await?;
    let primary = running.primary.context("primary")?;
    let target = ["pg-0", "pg-1", "pg-2"]
        .into_iter()
        .find(|m| *m != primary)
        .context("a replica")?;

    let patch = format!(r#"{{"spec":{{"switchover":{{"targetInstance":"{target}"}}}}}}"#);
    ns.kubectl(&["patch", "pgc", "pg", "--type=merge", "-p", &patch])?;
    let done = wait_for(
        "the target to become primary",
        60 * SECOND,
        SECOND / 2,
        || async {
            let s = cluster(&client, &n).await?.status;
            Ok(s.filter(|s| s.primary.as_deref() == Some(target)))
        },
    )
    .await?;
    let record = done.last_failover.context("lastFailover")?;
    ensure!(
        (
            record.from.as_str(),
            record.to.as_str(),
            record.reason.as_str()
        ) == (primary.as_str(), target, "Switchover"),
        "{record:?}"
    );
    let settled = wait_for(
        "SwitchoverInProgress=False/Completed",
        30 * SECOND,
        SECOND,
        || async {
            let s = cluster(&client, &n).await?.status.unwrap_or_default();
            Ok(s.conditions
                .into_iter()
                .find(|c| c.type_ == "SwitchoverInProgress" && c.reason == "Completed"))
        },
    )
    .await?;
    ensure!(
        settled.status == "False" && settled.observed_generation == Some(2),
        "{settled:?}"
    );
    wait_for(
        "SwitchoverRequested and SwitchoverCompleted events",
        30 * SECOND,
        SECOND,
        || async {
            let reasons = event_reasons(&ns).await?;
            let requested = reasons
                .iter()
                .filter(|r| *r == "SwitchoverRequested")
                .count();
            ensure!(requested <= 1, "requested {requested} times: {reasons:?}");
            Ok(
                (requested == 1 && reasons.iter().any(|r| r == "SwitchoverCompleted"))
                    .then_some(()),
            )
        },
    )
    .await?;
    Ok(())
}
