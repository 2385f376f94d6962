//! The faults of the first fault matrix: a container killed, a pod frozen or cut off, a node partitioned
//! or stopped, the apiserver stopped, a pod deleted, a scale, a switchover, a second kill during a
//! failover. Some assert more than the checker: a killed or frozen primary's successor stays primary (the
//! old one rejoins as a replica; a frozen one was fenced, and its successor held the Lease), a killed
//! primary's successor was a recorded synchronous standby, a deleted primary pod's Lease was released (one
//! takeover, within 10 s), and a cut synchronous standby stalls commits for no longer than
//! [`Timings::sync_gap_bound`]. And issue 14's manual failover while automatic failover is blocked, and
//! its scale-down that moves the primary off a leaving member first.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};

use super::{
    Mode, Scene, Timings, lease, micros, node_of, primary, replica, sleep_secs, wait_new_primary,
};
use crate::{
    checker::{harness::Harness, verdict::Requirement},
    clock::now_us,
    cluster, rest, wait_for,
};

/// How long a failover may take after the fault: `leaseDuration` (L2), and a margin for the loop.
fn failover_within(t: Timings) -> Duration {
    Duration::from_secs(t.lease + 15)
}

pub async fn kill_primary(h: &mut Harness, s: &mut Scene) -> Result<()> {
    let p = primary(h).await?;
    h.fault("kill", &s.target(&format!("{p}/postgres"))).await?;
    h.healed();
    let new = wait_new_primary(h, &p, failover_within(s.timings)).await?;
    // Only a member recorded as synchronous may take over in a synchronous mode (L3).
    ensure!(
        s.mode == Mode::Async || s.sync_standbys.contains(&new),
        "{new} took over but was not a recorded synchronous standby ({:?})",
        s.sync_standbys
    );
    // The killed primary comes back as a streaming replica of the new one (convergence), which stays.
    h.require(Requirement::FinalPrimary(new));
    Ok(())
}

pub async fn kill_replica(h: &mut Harness, s: &mut Scene) -> Result<()> {
    let r = replica(h, s).await?;
    h.fault("kill", &s.target(&format!("{r}/postgres"))).await?;
    h.healed();
    Ok(())
}

pub async fn freeze_primary(h: &mut Harness, s: &mut Scene) -> Result<()> {
    let p = primary(h).await?;
    h.fault("freeze", &s.target(&p)).await?;
    // Frozen past leaseDuration: a replica takes over (L2) and holds the Lease; the frozen one cannot renew.
    let new = wait_new_primary(h, &p, failover_within(s.timings)).await?;
    let holder = lease(h).await?.holder;
    ensure!(
        holder.as_deref() == Some(new.as_str()),
        "{new} accepts writes while the Lease names {holder:?}"
    );
    sleep_secs(5).await;
    h.fault("thaw", &s.target(&p)).await?;
    h.healed();
    // The thawed primary was fenced (L5) before it could serve (no split brain), rejoins as a replica, and
    // the primary does not move again.
    h.require(Requirement::FinalPrimary(new));
    Ok(())
}

/// A replica frozen past `leaseDuration`, then thawed: it resumes streaming.
pub async fn freeze_replica(h: &mut Harness, s: &mut Scene) -> Result<()> {
    let r = replica(h, s).await?;
    h.fault("freeze", &s.target(&r)).await?;
    sleep_secs(s.timings.lease + 5).await;
    h.fault("thaw", &s.target(&r)).await?;
    h.healed();
    Ok(())
}

pub async fn cut_primary(h: &mut Harness, s: &mut Scene) -> Result<()> {
    let p = primary(h).await?;
    h.fault("cut", &s.target(&p)).await?;
    wait_new_primary(h, &p, failover_within(s.timings)).await?;
    sleep_secs(5).await;
    h.fault("heal", &s.target(&p)).await?;
    h.healed();
    Ok(())
}

