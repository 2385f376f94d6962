//! The grey failures of issue 13, as faults: a slow apiserver (one renewal committed with its reply lost,
//! or 30 s of it), the Lease deleted and recreated, a partitioned primary's pod force-deleted, `spec.ha`
//! changed under load, the other standby cut while the synchronous one lags, a pause during a partition,
//! and `POST /restart` on every member. Each keeps the checker's promise (never two writable members,
//! convergence, no acknowledged write lost in a synchronous mode) and asserts what its rule adds.

use std::{collections::BTreeMap, time::Duration};

use anyhow::{Context, Result, bail, ensure};
use pgpilot_crds::contract;

use super::{
    Mode, Recovery, Scene, Timings, lease, micros, node_of, primary, replicas, sleep_secs,
    wait_new_primary,
};
use crate::{
    checker::{
        harness::Harness,
        verdict::{self, Micros, Requirement},
    },
    clock::now_us,
    cluster::{self, LeaseWrite},
    rest, wait_for,
};

/// Every Lease request of the HA loop is bounded by the retry period, 2 s at most (docs/design.md, the
/// HA loop): past this, a reply is lost to its client.
fn client_timeout(t: Timings) -> Duration {
    Duration::from_secs(t.retry.min(2))
}

/// The next write of the Lease after `after` that renews `holder`'s record (its `renewTime` moved),
/// polled every 50 ms from this host, which the slowed proxy does not sit in front of.
async fn renewal(
    h: &Harness,
    holder: &str,
    after: &LeaseWrite,
    timeout: Duration,
) -> Result<LeaseWrite> {
    let name = contract::lease_name(&h.cluster);
    let what = format!("a renewal of the Lease by {holder}");
    wait_for(&what, timeout, Duration::from_millis(50), || async {
        let w = cluster::lease_write(&h.client, &h.namespace, &name).await?;
        let renewed = w.renewed_at_us != after.renewed_at_us && w.uid == after.uid;
        Ok((renewed && lease(h).await?.holder.as_deref() == Some(holder)).then_some(w))
    })
    .await
}

async fn sleep_until_us(at: Micros) {
    let left = u64::try_from(at - now_us()).unwrap_or(0);
    tokio::time::sleep(Duration::from_micros(left)).await;
}

/// The apiserver's replies to the primary's node delayed past the client timeout for about one renewal —
/// the renewal commits, its reply is lost — then on time again (issue 13 hole 1). The primary must stay
/// the confirmed holder or fence; it never follows while writable (the checker: no two writable members;
/// the route check after the heal: a primary relabelled replica while it serves leaves `-rw` dark).
///
/// The delay starts just after a renewal. The holder's reads of the Lease then time out; the first loop
/// whose read fails once the renewal is due renews from the copy it last read (decide's rule 1), and that
/// write, conditional on the version it just wrote, commits — its reply comes a second after the client
/// gave up. Seen on the Lease (read from this host, which no proxy slows): a `renewTime` stamped after the
/// delay began. Half a second after the client's timeout the delay ends: the holder's next read returns
/// its own committed write, well before its `renewDeadline`.
pub async fn slow_apiserver_lost_reply(h: &mut Harness, s: &mut Scene) -> Result<()> {
    let p = primary(h).await?;
    let node = node_of(h, &p).await?;
    let t = s.timings;
    let timeout = client_timeout(t);
    let above = (timeout + Duration::from_secs(1)).as_millis().to_string();
    let name = contract::lease_name(&s.cluster);
    // The renewal after the one in flight is due a renew interval later; with every read timing out, a
    // loop takes the client timeout, and the write one more.
    let renew_interval = Duration::from_secs((t.lease - t.renew).max(t.retry));
    let within = renew_interval + 2 * (timeout + Duration::from_secs(t.retry)) + timeout;
    let now = cluster::lease_write(&h.client, &h.namespace, &name).await?;
    let mut last = renewal(h, &p, &now, renew_interval + within).await?;
    let slowed = h.fault_with("slow-apiserver", &[&node, &above]).await?;
    for _ in 0..2 {
        let w = renewal(h, &p, &last, within).await?;
        let Some(at) = w.renewed_at_us.filter(|at| *at >= slowed) else {
            // Stamped before the delay began: a renewal already on its way. The next one is the test.
            last = w;
            continue;
        };
        h.mark(format!(
            "checker: a renewal sent {:.3} s into the delay committed; its reply comes {above} ms after \
             it was sent, past the {} ms client timeout",
            (at - slowed) as f64 / 1e6,
            timeout.as_millis()
        ));
        sleep_until_us(at + micros(timeout + Duration::from_millis(500))).await;
        h.fault_with("heal-apiserver", &[&node]).await?;
        h.healed();
        return Ok(());
    }
    h.fault_with("heal-apiserver", &[&node]).await?;
    bail!("no renewal was sent while the apiserver's replies were late (see the timeline)")
}

