//! What exists, read once per reconcile. IO, reads only.
//!
//! [`observe`] reads the StatefulSet, the pods with the cluster label, the Lease, and each sidecar's
//! `GET /patroni` report (short timeout; a sidecar that does not answer is left out). The [`Observed`]
//! it returns is all that [`super::compute`] derives the status from.

use std::{collections::BTreeMap, time::Duration};

use futures::future::join_all;
use k8s_openapi::api::{apps::v1::StatefulSet, coordination::v1::Lease, core::v1::Pod};
use kube::{Api, Client, ResourceExt, api::ListParams};
use pgpilot_crds::contract::{
    self, LABEL_CLUSTER, LABEL_ROLE, MemberReport, REST_PORT, ROLE_PRIMARY,
};
use tracing::debug;

use super::Error;
use crate::validate::ValidatedCluster;

/// How long the operator waits for one sidecar's report.
pub const REPORT_TIMEOUT: Duration = Duration::from_millis(800);

/// What exists, as read in one reconcile.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    pub statefulset: Option<StatefulSet>,
    /// Member pods, sorted by name.
    pub pods: Vec<Pod>,
    pub lease: Option<Lease>,
    /// Sidecar reports by pod name; a pod whose sidecar did not answer is absent.
    pub reports: BTreeMap<String, MemberReport>,
}

impl Observed {
    pub fn pod(&self, name: &str) -> Option<&Pod> {
        self.pods
            .iter()
            .find(|p| p.metadata.name.as_deref() == Some(name))
    }

    /// The Lease holder, if any.
    pub fn holder(&self) -> Option<&str> {
        self.lease
            .as_ref()?
            .spec
            .as_ref()?
            .holder_identity
            .as_deref()
            .filter(|h| !h.is_empty())
    }

    /// The primary: the Lease holder, confirmed by the role label its sidecar put on its pod. Either alone
    /// is not enough: a label can be stale (L7) and a holder may not have promoted yet.
    pub fn primary(&self) -> Option<String> {
        let holder = self.holder()?;
        let labelled = self
            .pod(holder)?
            .labels()
            .get(LABEL_ROLE)
            .is_some_and(|r| r == ROLE_PRIMARY);
        labelled.then(|| holder.to_owned())
    }

    /// The cluster's database system identifier, as recorded on the Lease by the member that ran
    /// `initdb` (issue 13, hole 4).
    pub fn system_identifier(&self) -> Option<&str> {
        self.lease
            .as_ref()?
            .metadata
            .annotations
            .as_ref()?
            .get(contract::ANNOTATION_SYSTEM_ID)
            .map(String::as_str)
            .filter(|id| !id.is_empty())
    }

    /// The Lease's synchronous record.
    pub fn sync_members(&self) -> Vec<String> {
        self.lease.as_ref().map(sync_record).unwrap_or_default()
    }

    pub fn epoch(&self) -> Option<i64> {
        self.lease
            .as_ref()?
            .spec
            .as_ref()?
            .lease_transitions
            .map(i64::from)
    }
}

/// A Lease's synchronous record (`pgpilot.io/sync-members`, comma-separated).
pub fn sync_record(lease: &Lease) -> Vec<String> {
    lease
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(contract::ANNOTATION_SYNC_MEMBERS))
        .map(|s| {
            s.split(',')
                .map(str::trim)
                .filter(|m| !m.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

fn pod_ip(pod: &Pod) -> Option<&str> {
    pod.status
        .as_ref()?
        .pod_ip
        .as_deref()
        .filter(|ip| !ip.is_empty())
}

/// Reads one sidecar's report; `None` when it does not answer in time or answers garbage.
async fn fetch_report(http: &reqwest::Client, ip: &str) -> Option<MemberReport> {
    let url = format!("http://{ip}:{REST_PORT}/patroni");
    let response = http.get(&url).timeout(REPORT_TIMEOUT).send().await.ok()?;
    // Patroni answers /patroni with 200 whatever the role; a 503 body is still a valid report.
    match response.json::<MemberReport>().await {
        Ok(r) => Some(r),
        Err(e) => {
            debug!(%url, error = %e, "unreadable member report");
            None
        }
    }
}

pub async fn observe(
    client: &Client,
    http: &reqwest::Client,
    c: &ValidatedCluster,
) -> Result<Observed, Error> {
    let ns = c.namespace.as_str();
    let statefulset = Api::<StatefulSet>::namespaced(client.clone(), ns)
        .get_opt(&c.name)
        .await
        .map_err(|source| Error::Read {
            kind: "StatefulSet",
            source,
        })?;
    let mut pods = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&format!("{LABEL_CLUSTER}={}", c.name)))
        .await
        .map_err(|source| Error::Read {
            kind: "Pods",
            source,
        })?
        .items;
    // Members are the StatefulSet's pods with an ordinal below `instances` (docs/design.md L3): another
    // pod carrying the cluster label neither counts as ready nor speaks for the cluster. While a
    // scale-down is under way, the pods it has not removed yet still count (one of them may be the
    // primary, handing over).
    let replicas = statefulset
        .as_ref()
        .and_then(|s| s.spec.replicas)
        .unwrap_or(0);
    let instances = u32::try_from(c.spec.instances.max(replicas)).ok();
    pods.retain(|p| contract::is_member(&c.name, &p.name_any(), instances));
    pods.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let lease = Api::<Lease>::namespaced(client.clone(), ns)
        .get_opt(&contract::lease_name(&c.name))
        .await
        .map_err(|source| Error::Read {
            kind: "Lease",
            source,
        })?;
    let fetches = pods
        .iter()
        .filter_map(|p| Some((p.name_any(), pod_ip(p)?.to_owned())))
        .map(|(name, ip)| async move { fetch_report(http, &ip).await.map(|r| (name, r)) });
    let reports = join_all(fetches).await.into_iter().flatten().collect();
    Ok(Observed {
        statefulset,
        pods,
        lease,
        reports,
    })
}
