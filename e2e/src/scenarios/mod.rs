//! The faults the fault matrix (`tests/faults.rs`) and the soak (`tests/soak.rs`) inject, one body each:
//! it runs on a [`Harness`] already converged, injects through the fault hooks (or `kubectl`, or the
//! members' REST API), waits for what the fault should cause, heals, and marks the heal; what it requires
//! beyond the checker's properties it notes on the harness ([`Requirement`]). Bodies name members by role
//! — the primary, a replica, the recorded synchronous standby — found from the probes and the Lease when
//! they run, so the soak can run any of them in any state.
//!
//! - [`basic`]: a container killed, a pod frozen or cut off, a node partitioned or stopped, the
//!   apiserver stopped, a pod deleted, a scale, a switchover;
//! - [`grey`]: the faults of issue 13 — a slow apiserver (one lost reply, or 30 s), the Lease deleted
//!   and recreated, a partitioned primary's pod force-deleted, `spec.ha` changed, the other standby cut
//!   while the synchronous one lags, a pause during a partition, `POST /restart` on every member.

pub mod basic;
pub mod grey;

use std::time::Duration;

use anyhow::{Context, Result};
use pgpilot_crds::contract;

use crate::{
    TestNamespace,
    checker::{
        harness::Harness,
        verdict::{Micros, Verdict},
    },
    cluster::{self, LeaseRecord},
};

/// The replication mode of the cluster under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Sync,
    Async,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Sync => "sync",
            Mode::Async => "async",
        }
    }
}

/// Lease timings in seconds: leaseDuration, renewDeadline, retryPeriod (`spec.ha`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timings {
    pub lease: u64,
    pub renew: u64,
    pub retry: u64,
}

impl Timings {
    /// The CRD's defaults.
    pub const DEFAULT: Self = Self::new(15, 10, 2);
    /// For scenarios whose waits are Lease-bound and that test nothing of the defaults.
    pub const SHORT: Self = Self::new(6, 4, 1);
    /// The longer timings of the `spec.ha` change (issue 13: 15/10/2 → 30/20/5 → 15/10/2).
    pub const LONG: Self = Self::new(30, 20, 5);

    pub const fn new(lease: u64, renew: u64, retry: u64) -> Self {
        Self {
            lease,
            renew,
            retry,
        }
    }

    pub fn lease(self) -> Duration {
        Duration::from_secs(self.lease)
    }

    /// How long convergence may take after the heal: a failover (`leaseDuration` at worst, L2), then the
    /// old primary back as a replica (restart, `pg_rewind` or a fresh clone, streaming), plus what
    /// `recovery` adds.
    pub fn converge_bound(self, recovery: Recovery) -> Duration {
        let extra = match recovery {
            Recovery::Member => 0,
            Recovery::Node => 30,
            Recovery::NodeRestart => 60,
            Recovery::SecondFailover => self.lease,
        };
        Duration::from_secs(2 * self.lease + 30 + extra)
    }

    /// How long a primary may serve before `-rw` reaches it: its sidecar relabels the pod within a loop
    /// (`retryPeriod`), the EndpointSlice follows at once and kube-proxy within about a second, the writer
    /// reconnects within its 3 s bound; `renewDeadline` (10 s at the least) leaves room for a loaded
    /// 2-core machine and still catches a role label that missed its patch (issue 13: 27 s).
    pub fn route_bound(self) -> Duration {
        Duration::from_secs(self.renew.max(10))
    }

    /// The longest a commit may wait in a synchronous mode when the synchronous standby is cut off (L3,
    /// issue 13 hole 3): the primary notices a standby's last reply on its next loop (one `retryPeriod`),
    /// judges it gone once `renewDeadline/2` passed, on a loop (one more), and in that loop drops it from
    /// the Lease's record and configures the next standby; 2 s for loops slowed by the peer that no longer
    /// answers (1 s each at most) and for the writer's reconnect.
    pub fn sync_gap_bound(self) -> Duration {
        Duration::from_millis(self.renew * 500 + 2 * self.retry * 1000 + 2000)
    }

    /// `spec.ha` as a merge patch of the PostgresCluster.
    pub fn patch(self) -> String {
        format!(
            r#"{{"spec":{{"ha":{{"leaseDurationSeconds":{},"renewDeadlineSeconds":{},"retryPeriodSeconds":{}}}}}}}"#,
            self.lease, self.renew, self.retry
        )
    }
}

/// What a fault leaves to recover besides the member it hit (see [`Timings::converge_bound`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recovery {
    /// A member restarts, rewinds or re-clones.
    Member,
    /// A node was cut off: its kubelet catches up (pods recreated while it was away start now).
    Node,
    /// A node was stopped: containerd and the kubelet start again, its pods are restarted.
    NodeRestart,
    /// Two failovers in a row.
    SecondFailover,
}

