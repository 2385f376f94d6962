//! A pgpilot cluster under test: the one `PostgresCluster` manifest the scenarios, the fault matrix and the
//! benchmark apply (small PostgreSQL settings for this 2-core machine), and its deployment through the
//! Helm chart's operator into a test namespace.

use std::time::Duration;

use anyhow::{Context, Result};

use crate::{
    TestNamespace,
    cluster::{self, MemberPod, Members},
};

/// What varies between the clusters the tests run. Everything else is fixed: 1Gi volumes, `max_connections` 50, `shared_buffers` 16MB, database and owner `app`, one synchronous
/// standby and 1Mi `maximumLagOnFailover` (the CRD's defaults, written out).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    pub name: String,
    pub instances: usize,
    /// `async`, `sync` or `strictSync`.
    pub mode: String,
    /// leaseDuration, renewDeadline, retryPeriod in seconds.
    pub timings: (u32, u32, u32),
    pub failsafe: bool,
    /// One member per node, required (so every node-level fault hits exactly one member).
    pub spread_required: bool,
    /// `spec.image`: [`POSTGRES_15`] unless a row runs on the PostgreSQL 17 stand-in.
    pub image: &'static str,
}

/// The local stand-ins of the stock images (`e2e/images/postgres`, built by `make images`).
pub const POSTGRES_15: &str = "postgres:15";
pub const POSTGRES_17: &str = "postgres:17";

impl Manifest {
    /// `instances` members named `name`-0… in `mode`, with the CRD's default timings (15/10/2 s).
    pub fn new(name: &str, instances: usize, mode: &str) -> Self {
        Self {
            name: name.into(),
            instances,
            mode: mode.into(),
            timings: (15, 10, 2),
            failsafe: false,
            spread_required: false,
            image: POSTGRES_15,
        }
    }

    pub fn render(&self) -> String {
        let Self {
            name,
            instances,
            mode,
            timings: (lease, renew, retry),
            failsafe,
            spread_required,
            image,
        } = self;
        let pod = if *spread_required {
            format!(
                "
    affinity:
      podAntiAffinity:
        requiredDuringSchedulingIgnoredDuringExecution:
          - topologyKey: kubernetes.io/hostname
            labelSelector:
              matchLabels:
                pgpilot.io/cluster: {name}"
            )
        } else {
            " {}".into()
        };
        format!(
            r#"apiVersion: pgpilot.io/v1alpha1
kind: PostgresCluster
metadata:
  name: {name}
spec:
  instances: {instances}
  image: {image}
  storage:
    size: 1Gi
  postgresql:
    parameters:
      max_connections: "50"
      shared_buffers: 16MB
  bootstrap:
    database: app
    owner: app
  replication:
    mode: {mode}
    syncReplicas: 1
    maximumLagOnFailover: 1Mi
  ha:
    leaseDurationSeconds: {lease}
    renewDeadlineSeconds: {renew}
    retryPeriodSeconds: {retry}
    failsafe: {failsafe}
  pod:{pod}
"#
        )
    }
}

/// Installs the operator into `ns`, applies `manifest` and waits up to `timeout` until all its members
/// are Ready; a cluster that does not get there fails with [`cluster::describe`].
pub async fn deploy(
    ns: &mut TestNamespace,
    manifest: &Manifest,
    timeout: Duration,
) -> Result<Vec<MemberPod>> {
    ns.install_operator(&[])?;
    ns.kubectl_output(&["apply", "-f", "-"], Some(&manifest.render()))?
        .ok()
        .context("applying the cluster")?;
    let client = crate::client().await?;
    let members = Members::pgpilot(&ns.name, &manifest.name);
    cluster::wait_ready(&client, &members, manifest.instances, timeout)
        .await
        .with_context(|| cluster::describe(ns, &manifest.name, manifest.instances))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_manifest_carries_what_varies() {
        let m = Manifest {
            failsafe: true,
            spread_required: true,
            timings: (30, 20, 5),
            image: POSTGRES_17,
            ..Manifest::new("pg", 3, "sync")
        };
        let text = m.render();
        for line in [
            "  name: pg",
            "  instances: 3",
            "  image: postgres:17",
            "    mode: sync",
            "    leaseDurationSeconds: 30",
            "    renewDeadlineSeconds: 20",
            "    retryPeriodSeconds: 5",
            "    failsafe: true",
            "        requiredDuringSchedulingIgnoredDuringExecution:",
            "                pgpilot.io/cluster: pg",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} in\n{text}");
        }
        let plain = Manifest::new("pg", 3, "async").render();
        assert!(plain.lines().any(|l| l == "  pod: {}"), "{plain}");
        assert!(!plain.contains("affinity"));
        assert!(
            plain.lines().any(|l| l == "  image: postgres:15"),
            "{plain}"
        );
    }
}