/// The apiserver's replies to the primary's node delayed past the client timeout for 30 s: the primary
/// can neither read nor renew the Lease, fences at `renewDeadline` (L5), another member takes over once
/// the Lease expires (L2); on time again, the old primary rejoins.
pub async fn slow_apiserver_long(h: &mut Harness, s: &mut Scene) -> Result<()> {
    let p = primary(h).await?;
    let node = node_of(h, &p).await?;
    let above = (client_timeout(s.timings) + Duration::from_secs(1)).as_millis();
    h.fault_with("slow-apiserver", &[&node, &above.to_string()])
        .await?;
    sleep_secs(30).await;
    h.fault_with("heal-apiserver", &[&node]).await?;
    h.healed();
    Ok(())
}

/// Every member's system identifier, which must be one and the same.
async fn one_system_identifier(h: &Harness) -> Result<String> {
    let ids = h.system_identifiers().await;
    let mut distinct: Vec<&String> = ids.values().filter_map(|r| r.as_ref().ok()).collect();
    distinct.sort();
    distinct.dedup();
    match (distinct.as_slice(), ids.values().any(Result::is_err)) {
        ([one], false) => Ok((*one).clone()),
        _ => bail!("the members' system identifiers: {ids:?}"),
    }
}

/// The Lease deleted and recreated under load, as a user, a restore or the operator recreating a missing
/// child would (issue 13 hole 4): no second cluster. The primary takes the holderless Lease back without
/// stopping and its renewals record the system identifier again (L4), the epoch does not restart (L7),
/// no member bootstraps: every member keeps the database system identifier it had (read over SQL before
/// and after), every acknowledged write is kept (in either mode: nobody else takes over) and the primary
/// stays.
pub async fn lease_recreate(h: &mut Harness, s: &mut Scene) -> Result<()> {
    let p = primary(h).await?;
    let system_id = one_system_identifier(h).await?;
    let before = lease(h).await?;
    h.mark(format!(
        "checker: every member has system identifier {system_id}; the Lease is at epoch {}",
        before.transitions
    ));
    h.fault("lease-recreate", &s.target(&s.cluster)).await?;
    let what = format!(
        "{p} holding the recreated Lease at an epoch of at least {} with system identifier {system_id}",
        before.transitions
    );
    let timeout = Duration::from_secs(2 * s.timings.lease + 10);
    let back = wait_for(&what, timeout, Duration::from_millis(250), || async {
        let l = lease(h).await?;
        let back = l.holder.as_deref() == Some(p.as_str())
            && l.system_identifier.as_deref() == Some(system_id.as_str())
            && l.transitions >= before.transitions;
        Ok(back.then_some(l))
    })
    .await;
    h.healed();
    let back = back?;
    h.mark(format!(
        "checker: {p} holds the recreated Lease at epoch {}",
        back.transitions
    ));
    h.wait_converged_since(now_us(), s.timings.converge_bound(Recovery::Member))
        .await?;
    let after = one_system_identifier(h).await?;
    ensure!(
        after == system_id,
        "the system identifier changed from {system_id} to {after}: a second cluster"
    );
    h.require(Requirement::FinalPrimary(p));
    Ok(())
}

/// The primary's node partitioned, then its pod force-deleted (issue 13 hole 6): the pod is gone from the
/// API while its PostgreSQL runs on, cut off. A vanished pod proves nothing (L8): the others wait the
/// holder's `renewDeadline` plus a retry period from the record's last change, by when the old primary
/// fenced (L5) — the checker's "two writable members" is the assertion. On the heal the kubelet stops the
/// old containers and starts the pod the StatefulSet recreated, which rejoins.
pub async fn partition_force_delete(h: &mut Harness, s: &mut Scene) -> Result<()> {
    let p = primary(h).await?;
    let node = node_of(h, &p).await?;
    h.fault("partition", &node).await?;
    h.fault("force-delete", &s.target(&p)).await?;
    wait_new_primary(h, &p, Duration::from_secs(s.timings.lease + 15)).await?;
    sleep_secs(5).await;
    h.fault("heal", &node).await?;
    h.healed();
    Ok(())
}

