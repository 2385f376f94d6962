//! HA behaviour on the local cluster that is not a fault, through the Helm chart, the operator and real
//! pods: a 3-member cluster converges, its labels and `-rw` route to the holder, and in steady state only
//! the holder writes to Kubernetes (L9); REST reload/restart/reinitialize act; spec parameters are
//! reloaded or reported as pending restart. The faults (a killed, frozen or deleted primary, a
//! switchover, a kill in `sync` mode …) are rows of the fault matrix (`tests/faults.rs`). Figures
//! (sidecar RSS, API writes) are printed, never asserted as timings (benchmarks, not timed tests).

use std::{collections::BTreeMap, time::Duration};

use anyhow::{Result, bail, ensure};
use pgpilot_crds::contract::{self, MemberReport};
use pgpilot_e2e::{TestNamespace, audit, client, clock::now_us, cluster, deploy, host, rest};

const CLUSTER: &str = "pg";

/// Fails unless `cond` holds, with the cluster's description.
fn check(cond: bool, ns: &TestNamespace, cluster: &str, what: &str) -> Result<()> {
    if !cond {
        bail!("{what}\n{}", cluster::describe(ns, cluster, 3));
    }
    Ok(())
}

/// The member names of a cluster of `n`.
fn members(cluster: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{cluster}-{i}")).collect()
}

/// Asserts the report set has exactly `n` members.
fn ensure_members(reports: &BTreeMap<String, MemberReport>, n: usize) -> Result<()> {
    ensure!(
        reports.len() == n,
        "expected {n} members, got {:?}",
        reports.keys().collect::<Vec<_>>()
    );
    Ok(())
}

/// A cluster of 3 with the default timings (15/10/2 s) in `mode`, converged.
async fn three(prefix: &str, mode: &str) -> Result<(TestNamespace, String)> {
    three_on(prefix, mode, deploy::POSTGRES_15).await
}

/// [`three`] with `spec.image` `image`.
async fn three_on(
    prefix: &str,
    mode: &str,
    image: &'static str,
) -> Result<(TestNamespace, String)> {
    let mut ns = TestNamespace::create(prefix)?;
    let manifest = deploy::Manifest {
        image,
        ..deploy::Manifest::new(CLUSTER, 3, mode)
    };
    deploy::deploy(&mut ns, &manifest, Duration::from_secs(300)).await?;
    let c = client().await?;
    let primary = rest::wait_converged(&c, &ns.name, CLUSTER, Duration::from_secs(120)).await?;
    Ok((ns, primary))
}

#[tokio::test]
#[ignore = "needs the local cluster (make cluster)"]
async fn three_members_one_primary_two_streaming_replicas_rw_routes_to_it() -> Result<()> {
    let (ns, primary) = three("ha-ready", "async").await?;
    let c = client().await?;
    let cluster::LeaseRecord {
        holder,
        transitions: epoch,
        ..
    } = cluster::lease(&c, &ns.name, &contract::lease_name(CLUSTER)).await?;
    check(
        holder.as_deref() == Some(primary.as_str()),
        &ns,
        CLUSTER,
        &format!("Lease holder {holder:?} is not the primary {primary}"),
    )?;
    let reports = rest::reports(&c, &ns.name, CLUSTER).await?;
    ensure_members(&reports, 3)?;
    let streaming = reports
        .values()
        .filter(|r| r.replication_state.as_deref() == Some("streaming"))
        .count();
    check(
        streaming == 2,
        &ns,
        CLUSTER,
        &format!("{streaming} streaming replicas"),
    )?;
    check(
        reports[&primary].pgpilot.epoch == u64::try_from(epoch)?,
        &ns,
        CLUSTER,
        "the primary publishes the Lease epoch (L7)",
    )?;
    // Labels: one primary (the holder), two replicas; the -rw Service routes to the primary only.
    let pods = cluster::member_pods(&c, &ns.name, CLUSTER).await?;
    for cluster::MemberPod { name, role, .. } in &pods {
        let want = if *name == primary {
            contract::ROLE_PRIMARY
        } else {
            contract::ROLE_REPLICA
        };
        check(
            role.as_deref() == Some(want),
            &ns,
            CLUSTER,
            &format!("{name} labelled {role:?}"),
        )?;
    }
    let primary_ip = cluster::ip_of(&pods, &primary);
    let rw = pgpilot_e2e::wait_for(
        "-rw endpoints on the primary",
        Duration::from_secs(30),
        Duration::from_millis(500),
        || async {
            let eps = cluster::ready_endpoints(&c, &ns.name, &format!("{CLUSTER}-rw")).await?;
            Ok((Some(eps.clone()) == primary_ip.clone().map(|ip| vec![ip])).then_some(eps))
        },
    )
    .await?;
    println!("-rw endpoints: {rw:?}; primary {primary} epoch {epoch}");
    let rss: Vec<(String, u64)> = host::agents(&pods, contract::SIDECAR_BINARY)
        .into_iter()
        .map(|a| (a.member, a.rss_bytes / 1024))
        .collect();
    println!("sidecar RSS (KiB) per member: {rss:?}");

    // L9: in steady state only the holder writes to Kubernetes, its renewals only (at most 12 a minute
    // with a 15 s lease). Measured from the apiserver's audit log over one minute.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let from = now_us();
    let window = Duration::from_secs(60);
    tokio::time::sleep(window).await;
    let to = now_us();
    // The audit log is written when requests complete: give the last ones a moment.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let sidecars = format!(
        "system:serviceaccount:{}:{}",
        ns.name,
        contract::service_account_name(CLUSTER)
    );
    let writes: Vec<audit::AuditWrite> = audit::writes_between(from, to, &sidecars)?
        .into_iter()
        .filter(|w| w.user == sidecars)
        .collect();
    println!(
        "sidecar API writes in {window:?} of steady state: {} {writes:?}",
        writes.len()
    );
    let foreign: Vec<_> = writes
        .iter()
        .filter(|w| w.pod != primary || w.resource != "leases")
        .collect();
    check(
        foreign.is_empty(),
        &ns,
        CLUSTER,
        &format!("writes other than the holder's renewals: {foreign:?}"),
    )?;
    check(
        writes.len() <= 13,
        &ns,
        CLUSTER,
        &format!("{} renewals in a minute", writes.len()),
    )?;
    check(
        writes.len() >= 6,
        &ns,
        CLUSTER,
        &format!("only {} renewals in a minute", writes.len()),
    )?;
    Ok(())
}

