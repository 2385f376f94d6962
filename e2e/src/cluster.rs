//! The one reader of a cluster under test from Kubernetes: its member pods, Secrets, Service ClusterIPs
//! and ready endpoints, and its Lease record — for pgpilot clusters and, through a label selector and a
//! role label, for Patroni's too (the benchmark). IO only; every call is one bounded request.
//!
//! What a failing test prints about the cluster ([`describe`]) is here as well: the same objects, as
//! `kubectl` shows them, with the members' last log lines.

use std::time::{Duration, Instant};

use k8s_openapi::api::{
    coordination::v1::Lease,
    core::v1::{Pod, Secret, Service},
    discovery::v1::EndpointSlice,
};
use kube::{Api, Client, api::ListParams};
use pgpilot_crds::contract;

use crate::{TestNamespace, clock::Micros};

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("reading {what}")]
    Kube {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("{0} has no {1}")]
    Missing(String, &'static str),
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, String),
}

fn kube_error(what: String) -> impl FnOnce(kube::Error) -> ClusterError {
    move |source| ClusterError::Kube { what, source }
}

/// The pods of one cluster: where they are and how to tell them apart.
#[derive(Clone, Debug)]
pub struct Members {
    pub namespace: String,
    /// Label selector of the member pods.
    pub selector: String,
    /// The label that carries a pod's role (Patroni labels its pods differently).
    pub role_label: String,
}

impl Members {
    /// The members of the pgpilot cluster `cluster` in `namespace`.
    pub fn pgpilot(namespace: &str, cluster: &str) -> Self {
        Self {
            namespace: namespace.into(),
            selector: format!("{}={cluster}", contract::LABEL_CLUSTER),
            role_label: contract::LABEL_ROLE.into(),
        }
    }
}

/// A member pod as the apiserver last showed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberPod {
    pub name: String,
    pub uid: String,
    pub ip: Option<String>,
    pub node: Option<String>,
    /// The role label.
    pub role: Option<String>,
    pub ready: bool,
    pub terminating: bool,
    /// How long the kubelet waits before it starts a container of this pod again, while one waits in
    /// `CrashLoopBackOff` (the kubelet's message names the back-off: `back-off 1m20s restarting …`).
    pub crash_loop_backoff: Option<Duration>,
}

impl MemberPod {
    /// The probe stream name of this pod incarnation: `<member>@<first 8 characters of the uid>`.
    pub fn stream(&self) -> String {
        format!("{}@{}", self.name, self.uid.get(..8).unwrap_or(&self.uid))
    }
}

/// The IP of the pod named `name` among `pods`.
pub fn ip_of(pods: &[MemberPod], name: &str) -> Option<String> {
    pods.iter().find(|p| p.name == name)?.ip.clone()
}

/// How many of `pods` are Ready and not being deleted.
pub fn ready_count(pods: &[MemberPod]) -> usize {
    pods.iter().filter(|p| p.ready && !p.terminating).count()
}

/// The pgpilot cluster's member pods, by name.
pub async fn member_pods(
    client: &Client,
    ns: &str,
    cluster: &str,
) -> Result<Vec<MemberPod>, ClusterError> {
    pods(client, &Members::pgpilot(ns, cluster)).await
}

/// The pods of `members`, by name.
pub async fn pods(client: &Client, members: &Members) -> Result<Vec<MemberPod>, ClusterError> {
    let Members {
        namespace,
        selector,
        role_label,
    } = members;
    let pods = Api::<Pod>::namespaced(client.clone(), namespace)
        .list(&ListParams::default().labels(selector))
        .await
        .map_err(kube_error(format!("pods {selector} in {namespace}")))?;
    let mut found: Vec<MemberPod> = pods
        .items
        .into_iter()
        .filter_map(|p| {
            let name = p.metadata.name.clone()?;
            let uid = p.metadata.uid.clone()?;
            let status = p.status.as_ref();
            Some(MemberPod {
                name,
                uid,
                ip: status.and_then(|s| s.pod_ip.clone()),
                node: p.spec.as_ref().and_then(|s| s.node_name.clone()),
                role: p
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(role_label).cloned()),
                ready: status
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True")),
                terminating: p.metadata.deletion_timestamp.is_some(),
                crash_loop_backoff: status
                    .and_then(|s| s.container_statuses.as_ref())
                    .into_iter()
                    .flatten()
                    .filter_map(|c| c.state.as_ref()?.waiting.as_ref())
                    .filter(|w| w.reason.as_deref() == Some("CrashLoopBackOff"))
                    .filter_map(|w| backoff_of(w.message.as_deref()?))
                    .max(),
            })
        })
        .collect();
    found.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(found)
}