/// A replica's network cut for longer than `leaseDuration`. In a synchronous mode it is the recorded
/// synchronous standby, and commits may stall only until the primary moves the synchronous role to the
/// other standby ([`Timings::sync_gap_bound`]; issue 13 saw 20 s, the whole cut).
pub async fn cut_replica(h: &mut Harness, s: &mut Scene) -> Result<()> {
    let r = match s.mode {
        Mode::Sync => s
            .pick(&s.sync_standbys)
            .cloned()
            .context("no recorded synchronous standby to cut")?,
        Mode::Async => replica(h, s).await?,
    };
    if s.mode == Mode::Sync {
        h.require(Requirement::WriteGapAtMost(micros(
            s.timings.sync_gap_bound(),
        )));
    }
    h.fault("cut", &s.target(&r)).await?;
    sleep_secs(s.timings.lease + 5).await;
    h.fault("heal", &s.target(&r)).await?;
    h.healed();
    Ok(())
}

pub async fn partition_primary_node(h: &mut Harness, s: &mut Scene) -> Result<()> {
    let p = primary(h).await?;
    let node = node_of(h, &p).await?;
    h.fault("partition", &node).await?;
    wait_new_primary(h, &p, failover_within(s.timings)).await?;
    sleep_secs(5).await;
    h.fault("heal", &node).await?;
    h.healed();
    Ok(())
}

/// A replica's node partitioned past `leaseDuration`: the primary stays.
pub async fn partition_replica_node(h: &mut Harness, s: &mut Scene) -> Result<()> {
    let p = primary(h).await?;
    let r = replica(h, s).await?;
    let node = node_of(h, &r).await?;
    h.fault("partition", &node).await?;
    sleep_secs(s.timings.lease + 5).await;
    h.fault("heal", &node).await?;
    h.healed();
    h.require(Requirement::FinalPrimary(p));
    Ok(())
}

pub async fn stop_primary_node(h: &mut Harness, s: &mut Scene) -> Result<()> {
    let p = primary(h).await?;
    let node = node_of(h, &p).await?;
    h.fault("stop", &node).await?;
    wait_new_primary(h, &p, failover_within(s.timings)).await?;
    sleep_secs(5).await;
    h.fault("start", &node).await?;
    h.healed();
    Ok(())
}

pub async fn apiserver_stop(h: &mut Harness, _s: &mut Scene) -> Result<()> {
    h.fault("apiserver-stop", "").await?;
    sleep_secs(60).await;
    h.fault("apiserver-start", "").await?;
    h.healed();
    Ok(())
}

/// SIGTERM (pod deletion): the sidecar stops PostgreSQL fast and releases the Lease (L4), which a replica
/// claims at once (L2) instead of waiting for it to expire — one takeover, well within `leaseDuration`.
pub async fn delete_primary_pod(h: &mut Harness, s: &mut Scene) -> Result<()> {
    let p = primary(h).await?;
    let epoch = lease(h).await?.transitions;
    let at = now_us();
    s.kubectl(&["delete", "pod", &p, "--wait=false"])?;
    h.fault_marked(at, format!("kubectl delete pod {p}"));
    h.healed();
    let new = wait_new_primary(h, &p, failover_within(s.timings)).await?;
    h.require(Requirement::FinalLease {
        holder: new,
        transitions: epoch + 1,
    });
    // Well before the 15 s Lease would have expired: the release was used.
    h.require(Requirement::TakeoverWithin(micros(Duration::from_secs(10))));
    Ok(())
}

pub async fn scale_under_load(h: &mut Harness, s: &mut Scene) -> Result<()> {
    let pgc = format!("pgc/{}", s.cluster);
    let at = now_us();
    s.kubectl(&["scale", &pgc, "--replicas=5"])?;
    h.fault_marked(at, format!("kubectl scale {pgc} --replicas=5"));
    h.set_members(5);
    h.wait_converged_since(now_us(), Duration::from_secs(240))
        .await?;
    let at = now_us();
    s.kubectl(&["scale", &pgc, "--replicas=2"])?;
    h.fault_marked(at, format!("kubectl scale {pgc} --replicas=2"));
    h.set_members(2);
    h.healed();
    Ok(())
}