#[tokio::test]
#[ignore = "needs the local cluster (make cluster)"]
async fn rest_restart_reload_and_reinitialize_act_on_the_member() -> Result<()> {
    rest_actions_on(deploy::POSTGRES_15, 15).await
}

/// The same on the PostgreSQL 17 stand-in (issue 14): restart, and a reinitialize (pg_basebackup of 17).
#[tokio::test]
#[ignore = "needs the local cluster (make cluster)"]
async fn rest_restart_reload_and_reinitialize_act_on_the_member_pg17() -> Result<()> {
    rest_actions_on(deploy::POSTGRES_17, 17).await
}

/// REST restart, reload and reinitialize on a replica of a cluster running `image`, whose members must
/// all report PostgreSQL `major`.
async fn rest_actions_on(image: &'static str, major: u32) -> Result<()> {
    let (ns, primary) = three_on(&format!("ha-rest-{major}"), "async", image).await?;
    let c = client().await?;
    let reports = rest::reports(&c, &ns.name, CLUSTER).await?;
    ensure_members(&reports, 3)?;
    for (m, r) in &reports {
        ensure!(
            r.server_version.map(|v| v / 10_000) == Some(major),
            "{m} reports server_version {:?}, not PostgreSQL {major}",
            r.server_version
        );
    }
    let pods = cluster::member_pods(&c, &ns.name, CLUSTER).await?;
    let ip_of = |name: &str| cluster::ip_of(&pods, name).unwrap_or_default();
    let replica = members(CLUSTER, 3)
        .into_iter()
        .find(|m| *m != primary)
        .unwrap_or_default();
    // Without credentials: 401.
    let anonymous = reqwest::Client::new()
        .post(format!(
            "http://{}:{}/restart",
            ip_of(&replica),
            contract::REST_PORT
        ))
        .send()
        .await?;
    ensure!(
        anonymous.status().as_u16() == 401,
        "anonymous restart answered {}",
        anonymous.status()
    );
    // The primary refuses to reinitialize itself.
    let (status, body) = rest::post(
        &c,
        &ns.name,
        CLUSTER,
        &ip_of(&primary),
        "/reinitialize",
        None,
    )
    .await?;
    ensure!(
        status == 503,
        "reinitialize on the primary answered {status}: {body}"
    );
    for path in ["/reload", "/restart", "/reinitialize"] {
        let (status, body) =
            rest::post(&c, &ns.name, CLUSTER, &ip_of(&replica), path, None).await?;
        ensure!(
            status == 200,
            "{path} on {replica} answered {status}: {body}\n{}",
            cluster::describe(&ns, CLUSTER, 3)
        );
        // The member comes back as a streaming replica of the same primary.
        let after = rest::wait_converged(&c, &ns.name, CLUSTER, Duration::from_secs(120)).await?;
        ensure!(after == primary, "{path} moved the primary to {after}");
        println!("{path} on {replica}: {body}; converged again");
    }
    Ok(())
}