/// `spec.ha` changed to `to` under load, then — once the holder's write recorded the new
/// `leaseDurationSeconds` (L6) — the primary cut off, so the new timings decide the failover; healed and
/// converged again. A longer lease must hold: nobody takes over before the record has been unchanged for
/// the new `leaseDuration` (L2), which is at least `renewDeadline` after the cut (the last renewal was at
/// most `leaseDuration − renewDeadline` before it). Updates `s.timings`.
pub async fn change_timings(h: &mut Harness, s: &mut Scene, to: Timings) -> Result<()> {
    let from = s.timings;
    let at = now_us();
    s.patch_spec(&to.patch())?;
    h.fault_marked(
        at,
        format!(
            "kubectl patch pgc/{}: spec.ha {}/{}/{} -> {}/{}/{}",
            s.cluster, from.lease, from.renew, from.retry, to.lease, to.renew, to.retry
        ),
    );
    let what = format!("the Lease recording leaseDurationSeconds {}", to.lease);
    let timeout = Duration::from_secs(from.lease + to.lease + 30);
    wait_for(&what, timeout, Duration::from_millis(250), || async {
        let l = lease(h).await?;
        Ok((l.duration_secs == i32::try_from(to.lease).ok()).then_some(()))
    })
    .await?;
    s.timings = to;
    h.mark(format!(
        "checker: the Lease records leaseDurationSeconds {}",
        to.lease
    ));
    let p = primary(h).await?;
    let cut = h.fault_with("cut", &[&s.target(&p)]).await?;
    let within = Duration::from_secs(from.lease.max(to.lease) + 15);
    wait_new_primary(h, &p, within).await?;
    let takeover = verdict::takeover_after(&h.samples_since(cut - micros(to.lease())), cut);
    sleep_secs(5).await;
    h.fault("heal", &s.target(&p)).await?;
    h.healed();
    let earliest = micros(Duration::from_secs(to.renew)) - 1_000_000;
    ensure!(
        takeover.is_some_and(|t| t >= earliest),
        "after the change to leaseDuration {} s another member accepted writes {:?} ms after the cut: \
         the record cannot have been unchanged for {} s by then",
        to.lease,
        takeover.map(|t| t / 1000),
        to.lease
    );
    h.wait_converged_since(now_us(), to.converge_bound(Recovery::Member))
        .await?;
    Ok(())
}

/// `spec.ha` 15/10/2 → 30/20/5 → 15/10/2 under load, a cut of the primary after each change (issue 13
/// hole 7): see [`change_timings`].
pub async fn ha_change(h: &mut Harness, s: &mut Scene) -> Result<()> {
    change_timings(h, s, Timings::LONG).await?;
    change_timings(h, s, Timings::DEFAULT).await
}

/// The other standby cut while the synchronous standby lags, then the primary killed while the
/// synchronous standby catches up (issue 13 holes 2 and 3; synchronous modes).
///
/// The lag is a freeze of the synchronous standby's pod: this kernel has neither `netem` nor a `prio`
/// qdisc for a network delay, and a throttled replay (`recovery_min_apply_delay`) delays only the apply,
/// which neither a synchronous commit (it waits for the flush) nor the primary's choice of standbys looks
/// at. Frozen, the standby receives, flushes and answers nothing, as a stalled standby does, and thawed
/// it catches up from where it stopped. The freeze lasts less than `renewDeadline/2`, so the primary keeps
/// it as its synchronous standby (commits wait for it) rather than drop it as gone; the other standby is
/// cut a second into it, so there is nobody to move the synchronous role to. The primary is killed half
/// a second after the thaw: a member may take over only with every acknowledged write (L3: recorded as
/// synchronous) — the standby that was behind, or the old primary back after its restart.
pub async fn cut_other_while_sync_lags(h: &mut Harness, s: &mut Scene) -> Result<()> {
    ensure!(
        s.mode == Mode::Sync,
        "a synchronous standby lags only in a synchronous mode"
    );
    let p = primary(h).await?;
    let sync = s
        .pick(&s.sync_standbys)
        .cloned()
        .context("no recorded synchronous standby")?;
    let other = replicas(h)
        .await?
        .into_iter()
        .find(|m| *m != sync)
        .context("no other standby")?;
    let lag = Duration::from_millis((s.timings.renew * 500).saturating_sub(1000).max(2000));
    h.fault("freeze", &s.target(&sync)).await?;
    sleep_secs(1).await;
    h.fault("cut", &s.target(&other)).await?;
    tokio::time::sleep(lag.saturating_sub(Duration::from_secs(1))).await;
    h.fault("thaw", &s.target(&sync)).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    h.fault("kill", &s.target(&format!("{p}/postgres"))).await?;
    // The probes still hold the killed primary's last sample for a moment.
    sleep_secs(2).await;
    h.wait_primary(Duration::from_secs(s.timings.lease + 30))
        .await?;
    sleep_secs(3).await;
    h.fault("heal", &s.target(&other)).await?;
    h.healed();
    Ok(())
}

