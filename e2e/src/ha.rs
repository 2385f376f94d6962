//! Helpers of the HA scenarios (`e2e/tests/ha.rs`): a PostgresCluster through the operator, its members'
//! REST reports, the `-rw` Service's endpoints, a switchover request, and the sidecars' memory.
//!
//! Every call is bounded in time; the pods are reached on their pod IPs (routable from this host).

use std::{collections::BTreeMap, time::Duration};

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::{coordination::v1::Lease, core::v1::Pod, discovery::v1::EndpointSlice};
use kube::{Api, Client, ResourceExt, api::ListParams};
use pgpilot_crds::contract::{self, MemberReport};

use crate::{TestNamespace, checker::cluster, wait_for};

/// A PostgresCluster manifest: `instances` members, `mode` (`async`, `sync`, `strictSync`), the given
/// HA timings, small PostgreSQL settings for this 2-core machine.
pub fn manifest(
    name: &str,
    instances: u32,
    mode: &str,
    lease: u32,
    renew: u32,
    retry: u32,
) -> String {
    format!(
        r#"apiVersion: pgpilot.io/v1alpha1
kind: PostgresCluster
metadata:
  name: {name}
spec:
  instances: {instances}
  image: postgres:15
  storage:
    size: 1Gi
  postgresql:
    parameters:
      max_connections: "50"
      shared_buffers: 16MB
  replication:
    mode: {mode}
  ha:
    leaseDurationSeconds: {lease}
    renewDeadlineSeconds: {renew}
    retryPeriodSeconds: {retry}
  bootstrap:
    database: app
    owner: app
"#
    )
}

/// Installs the operator into `ns`, applies `manifest` and waits for `instances` Ready member pods.
pub async fn deploy(
    ns: &mut TestNamespace,
    manifest: &str,
    cluster: &str,
    instances: usize,
) -> Result<()> {
    ns.install_operator(&[])?;
    ns.kubectl_output(&["apply", "-f", "-"], Some(manifest))?
        .ok()?;
    let client = crate::client().await?;
    let name = ns.name.clone();
    wait_for(
        "Ready members",
        Duration::from_secs(300),
        Duration::from_secs(2),
        || {
            let client = client.clone();
            let name = name.clone();
            async move {
                let pods = member_pods(&client, &name, cluster).await?;
                let ready = pods.iter().filter(|p| pod_ready(p)).count();
                Ok((ready == instances).then_some(()))
            }
        },
    )
    .await
    .with_context(|| describe(ns, cluster))
}

/// Pods, events and the sidecars' last lines: what a failing test should show.
pub fn describe(ns: &TestNamespace, cluster: &str) -> String {
    let selector = format!("{}={cluster}", contract::LABEL_CLUSTER);
    let pods = ns
        .kubectl(&["get", "pods", "-o", "wide", "-L", contract::LABEL_ROLE])
        .unwrap_or_default();
    let events = ns
        .kubectl(&["get", "events", "--sort-by", ".lastTimestamp"])
        .unwrap_or_default();
    let logs = ns
        .kubectl(&[
            "logs",
            "-l",
            &selector,
            "-c",
            contract::POSTGRES_CONTAINER,
            "--tail",
            "30",
            "--prefix",
        ])
        .unwrap_or_default();
    let tail = |s: &str, n: usize| {
        s.lines()
            .rev()
            .take(n)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    };
    format!(
        "pods:\n{pods}\nevents:\n{}\nsidecar logs:\n{logs}",
        tail(&events, 25)
    )
}

pub fn pod_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

pub async fn member_pods(client: &Client, ns: &str, cluster: &str) -> Result<Vec<Pod>> {
    let lp = ListParams::default().labels(&format!("{}={cluster}", contract::LABEL_CLUSTER));
    let mut pods = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&lp)
        .await?
        .items;
    pods.sort_by_key(ResourceExt::name_any);
    Ok(pods)
}

pub fn pod_ip(p: &Pod) -> Option<String> {
    p.status.as_ref()?.pod_ip.clone()
}

