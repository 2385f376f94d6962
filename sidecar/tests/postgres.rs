//! The PostgreSQL lifecycle against real PostgreSQL 15 servers on loopback (no Kubernetes).
//!
//! Tests run as root; the servers run as the `postgres` OS user (`run_as`) with their data under
//! /var/tmp. Run as the `postgres` user itself, they exercise the pod's case (`run_as: None`). Each
//! test has its own directory and ports; servers are stopped at the end of each test and, if it
//! panics, by `Postgres`'s drop (immediate shutdown). A failed test keeps its directory (logs).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test harness helpers: a failed set-up step fails the test"
)]

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use pgpilot_sidecar::postgres::{
    Change, Credentials, Desired, Error, Observation, PgSettings, Postgres, Rejoined, Role,
    StopMode, SyncMethod, SyncStandbys, Upstream, UserPassword, find_bin_dir, slot_name,
};
use tokio_postgres::{Client, NoTls};

// ---------------------------------------------------------------------------------------------------
// Harness

/// A directory under /var/tmp owned by the postgres user; removed unless the test failed.
struct TestDir(PathBuf);

impl TestDir {
    fn new(name: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = PathBuf::from(format!(
            "/var/tmp/pgpilot-it-{}-{}-{name}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&path).unwrap();
        give_to_postgres(&path);
        Self(path)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "keeping {} for inspection (logs: */postgres.log)",
                self.0.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// As root (CI, `make test`), the servers run as the `postgres` OS user. Run as that user (the pod's
/// situation: `sudo -u postgres <test binary>`), they run as the test process itself.
fn run_as() -> Option<(u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    let euid = std::fs::metadata("/proc/self").unwrap().uid();
    (euid == 0).then(postgres_ids)
}

fn give_to_postgres(path: &std::path::Path) {
    if let Some((uid, gid)) = run_as() {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
    }
}

/// uid and gid of the `postgres` OS user, from /etc/passwd.
fn postgres_ids() -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    let line = passwd
        .lines()
        .find(|l| l.starts_with("postgres:"))
        .expect("a postgres OS user");
    let fields: Vec<&str> = line.split(':').collect();
    (fields[2].parse().unwrap(), fields[3].parse().unwrap())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Passwords with a quote and a backslash: every layer of quoting (conninfo inside postgresql.conf,
/// SQL literals, pwfile) has to get them right for the tests to connect at all.
fn creds() -> Credentials {
    let up = |u: &str, p: &str| UserPassword {
        username: u.into(),
        password: p.into(),
    };
    Credentials {
        superuser: up("postgres", "su'per\\pw"),
        replication: up("replicator", "re'pl\\pw"),
        app: up("app", "app pw"),
        database: "appdb".into(),
    }
}

const CLUSTER: &str = "pgit";

fn member(dir: &TestDir, name: &str) -> Postgres {
    let home = dir.0.join(name);
    std::fs::create_dir_all(&home).unwrap();
    give_to_postgres(&home);
    let settings = PgSettings {
        bin_dir: find_bin_dir(),
        data_dir: home.join("pgdata"),
        port: free_port(),
        socket_dir: home.join("sock"),
        listen_addresses: "127.0.0.1".into(),
        run_as: run_as(),
        member: name.into(),
        cluster: CLUSTER.into(),
        start_timeout: Duration::from_secs(60),
        stop_timeout: Duration::from_secs(20),
        log_file: Some(home.join("postgres.log")),
    };
    Postgres::new(settings, creds())
}

fn upstream(pg: &Postgres) -> Upstream {
    Upstream {
        host: "127.0.0.1".into(),
        port: pg.settings().port,
    }
}

fn desired(role: Role) -> Desired {
    Desired {
        role,
        // Small and fast for tests; the spec's parameters go through the same path.
        parameters: BTreeMap::from([
            ("shared_buffers".into(), "16MB".into()),
            ("fsync".into(), "off".into()),
        ]),
        pg_hba: vec![],
        synchronous: None,
        member_slots: vec![],
        replication_timeout: None,
    }
}

fn replica_of(up: &Postgres, me: &str) -> Desired {
    desired(Role::Replica {
        upstream: upstream(up),
        slot: Some(slot_name(me)),
    })
}

/// A running, bootstrapped primary.
async fn primary(dir: &TestDir, name: &str, members: &[&str]) -> Postgres {
    let mut pg = member(dir, name);
    assert!(!pg.is_initialized());
    let mut d = desired(Role::Primary);
    d.member_slots = members.iter().map(|m| (*m).to_owned()).collect();
    pg.bootstrap_primary(&d).await.unwrap();
    assert!(pg.is_initialized());
    pg
}

/// A running replica cloned from `up`, streaming through its slot.
async fn replica(dir: &TestDir, name: &str, up: &Postgres) -> Postgres {
    let mut pg = member(dir, name);
    pg.clone_replica(&replica_of(up, name)).await.unwrap();
    pg
}

/// Primary m0 (with slots for m0 and m1) and replica m1 streaming from it.
async fn two_streaming(dir: &TestDir) -> (Postgres, Postgres) {
    let mut a = primary(dir, "m0", &["m0", "m1"]).await;
    let b = replica(dir, "m1", &a).await;
    wait_streaming(&mut a, "m1").await;
    (a, b)
}

/// Primary m0 (with a slot for each member) and replicas m1, m2 streaming from it.
async fn three_streaming(dir: &TestDir) -> (Postgres, Postgres, Postgres) {
    let mut a = primary(dir, "m0", &["m0", "m1", "m2"]).await;
    let b = replica(dir, "m1", &a).await;
    let c = replica(dir, "m2", &a).await;
    wait_streaming(&mut a, "m1").await;
    wait_streaming(&mut a, "m2").await;
    (a, b, c)
}

/// A TCP connection as `user` (superuser or app) to `db`.
async fn sql(
    pg: &Postgres,
    user: &UserPassword,
    db: &str,
) -> Result<Client, tokio_postgres::Error> {
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(pg.settings().port)
        .user(&user.username)
        .password(&user.password)
        .dbname(db)
        .connect_timeout(Duration::from_secs(5));
    let (client, conn) = config.connect(NoTls).await?;
    tokio::spawn(conn);
    Ok(client)
}

async fn superuser(pg: &Postgres) -> Client {
    sql(pg, &creds().superuser, "postgres").await.unwrap()
}

/// Polls `check` every 100 ms until it returns `Some`, failing after `secs`.
async fn eventually<T, F>(secs: u64, what: &str, mut check: F) -> T
where
    F: AsyncFnMut() -> Option<T>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_streaming(primary: &mut Postgres, replica: &str) -> Observation {
    let name = replica.to_owned();
    eventually(30, &format!("{replica} streaming"), async || {
        let obs = primary.observe().await;
        obs.replication
            .iter()
            .any(|r| r.application_name == name && r.state == "streaming")
            .then_some(obs)
    })
    .await
}

async fn wait_sync_state(primary: &mut Postgres, replica: &str, want: &str) {
    eventually(10, &format!("{replica} {want}"), async || {
        let obs = primary.observe().await;
        obs.replication
            .iter()
            .any(|row| row.application_name == replica && row.sync_state == want)
            .then_some(())
    })
    .await
}

async fn show(pg: &Postgres, name: &str) -> String {
    superuser(pg)
        .await
        .query_one(&format!("SHOW {name}"), &[])
        .await
        .unwrap()
        .get(0)
}

async fn count_rows(c: &Client, table: &str) -> i64 {
    c.query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .unwrap()
        .get(0)
}

/// The values of table `t` in order, polled until one of them is `row` (within `secs`).
async fn rows_of_t_once_one_is(c: &Client, row: &str, secs: u64, what: &str) -> Vec<String> {
    eventually(secs, what, async || {
        let rows = c.query("SELECT v FROM t ORDER BY v", &[]).await.ok()?;
        let rows: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        rows.iter().any(|v| v == row).then_some(rows)
    })
    .await
}

// ---------------------------------------------------------------------------------------------------
// Tests

#[tokio::test]
async fn initdb_makes_a_writable_primary_with_roles_and_database() {
    let dir = TestDir::new("initdb");
    let mut pg = primary(&dir, "m0", &[]).await;
    pg.bootstrap_roles()
        .await
        .expect("bootstrap_roles is idempotent");

    let app = sql(&pg, &creds().app, "appdb")
        .await
        .expect("the app role logs into its database");
    app.batch_execute("CREATE TABLE t (v int); INSERT INTO t VALUES (1), (2)")
        .await
        .unwrap();
    assert_eq!(count_rows(&app, "t").await, 2);

    let su = superuser(&pg).await;
    // The versions the HA loop compares before it touches a data directory: the image's server, the
    // directory's PG_VERSION and the running server's own all agree.
    let running: i32 = su
        .query_one("SELECT current_setting('server_version_num')::int4", &[])
        .await
        .unwrap()
        .get(0);
    let running = u32::try_from(running / 10000).ok();
    assert!(running.is_some_and(|v| v >= 10), "{running:?}");
    assert_eq!(pg.binary_major().await, running, "postgres --version");
    assert_eq!(pg.data_major(), running, "PG_VERSION");
    let row = su
        .query_one(
            "SELECT rolreplication, rolcanlogin, (SELECT datdba::regrole::text FROM pg_database WHERE datname = 'appdb'),
                    current_setting('data_checksums'), current_setting('password_encryption'),
                    (SELECT rolpassword LIKE 'SCRAM-SHA-256$%' FROM pg_authid WHERE rolname = 'app')
               FROM pg_roles WHERE rolname = 'replicator'",
            &[],
        )
        .await
        .unwrap();
    assert!(
        row.get::<_, bool>(0) && row.get::<_, bool>(1),
        "replicator may log in and replicate"
    );
    assert_eq!(
        row.get::<_, String>(2),
        "app",
        "appdb is owned by the app role"
    );
    assert_eq!(row.get::<_, String>(3), "on", "data checksums");
    assert_eq!(row.get::<_, String>(4), "scram-sha-256");
    assert!(row.get::<_, bool>(5), "passwords stored as SCRAM verifiers");
    let wrong = UserPassword {
        username: "app".into(),
        password: "wrong".into(),
    };
    assert!(
        sql(&pg, &wrong, "appdb").await.is_err(),
        "a wrong password is refused"
    );

    let obs = pg.observe().await;
    assert!(obs.running && obs.accepting, "{obs:?}");
    assert_eq!(obs.in_recovery, Some(false));
    assert_eq!(obs.timeline, Some(1));
    assert!(obs.current_lsn.is_some_and(|l| l > 0));
    assert!(
        obs.server_version
            .is_some_and(|v| (150_000..160_000).contains(&v))
    );

    pg.stop(StopMode::Fast).await.unwrap();
    let after = pg.observe().await;
    assert!(!after.running && !after.accepting);
    assert_eq!(pg.exited(), None, "a requested stop is not a crash");
    let control = pg.controldata().await.unwrap();
    assert!(control.is_clean_primary_shutdown(), "{control:?}");
    assert!(control.data_checksums);
    assert_eq!(control.timeline, 1);
}

#[tokio::test]
async fn basebackup_replica_streams_and_promotes_onto_a_new_timeline() {
    let dir = TestDir::new("stream");
    let mut p = primary(&dir, "m0", &["m0", "m1"]).await;
    let mut r = member(&dir, "m1");
    let nobody = Upstream {
        host: "127.0.0.1".into(),
        port: free_port(),
    };
    let err = r
        .basebackup(&nobody, None)
        .await
        .expect_err("nothing listens there");
    assert!(
        matches!(
            err,
            Error::Tool {
                tool: "pg_basebackup",
                ..
            }
        ),
        "{err}"
    );
    assert!(
        !r.is_initialized(),
        "a failed clone is not a data directory"
    );
    r.basebackup(&upstream(&p), None)
        .await
        .expect("a second clone cleans up after the first");
    assert!(
        matches!(
            r.basebackup(&upstream(&p), None).await,
            Err(Error::NotEmpty(_))
        ),
        "never clone over a complete data directory"
    );
    r.configure(&replica_of(&p, "m1")).await.unwrap();
    r.start().await.unwrap();
    assert!(
        matches!(
            r.basebackup(&upstream(&p), None).await,
            Err(Error::AlreadyRunning { .. })
        ),
        "never clone over a running server"
    );

    let pobs = wait_streaming(&mut p, "m1").await;
    let row = pobs
        .replication
        .iter()
        .find(|row| row.application_name == "m1")
        .unwrap();
    assert_eq!(row.sync_state, "async");
    let psu = superuser(&p).await;
    let slot: (String, bool) = psu
        .query_one(
            "SELECT slot_name::text, active FROM pg_replication_slots",
            &[],
        )
        .await
        .map(|row| (row.get(0), row.get(1)))
        .unwrap();
    assert_eq!(
        slot,
        ("m1".into(), true),
        "the replica streams through the slot the primary keeps for it"
    );

    psu.batch_execute("CREATE TABLE t (v int); INSERT INTO t VALUES (42)")
        .await
        .unwrap();
    let rsu = superuser(&r).await;
    eventually(10, "row replicated", async || {
        rsu.query("SELECT v FROM t", &[])
            .await
            .ok()
            .filter(|rows| rows.len() == 1)
    })
    .await;
    let err = rsu
        .batch_execute("INSERT INTO t VALUES (1)")
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::READ_ONLY_SQL_TRANSACTION)
    );

    let robs = r.observe().await;
    assert_eq!(robs.in_recovery, Some(true));
    let wal = robs.wal_receiver.clone().expect("a wal receiver");
    assert_eq!(wal.status, "streaming");
    assert_eq!(wal.upstream_host.as_deref(), Some("127.0.0.1"));
    assert_eq!(wal.upstream_port, Some(p.settings().port));
    assert_eq!(wal.slot_name.as_deref(), Some("m1"));
    assert_eq!(robs.timeline, Some(1));
    assert!(robs.wal_position().is_some());

    // Failover: the primary goes away, the replica is promoted and takes writes on timeline 2.
    let t = Instant::now();
    p.stop(StopMode::Fast).await.unwrap();
    let stopped = t.elapsed();
    r.promote().await.unwrap();
    eprintln!(
        "timing: fast stop {stopped:?}, pg_promote {:?}",
        t.elapsed() - stopped
    );
    assert_eq!(
        r.configure(&desired(Role::Primary)).await.unwrap(),
        Change::Reloaded
    );
    assert!(!r.settings().data_dir.join("standby.signal").exists());
    let obs = r.observe().await;
    assert_eq!(obs.in_recovery, Some(false));
    assert_eq!(obs.timeline, Some(2));
    let rsu = superuser(&r).await;
    rsu.batch_execute("INSERT INTO t VALUES (43)")
        .await
        .unwrap();
    assert_eq!(count_rows(&rsu, "t").await, 2);
    r.stop(StopMode::Fast).await.unwrap();
}

/// A standby's timeline is the newest it received WAL on, also while no WAL receiver runs (its upstream
/// gone): the checkpoint's timeline lags a timeline switch until the next restartpoint, minutes later. A
/// standby that reported it would see a peer that kept its receiver a moment longer "on a newer
/// timeline" and never take over (seen in the soak: the recorded synchronous standby said
/// `OlderTimeline` about an asynchronous one after the primary died, and nobody took over).
#[tokio::test]
async fn a_standby_keeps_its_timeline_once_its_upstream_is_gone() {
    let dir = TestDir::new("timeline");
    let (mut a, mut b, mut c) = three_streaming(&dir).await;
    a.stop(StopMode::Fast).await.unwrap();
    b.promote().await.unwrap();
    b.configure(&desired(Role::Primary)).await.unwrap();
    let follow_b = desired(Role::Replica {
        upstream: upstream(&b),
        slot: None,
    });
    if let Change::NeedsRestart(_) = c.configure(&follow_b).await.unwrap() {
        c.restart().await.unwrap();
    }
    let streaming = eventually(30, "m2 streaming timeline 2 from m1", async || {
        let o = c.observe().await;
        o.wal_receiver
            .as_ref()
            .is_some_and(|w| w.status == "streaming" && w.received_timeline == Some(2))
            .then_some(o)
    })
    .await;
    assert_eq!(streaming.timeline, Some(2));
    b.stop(StopMode::Fast).await.unwrap();
    let alone = eventually(30, "m2 without a WAL receiver", async || {
        let o = c.observe().await;
        (o.in_recovery == Some(true) && o.wal_receiver.is_none()).then_some(o)
    })
    .await;
    assert_eq!(
        alone.timeline,
        Some(2),
        "a standby that received timeline 2 reports it with its upstream gone"
    );
    c.stop(StopMode::Fast).await.unwrap();
}

/// A promoted member whose server crashed before its first checkpoint on the new timeline (the
/// checkpoint after a promotion is spread out, seconds later) and whose sidecar restarted with it (the
/// pod's container is both) reports the new timeline from its WAL, not the checkpoint's older one. If it
/// reported the older one, a replica that followed it for a moment would be "on a newer timeline" while
/// the Lease still names it and records no synchronous standby yet: nobody may take over, for good (seen
/// in CI, kill-new-primary [sync]).
#[tokio::test]
async fn a_promoted_member_crashed_before_its_checkpoint_reports_the_new_timeline() {
    use nix::{sys::signal, unistd::Pid};
    let dir = TestDir::new("crashed-promoted");
    let (mut a, mut b) = two_streaming(&dir).await;
    a.stop(StopMode::Fast).await.unwrap();
    // Hold b's checkpointer so that no checkpoint on timeline 2 can happen before the crash.
    let checkpointer: i32 = superuser(&b)
        .await
        .query_one(
            "SELECT pid FROM pg_catalog.pg_stat_activity WHERE backend_type = 'checkpointer'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    signal::kill(Pid::from_raw(checkpointer), signal::Signal::SIGSTOP).unwrap();
    b.promote().await.unwrap();
    b.configure(&desired(Role::Primary)).await.unwrap();
    superuser(&b)
        .await
        .batch_execute(
            "CREATE TABLE after_promotion (v int); INSERT INTO after_promotion VALUES (1)",
        )
        .await
        .unwrap();
    assert_eq!(b.observe().await.timeline, Some(2));
    // The container dies: the postmaster, the held checkpointer, and the sidecar's memory with them.
    let postmaster = b.pid().unwrap();
    signal::kill(Pid::from_raw(postmaster as i32), signal::Signal::SIGKILL).unwrap();
    signal::kill(Pid::from_raw(checkpointer), signal::Signal::SIGKILL).unwrap();
    eventually(5, "crash detected", async || b.exited()).await;
    let mut b = Postgres::new(b.settings().clone(), creds());
    // The restarted sidecar starts it as a standby following nobody until an election says otherwise.
    let waiting = desired(Role::Replica {
        upstream: Upstream {
            host: String::new(),
            port: 0,
        },
        slot: None,
    });
    b.configure(&waiting).await.unwrap();
    eventually(30, "restart after crash", async || b.start().await.ok()).await;
    let obs = eventually(30, "m1 in recovery", async || {
        let o = b.observe().await;
        (o.in_recovery == Some(true)).then_some(o)
    })
    .await;
    assert_eq!(
        obs.timeline,
        Some(2),
        "a crashed promoted member reports the timeline it wrote on: {obs:?}"
    );
    b.stop(StopMode::Fast).await.unwrap();
}

#[tokio::test]
async fn rewind_rejoins_a_diverged_former_primary() {
    let dir = TestDir::new("rewind");
    let (mut a, mut b) = two_streaming(&dir).await;
    let asu = superuser(&a).await;
    asu.batch_execute("CREATE TABLE t (v text); INSERT INTO t VALUES ('common'); CHECKPOINT")
        .await
        .unwrap();
    let bsu = superuser(&b).await;
    eventually(10, "common row on b", async || {
        bsu.query("SELECT 1 FROM t", &[])
            .await
            .ok()
            .filter(|rows| rows.len() == 1)
    })
    .await;

    // Split brain: b is promoted while a keeps taking writes; then a is fenced (immediate stop, so
    // pg_rewind has to finish a's crash recovery first).
    b.promote().await.unwrap();
    let mut bd = desired(Role::Primary);
    bd.member_slots = vec!["m0".into(), "m1".into()];
    b.configure(&bd).await.unwrap();
    asu.batch_execute("INSERT INTO t SELECT 'lost on a' FROM generate_series(1, 1000)")
        .await
        .unwrap();
    bsu.batch_execute("INSERT INTO t VALUES ('new on b')")
        .await
        .unwrap();
    a.fence().await.unwrap();
    assert_eq!(
        a.controldata().await.unwrap().state,
        "in production",
        "fenced without a checkpoint"
    );

    let nobody = Upstream {
        host: "127.0.0.1".into(),
        port: free_port(),
    };
    let err = a.rewind(&nobody).await.expect_err("nothing listens there");
    assert!(matches!(err, Error::Unreachable { .. }), "{err}");
    assert!(
        a.is_initialized(),
        "an unreachable source leaves the data directory untouched"
    );
    let t = Instant::now();
    a.rewind(&upstream(&b)).await.expect("pg_rewind");
    eprintln!(
        "timing: pg_rewind after an immediate stop {:?}",
        t.elapsed()
    );
    assert!(a.is_initialized());
    assert!(
        a.settings().data_dir.join("standby.signal").exists(),
        "a rewound directory only starts as a replica"
    );
    a.configure(&replica_of(&b, "m0")).await.unwrap();
    a.start().await.unwrap();
    wait_streaming(&mut b, "m0").await;

    bsu.batch_execute("INSERT INTO t VALUES ('after rejoin')")
        .await
        .unwrap();
    let asu = superuser(&a).await;
    let rows = rows_of_t_once_one_is(&asu, "after rejoin", 10, "a follows b").await;
    assert_eq!(
        rows,
        ["after rejoin", "common", "new on b"],
        "a's diverged writes are gone, b's history is a's"
    );
    let obs = a.observe().await;
    assert_eq!(obs.in_recovery, Some(true));
    assert_eq!(obs.timeline, Some(2));
    a.stop(StopMode::Fast).await.unwrap();
    b.stop(StopMode::Fast).await.unwrap();
}

#[tokio::test]
async fn a_replica_ahead_of_the_promoted_one_is_stuck_until_rejoined() {
    let dir = TestDir::new("ahead");
    let (mut a, mut b, mut c) = three_streaming(&dir).await;

    // b stops; c keeps receiving; a dies; b is promoted without a's last commits, which c has.
    b.stop(StopMode::Fast).await.unwrap();
    let asu = superuser(&a).await;
    asu.batch_execute("CREATE TABLE t (v text); INSERT INTO t VALUES ('only a and c')")
        .await
        .unwrap();
    let csu = superuser(&c).await;
    eventually(10, "c has a's last commit", async || {
        csu.query("SELECT 1 FROM t", &[]).await.ok()
    })
    .await;
    a.stop(StopMode::Fast).await.unwrap();
    b.configure(&replica_of(&a, "m1")).await.unwrap();
    b.start().await.unwrap();
    b.promote().await.unwrap();
    let mut bd = desired(Role::Primary);
    bd.member_slots = vec!["m0".into(), "m1".into(), "m2".into()];
    b.configure(&bd).await.unwrap();
    assert_eq!(b.observe().await.timeline, Some(2));

    // c is told to follow b: it connects, but its WAL is past b's fork point, so it never gets onto
    // timeline 2. This is the signal the HA loop sees: the upstream's timeline stays ahead of c's.
    c.configure(&replica_of(&b, "m2")).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stuck = c.observe().await;
    assert_eq!(stuck.timeline, Some(1), "c cannot follow b: {stuck:?}");
    // b does see c's WAL receiver come and go: every second it restarts streaming timeline 1 from the
    // start of its segment (before the fork), reaches the fork and gives up ("new timeline 2 forked off
    // current database system timeline 1 before current recovery point"). What never happens is that c
    // gets onto b's timeline.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        c.observe().await.timeline,
        Some(1),
        "c is still not on b's timeline"
    );

    let wal = stuck.wal_position().unwrap();
    assert!(
        c.diverged_from(&upstream(&b), 2, 1, wal).await.unwrap(),
        "c's WAL is past b's fork point"
    );
    assert!(
        !c.diverged_from(&upstream(&b), 2, 1, 0x100_0000)
            .await
            .unwrap(),
        "WAL that ends before the fork point (here: at the first segment) is not diverged"
    );

    assert_eq!(
        c.rejoin(&replica_of(&b, "m2")).await.unwrap(),
        Rejoined::Rewound
    );
    wait_streaming(&mut b, "m2").await;
    let csu = superuser(&c).await;
    let rows = csu
        .query("SELECT 1 FROM pg_class WHERE relname = 't'", &[])
        .await
        .unwrap();
    assert!(
        rows.is_empty(),
        "c gave up the commit b never had, and follows b's history"
    );
    assert_eq!(c.observe().await.timeline, Some(2));
    b.stop(StopMode::Fast).await.unwrap();
    c.stop(StopMode::Fast).await.unwrap();
}

#[tokio::test]
async fn reclone_when_the_diverged_wal_is_gone() {
    let dir = TestDir::new("reclone");
    let mut a = member(&dir, "m0");
    a.initdb().await.unwrap();
    // The former primary keeps no WAL beyond what crash recovery needs, and no slot for b: once it has
    // run on long enough after the split, the WAL back to the divergence point is recycled.
    let mut ad = desired(Role::Primary);
    ad.parameters.insert("wal_keep_size".into(), "0".into());
    ad.parameters.insert("min_wal_size".into(), "32MB".into());
    ad.parameters.insert("max_wal_size".into(), "32MB".into());
    a.configure(&ad).await.unwrap();
    a.start().await.unwrap();
    a.bootstrap_roles().await.unwrap();
    let mut b = member(&dir, "m1");
    b.basebackup(&upstream(&a), None).await.unwrap();
    b.configure(&desired(Role::Replica {
        upstream: upstream(&a),
        slot: None,
    }))
    .await
    .unwrap();
    b.start().await.unwrap();
    wait_streaming(&mut a, "m1").await;

    b.promote().await.unwrap();
    b.configure(&desired(Role::Primary)).await.unwrap();
    let asu = superuser(&a).await;
    asu.batch_execute("CREATE TABLE junk (v int)")
        .await
        .unwrap();
    for _ in 0..6 {
        asu.batch_execute(
            "INSERT INTO junk SELECT generate_series(1, 1000); SELECT pg_switch_wal(); CHECKPOINT",
        )
        .await
        .unwrap();
    }
    a.fence().await.unwrap();

    let err = a
        .rewind(&upstream(&b))
        .await
        .expect_err("pg_rewind cannot work without the diverged WAL");
    assert!(
        matches!(
            err,
            Error::Tool {
                tool: "pg_rewind",
                ..
            }
        ),
        "{err}"
    );
    assert!(
        !a.is_initialized(),
        "a failed rewind leaves the directory marked for a re-clone"
    );

    assert!(
        matches!(a.rewind(&upstream(&b)).await, Err(Error::Refused(_))),
        "never rewind a half-rewound directory again"
    );

    // rejoin() turns the failed rewind into a re-clone.
    let follow_b = desired(Role::Replica {
        upstream: upstream(&b),
        slot: None,
    });
    assert_eq!(a.rejoin(&follow_b).await.unwrap(), Rejoined::Recloned);
    assert!(a.is_initialized());
    wait_streaming(&mut b, "m0").await;
    let asu = superuser(&a).await;
    let tables: i64 = asu
        .query_one("SELECT count(*) FROM pg_class WHERE relname = 'junk'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        tables, 0,
        "the re-cloned member has b's history, not its own"
    );
    a.stop(StopMode::Fast).await.unwrap();
    b.stop(StopMode::Fast).await.unwrap();
}

#[tokio::test]
async fn synchronous_standby_names_first_any_and_strict_blocking() {
    let dir = TestDir::new("sync");
    let (mut p, mut r) = two_streaming(&dir).await;

    let mut d = desired(Role::Primary);
    d.member_slots = vec!["m0".into(), "m1".into()];

    d.synchronous = SyncStandbys::for_mode(
        pgpilot_crds::contract::ReplicationMode::Sync,
        &["m1".to_owned()],
    );
    assert_eq!(p.configure(&d).await.unwrap(), Change::Reloaded);
    wait_sync_state(&mut p, "m1", "sync").await;

    d.synchronous = Some(SyncStandbys {
        method: SyncMethod::Any,
        count: 1,
        names: vec!["m1".into()],
    });
    assert_eq!(p.configure(&d).await.unwrap(), Change::Reloaded);
    wait_sync_state(&mut p, "m1", "quorum").await;

    let su = superuser(&p).await;
    su.batch_execute("CREATE TABLE t (v int)").await.unwrap();
    su.batch_execute("INSERT INTO t VALUES (1)")
        .await
        .expect("commits with the sync standby up");

    // Strict: no standby available → commits wait instead of being acknowledged asynchronously.
    d.synchronous =
        SyncStandbys::for_mode(pgpilot_crds::contract::ReplicationMode::StrictSync, &[]);
    p.configure(&d).await.unwrap();
    r.stop(StopMode::Fast).await.unwrap();
    eventually(10, "m1 gone", async || {
        p.observe().await.replication.is_empty().then_some(())
    })
    .await;
    let writer = superuser(&p).await;
    let mut blocked =
        tokio::spawn(async move { writer.batch_execute("INSERT INTO t VALUES (2)").await });
    assert!(
        tokio::time::timeout(Duration::from_secs(2), &mut blocked)
            .await
            .is_err(),
        "the commit must wait for a synchronous standby"
    );
    assert_eq!(
        count_rows(&su, "t").await,
        1,
        "the waiting commit is not visible to others"
    );
    r.start().await.unwrap();
    let done = tokio::time::timeout(Duration::from_secs(20), blocked)
        .await
        .expect("released by the standby");
    done.unwrap()
        .expect("the waiting commit succeeds once a standby acknowledges it");
    assert_eq!(count_rows(&su, "t").await, 2);
    let rsu = superuser(&r).await;
    assert_eq!(
        count_rows(&rsu, "t").await,
        2,
        "the standby that released the commit has it"
    );

    // Sync mode without candidates is asynchronous: commits do not wait.
    d.synchronous = SyncStandbys::for_mode(pgpilot_crds::contract::ReplicationMode::Sync, &[]);
    p.configure(&d).await.unwrap();
    r.stop(StopMode::Fast).await.unwrap();
    tokio::time::timeout(
        Duration::from_secs(5),
        su.batch_execute("INSERT INTO t VALUES (3)"),
    )
    .await
    .expect("async commit does not wait")
    .unwrap();
    p.stop(StopMode::Fast).await.unwrap();
}

#[tokio::test]
async fn parameters_apply_by_reload_or_report_pending_restart() {
    let dir = TestDir::new("params");
    let mut pg = primary(&dir, "m0", &[]).await;
    let su = superuser(&pg).await;

    let mut d = desired(Role::Primary);
    assert_eq!(pg.configure(&d).await.unwrap(), Change::Unchanged);
    d.parameters.insert("work_mem".into(), "7MB".into());
    assert_eq!(pg.configure(&d).await.unwrap(), Change::Reloaded);
    eventually(5, "work_mem reloaded", async || {
        (show(&pg, "work_mem").await == "7MB").then_some(())
    })
    .await;

    d.parameters.insert("shared_buffers".into(), "24MB".into());
    assert_eq!(
        pg.configure(&d).await.unwrap(),
        Change::NeedsRestart(vec!["shared_buffers".into()])
    );
    let obs = eventually(5, "pending restart reported", async || {
        let obs = pg.observe().await;
        obs.pending_restart
            .contains(&"shared_buffers".to_owned())
            .then_some(obs)
    })
    .await;
    assert_eq!(obs.pending_restart, ["shared_buffers"]);
    assert_eq!(
        show(&pg, "shared_buffers").await,
        "16MB",
        "not applied before a restart"
    );
    drop(su);

    pg.restart().await.unwrap();
    assert_eq!(show(&pg, "shared_buffers").await, "24MB");
    assert!(pg.observe().await.pending_restart.is_empty());

    pg.stop(StopMode::Fast).await.unwrap();
}

#[tokio::test]
async fn a_crashed_postmaster_is_detected_and_restarts_with_crash_recovery() {
    let dir = TestDir::new("crash");
    let mut pg = primary(&dir, "m0", &[]).await;
    let su = superuser(&pg).await;
    su.batch_execute("CREATE TABLE t (v int); INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    assert_eq!(pg.exited(), None);

    let pid = pg.pid().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let status = eventually(5, "crash detected", async || pg.exited()).await;
    assert!(!status.success());
    assert!(!pg.observe().await.running);

    // A volume's fsGroup change may have widened the directory meanwhile; start narrows it again.
    use std::os::unix::fs::PermissionsExt;
    let data = pg.settings().data_dir.clone();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o2770)).unwrap();

    // The orphaned backends notice the postmaster's death and exit; until then the old shared memory
    // is still attached and a new postmaster refuses to start. The HA loop retries the same way.
    let started = eventually(30, "restart after crash", async || pg.start().await.ok()).await;
    let _: () = started;
    assert_eq!(pg.exited(), None, "a new start clears the crash");
    let mode = std::fs::metadata(&data).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "data directory mode {mode:o}");
    let su = superuser(&pg).await;
    assert_eq!(
        count_rows(&su, "t").await,
        1,
        "committed data survives crash recovery"
    );
    pg.stop(StopMode::Fast).await.unwrap();
}

#[tokio::test]
async fn fence_refuses_writes_at_once() {
    let dir = TestDir::new("fence");
    let mut pg = primary(&dir, "m0", &[]).await;
    let app = sql(&pg, &creds().app, "appdb").await.unwrap();
    app.batch_execute("CREATE TABLE t (v int); INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    app.batch_execute("BEGIN; INSERT INTO t VALUES (2)")
        .await
        .unwrap();

    let started = Instant::now();
    pg.fence().await.unwrap();
    let took = started.elapsed();
    eprintln!("timing: fence (immediate stop) {took:?}");
    assert!(!pg.observe().await.running);
    assert!(
        app.batch_execute("COMMIT").await.is_err(),
        "an open transaction cannot commit after the fence"
    );
    assert!(
        sql(&pg, &creds().app, "appdb").await.is_err(),
        "no new connections after the fence"
    );
    assert_eq!(pg.exited(), None, "a fence is not a crash");

    pg.start().await.unwrap();
    let app = sql(&pg, &creds().app, "appdb").await.unwrap();
    assert_eq!(
        count_rows(&app, "t").await,
        1,
        "the transaction open at the fence never committed"
    );
    pg.stop(StopMode::Fast).await.unwrap();
}

// ---- grey failures (issue 13), written against the code before the fixes ---------------------------

#[tokio::test]
async fn a_running_primary_is_never_reconfigured_as_a_replica() {
    // Hole 1: a primary that lost its confirmation must fence or re-confirm; writing the replica role
    // onto it (standby.signal, empty synchronous_standby_names) and reloading leaves it writable.
    let dir = TestDir::new("norole");
    let mut a = primary(&dir, "m0", &["m0"]).await;
    let nobody = Upstream {
        host: "127.0.0.1".into(),
        port: free_port(),
    };
    let replica_role = desired(Role::Replica {
        upstream: nobody,
        slot: Some(slot_name("m0")),
    });
    let err = a
        .configure(&replica_role)
        .await
        .expect_err("a running primary refuses the replica role");
    assert!(matches!(err, Error::Refused(_)), "{err}");
    assert!(
        !a.settings().data_dir.join("standby.signal").exists(),
        "nothing was written"
    );
    a.stop(StopMode::Fast).await.unwrap();
    // Stopped, the same data directory takes the replica role (a demotion is a restart).
    a.configure(&replica_role).await.unwrap();
    assert!(a.settings().data_dir.join("standby.signal").exists());
}

#[tokio::test]
async fn a_failed_step_before_pg_rewind_keeps_the_data() {
    // Hole 13: rejoining a "primary" that is in fact still in recovery fails before pg_rewind runs (the
    // source cannot report its WAL position): a transient condition, not a reason to wipe PGDATA.
    let dir = TestDir::new("keep");
    let (mut a, mut b) = two_streaming(&dir).await;
    superuser(&a)
        .await
        .batch_execute("CREATE TABLE keep (v int); INSERT INTO keep VALUES (1); CHECKPOINT")
        .await
        .unwrap();
    a.fence().await.unwrap();
    let err = a
        .rejoin(&replica_of(&b, "m0"))
        .await
        .expect_err("b is no primary yet");
    assert!(
        a.is_initialized(),
        "the data directory survives a failure before pg_rewind: {err}"
    );
    assert!(a.settings().data_dir.join("base").is_dir());
    // Once b is a primary the same call rewinds.
    b.promote().await.unwrap();
    assert_eq!(
        a.rejoin(&replica_of(&b, "m0")).await.unwrap(),
        Rejoined::Rewound
    );
    a.stop(StopMode::Fast).await.unwrap();
    b.stop(StopMode::Fast).await.unwrap();
}

/// Two members promoted one after the other, the second never having heard of the first's promotion
/// (seen in the fault matrix: a replica paused before it followed a switchover's new primary, promoted
/// after that primary was cut off). PostgreSQL picks the lowest timeline ID it has no history file for,
/// so both would run as "timeline 2"; pg_rewind then finds "the same timeline", leaves the first one's
/// diverged WAL in place, and it never streams from the second.
#[tokio::test]
async fn a_promotion_never_reuses_a_timeline_another_member_used() {
    let dir = TestDir::new("tli");
    let (mut a, mut b, mut c) = three_streaming(&dir).await;
    let asu = superuser(&a).await;
    asu.batch_execute("CREATE TABLE t (v text); INSERT INTO t VALUES ('common'); CHECKPOINT")
        .await
        .unwrap();
    for pg in [&b, &c] {
        let su = superuser(pg).await;
        eventually(10, "the common row on both replicas", async || {
            su.query("SELECT 1 FROM t", &[])
                .await
                .ok()
                .filter(|rows| rows.len() == 1)
        })
        .await;
    }
    a.stop(StopMode::Fast).await.unwrap();

    // b is promoted first and takes writes c never sees.
    let mut primary = desired(Role::Primary);
    primary.member_slots = vec!["m0".into(), "m1".into(), "m2".into()];
    b.promote().await.unwrap();
    b.configure(&primary).await.unwrap();
    assert_eq!(b.observe().await.timeline, Some(2));
    superuser(&b)
        .await
        .batch_execute("INSERT INTO t SELECT 'only on b' FROM generate_series(1, 100)")
        .await
        .unwrap();

    // c, which never heard of timeline 2, is promoted later: the cluster's newest timeline (the
    // Lease records b's) is reserved first, so c picks a new ID.
    let history = |pg: &Postgres| pg.settings().data_dir.join("pg_wal/00000002.history");
    assert!(!history(&c).exists(), "c never received b's history");
    assert_eq!(c.reserve_timelines(1, 2).unwrap(), 3, "the ID c will pick");
    assert!(history(&c).exists());
    assert_eq!(c.reserve_timelines(1, 2).unwrap(), 3, "the same again");
    assert_eq!(b.reserve_timelines(2, 1).unwrap(), 3, "above its own");
    c.promote().await.unwrap();
    c.configure(&primary).await.unwrap();
    let c_timeline = c.observe().await.timeline;
    assert_eq!(c_timeline, Some(3), "not the ID b runs on");
    superuser(&c)
        .await
        .batch_execute("INSERT INTO t VALUES ('on c')")
        .await
        .unwrap();

    // b, cut off, rejoins the member that won.
    b.fence().await.unwrap();
    let how = b.rejoin(&replica_of(&c, "m1")).await.unwrap();
    let bsu = superuser(&b).await;
    let rows = rows_of_t_once_one_is(&bsu, "on c", 15, "b follows c").await;
    assert_eq!(
        rows,
        ["common", "on c"],
        "b gave up what only it had and follows c's history (c on timeline {c_timeline:?}, b {how:?})"
    );
    b.stop(StopMode::Fast).await.unwrap();
    c.stop(StopMode::Fast).await.unwrap();
}
