//! `pgpilot-bench` (`make bench`): pgpilot and Patroni 4.x side by side on the local cluster.
//!
//! For each system — pgpilot with its default timings, Patroni with its documented defaults, Patroni with
//! pgpilot's timings — it measures, as the median of `--reps` repetitions:
//! - `kubectl apply` → every member Ready;
//! - with the checker's writer on the `-rw` Service: primary container killed, primary pod's network cut,
//!   primary node partitioned → the first acknowledged write after the fault; a planned switchover → the
//!   longest span without an acknowledged write;
//! - at steady state: each agent's RSS and CPU, and the Kubernetes API writes per minute of the agents'
//!   ServiceAccount (from the apiserver's audit log), for 3 and for 5 members.
//!
//! It prints a table with both systems and their ratio and writes `results.json` under `--out`. It asserts
//! nothing about speed: a measurement that fails is reported as missing, with the reason, and the run goes
//! on. Every wait is bounded.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::Parser;
use kube::Client;
use pgpilot_crds::contract;
use pgpilot_e2e::{
    TestNamespace,
    checker::{
        cluster::{self, MemberPod},
        harness::{acted_at, fault_hook},
        probes::{ProbeSet, ProbeTarget},
        verdict::{self, Micros},
        writer::{Pace, Target, Writer},
    },
    client,
    clock::{micros_of, now_us},
    repo_dir,
};
use serde::Serialize;
use serde_json::json;

#[derive(Parser, Debug)]
#[command(
    about = "pgpilot vs Patroni on the local cluster: failover, switchover, start-up, footprint"
)]
struct Args {
    /// Repetitions of every measurement (the median is reported).
    #[arg(long, default_value_t = 5, env = "BENCH_REPS")]
    reps: usize,
    /// Where results.json goes.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// Systems to run (pgpilot, patroni-defaults, patroni-pgpilot-timings); all when empty.
    #[arg(long, value_delimiter = ',', env = "BENCH_SYSTEMS")]
    systems: Vec<String>,
    /// Measurements to take (apply, steady, kill, switchover, cut, partition, five); all when empty.
    /// `partition` disturbs every pod on the primary's node: leave it out on a cluster others are using.
    #[arg(long, value_delimiter = ',', env = "BENCH_MEASURE")]
    measure: Vec<String>,
    /// Keep the results already in `--out/results.json` and replace only what this run measures (to
    /// re-measure one metric of one system).
    #[arg(long)]
    merge: bool,
    /// Measure nothing: print the table of `--out/results.json` again (and rewrite `table.md`).
    #[arg(long)]
    table_only: bool,
    /// Seconds over which steady-state CPU and API writes are measured.
    #[arg(long, default_value_t = 60)]
    window_secs: u64,
}

/// One system under test.
#[derive(Clone, Debug, Serialize)]
struct System {
    id: &'static str,
    label: &'static str,
    /// pgpilot: leaseDuration/renewDeadline/retryPeriod; Patroni: ttl/retry_timeout/loop_wait.
    timings: (u32, u32, u32),
    patroni: bool,
}

const SYSTEMS: [System; 3] = [
    System {
        id: "pgpilot",
        label: "pgpilot (15/10/2)",
        timings: (15, 10, 2),
        patroni: false,
    },
    System {
        id: "patroni-defaults",
        label: "Patroni 4.1.5 defaults (ttl 30, loop 10)",
        timings: (30, 10, 10),
        patroni: true,
    },
    // Patroni needs loop_wait + 2 * retry_timeout <= ttl: with ttl 15 and loop_wait 2, retry_timeout is 6.
    System {
        id: "patroni-pgpilot-timings",
        label: "Patroni 4.1.5 at pgpilot's timings (ttl 15, loop 2)",
        timings: (15, 6, 2),
        patroni: true,
    },
];

/// The measurements, by name: every repetition's value (or why it is missing).
type Series = BTreeMap<&'static str, Vec<Result<f64, String>>>;

