//! The measurements on one deployed system, with the checker's writer on `-rw` and its probes in every
//! pod (the [`Rig`]): failover after a fault, switchover unavailability, steady-state footprint and API
//! writes. [`system`] runs them all for one system, in order, and collects every repetition.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use kube::Client;

use super::{
    Args, Series, System,
    audit::writes_per_minute,
    deploy::{self, Deployed},
    say,
};
use crate::{
    checker::{
        probes::{ProbeSet, ProbeTarget},
        verdict::{self, Micros},
        writer::{Pace, Writer},
    },
    clock::now_us,
    cluster::{self, MemberPod},
    fault, host, rest,
};

/// The running measurement rig on one deployed cluster: writer and probes.
struct Rig<'a> {
    kube: &'a Client,
    d: &'a Deployed,
    writer: Writer,
    probes: ProbeSet,
}

/// Runs `e2e/fault verb target`; returns the instant the hook says it acted.
async fn fault(verb: &str, target: &str) -> Result<Micros> {
    let acted = fault::run(verb, target).await?;
    say(&acted.output);
    Ok(acted.at_us)
}

impl Rig<'_> {
    /// The one writable member's pod.
    async fn primary(&self) -> Result<MemberPod> {
        let timeout = Duration::from_secs(60);
        let deadline = Instant::now() + timeout;
        let members = &self.d.member_names;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let one = self
                .probes
                .wait_writable(members, |_| true, "a single writable member", left)
                .await?;
            if let Ok(p) = cluster::pods(self.kube, &self.d.members).await
                && let Some(pod) = p.into_iter().find(|p| p.name == one)
            {
                return Ok(pod);
            }
            if Instant::now() > deadline {
                bail!("no single writable member within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Converged (one writable member, the others streaming) for 2 s, and writes acknowledged.
    async fn settle(&self, timeout: Duration) -> Result<()> {
        let since = now_us();
        let deadline = Instant::now() + timeout;
        let members = &self.d.member_names;
        loop {
            if verdict::converged_at(&self.probes.samples(), members, since, verdict::STABLE_US)
                .is_some()
                && self.writer.first_ack_since(now_us() - 500_000).is_some()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                let shape = verdict::shape_at(&self.probes.samples(), members, now_us());
                bail!("not converged within {timeout:?}: {shape:?}");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Seconds from `at` to the first acknowledged write after it by a server other than `not_from` (the
    /// old primary, when it may still be reachable from the writer and acknowledging: a partitioned node's
    /// pods are, from this host, and in asynchronous mode they acknowledge until they fence themselves).
    async fn writes_back_after(
        &self,
        at: Micros,
        not_from: Option<&str>,
        timeout: Duration,
    ) -> Result<f64> {
        let deadline = Instant::now() + timeout;
        loop {
            let first = match not_from {
                None => self.writer.first_ack_since(at),
                Some(old) => self.writer.first_ack_since_not_from(at, old),
            };
            if let Some(t) = first {
                return Ok((t - at) as f64 / 1e6);
            }
            if Instant::now() > deadline {
                bail!("no acknowledged write within {timeout:?} of the fault");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A failover after `verb` on the primary (pod or node), then `undo` and convergence.
    async fn failover(&self, verb: &str, undo: Option<&str>, on_node: bool) -> Result<f64> {
        self.settle(Duration::from_secs(240)).await?;
        let p = self.primary().await?;
        let target = if on_node {
            p.node.clone().context("primary has no node")?
        } else if verb == "kill" {
            format!("{}/{}/{}", self.d.ns.name, p.name, self.d.container())
        } else {
            format!("{}/{}", self.d.ns.name, p.name)
        };
        let at = fault(verb, &target).await?;
        // A killed primary's processes are gone: any acknowledgement is a recovered primary's (Patroni restarts
        // in place). A cut or partitioned one may still acknowledge: only another member's count.
        let not_from = if verb == "kill" {
            None
        } else {
            p.ip.as_deref()
        };
        let measured = self
            .writes_back_after(at, not_from, Duration::from_secs(180))
            .await;
        if let Some(undo) = undo {
            // Keep the fault a little past the failover, as an outage would last, then heal.
            tokio::time::sleep(Duration::from_secs(3)).await;
            fault(undo, &target).await?;
        }
        measured
    }

    /// A planned switchover to another member: the longest span without an acknowledged write.
    async fn switchover(&self) -> Result<f64> {
        self.settle(Duration::from_secs(240)).await?;
        let p = self.primary().await?;
        let candidate = self
            .d
            .member_names
            .iter()
            .find(|m| **m != p.name)
            .cloned()
            .context("no replica")?;
        let ip = p.ip.clone().context("primary IP")?;
        let auth = if self.d.patroni {
            None
        } else {
            Some(cluster::credentials(self.kube, &self.d.ns.name, &self.d.name, "api").await?)
        };
        let body = serde_json::json!({"leader": p.name, "candidate": candidate});
        let at = now_us();
        let (status, body) = rest::post_as(
            &ip,
            "/switchover",
            Some(body),
            auth,
            Duration::from_secs(90),
        )
        .await?;
        if !(200..300).contains(&status) {
            bail!("switchover refused: {status} {body}");
        }
        // Wait until the candidate accepts writes and writes went on for a while.
        let what = format!("{candidate} accepting writes after the switchover");
        self.probes
            .wait_writable(
                &self.d.member_names,
                |m| m == candidate,
                &what,
                Duration::from_secs(120),
            )
            .await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let acks = self.writer.snapshot().acks;
        let (_, gap) = verdict::longest_write_gap(&acks, at, now_us())
            .context("no acknowledged write after the switchover")?;
        Ok(gap as f64 / 1e6)
    }
}

/// Steady state over `window`: per-agent RSS (MiB) and CPU (%), and API writes per minute (the agents';
/// everything in the namespace).
async fn steady(
    kube: &Client,
    d: &Deployed,
    window: Duration,
) -> Result<(Vec<f64>, Vec<f64>, f64, f64)> {
    let comm = d.agent_comm();
    let p = cluster::pods(kube, &d.members).await?;
    let from = now_us();
    let before = host::agents(&p, comm);
    tokio::time::sleep(window).await;
    let to = now_us();
    let after = host::agents(&p, comm);
    let secs = (to - from) as f64 / 1e6;
    let rss: Vec<f64> = after
        .iter()
        .map(|a| a.rss_bytes as f64 / 1048576.0)
        .collect();
    let cpu: Vec<f64> = after
        .iter()
        .filter_map(|a| {
            before
                .iter()
                .find(|b| b.member == a.member)
                .map(|b| (a.cpu_secs - b.cpu_secs) / secs * 100.0)
        })
        .collect();
    if rss.is_empty() {
        bail!("no {comm} process found in the pods' cgroups");
    }
    // The audit log is written when requests complete: give the last ones a moment.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (agent, all) = writes_per_minute(from, to, &d.ns.name, &d.agent_sa)?;
    Ok((rss, cpu, agent, all))
}

/// Scales to five members and measures the agents' API writes per minute at steady state.
async fn five_members(kube: &Client, d: &mut Deployed, window: Duration) -> Result<f64> {
    deploy::scale(kube, d, 5).await?;
    tokio::time::sleep(Duration::from_secs(20)).await;
    let (_, _, agent, _) = steady(kube, d, window).await?;
    Ok(agent)
}

fn push(series: &mut Series, key: &'static str, value: Result<f64>) {
    let v = value.map_err(|e| format!("{e:#}"));
    match &v {
        Ok(x) => say(format!("{key} = {x:.3}")),
        Err(e) => say(format!("{key} failed: {e}")),
    }
    series.entry(key).or_default().push(v);
}

/// The `pgpilot-probe` binary beside this one.
fn probe_bin() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("pgpilot-probe")))
        .unwrap_or_else(|| PathBuf::from("pgpilot-probe"))
}

/// Every measurement `args` asks for, on `sys`.
pub async fn system(kube: &Client, sys: &System, args: &Args) -> Series {
    let mut series = Series::new();
    say(format!("=== {} ===", sys.label));
    // kubectl apply -> Ready, on fresh namespaces; the last deployment stays for the rest.
    let mut kept: Option<Deployed> = None;
    let wanted_apply = args.wanted("apply");
    let deploys = if wanted_apply { args.reps } else { 1 };
    for rep in 0..deploys {
        match deploy::deploy(kube, sys).await {
            Ok((d, secs)) => {
                if wanted_apply {
                    push(&mut series, "apply_to_ready_s", Ok(secs));
                }
                if rep + 1 == deploys {
                    kept = Some(d);
                }
            }
            Err(e) => push(&mut series, "apply_to_ready_s", Err(e)),
        }
    }
    let Some(mut d) = kept else { return series };
    let writer = Writer::start(d.rw.clone(), Pace::default());
    let probes = ProbeSet::start(
        kube.clone(),
        ProbeTarget {
            members: d.members.clone(),
            lease: None,
            probe_bin: probe_bin(),
            superuser: "postgres".into(),
            password: d.superuser_password.clone(),
        },
    );
    let rig = Rig {
        kube,
        d: &d,
        writer,
        probes,
    };
    if let Err(e) = rig.settle(Duration::from_secs(240)).await {
        say(format!(
            "{} never settled with the writer: {e:#}",
            sys.label
        ));
    }
    let window = Duration::from_secs(args.window_secs);
    if args.wanted("steady") {
        match steady(kube, &d, window).await {
            Ok((rss, cpu, agent, all)) => {
                for v in rss {
                    push(&mut series, "agent_rss_mib", Ok(v));
                }
                for v in cpu {
                    push(&mut series, "agent_cpu_percent", Ok(v));
                }
                push(&mut series, "api_writes_per_min_3", Ok(agent));
                push(&mut series, "all_writes_per_min_3", Ok(all));
            }
            Err(e) => push(&mut series, "agent_rss_mib", Err(e)),
        }
    }
    for _ in 0..args.reps * usize::from(args.wanted("kill")) {
        let v = rig.failover("kill", None, false).await;
        push(&mut series, "kill_primary_s", v);
    }
    for _ in 0..args.reps * usize::from(args.wanted("switchover")) {
        let v = rig.switchover().await;
        push(&mut series, "switchover_unavailable_s", v);
    }
    for _ in 0..args.reps * usize::from(args.wanted("cut")) {
        let v = rig.failover("cut", Some("heal"), false).await;
        push(&mut series, "cut_primary_s", v);
    }
    for _ in 0..args.reps * usize::from(args.wanted("partition")) {
        let v = rig.failover("partition", Some("heal"), true).await;
        push(&mut series, "partition_primary_node_s", v);
    }
    let Rig { writer, probes, .. } = rig;
    if args.wanted("five") {
        // Measured like three members, with the writer running: Patroni's members patch their pods as their
        // WAL positions move, so an idle cluster would understate its writes.
        let v = five_members(kube, &mut d, window).await;
        push(&mut series, "api_writes_per_min_5", v);
    }
    let _ = writer.stop().await;
    let _ = probes.stop().await;
    series
}
