//! The other members: their pods (watched, label `pgpilot.io/cluster=<c>`) and their REST reports.
//!
//! Reads only. The pod cache gives pod IPs (REST and replication go to the pod IP, not to DNS), the
//! PostgreSQL container's status for L8, and the role labels for L7/L9. `poll` asks every peer's
//! `GET /patroni` concurrently with a short timeout; a peer that does not answer in time is "unreachable"
//! for this loop and cannot object to an election (docs/design.md L3).

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures::{StreamExt, future::join_all};
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client, ResourceExt,
    runtime::{WatchStreamExt, reflector, reflector::Store, watcher},
};
use pgpilot_crds::contract::{
    ANNOTATION_EPOCH, LABEL_CLUSTER, LABEL_LOAD_BALANCE, LABEL_ROLE, MemberReport,
    POSTGRES_CONTAINER, REST_PORT, is_member,
};
use tokio::sync::Notify;
use tracing::warn;

use crate::{
    election::{PodStatus, RoleMark},
    state::PeerState,
};

/// The cluster's pods and a client for the peers' REST APIs.
#[derive(Clone)]
pub struct Peers {
    me: String,
    cluster: String,
    store: Store<Pod>,
    ready: Arc<AtomicBool>,
    http: reqwest::Client,
    timeout: Duration,
    /// Woken on every pod change, so the HA loop reacts to a dead holder (L8) without waiting a period.
    pub changed: Arc<Notify>,
}

impl std::fmt::Debug for Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peers")
            .field("me", &self.me)
            .finish_non_exhaustive()
    }
}

impl Peers {
    /// Starts watching the cluster's pods in `namespace` (a background task for the process' life).
    pub fn start(
        client: Client,
        namespace: &str,
        cluster: &str,
        me: &str,
        timeout: Duration,
    ) -> Self {
        let api: Api<Pod> = Api::namespaced(client, namespace);
        let (store, writer) = reflector::store();
        let ready = Arc::new(AtomicBool::new(false));
        let changed = Arc::new(Notify::new());
        let config = watcher::Config::default().labels(&format!("{LABEL_CLUSTER}={cluster}"));
        let stream = reflector(writer, watcher(api, config))
            .default_backoff()
            .touched_objects();
        let notify = changed.clone();
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                match event {
                    Ok(_) => notify.notify_one(),
                    Err(error) => warn!(%error, "pod watch error (retrying)"),
                }
            }
        });
        let ready_flag = ready.clone();
        let reader = store.clone();
        tokio::spawn(async move {
            if reader.wait_until_ready().await.is_ok() {
                ready_flag.store(true, Ordering::Release);
            }
        });
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .unwrap_or_default();
        Self {
            me: me.to_owned(),
            cluster: cluster.to_owned(),
            store,
            ready,
            http,
            timeout,
            changed,
        }
    }

    fn pods(&self) -> Vec<Arc<Pod>> {
        let mut pods = self.store.state();
        pods.sort_by_key(|p| p.name_any());
        pods
    }

    fn pod(&self, name: &str) -> Option<Arc<Pod>> {
        self.store.find(|p| p.name_any() == name)
    }

    /// The pod list is complete (the first list finished).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// L8: what the kubelet reports about `member`'s pod.
    pub fn pod_status(&self, member: &str) -> PodStatus {
        if !self.is_ready() {
            return PodStatus::Unknown;
        }
        self.pod(member)
            .map_or(PodStatus::Gone, |pod| pod_status(&pod))
    }

    /// A member's pod IP.
    pub fn ip(&self, member: &str) -> Option<String> {
        self.pod(member)
            .and_then(|p| p.status.as_ref()?.pod_ip.clone())
    }

    /// The role label and epoch annotation of every pod.
    pub fn role_marks(&self) -> Vec<(String, RoleMark)> {
        self.pods()
            .iter()
            .map(|p| (p.name_any(), role_mark(p)))
            .collect()
    }

    /// This member's own pod's role label and epoch, as the cache last saw them.
    pub fn own_mark(&self) -> Option<RoleMark> {
        self.pod(&self.me).map(|p| role_mark(&p))
    }

    /// Asks every other member's `GET /patroni` at once; unanswered within the timeout → `report: None`.
    /// Members are the StatefulSet's pods with an ordinal below `instances` (issue 13 hole 10): any
    /// other pod carrying the cluster label has no vote, no slot and no say in failsafe.
    pub async fn poll(&self, instances: Option<u32>) -> Vec<PeerState> {
        let others: Vec<(String, Option<String>)> = self
            .pods()
            .iter()
            .filter(|p| {
                let name = p.name_any();
                name != self.me && is_member(&self.cluster, &name, instances)
            })
            .map(|p| {
                (
                    p.name_any(),
                    p.status.as_ref().and_then(|s| s.pod_ip.clone()),
                )
            })
            .collect();
        join_all(
            others
                .into_iter()
                .map(|(name, host)| self.state(name, host)),
        )
        .await
    }

    /// A peer's state: its `GET /patroni` answer when its pod has an IP.
    async fn state(&self, name: String, host: Option<String>) -> PeerState {
        let report = match &host {
            Some(ip) => self.report(ip).await,
            None => None,
        };
        PeerState { name, host, report }
    }

    /// The Lease holder when it is not a member — a scale-down lowered `instances` below its ordinal
    /// before it handed over: the members keep streaming from it until it does, so a synchronous
    /// standby can be recorded and take over. It still has no vote ([`Peers::poll`] leaves it out).
    /// `None` for a member or this pod.
    pub async fn poll_holder(&self, holder: &str, instances: Option<u32>) -> Option<PeerState> {
        if holder == self.me || is_member(&self.cluster, holder, instances) {
            return None;
        }
        Some(self.state(holder.to_owned(), self.ip(holder)).await)
    }

    async fn report(&self, ip: &str) -> Option<MemberReport> {
        let url = format!("http://{ip}:{REST_PORT}/patroni");
        let response = self
            .http
            .get(&url)
            .timeout(self.timeout)
            .send()
            .await
            .ok()?;
        response.json::<MemberReport>().await.ok()
    }
}

