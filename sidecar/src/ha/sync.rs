//! Synchronous replication (L3, zero acknowledged-write loss): which standbys PostgreSQL waits for
//! and which members the Lease records as synchronous, kept in step by a pure plan ([`plan_sync`]) that
//! the primary's loop carries out one step at a time. IO (outside the plan): the Lease's
//! `sync-members` annotation and `synchronous_standby_names`.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use pgpilot_crds::contract::{ReplicationMode, SidecarConfig};
use tracing::info;

use super::{HaError, HaLoop};
use crate::postgres::{Role, SyncMethod, SyncStandbys};

impl HaLoop {
    /// Synchronous standbys for a primary's start or promotion: those the Lease records (minus this
    /// member), so no commit is acknowledged by a standby the loop has not recorded (L3). With none
    /// recorded, `sync` starts asynchronous and `strictSync` waits for any standby (`*`).
    pub(super) fn initial_sync(&self, cfg: &SidecarConfig) -> Option<SyncStandbys> {
        let mode = cfg.replication.mode;
        if mode == ReplicationMode::Async {
            return None;
        }
        let recorded: Vec<String> = self
            .elector
            .record()
            .and_then(|r| r.sync_members.clone())
            .unwrap_or_default()
            .into_iter()
            .filter(|m| *m != self.me)
            .collect();
        if recorded.is_empty() && mode == ReplicationMode::Sync {
            return None;
        }
        let count = sync_count(mode, cfg.replication.sync_replicas, recorded.len());
        Some(SyncStandbys {
            method: SyncMethod::First,
            count,
            names: recorded,
        })
    }

    /// Keeps `synchronous_standby_names` and the Lease's record of synchronous members in step, in the
    /// order that keeps L3 safe: a member leaves the record before it leaves the configuration, and
    /// enters the record only after PostgreSQL reports it synchronous. Writes only on change (L9).
    pub(super) async fn manage_sync(&mut self, cfg: &SidecarConfig) -> Result<(), HaError> {
        let now = Instant::now();
        let rows = &self.mem.last_pg.replication;
        self.mem.replies.observe(
            rows.iter()
                .map(|r| (r.application_name.as_str(), r.reply_time.as_deref())),
            now,
        );
        // A standby that stopped replying for half the renewal deadline is gone for synchronous
        // replication: commits must not wait for it much longer than the primary would wait for
        // the apiserver (issue 13 hole 3).
        let stale_after = self.timings.renew_deadline / 2;
        let members = self.member_names();
        let standbys: Vec<Standby> = rows
            .iter()
            .filter(|r| {
                r.state == "streaming"
                    && r.application_name != self.me
                    && members.contains(&r.application_name)
                    && self
                        .mem
                        .replies
                        .alive(&r.application_name, now, stale_after)
            })
            .map(|r| Standby {
                name: r.application_name.clone(),
                flush: r.flush_lsn.unwrap_or(0),
                sync_state: r.sync_state.clone(),
            })
            .collect();
        let mut recorded = self.elector.record().and_then(|r| r.sync_members.clone());
        let mut plan = self.plan_sync_step(cfg, recorded.as_deref(), &standbys);
        if let Some(record) = plan.record.take() {
            let result = self.elector.record_sync_members(&record).await;
            self.metrics.lease_write("sync-members", result.is_ok());
            if result? {
                info!(members = ?record, "recorded the synchronous members");
            }
            // The record is safely written: the configuration may follow it at once. (A member that
            // left the record may now leave the configuration, so commits stop waiting for a standby
            // that is gone within this loop.)
            recorded = Some(record);
            plan = self.plan_sync_step(cfg, recorded.as_deref(), &standbys);
            if plan.record.is_some() {
                // Another change of the record is due (a shrink then a growth): next loop.
                return Ok(());
            }
        }
        let desired = self.desired(cfg, Role::Primary, plan.configure.clone());
        let change = self.pg.configure(&desired).await?;
        if plan.configure.as_ref().map(|s| &s.names) != self.mem.sync_configured.as_ref() {
            info!(standbys = ?plan.configure.as_ref().map(|s| &s.names), ?change, "synchronous_standby_names changed");
        }
        self.mem.sync_configured = plan.configure.map(|s| s.names);
        Ok(())
    }