/// The cluster a body runs against.
#[derive(Clone, Debug)]
pub struct Scene {
    pub namespace: String,
    pub cluster: String,
    pub mode: Mode,
    /// The timings in force (a body that changes `spec.ha` updates them).
    pub timings: Timings,
    /// In a synchronous mode: the standbys the Lease recorded as synchronous before the fault.
    pub sync_standbys: Vec<String>,
    /// Picks among equivalent members (which replica): 0 in the matrix, random in the soak.
    pub choice: u64,
}

impl Scene {
    /// `<namespace>/<pod>`, a fault hook's target.
    pub fn target(&self, pod: &str) -> String {
        format!("{}/{pod}", self.namespace)
    }

    /// `kubectl -n <namespace> ...`
    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        let mut all = vec!["-n", self.namespace.as_str()];
        all.extend_from_slice(args);
        crate::kubectl(&all)
    }

    /// `kubectl get KIND` of the cluster's objects (its label), printed as `output` (`-o`).
    pub fn get_of_cluster(&self, kind: &str, output: &str) -> Result<String> {
        let selector = format!("{}={}", pgpilot_crds::contract::LABEL_CLUSTER, self.cluster);
        self.kubectl(&["get", kind, "-l", &selector, "-o", output])
    }

    /// A merge patch of the PostgresCluster.
    pub fn patch_spec(&self, patch: &str) -> Result<String> {
        let pgc = format!("pgc/{}", self.cluster);
        self.kubectl(&["patch", &pgc, "--type", "merge", "-p", patch])
    }

    /// One of `candidates`, by [`Scene::choice`].
    pub fn pick<'a>(&self, candidates: &'a [String]) -> Option<&'a String> {
        let n = u64::try_from(candidates.len()).ok().filter(|n| *n > 0)?;
        candidates.get(usize::try_from(self.choice % n).ok()?)
    }
}

/// The member the probes see writable.
pub async fn primary(h: &Harness) -> Result<String> {
    Ok(h.wait_primary(Duration::from_secs(30)).await?)
}

/// The members other than the primary.
pub async fn replicas(h: &Harness) -> Result<Vec<String>> {
    let p = primary(h).await?;
    Ok(h.members.iter().filter(|m| **m != p).cloned().collect())
}

/// A replica, picked by the scene.
pub async fn replica(h: &Harness, s: &Scene) -> Result<String> {
    s.pick(&replicas(h).await?).cloned().context("no replica")
}

/// Waits until a member other than `old` accepts writes.
pub async fn wait_new_primary(h: &Harness, old: &str, timeout: Duration) -> Result<String> {
    Ok(h.wait_new_primary(old, timeout).await?)
}

/// The node a member runs on.
pub async fn node_of(h: &Harness, member: &str) -> Result<String> {
    h.pods()
        .await?
        .into_iter()
        .find(|p| p.name == member)
        .and_then(|p| p.node)
        .context("member has no node")
}

/// The cluster's Lease now.
pub async fn lease(h: &Harness) -> Result<LeaseRecord> {
    Ok(cluster::lease(&h.client, &h.namespace, &contract::lease_name(&h.cluster)).await?)
}

pub async fn sleep_secs(s: u64) {
    tokio::time::sleep(Duration::from_secs(s)).await;
}

pub fn micros(d: Duration) -> Micros {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// What a failed round prints beside its verdict: for a failed body with a passing verdict, the timeline
/// and each member's last HA decision (a failed verdict's table shows them already); then the cluster.
pub fn print_failure(verdict: &Verdict, ns: &TestNamespace, cluster: &str, members: usize) {
    if verdict.passed() {
        println!("{}  last HA decisions:", verdict.timeline_text());
        for (member, decision) in &verdict.last_decisions {
            println!("    {member}: {decision}");
        }
    }
    eprintln!("{}", cluster::describe(ns, cluster, members));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_follow_the_timings() {
        let t = Timings::DEFAULT;
        assert_eq!(t.converge_bound(Recovery::Member), Duration::from_secs(60));
        assert_eq!(
            t.converge_bound(Recovery::NodeRestart),
            Duration::from_secs(120)
        );
        assert_eq!(t.sync_gap_bound(), Duration::from_secs(11));
        assert_eq!(Timings::SHORT.route_bound(), Duration::from_secs(10));
        assert_eq!(
            Timings::LONG.patch(),
            r#"{"spec":{"ha":{"leaseDurationSeconds":30,"renewDeadlineSeconds":20,"retryPeriodSeconds":5}}}"#
        );
    }

    #[test]
    fn the_choice_picks_among_equivalent_members() {
        let s = Scene {
            namespace: "ns".into(),
            cluster: "pg".into(),
            mode: Mode::Sync,
            timings: Timings::DEFAULT,
            sync_standbys: vec![],
            choice: 3,
        };
        let two = vec!["pg-0".to_owned(), "pg-2".to_owned()];
        assert_eq!(s.pick(&two).map(String::as_str), Some("pg-2"));
        assert_eq!(s.pick(&[]), None);
        assert_eq!(s.target("pg-1"), "ns/pg-1");
    }
}
