//! HA scenarios on the local cluster, through the Helm chart, the operator and real pods: a 3-member
//! cluster converges (and in steady state only the holder writes to Kubernetes, L9); a killed primary
//! container fails over and the old primary rejoins; a frozen primary is fenced and rejoins after the
//! thaw; a deleted primary pod releases the Lease; a switchover and a primary kill in `sync` mode lose no
//! acknowledged write; REST reload/restart/reinitialize act; spec parameters are reloaded or reported as
//! pending restart. The fault scenarios run the fault-matrix checker (writer through `-rw`, probes in
//! every pod) and fail on its verdict; the figures (failover time, switchover unavailability, sidecar
//! RSS, API writes) are printed, never asserted as timings (DESIGN.md: benchmarks, not timed tests).

use std::{path::PathBuf, time::Duration};

use anyhow::bail;
use anyhow::{Result, ensure};
use pgpilot_crds::contract;
use pgpilot_crds::contract::MemberReport;
use pgpilot_e2e::{
    TestNamespace, audit,
    checker::{
        harness::Harness,
        verdict::{Expectations, Verdict},
    },
    client,
    clock::now_us,
    cluster, deploy, host, rest,
};
use std::collections::BTreeMap;

const CLUSTER: &str = "pg";

fn probe_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_pgpilot-probe"))
}

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

fn ms(us: Option<i64>) -> String {
    us.map_or("-".into(), |u| format!("{:.0} ms", u as f64 / 1000.0))
}

fn passed(v: &Verdict, ns: &TestNamespace) -> Result<()> {
    ensure!(
        v.failures.is_empty(),
        "{}: {:?}\n{}",
        v.scenario,
        v.failures,
        cluster::describe(ns, CLUSTER, 3)
    );
    ensure!(
        v.split_brain.is_empty(),
        "two writable members: {:?}",
        v.split_brain
    );
    Ok(())
}