/// L8 inputs from one pod.
pub fn pod_status(pod: &Pod) -> PodStatus {
    let container = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.name == POSTGRES_CONTAINER));
    PodStatus::Present {
        uid: pod.uid().unwrap_or_default(),
        terminated: container
            .and_then(|c| c.state.as_ref())
            .is_some_and(|s| s.terminated.is_some()),
        restarts: container.map_or(0, |c| u32::try_from(c.restart_count).unwrap_or(0)),
    }
}

fn role_mark(pod: &Pod) -> RoleMark {
    RoleMark {
        role: pod.labels().get(LABEL_ROLE).cloned(),
        epoch: pod
            .annotations()
            .get(ANNOTATION_EPOCH)
            .and_then(|e| e.parse().ok()),
        load_balance: pod.labels().get(LABEL_LOAD_BALANCE).cloned(),
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStatus,
        PodStatus as K8sPodStatus,
    };
    use kube::api::ObjectMeta;

    use super::*;

    fn pod(state: ContainerState, restarts: i32) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("c-0".into()),
                uid: Some("u1".into()),
                ..ObjectMeta::default()
            },
            status: Some(K8sPodStatus {
                container_statuses: Some(vec![ContainerStatus {
                    name: POSTGRES_CONTAINER.into(),
                    state: Some(state),
                    restart_count: restarts,
                    ..ContainerStatus::default()
                }]),
                ..K8sPodStatus::default()
            }),
            ..Pod::default()
        }
    }

    #[test]
    fn container_state_and_restarts_for_l8() {
        let running = ContainerState {
            running: Some(ContainerStateRunning::default()),
            ..ContainerState::default()
        };
        assert_eq!(
            pod_status(&pod(running, 2)),
            PodStatus::Present {
                uid: "u1".into(),
                terminated: false,
                restarts: 2
            }
        );
        let terminated = ContainerState {
            terminated: Some(ContainerStateTerminated::default()),
            ..ContainerState::default()
        };
        assert_eq!(
            pod_status(&pod(terminated, 0)),
            PodStatus::Present {
                uid: "u1".into(),
                terminated: true,
                restarts: 0
            }
        );
    }
}