/// Each member's `pause` as it reports it over REST.
async fn paused(h: &Harness) -> Result<BTreeMap<String, bool>> {
    Ok(rest::reports(&h.client, &h.namespace, &h.cluster)
        .await?
        .into_iter()
        .map(|(m, r)| (m, r.pause))
        .collect())
}

/// Paused (`spec.paused: true`), the holder's node partitioned, unpaused (issue 13 hole 8): L5 fencing
/// stays armed while paused, so the cut-off holder fences at `renewDeadline`; the others, paused, take
/// nothing over until the unpause, then the expired Lease. Never two writable members.
pub async fn pause_partition(h: &mut Harness, s: &mut Scene) -> Result<()> {
    let p = primary(h).await?;
    let node = node_of(h, &p).await?;
    let at = now_us();
    s.patch_spec(r#"{"spec":{"paused":true}}"#)?;
    h.fault_marked(
        at,
        format!("kubectl patch pgc/{}: spec.paused true", s.cluster),
    );
    wait_for(
        "every member paused",
        Duration::from_secs(30),
        Duration::from_millis(250),
        || async { Ok(paused(h).await?.values().all(|p| *p).then_some(())) },
    )
    .await?;
    let cut = h.fault_with("partition", &[&node]).await?;
    sleep_secs(s.timings.lease + 5).await;
    let at = now_us();
    let unpaused = s.patch_spec(r#"{"spec":{"paused":false}}"#);
    h.mark(format!(
        "kubectl patch pgc/{}: spec.paused false ({unpaused:?})",
        s.cluster
    ));
    unpaused?;
    let early =
        verdict::takeover_after(&h.samples_since(cut - 10_000_000), cut).filter(|t| cut + t < at);
    ensure!(
        early.is_none(),
        "a member accepted writes {:?} ms after the partition, while the cluster was paused",
        early.map(|t| t / 1000)
    );
    wait_new_primary(h, &p, Duration::from_secs(s.timings.lease + 15)).await?;
    sleep_secs(3).await;
    h.fault("heal", &node).await?;
    h.healed();
    Ok(())
}

/// `POST /restart` (the REST API with the `api` Secret's credentials) on `member` under load; waits
/// until the cluster converged again.
async fn restart(h: &mut Harness, s: &Scene, member: &str) -> Result<()> {
    let pods = h.pods().await?;
    let ip = cluster::ip_of(&pods, member).with_context(|| format!("{member} has no IP"))?;
    let at = now_us();
    let (status, body) =
        rest::post(&h.client, &s.namespace, &s.cluster, &ip, "/restart", None).await?;
    h.fault_marked(
        at,
        format!("POST /restart to {member}: {status} {}", body.trim()),
    );
    ensure!(
        status == 200,
        "restart of {member} answered {status}: {body}"
    );
    h.wait_converged_since(now_us(), s.timings.converge_bound(Recovery::Member))
        .await?;
    Ok(())
}

/// `POST /restart` on every member under load, the replicas first (issue 13 hole 9): restarts go
/// through the HA loop, take the role from a fresh read of the Lease and renew while they run (L4, L5),
/// so none is a failover — the primary stays, and no acknowledged write is lost in either mode.
pub async fn restart_each_member(h: &mut Harness, s: &mut Scene) -> Result<()> {
    let p = primary(h).await?;
    let mut order = replicas(h).await?;
    order.push(p.clone());
    for m in &order {
        restart(h, s, m).await?;
    }
    h.healed();
    h.require(Requirement::FinalPrimary(p));
    Ok(())
}

/// `POST /restart` on one member (picked by the scene) under load: the primary stays.
pub async fn restart_member(h: &mut Harness, s: &mut Scene) -> Result<()> {
    let p = primary(h).await?;
    let member = s
        .pick(&h.members)
        .cloned()
        .context("no member to restart")?;
    restart(h, s, &member).await?;
    h.healed();
    h.require(Requirement::FinalPrimary(p));
    Ok(())
}
