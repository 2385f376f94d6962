//! One scenario's run: probes and writer started against a ready cluster (in a synchronous mode, also a
//! recorded synchronous standby that streams: [`Harness::wait_sync_standby`]), faults injected through the
//! fault hooks ([`crate::fault`]) and put on the timeline, what the scenario requires beyond its
//! expectations noted ([`Requirement`]), then — after the heal — convergence and writes through `-rw`
//! awaited, the final primary's ids and the Lease read, and the [`Verdict`] computed, printed and written
//! as JSON under `target/e2e/verdicts/`.
//!
//! A long run (the soak) checks after every heal without stopping anything ([`Harness::check`]): the
//! same verdict over what happened since the last check, against every write acknowledged so far.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::Mutex,
    time::{Duration, Instant},
};

use kube::Client;
use pgpilot_crds::contract;
use tracing::info;

use super::{
    Timeout, member_logs,
    pg::{self, PgError},
    probe::Sample,
    probes::{ProbeSet, ProbeTarget},
    verdict::{
        self, Event, Expectations, FRESH_US, Micros, Recording, Requirement, STABLE_US, Timeline,
        Verdict,
    },
    writer::{self, Pace, Target, Writer},
};
use crate::{
    clock::now_us,
    cluster::{self, ClusterError, MemberPod, Members},
    fault::{self, FaultError},
    rest,
};

