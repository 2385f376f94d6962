//! A system's cluster in a fresh namespace: pgpilot through its chart's operator and the tests' own
//! manifest ([`crate::deploy::Manifest`], asynchronous, 15/10/2), Patroni from `e2e/patroni/patroni.yaml`
//! with the system's timings; then its `-rw` target and credentials. Scaling to more members is here too.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use kube::Client;
use pgpilot_crds::contract;

use super::System;
use crate::{
    TestNamespace,
    checker::pg::Target,
    clock::now_us,
    cluster::{self, Members},
    deploy::Manifest,
    repo_dir,
};

/// A deployed cluster of one system.
pub struct Deployed {
    pub ns: TestNamespace,
    /// The cluster's name (`pg` or `pat`): its pods are `<name>-0`, ….
    pub name: String,
    pub members: Members,
    /// The agents' ServiceAccount (whose API writes are counted).
    pub agent_sa: String,
    pub superuser_password: String,
    pub rw: Target,
    /// The member names, `<name>-0` … .
    pub member_names: Vec<String>,
    pub patroni: bool,
}

impl Deployed {
    /// The agent's process name in each pod.
    pub fn agent_comm(&self) -> &'static str {
        if self.patroni {
            "patroni"
        } else {
            contract::SIDECAR_BINARY
        }
    }

    /// The container that runs the agent and PostgreSQL.
    pub fn container(&self) -> &'static str {
        if self.patroni {
            "patroni"
        } else {
            contract::POSTGRES_CONTAINER
        }
    }
}

/// Random-enough passwords for the Patroni cluster (it is deleted after the run).
fn password(tag: &str) -> String {
    format!("bench{tag}{:x}", now_us() ^ i64::from(std::process::id()))
}

fn patroni_manifest(
    sys: &System,
    name: &str,
    replicas: usize,
    passwords: &[(&str, &str); 3],
) -> Result<String> {
    let template = std::fs::read_to_string(repo_dir().join("e2e/patroni/patroni.yaml"))
        .context("e2e/patroni/patroni.yaml")?;
    let (ttl, retry_timeout, loop_wait) = sys.timings;
    let mut out = template
        .replace("${NAME}", name)
        .replace(
            "${IMAGE}",
            &std::env::var("PATRONI_IMAGE").unwrap_or_else(|_| "localhost/patroni:4.1.5".into()),
        )
        .replace("${REPLICAS}", &replicas.to_string())
        .replace("${TTL}", &ttl.to_string())
        .replace("${LOOP_WAIT}", &loop_wait.to_string())
        .replace("${RETRY_TIMEOUT}", &retry_timeout.to_string());
    for (key, value) in passwords {
        out = out.replace(&format!("${{{key}}}"), value);
    }
    if out.contains("${") {
        bail!("patroni.yaml has a placeholder the benchmark does not fill");
    }
    Ok(out)
}

/// Deploys `sys` with 3 members in a fresh namespace; returns it and the apply → all Ready time.
pub async fn deploy(kube: &Client, sys: &System) -> Result<(Deployed, f64)> {
    let mut ns = TestNamespace::create(&format!("bench-{}", &sys.id[..7.min(sys.id.len())]))?;
    let name = if sys.patroni { "pat" } else { "pg" }.to_owned();
    let (superuser, app) = (password("s"), password("a"));
    let (manifest, members, agent_sa) = if sys.patroni {
        let pw = [
            ("SUPERUSER_PASSWORD", superuser.as_str()),
            ("REPLICATION_PASSWORD", &password("r")),
            ("APP_PASSWORD", app.as_str()),
        ];
        let members = Members {
            namespace: ns.name.clone(),
            selector: format!("application=patroni,cluster-name={name}"),
            role_label: "role".to_owned(),
        };
        (
            patroni_manifest(sys, &name, 3, &pw)?,
            members,
            format!("{name}-patroni"),
        )
    } else {
        ns.install_operator(&[])?;
        (
            Manifest::new(&name, 3, "async").render(),
            Members::pgpilot(&ns.name, &name),
            contract::service_account_name(&name),
        )
    };
    let started = Instant::now();
    ns.kubectl_output(&["apply", "-f", "-"], Some(&manifest))?
        .ok()
        .context("kubectl apply")?;
    wait_ready(kube, &members, 3, Duration::from_secs(300)).await?;
    let ready = started.elapsed().as_secs_f64();
    let rw_ip = cluster::cluster_ip(kube, &ns.name, &format!("{name}-rw")).await?;
    let (superuser_password, rw) = if sys.patroni {
        (
            superuser,
            Target {
                host: rw_ip,
                port: 5432,
                user: "app".into(),
                password: app,
                dbname: "app".into(),
            },
        )
    } else {
        let (_, su) = cluster::credentials(kube, &ns.name, &name, "superuser").await?;
        let (user, pw) = cluster::credentials(kube, &ns.name, &name, "app").await?;
        (
            su,
            Target {
                host: rw_ip,
                port: contract::PG_PORT,
                user,
                password: pw,
                dbname: "app".into(),
            },
        )
    };
    let member_names = (0..3).map(|i| format!("{name}-{i}")).collect();
    Ok((
        Deployed {
            ns,
            name,
            members,
            agent_sa,
            superuser_password,
            rw,
            member_names,
            patroni: sys.patroni,
        },
        ready,
    ))
}

/// Waits until `n` pods are Ready and one carries the primary role label.
pub async fn wait_ready(
    kube: &Client,
    members: &Members,
    n: usize,
    timeout: Duration,
) -> Result<()> {
    let what = format!(
        "{n} Ready members in {}, one labelled primary",
        members.namespace
    );
    cluster::wait_pods(kube, members, &what, timeout, |p| {
        cluster::ready_count(p) == n && p.iter().any(|p| p.role.as_deref() == Some("primary"))
    })
    .await?;
    Ok(())
}

/// Scales the cluster to `n` members and waits until they are Ready.
pub async fn scale(kube: &Client, d: &mut Deployed, n: usize) -> Result<()> {
    let replicas = format!("--replicas={n}");
    if d.patroni {
        d.ns.kubectl(&["scale", "statefulset", &d.name, &replicas])?;
    } else {
        d.ns.kubectl(&["scale", &format!("pgc/{}", d.name), &replicas])?;
    }
    wait_ready(kube, &d.members, n, Duration::from_secs(300)).await?;
    d.member_names = (0..n).map(|i| format!("{}-{i}", d.name)).collect();
    Ok(())
}