/// Setup of the scale-down rows: a switchover through the REST API moves the primary to the highest
/// ordinal (in a synchronous mode with `syncReplicas: 2` first, so that member is a recorded synchronous
/// standby), unless it is there already. Returns that member.
async fn primary_to_highest(h: &mut Harness, s: &mut Scene) -> Result<String> {
    let top = format!("{}-{}", s.cluster, h.members.len() - 1);
    let p = primary(h).await?;
    if p != top {
        if s.mode == Mode::Sync {
            s.patch_spec(r#"{"spec":{"replication":{"syncReplicas":2}}}"#)?;
            let h: &Harness = h;
            let what = format!("{top} recorded synchronous after syncReplicas: 2");
            wait_for(
                &what,
                Duration::from_secs(60),
                Duration::from_secs(1),
                || async { Ok(lease(h).await?.sync_members.contains(&top).then_some(())) },
            )
            .await?;
        }
        let pods = h.pods().await?;
        let ip = cluster::ip_of(&pods, &p).with_context(|| format!("{p} has no IP"))?;
        let (status, text) =
            rest::switchover(&h.client, &s.namespace, &s.cluster, &ip, &p, &top).await?;
        h.mark(format!(
            "setup: POST /switchover {p} -> {top}: {status} {text}"
        ));
        ensure!(
            status == 200,
            "switchover to {top} answered {status}: {text}"
        );
        let now = wait_new_primary(h, &p, Duration::from_secs(30)).await?;
        ensure!(now == top, "switched over to {now}, asked for {top}");
        h.wait_converged_since(now_us(), Duration::from_secs(60))
            .await?;
    }
    Ok(top)
}

/// Issue 14: a scale-down never removes the primary without a switchover first. The primary is moved
/// to the highest ordinal (in a synchronous mode with `syncReplicas: 2` for that, so the member is a
/// recorded synchronous standby); then `instances: 2` (and `syncReplicas: 1`). The operator must ask that
/// primary to hand over to a surviving member — a recorded synchronous one in a synchronous mode — and
/// only then remove its pod: no acknowledged write is lost in either mode, nobody takes over unasked,
/// the status records the change as a switchover, and the removed member's volume is kept.
pub async fn scale_down_primary_last(h: &mut Harness, s: &mut Scene) -> Result<()> {
    let top = primary_to_highest(h, s).await?;
    let at = now_us();
    let patch = match s.mode {
        Mode::Sync => r#"{"spec":{"instances":2,"replication":{"syncReplicas":1}}}"#,
        Mode::Async => r#"{"spec":{"instances":2}}"#,
    };
    s.patch_spec(patch)?;
    h.fault_marked(at, format!("instances: 2 while {top} is the primary"));
    h.set_members(2);
    h.healed();
    let new = wait_new_primary(h, &top, Duration::from_secs(90)).await?;
    // A new holder records its synchronous standby once one streams to it, moments after it took over.
    if s.mode == Mode::Sync {
        let h: &Harness = h;
        let what = format!("the new primary {new} recording a synchronous standby");
        wait_for(
            &what,
            Duration::from_secs(30),
            Duration::from_secs(1),
            || async {
                let recorded = lease(h).await?.sync_members;
                Ok(recorded.iter().any(|m| *m != new).then_some(()))
            },
        )
        .await?;
    }
    expect_operator_switchover(s, &top, &new).await?;
    // The pod goes, its volume stays (storage.deleteOnScaleDown is off by default).
    let harness: &Harness = h;
    let what = format!("{top}'s pod to be removed after the switchover");
    wait_for(
        &what,
        Duration::from_secs(90),
        Duration::from_secs(1),
        || async {
            let pods = harness.pods().await?;
            Ok((!pods.iter().any(|m| m.name == top)).then_some(()))
        },
    )
    .await?;
    s.kubectl(&["get", "pvc", &format!("data-{top}")])
        .with_context(|| format!("the volume of the removed member {top}"))?;
    h.require(Requirement::FinalPrimary(new));
    Ok(())
}

/// The primary moved from `from` to `to` by the operator's own switchover, as the status and the Events
/// tell it: `status.lastFailover` reads a switchover, and no `FailoverObserved` Event names it.
async fn expect_operator_switchover(s: &Scene, from: &str, to: &str) -> Result<()> {
    let pgc = format!("pgc/{}", s.cluster);
    let record = "jsonpath={.status.lastFailover.reason} {.status.lastFailover.from} {.status.lastFailover.to}";
    let want = format!("Switchover {from} {to}");
    let what = format!("status.lastFailover to read {want:?}");
    wait_for(
        &what,
        Duration::from_secs(60),
        Duration::from_secs(1),
        || async {
            let got = s.kubectl(&["get", &pgc, "-o", record])?;
            ensure!(got == want, "status.lastFailover is {got:?}");
            Ok(Some(()))
        },
    )
    .await?;
    // The setup's own switchover through the REST API is one the operator was not asked for (an
    // observed failover); the scale-down's must not be.
    let observed = events_of(s, "FailoverObserved")?;
    let unasked = format!("primary changed from {from} to {to}");
    ensure!(
        !observed.iter().any(|m| m.trim() == unasked),
        "the scale-down's switchover was reported as a failover: {observed:?}"
    );
    Ok(())
}

/// Issue 14: 3 → 1 in one change while the highest ordinal is the primary. The operator switches over
/// straight to the one member that stays (`-0`), then removes the others one at a time, the pod removed
/// last gone before the next: no acknowledged write lost, nobody takes over unasked, both volumes kept.
/// A single member cannot be synchronous (the CRD refuses `syncReplicas` ≥ `instances` outside `async`),
/// so in a synchronous mode the same change sets `mode: async`, as a user must.
pub async fn scale_down_to_one(h: &mut Harness, s: &mut Scene) -> Result<()> {
    let top = primary_to_highest(h, s).await?;
    let at = now_us();
    let patch = match s.mode {
        Mode::Sync => r#"{"spec":{"instances":1,"replication":{"mode":"async","syncReplicas":1}}}"#,
        Mode::Async => r#"{"spec":{"instances":1}}"#,
    };
    s.patch_spec(patch)?;
    h.fault_marked(
        at,
        format!("instances: 1 while {top} is the primary ({patch})"),
    );
    h.set_members(1);
    h.healed();
    let stays = format!("{}-0", s.cluster);
    let new = wait_new_primary(h, &top, Duration::from_secs(90)).await?;
    ensure!(
        new == stays,
        "{new} took over, not {stays}, the member that stays"
    );
    expect_operator_switchover(s, &top, &new).await?;
    // One member at a time: the StatefulSet's size steps 3 → 2 → 1 (each step waits for the pod removed
    // last to be gone, seconds here), polled more often than a step lasts.
    let sts = format!("statefulset/{}", s.cluster);
    let mut sizes: Vec<String> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(180);
    let left = loop {
        let size = s.kubectl(&["get", &sts, "-o", "jsonpath={.spec.replicas}"])?;
        if sizes.last() != Some(&size) {
            h.mark(format!("checker: StatefulSet replicas {size}"));
            sizes.push(size);
        }
        let pods = h.pods().await?;
        if pods.len() == 1 && sizes.last().is_some_and(|z| z == "1") {
            break pods[0].name.clone();
        }
        ensure!(
            Instant::now() < deadline,
            "still {} pods after 180 s (StatefulSet replicas {sizes:?})",
            pods.len()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    h.mark(format!("checker: only {left} left"));
    ensure!(left == stays, "{left} is left, not {stays}");
    let steps: Vec<&str> = sizes
        .iter()
        .map(String::as_str)
        .skip_while(|z| *z == "3")
        .collect();
    ensure!(
        steps == ["2", "1"],
        "the StatefulSet shrank {sizes:?}, not one member at a time"
    );
    wait_roll(s, "1 Stable", Duration::from_secs(60)).await?;
    for gone in (1..3).map(|i| format!("{}-{i}", s.cluster)) {
        s.kubectl(&["get", "pvc", &format!("data-{gone}")])
            .with_context(|| format!("the volume of the removed member {gone}"))?;
    }
    h.require(Requirement::FinalPrimary(new));
    Ok(())
}

/// `POST /switchover` with the cluster's API credentials: in synchronous mode to the primary, in
/// asynchronous mode to the candidate (a replica forwards it to the primary). No acknowledged write is
/// lost in either mode.
pub async fn switchover_under_load(h: &mut Harness, s: &mut Scene) -> Result<()> {
    let p = primary(h).await?;
    let pods = h.pods().await?;
    // In synchronous mode only a synchronous standby may take over (a 412 otherwise, as in Patroni): ask
    // each replica's `GET /sync`. A standby answers from its own last read of the Lease, up to a retry
    // period after the holder recorded it (seen: recorded at +2.9 s, `/sync` still 503 at +2.96 s), so ask
    // again for up to 3 retry periods.
    let asked = Instant::now();
    let candidates = loop {
        let mut candidates = Vec::new();
        for pod in pods.iter().filter(|x| x.name != p) {
            let Some(ip) = &pod.ip else { continue };
            if s.mode == Mode::Async || rest::is_sync(ip).await {
                candidates.push(pod.name.clone());
            }
        }
        if !candidates.is_empty() || asked.elapsed() > Duration::from_secs(3 * s.timings.retry) {
            break candidates;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let candidate = s
        .pick(&candidates)
        .cloned()
        .context("no replica may take over (no replica's GET /sync answered 200)")?;
    let via = match s.mode {
        Mode::Sync => &p,
        Mode::Async => &candidate,
    };
    let ip = cluster::ip_of(&pods, via).with_context(|| format!("{via} has no IP"))?;
    let at = now_us();
    let (status, text) =
        rest::switchover(&h.client, &s.namespace, &s.cluster, &ip, &p, &candidate).await?;
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

pub async fn kill_new_primary_during_failover(h: &mut Harness, s: &mut Scene) -> Result<()> {
    let p = primary(h).await?;
    h.fault("kill", &s.target(&format!("{p}/postgres"))).await?;
    let second = wait_new_primary(h, &p, failover_within(s.timings)).await?;
    h.fault("kill", &s.target(&format!("{second}/postgres")))
        .await?;
    h.healed();
    Ok(())
}

/// Issue 14: a manual failover while automatic failover is blocked. The primary's node and the recorded
/// synchronous standby's node stop; the remaining standby is not synchronous, so it may not take over by
/// itself (L3). `POST /failover` to it waits for the dead primary's Lease to expire and is then refused
/// with the reason, naming `force`; with `force` it takes the Lease and promotes (what only the stopped
/// members had is lost — the user's choice). Once both nodes are back, they follow the new primary.
pub async fn manual_failover_blocked(h: &mut Harness, s: &mut Scene) -> Result<()> {
    ensure!(s.mode == Mode::Sync, "a synchronous-mode row");
    let p = primary(h).await?;
    let sync = s
        .sync_standbys
        .first()
        .cloned()
        .context("no recorded synchronous standby")?;
    let other = h
        .members
        .iter()
        .find(|m| **m != p && **m != sync)
        .cloned()
        .context("no asynchronous standby")?;
    let pods = h.pods().await?;
    let ip = cluster::ip_of(&pods, &other).with_context(|| format!("{other} has no IP"))?;
    let (primary_node, sync_node) = (node_of(h, &p).await?, node_of(h, &sync).await?);
    h.fault("stop", &primary_node).await?;
    h.fault("stop", &sync_node).await?;
    let failover = async |force: bool| {
        let body = serde_json::json!({ "candidate": other, "force": force });
        let asked = Instant::now();
        let answer = rest::post(
            &h.client,
            &s.namespace,
            &s.cluster,
            &ip,
            "/failover",
            Some(body),
        )
        .await;
        let (status, text) = answer?;
        h.mark(format!(
            "POST /failover {other} force={force}: {status} {text} ({:.1} s)",
            asked.elapsed().as_secs_f64()
        ));
        anyhow::Ok((status, text))
    };
    // Until the candidate's HA loop has noticed that the primary is gone (its next iteration), its REST
    // API answers as to a failover with a live leader: a switchover's refusal.
    let noticed = Instant::now() + Duration::from_secs(15);
    let (status, text) = loop {
        let (status, text) = failover(false).await?;
        if text.contains("is not a synchronous standby") && Instant::now() < noticed {
            sleep_secs(1).await;
            continue;
        }
        break (status, text);
    };
    ensure!(
        status == 412
            && text.contains("not a recorded synchronous standby")
            && text.contains("force"),
        "without force: {status} {text}"
    );
    let (status, text) = failover(true).await?;
    ensure!(status == 200, "with force: {status} {text}");
    let new = wait_new_primary(h, &p, Duration::from_secs(30)).await?;
    ensure!(new == other, "{new} became primary, not {other}");
    sleep_secs(5).await;
    h.fault("start", &primary_node).await?;
    h.fault("start", &sync_node).await?;
    h.healed();
    Ok(())
}

/// `status.<field>` of the cluster, by jsonpath.
fn status_of(s: &Scene, jsonpath: &str) -> Result<String> {
    s.kubectl(&[
        "get",
        &format!("pgc/{}", s.cluster),
        "-o",
        &format!("jsonpath={jsonpath}"),
    ])
}

/// Waits until `status.updatedInstances` and `Progressing`'s reason read `want` (`"<n> <reason>"`).
async fn wait_roll(s: &Scene, want: &str, timeout: Duration) -> Result<()> {
    let what = format!("updatedInstances and Progressing to read {want:?}");
    let jsonpath =
        r#"{.status.updatedInstances} {.status.conditions[?(@.type=="Progressing")].reason}"#;
    wait_for(&what, timeout, Duration::from_secs(1), || async {
        let got = status_of(s, jsonpath)?;
        ensure!(got == want, "they read {got:?}");
        Ok(Some(()))
    })
    .await
}

/// The messages of the cluster's Events with this reason.
fn events_of(s: &Scene, reason: &str) -> Result<Vec<String>> {
    let out = s.kubectl(&[
        "get",
        "events",
        "--field-selector",
        &format!("involvedObject.name={},reason={reason}", s.cluster),
        "-o",
        "jsonpath={range .items[*]}{.message}{\"\\n\"}{end}",
    ])?;
    Ok(out
        .lines()
        .map(str::to_owned)
        .filter(|l| !l.trim().is_empty())
        .collect())
}

/// Issue 14: a change of the image under load (between two tags of the local PostgreSQL 15 stand-in, as a
/// minor upgrade is) is rolled by the operator — replicas one at a time,
/// then the primary through one switchover to an updated replica, then the former primary as a replica.
/// In sync mode with `primaryUpdateStrategy: supervised`: the roll stops before the primary and says so
/// (`UpdatePending`, the primary's pod untouched) until a switchover in the spec, then finishes. Either
/// way the primary changes once, through a switchover (never an observed failover), and every
/// member is updated with an Event each.
pub async fn rolling_update(h: &mut Harness, s: &mut Scene) -> Result<()> {
    let p = primary(h).await?;
    let before = lease(h).await?.transitions;
    let uid_of = |m: &str| s.kubectl(&["get", "pod", m, "-o", "jsonpath={.metadata.uid}"]);
    let primary_uid = uid_of(&p)?;
    let supervised = s.mode == Mode::Sync;
    // The other tag each time, so a second roll changes the template again.
    let image = if status_of(s, "{.spec.image}")? == REBUILT_IMAGE {
        "postgres:15"
    } else {
        REBUILT_IMAGE
    };
    let patch = format!(
        r#"{{"spec":{{"primaryUpdateStrategy":"{}","image":"{image}"}}}}"#,
        if supervised {
            "supervised"
        } else {
            "unsupervised"
        }
    );
    let at = now_us();
    s.patch_spec(&patch)?;
    h.fault_marked(at, format!("pod template changed ({patch})"));
    let members = h.members.len();
    let roll = Duration::from_secs(120 * u64::try_from(members).unwrap_or(3));
    let new = if supervised {
        wait_roll(s, &format!("{} UpdatePending", members - 1), roll).await?;
        ensure!(
            uid_of(&p)? == primary_uid,
            "supervised: the primary {p}'s pod was replaced before a switchover in the spec"
        );
        ensure!(
            primary(h).await? == p,
            "supervised: the primary moved by itself"
        );
        let message = status_of(
            s,
            r#"{.status.conditions[?(@.type=="Progressing")].message}"#,
        )?;
        ensure!(
            message.contains(&p) && message.contains("spec.switchover"),
            "UpdatePending does not say what to do: {message:?}"
        );
        // The primary records an updated standby once it caught up, moments after the roll stopped.
        let to = h
            .wait_sync_standby(Duration::from_secs(60))
            .await?
            .first()
            .cloned()
            .context("no recorded synchronous standby to switch over to")?;
        let at = now_us();
        s.patch_spec(&format!(
            r#"{{"spec":{{"switchover":{{"targetInstance":"{to}"}}}}}}"#
        ))?;
        h.mark(format!("spec.switchover.targetInstance: {to} ({at} µs)"));
        let new = wait_new_primary(h, &p, Duration::from_secs(60)).await?;
        ensure!(new == to, "switched over to {new}, asked for {to}");
        new
    } else {
        wait_new_primary(h, &p, roll).await?
    };
    wait_roll(s, &format!("{members} Stable"), roll).await?;
    h.healed();
    ensure!(
        uid_of(&p)? != primary_uid,
        "the former primary {p} was not updated"
    );
    let images = s.get_of_cluster("pods", r#"jsonpath={range .items[*]}{.metadata.name}={.spec.containers[?(@.name=="postgres")].image} {end}"#)?;
    let stale: Vec<&str> = images
        .split_whitespace()
        .filter(|p| !p.ends_with(&format!("={image}")))
        .collect();
    ensure!(
        images.split_whitespace().count() == members && stale.is_empty(),
        "not every member runs {image}: {images}"
    );
    roll_done(h, s, &p, &new, before, members).await
}

/// The second tag of the local PostgreSQL 15 stand-in (`e2e/images/postgres-rebuilt`).
const REBUILT_IMAGE: &str = "postgres:15-r2";

/// What every finished roll shows: an Event per pod restarted (at least `restarted`) and one at the
/// end, the primary changed once through a switchover that is not reported as a failover, a new Lease
/// epoch, and the new primary staying primary.
async fn roll_done(
    h: &mut Harness,
    s: &Scene,
    p: &str,
    new: &str,
    epoch_before: i32,
    restarted: usize,
) -> Result<()> {
    let updating = events_of(s, "MemberUpdating")?;
    ensure!(
        updating.len() >= restarted,
        "{} MemberUpdating Events, {restarted} pods restarted at least: {updating:?}",
        updating.len()
    );
    ensure!(
        !events_of(s, "RollingUpdateDone")?.is_empty(),
        "no RollingUpdateDone Event"
    );
    let unasked = format!("primary changed from {p} to {new}");
    let observed = events_of(s, "FailoverObserved")?;
    ensure!(
        !observed.iter().any(|m| m.trim() == unasked),
        "the roll's switchover was reported as a failover: {observed:?}"
    );
    let record = status_of(
        s,
        "{.status.lastFailover.reason} {.status.lastFailover.from} {.status.lastFailover.to}",
    )?;
    ensure!(
        record == format!("Switchover {p} {new}"),
        "status.lastFailover reads {record:?}"
    );
    let after = lease(h).await?.transitions;
    ensure!(
        after > epoch_before,
        "the Lease's epoch stayed {epoch_before} across the switchover"
    );
    h.require(Requirement::FinalPrimary(new.to_owned()));
    Ok(())
}

/// Issue 14: a parameter that needs a restart (`max_connections`, raised) under load is applied by the
/// same roll — each member reports `pending_restart`, the operator restarts the replicas, switches over
/// and restarts the former primary — and every member then runs with the new value.
pub async fn pending_restart_roll(h: &mut Harness, s: &mut Scene) -> Result<()> {
    let p = primary(h).await?;
    let before = lease(h).await?.transitions;
    let current: u64 = show_on(h, s, &p, "max_connections").await?.parse()?;
    let want = (current + 10).to_string();
    let patch =
        format!(r#"{{"spec":{{"postgresql":{{"parameters":{{"max_connections":"{want}"}}}}}}}}"#);
    let at = now_us();
    s.patch_spec(&patch)?;
    h.fault_marked(at, format!("max_connections {current} -> {want} ({patch})"));
    let members = h.members.len();
    let roll = Duration::from_secs(120 * u64::try_from(members).unwrap_or(3));
    let what = "the roll of the pending restart to start";
    let jsonpath = r#"{.status.conditions[?(@.type=="Progressing")].reason}"#;
    wait_for(
        what,
        Duration::from_secs(60),
        Duration::from_millis(500),
        || async { Ok((status_of(s, jsonpath)? == "RollingUpdate").then_some(())) },
    )
    .await?;
    let new = wait_new_primary(h, &p, roll).await?;
    wait_roll(s, &format!("{members} Stable"), roll).await?;
    h.healed();
    // The former primary may still be restarting as it rejoins the new primary's timeline (the roll
    // counts it updated once it stepped down): a refused connection is waited out, a wrong value is not.
    for m in h.members.clone() {
        let got = wait_for(
            &format!("{m} to answer SHOW max_connections"),
            Duration::from_secs(60),
            Duration::from_millis(500),
            || async { Ok(Some(show_on(h, s, &m, "max_connections").await?)) },
        )
        .await?;
        ensure!(
            got == want,
            "{m} runs with max_connections {got}, not {want}"
        );
    }
    // The former primary's PostgreSQL restarted when it stepped down, which applied the parameter
    // already: only the replicas' pods need a restart.
    roll_done(h, s, &p, &new, before, members - 1).await
}

/// Every member runs PostgreSQL `major` (`server_version_num` read over SQL): a row that names a major
/// version checks it runs that one before its fault.
pub async fn expect_major(h: &Harness, s: &Scene, major: u32) -> Result<()> {
    for m in &h.members {
        let num: u32 = show_on(h, s, m, "server_version_num").await?.parse()?;
        ensure!(
            num / 10_000 == major,
            "{m} runs PostgreSQL {num}, not {major}"
        );
    }
    Ok(())
}

/// `SHOW <setting>` on one member, as the superuser over its pod IP.
async fn show_on(h: &Harness, s: &Scene, member: &str, setting: &str) -> Result<String> {
    let client = superuser_on(h, s, member).await?;
    let row = client
        .query_one(&format!("SHOW {setting}"), &[])
        .await
        .with_context(|| format!("SHOW {setting} on {member}"))?;
    Ok(row.get::<_, String>(0))
}

/// A superuser session on one member, over its pod IP.
pub(super) async fn superuser_on(
    h: &Harness,
    s: &Scene,
    member: &str,
) -> Result<tokio_postgres::Client> {
    let pods = h.pods().await?;
    let ip = cluster::ip_of(&pods, member).with_context(|| format!("{member} has no IP"))?;
    let (user, password) =
        cluster::credentials(&h.client, &s.namespace, &s.cluster, "superuser").await?;
    let conn = format!(
        "host={ip} port={} user={user} password={password} dbname=postgres connect_timeout=3",
        pgpilot_crds::contract::PG_PORT
    );
    let (client, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
        .await
        .with_context(|| format!("connecting to {member} ({ip})"))?;
    tokio::spawn(connection);
    Ok(client)
}

/// Issue 14: `spec.hibernation` under load. The members are paused, then every pod is removed with the
/// volumes kept (`phase: Hibernated`, the same claims as before, the primary recorded); turned off, the
/// members start on the same data — the checker finds every acknowledged write, in either mode, since
/// the primary stopped cleanly — and the member that was primary takes its role back.
pub async fn hibernation(h: &mut Harness, s: &mut Scene) -> Result<()> {
    let p = primary(h).await?;
    let claims = || {
        s.get_of_cluster(
            "pvc",
            "jsonpath={range .items[*]}{.metadata.name}/{.metadata.uid} {end}",
        )
    };
    let before = claims()?;
    let at = now_us();
    s.patch_spec(r#"{"spec":{"hibernation":true}}"#)?;
    h.fault_marked(at, "spec.hibernation: true");
    let phase = wait_for(
        "phase Hibernated",
        Duration::from_secs(120),
        Duration::from_millis(500),
        || async {
            let got = status_of(s, "{.status.phase} {.status.hibernation.primary}")?;
            Ok(got.starts_with("Hibernated").then_some(got))
        },
    )
    .await?;
    h.mark(format!("checker: {phase}"));
    ensure!(
        phase == format!("Hibernated {p}"),
        "status reads {phase:?}, not the primary {p} recorded"
    );
    let pods = s.get_of_cluster("pods", "name")?;
    ensure!(pods.trim().is_empty(), "pods left while hibernated: {pods}");
    let kept = claims()?;
    ensure!(
        kept == before && kept.split_whitespace().count() == h.members.len(),
        "the volumes changed: {before:?} before, {kept:?} hibernated"
    );
    ensure!(
        !events_of(s, "Hibernating")?.is_empty(),
        "no Hibernating Event"
    );
    sleep_secs(5).await;
    s.patch_spec(r#"{"spec":{"hibernation":false}}"#)?;
    h.mark("spec.hibernation: false");
    h.healed();
    let woke = wait_for(
        "the former primary back as primary",
        Duration::from_secs(180),
        Duration::from_millis(500),
        || async {
            let got = status_of(s, "{.status.primary}/{.status.hibernation}")?;
            Ok((got == format!("{p}/")).then_some(got))
        },
    )
    .await?;
    h.mark(format!("checker: woke up, primary/hibernation {woke}"));
    let woke_up = events_of(s, "WokeUp")?;
    ensure!(
        woke_up
            .iter()
            .any(|m| m == &format!("woke up from hibernation with {p} as primary")),
        "WokeUp Events: {woke_up:?}"
    );
    ensure!(
        claims()? == before,
        "the members woke up on other volumes than before"
    );
    h.require(Requirement::FinalPrimary(p));
    Ok(())
}
