//! One scenario's run: probes and writer started against a ready cluster (in a synchronous mode, also a
//! recorded synchronous standby that streams: [`Harness::wait_sync_standby`]), faults injected through the
//! fault hooks ([`crate::fault`]) and put on the timeline, what the scenario requires beyond its
//! expectations noted ([`Requirement`]), then — after the heal — convergence and writes through `-rw`
//! awaited, the final primary's ids and the Lease read, and the [`Verdict`] computed, printed and written
//! as JSON under `target/e2e/verdicts/`.

use std::{
    path::PathBuf,
    sync::Mutex,
    time::{Duration, Instant},
};

use kube::Client;
use pgpilot_crds::contract;
use tracing::info;

use super::{
    Timeout,
    pg::PgError,
    probe::Sample,
    probes::{ProbeSet, ProbeTarget},
    verdict::{self, Expectations, Micros, Recording, Requirement, STABLE_US, Timeline, Verdict},
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
                superuser,
                password,
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
            let shape = verdict::shape_at(&self.samples(), &self.members, now_us());
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
        match fault::run(verb, target).await {
            Ok(acted) => {
                self.fault_marked(acted.at_us, format!("{}: {}", acted.command, acted.output));
                Ok(())
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
            if let Some(at) =
                verdict::converged_at(&self.samples(), &self.members, since, STABLE_US)
            {
                return Ok(at);
            }
            if Instant::now() > deadline {
                let shape = verdict::shape_at(&self.samples(), &self.members, now_us());
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

    /// Ends the scenario: waits for convergence (up to the bound plus `grace`), stops the writer, reads the
    /// final primary's ids, stops the probes, and returns the verdict (also printed and written as JSON).
    pub async fn finish(
        mut self,
        scenario: &str,
        mode: &str,
        expect: Expectations,
        grace: Duration,
    ) -> Result<Verdict, HarnessError> {
        let healed_at = *self.healed_at.get_or_insert_with(now_us);
        let fault_at = self.fault_at.unwrap_or(healed_at);
        let bound =
            Duration::from_micros(u64::try_from(expect.converge_within_us).unwrap_or(0)) + grace;
        let waited = self.wait_converged_since(healed_at, bound).await;
        if let Err(e) = &waited {
            self.mark(format!("checker: {e}"));
        }
        // Writes keep going a little after convergence, so the final primary's acknowledgements count too;
        // while `-rw` reaches no primary the writer goes on until the bound, so the verdict measures when
        // writes through it resumed (issue 13) rather than a writer stopped too early.
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
        let writes_until_us = now_us();
        let log = match self.writer.take() {
            Some(w) => w.stop().await,
            None => writer::Log::default(),
        };
        let pods = self.pods().await.unwrap_or_default();
        let final_primary = self.writable_member();
        let mut final_ids = Default::default();
        if let Some(primary) = &final_primary {
            let ip = pods
                .iter()
                .find(|p| &p.name == primary)
                .and_then(|p| p.ip.clone())
                .unwrap_or_default();
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
        let end_us = now_us();
        let members = self.members.clone();
        let Self {
            probes,
            timeline,
            requirements,
            ..
        } = self;
        let (samples, probe_timeline) = probes.stop().await;
        let mut timeline = timeline.into_inner().unwrap_or_default();
        timeline.events.extend(probe_timeline.events);
        timeline
            .events
            .extend(log.errors.iter().map(|e| verdict::Event {
                at_us: e.at_us,
                what: format!("writer: {}", e.what),
            }));
        let recording = Recording {
            scenario: scenario.into(),
            mode: mode.into(),
            members,
            samples,
            acks: log.acks,
            in_doubt: log.in_doubt,
            final_ids,
            final_primary: final_primary.filter(|_| waited.is_ok()),
            timeline,
            fault_at_us: fault_at,
            healed_at_us: healed_at,
            writes_until_us,
            end_us,
            last_decisions,
            final_lease,
            requirements,
        };
        let verdict = Verdict::new(&recording, expect);
        println!("{}", verdict.table());
        write_verdict(&verdict, &recording.samples)?;
        Ok(verdict)
    }
}

/// Writes `<scenario>-<mode>.json` (the verdict) and `<scenario>-<mode>.samples.jsonl` (every probe
/// sample, for a failure's post-mortem) under [`verdict_dir`].
pub fn write_verdict(v: &Verdict, samples: &[Sample]) -> Result<PathBuf, HarnessError> {
    let dir = verdict_dir();
    std::fs::create_dir_all(&dir).map_err(|e| HarnessError::Write(dir.clone(), e))?;
    let path = dir.join(format!("{}-{}.json", v.scenario, v.mode));
    let json = serde_json::to_string_pretty(v).unwrap_or_default();
    std::fs::write(&path, json).map_err(|e| HarnessError::Write(path.clone(), e))?;
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
