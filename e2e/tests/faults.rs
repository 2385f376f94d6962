//! The fault matrix: every row in its own namespace, a 3-member cluster spread over the 3 nodes, the
//! writer and the split-brain probes running, one fault injected and healed, then the verdict: no span
//! with two writable members, convergence within a bound derived from the Lease timings, and — in
//! synchronous mode — no acknowledged write lost (asynchronous mode reports its loss). In a synchronous
//! mode no fault is injected before the Lease records a synchronous standby that streams. After the heal,
//! writes through `-rw` must resume within the convergence bound, and no member may accept writes for
//! longer than `renewDeadline` (10 s at the least) while `-rw` acknowledges none. The faults themselves,
//! and what each asserts beyond that, are `pgpilot_e2e::scenarios` (shared with the soak, `tests/soak.rs`):
//! the first matrix's in `basic`, issue 13's grey failures in `grey`. Rows whose waits are Lease-bound and
//! that test nothing of the default timings run with 6/4/1 s.
//!
//! The rows need the local cluster (`make cluster images`) and are slow (1–3 minutes each on
//! 2 cores): `make faults` runs all of them, `make faults FAULTS="kill_primary cut_replica_async"` the
//! tests whose names contain one of the words (cargo's test-name filters).
//!
//! The first tests here need no cluster: they prove the checker against real PostgreSQL servers on
//! loopback — that it sees a streaming replica, a second primary and a lost write when there is one.