/// Polls the pods of `members` every 250 ms until `accept` holds for them (a failed read counts as not
/// yet); returns them.
pub async fn wait_pods(
    client: &Client,
    members: &Members,
    what: &str,
    timeout: Duration,
    accept: impl Fn(&[MemberPod]) -> bool,
) -> Result<Vec<MemberPod>, ClusterError> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(found) = pods(client, members).await
            && accept(&found)
        {
            return Ok(found);
        }
        if Instant::now() > deadline {
            return Err(ClusterError::Timeout(timeout, what.into()));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits until `n` pods of `members` are Ready.
pub async fn wait_ready(
    client: &Client,
    members: &Members,
    n: usize,
    timeout: Duration,
) -> Result<Vec<MemberPod>, ClusterError> {
    let what = format!("{n} Ready members in {}", members.namespace);
    wait_pods(client, members, &what, timeout, |p| ready_count(p) == n).await
}

/// A user name and password from one of the cluster's Secrets (`kind` is one of
/// [`contract::SECRET_KINDS`]).
pub async fn credentials(
    client: &Client,
    ns: &str,
    cluster: &str,
    kind: &str,
) -> Result<(String, String), ClusterError> {
    let name = contract::secret_name(cluster, kind);
    let secret = Api::<Secret>::namespaced(client.clone(), ns)
        .get(&name)
        .await
        .map_err(kube_error(format!("secret {ns}/{name}")))?;
    let field = |key: &'static str| {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .map(|v| String::from_utf8_lossy(&v.0).into_owned())
            .ok_or_else(|| ClusterError::Missing(format!("secret {ns}/{name}"), key))
    };
    Ok((field("username")?, field("password")?))
}

/// The ClusterIP of a Service.
pub async fn cluster_ip(client: &Client, ns: &str, service: &str) -> Result<String, ClusterError> {
    let svc = Api::<Service>::namespaced(client.clone(), ns)
        .get(service)
        .await
        .map_err(kube_error(format!("service {ns}/{service}")))?;
    svc.spec
        .and_then(|s| s.cluster_ip)
        .filter(|ip| !ip.is_empty() && ip != "None")
        .ok_or_else(|| ClusterError::Missing(format!("service {ns}/{service}"), "ClusterIP"))
}

/// The ready endpoint addresses of a Service, sorted.
pub async fn ready_endpoints(
    client: &Client,
    ns: &str,
    service: &str,
) -> Result<Vec<String>, ClusterError> {
    let lp = ListParams::default().labels(&format!("kubernetes.io/service-name={service}"));
    let slices = Api::<EndpointSlice>::namespaced(client.clone(), ns)
        .list(&lp)
        .await
        .map_err(kube_error(format!("endpointslices of {ns}/{service}")))?
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

/// What a cluster's Lease records.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LeaseRecord {
    /// `None` when the holder is empty (released).
    pub holder: Option<String>,
    /// `leaseTransitions`: the fencing epoch (L7).
    pub transitions: i32,
    /// The members the holder recorded as synchronous ([`contract::ANNOTATION_SYNC_MEMBERS`]).
    pub sync_members: Vec<String>,
    /// `leaseDurationSeconds` as last written (the operator's at creation, then the holder's: L6).
    #[serde(default)]
    pub duration_secs: Option<i32>,
    /// The database system identifier the holder recorded ([`contract::ANNOTATION_SYSTEM_ID`], L4).
    #[serde(default)]
    pub system_identifier: Option<String>,
}

impl LeaseRecord {
    /// The recorded synchronous members other than the holder: the standbys that may take over in a
    /// synchronous mode (L3).
    pub fn sync_standbys(&self) -> Vec<&str> {
        self.sync_members
            .iter()
            .map(String::as_str)
            .filter(|m| Some(*m) != self.holder.as_deref())
            .collect()
    }
}

/// What the election reads from a Lease object.
pub fn record_of(lease: &Lease) -> LeaseRecord {
    let spec = lease.spec.clone().unwrap_or_default();
    let annotation = |key: &str| {
        lease
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(key))
            .cloned()
    };
    let sync_members = annotation(contract::ANNOTATION_SYNC_MEMBERS)
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|m| !m.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    LeaseRecord {
        holder: spec.holder_identity.filter(|h| !h.is_empty()),
        transitions: spec.lease_transitions.unwrap_or(0),
        sync_members,
        duration_secs: spec.lease_duration_seconds,
        system_identifier: annotation(contract::ANNOTATION_SYSTEM_ID).filter(|v| !v.is_empty()),
    }
}

/// The Lease object `name` as the apiserver has it now.
pub async fn lease_object(client: &Client, ns: &str, name: &str) -> Result<Lease, ClusterError> {
    Api::<Lease>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .map_err(kube_error(format!("lease {ns}/{name}")))
}

/// The Lease `name` (a pgpilot cluster's is [`contract::lease_name`]).
pub async fn lease(client: &Client, ns: &str, name: &str) -> Result<LeaseRecord, ClusterError> {
    Ok(record_of(&lease_object(client, ns, name).await?))
}

/// One write of a Lease as its object shows it: which object (`uid`), which version, and the
/// `renewTime` its writer stamped (the holder's clock, which on this machine is the host's).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseWrite {
    pub uid: String,
    pub resource_version: String,
    pub renewed_at_us: Option<Micros>,
}

