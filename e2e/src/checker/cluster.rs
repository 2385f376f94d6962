//! What the checker reads about a cluster under test: credentials and the `-rw` ClusterIP (Kubernetes),
//! member pods and the network namespace behind each pod IP (the host's `/run/netns`), and the members'
//! own reports (`GET /patroni`). IO only; every call is bounded in time.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use kube::{Api, Client, api::ListParams};
use pgpilot_crds::contract::{self, MemberReport};

/// Where CNI puts the pods' network namespaces on this machine.
pub const NETNS_DIR: &str = "/run/netns";

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
    #[error("listing network namespaces")]
    Netns(#[source] std::io::Error),
}

/// A user name and password from one of the cluster's Secrets.
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
        .map_err(|source| ClusterError::Kube {
            what: format!("secret {ns}/{name}"),
            source,
        })?;
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
        .map_err(|source| ClusterError::Kube {
            what: format!("service {ns}/{service}"),
            source,
        })?;
    svc.spec
        .and_then(|s| s.cluster_ip)
        .filter(|ip| !ip.is_empty() && ip != "None")
        .ok_or_else(|| ClusterError::Missing(format!("service {ns}/{service}"), "ClusterIP"))
}

/// A member pod as the apiserver last showed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberPod {
    pub name: String,
    pub uid: String,
    pub ip: Option<String>,
    pub node: Option<String>,
    /// The `pgpilot.io/role` label.
    pub role: Option<String>,
    pub ready: bool,
    pub terminating: bool,
}

impl MemberPod {
    /// The probe stream name of this pod incarnation: `<member>@<first 8 characters of the uid>`.
    pub fn stream(&self) -> String {
        format!("{}@{}", self.name, self.uid.get(..8).unwrap_or(&self.uid))
    }
}

/// The cluster's member pods, by name.
pub async fn member_pods(
    client: &Client,
    ns: &str,
    cluster: &str,
) -> Result<Vec<MemberPod>, ClusterError> {
    member_pods_labelled(
        client,
        ns,
        &format!("{}={cluster}", contract::LABEL_CLUSTER),
        contract::LABEL_ROLE,
    )
    .await
}

/// Pods matching `selector`, with the role read from `role_label` (Patroni labels its pods differently).
pub async fn member_pods_labelled(
    client: &Client,
    ns: &str,
    selector: &str,
    role_label: &str,
) -> Result<Vec<MemberPod>, ClusterError> {
    let pods = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(selector))
        .await
        .map_err(|source| ClusterError::Kube {
            what: format!("pods {selector} in {ns}"),
            source,
        })?;
    let mut members: Vec<MemberPod> = pods
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
            })
        })
        .collect();
    members.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(members)
}

/// The network namespace (under [`NETNS_DIR`]) whose `eth0` holds `ip`, if any.
pub async fn netns_of(ip: &str) -> Result<Option<PathBuf>, ClusterError> {
    let mut entries = tokio::fs::read_dir(NETNS_DIR)
        .await
        .map_err(ClusterError::Netns)?;
    let needle = format!(" {ip}/");
    while let Some(entry) = entries.next_entry().await.map_err(ClusterError::Netns)? {
        let name = entry.file_name().to_string_lossy().into_owned();
        let out = tokio::process::Command::new("ip")
            .args(["-n", &name, "-4", "-o", "addr", "show", "dev", "eth0"])
            .output()
            .await
            .map_err(ClusterError::Netns)?;
        if out.status.success() && String::from_utf8_lossy(&out.stdout).contains(&needle) {
            return Ok(Some(entry.path()));
        }
    }
    Ok(None)
}

/// Each member's `GET /patroni` report, or why it could not be read.
pub async fn member_reports(pods: &[MemberPod]) -> BTreeMap<String, Result<MemberReport, String>> {
    let http = match reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
    {
        Ok(h) => h,
        Err(e) => {
            return pods
                .iter()
                .map(|p| (p.name.clone(), Err(e.to_string())))
                .collect();
        }
    };
    let mut out = BTreeMap::new();
    for pod in pods {
        let report = match &pod.ip {
            None => Err("no pod IP".to_owned()),
            Some(ip) => {
                let url = format!("http://{ip}:{}/patroni", contract::REST_PORT);
                match http.get(&url).send().await {
                    Ok(resp) => resp
                        .json::<MemberReport>()
                        .await
                        .map_err(|e| format!("{url}: {e}")),
                    Err(e) => Err(format!("{url}: {e}")),
                }
            }
        };
        out.insert(pod.name.clone(), report);
    }
    out
}

/// Each member's last HA decision in one line (role, state, epoch, decision), for a failing verdict.
pub async fn last_decisions(pods: &[MemberPod]) -> BTreeMap<String, String> {
    member_reports(pods)
        .await
        .into_iter()
        .map(|(name, r)| {
            let line = match r {
                Ok(r) => format!(
                    "role={} state={} epoch={} decision: {}",
                    r.role, r.state, r.pgpilot.epoch, r.pgpilot.last_decision
                ),
                Err(e) => format!("unknown ({e})"),
            };
            (name, line)
        })
        .collect()
}