/// What is measured, its unit and how the table labels it.
const METRICS: [(&str, &str, &str); 10] = [
    (
        "kill_primary_s",
        "s",
        "primary container killed -> writes accepted",
    ),
    (
        "cut_primary_s",
        "s",
        "primary pod network cut -> writes accepted",
    ),
    (
        "partition_primary_node_s",
        "s",
        "primary node partitioned -> writes accepted",
    ),
    (
        "switchover_unavailable_s",
        "s",
        "planned switchover: writes unavailable",
    ),
    ("apply_to_ready_s", "s", "kubectl apply -> 3 members Ready"),
    ("agent_rss_mib", "MiB", "agent RSS per member (steady)"),
    ("agent_cpu_percent", "%", "agent CPU per member (steady)"),
    (
        "api_writes_per_min_3",
        "/min",
        "agent API writes per minute, 3 members",
    ),
    (
        "api_writes_per_min_5",
        "/min",
        "agent API writes per minute, 5 members",
    ),
    (
        "all_writes_per_min_3",
        "/min",
        "API writes/min incl. operator, 3 members",
    ),
];

fn say(what: impl AsRef<str>) {
    eprintln!(
        "{} bench: {}",
        jiff::Timestamp::now().strftime("%H:%M:%S"),
        what.as_ref()
    );
}

fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// A deployed cluster of one system.
struct Deployed {
    ns: TestNamespace,
    name: String,
    selector: String,
    role_label: String,
    agent_sa: String,
    superuser_password: String,
    rw: Target,
    members: Vec<String>,
}

/// Random-enough passwords for the Patroni cluster (it is deleted after the run).
fn password(tag: &str) -> String {
    format!("bench{tag}{:x}", now_us() ^ i64::from(std::process::id()))
}

fn pgpilot_manifest(instances: usize) -> String {
    format!(
        "apiVersion: pgpilot.io/v1alpha1\nkind: PostgresCluster\nmetadata:\n  name: pg\nspec:\n  instances: {instances}\n  \
         image: postgres:15\n  storage:\n    size: 1Gi\n  postgresql:\n    parameters:\n      max_connections: \"50\"\n      \
         shared_buffers: 16MB\n  bootstrap:\n    database: app\n    owner: app\n  replication:\n    mode: async\n  ha:\n    \
         leaseDurationSeconds: 15\n    renewDeadlineSeconds: 10\n    retryPeriodSeconds: 2\n"
    )
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
async fn deploy(kube: &Client, sys: &System) -> Result<(Deployed, f64)> {
    let mut ns = TestNamespace::create(&format!("bench-{}", &sys.id[..7.min(sys.id.len())]))?;
    let name = if sys.patroni { "pat" } else { "pg" }.to_owned();
    let (superuser, app) = (password("s"), password("a"));
    let (manifest, selector, role_label, agent_sa) = if sys.patroni {
        let pw = [
            ("SUPERUSER_PASSWORD", superuser.as_str()),
            ("REPLICATION_PASSWORD", &password("r")),
            ("APP_PASSWORD", app.as_str()),
        ];
        (
            patroni_manifest(sys, &name, 3, &pw)?,
            format!("application=patroni,cluster-name={name}"),
            "role".to_owned(),
            format!("{name}-patroni"),
        )
    } else {
        ns.install_operator(&[])?;
        (
            pgpilot_manifest(3),
            format!("{}={name}", contract::LABEL_CLUSTER),
            contract::LABEL_ROLE.to_owned(),
            contract::service_account_name(&name),
        )
    };
    let started = Instant::now();
    ns.kubectl_output(&["apply", "-f", "-"], Some(&manifest))?
        .ok()
        .context("kubectl apply")?;
    wait_ready(
        kube,
        &ns.name,
        &selector,
        &role_label,
        3,
        Duration::from_secs(300),
    )
    .await?;
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
    let members = (0..3).map(|i| format!("{name}-{i}")).collect();
    Ok((
        Deployed {
            ns,
            name,
            selector,
            role_label,
            agent_sa,
            superuser_password,
            rw,
            members,
        },
        ready,
    ))
}

async fn pods(kube: &Client, ns: &str, selector: &str, role_label: &str) -> Result<Vec<MemberPod>> {
    Ok(cluster::member_pods_labelled(kube, ns, selector, role_label).await?)
}

/// Waits until `n` pods are Ready and one carries the primary role label.
async fn wait_ready(
    kube: &Client,
    ns: &str,
    selector: &str,
    role_label: &str,
    n: usize,
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(p) = pods(kube, ns, selector, role_label).await
            && p.iter().filter(|p| p.ready && !p.terminating).count() == n
            && p.iter().any(|p| p.role.as_deref() == Some("primary"))
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{n} Ready members in {ns} not within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Runs `e2e/fault verb target`; returns the instant the hook says it acted.
async fn fault(verb: &str, target: &str) -> Result<Micros> {
    let before = now_us();
    let out = tokio::process::Command::new(fault_hook())
        .args([verb, target])
        .output()
        .await?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!("e2e/fault {verb} {target}: {text}");
    }
    say(text.trim());
    Ok(acted_at(&text).unwrap_or(before))
}

/// The running measurement rig on one deployed cluster: writer and probes.
struct Rig<'a> {
    kube: &'a Client,
    d: &'a Deployed,
    writer: Writer,
    probes: ProbeSet,
}