/// The IP of the pod named `name` among `pods`.
pub fn pod_ip_of(pods: &[Pod], name: &str) -> Option<String> {
    pods.iter().find(|p| p.name_any() == name).and_then(pod_ip)
}

pub fn role_label(p: &Pod) -> Option<String> {
    p.labels().get(contract::LABEL_ROLE).cloned()
}

/// `GET /patroni` of a member, 2 s bound.
pub async fn report(ip: &str) -> Result<MemberReport> {
    let url = format!("http://{ip}:{}/patroni", contract::REST_PORT);
    let r = reqwest::Client::new()
        .get(&url)
        .timeout(Duration::from_secs(2))
        .send()
        .await?;
    Ok(r.json().await?)
}

/// Every member's report, by pod name.
pub async fn reports(
    client: &Client,
    ns: &str,
    cluster: &str,
) -> Result<BTreeMap<String, MemberReport>> {
    let mut out = BTreeMap::new();
    for pod in member_pods(client, ns, cluster).await? {
        let ip = pod_ip(&pod).with_context(|| format!("{} has no IP", pod.name_any()))?;
        out.insert(pod.name_any(), report(&ip).await?);
    }
    Ok(out)
}

/// The Lease's holder and transitions.
pub async fn lease(client: &Client, ns: &str, cluster: &str) -> Result<(Option<String>, i32)> {
    let lease = Api::<Lease>::namespaced(client.clone(), ns)
        .get(&contract::lease_name(cluster))
        .await?;
    let spec = lease.spec.unwrap_or_default();
    Ok((
        spec.holder_identity.filter(|h| !h.is_empty()),
        spec.lease_transitions.unwrap_or(0),
    ))
}

/// The ready endpoint addresses of a Service.
pub async fn ready_endpoints(client: &Client, ns: &str, service: &str) -> Result<Vec<String>> {
    let lp = ListParams::default().labels(&format!("kubernetes.io/service-name={service}"));
    let slices = Api::<EndpointSlice>::namespaced(client.clone(), ns)
        .list(&lp)
        .await?
        .items;
    let mut ips: Vec<String> = slices
        .iter()
        .flat_map(|s| s.endpoints.iter().flatten())
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(false))
        .flat_map(|e| e.addresses.clone())
        .collect();
    ips.sort();
    Ok(ips)
}

/// The one member whose report says running primary, if exactly one does.
pub fn single_primary(reports: &BTreeMap<String, MemberReport>) -> Option<String> {
    let primaries: Vec<&String> = reports
        .iter()
        .filter(|(_, r)| r.role == contract::ROLE_PRIMARY && r.state == "running")
        .map(|(n, _)| n)
        .collect();
    (primaries.len() == 1).then(|| primaries[0].clone())
}

/// Waits until one primary runs and every other member streams from it; returns the primary.
pub async fn wait_converged(
    client: &Client,
    ns: &str,
    cluster: &str,
    timeout: Duration,
) -> Result<String> {
    wait_for(
        "one primary and streaming replicas",
        timeout,
        Duration::from_millis(500),
        || async {
            let reports = reports(client, ns, cluster).await?;
            let Some(primary) = single_primary(&reports) else {
                return Ok(None);
            };
            let streaming = reports
                .iter()
                .filter(|(n, _)| **n != primary)
                .all(|(_, r)| {
                    r.role == contract::ROLE_REPLICA
                        && r.replication_state.as_deref() == Some("streaming")
                });
            Ok(streaming.then_some(primary))
        },
    )
    .await
}

/// `POST /switchover` on `ip` with the cluster's API credentials; returns (status, body).
pub async fn switchover(
    client: &Client,
    ns: &str,
    cluster: &str,
    ip: &str,
    leader: &str,
    candidate: &str,
) -> Result<(u16, String)> {
    let body = serde_json::json!({ "leader": leader, "candidate": candidate });
    post(client, ns, cluster, ip, "/switchover", Some(body)).await
}

