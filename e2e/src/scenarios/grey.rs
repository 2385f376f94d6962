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
        probe::Sample,
        verdict::{self, Micros, Requirement},
    },
    clock::now_us,
    cluster::{self, LeaseWrite},
    host, rest, wait_for,
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

/// Makes sure a change of the toxic of `node`'s apiserver proxy cannot hang (and deadlock the proxy):
/// resets its connections to pods that are gone ([`host::reset_dead_proxy_links`]), then waits up to
/// 30 s until no link holds more than 64 KiB it could not deliver (a pod that is slow to read catches
/// up); fails rather than change the toxic over a link that does not drain.
async fn clear_proxy(h: &Harness, node: &str) -> Result<()> {
    let dead = host::reset_dead_proxy_links(node).await?;
    if !dead.is_empty() {
        h.mark(format!(
            "checker: reset the apiserver proxy of {node}'s connections to pods that are gone: {}",
            dead.join(", ")
        ));
    }
    let what = format!("the apiserver proxy of {node} delivering what it holds");
    wait_for(
        &what,
        Duration::from_secs(30),
        Duration::from_millis(500),
        || async {
            let stuck: Vec<(String, u64)> = host::proxy_backlog(node)
                .await?
                .into_iter()
                .filter(|(_, bytes)| *bytes > 64 * 1024)
                .collect();
            if stuck.is_empty() {
                Ok(Some(()))
            } else {
                bail!("undelivered bytes per pod: {stuck:?}")
            }
        },
    )
    .await
}

async fn sleep_until_us(at: Micros) {
    let left = u64::try_from(at - now_us()).unwrap_or(0);
    tokio::time::sleep(Duration::from_micros(left)).await;
}

/// The holder's count of renewals that failed (a timeout, a lost reply, a 409), and of lost races.
const RENEW_ERRORS: &str = r#"pgpilot_lease_writes_total{kind="renew",result="error"}"#;
const CONFLICTS: &str = r#"pgpilot_errors_total{module="ha",category="Conflict"}"#;

/// How many times [`slow_apiserver_lost_reply`] tries to raise the delay while a renewal is due.
const LOST_REPLY_ATTEMPTS: u32 = 4;

/// How close to the renewal falling due a loop's read may return and still be a coin flip (renew or
/// hold): the reads of one loop after another come back within tens of milliseconds of their schedule.
const HAIR_US: Micros = 300_000;