impl Rig<'_> {
    async fn primary(&self) -> Result<MemberPod> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let shape = verdict::shape_at(&self.probes.samples(), &self.d.members, now_us());
            if let [one] = shape.writable.as_slice()
                && let Ok(p) = pods(
                    self.kube,
                    &self.d.ns.name,
                    &self.d.selector,
                    &self.d.role_label,
                )
                .await
                && let Some(pod) = p.into_iter().find(|p| &p.name == one)
            {
                return Ok(pod);
            }
            if Instant::now() > deadline {
                bail!("no single writable member within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Converged (one writable member, the others streaming) for 2 s, and writes acknowledged.
    async fn settle(&self, timeout: Duration) -> Result<()> {
        let since = now_us();
        let deadline = Instant::now() + timeout;
        loop {
            if verdict::converged_at(
                &self.probes.samples(),
                &self.d.members,
                since,
                verdict::STABLE_US,
            )
            .is_some()
                && self.writer.first_ack_since(now_us() - 500_000).is_some()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                let shape = verdict::shape_at(&self.probes.samples(), &self.d.members, now_us());
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
            let container = if self.d.name == "pat" {
                "patroni"
            } else {
                contract::POSTGRES_CONTAINER
            };
            format!("{}/{}/{container}", self.d.ns.name, p.name)
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

    async fn switchover(&self) -> Result<f64> {
        self.settle(Duration::from_secs(240)).await?;
        let p = self.primary().await?;
        let candidate = self
            .d
            .members
            .iter()
            .find(|m| **m != p.name)
            .cloned()
            .context("no replica")?;
        let ip = p.ip.clone().context("primary IP")?;
        let mut req = reqwest::Client::new()
            .post(format!("http://{ip}:8008/switchover"))
            .json(&json!({"leader": p.name, "candidate": candidate}))
            .timeout(Duration::from_secs(90));
        if self.d.name != "pat" {
            let (user, pw) =
                cluster::credentials(self.kube, &self.d.ns.name, &self.d.name, "api").await?;
            req = req.basic_auth(user, Some(pw));
        }
        let at = now_us();
        let resp = req.send().await?;
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            bail!("switchover refused: {status} {body}");
        }
        // Wait until the candidate accepts writes and writes went on for a while.
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let shape = verdict::shape_at(&self.probes.samples(), &self.d.members, now_us());
            if shape.writable == [candidate.clone()] {
                break;
            }
            if Instant::now() > deadline {
                bail!("{candidate} never became primary after the switchover");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let acks = self.writer.snapshot().acks;
        let (_, gap) = verdict::longest_write_gap(&acks, at, now_us())
            .context("no acknowledged write after the switchover")?;
        Ok(gap as f64 / 1e6)
    }
}

/// Each member's agent (RSS bytes, CPU seconds), found through its pod's cgroup on the host: the sum over
/// the pod's processes named `comm` (Patroni runs as two: a PID-1 reaper and the agent).
fn agents(pods: &[MemberPod], comm: &str) -> Vec<(String, u64, f64)> {
    let mut per_member: BTreeMap<String, (u64, f64)> = BTreeMap::new();
    for (member, rss, cpu) in agent_processes(pods, comm) {
        let e = per_member.entry(member).or_default();
        e.0 += rss;
        e.1 += cpu;
    }
    per_member
        .into_iter()
        .map(|(m, (rss, cpu))| (m, rss, cpu))
        .collect()
}

/// Every process named `comm` in the pods' cgroups: (member, RSS bytes, CPU seconds).
fn agent_processes(pods: &[MemberPod], comm: &str) -> Vec<(String, u64, f64)> {
    let ticks = 100.0; // USER_HZ on Linux
    let mut out = Vec::new();
    for p in pods {
        let Some(node) = &p.node else { continue };
        let root = PathBuf::from(format!("/sys/fs/cgroup/freezer/pgpilot/{node}/kubepods"));
        for pid in cgroup_pids(&root, &format!("pod{}", p.uid)) {
            let Ok(c) = std::fs::read_to_string(format!("/proc/{pid}/comm")) else {
                continue;
            };
            if c.trim() != comm {
                continue;
            }
            let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find(|l| l.starts_with("VmRSS:"))
                        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                })
                .unwrap_or(0)
                * 1024;
            let cpu = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    let rest = s.rsplit_once(')')?.1;
                    let f: Vec<&str> = rest.split_whitespace().collect();
                    Some(
                        (f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / ticks,
                    )
                })
                .unwrap_or(0.0);
            out.push((p.name.clone(), rss, cpu));
        }
    }
    out
}

