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
//!
//! - [`deploy`]: a system's cluster in a fresh namespace (pgpilot through its chart, Patroni from
//!   `e2e/patroni/`), and scaling it.
//! - [`measure`]: the measurements on a deployed cluster, with the writer and the probes running.
//! - [`audit`]: API writes per minute, from the apiserver's audit log.
//! - [`report`]: the table, `results.json` and `table.md`.

use std::{collections::BTreeMap, path::PathBuf, time::Instant};

use anyhow::{Result, bail};
use clap::Parser;
use serde::Serialize;

pub mod audit;
pub mod deploy;
pub mod measure;
pub mod report;

#[derive(Parser, Debug)]
#[command(
    about = "pgpilot vs Patroni on the local cluster: failover, switchover, start-up, footprint"
)]
pub struct Args {
    /// Repetitions of every measurement (the median is reported).
    #[arg(long, default_value_t = 5, env = "BENCH_REPS")]
    pub reps: usize,
    /// Where results.json goes.
    #[arg(long, default_value = "target/bench")]
    pub out: PathBuf,
    /// Systems to run (pgpilot, patroni-defaults, patroni-pgpilot-timings); all when empty.
    #[arg(long, value_delimiter = ',', env = "BENCH_SYSTEMS")]
    pub systems: Vec<String>,
    /// Measurements to take (apply, steady, kill, switchover, cut, partition, five); all when empty.
    /// `partition` disturbs every pod on the primary's node: leave it out on a cluster others are using.
    #[arg(long, value_delimiter = ',', env = "BENCH_MEASURE")]
    pub measure: Vec<String>,
    /// Keep the results already in `--out/results.json` and replace only what this run measures (to
    /// re-measure one metric of one system).
    #[arg(long)]
    pub merge: bool,
    /// Measure nothing: print the table of `--out/results.json` again (and rewrite `table.md`).
    #[arg(long)]
    pub table_only: bool,
    /// Seconds over which steady-state CPU and API writes are measured.
    #[arg(long, default_value_t = 60)]
    pub window_secs: u64,
}

impl Args {
    /// Whether the measurement `m` was asked for.
    pub fn wanted(&self, m: &str) -> bool {
        self.measure.is_empty() || self.measure.iter().any(|x| x == m)
    }
}

/// One system under test.
#[derive(Clone, Debug, Serialize)]
pub struct System {
    pub id: &'static str,
    pub label: &'static str,
    /// pgpilot: leaseDuration/renewDeadline/retryPeriod; Patroni: ttl/retry_timeout/loop_wait.
    pub timings: (u32, u32, u32),
    pub patroni: bool,
}

pub const SYSTEMS: [System; 3] = [
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
pub type Series = BTreeMap<&'static str, Vec<Result<f64, String>>>;

/// What is measured, its unit and how the table labels it.
pub const METRICS: [(&str, &str, &str); 10] = [
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

/// A line on stderr, timestamped: the benchmark's progress.
pub fn say(what: impl AsRef<str>) {
    eprintln!(
        "{} bench: {}",
        k8s_openapi::jiff::Timestamp::now().strftime("%H:%M:%S"),
        what.as_ref()
    );
}

/// The benchmark: every chosen system in turn, its results written as soon as they exist.
pub async fn run(args: Args) -> Result<()> {
    if args.table_only {
        let table = report::table(&report::read_results(&args.out)?);
        println!("{table}");
        std::fs::write(args.out.join("table.md"), &table)?;
        return Ok(());
    }
    let kube = crate::client().await?;
    let chosen: Vec<&System> = SYSTEMS
        .iter()
        .filter(|s| args.systems.is_empty() || args.systems.iter().any(|x| x == s.id))
        .collect();
    if chosen.is_empty() {
        bail!("no such system in {:?}", args.systems);
    }
    let started = Instant::now();
    let mut results: BTreeMap<&'static str, Series> = if args.merge {
        report::read_results(&args.out)?
    } else {
        BTreeMap::new()
    };
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    for sys in chosen {
        // Interrupted, the system's future is dropped: its namespace (and Helm release) is deleted on the way.
        let series = tokio::select! {
            series = measure::system(&kube, sys, &args) => series,
            _ = tokio::signal::ctrl_c() => bail!("interrupted"),
            _ = terminate.recv() => bail!("terminated"),
        };
        let entry = results.entry(sys.id).or_default();
        entry.extend(series);
        report::write_results(&args, &results)?;
    }
    let table = report::table(&results);
    println!("\n{table}");
    std::fs::write(args.out.join("table.md"), &table)?;
    say(format!(
        "done in {:.0} min; results in {}",
        started.elapsed().as_secs_f64() / 60.0,
        args.out.display()
    ));
    Ok(())
}