use std::{
    collections::BTreeSet,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use pgpilot_e2e::{
    TestNamespace,
    checker::{
        harness::{Harness, HarnessError},
        probe::Sample,
        verdict::{self, Expectations, Requirement},
        writer::{self, Pace, Target, Writer},
    },
    client,
    clock::now_us,
    cluster,
    deploy::{self, Manifest},
    fault,
    scenarios::{self, Mode, Recovery, Scene, Timings, basic, grey, micros},
};
use tokio::io::{AsyncBufReadExt, BufReader};

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

// ---------------------------------------------------------------------------------------------------
// The checker against real PostgreSQL (no cluster needed)
// ---------------------------------------------------------------------------------------------------

/// The `postgres` OS user's uid and gid.
fn postgres_ids() -> Result<(u32, u32)> {
    let id = |flag: &str| -> Result<u32> {
        let out = Command::new("id").args([flag, "postgres"]).output()?;
        ensure!(out.status.success(), "no postgres OS user");
        Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
    };
    Ok((id("-u")?, id("-g")?))
}

/// A PostgreSQL 15 server on loopback, run as the `postgres` user from a world-traversable temp dir;
/// stopped (immediate) and removed on drop.
struct LocalPg {
    dir: PathBuf,
    port: u16,
    uid: u32,
    gid: u32,
}

const PASSWORD: &str = "checker-test-password";

impl LocalPg {
    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(Path::new(PG_BIN).join(program));
        c.uid(self.uid)
            .gid(self.gid)
            .env("PGPASSWORD", PASSWORD)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        c
    }

    fn run(&self, program: &str, args: &[&str]) -> Result<()> {
        let out = self
            .command(program)
            .args(args)
            .output()
            .with_context(|| format!("running {program}"))?;
        ensure!(
            out.status.success(),
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    fn new_dir(name: &str, port: u16) -> Result<Self> {
        let (uid, gid) = postgres_ids()?;
        let dir = PathBuf::from(format!(
            "/var/tmp/pgpilot-faults-{}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid))?;
        Ok(Self {
            dir,
            port,
            uid,
            gid,
        })
    }

    fn data(&self) -> String {
        self.dir.join("data").to_string_lossy().into_owned()
    }

    /// `initdb` with a SCRAM password for `postgres`, then start.
    fn primary(name: &str, port: u16) -> Result<Self> {
        let pg = Self::new_dir(name, port)?;
        let pwfile = pg.dir.join("pw");
        std::fs::write(&pwfile, PASSWORD)?;
        std::os::unix::fs::chown(&pwfile, Some(pg.uid), Some(pg.gid))?;
        pg.run(
            "initdb",
            &[
                "-D",
                &pg.data(),
                "-U",
                "postgres",
                "-A",
                "scram-sha-256",
                "--pwfile",
                &pwfile.to_string_lossy(),
            ],
        )?;
        pg.start()?;
        Ok(pg)
    }

    /// A streaming standby of `primary` (`pg_basebackup -R`), started.
    fn standby_of(primary: &LocalPg, name: &str, port: u16) -> Result<Self> {
        let pg = Self::new_dir(name, port)?;
        let port_text = primary.port.to_string();
        pg.run(
            "pg_basebackup",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &port_text,
                "-U",
                "postgres",
                "-D",
                &pg.data(),
                "-R",
                "-X",
                "stream",
            ],
        )?;
        pg.start()?;
        Ok(pg)
    }

    fn start(&self) -> Result<()> {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("log").to_string_lossy().into_owned();
        self.run(
            "pg_ctl",
            &["start", "-w", "-D", &self.data(), "-l", &log, "-o", &opts],
        )
    }

    fn sql(&self, sql: &str) -> Result<()> {
        let out = Command::new("psql")
            .args([
                "-X",
                "-q",
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-c",
                sql,
            ])
            .env("PGPASSWORD", PASSWORD)
            .output()?;
        ensure!(
            out.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    fn target(&self) -> Target {
        Target {
            host: "127.0.0.1".into(),
            port: self.port,
            user: "postgres".into(),
            password: PASSWORD.into(),
            dbname: "postgres".into(),
        }
    }
}

impl Drop for LocalPg {
    fn drop(&mut self) {
        let _ = self.run("pg_ctl", &["stop", "-m", "immediate", "-D", &self.data()]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The `pgpilot-probe` binary of this build.
fn probe_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_pgpilot-probe"))
}

/// Runs the probe binary against a local server (no network namespace: it is on loopback already),
/// collecting its samples until the returned guard is dropped.
struct LocalProbe {
    /// Held for `kill_on_drop`.
    _child: tokio::process::Child,
    samples: Arc<Mutex<Vec<Sample>>>,
}

impl LocalProbe {
    fn start(pg: &LocalPg, stream: &str) -> Result<Self> {
        let mut child = tokio::process::Command::new(probe_bin())
            .args([
                "--stream",
                stream,
                "--port",
                &pg.port.to_string(),
                "--max-run-secs",
                "120",
            ])
            .env("PGPASSWORD", PASSWORD)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let stdout = child.stdout.take().context("probe stdout")?;
        let samples = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&samples);
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                // A line that is not a sample fails the test through the missing samples.
                if let (Ok(sample), Ok(mut all)) =
                    (serde_json::from_str::<Sample>(&line), sink.lock())
                {
                    all.push(sample);
                }
            }
        });
        Ok(Self {
            _child: child,
            samples,
        })
    }

    fn samples(&self) -> Vec<Sample> {
        self.samples.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// The newest sample that ended after `after_us`.
    async fn next_sample(&self, after_us: i64) -> Sample {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(s) = self.samples().into_iter().rev().find(|s| s.t_us > after_us) {
                return s;
            }
            assert!(Instant::now() < deadline, "no probe sample within 10 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The probe sees a primary as writable and a streaming standby as such; when the standby is promoted
/// while the old primary still takes writes, the checker finds the span with two writable members and the
/// acknowledged writes the promoted server does not have; a read-only primary is not writable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checker_sees_replicas_split_brain_and_lost_writes_on_real_postgres() -> Result<()> {
    let a = LocalPg::primary("a", 25431)?;
    let b = LocalPg::standby_of(&a, "b", 25432)?;
    let pa = LocalProbe::start(&a, "pg-0@a")?;
    let pb = LocalProbe::start(&b, "pg-1@b")?;
    let members = vec!["pg-0".to_owned(), "pg-1".to_owned()];
    let writer = Writer::start(a.target(), Pace::default());

    // Healthy: one writable member, one streaming replica, converged, no overlap.
    let t0 = now_us();
    let converged = async {
        loop {
            if let Some(at) = verdict::converged_at(
                &[pa.samples(), pb.samples()].concat(),
                &members,
                t0,
                1_000_000,
            ) {
                return at;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), converged)
        .await
        .context("primary + streaming standby converge")?;
    let s = pb.next_sample(now_us()).await;
    assert_eq!(
        (s.writable, s.in_recovery, s.streaming),
        (false, Some(true), Some(true)),
        "{s:?}"
    );
    let s = pa.next_sample(now_us()).await;
    assert!(s.writable && s.wrote_at_us.is_some(), "{s:?}");
    assert!(verdict::overlaps(&[pa.samples(), pb.samples()].concat()).is_empty());

    // Split brain: promote the standby while the writer still writes to the old primary.
    let promoting = now_us();
    b.sql("SELECT pg_promote()")?;
    // pg_promote() waits until the promotion is done: from here on B takes no WAL from A.
    let promoted = now_us();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let overlaps = verdict::overlaps(&[pa.samples(), pb.samples()].concat());
    assert_eq!(overlaps.len(), 1, "{overlaps:?}");
    assert_eq!(
        (overlaps[0].a.as_str(), overlaps[0].b.as_str()),
        ("pg-0@a", "pg-1@b")
    );
    assert!(
        overlaps[0].from_us >= promoting && overlaps[0].to_us - overlaps[0].from_us > 500_000,
        "{overlaps:?}"
    );

    // Fenced: a read-only primary is not writable.
    a.sql("ALTER SYSTEM SET default_transaction_read_only = on")?;
    a.sql("SELECT pg_reload_conf()")?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let s = pa.next_sample(now_us()).await;
    assert_eq!((s.writable, s.read_only), (false, Some(true)), "{s:?}");

    // Lost writes: what the old primary acknowledged after the promotion is not on the promoted server.
    let log = writer.stop().await;
    let late: BTreeSet<u64> = log
        .acks
        .iter()
        .filter(|k| k.at_us > promoted + 100_000)
        .map(|k| k.id)
        .collect();
    assert!(
        !late.is_empty(),
        "the writer kept writing to the old primary: {:?}",
        log.errors
    );
    let on_b = writer::final_ids(&b.target(), log.first_id, "127.0.0.1").await?;
    let lost = verdict::lost_writes(&log.acks, &on_b);
    assert!(
        late.iter().all(|id| lost.contains(id)),
        "every late id is lost on the promoted server"
    );
    let on_a = writer::final_ids(&a.target(), log.first_id, "127.0.0.1").await?;
    assert!(
        verdict::lost_writes(&log.acks, &on_a).is_empty(),
        "the old primary has every acknowledged id"
    );
    assert!(matches!(
        writer::final_ids(&a.target(), log.first_id, "10.244.9.9").await,
        Err(pgpilot_e2e::checker::pg::PgError::WrongServer { .. })
    ));
    drop((pa, pb));
    Ok(())
}

/// A frozen (stopped) server yields failed samples within the probe's timeout, and the probe recovers
/// when it runs again; the writer's unanswered inserts are in doubt, not acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_and_writer_survive_a_frozen_server() -> Result<()> {
    let a = LocalPg::primary("frozen", 25433)?;
    let pa = LocalProbe::start(&a, "pg-0@f")?;
    let writer = Writer::start(a.target(), Pace::default());
    let s = pa.next_sample(now_us()).await;
    assert!(s.writable, "{s:?}");
    let pid: i32 = std::fs::read_to_string(Path::new(&a.data()).join("postmaster.pid"))?
        .lines()
        .next()
        .context("postmaster.pid")?
        .trim()
        .parse()?;
    // SIGSTOP the postmaster (it can fork no more), then every child of it.
    let children = String::from_utf8(
        Command::new("pgrep")
            .args(["-P", &pid.to_string()])
            .output()?
            .stdout,
    )?;
    let mut pids = vec![pid.to_string()];
    pids.extend(children.split_whitespace().map(str::to_owned));
    let signal = |sig: &str| -> Result<()> {
        let status = Command::new("kill").arg(sig).args(&pids).status()?;
        ensure!(status.success(), "kill {sig} {pids:?}");
        Ok(())
    };
    signal("-STOP")?;
    let frozen = now_us();
    // Three samples that began after the freeze (each bounded by the probe's 1 s timeout), at least 3 s.
    let after = |pa: &LocalProbe| -> Vec<Sample> {
        pa.samples()
            .into_iter()
            .filter(|s| s.t_us > frozen + 200_000)
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    while (after(&pa).len() < 3 || now_us() - frozen < 3_000_000) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let during = after(&pa);
    let frozen_for = now_us() - frozen;
    signal("-CONT")?;
    assert!(
        during.len() >= 3,
        "the probe keeps sampling a frozen server: {during:?}"
    );
    assert!(
        during.iter().all(|s| !s.writable && s.error.is_some()),
        "{during:?}"
    );
    assert!(
        during.iter().all(|s| s.end_us - s.t_us <= 1_300_000),
        "each sample is bounded: {during:?}"
    );
    let thawed = now_us();
    let s = pa.next_sample(thawed + 500_000).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut s = s;
    while !s.writable {
        assert!(
            Instant::now() < deadline,
            "writable again after the thaw: {s:?}"
        );
        s = pa.next_sample(s.t_us).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let log = writer.stop().await;
    assert!(
        !log.in_doubt.is_empty(),
        "the insert in flight at the freeze is in doubt"
    );
    assert!(
        log.acks.iter().any(|k| k.at_us > thawed),
        "writes resume after the thaw"
    );
    let gap =
        verdict::longest_write_gap(&log.acks, frozen, now_us()).context("acks after the freeze")?;
    assert!(
        gap.1 >= frozen_for - 200_000,
        "no acknowledgement while frozen: {gap:?}"
    );
    let on_a = writer::final_ids(&a.target(), log.first_id, "127.0.0.1").await?;
    assert!(verdict::lost_writes(&log.acks, &on_a).is_empty());
    Ok(())
}

// ---------------------------------------------------------------------------------------------------
// The fault matrix on the local cluster
// ---------------------------------------------------------------------------------------------------

const CLUSTER: &str = "pg";

/// How a row's cluster is set up and what its verdict allows.
#[derive(Clone, Copy)]
struct Setup {
    /// The Lease timings the cluster starts with.
    timings: Timings,
    /// One member per node, required (so every node-level fault hits exactly one member).
    spread_required: bool,
    failsafe: bool,
    /// What the fault leaves to recover: the convergence bound ([`Timings::converge_bound`]).
    recovery: Recovery,
    /// A bound of its own instead (a scale waits for new members).
    converge_within: Option<Duration>,
    /// Writes never unavailable for longer than this (failsafe).
    max_write_gap: Option<Duration>,
    /// No acknowledged write may be lost in asynchronous mode either (a planned switchover, a pod deleted
    /// gracefully, a restart, a recreated Lease: nobody takes over unasked).
    lossless: bool,
    /// A forced manual failover: the user accepted losing what only the stopped members had, so writes
    /// may be lost in a synchronous mode too (the verdict still counts them).
    forced: bool,
    /// `spec.image` (`deploy::POSTGRES_15` but in the PostgreSQL 17 rows).
    image: &'static str,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            timings: Timings::DEFAULT,
            spread_required: true,
            failsafe: false,
            recovery: Recovery::Member,
            converge_within: None,
            max_write_gap: None,
            lossless: false,
            forced: false,
            image: deploy::POSTGRES_15,
        }
    }
}

impl Setup {
    fn converge_within(&self) -> Duration {
        self.converge_within
            .unwrap_or_else(|| self.timings.converge_bound(self.recovery))
    }

    /// The cluster under test: 3 members, spread over the nodes unless `spread_required` is off, in `mode`.
    fn manifest(&self, mode: Mode) -> Manifest {
        let Timings {
            lease,
            renew,
            retry,
        } = self.timings;
        let secs = |s: u64| u32::try_from(s).unwrap_or(u32::MAX);
        Manifest {
            timings: (secs(lease), secs(renew), secs(retry)),
            failsafe: self.failsafe,
            spread_required: self.spread_required,
            image: self.image,
            ..Manifest::new(CLUSTER, 3, mode.name())
        }
    }
}

/// Runs one row end to end and asserts its verdict.
async fn run_scenario<F>(id: &str, mode: Mode, setup: Setup, body: F) -> Result<()>
where
    F: AsyncFnOnce(&mut Harness, &mut Scene) -> Result<()>,
{
    let kube = client().await?;
    let short: String = id.chars().take(16).collect();
    let mut ns = TestNamespace::create(&format!("f-{short}-{}", mode.name()))?;
    // A cluster that never gets Ready fails with its description (`deploy`); one whose writes never start,
    // with it printed here.
    deploy::deploy(&mut ns, &setup.manifest(mode), Duration::from_secs(240)).await?;
    let started = async {
        let h = Harness::start(kube, &ns.name, CLUSTER, 3, probe_bin()).await?;
        // In a synchronous mode a fault tests what happens to a recorded synchronous standby: it must exist
        // before the fault (issue 13: a cut before it was recorded left no member eligible).
        let sync_standbys = match mode {
            Mode::Sync => h.wait_sync_standby(Duration::from_secs(60)).await?,
            Mode::Async => Vec::new(),
        };
        Ok::<_, HarnessError>((h, sync_standbys))
    };
    let (mut h, mut scene) = match started.await {
        Ok((h, sync_standbys)) => (
            h,
            Scene {
                namespace: ns.name.clone(),
                cluster: CLUSTER.into(),
                mode,
                timings: setup.timings,
                sync_standbys,
                choice: 0,
            },
        ),
        Err(e) => {
            eprintln!("{}", cluster::describe(&ns, CLUSTER, 3));
            return Err(e.into());
        }
    };
    if h.baseline_ack_wait > Duration::from_secs(10) {
        eprintln!(
            "{id} ({}): the first write through {CLUSTER}-rw took {:.1} s after the cluster converged",
            mode.name(),
            h.baseline_ack_wait.as_secs_f64()
        );
        eprintln!("{}", cluster::describe(&ns, CLUSTER, 3));
    }
    if let Some(max) = setup.max_write_gap {
        h.require(Requirement::WriteGapAtMost(micros(max)));
    }
    let body_started = Instant::now();
    let outcome = body(&mut h, &mut scene).await;
    if let Err(e) = &outcome {
        h.mark(format!("scenario body failed: {e:#}"));
    }
    fault::undo_all(&ns.name, CLUSTER, 5).await;
    let expect = Expectations {
        max_lost: ((mode == Mode::Sync && !setup.forced) || setup.lossless).then_some(0),
        converge_within_us: micros(setup.converge_within()),
        rw_unreachable_within_us: micros(scene.timings.route_bound()),
    };
    let verdict = h
        .finish(id, mode.name(), expect, Duration::from_secs(15))
        .await?;
    println!(
        "{id} ({}): the fault and its heal took {:.1} s",
        mode.name(),
        body_started.elapsed().as_secs_f64()
    );
    if outcome.is_err() || !verdict.passed() {
        scenarios::print_failure(&verdict, &ns, CLUSTER, 3);
    }
    outcome?;
    if !verdict.passed() {
        bail!("{id} ({}) failed:\n{}", mode.name(), verdict.table());
    }
    Ok(())
}

/// Two tests per row (sync, async): `$id` names the scenario in its verdict.
macro_rules! scenario_tests {
    ($($sync:ident, $async_:ident, $id:literal, $body:path, $setup:expr;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        #[ignore = "needs the local cluster (make cluster)"]
        async fn $sync() -> Result<()> {
            run_scenario($id, Mode::Sync, $setup, $body).await
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        #[ignore = "needs the local cluster (make cluster)"]
        async fn $async_() -> Result<()> {
            run_scenario($id, Mode::Async, $setup, $body).await
        }
    )*};
}

scenario_tests! {
    kill_primary_sync, kill_primary_async, "kill-primary", basic::kill_primary, Setup::default();
    kill_replica_sync, kill_replica_async, "kill-replica", basic::kill_replica, Setup::default();
    freeze_primary_sync, freeze_primary_async, "freeze-primary", basic::freeze_primary, Setup::default();
    cut_primary_sync, cut_primary_async, "cut-primary", basic::cut_primary, Setup::default();
    partition_primary_node_sync, partition_primary_node_async, "partition-primary-node",
        basic::partition_primary_node, Setup { recovery: Recovery::Node, ..Setup::default() };
    stop_primary_node_sync, stop_primary_node_async, "stop-primary-node", basic::stop_primary_node,
        Setup { recovery: Recovery::NodeRestart, ..Setup::default() };
    // In sync mode the recorded synchronous standby is cut, and the write gap bounded.
    cut_replica_sync, cut_replica_async, "cut-replica", basic::cut_replica, Setup::default();
    apiserver_stop_sync, apiserver_stop_async, "apiserver-stop", basic::apiserver_stop, Setup::default();
    apiserver_stop_failsafe_sync, apiserver_stop_failsafe_async, "apiserver-stop-failsafe", basic::apiserver_stop,
        // Every member still confirms the primary over REST: it must keep serving (docs/design.md L5).
        Setup {
            failsafe: true,
            max_write_gap: Some(Duration::from_secs(Timings::DEFAULT.renew)),
            ..Setup::default()
        };
    delete_primary_pod_sync, delete_primary_pod_async, "delete-primary-pod", basic::delete_primary_pod,
        Setup { lossless: true, ..Setup::default() };
    scale_sync, scale_async, "scale-3-5-2", basic::scale_under_load,
        Setup {
            spread_required: false,
            converge_within: Some(Duration::from_secs(120)),
            ..Setup::default()
        };
    scale_down_primary_sync, scale_down_primary_async, "scale-down-primary", basic::scale_down_primary_last,
        Setup { lossless: true, ..Setup::default() };
    switchover_sync, switchover_async, "switchover", basic::switchover_under_load,
        Setup { lossless: true, ..Setup::default() };
    kill_new_primary_sync, kill_new_primary_async, "kill-new-primary", basic::kill_new_primary_during_failover,
        Setup { recovery: Recovery::SecondFailover, ..Setup::default() };

    // The grey failures of issue 13 (scenarios::grey).
    slow_apiserver_lost_reply_sync, slow_apiserver_lost_reply_async, "slow-apiserver-lost-reply",
        grey::slow_apiserver_lost_reply, Setup::default();
    slow_apiserver_30s_sync, slow_apiserver_30s_async, "slow-apiserver-30s", grey::slow_apiserver_long,
        Setup::default();
    lease_recreate_sync, lease_recreate_async, "lease-recreate", grey::lease_recreate,
        Setup { lossless: true, ..Setup::default() };
    partition_force_delete_sync, partition_force_delete_async, "partition-force-delete",
        grey::partition_force_delete,
        Setup { timings: Timings::SHORT, recovery: Recovery::Node, ..Setup::default() };
    ha_change_sync, ha_change_async, "ha-change", grey::ha_change, Setup::default();
    pause_partition_sync, pause_partition_async, "pause-partition", grey::pause_partition,
        Setup { timings: Timings::SHORT, recovery: Recovery::Node, ..Setup::default() };
    restart_each_member_sync, restart_each_member_async, "restart-each-member", grey::restart_each_member,
        Setup { lossless: true, ..Setup::default() };

    // Issue 14: a changed pod template rolled under load (supervised in sync mode).
    rolling_update_sync, rolling_update_async, "rolling-update", basic::rolling_update,
        Setup { lossless: true, converge_within: Some(Duration::from_secs(120)), ..Setup::default() };
    // Issue 14: hibernated under load and woken up: every acknowledged write kept in both modes.
    hibernation_sync, hibernation_async, "hibernation", basic::hibernation,
        Setup { lossless: true, converge_within: Some(Duration::from_secs(180)), ..Setup::default() };
}

/// A restart-only parameter rolled like a template: the roll's mechanics are the same in both modes, so
/// one row (async: the unsupervised path).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the local cluster (make cluster)"]
async fn pending_restart_roll_async() -> Result<()> {
    run_scenario(
        "pending-restart-roll",
        Mode::Async,
        Setup {
            lossless: true,
            converge_within: Some(Duration::from_secs(120)),
            ..Setup::default()
        },
        basic::pending_restart_roll,
    )
    .await
}

/// The primary's log pipe full (its node's containerd stopped reading): nothing in the member may block
/// on it. One row: the log path does not depend on the mode; sync is the stricter one (no write lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the local cluster (make cluster)"]
async fn log_stall_sync() -> Result<()> {
    run_scenario(
        "log-stall",
        Mode::Sync,
        Setup {
            lossless: true,
            ..Setup::default()
        },
        grey::log_stall,
    )
    .await
}

/// 3 → 1 while the highest ordinal is the primary: one row, starting in sync mode (the change sets
/// `mode: async` too, a single member cannot be synchronous), so the switchover starts from a recorded
/// synchronous standby; the 3 → 2 rows cover both modes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the local cluster (make cluster)"]
async fn scale_down_to_one_sync() -> Result<()> {
    run_scenario(
        "scale-down-to-one",
        Mode::Sync,
        Setup {
            lossless: true,
            converge_within: Some(Duration::from_secs(180)),
            ..Setup::default()
        },
        basic::scale_down_to_one,
    )
    .await
}

/// A synchronous standby lags only in a synchronous mode: one row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the local cluster (make cluster)"]
async fn cut_other_while_sync_lags_sync() -> Result<()> {
    run_scenario(
        "cut-other-while-sync-lags",
        Mode::Sync,
        Setup::default(),
        grey::cut_other_while_sync_lags,
    )
    .await
}

/// A manual failover needs a blocked automatic one, which a synchronous mode gives: one row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the local cluster (make cluster)"]
async fn manual_failover_blocked_sync() -> Result<()> {
    run_scenario(
        "manual-failover-blocked",
        Mode::Sync,
        Setup {
            recovery: Recovery::NodeRestart,
            forced: true,
            ..Setup::default()
        },
        basic::manual_failover_blocked,
    )
    .await
}

/// Issue 14: the CRD's default major version, on the local PostgreSQL 17 stand-in. A crash failover in
/// sync mode (the former primary rejoins with pg_rewind of 17) and a planned switchover in async mode
/// (the former primary follows without a rewind) cover what differs between majors: initdb, the
/// replication and rewind tools, the control file, the SQL the sidecar reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the local cluster (make cluster images)"]
async fn pg17_kill_primary_sync() -> Result<()> {
    run_on_pg17(
        "kill-primary-pg17",
        Mode::Sync,
        Setup::default(),
        basic::kill_primary,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the local cluster (make cluster images)"]
async fn pg17_switchover_async() -> Result<()> {
    let setup = Setup {
        lossless: true,
        ..Setup::default()
    };
    run_on_pg17(
        "switchover-pg17",
        Mode::Async,
        setup,
        basic::switchover_under_load,
    )
    .await
}

/// [`run_scenario`] on the PostgreSQL 17 image, the body preceded by the check that every member runs 17.
async fn run_on_pg17<F>(id: &str, mode: Mode, setup: Setup, body: F) -> Result<()>
where
    F: AsyncFnOnce(&mut Harness, &mut Scene) -> Result<()>,
{
    let setup = Setup {
        image: deploy::POSTGRES_17,
        ..setup
    };
    run_scenario(id, mode, setup, async |h: &mut Harness, s: &mut Scene| {
        basic::expect_major(h, s, 17).await?;
        body(h, s).await
    })
    .await
}