/// Waits until a member other than `old` is the one writable member. (Right after a fault the probes
/// still hold the old primary's last sample, so "one writable member" alone could be the old one.)
async fn wait_new_primary(h: &Harness, old: &str, timeout: Duration) -> Result<(String, Duration)> {
    let since = std::time::Instant::now();
    loop {
        match h.writable_member() {
            Some(m) if m != old => return Ok((m, since.elapsed())),
            _ if since.elapsed() > timeout => {
                anyhow::bail!("no member other than {old} became writable")
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// A cluster of 3 with the default timings (15/10/2 s) in `mode`, converged.
async fn three(prefix: &str, mode: &str) -> Result<(TestNamespace, String)> {
    let mut ns = TestNamespace::create(prefix)?;
    deploy::deploy(
        &mut ns,
        &deploy::Manifest::new(CLUSTER, 3, mode),
        Duration::from_secs(300),
    )
    .await?;
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
async fn killing_the_primary_container_promotes_a_replica_and_the_old_one_rejoins() -> Result<()> {
    let (ns, primary) = three("ha-kill", "async").await?;
    let c = client().await?;
    let mut h = Harness::start(c.clone(), &ns.name, CLUSTER, 3, probe_bin()).await?;
    let target = format!("{}/{primary}/{}", ns.name, contract::POSTGRES_CONTAINER);
    h.fault("kill", &target).await?;
    let (new_primary, after) = wait_new_primary(&h, &primary, Duration::from_secs(60)).await?;
    h.mark(format!("checker: {new_primary} writable"));
    println!("kill primary container: {new_primary} writable (probe) {after:?} after the kill");
    h.healed();
    let v = h
        .finish(
            "kill-primary",
            "async",
            Expectations {
                max_lost: None,
                converge_within_us: 60_000_000,
            },
            Duration::from_secs(30),
        )
        .await?;
    println!(
        "kill primary container: writes resumed after {}, longest write gap {}, lost (async) {}",
        ms(v.writes_resumed_us),
        ms(v.longest_write_gap_us),
        v.lost.len()
    );
    passed(&v, &ns)?;
    ensure!(
        v.final_primary.as_deref() != Some(primary.as_str()),
        "the killed primary {primary} is still primary"
    );
    // The old primary rejoined as a streaming replica.
    let now_primary = rest::wait_converged(&c, &ns.name, CLUSTER, Duration::from_secs(90)).await?;
    ensure!(now_primary != primary);
    Ok(())
}

#[tokio::test]
#[ignore = "needs the local cluster (make cluster)"]
async fn a_frozen_primary_is_fenced_by_the_time_a_replica_takes_over_and_rejoins() -> Result<()> {
    let (ns, primary) = three("ha-freeze", "async").await?;
    let c = client().await?;
    let mut h = Harness::start(c.clone(), &ns.name, CLUSTER, 3, probe_bin()).await?;
    let target = format!("{}/{primary}", ns.name);
    h.fault("freeze", &target).await?;
    // Frozen past leaseDuration: a replica takes over (L2), the frozen one cannot renew. (Right after
    // the freeze the probes still hold the frozen primary's last sample, so wait for another member.)
    let (new_primary, after) = wait_new_primary(&h, &primary, Duration::from_secs(60)).await?;
    println!("freeze primary: {new_primary} writable (probe) {after:?} after the freeze");
    let holder = cluster::lease(&c, &ns.name, &contract::lease_name(CLUSTER))
        .await?
        .holder;
    ensure!(
        holder.as_deref() == Some(new_primary.as_str()),
        "holder {holder:?}"
    );
    h.mark(format!(
        "checker: {new_primary} writable, thawing {primary}"
    ));
    h.fault("thaw", &target).await?;
    h.healed();
    let v = h
        .finish(
            "freeze-primary",
            "async",
            Expectations {
                max_lost: None,
                converge_within_us: 60_000_000,
            },
            Duration::from_secs(30),
        )
        .await?;
    println!(
        "freeze primary: writes resumed after {}, lost (async) {}",
        ms(v.writes_resumed_us),
        v.lost.len()
    );
    // No span with two writable members: the thawed primary was fenced (L5) before it could serve.
    passed(&v, &ns)?;
    let after = rest::wait_converged(&c, &ns.name, CLUSTER, Duration::from_secs(90)).await?;
    ensure!(after == new_primary, "primary moved again to {after}");
    Ok(())
}

#[tokio::test]
#[ignore = "needs the local cluster (make cluster)"]
async fn switchover_moves_the_primary_without_losing_an_acknowledged_write() -> Result<()> {
    let (ns, primary) = three("ha-switch", "async").await?;
    let c = client().await?;
    let pods = cluster::member_pods(&c, &ns.name, CLUSTER).await?;
    let candidate = members(CLUSTER, 3)
        .into_iter()
        .find(|m| *m != primary)
        .unwrap_or_default();
    let mut h = Harness::start(c.clone(), &ns.name, CLUSTER, 3, probe_bin()).await?;
    h.fault_marked(
        now_us(),
        format!("POST /switchover {primary} -> {candidate}"),
    );
    // Sent to a replica on purpose: it forwards to the primary.
    let via = cluster::ip_of(&pods, &candidate).unwrap_or_default();
    let (status, body) =
        rest::switchover(&c, &ns.name, CLUSTER, &via, &primary, &candidate).await?;
    h.mark(format!("checker: switchover answered {status} {body}"));
    ensure!(
        status == 200,
        "switchover answered {status}: {body}\n{}",
        cluster::describe(&ns, CLUSTER, 3)
    );
    let now = h
        .wait_new_primary(&primary, Duration::from_secs(30))
        .await?;
    ensure!(now == candidate, "{now} is primary, not {candidate}");
    h.healed();
    let v = h
        .finish(
            "switchover",
            "async",
            Expectations {
                max_lost: Some(0),
                converge_within_us: 60_000_000,
            },
            Duration::from_secs(30),
        )
        .await?;
    println!(
        "switchover: write unavailability (longest gap) {}, first write after {}, lost {}",
        ms(v.longest_write_gap_us),
        ms(v.writes_resumed_us),
        v.lost.len()
    );
    passed(&v, &ns)?;
    ensure!(v.lost.is_empty(), "lost {:?}", v.lost);
    Ok(())
}

#[tokio::test]
#[ignore = "needs the local cluster (make cluster)"]
async fn sync_mode_a_primary_kill_loses_no_acknowledged_write() -> Result<()> {
    let (ns, primary) = three("ha-sync", "sync").await?;
    let c = client().await?;
    // The synchronous member is recorded before it is relied on (L3).
    let recorded = pgpilot_e2e::wait_for(
        "a recorded synchronous member",
        Duration::from_secs(60),
        Duration::from_millis(500),
        || async {
            let reports = rest::reports(&c, &ns.name, CLUSTER).await?;
            let lease = cluster::lease(&c, &ns.name, &contract::lease_name(CLUSTER)).await?;
            let members = lease.sync_members.join(",");
            Ok((!members.is_empty() && reports.len() == 3).then_some(members))
        },
    )
    .await?;
    let mut h = Harness::start(c.clone(), &ns.name, CLUSTER, 3, probe_bin()).await?;
    h.mark(format!("checker: synchronous members {recorded}"));
    h.fault(
        "kill",
        &format!("{}/{primary}/{}", ns.name, contract::POSTGRES_CONTAINER),
    )
    .await?;
    let (new_primary, _) = wait_new_primary(&h, &primary, Duration::from_secs(60)).await?;
    h.mark(format!("checker: {new_primary} writable"));
    h.healed();
    let v = h
        .finish(
            "kill-primary",
            "sync",
            Expectations {
                max_lost: Some(0),
                converge_within_us: 60_000_000,
            },
            Duration::from_secs(30),
        )
        .await?;
    println!(
        "sync kill: writes resumed after {}, acknowledged {}, lost {}",
        ms(v.writes_resumed_us),
        v.acknowledged,
        v.lost.len()
    );
    passed(&v, &ns)?;
    ensure!(
        v.lost.is_empty(),
        "lost acknowledged writes in sync mode: {:?}",
        v.lost
    );
    let final_primary = v.final_primary.clone().unwrap_or_default();
    ensure!(
        final_primary == new_primary,
        "the primary moved again: {new_primary}, then {final_primary}"
    );
    ensure!(
        recorded.split(',').any(|m| m == new_primary),
        "{new_primary} was not a recorded synchronous member ({recorded})"
    );
    Ok(())
}

#[tokio::test]
#[ignore = "needs the local cluster (make cluster)"]
async fn deleting_the_primary_pod_releases_the_lease_and_a_replica_takes_over() -> Result<()> {
    let (ns, primary) = three("ha-term", "async").await?;
    let c = client().await?;
    let epoch_before = cluster::lease(&c, &ns.name, &contract::lease_name(CLUSTER))
        .await?
        .transitions;
    let mut h = Harness::start(c.clone(), &ns.name, CLUSTER, 3, probe_bin()).await?;
    // SIGTERM (pod deletion): the sidecar stops PostgreSQL fast and releases the Lease (L4), which a
    // replica claims at once (L2) instead of waiting for it to expire.
    h.fault_marked(now_us(), format!("kubectl delete pod {primary}"));
    ns.kubectl(&["delete", "pod", &primary, "--wait=false"])?;
    let (new_primary, after) = wait_new_primary(&h, &primary, Duration::from_secs(60)).await?;
    h.mark(format!("checker: {new_primary} writable"));
    println!("delete primary pod: {new_primary} writable (probe) {after:?} after the deletion");
    h.healed();
    let v = h
        .finish(
            "delete-primary-pod",
            "async",
            Expectations {
                max_lost: Some(0),
                converge_within_us: 120_000_000,
            },
            Duration::from_secs(30),
        )
        .await?;
    println!(
        "delete primary pod: writes resumed after {}, lost {}",
        ms(v.writes_resumed_us),
        v.lost.len()
    );
    passed(&v, &ns)?;
    let cluster::LeaseRecord {
        holder,
        transitions: epoch_after,
        ..
    } = cluster::lease(&c, &ns.name, &contract::lease_name(CLUSTER)).await?;
    ensure!(
        holder.as_deref() == Some(new_primary.as_str()),
        "holder {holder:?}"
    );
    ensure!(
        epoch_after == epoch_before + 1,
        "one takeover: epoch {epoch_before} -> {epoch_after}"
    );
    // Well before the 15 s lease would have expired: the release was used.
    ensure!(
        after < Duration::from_secs(10),
        "takeover took {after:?}: the Lease was not released"
    );
    Ok(())
}

#[tokio::test]
#[ignore = "needs the local cluster (make cluster)"]
async fn rest_restart_reload_and_reinitialize_act_on_the_member() -> Result<()> {
    let (ns, primary) = three("ha-rest", "async").await?;
    let c = client().await?;
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

#[tokio::test]
#[ignore = "needs the local cluster (make cluster)"]
async fn spec_parameters_are_reloaded_or_reported_pending_restart() -> Result<()> {
    let (ns, primary) = three("ha-params", "async").await?;
    let c = client().await?;
    // work_mem applies by reload; max_connections needs a restart (PostgreSQL's `postmaster` context).
    let patch =
        r#"{"spec":{"postgresql":{"parameters":{"work_mem":"7MB","max_connections":"60"}}}}"#;
    ns.kubectl(&[
        "patch",
        "postgrescluster",
        CLUSTER,
        "--type",
        "merge",
        "-p",
        patch,
    ])?;
    let members = members(CLUSTER, 3);
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
    Ok(())
}