    /// One [`plan_sync`] on this loop's view, remembering the catch-up targets it returns.
    fn plan_sync_step(
        &mut self,
        cfg: &SidecarConfig,
        recorded: Option<&[String]>,
        standbys: &[Standby],
    ) -> SyncPlan {
        let plan = plan_sync(&SyncInput {
            mode: cfg.replication.mode,
            sync_replicas: cfg.replication.sync_replicas,
            recorded,
            configured: self.mem.sync_configured.as_deref(),
            standbys,
            primary_wal: self.mem.last_pg.current_lsn.unwrap_or(u64::MAX),
            catching_up: &self.mem.catching_up,
        });
        if plan.catching_up != self.mem.catching_up {
            info!(targets = ?plan.catching_up, "synchronous standbys catching up before they are recorded");
        }
        self.mem.catching_up = plan.catching_up.clone();
        plan
    }

    pub(super) fn current_sync(&self, cfg: &SidecarConfig) -> Option<SyncStandbys> {
        self.mem.sync_configured.as_ref().map(|names| SyncStandbys {
            method: SyncMethod::First,
            count: sync_count(
                cfg.replication.mode,
                cfg.replication.sync_replicas,
                names.len(),
            ),
            names: names.clone(),
        })
    }
}

/// How many acknowledgements to wait for: `sync` degrades to the standbys available, `strictSync` never.
fn sync_count(mode: ReplicationMode, wanted: u32, available: usize) -> u32 {
    let wanted = wanted.max(1);
    match mode {
        ReplicationMode::StrictSync => wanted,
        _ => wanted
            .min(u32::try_from(available).unwrap_or(u32::MAX))
            .max(1),
    }
}

/// One standby as the primary sees it (`pg_stat_replication`): a member, streaming, answering.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Standby {
    pub name: String,
    /// `flush_lsn`: what it has made durable.
    pub flush: u64,
    /// `async`, `potential`, `sync` or `quorum`.
    pub sync_state: String,
}

/// What [`plan_sync`] looks at.
#[derive(Clone, Debug)]
pub struct SyncInput<'a> {
    pub mode: ReplicationMode,
    pub sync_replicas: u32,
    /// The Lease's record of synchronous members (`None`: never written).
    pub recorded: Option<&'a [String]>,
    /// `synchronous_standby_names` as last configured (`None`: asynchronous).
    pub configured: Option<&'a [String]>,
    /// Member standbys that stream and answer (the caller leaves out stale ones and non-members).
    pub standbys: &'a [Standby],
    /// The primary's WAL position, read after the standbys' rows.
    pub primary_wal: u64,
    /// Standbys PostgreSQL reports synchronous that are not recorded yet, with the position each must
    /// flush before it is recorded.
    pub catching_up: &'a BTreeMap<String, u64>,
}

/// One step of synchronous-standby management.
#[derive(Debug, PartialEq, Eq)]
pub struct SyncPlan {
    /// Write this record of synchronous members to the Lease first (then stop for this loop).
    pub record: Option<Vec<String>>,
    /// Otherwise, configure this (`None`: asynchronous).
    pub configure: Option<SyncStandbys>,
    /// The catch-up targets to remember for the next loop.
    pub catching_up: BTreeMap<String, u64>,
}