/// Every pid in the cgroup directory named `pod_dir` below `root` (two levels down: qos/pod), containers
/// included.
fn cgroup_pids(root: &Path, pod_dir: &str) -> Vec<u32> {
    let mut dirs = vec![root.join(pod_dir)];
    if let Ok(entries) = std::fs::read_dir(root) {
        dirs.extend(entries.flatten().map(|e| e.path().join(pod_dir)));
    }
    let mut pids = Vec::new();
    for pod in dirs.into_iter().filter(|d| d.is_dir()) {
        let mut stack = vec![pod];
        while let Some(d) = stack.pop() {
            if let Ok(text) = std::fs::read_to_string(d.join("cgroup.procs")) {
                pids.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
            }
            if let Ok(entries) = std::fs::read_dir(&d) {
                stack.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
            }
        }
    }
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// The audit log of the running kube-apiserver (its `--audit-log-path`: whichever checkout last started the
/// control plane decides where it is), else this checkout's `target/e2e/logs/audit.log`.
fn audit_log_path() -> PathBuf {
    let running = std::fs::read_dir("/proc").ok().and_then(|procs| {
        procs.flatten().find_map(|p| {
            let cmdline = std::fs::read(p.path().join("cmdline")).ok()?;
            let args: Vec<String> = cmdline
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            if !args.first()?.ends_with("/kube-apiserver") {
                return None;
            }
            let at = args.iter().position(|a| a == "--audit-log-path")?;
            args.get(at + 1).map(PathBuf::from)
        })
    });
    running.unwrap_or_else(|| repo_dir().join("target/e2e/logs/audit.log"))
}

/// The audit log and the backups the apiserver rotated out of it (`audit-<time>.log`, at 200 MB) that were
/// still written to at or after `from`.
fn audit_files(path: &Path, from: Micros) -> Vec<PathBuf> {
    let (Some(dir), Some(stem)) = (path.parent(), path.file_stem().and_then(|s| s.to_str())) else {
        return vec![path.to_owned()];
    };
    let prefix = format!("{stem}-");
    let recent = |p: &Path| {
        std::fs::metadata(p)
            .and_then(|m| m.modified())
            .is_ok_and(|t| micros_of(t) >= from)
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".log"))
        })
        .filter(|p| recent(p))
        .collect();
    files.push(path.to_owned());
    files
}

