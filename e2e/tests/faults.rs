//! The fault matrix: every scenario in its own namespace, a 3-member cluster spread over the 3 nodes, the
//! writer and the split-brain probes running, one fault injected and healed, then the verdict: no span
//! with two writable members, convergence within a bound derived from the Lease timings, and — in
//! synchronous mode — no acknowledged write lost (asynchronous mode reports its loss). In a synchronous
//! mode no fault is injected before the Lease records a synchronous standby that streams. Some rows assert
//! more: a killed or frozen primary's successor stays primary (the old one rejoins as a replica; a
//! frozen one was fenced, and its successor held the Lease), a killed primary's successor was a recorded
//! synchronous standby, a deleted primary pod's Lease was released (one takeover, within 10 s), and a
//! switchover or a pod deletion loses no acknowledged write in asynchronous mode either. After the heal,
//! writes through `-rw` must resume within the convergence bound, and no member may accept writes for
//! longer than `renewDeadline` while `-rw` acknowledges none.
//!
//! The scenarios need the local cluster (`make cluster images`) and are slow (1–3 minutes each on
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
use pgpilot_crds::contract;
use pgpilot_e2e::{
    TestNamespace,
    checker::{
        harness::{Harness, HarnessError},
        probe::Sample,
        verdict::{self, Expectations, Micros, Requirement},
        writer::{self, Pace, Target, Writer},
    },
    client,
    clock::now_us,
    cluster,
    deploy::{self, Manifest},
    fault, rest,
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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Sync,
    Async,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Sync => "sync",
            Mode::Async => "async",
        }
    }
}

/// The Lease timings every scenario uses (the CRD's defaults), in seconds.
const LEASE: u64 = 15;
const RENEW: u64 = 10;
const RETRY: u64 = 2;

/// What a scenario body gets besides the harness.
struct Ctx {
    ns: TestNamespace,
    mode: Mode,
    /// In synchronous mode: the standbys the Lease recorded as synchronous before the fault.
    sync_standbys: Vec<String>,
}

impl Ctx {
    fn target(&self, pod: &str) -> String {
        format!("{}/{pod}", self.ns.name)
    }
}

const CLUSTER: &str = "pg";

/// The cluster under test: 3 members, one per node (required anti-affinity, so every node-level fault
/// hits exactly one member) unless `spread_required` is off, the given mode and the default timings.
fn manifest(mode: Mode, setup: Setup) -> Manifest {
    Manifest {
        timings: (LEASE as u32, RENEW as u32, RETRY as u32),
        failsafe: setup.failsafe,
        spread_required: setup.spread_required,
        ..Manifest::new(CLUSTER, 3, mode.name())
    }
}

/// How a scenario's cluster is set up.
#[derive(Clone, Copy)]
struct Setup {
    spread_required: bool,
    failsafe: bool,
    /// Converge within this long of the heal.
    converge_within: Duration,
    /// Writes never unavailable for longer than this (failsafe).
    max_write_gap: Option<Duration>,
    /// After the heal, a member may accept writes this long while `-rw` acknowledges none.
    rw_unreachable_within: Duration,
    /// No acknowledged write may be lost in asynchronous mode either (a planned switchover, a pod deleted
    /// gracefully: the primary stops before anyone takes over).
    lossless: bool,
}

/// Long enough for a failover (`leaseDuration` at worst, L2), then for the old primary to come back as a
/// replica: restart, `pg_rewind` or a fresh clone, and streaming.
fn default_bound() -> Duration {
    Duration::from_secs(2 * LEASE + 30)
}

/// How long a primary may serve before `-rw` reaches it: its sidecar relabels the pod within a loop
/// (`retryPeriod`), the EndpointSlice follows at once and kube-proxy within about a second, the writer
/// reconnects within its 3 s bound; `renewDeadline` leaves room for a loaded 2-core machine and still
/// catches a role label that missed its patch (issue 13: 27 s).
fn route_bound() -> Duration {
    Duration::from_secs(RENEW)
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            spread_required: true,
            failsafe: false,
            converge_within: default_bound(),
            max_write_gap: None,
            rw_unreachable_within: route_bound(),
            lossless: false,
        }
    }
}

