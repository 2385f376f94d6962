//! The probe supervisor: one `pgpilot-probe` per member pod, started inside that pod's network namespace
//! (`nsenter --net=/run/netns/<ns>`), its JSON lines collected as [`Sample`]s.
//!
//! Every 500 ms it lists the member pods; a pod seen for the first time, a new pod incarnation (new uid or
//! IP) or a probe that exited gets a fresh probe; a probe of a pod that is gone is killed. While the
//! apiserver is unreachable the running probes simply go on (they need nothing from Kubernetes). It also
//! records, as timeline events, changes of each pod's role label and readiness and of the Lease holder —
//! what Kubernetes believed while the probes saw what PostgreSQL did.
//!
//! [`ProbeSet::wait_writable`] is the one wait for a (new) primary: the harness, the scenarios and the
//! benchmark all wait on what the probes saw.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    process::Stdio,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use kube::Client;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
    sync::watch,
    task::JoinHandle,
};
use tracing::{debug, warn};

use super::{
    Timeout,
    probe::Sample,
    verdict::{self, FRESH_US, Micros, Timeline},
};
use crate::{
    clock::now_us,
    cluster::{self, MemberPod, Members},
    host,
};

/// What to probe.
#[derive(Clone, Debug)]
pub struct ProbeTarget {
    pub members: Members,
    /// The Lease whose holder changes go into the timeline, if any.
    pub lease: Option<String>,
    /// Path of the `pgpilot-probe` binary.
    pub probe_bin: PathBuf,
    pub superuser: String,
    pub password: String,
}

/// Running probes and what they recorded.
pub struct ProbeSet {
    samples: Arc<Mutex<Vec<Sample>>>,
    timeline: Arc<Mutex<Timeline>>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// How far out of end order the merged samples can be: each probe's reader appends as its lines arrive,
/// and a tick lasts at most the probe's 1 s timeout.
const MERGE_SLACK_US: Micros = 5_000_000;

struct Running {
    stream: String,
    ip: String,
    child: Child,
    reader: JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        self.reader.abort();
    }
}

impl ProbeSet {
    pub fn start(client: Client, target: ProbeTarget) -> Self {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let timeline = Arc::new(Mutex::new(Timeline::default()));
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(supervise(
            client,
            target,
            Arc::clone(&samples),
            Arc::clone(&timeline),
            stopped,
        ));
        Self {
            samples,
            timeline,
            stop,
            task,
        }
    }