/// API writes (create/update/patch/delete, completed) in `[from, to)` from the audit log, by user.
fn audit_writes(from: Micros, to: Micros) -> Result<BTreeMap<String, u64>> {
    let path = audit_log_path();
    let mut by_user = BTreeMap::new();
    let mut newest = i64::MIN;
    for file in audit_files(&path, from) {
        let f =
            std::fs::File::open(&file).with_context(|| format!("reading {}", file.display()))?;
        for line in BufReader::new(f).lines() {
            let line = line.with_context(|| format!("reading {}", file.display()))?;
            let Some((at, user)) = completed_write(&line) else {
                continue;
            };
            newest = newest.max(at);
            if (from..to).contains(&at) {
                *by_user.entry(user).or_insert(0) += 1;
            }
        }
    }
    // The apiserver writes its own Lease every 10 s: an audit log without them was not being written.
    if newest < to - 30_000_000 {
        bail!(
            "{} has no entry after {newest} (the window ends at {to}): not the running apiserver's log",
            path.display()
        );
    }
    Ok(by_user)
}

/// The time received and the user of an audit event that is a completed write; `None` for anything else.
fn completed_write(line: &str) -> Option<(Micros, String)> {
    let e: serde_json::Value = serde_json::from_str(line).ok()?;
    let verb = e["verb"].as_str().unwrap_or_default();
    let write = matches!(
        verb,
        "create" | "update" | "patch" | "delete" | "deletecollection"
    );
    if e["stage"] != "ResponseComplete" || !write {
        return None;
    }
    let at = e["requestReceivedTimestamp"]
        .as_str()?
        .parse::<jiff::Timestamp>()
        .ok()?;
    let user = e["user"]["username"].as_str().unwrap_or_default();
    Some((at.as_microsecond(), user.to_owned()))
}

/// Steady state over `window`: per-agent RSS and CPU, and API writes per minute (agents; everything in
/// the namespace).
async fn steady(
    kube: &Client,
    d: &Deployed,
    sys: &System,
    window: Duration,
) -> Result<(Vec<f64>, Vec<f64>, f64, f64)> {
    let comm = if sys.patroni {
        "patroni"
    } else {
        contract::SIDECAR_BINARY
    };
    let p = pods(kube, &d.ns.name, &d.selector, &d.role_label).await?;
    let from = now_us();
    let before = agents(&p, comm);
    tokio::time::sleep(window).await;
    let to = now_us();
    let after = agents(&p, comm);
    let secs = (to - from) as f64 / 1e6;
    let rss: Vec<f64> = after
        .iter()
        .map(|(_, rss, _)| *rss as f64 / 1048576.0)
        .collect();
    let cpu: Vec<f64> = after
        .iter()
        .filter_map(|(m, _, c1)| {
            before
                .iter()
                .find(|(b, _, _)| b == m)
                .map(|(_, _, c0)| (c1 - c0) / secs * 100.0)
        })
        .collect();
    if rss.is_empty() {
        bail!("no {comm} process found in the pods' cgroups");
    }
    // The audit log is written when requests complete: give the last ones a moment.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let writes = audit_writes(from, to)?;
    let agent_user = format!("system:serviceaccount:{}:{}", d.ns.name, d.agent_sa);
    let ns_prefix = format!("system:serviceaccount:{}:", d.ns.name);
    let per_min = |n: u64| n as f64 * 60.0 / secs;
    let agent = per_min(writes.get(&agent_user).copied().unwrap_or(0));
    let all = per_min(
        writes
            .iter()
            .filter(|(u, _)| u.starts_with(&ns_prefix))
            .map(|(_, n)| *n)
            .sum(),
    );
    Ok((rss, cpu, agent, all))
}