#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(transparent)]
    Fault(#[from] FaultError),
    #[error(transparent)]
    Timeout(#[from] Timeout),
    #[error("reading the final primary's ids")]
    FinalIds(#[source] PgError),
    #[error("writing {0}")]
    Write(PathBuf, #[source] std::io::Error),
}

/// A scenario in progress.
pub struct Harness {
    pub client: Client,
    pub namespace: String,
    pub cluster: String,
    pub members: Vec<String>,
    pub rw: Target,
    probes: ProbeSet,
    /// Taken when the scenario finishes.
    writer: Option<Writer>,
    timeline: Mutex<Timeline>,
    fault_at: Option<Micros>,
    healed_at: Option<Micros>,
    requirements: Vec<Requirement>,
    /// How long the first write through `-rw` took once the cluster had converged, before any fault.
    pub baseline_ack_wait: Duration,
    /// The superuser's name and password (SQL on each member).
    superuser: (String, String),
    /// Where the current round began: the start, or the end of the last [`Harness::check`].
    round_from_us: Micros,
}

/// How far before its round a check looks at samples and events: the probes' view of who was writable
/// just before the fault (the takeover is measured from the last writer before it).
const ROUND_MARGIN_US: Micros = 10_000_000;

/// What was observed once the cluster had settled after the heal.
struct Ending {
    waited: Result<Micros, HarnessError>,
    writes_until_us: Micros,
    log: writer::Log,
    final_primary: Option<String>,
    final_ids: std::collections::BTreeSet<u64>,
    last_decisions: BTreeMap<String, String>,
    final_lease: Option<cluster::LeaseRecord>,
    /// The members' own log lines about HA ([`member_logs`]), for the timeline of a failed round.
    member_logs: Vec<Event>,
}

/// Where verdicts are written.
pub fn verdict_dir() -> PathBuf {
    crate::repo_dir().join("target/e2e/verdicts")
}

impl Harness {
    /// Starts the probes and the writer against the ready pgpilot cluster `cluster` of `instances`
    /// members in `namespace`, and waits until it is converged with writes acknowledged.
    pub async fn start(
        client: Client,
        namespace: &str,
        cluster: &str,
        instances: usize,
        probe_bin: PathBuf,
    ) -> Result<Self, HarnessError> {
        let (superuser, password) =
            cluster::credentials(&client, namespace, cluster, "superuser").await?;
        let (user, app_password) = cluster::credentials(&client, namespace, cluster, "app").await?;
        let rw_ip = cluster::cluster_ip(&client, namespace, &format!("{cluster}-rw")).await?;
        let probes = ProbeSet::start(
            client.clone(),
            ProbeTarget {
                members: Members::pgpilot(namespace, cluster),
                lease: Some(contract::lease_name(cluster)),
                probe_bin,
                superuser: superuser.clone(),
                password: password.clone(),
            },
        );
        let rw = Target {
            host: rw_ip,
            port: contract::PG_PORT,
            user: user.clone(),
            password: app_password,
            dbname: "app".into(),
        };
        let writer = Writer::start(rw.clone(), Pace::default());
        let mut h = Self {
            client,
            namespace: namespace.into(),
            cluster: cluster.into(),
            members: (0..instances).map(|i| format!("{cluster}-{i}")).collect(),
            rw,
            probes,
            writer: Some(writer),
            timeline: Mutex::new(Timeline::default()),
            fault_at: None,
            healed_at: None,
            requirements: Vec::new(),
            baseline_ack_wait: Duration::ZERO,
            superuser: (superuser, password),
            round_from_us: now_us(),
        };
        let started = now_us();
        h.wait_converged_since(started, Duration::from_secs(120))
            .await?;
        // Generous: a slow first write is reported by the caller (see `baseline_ack_wait`); only a cluster
        // that never takes one fails here, before any fault.
        let converged = now_us();
        let acked = h
            .wait_for_ack_since(converged, Duration::from_secs(90))
            .await?;
        h.baseline_ack_wait = Duration::from_micros(u64::try_from(acked - converged).unwrap_or(0));
        h.mark(format!(
            "checker: baseline converged, writes acknowledged (first after {:.1} s)",
            h.baseline_ack_wait.as_secs_f64()
        ));
        Ok(h)
    }

    /// Waits until the state a fault in a synchronous mode tests exists: the Lease records a synchronous
    /// standby (a member other than the holder in `pgpilot.io/sync-members`), the holder is the member the
    /// probes see writable, and the probes see a recorded standby streaming. Returns the recorded
    /// standbys; on a timeout the error names the part that never came.
    pub async fn wait_sync_standby(&self, timeout: Duration) -> Result<Vec<String>, HarnessError> {
        let lease_name = contract::lease_name(&self.cluster);
        let deadline = Instant::now() + timeout;
        loop {
            let read = tokio::time::timeout(
                Duration::from_secs(3),
                cluster::lease(&self.client, &self.namespace, &lease_name),
            )
            .await;
            let now = now_us();
            let shape = verdict::shape_at(
                &self.probes.samples_since(now - FRESH_US),
                &self.members,
                now,
            );
            let missing = match read {
                Err(_) => format!("the Lease {lease_name} could not be read within 3 s"),
                Ok(Err(e)) => format!("the Lease {lease_name} could not be read: {e}"),
                Ok(Ok(lease)) => {
                    let standbys = lease.sync_standbys();
                    let holder = lease.holder.as_deref().unwrap_or("-");
                    if standbys.is_empty() {
                        format!(
                            "the Lease {lease_name} records no synchronous standby (holder {holder}, \
                             sync-members [{}])",
                            lease.sync_members.join(",")
                        )
                    } else if shape.writable != [holder] {
                        format!(
                            "the Lease holder {holder} is not the one writable member (probes: {:?})",
                            shape.writable
                        )
                    } else if let Some(s) = standbys
                        .iter()
                        .find(|s| shape.streaming.iter().any(|m| m == *s))
                    {
                        let s = (*s).to_owned();
                        self.mark(format!("checker: {s} is recorded synchronous and streams"));
                        return Ok(standbys.into_iter().map(str::to_owned).collect());
                    } else {
                        format!(
                            "the recorded synchronous standby {} does not stream (probes: streaming \
                             {:?}, other {:?})",
                            standbys.join(","),
                            shape.streaming,
                            shape.other
                        )
                    }
                }
            };
            if Instant::now() > deadline {
                return Err(HarnessError::Timeout(Timeout {
                    waited: timeout,
                    what: format!("a recorded synchronous standby that streams: {missing}"),
                }));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Adds `r` to what the verdict checks (see [`Harness::finish`]).
    pub fn require(&mut self, r: Requirement) {
        self.mark(format!("checker: requires {r:?}"));
        self.requirements.push(r);
    }

    /// Puts an event on the timeline, now.
    pub fn mark(&self, what: impl Into<String>) {
        let what = what.into();
        info!(namespace = %self.namespace, event = %what, "timeline");
        if let Ok(mut t) = self.timeline.lock() {
            t.push(now_us(), what);
        }
    }

    /// Runs `e2e/fault <verb> <target>`; the first fault sets the fault instant.
    pub async fn fault(&mut self, verb: &str, target: &str) -> Result<(), HarnessError> {
        self.fault_with(verb, &[target]).await.map(|_| ())
    }

    /// Runs `e2e/fault <verb> <args…>` (`slow-apiserver <node> <ms>`); the first fault sets the fault
    /// instant. Returns when the hook says it acted.
    pub async fn fault_with(&mut self, verb: &str, args: &[&str]) -> Result<Micros, HarnessError> {
        match fault::run_with(verb, args).await {
            Ok(acted) => {
                self.fault_marked(acted.at_us, format!("{}: {}", acted.command, acted.output));
                Ok(acted.at_us)
            }
            Err(e) => {
                self.mark(format!("FAILED: {e}"));
                Err(e.into())
            }
        }
    }

    /// Records a fault that is not a hook (a `kubectl` action, a switchover request) at `at`.
    pub fn fault_marked(&mut self, at: Micros, what: impl Into<String>) {
        if let Ok(mut t) = self.timeline.lock() {
            t.push(at, what.into());
        }
        self.fault_at.get_or_insert(at);
    }

    /// The cluster now has `instances` members (after a scale): convergence waits for all of them.
    pub fn set_members(&mut self, instances: usize) {
        self.members = (0..instances)
            .map(|i| format!("{}-{i}", self.cluster))
            .collect();
        self.mark(format!("checker: expecting {instances} members"));
    }

    /// The instant the first fault was injected.
    pub fn fault_at(&self) -> Option<Micros> {
        self.fault_at
    }

    /// Marks the end of the faults: convergence is measured from now.
    pub fn healed(&mut self) {
        let at = now_us();
        self.healed_at = Some(at);
        self.mark("checker: all faults healed");
    }

    pub fn samples(&self) -> Vec<Sample> {
        self.probes.samples()
    }

    /// The samples that ended at or after `from_us` (see [`ProbeSet::samples_since`]).
    pub fn samples_since(&self, from_us: Micros) -> Vec<Sample> {
        self.probes.samples_since(from_us)
    }

    /// Each member's database system identifier, read over SQL from its pod IP (`Err`: why it could not
    /// be read).
    pub async fn system_identifiers(&self) -> BTreeMap<String, Result<String, String>> {
        let pods = self.pods().await.unwrap_or_default();
        let mut out = BTreeMap::new();
        for member in &self.members {
            let id = match cluster::ip_of(&pods, member) {
                None => Err("no pod IP".to_owned()),
                Some(ip) => {
                    let target = Target {
                        host: ip,
                        port: contract::PG_PORT,
                        user: self.superuser.0.clone(),
                        password: self.superuser.1.clone(),
                        dbname: "postgres".into(),
                    };
                    pg::system_identifier(&target, Duration::from_secs(2))
                        .await
                        .map_err(|e| contract::error_chain(&e))
                }
            };
            out.insert(member.clone(), id);
        }
        out
    }

    /// The member currently accepting writes, as the probes see it (only when exactly one does).
    pub fn writable_member(&self) -> Option<String> {
        self.probes.writable_member(&self.members)
    }

    /// The member pods as the apiserver shows them now.
    pub async fn pods(&self) -> Result<Vec<MemberPod>, HarnessError> {
        Ok(cluster::member_pods(&self.client, &self.namespace, &self.cluster).await?)
    }

    /// Waits until exactly one member is writable and returns it.
    pub async fn wait_primary(&self, timeout: Duration) -> Result<String, HarnessError> {
        let what = "one writable member";
        Ok(self
            .probes
            .wait_writable(&self.members, |_| true, what, timeout)
            .await?)
    }

    /// Waits until a member other than `old` accepts writes (see [`ProbeSet::wait_writable`]).
    pub async fn wait_new_primary(
        &self,
        old: &str,
        timeout: Duration,
    ) -> Result<String, HarnessError> {
        let what = format!("a writable member other than {old}");
        let m = self
            .probes
            .wait_writable(&self.members, |m| m != old, &what, timeout)
            .await?;
        self.mark(format!("checker: {m} is the new primary"));
        Ok(m)
    }

    /// Waits until the cluster has been converged for [`STABLE_US`] after `since`; returns when it began.
    pub async fn wait_converged_since(
        &self,
        since: Micros,
        timeout: Duration,
    ) -> Result<Micros, HarnessError> {
        let deadline = Instant::now() + timeout;
        loop {
            let samples = self.samples_since(since - FRESH_US);
            if let Some(at) = verdict::converged_at(&samples, &self.members, since, STABLE_US) {
                return Ok(at);
            }
            if Instant::now() > deadline {
                let shape = verdict::shape_at(&samples, &self.members, now_us());
                return Err(HarnessError::Timeout(Timeout {
                    waited: timeout,
                    what: format!("convergence (now: {shape:?})"),
                }));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Waits for an acknowledged write at or after `since`; returns when it arrived.
    pub async fn wait_for_ack_since(
        &self,
        since: Micros,
        timeout: Duration,
    ) -> Result<Micros, HarnessError> {
        let deadline = Instant::now() + timeout;
        loop {
            let Some(writer) = &self.writer else {
                return Err(HarnessError::Timeout(Timeout {
                    waited: timeout,
                    what: "an acknowledged write (the writer has stopped)".into(),
                }));
            };
            if let Some(at) = writer.first_ack_since(since) {
                return Ok(at);
            }
            if Instant::now() > deadline {
                let errors = writer.snapshot().errors;
                let last = errors.last().map(|e| e.what.clone()).unwrap_or_default();
                return Err(HarnessError::Timeout(Timeout {
                    waited: timeout,
                    what: format!("an acknowledged write (last error: {last})"),
                }));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits for convergence after the heal (up to the bound plus `grace`), then for writes a little
    /// after it, so the final primary's acknowledgements count too; while `-rw` reaches no primary the
    /// writer goes on until the bound, so the verdict measures when writes through it resumed (issue 13)
    /// rather than a writer stopped too early. Returns the heal instant and the wait's outcome.
    async fn settle(
        &mut self,
        expect: &Expectations,
        grace: Duration,
    ) -> (Micros, Result<Micros, HarnessError>) {
        let healed_at = *self.healed_at.get_or_insert_with(now_us);
        let bound =
            Duration::from_micros(u64::try_from(expect.converge_within_us).unwrap_or(0)) + grace;
        let waited = self.wait_converged_since(healed_at, bound).await;
        if let Err(e) = &waited {
            self.mark(format!("checker: {e}"));
        }
        if waited.is_ok() {
            let left = Duration::from_micros(
                u64::try_from(healed_at + micros(bound) - now_us()).unwrap_or(0),
            );
            let acked = self
                .wait_for_ack_since(now_us(), left.max(Duration::from_secs(10)))
                .await;
            if let Err(e) = acked {
                self.mark(format!("checker: converged, but {e}"));
            }
        }
        (healed_at, waited)
    }

    /// What the end of a round shows, given the writer's log as it stood (taken before the ids are read,
    /// so every write it lists as acknowledged committed before the read began): the final primary and
    /// its ids, each member's last decision, the Lease.
    async fn ending(
        &self,
        waited: Result<Micros, HarnessError>,
        writes_until_us: Micros,
        log: writer::Log,
    ) -> Ending {
        let pods = self.pods().await.unwrap_or_default();
        let final_primary = self.writable_member();
        let mut final_ids = Default::default();
        if let Some(primary) = &final_primary {
            let ip = cluster::ip_of(&pods, primary).unwrap_or_default();
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                match writer::final_ids(&self.rw, log.first_id, &ip).await {
                    Ok(ids) => {
                        final_ids = ids;
                        break;
                    }
                    Err(e) if Instant::now() > deadline => {
                        self.mark(format!("checker: {}", HarnessError::FinalIds(e)));
                        break;
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
                }
            }
        }
        let last_decisions = rest::last_decisions(&pods).await;
        let names: Vec<String> = pods.iter().map(|p| p.name.clone()).collect();
        let member_logs = member_logs::events(
            &self.client,
            &self.namespace,
            &names,
            self.round_from_us - ROUND_MARGIN_US,
        )
        .await;
        let final_lease = tokio::time::timeout(
            Duration::from_secs(3),
            cluster::lease(
                &self.client,
                &self.namespace,
                &contract::lease_name(&self.cluster),
            ),
        )
        .await
        .ok()
        .and_then(Result::ok);
        Ending {
            waited,
            writes_until_us,
            log,
            final_primary,
            final_ids,
            last_decisions,
            final_lease,
            member_logs,
        }
    }

    /// Checks the round since the last check (or the start) without stopping anything — the soak's
    /// check after every heal: convergence within the bound plus `grace` of the heal, no span with two
    /// writable members since the round began, no acknowledged write of the whole run missing from the
    /// primary now, the requirements noted. Prints the verdict, writes it as JSON (with the round's samples
    /// when it failed), and starts the next round.
    pub async fn check(
        &mut self,
        scenario: &str,
        mode: &str,
        expect: Expectations,
        grace: Duration,
    ) -> Result<Verdict, HarnessError> {
        let (healed_at, waited) = self.settle(&expect, grace).await;
        let writes_until_us = now_us();
        let log = self
            .writer
            .as_ref()
            .map(Writer::snapshot)
            .unwrap_or_default();
        let ending = self.ending(waited, writes_until_us, log).await;
        let from = self.round_from_us - ROUND_MARGIN_US;
        let samples = self.probes.samples_since(from);
        let mut events = self
            .timeline
            .lock()
            .map(|t| t.events.clone())
            .unwrap_or_default();
        events.extend(self.probes.timeline().events);
        events.retain(|e| e.at_us >= from);
        let recording = Recording {
            scenario: scenario.into(),
            mode: mode.into(),
            members: self.members.clone(),
            samples,
            fault_at_us: self.fault_at.unwrap_or(healed_at),
            healed_at_us: healed_at,
            end_us: now_us(),
            requirements: std::mem::take(&mut self.requirements),
            ..recording_of(ending, events, from)
        };
        let verdict = Verdict::new(&recording, expect);
        println!("{}", verdict.table());
        let samples = (!verdict.passed()).then_some(recording.samples.as_slice());
        write_verdict(&verdict, samples)?;
        self.fault_at = None;
        self.healed_at = None;
        self.round_from_us = now_us();
        Ok(verdict)
    }

    /// Ends the scenario: waits for convergence (up to the bound plus `grace`), stops the writer, reads the
    /// final primary's ids, stops the probes, and returns the verdict (also printed and written as JSON).
    pub async fn finish(
        mut self,
        scenario: &str,
        mode: &str,
        expect: Expectations,
        grace: Duration,
    ) -> Result<Verdict, HarnessError> {
        let (healed_at, waited) = self.settle(&expect, grace).await;
        let writes_until_us = now_us();
        let log = match self.writer.take() {
            Some(w) => w.stop().await,
            None => writer::Log::default(),
        };
        let ending = self.ending(waited, writes_until_us, log).await;
        let end_us = now_us();
        let fault_at = self.fault_at.unwrap_or(healed_at);
        let members = self.members.clone();
        let Self {
            probes,
            timeline,
            requirements,
            ..
        } = self;
        let (samples, probe_timeline) = probes.stop().await;
        let mut events = timeline.into_inner().unwrap_or_default().events;
        events.extend(probe_timeline.events);
        let recording = Recording {
            scenario: scenario.into(),
            mode: mode.into(),
            members,
            samples,
            fault_at_us: fault_at,
            healed_at_us: healed_at,
            end_us,
            requirements,
            ..recording_of(ending, events, Micros::MIN)
        };
        let verdict = Verdict::new(&recording, expect);
        println!("{}", verdict.table());
        write_verdict(&verdict, Some(&recording.samples))?;
        Ok(verdict)
    }
}

/// The parts of a [`Recording`] an [`Ending`] gives, with the timeline `events` and the writer's errors
/// since `from_us`.
fn recording_of(ending: Ending, mut events: Vec<Event>, from_us: Micros) -> Recording {
    let Ending {
        waited,
        writes_until_us,
        log,
        final_primary,
        final_ids,
        last_decisions,
        final_lease,
        member_logs,
    } = ending;
    // The members' lines only from the round's first event on (the timeline counts from it).
    let first = events
        .iter()
        .map(|e| e.at_us)
        .min()
        .unwrap_or(from_us)
        .max(from_us);
    events.extend(member_logs.into_iter().filter(|e| e.at_us >= first));
    events.extend(
        log.errors
            .iter()
            .filter(|e| e.at_us >= from_us)
            .map(|e| Event {
                at_us: e.at_us,
                what: format!("writer: {}", e.what),
            }),
    );
    Recording {
        acks: log.acks,
        in_doubt: log.in_doubt,
        final_ids,
        final_primary: final_primary.filter(|_| waited.is_ok()),
        timeline: Timeline { events },
        writes_until_us,
        last_decisions,
        final_lease,
        ..Recording::default()
    }
}

/// Writes `<scenario>-<mode>.json` (the verdict) and, given `samples`, `<scenario>-<mode>.samples.jsonl`
/// (every probe sample, for a failure's post-mortem) under [`verdict_dir`].
pub fn write_verdict(v: &Verdict, samples: Option<&[Sample]>) -> Result<PathBuf, HarnessError> {
    let dir = verdict_dir();
    std::fs::create_dir_all(&dir).map_err(|e| HarnessError::Write(dir.clone(), e))?;
    let path = dir.join(format!("{}-{}.json", v.scenario, v.mode));
    let json = serde_json::to_string_pretty(v).unwrap_or_default();
    std::fs::write(&path, json).map_err(|e| HarnessError::Write(path.clone(), e))?;
    let Some(samples) = samples else {
        return Ok(path);
    };
    let lines: String = samples
        .iter()
        .filter_map(|s| serde_json::to_string(s).ok())
        .map(|l| l + "\n")
        .collect();
    let samples_path = dir.join(format!("{}-{}.samples.jsonl", v.scenario, v.mode));
    std::fs::write(&samples_path, lines).map_err(|e| HarnessError::Write(samples_path, e))?;
    Ok(path)
}

fn micros(d: Duration) -> Micros {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}