/// The Lease `name`'s last write.
pub async fn lease_write(
    client: &Client,
    ns: &str,
    name: &str,
) -> Result<LeaseWrite, ClusterError> {
    let lease = lease_object(client, ns, name).await?;
    Ok(LeaseWrite {
        uid: lease.metadata.uid.unwrap_or_default(),
        resource_version: lease.metadata.resource_version.unwrap_or_default(),
        renewed_at_us: lease
            .spec
            .and_then(|s| s.renew_time)
            .map(|t| t.0.as_microsecond()),
    })
}

/// What a failing test should show about the pgpilot cluster `cluster` in `ns`: the pods (node, role),
/// what the host sees of each member, the last events, the `-rw` Service's EndpointSlices and each
/// member's last log lines (and those of its previous container when the kubelet restarted it).
pub fn describe(ns: &TestNamespace, cluster: &str, members: usize) -> String {
    let section = |args: &[&str], text: &str| format!("--- kubectl {}\n{text}\n", args.join(" "));
    let show = |args: &[&str]| {
        let out = ns.kubectl_output(args, None).map_or_else(
            |e| format!("{e:#}"),
            |o| format!("{}{}", o.stdout, o.stderr),
        );
        section(args, &out)
    };
    let rw = format!("kubernetes.io/service-name={cluster}-rw");
    let mut out = show(&["get", "pods", "-o", "wide", "-L", contract::LABEL_ROLE]);
    // The host's view of every member comes first: CI shows only the head and the tail of a failure.
    for i in 0..members {
        out.push_str(&host_view(&format!("{}/{cluster}-{i}", ns.name)));
    }
    let events = show(&["get", "events", "--sort-by", ".lastTimestamp"]);
    let (header, events) = events.split_once('\n').unwrap_or_default();
    let events: Vec<&str> = events.lines().collect();
    out.push_str(&format!(
        "{header} (the last 25)\n{}\n",
        events[events.len().saturating_sub(25)..].join("\n")
    ));
    out.push_str(&show(&["get", "endpointslices", "-l", &rw, "-o", "yaml"]));
    for i in 0..members {
        let pod = format!("{cluster}-{i}");
        let logs = [
            "logs",
            &pod,
            "-c",
            contract::POSTGRES_CONTAINER,
            "--tail",
            "60",
        ];
        // A container the kubelet restarted: what it did before it was killed is the story.
        let previous_args = [&logs[..], &["--previous"]].concat();
        let previous = ns.kubectl_output(&previous_args, None);
        if let Some(previous) = previous.ok().filter(|o| o.success) {
            out.push_str(&section(&previous_args, &previous.stdout));
        }
        out.push_str(&show(&logs));
    }
    out
}

/// `e2e/fault host-view NS/POD` as a dump section: a member that stops answering while it runs is either
/// frozen or unreachable (a second network namespace holding its IP, a host link down), and only the host
/// can tell which.
fn host_view(target: &str) -> String {
    let out = std::process::Command::new(crate::fault::hook())
        .args(["host-view", target])
        .env("KUBECONFIG", crate::kubeconfig_path())
        .output();
    let text = out.map_or_else(
        |e| format!("running the hook: {e}"),
        |o| {
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            )
        },
    );
    format!("--- e2e/fault host-view {target}\n{text}\n")
}

/// The back-off in a kubelet's `CrashLoopBackOff` message (`back-off 1m20s restarting failed
/// container=…`): a Go duration of hours, minutes and seconds.
pub fn backoff_of(message: &str) -> Option<Duration> {
    let word = message
        .split_whitespace()
        .skip_while(|w| *w != "back-off")
        .nth(1)?;
    let (mut total, mut number) = (0u64, String::new());
    for ch in word.chars() {
        match ch {
            '0'..='9' => number.push(ch),
            'h' | 'm' | 's' => {
                let unit = match ch {
                    'h' => 3600,
                    'm' => 60,
                    _ => 1,
                };
                total += number.parse::<u64>().ok()? * unit;
                number.clear();
            }
            _ => return None,
        }
    }
    number.is_empty().then(|| Duration::from_secs(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kubelets_back_off_is_read_from_its_message() {
        let m = "back-off 1m20s restarting failed container=postgres pod=pg-1_ns(5d52)";
        assert_eq!(backoff_of(m), Some(Duration::from_secs(80)));
        assert_eq!(
            backoff_of("back-off 10s restarting"),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            backoff_of("back-off 5m0s restarting"),
            Some(Duration::from_secs(300))
        );
        assert_eq!(backoff_of("back-off 1.5s restarting"), None);
        assert_eq!(backoff_of("no such words"), None);
    }

    #[test]
    fn the_sync_standbys_are_the_recorded_members_but_the_holder() {
        let record = LeaseRecord {
            holder: Some("pg-0".into()),
            transitions: 1,
            sync_members: vec!["pg-0".into(), "pg-2".into()],
            ..LeaseRecord::default()
        };
        assert_eq!(record.sync_standbys(), vec!["pg-2"]);
        let only_holder = LeaseRecord {
            sync_members: vec!["pg-0".into()],
            ..record
        };
        assert!(only_holder.sync_standbys().is_empty());
    }
}