/// Pure plan for synchronous replication (L3, zero acknowledged-write loss). The invariant: every
/// recorded member has every acknowledged commit.
/// - `wanted`: the member standbys that stream and answer, those already configured first, then by
///   flushed position;
/// - removals: a recorded member no longer wanted (or not configured) leaves the record first, before
///   the configuration stops waiting for it;
/// - the configuration becomes `FIRST n (wanted)` (`strictSync` without standbys keeps waiting on the
///   previous names or on any standby, so writes block rather than go unreplicated);
/// - additions: a configured member PostgreSQL reports as `sync` enters the record only once its flush
///   position reached the primary's position as read after it was first seen `sync` — every commit
///   acknowledged before the new configuration took effect is then on it too (Patroni's rule).
pub fn plan_sync(input: &SyncInput<'_>) -> SyncPlan {
    let mode = input.mode;
    let recorded: Vec<String> = input.recorded.map(<[String]>::to_vec).unwrap_or_default();
    if mode == ReplicationMode::Async {
        // Asynchronous: nothing recorded, nothing configured. An old record is cleared once.
        let record = (!recorded.is_empty()).then(Vec::new);
        return SyncPlan {
            record,
            configure: None,
            catching_up: BTreeMap::new(),
        };
    }
    let configured: Vec<String> = input.configured.map(<[String]>::to_vec).unwrap_or_default();
    let mut candidates: Vec<&Standby> = input.standbys.iter().collect();
    candidates.sort_by(|a, b| {
        let a_conf = configured.contains(&a.name);
        let b_conf = configured.contains(&b.name);
        b_conf
            .cmp(&a_conf)
            .then(b.flush.cmp(&a.flush))
            .then(a.name.cmp(&b.name))
    });
    let n = usize::try_from(input.sync_replicas.max(1)).unwrap_or(1);
    let wanted: Vec<String> = candidates.iter().take(n).map(|c| c.name.clone()).collect();

    let keep: Vec<String> = recorded
        .iter()
        .filter(|m| wanted.contains(m) && configured.contains(m))
        .cloned()
        .collect();
    if keep.len() != recorded.len() {
        return SyncPlan {
            record: Some(keep),
            configure: None,
            catching_up: BTreeMap::new(),
        };
    }
    let names = if wanted.is_empty() && mode == ReplicationMode::StrictSync {
        configured.clone()
    } else {
        wanted.clone()
    };
    let configure = if names.is_empty() && mode == ReplicationMode::Sync {
        None
    } else {
        Some(SyncStandbys {
            method: SyncMethod::First,
            count: sync_count(mode, input.sync_replicas, names.len()),
            names,
        })
    };
    let now_configured: Vec<String> = configure
        .as_ref()
        .map(|c| c.names.clone())
        .unwrap_or_default();
    let mut catching_up = BTreeMap::new();
    if now_configured == configured {
        let mut confirmed = Vec::new();
        for s in input.standbys.iter().filter(|s| {
            (s.sync_state == "sync" || s.sync_state == "quorum")
                && configured.contains(&s.name)
                && !recorded.contains(&s.name)
        }) {
            match input.catching_up.get(&s.name) {
                Some(&target) if s.flush >= target => confirmed.push(s.name.clone()),
                Some(&target) => {
                    catching_up.insert(s.name.clone(), target);
                }
                None => {
                    catching_up.insert(s.name.clone(), input.primary_wal);
                }
            }
        }
        if !confirmed.is_empty() {
            let mut record = recorded.clone();
            record.extend(confirmed);
            record.sort();
            return SyncPlan {
                record: Some(record),
                configure,
                catching_up,
            };
        }
    }
    SyncPlan {
        record: None,
        configure,
        catching_up,
    }
}

/// When each standby's `reply_time` last changed, on this member's monotonic clock: the remote
/// timestamp is compared for equality only (as L2 treats the Lease's). A standby whose replies stopped
/// is gone for synchronous replication even while `pg_stat_replication` still lists it as streaming —
/// which it does until `wal_sender_timeout` (issue 13 hole 3).
#[derive(Clone, Debug, Default)]
pub struct ReplyWatch {
    seen: BTreeMap<String, (Option<String>, Instant)>,
}