fn micros(d: Duration) -> Micros {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// Runs one scenario end to end and asserts its verdict.
async fn run_scenario<F>(id: &str, mode: Mode, setup: Setup, body: F) -> Result<()>
where
    F: AsyncFnOnce(&mut Harness, &Ctx) -> Result<()>,
{
    let kube = client().await?;
    let short: String = id.chars().take(16).collect();
    let mut ns = TestNamespace::create(&format!("f-{short}-{}", mode.name()))?;
    // A cluster that never gets Ready fails with its description (`deploy`); one whose writes never start,
    // with it printed here.
    deploy::deploy(&mut ns, &manifest(mode, setup), Duration::from_secs(240)).await?;
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
    let started = started.await;
    let (mut h, ctx) = match started {
        Ok((h, sync_standbys)) => (
            h,
            Ctx {
                ns,
                mode,
                sync_standbys,
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
        eprintln!("{}", cluster::describe(&ctx.ns, CLUSTER, 3));
    }
    if let Some(max) = setup.max_write_gap {
        h.require(Requirement::WriteGapAtMost(micros(max)));
    }
    let outcome = body(&mut h, &ctx).await;
    if let Err(e) = &outcome {
        h.mark(format!("scenario body failed: {e:#}"));
    }
    fault::undo_all(&ctx.ns.name, CLUSTER, 5).await;
    let expect = Expectations {
        max_lost: (mode == Mode::Sync || setup.lossless).then_some(0),
        converge_within_us: micros(setup.converge_within),
        rw_unreachable_within_us: micros(setup.rw_unreachable_within),
    };
    let verdict = h
        .finish(id, mode.name(), expect, Duration::from_secs(15))
        .await?;
    outcome?;
    if !verdict.passed() {
        bail!("{id} ({}) failed:\n{}", mode.name(), verdict.table());
    }
    Ok(())
}

/// The member the probes see writable.
async fn primary(h: &Harness) -> Result<String> {
    Ok(h.wait_primary(Duration::from_secs(30)).await?)
}

/// A replica (a member other than the primary).
async fn replica(h: &Harness) -> Result<String> {
    let p = primary(h).await?;
    h.members
        .iter()
        .find(|m| **m != p)
        .cloned()
        .context("no replica")
}

/// Waits until a member other than `old` accepts writes.
async fn wait_new_primary(h: &Harness, old: &str, timeout: Duration) -> Result<String> {
    Ok(h.wait_new_primary(old, timeout).await?)
}

/// The node a member runs on.
async fn node_of(h: &Harness, member: &str) -> Result<String> {
    h.pods()
        .await?
        .into_iter()
        .find(|p| p.name == member)
        .and_then(|p| p.node)
        .context("member has no node")
}

/// The cluster's Lease now.
async fn lease(h: &Harness) -> Result<cluster::LeaseRecord> {
    Ok(cluster::lease(&h.client, &h.namespace, &contract::lease_name(CLUSTER)).await?)
}

async fn sleep_secs(s: u64) {
    tokio::time::sleep(Duration::from_secs(s)).await;
}

// --- scenario bodies -------------------------------------------------------------------------------

async fn kill_primary(h: &mut Harness, c: &Ctx) -> Result<()> {
    let p = primary(h).await?;
    h.fault("kill", &c.target(&format!("{p}/postgres"))).await?;
    h.healed();
    let new = wait_new_primary(h, &p, Duration::from_secs(LEASE + 15)).await?;
    // Only a member recorded as synchronous may take over in a synchronous mode (L3).
    ensure!(
        c.mode == Mode::Async || c.sync_standbys.contains(&new),
        "{new} took over but was not a recorded synchronous standby ({:?})",
        c.sync_standbys
    );
    // The killed primary comes back as a streaming replica of the new one (convergence), which stays.
    h.require(Requirement::FinalPrimary(new));
    Ok(())
}

async fn kill_replica(h: &mut Harness, c: &Ctx) -> Result<()> {
    let r = replica(h).await?;
    h.fault("kill", &c.target(&format!("{r}/postgres"))).await?;
    h.healed();
    Ok(())
}

async fn freeze_primary(h: &mut Harness, c: &Ctx) -> Result<()> {
    let p = primary(h).await?;
    h.fault("freeze", &c.target(&p)).await?;
    // Frozen past leaseDuration: a replica takes over (L2) and holds the Lease; the frozen one cannot renew.
    let new = wait_new_primary(h, &p, Duration::from_secs(LEASE + 15)).await?;
    let holder = lease(h).await?.holder;
    ensure!(
        holder.as_deref() == Some(new.as_str()),
        "{new} accepts writes while the Lease names {holder:?}"
    );
    sleep_secs(5).await;
    h.fault("thaw", &c.target(&p)).await?;
    h.healed();
    // The thawed primary was fenced (L5) before it could serve (no split brain), rejoins as a replica, and
    // the primary does not move again.
    h.require(Requirement::FinalPrimary(new));
    Ok(())
}

async fn cut_primary(h: &mut Harness, c: &Ctx) -> Result<()> {
    let p = primary(h).await?;
    h.fault("cut", &c.target(&p)).await?;
    wait_new_primary(h, &p, Duration::from_secs(LEASE + 15)).await?;
    sleep_secs(5).await;
    h.fault("heal", &c.target(&p)).await?;
    h.healed();
    Ok(())
}

async fn cut_replica(h: &mut Harness, c: &Ctx) -> Result<()> {
    let r = replica(h).await?;
    h.fault("cut", &c.target(&r)).await?;
    sleep_secs(LEASE + 5).await;
    h.fault("heal", &c.target(&r)).await?;
    h.healed();
    Ok(())
}

async fn partition_primary_node(h: &mut Harness, _c: &Ctx) -> Result<()> {
    let p = primary(h).await?;
    let node = node_of(h, &p).await?;
    h.fault("partition", &node).await?;
    wait_new_primary(h, &p, Duration::from_secs(LEASE + 15)).await?;
    sleep_secs(5).await;
    h.fault("heal", &node).await?;
    h.healed();
    Ok(())
}

async fn stop_primary_node(h: &mut Harness, _c: &Ctx) -> Result<()> {
    let p = primary(h).await?;
    let node = node_of(h, &p).await?;
    h.fault("stop", &node).await?;
    wait_new_primary(h, &p, Duration::from_secs(LEASE + 15)).await?;
    sleep_secs(5).await;
    h.fault("start", &node).await?;
    h.healed();
    Ok(())
}

async fn apiserver_stop(h: &mut Harness, _c: &Ctx) -> Result<()> {
    h.fault("apiserver-stop", "").await?;
    sleep_secs(60).await;
    h.fault("apiserver-start", "").await?;
    h.healed();
    Ok(())
}

/// SIGTERM (pod deletion): the sidecar stops PostgreSQL fast and releases the Lease (L4), which a replica
/// claims at once (L2) instead of waiting for it to expire — one takeover, well within `leaseDuration`.
async fn delete_primary_pod(h: &mut Harness, c: &Ctx) -> Result<()> {
    let p = primary(h).await?;
    let epoch = lease(h).await?.transitions;
    let at = now_us();
    c.ns.kubectl(&["delete", "pod", &p, "--wait=false"])?;
    h.fault_marked(at, format!("kubectl delete pod {p}"));
    h.healed();
    let new = wait_new_primary(h, &p, Duration::from_secs(LEASE + 15)).await?;
    h.require(Requirement::FinalLease {
        holder: new,
        transitions: epoch + 1,
    });
    // Well before the 15 s Lease would have expired: the release was used.
    h.require(Requirement::TakeoverWithin(micros(Duration::from_secs(10))));
    Ok(())
}

async fn scale_under_load(h: &mut Harness, c: &Ctx) -> Result<()> {
    let at = now_us();
    c.ns.kubectl(&["scale", &format!("pgc/{CLUSTER}"), "--replicas=5"])?;
    h.fault_marked(at, "kubectl scale pgc/pg --replicas=5");
    h.set_members(5);
    h.wait_converged_since(now_us(), Duration::from_secs(240))
        .await?;
    let at = now_us();
    c.ns.kubectl(&["scale", &format!("pgc/{CLUSTER}"), "--replicas=2"])?;
    h.fault_marked(at, "kubectl scale pgc/pg --replicas=2");
    h.set_members(2);
    h.healed();
    Ok(())
}

/// `POST /switchover` with the cluster's API credentials: in synchronous mode to the primary, in
/// asynchronous mode to the candidate (a replica forwards it to the primary). No acknowledged write is
/// lost in either mode.
async fn switchover_under_load(h: &mut Harness, c: &Ctx) -> Result<()> {
    let p = primary(h).await?;
    let pods = h.pods().await?;
    // In synchronous mode only a synchronous standby may take over (a 412 otherwise, as in Patroni): ask
    // each replica's `GET /sync`.
    let mut candidate = None;
    for pod in pods.iter().filter(|x| x.name != p) {
        let Some(ip) = &pod.ip else { continue };
        if c.mode == Mode::Async || rest::is_sync(ip).await {
            candidate = Some(pod.name.clone());
            break;
        }
    }
    let candidate = candidate.context("no replica may take over")?;
    let via = match c.mode {
        Mode::Sync => &p,
        Mode::Async => &candidate,
    };
    let ip = cluster::ip_of(&pods, via).with_context(|| format!("{via} has no IP"))?;
    let at = now_us();
    let (status, text) =
        rest::switchover(&h.client, &c.ns.name, CLUSTER, &ip, &p, &candidate).await?;
    h.fault_marked(
        at,
        format!("POST /switchover {p} -> {candidate} (to {via}): {status} {text}"),
    );
    ensure!(status == 200, "switchover answered {status}: {text}");
    h.healed();
    let now = wait_new_primary(h, &p, Duration::from_secs(30)).await?;
    ensure!(
        now == candidate,
        "switched over to {now}, asked for {candidate}"
    );
    Ok(())
}

async fn kill_new_primary_during_failover(h: &mut Harness, c: &Ctx) -> Result<()> {
    let p = primary(h).await?;
    h.fault("kill", &c.target(&format!("{p}/postgres"))).await?;
    let second = wait_new_primary(h, &p, Duration::from_secs(LEASE + 15)).await?;
    h.fault("kill", &c.target(&format!("{second}/postgres")))
        .await?;
    h.healed();
    Ok(())
}

/// Two tests per scenario (sync, async): `$id` names the scenario in its verdict.
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
    kill_primary_sync, kill_primary_async, "kill-primary", kill_primary, Setup::default();
    kill_replica_sync, kill_replica_async, "kill-replica", kill_replica, Setup::default();
    freeze_primary_sync, freeze_primary_async, "freeze-primary", freeze_primary, Setup::default();
    cut_primary_sync, cut_primary_async, "cut-primary", cut_primary, Setup::default();
    partition_primary_node_sync, partition_primary_node_async, "partition-primary-node", partition_primary_node,
        Setup { converge_within: Duration::from_secs(2 * LEASE + 60), ..Setup::default() };
    stop_primary_node_sync, stop_primary_node_async, "stop-primary-node", stop_primary_node,
        Setup { converge_within: Duration::from_secs(2 * LEASE + 90), ..Setup::default() };
    cut_replica_sync, cut_replica_async, "cut-replica", cut_replica, Setup::default();
    apiserver_stop_sync, apiserver_stop_async, "apiserver-stop", apiserver_stop, Setup::default();
    apiserver_stop_failsafe_sync, apiserver_stop_failsafe_async, "apiserver-stop-failsafe", apiserver_stop,
        // Every member still confirms the primary over REST: it must keep serving (docs/design.md L5).
        Setup { failsafe: true, max_write_gap: Some(Duration::from_secs(RENEW)), ..Setup::default() };
    delete_primary_pod_sync, delete_primary_pod_async, "delete-primary-pod", delete_primary_pod,
        Setup { lossless: true, ..Setup::default() };
    scale_sync, scale_async, "scale-3-5-2", scale_under_load,
        Setup { spread_required: false, converge_within: Duration::from_secs(120), ..Setup::default() };
    switchover_sync, switchover_async, "switchover", switchover_under_load,
        Setup { lossless: true, ..Setup::default() };
    kill_new_primary_sync, kill_new_primary_async, "kill-new-primary", kill_new_primary_during_failover,
        Setup { converge_within: Duration::from_secs(3 * LEASE + 30), ..Setup::default() };
}