fn push(series: &mut Series, key: &'static str, value: Result<f64>) {
    let v = value.map_err(|e| format!("{e:#}"));
    match &v {
        Ok(x) => say(format!("{key} = {x:.3}")),
        Err(e) => say(format!("{key} failed: {e}")),
    }
    series.entry(key).or_default().push(v);
}

async fn bench_system(kube: &Client, sys: &System, args: &Args) -> Series {
    let mut series = Series::new();
    say(format!("=== {} ===", sys.label));
    // kubectl apply -> Ready, on fresh namespaces; the last deployment stays for the rest.
    let mut kept: Option<Deployed> = None;
    let wanted_apply = args.measure.is_empty() || args.measure.iter().any(|x| x == "apply");
    let deploys = if wanted_apply { args.reps } else { 1 };
    for rep in 0..deploys {
        match deploy(kube, sys).await {
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
            namespace: d.ns.name.clone(),
            selector: d.selector.clone(),
            role_label: d.role_label.clone(),
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
    let wanted = |m: &str| args.measure.is_empty() || args.measure.iter().any(|x| x == m);
    match if wanted("steady") {
        Some(steady(kube, &d, sys, window).await)
    } else {
        None
    } {
        None => {}
        Some(Ok((rss, cpu, agent, all))) => {
            for v in rss {
                push(&mut series, "agent_rss_mib", Ok(v));
            }
            for v in cpu {
                push(&mut series, "agent_cpu_percent", Ok(v));
            }
            push(&mut series, "api_writes_per_min_3", Ok(agent));
            push(&mut series, "all_writes_per_min_3", Ok(all));
        }
        Some(Err(e)) => push(&mut series, "agent_rss_mib", Err(e)),
    }
    for _ in 0..args.reps * usize::from(wanted("kill")) {
        let v = rig.failover("kill", None, false).await;
        push(&mut series, "kill_primary_s", v);
    }
    for _ in 0..args.reps * usize::from(wanted("switchover")) {
        let v = rig.switchover().await;
        push(&mut series, "switchover_unavailable_s", v);
    }
    for _ in 0..args.reps * usize::from(wanted("cut")) {
        let v = rig.failover("cut", Some("heal"), false).await;
        push(&mut series, "cut_primary_s", v);
    }
    for _ in 0..args.reps * usize::from(wanted("partition")) {
        let v = rig.failover("partition", Some("heal"), true).await;
        push(&mut series, "partition_primary_node_s", v);
    }
    let Rig { writer, probes, .. } = rig;
    if wanted("five") {
        // Measured like three members, with the writer running: Patroni's members patch their pods as their
        // WAL positions move, so an idle cluster would understate its writes.
        let v = five_members(kube, &mut d, sys, window).await;
        push(&mut series, "api_writes_per_min_5", v);
    }
    let _ = writer.stop().await;
    let _ = probes.stop().await;
    series
}

/// Scales to five members and measures the agents' API writes per minute at steady state.
async fn five_members(
    kube: &Client,
    d: &mut Deployed,
    sys: &System,
    window: Duration,
) -> Result<f64> {
    if sys.patroni {
        d.ns.kubectl(&["scale", "statefulset", &d.name, "--replicas=5"])?;
    } else {
        d.ns.kubectl(&["scale", &format!("pgc/{}", d.name), "--replicas=5"])?;
    }
    wait_ready(
        kube,
        &d.ns.name,
        &d.selector,
        &d.role_label,
        5,
        Duration::from_secs(300),
    )
    .await?;
    d.members = (0..5).map(|i| format!("{}-{i}", d.name)).collect();
    tokio::time::sleep(Duration::from_secs(20)).await;
    let (_, _, agent, _) = steady(kube, d, sys, window).await?;
    Ok(agent)
}

fn probe_bin() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("pgpilot-probe")))
        .unwrap_or_else(|| PathBuf::from("pgpilot-probe"))
}

