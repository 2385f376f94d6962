//! Synchronous replication (L3, zero acknowledged-write loss): which standbys PostgreSQL waits for
//! and which members the Lease records as synchronous, kept in step by a pure plan ([`plan_sync`]) that
//! the primary's loop carries out one step at a time. IO (outside the plan): the Lease's
//! `sync-members` annotation and `synchronous_standby_names`.

use pgpilot_crds::contract::{ReplicationMode, SidecarConfig};
use tracing::info;

use super::{HaError, HaLoop};
use crate::postgres::{self, Role, SyncMethod, SyncStandbys};

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
        let mode = cfg.replication.mode;
        let recorded = self.elector.record().and_then(|r| r.sync_members.clone());
        let rows = &self.mem.last_pg.replication;
        let streaming: Vec<&postgres::ReplicationRow> =
            rows.iter().filter(|r| r.state == "streaming").collect();
        let plan = plan_sync(
            mode,
            cfg.replication.sync_replicas,
            recorded.as_deref(),
            self.mem.sync_configured.as_deref(),
            &streaming
                .iter()
                .map(|r| {
                    (
                        r.application_name.clone(),
                        r.flush_lsn.unwrap_or(0),
                        r.sync_state.clone(),
                    )
                })
                .collect::<Vec<_>>(),
        );
        if let Some(record) = plan.record {
            let result = self.elector.record_sync_members(&record).await;
            self.metrics.lease_write("sync-members", result.is_ok());
            if result? {
                info!(members = ?record, "recorded the synchronous members");
            }
            // The configuration follows on a later loop, after the record is safely written.
            return Ok(());
        }
        let desired = self.desired(cfg, Role::Primary, plan.configure.clone());
        let change = self.pg.configure(&desired).await?;
        if plan.configure.as_ref().map(|s| &s.names) != self.mem.sync_configured.as_ref() {
            info!(standbys = ?plan.configure.as_ref().map(|s| &s.names), ?change, "synchronous_standby_names changed");
        }
        self.mem.sync_configured = plan.configure.map(|s| s.names);
        Ok(())
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

/// One step of synchronous-standby management.
#[derive(Debug, PartialEq, Eq)]
pub struct SyncPlan {
    /// Write this record of synchronous members to the Lease first (then stop for this loop).
    pub record: Option<Vec<String>>,
    /// Otherwise, configure this (`None`: asynchronous).
    pub configure: Option<SyncStandbys>,
}

/// Pure plan for synchronous replication (L3, zero acknowledged-write loss):
/// - `wanted`: the streaming standbys, those already configured first, then by flushed position;
/// - removals: a recorded member no longer wanted (or not configured) leaves the record first;
/// - the configuration becomes `FIRST n (wanted)` (`strictSync` without standbys keeps waiting on the
///   previous names or on any standby, so writes block rather than go unreplicated);
/// - additions: a configured member PostgreSQL reports as `sync` enters the record.
pub fn plan_sync(
    mode: ReplicationMode,
    sync_replicas: u32,
    recorded: Option<&[String]>,
    configured: Option<&[String]>,
    streaming: &[(String, u64, String)],
) -> SyncPlan {
    let recorded: Vec<String> = recorded.map(<[String]>::to_vec).unwrap_or_default();
    if mode == ReplicationMode::Async {
        // Asynchronous: nothing recorded, nothing configured. An old record is cleared once.
        let record = (!recorded.is_empty()).then(Vec::new);
        return SyncPlan {
            record,
            configure: None,
        };
    }
    let configured: Vec<String> = configured.map(<[String]>::to_vec).unwrap_or_default();
    let mut candidates: Vec<&(String, u64, String)> = streaming.iter().collect();
    candidates.sort_by(|a, b| {
        let a_conf = configured.contains(&a.0);
        let b_conf = configured.contains(&b.0);
        b_conf.cmp(&a_conf).then(b.1.cmp(&a.1)).then(a.0.cmp(&b.0))
    });
    let n = usize::try_from(sync_replicas.max(1)).unwrap_or(1);
    let wanted: Vec<String> = candidates.iter().take(n).map(|c| c.0.clone()).collect();

    let keep: Vec<String> = recorded
        .iter()
        .filter(|m| wanted.contains(m) && configured.contains(m))
        .cloned()
        .collect();
    if keep.len() != recorded.len() {
        return SyncPlan {
            record: Some(keep),
            configure: None,
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
            count: sync_count(mode, sync_replicas, names.len()),
            names,
        })
    };
    let now_configured: Vec<String> = configure
        .as_ref()
        .map(|c| c.names.clone())
        .unwrap_or_default();
    if now_configured == configured {
        let confirmed: Vec<String> = streaming
            .iter()
            .filter(|(name, _, state)| {
                (state == "sync" || state == "quorum") && configured.contains(name)
            })
            .map(|(name, _, _)| name.clone())
            .filter(|name| !recorded.contains(name))
            .collect();
        if !confirmed.is_empty() {
            let mut record = recorded.clone();
            record.extend(confirmed);
            record.sort();
            return SyncPlan {
                record: Some(record),
                configure,
            };
        }
    }
    SyncPlan {
        record: None,
        configure,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| (*x).to_owned()).collect()
    }

    fn row(name: &str, lsn: u64, state: &str) -> (String, u64, String) {
        (name.into(), lsn, state.into())
    }

    #[test]
    fn sync_adds_to_the_configuration_first_then_records_when_postgres_says_sync() {
        let streaming = [row("c-1", 100, "async"), row("c-2", 90, "async")];
        // Step 1: configure FIRST 1 (c-1); record nothing yet.
        let p = plan_sync(ReplicationMode::Sync, 1, None, None, &streaming);
        assert_eq!(p.record, None);
        assert_eq!(p.configure.as_ref().unwrap().names, s(&["c-1"]));
        // Step 2: configured, PostgreSQL reports c-1 sync: record it.
        let streaming = [row("c-1", 100, "sync"), row("c-2", 90, "async")];
        let p = plan_sync(
            ReplicationMode::Sync,
            1,
            None,
            Some(&s(&["c-1"])),
            &streaming,
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
                configure: None
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
                configure: None
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
    fn sync_count_degrades_only_in_sync() {
        assert_eq!(sync_count(ReplicationMode::Sync, 2, 1), 1);
        assert_eq!(sync_count(ReplicationMode::StrictSync, 2, 1), 2);
        assert_eq!(sync_count(ReplicationMode::Sync, 2, 3), 2);
    }
}