/// Waits until `-ro` routes to every replica but `tagged` and `-r` to every member but `tagged`.
async fn wait_balanced(
    c: &kube::Client,
    ns: &TestNamespace,
    primary: &str,
    tagged: Option<&str>,
) -> Result<()> {
    let pods = cluster::member_pods(c, &ns.name, CLUSTER).await?;
    let ips = |any_role: bool| {
        let mut v: Vec<String> = pods
            .iter()
            .filter(|p| (any_role || p.name != primary) && Some(p.name.as_str()) != tagged)
            .filter_map(|p| p.ip.clone())
            .collect();
        v.sort();
        v
    };
    let (want_ro, want_r) = (ips(false), ips(true));
    pgpilot_e2e::wait_for(
        "-ro and -r on the balanced members",
        Duration::from_secs(60),
        Duration::from_millis(500),
        || async {
            let ro = cluster::ready_endpoints(c, &ns.name, &format!("{CLUSTER}-ro")).await?;
            let r = cluster::ready_endpoints(c, &ns.name, &format!("{CLUSTER}-r")).await?;
            Ok((ro == want_ro && r == want_r).then_some(()))
        },
    )
    .await?;
    Ok(())
}

#[tokio::test]
#[ignore = "needs the local cluster (make cluster)"]
async fn spec_parameters_and_tags_reach_the_running_members() -> Result<()> {
    let (ns, primary) = three("ha-params", "async").await?;
    let c = client().await?;
    let members = members(CLUSTER, 3);
    let replica = members
        .iter()
        .find(|m| **m != primary)
        .cloned()
        .unwrap_or_default();
    // work_mem applies by reload; max_connections needs a restart (PostgreSQL's `postmaster` context),
    // which `onPendingRestart: manual` leaves to the user (the operator would roll it otherwise).
    // The replica tagged noLoadBalance leaves -ro and -r, not the cluster.
    let patch = format!(
        r#"{{"spec":{{"postgresql":{{"onPendingRestart":"manual","parameters":{{"work_mem":"7MB","max_connections":"60"}}}},"tags":{{"{replica}":{{"noLoadBalance":true}}}}}}}}"#
    );
    ns.kubectl(&[
        "patch",
        "postgrescluster",
        CLUSTER,
        "--type",
        "merge",
        "-p",
        &patch,
    ])?;
    wait_balanced(&c, &ns, &primary, Some(&replica)).await?;
    println!("{replica} tagged noLoadBalance: out of -ro and -r");
    pgpilot_e2e::wait_for(
        "pending_restart on every member",
        Duration::from_secs(60),
        Duration::from_millis(500),
        || async {
            let reports = rest::reports(&c, &ns.name, CLUSTER).await?;
            Ok(members
                .iter()
                .all(|m| reports.get(m).is_some_and(|r| r.pending_restart))
                .then_some(()))
        },
    )
    .await?;
    let (user, password) = cluster::credentials(&c, &ns.name, CLUSTER, "superuser").await?;
    let pods = cluster::member_pods(&c, &ns.name, CLUSTER).await?;
    for pod in &pods {
        let ip = pod.ip.clone().unwrap_or_default();
        let show = |setting: &'static str| {
            let (ip, user, password) = (ip.clone(), user.clone(), password.clone());
            async move {
                let conn = format!(
                    "host={ip} port={} user={user} password={password} dbname=postgres connect_timeout=3",
                    contract::PG_PORT
                );
                let (client, connection) =
                    tokio_postgres::connect(&conn, tokio_postgres::NoTls).await?;
                tokio::spawn(connection);
                let row = client.query_one(&format!("SHOW {setting}"), &[]).await?;
                anyhow::Ok(row.get::<_, String>(0))
            }
        };
        ensure!(
            show("work_mem").await? == "7MB",
            "work_mem not reloaded on {}",
            pod.name
        );
        ensure!(
            show("max_connections").await? == "50",
            "max_connections changed without a restart"
        );
    }
    // A restart (through the API, replicas first) applies it and clears the flag.
    let mut order: Vec<&cluster::MemberPod> = pods.iter().collect();
    order.sort_by_key(|p| p.name == primary);
    for pod in order {
        let ip = pod.ip.clone().unwrap_or_default();
        let (status, body) = rest::post(&c, &ns.name, CLUSTER, &ip, "/restart", None).await?;
        ensure!(
            status == 200,
            "restart of {} answered {status}: {body}",
            pod.name
        );
    }
    pgpilot_e2e::wait_for(
        "no pending_restart after the restarts",
        Duration::from_secs(60),
        Duration::from_millis(500),
        || async {
            let reports = rest::reports(&c, &ns.name, CLUSTER).await?;
            Ok((reports.len() == 3 && reports.values().all(|r| !r.pending_restart)).then_some(()))
        },
    )
    .await?;
    let after = rest::wait_converged(&c, &ns.name, CLUSTER, Duration::from_secs(60)).await?;
    ensure!(
        after == primary,
        "the restarts moved the primary to {after}"
    );
    // The tag removed: the replica takes read traffic again.
    ns.kubectl(&[
        "patch",
        "postgrescluster",
        CLUSTER,
        "--type",
        "json",
        "-p",
        r#"[{"op":"remove","path":"/spec/tags"}]"#,
    ])?;
    wait_balanced(&c, &ns, &primary, None).await?;
    Ok(())
}