fn table(results: &BTreeMap<&'static str, Series>) -> String {
    let systems: Vec<&System> = SYSTEMS
        .iter()
        .filter(|s| results.contains_key(s.id))
        .collect();
    let cell = |s: &System, key: &str| -> Option<f64> {
        let vals: Vec<f64> = results
            .get(s.id)?
            .get(key)?
            .iter()
            .filter_map(|v| v.as_ref().ok().copied())
            .collect();
        median(&vals)
    };
    let fmt = |v: Option<f64>| {
        v.map_or_else(
            || "n/a".to_owned(),
            |x| {
                if x >= 100.0 {
                    format!("{x:.0}")
                } else {
                    format!("{x:.2}")
                }
            },
        )
    };
    let mut out = String::new();
    let mut header = format!("| {:<50} |", "median of the repetitions");
    let mut rule = format!("|{}|", "-".repeat(52));
    for s in &systems {
        let _ = write!(header, " {} |", s.label);
        let _ = write!(rule, "{}|", "-".repeat(s.label.len() + 2));
    }
    let pgpilot = SYSTEMS.iter().find(|s| s.id == "pgpilot");
    let ratios: Vec<&&System> = systems.iter().filter(|s| s.patroni).collect();
    for s in &ratios {
        let _ = write!(header, " {} / pgpilot |", short(s));
        let _ = write!(rule, "{}|", "-".repeat(short(s).len() + 12));
    }
    out.push_str(&header);
    out.push('\n');
    out.push_str(&rule);
    out.push('\n');
    for (key, unit, label) in METRICS {
        let _ = write!(out, "| {:<50} |", format!("{label} ({unit})"));
        for s in &systems {
            let _ = write!(out, " {:>w$} |", fmt(cell(s, key)), w = s.label.len());
        }
        for s in &ratios {
            let ratio = pgpilot
                .and_then(|p| Some(cell(s, key)? / cell(p, key)?))
                .filter(|r| r.is_finite());
            let _ = write!(
                out,
                " {:>w$} |",
                ratio.map_or_else(|| "n/a".to_owned(), |r| format!("{r:.1}x")),
                w = short(s).len() + 10
            );
        }
        out.push('\n');
    }
    out
}

fn short(s: &System) -> &'static str {
    if s.id == "patroni-defaults" {
        "Patroni defaults"
    } else {
        "Patroni same timings"
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if args.table_only {
        let table = table(&read_results(&args.out)?);
        println!("{table}");
        std::fs::write(args.out.join("table.md"), &table)?;
        return Ok(());
    }
    let kube = client().await?;
    let chosen: Vec<&System> = SYSTEMS
        .iter()
        .filter(|s| args.systems.is_empty() || args.systems.iter().any(|x| x == s.id))
        .collect();
    if chosen.is_empty() {
        bail!("no such system in {:?}", args.systems);
    }
    let started = Instant::now();
    let mut results: BTreeMap<&'static str, Series> = if args.merge {
        read_results(&args.out)?
    } else {
        BTreeMap::new()
    };
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    for sys in chosen {
        // Interrupted, the system's future is dropped: its namespace (and Helm release) is deleted on the way.
        let series = tokio::select! {
            series = bench_system(&kube, sys, &args) => series,
            _ = tokio::signal::ctrl_c() => bail!("interrupted"),
            _ = terminate.recv() => bail!("terminated"),
        };
        let entry = results.entry(sys.id).or_default();
        entry.extend(series);
        // Each system's results are written as soon as they exist.
        write_results(&args, &results)?;
    }
    let table = table(&results);
    println!("\n{table}");
    std::fs::write(args.out.join("table.md"), &table)?;
    say(format!(
        "done in {:.0} min; results in {}",
        started.elapsed().as_secs_f64() / 60.0,
        args.out.display()
    ));
    Ok(())
}