/// A mutating REST call on `ip` with the cluster's API credentials; returns (status, body).
pub async fn post(
    client: &Client,
    ns: &str,
    cluster: &str,
    ip: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<(u16, String)> {
    let (user, password) = cluster::credentials(client, ns, cluster, "api").await?;
    let url = format!("http://{ip}:{}{path}", contract::REST_PORT);
    let mut request = reqwest::Client::new()
        .post(&url)
        .basic_auth(user, Some(password))
        .timeout(Duration::from_secs(70));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let r = request.send().await?;
    let status = r.status().as_u16();
    Ok((status, r.text().await.unwrap_or_default()))
}

/// Resident memory (VmRSS, KiB) of every `pgpilot-sidecar` process on this machine.
pub fn sidecar_rss_kib() -> Result<Vec<u64>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc")? {
        let path = entry?.path();
        let Ok(cmdline) = std::fs::read(path.join("cmdline")) else {
            continue;
        };
        let first = cmdline.split(|b| *b == 0).next().unwrap_or_default();
        if !String::from_utf8_lossy(first).ends_with(contract::SIDECAR_BINARY) {
            continue;
        }
        let Ok(status) = std::fs::read_to_string(path.join("status")) else {
            continue;
        };
        if let Some(kib) = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        {
            out.push(kib);
        }
    }
    Ok(out)
}

/// Fails unless `cond` holds, with the cluster's description.
pub fn check(cond: bool, ns: &TestNamespace, cluster: &str, what: &str) -> Result<()> {
    if !cond {
        bail!("{what}\n{}", describe(ns, cluster));
    }
    Ok(())
}

/// The member names of a cluster of `n`.
pub fn members(cluster: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{cluster}-{i}")).collect()
}

/// Asserts the report set has exactly `n` members.
pub fn ensure_members(reports: &BTreeMap<String, MemberReport>, n: usize) -> Result<()> {
    ensure!(
        reports.len() == n,
        "expected {n} members, got {:?}",
        reports.keys().collect::<Vec<_>>()
    );
    Ok(())
}

/// The local apiserver's audit log (written by `make cluster`).
pub fn audit_log() -> std::path::PathBuf {
    crate::repo_dir().join("target/e2e/logs/audit.log")
}

/// The audit log's current length: where a measurement window starts.
pub fn audit_offset() -> Result<u64> {
    Ok(std::fs::metadata(audit_log())?.len())
}

/// One write by a sidecar, from the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditWrite {
    pub verb: String,
    pub resource: String,
    pub name: String,
    /// The pod the ServiceAccount token was bound to.
    pub pod: String,
}

/// Writes (create, update, patch, delete) by the cluster's sidecar ServiceAccount logged after `offset`.
pub fn sidecar_writes_since(offset: u64, ns: &str, cluster: &str) -> Result<Vec<AuditWrite>> {
    use std::io::{BufRead, Seek, SeekFrom};
    let user = format!(
        "system:serviceaccount:{ns}:{}",
        contract::service_account_name(cluster)
    );
    let mut file = std::fs::File::open(audit_log())?;
    file.seek(SeekFrom::Start(offset))?;
    let mut out = Vec::new();
    for line in std::io::BufReader::new(file).lines() {
        let line = line?;
        if !line.contains(&user) {
            continue;
        }
        let Ok(e) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        let verb = e["verb"].as_str().unwrap_or_default();
        if e["stage"] != "ResponseComplete"
            || e["user"]["username"] != user.as_str()
            || !matches!(verb, "create" | "update" | "patch" | "delete")
        {
            continue;
        }
        out.push(AuditWrite {
            verb: verb.into(),
            resource: e["objectRef"]["resource"]
                .as_str()
                .unwrap_or_default()
                .into(),
            name: e["objectRef"]["name"].as_str().unwrap_or_default().into(),
            pod: e["user"]["extra"]["authentication.kubernetes.io/pod-name"][0]
                .as_str()
                .unwrap_or_default()
                .into(),
        });
    }
    Ok(out)
}