impl ReplyWatch {
    /// Records this loop's rows; standbys no longer listed are forgotten.
    pub fn observe<'a>(
        &mut self,
        rows: impl IntoIterator<Item = (&'a str, Option<&'a str>)>,
        now: Instant,
    ) {
        let mut next = BTreeMap::new();
        for (name, reply) in rows {
            let reply = reply.map(str::to_owned);
            let since = match self.seen.get(name) {
                Some((last, since)) if *last == reply => *since,
                _ => now,
            };
            next.insert(name.to_owned(), (reply, since));
        }
        self.seen = next;
    }

    /// Whether `name` replied within `stale_after`.
    pub fn alive(&self, name: &str, now: Instant, stale_after: Duration) -> bool {
        self.seen
            .get(name)
            .is_some_and(|(_, since)| now.saturating_duration_since(*since) < stale_after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| (*x).to_owned()).collect()
    }

    fn row(name: &str, lsn: u64, state: &str) -> Standby {
        Standby {
            name: name.into(),
            flush: lsn,
            sync_state: state.into(),
        }
    }

    /// One plan with the primary at the highest standby position and nothing catching up.
    fn plan_sync(
        mode: ReplicationMode,
        sync_replicas: u32,
        recorded: Option<&[String]>,
        configured: Option<&[String]>,
        standbys: &[Standby],
    ) -> SyncPlan {
        let primary_wal = standbys.iter().map(|s| s.flush).max().unwrap_or(0);
        plan_at(
            mode,
            sync_replicas,
            recorded,
            configured,
            standbys,
            primary_wal,
            &BTreeMap::new(),
        )
    }

    fn plan_at(
        mode: ReplicationMode,
        sync_replicas: u32,
        recorded: Option<&[String]>,
        configured: Option<&[String]>,
        standbys: &[Standby],
        primary_wal: u64,
        catching_up: &BTreeMap<String, u64>,
    ) -> SyncPlan {
        super::plan_sync(&SyncInput {
            mode,
            sync_replicas,
            recorded,
            configured,
            standbys,
            primary_wal,
            catching_up,
        })
    }

    #[test]
    fn sync_adds_to_the_configuration_first_then_records_when_postgres_says_sync() {
        let streaming = [row("c-1", 100, "async"), row("c-2", 90, "async")];
        // Step 1: configure FIRST 1 (c-1); record nothing yet.
        let p = plan_sync(ReplicationMode::Sync, 1, None, None, &streaming);
        assert_eq!(p.record, None);
        assert_eq!(p.configure.as_ref().unwrap().names, s(&["c-1"]));
        // Step 2: configured, PostgreSQL reports c-1 sync: it must reach the primary's position first.
        let streaming = [row("c-1", 100, "sync"), row("c-2", 90, "async")];
        let p = plan_sync(
            ReplicationMode::Sync,
            1,
            None,
            Some(&s(&["c-1"])),
            &streaming,
        );
        assert_eq!(p.record, None);
        assert_eq!(p.catching_up, BTreeMap::from([("c-1".to_owned(), 100)]));
        // Step 3: it has: record it.
        let p = plan_at(
            ReplicationMode::Sync,
            1,
            None,
            Some(&s(&["c-1"])),
            &streaming,
            120,
            &p.catching_up,
        );
        assert_eq!(p.record, Some(s(&["c-1"])));
        // Steady: nothing to write.
        let p = plan_sync(
            ReplicationMode::Sync,
            1,
            Some(&s(&["c-1"])),
            Some(&s(&["c-1"])),
            &streaming,
        );
        assert_eq!(p.record, None);
        assert_eq!(p.configure.unwrap().names, s(&["c-1"]));
    }

    #[test]
    fn sync_removes_from_the_record_before_the_configuration() {
        // c-1 stopped streaming; c-2 is the only candidate.
        let streaming = [row("c-2", 90, "potential")];
        let p = plan_sync(
            ReplicationMode::Sync,
            1,
            Some(&s(&["c-1"])),
            Some(&s(&["c-1"])),
            &streaming,
        );
        assert_eq!(
            p,
            SyncPlan {
                record: Some(vec![]),
                configure: None,
                catching_up: BTreeMap::new()
            },
            "record shrinks first, config untouched"
        );
        let p = plan_sync(
            ReplicationMode::Sync,
            1,
            Some(&[]),
            Some(&s(&["c-1"])),
            &streaming,
        );
        assert_eq!((p.record, p.configure.unwrap().names), (None, s(&["c-2"])));
    }

    #[test]
    fn sync_degrades_to_async_but_strict_keeps_blocking() {
        let p = plan_sync(ReplicationMode::Sync, 1, Some(&[]), Some(&s(&["c-1"])), &[]);
        assert_eq!(
            p,
            SyncPlan {
                record: None,
                configure: None,
                catching_up: BTreeMap::new()
            }
        );
        let p = plan_sync(
            ReplicationMode::StrictSync,
            1,
            Some(&[]),
            Some(&s(&["c-1"])),
            &[],
        );
        let c = p.configure.unwrap();
        assert_eq!(
            (c.names, c.count),
            (s(&["c-1"]), 1),
            "writes keep waiting for c-1"
        );
        // Fresh strict primary without any standby: FIRST 1 (*).
        let p = plan_sync(ReplicationMode::StrictSync, 1, None, None, &[]);
        assert_eq!(p.configure.unwrap().names, Vec::<String>::new());
    }

    #[test]
    fn sync_keeps_the_configured_standby_rather_than_churning() {
        let streaming = [row("c-1", 50, "sync"), row("c-2", 90, "async")];
        let p = plan_sync(
            ReplicationMode::Sync,
            1,
            Some(&s(&["c-1"])),
            Some(&s(&["c-1"])),
            &streaming,
        );
        assert_eq!((p.record, p.configure.unwrap().names), (None, s(&["c-1"])));
    }

    #[test]
    fn async_clears_an_old_record_once() {
        let p = plan_sync(ReplicationMode::Async, 1, Some(&s(&["c-1"])), None, &[]);
        assert_eq!(p.record, Some(vec![]));
        assert_eq!(
            plan_sync(ReplicationMode::Async, 1, Some(&[]), None, &[]).record,
            None
        );
        assert_eq!(
            plan_sync(ReplicationMode::Async, 1, None, None, &[]).record,
            None
        );
    }

    #[test]
    fn a_new_synchronous_standby_is_recorded_only_once_caught_up() {
        // Issue 13 hole 2: PostgreSQL calls c-1 `sync` as soon as the configuration names it and it
        // streams, but commits acknowledged before that may be missing on it. The primary is at 500.
        let conf = s(&["c-1"]);
        let p = plan_at(
            ReplicationMode::Sync,
            1,
            Some(&[]),
            Some(&conf),
            &[row("c-1", 100, "sync")],
            500,
            &BTreeMap::new(),
        );
        assert_eq!(
            p.record, None,
            "not before it has flushed the primary's position"
        );
        let p = plan_at(
            ReplicationMode::Sync,
            1,
            Some(&[]),
            Some(&conf),
            &[row("c-1", 400, "sync")],
            900,
            &p.catching_up,
        );
        assert_eq!(p.record, None);
        assert_eq!(
            p.catching_up,
            BTreeMap::from([("c-1".to_owned(), 500)]),
            "the target does not move with later writes"
        );
        let p = plan_at(
            ReplicationMode::Sync,
            1,
            Some(&[]),
            Some(&conf),
            &[row("c-1", 500, "sync")],
            950,
            &p.catching_up,
        );
        assert_eq!(p.record, Some(conf));
    }

    #[test]
    fn a_standby_that_stopped_replying_is_gone() {
        // Issue 13 hole 3: a cut standby stays `streaming` in pg_stat_replication until
        // wal_sender_timeout; its replies stop at once.
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let stale = Duration::from_secs(5);
        let mut w = ReplyWatch::default();
        w.observe(
            [("c-1", Some("12:00:00")), ("c-2", Some("12:00:00"))],
            at(0),
        );
        w.observe(
            [("c-1", Some("12:00:04")), ("c-2", Some("12:00:00"))],
            at(4),
        );
        assert!(w.alive("c-1", at(6), stale));
        assert!(!w.alive("c-2", at(6), stale), "no reply for 6 s");
        assert!(w.alive("c-2", at(4), stale));
        w.observe([("c-1", Some("12:00:07"))], at(7));
        assert!(!w.alive("c-2", at(7), stale), "no longer listed");
    }

    #[test]
    fn a_cut_synchronous_standby_hands_its_role_to_a_live_one_record_first() {
        // c-1 recorded and configured, but gone (the caller leaves stale standbys out): c-2 alone.
        let recorded = s(&["c-1"]);
        let p = plan_sync(
            ReplicationMode::Sync,
            1,
            Some(&recorded),
            Some(&recorded),
            &[row("c-2", 90, "potential")],
        );
        assert_eq!(
            p.record,
            Some(vec![]),
            "c-1 leaves the record before the configuration"
        );
        let p = plan_sync(
            ReplicationMode::Sync,
            1,
            Some(&[]),
            Some(&recorded),
            &[row("c-2", 90, "potential")],
        );
        assert_eq!(
            p.configure.unwrap().names,
            s(&["c-2"]),
            "commits stop waiting for c-1"
        );
    }

    #[test]
    fn sync_count_degrades_only_in_sync() {
        assert_eq!(sync_count(ReplicationMode::Sync, 2, 1), 1);
        assert_eq!(sync_count(ReplicationMode::StrictSync, 2, 1), 2);
        assert_eq!(sync_count(ReplicationMode::Sync, 2, 3), 2);
    }
}