/// The results of an earlier run, as series (every value `Ok`, every recorded error `Err`).
fn read_results(out: &Path) -> Result<BTreeMap<&'static str, Series>> {
    let path = out.join("results.json");
    let doc: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?,
    )?;
    let mut results = BTreeMap::new();
    for sys in doc["systems"].as_array().into_iter().flatten() {
        let Some(id) = SYSTEMS.iter().map(|s| s.id).find(|id| sys["id"] == *id) else {
            continue;
        };
        let mut series = Series::new();
        for (key, _, _) in METRICS {
            let m = &sys["metrics"][key];
            let mut vals: Vec<Result<f64, String>> = m["values"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_f64())
                .map(Ok)
                .collect();
            vals.extend(
                m["errors"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|e| e.as_str())
                    .map(|e| Err(e.to_owned())),
            );
            if !vals.is_empty() {
                series.insert(key, vals);
            }
        }
        results.insert(id, series);
    }
    Ok(results)
}

fn write_results(args: &Args, results: &BTreeMap<&'static str, Series>) -> Result<()> {
    std::fs::create_dir_all(&args.out)?;
    let systems: Vec<serde_json::Value> = SYSTEMS
        .iter()
        .filter_map(|s| {
            let series = results.get(s.id)?;
            let metrics: serde_json::Map<String, serde_json::Value> = series
                .iter()
                .map(|(k, vals)| {
                    let ok: Vec<f64> = vals
                        .iter()
                        .filter_map(|v| v.as_ref().ok().copied())
                        .collect();
                    let errors: Vec<&String> =
                        vals.iter().filter_map(|v| v.as_ref().err()).collect();
                    (
                        (*k).to_owned(),
                        json!({"median": median(&ok), "values": ok, "errors": errors}),
                    )
                })
                .collect();
            Some(json!({"id": s.id, "label": s.label, "timings": s.timings, "metrics": metrics}))
        })
        .collect();
    let doc = json!({
        "generated_at": jiff::Timestamp::now().to_string(),
        "reps": args.reps,
        "metrics": METRICS.iter().map(|(k, unit, label)| json!({"key": k, "unit": unit, "label": label})).collect::<Vec<_>>(),
        "systems": systems,
    });
    std::fs::write(
        args.out.join("results.json"),
        serde_json::to_string_pretty(&doc)?,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(stage: &str, verb: &str) -> String {
        json!({
            "stage": stage,
            "verb": verb,
            "requestReceivedTimestamp": "2026-11-26T09:00:00.000001Z",
            "user": {"username": "system:serviceaccount:ns:pg"},
        })
        .to_string()
    }

    #[test]
    fn only_completed_writes_are_counted() {
        let (at, user) = completed_write(&event("ResponseComplete", "patch")).expect("a write");
        assert_eq!(user, "system:serviceaccount:ns:pg");
        assert_eq!(
            at,
            "2026-11-26T09:00:00.000001Z"
                .parse::<jiff::Timestamp>()
                .unwrap()
                .as_microsecond()
        );
        assert_eq!(completed_write(&event("ResponseStarted", "patch")), None);
        assert_eq!(completed_write(&event("ResponseComplete", "get")), None);
        assert_eq!(completed_write("not json"), None);
    }

    #[test]
    fn rotated_audit_logs_written_in_the_window_are_read() {
        let dir = std::env::temp_dir().join(format!("pgpilot-bench-audit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("audit.log");
        for name in [
            "audit.log",
            "audit-2026-11-26T09-00-00.000.log",
            "other.log",
        ] {
            std::fs::write(dir.join(name), "").unwrap();
        }
        let mut files = audit_files(&log, 0);
        files.sort();
        assert_eq!(
            files,
            vec![dir.join("audit-2026-11-26T09-00-00.000.log"), log.clone()]
        );
        // A backup last written before the window holds nothing in it.
        assert_eq!(audit_files(&log, i64::MAX), vec![log]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