    /// A copy of every sample so far.
    pub fn samples(&self) -> Vec<Sample> {
        self.samples.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// A copy of the samples that ended at or after `from_us`: all that [`verdict::shape_at`] and
    /// [`verdict::converged_at`] need from `from_us + FRESH_US` on, without copying a long run's history.
    pub fn samples_since(&self, from_us: Micros) -> Vec<Sample> {
        self.samples
            .lock()
            .map(|all| {
                // Samples arrive in about end order (one stream each, merged as read): search back from
                // the newest for the first that ended before `from_us`, with a margin for the merge.
                let start = all
                    .iter()
                    .rposition(|s| s.end_us < from_us - MERGE_SLACK_US)
                    .map_or(0, |i| i + 1);
                all[start..]
                    .iter()
                    .filter(|s| s.end_us >= from_us)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A copy of the timeline so far (role, readiness and Lease changes).
    pub fn timeline(&self) -> Timeline {
        self.timeline.lock().map(|t| t.clone()).unwrap_or_default()
    }

    /// The member accepting writes now, as the probes last saw `members` (only when exactly one does).
    pub fn writable_member(&self, members: &[String]) -> Option<String> {
        let now = now_us();
        let shape = verdict::shape_at(&self.samples_since(now - FRESH_US), members, now);
        match shape.writable.as_slice() {
            [one] => Some(one.clone()),
            _ => None,
        }
    }

    /// Waits until exactly one of `members` accepts writes and `accept` takes it; returns it. After a
    /// handover the probes still hold the old primary's last sample for up to a probe period, so a wait
    /// for a *new* primary names the old one in `accept`.
    pub async fn wait_writable(
        &self,
        members: &[String],
        accept: impl Fn(&str) -> bool,
        what: &str,
        timeout: Duration,
    ) -> Result<String, Timeout> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(m) = self.writable_member(members).filter(|m| accept(m)) {
                return Ok(m);
            }
            if Instant::now() > deadline {
                return Err(Timeout {
                    waited: timeout,
                    what: what.into(),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops every probe; returns the samples and the timeline.
    pub async fn stop(self) -> (Vec<Sample>, Timeline) {
        let _ = self.stop.send(true);
        let Self {
            samples,
            timeline,
            task,
            ..
        } = self;
        let _ = task.await;
        let samples = samples.lock().map(|s| s.clone()).unwrap_or_default();
        let timeline = timeline.lock().map(|t| t.clone()).unwrap_or_default();
        (samples, timeline)
    }
}

async fn supervise(
    client: Client,
    target: ProbeTarget,
    samples: Arc<Mutex<Vec<Sample>>>,
    timeline: Arc<Mutex<Timeline>>,
    mut stopped: watch::Receiver<bool>,
) {
    let note = |what: String| {
        if let Ok(mut t) = timeline.lock() {
            t.push(now_us(), what);
        }
    };
    let mut running: BTreeMap<String, Running> = BTreeMap::new();
    let mut seen: BTreeMap<String, (Option<String>, bool)> = BTreeMap::new();
    let mut lease_seen: Option<cluster::LeaseRecord> = None;
    let mut api_down = false;
    let mut ticker = tokio::time::interval(Duration::from_millis(500));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stopped.changed() => break,
            _ = ticker.tick() => {}
        }
        let listed = tokio::time::timeout(
            Duration::from_secs(3),
            cluster::pods(&client, &target.members),
        )
        .await;
        let pods = match listed {
            Ok(Ok(pods)) => {
                if api_down {
                    note("checker: apiserver reachable again".into());
                    api_down = false;
                }
                pods
            }
            Ok(Err(e)) => {
                if !api_down {
                    note(format!("checker: cannot list pods ({e})"));
                    api_down = true;
                }
                continue;
            }
            Err(_) => {
                if !api_down {
                    note("checker: listing pods timed out".into());
                    api_down = true;
                }
                continue;
            }
        };
        for pod in &pods {
            let state = (pod.role.clone(), pod.ready);
            if seen.get(&pod.name) != Some(&state) {
                note(format!(
                    "pod {} role={} ready={}{}",
                    pod.name,
                    pod.role.as_deref().unwrap_or("-"),
                    pod.ready,
                    pod.node
                        .as_deref()
                        .map(|n| format!(" on {n}"))
                        .unwrap_or_default()
                ));
                seen.insert(pod.name.clone(), state);
            }
            ensure_probe(&target, pod, &mut running, &samples, &note).await;
        }
        running.retain(|name, _| pods.iter().any(|p| &p.name == name));
        if let Some(lease) = &target.lease
            && let Ok(Ok(now)) = tokio::time::timeout(
                Duration::from_secs(2),
                cluster::lease(&client, &target.members.namespace, lease),
            )
            .await
            && lease_seen.as_ref() != Some(&now)
        {
            note(format!(
                "lease holder={} transitions={} sync={} duration={} system-id={}",
                now.holder.as_deref().unwrap_or("-"),
                now.transitions,
                if now.sync_members.is_empty() {
                    "-".to_owned()
                } else {
                    now.sync_members.join(",")
                },
                now.duration_secs
                    .map_or_else(|| "-".to_owned(), |d| format!("{d}s")),
                now.system_identifier.as_deref().unwrap_or("-")
            ));
            lease_seen = Some(now);
        }
    }
    drop(running);
}

/// Starts (or restarts) the probe of `pod` when it has none for this incarnation, or its probe exited.
async fn ensure_probe(
    target: &ProbeTarget,
    pod: &MemberPod,
    running: &mut BTreeMap<String, Running>,
    samples: &Arc<Mutex<Vec<Sample>>>,
    note: &impl Fn(String),
) {
    let Some(ip) = pod.ip.clone() else { return };
    let stream = pod.stream();
    if let Some(r) = running.get_mut(&pod.name) {
        let exited = !matches!(r.child.try_wait(), Ok(None));
        if r.stream == stream && r.ip == ip && !exited {
            return;
        }
    }
    if pod.terminating {
        return;
    }
    let netns = match host::netns_of(&ip).await {
        Ok(Some(ns)) => ns,
        Ok(None) => return,
        Err(e) => {
            warn!(error = %e, "finding pod network namespaces");
            return;
        }
    };
    let spawned = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .arg("--")
        .arg(&target.probe_bin)
        .args(["--stream", &stream, "--user", &target.superuser])
        .env("PGPASSWORD", &target.password)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "starting a probe");
            return;
        }
    };
    let Some(stdout) = child.stdout.take() else {
        return;
    };
    let sink = Arc::clone(samples);
    let reader = tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            match serde_json::from_str::<Sample>(&line) {
                Ok(s) => {
                    if let Ok(mut all) = sink.lock() {
                        all.push(s);
                    }
                }
                Err(e) => debug!(error = %e, line, "unparsable probe line"),
            }
        }
    });
    note(format!(
        "checker: probe {stream} started in {}",
        netns.display()
    ));
    running.insert(
        pod.name.clone(),
        Running {
            stream,
            ip,
            child,
            reader,
        },
    );
}