/// The apiserver's replies to the primary's node delayed past the client timeout for about one renewal —
/// a renewal commits, its reply is lost, the next one (from the copy the holder read before) gets a 409 —
/// then on time again (issue 13 hole 1). The primary must stay the confirmed holder or fence; it never
/// follows while writable (the checker: no two writable members; the route check after the heal: a
/// primary relabelled replica while it serves leaves `-rw` dark).
///
/// A delay past the timeout from the start would not do it: the holder's first request to time out
/// takes its connection with it, and every new one spends the delay on its TLS handshake, so no write
/// ever reaches the apiserver. So the replies are first delayed *below* the timeout (45 % of it: a
/// request on the held connection answers in time, and so does a fresh connection's handshake and
/// request). The holder still renews, on a schedule the Lease shows (`renewTime`, stamped by the holder on
/// this machine's clock): one read per loop, a renewal in the loop whose read returns once the last
/// renewal is `leaseDuration − renewDeadline` old. The delay is raised past the timeout while that loop's
/// read is in flight and the renewal is due: raising it delivers what the proxy holds at once (the read),
/// the renewal goes out on the same connection, commits, and its reply comes a second after the client
/// gave up. The delay stays until the next loop's read has timed out too, so that loop renews from the
/// copy it read before the lost write (decide's rule 1: the holder renews when its read fails) — a 409
/// once the delay is lifted a moment later. Seen when the Lease shows a renewal the raise let out, and the
/// holder's metrics count it failed; a miss (the raise came before the renewal was due, or after it)
/// lifts the delay and tries again.
pub async fn slow_apiserver_lost_reply(h: &mut Harness, s: &mut Scene) -> Result<()> {
    let p = primary(h).await?;
    let node = node_of(h, &p).await?;
    let ip = cluster::ip_of(&h.pods().await?, &p).with_context(|| format!("{p} has no IP"))?;
    let t = s.timings;
    let timeout = client_timeout(t);
    let below = (timeout * 45 / 100).as_millis().to_string();
    let above = (timeout + Duration::from_secs(1)).as_millis().to_string();
    let renew_interval = micros(Duration::from_secs((t.lease - t.renew).max(t.retry)));
    let period = micros(Duration::from_secs(t.retry));
    let name = contract::lease_name(&s.cluster);
    let slow = Duration::from_secs(t.lease + 5);
    for attempt in 1..=LOST_REPLY_ATTEMPTS {
        clear_proxy(h, &node).await?;
        h.fault_with("slow-apiserver", &[&node, &below]).await?;
        // Two renewals under the delay give the schedule (the first after it began may be partly slowed).
        let now = cluster::lease_write(&h.client, &h.namespace, &name).await?;
        let r1 = renewal(h, &p, &now, slow).await?;
        let r2 = renewal(h, &p, &r1, slow).await?;
        let r3 = renewal(h, &p, &r2, slow).await?;
        let (Some(t2), Some(t3)) = (r2.renewed_at_us, r3.renewed_at_us) else {
            bail!("the Lease renewals carry no renewTime");
        };
        // The loop reads every `retryPeriod` and renews in the first loop whose read returns once the
        // last renewal is `renew_interval` old; the renewal is stamped as its loop's read comes back, so
        // each later loop's read comes back a whole number of periods after `t3`. The aim is the renewing
        // loop's read, in flight. When the interval is a whole number of loops (30/20/5, 6/4/2), the
        // earliest loop that can renew reads back just as the renewal falls due: a coin flip, renew or
        // hold, with no instant to raise the delay that works either way (one 60-minute soak saw that
        // loop renew three times running). So the delay is lowered now, by the hair and more: every
        // later read comes back that much earlier, the coin-flip loop surely holds, the next one surely
        // renews, and its read is in flight for the whole lowered delay.
        let mut loops = loops_until(renew_interval, period);
        let mut delay = timeout * 45 / 100;
        let mut early = 0;
        if loops * period - renew_interval < HAIR_US {
            let lower = (delay - Duration::from_micros(HAIR_US as u64)).max(delay / 3);
            early = micros(delay - lower);
            delay = lower;
            h.fault_with("slow-apiserver", &[&node, &delay.as_millis().to_string()])
                .await?;
            loops += 1;
        }
        let delay_ms = delay.as_millis().to_string();
        let due = t3 + renew_interval;
        let read_back = t3 + loops * period - early;
        let read_sent = read_back - micros(delay);
        let aim = (due.max(read_sent) + read_back) / 2;
        let failed_before = rest::metric(&ip, RENEW_ERRORS).await?;
        let conflicts_before = rest::metric(&ip, CONFLICTS).await?;
        // How long the hook takes to act, measured now by the same call with the delay already set: it does
        // all the raise does but the one Toxiproxy request. Not the longest call seen so far: creating the
        // toxic, or a change that waits for held bytes, takes a second more, and aiming by it raised the
        // delay a second early, before the read went out, in all four attempts of one CI run.
        let called = now_us();
        let lead = h.fault_with("slow-apiserver", &[&node, &delay_ms]).await? - called;
        sleep_until_us(aim - lead).await;
        let called = now_us();
        let raised = h.fault_with("slow-apiserver", &[&node, &above]).await?;
        let sent = renewal(h, &p, &r3, Duration::from_secs(1)).await;
        // The raise acts when the hook calls Toxiproxy, before it prints its stamp: a renewal stamped
        // since the hook began, and not when the read would have come back by itself, is one the raise
        // let out (after the raise every read waits past the timeout).
        let by_the_raise = |at: &Micros| *at >= called && (read_back - *at).abs() > 100_000;
        if let Ok(w) = &sent
            && let Some(at) = w.renewed_at_us.filter(by_the_raise)
        {
            h.mark(format!(
                "checker: a renewal sent {:.3} s after the delay rose (attempt {attempt}) committed; its \
                 reply comes {above} ms after it was sent, past the {} ms client timeout",
                (at - raised) as f64 / 1e6,
                timeout.as_millis()
            ));
            // The lost write's client gives up at `timeout`, the next loop's read `timeout` later.
            sleep_until_us(at + micros(2 * timeout + Duration::from_millis(100))).await;
            h.fault_with("heal-apiserver", &[&node]).await?;
            h.healed();
            // The holder counted the committed renewal as failed: its reply was lost.
            sleep_secs(t.retry + 1).await;
            let (failed, conflicts) = (
                rest::metric(&ip, RENEW_ERRORS).await? - failed_before,
                rest::metric(&ip, CONFLICTS).await? - conflicts_before,
            );
            h.mark(format!(
                "checker: {p} counted {failed} failed renewals and {conflicts} lost races (409) since the \
                 delay rose"
            ));
            ensure!(
                failed >= 1.0,
                "{p} counted no failed renewal: the committed renewal's reply was not lost"
            );
            return Ok(());
        }
        let seen = match &sent {
            Ok(w) => format!(
                "a renewal stamped {:+.3} s from the raise",
                (w.renewed_at_us.unwrap_or(0) - raised) as f64 / 1e6
            ),
            Err(_) => "no renewal within 1 s".into(),
        };
        h.mark(format!(
            "checker: attempt {attempt} missed: renewals {:.3} s apart, the next due {:+.3} s, its read \
             sent {:+.3} s and back {:+.3} s from the raise (aimed at {:+.3} s; the hook took {:.3} s to \
             act, {:.3} s expected); {seen}",
            (t3 - t2) as f64 / 1e6,
            (due - raised) as f64 / 1e6,
            (read_sent - raised) as f64 / 1e6,
            (read_back - raised) as f64 / 1e6,
            (aim - raised) as f64 / 1e6,
            (raised - called) as f64 / 1e6,
            lead as f64 / 1e6,
        ));
        // On time again, so the holder renews before its deadline, and the schedule is learnt afresh.
        h.fault_with("heal-apiserver", &[&node]).await?;
        let now = cluster::lease_write(&h.client, &h.namespace, &name).await?;
        renewal(h, &p, &now, slow).await?;
    }
    bail!(
        "no renewal was sent while the reply delay rose past the client timeout in \
         {LOST_REPLY_ATTEMPTS} attempts (see the timeline)"
    )
}

/// How many loops of `period` it takes to reach `interval` (at least one).
fn loops_until(interval: Micros, period: Micros) -> Micros {
    ((interval + period - 1) / period.max(1)).max(1)
}

/// The apiserver's replies to the primary's node delayed past the client timeout for 30 s: the primary
/// can neither read nor renew the Lease, fences at `renewDeadline` (L5), another member takes over once
/// the Lease expires (L2); on time again, the old primary rejoins.
pub async fn slow_apiserver_long(h: &mut Harness, s: &mut Scene) -> Result<()> {
    let p = primary(h).await?;
    let node = node_of(h, &p).await?;
    let above = (client_timeout(s.timings) + Duration::from_secs(1)).as_millis();
    clear_proxy(h, &node).await?;
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
    // What the recreated Lease gets back is what the holder knows of its own data: a member that cloned
    // or bootstrapped in this process must know it as well as one that found its data at start-up.
    let what = format!("every member reporting system identifier {system_id} over REST");
    wait_for(
        &what,
        Duration::from_secs(10),
        Duration::from_millis(250),
        || async {
            let reports = rest::reports(&h.client, &s.namespace, &s.cluster).await?;
            let reported: BTreeMap<&String, Option<&str>> = reports
                .iter()
                .map(|(m, r)| (m, r.pgpilot.system_identifier.as_deref()))
                .collect();
            if reported.len() != h.members.len()
                || reported.values().any(|id| *id != Some(system_id.as_str()))
            {
                bail!("reported {reported:?}");
            }
            Ok(Some(()))
        },
    )
    .await?;
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
///
/// The fault is only what it says while the old pod's containers run on: its sidecar must still answer
/// over REST (from this host, which reaches a partitioned node's pods) when the new primary takes over —
/// otherwise its kubelet learnt of the deletion and stopped them, and the scenario fails saying so.
pub async fn partition_force_delete(h: &mut Harness, s: &mut Scene) -> Result<()> {
    let p = primary(h).await?;
    let node = node_of(h, &p).await?;
    let ip = cluster::ip_of(&h.pods().await?, &p).with_context(|| format!("{p} has no IP"))?;
    h.fault("partition", &node).await?;
    let deleted = h.fault_with("force-delete", &[&s.target(&p)]).await?;
    // Watch the old sidecar while waiting for the takeover.
    let within = Duration::from_secs(s.timings.lease + 15);
    let watch_old = async {
        let mut last: Option<(Micros, String)> = None;
        loop {
            match rest::report(&ip).await {
                Ok(r) => last = Some((now_us(), format!("role={} state={}", r.role, r.state))),
                Err(_) => return last,
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let (old, new) = tokio::select! {
        old = watch_old => (Some(old), None),
        new = wait_new_primary(h, &p, within) => (None, Some(new)),
    };
    let new = match (old, new) {
        (_, Some(new)) => new?,
        (Some(last), None) => {
            let seen = last.map_or_else(
                || "never answered".to_owned(),
                |(at, what)| {
                    format!(
                        "last answered {:.1} s after the force-delete ({what})",
                        (at - deleted) as f64 / 1e6
                    )
                },
            );
            h.mark(format!(
                "checker: the force-deleted {p}'s sidecar stopped answering before anyone took over; it {seen}"
            ));
            let new = wait_new_primary(h, &p, within).await;
            sleep_secs(5).await;
            h.fault("heal", &node).await?;
            h.healed();
            new?;
            bail!(
                "the partitioned {p}'s containers were stopped before the takeover (its sidecar {seen}): \
                 its kubelet learnt of the force-delete, so the scenario did not test a pod gone from the \
                 API whose PostgreSQL runs on"
            );
        }
        (None, None) => bail!("unreachable: neither the watch nor the wait ended"),
    };
    h.mark(format!(
        "checker: {new} took over while the force-deleted {p}'s sidecar still answered"
    ));
    sleep_secs(5).await;
    h.fault("heal", &node).await?;
    h.healed();
    Ok(())
}

/// `spec.ha` changed to `to` under load, then — once the holder's write recorded the new
/// `leaseDurationSeconds` (L6), with the primary accepting writes throughout — the primary cut off (in a
/// synchronous mode once a standby is recorded synchronous again), so the new timings decide the
/// failover; healed and converged again. A longer lease must hold: nobody takes over before the record has been unchanged for
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
    // A change of timings is not a fault: the primary keeps accepting writes through it, past the
    // deadline of its last write under the old timings.
    let p = primary(h).await?;
    sleep_until_us(at + micros(Duration::from_secs(from.renew + 1))).await;
    let dark = longest_unwritable(&h.samples_since(at - 2_000_000), &p, at, now_us());
    ensure!(
        dark <= 1_500_000,
        "{p} accepted no write for {} ms after spec.ha changed from {}/{}/{} to {}/{}/{} (a fence?)",
        dark / 1000,
        from.lease,
        from.renew,
        from.retry,
        to.lease,
        to.renew,
        to.retry
    );
    if s.mode == Mode::Sync {
        s.sync_standbys = h.wait_sync_standby(Duration::from_secs(60)).await?;
    }
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

/// The longest span in `[from, to]` in which `member` (any of its pod incarnations) was not seen
/// accepting a write: between two of its writes, or from `from` to its first, or from its last to `to`.
fn longest_unwritable(samples: &[Sample], member: &str, from: Micros, to: Micros) -> Micros {
    let mut writes: Vec<Micros> = samples
        .iter()
        .filter(|x| verdict::member_of(&x.stream) == member)
        .filter_map(|x| x.writable_at())
        .filter(|t| (from..=to).contains(t))
        .collect();
    writes.sort_unstable();
    let mut prev = from;
    let mut longest = 0;
    for t in writes.into_iter().chain(std::iter::once(to)) {
        longest = longest.max(t - prev);
        prev = t;
    }
    longest
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

/// The node the operator's pod runs on.
fn operator_node(s: &Scene) -> Result<String> {
    let nodes = s.kubectl(&[
        "get",
        "pods",
        "-l",
        crate::OPERATOR_PODS,
        "-o",
        "jsonpath={.items[*].spec.nodeName}",
    ])?;
    nodes
        .split_whitespace()
        .next()
        .map(str::to_owned)
        .context("no operator pod")
}

/// The primary and its node, the primary first switched over to a member on another node when it shares
/// its node with the operator: a change of the spec reaches the members only through the operator (the
/// ConfigMap), so a partition of the operator's node keeps an unpause from anyone (seen: nobody took
/// over after the unpause, the operator partitioned with the primary).
async fn primary_away_from_the_operator(
    h: &mut Harness,
    s: &mut Scene,
) -> Result<(String, String)> {
    let p = primary(h).await?;
    let node = node_of(h, &p).await?;
    if operator_node(s)? != node {
        return Ok((p, node));
    }
    let candidates = match s.mode {
        Mode::Sync => s.sync_standbys.clone(),
        Mode::Async => replicas(h).await?,
    };
    let candidate = s
        .pick(&candidates)
        .cloned()
        .context("no member to switch over to")?;
    let pods = h.pods().await?;
    let ip = cluster::ip_of(&pods, &p).with_context(|| format!("{p} has no IP"))?;
    let (status, text) =
        rest::switchover(&h.client, &s.namespace, &s.cluster, &ip, &p, &candidate).await?;
    h.mark(format!(
        "checker: the operator runs on {node} with the primary {p}: POST /switchover {p} -> \
         {candidate}: {status} {}",
        text.trim()
    ));
    ensure!(status == 200, "switchover answered {status}: {text}");
    wait_new_primary(h, &p, Duration::from_secs(30)).await?;
    if s.mode == Mode::Sync {
        s.sync_standbys = h.wait_sync_standby(Duration::from_secs(60)).await?;
    }
    let p = primary(h).await?;
    let node = node_of(h, &p).await?;
    Ok((p, node))
}

/// Paused (`spec.paused: true`), the holder's node partitioned, unpaused (issue 13 hole 8): L5 fencing
/// stays armed while paused, so the cut-off holder fences at `renewDeadline`; the others, paused, take
/// nothing over until the unpause, then the expired Lease. Never two writable members.
pub async fn pause_partition(h: &mut Harness, s: &mut Scene) -> Result<()> {
    let (p, node) = primary_away_from_the_operator(h, s).await?;
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

/// Log lines the primary's PostgreSQL writes during [`log_stall`]: about 1 MB, far more than the
/// container's pipes hold.
const FLOOD_LINES: u32 = 4000;

/// The primary's node stops draining its pods' output (its containerd stopped, `e2e/fault log-stall`)
/// and the primary's PostgreSQL logs a flood. Neither PostgreSQL nor the HA loop may block on the full
/// log pipe: the flooding statement completes, the holder goes on renewing the Lease, and the member
/// counts the lines it had to drop (which shows the pipe really was full). Then the node drains again.
pub async fn log_stall(h: &mut Harness, s: &mut Scene) -> Result<()> {
    let p = primary(h).await?;
    let node = node_of(h, &p).await?;
    let pods = h.pods().await?;
    let ip = cluster::ip_of(&pods, &p).with_context(|| format!("{p} has no IP"))?;
    let session = super::basic::superuser_on(h, s, &p).await?;
    let name = contract::lease_name(&h.cluster);
    h.fault("log-stall", &node).await?;
    let flood = format!(
        "DO $$ BEGIN FOR i IN 1..{FLOOD_LINES} LOOP \
         RAISE LOG 'log-stall flood line %: %', i, repeat('x', 200); END LOOP; END $$"
    );
    let started = std::time::Instant::now();
    match tokio::time::timeout(Duration::from_secs(30), session.batch_execute(&flood)).await {
        Ok(done) => done.context("the flood")?,
        Err(_) => bail!(
            "{p}'s PostgreSQL is blocked on its log output: {FLOOD_LINES} RAISE LOG lines not done in 30 s"
        ),
    }
    h.mark(format!(
        "checker: {FLOOD_LINES} log lines written by {p}'s PostgreSQL in {:.1} s with its log pipe full",
        started.elapsed().as_secs_f64()
    ));
    // The HA loop goes on: two renewals after the flood.
    let mut last = cluster::lease_write(&h.client, &h.namespace, &name).await?;
    for _ in 0..2 {
        last = renewal(h, &p, &last, Duration::from_secs(15)).await?;
    }
    let dropped = rest::metric(&ip, "pgpilot_log_lines_dropped_total").await?;
    ensure!(
        dropped > 0.0,
        "{p} dropped no log line: the fault did not fill its log pipe"
    );
    h.mark(format!(
        "checker: {p} renewed twice more while its log was stalled, {dropped} lines dropped"
    ));
    h.fault("heal", &node).await?;
    h.healed();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::loops_until;

    #[test]
    fn the_earliest_loop_that_can_renew() {
        let s = 1_000_000;
        assert_eq!(loops_until(10 * s, 5 * s), 2, "30/20/5: the second loop");
        assert_eq!(loops_until(2 * s, s), 2, "6/4/1");
        assert_eq!(loops_until(11 * s, 5 * s), 3);
        assert_eq!(loops_until(s, 5 * s), 1, "at least the next loop");
    }
}
